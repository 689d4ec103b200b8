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
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

from twisted.internet import tcp

__all__ = ["DirectSender", "PRIVATE_ATTRIBUTES"]

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
