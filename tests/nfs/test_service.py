"""
The NFS front end in the service tree (L{claudefs_gateway.nfs.service}):
listeners and their health checks, portmapper registration, UDP, the drain,
NLM recovery at start.
"""

from __future__ import annotations

import json
import os
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import defer, reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from claudefs_gateway import service
from claudefs_gateway.core import config as cfg
from claudefs_gateway.nfs.service import NFSService, io_size
from claudefs_gateway.rpc.client import DatagramClient, connect_tcp
from claudefs_gateway.rpc.portmap import PMAP_PROG, decode_dump_v2, decode_dump_v34

LOOPBACK = """
backend: {{type: memory, data_dir: {data}}}
exports: [{{path: /export, root_squash: false}}]
nfs:
  bind: "127.0.0.1:0"
  mount_bind: "127.0.0.1:0"
  portmap_bind: "127.0.0.1:0"
  {extra}
admin: {{bind: "127.0.0.1:0"}}
"""


def nfs_of(root: Any) -> NFSService:
    for svc in root:
        if isinstance(svc, NFSService):
            return svc
    raise AssertionError("no proto:nfs")


class BuildTests(SynchronousTestCase):
    def config(self, extra: str = "") -> cfg.Config:
        data = os.path.abspath(self.mktemp())
        return cfg.loads(f"backend: {{type: memory, data_dir: {data}}}\n{extra}")

    def test_io_size(self) -> None:
        self.assertEqual(io_size(2 * 1024 * 1024), 1 << 20)
        self.assertEqual(io_size(64 * 1024), 32 * 1024)
        self.assertEqual(io_size(64 * 1024 * 1024), 32 * 1024 * 1024)

    def test_default_ports(self) -> None:
        """NFS on 2049, MOUNT on 20048, the portmapper on 111; one health check each."""
        r = MemoryReactorClock()
        root = service.build(self.config(), r, ["nfs"], strict=True)
        root.privilegedStartService()
        root.startService()
        ports = sorted(port for port, _, _, _ in r.tcpServers)
        self.assertEqual([p for p in ports if p in (111, 2049, 20048)], [111, 2049, 20048])
        labels = set(root.listeners())
        self.assertTrue({"nfs", "mount", "portmap"} <= labels)
        names = [s.name for s in nfs_of(root)]
        self.assertEqual(names[0], "proto:nfs:listen")
        self.assertIn("proto:nfs:register", names)
        self.assertIn("proto:nfs:nlm", names)
        self.successResultOf(root.stopService())

    def test_portmapper_off(self) -> None:
        r = MemoryReactorClock()
        root = service.build(self.config("nfs: {portmapper: 'off'}\n"), r, ["nfs"], strict=True)
        root.privilegedStartService()
        root.startService()
        self.assertNotIn(111, [port for port, _, _, _ in r.tcpServers])
        self.assertNotIn("portmap", root.listeners())
        self.successResultOf(root.stopService())


class LoopbackTests(TestCase):
    timeout = 30

    async def start(self, extra: str = "", registry: Any = None) -> tuple[Any, NFSService]:
        data = os.path.abspath(self.mktemp())
        os.makedirs(data)
        self.data = data
        config = cfg.loads(LOOPBACK.format(data=data, extra=extra))
        root = service.build(
            config, reactor, ["nfs"], strict=True, registry=registry or CollectorRegistry()
        )
        root.privilegedStartService()
        root.startService()
        self.addCleanup(root.stopService)
        return root, nfs_of(root)

    async def test_registration_and_udp(self) -> None:
        """The embedded portmapper names the bound TCP and UDP ports of every program."""
        root, nfs = await self.start()
        ports = {label: svc.bound_port for label, svc in root.listeners().items()}
        udp = nfs.udp
        self.assertEqual(udp["nfs"].bound_port, ports["nfs"])
        self.assertEqual(udp["mount"].bound_port, ports["mount"])
        conn = await connect_tcp(reactor, "127.0.0.1", ports["portmap"])
        self.addCleanup(conn.close)
        got = decode_dump_v2(await conn.call(PMAP_PROG, 2, 4))
        self.assertIn((100003, 3, 6, ports["nfs"]), got)
        self.assertIn((100003, 3, 17, ports["nfs"]), got)
        self.assertIn((100005, 3, 6, ports["mount"]), got)
        self.assertIn((100021, 4, 17, ports["nfs"]), got)
        self.assertIn((100024, 1, 6, ports["nfs"]), got)
        self.assertIn((100000, 2, 17, ports["portmap"]), got)
        v4 = decode_dump_v34(await conn.call(PMAP_PROG, 4, 4))
        self.assertIn(
            (
                100003,
                3,
                "tcp",
                f"127.0.0.1.{ports['nfs'] >> 8}.{ports['nfs'] & 255}",
                "claudefs-gateway",
            ),
            v4,
        )
        # UDP: the same portmapper over a datagram.
        client = DatagramClient(reactor, 0.5, 4)
        port = reactor.listenUDP(0, client, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        got = decode_dump_v2(
            await client.call(("127.0.0.1", udp["portmap"].bound_port), PMAP_PROG, 2, 4)
        )
        self.assertIn((100005, 1, 17, ports["mount"]), got)

    async def test_connection_gauge_labels_match_request_metrics(self) -> None:
        """
        A TCP connection to the NFS port is counted in gateway_active_connections
        under the label its calls are counted under in gateway_requests_total
        (nfs3), and a MOUNT connection under mount.
        """
        registry = CollectorRegistry()
        root, nfs = await self.start(registry=registry)
        ports = {label: svc.bound_port for label, svc in root.listeners().items()}
        conn = await connect_tcp(reactor, "127.0.0.1", ports["nfs"])
        self.addCleanup(conn.close)
        await conn.call(100003, 3, 0)  # NFSv3 NULL
        mount = await connect_tcp(reactor, "127.0.0.1", ports["mount"])
        self.addCleanup(mount.close)
        await mount.call(100005, 3, 0)  # MOUNT NULL

        def value(name: str, protocol: str) -> float | None:
            return registry.get_sample_value(name, {"protocol": protocol})

        self.assertEqual(
            registry.get_sample_value("gateway_requests_total", {"protocol": "nfs3", "op": "NULL"}),
            1.0,
        )
        self.assertEqual(value("gateway_active_connections", "nfs3"), 1.0)
        self.assertEqual(value("gateway_active_connections", "mount"), 1.0)
        self.assertIsNone(value("gateway_active_connections", "nfs"))

    async def test_drain_stops_udp(self) -> None:
        root, nfs = await self.start()
        await nfs.core.drainer.drain(1)
        self.assertFalse(nfs.udp["nfs"].protocol.accepting)
        self.assertEqual(nfs.udp["nfs"].check().status, "unhealthy")

    async def test_restart_starts_grace_and_notifies(self) -> None:
        """With lock clients recorded by the last run, the next start begins the grace period."""
        data = os.path.abspath(self.mktemp())
        os.makedirs(data)
        with open(os.path.join(data, "nsm.json"), "w") as f:
            json.dump({"state": 3, "clients": {"gone": {"addr": "127.0.0.9", "server": None}}}, f)
        config = cfg.loads(LOOPBACK.format(data=data, extra="nlm_grace_secs: 60"))
        root = service.build(config, reactor, ["nfs"], strict=True, registry=CollectorRegistry())
        nfs = nfs_of(root)
        nfs.callbacks.portmap_port = 9  # nobody answers: the notice fails quickly
        nfs.callbacks.tries = 1
        nfs.callbacks.interval = 0.05
        root.privilegedStartService()
        root.startService()
        self.addCleanup(root.stopService)
        vfs = await defer.Deferred.fromCoroutine(nfs.ctx.ready())
        recovery = nfs.getServiceNamed("proto:nfs:nlm")
        await recovery.starting
        self.assertEqual(nfs.nsm.state, 5)
        self.assertTrue(vfs.locks.in_grace)
