"""
Small files' bytes kept in the embedded store's database (C{inline_data},
schema 2; docs/backend.rst, "Small files inline"): what is written, read,
synced and freed, moving out of line, truncation, names, reopening, and the
migration of a store written before.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from claudefs_gateway.backend.embedded import EmbeddedBackend
from claudefs_gateway.backend.embedded._engine import ORPHANS_KEY, ORPHANS_MAX
from claudefs_gateway.backend.embedded._files import Layout
from claudefs_gateway.backend.embedded._schema import SCHEMA_VERSION
from claudefs_gateway.fstypes import FileType, SetAttrs, Usage
from tests.backend.test_contract import ContractMixin
from tests.backend.test_embedded import StoreCase

REG = FileType.REG
MAX = 4096


def rows(path: Path, query: str, *args: Any) -> list[tuple[Any, ...]]:
    c = sqlite3.connect(path / "meta.sqlite3")
    try:
        return c.execute(query, args).fetchall()
    finally:
        c.close()


class InlineContractTests(ContractMixin, TestCase):
    """The store with inline data on, on its writer thread, meets the whole contract."""

    async def make_backend(self) -> Any:
        b = EmbeddedBackend(Path(self.mktemp()), reactor, inline_max=MAX)
        await b.open()
        self.addCleanup(b.close)
        return b


class InlineDataTests(StoreCase):
    async def store(self, path: Path | None = None, **kw: Any) -> EmbeddedBackend:
        kw.setdefault("inline_max", MAX)
        return await super().store(path, **kw)

    def data_file(self, b: EmbeddedBackend, ino: int) -> str:
        return Layout(str(b.data_dir / "data")).path(ino)

    def inline_row(self, b: EmbeddedBackend, ino: int) -> bytes | None:
        r = rows(b.data_dir, "SELECT data FROM inline_data WHERE ino = ?", ino)
        return bytes(r[0][0]) if r else None

    async def test_small_file_commit_is_one_log_sync(self) -> None:
        """
        Create, unstable write, COMMIT: no data file, no data or directory
        sync (only the WAL's: the COMMIT syncs the log, without a
        transaction of its own), the bytes read back from the reader, the
        size and the inline row match.
        """
        # The writer thread's sync, seen as os.fdatasync (from the reactor:
        # tests/backend/test_log_sync.py).
        b = await self.store(log_sync=False)
        a = await b.create(1, b"f", REG, 0o644, 0, 0)
        datasyncs, fsyncs = self.count("fdatasync"), self.count("fsync")
        before = b.stats.durable_commits
        w = await b.write(a.ino, 0, b"hello world", False)
        self.assertEqual((w.count, w.attrs.size, w.before.size), (11, 11, 0))
        await b.commit(a.ino)
        self.assertEqual(b.stats.durable_commits - before, 1)
        self.assertEqual((datasyncs, fsyncs), ([b._engine._wal_fd], []))
        self.assertFalse(os.path.exists(self.data_file(b, a.ino)))
        self.assertEqual(self.inline_row(b, a.ino), b"hello world")
        self.assertEqual(await b.read(a.ino, 0, 100), (b"hello world", True))
        self.assertEqual(await b.read(a.ino, 6, 3), (b"wor", False))
        self.assertEqual((await b.getattr(a.ino)).size, 11)
        self.assertEqual(await b.data_ranges(a.ino, 0, 100), [(0, 11)])

    async def test_stable_write_is_durable_without_a_data_sync(self) -> None:
        b = await self.store()
        a = await b.create(1, b"f", REG, 0o644, 0, 0)
        datasyncs = self.count("fdatasync")
        before = b.stats.durable_commits
        await b.write(a.ino, 0, b"x" * MAX, True)
        self.assertEqual(b.stats.durable_commits - before, 1)
        self.assertEqual(datasyncs, [])
        self.assertEqual(self.inline_row(b, a.ino), b"x" * MAX)

    async def test_sparse_and_overwrites(self) -> None:
        """Writes past the end leave zeros; overwrites replace in place; all inline."""
        b = await self.store()
        a = await b.create(1, b"f", REG, 0o644, 0, 0)
        await b.write(a.ino, 100, b"tail", False)
        await b.write(a.ino, 10, b"mid", False)
        await b.write(a.ino, 101, b"A", True)
        want = bytes(10) + b"mid" + bytes(87) + b"tAil"
        self.assertEqual(await b.read(a.ino, 0, 1000), (want, True))
        self.assertEqual(self.inline_row(b, a.ino), want)
        self.assertFalse(os.path.exists(self.data_file(b, a.ino)))

    async def test_grow_past_threshold_moves_out(self) -> None:
        """
        A write ending past the threshold moves the bytes to a data file,
        synced before the commit that drops the row, even for an unstable write.
        """
        b = await self.store()
        a = await b.create(1, b"f", REG, 0o644, 0, 0)
        first = os.urandom(3000)
        await b.write(a.ino, 0, first, False)
        await b.commit(a.ino)
        datasyncs = self.count("fdatasync")
        second = os.urandom(2000)
        w = await b.write(a.ino, 3000, second, False)
        self.assertEqual(w.attrs.size, 5000)
        self.assertEqual(len(datasyncs), 1)  # the moved bytes, before the commit
        self.assertIsNone(self.inline_row(b, a.ino))
        with open(self.data_file(b, a.ino), "rb") as f:
            self.assertEqual(f.read(), first + second)
        self.assertEqual(await b.read(a.ino, 0, 10000), (first + second, True))
        # Out of line for good: a truncation to a small size keeps the data file.
        await b.setattr(a.ino, SetAttrs(size=10))
        await b.write(a.ino, 0, b"Z", False)
        self.assertIsNone(self.inline_row(b, a.ino))
        self.assertEqual(await b.read(a.ino, 0, 100), (b"Z" + first[1:10], True))

    async def test_large_first_write_never_inline(self) -> None:
        b = await self.store()
        a = await b.create(1, b"f", REG, 0o644, 0, 0)
        await b.write(a.ino, 0, b"y" * (MAX + 1), True)
        self.assertIsNone(self.inline_row(b, a.ino))
        self.assertTrue(os.path.exists(self.data_file(b, a.ino)))

    async def test_truncate_inline(self) -> None:
        """Shrinking cuts the row in the same commit; growing reads zeros; it stays inline."""
        b = await self.store()
        a = await b.create(1, b"f", REG, 0o644, 1000, 1000)
        await b.write(a.ino, 0, b"abcdefgh", True)
        await b.setattr(a.ino, SetAttrs(size=3))
        self.assertEqual(self.inline_row(b, a.ino), b"abc")
        self.assertEqual(await b.read(a.ino, 0, 100), (b"abc", True))
        await b.setattr(a.ino, SetAttrs(size=20000))
        self.assertEqual(await b.read(a.ino, 0, 30000), (b"abc" + bytes(19997), True))
        self.assertEqual(self.inline_row(b, a.ino), b"abc")
        self.assertEqual((await b.usage("user", 1000)).bytes, 20000)
        # A write within the threshold keeps it inline even with a larger size.
        await b.write(a.ino, 1, b"Q", False)
        self.assertEqual(self.inline_row(b, a.ino), b"aQc")
        await b.setattr(a.ino, SetAttrs(size=0))
        self.assertEqual(self.inline_row(b, a.ino), b"")
        self.assertEqual(await b.read(a.ino, 0, 10), (b"", True))
        self.assertFalse(os.path.exists(self.data_file(b, a.ino)))

    async def test_allocate_moves_out_and_deallocate_zeros(self) -> None:
        b = await self.store()
        a = await b.create(1, b"f", REG, 0o644, 0, 0)
        c = await b.create(1, b"g", REG, 0o644, 0, 0)
        await b.write(a.ino, 0, b"123456", True)
        await b.deallocate(a.ino, 1, 2)
        self.assertEqual(await b.read(a.ino, 0, 10), (b"1\0\x00456", True))
        await b.write(c.ino, 0, b"abc", True)
        await b.allocate(c.ino, 0, 100)
        self.assertIsNone(self.inline_row(b, c.ino))
        self.assertEqual(await b.read(c.ino, 0, 200), (b"abc" + bytes(97), True))

    async def test_punched_blocks_are_holes(self) -> None:
        """
        A hole punched in an inline file reads as a hole, as a data file's
        punched blocks do (smbtorture smb2.ioctl.sparse_punch: a 4 KiB file
        punched whole has no allocated range); blocks with data stay data.
        """
        b = await self.store(inline_max=3 * 4096)
        a = await b.create(1, b"f", REG, 0o644, 0, 0)
        await b.write(a.ino, 0, b"x" * 3 * 4096, True)
        self.assertEqual(await b.data_ranges(a.ino, 0, 1 << 20), [(0, 3 * 4096)])
        await b.deallocate(a.ino, 4096, 4096)
        self.assertEqual(await b.data_ranges(a.ino, 0, 1 << 20), [(0, 4096), (2 * 4096, 4096)])
        self.assertEqual(await b.data_ranges(a.ino, 100, 5000), [(100, 3996)])
        await b.deallocate(a.ino, 0, 3 * 4096)
        self.assertEqual(await b.data_ranges(a.ino, 0, 1 << 20), [])
        self.assertEqual(self.inline_row(b, a.ino), bytes(3 * 4096))

    async def test_remove_frees_row_and_leaves_no_work(self) -> None:
        """
        REMOVE of an inline file: its commit leaves the row (and the page
        that holds its bytes) to a later batch, so it neither touches the
        free list nor records a pending file change; the next batch that
        syncs nothing (an unstable write) deletes the row.
        """
        b = await self.store()
        a = await b.create(1, b"f", REG, 0o644, 0, 0)
        await b.write(a.ino, 0, b"x" * MAX, True)  # past a page: an overflow page
        free = rows(b.data_dir, "PRAGMA freelist_count")
        await b.unlink(1, b"f")
        n = await b.create(1, b"next", REG, 0o644, 0, 0)  # after_batch of the unlink has run
        self.assertEqual(rows(b.data_dir, "PRAGMA freelist_count"), free)
        self.assertEqual(self.inline_row(b, a.ino), b"x" * MAX)
        self.assertEqual(rows(b.data_dir, "SELECT COUNT(*) FROM pending_io"), [(0,)])
        self.assertEqual(b.stats.free_errors, 0)
        await b.write(n.ino, 0, b"y", False)
        self.assertIsNone(self.inline_row(b, a.ino))
        self.assertGreater(rows(b.data_dir, "PRAGMA freelist_count")[0][0], free[0][0])

    async def test_durable_batches_free_rows_in_bulk(self) -> None:
        """
        With only durable changes coming (a run of REMOVEs), the rows left
        behind are deleted together once C{ORPHANS_MAX} wait, so they never
        pile up.
        """
        b = await self.store()
        files = []
        for i in range(ORPHANS_MAX + 1):
            f = await b.create(1, b"f%d" % i, REG, 0o644, 0, 0)
            await b.write(f.ino, 0, b"z" * MAX, True)
            files.append(f.ino)
        count = "SELECT COUNT(*) FROM inline_data"
        for i in range(ORPHANS_MAX):
            await b.unlink(1, b"f%d" % i)
        self.assertEqual(rows(b.data_dir, count), [(ORPHANS_MAX + 1,)])
        await b.unlink(1, b"f%d" % ORPHANS_MAX)
        self.assertEqual(rows(b.data_dir, count), [(1,)])
        self.assertEqual(self.inline_row(b, files[-1]), b"z" * MAX)

    async def test_close_and_reopen_after_a_crash_free_the_rows(self) -> None:
        """
        Rows left behind go at close; a store stopped without close (here:
        its files copied while it runs, as a crash leaves them) deletes them
        when next opened, and the files still there keep their bytes.
        """
        path = Path(self.mktemp())
        b = await self.store(path)
        a = await b.create(1, b"a", REG, 0o644, 0, 0)
        k = await b.create(1, b"keep", REG, 0o644, 0, 0)
        await b.write(a.ino, 0, b"gone", True)
        await b.write(k.ino, 0, b"kept", True)
        await b.unlink(1, b"a")
        crashed = Path(self.mktemp())
        crashed.mkdir()
        for name in os.listdir(path):
            if name in ("meta.sqlite3", "meta.sqlite3-wal"):  # -shm is rebuilt
                with open(path / name, "rb") as src, open(crashed / name, "wb") as dst:
                    dst.write(src.read())
        (crashed / "data").mkdir()
        self.assertEqual(
            rows(crashed, "SELECT data FROM inline_data ORDER BY ino"), [(b"gone",), (b"kept",)]
        )
        await b.close()
        self.assertEqual(rows(path, "SELECT data FROM inline_data"), [(b"kept",)])
        self.assertEqual(rows(path, "SELECT v FROM meta WHERE k = ?", ORPHANS_KEY), [])
        again = await self.store(crashed)
        self.assertEqual(rows(crashed, "SELECT data FROM inline_data"), [(b"kept",)])
        self.assertEqual(rows(crashed, "SELECT v FROM meta WHERE k = ?", ORPHANS_KEY), [])
        self.assertEqual(await again.read(k.ino, 0, 10), (b"kept", True))

    async def test_rename_and_hard_links_share_the_bytes(self) -> None:
        b = await self.store()
        a = await b.create(1, b"f", REG, 0o644, 0, 0)
        await b.write(a.ino, 0, b"shared", True)
        await b.link(a.ino, 1, b"g")
        await b.rename(1, b"f", 1, b"h")
        await b.unlink(1, b"g")
        h = await b.lookup(1, b"h")
        self.assertEqual(h.ino, a.ino)
        self.assertEqual(await b.read(h.ino, 0, 100), (b"shared", True))
        # A rename over an inline file frees it.
        o = await b.create(1, b"o", REG, 0o644, 0, 0)
        await b.write(o.ino, 0, b"old", True)
        await b.rename(1, b"h", 1, b"o")
        await b.write(h.ino, 0, b"shared", False)  # a batch that syncs nothing deletes the row
        self.assertIsNone(self.inline_row(b, o.ino))
        self.assertEqual(await b.read((await b.lookup(1, b"o")).ino, 0, 9), (b"shared", True))

    async def test_survives_reopen_and_threshold_zero(self) -> None:
        """
        Reopened (here with inline data off), the bytes are there; a write to
        an inline file then moves it out.
        """
        path = Path(self.mktemp())
        b = await self.store(path)
        a = await b.create(1, b"f", REG, 0o644, 0, 0)
        await b.write(a.ino, 0, b"kept", False)
        await b.commit(a.ino)
        await b.close()
        b2 = await self.store(path, inline_max=0)
        self.assertEqual(await b2.read(a.ino, 0, 10), (b"kept", True))
        n = await b2.create(1, b"n", REG, 0o644, 0, 0)
        await b2.write(n.ino, 0, b"new", True)
        self.assertTrue(os.path.exists(self.data_file(b2, n.ino)))
        await b2.write(a.ino, 4, b"!", False)
        self.assertIsNone(self.inline_row(b2, a.ino))
        self.assertEqual(await b2.read(a.ino, 0, 10), (b"kept!", True))

    async def test_row_wins_over_a_stray_data_file(self) -> None:
        """
        A move out of line cut short by a crash leaves a data file beside the
        row: reads and writes follow the row, the next move replaces the
        file's bytes, and REMOVE deletes it.
        """
        path = Path(self.mktemp())
        b = await self.store(path)
        a = await b.create(1, b"f", REG, 0o644, 0, 0)
        c = await b.create(1, b"g", REG, 0o644, 0, 0)
        await b.write(a.ino, 0, b"real", True)
        await b.write(c.ino, 0, b"real", True)
        await b.close()
        for ino in (a.ino, c.ino):
            p = self.data_file(b, ino)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "wb") as f:
                f.write(b"STALE-BYTES-STALE")
        b2 = await self.store(path)
        self.assertEqual(await b2.read(a.ino, 0, 100), (b"real", True))
        self.assertEqual(await b2.data_ranges(a.ino, 0, 100), [(0, 4)])
        await b2.write(a.ino, 4, b"!", True)
        self.assertEqual(await b2.read(a.ino, 0, 100), (b"real!", True))
        await b2.write(a.ino, MAX, b"+", True)
        self.assertEqual(await b2.read(a.ino, 0, 10000), (b"real!" + bytes(MAX - 5) + b"+", True))
        await b2.unlink(1, b"g")
        await b2.create(1, b"next", REG, 0o644, 0, 0)
        self.assertFalse(os.path.exists(self.data_file(b2, c.ino)))

    async def test_unstable_write_that_moves_out_goes_to_the_writer(self) -> None:
        """The move's data sync never runs on the reactor's thread (L{EmbeddedBackend._run_here})."""
        b = await self.store()
        a = await b.create(1, b"f", REG, 0o644, 0, 0)
        await b.write(a.ino, 0, b"s", False)
        self.assertFalse(b._moves_out(a.ino, 0, b"x" * MAX))
        self.assertTrue(b._moves_out(a.ino, MAX, b"x"))
        other = await b.create(1, b"o", REG, 0o644, 0, 0)
        await b.write(other.ino, 0, b"x" * (MAX + 1), False)
        self.assertFalse(b._moves_out(other.ino, MAX, b"x"))
        ran_here = []
        real = b._run_here

        def spy(*args: Any, **kw: Any) -> Any:
            ran_here.append(args)
            return real(*args, **kw)

        self.patch(b, "_run_here", spy)
        await b.write(a.ino, MAX, b"x", False)
        self.assertEqual(ran_here, [])
        self.assertEqual(await b.read(a.ino, 0, 1), (b"s", False))


class MigrationTests(TestCase):
    async def test_schema_2_store_keeps_its_usage(self) -> None:
        """
        A store of schema 2 (usage bytes in one column) opens as schema 3 with
        every count kept, split in two halves that go on adding exactly.
        """
        path = Path(self.mktemp())
        old = EmbeddedBackend(path, reactor)
        await old.open()
        f = await old.create(1, b"f", REG, 0o644, 5000, 5000)
        await old.write(f.ino, 0, b"x" * 10, True)
        await old.close()
        c = sqlite3.connect(path / "meta.sqlite3")
        c.executescript(
            "CREATE TABLE old (kind TEXT NOT NULL, id INTEGER NOT NULL, bytes INTEGER NOT NULL,"
            " inodes INTEGER NOT NULL, PRIMARY KEY (kind, id)) WITHOUT ROWID;"
            " INSERT INTO old SELECT kind, id, bytes, inodes FROM usage;"
            " DROP TABLE usage; ALTER TABLE old RENAME TO usage;"
            f" UPDATE usage SET bytes = {2**62 + 7} WHERE kind = 'user' AND id = 5000;"
            " UPDATE meta SET v = 2 WHERE k = 'schema';"
        )
        c.commit()
        c.close()
        b = EmbeddedBackend(path, reactor)
        await b.open()
        self.addCleanup(b.close)
        self.assertEqual(rows(path, "SELECT v FROM meta WHERE k = 'schema'"), [(SCHEMA_VERSION,)])
        self.assertEqual(await b.usage("user", 5000), Usage(2**62 + 7, 1))
        self.assertEqual(await b.usage("group", 5000), Usage(10, 1))
        await b.setattr(f.ino, SetAttrs(size=2**62))
        self.assertEqual(await b.usage("user", 5000), Usage(2**63 - 3, 1))
        self.assertEqual(await b.usage("group", 5000), Usage(2**62, 1))
        self.assertEqual(
            rows(path, "SELECT bytes, bytes_hi FROM usage WHERE kind = 'user' AND id = 5000"),
            [(2**62 - 3, 1)],
        )

    async def test_schema_1_store_opens_and_keeps_its_files(self) -> None:
        """
        A store written before inline data (schema 1, no C{inline_data}) opens,
        is migrated to schema 2, and its files keep their data files.
        """
        path = Path(self.mktemp())
        old = EmbeddedBackend(path, reactor)
        await old.open()
        a = await old.create(1, b"old", REG, 0o644, 0, 0)
        await old.write(a.ino, 0, b"old bytes", True)
        await old.close()
        c = sqlite3.connect(path / "meta.sqlite3")
        c.execute("DROP TABLE inline_data")
        c.execute("UPDATE meta SET v = 1 WHERE k = 'schema'")
        c.commit()
        c.close()
        b = EmbeddedBackend(path, reactor, inline_max=MAX)
        await b.open()
        self.addCleanup(b.close)
        self.assertEqual(rows(path, "SELECT v FROM meta WHERE k = 'schema'"), [(SCHEMA_VERSION,)])
        self.assertEqual(await b.read(a.ino, 0, 100), (b"old bytes", True))
        await b.write(a.ino, 0, b"OLD", True)
        self.assertEqual(rows(path, "SELECT COUNT(*) FROM inline_data"), [(0,)])
        self.assertEqual(await b.read(a.ino, 0, 100), (b"OLD bytes", True))
        n = await b.create(1, b"new", REG, 0o644, 0, 0)
        await b.write(n.ino, 0, b"new", True)
        self.assertEqual(rows(path, "SELECT data FROM inline_data"), [(b"new",)])
