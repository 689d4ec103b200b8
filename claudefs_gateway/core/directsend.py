# -*- test-case-name: tests.core.test_directsend -*-
"""
Writing a reply straight to a TCP socket when Twisted has nothing buffered.

Twisted's TCP transport copies every write into its buffer and sends at most
C{SEND_LIMIT} bytes per reactor turn. For large NFS READ replies that costs a
copy and several turns; when the transport's buffer is empty, one
C{sendmsg} of the reply's parts (scatter/gather) hands the kernel what it can
take at once, and the rest goes through the transport as usual, which keeps
ordering and back-pressure intact.

Knowing "the buffer is empty" needs three private attributes of
C{twisted.internet.tcp.Connection} (C{_tempDataLen}, C{dataBuffer},
C{offset}). This module is the only place that touches them; if a Twisted
release changes them, L{DirectSender.for_transport} returns None (every reply
then goes through the transport, slower but correct) and
C{tests/core/test_directsend.py} fails loudly so the change is noticed.
pyproject.toml holds Twisted below the next major release for the same reason.

A reply may also carry a L{FileRange}: bytes of a file the kernel sends from
the page cache with C{sendfile} (L{DirectSender.send_ranges}), so a large
READ's data is neither read into the gateway's memory nor copied into the
socket (the socket's buffers refer to the cached pages). Whatever part of a
range the socket does not take at once is read into C{bytes} there and then
(L{FileRange.read}) and queued like any other piece: the descriptor is the
caller's and is only good until it returns.
"""

from __future__ import annotations

import os
import socket
from typing import Any, TypeVar, cast

from twisted.internet import tcp

__all__ = ["DirectSender", "FileRange", "PRIVATE_ATTRIBUTES", "materialize"]

#: The private attributes of twisted.internet.tcp.Connection relied on here.
PRIVATE_ATTRIBUTES = ("_tempDataLen", "dataBuffer", "offset")


#: A piece of a reply: bytes, or a buffer the caller converts before the transport sees it.
_B = TypeVar("_B", bound=bytes | bytearray | memoryview)


def _skip(parts: list[_B], n: int) -> list[_B]:
    """C{parts} without their first C{n} bytes."""
    for i, part in enumerate(parts):
        if n < len(part):
            return [cast(_B, part[n:]), *parts[i + 1 :]]
        n -= len(part)
    return []


class FileRange:
    """
    C{length} bytes of file descriptor C{fd} from C{offset}, as a piece of a
    reply (L{DirectSender.send_ranges}). Bytes past the file's end read as
    zeros (a sparse file's tail: the caller's size is the truth).
    """

    __slots__ = ("fd", "offset", "length")

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self.fd = fd
        self.offset = offset
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"<FileRange fd={self.fd} offset={self.offset} length={self.length}>"

    def read(self, skip: int = 0) -> bytes:
        """The range's bytes after its first C{skip}, read now (may wait for the disk)."""
        n = self.length - skip
        got = os.pread(self.fd, n, self.offset + skip)
        return got if len(got) == n else got.ljust(n, b"\0")


def materialize(parts: list[Any]) -> list[Any]:
    """C{parts} with each L{FileRange} read into bytes (for a transport's buffer)."""
    return [p.read() if type(p) is FileRange else p for p in parts]


class DirectSender:
    """Sends through one plain TCP transport's socket while its buffer is empty."""

    def __init__(self, transport: Any, sock: Any) -> None:
        self._transport = transport
        self._sock = sock

    @classmethod
    def for_transport(cls, transport: Any) -> DirectSender | None:
        """
        A sender for C{transport}, or None when writing to its socket is not
        safe or not possible (TLS: the socket carries ciphertext; test
        transports; other reactors; a Twisted without the attributes).
        """
        if not isinstance(transport, tcp.Connection) or getattr(transport, "TLS", False):
            return None
        if not all(hasattr(transport, a) for a in PRIVATE_ATTRIBUTES):
            return None
        sock = getattr(transport, "socket", None)
        if not hasattr(sock, "sendmsg"):
            return None
        if hasattr(transport, "SEND_LIMIT"):
            # Let the transport hand the kernel more per turn too (default 128 KiB).
            transport.SEND_LIMIT = 4 << 20
        return cls(transport, sock)

    def send(self, parts: list[_B], size: int) -> list[_B]:
        """
        Send what the kernel takes now of C{parts} (C{size} bytes in all) if
        the transport has nothing queued; return what is left, for the
        transport's C{writeSequence} (which takes only C{bytes}: a caller
        passing other buffers converts what is left).
        """
        t = self._transport
        if not t.connected or t.disconnecting or t._tempDataLen or len(t.dataBuffer) != t.offset:
            return parts
        try:
            sent = self._sock.sendmsg(parts)
        except OSError:
            return parts  # EAGAIN, or an error the transport will meet and report
        if sent == size:
            return []
        return _skip(parts, sent) if sent else parts

    def send_ranges(self, parts: list[Any], size: int) -> list[Any]:
        """
        L{send} for C{parts} that hold L{FileRange}s: the buffers before a
        range go out with one C{sendmsg} (C{MSG_MORE}: the range's first
        bytes join them in one segment), the range with C{sendfile}. What is
        left when the socket is full (or the transport busy) is returned
        with every range read into bytes: the caller queues it.
        """
        t = self._transport
        if not t.connected or t.disconnecting or t._tempDataLen or len(t.dataBuffer) != t.offset:
            return materialize(parts)
        sock = self._sock
        n = len(parts)
        i = 0
        while i < n:
            j = i
            while j < n and type(parts[j]) is not FileRange:
                j += 1
            if j > i:
                run = parts[i:j]
                want = 0
                for p in run:
                    want += len(p)
                try:
                    sent = sock.sendmsg(run, (), socket.MSG_MORE if j < n else 0)
                except OSError:
                    sent = 0  # EAGAIN, or an error the transport will meet and report
                if sent < want:
                    return [*_skip(run, sent), *materialize(parts[j:])]
            if j == n:
                return []
            r = parts[j]
            done = _sendfile(sock.fileno(), r)
            if done < r.length:
                return [r.read(done), *materialize(parts[j + 1 :])]
            i = j + 1
        return []


def _sendfile(out: int, r: FileRange) -> int:
    """How much of C{r} C{sendfile} put in socket C{out} before it was full (or the file ended)."""
    done = 0
    while done < r.length:
        try:
            sent = os.sendfile(out, r.fd, r.offset + done, r.length - done)
        except OSError:
            return done  # EAGAIN: full; else the transport meets the error
        if sent <= 0:
            return done  # the file ended: the rest is zeros, read() makes them
        done += sent
    return done
