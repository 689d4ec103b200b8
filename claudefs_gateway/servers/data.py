# -*- test-case-name: tests.servers.test_data -*-
"""
C{claudefs-data}: file bytes as chunk files on this server's disk.

Each inode's bytes are cut into L{CHUNK}-byte chunks at their logical
offsets, each a sparse file, absent while it holds nothing. Where they are
is the store's layout (L{LAYOUT_FILE} in the data directory):

- layout 2 (stores made since): chunk 0 of inode C{n} is
  C{<dir>/chunks/<n % 256:02x>/<n>}, beside the other files of its bucket,
  and chunk C{i} > 0 is C{<dir>/chunks/<n % 256:02x>/<n>.d/<i>}: a file of
  one chunk (every small file) has no directory of its own to make, sync
  and remove;
- layout 1 (a store made before, which has C{chunks/} and no layout file,
  and keeps it): chunk C{i} is C{<dir>/chunks/<n % 256:02x>/<n>/<i>}.

The
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
import functools
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
#: The file in a data directory naming its chunk layout ("2\n"); absent in
#: stores made before layouts were versioned (layout 1).
LAYOUT_FILE = "layout"
#: The layout new stores get.
LAYOUT = 2


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
    @param layout: the chunk layout (1 or 2; see the module docstring), or
        None: the store's, read from L{LAYOUT_FILE} at first use (a new
        store is given L{LAYOUT} then). The data server and every gateway on
        the local path open the same store and so agree.
    """

    def __init__(self, root: Path, durable: bool = True, layout: int | None = None) -> None:
        self.root = Path(root)
        self.durable = durable
        self._layout = layout
        self._dirty: dict[int, set[int]] = {}
        #: Inodes whose directory's entry in C{chunks/<xx>/} this process has
        #: synced (L{sync}): it stays durable until L{forget} removes the
        #: directory, and inode numbers are never handed out twice, so later
        #: syncs of the inode skip that directory (see L{sync}).
        self._linked: set[int] = set()
        #: Directory syncs made, for tests and benchmarks.
        self.dir_syncs = 0

    @property
    def layout(self) -> int:
        """The store's chunk layout (decided, and for a new store written, at first use)."""
        if self._layout is None:
            self._layout = self._decide_layout()
        return self._layout

    def _decide_layout(self) -> int:
        path = self.root / LAYOUT_FILE
        got = _read_layout(path)
        if got is not None:
            return got
        if (self.root / "chunks").exists():
            # A store older than layouts, or a new one whose maker wrote its
            # layout file (always before chunks/) since we looked: look again.
            got = _read_layout(path)
            return 1 if got is None else got
        # New: written aside and linked into place, so a racing process (the
        # data server and the workers start together) reads it whole or not at
        # all, and the first one's word stands.
        created = _make_dirs(self.root)
        tmp = self.root / f".{LAYOUT_FILE}.{os.getpid()}.{id(self):x}"
        with open(tmp, "wb") as f:
            f.write(f"{LAYOUT}\n".encode())
            if self.durable:
                f.flush()
                os.fdatasync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        if self.durable:
            for p in [self.root, *(c.parent for c in created)]:
                self._fsync_dir(p)
        got = _read_layout(path)
        if got is None:  # pragma: no cover - linked above or by another process
            raise OSError(f"{path}: no layout")
        return got

    def _bucket(self, ino: int) -> Path:
        return self.root / "chunks" / f"{ino % 256:02x}"

    def _dir(self, ino: int) -> Path:
        """Layout 1: the inode's directory; layout 2: that of its chunks past the first."""
        if self.layout == 1:
            return self._bucket(ino) / str(ino)
        return self._bucket(ino) / f"{ino}.d"

    def _path(self, ino: int, idx: int) -> Path:
        if idx == 0 and self.layout != 1:
            return self._bucket(ino) / str(ino)
        return self._dir(ino) / str(idx)

    def _bucket_name(self, ino: int) -> str:
        """L{_bucket} as a string, built without pathlib (a small file's COMMIT and unlink)."""
        return f"{self.root}/chunks/{ino % 256:02x}"

    def _dir_name(self, ino: int) -> str:
        """L{_dir} as a string."""
        if self.layout == 1:
            return f"{self._bucket_name(ino)}/{ino}"
        return f"{self._bucket_name(ino)}/{ino}.d"

    def _chunks(self, ino: int) -> list[int]:
        try:
            found = sorted(int(n) for n in os.listdir(self._dir_name(ino)) if n.isdigit())
        except FileNotFoundError:
            found = []
        if self.layout != 1 and os.path.exists(self._chunk_name(ino, 0)):
            found.insert(0, 0)
        return found

    def _open(self, ino: int, idx: int, create: bool, sync_dirs: bool = True) -> int | None:
        try:
            # The name as a string: pathlib's joins cost more than the open
            # (a tenth of a worker's Python time per 1 MiB NFS WRITE).
            return os.open(self._chunk_name(ino, idx), os.O_RDWR)
        except FileNotFoundError:
            if not create:
                return None
        if not sync_dirs or not self.durable:
            # Its directory is nearly always there (a bucket; a file's own
            # directory after its second chunk): create the file in it
            # without pathlib and the walk up, which only a missing
            # directory needs. (Found there, the walk makes and syncs
            # nothing either.)
            try:
                return os.open(self._chunk_name(ino, idx), os.O_RDWR | os.O_CREAT, 0o600)
            except FileNotFoundError:
                pass
        path = self._path(ino, idx)
        d = path.parent
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
            # them, so they are synced now. (Layout 2: chunk 0's directory is
            # its bucket, new at most 256 times; sync() syncs it as a file's
            # directory all the same.)
            # The directory sync() syncs with its entry: the file's own (layout
            # 1, and layout 2's chunks past the first). Layout 2's chunk 0 is
            # in its bucket, whose entry sync() does not sync: a new bucket's
            # is synced now.
            own = d if self.layout == 1 or idx > 0 else None
            todo: list[Path] = [d] if sync_dirs else []
            for c in created:
                if c != own or sync_dirs:
                    todo += [c, c.parent]
            for p in sorted(set(todo), key=lambda p: len(p.parts), reverse=True):
                self._fsync_dir(p)
        return fd

    def _fsync_dir(self, path: Path | str) -> None:
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
        # What is held in [offset, end): read_exact's bytes (one pread for a
        # range in one chunk, no copies), holes as zeros.
        return end >= held_end, self.read_exact(ino, offset, end - offset)

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
        idx, within = divmod(offset, CHUNK)
        if within + n <= CHUNK:
            fd = _open_existing(self._chunk_name(ino, idx))
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
            fd = _open_existing(self._chunk_name(ino, idx))
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

    def _chunk_name(self, ino: int, idx: int) -> str:
        """L{_path} as a string, built without pathlib (the read path's hot spot)."""
        bucket = f"{self.root}/chunks/{ino % 256:02x}"
        if self.layout == 1:
            return f"{bucket}/{ino}/{idx}"
        return f"{bucket}/{ino}" if idx == 0 else f"{bucket}/{ino}.d/{idx}"

    def held(self, ino: int) -> int:
        """The end of the bytes held for C{ino} (0 when none): what a data server calls its size."""
        chunks = self._chunks(ino)
        if not chunks:
            return 0
        last = chunks[-1]
        try:
            return last * CHUNK + os.stat(self._path(ino, last)).st_size
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
        another process wrote) does for a stable write or a commit. One
        step of L{sync_steps} after the other; a caller with threads to
        spare runs them at once instead.
        """
        for step in self.sync_steps(ino, chunks):
            step()

    def sync_steps(self, ino: int, chunks: list[int] | None = None) -> list[Callable[[], None]]:
        """
        The syncs L{sync} makes, as blocking steps independent of each
        other: one C{fdatasync} per chunk file and one C{fsync} per
        directory. The sync is done when every step has returned, in any
        order: run on separate threads at once, a new small file's
        C{fdatasync} and its bucket's C{fsync} wait for one journal commit
        and one device flush (ext4 here: about 1.2 ms), where one after the
        other the second waits for another flush of its own (2.5-4 ms for
        both). Finding the chunks (a C{listdir} and a C{stat} or two, in the page
        cache) is done here, on the caller's thread.
        """
        if not self.durable:
            return []
        todo = self._chunks(ino) if chunks is None else sorted(set(chunks))
        steps: list[Callable[[], None]] = [
            functools.partial(self._sync_chunk, ino, idx) for idx in todo
        ]
        # A chunk past the first listed: its directory exists (unless a
        # truncate through another process removed it since: d.exists()).
        past_first = any(idx > 0 for idx in todo)
        bucket: str | None = None
        if self.layout != 1 and todo and todo[0] == 0:
            # Layout 2: chunk 0's entry is in its bucket, synced every time (a
            # truncate through another process may have removed and made it
            # again). The bucket's own entry in chunks/ was synced when it was
            # made. The file's directory's entry is in it too.
            bucket = self._bucket_name(ino)
        d = self._dir_name(ino)
        linking = False
        if (past_first if self.layout != 1 else True) and os.path.exists(d):
            # The chunks' entries: every time (a truncate through another
            # process may have removed and made one again since).
            steps.append(functools.partial(self._sync_dir, d, None))
            # The directory's own entry in chunks/<xx>/: once per inode and
            # process. Once synced it stays until forget() removes the
            # directory, and no inode number comes back after that (the
            # meta server hands them out in order), so a second COMMIT of a
            # file (every COMMIT of a long sequential write) makes one
            # directory sync, not two. Another process that made the
            # directory syncs it at its own first sync.
            linking = ino not in self._linked
            if linking and bucket is None:
                steps.append(functools.partial(self._sync_dir, self._bucket_name(ino), ino))
        if bucket is not None:
            steps.append(functools.partial(self._sync_dir, bucket, ino if linking else None))
        return steps

    def _sync_chunk(self, ino: int, idx: int) -> None:
        fd = self._open(ino, idx, False)
        if fd is not None:
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)

    def _sync_dir(self, path: str, linked: int | None) -> None:
        """Sync directory C{path}; then, if C{linked}, that inode's directory entry is durable."""
        self._fsync_dir(path)
        if linked is not None:
            self._linked.add(linked)

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
                os.unlink(self._path(ino, idx))
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
                os.unlink(self._path(ino, idx))
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
        if self.layout != 1:
            _unlink_if_there(self._path(ino, 0))
        shutil.rmtree(self._dir(ino), ignore_errors=True)

    def forget_small(self, ino: int, most: int = 1) -> bool:
        """
        L{forget} at once if C{ino} has at most C{most} chunk files (a small
        file's few unlinks cost less than a thread hop), and True; False,
        having done nothing, when it has more (the caller forgets on a
        thread: freeing gigabytes of extents can take a while).
        """
        try:
            names = os.listdir(self._dir_name(ino))
        except FileNotFoundError:
            self._dirty.pop(ino, None)
            self._linked.discard(ino)
            if self.layout != 1:
                # Layout 2, no directory: chunk 0 alone, if anything (a small file).
                _unlink_if_there(self._chunk_name(ino, 0))
            return True
        if len(names) + (self.layout != 1) > most:
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


def _read_layout(path: Path) -> int | None:
    """The layout a store's layout file names; None when there is none (or not yet whole)."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    if text not in ("1", "2"):
        raise OSError(f"{path}: unknown chunk layout {text!r}")
    return int(text)


def _unlink_if_there(path: Path | str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _open_existing(path: str) -> int | None:
    """A chunk file opened for reading, or None when it does not exist (a hole)."""
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None


def _fsync_dir(path: Path | str) -> None:
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
