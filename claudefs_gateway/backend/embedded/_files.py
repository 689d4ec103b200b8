# -*- test-case-name: tests.backend.test_embedded -*-
"""
Per-inode data files: where they live, and the two file-descriptor caches.

One regular file's contents live in one sparse file under C{data/}, named by
its inode number in hex and fanned out by the number's high bits::

    data/<ino >> 20 : hex>/<(ino >> 10) & 0x3ff : 03x>/<ino : hex>

Inode numbers are handed out in order, so 1024 consecutive inodes share a leaf
directory (a burst of new files dirties one directory, whose fsync they share)
and no directory holds more than 1024 entries whatever the size of the store.

A data file exists only once something was written (or allocated) into it: an
empty or never-written file, a file whose size was only set by C{setattr},
reads as zeros up to its size, which the metadata store holds. The physical
length may therefore be shorter than the size (reads pad with zeros) or, after
a crash lost an unstable write's metadata, longer (reads stop at the size, and
every operation that would expose the region beyond the size first cuts it
off: see L{WriteFiles.trim}).

The writer thread owns L{WriteFiles}; the reactor thread owns L{ReadFiles}.
Nothing is shared between them but the file system, so neither needs a lock.
Each closes descriptors unused for a while when asked (C{close_idle}, on its
own thread), so a burst of activity leaves no descriptors behind it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import itertools
import os
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["Layout", "WriteFiles", "ReadFiles", "punch_hole", "read_range"]

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


class Layout:
    """Path arithmetic for the data tree (no I/O)."""

    def __init__(self, root: str) -> None:
        self.root = root
        #: No data files are ever made here (a meta server's store: the bytes
        #: are on data servers): L{WriteFiles.used} and L{ReadFiles.used}
        #: answer 0, as the stat of the absent file did, without it.
        self.no_data = False
        #: Regular files this process made whose data file was never created
        #: (their bytes inline, or none yet): L{WriteFiles.used} and
        #: L{ReadFiles.used} answer 0 without a C{stat} that fails, and their
        #: removal unlinks nothing (L{Engine._write_back}). Filled by the
        #: engine once a create committed, emptied by L{WriteFiles.get}
        #: before it creates one; empty at open, so a file a crash may have
        #: left is looked for as before. A set read on the reactor's thread
        #: and changed on the writer's: each step is atomic, and a file is
        #: taken out before it exists.
        self.fileless: set[int] = set()

    def dir_of(self, ino: int) -> str:
        return f"{self.root}/{ino >> 20:x}/{(ino >> 10) & 0x3FF:03x}"

    def path(self, ino: int) -> str:
        return f"{self.root}/{ino >> 20:x}/{(ino >> 10) & 0x3FF:03x}/{ino:x}"

    def ino_of(self, path: str) -> int | None:
        """The inode a path under the tree names, or None if it is not a data file's path."""
        rel = os.path.relpath(path, self.root).split(os.sep)
        if len(rel) != 3:
            return None
        try:
            ino = int(rel[2], 16)
        except ValueError:
            return None
        return ino if self.path(ino) == path else None


_libc: ctypes.CDLL | None = None


def _fallocate() -> Callable[[int, int, int, int], int] | None:
    """libc's fallocate(2), which Python's os module does not expose with flags."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name, use_errno=True)
        except OSError:  # pragma: no cover - no libc to load
            return None
    f = getattr(_libc, "fallocate64", None) or getattr(_libc, "fallocate", None)
    if f is None:  # pragma: no cover - not Linux/glibc
        return None
    f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    f.restype = ctypes.c_int
    return f  # type: ignore[no-any-return]


def punch_hole(fd: int, offset: int, length: int) -> None:
    """
    Make C{[offset, offset+length)} read as zeros and free its blocks.

    Uses C{FALLOC_FL_PUNCH_HOLE}; where the file system refuses it, writes
    zeros instead (1 MiB at a time, never holding more), so the result reads
    the same everywhere and only the space saving is lost.
    """
    f = _fallocate()
    if f is not None and length > 0:
        if f(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err))
    zeros = bytes(min(length, 1 << 20))
    end = offset + length
    while offset < end:
        n = os.pwrite(fd, memoryview(zeros)[: min(len(zeros), end - offset)], offset)
        offset += n


def _reraise(e: OSError) -> None:
    raise e


def _fsync_dir(path: str) -> None:
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_range(fd: int, offset: int, length: int) -> bytes:
    """
    C{length} bytes at C{offset}, blocking; beyond the file's physical end
    they read as zeros (a hole, or a size set beyond the data). Runs in a
    thread pool (or inline in tests).
    """
    data = os.pread(fd, length, offset)
    if len(data) < length:
        rest = [data]
        pos = offset + len(data)
        while pos < offset + length:
            more = os.pread(fd, offset + length - pos, pos)
            if not more:
                break
            rest.append(more)
            pos += len(more)
        data = b"".join(rest).ljust(length, b"\0")
    return data


class WriteFiles:
    """
    The writer thread's descriptors: read-write, created on first write.

    Tracks what a later C{commit} has to make durable: files with unsynced
    data (C{dirty}) and directories whose new entries (a new data file, a new
    fan-out directory) are not yet synced. A descriptor is closed only when its
    data is synced (an evicted dirty one is synced first), because an error in
    writeback is reported to the descriptors open at the time.

    @param durable: False skips every fsync (tests and throwaway stores).
    @param now: monotonic seconds, when each descriptor was last used (L{close_idle}).
    """

    def __init__(
        self,
        layout: Layout,
        durable: bool = True,
        capacity: int = 128,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.layout = layout
        self.durable = durable
        self.capacity = capacity
        self.now = now
        # Least recently used first; _last holds when each was last handed out.
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._last: dict[int, float] = {}
        # Writeback errors met syncing idle descriptors before closing them,
        # raised by the next sync of the inode (see close_idle).
        self._failed: dict[int, OSError] = {}
        self.dirty: set[int] = set()
        self._new_entries: dict[int, list[str]] = {}
        self.syncs = 0
        self.dir_syncs = 0
        # Runs a list of syncs at once (the engine's data writers), if set.
        self.runner: Callable[[list[Callable[[], object]]], None] | None = None
        # Starts a list of syncs on other threads and returns a handle, and
        # waits for one (the data writers' start_all and wait), if set.
        self.starter: Callable[[list[Callable[[], object]]], object | None] | None = None
        self.waiter: Callable[[object], BaseException | None] | None = None

    def get(self, ino: int, create: bool) -> int | None:
        """A descriptor for C{ino}'s data file, or None if it has none and C{create} is false."""
        fd = self._fds.get(ino)
        if fd is not None:
            self._fds.move_to_end(ino)
            self._last[ino] = self.now()
            return fd
        path = self.layout.path(ino)
        if create:
            self.layout.fileless.discard(ino)
            # Asked to create: most often for a new inode's first write, so
            # try to create first (one system call where opening and then
            # creating cost two and a stat of the directory).
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                # Its leaf directory is missing too.
                fd = self._create(ino, path)
            else:
                self._new_entries[ino] = [self.layout.dir_of(ino)]
        else:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
        self._fds[ino] = fd
        self._last[ino] = self.now()
        if len(self._fds) > self.capacity:
            self._evict()
        return fd

    def _create(self, ino: int, path: str) -> int:
        leaf = self.layout.dir_of(ino)
        made: list[str] = []
        d = leaf
        while not os.path.isdir(d):
            made.append(d)
            d = os.path.dirname(d)
        for d in reversed(made):
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                pass
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        # The file's entry lives in its leaf directory; each directory made
        # here has its entry in its parent. All must be synced before a
        # commit of this inode can be acknowledged.
        self._new_entries[ino] = [leaf] + [os.path.dirname(d) for d in made]
        return fd

    def _evict(self) -> None:
        """Close one descriptor, never the newest (the caller is about to use it)."""
        newest = next(reversed(self._fds))
        for ino in self._fds:
            if ino != newest and ino not in self.dirty:
                self._close(ino)
                return
        # Every cached descriptor is dirty: sync the oldest (their data and
        # the entries naming them, so nothing is left to track) and close
        # them. An eighth of the cache at once, not one: unstable writes to
        # many new files (an SMB client writing small files and never
        # flushing) otherwise paid a data sync, a directory sync and a
        # hand-off to the data writers per new file once the cache was full;
        # together the syncs run side by side and share their directories'
        # (new data files mostly sit in one leaf directory).
        group = list(itertools.islice(self._fds, max(1, self.capacity // 8)))
        self.sync(set(group))
        for ino in group:
            self._close(ino)

    def _close(self, ino: int) -> None:
        self._last.pop(ino, None)
        os.close(self._fds.pop(ino))

    def close_idle(self, idle: float) -> int:
        """
        Close the descriptors not handed out for C{idle} seconds. Those with
        unsynced data (unstable NFS writes never committed, SMB writes never
        flushed) are synced first, all at once as L{sync} does: a writeback
        error is reported to the descriptors open at the time, so it is kept
        and raised by the next sync of that inode (the client's COMMIT or
        FLUSH fails, and it writes again). Called on the writer thread between
        batches, when no data writer holds one of them (L{sync_start}'s rule).
        Returns how many were closed.
        """
        cutoff = self.now() - idle
        idle_inos = []
        for ino in self._fds:
            if self._last.get(ino, 0.0) > cutoff:
                break  # least recently used first: the rest are newer
            idle_inos.append(ino)
        dirty = {ino for ino in idle_inos if ino in self.dirty}
        if dirty:
            try:
                self.sync(dirty)
            except OSError as e:
                for ino in dirty:
                    self._failed[ino] = e
        for ino in idle_inos:
            self._close(ino)
        return len(idle_inos)

    def __len__(self) -> int:
        """Descriptors open."""
        return len(self._fds)

    def is_open(self, ino: int) -> bool:
        """Whether a descriptor of C{ino}'s data file is cached (no system call)."""
        return ino in self._fds

    def needs_sync(self, ino: int) -> bool:
        return ino in self.dirty or ino in self._new_entries or ino in self._failed

    def _sync_calls(self, inos: set[int]) -> list[Callable[[], object]]:
        """The syncs C{inos} need (their data, their new entries); forgets them as needed."""
        fds: list[int] = []
        dirs: set[str] = set()
        failed: list[Callable[[], object]] = []
        for ino in sorted(inos):
            err = self._failed.pop(ino, None)
            if err is not None:
                failed.append(functools.partial(_reraise, err))
            if ino in self.dirty:
                fd = self._fds.get(ino)
                if fd is not None:
                    fds.append(fd)
                self.dirty.discard(ino)
            dirs.update(self._new_entries.pop(ino, ()))
        self.syncs += len(fds)
        self.dir_syncs += len(dirs)
        if not self.durable:
            return failed
        calls = failed + [functools.partial(os.fdatasync, fd) for fd in fds]
        calls += [functools.partial(_fsync_dir, d) for d in sorted(dirs, key=len, reverse=True)]
        return calls

    def sync_start(self, inos: set[int]) -> object | None:
        """
        Start making C{inos} durable (as L{sync}) on the L{starter}'s threads
        and return a handle for L{sync_wait}; without a starter, sync them now
        and return None. The caller must not close or evict descriptors until
        it waited (the writer thread does nothing else meanwhile).
        """
        calls = self._sync_calls(inos)
        if not calls:
            return None
        if self.starter is None:
            for call in calls:
                call()
            return None
        return self.starter(calls)

    def sync_wait(self, handle: object) -> BaseException | None:
        """Wait for the syncs L{sync_start} started; the first error, if any."""
        assert self.waiter is not None
        return self.waiter(handle)

    def sync(self, inos: set[int]) -> None:
        """
        Make the data of C{inos} durable, and the directory entries naming
        their data files. With a L{runner}, the syncs run at once: a journaling
        file system then makes them durable with one commit and one device
        flush, where each sync after the first would otherwise cost a flush of
        its own (a new file's data, then its directory). All are done when
        this returns, whatever the order they finished in.
        """
        calls = self._sync_calls(inos)
        if len(calls) > 1 and self.runner is not None:
            self.runner(calls)
        else:
            for call in calls:
                call()

    def sync_all(self) -> None:
        self.sync(set(self.dirty) | set(self._new_entries))

    def forget(self, ino: int) -> None:
        """The inode is gone: drop its descriptor without syncing."""
        fd = self._fds.pop(ino, None)
        self._last.pop(ino, None)
        self._failed.pop(ino, None)
        if fd is not None:
            os.close(fd)
        self.dirty.discard(ino)
        self._new_entries.pop(ino, None)

    def used(self, ino: int) -> int:
        """Bytes of storage the data file occupies (C{st_blocks * 512})."""
        if self.layout.no_data or ino in self.layout.fileless:
            return 0
        fd = self._fds.get(ino)
        try:
            st = os.fstat(fd) if fd is not None else os.stat(self.layout.path(ino))
        except FileNotFoundError:
            return 0
        return st.st_blocks * 512

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._last.clear()


class ReadFiles:
    """
    The reactor thread's read-only descriptors.

    A descriptor handed to a pool thread is a C{dup}, so closing the cached one
    (eviction, the inode being freed, or L{close_idle}) never pulls it from
    under a read; every other use is on the reactor thread, which also runs
    L{close_idle}.

    @param now: monotonic seconds, when each descriptor was last used.
    """

    def __init__(
        self, layout: Layout, capacity: int = 128, now: Callable[[], float] = time.monotonic
    ) -> None:
        self.layout = layout
        self.capacity = capacity
        self.now = now
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._last: dict[int, float] = {}

    def cached(self, ino: int) -> int | None:
        """C{ino}'s descriptor if one is open here (marked used, as L{get} does), else None (no open)."""
        fd = self._fds.get(ino)
        if fd is not None:
            self._fds.move_to_end(ino)
            self._last[ino] = self.now()
        return fd

    def get(self, ino: int) -> int | None:
        fd = self.cached(ino)
        if fd is not None:
            return fd
        try:
            fd = os.open(self.layout.path(ino), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        self._fds[ino] = fd
        self._last[ino] = self.now()
        if len(self._fds) > self.capacity:
            old, old_fd = self._fds.popitem(last=False)
            self._last.pop(old, None)
            os.close(old_fd)
        return fd

    def close_idle(self, idle: float) -> int:
        """Close the descriptors not handed out for C{idle} seconds; how many were closed."""
        cutoff = self.now() - idle
        closed = 0
        for ino in list(self._fds):
            if self._last.get(ino, 0.0) > cutoff:
                break  # least recently used first: the rest are newer
            self._last.pop(ino, None)
            os.close(self._fds.pop(ino))
            closed += 1
        return closed

    def __len__(self) -> int:
        """Descriptors open."""
        return len(self._fds)

    def is_open(self, ino: int) -> bool:
        """Whether a descriptor of C{ino}'s data file is cached (no system call)."""
        return ino in self._fds

    def used(self, ino: int) -> int:
        if self.layout.no_data or ino in self.layout.fileless:
            return 0
        fd = self._fds.get(ino)
        try:
            st = os.fstat(fd) if fd is not None else os.stat(self.layout.path(ino))
        except FileNotFoundError:
            return 0
        return st.st_blocks * 512

    def forget(self, ino: int) -> None:
        fd = self.pop(ino)
        if fd is not None:
            os.close(fd)

    def pop(self, ino: int) -> int | None:
        """Drop C{ino}'s descriptor from the cache and hand it over (the caller closes it)."""
        fd = self._fds.pop(ino, None)
        self._last.pop(ino, None)
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._last.clear()
