"""Tests for L{claudefs_gateway.core.ratelimit}: token buckets per client and per user."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.core import config as cfg
from claudefs_gateway.core.metrics import Metrics
from claudefs_gateway.core.ratelimit import RateLimiter, TokenBucket
from claudefs_gateway.errors import BackendUnavailable, Throttled


class TokenBucketTests(SynchronousTestCase):
    def test_burst_then_rate(self) -> None:
        """A full bucket lets C{burst} through at once, then C{rate} a second."""
        b = TokenBucket(rate=2, burst=3, now=0)
        self.assertEqual([b.take(0) for _ in range(4)], [True, True, True, False])
        self.assertAlmostEqual(b.retry_after(), 0.5)
        self.assertFalse(b.take(0.4))
        self.assertTrue(b.take(0.5))
        self.assertTrue(b.take(100))  # refills, but never beyond burst
        self.assertEqual(sum(b.take(100) for _ in range(10)), 2)


class RateLimiterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics()

    def rejected(self, protocol: str, reason: str) -> float | None:
        return self.metrics.registry.get_sample_value(
            "gateway_rejected_requests_total", {"protocol": protocol, "reason": reason}
        )

    def test_off_by_default(self) -> None:
        """The configuration's defaults (rates of 0) limit nothing."""
        limiter = RateLimiter.from_config(self.clock, self.metrics, cfg.default_config().limits)
        self.assertFalse(limiter.enabled)
        for _ in range(10_000):
            limiter.admit("s3", "10.0.0.1", 1000)

    def test_per_client(self) -> None:
        """Each address has its own bucket, whoever the user; refusals are counted."""
        limiter = RateLimiter(self.clock, self.metrics, per_client=(1, 2))
        limiter.admit("nfs3", "10.0.0.1", 1)
        limiter.admit("nfs3", "10.0.0.1", 2)
        with self.assertRaises(Throttled) as e:
            limiter.admit("nfs3", "10.0.0.1", 3)
        self.assertIsInstance(e.exception, BackendUnavailable)
        limiter.admit("nfs3", "10.0.0.2", 3)
        self.assertEqual(self.rejected("nfs3", "client_rate"), 1)
        self.clock.advance(1)
        limiter.admit("s3", "10.0.0.1", 1)
        self.assertRaises(Throttled, limiter.admit, "s3", "10.0.0.1", 1)
        self.assertEqual(self.rejected("s3", "client_rate"), 1)

    def test_per_user_across_protocols_and_machines(self) -> None:
        """A uid's bucket is shared by every protocol and address; no uid, no user limit."""
        limiter = RateLimiter(self.clock, self.metrics, per_user=(10, 3))
        limiter.admit("nfs3", "10.0.0.1", 1000)
        limiter.admit("s3", "10.0.0.2", 1000)
        limiter.admit("smb", "10.0.0.3", 1000)
        self.assertRaises(Throttled, limiter.admit, "smb", "10.0.0.4", 1000)
        limiter.admit("smb", "10.0.0.4", 1001)
        for _ in range(100):
            limiter.admit("nfs3", "10.0.0.1", None)
        self.assertEqual(self.rejected("smb", "user_rate"), 1)
        self.clock.advance(0.1)
        limiter.admit("smb", "10.0.0.4", 1000)

    def test_burst_defaults_to_one_second(self) -> None:
        limiter = RateLimiter(self.clock, self.metrics, per_client=(5, 0))
        for _ in range(5):
            limiter.admit("s3", "a")
        self.assertRaises(Throttled, limiter.admit, "s3", "a")

    def test_bounded_memory(self) -> None:
        """At most max_tracked buckets are kept; the least recently used goes."""
        limiter = RateLimiter(
            self.clock, self.metrics, per_client=(1, 1), per_user=(1, 1), max_tracked=100
        )
        for i in range(1000):
            limiter.admit("nfs3", f"10.0.{i // 256}.{i % 256}", i)
        self.assertEqual(limiter.tracked(), (100, 100))

    def test_logged_once_a_minute(self) -> None:
        """A client kept over its rate is logged once a minute, not per request."""
        from twisted.logger import capturedLogs

        limiter = RateLimiter(self.clock, self.metrics, per_client=(1, 1))
        with capturedLogs() as events:
            for _ in range(50):
                try:
                    limiter.admit("s3", "10.9.9.9")
                except Throttled:
                    pass
            self.clock.advance(30)
            limiter.admit("s3", "10.9.9.9")
            self.assertRaises(Throttled, limiter.admit, "s3", "10.9.9.9")
            self.clock.advance(31)
            limiter.admit("s3", "10.9.9.9")
            self.assertRaises(Throttled, limiter.admit, "s3", "10.9.9.9")
        warned = [e for e in events if "over the" in e.get("log_format", "")]
        self.assertEqual(len(warned), 2)
        self.assertEqual(warned[0]["client"], "10.9.9.9")
