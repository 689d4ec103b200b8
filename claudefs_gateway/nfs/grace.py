# -*- test-case-name: tests.nfs.test_grace -*-
"""
One grace period for NLM and NFSv4 after a restart.

Locks and opens live in the gateway's memory; a restart loses them while
clients believe they still hold them. Both lock protocols answer with a
grace period in which only reclaims are granted, and it has to be one
period in the one lock table they share: otherwise an NFSv4 client could be
granted a lock an NLM client is still entitled to reclaim, or the reverse.
L{Grace} starts the lock table's grace period when the first protocol asks
for it (NLM when the last run had lock clients, NFSv4 when it had client
records) and ends it early when every protocol that asked is done: NFSv4
when each of the last run's clients has sent RECLAIM_COMPLETE. NLM has no
such message, so a grace begun for NLM clients always runs its full length.
"""

from __future__ import annotations

from typing import Any

from claudefs_gateway.core.log import Logger

__all__ = ["Grace"]


class Grace:
    """
    @param seconds: the grace period (C{nfs.grace_secs}); 0 disables it.
    """

    _log = Logger()

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.locks: Any = None
        self.waiting: set[str] = set()

    def begin(self, locks: Any, reason: str) -> None:
        """C{reason} ("nlm", "nfs4") has clients that may reclaim: grant only reclaims."""
        if self.seconds <= 0 or locks is None:
            return
        self.locks = locks
        self.waiting.add(reason)
        if not locks.in_grace:
            locks.start_grace(self.seconds)
            self._log.info(
                "grace period of {seconds}s for clients of {reason}",
                seconds=self.seconds,
                reason=reason,
            )

    @property
    def active(self) -> bool:
        return self.locks is not None and bool(self.locks.in_grace)

    def done(self, reason: str) -> None:
        """C{reason}'s clients have all reclaimed: end grace if no one else waits."""
        if reason not in self.waiting:
            return
        self.waiting.discard(reason)
        if not self.waiting and self.active:
            self._log.info("every client reclaimed; grace period over early")
            self.locks.end_grace()
