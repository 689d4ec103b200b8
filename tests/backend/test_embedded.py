"""
The embedded store (L{claudefs_gateway.backend.embedded}): the contract suite,
group commit, ordering, what is synced when, persistence across reopen,
recovery, lifecycle and health, error mapping.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from claudefs_gateway import errors
from claudefs_gateway.backend.embedded import EmbeddedBackend, _files
from claudefs_gateway.backend.embedded import _engine as engine_module
from claudefs_gateway.backend.embedded import backend as backend_module
from claudefs_gateway.backend.embedded._engine import Engine
from claudefs_gateway.backend.embedded._files import Layout
from claudefs_gateway.backend.embedded._schema import SELECT_NODE, Node
from claudefs_gateway.core.health import DEGRADED, HEALTHY, UNHEALTHY
from claudefs_gateway.core.threads import ThreadPools
from claudefs_gateway.fstypes import FileType, QuotaLimits, SetAttrs, Usage
from tests.backend.test_contract import ContractMixin

REG, DIR = FileType.REG, FileType.DIR
ZERO = bytes(8)


class EmbeddedContractTests(ContractMixin, TestCase):
    """The embedded store meets the contract, on its writer thread as in production."""

    async def make_backend(self) -> Any:
        b = EmbeddedBackend(Path(self.mktemp()), reactor)
        await b.open()
        self.addCleanup(b.close)
        return b


class InlineContractTests(ContractMixin, TestCase):
    """The inline mode (what the state machine drives) meets the contract too."""

    async def make_backend(self) -> Any:
        b = EmbeddedBackend(Path(self.mktemp()), None, inline=True)
        await b.open()
        self.addCleanup(b.close)
        return b


class StoreCase(TestCase):
    """Opens real stores (writer thread, fsync on) in temporary directories."""

    async def store(self, path: Path | None = None, **kw: Any) -> EmbeddedBackend:
        b = EmbeddedBackend(path or Path(self.mktemp()), reactor, **kw)
        await b.open()
        self.addCleanup(b.close)
        return b

    def count(self, name: str) -> list[int]:
        """Count the calls of C{os.<name>} (fdatasync, fsync) from now on."""
        calls: list[int] = []
        real = getattr(os, name)

        def counting(fd: int) -> None:
            calls.append(fd)
            real(fd)

        self.patch(os, name, counting)
        return calls

    async def gate(self, b: EmbeddedBackend) -> tuple[threading.Event, defer.Deferred[Any]]:
        """
        Hold the writer thread inside an op until the returned event is set.

        Fires once the writer is inside it, so every op submitted afterwards
        queues behind it and they all form the next batch: which ops share a
        batch does not depend on thread scheduling.
        """
        ev = threading.Event()
        self.addCleanup(ev.set)
        inside: defer.Deferred[None] = defer.Deferred()

        def hold(engine: Engine, ctx: Any) -> None:
            reactor.callFromThread(inside.callback, None)
            ev.wait(30)

        d = b._submit(hold)
        await inside
        return ev, d


class GroupCommitTests(StoreCase):
    async def test_queued_changes_share_one_commit(self) -> None:
        """100 creates queued while the writer is busy are committed with one fsync."""
        b = await self.store()
        ev, held = await self.gate(b)
        ds = [b.create(1, b"f%d" % i, REG, 0o644, 0, 0) for i in range(100)]
        before = b.stats.durable_commits
        ev.set()
        await held
        await defer.gatherResults(ds)
        self.assertEqual(b.stats.durable_commits - before, 1)
        self.assertEqual(b.stats.largest_batch, 100)
        page = await b.readdir(1, 0, ZERO, 1000)
        self.assertEqual(len(page.entries), 100)

    async def test_concurrent_burst_costs_few_fsyncs(self) -> None:
        """Without any help, a burst of 200 concurrent creates costs far fewer than 200 commits."""
        b = await self.store()
        before = b.stats.durable_commits
        await defer.gatherResults([b.create(1, b"f%d" % i, REG, 0o644, 0, 0) for i in range(200)])
        commits = b.stats.durable_commits - before
        self.assertGreaterEqual(commits, 1)
        self.assertLessEqual(commits, 50)

    async def test_sequential_changes_each_commit(self) -> None:
        """A lone change is not delayed to wait for company: each awaited create commits alone."""
        b = await self.store()
        before = b.stats.durable_commits
        for i in range(5):
            await b.create(1, b"f%d" % i, REG, 0o644, 0, 0)
        self.assertEqual(b.stats.durable_commits - before, 5)

    async def test_truncate_to_same_size_writes_nothing(self) -> None:
        """
        SETATTR of the size a file already has, and nothing else (libnfs sends
        one after every O_TRUNC create), changes nothing and costs no commit;
        with a real change beside it, it commits as before.
        """
        b = await self.store()
        a = await b.create(1, b"f", REG, 0o644, 0, 0)
        before = b.stats.durable_commits
        same = await b.setattr(a.ino, SetAttrs(size=0))
        self.assertEqual(b.stats.durable_commits, before)
        self.assertEqual(
            (same.size, same.ctime_ns, same.mtime_ns, same.change),
            (0, a.ctime_ns, a.mtime_ns, a.change),
        )
        moded = await b.setattr(a.ino, SetAttrs(size=0, mode=0o600))
        self.assertEqual(b.stats.durable_commits, before + 1)
        self.assertEqual(moded.mode & 0o7777, 0o600)
        self.assertGreater(moded.change, a.change)
        grown = await b.setattr(a.ino, SetAttrs(size=5))
        self.assertEqual(b.stats.durable_commits, before + 2)
        self.assertEqual(grown.size, 5)

    async def test_file_change_after_truncate_gets_its_own_batch(self) -> None:
        """
        A truncation is applied to the file after its commit, so a write to
        the same file queued behind it waits for the next batch (else the
        truncation would cut the write's data).
        """
        b = await self.store()
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        await b.write(f.ino, 0, b"z" * 1000, True)
        ev, held = await self.gate(b)
        ds = [
            b.setattr(f.ino, SetAttrs(size=0)),
            b.create(1, b"other", REG, 0o644, 0, 0),
            b.write(f.ino, 0, b"hello", False),
            b.create(1, b"third", REG, 0o644, 0, 0),
        ]
        ev.set()
        await held
        await defer.gatherResults(ds)
        self.assertEqual(b.stats.splits, 1)
        self.assertEqual(await b.read(f.ino, 0, 100), (b"hello", True))

    async def test_failed_op_does_not_spoil_its_batch(self) -> None:
        """Each op runs in its own savepoint: one failing leaves its batch-mates committed."""
        b = await self.store()
        ev, held = await self.gate(b)
        ok1 = b.create(1, b"a", REG, 0o644, 0, 0)
        dup = b.create(1, b"a", DIR, 0o755, 0, 0)

        def half_done(engine: Engine, ctx: Any) -> None:
            engine._add_entry(ctx, engine._get(ctx, 1), b"ghost", engine._get(ctx, 1))
            raise sqlite3.OperationalError("injected")

        broken = b._submit(half_done)
        ok2 = b.create(1, b"b", REG, 0o644, 0, 0)
        ev.set()
        await held
        await ok1
        await ok2
        with self.assertRaises(errors.Exists):
            await dup
        with self.assertRaises(errors.IO):
            await broken
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)
        self.assertEqual(
            sorted(e.name for e in (await b.readdir(1, 0, ZERO, 10)).entries), [b"a", b"b"]
        )
        self.assertEqual((await b.root()).change, 3)


class MetaServerStoreTests(StoreCase):
    """
    A meta server's store (C{data_files=False}): its files' bytes are on
    data servers, so it never looks for a data file of its own.
    """

    async def test_no_data_file_looked_for(self) -> None:
        """
        The attributes of a written file (from WROTE, READDIRPLUS, GETATTR)
        say 0 bytes used without a stat of the data tree, and removing the
        file records nothing to free (no pending_io row, no unlink).
        """
        b = await self.store(data_files=False)
        root = (await b.root()).ino
        f = await b.create(root, b"f", FileType.REG, 0o644, 0, 0)
        data_tree = str(b._engine.layout.root)
        looked: list[str] = []
        for name in ("stat", "unlink"):
            real = getattr(os, name)

            def spy(path: Any, *a: Any, real: Any = real, **kw: Any) -> Any:
                if str(path).startswith(data_tree):
                    looked.append(str(path))
                return real(path, *a, **kw)

            self.patch(os, name, spy)
        wrote = await b.wrote(f.ino, 0, 4096, 0, durable=True)
        self.assertEqual((wrote.attrs.size, wrote.attrs.used), (4096, 0))
        page = await b.readdir(root, 0, b"", 4096, with_attrs=True)
        self.assertEqual([(e.name, e.attrs.used) for e in page.entries], [(b"f", 0)])
        self.assertEqual((await b.getattr(f.ino)).used, 0)
        await b.unlink(root, b"f")
        await b.sync()
        assert b._engine.conn is not None
        rows = b._engine.conn.execute("SELECT COUNT(*) FROM pending_io").fetchone()
        self.assertEqual((rows, looked), ((0,), []))


class OrderingTests(StoreCase):
    async def test_read_after_change_without_waiting(self) -> None:
        """A read issued right after a change, without waiting for it, sees the change."""
        b = await self.store()
        created = b.create(1, b"x", REG, 0o644, 0, 0)
        looked = b.lookup(1, b"x")
        a = await created
        self.assertEqual((await looked).ino, a.ino)
        gone = b.unlink(1, b"x")
        missing = b.lookup(1, b"x")
        await gone
        with self.assertRaises(errors.NotFound):
            await missing

    async def test_data_in_call_order(self) -> None:
        """write, truncate, write, read, issued together, apply in that order."""
        b = await self.store()
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        ds = [
            b.write(f.ino, 0, b"hello world", False),
            b.setattr(f.ino, SetAttrs(size=5)),
            b.write(f.ino, 8, b"!", False),
            b.read(f.ino, 0, 100),
            b.getattr(f.ino),
        ]
        results = await defer.gatherResults(ds)
        self.assertEqual(results[3], (b"hello\0\0\0!", True))
        self.assertEqual(results[4].size, 9)

    async def test_reads_fire_after_earlier_changes(self) -> None:
        """
        On the writer's path, Deferreds fire in call order: a read waiting
        on a change fires after it. (A change committed on the reactor's
        thread is answered after its log sync, and a read waiting on it
        runs once it is committed: tests.backend.test_log_sync.)
        """
        b = await self.store(log_sync=False)
        fired: list[str] = []
        d1 = b.create(1, b"a", REG, 0o644, 0, 0).addCallback(lambda _: fired.append("create"))
        d2 = b.getattr(1).addCallback(lambda _: fired.append("getattr"))
        await defer.gatherResults([d1, d2])
        self.assertEqual(fired, ["create", "getattr"])

    async def test_idle_reads_run_at_once(self) -> None:
        """With nothing queued, a metadata read fires before the call returns (no thread hop)."""
        b = await self.store()
        d = b.getattr(1)
        self.assertTrue(d.called)
        await d


class CachedListingTests(StoreCase):
    """
    C{readdir_cached} (issue 18): the page L{EmbeddedBackend.readdir} with
    attributes gives, the attributes taken from the caller's cache when it
    has every entry's (no attribute read), else read as readdir reads them.
    """

    async def test_same_page_as_readdir(self) -> None:
        b = await self.store()
        d = await b.create(1, b"d", DIR, 0o755, 0, 0)
        for i in range(5):
            await b.create(d.ino, b"f%d" % i, REG, 0o644, 0, 0)
        ref = await b.readdir(d.ino, 0, ZERO, 3, with_attrs=True)
        mine = {e.ino: object() for e in ref.entries}
        asked: list[list[int]] = []

        def cached(inos: list[int]) -> list[Any]:
            asked.append(inos)
            return [mine[i] for i in inos]

        page, from_cache = await b.readdir_cached(d.ino, 0, ZERO, 3, cached)
        self.assertTrue(from_cache)
        self.assertEqual(asked, [[e.ino for e in ref.entries]])
        self.assertEqual(
            [(e.name, e.ino, e.type, e.cookie) for e in page.entries],
            [(e.name, e.ino, e.type, e.cookie) for e in ref.entries],
        )
        self.assertEqual([e.attrs for e in page.entries], [mine[e.ino] for e in ref.entries])
        self.assertEqual((page.verifier, page.eof), (ref.verifier, ref.eof))
        # One the cache lacks: the page as readdir reads it.
        last = ref.entries[-1].cookie
        rest = await b.readdir(d.ino, last, ref.verifier, 3, with_attrs=True)
        page, from_cache = await b.readdir_cached(
            d.ino, last, ref.verifier, 3, lambda inos: [None] * len(inos)
        )
        self.assertFalse(from_cache)
        self.assertEqual(page, rest)
        self.assertTrue(page.eof)

    async def test_cold_listing_reads_each_page_once(self) -> None:
        """
        After a page with an entry the cache lacks, the listing's next pages
        are read with their attributes at once (no names-only query first);
        a new listing (cookie 0) asks the cache again.
        """
        b = await self.store()
        d = await b.create(1, b"d", DIR, 0o755, 0, 0)
        for i in range(6):
            await b.create(d.ino, b"f%d" % i, REG, 0o644, 0, 0)
        reader = b._reader
        assert reader is not None
        queries: list[str] = []
        conn = reader.conn

        class Counting:
            def execute(self, sql: str, args: Any = ()) -> Any:
                queries.append("attrs" if "EXISTS" in sql else "names")
                return conn.execute(sql, args)

        reader.conn = Counting()  # type: ignore[assignment]
        self.addCleanup(setattr, reader, "conn", conn)

        async def listing(cached: Any) -> list[bool]:
            out, cookie, verf = [], 0, ZERO
            while True:
                page, from_cache = await b.readdir_cached(d.ino, cookie, verf, 2, cached)
                out.append(from_cache)
                if page.eof:
                    return out
                cookie, verf = page.entries[-1].cookie, page.verifier

        self.assertEqual(await listing(lambda inos: [None] * len(inos)), [False] * 3)
        self.assertEqual(queries, ["names", "attrs", "attrs", "attrs"])
        del queries[:]
        self.assertEqual(await listing(lambda inos: [object()] * len(inos)), [True] * 3)
        self.assertEqual(queries, ["names"] * 3)

    async def test_bad_cookie(self) -> None:
        b = await self.store()
        d = await b.create(1, b"d", DIR, 0o755, 0, 0)
        await b.create(d.ino, b"f", REG, 0o644, 0, 0)
        page = await b.readdir(d.ino, 0, ZERO, 1)
        with self.assertRaises(errors.BadCookie):
            await b.readdir_cached(d.ino, page.entries[0].cookie, b"XXXXXXXX", 1, lambda i: [])
        with self.assertRaises(errors.BadCookie):
            await b.readdir_cached(d.ino, 1, page.verifier, 1, lambda i: [])
        with self.assertRaises(errors.NotDir):
            await b.readdir_cached(page.entries[0].ino, 0, ZERO, 1, lambda i: [])


class DurabilityTests(StoreCase):
    """What reaches the disk when (fsync calls are counted; SQLite's own are not)."""

    async def test_stable_write_syncs_data_then_commits(self) -> None:
        b = await self.store()
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        syncs = self.count("fdatasync")
        dir_syncs = self.count("fsync")
        before = b.stats.durable_commits
        w = await b.write(f.ino, 0, b"data", True)
        self.assertTrue(w.stable)
        self.assertEqual(len(syncs), 1)
        # The new data file's leaf directory and the fan-out directories made for it.
        self.assertGreaterEqual(len(dir_syncs), 1)
        self.assertEqual(b.stats.durable_commits - before, 1)
        await b.write(f.ino, 4, b"more", True)
        self.assertEqual(len(syncs), 2)

    async def test_unstable_write_waits_for_commit(self) -> None:
        b = await self.store()
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        syncs = self.count("fdatasync")
        durable, lazy = b.stats.durable_commits, b.stats.commits
        await b.write(f.ino, 0, b"data", False)
        self.assertEqual(syncs, [])
        self.assertEqual(b.stats.durable_commits, durable)
        self.assertEqual(b.stats.commits, lazy + 1)
        a = await b.commit(f.ino)
        self.assertEqual(a.size, 4)
        self.assertEqual(len(syncs), 1)
        # Nothing changed in the commit itself, but the write's metadata in the
        # WAL had to be synced: one durable commit.
        self.assertEqual(b.stats.durable_commits, durable + 1)
        await b.commit(f.ino)
        self.assertEqual(len(syncs), 1)
        self.assertEqual(b.stats.durable_commits, durable + 1)

    async def test_metadata_change_is_durable(self) -> None:
        b = await self.store()
        before = b.stats.durable_commits
        await b.set_state("k", b"v")
        await b.setxattr(1, b"user.x", b"1")
        self.assertEqual(b.stats.durable_commits - before, 2)

    async def test_not_durable_changes_wait_for_the_next_durable_one(self) -> None:
        """
        create, setxattr and rmdir with durable=False commit without a flush;
        the next durable change's commit flushes them with it (one ordered WAL).
        """
        b = await self.store()
        durable, lazy = b.stats.durable_commits, b.stats.commits
        d = await b.create(1, b"d", DIR, 0o755, 0, 0, durable=False)
        await b.setxattr(d.ino, b"user.x", b"1", durable=False)
        await b.create(d.ino, b"f", REG, 0o644, 0, 0, durable=False)
        await b.create(1, b"gone", DIR, 0o755, 0, 0, durable=False)
        await b.rmdir(1, b"gone", durable=False)
        self.assertEqual(b.stats.durable_commits, durable)
        self.assertEqual(b.stats.commits, lazy + 5)
        # A durable change: its commit covers the five before it.
        await b.rename(d.ino, b"f", 1, b"f")
        self.assertEqual(b.stats.durable_commits, durable + 1)
        self.assertEqual((await b.lookup(1, b"f")).type, REG)
        self.assertEqual(await b.getxattr(d.ino, b"user.x"), b"1")
        with self.assertRaises(errors.NotFound):
            await b.lookup(1, b"gone")

    async def test_not_durable_namespace_changes_and_sync(self) -> None:
        """
        unlink, rename and setattr with durable=False commit without a flush
        too (SMB's metadata changes); sync() flushes them with one commit, and
        costs nothing when nothing waits.
        """
        b = await self.store()
        f = await b.create(1, b"f", REG, 0o644, 0, 0, durable=False)
        await b.setattr(f.ino, SetAttrs(mode=0o600), durable=False)
        await b.rename(1, b"f", 1, b"g", durable=False)
        await b.create(1, b"h", REG, 0o644, 0, 0, durable=False)
        durable = b.stats.durable_commits
        await b.unlink(1, b"h", durable=False)
        self.assertEqual(b.stats.durable_commits, durable)
        await b.sync()
        self.assertEqual(b.stats.durable_commits, durable + 1)
        # (The next batch drops the freed file's recovery row, whatever it is.)
        await b.sync()
        settled = b.stats.durable_commits
        await b.sync()
        self.assertEqual(b.stats.durable_commits, settled)
        self.assertEqual((await b.lookup(1, b"g")).mode & 0o777, 0o600)

    async def test_size_change_is_durable_whatever_is_asked(self) -> None:
        """
        A truncation cuts the data file right after its commit: one that cuts
        below the committed size is durable even when asked not to be, so no
        crash can pair the old size with cut data; growing, or emptying an
        empty file (an SMB overwrite of a new file), is not.
        """
        b = await self.store()
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        await b.write(f.ino, 0, b"data", True)
        before = b.stats.durable_commits
        await b.setattr(f.ino, SetAttrs(size=8), durable=False)
        self.assertEqual(b.stats.durable_commits, before)
        await b.setattr(f.ino, SetAttrs(size=1), durable=False)
        self.assertEqual(b.stats.durable_commits, before + 1)
        e = await b.create(1, b"e", REG, 0o644, 0, 0, durable=False)
        await b.setattr(e.ino, SetAttrs(size=0), durable=False)
        self.assertEqual(b.stats.durable_commits, before + 1)

    async def test_not_durable_unlink_keeps_the_data_until_durable(self) -> None:
        """
        A file freed by a commit not yet durable keeps its data file until a
        durable commit covers the unlink: a power loss taking the log's tail
        would otherwise bring the name back without its bytes.
        """
        b = await self.store()
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        await b.write(f.ino, 0, b"data", True)
        data = Path(b._engine.layout.path(f.ino))
        gone = await b.unlink(1, b"f", durable=False)
        self.assertEqual(gone.nlink, 0)
        await b.create(1, b"other", REG, 0o644, 0, 0, durable=False)
        self.assertTrue(data.exists())
        with self.assertRaises(errors.NotFound):
            await b.getattr(f.ino)
        await b.sync()
        # Deleted once the batch after the durable one ran (after_batch).
        await b.sync()
        self.assertFalse(data.exists())

    async def test_evicting_a_dirty_descriptor_syncs_it(self) -> None:
        """Unstable data is never orphaned by the descriptor cache: eviction syncs first."""
        # The log synced by the writer thread, where os.fdatasync is seen.
        b = await self.store(max_fds=2, log_sync=False)
        inos = [(await b.create(1, b"f%d" % i, REG, 0o644, 0, 0)).ino for i in range(3)]
        syncs = self.count("fdatasync")
        for ino in inos:
            await b.write(ino, 0, b"x", False)
        self.assertEqual(len(syncs), 1)
        files = b._engine.files
        self.assertEqual((files.dirty, set(files._new_entries)), (set(inos[1:]), set(inos[1:])))
        await b.commit(inos[0])
        # Only the log: the evicted file's data was synced already.
        self.assertEqual(syncs[1:], [b._engine._wal_fd])

    async def test_durable_rename_syncs_the_renamed_files_data(self) -> None:
        """
        A durable rename of a file with unstable data syncs that data before
        its commit (S3's small PUT relies on it: C{renames_sync_data}); one
        of a file whose data is synced, or a rename asked without
        durability, syncs nothing; a directory's rename never does.
        """
        b = await self.store()
        self.assertTrue(b.renames_sync_data)
        d = await b.create(1, b"d", DIR, 0o755, 0, 0)
        f = await b.create(1, b"f", REG, 0o644, 0, 0, durable=False)
        await b.write(f.ino, 0, b"data", False)
        syncs = self.count("fdatasync")
        commits = b.stats.durable_commits
        await b.rename(1, b"f", d.ino, b"g")
        self.assertEqual(len(syncs), 1)
        self.assertEqual(b.stats.durable_commits, commits + 1)
        self.assertFalse(b._engine.files.needs_sync(f.ino))
        await b.rename(d.ino, b"g", 1, b"h")
        self.assertEqual(len(syncs), 1)
        await b.write(f.ino, 0, b"more", False)
        await b.rename(1, b"h", 1, b"i", durable=False)
        self.assertEqual(len(syncs), 1)
        self.assertTrue(b._engine.files.needs_sync(f.ino))
        await b.rename(1, b"d", 1, b"e")
        self.assertEqual(len(syncs), 1)
        self.assertEqual(await b.read(f.ino, 0, 10), (b"more", True))

    async def test_durable_rename_fails_if_the_data_cannot_be_synced(self) -> None:
        """
        The renamed file's data could not be made durable (an I/O error in
        writeback): the rename fails and leaves the names as they were.
        """
        b = await self.store()
        f = await b.create(1, b"f", REG, 0o644, 0, 0, durable=False)
        await b.write(f.ino, 0, b"data", False)

        def failing(fd: int) -> None:
            raise OSError(errno.EIO, "I/O error")

        self.patch(os, "fdatasync", failing)
        with self.assertRaises(errors.IO):
            await b.rename(1, b"f", 1, b"g")
        # Logged: an I/O error is not an answer the store expects to give.
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual((await b.lookup(1, b"f")).ino, f.ino)
        with self.assertRaises(errors.NotFound):
            await b.lookup(1, b"g")

    async def test_evicting_dirty_descriptors_syncs_an_eighth_at_once(self) -> None:
        """
        A cache full of unsynced files (small files written, never flushed)
        syncs and closes its oldest eighth together when a new file needs a
        descriptor, not one per new file.
        """
        b = await self.store(max_fds=16)
        inos = [(await b.create(1, b"f%d" % i, REG, 0o644, 0, 0)).ino for i in range(20)]
        syncs = self.count("fdatasync")
        for ino in inos[:17]:
            await b.write(ino, 0, b"x", False)
        self.assertEqual(len(syncs), 2)
        for ino in inos[17:]:
            await b.write(ino, 0, b"x", False)
        self.assertEqual(len(syncs), 4)
        files = b._engine.files
        self.assertEqual(files.dirty, set(inos[4:]))
        self.assertEqual(len(files), 16)

    async def test_writer_survives_an_internal_error(self) -> None:
        b = await self.store()

        def boom(ops: Any, *args: Any, **kw: Any) -> Any:
            raise RuntimeError("bug")

        self.patch(b._engine, "run_batch", boom)
        with self.assertRaises(errors.IO):
            await b.create(1, b"x", REG, 0o644, 0, 0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(b.check().status, HEALTHY)

    async def test_close_syncs_unstable_data(self) -> None:
        b = await self.store()
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        await b.write(f.ino, 0, b"data", False)
        syncs = self.count("fdatasync")
        await b.close()
        self.assertEqual(len(syncs), 1)


class PersistenceTests(StoreCase):
    async def test_everything_survives_reopen(self) -> None:
        path = Path(self.mktemp())
        b = await self.store(path)
        iid = b.instance_id
        d = await b.create(1, b"d", DIR, 0o750, 7, 8)
        f = await b.create(d.ino, b"f", REG, 0o640, 7, 8)
        await b.write(f.ino, 0, b"committed", False)
        await b.commit(f.ino)
        await b.write(f.ino, 100000, b"stable", True)
        await b.link(f.ino, 1, b"hard")
        s = await b.symlink(1, b"s", b"d/f", 0o777, 7, 8)
        c = await b.create(1, b"c", FileType.CHR, 0o600, 0, 0, (1, 3))
        await b.setxattr(f.ino, b"user.k", b"v")
        await b.set_quota("user", 7, QuotaLimits(1, 2, 3, 4))
        await b.set_state("grace", b"\x01\x02")
        page = await b.readdir(1, 0, ZERO, 2)
        attrs = {i: await b.getattr(i) for i in (1, d.ino, f.ino, s.ino, c.ino)}
        usage = await b.all_usage("user")
        await b.close()

        b2 = await self.store(path)
        self.assertEqual(b2.instance_id, iid)
        for i, a in attrs.items():
            self.assertEqual(await b2.getattr(i), a)
        self.assertEqual(await b2.read(f.ino, 0, 9), (b"committed", False))
        self.assertEqual(await b2.read(f.ino, 100000, 100), (b"stable", True))
        self.assertEqual(await b2.readlink(s.ino), b"d/f")
        self.assertEqual(await b2.getxattr(f.ino, b"user.k"), b"v")
        self.assertEqual(await b2.get_quota("user", 7), QuotaLimits(1, 2, 3, 4))
        self.assertEqual(await b2.get_state("grace"), b"\x01\x02")
        self.assertEqual(await b2.all_usage("user"), usage)
        self.assertEqual(usage[7], Usage(100006, 3))
        # Cookies and verifiers stay valid across a restart.
        rest = await b2.readdir(1, page.entries[-1].cookie, page.verifier, 100)
        self.assertEqual(
            sorted(e.name for e in page.entries + rest.entries), [b"c", b"d", b"hard", b"s"]
        )
        # Numbers go on from where they were, never reused; new inodes get a new generation.
        g = await b2.create(1, b"g", REG, 0o644, 0, 0)
        self.assertGreater(g.ino, max(attrs))
        self.assertGreater(g.gen, f.gen)

    async def test_counters_are_written_a_block_ahead(self) -> None:
        """
        A create's commit does not rewrite meta's counters (one page less in
        its log): they are written a block ahead of use, so a store stopped
        without close (here: its files copied while it runs, as a crash
        leaves them) reopens with numbers above every one in use; close
        writes the exact counters, so a clean restart skips none.
        """
        path = Path(self.mktemp())
        b = await self.store(path)

        def counters(where: Path) -> list[tuple[Any, ...]]:
            c = sqlite3.connect(where / "meta.sqlite3")
            try:
                q = "SELECT k, v FROM meta WHERE k IN ('next_ino', 'next_cookie') ORDER BY k"
                return c.execute(q).fetchall()
            finally:
                c.close()

        first = await b.create(1, b"f0", REG, 0o644, 0, 0)
        ahead = counters(path)
        made = [first.ino]
        for i in range(1, 20):
            made.append((await b.create(1, b"f%d" % i, REG, 0o644, 0, 0)).ino)
        self.assertEqual(counters(path), ahead)
        self.assertGreater(dict(ahead)["next_ino"], max(made) + 1)
        crashed = Path(self.mktemp())
        crashed.mkdir()
        for name in ("meta.sqlite3", "meta.sqlite3-wal"):
            with open(path / name, "rb") as src, open(crashed / name, "wb") as dst:
                dst.write(src.read())
        await b.close()
        self.assertEqual(dict(counters(path))["next_ino"], max(made) + 1)
        again = await self.store(path)
        self.assertEqual((await again.create(1, b"next", REG, 0o644, 0, 0)).ino, max(made) + 1)
        after_crash = await self.store(crashed)
        self.assertGreater((await after_crash.create(1, b"next", REG, 0o644, 0, 0)).ino, max(made))
        listed = await after_crash.readdir(1, 0, ZERO, 100)
        cookies = [e.cookie for e in listed.entries]
        self.assertEqual(len(set(cookies)), len(cookies))
        self.assertEqual(cookies, sorted(cookies))

    async def test_instance_ids_differ_between_stores(self) -> None:
        a = await self.store()
        b = await self.store()
        self.assertNotEqual(a.instance_id, b.instance_id)
        self.assertEqual(len(a.instance_id), 8)


class RecoveryTests(TestCase):
    """Crashes simulated in-process: the store is abandoned without closing."""

    async def open(self, path: Path) -> EmbeddedBackend:
        b = EmbeddedBackend(path, None, inline=True)
        await b.open()
        return b

    def crash(self, b: EmbeddedBackend) -> None:
        """Drop the store as kill -9 would: no close, no flush beyond what was committed."""
        assert b._reader is not None and b._engine.conn is not None
        b._reader.close()
        b._engine.files.close()
        b._engine.conn.close()

    async def test_interrupted_data_file_removal_finished_at_open(self) -> None:
        path = Path(self.mktemp())
        b = await self.open(path)
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        await b.write(f.ino, 0, b"x" * 10000, True)
        data = Path(b._engine.layout.path(f.ino))
        self.assertTrue(data.exists())
        # The crash comes after the commit that freed the inode, before the file went.
        self.patch(b._engine, "_unlink_data", lambda ino: None)
        await b.unlink(1, b"f")
        self.crash(b)
        self.assertTrue(data.exists())
        b2 = await self.open(path)
        self.addCleanup(b2.close)
        self.assertFalse(data.exists())
        assert b2._engine.conn is not None
        self.assertEqual(
            b2._engine.conn.execute("SELECT COUNT(*) FROM pending_io").fetchone(), (0,)
        )

    async def test_interrupted_truncation_finished_at_open(self) -> None:
        path = Path(self.mktemp())
        b = await self.open(path)
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        await b.write(f.ino, 0, b"x" * 10000, True)
        data = Path(b._engine.layout.path(f.ino))
        # The crash comes after the commit of the new size, before the file was cut.
        self.patch(b._engine, "_apply", lambda *a: None)
        await b.setattr(f.ino, SetAttrs(size=10))
        self.crash(b)
        self.assertEqual(data.stat().st_size, 10000)
        b2 = await self.open(path)
        self.addCleanup(b2.close)
        self.assertEqual(data.stat().st_size, 10)
        self.assertEqual(await b2.read(f.ino, 0, 100), (b"x" * 10, True))
        await b2.setattr(f.ino, SetAttrs(size=20))
        self.assertEqual(await b2.read(f.ino, 0, 100), (b"x" * 10 + bytes(10), True))

    async def test_bytes_beyond_the_size_never_reappear(self) -> None:
        """Data a crash left past the recorded size (an unstable write whose metadata was lost)."""
        path = Path(self.mktemp())
        b = await self.open(path)
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        await b.write(f.ino, 0, b"0123456789", True)
        self.crash(b)
        with open(EmbeddedBackend(path, None)._engine.layout.path(f.ino), "ab") as out:
            out.write(b"GARBAGE" * 100)
        b2 = await self.open(path)
        self.addCleanup(b2.close)
        self.assertEqual(await b2.read(f.ino, 0, 1000), (b"0123456789", True))
        await b2.setattr(f.ino, SetAttrs(size=20))
        self.assertEqual(await b2.read(f.ino, 0, 1000), (b"0123456789" + bytes(10), True))
        await b2.write(f.ino, 30, b"end", False)
        self.assertEqual(await b2.read(f.ino, 0, 1000), (b"0123456789" + bytes(20) + b"end", True))
        await b2.allocate(f.ino, 0, 100)
        got, _ = await b2.read(f.ino, 0, 1000)
        self.assertEqual(got, b"0123456789" + bytes(20) + b"end" + bytes(67))

    async def test_committed_changes_survive_a_crash(self) -> None:
        path = Path(self.mktemp())
        b = await self.open(path)
        d = await b.create(1, b"d", DIR, 0o755, 0, 0)
        f = await b.create(d.ino, b"f", REG, 0o644, 5, 5)
        await b.write(f.ino, 0, b"abc", False)
        await b.commit(f.ino)
        await b.rename(d.ino, b"f", 1, b"g")
        self.crash(b)
        b2 = await self.open(path)
        self.addCleanup(b2.close)
        self.assertEqual((await b2.lookup(1, b"g")).ino, f.ino)
        self.assertEqual(await b2.read(f.ino, 0, 10), (b"abc", True))
        self.assertEqual(await b2.usage("user", 5), Usage(3, 1))


class LifecycleTests(StoreCase):
    async def test_close_twice(self) -> None:
        b = await self.store()
        d1, d2 = b.close(), b.close()
        await d1
        await d2
        await b.close()

    async def test_calls_after_close_fail(self) -> None:
        b = await self.store()
        await b.close()
        with self.assertRaises(errors.IO):
            await b.getattr(1)
        with self.assertRaises(errors.IO):
            await b.create(1, b"x", REG, 0o644, 0, 0)

    async def test_close_waits_for_queued_changes(self) -> None:
        b = await self.store()
        ds = [b.create(1, b"f%d" % i, REG, 0o644, 0, 0) for i in range(20)]
        await b.close()
        self.assertTrue(all(d.called for d in ds))
        await defer.gatherResults(ds)

    async def test_close_before_open(self) -> None:
        b = EmbeddedBackend(Path(self.mktemp()), reactor)
        await b.close()
        with self.assertRaises(errors.IO):
            await b.getattr(1)

    async def test_open_twice_refused(self) -> None:
        b = await self.store()
        with self.assertRaises(errors.IO):
            await b.open()

    async def test_open_refuses_unknown_schema(self) -> None:
        path = Path(self.mktemp())
        b = await self.store(path)
        await b.close()
        with sqlite3.connect(path / "meta.sqlite3") as c:
            c.execute("UPDATE meta SET v = 99 WHERE k = 'schema'")
        c.close()
        b2 = EmbeddedBackend(path, reactor)
        with self.assertRaises(errors.IO):
            await b2.open()
        await b2.close()

    async def test_constructor_does_no_io(self) -> None:
        path = Path(self.mktemp())
        EmbeddedBackend(path, reactor)
        self.assertFalse(path.exists())

    async def test_health(self) -> None:
        b = EmbeddedBackend(Path(self.mktemp()), reactor)
        self.assertEqual(b.check().status, UNHEALTHY)
        await b.open()
        self.assertEqual(b.check().status, HEALTHY)
        self.patch(backend_module, "LOW_SPACE", 2**62)
        self.assertEqual(b.check().status, DEGRADED)
        self.patch(backend_module, "LOW_SPACE", 0)
        b._engine.stats.last_batch_failed = True
        self.assertEqual(b.check().status, UNHEALTHY)
        b._engine.stats.last_batch_failed = False
        await b.close()
        self.assertEqual(b.check().status, UNHEALTHY)


class _FailingCommit:
    """A connection proxy whose next COMMIT fails as a full disk would."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.armed = True

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT" and self.armed:
            self.armed = False
            e = sqlite3.OperationalError("database or disk is full")
            e.sqlite_errorcode = 13  # type: ignore[attr-defined]
            raise e
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class ErrorTests(StoreCase):
    async def test_enospc_is_nospace(self) -> None:
        b = await self.store()
        f = await b.create(1, b"f", REG, 0o644, 0, 0)

        def full(fd: int, data: Any, offset: int) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(os, "pwrite", full)
        with self.assertRaises(errors.NoSpace):
            await b.write(f.ino, 0, b"x", True)
        self.assertEqual((await b.getattr(f.ino)).size, 0)

    async def test_failed_commit_fails_the_batch_only(self) -> None:
        """A commit refused by the disk fails every op of that batch; later ones work."""
        b = await self.store()
        eng = b._engine
        ev, held = await self.gate(b)
        ds = [b.create(1, b"f%d" % i, REG, 0o644, 0, 0) for i in range(3)]
        # The gate's batch runs on the real connection (taken when it began);
        # the next batch - the three creates - gets the failing one.
        assert eng.conn is not None
        real = eng.conn
        eng.conn = _FailingCommit(real)  # type: ignore[assignment]
        self.addCleanup(setattr, eng, "conn", real)
        ev.set()
        await held
        for d in ds:
            with self.assertRaises(errors.NoSpace):
                await d
        self.assertEqual(b.check().status, UNHEALTHY)
        self.assertEqual((await b.readdir(1, 0, ZERO, 10)).entries, ())
        a = await b.create(1, b"later", REG, 0o644, 0, 0)
        self.assertEqual((await b.lookup(1, b"later")).ino, a.ino)
        self.assertEqual(b.check().status, HEALTHY)

    async def test_truncate_and_punch_wait_for_their_commit(self) -> None:
        """A truncate or hole punch whose commit fails leaves the data as it was."""
        b = await self.store()
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        await b.write(f.ino, 0, b"y" * 5000, True)
        eng = b._engine
        assert eng.conn is not None
        real = eng.conn
        self.addCleanup(setattr, eng, "conn", real)
        for change in (
            lambda: b.setattr(f.ino, SetAttrs(size=100)),
            lambda: b.deallocate(f.ino, 0, 4000),
        ):
            eng.conn = _FailingCommit(real)  # type: ignore[assignment]
            with self.assertRaises(errors.NoSpace):
                await change()
            self.assertEqual(await b.read(f.ino, 0, 10000), (b"y" * 5000, True))
            self.assertEqual(os.stat(eng.layout.path(f.ino)).st_size, 5000)

    async def test_overflowing_values_are_inval(self) -> None:
        b = await self.store()
        with self.assertRaises(errors.Inval):
            await b.setattr(1, SetAttrs(mtime=2**64))


class DataWritersTests(StoreCase):
    """Large data writes of a batch go out on the data writers, in pieces, in parallel."""

    async def test_lone_write_written_whole(self) -> None:
        """A batch's only write is written as it is (cutting it up costs more than it saves)."""
        b = await self.store(data_threads=2)
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        data = os.urandom(1 << 20)
        await b.write(f.ino, 0, data, False)
        self.assertEqual((b._engine.data.pieces, b._engine.data.parallel), (1, 0))
        self.assertEqual(await b.read(f.ino, 0, len(data)), (data, True))

    async def test_large_write(self) -> None:
        b = await self.store(data_threads=2)
        b._engine.data.split_lone = True
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        data = os.urandom((1 << 20) + 12345)
        w = await b.write(f.ino, 0, data, False)
        self.assertEqual(b.stats.deferred_writes, 1)
        self.assertEqual(b._engine.data.parallel, 1)
        self.assertEqual(b._engine.data.pieces, 5)
        # The attributes handed back count the blocks the data now uses.
        self.assertGreaterEqual(w.attrs.used, len(data))
        self.assertEqual(w.attrs.used, os.stat(b._engine.layout.path(f.ino)).st_blocks * 512)
        self.assertEqual(await b.read(f.ino, 0, len(data) + 10), (data, True))

    async def test_batch_of_writes_and_other_changes(self) -> None:
        """
        Large writes to several files, a write-truncate-write of one file and
        creates among them, all in one batch, apply in call order.
        """
        b = await self.store(data_threads=2)
        files = [(await b.create(1, b"f%d" % i, REG, 0o644, 0, 0)).ino for i in range(4)]
        blobs = [os.urandom(300_000 + i) for i in range(4)]
        ev, held = await self.gate(b)
        ds: list[defer.Deferred[Any]] = [
            b.write(ino, 100, blob, stable=i % 2 == 0)
            for i, (ino, blob) in enumerate(zip(files, blobs, strict=True))
        ]
        ds.append(b.create(1, b"new", REG, 0o644, 0, 0))
        ds.append(b.setattr(files[0], SetAttrs(size=1000)))
        ds.append(b.write(files[0], 2000, blobs[3], False))
        reads = [b.read(ino, 0, 1 << 20) for ino in files]
        ev.set()
        await held
        await defer.gatherResults(ds)
        # The write after the truncation starts the next batch (see run_batch).
        self.assertEqual(b.stats.largest_batch, 6)
        self.assertGreaterEqual(b.stats.deferred_writes, 5)
        got = [data for data, _ in await defer.gatherResults(reads)]
        self.assertEqual(got[0], bytes(100) + blobs[0][:900] + bytes(1000) + blobs[3])
        for i in (1, 2, 3):
            self.assertEqual(got[i], bytes(100) + blobs[i])

    async def test_failed_data_write_fails_alone(self) -> None:
        """
        A data write that fails on the data writers makes the batch run again
        with every write inline: the write whose data cannot be written fails
        (NoSpace), the other changes of its batch commit.
        """
        b = await self.store(data_threads=2)
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        g = await b.create(1, b"g", REG, 0o644, 0, 0)
        real_pwrite_all = engine_module.pwrite_all

        def no_space_for_f(fd: int, data: memoryview, offset: int) -> None:
            if os.fstat(fd).st_ino == os.stat(b._engine.layout.path(f.ino)).st_ino:
                raise OSError(errno.ENOSPC, "no space")
            real_pwrite_all(fd, data, offset)

        def pool_fails(writes: Any) -> None:
            raise OSError(errno.ENOSPC, "no space")

        # Make f's data file exist, so the check above can find it.
        await b.write(f.ino, 0, b"x", True)
        self.patch(engine_module, "pwrite_all", no_space_for_f)
        self.patch(b._engine.data, "write_all", pool_fails)
        ev, held = await self.gate(b)
        w_f = b.write(f.ino, 0, os.urandom(200_000), False)
        w_g = b.write(g.ino, 0, b"g" * 200_000, False)
        made = b.create(1, b"h", REG, 0o644, 0, 0)
        ev.set()
        await held
        with self.assertRaises(errors.NoSpace):
            await w_f
        self.assertEqual((await w_g).count, 200_000)
        await made
        self.assertEqual(b.stats.data_reruns, 1)
        self.assertEqual((await b.getattr(f.ino)).size, 1)
        self.assertEqual((await b.read(g.ino, 0, 10))[0], b"g" * 10)
        await b.lookup(1, b"h")


class ReadPathTests(StoreCase):
    """Reads the page cache cannot serve at once finish in a thread pool."""

    async def written(self, b: EmbeddedBackend) -> tuple[int, bytes]:
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        data = os.urandom(300000)
        await b.write(f.ino, 0, data, True)
        return f.ino, data

    async def test_reactor_pool(self) -> None:
        b = await self.store()
        ino, data = await self.written(b)
        assert b._reader is not None
        b._reader.nowait = False
        d = b.read(ino, 1000, 200000)
        self.assertFalse(d.called)
        self.assertEqual(await d, (data[1000:201000], False))

    async def test_disk_pool(self) -> None:
        pools = ThreadPools(reactor, {"disk": 1})
        pools.startService()
        self.addCleanup(pools.stopService)
        b = await self.store(threads=pools)
        ino, data = await self.written(b)
        assert b._reader is not None
        b._reader.nowait = False
        self.assertEqual(await b.read(ino, 0, 400000), (data, True))

    async def test_uncached_data(self) -> None:
        """Evicted from the page cache (EAGAIN without blocking): still read correctly."""
        b = await self.store()
        ino, data = await self.written(b)
        fd = os.open(b._engine.layout.path(ino), os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        self.assertEqual(await b.read(ino, 0, len(data)), (data, True))

    async def test_large_read(self) -> None:
        """Beyond the inline size, reads go straight to the pool; past the data, zeros."""
        b = await self.store()
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        data = os.urandom(3 << 20)
        await b.write(f.ino, 0, data, False)
        await b.setattr(f.ino, SetAttrs(size=(3 << 20) + 1000))
        got = await b.read(f.ino, 1000, 4 << 20)
        self.assertEqual(got, (data[1000:] + bytes(1000), True))

    async def test_freed_inode_descriptor_closed(self) -> None:
        b = await self.store()
        ino, _ = await self.written(b)
        await b.read(ino, 0, 10)
        assert b._reader is not None
        self.assertIn(ino, b._reader.files._fds)
        fd = b._reader.files._fds[ino]
        closing: list[Any] = []
        real = b._close_freed
        self.patch(b, "_close_freed", lambda fds: closing.append((fds, real(fds))))
        closed_by: list[str] = []
        real_close = os.close

        def close(n: int) -> None:
            if n == fd:
                closed_by.append(threading.current_thread().name)
            real_close(n)

        self.patch(os, "close", close)
        await b.unlink(1, b"f")
        self.assertNotIn(ino, b._reader.files._fds)
        # Closed in a pool thread (the last close of an unlinked file frees
        # it, which may wait for the file system's journal), not the reactor's.
        [(fds, d)] = closing
        self.assertEqual(fds, [fd])
        await d
        self.assertEqual(len(closed_by), 1)
        self.assertNotEqual(closed_by[0], threading.current_thread().name)
        # The data file goes right after the batch is handed over for
        # delivery: by the time a later call on the writer runs, it is gone.
        await b._writer.call(lambda: None)
        self.assertFalse(os.path.exists(b._engine.layout.path(ino)))
        self.assertEqual(b.stats.free_errors, 0)

    async def test_sparse_file_uses_little_space(self) -> None:
        b = await self.store()
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        w = await b.write(f.ino, 2**30, b"end", True)
        self.assertEqual(w.attrs.size, 2**30 + 3)
        self.assertLess(w.attrs.used, 1 << 20)
        self.assertLess(os.stat(b._engine.layout.path(f.ino)).st_blocks * 512, 1 << 20)

    async def test_read_cap(self) -> None:
        """One read returns at most MAX_READ bytes, whatever length asks for."""
        b = await self.store()
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        await b.setattr(f.ino, SetAttrs(size=2**40))
        got, eof = await b.read(f.ino, 0, 2**40)
        self.assertEqual((len(got), eof), (64 * 1024 * 1024, False))

    async def test_inode_rows_kept_until_a_change(self) -> None:
        """
        Reads keep the inode rows they load (no query per read of an idle
        file); a change delivered replaces the rows it wrote with what it
        wrote, before its caller or a read queued behind it can see the old
        ones.
        """
        b = await self.store()
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        await b.write(f.ino, 0, b"abc", False)
        assert b._reader is not None
        reader = b._reader
        self.assertEqual(await b.read(f.ino, 0, 10), (b"abc", True))
        self.assertIn(f.ino, reader._nodes)
        queries: list[str] = []
        reader.conn.set_trace_callback(queries.append)
        self.addCleanup(reader.conn.set_trace_callback, None)
        self.assertEqual(await b.read(f.ino, 1, 10), (b"bc", True))
        self.assertEqual(queries, [])
        # Issued together: the read waits for the write and sees it (a
        # stable write: an unstable one with the writer idle would run at
        # once, see ReactorRunTests).
        w = b.write(f.ino, 3, b"defg", True)
        r = b.read(f.ino, 0, 10)
        seen: list[int] = []
        w.addCallback(lambda _: seen.append(reader._nodes[f.ino].size))
        await w
        self.assertEqual(seen, [7])
        self.assertEqual(await r, (b"abcdefg", True))
        self.assertEqual((await b.getattr(f.ino)).size, 7)
        self.assertNotIn("SELECT", " ".join(queries))
        # Gone: a read of the freed inode fails, it does not serve the kept row.
        await b.read(f.ino, 0, 1)
        await b.unlink(1, b"f")
        with self.assertRaises(errors.NotFound):
            await b.read(f.ino, 0, 1)


class KeptRowsTests(StoreCase):
    """The reader's kept inode rows follow every change exactly (EmbeddedBackend._deliver)."""

    def check_kept_rows_current(self, b: EmbeddedBackend) -> None:
        reader = b._reader
        assert reader is not None
        for ino, node in reader._nodes.items():
            row = reader.conn.execute(SELECT_NODE, (ino,)).fetchone()
            self.assertIsNotNone(row, f"kept row of deleted inode {ino}")
            self.assertEqual(node.row(), Node(row).row(), f"kept row of inode {ino}")

    async def test_rows_follow_changes(self) -> None:
        """
        After each kind of change, durable or not, through the writer
        thread or run at once, every kept row is the stored one and a
        getattr reads no row again.
        """
        b = await self.store()
        assert b._reader is not None
        d = await b.create(1, b"d", DIR, 0o755, 0, 0)
        e = await b.create(1, b"e", DIR, 0o755, 0, 0)
        f = await b.create(d.ino, b"f", REG, 0o644, 0, 0, durable=False)
        steps = [
            lambda: b.write(f.ino, 0, b"x" * 5000, False),
            lambda: b.write(f.ino, 100, b"y", True),
            lambda: b.setattr(f.ino, SetAttrs(mode=0o600), durable=False),
            lambda: b.setattr(f.ino, SetAttrs(size=10)),
            lambda: b.link(f.ino, e.ino, b"g"),
            lambda: b.rename(d.ino, b"f", e.ino, b"h", durable=False),
            lambda: b.unlink(e.ino, b"g", durable=False),
            lambda: b.create(e.ino, b"h2", REG, 0o644, 0, 0),
            lambda: b.rename(e.ino, b"h2", e.ino, b"h"),  # replaces, frees the old h
            lambda: b.unlink(e.ino, b"h"),
            lambda: b.rmdir(1, b"d"),
        ]
        for step in steps:
            for ino in (1, d.ino, e.ino, f.ino):
                try:
                    await b.getattr(ino)  # keeps the row
                except errors.NotFound:
                    pass
            await step()
            self.check_kept_rows_current(b)
            for ino in (1, e.ino):
                queries: list[str] = []
                b._reader.conn.set_trace_callback(queries.append)
                try:
                    a = await b.getattr(ino)
                finally:
                    b._reader.conn.set_trace_callback(None)
                self.assertEqual(queries, [], "the changed directory was read again")
                self.assertEqual(b.dir_after(ino), a)
        self.assertNotIn(f.ino, b._reader._nodes)
        self.assertNotIn(d.ino, b._reader._nodes)
        self.assertIsNone(b.dir_after(d.ino))
        with self.assertRaises(errors.NotFound):
            await b.getattr(d.ino)

    async def test_failed_op_forgets(self) -> None:
        """An op that failed may have committed rows: every kept row goes."""
        b = await self.store()
        assert b._reader is not None
        await b.create(1, b"a", REG, 0o644, 0, 0)
        await b.getattr(1)
        self.assertIn(1, b._reader._nodes)
        with self.assertRaises(errors.Exists):
            await b.create(1, b"a", REG, 0o644, 0, 0)
        self.assertEqual(b._reader._nodes, {})
        self.assertIsNone(b.dir_after(1))

    async def test_dir_after_only_directories(self) -> None:
        b = await self.store()
        f = await b.create(1, b"a", REG, 0o644, 0, 0)
        await b.getattr(f.ino)
        self.assertIsNone(b.dir_after(f.ino))
        self.assertEqual(b.dir_after(1), await b.getattr(1))


class ReactorRunTests(StoreCase):
    """
    Ops that need no round trip through the writer thread: an unstable write
    while the writer is idle, a SETATTR of the size a file already has.
    """

    async def test_unstable_write_runs_at_once(self) -> None:
        """With the writer idle, an unstable write has committed when write() returns."""
        b = await self.store()
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        batches, durable = b.stats.batches, b.stats.durable_commits
        view = memoryview(bytearray(b"hello"))
        d = b.write(f.ino, 0, view, False)
        self.assertTrue(d.called)
        view[:] = b"XXXXX"  # the caller may reuse its buffer once it returned
        result = await d
        self.assertEqual((result.count, result.stable, result.attrs.size), (5, False, 5))
        self.assertEqual(b.stats.batches, batches + 1)
        self.assertEqual(await b.read(f.ino, 0, 10), (b"hello", True))
        # Not durable: COMMIT's durable commit syncs its WAL frames.
        self.assertEqual(b.stats.durable_commits, durable)
        await b.commit(f.ino)
        self.assertEqual(b.stats.durable_commits, durable + 1)

    async def test_queued_behind_the_writer(self) -> None:
        """An unstable write issued while the writer is busy waits its turn, in order."""
        b = await self.store()
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        ev, held = await self.gate(b)
        order: list[str] = []
        t = b.setattr(f.ino, SetAttrs(size=2)).addCallback(lambda a: order.append("trunc"))
        w = b.write(f.ino, 0, b"abcd", False)
        w.addCallback(lambda r: order.append("write"))
        self.assertFalse(w.called)
        ev.set()
        await held
        await defer.gatherResults([t, w])
        self.assertEqual(order, ["trunc", "write"])
        self.assertEqual((await b.getattr(f.ino)).size, 4)

    async def test_waits_for_undelivered_ops(self) -> None:
        """
        A change submitted earlier and not yet delivered (its reply pending)
        keeps a later unstable write off the reactor's own run, so callers
        hear of them in the order they called.
        """
        b = await self.store()
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        order: list[str] = []
        c = b.create(1, b"g", REG, 0o644, 0, 0).addCallback(lambda a: order.append("create"))
        w = b.write(f.ino, 0, b"x", False).addCallback(lambda r: order.append("write"))
        await defer.gatherResults([c, w])
        self.assertEqual(order, ["create", "write"])

    async def test_large_or_stable_writes_go_to_the_writer(self) -> None:
        b = await self.store()
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        big = os.urandom(backend_module.INLINE_WRITE_MAX + 1)
        d = b.write(f.ino, 0, big, False)
        self.assertFalse(d.called)
        await d
        d = b.write(f.ino, 0, b"abc", True)
        self.assertFalse(d.called)
        self.assertTrue((await d).stable)

    async def test_unsynced_metadata_changes_run_here(self) -> None:
        """
        Metadata changes asked without durability (SMB's) run on the
        reactor's thread when the writer is idle: fired on return, no fsync;
        durable ones and size changes still go to the writer thread.
        """
        b = await self.store()
        syncs = self.count("fsync")
        before = b.stats.durable_commits
        d = b.create(1, b"f", REG, 0o644, 0, 0, durable=False)
        self.assertTrue(d.called)
        f = await d
        steps = [
            b.setxattr(f.ino, b"user.a", b"1", durable=False),
            b.setattr(f.ino, SetAttrs(mode=0o600), durable=False),
            b.rename(1, b"f", 1, b"g", durable=False),
            b.create(1, b"d", DIR, 0o755, 0, 0, durable=False),
            b.rmdir(1, b"d", durable=False),
            b.unlink(1, b"g", durable=False),
        ]
        self.assertTrue(all(s.called for s in steps))
        await defer.gatherResults(steps)
        self.assertEqual((b.stats.durable_commits - before, len(syncs)), (0, 0))
        f = await b.create(1, b"h", REG, 0o644, 0, 0, durable=False)
        await b.write(f.ino, 0, b"abcd", False)
        trunc = b.setattr(f.ino, SetAttrs(size=1), durable=False)
        self.assertFalse(trunc.called)
        durable = b.create(1, b"i", REG, 0o644, 0, 0)
        self.assertFalse(durable.called)
        await defer.gatherResults([trunc, durable])

    async def test_unstable_wrote_runs_here(self) -> None:
        """
        The meta server's WROTE of an unstable write (its data on a data
        server) runs on the reactor's thread when the writer is idle: fired
        on return, no fsync; a durable one (stable write, allocate) still goes
        to the writer thread, and a later COMMIT makes the size durable.
        """
        b = await self.store()
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        syncs = self.count("fsync")
        before = b.stats.durable_commits
        d = b.wrote(f.ino, 0, 4096, 0, durable=False)
        self.assertTrue(d.called)
        r = await d
        self.assertEqual((r.count, r.attrs.size, r.before.size), (4096, 4096, 0))
        self.assertEqual((b.stats.durable_commits - before, len(syncs)), (0, 0))
        stable = b.wrote(f.ino, 4096, 10, 0, durable=True)
        self.assertFalse(stable.called)
        self.assertEqual((await stable).attrs.size, 4106)
        self.assertEqual((await b.commit(f.ino)).size, 4106)

    async def test_unsynced_change_waits_behind_the_writer(self) -> None:
        """With the writer busy, an unsynced change queues behind it, in order."""
        b = await self.store()
        ev, held = await self.gate(b)
        order: list[str] = []
        first = b.create(1, b"a", REG, 0o644, 0, 0).addCallback(lambda a: order.append("a"))
        second = b.create(1, b"b", REG, 0o644, 0, 0, durable=False)
        second.addCallback(lambda a: order.append("b"))
        self.assertFalse(second.called)
        ev.set()
        await held
        await defer.gatherResults([first, second])
        self.assertEqual(order, ["a", "b"])

    async def test_views_of_bytes_not_copied(self) -> None:
        """
        A read-only view of bytes (an NFS WRITE's data inside its record)
        reaches the writer as it is; a view of a mutable buffer is copied.
        """
        b = await self.store()
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        sent: list[Any] = []
        submit = b._writer.submit

        def spy(op: Any) -> None:
            sent.append(op.args[2])
            submit(op)

        self.patch(b._writer, "submit", spy)
        record = os.urandom(backend_module.INLINE_WRITE_MAX + 100)
        view = memoryview(record)[10:]
        await b.write(f.ino, 0, view, False)
        self.assertIs(sent[-1], view)
        mutable = bytearray(record)
        await b.write(f.ino, 0, memoryview(mutable)[10:], False)
        self.assertIs(type(sent[-1]), bytes)
        mutable[10:20] = bytes(10)
        self.assertEqual(await b.read(f.ino, 0, 10), (record[10:20], False))

    async def test_same_size_setattr_answers_at_once(self) -> None:
        """Nothing to change: answered from the reader, no batch, no commit."""
        b = await self.store()
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        await b.write(f.ino, 0, b"abc", True)
        before = await b.getattr(f.ino)
        batches, commits = b.stats.batches, b.stats.commits
        d = b.setattr(f.ino, SetAttrs(size=3))
        self.assertTrue(d.called)
        self.assertEqual(await d, before)
        d = b.setattr(f.ino, SetAttrs(size=3), guard_ctime_ns=before.ctime_ns)
        self.assertTrue(d.called)
        self.assertEqual(await d, before)
        self.assertEqual((b.stats.batches, b.stats.commits), (batches, commits))

    async def test_other_setattrs_go_to_the_writer(self) -> None:
        """A new size, another attribute, a guard that fails, a directory: the writer decides."""
        b = await self.store()
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        a = await b.getattr(f.ino)
        for changes, guard in [
            (SetAttrs(size=1), None),
            (SetAttrs(size=0, mode=0o600), None),
            (SetAttrs(size=0), a.ctime_ns + 1),
        ]:
            d = b.setattr(f.ino, changes, guard_ctime_ns=guard)
            self.assertFalse(d.called)
            await d.addErrback(lambda f: f.trap(errors.Inval))
        with self.assertRaises(errors.IsDir):
            await b.setattr(1, SetAttrs(size=0))
        with self.assertRaises(errors.NotFound):
            await b.setattr(987654, SetAttrs(size=0))

    async def test_same_size_setattr_waits_for_changes_in_flight(self) -> None:
        """A truncation to size 0 issued behind a write that grows the file still truncates."""
        b = await self.store()
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        ev, held = await self.gate(b)
        w = b.write(f.ino, 0, b"abcd", True)
        t = b.setattr(f.ino, SetAttrs(size=0))
        self.assertFalse(t.called)
        ev.set()
        await held
        await w
        self.assertEqual((await t).size, 0)


class FilesTests(SynchronousTestCase):
    def test_fan_out(self) -> None:
        """1024 consecutive inodes share a leaf directory; paths map back to inodes."""
        lay = Layout("/s/data")
        self.assertEqual(lay.path(1), "/s/data/0/000/1")
        self.assertEqual(lay.path(0x12345678), "/s/data/123/115/12345678")
        leaves = {lay.dir_of(i) for i in range(2048, 3072)}
        self.assertEqual(len(leaves), 1)
        self.assertEqual(lay.ino_of(lay.path(0xABCDEF)), 0xABCDEF)
        self.assertIsNone(lay.ino_of("/s/data/0/000/zz"))
        self.assertIsNone(lay.ino_of("/s/data/0/001/1"))

    def test_punch_hole_fallback_writes_zeros(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"x" * 5000)
        self.patch(_files, "_fallocate", lambda: None)
        fd = os.open(path, os.O_RDWR)
        try:
            _files.punch_hole(fd, 100, 4000)
        finally:
            os.close(fd)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"x" * 100 + bytes(4000) + b"x" * 900)

    def test_syncs_run_together(self) -> None:
        """
        A new file's data and the directories naming it are synced in one go
        through the runner (one journal commit for all), every one of them,
        before sync returns; without a runner, one after the other.
        """
        root = Path(self.mktemp())
        root.mkdir()
        lay = Layout(str(root / "data"))
        os.mkdir(lay.root)
        synced: list[tuple[str, int]] = []
        real_fdatasync, real_fsync = os.fdatasync, os.fsync
        self.patch(
            _files.os, "fdatasync", lambda fd: (synced.append(("data", fd)), real_fdatasync(fd))
        )
        self.patch(_files.os, "fsync", lambda fd: (synced.append(("dir", fd)), real_fsync(fd)))
        batches: list[int] = []

        def runner(calls: list[Any]) -> None:
            batches.append(len(calls))
            for call in calls:
                call()

        files = _files.WriteFiles(lay)
        files.runner = runner
        fd = files.get(5, create=True)
        assert fd is not None
        os.pwrite(fd, b"x", 0)
        files.dirty.add(5)
        files.sync({5})
        # data, the leaf directory, and the two fan-out directories made for it.
        self.assertEqual(batches, [4])
        self.assertEqual([k for k, _ in synced], ["data", "dir", "dir", "dir"])
        self.assertFalse(files.needs_sync(5))
        # Nothing left to sync: nothing runs.
        files.sync({5})
        self.assertEqual(batches, [4])
        # Without a runner, the same syncs, one after the other.
        synced.clear()
        files.runner = None
        fd2 = files.get(6, create=True)
        assert fd2 is not None
        os.pwrite(fd2, b"y", 0)
        files.dirty.add(6)
        files.sync({6})
        self.assertEqual([k for k, _ in synced], ["data", "dir"])
        files.close()


class IdleDescriptorTests(SynchronousTestCase):
    """Descriptors unused for C{idle_fd_secs} are closed (issue 19): both caches, on a Clock."""

    def layout(self) -> Layout:
        root = Path(self.mktemp())
        root.mkdir()
        lay = Layout(str(root / "data"))
        os.mkdir(lay.root)
        return lay

    def test_writer_closes_idle(self) -> None:
        """
        The writer's descriptors unused for the idle time are closed, least
        recently used first; one with unsynced data is synced first.
        """
        clock = Clock()
        files = _files.WriteFiles(self.layout(), durable=True, now=clock.seconds)
        self.addCleanup(files.close)
        for ino in (1, 2, 3):
            fd = files.get(ino, create=True)
            assert fd is not None
            os.pwrite(fd, b"x", 0)
        files.sync({1, 2, 3})
        files.dirty.add(3)
        clock.advance(10)
        files.get(2, create=False)
        clock.advance(19)
        self.assertEqual(files.close_idle(30), 0)
        clock.advance(5)
        # 1 and 3 idle 34 s: closed, 3 synced first; 2 used 24 s ago.
        syncs = files.syncs
        self.assertEqual(files.close_idle(30), 2)
        self.assertEqual(files.syncs, syncs + 1)
        self.assertFalse(files.needs_sync(3))
        self.assertEqual(len(files), 1)
        clock.advance(10)
        self.assertEqual(files.close_idle(30), 1)
        self.assertEqual(len(files), 0)
        # Used again: opened again, the data still there.
        fd = files.get(1, create=False)
        assert fd is not None
        self.assertEqual(os.pread(fd, 1, 0), b"x")

    def test_writeback_error_kept_for_the_commit(self) -> None:
        """
        A writeback error met syncing an idle descriptor before closing it is
        raised by the next sync of that inode (its COMMIT fails), once.
        """
        clock = Clock()
        files = _files.WriteFiles(self.layout(), durable=True, now=clock.seconds)
        self.addCleanup(files.close)
        fd = files.get(4, create=True)
        assert fd is not None
        os.pwrite(fd, b"x", 0)
        files.sync({4})
        files.dirty.add(4)
        clock.advance(31)

        def eio(fd: int) -> None:
            raise OSError(errno.EIO, "writeback failed")

        self.patch(_files.os, "fdatasync", eio)
        self.assertEqual(files.close_idle(30), 1)
        self.assertEqual(len(files), 0)
        self.assertTrue(files.needs_sync(4))
        e = self.assertRaises(OSError, files.sync, {4})
        self.assertEqual(e.errno, errno.EIO)
        files.sync({4})
        self.assertFalse(files.needs_sync(4))

    def test_reader_closes_idle_not_under_a_read(self) -> None:
        """
        The reader's idle descriptors are closed; a read handed to a pool
        thread holds its own C{dup}, which closing the cached one leaves open.
        """
        lay = self.layout()
        w = _files.WriteFiles(lay, durable=False)
        self.addCleanup(w.close)
        wfd = w.get(7, create=True)
        assert wfd is not None
        os.pwrite(wfd, b"hello", 0)
        clock = Clock()
        files = _files.ReadFiles(lay, now=clock.seconds)
        self.addCleanup(files.close)
        fd = files.get(7)
        assert fd is not None
        lent = os.dup(fd)  # what Reader.read gives a pool thread
        self.addCleanup(os.close, lent)
        clock.advance(31)
        self.assertEqual(files.close_idle(30), 1)
        self.assertEqual(len(files), 0)
        self.assertEqual(os.pread(lent, 5, 0), b"hello")

    def test_store_sweeps_on_its_clock(self) -> None:
        """
        An open store closes both caches' idle descriptors every half of
        C{idle_fd_secs} on its reactor's clock, and reopens them on use.
        """
        clock = Clock()
        b = EmbeddedBackend(Path(self.mktemp()), clock, inline=True, idle_fd_secs=30)
        self.successResultOf(b.open())
        self.addCleanup(lambda: self.successResultOf(b.close()))
        a = self.successResultOf(b.create(1, b"f", REG, 0o644, 0, 0))
        self.successResultOf(b.write(a.ino, 0, b"data", True))
        self.assertEqual(self.successResultOf(b.read(a.ino, 0, 4))[0], b"data")
        self.assertEqual(b.open_fds(), (1, 1))
        clock.advance(15)
        self.assertEqual(b.open_fds(), (1, 1))
        clock.advance(15)
        self.assertEqual(b.open_fds(), (0, 0))
        self.assertEqual(self.successResultOf(b.read(a.ino, 0, 4))[0], b"data")
        self.assertEqual(b.open_fds(), (0, 1))
        self.successResultOf(b.close())
        # Stopped with the store: nothing left scheduled.
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_off(self) -> None:
        """idle_fd_secs 0: nothing is scheduled."""
        clock = Clock()
        b = EmbeddedBackend(Path(self.mktemp()), clock, inline=True, idle_fd_secs=0)
        self.successResultOf(b.open())
        self.addCleanup(lambda: self.successResultOf(b.close()))
        self.assertEqual(clock.getDelayedCalls(), [])


class NodeRowTests(StoreCase):
    """
    The engine keeps the inode rows its commits wrote (C{Engine._rows}): a
    small file's WRITE, COMMIT and REMOVE, and a CREATE or REMOVE in a
    directory changed before, load no inode row with a SELECT. What it keeps
    is what the database holds, and an op that rolled back leaves it as
    committed.
    """

    def trace(self, b: EmbeddedBackend) -> list[str]:
        statements: list[str] = []
        assert b._engine.conn is not None
        b._engine.conn.set_trace_callback(statements.append)
        self.addCleanup(b._engine.conn.set_trace_callback, None)
        return statements

    def assert_rows_committed(self, b: EmbeddedBackend) -> None:
        """Every kept row is the database's row of that inode."""
        conn = b._engine.conn
        assert conn is not None
        for ino, row in b._engine._rows.items():
            self.assertEqual(row, conn.execute(SELECT_NODE, (ino,)).fetchone(), ino)

    async def test_small_file_selects_no_inode_row(self) -> None:
        """
        CREATE, an unstable 4 KiB WRITE, COMMIT and REMOVE of a file in a
        directory a create changed before: no SELECT of an inode row (five
        before: the directory twice, the file three times).
        """
        b = await self.store(inline_max=4096)
        d = await b.create(1, b"d", DIR, 0o755, 0, 0)
        await b.create(d.ino, b"first", REG, 0o644, 0, 0)
        statements = self.trace(b)
        f = await b.create(d.ino, b"f", REG, 0o644, 0, 0)
        data = os.urandom(4096)
        await b.write(f.ino, 0, data, False)
        self.assertEqual((await b.commit(f.ino)).size, 4096)
        self.assertEqual(await b.read(f.ino, 0, 8192), (data, True))
        self.assertEqual((await b.unlink(d.ino, b"f")).nlink, 0)
        selects = [s for s in statements if s.startswith("SELECT") and "FROM inode" in s]
        self.assertEqual(selects, [])
        self.assertNotIn(f.ino, b._engine._rows)
        with self.assertRaises(errors.NotFound):
            await b.lookup(d.ino, b"f")
        self.assert_rows_committed(b)

    async def test_rows_are_the_database_rows(self) -> None:
        """After creates, writes, setattrs, links, renames and removals."""
        b = await self.store(inline_max=4096)
        d = await b.create(1, b"d", DIR, 0o755, 0, 0)
        e = await b.create(1, b"e", DIR, 0o755, 0, 0, durable=False)
        f = await b.create(d.ino, b"f", REG, 0o644, 0, 0)
        g = await b.create(d.ino, b"g", REG, 0o600, 0, 0, durable=False)
        await b.write(f.ino, 0, b"x" * 100, False)
        await b.write(g.ino, 0, b"y" * 9000, True)
        await b.setattr(f.ino, SetAttrs(mode=0o640, size=10))
        await b.link(f.ino, e.ino, b"f2")
        await b.rename(d.ino, b"g", e.ino, b"g2")
        await b.symlink(e.ino, b"l", b"target", 0o777, 0, 0)
        await b.unlink(d.ino, b"f")
        await b.rmdir(1, b"d")
        await b.commit(f.ino)
        kept = b._engine._rows
        self.assertTrue({1, e.ino, f.ino, g.ino} <= set(kept))
        self.assertNotIn(d.ino, kept)
        self.assert_rows_committed(b)
        self.assertEqual((await b.getattr(f.ino)).nlink, 1)
        self.assertEqual((await b.getattr(f.ino)).mode & 0o777, 0o640)

    async def test_ops_of_one_batch_see_each_others_rows(self) -> None:
        """
        Changes queued behind a busy writer share a batch: each loads the
        directory's row as the op before it in the batch wrote it (not yet
        committed, so not kept), not as the last commit left it.
        """
        b = await self.store()
        await b.create(1, b"a", REG, 0o644, 0, 0)
        root = await b.root()
        self.assertIn(1, b._engine._rows)
        ev, held = await self.gate(b)
        ds = [b.create(1, b"d%d" % i, DIR, 0o755, 0, 0) for i in range(3)]
        ev.set()
        await held
        await defer.gatherResults(ds)
        self.assertEqual(b.stats.largest_batch, 3)
        after = await b.root()
        self.assertEqual((after.nlink, after.change), (root.nlink + 3, root.change + 3))
        self.assert_rows_committed(b)

    async def test_rolled_back_op_leaves_the_committed_row(self) -> None:
        """
        An op that changed the root directory's row and then failed: the
        next op starts from the committed row, not from the one it changed.
        """
        b = await self.store()
        await b.create(1, b"a", REG, 0o644, 0, 0, durable=False)
        root = await b.root()
        self.assertIn(1, b._engine._rows)

        def half_done(engine: Engine, ctx: Any) -> None:
            node = engine._get(ctx, 1)
            node.nlink += 5
            engine._touch(ctx, node)
            raise sqlite3.OperationalError("injected")

        op = engine_module.Op(half_done, (), durable=False)
        op.d = defer.Deferred()
        b._submitted += 1
        self.assertTrue(b._writer.run_here(op))  # type: ignore[union-attr]
        with self.assertRaises(errors.IO):
            await op.d
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)
        self.assert_rows_committed(b)
        await b.create(1, b"b", REG, 0o644, 0, 0, durable=False)
        after = await b.root()
        self.assertEqual(after.nlink, root.nlink)
        self.assertEqual(after.change, root.change + 1)
        self.assert_rows_committed(b)

    async def test_batch_that_could_not_commit_forgets(self) -> None:
        """
        A commit that failed: whether the batch reached the log is not
        known, so no row is kept, and the next ops read them again.
        """
        b = await self.store()
        await b.create(1, b"a", REG, 0o644, 0, 0, durable=False)
        engine = b._engine
        self.assertTrue(engine._rows)
        real = engine.conn
        assert real is not None

        class FailingCommit:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            def execute(self, sql: str, *args: Any) -> Any:
                if sql == "COMMIT":
                    raise sqlite3.OperationalError("disk I/O error")
                return real.execute(sql, *args)

        engine.conn = FailingCommit()  # type: ignore[assignment]
        try:
            with self.assertRaises(errors.IO):
                await b.create(1, b"b", REG, 0o644, 0, 0, durable=False)
        finally:
            engine.conn = real
        self.flushLoggedErrors(sqlite3.OperationalError)
        self.assertEqual(engine._rows, {})
        await b.create(1, b"c", REG, 0o644, 0, 0, durable=False)
        self.assert_rows_committed(b)
        self.assertEqual([e.name for e in (await b.readdir(1, 0, ZERO, 10)).entries], [b"a", b"c"])


class FirstWriteTests(StoreCase):
    """
    A file this store made and nobody wrote has no inline row and no data
    file: its first write asks for neither (no SELECT of the row, no open of
    a data-file path that is not there), and what it writes reads back.
    """

    def watch(self, b: EmbeddedBackend, ino: int) -> tuple[list[str], list[str]]:
        statements: list[str] = []
        assert b._engine.conn is not None
        b._engine.conn.set_trace_callback(statements.append)
        self.addCleanup(b._engine.conn.set_trace_callback, None)
        path = str(b._engine.layout.path(ino))
        opened: list[str] = []
        real = os.open

        def open_(p: Any, *a: Any, **kw: Any) -> int:
            if str(p) == path:
                opened.append(str(p))
            return real(p, *a, **kw)

        self.patch(os, "open", open_)
        return statements, opened

    async def test_first_write_asks_nothing(self) -> None:
        b = await self.store(inline_max=4096)
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        statements, opened = self.watch(b, f.ino)
        data = os.urandom(4096)
        await b.write(f.ino, 0, data, False)
        self.assertEqual([s for s in statements if "FROM inline_data" in s], [])
        self.assertEqual(opened, [])
        self.assertEqual(await b.read(f.ino, 0, 8192), (data, True))
        # The second write reads the row the first one put.
        await b.write(f.ino, 10, b"abc", False)
        self.assertEqual(await b.read(f.ino, 0, 8192), (data[:10] + b"abc" + data[13:], True))

    async def test_first_write_after_truncate_up(self) -> None:
        """A size set before the first write still reads as zeros up to it."""
        b = await self.store(inline_max=4096)
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        await b.setattr(f.ino, SetAttrs(size=100))
        await b.write(f.ino, 0, b"x" * 10, False)
        self.assertEqual(await b.read(f.ino, 0, 8192), (b"x" * 10 + bytes(90), True))

    async def test_first_write_beyond_inline(self) -> None:
        """Past the inline size the first write makes the data file, as before."""
        b = await self.store(inline_max=4096)
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        data = os.urandom(5000)
        await b.write(f.ino, 0, data, False)
        self.assertTrue(os.path.exists(b._engine.layout.path(f.ino)))
        self.assertEqual(await b.read(f.ino, 0, 8192), (data, True))

    async def test_after_allocation(self) -> None:
        """An allocation made the data file: a small write then goes to it."""
        b = await self.store(inline_max=4096)
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        await b.allocate(f.ino, 0, 8192)
        await b.write(f.ino, 0, b"y" * 10, False)
        self.assertEqual((await b.read(f.ino, 0, 10))[0], b"y" * 10)
        self.assertTrue(os.path.exists(b._engine.layout.path(f.ino)))


class SoleOpTests(StoreCase):
    """
    A batch of one change (what SMB's changes and small unstable writes make
    when run on the reactor's thread) runs without a savepoint: its failure
    rolls the whole transaction back, leaving the store as before it.
    """

    def trace(self, b: EmbeddedBackend) -> list[str]:
        statements: list[str] = []
        assert b._engine.conn is not None
        b._engine.conn.set_trace_callback(statements.append)
        self.addCleanup(b._engine.conn.set_trace_callback, None)
        return statements

    async def test_no_savepoint(self) -> None:
        """A create and a write on the reactor's thread: no SAVEPOINT, no RELEASE."""
        b = await self.store(inline_max=4096)
        statements = self.trace(b)
        f = await b.create(1, b"f", REG, 0o644, 0, 0, durable=False)
        await b.write(f.ino, 0, b"abc", False)
        self.assertEqual(sum(s.startswith("BEGIN") for s in statements), 2)
        self.assertEqual([s for s in statements if "SAVEPOINT" in s or "RELEASE" in s], [])
        self.assertEqual(await b.read(f.ino, 0, 10), (b"abc", True))

    async def test_failure_leaves_nothing(self) -> None:
        """
        The op failed halfway (an entry added, then an error): nothing of it
        stays, the inode counter is where it was, and the next change works.
        """
        b = await self.store()
        root = await b.root()
        next_ino = b._engine.next_ino

        def half_done(engine: Engine, ctx: Any) -> None:
            engine._make(ctx, FileType.REG, 0o644, 0, 0, (0, 0))
            engine._add_entry(ctx, engine._get(ctx, 1), b"ghost", engine._get(ctx, 1))
            raise sqlite3.OperationalError("injected")

        op = engine_module.Op(half_done, (), durable=False)
        op.d = defer.Deferred()
        b._submitted += 1
        self.assertTrue(b._writer.run_here(op))  # type: ignore[union-attr]
        with self.assertRaises(errors.IO):
            await op.d
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)
        self.assertEqual(b._engine.next_ino, next_ino)
        self.assertEqual(list((await b.readdir(1, 0, ZERO, 10)).entries), [])
        self.assertEqual((await b.root()).change, root.change)
        self.assertFalse(b.stats.last_batch_failed)
        f = await b.create(1, b"f", REG, 0o644, 0, 0, durable=False)
        self.assertEqual(f.ino, next_ino)
        with self.assertRaises(errors.Exists):
            await b.create(1, b"f", REG, 0o644, 0, 0, durable=False)
        self.assertEqual([e.name for e in (await b.readdir(1, 0, ZERO, 10)).entries], [b"f"])

    async def test_create_looks_nothing_up(self) -> None:
        """
        A create asks no lookup of its name first: the entry's primary key
        refuses a name that exists (one SELECT less per create; docs/bench.rst
        "SMB: what a create and a delete cost, seventh round").
        """
        b = await self.store()
        statements = self.trace(b)
        await b.create(1, b"f", REG, 0o644, 0, 0, durable=False)
        await b.create(1, b"d", DIR, 0o755, 0, 0)
        self.assertEqual([s for s in statements if "FROM dirent" in s], [])

    async def test_create_of_a_name_that_exists(self) -> None:
        """
        A file or directory made over a name that exists fails Exists, on the
        reactor's thread (a sole op) and through the writer (durable), with
        nothing logged and nothing of it left: the entry, the parent and the
        inode counter are as before, and the next create takes the next number.
        """
        b = await self.store()
        f = await b.create(1, b"f", REG, 0o644, 0, 0, durable=False)
        root = await b.root()
        next_ino = b._engine.next_ino
        for kind in (REG, DIR):
            for durable in (False, True):
                with self.assertRaises(errors.Exists):
                    await b.create(1, b"f", kind, 0o644, 0, 0, durable=durable)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(b._engine.next_ino, next_ino)
        self.assertEqual((await b.lookup(1, b"f")).ino, f.ino)
        after = await b.root()
        self.assertEqual((after.nlink, after.change), (root.nlink, root.change))
        g = await b.create(1, b"g", REG, 0o644, 0, 0, durable=False)
        self.assertEqual(g.ino, next_ino)

    def test_create_of_a_name_that_exists_in_a_batch(self) -> None:
        """In a batch of several ops the failed create is undone alone (its savepoint)."""
        e = Engine(Path(self.mktemp()))
        e.open()
        self.addCleanup(e.close)
        first = engine_module.Op(Engine.op_create, (1, b"f", REG, 0o644, 0, 0), False)
        self.assertEqual(e.run_batch([first])[0], 1)
        e.after_batch()
        start = e.next_ino
        again = engine_module.Op(Engine.op_create, (1, b"f", DIR, 0o755, 0, 0), False)
        other = engine_module.Op(Engine.op_create, (1, b"g", REG, 0o644, 0, 0), False)
        e.run_batch([again, other])
        e.after_batch()
        self.assertFalse(again.ok)
        self.assertIsInstance(again.value, errors.Exists)
        self.assertTrue(other.ok)
        self.assertEqual(other.value.ino, start)
        assert e.conn is not None
        rows = e.conn.execute("SELECT name, ino FROM dirent WHERE parent = 1 ORDER BY name")
        self.assertEqual(rows.fetchall(), [(b"f", first.value.ino), (b"g", start)])
        self.assertEqual(e.conn.execute("SELECT nlink FROM inode WHERE ino = 1").fetchone(), (2,))

    def test_failure_keeps_earlier_rows_to_clear(self) -> None:
        """
        The rolled-back transaction had deleted the pending_io rows of earlier
        physical changes (a freed data file's): the next one deletes them.
        """
        e = Engine(Path(self.mktemp()))
        e.open()
        self.addCleanup(e.close)

        def run(fn: Any, *args: Any, durable: bool = False) -> engine_module.Op:
            op = engine_module.Op(fn, args, durable)
            self.assertEqual(e.run_batch([op])[0], 1)
            e.after_batch()
            return op

        f = run(Engine.op_create, 1, b"f", REG, 0o644, 0, 0).value
        run(Engine.op_write, f.ino, 0, b"x" * 100, True, durable=True)
        run(Engine.op_unlink, 1, b"f", durable=True)
        assert e.conn is not None
        rows = e.conn.execute("SELECT COUNT(*) FROM pending_io").fetchone()
        self.assertEqual(rows, (1,))
        self.assertEqual(len(e._done_rows), 1)
        failed = run(Engine.op_unlink, 1, b"f")
        self.assertFalse(failed.ok)
        self.assertIsInstance(failed.value, errors.NotFound)
        self.assertEqual(e.conn.execute("SELECT COUNT(*) FROM pending_io").fetchone(), rows)
        self.assertEqual(len(e._done_rows), 1)
        run(Engine.op_create, 1, b"g", REG, 0o644, 0, 0)
        self.assertEqual(e._done_rows, [])
        self.assertEqual(e.conn.execute("SELECT COUNT(*) FROM pending_io").fetchone(), (0,))


class InlineUnlinkTests(StoreCase):
    """
    Removing the last name of a file whose bytes are inline: its attributes
    after (nlink 0, nothing used) come without a stat of a data-file path that
    is not there, and its inline row is asked for once.
    """

    async def test_no_stat(self) -> None:
        b = await self.store(inline_max=4096)
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        await b.write(f.ino, 0, b"x" * 4096, False)
        path = str(b._engine.layout.path(f.ino))
        stats: list[str] = []
        real = os.stat

        def stat(p: Any, *a: Any, **kw: Any) -> Any:
            if str(p) == path:
                stats.append(str(p))
            return real(p, *a, **kw)

        self.patch(os, "stat", stat)
        statements: list[str] = []
        assert b._engine.conn is not None
        b._engine.conn.set_trace_callback(statements.append)
        self.addCleanup(b._engine.conn.set_trace_callback, None)
        after = await b.unlink(1, b"f", durable=False)
        self.assertEqual((after.nlink, after.size, after.used), (0, 4096, 0))
        self.assertEqual(stats, [])
        self.assertEqual(len([s for s in statements if "FROM inline_data" in s]), 1)
        with self.assertRaises(errors.NotFound):
            await b.lookup(1, b"f")

    async def test_data_file_still_counted(self) -> None:
        """A file with a data file reports the space it used, as before."""
        b = await self.store(inline_max=0)
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        await b.write(f.ino, 0, b"x" * 8192, True)
        after = await b.unlink(1, b"f")
        self.assertEqual(after.nlink, 0)
        self.assertGreaterEqual(after.used, 8192)


class UsageRowTests(StoreCase):
    """
    A usage row goes when its counts reach zero, and only then is a DELETE
    run: an unlink whose owner keeps other files runs none (it ran one per
    row, user and group, before), also after a reopen.
    """

    def trace(self, b: EmbeddedBackend) -> list[str]:
        statements: list[str] = []
        assert b._engine.conn is not None
        b._engine.conn.set_trace_callback(statements.append)
        self.addCleanup(lambda: b._engine.conn and b._engine.conn.set_trace_callback(None))
        return statements

    def deletes(self, statements: list[str]) -> list[str]:
        return [s for s in statements if s.startswith("DELETE FROM usage")]

    async def test_delete_only_at_zero(self) -> None:
        path = Path(self.mktemp())
        b = await self.store(path, inline_max=4096)
        for name in (b"a", b"b", b"c"):
            f = await b.create(1, name, REG, 0o644, 7, 8)
            await b.write(f.ino, 0, b"x" * 100, False)
        statements = self.trace(b)
        await b.unlink(1, b"a")
        self.assertEqual(self.deletes(statements), [])
        self.assertEqual(await b.usage("user", 7), Usage(200, 2))
        self.assertEqual(await b.usage("group", 8), Usage(200, 2))
        await b.close()

        b2 = await self.store(path, inline_max=4096)
        statements = self.trace(b2)
        await b2.unlink(1, b"b")
        self.assertEqual(self.deletes(statements), [])
        self.assertEqual(await b2.usage("user", 7), Usage(100, 1))
        await b2.unlink(1, b"c")
        self.assertEqual(len(self.deletes(statements)), 2)
        self.assertNotIn(7, await b2.all_usage("user"))
        self.assertNotIn(8, await b2.all_usage("group"))
        # The ids come back from zero as any new id does.
        f = await b2.create(1, b"d", REG, 0o644, 7, 8)
        await b2.write(f.ino, 0, b"y" * 10, False)
        self.assertEqual(await b2.usage("user", 7), Usage(10, 1))

    async def test_failed_op_moves_nothing(self) -> None:
        """
        An unlink that fails (no such name) changes no row, and the next
        one that takes the last file still drops the rows.
        """
        b = await self.store(inline_max=4096)
        await b.create(1, b"a", REG, 0o644, 7, 8)
        with self.assertRaises(errors.NotFound):
            await b.unlink(1, b"nope")
        statements = self.trace(b)
        await b.unlink(1, b"a")
        self.assertEqual(len(self.deletes(statements)), 2)
        self.assertEqual(await b.all_usage("user"), {0: Usage(0, 1)})


class XattrDeleteTests(StoreCase):
    """
    A freed inode's extended attributes are deleted with it, but a store
    whose xattr table has never held a row (NFS's files have none) runs no
    DELETE FROM xattr per unlink: REMOVE's statements 12 to 11.
    """

    trace = UsageRowTests.trace

    def xattr_deletes(self, statements: list[str]) -> list[str]:
        return [s for s in statements if s.startswith("DELETE FROM xattr")]

    async def test_none_while_no_inode_has_xattrs(self) -> None:
        path = Path(self.mktemp())
        b = await self.store(path, inline_max=4096)
        for name in (b"a", b"b"):
            f = await b.create(1, name, REG, 0o644, 0, 0)
            await b.write(f.ino, 0, b"x" * 4096, False)
        statements = self.trace(b)
        await b.unlink(1, b"a")
        self.assertEqual(self.xattr_deletes(statements), [])
        await b.close()
        # Also after a reopen (the table is looked at once, at open).
        b2 = await self.store(path, inline_max=4096)
        statements = self.trace(b2)
        await b2.unlink(1, b"b")
        self.assertEqual(self.xattr_deletes(statements), [])

    async def test_deleted_with_their_inode_once_any_exists(self) -> None:
        path = Path(self.mktemp())
        b = await self.store(path, inline_max=4096)
        f = await b.create(1, b"a", REG, 0o644, 0, 0)
        g = await b.create(1, b"b", REG, 0o644, 0, 0)
        await b.create(1, b"c", REG, 0o644, 0, 0)
        await b.setxattr(f.ino, b"user.k", b"v")
        await b.setxattr(g.ino, b"user.k", b"v")
        statements = self.trace(b)
        await b.unlink(1, b"a")
        self.assertEqual(len(self.xattr_deletes(statements)), 1)
        assert b._engine.conn is not None
        rows = b._engine.conn.execute("SELECT ino FROM xattr").fetchall()
        self.assertEqual(rows, [(g.ino,)])
        await b.close()
        # A reopened store with rows deletes them too.
        b2 = await self.store(path, inline_max=4096)
        statements = self.trace(b2)
        await b2.unlink(1, b"b")
        await b2.unlink(1, b"c")
        self.assertEqual(len(self.xattr_deletes(statements)), 2)
        assert b2._engine.conn is not None
        self.assertEqual(b2._engine.conn.execute("SELECT ino FROM xattr").fetchall(), [])

    async def test_put_file_xattrs_count(self) -> None:
        """An S3 object's metadata (put_file's xattrs) counts as a row."""
        b = await self.store(inline_max=4096)
        await b.put_file(1, b"k", 0o644, 0, 0, b"data", ((b"user.s3.k", b"v"),), 0)
        statements = self.trace(b)
        await b.unlink(1, b"k")
        self.assertEqual(len(self.xattr_deletes(statements)), 1)


class FilelessTests(StoreCase):
    """
    The files a store made and never gave a data file (inline, or empty;
    L{Layout.fileless}): their attributes need no C{stat} and their removal
    no C{unlink} and no C{pending_io} row (issue 18, docs/bench.rst "NFS
    small files, ninth round"). Before, a small file made, written inline
    and removed cost two C{stat} and one C{unlink} that failed, an empty
    file's removal an INSERT and a later DELETE of a C{pending_io} row.
    Files that did get one still lose it with their last name.
    """

    trace = UsageRowTests.trace

    def data_calls(self, b: EmbeddedBackend) -> list[tuple[str, str]]:
        """Calls of C{os.stat} and C{os.unlink} on the store's data files from now on."""
        calls: list[tuple[str, str]] = []
        root = b._engine.layout.root
        for name in ("stat", "unlink"):
            real = getattr(os, name)

            def counting(path: Any, *a: Any, _real: Any = real, _name: str = name, **k: Any) -> Any:
                if isinstance(path, str) and path.startswith(root):
                    calls.append((_name, path))
                return _real(path, *a, **k)

            self.patch(os, name, counting)
        return calls

    async def settle(self, b: EmbeddedBackend) -> None:
        """Another change: the batch before it has run its after_batch (data files deleted)."""
        await b.create(1, b"settle-%d" % b._engine.next_ino, REG, 0o644, 0, 0, durable=False)

    async def test_small_file_asks_nothing_of_the_data_tree(self) -> None:
        b = await self.store(inline_max=4096)
        d = await b.create(1, b"d", DIR, 0o755, 0, 0)
        calls = self.data_calls(b)
        f = await b.create(d.ino, b"f", REG, 0o644, 0, 0)
        self.assertEqual((await b.getattr(f.ino)).size, 0)  # libnfs's SETATTR size 0 asks this
        await b.write(f.ino, 0, b"x" * 4096, False)
        self.assertEqual((await b.commit(f.ino)).size, 4096)
        self.assertEqual((await b.unlink(d.ino, b"f")).nlink, 0)
        await self.settle(b)
        self.assertEqual(calls, [])
        self.assertFalse(os.path.exists(b._engine.layout.path(f.ino)))
        self.assertNotIn(f.ino, b._engine.layout.fileless)

    async def test_empty_file_removal_writes_no_pending_row(self) -> None:
        b = await self.store(inline_max=4096)
        f = await b.create(1, b"f", REG, 0o644, 0, 0)
        statements = self.trace(b)
        await b.unlink(1, b"f")
        await self.settle(b)
        self.assertEqual([s for s in statements if "pending_io" in s], [])
        self.assertEqual(b._engine.stats.free_errors, 0)
        with self.assertRaises(errors.NotFound):
            await b.getattr(f.ino)

    async def test_files_that_had_one_lose_it(self) -> None:
        """Written out of line at once, or moved out of line later."""
        b = await self.store(inline_max=4096)
        lay = b._engine.layout
        big = await b.create(1, b"big", REG, 0o644, 0, 0)
        await b.write(big.ino, 0, b"b" * 100_000, True)
        grown = await b.create(1, b"grown", REG, 0o644, 0, 0)
        await b.write(grown.ino, 0, b"g" * 100, True)
        self.assertIn(grown.ino, lay.fileless)
        await b.write(grown.ino, 100, b"g" * 8000, True)
        self.assertFalse({big.ino, grown.ino} & lay.fileless)
        self.assertTrue(os.path.exists(lay.path(big.ino)))
        self.assertTrue(os.path.exists(lay.path(grown.ino)))
        self.assertGreater((await b.getattr(grown.ino)).used, 0)
        await b.unlink(1, b"big")
        await b.unlink(1, b"grown")
        await self.settle(b)
        self.assertFalse(os.path.exists(lay.path(big.ino)))
        self.assertFalse(os.path.exists(lay.path(grown.ino)))

    async def test_number_given_out_again(self) -> None:
        """
        An op that made a file and its data file, then failed, puts the
        inode number back; the create that gets it again may find that data
        file, so it is not taken as fileless, and its removal deletes it.
        """
        b = await self.store(inline_max=4096)
        engine = b._engine

        def made_then_failed(engine: Engine, ctx: Any) -> None:
            attrs = engine.op_create(ctx, 1, b"x", REG, 0o644, 0, 0)
            fd = engine.files.get(attrs.ino, create=True)
            assert fd is not None
            os.pwrite(fd, b"stray", 0)
            raise errors.Inval("injected")

        op = engine_module.Op(made_then_failed, (), durable=False)
        op.d = defer.Deferred()
        b._submitted += 1
        number = engine.next_ino
        self.assertTrue(b._writer.run_here(op))  # type: ignore[union-attr]
        with self.assertRaises(errors.Inval):
            await op.d
        self.assertEqual(engine.next_ino, number)
        self.assertTrue(os.path.exists(engine.layout.path(number)))
        f = await b.create(1, b"y", REG, 0o644, 0, 0)
        self.assertEqual(f.ino, number)
        self.assertNotIn(number, engine.layout.fileless)
        await b.unlink(1, b"y")
        await self.settle(b)
        self.assertFalse(os.path.exists(engine.layout.path(number)))


class CheckpointTests(StoreCase):
    """
    SQLite checkpoints the WAL after the commit that takes it past
    C{WAL_CHECKPOINT_PAGES} (4,096) pages, not its default 1,000: a commit
    on the reactor's thread then pays a checkpoint's two syncs a quarter as
    often. The log still stops growing at about that size.
    """

    async def test_log_grows_past_default(self) -> None:
        b = await self.store(durable=False)
        wal = Path(f"{b._engine.db_path}-wal")
        for i in range(400):
            await b.create(1, b"f%04d" % i, REG, 0o644, 0, 0, durable=False)
        frames = (wal.stat().st_size - 32) // (4096 + 24)
        # Five pages or so a create: SQLite's default would have started
        # the log again from its first frame after 1,000.
        self.assertGreater(frames, 1500)
        self.assertLess(frames, engine_module.WAL_CHECKPOINT_PAGES)

    async def test_log_bounded(self) -> None:
        """Past the limit a commit checkpoints, and the log starts again from its head."""
        self.patch(engine_module, "WAL_CHECKPOINT_PAGES", 200)
        b = await self.store(durable=False)
        wal = Path(f"{b._engine.db_path}-wal")
        for i in range(300):
            await b.create(1, b"f%04d" % i, REG, 0o644, 0, 0, durable=False)
        frames = (wal.stat().st_size - 32) // (4096 + 24)
        self.assertLess(frames, 300)
