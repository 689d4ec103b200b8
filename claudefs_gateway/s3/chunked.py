# -*- test-case-name: tests.s3.test_chunked -*-
"""
The aws-chunked content encoding: an incremental, bounded decoder.

Streaming uploads wrap the object in chunks (inside HTTP's own framing)::

    <hex size>[;chunk-signature=<64 hex>]\\r\\n<size bytes>\\r\\n   ... repeated
    0[;chunk-signature=<64 hex>]\\r\\n
    [<trailer name>:<value>\\r\\n ...]                             (…-TRAILER modes)
    \\r\\n

C{STREAMING-AWS4-HMAC-SHA256-PAYLOAD} signs every chunk,
C{STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER} also signs the trailer
(C{x-amz-trailer-signature}), and C{STREAMING-UNSIGNED-PAYLOAD-TRAILER} (what
boto3 sends over TLS) signs nothing but carries a checksum in the trailer.

L{ChunkDecoder} only frames: it turns bytes, cut anywhere, into events, and
raises L{ProtocolError} for anything malformed, with every buffer capped.
Checking signatures is L{claudefs_gateway.s3.auth.ChunkSigner}'s job.
"""

from __future__ import annotations

import re

from claudefs_gateway.errors import ProtocolError

__all__ = ["ChunkDecoder", "Data", "ChunkEnd", "Trailer", "End", "Event", "encode"]

# A size line holds at most 16 hex digits plus ";chunk-signature=" and 64 hex digits.
MAX_LINE = 256
MAX_TRAILER_BYTES = 16 * 1024
MAX_TRAILERS = 32

_SIZE_LINE = re.compile(rb"^([0-9a-fA-F]{1,16})(?:;chunk-signature=([0-9a-f]{64}))?$")
_TRAILER_LINE = re.compile(rb"^([A-Za-z0-9-]{1,128}):[ \t]*(.*?)[ \t]*$")


class Data(bytes):
    """Object bytes (a slice of one chunk)."""


class ChunkEnd:
    """The end of a chunk: its size and the signature its header carried (or None)."""

    __slots__ = ("size", "signature")

    def __init__(self, size: int, signature: str | None) -> None:
        self.size = size
        self.signature = signature

    def __repr__(self) -> str:
        return f"ChunkEnd({self.size}, {self.signature!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChunkEnd) and (self.size, self.signature) == (
            other.size,
            other.signature,
        )

    def __hash__(self) -> int:
        return hash((self.size, self.signature))


class Trailer(tuple[str, str]):
    """One trailing header: (lower-case name, value)."""

    @property
    def name(self) -> str:
        return self[0]

    @property
    def value(self) -> str:
        return self[1]


class End:
    """The body is complete (after the trailers, if any)."""

    def __repr__(self) -> str:
        return "End()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, End)

    def __hash__(self) -> int:
        return 0


Event = Data | ChunkEnd | Trailer | End

_SIZE, _DATA, _DATA_CRLF, _TRAILERS, _DONE = range(5)


class ChunkDecoder:
    """
    @param signed: chunk headers must carry C{chunk-signature} (and must not, if false).
    """

    def __init__(self, signed: bool) -> None:
        self.signed = signed
        self._state = _SIZE
        self._buf = b""
        self._remaining = 0
        self._size = 0
        self._signature: str | None = None
        self._trailer_bytes = 0
        self._trailers = 0
        self.decoded = 0

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes) -> list[Event]:
        """
        Decode C{data} (any cut of the stream); the events it completes.

        @raise ProtocolError: malformed framing, oversized lines, bytes after the end.
        """
        out: list[Event] = []
        buf = self._buf + data if self._buf else data
        self._buf = b""
        pos = 0
        n = len(buf)
        while pos < n:
            st = self._state
            if st == _DATA:
                take = min(self._remaining, n - pos)
                out.append(Data(buf[pos : pos + take]))
                pos += take
                self._remaining -= take
                self.decoded += take
                if self._remaining == 0:
                    self._state = _DATA_CRLF
            elif st == _DATA_CRLF:
                if n - pos < 2:
                    self._buf = buf[pos:]
                    if self._buf != b"\r"[: len(self._buf)]:
                        raise ProtocolError("chunk data not followed by CRLF")
                    return out
                if buf[pos : pos + 2] != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
                pos += 2
                out.append(ChunkEnd(self._size, self._signature))
                self._state = _SIZE
            elif st == _DONE:
                raise ProtocolError("bytes after the end of an aws-chunked body")
            else:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    rest = buf[pos:]
                    if len(rest) > MAX_LINE:
                        raise ProtocolError("aws-chunked line too long")
                    self._buf = rest
                    return out
                line = buf[pos:end]
                pos = end + 2
                if len(line) > MAX_LINE:
                    raise ProtocolError("aws-chunked line too long")
                if st == _SIZE:
                    self._size_line(line, out)
                else:
                    self._trailer_line(line, out)
        return out

    def _size_line(self, line: bytes, out: list[Event]) -> None:
        m = _SIZE_LINE.match(line)
        if m is None:
            raise ProtocolError("malformed aws-chunked size line")
        sig = m.group(2)
        if self.signed and sig is None:
            raise ProtocolError("chunk without a chunk-signature")
        if not self.signed and sig is not None:
            raise ProtocolError("unexpected chunk-signature")
        self._size = int(m.group(1), 16)
        self._signature = sig.decode("ascii") if sig is not None else None
        if self._size == 0:
            out.append(ChunkEnd(0, self._signature))
            self._state = _TRAILERS
        else:
            self._remaining = self._size
            self._state = _DATA

    def _trailer_line(self, line: bytes, out: list[Event]) -> None:
        if not line:
            self._state = _DONE
            out.append(End())
            return
        self._trailer_bytes += len(line)
        self._trailers += 1
        if self._trailer_bytes > MAX_TRAILER_BYTES or self._trailers > MAX_TRAILERS:
            raise ProtocolError("too many trailing headers")
        m = _TRAILER_LINE.match(line)
        if m is None:
            raise ProtocolError("malformed trailing header")
        try:
            value = m.group(2).decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError("non-ASCII trailing header") from None
        out.append(Trailer((m.group(1).decode("ascii").lower(), value)))

    def close(self) -> None:
        """The input ended. @raise ProtocolError: the body stopped before its end."""
        if self._state != _DONE:
            raise ProtocolError("aws-chunked body ended early")


def encode(
    chunks: list[bytes],
    signatures: list[str] | None = None,
    trailers: list[tuple[str, str]] = (),  # type: ignore[assignment]
) -> bytes:
    """
    Encode chunks (the last one empty is added) for tests and clients.

    @param signatures: one per chunk plus one for the final empty chunk.
    """
    out = []
    for i, c in enumerate([*chunks, b""]):
        ext = f";chunk-signature={signatures[i]}" if signatures is not None else ""
        out.append(f"{len(c):x}{ext}\r\n".encode() + c + (b"\r\n" if c else b""))
    for name, value in trailers:
        out.append(f"{name}:{value}\r\n".encode())
    out.append(b"\r\n")
    return b"".join(out)
