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
