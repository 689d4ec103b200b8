# -*- test-case-name: tests.smb.test_server -*-
"""
The SMB2/3 server: direct-TCP framing, the connection and session state
machines, credits, signing and encryption, compounds, asynchronous replies,
and the protocol-level commands (NEGOTIATE, LOGOFF, TREE_CONNECT,
TREE_DISCONNECT, ECHO, CANCEL, and the IOCTLs about the connection).
SESSION_SETUP is L{claudefs_gateway.smb.logon.SessionSetup}'s; file commands
are L{claudefs_gateway.smb.files.FileService}'s.

Shape (STYLE.md §6): L{SMBConnection} is the Protocol, one per TCP
connection, holding sessions, trees and opens; L{SMBFactory} holds what
connections share (the vfs, the server GUID, session ids, the files every
connection's opens point at, the failed-logon limiter) and tracks live
connections so the drain can close them.

Robustness rules this module keeps:

  - a frame longer than C{smb.max_message_size} closes the connection before
    it is buffered; no parser sees bytes beyond its message;
  - nothing escapes L{SMBConnection.dataReceived}: a request that fails to
    parse is answered with STATUS_INVALID_PARAMETER, a handler bug with
    STATUS_INTERNAL_ERROR and a logged traceback;
  - credits are enforced: a MessageId outside the window the server granted
    (a replay, or a client ignoring its credits) closes the connection
    (MS-SMB2 3.3.5.2.3), and a request whose CreditCharge does not cover its
    payload fails with STATUS_INVALID_PARAMETER (3.3.5.2.5);
  - a bad signature is STATUS_ACCESS_DENIED, an undecryptable message closes
    the connection.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from typing_extensions import override

from zope.interface import implementer

from claudefs_gateway import errors
from claudefs_gateway.core.authlimit import AuthFailureLimiter
from claudefs_gateway.core.directsend import DirectSender
from claudefs_gateway.core.eager import eager
from claudefs_gateway.core.log import Logger, Sampler
from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.interfaces import IVFS
from claudefs_gateway.smb import constants as c
from claudefs_gateway.smb import ntstatus as st
from claudefs_gateway.smb.auth import initial_token
from claudefs_gateway.smb.constants import Command
from claudefs_gateway.smb.crypto import DecryptError, PreauthHash
from claudefs_gateway.smb.errors import SMBError, status_for
from claudefs_gateway.smb.header import (
    HEADER_STRUCT,
    Header,
    Reader,
    TransformHeader,
    error_body,
    smb1_dialects,
    split_compound,
)
from claudefs_gateway.smb.info import to_filetime
from claudefs_gateway.smb.logon import SessionSetup
from claudefs_gateway.smb.messages import (
    SIMPLE_BODY,
    IoctlRequest,
    NegotiateRequest,
    TreeConnectRequest,
    pack_ioctl_response,
    pack_negotiate_context,
    pack_negotiate_response,
    pack_tree_connect_response,
)
from claudefs_gateway.smb.negotiate import ConnectionMachine, Negotiated, choose
from claudefs_gateway.smb.security import IdMap
from claudefs_gateway.smb.state import Body, Chain, Parts, Reply, Request, Session, Tree

__all__ = ["SMBFactory", "SMBConnection", "MAX_CREDITS", "MAX_IO"]

MAX_IO = 8 * 1024 * 1024
# Samba's "smb2 max credits"; what a client may have outstanding.
MAX_CREDITS = 8192
# The payload one credit pays for (MS-SMB2 3.1.5.2: CreditCharge is the
# payload in 64 KiB units).
CREDIT_BYTES = 65536
# Commands whose reply carries (up to) the payload size the request names: what
# they may return counts against the connection's queued bytes before it is served.
_REPLY_PAYLOAD = frozenset(
    {
        Command.READ,
        Command.IOCTL,
        Command.QUERY_DIRECTORY,
        Command.CHANGE_NOTIFY,
        Command.QUERY_INFO,
    }
)
# Header and fixed part of any reply, counted for every request.
_REPLY_OVERHEAD = 128
# Zero padding to an 8-byte boundary, by length (a compound's replies, MS-SMB2 3.3.4.1.3).
_PADDING = tuple(bytes(n) for n in range(8))
ALL_ONES = 0xFFFFFFFFFFFFFFFF
NULL_FILE_ID = (ALL_ONES, ALL_ONES)
_CREDIT_FREE = frozenset({Command.CANCEL})
# Requests the rate limits apply to: the work on files. Never NEGOTIATE,
# SESSION_SETUP, LOGOFF, CANCEL, ECHO, CLOSE or TREE_DISCONNECT: refusing those
# would keep resources held, not save any.
_RATE_LIMITED = frozenset(
    {
        Command.TREE_CONNECT,
        Command.CREATE,
        Command.FLUSH,
        Command.READ,
        Command.WRITE,
        Command.LOCK,
        Command.IOCTL,
        Command.QUERY_DIRECTORY,
        Command.CHANGE_NOTIFY,
        Command.QUERY_INFO,
        Command.SET_INFO,
    }
)
_NO_SESSION = frozenset({Command.NEGOTIATE, Command.SESSION_SETUP})
_SESSION_OPTIONAL = frozenset({Command.ECHO, Command.CANCEL})
_NEEDS_TREE = frozenset(
    {
        Command.TREE_DISCONNECT,
        Command.CREATE,
        Command.CLOSE,
        Command.FLUSH,
        Command.READ,
        Command.WRITE,
        Command.LOCK,
        Command.IOCTL,
        Command.QUERY_DIRECTORY,
        Command.CHANGE_NOTIFY,
        Command.QUERY_INFO,
        Command.SET_INFO,
    }
)
_OP_NAMES = {int(cmd): cmd.name.lower() for cmd in Command}
# The handler of each command, by name (``smb_`` + its MS-SMB2 name): looked
# up by number, as a Command() call and a string concatenation per request
# cost more than the handler's own checks.
_HANDLER_NAMES = {int(cmd): "smb_" + cmd.name for cmd in Command}
_ALLOWED_FLAGS = (
    c.SMB2_FLAGS_RELATED_OPERATIONS
    | c.SMB2_FLAGS_SIGNED
    | c.SMB2_FLAGS_PRIORITY_MASK
    | c.SMB2_FLAGS_DFS_OPERATIONS
    | c.SMB2_FLAGS_REPLAY_OPERATION
)


def server_capabilities(
    dialect: int,
    negotiated: Negotiated | None,
    directory_leases: bool = False,
    multichannel: bool = False,
    persistent: bool = False,
) -> int:
    """
    The Capabilities of our NEGOTIATE response (MS-SMB2 3.3.5.4): large MTU
    and leasing from 2.1, directory leasing from 3.0 when configured,
    persistent handles from 3.0 when a share is continuously available
    (C{ca: true}), encryption for 3.0 and 3.0.2 clients that can (3.1.1 says
    so with a negotiate context).
    """
    caps = 0
    if dialect not in (c.SMB_2_0_2, c.SMB_2_WILDCARD):
        caps |= c.SMB2_GLOBAL_CAP_LARGE_MTU | c.SMB2_GLOBAL_CAP_LEASING
    if dialect >= c.SMB_3_0 and directory_leases:
        caps |= c.SMB2_GLOBAL_CAP_DIRECTORY_LEASING
    if dialect >= c.SMB_3_0 and multichannel:
        caps |= c.SMB2_GLOBAL_CAP_MULTI_CHANNEL
    if dialect >= c.SMB_3_0 and persistent:
        caps |= c.SMB2_GLOBAL_CAP_PERSISTENT_HANDLES
    if (
        negotiated is not None
        and negotiated.dialect in (c.SMB_3_0, c.SMB_3_0_2)
        and negotiated.cipher
    ):
        caps |= c.SMB2_GLOBAL_CAP_ENCRYPTION
    return caps


def network_interfaces(smb: Any, local: str, port: int = 0) -> bytes:
    """
    FSCTL_QUERY_NETWORK_INTERFACE_INFO's answer (MS-SMB2 2.2.32.5): the
    interfaces of C{smb.interfaces} (or, with none configured, the address
    the client reached), ordered by C{smb.multichannel.channel_selection}:
    C{weighted_by_speed} fastest first, C{prefer_rdma} RDMA-capable first,
    C{round_robin} as configured; with C{prefer_rdma: true} RDMA-capable ones
    lead in any order. A client opens its extra channels in that order. The
    port in each address is the one the client reached (our listener's),
    so clients that use it find the same service.
    """
    mc = smb.multichannel
    entries: list[tuple[str, int, bool, bool]] = [
        (i.ip, i.link_speed_mbps, i.capabilities.rdma, i.capabilities.rss) for i in smb.interfaces
    ]
    if not entries and local:
        entries = [(local, 10_000, False, False)]
    if mc.channel_selection == "weighted_by_speed":
        entries.sort(key=lambda e: -e[1])
    if mc.channel_selection == "prefer_rdma" or mc.prefer_rdma:
        entries.sort(key=lambda e: not e[2])
    out = bytearray()
    for index, (ip, mbps, rdma, rss) in enumerate(entries, 1):
        caps = (0x1 if rss else 0) | (0x2 if rdma else 0)
        addr = ipaddress.ip_address(ip)
        if addr.version == 4:
            sockaddr = struct.pack("<H", 0x0002) + struct.pack(">H", port) + addr.packed
        else:
            sockaddr = (
                struct.pack("<H", 0x0017)
                + struct.pack(">H", port)
                + struct.pack("<I16sI", 0, addr.packed, 0)
            )
        entry = struct.pack("<IIIIQ", 0, index, caps, 0, mbps * 1_000_000)
        entry += sockaddr + b"\x00" * (128 - len(sockaddr))
        if out:
            struct.pack_into("<I", out, len(out) - 152, 152)
        out += entry
    return bytes(out)


#: The commands L{payload_size} measures (for any other it is 0, which any
#: CreditCharge covers).
_PAYLOAD_COMMANDS = frozenset(
    {
        Command.READ,
        Command.WRITE,
        Command.IOCTL,
        Command.QUERY_DIRECTORY,
        Command.CHANGE_NOTIFY,
        Command.QUERY_INFO,
        Command.SET_INFO,
    }
)


def payload_size(command: int, raw: memoryview) -> int:
    """
    The larger of what a request sends and may receive (MS-SMB2 3.3.5.2.5),
    for checking its CreditCharge; 0 for commands that carry no payload.
    (Read with C{struct}, not a L{Reader}: asked twice of each such request.)
    """
    try:
        if command == Command.WRITE or command == Command.READ:
            return _U32.unpack_from(raw, 68)[0]  # type: ignore[no-any-return]
        if command == Command.QUERY_DIRECTORY:
            return _U32.unpack_from(raw, 92)[0]  # type: ignore[no-any-return]
        if command == Command.QUERY_INFO:
            out, _, inp = _QUERY_INFO_SIZES.unpack_from(raw, 68)
            return max(out, inp)  # type: ignore[no-any-return]
        if command == Command.IOCTL:
            a, b, _, d, e = _IOCTL_SIZES.unpack_from(raw, 92)
            return max(a, b, d, e)  # type: ignore[no-any-return]
        if command == Command.CHANGE_NOTIFY or command == Command.SET_INFO:
            return _U32.unpack_from(raw, 68)[0]  # type: ignore[no-any-return]
    except struct.error:
        return 0
    return 0


_U32 = struct.Struct("<I")
# QUERY_INFO: OutputBufferLength, InputBufferOffset and Reserved, InputBufferLength.
_QUERY_INFO_SIZES = struct.Struct("<III")
# IOCTL from body offset 28: InputCount, MaxInputResponse, OutputOffset, OutputCount, MaxOutputResponse.
_IOCTL_SIZES = struct.Struct("<IIIII")


class CreditWindow:
    """
    The MessageIds a client may use next (MS-SMB2 3.3.1.1 CommandSequenceWindow).

    Ids below C{low} are used; ids in [low, high) are granted, C{used} holds
    those among them already used. Memory is bounded by C{limit}.
    """

    def __init__(self, limit: int = MAX_CREDITS) -> None:
        self.low = 0
        self.high = 1
        self.used: set[int] = set()
        self.limit = limit

    @property
    def outstanding(self) -> int:
        return self.high - self.low - len(self.used)

    def consume(self, first: int, count: int) -> bool:
        """Take ids C{first}..C{first+count-1}; False if any is not granted or already used."""
        last = first + count
        if first < self.low or last > self.high:
            return False
        used = self.used
        if first == self.low and not used:
            # In order with nothing used ahead (almost every message): the
            # window's bottom moves past the ids, nothing to remember.
            self.low = last
            return self.high - self.low <= 2 * self.limit
        ids = range(first, last)
        if not used.isdisjoint(ids):
            return False
        used.update(ids)
        low = self.low
        while low in used:
            used.discard(low)
            low += 1
        self.low = low
        # A client that leaves an id unused forever holds the window open:
        # past twice the limit it is not following the protocol.
        return self.high - self.low <= 2 * self.limit

    def grant(self, requested: int) -> int:
        """
        Grant up to C{requested} credits within the limit; never leave the
        client with none (MS-SMB2 3.3.1.2).
        """
        room = max(self.limit - self.outstanding, 0)
        n = min(requested, room)
        if n == 0 and self.outstanding == 0:
            n = 1
        self.high += n
        return n


class SMBFactory(protocol.Factory):
    """
    Shared state of the SMB front end (see module docstring).

    @param vfs_ready: returns a Deferred firing with the open vfs.
    @param activity: connection and request accounting for the drain.
    @param metrics: a L{RequestMetrics} for protocol C{smb}.
    """

    #: The gateway-wide L{claudefs_gateway.core.budget.MemoryBudget}, or None.
    budget: Any = None

    #: The request-rate hook, C{admit(address, uid)}: returns, or raises
    #: L{errors.Throttled} (answered STATUS_IO_TIMEOUT). Set by the SMB service.
    admit: Any = None

    _log = Logger()

    def __init__(
        self,
        config: Any,
        vfs_ready: Callable[[], defer.Deferred[Any]],
        reactor: Any,
        *,
        metrics: Any = None,
        activity: Any = None,
        limiter: AuthFailureLimiter | None = None,
        domain_sid: Any = None,
        domain_secret: Callable[[], bytes] | None = None,
        computer: str | None = None,
    ) -> None:
        from claudefs_gateway.smb.durable import Durability
        from claudefs_gateway.smb.files import FileService
        from claudefs_gateway.smb.leasing import Leasing
        from claudefs_gateway.smb.security import SID, derive_domain_sid

        self.config = config
        self.smb = config.smb
        self.reactor = reactor
        self._vfs_ready = vfs_ready
        self.vfs: IVFS | None = None
        self.metrics = metrics
        self.activity = activity
        self.limiter = limiter or AuthFailureLimiter(reactor)
        #: Protocol violations are logged at most once a minute per client host.
        self.bad_input_log = Sampler(clock=reactor.seconds)
        self.server_guid = uuid.uuid4().bytes_le
        self.start_time = to_filetime(int(reactor.seconds() * 1e9))
        self.computer = (computer or socket.gethostname().split(".")[0] or "CLAUDEFS").upper()[:15]
        sid = domain_sid
        if sid is None and self.smb.domain_sid:
            sid = SID.parse(self.smb.domain_sid)
        self.domain_sid = sid
        self._domain_secret = domain_secret or (lambda: os.urandom(32))
        self._derive_sid = derive_domain_sid
        self.idmap: IdMap | None = None
        self.connections: set[SMBConnection] = set()
        # Every established session by id, whatever connection it is on
        # (session binding and PreviousSessionId look them up here).
        self.sessions: dict[int, Session] = {}
        # Recently ended sessions' signers by id and channel, so that a signed
        # request naming one is told USER_SESSION_DELETED signed (clients check).
        self.ended: OrderedDict[int, dict[int, Any]] = OrderedDict()
        self.max_io = max(4096, min(MAX_IO, (self.smb.max_message_size - 1024) // 4096 * 4096))
        self._next_session = int.from_bytes(os.urandom(4), "little") << 16 or 1
        self._next_async = 1
        self._next_file = 1
        self._next_conn = 0
        self.files = FileService(self)
        self.leasing = Leasing(self)
        self.durability = Durability(self)
        #: A continuously available share is served: NEGOTIATE offers persistent handles.
        self.any_ca = any(e.ca and "smb" in e.protocols for e in config.all_exports())

    def buildProtocol(self, addr: Any) -> SMBConnection:  # type: ignore[override]
        p = SMBConnection(self)
        self._next_conn += 1
        p.seq = self._next_conn
        p.factory = self
        return p

    async def get_vfs(self) -> IVFS:
        if self.vfs is None:
            vfs = await self._vfs_ready()
            if self.vfs is None:
                self.vfs = vfs
                if self.domain_sid is None:
                    # Read once the store is open (the secret file exists by then).
                    self.domain_sid = self._derive_sid(self._domain_secret())
                users = vfs.users

                def known_uid(uid: int) -> bool:
                    return users.by_uid(uid) is not None

                def known_gid(gid: int) -> bool:
                    return any(gid == u.gid or gid in u.groups for u in users.all())

                self.idmap = IdMap(self.domain_sid, known_uid, known_gid)
        return self.vfs

    @property
    def open_vfs(self) -> IVFS:
        """The vfs, once a request has waited for it (file operations run only after that)."""
        if self.vfs is None:
            raise SMBError(st.STATUS_INTERNAL_ERROR, "no vfs yet")
        return self.vfs

    def client_connections(self, client_guid: bytes) -> list[SMBConnection]:
        """
        The live connections of one client (by its ClientGuid), oldest first:
        its lease breaks go to the first (as Samba and Windows send them).
        """
        conns = [
            conn
            for conn in self.connections
            if not conn._closing and conn.negotiated is not None and conn.client_guid == client_guid
        ]
        conns.sort(key=lambda conn: conn.seq)
        return conns

    def new_session_id(self) -> int:
        self._next_session = (self._next_session + 0x10001) & 0xFFFFFFFFFFFF
        return self._next_session or 1

    def new_async_id(self) -> int:
        self._next_async += 1
        return self._next_async

    def new_file_id(self) -> tuple[int, int]:
        """
        A FileId: a random persistent part (durable handles outlive this run,
        so ids must not repeat across runs) and a volatile counter.
        """
        self._next_file += 1
        return (self.durability.new_persistent_id(), self._next_file)

    def observe(self, op: str, seconds: float, status: int) -> None:
        if self.metrics is not None:
            if not status:
                self.metrics.observe(op, seconds)
                return
            failed = status not in (
                st.STATUS_SUCCESS,
                st.STATUS_MORE_PROCESSING_REQUIRED,
                st.STATUS_BUFFER_OVERFLOW,
                st.STATUS_NO_MORE_FILES,
                st.STATUS_PENDING,
                st.STATUS_NOTIFY_ENUM_DIR,
            )
            self.metrics.observe(op, seconds, st.name(status) if failed else None)


class _Flight:
    """What one compound holds of its connection's bounds until it is answered or goes async."""

    __slots__ = ("size", "held")

    def __init__(self, size: int) -> None:
        self.size = size
        self.held = True


@implementer(IPushProducer)
class SMBConnection(SessionSetup, protocol.Protocol):
    """
    One SMB client connection (see module docstring).

    Bounds (issue 19): the connection is the transport's push producer, so it
    learns when the client leaves replies unread; it then stops reading
    requests (TCP back-pressure), as it does when C{smb.max_requests_per_connection}
    requests are being served or C{smb.max_queued_bytes_per_connection} bytes
    of requests and the replies they may return are held. While backed up it
    grants credits only for the room left (L{_grant}). A
    connection without a session after C{smb.setup_timeout_secs}, or with a
    message left half-sent that long, is closed; so is one idle for
    C{smb.idle_timeout_secs} holding no open file but durable ones (Samba's
    C{deadtime}; durable handles survive the disconnect, MS-SMB2 3.3.7.1).
    """

    _log = Logger()
    factory: SMBFactory

    def __init__(self, factory: SMBFactory) -> None:
        self.factory = factory
        self.machine = ConnectionMachine(self)
        # The machine's input, bound once: Automat builds the bound input
        # anew on every attribute access, a cost per request otherwise.
        self._request_input = self.machine.request
        self._buf = bytearray()
        # Replies go straight to the socket while the transport has nothing
        # queued (core/directsend.py): no reactor turn and no epoll change
        # per reply, as NFS replies do.
        self._direct: DirectSender | None = None
        self.credits = CreditWindow()
        self.negotiated: Negotiated | None = None
        self.preauth: PreauthHash | None = None
        self.sessions: dict[int, Session] = {}
        self.opens: dict[int, Any] = {}
        self._pending: dict[int, Request] = {}  # by MessageId
        self._async: dict[int, Request] = {}  # by AsyncId
        self._work: set[defer.Deferred[None]] = set()
        self.peer = ""
        self.conn_id = f"{id(self):x}"
        self.seq = 0
        self._closing = False
        # Flow control (see the class docstring).
        self._in_flight = 0  # bytes held by compounds being served
        self._requests = 0  # compounds being served (not gone asynchronous)
        self._output_paused = False  # the client leaves replies unread
        self._reading_paused = False
        self._budgeted = 0  # bytes reserved in the gateway-wide memory budget
        # Timeouts: when the connection was made, last had a request, and
        # since when a message has been half-received.
        self._made_at = 0.0
        self._last_active = 0.0
        self._partial_since: float | None = None
        self._watch: Any = None

    @property
    def client_guid(self) -> bytes:
        """The ClientGuid the client negotiated with (its leases are scoped by it)."""
        n = self.negotiated
        return n.client_guid if n is not None else b""

    @property
    def dialect(self) -> int:
        n = self.negotiated
        return n.dialect if n is not None else 0

    @property
    def multichannel(self) -> bool:
        """Connection.SupportsMultiChannel: both sides offered it at SMB 3."""
        n = self.negotiated
        return bool(
            n is not None
            and n.dialect >= c.SMB_3_0
            and n.client_capabilities & c.SMB2_GLOBAL_CAP_MULTI_CHANNEL
            and self.factory.smb.multichannel.enabled
        )

    def send_break(self, session_id: int, body: bytes) -> bool:
        """
        Send an oplock or lease break notification (MS-SMB2 3.3.4.6, 3.3.4.7):
        unsolicited, MessageId all ones, no credits, unsigned (as Samba sends
        them). False if this connection cannot carry it.
        """
        if self._closing or self.transport is None or self.negotiated is None:
            return False
        header = Header(
            Command.OPLOCK_BREAK,
            flags=c.SMB2_FLAGS_SERVER_TO_REDIR,
            message_id=ALL_ONES,
            session_id=session_id,
        )
        self._write(header.pack() + body)
        return True

    def describe(self) -> dict[str, Any]:
        """This connection for C{cfs-gateway status} (L{claudefs_gateway.core.clients})."""
        sessions = [s for s in self.sessions.values() if s.valid]
        users = sorted({s.user for s in sessions if s.user})
        n = self.negotiated
        return {
            "user": ",".join(users) or None,
            "uid": next((s.uid for s in sessions if s.uid >= 0), None),
            "dialect": f"SMB {c.DIALECT_NAMES.get(n.dialect, '?')}" if n is not None else None,
            "opens": len(self.opens),
            "leases": sum(1 for op in self.opens.values() if op.lease is not None or op.oplock),
            "lock_client": ["smb", self.conn_id],
            "sessions": len(sessions),
            "shares": sorted({t.name for s in sessions for t in s.trees.values()}),
            "encrypted": any(s.encrypt_data for s in sessions),
        }

    # -- transport ---------------------------------------------------------------

    @override
    def connectionMade(self) -> None:
        assert self.transport is not None
        peer = self.transport.getPeer()
        self.peer = getattr(peer, "host", "") or ""
        self.factory.connections.add(self)
        self._direct = DirectSender.for_transport(self.transport)
        if self.factory.activity is not None:
            self.factory.activity.connection_made(self)
        transport: Any = self.transport
        transport.registerProducer(self, True)
        self._made_at = self._last_active = self.factory.reactor.seconds()
        self._arm_watch()
        self._log.debug("smb connection from {peer}", peer=self.peer, conn_id=self.conn_id)

    @override
    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._closing = True
        w, self._watch = self._watch, None
        if w is not None and w.active():
            w.cancel()
        self.machine.lost()
        for d in list(self._work):
            d.cancel()
        for req in list(self._pending.values()):
            if req.waiting is not None:
                req.waiting.cancel()
        self._pending.clear()
        self._async.clear()
        for session in list(self.sessions.values()):
            if not self._fail_over(session):
                self._end_session(session, keep_durable=True)
        self.sessions.clear()
        self.factory.connections.discard(self)
        if self.factory.activity is not None:
            self.factory.activity.connection_lost(self)
        self._log.debug("smb connection from {peer} closed", peer=self.peer, conn_id=self.conn_id)

    @override
    def dataReceived(self, data: bytes) -> None:
        try:
            self._data(data)
        except Exception:
            self._log.failure("smb: unexpected error on data from {peer}", peer=self.peer)
            self.drop("internal error")

    def _data(self, data: bytes) -> None:
        if self._closing:
            return
        buf = self._buf
        buf += data
        self._take_frames()

    def _take_frames(self) -> None:
        """Serve the complete messages buffered, while the connection's bounds allow."""
        buf = self._buf
        limit = self.factory.smb.max_message_size
        while len(buf) >= 4 and not self._closing:
            if self._backed_up():
                self._pause_reading()
                return
            kind = buf[0]
            length = int.from_bytes(buf[1:4], "big")
            if kind == 0x85 and length == 0:  # NetBIOS keep-alive
                del buf[:4]
                continue
            if kind != 0:
                self.machine.violation(f"not a direct-TCP session message (type {kind:#x})")
                return
            if length > limit + 52:
                self.machine.violation(f"message of {length} bytes exceeds max_message_size")
                return
            if len(buf) < 4 + length:
                break
            # One copy (a bytearray slice would be a second): the frame is
            # immutable from here, so a WRITE's data is handed on as a view.
            with memoryview(buf) as view:
                frame = bytes(view[4 : 4 + length])
            del buf[: 4 + length]
            self._last_active = self.factory.reactor.seconds()
            self._frame(frame)
        if buf:
            if self._partial_since is None:
                self._partial_since = self.factory.reactor.seconds()
        else:
            self._partial_since = None
        if self._backed_up():
            self._pause_reading()
        elif self._reading_paused:
            self._resume_reading()

    # -- bounds ---------------------------------------------------------------------------

    def _backed_up(self) -> bool:
        """Whether to stop taking requests: the client is not reading, or a bound is reached."""
        smb = self.factory.smb
        return (
            self._output_paused
            or self._requests >= smb.max_requests_per_connection
            or self._in_flight >= smb.max_queued_bytes_per_connection
        )

    def _pause_reading(self) -> None:
        if not self._reading_paused and not self._closing and self.transport is not None:
            self._reading_paused = True
            IPushProducer(self.transport).pauseProducing()

    def _resume_reading(self) -> None:
        if self._reading_paused and not self._closing and self.transport is not None:
            self._reading_paused = False
            IPushProducer(self.transport).resumeProducing()

    def _drained(self) -> None:
        """A bound eased: serve what is buffered, and read again if nothing holds us."""
        if self._closing:
            return
        if self._buf:
            self._take_frames()
        elif self._reading_paused and not self._backed_up():
            self._resume_reading()

    def _land(self, flight: _Flight) -> None:
        """Give back what a compound held (when answered, or once it went asynchronous)."""
        if not flight.held:
            return
        flight.held = False
        self._requests -= 1
        self._in_flight -= flight.size
        if self._budgeted:
            budget = self.factory.budget
            n = min(self._budgeted, flight.size)
            self._budgeted -= n
            if budget is not None:
                budget.release(n)
        self._drained()

    # IPushProducer: the transport says when the client stops and starts reading replies.
    def pauseProducing(self) -> None:
        self._output_paused = True
        self._pause_reading()

    def resumeProducing(self) -> None:
        self._output_paused = False
        self._drained()

    def stopProducing(self) -> None:
        self._closing = True

    # -- timeouts ---------------------------------------------------------------------------

    def _arm_watch(self) -> None:
        smb = self.factory.smb
        steps = [t for t in (smb.setup_timeout_secs, smb.idle_timeout_secs) if t > 0]
        if not steps or self._closing:
            return
        # Check at a tenth of the shortest timeout: a deadline is kept within 10 %.
        self._watch = self.factory.reactor.callLater(max(min(steps) / 10, 0.5), self._check)

    def _check(self) -> None:
        self._watch = None
        if self._closing:
            return
        smb = self.factory.smb
        now = self.factory.reactor.seconds()
        why = None
        setup = smb.setup_timeout_secs
        if setup > 0:
            if now - self._made_at >= setup and not any(s.valid for s in self.sessions.values()):
                why = "no session"
            elif self._partial_since is not None and now - self._partial_since >= setup:
                why = "a message left incomplete"
        idle = smb.idle_timeout_secs
        if (
            why is None
            and idle > 0
            and now - self._last_active >= idle
            and not self._requests
            and not self._async
            and all(getattr(op, "durable", False) for op in self.opens.values())
        ):
            why = "idle"
        if why is None:
            self._arm_watch()
            return
        self._log.info(
            "smb: closing connection from {peer}: {why} (timeout)",
            peer=self.peer,
            why=why,
            conn_id=self.conn_id,
        )
        if self.factory.metrics is not None:
            self.factory.metrics.rejected("timeout")
        self._closing = True
        assert self.transport is not None
        abort = getattr(self.transport, "abortConnection", self.transport.loseConnection)
        abort()

    def drop(self, why: str) -> None:
        """Close the connection after a protocol violation (logged with the peer)."""
        if not self._closing:
            held = self.factory.bad_input_log.admit(self.peer)
            if held is not None:
                self._log.warn(
                    "smb: closing connection from {peer}: {why}"
                    " ({held} more from this host since the last such line; at most one a minute)",
                    peer=self.peer,
                    why=why,
                    held=held,
                )
            if self.factory.metrics is not None:
                self.factory.metrics.rejected("protocol")
        self._closing = True
        if self.transport is not None:
            self.transport.loseConnection()

    def _write(self, payload: bytes | bytearray) -> None:
        self._write_parts([payload])

    def _write_parts(self, parts: Parts) -> None:
        """
        Send one message given in pieces (a READ reply: its header, its data
        where the store read it), behind its 4-byte direct-TCP length
        (MS-SMB2 2.1): one C{sendmsg} while the transport has nothing queued,
        as NFS replies go (L{DirectSender}); what the kernel does not take
        goes through the transport, which takes only C{bytes}.
        """
        if self.transport is None:
            return
        size = 0
        for p in parts:
            size += len(p)
        out: Parts = [size.to_bytes(4, "big"), *parts]
        if self._direct is not None:
            out = self._direct.send(out, 4 + size)
            if not out:
                return
        self.transport.writeSequence([p if type(p) is bytes else bytes(p) for p in out])

    # -- framing into messages ------------------------------------------------------

    def _frame(self, frame: bytes) -> None:
        magic = frame[:4]
        if magic == c.SMB1_MAGIC:
            try:
                dialects = smb1_dialects(frame)
            except ProtocolError as e:
                self.machine.violation(str(e))
                return
            if b"SMB 2.???" not in dialects:
                # Only clients that can go on with an SMB2 NEGOTIATE are served (SMB1 is not).
                self.machine.violation("SMB1 NEGOTIATE without the SMB 2.??? dialect")
                return
            self.machine.smb1_negotiate(frame)
            return
        transform_session: Session | None = None
        if magic == c.TRANSFORM_MAGIC:
            try:
                frame, transform_session = self._decrypt(frame)
            except ProtocolError as e:
                self.machine.violation(str(e))
                return
        elif magic != c.SMB2_MAGIC:
            self.machine.violation("not an SMB2 message")
            return
        try:
            items = split_compound(frame)
        except ProtocolError as e:
            self.machine.violation(str(e))
            return
        first = items[0][0]
        if first.command == Command.NEGOTIATE and not first.flags & c.SMB2_FLAGS_SERVER_TO_REDIR:
            if len(items) > 1 or transform_session is not None:
                self.machine.violation("NEGOTIATE in a compound or encrypted")
                return
            self._negotiate(first, frame)
            return
        if self.machine.serving:
            # Negotiated: the machine's answer to a request is this dispatch.
            self.dispatch((items, transform_session))
        else:
            self._request_input((items, transform_session))

    def _decrypt(self, frame: bytes) -> tuple[bytes, Session]:
        n = self.negotiated
        if n is None or n.dialect < c.SMB_3_0:
            raise ProtocolError("TRANSFORM_HEADER before SMB 3 was negotiated")
        header = TransformHeader.unpack(frame)
        session = self.sessions.get(header.session_id)
        if session is None or session.sealer is None:
            raise ProtocolError("encrypted message for an unknown session")
        try:
            plain = session.sealer.decrypt(header, frame)
        except DecryptError:
            raise
        if plain[:4] != c.SMB2_MAGIC:
            raise ProtocolError("encrypted payload is not SMB2")
        return plain, session

    # -- ConnectionMachine actions ----------------------------------------------------

    def answer_smb1(self, data: bytes) -> None:
        # MS-SMB2 3.3.5.3.1: answer with an SMB2 NEGOTIATE response for the
        # wildcard dialect 0x02FF; the client then sends an SMB2 NEGOTIATE.
        # (Only clients offering "SMB 2.???" get here.) The request counts as
        # MessageId 0.
        if not self.credits.consume(0, 1):
            self.drop("credits")
            return
        body = self._negotiate_body(c.SMB_2_WILDCARD, [])
        header = Header(
            Command.NEGOTIATE, flags=c.SMB2_FLAGS_SERVER_TO_REDIR, credits=self.credits.grant(1)
        )
        self._write(header.pack() + body)

    def _negotiate(self, header: Header, frame: bytes) -> None:
        if not self.credits.consume(header.message_id, 1):
            self.machine.violation("NEGOTIATE with a MessageId not granted")
            return
        try:
            req = NegotiateRequest.parse(frame)
            negotiated = choose(
                req, encryption=self.factory.smb.encrypt != "off", salt=os.urandom(32)
            )
        except ProtocolError:
            self.machine.negotiate_failed((header, st.STATUS_INVALID_PARAMETER))
            return
        except SMBError as e:
            self.machine.negotiate_failed((header, e.status))
            return
        self._negotiate_header = header
        self._negotiate_frame = frame
        self.machine.smb2_negotiate(negotiated)

    def _negotiate_body(self, dialect: int, contexts: list[bytes]) -> bytes:
        smb = self.factory.smb
        mode = c.SMB2_NEGOTIATE_SIGNING_ENABLED
        if smb.signing == "required":
            mode |= c.SMB2_NEGOTIATE_SIGNING_REQUIRED
        n = self.negotiated
        caps = server_capabilities(
            dialect,
            n,
            smb.directory_leases,
            smb.multichannel.enabled,
            self.factory.any_ca,
        )
        io = self.factory.max_io if caps & c.SMB2_GLOBAL_CAP_LARGE_MTU else 65536
        return pack_negotiate_response(
            security_mode=mode,
            dialect=dialect,
            server_guid=self.factory.server_guid,
            capabilities=caps,
            max_transact=io,
            max_read=io,
            max_write=io,
            system_time=to_filetime(int(self.factory.reactor.seconds() * 1e9)),
            security_buffer=initial_token(),
            contexts=contexts,
        )

    def answer_negotiate(self, negotiated: Negotiated) -> None:
        self.negotiated = negotiated
        header = self._negotiate_header
        contexts = [pack_negotiate_context(t, d) for t, d in negotiated.contexts]
        body = self._negotiate_body(negotiated.dialect, contexts)
        resp = (
            Header(
                Command.NEGOTIATE,
                flags=c.SMB2_FLAGS_SERVER_TO_REDIR,
                message_id=header.message_id,
                credit_charge=header.credit_charge,
                credits=self.credits.grant(header.credits),
            ).pack()
            + body
        )
        if negotiated.dialect == c.SMB_3_1_1:
            self.preauth = PreauthHash()
            self.preauth.update(self._negotiate_frame)
            self.preauth.update(resp)
        self._log.debug(
            "smb {peer} negotiated {dialect}",
            peer=self.peer,
            dialect=c.DIALECT_NAMES.get(negotiated.dialect, "?"),
        )
        self._write(resp)
        self.factory.observe("negotiate", 0.0, 0)

    def refuse_negotiate(self, failed: Any) -> None:
        header, status = failed
        self._log.info(
            "smb {peer}: NEGOTIATE refused with {status}", peer=self.peer, status=st.name(status)
        )
        resp = Header(
            Command.NEGOTIATE,
            status=status,
            flags=c.SMB2_FLAGS_SERVER_TO_REDIR,
            message_id=header.message_id,
            credits=1,
        )
        self._write(resp.pack() + error_body())
        self.factory.observe("negotiate", 0.0, status)
        self.drop("NEGOTIATE refused")

    # -- requests ---------------------------------------------------------------------

    def dispatch(self, message: Any) -> None:
        items, transform_session = message
        multi = self.negotiated is not None and self.negotiated.multi_credit
        for header, _raw in items:
            if header.command in _CREDIT_FREE:
                continue
            charge = max(header.credit_charge, 1) if multi else 1
            if not self.credits.consume(header.message_id, charge):
                self.drop(
                    f"MessageId {header.message_id} (charge {charge}) outside the credit window"
                )
                return
        # Credits bound requests, not bytes: the compound holds its own bytes
        # and what its replies may carry until it is answered.
        size = 0
        for header, raw in items:
            size += len(raw) + _REPLY_OVERHEAD
            if header.command in _REPLY_PAYLOAD:
                size += payload_size(header.command, raw)
        chain = Chain()
        flight = chain.flight = _Flight(size)
        budget = self.factory.budget
        if budget is not None:
            if not budget.reserve(size, "smb"):
                # The gateway-wide memory budget is spent: refuse, do not queue.
                self._refuse_busy(items, transform_session)
                return
            self._budgeted += size
        self._requests += 1
        self._in_flight += size
        # Stepped eagerly (core/eager.py): a compound answered from memory and
        # the store's already-fired Deferreds (most are) finishes here, with
        # no Deferred, driver or callback built for it.
        try:
            waiting = eager(self._serve_chain(items, transform_session, chain))
        except Exception:
            self._land(flight)
            self._log.failure("smb: request chain failed")
            return
        # (None first: a Deferred is an Awaitable, so isinstance of anything
        # else goes through ABCMeta's check.)
        if waiting is None or not isinstance(waiting, defer.Deferred):
            self._land(flight)
            return
        d = waiting
        self._work.add(d)

        def done(result: Any) -> None:
            self._work.discard(d)
            self._land(flight)
            if isinstance(result, Failure) and not result.check(defer.CancelledError):
                self._log.failure("smb: request chain failed", result)

        d.addBoth(done)

    def _refuse_busy(
        self, items: list[tuple[Header, memoryview]], transform_session: Session | None
    ) -> None:
        """
        Answer every request of a compound STATUS_INSUFFICIENT_RESOURCES unserved
        (the gateway's memory budget is spent; the client retries), signed or
        sealed as its session asks.
        """
        chain = Chain()
        crypt: Session | None = transform_session
        for i, (header, raw) in enumerate(items):
            if header.command == Command.CANCEL:
                continue
            req = Request(
                header,
                raw,
                encrypted=transform_session is not None,
                last_in_chain=i == len(items) - 1,
                related=bool(header.flags & c.SMB2_FLAGS_RELATED_OPERATIONS),
                chain=chain,
            )
            try:
                self._bind(req)
            except SMBError:
                pass
            if crypt is None and req.session is not None and self._must_encrypt(req):
                crypt = req.session
            chain.responses.extend(
                self._response(
                    req,
                    st.STATUS_INSUFFICIENT_RESOURCES,
                    error_body(),
                    last=req.last_in_chain,
                    pad=len(items) > 1,
                )
            )
            chain.session = req.session
            self.factory.observe(
                _OP_NAMES.get(header.command, "unknown"), 0.0, st.STATUS_INSUFFICIENT_RESOURCES
            )
        if chain.responses:
            self._send_chain(chain.responses, crypt)

    async def _serve_chain(
        self,
        items: list[tuple[Header, memoryview]],
        transform_session: Session | None,
        chain: Chain,
    ) -> None:
        crypt_session: Session | None = transform_session
        for i, (header, raw) in enumerate(items):
            if header.command == Command.CANCEL:
                self._cancel(header, raw)
                continue
            req = Request(
                header,
                raw,
                encrypted=transform_session is not None,
                last_in_chain=i == len(items) - 1,
                related=bool(header.flags & c.SMB2_FLAGS_RELATED_OPERATIONS),
                chain=chain,
            )
            status, body = await self._serve(req)
            # (After an interim reply the chain so far went out with it: this
            # request's final reply starts what is left of the compound.)
            sealed = self._must_encrypt(req)
            if crypt_session is None and sealed:
                crypt_session = req.session
            chain.responses.extend(
                self._response(
                    req, status, body, last=req.last_in_chain, pad=len(items) > 1, sealed=sealed
                )
            )
            chain.session, chain.tree = req.session, req.tree
            if req.result_file_id is not None:
                chain.file_id = req.result_file_id
            if header.command == Command.CREATE:
                chain.create_error = status if status & 0xC0000000 == 0xC0000000 else 0
        if chain.responses:
            self._send_chain(chain.responses, crypt_session)

    def _must_encrypt(self, req: Request) -> bool:
        s = req.session
        if s is None or s.sealer is None:
            return False
        if req.header.command == Command.SESSION_SETUP:
            # The last leg's reply is signed, not encrypted (the client derives keys from it).
            return req.encrypted
        return req.encrypted or s.encrypt_data or (req.tree is not None and req.tree.encrypt)

    def _send(self, responses: Parts, req: Request) -> None:
        session = req.session if self._must_encrypt(req) else None
        self._send_chain(responses, session)

    def _send_chain(self, chain: Parts, session: Session | None) -> None:
        """Send the pieces of a compound's replies; sealed (joined: one copy) if C{session} says."""
        if session is not None and session.sealer is not None:
            self._write(session.sealer.encrypt(b"".join(chain), session.id))
            return
        self._write_parts(chain)

    async def _serve(self, req: Request) -> tuple[int, Body]:
        """Serve one request; (status, body). Never raises."""
        header = req.header
        op = _OP_NAMES.get(header.command, "unknown")
        started = time.perf_counter()
        activity = self.factory.activity
        if activity is not None:
            activity.begin()
        self._pending[header.message_id] = req
        status = st.STATUS_INTERNAL_ERROR
        body: Body = b""
        try:
            allowed = _ALLOWED_FLAGS | (
                c.SMB2_FLAGS_ASYNC_COMMAND if header.command == Command.CANCEL else 0
            )
            if header.flags & ~allowed:
                # As Samba: a reply flag, or ASYNC on anything but CANCEL, in a request.
                raise SMBError(st.STATUS_INVALID_PARAMETER, "request with reply-only flags")
            if req.related:
                req.related_file_id = req.chain.file_id
            else:
                # An unrelated request starts over: no FileId carries past it.
                req.chain.file_id = None
            self._bind(req)
            if header.command in _PAYLOAD_COMMANDS and self.negotiated is not None:
                # (A command without a payload passes whatever its charge.)
                self._check_charge(req)
            if self.factory.admit is not None and header.command in _RATE_LIMITED:
                uid = req.session.uid if req.session is not None else None
                self.factory.admit(self.peer, uid if uid is not None and uid >= 0 else None)
            reply = await self._handle(req)
            if isinstance(reply, Reply):
                status, body = reply.status, reply.body
            else:
                status, body = st.STATUS_SUCCESS, reply
        except SMBError as e:
            status = e.status
            body = e.body if e.body is not None else error_body()
            if status in (st.STATUS_ACCESS_DENIED, st.STATUS_LOGON_FAILURE):
                self._log.debug(
                    "smb {op} from {peer}: {status} ({why})",
                    op=op,
                    peer=self.peer,
                    status=st.name(status),
                    why=str(e),
                )
        except Exception as e:
            status = status_for(e, op)
            body = error_body()
            if isinstance(e, errors.ProtocolError):
                self._log.info(
                    "smb {op} from {peer}: malformed request ({why})",
                    op=op,
                    peer=self.peer,
                    why=str(e),
                )
        finally:
            self._pending.pop(header.message_id, None)
            if req.channel_open is not None:
                self.factory.files.request_done(req)
            if req.async_id:
                self._async.pop(req.async_id, None)
            if activity is not None:
                activity.end()
        self.factory.observe(op, time.perf_counter() - started, status)
        return status, body

    def _bind(self, req: Request) -> None:
        """
        Find the request's session and tree, and check its signature and
        encryption. A related request takes the session and tree the one
        before it found (none for the first of a compound: INVALID_PARAMETER).
        """
        header = req.header
        cmd = header.command
        if cmd in _NO_SESSION:
            return
        session: Session | None
        if req.related:
            session = req.chain.session
            if session is None:
                raise SMBError(st.STATUS_INVALID_PARAMETER, "related request without a session")
        elif header.session_id == 0 and cmd in _SESSION_OPTIONAL:
            return
        else:
            session = self.sessions.get(header.session_id)
            if session is None:
                self._sign_deleted(req)
                raise SMBError(st.STATUS_USER_SESSION_DELETED, "no such session")
        if not session.valid:
            raise SMBError(st.STATUS_USER_SESSION_DELETED, "session not authenticated")
        self._verify(req, session)
        req.session = session
        if cmd in _NEEDS_TREE:
            tree = req.chain.tree if req.related else session.trees.get(header.tree_id)
            if tree is None or tree.session is not session:
                raise SMBError(st.STATUS_NETWORK_NAME_DELETED, "no such tree")
            req.tree = tree
            if tree.encrypt and not req.encrypted:
                raise SMBError(st.STATUS_ACCESS_DENIED, "share requires encryption")
        if session.encrypt_data and not req.encrypted:
            raise SMBError(st.STATUS_ACCESS_DENIED, "session requires encryption")

    def remember_ended(self, session: Session) -> None:
        """Keep an ending session's signers for its USER_SESSION_DELETED answers."""
        if session.signer is None:
            return
        signers = {seq: session.signer_for(seq) for seq in session.channels}
        signers[-1] = session.signer
        self.factory.ended[session.id] = signers
        while len(self.factory.ended) > 1024:
            self.factory.ended.popitem(last=False)

    def _sign_deleted(self, req: Request) -> None:
        """
        A signed request names a session this connection does not have: if
        it is another connection's, or one that just ended, the
        USER_SESSION_DELETED answer is signed with its key (as Samba's global
        session lookup does; clients check it).
        """
        header = req.header
        if not header.flags & c.SMB2_FLAGS_SIGNED:
            return
        elsewhere = self.factory.sessions.get(header.session_id)
        if elsewhere is not None:
            req.session, req.sign_with = elsewhere, elsewhere.signer
            return
        ended = self.factory.ended.get(header.session_id)
        if ended:
            signer = ended.get(self.seq, ended.get(-1))
            if signer is not None:
                req.sign_with = signer
                req.sign_deleted = True

    def _verify(self, req: Request, session: Session) -> None:
        header = req.header
        if req.encrypted:
            return
        if header.flags & c.SMB2_FLAGS_SIGNED:
            signer = session.signer_for(self.seq)
            if signer is None or not signer.verify(
                req.raw, cancel=header.command == Command.CANCEL
            ):
                raise SMBError(st.STATUS_ACCESS_DENIED, "bad signature")
            return
        if session.signing_required:
            raise SMBError(st.STATUS_ACCESS_DENIED, "unsigned request on a signing session")
        n = self.negotiated
        if (
            header.command == Command.TREE_CONNECT
            and n is not None
            and n.dialect == c.SMB_3_1_1
            and not (session.guest or session.anonymous)
        ):
            # MS-SMB2 3.3.5.7: a 3.1.1 TREE_CONNECT must be signed or encrypted.
            raise SMBError(st.STATUS_ACCESS_DENIED, "unsigned 3.1.1 TREE_CONNECT")

    def _check_charge(self, req: Request) -> None:
        n = self.negotiated
        assert n is not None
        size = payload_size(req.header.command, req.raw)
        if not n.multi_credit:
            if size > 65536:
                raise SMBError(st.STATUS_INVALID_PARAMETER, "payload over 64 KiB at SMB 2.0.2")
            return
        needed = (size - 1) // 65536 + 1 if size else 1
        if max(req.header.credit_charge, 1) < needed:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "CreditCharge below the payload")

    def _handle(self, req: Request) -> Awaitable[Reply | Body]:
        """
        What the handler of C{req} returns to await (awaited by L{_serve}: no
        coroutine of its own around it, one frame less per request).

        @raise SMBError: an unknown command.
        """
        cmd = req.header.command
        name = _HANDLER_NAMES.get(cmd)
        if name is None:
            raise SMBError(st.STATUS_INVALID_PARAMETER, f"unknown command {cmd:#x}")
        # The connection's own commands are known by name once (a getattr
        # that misses builds an AttributeError: one per file command otherwise).
        if name in _OWN_HANDLERS:
            return getattr(self, name)(req)  # type: ignore[no-any-return]
        return getattr(self.factory.files, name)(self, req)  # type: ignore[no-any-return]

    # -- responses -----------------------------------------------------------------------

    def _response(
        self,
        req: Request,
        status: int,
        body: Body,
        *,
        last: bool,
        pad: bool = False,
        sealed: bool | None = None,
    ) -> Parts:
        """
        One response, in pieces; every response of a compound is padded to 8
        bytes, the last one too, as Samba pads them (smbtorture
        smb2.compound.compound-padding). A body given in pieces (a READ's
        data) stays where it is: the header is built and signed apart, the
        MAC fed the pieces in turn (L{Signer.sign_parts}), and they go out
        in one C{sendmsg} (L{_write_parts}). C{sealed}: L{_must_encrypt}'s
        answer for C{req}, if the caller has it already.
        """
        h = req.header
        flags = c.SMB2_FLAGS_SERVER_TO_REDIR | (h.flags & c.SMB2_FLAGS_RELATED_OPERATIONS)
        if h.flags & c.SMB2_FLAGS_PRIORITY_MASK:
            flags |= h.flags & c.SMB2_FLAGS_PRIORITY_MASK
        if req.async_id:
            flags |= c.SMB2_FLAGS_ASYNC_COMMAND
            credits = 0 if req.interim_sent else self._grant(h.credits)
        else:
            credits = self._grant(h.credits)
        session = req.session
        if req.sign_deleted and req.sign_with is not None:
            flags |= c.SMB2_FLAGS_SIGNED
        # (Whether to sign is asked of a reply that could be signed at all
        # first: an unsigned session's replies go no further.)
        sign = (
            session is not None
            and (bool(h.flags & c.SMB2_FLAGS_SIGNED) or session.signing_required or req.sign_reply)
            and session.signer_for(self.seq) is not None
            and not (self._must_encrypt(req) if sealed is None else sealed)
            and (status != st.STATUS_USER_SESSION_DELETED or req.sign_with is not None)
            and not req.no_sign
        )
        if sign:
            flags |= c.SMB2_FLAGS_SIGNED
        # The header packed at once (Header.pack's layout), no Header built.
        head = HEADER_STRUCT.pack(
            c.SMB2_MAGIC,
            64,
            h.credit_charge,
            status,
            h.command,
            credits,
            flags,
            0,
            h.message_id,
            req.async_id
            if flags & c.SMB2_FLAGS_ASYNC_COMMAND
            else (req.tree.id if req.tree is not None else h.tree_id) << 32,
            session.id if session is not None else h.session_id,
            b"\x00" * 16,
        )
        if type(body) is list:
            return self._response_parts(req, head, body, sign, last=last, pad=pad)
        msg = bytearray(head)
        msg += body  # type: ignore[arg-type]  # one buffer (a list went above)
        if not last or pad:
            msg += b"\x00" * ((-len(msg)) % 8)
        if not last:
            msg[20:24] = struct.pack("<I", len(msg))
        if sign:
            assert session is not None
            signer = req.sign_with or session.signer_for(self.seq)
            assert signer is not None
            msg[48:64] = signer.sign(msg, response=True)
        elif req.sign_deleted and req.sign_with is not None:
            msg[48:64] = req.sign_with.sign(msg, response=True)
        if req.preauth_reply is not None:
            # The hash takes the message as sent (a binding's replies are signed).
            req.preauth_reply.update(msg)
        return [bytes(msg)]

    def _response_parts(
        self, req: Request, packed: bytes, body: Parts, sign: bool, *, last: bool, pad: bool
    ) -> Parts:
        """L{_response} of a body in pieces: the header alone is built; nothing is joined."""
        head = bytearray(packed)
        size = 64
        for p in body:
            size += len(p)
        out: Parts = [head, *body]
        if not last or pad:
            n = (-size) % 8
            if n:
                out.append(_PADDING[n])
                size += n
        if not last:
            head[20:24] = struct.pack("<I", size)
        signer = None
        if sign:
            assert req.session is not None
            signer = req.sign_with or req.session.signer_for(self.seq)
            assert signer is not None
        elif req.sign_deleted and req.sign_with is not None:
            signer = req.sign_with
        if signer is not None:
            head[48:64] = signer.sign_parts(out, response=True)
        out[0] = bytes(head)
        if req.preauth_reply is not None:
            req.preauth_reply.update(b"".join(out))
        return out

    def _grant(self, requested: int) -> int:
        """
        Credits for a reply, scaled to what the connection has drained
        (issue 19). While the client leaves replies unread, none beyond the
        one it must never lack (MS-SMB2 3.3.1.2). While what it holds is
        past half of either per-connection bound, the credits it may hold
        (those granted and not yet used) are what the room left can take:
        one per 64 KiB left of C{smb.max_queued_bytes_per_connection} (a
        credit pays for 64 KiB of payload, MS-SMB2 3.1.5.2) and one per
        request left of C{smb.max_requests_per_connection}; so the window
        shrinks as replies go unread and grows back as the client reads them
        and requests finish. Below half of both, the window it asks for, up
        to Samba's 8192 (smbtorture smb2.credits expects that much).
        """
        window = self.credits
        allowed = self._credit_room()
        if allowed is None:
            return window.grant(requested)
        return window.grant(min(requested, max(allowed - window.outstanding, 0)))

    def _credit_room(self) -> int | None:
        """The credits the client may hold now, or None for no limit but the window's."""
        if self._output_paused:
            return 0
        smb = self.factory.smb
        max_bytes = smb.max_queued_bytes_per_connection
        max_requests = smb.max_requests_per_connection
        if self._in_flight * 2 < max_bytes and self._requests * 2 < max_requests:
            return None
        room = max(max_bytes - self._in_flight, 0) // CREDIT_BYTES
        return min(room, max(max_requests - self._requests, 0))

    def go_async(self, req: Request, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        """
        Wait for C{d} on behalf of C{req}: if it has not fired and the request
        may go asynchronous, send an interim STATUS_PENDING reply now (MS-SMB2
        3.3.4.2) and register the AsyncId for CANCEL. Returns C{d}.
        """
        req.waiting = d
        if d.called or self._closing or req.interim_sent:
            return d
        if not req.last_in_chain and req.header.command != Command.CREATE:
            # Only the last request of a compound may go asynchronous, and a
            # CREATE waiting for an oplock break (MS-SMB2 3.3.5.2.7, note <206>);
            # Windows fails others in the middle with STATUS_INTERNAL_ERROR
            # (smbtorture smb2.compound.interim2 and compound-break).
            d.cancel()
            d.addErrback(lambda f: f.trap(defer.CancelledError))
            raise SMBError(st.STATUS_INTERNAL_ERROR, "asynchronous request inside a compound")
        req.async_id = self.factory.new_async_id()
        self._async[req.async_id] = req
        chain = req.chain.responses
        chain.extend(self._response(req, st.STATUS_PENDING, error_body(), last=True))
        req.interim_sent = True
        self._send_chain(list(chain), req.session if self._must_encrypt(req) else None)
        chain.clear()
        # A request waiting for an event (a notify, a lock, a lease break the
        # same client must acknowledge) must not hold the connection's bounds:
        # reading would stop with the acknowledgement unread.
        if req.chain.flight is not None:
            self._land(req.chain.flight)
        return d

    def _cancel(self, header: Header, raw: memoryview) -> None:
        if header.flags & c.SMB2_FLAGS_ASYNC_COMMAND:
            req = self._async.get(header.async_id)
        else:
            req = self._pending.get(header.message_id)
        if req is None:
            return
        if header.session_id and req.session is not None and header.session_id != req.session.id:
            return
        req.cancelled = True
        if req.waiting is not None and not req.waiting.called:
            req.waiting.cancel()

    # -- NEGOTIATE-related IOCTL ----------------------------------------------------------

    def _local_endpoint(self) -> tuple[str, int]:
        """The address and port the client reached us at."""
        if self.transport is None:
            return "", 0
        addr = self.transport.getHost()
        host = getattr(addr, "host", "")
        port = getattr(addr, "port", 0)
        return (host if isinstance(host, str) else ""), (port if isinstance(port, int) else 0)

    def validate_negotiate(self, req: Request, data: bytes) -> bytes:
        """FSCTL_VALIDATE_NEGOTIATE_INFO (MS-SMB2 3.3.5.15.12)."""
        n = self.negotiated
        assert n is not None
        if n.dialect == c.SMB_3_1_1:
            # Preauth integrity protects 3.1.1; Windows closes the connection here.
            self.drop("VALIDATE_NEGOTIATE_INFO on 3.1.1")
            raise SMBError(st.STATUS_ACCESS_DENIED)
        r = Reader(data)
        try:
            caps, guid, mode, count = r.u32(0), r.raw(4, 16), r.u16(20), r.u16(22)
            dialects = tuple(r.u16(24 + 2 * i) for i in range(count))
        except ProtocolError:
            raise SMBError(st.STATUS_INVALID_PARAMETER) from None
        if (
            caps != n.client_capabilities
            or guid != n.client_guid
            or mode != n.client_security_mode
            or dialects != n.client_dialects
        ):
            self.drop("VALIDATE_NEGOTIATE_INFO does not match the NEGOTIATE")
            raise SMBError(st.STATUS_ACCESS_DENIED)
        smode = c.SMB2_NEGOTIATE_SIGNING_ENABLED
        if self.factory.smb.signing == "required":
            smode |= c.SMB2_NEGOTIATE_SIGNING_REQUIRED
        smb = self.factory.smb
        scaps = server_capabilities(
            n.dialect, n, smb.directory_leases, smb.multichannel.enabled, self.factory.any_ca
        )
        return struct.pack("<I16sHH", scaps, self.factory.server_guid, smode, n.dialect)

    def _end_session(self, session: Session, keep_durable: bool = False) -> None:
        for tree in list(session.trees.values()):
            self._end_tree(tree, keep_durable)
        session.trees.clear()
        if self.factory.sessions.get(session.id) is session:
            del self.factory.sessions[session.id]
        self.remember_ended(session)
        for conn in list(session.channels.values()):
            if conn is not self and conn.sessions.get(session.id) is session:
                del conn.sessions[session.id]
        session.channels.clear()
        session.channel_signers.clear()
        if not session.machine.gone:
            session.machine.logoff()

    def _end_tree(self, tree: Tree, keep_durable: bool = False) -> None:
        """
        Close the tree's opens; with C{keep_durable} (the connection was lost,
        or a new session took over this one) durable opens are disconnected
        instead, for a reconnect to claim (claudefs_gateway.smb.durable).
        """
        durability = self.factory.durability
        conns = [self, *(c for c in tree.session.channels.values() if c is not self)]
        for conn in conns:
            for op in [o for o in conn.opens.values() if o.tree is tree]:
                if keep_durable and durability.keeps(op):
                    conn.opens.pop(op.file_id[1], None)
                    self.factory.files.disconnect(conn, op)
                    durability.disconnect(op)
                else:
                    self.factory.files.close_quietly(conn, op)
        tree.session.trees.pop(tree.id, None)

    def _fail_over(self, session: Session) -> bool:
        """
        This connection is lost; if the session has other channels, it lives
        on there: the opens made over this one move to the oldest of them
        (channel failover, MS-SMB2 3.3.7.1). False if it had no other.
        """
        session.channels.pop(self.seq, None)
        session.channel_signers.pop(self.seq, None)
        session.binding.pop(self.seq, None)
        others = session.live_channels()
        if not others or not session.valid:
            return False
        heir = others[0]
        for op in [o for o in self.opens.values() if o.session is session]:
            self.opens.pop(op.file_id[1], None)
            heir.opens[op.file_id[1]] = op
            op.conn = heir
        self._log.info("smb channel lost; the session lives on", peer=self.peer)
        return True

    def end_session_everywhere(self, session: Session) -> None:
        """The session ends on every channel it has (a failed re-authentication)."""
        for conn in list(session.channels.values()):
            conn.sessions.pop(session.id, None)
        self._end_session(session, keep_durable=True)

    def end_previous_session(self, session: Session) -> None:
        """
        A new session of the same user named this one as PreviousSessionId
        (MS-SMB2 3.3.5.5.3): it ends, keeping its durable opens for a reconnect.
        """
        self._end_session(session, keep_durable=True)
        self.sessions.pop(session.id, None)

    # -- LOGOFF, TREE_CONNECT, TREE_DISCONNECT, ECHO ------------------------------------

    async def smb_LOGOFF(self, req: Request) -> bytes:
        session = req.session
        assert session is not None
        for tree in list(session.trees.values()):
            # Durable opens outlive a LOGOFF too, as on Samba (smbtorture
            # smb2.durable-open.reopen4): a new session may reconnect them.
            self._end_tree(tree, keep_durable=True)
        # The reply is signed with the session's key; forget it after.
        self.factory.reactor.callLater(0, self._forget_session, session)
        return SIMPLE_BODY

    def _forget_session(self, session: Session) -> None:
        self._end_session(session)
        self.sessions.pop(session.id, None)

    async def smb_TREE_CONNECT(self, req: Request) -> bytes:
        body = TreeConnectRequest.parse(req.raw)
        session = req.session
        assert session is not None
        vfs = await self.factory.get_vfs()
        parts = [p for p in body.path.split("\\") if p]
        if len(parts) != 2:
            raise SMBError(st.STATUS_BAD_NETWORK_NAME, "share path is not \\\\server\\share")
        name = parts[1]
        smb = self.factory.smb
        if len(session.trees) >= 1024:
            raise SMBError(st.STATUS_INSUFFICIENT_RESOURCES, "too many tree connects")
        tid = session.next_tree
        session.next_tree += 1
        if name.lower() == "ipc$":
            tree = Tree(tid, session, "IPC$", None, None)
            tree.encrypt = smb.encrypt == "required"
            session.trees[tid] = tree
            req.tree = tree
            return pack_tree_connect_response(
                c.SMB2_SHARE_TYPE_PIPE,
                c.SMB2_SHAREFLAG_NO_CACHING
                | (c.SMB2_SHAREFLAG_ENCRYPT_DATA if tree.encrypt else 0),
                0,
                c.FILE_ALL_ACCESS,
            )
        export = vfs.exports.by_name(name, "smb")
        if export is None:
            raise SMBError(st.STATUS_BAD_NETWORK_NAME, "no such share")
        if session.anonymous and not smb.guest:
            raise SMBError(st.STATUS_ACCESS_DENIED, "anonymous session")
        try:
            caller = vfs.caller(export, self.peer, session.creds, "smb")
        except errors.Access:
            raise SMBError(
                st.STATUS_ACCESS_DENIED, "client address not allowed by the export"
            ) from None
        encrypt = (
            smb.encrypt == "required" or getattr(export.rules, "encrypt", "default") == "required"
        )
        if encrypt and session.sealer is None:
            raise SMBError(
                st.STATUS_ACCESS_DENIED, "share requires encryption; the session cannot encrypt"
            )
        tree = Tree(tid, session, export.name, export, caller, encrypt)
        root = await vfs.getattr(caller, export.root_ino)
        tree.maximal_access = await self.factory.files.maximal_access(caller, root, None)
        session.trees[tid] = tree
        req.tree = tree
        self._log.debug("smb {user} connected to {share}", user=session.user, share=export.name)
        # MS-SMB2 3.3.5.7: a CA share says so to SMB 3 clients (they then ask
        # for persistent handles on it).
        share_caps = 0
        if self.dialect >= c.SMB_3_0 and getattr(export.rules, "ca", False):
            share_caps |= c.SMB2_SHARE_CAP_CONTINUOUS_AVAILABILITY
        return pack_tree_connect_response(
            c.SMB2_SHARE_TYPE_DISK,
            c.SMB2_SHAREFLAG_MANUAL_CACHING | (c.SMB2_SHAREFLAG_ENCRYPT_DATA if encrypt else 0),
            share_caps,
            tree.maximal_access,
        )

    async def smb_TREE_DISCONNECT(self, req: Request) -> bytes:
        Reader(req.raw).u16(64)
        assert req.tree is not None
        self._end_tree(req.tree)
        return SIMPLE_BODY

    async def smb_ECHO(self, req: Request) -> bytes:
        return SIMPLE_BODY

    async def smb_CANCEL(self, req: Request) -> bytes:  # pragma: no cover - handled in the chain
        raise SMBError(st.STATUS_INVALID_PARAMETER)

    async def smb_NEGOTIATE(self, req: Request) -> bytes:  # pragma: no cover - machine drops it
        raise SMBError(st.STATUS_INVALID_PARAMETER)

    async def smb_IOCTL(self, req: Request) -> Reply | bytes:
        body = IoctlRequest.parse(req.raw)
        if body.ctl_code == c.FSCTL_VALIDATE_NEGOTIATE_INFO:
            out = self.validate_negotiate(req, body.input)
            return pack_ioctl_response(body.ctl_code, NULL_FILE_ID, out)
        if body.ctl_code in (c.FSCTL_DFS_GET_REFERRALS, c.FSCTL_DFS_GET_REFERRALS_EX):
            raise SMBError(st.STATUS_FS_DRIVER_REQUIRED, "DFS is not served")
        if body.ctl_code == c.FSCTL_QUERY_NETWORK_INTERFACE_INFO:
            if not self.factory.smb.multichannel.enabled or self.dialect < c.SMB_3_0:
                raise SMBError(st.STATUS_NOT_SUPPORTED, "multichannel is off")
            if body.file_id != NULL_FILE_ID:
                # MS-SMB2 3.3.5.15.11: it names no file (smbtorture smb2.ioctl.bug14788).
                raise SMBError(st.STATUS_INVALID_PARAMETER, "FileId must be all ones")
            host, port = self._local_endpoint()
            out = network_interfaces(self.factory.smb, host, port)
            if len(out) > body.max_output_response:
                raise SMBError(st.STATUS_BUFFER_TOO_SMALL)
            return pack_ioctl_response(body.ctl_code, NULL_FILE_ID, out)
        return await self.factory.files.ioctl(self, req, body)


# The commands SMBConnection answers itself (the rest are the file commands').
_OWN_HANDLERS = frozenset(n for n in _HANDLER_NAMES.values() if hasattr(SMBConnection, n))
