"""
Tests for L{claudefs_gateway.backend.remote.protocol}: multiplexed calls and
events between a client and a server in memory (iosim), and a server's
answers to hostile clients (StringTransport).
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase, TestCase

from claudefs_gateway import errors
from claudefs_gateway.backend.remote import wire
from claudefs_gateway.backend.remote.protocol import (
    MAX_IN_FLIGHT,
    ClientConnection,
    ServerFactory,
)
from claudefs_gateway.fstypes import Attributes, FileType


def attrs_of(ino: int) -> Attributes:
    return Attributes(ino, 1, FileType.REG, 0o644, 1, 0, 0, 0, 0, (0, 0), 1, 2, 3, 4, 5)


class Handler:
    def __init__(self) -> None:
        self.held: dict[int, defer.Deferred[Attributes]] = {}

    def instance_id(self) -> bytes:
        return b"12345678"

    def op_HEARTBEAT(self, conn: Any) -> None:
        return None

    def op_GETATTR(self, conn: Any, ino: int) -> Any:
        if ino >= 100:
            d: defer.Deferred[Attributes] = defer.Deferred()
            self.held[ino] = d
            return d
        if ino == 0:
            raise errors.NotFound("no inode 0")
        return attrs_of(ino)

    def op_SUBSCRIBE(self, conn: Any, on: bool) -> None:
        conn.factory.subscribers.add(conn)


class PairTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.handler = Handler()
        self.factory = ServerFactory(self.handler, "meta", self.clock)
        self.events: list[tuple[str, Any]] = []
        self.client, self.server, self.pump = iosim.connectedServerAndClient(
            lambda: self.factory.buildProtocol(None),
            lambda: ClientConnection(7, lambda n, v: self.events.append((n, v))),
        )
        self.pump.flush()
        self.hello = self.successResultOf(self.client.ready)

    def test_hello(self) -> None:
        self.assertEqual((self.hello.role, self.hello.instance_id), ("meta", b"12345678"))
        self.assertEqual(self.server.session, 7)

    def test_replies_out_of_order(self) -> None:
        """Request ids multiplex: a slow call does not hold up a fast one."""
        slow = self.client.call("GETATTR", (100,))
        fast = self.client.call("GETATTR", (5,))
        self.pump.flush()
        self.assertEqual(self.successResultOf(fast).ino, 5)
        self.assertNoResult(slow)
        self.handler.held[100].callback(attrs_of(100))
        self.pump.flush()
        self.assertEqual(self.successResultOf(slow).ino, 100)

    def test_errors_cross(self) -> None:
        d = self.client.call("GETATTR", (0,))
        self.pump.flush()
        self.failureResultOf(d, errors.NotFound)

    def test_not_served_is_notsupp(self) -> None:
        """An opcode of the other server role, or one not served yet, is NotSupp; the connection stays."""
        for name, args in (("READ", (1, 0, 10)), ("RELEASE_OWNER", (("nlm", b"c", b"o"),))):
            d = self.client.call(name, args)
            self.pump.flush()
            self.failureResultOf(d, errors.NotSupp)
        self.assertTrue(self.client.connected)

    def test_events_pushed(self) -> None:
        """A subscribed client receives EVENT frames on the same connection as its calls."""
        self.client.call("SUBSCRIBE", True)
        self.pump.flush()
        self.factory.publish("EV_CHANGE", wire.ChangeEvent(3, 42, 1))
        self.pump.flush()
        self.assertEqual(self.events, [("EV_CHANGE", wire.ChangeEvent(3, 42, 1))])

    def test_own_changes_not_pushed(self) -> None:
        """An EV_CHANGE goes to every subscriber but the session whose call made it."""
        self.client.call("SUBSCRIBE", True)
        self.pump.flush()
        self.factory.publish("EV_CHANGE", wire.ChangeEvent(7, 42, 1))
        self.factory.publish("EV_CHANGE", wire.ChangeEvent(0, 43, 0))
        self.pump.flush()
        self.assertEqual(self.events, [("EV_CHANGE", wire.ChangeEvent(0, 43, 0))])

    def test_lost_connection_fails_in_flight(self) -> None:
        d = self.client.call("GETATTR", (100,))
        self.pump.flush()
        lost: list[bool] = []
        self.client.notify_lost(lambda: lost.append(True))
        self.client.transport.loseConnection()
        self.pump.flush()
        self.failureResultOf(d, errors.InFlightLost)
        self.assertEqual(lost, [True])
        self.assertTrue(self.handler.held[100].called)  # the server cancelled it
        self.failureResultOf(self.client.call("GETATTR", (1,)), errors.BackendUnavailable)

    def test_cancelled_call_drops_late_reply(self) -> None:
        d = self.client.call("GETATTR", (100,))
        self.pump.flush()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.handler.held[100].callback(attrs_of(100))
        self.pump.flush()
        self.assertTrue(self.client.connected)

    def test_bad_argument_refused_locally(self) -> None:
        self.failureResultOf(self.client.call("GETATTR", (-1,)), errors.Inval)


class HostileClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.handler = Handler()
        self.factory = ServerFactory(self.handler, "meta", self.clock, stall_timeout=30)
        self.proto = self.factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5555))
        self.proto.makeConnection(self.transport)

    def frame(
        self, name_or_code: str | int, payload: bytes, kind: int = wire.CALL, rid: int = 1
    ) -> bytes:
        code = wire.BY_NAME[name_or_code].code if isinstance(name_or_code, str) else name_or_code
        return b"".join(bytes(p) for p in wire.encode_frame(code, kind, rid, payload))

    def hello(self) -> None:
        h = wire.Hello(wire.PROTOCOL_VERSION, "gateway", 1, bytes(8))
        self.proto.dataReceived(self.frame("HELLO", wire.encode(wire.HELLO, h)))
        self.transport.clear()

    def error_reply(self) -> Exception:
        data = self.transport.value()
        length, opcode, kind, rid = wire.decode_header(data)
        self.assertEqual(kind, wire.ERROR)
        return wire.decode_error(data[20 : 4 + length])

    def test_hello_first(self) -> None:
        self.proto.dataReceived(self.frame("GETATTR", struct.pack("<Q", 1)))
        self.assertIsInstance(self.error_reply(), errors.ProtocolError)
        self.assertTrue(self.transport.disconnecting)

    def test_unknown_opcode(self) -> None:
        self.hello()
        self.proto.dataReceived(self.frame(0xDEAD, b""))
        self.assertIsInstance(self.error_reply(), errors.ProtocolError)
        self.assertTrue(self.transport.disconnecting)
        self.flushLoggedErrors()

    def test_oversized_length(self) -> None:
        self.hello()
        self.proto.dataReceived(struct.pack("<IIBBHQ", 2**31, 0x11, 0, 0, 0, 1))
        self.assertIsInstance(self.error_reply(), errors.ProtocolError)
        self.assertTrue(self.transport.disconnecting)

    def test_bad_arguments(self) -> None:
        self.hello()
        self.proto.dataReceived(self.frame("GETATTR", b"\x01\x02"))
        self.assertIsInstance(self.error_reply(), errors.ProtocolError)
        self.assertTrue(self.transport.disconnecting)

    def test_reply_kind_from_client(self) -> None:
        self.hello()
        self.proto.dataReceived(self.frame("GETATTR", struct.pack("<Q", 1), kind=wire.REPLY))
        self.assertTrue(self.transport.disconnecting)

    def test_in_flight_bound_pauses_reading(self) -> None:
        """Past MAX_IN_FLIGHT unanswered calls the server stops reading; answers resume it."""
        self.hello()
        for i in range(MAX_IN_FLIGHT):
            self.proto.dataReceived(self.frame("GETATTR", struct.pack("<Q", 100 + i), rid=10 + i))
        self.assertEqual(self.transport.producerState, "paused")
        self.handler.held[100].callback(attrs_of(100))
        self.assertEqual(self.transport.producerState, "producing")

    def test_non_reading_peer_cut_off(self) -> None:
        """A client that stops reading its replies is disconnected after stall_timeout."""
        self.hello()
        self.proto.pauseProducing()  # what the transport does when its buffer fills
        self.assertEqual(self.transport.producerState, "paused")
        self.clock.advance(29)
        self.proto.resumeProducing()
        self.proto.pauseProducing()
        self.clock.advance(29.9)
        self.assertFalse(getattr(self.transport, "aborted", False))
        self.clock.advance(0.1)
        self.assertTrue(self.transport.disconnecting)

    def test_duplicate_request_id(self) -> None:
        self.hello()
        self.proto.dataReceived(self.frame("GETATTR", struct.pack("<Q", 100), rid=5))
        self.proto.dataReceived(self.frame("GETATTR", struct.pack("<Q", 101), rid=5))
        self.assertIsInstance(self.error_reply(), errors.ProtocolError)


class ReplyBudgetTests(SynchronousTestCase):
    def test_large_reads_pause_reading_early(self) -> None:
        """Calls whose replies would exceed the byte budget stop the server reading more."""
        from claudefs_gateway.backend.remote.protocol import MAX_IN_FLIGHT_BYTES

        held: list[defer.Deferred[Any]] = []

        class DataHandler:
            def instance_id(self) -> bytes:
                return bytes(8)

            def op_READ(self, conn: Any, ino: int, offset: int, length: int) -> Any:
                d: defer.Deferred[Any] = defer.Deferred()
                held.append(d)
                return d

        factory = ServerFactory(DataHandler(), "data", Clock())
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        h = wire.Hello(wire.PROTOCOL_VERSION, "gateway", 1, bytes(8))
        frame = lambda name, args, rid: b"".join(  # noqa: E731
            bytes(p)
            for p in wire.encode_frame(
                wire.BY_NAME[name].code, wire.CALL, rid, wire.encode(wire.BY_NAME[name].args, args)
            )
        )
        proto.dataReceived(frame("HELLO", h, 1))
        n = MAX_IN_FLIGHT_BYTES // (4 * 1024 * 1024)
        # Many more calls than the budget, all in one segment: the rest wait, unread.
        proto.dataReceived(
            b"".join(frame("READ", (1, 0, 4 * 1024 * 1024), 10 + i) for i in range(3 * n))
        )
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(len(held), n)
        held[0].callback((True, b"x"))
        self.assertEqual(len(held), n + 1)  # one finished, one more started
        self.assertEqual(transport.producerState, "paused")


class DirectSendTests(TestCase):
    """
    Over a real unix socket, a frame goes to the socket at once while the
    transport has nothing buffered: neither side's C{writeSequence} (a
    reactor turn and two epoll_ctl calls per frame) is used for a call and
    its reply. Before, every frame went through the transport's buffer.
    """

    async def test_round_trip_bypasses_the_buffer(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.protocol import ClientCreator

        handler = Handler()
        factory = ServerFactory(handler, "meta", reactor)
        path = self.mktemp()
        port = reactor.listenUNIX(path, factory)
        self.addCleanup(port.stopListening)
        client = await ClientCreator(reactor, ClientConnection, 7).connectUNIX(path)
        self.addCleanup(client.close)
        await client.ready
        [server] = list(factory.connections)
        buffered: list[str] = []
        for name, proto in (("client", client), ("server", server)):
            t = proto.transport
            real = t.writeSequence

            def spy(parts: Any, name: str = name, real: Any = real) -> None:
                buffered.append(name)
                real(parts)

            t.writeSequence = spy  # type: ignore[method-assign]
        for ino in range(1, 6):
            got = await client.call("GETATTR", (ino,))
            self.assertEqual(got.ino, ino)
        self.assertEqual(buffered, [])

    def test_other_transports_write_through_the_transport(self) -> None:
        """A transport that is not a plain socket (TLS, tests) gets writeSequence as before."""
        t = StringTransport()
        client = ClientConnection(7)
        client.makeConnection(t)
        self.assertGreater(len(t.value()), 0)  # the HELLO, through the transport
        self.assertIsNone(client._direct)


class _Writes(StringTransport):
    """A StringTransport that counts the writes it is handed (one per send to the socket)."""

    def __init__(self, log: list[tuple[str, bytes]] | None = None, name: str = "") -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 5555))
        self.writes = 0
        self.log = log if log is not None else []
        self.name = name

    def writeSequence(self, seq: Any) -> None:  # noqa: N802 - ITransport's name
        self.writes += 1
        for part in seq:
            self.log.append((self.name, bytes(part)))
        super().writeSequence(seq)


def _frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(opcode, kind, id, payload) of each frame in C{data}."""
    out = []
    while data:
        length, opcode, kind, rid = wire.decode_header(data)
        out.append((opcode, kind, rid, data[20 : 4 + length]))
        data = data[4 + length :]
    return out


def _call(name: str, args: Any, rid: int) -> bytes:
    op = wire.BY_NAME[name]
    return b"".join(wire.encode_frame(op.code, wire.CALL, rid, wire.encode(op.args, args)))


class CallCostTests(SynchronousTestCase):
    """
    What one call costs the meta server beyond its handler (docs/workers.rst
    "What one RPC call costs"): replies to the calls of one read leave in one
    write, an event is encoded once for every subscriber, and each opcode's
    handler method is found once.
    """

    def connect(self, factory: ServerFactory, session: int, t: _Writes) -> Any:
        proto = factory.buildProtocol(None)
        proto.makeConnection(t)
        proto.dataReceived(
            _call("HELLO", wire.Hello(wire.PROTOCOL_VERSION, "gw", session, bytes(8)), 1)
        )
        t.clear()
        t.writes = 0
        del t.log[:]
        return proto

    def test_replies_of_one_read_leave_together(self) -> None:
        """Three GETATTRs arriving in one read are answered, in order, in one write."""
        factory = ServerFactory(Handler(), "meta", Clock())
        t = _Writes()
        proto = self.connect(factory, 7, t)
        proto.dataReceived(b"".join(_call("GETATTR", (ino,), 10 + ino) for ino in (1, 2, 3)))
        self.assertEqual(t.writes, 1)
        got = _frames(t.value())
        self.assertEqual(
            [(kind, rid) for _, kind, rid, _ in got],
            [(wire.REPLY, 11), (wire.REPLY, 12), (wire.REPLY, 13)],
        )
        self.assertEqual([wire.decode(wire.ATTRS, p).ino for *_, p in got], [1, 2, 3])
        # A call answered later (a Deferred) leaves on its own when it is answered.
        handler = factory.handler
        proto.dataReceived(_call("GETATTR", (100,), 20))
        self.assertEqual(t.writes, 1)
        handler.held[100].callback(attrs_of(100))
        self.assertEqual(t.writes, 2)

    def test_event_leaves_before_the_answer(self) -> None:
        """
        A change's event goes out before the answer to the call that made it:
        at once on another connection, and on the caller's own connection
        behind the replies already waiting there: the meta server pushes
        before it answers.
        """
        log: list[tuple[str, bytes]] = []

        class Publishing(Handler):
            def op_GETATTR(self, conn: Any, ino: int) -> Any:
                conn.factory.publish("EV_LEASES", (ino, []))
                return defer.succeed(attrs_of(ino))

        factory = ServerFactory(Publishing(), "meta", Clock())
        ta, tb = _Writes(log, "a"), _Writes(log, "b")
        a = self.connect(factory, 9, ta)
        b = self.connect(factory, 7, tb)
        factory.subscribers.update((a, b))
        b.dataReceived(_call("GETATTR", (5,), 30))
        a.dataReceived(_call("HEARTBEAT", None, 40) + _call("GETATTR", (6,), 41))
        sent = [(name, _frames(data)[0][1:3]) for name, data in log]
        ev = (wire.EVENT, 0)
        self.assertEqual(sorted(sent[:2]), [("a", ev), ("b", ev)])
        self.assertEqual(sent[2], ("b", (wire.REPLY, 30)))
        self.assertEqual(sent[-1], ("a", (wire.REPLY, 41)))
        self.assertEqual(
            [what for name, what in sent if name == "a"],
            [ev, (wire.REPLY, 40), ev, (wire.REPLY, 41)],
        )
        self.assertEqual([what for name, what in sent if name == "b"], [ev, (wire.REPLY, 30), ev])

    def test_event_encoded_once(self) -> None:
        """An EV_CHANGE for three subscribers is encoded once, the same bytes sent to each."""
        factory = ServerFactory(Handler(), "meta", Clock())
        ts = [_Writes() for _ in range(3)]
        conns = [self.connect(factory, 10 + i, t) for i, t in enumerate(ts)]
        factory.subscribers.update(conns)
        encoded: list[Any] = []
        real = wire.CHANGE.enc

        def enc(v: Any, out: bytearray) -> None:
            encoded.append(v)
            real(v, out)

        self.patch(wire.CHANGE, "enc", enc)
        factory.publish("EV_CHANGE", wire.ChangeEvent(99, 5, 1))
        self.assertEqual(len(encoded), 1)
        values = {t.value() for t in ts}
        self.assertEqual(len(values), 1)
        [(_, kind, _, payload)] = _frames(values.pop())
        self.assertEqual(
            (kind, wire.decode(wire.CHANGE, payload)), (wire.EVENT, wire.ChangeEvent(99, 5, 1))
        )

    def test_handler_method_found_once(self) -> None:
        """Each opcode's handler method is looked up once, not at every call."""
        looked: list[str] = []

        class Counting(Handler):
            def __getattribute__(self, name: str) -> Any:
                if name.startswith("op_"):
                    looked.append(name)
                return super().__getattribute__(name)

        factory = ServerFactory(Counting(), "meta", Clock())
        t = _Writes()
        proto = self.connect(factory, 7, t)
        for i in range(5):
            proto.dataReceived(_call("GETATTR", (1,), 50 + i))
        self.assertEqual(looked.count("op_GETATTR"), 1)
        self.assertEqual(len(_frames(t.value())), 5)


class ReentrantFramingTests(SynchronousTestCase):
    def test_bytes_arriving_while_frames_are_handled(self) -> None:
        """
        Bytes delivered while a frame is handled (a synchronous peer answering
        inside the handler) wait for the loop already running: every frame
        arrives once, in order, however the bytes were cut.
        """
        from tests.backend.remote.test_wire import Recorder

        stream = b"".join(_call("GETATTR", (i,), i) for i in range(1, 7))
        size = len(stream) // 6  # 28 bytes a frame
        cuts = [0, size + 7, size + 12, 3 * size + 5, len(stream)]
        pieces = [stream[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]

        class Feeding(Recorder):
            def frame_received(self, opcode: int, kind: int, rid: int, payload: bytes) -> None:
                super().frame_received(opcode, kind, rid, payload)
                if rid == 1:
                    self.dataReceived(pieces[1])  # within frame 2's header
                    self.dataReceived(pieces[2])  # frame 2's rest, frame 3, part of 4
                elif rid == 2:
                    self.dataReceived(pieces[3])

        proto = Feeding()
        proto.dataReceived(pieces[0])
        self.assertEqual([rid for _, _, rid, _ in proto.frames], [1, 2, 3, 4, 5, 6])
        self.assertEqual(len(proto._buf), 0)
