"""L{claudefs_gateway.core.eager}: coroutines that finish without waiting make no Deferred."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.core.eager import eager, eager_deferred


class Boom(Exception):
    pass


async def add(d: defer.Deferred[int], n: int) -> int:
    return await d + n


async def fail_now() -> int:
    raise Boom()


class Yields:
    """An awaitable that yields a plain value once (Twisted sends it back)."""

    def __await__(self) -> Any:
        got = yield 7
        return got


async def plain_yield() -> Any:
    return await Yields()


class EagerTests(SynchronousTestCase):
    def test_finished_without_waiting(self) -> None:
        """Awaiting only fired Deferreds: the value itself, no Deferred."""
        self.assertEqual(eager(add(defer.succeed(1), 2)), 3)

    def test_waits(self) -> None:
        """Awaiting an unfired Deferred: a Deferred that fires when it does."""
        d: defer.Deferred[int] = defer.Deferred()
        got = eager(add(d, 2))
        assert isinstance(got, defer.Deferred)
        self.assertNoResult(got)
        d.callback(5)
        self.assertEqual(self.successResultOf(got), 7)

    def test_waits_then_fails(self) -> None:
        d: defer.Deferred[int] = defer.Deferred()
        got = eager(add(d, 2))
        assert isinstance(got, defer.Deferred)
        d.errback(Boom())
        self.failureResultOf(got, Boom)

    def test_exception_propagates(self) -> None:
        self.assertRaises(Boom, eager, fail_now())
        self.assertRaises(Boom, eager, add(defer.fail(Boom()), 1))

    def test_cancel_reaches_what_it_awaits(self) -> None:
        """Cancelling the Deferred of a waiting coroutine cancels the Deferred it awaits."""
        cancelled: list[bool] = []
        d: defer.Deferred[int] = defer.Deferred(lambda _: cancelled.append(True))
        got = eager(add(d, 1))
        assert isinstance(got, defer.Deferred)
        got.cancel()
        self.assertEqual(cancelled, [True])
        self.failureResultOf(got, defer.CancelledError)

    def test_plain_values_yielded_are_sent_back(self) -> None:
        self.assertEqual(eager(plain_yield()), 7)


class EagerDeferredTests(SynchronousTestCase):
    def test_fired_at_once(self) -> None:
        d = eager_deferred(add(defer.succeed(1), 2))
        self.assertEqual(self.successResultOf(d), 3)

    def test_failed_at_once(self) -> None:
        self.failureResultOf(eager_deferred(fail_now()), Boom)

    def test_waits(self) -> None:
        w: defer.Deferred[int] = defer.Deferred()
        d = eager_deferred(add(w, 1))
        self.assertNoResult(d)
        w.callback(1)
        self.assertEqual(self.successResultOf(d), 2)

    def test_errback_on_failure_only(self) -> None:
        seen: list[object] = []

        def count(f: object) -> object:
            seen.append(f)
            return f

        self.assertEqual(self.successResultOf(eager_deferred(add(defer.succeed(1), 1), count)), 2)
        self.assertEqual(seen, [])
        self.failureResultOf(eager_deferred(fail_now(), count), Boom)
        self.assertEqual(len(seen), 1)
        w: defer.Deferred[int] = defer.Deferred()
        d = eager_deferred(add(w, 1), count)
        w.errback(Boom())
        self.failureResultOf(d, Boom)
        self.assertEqual(len(seen), 2)
