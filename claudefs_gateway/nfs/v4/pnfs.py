# -*- test-case-name: tests.nfs.pnfs.test_ops -*-
"""
The pNFS operations of the NFSv4.1 server (RFC 8881 §18.40-18.44, RFC 7862
§15.6-15.7): LAYOUTGET, LAYOUTCOMMIT, LAYOUTRETURN, GETDEVICEINFO,
GETDEVICELIST, LAYOUTERROR and LAYOUTSTATS, with flexible file layouts
(RFC 8435) over the data servers of the remote backend. The state they keep
is L{claudefs_gateway.nfs.pnfs.mds.Layouts}; docs/pnfs.rst tells the story.

Without C{nfs.pnfs.enabled} (or without data servers) the gateway is no
metadata server: EXCHANGE_ID says USE_NON_PNFS, C{fs_layout_types} is
empty, and these operations answer NFS4ERR_LAYOUTUNAVAILABLE
(GETDEVICEINFO, GETDEVICELIST: NFS4ERR_NOTSUPP), as a server without pNFS
may (RFC 8881 §18.43.3).

Choices, where the RFCs leave them:

 - A LAYOUTGET answers one segment: the stripe unit holding the requested
   offset when the namespace stripes over several data servers (the Linux
   client takes one data server per mirror), else the whole file.
 - return_on_close is set: a closed file's layouts go back with its CLOSE,
   so the leases behind them do not outlive use.
 - A LAYOUTGET during a recall of the same layout answers
   NFS4ERR_RECALLCONFLICT; one that must first recall other clients'
   conflicting layouts or delegations answers NFS4ERR_LAYOUTTRYLATER.
 - LAYOUTCOMMIT grows the size to C{last_write_offset + 1} and sets mtime
   to the server's time (RFC 8881 §18.42.3 lets the server choose).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from claudefs_gateway import errors
from claudefs_gateway.core.log import Logger
from claudefs_gateway.interfaces import IVFS
from claudefs_gateway.nfs.pnfs import flexfiles as ff
from claudefs_gateway.nfs.pnfs.mds import (
    ALL,
    Layouts,
    LayoutState,
    PnfsSettings,
    Segment,
    client_exempt,
    lease_key,
)
from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4.base import Nfs4Error
from claudefs_gateway.nfs.v4.codec import (
    CbLayoutRecallArgs,
    DeviceAddr4,
    GetDeviceInfoArgs,
    GetDeviceInfoResok,
    GetDeviceListArgs,
    GetDeviceListResok,
    Layout4,
    LayoutCommitArgs,
    LayoutErrorArgs,
    LayoutGetArgs,
    LayoutGetResok,
    LayoutRecallFile,
    LayoutReturnArgs,
    LayoutStatsArgs,
    StateId,
)
from claudefs_gateway.nfs.v4.compound import CompoundState, OpsBase, ok
from claudefs_gateway.rpc.xdr import XDRError
from claudefs_gateway.rpc.xdrtypes import Arm
from claudefs_gateway.vfs import Origin
from claudefs_gateway.vfs.leases import R, W, Why

__all__ = ["PnfsOps"]


class PnfsOps(OpsBase):
    """The pNFS operations; L{pnfs} is None unless the gateway is a metadata server."""

    _log = Logger()
    pnfs: Layouts | None = None

    # -- wiring ---------------------------------------------------------------------------

    def enable_pnfs(self, settings: PnfsSettings, metrics: Any = None) -> Layouts:
        """Make this server a pNFS metadata server (service.py, when configured)."""
        layouts = Layouts(
            settings,
            self.clients.clock,
            lambda: defer.Deferred.fromCoroutine(self.ctx.ready()),
            self._send_recall,
            metrics,
        )
        self.pnfs = layouts
        self.info.layout_types = (c.LAYOUT4_FLEX_FILES,)
        self.info.layout_blksize = 4096
        return layouts

    def _send_recall(self, st: LayoutState) -> defer.Deferred[int]:
        return defer.Deferred.fromCoroutine(self._recall(st))

    async def _recall(self, st: LayoutState) -> int:
        from claudefs_gateway.nfs.v4.callback import CallbackFailed

        for s in list(st.client.sessions.values()):
            if not s.callbacks_up:
                continue
            args = CbLayoutRecallArgs(
                c.LAYOUT4_FLEX_FILES,
                c.LAYOUTIOMODE4_ANY,
                True,
                Arm(
                    c.LAYOUTRECALL4_FILE,
                    LayoutRecallFile(st.fh, 0, ALL, StateId(st.seqid, st.other)),
                ),
            )
            result = await self.callbacks.call(s, [(c.OP_CB_LAYOUTRECALL, args)])
            if len(result.results) < 2:
                # CB_SEQUENCE failed: the recall was not looked at.
                return int(result.status)
            return int(result.results[1][1].tag)
        raise CallbackFailed("no session with a back channel")

    def _mds(self) -> Layouts:
        if self.pnfs is None:
            raise Nfs4Error(c.NFS4ERR_LAYOUTUNAVAILABLE, "not a pNFS metadata server")
        return self.pnfs

    @staticmethod
    def _type(layout_type: int) -> None:
        if layout_type != c.LAYOUT4_FLEX_FILES:
            raise Nfs4Error(c.NFS4ERR_UNKNOWN_LAYOUTTYPE, f"layout type {layout_type}")

    def _layout_state(self, st: CompoundState, sid: StateId, ino: int) -> LayoutState:
        """The layout state a layout stateid names for this client and file."""
        mds = self._mds()
        sid = self.current_stateid(st, sid)
        ls = mds.states.get(sid.other)
        if ls is None or st.session is None or ls.client is not st.client or ls.ino != ino:
            if sid.other != bytes(12) and self.ids.is_stale(sid.other):
                raise Nfs4Error(c.NFS4ERR_STALE_STATEID)
            raise Nfs4Error(c.NFS4ERR_BAD_STATEID, "not a layout stateid of this file")
        if sid.seqid > ls.seqid:
            raise Nfs4Error(c.NFS4ERR_BAD_STATEID, "layout seqid from the future")
        return ls

    # -- LAYOUTGET --------------------------------------------------------------------------

    async def op_LAYOUTGET(self, st: CompoundState, a: LayoutGetArgs) -> Arm:
        mds = self._mds()
        fh = self.cfh(st)
        attrs_, caller = self.real(st, fh)
        self._type(a.layout_type)
        if a.iomode not in (c.LAYOUTIOMODE4_READ, c.LAYOUTIOMODE4_RW):
            raise Nfs4Error(c.NFS4ERR_BADIOMODE, "iomode")
        if not attrs_.is_reg:
            raise Nfs4Error(c.NFS4ERR_INVAL, "layouts are of regular files")
        if a.length == 0 or (a.length != ALL and a.offset + a.length > 2**64):
            raise Nfs4Error(c.NFS4ERR_INVAL, "range")
        rw = a.iomode == c.LAYOUTIOMODE4_RW
        if rw and caller.read_only:
            raise Nfs4Error(c.NFS4ERR_ROFS)
        client = st.client
        sid = self.current_stateid(st, a.stateid)
        ls = mds.states.get(sid.other)
        if ls is not None:
            ls = self._layout_state(st, sid, fh.ino)
        else:
            # The first LAYOUTGET names an open, lock or delegation stateid
            # of this client for this file (RFC 8881 §12.5.3).
            other = self.ids.by_other.get(sid.other)
            if other is None:
                if sid.other != bytes(12) and self.ids.is_stale(sid.other):
                    raise Nfs4Error(c.NFS4ERR_STALE_STATEID)
                raise Nfs4Error(c.NFS4ERR_BAD_STATEID, "unknown stateid")
            if other.client is not client or other.ino != fh.ino or other.revoked:
                raise Nfs4Error(c.NFS4ERR_BAD_STATEID, "stateid of another client or file")
            if rw:
                opened = other if getattr(other, "open", None) is None else other.open
                access = getattr(opened, "access", c.OPEN4_SHARE_ACCESS_BOTH)
                if not access & c.OPEN4_SHARE_ACCESS_WRITE:
                    raise Nfs4Error(c.NFS4ERR_BADIOMODE, "open is not for writing")
            ls = mds.by_key.get((client.clientid, fh.ino))
        if ls is not None and ls.recalling:
            raise Nfs4Error(c.NFS4ERR_RECALLCONFLICT, "layout being recalled")
        vfs = await self.vfs()
        pnfs = vfs.pnfs
        if pnfs is None:
            raise Nfs4Error(c.NFS4ERR_LAYOUTUNAVAILABLE, "no data servers")
        # The lease behind the layout: R to read, R+W to write (docs/pnfs.rst).
        want = R | (W if rw or (ls is not None and ls.writable) else 0)
        key = lease_key(client, fh.ino)
        leases = vfs.leases
        held = leases.find(key)
        have = held.state if held is not None and not held.gone else 0
        if (
            want & ~have
            and leases.grantable(fh.ino, key, want, family=client_exempt(client)) & want != want
        ):
            try:
                await leases.recall(
                    fh.ino, Why.WRITE if rw else Why.READ, (client_exempt(client),), wait=False
                )
            except errors.LeaseBreaking:
                mds.count("LAYOUTGET", "TRYLATER")
                raise Nfs4Error(
                    c.NFS4ERR_LAYOUTTRYLATER, "others' layouts or leases being recalled", False
                ) from None
        layout = await pnfs.pnfs_layout(fh.ino)
        if not layout.servers:
            raise Nfs4Error(c.NFS4ERR_LAYOUTUNAVAILABLE, "no data servers")
        offset, length, k = mds.segment_range(layout, a.offset)
        devices = []
        left_out = []
        stale = pnfs.pnfs_stale(fh.ino)
        for address in mds.mirrors_of(layout, k):
            # A copy missing writes is not read from, nor written until re-silvered.
            dev = None if address in stale else await mds.device(pnfs, address)
            if dev is not None:
                devices.append(dev)
            elif address not in stale:
                left_out.append(address)
        if devices and rw:
            for address in left_out:
                # Its copy misses what this layout's holder writes: re-silver it later.
                await pnfs.pnfs_mark_stale(address, fh.ino)
        if not devices:
            mds.count("LAYOUTGET", "UNAVAILABLE")
            # The client does its I/O through the gateway meanwhile.
            raise Nfs4Error(c.NFS4ERR_LAYOUTUNAVAILABLE, "no data server of the stripe is up")
        if a.minlength and length != ALL and offset + length - a.offset < a.minlength:
            if a.offset + a.minlength > offset + length:
                # Honest: a stripe is all one segment can cover (RFC 8881 §18.43.3).
                self._log.debug(
                    "LAYOUTGET minlength {m} past the stripe; answering the stripe", m=a.minlength
                )
        epoch = await mds.epoch(vfs, fh.ino)
        if ls is None or ls.gone:
            ls = mds.state_for(client, fh.ino, fh.handle, self.ids.new_other)
        if ls.recalling:
            raise Nfs4Error(c.NFS4ERR_RECALLCONFLICT, "layout being recalled")
        lease = leases.grant(fh.ino, key, want, ls, family=client_exempt(client))
        if lease is not None:
            # Several gateways: the meta server's word on the grant (docs/rpc.rst).
            await leases.settle_lease(lease)
            if lease.gone:
                lease = None
        if lease is not None:
            ls.lease = lease
            ls.leases = leases
        s = mds.settings
        mirrors = []
        for i, dev in enumerate(devices):
            fh_ds = mds.mint(dev, fh.ino, epoch, rw)
            mirrors.append(
                (
                    ff.DataServer(
                        dev.deviceid,
                        len(devices) - i,
                        (0, bytes(12)),
                        (fh_ds,),
                        str(s.ds_uid).encode(),
                        str(s.ds_gid).encode(),
                    ),
                )
            )
        body = ff.encode_layout(ff.Layout(layout.stripe_unit, tuple(mirrors), 0, 0))
        iomode = c.LAYOUTIOMODE4_RW if rw else c.LAYOUTIOMODE4_READ
        seg = Segment(offset, length, iomode, tuple(d.address for d in devices))
        if seg not in ls.segments:
            ls.segments.append(seg)
        sid_out = StateId(ls.bump(), ls.other)
        st.cstateid = sid_out
        mds.count("LAYOUTGET", "OK")
        return ok(
            LayoutGetResok(
                True,
                sid_out,
                [Layout4(offset, length, iomode, c.LAYOUT4_FLEX_FILES, body)],
            )
        )

    # -- LAYOUTCOMMIT -----------------------------------------------------------------------

    async def op_LAYOUTCOMMIT(self, st: CompoundState, a: LayoutCommitArgs) -> Arm:
        mds = self._mds()
        fh = self.cfh(st)
        attrs_, caller = self.real(st, fh, write=True)
        if not attrs_.is_reg:
            raise Nfs4Error(c.NFS4ERR_INVAL, "not a file")
        if a.layoutupdate.type != c.LAYOUT4_FLEX_FILES:
            raise Nfs4Error(c.NFS4ERR_UNKNOWN_LAYOUTTYPE)
        if not a.reclaim:
            ls = self._layout_state(st, a.stateid, fh.ino)
            if not ls.writable:
                raise Nfs4Error(c.NFS4ERR_BADIOMODE, "no read/write layout held")
        mds.count("LAYOUTCOMMIT", "OK")
        if not a.last_write_offset.tag:
            return ok(Arm(False))
        end = a.last_write_offset.value + 1
        vfs = await self.vfs()
        origin = Origin(exempt=(client_exempt(st.client),), wait=False)
        before = attrs_.size
        after = await vfs.layout_commit(caller, fh.ino, end, origin)
        fh.attrs = after
        if after.size != before:
            return ok(Arm(True, after.size))
        return ok(Arm(False))

    # -- LAYOUTRETURN -----------------------------------------------------------------------

    async def op_LAYOUTRETURN(self, st: CompoundState, a: LayoutReturnArgs) -> Arm:
        mds = self._mds()
        self._type(a.layout_type)
        if a.iomode not in (c.LAYOUTIOMODE4_READ, c.LAYOUTIOMODE4_RW, c.LAYOUTIOMODE4_ANY):
            raise Nfs4Error(c.NFS4ERR_BADIOMODE)
        client = st.client
        kind = a.layoutreturn.tag
        if kind != c.LAYOUTRETURN4_FILE:
            # FSID or ALL: the client's layouts of that iomode, of every file
            # (RFC 8881 §18.44.3; one export is one file system, all are returned).
            for ls in [x for x in mds.states.values() if x.client is client]:
                ls.segments = [
                    s for s in ls.segments if a.iomode not in (c.LAYOUTIOMODE4_ANY, s.iomode)
                ]
                if not ls.segments:
                    mds.drop(ls)
            mds.count("LAYOUTRETURN", "OK")
            return ok(Arm(False))
        fh = self.cfh(st)
        if fh.pseudo:
            raise Nfs4Error(c.NFS4ERR_INVAL)
        r = a.layoutreturn.value
        try:
            ls = self._layout_state(st, r.stateid, fh.ino)
        except Nfs4Error as e:
            if e.status == c.NFS4ERR_BAD_STATEID and not mds.by_key.get((client.clientid, fh.ino)):
                # Nothing held: a return of nothing (RFC 8881 §18.44.3: NOMATCHING is
                # for a layout stateid the server knows). Answer as knfsd does.
                raise Nfs4Error(c.NFS4ERR_BAD_STATEID) from None
            raise
        vfs = await self.vfs()
        self._report(mds, vfs, r.body)
        keep = []
        for seg in ls.segments:
            if seg.overlaps(r.offset, r.length) and a.iomode in (c.LAYOUTIOMODE4_ANY, seg.iomode):
                continue
            keep.append(seg)
        ls.segments = keep
        mds.count("LAYOUTRETURN", "OK")
        if not keep:
            mds.drop(ls)
            return ok(Arm(False))
        if ls.lease is not None and not ls.writable and ls.lease.state & W:
            # Only read segments left: a writer's lease is no longer needed.
            ls.leases.release(ls.lease)
            ls.lease = vfs.leases.grant(fh.ino, ls.key, R, ls)
            if ls.lease is not None:
                await vfs.leases.settle_lease(ls.lease)
                if ls.lease.gone:
                    ls.lease = None
        sid = StateId(ls.bump(), ls.other)
        st.cstateid = sid
        return ok(Arm(True, sid))

    def _report(self, mds: Layouts, vfs: IVFS, body: bytes) -> None:
        """Errors a client met on data servers, sent with LAYOUTRETURN (RFC 8435 §9.2)."""
        try:
            report = ff.decode_return(body)
        except XDRError as e:
            self._log.debug("LAYOUTRETURN body does not decode: {why}", why=str(e))
            return
        for io in report.ioerrs:
            for err in io.errors:
                self._device_error(mds, vfs, err.deviceid, err.status, err.opnum)

    def _device_error(
        self, mds: Layouts, vfs: IVFS, deviceid: bytes, status: int, opnum: int
    ) -> None:
        dev = mds.devices.get(deviceid)
        if dev is None:
            return
        if status in (c.NFS4ERR_ACCESS, c.NFS4ERR_STALE, c.NFS4ERR_BADHANDLE, c.NFS4ERR_PERM):
            # A fenced or re-keyed data server: mint with a fresh epoch and key next time.
            mds.epochs.clear()
            mds.forget_device(dev.address)
            return
        if status in (c.NFS4ERR_NOSPC, c.NFS4ERR_DQUOT, c.NFS4_OK):
            return
        pnfs = vfs.pnfs
        if pnfs is not None:
            mds.device_failed(deviceid, pnfs, f"{c.status_name(status)} on op {opnum}")

    # -- LAYOUTERROR, LAYOUTSTATS -----------------------------------------------------------

    async def op_LAYOUTERROR(self, st: CompoundState, a: LayoutErrorArgs) -> Arm:
        mds = self._mds()
        fh = self.cfh(st)
        self.real(st, fh)
        self._layout_state(st, a.stateid, fh.ino)
        vfs = await self.vfs()
        for err in a.errors:
            self._device_error(mds, vfs, err.deviceid, err.status, err.opnum)
        mds.count("LAYOUTERROR", "OK")
        return ok()

    async def op_LAYOUTSTATS(self, st: CompoundState, a: LayoutStatsArgs) -> Arm:
        mds = self._mds()
        fh = self.cfh(st)
        self.real(st, fh)
        self._layout_state(st, a.stateid, fh.ino)
        mds.count("LAYOUTSTATS", "OK")
        return ok()

    # -- devices ----------------------------------------------------------------------------

    async def op_GETDEVICEINFO(self, st: CompoundState, a: GetDeviceInfoArgs) -> Arm:
        if self.pnfs is None:
            raise Nfs4Error(c.NFS4ERR_NOTSUPP, "not a pNFS metadata server")
        self._type(a.layout_type)
        dev = self.pnfs.devices.get(a.device_id)
        if dev is None:
            raise Nfs4Error(c.NFS4ERR_NOENT, "unknown device")
        body = dev.body()
        # device_addr4 (type, body) and an empty notification bitmap.
        need = 4 + 4 + len(body) + (-len(body) & 3) + 4
        if a.maxcount and need > a.maxcount:
            raise Nfs4Error(c.NFS4ERR_TOOSMALL, "maxcount", need)
        self.pnfs.count("GETDEVICEINFO", "OK")
        return ok(GetDeviceInfoResok(DeviceAddr4(c.LAYOUT4_FLEX_FILES, body), []))

    async def op_GETDEVICELIST(self, st: CompoundState, a: GetDeviceListArgs) -> Arm:
        if self.pnfs is None:
            raise Nfs4Error(c.NFS4ERR_NOTSUPP, "not a pNFS metadata server")
        self._type(a.layout_type)
        mds = self.pnfs
        vfs = await self.vfs()
        pnfs = vfs.pnfs
        ids: list[bytes] = []
        if pnfs is not None:
            layout = await pnfs.pnfs_layout(vfs.root_ino)
            for address in layout.servers:
                dev = await mds.device(pnfs, address)
                if dev is not None:
                    ids.append(dev.deviceid)
        ids = ids[: max(0, a.maxdevices)] if a.maxdevices else ids
        return ok(GetDeviceListResok(0, bytes(8), ids, True))
