# -*- test-case-name: tests.nfs.test_errors -*-
"""
The vfs error family mapped to NFSv3, MOUNT v3 and NLM v4 statuses: one table
each, following C{docs/errors.rst} (STYLE.md §7).

Anything that is not an L{FSError} reaching these functions is a bug: it is
logged with its traceback and answered with the protocol's "server fault"
status. Breaker-open and timeouts are "try later" (NFS3ERR_JUKEBOX).
"""

from __future__ import annotations

import errno

from twisted.python.failure import Failure

from claudefs_gateway import errors
from claudefs_gateway.core.log import Logger
from claudefs_gateway.nfs.v4 import const as _v4

__all__ = [
    "NFS3_OK",
    "NFS3ERR",
    "nfs3_status",
    "nfs3_name",
    "mount_status",
    "nlm4_status",
    "NLM4",
    "nfs4_status",
]

_log = Logger()

NFS3_OK = 0


class NFS3ERR:
    """nfsstat3 (RFC 1813 §2.6)."""

    PERM = 1
    NOENT = 2
    IO = 5
    NXIO = 6
    ACCES = 13
    EXIST = 17
    XDEV = 18
    NODEV = 19
    NOTDIR = 20
    ISDIR = 21
    INVAL = 22
    FBIG = 27
    NOSPC = 28
    ROFS = 30
    MLINK = 31
    NAMETOOLONG = 63
    NOTEMPTY = 66
    DQUOT = 69
    STALE = 70
    REMOTE = 71
    BADHANDLE = 10001
    NOT_SYNC = 10002
    BAD_COOKIE = 10003
    NOTSUPP = 10004
    TOOSMALL = 10005
    SERVERFAULT = 10006
    BADTYPE = 10007
    JUKEBOX = 10008


_NAMES = {v: f"NFS3ERR_{k}" for k, v in vars(NFS3ERR).items() if isinstance(v, int) and k.isupper()}
_NAMES[NFS3_OK] = "NFS3_OK"

# docs/errors.rst, column "NFSv3".
_NFS3: dict[int, int] = {
    errno.ENOENT: NFS3ERR.NOENT,
    errno.EEXIST: NFS3ERR.EXIST,
    errno.ENOTDIR: NFS3ERR.NOTDIR,
    errno.EISDIR: NFS3ERR.ISDIR,
    errno.ENOTEMPTY: NFS3ERR.NOTEMPTY,
    errno.EACCES: NFS3ERR.ACCES,
    errno.EPERM: NFS3ERR.PERM,
    errno.EROFS: NFS3ERR.ROFS,
    errno.ENOSPC: NFS3ERR.NOSPC,
    errno.EDQUOT: NFS3ERR.DQUOT,
    errno.ESTALE: NFS3ERR.STALE,
    521: NFS3ERR.BADHANDLE,
    errno.ENAMETOOLONG: NFS3ERR.NAMETOOLONG,
    errno.EINVAL: NFS3ERR.INVAL,
    errno.EOPNOTSUPP: NFS3ERR.NOTSUPP,
    errno.EIO: NFS3ERR.IO,
    errno.EXDEV: NFS3ERR.XDEV,
    errno.EMLINK: NFS3ERR.MLINK,
    errno.EFBIG: NFS3ERR.FBIG,
    errno.ELOOP: NFS3ERR.INVAL,
    # NFSv3 has no extended attributes; a vfs NoData can only be a bug here.
    errno.ENODATA: NFS3ERR.IO,
    errno.ERANGE: NFS3ERR.INVAL,
    # Lock and share errors cannot come from NFSv3 calls (locks are NLM's),
    # but the table is total: a share conflict denies access.
    errno.EAGAIN: NFS3ERR.JUKEBOX,
    errno.EDEADLK: NFS3ERR.JUKEBOX,
    errno.ENOLCK: NFS3ERR.JUKEBOX,
    errno.EBUSY: NFS3ERR.ACCES,
    523: NFS3ERR.BAD_COOKIE,
}


def nfs3_name(status: int) -> str:
    return _NAMES.get(status, str(status))


def nfs3_status(f: Failure | BaseException, proc: str = "?") -> int:
    """
    The nfsstat3 for a failure from the vfs (one table; see module docstring).

    Unexpected failures are logged with their traceback.
    """
    e = f.value if isinstance(f, Failure) else f
    if isinstance(e, errors.FSError):
        return _NFS3.get(e.errno, NFS3ERR.IO)
    if isinstance(e, errors.BackendUnavailable | errors.Timeout):
        return NFS3ERR.JUKEBOX
    _log.failure(
        "unexpected failure in NFSv3 {proc}", f if isinstance(f, Failure) else Failure(e), proc=proc
    )
    return NFS3ERR.SERVERFAULT


# MOUNT v3 (RFC 1813 appendix I): a subset of the NFSv3 codes.
MNT3_OK = 0
_MOUNT_CODES = {1, 2, 5, 13, 20, 22, 63, 10004, 10006}


def mount_status(f: Failure | BaseException) -> int:
    """The mountstat3 for a failure: NFSv3's code where MOUNT has it, else EIO/SERVERFAULT."""
    code = nfs3_status(f, "MNT")
    if code in _MOUNT_CODES:
        return code
    if code in (NFS3ERR.STALE, NFS3ERR.BADHANDLE):
        return NFS3ERR.NOENT
    return NFS3ERR.IO


class NLM4:
    """nlm4_stats (X/Open XNFS, NLM version 4)."""

    GRANTED = 0
    DENIED = 1
    DENIED_NOLOCKS = 2
    BLOCKED = 3
    DENIED_GRACE_PERIOD = 4
    DEADLCK = 5
    ROFS = 6
    STALE_FH = 7
    FBIG = 8
    FAILED = 9


_NLM_NAMES = {v: f"NLM4_{k}" for k, v in vars(NLM4).items() if isinstance(v, int) and k.isupper()}

# docs/errors.rst, column "NFSv4.1 / NLM" (the NLM half).
_NLM4: dict[int, int] = {
    errno.EAGAIN: NLM4.DENIED,
    errno.EBUSY: NLM4.DENIED,
    errno.EDEADLK: NLM4.DEADLCK,
    errno.ENOLCK: NLM4.DENIED_NOLOCKS,
    errno.EROFS: NLM4.ROFS,
    errno.ESTALE: NLM4.STALE_FH,
    521: NLM4.STALE_FH,
    errno.EFBIG: NLM4.FBIG,
}


def nlm4_name(status: int) -> str:
    return _NLM_NAMES.get(status, str(status))


def nlm4_status(f: Failure | BaseException, proc: str = "?") -> int:
    """The nlm4_stats for a failure from the vfs or its lock table."""
    e = f.value if isinstance(f, Failure) else f
    if isinstance(e, errors.Grace):
        return NLM4.DENIED_GRACE_PERIOD
    if isinstance(e, errors.FSError):
        return _NLM4.get(e.errno, NLM4.FAILED)
    if isinstance(e, errors.BackendUnavailable | errors.Timeout):
        return NLM4.DENIED_NOLOCKS
    _log.failure(
        "unexpected failure in NLM {proc}", f if isinstance(f, Failure) else Failure(e), proc=proc
    )
    return NLM4.FAILED


# NFSv4.1/4.2 (RFC 8881 §15): docs/errors.rst, column "NFSv4.1 / NLM" (the v4 half).

_NFS4: dict[int, int] = {
    errno.ENOENT: _v4.NFS4ERR_NOENT,
    errno.EEXIST: _v4.NFS4ERR_EXIST,
    errno.ENOTDIR: _v4.NFS4ERR_NOTDIR,
    errno.EISDIR: _v4.NFS4ERR_ISDIR,
    errno.ENOTEMPTY: _v4.NFS4ERR_NOTEMPTY,
    errno.EACCES: _v4.NFS4ERR_ACCESS,
    errno.EPERM: _v4.NFS4ERR_PERM,
    errno.EROFS: _v4.NFS4ERR_ROFS,
    errno.ENOSPC: _v4.NFS4ERR_NOSPC,
    errno.EDQUOT: _v4.NFS4ERR_DQUOT,
    errno.ESTALE: _v4.NFS4ERR_STALE,
    521: _v4.NFS4ERR_BADHANDLE,
    errno.ENAMETOOLONG: _v4.NFS4ERR_NAMETOOLONG,
    errno.EINVAL: _v4.NFS4ERR_INVAL,
    errno.EOPNOTSUPP: _v4.NFS4ERR_NOTSUPP,
    errno.EIO: _v4.NFS4ERR_IO,
    errno.EXDEV: _v4.NFS4ERR_XDEV,
    errno.EMLINK: _v4.NFS4ERR_MLINK,
    errno.EFBIG: _v4.NFS4ERR_FBIG,
    errno.ELOOP: _v4.NFS4ERR_SYMLINK,
    # RFC 8276 §8.4: a missing extended attribute, one too large.
    errno.ENODATA: _v4.NFS4ERR_NOXATTR,
    errno.ERANGE: _v4.NFS4ERR_XATTR2BIG,
    errno.EAGAIN: _v4.NFS4ERR_DENIED,
    errno.EDEADLK: _v4.NFS4ERR_DEADLOCK,
    # Out of lock records: NFS4ERR_RESOURCE is not a 4.1 error; try later.
    errno.ENOLCK: _v4.NFS4ERR_DELAY,
    # A non-share EBUSY is an export root that cannot be removed or replaced.
    errno.EBUSY: _v4.NFS4ERR_ACCESS,
    523: _v4.NFS4ERR_BAD_COOKIE,
}


def nfs4_status(f: Failure | BaseException, op: str = "?") -> int:
    """
    The nfsstat4 for a failure from the vfs or its lock table (one table;
    see module docstring). Grace and share conflicts come before their
    parent classes; unexpected failures are logged and NFS4ERR_SERVERFAULT.
    """
    e = f.value if isinstance(f, Failure) else f
    if isinstance(e, errors.Grace):
        return _v4.NFS4ERR_GRACE
    if isinstance(e, errors.ShareConflict):
        return _v4.NFS4ERR_SHARE_DENIED
    if isinstance(e, errors.LeaseBreaking):
        return _v4.NFS4ERR_DELAY
    if isinstance(e, errors.FSError):
        return _NFS4.get(e.errno, _v4.NFS4ERR_IO)
    if isinstance(e, errors.BackendUnavailable | errors.Timeout):
        return _v4.NFS4ERR_DELAY
    _log.failure(
        "unexpected failure in NFSv4 {op}", f if isinstance(f, Failure) else Failure(e), op=op
    )
    return _v4.NFS4ERR_SERVERFAULT
