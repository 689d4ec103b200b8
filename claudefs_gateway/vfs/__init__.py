"""
The vfs: one namespace, one set of rules, for every protocol front end.

Front ends import from here (and from L{claudefs_gateway.fstypes} and
L{claudefs_gateway.errors}) and nothing below: handles, callers (identity after
export rules), permission checks, quotas, caches, locks, leases and change
events all live behind L{VFS}, which front ends see as
L{claudefs_gateway.interfaces.IVFS}.
"""

from claudefs_gateway.vfs._vfs import INTERNAL_PREFIX, PRIVATE_NAMES, VFS, inline
from claudefs_gateway.vfs.events import Action, Change
from claudefs_gateway.vfs.exports import Caller, ExportInfo
from claudefs_gateway.vfs.identity import User, UserDB
from claudefs_gateway.vfs.leases import Lease, LeaseKey, LeaseManager, Why
from claudefs_gateway.vfs.locks import Lock, LockOwner, LockTable, ShareToken
from claudefs_gateway.vfs.origin import Origin
from claudefs_gateway.vfs.permissions import R, W, X

__all__ = [
    "VFS",
    "inline",
    "Caller",
    "ExportInfo",
    "User",
    "UserDB",
    "Action",
    "Change",
    "INTERNAL_PREFIX",
    "PRIVATE_NAMES",
    "R",
    "W",
    "X",
    "Lock",
    "LockOwner",
    "LockTable",
    "ShareToken",
    "Lease",
    "LeaseKey",
    "LeaseManager",
    "Why",
    "Origin",
]
