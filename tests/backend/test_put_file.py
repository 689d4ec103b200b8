"""
The embedded store's C{put_file} (issue 18, S3's small PUT): a new file, its
bytes and its attributes put over a name as one durable, atomic change.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from claudefs_gateway import errors
from claudefs_gateway.backend.embedded import EmbeddedBackend
from claudefs_gateway.backend.embedded import _engine as engine_module
from claudefs_gateway.fstypes import FileType
from tests.backend.test_embedded import StoreCase
from tests.backend.test_inline_data import MAX, rows

REG = FileType.REG
T = 1_700_000_000_123_456_789


class PutFileTests(StoreCase):
    async def store(self, path: Path | None = None, **kw: Any) -> EmbeddedBackend:
        kw.setdefault("inline_max", MAX)
        return await super().store(path, **kw)

    async def test_new_inline_file(self) -> None:
        """
        A small file: one durable commit, no data file and no data sync;
        the name, bytes, attributes, times and usage are all there.
        """
        b = await self.store()
        datasyncs = self.count("fdatasync")
        before = b.stats.durable_commits
        r = await b.put_file(1, b"obj", 0o600, 7, 8, b"hello", ((b"cfs.k", b"v"),), T)
        self.assertEqual(b.stats.durable_commits - before, 1)
        self.assertEqual(datasyncs, [])
        self.assertIsNone(r.replaced)
        a = r.source
        self.assertEqual((a.type, a.mode, a.uid, a.gid, a.size, a.nlink), (REG, 0o600, 7, 8, 5, 1))
        self.assertEqual((a.mtime_ns, a.used), (T, 0))
        self.assertEqual((await b.lookup(1, b"obj")).ino, a.ino)
        self.assertEqual(await b.read(a.ino, 0, 100), (b"hello", True))
        self.assertEqual(await b.getxattr(a.ino, b"cfs.k"), b"v")
        self.assertEqual((await b.getattr(a.ino)).mtime_ns, T)
        self.assertEqual((await b.usage("user", 7)).bytes, 5)
        self.assertEqual((await b.usage("user", 7)).inodes, 1)

    async def test_data_file_synced_before_commit(self) -> None:
        """Past the inline size: a data file, synced once, before the one commit."""
        b = await self.store()
        datasyncs = self.count("fdatasync")
        body = os.urandom(3 * MAX)
        before = b.stats.durable_commits
        a = (await b.put_file(1, b"big", 0o600, 0, 0, body, (), T)).source
        self.assertEqual(b.stats.durable_commits - before, 1)
        self.assertEqual(len(datasyncs), 1)
        self.assertEqual(rows(b.data_dir, "SELECT ino FROM inline_data WHERE ino = ?", a.ino), [])
        self.assertEqual(await b.read(a.ino, 0, 1 << 20), (body, True))

    async def test_replaces_a_file(self) -> None:
        """An existing file is replaced (and freed: its usage goes), as a rename over it."""
        b = await self.store()
        old = (await b.put_file(1, b"k", 0o600, 5, 5, b"old bytes", (), T)).source
        r = await b.put_file(1, b"k", 0o600, 5, 5, b"new", ((b"cfs.x", b"1"),), T + 1)
        self.assertIsNotNone(r.replaced)
        assert r.replaced is not None
        self.assertEqual((r.replaced.ino, r.replaced.nlink), (old.ino, 0))
        self.assertEqual((await b.lookup(1, b"k")).ino, r.source.ino)
        self.assertEqual(await b.read(r.source.ino, 0, 100), (b"new", True))
        with self.assertRaises(errors.NotFound):
            await b.getattr(old.ino)
        self.assertEqual((await b.usage("user", 5)).bytes, 3)
        self.assertEqual((await b.usage("user", 5)).inodes, 1)

    async def test_a_hard_linked_file_keeps_its_other_name(self) -> None:
        b = await self.store()
        old = (await b.put_file(1, b"k", 0o600, 0, 0, b"old", (), T)).source
        await b.link(old.ino, 1, b"other")
        r = await b.put_file(1, b"k", 0o600, 0, 0, b"new", (), T)
        assert r.replaced is not None
        self.assertEqual(r.replaced.nlink, 1)
        self.assertEqual(await b.read(old.ino, 0, 10), (b"old", True))

    async def test_refusals_change_nothing(self) -> None:
        """A directory at the name, a missing or non-directory parent, a bad xattr name."""
        b = await self.store()
        d = await b.create(1, b"dir", FileType.DIR, 0o755, 0, 0)
        f = (await b.put_file(1, b"f", 0o600, 0, 0, b"x", (), T)).source
        with self.assertRaises(errors.IsDir):
            await b.put_file(1, b"dir", 0o600, 0, 0, b"x", (), T)
        with self.assertRaises(errors.NotFound):
            await b.put_file(999999, b"n", 0o600, 0, 0, b"x", (), T)
        with self.assertRaises(errors.NotDir):
            await b.put_file(f.ino, b"n", 0o600, 0, 0, b"x", (), T)
        with self.assertRaises(errors.FSError):
            await b.put_file(1, b"n", 0o600, 0, 0, b"x", ((b"", b"v"),), T)
        self.assertEqual((await b.lookup(1, b"dir")).ino, d.ino)
        with self.assertRaises(errors.NotFound):
            await b.lookup(1, b"n")
        self.assertEqual((await b.usage("user", 0)).inodes, 3)  # root, dir, f

    async def test_failed_write_leaves_the_old_file(self) -> None:
        """The data file cannot be written (disk full): NoSpace, the old file stays whole."""
        b = await self.store()
        old = (await b.put_file(1, b"k", 0o600, 0, 0, b"old", (), T)).source

        def full(fd: int, data: Any, offset: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(engine_module, "pwrite_all", full)
        with self.assertRaises(errors.NoSpace):
            await b.put_file(1, b"k", 0o600, 0, 0, os.urandom(2 * MAX), (), T)
        self.assertEqual((await b.lookup(1, b"k")).ino, old.ino)
        self.assertEqual(await b.read(old.ino, 0, 10), (b"old", True))

    async def test_reopened(self) -> None:
        """What was put is there after a reopen (small and large)."""
        path = Path(self.mktemp())
        b = await self.store(path)
        small = (await b.put_file(1, b"s", 0o600, 0, 0, b"tiny", ((b"cfs.m", b"1"),), T)).source
        large = os.urandom(2 * MAX)
        big = (await b.put_file(1, b"l", 0o600, 0, 0, large, (), T)).source
        await b.close()
        b = await self.store(path)
        self.assertEqual(await b.read(small.ino, 0, 100), (b"tiny", True))
        self.assertEqual(await b.read(big.ino, 0, 1 << 20), (large, True))
        self.assertEqual(await b.getxattr(small.ino, b"cfs.m"), b"1")

    async def test_directories_made_on_the_way(self) -> None:
        """
        C{dirs}: made one in the other, with their owners, modes and
        attributes, in the same one commit; the file goes in the last.
        """
        b = await self.store()
        before = b.stats.durable_commits
        dirs = ((b"a", 0o755, 3, 4, ((b"cfs.d", b"auto"),)), (b"b", 0o700, 3, 4, ()))
        r = await b.put_file(1, b"f", 0o600, 3, 4, b"x", (), T, dirs)
        self.assertEqual(b.stats.durable_commits - before, 1)
        self.assertEqual([m.mode for m in r.made], [0o755, 0o700])
        a = await b.lookup(1, b"a")
        self.assertEqual(
            (a.ino, a.type, a.uid, a.gid, a.nlink), (r.made[0].ino, FileType.DIR, 3, 4, 3)
        )
        self.assertEqual(await b.getxattr(a.ino, b"cfs.d"), b"auto")
        bb = await b.lookup(a.ino, b"b")
        self.assertEqual(bb.ino, r.made[1].ino)
        self.assertEqual((await b.lookup(bb.ino, b"f")).ino, r.source.ino)
        self.assertEqual((await b.usage("user", 3)).inodes, 3)

    async def test_a_directory_made_meanwhile(self) -> None:
        """One of C{dirs} exists (made by someone else since): Exists, nothing changes."""
        b = await self.store()
        await b.create(1, b"a", FileType.DIR, 0o755, 0, 0)
        with self.assertRaises(errors.Exists):
            await b.put_file(1, b"f", 0o600, 0, 0, b"x", (), T, ((b"a", 0o755, 0, 0, ()),))
        # A bad name further down: the directory made before it goes too.
        with self.assertRaises(errors.FSError):
            await b.put_file(
                1, b"f", 0o600, 0, 0, b"x", (), T, ((b"n", 0o755, 0, 0, ()), (b"", 0o755, 0, 0, ()))
            )
        with self.assertRaises(errors.NotFound):
            await b.lookup(1, b"n")


class UnlinkPruningTests(StoreCase):
    """C{unlink_pruning}: S3's DELETE and the pruning of the directories it empties, in one change."""

    async def test_prunes_emptied_directories_up_to_a_kept_one(self) -> None:
        b = await self.store()
        top = await b.create(1, b"top", FileType.DIR, 0o755, 0, 0)
        a = await b.create(top.ino, b"a", FileType.DIR, 0o755, 0, 0)
        c = await b.create(a.ino, b"c", FileType.DIR, 0o755, 0, 0)
        await b.create(top.ino, b"keep", REG, 0o644, 0, 0)
        f = await b.create(c.ino, b"f", REG, 0o644, 0, 0)
        before = b.stats.durable_commits
        dirs = ((a.ino, b"c", c.ino), (top.ino, b"a", a.ino), (1, b"top", top.ino))
        after, removed = await b.unlink_pruning(c.ino, b"f", dirs)
        self.assertEqual(b.stats.durable_commits - before, 1)
        self.assertEqual((after.ino, after.nlink), (f.ino, 0))
        self.assertEqual([r.ino for r in removed], [c.ino, a.ino])
        for parent, name in ((top.ino, b"a"), (a.ino, b"c")):
            with self.assertRaises(errors.NotFound):
                await b.lookup(parent, name)
        self.assertEqual((await b.lookup(1, b"top")).ino, top.ino)
        self.assertEqual((await b.getattr(top.ino)).nlink, 2)

    async def test_stops_at_a_directory_not_empty_or_replaced(self) -> None:
        b = await self.store()
        a = await b.create(1, b"a", FileType.DIR, 0o755, 0, 0)
        await b.create(a.ino, b"f", REG, 0o644, 0, 0)
        await b.create(a.ino, b"g", REG, 0o644, 0, 0)
        _, removed = await b.unlink_pruning(a.ino, b"f", ((1, b"a", a.ino),))
        self.assertEqual(removed, ())
        # The name now holds another inode than the one asked for: kept.
        _, removed = await b.unlink_pruning(a.ino, b"g", ((1, b"a", a.ino + 1000),))
        self.assertEqual(removed, ())
        self.assertEqual((await b.lookup(1, b"a")).ino, a.ino)

    async def test_missing_name_changes_nothing(self) -> None:
        b = await self.store()
        a = await b.create(1, b"a", FileType.DIR, 0o755, 0, 0)
        with self.assertRaises(errors.NotFound):
            await b.unlink_pruning(a.ino, b"nope", ((1, b"a", a.ino),))
        self.assertEqual((await b.lookup(1, b"a")).ino, a.ino)
