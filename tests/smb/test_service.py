"""
The SMB front end in the service tree: make_service on a memory reactor, and
the real gateway process serving smbclient until it drains.
"""

from __future__ import annotations

import os

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from claudefs_gateway import service
from claudefs_gateway.core import config as cfg
from claudefs_gateway.smb import BUILT
from claudefs_gateway.vfs.identity import nt_hash
from tests.helpers import bin_path, http_get, kill_on_cleanup, loopback_config, spawn
from tests.smb.test_clients import smb_conf


class MakeServiceTests(SynchronousTestCase):
    def test_listener_in_tree(self) -> None:
        """proto:smb holds one listener with health check "smb" that joins the drain."""
        self.assertTrue(BUILT)
        data = os.path.abspath(self.mktemp())
        config = cfg.loads(
            f"backend: {{type: memory, data_dir: {data}}}\nsmb: {{bind: '127.0.0.1:4450'}}\n"
        )
        reactor = MemoryReactorClock()
        root = service.build(config, reactor, ["smb"], strict=True)
        names = [s.name for s in root]
        self.assertIn("proto:smb", names)
        root.startService()
        self.addCleanup(root.stopService)
        self.assertIn((4450, "127.0.0.1"), [(p, i) for p, _, _, i in reactor.tcpServers])
        self.assertIn("smb", root.core.health.names())
        self.assertIn("smb", root.listeners())


class GatewayProcessTests(TestCase):
    timeout = 120

    async def test_serves_and_drains(self) -> None:
        """cfs-gateway start serves smbclient; SMB metrics appear; SIGTERM drains and exits 0."""
        extra = f"""
exports: [{{path: /export, name: share, root_squash: false}}]
users: [{{name: root, uid: 0, gid: 0, nt_hash: {nt_hash("Pass1")}}}]
"""
        config = loopback_config(self, extra)
        proc = spawn([bin_path("cfs-gateway"), "start", "smb", "--config", config])
        kill_on_cleanup(self, proc)
        port = await proc.wait_listening("smb")
        admin = await proc.wait_listening("admin")
        local = os.path.abspath(self.mktemp())
        os.makedirs(local)
        with open(os.path.join(local, "f.bin"), "wb") as f:
            f.write(os.urandom(300_000))
        client = spawn(
            [
                bin_path("smbclient"),
                "//127.0.0.1/share",
                "-s",
                smb_conf(self),
                "-p",
                str(port),
                "-U",
                "root%Pass1",
                "-m",
                "SMB3",
                "-c",
                f"lcd {local}; put f.bin; get f.bin g.bin; ls",
            ]
        )
        self.assertEqual(await client.ended, 0, "\n".join(client.text) + client.stderr.decode())
        with (
            open(os.path.join(local, "f.bin"), "rb") as a,
            open(os.path.join(local, "g.bin"), "rb") as b,
        ):
            self.assertEqual(a.read(), b.read())
        code, _, body = await http_get(f"http://127.0.0.1:{admin}/metrics")
        self.assertEqual(code, 200)
        samples = {
            (s.name, s.labels.get("op")): s.value
            for fam in text_string_to_metric_families(body.decode())
            for s in fam.samples
            if s.labels.get("protocol") == "smb"
        }
        self.assertGreater(samples[("gateway_requests_total", "write")], 0)
        self.assertGreater(samples[("gateway_requests_total", "session_setup")], 0)
        code, _, body = await http_get(f"http://127.0.0.1:{admin}/health")
        self.assertIn(b'"smb"', body)
        proc.signal("TERM")
        self.assertEqual(await proc.ended, 0)
