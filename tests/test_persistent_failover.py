"""
Persistent handles on a continuously available share (``ca: true``) across a
gateway killed with SIGKILL, with real clients (smbprotocol, as
tests/xproto_actor.py drives it) and real processes: a data server, a meta
server, gateway A and gateway B on it (``backend: remote``), B started after A's
death or running all along.

The client opens a file with a persistent handle, writes, takes a byte-range
lock; A is killed; B starts and takes the open back from the meta server's
store. Before the client reconnects, another client's open that the share
mode refuses gets SHARING_VIOLATION and its conflicting lock is refused; the
client reconnects through B (new connection and session, DH2C with the same
CreateGuid) and has its open, its lock and its data.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import TestCase

from tests import test_multigateway as mg
from tests.backend.remote.test_faults import ServerProcess
from tests.helpers import bin_path, kill_on_cleanup, loopback_config, spawn
from tests.test_crossproto import CONFIG

CA_CONFIG = CONFIG.replace("dir_mode: 0777}", "dir_mode: 0777, ca: true}")
#: What smbprotocol's exceptions name these statuses.
SHARING_VIOLATION = "0xc0000043"
LOCK_REFUSED = ("0xc0000054", "0xc0000055")  # FILE_LOCK_CONFLICT, LOCK_NOT_GRANTED


class PersistentFailoverTests(TestCase):
    timeout = 180

    gateway = mg.TwoGatewaysTests.gateway
    actor = mg.TwoGatewaysTests.actor
    smb = mg.TwoGatewaysTests.smb

    async def setUp(self) -> None:  # type: ignore[override]
        assert "ca: true" in CA_CONFIG
        data = ServerProcess(self, "data")
        await data.start()
        conf = os.path.abspath(self.mktemp())
        with open(conf, "w") as f:
            # The meta server lets a lost gateway's reservations go after 2 s (default 10).
            f.write("meta_store:\n  linger_secs: 2\n")
        meta = ServerProcess(self, "meta", ["--data-server", data.address, "--config", conf])
        await meta.start()
        self.extra = CA_CONFIG + f'metadata_servers: [{{address: "{meta.address}"}}]\n'

    def refused(self, got: dict[str, Any], codes: tuple[str, ...]) -> None:
        self.assertFalse(got["ok"], got)
        self.assertTrue(any(code in got["error"].lower() for code in codes), got["error"])

    async def test_persistent_open_survives_kill_9(self) -> None:
        """A is killed; B starts afterwards and takes the open back."""
        a = await self.gateway(self.extra)
        await self.scenario(a, None)

    async def test_running_gateway_takes_over(self) -> None:
        """A is killed; B, running all along, finds A's beat stopped and takes over."""
        a = await self.gateway(self.extra)
        b = await self.gateway(self.extra)
        await self.scenario(a, b)

    async def scenario(self, a: Any, b: Any) -> None:
        client = await self.smb(a)
        got = await client.ok(
            "open", id="p", path="ca.bin", access="rw", share="r", persistent=True
        )
        self.assertTrue(got.get("persistent"), got)
        await client.ok("write", id="p", data="persisted before the kill")
        await client.ok("lock", id="p", offset=0, length=10)

        a.proc.signal("KILL")
        await a.proc.ended
        if b is None:
            b = await self.gateway(self.extra)
        # B took the open back (after A's reservations lingered out at the meta server).
        await b.proc.wait_for(
            lambda e: "persistent handle taken back" in str(e.get("log_format", ""))
        )

        other = await self.smb(b)
        # The persistent open shares reading only: a writer is refused.
        self.refused(
            await other.do("open", id="w", path="ca.bin", access="rw", share="rwd"),
            (SHARING_VIOLATION,),
        )
        # A reader gets in, but not into the locked range.
        await other.ok("open", id="r", path="ca.bin", access="r", share="rw")
        self.refused(
            await other.do("lock", id="r", offset=0, length=10, exclusive=False), LOCK_REFUSED
        )

        back = await client.ok("reconnect", port=b.smb)
        self.assertEqual((back["reclaimed"], back["same_ids"]), (["p"], True))
        got = await client.ok("read", id="p", offset=0, length=25)
        self.assertEqual(got["data"], "persisted before the kill")
        # The lock is the reclaimed open's: still refused to the other client.
        self.refused(
            await other.do("lock", id="r", offset=0, length=10, exclusive=False), LOCK_REFUSED
        )
        await client.ok("close", id="p")
        await other.ok("lock", id="r", offset=0, length=10, exclusive=False)
        await other.ok("open", id="w", path="ca.bin", access="rw", share="rwd")


class PersistentFailoverPgTests(PersistentFailoverTests):
    """The same, gateway A on meta server 1 and B on meta server 2, over one PostgreSQL."""

    async def setUp(self) -> None:  # type: ignore[override]
        from tests.backend import postgres

        schema = postgres.new_schema(self)
        conf = os.path.abspath(self.mktemp())
        with open(conf, "w") as f:
            f.write(postgres.meta_store_yaml(schema) + "  linger_secs: 2\n")
        data = ServerProcess(self, "data")
        await data.start()
        metas = [
            ServerProcess(self, "meta", ["--data-server", data.address, "--config", conf])
            for _ in range(2)
        ]
        for m in metas:
            await m.start()
        self.extras = [
            CA_CONFIG + f'metadata_servers: [{{address: "{m.address}"}}]\n' for m in metas
        ]
        self.extra = self.extras[0]

    async def test_running_gateway_takes_over(self) -> None:
        a = await self.gateway(self.extras[0])
        b = await self.gateway(self.extras[1])
        await self.scenario(a, b)


class PersistentEmbeddedRestartTests(TestCase):
    """
    ``backend: embedded``: the one gateway's own store keeps the records; the
    gateway killed with -9 and started again on the same data directory
    takes the open back at its start.
    """

    timeout = 180

    actor = mg.TwoGatewaysTests.actor
    smb = mg.TwoGatewaysTests.smb
    scenario = PersistentFailoverTests.scenario
    refused = PersistentFailoverTests.refused

    async def setUp(self) -> None:  # type: ignore[override]
        self.config = loopback_config(self, CA_CONFIG, backend="embedded")
        self.extra = ""

    async def gateway(self, _extra: str) -> mg.Gateway:
        """The gateway of this test's configuration and data directory, (re)started."""
        proc = spawn([bin_path("cfs-gateway"), "start", "--config", self.config])
        kill_on_cleanup(self, proc)
        ports = [await proc.wait_listening(p) for p in ("nfs", "mount", "s3", "smb")]
        await proc.wait_ready()
        return mg.Gateway(proc, *ports)

    async def test_persistent_open_survives_kill_9(self) -> None:
        a = await self.gateway("")
        await self.scenario(a, None)
