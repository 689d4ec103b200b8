"""L{claudefs_gateway.vfs.service}: the store opened and closed with the tree."""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway import service
from claudefs_gateway.core import config as cfg
from claudefs_gateway.vfs import VFS


class VFSServiceTests(SynchronousTestCase):
    def build(self) -> service.GatewayService:
        data = os.path.abspath(self.mktemp())
        config = cfg.loads(f"backend: {{type: memory, data_dir: {data}}}\n")
        return service.build(config, MemoryReactorClock(), protocols=[])

    def test_ready_and_healthy(self) -> None:
        root = self.build()
        pending = root.core.vfs_ready()
        self.assertNoResult(pending)
        root.privilegedStartService()
        root.startService()
        vfs = self.successResultOf(pending)
        self.assertIsInstance(vfs, VFS)
        self.assertIs(self.successResultOf(root.core.vfs_ready()), vfs)
        doc = self.successResultOf(defer.Deferred.fromCoroutine(root.core.health.run()))
        self.assertEqual({c["name"]: c["status"] for c in doc["checks"]}["backend"], "healthy")
        self.assertEqual(root.core.caches.names(), ["attr"])
        self.assertTrue(os.path.exists(os.path.join(root.core.config.data_dir, "handle_secret")))
        self.successResultOf(root.stopService())
        self.assertFalse(vfs.is_open)

    def test_open_failure_is_fatal(self) -> None:
        root = self.build()
        backend = root.core.vfs_service.backend

        def broken() -> defer.Deferred[None]:
            return defer.fail(OSError("disk gone"))

        backend.open = broken
        waiting = root.core.vfs_ready()
        root.privilegedStartService()
        root.startService()
        self.failureResultOf(waiting, RuntimeError)
        self.failureResultOf(root.core.vfs_ready(), RuntimeError)
        self.assertIn("disk gone", root.core.extras["fatal"])
        doc = self.successResultOf(defer.Deferred.fromCoroutine(root.core.health.run()))
        self.assertEqual(doc["overall"], "unhealthy")
        self.flushLoggedErrors(OSError)
