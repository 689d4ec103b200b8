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
and queued like any other piece (the descriptor is the caller's and is only
good until it returns) - without waiting for the disk (C{RWF_NOWAIT}): the
pages may have been evicted since the caller checked. When they were, the
piece becomes a L{Later} (a duplicate of the descriptor, read in a thread by
the caller, which keeps the replies after it waiting: L{FileRange.take}).
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any, TypeVar, cast

from twisted.internet import tcp

__all__ = ["DirectSender", "FileRange", "Later", "PRIVATE_ATTRIBUTES", "materialize"]

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


class _Span:
    """C{length} bytes of file descriptor C{fd} from C{offset}: a piece of a reply."""

    __slots__ = ("fd", "offset", "length")

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self.fd = fd
        self.offset = offset
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fd={self.fd} offset={self.offset} length={self.length}>"


class FileRange(_Span):
    """
    C{length} bytes of file descriptor C{fd} from C{offset}, as a piece of a
    reply (L{DirectSender.send_ranges}). Bytes past the file's end read as
    zeros (a sparse file's tail: the caller's size is the truth).
    """

    __slots__ = ()

    def take(self, skip: int = 0) -> bytes | Later:
        """
        The range's bytes after its first C{skip}, if the page cache has
        them all now; else a L{Later} that reads them (in a thread: never on
        the reactor's, which a read from the disk would stop).
        """
        n = self.length - skip
        got = _read_nowait(self.fd, self.offset + skip, n)
        if got is not None:
            return got
        return Later(os.dup(self.fd), self.offset + skip, n)


class Later(_Span):
    """
    A piece of a reply whose bytes must come from the disk: C{length} bytes
    from C{offset} of C{fd}, the piece's own descriptor (a duplicate: the
    range's was good only until its caller returned), closed by L{read} or
    L{close}, whichever comes first.
    """

    __slots__ = ()

    def read(self) -> bytes:
        """The bytes (waits for the disk: call it in a thread); closes the descriptor."""
        try:
            n = self.length
            chunks: list[bytes] = []
            got = 0
            while got < n:
                b = os.pread(self.fd, n - got, self.offset + got)
                if not b:
                    break  # past the file's end: zeros (the caller's size is the truth)
                chunks.append(b)
                got += len(b)
            data = b"".join(chunks)
            return data if len(data) == n else data.ljust(n, b"\0")
        finally:
            self.close()

    def close(self) -> None:
        """Close the descriptor (a reply abandoned before its read started)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


_NOWAIT = getattr(os, "RWF_NOWAIT", 0)


def _read_nowait(fd: int, offset: int, n: int) -> bytes | None:
    """
    C{n} bytes of C{fd} from C{offset} (zeros past its end), or None when
    some are not in the page cache (or the platform cannot tell without
    waiting: no C{RWF_NOWAIT}).
    """
    if not _NOWAIT:
        return None
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        try:
            k = os.preadv(fd, [view[got:]], offset + got, _NOWAIT)
        except BlockingIOError:
            return None
        except OSError as e:
            if e.errno == errno.EOPNOTSUPP:  # a file system without RWF_NOWAIT
                return None
            raise
        if k <= 0:
            break  # the file ended: the rest stays zeros
        got += k
    view.release()
    return bytes(buf)


def materialize(parts: list[Any]) -> list[Any]:
    """
    C{parts} with each L{FileRange} read into bytes if the page cache has
    them, else made a L{Later} (for a transport's buffer, after the caller
    has read the L{Later}s).
    """
    return [p.take() if type(p) is FileRange else p for p in parts]


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
        with every range read into bytes or made a L{Later}
        (L{materialize}): the caller queues it.
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
                return [r.take(done), *materialize(parts[j + 1 :])]
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
            return done  # the file ended: the rest is zeros, take() makes them
        done += sent
    return done
