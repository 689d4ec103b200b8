"""Tests for L{claudefs_gateway.core.health}."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.core.health import CheckResult, HealthChecks


class HealthChecksTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1706745600)
        self.health = HealthChecks(self.clock, timer=lambda: self.clock.seconds(), timeout=5)

    def document(self) -> dict:
        return self.successResultOf(defer.Deferred.fromCoroutine(self.health.run()))

    def test_runbook_shape(self) -> None:
        """The document has exactly the runbook's keys."""
        self.health.register("backend", CheckResult.healthy)
        doc = self.document()
        self.assertEqual(
            doc,
            {
                "overall": "healthy",
                "timestamp": 1706745600,
                "checks": [
                    {"name": "backend", "status": "healthy", "message": "", "duration_ms": 0}
                ],
            },
        )

    def test_worst_wins(self) -> None:
        self.health.register("a", CheckResult.healthy)
        self.health.register("b", lambda: CheckResult.degraded("slow"))
        self.assertEqual(self.document()["overall"], "degraded")
        self.health.register("c", lambda: CheckResult.unhealthy("down"))
        self.assertEqual(self.document()["overall"], "unhealthy")
        self.health.unregister("c")
        self.assertEqual(self.document()["overall"], "degraded")

    def test_starting_ranks_between_degraded_and_unhealthy(self) -> None:
        """A starting check makes the gateway starting (not unhealthy), unless something is unhealthy."""
        self.health.register("a", lambda: CheckResult.degraded("slow"))
        self.health.register("b", lambda: CheckResult.starting("opening the store"))
        self.assertEqual(self.document()["overall"], "starting")
        self.health.register("c", lambda: CheckResult.unhealthy("down"))
        self.assertEqual(self.document()["overall"], "unhealthy")

    def test_no_checks_is_healthy(self) -> None:
        self.assertEqual(self.document()["overall"], "healthy")

    def test_async_check_and_duration(self) -> None:
        d: defer.Deferred[CheckResult] = defer.Deferred()
        self.health.register("slow", lambda: d)
        result = defer.Deferred.fromCoroutine(self.health.run())
        self.assertNoResult(result)
        self.clock.advance(0.25)
        d.callback(CheckResult.healthy())
        doc = self.successResultOf(result)
        self.assertEqual(doc["checks"][0]["duration_ms"], 250)

    def test_timeout_is_unhealthy(self) -> None:
        """A check that never answers is unhealthy after the deadline."""
        self.health.register("stuck", lambda: defer.Deferred())
        result = defer.Deferred.fromCoroutine(self.health.run())
        self.clock.advance(5)
        doc = self.successResultOf(result)
        self.assertEqual(doc["checks"][0]["status"], "unhealthy")
        self.assertIn("timed out", doc["checks"][0]["message"])

    def test_raising_check_hides_details(self) -> None:
        """A check that raises is unhealthy; its message names only the exception class."""

        def boom() -> CheckResult:
            raise OSError("/secret/path/leaked")

        self.health.register("disk", boom)
        doc = self.document()
        self.assertEqual(
            doc["checks"][0],
            {
                "name": "disk",
                "status": "unhealthy",
                "message": "check failed: OSError",
                "duration_ms": 0,
            },
        )
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
