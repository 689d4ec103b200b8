# -*- test-case-name: tests.backend.test_embedded -*-
"""
Data writes of a batch, spread over a few threads.

The writer thread runs every change's metadata; copying a large WRITE's bytes
into the page cache is most of its time (on a VM whose memory is touched for
the first time, a 1 MiB C{pwrite} costs a millisecond). L{DataWriters} writes
the large writes a batch collected (several clients writing at once) side by
side, cut into pieces, on its threads and the writer thread together, so one
writer thread does not serialise them all; the writer goes on to its sync and
commit as soon as the last piece landed. A batch's only write is written as
it is, on the writer thread (see L{DataWriters.split_lone}).

Only the writer thread calls L{DataWriters.write_all}, and it waits for it to
finish, so the descriptors it passes stay open throughout and nothing else
of the engine runs meanwhile: the engine needs no locks for this.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

__all__ = ["DataWriters", "CHUNK", "pwrite_all"]

# Writes are cut into pieces of this size; a piece is the unit of parallelism.
CHUNK = 256 * 1024


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """All of C{data} at C{offset} (C{pwrite} may write less than asked)."""
    pos = 0
    n = len(data)
    while pos < n:
        pos += os.pwrite(fd, data[pos:], offset + pos)


class _Latch:
    """Counts pieces down; keeps the first error."""

    __slots__ = ("left", "error", "done", "lock")

    def __init__(self, n: int) -> None:
        self.left = n
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.lock = threading.Lock()

    def finish(self, error: BaseException | None) -> None:
        with self.lock:
            if error is not None and self.error is None:
                self.error = error
            self.left -= 1
            if self.left == 0:
                self.done.set()


# A job: pwrite_all(fd, data, offset), or fn() when data is _NOTHING.
_NOTHING = memoryview(b"")
_Job = tuple[Callable[..., object], int, memoryview, int]
_Piece = tuple[_Job, _Latch]


class DataWriters:
    """
    C{threads} helper threads (daemons, named C{cfs-embedded-data-N}).

    @param threads: helpers besides the calling thread (0: everything inline).
    """

    def __init__(self, threads: int, chunk: int = CHUNK) -> None:
        self.threads = threads
        self.chunk = chunk
        # Cut a batch's only write in pieces too. Off by default: measured on
        # a 2-core VM, a lone 1 MiB write cost more CPU in pieces (the hand-offs)
        # and took no less time (the page-cache copy did not go faster on two
        # threads); several writes of a batch are written side by side.
        self.split_lone = False
        self._q: queue.SimpleQueue[_Piece | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self.pieces = 0
        self.parallel = 0

    def start(self) -> None:
        for i in range(self.threads):
            t = threading.Thread(target=self._work, name=f"cfs-embedded-data-{i}", daemon=True)
            t.start()
            self._workers.append(t)

    def stop(self) -> None:
        for _ in self._workers:
            self._q.put(None)
        for t in self._workers:
            t.join()
        self._workers = []

    def _work(self) -> None:
        while True:
            piece = self._q.get()
            if piece is None:
                return
            self._run(piece)

    @staticmethod
    def _run(piece: _Piece) -> None:
        (fn, fd, data, offset), latch = piece
        try:
            if data is _NOTHING:
                fn()
            else:
                fn(fd, data, offset)
        except BaseException as e:
            latch.finish(e)
        else:
            latch.finish(None)

    def run_all(self, calls: list[Callable[[], object]]) -> None:
        """
        Run C{calls} at once on the helpers and this thread (syncs of several
        files and directories: the file system can then make them durable
        with one journal commit, where one after the other costs a device
        flush each); return when all have.

        @raise OSError: the first error any call met (the others still ran).
        """
        if len(calls) <= 1 or not self._workers:
            for call in calls:
                call()
            return
        self._spread([(call, 0, _NOTHING, 0) for call in calls])

    def start_all(self, calls: list[Callable[[], object]]) -> object | None:
        """
        Start C{calls} on the helpers and return at once, with a handle for
        L{wait}; without helpers, run them here and return None (the first
        error raised). The caller does other work meanwhile (the commit).
        """
        if not self._workers:
            for call in calls:
                call()
            return None
        latch = _Latch(len(calls))
        for call in calls:
            self._q.put(((call, 0, _NOTHING, 0), latch))
        return latch

    @staticmethod
    def wait(handle: object) -> BaseException | None:
        """Wait for what L{start_all} started; the first error any call met."""
        if handle is None:
            return None
        assert isinstance(handle, _Latch)
        handle.done.wait()
        return handle.error

    def write_all(self, writes: list[tuple[int, memoryview, int]]) -> None:
        """
        Write every C{(fd, data, offset)}; return once all of it is written.

        Pieces of one write never overlap; writes that overlap each other must
        not be passed together (their order would not be kept).

        @raise OSError: the first error any piece met (the others still ran).
        """
        pieces: list[tuple[int, memoryview, int]] = []
        step = self.chunk
        for fd, data, offset in writes:
            n = len(data)
            if not self._workers or n <= step or (len(writes) == 1 and not self.split_lone):
                pieces.append((fd, data, offset))
                continue
            for pos in range(0, n, step):
                pieces.append((fd, data[pos : pos + step], offset + pos))
        self.pieces += len(pieces)
        if len(pieces) == 1 or not self._workers:
            for fd, data, offset in pieces:
                pwrite_all(fd, data, offset)
            return
        self.parallel += 1
        self._spread([(pwrite_all, fd, data, offset) for fd, data, offset in pieces])

    def _spread(self, jobs: list[_Job]) -> None:
        latch = _Latch(len(jobs))
        # The helpers take jobs from the queue; this thread takes them too
        # (the first one directly), so no job waits for a busy helper.
        for job in jobs[1:]:
            self._q.put((job, latch))
        self._run((jobs[0], latch))
        while not latch.done.is_set():
            try:
                piece = self._q.get_nowait()
            except queue.Empty:
                break
            if piece is None:  # pragma: no cover - stop() runs only after the writer's last batch
                self._q.put(None)
                break
            self._run(piece)
        latch.done.wait()
        if latch.error is not None:
            raise latch.error
