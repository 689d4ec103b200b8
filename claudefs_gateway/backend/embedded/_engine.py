# -*- test-case-name: tests.backend.test_embedded -*-
"""
The embedded store's write side: one SQLite connection, the data files, and
every operation that changes anything, run in batches (group commit).

Everything here is synchronous and runs on one thread at a time: the writer
thread in production (L{claudefs_gateway.backend.embedded._writer}), or the
caller's thread in the inline mode tests use. L{Engine.run_batch} runs a list
of operations in one transaction, each inside its own savepoint (an operation
that fails leaves no trace, its neighbours still commit), syncs the data files
that stable writes and commits touched, and commits once: one fsync of the
WAL for the whole batch, however many operations it holds.

Each operation follows L{claudefs_gateway.backend.memory.MemoryBackend}
statement by statement (same checks in the same order, same times, same
nlink and change-counter moves), loading the rows it needs into L{Node}
objects and writing the changed ones back at its end.

Physical changes that destroy data the committed metadata still shows - a
truncation, a punched hole, a freed inode's data file - are not made inside
the transaction: the op records them in C{pending_io} (in its own
transaction) and they are applied after the commit, before the op is
acknowledged - except a freed inode's data file, which nothing can reach once
the commit is made and which is deleted right after the batch is delivered
(L{Engine.after_batch}), off the reply's path. A crash between the commit and
the change is finished at the next open, which replays what is left in
C{pending_io}. So every operation is atomic across a crash; only a data write
in flight may land in part, as on any file system.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from twisted.python.failure import Failure

from claudefs_gateway import errors
from claudefs_gateway.backend.embedded._datawriters import DataWriters, pwrite_all
from claudefs_gateway.backend.embedded._files import Layout, WriteFiles, punch_hole
from claudefs_gateway.backend.embedded._schema import (
    INLINE_TABLE,
    INSERT_NODE,
    ROOT_INO,
    SCHEMA_VERSION,
    SELECT_NODE,
    UPDATE_NODE,
    UPSERT_USAGE,
    Node,
    create_schema,
    upgrade_usage,
    usage_parts,
    usage_total,
)
from claudefs_gateway.backend.memory import MAX_LINKS, SYMLINK_MAX, check_name
from claudefs_gateway.fstypes import (
    MAX_FILE_SIZE,
    NOW,
    XATTR_NAME_MAX,
    XATTR_SIZE_MAX,
    Attributes,
    FileType,
    PutResult,
    QuotaLimits,
    RenameResult,
    SetAttrs,
    WriteResult,
)

__all__ = ["Engine", "Op", "Stats", "convert_error"]

_SQLITE_FULL = 13

# Writes at least this large are handed to the data writers (the rest are
# written at once: cutting them up would cost more than it saves).
DEFER_MIN = 64 * 1024
# A batch writes out what it deferred once this much, or this many files, is
# waiting (descriptors must stay open, and memory held by the queue bounded).
DEFER_MAX_BYTES = 32 << 20
DEFER_MAX_FILES = 16
#: WAL pages after which the committing connection checkpoints (L{Engine._connect}).
WAL_CHECKPOINT_PAGES = 4096

# Engine._fileless: new files remembered as having no data yet, at most.
_FILELESS_MAX = 4096
# Layout.fileless: files known never to have had a data file, at most.
_NEVER_FILED_MAX = 16384
# Inode rows the engine keeps from its commits (L{Engine._rows}).
_ROWS_MAX = 4096
# Inline rows of freed inodes left in the database (see Engine.run_batch,
# "orphans"): deleted by the next batch that syncs nothing, or by the next
# durable one once this many wait.
ORPHANS_MAX = 64
# The meta key saying the store may hold such rows; open deletes them then.
ORPHANS_KEY = "inline_orphans"
# Inode numbers and cookies taken from meta at a time (see Engine.run_batch).
COUNTER_BLOCK = 1024


class Stats:
    """
    Counters of the writer's work, for tests and the benchmark notes.

    @ivar batches: transactions run (one per batch).
    @ivar commits: transactions that changed something and so were written.
    @ivar durable_commits: of those, committed with an fsync of the WAL;
        with the log syncs, the times the log was made durable.
    @ivar log_syncs: batches of COMMITs (and syncs) with no data to sync that
        made the log durable with one C{fdatasync} of the WAL, without a
        transaction (L{Engine.run_batch}).
    @ivar ops: operations run.
    @ivar largest_batch: most operations seen in one batch.
    @ivar reactor_log_syncs: syncs of the log made from the reactor's thread
        (L{Engine.run_unsynced}'s caller), counted there, so each counter has
        one thread adding to it and none loses a count; they are in
        C{durable_commits} and C{log_syncs}.
    """

    def __init__(self) -> None:
        self.batches = 0
        self.commits = 0
        self.writer_durable_commits = 0
        self.writer_log_syncs = 0
        self.reactor_log_syncs = 0
        self.ops = 0
        self.largest_batch = 0
        self.splits = 0
        self.last_batch_failed = False
        self.deferred_writes = 0
        self.data_reruns = 0
        self.free_errors = 0

    @property
    def durable_commits(self) -> int:
        return self.writer_durable_commits + self.reactor_log_syncs

    @property
    def log_syncs(self) -> int:
        return self.writer_log_syncs + self.reactor_log_syncs


class Op:
    """
    One queued change: C{fn(engine, ctx, *args)}, run inside a batch.

    After the batch, C{ok} and C{value} hold the result or the L{FSError};
    C{failure} holds an unexpected exception for the reactor thread to log.

    @ivar durable: the op must be on disk before it is acknowledged (every
        metadata change; not an unstable write).
    @ivar ino: the file whose data the op reads or changes, if any: such an op
        starts a new batch when the file has physical changes pending in the
        current one (see L{Engine.run_batch}).
    """

    __slots__ = (
        "fn",
        "args",
        "durable",
        "ino",
        "d",
        "ok",
        "value",
        "failure",
        "warning",
        "name",
        "changed",
    )

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        durable: bool = True,
        ino: int | None = None,
    ) -> None:
        self.fn = fn
        self.args = args
        self.durable = durable
        self.ino = ino
        self.d: Any = None
        self.ok = False
        self.value: Any = None
        self.failure: Failure | None = None
        self.warning = ""
        self.name = getattr(fn, "__name__", "op")
        # Once it succeeded: the inode rows it wrote (None: deleted), for
        # the reader's kept rows (EmbeddedBackend._deliver).
        self.changed: dict[int, Node | None] | None = None


class _Ctx:
    """What one operation loaded and changed, applied only if it succeeds."""

    __slots__ = (
        "now",
        "nodes",
        "dirty",
        "new",
        "dropped",
        "usage",
        "sync",
        "late_sync",
        "phys",
        "actions",
        "deferred",
        "moved",
        "orphans",
        "inline",
    )

    def __init__(self, now: int) -> None:
        self.now = now
        self.nodes: dict[int, Node] = {}
        self.dirty: set[int] = set()
        self.new: list[Node] = []
        self.dropped: list[Node] = []
        self.usage: dict[tuple[str, int], list[int]] = {}
        self.sync: set[int] = set()
        # Files a COMMIT makes durable: synced while the transaction commits
        # (see Engine.run_batch), not before it.
        self.late_sync: set[int] = set()
        # (kind, ino, offset, length) to apply after the commit; with their
        # pending_io row numbers once written.
        self.phys: list[tuple[str, int, int, int]] = []
        self.actions: list[tuple[int, str, int, int, int]] = []
        # The op's data write waits in Engine._pending (see _flush_data).
        self.deferred = False
        # Files whose inline bytes the op moved to a data file: synced before
        # the commit that drops their inline row, durable batch or not.
        self.moved: set[int] = set()
        # Freed inodes whose inline row the op left in place (Engine.run_batch).
        self.orphans: list[int] = []
        # Whether a regular file has its bytes inline, as the op found out
        # (L{Engine._has_inline}): asked once per op.
        self.inline: dict[int, bool] | None = None


class _BatchAborted(Exception):
    """SQLite rolled the whole transaction back (disk full, I/O error)."""


class _DataWriteFailed(Exception):
    """A deferred data write failed: the batch runs again, writing inline."""


class _SoleOpFailed(Exception):
    """The only op of a batch, run without a savepoint, failed: the transaction is rolled back."""


def convert_error(e: BaseException | None) -> errors.FSError:
    """The FSError a library exception becomes at the store's edge."""
    if isinstance(e, errors.FSError):
        return e
    if isinstance(e, OSError):
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return errors.NoSpace("no space left on the store's device")
        if e.errno == errno.EFBIG:
            return errors.FBig("file too large for the store's device")
        return errors.IO(f"store I/O error ({errno.errorcode.get(e.errno or 0, e.errno)})")
    if isinstance(e, sqlite3.Error):
        code = getattr(e, "sqlite_errorcode", 0) or 0
        if code & 0xFF == _SQLITE_FULL:
            return errors.NoSpace("no space left for the store's metadata")
        return errors.IO(f"store metadata error ({getattr(e, 'sqlite_errorname', 'sqlite')})")
    if isinstance(e, OverflowError):
        return errors.Inval("value out of range")
    return errors.IO("internal store error")


def _is_expected(e: BaseException) -> bool:
    """Errors that are the caller's or the device's doing, not ours: no traceback logged."""
    return isinstance(e, errors.FSError | OverflowError) or isinstance(
        convert_error(e), errors.NoSpace | errors.FBig
    )


class Engine:
    """
    @param data_dir: the store's directory (C{meta.sqlite3} and C{data/} inside).
    @param now_ns: the clock (tests inject one).
    @param durable: False skips every fsync (tests and throwaway stores only).
    @param data_threads: threads that help write large data writes (0: the
        writer thread writes everything itself; see L{DataWriters}).
    @param inline_max: a regular file's bytes stay in the database (the
        C{inline_data} table) while its writes end within this many bytes; 0
        makes no new inline file (those already inline keep working).
    """

    def __init__(
        self,
        data_dir: Path,
        now_ns: Callable[[], int] = time.time_ns,
        durable: bool = True,
        max_fds: int = 128,
        data_threads: int = 0,
        inline_max: int = 0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.inline_max = inline_max
        self.db_path = self.data_dir / "meta.sqlite3"
        self.layout = Layout(str(self.data_dir / "data"))
        self.files = WriteFiles(self.layout, durable, max_fds)
        self.durable = durable
        self.now = now_ns
        self.stats = Stats()
        self.conn: sqlite3.Connection | None = None
        self.instance_id = b""
        self.epoch = 0
        self.next_ino = 0
        self.next_cookie = 0
        self._saved_counters = (0, 0)
        # Regular files this engine made that have had no write, no inline
        # row and no data file yet (op_create adds; the first write, an
        # allocation or an inline row takes out): their first write needs
        # neither the inline row's SELECT nor a failing open of a data-file
        # path. Bounded: when full it is emptied, and writes ask as before.
        self._fileless: set[int] = set()
        # Inode numbers below this may have been handed out before, by an op
        # that rolled back (the counters are put back): a data file it made
        # may be there, so they never go into Layout.fileless.
        self._reused_below = 0
        # next_ino and next_cookie as meta holds them: at least the counters.
        self._tops = (0, 0)
        self._batch_usage: dict[tuple[str, int], list[int]] = {}
        # Every usage row's (bytes, inodes) as committed (loaded at open,
        # moved after each commit), and what the batch being run makes of
        # the rows it changes: only a row that reaches zero is deleted
        # (L{_flush_usage}).
        self._usage_rows: dict[tuple[str, int], tuple[int, int]] = {}
        self._usage_next: dict[tuple[str, int], tuple[int, int]] = {}
        # Inode rows as the last commit left them, by inode: the rows each
        # committed op wrote (L{_ran}'s C{changed}), so the next op on the
        # same inode needs no SELECT (a small file's WRITE and COMMIT load
        # the row its CREATE wrote; each CREATE and REMOVE the directory's
        # the one before wrote: five SELECTs per small file made and
        # removed). Only written rows, only after their commit: a row an op
        # writes leaves it at once (the batch's later ops read the database,
        # which has the write) and comes back with the commit; a row read
        # inside a batch is not kept (it may be an earlier op's write, which
        # a rollback undoes). Every inode row is written by L{_write_back};
        # a batch that could not commit empties it. Bounded: emptied when
        # full.
        self._rows: dict[int, tuple[Any, ...]] = {}
        # Whether the xattr table may hold a row (read at open, set by every
        # insert): while it cannot, a freed inode runs no DELETE FROM xattr
        # (one statement of every REMOVE of a store with no xattrs at all).
        self._xattrs = True
        self._done_rows: list[int] = []
        self._wal_unsynced = False
        # Commits that left the WAL unsynced so far: a sync of the log from
        # outside a batch (L{run_unsynced}) covers those up to the count it
        # was started at.
        self._unsynced_commits = 0
        # The WAL, opened by us only to fdatasync it (L{_sync_log}).
        self._wal_fd: int | None = None
        self._sync_mode = ""
        self.data = DataWriters(data_threads)
        self.files.runner = self.data.run_all
        self.files.starter = self.data.start_all
        self.files.waiter = self.data.wait
        self._defer = data_threads > 0
        self.defer_min = DEFER_MIN
        # Data writes of the running batch not yet written: (ino, data, offset),
        # and the ops whose results wait for them.
        self._pending: list[tuple[int, memoryview, int]] = []
        self._pending_inos: set[int] = set()
        self._pending_bytes = 0
        self._deferred_ops: list[Op] = []
        # Data files of freed inodes, deleted after delivery: (pending_io row, ino).
        self._frees: list[tuple[int, int]] = []
        # Frees committed without a sync: deleted after a durable commit.
        self._frees_unsynced: list[tuple[int, int]] = []
        # Freed inodes whose inline rows are still in the database, and
        # whether the meta row that makes open delete such rows is written.
        self._orphans: list[int] = []
        self._orphans_marked = False

    # -- lifecycle --------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            str(self.db_path), isolation_level=None, check_same_thread=False, cached_statements=512
        )
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":  # pragma: no cover - only on file systems without shared memory
            raise errors.IO("the store's file system does not support SQLite WAL mode")
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA cache_size = -32768")
        conn.execute("PRAGMA temp_store = MEMORY")
        # SQLite checkpoints the WAL after the commit that takes it past this
        # many pages, on the committing thread (the reactor's, for the
        # changes run there): two syncs (the WAL, then the database) and a
        # copy of every page changed since. At SQLite's default of 1,000 a
        # small file's create and unlink (14 frames) paid one every 70
        # files; a page rewritten by every change (the directory's, the
        # usage rows') is copied once per checkpoint however often it was
        # written, so fewer, larger ones copy less per change and sync
        # a quarter as often. The log grows to about 16 MiB before it.
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
        return conn

    def _set_sync(self, mode: str) -> None:
        if not self.durable:
            mode = "OFF"
        if mode != self._sync_mode:
            assert self.conn is not None
            self.conn.execute(f"PRAGMA synchronous = {mode}")
            self._sync_mode = mode

    def open(self) -> tuple[bytes, sqlite3.Connection, int]:
        """
        Open (creating on first use) and recover the store.

        Returns the instance id, a second connection for the reactor thread's
        reads, and how many interrupted physical changes recovery finished.
        """
        fresh_dir = not self.data_dir.exists()
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fresh_db = not self.db_path.exists()
        self.conn = conn = self._connect()
        self._set_sync("FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is None:
                self._create(conn)
            meta = dict(conn.execute("SELECT k, v FROM meta"))
            if meta.get("schema") == 1:
                # Written before inline data: add its (empty) table; every
                # file keeps its data file. Version 2 tells an older gateway
                # not to open a store whose bytes it could not find.
                conn.execute(INLINE_TABLE)
                meta["schema"] = 2
            if meta.get("schema") == 2:
                # Usage bytes in one column: split them (version 3 tells an
                # older gateway not to read half of a count).
                upgrade_usage(conn)
                conn.execute("UPDATE meta SET v = ? WHERE k = 'schema'", (SCHEMA_VERSION,))
                meta["schema"] = SCHEMA_VERSION
            if meta.get("schema") != SCHEMA_VERSION:
                raise errors.IO(f"unsupported store schema {meta.get('schema')!r}")
            if ORPHANS_KEY in meta:
                # Stopped without close: inline rows of freed inodes may be
                # left (never read: inode numbers are not reused). Written
                # only by a gateway that defers them, so a store that never
                # had any costs no scan.
                conn.execute(
                    "DELETE FROM inline_data WHERE NOT EXISTS"
                    " (SELECT 1 FROM inode WHERE inode.ino = inline_data.ino)"
                )
                conn.execute("DELETE FROM meta WHERE k = ?", (ORPHANS_KEY,))
            self.epoch = int(meta["epoch"]) + 1
            conn.execute("UPDATE meta SET v = ? WHERE k = 'epoch'", (self.epoch,))
            self.instance_id = bytes(meta["instance_id"])
            self.next_ino = int(meta["next_ino"])
            self.next_cookie = int(meta["next_cookie"])
            self._tops = (self.next_ino, self.next_cookie)
            pending = conn.execute(
                "SELECT seq, kind, ino, offset, length FROM pending_io ORDER BY seq"
            ).fetchall()
            self._usage_rows = {
                (k, i): (usage_total(b, h), n)
                for k, i, b, h, n in conn.execute(
                    "SELECT kind, id, bytes, bytes_hi, inodes FROM usage"
                )
            }
            self._xattrs = conn.execute("SELECT 1 FROM xattr LIMIT 1").fetchone() is not None
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        data_root = Path(self.layout.root)
        fresh_data = not data_root.exists()
        data_root.mkdir(mode=0o700, exist_ok=True)
        if self.durable and (fresh_db or fresh_data):
            self._fsync_dir(self.data_dir)
            if fresh_dir:
                self._fsync_dir(self.data_dir.parent)
        # Recovery: physical changes whose transaction committed but which a
        # crash interrupted (a row is deleted only by the transaction after
        # the one that applied it, so nothing committed later can be undone
        # by applying it again). Each is idempotent.
        for _, kind, ino, offset, length in pending:
            self._apply(kind, ino, offset, length)
        if pending:
            self.files.sync_all()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("DELETE FROM pending_io WHERE seq = ?", [(r[0],) for r in pending])
            conn.execute("COMMIT")
        reader = sqlite3.connect(
            str(self.db_path), isolation_level=None, check_same_thread=False, cached_statements=512
        )
        reader.execute("PRAGMA query_only = 1")
        reader.execute("PRAGMA busy_timeout = 10000")
        reader.execute("PRAGMA cache_size = -32768")
        self.data.start()
        return self.instance_id, reader, len(pending)

    def _create(self, conn: sqlite3.Connection) -> None:
        create_schema(conn)
        now = self.now()
        conn.executemany(
            "INSERT INTO meta (k, v) VALUES (?, ?)",
            [
                ("schema", SCHEMA_VERSION),
                ("instance_id", os.urandom(8)),
                ("epoch", 0),
                ("next_ino", ROOT_INO + 1),
                ("next_cookie", 3),
                ("syncs", 0),
            ],
        )
        root = Node(
            (
                ROOT_INO,
                1,
                int(FileType.DIR),
                0o755,
                2,
                0,
                0,
                0,
                0,
                0,
                now,
                now,
                now,
                now,
                1,
                1,
                None,
            )
        )
        conn.execute(INSERT_NODE, root.row())
        conn.executemany(
            "INSERT INTO usage (kind, id, bytes, inodes) VALUES (?, 0, 0, 1)",
            [("user",), ("group",)],
        )

    def _fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Sync every file, commit durably, checkpoint the WAL into the database, close."""
        conn = self.conn
        if conn is None:
            return
        try:
            self.after_batch()
            self.files.sync_all()
            self._set_sync("FULL")
            conn.execute("BEGIN IMMEDIATE")
            if self._done_rows:
                conn.executemany(
                    "DELETE FROM pending_io WHERE seq = ?", [(i,) for i in self._done_rows]
                )
                self._done_rows = []
            if self._wal_unsynced:
                conn.execute("UPDATE meta SET v = v + 1 WHERE k = 'syncs'")
            if self._orphans:
                conn.executemany(
                    "DELETE FROM inline_data WHERE ino = ?", [(i,) for i in self._orphans]
                )
            if self._orphans_marked:
                conn.execute("DELETE FROM meta WHERE k = ?", (ORPHANS_KEY,))
            tops = (self.next_ino, self.next_cookie)
            if tops != self._tops:
                conn.executemany(
                    "UPDATE meta SET v = ? WHERE k = ?",
                    [(tops[0], "next_ino"), (tops[1], "next_cookie")],
                )
            conn.execute("COMMIT")
            self._tops = tops
            self._orphans = []
            self._orphans_marked = False
            self._wal_unsynced = False
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._rows.clear()
            self.data.stop()
            self.files.close()
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None
            conn.close()
            self.conn = None

    # -- batches ------------------------------------------------------------------

    def run_batch(self, ops: list[Op], log_sync: bool = True) -> tuple[int, list[int]]:
        """
        Run C{ops} in order in one transaction and commit it once.

        C{log_sync} False (L{run_unsynced}): a durable batch is committed
        without the log's sync, which the caller makes before answering; it
        is durable in every other respect (which inline rows it frees).

        Sets the outcome of the ops it ran and returns how many it ran (the
        rest form the next batch) and the inodes freed (their data files go
        in L{after_batch}), so the reactor can drop cached descriptors.

        A batch ends early before an op on a file that has physical changes
        pending in it (a truncate, say, then a write): those changes are
        applied after the commit and would undo the op's own.
        """
        conn = self.conn
        assert conn is not None
        if self._log_only(ops):
            return self._sync_log(ops), []
        st = self.stats
        st.batches += 1
        sync: set[int] = set()
        late: set[int] = set()
        late_ops: list[Op] = []
        moved: set[int] = set()
        late_error: BaseException | None = None
        actions: list[tuple[Op, tuple[int, str, int, int, int]]] = []
        touched: set[int] = set()
        orphans: list[int] = []
        freeing: list[int] = []
        # SQLite fixes the sync level before a transaction starts, so decide
        # from what the ops ask; if every durable op then fails, the commit
        # writes nothing and costs no fsync anyway.
        for op in ops:
            if not op.durable and op.fn is Engine.op_setattr and op.args[1].size is not None:
                # A truncation cuts the data file right after the commit: it
                # is durable whatever was asked if it cuts below the size
                # committed so far (which durable ones never exceed), so no
                # crash can pair a larger size with the cut data.
                row = conn.execute("SELECT size FROM inode WHERE ino = ?", (op.args[0],)).fetchone()
                op.durable = row is not None and row[0] > op.args[1].size
        durable = any(op.durable for op in ops)
        # Committed with the log's sync (FULL), here.
        synced = durable and log_sync
        self._batch_usage = {}
        self._usage_next = {}
        done_rows, self._done_rows = self._done_rows, []
        before = conn.total_changes
        count = len(ops)
        start_counters = (self.next_ino, self.next_cookie)
        try:
            self._set_sync("FULL" if synced else "NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            if done_rows:
                conn.executemany("DELETE FROM pending_io WHERE seq = ?", [(i,) for i in done_rows])
            for i, op in enumerate(ops):
                if i and op.ino is not None and op.ino in touched:
                    count = i
                    st.splits += 1
                    break
                if self._pending and (op.ino is None or op.ino in self._pending_inos):
                    # Whatever this op does to a file, or reads of one, comes
                    # after the data written before it.
                    self._flush_data()
                # A batch of one op (SMB's changes run on the reactor's
                # thread, NFS's unstable writes) needs no savepoint: if it
                # fails, the whole transaction goes (two statements fewer a
                # change).
                ctx = self._run_op(op, savepoint=len(ops) > 1)
                if ctx is not None:
                    if ctx.deferred:
                        self._deferred_ops.append(op)
                        if (
                            self._pending_bytes >= DEFER_MAX_BYTES
                            or len(self._pending_inos) >= DEFER_MAX_FILES
                        ):
                            self._flush_data()
                    sync |= ctx.sync
                    if ctx.moved:
                        moved |= ctx.moved
                    if ctx.orphans:
                        orphans.extend(ctx.orphans)
                    if ctx.late_sync:
                        late |= ctx.late_sync
                        late_ops.append(op)
                    for action in ctx.actions:
                        actions.append((op, action))
                        touched.add(action[2])
                    for key, (b, n) in ctx.usage.items():
                        u = self._batch_usage.setdefault(key, [0, 0])
                        u[0] += b
                        u[1] += n
            if self._pending:
                self._flush_data()
            if moved:
                # Bytes moved out of the database: on disk before the commit
                # that drops their inline copy, whatever the batch's
                # durability (a crash before it keeps the inline copy, which
                # reads then prefer).
                self.files.sync(moved)
            self._flush_usage(conn)
            # A freed inline file's row is not deleted by the op that frees
            # it: deleting its bytes (an overflow page at 4 KiB) writes the
            # row's page, the freelist's and the header's to the log, which
            # is four of a REMOVE's nine frames. The row is unreachable once
            # the inode row is gone (inode numbers are never reused), so it
            # goes with a later batch: one that syncs nothing, or a durable
            # one once ORPHANS_MAX wait, at the cost of one row's pages for
            # many. A crash leaves them behind: the meta row, written with the
            # first, makes the next open delete them.
            freeing = (
                self._orphans
                if self._orphans and (not durable or len(self._orphans) >= ORPHANS_MAX)
                else []
            )
            if freeing:
                conn.executemany("DELETE FROM inline_data WHERE ino = ?", [(i,) for i in freeing])
            mark = bool(orphans) and not self._orphans_marked
            if mark:
                conn.execute("INSERT OR REPLACE INTO meta (k, v) VALUES (?, 1)", (ORPHANS_KEY,))
            # The counters are written a block ahead, not at every create:
            # meta then holds numbers no committed row uses yet, which is all
            # a reopen needs (close writes the exact ones; a crash skips at
            # most a block of never-used numbers). One page less in most
            # creates' commits.
            tops = self._tops
            if self.next_ino > tops[0] or self.next_cookie > tops[1]:
                tops = (
                    self.next_ino + COUNTER_BLOCK if self.next_ino > tops[0] else tops[0],
                    self.next_cookie + COUNTER_BLOCK if self.next_cookie > tops[1] else tops[1],
                )
                conn.executemany(
                    "UPDATE meta SET v = ? WHERE k = ?",
                    [
                        (v, k)
                        for v, k, was in (
                            (tops[0], "next_ino", self._tops[0]),
                            (tops[1], "next_cookie", self._tops[1]),
                        )
                        if v != was
                    ],
                )
            if durable:
                # Data before the metadata that points at it: a crash after this
                # sync and before the commit leaves data beyond the recorded
                # size, which reads never show (see _files).
                freed_now = {a[2] for _, a in actions if a[1] == "free"}
                sync -= freed_now
                late -= freed_now | sync
                if sync:
                    self.files.sync(sync)
                if (
                    synced
                    and self._wal_unsynced
                    and conn.total_changes == before
                    and any(op.ok and op.durable for op in ops[:count])
                ):
                    # Earlier unstable writes' metadata sits unsynced in the
                    # WAL; this commit must sync it even if it writes nothing
                    # itself (a commit of an unchanged file), so write something.
                    conn.execute("UPDATE meta SET v = v + 1 WHERE k = 'syncs'")
            changed = conn.total_changes != before
            # A COMMIT's files are synced while the transaction commits, not
            # before it: the file system can then make both durable with one
            # journal commit (two flushes one after the other otherwise). The
            # order cannot matter to anyone: the unstable writes a COMMIT
            # covers had their metadata in the WAL already, where any other
            # client's durable change could sync it first, and the COMMIT is
            # answered only once both are done (RFC 1813 section 3.3.21; a
            # crash before that changes the write verifier, and the client
            # sends the writes again). Without helper threads the files are
            # synced here, first, as before.
            waiter = self.files.sync_start(late) if durable and late else None
            try:
                conn.execute("COMMIT")
            finally:
                late_error = self.files.sync_wait(waiter) if waiter is not None else None
        except _SoleOpFailed as failed:
            # Nothing of the batch happened (its pending_io deletions
            # included): as after a failed op's savepoint, the op fails
            # alone, and the store is as before it.
            self._clear_pending()
            self._done_rows = done_rows + self._done_rows
            if not conn.in_transaction:
                # SQLite rolled it back itself (disk full, I/O error): the
                # batch failed, as a savepoint's rollback would have found.
                self._abort(conn, ops, failed.__cause__ or failed)
                return count, []
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error as e:
                self._abort(conn, ops, e)
                return count, []
            self._put_back(start_counters)
            st.ops += 1
            st.last_batch_failed = False
            return 1, []
        except _DataWriteFailed:
            # Run the batch again with every write inline, so the op whose
            # data could not be written fails alone (as it would have), and
            # the others commit. What the first attempt wrote is written again
            # or lies beyond the committed size, where reads never look.
            self._clear_pending()
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._put_back(start_counters)
            self._done_rows = done_rows + self._done_rows
            st.data_reruns += 1
            self._defer = False
            try:
                return self.run_batch(ops, log_sync)
            finally:
                self._defer = self.data.threads > 0
        except BaseException as e:
            self._clear_pending()
            self._abort(conn, ops[:count], e)
            self._done_rows = done_rows + self._done_rows
            return count, []
        if late_error is not None:
            # Committed, but the data of these COMMITs may not be durable:
            # they fail (NFS3ERR_IO), and the client keeps its writes.
            for op in late_ops:
                if op.ok:
                    op.ok, op.value = False, convert_error(late_error)
                    if not _is_expected(late_error):
                        op.failure = Failure(late_error)
        self._tops = tops
        self._keep_rows(ops[:count])
        if self._usage_next:
            rows = self._usage_rows
            for key, row in self._usage_next.items():
                if row == (0, 0):
                    rows.pop(key, None)
                else:
                    rows[key] = row
            self._usage_next = {}
        if freeing:
            self._orphans = []
        if orphans:
            self._orphans_marked = True
            self._orphans.extend(orphans)
        st.ops += count
        st.largest_batch = max(st.largest_batch, count)
        st.last_batch_failed = False
        if changed:
            st.commits += 1
            if synced:
                st.writer_durable_commits += 1
                self._wal_unsynced = False
            else:
                self._wal_unsynced = True
                self._unsynced_commits += 1
        freed: list[int] = []
        for op, (seq, kind, ino, offset, length) in actions:
            if kind == "free":
                # The inode is gone from the committed metadata: nothing can
                # read or write its data file, so it is deleted after the
                # batch is delivered (after_batch), not before. Freed by a
                # commit not yet durable, the data waits for one that is: a
                # power loss taking the log's tail then finds the name and
                # its data both still there (a kill -9 loses no log).
                freed.append(ino)
                (self._frees if synced else self._frees_unsynced).append((seq, ino))
                continue
            try:
                self._apply(kind, ino, offset, length)
            except OSError as e:
                # Committed, but the file could not follow (an I/O error): the
                # caller hears of it; the row goes, since applying it later,
                # after other changes, could undo them.
                op.ok, op.value = False, convert_error(e)
                if not _is_expected(e):
                    op.failure = Failure(e)
            self._done_rows.append(seq)
        if self._frees_unsynced and not self._wal_unsynced:
            self._frees.extend(self._frees_unsynced)
            self._frees_unsynced = []
        return count, freed

    def _log_only(self, ops: list[Op]) -> bool:
        """
        Whether C{ops} are COMMITs and syncs only, of files with nothing of
        their own to sync (inline files, or data files already synced): all
        they need is the log durable, which a transaction would only reach
        by writing a row for it (see L{_sync_log}).
        """
        files = self.files
        for op in ops:
            if op.fn is Engine.op_commit:
                if files.needs_sync(op.args[0]):
                    return False
            elif op.fn is not Engine.op_sync:
                return False
        return True

    def run_unsynced(self, op: Op) -> tuple[list[int], int] | None:
        """
        Run one durable metadata change (L{UNSYNCED_OPS}) committed without
        a sync of the log, for the caller to sync it (the reactor's thread,
        with L{_logsync.AioLogSync}) before the change is acknowledged.

        Returns the inodes freed and, when the log must be synced before the
        op may be answered, the count of unsynced commits that sync covers
        (for L{log_synced}); 0 when nothing needs a sync (the op failed, or
        changed nothing and found the log synced). None when the op is not
        one that may run so (a COMMIT of a file with its own data to sync,
        a put_file whose bytes are not inline): nothing was done, and it goes to the writer thread.

        A C{synchronous=NORMAL} commit writes the same frames to the WAL as
        a FULL one, without the C{fdatasync} that ends a FULL commit; that
        sync, done after the commit returned, makes the change as durable as
        a FULL commit does (the reasoning of L{_sync_log}). The ops here
        sync no file of their own (no data written, no rename of a file with
        unsynced data), which a batch that is not durable would skip.
        """
        if op.fn not in UNSYNCED_OPS:
            return None
        if op.fn is Engine.op_put_file and len(op.args[6]) > self.inline_max:
            # Its bytes go to a data file synced before the commit: on the
            # writer thread (that sync would stall the reactor).
            return None
        if op.fn is Engine.op_commit:
            if not self._log_only([op]):
                return None
            self._sync_log([op], sync=False)
            freed: list[int] = []
        else:
            _, freed = self.run_batch([op], log_sync=False)
        if not (op.ok and self._wal_unsynced):
            return freed, 0
        if self._wal_fd is None and self.durable:
            self._wal_fd = os.open(f"{self.db_path}-wal", os.O_RDWR | os.O_CLOEXEC)
        return freed, self._unsynced_commits

    @property
    def wal_fd(self) -> int | None:
        """The WAL's descriptor for L{run_unsynced}'s caller to sync (None: not durable)."""
        return self._wal_fd

    def log_synced(self, covered: int) -> None:
        """
        A sync of the log started after the C{covered}th unsynced commit
        returned: the log is durable if no commit left it unsynced since,
        and the frees those commits made may go (L{after_batch}).
        """
        if self._wal_unsynced and self._unsynced_commits == covered:
            self._wal_unsynced = False
            if self._frees_unsynced:
                self._frees.extend(self._frees_unsynced)
                self._frees_unsynced = []

    def _sync_log(self, ops: list[Op], sync: bool = True) -> int:
        """
        Run a batch of L{_log_only} ops without a transaction: each op reads
        its file (a COMMIT answers with its attributes, or fails as it would
        in a batch), then, if an earlier commit left the WAL unsynced (an
        unstable write's, committed with C{synchronous=NORMAL}), one
        C{fdatasync} of the WAL makes it durable. Returns how many ops ran
        (all of them).

        The same durability as the FULL commit of a transaction that writes
        a row for the purpose (what a batch did before): SQLite's FULL
        commit is that row's frames and an C{fdatasync} of the WAL; every
        earlier commit's frames are in the WAL file already (NORMAL writes
        them, without the sync), or were checkpointed, which syncs the WAL
        before and the database after (SQLite, "PRAGMA synchronous"). The
        transaction cost the writer its statements (BEGIN, a savepoint, the
        row, COMMIT: about a third of a small file's COMMIT) and the log a
        frame. No file is synced here (L{_log_only}), and nothing waits in
        C{_pending}, which only lives inside a batch.
        """
        st = self.stats
        st.batches += 1
        for op in ops:
            ctx = _Ctx(self.now())
            try:
                op.value = op.fn(self, ctx, *op.args)
                op.ok = True
            except Exception as e:
                op.ok, op.value = False, convert_error(e)
                if not _is_expected(e):
                    op.failure = Failure(e)
            op.changed = {}
        if sync and self._wal_unsynced and any(op.ok for op in ops):
            try:
                if self.durable:
                    if self._wal_fd is None:
                        self._wal_fd = os.open(f"{self.db_path}-wal", os.O_RDWR | os.O_CLOEXEC)
                    os.fdatasync(self._wal_fd)
            except OSError as e:
                # The log may not be durable: these COMMITs fail (NFS3ERR_IO;
                # their clients keep the writes), and the flag stays, so the
                # next durable change syncs it again.
                st.last_batch_failed = True
                for op in ops:
                    if op.ok:
                        op.ok, op.value = False, convert_error(e)
                        if not _is_expected(e):
                            op.failure = Failure(e)
                return len(ops)
            self._wal_unsynced = False
            st.writer_durable_commits += 1
            st.writer_log_syncs += 1
            if self._frees_unsynced:
                self._frees.extend(self._frees_unsynced)
                self._frees_unsynced = []
        st.ops += len(ops)
        st.largest_batch = max(st.largest_batch, len(ops))
        st.last_batch_failed = False
        return len(ops)

    def after_batch(self) -> None:
        """
        Delete the data files of the inodes the last batch freed. Run by the
        writer once it has handed the batch over for delivery; their
        C{pending_io} rows go with the next transaction, so a crash before
        that deletes them at the next open.
        """
        frees, self._frees = self._frees, []
        for seq, ino in frees:
            try:
                self._unlink_data(ino)
            except OSError:
                # Left for the next open's recovery to retry.
                if seq:
                    self.stats.free_errors += 1
                continue
            if seq:
                self._done_rows.append(seq)

    def _flush_data(self) -> None:
        """
        Write what the batch deferred, in parallel, then give the ops that
        deferred their attributes as they are with the data in place.

        @raise _DataWriteFailed: a write failed (the batch is run again).
        """
        writes = []
        for ino, data, offset in self._pending:
            fd = self.files.get(ino, create=True)
            assert fd is not None
            self.files.dirty.add(ino)
            writes.append((fd, data, offset))
        ops = self._deferred_ops
        self._clear_pending()
        try:
            self.data.write_all(writes)
        except OSError as e:
            raise _DataWriteFailed() from e
        for op in ops:
            if op.ok and isinstance(op.value, WriteResult):
                a = op.value.attrs
                op.value = attrs.evolve(
                    op.value, attrs=attrs.evolve(a, used=self.files.used(a.ino))
                )

    def _clear_pending(self) -> None:
        self._pending = []
        self._pending_inos = set()
        self._pending_bytes = 0
        self._deferred_ops = []

    def _apply(self, kind: str, ino: int, offset: int, length: int) -> None:
        """Make one recorded physical change (idempotent: recovery may repeat it)."""
        if kind == "free":
            self._unlink_data(ino)
            return
        fd = self.files.get(ino, create=False)
        if fd is None:
            return
        if kind == "truncate":
            self._trim(fd, offset)
        elif kind == "punch":
            end = min(offset + length, os.fstat(fd).st_size)
            if end > offset:
                self.files.dirty.add(ino)
                punch_hole(fd, offset, end - offset)
                self.files.sync({ino})

    def _keep_rows(self, ops: list[Op]) -> None:
        """
        A batch committed: keep the inode rows its ops wrote (L{_rows}). An
        op whose savepoint rolled back wrote none (C{changed} None); one
        that failed after its commit (a COMMIT whose data sync failed) did.
        """
        rows = self._rows
        for op in ops:
            changed = op.changed
            if not changed:
                continue
            if len(rows) >= _ROWS_MAX:
                rows.clear()
            for ino, node in changed.items():
                if node is None:
                    rows.pop(ino, None)
                else:
                    rows[ino] = node.row()

    def _abort(self, conn: sqlite3.Connection, ops: list[Op], e: BaseException) -> None:
        """The transaction could not commit: nothing in it happened; every op fails."""
        # Whether the commit reached the log is not known: rows are read again.
        self._rows.clear()
        cause = e.__cause__ if isinstance(e, _BatchAborted) and e.__cause__ else e
        failure = Failure(cause) if not _is_expected(cause) else None
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        self.stats.last_batch_failed = True
        err = convert_error(cause)
        for op in ops:
            op.ok = False
            op.value = err
        ops[0].failure = failure
        if failure is None:
            ops[0].warning = err.name

    def _run_op(self, op: Op, savepoint: bool = True) -> _Ctx | None:
        """
        Run one op of the batch, in a savepoint so that its failure undoes
        it alone; without one (C{savepoint} False: the batch's only op) its
        failure raises L{_SoleOpFailed} and the batch rolls back.
        """
        conn = self.conn
        assert conn is not None
        ctx = _Ctx(self.now())
        op.changed = None
        if not savepoint:
            try:
                value = op.fn(self, ctx, *op.args)
                self._write_back(conn, ctx)
            except Exception as e:
                op.ok = False
                op.value = convert_error(e)
                if not _is_expected(e):
                    op.failure = Failure(e)
                raise _SoleOpFailed() from e
            return self._ran(op, ctx, value)
        saved = (self.next_ino, self.next_cookie)
        conn.execute("SAVEPOINT op")
        try:
            value = op.fn(self, ctx, *op.args)
            self._write_back(conn, ctx)
        except Exception as e:
            self._put_back(saved)
            try:
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
            except sqlite3.Error as e2:
                raise _BatchAborted() from e2
            if not conn.in_transaction:
                raise _BatchAborted() from e
            op.ok = False
            op.value = convert_error(e)
            if not _is_expected(e):
                op.failure = Failure(e)
            return None
        conn.execute("RELEASE op")
        return self._ran(op, ctx, value)

    def _put_back(self, counters: tuple[int, int]) -> None:
        """Give the inode numbers and cookies of ops that rolled back out again."""
        self._reused_below = max(self._reused_below, self.next_ino)
        self.next_ino, self.next_cookie = counters

    def _ran(self, op: Op, ctx: _Ctx, value: Any) -> _Ctx:
        """An op succeeded: its outcome, and the inode rows it wrote."""
        op.ok = True
        op.value = value
        # The rows as _write_back wrote them; the op's Node objects are
        # not touched again (each op loads its own).
        changed: dict[int, Node | None] = {n.ino: n for n in ctx.new}
        for ino in ctx.dirty:
            changed[ino] = ctx.nodes[ino]
        for node in ctx.dropped:
            changed[node.ino] = None
        op.changed = changed
        # Written but not committed: the batch's later ops read these rows
        # from the database (this op's writes), and L{_keep_rows} keeps them
        # once committed.
        rows = self._rows
        for ino in changed:
            rows.pop(ino, None)
        return ctx

    def _write_back(self, conn: sqlite3.Connection, ctx: _Ctx) -> None:
        new = {n.ino for n in ctx.new}
        gone = {n.ino for n in ctx.dropped}
        if ctx.new:
            conn.executemany(INSERT_NODE, [n.row() for n in ctx.new if n.ino not in gone])
        for ino in ctx.dirty:
            if ino not in new and ino not in gone:
                conn.execute(UPDATE_NODE, ctx.nodes[ino].update_row())
        for node in ctx.dropped:
            conn.execute("DELETE FROM inode WHERE ino = ?", (node.ino,))
            if self._xattrs:
                conn.execute("DELETE FROM xattr WHERE ino = ?", (node.ino,))
            if node.type is FileType.REG:
                if self._has_inline(ctx, node.ino):
                    # Inline: no data file to free, no pending_io row; the
                    # row itself goes with a later batch (run_batch,
                    # orphans). A move out of line that a crash cut short
                    # may have left a data file, so it is still unlinked
                    # after the commit (L{after_batch}; a missing file costs
                    # one system call, which L{_unlink_data} saves for a
                    # file known never to have had one).
                    ctx.orphans.append(node.ino)
                    ctx.actions.append((0, "free", node.ino, 0, 0))
                elif self.layout.no_data:
                    # (A meta server's store has no data file to free: no
                    # pending_io row, no unlink after the batch.)
                    pass
                elif node.ino in self.layout.fileless:
                    # Made here, never written out of line: no data file,
                    # so no pending_io row for a crash to replay (an INSERT
                    # now and a DELETE with the next batch).
                    ctx.actions.append((0, "free", node.ino, 0, 0))
                else:
                    ctx.phys.append(("free", node.ino, 0, 0))
        for kind, ino, offset, length in ctx.phys:
            cur = conn.execute(
                "INSERT INTO pending_io (kind, ino, offset, length) VALUES (?, ?, ?, ?)",
                (kind, ino, offset, length),
            )
            assert cur.lastrowid is not None
            ctx.actions.append((cur.lastrowid, kind, ino, offset, length))

    def _flush_usage(self, conn: sqlite3.Connection) -> None:
        changed = [(k, i, b, n) for (k, i), (b, n) in self._batch_usage.items() if b or n]
        if not changed:
            return
        conn.executemany(UPSERT_USAGE, [(k, i, *usage_parts(b), n) for k, i, b, n in changed])
        # A row that reaches zero goes. Which ones do is known from the
        # committed rows (L{_usage_rows}): an unlink whose owner keeps other
        # files deletes nothing, where it ran a DELETE per row (user and
        # group) that found nothing. The DELETE keeps its own check of the
        # row, so a mirror that went wrong could only leave a row at zero,
        # never drop a count.
        rows = self._usage_rows
        nxt = self._usage_next
        dropped = []
        for k, i, b, n in changed:
            old = rows.get((k, i), (0, 0))
            row = nxt[(k, i)] = (old[0] + b, old[1] + n)
            if row == (0, 0):
                dropped.append((k, i))
        if dropped:
            conn.executemany(
                "DELETE FROM usage WHERE kind = ? AND id = ?"
                " AND bytes = 0 AND bytes_hi = 0 AND inodes = 0",
                dropped,
            )

    def _unlink_data(self, ino: int) -> None:
        self.files.forget(ino)
        never = self.layout.fileless
        if ino in never:
            # Freed, never had a data file: no unlink that fails.
            never.discard(ino)
            return
        try:
            os.unlink(self.layout.path(ino))
        except FileNotFoundError:
            pass

    # -- helpers (mirroring MemoryBackend's) ----------------------------------------

    def _get(self, ctx: _Ctx, ino: int) -> Node:
        node = ctx.nodes.get(ino)
        if node is not None:
            return node
        row = self._rows.get(ino)
        if row is None:
            assert self.conn is not None
            row = self.conn.execute(SELECT_NODE, (ino,)).fetchone() if 0 < ino < 2**63 else None
        if row is None:
            raise errors.NotFound(f"inode {ino}")
        node = ctx.nodes[ino] = Node(row)
        return node

    def _dir(self, ctx: _Ctx, ino: int) -> Node:
        node = self._get(ctx, ino)
        if node.type is not FileType.DIR:
            raise errors.NotDir(f"inode {ino}")
        return node

    def _file(self, ctx: _Ctx, ino: int) -> Node:
        node = self._get(ctx, ino)
        if node.type is FileType.DIR:
            raise errors.IsDir("is a directory")
        if node.type is not FileType.REG:
            raise errors.Inval("not a regular file")
        return node

    def _lookup_entry(self, parent: int, name: bytes) -> int | None:
        assert self.conn is not None
        row = self.conn.execute(
            "SELECT ino FROM dirent WHERE parent = ? AND name = ?", (parent, name)
        ).fetchone()
        return None if row is None else int(row[0])

    def _entry(self, ctx: _Ctx, d: Node, name: bytes) -> Node:
        check_name(name)
        ino = self._lookup_entry(d.ino, name)
        if ino is None:
            raise errors.NotFound("no such name")
        return self._get(ctx, ino)

    def _attrs(self, node: Node) -> Attributes:
        return node.attributes(self.files.used(node.ino) if node.type is FileType.REG else 0)

    def _touch(self, ctx: _Ctx, node: Node, mtime: bool = True) -> None:
        node.ctime = ctx.now
        if mtime:
            node.mtime = ctx.now
        node.change += 1
        ctx.dirty.add(node.ino)

    def _account(self, ctx: _Ctx, node: Node, inodes: int = 0, size: int = 0) -> None:
        for key in (("user", node.uid), ("group", node.gid)):
            u = ctx.usage.setdefault(key, [0, 0])
            u[0] += size
            u[1] += inodes

    def _make(
        self,
        ctx: _Ctx,
        type: FileType,
        mode: int,
        uid: int,
        gid: int,
        rdev: tuple[int, int],
        parent: int = 0,
        target: bytes | None = None,
    ) -> Node:
        now = ctx.now
        ino = self.next_ino
        self.next_ino += 1
        nlink = 2 if type is FileType.DIR else 1
        node = Node(
            (ino, self.epoch, int(type), mode & 0o7777, nlink, uid, gid, 0)
            + (rdev[0], rdev[1], now, now, now, now, 1, parent, target)
        )
        ctx.nodes[ino] = node
        ctx.new.append(node)
        self._account(ctx, node, inodes=1)
        return node

    def _add_entry(self, ctx: _Ctx, parent: Node, name: bytes, node: Node) -> None:
        """@raise errors.Exists: C{parent} has an entry C{name} (the primary key's refusal)."""
        assert self.conn is not None
        try:
            self.conn.execute(
                "INSERT INTO dirent (parent, name, ino, type, cookie) VALUES (?, ?, ?, ?, ?)",
                (parent.ino, name, node.ino, int(node.type), self.next_cookie),
            )
        except sqlite3.IntegrityError:
            # (The cookie's unique index cannot refuse: cookies are never reused.)
            raise errors.Exists("name exists") from None
        self.next_cookie += 1
        self._touch(ctx, parent)

    def _del_entry(self, parent: Node, name: bytes) -> None:
        assert self.conn is not None
        self.conn.execute("DELETE FROM dirent WHERE parent = ? AND name = ?", (parent.ino, name))

    def _drop(self, ctx: _Ctx, node: Node) -> None:
        """The last link went: free the inode (its data file goes after the commit)."""
        self._account(ctx, node, inodes=-1, size=-node.size if node.type is FileType.REG else 0)
        ctx.dropped.append(node)

    # -- metadata operations --------------------------------------------------------

    def op_create(
        self,
        ctx: _Ctx,
        parent: int,
        name: bytes,
        type: FileType,
        mode: int,
        uid: int,
        gid: int,
        rdev: tuple[int, int] = (0, 0),
    ) -> Attributes:
        d = self._dir(ctx, parent)
        check_name(name)
        type = FileType(type)
        if type is FileType.LNK:
            raise errors.Inval("use symlink")
        # No lookup of the name first: the entry's primary key refuses a name
        # that exists (Exists, from _add_entry), and the op's failure undoes
        # the inode made here (a savepoint, or the sole op's rollback, and the
        # counters put back). One SELECT less per create (docs/bench.rst,
        # "SMB: what a create and a delete cost, seventh round").
        node = self._make(
            ctx,
            type,
            mode,
            uid,
            gid,
            rdev if type in (FileType.BLK, FileType.CHR) else (0, 0),
            parent=parent if type is FileType.DIR else 0,
        )
        self._add_entry(ctx, d, name, node)
        if type is FileType.DIR:
            d.nlink += 1
        if type is FileType.REG:
            if len(self._fileless) >= _FILELESS_MAX:
                self._fileless.clear()
            self._fileless.add(node.ino)
            if node.ino >= self._reused_below and not self.layout.no_data:
                # No data file yet, none until WriteFiles.get makes one.
                never = self.layout.fileless
                if len(never) >= _NEVER_FILED_MAX:
                    never.clear()
                never.add(node.ino)
        # A new inode number (never reused) has no data file yet: no stat of
        # a path that is not there.
        return node.attributes(0)

    def op_symlink(
        self, ctx: _Ctx, parent: int, name: bytes, target: bytes, mode: int, uid: int, gid: int
    ) -> Attributes:
        d = self._dir(ctx, parent)
        check_name(name)
        if not target or len(target) > SYMLINK_MAX or b"\x00" in target:
            raise errors.Inval("bad symlink target")
        if self._lookup_entry(parent, name) is not None:
            raise errors.Exists("name exists")
        node = self._make(ctx, FileType.LNK, mode, uid, gid, (0, 0), target=bytes(target))
        self._add_entry(ctx, d, name, node)
        return self._attrs(node)

    def op_link(self, ctx: _Ctx, ino: int, parent: int, name: bytes) -> Attributes:
        node = self._get(ctx, ino)
        d = self._dir(ctx, parent)
        check_name(name)
        if node.type is FileType.DIR:
            raise errors.Perm("hard link to a directory")
        if self._lookup_entry(parent, name) is not None:
            raise errors.Exists("name exists")
        if node.nlink >= MAX_LINKS:
            raise errors.MLink("too many links")
        node.nlink += 1
        self._touch(ctx, node, mtime=False)
        self._add_entry(ctx, d, name, node)
        return self._attrs(node)

    def op_unlink(self, ctx: _Ctx, parent: int, name: bytes) -> Attributes:
        d = self._dir(ctx, parent)
        node = self._entry(ctx, d, name)
        if node.type is FileType.DIR:
            raise errors.IsDir("is a directory")
        self._del_entry(d, name)
        self._touch(ctx, d)
        node.nlink -= 1
        self._touch(ctx, node, mtime=False)
        if node.nlink == 0 and node.type is FileType.REG and self._has_inline(ctx, node.ino):
            # Its bytes are in the database: no data file to stat (a stat
            # that fails, and its exception, per small file deleted).
            after = node.attributes(0)
        else:
            after = self._attrs(node)
        if node.nlink == 0:
            self._drop(ctx, node)
        return after

    def _has_inline(self, ctx: _Ctx, ino: int) -> bool:
        """Whether C{ino} has an inline row (asked of the database once per op)."""
        known = ctx.inline
        if known is None:
            known = ctx.inline = {}
        found = known.get(ino)
        if found is None:
            assert self.conn is not None
            row = self.conn.execute("SELECT 1 FROM inline_data WHERE ino = ?", (ino,)).fetchone()
            found = known[ino] = row is not None
        return found

    def op_rmdir(self, ctx: _Ctx, parent: int, name: bytes) -> Attributes:
        d = self._dir(ctx, parent)
        node = self._entry(ctx, d, name)
        if node.type is not FileType.DIR:
            raise errors.NotDir("not a directory")
        if self._has_entries(node.ino):
            raise errors.NotEmpty("directory not empty")
        self._del_entry(d, name)
        d.nlink -= 1
        self._touch(ctx, d)
        node.nlink = 0
        after = self._attrs(node)
        self._drop(ctx, node)
        return after

    def op_unlink_prune(
        self, ctx: _Ctx, parent: int, name: bytes, dirs: tuple[tuple[int, bytes, int], ...]
    ) -> tuple[Attributes, tuple[Attributes, ...]]:
        """
        Unlink C{name}, then remove each of C{dirs} (parent, name, inode:
        the directory the name was in first, then the one holding it...)
        while it is still that inode and is left empty: S3's DELETE and the
        pruning of the directories it empties, in one change. Fires with
        the unlinked inode after and the directories removed, after.
        """
        after = self.op_unlink(ctx, parent, name)
        removed = []
        for dparent, dname, ino in dirs:
            if self._lookup_entry(dparent, dname) != ino or self._has_entries(ino):
                break
            removed.append(self.op_rmdir(ctx, dparent, dname))
        return after, tuple(removed)

    def _has_entries(self, ino: int) -> bool:
        assert self.conn is not None
        return (
            self.conn.execute("SELECT 1 FROM dirent WHERE parent = ? LIMIT 1", (ino,)).fetchone()
            is not None
        )

    def _is_ancestor(self, ctx: _Ctx, ancestor: int, ino: int) -> bool:
        while True:
            if ino == ancestor:
                return True
            if ino == ROOT_INO:
                return False
            ino = self._get(ctx, ino).parent

    def op_rename(
        self, ctx: _Ctx, src_parent: int, src_name: bytes, dst_parent: int, dst_name: bytes
    ) -> RenameResult:
        sd = self._dir(ctx, src_parent)
        dd = self._dir(ctx, dst_parent)
        node = self._entry(ctx, sd, src_name)
        check_name(dst_name)
        existing = self._lookup_entry(dst_parent, dst_name)
        if existing is not None and existing == node.ino:
            return RenameResult(self._attrs(node), None)
        if node.type is FileType.DIR and self._is_ancestor(ctx, node.ino, dst_parent):
            raise errors.Inval("rename into own subtree")
        replaced: Node | None = None
        if existing is not None:
            replaced = self._get(ctx, existing)
            if node.type is FileType.DIR:
                if replaced.type is not FileType.DIR:
                    raise errors.NotDir("directory over non-directory")
                if self._has_entries(replaced.ino):
                    raise errors.NotEmpty("destination not empty")
            elif replaced.type is FileType.DIR:
                raise errors.IsDir("non-directory over directory")
        # Commit point: everything below cannot fail (short of I/O errors,
        # which roll the whole operation back).
        self._del_entry(sd, src_name)
        self._touch(ctx, sd)
        replaced_after = None
        if replaced is not None:
            self._del_entry(dd, dst_name)
            if replaced.type is FileType.DIR:
                dd.nlink -= 1
                replaced.nlink = 0
            else:
                replaced.nlink -= 1
            self._touch(ctx, replaced, mtime=False)
            replaced_after = self._attrs(replaced)
            if replaced.nlink == 0:
                self._drop(ctx, replaced)
        self._add_entry(ctx, dd, dst_name, node)
        if node.type is FileType.DIR and src_parent != dst_parent:
            sd.nlink -= 1
            dd.nlink += 1
            node.parent = dst_parent
        elif node.type is FileType.REG and self.files.needs_sync(node.ino):
            # A durable rename makes the renamed file's data durable first
            # (run_batch syncs ctx.sync before the commit), as ext4 does for
            # a file replacing another by rename: no crash can publish a name
            # whose data is not on disk. S3 writes a small object unstable
            # and lets its publishing rename flush both (one flush, not two).
            ctx.sync.add(node.ino)
        self._touch(ctx, node, mtime=False)
        return RenameResult(self._attrs(node), replaced_after)

    def op_put_file(
        self,
        ctx: _Ctx,
        parent: int,
        dirs: tuple[tuple[bytes, int, int, int, tuple[tuple[bytes, bytes], ...]], ...],
        name: bytes,
        mode: int,
        uid: int,
        gid: int,
        data: bytes,
        xattrs: tuple[tuple[bytes, bytes], ...],
        mtime_ns: int,
    ) -> PutResult:
        """
        A new regular file holding C{data} and C{xattrs}, modified at
        C{mtime_ns}, put at C{name} in one step: created, written, given its
        attributes and renamed over whatever regular file had the name, as
        one atomic change (S3's small PUT: see
        L{claudefs_gateway.backend.embedded.EmbeddedBackend.put_file}); in
        the directories C{dirs} (name, mode, uid, gid, xattrs), made first
        under C{parent}, one in the other. The data is inline when it fits,
        else in a data file synced before the commit (a durable op:
        L{run_batch} syncs C{ctx.sync} first).
        """
        d = self._dir(ctx, parent)
        check_name(name)
        for xname, value in xattrs + tuple(x for dd in dirs for x in dd[4]):
            _check_xattr_name(xname)
            if len(value) > XATTR_SIZE_MAX:
                raise errors.Range("xattr value too large")
        if len(data) > MAX_FILE_SIZE:
            raise errors.FBig("file too large")
        assert self.conn is not None
        made: list[Node] = []
        for dname, dmode, duid, dgid, dxattrs in dirs:
            check_name(dname)
            if self._lookup_entry(d.ino, dname) is not None:
                # Made meanwhile (another client): the caller looks again.
                raise errors.Exists("name exists")
            node = self._make(ctx, FileType.DIR, dmode, duid, dgid, (0, 0), parent=d.ino)
            d.nlink += 1
            self._add_entry(ctx, d, dname, node)
            self._put_xattrs(node.ino, dxattrs)
            made.append(node)
            d = node
        existing = self._lookup_entry(d.ino, name) if not made else None
        replaced: Node | None = None
        if existing is not None:
            replaced = self._get(ctx, existing)
            if replaced.type is FileType.DIR:
                raise errors.IsDir("non-directory over directory")
        node = self._make(ctx, FileType.REG, mode, uid, gid, (0, 0))
        if data:
            if len(data) <= self.inline_max:
                self._inline_put(node.ino, bytes(data))
            else:
                # Written here, not deferred to the data writers: the op is
                # small (S3 sends at most its small-write size this way).
                fd = self.files.get(node.ino, create=True)
                assert fd is not None
                self.files.dirty.add(node.ino)
                pwrite_all(fd, memoryview(data), 0)
                ctx.sync.add(node.ino)
            node.size = len(data)
            self._account(ctx, node, size=len(data))
        node.mtime = node.atime = mtime_ns
        self._put_xattrs(node.ino, xattrs)
        replaced_after = None
        if replaced is not None:
            self._del_entry(d, name)
            replaced.nlink -= 1
            self._touch(ctx, replaced, mtime=False)
            replaced_after = self._attrs(replaced)
            if replaced.nlink == 0:
                self._drop(ctx, replaced)
        self._add_entry(ctx, d, name, node)
        # An inline file uses no blocks of its own (and has no data file to stat).
        mine = self._attrs(node) if node.ino in ctx.sync else node.attributes(0)
        return PutResult(mine, replaced_after, tuple(n.attributes(0) for n in made))

    def _put_xattrs(self, ino: int, xattrs: tuple[tuple[bytes, bytes], ...]) -> None:
        """The extended attributes of an inode made in this op (it has none yet)."""
        if xattrs:
            assert self.conn is not None
            self._xattrs = True
            self.conn.executemany(
                "INSERT INTO xattr (ino, name, value) VALUES (?, ?, ?)",
                [(ino, bytes(n), bytes(v)) for n, v in xattrs],
            )

    def op_setattr(
        self, ctx: _Ctx, ino: int, changes: SetAttrs, guard_ctime_ns: int | None = None
    ) -> Attributes:
        node = self._get(ctx, ino)
        if guard_ctime_ns is not None and guard_ctime_ns != node.ctime:
            raise errors.Inval("ctime guard mismatch")
        if changes.size is not None:
            if node.type is FileType.DIR:
                raise errors.IsDir("size of a directory")
            if node.type is not FileType.REG:
                raise errors.Inval("size of a non-regular file")
            if not 0 <= changes.size <= MAX_FILE_SIZE:
                raise errors.FBig("size too large")
            if changes.size == node.size and changes == SetAttrs(size=changes.size):
                # A truncation to the size the file already has, and nothing
                # else: POSIX ftruncate marks the times only "if the file size
                # is changed", and RFC 1813 (SETATTR) and RFC 5661 18.30.4 tie
                # the modify time and change attribute to the size changing.
                # Nothing changes, so nothing is written and the commit costs
                # no flush: libnfs sends this after every O_TRUNC create
                # (CREATE, then SETATTR size 0 of the empty file).
                return self._attrs(node)
        now = ctx.now
        if changes.uid is not None or changes.gid is not None:
            size = node.size if node.type is FileType.REG else 0
            self._account(ctx, node, inodes=-1, size=-size)
            if changes.uid is not None:
                node.uid = changes.uid
            if changes.gid is not None:
                node.gid = changes.gid
            self._account(ctx, node, inodes=1, size=size)
        if changes.mode is not None:
            node.mode = changes.mode & 0o7777
        if changes.size is not None and changes.size != node.size:
            self._truncate(ctx, node, changes.size)
            node.mtime = now
        elif changes.size is not None:
            node.mtime = now
        if changes.atime is not None:
            node.atime = now if changes.atime is NOW else int(changes.atime)  # type: ignore[arg-type]
        if changes.mtime is not None:
            node.mtime = now if changes.mtime is NOW else int(changes.mtime)  # type: ignore[arg-type]
        if changes.btime is not None:
            node.btime = now if changes.btime is NOW else int(changes.btime)  # type: ignore[arg-type]
        node.ctime = now
        node.change += 1
        ctx.dirty.add(node.ino)
        return self._attrs(node)

    def _truncate(self, ctx: _Ctx, node: Node, size: int) -> None:
        self._account(ctx, node, size=size - node.size)
        blob = self._inline_get(node.ino)
        if blob is not None:
            # Inline: cut in the same transaction (nothing to do after the
            # commit); growing only records the size (the rest reads as zeros).
            if size < len(blob):
                self._inline_put(node.ino, blob[:size])
            node.size = size
            return
        if size < node.size:
            # The data beyond the new size is still what the committed size
            # shows: cut it only once this change is committed.
            ctx.phys.append(("truncate", node.ino, size, 0))
        else:
            # Growing only records the size (reads pad with zeros), after
            # cutting off bytes a crash may have left beyond the old size
            # (invisible until now, so this may happen at once).
            fd = self.files.get(node.ino, create=False)
            if fd is not None:
                self._trim(fd, node.size)
        node.size = size

    def _trim(self, fd: int, size: int) -> None:
        if os.fstat(fd).st_size > size:
            os.ftruncate(fd, size)

    def op_setxattr(
        self, ctx: _Ctx, ino: int, name: bytes, value: bytes, create: bool | None = None
    ) -> None:
        node = self._get(ctx, ino)
        _check_xattr_name(name)
        if len(value) > XATTR_SIZE_MAX:
            raise errors.Range("xattr value too large")
        assert self.conn is not None
        exists = (
            self.conn.execute(
                "SELECT 1 FROM xattr WHERE ino = ? AND name = ?", (ino, name)
            ).fetchone()
            is not None
        )
        if create is True and exists:
            raise errors.Exists("xattr exists")
        if create is False and not exists:
            raise errors.NoData("no such xattr")
        self._xattrs = True
        self.conn.execute(
            "INSERT OR REPLACE INTO xattr (ino, name, value) VALUES (?, ?, ?)",
            (ino, bytes(name), bytes(value)),
        )
        self._touch(ctx, node, mtime=False)

    def op_removexattr(self, ctx: _Ctx, ino: int, name: bytes) -> None:
        node = self._get(ctx, ino)
        _check_xattr_name(name)
        assert self.conn is not None
        if (
            self.conn.execute("DELETE FROM xattr WHERE ino = ? AND name = ?", (ino, name)).rowcount
            == 0
        ):
            raise errors.NoData("no such xattr")
        self._touch(ctx, node, mtime=False)

    def op_set_quota(self, ctx: _Ctx, kind: str, id: int, limits: QuotaLimits | None) -> None:
        assert self.conn is not None
        if limits is None:
            self.conn.execute("DELETE FROM quota WHERE kind = ? AND id = ?", (kind, id))
        else:
            self.conn.execute(
                "INSERT OR REPLACE INTO quota"
                " (kind, id, bytes_soft, bytes_hard, inodes_soft, inodes_hard)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    kind,
                    id,
                    limits.bytes_soft,
                    limits.bytes_hard,
                    limits.inodes_soft,
                    limits.inodes_hard,
                ),
            )

    def op_set_state(self, ctx: _Ctx, key: str, value: bytes | None) -> None:
        assert self.conn is not None
        if value is None:
            self.conn.execute("DELETE FROM state WHERE k = ?", (key,))
        else:
            self.conn.execute(
                "INSERT OR REPLACE INTO state (k, v) VALUES (?, ?)", (key, bytes(value))
            )

    # -- data operations ---------------------------------------------------------------

    def _inline_get(self, ino: int) -> bytes | None:
        """A file's inline bytes, or None if it has none (a data file, or nothing yet)."""
        # Always asked (a primary-key lookup): a move out of line that failed
        # or was rolled back (a batch run again) leaves a data file behind
        # while the row, which wins, stays.
        assert self.conn is not None
        row = self.conn.execute("SELECT data FROM inline_data WHERE ino = ?", (ino,)).fetchone()
        return None if row is None else bytes(row[0])

    def _inline_put(self, ino: int, data: bytes) -> None:
        assert self.conn is not None
        self._fileless.discard(ino)
        self.conn.execute(
            "INSERT OR REPLACE INTO inline_data (ino, data) VALUES (?, ?)", (ino, data)
        )

    def _move_out(self, ctx: _Ctx, node: Node, blob: bytes) -> None:
        """
        Move an inline file's bytes to its data file, in this op's savepoint:
        the row goes now, the data file is synced before the batch commits
        (L{run_batch}, C{moved}). A data file a crash or a failed move left
        behind is cut first (its bytes were never the file's).
        """
        fd = self.files.get(node.ino, create=True)
        assert fd is not None
        os.ftruncate(fd, 0)
        self.files.dirty.add(node.ino)
        if blob:
            pwrite_all(fd, memoryview(blob), 0)
        assert self.conn is not None
        self.conn.execute("DELETE FROM inline_data WHERE ino = ?", (node.ino,))
        ctx.moved.add(node.ino)

    def _write_inline(
        self, ctx: _Ctx, node: Node, blob: bytes, offset: int, data: bytes, stable: bool
    ) -> WriteResult:
        """A write that ends within the inline threshold, to a file kept inline."""
        before = node.attributes(0)
        end = offset + len(data)
        if offset > len(blob):
            blob = blob + bytes(offset - len(blob)) + bytes(data)
        else:
            blob = blob[:offset] + bytes(data) + blob[end:]
        self._inline_put(node.ino, blob)
        if end > node.size:
            self._account(ctx, node, size=end - node.size)
            node.size = end
        self._touch(ctx, node)
        # Stable: the op is durable, so the batch's commit syncs the WAL that
        # holds the bytes (RFC 1813 FILE_SYNC); nothing else to sync.
        return WriteResult(len(data), stable, node.attributes(0), before)

    def op_write(self, ctx: _Ctx, ino: int, offset: int, data: bytes, stable: bool) -> WriteResult:
        node = self._file(ctx, ino)
        if offset < 0:
            raise errors.Inval("negative offset")
        if offset + len(data) > MAX_FILE_SIZE:
            raise errors.FBig("file too large")
        if not data:
            # POSIX: a zero-byte write to a regular file has no other results
            # (a stable one still makes earlier writes durable, like a commit).
            before = self._attrs(node)
            if stable:
                ctx.sync.add(ino)
            return WriteResult(0, stable, before, before)
        end = offset + len(data)
        if ino in self._fileless:
            self._fileless.discard(ino)
            # Made here and never written: no inline row, no data file.
            blob = b"" if node.size == 0 and end <= self.inline_max else None
        else:
            blob = self._inline_get(ino)
        if blob is None and end <= self.inline_max and node.size <= self.inline_max:
            if self.files.get(ino, create=False) is None:
                blob = b""  # no data file yet: this file starts inline
        if blob is not None:
            if end <= self.inline_max:
                return self._write_inline(ctx, node, blob, offset, data, stable)
            self._move_out(ctx, node, blob)
        fd = self.files.get(ino, create=True)
        assert fd is not None
        # After get: an fstat of the descriptor, not a stat of a path (which
        # raises for a new file's first write).
        before = self._attrs(node)
        if offset > node.size:
            self._trim(fd, node.size)
        view = memoryview(data)
        self.files.dirty.add(ino)
        if self._defer and len(view) >= self.defer_min:
            # Written with the batch's other large writes, on several threads
            # (see _flush_data), before anything else touches this file.
            self._pending.append((ino, view, offset))
            self._pending_inos.add(ino)
            self._pending_bytes += len(view)
            self.stats.deferred_writes += 1
            ctx.deferred = True
        else:
            pwrite_all(fd, view, offset)
        if end > node.size:
            self._account(ctx, node, size=end - node.size)
            node.size = end
        self._touch(ctx, node)
        if stable:
            ctx.sync.add(ino)
        if ctx.deferred:
            # The space used is known only once the data is written:
            # _flush_data fills it in then (no fstat here for nothing).
            return WriteResult(len(data), stable, node.attributes(before.used), before)
        return WriteResult(len(data), stable, self._attrs(node), before)

    def op_wrote(
        self, ctx: _Ctx, ino: int, offset: int, length: int, what: int, mtime_ns: int = 0
    ) -> WriteResult:
        """
        The metadata half of a write (C{what} 0), allocate (1) or deallocate
        (2) whose bytes a data server holds (the meta server's WROTE): the same
        checks, size, times, change counter and usage as the whole operation,
        and no data file.
        """
        node = self._file(ctx, ino)
        if offset < 0 or (what != 0 and length <= 0) or length < 0:
            raise errors.Inval("bad range")
        end = offset + length
        if what != 2 and end > MAX_FILE_SIZE:
            raise errors.FBig("file too large")
        before = self._attrs(node)
        if what == 0 and length == 0:
            return WriteResult(0, True, before, before)
        if what != 2 and end > node.size:
            self._account(ctx, node, size=end - node.size)
            node.size = end
        times = (node.mtime, node.ctime)
        self._touch(ctx, node, mtime=what != 1)
        if mtime_ns > 0 and what == 0:
            # The time the writing gateway gave its client (write-behind:
            # docs/workers.rst), so the store holds what the client was told;
            # never back (its WROTEs may arrive out of order on several
            # connections: the last write's time stays).
            node.mtime = max(times[0], mtime_ns)
            node.ctime = max(times[1], mtime_ns)
        return WriteResult(length if what == 0 else 0, True, self._attrs(node), before)

    def op_sync(self, ctx: _Ctx) -> None:
        """
        Nothing itself: a durable op, so its batch syncs the log if an earlier
        commit left it unsynced (L{run_batch}), and costs nothing otherwise.
        """

    def op_commit(self, ctx: _Ctx, ino: int) -> Attributes:
        node = self._file(ctx, ino)
        ctx.late_sync.add(ino)
        return self._attrs(node)

    def op_allocate(self, ctx: _Ctx, ino: int, offset: int, length: int) -> Attributes:
        node = self._file(ctx, ino)
        if offset < 0 or length <= 0:
            raise errors.Inval("bad range")
        if offset + length > MAX_FILE_SIZE:
            raise errors.FBig("file too large")
        blob = self._inline_get(ino)
        if blob is not None:
            # Reserving space is for a data file: out of line first.
            self._move_out(ctx, node, blob)
        self._fileless.discard(ino)
        fd = self.files.get(ino, create=True)
        assert fd is not None
        if offset + length > node.size:
            self._trim(fd, node.size)
        self.files.dirty.add(ino)
        os.posix_fallocate(fd, offset, length)
        ctx.sync.add(ino)
        if offset + length > node.size:
            self._account(ctx, node, size=offset + length - node.size)
            node.size = offset + length
        self._touch(ctx, node, mtime=False)
        return self._attrs(node)

    def op_deallocate(self, ctx: _Ctx, ino: int, offset: int, length: int) -> Attributes:
        node = self._file(ctx, ino)
        if offset < 0 or length <= 0:
            raise errors.Inval("bad range")
        end = min(offset + length, node.size)
        blob = self._inline_get(ino)
        if blob is not None:
            # Inline: zero the range in the same transaction.
            stop = min(end, len(blob))
            if stop > offset:
                self._inline_put(ino, blob[:offset] + bytes(stop - offset) + blob[stop:])
        elif end > offset:
            # Applied (and synced) after the commit, like a truncation.
            ctx.phys.append(("punch", ino, offset, end - offset))
        self._touch(ctx, node)
        return self._attrs(node)


#: Durable changes that may be committed without a sync and the log synced
#: after (L{Engine.run_unsynced}): none of them syncs a file of its own. A
#: rename is not one (a durable rename of a regular file syncs its data
#: first), nor a setattr (a truncation's data cut follows its commit). S3's
#: DELETE (C{op_unlink_prune}: an unlink and rmdirs) is; S3's small PUT
#: (C{op_put_file}) is when its bytes are inline (a larger one writes and
#: syncs a data file: L{Engine.run_unsynced} turns it away).
UNSYNCED_OPS = frozenset(
    {
        Engine.op_create,
        Engine.op_unlink,
        Engine.op_rmdir,
        Engine.op_commit,
        Engine.op_unlink_prune,
        Engine.op_put_file,
    }
)


def _check_xattr_name(name: bytes) -> None:
    if not name or b"\x00" in name:
        raise errors.Inval("bad xattr name")
    if len(name) > XATTR_NAME_MAX:
        raise errors.Range("xattr name too long")
