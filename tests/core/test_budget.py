"""The gateway-wide memory budget (issue 19)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway import errors
from claudefs_gateway.core.budget import MemoryBudget
from claudefs_gateway.core.metrics import Metrics


class MemoryBudgetTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.metrics = Metrics()
        self.budget = MemoryBudget(1000, self.metrics)

    def rejected(self, protocol: str) -> float | None:
        return self.metrics.registry.get_sample_value(
            "gateway_rejected_requests_total", {"protocol": protocol, "reason": "memory"}
        )

    def used(self) -> float | None:
        return self.metrics.registry.get_sample_value(
            "gateway_memory_budget_bytes", {"kind": "used"}
        )

    def test_reserve_within_and_over(self) -> None:
        """Reservations pass up to the limit; one past it is refused and counted."""
        self.assertTrue(self.budget.reserve(600, "smb"))
        self.assertTrue(self.budget.reserve(400, "smb"))
        self.assertFalse(self.budget.reserve(1, "smb"))
        self.assertEqual(self.rejected("smb"), 1)
        self.assertEqual(self.used(), 1000)
        self.budget.release(400)
        self.assertTrue(self.budget.reserve(1, "smb"))
        self.assertEqual(self.used(), 601)
        self.flushLoggedErrors()

    def test_outsized_alone_admitted(self) -> None:
        """A request bigger than the whole budget passes when nothing else is held."""
        self.assertTrue(self.budget.reserve(5000, "smb"))
        self.assertFalse(self.budget.reserve(1, "smb"))
        self.budget.release(5000)
        self.assertEqual(self.budget.used, 0)

    def test_check_after_hold(self) -> None:
        """Bytes already in memory are held unconditionally; new requests are refused while over."""
        self.budget.check("nfs3")
        self.budget.hold(1500)
        exc = self.assertRaises(errors.Overloaded, self.budget.check, "nfs3")
        self.assertIsInstance(exc, errors.Throttled)
        self.assertEqual(self.rejected("nfs3"), 1)
        self.budget.release(1500)
        self.budget.check("nfs3")

    def test_no_limit(self) -> None:
        budget = MemoryBudget(0, self.metrics)
        budget.hold(1 << 40)
        budget.check("s3")
        self.assertTrue(budget.reserve(1 << 40, "smb"))

    def test_warns_once_per_episode(self) -> None:
        from twisted.logger import LogLevel, capturedLogs

        with capturedLogs() as events:
            self.budget.hold(2000)
            for _ in range(5):
                self.assertRaises(errors.Overloaded, self.budget.check, "s3")
            self.budget.release(2000)
            self.budget.hold(2000)
            self.assertRaises(errors.Overloaded, self.budget.check, "s3")
        warns = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warns), 2)
        self.assertEqual(self.rejected("s3"), 6)
