"""Tests for L{claudefs_gateway.core.breaker}: every transition on a Clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.core.breaker import CLOSED, HALF_OPEN, OPEN, Breaker, BreakerMachine
from claudefs_gateway.core.config import CircuitBreaker
from claudefs_gateway.core.machines import to_dot
from claudefs_gateway.core.metrics import Metrics
from claudefs_gateway.errors import IO, BackendUnavailable, NotFound, Timeout

DOCS = Path(__file__).parent.parent.parent / "docs"


def settings(**kw: int) -> CircuitBreaker:
    base = dict(failure_threshold=3, success_threshold=2, open_duration_ms=30000, timeout_ms=5000)
    base.update(kw)
    return CircuitBreaker(**base)


class BreakerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics(CollectorRegistry())
        self.breaker = Breaker("meta-1", settings(), self.clock, self.metrics)

    def gauge(self) -> float | None:
        return self.metrics.registry.get_sample_value(
            "gateway_circuit_breaker_state", {"backend": "meta-1"}
        )

    def fail_once(self, exc: Exception | None = None) -> None:
        f = self.failureResultOf(self.breaker.call(lambda: defer.fail(exc or ConnectionError())))
        self.assertFalse(f.check(BackendUnavailable))

    def succeed_once(self) -> None:
        self.assertEqual(self.successResultOf(self.breaker.call(lambda: defer.succeed(7))), 7)

    def test_opens_after_failure_threshold(self) -> None:
        """failure_threshold consecutive failures open it; the next call is refused at once."""
        self.assertEqual(self.gauge(), 0)
        self.fail_once()
        self.fail_once()
        self.assertEqual(self.breaker.state, CLOSED)
        self.fail_once()
        self.assertEqual(self.breaker.state, OPEN)
        self.assertEqual(self.gauge(), 1)
        calls = []
        f = self.failureResultOf(self.breaker.call(lambda: calls.append(1)))
        f.trap(BackendUnavailable)
        self.assertEqual(calls, [])
        rejected = self.metrics.registry.get_sample_value(
            "gateway_rejected_requests_total", {"protocol": "backend", "reason": "circuit_open"}
        )
        self.assertEqual(rejected, 1)

    def test_success_resets_the_count(self) -> None:
        """Only consecutive failures count."""
        self.fail_once()
        self.fail_once()
        self.succeed_once()
        self.fail_once()
        self.fail_once()
        self.assertEqual(self.breaker.state, CLOSED)

    def test_fs_errors_are_answers(self) -> None:
        """An FSError is the node answering; it never opens the circuit."""
        for _ in range(10):
            self.failureResultOf(self.breaker.call(lambda: defer.fail(NotFound()))).trap(NotFound)
        self.assertEqual(self.breaker.state, CLOSED)
        self.fail_once(IO())  # IO is an FSError too: the node answered
        self.assertEqual(self.breaker.state, CLOSED)

    def test_answers_skip_the_machine_while_closed(self) -> None:
        """
        A closed circuit with no failure counted takes a success and an error
        answer (NotFound) without the state machine's dispatch; after a
        failure, an error answer still resets the count through it.
        """
        inputs: list[str] = []
        real = self.breaker._machine.succeeded

        def succeeded() -> Any:
            inputs.append("succeeded")
            return real()

        self.patch(self.breaker._machine, "succeeded", succeeded)
        self.succeed_once()
        self.failureResultOf(self.breaker.call(lambda: defer.fail(NotFound()))).trap(NotFound)
        self.assertEqual(inputs, [])
        self.fail_once()
        self.fail_once()
        self.failureResultOf(self.breaker.call(lambda: defer.fail(NotFound()))).trap(NotFound)
        self.assertEqual(inputs, ["succeeded"])
        self.fail_once()
        self.fail_once()
        self.assertEqual(self.breaker.state, CLOSED)  # the count started again
        self.fail_once()
        self.assertEqual(self.breaker.state, OPEN)

    def test_timeouts_open_it(self) -> None:
        """A call past timeout_ms is cancelled, fails with Timeout and counts as a failure."""
        pending = []

        def slow() -> defer.Deferred[None]:
            d: defer.Deferred[None] = defer.Deferred()
            pending.append(d)
            return d

        results = [self.breaker.call(slow) for _ in range(3)]
        for d in results:
            self.assertNoResult(d)
        self.clock.advance(4.999)
        self.assertNoResult(results[0])
        self.clock.advance(0.001)
        for d in results:
            self.failureResultOf(d).trap(Timeout)
        self.assertTrue(all(p.called for p in pending))  # cancelled
        self.assertEqual(self.breaker.state, OPEN)

    def test_call_is_the_calls_deferred(self) -> None:
        """
        The breaker's verdict rides on the call's own Deferred (no second
        one per call): a caller's cancel is no verdict on the node, and its
        timer is gone with the answer.
        """
        inner: list[defer.Deferred[int]] = []

        def call() -> defer.Deferred[int]:
            d: defer.Deferred[int] = defer.Deferred()
            inner.append(d)
            return d

        d = self.breaker.call(call)
        self.assertIs(d, inner[0])
        d.callback(3)
        self.assertEqual(self.successResultOf(d), 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        for _ in range(5):
            gone = self.breaker.call(call)
            gone.cancel()
            self.failureResultOf(gone, defer.CancelledError)
        self.assertEqual(self.breaker.state, CLOSED)

    def test_half_open_after_open_duration_then_closed(self) -> None:
        """open_duration_ms later trial calls go through; success_threshold of them close it."""
        for _ in range(3):
            self.fail_once()
        self.clock.advance(29.9)
        self.assertEqual(self.breaker.state, OPEN)
        self.clock.advance(0.1)
        self.assertEqual(self.breaker.state, HALF_OPEN)
        self.assertEqual(self.gauge(), 2)
        self.succeed_once()
        self.assertEqual(self.breaker.state, HALF_OPEN)
        self.succeed_once()
        self.assertEqual(self.breaker.state, CLOSED)
        self.assertEqual(self.gauge(), 0)

    def test_half_open_failure_reopens(self) -> None:
        for _ in range(3):
            self.fail_once()
        self.clock.advance(30)
        self.fail_once()
        self.assertEqual(self.breaker.state, OPEN)
        self.clock.advance(30)
        self.assertEqual(self.breaker.state, HALF_OPEN)

    def test_half_open_limits_trials(self) -> None:
        """At most success_threshold trial calls run at once; a cancelled one frees its slot."""
        for _ in range(3):
            self.fail_once()
        self.clock.advance(30)
        held = [defer.Deferred(), defer.Deferred()]
        calls = [self.breaker.call(lambda d=d: d) for d in held]
        self.failureResultOf(self.breaker.call(lambda: 1)).trap(BackendUnavailable)
        self.assertFalse(self.breaker.available)
        calls[0].cancel()
        self.failureResultOf(calls[0])
        self.assertTrue(self.breaker.available)
        self.assertEqual(self.breaker.state, HALF_OPEN)

    def test_stale_results_ignored(self) -> None:
        """A call admitted before the circuit opened cannot close it when it finally succeeds."""
        slow: defer.Deferred[int] = defer.Deferred()
        late = self.breaker.call(lambda: slow)
        for _ in range(3):
            self.fail_once()
        self.clock.advance(30)  # half-open; the slow call timed out long ago
        self.failureResultOf(late).trap(Timeout)
        self.assertEqual(self.breaker.state, HALF_OPEN)

    def test_caller_cancel_is_no_verdict(self) -> None:
        for _ in range(2):
            self.fail_once()
        d = self.breaker.call(lambda: defer.Deferred())
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(self.breaker.state, CLOSED)
        self.fail_once()
        self.assertEqual(self.breaker.state, OPEN)

    def test_listeners_hear_changes(self) -> None:
        seen: list[str] = []
        self.breaker.on_change(seen.append)
        for _ in range(3):
            self.fail_once()
        self.clock.advance(30)
        self.succeed_once()
        self.succeed_once()
        self.assertEqual(seen, [OPEN, HALF_OPEN, CLOSED])

    def test_diagram_is_current(self) -> None:
        """docs/circuit-breaker.dot is the machine (regenerate with to_dot if this fails)."""
        self.assertEqual(
            (DOCS / "circuit-breaker.dot").read_text(), to_dot(BreakerMachine, "circuit_breaker")
        )


class AioTests(SynchronousTestCase):
    def test_as_future_without_the_coroutine_question(self) -> None:
        """
        L{Aio.as_future} gives a plain function's value, a Deferred's result,
        an exception as a failure and an C{async def}'s result, without
        asking txaio's C{iscoroutinefunction} at every call (twice per RPC
        call).
        """
        import txaio.tx

        from claudefs_gateway.core.aio import Aio

        asked: list[Any] = []
        real = txaio.tx.iscoroutinefunction

        def counting(fn: Any) -> bool:
            asked.append(fn)
            return bool(real(fn))

        self.patch(txaio.tx, "iscoroutinefunction", counting)
        aio = Aio(Clock())

        async def coro(x: int) -> int:
            return x + 1

        def boom() -> None:
            raise NotFound("x")

        self.assertEqual(self.successResultOf(aio.as_future(lambda: 3)), 3)
        self.assertEqual(self.successResultOf(aio.as_future(defer.succeed, 4)), 4)
        self.assertEqual(self.successResultOf(aio.as_future(coro, 5)), 6)
        self.failureResultOf(aio.as_future(boom), NotFound)
        self.assertEqual(asked, [])
