# -*- test-case-name: tests.nfs.v4.test_ops -*-
"""
What the operations of one COMPOUND share (RFC 8881 §16.2.3.1): the current
and saved file handles, the current and saved stateids, the session and
slot of its SEQUENCE; and L{OpsBase}, the helpers every operation module
uses over the vfs (resolving handles, attributes, stateid checks).

A file handle is either a pseudo directory (L{claudefs_gateway.nfs.v4.pseudo})
or an object of an export. PUTFH checks the handle (NFS4ERR_BADHANDLE) and
reads the attributes; a handle of a file since removed is kept and reported
NFS4ERR_STALE by the operations that need the file itself, so a CLOSE of a
file that was removed while open still works (RFC 8881 §8.2.4's stateids
outlive names).
"""

from __future__ import annotations

from typing import Any

import attrs

from claudefs_gateway import errors
from claudefs_gateway.fstypes import Attributes
from claudefs_gateway.interfaces import IVFS
from claudefs_gateway.nfs.context import NFSContext
from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4 import fattr
from claudefs_gateway.nfs.v4.base import Nfs4Error
from claudefs_gateway.nfs.v4.callback import Callbacks
from claudefs_gateway.nfs.v4.clients import Client, ClientTable, Session, Slot
from claudefs_gateway.nfs.v4.codec import ChangeInfo, StateId
from claudefs_gateway.nfs.v4.pseudo import PSEUDO_FSID, PseudoFS, PseudoNode, is_pseudo_handle
from claudefs_gateway.nfs.v4.recovery import ClientRecords
from claudefs_gateway.nfs.v4.state import (
    ANONYMOUS,
    BYPASS,
    CURRENT,
    OPEN,
    ClientState,
    Delegations,
    State,
    StateIds,
)
from claudefs_gateway.rpc.server import Call
from claudefs_gateway.rpc.xdrtypes import Arm
from claudefs_gateway.vfs import Caller, ExportInfo, LeaseKey, Origin

__all__ = ["FH", "CompoundState", "OpsBase", "Settings", "ok"]


def ok(value: Any = None) -> Arm:
    return Arm(c.NFS4_OK, value)


@attrs.frozen(kw_only=True)
class Settings:
    """The NFSv4 settings (C{nfs.v4.*}) the operations consult."""

    minor_versions: frozenset[int] = frozenset({1, 2})
    lease_secs: int = 90
    only_numeric_owners: bool = True
    domain: str = "localdomain"
    max_clients: int = 1024
    max_sessions_per_client: int = 8
    max_slots: int = 64
    max_ops: int = 64
    reply_cache_size: int = 8192
    max_open_states_per_client: int = 4096
    max_locks_per_client: int = 4096
    max_record: int = 2 << 20
    io_size: int = 1 << 20
    callback_timeout: float = 15.0
    async_copy_min: int = 8 << 20


@attrs.define(slots=True, eq=False)
class FH:
    """
    A file handle of the compound: a pseudo directory, or an export's object.

    @ivar attrs: the object's attributes when last read (L{None}: stale).
    """

    handle: bytes
    export: ExportInfo | None = None
    node: PseudoNode | None = None
    ino: int = 0
    attrs: Attributes | None = None

    @property
    def pseudo(self) -> bool:
        return self.node is not None

    @property
    def is_dir(self) -> bool:
        return self.node is not None or (self.attrs is not None and self.attrs.is_dir)


@attrs.define(slots=True, eq=False)
class CompoundState:
    """One COMPOUND being served."""

    call: Call
    minorversion: int
    session: Session | None = None
    slot: Slot | None = None
    cfh: FH | None = None
    sfh: FH | None = None
    cstateid: StateId | None = None
    sstateid: StateId | None = None
    index: int = 0
    count: int = 0
    limit: int = 0
    size: int = 0
    cachethis: bool = False

    @property
    def client(self) -> Client:
        assert self.session is not None
        return self.session.client


class OpsBase:
    """Shared state and helpers of the NFSv4 operations."""

    ctx: NFSContext
    settings: Settings
    clients: ClientTable
    ids: StateIds
    callbacks: Callbacks
    records: ClientRecords
    delegations: Delegations
    info: fattr.ServerInfo
    _pseudo: PseudoFS | None
    _pseudo_vfs: IVFS | None

    # -- the pseudo tree and handles ---------------------------------------------------

    async def vfs(self) -> IVFS:
        return self.ctx.vfs or await self.ctx.ready()

    def pseudo(self, vfs: IVFS) -> PseudoFS:
        if self._pseudo is None or self._pseudo_vfs is not vfs:
            exports = [e for e in vfs.exports if "nfs" in e.rules.protocols]
            self._pseudo = PseudoFS(exports, int(vfs.clock.seconds() * 1e9))
            self._pseudo_vfs = vfs
        return self._pseudo

    async def root_fh(self) -> FH:
        vfs = await self.vfs()
        p = self.pseudo(vfs)
        if p.root_export is not None:
            return await self.export_root(vfs, p.root_export)
        return FH(p.root.handle, node=p.root)

    async def export_root(self, vfs: IVFS, export: ExportInfo) -> FH:
        a = await vfs.getattr(self._caller_or_root(vfs, export), export.root_ino)
        return FH(vfs.handle(export, a), export, None, a.ino, a)

    def _caller_or_root(self, vfs: IVFS, export: ExportInfo) -> Caller:
        from claudefs_gateway.fstypes import ROOT

        return vfs.caller(export, "", ROOT, "nfs4")

    async def resolve(self, handle: bytes) -> FH:
        """
        The FH a client's handle names (PUTFH).

        @raise Nfs4Error: NFS4ERR_BADHANDLE (not ours), NFS4ERR_STALE (an
            export or pseudo directory no longer there).
        """
        vfs = await self.vfs()
        if is_pseudo_handle(handle):
            node = self.pseudo(vfs).node(handle)
            if node is None:
                raise Nfs4Error(c.NFS4ERR_STALE, "pseudo directory gone")
            return FH(handle, node=node)
        try:
            export, a = await vfs.from_handle(handle)
        except errors.BadHandle:
            raise Nfs4Error(c.NFS4ERR_BADHANDLE, "not a handle of ours") from None
        except errors.Stale:
            # The file is gone; keep the handle (CLOSE of a removed file still works).
            export_id, ino, _ = vfs.handle_parts(handle)
            gone = vfs.exports.get(export_id)
            if gone is None or "nfs" not in gone.rules.protocols:
                raise Nfs4Error(c.NFS4ERR_STALE, "export gone") from None
            return FH(handle, gone, None, ino, None)
        if "nfs" not in export.rules.protocols:
            raise Nfs4Error(c.NFS4ERR_STALE, "not an NFS export")
        return FH(handle, export, None, a.ino, a)

    # -- the current file handle ---------------------------------------------------------

    @staticmethod
    def cfh(st: CompoundState) -> FH:
        if st.cfh is None:
            raise Nfs4Error(c.NFS4ERR_NOFILEHANDLE)
        return st.cfh

    @staticmethod
    def sfh(st: CompoundState) -> FH:
        if st.sfh is None:
            raise Nfs4Error(c.NFS4ERR_NOFILEHANDLE, "no saved file handle")
        return st.sfh

    @staticmethod
    def live(fh: FH) -> Attributes:
        """The object's attributes. @raise Nfs4Error: NFS4ERR_STALE."""
        if fh.attrs is None:
            raise Nfs4Error(c.NFS4ERR_STALE)
        return fh.attrs

    def caller(self, st: CompoundState, fh: FH) -> Caller:
        """Who the call runs as in C{fh}'s export. @raise Nfs4Error: NFS4ERR_ACCESS."""
        assert fh.export is not None
        try:
            return self.ctx.caller(fh.export, st.call)
        except errors.Access:
            raise Nfs4Error(c.NFS4ERR_ACCESS, "client not allowed by export rules") from None

    def real(self, st: CompoundState, fh: FH, write: bool = False) -> tuple[Attributes, Caller]:
        """
        An export's object (not a pseudo directory) and its caller.

        @raise Nfs4Error: NFS4ERR_ROFS for a pseudo directory when writing
            (NFS4ERR_INVAL otherwise), NFS4ERR_STALE, NFS4ERR_ACCESS.
        """
        if fh.pseudo:
            raise Nfs4Error(c.NFS4ERR_ROFS if write else c.NFS4ERR_INVAL, "pseudo directory")
        return self.live(fh), self.caller(st, fh)

    def dir_of(self, st: CompoundState, fh: FH, write: bool = False) -> tuple[Attributes, Caller]:
        """An export's directory. @raise Nfs4Error: NFS4ERR_NOTDIR / SYMLINK, as L{real}."""
        if fh.pseudo:
            raise Nfs4Error(c.NFS4ERR_ROFS if write else c.NFS4ERR_INVAL, "pseudo directory")
        a = self.live(fh)
        if not a.is_dir:
            raise Nfs4Error(c.NFS4ERR_SYMLINK if a.is_link else c.NFS4ERR_NOTDIR)
        return a, self.caller(st, fh)

    async def refresh(self, st: CompoundState, fh: FH) -> Attributes:
        """Re-read an object's attributes (after a change)."""
        vfs = await self.vfs()
        a = await vfs.getattr(self.caller(st, fh), fh.ino)
        fh.attrs = a
        return a

    def child(self, vfs: IVFS, parent: FH, a: Attributes) -> FH:
        assert parent.export is not None
        return FH(vfs.handle(parent.export, a), parent.export, None, a.ino, a)

    # -- attributes -----------------------------------------------------------------------

    def source(self, fh: FH, a: Attributes | None = None) -> fattr.Source:
        """What fattr4 encoding needs for C{fh}."""
        if fh.node is not None:
            assert self._pseudo is not None
            pa = self._pseudo.attrs(fh.node)
            return fattr.Source(pa, fh.handle, PSEUDO_FSID, pa.ino)
        assert fh.export is not None
        a = a or self.live(fh)
        mounted = a.ino
        if a.ino == fh.export.root_ino and self._pseudo is not None:
            mounted = self._pseudo.mounted_on(fh.export) or a.ino
        return fattr.Source(a, fh.handle, (fh.export.id, 0), mounted)

    async def attributes(self, st: CompoundState, fh: FH, request: list[int]) -> Any:
        """fattr4 of C{fh} for C{request} (the store's statfs when asked)."""
        src = self.source(fh)
        if fattr.wants_statfs(request) and fh.export is not None:
            vfs = await self.vfs()
            src.stat = await vfs.statfs(self.caller(st, fh))
        return fattr.encode(request, src, self.info)

    @staticmethod
    def cinfo(before: Attributes | None, after: Attributes | None) -> ChangeInfo:
        b = before.change if before is not None else 0
        return ChangeInfo(False, b, after.change if after is not None else b)

    def uid_of(self, name: str) -> int | None:
        if name.isdigit():
            return int(name)
        vfs = self.ctx.vfs
        return vfs.users.nfs4_to_uid(name) if vfs is not None else None

    def gid_of(self, name: str) -> int | None:
        if name.isdigit():
            return int(name)
        vfs = self.ctx.vfs
        return vfs.users.nfs4_to_gid(name) if vfs is not None else None

    # -- stateids ------------------------------------------------------------------------

    def client_state(self, client: Client) -> ClientState:
        if client.state is None:
            s = self.settings
            client.state = ClientState(
                self.ids, s.max_open_states_per_client, s.max_locks_per_client
            )
        cs: ClientState = client.state
        return cs

    def current_stateid(self, st: CompoundState, sid: StateId) -> StateId:
        """The stateid an argument names (the current stateid for the special one)."""
        if sid == CURRENT:
            if st.cstateid is None:
                raise Nfs4Error(c.NFS4ERR_BAD_STATEID, "no current stateid")
            return st.cstateid
        return sid

    def find_state(self, st: CompoundState, sid: StateId, kinds: tuple[int, ...]) -> State:
        """
        The state a (non-special) stateid names for this client.

        @raise Nfs4Error: NFS4ERR_STALE_STATEID (an earlier run's),
            NFS4ERR_BAD_STATEID (unknown, another client's, another kind,
            or a seqid from the future), NFS4ERR_OLD_STATEID (an earlier
            seqid; 0 means "the current one", RFC 8881 §8.2.2),
            NFS4ERR_ADMIN_REVOKED.
        """
        sid = self.current_stateid(st, sid)
        state = self.ids.by_other.get(sid.other)
        if state is None:
            if sid.other != bytes(12) and self.ids.is_stale(sid.other):
                raise Nfs4Error(c.NFS4ERR_STALE_STATEID)
            raise Nfs4Error(c.NFS4ERR_BAD_STATEID)
        if st.session is None or state.client is not st.session.client or state.kind not in kinds:
            raise Nfs4Error(c.NFS4ERR_BAD_STATEID)
        if state.revoked:
            raise Nfs4Error(c.NFS4ERR_ADMIN_REVOKED)
        if sid.seqid != 0:
            if sid.seqid > state.seqid:
                raise Nfs4Error(c.NFS4ERR_BAD_STATEID, "seqid from the future")
            if sid.seqid < state.seqid:
                raise Nfs4Error(c.NFS4ERR_OLD_STATEID)
        return state

    def io_origin(self, st: CompoundState, sid: StateId, fh: FH, write: bool) -> Origin:
        """
        What the vfs checks a READ, WRITE or size change as (after
        L{io_state}'s checks): the open's own share reservation and lock
        owner, so only other opens' deny modes and other owners' mandatory
        (SMB) locks refuse it; never waiting for lease breaks (NFS4ERR_DELAY,
        the client retries); and the READ-bypass stateid skips share and
        lock checks altogether (RFC 8881 §8.2.3).
        """
        state = self.io_state(st, sid, fh, write)
        if state is None:
            bypass = self.current_stateid(st, sid) == BYPASS and not write
            return Origin(wait=False, bypass=bypass)
        opened = state if state.kind == OPEN else state.open
        return Origin(
            owner=state.lock_owner,
            share=opened.share if opened is not None else None,
            exempt=(LeaseKey("nfs4", state.client.lock_key, None),),
            wait=False,
        )

    def io_state(self, st: CompoundState, sid: StateId, fh: FH, write: bool) -> State | None:
        """
        The open (or lock) state a READ, WRITE or size change names, or
        L{None} for the anonymous and READ-bypass stateids, after RFC 8881
        §9.1's checks: the stateid belongs to this file (NFS4ERR_BAD_STATEID)
        and, for writing, its open has write access (NFS4ERR_OPENMODE).
        Reading through a write-only open is allowed (clients read pages
        they write, as knfsd allows). Anonymous I/O meets other opens'
        deny modes (NFS4ERR_LOCKED), whichever protocol opened them.
        """
        sid = self.current_stateid(st, sid)
        if sid == ANONYMOUS or sid == BYPASS:
            vfs = self.ctx.vfs
            if vfs is not None and vfs.locks is not None:
                mode = "write" if write else "read"
                if not (sid == BYPASS and not write):
                    for t in vfs.locks.shares(fh.ino):
                        if mode in t.deny:
                            raise Nfs4Error(c.NFS4ERR_LOCKED, f"an open denies {mode}")
            return None
        state = self.find_state(st, sid, (OPEN, 2))
        if state.ino != fh.ino:
            raise Nfs4Error(c.NFS4ERR_BAD_STATEID, "stateid of another file")
        opened = state if state.kind == OPEN else state.open
        if opened is None or opened.closed:
            raise Nfs4Error(c.NFS4ERR_BAD_STATEID, "open closed")
        if write and not opened.access & c.OPEN4_SHARE_ACCESS_WRITE:
            raise Nfs4Error(c.NFS4ERR_OPENMODE, "not open for writing")
        return state
