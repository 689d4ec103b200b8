"""Tests for L{claudefs_gateway.service}: the tree built from configuration."""

from __future__ import annotations

import os

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway import service
from claudefs_gateway.core import config as cfg
from claudefs_gateway.errors import NotBuilt
from tests.helpers import unbuild


class BuildTests(SynchronousTestCase):
    def config(self, extra: str = "") -> cfg.Config:
        data = os.path.abspath(self.mktemp())
        # The memory backend: a MemoryReactor runs no threads, so the embedded store never opens here.
        return cfg.loads(f"backend: {{type: memory, data_dir: {data}}}\n{extra}")

    def test_default_ports_on_memory_reactor(self) -> None:
        """Started on a MemoryReactor, the admin API listens on 127.0.0.1:8080 by default."""
        reactor = MemoryReactorClock()
        root = service.build(self.config(), reactor)
        root.privilegedStartService()
        root.startService()
        servers = [(port, interface) for port, _, _, interface in reactor.tcpServers]
        self.assertIn((8080, "127.0.0.1"), servers)
        self.assertEqual(
            [s.name for s in root][:4], ["core:threads", "core:datadir", "core:vfs", "admin:web"]
        )
        self.successResultOf(root.stopService())
        self.assertFalse(root.running)

    def test_every_front_end_built(self) -> None:
        """This version builds NFS, S3 and SMB: starting all skips none."""
        self.assertEqual([p for p in cfg.PROTOCOLS if not service.is_built(p)], [])
        root = service.build(self.config(), MemoryReactorClock())
        self.assertEqual(root.skipped, [])

    def test_unbuilt_protocols_skipped_when_starting_all(self) -> None:
        """Starting every protocol skips those not built, and says so."""
        unbuild(self, "s3")
        root = service.build(self.config(), MemoryReactorClock())
        self.assertEqual(root.skipped, ["s3"])
        self.assertNotIn("proto:s3", [s.name for s in root])

    def test_unbuilt_protocol_strict(self) -> None:
        """Asking for one protocol that is not built fails with a plain message."""
        for p in cfg.PROTOCOLS:
            message = unbuild(self, p)
            with self.assertRaises(NotBuilt) as ctx:
                service.build(self.config(), MemoryReactorClock(), [p], strict=True)
            self.assertEqual(str(ctx.exception), message)
            self.assertEqual(service.not_built_message(p), message)

    def test_disabled_protocols_not_started(self) -> None:
        root = service.build(
            self.config("nfs: {enabled: false}\ns3: {enabled: false}\nsmb: {enabled: false}\n"),
            MemoryReactorClock(),
        )
        self.assertEqual(root.skipped, [])

    def test_health_checks_registered(self) -> None:
        root = service.build(self.config(), MemoryReactorClock(), protocols=[])
        self.assertEqual(sorted(root.core.health.names()), ["admin", "backend", "drain"])

    def test_secrets_registered_for_scrubbing(self) -> None:
        from claudefs_gateway.core import log

        self.addCleanup(log.set_secrets, [])
        service.build(
            self.config("admin: {token: abcdefghijklmnopqrstuvwxyz}\n"), MemoryReactorClock(), []
        )
        self.assertEqual(log.scrub({"x": "tok abcdefghijklmnopqrstuvwxyz"})["x"], "tok ***")


class ExitWhenDrainedTests(SynchronousTestCase):
    def start(self, exit_when_drained: bool) -> tuple[MemoryReactorClock, service.GatewayService]:
        data = os.path.abspath(self.mktemp())
        reactor = MemoryReactorClock()
        reactor.running = True
        root = service.build(
            cfg.loads(f"backend: {{type: memory, data_dir: {data}}}\n"), reactor, protocols=[]
        )
        root.exit_when_drained = exit_when_drained
        root.privilegedStartService()
        root.startService()
        self.addCleanup(lambda: root.stopService() if root.running else None)
        return reactor, root

    def test_admin_drain_stops_the_reactor(self) -> None:
        """A drain not started by stopping the tree stops the reactor once it has finished."""
        reactor, root = self.start(exit_when_drained=True)
        self.successResultOf(root.core.drainer.drain(1))
        self.assertFalse(reactor.hasStopped)
        reactor.advance(0)
        self.assertTrue(reactor.hasStopped)

    def test_not_when_stopping(self) -> None:
        """The drain of a stopping tree (SIGTERM) does not stop the reactor a second time."""
        reactor, root = self.start(exit_when_drained=True)
        self.successResultOf(root.stopService())
        reactor.advance(0)
        self.assertFalse(reactor.hasStopped)

    def test_not_unless_asked(self) -> None:
        """Trees built for a shared reactor (tests) keep running after a drain."""
        reactor, root = self.start(exit_when_drained=False)
        self.successResultOf(root.core.drainer.drain(1))
        reactor.advance(0)
        self.assertFalse(reactor.hasStopped)
