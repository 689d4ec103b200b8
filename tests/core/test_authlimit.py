"""Tests for L{claudefs_gateway.core.authlimit}."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.core.authlimit import AuthFailureLimiter


class AuthFailureLimiterTests(SynchronousTestCase):
    def test_lockout_after_failures_then_expiry(self) -> None:
        clock = Clock()
        lim = AuthFailureLimiter(clock, max_failures=3, window=60, lockout=30)
        for _ in range(2):
            lim.failed("10.0.0.1")
        self.assertFalse(lim.blocked("10.0.0.1"))
        lim.failed("10.0.0.1")
        self.assertTrue(lim.blocked("10.0.0.1"))
        self.assertFalse(lim.blocked("10.0.0.2"))
        clock.advance(30)
        self.assertFalse(lim.blocked("10.0.0.1"))

    def test_window_resets_count(self) -> None:
        clock = Clock()
        lim = AuthFailureLimiter(clock, max_failures=3, window=10, lockout=30)
        lim.failed("a")
        lim.failed("a")
        clock.advance(11)
        lim.failed("a")
        self.assertFalse(lim.blocked("a"))

    def test_success_clears_count_not_lockout(self) -> None:
        clock = Clock()
        lim = AuthFailureLimiter(clock, max_failures=2)
        lim.failed("a")
        lim.succeeded("a")
        lim.failed("a")
        self.assertFalse(lim.blocked("a"))
        lim.failed("a")
        lim.succeeded("a")
        self.assertTrue(lim.blocked("a"))

    def test_memory_bounded(self) -> None:
        lim = AuthFailureLimiter(Clock(), max_sources=100)
        for i in range(1000):
            lim.failed(f"10.0.{i // 256}.{i % 256}")
        self.assertEqual(len(lim._state), 100)
