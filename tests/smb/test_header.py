"""The SMB2 header, transform header, compound splitting and the SMB1 NEGOTIATE reader."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as s
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.smb import constants as c
from claudefs_gateway.smb.header import (
    Header,
    Reader,
    TransformHeader,
    error_body,
    smb1_dialects,
    split_compound,
)

u16 = s.integers(0, 0xFFFF)
u32 = s.integers(0, 0xFFFFFFFF)
u64 = s.integers(0, 2**64 - 1)


@s.composite
def headers(draw: s.DrawFn) -> Header:
    flags = draw(u32)
    h = Header(
        command=draw(u16),
        status=draw(u32),
        credit_charge=draw(u16),
        credits=draw(u16),
        flags=flags,
        next_command=draw(u32),
        message_id=draw(u64),
        session_id=draw(u64),
        signature=draw(s.binary(min_size=16, max_size=16)),
    )
    if flags & c.SMB2_FLAGS_ASYNC_COMMAND:
        h.async_id = draw(u64)
    else:
        h.tree_id = draw(u32)
    return h


def smb1_negotiate(dialects: list[bytes]) -> bytes:
    data = b"".join(b"\x02" + d + b"\x00" for d in dialects)
    hdr = b"\xffSMB" + b"\x72" + b"\x00" * 27
    return hdr + b"\x00" + struct.pack("<H", len(data)) + data


class HeaderTests(SynchronousTestCase):
    @given(headers())
    def test_round_trip(self, h: Header) -> None:
        """Every header packs to 64 bytes and unpacks to itself (sync and async forms)."""
        raw = h.pack()
        self.assertEqual(len(raw), 64)
        self.assertEqual(Header.unpack(raw), h)

    @given(s.binary(max_size=200))
    def test_garbage(self, data: bytes) -> None:
        """Arbitrary bytes parse or raise ProtocolError, nothing else."""
        try:
            Header.unpack(data)
        except ProtocolError:
            pass

    def test_truncated(self) -> None:
        """A header shorter than 64 bytes is refused."""
        raw = Header(c.Command.ECHO).pack()
        for n in range(64):
            self.assertRaises(ProtocolError, Header.unpack, raw[:n])

    def test_bad_magic_and_size(self) -> None:
        raw = bytearray(Header(c.Command.ECHO).pack())
        raw[0] = 0xFD
        self.assertRaises(ProtocolError, Header.unpack, bytes(raw))
        raw = bytearray(Header(c.Command.ECHO).pack())
        raw[4] = 63
        self.assertRaises(ProtocolError, Header.unpack, bytes(raw))


class CompoundTests(SynchronousTestCase):
    def msg(self, command: int, body: bytes, nxt: int = 0) -> bytes:
        return Header(command, next_command=nxt).pack() + body

    def test_split(self) -> None:
        """Each request keeps its own bytes, padding included."""
        a = self.msg(c.Command.ECHO, b"\x04\x00\x00\x00" + b"\x00" * 4, 72)
        b = self.msg(c.Command.ECHO, b"\x04\x00\x00\x00")
        got = split_compound(a + b)
        self.assertEqual([bytes(m) for _, m in got], [a, b])
        self.assertEqual([h.next_command for h, _ in got], [72, 0])

    def test_bad_next_command(self) -> None:
        """NextCommand unaligned, inside a header or past the end is refused."""
        body = b"\x04\x00\x00\x00" + b"\x00" * 4
        for nxt in (70, 8, 1000):
            data = self.msg(c.Command.ECHO, body, nxt) + self.msg(c.Command.ECHO, body)
            self.assertRaises(ProtocolError, split_compound, data)

    @given(s.lists(s.binary(max_size=40), min_size=1, max_size=4), s.binary(max_size=8))
    def test_any_chain(self, bodies: list[bytes], junk: bytes) -> None:
        """Chains of any bodies split back; garbage tails raise only ProtocolError."""
        parts = []
        for i, b in enumerate(bodies):
            last = i + 1 == len(bodies)
            m = bytearray(self.msg(c.Command.ECHO, b))
            if not last:
                m += b"\x00" * ((-len(m)) % 8)
                m[20:24] = struct.pack("<I", len(m))
            parts.append(bytes(m))
        got = split_compound(b"".join(parts))
        self.assertEqual([bytes(m) for _, m in got], parts)
        try:
            split_compound(b"".join(parts)[: -len(junk) or None] + junk)
        except ProtocolError:
            pass


class TransformTests(SynchronousTestCase):
    @given(s.binary(min_size=16, max_size=16), s.binary(min_size=16, max_size=16), u32, u16, u64)
    def test_round_trip(self, sig: bytes, nonce: bytes, size: int, flags: int, sid: int) -> None:
        t = TransformHeader(sig, nonce, size, flags, sid)
        raw = t.pack()
        self.assertEqual(len(raw), 52)
        self.assertEqual(TransformHeader.unpack(raw), t)
        self.assertEqual(t.aad(), raw[20:])

    @given(s.binary(max_size=80))
    def test_garbage(self, data: bytes) -> None:
        try:
            TransformHeader.unpack(data)
        except ProtocolError:
            pass


class SMB1Tests(SynchronousTestCase):
    def test_dialects(self) -> None:
        """The dialect strings of the multi-protocol NEGOTIATE clients open with."""
        raw = smb1_negotiate([b"NT LM 0.12", b"SMB 2.002", b"SMB 2.???"])
        self.assertEqual(smb1_dialects(raw), [b"NT LM 0.12", b"SMB 2.002", b"SMB 2.???"])

    def test_not_negotiate(self) -> None:
        raw = bytearray(smb1_negotiate([b"SMB 2.???"]))
        raw[4] = 0x73
        self.assertRaises(ProtocolError, smb1_dialects, bytes(raw))

    @given(s.binary(max_size=100))
    def test_garbage(self, data: bytes) -> None:
        try:
            smb1_dialects(b"\xffSMB\x72" + data)
        except ProtocolError:
            pass


class ReaderTests(SynchronousTestCase):
    def test_bounds(self) -> None:
        r = Reader(b"\x01\x02\x03")
        self.assertEqual(r.u16(1), 0x0302)
        self.assertRaises(ProtocolError, r.u32, 0)
        self.assertRaises(ProtocolError, r.u8, -1)
        self.assertEqual(r.buffer(1000, 0), b"")
        self.assertRaises(ProtocolError, r.buffer, 0, 2, minimum=1)
        self.assertRaises(ProtocolError, Reader(b"a\x00b").utf16, 0, 3)

    def test_error_body(self) -> None:
        """The ERROR response (2.2.2) always carries at least one byte of ErrorData."""
        self.assertEqual(error_body(), b"\x09\x00\x00\x00\x00\x00\x00\x00\x00")
        self.assertEqual(error_body(b"\x01\x02\x03\x04")[4:8], b"\x04\x00\x00\x00")
