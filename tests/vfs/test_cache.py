"""The attribute and name caches: eviction policies, TTL on a Clock, metrics."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.core.metrics import Metrics
from claudefs_gateway.vfs.cache import BoundedCache, NameCache


def cache(
    eviction: str, n: int = 3, ttl: float = 30, metrics: Metrics | None = None
) -> tuple[BoundedCache, Clock]:
    clock = Clock()
    return BoundedCache(n, ttl, eviction, clock, metrics), clock


class EvictionTests(SynchronousTestCase):
    def test_lru(self) -> None:
        c, _ = cache("lru")
        for k in "abc":
            c.put(k, k)
        c.get("a")
        c.put("d", "d")
        self.assertEqual(sorted(k for k in "abcd" if k in c), ["a", "c", "d"])

    def test_fifo(self) -> None:
        c, _ = cache("fifo")
        for k in "abc":
            c.put(k, k)
        c.get("a")
        c.put("d", "d")
        self.assertEqual(sorted(k for k in "abcd" if k in c), ["b", "c", "d"])

    def test_lfu(self) -> None:
        c, _ = cache("lfu")
        for k in "abc":
            c.put(k, k)
        for _ in range(3):
            c.get("a")
        c.get("b")
        c.put("d", "d")
        self.assertEqual(sorted(k for k in "abcd" if k in c), ["a", "b", "d"])
        c.put("e", "e")  # d (1 use) goes; ties broken by age
        self.assertEqual(sorted(k for k in "abcde" if k in c), ["a", "b", "e"])
        c.discard("a")
        c.put("f", "f")
        self.assertEqual(len(c), 3)

    def test_ttl(self) -> None:
        c, clock = cache("lru", ttl=30)
        c.put("a", 1)
        clock.advance(29.9)
        self.assertEqual(c.get("a"), 1)
        clock.advance(0.1)
        self.assertIsNone(c.get("a"))
        self.assertEqual(len(c), 0)

    def test_disabled(self) -> None:
        c, _ = cache("lru", n=0)
        c.put("a", 1)
        self.assertIsNone(c.get("a"))

    def test_metrics(self) -> None:
        m = Metrics()
        c, _ = cache("lru", metrics=m)
        c.get("x")
        c.put("x", 1)
        c.get("x")
        c.get("x")
        reg = m.registry
        self.assertEqual(reg.get_sample_value("gateway_cache_hits_total", {"cache": "attr"}), 2)
        self.assertEqual(reg.get_sample_value("gateway_cache_misses_total", {"cache": "attr"}), 1)

    def test_clear_counts(self) -> None:
        c, _ = cache("lfu")
        c.put("a", 1)
        c.put("b", 2)
        self.assertEqual(c.clear(), 2)
        self.assertEqual(len(c), 0)


class NameCacheTests(SynchronousTestCase):
    def test_forget_dir(self) -> None:
        for eviction in ("lru", "lfu", "fifo"):
            n = NameCache(10, 30, eviction, Clock())
            n.put((1, b"a"), 10)
            n.put((1, b"b"), 11)
            n.put((2, b"a"), 12)
            n.forget_dir(1)
            self.assertIsNone(n.get((1, b"a")))
            self.assertEqual(n.get((2, b"a")), 12)

    def test_eviction_keeps_index(self) -> None:
        n = NameCache(2, 30, "fifo", Clock())
        n.put((1, b"a"), 10)
        n.put((1, b"b"), 11)
        n.put((2, b"c"), 12)
        n.forget_dir(1)
        self.assertEqual(len(n), 1)
