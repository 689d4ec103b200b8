# -*- test-case-name: tests.rpc.test_client -*-
"""
A small ONC RPC client, over TCP (record marking) or UDP (retransmitting).

The gateway is a client too: NLM sends GRANTED callbacks to a client's lock
manager, NSM sends SM_NOTIFY after a restart, and C{portmapper: system}
registers the gateway's programs with the machine's rpcbind. The tests use it
to drive every procedure over real sockets. Calls return Deferreds firing with
the reply's result bytes (an L{Unpacker} positioned at them), or failing with
L{RPCError} for a reply that is not SUCCESS, or C{TimeoutError}.
"""

from __future__ import annotations

import itertools
import os
import struct
from typing import Any

from twisted.internet import defer, error
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.protocol import DatagramProtocol, Protocol, connectionDone
from twisted.python.failure import Failure
from typing_extensions import override

from claudefs_gateway.core.log import Logger
from claudefs_gateway.rpc import message as msg
from claudefs_gateway.rpc.message import AuthSys, ReplyHeader
from claudefs_gateway.rpc.record import RecordReader, record_marker
from claudefs_gateway.rpc.xdr import Unpacker, XDRError

__all__ = ["RPCError", "StreamClient", "DatagramClient", "connect_tcp", "new_xid"]

_xids = itertools.count(struct.unpack(">I", os.urandom(4))[0] & 0x3FFFFFFF)


def new_xid() -> int:
    return next(_xids) & 0xFFFFFFFF


class RPCError(Exception):
    """The server answered, but not with SUCCESS."""

    def __init__(self, header: ReplyHeader) -> None:
        what = (
            msg.accept_stat_name(header.stat)
            if header.accepted
            else ("RPC_MISMATCH" if header.stat == msg.RPC_MISMATCH else "AUTH_ERROR")
        )
        super().__init__(f"{what} {header.detail}" if header.detail else what)
        self.header = header
        self.name = what


def _result(data: bytes) -> Unpacker:
    h = msg.parse_reply(data)
    if not h.accepted or h.stat != msg.SUCCESS:
        raise RPCError(h)
    return Unpacker(data, h.results_at)


class StreamClient(Protocol):
    """
    A connected TCP client; many calls may be outstanding (replies matched by XID).

    @ivar replies: how many replies arrived (tests check pipelining).
    """

    transport: Any

    _log = Logger()

    def __init__(
        self, clock: Any = None, timeout: float = 30.0, max_record: int = 64 << 20
    ) -> None:
        self.clock = clock
        self.timeout = timeout
        self.reader = RecordReader(max_record)
        self.waiting: dict[int, defer.Deferred[bytes]] = {}
        # Answers calls the server makes over this connection (callbacks):
        # the call message in, a reply message (or None) out.
        self.on_call: Any = None
        self.connected_d: defer.Deferred[None] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.replies = 0

    @override
    def connectionMade(self) -> None:
        self.connected_d.callback(None)

    @override
    def dataReceived(self, data: bytes) -> None:
        try:
            records = self.reader.feed(data)
        except Exception:
            self._log.failure("bad reply stream")
            self.transport.loseConnection()
            return
        for rec in records:
            if len(rec) >= 8 and rec[4:8] == b"\0\0\0\0" and self.on_call is not None:
                # A call from the server over this connection (the NFSv4.1
                # back channel): the handler's reply message goes back.
                answer = self.on_call(rec)
                if answer is not None:
                    self.transport.writeSequence([record_marker(len(answer)), answer])
                continue
            self.replies += 1
            if len(rec) < 4:
                continue
            (xid,) = struct.unpack_from(">I", rec)
            d = self.waiting.pop(xid, None)
            if d is not None:
                d.callback(rec)

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        waiting, self.waiting = self.waiting, {}
        for d in waiting.values():
            d.errback(error.ConnectionLost("connection closed before the reply"))
        if not self.lost.called:
            self.lost.callback(None)

    def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (tests: hostile framing)."""
        self.transport.write(data)

    def call_raw(self, message: bytes, xid: int) -> defer.Deferred[bytes]:
        """Send one framed call message; fire with the whole reply message."""

        def cancel(_: Any) -> None:
            self.waiting.pop(xid, None)

        d: defer.Deferred[bytes] = defer.Deferred(cancel)
        self.waiting[xid] = d
        self.transport.writeSequence([record_marker(len(message)), message])
        if self.clock is not None and self.timeout:
            d.addTimeout(self.timeout, self.clock)
        return d

    def call(
        self,
        prog: int,
        vers: int,
        proc: int,
        args: bytes = b"",
        cred: AuthSys | None = None,
        xid: int | None = None,
    ) -> defer.Deferred[Unpacker]:
        """Call a procedure; fire with an L{Unpacker} at its results."""
        xid = new_xid() if xid is None else xid
        message = msg.encode_call(xid, prog, vers, proc, args, cred)
        return self.call_raw(message, xid).addCallback(_result)

    def close(self) -> defer.Deferred[None]:
        self.transport.loseConnection()
        return self.lost


async def connect_tcp(
    reactor: Any, host: str, port: int, timeout: float = 30.0, bind_port: int | None = None
) -> StreamClient:
    """A connected L{StreamClient}; C{bind_port} binds the local port (reserved ports)."""
    kw: dict[str, Any] = {"timeout": timeout}
    if bind_port is not None:
        kw["bindAddress"] = ("::" if ":" in host else "0.0.0.0", bind_port)
    cls = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
    endpoint = cls(reactor, host, port, **kw)
    proto = StreamClient(clock=reactor, timeout=timeout)
    await connectProtocol(endpoint, proto)
    return proto


class DatagramClient(DatagramProtocol):
    """
    A UDP client: each call is retransmitted (same XID) until a reply or
    C{tries} attempts at C{interval} seconds have passed.
    """

    transport: Any

    noisy = False

    def __init__(self, clock: Any, interval: float = 1.0, tries: int = 5) -> None:
        self.clock = clock
        self.interval = interval
        self.tries = tries
        self.waiting: dict[int, tuple[defer.Deferred[bytes], Any]] = {}

    @override
    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if len(data) < 4:
            return
        (xid,) = struct.unpack_from(">I", data)
        got = self.waiting.pop(xid, None)
        if got is not None:
            d, timer = got
            if timer.active():
                timer.cancel()
            d.callback(data)

    def call_raw(self, message: bytes, xid: int, addr: tuple[str, int]) -> defer.Deferred[bytes]:
        def cancel(_: Any) -> None:
            got = self.waiting.pop(xid, None)
            if got is not None and got[1].active():
                got[1].cancel()

        d: defer.Deferred[bytes] = defer.Deferred(cancel)
        left = [self.tries]

        def send() -> None:
            if xid not in self.waiting:
                return
            if left[0] <= 0:
                self.waiting.pop(xid, None)
                d.errback(defer.TimeoutError(f"no reply from {addr[0]}:{addr[1]}"))
                return
            left[0] -= 1
            try:
                self.transport.write(message, addr)
            except Exception as e:
                self.waiting.pop(xid, None)
                d.errback(e)
                return
            self.waiting[xid] = (d, self.clock.callLater(self.interval, send))

        self.waiting[xid] = (d, _NoTimer())
        send()
        return d

    def call(
        self,
        addr: tuple[str, int],
        prog: int,
        vers: int,
        proc: int,
        args: bytes = b"",
        cred: AuthSys | None = None,
        xid: int | None = None,
    ) -> defer.Deferred[Unpacker]:
        xid = new_xid() if xid is None else xid
        message = msg.encode_call(xid, prog, vers, proc, args, cred)
        return self.call_raw(message, xid, addr).addCallback(_result)

    def close(self) -> None:
        for d, timer in list(self.waiting.values()):
            if timer.active():
                timer.cancel()
            d.errback(error.ConnectionLost("client closed"))
        self.waiting = {}


class _NoTimer:
    def active(self) -> bool:
        return False

    def cancel(self) -> None:
        pass


def check_done(u: Unpacker) -> None:
    """Results must be consumed exactly (tests)."""
    if u.remaining():
        raise XDRError(f"{u.remaining()} unread result bytes")
