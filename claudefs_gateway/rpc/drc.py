# -*- test-case-name: tests.rpc.test_drc -*-
"""
The duplicate request cache: a retransmitted call gets the first answer.

NFS over a lossy network, or over TCP after a reconnect, retransmits a call
whose reply it never saw. For idempotent procedures that is harmless; for the
others it is not: a second REMOVE of a file the first one removed would
answer NFS3ERR_NOENT, a second exclusive CREATE EXIST, a second RENAME might
move something else. So for those procedures the server remembers each reply
under the call's identity and answers a retransmission from memory, as every
NFS server does (Juszczak, "Improving the Performance and Correctness of an
NFS Server", 1989; Linux knfsd's nfscache.c).

A call's identity is the client's address (without the port: a client that
reconnects comes back from another one), the XID, program, version and
procedure, and a checksum and length of the arguments, so two clients behind
one NAT that happen to pick the same XID are still told apart. A retransmission
that arrives while the first call is still running is dropped: the first
call's reply answers it (or, over a new connection, the next retransmission
finds it in the cache). The cache is bounded (least recently used out).
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from typing import Any

__all__ = ["ReplyCache", "BUSY", "call_key"]

BUSY = object()
# Bytes of arguments checksummed: enough to tell different calls apart.
_CHECKSUM_BYTES = 512

Key = tuple[Any, ...]


def call_key(host: str, xid: int, prog: int, vers: int, proc: int, message: bytes, at: int) -> Key:
    """The identity of a call for the cache (see module docstring)."""
    return (
        host,
        xid,
        prog,
        vers,
        proc,
        len(message) - at,
        zlib.crc32(message[at : at + _CHECKSUM_BYTES]),
    )


class ReplyCache:
    """
    Replies of non-idempotent calls by call identity.

    @param max_entries: most replies (and calls in progress) remembered;
        C{0} disables the cache.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[Key, Any] = OrderedDict()
        self.hits = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: Key) -> Any:
        """
        L{None} for a new call (now marked in progress: call L{finish} or
        L{forget}), L{BUSY} while the first call runs, else its reply.
        """
        if self.max_entries <= 0:
            return None
        got = self._entries.get(key)
        if got is None:
            self._entries[key] = BUSY
            self._trim()
            return None
        self._entries.move_to_end(key)
        if got is BUSY:
            self.dropped += 1
        else:
            self.hits += 1
        return got

    def finish(self, key: Key, reply: bytes) -> None:
        if self.max_entries <= 0:
            return
        self._entries[key] = reply
        self._entries.move_to_end(key)
        self._trim()

    def forget(self, key: Key) -> None:
        """The call produced no reply worth repeating (it will run again if retransmitted)."""
        self._entries.pop(key, None)

    def _trim(self) -> None:
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
