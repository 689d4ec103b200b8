# -*- test-case-name: tests.backend.test_embedded -*-
"""
L{EmbeddedBackend}: the default store, SQLite metadata and per-inode data
files under the gateway's data directory (docs/backend.rst).

Ordering. Every change goes, in call order, to the writer thread's queue
(L{_writer}), or, if it needs no fsync and the writer is idle with nothing
queued, runs at once on the reactor's thread (L{_writer.ThreadWriter.run_here});
reads run on the reactor thread, each only once every change
submitted before it has been committed (in SQLite, visible to the reader), not
necessarily answered: a change committed on this thread is answered once its
log sync returned, and the writer's batches delivered meanwhile are held
behind it (L{_run_unsynced}), but reads see them at once (L{_apply}). So a
caller that issues B after A's Deferred fired sees A's effect
(read-your-writes), and a read issued right after a change without waiting
for it (a create, then a lookup of the name) sees it too. Changes are applied
strictly in submission order; a read may see changes submitted after it (they
were concurrent with it), and may see a change before it is durable, as
L{claudefs_gateway.core.fence} already lets it: the WAL is one ordered log,
so whatever is later answered durable, having depended on that change, is
durable only with it, and a failed sync fails the change's own caller.

Durability (L{claudefs_gateway.interfaces}): a change's Deferred fires after
its batch committed with C{synchronous=FULL} (the WAL is fsynced); stable
writes and commits also fdatasync their data file (and its new directory
entries) before that commit. Unstable writes are committed with
C{synchronous=NORMAL}: in the WAL, visible to every later read, and synced by
the next FULL commit - the next commit or stable write of the file, or any
other change, whichever comes first.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet import defer, task
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from zope.interface import implementer

from claudefs_gateway import errors
from claudefs_gateway.backend.datadir import LOW_SPACE
from claudefs_gateway.backend.embedded._engine import (
    DEFER_MIN,
    UNSYNCED_OPS,
    Engine,
    Op,
    Stats,
    convert_error,
)
from claudefs_gateway.backend.embedded._files import read_range
from claudefs_gateway.backend.embedded._logsync import AioLogSync
from claudefs_gateway.backend.embedded._reader import PendingRead, Reader
from claudefs_gateway.backend.embedded._writer import InlineWriter, ThreadWriter
from claudefs_gateway.core.directsend import FileRange
from claudefs_gateway.core.fence import Fence
from claudefs_gateway.core.health import CheckResult
from claudefs_gateway.core.log import Logger
from claudefs_gateway.core.threads import ThreadPools
from claudefs_gateway.fstypes import (
    Attributes,
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

__all__ = ["EmbeddedBackend"]

T = TypeVar("T")

# An AIO sync failing with one of these was not done at all (the file
# system has no AIO fsync): the writer thread syncs instead.
_AIO_UNSUPPORTED = frozenset({errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS})

# More changes than this waiting for the writer: report degraded.
BACKLOG_DEGRADED = 10000


# An unstable write up to this size is run on the reactor's thread when the
# store's writer is idle (see EmbeddedBackend._run_here): it blocks the
# reactor for a page-cache copy and a commit without fsync, cheaper than
# two thread hand-offs. A larger one goes to the writer thread, which hands
# it to the data writers (engine.DEFER_MIN): run from the reactor, a 1 MiB
# write took 20 % less CPU but four times as long (bench.nfs_micro).
INLINE_WRITE_MAX = DEFER_MIN - 1


@implementer(IBackend)
class EmbeddedBackend:
    """
    @param data_dir: the store's directory; created (0700) if missing. The
        service tree creates and locks it (L{claudefs_gateway.backend.datadir}).
    @param reactor: for C{callFromThread} and the fallback thread pool.
    @param threads: the gateway's pools; reads the page cache cannot serve at
        once run in its C{disk} pool (else in the reactor's thread pool).
    @param now_ns: the clock, in nanoseconds.
    @param durable: False skips every fsync: for tests and throwaway stores.
    @param inline: run every operation synchronously on the calling thread,
        one transaction each, instead of on the writer thread (tests and
        offline tools: it blocks).
    @param max_batch: most changes committed in one transaction.
    @param max_fds: data-file descriptors each side keeps open.
    @param data_threads: threads that write large data writes alongside the
        writer thread (L{DataWriters}); by default one fewer than the CPUs,
        at most three (none when C{inline}).
    @param idle_fd_secs: data-file descriptors (either side's cache) unused
        this long are closed, checked every half of it on C{reactor}, so
        descriptors come back to the baseline after a burst (0: kept until
        evicted).
    @param inline_max: a regular file's bytes are kept in the metadata
        database, not in a data file, while its writes end within this many
        bytes (docs/backend.rst, "Small files inline"): a COMMIT of such a
        file is one WAL sync, and REMOVE has no data file to delete. 0 makes
        no new inline file; files already inline keep working either way.
    @param data_files: False for a meta server's store, whose files' bytes
        are on data servers (C{WROTE}): no data file is looked for, and a
        regular file's used space is 0 without a C{stat} per file (the stat
        of a file that is not there was a sixth of the meta server's time
        answering a READDIRPLUS). Only C{wrote}, never C{write} or
        C{allocate}, may be called on such a store.
    @param log_sync: a durable create, unlink, rmdir, log-only COMMIT, S3
        DELETE (C{unlink_pruning}) or small PUT (C{put_file}, bytes inline)
        that finds the writer idle is committed on the reactor's thread
        without a sync, and the log synced by Linux AIO from that thread
        (L{_logsync}); acknowledged once that sync returned. Saves the two
        thread hand-offs of a change at queue depth 1. Off, or where the
        kernel has no AIO, every durable change goes to the writer thread.
    """

    _log = Logger()

    #: A durable rename of a regular file makes that file's earlier writes
    #: durable before the rename is (L{IMetadataService.rename}).
    renames_sync_data = True

    #: C{create}, C{unlink}, C{rmdir} and C{commit} take a L{Fence}: the
    #: change is answered once committed, its log sync left in the fence.
    fences = True

    def __init__(
        self,
        data_dir: Path,
        reactor: Any,
        threads: ThreadPools | None = None,
        *,
        now_ns: Callable[[], int] = time.time_ns,
        durable: bool = True,
        inline: bool = False,
        max_batch: int = 256,
        max_fds: int = 128,
        data_threads: int | None = None,
        idle_fd_secs: float = 30.0,
        inline_max: int = 0,
        data_files: bool = True,
        log_sync: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir)
        self._idle_fd_secs = idle_fd_secs
        self._fd_sweep: task.LoopingCall | None = None
        self._sweeping = False
        self.instance_id = bytes(8)
        self._reactor = reactor
        self._threads = threads
        self._inline = inline
        self._max_fds = max_fds
        if data_threads is None:
            data_threads = 0 if inline else max(1, min(3, (os.cpu_count() or 2) - 1))
        self._engine = Engine(
            self.data_dir, now_ns, durable, max_fds, data_threads, inline_max=inline_max
        )
        self._engine.layout.no_data = not data_files
        # Times descriptors' last use on the reactor's clock (a Clock in tests).
        if reactor is not None:
            self._engine.files.now = reactor.seconds
        self._writer: ThreadWriter | InlineWriter
        if inline:
            self._writer = InlineWriter(self._engine, self._deliver)
        else:
            self._writer = ThreadWriter(self._engine, reactor, self._deliver, max_batch)
        self._reader: Reader | None = None
        self._state = "new"
        # Changes submitted, committed (visible to reads: L{_apply}) and
        # delivered (answered), each in submission order:
        # done <= committed <= submitted.
        self._submitted = 0
        self._committed = 0
        self._done = 0
        # Reads waiting for the changes submitted before them to be
        # committed: (that count, the read, its Deferred), in issue order.
        self._waiting: deque[tuple[int, Callable[..., Any], tuple[Any, ...], defer.Deferred[Any]]]
        self._waiting = deque()
        self._opening: defer.Deferred[None] | None = None
        self._close_waiters: list[defer.Deferred[None]] = []
        self._want_log_sync = log_sync and durable and not inline
        self._log_sync: AioLogSync | None = None
        # The op committed on this thread whose log sync is in flight: (op,
        # inodes freed, unsynced commits covered, its fence's Deferred when
        # the op was answered already), and the writer's batches delivered
        # meanwhile, held to keep the order callers see (committed, and
        # applied for reads: L{_apply}).
        self._syncing: tuple[Op, list[int], int, defer.Deferred[None] | None] | None = None
        self._sync_done: defer.Deferred[None] | None = None
        self._held: list[list[Op]] = []

    @property
    def stats(self) -> Stats:
        """The writer's counters (batches, commits, fsyncs...), for tests and benchmarks."""
        return self._engine.stats

    # -- lifecycle ------------------------------------------------------------------

    def open(self) -> defer.Deferred[None]:
        if self._state != "new":
            return defer.fail(errors.IO("store already opened"))
        self._state = "opening"
        self._writer.start()
        d = self._writer.call(self._engine.open)
        d.addCallbacks(self._opened, self._open_failed)
        self._opening = d
        return d

    def _opened(self, result: tuple[bytes, sqlite3.Connection, int]) -> None:
        iid, conn, recovered = result
        self.instance_id = iid
        self._reader = Reader(conn, self._engine.layout, iid, self.data_dir, self._max_fds)
        self._state = "open"
        if self._want_log_sync:
            self._log_sync = AioLogSync.create(self._reactor)
        if self._idle_fd_secs > 0 and self._reactor is not None:
            self._reader.files.now = self._reactor.seconds
            self._fd_sweep = task.LoopingCall(self._close_idle_fds)
            self._fd_sweep.clock = self._reactor
            self._fd_sweep.start(max(self._idle_fd_secs / 2, 0.5), now=False).addErrback(
                lambda f: self._log.failure("closing idle data-file descriptors", f)
            )
        self._log.info(
            "embedded store open at {path}; recovery finished {recovered} file changes",
            path=str(self.data_dir),
            recovered=recovered,
        )

    def _open_failed(self, f: Failure) -> Failure:
        self._state = "closed"
        self._writer.call(lambda: None, stop=True)
        if f.check(errors.FSError):
            return f
        self._log.failure("opening the embedded store at {path}", f, path=str(self.data_dir))
        return Failure(convert_error(f.value))

    def close(self) -> defer.Deferred[None]:
        """Finish every queued change, sync every file, checkpoint, close. Safe to call twice."""
        if self._state in ("new", "closed"):
            self._state = "closed"
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._close_waiters.append(d)
        if len(self._close_waiters) == 1:
            defer.Deferred.fromCoroutine(self._close()).addBoth(self._closed)
        return d

    async def _close(self) -> None:
        if self._state == "opening":
            assert self._opening is not None
            try:
                await self._opening
            except errors.FSError:
                return
        if self._state != "open":
            return
        self._state = "closing"
        sweep, self._fd_sweep = self._fd_sweep, None
        if sweep is not None and sweep.running:
            sweep.stop()
        try:
            if self._sync_done is not None:
                # A change whose log sync is in flight: answered first.
                await self._sync_done
            if self._log_sync is not None:
                self._log_sync.close()
                self._log_sync = None
            # Queued after every change submitted so far: by the time it
            # fires, they are all delivered, and so is every read that waited.
            await self._writer.call(self._engine.close, stop=True)
        finally:
            self._writer.join()
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            self._state = "closed"
            self._log.info("embedded store closed at {path}", path=str(self.data_dir))

    def _closed(self, result: None | Failure) -> None:
        waiters, self._close_waiters = self._close_waiters, []
        if isinstance(result, Failure):
            self._log.failure("closing the embedded store", result)
            result = Failure(convert_error(result.value))
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)

    def check(self) -> CheckResult:
        """Health: open, writer alive, last commit succeeded, space left on the device."""
        if self._state != "open":
            return CheckResult.unhealthy("store not open")
        if not self._writer.alive:
            return CheckResult.unhealthy("store writer stopped")
        if self._engine.stats.last_batch_failed:
            return CheckResult.unhealthy("store commits failing")
        try:
            st = os.statvfs(self.data_dir)
        except OSError:
            return CheckResult.unhealthy("store directory unreadable")
        free = st.f_bavail * st.f_frsize
        if free < LOW_SPACE:
            return CheckResult.degraded(f"low disk space: {free // (1024 * 1024)} MiB free")
        if self._submitted - self._done > BACKLOG_DEGRADED:
            return CheckResult.degraded("store write queue backlog")
        return CheckResult.healthy()

    def _close_idle_fds(self) -> None:
        """
        Close the data-file descriptors unused for C{idle_fd_secs}: the
        reader's here, on the reactor thread that owns them (reads in pool
        threads hold a C{dup}); the writer's on the writer thread, between
        batches, when no data writer uses one, syncing those with unsynced
        data first (one such call queued at a time).
        """
        if self._state != "open":
            return
        idle = self._idle_fd_secs
        if self._reader is not None:
            self._reader.files.close_idle(idle)
        if self._sweeping:
            return
        self._sweeping = True
        d = self._writer.call(self._engine.files.close_idle, idle)

        def done(result: object) -> None:
            self._sweeping = False
            if isinstance(result, Failure):
                self._log.failure("closing idle data-file descriptors", result)

        d.addBoth(done)

    def open_fds(self) -> tuple[int, int]:
        """Data-file descriptors open: (writer's, reader's), for tests and the soak."""
        return len(self._engine.files), len(self._reader.files) if self._reader else 0

    # -- plumbing ---------------------------------------------------------------------

    def _submit(
        self,
        fn: Callable[..., Any],
        *args: Any,
        durable: bool = True,
        ino: int | None = None,
        fence: Fence | None = None,
    ) -> defer.Deferred[Any]:
        if self._state != "open":
            return defer.fail(errors.IO("store is not open"))
        if durable and self._log_sync is not None and fn in UNSYNCED_OPS:
            here = self._run_unsynced(fn, args, ino, fence)
            if here is not None:
                return here
        op = Op(fn, args, durable, ino)
        d: defer.Deferred[Any] = defer.Deferred()
        op.d = d
        self._submitted += 1
        self._writer.submit(op)
        return d

    def _run_unsynced(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        ino: int | None,
        fence: Fence | None = None,
    ) -> defer.Deferred[Any] | None:
        """
        Commit a durable change on this thread without a sync, when the
        writer is idle and every op submitted before was delivered
        (L{ThreadWriter.run_unsynced}), then sync the log with
        L{AioLogSync}; the Deferred fires once that sync returned. None when
        it could not: nothing done, the op is to be submitted.

        One such sync in flight at a time: a change arriving meanwhile goes
        to the writer thread, whose group commit batches concurrent clients
        (a queue depth of 1 is what this is for).

        With a C{fence} (L{claudefs_gateway.core.fence}) the Deferred fires
        once the change is committed, and C{fence.sync} once the log sync
        returned: the caller's work after the change overlaps the sync.
        """
        if self._done < self._submitted or self._waiting or self._syncing is not None:
            return None
        assert isinstance(self._writer, ThreadWriter) and self._log_sync is not None
        op = Op(fn, args, True, ino)
        d: defer.Deferred[Any] = defer.Deferred()
        op.d = d
        self._submitted += 1
        result = self._writer.run_unsynced(op)
        if result is None:
            self._submitted -= 1
            return None
        freed, covered = result
        fd = self._engine.wal_fd
        if not covered or fd is None:
            self._deliver([op], freed)
            return d
        early: defer.Deferred[None] | None = None
        if fence is not None:
            early = fence.sync = defer.Deferred()
        self._syncing = (op, freed, covered, early)
        try:
            sync = self._log_sync.sync(fd)
        except OSError as e:
            # The kernel would not take it (no AIO fsync here): this and
            # every later change go to the writer thread, which syncs now.
            self._log.warn("log sync by AIO refused ({error}); the writer syncs", error=e)
            self._log_sync.close()
            self._log_sync = None
            sync = self._writer.call(os.fdatasync, fd)
        self._sync_done = sync.addErrback(self._aio_unsupported, fd).addBoth(self._log_synced)
        if early is not None:
            # Answered now; what the writer delivers meanwhile is still held
            # behind the sync (L{_deliver}), and reads see the change.
            self._deliver([op], freed)
        else:
            # Committed: reads see it now (L{_read}), its caller hears of it
            # once the sync returned (L{_log_synced}).
            self._apply([op], freed)
        return d

    def _aio_unsupported(self, f: Failure, fd: int) -> Any:
        """
        An AIO sync that the kernel accepted but did not do (C{EINVAL},
        C{EOPNOTSUPP}: no AIO fsync for this file system): the writer syncs
        instead, and every later durable change goes to the writer. Any
        other error (C{EIO}) fails the change: a second sync after a failed
        one may report success for data the kernel dropped.
        """
        err = f.value
        if not isinstance(err, OSError) or err.errno not in _AIO_UNSUPPORTED:
            return f
        self._log.warn("log sync by AIO not done ({error}); the writer syncs", error=err)
        if self._log_sync is not None:
            self._log_sync.close()
            self._log_sync = None
        return self._writer.call(os.fdatasync, fd)

    def _log_synced(self, result: None | Failure) -> None:
        """The log sync of L{_run_unsynced} returned: answer its op, then what was held."""
        assert self._syncing is not None
        op, freed, covered, early = self._syncing
        self._syncing = None
        self._sync_done = None
        failed: Exception | None = None
        if isinstance(result, Failure):
            # Committed, maybe not durable: the caller hears of an I/O error
            # (NFS3ERR_IO), and the engine's log stays marked unsynced, so
            # the next durable change syncs it again.
            self._log.warn("embedded store log sync failed: {error}", error=result.value)
            failed = convert_error(result.value)
        else:
            # Counted here, on the reactor, even when the writer holds the
            # engine (its flag is then cleared by the next durable commit).
            self._engine.stats.reactor_log_syncs += 1
            if isinstance(self._writer, ThreadWriter):
                self._writer.log_synced(covered)
        if early is not None:
            # The op was answered when committed; its fence hears of the sync.
            if failed is not None:
                early.errback(failed)
            else:
                early.callback(None)
        else:
            if failed is not None:
                op.ok, op.value = False, failed
            self._deliver([op], freed, applied=True)
        held, self._held = self._held, []
        for batch in held:
            self._deliver(batch, [], applied=True)
        if isinstance(self._writer, ThreadWriter):
            # Freed data files (an unlink's), once nothing waits for the reply.
            self._writer.after_batch_here()

    def _change(
        self,
        fn: Callable[..., Any],
        *args: Any,
        durable: bool,
        ino: int | None = None,
        fence: Fence | None = None,
    ) -> defer.Deferred[Any]:
        """
        Submit a metadata change; one that need not be durable (SMB's, made
        durable by a FLUSH or the background flush) runs on this thread when
        the writer is idle (L{_run_here}): it makes no fsync, so the two
        thread hand-offs cost more than the SQLite transaction itself.
        """
        if not durable:
            d = self._run_here(fn, *args, ino=ino)
            if d is not None:
                return d
        return self._submit(fn, *args, durable=durable, ino=ino, fence=fence)

    def _run_here(
        self, fn: Callable[..., Any], *args: Any, ino: int | None = None
    ) -> defer.Deferred[Any] | None:
        """
        Run an op that needs no fsync on this (the reactor's) thread when
        the writer is idle and every op submitted before it was delivered
        (L{ThreadWriter.run_here}): the Deferred it returns has fired. None
        when it could not, and the op is to be submitted.
        """
        if (
            self._state != "open"
            or self._done < self._submitted
            or self._waiting
            or not isinstance(self._writer, ThreadWriter)
        ):
            return None
        op = Op(fn, args, False, ino)
        d: defer.Deferred[Any] = defer.Deferred()
        op.d = d
        self._submitted += 1
        if not self._writer.run_here(op):
            self._submitted -= 1
            return None
        return d

    def _deliver(self, batch: list[Op], freed: list[int], applied: bool = False) -> None:
        """
        On the reactor thread: a batch committed (or failed); fire its
        Deferreds in order. C{applied}: L{_apply} already ran for it.
        """
        if self._syncing is not None and batch[0] is not self._syncing[0]:
            # Submitted after the op whose log sync is in flight: answered
            # after it, but committed (FULL) and so visible to reads now.
            if not applied:
                self._apply(batch, freed)
            self._held.append(batch)
            return
        if not applied:
            self._forget_kept(batch, freed)
        for op in batch:
            self._done += 1
            if not applied:
                self._committed += 1
            if op.failure is not None:
                self._log.failure("embedded store operation {op} failed", op.failure, op=op.name)
            elif op.warning:
                self._log.warn("embedded store commit failed: {error}", error=op.warning)
            if op.ok:
                op.d.callback(op.value)
            else:
                op.d.errback(op.value)
            if self._waiting:
                self._run_waiting()

    def _forget_kept(self, batch: list[Op], freed: list[int]) -> None:
        """
        Before any read or caller hears of the committed C{batch}: inode rows
        the reader kept may predate it. Those an op wrote are replaced by
        what it wrote; an op that failed (or whose rows are not known) may
        still have committed some (a COMMIT whose data sync failed), so then
        every kept row goes. The reader's descriptors of freed inodes close.
        """
        reader = self._reader
        if reader is None:
            return
        for op in batch:
            if op.ok and op.changed is not None:
                reader.changed(op.changed)
            else:
                reader.forget()
        if freed:
            fds = [fd for fd in map(reader.files.pop, freed) if fd is not None]
            if fds:
                self._close_freed(fds)

    def _apply(self, batch: list[Op], freed: list[int]) -> None:
        """
        A committed C{batch} whose answer waits for a log sync (its own, or
        an earlier op's: L{_run_unsynced}): reads see it from now on
        (L{_read} waits for commits, not answers); L{_deliver} answers it
        later with C{applied}.
        """
        self._forget_kept(batch, freed)
        self._committed += len(batch)
        if self._waiting:
            self._run_waiting()

    def _close_freed(self, fds: list[int]) -> defer.Deferred[None] | None:
        """
        Close the reader's descriptors of freed inodes, off the reactor's
        thread: the last close of a data file the writer has unlinked frees
        it, and ext4 may make that wait for the journal commit other threads'
        fsyncs are in (S3's GET then DELETE of a small object spent a sixth
        of the reactor's busy time in this close).
        """

        def work() -> None:
            for fd in fds:
                os.close(fd)

        if self._inline:
            work()
            return None
        if self._threads is not None:
            d = self._threads.run("disk", work)
        else:
            d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), work)
        return d.addErrback(lambda f: self._log.failure("closing freed data-file descriptors", f))

    def _read(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """
        Run read C{fn} once every change submitted before it is committed,
        not answered: the answer of one may wait for a log sync (module
        docstring, "Ordering").
        """
        if self._state != "open":
            return defer.fail(errors.IO("store is not open"))
        seq = self._submitted
        if self._committed >= seq and not self._waiting:
            return self._run_read(fn, args)
        d: defer.Deferred[Any] = defer.Deferred()
        self._waiting.append((seq, fn, args, d))
        return d

    def _run_waiting(self) -> None:
        while self._waiting and self._waiting[0][0] <= self._committed:
            _, fn, args, d = self._waiting.popleft()
            self._run_read(fn, args).chainDeferred(d)

    def _run_read(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> defer.Deferred[Any]:
        assert self._reader is not None
        try:
            result = fn(self._reader, *args)
        except errors.FSError:
            return defer.fail()
        except Exception as e:
            if not isinstance(e, OverflowError):
                self._log.failure("embedded store read {op} failed", op=fn.__name__)
            return defer.fail(convert_error(e))
        if isinstance(result, PendingRead):
            return self._finish_read(result)
        return defer.succeed(result)

    def _finish_read(self, p: PendingRead) -> defer.Deferred[tuple[bytes, bool]]:
        def work() -> tuple[bytes, bool]:
            try:
                return read_range(p.fd, p.offset, p.length), p.eof
            finally:
                os.close(p.fd)

        if self._inline:
            try:
                return defer.succeed(work())
            except OSError as e:
                return defer.fail(convert_error(e))
        if self._threads is not None:
            d = self._threads.run("disk", work)
        else:
            d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), work)
        return d.addErrback(self._read_failed)

    def _read_failed(self, f: Failure) -> Failure:
        if not f.check(errors.FSError):
            self._log.failure("embedded store data read failed", f)
            return Failure(convert_error(f.value))
        return f

    # -- IMetadataService -----------------------------------------------------------------

    def root(self) -> defer.Deferred[Attributes]:
        return self._read(Reader.getattr, 1)

    def getattr(self, ino: int) -> defer.Deferred[Attributes]:
        return self._read(Reader.getattr, ino)

    def lookup(self, parent: int, name: bytes) -> defer.Deferred[Attributes]:
        return self._read(Reader.lookup, parent, name)

    def dir_after(self, ino: int) -> Attributes | None:
        """
        Directory C{ino} as the newest committed change left it, if the
        reader keeps its row (every op's rows replace the kept ones before
        any read or its caller hears of it: L{_forget_kept}), else None. The vfs caches it
        after a namespace change instead of reading the directory again.
        """
        if self._reader is None or self._state != "open":
            return None
        return self._reader.kept_dir(ino)

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
        fence: Fence | None = None,
    ) -> defer.Deferred[Attributes]:
        # Not durable: committed without a flush; the WAL is one ordered log,
        # so the next durable commit makes this one durable too.
        return self._change(
            Engine.op_create,
            parent,
            bytes(name),
            type,
            mode,
            uid,
            gid,
            rdev,
            durable=durable,
            fence=fence,
        )

    def symlink(
        self, parent: int, name: bytes, target: bytes, mode: int, uid: int, gid: int
    ) -> defer.Deferred[Attributes]:
        return self._submit(Engine.op_symlink, parent, bytes(name), bytes(target), mode, uid, gid)

    def link(self, ino: int, parent: int, name: bytes) -> defer.Deferred[Attributes]:
        return self._submit(Engine.op_link, ino, parent, bytes(name))

    def unlink(
        self, parent: int, name: bytes, durable: bool = True, fence: Fence | None = None
    ) -> defer.Deferred[Attributes]:
        # Not durable: a freed file's data goes only once a durable commit
        # covers the unlink (Engine.run_batch), so a lost log tail cannot
        # leave a name whose data is gone.
        return self._change(Engine.op_unlink, parent, bytes(name), durable=durable, fence=fence)

    def unlink_pruning(
        self,
        parent: int,
        name: bytes,
        dirs: tuple[tuple[int, bytes, int], ...],
        durable: bool = True,
    ) -> defer.Deferred[tuple[Attributes, tuple[Attributes, ...]]]:
        """
        Unlink a non-directory C{name}, then remove each of C{dirs}
        (parent, name, inode; innermost first) that is still that inode and
        is left empty, stopping at the first that is not: one change. Fires
        with the unlinked inode after and the directories removed (after),
        in order. S3's DELETE (L{claudefs_gateway.vfs.VFS.remove_pruning}).
        """
        return self._change(
            Engine.op_unlink_prune,
            parent,
            bytes(name),
            tuple((p, bytes(n), i) for p, n, i in dirs),
            durable=durable,
        )

    def rmdir(
        self, parent: int, name: bytes, durable: bool = True, fence: Fence | None = None
    ) -> defer.Deferred[Attributes]:
        return self._change(Engine.op_rmdir, parent, bytes(name), durable=durable, fence=fence)

    def rename(
        self,
        src_parent: int,
        src_name: bytes,
        dst_parent: int,
        dst_name: bytes,
        durable: bool = True,
    ) -> defer.Deferred[RenameResult]:
        return self._change(
            Engine.op_rename,
            src_parent,
            bytes(src_name),
            dst_parent,
            bytes(dst_name),
            durable=durable,
        )

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
    ) -> defer.Deferred[PutResult]:
        """
        Create a regular file holding C{data} and extended attributes
        C{xattrs}, modified at C{mtime_ns}, and put it at C{name} in
        C{parent}, replacing a regular file of that name: one durable,
        atomic change (one store operation and one flush), as a create, a
        write, setxattrs and a rename over the name would be. C{dirs}:
        directories (name, mode, uid, gid, xattrs) to make first, one in
        the other under C{parent}, the file going in the last. Fires with
        the new file, the replaced one (if any) and the directories made
        (L{PutResult}), once durable: its data too. S3's small PUT
        (L{claudefs_gateway.vfs.VFS.put_file}).

        @raise IsDir: the name is a directory. @raise Exists: one of C{dirs}
            exists. (NotFound, NotDir: C{parent}.)
        """
        return self._submit(
            Engine.op_put_file,
            parent,
            tuple(
                (bytes(n), m, u, g, tuple((bytes(k), bytes(v)) for k, v in x))
                for n, m, u, g, x in dirs
            ),
            bytes(name),
            mode,
            uid,
            gid,
            bytes(data),
            tuple((bytes(n), bytes(v)) for n, v in xattrs),
            mtime_ns,
        )

    def setattr(
        self,
        ino: int,
        changes: SetAttrs,
        guard_ctime_ns: int | None = None,
        durable: bool = True,
    ) -> defer.Deferred[Attributes]:
        same = self._same_size(ino, changes, guard_ctime_ns)
        if same is not None:
            return defer.succeed(same)
        # Not durable: still durable if it cuts data (Engine.run_batch), so
        # a size change always goes to the writer thread (no fsync here).
        if not durable and changes.size is None:
            return self._change(
                Engine.op_setattr, ino, changes, guard_ctime_ns, durable=False, ino=ino
            )
        return self._submit(
            Engine.op_setattr, ino, changes, guard_ctime_ns, durable=durable, ino=ino
        )

    def sync(self) -> defer.Deferred[None]:
        """
        Make every change committed so far durable (one fsync of the log if
        any change was committed without; none otherwise). Fires once done.
        """
        return self._submit(Engine.op_sync)

    def _same_size(
        self, ino: int, changes: SetAttrs, guard_ctime_ns: int | None
    ) -> Attributes | None:
        """
        The attributes of a regular file that a SETATTR of its own size, and
        nothing else, leaves unchanged (L{Engine.op_setattr} writes nothing
        for it either: POSIX ftruncate, RFC 1813 SETATTR and RFC 5661 18.30.4
        tie the times and change attribute to the size changing), answered
        here on the reactor without a round trip through the writer thread;
        or None when the writer must decide (anything else to change, a
        guard that does not match, any change still in flight, an error to
        report). libnfs sends one after every O_TRUNC create.
        """
        size = changes.size
        if (
            size is None
            or self._reader is None
            or self._state != "open"
            or self._done < self._submitted
            or self._waiting
            or changes != SetAttrs(size=size)
        ):
            return None
        try:
            a = self._reader.getattr(ino)
        except Exception:
            return None
        if not a.is_reg or a.size != size:
            return None
        if guard_ctime_ns is not None and guard_ctime_ns != a.ctime_ns:
            return None
        return a

    def readdir(
        self, dir: int, cookie: int, verifier: bytes, count: int, with_attrs: bool = False
    ) -> defer.Deferred[DirPage]:
        return self._read(Reader.readdir, dir, cookie, verifier, count, with_attrs)

    def readdir_cached(
        self,
        dir: int,
        cookie: int,
        verifier: bytes,
        count: int,
        cached: Callable[[list[int]], list[Attributes | None]],
    ) -> defer.Deferred[tuple[DirPage, bool]]:
        """
        L{readdir} with attributes, those C{cached} has taken from it (the
        vfs's attribute cache, which every change here updates): a listing
        right after its files were made or looked at reads only names
        (L{Reader.readdir_cached}). Fires with the page and whether its
        attributes are C{cached}'s.
        """
        return self._read(Reader.readdir_cached, dir, cookie, verifier, count, cached)

    def readlink(self, ino: int) -> defer.Deferred[bytes]:
        return self._read(Reader.readlink, ino)

    def statfs(self) -> defer.Deferred[FSStat]:
        return self._read(Reader.statfs)

    def getxattr(self, ino: int, name: bytes) -> defer.Deferred[bytes]:
        return self._read(Reader.getxattr, ino, name)

    def setxattr(
        self,
        ino: int,
        name: bytes,
        value: bytes,
        create: bool | None = None,
        durable: bool = True,
    ) -> defer.Deferred[None]:
        return self._change(
            Engine.op_setxattr, ino, bytes(name), bytes(value), create, durable=durable
        )

    def listxattr(self, ino: int) -> defer.Deferred[list[bytes]]:
        return self._read(Reader.listxattr, ino)

    def removexattr(self, ino: int, name: bytes) -> defer.Deferred[None]:
        return self._submit(Engine.op_removexattr, ino, bytes(name))

    def usage(self, kind: str, id: int) -> defer.Deferred[Usage]:
        return self._read(Reader.usage, kind, id)

    def all_usage(self, kind: str) -> defer.Deferred[dict[int, Usage]]:
        return self._read(Reader.all_usage, kind)

    def get_quota(self, kind: str, id: int) -> defer.Deferred[QuotaLimits | None]:
        return self._read(Reader.get_quota, kind, id)

    def set_quota(self, kind: str, id: int, limits: QuotaLimits | None) -> defer.Deferred[None]:
        return self._submit(Engine.op_set_quota, kind, id, limits)

    def list_quotas(self, kind: str) -> defer.Deferred[dict[int, QuotaLimits]]:
        return self._read(Reader.list_quotas, kind)

    def get_state(self, key: str) -> defer.Deferred[bytes | None]:
        return self._read(Reader.get_state, key)

    def set_state(self, key: str, value: bytes | None) -> defer.Deferred[None]:
        return self._submit(Engine.op_set_state, key, None if value is None else bytes(value))

    # -- IDataService -------------------------------------------------------------------

    def read(self, ino: int, offset: int, length: int) -> defer.Deferred[tuple[bytes, bool]]:
        return self._read(Reader.read, ino, offset, length)

    def read_now(
        self, ino: int, offset: int, length: int, ranged: bool = False
    ) -> tuple[bytes | FileRange, bool] | None:
        """
        L{read}'s answer when it is at hand without waiting (every change
        committed, the bytes in the page cache or inline), else L{None}:
        then call L{read}, which also raises what this does not (the NFS
        READ fast path; the same L{Reader.read} as L{read}, so the same
        bytes and size). C{ranged}: a large read all in the page cache may
        answer a L{FileRange} to send at once (L{Reader.read}).
        """
        reader = self._reader
        if (
            reader is None
            or self._state != "open"
            or self._committed < self._submitted
            or self._waiting
        ):
            return None
        try:
            result = reader.read(ino, offset, length, ranged)
        except Exception:
            return None  # read() raises it, converted and logged
        if isinstance(result, PendingRead):
            os.close(result.fd)
            return None
        return result

    def write(
        self, ino: int, offset: int, data: bytes | memoryview, stable: bool
    ) -> defer.Deferred[WriteResult]:
        if not stable and len(data) <= INLINE_WRITE_MAX and not self._moves_out(ino, offset, data):
            d = self._run_here(Engine.op_write, ino, offset, data, stable, ino=ino)
            if d is not None:
                return d
        # The write runs later on another thread: a mutable buffer the caller
        # may reuse is copied now; bytes (the contract's type) are not, nor a
        # read-only view of bytes (an NFS WRITE's data in its call's record:
        # a 1 MiB copy per 1 MiB WRITE otherwise).
        if not isinstance(data, bytes) and not (
            isinstance(data, memoryview) and data.readonly and type(data.obj) is bytes
        ):
            data = bytes(data)
        return self._submit(Engine.op_write, ino, offset, data, stable, durable=stable, ino=ino)

    def _moves_out(self, ino: int, offset: int, data: bytes | memoryview) -> bool:
        """
        Whether a write may move an inline file's bytes to a data file, which
        syncs that file before its commit: not to be run on the reactor's
        thread (L{_run_here}), where the sync would stall every client.
        """
        if offset + len(data) <= self._engine.inline_max or self._engine.files.is_open(ino):
            # Within the threshold, or a data file the writer holds open (a
            # membership test, safe from this thread; at worst stale, which
            # costs a sync here, never a wrong byte): no query.
            return False
        reader = self._reader
        if reader is None or self._done < self._submitted or self._waiting:
            return False  # _run_here will not run it here anyway
        try:
            return reader.inline(ino) is not None
        except Exception:
            return True

    def wrote(
        self, ino: int, offset: int, length: int, what: int, durable: bool = True, mtime_ns: int = 0
    ) -> defer.Deferred[WriteResult]:
        """
        The metadata half of a write (0), allocate (1) or deallocate (2) whose
        bytes live on a data server (the meta server's WROTE opcode; see
        L{Engine.op_wrote}). Durable when it fires if C{durable}, else (an
        unstable write's) by the next commit of the inode, as unstable writes are.

        Not durable, it runs on this thread when the writer is idle
        (L{_change}), as an unstable write does: a WROTE is a row update, and
        handing it to the writer thread and back (two wake-ups, a pipe write)
        cost the meta server more than the update, once per 1 MiB NFS WRITE.
        """
        return self._change(
            Engine.op_wrote, ino, offset, length, what, mtime_ns, durable=durable, ino=ino
        )

    def commit(self, ino: int, fence: Fence | None = None) -> defer.Deferred[Attributes]:
        return self._submit(Engine.op_commit, ino, ino=ino, fence=fence)

    def allocate(self, ino: int, offset: int, length: int) -> defer.Deferred[Attributes]:
        return self._submit(Engine.op_allocate, ino, offset, length, ino=ino)

    def deallocate(self, ino: int, offset: int, length: int) -> defer.Deferred[Attributes]:
        return self._submit(Engine.op_deallocate, ino, offset, length, ino=ino)

    def data_ranges(
        self, ino: int, offset: int, length: int
    ) -> defer.Deferred[list[tuple[int, int]]]:
        return self._read(Reader.data_ranges, ino, offset, length)
