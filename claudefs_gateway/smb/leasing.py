# -*- test-case-name: tests.smb.test_leasing -*-
"""
SMB oplocks and leases (MS-SMB2 3.3.1.4, 3.3.4.6, 3.3.4.7, 3.3.5.9.8,
3.3.5.9.11, 3.3.5.22), on the vfs's cross-protocol lease manager.

The manager (L{claudefs_gateway.vfs.leases}) is where every protocol's
leases meet: an NFS write or an S3 PUT asks it to break whatever SMB clients
cache, and an SMB open asks it to break NFSv4 delegations. This module keeps
what SMB says beyond that, as Samba's leases database and Windows do:

  - an SMB lease belongs to a client (its ClientGuid) and a 16-byte lease key,
    names one file, and is shared by every open made with that key; an oplock
    belongs to one open (level II = R, exclusive = RW, batch = RWH);
  - a lease breaks in steps with an epoch (v2) and a "breaking" state whose
    acknowledgement the client owes; new opens see BREAK_IN_PROGRESS;
  - what a CREATE breaks and what it is granted follow Samba's
    C{delay_for_oplock} (source3/smbd/open.c), which smbtorture's smb2.oplock
    and smb2.lease suites check against Windows: an open breaks others' write
    caching (handle caching too when its share mode would otherwise be
    refused), an overwrite breaks everything, only one writer, oplocks only to
    level II or none, stat opens neither break nor count.

Each SMB lease and oplock holds a manager lease with the same bits (its
C{LeaseKey} is C{("smb", ClientGuid, key)}, or the open's FileId for an
oplock). Breaks reach this module through L{ILeaseHolder.lease_break},
whoever asked; this module decides the SMB break (a file lease without read
caching is none) and tells the manager whether to wait for the client. A
break that only takes read caching away, or handle caching on a write, does
not hold the operation up (MS-FSA 2.1.4.12: a level II break needs no
acknowledgement, and Windows and Samba do not make writes wait for one); the
client's acknowledgement is still checked here.

Break notifications go out unsolicited (MessageId all ones, no credits), on
the connection the lease was last opened over, or any other connection of
the same client; oplock breaks carry the open's session id.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall

from zope.interface import implementer

from claudefs_gateway import errors
from claudefs_gateway.core.log import Logger
from claudefs_gateway.interfaces import ILeaseHolder, ILeaseManager
from claudefs_gateway.smb import constants as c
from claudefs_gateway.smb import ntstatus as st
from claudefs_gateway.smb.errors import SMBError
from claudefs_gateway.smb.messages import LeaseRequest, pack_lease_break, pack_oplock_break
from claudefs_gateway.vfs.leases import RWH, H, Lease, LeaseKey, R, W, Why

__all__ = [
    "SMBLease",
    "Leasing",
    "from_wire",
    "to_wire",
    "OPLOCK_BITS",
    "oplock_level",
    "is_oplock_stat_open",
    "is_lease_stat_open",
]

#: Oplock levels as lease bits (MS-SMB2 3.3.5.9: level II caches reads, exclusive reads
#: and writes, batch reads, writes and handles).
OPLOCK_BITS = {
    c.SMB2_OPLOCK_LEVEL_NONE: 0,
    c.SMB2_OPLOCK_LEVEL_II: R,
    c.SMB2_OPLOCK_LEVEL_EXCLUSIVE: R | W,
    c.SMB2_OPLOCK_LEVEL_BATCH: RWH,
}

_STAT_OPEN = c.SYNCHRONIZE | c.FILE_READ_ATTRIBUTES | c.FILE_WRITE_ATTRIBUTES


def from_wire(state: int) -> int:
    """Wire lease state (R=1, H=2, W=4) to the manager's bits."""
    out = 0
    if state & c.SMB2_LEASE_READ_CACHING:
        out |= R
    if state & c.SMB2_LEASE_HANDLE_CACHING:
        out |= H
    if state & c.SMB2_LEASE_WRITE_CACHING:
        out |= W
    return out


def to_wire(bits: int) -> int:
    """The manager's bits to a wire lease state."""
    out = 0
    if bits & R:
        out |= c.SMB2_LEASE_READ_CACHING
    if bits & H:
        out |= c.SMB2_LEASE_HANDLE_CACHING
    if bits & W:
        out |= c.SMB2_LEASE_WRITE_CACHING
    return out


def oplock_level(bits: int) -> int:
    """The oplock a set of bits amounts to (R without W is level II)."""
    if bits & W:
        return c.SMB2_OPLOCK_LEVEL_BATCH if bits & H else c.SMB2_OPLOCK_LEVEL_EXCLUSIVE
    return c.SMB2_OPLOCK_LEVEL_II if bits & R else c.SMB2_OPLOCK_LEVEL_NONE


def is_oplock_stat_open(access: int) -> bool:
    """An open for attributes only: it neither breaks nor gets an oplock (Samba's rule)."""
    return bool(access & _STAT_OPEN) and not access & ~_STAT_OPEN


def is_lease_stat_open(access: int) -> bool:
    """An open leases need not break for: attributes and the security descriptor only."""
    bits = _STAT_OPEN | c.READ_CONTROL
    return bool(access & bits) and not access & ~bits


@attrs.define(eq=False)
class SMBLease:
    """
    One client's lease key on one file (MS-SMB2 3.3.1.4), shared by the opens
    made with it. C{state}, C{requested} and C{required} are manager bits.

    @ivar requested: while breaking, what the last break notification asked for.
    @ivar required: while breaking, the least the lease must come down to
        (a later break can lower it; the next step is sent after the ack).
    """

    client: bytes
    key: bytes
    ino: int
    is_dir: bool
    version: int
    state: int = 0
    epoch: int = 0
    breaking: bool = False
    requested: int = 0
    required: int = 0
    parent: bytes | None = None
    opens: set[Any] = attrs.Factory(set)
    mlease: Lease | None = None
    timer: IDelayedCall | None = None
    conn: Any = None

    @property
    def lease_key(self) -> LeaseKey:
        return LeaseKey("smb", self.client, self.key)

    def flags(self) -> int:
        flags = c.SMB2_LEASE_FLAG_BREAK_IN_PROGRESS if self.breaking else 0
        if self.version == 2 and self.parent is not None:
            flags |= c.SMB2_LEASE_FLAG_PARENT_LEASE_KEY_SET
        return flags


@implementer(ILeaseHolder)
class _Holder:
    """The manager's view of one SMB lease or oplock: breaks come back through here."""

    def __init__(self, leasing: Leasing, target: Any) -> None:
        self._leasing = leasing
        self.target = target

    def lease_break(self, lease: Lease, to: int) -> bool:
        if isinstance(self.target, SMBLease):
            return self._leasing.break_smb_lease(self.target, lease, to)
        return self._leasing.break_oplock(self.target, lease, to)

    def lease_revoked(self, lease: Lease) -> None:
        if isinstance(self.target, SMBLease):
            self._leasing.expire_smb_lease(self.target)
        else:
            self._leasing.expire_oplock(self.target)


def oplock_key(client: bytes, file_id: tuple[int, int]) -> LeaseKey:
    """The manager key of an open's oplock (its own, as no other open shares it)."""
    return LeaseKey("smb", client, b"oplock" + struct.pack("<QQ", *file_id))


class Leasing:
    """
    Every SMB lease and oplock of one server (all connections), and the
    CREATE-time break and grant rules.
    """

    _log = Logger()

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.leases: dict[tuple[bytes, bytes], SMBLease] = {}
        self._waiters: dict[int, list[defer.Deferred[None]]] = {}

    @property
    def manager(self) -> ILeaseManager:
        # (The vfs itself first, as FileBase.vfs: open_vfs is a second
        # property, asked about eight times per leased open and close.)
        vfs = self.factory.vfs
        if vfs is None:
            vfs = self.factory.open_vfs  # raises
        m: ILeaseManager = vfs.leases
        return m

    @property
    def recall_timeout(self) -> float:
        return float(self.manager.recall_timeout)

    # -- waiting for a file's breaks --------------------------------------------------

    def changed(self, ino: int) -> None:
        """Something a waiting CREATE on C{ino} waits for happened (an ack, a close, a timeout)."""
        node = self.factory.files.nodes.get(ino)
        if node is not None:
            # A persistent open's lease or oplock changed: its record says so.
            for o in node.opens:
                if o.persistent and not o.closed:
                    self.factory.durability.persist(o)
        waiters = self._waiters.pop(ino, None)
        for d in waiters or ():
            if not d.called:
                d.callback(None)

    def idle(self, ino: int) -> bool:
        """
        Whether no lease or oplock is held on C{ino}, so an open of it has
        nothing to break (L{break_for_open} would find nothing): not asked
        of leases held through other gateways (C{foreign_recall}), which only
        a recall finds.
        """
        m = self.manager
        return not m.busy(ino) and getattr(m, "foreign_recall", None) is None

    def wait_change(self, ino: int) -> defer.Deferred[None]:
        """Fires at the next L{changed} of C{ino}; cancellable."""

        def cancel(d: defer.Deferred[None]) -> None:
            waiting = self._waiters.get(ino)
            if waiting is not None and d in waiting:
                waiting.remove(d)
                if not waiting:
                    del self._waiters[ino]

        d: defer.Deferred[None] = defer.Deferred(cancel)
        self._waiters.setdefault(ino, []).append(d)
        return d

    def stop_waiting(self, ino: int, d: defer.Deferred[None]) -> None:
        """Forget a L{wait_change} Deferred without firing it (its waiter has moved on)."""
        waiting = self._waiters.get(ino)
        if waiting is not None and d in waiting:
            waiting.remove(d)
            if not waiting:
                del self._waiters[ino]

    # -- CREATE: what an open breaks, and waits for ------------------------------------

    def break_for_open(
        self,
        ino: int,
        client: bytes,
        lease: LeaseRequest | None,
        access: int,
        violation: bool,
        overwrite: bool,
        first: bool,
    ) -> tuple[bool, list[defer.Deferred[None]]]:
        """
        Break what an open of C{ino} needs broken (Samba's C{delay_for_oplock}):
        others' write caching, or their handle caching when the open's share
        mode is refused (C{violation}); everything when it overwrites.

        @return: whether the open must wait (a break it depends on is
            outstanding) and Deferreds of the manager breaks of other
            protocols' leases it started.
        """
        if is_oplock_stat_open(access):
            return False, []
        delay_mask = H if violation else W
        delay = False
        pending: list[defer.Deferred[None]] = []
        own = LeaseKey("smb", client, lease.key) if lease is not None else None
        for m in self.manager.leases(ino):
            if own is not None and m.key == own:
                continue
            holder = m.holder
            target = getattr(holder, "target", None) if isinstance(holder, _Holder) else None
            if isinstance(target, SMBLease):
                e_type, e_lease, breaking = target.state, True, target.breaking
            elif target is not None:
                e_type = OPLOCK_BITS.get(target.oplock, 0)
                e_lease, breaking = False, bool(target.oplock_break_sent)
            else:
                # Another protocol's lease (an NFSv4 delegation): as a lease.
                e_type, e_lease, breaking = m.state, True, m.breaking_to is not None
            if e_lease and is_lease_stat_open(access):
                continue
            break_to = e_type & ~delay_mask
            if target is None and access & (c.FILE_WRITE_DATA | c.FILE_APPEND_DATA):
                # An open that may write recalls an NFSv4 read delegation too
                # (RFC 8881 §10.4.1; Why.OPEN_WRITE, docs/locks.rst "Leases").
                break_to &= ~R
            if overwrite:
                break_to &= ~(H | R)
            if not e_type & ~break_to:
                if breaking:
                    delay = True
                continue
            if overwrite:
                break_to &= ~(R | W)
            if not e_lease:
                break_to &= ~(H | W)
            d = self.manager.break_lease(m, break_to)
            if target is None and not d.called:
                pending.append(d)
            elif not d.called:
                d.addErrback(lambda f: f.trap(defer.CancelledError))
            if e_type & delay_mask:
                delay = True
            if breaking and not first:
                delay = True
        # Leases held through other gateways on one meta server (vfs/shared.py).
        foreign_recall = getattr(self.manager, "foreign_recall", None)
        if foreign_recall is not None:
            if overwrite:
                why = Why.UNLINK
            elif violation:
                why = Why.OPEN_CONFLICT
            else:
                why = Why.OPEN
            d = foreign_recall(ino, why)
            if d is not None and not d.called:
                pending.append(d)
        return delay, pending

    # -- CREATE: what an open is granted -----------------------------------------------

    def grant(
        self,
        conn: Any,
        op: Any,
        node_opens: Iterable[Any],
        requested: int,
        lease: LeaseRequest | None,
        access: int,
        existed: bool,
        brlocks: bool,
    ) -> tuple[int, SMBLease | None]:
        """
        Grant an open its oplock or lease (Samba's C{delay_for_oplock}, "grant").

        @param requested: the CREATE's RequestedOplockLevel (LEASE only with C{lease}).
        @return: the OplockLevel for the reply and the lease (L{None} for an oplock).
        """
        client = conn.client_guid
        others = [
            o
            for o in node_opens
            if o is not op
            and not o.closed
            and not (o.lease is None and is_oplock_stat_open(o.access))
        ]
        if lease is not None:
            others = [
                o
                for o in others
                if o.lease is None or o.lease.key != lease.key or o.lease.client != client
            ]
        if op.is_dir and (
            lease is None or conn.dialect < c.SMB_3_0 or not self.factory.smb.directory_leases
        ):
            # No oplocks on directories; directory leases from SMB 3 on
            # (MS-SMB2 3.3.5.9.11), when GLOBAL_CAP_DIRECTORY_LEASING was offered.
            return c.SMB2_OPLOCK_LEVEL_NONE, None
        if requested == c.SMB2_OPLOCK_LEVEL_LEASE and lease is not None:
            granted = from_wire(lease.state)
            if not granted & (R | W) or granted in (W, W | H):
                granted = 0
        else:
            granted = OPLOCK_BITS.get(requested, 0)
            if existed and is_oplock_stat_open(access):
                granted = 0
        if op.is_dir:
            granted &= R | H
        if brlocks:
            granted &= ~R
        if others or self._foreign(op.ino, client, lease):
            # Only one writer (and a writer is alone).
            granted &= ~W
        if lease is not None and requested == c.SMB2_OPLOCK_LEVEL_LEASE:
            if any(o.lease is None for o in others):
                granted &= ~H
            return c.SMB2_OPLOCK_LEVEL_LEASE, self._grant_lease(conn, op, lease, granted)
        if any(self._bits_of(o) & H for o in others):
            granted = 0
        granted = self._fit(op.ino, oplock_key(client, op.file_id), granted, op.is_dir)
        level = oplock_level(granted)
        op.oplock = level
        if level:
            holder = _Holder(self, op)
            op.oplock_mlease = self.manager.grant(
                op.ino, oplock_key(client, op.file_id), OPLOCK_BITS[level], holder
            )
            if op.oplock_mlease is None:
                op.oplock = level = 0
        return level, None

    async def settle(self, op: Any, level: int) -> int:
        """
        Several gateways: wait for the meta server's word on the oplock or
        lease L{grant} just gave C{op} (another gateway's grant may have got
        there first); what it refused is taken back before the CREATE
        answers. One process: nothing to wait for.

        @return: the OplockLevel for the reply (C{op.lease.state} is the lease's).
        """
        sl = op.lease
        m = sl.mlease if sl is not None else op.oplock_mlease
        if m is None:
            return level
        await self.manager.settle_lease(m)
        kept = 0 if m.gone else m.state
        if sl is not None:
            if sl.mlease is m and sl.state & ~kept:
                sl.state &= kept
                if m.gone:
                    sl.mlease = None
            return level
        if op.oplock_mlease is m and OPLOCK_BITS.get(level, 0) & ~kept:
            level = oplock_level(kept)
            op.oplock = level
            if m.gone:
                op.oplock_mlease = None
        return level

    def _foreign(self, ino: int, client: bytes, lease: LeaseRequest | None) -> bool:
        """Whether another protocol holds a lease on C{ino} (an NFSv4 delegation)."""
        for m in self.manager.leases(ino):
            if m.key.protocol != "smb":
                return True
        return False

    def _fit(self, ino: int, key: LeaseKey, want: int, is_dir: bool) -> int:
        """What the manager can grant beside other protocols' leases."""
        if not want:
            return 0
        return int(self.manager.grantable(ino, key, want, is_dir)) & want

    @staticmethod
    def _bits_of(o: Any) -> int:
        if o.lease is not None:
            return int(o.lease.state)
        return OPLOCK_BITS.get(o.oplock, 0)

    def _grant_lease(self, conn: Any, op: Any, req: LeaseRequest, granted: int) -> SMBLease:
        client = conn.client_guid
        sl = self.leases.get((client, req.key))
        if sl is None:
            granted = self._fit(op.ino, LeaseKey("smb", client, req.key), granted, op.is_dir)
            sl = SMBLease(
                client,
                req.key,
                op.ino,
                op.is_dir,
                req.version,
                state=granted,
                epoch=req.epoch + 1,
                parent=req.parent if conn.dialect >= c.SMB_3_0 else None,
            )
            self.leases[(client, req.key)] = sl
            if granted:
                sl.mlease = self.manager.grant(
                    op.ino, sl.lease_key, granted, _Holder(self, sl), is_dir=op.is_dir
                )
                if sl.mlease is None:
                    sl.state = 0
        else:
            # MS-SMB2 3.3.5.9.8: a strict upgrade only, never while breaking.
            existing = sl.state
            want = from_wire(req.state)
            if op.is_dir:
                want &= R | H
            granted = self._fit(op.ino, sl.lease_key, granted, op.is_dir) if granted else 0
            if (
                existing & want == existing
                and granted != existing
                and granted == want
                and not sl.breaking
            ):
                m = sl.mlease
                if m is None or m.gone:
                    m = self.manager.grant(
                        op.ino, sl.lease_key, granted, _Holder(self, sl), is_dir=op.is_dir
                    )
                    sl.mlease = m
                else:
                    m = self.manager.grant(op.ino, sl.lease_key, granted, _Holder(self, sl))
                if m is not None and m.state & granted == granted:
                    sl.state = granted
                    sl.epoch += 1
        sl.opens.add(op)
        sl.conn = conn
        op.lease = sl
        return sl

    # -- breaks, from whoever asked ----------------------------------------------------

    def break_smb_lease(self, sl: SMBLease, m: Lease, to: int) -> bool:
        """
        The manager asks C{sl} to keep no more than C{to} (Samba's
        C{process_oplock_break_message}). @return: whether the manager
        should wait for the client's acknowledgement.
        """
        break_to = to & sl.state
        if not break_to & R:
            # A file lease without read caching is none; so is a directory lease.
            break_to = 0
        if sl.opens and all(o.disconnected for o in sl.opens):
            if any(o.persistent for o in sl.opens):
                # A disconnected persistent open stays (its share mode and
                # locks keep others out until its timeout); its lease goes
                # down without an acknowledgement, as nobody can send one.
                if break_to != sl.state:
                    sl.state = break_to
                    sl.epoch += 1
                    self.changed(sl.ino)
                return False
            # Only disconnected durable opens hold it: nobody to tell, they end
            # (MS-SMB2 3.3.4.7; smbtorture smb2.durable-open.open2-lease).
            for o in list(sl.opens):
                self.factory.files.close_quietly(None, o)
            return False
        if sl.breaking:
            # An acknowledgement is already owed: the next step goes after it.
            sl.required &= break_to
            return True
        if break_to == sl.state:
            return False
        old = sl.state
        sl.epoch += 1
        if old == R:
            sl.state = 0
            self._send_lease_break(sl, old, 0, ack=False)
            self.changed(sl.ino)
            return False
        sl.breaking = True
        sl.requested = sl.required = break_to
        self._send_lease_break(sl, old, break_to, ack=True)
        self._start_timer(sl)
        return bool((old & W and not break_to & W) or (old & H and not to & H))

    def break_oplock(self, op: Any, m: Lease, to: int) -> bool:
        """The manager asks an open's oplock to keep no more than C{to}."""
        if op.closed or not op.oplock:
            return False
        if op.disconnected and op.persistent:
            # A persistent open stays; its oplock goes down unacknowledged.
            if to & R and op.oplock != c.SMB2_OPLOCK_LEVEL_II:
                op.oplock = c.SMB2_OPLOCK_LEVEL_II
                self.changed(op.ino)
            elif not to & R:
                self.expire_oplock(op)
            return False
        if op.disconnected:
            # A durable open without a connection: nobody to tell, so it ends
            # (MS-SMB2 3.3.4.6; smbtorture smb2.durable-open.open2-oplock).
            self.factory.files.close_quietly(None, op)
            return False
        if op.oplock_break_sent:
            return True
        level = c.SMB2_OPLOCK_LEVEL_II if to & R else c.SMB2_OPLOCK_LEVEL_NONE
        if op.oplock == c.SMB2_OPLOCK_LEVEL_II:
            # A level II oplock breaks to none without an acknowledgement.
            op.oplock = c.SMB2_OPLOCK_LEVEL_NONE
            self._send_oplock_break(op, c.SMB2_OPLOCK_LEVEL_NONE)
            self.changed(op.ino)
            return False
        op.oplock_break_sent = level or -1
        self._send_oplock_break(op, level)
        return True

    def expire_smb_lease(self, sl: SMBLease) -> None:
        """The recall time passed: as Samba, the lease is downgraded to none."""
        self._cancel_timer(sl)
        if sl.breaking or sl.state:
            self._log.info(
                "smb lease break not acknowledged in time: downgraded to none", ino=sl.ino
            )
        sl.breaking = False
        sl.requested = sl.required = 0
        if sl.state:
            sl.state = 0
            sl.epoch += 1
        m, sl.mlease = sl.mlease, None
        if m is not None and not m.gone:
            self.manager.release(m)
        self.changed(sl.ino)

    def expire_oplock(self, op: Any) -> None:
        op.oplock = 0
        op.oplock_break_sent = 0
        m, op.oplock_mlease = op.oplock_mlease, None
        if m is not None and not m.gone:
            self.manager.release(m)
        self.changed(op.ino)

    # -- acknowledgements --------------------------------------------------------------

    def ack_lease(self, conn: Any, key: bytes, wire_state: int) -> int:
        """
        A LEASE_BREAK acknowledgement (MS-SMB2 3.3.5.22.2, Samba's C{downgrade_lease}).

        @return: the state to answer with (wire bits).
        @raise SMBError: no such lease (OBJECT_NAME_NOT_FOUND), no break
            outstanding (UNSUCCESSFUL), or more kept than asked
            (REQUEST_NOT_ACCEPTED).
        """
        sl = self.leases.get((conn.client_guid, key))
        if sl is None:
            raise SMBError(st.STATUS_OBJECT_NAME_NOT_FOUND, "no such lease")
        if not sl.breaking:
            raise SMBError(st.STATUS_UNSUCCESSFUL, "no lease break outstanding")
        current = from_wire(wire_state)
        if current & ~sl.requested:
            raise SMBError(st.STATUS_REQUEST_NOT_ACCEPTED, "acknowledged more than the break")
        m = sl.mlease
        required = sl.required
        if m is not None and not m.gone and m.target is not None:
            required &= m.target
        if current & ~required:
            # Not yet down to what is required: break again, in steps as Windows
            # does (RWH -> RH -> R -> none; smbtorture smb2.lease.breaking3).
            requested = required
            if current & (W | H):
                requested |= R
                sl.state = current
                sl.requested = requested
                sl.required = required
                self._send_lease_break(sl, current, requested, ack=True)
                self._start_timer(sl)
                self.changed(sl.ino)
                return wire_state
            self._send_lease_break(sl, current, requested, ack=False)
            current = 0
        sl.state = current
        sl.breaking = False
        sl.requested = sl.required = 0
        self._cancel_timer(sl)
        self._settle(sl)
        self.changed(sl.ino)
        return wire_state

    def _settle(self, sl: SMBLease) -> None:
        """A break is through on the SMB side: bring the manager's lease down to match."""
        m = sl.mlease
        if m is None or m.gone:
            sl.mlease = None
            return
        try:
            if m.breaking_to is not None:
                self.manager.acknowledge(m, sl.state & m.breaking_to)
            elif not sl.state:
                self.manager.release(m)
        except errors.Inval:
            self._log.failure("smb lease out of step with the lease manager")
        if m.gone:
            sl.mlease = None

    def ack_oplock(self, op: Any, level: int) -> int:
        """
        An OPLOCK_BREAK acknowledgement (MS-SMB2 3.3.5.22.1).

        @return: the level the oplock is now at.
        @raise SMBError: no break outstanding (INVALID_OPLOCK_PROTOCOL) or a
            level that is neither II nor none (INVALID_PARAMETER).
        """
        if not op.oplock_break_sent:
            raise SMBError(st.STATUS_INVALID_OPLOCK_PROTOCOL, "no oplock break outstanding")
        if level not in (c.SMB2_OPLOCK_LEVEL_NONE, c.SMB2_OPLOCK_LEVEL_II):
            raise SMBError(st.STATUS_INVALID_PARAMETER, "acknowledged to an invalid level")
        if op.oplock_break_sent < 0 or level == c.SMB2_OPLOCK_LEVEL_NONE:
            new = c.SMB2_OPLOCK_LEVEL_NONE
        else:
            new = c.SMB2_OPLOCK_LEVEL_II
        op.oplock = new
        op.oplock_break_sent = 0
        m = op.oplock_mlease
        if m is not None and not m.gone:
            bits = OPLOCK_BITS[new]
            try:
                if m.breaking_to is not None:
                    self.manager.acknowledge(m, bits & m.breaking_to)
                elif not bits:
                    self.manager.release(m)
            except errors.Inval:
                self._log.failure("smb oplock out of step with the lease manager")
            if m.gone:
                op.oplock_mlease = None
        self.changed(op.ino)
        return new

    # -- opens ending --------------------------------------------------------------------

    def closed(self, op: Any) -> None:
        """An open ends: its oplock goes; its lease when its last open goes."""
        if op.oplock_mlease is not None:
            m, op.oplock_mlease = op.oplock_mlease, None
            if not m.gone:
                self.manager.release(m)
        op.oplock = 0
        op.oplock_break_sent = 0
        sl: SMBLease | None = op.lease
        if sl is not None:
            sl.opens.discard(op)
            if not sl.opens:
                self._cancel_timer(sl)
                if self.leases.get((sl.client, sl.key)) is sl:
                    del self.leases[(sl.client, sl.key)]
                m, sl.mlease = sl.mlease, None
                if m is not None and not m.gone:
                    self.manager.release(m)
        if op.node is not None:
            self.changed(op.ino)

    def key_in_use(self, client: bytes, key: bytes, ino: int | None) -> bool:
        """Whether C{client}'s lease key names a file other than C{ino} (MS-SMB2 3.3.5.9.8)."""
        sl = self.leases.get((client, key))
        return sl is not None and sl.ino != ino

    def lease_of(self, client: bytes, key: bytes) -> SMBLease | None:
        return self.leases.get((client, key))

    # -- notifications -------------------------------------------------------------------

    def _send_lease_break(self, sl: SMBLease, old: int, new: int, ack: bool) -> None:
        epoch = sl.epoch if sl.version > 1 else 0
        body = pack_lease_break(
            epoch,
            c.SMB2_NOTIFY_BREAK_LEASE_FLAG_ACK_REQUIRED if ack else 0,
            sl.key,
            to_wire(old),
            to_wire(new),
        )
        # To the client's first connection, as Samba and Windows send them
        # (smbtorture smb2.lease.v2_complex1 checks which one).
        for conn in self.factory.client_connections(sl.client):
            if conn is not None and conn.send_break(0, body):
                self._log.debug(
                    "smb lease break {old} -> {new}",
                    old=to_wire(old),
                    new=to_wire(new),
                    ino=sl.ino,
                )
                return
        self._log.debug("smb lease break with no connection to send it on", ino=sl.ino)

    def _send_oplock_break(self, op: Any, level: int) -> None:
        conn = op.conn
        if conn is None or not conn.send_break(op.session.id, pack_oplock_break(level, op.file_id)):
            self._log.debug("smb oplock break with no connection to send it on", ino=op.ino)

    # -- timers for breaks the manager does not time -------------------------------------

    def _start_timer(self, sl: SMBLease) -> None:
        self._cancel_timer(sl)
        sl.timer = self.factory.reactor.callLater(
            self.recall_timeout, self._timed_out, sl, sl.epoch
        )

    def _cancel_timer(self, sl: SMBLease) -> None:
        if sl.timer is not None:
            if sl.timer.active():
                sl.timer.cancel()
            sl.timer = None

    def _timed_out(self, sl: SMBLease, epoch: int) -> None:
        sl.timer = None
        if sl.breaking:
            self.expire_smb_lease(sl)
