"""
Several meta servers active at once over one PostgreSQL database:

 - any of them serves any request, and a change made through one reaches the
   gateways subscribed to another (LISTEN/NOTIFY), in process;
 - with real server processes, a meta server killed with SIGKILL under a
   mixed load of creates and stable writes loses nothing acknowledged, and
   its gateway goes on through the other server (pool, breaker, failover)
   within C{open_duration_ms}.
"""

from __future__ import annotations

import os
import struct
import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from claudefs_gateway import errors
from claudefs_gateway.backend.remote.client import NodeSpec, RemoteBackend
from claudefs_gateway.core import config as cfg
from claudefs_gateway.fstypes import FileType, SetAttrs
from tests.backend import postgres
from tests.backend.remote.harness import Cluster
from tests.backend.remote.test_faults import RETRYABLE, ServerProcess

REG = FileType.REG


def pause(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


async def until(check: Any, what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pause(0.02)


class TwoMetaServersTests(TestCase):
    timeout = 60

    async def start(self) -> tuple[Cluster, Any, Any]:
        schema = postgres.new_schema(self)
        cluster = Cluster(self, meta_store=postgres.meta_store_config(schema))
        await cluster.start()
        first = cluster.meta
        second = await cluster.start_meta(name="meta2")
        return cluster, first, second

    async def test_any_server_serves_any_request(self) -> None:
        """Files made through one meta server are read, listed and changed through the other."""
        cluster, m1, m2 = await self.start()
        a = cluster.backend(metas=[m1])
        b = cluster.backend(metas=[m2])
        for x in (a, b):
            await x.open()
            self.addCleanup(x.close)
        self.assertEqual(a.instance_id, b.instance_id)
        root = (await a.root()).ino
        d = await a.create(root, b"d", FileType.DIR, 0o755, 0, 0)
        f = await b.create(d.ino, b"f", REG, 0o644, 5, 5)
        await a.write(f.ino, 0, b"hello", True)
        self.assertEqual(await b.read(f.ino, 0, 10), (b"hello", True))
        await b.rename(d.ino, b"f", root, b"g")
        self.assertEqual((await a.lookup(root, b"g")).ino, f.ino)
        page = await a.readdir(d.ino, 0, bytes(8), 10)
        self.assertEqual(page.entries, ())
        self.assertEqual((await b.usage("user", 5)).bytes, 5)

    async def test_changes_reach_other_servers_gateways(self) -> None:
        """A gateway on one meta server hears (EV_CHANGE) of changes made through the other."""
        cluster, m1, m2 = await self.start()
        a = cluster.backend(metas=[m1])
        b = cluster.backend(metas=[m2])
        for x in (a, b):
            await x.open()
            self.addCleanup(x.close)
        heard_a: list[Any] = []
        heard_b: list[Any] = []
        a.on_change(heard_a.append)
        b.on_change(heard_b.append)
        await until(lambda: a._events is not None and b._events is not None, "subscriptions")
        await until(lambda: m1.factory.subscribers and m2.factory.subscribers, "subscribed on both")
        store2 = m2.getServiceNamed("server:store").handler.backend
        await until(lambda: store2._listening, "LISTEN")
        root = (await a.root()).ino
        f = await a.create(root, b"f", REG, 0o644, 0, 0)
        await a.setattr(f.ino, SetAttrs(mode=0o600))
        await until(lambda: len(heard_b) >= 2, "the other server's gateway to hear")
        self.assertEqual([(e.ino, e.dir) for e in heard_b[:2]], [(f.ino, root), (f.ino, 0)])
        self.assertEqual(heard_a, [])  # its own changes it knows
        # The other way round too.
        await b.unlink(root, b"f")
        await until(lambda: len(heard_a) >= 1, "the first server's gateway to hear")
        self.assertEqual((heard_a[0].ino, heard_a[0].dir), (f.ino, root))

    async def test_lost_listen_resets_subscribers(self) -> None:
        """When a meta server's LISTEN connection drops, its gateways drop their caches."""
        import psycopg

        cluster, m1, _ = await self.start()
        a = cluster.backend(metas=[m1])
        await a.open()
        self.addCleanup(a.close)
        resets: list[int] = []
        a.on_reset(lambda: resets.append(1))
        store = m1.getServiceNamed("server:store").handler.backend
        await until(lambda: store._listening and a._events is not None, "LISTEN and events")
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE %s",
                (f'LISTEN "{store.settings.channel}"',),
            )
        await until(lambda: resets, "the gateway's cache reset")
        await until(lambda: store._listening, "LISTEN again")

    async def test_database_restart_changes_boot_id(self) -> None:
        """
        A PostgreSQL that started again (found when the LISTEN connection is made
        again) may have lost commits made with synchronous_commit off: the meta
        server's boot id changes, so its gateways count a restart and the NFS
        write verifier changes (RFC 1813 section 3.3.7). The restart is simulated:
        the scratch server is shared by every test.
        """
        import psycopg

        from claudefs_gateway.backend.postgresql import store as store_module

        cluster, m1, _ = await self.start()
        a = cluster.backend(metas=[m1])
        await a.open()
        self.addCleanup(a.close)
        store = m1.getServiceNamed("server:store").handler.backend
        await until(lambda: store._listening and a._events is not None, "LISTEN and events")
        self.assertNotEqual(store.db_boot, b"")
        before = m1.factory.boot
        self.assertEqual(a.restarts, 0)
        real = store_module._postmaster_start
        self.patch(store_module, "_postmaster_start", lambda conn: real(conn) + b" again")
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE %s",
                (f'LISTEN "{store.settings.channel}"',),
            )
        await until(lambda: a.restarts == 1, "the gateway to see a new boot id")
        self.assertNotEqual(m1.factory.boot, before)


SETTINGS = """
connection_pool: {min_per_node: 1, max_per_node: 8, connect_timeout_ms: 500}
circuit_breaker: {failure_threshold: 3, success_threshold: 1, open_duration_ms: 500, timeout_ms: 2000}
"""


class KillOneOfTwoTests(TestCase):
    """Real processes: two meta servers on PostgreSQL, one data server, one is killed."""

    timeout = 120

    async def test_kill_meta_under_mixed_load(self) -> None:
        """SIGKILL of one of two meta servers under creates and writes: nothing acknowledged lost, service within open_duration_ms."""
        schema = postgres.new_schema(self)
        conf = os.path.abspath(self.mktemp())
        with open(conf, "w") as f:
            f.write(postgres.meta_store_yaml(schema))
        data = ServerProcess(self, "data")
        await data.start()
        extra = ["--data-server", data.address, "--config", conf]
        metas = [ServerProcess(self, "meta", extra), ServerProcess(self, "meta", extra)]
        for m in metas:
            await m.start()
        c = cfg.loads(SETTINGS)
        backend = RemoteBackend(
            [NodeSpec(m.address) for m in metas], reactor, c.connection_pool, c.circuit_breaker
        )
        await backend.open()
        self.addCleanup(backend.close)
        root = (await backend.root()).ino
        created: dict[bytes, int] = {}
        written: dict[tuple[int, int], bytes] = {}
        bad: list[BaseException] = []
        running = [True]
        last_ok = [time.monotonic()]
        gaps: list[float] = []

        def ok() -> None:
            now = time.monotonic()
            gaps.append(now - last_ok[0])
            last_ok[0] = now

        async def worker(w: int) -> None:
            d = await backend.create(root, b"w%d" % w, FileType.DIR, 0o755, 0, 0)
            seq = 0
            while running[0]:
                name = b"f%05d" % seq
                retried = False
                while running[0]:
                    try:
                        a = await backend.create(d.ino, name, REG, 0o644, w, w)
                    except RETRYABLE:
                        retried = True
                        await pause(0.01)
                        continue
                    except errors.Exists:
                        if not retried:
                            bad.append(AssertionError(f"{name!r} exists before it was made"))
                            return
                        # The lost attempt landed: as an NFS client after a lost reply.
                        a = await backend.lookup(d.ino, name)
                    except Exception as e:
                        bad.append(e)
                        return
                    created[b"w%d/" % w + name] = a.ino
                    ok()
                    break
                payload = struct.pack("<QQ", w, seq) * 256
                while running[0]:
                    try:
                        await backend.write(a.ino, 0, payload, True)
                    except RETRYABLE:
                        await pause(0.01)
                        continue
                    except Exception as e:
                        bad.append(e)
                        return
                    written[(a.ino, 0)] = payload
                    ok()
                    break
                seq += 1

        loops = [defer.Deferred.fromCoroutine(worker(w)) for w in range(4)]
        await pause(1.0)
        before = len(created)
        self.assertGreater(before, 4, "load running before the kill")
        await metas[0].kill()
        await until(lambda: len(created) > before + 20, "load going on through the other", 20)
        await pause(0.5)
        running[0] = False
        await defer.gatherResults(loops)
        self.assertEqual(bad, [])
        # Every gap between two acknowledged operations stays within open_duration_ms
        # (500 ms) plus the deadline of the calls caught by the kill (timeout_ms).
        self.assertLess(max(gaps), 0.5 + 2.0 + 0.5, "clients resumed late")
        # Nothing acknowledged is lost: every file, every byte, through the survivor.
        for path, ino in created.items():
            wname, name = path.split(b"/")
            d = await backend.lookup(root, wname)
            self.assertEqual((await backend.lookup(d.ino, name)).ino, ino, path)
        for (ino, offset), payload in written.items():
            got, _ = await backend.read(ino, offset, len(payload))
            self.assertEqual(got, payload, f"acknowledged write lost: inode {ino}")
        # And the killed server comes back into the same namespace.
        await metas[0].start()
        again = RemoteBackend(
            [NodeSpec(metas[0].address)], reactor, c.connection_pool, c.circuit_breaker
        )
        await again.open()
        self.addCleanup(again.close)
        self.assertEqual(len((await again.readdir(root, 0, bytes(8), 100)).entries), 4)
