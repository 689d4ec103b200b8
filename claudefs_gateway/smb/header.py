# -*- test-case-name: tests.smb.test_header -*-
"""
The SMB2 packet header, the SMB3 TRANSFORM_HEADER, compound chains and the
SMB1 NEGOTIATE that opens many conversations ([MS-SMB2] 2.2.1, 2.2.41, 3.3.5.3).

Pure functions over bytes: every parser takes the bytes it was given, checks
every length against them and raises L{ProtocolError} for anything it cannot
read, so a caller never sees C{struct.error} or C{IndexError}.
"""

from __future__ import annotations

import struct
from codecs import utf_16_le_decode as _utf16_decode

import attrs

from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.smb.constants import (
    HEADER_SIZE,
    SMB1_MAGIC,
    SMB2_FLAGS_ASYNC_COMMAND,
    SMB2_MAGIC,
    TRANSFORM_HEADER_SIZE,
    TRANSFORM_MAGIC,
)

__all__ = [
    "HEADER_STRUCT",
    "Header",
    "TransformHeader",
    "split_compound",
    "error_body",
    "smb1_dialects",
    "Reader",
]

_HDR = struct.Struct("<4sHHIHHIIQQQ16s")
#: The 64-byte SMB2 header's layout (L{Header.pack}), for replies packed without a L{Header}.
HEADER_STRUCT = _HDR
_TRANSFORM = struct.Struct("<4s16s16sIHHQ")
assert _HDR.size == HEADER_SIZE and _TRANSFORM.size == TRANSFORM_HEADER_SIZE


class Reader:
    """
    Bounds-checked little-endian reads from one message.

    Offsets are absolute within C{data} (SMB2 offsets count from the start of
    the header, so handlers read bodies at C{64 + n}).
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = data

    def _need(self, offset: int, size: int) -> None:
        if offset < 0 or size < 0 or offset + size > len(self.data):
            raise ProtocolError(f"read of {size} bytes at {offset} past the end ({len(self.data)})")

    def u8(self, offset: int) -> int:
        self._need(offset, 1)
        return self.data[offset]

    def u16(self, offset: int) -> int:
        data = self.data
        if offset < 0 or offset + 2 > len(data):
            self._need(offset, 2)  # raises
        return int.from_bytes(data[offset : offset + 2], "little")

    def u32(self, offset: int) -> int:
        data = self.data
        if offset < 0 or offset + 4 > len(data):
            self._need(offset, 4)  # raises
        return int.from_bytes(data[offset : offset + 4], "little")

    def u64(self, offset: int) -> int:
        data = self.data
        if offset < 0 or offset + 8 > len(data):
            self._need(offset, 8)  # raises
        return int.from_bytes(data[offset : offset + 8], "little")

    def i64(self, offset: int) -> int:
        data = self.data
        if offset < 0 or offset + 8 > len(data):
            self._need(offset, 8)  # raises
        return int.from_bytes(data[offset : offset + 8], "little", signed=True)

    def raw(self, offset: int, size: int) -> bytes:
        self._need(offset, size)
        return bytes(self.data[offset : offset + size])

    def view(self, offset: int, size: int) -> memoryview:
        self._need(offset, size)
        return memoryview(self.data)[offset : offset + size]

    def buffer(self, offset: int, length: int, minimum: int = 0) -> bytes:
        """
        A variable-length field given by an (offset, length) pair: empty if
        C{length} is 0 whatever the offset, else it must start at or after
        C{minimum} (the end of the fixed part) and lie inside the message.
        """
        if length == 0:
            return b""
        if offset < minimum:
            raise ProtocolError(f"buffer offset {offset} inside the fixed part (< {minimum})")
        return self.raw(offset, length)

    def utf16(self, offset: int, length: int, minimum: int = 0) -> str:
        raw = self.buffer(offset, length, minimum)
        if len(raw) % 2:
            raise ProtocolError("odd length for a UTF-16 string")
        try:
            # The codec's own function: bytes.decode looks "utf-16-le" up
            # in the codec registry and calls a Python wrapper (4x the cost).
            return _utf16_decode(raw, "strict", True)[0]
        except UnicodeDecodeError:
            raise ProtocolError("invalid UTF-16 string") from None


@attrs.define
class Header:
    """
    One SMB2 header (sync or async form).

    @ivar status: NTSTATUS in a response; in a request of SMB 3.x the
        ChannelSequence (low 16 bits; checked on opens, MS-SMB2 3.3.5.2.10,
        L{claudefs_gateway.smb.filebase.FileBase.lookup_open}) and Reserved.
    @ivar credits: CreditRequest in a request, CreditResponse in a response.
    @ivar async_id: meaningful with C{SMB2_FLAGS_ASYNC_COMMAND}; then
        C{tree_id} is not on the wire.
    """

    command: int
    status: int = 0
    credit_charge: int = 0
    credits: int = 0
    flags: int = 0
    next_command: int = 0
    message_id: int = 0
    async_id: int = 0
    tree_id: int = 0
    session_id: int = 0
    signature: bytes = b"\x00" * 16

    @property
    def is_async(self) -> bool:
        return bool(self.flags & SMB2_FLAGS_ASYNC_COMMAND)

    def pack(self) -> bytes:
        if self.is_async:
            middle = self.async_id
        else:
            middle = self.tree_id << 32  # Reserved (4) then TreeId (4)
        return _HDR.pack(
            SMB2_MAGIC,
            HEADER_SIZE,
            self.credit_charge,
            self.status,
            self.command,
            self.credits,
            self.flags,
            self.next_command,
            self.message_id,
            middle,
            self.session_id,
            self.signature,
        )

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> Header:
        """
        @raise ProtocolError: shorter than a header, wrong magic or structure size.
        """
        if len(data) < HEADER_SIZE:
            raise ProtocolError(f"SMB2 message of {len(data)} bytes is shorter than its header")
        (
            magic,
            size,
            charge,
            status,
            command,
            credits,
            flags,
            next_command,
            message_id,
            middle,
            session_id,
            signature,
        ) = _HDR.unpack_from(data, 0)
        if magic != SMB2_MAGIC:
            raise ProtocolError("not an SMB2 header")
        if size != HEADER_SIZE:
            raise ProtocolError(f"SMB2 header StructureSize {size}")
        # Positional (the fields' order): keywords cost more, once per request.
        # The middle 8 bytes are the async id, or the process id and tree id.
        if flags & SMB2_FLAGS_ASYNC_COMMAND:
            async_id, tree_id = middle, 0
        else:
            async_id, tree_id = 0, middle >> 32
        return cls(
            command,
            status,
            charge,
            credits,
            flags,
            next_command,
            message_id,
            async_id,
            tree_id,
            session_id,
            signature,
        )


def split_compound(data: bytes | memoryview) -> list[tuple[Header, memoryview]]:
    """
    The requests of one (possibly compound) message, each with its own bytes
    (header to the next request's start, padding included: that is what its
    signature covers; MS-SMB2 3.1.4.1).

    @raise ProtocolError: a header is malformed, or NextCommand is not 8-byte
        aligned, points backwards, inside a header, or past the end.
    """
    view = memoryview(data)
    out: list[tuple[Header, memoryview]] = []
    offset = 0
    while True:
        chunk = view[offset:]
        h = Header.unpack(chunk)
        if h.next_command == 0:
            out.append((h, chunk))
            return out
        nxt = h.next_command
        if nxt % 8 or nxt < HEADER_SIZE or nxt >= len(chunk):
            raise ProtocolError(f"bad NextCommand {nxt}")
        out.append((h, chunk[:nxt]))
        offset += nxt


@attrs.define
class TransformHeader:
    """
    [MS-SMB2] 2.2.41: an encrypted message's header. C{flags} is
    EncryptionAlgorithm (3.0/3.0.2, always AES-128-CCM = 1) or Flags
    (3.1.1, Encrypted = 1): the value 1 either way.
    """

    signature: bytes
    nonce: bytes
    original_size: int
    flags: int
    session_id: int
    # The authenticated bytes as received (Reserved included), when parsed.
    received_aad: bytes | None = attrs.field(default=None, eq=False, repr=False)

    def pack(self) -> bytes:
        return _TRANSFORM.pack(
            TRANSFORM_MAGIC,
            self.signature,
            self.nonce,
            self.original_size,
            0,
            self.flags,
            self.session_id,
        )

    def aad(self) -> bytes:
        """What the AEAD authenticates: the header from the nonce on (2.2.41), as received."""
        if self.received_aad is not None:
            return self.received_aad
        return self.pack()[20:]

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> TransformHeader:
        if len(data) < TRANSFORM_HEADER_SIZE:
            raise ProtocolError("transform header truncated")
        magic, signature, nonce, size, _reserved, flags, session_id = _TRANSFORM.unpack_from(
            data, 0
        )
        if magic != TRANSFORM_MAGIC:
            raise ProtocolError("not a transform header")
        return cls(signature, nonce, size, flags, session_id, bytes(data[20:TRANSFORM_HEADER_SIZE]))


def error_body(data: bytes = b"") -> bytes:
    """
    The SMB2 ERROR response body (2.2.2): StructureSize 9, no error contexts,
    and at least one byte of ErrorData.
    """
    return struct.pack("<HBBI", 9, 0, 0, len(data)) + (data or b"\x00")


def smb1_dialects(data: bytes | memoryview) -> list[bytes]:
    """
    The dialect strings of an SMB1 NEGOTIATE request (MS-CIFS 2.2.4.52.1),
    which clients send first to find out whether the server speaks SMB2.

    @raise ProtocolError: not an SMB1 NEGOTIATE, or malformed.
    """
    r = Reader(data)
    if len(data) < 35 or bytes(data[:4]) != SMB1_MAGIC:
        raise ProtocolError("not an SMB1 message")
    if r.u8(4) != 0x72:
        raise ProtocolError("SMB1 command other than NEGOTIATE")
    # 32-byte header, then WordCount (1, must be 0), ByteCount (2), Bytes.
    if r.u8(32) != 0:
        raise ProtocolError("SMB1 NEGOTIATE with parameter words")
    count = r.u16(33)
    raw = r.raw(35, count)
    out = []
    for part in raw.split(b"\x02")[1:]:
        out.append(part.rstrip(b"\x00"))
    return out
