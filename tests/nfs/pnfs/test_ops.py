"""
The gateway as pNFS metadata server (L{claudefs_gateway.nfs.v4.pnfs},
L{claudefs_gateway.nfs.pnfs.mds}): layouts, devices, recalls through the
lease manager, fencing and LAYOUTERROR, over the memory vfs with a fake
set of data servers.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from zope.interface import implementer

from claudefs_gateway import errors
from claudefs_gateway.backend.remote.wire import Layout
from claudefs_gateway.fstypes import Attributes, SetAttrs
from claudefs_gateway.interfaces import IPnfsBackend
from claudefs_gateway.nfs.pnfs import flexfiles as ff
from claudefs_gateway.nfs.pnfs import handles
from claudefs_gateway.nfs.pnfs.mds import ALL, PnfsSettings
from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4 import fattr
from claudefs_gateway.nfs.v4.codec import (
    CbSequenceResok,
    GetDeviceInfoArgs,
    GetDeviceListArgs,
    LayoutCommitArgs,
    LayoutErrorArgs,
    LayoutGetArgs,
    LayoutReturnArgs,
    LayoutReturnFile,
    LayoutUpdate,
    StateId,
    WriteArgs,
    decode_cb_compound,
    encode_cb_result,
)
from claudefs_gateway.nfs.v4.codec import DeviceError as V4DeviceError
from claudefs_gateway.nfs.v4.compound import Settings
from claudefs_gateway.rpc import message as msg
from claudefs_gateway.rpc.xdrtypes import Arm
from tests.nfs.v4.client import V4Client
from tests.nfs.v4.harness import Harness

MiB = 1 << 20
SERVERS = ("10.9.0.1:7002", "10.9.0.2:7002")


@implementer(IPnfsBackend)
class FakeDataServers:
    """The memory backend, plus data servers as the remote backend would report them."""

    def __init__(self, inner: Any, servers: tuple[str, ...] = SERVERS) -> None:
        self._inner = inner
        self.layout = Layout(4 * MiB, 1, servers)
        self.keys = {a: bytes([i + 1]) * 32 for i, a in enumerate(servers)}
        self.fences: list[tuple[str, int, int]] = []
        self.down: set[str] = set()
        self.stale: set[tuple[str, int]] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def pnfs_layout(self, ino: int) -> defer.Deferred[Layout]:
        return defer.succeed(self.layout)

    def pnfs_data_server(self, address: str) -> defer.Deferred[tuple[bytes, str]]:
        if address in self.down:
            return defer.fail(errors.BackendUnavailable("down"))
        port = 20490 + self.layout.servers.index(address)
        return defer.succeed((self.keys[address], f"0.0.0.0:{port}"))

    def pnfs_fence(self, address: str, ino: int, epoch: int) -> defer.Deferred[None]:
        self.fences.append((address, ino, epoch))
        return defer.succeed(None)

    def pnfs_committed(self, ino: int, end: int) -> defer.Deferred[Attributes]:
        a = self._inner.getattr(ino)
        got: list[Any] = []
        a.addCallback(got.append)
        if got and got[0].size >= end:
            return self._inner.setattr(ino, SetAttrs())  # type: ignore[no-any-return]
        return self._inner.setattr(ino, SetAttrs(size=end))  # type: ignore[no-any-return]

    def pnfs_stale(self, ino: int) -> frozenset[str]:
        return frozenset(a for a, i in self.stale if i == ino)

    def pnfs_mark_stale(self, address: str, ino: int) -> defer.Deferred[None]:
        self.stale.add((address, ino))
        return defer.succeed(None)

    def pnfs_probe(self, address: str) -> defer.Deferred[None]:
        if address in self.down:
            return defer.fail(errors.BackendUnavailable("down"))
        return defer.succeed(None)


def layoutget(
    sid: StateId, offset: int = 0, iomode: int = c.LAYOUTIOMODE4_RW, ltype: int = 4
) -> tuple[int, Any]:
    return (c.OP_LAYOUTGET, LayoutGetArgs(False, ltype, iomode, offset, ALL, 4096, sid, 65536))


class MdsTests(SynchronousTestCase):
    #: The layout mechanics alone; L{WithDelegationsTests} has both.
    delegations = "none"

    def setUp(self) -> None:
        self.h = Harness(settings=Settings(lease_secs=90, delegations=self.delegations))
        self.ds = FakeDataServers(self.h.vfs.backend)
        self.h.vfs.backend = self.ds
        self.mds = self.h.nfs4.enable_pnfs(
            PnfsSettings(enabled=True, advertise_host="10.0.2.2", ds_uid=41, ds_gid=42)
        )
        self.cl = self.h.client().setup()

    def open(
        self, cl: V4Client, name: bytes = b"f", access: int = c.OPEN4_SHARE_ACCESS_BOTH
    ) -> tuple[bytes, StateId]:
        r = cl.compound(
            cl.path(b"export") + [cl.open_create(name, access=access), (c.OP_GETFH, None)]
        )
        self.assertEqual(r.status, 0, r)
        return r.last(c.OP_GETFH), r.last(c.OP_OPEN).stateid

    def get(self, fh: bytes, sid: StateId, **kw: Any) -> Any:
        return self.cl.compound([self.cl.putfh(fh), layoutget(sid, **kw)])

    def answer_recall(self, conn: Any, status: int) -> None:
        """Play the client's side of the last CB_COMPOUND sent."""
        raw = conn.sent[-1]
        call = msg.parse_call(raw)
        _, _, _, ops = decode_cb_compound(raw[call.args_at :])
        self.assertEqual(ops[1][0], c.OP_CB_LAYOUTRECALL)
        seq = Arm(0, CbSequenceResok(self.cl.sessionid, ops[0][1].sequenceid, 0, 0, 0))
        self.h.nfs4.callbacks.reply(
            msg.reply_success(call.xid)
            + encode_cb_result(status, b"", [(c.OP_CB_SEQUENCE, seq), (ops[1][0], Arm(status))])
        )
        return ops[1][1]

    # -- what the server says ---------------------------------------------------------------

    def test_exchange_id_flag(self) -> None:
        """EXCHANGE_ID says USE_PNFS_MDS; without pNFS, USE_NON_PNFS."""
        r = self.h.client().exchange_id()
        flags = r.last(c.OP_EXCHANGE_ID).flags
        self.assertTrue(flags & c.EXCHGID4_FLAG_USE_PNFS_MDS)
        self.assertFalse(flags & c.EXCHGID4_FLAG_USE_NON_PNFS)
        plain = Harness().client().exchange_id().last(c.OP_EXCHANGE_ID).flags
        self.assertEqual(plain & c.EXCHGID4_FLAG_MASK_PNFS, c.EXCHGID4_FLAG_USE_NON_PNFS)

    def test_layout_type_attributes(self) -> None:
        """fs_layout_types names flexfiles (empty without pNFS); layout_blksize is given."""
        r = self.cl.compound(
            self.cl.path(b"export")
            + [self.cl.getattr(c.FATTR4_FS_LAYOUT_TYPES, c.FATTR4_LAYOUT_BLKSIZE)]
        )
        self.assertEqual(r.status, 0)
        f = r.last(c.OP_GETATTR)
        self.assertEqual(fattr.bits(f.mask), [c.FATTR4_FS_LAYOUT_TYPES, c.FATTR4_LAYOUT_BLKSIZE])
        self.assertEqual(f.vals, b"\0\0\0\1\0\0\0\4\0\0\x10\0")

    # -- LAYOUTGET ----------------------------------------------------------------------------

    def test_layoutget_stripes(self) -> None:
        """
        With two data servers each LAYOUTGET answers the 4 MiB stripe holding
        the offset, on servers[k mod 2], with a handle the data server's key
        verifies, the synthetic credential, and a layout stateid.
        """
        fh, sid = self.open(self.cl)
        seen = []
        for k in range(3):
            r = self.get(fh, sid, offset=k * 4 * MiB + 5)
            self.assertEqual(r.status, 0, r)
            res = r.last(c.OP_LAYOUTGET)
            self.assertTrue(res.return_on_close)
            (seg,) = res.layouts
            self.assertEqual((seg.offset, seg.length, seg.iomode), (k * 4 * MiB, 4 * MiB, 2))
            lay = ff.decode_layout(seg.body)
            self.assertEqual(lay.stripe_unit, 4 * MiB)
            ((ds,),) = lay.mirrors
            self.assertEqual((ds.user, ds.group), (b"41", b"42"))
            address = SERVERS[k % 2]
            h = handles.parse(self.ds.keys[address], ds.fhs[0])
            self.assertEqual((h.epoch, h.uid, h.gid, h.writable), (0, 41, 42, True))
            dev = self.mds.devices[ds.deviceid]
            self.assertEqual(dev.address, address)
            seen.append(res.stateid)
            sid = res.stateid
        # One layout stateid, its seqid moving with each LAYOUTGET.
        self.assertEqual({s.other for s in seen}.__len__(), 1)
        self.assertEqual([s.seqid for s in seen], [1, 2, 3])

    def test_one_server_whole_file(self) -> None:
        self.ds.layout = Layout(4 * MiB, 1, SERVERS[:1])
        fh, sid = self.open(self.cl)
        (seg,) = self.get(fh, sid, offset=9 * MiB).last(c.OP_LAYOUTGET).layouts
        self.assertEqual((seg.offset, seg.length), (0, ALL))

    def test_status_counts_layouts(self) -> None:
        """
        cfs-gateway status shows the client's layouts on its connection: one
        per file however many segments, read or read-write; none for another
        client.
        """
        fh, sid = self.open(self.cl)
        r = self.get(fh, sid)
        self.assertEqual(r.status, 0, r)
        self.get(fh, r.last(c.OP_LAYOUTGET).stateid, offset=4 * MiB)
        rfh, rsid = self.open(self.cl, b"ro", c.OPEN4_SHARE_ACCESS_READ)
        self.assertEqual(self.get(rfh, rsid, iomode=c.LAYOUTIOMODE4_READ).status, 0)
        facts = self.h.nfs4.describe_connection(self.cl.conn)  # type: ignore[attr-defined]
        [client] = facts["nfs4_clients"]
        self.assertEqual(client["layouts"], {"read": 1, "rw": 1, "recalling": 0})
        self.assertEqual(client["opens"], 2)
        other = self.h.client().setup()
        facts = self.h.nfs4.describe_connection(other.conn)  # type: ignore[attr-defined]
        self.assertEqual(facts["nfs4_clients"][0]["layouts"], {"read": 0, "rw": 0, "recalling": 0})

    def test_getdeviceinfo(self) -> None:
        """The device's netaddr4 is the advertised host with the data server's NFS port."""
        fh, sid = self.open(self.cl)
        body = self.get(fh, sid).last(c.OP_LAYOUTGET).layouts[0].body
        devid = ff.decode_layout(body).mirrors[0][0].deviceid
        r = self.cl.compound([(c.OP_GETDEVICEINFO, GetDeviceInfoArgs(devid, 4, 65536, []))])
        self.assertEqual(r.status, 0, r)
        dev = ff.decode_device(r.last(c.OP_GETDEVICEINFO).device.body)
        self.assertEqual(dev.netaddrs, (ff.netaddr("10.0.2.2", 20490),))
        self.assertEqual(dev.versions, (ff.DeviceVersion(3, 0, MiB, MiB, False),))
        small = self.cl.compound([(c.OP_GETDEVICEINFO, GetDeviceInfoArgs(devid, 4, 8, []))])
        self.assertEqual(small.status, c.NFS4ERR_TOOSMALL)
        unknown = self.cl.compound([(c.OP_GETDEVICEINFO, GetDeviceInfoArgs(bytes(16), 4, 0, []))])
        self.assertEqual(unknown.status, c.NFS4ERR_NOENT)
        lst = self.cl.compound([(c.OP_GETDEVICELIST, GetDeviceListArgs(4, 16, 0, bytes(8)))])
        self.assertEqual(len(lst.last(c.OP_GETDEVICELIST).deviceid_list), 2)

    def test_layoutget_refusals(self) -> None:
        fh, sid = self.open(self.cl)
        self.assertEqual(self.get(fh, sid, ltype=1).status, c.NFS4ERR_UNKNOWN_LAYOUTTYPE)
        self.assertEqual(self.get(fh, sid, iomode=3).status, c.NFS4ERR_BADIOMODE)
        # A stateid of another server run is stale; one of this run never made is bad.
        self.assertEqual(self.get(fh, StateId(1, b"x" * 12)).status, c.NFS4ERR_STALE_STATEID)
        made_up = StateId(1, sid.other[:4] + b"\xff" * 8)
        self.assertEqual(self.get(fh, made_up).status, c.NFS4ERR_BAD_STATEID)
        rfh, rsid = self.open(self.cl, b"ro", c.OPEN4_SHARE_ACCESS_READ)
        self.assertEqual(self.get(rfh, rsid).status, c.NFS4ERR_BADIOMODE)
        self.assertEqual(self.get(rfh, rsid, iomode=1).status, 0)
        plain = Harness()
        pc = plain.client().setup()
        r = pc.compound(pc.path(b"export") + [pc.open_create(b"f"), (c.OP_GETFH, None)])
        got = pc.compound([pc.putfh(r.last(c.OP_GETFH)), layoutget(r.last(c.OP_OPEN).stateid)])
        self.assertEqual(got.status, c.NFS4ERR_LAYOUTUNAVAILABLE)

    def test_mirrors(self) -> None:
        """
        With two copies each segment names both data servers (the client
        writes every mirror); with one down, a read/write layout leaves it
        out and its copy is marked stale for re-silvering.
        """
        self.ds.layout = Layout(4 * MiB, 2, SERVERS)
        fh, sid = self.open(self.cl)
        body = self.get(fh, sid, offset=4 * MiB).last(c.OP_LAYOUTGET).layouts[0].body
        mirrors = ff.decode_layout(body).mirrors
        self.assertEqual(
            [self.mds.devices[m[0].deviceid].address for m in mirrors], [SERVERS[1], SERVERS[0]]
        )
        self.assertEqual(self.ds.stale, set())
        ino = next(iter(self.mds.states.values())).ino
        self.mds.mark_down(self.mds.by_address[SERVERS[0]], self.ds, "test")
        self.answer_recall(self.cl.conn, c.NFS4ERR_NOMATCHING_LAYOUT)  # type: ignore[attr-defined]
        r2 = self.cl.compound(
            self.cl.path(b"export") + [self.cl.open_existing(b"f", b"x", c.OPEN4_SHARE_ACCESS_BOTH)]
        )
        body = self.get(fh, r2.last(c.OP_OPEN).stateid).last(c.OP_LAYOUTGET).layouts[0].body
        (only,) = ff.decode_layout(body).mirrors
        self.assertEqual(self.mds.devices[only[0].deviceid].address, SERVERS[1])
        self.assertEqual(self.ds.stale, {(SERVERS[0], ino)})
        self.mds.stop()

    # -- LAYOUTCOMMIT, LAYOUTRETURN ------------------------------------------------------------

    def test_commit_grows_size_and_return_drops_lease(self) -> None:
        fh, sid = self.open(self.cl)
        lsid = self.get(fh, sid).last(c.OP_LAYOUTGET).stateid
        self.assertEqual(len(self.h.vfs.leases), 1)
        commit = LayoutCommitArgs(
            0, ALL, False, lsid, Arm(True, 10 * MiB - 1), Arm(False), LayoutUpdate(4, b"")
        )
        r = self.cl.compound([self.cl.putfh(fh), (c.OP_LAYOUTCOMMIT, commit)])
        self.assertEqual(r.status, 0, r)
        self.assertEqual(r.last(c.OP_LAYOUTCOMMIT), Arm(True, 10 * MiB))
        ret = LayoutReturnArgs(
            False, 4, c.LAYOUTIOMODE4_ANY, Arm(1, LayoutReturnFile(0, ALL, lsid, b""))
        )
        r = self.cl.compound([self.cl.putfh(fh), (c.OP_LAYOUTRETURN, ret)])
        self.assertEqual(r.status, 0, r)
        self.assertEqual(r.last(c.OP_LAYOUTRETURN), Arm(False))
        self.assertEqual(len(self.h.vfs.leases), 0)
        self.assertEqual(self.mds.states, {})

    def test_return_all(self) -> None:
        """LAYOUTRETURN4_ALL of iomode READ keeps read/write layouts; ANY returns everything."""
        fh, sid = self.open(self.cl)
        self.get(fh, sid)
        ret = LayoutReturnArgs(False, 4, c.LAYOUTIOMODE4_READ, Arm(c.LAYOUTRETURN4_ALL))
        self.assertEqual(self.cl.compound([(c.OP_LAYOUTRETURN, ret)]).status, 0)
        self.assertEqual(len(self.mds.states), 1)
        ret = LayoutReturnArgs(False, 4, c.LAYOUTIOMODE4_ANY, Arm(c.LAYOUTRETURN4_ALL))
        self.assertEqual(self.cl.compound([(c.OP_LAYOUTRETURN, ret)]).status, 0)
        self.assertEqual(self.mds.states, {})
        self.assertEqual(len(self.h.vfs.leases), 0)

    # -- recalls ----------------------------------------------------------------------------------

    def _writer(self) -> tuple[bytes, StateId]:
        fh, sid = self.open(self.cl)
        lsid = self.get(fh, sid).last(c.OP_LAYOUTGET).stateid
        return fh, lsid

    def test_other_clients_write_recalls(self) -> None:
        """
        Another client's OPEN for writing recalls the layout (CB_LAYOUTRECALL:
        it may write through the gateway, behind the data servers' backs); it
        answers NFS4ERR_DELAY until the layout is returned, then goes through,
        and so does its WRITE.
        """
        fh, lsid = self._writer()
        other = self.h.client().setup()
        opening = other.path(b"export") + [
            other.open_existing(b"f", b"o2", c.OPEN4_SHARE_ACCESS_BOTH)
        ]
        self.assertEqual(other.compound(opening).status, c.NFS4ERR_DELAY)
        recall = self.answer_recall(self.cl.conn, 0)  # type: ignore[attr-defined]
        self.assertEqual(recall.recall.value.fh, fh)
        self.assertEqual(recall.recall.value.stateid.seqid, lsid.seqid + 1)
        ret = LayoutReturnArgs(
            False,
            4,
            c.LAYOUTIOMODE4_ANY,
            Arm(1, LayoutReturnFile(0, ALL, recall.recall.value.stateid, b"")),
        )
        self.assertEqual(self.cl.compound([self.cl.putfh(fh), (c.OP_LAYOUTRETURN, ret)]).status, 0)
        r = other.compound(opening)
        self.assertEqual(r.status, 0)
        write = (c.OP_WRITE, WriteArgs(r.last(c.OP_OPEN).stateid, 0, 2, b"hi"))
        self.assertEqual(other.compound([other.putfh(fh), write]).status, 0)
        self.assertEqual(self.ds.fences, [])

    def test_truncate_by_another_protocol_recalls(self) -> None:
        """
        An SMB (or S3, NFSv3) truncation of a file a client holds a layout of
        waits for the layout to come back (CB_LAYOUTRECALL, LAYOUTRETURN),
        then happens.
        """
        fh, lsid = self._writer()
        ino = next(iter(self.mds.states.values())).ino
        smb = self.h.m.caller(0, 0, protocol="smb")
        d = self.h.vfs.setattr(smb, ino, SetAttrs(size=0))
        self.assertNoResult(d)
        recall = self.answer_recall(self.cl.conn, 0)  # type: ignore[attr-defined]
        self.assertNoResult(d)
        ret = LayoutReturnArgs(
            False,
            4,
            c.LAYOUTIOMODE4_ANY,
            Arm(1, LayoutReturnFile(0, ALL, recall.recall.value.stateid, b"")),
        )
        self.assertEqual(self.cl.compound([self.cl.putfh(fh), (c.OP_LAYOUTRETURN, ret)]).status, 0)
        self.assertEqual(self.successResultOf(d).size, 0)

    def test_own_writes_do_not_recall(self) -> None:
        """The layout's own client writing through the gateway recalls nothing."""
        fh, _ = self.open(self.cl, b"own")
        r = self.cl.compound(
            self.cl.path(b"export")
            + [self.cl.open_existing(b"own", b"x", c.OPEN4_SHARE_ACCESS_BOTH)]
        )
        osid = r.last(c.OP_OPEN).stateid
        self.assertEqual(self.get(fh, osid).status, 0)
        w = self.cl.compound([self.cl.putfh(fh), (c.OP_WRITE, WriteArgs(osid, 0, 2, b"me"))])
        self.assertEqual(w.status, 0)
        self.assertEqual(self.cl.conn.sent, [])  # type: ignore[attr-defined]

    def test_nomatching_answer_drops_layout(self) -> None:
        """A client that answers the recall with NOMATCHING_LAYOUT holds nothing: the change goes on."""
        fh, _ = self._writer()
        leases = self.h.vfs.leases
        ino = next(iter(self.mds.states.values())).ino
        waiting = leases.recall(ino, _why_write(), ())
        self.assertNoResult(waiting)
        self.answer_recall(self.cl.conn, c.NFS4ERR_NOMATCHING_LAYOUT)  # type: ignore[attr-defined]
        self.successResultOf(waiting)
        self.assertEqual(self.mds.states, {})

    def test_unanswered_recall_fences(self) -> None:
        """
        A layout not returned within the recall time is revoked: the file's
        epoch grows in the store, each data server of the layout is told, and
        new layouts carry the new epoch.
        """
        fh, lsid = self._writer()
        ino = next(iter(self.mds.states.values())).ino
        waiting = self.h.vfs.leases.recall(ino, _why_write(), ())
        self.h.clock.advance(self.mds.settings.recall_timeout + 1)
        self.successResultOf(waiting)
        self.assertEqual(self.ds.fences, [(SERVERS[0], ino, 1)])
        self.assertEqual(self.successResultOf(self.h.vfs.get_state(f"nfs4.pnfs.epoch.{ino}")), b"1")
        # The revoked stateid is unknown now; a fresh LAYOUTGET mints epoch 1.
        r = self.cl.compound(
            [
                self.cl.putfh(fh),
                (
                    c.OP_LAYOUTCOMMIT,
                    LayoutCommitArgs(
                        0, ALL, False, lsid, Arm(False), Arm(False), LayoutUpdate(4, b"")
                    ),
                ),
            ]
        )
        self.assertEqual(r.status, c.NFS4ERR_BAD_STATEID)
        r2 = self.cl.compound(
            self.cl.path(b"export") + [self.cl.open_existing(b"f", b"x", c.OPEN4_SHARE_ACCESS_BOTH)]
        )
        body = self.get(fh, r2.last(c.OP_OPEN).stateid).last(c.OP_LAYOUTGET).layouts[0].body
        ds = ff.decode_layout(body).mirrors[0][0]
        self.assertEqual(handles.parse(self.ds.keys[SERVERS[0]], ds.fhs[0]).epoch, 1)

    def test_recall_conflict(self) -> None:
        """LAYOUTGET of a layout being recalled answers NFS4ERR_RECALLCONFLICT."""
        fh, lsid = self._writer()
        ino = next(iter(self.mds.states.values())).ino
        self.h.vfs.leases.recall(ino, _why_write(), ())
        self.assertEqual(self.get(fh, lsid).status, c.NFS4ERR_RECALLCONFLICT)

    # -- LAYOUTERROR --------------------------------------------------------------------------

    def test_layouterror_marks_down_and_back(self) -> None:
        """
        LAYOUTERROR naming a data server that does not answer marks it down
        (health degraded), recalls layouts naming it and leaves it out of new
        ones; once a probe finds it back it is used again.
        """
        fh, lsid = self._writer()
        devid = next(iter(self.mds.devices))
        self.ds.down.add(SERVERS[0])
        err = LayoutErrorArgs(0, ALL, lsid, [V4DeviceError(devid, c.NFS4ERR_NXIO, c.OP_WRITE)])
        r = self.cl.compound([self.cl.putfh(fh), (c.OP_LAYOUTERROR, err)])
        self.assertEqual(r.status, 0, r)
        self.assertEqual(self.mds.check().status, "degraded")
        self.assertEqual(self.mds.degraded_count(), 1.0)
        recall = self.answer_recall(self.cl.conn, c.NFS4ERR_NOMATCHING_LAYOUT)  # type: ignore[attr-defined]
        self.assertEqual(recall.iomode, c.LAYOUTIOMODE4_ANY)
        r2 = self.cl.compound(
            self.cl.path(b"export") + [self.cl.open_existing(b"f", b"x", c.OPEN4_SHARE_ACCESS_BOTH)]
        )
        osid = r2.last(c.OP_OPEN).stateid
        self.assertEqual(self.get(fh, osid).status, c.NFS4ERR_LAYOUTUNAVAILABLE)
        # The other stripe's server is fine.
        self.assertEqual(self.get(fh, osid, offset=4 * MiB).status, 0)
        self.ds.down.clear()
        self.h.clock.advance(self.mds.settings.probe_interval + 0.1)
        self.assertEqual(self.mds.check().status, "healthy")
        self.assertEqual(self.cl.compound([self.cl.putfh(fh), layoutget(osid)]).status, 0)


def _why_write() -> Any:
    from claudefs_gateway.vfs.leases import Why

    return Why.WRITE


class WithDelegationsTests(SynchronousTestCase):
    """
    Delegations on (the default): one client's write delegation and its
    layout of a file are its own caches and never recall each other.
    """

    delegations = "read_write"
    setUp = MdsTests.setUp
    open = MdsTests.open
    get = MdsTests.get
    _writer = MdsTests._writer

    def test_delegation_and_layout_together(self) -> None:
        """A client holding a write delegation still gets a RW layout, and keeps both."""
        fh, lsid = self._writer()
        self.assertEqual(len(self.h.vfs.leases), 2)
        self.assertEqual(self.cl.conn.sent, [])  # type: ignore[attr-defined]

    def test_other_clients_open_recalls_both(self) -> None:
        """Another client's open for writing recalls the delegation and the layout."""
        fh, lsid = self._writer()
        other = self.h.client().setup()
        opening = other.path(b"export") + [
            other.open_existing(b"f", b"o2", c.OPEN4_SHARE_ACCESS_BOTH)
        ]
        self.assertEqual(other.compound(opening).status, c.NFS4ERR_DELAY)
        # Both leases are being broken; the back channel (one slot) carries
        # the recalls one after the other.
        self.assertEqual(
            [bool(x.breaking_to is not None) for x in self.h.vfs.leases.leases(self._ino())],
            [True, True],
        )
        raw = self.cl.conn.sent[-1]  # type: ignore[attr-defined]
        ops = decode_cb_compound(raw[msg.parse_call(raw).args_at :])[3]
        self.assertIn(ops[1][0], (c.OP_CB_RECALL, c.OP_CB_LAYOUTRECALL))

    def _ino(self) -> int:
        return next(iter(self.mds.states.values())).ino


class DrawingTests(SynchronousTestCase):
    def test_machine_drawing(self) -> None:
        """docs/layout.dot is what the LayoutState machine is (regenerate with to_dot)."""
        import os

        from claudefs_gateway.core.machines import to_dot
        from claudefs_gateway.nfs.pnfs.mds import LayoutState
        from tests.helpers import REPO

        with open(os.path.join(REPO, "docs", "layout.dot")) as f:
            self.assertEqual(f.read(), to_dot(LayoutState, "layout"))
