# -*- test-case-name: tests.servers.test_data -*-
"""
C{claudefs-data}: file bytes as chunk files on this server's disk.

Each inode's bytes are cut into L{CHUNK}-byte chunks at their logical
offsets; chunk C{i} of inode C{n} is the sparse file
C{<dir>/chunks/<n % 256:02x>/<n>/<i>}, absent while it holds nothing. The
data server knows no sizes, owners or times: the meta server does, and the
gateway clips what it reads here to the size the meta server gives. So a
read returns the bytes this server holds from the offset, up to the length or
the end of the last chunk, whichever comes first (holes read as zeros).

Disk work runs in the C{disk} thread pool; the operations on one inode run
one at a time in arrival order (a read sent after a write sees it). A
stable write and a commit fdatasync the chunk files written since the last
commit (and their directories when new) before they answer.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from twisted._threads import AlreadyQuit
from twisted.internet import defer
from twisted.python.failure import Failure

from claudefs_gateway import errors
from claudefs_gateway.backend.embedded._files import punch_hole
from claudefs_gateway.core.health import CheckResult
from claudefs_gateway.core.log import Logger
from claudefs_gateway.fstypes import MAX_FILE_SIZE, FSStat

__all__ = ["CHUNK", "ChunkStore", "DataHandler"]

T = TypeVar("T")

#: Bytes per chunk file.
CHUNK = 4 * 1024 * 1024


def _check_range(offset: int, length: int, allow_empty: bool = True) -> None:
    if offset < 0 or length < 0 or (not allow_empty and length == 0):
        raise errors.Inval("bad range")
    if offset + length > MAX_FILE_SIZE:
        raise errors.FBig("file too large")


def _convert(e: OSError) -> errors.FSError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return errors.NoSpace("data server disk full")
    if e.errno == errno.EFBIG:
        return errors.FBig("file too large")
    return errors.IO(f"data server I/O error: {e.strerror}")


class ChunkStore:
    """
    The chunk files under C{root}; blocking methods, called from the disk pool.

    @param durable: False skips every fsync (tests).
    """

    def __init__(self, root: Path, durable: bool = True) -> None:
        self.root = Path(root)
        self.durable = durable
        self._dirty: dict[int, set[int]] = {}
        #: Inodes whose directory's entry in C{chunks/<xx>/} this process has
        #: synced (L{sync}): it stays durable until L{forget} removes the
        #: directory, and inode numbers are never handed out twice, so later
        #: syncs of the inode skip that directory (see L{sync}).
        self._linked: set[int] = set()
        #: Directory syncs made, for tests and benchmarks.
        self.dir_syncs = 0

    def _dir(self, ino: int) -> Path:
        return self.root / "chunks" / f"{ino % 256:02x}" / str(ino)

    def _chunks(self, ino: int) -> list[int]:
        try:
            return sorted(int(n) for n in os.listdir(self._dir(ino)) if n.isdigit())
        except FileNotFoundError:
            return []

    def _open(self, ino: int, idx: int, create: bool, sync_dirs: bool = True) -> int | None:
        d = self._dir(ino)
        path = d / str(idx)
        try:
            return os.open(path, os.O_RDWR)
        except FileNotFoundError:
            if not create:
                return None
        created = _make_dirs(d)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if self.durable:
            # A new file's entry is in d; a new directory's entry is in its
            # parent, and its own entries in itself: each directory created
            # and its parent are synced, or a power loss can drop the whole
            # new chain (chunks/, chunks/xx/, chunks/xx/<ino>/) and the
            # acknowledged file in it. Without sync_dirs (a short-circuit
            # put) the file's directory waits for sync(), which syncs it and
            # its parent; directories above it are new at most 257 times in
            # a store's life, and another process's commit cannot know of
            # them, so they are synced now.
            todo: list[Path] = [d] if sync_dirs else []
            for c in created:
                if c != d or sync_dirs:
                    todo += [c, c.parent]
            for p in sorted(set(todo), key=lambda p: len(p.parts), reverse=True):
                self._fsync_dir(p)
        return fd

    def _fsync_dir(self, path: Path) -> None:
        self.dir_syncs += 1
        _fsync_dir(path)

    def read(self, ino: int, offset: int, length: int) -> tuple[bool, bytes]:
        """(reached the end of what is held, bytes from C{offset})."""
        if offset < 0 or length < 0:
            raise errors.Inval("negative offset or length")
        chunks = self._chunks(ino)
        if not chunks:
            return True, b""
        last = chunks[-1]
        fd = self._open(ino, last, False)
        held_end = last * CHUNK + (os.fstat(fd).st_size if fd is not None else 0)
        if fd is not None:
            os.close(fd)
        end = min(offset + length, held_end)
        if end <= offset:
            return True, b""
        out = bytearray()
        pos = offset
        present = set(chunks)
        while pos < end:
            idx, within = divmod(pos, CHUNK)
            n = min(CHUNK - within, end - pos)
            fd = self._open(ino, idx, False) if idx in present else None
            if fd is None:
                out += bytes(n)
            else:
                try:
                    got = os.pread(fd, n, within)
                finally:
                    os.close(fd)
                out += got
                if len(got) < n:
                    out += bytes(n - len(got))
            pos += n
        return end >= held_end, bytes(out)

    def read_exact(self, ino: int, offset: int, n: int) -> bytes:
        """
        C{n} bytes at C{offset}, holes and what lies past the bytes held read
        as zeros: a gateway's read on the local path, clipped to the size the
        meta server gave. A range in one chunk (every aligned NFS READ) is
        one C{pread} into the bytes returned: no directory listing, no
        C{fstat}, no copy (L{read} makes three of a 1 MiB read, and each
        large block allocated and freed costs more than its copy).
        """
        if offset < 0 or n < 0:
            raise errors.Inval("negative offset or length")
        base = os.path.join(self.root, "chunks", f"{ino % 256:02x}", str(ino))
        idx, within = divmod(offset, CHUNK)
        if within + n <= CHUNK:
            fd = _open_existing(os.path.join(base, str(idx)))
            if fd is None:
                return bytes(n)
            try:
                got = os.pread(fd, n, within)
            finally:
                os.close(fd)
            return got if len(got) == n else got.ljust(n, b"\0")
        out = bytearray(n)
        view = memoryview(out)
        pos = 0
        while pos < n:
            idx, within = divmod(offset + pos, CHUNK)
            m = min(CHUNK - within, n - pos)
            fd = _open_existing(os.path.join(base, str(idx)))
            if fd is not None:
                try:
                    # A short read leaves the rest zero: past the chunk's end.
                    part = view[pos : pos + m]
                    done = 0
                    while done < m:
                        k = os.preadv(fd, [part[done:]], within + done)
                        if k <= 0:
                            break
                        done += k
                finally:
                    os.close(fd)
            pos += m
        return bytes(out)

    def held(self, ino: int) -> int:
        """The end of the bytes held for C{ino} (0 when none): what a data server calls its size."""
        chunks = self._chunks(ino)
        if not chunks:
            return 0
        last = chunks[-1]
        try:
            return last * CHUNK + os.stat(self._dir(ino) / str(last)).st_size
        except FileNotFoundError:
            return last * CHUNK

    def write(self, ino: int, offset: int, data: bytes, stable: bool) -> None:
        self._dirty.setdefault(ino, set()).update(self.put(ino, offset, data, sync_dirs=True))
        if stable:
            self.commit(ino)

    def put(
        self, ino: int, offset: int, data: bytes | memoryview, sync_dirs: bool = False
    ) -> list[int]:
        """
        Write C{data} at C{offset} (into the page cache: nothing is synced,
        and with C{sync_dirs} False neither are the directories of new chunk
        files, which L{sync} then does); the indices of the chunks written.
        """
        _check_range(offset, len(data))
        view = memoryview(data)
        pos = offset
        touched = []
        while view:
            idx, within = divmod(pos, CHUNK)
            n = min(CHUNK - within, len(view))
            fd = self._open(ino, idx, True, sync_dirs)
            assert fd is not None
            try:
                done = 0
                while done < n:
                    done += os.pwrite(fd, view[done:n], within + done)
            finally:
                os.close(fd)
            touched.append(idx)
            view = view[n:]
            pos += n
        return touched

    def sync(self, ino: int, chunks: list[int] | None = None) -> None:
        """
        Make C{chunks} of C{ino} (None: every chunk it has) durable, with the
        directory entries that name them: what a writer that used L{put} (a
        gateway on the short-circuit path, which cannot know which chunks
        another process wrote) does for a stable write or a commit.
        """
        if not self.durable:
            return
        for idx in self._chunks(ino) if chunks is None else sorted(set(chunks)):
            fd = self._open(ino, idx, False)
            if fd is not None:
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
        d = self._dir(ino)
        if d.exists():
            # The chunks' entries: every time (a truncate through another
            # process may have removed and made one again since).
            self._fsync_dir(d)
            if ino not in self._linked:
                # The directory's own entry in chunks/<xx>/: once per inode
                # and process. Once synced it stays until forget() removes
                # the directory, and no inode number comes back after that
                # (the meta server hands them out in order), so a second
                # COMMIT of a file (every COMMIT of a long sequential write)
                # makes one directory sync, not two. Another process that
                # made the directory syncs it at its own first sync.
                self._fsync_dir(d.parent)
                self._linked.add(ino)

    def commit(self, ino: int) -> None:
        for idx in sorted(self._dirty.pop(ino, ())):
            fd = self._open(ino, idx, False)
            if fd is not None:
                try:
                    if self.durable:
                        os.fdatasync(fd)
                finally:
                    os.close(fd)

    def allocate(self, ino: int, offset: int, length: int) -> None:
        _check_range(offset, length, allow_empty=False)
        pos, end = offset, offset + length
        while pos < end:
            idx, within = divmod(pos, CHUNK)
            n = min(CHUNK - within, end - pos)
            fd = self._open(ino, idx, True)
            assert fd is not None
            try:
                os.posix_fallocate(fd, within, n)
                if self.durable:
                    os.fdatasync(fd)
            finally:
                os.close(fd)
            pos += n

    def deallocate(self, ino: int, offset: int, length: int) -> None:
        _check_range(offset, length, allow_empty=False)
        end = offset + length
        for idx in self._chunks(ino):
            lo, hi = idx * CHUNK, (idx + 1) * CHUNK
            if hi <= offset or lo >= end:
                continue
            if offset <= lo and end >= hi:
                os.unlink(self._dir(ino) / str(idx))
                continue
            fd = self._open(ino, idx, False)
            if fd is None:
                continue
            try:
                a, b = max(offset, lo) - lo, min(end, hi) - lo
                size = os.fstat(fd).st_size
                if b > size:
                    b = size
                if b > a:
                    punch_hole(fd, a, b - a)
                    if self.durable:
                        os.fdatasync(fd)
            finally:
                os.close(fd)

    def truncate(self, ino: int, size: int) -> None:
        """Drop every byte at and past C{size}."""
        if size < 0:
            raise errors.Inval("negative size")
        for idx in self._chunks(ino):
            lo = idx * CHUNK
            if lo >= size:
                os.unlink(self._dir(ino) / str(idx))
            elif lo + CHUNK > size:
                fd = self._open(ino, idx, False)
                if fd is not None:
                    try:
                        if os.fstat(fd).st_size > size - lo:
                            os.ftruncate(fd, size - lo)
                            if self.durable:
                                os.fdatasync(fd)
                    finally:
                        os.close(fd)
        dirty = self._dirty.get(ino)
        if dirty is not None:
            dirty.intersection_update(range(0, size // CHUNK + 1))

    def forget(self, ino: int) -> None:
        self._dirty.pop(ino, None)
        self._linked.discard(ino)
        shutil.rmtree(self._dir(ino), ignore_errors=True)

    def forget_small(self, ino: int, most: int = 1) -> bool:
        """
        L{forget} at once if C{ino} has at most C{most} chunk files (a small
        file's few unlinks cost less than a thread hop), and True; False,
        having done nothing, when it has more (the caller forgets on a
        thread: freeing gigabytes of extents can take a while).
        """
        try:
            names = os.listdir(self._dir(ino))
        except FileNotFoundError:
            self._dirty.pop(ino, None)
            self._linked.discard(ino)
            return True
        if len(names) > most:
            return False
        self.forget(ino)
        return True

    def statfs(self) -> FSStat:
        st = os.statvfs(self.root)
        return FSStat(
            st.f_blocks * st.f_frsize,
            st.f_bfree * st.f_frsize,
            st.f_bavail * st.f_frsize,
            st.f_files,
            st.f_ffree,
            st.f_favail,
            st.f_frsize,
        )


def _pass_on(result: Any, gate: defer.Deferred[None]) -> Any:
    gate.callback(None)
    return result


def _make_dirs(d: Path) -> list[Path]:
    """
    Create C{d} and the directories above it that are missing; the ones this
    call made, top first. One that another process made meanwhile
    (C{--workers} share the chunk store) counts as made: its maker may not
    have synced it yet.
    """
    missing = []
    p = d
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    created = []
    for p in reversed(missing):
        try:
            p.mkdir()
        except FileExistsError:
            pass
        created.append(p)
    return created


def _open_existing(path: str) -> int | None:
    """A chunk file opened for reading, or None when it does not exist (a hole)."""
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DataHandler:
    """
    The data server's opcodes over a L{ChunkStore}.

    @param run: runs a blocking callable off the reactor; a Deferred (the
        service passes the C{disk} pool; tests may run inline).
    """

    _log = Logger()

    def __init__(self, store: ChunkStore, run: Callable[..., Any], pnfs: Any = None) -> None:
        self.store = store
        self._run = run
        self._tails: dict[int, defer.Deferred[Any]] = {}
        self.failed = False
        #: The pNFS data server's state (L{claudefs_gateway.servers.ds_nfs.DSState}), if any.
        self.pnfs = pnfs

    def instance_id(self) -> bytes:
        return bytes(8)

    def _serial(self, ino: int, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        """Run C{fn(*args)} after every earlier operation on C{ino}."""
        prev = self._tails.get(ino)
        d: defer.Deferred[T] = defer.Deferred()

        def start(_: Any = None) -> None:
            try:
                work = self._run(fn, *args)
            except AlreadyQuit:
                work = defer.fail(errors.BackendUnavailable("data server stopping"))
            except Exception:
                work = defer.fail()
            work.addBoth(finish)

        def finish(result: Any) -> None:
            if self._tails.get(ino) is d:
                del self._tails[ino]
            if isinstance(result, Failure):
                e = result.value
                if isinstance(e, OSError):
                    self.failed = e.errno not in (errno.ENOSPC, errno.EDQUOT)
                    self._log.failure("data server I/O on inode {ino}", result, ino=ino)
                    result = Failure(_convert(e))
                d.errback(result)
            else:
                d.callback(result)

        self._tails[ino] = d
        if prev is None:
            start()
        else:
            # Wait for prev without taking its result from its own caller.
            gate: defer.Deferred[None] = defer.Deferred()
            gate.addCallback(start)
            prev.addBoth(_pass_on, gate)
        return d

    def op_HEARTBEAT(self, conn: Any) -> None:
        return None

    def op_READ(self, conn: Any, ino: int, offset: int, length: int) -> defer.Deferred[Any]:
        return self._serial(ino, self.store.read, ino, offset, length)

    def op_WRITE(
        self, conn: Any, ino: int, offset: int, stable: bool, data: bytes
    ) -> defer.Deferred[None]:
        return self._serial(ino, self.store.write, ino, offset, data, stable)

    def op_COMMIT(self, conn: Any, ino: int) -> defer.Deferred[None]:
        return self._serial(ino, self.store.commit, ino)

    def op_ALLOCATE(self, conn: Any, ino: int, offset: int, length: int) -> defer.Deferred[None]:
        return self._serial(ino, self.store.allocate, ino, offset, length)

    def op_DEALLOCATE(self, conn: Any, ino: int, offset: int, length: int) -> defer.Deferred[None]:
        return self._serial(ino, self.store.deallocate, ino, offset, length)

    def op_TRUNCATE(self, conn: Any, ino: int, size: int) -> defer.Deferred[None]:
        return self._serial(ino, self.store.truncate, ino, size)

    def op_FORGET(self, conn: Any, ino: int) -> defer.Deferred[None]:
        if self.pnfs is not None:
            self.pnfs.forget(ino)
        return self._serial(ino, self.store.forget, ino)

    def op_PNFS_INFO(self, conn: Any) -> tuple[bytes, str]:
        # A data server without an NFS listener serves no pNFS client.
        if self.pnfs is None or not self.pnfs.nfs_address:
            return b"", ""
        return self.pnfs.key, self.pnfs.nfs_address

    def op_PNFS_FENCE(self, conn: Any, ino: int, epoch: int) -> defer.Deferred[None]:
        if self.pnfs is None:
            return defer.fail(errors.NotSupp("this data server serves no pNFS clients"))
        return self.pnfs.fence(ino, epoch)  # type: ignore[no-any-return]

    def op_DATA_STATFS(self, conn: Any) -> defer.Deferred[FSStat]:
        return self._run(self.store.statfs)  # type: ignore[no-any-return]

    def check(self) -> CheckResult:
        if self.failed:
            return CheckResult.unhealthy("data disk I/O errors")
        try:
            st = os.statvfs(self.store.root)
        except OSError:
            return CheckResult.unhealthy("data directory unreadable")
        if st.f_bavail * st.f_frsize < 64 * 1024 * 1024:
            return CheckResult.degraded("data disk nearly full")
        return CheckResult.healthy()
