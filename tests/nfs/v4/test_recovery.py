"""NFSv4 client records in the store, the shared grace period, and reclaim after a restart."""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.core.metrics import RequestMetrics
from claudefs_gateway.nfs.grace import Grace
from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4.codec import (
    ClientidArgs,
    OpenArgs,
    ReclaimCompleteArgs,
    SessionArgs,
    StateOwner,
)
from claudefs_gateway.nfs.v4.compound import Settings
from claudefs_gateway.nfs.v4.recovery import STATE_KEY
from claudefs_gateway.nfs.v4.server import NFS4
from claudefs_gateway.rpc.server import RPCServer
from claudefs_gateway.rpc.xdrtypes import Arm
from claudefs_gateway.vfs.locks import LockTable
from tests.nfs.v4.harness import Harness


def restart(h: Harness, grace_secs: float = 90) -> None:
    """What a gateway restart leaves: the store, not the lock table or the clients."""
    h.vfs.locks = LockTable(h.clock)
    h.grace = Grace(grace_secs)
    h.nfs4 = NFS4(h.ctx, h.clock, Settings(), RequestMetrics(h.metrics, "nfs4"), h.grace)
    h.server = RPCServer()
    h.server.add(h.nfs4.program())
    d = defer.Deferred.fromCoroutine(h.nfs4.start())
    assert d.called


def reclaim(name: bytes, owner: bytes = b"o") -> tuple[int, object]:
    return (
        c.OP_OPEN,
        OpenArgs(
            0,
            c.OPEN4_SHARE_ACCESS_BOTH,
            0,
            StateOwner(0, owner),
            Arm(c.OPEN4_NOCREATE),
            Arm(c.CLAIM_PREVIOUS, 0),
        ),
    )


class RecoveryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()
        self.a = self.h.client().setup(b"alice")
        r = self.a.compound(
            self.a.path(b"export") + [self.a.open_create(b"kept"), (c.OP_GETFH, None)]
        )
        self.fh = r.last(c.OP_GETFH)
        self.old_sid = r.last(c.OP_OPEN).stateid

    def test_recorded_at_reclaim_complete(self) -> None:
        """A client is in the store once it sent RECLAIM_COMPLETE; destroyed, it is forgotten."""
        raw = self.successResultOf(self.h.vfs.get_state(STATE_KEY))
        self.assertIn(b"alice".hex().encode(), raw)
        self.a.raw([(c.OP_DESTROY_SESSION, SessionArgs(self.a.sessionid))])
        self.a.raw([(c.OP_DESTROY_CLIENTID, ClientidArgs(self.a.clientid))])
        raw = self.successResultOf(self.h.vfs.get_state(STATE_KEY))
        self.assertNotIn(b"alice".hex().encode(), raw)

    def test_restart_grace_and_reclaim(self) -> None:
        """
        After a restart the last run's clients may reclaim; everything else
        waits (GRACE) until they all sent RECLAIM_COMPLETE, which ends grace.
        """
        restart(self.h)
        self.assertTrue(self.h.vfs.locks.in_grace)
        old = self.h.client()
        old.clientid, old.sessionid = self.a.clientid, self.a.sessionid
        self.assertEqual(old.compound([]).status, c.NFS4ERR_BADSESSION)
        a = self.h.client().setup(b"alice", reclaim_complete=False)
        self.assertEqual(a.compound([a.putfh(self.fh), reclaim(b"kept")]).status, c.NFS4_OK)
        newcomer = self.h.client().setup(b"bob")
        r = newcomer.compound(newcomer.path(b"export") + [newcomer.open_create(b"new")])
        self.assertEqual(r.status, c.NFS4ERR_GRACE)
        r = newcomer.compound([newcomer.putfh(self.fh), reclaim(b"kept", b"b")])
        self.assertEqual(r.status, c.NFS4ERR_NO_GRACE)
        self.assertEqual(
            a.compound([(c.OP_RECLAIM_COMPLETE, ReclaimCompleteArgs(False))]).status, c.NFS4_OK
        )
        self.assertFalse(self.h.vfs.locks.in_grace)
        r = newcomer.compound(newcomer.path(b"export") + [newcomer.open_create(b"new")])
        self.assertEqual(r.status, c.NFS4_OK)
        r = a.compound([a.putfh(self.fh), reclaim(b"kept", b"o2")])
        self.assertEqual(r.status, c.NFS4ERR_NO_GRACE)

    def test_old_stateids_stale(self) -> None:
        from claudefs_gateway.nfs.v4.codec import WriteArgs

        restart(self.h, grace_secs=0)
        a = self.h.client().setup(b"alice")
        r = a.compound(
            [a.putfh(self.fh), (c.OP_WRITE, WriteArgs(self.old_sid, 0, c.FILE_SYNC4, b"x"))]
        )
        self.assertEqual(r.status, c.NFS4ERR_STALE_STATEID)
        from claudefs_gateway.nfs.v4.codec import CreateSessionArgs
        from tests.nfs.v4.client import BACK, CHANNEL

        cs = CreateSessionArgs(self.a.clientid, 2, 0, CHANNEL, BACK, 1, [])
        self.assertEqual(a.raw([(c.OP_CREATE_SESSION, cs)]).status, c.NFS4ERR_STALE_CLIENTID)

    def test_grace_times_out(self) -> None:
        """A client of the last run that never comes back holds grace for its full length only."""
        restart(self.h, grace_secs=30)
        self.assertTrue(self.h.vfs.locks.in_grace)
        self.h.clock.advance(31)
        self.assertFalse(self.h.vfs.locks.in_grace)
        bob = self.h.client().setup(b"bob")
        self.assertEqual(
            bob.compound(bob.path(b"export") + [bob.open_create(b"later")]).status, c.NFS4_OK
        )

    def test_nlm_keeps_grace(self) -> None:
        """When NLM clients may reclaim too, NFSv4's early end waits for them (the full period)."""
        restart(self.h)
        self.h.grace.begin(self.h.vfs.locks, "nlm")
        a = self.h.client().setup(b"alice")
        self.assertTrue(self.h.vfs.locks.in_grace)
        r = a.compound(a.path(b"export") + [a.open_create(b"wait")])
        self.assertEqual(r.status, c.NFS4ERR_GRACE)
        self.h.clock.advance(60)
        self.assertTrue(self.h.vfs.locks.in_grace)
        self.assertEqual(a.compound([]).status, c.NFS4_OK)
        self.h.clock.advance(31)
        self.assertEqual(a.compound(a.path(b"export") + [a.open_create(b"wait")]).status, c.NFS4_OK)

    def test_unreadable_record(self) -> None:
        """A damaged record means no reclaims, never a failed start."""
        self.successResultOf(self.h.vfs.set_state(STATE_KEY, b"{not json"))
        restart(self.h)
        self.assertFalse(self.h.vfs.locks.in_grace)
        self.flushLoggedErrors()
