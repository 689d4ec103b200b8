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
    def setUp(self) -> None:
        self.store = ChunkStore(Path(self.mktemp()), durable=False)
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

    def test_ranges_checked(self) -> None:
        self.assertRaises(errors.Inval, self.store.write, 1, -1, b"x", False)
        self.assertRaises(errors.FBig, self.store.write, 1, 2**63 - 1, b"x", False)
        self.assertRaises(errors.Inval, self.store.read, 1, -1, 5)
        self.assertRaises(errors.Inval, self.store.allocate, 1, 0, 0)
        self.assertRaises(errors.Inval, self.store.deallocate, 1, 0, 0)


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

    def setUp(self) -> None:
        self.store = ChunkStore(Path(self.mktemp()), durable=True)
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
        self.assertEqual([p.rsplit("/", 1)[1] for p in self.synced], ["2"])

    def test_sync_of_every_chunk(self) -> None:
        # Another process wrote chunk 0: a commit here still syncs it.
        ChunkStore(self.store.root, durable=True).put(3, 0, b"a")
        self.store.put(3, CHUNK, b"b")
        self.store.sync(3)
        self.assertEqual(sorted(p.rsplit("/", 1)[1] for p in self.synced), ["0", "1"])

    def test_sync_of_nothing_held(self) -> None:
        self.store.sync(42)
        self.assertEqual(self.synced, [])
