# -*- test-case-name: tests.smb.test_messages -*-
"""
SMB2 command bodies ([MS-SMB2] 2.2.3-2.2.40): requests parsed from bytes,
responses packed to bytes.

A request parser takes the whole message (header first: every SMB2 offset
counts from the start of the header) and returns a frozen value, or raises
L{ProtocolError}, which the server answers with STATUS_INVALID_PARAMETER.
Response packers return the body to put after a response header.
"""

from __future__ import annotations

import struct
import uuid

import attrs

from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.smb.constants import HEADER_SIZE
from claudefs_gateway.smb.header import Reader

__all__ = [
    "NegotiateContext",
    "NegotiateRequest",
    "pack_negotiate_response",
    "pack_negotiate_context",
    "SessionSetupRequest",
    "pack_session_setup_response",
    "TreeConnectRequest",
    "pack_tree_connect_response",
    "CreateContext",
    "CreateRequest",
    "pack_create_response",
    "pack_create_contexts",
    "CloseRequest",
    "pack_close_response",
    "FileIdRequest",
    "ReadRequest",
    "pack_read_response_header",
    "WriteRequest",
    "pack_write_response",
    "LockElement",
    "LockRequest",
    "IoctlRequest",
    "pack_ioctl_response",
    "QueryDirectoryRequest",
    "ChangeNotifyRequest",
    "QueryInfoRequest",
    "SetInfoRequest",
    "pack_buffer_response",
    "SIMPLE_BODY",
    "check_size",
    "FileId",
    "LeaseRequest",
    "pack_lease_response",
    "OplockBreakAck",
    "LeaseBreakAck",
    "pack_oplock_break",
    "pack_lease_break",
    "pack_lease_break_ack_response",
]

B = HEADER_SIZE  # where every body starts

# The bodies of the requests a file's open, I/O and close are made of
# (CREATE, READ, WRITE, FLUSH, CLOSE, QUERY_DIRECTORY, QUERY_INFO, SET_INFO)
# and the FileTimes of CREATE's and CLOSE's replies are attrs.define, not
# frozen: a frozen attrs class sets each field through object.__setattr__ (a
# call per field, about six times a slot store). Each lives for one request
# and nothing changes it (docs/bench.rst "SMB: the per-request floor").

# The 4-byte body of LOGOFF, TREE_DISCONNECT, FLUSH, LOCK and ECHO responses.
SIMPLE_BODY = b"\x04\x00\x00\x00"

FileId = tuple[int, int]  # (persistent, volatile)


def check_size(r: Reader, expected: int) -> None:
    """
    StructureSize must be C{expected} and the fixed part present (an odd
    StructureSize counts one byte of the variable part, which may be absent).

    @raise ProtocolError: otherwise.
    """
    size = r.u16(B)
    if size != expected:
        raise ProtocolError(f"StructureSize {size}, expected {expected}")
    fixed = expected & ~1
    if len(r.data) < B + fixed:
        raise ProtocolError("request body truncated")


def _fixed(layout: struct.Struct, data: bytes | memoryview, expected: int) -> tuple[int, ...]:
    """
    A request's fixed part, StructureSize first, in one unpack: the checks
    of L{check_size} (same errors) without a L{Reader} call per field, as
    CREATE's fixed part is read (each field read through the L{Reader} was
    a few Python calls, 8 to 20 a request; docs/bench.rst "SMB: the
    per-request floor").
    """
    try:
        fields = layout.unpack_from(data, B)
    except struct.error:
        check_size(Reader(data), expected)  # the body is short: raises
        raise ProtocolError("request body truncated") from None
    if fields[0] != expected:
        raise ProtocolError(f"StructureSize {fields[0]}, expected {expected}")
    return fields


def _file_id(r: Reader, offset: int) -> FileId:
    return (r.u64(offset), r.u64(offset + 8))


def _pack_file_id(fid: FileId) -> bytes:
    return struct.pack("<QQ", fid[0], fid[1])


def _pad8(n: int) -> int:
    return (n + 7) & ~7


# -- NEGOTIATE (2.2.3, 2.2.4) ---------------------------------------------------


@attrs.frozen
class NegotiateContext:
    type: int
    data: bytes


@attrs.frozen
class NegotiateRequest:
    dialects: tuple[int, ...]
    security_mode: int
    capabilities: int
    client_guid: bytes
    contexts: tuple[NegotiateContext, ...]

    MAX_DIALECTS = 64
    MAX_CONTEXTS = 32

    @classmethod
    def parse(cls, data: bytes | memoryview) -> NegotiateRequest:
        r = Reader(data)
        check_size(r, 36)
        count = r.u16(B + 2)
        if count == 0 or count > cls.MAX_DIALECTS:
            raise ProtocolError(f"DialectCount {count}")
        security_mode = r.u16(B + 4)
        capabilities = r.u32(B + 8)
        guid = r.raw(B + 12, 16)
        dialects = tuple(r.u16(B + 36 + 2 * i) for i in range(count))
        contexts: list[NegotiateContext] = []
        if 0x0311 in dialects:
            ctx_offset = r.u32(B + 28)
            ctx_count = r.u16(B + 32)
            if ctx_count > cls.MAX_CONTEXTS:
                raise ProtocolError(f"NegotiateContextCount {ctx_count}")
            off = ctx_offset
            for i in range(ctx_count):
                if off < B + 36 + 2 * count:
                    raise ProtocolError("negotiate context overlaps the dialects")
                ctype = r.u16(off)
                length = r.u16(off + 2)
                contexts.append(NegotiateContext(ctype, r.raw(off + 8, length)))
                if i + 1 < ctx_count:
                    off = _pad8(off + 8 + length)
        return cls(dialects, security_mode, capabilities, guid, tuple(contexts))


def pack_negotiate_context(ctype: int, data: bytes) -> bytes:
    return struct.pack("<HHI", ctype, len(data), 0) + data


def pack_negotiate_response(
    *,
    security_mode: int,
    dialect: int,
    server_guid: bytes,
    capabilities: int,
    max_transact: int,
    max_read: int,
    max_write: int,
    system_time: int,
    security_buffer: bytes,
    contexts: list[bytes],
) -> bytes:
    """The NEGOTIATE response body; C{contexts} are packed contexts (3.1.1 only)."""
    sec_offset = B + 64
    body_end = sec_offset + len(security_buffer)
    ctx_offset = _pad8(body_end) if contexts else 0
    fixed = struct.pack(
        "<HHHH16sIIIIQQHHI",
        65,
        security_mode,
        dialect,
        len(contexts),
        server_guid,
        capabilities,
        max_transact,
        max_read,
        max_write,
        system_time,
        0,
        sec_offset if security_buffer else 0,
        len(security_buffer),
        ctx_offset,
    )
    out = bytearray(fixed + security_buffer)
    if contexts:
        out += b"\x00" * (ctx_offset - body_end)
        for i, ctx in enumerate(contexts):
            out += ctx
            if i + 1 < len(contexts):
                out += b"\x00" * (_pad8(len(out) + B) - len(out) - B)
    return bytes(out)


# -- SESSION_SETUP (2.2.5, 2.2.6) --------------------------------------------------


@attrs.frozen
class SessionSetupRequest:
    flags: int
    security_mode: int
    capabilities: int
    previous_session_id: int
    token: bytes

    @classmethod
    def parse(cls, data: bytes | memoryview) -> SessionSetupRequest:
        r = Reader(data)
        check_size(r, 25)
        token = r.buffer(r.u16(B + 12), r.u16(B + 14), B + 24)
        return cls(r.u8(B + 2), r.u8(B + 3), r.u32(B + 4), r.u64(B + 16), token)


def pack_session_setup_response(flags: int, token: bytes) -> bytes:
    return struct.pack("<HHHH", 9, flags, B + 8 if token else 0, len(token)) + token


# -- TREE_CONNECT (2.2.9, 2.2.10) -----------------------------------------------------


@attrs.frozen
class TreeConnectRequest:
    flags: int
    path: str

    @classmethod
    def parse(cls, data: bytes | memoryview) -> TreeConnectRequest:
        r = Reader(data)
        check_size(r, 9)
        return cls(r.u16(B + 2), r.utf16(r.u16(B + 4), r.u16(B + 6), B + 8))


def pack_tree_connect_response(
    share_type: int, share_flags: int, capabilities: int, maximal_access: int
) -> bytes:
    return struct.pack("<HBBIII", 16, share_type, 0, share_flags, capabilities, maximal_access)


# -- CREATE (2.2.13, 2.2.14) ------------------------------------------------------------


@attrs.frozen
class CreateContext:
    name: bytes
    data: bytes


def _parse_create_contexts(
    r: Reader, offset: int, length: int, minimum: int
) -> list[CreateContext]:
    if length == 0:
        return []
    if offset < minimum or offset % 8:
        raise ProtocolError(f"create contexts at {offset}")
    end = offset + length
    if end > len(r.data):
        raise ProtocolError("create contexts past the end")
    out: list[CreateContext] = []
    pos = offset
    while True:
        nxt = r.u32(pos)
        name_off, name_len = r.u16(pos + 4), r.u16(pos + 6)
        data_off, data_len = r.u16(pos + 10), r.u32(pos + 12)
        limit = end if nxt == 0 else pos + nxt
        if limit > end or (nxt and (nxt % 8 or nxt < 16)):
            raise ProtocolError("bad create context chain")
        name = r.raw(pos + name_off, name_len)
        if name_off < 16 or pos + name_off + name_len > limit:
            raise ProtocolError("create context name out of bounds")
        if name_len < 4:
            # Windows and Samba refuse tags shorter than four bytes
            # (smbtorture smb2.create.blob).
            raise ProtocolError("create context name shorter than 4 bytes")
        if data_len:
            if data_off < 16 or pos + data_off + data_len > limit:
                raise ProtocolError("create context data out of bounds")
            value = r.raw(pos + data_off, data_len)
        else:
            value = b""
        out.append(CreateContext(name, value))
        if len(out) > 32:
            raise ProtocolError("too many create contexts")
        if nxt == 0:
            return out
        pos += nxt


def pack_create_contexts(contexts: list[CreateContext]) -> bytes:
    """A create context chain (2.2.13.2): each 8-byte aligned, names padded to 8."""
    out = bytearray()
    for i, c in enumerate(contexts):
        name_off = 16
        data_off = _pad8(name_off + len(c.name)) if c.data else 0
        size = (data_off + len(c.data)) if c.data else name_off + len(c.name)
        last = i + 1 == len(contexts)
        nxt = 0 if last else _pad8(size)
        entry = (
            struct.pack("<IHHHHI", nxt, name_off, len(c.name), 0, data_off, len(c.data)) + c.name
        )
        if c.data:
            entry += b"\x00" * (data_off - len(entry)) + c.data
        if not last:
            entry += b"\x00" * (nxt - len(entry))
        out += entry
    return bytes(out)


@attrs.define
class CreateRequest:
    oplock: int
    impersonation: int
    desired_access: int
    file_attributes: int
    share_access: int
    disposition: int
    options: int
    name: str
    contexts: tuple[CreateContext, ...]

    @classmethod
    def parse(cls, data: bytes | memoryview) -> CreateRequest:
        # The fixed part (MS-SMB2 2.2.13) at once.
        (
            _,
            oplock,
            impersonation,
            desired_access,
            file_attributes,
            share_access,
            disposition,
            options,
            name_off,
            name_len,
            ctx_off,
            ctx_len,
        ) = _fixed(_CREATE_FIXED, data, 57)
        r = Reader(data)
        name = r.utf16(name_off, name_len, B + 56) if name_len else ""
        contexts = _parse_create_contexts(r, ctx_off, ctx_len, B + 56) if ctx_len else ()
        return cls(
            oplock=oplock,
            impersonation=impersonation,
            desired_access=desired_access,
            file_attributes=file_attributes,
            share_access=share_access,
            disposition=disposition,
            options=options,
            name=name,
            contexts=tuple(contexts),
        )


# StructureSize, SecurityFlags skipped, RequestedOplockLevel,
# ImpersonationLevel, SmbCreateFlags and Reserved skipped, DesiredAccess,
# FileAttributes, ShareAccess, CreateDisposition, CreateOptions, NameOffset,
# NameLength, CreateContextsOffset, CreateContextsLength.
_CREATE_FIXED = struct.Struct("<HxBI16xIIIIIHHII")
assert _CREATE_FIXED.size == 56


@attrs.define
class FileTimes:
    """The four Windows times and sizes and attributes CREATE and CLOSE report."""

    creation: int
    access: int
    write: int
    change: int
    allocation: int
    eof: int
    attributes: int


def pack_create_response(
    action: int,
    times: FileTimes,
    file_id: FileId,
    contexts: list[CreateContext],
    oplock_level: int = 0,
) -> bytes:
    ctx = pack_create_contexts(contexts) if contexts else b""
    fixed = _CREATE_RESPONSE_FIXED.pack(
        89,
        oplock_level,
        0,
        action,
        times.creation,
        times.access,
        times.write,
        times.change,
        times.allocation,
        times.eof,
        times.attributes,
        0,
        file_id[0],
        file_id[1],
        B + 88 if ctx else 0,
        len(ctx),
    )
    return fixed + ctx if ctx else fixed


_CREATE_RESPONSE_FIXED = struct.Struct("<HBBIQQQQQQIIQQII")
assert _CREATE_RESPONSE_FIXED.size == 88


@attrs.frozen
class LeaseRequest:
    """
    SMB2_CREATE_REQUEST_LEASE (v1, 32 bytes) or _V2 (52 bytes), MS-SMB2
    2.2.13.2.8 and 2.2.13.2.10. C{state} is in wire bits.
    """

    key: bytes
    state: int
    flags: int
    version: int
    parent: bytes | None = None
    epoch: int = 0

    @classmethod
    def parse(cls, data: bytes) -> LeaseRequest:
        """@raise ProtocolError: neither size (Samba and Windows: INVALID_PARAMETER)."""
        if len(data) == 32:
            key, state, flags = struct.unpack_from("<16sII", data)
            return cls(key, state, flags, 1)
        if len(data) == 52:
            key, state, flags, _duration, parent, epoch = struct.unpack_from("<16sIIQ16sH", data)
            has_parent = bool(flags & 0x4) and parent != b"\x00" * 16
            return cls(key, state, flags, 2, parent if has_parent else None, epoch)
        raise ProtocolError(f"lease context of {len(data)} bytes")


def pack_lease_response(
    key: bytes, state: int, flags: int, version: int, parent: bytes | None = None, epoch: int = 0
) -> bytes:
    """The RqLs create context answer (v1: 32 bytes; v2: 52 bytes with the epoch)."""
    if version == 1:
        return struct.pack("<16sIIQ", key, state, flags, 0)
    return struct.pack("<16sIIQ16sHH", key, state, flags, 0, parent or b"\x00" * 16, epoch, 0)


@attrs.frozen
class OplockBreakAck:
    """OPLOCK_BREAK acknowledgment (2.2.24.1), 24 bytes."""

    level: int
    file_id: FileId

    @classmethod
    def parse(cls, data: bytes | memoryview) -> OplockBreakAck:
        r = Reader(data)
        check_size(r, 24)
        return cls(r.u8(B + 2), _file_id(r, B + 8))


@attrs.frozen
class LeaseBreakAck:
    """LEASE_BREAK acknowledgment (2.2.24.2), 36 bytes; C{state} in wire bits."""

    flags: int
    key: bytes
    state: int

    @classmethod
    def parse(cls, data: bytes | memoryview) -> LeaseBreakAck:
        r = Reader(data)
        check_size(r, 36)
        return cls(r.u32(B + 4), r.raw(B + 8, 16), r.u32(B + 24))


def pack_oplock_break(level: int, file_id: FileId) -> bytes:
    """An oplock break notification or acknowledgment response (2.2.23.1, 2.2.25.1)."""
    return struct.pack("<HBBI", 24, level, 0, 0) + _pack_file_id(file_id)


def pack_lease_break(epoch: int, flags: int, key: bytes, current: int, new: int) -> bytes:
    """A lease break notification (2.2.23.2): states in wire bits; reason and hints 0."""
    return struct.pack("<HHI16sIIIII", 44, epoch, flags, key, current, new, 0, 0, 0)


def pack_lease_break_ack_response(key: bytes, state: int) -> bytes:
    """The lease break acknowledgment response (2.2.25.2)."""
    return struct.pack("<HHI16sIQ", 36, 0, 0, key, state, 0)


# -- CLOSE, FLUSH (2.2.15-2.2.18) ------------------------------------------------------


@attrs.define
class CloseRequest:
    flags: int
    file_id: FileId

    @classmethod
    def parse(cls, data: bytes | memoryview) -> CloseRequest:
        _, flags, persistent, volatile = _fixed(_CLOSE_FIXED, data, 24)
        return cls(flags, (persistent, volatile))


# StructureSize, Flags, Reserved skipped, FileId.
_CLOSE_FIXED = struct.Struct("<HH4xQQ")
assert _CLOSE_FIXED.size == 24


def pack_close_response(flags: int, times: FileTimes | None) -> bytes:
    if times is None:
        return struct.pack("<HHI", 60, 0, 0) + b"\x00" * 52
    return struct.pack(
        "<HHIQQQQQQI",
        60,
        flags,
        0,
        times.creation,
        times.access,
        times.write,
        times.change,
        times.allocation,
        times.eof,
        times.attributes,
    )


@attrs.define
class FileIdRequest:
    """FLUSH (2.2.17): only a FileId at body offset 8."""

    file_id: FileId

    @classmethod
    def parse(cls, data: bytes | memoryview) -> FileIdRequest:
        _, persistent, volatile = _fixed(_FILE_ID_FIXED, data, 24)
        return cls((persistent, volatile))


# StructureSize, Reserved1 and Reserved2 skipped, FileId.
_FILE_ID_FIXED = struct.Struct("<H6xQQ")
assert _FILE_ID_FIXED.size == 24


# -- READ, WRITE (2.2.19-2.2.22) ----------------------------------------------------------


@attrs.define
class ReadRequest:
    flags: int
    length: int
    offset: int
    file_id: FileId
    minimum: int
    channel: int

    @classmethod
    def parse(cls, data: bytes | memoryview) -> ReadRequest:
        _, flags, length, offset, persistent, volatile, minimum, channel = _fixed(
            _READ_FIXED, data, 49
        )
        return cls(
            flags=flags,
            length=length,
            offset=offset,
            file_id=(persistent, volatile),
            minimum=minimum,
            channel=channel,
        )


# StructureSize, Padding skipped, Flags, Length, Offset, FileId, MinimumCount,
# Channel; RemainingBytes and the channel info skipped.
_READ_FIXED = struct.Struct("<HxBIQQQII8x")
assert _READ_FIXED.size == 48


def pack_read_response_header(length: int) -> bytes:
    """The READ response body before its data (the data follows at offset 80)."""
    return struct.pack("<HBBIII", 17, B + 16, 0, length, 0, 0)


@attrs.define
class WriteRequest:
    offset: int
    file_id: FileId
    channel: int
    flags: int
    data: memoryview

    @classmethod
    def parse(cls, data: bytes | memoryview) -> WriteRequest:
        _, data_offset, length, offset, persistent, volatile, channel, flags = _fixed(
            _WRITE_FIXED, data, 49
        )
        if length:
            if data_offset < B + 48:
                raise ProtocolError("WRITE data inside the fixed part")
            if data_offset + length > len(data):
                raise ProtocolError(
                    f"read of {length} bytes at {data_offset} past the end ({len(data)})"
                )
            payload = memoryview(data)[data_offset : data_offset + length]
        else:
            payload = memoryview(b"")
        return cls(
            offset=offset,
            file_id=(persistent, volatile),
            channel=channel,
            flags=flags,
            data=payload,
        )


# StructureSize, DataOffset, Length, Offset, FileId, Channel; RemainingBytes
# and the channel info skipped; Flags.
_WRITE_FIXED = struct.Struct("<HHIQQQI8xI")
assert _WRITE_FIXED.size == 48


def pack_write_response(count: int) -> bytes:
    return struct.pack("<HHIIHH", 17, 0, count, 0, 0, 0)


# -- LOCK (2.2.26) ----------------------------------------------------------------------------


@attrs.frozen
class LockElement:
    offset: int
    length: int
    flags: int


@attrs.frozen
class LockRequest:
    file_id: FileId
    locks: tuple[LockElement, ...]
    sequence: int

    MAX_LOCKS = 64

    @classmethod
    def parse(cls, data: bytes | memoryview) -> LockRequest:
        r = Reader(data)
        check_size(r, 48)
        count = r.u16(B + 2)
        if count == 0 or count > cls.MAX_LOCKS:
            raise ProtocolError(f"LockCount {count}")
        locks = tuple(
            LockElement(r.u64(B + 24 + 24 * i), r.u64(B + 32 + 24 * i), r.u32(B + 40 + 24 * i))
            for i in range(count)
        )
        return cls(_file_id(r, B + 8), locks, r.u32(B + 4))


# -- IOCTL (2.2.31, 2.2.32) ---------------------------------------------------------------------


@attrs.frozen
class IoctlRequest:
    ctl_code: int
    file_id: FileId
    input: bytes
    max_input_response: int
    max_output_response: int
    flags: int

    @classmethod
    def parse(cls, data: bytes | memoryview) -> IoctlRequest:
        r = Reader(data)
        check_size(r, 57)
        return cls(
            ctl_code=r.u32(B + 4),
            file_id=_file_id(r, B + 8),
            input=r.buffer(r.u32(B + 24), r.u32(B + 28), B + 56),
            max_input_response=r.u32(B + 32),
            max_output_response=r.u32(B + 44),
            flags=r.u32(B + 48),
        )


def pack_ioctl_response(ctl_code: int, file_id: FileId, output: bytes) -> bytes:
    out_offset = B + 48
    return (
        struct.pack(
            "<HHI16sIIIIII",
            49,
            0,
            ctl_code,
            _pack_file_id(file_id),
            out_offset,
            0,
            out_offset,
            len(output),
            0,
            0,
        )
        + output
    )


# -- QUERY_DIRECTORY, CHANGE_NOTIFY, QUERY_INFO, SET_INFO (2.2.33-2.2.40) ------------------------


@attrs.define
class QueryDirectoryRequest:
    info_class: int
    flags: int
    file_index: int
    file_id: FileId
    pattern: str
    output_length: int

    @classmethod
    def parse(cls, data: bytes | memoryview) -> QueryDirectoryRequest:
        (
            _,
            info_class,
            flags,
            file_index,
            persistent,
            volatile,
            name_off,
            name_len,
            output_length,
        ) = _fixed(_QUERY_DIRECTORY_FIXED, data, 33)
        return cls(
            info_class=info_class,
            flags=flags,
            file_index=file_index,
            file_id=(persistent, volatile),
            pattern=Reader(data).utf16(name_off, name_len, B + 32) if name_len else "",
            output_length=output_length,
        )


# StructureSize, FileInformationClass, Flags, FileIndex, FileId,
# FileNameOffset, FileNameLength, OutputBufferLength.
_QUERY_DIRECTORY_FIXED = struct.Struct("<HBBIQQHHI")
assert _QUERY_DIRECTORY_FIXED.size == 32


@attrs.frozen
class ChangeNotifyRequest:
    flags: int
    output_length: int
    file_id: FileId
    completion_filter: int

    @classmethod
    def parse(cls, data: bytes | memoryview) -> ChangeNotifyRequest:
        r = Reader(data)
        check_size(r, 32)
        return cls(r.u16(B + 2), r.u32(B + 4), _file_id(r, B + 8), r.u32(B + 24))


@attrs.define
class QueryInfoRequest:
    info_type: int
    info_class: int
    output_length: int
    input: bytes
    additional: int
    flags: int
    file_id: FileId

    @classmethod
    def parse(cls, data: bytes | memoryview) -> QueryInfoRequest:
        (
            _,
            info_type,
            info_class,
            output_length,
            input_off,
            input_len,
            additional,
            flags,
            persistent,
            volatile,
        ) = _fixed(_QUERY_INFO_FIXED, data, 41)
        return cls(
            info_type=info_type,
            info_class=info_class,
            output_length=output_length,
            input=Reader(data).buffer(input_off, input_len, B + 40) if input_len else b"",
            additional=additional,
            flags=flags,
            file_id=(persistent, volatile),
        )


# StructureSize, InfoType, FileInfoClass, OutputBufferLength,
# InputBufferOffset, Reserved skipped, InputBufferLength,
# AdditionalInformation, Flags, FileId.
_QUERY_INFO_FIXED = struct.Struct("<HBBIH2xIIIQQ")
assert _QUERY_INFO_FIXED.size == 40


@attrs.define
class SetInfoRequest:
    info_type: int
    info_class: int
    buffer: bytes
    additional: int
    file_id: FileId

    @classmethod
    def parse(cls, data: bytes | memoryview) -> SetInfoRequest:
        (
            _,
            info_type,
            info_class,
            length,
            offset,
            additional,
            persistent,
            volatile,
        ) = _fixed(_SET_INFO_FIXED, data, 33)
        return cls(
            info_type=info_type,
            info_class=info_class,
            buffer=Reader(data).buffer(offset, length, B + 32) if length else b"",
            additional=additional,
            file_id=(persistent, volatile),
        )


# StructureSize, InfoType, FileInfoClass, BufferLength, BufferOffset,
# Reserved skipped, AdditionalInformation, FileId.
_SET_INFO_FIXED = struct.Struct("<HBBIH2xIQQ")
assert _SET_INFO_FIXED.size == 32


def pack_buffer_response(output: bytes) -> bytes:
    """QUERY_DIRECTORY, CHANGE_NOTIFY and QUERY_INFO responses: a buffer at offset 72."""
    return struct.pack("<HHI", 9, B + 8 if output else 0, len(output)) + (output or b"\x00")


def guid_bytes(u: uuid.UUID) -> bytes:
    """A GUID as SMB puts it on the wire (mixed-endian, [MS-DTYP] 2.3.4.2)."""
    return u.bytes_le
