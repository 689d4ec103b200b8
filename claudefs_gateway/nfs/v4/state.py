# -*- test-case-name: tests.nfs.v4.test_state -*-
"""
NFSv4 state: opens, byte-range lock states and their stateids (RFC 8881
§8, §9), over the vfs's cross-protocol lock table.

An open is one open-owner's open of one file: a share reservation in the
lock table (C{open_share}, so it conflicts with SMB share modes and NLM
SHAREs), the access and deny modes it was opened with, and a stateid whose
seqid grows with every OPEN upgrade and OPEN_DOWNGRADE. A lock state is one
lock-owner's locks on one file, made from an open (LOCK with a new
lock-owner); its locks are POSIX-semantics records in the same table, so
they conflict with NLM and SMB locks. Every stateid's C{other} is the boot
epoch and a counter: one from an earlier run is NFS4ERR_STALE_STATEID.

The per-client caps (C{nfs.v4.max_open_states_per_client},
C{max_locks_per_client}, after Ganesha's C{Max_Open_States_Per_Client})
bound what one client can make the server hold.

A delegation is a stateid too (L{DELEG}): what L{claudefs_gateway.nfs.v4.delegations}
granted one client on one file, backed by a lease in the vfs lease manager.
A revoked delegation's stateid stays, answering NFS4ERR_DELEG_REVOKED, until
the client frees it (FREE_STATEID): while any does, SEQUENCE reports
SEQ4_STATUS_RECALLABLE_STATE_REVOKED (RFC 8881 §18.46.3).
"""

from __future__ import annotations

import itertools
import struct
from typing import Any

import attrs

from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4.base import Nfs4Error
from claudefs_gateway.nfs.v4.codec import StateId
from claudefs_gateway.vfs.locks import LockOwner, ShareToken

__all__ = [
    "OPEN",
    "LOCK",
    "COPY",
    "DELEG",
    "State",
    "ClientState",
    "StateIds",
    "ANONYMOUS",
    "BYPASS",
    "CURRENT",
    "INVALID",
    "share_modes",
]

OPEN = 1
LOCK = 2
COPY = 3
DELEG = 4
KIND_NAMES = {OPEN: "open", LOCK: "lock", COPY: "copy", DELEG: "delegation"}

_ZERO12 = bytes(12)
_ONES12 = b"\xff" * 12
#: RFC 8881 §8.2.3: the special stateids.
ANONYMOUS = StateId(0, _ZERO12)
BYPASS = StateId(0xFFFFFFFF, _ONES12)
CURRENT = StateId(1, _ZERO12)
INVALID = StateId(0xFFFFFFFF, _ZERO12)

_OTHER = struct.Struct(">IQ")


def share_modes(access: int, deny: int) -> tuple[frozenset[str], frozenset[str]]:
    """OPEN4_SHARE_ACCESS/DENY bits as the lock table's share modes."""
    acc = set()
    den = set()
    if access & c.OPEN4_SHARE_ACCESS_READ:
        acc.add("read")
    if access & c.OPEN4_SHARE_ACCESS_WRITE:
        acc.add("write")
    if deny & c.OPEN4_SHARE_DENY_READ:
        den.add("read")
    if deny & c.OPEN4_SHARE_DENY_WRITE:
        den.add("write")
    return frozenset(acc), frozenset(den)


@attrs.define(eq=False)
class State:
    """
    One stateid's state.

    @ivar kind: L{OPEN}, L{LOCK}, L{COPY} (an asynchronous COPY's stateid)
        or L{DELEG}.
    @ivar owner: the open-owner or lock-owner (bytes, within the client).
    @ivar share: an open's share reservation in the lock table.
    @ivar access: an open's OPEN4_SHARE_ACCESS bits; C{deny} its DENY bits.
    @ivar opened: every (access, deny) pair OPEN used (OPEN_DOWNGRADE may
        only go back to a union of them, RFC 8881 §18.18.3).
    @ivar open: a lock state's open.
    @ivar lock_owner: a lock state's owner in the lock table.
    @ivar locked: a lock state holds (or held) locks.
    @ivar job: an asynchronous COPY's job.
    @ivar lease: a delegation's lease in the vfs lease manager (L{None}
        once returned or revoked, or for a reclaimed delegation the server
        could not honour).
    @ivar deleg_type: a delegation's OPEN_DELEGATE_READ or _WRITE.
    @ivar fh: a delegation's file handle (CB_RECALL names it).
    @ivar granted_by: (sessionid, sequenceid, slotid) of the request that
        granted a delegation: CB_SEQUENCE's referring call (RFC 8881 §2.10.6.3).
    @ivar recall_pending: a recall is due but could not be sent (no back
        channel): sent when one comes up.
    @ivar recalling: a CB_RECALL is being sent.
    @ivar changed_at: when a CB_GETATTR first found the holder had changed
        the file (nanoseconds): the modify time others see until it flushes.
    """

    kind: int
    other: bytes
    seqid: int
    client: Any
    ino: int
    export_id: int
    owner: bytes = b""
    share: ShareToken | None = None
    access: int = 0
    deny: int = 0
    opened: set[tuple[int, int]] = attrs.Factory(set)
    open: State | None = None
    lock_owner: LockOwner | None = None
    locks: list[State] = attrs.Factory(list)
    revoked: bool = False
    closed: bool = False
    job: Any = None
    lease: Any = None
    deleg_type: int = 0
    fh: bytes = b""
    granted_by: tuple[bytes, int, int] | None = None
    recall_pending: bool = False
    recalling: Any = None
    changed_at: int | None = None

    def stateid(self) -> StateId:
        return StateId(self.seqid, self.other)

    def bump(self) -> StateId:
        self.seqid = self.seqid + 1 if self.seqid < 0xFFFFFFFF else 1
        return self.stateid()


class StateIds:
    """Every stateid of this server run, by its C{other}, and the counter making them."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self._counter = itertools.count(1)
        self.by_other: dict[bytes, State] = {}

    def new_other(self) -> bytes:
        return _OTHER.pack(self.epoch, next(self._counter))

    def is_stale(self, other: bytes) -> bool:
        return _OTHER.unpack(other)[0] != self.epoch

    def add(self, st: State) -> None:
        self.by_other[st.other] = st

    def remove(self, st: State) -> None:
        self.by_other.pop(st.other, None)

    def __len__(self) -> int:
        return len(self.by_other)


@attrs.define(eq=False)
class ClientState:
    """
    One client's opens and lock states.

    @ivar opens: (open-owner, inode) to its open state.
    @ivar lock_states: (lock-owner, inode) to its lock state.
    @ivar states: every stateid of the client by C{other}.
    @ivar delegs: inode to the client's delegation on it.
    @ivar revoked: the C{other} of each revoked delegation not yet freed.
    """

    ids: StateIds
    max_opens: int
    max_locks: int
    opens: dict[tuple[bytes, int], State] = attrs.Factory(dict)
    lock_states: dict[tuple[bytes, int], State] = attrs.Factory(dict)
    states: dict[bytes, State] = attrs.Factory(dict)
    delegs: dict[int, State] = attrs.Factory(dict)
    revoked: set[bytes] = attrs.Factory(set)

    def _new(self, kind: int, client: Any, ino: int, export_id: int, owner: bytes) -> State:
        st = State(kind, self.ids.new_other(), 1, client, ino, export_id, owner)
        self.states[st.other] = st
        self.ids.add(st)
        return st

    def new_open(self, client: Any, ino: int, export_id: int, owner: bytes) -> State:
        """@raise Nfs4Error: NFS4ERR_DELAY when the client has C{max_opens} opens."""
        if len(self.opens) >= self.max_opens:
            raise Nfs4Error(c.NFS4ERR_DELAY, "too many open states for this client")
        st = self._new(OPEN, client, ino, export_id, owner)
        self.opens[(owner, ino)] = st
        return st

    def new_lock(self, client: Any, opened: State, owner: bytes, lock_owner: LockOwner) -> State:
        """@raise Nfs4Error: NFS4ERR_DELAY when the client has C{max_locks} lock states."""
        if len(self.lock_states) >= self.max_locks:
            raise Nfs4Error(c.NFS4ERR_DELAY, "too many lock states for this client")
        st = self._new(LOCK, client, opened.ino, opened.export_id, owner)
        st.open = opened
        st.lock_owner = lock_owner
        opened.locks.append(st)
        self.lock_states[(owner, opened.ino)] = st
        return st

    def new_copy(self, client: Any, ino: int, export_id: int) -> State:
        return self._new(COPY, client, ino, export_id, b"")

    def new_deleg(self, client: Any, ino: int, export_id: int, deleg_type: int) -> State:
        """A delegation's stateid (the caller checked the client has none on C{ino})."""
        st = self._new(DELEG, client, ino, export_id, b"")
        st.deleg_type = deleg_type
        self.delegs[ino] = st
        return st

    def forget(self, st: State) -> None:
        """Drop a stateid (its locks and share are the caller's to release)."""
        st.closed = True
        self.states.pop(st.other, None)
        self.ids.remove(st)
        if st.kind == OPEN:
            if self.opens.get((st.owner, st.ino)) is st:
                del self.opens[(st.owner, st.ino)]
        elif st.kind == LOCK:
            if self.lock_states.get((st.owner, st.ino)) is st:
                del self.lock_states[(st.owner, st.ino)]
            if st.open is not None and st in st.open.locks:
                st.open.locks.remove(st)
        elif st.kind == DELEG:
            if self.delegs.get(st.ino) is st:
                del self.delegs[st.ino]
            self.revoked.discard(st.other)

    def clear(self) -> list[State]:
        """Forget everything; the states, for the caller to release."""
        out = list(self.states.values())
        for st in out:
            st.closed = True
            self.ids.remove(st)
        self.states.clear()
        self.opens.clear()
        self.lock_states.clear()
        self.delegs.clear()
        self.revoked.clear()
        return out
