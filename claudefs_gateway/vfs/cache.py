# -*- test-case-name: tests.vfs.test_cache -*-
"""
The attribute cache (``cache.nfs_attr_cache``) and the name cache beside it.

Every front end's GETATTR/LOOKUP path goes through them. Entries live at most
C{default_ttl_secs} (other gateways sharing a remote backend may change things
behind our back), and are replaced or dropped on every change made through
this gateway, so a client never sees its own change undone. When full, one
entry goes by the configured policy: C{lru} (least recently used), C{lfu}
(least frequently used, ties by age) or C{fifo} (oldest inserted).

Hits and misses are counted in C{gateway_cache_hits_total}/
C{gateway_cache_misses_total} with C{cache="attr"} or C{cache="name"}.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

from twisted.internet.interfaces import IReactorTime

from claudefs_gateway.core.metrics import Metrics, Tally
from claudefs_gateway.fstypes import Attributes

__all__ = ["BoundedCache", "AttrCache", "NameCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """A size- and age-bounded map with LRU, LFU or FIFO eviction."""

    def __init__(
        self,
        max_entries: int,
        ttl: float,
        eviction: str,
        clock: IReactorTime,
        metrics: Metrics | None = None,
        name: str = "attr",
    ) -> None:
        if eviction not in ("lru", "lfu", "fifo"):
            raise ValueError(eviction)
        self.max_entries = max_entries
        self.ttl = ttl
        self.eviction = eviction
        self._clock = clock
        # key -> (value, expires)
        self._data: OrderedDict[K, tuple[V, float]] = OrderedDict()
        # LFU: key -> use count, and count -> keys in insertion order (O(1) eviction).
        self._freq: dict[K, int] = {}
        self._buckets: dict[int, OrderedDict[K, None]] = {}
        self._min_freq = 0
        self._hits: Tally | None = None
        self._misses: Tally | None = None
        if metrics is not None:
            # Tallies, not prometheus children: a request looks up several times.
            self._hits = metrics.tally("gateway_cache_hits_total", name)
            self._misses = metrics.tally("gateway_cache_misses_total", name)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def get(self, key: K) -> V | None:
        entry = self._data.get(key)
        if entry is None:
            if self._misses is not None:
                self._misses.value += 1
            return None
        value, expires = entry
        if self._clock.seconds() >= expires:
            self.discard(key)
            if self._misses is not None:
                self._misses.value += 1
            return None
        if self.eviction == "lru":
            self._data.move_to_end(key)
        elif self.eviction == "lfu":
            self._bump(key)
        if self._hits is not None:
            self._hits.value += 1
        return value

    def put(self, key: K, value: V) -> None:
        if self.max_entries <= 0:
            return
        expires = self._clock.seconds() + self.ttl
        if key in self._data:
            self._data[key] = (value, expires)
            if self.eviction == "lru":
                self._data.move_to_end(key)
            return
        while len(self._data) >= self.max_entries:
            self._evict()
        self._data[key] = (value, expires)
        if self.eviction == "lfu":
            self._freq[key] = 1
            self._buckets.setdefault(1, OrderedDict())[key] = None
            self._min_freq = 1

    def put_many(self, items: list[tuple[K, V | None]]) -> None:
        """L{put} of each pair whose value is not None, in order (one clock reading)."""
        if self.max_entries <= 0:
            return
        if self.eviction == "lfu":
            for key, value in items:
                if value is not None:
                    self.put(key, value)
            return
        expires = self._clock.seconds() + self.ttl
        data = self._data
        lru = self.eviction == "lru"
        move = data.move_to_end
        for key, value in items:
            if value is None:
                continue
            if key in data:
                data[key] = (value, expires)
                if lru:
                    move(key)
                continue
            while len(data) >= self.max_entries:
                self._evict()
            data[key] = (value, expires)

    def discard(self, key: K) -> None:
        if self._data.pop(key, None) is None:
            return
        if self.eviction == "lfu":
            f = self._freq.pop(key)
            bucket = self._buckets[f]
            del bucket[key]
            if not bucket:
                del self._buckets[f]

    def clear(self) -> int:
        n = len(self._data)
        self._data.clear()
        self._freq.clear()
        self._buckets.clear()
        self._min_freq = 0
        return n

    def _bump(self, key: K) -> None:
        f = self._freq[key]
        bucket = self._buckets[f]
        del bucket[key]
        if not bucket:
            del self._buckets[f]
            if self._min_freq == f:
                self._min_freq = f + 1
        self._freq[key] = f + 1
        self._buckets.setdefault(f + 1, OrderedDict())[key] = None

    def _evict(self) -> None:
        if self.eviction == "lfu":
            while self._min_freq not in self._buckets:
                self._min_freq = min(self._buckets)
            key = next(iter(self._buckets[self._min_freq]))
            self.discard(key)
        else:
            key, _ = self._data.popitem(last=False)


class AttrCache(BoundedCache[int, Attributes]):
    """
    Attributes by inode number.

    C{epoch} counts the changes the cache has heard (attributes a change
    left, entries dropped): an answer read from the store before one of them
    may be older than what it would replace, or than what was dropped, and
    is kept only if none came meanwhile (L{put_read}). A store in this
    process answers in order; a remote one answers reads on pooled
    connections while change events come on another, in any order.
    """

    epoch = 0

    def put(self, key: int, value: Attributes) -> None:
        self.epoch += 1
        super().put(key, value)

    def put_read(self, key: int, value: Attributes, epoch: int) -> bool:
        """Keep C{value}, read when the epoch was C{epoch}, unless a change came since."""
        if epoch != self.epoch:
            return False
        super().put(key, value)
        return True

    def get_many(self, keys: list[int]) -> list[Attributes | None]:
        """
        L{get} of each key, in order, with one clock reading: a listing's
        page (the embedded store's C{readdir_cached}).
        """
        data = self._data
        now = self._clock.seconds()
        lru = self.eviction == "lru"
        lfu = self.eviction == "lfu"
        move = data.move_to_end
        out: list[Attributes | None] = []
        hits = 0
        for key in keys:
            entry = data.get(key)
            if entry is None or now >= entry[1]:
                out.append(None)
                continue
            if lru:
                move(key)
            elif lfu:
                self._bump(key)
            out.append(entry[0])
            hits += 1
        if self._hits is not None:
            self._hits.value += hits
        if self._misses is not None:
            self._misses.value += len(keys) - hits
        return out

    def put_read_many(self, items: list[tuple[int, Attributes | None]], epoch: int) -> bool:
        """L{put_read} of each pair whose attributes are not None (a listing's page)."""
        if epoch != self.epoch:
            return False
        super().put_many(items)
        return True

    def discard(self, key: int) -> None:
        self.epoch += 1
        super().discard(key)

    def clear(self) -> int:
        self.epoch += 1
        return super().clear()

    def update(self, a: Attributes | None) -> None:
        if a is not None:
            self.put(a.ino, a)


class NameCache(BoundedCache[tuple[int, bytes], int]):
    """
    (directory, name) → inode, for LOOKUP. Dropped per directory whenever the
    directory's entries change, so a stale name can never be served.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("name", "name")
        super().__init__(*args, **kwargs)
        self._by_dir: dict[int, set[bytes]] = {}

    def put(self, key: tuple[int, bytes], value: int) -> None:
        super().put(key, value)
        if key in self._data:
            self._by_dir.setdefault(key[0], set()).add(key[1])

    def discard(self, key: tuple[int, bytes]) -> None:
        super().discard(key)
        names = self._by_dir.get(key[0])
        if names is not None:
            names.discard(key[1])
            if not names:
                del self._by_dir[key[0]]

    def _evict(self) -> None:
        if self.eviction == "lfu":
            super()._evict()
            return
        key, _ = self._data.popitem(last=False)
        names = self._by_dir.get(key[0])
        if names is not None:
            names.discard(key[1])
            if not names:
                del self._by_dir[key[0]]

    def forget_dir(self, dir_ino: int) -> None:
        for name in list(self._by_dir.get(dir_ino, ())):
            self.discard((dir_ino, name))

    def clear(self) -> int:
        self._by_dir.clear()
        return super().clear()
