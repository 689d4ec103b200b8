# -*- test-case-name: tests.admin.test_web -*-
"""
Caches that an operator can empty with C{POST /admin/cache/invalidate}.

The runbook's remedy for suspected inconsistency is to drop every cache; each
cache registers an invalidation function here instead of the admin API knowing
every cache.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Caches"]


class Caches:
    def __init__(self) -> None:
        self._caches: dict[str, Callable[[], int]] = {}

    def register(self, name: str, invalidate: Callable[[], int]) -> None:
        """C{invalidate()} empties the cache and returns how many entries it dropped."""
        self._caches[name] = invalidate

    def invalidate_all(self) -> dict[str, int]:
        return {name: fn() for name, fn in self._caches.items()}

    def names(self) -> list[str]:
        return list(self._caches)
