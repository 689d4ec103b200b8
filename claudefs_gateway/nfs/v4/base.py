# -*- test-case-name: tests.nfs.v4.test_ops -*-
"""
What every NFSv4 module shares: the error an operation raises to answer a
status (L{Nfs4Error}), and small helpers over names and times.
"""

from __future__ import annotations

from claudefs_gateway.fstypes import NAME_MAX
from claudefs_gateway.nfs.v4 import const as c

__all__ = ["Nfs4Error", "check_name", "time_ns", "split_ns"]


class Nfs4Error(Exception):
    """
    Raised inside an operation to answer with C{status} (an nfsstat4).

    @ivar body: the result body some statuses carry (LOCK4denied with
        NFS4ERR_DENIED, SETATTR's attrsset), or L{None}.
    """

    def __init__(self, status: int, why: str = "", body: object = None) -> None:
        super().__init__(why or c.status_name(status))
        self.status = status
        self.body = body


def check_name(name: bytes, *, dots_ok: bool = False) -> None:
    """
    A component name as RFC 8881 §14.5 wants it: not empty (NFS4ERR_INVAL),
    at most 255 bytes (NFS4ERR_NAMETOOLONG), no C{/} or NUL (NFS4ERR_BADCHAR),
    not C{.} or C{..} unless the operation allows them (NFS4ERR_BADNAME).
    Names are bytes, as over NFSv3: a name that is not UTF-8 is served, not
    refused (the RFC lets a server do either; knfsd serves them too).
    """
    if not name:
        raise Nfs4Error(c.NFS4ERR_INVAL, "empty name")
    if len(name) > NAME_MAX:
        raise Nfs4Error(c.NFS4ERR_NAMETOOLONG, "name longer than 255 bytes")
    if not dots_ok and name in (b".", b".."):
        raise Nfs4Error(c.NFS4ERR_BADNAME, "'.' or '..'")
    if b"/" in name or b"\0" in name:
        raise Nfs4Error(c.NFS4ERR_BADCHAR, "name contains / or NUL")


def split_ns(ns: int) -> tuple[int, int]:
    """Nanoseconds since the epoch as nfstime4 (seconds, nseconds)."""
    s, n = divmod(ns, 1_000_000_000)
    return s, n


def time_ns(seconds: int, nseconds: int) -> int:
    """An nfstime4 as nanoseconds. @raise Nfs4Error: nseconds of a second or more."""
    if nseconds >= 1_000_000_000:
        raise Nfs4Error(c.NFS4ERR_INVAL, "nseconds out of range")
    return seconds * 1_000_000_000 + nseconds
