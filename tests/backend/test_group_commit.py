"""
Group commit in the embedded store never acknowledges a change before the
commit that made it durable (RFC 1813 section 3.3: CREATE, REMOVE, SETATTR,
a FILE_SYNC WRITE and COMMIT reply only once the change is on stable storage).

The store runs on its real writer thread with fsync on. The first commit is
held until every change has been submitted, so the rest pile up and share
batches, as concurrent clients' changes do. The writer's SQLite connection is
wrapped to note which operations each transaction ran and when its COMMIT
(synchronous FULL) returned; every operation's Deferred is checked the moment
it fires, before any caller's callback can send a reply.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import TestCase

from claudefs_gateway import errors
from claudefs_gateway.backend.embedded import EmbeddedBackend
from claudefs_gateway.backend.embedded._engine import Op
from claudefs_gateway.fstypes import FileType, SetAttrs

ROOT = 1


class _WatchedConnection:
    """A writer connection that records which ops each durable COMMIT covered."""

    def __init__(self, conn: Any, engine: Any, gate: threading.Event) -> None:
        self._conn = conn
        self._engine = engine
        self._gate = gate
        self.holding = threading.Event()
        self.running: list[Op] = []
        self.durable: set[int] = set()
        self.commits = 0
        self.gate_timed_out = False

    def execute(self, sql: str, *args: Any) -> Any:
        head = sql.split(None, 1)[0].upper() if sql.strip() else ""
        if head == "BEGIN":
            self.running = []
        elif head == "COMMIT":
            if self.commits == 0:
                self.holding.set()
                if not self._gate.wait(30):
                    self.gate_timed_out = True
            got = self._conn.execute(sql, *args)
            self.commits += 1
            if self._engine._sync_mode == "FULL":
                # sqlite3 returns from a synchronous=FULL commit in WAL mode
                # only after the WAL was fsynced: these ops are durable now.
                self.durable.update(id(op) for op in self.running)
            self.running = []
            return got
        elif head == "ROLLBACK":
            self.running = []
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class GroupCommitReplyTests(TestCase):
    timeout = 60

    async def test_no_change_acknowledged_before_its_commit(self) -> None:
        # Every change on the writer thread (none synced from the reactor:
        # tests/backend/test_log_sync.py).
        store = EmbeddedBackend(Path(self.mktemp()), reactor, durable=True, log_sync=False)
        await store.open()
        self.addCleanup(store.close)
        engine = store._engine
        # Files to remove, truncate and write, made before the watch starts.
        olds = [
            (await store.create(ROOT, b"old%02d" % i, FileType.REG, 0o644, 0, 0)).ino
            for i in range(12)
        ]

        gate = threading.Event()
        watched = _WatchedConnection(engine.conn, engine, gate)
        run_op = engine._run_op

        def recording_run_op(op: Op) -> Any:
            watched.running.append(op)
            return run_op(op)

        engine._run_op = recording_run_op
        engine.conn = watched

        checked: list[str] = []
        early: list[str] = []
        submit = store._writer.submit

        def watching_submit(op: Op) -> None:
            def check(result: object) -> object:
                # Runs first in the op's callback chain: before the vfs, and
                # so before any protocol can answer its client.
                if op.durable and id(op) not in watched.durable:
                    early.append(op.fn.__name__)
                checked.append(op.fn.__name__)
                return result

            op.d.addBoth(check)
            submit(op)

        store._writer.submit = watching_submit  # type: ignore[method-assign]
        before = store.stats.durable_commits
        # One change first: its commit is held while the rest queue up behind
        # it, so they form later batches of their own.
        calls = [store.create(ROOT, b"first", FileType.REG, 0o644, 0, 0)]
        self.assertTrue(await threads.deferToThread(watched.holding.wait, 30))
        for i in range(40):
            calls.append(store.create(ROOT, b"new%02d" % i, FileType.REG, 0o644, 0, 0))
        for i in range(4):
            calls.append(store.unlink(ROOT, b"old%02d" % i))
        for ino in olds[4:8]:
            calls.append(store.setattr(ino, SetAttrs(size=10)))
        for ino in olds[8:10]:
            calls.append(store.write(ino, 0, b"x" * 8192, True))
        for ino in olds[10:12]:
            calls.append(store.write(ino, 0, b"y" * 4096, False))
            calls.append(store.commit(ino))
        # Everything is queued behind the held first commit: let it go.
        gate.set()
        results = await defer.gatherResults(calls)

        self.assertFalse(watched.gate_timed_out)
        self.assertEqual(len(results), len(calls))
        self.assertEqual(len(checked), len(calls))
        self.assertEqual(early, [])
        # The changes shared commits (group commit), and each durable one
        # was covered by a durable commit.
        used = store.stats.durable_commits - before
        self.assertGreaterEqual(used, 2)
        self.assertLess(used, 20)
        self.assertGreater(store.stats.largest_batch, 1)
        # Every op but the two unstable writes had to wait for a durable
        # commit (those two rode along in one, being in a durable batch).
        self.assertGreaterEqual(len(watched.durable), len(calls) - 2)

    async def test_the_watch_sees_an_early_reply(self) -> None:
        """
        The check above can fail: an op whose Deferred fires before its
        commit (here by hand, before the store ran it) is reported.
        """
        watched = _WatchedConnection(None, None, threading.Event())
        op = Op(lambda *a: None, (), durable=True)
        op.d = defer.Deferred()
        early: list[Op] = []
        op.d.addBoth(lambda r: early.append(op) if id(op) not in watched.durable else None)
        op.d.callback(None)
        self.assertEqual(early, [op])


class CommitSyncTests(TestCase):
    """A COMMIT's file syncs run while its transaction commits, and it answers after both."""

    timeout = 60

    async def store(self) -> EmbeddedBackend:
        store = EmbeddedBackend(Path(self.mktemp()), reactor, durable=True)
        await store.open()
        self.addCleanup(store.close)
        return store

    def watch(self, store: EmbeddedBackend, fail: BaseException | None = None) -> list[str]:
        """Record the order of sync start, SQL COMMIT and sync wait; optionally fail the syncs."""
        engine = store._engine
        events: list[str] = []
        files = engine.files
        start, wait = files.starter, files.waiter
        assert start is not None and wait is not None

        def starter(calls: list[Any]) -> object | None:
            events.append(f"start {len(calls)}")
            return start(calls)

        def waiter(handle: object) -> BaseException | None:
            got = wait(handle)
            events.append("synced")
            return fail if fail is not None else got

        files.starter, files.waiter = starter, waiter

        class Conn(_WatchedConnection):
            def execute(self, sql: str, *args: Any) -> Any:
                if sql.strip().upper() == "COMMIT":
                    events.append("COMMIT")
                return self._conn.execute(sql, *args)

        engine.conn = Conn(engine.conn, engine, threading.Event())
        return events

    async def test_commit_syncs_beside_the_transaction(self) -> None:
        store = await self.store()
        f = await store.create(ROOT, b"f", FileType.REG, 0o644, 0, 0)
        await store.write(f.ino, 0, b"x" * 4096, False)
        events = self.watch(store)
        d = store.commit(f.ino)
        d.addCallback(lambda a: events.append("answered") or a)
        a = await d
        self.assertEqual(a.size, 4096)
        # The data file and the directories made for it (leaf and fan-out),
        # started before the commit; the answer only after both.
        self.assertEqual(events[1:], ["COMMIT", "synced", "answered"])
        self.assertGreaterEqual(int(events[0].split()[1]), 2)
        with open(store._engine.layout.path(f.ino), "rb") as fh:
            self.assertEqual(fh.read(), b"x" * 4096)

    async def test_stable_write_still_syncs_before_the_commit(self) -> None:
        """FILE_SYNC data goes to disk before the metadata that shows it."""
        store = await self.store()
        f = await store.create(ROOT, b"f", FileType.REG, 0o644, 0, 0)
        events = self.watch(store)
        await store.write(f.ino, 0, b"y" * 100, True)
        self.assertEqual(events, ["COMMIT"])

    async def test_failed_commit_sync_fails_only_the_commit(self) -> None:
        """
        The transaction committed but the COMMIT's data may not be durable:
        the COMMIT fails (the client keeps its writes); a CREATE sharing the
        batch stands.
        """
        store = await self.store()
        f = await store.create(ROOT, b"f", FileType.REG, 0o644, 0, 0)
        await store.write(f.ino, 0, b"z" * 4096, False)
        self.watch(store, fail=OSError(errno.EIO, "injected"))
        gate = threading.Event()
        held = store._submit(lambda engine, ctx: gate.wait(30))
        commit = store.commit(f.ino)
        create = store.create(ROOT, b"g", FileType.REG, 0o644, 0, 0)
        gate.set()
        await held
        await self.assertFailure(commit, errors.IO)
        g = await create
        self.assertEqual((await store.lookup(ROOT, b"g")).ino, g.ino)
        self.flushLoggedErrors(OSError)


class LogOnlyCommitTests(TestCase):
    """
    A COMMIT of a file with nothing of its own to sync (a small file kept
    inline, after an unstable write) makes the log durable with one
    fdatasync of the WAL, no transaction: it answers only once that sync
    returned, and the sync covers the write.
    """

    timeout = 60

    async def store(self) -> EmbeddedBackend:
        # The writer thread's sync (from the reactor: tests/backend/test_log_sync.py).
        store = EmbeddedBackend(
            Path(self.mktemp()), reactor, durable=True, inline_max=4096, log_sync=False
        )
        await store.open()
        self.addCleanup(store.close)
        return store

    def hold_syncs(
        self, fail: BaseException | None = None
    ) -> tuple[list[int], threading.Event, threading.Event]:
        """
        Record C{os.fdatasync}'s descriptors (SQLite's own syncs are not
        seen), set the first returned event when one starts and hold it
        until the second is set; then fail it with C{fail} if given.
        """
        calls: list[int] = []
        entered, release = threading.Event(), threading.Event()
        real = os.fdatasync

        def held(fd: int) -> None:
            calls.append(fd)
            entered.set()
            release.wait(30)
            if fail is not None:
                raise fail
            real(fd)

        self.patch(os, "fdatasync", held)
        return calls, entered, release

    async def test_commit_answers_after_the_log_sync(self) -> None:
        store = await self.store()
        f = await store.create(ROOT, b"f", FileType.REG, 0o644, 0, 0)
        await store.write(f.ino, 0, b"x" * 4096, False)
        before = (store.stats.durable_commits, store.stats.log_syncs, store.stats.commits)
        calls, entered, release = self.hold_syncs()
        d = store.commit(f.ino)
        # The writer is inside the sync: the COMMIT has not answered.
        self.assertTrue(await threads.deferToThread(entered.wait, 10))
        self.assertNoResult(d)
        # What it syncs is the WAL, which already holds the unstable write:
        # a fresh connection reads the bytes (committed, in the log).
        wal = store.data_dir / "meta.sqlite3-wal"
        self.assertEqual(os.fstat(calls[0]).st_ino, wal.stat().st_ino)
        conn = sqlite3.connect(str(store.data_dir / "meta.sqlite3"))
        try:
            row = conn.execute("SELECT data FROM inline_data WHERE ino = ?", (f.ino,)).fetchone()
        finally:
            conn.close()
        self.assertEqual(bytes(row[0]), b"x" * 4096)
        release.set()
        a = await d
        self.assertEqual(a.size, 4096)
        self.assertEqual(len(calls), 1)
        self.assertEqual(
            (store.stats.durable_commits, store.stats.log_syncs, store.stats.commits),
            (before[0] + 1, before[1] + 1, before[2]),
        )
        # Nothing unsynced is left: a second COMMIT syncs nothing.
        await store.commit(f.ino)
        self.assertEqual(len(calls), 1)

    async def test_failed_log_sync_fails_the_commit(self) -> None:
        """The log may not be durable: the COMMIT fails, and the next one syncs again."""
        store = await self.store()
        f = await store.create(ROOT, b"f", FileType.REG, 0o644, 0, 0)
        await store.write(f.ino, 0, b"z" * 100, False)
        _, _, release = self.hold_syncs(fail=OSError(errno.EIO, "injected"))
        release.set()
        await self.assertFailure(store.commit(f.ino), errors.IO)
        self.flushLoggedErrors(OSError)
        synced: list[int] = []
        self.patch(os, "fdatasync", lambda fd: synced.append(fd) or _real_fdatasync(fd))
        a = await store.commit(f.ino)
        self.assertEqual((a.size, len(synced)), (100, 1))
        self.assertEqual(await store.read(f.ino, 0, 200), (b"z" * 100, True))

    async def test_commit_of_a_missing_file_fails_alone(self) -> None:
        """An op of the batch failing (a stale inode) fails by itself, as in a transaction."""
        store = await self.store()
        f = await store.create(ROOT, b"f", FileType.REG, 0o644, 0, 0)
        await store.write(f.ino, 0, b"q", False)
        await self.assertFailure(store.commit(f.ino + 1000), errors.NotFound)
        self.assertEqual((await store.commit(f.ino)).size, 1)


_real_fdatasync = os.fdatasync
