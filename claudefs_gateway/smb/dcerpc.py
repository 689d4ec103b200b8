# -*- test-case-name: tests.smb.test_dcerpc -*-
"""
Enough DCE/RPC for the srvsvc pipe on IPC$: share enumeration for
C{smbclient -L}, impacket's C{listShares} and Windows' "net view".

Connection-oriented DCE/RPC 5.0 ([C706] chapter 12, [MS-RPCE] 2.2.2) over a
named pipe: BIND is answered with BIND_ACK (NDR 2.0 accepted, NDR64 refused,
bind-time feature negotiation acknowledged with no features); REQUEST PDUs
are reassembled, dispatched by opnum and answered with RESPONSE PDUs (or a
FAULT), fragmented to the client's max_recv_frag. No DCE/RPC authentication:
the pipe is only reachable from an authenticated SMB session, as Samba's.

srvsvc operations ([MS-SRVS] 3.1.4): NetrShareEnumAll (15) at levels 0, 1, 2
and 501, NetrShareGetInfo (16) at the same levels and 1005, NetrServerGetInfo
(21) at levels 100 and 101. The NDR is written by hand for those structures
only; every request parser is bounded and raises L{ProtocolError} on garbage,
which becomes a FAULT.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable

import attrs

from claudefs_gateway.errors import ProtocolError

__all__ = ["Share", "Pipe", "SRVSVC", "NDR20", "pack_pdu", "parse_pdu", "Pdu"]

NDR20 = (uuid.UUID("8a885d04-1ceb-11c9-9fe8-08002b104860"), 2, 0)
NDR64 = (uuid.UUID("71710533-beba-4937-8319-b5dbef9ccc36"), 1, 0)
SRVSVC = (uuid.UUID("4b324fc8-1670-01d3-1278-5a47bf6ee188"), 3, 0)
_BTFN_PREFIX = uuid.UUID("6cb71c2c-9812-4540-0000-000000000000").bytes_le[:8]

PTYPE_REQUEST = 0
PTYPE_RESPONSE = 2
PTYPE_FAULT = 3
PTYPE_BIND = 11
PTYPE_BIND_ACK = 12
PTYPE_BIND_NAK = 13
PTYPE_ALTER_CONTEXT = 14
PTYPE_ALTER_CONTEXT_RESP = 15

PFC_FIRST_FRAG = 0x01
PFC_LAST_FRAG = 0x02
PFC_OBJECT_UUID = 0x80

NCA_OP_RNG_ERROR = 0x1C010002
NCA_PROTO_ERROR = 0x1C01000B
NCA_UNK_IF = 0x1C010003

ERROR_SUCCESS = 0
ERROR_INVALID_LEVEL = 124
ERROR_MORE_DATA = 234
NERR_NET_NAME_NOT_FOUND = 2310

STYPE_DISKTREE = 0x00000000
STYPE_IPC = 0x00000003
STYPE_SPECIAL = 0x80000000

MAX_PDU = 65536
MAX_REQUEST = 256 * 1024
MAX_PENDING = 1024 * 1024
_HDR = struct.Struct("<BBBBIHHI")


@attrs.frozen
class Pdu:
    ptype: int
    flags: int
    call_id: int
    body: bytes
    drep: int = 0x10


def parse_pdu(data: bytes) -> tuple[Pdu, int]:
    """
    The first PDU in C{data} and its length.

    @raise ProtocolError: not DCE/RPC 5.0, big-endian or non-ASCII data
        representation, or a length that does not fit.
    """
    if len(data) < 16:
        raise ProtocolError("DCE/RPC PDU truncated")
    vers, minor, ptype, flags, drep, frag_len, auth_len, call_id = _HDR.unpack_from(data)
    if vers != 5 or minor > 1:
        raise ProtocolError(f"DCE/RPC version {vers}.{minor}")
    if drep & 0xF0 != 0x10 or drep & 0x0F:
        raise ProtocolError("only little-endian ASCII NDR is served")
    if frag_len < 16 or frag_len > len(data) or frag_len > MAX_PDU:
        raise ProtocolError(f"DCE/RPC frag_length {frag_len}")
    if auth_len:
        raise ProtocolError("DCE/RPC authentication is not served")
    return Pdu(ptype, flags, call_id, bytes(data[16:frag_len]), drep), frag_len


def pack_pdu(ptype: int, flags: int, call_id: int, body: bytes) -> bytes:
    return _HDR.pack(5, 0, ptype, flags, 0x10, 16 + len(body), 0, call_id) + body


def _syntax(raw: bytes) -> tuple[uuid.UUID, int, int]:
    return (uuid.UUID(bytes_le=raw[:16]), *struct.unpack_from("<HH", raw, 16))


def _pack_syntax(s: tuple[uuid.UUID, int, int]) -> bytes:
    return s[0].bytes_le + struct.pack("<HH", s[1], s[2])


# -- NDR ------------------------------------------------------------------------------


class NdrReader:
    """Reads NDR 2.0 little-endian scalars with alignment, bounded by the stub."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def align(self, n: int) -> None:
        self.pos = (self.pos + n - 1) & ~(n - 1)

    def u32(self) -> int:
        self.align(4)
        if self.pos + 4 > len(self.data):
            raise ProtocolError("NDR stub truncated")
        v = int(struct.unpack_from("<I", self.data, self.pos)[0])
        self.pos += 4
        return v

    def string(self) -> str:
        """A conformant varying UTF-16 string (the pointer already read)."""
        max_count, offset, actual = self.u32(), self.u32(), self.u32()
        if offset != 0 or actual > max_count or actual > 4096:
            raise ProtocolError("bad NDR string")
        end = self.pos + 2 * actual
        if end > len(self.data):
            raise ProtocolError("NDR stub truncated")
        raw = self.data[self.pos : end]
        self.pos = end
        try:
            return raw.decode("utf-16-le").rstrip("\x00")
        except UnicodeDecodeError:
            raise ProtocolError("bad UTF-16 in NDR string") from None

    def unique_string(self) -> str | None:
        return self.string() if self.u32() else None


class NdrWriter:
    """Writes NDR 2.0; pointers get increasing referent ids."""

    def __init__(self) -> None:
        self.out = bytearray()
        self._ref = 0x20000

    def align(self, n: int) -> None:
        self.out += b"\x00" * ((-len(self.out)) % n)

    def u32(self, v: int) -> None:
        self.align(4)
        self.out += struct.pack("<I", v)

    def pointer(self, present: bool = True) -> None:
        if present:
            self._ref += 4
            self.u32(self._ref)
        else:
            self.u32(0)

    def string(self, s: str) -> None:
        raw = (s + "\x00").encode("utf-16-le")
        n = len(raw) // 2
        self.u32(n)
        self.u32(0)
        self.u32(n)
        self.out += raw


# -- srvsvc -------------------------------------------------------------------------------


@attrs.frozen
class Share:
    name: str
    type: int
    remark: str
    path: str = ""


def _info_fixed(w: NdrWriter, level: int, s: Share) -> None:
    """The fixed part of a SHARE_INFO_<level>; strings follow in _info_deferred."""
    w.pointer()  # netname
    if level == 0:
        return
    w.u32(s.type)
    w.pointer()  # remark
    if level == 2:
        w.u32(0)  # permissions
        w.u32(0xFFFFFFFF)  # max_uses: unlimited
        w.u32(0)  # current_uses
        w.pointer()  # path
        w.pointer(False)  # passwd
    elif level == 501:
        w.u32(0)  # flags: manual caching


def _info_deferred(w: NdrWriter, level: int, s: Share) -> None:
    w.string(s.name)
    if level == 0:
        return
    w.string(s.remark)
    if level == 2:
        w.string(s.path)


_LEVELS = (0, 1, 2, 501)


class Srvsvc:
    """The srvsvc operations over a share list supplied per call."""

    def __init__(self, shares: Callable[[], list[Share]], server_name: str, comment: str) -> None:
        self._shares = shares
        self._server = server_name
        self._comment = comment

    def call(self, opnum: int, stub: bytes) -> bytes:
        """
        The response stub for one request.

        @raise KeyError: unknown opnum (a FAULT nca_op_rng_error).
        @raise ProtocolError: malformed stub (a FAULT nca_proto_error).
        """
        handler = {15: self.share_enum_all, 16: self.share_get_info, 21: self.server_get_info}[
            opnum
        ]
        return handler(NdrReader(stub))

    def share_enum_all(self, r: NdrReader) -> bytes:
        r.unique_string()  # ServerName
        level = r.u32()
        switch = r.u32()
        if switch != level:
            raise ProtocolError("union switch differs from level")
        if r.u32():  # container pointer
            r.u32()  # EntriesRead
            r.u32()  # Buffer pointer (null in requests)
        r.u32()  # PreferedMaximumLength
        resume = r.u32()
        if resume:
            r.u32()
        shares = self._shares()
        w = NdrWriter()
        w.u32(level)
        w.u32(level)
        if level not in _LEVELS:
            w.pointer(False)
            w.u32(0)  # TotalEntries
            w.pointer(False)
            w.u32(ERROR_INVALID_LEVEL)
            return bytes(w.out)
        w.pointer()  # container
        w.u32(len(shares))
        w.pointer(bool(shares))
        if shares:
            w.u32(len(shares))  # conformance
            for s in shares:
                _info_fixed(w, level, s)
            for s in shares:
                _info_deferred(w, level, s)
        w.u32(len(shares))  # TotalEntries
        if resume:
            w.pointer()
            w.u32(0)
        else:
            w.pointer(False)
        w.u32(ERROR_SUCCESS)
        return bytes(w.out)

    def share_get_info(self, r: NdrReader) -> bytes:
        r.unique_string()
        name = r.string()
        level = r.u32()
        w = NdrWriter()
        match = next((s for s in self._shares() if s.name.lower() == name.lower()), None)
        if level not in (*_LEVELS, 1005):
            w.u32(level)
            w.pointer(False)
            w.u32(ERROR_INVALID_LEVEL)
        elif match is None:
            w.u32(level)
            w.pointer(False)
            w.u32(NERR_NET_NAME_NOT_FOUND)
        else:
            w.u32(level)
            w.pointer()
            if level == 1005:
                w.u32(0)  # shi1005_flags
            else:
                _info_fixed(w, level, match)
                _info_deferred(w, level, match)
            w.u32(ERROR_SUCCESS)
        return bytes(w.out)

    def server_get_info(self, r: NdrReader) -> bytes:
        r.unique_string()
        level = r.u32()
        w = NdrWriter()
        w.u32(level)
        if level not in (100, 101):
            w.pointer(False)
            w.u32(ERROR_INVALID_LEVEL)
            return bytes(w.out)
        w.pointer()
        w.u32(500)  # platform_id: PLATFORM_ID_NT
        w.pointer()  # name
        if level == 101:
            w.u32(6)  # version major
            w.u32(1)  # version minor
            w.u32(0x00009003)  # type: workstation | server | NT server
            w.pointer()  # comment
        w.string(self._server)
        if level == 101:
            w.string(self._comment)
        w.u32(ERROR_SUCCESS)
        return bytes(w.out)


# -- the pipe ---------------------------------------------------------------------------------


class Pipe:
    """
    One open of a DCE/RPC named pipe: bytes written are PDUs in; PDUs out
    wait in C{pending} until read (READ or the IOCTL transceive).

    @ivar pending: bytes the client may read next.
    """

    def __init__(self, name: str, service: Srvsvc) -> None:
        self.name = name
        self._service = service
        self._inbuf = bytearray()
        self._request = bytearray()
        self._bound = False
        self._context_id = 0
        self._max_frag = 4280
        self.pending = bytearray()

    def write(self, data: bytes) -> None:
        """Feed client bytes; complete PDUs are answered into C{pending}."""
        if len(self.pending) > MAX_PENDING:
            # The client writes requests and never reads the answers.
            raise ProtocolError("DCE/RPC replies not read")
        self._inbuf += data
        if len(self._inbuf) > MAX_REQUEST:
            self._inbuf.clear()
            raise ProtocolError("DCE/RPC input too large")
        while len(self._inbuf) >= 16:
            frag_len = int(struct.unpack_from("<H", self._inbuf, 8)[0])
            if frag_len < 16:
                self._inbuf.clear()
                raise ProtocolError("DCE/RPC frag_length below the header")
            if len(self._inbuf) < frag_len:
                return
            raw = bytes(self._inbuf[:frag_len])
            del self._inbuf[:frag_len]
            pdu, _ = parse_pdu(raw)
            self._handle(pdu)

    def read(self, n: int) -> bytes:
        out = bytes(self.pending[:n])
        del self.pending[:n]
        return out

    def _handle(self, pdu: Pdu) -> None:
        if pdu.ptype in (PTYPE_BIND, PTYPE_ALTER_CONTEXT):
            self._bind(pdu)
        elif pdu.ptype == PTYPE_REQUEST:
            self._call(pdu)
        else:
            self._fault(pdu.call_id, NCA_PROTO_ERROR)

    def _bind(self, pdu: Pdu) -> None:
        b = pdu.body
        if len(b) < 12:
            raise ProtocolError("BIND truncated")
        max_xmit, max_recv, assoc = struct.unpack_from("<HHI", b)
        self._max_frag = max(1024, min(max_recv, MAX_PDU))
        n = b[8]
        pos = 12
        results = []
        for _ in range(n):
            if pos + 24 > len(b):
                raise ProtocolError("BIND context truncated")
            ctx_id, n_syn = struct.unpack_from("<HB", b, pos)
            abstract = _syntax(b[pos + 4 : pos + 24])
            pos += 24
            syntaxes = []
            for _ in range(n_syn):
                if pos + 20 > len(b):
                    raise ProtocolError("BIND transfer syntax truncated")
                syntaxes.append((b[pos : pos + 20], _syntax(b[pos : pos + 20])))
                pos += 20
            results.append(self._choose(ctx_id, abstract, syntaxes))
        if not results:
            raise ProtocolError("BIND with no context")
        out = struct.pack("<HHI", min(max_xmit, MAX_PDU), min(max_recv, MAX_PDU), assoc or 0x12345)
        if pdu.ptype == PTYPE_BIND:
            port = f"\\PIPE\\{self.name}\x00".encode("ascii")
            out += struct.pack("<H", len(port)) + port
        else:
            out += struct.pack("<H", 0)
        out += b"\x00" * ((-(16 + len(out))) % 4)
        out += struct.pack("<BBH", len(results), 0, 0) + b"".join(results)
        ack = PTYPE_BIND_ACK if pdu.ptype == PTYPE_BIND else PTYPE_ALTER_CONTEXT_RESP
        self.pending += pack_pdu(ack, PFC_FIRST_FRAG | PFC_LAST_FRAG, pdu.call_id, out)

    def _choose(
        self,
        ctx_id: int,
        abstract: tuple[uuid.UUID, int, int],
        syntaxes: list[tuple[bytes, tuple[uuid.UUID, int, int]]],
    ) -> bytes:
        zero = b"\x00" * 20
        for raw, _syn in syntaxes:
            if raw[:8] == _BTFN_PREFIX:
                # Bind time feature negotiation (MS-RPCE 3.3.1.5.3): acknowledge, no features.
                return struct.pack("<HH", 3, 0) + zero
        if abstract[:2] != SRVSVC[:2]:
            return struct.pack("<HH", 2, 1) + zero  # provider rejection: abstract syntax
        for raw, syn in syntaxes:
            if syn == NDR20:
                self._bound = True
                self._context_id = ctx_id
                return struct.pack("<HH", 0, 0) + raw
        return struct.pack("<HH", 2, 2) + zero  # transfer syntaxes not supported

    def _call(self, pdu: Pdu) -> None:
        b = pdu.body
        if len(b) < 8:
            raise ProtocolError("REQUEST truncated")
        _alloc, ctx_id, opnum = struct.unpack_from("<IHH", b)
        stub = b[8:]
        if pdu.flags & PFC_OBJECT_UUID:
            stub = stub[16:]
        if pdu.flags & PFC_FIRST_FRAG:
            self._request = bytearray()
        self._request += stub
        if len(self._request) > MAX_REQUEST:
            self._request = bytearray()
            raise ProtocolError("DCE/RPC request too large")
        if not pdu.flags & PFC_LAST_FRAG:
            return
        stub, self._request = bytes(self._request), bytearray()
        if not self._bound or ctx_id != self._context_id:
            self._fault(pdu.call_id, NCA_UNK_IF)
            return
        try:
            result = self._service.call(opnum, stub)
        except KeyError:
            self._fault(pdu.call_id, NCA_OP_RNG_ERROR)
            return
        except ProtocolError:
            self._fault(pdu.call_id, NCA_PROTO_ERROR)
            return
        self._respond(pdu.call_id, ctx_id, result)

    def _respond(self, call_id: int, ctx_id: int, stub: bytes) -> None:
        room = self._max_frag - 24
        first = True
        pos = 0
        while True:
            chunk = stub[pos : pos + room]
            pos += len(chunk)
            last = pos >= len(stub)
            flags = (PFC_FIRST_FRAG if first else 0) | (PFC_LAST_FRAG if last else 0)
            body = struct.pack("<IHBB", len(stub) - pos + len(chunk), ctx_id, 0, 0) + chunk
            self.pending += pack_pdu(PTYPE_RESPONSE, flags, call_id, body)
            first = False
            if last:
                return

    def _fault(self, call_id: int, status: int) -> None:
        body = struct.pack("<IHBBII", 32, self._context_id, 0, 0, status, 0)
        self.pending += pack_pdu(PTYPE_FAULT, PFC_FIRST_FRAG | PFC_LAST_FRAG, call_id, body)
