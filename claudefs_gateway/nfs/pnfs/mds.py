# -*- test-case-name: tests.nfs.pnfs.test_mds -*-
"""
The gateway as pNFS metadata server: the layouts clients hold, the data
servers as devices, recalls and fencing (RFC 8881 §12, RFC 8435).

A client's layouts of one file are one I{layout state} (RFC 8881 §12.5.2):
a stateid whose seqid moves at every LAYOUTGET, LAYOUTRETURN and recall,
and the segments it was given. The state holds a lease in the vfs lease
manager (docs/locks.rst "Leases"): R for read layouts, R+W once it has a
read/write segment. So whatever another client or protocol is about to do
that the layout's holder must see first - a write or truncation through
the gateway, an SMB open, an S3 GET of a file being written - breaks the
lease, which recalls the layout (CB_LAYOUTRECALL) and waits for the client
to return it (after its LAYOUTCOMMIT). A client that does not return it in
the recall time loses it: the file is I{fenced} (its epoch grows, and the
data servers refuse handles minted under the old one), so a client still
writing with the revoked layout gets NFS3ERR_STALE from the data servers.

Segments: the namespace's layout stripes bytes over data servers in
C{stripe_unit} pieces (byte C{o} on C{servers[(o // unit) % n]}). The Linux
flexfiles client takes one data server per mirror in a segment, so with
several data servers each LAYOUTGET answers the one stripe unit holding the
requested offset; with one, the whole file. Each segment lists C{mirrors}
copies (consecutive servers) less the ones marked down.

Devices: each data server is a device whose id is derived from its address
as clients reach it and its fencing key, so a data server that moved or
lost its key is a new device. A device reported failing (LAYOUTERROR, or
errors in a LAYOUTRETURN) is probed; if it does not answer it is marked
down, layouts naming it are recalled, and new layouts leave it out until a
probe finds it back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from automat import MethodicalMachine
from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from zope.interface import implementer

from claudefs_gateway import errors
from claudefs_gateway.core.health import CheckResult
from claudefs_gateway.core.log import Logger
from claudefs_gateway.interfaces import IVFS, ILeaseHolder
from claudefs_gateway.nfs.pnfs import flexfiles as ff
from claudefs_gateway.nfs.pnfs import handles
from claudefs_gateway.vfs.leases import LeaseKey, R, W

__all__ = ["PnfsSettings", "Device", "Segment", "LayoutState", "Layouts", "ALL", "DS_IO"]

#: NFS4_UINT64_MAX: a segment to the end of the file.
ALL = 0xFFFFFFFFFFFFFFFF
#: rsize/wsize announced for the data servers (their FSINFO's).
DS_IO = 1 << 20
READ = 1
RW = 2
ANY = 3


@attrs.frozen(kw_only=True)
class PnfsSettings:
    """C{nfs.pnfs}: see docs/pnfs.rst."""

    enabled: bool = False
    advertise_host: str = ""
    advertise: Mapping[str, str] = attrs.Factory(dict)
    ds_uid: int = 65534
    ds_gid: int = 65534
    recall_timeout: float = 35.0
    probe_interval: float = 5.0


@attrs.define(eq=False)
class Device:
    """
    One data server as a pNFS device.

    @ivar address: how the gateway reaches it (its ClaudeFS RPC address).
    @ivar key: its fencing key (data-server handles are minted with it).
    @ivar netaddr: where clients reach its NFSv3 listener.
    @ivar up: false once it failed and did not answer a probe.
    """

    address: str
    deviceid: bytes
    key: bytes
    netaddr: ff.NetAddr
    up: bool = True
    probing: Any = None
    checking: bool = False

    def body(self) -> bytes:
        """ff_device_addr4: one path, NFSv3 (RFC 8435 §5.1: loosely coupled)."""
        return ff.encode_device(
            ff.DeviceAddr((self.netaddr,), (ff.DeviceVersion(3, 0, DS_IO, DS_IO, False),))
        )


@attrs.frozen(slots=True)
class Segment:
    """A byte range of a layout given to a client, its iomode and its data servers."""

    offset: int
    length: int
    iomode: int
    servers: tuple[str, ...]

    @property
    def end(self) -> int:
        return ALL if self.length == ALL else self.offset + self.length

    def overlaps(self, offset: int, length: int) -> bool:
        end = ALL if length == ALL else offset + length
        return self.offset < end and offset < self.end


@implementer(ILeaseHolder)
@attrs.define(eq=False, slots=False)
class LayoutState:
    """
    One client's layouts of one file (a layout stateid, RFC 8881 §12.5.3),
    and its lifecycle, an Automat machine drawn in docs/layout.dot::

        held --recall--> being_recalled --returned--> ended
        held --returned--> ended    (any) --revoke--> ended, fenced

    @ivar client: the NFSv4 client record.
    @ivar fh: the file's NFSv4 handle (CB_LAYOUTRECALL names the file by it).
    @ivar recalling: a CB_LAYOUTRECALL is outstanding.
    @ivar revoked: the client did not return it in time; it was fenced.
    """

    manager: Layouts
    other: bytes
    client: Any
    ino: int
    fh: bytes
    seqid: int = 0
    segments: list[Segment] = attrs.Factory(list)
    lease: Any = None
    leases: Any = None
    recalling: bool = False
    revoked: bool = False
    gone: bool = False
    timer: IDelayedCall | None = None
    recall_sent: int = 0

    @property
    def key(self) -> LeaseKey:
        return lease_key(self.client, self.ino)

    @property
    def writable(self) -> bool:
        return any(s.iomode == RW for s in self.segments)

    def bump(self) -> int:
        self.seqid = self.seqid + 1 if self.seqid < 0xFFFFFFFF else 1
        return self.seqid

    def servers(self) -> set[str]:
        return {a for s in self.segments for a in s.servers}

    _machine = MethodicalMachine()

    @_machine.state(initial=True)
    def held(self) -> None:
        "The client holds the layout; no recall outstanding."

    @_machine.state()
    def being_recalled(self) -> None:
        "CB_LAYOUTRECALL sent; waiting for LAYOUTRETURN (or NOMATCHING) or the recall time."

    @_machine.state()
    def ended(self) -> None:
        "Returned, dropped with its client, or revoked and fenced; the stateid is unknown."

    @_machine.input()
    def recall(self, why: str) -> None:
        "The layout must change or go (a conflicting change, a data server down)."

    @_machine.input()
    def returned(self) -> None:
        "The client holds nothing of it any more (LAYOUTRETURN, NOMATCHING_LAYOUT, client gone)."

    @_machine.input()
    def revoke(self, why: str) -> None:
        "Not returned within the recall time, or its client's lease expired."

    @_machine.output()
    def _start_recall(self, why: str) -> None:
        self.manager._start_recall(self, why)

    @_machine.output()
    def _forget(self) -> None:
        self.manager._forget(self)

    @_machine.output()
    def _forget_and_fence(self, why: str) -> None:
        self.manager._fence_state(self, why)

    held.upon(recall, enter=being_recalled, outputs=[_start_recall])
    held.upon(returned, enter=ended, outputs=[_forget])
    held.upon(revoke, enter=ended, outputs=[_forget_and_fence])
    being_recalled.upon(recall, enter=being_recalled, outputs=[])
    being_recalled.upon(returned, enter=ended, outputs=[_forget])
    being_recalled.upon(revoke, enter=ended, outputs=[_forget_and_fence])
    ended.upon(recall, enter=ended, outputs=[])
    ended.upon(returned, enter=ended, outputs=[])
    ended.upon(revoke, enter=ended, outputs=[])

    # ILeaseHolder: the vfs breaks the lease before a conflicting change.

    def lease_break(self, lease: Any, to: int) -> bool:
        need = R | (W if self.writable else 0)
        if not need & ~to:
            return False
        self.recall("lease break")
        return True

    def lease_revoked(self, lease: Any) -> None:
        self.revoke("not returned within the recall time")


def lease_key(client: Any, ino: int) -> LeaseKey:
    """The lease key of a client's layouts of one file (a key names one file)."""
    return LeaseKey("nfs4", client.lock_key, b"layout:" + ino.to_bytes(8, "big"))


def client_exempt(client: Any) -> LeaseKey:
    """The exemption covering every lease of a client (its own layouts and delegations)."""
    return LeaseKey("nfs4", client.lock_key, None)


#: send_recall(state) -> Deferred firing with the client's status for CB_LAYOUTRECALL.
RecallSender = Callable[[LayoutState], "defer.Deferred[int]"]


class Layouts:
    """
    Every layout this gateway handed out, the devices, epochs and recalls.

    @param vfs: returns a Deferred of the open vfs.
    @param send_recall: sends CB_LAYOUTRECALL for a state; fires with the
        client's nfsstat4, fails if it cannot be delivered.
    """

    _log = Logger()

    def __init__(
        self,
        settings: PnfsSettings,
        clock: IReactorTime,
        vfs: Callable[[], defer.Deferred[Any]],
        send_recall: RecallSender,
        metrics: Any = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._vfs = vfs
        self._send_recall = send_recall
        self.states: dict[bytes, LayoutState] = {}
        self.by_key: dict[tuple[int, int], LayoutState] = {}
        self.devices: dict[bytes, Device] = {}
        self.by_address: dict[str, Device] = {}
        self.epochs: dict[int, int] = {}
        self.counts: dict[tuple[str, str], int] = {}
        self._ops = metrics.family("gateway_pnfs_layout_ops_total") if metrics else None
        if metrics is not None:
            metrics.collect_with("gateway_pnfs_layouts", self._layout_counts)
            metrics.collect_with("gateway_pnfs_mirrors_degraded", self.degraded_count)

    # -- accounting -------------------------------------------------------------------

    def count(self, op: str, status: str) -> None:
        key = (op, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        if self._ops is not None:
            self._ops.labels(op, status).inc()

    def _layout_counts(self) -> dict[tuple[str, ...], float]:
        out: dict[tuple[str, ...], float] = {("read",): 0.0, ("rw",): 0.0}
        for st in self.states.values():
            out[("rw",) if st.writable else ("read",)] += 1
        return out

    def degraded_count(self) -> float:
        return float(sum(1 for d in self.by_address.values() if not d.up))

    def check(self) -> CheckResult:
        """Health: degraded while any data server is marked down."""
        down = sorted(d.address for d in self.by_address.values() if not d.up)
        if down:
            return CheckResult.degraded(f"{len(down)} pNFS data server(s) down: " + ", ".join(down))
        return CheckResult.healthy(f"{len(self.states)} layouts held")

    # -- devices ------------------------------------------------------------------------

    def _advertised(self, address: str, nfs: str) -> tuple[str, int]:
        override = self.settings.advertise.get(address)
        host, _, port = nfs.rpartition(":")
        host = host.strip("[]")
        if override:
            h, sep, p = override.rpartition(":")
            if sep and p.isdigit() and h:
                return h.strip("[]"), int(p)
            return override.strip("[]"), int(port)
        if self.settings.advertise_host:
            return self.settings.advertise_host, int(port)
        if host in ("0.0.0.0", "::", ""):
            host = address.rpartition(":")[0].strip("[]")
        return host, int(port)

    async def device(self, pnfs: Any, address: str) -> Device | None:
        """
        The device of data server C{address}, asking it for its key and NFS
        address on first use; L{None} if it serves no pNFS clients, cannot be
        reached, or is marked down.
        """
        dev = self.by_address.get(address)
        if dev is not None:
            return dev if dev.up else None
        try:
            key, nfs = await pnfs.pnfs_data_server(address)
        except errors.GatewayError as e:
            self._log.warn("pNFS: data server {node} unreachable: {why}", node=address, why=str(e))
            return None
        if not key or not nfs:
            return None
        try:
            host, port = self._advertised(address, nfs)
            na = ff.netaddr(host, port)
        except ValueError as e:
            self._log.warn(
                "pNFS: data server {node} has no usable address ({why}); set nfs.pnfs.advertise",
                node=address,
                why=str(e),
            )
            return None
        deviceid = hashlib.sha256(address.encode() + b"|" + na.addr + b"|" + key).digest()[:16]
        dev = self.by_address.get(address)
        if dev is None:
            dev = Device(address, deviceid, key, na)
            self.by_address[address] = dev
            self.devices[deviceid] = dev
            self._log.info("pNFS device {node} is {addr}", node=address, addr=na.addr.decode())
        return dev if dev.up else None

    def forget_device(self, address: str) -> None:
        """Ask the data server again next time (its key or address may have changed)."""
        dev = self.by_address.pop(address, None)
        if dev is not None:
            self.devices.pop(dev.deviceid, None)

    def device_failed(self, deviceid: bytes, pnfs: Any, why: str) -> None:
        """
        A client reports errors on a device (LAYOUTERROR, LAYOUTRETURN's
        report): probe it; if it does not answer, mark it down, recall the
        layouts naming it, and probe again until it is back.
        """
        dev = self.devices.get(deviceid)
        if dev is None or dev.probing is not None or dev.checking:
            return
        # Clients report every failed I/O; one probe at a time per device.
        dev.checking = True
        self._log.debug("pNFS: device {node} reported failing: {why}", node=dev.address, why=why)
        d = pnfs.pnfs_probe(dev.address)

        def answered(_: Any) -> None:
            # It answers: the client's trouble was its own (or passing).
            dev.checking = False
            self._log.debug("pNFS: device {node} answers", node=dev.address)

        def silent(f: Failure) -> None:
            dev.checking = False
            self.mark_down(dev, pnfs, f.getErrorMessage())

        d.addCallbacks(answered, silent)

    def mark_down(self, dev: Device, pnfs: Any, why: str) -> None:
        if dev.up:
            dev.up = False
            self._log.warn(
                "pNFS: data server {node} down ({why}): its layouts are recalled",
                node=dev.address,
                why=why,
            )
            for st in list(self.states.values()):
                if dev.address in st.servers():
                    self.recall(st, "data server down")
        if dev.probing is None:
            loop = task.LoopingCall(self._probe, dev, pnfs)
            loop.clock = self.clock
            dev.probing = loop
            loop.start(self.settings.probe_interval, now=False).addErrback(
                lambda f: self._log.failure("pNFS probe loop", f)
            )

    def _probe(self, dev: Device, pnfs: Any) -> defer.Deferred[None]:
        d: defer.Deferred[None] = pnfs.pnfs_probe(dev.address)

        def back(_: Any) -> None:
            if dev.probing is not None:
                dev.probing.stop()
                dev.probing = None
            dev.up = True
            # Its key or port may be new after a restart: ask again next time.
            self.forget_device(dev.address)
            self._log.info("pNFS: data server {node} is back", node=dev.address)

        def still(f: Failure) -> None:
            self._log.debug("pNFS: data server {node} still down", node=dev.address)

        return d.addCallbacks(back, still)

    def stop(self) -> None:
        for dev in self.by_address.values():
            if dev.probing is not None:
                dev.probing.stop()
                dev.probing = None
        for st in list(self.states.values()):
            if st.timer is not None and st.timer.active():
                st.timer.cancel()
            st.timer = None

    # -- epochs and fencing --------------------------------------------------------------

    @staticmethod
    def _epoch_key(ino: int) -> str:
        return f"nfs4.pnfs.epoch.{ino}"

    async def epoch(self, vfs: IVFS, ino: int) -> int:
        """The file's current layout epoch (kept in the metadata store, cached)."""
        e = self.epochs.get(ino)
        if e is None:
            raw = await vfs.get_state(self._epoch_key(ino))
            e = int(raw.decode()) if raw else 0
            self.epochs[ino] = e
        return e

    async def fence(self, ino: int, servers: Iterable[str]) -> None:
        """
        Revoke every data-server handle of C{ino} minted so far: its epoch
        grows (durably, in the metadata store), then each data server is told.
        """
        vfs = await self._vfs()
        pnfs = vfs.pnfs
        if pnfs is None:
            return
        epoch = await self.epoch(vfs, ino) + 1
        await vfs.set_state(self._epoch_key(ino), str(epoch).encode())
        self.epochs[ino] = epoch
        for address in sorted(set(servers)):
            try:
                await pnfs.pnfs_fence(address, ino, epoch)
            except errors.GatewayError as e:
                # A data server that cannot hear it is down; handles of the old
                # epoch stay usable there until it is back and told again.
                self._log.warn(
                    "pNFS: could not fence inode {ino} on {node}: {why}",
                    ino=ino,
                    node=address,
                    why=str(e),
                )
        self._log.info("pNFS: inode {ino} fenced at epoch {epoch}", ino=ino, epoch=epoch)

    def mint(self, dev: Device, ino: int, epoch: int, writable: bool) -> bytes:
        s = self.settings
        return handles.mint(dev.key, handles.DSHandle(ino, epoch, s.ds_uid, s.ds_gid, writable))

    # -- layout states ---------------------------------------------------------------------

    def state_for(
        self, client: Any, ino: int, fh: bytes, new_other: Callable[[], bytes]
    ) -> LayoutState:
        st = self.by_key.get((client.clientid, ino))
        if st is None:
            st = LayoutState(self, new_other(), client, ino, fh)
            self.states[st.other] = st
            self.by_key[(client.clientid, ino)] = st
        return st

    def drop(self, st: LayoutState) -> None:
        """The client holds nothing more under C{st}: forget it and its lease."""
        st.returned()

    def recall(self, st: LayoutState, why: str) -> None:
        """
        Send CB_LAYOUTRECALL for the whole file (RFC 8881 §20.3) and wait for
        the client's LAYOUTRETURN; past the recall time, revoke and fence.
        """
        st.recall(why)

    def revoke(self, st: LayoutState, why: str) -> None:
        """The client keeps a layout it must give up: fence the file and forget the state."""
        st.revoke(why)

    def _forget(self, st: LayoutState) -> None:
        st.gone = True
        st.recalling = False
        if st.timer is not None and st.timer.active():
            st.timer.cancel()
        st.timer = None
        self.states.pop(st.other, None)
        if self.by_key.get((st.client.clientid, st.ino)) is st:
            del self.by_key[(st.client.clientid, st.ino)]
        lease = st.lease
        st.lease = None
        if lease is not None and not lease.gone and st.leases is not None:
            st.leases.release(lease)

    def _start_recall(self, st: LayoutState, why: str) -> None:
        st.recalling = True
        st.bump()
        self._log.debug(
            "pNFS: recalling the layout of inode {ino} from client {client}: {why}",
            ino=st.ino,
            client=st.client.lock_key,
            why=why,
        )
        self.count("CB_LAYOUTRECALL", "sent")
        st.timer = self.clock.callLater(
            self.settings.recall_timeout, self.revoke, st, "recall not answered in time"
        )
        self._send(st)

    def _send(self, st: LayoutState) -> None:
        if st.gone:
            return
        st.recall_sent += 1
        d = self._send_recall(st)

        def answered(status: int) -> None:
            from claudefs_gateway.nfs.v4 import const as c

            if st.gone:
                return
            if status == c.NFS4ERR_NOMATCHING_LAYOUT:
                # The client holds nothing of it any more.
                self.drop(st)
            elif status == c.NFS4ERR_DELAY and st.recall_sent < 30:
                self.clock.callLater(1.0, self._send, st)
            elif status != c.NFS4_OK:
                self._log.debug(
                    "pNFS: CB_LAYOUTRECALL answered {status}", status=c.status_name(status)
                )
            # NFS4_OK: the client returns the layout with LAYOUTRETURN.

        def failed(f: Failure) -> None:
            self._log.debug("pNFS: CB_LAYOUTRECALL not delivered: {why}", why=f.getErrorMessage())

        d.addCallbacks(answered, failed)

    def _fence_state(self, st: LayoutState, why: str) -> None:
        servers = st.servers()
        writable = st.writable
        st.revoked = True
        self._log.warn(
            "pNFS: layout of inode {ino} revoked from client {client}: {why}",
            ino=st.ino,
            client=st.client.lock_key,
            why=why,
        )
        self.count("revoke", "revoked")
        self._forget(st)
        if writable or servers:
            d = defer.Deferred.fromCoroutine(self.fence(st.ino, servers))
            d.addErrback(lambda f: self._log.failure("fencing inode {ino}", f, ino=st.ino))

    def client_gone(self, client: Any, expired: bool) -> None:
        """A client's record ended: its layouts go (fenced when it expired holding any)."""
        for st in [s for s in self.states.values() if s.client is client]:
            if expired:
                self.revoke(st, "client lease expired")
            else:
                self.drop(st)

    # -- building segments -------------------------------------------------------------

    @staticmethod
    def segment_range(layout: Any, offset: int) -> tuple[int, int, int]:
        """(offset, length, stripe index) of the segment holding byte C{offset}."""
        n = len(layout.servers)
        if n <= 1:
            return 0, ALL, 0
        unit = layout.stripe_unit
        k = offset // unit
        return k * unit, unit, k

    @staticmethod
    def mirrors_of(layout: Any, k: int) -> list[str]:
        n = len(layout.servers)
        m = max(1, min(layout.mirrors, n))
        return [layout.servers[(k + j) % n] for j in range(m)]
