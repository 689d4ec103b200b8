# -*- test-case-name: tests.backend.test_contract -*-
"""
An in-memory backend: the reference for the backend contract.

Simple on purpose - plain dicts, no concurrency, no durability - so that it
can serve as the model the embedded store is checked against
(C{tests/backend/test_statemachine.py}) and as a fast fake for front-end tests.
File data is kept sparse (64 KiB chunks), so a write at a huge offset costs
nothing.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer

from zope.interface import implementer

from claudefs_gateway import errors
from claudefs_gateway.fstypes import (
    MAX_FILE_SIZE,
    NAME_MAX,
    NOW,
    XATTR_NAME_MAX,
    XATTR_SIZE_MAX,
    Attributes,
    DirEntry,
    DirPage,
    FileType,
    FSStat,
    PutResult,
    QuotaLimits,
    RenameResult,
    SetAttrs,
    Usage,
    WriteResult,
)
from claudefs_gateway.interfaces import IBackend

__all__ = ["MemoryBackend", "check_name", "MAX_LINKS", "SYMLINK_MAX"]

CHUNK = 64 * 1024
MAX_LINKS = 65000
SYMLINK_MAX = 4096
DIR_SIZE = 4096
ROOT_INO = 1


def check_name(name: bytes) -> None:
    """The backend contract's rules for a name. @raise Inval, NameTooLong."""
    if not name or name in (b".", b"..") or b"/" in name or b"\x00" in name:
        raise errors.Inval("invalid name")
    if len(name) > NAME_MAX:
        raise errors.NameTooLong("name too long")


@attrs.define
class _Inode:
    ino: int
    gen: int
    type: FileType
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: tuple[int, int]
    atime: int
    mtime: int
    ctime: int
    btime: int
    change: int = 1
    size: int = 0
    chunks: dict[int, bytearray] = attrs.Factory(dict)
    entries: dict[bytes, tuple[int, int]] = attrs.Factory(dict)  # name -> (ino, cookie)
    parent: int = 0
    target: bytes = b""
    xattrs: dict[bytes, bytes] = attrs.Factory(dict)

    def attributes(self) -> Attributes:
        if self.type is FileType.DIR:
            size = DIR_SIZE
        elif self.type is FileType.LNK:
            size = len(self.target)
        else:
            size = self.size
        used = (
            len(self.chunks) * CHUNK
            if self.type is FileType.REG
            else (DIR_SIZE if self.type is FileType.DIR else 0)
        )
        return Attributes(
            ino=self.ino,
            gen=self.gen,
            type=self.type,
            mode=self.mode,
            nlink=self.nlink,
            uid=self.uid,
            gid=self.gid,
            size=size,
            used=min(used, max(size, 0)) if self.type is FileType.REG else used,
            rdev=self.rdev,
            atime_ns=self.atime,
            mtime_ns=self.mtime,
            ctime_ns=self.ctime,
            btime_ns=self.btime,
            change=self.change,
        )


def _wrap(f: Callable[..., Any]) -> Callable[..., defer.Deferred[Any]]:
    """Run a synchronous method and return its result or FSError as a Deferred."""

    def method(self: MemoryBackend, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        try:
            return defer.succeed(f(self, *args, **kwargs))
        except errors.FSError:
            return defer.fail()

    method.__name__ = f.__name__
    method.__doc__ = f.__doc__
    return method


@implementer(IBackend)
class MemoryBackend:
    """
    @param now_ns: the clock, in nanoseconds (tests inject a fixed one).
    @param capacity: bytes the fake device holds, for statfs.
    """

    #: Nothing here is on disk: every write is as durable as a rename
    #: (L{IMetadataService.rename}).
    renames_sync_data = True

    def __init__(
        self,
        now_ns: Callable[[], int] = time.time_ns,
        capacity: int = 1 << 40,
        total_files: int = 1 << 32,
    ) -> None:
        self._now = now_ns
        self.capacity = capacity
        self.total_files = total_files
        self.instance_id = os.urandom(8)
        self._inodes: dict[int, _Inode] = {}
        self._next_ino = ROOT_INO
        self._next_cookie = 3
        self._usage: dict[tuple[str, int], list[int]] = {}
        self._quotas: dict[tuple[str, int], QuotaLimits] = {}
        self._state: dict[str, bytes] = {}
        self._make(FileType.DIR, 0o755, 0, 0, (0, 0), parent=ROOT_INO)

    # -- lifecycle ------------------------------------------------------------

    def open(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def close(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    # -- helpers ----------------------------------------------------------------

    def _make(
        self, type: FileType, mode: int, uid: int, gid: int, rdev: tuple[int, int], parent: int = 0
    ) -> _Inode:
        now = self._now()
        ino = self._next_ino
        self._next_ino += 1
        node = _Inode(
            ino=ino,
            gen=1,
            type=type,
            mode=mode & 0o7777,
            nlink=2 if type is FileType.DIR else 1,
            uid=uid,
            gid=gid,
            rdev=rdev,
            atime=now,
            mtime=now,
            ctime=now,
            btime=now,
            parent=parent,
        )
        self._inodes[ino] = node
        self._account(node, inodes=1)
        return node

    def _account(self, node: _Inode, inodes: int = 0, size: int = 0) -> None:
        for key in (("user", node.uid), ("group", node.gid)):
            u = self._usage.setdefault(key, [0, 0])
            u[0] += size
            u[1] += inodes
            if u == [0, 0]:
                del self._usage[key]

    def _get(self, ino: int) -> _Inode:
        node = self._inodes.get(ino)
        if node is None:
            raise errors.NotFound(f"inode {ino}")
        return node

    def _dir(self, ino: int) -> _Inode:
        node = self._get(ino)
        if node.type is not FileType.DIR:
            raise errors.NotDir(f"inode {ino}")
        return node

    def _touch(self, node: _Inode, mtime: bool = True) -> None:
        now = self._now()
        node.ctime = now
        if mtime:
            node.mtime = now
        node.change += 1

    def _add_entry(self, parent: _Inode, name: bytes, ino: int) -> None:
        parent.entries[name] = (ino, self._next_cookie)
        self._next_cookie += 1
        self._touch(parent)

    def _drop(self, node: _Inode) -> None:
        """The last link went: free the inode."""
        self._account(node, inodes=-1, size=-node.size if node.type is FileType.REG else 0)
        del self._inodes[node.ino]

    # -- metadata ---------------------------------------------------------------

    @_wrap
    def root(self) -> Attributes:
        return self._get(ROOT_INO).attributes()

    @_wrap
    def getattr(self, ino: int) -> Attributes:
        return self._get(ino).attributes()

    @_wrap
    def lookup(self, parent: int, name: bytes) -> Attributes:
        d = self._dir(parent)
        if name == b".":
            return d.attributes()
        if name == b"..":
            return self._get(d.parent).attributes()
        entry = d.entries.get(name)
        if entry is None:
            raise errors.NotFound("no such name")
        return self._get(entry[0]).attributes()

    @_wrap
    def create(
        self,
        parent: int,
        name: bytes,
        type: FileType,
        mode: int,
        uid: int,
        gid: int,
        rdev: tuple[int, int] = (0, 0),
        durable: bool = True,
    ) -> Attributes:
        d = self._dir(parent)
        check_name(name)
        if type is FileType.LNK:
            raise errors.Inval("use symlink")
        if name in d.entries:
            raise errors.Exists("name exists")
        node = self._make(
            type,
            mode,
            uid,
            gid,
            rdev if type in (FileType.BLK, FileType.CHR) else (0, 0),
            parent=parent if type is FileType.DIR else 0,
        )
        if type is FileType.DIR:
            d.nlink += 1
        self._add_entry(d, name, node.ino)
        return node.attributes()

    @_wrap
    def symlink(
        self, parent: int, name: bytes, target: bytes, mode: int, uid: int, gid: int
    ) -> Attributes:
        d = self._dir(parent)
        check_name(name)
        if not target or len(target) > SYMLINK_MAX or b"\x00" in target:
            raise errors.Inval("bad symlink target")
        if name in d.entries:
            raise errors.Exists("name exists")
        node = self._make(FileType.LNK, mode, uid, gid, (0, 0))
        node.target = bytes(target)
        self._add_entry(d, name, node.ino)
        return node.attributes()

    @_wrap
    def link(self, ino: int, parent: int, name: bytes) -> Attributes:
        node = self._get(ino)
        d = self._dir(parent)
        check_name(name)
        if node.type is FileType.DIR:
            raise errors.Perm("hard link to a directory")
        if name in d.entries:
            raise errors.Exists("name exists")
        if node.nlink >= MAX_LINKS:
            raise errors.MLink("too many links")
        node.nlink += 1
        self._touch(node, mtime=False)
        self._add_entry(d, name, ino)
        return node.attributes()

    def _entry(self, d: _Inode, name: bytes) -> _Inode:
        check_name(name)
        entry = d.entries.get(name)
        if entry is None:
            raise errors.NotFound("no such name")
        return self._get(entry[0])

    @_wrap
    def unlink(self, parent: int, name: bytes, durable: bool = True) -> Attributes:
        d = self._dir(parent)
        node = self._entry(d, name)
        if node.type is FileType.DIR:
            raise errors.IsDir("is a directory")
        del d.entries[name]
        self._touch(d)
        node.nlink -= 1
        self._touch(node, mtime=False)
        after = node.attributes()
        if node.nlink == 0:
            self._drop(node)
        return after

    @_wrap
    def rmdir(self, parent: int, name: bytes, durable: bool = True) -> Attributes:
        d = self._dir(parent)
        node = self._entry(d, name)
        if node.type is not FileType.DIR:
            raise errors.NotDir("not a directory")
        if node.entries:
            raise errors.NotEmpty("directory not empty")
        del d.entries[name]
        d.nlink -= 1
        self._touch(d)
        node.nlink = 0
        after = node.attributes()
        self._drop(node)
        return after

    def _is_ancestor(self, ancestor: int, ino: int) -> bool:
        while True:
            if ino == ancestor:
                return True
            if ino == ROOT_INO:
                return False
            ino = self._inodes[ino].parent

    @_wrap
    def rename(
        self,
        src_parent: int,
        src_name: bytes,
        dst_parent: int,
        dst_name: bytes,
        durable: bool = True,
    ) -> RenameResult:
        sd = self._dir(src_parent)
        dd = self._dir(dst_parent)
        node = self._entry(sd, src_name)
        check_name(dst_name)
        existing = dd.entries.get(dst_name)
        if existing is not None and existing[0] == node.ino:
            return RenameResult(node.attributes(), None)
        if node.type is FileType.DIR and self._is_ancestor(node.ino, dst_parent):
            raise errors.Inval("rename into own subtree")
        replaced: _Inode | None = None
        if existing is not None:
            replaced = self._get(existing[0])
            if node.type is FileType.DIR:
                if replaced.type is not FileType.DIR:
                    raise errors.NotDir("directory over non-directory")
                if replaced.entries:
                    raise errors.NotEmpty("destination not empty")
            elif replaced.type is FileType.DIR:
                raise errors.IsDir("non-directory over directory")
        # Commit point: everything below cannot fail.
        del sd.entries[src_name]
        self._touch(sd)
        replaced_after = None
        if replaced is not None:
            del dd.entries[dst_name]
            if replaced.type is FileType.DIR:
                dd.nlink -= 1
                replaced.nlink = 0
            else:
                replaced.nlink -= 1
            self._touch(replaced, mtime=False)
            replaced_after = replaced.attributes()
            if replaced.nlink == 0:
                self._drop(replaced)
        self._add_entry(dd, dst_name, node.ino)
        if node.type is FileType.DIR and src_parent != dst_parent:
            sd.nlink -= 1
            dd.nlink += 1
            node.parent = dst_parent
        self._touch(node, mtime=False)
        return RenameResult(node.attributes(), replaced_after)

    @_wrap
    def put_file(
        self,
        parent: int,
        name: bytes,
        mode: int,
        uid: int,
        gid: int,
        data: bytes,
        xattrs: tuple[tuple[bytes, bytes], ...],
        mtime_ns: int,
        dirs: tuple[tuple[bytes, int, int, int, tuple[tuple[bytes, bytes], ...]], ...] = (),
    ) -> PutResult:
        """
        A new regular file with C{data} and C{xattrs}, modified at
        C{mtime_ns}, put over C{name} (a regular file there is replaced),
        in the directories C{dirs} made first, in one step:
        L{claudefs_gateway.backend.embedded.EmbeddedBackend.put_file}.
        Everything is checked before anything changes.
        """
        d = self._dir(parent)
        check_name(name)
        for xname, value in xattrs + tuple(x for dd in dirs for x in dd[4]):
            self._check_xattr_name(xname)
            if len(value) > XATTR_SIZE_MAX:
                raise errors.Range("xattr value too large")
        if len(data) > MAX_FILE_SIZE:
            raise errors.FBig("file too large")
        replaced: _Inode | None = None
        if dirs:
            check_name(dirs[0][0])
            for dname, *_ in dirs[1:]:
                check_name(dname)
            if dirs[0][0] in d.entries:
                raise errors.Exists("name exists")
        else:
            existing = d.entries.get(name)
            if existing is not None:
                replaced = self._get(existing[0])
                if replaced.type is FileType.DIR:
                    raise errors.IsDir("non-directory over directory")
        made: list[_Inode] = []
        for dname, dmode, duid, dgid, dxattrs in dirs:
            sub = self._make(FileType.DIR, dmode, duid, dgid, (0, 0), parent=d.ino)
            sub.xattrs = {bytes(n): bytes(v) for n, v in dxattrs}
            d.nlink += 1
            self._add_entry(d, dname, sub.ino)
            made.append(sub)
            d = sub
        node = self._make(FileType.REG, mode, uid, gid, (0, 0))
        for pos in range(0, len(data), CHUNK):
            piece = data[pos : pos + CHUNK]
            chunk = node.chunks[pos // CHUNK] = bytearray(CHUNK)
            chunk[: len(piece)] = piece
        if data:
            node.size = len(data)
            self._account(node, size=len(data))
        node.xattrs = {bytes(n): bytes(v) for n, v in xattrs}
        node.mtime = node.atime = mtime_ns
        replaced_after = None
        if replaced is not None:
            del d.entries[name]
            replaced.nlink -= 1
            self._touch(replaced, mtime=False)
            replaced_after = replaced.attributes()
            if replaced.nlink == 0:
                self._drop(replaced)
        self._add_entry(d, name, node.ino)
        return PutResult(node.attributes(), replaced_after, tuple(n.attributes() for n in made))

    def _resolve_time(self, t: Any, now: int) -> int:
        return now if t is NOW else int(t)

    @_wrap
    def setattr(
        self,
        ino: int,
        changes: SetAttrs,
        guard_ctime_ns: int | None = None,
        durable: bool = True,
    ) -> Attributes:
        node = self._get(ino)
        if guard_ctime_ns is not None and guard_ctime_ns != node.ctime:
            raise errors.Inval("ctime guard mismatch")
        if changes.size is not None:
            if node.type is FileType.DIR:
                raise errors.IsDir("size of a directory")
            if node.type is not FileType.REG:
                raise errors.Inval("size of a non-regular file")
            if not 0 <= changes.size <= MAX_FILE_SIZE:
                raise errors.FBig("size too large")
            if changes.size == node.size and changes == SetAttrs(size=changes.size):
                # Truncating to the current size alone changes nothing (POSIX
                # ftruncate; RFC 5661 18.30.4): every backend answers the same.
                return node.attributes()
        now = self._now()
        if changes.uid is not None or changes.gid is not None:
            size = node.size if node.type is FileType.REG else 0
            self._account(node, inodes=-1, size=-size)
            if changes.uid is not None:
                node.uid = changes.uid
            if changes.gid is not None:
                node.gid = changes.gid
            self._account(node, inodes=1, size=size)
        if changes.mode is not None:
            node.mode = changes.mode & 0o7777
        if changes.size is not None and changes.size != node.size:
            self._truncate(node, changes.size)
            node.mtime = now
        elif changes.size is not None:
            node.mtime = now
        if changes.atime is not None:
            node.atime = self._resolve_time(changes.atime, now)
        if changes.mtime is not None:
            node.mtime = self._resolve_time(changes.mtime, now)
        if changes.btime is not None:
            node.btime = self._resolve_time(changes.btime, now)
        node.ctime = now
        node.change += 1
        return node.attributes()

    def _truncate(self, node: _Inode, size: int) -> None:
        self._account(node, size=size - node.size)
        if size < node.size:
            for idx in [i for i in node.chunks if i * CHUNK >= size]:
                del node.chunks[idx]
            last = size // CHUNK
            if last in node.chunks:
                keep = size - last * CHUNK
                chunk = node.chunks[last]
                chunk[keep:] = bytes(len(chunk) - keep)
        node.size = size

    @_wrap
    def readdir(
        self, dir: int, cookie: int, verifier: bytes, count: int, with_attrs: bool = False
    ) -> DirPage:
        d = self._dir(dir)
        verf = struct.pack(">Q", d.ino ^ int.from_bytes(self.instance_id, "big"))
        if cookie != 0 and verifier != verf:
            raise errors.BadCookie("cookie verifier mismatch")
        if cookie in (1, 2):
            raise errors.BadCookie("cookie reserved for . and ..")
        ordered = sorted((c, name, ino) for name, (ino, c) in d.entries.items() if c > cookie)
        page = ordered[: max(count, 0)]
        entries = []
        for c, name, ino in page:
            node = self._inodes[ino]
            entries.append(
                DirEntry(name, ino, node.type, c, node.attributes() if with_attrs else None)
            )
        return DirPage(tuple(entries), verf, eof=len(page) == len(ordered))

    @_wrap
    def readlink(self, ino: int) -> bytes:
        node = self._get(ino)
        if node.type is not FileType.LNK:
            raise errors.Inval("not a symlink")
        return node.target

    @_wrap
    def statfs(self) -> FSStat:
        used = sum(n.size for n in self._inodes.values() if n.type is FileType.REG)
        free = max(self.capacity - used, 0)
        files_free = max(self.total_files - len(self._inodes), 0)
        return FSStat(self.capacity, free, free, self.total_files, files_free, files_free)

    def _check_xattr_name(self, name: bytes) -> None:
        if not name or b"\x00" in name:
            raise errors.Inval("bad xattr name")
        if len(name) > XATTR_NAME_MAX:
            raise errors.Range("xattr name too long")

    @_wrap
    def getxattr(self, ino: int, name: bytes) -> bytes:
        node = self._get(ino)
        self._check_xattr_name(name)
        try:
            return node.xattrs[name]
        except KeyError:
            raise errors.NoData("no such xattr") from None

    @_wrap
    def setxattr(
        self,
        ino: int,
        name: bytes,
        value: bytes,
        create: bool | None = None,
        durable: bool = True,
    ) -> None:
        node = self._get(ino)
        self._check_xattr_name(name)
        if len(value) > XATTR_SIZE_MAX:
            raise errors.Range("xattr value too large")
        if create is True and name in node.xattrs:
            raise errors.Exists("xattr exists")
        if create is False and name not in node.xattrs:
            raise errors.NoData("no such xattr")
        node.xattrs[name] = bytes(value)
        self._touch(node, mtime=False)

    @_wrap
    def listxattr(self, ino: int) -> list[bytes]:
        return sorted(self._get(ino).xattrs)

    @_wrap
    def removexattr(self, ino: int, name: bytes) -> None:
        node = self._get(ino)
        self._check_xattr_name(name)
        if node.xattrs.pop(name, None) is None:
            raise errors.NoData("no such xattr")
        self._touch(node, mtime=False)

    @_wrap
    def usage(self, kind: str, id: int) -> Usage:
        b, i = self._usage.get((kind, id), (0, 0))
        return Usage(b, i)

    @_wrap
    def all_usage(self, kind: str) -> dict[int, Usage]:
        return {i: Usage(*u) for (k, i), u in self._usage.items() if k == kind}

    @_wrap
    def get_quota(self, kind: str, id: int) -> QuotaLimits | None:
        return self._quotas.get((kind, id))

    @_wrap
    def set_quota(self, kind: str, id: int, limits: QuotaLimits | None) -> None:
        if limits is None:
            self._quotas.pop((kind, id), None)
        else:
            self._quotas[(kind, id)] = limits

    @_wrap
    def list_quotas(self, kind: str) -> dict[int, QuotaLimits]:
        return {i: q for (k, i), q in self._quotas.items() if k == kind}

    @_wrap
    def get_state(self, key: str) -> bytes | None:
        return self._state.get(key)

    @_wrap
    def set_state(self, key: str, value: bytes | None) -> None:
        if value is None:
            self._state.pop(key, None)
        else:
            self._state[key] = bytes(value)

    # -- data -----------------------------------------------------------------

    def _file(self, ino: int) -> _Inode:
        node = self._get(ino)
        if node.type is FileType.DIR:
            raise errors.IsDir("is a directory")
        if node.type is not FileType.REG:
            raise errors.Inval("not a regular file")
        return node

    @_wrap
    def read(self, ino: int, offset: int, length: int) -> tuple[bytes, bool]:
        node = self._file(ino)
        if offset < 0 or length < 0:
            raise errors.Inval("negative offset or length")
        end = min(offset + length, node.size)
        if offset >= end:
            return b"", True
        out = bytearray()
        pos = offset
        while pos < end:
            idx, within = divmod(pos, CHUNK)
            n = min(CHUNK - within, end - pos)
            chunk = node.chunks.get(idx)
            out += chunk[within : within + n] if chunk is not None else bytes(n)
            pos += n
        node.atime = self._now()
        return bytes(out), end >= node.size

    @_wrap
    def write(self, ino: int, offset: int, data: bytes | memoryview, stable: bool) -> WriteResult:
        node = self._file(ino)
        if offset < 0:
            raise errors.Inval("negative offset")
        if offset + len(data) > MAX_FILE_SIZE:
            raise errors.FBig("file too large")
        before = node.attributes()
        if not data:
            # POSIX: a zero-byte write to a regular file has no other results.
            return WriteResult(0, stable, before, before)
        pos = offset
        view = memoryview(data)
        while view:
            idx, within = divmod(pos, CHUNK)
            n = min(CHUNK - within, len(view))
            chunk = node.chunks.setdefault(idx, bytearray(CHUNK))
            chunk[within : within + n] = view[:n]
            view = view[n:]
            pos += n
        if offset + len(data) > node.size:
            self._account(node, size=offset + len(data) - node.size)
            node.size = offset + len(data)
        self._touch(node)
        return WriteResult(len(data), stable, node.attributes(), before)

    @_wrap
    def sync(self) -> None:
        """Nothing to make durable: a memory store loses everything when it stops."""

    @_wrap
    def commit(self, ino: int) -> Attributes:
        return self._file(ino).attributes()

    @_wrap
    def allocate(self, ino: int, offset: int, length: int) -> Attributes:
        node = self._file(ino)
        if offset < 0 or length <= 0:
            raise errors.Inval("bad range")
        if offset + length > MAX_FILE_SIZE:
            raise errors.FBig("file too large")
        if offset + length > node.size:
            self._account(node, size=offset + length - node.size)
            node.size = offset + length
        self._touch(node, mtime=False)
        return node.attributes()

    @_wrap
    def data_ranges(self, ino: int, offset: int, length: int) -> list[tuple[int, int]]:
        """The chunks written to (a chunk punched whole is gone: a hole)."""
        node = self._file(ino)
        if offset < 0 or length < 0:
            raise errors.Inval("negative offset or length")
        end = min(offset + length, node.size)
        out: list[tuple[int, int]] = []
        pos = offset
        while pos < end:
            idx = pos // CHUNK
            stop = min((idx + 1) * CHUNK, end)
            if idx in node.chunks:
                if out and out[-1][0] + out[-1][1] == pos:
                    out[-1] = (out[-1][0], stop - out[-1][0])
                else:
                    out.append((pos, stop - pos))
            pos = stop
        return out

    @_wrap
    def deallocate(self, ino: int, offset: int, length: int) -> Attributes:
        node = self._file(ino)
        if offset < 0 or length <= 0:
            raise errors.Inval("bad range")
        end = min(offset + length, node.size)
        pos = offset
        while pos < end:
            idx, within = divmod(pos, CHUNK)
            n = min(CHUNK - within, end - pos)
            chunk = node.chunks.get(idx)
            if chunk is not None:
                if n == CHUNK:
                    del node.chunks[idx]
                else:
                    chunk[within : within + n] = bytes(n)
            pos += n
        self._touch(node)
        return node.attributes()
