# -*- test-case-name: tests.vfs.test_vfs -*-
"""
Plain values that cross the backend and vfs boundaries.

Front ends may import this module (it is not the backend): they receive these
objects from L{claudefs_gateway.vfs} and translate them into their own wire
structures. Names are C{bytes} throughout (NFS names are opaque bytes; SMB and
S3 front ends encode UTF-8). Times are integer nanoseconds since the epoch.
"""

from __future__ import annotations

import enum
import stat as _stat

import attrs

__all__ = [
    "FileType",
    "Attributes",
    "SetAttrs",
    "NOW",
    "DirEntry",
    "DirPage",
    "FSStat",
    "Credentials",
    "WriteResult",
    "ReadResult",
    "RenameResult",
    "PutResult",
    "Usage",
    "QuotaLimits",
    "NAME_MAX",
    "XATTR_NAME_MAX",
    "XATTR_SIZE_MAX",
    "MAX_FILE_SIZE",
]

NAME_MAX = 255
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 64 * 1024
# 2**63 - 1: what a signed 64-bit off_t holds; NFS/SMB sizes beyond are refused (FBig).
MAX_FILE_SIZE = 2**63 - 1


class FileType(enum.IntEnum):
    """Object types; values are the S_IFMT bits, so C{mode | type} is a st_mode."""

    REG = _stat.S_IFREG
    DIR = _stat.S_IFDIR
    LNK = _stat.S_IFLNK
    BLK = _stat.S_IFBLK
    CHR = _stat.S_IFCHR
    FIFO = _stat.S_IFIFO
    SOCK = _stat.S_IFSOCK


@attrs.frozen(slots=True)
class Attributes:
    """
    What the store knows about one inode.

    @ivar ino: stable 64-bit inode number, never reused within one store.
    @ivar gen: generation: changes if an inode number is ever reused, so an old
        handle to it is stale.
    @ivar mode: permission bits only (0o7777: rwx, setuid, setgid, sticky).
    @ivar size: bytes (directories: an implementation-chosen size; symlinks: target length).
    @ivar used: bytes of storage actually allocated (sparse files use less than size).
    @ivar rdev: (major, minor) for device nodes, else (0, 0).
    @ivar change: a counter that increases on every change to the inode's data or
        metadata (NFSv4 change attribute, S3 ETag cache key, SMB change time).
    @ivar btime_ns: creation (birth) time.
    """

    ino: int
    gen: int
    type: FileType
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    used: int
    rdev: tuple[int, int]
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    btime_ns: int
    change: int

    @property
    def st_mode(self) -> int:
        return int(self.type) | self.mode

    @property
    def is_dir(self) -> bool:
        return self.type is FileType.DIR

    @property
    def is_reg(self) -> bool:
        return self.type is FileType.REG

    @property
    def is_link(self) -> bool:
        return self.type is FileType.LNK


class _Now:
    """Marker: set a time to the server's current time."""

    def __repr__(self) -> str:
        return "NOW"


NOW = _Now()

TimeSpec = int | _Now | None


@attrs.frozen(slots=True)
class SetAttrs:
    """
    A change to attributes; L{None} fields are left alone.

    Times take nanoseconds or L{NOW}. C{size} truncates or extends (with a hole).
    """

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime: TimeSpec = None
    mtime: TimeSpec = None
    btime: TimeSpec = None

    def is_empty(self) -> bool:
        # (A chain of tests, not all() over a generator: asked on every
        # NFS CREATE and SETATTR, where the generator's steps were eight
        # Python calls.)
        return (
            self.mode is None
            and self.uid is None
            and self.gid is None
            and self.size is None
            and self.atime is None
            and self.mtime is None
            and self.btime is None
        )


@attrs.frozen(slots=True)
class DirEntry:
    """
    One directory entry.

    @ivar cookie: resume point: listing again from this cookie returns the
        entries after this one. Cookies are at least 3 (0 = start of the
        directory; 1 and 2 are left to front ends for "." and "..").
    @ivar attrs: the entry's attributes when the listing asked for them.
    """

    name: bytes
    ino: int
    type: FileType
    cookie: int
    attrs: Attributes | None = None


@attrs.frozen(slots=True)
class DirPage:
    """
    A page of a directory listing.

    @ivar verifier: 8 opaque bytes; a later page request must present it, and
        gets L{claudefs_gateway.errors.BadCookie} if the cookies it issued are no
        longer valid.
    @ivar eof: no entries follow the last one.
    """

    entries: tuple[DirEntry, ...]
    verifier: bytes
    eof: bool


@attrs.frozen(slots=True)
class FSStat:
    """Space and inode counts (statfs). C{avail_*} is what the caller may still use."""

    total_bytes: int
    free_bytes: int
    avail_bytes: int
    total_files: int
    free_files: int
    avail_files: int
    block_size: int = 4096
    name_max: int = NAME_MAX


@attrs.frozen(slots=True)
class Credentials:
    """Who a request runs as, after squashing. uid 0 is root."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups


ROOT = Credentials(0, 0)


@attrs.frozen(slots=True)
class WriteResult:
    """
    @ivar count: bytes written (always all of them, or the call fails).
    @ivar stable: true if data and metadata are on disk (a stable write).
    @ivar attrs: the inode after the write.
    @ivar before: the inode before the write (NFSv3 weak cache consistency).
    """

    count: int
    stable: bool
    attrs: Attributes
    before: Attributes | None = None


@attrs.frozen(slots=True)
class ReadResult:
    data: bytes
    eof: bool
    attrs: Attributes


@attrs.frozen(slots=True)
class RenameResult:
    """
    @ivar source: the renamed inode, after the rename.
    @ivar replaced: the inode that was at the destination and was unlinked, if any.
    """

    source: Attributes
    replaced: Attributes | None = None


@attrs.frozen(slots=True)
class PutResult:
    """
    What a store's C{put_file} did (L{claudefs_gateway.interfaces.IMetadataService.rename}).

    @ivar source: the new file.
    @ivar replaced: the file that had the name and was unlinked, after, if any.
    @ivar made: the directories made on the way to it, outermost first, as they are after.
    """

    source: Attributes
    replaced: Attributes | None = None
    made: tuple[Attributes, ...] = ()


@attrs.frozen(slots=True)
class Usage:
    """What one uid or gid uses: logical bytes (sum of file sizes) and inodes."""

    bytes: int = 0
    inodes: int = 0


@attrs.frozen(slots=True)
class QuotaLimits:
    """Soft and hard limits; 0 = no limit."""

    bytes_soft: int = 0
    bytes_hard: int = 0
    inodes_soft: int = 0
    inodes_hard: int = 0
