"""
A durable create, unlink, rmdir, log-only COMMIT, S3 DELETE or small S3 PUT
(bytes inline) that finds the embedded
store's writer idle is committed on the reactor's thread without a sync and
answered once the WAL's C{fdatasync}, submitted by Linux AIO from that
thread, has returned (L{claudefs_gateway.backend.embedded._logsync}): no
writer-thread round trip, and never an answer before the sync (RFC 1813's
stable storage for CREATE, REMOVE and COMMIT).

The store runs on the real reactor with fsync on; the AIO sync is wrapped
so a test can hold it and see what has and has not been answered meanwhile.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SkipTest, TestCase

from claudefs_gateway import errors
from claudefs_gateway.backend.embedded import EmbeddedBackend
from claudefs_gateway.backend.embedded._engine import UNSYNCED_OPS, Engine
from claudefs_gateway.backend.embedded._logsync import AioLogSync
from claudefs_gateway.backend.embedded._writer import ThreadWriter
from claudefs_gateway.core.fence import Fence
from claudefs_gateway.fstypes import FileType

ROOT = 1
REG = FileType.REG


def _aio() -> bool:
    """Whether this kernel does AIO fsync (the store then syncs from the reactor)."""
    s = AioLogSync.create(reactor)
    if s is None:
        return False
    s.close()
    return True


class AioLogSyncTests(TestCase):
    def setUp(self) -> None:
        s = AioLogSync.create(reactor)
        if s is None:
            raise SkipTest("no Linux AIO here")
        self.s = s
        self.addCleanup(s.close)

    async def test_sync_completes_on_the_reactor(self) -> None:
        path = self.mktemp()
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.addCleanup(os.close, fd)
        os.pwrite(fd, b"x" * 4096, 0)
        d = self.s.sync(fd)
        self.assertEqual(self.s.in_flight, 1)
        self.assertIsNone(await d)
        self.assertEqual(self.s.in_flight, 0)
        # Several at once, each answered.
        self.assertEqual(await defer.gatherResults([self.s.sync(fd) for _ in range(3)]), [None] * 3)

    def test_refused_sync_raises(self) -> None:
        fd = os.open(self.mktemp(), os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        with self.assertRaises(OSError) as e:
            self.s.sync(fd)
        self.assertEqual(e.exception.errno, errno.EBADF)
        self.assertEqual(self.s.in_flight, 0)


class ReactorStore(TestCase):
    """A durable store on the real reactor whose AIO syncs a test can hold."""

    timeout = 60

    async def store(self, **kw: Any) -> EmbeddedBackend:
        if not _aio():
            raise SkipTest("no Linux AIO here")
        kw.setdefault("inline_max", 4096)
        b = EmbeddedBackend(Path(self.mktemp()), reactor, durable=True, **kw)
        await b.open()
        self.addCleanup(b.close)
        self.assertIsNotNone(b._log_sync)
        return b

    def hold(self, b: EmbeddedBackend, fail: BaseException | None = None) -> list[Any]:
        """
        Hold each AIO sync: the list gets (fd, Deferred of the real sync,
        release) per sync; C{release()} lets its answer through (the first
        one failed with C{fail} if given).
        """
        assert b._log_sync is not None
        real = b._log_sync.sync
        held: list[Any] = []

        def sync(fd: int) -> defer.Deferred[None]:
            done = real(fd)
            gate: defer.Deferred[None] = defer.Deferred()

            index = len(held)

            def release() -> None:
                def answer(result: object) -> None:
                    if fail is not None and index == 0:
                        gate.errback(fail)
                    else:
                        gate.callback(None)

                if index not in released:
                    released.add(index)
                    done.addBoth(answer)

            held.append((fd, done, release))
            return gate

        released: set[int] = set()
        self.patch(b._log_sync, "sync", sync)
        # A test that failed holding a sync: let it go, so close() ends.
        self.addCleanup(lambda: [h[2]() for h in held])
        return held

    def writer_batches(self, b: EmbeddedBackend) -> list[int]:
        """The threads each Engine.run_batch ran on, from now on."""
        seen: list[int] = []
        run = b._engine.run_batch

        def recording(ops: Any, *a: Any, **kw: Any) -> Any:
            seen.append(threading.get_ident())
            return run(ops, *a, **kw)

        self.patch(b._engine, "run_batch", recording)
        return seen


class ReactorSyncTests(ReactorStore):
    async def test_create_answers_after_the_log_sync_on_the_reactor(self) -> None:
        b = await self.store()
        threads = self.writer_batches(b)
        held = self.hold(b)
        before = (b.stats.durable_commits, b.stats.log_syncs)
        d = b.create(ROOT, b"f", REG, 0o644, 0, 0)
        # Committed on this (the reactor's) thread, not answered: the sync
        # of the log (the WAL, which holds the create) is in flight.
        self.assertEqual(threads, [threading.get_ident()])
        self.assertEqual(len(held), 1)
        self.assertEqual(
            os.fstat(held[0][0]).st_ino, (b.data_dir / "meta.sqlite3-wal").stat().st_ino
        )
        self.assertNoResult(d)
        await held[0][1]
        self.assertNoResult(d)  # the real sync is back; the gate is not
        held[0][2]()
        a = await d
        self.assertEqual((await b.lookup(ROOT, b"f")).ino, a.ino)
        self.assertEqual(
            (b.stats.durable_commits, b.stats.log_syncs), (before[0] + 1, before[1] + 1)
        )
        self.assertFalse(b._engine._wal_unsynced)

    async def test_small_file_and_unlink_each_one_sync_no_writer(self) -> None:
        """
        libnfs's small file (create, unstable write, COMMIT) and its unlink:
        the create, the COMMIT and the unlink each answered after one AIO
        sync, nothing run on the writer thread; the unlink's inline row is
        left for a later batch, as on the writer (Engine.run_batch, orphans).
        """
        b = await self.store()
        threads = self.writer_batches(b)
        syncs: list[int] = []
        assert b._log_sync is not None
        real = b._log_sync.sync
        self.patch(b._log_sync, "sync", lambda fd: syncs.append(fd) or real(fd))
        f = await b.create(ROOT, b"f", REG, 0o644, 0, 0)
        await b.write(f.ino, 0, b"x" * 4096, False)
        a = await b.commit(f.ino)
        self.assertEqual((a.size, len(syncs)), (4096, 2))
        # A second COMMIT has nothing to sync, and answers at once.
        self.assertEqual((await b.commit(f.ino)).size, 4096)
        self.assertEqual(len(syncs), 2)
        gone = await b.unlink(ROOT, b"f")
        self.assertEqual((gone.nlink, len(syncs)), (0, 3))
        me = threading.get_ident()
        self.assertEqual(set(threads), {me})
        self.assertEqual(b._engine._orphans, [f.ino])
        with self.assertRaises(errors.NotFound):
            await b.lookup(ROOT, b"f")

    async def test_unlinked_data_file_goes_only_after_the_sync(self) -> None:
        """
        A freed file's data file is deleted once the unlink is durable, not
        before (a power loss taking the log's tail brings the name back with
        its bytes).
        """
        b = await self.store(inline_max=0)
        f = await b.create(ROOT, b"f", REG, 0o644, 0, 0)
        await b.write(f.ino, 0, b"data", True)
        path = b._engine.layout.path(f.ino)
        self.assertTrue(os.path.exists(path))
        held = self.hold(b)
        d = b.unlink(ROOT, b"f")
        self.assertEqual(len(held), 1)
        await held[0][1]
        self.assertTrue(os.path.exists(path))
        held[0][2]()
        self.assertEqual((await d).nlink, 0)
        # Deleted right after the reply went (the same reactor turn).
        await task.deferLater(reactor, 0, lambda: None)
        self.assertFalse(os.path.exists(path))

    async def test_writer_batches_wait_for_the_sync_in_flight(self) -> None:
        """
        A change made while a sync is in flight goes to the writer thread;
        answered before the first one's sync returned, it is held: callers
        hear in the order they called.
        """
        b = await self.store()
        held = self.hold(b)
        handed: defer.Deferred[None] = defer.Deferred()
        assert isinstance(b._writer, ThreadWriter)
        deliver = b._writer.deliver

        def delivering(batch: Any, freed: Any) -> None:
            deliver(batch, freed)
            if not handed.called:
                handed.callback(None)

        b._writer.deliver = delivering
        order: list[str] = []
        first = b.create(ROOT, b"a", REG, 0o644, 0, 0)
        first.addCallback(lambda r: order.append("a") or r)
        second = b.create(ROOT, b"b", REG, 0o644, 0, 0)
        second.addCallback(lambda r: order.append("b") or r)
        self.assertEqual(len(held), 1)
        # The writer commits "b" (FULL) and hands it back; it waits.
        await handed
        self.assertEqual(len(b._held), 1)
        self.assertEqual(order, [])
        held[0][2]()
        await defer.gatherResults([first, second])
        self.assertEqual(order, ["a", "b"])

    async def test_s3_put_and_delete_on_the_reactor(self) -> None:
        """
        S3's small PUT (put_file, bytes inline) and DELETE (unlink_pruning)
        are committed on the reactor and answered after the log's sync; a
        PUT whose bytes go to a data file (synced before its commit) goes to
        the writer thread.
        """
        b = await self.store()
        threads = self.writer_batches(b)
        held = self.hold(b)
        me = threading.get_ident()
        d = b.put_file(
            ROOT,
            b"k",
            0o644,
            0,
            0,
            b"x" * 4096,
            ((b"user.m", b"v"),),
            10**18,
            dirs=((b"p", 0o755, 0, 0, ()),),
        )
        self.assertEqual((threads, len(held)), ([me], 1))
        self.assertNoResult(d)
        held[0][2]()
        put = await d
        self.assertEqual(put.source.size, 4096)
        (made,) = put.made
        d = b.unlink_pruning(made.ino, b"k", ((ROOT, b"p", made.ino),))
        self.assertEqual((threads, len(held)), ([me, me], 2))
        self.assertNoResult(d)
        held[1][2]()
        gone, removed = await d
        self.assertEqual((gone.nlink, [a.ino for a in removed]), (0, [made.ino]))
        with self.assertRaises(errors.NotFound):
            await b.lookup(ROOT, b"p")
        # Larger than inline: to the writer (FULL commit, data file synced).
        big = await b.put_file(ROOT, b"big", 0o644, 0, 0, b"y" * 8192, (), 10**18)
        self.assertEqual(big.source.size, 8192)
        self.assertEqual(len(held), 2)
        self.assertNotEqual(threads[-1], me)
        self.assertEqual((await b.read(big.source.ino, 0, 9000))[0], b"y" * 8192)

    async def test_reads_answered_while_an_earlier_change_syncs(self) -> None:
        """
        A read waits for every change submitted before it to be committed,
        not answered: one issued while another client's create is syncing
        is answered before that sync returns, and sees the create; the
        create itself is still answered only after its sync.
        """
        b = await self.store()
        other = await b.create(ROOT, b"other", REG, 0o644, 0, 0)
        held = self.hold(b)
        d = b.create(ROOT, b"f", REG, 0o644, 0, 0)
        self.assertEqual(len(held), 1)
        # An unrelated read, and one of the name being created.
        self.assertEqual(self.successResultOf(b.getattr(other.ino)).ino, other.ino)
        seen = self.successResultOf(b.lookup(ROOT, b"f"))
        names = self.successResultOf(b.readdir(ROOT, 0, b"", 100))
        self.assertIn(b"f", [e.name for e in names.entries])
        self.assertNoResult(d)
        held[0][2]()
        self.assertEqual((await d).ino, seen.ino)

    async def test_s3_get_while_another_put_syncs(self) -> None:
        """
        S3's 4 KiB workload: a GET (read_now, then read) of one object while
        another client's small PUT is syncing is answered at once.
        """
        b = await self.store()
        a = await b.put_file(ROOT, b"a", 0o644, 0, 0, b"a" * 4096, (), 10**18)
        held = self.hold(b)
        d = b.put_file(ROOT, b"b", 0o644, 0, 0, b"b" * 4096, (), 10**18)
        self.assertEqual(len(held), 1)
        self.assertEqual(b.read_now(a.source.ino, 0, 8192), (b"a" * 4096, True))
        self.assertEqual(self.successResultOf(b.read(a.source.ino, 0, 8192))[0], b"a" * 4096)
        got = self.successResultOf(b.lookup(ROOT, b"b"))
        self.assertEqual(self.successResultOf(b.read(got.ino, 0, 8192))[0], b"b" * 4096)
        self.assertNoResult(d)
        held[0][2]()
        self.assertEqual((await d).source.ino, got.ino)

    async def test_reads_see_held_writer_batches(self) -> None:
        """
        A change the writer committed while an earlier change's sync is in
        flight is held (answered after that sync), but a read issued after
        it was submitted is answered once it is committed, and sees it.
        """
        b = await self.store()
        held = self.hold(b)
        first = b.create(ROOT, b"a", REG, 0o644, 0, 0)
        second = b.create(ROOT, b"b", REG, 0o644, 0, 0)
        self.assertEqual(len(held), 1)
        # Issued before the writer committed "b": waits for that commit.
        look = b.lookup(ROOT, b"b")
        while not b._held:
            await task.deferLater(reactor, 0.001, lambda: None)
        self.assertNoResult(first)
        self.assertNoResult(second)
        seen = self.successResultOf(look)
        self.assertEqual(self.successResultOf(b.lookup(ROOT, b"a")).type, REG)
        held[0][2]()
        self.assertEqual((await second).ino, seen.ino)
        await first

    async def test_failed_sync_fails_its_change_though_reads_saw_it(self) -> None:
        """
        Reads may see a change before its sync returned (as through a
        fence); its own caller still hears of a failed sync.
        """
        b = await self.store()
        held = self.hold(b, fail=OSError(errno.EIO, "injected"))
        d = b.create(ROOT, b"f", REG, 0o644, 0, 0)
        self.assertEqual(self.successResultOf(b.lookup(ROOT, b"f")).type, REG)
        self.assertNoResult(d)
        held[0][2]()
        await self.assertFailure(d, errors.IO)
        self.flushLoggedErrors(OSError)

    async def test_failed_sync_fails_the_change_and_the_next_syncs(self) -> None:
        b = await self.store()
        held = self.hold(b, fail=OSError(errno.EIO, "injected"))
        d = b.create(ROOT, b"f", REG, 0o644, 0, 0)
        held[0][2]()
        await self.assertFailure(d, errors.IO)
        self.flushLoggedErrors(OSError)
        # Committed, maybe not durable: the log stays marked unsynced, so
        # the next durable change (a COMMIT with nothing of its own) syncs.
        self.assertTrue(b._engine._wal_unsynced)
        f = await b.lookup(ROOT, b"f")
        syncs = b.stats.log_syncs
        d = b.commit(f.ino)
        self.assertEqual(len(held), 2)
        held[1][2]()
        await d
        self.assertEqual(b.stats.log_syncs, syncs + 1)
        self.assertFalse(b._engine._wal_unsynced)

    async def test_refused_aio_falls_back_to_the_writer(self) -> None:
        b = await self.store()
        assert b._log_sync is not None

        def refuse(fd: int) -> defer.Deferred[None]:
            raise OSError(errno.EINVAL, "no aio fsync")

        self.patch(b._log_sync, "sync", refuse)
        synced: list[int] = []
        real = os.fdatasync
        self.patch(os, "fdatasync", lambda fd: synced.append(fd) or real(fd))
        a = await b.create(ROOT, b"f", REG, 0o644, 0, 0)
        self.assertEqual(synced, [b._engine.wal_fd])
        self.assertIsNone(b._log_sync)
        self.assertEqual((await b.lookup(ROOT, b"f")).ino, a.ino)
        # From then on, durable changes go to the writer (a FULL commit).
        commits = b.stats.durable_commits
        await b.create(ROOT, b"g", REG, 0o644, 0, 0)
        self.assertEqual(b.stats.durable_commits, commits + 1)

    async def test_aio_sync_not_done_falls_back_to_the_writer(self) -> None:
        """
        A completion with EINVAL (no AIO fsync on this file system): the
        writer syncs the log, the change answers after it, and AIO is off.
        """
        b = await self.store()
        held = self.hold(b, fail=OSError(errno.EINVAL, "no aio fsync here"))
        synced: list[int] = []
        real = os.fdatasync
        self.patch(os, "fdatasync", lambda fd: synced.append(fd) or real(fd))
        d = b.create(ROOT, b"f", REG, 0o644, 0, 0)
        held[0][2]()
        a = await d
        self.assertEqual(synced, [b._engine.wal_fd])
        self.assertIsNone(b._log_sync)
        self.assertEqual((await b.lookup(ROOT, b"f")).ino, a.ino)

    async def test_off_keeps_the_writer(self) -> None:
        b = EmbeddedBackend(Path(self.mktemp()), reactor, durable=True, log_sync=False)
        await b.open()
        self.addCleanup(b.close)
        threads = self.writer_batches(b)
        await b.create(ROOT, b"f", REG, 0o644, 0, 0)
        self.assertIsNone(b._log_sync)
        self.assertEqual(len(threads), 1)
        self.assertNotEqual(threads[0], threading.get_ident())

    async def test_close_waits_for_the_sync_in_flight(self) -> None:
        b = await self.store()
        held = self.hold(b)
        d = b.create(ROOT, b"f", REG, 0o644, 0, 0)
        closing = b.close()
        self.assertNoResult(closing)
        held[0][2]()
        await closing
        self.assertEqual((await d).type, REG)


class FenceTests(ReactorStore):
    """
    A change given a L{Fence} is answered once committed, its log sync in
    flight, and the fence holds that sync (an NFS reply made meanwhile
    leaves after it: tests/nfs/v3/test_fence.py).
    """

    async def test_create_answered_before_its_sync_fence_after(self) -> None:
        b = await self.store()
        held = self.hold(b)
        fence = Fence()
        d = b.create(ROOT, b"f", REG, 0o644, 0, 0, fence=fence)
        self.assertEqual(len(held), 1)
        a = self.successResultOf(d)
        assert fence.sync is not None
        self.assertNoResult(fence.sync)
        # The store's own reads see the change meanwhile.
        self.assertEqual((await b.lookup(ROOT, b"f")).ino, a.ino)
        await held[0][1]
        self.assertNoResult(fence.sync)
        held[0][2]()
        self.assertIsNone(await fence.sync)
        self.assertFalse(b._engine._wal_unsynced)

    async def test_unlink_rmdir_and_commit_take_a_fence(self) -> None:
        b = await self.store()
        f = await b.create(ROOT, b"f", REG, 0o644, 0, 0)
        sub = await b.create(ROOT, b"d", FileType.DIR, 0o755, 0, 0)
        await b.write(f.ino, 0, b"x" * 4096, False)
        held = self.hold(b)
        for i, change in enumerate(
            [
                lambda fence: b.commit(f.ino, fence=fence),
                lambda fence: b.unlink(ROOT, b"f", fence=fence),
                lambda fence: b.rmdir(ROOT, b"d", fence=fence),
            ]
        ):
            fence = Fence()
            self.successResultOf(change(fence))
            self.assertEqual(len(held), i + 1)
            assert fence.sync is not None
            self.assertNoResult(fence.sync)
            held[i][2]()
            await fence.sync
        with self.assertRaises(errors.NotFound):
            await b.lookup(ROOT, b"d")
        self.assertNotEqual(sub.ino, f.ino)

    async def test_nothing_to_sync_leaves_the_fence_empty(self) -> None:
        """A COMMIT with nothing unsynced, or a change that failed, has no sync to wait for."""
        b = await self.store()
        f = await b.create(ROOT, b"f", REG, 0o644, 0, 0)
        fence = Fence()
        self.assertEqual(self.successResultOf(b.commit(f.ino, fence=fence)).ino, f.ino)
        self.assertIsNone(fence.sync)
        fence = Fence()
        self.failureResultOf(b.unlink(ROOT, b"nothing", fence=fence), errors.NotFound)
        self.assertIsNone(fence.sync)

    async def test_failed_sync_fails_the_fence_not_the_change(self) -> None:
        b = await self.store()
        held = self.hold(b, fail=OSError(errno.EIO, "injected"))
        fence = Fence()
        a = self.successResultOf(b.create(ROOT, b"f", REG, 0o644, 0, 0, fence=fence))
        held[0][2]()
        assert fence.sync is not None
        await self.assertFailure(fence.sync, errors.IO)
        self.flushLoggedErrors(OSError)
        # Committed, maybe not durable: the next durable change syncs again.
        self.assertTrue(b._engine._wal_unsynced)
        d = b.commit(a.ino)
        held[1][2]()
        await d
        self.assertFalse(b._engine._wal_unsynced)

    async def test_writer_batches_still_wait_for_the_sync(self) -> None:
        """
        A change sent to the writer while a fenced change's sync is in
        flight is answered after that sync (its callers may have seen the
        first change answered, never a later one answered before it is
        durable).
        """
        b = await self.store()
        held = self.hold(b)
        fence = Fence()
        self.successResultOf(b.create(ROOT, b"a", REG, 0o644, 0, 0, fence=fence))
        second = b.create(ROOT, b"b", REG, 0o644, 0, 0)
        self.assertEqual(len(held), 1)
        while not b._held:
            await task.deferLater(reactor, 0.001, lambda: None)
        self.assertNoResult(second)
        held[0][2]()
        assert fence.sync is not None
        await fence.sync
        self.assertEqual((await second).type, REG)

    async def test_without_a_fence_answered_after_the_sync(self) -> None:
        b = await self.store()
        held = self.hold(b)
        d = b.create(ROOT, b"f", REG, 0o644, 0, 0)
        self.assertEqual(len(held), 1)
        self.assertNoResult(d)
        held[0][2]()
        await d


class UnsyncedOpsTests(TestCase):
    def test_what_syncs_a_file_of_its_own_is_not_among_them(self) -> None:
        """
        A durable rename syncs the renamed file's data first, a truncation
        cuts data after its commit, a stable write syncs its file: none is
        committed without the log's sync.
        """
        self.assertEqual(
            UNSYNCED_OPS,
            {
                Engine.op_create,
                Engine.op_unlink,
                Engine.op_rmdir,
                Engine.op_commit,
                Engine.op_unlink_prune,
                Engine.op_put_file,
            },
        )
