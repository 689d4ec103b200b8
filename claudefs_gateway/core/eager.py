# -*- test-case-name: tests.core.test_eager -*-
"""
Run a coroutine eagerly: when everything it awaits has already fired, it
finishes without a Deferred being made for it.

C{Deferred.fromCoroutine} costs a few microseconds per call even when the
coroutine never waits (it builds a Deferred, a cancellable wrapper and the
callback loop that resumes it). On the hot paths the answer is usually in
memory already - an attribute from the cache, a page-cache read, a Deferred
the store fired before returning it - so most calls never wait. L{eager}
steps the coroutine once: if it finished, its value is returned as it is (or
its exception raised); if it is waiting on a Deferred, the coroutine goes to
C{fromCoroutine} from where it stopped, and the Deferred comes back instead.
L{eager_deferred} does the same but always returns a Deferred (an already
fired one in the fast case), for interfaces that promise one.

Semantics are those of C{fromCoroutine}: a coroutine that completes
synchronously gives the same value, one that waits is driven by Twisted
(cancelling that Deferred cancels what the coroutine awaits). A coroutine
suspended inside C{Deferred.__await__} re-checks its Deferred when resumed,
which is what makes handing it over after the first step safe. (The first
step runs in the caller's context, not a copy of it: nothing here uses
context variables.)
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure

__all__ = ["eager", "eager_deferred"]

T = TypeVar("T")


def _first_wait(coro: Coroutine[Any, Any, Any]) -> None:
    """
    Run C{coro} until it waits on a Deferred (or finishes: C{StopIteration}).
    A value other than a Deferred that it yields is sent back to it, as
    Twisted's coroutine driver does.
    """
    sent: Any = None
    while True:
        sent = coro.send(sent)
        if isinstance(sent, defer.Deferred):
            return


def eager(coro: Coroutine[Any, Any, T]) -> T | defer.Deferred[T]:
    """
    C{coro}'s value if it finishes without waiting (its exception propagates),
    else a Deferred of it.
    """
    try:
        _first_wait(coro)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    return defer.Deferred.fromCoroutine(coro)


def eager_deferred(
    coro: Coroutine[Any, Any, T], errback: Callable[[Failure], Any] | None = None
) -> defer.Deferred[T]:
    """
    Like C{Deferred.fromCoroutine(coro)}, already fired when C{coro} did not
    wait; C{errback}, if given, is added as an errback (on the fast path only
    when the coroutine failed: a success costs no callback).
    """
    try:
        _first_wait(coro)
    except StopIteration as done:
        return defer.succeed(done.value)
    except BaseException:
        d: defer.Deferred[T] = defer.fail()
    else:
        d = defer.Deferred.fromCoroutine(coro)
    if errback is not None:
        d.addErrback(errback)
    return d
