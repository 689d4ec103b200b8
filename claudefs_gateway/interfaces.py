# -*- test-case-name: tests.backend.test_contract -*-
"""
Every seam between packages, as zope Interfaces.

The backend contract is inode based (DESIGN.md "The backend contract"): the
backend stores and returns; it checks no permissions and knows no users,
exports or protocols - L{claudefs_gateway.vfs} does all of that. Every method
returns a Deferred; failures are L{claudefs_gateway.errors.FSError} subclasses
and nothing else.

Durability (what "returns" means below: the Deferred fired):
 - every metadata change is on disk when it returns;
 - a write with C{stable=True}, and C{commit}, are on disk (data, size and
   times) when they return;
 - a write with C{stable=False} is visible to every later call at once, and
   on disk after the next C{commit} of that inode (or a stable write to it).

Names are bytes: not empty, not C{.} or C{..}, no C{/} or NUL, at most
L{claudefs_gateway.fstypes.NAME_MAX} bytes; otherwise L{Inval} or
L{NameTooLong}. Missing inodes raise L{NotFound}; an operation on a parent
that is not a directory raises L{NotDir}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from claudefs_gateway.fstypes import (
        Attributes,
        DirPage,
        FileType,
        FSStat,
        QuotaLimits,
        RenameResult,
        SetAttrs,
        Usage,
        WriteResult,
    )

__all__ = ["IMetadataService", "IDataService", "IBackend"]


class IMetadataService(Interface):
    """Inodes, directories, links, attributes, xattrs, usage and quota records."""

    def root() -> Deferred[Attributes]:
        """The root directory of the namespace (created with the store, mode 0755, owner 0:0)."""

    def getattr(ino: int) -> Deferred[Attributes]:
        """@raise NotFound: no such inode (never existed, or unlinked and gone)."""

    def lookup(parent: int, name: bytes) -> Deferred[Attributes]:
        """The inode named C{name} in directory C{parent} (C{.} and C{..} are accepted). @raise NotFound, NotDir."""

    def create(
        parent: int,
        name: bytes,
        type: FileType,
        mode: int,
        uid: int,
        gid: int,
        rdev: tuple[int, int] = (0, 0),
    ) -> Deferred[Attributes]:
        """
        Make a new regular file, directory, device, fifo or socket (not a symlink).

        Times are set to now; a directory gets nlink 2 and its parent's nlink
        grows by one. @raise Exists: the name is taken (whatever its type).
        """

    def symlink(
        parent: int, name: bytes, target: bytes, mode: int, uid: int, gid: int
    ) -> Deferred[Attributes]:
        """Make a symbolic link holding C{target} (any bytes, at most 4096). @raise Exists."""

    def link(ino: int, parent: int, name: bytes) -> Deferred[Attributes]:
        """
        A new name for C{ino}; its nlink grows by one and its ctime changes.

        @raise Exists: the name is taken. @raise Perm: C{ino} is a directory.
        @raise MLink: C{ino} already has 65000 links.
        """

    def unlink(parent: int, name: bytes) -> Deferred[Attributes]:
        """
        Remove a non-directory name; fires with the inode's attributes after
        (nlink 0 means the inode is gone: its data is freed and getattr fails).

        @raise IsDir: the name is a directory (use rmdir).
        """

    def rmdir(parent: int, name: bytes) -> Deferred[Attributes]:
        """Remove an empty directory. @raise NotEmpty, NotDir."""

    def rename(
        src_parent: int, src_name: bytes, dst_parent: int, dst_name: bytes
    ) -> Deferred[RenameResult]:
        """
        POSIX rename, atomic: the destination, if it exists, is replaced.

        Renaming a name onto itself (or onto another name of the same inode) is
        a successful no-op. A directory may replace only an empty directory,
        and a non-directory only a non-directory.
        @raise Inval: a directory would move into its own subtree.
        @raise NotEmpty: the destination is a non-empty directory.
        @raise IsDir: a non-directory would replace a directory.
        @raise NotDir: a directory would replace a non-directory.
        """

    def setattr(
        ino: int, changes: SetAttrs, guard_ctime_ns: int | None = None
    ) -> Deferred[Attributes]:
        """
        Apply C{changes}; ctime becomes now (and mtime too when size changes).

        A size change truncates or extends the data (extension reads as zeros).
        @raise Inval: C{guard_ctime_ns} is given and differs from the inode's ctime
            (NFSv3 SETATTR guard) - nothing is changed then.
        @raise FBig: size beyond L{MAX_FILE_SIZE}.
        """

    def readdir(
        dir: int, cookie: int, verifier: bytes, count: int, with_attrs: bool = False
    ) -> Deferred[DirPage]:
        """
        Up to C{count} entries after C{cookie} (0: from the start), in a stable
        order: listing an unchanged directory page by page returns every entry
        exactly once. "." and ".." are not returned.

        @param verifier: the verifier of an earlier page, or 8 zero bytes with
            cookie 0. @raise BadCookie: the cookie or verifier is not valid now.
        """

    def readlink(ino: int) -> Deferred[bytes]:
        """@raise Inval: not a symlink."""

    def statfs() -> Deferred[FSStat]:
        """Space and inodes of the store (from the real device for the embedded store)."""

    def getxattr(ino: int, name: bytes) -> Deferred[bytes]:
        """@raise NoData: no such attribute."""

    def setxattr(ino: int, name: bytes, value: bytes, create: bool | None = None) -> Deferred[None]:
        """
        Set an extended attribute. C{create=True}: must not exist (L{Exists});
        C{False}: must exist (L{NoData}); L{None}: either.
        @raise Range: name over 255 bytes or value over 64 KiB.
        """

    def listxattr(ino: int) -> Deferred[list[bytes]]:
        """Every extended attribute name, sorted."""

    def removexattr(ino: int, name: bytes) -> Deferred[None]:
        """@raise NoData: no such attribute."""

    def usage(kind: str, id: int) -> Deferred[Usage]:
        """
        What uid (C{kind="user"}) or gid (C{"group"}) C{id} uses: bytes = the sum
        of the sizes of its regular files, inodes = its inodes of every type.
        Exact: updated in the same transaction as the change that moves it.
        """

    def all_usage(kind: str) -> Deferred[dict[int, Usage]]:
        """Usage of every id of C{kind} that owns anything."""

    def get_quota(kind: str, id: int) -> Deferred[QuotaLimits | None]:
        """The limits stored for one id, or None (the configured defaults apply)."""

    def set_quota(kind: str, id: int, limits: QuotaLimits | None) -> Deferred[None]:
        """Store (or with None, remove) one id's limits."""

    def list_quotas(kind: str) -> Deferred[dict[int, QuotaLimits]]:
        """Every stored limit of C{kind}."""

    def get_state(key: str) -> Deferred[bytes | None]:
        """Small durable values the layers above keep in the store (grace clocks, NSM state)."""

    def set_state(key: str, value: bytes | None) -> Deferred[None]:
        """Store (None: delete) one value, durably."""


class IDataService(Interface):
    """File contents by inode."""

    def read(ino: int, offset: int, length: int) -> Deferred[tuple[bytes, bool]]:
        """
        Up to C{length} bytes at C{offset}; fires with (data, eof), eof true if the
        read reached the end of the file. Holes read as zeros.
        @raise IsDir: C{ino} is a directory. @raise Inval: not a regular file.
        """

    def write(ino: int, offset: int, data: bytes, stable: bool) -> Deferred[WriteResult]:
        """
        Write all of C{data} at C{offset}, extending the file if needed; mtime
        and ctime become now and the change counter grows. See the module
        docstring for what C{stable} promises. @raise FBig.
        """

    def commit(ino: int) -> Deferred[Attributes]:
        """Make every earlier write to C{ino} durable; fires with its attributes."""

    def allocate(ino: int, offset: int, length: int) -> Deferred[Attributes]:
        """Reserve storage for the range (fallocate), extending the size if needed."""

    def deallocate(ino: int, offset: int, length: int) -> Deferred[Attributes]:
        """Punch a hole: the range reads as zeros afterwards; size is unchanged."""


class IBackend(IMetadataService, IDataService):
    """A whole store: both services plus its lifecycle."""

    instance_id = Attribute(
        "8 bytes, random per store, stable across restarts (verifiers derive from it)."
    )

    def open() -> Deferred[None]:
        """Open (creating on first use) and recover the store; nothing else may be called before."""

    def close() -> Deferred[None]:
        """Flush and close; every change that returned is on disk afterwards."""
