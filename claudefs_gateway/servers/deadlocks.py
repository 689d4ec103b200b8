# -*- test-case-name: tests.servers.test_deadlocks -*-
"""
Blocked lock requests of every gateway on one C{claudefs-meta}, so that the
one that would close a cycle of waiters is refused (docs/rpc.rst
"Deadlocks across gateways").

A gateway whose client's blocking lock request (NLM C{block}, SMB without
FAIL_IMMEDIATELY) must wait tells the meta server (C{LOCK_WAIT}) before it
waits, and again when it stops waiting (C{LOCK_UNWAIT}). Every lock of
every gateway is in the meta server's table, so the owners a waiter waits
for are the holders of locks conflicting with its request there, now; a new
waiter whose blockers lead, waiter after waiter, back to itself would wait
forever, and is refused with C{Deadlock} (NLM4_DEADLCK,
STATUS_POSSIBLE_DEADLOCK), as one process's lock table refuses it.

The check runs when a wait is registered: a cycle is always closed by the
last of its waits to arrive, since a waiting owner takes no new lock. Over
PostgreSQL the waits are rows of C{lock_waiter}, and each check builds a
L{WaitGraph} from them and the database's locks (servers/shared_pg.py).
"""

from __future__ import annotations

from typing import Any

from claudefs_gateway import errors
from claudefs_gateway.vfs.locks import LockOwner, LockTable

__all__ = ["WaitGraph"]

#: Waiters kept at most (every gateway's together); past it, no new wait is checked.
MAX_WAITERS = 65536


def _end(start: int, length: int) -> float:
    return float("inf") if length == 0 else start + length


class WaitGraph:
    """@param table: the meta server's lock table (every gateway's locks)."""

    def __init__(self, table: LockTable) -> None:
        self.table = table
        # owner -> (session, ino, start, length, exclusive) of its one blocked request
        self.waits: dict[LockOwner, tuple[int, int, int, int, bool]] = {}

    def blockers(
        self, owner: LockOwner, ino: int, start: int, length: int, exclusive: bool
    ) -> set[LockOwner]:
        """The owners whose locks on C{ino} conflict with the request, now."""
        out: set[LockOwner] = set()
        end = _end(start, length)
        for lk in self.table.locks(ino):
            if lk.owner == owner or not (exclusive or lk.exclusive):
                continue
            if lk.start < end and start < _end(lk.start, lk.length):
                out.add(lk.owner)
        return out

    def wait(
        self, session: int, owner: LockOwner, ino: int, start: int, length: int, exclusive: bool
    ) -> None:
        """
        C{owner}'s request waits from now on.

        @raise Deadlock: its blockers wait, in turn, for C{owner}.
        """
        seen: set[LockOwner] = set()
        stack = list(self.blockers(owner, ino, start, length, exclusive))
        while stack:
            o = stack.pop()
            if o == owner:
                raise errors.Deadlock("the lock would deadlock with waiters through other gateways")
            if o in seen:
                continue
            seen.add(o)
            w = self.waits.get(o)
            if w is not None:
                stack.extend(self.blockers(o, *w[1:]))
        if owner in self.waits or len(self.waits) < MAX_WAITERS:
            self.waits[owner] = (session, ino, start, length, exclusive)

    def unwait(self, owner: LockOwner) -> None:
        self.waits.pop(owner, None)

    def drop_session(self, session: int) -> None:
        """A gateway's session reset or gone: its waits go with it."""
        for o in [o for o, w in self.waits.items() if w[0] == session]:
            del self.waits[o]

    def counts(self) -> dict[str, Any]:
        return {"lock_waiters": len(self.waits)}
