"""NFSv4 opens, share reservations, locks and stateids over the cross-protocol lock table."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway import errors
from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4.codec import (
    CbNotifyLockArgs,
    CloseArgs,
    ExistLockOwner,
    LockArgs,
    LocktArgs,
    LockuArgs,
    OpenArgs,
    OpenDowngradeArgs,
    OpenToLockOwner,
    StateId,
    StateidArgs,
    StateOwner,
    TestStateidArgs,
    WantDelegationArgs,
    decode_cb_compound,
)
from claudefs_gateway.rpc import message as msg
from claudefs_gateway.rpc.xdrtypes import Arm
from claudefs_gateway.vfs.locks import LockOwner
from tests.nfs.v4.client import V4Client
from tests.nfs.v4.harness import Harness

CURRENT = StateId(1, bytes(12))
EVERYTHING = 2**64 - 1


def new_lock(
    open_sid: StateId, owner: bytes, kind: int = c.WRITE_LT, off: int = 0, length: int = EVERYTHING
) -> tuple[int, Any]:
    locker = Arm(True, OpenToLockOwner(0, open_sid, 0, StateOwner(0, owner)))
    return (c.OP_LOCK, LockArgs(kind, False, off, length, locker))


def more_lock(
    lock_sid: StateId, kind: int = c.WRITE_LT, off: int = 0, length: int = EVERYTHING
) -> tuple[int, Any]:
    return (c.OP_LOCK, LockArgs(kind, False, off, length, Arm(False, ExistLockOwner(lock_sid, 0))))


class OpenTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()
        self.cl = self.h.client().setup()
        self.base = self.cl.path(b"export")

    def _open(
        self,
        cl: V4Client,
        name: bytes,
        owner: bytes,
        access: int,
        deny: int = 0,
        create: bool = True,
    ) -> Any:
        op = (
            cl.open_create(name, owner, access, deny)
            if create
            else cl.open_existing(name, owner, access, deny)
        )
        return cl.compound(cl.path(b"export") + [op, (c.OP_GETFH, None)])

    def test_open_seqids(self) -> None:
        """A new open has seqid 1; opening again by the same owner upgrades it (seqid 2)."""
        r = self._open(self.cl, b"f", b"o", c.OPEN4_SHARE_ACCESS_WRITE)
        sid = r.last(c.OP_OPEN).stateid
        self.assertEqual(sid.seqid, 1)
        r = self._open(self.cl, b"f", b"o", c.OPEN4_SHARE_ACCESS_READ, create=False)
        again = r.last(c.OP_OPEN).stateid
        self.assertEqual((again.other, again.seqid), (sid.other, 2))
        share = self.h.vfs.locks.shares(self.h.nfs4.ids.by_other[sid.other].ino)
        self.assertEqual(share[0].access, frozenset({"read", "write"}))

    def test_share_conflicts_between_clients(self) -> None:
        self._open(self.cl, b"f", b"o", c.OPEN4_SHARE_ACCESS_BOTH, c.OPEN4_SHARE_DENY_WRITE)
        other = self.h.client().setup()
        r = self._open(other, b"f", b"o", c.OPEN4_SHARE_ACCESS_WRITE, create=False)
        self.assertEqual(r.status, c.NFS4ERR_SHARE_DENIED)
        r = self._open(other, b"f", b"o", c.OPEN4_SHARE_ACCESS_READ, create=False)
        self.assertEqual(r.status, c.NFS4_OK)

    def test_share_conflicts_with_smb(self) -> None:
        """An SMB open denying writes refuses an NFSv4 write open, and the reverse."""
        r = self._open(self.cl, b"shared", b"o", c.OPEN4_SHARE_ACCESS_READ)
        fh = r.last(c.OP_GETFH)
        ino = self.h.vfs.handles.decode(fh)[1]
        locks = self.h.vfs.locks
        smb = locks.open_share(ino, LockOwner("smb", "s1", b"fid"), {"read"}, {"write"})
        r = self._open(self.cl, b"shared", b"o2", c.OPEN4_SHARE_ACCESS_WRITE, create=False)
        self.assertEqual(r.status, c.NFS4ERR_SHARE_DENIED)
        locks.close_share(smb)
        r = self._open(self.cl, b"shared", b"o3", c.OPEN4_SHARE_ACCESS_WRITE, create=False)
        self.assertEqual(r.status, c.NFS4_OK)
        self.assertRaises(
            errors.ShareConflict,
            locks.open_share,
            ino,
            LockOwner("smb", "s2", b"fid"),
            {"read"},
            {"read"},
        )

    def test_anonymous_io_meets_deny(self) -> None:
        """Anonymous READ and WRITE meet another open's deny modes (NFS4ERR_LOCKED)."""
        from claudefs_gateway.nfs.v4.codec import ReadArgs, WriteArgs

        r = self._open(self.cl, b"d", b"o", c.OPEN4_SHARE_ACCESS_BOTH, c.OPEN4_SHARE_DENY_BOTH)
        fh = r.last(c.OP_GETFH)
        anon = StateId(0, bytes(12))
        r = self.cl.compound(
            [self.cl.putfh(fh), (c.OP_WRITE, WriteArgs(anon, 0, c.FILE_SYNC4, b"x"))]
        )
        self.assertEqual(r.status, c.NFS4ERR_LOCKED)
        r = self.cl.compound([self.cl.putfh(fh), (c.OP_READ, ReadArgs(anon, 0, 1))])
        self.assertEqual(r.status, c.NFS4ERR_LOCKED)
        bypass = StateId(0xFFFFFFFF, b"\xff" * 12)
        r = self.cl.compound([self.cl.putfh(fh), (c.OP_READ, ReadArgs(bypass, 0, 1))])
        self.assertEqual(r.status, c.NFS4_OK)

    def test_create_modes(self) -> None:
        """GUARDED refuses an existing name; EXCLUSIVE4_1 with another verifier too."""
        self._open(self.cl, b"g", b"o", c.OPEN4_SHARE_ACCESS_READ)
        op = self.cl.open_create(b"g", b"o2", mode=c.GUARDED4)
        self.assertEqual(self.cl.compound(self.base + [op]).status, c.NFS4ERR_EXIST)
        from claudefs_gateway.nfs.v4.codec import CreatVerfAttr
        from tests.nfs.v4.client import fattr_of

        def excl(verf: bytes) -> tuple[int, Any]:
            how = Arm(
                c.OPEN4_CREATE,
                Arm(c.EXCLUSIVE4_1, CreatVerfAttr(verf, fattr_of({c.FATTR4_MODE: 0o600}))),
            )
            return (c.OP_OPEN, OpenArgs(0, 1, 0, StateOwner(0, b"x"), how, Arm(c.CLAIM_NULL, b"e")))

        self.assertEqual(self.cl.compound(self.base + [excl(b"verf0001")]).status, c.NFS4_OK)
        self.assertEqual(self.cl.compound(self.base + [excl(b"verf0001")]).status, c.NFS4_OK)
        self.assertEqual(self.cl.compound(self.base + [excl(b"verf0002")]).status, c.NFS4ERR_EXIST)

    def test_open_types_and_access(self) -> None:
        r = self.cl.compound([(c.OP_PUTROOTFH, None), self.cl.open_existing(b"export")])
        self.assertEqual(r.status, c.NFS4ERR_ISDIR)
        self._open(self.cl, b"private", b"o", c.OPEN4_SHARE_ACCESS_BOTH)
        from claudefs_gateway.nfs.v4.codec import SetattrArgs
        from tests.nfs.v4.client import ANON, fattr_of

        self.cl.compound(
            self.cl.path(b"export", b"private")
            + [(c.OP_SETATTR, SetattrArgs(ANON, fattr_of({c.FATTR4_MODE: 0o600})))]
        )
        stranger = self.h.client(uid=555, gid=555).setup()
        r = self._open(stranger, b"private", b"o", c.OPEN4_SHARE_ACCESS_READ, create=False)
        self.assertEqual(r.status, c.NFS4ERR_ACCESS)

    def test_downgrade_and_close(self) -> None:
        r = self._open(self.cl, b"dg", b"o", c.OPEN4_SHARE_ACCESS_BOTH, c.OPEN4_SHARE_DENY_WRITE)
        sid, fh = r.last(c.OP_OPEN).stateid, r.last(c.OP_GETFH)
        p = self.cl.putfh(fh)
        r = self.cl.compound(
            [p, (c.OP_OPEN_DOWNGRADE, OpenDowngradeArgs(sid, 0, c.OPEN4_SHARE_ACCESS_READ, 0))]
        )
        self.assertEqual(r.last().seqid, 2)
        r = self.cl.compound(
            [
                p,
                (
                    c.OP_OPEN_DOWNGRADE,
                    OpenDowngradeArgs(StateId(0, sid.other), 0, c.OPEN4_SHARE_ACCESS_BOTH, 0),
                ),
            ]
        )
        self.assertEqual(r.status, c.NFS4ERR_INVAL)
        r = self.cl.compound([p, (c.OP_CLOSE, CloseArgs(0, StateId(0, sid.other)))])
        self.assertEqual(r.last(), StateId(0xFFFFFFFF, bytes(12)))
        r = self.cl.compound([p, (c.OP_CLOSE, CloseArgs(0, StateId(0, sid.other)))])
        self.assertEqual(r.status, c.NFS4ERR_BAD_STATEID)
        self.assertEqual(self.h.vfs.locks.records, 0)

    def test_grace_rules(self) -> None:
        """Before RECLAIM_COMPLETE new opens wait (GRACE); reclaims outside grace are NO_GRACE."""
        cl = self.h.client().setup(reclaim_complete=False)
        r = cl.compound(cl.path(b"export") + [cl.open_create(b"early")])
        self.assertEqual(r.status, c.NFS4ERR_GRACE)
        r = self._open(self.cl, b"re", b"o", c.OPEN4_SHARE_ACCESS_READ)
        fh = r.last(c.OP_GETFH)
        prev = (
            c.OP_OPEN,
            OpenArgs(0, 1, 0, StateOwner(0, b"o"), Arm(c.OPEN4_NOCREATE), Arm(c.CLAIM_PREVIOUS, 0)),
        )
        self.assertEqual(self.cl.compound([self.cl.putfh(fh), prev]).status, c.NFS4ERR_NO_GRACE)

    def test_delegation_wants(self) -> None:
        """No delegation is granted: NONE without a want, NONE_EXT with a reason otherwise."""

        def deleg(want: int, name: bytes) -> Arm:
            r = self._open(self.cl, name, b"o", c.OPEN4_SHARE_ACCESS_READ | want)
            delegation: Arm = r.last(c.OP_OPEN).delegation
            return delegation

        self.assertEqual(deleg(0, b"w0"), Arm(c.OPEN_DELEGATE_NONE))
        self.assertEqual(
            deleg(c.OPEN4_SHARE_ACCESS_WANT_NO_DELEG, b"w1"),
            Arm(c.OPEN_DELEGATE_NONE_EXT, Arm(c.WND4_NOT_WANTED)),
        )
        self.assertEqual(
            deleg(c.OPEN4_SHARE_ACCESS_WANT_READ_DELEG, b"w2"),
            Arm(c.OPEN_DELEGATE_NONE_EXT, Arm(c.WND4_RESOURCE, False)),
        )
        r = self._open(self.cl, b"w3", b"o", c.OPEN4_SHARE_ACCESS_READ | 0x0700)
        self.assertEqual(r.status, c.NFS4ERR_INVAL)
        r = self.cl.compound(
            self.cl.path(b"export", b"w0")
            + [
                (
                    c.OP_WANT_DELEGATION,
                    WantDelegationArgs(c.OPEN4_SHARE_ACCESS_WANT_READ_DELEG, Arm(c.CLAIM_FH)),
                )
            ]
        )
        self.assertEqual(r.last().tag, c.OPEN_DELEGATE_NONE_EXT)
        opened = self._open(self.cl, b"w0", b"o", c.OPEN4_SHARE_ACCESS_READ, create=False)
        sid = opened.last(c.OP_OPEN).stateid
        r = self.cl.compound(
            self.cl.path(b"export", b"w0") + [(c.OP_DELEGRETURN, StateidArgs(sid))]
        )
        self.assertEqual(r.status, c.NFS4ERR_BAD_STATEID)


class LockTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()
        self.a = self.h.client().setup()
        self.b = self.h.client().setup()
        r = self.a.compound(
            self.a.path(b"export") + [self.a.open_create(b"lk"), (c.OP_GETFH, None)]
        )
        self.fh = r.last(c.OP_GETFH)
        self.sid_a = r.last(c.OP_OPEN).stateid
        self.ino = self.h.vfs.handles.decode(self.fh)[1]
        r = self.b.compound(
            self.b.path(b"export") + [self.b.open_existing(b"lk", b"ob", c.OPEN4_SHARE_ACCESS_BOTH)]
        )
        self.sid_b = r.last(c.OP_OPEN).stateid

    def _lock(self, cl: V4Client, op: tuple[int, Any]) -> Any:
        return cl.compound([cl.putfh(self.fh), op])

    def test_lock_conflict_and_denied(self) -> None:
        """A conflicting lock is DENIED with the holder's range, type and owner."""
        r = self._lock(self.a, new_lock(self.sid_a, b"la", off=10, length=10))
        self.assertEqual(r.status, c.NFS4_OK)
        lsid = r.last()
        self.assertEqual(lsid.seqid, 1)
        r = self._lock(self.b, new_lock(self.sid_b, b"lb", kind=c.READ_LT, off=15, length=1))
        self.assertEqual(r.status, c.NFS4ERR_DENIED)
        denied = r.last()
        self.assertEqual((denied.offset, denied.length, denied.locktype), (10, 10, c.WRITE_LT))
        self.assertEqual(denied.owner, StateOwner(self.a.clientid, b"la"))
        r = self._lock(self.b, new_lock(self.sid_b, b"lb", kind=c.READ_LT, off=20, length=5))
        self.assertEqual(r.status, c.NFS4_OK)
        r = self._lock(self.a, more_lock(lsid, off=30, length=EVERYTHING))
        self.assertEqual(r.last().seqid, 2)

    def test_lockt_and_locku(self) -> None:
        lsid = self._lock(self.a, new_lock(self.sid_a, b"la")).last()
        r = self.b.compound(
            [self.b.putfh(self.fh), (c.OP_LOCKT, LocktArgs(c.READ_LT, 0, 1, StateOwner(0, b"lb")))]
        )
        self.assertEqual(r.status, c.NFS4ERR_DENIED)
        r = self._lock(self.a, (c.OP_LOCKU, LockuArgs(c.WRITE_LT, 0, lsid, 0, EVERYTHING)))
        self.assertEqual(r.last().seqid, 2)
        r = self.b.compound(
            [self.b.putfh(self.fh), (c.OP_LOCKT, LocktArgs(c.READ_LT, 0, 1, StateOwner(0, b"lb")))]
        )
        self.assertEqual(r.status, c.NFS4_OK)

    def test_bad_ranges(self) -> None:
        self.assertEqual(
            self._lock(self.a, new_lock(self.sid_a, b"la", length=0)).status, c.NFS4ERR_INVAL
        )
        r = self._lock(self.a, new_lock(self.sid_a, b"la", off=2**63, length=2**63 + 1))
        self.assertEqual(r.status, c.NFS4ERR_INVAL)

    def test_conflicts_with_nlm(self) -> None:
        """An NLM lock refuses an NFSv4 lock on the same bytes and the reverse."""
        locks = self.h.vfs.locks
        nlm = LockOwner("nlm", "host", b"svid")
        self.successResultOf(locks.lock(self.ino, nlm, 0, 100, True))
        r = self._lock(self.a, new_lock(self.sid_a, b"la", off=50, length=10))
        self.assertEqual(r.status, c.NFS4ERR_DENIED)
        self.assertEqual(r.last().owner, StateOwner(0, b"nlm"))
        locks.unlock(self.ino, nlm, 0, 100)
        self._lock(self.a, new_lock(self.sid_a, b"la", off=50, length=10))
        self.failureResultOf(locks.lock(self.ino, nlm, 55, 1, False), errors.LockConflict)

    def test_openmode(self) -> None:
        """A write lock needs write access; a read lock read access."""
        r = self.a.compound(
            self.a.path(b"export")
            + [self.a.open_create(b"rd", b"or", c.OPEN4_SHARE_ACCESS_READ), (c.OP_GETFH, None)]
        )
        sid, fh = r.last(c.OP_OPEN).stateid, r.last(c.OP_GETFH)
        r = self.a.compound([self.a.putfh(fh), new_lock(sid, b"lr")])
        self.assertEqual(r.status, c.NFS4ERR_OPENMODE)
        r = self.a.compound([self.a.putfh(fh), new_lock(sid, b"lr", kind=c.READ_LT)])
        self.assertEqual(r.status, c.NFS4_OK)

    def test_close_with_locks_held(self) -> None:
        lsid = self._lock(self.a, new_lock(self.sid_a, b"la")).last()
        r = self.a.compound([self.a.putfh(self.fh), (c.OP_CLOSE, CloseArgs(0, self.sid_a))])
        self.assertEqual(r.status, c.NFS4ERR_LOCKS_HELD)
        from claudefs_gateway.nfs.v4.codec import StateidArgs as Sa

        r = self.a.compound([(c.OP_FREE_STATEID, Sa(lsid))])
        self.assertEqual(r.status, c.NFS4ERR_LOCKS_HELD)
        self._lock(self.a, (c.OP_LOCKU, LockuArgs(c.WRITE_LT, 0, lsid, 0, EVERYTHING)))
        r = self.a.compound([(c.OP_FREE_STATEID, Sa(StateId(0, lsid.other)))])
        self.assertEqual(r.status, c.NFS4_OK)
        r = self.a.compound([self.a.putfh(self.fh), (c.OP_CLOSE, CloseArgs(0, self.sid_a))])
        self.assertEqual(r.status, c.NFS4_OK)

    def test_test_stateid(self) -> None:
        lsid = self._lock(self.a, new_lock(self.sid_a, b"la")).last()
        ids = [
            self.sid_a,
            lsid,
            StateId(0, bytes(12)),
            StateId(1, b"\0\0\0\1" + bytes(8)),
            self.sid_b,
        ]
        r = self.a.compound([(c.OP_TEST_STATEID, TestStateidArgs(ids))])
        self.assertEqual(
            r.last(),
            [
                c.NFS4_OK,
                c.NFS4_OK,
                c.NFS4ERR_BAD_STATEID,
                c.NFS4ERR_STALE_STATEID,
                c.NFS4ERR_BAD_STATEID,
            ],
        )

    def test_notify_lock(self) -> None:
        """A refused blocking lock gets CB_NOTIFY_LOCK when the lock is released."""
        lsid = self._lock(self.a, new_lock(self.sid_a, b"la")).last()
        r = self._lock(self.b, new_lock(self.sid_b, b"lb", kind=c.WRITEW_LT))
        self.assertEqual(r.status, c.NFS4ERR_DENIED)
        conn = self.b.conn  # type: ignore[attr-defined]
        self.assertEqual(conn.sent, [])
        self._lock(self.a, (c.OP_LOCKU, LockuArgs(c.WRITE_LT, 0, lsid, 0, EVERYTHING)))
        self.assertEqual(len(conn.sent), 1)
        call = msg.parse_call(conn.sent[0])
        self.assertEqual((call.prog, call.vers, call.proc), (0x40000000, 1, 1))
        tag, minor, ident, ops = decode_cb_compound(conn.sent[0][call.args_at :])
        self.assertEqual([op for op, _ in ops], [c.OP_CB_SEQUENCE, c.OP_CB_NOTIFY_LOCK])
        args: CbNotifyLockArgs = ops[1][1]
        self.assertEqual((args.fh, args.lock_owner.owner), (self.fh, b"lb"))
        self.assertEqual((tag, minor, ident), (b"", 2, 0))

    def test_client_end_releases_locks(self) -> None:
        self._lock(self.a, new_lock(self.sid_a, b"la"))
        from claudefs_gateway.nfs.v4.codec import ClientidArgs, SessionArgs

        self.a.raw([(c.OP_DESTROY_SESSION, SessionArgs(self.a.sessionid))])
        self.a.raw([(c.OP_DESTROY_CLIENTID, ClientidArgs(self.a.clientid))])
        r = self._lock(self.b, new_lock(self.sid_b, b"lb"))
        self.assertEqual(r.status, c.NFS4_OK)
