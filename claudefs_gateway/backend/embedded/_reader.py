# -*- test-case-name: tests.backend.test_embedded -*-
"""
The embedded store's read side, run on the reactor thread.

Reads use their own SQLite connection (WAL lets it read while the writer
thread commits) and run only once every change submitted before them has been
acknowledged (L{claudefs_gateway.backend.embedded.backend}), so each sees at
least every change its caller saw acknowledged. Each query is one statement
on a primary key or an index range - a few microseconds - which is why they
run inline rather than paying a thread hop (see docs/backend.rst for the
numbers).

Inode rows read are kept (L{Reader.forget}) until the next batch of changes
is delivered, so a read-mostly workload (random reads, GETATTRs of files the
vfs cache let go) costs no query per call; any delivered change drops them
all before anyone can observe it.

File data is read with C{preadv(RWF_NOWAIT)}: served from the page cache
without blocking, or refused (C{EAGAIN}), in which case the rest of the read
goes to the disk thread pool on a duplicated descriptor.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import struct
from collections.abc import Callable
from pathlib import Path

from claudefs_gateway import errors
from claudefs_gateway.backend.embedded._files import Layout, ReadFiles
from claudefs_gateway.backend.embedded._schema import (
    _TYPES,
    DIR_SIZE,
    NODE_COLUMNS,
    SELECT_NODE,
    Node,
    usage_total,
)
from claudefs_gateway.core import pagecache
from claudefs_gateway.core.directsend import FileRange
from claudefs_gateway.fstypes import (
    XATTR_NAME_MAX,
    Attributes,
    DirEntry,
    DirPage,
    FileType,
    FSStat,
    QuotaLimits,
    Usage,
)

__all__ = ["Reader", "PendingRead", "MAX_READ"]

# One read returns at most this much ("up to length bytes"): no request can
# make the store hold a whole large file in memory.
MAX_READ = 64 * 1024 * 1024

_I_COLUMNS = ", ".join("i." + c.strip() for c in NODE_COLUMNS.split(","))
_LOOKUP = (
    f"SELECT {_I_COLUMNS} FROM dirent d JOIN inode i ON i.ino = d.ino"
    " WHERE d.parent = ? AND d.name = ?"
)
_READDIR = (
    "SELECT cookie, name, ino, type FROM dirent WHERE parent = ? AND cookie > ?"
    " ORDER BY cookie LIMIT ?"
)
# The last column says whether the file is inline (a row in inline_data): an
# inline file uses no blocks of its own and has no data file to stat, so a
# listing of small files makes no system call per entry (each stat of a
# missing file also raised FileNotFoundError: a third of READDIRPLUS's
# per-entry cost).
_READDIR_ATTRS = (
    f"SELECT d.cookie, d.name, {_I_COLUMNS},"
    " EXISTS (SELECT 1 FROM inline_data x WHERE x.ino = d.ino)"
    " FROM dirent d JOIN inode i ON i.ino = d.ino"
    " WHERE d.parent = ? AND d.cookie > ? ORDER BY d.cookie LIMIT ?"
)
_REG = FileType.REG
_DIR = FileType.DIR
_LNK = FileType.LNK
_I64 = 2**63 - 1


# Reads up to this size try the page cache on the reactor thread first.
FAST_READ = 1024 * 1024
# Reads from this size may be answered with a FileRange (sent by sendfile)
# when every page is cached: below it, the copies a range saves (reading
# into a buffer, then into the socket) cost less than the page cache check
# and the reply's second system call.
RANGE_MIN = 64 * 1024
# Inode rows kept between changes (dropped all at once when full).
NODE_CACHE = 4096


class PendingRead:
    """A read the page cache could not serve at once: do it in a pool thread."""

    __slots__ = ("fd", "offset", "length", "eof")

    def __init__(self, fd: int, offset: int, length: int, eof: bool) -> None:
        self.fd = fd
        self.offset = offset
        self.length = length
        self.eof = eof


class Reader:
    def __init__(
        self,
        conn: sqlite3.Connection,
        layout: Layout,
        instance_id: bytes,
        data_dir: Path,
        max_fds: int = 128,
    ) -> None:
        self.conn = conn
        self.files = ReadFiles(layout, max_fds)
        self.data_dir = data_dir
        self._iid = int.from_bytes(instance_id, "big")
        self.nowait = hasattr(os, "RWF_NOWAIT")
        self._scratch: memoryview | None = None
        self._nodes: dict[int, Node] = {}
        # The directory whose listing last found an entry readdir_cached's
        # cache lacked: its next pages are read with their attributes at
        # once (a listing of files nobody looked at reads each page once).
        self._cold_dir = 0

    def close(self) -> None:
        self.files.close()
        self.conn.close()

    def forget(self) -> None:
        """Changes were delivered: the kept inode rows may be out of date."""
        if self._nodes:
            self._nodes.clear()

    def changed(self, rows: dict[int, Node | None]) -> None:
        """
        An op committed these inode rows (None: deleted): keep them as
        written, so the next read of a file or directory it changed (the
        parent of the file just made) needs no query. The writer's Node
        objects are never changed after their op.
        """
        nodes = self._nodes
        for ino, node in rows.items():
            if node is None:
                nodes.pop(ino, None)
            else:
                if len(nodes) >= NODE_CACHE and ino not in nodes:
                    nodes.clear()
                nodes[ino] = node

    def kept_dir(self, ino: int) -> Attributes | None:
        """Directory C{ino}'s attributes if its row is kept, else None (no query)."""
        node = self._nodes.get(ino)
        if node is None or node.type is not FileType.DIR:
            return None
        return self.attrs(node)

    def _node(self, ino: int) -> Node:
        node = self._nodes.get(ino)
        if node is not None:
            return node
        row = self.conn.execute(SELECT_NODE, (ino,)).fetchone() if 0 < ino <= _I64 else None
        if row is None:
            raise errors.NotFound(f"inode {ino}")
        node = Node(row)
        nodes = self._nodes
        if len(nodes) >= NODE_CACHE:
            nodes.clear()
        nodes[ino] = node
        return node

    def _dir(self, ino: int) -> Node:
        node = self._node(ino)
        if node.type is not FileType.DIR:
            raise errors.NotDir(f"inode {ino}")
        return node

    def attrs(self, node: Node) -> Attributes:
        return node.attributes(self.files.used(node.ino) if node.type is FileType.REG else 0)

    # -- metadata -------------------------------------------------------------------

    def getattr(self, ino: int) -> Attributes:
        return self.attrs(self._node(ino))

    def lookup(self, parent: int, name: bytes) -> Attributes:
        d = self._dir(parent)
        if name == b".":
            return self.attrs(d)
        if name == b"..":
            return self.attrs(self._node(d.parent))
        row = self.conn.execute(_LOOKUP, (parent, name)).fetchone()
        if row is None:
            raise errors.NotFound("no such name")
        return self.attrs(Node(row))

    def verifier(self, ino: int) -> bytes:
        """A directory's cookie verifier: cookies are never reused, so it never has to change."""
        return struct.pack(">Q", ino ^ self._iid)

    def readdir_cached(
        self,
        dir: int,
        cookie: int,
        verifier: bytes,
        count: int,
        cached: Callable[[list[int]], list[Attributes | None]],
    ) -> tuple[DirPage, bool]:
        """
        L{readdir} with attributes, taking them from C{cached} (the vfs's
        attribute cache: the inodes' attributes or None each) when it has
        every entry's: the listing query then reads the names alone (a
        third of the per-row cost) and no L{Attributes} is made. A page with
        one entry C{cached} lacks is read as L{readdir} reads it. Also
        returns whether the attributes came from C{cached}. After a page
        with a miss, the listing's next pages (same directory, cookie not 0)
        are read as L{readdir} reads them, without asking C{cached}.
        """
        if cookie and dir == self._cold_dir:
            return self.readdir(dir, cookie, verifier, count, True), False
        verf = self._check_cookie(dir, cookie, verifier)
        count = max(min(count, 2**62), 0)
        after = max(min(cookie, _I64), -1)
        rows = self.conn.execute(_READDIR, (dir, after, count + 1)).fetchall()
        page = rows[:count]
        got = cached([row[2] for row in page])
        if None in got:
            self._cold_dir = dir
            return self.readdir(dir, cookie, verifier, count, True), False
        if dir == self._cold_dir:
            self._cold_dir = 0
        types = _TYPES
        entries = [
            DirEntry(name, ino, types[t], c, a)
            for (c, name, ino, t), a in zip(page, got, strict=True)
        ]
        return DirPage(tuple(entries), verf, eof=len(rows) <= count), True

    def _check_cookie(self, dir: int, cookie: int, verifier: bytes) -> bytes:
        d = self._dir(dir)
        verf = self.verifier(d.ino)
        if cookie != 0 and verifier != verf:
            raise errors.BadCookie("cookie verifier mismatch")
        if cookie in (1, 2):
            raise errors.BadCookie("cookie reserved for . and ..")
        return verf

    def readdir(
        self, dir: int, cookie: int, verifier: bytes, count: int, with_attrs: bool = False
    ) -> DirPage:
        verf = self._check_cookie(dir, cookie, verifier)
        count = max(min(count, 2**62), 0)
        after = max(min(cookie, _I64), -1)
        entries: list[DirEntry] = []
        if with_attrs:
            rows = self.conn.execute(_READDIR_ATTRS, (dir, after, count + 1)).fetchall()
            files = self.files
            # Attributes straight from each row (as Node.attributes makes
            # them, without the Node): a listing's per-entry cost.
            for (
                c,
                name,
                ino,
                gen,
                t,
                mode,
                nlink,
                uid,
                gid,
                size,
                major,
                minor,
                atime,
                mtime,
                ctime,
                btime,
                change,
                _parent,
                target,
                inline,
            ) in rows[:count]:
                ft = _TYPES[t]
                if ft is _REG:
                    used = 0 if inline else files.used(ino)  # see _READDIR_ATTRS
                elif ft is _DIR:
                    size = used = DIR_SIZE
                elif ft is _LNK:
                    size, used = len(target or b""), 0
                else:
                    used = 0
                a = Attributes(
                    ino,
                    gen,
                    ft,
                    mode,
                    nlink,
                    uid,
                    gid,
                    size,
                    used,
                    (major, minor),
                    atime,
                    mtime,
                    ctime,
                    btime,
                    change,
                )
                entries.append(DirEntry(name, ino, ft, c, a))
        else:
            rows = self.conn.execute(_READDIR, (dir, after, count + 1)).fetchall()
            for c, name, ino, t in rows[:count]:
                entries.append(DirEntry(name, ino, FileType(t), c))
        return DirPage(tuple(entries), verf, eof=len(rows) <= count)

    def readlink(self, ino: int) -> bytes:
        node = self._node(ino)
        if node.type is not FileType.LNK:
            raise errors.Inval("not a symlink")
        return node.target

    def statfs(self) -> FSStat:
        st = os.statvfs(self.data_dir)
        return FSStat(
            total_bytes=st.f_blocks * st.f_frsize,
            free_bytes=st.f_bfree * st.f_frsize,
            avail_bytes=st.f_bavail * st.f_frsize,
            total_files=st.f_files,
            free_files=st.f_ffree,
            avail_files=st.f_favail,
            block_size=st.f_bsize,
        )

    def getxattr(self, ino: int, name: bytes) -> bytes:
        self._node(ino)
        if not name or b"\x00" in name:
            raise errors.Inval("bad xattr name")
        if len(name) > XATTR_NAME_MAX:
            raise errors.Range("xattr name too long")
        row = self.conn.execute(
            "SELECT value FROM xattr WHERE ino = ? AND name = ?", (ino, name)
        ).fetchone()
        if row is None:
            raise errors.NoData("no such xattr")
        return bytes(row[0])

    def listxattr(self, ino: int) -> list[bytes]:
        self._node(ino)
        rows = self.conn.execute("SELECT name FROM xattr WHERE ino = ? ORDER BY name", (ino,))
        return [bytes(r[0]) for r in rows]

    def usage(self, kind: str, id: int) -> Usage:
        row = self.conn.execute(
            "SELECT bytes, bytes_hi, inodes FROM usage WHERE kind = ? AND id = ?", (kind, id)
        ).fetchone()
        return Usage(usage_total(row[0], row[1]), row[2]) if row is not None else Usage(0, 0)

    def all_usage(self, kind: str) -> dict[int, Usage]:
        rows = self.conn.execute(
            "SELECT id, bytes, bytes_hi, inodes FROM usage WHERE kind = ?", (kind,)
        )
        return {i: Usage(usage_total(b, h), n) for i, b, h, n in rows}

    def get_quota(self, kind: str, id: int) -> QuotaLimits | None:
        row = self.conn.execute(
            "SELECT bytes_soft, bytes_hard, inodes_soft, inodes_hard FROM quota"
            " WHERE kind = ? AND id = ?",
            (kind, id),
        ).fetchone()
        return QuotaLimits(*row) if row is not None else None

    def list_quotas(self, kind: str) -> dict[int, QuotaLimits]:
        rows = self.conn.execute(
            "SELECT id, bytes_soft, bytes_hard, inodes_soft, inodes_hard FROM quota WHERE kind = ?",
            (kind,),
        )
        return {r[0]: QuotaLimits(*r[1:]) for r in rows}

    def get_state(self, key: str) -> bytes | None:
        row = self.conn.execute("SELECT v FROM state WHERE k = ?", (key,)).fetchone()
        return bytes(row[0]) if row is not None else None

    # -- data -----------------------------------------------------------------------

    def inline(self, ino: int) -> bytes | None:
        """
        A small file's bytes kept in the database (L{_schema}, C{inline_data}),
        or None. A file whose data file this side holds open is never inline
        (the row is made only for a file without one, and no file goes back),
        so that costs no query; else the row wins over any data file (one a
        failed move out of line left).
        """
        if self.files.is_open(ino):
            return None
        row = self.conn.execute("SELECT data FROM inline_data WHERE ino = ?", (ino,)).fetchone()
        return None if row is None else bytes(row[0])

    def data_ranges(self, ino: int, offset: int, length: int) -> list[tuple[int, int]]:
        """
        Where the data file holds data (SEEK_DATA / SEEK_HOLE, at the file
        system's block size), cut at the size; none without a data file, and
        none past its physical end (a size set by setattr is a hole).
        """
        node = self._node(ino)
        if node.type is FileType.DIR:
            raise errors.IsDir("is a directory")
        if node.type is not FileType.REG:
            raise errors.Inval("not a regular file")
        if offset < 0 or length < 0:
            raise errors.Inval("negative offset or length")
        end = min(offset + length, node.size)
        if offset >= end:
            return []
        blob = self.inline(ino)
        if blob is not None:
            return _inline_ranges(blob, offset, min(end, len(blob)))
        fd = self.files.get(ino)
        if fd is None:
            return []
        out: list[tuple[int, int]] = []
        pos = offset
        try:
            while pos < end:
                try:
                    start = os.lseek(fd, pos, os.SEEK_DATA)
                except OSError as e:
                    if e.errno == errno.ENXIO:  # no data at or after pos
                        break
                    raise
                if start >= end:
                    break
                stop = min(os.lseek(fd, start, os.SEEK_HOLE), end)
                out.append((start, stop - start))
                pos = stop
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            return [(offset, end - offset)]  # no SEEK_DATA here: all of it
        return out

    def read(
        self, ino: int, offset: int, length: int, ranged: bool = False
    ) -> tuple[bytes | FileRange, bool] | PendingRead:
        """
        The bytes at C{offset}, or a L{PendingRead} for the part that would block.

        With C{ranged}, a read of at least C{RANGE_MIN} bytes of a data
        file whose range is all in the page cache answers a L{FileRange}
        of this reader's descriptor instead of the bytes: good only until
        the caller returns to the reactor (the descriptor may be closed
        after), for a reply the caller sends with C{sendfile} at once.

        The size comes from the metadata (the data file may be shorter - a
        hole or a size set by setattr, read as zeros - or longer after a crash
        lost an unstable write's metadata - never shown).
        """
        node = self._nodes.get(ino)
        if node is None:
            node = self._node(ino)
        if node.type is not FileType.REG:
            if node.type is FileType.DIR:
                raise errors.IsDir("is a directory")
            raise errors.Inval("not a regular file")
        if offset < 0 or length < 0:
            raise errors.Inval("negative offset or length")
        end = min(offset + length, node.size, offset + MAX_READ)
        if offset >= end:
            return b"", True
        eof = end >= node.size
        n = end - offset
        # A file whose data file is open here is never inline (L{inline}):
        # the descriptor first, so a read of an open file asks nothing else.
        files = self.files
        fd = files.cached(ino)
        if fd is None:
            blob = self.inline(ino)
            if blob is not None:
                return blob[offset:end].ljust(n, b"\0"), eof
            fd = files.get(ino)
            if fd is None:
                return bytes(n), eof
        if ranged and n >= RANGE_MIN and pagecache.cached(fd, offset, n):
            return FileRange(fd, offset, n), eof
        if self.nowait and n <= FAST_READ:
            # One reused buffer, then one bytes object per read: allocating a
            # fresh buffer and a copy (two large blocks alive at once) makes
            # glibc trim and re-fault its heap on every read - 20x slower for
            # 1 MiB than the copy itself (docs/backend.rst, measurements).
            if self._scratch is None:
                self._scratch = memoryview(bytearray(FAST_READ))
            view = self._scratch[:n]
            try:
                got = os.preadv(fd, [view], offset, os.RWF_NOWAIT)
            except BlockingIOError:
                got = -1
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                self.nowait = False
                got = -1
            if got == n:
                return bytes(view), eof
            # A short read without EAGAIN is either the end of the data file
            # (the rest reads as zeros) or a range only partly cached.
            if got >= 0 and offset + got >= os.fstat(fd).st_size:
                return bytes(view[:got]).ljust(n, b"\0"), eof
        return PendingRead(os.dup(fd), offset, n, eof)


#: The block an inline file's data ranges are told in (a file system's block).
_INLINE_BLOCK = 4096


def _inline_ranges(blob: bytes, offset: int, stop: int) -> list[tuple[int, int]]:
    """
    Where an inline file holds data in [offset, stop): its blocks that are not
    all zeros. A hole punched in it is zeroed in place, and must read as a
    hole as a data file's punched blocks do (SMB's QUERY_ALLOCATED_RANGES,
    smbtorture smb2.ioctl.sparse_punch; NFSv4.2 SEEK).
    """
    out: list[tuple[int, int]] = []
    b = offset - offset % _INLINE_BLOCK
    while b < stop:
        s, e = max(b, offset), min(b + _INLINE_BLOCK, stop)
        if blob.count(0, s, e) != e - s:
            if out and out[-1][0] + out[-1][1] == s:
                out[-1] = (out[-1][0], e - out[-1][0])
            else:
                out.append((s, e - s))
        b += _INLINE_BLOCK
    return out
