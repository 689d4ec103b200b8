"""L{LockTable.holders}, C{held_by} and C{totals}: the lock table as status and metrics see it."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.vfs.locks import LockOwner, LockTable


class HoldersTests(SynchronousTestCase):
    def test_counts_per_lock_client(self) -> None:
        """Locks, share reservations and blocked requests, per (protocol, client)."""
        t = LockTable(Clock())
        a1 = LockOwner("nlm", "hostA", b"1")
        a2 = LockOwner("nlm", "hostA", b"2")
        smb = LockOwner("smb", "c0ffee", b"fid")
        self.successResultOf(t.lock(10, a1, 0, 10, True))
        self.successResultOf(t.lock(10, a1, 100, 10, False))
        self.successResultOf(t.lock(11, a2, 0, 0, True))
        self.successResultOf(t.lock(12, smb, 0, 5, True))
        t.open_share(12, smb, {"read"}, set())
        blocked = t.lock(10, smb, 0, 1, True, wait=True)
        self.assertNoResult(blocked)
        self.assertEqual(
            t.holders(),
            [
                {"protocol": "nlm", "client": "hostA", "locks": 3, "shares": 0, "waiting": 0},
                {"protocol": "smb", "client": "c0ffee", "locks": 1, "shares": 1, "waiting": 1},
            ],
        )
        self.assertEqual(t.held_by("nlm", "hostA"), 3)
        self.assertEqual(t.held_by("smb", "nobody"), 0)
        self.assertEqual(t.totals(), {"nlm": (3, 0, 0), "smb": (1, 1, 1)})
        blocked.cancel()
        self.failureResultOf(blocked)
        t.release_client("nlm", "hostA")
        self.assertEqual([h["client"] for h in t.holders()], ["c0ffee"])
