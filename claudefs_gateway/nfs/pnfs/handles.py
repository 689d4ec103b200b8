# -*- test-case-name: tests.nfs.pnfs.test_handles -*-
"""
Data-server file handles: what a flexfiles layout names a file by on a data
server (RFC 8435 §5.1, C{ffds_fh_vers}), minted by the metadata server and
checked by the data server with a key only the two of them know.

A handle carries the inode, the layout I{epoch} of the file it was minted
under, the synthetic uid and gid the client must send with it (RFC 8435
§2.2, "loosely coupled" fencing by credentials), whether it allows writing,
and an HMAC-SHA256 (truncated to 16 bytes) over all of that with the data
server's key. A data server refuses a handle whose MAC does not verify
(NFS3ERR_BADHANDLE), whose epoch is below the one the metadata server
fenced the inode at (NFS3ERR_STALE: the layout was revoked), or whose
credential differs (NFS3ERR_ACCES); a read-only handle cannot write.

Layout::

    version u8 (1) | flags u8 | ino u64 | epoch u32 | uid u32 | gid u32 | mac[16]

38 bytes, within NFSv3's 64-byte limit.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

import attrs

__all__ = ["DSHandle", "mint", "parse", "HANDLE_SIZE", "FLAG_WRITE", "BadDSHandle"]

_VERSION = 1
#: The handle allows WRITE and COMMIT (an iomode RW layout's).
FLAG_WRITE = 0x01
_BODY = struct.Struct(">BBQIII")
_MAC = 16
HANDLE_SIZE = _BODY.size + _MAC


class BadDSHandle(Exception):
    """Not a data-server handle, or its MAC does not verify with this key."""


@attrs.frozen(slots=True)
class DSHandle:
    """What a data-server handle says (after its MAC verified)."""

    ino: int
    epoch: int
    uid: int
    gid: int
    writable: bool


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()[:_MAC]


def mint(key: bytes, h: DSHandle) -> bytes:
    """The handle for C{h} under C{key} (the data server's fencing key)."""
    body = _BODY.pack(_VERSION, FLAG_WRITE if h.writable else 0, h.ino, h.epoch, h.uid, h.gid)
    return body + _mac(key, body)


def parse(key: bytes, handle: bytes) -> DSHandle:
    """
    Check and decode a handle a client sent.

    @raise BadDSHandle: wrong size or version, unknown flags, or a MAC that
        does not verify with C{key} (forged, or minted for another server).
    """
    if len(handle) != HANDLE_SIZE:
        raise BadDSHandle("not a data-server handle")
    body, mac = handle[: _BODY.size], handle[_BODY.size :]
    version, flags, ino, epoch, uid, gid = _BODY.unpack(body)
    if version != _VERSION or flags & ~FLAG_WRITE:
        raise BadDSHandle("unknown handle version or flags")
    if not hmac.compare_digest(mac, _mac(key, body)):
        raise BadDSHandle("handle MAC does not verify")
    return DSHandle(ino, epoch, uid, gid, bool(flags & FLAG_WRITE))
