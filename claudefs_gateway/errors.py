# -*- test-case-name: tests.test_errors -*-
"""
The one exception family that crosses layer boundaries.

Front ends map these to their own status codes in one table each (STYLE.md §7);
nothing below the front ends knows any protocol's codes.
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Sequence

import attrs
from twisted.internet import defer


class GatewayError(Exception):
    """Root of every error this package raises on purpose."""


class ProtocolError(GatewayError):
    """A peer sent bytes that do not parse as the protocol says they must."""


class Timeout(defer.TimeoutError, GatewayError):
    """An operation ran past its deadline."""


class BackendUnavailable(GatewayError):
    """The backend cannot be reached now (circuit open, pool exhausted); try later."""


class Throttled(BackendUnavailable):
    """
    A client or user is over its request-rate limit (C{limits.per_client},
    C{limits.per_user}); try later. A L{BackendUnavailable}, so every front end
    answers it with its own try-later status (NFS3ERR_JUKEBOX, S3 SlowDown,
    STATUS_IO_TIMEOUT) through the table it already has.
    """


class Overloaded(Throttled):
    """
    The gateway's memory budget (C{limits.memory_budget}) is spent by requests
    in flight and replies queued; try later. Answered with each protocol's busy
    status: NFS3ERR_JUKEBOX, NFS4ERR_DELAY, S3 SlowDown (503), SMB
    STATUS_INSUFFICIENT_RESOURCES.
    """


class InFlightLost(BackendUnavailable):
    """
    The connection to a backend node went down while a call was in flight.

    Whether the node carried the call out is unknown, so only an idempotent
    call may be sent again; to a client it is the same try-later answer.
    """


class UnstableLost(BackendUnavailable):
    """
    Unstable writes answered before a COMMIT may not have reached stable
    storage: their metadata's asynchronous commit was lost in a database
    restart, a write-behind WROTE failed, or a meta or data server restarted
    in between. The COMMIT that would have covered them fails with each
    protocol's try-later status (NFS3ERR_JUKEBOX, NFS4ERR_DELAY) and the NFS
    write verifier changes, so a client that checks the verifier resends,
    and one that does not (libnfs) is told its fsync failed instead of being
    told the bytes are safe (RFC 1813 section 3.3.21).
    """


class NotBuilt(GatewayError):
    """
    A component named in the configuration does not exist in this build.

    Raised instead of pretending: starting a protocol that is not built fails
    loudly with this message.
    """


@attrs.frozen
class Problem:
    """
    One thing wrong with a configuration.

    @ivar path: dotted key path, e.g. C{connection_pool.max_per_node}.
    @ivar where: a line number in the file, or a label such as C{"--bind"} for a
        value that came from the command line, or L{None} if unknown.
    @ivar message: what is wrong, never echoing a secret value.
    """

    path: str
    where: int | str | None
    message: str

    def format(self, source: str) -> str:
        if isinstance(self.where, int):
            loc = f"{source}:{self.where}"
        elif self.where is not None:
            loc = f"{source} ({self.where})"
        else:
            loc = source
        key = self.path or "(top level)"
        return f"{loc}: {key}: {self.message}"


class ConfigError(GatewayError):
    """A configuration does not validate; carries every problem found in one pass."""

    def __init__(self, problems: Sequence[Problem], source: str = "<config>") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(p.format(self.source) for p in self.problems)


# ---------------------------------------------------------------------------
# The filesystem error family: what crosses the vfs boundary (docs/errors.rst).


class FSError(GatewayError):
    """
    A filesystem operation failed with an errno-style reason.

    Each front end maps C{errno} (or the subclass) to its own status in one
    table. The message is for logs only; clients never see it, so it may name
    an inode but never a path, host or secret.
    """

    errno: int = _errno.EIO
    name: str = "EIO"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.name)


class NotFound(FSError):
    """No such file or directory (or inode)."""

    errno = _errno.ENOENT
    name = "ENOENT"


class Exists(FSError):
    """The name is already taken."""

    errno = _errno.EEXIST
    name = "EEXIST"


class NotDir(FSError):
    """A directory was required."""

    errno = _errno.ENOTDIR
    name = "ENOTDIR"


class IsDir(FSError):
    """The operation does not apply to a directory."""

    errno = _errno.EISDIR
    name = "EISDIR"


class NotEmpty(FSError):
    """The directory is not empty."""

    errno = _errno.ENOTEMPTY
    name = "ENOTEMPTY"


class Access(FSError):
    """Permission bits (or export rules) deny the operation."""

    errno = _errno.EACCES
    name = "EACCES"


class Perm(FSError):
    """Only the owner (or root) may do this."""

    errno = _errno.EPERM
    name = "EPERM"


class ReadOnly(FSError):
    """The export is read-only."""

    errno = _errno.EROFS
    name = "EROFS"


class NoSpace(FSError):
    """The store has no room left."""

    errno = _errno.ENOSPC
    name = "ENOSPC"


class DQuot(FSError):
    """A quota's hard limit (or expired soft limit) refuses the change."""

    errno = _errno.EDQUOT
    name = "EDQUOT"


class Stale(FSError):
    """The handle names a file that no longer exists, or is not ours."""

    errno = _errno.ESTALE
    name = "ESTALE"


class NameTooLong(FSError):
    """A name is longer than 255 bytes."""

    errno = _errno.ENAMETOOLONG
    name = "ENAMETOOLONG"


class Inval(FSError):
    """An argument is not acceptable (bad name, bad range, rename into itself)."""

    errno = _errno.EINVAL
    name = "EINVAL"


class NotSupp(FSError):
    """The operation is not supported on this object or backend."""

    errno = _errno.EOPNOTSUPP
    name = "EOPNOTSUPP"


class IO(FSError):
    """The backend failed in a way the caller cannot fix."""

    errno = _errno.EIO
    name = "EIO"


class XDev(FSError):
    """A link or rename would cross exports."""

    errno = _errno.EXDEV
    name = "EXDEV"


class MLink(FSError):
    """Too many hard links."""

    errno = _errno.EMLINK
    name = "EMLINK"


class FBig(FSError):
    """The file would grow past the largest size supported."""

    errno = _errno.EFBIG
    name = "EFBIG"


class Loop(FSError):
    """Too many symbolic links while resolving a path."""

    errno = _errno.ELOOP
    name = "ELOOP"


class NoData(FSError):
    """No such extended attribute."""

    errno = _errno.ENODATA
    name = "ENODATA"


class Range(FSError):
    """An extended attribute name or value is too large."""

    errno = _errno.ERANGE
    name = "ERANGE"


class Again(FSError):
    """Try again: a lock is held by someone else (non-blocking request)."""

    errno = _errno.EAGAIN
    name = "EAGAIN"


class Deadlock(FSError):
    """Waiting for this lock would deadlock."""

    errno = _errno.EDEADLK
    name = "EDEADLK"


class NoLock(FSError):
    """No lock can be granted now (out of lock records, or in grace)."""

    errno = _errno.ENOLCK
    name = "ENOLCK"


class Grace(NoLock):
    """
    The lock manager is in its grace period and this is not a reclaim.

    After a restart, clients that held locks or opens get the grace period to
    reclaim them before anyone else may take new ones; otherwise a newcomer
    could be granted a lock an old client still believes it holds. NLM answers
    DENIED_GRACE_PERIOD, NFSv4 NFS4ERR_GRACE. A subclass of L{NoLock} so a
    front end without a grace status of its own still answers "no lock now".
    """


class Busy(FSError):
    """A share reservation (open mode) of another opener conflicts."""

    errno = _errno.EBUSY
    name = "EBUSY"


class BadHandle(FSError):
    """A file handle is malformed or forged (errno 521 is Linux's EBADHANDLE); not merely stale."""

    errno = 521
    name = "EBADHANDLE"


class BadCookie(FSError):
    """A directory cookie or its verifier is no longer valid (errno 523 is Linux's EBADCOOKIE)."""

    errno = 523
    name = "EBADCOOKIE"


# Every subclass, for the tests that walk each front end's table.
FS_ERRORS: tuple[type[FSError], ...] = (
    NotFound,
    Exists,
    NotDir,
    IsDir,
    NotEmpty,
    Access,
    Perm,
    ReadOnly,
    NoSpace,
    DQuot,
    Stale,
    NameTooLong,
    Inval,
    NotSupp,
    IO,
    XDev,
    MLink,
    FBig,
    Loop,
    NoData,
    Range,
    Again,
    Deadlock,
    NoLock,
    Grace,
    Busy,
    BadHandle,
    BadCookie,
)


class LockConflict(Again):
    """
    A byte-range lock conflicts with one held by another owner.

    @ivar holder: the conflicting lock (NLM TEST and NFSv4 LOCK report it).
    """

    def __init__(self, holder: object, message: str = "") -> None:
        super().__init__(message or "lock conflict")
        self.holder = holder


class LeaseBreaking(Again):
    """
    Other clients' leases or delegations are being broken for this request,
    which did not ask to wait (NFSv4 answers NFS4ERR_DELAY; the client retries).
    """


class ShareConflict(Busy):
    """An open's access/deny modes conflict with another open (SMB sharing violation)."""
