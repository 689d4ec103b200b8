"""
Mirrors on the remote backend: every copy written, reads from a good copy,
a data server that is down makes its copies stale (kept in the meta store),
and they are re-silvered once it is back - unless a writer comes by, which
the vfs's lease makes the copy give up and try again.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from claudefs_gateway.backend.remote.client import NodeSpec, RemoteBackend
from claudefs_gateway.core import config as cfg
from claudefs_gateway.core.config import Listen
from claudefs_gateway.fstypes import FileType
from claudefs_gateway.servers.data import ChunkStore
from claudefs_gateway.servers.service import ServerService, ServerSettings, build_data, build_meta
from tests.backend.remote.harness import LOOPBACK, _path

CONFIG = """
connection_pool: {min_per_node: 1, max_per_node: 4, connect_timeout_ms: 1000}
circuit_breaker: {failure_threshold: 1000, open_duration_ms: 100, timeout_ms: 2000}
"""


class Mirrors:
    def __init__(self, test: TestCase) -> None:
        self.test = test
        self.base = test.mktemp()
        self.data: list[ServerService] = []
        self.ports: list[int] = []

    def start_data(self, i: int, port: int = 0) -> ServerService:
        ds = build_data(
            ServerSettings(
                _path(self.base, f"data{i}"), Listen.tcp("127.0.0.1", port), LOOPBACK, durable=False
            ),
            reactor,
            CollectorRegistry(),
        )
        ds.startService()
        self.test.addCleanup(lambda: ds.stopService() if ds.running else None)
        return ds

    async def start(self) -> RemoteBackend:
        for i in range(2):
            ds = self.start_data(i)
            assert ds.rpc is not None
            self.data.append(ds)
            self.ports.append(ds.rpc.bound_port or 0)
        servers = tuple(f"127.0.0.1:{p}" for p in self.ports)
        meta = build_meta(
            ServerSettings(
                _path(self.base, "meta"), LOOPBACK, LOOPBACK, servers, durable=False, mirrors=2
            ),
            reactor,
            CollectorRegistry(),
        )
        meta.startService()
        self.test.addCleanup(meta.stopService)
        await meta.ready()
        assert meta.rpc is not None
        c = cfg.loads(CONFIG)
        self.backend = RemoteBackend(
            [NodeSpec(f"127.0.0.1:{meta.rpc.bound_port}")],
            reactor,
            c.connection_pool,
            c.circuit_breaker,
        )
        await self.backend.open()
        self.test.addCleanup(self.backend.close)
        self.meta = meta
        return self.backend

    def chunks(self, i: int, ino: int, offset: int, length: int) -> bytes:
        """What data server C{i} holds of C{ino}, read from its directory."""
        return ChunkStore(_path(self.base, f"data{i}"), durable=False).read(ino, offset, length)[1]


class MirrorTests(TestCase):
    timeout = 60

    async def _file(self, b: RemoteBackend) -> int:
        root = await b.root()
        a = await b.create(root.ino, b"m.bin", FileType.REG, 0o644, 0, 0)
        return a.ino

    async def test_every_copy_written(self) -> None:
        m = Mirrors(self)
        b = await m.start()
        self.assertEqual(b.layout.mirrors, 2)  # type: ignore[union-attr]
        ino = await self._file(b)
        data = os.urandom(9 * 1024 * 1024)
        await b.write(ino, 0, data, True)
        self.assertEqual(m.chunks(0, ino, 0, len(data)), data)
        self.assertEqual(m.chunks(1, ino, 0, len(data)), data)
        self.assertEqual((await b.read(ino, 0, len(data)))[0], data)

    async def test_down_copy_goes_stale_and_is_resilvered(self) -> None:
        """
        A write while one data server is down succeeds on the other copy and
        marks the missing one stale (durably, in the meta store); reads use
        the good copy; once the server is back, re-silvering makes it whole.
        """
        m = Mirrors(self)
        b = await m.start()
        ino = await self._file(b)
        first = os.urandom(5 * 1024 * 1024)
        await b.write(ino, 0, first, True)
        await m.data[1].stopService()
        second = os.urandom(3 * 1024 * 1024)
        await b.write(ino, 4 * 1024 * 1024, second, True)
        down = f"127.0.0.1:{m.ports[1]}"
        self.assertEqual(b.stale, {down: {ino}})
        self.assertEqual(b.check_mirrors().status, "degraded")
        stored = await b.get_state(f"cfs.stale.{down}")
        self.assertEqual(stored, str(ino).encode())
        want = first[: 4 * 1024 * 1024] + second
        self.assertEqual((await b.read(ino, 0, len(want)))[0], want)
        # Nothing to do while it is down.
        self.assertEqual(await b.resilver(), 0)
        m.data[1] = m.start_data(1, m.ports[1])
        self.assertEqual(await b.resilver(), 1)
        self.assertEqual(b.stale_copies(), 0)
        self.assertEqual(await b.get_state(f"cfs.stale.{down}"), None)
        self.assertEqual(m.chunks(1, ino, 0, len(want) + 100), want)
        self.assertEqual(b.check_mirrors().status, "healthy")

    async def test_interrupted_resilver_tries_again(self) -> None:
        """A writer during the copy (the lease broke) leaves the copy stale for the next pass."""
        m = Mirrors(self)
        b = await m.start()
        ino = await self._file(b)
        await m.data[1].stopService()
        await b.write(ino, 0, b"x" * 100, True)
        m.data[1] = m.start_data(1, m.ports[1])

        class Held:
            interrupted = True

        class Guard:
            async def __aenter__(self) -> Any:
                return Held()

            async def __aexit__(self, *exc: Any) -> None:
                return None

        b.resilver_guard = lambda ino: Guard()
        self.assertEqual(await b.resilver(), 0)
        self.assertEqual(b.stale_copies(), 1)
        b.resilver_guard = None
        self.assertEqual(await b.resilver(), 1)

    async def test_stale_set_survives_reopen(self) -> None:
        """Another backend (a restarted gateway) knows which copies are stale."""
        m = Mirrors(self)
        b = await m.start()
        ino = await self._file(b)
        await m.data[1].stopService()
        await b.write(ino, 0, b"y" * 10, True)
        assert m.meta.rpc is not None
        c = cfg.loads(CONFIG)
        again = RemoteBackend(
            [NodeSpec(f"127.0.0.1:{m.meta.rpc.bound_port}")],
            reactor,
            c.connection_pool,
            c.circuit_breaker,
        )
        await again.open()
        self.addCleanup(again.close)
        self.assertEqual(again.stale, {f"127.0.0.1:{m.ports[1]}": {ino}})
