# -*- test-case-name: tests.smb.test_info -*-
"""
File and file system information ([MS-FSCC] 2.4, 2.5) from vfs attributes.

Windows wants things POSIX does not keep, which this module derives or takes
from the front end's own metadata: FILE_ATTRIBUTE_* bits (kept per inode by
the vfs's C{meta_set}, "DOS attributes"), creation time (the inode's birth
time, settable through the vfs), allocation size (bytes used, rounded to the
4 KiB cluster we report), and the directory entry formats clients list with.

Times on the wire are FILETIME: 100 ns units since 1601-01-01 UTC.
"""

from __future__ import annotations

import re
import struct
from codecs import utf_16_le_encode as utf16_encode
from functools import lru_cache

import attrs

from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.fstypes import Attributes, FSStat
from claudefs_gateway.smb import constants as c
from claudefs_gateway.smb.constants import FileInfoClass as F
from claudefs_gateway.smb.constants import FsInfoClass as Fs
from claudefs_gateway.smb.messages import FileTimes

__all__ = [
    "CLUSTER",
    "to_filetime",
    "from_filetime",
    "dos_attributes",
    "Stat",
    "file_times",
    "DIRECTORY_CLASSES",
    "pack_dir_entry",
    "pattern_matcher",
    "fs_info",
    "pack_stat_info",
]

CLUSTER = 4096
SECTOR = 512
_EPOCH_AS_FILETIME = 116444736000000000


def to_filetime(ns: int) -> int:
    """Nanoseconds since the Unix epoch → FILETIME (never negative)."""
    return max(0, ns // 100 + _EPOCH_AS_FILETIME)


#: The times a store holds: signed 64-bit nanoseconds since 1970 (1677 to 2262).
_TIME_NS_MIN, _TIME_NS_MAX = -(2**63), 2**63 - 1


def from_filetime(ft: int) -> int:
    """
    FILETIME → nanoseconds since the Unix epoch, clamped to what a store
    holds (as Linux clamps times to a file system's range): FILETIMEs run
    from 1601 to 30828, a store's nanoseconds from 1677 to 2262.
    """
    return min(max((ft - _EPOCH_AS_FILETIME) * 100, _TIME_NS_MIN), _TIME_NS_MAX)


def allocation(a: Attributes) -> int:
    if a.is_dir:
        return 0
    used = max(a.used, 0)
    return (used + CLUSTER - 1) // CLUSTER * CLUSTER


def dos_attributes(a: Attributes, stored: int | None, name: bytes = b"") -> int:
    """
    FILE_ATTRIBUTE_* for an inode: the stored bits (or ARCHIVE for a file
    never given any, as a new file on Windows has), DIRECTORY from the type,
    HIDDEN for dot-files (Samba's "hide dot files"), NORMAL when nothing else.
    """
    if stored is None:
        bits = 0 if a.is_dir else c.FILE_ATTRIBUTE_ARCHIVE
    else:
        bits = stored & c.STORED_ATTRIBUTES
    if a.is_dir:
        bits |= c.FILE_ATTRIBUTE_DIRECTORY
    if name.startswith(b".") and name not in (b".", b".."):
        bits |= c.FILE_ATTRIBUTE_HIDDEN
    return bits or c.FILE_ATTRIBUTE_NORMAL


@attrs.frozen
class Stat:
    """Attributes plus what SMB adds: DOS attribute bits and the name."""

    attrs: Attributes
    dos: int
    name: str = ""
    # An AllocationSize set by the client (CREATE's AlSi, SET_INFO
    # FileAllocationInformation) beyond what the file uses (MS-FSA 2.1.5.14.1).
    reserved: int = 0
    # A ChangeTime (FILETIME) set by the client, while it stands.
    change_time: int | None = None

    @property
    def allocation(self) -> int:
        """AllocationSize: what the file uses, or what was reserved for it, if more."""
        used = allocation(self.attrs)
        if self.attrs.is_dir or self.reserved <= used:
            return used
        return (self.reserved + CLUSTER - 1) // CLUSTER * CLUSTER

    @property
    def times(self) -> tuple[int, int, int, int]:
        # to_filetime, inline (four calls per CREATE and QUERY_INFO reply otherwise).
        a = self.attrs
        e = _EPOCH_AS_FILETIME
        return (
            max(0, a.btime_ns // 100 + e),
            max(0, a.atime_ns // 100 + e),
            max(0, a.mtime_ns // 100 + e),
            max(0, a.ctime_ns // 100 + e) if self.change_time is None else self.change_time,
        )

    @property
    def eof(self) -> int:
        return 0 if self.attrs.is_dir else self.attrs.size


def file_times(st: Stat) -> FileTimes:
    return FileTimes(*st.times, st.allocation, st.eof, st.dos)


# -- directory listings ----------------------------------------------------------------

DIRECTORY_CLASSES = frozenset(
    {
        F.FileDirectoryInformation,
        F.FileFullDirectoryInformation,
        F.FileBothDirectoryInformation,
        F.FileIdBothDirectoryInformation,
        F.FileIdFullDirectoryInformation,
        F.FileNamesInformation,
    }
)


def pack_dir_entry(info_class: int, st: Stat, name: str) -> bytes:
    """One entry (NextEntryOffset zero; the caller links and pads them)."""
    raw = utf16_encode(name)[0]
    if info_class == F.FileNamesInformation:
        return struct.pack("<III", 0, 0, len(raw)) + raw
    a = st.attrs
    common = struct.pack(
        "<IIQQQQqqII",
        0,
        0,
        *st.times,
        st.eof,
        st.allocation,
        st.dos,
        len(raw),
    )
    if info_class == F.FileDirectoryInformation:
        return common + raw
    if info_class == F.FileFullDirectoryInformation:
        return common + struct.pack("<I", 0) + raw
    if info_class == F.FileIdFullDirectoryInformation:
        return common + struct.pack("<IIQ", 0, 0, a.ino) + raw
    if info_class == F.FileBothDirectoryInformation:
        return common + struct.pack("<IBB24s", 0, 0, 0, b"") + raw
    if info_class == F.FileIdBothDirectoryInformation:
        return common + struct.pack("<IBB24sHQ", 0, 0, 0, b"", 0, a.ino) + raw
    raise ProtocolError(f"not a directory information class: {info_class}")


@lru_cache(maxsize=256)
def pattern_matcher(pattern: str) -> re.Pattern[str] | None:
    """
    A compiled matcher for a QUERY_DIRECTORY search pattern (MS-FSA
    2.1.4.4), case-insensitive; None for "*" (everything). Besides C{*} and
    C{?} this honours the DOS wildcards C{<} (DOS_STAR), C{>} (DOS_QM) and
    C{"} (DOS_DOT) that Windows clients translate "*.*" and "?" into.
    """
    if pattern in ("", "*", "*.*", "<.*"):
        return None
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == ">":
            # DOS_QM: any one character, or nothing at a dot or the end.
            out.append(r"(?:[^.]|(?=\.|\Z))")
        elif ch == "<":
            # DOS_STAR: anything up to the last dot (or the end).
            out.append(r"(?:.*(?=\.[^.]*\Z)|[^.]*\Z)")
        elif ch == '"':
            # DOS_DOT: a dot, or nothing at the end.
            out.append(r"(?:\.|\Z)")
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out) + r"\Z", re.IGNORECASE | re.DOTALL)


def matches(pattern: str, name: str) -> bool:
    m = pattern_matcher(pattern)
    return m is None or m.match(name) is not None


# -- QUERY_INFO (file) -------------------------------------------------------------------


@attrs.frozen
class OpenState:
    """What per-open information classes report besides the inode."""

    access: int
    position: int
    mode: int
    delete_pending: bool
    path: str  # share-relative, backslash-separated, leading backslash


def _basic(st: Stat) -> bytes:
    return struct.pack("<QQQQII", *st.times, st.dos, 0)


def _standard(st: Stat, delete_pending: bool) -> bytes:
    a = st.attrs
    # A directory counts one link; a name pending deletion is counted out
    # already (as Windows and Samba report NumberOfLinks).
    links = 1 if a.is_dir else max(a.nlink, 1)
    if delete_pending:
        links -= 1
    return struct.pack("<qqIBBH", st.allocation, st.eof, links, delete_pending, a.is_dir, 0)


def pack_stat_info(info_class: int, st: Stat, op: OpenState, ea_size: int = 0) -> bytes:
    """
    A file information class for QUERY_INFO.

    @raise KeyError: a class this server does not produce (the caller answers
        STATUS_INVALID_INFO_CLASS, or NOT_SUPPORTED for known ones).
    """
    a = st.attrs
    if info_class == F.FileBasicInformation:
        return _basic(st)
    if info_class == F.FileStandardInformation:
        return _standard(st, op.delete_pending)
    if info_class == F.FileInternalInformation:
        return struct.pack("<Q", a.ino)
    if info_class == F.FileEaInformation:
        return struct.pack("<I", ea_size)
    if info_class == F.FileAccessInformation:
        return struct.pack("<I", op.access)
    if info_class == F.FilePositionInformation:
        return struct.pack("<Q", op.position)
    if info_class == F.FileModeInformation:
        return struct.pack("<I", op.mode)
    if info_class == F.FileAlignmentInformation:
        return struct.pack("<I", 0)
    if info_class == F.FileNameInformation:
        raw = op.path.encode("utf-16-le")
        return struct.pack("<I", len(raw)) + raw
    if info_class == F.FileNormalizedNameInformation:
        # Relative to the share's root, which itself has an empty name.
        raw = op.path.lstrip("\\").encode("utf-16-le")
        return struct.pack("<I", len(raw)) + raw
    if info_class == F.FileAllInformation:
        raw = op.path.encode("utf-16-le")
        return (
            _basic(st)
            + _standard(st, op.delete_pending)
            + struct.pack("<QIIQII", a.ino, ea_size, op.access, op.position, op.mode, 0)
            + struct.pack("<I", len(raw))
            + raw
        )
    if info_class == F.FileNetworkOpenInformation:
        return struct.pack("<QQQQqqII", *st.times, st.allocation, st.eof, st.dos, 0)
    if info_class == F.FileAttributeTagInformation:
        return struct.pack("<II", st.dos, 0)
    if info_class == F.FileStreamInformation:
        if a.is_dir:
            return b""
        name = "::$DATA".encode("utf-16-le")
        return struct.pack("<IIqq", 0, len(name), st.eof, st.allocation) + name
    if info_class == F.FileCompressionInformation:
        return struct.pack("<qHBBB3s", st.eof, 0, 0, 0, 0, b"")
    if info_class == F.FileIdInformation:
        return struct.pack("<QQQ", 0, a.ino, 0)
    raise KeyError(info_class)


# -- QUERY_INFO (file system) -------------------------------------------------------------


@attrs.frozen
class Volume:
    """What FS information classes report about a share."""

    label: str
    serial: int
    created: int  # FILETIME
    read_only: bool


def fs_info(info_class: int, vol: Volume, s: FSStat | None) -> bytes:
    """
    A file system information class. C{s} is needed for the size classes.

    @raise KeyError: a class this server does not produce.
    """
    if info_class == Fs.FileFsVolumeInformation:
        label = vol.label.encode("utf-16-le")
        return struct.pack("<QIIBB", vol.created, vol.serial, len(label), 0, 0) + label
    if info_class in (Fs.FileFsSizeInformation, Fs.FileFsFullSizeInformation):
        assert s is not None
        unit = CLUSTER
        total = s.total_bytes // unit
        avail = s.avail_bytes // unit
        free = s.free_bytes // unit
        if info_class == Fs.FileFsSizeInformation:
            return struct.pack("<QQII", total, avail, unit // SECTOR, SECTOR)
        return struct.pack("<QQQII", total, avail, free, unit // SECTOR, SECTOR)
    if info_class == Fs.FileFsDeviceInformation:
        return struct.pack("<II", c.FILE_DEVICE_DISK, 0x20 if not vol.read_only else 0x21)
    if info_class == Fs.FileFsAttributeInformation:
        name = "NTFS".encode("utf-16-le")
        # Case-preserving, case-insensitive (claudefs_gateway.smb.names).
        flags = (
            c.FILE_CASE_PRESERVED_NAMES
            | c.FILE_UNICODE_ON_DISK
            | c.FILE_PERSISTENT_ACLS
            | c.FILE_SUPPORTS_SPARSE_FILES
            | c.FILE_SUPPORTS_EXTENDED_ATTRIBUTES
            | c.FILE_SUPPORTS_HARD_LINKS
        )
        if vol.read_only:
            flags |= c.FILE_READ_ONLY_VOLUME
        return struct.pack("<III", flags, 255, len(name)) + name
    if info_class == Fs.FileFsControlInformation:
        # Quotas are the gateway's own (per uid/gid), not NTFS quotas: none to show here.
        return struct.pack("<QQQqqII", 0, 0, 0, -1, -1, 0, 0)
    if info_class == Fs.FileFsSectorSizeInformation:
        # Logical/physical sector sizes, flags: aligned and no seek penalty.
        return struct.pack("<IIIIIII", SECTOR, SECTOR, SECTOR, SECTOR, 0x3, 0, 0)
    if info_class == Fs.FileFsObjectIdInformation:
        return struct.pack("<QQ", vol.serial, 0) + b"\x00" * 48
    raise KeyError(info_class)
