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

The delegation seam: an OPEN asks L{Delegations.for_open} what to grant;
until the vfs lease manager arrives it grants nothing (OPEN_DELEGATE_NONE,
which RFC 8881 §10.4 allows any server), so nothing is ever recalled.
"""

from __future__ import annotations

import itertools
import struct
from typing import Any

import attrs

from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4.base import Nfs4Error
from claudefs_gateway.nfs.v4.codec import StateId
from claudefs_gateway.rpc.xdrtypes import Arm
from claudefs_gateway.vfs.locks import LockOwner, ShareToken

__all__ = [
    "OPEN",
    "LOCK",
    "COPY",
    "State",
    "ClientState",
    "StateIds",
    "ANONYMOUS",
    "BYPASS",
    "CURRENT",
    "INVALID",
    "share_modes",
    "Delegations",
]

OPEN = 1
LOCK = 2
COPY = 3
KIND_NAMES = {OPEN: "open", LOCK: "lock", COPY: "copy"}

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

    @ivar kind: L{OPEN}, L{LOCK} or L{COPY} (an asynchronous COPY's stateid).
    @ivar owner: the open-owner or lock-owner (bytes, within the client).
    @ivar share: an open's share reservation in the lock table.
    @ivar access: an open's OPEN4_SHARE_ACCESS bits; C{deny} its DENY bits.
    @ivar opened: every (access, deny) pair OPEN used (OPEN_DOWNGRADE may
        only go back to a union of them, RFC 8881 §18.18.3).
    @ivar open: a lock state's open.
    @ivar lock_owner: a lock state's owner in the lock table.
    @ivar locked: a lock state holds (or held) locks.
    @ivar job: an asynchronous COPY's job.
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
    """

    ids: StateIds
    max_opens: int
    max_locks: int
    opens: dict[tuple[bytes, int], State] = attrs.Factory(dict)
    lock_states: dict[tuple[bytes, int], State] = attrs.Factory(dict)
    states: dict[bytes, State] = attrs.Factory(dict)

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

    def clear(self) -> list[State]:
        """Forget everything; the states, for the caller to release."""
        out = list(self.states.values())
        for st in out:
            st.closed = True
            self.ids.remove(st)
        self.states.clear()
        self.opens.clear()
        self.lock_states.clear()
        return out


class Delegations:
    """
    Where OPEN and WANT_DELEGATION ask for delegations: the seam the vfs
    lease manager plugs into. This build grants none: a client that wants
    one hears why not (RFC 8881 §18.16.3, OPEN_DELEGATE_NONE_EXT), one
    that expressed no wish gets OPEN_DELEGATE_NONE.
    """

    def for_open(self, want: int, client: Any, st: State | None, is_dir: bool = False) -> Arm:
        """
        The open_delegation4 for an OPEN (or WANT_DELEGATION) with C{want}
        (the OPEN4_SHARE_ACCESS_WANT_* bits).

        @raise Nfs4Error: NFS4ERR_INVAL for an undefined want.
        """
        kind = want & c.OPEN4_SHARE_ACCESS_WANT_DELEG_MASK
        if kind == c.OPEN4_SHARE_ACCESS_WANT_NO_PREFERENCE:
            return Arm(c.OPEN_DELEGATE_NONE)
        if kind == c.OPEN4_SHARE_ACCESS_WANT_NO_DELEG:
            return Arm(c.OPEN_DELEGATE_NONE_EXT, Arm(c.WND4_NOT_WANTED))
        if kind == c.OPEN4_SHARE_ACCESS_WANT_CANCEL:
            return Arm(c.OPEN_DELEGATE_NONE_EXT, Arm(c.WND4_CANCELLED))
        if kind in (
            c.OPEN4_SHARE_ACCESS_WANT_READ_DELEG,
            c.OPEN4_SHARE_ACCESS_WANT_WRITE_DELEG,
            c.OPEN4_SHARE_ACCESS_WANT_ANY_DELEG,
        ):
            if is_dir:
                return Arm(c.OPEN_DELEGATE_NONE_EXT, Arm(c.WND4_IS_DIR))
            # No delegations are granted yet: say so, and promise no signal.
            return Arm(c.OPEN_DELEGATE_NONE_EXT, Arm(c.WND4_RESOURCE, False))
        raise Nfs4Error(c.NFS4ERR_INVAL, f"delegation want {kind:#x}")
