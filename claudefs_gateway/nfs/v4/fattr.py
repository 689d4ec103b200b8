# -*- test-case-name: tests.nfs.v4.test_fattr -*-
"""
NFSv4 attributes (RFC 8881 §5): bitmaps, fattr4 encoding from the vfs's
L{Attributes}, and the settable attributes SETATTR, CREATE and OPEN bring.

An attribute is supported when the gateway can give it a true value; the
others are left out of C{supported_attrs} and of every reply, and setting
or verifying one answers NFS4ERR_ATTRNOTSUPP (RFC 8881 §5.1). Values come
from the store: C{change} is the backend's change counter, C{fileid} the
inode number, times are nanoseconds. Owners are numeric strings ("1000"),
or with C{nfs.v4.only_numeric_owners: false} C{user@domain} from the user
database; the Linux client without an idmapper (the default for AUTH_SYS)
wants numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import attrs

from claudefs_gateway.fstypes import (
    MAX_FILE_SIZE,
    NAME_MAX,
    NOW,
    Attributes,
    FileType,
    FSStat,
    SetAttrs,
)
from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4.base import Nfs4Error, split_ns, time_ns
from claudefs_gateway.nfs.v4.codec import Fattr
from claudefs_gateway.rpc.xdr import Packer, Unpacker, XDRError

__all__ = [
    "SUPPORTED",
    "SUPPORTED_BITMAP",
    "WRITABLE",
    "EXCLCREAT",
    "Source",
    "ServerInfo",
    "bitmap",
    "bits",
    "encode",
    "decode_settable",
    "Settable",
    "NEEDS_STATFS",
    "ftype4",
]

FTYPE4 = {
    FileType.REG: c.NF4REG,
    FileType.DIR: c.NF4DIR,
    FileType.BLK: c.NF4BLK,
    FileType.CHR: c.NF4CHR,
    FileType.LNK: c.NF4LNK,
    FileType.SOCK: c.NF4SOCK,
    FileType.FIFO: c.NF4FIFO,
}


def ftype4(t: FileType) -> int:
    return FTYPE4[t]


def bits(bitmap: Iterable[int]) -> list[int]:
    """The attribute numbers a bitmap4 holds, ascending."""
    out = []
    for word, v in enumerate(bitmap):
        base = word * 32
        while v:
            low = v & -v
            out.append(base + low.bit_length() - 1)
            v ^= low
    return out


def bitmap(numbers: Iterable[int]) -> list[int]:
    """A bitmap4 of attribute numbers (no trailing zero words)."""
    words: list[int] = []
    for n in numbers:
        w, b = divmod(n, 32)
        while len(words) <= w:
            words.append(0)
        words[w] |= 1 << b
    while words and not words[-1]:
        words.pop()
    return words


WRITE_ONLY = frozenset(
    {
        c.FATTR4_TIME_ACCESS_SET,
        c.FATTR4_TIME_MODIFY_SET,
        c.FATTR4_MODE_SET_MASKED,
        c.FATTR4_MODE_UMASK,
    }
)
WRITABLE = frozenset(
    {
        c.FATTR4_SIZE,
        c.FATTR4_MODE,
        c.FATTR4_OWNER,
        c.FATTR4_OWNER_GROUP,
        c.FATTR4_TIME_ACCESS_SET,
        c.FATTR4_TIME_CREATE,
        c.FATTR4_TIME_MODIFY_SET,
        c.FATTR4_MODE_SET_MASKED,
        c.FATTR4_MODE_UMASK,
    }
)
#: Settable with an EXCLUSIVE4_1 create (RFC 8881 §5.8.1.14): the verifier
#: is kept in an extended attribute, not in the times, so all of them.
EXCLCREAT = WRITABLE
#: Attributes whose values need the store's statfs.
NEEDS_STATFS = frozenset(
    {
        c.FATTR4_FILES_AVAIL,
        c.FATTR4_FILES_FREE,
        c.FATTR4_FILES_TOTAL,
        c.FATTR4_SPACE_AVAIL,
        c.FATTR4_SPACE_FREE,
        c.FATTR4_SPACE_TOTAL,
    }
)


@attrs.define(slots=True)
class ServerInfo:
    """What attributes say about the server rather than one file."""

    lease_time: int
    maxread: int
    maxwrite: int
    uid_name: Callable[[int], bytes]
    gid_name: Callable[[int], bytes]


@attrs.define(slots=True)
class Source:
    """
    One object's attributes and what else its fattr4 needs.

    @ivar fh: its file handle (attribute C{filehandle}).
    @ivar fsid: (major, minor) of the file system it is on: each export is
        one, the pseudo-filesystem another.
    @ivar mounted_on: C{mounted_on_fileid}: the fileid of the pseudo
        directory an export's root is reached through, else its own fileid.
    @ivar stat: the store's statfs, when a space or files attribute is asked for.
    """

    a: Attributes
    fh: bytes
    fsid: tuple[int, int]
    mounted_on: int
    stat: FSStat | None = None
    rdattr_error: int = 0


def _time(p: Packer, ns: int) -> None:
    s, n = split_ns(ns)
    p.i64(s)
    p.u32(n)


def _bitmap(p: Packer, words: list[int]) -> None:
    p.u32(len(words))
    for w in words:
        p.u32(w)


def _pair64(p: Packer, v: tuple[int, int]) -> None:
    p.u64(v[0])
    p.u64(v[1])


def _pair32(p: Packer, v: tuple[int, int]) -> None:
    p.u32(v[0])
    p.u32(v[1])


_NO_STAT = FSStat(0, 0, 0, 0, 0, 0)

Encoder = Callable[[Packer, Source, ServerInfo], None]

_ENCODERS: dict[int, Encoder] = {
    c.FATTR4_SUPPORTED_ATTRS: lambda p, s, i: _bitmap(p, SUPPORTED_BITMAP),
    c.FATTR4_TYPE: lambda p, s, i: p.u32(FTYPE4[s.a.type]),
    c.FATTR4_FH_EXPIRE_TYPE: lambda p, s, i: p.u32(c.FH4_PERSISTENT),
    c.FATTR4_CHANGE: lambda p, s, i: p.u64(s.a.change),
    c.FATTR4_SIZE: lambda p, s, i: p.u64(s.a.size),
    c.FATTR4_LINK_SUPPORT: lambda p, s, i: p.bool(True),
    c.FATTR4_SYMLINK_SUPPORT: lambda p, s, i: p.bool(True),
    c.FATTR4_NAMED_ATTR: lambda p, s, i: p.bool(False),
    c.FATTR4_FSID: lambda p, s, i: _pair64(p, s.fsid),
    c.FATTR4_UNIQUE_HANDLES: lambda p, s, i: p.bool(True),
    c.FATTR4_LEASE_TIME: lambda p, s, i: p.u32(i.lease_time),
    c.FATTR4_RDATTR_ERROR: lambda p, s, i: p.u32(s.rdattr_error),
    c.FATTR4_ACLSUPPORT: lambda p, s, i: p.u32(0),
    c.FATTR4_CANSETTIME: lambda p, s, i: p.bool(True),
    c.FATTR4_CASE_INSENSITIVE: lambda p, s, i: p.bool(False),
    c.FATTR4_CASE_PRESERVING: lambda p, s, i: p.bool(True),
    c.FATTR4_CHOWN_RESTRICTED: lambda p, s, i: p.bool(True),
    c.FATTR4_FILEHANDLE: lambda p, s, i: p.opaque(s.fh),
    c.FATTR4_FILEID: lambda p, s, i: p.u64(s.a.ino),
    c.FATTR4_FILES_AVAIL: lambda p, s, i: p.u64((s.stat or _NO_STAT).avail_files),
    c.FATTR4_FILES_FREE: lambda p, s, i: p.u64((s.stat or _NO_STAT).free_files),
    c.FATTR4_FILES_TOTAL: lambda p, s, i: p.u64((s.stat or _NO_STAT).total_files),
    c.FATTR4_HOMOGENEOUS: lambda p, s, i: p.bool(True),
    c.FATTR4_MAXFILESIZE: lambda p, s, i: p.u64(MAX_FILE_SIZE),
    c.FATTR4_MAXLINK: lambda p, s, i: p.u32(65000),
    c.FATTR4_MAXNAME: lambda p, s, i: p.u32(NAME_MAX),
    c.FATTR4_MAXREAD: lambda p, s, i: p.u64(i.maxread),
    c.FATTR4_MAXWRITE: lambda p, s, i: p.u64(i.maxwrite),
    c.FATTR4_MODE: lambda p, s, i: p.u32(s.a.mode & 0o7777),
    c.FATTR4_NO_TRUNC: lambda p, s, i: p.bool(True),
    c.FATTR4_NUMLINKS: lambda p, s, i: p.u32(s.a.nlink),
    c.FATTR4_OWNER: lambda p, s, i: p.opaque(i.uid_name(s.a.uid)),
    c.FATTR4_OWNER_GROUP: lambda p, s, i: p.opaque(i.gid_name(s.a.gid)),
    c.FATTR4_RAWDEV: lambda p, s, i: _pair32(p, s.a.rdev),
    c.FATTR4_SPACE_AVAIL: lambda p, s, i: p.u64((s.stat or _NO_STAT).avail_bytes),
    c.FATTR4_SPACE_FREE: lambda p, s, i: p.u64((s.stat or _NO_STAT).free_bytes),
    c.FATTR4_SPACE_TOTAL: lambda p, s, i: p.u64((s.stat or _NO_STAT).total_bytes),
    c.FATTR4_SPACE_USED: lambda p, s, i: p.u64(s.a.used),
    c.FATTR4_TIME_ACCESS: lambda p, s, i: _time(p, s.a.atime_ns),
    c.FATTR4_TIME_CREATE: lambda p, s, i: _time(p, s.a.btime_ns),
    c.FATTR4_TIME_DELTA: lambda p, s, i: _time(p, 1),
    c.FATTR4_TIME_METADATA: lambda p, s, i: _time(p, s.a.ctime_ns),
    c.FATTR4_TIME_MODIFY: lambda p, s, i: _time(p, s.a.mtime_ns),
    c.FATTR4_MOUNTED_ON_FILEID: lambda p, s, i: p.u64(s.mounted_on),
    c.FATTR4_SUPPATTR_EXCLCREAT: lambda p, s, i: _bitmap(p, EXCLCREAT_BITMAP),
    c.FATTR4_FS_CHARSET_CAP: lambda p, s, i: p.u32(1),  # FSCHARSET_CAP4_CONTAINS_NON_UTF8
    c.FATTR4_CLONE_BLKSIZE: lambda p, s, i: p.u32(0),
    c.FATTR4_CHANGE_ATTR_TYPE: lambda p, s, i: p.u32(c.NFS4_CHANGE_TYPE_IS_MONOTONIC_INCR),
    c.FATTR4_XATTR_SUPPORT: lambda p, s, i: p.bool(True),
}

#: Readable attributes (those with an encoder) and the write-only ones.
SUPPORTED = frozenset(_ENCODERS) | WRITE_ONLY
SUPPORTED_BITMAP: list[int] = bitmap(SUPPORTED)
EXCLCREAT_BITMAP: list[int] = bitmap(EXCLCREAT)

# Encoders in bit order per requested bitmap, cached (clients ask for a few
# fixed sets over and over).
_PLANS: dict[tuple[int, ...], tuple[list[int], list[Encoder]]] = {}
_PLAN_CACHE = 256


def plan(request: list[int]) -> tuple[list[int], list[Encoder]]:
    """The readable attributes of a request (bitmap) and their encoders."""
    key = tuple(request)
    got = _PLANS.get(key)
    if got is None:
        nums = [n for n in bits(request) if n in _ENCODERS]
        got = (bitmap(nums), [_ENCODERS[n] for n in nums])
        if len(_PLANS) >= _PLAN_CACHE:
            _PLANS.clear()
        _PLANS[key] = got
    return got


def encode(request: list[int], src: Source, info: ServerInfo) -> Fattr:
    """fattr4 with every readable, supported attribute C{request} names."""
    mask, encoders = plan(request)
    p = Packer()
    for enc in encoders:
        enc(p, src, info)
    return Fattr(mask, p.bytes())


def wants_statfs(request: list[int]) -> bool:
    return any(n in NEEDS_STATFS for n in bits(request))


@attrs.define(slots=True)
class Settable:
    """
    Attributes a client asks to set, decoded and checked.

    @ivar changes: what the vfs should apply (mode, owner, size, times).
    @ivar mask: the attributes given (SETATTR's C{attrsset} when it succeeds).
    @ivar mode_masked: (value, mask) of C{mode_set_masked}, applied against
        the current mode.
    @ivar umask: C{mode_umask}'s umask (applied to the mode at creation).
    """

    changes: SetAttrs
    mask: list[int]
    mode_masked: tuple[int, int] | None = None
    umask: int | None = None


def _settime(u: Unpacker, now_ok: bool = True) -> Any:
    how = u.u32()
    if how == c.SET_TO_SERVER_TIME4:
        return NOW
    if how == c.SET_TO_CLIENT_TIME4:
        return time_ns(u.i64(), u.u32())
    raise XDRError(f"time_how4 {how}")


def _owner(raw: bytes, lookup: Callable[[str], int | None]) -> int:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Nfs4Error(c.NFS4ERR_BADOWNER, "owner is not UTF-8") from None
    got = lookup(text)
    if got is None:
        raise Nfs4Error(c.NFS4ERR_BADOWNER, "unknown owner")
    return got


def decode_settable(
    f: Fattr,
    uid_of: Callable[[str], int | None],
    gid_of: Callable[[str], int | None],
    allowed: frozenset[int] = WRITABLE,
) -> Settable:
    """
    The attributes of a SETATTR (or CREATE, or OPEN's create) as vfs changes.

    @raise Nfs4Error: NFS4ERR_ATTRNOTSUPP for an attribute not supported,
        NFS4ERR_INVAL for one that cannot be set (or not here: C{allowed}),
        NFS4ERR_BADXDR for values that do not decode, NFS4ERR_BADOWNER for
        an owner the user database does not know.
    """
    nums = bits(f.mask)
    for n in nums:
        if n not in SUPPORTED:
            raise Nfs4Error(c.NFS4ERR_ATTRNOTSUPP, f"attribute {n} not supported")
    for n in nums:
        if n not in allowed:
            raise Nfs4Error(c.NFS4ERR_INVAL, f"attribute {n} cannot be set")
    u = Unpacker(f.vals)
    mode = uid = gid = size = None
    atime: Any = None
    mtime: Any = None
    btime: Any = None
    masked = None
    umask = None
    try:
        for n in nums:
            if n == c.FATTR4_SIZE:
                size = u.u64()
            elif n == c.FATTR4_MODE:
                mode = u.u32() & 0o7777
            elif n == c.FATTR4_OWNER:
                uid = _owner(u.opaque(1024), uid_of)
            elif n == c.FATTR4_OWNER_GROUP:
                gid = _owner(u.opaque(1024), gid_of)
            elif n == c.FATTR4_TIME_ACCESS_SET:
                atime = _settime(u)
            elif n == c.FATTR4_TIME_CREATE:
                btime = time_ns(u.i64(), u.u32())
            elif n == c.FATTR4_TIME_MODIFY_SET:
                mtime = _settime(u)
            elif n == c.FATTR4_MODE_SET_MASKED:
                masked = (u.u32() & 0o7777, u.u32() & 0o7777)
            elif n == c.FATTR4_MODE_UMASK:
                mode = u.u32() & 0o7777
                umask = u.u32() & 0o7777
        u.done()
    except XDRError as e:
        raise Nfs4Error(c.NFS4ERR_BADXDR, str(e)) from None
    if size is not None and size > MAX_FILE_SIZE:
        raise Nfs4Error(c.NFS4ERR_FBIG, "size too large")
    return Settable(
        SetAttrs(mode=mode, uid=uid, gid=gid, size=size, atime=atime, mtime=mtime, btime=btime),
        bitmap(nums),
        masked,
        umask,
    )


def check_verify(f: Fattr) -> None:
    """
    The attributes of a VERIFY or NVERIFY may be compared (RFC 8881 §18.15.3):
    NFS4ERR_ATTRNOTSUPP for an unsupported one, NFS4ERR_INVAL for one that
    cannot be read (write-only, or C{rdattr_error}).
    """
    for n in bits(f.mask):
        if n not in SUPPORTED:
            raise Nfs4Error(c.NFS4ERR_ATTRNOTSUPP, f"attribute {n} not supported")
        if n in WRITE_ONLY or n == c.FATTR4_RDATTR_ERROR:
            raise Nfs4Error(c.NFS4ERR_INVAL, f"attribute {n} cannot be verified")
