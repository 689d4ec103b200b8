"""The attribute and name caches: eviction policies, TTL on a Clock, metrics."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.core.metrics import Metrics
from claudefs_gateway.vfs.cache import AttrCache, BoundedCache, NameCache


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


class AttrCacheManyTests(SynchronousTestCase):
    """
    A listing's page in one call each way (issue 18): L{AttrCache.get_many}
    answers as L{AttrCache.get} of each key would, L{AttrCache.put_read_many}
    keeps what L{AttrCache.put_read} of each pair would.
    """

    def attr_cache(self, n: int = 3, metrics: Metrics | None = None) -> tuple[AttrCache, Clock]:
        clock = Clock()
        return AttrCache(n, 30, "lru", clock, metrics), clock

    def test_get_many(self) -> None:
        m = Metrics()
        c, clock = self.attr_cache(metrics=m)
        c.put(1, "one")  # type: ignore[arg-type]
        clock.advance(20)
        c.put(2, "two")  # type: ignore[arg-type]
        self.assertEqual(c.get_many([2, 3, 1]), ["two", None, "one"])
        clock.advance(15)  # 1 expired, 2 not
        self.assertEqual(c.get_many([1, 2]), [None, "two"])
        reg = m.registry
        self.assertEqual(reg.get_sample_value("gateway_cache_hits_total", {"cache": "attr"}), 3)
        self.assertEqual(reg.get_sample_value("gateway_cache_misses_total", {"cache": "attr"}), 2)

    def test_get_many_counts_as_use(self) -> None:
        """What a listing read stays in the cache before what it did not (LRU)."""
        c, _ = self.attr_cache()
        for k in (1, 2, 3):
            c.put(k, str(k))  # type: ignore[arg-type]
        c.get_many([1])
        c.put(4, "4")  # type: ignore[arg-type]
        self.assertEqual([k for k in (1, 2, 3, 4) if k in c], [1, 3, 4])

    def test_put_read_many(self) -> None:
        c, _ = self.attr_cache()
        epoch = c.epoch
        self.assertTrue(c.put_read_many([(1, "a"), (2, None), (3, "c")], epoch))  # type: ignore[list-item]
        self.assertEqual((c.get(1), 2 in c, c.get(3)), ("a", False, "c"))
        # More than fit: the oldest go, as put does.
        c.put_read_many([(4, "d"), (5, "e")], c.epoch)  # type: ignore[list-item]
        self.assertEqual([k for k in (1, 3, 4, 5) if k in c], [3, 4, 5])

    def test_put_read_many_after_a_change(self) -> None:
        """A page read before a change came is not kept (it may be older)."""
        c, _ = self.attr_cache()
        epoch = c.epoch
        c.put(9, "new")  # type: ignore[arg-type]
        self.assertFalse(c.put_read_many([(1, "old")], epoch))  # type: ignore[list-item]
        self.assertNotIn(1, c)


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
