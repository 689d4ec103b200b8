"""Tests for the ``cfs-gateway`` command, run as a real subprocess."""

from __future__ import annotations

import json
import os
import sys

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase, TestCase

from claudefs_gateway import cli
from claudefs_gateway.core import config as cfg
from tests.helpers import (
    REPO,
    UNBUILT_CLI,
    UNBUILT_MESSAGE,
    bin_path,
    kill_on_cleanup,
    loopback_config,
    spawn,
    write_config,
)


async def run(*args: str) -> tuple[int, str, str]:
    proc = spawn([bin_path("cfs-gateway"), *args])
    status = await proc.ended
    return status, "\n".join(proc.text), proc.stderr.decode()


class ValidateConfigTests(TestCase):
    timeout = 60

    async def test_ok(self) -> None:
        path = write_config(self, "s3: {region: eu-west-1}\n")
        status, out, _ = await run("validate-config", "--config", path)
        self.assertEqual(status, 0)
        self.assertTrue(out.startswith(f"OK: {path} is valid"), out)

    async def test_done_when_case(self) -> None:
        """A misspelt key, a negative max_per_node and port 70000: all reported with key paths and lines; exit 1."""
        path = write_config(
            self,
            "nfs:\n  bnd: 0.0.0.0:2049\nconnection_pool:\n  max_per_node: -1\n"
            "s3:\n  bind: {addr: 0.0.0.0, port: 70000}\n",
        )
        status, out, _ = await run("validate-config", "--config", path)
        self.assertEqual(status, 1)
        self.assertEqual(
            out.splitlines(),
            [
                f"{path}:2: nfs.bnd: unknown key; did you mean 'bind'?",
                f"{path}:4: connection_pool.max_per_node: must be at least 1, got -1",
                f"{path}:6: s3.bind.port: port 70000 is out of range 0..65535",
                f"3 problems in {path}",
            ],
        )

    async def test_example_from_docs(self) -> None:
        """The shipped example passes validate-config exactly as it ships."""
        path = os.path.join(REPO, "docs", "gateway.example.yaml")
        status, out, _ = await run("validate-config", "--config", path)
        self.assertEqual(status, 0, out)
        self.assertTrue(out.startswith("OK: "), out)

    async def test_rdma_listener_refused_like_start(self) -> None:
        """
        validate-config and start agree about an rdma: listener: in a build with
        no rdma endpoint parser both refuse it with the same message, naming the key.
        """
        path = write_config(
            self,
            f"backend: {{type: memory, data_dir: {os.path.abspath(self.mktemp())}}}\n"
            "admin: {bind: 'tcp:0:interface=127.0.0.1'}\n"
            "nfs: {bind: 'rdma:0:device=mlx5_0'}\n",
        )
        status, out, _ = await run("validate-config", "--config", path)
        if cfg.rdma_endpoints_available():
            # A build with an rdma endpoint parser: what start can resolve validates.
            self.assertEqual(status, 0, out)
            return
        self.assertEqual(status, 1, out)
        self.assertIn(f"{path}:3: nfs.bind: rdma: listeners are not available", out)
        status, _, err = await run("start", "nfs", "--config", path)
        self.assertEqual(status, 2, err)
        self.assertIn(f"{path}:3: nfs.bind: rdma: listeners are not available", err)

    async def test_missing_file(self) -> None:
        status, out, _ = await run("validate-config", "--config", "/nonexistent/gw.yaml")
        self.assertEqual(status, 1)
        self.assertIn("cannot read", out)


class StartTests(TestCase):
    timeout = 60

    async def test_start_serves_admin_api_and_cli_reads_it(self) -> None:
        """start runs in the foreground; health, metrics and drain reach it; a drain ends it (exit 0)."""
        config = loopback_config(self)
        proc = spawn([bin_path("cfs-gateway"), "start", "--config", config])
        kill_on_cleanup(self, proc)
        port = await proc.wait_listening("admin")
        await proc.wait_ready()
        admin = f"http://127.0.0.1:{port}"
        # It runs on our reactor (core/reactor.py), not Twisted's default.
        started = await proc.wait_for(lambda e: "reactor" in e)
        self.assertEqual(started["reactor"], "claudefs_gateway.core.reactor.EPollReactor")

        status, out, _ = await run("health", "--admin", admin)
        self.assertEqual(status, 0)
        doc = json.loads(out)
        self.assertEqual(doc["overall"], "healthy")
        self.assertIn("backend", {c["name"] for c in doc["checks"]})

        status, out, _ = await run("metrics", "--admin", admin)
        self.assertEqual(status, 0)
        families = {f.name for f in text_string_to_metric_families(out + "\n")}
        self.assertIn("gateway_requests", families)

        status, out, _ = await run("drain", "--admin", admin)
        self.assertEqual(status, 0)
        self.assertEqual(json.loads(out)["state"], "drained")
        # A drained gateway exits by itself (status 0), releasing its data directory.
        self.assertEqual(await proc.ended, 0)
        status, out, _ = await run("health", "--admin", admin)
        self.assertEqual(status, 1)

    async def test_unbuilt_protocol_exits_nonzero(self) -> None:
        """`start <protocol>` for a protocol not built says so and fails."""
        for p in cfg.PROTOCOLS:
            message = UNBUILT_MESSAGE.format(p=p)
            proc = spawn(
                [sys.executable, "-c", UNBUILT_CLI, p, message, "start", p]
                + ["--data-dir", self.mktemp()]
            )
            status = await proc.ended
            self.assertNotEqual(status, 0)
            self.assertIn(message, proc.stderr.decode())

    async def test_bad_config_exits_nonzero(self) -> None:
        status, _, err = await run("start", "--config", write_config(self, "log_level: loud\n"))
        self.assertEqual(status, 2)
        self.assertIn("log_level", err)

    async def test_port_in_use_reported_plainly(self) -> None:
        import socket

        s = socket.socket()
        self.addCleanup(s.close)
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        status, _, err = await run(
            "start", "--data-dir", self.mktemp(), "--admin-bind", f"127.0.0.1:{s.getsockname()[1]}"
        )
        self.assertEqual(status, 1)
        self.assertIn("cannot start", err)

    async def test_admin_unreachable(self) -> None:
        status, _, err = await run("metrics", "--admin", "http://127.0.0.1:1")
        self.assertEqual(status, 1)
        self.assertIn("cannot reach the admin API", err)


class AdminTargetTests(SynchronousTestCase):
    def target(self, text: str, admin: str | None = None) -> tuple[str, str | None]:
        class Args:
            pass

        a = Args()
        a.admin = admin  # type: ignore[attr-defined]
        a.config = write_config(self, text) if text is not None else None  # type: ignore[attr-defined]
        return cli.admin_target(a)  # type: ignore[arg-type]

    def test_from_config(self) -> None:
        self.assertEqual(self.target(""), ("http://127.0.0.1:8080", None))
        self.assertEqual(
            self.target("admin: {bind: '0.0.0.0:9090', token: abcdefghijklmnopq}\n"),
            ("http://127.0.0.1:9090", "abcdefghijklmnopq"),
        )
        self.assertEqual(self.target("admin: {bind: '[::]:9090'}\n")[0], "http://[::1]:9090")
        self.assertEqual(self.target("admin: {bind: 'unix:/run/a.sock'}\n")[0], "unix:/run/a.sock")
        self.assertEqual(self.target("", admin="http://h:1/")[0], "http://h:1")
