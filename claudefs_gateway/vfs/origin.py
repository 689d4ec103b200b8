# -*- test-case-name: tests.vfs.test_crossproto -*-
"""
The open a request acts through, as far as locks, share modes and leases care.

Protocols differ in whether a request comes through an open: SMB I/O always
does (a FileId), NFSv4 I/O does when its stateid names one, NFSv3 and S3
never do. The vfs needs to know, for every operation that touches a file
someone may hold open, three things (docs/locks.rst "One file, every
protocol"):

 - whose byte-range locks the I/O runs under, and whether it honours
   advisory (POSIX) locks as well as mandatory (Windows) ones;
 - whether it has a share reservation of its own (then its open was
   checked already) or must be checked against every open's deny modes;
 - whose leases it must not break (its own), and whether it waits for the
   breaks of others' or is told to come back (NFS "try later").
"""

from __future__ import annotations

import attrs

from claudefs_gateway.vfs.leases import LeaseKey
from claudefs_gateway.vfs.locks import LockOwner, ShareToken

__all__ = ["Origin", "NO_OPEN", "default_origin"]

#: The lock owner of I/O that comes through no open: it owns no lock, so every
#: other owner's lock counts against it.
ANONYMOUS = LockOwner("anonymous", "", b"")


@attrs.frozen
class Origin:
    """
    @ivar owner: the lock owner the I/O runs as (an SMB open, an NFSv4
        lock-owner); L{None} for I/O through no open.
    @ivar share: the open's share reservation; L{None} means the request is
        checked against every open's deny modes (NFSv3, S3, an NFSv4
        anonymous stateid).
    @ivar exempt: lease keys this request never breaks (its own).
    @ivar strict: honour POSIX (advisory) byte-range locks as well as
        Windows (mandatory) ones: SMB does, as Samba does with its own and
        POSIX locks; S3 does, since a PUT replaces the whole object. NFS I/O
        does not, as on Linux, where POSIX locks are advisory.
    @ivar ranges: check byte-range locks at all; false for the truncation of
        an SMB CREATE that overwrites a file, which Windows lets through
        others' locks (MS-FSA 2.1.5.1.2.1; smbtorture smb2.lock.truncate).
    @ivar wait: wait for other holders to acknowledge lease breaks (up to
        the recall timeout); when false the request fails at once with
        L{claudefs_gateway.errors.Again} while a break is outstanding, and
        the client retries (NFSv4 NFS4ERR_DELAY, as knfsd does).
    @ivar bypass: skip share reservations and byte-range locks (a READ with
        NFSv4's READ-bypass stateid, RFC 8881 §8.2.3); leases still break.
    @ivar bypass_governance: a delete that may remove a file under governance
        retention (S3's C{x-amz-bypass-governance-retention}, by someone
        allowed to; see L{claudefs_gateway.vfs.worm}).
    """

    owner: LockOwner | None = None
    share: ShareToken | None = None
    exempt: tuple[LeaseKey, ...] = ()
    strict: bool = False
    wait: bool = True
    ranges: bool = True
    bypass: bool = False
    bypass_governance: bool = False

    @property
    def lock_owner(self) -> LockOwner:
        """The owner to check byte-range locks as (an anonymous one for I/O without an open)."""
        return self.owner if self.owner is not None else ANONYMOUS


#: A request through no open, by a protocol whose I/O ignores advisory locks (NFSv3).
NO_OPEN = Origin()

_DEFAULTS: dict[str, Origin] = {
    # S3 replaces whole objects: every lock on the object counts against it.
    "s3": Origin(strict=True),
    "smb": Origin(strict=True),
}


def default_origin(protocol: str) -> Origin:
    """The origin of a request that names none: an open-less request of C{protocol}."""
    return _DEFAULTS.get(protocol, NO_OPEN)
