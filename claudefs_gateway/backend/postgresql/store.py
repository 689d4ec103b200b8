# -*- test-case-name: tests.backend.test_postgresql -*-
"""
L{PostgresStore}: C{claudefs-meta}'s namespace in PostgreSQL (docs/postgresql.rst).

Why psycopg 3 with its connection pool, on threads: the gateway runs on
Twisted's default reactor, and the project keeps asyncio out (STYLE.md §4),
so asyncpg would need the asyncio reactor in every meta server for one
library. psycopg is the PostgreSQL adapter most Python software uses, is
maintained by the psycopg project, speaks libpq (so every libpq connection
string, C{.pgpass}, C{service} file, TLS and C{target_session_attrs} setting
works as an operator expects), and its pool (C{psycopg_pool}) checks,
replaces and reconnects connections. Each operation runs on a thread of the
named C{db} pool (L{claudefs_gateway.core.threads}, as many threads as
pooled connections) with one connection for its whole transaction, through
C{deferToThreadPool}; the reactor thread never waits on the database.

Several meta servers may serve one database at once (active-active): every
change is one transaction (L{claudefs_gateway.backend.postgresql._engine}
says which isolation and why), inode numbers and cookies come from sequences,
and a change made through one server reaches the gateways subscribed to the
others through LISTEN/NOTIFY (L{notify_change}, L{on_remote_change}).

Notifications are sent after the change commits, in a transaction of their
own with an asynchronous commit, batched: a NOTIFY inside the change's own
transaction would take PostgreSQL's database-wide notification lock and hold
it through the commit's WAL flush, so every change of every meta server
would commit one at a time. The price is a window of one round trip after
a change commits in which a meta server killed loses the notification:
gateways of other servers may then serve what they cached of that inode
until C{cache.nfs_attr_cache.default_ttl_secs}. When a server's LISTEN
connection drops (a database restart or failover), notifications may have
been missed: L{on_reset} listeners hear it (the meta server then closes its
subscribers' event connections, and each gateway drops its whole cache).
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from zope.interface import implementer

from claudefs_gateway import errors
from claudefs_gateway.backend.postgresql._engine import PgEngine, Tx, convert_error
from claudefs_gateway.backend.postgresql._schema import (
    DROP_ZERO_USAGE,
    FOLD_USAGE,
    SchemaTooNew,
    apply_migrations,
)
from claudefs_gateway.core.health import CheckResult
from claudefs_gateway.core.log import Logger
from claudefs_gateway.fstypes import (
    Attributes,
    DirPage,
    FileType,
    FSStat,
    QuotaLimits,
    RenameResult,
    SetAttrs,
    Usage,
    WriteResult,
)
from claudefs_gateway.interfaces import IMetadataService

__all__ = ["PostgresStore", "PgSettings", "RemoteChange"]

T = TypeVar("T")

#: A NOTIFY payload must stay under 8000 bytes.
_PAYLOAD_MAX = 7000
#: How often usage deltas are folded into the base rows.
FOLD_INTERVAL = 5.0


@attrs.frozen
class PgSettings:
    """
    How to reach the database (C{meta_store.postgresql} in the configuration).

    @ivar conninfo: a libpq connection string or URI (parts already merged in).
    @ivar schema: the PostgreSQL schema holding this namespace's tables.
    """

    conninfo: str
    schema: str = "claudefs"
    pool_min: int = 2
    pool_max: int = 8
    statement_timeout_ms: int = 5000
    connect_timeout_ms: int = 5000

    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel of this namespace (one per schema)."""
        return f"cfs_change_{self.schema}"[:63]

    @property
    def shared_channel(self) -> str:
        """The channel of shared-state events (servers/shared_pg.py) of this namespace."""
        return f"cfs_shared_{self.schema}"[:63]


@attrs.frozen
class RemoteChange:
    """A change another meta server made: C{session} (the gateway's), C{ino}, C{dir}."""

    session: int
    ino: int
    dir: int


@implementer(IMetadataService)
class PostgresStore:
    """
    @param threads: the server's pools; operations run in its C{db} pool
        (else in the reactor's thread pool).
    @param inline: run every operation on the calling thread (tests and the
        offline C{store export|import}: it blocks the caller).
    @param data_dir: statfs reports this directory's device for bytes.
    """

    _log = Logger()

    def __init__(
        self,
        settings: PgSettings,
        reactor: Any,
        threads: Any = None,
        *,
        now_ns: Callable[[], int] = time.time_ns,
        inline: bool = False,
        data_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.instance_id = bytes(8)
        self.server_id = os.urandom(6).hex()
        self.engine = PgEngine(now_ns)
        if data_dir is not None:
            self.engine.statfs_path = str(data_dir)
        self._reactor = reactor
        self._threads = threads
        self._inline = inline
        self._pool: Any = None
        self._state = "new"
        self._error: str | None = None
        self._change_listeners: list[Callable[[RemoteChange], None]] = []
        self._shared_listeners: list[Callable[[str], None]] = []
        #: PostgreSQL's start time (pg_postmaster_start_time), as text: a database
        #: restart may lose commits made with synchronous_commit off (unstable
        #: writes), so it goes into the meta server's boot id and the NFS write
        #: verifier changes (RFC 1813 section 3.3.7). Read at open and whenever
        #: the LISTEN connection is made again.
        self.db_boot = b""
        # Unstable writes' metadata lost in a database restart (docs/postgresql.rst,
        # "Unstable writes and restarts"): each pooled connection is tagged, when
        # made, with the database's generation here (bumped when a new connection
        # finds a new postmaster); each unstable WROTE notes its inode, generation
        # and sequence number; a synchronous commit covers the notes made before it
        # began under its own generation, and moves older generations' notes to
        # _lost, which the inode's COMMIT_META reports (UnstableLost).
        self._gen_lock = threading.Lock()
        self._boot_gen = 0
        self._pool_boot = b""
        self._conn_gen: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._seq = itertools.count(1)
        self._unflushed: collections.OrderedDict[int, tuple[int, int]] = collections.OrderedDict()
        self._lost: collections.OrderedDict[int, None] = collections.OrderedDict()
        #: Unstable writes' metadata found lost to a database restart (tests, metrics).
        self.unstable_lost = 0
        self._reset_listeners: list[Callable[[], object]] = []
        self._outbox: list[tuple[int, int, int]] = []
        self._flushing = False
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        self._listening = False
        self._fold_call: Any = None

    # -- lifecycle ---------------------------------------------------------------------

    def _run(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        if self._inline:
            try:
                return defer.succeed(fn(*args))
            except BaseException:
                return defer.fail()
        if self._threads is not None and "db" in getattr(self._threads, "pools", {}):
            return self._threads.run("db", fn, *args)  # type: ignore[no-any-return]
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), fn, *args)

    def _configure(self, conn: Any) -> None:
        from psycopg import sql

        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.settings.schema)))
        conn.execute(
            sql.SQL("SET statement_timeout = {}").format(
                sql.Literal(int(self.settings.statement_timeout_ms))
            )
        )
        boot = _postmaster_start(conn)
        with self._gen_lock:
            if self._pool_boot and boot != self._pool_boot:
                # A new postmaster: asynchronous commits made under the old one
                # and not flushed by a synchronous commit there may be gone.
                self._boot_gen += 1
                self.db_boot = boot
                self._log.warn(
                    "the metadata database restarted: unstable writes' metadata not yet "
                    "committed may be lost; their COMMITs will say so"
                )
            self._pool_boot = boot
            self._conn_gen[conn] = self._boot_gen

    def _noted(self, conn: Any, began: int, ino: int | None) -> None:
        """
        After a change on C{conn} that began at sequence C{began}: note an
        unstable write's inode (C{ino}), or let a synchronous commit cover
        the notes made before it began.
        """
        with self._gen_lock:
            gen = self._conn_gen.get(conn, self._boot_gen)
            notes = self._unflushed
            if ino is not None:
                notes.pop(ino, None)
                notes[ino] = (gen, next(self._seq))
                if len(notes) > _NOTES_MAX:
                    # Forgotten, not reported: the write verifier still changes
                    # with the boot id for a client that checks it.
                    notes.popitem(last=False)
                return
            while notes:
                first = next(iter(notes))
                g, seq = notes[first]
                if seq > began or g > gen:
                    break
                del notes[first]
                if g < gen:
                    self._lost[first] = None
                    self.unstable_lost += 1
                    if len(self._lost) > _NOTES_MAX:
                        self._lost.popitem(last=False)

    def open(self) -> defer.Deferred[None]:
        """Connect, apply migrations, create the root on first use. Fails with L{FSError}."""
        if self._state != "new":
            return defer.fail(errors.IO("store already opened"))
        self._state = "opening"
        d = self._run(self._open_sync)
        d.addCallbacks(self._opened, self._open_failed)
        return d  # type: ignore[return-value]

    def _open_sync(self) -> bytes:
        from psycopg import sql
        from psycopg_pool import ConnectionPool

        s = self.settings
        self._pool = ConnectionPool(
            s.conninfo,
            min_size=min(s.pool_min, s.pool_max),
            max_size=s.pool_max,
            kwargs={"autocommit": True, "connect_timeout": max(1, s.connect_timeout_ms // 1000)},
            configure=self._configure,
            timeout=s.connect_timeout_ms / 1000.0,
            name=f"cfs-meta-{self.server_id}",
            open=False,
            reconnect_failed=self._reconnect_failed,
        )
        self._pool.open(wait=True, timeout=s.connect_timeout_ms / 1000.0)
        with self._pool.connection() as conn:
            # Start-up work (migrations, the root, the epoch bump) may wait on another
            # server's migration lock or a large table: statement_timeout bounds client
            # requests, not this, so it is lifted here and restored by _configure below.
            conn.execute("SET statement_timeout = 0")
            applied = apply_migrations(conn, s.schema)
            if applied:
                self._log.info(
                    "metadata schema {schema} migrated to version {version}",
                    schema=s.schema,
                    version=applied[-1],
                )
            conn.execute(
                sql.SQL("SET search_path TO {}").format(sql.Identifier(self.settings.schema))
            )
            iid = self.engine.open(conn)
            self._configure(conn)
            self.db_boot = _postmaster_start(conn)
            return iid

    def _reconnect_failed(self, pool: Any) -> None:
        self._log.warn("the metadata database could not be reached for a while; still trying")

    def _opened(self, iid: bytes) -> None:
        self.instance_id = iid
        self._state = "open"
        self._log.info(
            "metadata store open: postgresql schema {schema}, epoch {epoch}",
            schema=self.settings.schema,
            epoch=self.engine.epoch,
        )
        if not self._inline:
            self._listener = threading.Thread(
                target=self._listen, name="cfs-pg-listen", daemon=True
            )
            self._listener.start()
            self._fold_call = self._reactor.callLater(FOLD_INTERVAL, self._fold)

    def _open_failed(self, f: Failure) -> Failure:
        self._state = "closed"
        self._error = f.getErrorMessage()
        pool, self._pool = self._pool, None
        if pool is not None:
            self._run(pool.close)
        if f.check(SchemaTooNew):
            return Failure(errors.IO(str(f.value)))
        if f.check(errors.GatewayError):
            return f
        return Failure(convert_error(f.value or Exception()))

    def close(self) -> defer.Deferred[None]:
        """Stop listening and close every pooled connection (nothing is left to flush)."""
        if self._state in ("new", "closed"):
            self._state = "closed"
            return defer.succeed(None)
        self._state = "closed"
        self._stop.set()
        if self._fold_call is not None and self._fold_call.active():
            self._fold_call.cancel()
        pool, self._pool = self._pool, None
        if pool is None:
            return defer.succeed(None)
        d = self._run(pool.close)
        d.addCallback(lambda _: self._log.info("metadata store closed"))
        return d

    def check(self) -> CheckResult:
        """Health: open, and the pool has connections (or can make them)."""
        if self._state != "open" or self._pool is None:
            return CheckResult.unhealthy(
                "store not open" + (f": {self._error}" if self._error else "")
            )
        stats = self._pool.get_stats()
        if stats.get("pool_size", 0) == 0 and stats.get("connections_errors", 0):
            return CheckResult.unhealthy("metadata database unreachable")
        if not self._listening:
            return CheckResult.degraded("not listening for other meta servers' changes")
        return CheckResult.healthy()

    # -- running operations --------------------------------------------------------------

    def _with_conn(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        retry: bool,
        begun: list[bool] | None = None,
    ) -> T:
        """
        Run C{fn(conn, *args)} with a pooled connection.

        A pooled connection the database dropped (a restart, a failover) fails
        at its first statement; the pool discards it, and the call runs again
        on another, as long as it may: a read always, a change only if its
        transaction had not begun (C{begun} still empty).
        """
        import psycopg

        pool = self._pool
        if pool is None:
            raise errors.BackendUnavailable("the metadata store is closed")
        tries = self.settings.pool_max + 1
        for attempt in range(tries):
            try:
                with pool.connection() as conn:
                    return fn(conn, *args)
            except errors.GatewayError:
                raise
            except psycopg.OperationalError as e:
                again = retry or (begun is not None and not begun)
                if again and attempt + 1 < tries and not _is_timeout(e) and not _no_pool(e):
                    continue
                raise convert_error(e) from None
            except Exception as e:
                err = convert_error(e)
                if isinstance(err, errors.IO):
                    self._log.failure("metadata database error")
                raise err from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _read(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        if self._state != "open":
            return defer.fail(errors.IO("store is not open"))
        return self._run(self._with_conn, fn, args, True)

    def _change(
        self,
        op: Callable[..., Any],
        *args: Any,
        durable: bool = True,
        idempotent: bool = False,
        unstable: int | None = None,
        committing: int | None = None,
    ) -> defer.Deferred[Any]:
        """
        @param unstable: the inode of an unstable write's metadata (with
            C{durable} false): noted until a synchronous commit covers it.
        @param committing: the inode a COMMIT_META makes durable: fails with
            L{errors.UnstableLost} if a database restart lost its unstable
            writes' metadata since its last commit.
        """
        if self._state != "open":
            return defer.fail(errors.IO("store is not open"))
        engine = self.engine
        begun: list[bool] = []
        note = unstable if not durable else None

        def run(conn: Any) -> Any:
            del begun[:]
            began = next(self._seq)
            value = engine.change(conn, op, args, durable, begun)
            self._noted(conn, began, note)
            if committing is not None and self._lost:
                with self._gen_lock:
                    lost = self._lost.pop(committing, 1) is None
                if lost:
                    raise errors.UnstableLost(
                        f"inode {committing}: unstable writes' metadata lost in a database restart"
                    )
            return value

        return self._run(self._with_conn, run, (), idempotent, begun)

    # -- events between meta servers -------------------------------------------------------

    def on_remote_change(self, listener: Callable[[RemoteChange], None]) -> None:
        """Call C{listener} (on the reactor thread) for each change another meta server made."""
        self._change_listeners.append(listener)

    def on_shared_event(self, listener: Callable[[str], None]) -> None:
        """
        Call C{listener(payload)} (on the reactor thread) for each notification
        on L{PgSettings.shared_channel} another meta server sent.
        """
        self._shared_listeners.append(listener)

    def transaction(self, fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        """
        Run C{fn(conn, *args)} in one transaction (READ COMMITTED) on a pooled
        connection, in the C{db} thread pool; retried on another connection
        only if it failed before the transaction began. Fires with C{fn}'s
        result; fails with L{errors.GatewayError} (the database's errors converted).
        """
        if self._state != "open":
            return defer.fail(errors.IO("store is not open"))
        begun: list[bool] = []

        def run(conn: Any) -> T:
            del begun[:]
            with conn.transaction():
                begun.append(True)
                return fn(conn, *args)

        return self._run(self._with_conn, run, (), False, begun)

    def on_reset(self, listener: Callable[[], object]) -> None:
        """Call C{listener} when other servers' changes may have been missed."""
        self._reset_listeners.append(listener)

    def notify_change(self, session: int, ino: int, dir: int) -> None:
        """Tell the other meta servers (batched, after the change committed)."""
        if self._inline or self._state != "open":
            return
        self._outbox.append((session, ino, dir))
        if not self._flushing:
            self._flush_next()

    def _flush_next(self) -> None:
        batch, self._outbox = self._outbox, []
        if not batch or self._state != "open":
            self._flushing = False
            return
        self._flushing = True
        d = self._run(self._send, batch)
        d.addErrback(self._send_failed)
        d.addBoth(lambda _: self._flush_next())

    def _payloads(self, batch: list[tuple[int, int, int]]) -> list[str]:
        out: list[str] = []
        cur = self.server_id
        for s, i, d in batch:
            item = f";{s:x},{i:x},{d:x}"
            if len(cur) + len(item) > _PAYLOAD_MAX:
                out.append(cur)
                cur = self.server_id
            cur += item
        out.append(cur)
        return out

    def _send(self, batch: list[tuple[int, int, int]]) -> None:
        if self._pool is None:
            return
        # On another pooled connection if the database dropped this one (as a
        # read does): a lost notification leaves the other meta servers'
        # gateways with stale caches, and one sent twice does no harm.
        self._with_conn(self._notify_tx, (batch,), True)

    def _notify_tx(self, conn: Any, batch: list[tuple[int, int, int]]) -> None:
        with conn.transaction():
            # A notification is a cache hint: no reason to wait for its WAL flush.
            conn.execute("SET LOCAL synchronous_commit TO OFF")
            for payload in self._payloads(batch):
                conn.execute("SELECT pg_notify(%s, %s)", (self.settings.channel, payload))

    def _send_failed(self, f: Failure) -> None:
        self._log.warn(
            "could not tell the other meta servers of changes: {why}", why=f.getErrorMessage()
        )

    def _listen(self) -> None:
        """The listener thread: LISTEN on its own connection, reconnecting until closed."""
        import psycopg
        from psycopg import sql

        delay = 0.1
        first = True
        while not self._stop.is_set():
            try:
                conn = psycopg.connect(
                    self.settings.conninfo,
                    autocommit=True,
                    connect_timeout=max(1, self.settings.connect_timeout_ms // 1000),
                )
            except psycopg.Error as e:
                self._listening = False
                self._log.debug("LISTEN connection failed: {why}", why=str(e))
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            try:
                # Before the reset below: gateways reconnect then, and their HELLO must
                # carry the new boot id if the database restarted.
                self.db_boot = _postmaster_start(conn)
                conn.execute(
                    sql.SQL("LISTEN {}").format(sql.Identifier(self.settings.shared_channel))
                )
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.settings.channel)))
                self._listening = True
                delay = 0.1
                if not first:
                    # Reconnected: whatever was notified meanwhile went unheard.
                    self._reactor.callFromThread(self._reset)
                first = False
                while not self._stop.is_set():
                    # Each as it comes: the generator ends only at the timeout, and a
                    # lock or lease another gateway waits to hear of must not wait for it.
                    for n in conn.notifies(timeout=0.5):
                        if n.payload.startswith(self.server_id):
                            continue
                        if n.channel == self.settings.shared_channel:
                            self._reactor.callFromThread(self._deliver_shared, [n.payload])
                        else:
                            self._reactor.callFromThread(self._deliver, [n.payload])
            except psycopg.Error as e:
                self._listening = False
                if not self._stop.is_set():
                    self._log.warn("LISTEN connection lost: {why}", why=str(e))
                    self._reactor.callFromThread(self._reset)
            finally:
                self._listening = False
                conn.close()

    def _deliver(self, payloads: list[str]) -> None:
        for payload in payloads:
            for item in payload.split(";")[1:]:
                try:
                    s, i, d = (int(x, 16) for x in item.split(","))
                except ValueError:
                    self._log.warn("unreadable change notification ignored")
                    continue
                change = RemoteChange(s, i, d)
                for listener in list(self._change_listeners):
                    try:
                        listener(change)
                    except Exception:
                        self._log.failure("remote change listener failed")

    def _deliver_shared(self, payloads: list[str]) -> None:
        for payload in payloads:
            for listener in list(self._shared_listeners):
                try:
                    listener(payload)
                except Exception:
                    self._log.failure("shared-state listener failed")

    def _reset(self) -> None:
        for listener in list(self._reset_listeners):
            try:
                listener()
            except Exception:
                self._log.failure("reset listener failed")

    def _fold(self) -> None:
        self._fold_call = None
        if self._state != "open":
            return

        def again(_: Any) -> None:
            if self._state == "open" and self._fold_call is None:
                self._fold_call = self._reactor.callLater(FOLD_INTERVAL, self._fold)

        self.fold_usage().addBoth(again)

    def fold_usage(self) -> defer.Deferred[None]:
        """
        Fold usage deltas into the base rows (every L{FOLD_INTERVAL} seconds;
        the servers of a store take turns through an advisory lock). Never fails.
        """

        def fold(conn: Any) -> None:
            with conn.transaction():
                got = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (0x636673_757367,))
                if got.fetchone()[0]:
                    conn.execute(FOLD_USAGE)
                    conn.execute(DROP_ZERO_USAGE)

        if self._state != "open":
            return defer.succeed(None)
        d = self._run(self._with_conn, fold, (), False)
        d.addErrback(
            lambda f: self._log.debug("usage fold skipped: {why}", why=f.getErrorMessage())
        )
        return d

    # -- IMetadataService ---------------------------------------------------------------------

    def root(self) -> defer.Deferred[Attributes]:
        return self._read(self.engine.getattr, 1)

    def getattr(self, ino: int) -> defer.Deferred[Attributes]:
        return self._read(self.engine.getattr, ino)

    def lookup(self, parent: int, name: bytes) -> defer.Deferred[Attributes]:
        return self._read(self.engine.lookup, parent, bytes(name))

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
    ) -> defer.Deferred[Attributes]:
        # Always durable (the flag is a hint: interfaces.IMetadataService.create).
        return self._change(PgEngine.op_create, parent, bytes(name), type, mode, uid, gid, rdev)

    def symlink(
        self, parent: int, name: bytes, target: bytes, mode: int, uid: int, gid: int
    ) -> defer.Deferred[Attributes]:
        return self._change(PgEngine.op_symlink, parent, bytes(name), bytes(target), mode, uid, gid)

    def link(self, ino: int, parent: int, name: bytes) -> defer.Deferred[Attributes]:
        return self._change(PgEngine.op_link, ino, parent, bytes(name))

    def unlink(self, parent: int, name: bytes, durable: bool = True) -> defer.Deferred[Attributes]:
        # Always durable (the flag is a hint: interfaces.IMetadataService.create).
        return self._change(PgEngine.op_unlink, parent, bytes(name))

    def sync(self) -> defer.Deferred[None]:
        """Nothing to do: every change here is durable when it is answered."""
        return defer.succeed(None)

    def rmdir(self, parent: int, name: bytes, durable: bool = True) -> defer.Deferred[Attributes]:
        return self._change(PgEngine.op_rmdir, parent, bytes(name))

    def rename(
        self,
        src_parent: int,
        src_name: bytes,
        dst_parent: int,
        dst_name: bytes,
        durable: bool = True,
    ) -> defer.Deferred[RenameResult]:
        return self._change(
            PgEngine.op_rename, src_parent, bytes(src_name), dst_parent, bytes(dst_name)
        )

    def setattr(
        self,
        ino: int,
        changes: SetAttrs,
        guard_ctime_ns: int | None = None,
        durable: bool = True,
    ) -> defer.Deferred[Attributes]:
        return self._change(PgEngine.op_setattr, ino, changes, guard_ctime_ns)

    def readdir(
        self, dir: int, cookie: int, verifier: bytes, count: int, with_attrs: bool = False
    ) -> defer.Deferred[DirPage]:
        return self._read(self.engine.readdir, dir, cookie, bytes(verifier), count, with_attrs)

    def readlink(self, ino: int) -> defer.Deferred[bytes]:
        return self._read(self.engine.readlink, ino)

    def statfs(self) -> defer.Deferred[FSStat]:
        return self._read(self.engine.statfs)

    def getxattr(self, ino: int, name: bytes) -> defer.Deferred[bytes]:
        return self._read(self.engine.getxattr, ino, bytes(name))

    def setxattr(
        self,
        ino: int,
        name: bytes,
        value: bytes,
        create: bool | None = None,
        durable: bool = True,
    ) -> defer.Deferred[None]:
        return self._change(PgEngine.op_setxattr, ino, bytes(name), bytes(value), create)

    def listxattr(self, ino: int) -> defer.Deferred[list[bytes]]:
        return self._read(self.engine.listxattr, ino)

    def removexattr(self, ino: int, name: bytes) -> defer.Deferred[None]:
        return self._change(PgEngine.op_removexattr, ino, bytes(name))

    def usage(self, kind: str, id: int) -> defer.Deferred[Usage]:
        return self._read(self.engine.usage, kind, id)

    def all_usage(self, kind: str) -> defer.Deferred[dict[int, Usage]]:
        return self._read(self.engine.all_usage, kind)

    def get_quota(self, kind: str, id: int) -> defer.Deferred[QuotaLimits | None]:
        return self._read(self.engine.get_quota, kind, id)

    def set_quota(self, kind: str, id: int, limits: QuotaLimits | None) -> defer.Deferred[None]:
        return self._change(PgEngine.op_set_quota, kind, id, limits, idempotent=True)

    def list_quotas(self, kind: str) -> defer.Deferred[dict[int, QuotaLimits]]:
        return self._read(self.engine.list_quotas, kind)

    def get_state(self, key: str) -> defer.Deferred[bytes | None]:
        return self._read(self.engine.get_state, key)

    def set_state(self, key: str, value: bytes | None) -> defer.Deferred[None]:
        return self._change(
            PgEngine.op_set_state, key, None if value is None else bytes(value), idempotent=True
        )

    # -- the metadata half of data operations (the meta server's WROTE, COMMIT_META) ----------

    def wrote(
        self, ino: int, offset: int, length: int, what: int, durable: bool = True, mtime_ns: int = 0
    ) -> defer.Deferred[WriteResult]:
        """See L{claudefs_gateway.backend.embedded.EmbeddedBackend.wrote}."""
        return self._change(
            PgEngine.op_wrote, ino, offset, length, what, mtime_ns, durable=durable, unstable=ino
        )

    def commit(self, ino: int) -> defer.Deferred[Attributes]:
        """
        Check the type and make every earlier change (unstable writes' too)
        durable; L{errors.UnstableLost} if a database restart lost some since
        the inode's last commit (L{_noted}).
        """
        return self._change(PgEngine.op_commit, ino, idempotent=True, committing=ino)

    # -- export / import (cfs-gateway store) ------------------------------------------------

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run C{fn(conn, *args)} now on the caller's thread (offline tools only)."""
        return self._with_conn(fn, args, False)


#: Unstable writes' notes kept (L{PostgresStore._noted}), and lost ones awaiting their COMMIT.
_NOTES_MAX = 65536


def _postmaster_start(conn: Any) -> bytes:
    row = conn.execute("SELECT pg_postmaster_start_time()::text").fetchone()
    return str(row[0]).encode() if row else b""


def _no_pool(e: BaseException) -> bool:
    from psycopg_pool import PoolTimeout

    return isinstance(e, PoolTimeout)


def _is_timeout(e: BaseException) -> bool:
    from psycopg import errors as pge

    return isinstance(e, pge.QueryCanceled)


__all__ += ["Tx"]
