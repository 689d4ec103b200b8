"""XDR encoding and bounded decoding (L{claudefs_gateway.rpc.xdr})."""

from __future__ import annotations

import struct
import tracemalloc

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.rpc.xdr import Packer, Unpacker, XDRError, opaque_bytes


class RoundTripTests(SynchronousTestCase):
    @given(
        u32=st.integers(0, 2**32 - 1),
        i32=st.integers(-(2**31), 2**31 - 1),
        u64=st.integers(0, 2**64 - 1),
        i64=st.integers(-(2**63), 2**63 - 1),
        flag=st.booleans(),
        blob=st.binary(max_size=100),
        fixed=st.binary(min_size=5, max_size=5),
        items=st.lists(st.integers(0, 2**32 - 1), max_size=10),
    )
    def test_round_trip(self, u32, i32, u64, i64, flag, blob, fixed, items):  # type: ignore[no-untyped-def]
        """Every type decodes to what was encoded, and the encoding is 4-byte aligned."""
        p = Packer()
        p.u32(u32)
        p.i32(i32)
        p.u64(u64)
        p.i64(i64)
        p.bool(flag)
        p.opaque(blob)
        p.fixed(fixed, 5)
        p.array(items, Packer.u32)
        data = p.bytes()
        self.assertEqual(len(data) % 4, 0)
        self.assertEqual(len(data), p.size)
        u = Unpacker(data)
        self.assertEqual(u.u32(), u32)
        self.assertEqual(u.i32(), i32)
        self.assertEqual(u.u64(), u64)
        self.assertEqual(u.i64(), i64)
        self.assertEqual(u.bool(), flag)
        self.assertEqual(u.opaque(100), blob)
        self.assertEqual(u.fixed(5), fixed)
        self.assertEqual(u.array(10, Unpacker.u32), items)
        u.done()

    def test_opaque_bytes_matches_packer(self) -> None:
        for n in range(9):
            p = Packer()
            p.opaque(b"x" * n)
            self.assertEqual(p.bytes(), opaque_bytes(b"x" * n))

    def test_linked_list(self) -> None:
        data = b"\0\0\0\1" + b"\0\0\0\7" + b"\0\0\0\1" + b"\0\0\0\x08" + b"\0\0\0\0"
        self.assertEqual(Unpacker(data).linked_list(5, Unpacker.u32), [7, 8])
        self.assertRaises(XDRError, Unpacker(data).linked_list, 1, Unpacker.u32)


class BoundTests(SynchronousTestCase):
    def test_huge_length_is_an_error_not_an_allocation(self) -> None:
        """A 4 GiB length in a 100-byte buffer fails at once without allocating it."""
        data = b"\xff\xff\xff\xff" + b"\0" * 96
        tracemalloc.start()
        try:
            self.assertRaises(XDRError, Unpacker(data).opaque, 2**32)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertLess(peak, 64 * 1024)

    def test_length_over_bound(self) -> None:
        data = opaque_bytes(b"a" * 10)
        self.assertRaises(XDRError, Unpacker(data).opaque, 9)
        self.assertEqual(Unpacker(data).opaque(10), b"a" * 10)

    def test_array_count_cannot_exceed_the_buffer(self) -> None:
        self.assertRaises(XDRError, Unpacker(b"\0\0\0\x10" + b"\0" * 8).array, 100, Unpacker.u32)

    def test_array_over_bound(self) -> None:
        self.assertRaises(XDRError, Unpacker(b"\0\0\0\x03" + b"\0" * 12).array, 2, Unpacker.u32)

    def test_truncated(self) -> None:
        for f in (Unpacker.u32, Unpacker.u64, Unpacker.bool):
            self.assertRaises(XDRError, f, Unpacker(b"\0\0"))

    def test_bool_must_be_0_or_1(self) -> None:
        self.assertRaises(XDRError, Unpacker(b"\0\0\0\2").bool)

    def test_trailing_bytes(self) -> None:
        u = Unpacker(b"\0\0\0\1\0\0\0\2")
        u.u32()
        self.assertRaises(XDRError, u.done)

    def test_is_a_protocol_error(self) -> None:
        self.assertTrue(issubclass(XDRError, ProtocolError))

    @given(st.binary(max_size=64))
    def test_garbage_raises_only_xdr_error(self, data: bytes) -> None:
        """Decoding arbitrary bytes either works or raises XDRError."""
        u = Unpacker(data)
        try:
            u.u32()
            u.opaque(1024)
            u.array(16, Unpacker.u64)
            u.string(255)
        except XDRError:
            pass


class OpaqueStructTests(SynchronousTestCase):
    """L{Unpacker.opaque_struct} decodes exactly as L{Unpacker.opaque} then the fields would."""

    @given(
        data=st.binary(max_size=120),
        pos=st.integers(0, 8),
        limit=st.integers(0, 80),
        fmt=st.sampled_from([">I", ">QI", ">QII", ">Q8sI", ">Q8sII"]),
    )
    def test_same_as_field_by_field(self, data: bytes, pos: int, limit: int, fmt: str) -> None:
        st_ = struct.Struct(fmt)
        slow = Unpacker(data, min(pos, len(data)))
        fast = Unpacker(data, min(pos, len(data)))
        try:
            handle = slow.opaque(limit)
            at = slow.advance(st_.size)
            want: object = (handle, st_.unpack_from(data, at))
        except XDRError:
            want = XDRError
        try:
            got: object = fast.opaque_struct(limit, st_)
        except XDRError:
            got = XDRError
        self.assertEqual(got, want)
        if want is not XDRError:
            self.assertEqual(fast.pos, slow.pos)

    def test_example(self) -> None:
        p = Packer()
        p.opaque(b"handle")
        p.u64(7)
        p.u32(9)
        u = Unpacker(p.bytes())
        self.assertEqual(u.opaque_struct(64, struct.Struct(">QI")), (b"handle", (7, 9)))
        u.done()
        self.assertRaises(XDRError, Unpacker(p.bytes()).opaque_struct, 5, struct.Struct(">QI"))
        self.assertRaises(
            XDRError, Unpacker(p.bytes()[:-1]).opaque_struct, 64, struct.Struct(">QI")
        )
