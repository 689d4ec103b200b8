# -*- test-case-name: tests.backend.remote.test_protocol -*-
"""
ClaudeFS RPC connections: framing, request-id multiplexing, server-pushed events.

L{FrameProtocol} cuts the byte stream into frames, incrementally and bounded:
a length outside [16, max_frame], an unknown kind or reserved bits set is a
protocol error; the connection is closed (after an ERROR frame saying why,
on the server side) and the partial frame is dropped, so a hostile length
costs no memory.

L{ClientConnection} is one multiplexed client connection: any number of
calls in flight, each with its own request id; replies may come in any
order; EVENT frames (change events, lease breaks, lock grants) arrive on the
same connection and go to C{on_event}. Losing the connection fails every
call in flight with L{InFlightLost} (whether the server ran it is unknown).

L{ServerConnection} serves one client: the first frame must be HELLO; each
CALL runs C{handler.op_<NAME>(conn, *args)} (a value or a Deferred); at most
C{MAX_IN_FLIGHT} calls run at once per connection (reading pauses beyond);
a peer that stops reading its replies pauses us too, and one that stays
paused for C{stall_timeout} seconds is cut off, so replies never pile up
without bound. Unknown opcodes, undecodable arguments and frames a client
may not send get an ERROR frame and a closed connection.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from typing_extensions import override

from zope.interface import implementer

from claudefs_gateway import errors
from claudefs_gateway.backend.remote import wire
from claudefs_gateway.core.directsend import DirectSender
from claudefs_gateway.core.log import Logger
from claudefs_gateway.errors import InFlightLost, ProtocolError

__all__ = [
    "FrameProtocol",
    "ClientConnection",
    "ServerConnection",
    "ServerFactory",
    "MAX_IN_FLIGHT",
]

#: Calls one server connection runs at once before it stops reading more.
MAX_IN_FLIGHT = 128
#: Reply bytes one connection's calls in flight may produce (READs count their
#: length) before it stops reading more: with a peer that does not read, what
#: the server holds for it stays near this, however many calls it sends.
MAX_IN_FLIGHT_BYTES = 32 * 1024 * 1024
_SMALL_REPLY = 4096
#: Events queued for a subscriber that is not reading before it is cut off.
MAX_PENDING_EVENTS = 10000

_HEAD = wire.HEADER + 4
_unpack_header = wire._HDR.unpack_from
_pack_header = wire._HDR.pack
_HELLO = wire.BY_NAME["HELLO"].code
_CONNECTION_DONE = Failure(ConnectionDone())


def _no_delay(transport: Any) -> None:
    """Small calls and replies go out at once (no Nagle wait behind a delayed ACK)."""
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        try:
            set_no_delay(True)
        except OSError:
            pass  # not TCP after all (a unix socket behind a TCP-like transport)


class FrameProtocol(Protocol):
    """Frames in, frames out. Subclasses implement L{frame_received} and L{protocol_error}."""

    max_frame = wire.MAX_FRAME
    _log = Logger()
    #: Whether frames sent while one read's frames are handled wait for the
    #: end of that read, to leave together (the server's replies). Not on a
    #: client: a call sent from a reply's callback (a write-behind WROTE)
    #: must be on its way before the code that sent it goes on (answers its
    #: own client, or has another gateway's call sent).
    batching = False

    def __init__(self) -> None:
        self._buf = bytearray()
        self._closing = False
        #: Set on the first send: a L{DirectSender} for a plain TCP or unix
        #: socket transport, None for any other (TLS, test transports).
        self._direct: DirectSender | None = None
        self._direct_known = False
        #: True while L{dataReceived} hands frames over: bytes that arrive
        #: meanwhile (a synchronous peer answering inside our call) wait in
        #: C{_buf} for the loop already running.
        self._parsing = False
        #: Frames sent while the frames of one read are handled: they leave
        #: together, in one C{sendmsg}, when that read is done.
        self._batch: list[bytes | bytearray] | None = None

    @override
    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if self._parsing:
            self._buf += data
            return
        src: bytes | bytearray
        if self._buf:
            self._buf += data
            src, self._buf = self._buf, bytearray()
        else:
            src = data
        self._parsing = True
        if self.batching:
            self._batch = []
        try:
            self._frames(src)
        finally:
            self._parsing = False
            batch, self._batch = self._batch, None
            if batch:
                self._flush(batch)

    def _frames(self, src: bytes | bytearray) -> None:
        """
        Hand over every whole frame of C{src}, read in place: a frame that
        arrived whole in one read is not first copied into a buffer and cut
        out of it again (the common case: one call or reply per read).
        """
        pos = 0
        unpack_from = _unpack_header
        max_frame = self.max_frame
        while True:
            n = len(src) - pos
            total = 0
            if n >= _HEAD and not self.holding():
                length, opcode, kind, flags, pad, rid = unpack_from(src, pos)
                if length < wire.HEADER or length > max_frame or kind > 3 or flags or pad:
                    self._buf = bytearray()
                    try:
                        wire.decode_header(src[pos : pos + _HEAD], max_frame)
                    except ProtocolError as e:
                        self.protocol_error(e)
                    return
                total = 4 + length
                if n >= total:
                    if type(src) is bytes:
                        payload = src[pos + _HEAD : pos + total]
                    else:
                        payload = bytes(memoryview(src)[pos + _HEAD : pos + total])
                    pos += total
                    self.frame_received(opcode, kind, rid, payload)
                    if self._closing:
                        self._buf = bytearray()
                        return
                    continue
            # No whole frame left in src (or holding): keep the rest, with
            # whatever arrived while frames were handled.
            if self._buf:
                rest = bytearray(memoryview(src)[pos:])
                rest += self._buf
                self._buf = bytearray()
                src, pos = rest, 0
                if not self.holding():
                    continue
            if type(src) is bytearray:
                if pos:
                    del src[:pos]
                self._buf = src
            elif pos < len(src):
                self._buf = bytearray(memoryview(src)[pos:])
            return

    def holding(self) -> bool:
        """True while frames already received must wait (the server's back-pressure)."""
        return False

    def send(
        self, opcode: int, kind: int, rid: int, payload: bytes | bytearray | memoryview
    ) -> None:
        """Send one frame of an already encoded C{payload} (see L{send_frame})."""
        header = _pack_header(wire.HEADER + len(payload), opcode, kind, 0, 0, rid)
        self.send_frame(header + payload)

    def send_frame(self, frame: bytes | bytearray) -> None:
        """
        Send one whole frame (header and payload, L{wire.frame}). Inside
        L{dataReceived} it joins the frames to send when that read is done;
        otherwise it leaves now.

        While the transport has nothing buffered the frames go to the socket
        at once (L{DirectSender}); what the kernel does not take, and every
        frame behind a buffered one, goes through the transport, which keeps
        the order and the back-pressure. A frame handed to C{writeSequence}
        instead costs the reactor a turn, and two C{epoll_ctl} calls (write
        interest on, then off), before it leaves: per metadata round trip,
        in both processes (docs/bench.rst, "Several workers").
        """
        if self.transport is None or self._closing:
            return
        batch = self._batch
        if batch is not None:
            batch.append(frame)
            return
        self._flush([frame])

    def _flush(self, frames: list[bytes | bytearray]) -> None:
        t = self.transport
        if t is None or self._closing:
            return
        if not self._direct_known:
            self._direct = DirectSender.for_transport(t)
            self._direct_known = True
        direct = self._direct
        if direct is not None:
            size = 0
            for f in frames:
                size += len(f)
            frames = direct.send(frames, size)
            if not frames:
                return
        t.writeSequence([f if type(f) is bytes else bytes(f) for f in frames])

    def frame_received(
        self, opcode: int, kind: int, rid: int, payload: bytes
    ) -> None:  # pragma: no cover
        raise NotImplementedError

    def protocol_error(self, e: ProtocolError) -> None:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        batch, self._batch = self._batch, None
        if batch:
            # What was answered before the close leaves before it.
            self._flush(batch)
        self._closing = True
        if self.transport is not None:
            self.transport.loseConnection()


# ---------------------------------------------------------------------------
# Client side.


class ClientConnection(FrameProtocol):
    """
    One connection to a meta or data server.

    @param session: this client's session id (HELLO; events it caused carry it).
    @param on_event: called with (op name, value) for every EVENT frame.
    @ivar ready: fires with the server's L{wire.Hello} once the HELLO answer
        arrives; fails if the connection is lost first or the server refuses.
    """

    def __init__(
        self, session: int = 0, on_event: Callable[[str, Any], None] | None = None
    ) -> None:
        super().__init__()
        self.session = session
        self.on_event = on_event
        self.connected = False
        self.server: wire.Hello | None = None
        self.ready: defer.Deferred[wire.Hello] = defer.Deferred()
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[wire.Op, defer.Deferred[Any]]] = {}
        self._lost: list[Callable[[], None]] = []
        #: EVENT frames received and handled (marks.py compares it with the
        #: meta server's count of those it pushed).
        self.events_received = 0

    @override
    def connectionMade(self) -> None:
        self.connected = True
        _no_delay(self.transport)
        hello = wire.Hello(wire.PROTOCOL_VERSION, "gateway", self.session, bytes(8))
        self.call("HELLO", hello).addCallbacks(self._hello, self._no_hello)

    def _hello(self, hello: wire.Hello) -> None:
        self.server = hello
        self.ready.callback(hello)

    def _no_hello(self, f: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(f)
        self.close()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def notify_lost(self, callback: Callable[[], None]) -> None:
        """Call C{callback()} once when the connection is lost (the pool's hook)."""
        if not self.connected and self.transport is not None:
            callback()
        else:
            self._lost.append(callback)

    def call(self, name: str, args: Any = None) -> defer.Deferred[Any]:
        """
        Send one CALL; a Deferred firing with the decoded result.

        @return: fails with the server's error (an L{FSError}, L{BackendUnavailable}...),
            with L{InFlightLost} if the connection goes first, with
            L{BackendUnavailable} if it is already gone. Cancelling it forgets
            the call (a late reply is dropped).
        """
        op = wire.BY_NAME[name]
        if not self.connected or self._closing:
            return defer.fail(errors.BackendUnavailable("connection closed"))
        rid = next(self._ids)
        try:
            frame = wire.frame(op.code, wire.CALL, rid, op.args, args)
        except (ValueError, TypeError, OverflowError, AttributeError) as e:
            return defer.fail(errors.Inval(f"{name}: argument out of range ({e})"))

        def cancel(_: Any) -> None:
            self._pending.pop(rid, None)

        d: defer.Deferred[Any] = defer.Deferred(cancel)
        self._pending[rid] = (op, d)
        self.send_frame(frame)
        return d

    def ping(self) -> defer.Deferred[Any]:
        return self.call("HEARTBEAT")

    def frame_received(self, opcode: int, kind: int, rid: int, payload: bytes) -> None:
        if kind == wire.EVENT:
            op = wire.OPS.get(opcode)
            if op is None:
                self._log.debug("unknown event {opcode} ignored", opcode=opcode)
                self.events_received += 1
                return
            try:
                value = wire.decode(op.result, payload)
            except ProtocolError as e:
                self.protocol_error(e)
                return
            if self.on_event is not None:
                try:
                    self.on_event(op.name, value)
                except Exception:
                    # Not counted: what it should have dropped may still be
                    # cached, so this connection's count never catches up.
                    self._log.failure("event handler failed for {event}", event=op.name)
                    return
            # After the handler: the caches have dropped what the event names.
            self.events_received += 1
            return
        if kind not in (wire.REPLY, wire.ERROR):
            self.protocol_error(ProtocolError(f"server sent frame kind {kind}"))
            return
        entry = self._pending.pop(rid, None)
        if entry is None:
            return  # a call we cancelled
        op, d = entry
        try:
            if kind == wire.REPLY:
                value = op.result.whole(payload)
            else:
                err = wire.decode_error(payload)
        except ProtocolError as e:
            d.errback(errors.IO(f"undecodable reply to {op.name}"))
            self.protocol_error(e)
            return
        if kind == wire.REPLY:
            d.callback(value)
        else:
            d.errback(err)

    def protocol_error(self, e: ProtocolError) -> None:
        self._log.warn("protocol error from server: {why}; closing", why=str(e))
        self.close()

    @override
    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self.connected = False
        self._closing = True
        pending, self._pending = self._pending, {}
        for op, d in pending.values():
            d.errback(InFlightLost(f"connection lost with {op.name} in flight"))
        if not self.ready.called:
            self.ready.errback(errors.BackendUnavailable("connection lost before HELLO"))
        lost, self._lost = self._lost, []
        for cb in lost:
            cb()


# ---------------------------------------------------------------------------
# Server side.


@implementer(IPushProducer)
class ServerConnection(FrameProtocol):
    """One client of a meta or data server (see the module docstring)."""

    batching = True

    def __init__(self, factory: ServerFactory) -> None:
        super().__init__()
        self.factory = factory
        self.session = 0
        self.greeted = False
        self.subscribed = False
        self._in_flight: dict[int, defer.Deferred[Any]] = {}
        self._cost: dict[int, int] = {}
        self._in_flight_bytes = 0
        self._reading_paused = False
        self._draining = False
        self._writes_paused = False
        self._stall: IDelayedCall | None = None
        self._queued_events = 0
        #: Events pushed (or dropped) on this connection, and where that count
        #: is shared with a gateway on this host (marks.py; meta C{--event-marks}).
        self.pushed = 0
        self.mark: Any = None

    @override
    def connectionMade(self) -> None:
        _no_delay(self.transport)
        self.factory.connections.add(self)
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]

    @override
    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self._closing = True
        if self.mark is not None:
            self.mark.close()
            self.mark = None
        self.factory.connections.discard(self)
        self.factory.subscribers.discard(self)
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        for d in list(self._in_flight.values()):
            d.cancel()
        lost = getattr(self.factory.handler, "connection_lost", None)
        if lost is not None:
            try:
                lost(self)
            except Exception:
                self._log.failure("connection_lost hook failed")

    # -- IPushProducer: the transport's word on our writes ------------------------------

    def pauseProducing(self) -> None:
        self._writes_paused = True
        self._update_reading()
        if self._stall is None:
            self._stall = self.factory.clock.callLater(self.factory.stall_timeout, self._stalled)

    def resumeProducing(self) -> None:
        self._writes_paused = False
        self._queued_events = 0
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None
        self._update_reading()

    def stopProducing(self) -> None:
        self._closing = True

    def _stalled(self) -> None:
        self._stall = None
        self._log.warn(
            "client {peer} stopped reading for {secs}s; closing",
            peer=str(self.transport.getPeer()) if self.transport else "?",
            secs=self.factory.stall_timeout,
        )
        self._abort()

    def _abort(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _update_reading(self) -> None:
        want_pause = (
            self._writes_paused
            or len(self._in_flight) >= MAX_IN_FLIGHT
            or self._in_flight_bytes >= MAX_IN_FLIGHT_BYTES
        )
        if want_pause and not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]
        elif not want_pause and self._reading_paused and not self._closing:
            self._reading_paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]
            if len(self._buf) >= _HEAD and not self._draining:
                # Frames that arrived with the ones that filled the budget.
                self._draining = True
                try:
                    self.dataReceived(b"")
                finally:
                    self._draining = False

    def holding(self) -> bool:
        return self._reading_paused

    # -- frames ------------------------------------------------------------------------

    def protocol_error(self, e: ProtocolError, opcode: int = 0, rid: int = 0) -> None:
        self._log.warn(
            "protocol error from {peer}: {why}; closing",
            peer=str(self.transport.getPeer()) if self.transport else "?",
            why=str(e),
        )
        self.send(opcode, wire.ERROR, rid, wire.encode_error(e))
        self.close()

    def frame_received(self, opcode: int, kind: int, rid: int, payload: bytes) -> None:
        if kind != wire.CALL:
            self.protocol_error(
                ProtocolError(f"clients send CALL frames, not kind {kind}"), opcode, rid
            )
            return
        route = self.factory.route(opcode)
        if route is None:
            self.protocol_error(ProtocolError(f"unknown opcode {opcode:#x}"), opcode, rid)
            return
        op, method, spread = route
        if not self.greeted and opcode != _HELLO:
            self.protocol_error(ProtocolError("HELLO must come first"), opcode, rid)
            return
        if rid in self._in_flight:
            self.protocol_error(ProtocolError(f"request id {rid} already in flight"), opcode, rid)
            return
        try:
            args = op.args.whole(payload)
        except ProtocolError as e:
            self.protocol_error(e, opcode, rid)
            return
        self.factory.calls += 1
        if opcode == _HELLO:
            self._hello(rid, args)
            return
        if method is None:
            self.send(
                opcode,
                wire.ERROR,
                rid,
                wire.encode_error(errors.NotSupp(f"{op.name} is not served here")),
            )
            return
        if not getattr(self.factory.handler, "ready", True):
            # The store is still opening (a restarted server) or already
            # closing: the call never reached it, and any node may take it.
            self.send(
                opcode,
                wire.ERROR,
                rid,
                wire.encode_error(errors.BackendUnavailable("the store is not open")),
            )
            return
        try:
            if spread:
                result = method(self, *args)
            elif args is None:
                result = method(self)
            else:
                result = method(self, args)
        except Exception:
            result = defer.fail()
        if isinstance(result, defer.Deferred):
            if result.called and not result.paused and not result._runningCallbacks:
                # Fired already (a read the store answered at once): its
                # result is the reply, without the in-flight bookkeeping, a
                # callback and a budget check on either side of it.
                got: list[Any] = []
                result.addBoth(got.append)
                result = got[0]
            else:
                self._in_flight[rid] = result
                cost = _SMALL_REPLY
                if op.name == "READ":
                    cost += max(0, min(int(args[2]), wire.MAX_DATA))
                self._cost[rid] = cost
                self._in_flight_bytes += cost
                self._update_reading()
                result.addBoth(self._finished, op, rid)
                return
        self._reply(op, rid, result)

    def _hello(self, rid: int, hello: wire.Hello) -> None:
        if hello.version != wire.PROTOCOL_VERSION:
            self.protocol_error(
                ProtocolError(f"protocol version {hello.version} not spoken"), 0x01, rid
            )
            return
        self.greeted = True
        self.session = hello.session
        mine = wire.Hello(
            wire.PROTOCOL_VERSION,
            self.factory.role,
            0,
            self.factory.instance_id(),
            self.factory.boot,
        )
        self.send(0x01, wire.REPLY, rid, wire.encode(wire.HELLO, mine))

    def _finished(self, result: Any, op: wire.Op, rid: int) -> None:
        self._in_flight.pop(rid, None)
        self._in_flight_bytes -= self._cost.pop(rid, 0)
        if self._closing:
            if isinstance(result, Failure) and not result.check(
                defer.CancelledError, errors.FSError
            ):
                self._log.failure("{op} failed as the client left", result, op=op.name)
            return
        self._reply(op, rid, result)
        self._update_reading()

    def _reply(self, op: wire.Op, rid: int, result: Any) -> None:
        if isinstance(result, Failure):
            if not result.check(errors.GatewayError):
                self._log.failure("{op} failed", result, op=op.name)
                self.send(op.code, wire.ERROR, rid, wire.encode_error(errors.IO("server error")))
                return
            self.send(op.code, wire.ERROR, rid, wire.encode_error(result.value or errors.IO()))
            return
        try:
            frame = wire.frame(op.code, wire.REPLY, rid, op.result, result)
        except Exception:
            self._log.failure("cannot encode the {op} result", op=op.name)
            self.send(op.code, wire.ERROR, rid, wire.encode_error(errors.IO("server error")))
            return
        self.send_frame(frame)

    def push(self, name: str, value: Any) -> None:
        """Send one EVENT frame; a subscriber that will not read is cut off."""
        op = wire.BY_NAME[name]
        self.push_frame(wire.frame(op.code, wire.EVENT, 0, op.result, value))

    def push_frame(self, frame: bytes | bytearray) -> None:
        """
        Send one encoded EVENT frame (L{wire.frame}), as L{push} does. An
        event leaves at once, behind the replies already waiting for the end
        of this connection's read: the meta server pushes a change before it
        answers the call that made it, on whichever connection that answer
        goes (docs/rpc.rst "Server-pushed events").
        """
        # Counted first, even when it is dropped below: the gateway's count
        # then never catches up, and it asks the meta server (marks.py).
        self.pushed += 1
        if self.mark is not None:
            self.mark.set(self.pushed)
        if self._closing:
            return
        if self._writes_paused:
            self._queued_events += 1
            if self._queued_events > MAX_PENDING_EVENTS:
                self._log.warn("subscriber is not reading its events; closing")
                self._abort()
                return
        batch = self._batch
        if batch is not None:
            batch.append(frame)
            self._batch = []
            self._flush(batch)
        else:
            self.send_frame(frame)


class ServerFactory(Factory):
    """
    The shared side of a server: its handler, role and live connections.

    @param handler: has C{op_<NAME>(conn, *args)} for each opcode it serves,
        and C{instance_id()}.
    @param role: C{"meta"} or C{"data"}: opcodes of the other role get NotSupp.
    """

    def __init__(
        self,
        handler: Any,
        role: str,
        clock: IReactorTime,
        stall_timeout: float = 30.0,
        max_frame: int = wire.MAX_FRAME,
    ) -> None:
        self.handler = handler
        self.role = role
        self.clock = clock
        self.stall_timeout = stall_timeout
        self.max_frame = max_frame
        self.connections: set[ServerConnection] = set()
        self.subscribers: set[ServerConnection] = set()
        self.calls = 0
        self._routes: dict[int, tuple[wire.Op, Any, bool]] = {}
        #: This process's part of the boot id: new for every start.
        self._boot = os.urandom(8)

    @property
    def boot(self) -> bytes:
        """
        This server's boot id (HELLO): new for every start, so a gateway tells
        a restarted server (whose unsynced writes may be gone) apart. A handler
        whose store can lose unsynced commits without this process restarting
        (PostgreSQL restarted under it) folds that store's own start in
        (C{boot_salt()}): the id changes then too.
        """
        salt = getattr(self.handler, "boot_salt", None)
        extra = salt() if callable(salt) else b""
        if not extra:
            return self._boot
        return hashlib.sha256(self._boot + extra).digest()[:8]

    def instance_id(self) -> bytes:
        iid = getattr(self.handler, "instance_id", None)
        value = iid() if callable(iid) else iid
        return bytes(value or bytes(8))[:8].ljust(8, b"\0")

    def route(self, opcode: int) -> tuple[wire.Op, Any, bool] | None:
        """
        (op, the handler's method or None if not served here, whether the
        arguments are spread) for C{opcode}; None for an unknown opcode.
        Looked up once per opcode, not per call (the method's name built and
        found, the op's role and kind checked: each call paid for them).
        """
        route = self._routes.get(opcode)
        if route is not None:
            return route
        op = wire.OPS.get(opcode)
        if op is None:
            return None
        method = None
        if op.served and op.server in ("any", self.role) and not op.name.startswith("EV_"):
            method = getattr(self.handler, "op_" + op.name, None)
        route = (op, method, isinstance(op.args, wire.Tup))
        self._routes[opcode] = route
        return route

    @override
    def buildProtocol(self, addr: Any) -> ServerConnection:
        p = ServerConnection(self)
        p.max_frame = self.max_frame
        return p

    def publish(self, name: str, value: Any, origin: int = 0) -> None:
        """
        Push one event to every subscribed connection; an C{EV_CHANGE} not to
        the session whose call made it, which would only drop it (docs/rpc.rst
        "Server-pushed events"): with N gateways on one meta server that is a
        frame and a wake-up of the calling gateway saved per change. Other
        events skip the connections of session C{origin} (0: none skipped):
        the shared state's C{EV_LOCKS} and C{EV_LEASES} after a gateway's own
        call, whose gateway keeps only the other gateways' part. An
        C{EV_CHANGE_LOCKS} (both of one call) goes where its change would.
        """
        if name == "EV_CHANGE":
            own = value.session
        elif name == "EV_CHANGE_LOCKS":
            own = value[0].session
        else:
            own = origin
        frame = None
        for conn in list(self.subscribers):
            if own and conn.session == own:
                continue
            if frame is None:
                # Encoded once for every subscriber (the frames are the same).
                op = wire.BY_NAME[name]
                frame = bytes(wire.frame(op.code, wire.EVENT, 0, op.result, value))
            conn.push_frame(frame)

    def close_all(self) -> None:
        for conn in list(self.connections):
            conn.close()

    def drop_subscribers(self) -> None:
        """
        Close every subscribed connection: events may have been missed, and a
        gateway whose event connection is lost drops its whole cache.
        """
        for conn in list(self.subscribers):
            conn.close()
