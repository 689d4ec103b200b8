"""
The servers as services, plugins and C{cfs-gateway} verbs: /health and
/metrics on their admin listeners, twistd plugins, and real processes.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from claudefs_gateway.servers.tap import DataOptions, MetaOptions
from tests.backend.remote.harness import Cluster
from tests.helpers import bin_path, http_get, kill_on_cleanup, spawn


class OptionsTests(SynchronousTestCase):
    def test_plugins(self) -> None:
        names = {p.tapname for p in getPlugins(IServiceMaker)}
        self.assertTrue({"claudefs-meta", "claudefs-data"} <= names)

    def test_data_dir_required(self) -> None:
        self.assertRaises(usage.UsageError, MetaOptions().parseOptions, [])

    def test_defaults_are_seed_ports_on_loopback(self) -> None:
        o = MetaOptions()
        o.parseOptions(["--data-dir", "x", "--data-server", "d1:7002"])
        self.assertEqual((o.settings.listen.host, o.settings.listen.port), ("127.0.0.1", 7001))
        self.assertEqual(o.settings.data_servers, ("d1:7002",))
        d = DataOptions()
        d.parseOptions(["--data-dir", "x"])
        self.assertEqual(d.settings.listen.port, 7002)

    def test_bad_values(self) -> None:
        for argv in (
            ["--data-dir", "x", "--data-server", "nonsense"],
            ["--data-dir", "x", "--listen", "bogus:1"],
            ["--data-dir", "x", "--log-level", "loud"],
        ):
            self.assertRaises(usage.UsageError, MetaOptions().parseOptions, argv)


class HealthTests(TestCase):
    timeout = 20

    async def test_health_and_metrics(self) -> None:
        """Each server answers /health (store, rpc) and /metrics."""
        cluster = Cluster(self)
        await cluster.start()
        for server in (cluster.meta, cluster.data):
            assert server is not None and server.admin is not None
            base = f"http://127.0.0.1:{server.admin.bound_port}"
            status, _, body = await http_get(base + "/health")
            doc = json.loads(body)
            self.assertEqual(status, 200, doc)
            self.assertEqual({c["name"] for c in doc["checks"]}, {"store", "rpc"})
            status, _, body = await http_get(base + "/metrics")
            self.assertEqual(status, 200)
            self.assertIn(b"gateway_info", body)


class ProcessTests(TestCase):
    timeout = 60

    async def run_server(self, role: str, *extra: str) -> Any:
        data = os.path.abspath(self.mktemp())
        proc = spawn(
            [
                bin_path("cfs-gateway"),
                role,
                "--data-dir",
                data,
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--admin",
                "tcp:0:interface=127.0.0.1",
                "--log-format",
                "json",
                *extra,
            ]
        )
        kill_on_cleanup(self, proc)
        port = await proc.wait_listening("rpc")
        await proc.wait_for(lambda e: e.get("serving") == role)
        return proc, port

    async def test_verbs_start_and_stop(self) -> None:
        """cfs-gateway data and meta serve until SIGTERM, then exit 0."""
        data, dport = await self.run_server("data")
        meta, _ = await self.run_server("meta", "--data-server", f"127.0.0.1:{dport}")
        for proc in (meta, data):
            proc.signal("TERM")
            self.assertEqual(await proc.ended, 0)
