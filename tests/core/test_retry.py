"""Tests for L{claudefs_gateway.core.retry}: failover order, back-off, idempotency."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.core.retry import Backoff, Failover
from claudefs_gateway.errors import BackendUnavailable, InFlightLost, NotFound, Timeout


class FakeBreaker:
    available = True


class FakePool:
    suspect = False


class FakeNode:
    def __init__(self, name: str, outcomes: list[Any]) -> None:
        self.name = name
        self.outcomes = outcomes
        self.calls = 0
        self.breaker = FakeBreaker()
        self.pool = FakePool()

    def call(self, fn: Any) -> defer.Deferred[Any]:
        self.calls += 1
        out = self.outcomes.pop(0) if self.outcomes else "ok"
        if isinstance(out, Exception):
            return defer.fail(out)
        if isinstance(out, defer.Deferred):
            return out
        return defer.succeed(fn(out))


class BackoffTests(SynchronousTestCase):
    def test_full_jitter_bounds(self) -> None:
        b = Backoff(attempts=5, base=0.1, cap=0.5)
        self.assertEqual(b.delay(0, lambda: 1.0), 0.1)
        self.assertEqual(b.delay(3, lambda: 1.0), 0.5)
        self.assertEqual(b.delay(3, lambda: 0.0), 0.0)


class FailoverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def failover(self, *nodes: FakeNode, attempts: int = 3) -> Failover:
        return Failover(list(nodes), self.clock, Backoff(attempts, 0.1, 1.0), rng=lambda: 1.0)  # type: ignore[arg-type]

    def test_next_node_when_first_unavailable(self) -> None:
        """An idempotent call goes on to the next node, which then stays preferred."""
        a = FakeNode("a", [BackendUnavailable()])
        b = FakeNode("b", ["x", "y"])
        f = self.failover(a, b)
        self.assertEqual(self.successResultOf(f.call(lambda v: v, idempotent=True)), "x")
        self.assertEqual(self.successResultOf(f.call(lambda v: v, idempotent=True)), "y")
        self.assertEqual((a.calls, b.calls), (1, 2))

    def test_open_breakers_tried_last(self) -> None:
        a = FakeNode("a", [])
        b = FakeNode("b", [])
        a.breaker.available = False
        f = self.failover(a, b)
        self.successResultOf(f.call(lambda v: v, idempotent=True))
        self.assertEqual((a.calls, b.calls), (0, 1))

    def test_suspect_node_tried_after_healthy_ones(self) -> None:
        """
        A node that dropped our connections (its server killed) goes after the
        healthy ones at once, its circuit still closed: the first call after the
        drop goes to the next node, not to the dead one first.
        """
        a = FakeNode("a", [])
        b = FakeNode("b", [])
        f = self.failover(a, b)
        self.successResultOf(f.call(lambda v: v, idempotent=True))
        self.assertEqual((a.calls, b.calls), (1, 0))
        a.pool.suspect = True
        self.successResultOf(f.call(lambda v: v, idempotent=False))
        self.assertEqual((a.calls, b.calls), (1, 1))
        # Suspect, yet before an open circuit.
        b.breaker.available = False
        self.successResultOf(f.call(lambda v: v, idempotent=True))
        self.assertEqual((a.calls, b.calls), (2, 1))

    def test_backoff_between_rounds(self) -> None:
        """After every node failed, the next round waits the jittered delay."""
        a = FakeNode("a", [Timeout(), Timeout(), "late"])
        f = self.failover(a)
        d = f.call(lambda v: v, idempotent=True)
        self.assertEqual(a.calls, 1)
        self.clock.advance(0.1)
        self.assertEqual(a.calls, 2)
        self.clock.advance(0.19)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        self.assertEqual(self.successResultOf(d), "late")

    def test_gives_up_after_attempts(self) -> None:
        a = FakeNode("a", [Timeout()] * 5)
        d = self.failover(a, attempts=2).call(lambda v: v, idempotent=True)
        self.clock.advance(10)
        self.failureResultOf(d, Timeout)
        self.assertEqual(a.calls, 2)

    def test_non_idempotent_not_resent_once_sent(self) -> None:
        """A create that timed out or lost its connection is not sent again."""
        for exc in (Timeout(), InFlightLost()):
            a = FakeNode("a", [exc])
            b = FakeNode("b", [])
            d = self.failover(a, b).call(lambda v: v, idempotent=False)
            self.failureResultOf(d, type(exc))
            self.assertEqual(b.calls, 0)

    def test_non_idempotent_resent_if_never_sent(self) -> None:
        """A call the breaker refused never reached the node: another node may take it."""
        a = FakeNode("a", [BackendUnavailable()])
        b = FakeNode("b", [])
        d = self.failover(a, b).call(lambda v: v, idempotent=False)
        self.assertEqual(self.successResultOf(d), "ok")

    def test_answers_are_not_retried(self) -> None:
        a = FakeNode("a", [NotFound()])
        d = self.failover(a).call(lambda v: v, idempotent=True)
        self.failureResultOf(d, NotFound)
        self.assertEqual(a.calls, 1)

    def test_cancel_stops_backoff(self) -> None:
        a = FakeNode("a", [Timeout()])
        d = self.failover(a).call(lambda v: v, idempotent=True)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.clock.advance(10)
        self.assertEqual(a.calls, 1)

    def test_stop_ends_backoff_wait(self) -> None:
        """A backend closing mid back-off: the call fails with its own error, no timer is left."""
        a = FakeNode("a", [Timeout(), "late"])
        f = self.failover(a)
        d = f.call(lambda v: v, idempotent=True)
        self.assertNoResult(d)
        self.assertTrue(self.clock.getDelayedCalls())
        f.stop()
        self.failureResultOf(d, Timeout)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(a.calls, 1)

    def test_no_retry_after_stop(self) -> None:
        """Calls failing after stop() are not retried later (they would outlive the backend)."""
        a = FakeNode("a", [Timeout(), "late"])
        f = self.failover(a)
        f.stop()
        d = f.call(lambda v: v, idempotent=True)
        self.failureResultOf(d, Timeout)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class OpenCircuitTests(SynchronousTestCase):
    def test_no_backoff_when_every_circuit_is_open(self) -> None:
        """With every breaker refusing, the failure comes back at once (no back-off rounds)."""
        clock = Clock()
        a = FakeNode("a", [BackendUnavailable()] * 5)
        a.breaker.available = False
        d = Failover([a], clock, Backoff(3, 0.1, 1.0), rng=lambda: 1.0).call(lambda v: v, True)  # type: ignore[list-item]
        self.failureResultOf(d, BackendUnavailable)
        self.assertEqual(a.calls, 1)
