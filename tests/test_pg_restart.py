"""
A real PostgreSQL restart under load (docs/postgresql.rst "Replicated
PostgreSQL"): a private scratch cluster (not the suite's shared one), a meta
server and a gateway on it, boto3 PUTs and libnfs writes with COMMIT running;
the database is restarted with C{pg_ctl restart -m immediate} (a crash: no
checkpoint, recovery from the WAL). The clients see try-later answers while
it is down and go on after; everything acknowledged is read back.

The cluster commits synchronously (C{synchronous_commit=on}), as a
deployment that promises durability must: an acknowledged metadata change
is in the WAL before its reply. (C{fsync=off} is kept, as in the suite's
server: an immediate restart crashes PostgreSQL, not the machine, so what
was written to the WAL is in the page cache.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from tests import test_multigateway as mg
from tests.backend.remote.test_faults import ServerProcess
from tests.test_crossproto import run

_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts", "_postgres.sh")

_START = """
set -e
. "$1"
dir=$2
bin=$(pg_bin)
mkdir -p "$dir" && chmod 755 "$dir"
if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
_pg_as_owner "$bin/initdb" -D "$dir/data" -U claudefs --auth=trust -E UTF8 --locale=C.UTF-8 \
    --no-sync >"$dir/initdb.log" 2>&1
_pg_as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o \
    "-c listen_addresses= -c unix_socket_directories=$dir -c fsync=off -c synchronous_commit=on -c max_connections=60 -c shared_buffers=32MB" \
    >/dev/null
"""
_RESTART = """
set -e
. "$1"
bin=$(pg_bin)
_pg_as_owner "$bin/pg_ctl" -D "$2/data" -m immediate -w -t 60 restart >/dev/null
"""


def _sh(script: str, *args: str) -> None:
    subprocess.run(["bash", "-c", script, "sh", _SCRIPT, *args], check=True, timeout=120)


def _stop_pg(pgdir: str) -> None:
    script = '. "$1"; pg_scratch_stop "$2"'
    subprocess.run(["bash", "-c", script, "sh", _SCRIPT, pgdir], timeout=120)


class PostgresRestartTests(TestCase):
    timeout = 240

    gateway = mg.TwoGatewaysTests.gateway
    actor = mg.TwoGatewaysTests.actor
    s3 = mg.TwoGatewaysTests.s3

    async def setUp(self) -> None:  # type: ignore[override]
        if not shutil.which("bash") or not os.path.exists(_SCRIPT):
            raise SkipTest("scripts/_postgres.sh not found")
        from tests.backend import postgres

        postgres.dsn()  # fails under CI, skips elsewhere, if the suite has no PostgreSQL
        self.pgdir = tempfile.mkdtemp(prefix="cfs-pg-restart-")
        self.addCleanup(self.stop_pg)
        await threads.deferToThread(_sh, _START, self.pgdir)
        self.dsn = dsn = f"host={self.pgdir} port=5432 dbname=postgres user=claudefs"
        conf = os.path.abspath(self.mktemp())
        with open(conf, "w") as f:
            f.write(
                "meta_store:\n  type: postgresql\n  postgresql:\n"
                f"    dsn: {dsn!r}\n    schema: restart\n"
            )
        data = ServerProcess(self, "data")
        await data.start()
        meta = ServerProcess(self, "meta", ["--data-server", data.address, "--config", conf])
        await meta.start()
        self.gw = await self.gateway(
            mg.CONFIG + f'metadata_servers: [{{address: "{meta.address}"}}]\n'
        )

    def postmaster_started(self) -> Any:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute("SELECT pg_postmaster_start_time()").fetchone()

    def stop_pg(self) -> None:
        _stop_pg(self.pgdir)

    async def nfs(self, *ops: str) -> list[dict[str, Any]]:
        _, out, _ = await run([sys.executable, "-m", "tests.nfs.libnfs_ops", self.gw.url(), *ops])
        return [json.loads(line) for line in out if line.startswith("{")]

    async def test_immediate_restart_under_load_loses_nothing_acknowledged(self) -> None:
        s3 = await self.s3(self.gw)
        acked: dict[str, dict[str, str]] = {"s3": {}, "nfs": {}}
        failed = {"s3": 0, "nfs": 0}
        running = [True]

        async def s3_loop() -> None:
            n = 0
            while running[0]:
                key, data = f"s3-{n:05d}", f"s3 object {n} " * 8
                got = await s3.do("put", bucket="export", key=key, data=data)
                n += 1
                if got["ok"] and "result" in got:
                    acked["s3"][key] = data
                else:
                    failed["s3"] += 1
                    await deferLater(reactor, 0.05, lambda: None)

        async def nfs_loop() -> None:
            n = 0
            while running[0]:
                batch = [(f"/nfs-{n + i:05d}", f"nfs file {n + i} " * 8) for i in range(4)]
                n += 4
                args = [x for path, data in batch for x in ("writecommit", path, data)]
                results = await self.nfs(*args)
                for (path, data), r in zip(batch, results, strict=False):
                    if r.get("ret") != 0:
                        failed["nfs"] += 1
                        break
                    acked["nfs"][path] = data

        loops = [defer.ensureDeferred(f()) for f in (s3_loop, nfs_loop)]

        async def until_more(n: int, what: str) -> dict[str, int]:
            base = {k: len(v) for k, v in acked.items()}
            deadline = time.monotonic() + 90
            while any(len(acked[k]) < base[k] + n for k in acked):
                if time.monotonic() > deadline:
                    running[0] = False
                    self.fail(f"{what}: {base} -> { {k: len(v) for k, v in acked.items()} }")
                await deferLater(reactor, 0.05, lambda: None)
            return base

        await until_more(3, "load not running")
        started = await threads.deferToThread(self.postmaster_started)
        await threads.deferToThread(_sh, _RESTART, self.pgdir)
        self.assertNotEqual(await threads.deferToThread(self.postmaster_started), started)
        await until_more(5, "load stalled after the restart")
        running[0] = False
        await defer.gatherResults(loops)
        # Nothing acknowledged lost: every object and file read back by its own client.
        for key, data in acked["s3"].items():
            got = await s3.ok("get", bucket="export", key=key)
            self.assertEqual(got.get("result"), data, key)
        paths = list(acked["nfs"])
        for i in range(0, len(paths), 50):
            chunk = paths[i : i + 50]
            results = await self.nfs(*[x for p in chunk for x in ("readall", p)])
            self.assertEqual([r.get("result") for r in results], [acked["nfs"][p] for p in chunk])


class UnstableAcrossRestartTests(TestCase):
    """
    The store on a private cluster, restarted with C{pg_ctl restart -m
    immediate} between an unstable write's metadata (committed with
    synchronous_commit off) and the file's COMMIT_META: the COMMIT says the
    write may be lost (L{errors.UnstableLost}: try later, and the verifier
    changes) instead of answering that it is safe; a synchronous commit
    between the two covers it, and nothing is reported.
    """

    timeout = 180

    async def setUp(self) -> None:  # type: ignore[override]
        if not shutil.which("bash") or not os.path.exists(_SCRIPT):
            raise SkipTest("scripts/_postgres.sh not found")
        from tests.backend import postgres

        postgres.dsn()  # fails under CI, skips elsewhere, if the suite has no PostgreSQL
        self.pgdir = tempfile.mkdtemp(prefix="cfs-pg-unstable-")
        self.addCleanup(_stop_pg, self.pgdir)
        await threads.deferToThread(_sh, _START, self.pgdir)

    async def store(self) -> Any:
        from claudefs_gateway.backend.postgresql import PgSettings, PostgresStore
        from claudefs_gateway.core.threads import ThreadPools

        pools = ThreadPools(reactor, {"db": 4})
        pools.startService()
        self.addCleanup(pools.stopService)
        dsn = f"host={self.pgdir} port=5432 dbname=postgres user=claudefs"
        store = PostgresStore(PgSettings(dsn, "unstable"), reactor, pools)
        await store.open()
        self.addCleanup(store.close)
        return store

    async def test_commit_after_a_restart_reports_the_lost_unstable_write(self) -> None:
        from claudefs_gateway import errors
        from claudefs_gateway.fstypes import FileType

        store = await self.store()
        root = (await store.root()).ino
        lost = await store.create(root, b"lost", FileType.REG, 0o644, 0, 0)
        covered = await store.create(root, b"covered", FileType.REG, 0o644, 0, 0)
        await store.wrote(covered.ino, 0, 4096, 0, False)
        await store.create(root, b"sync", FileType.REG, 0o644, 0, 0)  # a synchronous commit
        await store.wrote(lost.ino, 0, 4096, 0, False)
        boot = store.db_boot
        await threads.deferToThread(_sh, _RESTART, self.pgdir)
        with self.assertRaises(errors.UnstableLost):
            await store.commit(lost.ino)
        self.assertNotEqual(store.db_boot, boot)
        self.assertEqual(store.unstable_lost, 1)
        # Reported once: the retried COMMIT answers (the client resent, or was told).
        await store.commit(lost.ino)
        # The write a synchronous commit covered before the restart is safe.
        self.assertEqual((await store.commit(covered.ino)).size, 4096)
