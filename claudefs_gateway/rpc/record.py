# -*- test-case-name: tests.rpc.test_record -*-
"""
Record marking (RFC 5531 §11): how ONC RPC messages are framed on a stream.

A record is one or more fragments; each fragment starts with a four-byte
big-endian header whose top bit says "last fragment" and whose other 31 bits
are the fragment's length. L{RecordReader} is the incremental parser (a cousin
of Twisted's Int32StringReceiver): feed it bytes however the stream was cut,
get whole records out. It never holds more than one record: a record growing
past C{max_record} raises L{RecordTooLarge} before its bytes are buffered, and
the connection is then closed (the record's XID may not even have arrived, so
no reply is possible).
"""

from __future__ import annotations

import struct

from claudefs_gateway.errors import ProtocolError

__all__ = ["RecordReader", "RecordTooLarge", "encode_record", "record_marker", "LAST_FRAGMENT"]

LAST_FRAGMENT = 0x80000000
_HEADER = struct.Struct(">I")
_unpack_header = _HEADER.unpack_from


class RecordTooLarge(ProtocolError):
    """A record (or a fragment of it) is longer than the configured maximum."""


def record_marker(length: int) -> bytes:
    """The header of a single-fragment record of C{length} bytes."""
    return _HEADER.pack(LAST_FRAGMENT | length)


def encode_record(payload: bytes, fragment: int | None = None) -> bytes:
    """C{payload} framed as a record (split in fragments of C{fragment} bytes)."""
    if fragment is None or fragment >= len(payload):
        return record_marker(len(payload)) + payload
    out = []
    for i in range(0, len(payload), fragment):
        piece = payload[i : i + fragment]
        last = i + fragment >= len(payload)
        out.append(_HEADER.pack((LAST_FRAGMENT if last else 0) | len(piece)) + piece)
    return b"".join(out)


class RecordReader:
    """
    Incremental, bounded record-marking parser.

    Incoming chunks are kept as they came (a list and an offset into the
    first), so a record costs one copy however it was cut: a 1 MiB WRITE
    arriving in 64 KiB reads is joined once, not grown in a buffer.

    @param max_record: the most bytes a record's fragments may add up to.
    @ivar missing: bytes of the current fragment that have not arrived yet (0
        between fragments): how much the next socket read may usefully ask
        for. Kept by L{feed} as it returns (an attribute, not a property: the
        connection reads it after every read).
    @ivar buffered: bytes held now, of a record not yet whole (the
        connection's partial-record timeout; tests check the bound). Kept
        by L{feed} as C{missing} is.
    """

    __slots__ = (
        "max_record",
        "missing",
        "buffered",
        "_chunks",
        "_off",
        "_have",
        "_frags",
        "_size",
        "_need",
        "_last",
    )

    def __init__(self, max_record: int) -> None:
        self.max_record = max_record
        self._chunks: list[bytes] = []
        self._off = 0  # bytes of _chunks[0] already consumed
        self._have = 0  # bytes held in _chunks beyond _off
        self._frags: list[bytes] = []
        self._size = 0  # bytes of the record in completed fragments
        self._need = -1  # bytes of the current fragment expected; -1: reading a header
        self._last = False
        self.missing = 0
        self.buffered = 0

    def _take(self, n: int) -> bytes:
        """Remove and return the next C{n} bytes (C{n <= self._have})."""
        chunks = self._chunks
        first = chunks[0]
        off = self._off
        avail = len(first) - off
        self._have -= n
        if avail > n:
            self._off = off + n
            with memoryview(first) as view:
                return bytes(view[off : off + n])
        if avail == n:
            del chunks[0]
            self._off = 0
            if off == 0:
                return first
            with memoryview(first) as view:
                return bytes(view[off:])
        parts = []
        left = n
        while left:
            first = chunks[0]
            avail = len(first) - off
            if avail <= left:
                parts.append(first[off:] if off else first)
                del chunks[0]
                left -= avail
                off = 0
            else:
                parts.append(first[off : off + left])
                off += left
                left = 0
        self._off = off
        return b"".join(parts)

    def feed(self, data: bytes) -> list[bytes]:
        """
        Take the next bytes of the stream; return the records they complete.

        @raise RecordTooLarge: a fragment header announces more than the
            record may hold; the stream cannot be resynchronised after this.
        """
        if not self._chunks and self._need < 0 and not self._frags and len(data) >= 4:
            # At a record boundary with nothing held: take the whole
            # single-fragment records C{data} holds straight out of it (a
            # small call arrives whole in one read), keep only the rest.
            out: list[bytes] = []
            pos, end = 0, len(data)
            while end - pos >= 4:
                (h,) = _unpack_header(data, pos)
                n = h & 0x7FFFFFFF
                if n > self.max_record:
                    raise RecordTooLarge(f"record of at least {n} bytes exceeds {self.max_record}")
                if not h & LAST_FRAGMENT or end - pos - 4 < n:
                    break
                out.append(data[pos + 4 : pos + 4 + n])
                pos += 4 + n
            if pos == end:
                return out  # at a record boundary again: missing and buffered stay 0
            if pos:
                data = data[pos:]
            if out:
                return out + self.feed(data)
        if data:
            self._chunks.append(data)
            self._have += len(data)
        out = []
        while True:
            if self._need < 0:
                if self._have < 4:
                    self.missing = 0
                    self.buffered = self._have + self._size
                    return out
                (h,) = _unpack_header(self._take(4))
                self._last = bool(h & LAST_FRAGMENT)
                n = h & 0x7FFFFFFF
                if self._size + n > self.max_record:
                    raise RecordTooLarge(
                        f"record of at least {self._size + n} bytes exceeds {self.max_record}"
                    )
                self._need = n
            n = self._need
            if self._have < n:
                self.missing = n - self._have
                self.buffered = self._have + self._size
                return out
            piece = self._take(n) if n else b""
            if self._last and not self._frags:
                # The common case: a single-fragment record.
                out.append(piece)
            else:
                self._frags.append(piece)
                self._size += n
                if self._last:
                    out.append(b"".join(self._frags))
                    self._frags = []
                    self._size = 0
            self._need = -1
