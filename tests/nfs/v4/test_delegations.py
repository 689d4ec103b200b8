"""
NFSv4 delegations (L{claudefs_gateway.nfs.v4.delegations}): granted on OPEN
and WANT_DELEGATION through the vfs lease manager, recalled (CB_RECALL) by
every path that touches the file - another NFSv4 client, NFSv3, S3 - returned
(DELEGRETURN), revoked when not returned in time, all on a Clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.core.metrics import RequestMetrics
from claudefs_gateway.nfs.grace import Grace
from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4 import fattr
from claudefs_gateway.nfs.v4.codec import (
    BindConnArgs,
    CbGetattrArgs,
    CbRecallArgs,
    CbSequenceResok,
    ClaimDelegateCur,
    ClientidArgs,
    Fattr,
    LockArgs,
    OpenArgs,
    OpenToLockOwner,
    ReadArgs,
    ReclaimCompleteArgs,
    RenameArgs,
    SetattrArgs,
    StateId,
    StateidArgs,
    StateOwner,
    TestStateidArgs,
    WantDelegationArgs,
    WriteArgs,
    decode_cb_compound,
    encode_cb_result,
)
from claudefs_gateway.nfs.v4.compound import Settings
from claudefs_gateway.nfs.v4.delegations import RECALL_TRIES, RECENT_SECS
from claudefs_gateway.nfs.v4.server import NFS4
from claudefs_gateway.rpc import message as msg
from claudefs_gateway.rpc.server import RPCServer
from claudefs_gateway.rpc.xdr import Unpacker
from claudefs_gateway.rpc.xdrtypes import Arm
from claudefs_gateway.vfs.leases import RWH, H, LeaseManager, R
from claudefs_gateway.vfs.locks import LockOwner, LockTable
from tests.nfs.v4.client import ANON, V4Client, attrs_of, fattr_of
from tests.nfs.v4.harness import FakeConn, Harness

READ = c.OPEN4_SHARE_ACCESS_READ
WRITE = c.OPEN4_SHARE_ACCESS_WRITE
BOTH = c.OPEN4_SHARE_ACCESS_BOTH
NO_DELEG = c.OPEN4_SHARE_ACCESS_WANT_NO_DELEG
WANT_READ = c.OPEN4_SHARE_ACCESS_WANT_READ_DELEG
WANT_WRITE = c.OPEN4_SHARE_ACCESS_WANT_WRITE_DELEG
WANT_ANY = c.OPEN4_SHARE_ACCESS_WANT_ANY_DELEG
EVERYTHING = 2**64 - 1


class Back:
    """A client's end of its back channel: the callbacks it was sent, and its answers."""

    def __init__(self, h: Harness, cl: V4Client) -> None:
        self.h = h
        self.cl = cl
        self.conn: FakeConn = cl.conn  # type: ignore[attr-defined]

    def calls(self) -> list[tuple[int, list[tuple[int, Any]]]]:
        out = []
        for raw in self.conn.sent:
            call = msg.parse_call(raw)
            _, _, _, ops = decode_cb_compound(raw[call.args_at :])
            out.append((call.xid, ops))
        return out

    def recalls(self) -> list[CbRecallArgs]:
        return [ops[1][1] for _, ops in self.calls() if ops[1][0] == c.OP_CB_RECALL]

    def answer(self, status: int = c.NFS4_OK, value: Any = None) -> None:
        """Answer the last callback sent: CB_SEQUENCE, then C{status} (and C{value}) for the callback."""
        xid, ops = self.calls()[-1]
        seq = Arm(0, CbSequenceResok(self.cl.sessionid, ops[0][1].sequenceid, 0, 0, 0))
        results = [(c.OP_CB_SEQUENCE, seq), (ops[1][0], Arm(status, value))]
        self.h.nfs4.callbacks.reply(msg.reply_success(xid) + encode_cb_result(status, b"", results))

    def getattrs(self) -> list[CbGetattrArgs]:
        return [ops[1][1] for _, ops in self.calls() if ops[1][0] == c.OP_CB_GETATTR]

    def answer_getattr(self, change: int, size: int, extra: bytes = b"") -> None:
        """Answer CB_GETATTR with a change attribute and size (and a delegated mtime if C{extra})."""
        nums = [c.FATTR4_CHANGE, c.FATTR4_SIZE]
        vals = change.to_bytes(8, "big") + size.to_bytes(8, "big")
        if extra:
            nums.append(c.FATTR4_TIME_DELEG_MODIFY)
            vals += extra
        self.answer(c.NFS4_OK, Fattr(fattr.bitmap(nums), vals))


class DelegationTestCase(SynchronousTestCase):
    settings = Settings(lease_secs=90)

    def setUp(self) -> None:
        self.h = Harness(settings=self.settings)
        self.a = self.h.client().setup(b"holder")
        self.b = self.h.client().setup(b"other")
        self.back = Back(self.h, self.a)
        self.leases = self.h.vfs.leases

    def open(
        self,
        cl: V4Client,
        name: bytes,
        access: int = READ,
        create: bool = True,
        owner: bytes = b"o",
        deny: int = 0,
    ) -> Any:
        op = (
            cl.open_create(name, owner, access, deny)
            if create
            else cl.open_existing(name, owner, access, deny)
        )
        return cl.compound(cl.path(b"export") + [op, (c.OP_GETFH, None)])

    def delegated(self, name: bytes = b"f", access: int = READ) -> tuple[bytes, Any, StateId]:
        """C{a} creates C{name} and holds a delegation on it: (fh, the delegation, open stateid)."""
        r = self.open(self.a, name, access)
        self.assertEqual(r.status, c.NFS4_OK)
        res = r.last(c.OP_OPEN)
        self.assertIn(res.delegation.tag, (c.OPEN_DELEGATE_READ, c.OPEN_DELEGATE_WRITE))
        return r.last(c.OP_GETFH), res.delegation.value, res.stateid

    def ino(self, fh: bytes) -> int:
        return int(self.h.vfs.handles.decode(fh)[1])

    def delegreturn(self, cl: V4Client, fh: bytes, sid: StateId) -> int:
        return int(cl.compound([cl.putfh(fh), (c.OP_DELEGRETURN, StateidArgs(sid))]).status)


class GrantTests(DelegationTestCase):
    def test_read_delegation(self) -> None:
        """A read open with no preference gets a read delegation: an R+H nfs4 lease keyed by the stateid."""
        fh, deleg, _ = self.delegated(b"r", READ)
        self.assertFalse(deleg.recall)
        [lease] = self.leases.leases(self.ino(fh))
        self.assertEqual(lease.state, R | H)
        self.assertEqual(
            (lease.key.protocol, lease.key.client, lease.key.key),
            ("nfs4", f"{self.a.clientid:016x}", deleg.stateid.other),
        )

    def test_write_delegation(self) -> None:
        """An open for reading and writing of a file nobody else has gets a write delegation (R+W+H)."""
        r = self.open(self.a, b"w", BOTH)
        res = r.last(c.OP_OPEN)
        self.assertEqual(res.delegation.tag, c.OPEN_DELEGATE_WRITE)
        self.assertEqual(res.delegation.value.space_limit, Arm(1, EVERYTHING))
        [lease] = self.leases.leases(self.ino(r.last(c.OP_GETFH)))
        self.assertEqual(lease.state, RWH)

    def test_wants(self) -> None:
        """Each OPEN4_SHARE_ACCESS_WANT_* gets that kind of delegation or NONE_EXT with the reason."""

        def deleg(name: bytes, access: int) -> Arm:
            r = self.open(self.a, name, access)
            self.assertEqual(r.status, c.NFS4_OK)
            got: Arm = r.last(c.OP_OPEN).delegation
            return got

        self.assertEqual(
            deleg(b"w1", READ | NO_DELEG), Arm(c.OPEN_DELEGATE_NONE_EXT, Arm(c.WND4_NOT_WANTED))
        )
        self.assertEqual(
            deleg(b"w2", READ | c.OPEN4_SHARE_ACCESS_WANT_CANCEL),
            Arm(c.OPEN_DELEGATE_NONE_EXT, Arm(c.WND4_CANCELLED)),
        )
        self.assertEqual(deleg(b"w3", READ | WANT_READ).tag, c.OPEN_DELEGATE_READ)
        self.assertEqual(deleg(b"w4", BOTH | WANT_WRITE).tag, c.OPEN_DELEGATE_WRITE)
        self.assertEqual(deleg(b"w5", BOTH | WANT_ANY).tag, c.OPEN_DELEGATE_WRITE)
        self.assertEqual(deleg(b"w6", READ | WANT_ANY).tag, c.OPEN_DELEGATE_READ)
        # A write delegation for a read-only open is not to be had.
        self.assertEqual(
            deleg(b"w7", READ | WANT_WRITE),
            Arm(c.OPEN_DELEGATE_NONE_EXT, Arm(c.WND4_CONTENTION, False)),
        )
        # A write-only open with no preference gets a write delegation
        # (RFC 8881 §9.1.2 lets it read the pages it writes).
        self.assertEqual(deleg(b"w8", WRITE).tag, c.OPEN_DELEGATE_WRITE)

    def test_undefined_want(self) -> None:
        """An undefined want is NFS4ERR_INVAL before anything is made."""
        r = self.open(self.a, b"bad", READ | 0x0700)
        self.assertEqual(r.status, c.NFS4ERR_INVAL)
        r = self.a.compound(self.a.path(b"export", b"bad"))
        self.assertEqual(r.status, c.NFS4ERR_NOENT)

    def test_no_back_channel_no_delegation(self) -> None:
        """A client the server cannot call back gets no delegation (CB_RECALL could not reach it)."""
        cl = self.h.client()
        cl.exchange_id(b"no-back")
        cl.create_session(flags=0)
        cl.compound([(c.OP_RECLAIM_COMPLETE, ReclaimCompleteArgs(False))])
        r = self.open(cl, b"nb", READ)
        self.assertEqual(r.last(c.OP_OPEN).delegation, Arm(c.OPEN_DELEGATE_NONE))
        r = self.open(cl, b"nb2", READ | WANT_READ)
        self.assertEqual(
            r.last(c.OP_OPEN).delegation,
            Arm(c.OPEN_DELEGATE_NONE_EXT, Arm(c.WND4_RESOURCE, False)),
        )
        # Nor one whose back channel went away.
        self.back.conn.close()
        r = self.open(self.a, b"nb3", READ)
        self.assertEqual(r.last(c.OP_OPEN).delegation, Arm(c.OPEN_DELEGATE_NONE))

    def test_read_delegation_refused_beside_a_writer(self) -> None:
        """
        Nobody gets a read delegation on a file another client (DELEG9), another
        protocol or an NLM lock may be changing; one's own write open is no bar.
        """
        self.open(self.b, b"busy", WRITE | NO_DELEG)
        r = self.open(self.a, b"busy", READ | WANT_READ, create=False)
        self.assertEqual(
            r.last(c.OP_OPEN).delegation,
            Arm(c.OPEN_DELEGATE_NONE_EXT, Arm(c.WND4_CONTENTION, False)),
        )
        r = self.open(self.a, b"smb", READ | NO_DELEG)
        ino = self.ino(r.last(c.OP_GETFH))
        smb = self.h.vfs.locks.open_share(ino, LockOwner("smb", "s", b"f"), {"write"}, set())
        r = self.open(self.a, b"smb", READ, create=False, owner=b"o2")
        self.assertEqual(r.last(c.OP_OPEN).delegation, Arm(c.OPEN_DELEGATE_NONE))
        self.h.vfs.locks.close_share(smb)
        nlm = LockOwner("nlm", "host", b"svid")
        self.successResultOf(self.h.vfs.locks.lock(ino, nlm, 0, 1, False))
        r = self.open(self.a, b"smb", READ, create=False, owner=b"o3")
        self.assertEqual(r.last(c.OP_OPEN).delegation, Arm(c.OPEN_DELEGATE_NONE))
        # One's own write open does not stand in the way (as knfsd).
        r = self.open(self.a, b"mine", WRITE | NO_DELEG)
        r = self.open(self.a, b"mine", READ | WANT_READ, create=False, owner=b"o2")
        self.assertEqual(r.last(c.OP_OPEN).delegation.tag, c.OPEN_DELEGATE_READ)

    def test_write_delegation_needs_the_file_alone(self) -> None:
        """Beside another client's open, an open for writing gets a read delegation at most."""
        self.open(self.b, b"shared", READ | NO_DELEG)
        r = self.open(self.a, b"shared", BOTH, create=False)
        self.assertEqual(r.last(c.OP_OPEN).delegation.tag, c.OPEN_DELEGATE_READ)
        r = self.open(self.b, b"shared2", READ | NO_DELEG)
        r = self.open(self.a, b"shared2", BOTH | WANT_WRITE, create=False)
        self.assertEqual(
            r.last(c.OP_OPEN).delegation,
            Arm(c.OPEN_DELEGATE_NONE_EXT, Arm(c.WND4_CONTENTION, False)),
        )

    def test_read_delegations_shared(self) -> None:
        """Read opens by two clients: both hold read delegations, and neither is recalled."""
        fh, _, _ = self.delegated(b"both", READ)
        r = self.open(self.b, b"both", READ, create=False)
        self.assertEqual(r.last(c.OP_OPEN).delegation.tag, c.OPEN_DELEGATE_READ)
        self.assertEqual(len(self.leases.leases(self.ino(fh))), 2)
        self.assertEqual(self.back.recalls(), [])

    def test_one_per_client_and_file(self) -> None:
        """A client holding a delegation on a file gets no second one (nor an upgrade)."""
        fh, _, _ = self.delegated(b"once", READ)
        r = self.open(self.a, b"once", READ, create=False, owner=b"o2")
        self.assertEqual(r.last(c.OP_OPEN).delegation, Arm(c.OPEN_DELEGATE_NONE))
        r = self.open(self.a, b"once", BOTH | WANT_WRITE, create=False, owner=b"o3")
        self.assertEqual(
            r.last(c.OP_OPEN).delegation,
            Arm(c.OPEN_DELEGATE_NONE_EXT, Arm(c.WND4_NOT_SUPP_UPGRADE)),
        )
        self.assertEqual(len(self.leases.leases(self.ino(fh))), 1)

    def test_modes(self) -> None:
        """nfs.v4.delegations: "read" grants only read delegations, "none" none."""
        h = Harness(settings=Settings(delegations="read"))
        cl = h.client().setup()
        r = cl.compound(cl.path(b"export") + [cl.open_create(b"f", access=BOTH)])
        self.assertEqual(r.last(c.OP_OPEN).delegation.tag, c.OPEN_DELEGATE_READ)
        h = Harness(settings=Settings(delegations="none"))
        cl = h.client().setup()
        r = cl.compound(cl.path(b"export") + [cl.open_create(b"f", access=BOTH | WANT_ANY)])
        self.assertEqual(
            r.last(c.OP_OPEN).delegation,
            Arm(c.OPEN_DELEGATE_NONE_EXT, Arm(c.WND4_RESOURCE, False)),
        )

    def test_io_through_the_delegation_stateid(self) -> None:
        """A read delegation's stateid reads (not writes); a write delegation's does both."""
        fh, deleg, _ = self.delegated(b"io", READ)
        p = self.a.putfh(fh)
        r = self.a.compound([p, (c.OP_READ, ReadArgs(deleg.stateid, 0, 10))])
        self.assertEqual(r.status, c.NFS4_OK)
        r = self.a.compound([p, (c.OP_WRITE, WriteArgs(deleg.stateid, 0, c.FILE_SYNC4, b"x"))])
        self.assertEqual(r.status, c.NFS4ERR_OPENMODE)
        fh, deleg, _ = self.delegated(b"io2", BOTH)
        p = self.a.putfh(fh)
        r = self.a.compound([p, (c.OP_WRITE, WriteArgs(deleg.stateid, 0, c.FILE_SYNC4, b"xy"))])
        self.assertEqual(r.status, c.NFS4_OK)
        r = self.a.compound([p, (c.OP_READ, ReadArgs(deleg.stateid, 0, 10))])
        self.assertEqual(r.last().data, b"xy")
        self.assertEqual(self.back.recalls(), [])

    def test_holder_never_recalls_itself(self) -> None:
        """Whatever the holder's client does to its file, its own delegation stays."""
        fh, deleg, sid = self.delegated(b"own", BOTH)
        p = self.a.putfh(fh)
        home = self.a.path(b"export")
        for ops in (
            [p, (c.OP_WRITE, WriteArgs(sid, 0, c.FILE_SYNC4, b"1"))],
            [p, (c.OP_WRITE, WriteArgs(ANON, 0, c.FILE_SYNC4, b"2"))],
            [p, (c.OP_SETATTR, SetattrArgs(ANON, fattr_of({c.FATTR4_MODE: 0o600})))],
            [p, (c.OP_SETATTR, SetattrArgs(ANON, fattr_of({c.FATTR4_SIZE: 1})))],
            [p, self.a.getattr(c.FATTR4_SIZE, c.FATTR4_CHANGE)],
            [p, lock_op(sid, b"l")],
            [p, (c.OP_SAVEFH, None)] + home + [(c.OP_LINK, link_args(b"own2"))],
            home + [(c.OP_SAVEFH, None), (c.OP_RENAME, RenameArgs(b"own", b"own3"))],
            home + [(c.OP_REMOVE, name_args(b"own2"))],
        ):
            self.assertEqual(self.a.compound(ops).status, c.NFS4_OK, ops)
        r = self.open(self.a, b"own3", BOTH, create=False, owner=b"o2")
        self.assertEqual(r.status, c.NFS4_OK)
        self.assertEqual(self.back.recalls(), [])
        self.assertEqual(self.leases.leases(self.ino(fh))[0].state, RWH)


def name_args(name: bytes) -> Any:
    from claudefs_gateway.nfs.v4.codec import NameArgs

    return NameArgs(name)


def link_args(name: bytes) -> Any:
    # LINK: saved fh is the file, current the directory; callers arrange both.
    return name_args(name)


def lock_op(open_sid: StateId, owner: bytes, kind: int = c.WRITE_LT) -> tuple[int, Any]:
    locker = Arm(True, OpenToLockOwner(0, open_sid, 0, StateOwner(0, owner)))
    return (c.OP_LOCK, LockArgs(kind, False, 0, EVERYTHING, locker))


class RecallTests(DelegationTestCase):
    def assert_recalled(self, deleg: Any, fh: bytes, n: int = 1) -> None:
        recalls = self.back.recalls()
        self.assertEqual(len(recalls), n)
        self.assertEqual((recalls[-1].stateid, recalls[-1].fh), (deleg.stateid, fh))

    def test_write_open_recalls_read_delegation(self) -> None:
        """
        Another client's write open answers NFS4ERR_DELAY and sends CB_RECALL;
        the holder returns the delegation and the retried open goes through
        (pynfs DELEG1's sequence).
        """
        fh, deleg, _ = self.delegated(b"f", READ)
        r = self.open(self.b, b"f", BOTH, create=False)
        self.assertEqual(r.status, c.NFS4ERR_DELAY)
        self.assert_recalled(deleg, fh)
        # The refused open left nothing behind.
        self.assertEqual(len(self.h.vfs.locks.shares(self.ino(fh))), 1)
        self.back.answer()
        r = self.open(self.b, b"f", BOTH, create=False)
        self.assertEqual(r.status, c.NFS4ERR_DELAY)  # still out: the client has not returned it
        self.assertEqual(len(self.back.recalls()), 1)  # one recall, not one per retry
        self.assertEqual(self.delegreturn(self.a, fh, deleg.stateid), c.NFS4_OK)
        self.assertEqual(self.leases.leases(self.ino(fh)), [])
        r = self.open(self.b, b"f", BOTH, create=False)
        self.assertEqual(r.status, c.NFS4_OK)
        self.assertEqual(r.last(c.OP_OPEN).delegation, Arm(c.OPEN_DELEGATE_NONE))

    def test_referring_call(self) -> None:
        """CB_SEQUENCE names the OPEN that granted the delegation (RFC 8881 §2.10.6.3)."""
        fh, deleg, _ = self.delegated(b"ref", READ)
        self.open(self.b, b"ref", WRITE, create=False)
        [(_, ops)] = self.back.calls()
        [refs] = ops[0][1].referring_call_lists
        self.assertEqual(refs.sessionid, self.a.sessionid)
        self.assertEqual([(x.sequenceid, x.slotid) for x in refs.calls], [(self.a.slots[0], 0)])

    def test_read_open_recalls_write_delegation(self) -> None:
        """A read open by another client recalls a write delegation; a read delegation it leaves."""
        fh, deleg, _ = self.delegated(b"w", BOTH)
        self.assertEqual(self.open(self.b, b"w", READ, create=False).status, c.NFS4ERR_DELAY)
        self.assert_recalled(deleg, fh)

    def test_deny_recalls_read_delegation(self) -> None:
        """A read open denying writes conflicts with the holder's local opens: recalled."""
        fh, deleg, _ = self.delegated(b"d", READ)
        r = self.open(self.b, b"d", READ, create=False, deny=c.OPEN4_SHARE_DENY_WRITE)
        self.assertEqual(r.status, c.NFS4ERR_DELAY)
        self.assert_recalled(deleg, fh)

    def test_share_conflict_answered_before_recall(self) -> None:
        """An open refused by share modes anyway is NFS4ERR_SHARE_DENIED, and recalls nothing."""
        r = self.open(self.a, b"sd", READ, deny=c.OPEN4_SHARE_DENY_WRITE)
        self.assertEqual(r.last(c.OP_OPEN).delegation.tag, c.OPEN_DELEGATE_READ)
        r = self.open(self.b, b"sd", WRITE, create=False)
        self.assertEqual(r.status, c.NFS4ERR_SHARE_DENIED)
        self.assertEqual(self.back.recalls(), [])

    def _each(self, make: Any, access: int = READ) -> None:
        """C{make(fh, name)} is another client's change: it waits (DELAY) for the recall, then goes."""
        name = b"x%d" % len(self.conn_names)
        self.conn_names.append(name)
        fh, deleg, _ = self.delegated(name, access)
        r = make(fh, name)
        self.assertEqual(r.status, c.NFS4ERR_DELAY, r)
        self.assertEqual(self.back.recalls()[-1].stateid, deleg.stateid)
        self.back.answer()
        self.assertEqual(self.delegreturn(self.a, fh, deleg.stateid), c.NFS4_OK)
        r = make(fh, name)
        self.assertEqual(r.status, c.NFS4_OK, r)

    def test_other_clients_changes_recall(self) -> None:
        """Another NFSv4 client's WRITE, SETATTR, LOCK, RENAME, LINK and REMOVE each recall first."""
        self.conn_names: list[bytes] = []
        b = self.b
        home = b.path(b"export")

        def write(fh: bytes, name: bytes) -> Any:
            return b.compound([b.putfh(fh), (c.OP_WRITE, WriteArgs(ANON, 0, c.FILE_SYNC4, b"z"))])

        def chmod(fh: bytes, name: bytes) -> Any:
            return b.compound(
                [b.putfh(fh), (c.OP_SETATTR, SetattrArgs(ANON, fattr_of({c.FATTR4_MODE: 0o600})))]
            )

        def lock(fh: bytes, name: bytes) -> Any:
            r = self.open(b, name, READ | NO_DELEG, create=False, owner=b"lk" + name)
            if r.status != c.NFS4_OK:
                return r
            return b.compound([b.putfh(fh), lock_op(r.last(c.OP_OPEN).stateid, b"l", c.READ_LT)])

        def rename(fh: bytes, name: bytes) -> Any:
            return b.compound(
                home + [(c.OP_SAVEFH, None), (c.OP_RENAME, RenameArgs(name, name + b"-moved"))]
            )

        def link(fh: bytes, name: bytes) -> Any:
            return b.compound(
                [b.putfh(fh), (c.OP_SAVEFH, None)]
                + home
                + [(c.OP_LINK, link_args(name + b"-link"))]
            )

        def remove(fh: bytes, name: bytes) -> Any:
            return b.compound(home + [(c.OP_REMOVE, name_args(name))])

        for make in (write, chmod, lock, rename, link, remove):
            self._each(make)
        # A read delegation holder caches no writes: another's GETATTR asks nothing.
        fh, _, _ = self.delegated(b"ga", READ)
        self.assertEqual(b.compound([b.putfh(fh), b.getattr(c.FATTR4_SIZE)]).status, c.NFS4_OK)
        self.assertEqual(len(self.back.calls()), len(self.back.recalls()))

    def test_nfs3_write_waits_for_the_return(self) -> None:
        """An NFSv3 write waits (NFSv3 has no "try later" it likes) until the delegation is back."""
        fh, deleg, _ = self.delegated(b"v3", READ)
        nfs3 = self.h.m.caller(0, 0, protocol="nfs3")
        d = self.h.vfs.write(nfs3, self.ino(fh), 0, b"from v3", True)
        self.assertNoResult(d)
        self.assert_recalled(deleg, fh)
        self.back.answer()
        self.assertNoResult(d)
        self.delegreturn(self.a, fh, deleg.stateid)
        self.assertEqual(self.successResultOf(d).count, 7)

    def test_s3_put_waits_for_the_return(self) -> None:
        """An S3 PUT lands by replacing the name: every delegation on the old file is recalled first."""
        fh, deleg, _ = self.delegated(b"obj", BOTH)
        s3 = self.h.m.caller(0, 0, protocol="s3")
        root = self.h.m.root()
        self.successResultOf(self.h.vfs.create(s3, root, b".tmp-put", 0o644))
        d = self.h.vfs.rename(s3, root, b".tmp-put", root, b"obj")
        self.assertNoResult(d)
        self.assert_recalled(deleg, fh)
        self.delegreturn(self.a, fh, deleg.stateid)
        self.successResultOf(d)

    def test_lease_manager_breaks_only_once(self) -> None:
        """Many breakers while one recall is out: one CB_RECALL."""
        fh, deleg, _ = self.delegated(b"once", READ)
        for n in range(5):
            self.open(self.b, b"once", WRITE, create=False, owner=b"o%d" % n)
        self.assertEqual(len(self.back.recalls()), 1)

    def test_cb_recall_retried_when_the_client_does_not_know_it_yet(self) -> None:
        """
        A CB_RECALL answered NFS4ERR_BAD_STATEID (the client has not seen the
        OPEN reply yet) is sent again a second later, a few times at most.
        """
        fh, deleg, _ = self.delegated(b"race", READ)
        self.open(self.b, b"race", WRITE, create=False)
        for n in range(1, RECALL_TRIES + 1):
            self.assertEqual(len(self.back.recalls()), n)
            self.back.answer(c.NFS4ERR_BAD_STATEID)
            self.h.clock.advance(1)
        self.assertEqual(len(self.back.recalls()), RECALL_TRIES)

    def test_recall_waits_for_a_back_channel(self) -> None:
        """A recall that cannot be sent goes when the client binds a back channel again."""
        fh, deleg, _ = self.delegated(b"later", READ)
        self.back.conn.close()
        self.assertEqual(self.open(self.b, b"later", WRITE, create=False).status, c.NFS4ERR_DELAY)
        self.assertEqual(self.back.conn.sent, [])
        flags = self.a.compound([]).last().status_flags
        self.assertTrue(flags & c.SEQ4_STATUS_CB_PATH_DOWN)
        again = self.h.client()
        again.clientid, again.sessionid, again.slots = self.a.clientid, self.a.sessionid, {}
        r = again.raw(
            [(c.OP_BIND_CONN_TO_SESSION, BindConnArgs(self.a.sessionid, c.CDFC4_BACK, False))]
        )
        self.assertEqual(r.status, c.NFS4_OK)
        later = Back(self.h, again)
        self.assertEqual([x.stateid for x in later.recalls()], [deleg.stateid])

    def test_recently_recalled_file_gets_none(self) -> None:
        """A file recalled lately gets no new delegation for a while (no ping-pong)."""
        fh, deleg, _ = self.delegated(b"pp", READ)
        self.open(self.b, b"pp", WRITE, create=False)
        self.back.answer()
        self.delegreturn(self.a, fh, deleg.stateid)
        r = self.open(self.a, b"pp", READ | WANT_READ, create=False, owner=b"o2")
        self.assertEqual(
            r.last(c.OP_OPEN).delegation,
            Arm(c.OPEN_DELEGATE_NONE_EXT, Arm(c.WND4_CONTENTION, False)),
        )
        self.h.clock.advance(RECENT_SECS)
        r = self.open(self.a, b"pp", READ, create=False, owner=b"o3")
        self.assertEqual(r.last(c.OP_OPEN).delegation.tag, c.OPEN_DELEGATE_READ)

    def test_client_expiry_ends_its_delegations(self) -> None:
        """A client that lets its lease run out loses its delegations; nobody waits for it."""
        fh, _, _ = self.delegated(b"gone", READ)
        self.h.clock.advance(60)
        self.b.compound([])
        self.h.clock.advance(45)  # past a's lease, and the next sweep of leases
        self.assertEqual(self.leases.leases(self.ino(fh)), [])
        self.assertEqual(self.open(self.b, b"gone", WRITE, create=False).status, c.NFS4_OK)

    def test_destroyed_client(self) -> None:
        fh, _, _ = self.delegated(b"bye", BOTH)
        from claudefs_gateway.nfs.v4.codec import SessionArgs

        self.a.raw([(c.OP_DESTROY_SESSION, SessionArgs(self.a.sessionid))])
        self.a.raw([(c.OP_DESTROY_CLIENTID, ClientidArgs(self.a.clientid))])
        self.assertEqual(self.leases.leases(self.ino(fh)), [])
        self.assertEqual(len(self.h.vfs.leases), 0)


class GetattrTests(DelegationTestCase):
    """Another client's GETATTR of a file under a write delegation asks the holder (CB_GETATTR)."""

    def setUp(self) -> None:
        super().setUp()
        self.fh, self.deleg, self.sid = self.delegated(b"g", BOTH)
        p = self.a.putfh(self.fh)
        self.a.compound([p, (c.OP_WRITE, WriteArgs(self.sid, 0, c.FILE_SYNC4, b"0123456789"))])
        self.store = attrs_of(self.a.compound([p, self.a.getattr(c.FATTR4_CHANGE)]).last())
        # The other client's GETATTRs stay open while the holder is asked.
        self.twin = self.h.client(deferred=True, conn=self.b.conn)  # type: ignore[attr-defined]
        self.twin.clientid, self.twin.sessionid = self.b.clientid, self.b.sessionid

    def getattr(self) -> defer.Deferred[Any]:
        want = self.twin.getattr(c.FATTR4_CHANGE, c.FATTR4_SIZE, c.FATTR4_TIME_MODIFY)
        d: defer.Deferred[Any] = self.twin.compound([self.twin.putfh(self.fh), want], slot=1)
        return d

    def test_unchanged(self) -> None:
        """The holder's change attribute is the store's: the store's attributes stand, no recall."""
        d = self.getattr()
        self.assertNoResult(d)
        [asked] = self.back.getattrs()
        self.assertEqual(
            (asked.fh, fattr.bits(asked.attr_request)), (self.fh, [c.FATTR4_CHANGE, c.FATTR4_SIZE])
        )
        self.back.answer_getattr(self.store[c.FATTR4_CHANGE], 10)
        got = attrs_of(self.successResultOf(d).last())
        self.assertEqual(
            (got[c.FATTR4_CHANGE], got[c.FATTR4_SIZE]), (self.store[c.FATTR4_CHANGE], 10)
        )
        self.assertEqual(self.back.recalls(), [])

    def test_changed_by_the_holder(self) -> None:
        """
        The holder changed the file (its change attribute moved): others see
        its size, a change attribute past the store's, and a modify time of
        when that was found - the same one next time (pynfs DELEG25).
        """
        d = self.getattr()
        self.back.answer_getattr(self.store[c.FATTR4_CHANGE] + 1, 5, extra=bytes(12))
        got = attrs_of(self.successResultOf(d).last())
        self.assertEqual(got[c.FATTR4_SIZE], 5)
        self.assertGreater(got[c.FATTR4_CHANGE], self.store[c.FATTR4_CHANGE])
        self.h.clock.advance(3)
        d = self.getattr()
        self.back.answer_getattr(self.store[c.FATTR4_CHANGE] + 2, 7)
        again = attrs_of(self.successResultOf(d).last())
        self.assertEqual(again[c.FATTR4_SIZE], 7)
        self.assertEqual(again[c.FATTR4_TIME_MODIFY], got[c.FATTR4_TIME_MODIFY])
        self.assertEqual(self.back.recalls(), [])

    def test_holder_cannot_say(self) -> None:
        """A holder that answers CB_GETATTR with an error is recalled instead (NFS4ERR_DELAY)."""
        d = self.getattr()
        self.back.answer(c.NFS4ERR_BADHANDLE)
        self.assertEqual(self.successResultOf(d).status, c.NFS4ERR_DELAY)
        self.assertEqual([r.stateid for r in self.back.recalls()], [self.deleg.stateid])

    def test_holder_unreachable(self) -> None:
        """Without a back channel to ask on, the delegation is recalled (sent when one is bound)."""
        self.back.conn.close()
        d = self.getattr()
        self.assertEqual(self.successResultOf(d).status, c.NFS4ERR_DELAY)
        self.assertEqual(self.back.conn.sent, [])

    def test_holder_asks_nothing(self) -> None:
        """The holder's own GETATTR is answered from the store, without a callback."""
        r = self.a.compound([self.a.putfh(self.fh), self.a.getattr(c.FATTR4_SIZE)])
        self.assertEqual(r.status, c.NFS4_OK)
        self.assertEqual(self.back.conn.sent, [])

    def test_open_arguments(self) -> None:
        """RFC 9754's open_arguments names what OPEN takes; the delegated-timestamps want is accepted."""
        r = self.b.compound([(c.OP_PUTROOTFH, None), self.b.getattr(c.FATTR4_SUPPORTED_ATTRS)])
        self.assertIn(
            c.FATTR4_OPEN_ARGUMENTS, fattr.bits(attrs_of(r.last())[c.FATTR4_SUPPORTED_ATTRS])
        )
        r = self.b.compound([(c.OP_PUTROOTFH, None), self.b.getattr(c.FATTR4_OPEN_ARGUMENTS)])
        u = Unpacker(r.last().vals)
        bitmaps = [fattr.bits(u.array(16, Unpacker.u32)) for _ in range(5)]
        u.done()
        self.assertEqual(
            bitmaps,
            [[1, 2, 3], [0, 1, 2, 3], [3, 4, 5], [0, 1, 2, 4, 5], [0, 1, 2, 3]],
        )
        r = self.open(self.b, b"ts", BOTH | c.OPEN4_SHARE_ACCESS_WANT_DELEG_TIMESTAMPS)
        self.assertEqual(r.last(c.OP_OPEN).delegation.tag, c.OPEN_DELEGATE_WRITE)


class RevocationTests(DelegationTestCase):
    def test_not_returned_in_time(self) -> None:
        """
        A recalled delegation not returned within the recall time (one NFSv4
        lease here, longer than the lease manager's 35 s) is revoked: the
        waiting open goes through, the stateid answers DELEG_REVOKED, SEQUENCE
        says RECALLABLE_STATE_REVOKED until FREE_STATEID (pynfs DELEG8).
        """
        fh, deleg, _ = self.delegated(b"late", READ)
        sid = deleg.stateid
        self.assertEqual(self.open(self.b, b"late", WRITE, create=False).status, c.NFS4ERR_DELAY)
        self.back.answer()
        self.h.clock.advance(35)
        self.a.compound([])  # it keeps its lease, but not the delegation
        self.assertEqual(self.open(self.b, b"late", WRITE, create=False).status, c.NFS4ERR_DELAY)
        self.h.clock.advance(55)
        self.assertEqual(self.open(self.b, b"late", WRITE, create=False).status, c.NFS4_OK)
        r = self.a.compound([self.a.putfh(fh), (c.OP_READ, ReadArgs(sid, 0, 1))])
        self.assertEqual(r.status, c.NFS4ERR_DELEG_REVOKED)
        flags = self.a.compound([]).last().status_flags
        self.assertEqual(
            flags & c.SEQ4_STATUS_RECALLABLE_STATE_REVOKED, c.SEQ4_STATUS_RECALLABLE_STATE_REVOKED
        )
        r = self.a.compound([(c.OP_TEST_STATEID, TestStateidArgs([sid]))])
        self.assertEqual(r.last(), [c.NFS4ERR_DELEG_REVOKED])
        self.assertEqual(self.delegreturn(self.a, fh, sid), c.NFS4ERR_DELEG_REVOKED)
        r = self.a.compound([(c.OP_FREE_STATEID, StateidArgs(sid))])
        self.assertEqual(r.status, c.NFS4_OK)
        flags = self.a.compound([]).last().status_flags
        self.assertFalse(flags & c.SEQ4_STATUS_RECALLABLE_STATE_REVOKED)
        r = self.a.compound([(c.OP_TEST_STATEID, TestStateidArgs([sid]))])
        self.assertEqual(r.last(), [c.NFS4ERR_BAD_STATEID])
        self.assertEqual(self.b.compound([]).last().status_flags, 0)

    def test_silent_holder_nfs3_write(self) -> None:
        """An NFSv3 write waits out a holder that never answers, then lands."""
        fh, deleg, _ = self.delegated(b"silent", BOTH)
        nfs3 = self.h.m.caller(0, 0, protocol="nfs3")
        d = self.h.vfs.write(nfs3, self.ino(fh), 0, b"v3", True)
        self.h.clock.advance(50)
        self.a.compound([])  # alive, but silent about the recall
        self.h.clock.advance(39)
        self.assertNoResult(d)
        self.h.clock.advance(1)
        self.successResultOf(d)
        self.assertTrue(self.h.nfs4.ids.by_other[deleg.stateid.other].revoked)

    def test_free_stateid_of_a_held_delegation(self) -> None:
        """FREE_STATEID of a delegation still held is NFS4ERR_LOCKS_HELD: it is returned, not freed."""
        fh, deleg, _ = self.delegated(b"held", READ)
        r = self.a.compound([(c.OP_FREE_STATEID, StateidArgs(deleg.stateid))])
        self.assertEqual(r.status, c.NFS4ERR_LOCKS_HELD)
        r = self.a.compound([(c.OP_TEST_STATEID, TestStateidArgs([deleg.stateid]))])
        self.assertEqual(r.last(), [c.NFS4_OK])


class ShortLeaseRevocationTests(DelegationTestCase):
    settings = Settings(lease_secs=20)

    def test_lease_manager_time_when_longer(self) -> None:
        """With a lease shorter than the recall time (35 s), the recall time decides."""
        fh, deleg, _ = self.delegated(b"short", READ)
        self.open(self.b, b"short", WRITE, create=False)
        for _ in range(3):
            self.h.clock.advance(11)
            self.a.compound([])
            self.b.compound([])
        self.assertEqual(self.open(self.b, b"short", WRITE, create=False).status, c.NFS4ERR_DELAY)
        self.h.clock.advance(2)
        self.assertEqual(self.open(self.b, b"short", WRITE, create=False).status, c.NFS4_OK)


class ReturnTests(DelegationTestCase):
    def test_delegreturn_errors(self) -> None:
        """DELEGRETURN of an open stateid, of another file, twice, or of an earlier run is refused."""
        fh, deleg, sid = self.delegated(b"dr", READ)
        other, _, _ = self.delegated(b"dr2", READ)
        self.assertEqual(self.delegreturn(self.a, fh, sid), c.NFS4ERR_BAD_STATEID)
        self.assertEqual(self.delegreturn(self.a, other, deleg.stateid), c.NFS4ERR_BAD_STATEID)
        self.assertEqual(self.delegreturn(self.b, fh, deleg.stateid), c.NFS4ERR_BAD_STATEID)
        self.assertEqual(self.delegreturn(self.a, fh, deleg.stateid), c.NFS4_OK)
        self.assertEqual(self.delegreturn(self.a, fh, deleg.stateid), c.NFS4ERR_BAD_STATEID)
        stale = StateId(1, b"\0\0\0\1" + bytes(8))
        self.assertEqual(self.delegreturn(self.a, fh, stale), c.NFS4ERR_STALE_STATEID)
        r = self.a.compound([(c.OP_DELEGRETURN, StateidArgs(deleg.stateid))])
        self.assertEqual(r.status, c.NFS4ERR_NOFILEHANDLE)

    def test_open_claim_delegate_cur(self) -> None:
        """
        Before returning a delegation the holder makes its local opens real:
        OPEN CLAIM_DELEG_CUR_FH / CLAIM_DELEGATE_CUR, with no recall and no new
        delegation; a read delegation covers no write open (NFS4ERR_OPENMODE).
        """
        fh, deleg, _ = self.delegated(b"cur", BOTH)
        self.open(self.b, b"cur", READ, create=False)
        self.back.answer()

        def claim(arm: Arm, access: int, owner: bytes, put: list[Any]) -> Any:
            args = OpenArgs(0, access, 0, StateOwner(0, owner), Arm(c.OPEN4_NOCREATE), arm)
            return self.a.compound(put + [(c.OP_OPEN, args)])

        r = claim(Arm(c.CLAIM_DELEG_CUR_FH, deleg.stateid), BOTH, b"local1", [self.a.putfh(fh)])
        self.assertEqual(r.status, c.NFS4_OK)
        self.assertEqual(r.last().delegation, Arm(c.OPEN_DELEGATE_NONE))
        r = claim(
            Arm(c.CLAIM_DELEGATE_CUR, ClaimDelegateCur(deleg.stateid, b"cur")),
            READ,
            b"local2",
            self.a.path(b"export"),
        )
        self.assertEqual(r.status, c.NFS4_OK)
        self.assertEqual(len(self.back.recalls()), 1)
        self.assertEqual(self.delegreturn(self.a, fh, deleg.stateid), c.NFS4_OK)
        r = claim(Arm(c.CLAIM_DELEG_CUR_FH, deleg.stateid), READ, b"local3", [self.a.putfh(fh)])
        self.assertEqual(r.status, c.NFS4ERR_BAD_STATEID)
        rfh, rdeleg, _ = self.delegated(b"cur-r", READ)
        r = claim(Arm(c.CLAIM_DELEG_CUR_FH, rdeleg.stateid), BOTH, b"local4", [self.a.putfh(rfh)])
        self.assertEqual(r.status, c.NFS4ERR_OPENMODE)

    def test_client_restart_claims_not_supported(self) -> None:
        """CLAIM_DELEGATE_PREV, CLAIM_DELEG_PREV_FH and DELEGPURGE: NFS4ERR_NOTSUPP, as knfsd."""
        fh, _, _ = self.delegated(b"prev", READ)
        args = OpenArgs(
            0, READ, 0, StateOwner(0, b"p"), Arm(c.OPEN4_NOCREATE), Arm(c.CLAIM_DELEG_PREV_FH)
        )
        r = self.a.compound([self.a.putfh(fh), (c.OP_OPEN, args)])
        self.assertEqual(r.status, c.NFS4ERR_NOTSUPP)
        r = self.a.compound([(c.OP_DELEGPURGE, ClientidArgs(self.a.clientid))])
        self.assertEqual(r.status, c.NFS4ERR_NOTSUPP)

    def test_want_delegation(self) -> None:
        """WANT_DELEGATION grants a delegation on a file without an OPEN; a directory's is IS_DIR."""
        r = self.open(self.a, b"wd", READ | NO_DELEG)
        fh = r.last(c.OP_GETFH)

        def want(fh_ops: list[Any], w: int) -> Any:
            args = WantDelegationArgs(w, Arm(c.CLAIM_FH))
            return self.a.compound(fh_ops + [(c.OP_WANT_DELEGATION, args)])

        r = want([self.a.putfh(fh)], WANT_READ)
        self.assertEqual(r.last().tag, c.OPEN_DELEGATE_READ)
        r = want(self.a.path(b"export"), WANT_READ)
        self.assertEqual(r.last(), Arm(c.OPEN_DELEGATE_NONE_EXT, Arm(c.WND4_IS_DIR)))
        r = want([self.a.putfh(fh)], 0x0900)
        self.assertEqual(r.status, c.NFS4ERR_INVAL)
        r = self.open(self.b, b"wd", WRITE, create=False)
        self.assertEqual(r.status, c.NFS4ERR_DELAY)


class ReclaimTests(SynchronousTestCase):
    """After a restart a client reclaims its delegations with its opens, in grace."""

    def restart(self, h: Harness) -> None:
        h.vfs.locks = LockTable(h.clock)
        h.vfs.leases = LeaseManager(h.clock)
        h.grace = Grace(90)
        h.nfs4 = NFS4(h.ctx, h.clock, Settings(), RequestMetrics(h.metrics, "nfs4"), h.grace)
        h.server = RPCServer()
        h.server.add(h.nfs4.program())
        d = defer.Deferred.fromCoroutine(h.nfs4.start())
        assert d.called

    def reclaim(self, cl: V4Client, fh: bytes, owner: bytes, access: int, held: int) -> Any:
        args = OpenArgs(
            0, access, 0, StateOwner(0, owner), Arm(c.OPEN4_NOCREATE), Arm(c.CLAIM_PREVIOUS, held)
        )
        return cl.compound([cl.putfh(fh), (c.OP_OPEN, args)])

    def test_reclaim_read_and_write(self) -> None:
        h = Harness()
        a = h.client().setup(b"alice")
        b = h.client().setup(b"bob")
        fhs = []
        for name, cl in ((b"r", a), (b"w", a), (b"x", b)):
            r = cl.compound(
                cl.path(b"export") + [cl.open_create(name, access=BOTH), (c.OP_GETFH, None)]
            )
            fhs.append(r.last(c.OP_GETFH))
        self.restart(h)
        a = h.client().setup(b"alice", reclaim_complete=False)
        b = h.client().setup(b"bob", reclaim_complete=False)
        r = self.reclaim(a, fhs[0], b"o", READ, c.OPEN_DELEGATE_READ)
        self.assertEqual(r.status, c.NFS4_OK)
        res = r.last()
        self.assertEqual(
            (res.delegation.tag, res.delegation.value.recall), (c.OPEN_DELEGATE_READ, False)
        )
        r = self.reclaim(a, fhs[1], b"o2", BOTH, c.OPEN_DELEGATE_WRITE)
        self.assertEqual(r.last().delegation.tag, c.OPEN_DELEGATE_WRITE)
        self.assertEqual(h.vfs.leases.leases(int(h.vfs.handles.decode(fhs[1])[1]))[0].state, RWH)
        # Two clients claiming to have held a write delegation on one file:
        # the second gets it with "recall" set, to return at once.
        self.reclaim(b, fhs[2], b"o", BOTH, c.OPEN_DELEGATE_WRITE)
        r = self.reclaim(a, fhs[2], b"o3", BOTH, c.OPEN_DELEGATE_WRITE)
        self.assertEqual(r.status, c.NFS4_OK)
        odd = r.last().delegation
        self.assertEqual((odd.tag, odd.value.recall), (c.OPEN_DELEGATE_WRITE, True))
        r = a.compound([a.putfh(fhs[2]), (c.OP_DELEGRETURN, StateidArgs(odd.value.stateid))])
        self.assertEqual(r.status, c.NFS4_OK)
        # After grace, no reclaims.
        for cl in (a, b):
            cl.compound([(c.OP_RECLAIM_COMPLETE, ReclaimCompleteArgs(False))])
        r = self.reclaim(a, fhs[0], b"o4", READ, c.OPEN_DELEGATE_READ)
        self.assertEqual(r.status, c.NFS4ERR_NO_GRACE)

    def test_no_new_delegations_in_grace(self) -> None:
        """During grace only reclaimed delegations are granted (others may still reclaim)."""
        h = Harness()
        a = h.client().setup(b"alice")
        r = a.compound(
            a.path(b"export") + [a.open_create(b"g", access=READ | NO_DELEG), (c.OP_GETFH, None)]
        )
        fh = r.last(c.OP_GETFH)
        self.restart(h)
        a = h.client().setup(b"alice", reclaim_complete=False)
        r = self.reclaim(a, fh, b"o", READ, c.OPEN_DELEGATE_NONE)
        self.assertEqual(r.last().delegation, Arm(c.OPEN_DELEGATE_NONE))
        r = a.compound(
            [
                a.putfh(fh),
                (
                    c.OP_WANT_DELEGATION,
                    WantDelegationArgs(WANT_READ, Arm(c.CLAIM_PREVIOUS, c.OPEN_DELEGATE_READ)),
                ),
            ]
        )
        self.assertEqual(r.last().tag, c.OPEN_DELEGATE_READ)


class MemoryTests(SynchronousTestCase):
    def test_delegation_lifecycles_leave_nothing(self) -> None:
        """Granted, recalled, returned or revoked, 300 times: no state, lease or timer stays."""
        h = Harness(settings=Settings(lease_secs=30))
        a = h.client().setup(b"a")
        b = h.client().setup(b"b")
        back = Back(h, a)
        for n in range(300):
            name = b"m%d" % n
            r = a.compound(
                a.path(b"export") + [a.open_create(name, access=READ), (c.OP_GETFH, None)]
            )
            fh, res = r.last(c.OP_GETFH), r.last(c.OP_OPEN)
            a.compound([a.putfh(fh), (c.OP_CLOSE, close_args(res.stateid))])
            b.compound(b.path(b"export") + [b.open_existing(name, b"o%d" % n, WRITE)])
            back.answer()
            if n % 2:
                a.compound(
                    [a.putfh(fh), (c.OP_DELEGRETURN, StateidArgs(res.delegation.value.stateid))]
                )
            else:
                h.clock.advance(20)
                b.compound([])
                a.compound([])
                h.clock.advance(16)
                a.compound([(c.OP_FREE_STATEID, StateidArgs(res.delegation.value.stateid))])
                b.compound([])
        self.assertEqual(len(h.vfs.leases), 0)
        cs = h.nfs4.clients.by_id[a.clientid].state
        self.assertEqual((cs.states, cs.delegs, cs.revoked), ({}, {}, set()))
        self.assertEqual(h.nfs4.delegations._sending, set())
        self.assertLessEqual(len(h.nfs4.delegations._recent), 300)


def close_args(sid: StateId) -> Any:
    from claudefs_gateway.nfs.v4.codec import CloseArgs

    return CloseArgs(0, sid)
