"""Tests for L{claudefs_gateway.s3.chunked}: the aws-chunked decoder."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.s3.chunked import ChunkDecoder, ChunkEnd, Data, End, Trailer, encode


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


def decode(pieces: list[bytes], signed: bool = False) -> list[object]:
    d = ChunkDecoder(signed)
    events: list[object] = []
    for p in pieces:
        events += d.feed(p)
    d.close()
    return events


def collapse(events: list[object]) -> tuple[bytes, list[object]]:
    """Data joined; the other events in order."""
    data = b"".join(e for e in events if isinstance(e, Data))
    return data, [e for e in events if not isinstance(e, Data)]


SIG = "ab" * 32


class DecoderTests(SynchronousTestCase):
    def test_unsigned_trailer(self) -> None:
        """What boto3 sends over TLS: plain sizes, a checksum trailer."""
        body = b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n"
        data, rest = collapse(decode([body]))
        self.assertEqual(data, b"hello world")
        self.assertEqual(
            rest,
            [
                ChunkEnd(5, None),
                ChunkEnd(6, None),
                ChunkEnd(0, None),
                Trailer(("x-amz-checksum-crc32", "DUoRhQ==")),
                End(),
            ],
        )

    def test_signed(self) -> None:
        body = encode([b"abc"], [SIG, "cd" * 32])
        data, rest = collapse(decode([body], signed=True))
        self.assertEqual(data, b"abc")
        self.assertEqual(rest, [ChunkEnd(3, SIG), ChunkEnd(0, "cd" * 32), End()])

    def test_signature_presence_must_match_mode(self) -> None:
        self.assertRaises(ProtocolError, decode, [encode([b"x"], [SIG, SIG])], False)
        self.assertRaises(ProtocolError, decode, [encode([b"x"])], True)

    def test_malformed(self) -> None:
        for bad in [
            b"zz\r\n",
            b"3\r\nabcX\r\n",
            b"1" * 300,
            b"0\r\n\r\nextra",
            b"3\r\nabc\r\n0\r\nnot a header\r\n\r\n",
            b"-1\r\n",
            b"11111111111111111\r\n",
        ]:
            self.assertRaises(ProtocolError, decode, [bad])

    def test_truncated(self) -> None:
        """A body that stops early is an error at close."""
        body = encode([b"hello"])
        for n in range(len(body)):
            self.assertRaises(ProtocolError, decode, [body[:n]])

    def test_trailer_limits(self) -> None:
        trailers = [(f"x-h{i}", "v") for i in range(40)]
        self.assertRaises(ProtocolError, decode, [encode([b"a"], trailers=trailers)])

    @given(
        chunks=st.lists(st.binary(min_size=1, max_size=200), max_size=6),
        cuts=st.lists(st.integers(0, 5000), max_size=12),
        signed=st.booleans(),
        trailer=st.booleans(),
    )
    def test_any_split(
        self, chunks: list[bytes], cuts: list[int], signed: bool, trailer: bool
    ) -> None:
        """However the stream is cut, the same data and events come out."""
        sigs = [f"{i:064x}" for i in range(len(chunks) + 1)] if signed else None
        trailers = [("x-amz-checksum-crc32", "AAAAAA==")] if trailer else []
        body = encode(chunks, sigs, trailers)
        whole = collapse(decode([body], signed))
        self.assertEqual(collapse(decode(split_at(body, cuts), signed)), whole)
        self.assertEqual(whole[0], b"".join(chunks))

    @given(st.binary(max_size=400), st.booleans())
    def test_garbage(self, data: bytes, signed: bool) -> None:
        """Garbage raises ProtocolError or decodes; nothing else escapes."""
        try:
            decode([data], signed)
        except ProtocolError:
            pass
