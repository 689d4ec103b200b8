"""
Issue 19 on real listeners: for each protocol a client that queues requests
with large replies and reads none is throttled (the gateway stops reading its
connection and holds a bounded amount for it), while a well-behaved client on
another connection still gets every answer within 1 s. The clients are real
sockets in subprocesses (tests/bounds_clients.py; smbprotocol for SMB).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from bench.targets import BENCH_ACCESS_KEY, BENCH_NT_HASH, BENCH_SECRET_KEY, BENCH_USER
from claudefs_gateway import service
from claudefs_gateway.core import config as cfg
from tests.helpers import child_env
from tests.s3.test_hostile import until

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_text(data: str) -> str:
    return f"""
backend: {{type: embedded, data_dir: "{data}"}}
exports: [{{path: /export, name: share, root_squash: false}}]
users:
  - name: {BENCH_USER}
    uid: {os.getuid()}
    gid: {os.getgid()}
    nt_hash: {BENCH_NT_HASH}
    s3_access_key: {BENCH_ACCESS_KEY}
    s3_secret_key: {BENCH_SECRET_KEY}
nfs: {{bind: "127.0.0.1:0", mount_bind: "127.0.0.1:0", portmapper: "off", udp: false}}
s3: {{bind: "127.0.0.1:0"}}
smb: {{bind: "127.0.0.1:0"}}
admin: {{bind: "127.0.0.1:0"}}
"""


class Flooder(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.out = b""
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.err = b""

    def outReceived(self, data: bytes) -> None:
        self.out += data
        if b"flooding" in self.out and not self.ready.called:
            self.ready.callback(None)

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Any) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(self.err.decode(errors="replace")[-2000:]))
        self.ended.callback(None)


class NonReadingClientTests(TestCase):
    timeout = 120

    async def setUp(self) -> None:
        data = os.path.abspath(self.mktemp())
        self.root = service.build(cfg.loads(config_text(data)), reactor, protocols=["nfs", "smb"])
        self.root.privilegedStartService()
        self.root.startService()
        self.addCleanup(self.root.stopService)
        await self.root.core.vfs_ready()
        self.ports = {k: v.bound_port for k, v in self.root.listeners().items()}

    def args(self, role: str, proto: str) -> list[str]:
        port = self.ports["smb" if proto == "smb" else "s3" if proto == "s3" else "nfs"]
        return [
            "-m", "tests.bounds_clients", role, proto, "127.0.0.1", str(port),
            str(self.ports.get("mount", 0)),
        ]  # fmt: skip

    async def flood(self, proto: str) -> Flooder:
        f = Flooder()
        proc = reactor.spawnProcess(
            f,
            sys.executable,
            [sys.executable, *self.args("flood", proto)],
            env=child_env(),
            path=REPO,
        )

        async def stop() -> None:
            if not f.ended.called:
                proc.closeStdin()
                await f.ended

        self.addCleanup(lambda: defer.Deferred.fromCoroutine(stop()))
        self.stop_flood = stop
        await f.ready
        return f

    async def gone_quietly(self, label: str) -> None:
        """
        The flooding client goes away with its requests unanswered: its
        connection closes and nothing is logged above info (a client going
        away is not a fault).
        """
        from twisted.logger import LogLevel, globalLogPublisher

        loud: list[dict[str, Any]] = []

        def observe(e: dict[str, Any]) -> None:
            if e.get("log_level", LogLevel.debug) > LogLevel.info:
                loud.append(e)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        activity = self.root.core.drainer.activity(label)
        before = len(activity.connections)
        await self.stop_flood()
        await until(lambda: len(activity.connections) < before)
        await activity.idle()
        self.assertEqual([e.get("log_format") for e in loud], [])

    async def good_worst(self, proto: str) -> float:
        out, err, code = await getProcessOutputAndValue(
            sys.executable, self.args("good", proto), env=child_env(), path=REPO
        )
        self.assertEqual(code, 0, err.decode(errors="replace")[-2000:])
        return float(json.loads(out.decode().strip().splitlines()[-1])["worst"])

    def connections(self, label: str) -> list[Any]:
        return list(self.root.core.drainer.activity(label).connections)

    async def test_smb(self) -> None:
        await self.flood("smb")
        factory = self.root.getServiceNamed("proto:smb").factory
        smb = factory.smb

        def throttled() -> list[Any]:
            return [c for c in factory.connections if c._reading_paused]

        await until(lambda: throttled())
        [conn] = throttled()
        self.assertLessEqual(
            conn._in_flight, smb.max_queued_bytes_per_connection + smb.max_message_size
        )
        self.assertLess(await self.good_worst("smb"), 1.0)
        await self.gone_quietly("smb")

    async def test_nfs(self) -> None:
        await self.flood("nfs")

        def throttled() -> list[Any]:
            return [c for c in self.connections("nfs3") if c._reading_paused]

        await until(lambda: throttled())
        [conn] = throttled()
        self.assertLessEqual(len(conn.pending), conn.max_in_flight)
        # The byte bound (nfs.max_queued_bytes_per_connection) bites before
        # max_in_flight: each 1 MiB READ counts its count, so at most one
        # call beyond it runs, and what runs plus what is queued stays there.
        self.assertLessEqual(len(conn.pending), conn.max_queued_bytes // (1 << 20) + 1)
        self.assertLessEqual(conn._held + conn._queued, conn.max_queued_bytes + (2 << 20))
        self.assertLess(await self.good_worst("nfs"), 1.0)
        await self.gone_quietly("nfs3")


class S3NonReadingClientTests(TestCase):
    """
    S3 against a gateway process (``cfs-gateway start``, as bench/ runs it): the
    pipelined GETs of a 16 MiB object left unread do not grow the process,
    and another connection is answered within 1 s.
    """

    timeout = 120

    async def test_s3(self) -> None:
        from pathlib import Path

        from twisted.internet.threads import deferToThread

        from bench.targets import Gateway

        gw = Gateway(Path(os.path.abspath(self.mktemp())), ["s3"])
        await deferToThread(gw.start)
        self.addCleanup(deferToThread, gw.stop)
        port = gw.endpoints["s3_port"]
        pid = gw.endpoints["pid"]
        args = ["-m", "tests.bounds_clients", "{}", "s3", "127.0.0.1", str(port), "0"]
        f = Flooder()
        proc = reactor.spawnProcess(
            f,
            sys.executable,
            [sys.executable, *[a.replace("{}", "flood") for a in args]],
            env=child_env(),
            path=REPO,
        )

        async def stop() -> None:
            if not f.ended.called:
                proc.closeStdin()
                await f.ended

        self.addCleanup(lambda: defer.Deferred.fromCoroutine(stop()))
        await f.ready
        before = rss_mib(pid)
        out, err, code = await getProcessOutputAndValue(
            sys.executable, [a.replace("{}", "good") for a in args], env=child_env(), path=REPO
        )
        self.assertEqual(code, 0, err.decode(errors="replace")[-2000:])
        self.assertLess(float(json.loads(out.decode().strip().splitlines()[-1])["worst"]), 1.0)
        # 50 GETs of 16 MiB queued: 800 MiB if they were buffered.
        self.assertLess(rss_mib(pid) - before, 64)


def rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    return 0
