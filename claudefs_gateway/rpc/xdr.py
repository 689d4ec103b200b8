# -*- test-case-name: tests.rpc.test_xdr -*-
"""
XDR (RFC 4506): the encoding every ONC RPC program speaks.

L{Unpacker} reads from one buffer that is already whole (a record or a
datagram), so nothing here waits for bytes; every variable length it reads is
checked against both the caller's bound and the bytes that are actually left
before anything is sliced or allocated. A 4 GiB length in a 100-byte call is
an L{XDRError} at once (the RPC layer answers GARBAGE_ARGS), never an
allocation.

L{Packer} collects the pieces of a reply in a list so large opaque data (READ
payloads) is passed through without a copy; the transport writes the list with
C{writeSequence}. The hot structures of each program (NFSv3 fattr3 and
friends) are packed by their own precompiled C{struct.Struct}s beside their
codecs; this module is the general case.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from claudefs_gateway.errors import ProtocolError

__all__ = [
    "XDRError",
    "Unpacker",
    "Packer",
    "U32",
    "I32",
    "U64",
    "I64",
    "pad",
    "PADDING",
    "MAX_U32",
    "MAX_U64",
]

T = TypeVar("T")

U32 = struct.Struct(">I")
I32 = struct.Struct(">i")
U64 = struct.Struct(">Q")
I64 = struct.Struct(">q")
MAX_U32 = 2**32 - 1
MAX_U64 = 2**64 - 1

# Zero padding to the next multiple of four, by the length mod 4.
PADDING = (b"", b"\0\0\0", b"\0\0", b"\0")

_u32 = U32.unpack_from
_i32 = I32.unpack_from
_u64 = U64.unpack_from
_i64 = I64.unpack_from
_pack_u32 = U32.pack


def pad(n: int) -> int:
    """Bytes of padding after C{n} bytes of opaque data."""
    return -n & 3


class XDRError(ProtocolError):
    """Bytes that do not decode as the XDR type expected: truncated, too long, malformed."""


class Unpacker:
    """
    Sequential reader over one complete buffer.

    @ivar data: the buffer (bytes; a memoryview works too but slices would
        then be views: callers that keep data call C{bytes()} on it).
    @ivar pos: the offset of the next unread byte.
    """

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def remaining(self) -> int:
        return self.end - self.pos

    def _need(self, n: int) -> int:
        p = self.pos
        if p + n > self.end:
            raise XDRError(f"truncated: need {n} bytes at offset {p}, have {self.end - p}")
        self.pos = p + n
        return p

    def advance(self, n: int) -> int:
        """Skip C{n} bytes; return the offset where they start (for C{unpack_from})."""
        return self._need(n)

    def u32(self) -> int:
        return int(_u32(self.data, self._need(4))[0])

    def i32(self) -> int:
        return int(_i32(self.data, self._need(4))[0])

    def u64(self) -> int:
        return int(_u64(self.data, self._need(8))[0])

    def i64(self) -> int:
        return int(_i64(self.data, self._need(8))[0])

    def bool(self) -> bool:
        v = self.u32()
        if v > 1:
            raise XDRError(f"boolean {v} is neither 0 nor 1")
        return v == 1

    def enum(self, allowed: Sequence[int] | set[int] | frozenset[int]) -> int:
        v = self.i32()
        if v not in allowed:
            raise XDRError(f"enum value {v} not allowed")
        return v

    def fixed(self, n: int) -> bytes:
        """Fixed-length opaque data of C{n} bytes (and its padding)."""
        p = self._need(n + pad(n))
        return bytes(self.data[p : p + n])

    def opaque(self, limit: int) -> bytes:
        """
        Variable-length opaque data of at most C{limit} bytes.

        The checks of L{u32}, L{_need} and L{pad} written out: every call's
        file handle comes through here, and four Python calls cost more than
        the decoding itself.
        """
        data, p, end = self.data, self.pos, self.end
        if p + 4 > end:
            raise XDRError(f"truncated: need 4 bytes at offset {p}, have {end - p}")
        n = _u32(data, p)[0]
        if n > limit:
            raise XDRError(f"opaque of {n} bytes exceeds its bound {limit}")
        p += 4
        q = p + n + (-n & 3)
        if q > end:
            raise XDRError(f"truncated: need {q - p} bytes at offset {p}, have {end - p}")
        self.pos = q
        return bytes(data[p : p + n])

    def opaque_view(self, limit: int) -> memoryview:
        """
        Like L{opaque}, but a view into the buffer instead of a copy: for bulk
        data (WRITE payloads) that is passed on and not kept beyond the call.
        """
        n = self.u32()
        if n > limit:
            raise XDRError(f"opaque of {n} bytes exceeds its bound {limit}")
        p = self._need(n + pad(n))
        return memoryview(self.data)[p : p + n]

    # An XDR string is opaque on the wire; names stay bytes all the way down.
    string = opaque

    def opaque_struct(self, limit: int, st: struct.Struct) -> tuple[bytes, tuple[Any, ...]]:
        """
        A bounded opaque (a file handle, say) and the fixed-size fields after
        it, decoded by one precompiled C{st} (big-endian, a multiple of four
        bytes): the shape of most NFS arguments, at a fraction of the cost of
        one call per field. Checks as L{opaque} and the fields' size do.
        """
        data, p, end = self.data, self.pos, self.end
        if p + 4 > end:
            raise XDRError(f"truncated: need 4 bytes at offset {p}, have {end - p}")
        n = _u32(data, p)[0]
        if n > limit:
            raise XDRError(f"opaque of {n} bytes exceeds its bound {limit}")
        q = p + 4 + n + (-n & 3)
        if q + st.size > end:
            raise XDRError(f"truncated: need {q + st.size - p} bytes at offset {p}, have {end - p}")
        self.pos = q + st.size
        return bytes(data[p + 4 : p + 4 + n]), st.unpack_from(data, q)

    def array(self, limit: int, item: Callable[[Unpacker], T]) -> list[T]:
        """A variable-length array of at most C{limit} items."""
        n = self.u32()
        if n > limit:
            raise XDRError(f"array of {n} items exceeds its bound {limit}")
        # Every item takes at least four bytes: refuse counts the buffer cannot hold.
        if n * 4 > self.end - self.pos:
            raise XDRError(f"array of {n} items cannot fit in {self.end - self.pos} bytes")
        return [item(self) for _ in range(n)]

    def optional(self, item: Callable[[Unpacker], T]) -> T | None:
        """An XDR optional-data (C{*T}): a boolean, then the item if true."""
        return item(self) if self.bool() else None

    def linked_list(self, limit: int, item: Callable[[Unpacker], T]) -> list[T]:
        """An XDR linked list (C{T *next}), at most C{limit} items."""
        out: list[T] = []
        while self.bool():
            if len(out) >= limit:
                raise XDRError(f"list longer than its bound {limit}")
            out.append(item(self))
        return out

    def done(self) -> None:
        """Require the buffer to be consumed exactly."""
        if self.pos != self.end:
            raise XDRError(f"{self.end - self.pos} trailing bytes")


class Packer:
    """Collects encoded pieces; L{chunks} hands them to C{writeSequence} uncopied."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def raw(self, b: bytes) -> None:
        """Bytes already XDR-encoded (their length must be a multiple of four)."""
        self.parts.append(b)
        self.size += len(b)

    def u32(self, v: int) -> None:
        self.parts.append(_pack_u32(v))
        self.size += 4

    def i32(self, v: int) -> None:
        self.parts.append(I32.pack(v))
        self.size += 4

    def u64(self, v: int) -> None:
        self.parts.append(U64.pack(v))
        self.size += 8

    def i64(self, v: int) -> None:
        self.parts.append(I64.pack(v))
        self.size += 8

    def bool(self, v: bool) -> None:
        self.parts.append(b"\0\0\0\1" if v else b"\0\0\0\0")
        self.size += 4

    def fixed(self, b: bytes, n: int | None = None) -> None:
        if n is not None and len(b) != n:
            raise ValueError(f"fixed opaque of {len(b)} bytes, expected {n}")
        self.parts.append(b)
        p = pad(len(b))
        if p:
            self.parts.append(PADDING[len(b) & 3])
        self.size += len(b) + p

    def opaque(self, b: bytes) -> None:
        n = len(b)
        self.parts.append(_pack_u32(n))
        if n:
            self.parts.append(b)
            p = pad(n)
            if p:
                self.parts.append(PADDING[n & 3])
            self.size += 4 + n + p
        else:
            self.size += 4

    string = opaque

    def array(self, items: Sequence[T], item: Callable[[Packer, T], None]) -> None:
        self.u32(len(items))
        for x in items:
            item(self, x)

    def chunks(self) -> list[bytes]:
        return self.parts

    def bytes(self) -> bytes:
        return b"".join(self.parts)


def opaque_bytes(b: bytes) -> bytes:
    """C{b} as a variable-length opaque, in one piece (for small values)."""
    n = len(b)
    return _pack_u32(n) + b + PADDING[n & 3]
