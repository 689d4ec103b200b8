# -*- test-case-name: tests.core.test_breaker -*-
"""
The loop-neutral futures the backend services (pool, breaker, retry) use.

DESIGN.md: core's pool, breaker and retry are written against txaio, as
autobahn writes its WAMP session, and run on Twisted Deferreds. txaio's
module-level API reaches the one global reactor for timers; these services
take their clock in C{__init__} instead (STYLE.md §4, so tests drive them with
a L{twisted.internet.task.Clock}). L{Aio} pairs the two: futures, callbacks,
rejection and cancellation from txaio, timers from the injected clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import txaio
from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

_tx: Any = txaio  # txaio fills in its API at use_twisted(); mypy sees only stubs

__all__ = ["Aio"]


class Aio:
    """
    txaio's future API with time from C{clock}.

    Futures are Deferreds under Twisted (txaio selects its Twisted flavour the
    first time an L{Aio} is made; nothing happens at import).
    """

    def __init__(self, clock: IReactorTime) -> None:
        _tx.use_twisted()
        self.clock = clock

    def create_future(self, canceller: Callable[[Any], None] | None = None) -> Any:
        """A new unresolved future; C{canceller(f)} runs if a caller cancels it."""
        return _tx.create_future(canceller=canceller)

    def succeed(self, value: Any) -> Any:
        return _tx.create_future_success(value)

    def fail(self, error: BaseException) -> Any:
        return _tx.create_future_error(_tx.create_failure(error))

    def resolve(self, f: Any, value: Any) -> None:
        _tx.resolve(f, value)

    def reject(self, f: Any, error: BaseException | Any) -> None:
        _tx.reject(f, error)

    def add_callbacks(
        self, f: Any, callback: Callable[[Any], Any] | None, errback: Callable[[Any], Any] | None
    ) -> Any:
        return _tx.add_callbacks(f, callback, errback)

    def as_future(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """
        Call C{fn}; its result (a future or a plain value) or exception as a future.

        txaio's own C{as_future} first asks C{asyncio.iscoroutinefunction(fn)}
        on every call, which unwraps C{fn} and reads its code flags: a few
        microseconds, twice per RPC call (the breaker's and the pool's),
        in every process of C{--workers} (docs/workers.rst "What one RPC
        call costs"). Under Twisted, C{maybeDeferred} turns the coroutine an
        C{async def} returns into a Deferred itself, so the answer is the
        same without the question.
        """
        return maybeDeferred(fn, *args, **kwargs)

    def is_called(self, f: Any) -> bool:
        return bool(_tx.is_called(f))

    def cancel(self, f: Any) -> None:
        _tx.cancel(f)

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> IDelayedCall:
        return self.clock.callLater(delay, fn, *args)

    def sleep(self, delay: float) -> Any:
        """A future resolved after C{delay} seconds; cancelling it stops the timer."""
        call: list[IDelayedCall] = []

        def cancel(_: Any) -> None:
            if call and call[0].active():
                call[0].cancel()

        f = self.create_future(canceller=cancel)
        call.append(self.call_later(delay, self.resolve, f, None))
        return f
