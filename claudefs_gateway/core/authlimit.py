# -*- test-case-name: tests.core.test_authlimit -*-
"""
Slowing down password and token guessing, for every protocol that authenticates.

After C{max_failures} failed attempts from one source within C{window} seconds,
that source is refused without checking credentials for C{lockout} seconds.
Memory is bounded: at most C{max_sources} sources are remembered; the oldest
are forgotten first (an attacker spraying sources gains nothing: each new one
still gets only C{max_failures} tries before lockout).
"""

from __future__ import annotations

from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime

__all__ = ["AuthFailureLimiter"]


class AuthFailureLimiter:
    def __init__(
        self,
        clock: IReactorTime,
        max_failures: int = 5,
        window: float = 60.0,
        lockout: float = 60.0,
        max_sources: int = 10000,
    ) -> None:
        self._clock = clock
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self._max_sources = max_sources
        # source -> (failures in window, window start, locked until)
        self._state: OrderedDict[str, tuple[int, float, float]] = OrderedDict()

    def blocked(self, source: str) -> bool:
        """True if C{source} is locked out now; do not even check its credentials."""
        st = self._state.get(source)
        return st is not None and st[2] > self._clock.seconds()

    def failed(self, source: str) -> None:
        """Record a failed attempt from C{source}."""
        now = self._clock.seconds()
        count, start, until = self._state.pop(source, (0, now, 0.0))
        if now - start > self.window:
            count, start = 0, now
        count += 1
        if count >= self.max_failures:
            until = now + self.lockout
            count, start = 0, now
        self._state[source] = (count, start, until)
        while len(self._state) > self._max_sources:
            self._state.popitem(last=False)

    def succeeded(self, source: str) -> None:
        """A success clears the source's failure count (not an active lockout)."""
        st = self._state.get(source)
        if st is not None and st[2] <= self._clock.seconds():
            del self._state[source]
