"""Tests for L{claudefs_gateway.servers.data}: chunk files, and one-at-a-time per inode."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway import errors
from claudefs_gateway.servers.data import CHUNK, ChunkStore, DataHandler


class ChunkStoreTests(SynchronousTestCase):
    """Layout 2 (new stores); L{Layout1ChunkStoreTests} runs the same on layout 1."""

    LAYOUT = 2

    def setUp(self) -> None:
        self.store = ChunkStore(Path(self.mktemp()), durable=False, layout=self.LAYOUT)
        self.store.root.mkdir()

    def chunks(self, ino: int) -> list[int]:
        return self.store._chunks(ino)

    def test_write_across_chunks_and_read_back(self) -> None:
        data = os.urandom(100)
        self.store.write(5, CHUNK - 50, data, stable=True)
        self.assertEqual(self.chunks(5), [0, 1])
        self.assertEqual(self.store.read(5, CHUNK - 50, 100), (True, data))
        eof, got = self.store.read(5, 0, 10)
        self.assertEqual((eof, got), (False, bytes(10)))  # a hole reads as zeros

    def test_read_stops_at_what_is_held(self) -> None:
        self.store.write(1, 0, b"abc", stable=False)
        self.assertEqual(self.store.read(1, 0, 1000), (True, b"abc"))
        self.assertEqual(self.store.read(1, 10, 5), (True, b""))
        self.assertEqual(self.store.read(99, 0, 5), (True, b""))

    def test_sparse_chunks_are_not_created(self) -> None:
        self.store.write(2, 10 * CHUNK, b"x", stable=False)
        self.assertEqual(self.chunks(2), [10])
        eof, got = self.store.read(2, 5 * CHUNK, 3)
        self.assertEqual(got, bytes(3))

    def test_truncate_drops_bytes_past_size(self) -> None:
        self.store.write(3, 0, b"y" * (CHUNK + 10), stable=False)
        self.store.truncate(3, 5)
        self.assertEqual(self.chunks(3), [0])
        self.assertEqual(self.store.read(3, 0, 100), (True, b"yyyyy"))

    def test_deallocate_punches_and_drops_whole_chunks(self) -> None:
        self.store.write(4, 0, b"z" * (2 * CHUNK + 10), stable=False)
        self.store.deallocate(4, 5, 2 * CHUNK)
        self.assertEqual(self.chunks(4), [0, 2])
        eof, got = self.store.read(4, 0, 2 * CHUNK + 10)
        self.assertEqual(got[:5], b"zzzzz")
        self.assertEqual(got[5 : 2 * CHUNK + 5], bytes(2 * CHUNK))
        self.assertEqual(got[2 * CHUNK + 5 :], b"zzzzz")

    def test_forget(self) -> None:
        self.store.write(6, 0, b"q", stable=True)
        self.store.forget(6)
        self.assertEqual(self.chunks(6), [])

    def test_forget_small(self) -> None:
        """One chunk file: removed at once; more: left for forget() on a thread."""
        self.store.put(1, 0, b"a")
        self.assertTrue(self.store.forget_small(1))
        self.assertEqual(self.chunks(1), [])
        self.assertFalse(self.store._dir(1).exists())
        self.assertFalse(self.store._path(1, 0).exists())
        self.store.put(2, 0, b"a")
        self.store.put(2, CHUNK, b"b")
        self.assertFalse(self.store.forget_small(2))
        self.assertEqual(self.chunks(2), [0, 1])
        self.assertTrue(self.store.forget_small(3))  # nothing held

    def test_ranges_checked(self) -> None:
        self.assertRaises(errors.Inval, self.store.write, 1, -1, b"x", False)
        self.assertRaises(errors.FBig, self.store.write, 1, 2**63 - 1, b"x", False)
        self.assertRaises(errors.Inval, self.store.read, 1, -1, 5)
        self.assertRaises(errors.Inval, self.store.allocate, 1, 0, 0)
        self.assertRaises(errors.Inval, self.store.deallocate, 1, 0, 0)


class Layout1ChunkStoreTests(ChunkStoreTests):
    LAYOUT = 1


class SerialTests(SynchronousTestCase):
    def test_one_at_a_time_per_inode(self) -> None:
        """A read sent after a write runs after it, even though both are queued at once."""
        runs: list[tuple[defer.Deferred[Any], Any, tuple[Any, ...]]] = []

        def run(fn: Any, *args: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            runs.append((d, fn, args))
            return d

        store = ChunkStore(Path(self.mktemp()), durable=False)
        handler = DataHandler(store, run)
        w = handler.op_WRITE(None, 7, 0, False, b"abc")
        r = handler.op_READ(None, 7, 0, 3)
        other = handler.op_READ(None, 8, 0, 3)
        self.assertEqual(len(runs), 2)  # inode 7's read waits; inode 8's runs
        runs[0][0].callback(None)
        self.successResultOf(w)
        self.assertEqual(len(runs), 3)
        runs[2][0].callback((True, b"abc"))
        self.assertEqual(self.successResultOf(r), (True, b"abc"))
        runs[1][0].callback((True, b""))
        self.successResultOf(other)

    def test_os_errors_become_fs_errors(self) -> None:
        def run(fn: Any, *args: Any) -> defer.Deferred[Any]:
            return defer.fail(OSError(28, "No space left on device"))

        handler = DataHandler(ChunkStore(Path(self.mktemp())), run)
        self.failureResultOf(handler.op_WRITE(None, 1, 0, True, b"x"), errors.NoSpace)
        self.flushLoggedErrors(OSError)


class PutSyncTests(SynchronousTestCase):
    """L{ChunkStore.put} and L{ChunkStore.sync}: the short-circuit path's half."""

    LAYOUT = 2

    def setUp(self) -> None:
        self.store = ChunkStore(Path(self.mktemp()), durable=True, layout=self.LAYOUT)
        self.store.root.mkdir()
        self.synced: list[Any] = []
        real = os.fdatasync

        def fdatasync(fd: int) -> None:
            self.synced.append(os.readlink(f"/proc/self/fd/{fd}"))
            real(fd)

        self.patch(os, "fdatasync", fdatasync)

    def test_put_syncs_nothing_and_names_its_chunks(self) -> None:
        self.assertEqual(self.store.put(3, CHUNK - 1, b"ab"), [0, 1])
        self.assertEqual(self.synced, [])
        self.assertEqual(self.store.read(3, CHUNK - 1, 2), (True, b"ab"))
        self.assertEqual(self.store._dirty, {})

    def test_sync_of_named_chunks(self) -> None:
        self.store.put(3, 0, b"a")
        self.store.put(3, 2 * CHUNK, b"b")
        self.store.sync(3, [2])
        self.assertEqual(self.synced, [str(self.store._path(3, 2).absolute())])

    def test_sync_of_every_chunk(self) -> None:
        # Another process wrote chunk 0: a commit here still syncs it.
        ChunkStore(self.store.root, durable=True, layout=self.LAYOUT).put(3, 0, b"a")
        self.store.put(3, CHUNK, b"b")
        self.store.sync(3)
        self.assertEqual(self.synced, [str(self.store._path(3, i).absolute()) for i in (0, 1)])

    def test_sync_of_nothing_held(self) -> None:
        self.store.sync(42)
        self.assertEqual(self.synced, [])


class Layout1PutSyncTests(PutSyncTests):
    LAYOUT = 1


class DirSyncTests(SynchronousTestCase):
    """
    Layout 1 (stores made before layout 2; L{DirSyncLayout2Tests} for new ones).

    Every directory a write creates is synced with its parent (its entry),
    so a power loss cannot drop a new chain chunks/xx/<ino>/ and the
    acknowledged chunk file in it; a write that creates none syncs only the
    directory of a new chunk file.
    """

    def setUp(self) -> None:
        self.store = ChunkStore(Path(self.mktemp()), durable=True, layout=1)
        self.store.root.mkdir()
        self.root = str(self.store.root.absolute())
        self.fsynced: list[str] = []
        real = os.fsync

        def fsync(fd: int) -> None:
            self.fsynced.append(os.readlink(f"/proc/self/fd/{fd}"))
            real(fd)

        self.patch(os, "fsync", fsync)

    def rel(self) -> list[str]:
        out = sorted(os.path.relpath(p, self.root) for p in self.fsynced)
        self.fsynced.clear()
        return out

    def test_write_of_a_new_chain(self) -> None:
        """chunks/, chunks/01/ and chunks/01/1/ are new: each and its parent."""
        self.store.write(1, 0, b"a", stable=False)
        self.assertEqual(self.rel(), [".", "chunks", "chunks/01", "chunks/01/1"])
        # A second file in the same bucket: its directory and the bucket.
        self.store.write(257, 0, b"b", stable=False)
        self.assertEqual(self.rel(), ["chunks/01", "chunks/01/257"])
        # Another bucket: chunks/ holds the new bucket's entry.
        self.store.write(2, 0, b"c", stable=False)
        self.assertEqual(self.rel(), ["chunks", "chunks/02", "chunks/02/2"])
        # A new chunk file in an existing directory: that directory only.
        self.store.write(2, CHUNK, b"d", stable=False)
        self.assertEqual(self.rel(), ["chunks/02/2"])
        # Nothing new: no directory sync.
        self.store.write(2, 1, b"e", stable=False)
        self.assertEqual(self.rel(), [])

    def test_short_circuit_put_then_sync(self) -> None:
        """
        The local data path (put, then sync at a stable write or commit):
        the directories above the file's are synced at once (a commit through
        another process could not know of them), the file's own directory
        and its entry at sync.
        """
        self.store.put(1, 0, b"a")
        self.assertEqual(self.rel(), [".", "chunks", "chunks/01"])
        self.store.sync(1, [0])
        self.assertEqual(self.rel(), ["chunks/01", "chunks/01/1"])
        self.store.put(257, 0, b"b")
        self.assertEqual(self.rel(), [])
        self.store.sync(257)
        self.assertEqual(self.rel(), ["chunks/01", "chunks/01/257"])

    def test_later_syncs_skip_the_bucket(self) -> None:
        """
        A file's directory's entry in its bucket is synced once per process:
        every later sync (each COMMIT of a long write) syncs the file's
        directory only, one directory sync where there were two.
        """
        self.store.put(1, 0, b"a")
        self.store.sync(1)
        self.rel()
        for i in range(3):
            self.store.put(1, (i + 1) * CHUNK, b"b")
            self.store.sync(1)
            self.assertEqual(self.rel(), ["chunks/01/1"])

    def test_another_process_syncs_the_bucket_once_too(self) -> None:
        """What one process synced, another does not know of: it syncs the entry itself, once."""
        self.store.put(1, 0, b"a")
        self.store.sync(1)
        self.rel()
        other = ChunkStore(self.store.root, durable=True, layout=1)
        other.sync(1)
        self.assertEqual(self.rel(), ["chunks/01", "chunks/01/1"])
        other.sync(1)
        self.assertEqual(self.rel(), ["chunks/01/1"])

    def test_forget_then_the_bucket_again(self) -> None:
        """forget() removes the directory: a sync after it (of a directory made again) syncs both."""
        self.store.put(1, 0, b"a")
        self.store.sync(1)
        self.store.forget(1)
        self.rel()
        self.store.put(1, 0, b"a")
        self.store.sync(1)
        self.assertEqual(self.rel(), ["chunks/01", "chunks/01/1"])

    def test_directory_made_by_another_process_counts_as_created(self) -> None:
        """
        --workers share the chunk store: a directory another process made
        between our look and our mkdir is synced too (its maker may not have
        synced it yet).
        """
        from claudefs_gateway.servers import data

        real_mkdir = Path.mkdir

        def racing_mkdir(self_: Path, *a: Any, **kw: Any) -> None:
            real_mkdir(self_, *a, **kw)
            if self_.name == "chunks":
                raise FileExistsError(str(self_))

        self.patch(Path, "mkdir", racing_mkdir)
        made = data._make_dirs(self.store.root / "chunks" / "01" / "1")
        self.assertEqual([p.name for p in made], ["chunks", "01", "1"])

    def test_not_durable_syncs_nothing(self) -> None:
        store = ChunkStore(Path(self.mktemp()), durable=False)
        store.root.mkdir()
        store.write(1, 0, b"a", stable=True)
        self.assertEqual(self.fsynced, [])


class DirSyncLayout2Tests(SynchronousTestCase):
    """
    Layout 2: a file's first chunk sits in its bucket, so a small file makes
    no directory, and its COMMIT syncs the chunk and the bucket: one
    directory sync where layout 1 made two (the file's new directory and
    its entry in the bucket).
    """

    def setUp(self) -> None:
        self.store = ChunkStore(Path(self.mktemp()), durable=True)
        self.assertEqual(self.store.layout, 2)  # a new store: layout file written
        self.root = str(self.store.root.absolute())
        self.fsynced: list[str] = []
        real = os.fsync

        def fsync(fd: int) -> None:
            self.fsynced.append(os.readlink(f"/proc/self/fd/{fd}"))
            real(fd)

        self.patch(os, "fsync", fsync)

    def rel(self) -> list[str]:
        out = sorted(os.path.relpath(p, self.root) for p in self.fsynced)
        self.fsynced.clear()
        return out

    def test_small_file_put_sync_forget(self) -> None:
        self.store.put(1, 0, b"a")
        # The new bucket and chunks/ are synced with their parents at once.
        self.assertEqual(self.rel(), [".", "chunks", "chunks/01"])
        self.store.sync(1)
        self.assertEqual(self.rel(), ["chunks/01"])
        self.assertEqual(sorted(os.listdir(self.store.root / "chunks" / "01")), ["1"])
        # A second small file of the bucket: no directory made, one synced.
        self.store.put(257, 0, b"b")
        self.assertEqual(self.rel(), [])
        self.store.sync(257)
        self.assertEqual(self.rel(), ["chunks/01"])
        self.assertTrue(self.store.forget_small(257))
        self.assertEqual(sorted(os.listdir(self.store.root / "chunks" / "01")), ["1"])

    def test_data_server_write(self) -> None:
        self.store.write(1, 0, b"a", stable=False)
        self.assertEqual(self.rel(), [".", "chunks", "chunks/01"])
        self.store.write(257, 0, b"b", stable=False)
        self.assertEqual(self.rel(), ["chunks/01"])
        # Past the first chunk: a directory of the file's own, and its entry.
        self.store.write(257, CHUNK, b"c", stable=False)
        self.assertEqual(self.rel(), ["chunks/01", "chunks/01/257.d"])
        self.store.write(257, 2 * CHUNK, b"d", stable=False)
        self.assertEqual(self.rel(), ["chunks/01/257.d"])

    def test_large_file_syncs(self) -> None:
        for i in range(3):
            self.store.put(5, i * CHUNK, b"x")
        self.rel()
        self.store.sync(5)
        # Chunk 0's entry and the .d directory's are both in the bucket: synced once.
        self.assertEqual(self.rel(), ["chunks/05", "chunks/05/5.d"])
        self.store.sync(5, [2])
        self.assertEqual(self.rel(), ["chunks/05/5.d"])  # its entry synced already
        other = ChunkStore(self.store.root, durable=True)
        other.sync(5, [1])
        self.assertEqual(self.rel(), ["chunks/05", "chunks/05/5.d"])
        self.store.forget(5)
        self.assertEqual(os.listdir(self.store.root / "chunks" / "05"), [])


class LayoutTests(SynchronousTestCase):
    """Which layout a store has: new ones 2, old ones (chunks/ without a layout file) 1, kept."""

    def test_new_store(self) -> None:
        root = Path(self.mktemp())
        store = ChunkStore(root)
        store.put(1, 0, b"a")
        self.assertEqual((root / "layout").read_text(), "2\n")
        self.assertEqual(ChunkStore(root).layout, 2)
        self.assertTrue((root / "chunks" / "01" / "1").is_file())
        self.assertEqual([n for n in os.listdir(root) if n.startswith(".")], [])

    def test_old_data_dir_keeps_working(self) -> None:
        """
        A data directory written before layouts (chunks/<xx>/<ino>/<i>, no
        layout file), opened by this version: read, written, truncated and
        forgotten in its own layout, never half converted.
        """
        root = Path(self.mktemp())
        old = root / "chunks" / "07" / "7"
        old.mkdir(parents=True)
        (old / "0").write_bytes(b"hello")
        (old / "1").write_bytes(b"world")
        store = ChunkStore(root)
        self.assertEqual(store.layout, 1)
        self.assertFalse((root / "layout").exists())
        self.assertEqual(store._chunks(7), [0, 1])
        self.assertEqual(store.read_exact(7, 0, 5), b"hello")
        self.assertEqual(store.read_exact(7, CHUNK - 1, 6), b"\0world")
        self.assertEqual(store.held(7), CHUNK + 5)
        store.put(7, 5, b"!")
        store.sync(7)
        self.assertEqual((old / "0").read_bytes(), b"hello!")
        store.put(263, 0, b"new file")
        self.assertTrue((root / "chunks" / "07" / "263" / "0").is_file())
        store.truncate(7, 3)
        self.assertEqual(sorted(os.listdir(old)), ["0"])
        self.assertTrue(store.forget_small(7))
        self.assertFalse(old.exists())
        # Another process opening it later agrees.
        self.assertEqual(ChunkStore(root).read_exact(263, 0, 8), b"new file")

    def test_layout_written_meanwhile(self) -> None:
        """chunks/ seen, then the layout file a racing maker wrote first: its word."""
        root = Path(self.mktemp())
        (root / "chunks").mkdir(parents=True)
        store = ChunkStore(root)
        real = Path.exists

        def exists(p: Path) -> bool:
            if p.name == "chunks":
                (root / "layout").write_text("2\n")
            return real(p)

        self.patch(Path, "exists", exists)
        self.assertEqual(store.layout, 2)

    def test_two_makers_agree(self) -> None:
        root = Path(self.mktemp())
        a, b = ChunkStore(root), ChunkStore(root)
        self.assertEqual((a.layout, b.layout), (2, 2))

    def test_unknown_layout_refused(self) -> None:
        root = Path(self.mktemp())
        root.mkdir()
        (root / "layout").write_text("9\n")
        with self.assertRaises(OSError):
            ChunkStore(root).put(1, 0, b"x")

    def test_a_torn_chunk_after_a_crash(self) -> None:
        """
        A chunk file cut short (a crash before its pages reached the disk;
        the metadata says more): what is missing reads as zeros, on either
        layout, and a later write fills it.
        """
        for layout in (1, 2):
            store = ChunkStore(Path(self.mktemp()), durable=False, layout=layout)
            store.put(9, 0, b"x" * 8192)
            os.truncate(store._path(9, 0), 1000)
            self.assertEqual(store.read_exact(9, 0, 8192), b"x" * 1000 + bytes(7192))
            self.assertEqual(store.read(9, 0, 8192), (True, b"x" * 1000))
            store.put(9, 1000, b"y" * 10)
            self.assertEqual(store.read_exact(9, 995, 20), b"x" * 5 + b"y" * 10 + bytes(5))
