# -*- test-case-name: tests.nfs.v3.test_codec -*-
"""
NFSv3 (RFC 1813) on the wire: argument decoders and result encoders.

Pure functions between bytes and the vfs's values (L{Attributes},
L{SetAttrs}). The structures every reply carries (fattr3, post_op_attr,
wcc_data) are packed with one precompiled C{struct.Struct} call each; that
is most of a GETATTR's cost. Decoders bound every length: handles at 64
bytes (NFS3_FHSIZE), names at 1024 (longer than any file system allows, so a
256..1024-byte name reaches the vfs and gets NFS3ERR_NAMETOOLONG, anything
longer is GARBAGE_ARGS), paths at 4096 and WRITE data at the record limit.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from operator import methodcaller
from typing import Any

import attrs

from claudefs_gateway.fstypes import NOW, Attributes, FileType, SetAttrs, TimeSpec
from claudefs_gateway.rpc.xdr import PADDING, Unpacker, XDRError

__all__ = [
    "NFS_PROGRAM",
    "NFS_V3",
    "FHSIZE",
    "NAME_LIMIT",
    "PATH_LIMIT",
    "fattr3",
    "post_op_attr",
    "pre_op_attr",
    "wcc_data",
    "post_op_fh",
    "status_only",
    "entry3",
    "entryplus3",
    "decode_sattr3",
    "encode_sattr3",
    "NF3",
    "ftype3",
]

NFS_PROGRAM = 100003
NFS_V3 = 3
FHSIZE = 64
NAME_LIMIT = 1024
PATH_LIMIT = 4096
COOKIEVERF = 8
CREATEVERF = 8
WRITEVERF = 8

# Procedure numbers.
NULL, GETATTR, SETATTR, LOOKUP, ACCESS, READLINK, READ, WRITE = range(8)
CREATE, MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR, RENAME, LINK = range(8, 16)
READDIR, READDIRPLUS, FSSTAT, FSINFO, PATHCONF, COMMIT = range(16, 22)

PROC_NAMES = (
    "NULL GETATTR SETATTR LOOKUP ACCESS READLINK READ WRITE CREATE MKDIR SYMLINK MKNOD "
    "REMOVE RMDIR RENAME LINK READDIR READDIRPLUS FSSTAT FSINFO PATHCONF COMMIT"
).split()

# stable_how
UNSTABLE, DATA_SYNC, FILE_SYNC = 0, 1, 2
# createmode3
UNCHECKED, GUARDED, EXCLUSIVE = 0, 1, 2
# time_how
DONT_CHANGE, SET_TO_SERVER_TIME, SET_TO_CLIENT_TIME = 0, 1, 2
# ACCESS bits
ACCESS_READ = 0x01
ACCESS_LOOKUP = 0x02
ACCESS_MODIFY = 0x04
ACCESS_EXTEND = 0x08
ACCESS_DELETE = 0x10
ACCESS_EXECUTE = 0x20
# FSINFO properties
FSF3_LINK = 0x01
FSF3_SYMLINK = 0x02
FSF3_HOMOGENEOUS = 0x08
FSF3_CANSETTIME = 0x10


class NF3:
    """ftype3."""

    REG = 1
    DIR = 2
    BLK = 3
    CHR = 4
    LNK = 5
    SOCK = 6
    FIFO = 7


_FTYPE = {
    FileType.REG: NF3.REG,
    FileType.DIR: NF3.DIR,
    FileType.BLK: NF3.BLK,
    FileType.CHR: NF3.CHR,
    FileType.LNK: NF3.LNK,
    FileType.SOCK: NF3.SOCK,
    FileType.FIFO: NF3.FIFO,
}
_FILETYPE = {v: k for k, v in _FTYPE.items()}


def ftype3(t: FileType) -> int:
    return _FTYPE[t]


def filetype(nf3: int) -> FileType:
    """@raise KeyError: not an ftype3."""
    return _FILETYPE[nf3]


_MAX32 = 0xFFFFFFFF
_NS = 1_000_000_000

# fattr3: type mode nlink uid gid size used rdev(2) fsid fileid atime(2) mtime(2) ctime(2)
_FATTR = "IIIIIQQIIQQIIIIII"
FATTR3 = struct.Struct(">" + _FATTR)
_STATUS_TRUE = struct.Struct(">II")  # status, then attributes_follow = TRUE
_PRE = struct.Struct(">IQIIII")  # pre_op_attr TRUE: size, mtime, ctime
_STATUS = struct.Struct(">I")
POST_NONE = b"\0\0\0\0"
FALSE = b"\0\0\0\0"
TRUE = b"\0\0\0\1"


def _time(ns: int) -> tuple[int, int]:
    if ns <= 0:
        return 0, 0
    s, n = divmod(ns, _NS)
    if s > _MAX32:
        return _MAX32, 999_999_999
    return s, n


_LOW_NS = _NS  # at or after 1 s past the epoch
_HIGH_NS = (_MAX32 + 1) * _NS  # before the last nfstime3 second


def _fields(a: Attributes, fsid: int) -> tuple[int, ...]:
    at, mt, ct = a.atime_ns, a.mtime_ns, a.ctime_ns
    if _LOW_NS <= at < _HIGH_NS and _LOW_NS <= mt < _HIGH_NS and _LOW_NS <= ct < _HIGH_NS:
        # Every time in nfstime3's range (the usual case): divide in line.
        at_s, at_n = divmod(at, _NS)
        mt_s, mt_n = divmod(mt, _NS)
        ct_s, ct_n = divmod(ct, _NS)
    else:
        at_s, at_n = _time(at)
        mt_s, mt_n = _time(mt)
        ct_s, ct_n = _time(ct)
    rdev = a.rdev
    nlink = a.nlink
    return (
        _FTYPE[a.type],
        a.mode & 0o7777,
        nlink if nlink <= _MAX32 else _MAX32,
        a.uid & _MAX32,
        a.gid & _MAX32,
        a.size,
        a.used,
        rdev[0] & _MAX32,
        rdev[1] & _MAX32,
        fsid,
        a.ino,
        at_s,
        at_n,
        mt_s,
        mt_n,
        ct_s,
        ct_n,
    )


# The encoded fattr3 of recently encoded Attributes, by object identity. An
# attribute-cache hit hands out the same (frozen) object call after call, so a
# client polling one file pays for its fattr3 once. Each entry keeps its
# object alive, so an id is never reused while it is in here.
_ENCODED: dict[int, tuple[Attributes, int, bytes]] = {}
_ENCODED_MAX = 4096


def fattr3(a: Attributes, fsid: int) -> bytes:
    hit = _ENCODED.get(id(a))
    if hit is not None and hit[0] is a and hit[1] == fsid:
        return hit[2]
    out = FATTR3.pack(*_fields(a, fsid))
    if len(_ENCODED) >= _ENCODED_MAX:
        _ENCODED.clear()
    _ENCODED[id(a)] = (a, fsid, out)
    return out


def post_op_attr(a: Attributes | None, fsid: int) -> bytes:
    if a is None:
        return POST_NONE
    return TRUE + fattr3(a, fsid)


def status_post_op(status: int, a: Attributes | None, fsid: int) -> bytes:
    """An nfsstat3 followed by a post_op_attr: the start of most replies."""
    if a is None:
        return _STATUS.pack(status) + POST_NONE
    return _STATUS_TRUE.pack(status, 1) + fattr3(a, fsid)


def pre_op_attr(a: Attributes | None) -> bytes:
    if a is None:
        return FALSE
    mt_s, mt_n = _time(a.mtime_ns)
    ct_s, ct_n = _time(a.ctime_ns)
    return _PRE.pack(1, a.size, mt_s, mt_n, ct_s, ct_n)


def wcc_data(before: Attributes | None, after: Attributes | None, fsid: int) -> bytes:
    return pre_op_attr(before) + post_op_attr(after, fsid)


def post_op_fh(handle: bytes | None) -> bytes:
    if handle is None:
        return FALSE
    n = len(handle)
    return TRUE + _STATUS.pack(n) + handle + PADDING[n & 3]


def fh(handle: bytes) -> bytes:
    n = len(handle)
    return _STATUS.pack(n) + handle + PADDING[n & 3]


def status_only(status: int) -> bytes:
    return _STATUS.pack(status)


# -- directory entries ---------------------------------------------------------------

# One precompiled struct per padded name length (and handle length): an
# entry3 or entryplus3 is then one pack call, its name zero-padded by the
# C{s} format, with no intermediate bytes objects per field.
_ENTRY3: dict[int, struct.Struct] = {}
_ENTRYPLUS3: dict[int, struct.Struct] = {}  # by name length << 8 | handle length


def entry3(name: bytes, fileid: int, cookie: int) -> bytes:
    """One READDIR entry3, value_follows TRUE first (RFC 1813 section 3.3.16)."""
    n = len(name)
    st = _ENTRY3.get(n)
    if st is None:
        st = _ENTRY3[n] = struct.Struct(f">IQI{n + (-n & 3)}sQ")
    return st.pack(1, fileid, n, name, cookie)


def entryplus3(name: bytes, cookie: int, a: Attributes, fsid: int, handle: bytes) -> bytes:
    """
    One READDIRPLUS entryplus3 with its attributes and handle, value_follows
    TRUE first (RFC 1813 section 3.3.17), in one C{struct} pack: the
    per-entry cost of a listing, which Ganesha pays in C.
    """
    n = len(name)
    h = len(handle)
    st = _ENTRYPLUS3.get(n << 8 | h)
    if st is None:
        st = _ENTRYPLUS3[n << 8 | h] = struct.Struct(
            f">IQI{n + (-n & 3)}sQI{_FATTR}II{h + (-h & 3)}s"
        )
    # _fields in line (no tuple and argument unpacking per entry).
    at, mt, ct = a.atime_ns, a.mtime_ns, a.ctime_ns
    if not (_LOW_NS <= at < _HIGH_NS and _LOW_NS <= mt < _HIGH_NS and _LOW_NS <= ct < _HIGH_NS):
        return st.pack(1, a.ino, n, name, cookie, 1, *_fields(a, fsid), 1, h, handle)
    rdev = a.rdev
    nlink = a.nlink
    return st.pack(
        1,
        a.ino,
        n,
        name,
        cookie,
        1,
        _FTYPE[a.type],
        a.mode & 0o7777,
        nlink if nlink <= _MAX32 else _MAX32,
        a.uid & _MAX32,
        a.gid & _MAX32,
        a.size,
        a.used,
        rdev[0] & _MAX32,
        rdev[1] & _MAX32,
        fsid,
        a.ino,
        at // _NS,
        at % _NS,
        mt // _NS,
        mt % _NS,
        ct // _NS,
        ct % _NS,
        1,
        h,
        handle,
    )


# -- argument decoders ------------------------------------------------------------


#: A procedure's lone file handle: C{u.opaque(FHSIZE)}, as an
#: C{operator.methodcaller} (GETATTR's decoder, one Python call fewer per call).
dec_fh: Callable[[Unpacker], bytes] = methodcaller("opaque", FHSIZE)


def dec_name(u: Unpacker) -> bytes:
    return u.string(NAME_LIMIT)


def dec_diropargs(u: Unpacker) -> tuple[bytes, bytes]:
    return u.opaque(FHSIZE), u.string(NAME_LIMIT)


def _dec_time(u: Unpacker) -> int:
    s = u.u32()
    n = u.u32()
    if n >= _NS:
        raise XDRError(f"nseconds {n} out of range")
    return s * _NS + n


def _dec_set_time(u: Unpacker) -> TimeSpec:
    how = u.u32()
    if how == DONT_CHANGE:
        return None
    if how == SET_TO_SERVER_TIME:
        return NOW
    if how == SET_TO_CLIENT_TIME:
        return _dec_time(u)
    raise XDRError(f"time_how {how}")


def decode_sattr3(u: Unpacker) -> SetAttrs:
    mode = u.u32() & 0o7777 if u.bool() else None
    uid = u.u32() if u.bool() else None
    gid = u.u32() if u.bool() else None
    size = u.u64() if u.bool() else None
    atime = _dec_set_time(u)
    mtime = _dec_set_time(u)
    return SetAttrs(mode=mode, uid=uid, gid=gid, size=size, atime=atime, mtime=mtime)


def encode_sattr3(s: SetAttrs) -> bytes:
    """The client side (tests)."""
    out = []
    for v in (s.mode, s.uid, s.gid):
        out.append(FALSE if v is None else TRUE + _STATUS.pack(v))
    out.append(FALSE if s.size is None else TRUE + struct.pack(">Q", s.size))
    for t in (s.atime, s.mtime):
        if t is None:
            out.append(_STATUS.pack(DONT_CHANGE))
        elif t is NOW:
            out.append(_STATUS.pack(SET_TO_SERVER_TIME))
        else:
            assert isinstance(t, int)
            out.append(struct.pack(">III", SET_TO_CLIENT_TIME, *divmod(t, _NS)))
    return b"".join(out)


@attrs.frozen(slots=True)
class SetattrArgs:
    fh: bytes
    changes: SetAttrs
    guard_ns: int | None


def dec_setattr(u: Unpacker) -> SetattrArgs:
    handle = dec_fh(u)
    changes = decode_sattr3(u)
    guard = _dec_time(u) if u.bool() else None
    return SetattrArgs(handle, changes, guard)


# The fixed fields after the handle, one precompiled Struct each.
_ACCESS_ARGS = struct.Struct(">I")  # access
_READ_ARGS = struct.Struct(">QI")  # offset, count (COMMIT's too)
_WRITE_ARGS = struct.Struct(">QII")  # offset, count, stable
_READDIR_ARGS = struct.Struct(">Q8sI")  # cookie, cookieverf, count
_READDIRPLUS_ARGS = struct.Struct(">Q8sII")  # cookie, cookieverf, dircount, maxcount


def dec_access(u: Unpacker) -> tuple[bytes, int]:
    handle, (access,) = u.opaque_struct(FHSIZE, _ACCESS_ARGS)
    return handle, access


def dec_read(u: Unpacker) -> tuple[bytes, int, int]:
    handle, (offset, count) = u.opaque_struct(FHSIZE, _READ_ARGS)
    return handle, offset, count


@attrs.frozen(slots=True)
class WriteArgs:
    """WRITE3args; C{data} is a view into the call's record."""

    fh: bytes
    offset: int
    count: int
    stable: int
    data: memoryview


def make_write_decoder(limit: int) -> Any:
    """A WRITE decoder accepting at most C{limit} bytes of data."""

    def dec_write(u: Unpacker) -> WriteArgs:
        handle, (offset, count, stable) = u.opaque_struct(FHSIZE, _WRITE_ARGS)
        if stable > FILE_SYNC:
            raise XDRError(f"stable_how {stable}")
        # A view into the record, not a copy: the data goes straight to the store.
        data = u.opaque_view(limit)
        if count > len(data):
            raise XDRError(f"WRITE count {count} exceeds the {len(data)} bytes sent")
        if count < len(data):
            data = data[:count]
        return WriteArgs(handle, offset, count, stable, data)

    return dec_write


@attrs.frozen(slots=True)
class CreateArgs:
    dir: bytes
    name: bytes
    mode: int
    attrs: SetAttrs | None
    verifier: bytes | None


def dec_create(u: Unpacker) -> CreateArgs:
    d, name = dec_diropargs(u)
    how = u.u32()
    if how in (UNCHECKED, GUARDED):
        return CreateArgs(d, name, how, decode_sattr3(u), None)
    if how == EXCLUSIVE:
        return CreateArgs(d, name, how, None, u.fixed(CREATEVERF))
    raise XDRError(f"createmode3 {how}")


def dec_mkdir(u: Unpacker) -> tuple[bytes, bytes, SetAttrs]:
    d, name = dec_diropargs(u)
    return d, name, decode_sattr3(u)


def dec_symlink(u: Unpacker) -> tuple[bytes, bytes, SetAttrs, bytes]:
    d, name = dec_diropargs(u)
    sattr = decode_sattr3(u)
    return d, name, sattr, u.string(PATH_LIMIT)


@attrs.frozen(slots=True)
class MknodArgs:
    dir: bytes
    name: bytes
    type: int
    attrs: SetAttrs | None
    rdev: tuple[int, int]


def dec_mknod(u: Unpacker) -> MknodArgs:
    d, name = dec_diropargs(u)
    t = u.u32()
    if t in (NF3.CHR, NF3.BLK):
        sattr = decode_sattr3(u)
        return MknodArgs(d, name, t, sattr, (u.u32(), u.u32()))
    if t in (NF3.SOCK, NF3.FIFO):
        return MknodArgs(d, name, t, decode_sattr3(u), (0, 0))
    # Other types carry nothing; the procedure answers NFS3ERR_BADTYPE.
    return MknodArgs(d, name, t, None, (0, 0))


def dec_rename(u: Unpacker) -> tuple[bytes, bytes, bytes, bytes]:
    fd, fname = dec_diropargs(u)
    td, tname = dec_diropargs(u)
    return fd, fname, td, tname


def dec_link(u: Unpacker) -> tuple[bytes, bytes, bytes]:
    f = dec_fh(u)
    d, name = dec_diropargs(u)
    return f, d, name


def dec_readdir(u: Unpacker) -> tuple[bytes, int, bytes, int]:
    handle, (cookie, verifier, count) = u.opaque_struct(FHSIZE, _READDIR_ARGS)
    return handle, cookie, verifier, count


def dec_readdirplus(u: Unpacker) -> tuple[bytes, int, bytes, int, int]:
    handle, (cookie, verifier, dircount, maxcount) = u.opaque_struct(FHSIZE, _READDIRPLUS_ARGS)
    return handle, cookie, verifier, dircount, maxcount


def dec_commit(u: Unpacker) -> tuple[bytes, int, int]:
    handle, (offset, count) = u.opaque_struct(FHSIZE, _READ_ARGS)
    return handle, offset, count


# -- result decoders (the client side, for tests and tools) ----------------------


@attrs.frozen(slots=True)
class Fattr:
    type: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    used: int
    rdev: tuple[int, int]
    fsid: int
    fileid: int
    atime: tuple[int, int]
    mtime: tuple[int, int]
    ctime: tuple[int, int]


def dec_fattr3(u: Unpacker) -> Fattr:
    p = u.advance(FATTR3.size)
    v = FATTR3.unpack_from(u.data, p)
    return Fattr(
        v[0],
        v[1],
        v[2],
        v[3],
        v[4],
        v[5],
        v[6],
        (v[7], v[8]),
        v[9],
        v[10],
        v[11:13],
        v[13:15],
        v[15:17],
    )


def dec_post_op_attr(u: Unpacker) -> Fattr | None:
    return dec_fattr3(u) if u.bool() else None


def dec_pre_op_attr(u: Unpacker) -> tuple[int, tuple[int, int], tuple[int, int]] | None:
    if not u.bool():
        return None
    return u.u64(), (u.u32(), u.u32()), (u.u32(), u.u32())


def dec_wcc(u: Unpacker) -> tuple[Any, Fattr | None]:
    return dec_pre_op_attr(u), dec_post_op_attr(u)


def dec_post_op_fh(u: Unpacker) -> bytes | None:
    return u.opaque(FHSIZE) if u.bool() else None
