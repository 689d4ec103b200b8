"""The NFSv4 COMPOUND and CB_COMPOUND codec (L{claudefs_gateway.nfs.v4.codec})."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.nfs.v4 import codec
from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.rpc import message as msg
from claudefs_gateway.rpc.record import RecordReader, encode_record
from claudefs_gateway.rpc.server import RPCStreamProtocol
from claudefs_gateway.rpc.xdr import Packer, Unpacker, XDRError
from claudefs_gateway.rpc.xdrtypes import Arm
from tests.nfs.v4.harness import Harness
from tests.rpc.xdr_strategies import values

# Every operation with decodable arguments, and ILLEGAL.
_OPNUMS = sorted(codec.OPS)


def _op() -> st.SearchStrategy[tuple[int, object]]:
    return st.sampled_from(_OPNUMS).flatmap(
        lambda op: st.tuples(st.just(op), values(codec.OPS[op].args))
    )


def _result() -> st.SearchStrategy[tuple[int, Arm]]:
    return st.sampled_from(_OPNUMS).flatmap(
        lambda op: st.tuples(st.just(op), values(codec.OPS[op].res))
    )


class CompoundCodecTests(SynchronousTestCase):
    @given(
        tag=st.binary(max_size=20),
        minor=st.integers(0, 2**32 - 1),
        ops=st.lists(_op(), max_size=4),
    )
    def test_round_trip(self, tag: bytes, minor: int, ops: list[tuple[int, object]]) -> None:
        """Every operation's arguments decode back to what was encoded."""
        data = codec.encode_compound(tag, minor, ops)
        got = codec.decode_compound(data)
        self.assertEqual((got.tag, got.minorversion), (tag, minor))
        self.assertEqual(got.ops, ops)

    @given(tag=st.binary(max_size=20), results=st.lists(_result(), max_size=4))
    def test_results_round_trip(self, tag: bytes, results: list[tuple[int, Arm]]) -> None:
        """Every operation's result union decodes back to what was encoded."""
        p = Packer()
        p.u32(0)
        p.opaque(tag)
        p.u32(len(results))
        for op, res in results:
            codec.encode_result(op, res, p)
        got = codec.decode_compound_result(Unpacker(p.bytes()))
        self.assertEqual(got.results, results)

    @given(data=st.binary(max_size=400))
    def test_garbage(self, data: bytes) -> None:
        """Garbage raises only XDRError (a ProtocolError), never anything else."""
        try:
            codec.decode_compound(data)
        except XDRError:
            pass

    @given(head=st.binary(min_size=12, max_size=12), body=st.binary(max_size=200))
    def test_garbage_after_header(self, head: bytes, body: bytes) -> None:
        """Garbage operations behind a plausible header too."""
        data = struct.pack(">III", 0, 1, 3) + body
        try:
            codec.decode_compound(head + data)
        except XDRError:
            pass

    def test_operation_count_bounded(self) -> None:
        """A count the record cannot hold is refused before anything is decoded."""
        data = struct.pack(">III", 0, 1, 1_000_000)
        self.assertRaises(XDRError, codec.read_header, Unpacker(data))

    def test_unknown_op_read_lazily(self) -> None:
        """The server's reader returns an unknown opcode with no arguments (OP_ILLEGAL)."""
        u = Unpacker(struct.pack(">I", 9999))
        self.assertEqual(codec.read_op(u), (9999, None))

    @given(
        ops=st.lists(
            st.sampled_from(sorted(codec.CB_OPS)).flatmap(
                lambda op: st.tuples(st.just(op), values(codec.CB_OPS[op].args))
            ),
            max_size=3,
        )
    )
    def test_callback_round_trip(self, ops: list[tuple[int, object]]) -> None:
        data = codec.encode_cb_compound(b"cb", 1, 0, ops)
        self.assertEqual(codec.decode_cb_compound(data), (b"cb", 1, 0, ops))


class ReplySizeTests(SynchronousTestCase):
    """L{codec.reply_size}: what a COMPOUND's reply may hold, for the connection's byte bound."""

    def _size(self, ops: list[tuple[int, object]]) -> int:
        data = codec.encode_compound(b"", 1, ops)
        return codec.reply_size(codec.read_header(Unpacker(data)))

    def test_reads_and_readdirs_counted(self) -> None:
        sid = codec.StateId(0, bytes(12))
        ops: list[tuple[int, object]] = [
            (c.OP_PUTROOTFH, None),
            (c.OP_READ, codec.ReadArgs(sid, 0, 1 << 20)),
            (c.OP_READ_PLUS, codec.ReadPlusArgs(sid, 0, 4096)),
            (c.OP_READDIR, codec.ReaddirArgs(0, bytes(8), 100, 8192, [])),
        ]
        self.assertEqual(self._size(ops), (1 << 20) + 4096 + 8192)

    def test_small_compound_is_zero(self) -> None:
        self.assertEqual(self._size([(c.OP_PUTROOTFH, None), (c.OP_GETFH, None)]), 0)

    @given(body=st.binary(max_size=300))
    def test_garbage_never_raises(self, body: bytes) -> None:
        """Operations that do not decode end the walk; the estimate never raises."""
        try:
            h = codec.read_header(Unpacker(body))
        except XDRError:
            return
        self.assertGreaterEqual(codec.reply_size(h), 0)


def _call(xid: int, args: bytes) -> bytes:
    return msg.encode_call(xid, c.NFS4_PROGRAM, 4, 1, args)


class StreamSplitTests(SynchronousTestCase):
    """COMPOUNDs framed on a stream give the same replies however the bytes are cut."""

    def _serve(self, h: Harness, chunks: list[bytes]) -> list[bytes]:
        proto = RPCStreamProtocol(h.server, 1 << 20, 16, None)
        t = StringTransport()
        proto.makeConnection(t)
        for chunk in chunks:
            proto.dataReceived(chunk)
        reader = RecordReader(1 << 20)
        return [r[4:] for r in reader.feed(t.value())]  # without the XIDs

    @given(cuts=st.lists(st.integers(0, 400), max_size=8))
    def test_any_split(self, cuts: list[int]) -> None:
        h = Harness()
        ops = [(c.OP_PUTROOTFH, None), (c.OP_GETFH, None)]
        stream = b"".join(
            encode_record(_call(i, codec.encode_compound(b"t", 2, ops))) for i in range(3)
        )
        whole = self._serve(Harness(), [stream])
        pieces = []
        last = 0
        for cut in sorted(set(cuts)):
            if cut < len(stream):
                pieces.append(stream[last:cut])
                last = cut
        pieces.append(stream[last:])
        self.assertEqual(self._serve(h, pieces), whole)
        self.assertEqual(len(whole), 3)

    @given(body=st.binary(max_size=300))
    def test_garbage_compounds_answered(self, body: bytes) -> None:
        """Any COMPOUND body gets a reply (GARBAGE_ARGS or a COMPOUND4res), never a crash."""
        h = Harness()
        out = h.server.handle(_call(7, body), h_peer())
        self.assertIsNotNone(out)


def h_peer() -> object:
    from claudefs_gateway.rpc.server import Peer
    from tests.nfs.v4.harness import FakeConn

    return Peer("127.0.0.1", 700, "tcp", 1 << 30, FakeConn())
