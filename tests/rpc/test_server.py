"""RPC dispatch and transports (L{claudefs_gateway.rpc.server}) on in-memory transports."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.core.drain import Activity
from claudefs_gateway.core.metrics import Metrics, RequestMetrics
from claudefs_gateway.rpc import message as msg
from claudefs_gateway.rpc.drc import ReplyCache
from claudefs_gateway.rpc.message import AuthSys, encode_call, parse_reply
from claudefs_gateway.rpc.record import RecordReader, encode_record
from claudefs_gateway.rpc.server import (
    BATCH_PARTS,
    READ_DEFAULT,
    READ_MAX,
    AuthError,
    Call,
    Peer,
    Procedure,
    Program,
    RPCDatagramProtocol,
    RPCServer,
    RPCStreamFactory,
    no_args,
)
from claudefs_gateway.rpc.xdr import Packer, Unpacker

PROG = 0x20000001


class Toy:
    """A test program: NULL, ECHO, WAIT (the test fires it), BOOM, COUNT (cached), DENY."""

    def __init__(self) -> None:
        self.waiting: list[defer.Deferred[list[bytes]]] = []
        self.count = 0
        self.cancelled = 0
        self.seen: list[Call] = []
        self.metrics = RequestMetrics(Metrics(), "toy")

    def program(self) -> Program:
        p = Program(PROG, "toy", self.metrics)

        def echo(call: Call, data: bytes) -> list[bytes]:
            self.seen.append(call)
            out = Packer()
            out.opaque(data)
            return out.chunks()

        def wait(call: Call, args: Any) -> defer.Deferred[list[bytes]]:
            def cancel(_: Any) -> None:
                self.cancelled += 1

            d: defer.Deferred[list[bytes]] = defer.Deferred(cancel)
            self.waiting.append(d)
            return d

        def boom(call: Call, args: Any) -> list[bytes]:
            raise RuntimeError("boom")

        def count(call: Call, args: Any) -> list[bytes]:
            self.count += 1
            return [self.count.to_bytes(4, "big")]

        def deny(call: Call, args: Any) -> list[bytes]:
            raise AuthError(msg.AUTH_TOOWEAK)

        for vers in (1, 2):
            p.add(vers, 0, Procedure("NULL", no_args, lambda c, a: []))
            p.add(vers, 1, Procedure("ECHO", lambda u: u.opaque(16), echo))
            p.add(vers, 2, Procedure("WAIT", no_args, wait))
            p.add(vers, 3, Procedure("BOOM", no_args, boom))
            p.add(vers, 4, Procedure("COUNT", no_args, count, cached=True))
            p.add(vers, 5, Procedure("DENY", no_args, deny))
            p.add(
                vers, 6, Procedure("SLOWCOUNT", no_args, wait, cached=True, cancel_on_close=False)
            )
        return p


def echo_args(data: bytes) -> bytes:
    p = Packer()
    p.opaque(data)
    return p.bytes()


PEER = Peer("10.1.2.3", 800, "udp", 65507)


class DispatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.toy = Toy()
        self.activity = Activity("toy", Metrics())
        self.server = RPCServer(ReplyCache(16), self.activity)
        self.server.add(self.toy.program())

    def reply(self, message: bytes, peer: Peer = PEER) -> msg.ReplyHeader:
        out = self.server.handle(message, peer)
        if isinstance(out, defer.Deferred):
            out = self.successResultOf(out)
        assert out is not None
        data = b"".join(out)
        self.last = data
        return parse_reply(data)

    def test_success(self) -> None:
        h = self.reply(encode_call(5, PROG, 1, 1, echo_args(b"hi")))
        self.assertEqual((h.xid, h.accepted, h.stat), (5, True, msg.SUCCESS))
        self.assertEqual(Unpacker(self.last, h.results_at).opaque(16), b"hi")

    def test_prog_unavail(self) -> None:
        h = self.reply(encode_call(5, PROG + 1, 1, 0))
        self.assertEqual((h.accepted, h.stat), (True, msg.PROG_UNAVAIL))

    def test_prog_mismatch_reports_range(self) -> None:
        h = self.reply(encode_call(5, PROG, 9, 0))
        self.assertEqual((h.stat, h.detail), (msg.PROG_MISMATCH, (1, 2)))

    def test_proc_unavail(self) -> None:
        h = self.reply(encode_call(5, PROG, 1, 99))
        self.assertEqual(h.stat, msg.PROC_UNAVAIL)

    def test_garbage_args(self) -> None:
        """Arguments that do not decode (here a 4 GiB opaque length) get GARBAGE_ARGS."""
        h = self.reply(encode_call(5, PROG, 1, 1, b"\xff\xff\xff\xff" + b"\0" * 80))
        self.assertEqual(h.stat, msg.GARBAGE_ARGS)
        h = self.reply(encode_call(6, PROG, 1, 1, echo_args(b"x" * 17)))
        self.assertEqual(h.stat, msg.GARBAGE_ARGS)
        h = self.reply(encode_call(7, PROG, 1, 1, b"\0\0"))
        self.assertEqual(h.stat, msg.GARBAGE_ARGS)

    def test_garbage_flood_logs_one_line(self) -> None:
        """
        A flood of undecodable calls from one host is answered GARBAGE_ARGS
        every time and counted, but logged once (at most once a minute).
        """
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for xid in range(100):
            h = self.reply(encode_call(xid, PROG, 1, 1, b"\0\0"))
            self.assertEqual(h.stat, msg.GARBAGE_ARGS)
        self.assertEqual(self.server.garbage, 100)
        lines = [e for e in events if "over" in e.get("log_format", "") and "what" in e]
        self.assertEqual(len(lines), 1)

    def test_rpc_mismatch(self) -> None:
        bad = bytearray(encode_call(5, PROG, 1, 0))
        bad[11] = 3
        h = self.reply(bytes(bad))
        self.assertEqual((h.accepted, h.stat, h.detail), (False, msg.RPC_MISMATCH, (2, 2)))

    def test_unknown_flavour_is_auth_error(self) -> None:
        h = self.reply(encode_call(5, PROG, 1, 0, flavor=msg.RPCSEC_GSS, cred_body=b"abcd"))
        self.assertEqual(
            (h.accepted, h.stat, h.detail), (False, msg.AUTH_ERROR, (msg.AUTH_BADCRED,))
        )

    def test_too_many_gids_is_auth_error(self) -> None:
        """AUTH_SYS carries at most 16 gids (RFC 5531 appendix A)."""
        ok = AuthSys(1, b"host", 1000, 1000, tuple(range(16)))
        self.assertEqual(self.reply(encode_call(5, PROG, 1, 1, echo_args(b""), ok)).stat, 0)
        self.assertEqual(self.toy.seen[-1].cred, ok)
        bad = AuthSys(1, b"host", 1000, 1000, tuple(range(17)))
        h = self.reply(encode_call(5, PROG, 1, 1, echo_args(b""), bad))
        self.assertEqual(
            (h.accepted, h.stat, h.detail), (False, msg.AUTH_ERROR, (msg.AUTH_BADCRED,))
        )

    def test_credential_over_400_bytes(self) -> None:
        h = self.reply(encode_call(5, PROG, 1, 0, flavor=msg.AUTH_SYS, cred_body=b"\0" * 404))
        self.assertEqual((h.accepted, h.stat), (False, msg.AUTH_ERROR))

    def test_malformed_auth_sys(self) -> None:
        h = self.reply(encode_call(5, PROG, 1, 0, flavor=msg.AUTH_SYS, cred_body=b"\0" * 8))
        self.assertEqual(
            (h.accepted, h.stat, h.detail), (False, msg.AUTH_ERROR, (msg.AUTH_BADCRED,))
        )

    def test_handler_auth_error(self) -> None:
        h = self.reply(encode_call(5, PROG, 1, 5))
        self.assertEqual(
            (h.accepted, h.stat, h.detail), (False, msg.AUTH_ERROR, (msg.AUTH_TOOWEAK,))
        )

    def test_system_err(self) -> None:
        h = self.reply(encode_call(5, PROG, 1, 3))
        self.assertEqual(h.stat, msg.SYSTEM_ERR)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_not_a_call_dropped(self) -> None:
        reply = msg.reply_success(5)
        self.assertIsNone(self.server.handle(reply, PEER))
        self.assertIsNone(self.server.handle(b"\0\0", PEER))

    def test_drc_replays_first_answer(self) -> None:
        """A retransmitted non-idempotent call gets the first reply; it does not run again."""
        call = encode_call(77, PROG, 1, 4)
        first = self.reply(call)
        first_bytes = self.last
        second = self.reply(call)
        self.assertEqual(self.last, first_bytes)
        self.assertEqual(first.xid, second.xid)
        self.assertEqual(self.toy.count, 1)
        self.reply(encode_call(78, PROG, 1, 4))
        self.assertEqual(self.toy.count, 2)

    def test_drc_drops_retransmission_in_progress(self) -> None:
        call = encode_call(9, PROG, 1, 6)
        d = self.server.handle(call, PEER)
        self.assertIsInstance(d, defer.Deferred)
        self.assertIsNone(self.server.handle(call, PEER))
        self.toy.waiting[0].callback([b"\0\0\0\1"])
        self.assertEqual(len(self.toy.waiting), 1)
        out = self.server.handle(call, PEER)
        assert isinstance(out, list)
        self.assertEqual(len(self.toy.waiting), 1)

    def test_activity_and_metrics(self) -> None:
        d = self.server.handle(encode_call(9, PROG, 1, 2), PEER)
        self.assertEqual(self.activity.in_flight, 1)
        self.toy.waiting[0].callback([])
        self.assertEqual(self.activity.in_flight, 0)
        assert isinstance(d, defer.Deferred)
        self.successResultOf(d)
        self.reply(encode_call(10, PROG, 1, 3))
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(self.toy.metrics.count("WAIT"), 1)
        self.assertEqual(self.toy.metrics.count("BOOM", "SYSTEM_ERR"), 1)


def records(transport: StringTransport) -> list[bytes]:
    reader = RecordReader(1 << 24)
    out = reader.feed(transport.value())
    transport.clear()
    return out


class StreamTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.toy = Toy()
        self.activity = Activity("toy", Metrics())
        self.server = RPCServer(ReplyCache(16), self.activity)
        self.server.add(self.toy.program())
        self.factory = RPCStreamFactory(self.server, 4096, max_in_flight=3, activity=self.activity)
        self.proto = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def test_connection_counted(self) -> None:
        self.assertEqual(len(self.activity.connections), 1)
        self.proto.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(len(self.activity.connections), 0)

    def test_out_of_order_replies(self) -> None:
        """Many calls in flight on one connection; replies go out as each finishes."""
        stream = b"".join(encode_record(encode_call(x, PROG, 1, 2)) for x in (1, 2))
        self.proto.dataReceived(
            stream + encode_record(encode_call(3, PROG, 1, 1, echo_args(b"e")), 7)
        )
        got = [parse_reply(r).xid for r in records(self.transport)]
        self.assertEqual(got, [3])
        self.toy.waiting[1].callback([])
        self.toy.waiting[0].callback([])
        self.assertEqual([parse_reply(r).xid for r in records(self.transport)], [2, 1])

    def test_replies_of_one_read_leave_together(self) -> None:
        """
        The calls of one read answered at once go out in one write, in
        order (one sendmsg, one wake-up of a pipelining client); a reply
        that comes later goes out alone.
        """
        writes: list[list[bytes]] = []
        self.patch(self.transport, "writeSequence", lambda seq: writes.append(list(seq)))
        stream = b"".join(
            encode_record(encode_call(x, PROG, 1, 1, echo_args(b"e%d" % x))) for x in range(5)
        )
        self.proto.dataReceived(stream + encode_record(encode_call(9, PROG, 1, 2)))
        self.assertEqual(len(writes), 1)
        got = RecordReader(1 << 20).feed(b"".join(writes[0]))
        self.assertEqual([parse_reply(r).xid for r in got], [0, 1, 2, 3, 4])
        self.toy.waiting[0].callback([])
        self.assertEqual(len(writes), 2)
        self.assertEqual(
            [parse_reply(r).xid for r in RecordReader(99).feed(b"".join(writes[1]))], [9]
        )

    def test_batches_are_bounded(self) -> None:
        """A read of many small calls is answered in writes of at most BATCH_PARTS pieces."""
        writes: list[list[bytes]] = []
        self.patch(self.transport, "writeSequence", lambda seq: writes.append(list(seq)))
        n = BATCH_PARTS + 10
        self.proto.dataReceived(
            b"".join(encode_record(encode_call(x, PROG, 1, 0)) for x in range(n))
        )
        self.assertGreater(len(writes), 1)
        self.assertTrue(all(len(w) <= BATCH_PARTS for w in writes))
        got = RecordReader(1 << 24).feed(b"".join(b"".join(w) for w in writes))
        self.assertEqual([parse_reply(r).xid for r in got], list(range(n)))

    def test_pauses_at_max_in_flight(self) -> None:
        for x in range(3):
            self.proto.dataReceived(encode_record(encode_call(x, PROG, 1, 2)))
        self.assertEqual(self.transport.producerState, "paused")
        self.toy.waiting[0].callback([])
        self.assertEqual(self.transport.producerState, "producing")

    def test_pauses_when_client_does_not_read(self) -> None:
        self.proto.pauseProducing()
        self.assertEqual(self.transport.producerState, "paused")
        self.proto.resumeProducing()
        self.assertEqual(self.transport.producerState, "producing")

    def test_record_too_large_closes(self) -> None:
        self.proto.dataReceived(b"\x80\x01\x00\x00")
        self.assertTrue(self.transport.disconnecting)

    def test_close_cancels_reads_not_writes(self) -> None:
        """A lost connection cancels reads; calls that change things finish for the cache."""
        self.proto.dataReceived(encode_record(encode_call(1, PROG, 1, 2)))
        self.proto.dataReceived(encode_record(encode_call(2, PROG, 1, 6)))
        self.proto.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(self.toy.cancelled, 1)
        self.toy.waiting[1].callback([b"\0\0\0\5"])
        assert self.proto.peer is not None
        out = self.server.handle(encode_call(2, PROG, 1, 6), self.proto.peer)
        self.assertIsInstance(out, list)
        self.assertEqual(self.activity.in_flight, 0)

    def test_reads_grow_for_a_large_record_only(self) -> None:
        """
        While a large record arrives, the socket reads ask for what it still
        lacks (at most READ_MAX); between records, Twisted's 64 KiB again.
        """
        factory = RPCStreamFactory(self.server, 1 << 20, max_in_flight=3, activity=self.activity)
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        transport.bufferSize = READ_DEFAULT  # type: ignore[attr-defined]
        proto.makeConnection(transport)
        call = encode_call(9, PROG, 1, 1, echo_args(b"e" * 600_000))
        rec = encode_record(call)
        proto.dataReceived(rec[:1000])
        self.assertEqual(transport.bufferSize, READ_MAX)  # type: ignore[attr-defined]
        proto.dataReceived(rec[1000 : len(rec) - 100_000])
        self.assertEqual(transport.bufferSize, 100_000)  # type: ignore[attr-defined]
        proto.dataReceived(rec[len(rec) - 100_000 : len(rec) - 10])
        self.assertEqual(transport.bufferSize, READ_DEFAULT)  # type: ignore[attr-defined]
        proto.dataReceived(rec[len(rec) - 10 :])
        self.assertEqual(transport.bufferSize, READ_DEFAULT)  # type: ignore[attr-defined]
        got = records(transport)
        self.assertEqual([parse_reply(r).xid for r in got], [9])

    def test_garbage_stream_does_not_escape(self) -> None:
        self.proto.dataReceived(encode_record(b"\x00" * 3))
        self.proto.dataReceived(encode_record(b"junkjunkjunkjunkjunkjunkjunk"))
        self.assertEqual(self.transport.value(), b"")
        self.assertFalse(self.transport.disconnecting)


class DatagramTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.toy = Toy()
        self.server = RPCServer(ReplyCache(16))
        self.server.add(self.toy.program())
        self.proto = RPCDatagramProtocol(self.server, max_in_flight=1)
        self.sent: list[tuple[bytes, Any]] = []

        class T:
            def write(inner, data: bytes, addr: Any) -> None:  # noqa: N805
                self.sent.append((data, addr))

        self.proto.transport = T()

    def test_reply_to_sender(self) -> None:
        self.proto.datagramReceived(encode_call(4, PROG, 2, 1, echo_args(b"u")), ("10.0.0.9", 900))
        self.assertEqual(len(self.sent), 1)
        self.assertEqual(self.sent[0][1], ("10.0.0.9", 900))
        self.assertEqual(parse_reply(self.sent[0][0]).xid, 4)

    def test_drops_beyond_in_flight(self) -> None:
        self.proto.datagramReceived(encode_call(1, PROG, 1, 2), ("h", 1))
        self.proto.datagramReceived(encode_call(2, PROG, 1, 1, echo_args(b"")), ("h", 1))
        self.assertEqual((self.proto.dropped, self.sent), (1, []))
        self.toy.waiting[0].callback([])
        self.assertEqual(len(self.sent), 1)

    def test_not_accepting_drops(self) -> None:
        self.proto.accepting = False
        self.proto.datagramReceived(encode_call(1, PROG, 1, 0), ("h", 1))
        self.assertEqual(self.sent, [])


class FullBufferTransport(StringTransport):
    """Pauses its producer once more than 64 KiB is written, as a real transport would."""

    def write(self, data: bytes) -> None:
        super().write(data)
        if len(self.value()) > 65536 and self.producer is not None:
            self.producer.pauseProducing()

    def writeSequence(self, seq: Any) -> None:
        for d in seq:
            self.write(d)


class BackPressureTests(SynchronousTestCase):
    def test_unread_replies_stop_the_work(self) -> None:
        """
        A client that sends many calls with large replies and reads none of
        them gets one reply buffered, not all: the rest wait unserved.
        """
        server = RPCServer()
        prog = Program(PROG, "big")
        served = []

        def big(call: Call, args: Any) -> list[bytes]:
            served.append(call.xid)
            return [b"\0" * (1 << 20)]

        prog.add(1, 1, Procedure("BIG", no_args, big))
        server.add(prog)
        proto = RPCStreamFactory(server, 4096, 16).buildProtocol(None)
        transport = FullBufferTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"".join(encode_record(encode_call(x, PROG, 1, 1)) for x in range(100)))
        self.assertEqual(served, [0])
        self.assertEqual(len(proto.backlog), 99)
        self.assertEqual(transport.producerState, "paused")
        # The client reads: the next call is served, and the buffer fills again.
        transport.clear()
        proto.resumeProducing()
        self.assertEqual(served, [0, 1])
        self.assertEqual(transport.producerState, "paused")
        # Everything once the client keeps up.
        while proto.backlog:
            transport.clear()
            proto.resumeProducing()
        transport.clear()
        proto.resumeProducing()
        self.assertEqual(served, list(range(100)))
        self.assertEqual(transport.producerState, "producing")


class ByteBoundTests(SynchronousTestCase):
    """C{max_queued_bytes}: calls running, with the replies they may return, are bounded in bytes."""

    def setUp(self) -> None:
        self.server = RPCServer()
        prog = Program(PROG, "reads")
        self.waiting: list[defer.Deferred[list[bytes]]] = []

        def read(call: Call, count: int) -> defer.Deferred[list[bytes]]:
            d: defer.Deferred[list[bytes]] = defer.Deferred()
            self.waiting.append(d)
            return d

        prog.add(1, 1, Procedure("READ", lambda u: u.u32(), read, reply_size=lambda n: n))
        prog.add(1, 2, Procedure("SMALL", no_args, read))
        self.server.add(prog)
        factory = RPCStreamFactory(self.server, 4096, 128, max_queued_bytes=4 << 20)
        self.proto = factory.buildProtocol(None)
        self.transport = FullBufferTransport()
        self.proto.makeConnection(self.transport)

    def call(self, xid: int, count: int) -> bytes:
        return encode_record(encode_call(xid, PROG, 1, 1, count.to_bytes(4, "big")))

    def test_reads_stop_at_the_bound(self) -> None:
        """
        Twenty pipelined 1 MiB READs, far below max_in_flight: four run
        (4 MiB), reading stops, and each one answered and read lets one more run.
        """
        self.proto.dataReceived(b"".join(self.call(x, 1 << 20) for x in range(20)))
        self.assertEqual(len(self.waiting), 4)
        self.assertEqual(self.transport.producerState, "paused")
        self.assertGreaterEqual(self.proto._held, 4 << 20)
        self.waiting[0].callback([b"\0" * (1 << 20)])
        # The reply is more than the transport buffers: the client must read it.
        self.assertEqual(len(self.waiting), 4)
        self.transport.clear()
        self.proto.resumeProducing()
        self.assertEqual(len(self.waiting), 5)
        self.assertEqual(self.transport.producerState, "paused")

    def test_replies_queued_unread_count(self) -> None:
        """
        Calls already running when the client stops reading: their replies
        queue, count against the bound, and no new call starts until read.
        """
        self.proto.dataReceived(b"".join(self.call(x, 1 << 20) for x in range(4)))
        self.proto.dataReceived(
            b"".join(encode_record(encode_call(10 + x, PROG, 1, 2)) for x in range(3))
        )
        self.assertEqual(len(self.waiting), 4)
        for d in self.waiting[:4]:
            d.callback([b"\0" * (1 << 20)])
        self.assertEqual(self.proto._held, 0)
        self.assertGreaterEqual(self.proto._queued, 3 << 20)
        self.assertEqual(len(self.waiting), 4)
        self.assertEqual(self.transport.producerState, "paused")
        self.transport.clear()
        self.proto.resumeProducing()
        self.assertEqual(self.proto._queued, 0)
        self.assertEqual(len(self.waiting), 7)
        self.assertEqual(self.transport.producerState, "producing")

    def test_one_call_over_the_bound_runs_alone(self) -> None:
        """A READ larger than the bound still runs, with nothing beside it."""
        self.proto.dataReceived(self.call(1, 8 << 20) + self.call(2, 1))
        self.assertEqual(len(self.waiting), 1)
        self.waiting[0].callback([b"x" * 16])
        self.assertEqual(len(self.waiting), 2)
        self.waiting[1].callback([b"y" * 4])
        self.assertEqual(self.proto._held, 0)
        self.assertEqual(self.transport.producerState, "producing")

    def test_small_calls_not_bounded_by_bytes(self) -> None:
        """Calls without a reply_size count only their record: max_in_flight applies."""
        self.proto.dataReceived(
            b"".join(encode_record(encode_call(x, PROG, 1, 2)) for x in range(100))
        )
        self.assertEqual(len(self.waiting), 100)


class ParseCallTests(SynchronousTestCase):
    def test_parse_call_sets_every_field(self) -> None:
        """
        L{msg.parse_call} fills its L{msg.Call} without the class's
        C{__init__} (issue 18): every field reads back as the constructor
        would set it, so a field added to L{msg.Call} and not to
        C{parse_call} fails here rather than on a call being served.
        """
        cred = AuthSys(7, b"client", 1000, 100, (4, 5))
        data = encode_call(9, PROG, 1, 2, b"args", cred)
        got = msg.parse_call(data)
        body = msg.encode_auth_sys(cred)
        want = msg.Call(9, PROG, 1, 2, msg.AUTH_SYS, cred, len(data) - 4, body)
        self.assertEqual(attrs.asdict(got, recurse=False), attrs.asdict(want, recurse=False))
        self.assertEqual(data[got.args_at :], b"args")


class DescribeTests(SynchronousTestCase):
    def test_describers_add_facts(self) -> None:
        """
        What the server's describers say of a connection joins its row for
        cfs-gateway status: counts add up, the NFS minor version shows in
        the dialect, and a describer that fails is skipped (and logged).
        """
        server = RPCServer()
        server.describers += [
            lambda conn: {"locks": 2, "nfs_minor": 2, "nfs4_clients": ["c"]},
            lambda conn: {"locks": 1, "state_of": "x"},
            lambda conn: 1 / 0,  # type: ignore[dict-item]
        ]
        proto = RPCStreamFactory(server, 4096, 16).buildProtocol(None)
        proto.makeConnection(StringTransport())
        proto.seen("nfs3", 4, 1000)
        doc = proto.describe()
        self.assertEqual(
            doc,
            {
                "uid": 1000,
                "in_flight": 0,
                "locks": 3,
                "nfs4_clients": ["c"],
                "state_of": "x",
                "dialect": "NFSv4.2",
            },
        )
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        proto.programs = {"mount": 3, "nfs3": 3}
        server.describers.clear()
        self.assertEqual(proto.describe()["dialect"], "MOUNTv3+NFSv3")


class TimeoutTests(SynchronousTestCase):
    """Idle and half-open TCP connections are closed (issue 19), timed on a Clock."""

    def setUp(self) -> None:
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.toy = Toy()
        self.metrics = Metrics()
        self.activity = Activity("toy", self.metrics)
        self.server = RPCServer(ReplyCache(16), self.activity)
        self.server.add(self.toy.program())
        self.factory = RPCStreamFactory(
            self.server,
            4096,
            activity=self.activity,
            clock=self.clock,
            idle_timeout=360,
            partial_timeout=60,
            metrics=RequestMetrics(self.metrics, "toy"),
        )
        self.proto = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def timeouts(self) -> float | None:
        return self.metrics.registry.get_sample_value(
            "gateway_rejected_requests_total", {"protocol": "toy", "reason": "timeout"}
        )

    def test_idle_closed(self) -> None:
        """No call for idle_timeout seconds closes the connection; a call resets the count."""
        self.clock.pump([10] * 30)
        self.proto.dataReceived(encode_record(encode_call(1, PROG, 1, 1, echo_args(b"e"))))
        self.clock.pump([10] * 35)
        self.assertFalse(self.transport.disconnecting)
        self.clock.pump([10] * 6)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.timeouts(), 1)

    def test_call_in_flight_is_not_idle(self) -> None:
        """A connection waiting on its own call (a blocking lock, say) is not idle."""
        self.proto.dataReceived(encode_record(encode_call(1, PROG, 1, 2)))
        self.clock.pump([60] * 20)
        self.assertFalse(self.transport.disconnecting)
        self.toy.waiting[0].callback([])
        self.clock.pump([60] * 7)
        self.assertTrue(self.transport.disconnecting)

    def test_half_sent_record_closed(self) -> None:
        """A record begun and not completed within partial_timeout closes the connection."""
        self.proto.dataReceived(b"\x80\x00\x01\x00" + b"\0" * 20)
        self.clock.pump([6] * 9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.pump([6] * 2)
        self.assertTrue(self.transport.disconnecting)

    def test_off_without_timeouts(self) -> None:
        factory = RPCStreamFactory(self.server, 4096, activity=self.activity, clock=self.clock)
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.proto.connectionLost(None)  # type: ignore[arg-type]
        self.clock.pump([1000] * 10)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class BudgetTests(SynchronousTestCase):
    """Calls being served and replies queued unread count in the memory budget (issue 19)."""

    def setUp(self) -> None:
        from claudefs_gateway.core.budget import MemoryBudget

        self.toy = Toy()
        self.activity = Activity("toy", Metrics())
        self.server = RPCServer(ReplyCache(16), self.activity)
        self.server.add(self.toy.program())
        self.budget = MemoryBudget(1 << 20)
        self.factory = RPCStreamFactory(
            self.server, 4096, activity=self.activity, budget=self.budget
        )
        self.proto = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def test_call_held_while_served(self) -> None:
        record = encode_call(1, PROG, 1, 2)
        self.proto.dataReceived(encode_record(record))
        self.assertEqual(self.budget.used, len(record))
        self.toy.waiting[0].callback([])
        self.assertEqual(self.budget.used, 0)

    def test_queued_replies_held_until_read(self) -> None:
        """Replies written while the client reads nothing count until it reads them."""
        self.proto.dataReceived(encode_record(encode_call(1, PROG, 1, 2)))
        self.proto.pauseProducing()
        self.toy.waiting[0].callback([b"x" * 100])
        self.assertGreater(self.budget.used, 100)
        self.proto.resumeProducing()
        self.assertEqual(self.budget.used, 0)

    def test_queued_replies_released_when_gone(self) -> None:
        self.proto.dataReceived(encode_record(encode_call(1, PROG, 1, 2)))
        self.proto.pauseProducing()
        self.toy.waiting[0].callback([b"x" * 100])
        self.proto.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(self.budget.used, 0)
