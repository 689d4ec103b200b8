"""
claudefs-meta's PostgreSQL store (L{claudefs_gateway.backend.postgresql}) on
the scratch PostgreSQL 15 server of C{scripts/run-tests}:

 - the backend contract (L{ContractMixin}) through a meta server on
   PostgreSQL and a data server, over real TCP;
 - the state machine of C{test_statemachine.py} (same results and trees as
   the reference memory backend) with the store inline behind the meta server;
 - the store itself: migrations, errors, concurrency (one transaction per
   change, no lost update, rename loops refused under races).
"""

from __future__ import annotations

import os
from typing import Any

import attrs
from hypothesis import settings as hsettings
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from claudefs_gateway import errors
from claudefs_gateway.backend.postgresql import PgSettings, PostgresStore
from claudefs_gateway.backend.postgresql._schema import LATEST, SchemaTooNew, apply_migrations
from claudefs_gateway.backend.remote.client import NodeSpec, RemoteBackend
from claudefs_gateway.backend.remote.protocol import ServerFactory
from claudefs_gateway.core import config as cfg
from claudefs_gateway.core.threads import ThreadPools
from claudefs_gateway.fstypes import FileType, SetAttrs, Usage
from claudefs_gateway.servers.data import ChunkStore, DataHandler
from claudefs_gateway.servers.meta import MetaHandler
from tests.backend import postgres
from tests.backend.remote.harness import Cluster
from tests.backend.remote.loopback import SyncEndpoint
from tests.backend.test_contract import ContractMixin
from tests.backend.test_statemachine import BackendMachine, result
from tests.helpers import run_machine

REG, DIR = FileType.REG, FileType.DIR


class PostgresContractTests(ContractMixin, TestCase):
    """The whole backend contract, with the namespace in PostgreSQL."""

    timeout = 60

    async def make_backend(self) -> Any:
        cluster = Cluster(self, meta_store=postgres.meta_store_config(postgres.new_schema(self)))
        await cluster.start()
        backend = cluster.backend()
        await backend.open()
        self.addCleanup(backend.close)
        return backend


def inline(fn: Any, *args: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(fn, *args)


class PostgresMachine(BackendMachine):
    """The remote state machine's set-up, with the meta server's store in PostgreSQL."""

    conninfo = ""
    schemas: list[str] = []

    def make_real(self) -> Any:
        import uuid

        clock = Clock()
        schema = "sm_" + uuid.uuid4().hex[:12]
        self.schemas.append(schema)
        store = PostgresStore(
            PgSettings(self.conninfo, schema, pool_min=1, pool_max=1),
            None,
            inline=True,
            now_ns=self.now,
        )
        factories: dict[str, ServerFactory] = {}
        meta = MetaHandler(store, lambda n, v, o=0: factories["meta"].publish(n, v, o))
        factories["meta"] = ServerFactory(meta, "meta", clock)
        chunks = ChunkStore(os.path.join(self.path, "data"), durable=False)
        factories["data"] = ServerFactory(DataHandler(chunks, inline), "data", clock)
        result(defer.Deferred.fromCoroutine(meta.open(["data:7002"])))
        endpoints = {
            "meta:7001": SyncEndpoint(factories["meta"]),
            "data:7002": SyncEndpoint(factories["data"]),
        }
        c = cfg.default_config()
        self._store = store
        return RemoteBackend(
            [NodeSpec("meta:7001")],
            None,
            c.connection_pool,
            c.circuit_breaker,
            endpoint_factory=lambda spec: endpoints[spec.address],
            clock=clock,
        )

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            result(self._store.close())


class PostgresStateMachineTests(SynchronousTestCase):
    def test_postgresql_matches_memory(self) -> None:
        """Random operation sequences give the same results and trees with the namespace in PostgreSQL."""
        import psycopg
        from psycopg import sql

        conninfo = postgres.dsn()
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        schemas: list[str] = []

        def drop() -> None:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                for s in schemas:
                    conn.execute(
                        sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(s))
                    )

        self.addCleanup(drop)

        class Machine(PostgresMachine):
            pass

        Machine.conninfo = conninfo
        Machine.schemas = schemas
        run_machine(
            lambda: Machine(base),
            hsettings(
                max_examples=max(100, hsettings.default.max_examples),
                stateful_step_count=30,
                deadline=None,
            ),
        )


class StoreTests(TestCase):
    """The store on its own, its operations on the thread pool as in a meta server."""

    timeout = 60

    async def open_store(self, schema: str | None = None, **kw: Any) -> PostgresStore:
        threads = ThreadPools(reactor, {"db": 9})
        threads.startService()
        self.addCleanup(threads.stopService)
        store = PostgresStore(postgres.settings(self, schema, **kw), reactor, threads)
        await store.open()
        self.addCleanup(store.close)
        return store

    async def open_named_store(self, schema: str | None = None) -> PostgresStore:
        """
        A store whose connections carry a name of their own, so that
        L{drop_idle_connections} drops only them, never those of tests running
        beside it on the shared scratch server.
        """
        name = "cfs-test-" + os.urandom(6).hex()
        threads = ThreadPools(reactor, {"db": 9})
        threads.startService()
        self.addCleanup(threads.stopService)
        settings = postgres.settings(self, schema)
        settings = attrs.evolve(settings, conninfo=f"{settings.conninfo} application_name={name}")
        store = PostgresStore(settings, reactor, threads)
        await store.open()
        self.addCleanup(store.close)
        return store

    def drop_idle_connections(self, store: PostgresStore) -> None:
        """As a database restart or a proxy does: the store's idle connections (not its LISTEN) go."""
        import psycopg

        name = store.settings.conninfo.rsplit("application_name=", 1)[1]
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            n = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = %s AND state = 'idle'"
                " AND query NOT LIKE 'LISTEN%%'",
                (name,),
            ).fetchone()
        self.assertGreater(n[0] if n else 0, 0, "no idle connection to drop")

    async def test_migrations_recorded_once(self) -> None:
        """Every migration runs once and is recorded; a second server finds nothing to do."""
        import psycopg

        schema = postgres.new_schema(self)
        a = await self.open_store(schema)
        b = await self.open_store(schema)
        self.assertEqual(a.instance_id, b.instance_id)
        self.assertEqual(b.engine.epoch, a.engine.epoch + 1)
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            got = conn.execute(f"SELECT version FROM {schema}.schema_migrations ORDER BY 1")
            self.assertEqual([r[0] for r in got], list(range(1, LATEST + 1)))
            self.assertEqual(apply_migrations(conn, schema), [])
            for table in ("lock_range", "lease", "share_reservation", "client_record"):
                conn.execute(f"SELECT count(*) FROM {schema}.{table}")

    async def test_newer_schema_refused(self) -> None:
        """A database migrated by a newer meta server is not opened (IO, with the versions)."""
        import psycopg

        schema = postgres.new_schema(self)
        await self.open_store(schema)
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            conn.execute(
                f"INSERT INTO {schema}.schema_migrations (version, description) VALUES (%s, 'x')",
                (LATEST + 1,),
            )
            self.assertRaises(SchemaTooNew, apply_migrations, conn, schema)
        store = PostgresStore(postgres.settings(self, schema), reactor)
        try:
            await store.open()
        except errors.IO as e:
            self.assertIn(str(LATEST + 1), str(e))
        else:
            self.fail("opened a newer schema")

    async def test_unreachable_is_backend_unavailable(self) -> None:
        """No database at the address: opening fails with BackendUnavailable (try later)."""
        import tempfile

        missing = tempfile.mkdtemp(prefix="cfs-nopg-")
        self.addCleanup(os.rmdir, missing)
        store = PostgresStore(
            PgSettings(f"host={missing} dbname=x user=x", "s", connect_timeout_ms=1000), reactor
        )
        try:
            await store.open()
        except errors.BackendUnavailable:
            pass
        else:
            self.fail("opened a database that is not there")
        self.assertEqual(store.check().status, "unhealthy")

    async def test_database_gone_after_open(self) -> None:
        """Connections the database dropped give try-later errors, then work again."""

        store = await self.open_named_store()
        root = (await store.root()).ino
        await store.create(root, b"a", REG, 0o644, 0, 0)
        self.drop_idle_connections(store)
        # Reads retry once on a fresh connection; changes answer try-later at most once each.
        self.assertEqual((await store.lookup(root, b"a")).type, REG)
        for name in (b"b", b"c", b"d"):
            for _ in range(10):
                try:
                    await store.create(root, name, REG, 0o644, 0, 0)
                    break
                except errors.BackendUnavailable:
                    continue
        self.assertEqual(len((await store.readdir(root, 0, bytes(8), 100)).entries), 4)

    async def test_statement_timeout_is_timeout(self) -> None:
        """A statement past statement_timeout is cancelled: Timeout, a try-later error."""
        store = await self.open_store(statement_timeout_ms=50)

        def slow(conn: Any) -> None:
            conn.execute("SELECT pg_sleep(2)")

        try:
            await store._run(store._with_conn, slow, (), False)
        except errors.Timeout:
            pass
        else:
            self.fail("no timeout")

    async def test_bad_values_are_inval(self) -> None:
        """Values past the columns' range are the caller's error (Inval/NotFound), never IO."""
        store = await self.open_store()
        await self.assertFailure(store.getattr(2**64 - 1), errors.NotFound)
        f = await store.create(1, b"f", REG, 0o644, 0, 0)
        await self.assertFailure(store.setattr(f.ino, SetAttrs(mode=1, uid=2**64)), errors.Inval)

    async def test_concurrent_creates_one_directory(self) -> None:
        """Many creates in one directory at once: all land, nlink, change and usage exact."""
        store = await self.open_store()
        d = await store.create(1, b"d", DIR, 0o755, 7, 7)
        n = 60
        got = await defer.gatherResults(
            [
                store.create(d.ino, b"f%03d" % i, REG if i % 3 else DIR, 0o644, 7, 7)
                for i in range(n)
            ],
            consumeErrors=True,
        )
        self.assertEqual(len({a.ino for a in got}), n)
        after = await store.getattr(d.ino)
        self.assertEqual(after.nlink, 2 + n // 3)
        self.assertEqual(after.change, d.change + n)
        self.assertEqual(await store.usage("user", 7), Usage(0, n + 1))
        page = await store.readdir(d.ino, 0, bytes(8), 1000)
        self.assertEqual(len(page.entries), n)
        cookies = [e.cookie for e in page.entries]
        self.assertEqual(len(set(cookies)), n)

    async def test_concurrent_writes_usage_exact(self) -> None:
        """Concurrent size changes to files of one owner: usage is the exact sum."""
        store = await self.open_store()
        files = [await store.create(1, b"f%d" % i, REG, 0o644, 9, 9) for i in range(8)]
        calls = []
        for k in range(5):
            for f in files:
                calls.append(store.wrote(f.ino, k * 100, 100, 0, k % 2 == 0))
        await defer.gatherResults(calls, consumeErrors=True)
        self.assertEqual(await store.usage("user", 9), Usage(8 * 500, 8))
        await store.fold_usage()
        for f in files[:4]:
            await store.setattr(f.ino, SetAttrs(size=10))
        self.assertEqual(await store.usage("user", 9), Usage(4 * 500 + 4 * 10, 8))
        self.assertEqual((await store.all_usage("group"))[9], Usage(2040, 8))

    async def test_rename_races_make_no_loop(self) -> None:
        """Two renames that would together make a loop (a into b, b into a): one is refused."""
        store = await self.open_store()
        for _ in range(5):
            a = await store.create(1, b"a", DIR, 0o755, 0, 0)
            b = await store.create(1, b"b", DIR, 0o755, 0, 0)
            outcomes = await defer.DeferredList(
                [
                    store.rename(1, b"a", b.ino, b"a"),
                    store.rename(1, b"b", a.ino, b"b"),
                ],
                consumeErrors=True,
            )
            ok = [s for s, _ in outcomes]
            self.assertEqual(sorted(ok), [False, True])
            failed = [r for s, r in outcomes if not s][0]
            self.assertTrue(failed.check(errors.Inval))
            # Clean up whichever nesting won.
            top = b"a" if ok[1] else b"b"
            inner = b"b" if ok[1] else b"a"
            top_ino = (await store.lookup(1, top)).ino
            await store.rmdir(top_ino, inner)
            await store.rmdir(1, top)

    async def test_change_notifications_survive_dropped_connections(self) -> None:
        """
        The database dropped the sender's idle pooled connections (a restart,
        a proxy's idle timeout): its next notifications go out on a fresh
        connection, none lost (a lost one leaves other servers' caches stale).
        """
        schema = postgres.new_schema(self)
        a = await self.open_named_store(schema)
        b = await self.open_store(schema)
        heard: list[Any] = []
        got: defer.Deferred[None] = defer.Deferred()

        def on_b(c: Any) -> None:
            heard.append(c)
            if len(heard) == 10 and not got.called:
                got.callback(None)

        b.on_remote_change(on_b)
        for _ in range(1200):
            if a._listening and b._listening:
                break
            await deferLater(0.05)
        await a.getattr(1)  # a pooled connection, idle again
        self.drop_idle_connections(a)
        for i in range(10):
            a.notify_change(5, 2000 + i, 1)
        await got
        self.assertEqual([c.ino for c in heard], list(range(2000, 2010)))

    async def test_remote_change_notifications(self) -> None:
        """A change told to one store is heard by another on the same schema, not by itself."""
        schema = postgres.new_schema(self)
        a = await self.open_store(schema)
        b = await self.open_store(schema)
        heard_a: list[Any] = []
        heard_b: list[Any] = []
        a.on_remote_change(heard_a.append)
        got: defer.Deferred[None] = defer.Deferred()

        def on_b(c: Any) -> None:
            heard_b.append(c)
            if len(heard_b) == 300 and not got.called:
                got.callback(None)

        b.on_remote_change(on_b)
        for _ in range(1200):  # a minute: the listener threads connect on a busy machine
            if b._listening and a._listening:
                break
            await deferLater(0.05)
        self.assertTrue(a._listening and b._listening, "the stores never listened")
        for i in range(300):
            a.notify_change(77, 1000 + i, 1)
        try:
            await got.addTimeout(60, reactor)
        except defer.TimeoutError:
            self.fail(f"B heard {len(heard_b)} of 300 changes")
        self.assertEqual([c.ino for c in heard_b], list(range(1000, 1300)))
        self.assertEqual({(c.session, c.dir) for c in heard_b}, {(77, 1)})
        self.assertEqual(heard_a, [])


def deferLater(seconds: float) -> defer.Deferred[None]:  # noqa: N802 - Twisted's name
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)
