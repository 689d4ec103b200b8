# -*- test-case-name: tests.smb.test_server -*-
"""
Per-connection and per-server state of the SMB front end: sessions, tree
connects, opens, the files they share, and the request being served.

Plain objects: the protocol and the file operations change them; nothing here
does I/O.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import attrs
from twisted.internet import defer

from claudefs_gateway import errors
from claudefs_gateway.fstypes import Credentials
from claudefs_gateway.interfaces import IVFS
from claudefs_gateway.smb import ntstatus as st
from claudefs_gateway.smb.crypto import PreauthHash, Sealer, SessionKeys, Signer
from claudefs_gateway.smb.errors import SMBError
from claudefs_gateway.smb.header import Header
from claudefs_gateway.smb.messages import FileId
from claudefs_gateway.vfs import Caller, ExportInfo, LockOwner, ShareToken
from claudefs_gateway.vfs.leases import LeaseKey
from claudefs_gateway.vfs.origin import Origin

__all__ = [
    "Session",
    "Tree",
    "Open",
    "FileNode",
    "Chain",
    "Request",
    "Reply",
    "Body",
    "Parts",
    "Watch",
    "DirScan",
]

#: A message in pieces, in order, for one C{sendmsg} (scatter/gather): a READ
#: reply is its header and its data, the data never copied behind the header.
Parts = list[bytes | bytearray | memoryview]

#: A handler's response body: one buffer, or L{Parts} (a READ's fixed part
#: and its data, sent and signed where they lie).
Body = bytes | bytearray | memoryview | Parts


@attrs.define(eq=False)
class Session:
    """
    One SMB2 session (MS-SMB2 3.3.1.8).

    @ivar machine: its L{SessionMachine}.
    @ivar caller_creds: the user's credentials (before each share's squash).
    @ivar signing_required: every request must be signed (unless encrypted).
    @ivar encrypt_data: every request must arrive, and every reply leave, encrypted.
    """

    id: int
    machine: Any
    preauth: PreauthHash | None
    acceptor: Any = None
    user: str = ""
    uid: int = -1
    creds: Any = None
    guest: bool = False
    anonymous: bool = False
    keys: SessionKeys | None = None
    signer: Signer | None = None
    sealer: Sealer | None = None
    signing_required: bool = False
    encrypt_data: bool = False
    client_signing_required: bool = False
    trees: dict[int, Tree] = attrs.Factory(dict)
    next_tree: int = 1
    # What the session was set up with (a channel must match; MS-SMB2 3.3.5.5.2).
    dialect: int = 0
    cipher: int = 0
    signing_alg: int = 0
    # Multichannel: the connections bound to it, by SMBConnection.seq (the
    # first included), each bound one's own signer, and binds in progress
    # (acceptor and 3.1.1 preauth hash per connection).
    channels: dict[int, Any] = attrs.Factory(dict)
    channel_signers: dict[int, Signer] = attrs.Factory(dict)
    binding: dict[int, tuple[Any, PreauthHash | None]] = attrs.Factory(dict)

    @property
    def valid(self) -> bool:
        return bool(self.machine.valid)

    @property
    def can_sign(self) -> bool:
        return self.signer is not None

    def signer_for(self, seq: int) -> Signer | None:
        """The signer of the channel C{seq} (a bound one's own; else the session's)."""
        return self.channel_signers.get(seq, self.signer)

    def live_channels(self) -> list[Any]:
        """The connections bound to the session that are still up, oldest first."""
        return [c for _, c in sorted(self.channels.items()) if not c._closing]


@attrs.define(eq=False)
class Tree:
    """A tree connect: one share as one session sees it."""

    id: int
    session: Session
    name: str
    _export: ExportInfo | None  # None for IPC$
    _caller: Caller | None  # None for IPC$
    encrypt: bool = False
    maximal_access: int = 0

    @property
    def ipc(self) -> bool:
        return self._export is None

    @property
    def export(self) -> ExportInfo:
        """The share's export (file operations never reach an IPC$ tree)."""
        if self._export is None:
            raise SMBError(st.STATUS_INVALID_DEVICE_REQUEST, "not a disk share")
        return self._export

    def rebind(self, vfs: IVFS, peer: str, creds: Credentials) -> None:
        """The session re-authenticated: run as its new identity on this share from now on."""
        if self._export is not None:
            try:
                self._caller = vfs.caller(self._export, peer, creds, "smb")
            except errors.Access:
                # The export refuses the new identity: keep nothing it could use.
                self._caller = vfs.caller(self._export, peer, Credentials(65534, 65534), "smb")

    @property
    def caller(self) -> Caller:
        """Who the session runs as on this share."""
        if self._caller is None:
            raise SMBError(st.STATUS_INVALID_DEVICE_REQUEST, "not a disk share")
        return self._caller


@attrs.define(eq=False)
class FileNode:
    """
    What every open of one inode shares, across connections (the server's
    view of "the file"): delete-pending state, its current name, its opens.
    """

    ino: int
    parent: int
    name: bytes
    path: str
    opens: set[Open] = attrs.Factory(set)
    delete_pending: bool = False
    # A named stream (file:stream:$DATA): its name, and the file's inode
    # (C{ino} is then the stream's own key for share modes, leases and locks).
    stream: str | None = None
    base: int = 0


@attrs.define(eq=False)
class DirScan:
    """A QUERY_DIRECTORY enumeration in progress on one directory open."""

    pattern: str = "*"
    started: bool = False
    dots_done: bool = False
    cookie: int = 0
    verifier: bytes = b"\x00" * 8
    eof: bool = False
    buffered: deque[tuple[str, Any]] = attrs.Factory(deque)
    returned_any: bool = False


@attrs.define(eq=False)
class Watch:
    """A directory's CHANGE_NOTIFY state: queued changes and waiting requests."""

    unsubscribe: Any = None
    tree: bool = False
    changes: deque[tuple[int, str]] = attrs.Factory(deque)
    overflow: bool = False
    waiting: deque[Any] = attrs.Factory(deque)
    filter: int = 0
    limit: int = 0


@attrs.define(eq=False)
class Open:
    """One open (MS-SMB2 3.3.1.10): a FileId's worth of state."""

    file_id: FileId
    session: Session
    tree: Tree
    node: FileNode | None
    is_dir: bool
    access: int
    lock_owner: LockOwner | None = None
    share: ShareToken | None = None
    delete_on_close: bool = False
    write_through: bool = False
    position: int = 0
    mode: int = 0
    scan: DirScan | None = None
    watch: Watch | None = None
    pipe: Any = None
    zero_locks: list[tuple[int, bool]] = attrs.Factory(list)  # (offset, exclusive)
    # FSCTL_SRV_REQUEST_RESUME_KEY: the key server-side copies name this open by.
    resume_key: bytes = b""
    closed: bool = False
    # Data was written through it (its close breaks the parent's directory leases).
    written: bool = False
    # A ChangeTime set through it (MS-FSA Open.UserSetChangeTime): changes
    # made through it leave that ChangeTime standing.
    user_change_time: int | None = None
    # ShareAccess of its CREATE (FILE_SHARE_*).
    share_access: int = 0
    # The connection the open was made on (its oplock breaks go there).
    conn: Any = None
    # The SMB lease it was opened with (claudefs_gateway.smb.leasing.SMBLease).
    lease: Any = None
    # Its oplock level (0: none) and the lease manager's lease behind it.
    oplock: int = 0
    oplock_mlease: Any = None
    # An oplock break awaiting acknowledgement: its level (II), -1 for none, 0 if none sent.
    oplock_break_sent: int = 0
    # Durability (claudefs_gateway.smb.durable): 1 or 2 when granted (v1, v2), its
    # timeout in seconds, the v2 CreateGuid, the AppInstanceId, the user it belongs to.
    durable: int = 0
    durable_timeout: float = 0.0
    create_guid: bytes | None = None
    app_instance: bytes | None = None
    owner: str = ""
    # The ClientGuid of the client that made it (CreateGuids are per client).
    client_guid: bytes = b""
    # FSCTL_LMR_REQUEST_RESILIENCY: kept across a lost connection whatever it caches.
    resilient: bool = False
    # A persistent handle (MS-SMB2 Open.IsPersistent; a ca: true share): its
    # state is in the store as it changes. A start that took it back keeps its
    # stored lease and oplock here until the reconnect grants them again.
    persistent: bool = False
    restored_lease: Any = None
    restored_oplock: int = 0
    # LOCK replay detection (MS-SMB2 3.3.5.14): LockSequenceIndex 1..64 -> number.
    lock_sequences: dict[int, int] = attrs.Factory(dict)
    # Its connection is gone; a reconnect may claim it until the expiry timer closes it.
    disconnected: bool = False
    expiry: Any = None
    # MS-SMB2 3.3.1.10 Open.ChannelSequence, Open.OutstandingRequestCount and
    # Open.OutstandingPreRequestCount (3.3.5.2.10), with a generation that
    # grows whenever ChannelSequence moves on, so a request counted under an
    # older one is uncounted from the "pre" count when it ends.
    channel_sequence: int = 0
    outstanding: int = 0
    pre_outstanding: int = 0
    channel_generation: int = 0

    @property
    def ino(self) -> int:
        """What share modes, leases and locks know the open's file by (a stream has its own)."""
        assert self.node is not None
        return self.node.ino

    @property
    def file_ino(self) -> int:
        """The inode, for the vfs: a stream's file's."""
        assert self.node is not None
        return self.node.base if self.node.stream is not None else self.node.ino

    @property
    def stream(self) -> str | None:
        return self.node.stream if self.node is not None else None

    @property
    def origin(self) -> Origin:
        """
        What the vfs checks this open's I/O as: its own locks and share
        reservation, and every lock of others (SMB honours NLM's and NFSv4's
        locks on its I/O, as Samba does with POSIX locks).
        """
        return Origin(owner=self.lock_owner, share=self.share, strict=True, exempt=self.exempt)

    @property
    def exempt(self) -> tuple[LeaseKey, ...]:
        """
        The lease keys this open's own changes never break: its lease (and
        the parent directory lease it names), or its oplock when that caches
        writes; a level II oplock is broken by its own open's writes, as on
        Windows and Samba.
        """
        sl = self.lease
        if sl is not None:
            if sl.parent is not None:
                return (sl.lease_key, LeaseKey("smb", sl.client, sl.parent))
            return (sl.lease_key,)
        m = self.oplock_mlease
        if m is not None and self.oplock in (0x08, 0x09):
            return (m.key,)
        return ()


@attrs.define
class Reply:
    """A handler's answer: a status (success or a warning such as BUFFER_OVERFLOW) and a body."""

    body: Body
    status: int = 0


@attrs.define(eq=False)
class Chain:
    """
    What the requests of one compound pass on to the related ones after them
    (MS-SMB2 3.3.5.2.7.2, as Samba keeps it): the session and tree the last
    request found, the FileId it used or made, the error of a failed CREATE.

    @ivar responses: the pieces of the replies built so far, in order (an
        interim reply joins them); sent together with one C{sendmsg}.
    """

    responses: Parts = attrs.Factory(list)
    session: Session | None = None
    tree: Tree | None = None
    file_id: FileId | None = None
    create_error: int = 0
    #: What the compound holds of the connection's bounds (the server's C{_Flight}).
    flight: Any = None


@attrs.define(eq=False)
class Request:
    """
    One request being served.

    @ivar raw: the request's bytes, header first (offsets count from there).
    @ivar encrypted: it arrived in a TRANSFORM_HEADER message.
    @ivar last_in_chain: it is the last request of its compound (only such
        requests may go asynchronous).
    @ivar async_id: set once an interim STATUS_PENDING reply went out.
    @ivar waiting: the Deferred a blocked handler awaits; CANCEL cancels it.
    """

    header: Header
    raw: memoryview
    session: Session | None = None
    tree: Tree | None = None
    encrypted: bool = False
    last_in_chain: bool = True
    related_file_id: FileId | None = None
    async_id: int = 0
    waiting: defer.Deferred[Any] | None = None
    cancelled: bool = False
    result_file_id: FileId | None = None
    related: bool = False
    chain: Chain = attrs.Factory(lambda: Chain())
    interim_sent: bool = False
    # Sign the reply although the request was not signed (final SESSION_SETUP).
    sign_reply: bool = False
    # Never sign the reply (SESSION_SETUP legs before the keys exist).
    no_sign: bool = False
    # 3.1.1: the session's preauth hash takes in this reply.
    preauth_reply: PreauthHash | None = None
    # Sign the reply with this signer rather than the channel's (a session
    # binding before the channel has keys of its own).
    sign_with: Signer | None = None
    # A re-authentication on a channel other than the session's first.
    reauth_elsewhere: bool = False
    # Answer USER_SESSION_DELETED signed with C{sign_with} (a session just ended).
    sign_deleted: bool = False
    # The open whose outstanding requests count this one (MS-SMB2 3.3.5.2.10),
    # and its channel generation then.
    channel_open: Any = None
    channel_generation: int = 0
