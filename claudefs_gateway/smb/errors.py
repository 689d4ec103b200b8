# -*- test-case-name: tests.smb.test_errors -*-
"""
The one table from the gateway's error family to NTSTATUS (docs/errors.rst,
SMB column), and L{SMBError} for statuses the SMB layer decides itself.

Client-visible statuses carry no message at all: exception text (which may
name an inode) goes only to the log.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure

from claudefs_gateway import errors
from claudefs_gateway.core.log import Logger
from claudefs_gateway.smb import ntstatus as st

__all__ = ["SMBError", "status_for", "FS_STATUS"]

_log = Logger()


class SMBError(Exception):
    """Answer the request with C{status} (and, for some statuses, C{body})."""

    def __init__(self, status: int, reason: str = "", body: bytes | None = None) -> None:
        super().__init__(reason or st.name(status))
        self.status = status
        self.body = body


FS_STATUS: dict[type[errors.FSError], int] = {
    errors.NotFound: st.STATUS_OBJECT_NAME_NOT_FOUND,
    errors.Exists: st.STATUS_OBJECT_NAME_COLLISION,
    errors.NotDir: st.STATUS_NOT_A_DIRECTORY,
    errors.IsDir: st.STATUS_FILE_IS_A_DIRECTORY,
    errors.NotEmpty: st.STATUS_DIRECTORY_NOT_EMPTY,
    errors.Access: st.STATUS_ACCESS_DENIED,
    errors.Perm: st.STATUS_ACCESS_DENIED,
    errors.ReadOnly: st.STATUS_MEDIA_WRITE_PROTECTED,
    errors.NoSpace: st.STATUS_DISK_FULL,
    errors.DQuot: st.STATUS_DISK_FULL,
    errors.Stale: st.STATUS_FILE_DELETED,
    errors.BadHandle: st.STATUS_INVALID_HANDLE,
    errors.NameTooLong: st.STATUS_OBJECT_NAME_INVALID,
    errors.Inval: st.STATUS_INVALID_PARAMETER,
    errors.NotSupp: st.STATUS_NOT_SUPPORTED,
    errors.IO: st.STATUS_UNEXPECTED_IO_ERROR,
    errors.XDev: st.STATUS_NOT_SAME_DEVICE,
    errors.MLink: st.STATUS_TOO_MANY_LINKS,
    errors.FBig: st.STATUS_FILE_TOO_LARGE,
    errors.Loop: st.STATUS_OBJECT_PATH_NOT_FOUND,
    errors.NoData: st.STATUS_NONEXISTENT_EA_ENTRY,
    errors.Range: st.STATUS_EA_TOO_LARGE,
    errors.Again: st.STATUS_LOCK_NOT_GRANTED,
    errors.LockConflict: st.STATUS_LOCK_NOT_GRANTED,
    errors.Deadlock: st.STATUS_POSSIBLE_DEADLOCK,
    errors.NoLock: st.STATUS_RANGE_NOT_LOCKED,
    # In the lock manager's grace period: "not now" (CREATE answers SHARING_VIOLATION itself).
    errors.Grace: st.STATUS_LOCK_NOT_GRANTED,
    errors.Busy: st.STATUS_SHARING_VIOLATION,
    errors.ShareConflict: st.STATUS_SHARING_VIOLATION,
    errors.BadCookie: st.STATUS_INVALID_PARAMETER,
}


def status_for(reason: Failure | BaseException, op: str = "") -> int:
    """
    The NTSTATUS for a failed operation: the table for the error family,
    STATUS_IO_TIMEOUT when the backend is unavailable or slow (clients
    retry), STATUS_CANCELLED for a cancelled wait, STATUS_INVALID_PARAMETER
    for a request that does not parse; anything else is a bug, answered with
    STATUS_INTERNAL_ERROR and logged with its traceback.
    """
    e = reason.value if isinstance(reason, Failure) else reason
    if isinstance(e, SMBError):
        return e.status
    if isinstance(e, errors.FSError):
        for cls in type(e).__mro__:
            status = FS_STATUS.get(cls)  # type: ignore[arg-type]
            if status is not None:
                return status
        return st.STATUS_UNEXPECTED_IO_ERROR
    if isinstance(e, errors.Overloaded):
        return st.STATUS_INSUFFICIENT_RESOURCES
    if isinstance(e, errors.BackendUnavailable | errors.Timeout):
        return st.STATUS_IO_TIMEOUT
    if isinstance(e, CancelledError):
        return st.STATUS_CANCELLED
    if isinstance(e, errors.ProtocolError):
        return st.STATUS_INVALID_PARAMETER
    f = reason if isinstance(reason, Failure) else Failure(reason)
    _log.failure("unexpected failure in SMB {op}", f, op=op)
    return st.STATUS_INTERNAL_ERROR
