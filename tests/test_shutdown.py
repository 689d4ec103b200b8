"""
Graceful shutdown in real subprocesses: SIGTERM (and the admin drain) stop
accepting, let in-flight requests finish up to the deadline, then close.
"""

from __future__ import annotations

import json
import sys

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import TestCase

from tests.helpers import bin_path, child_env, http_get, kill_on_cleanup, loopback_config, spawn


class Client(LineReceiver):
    delimiter = b"\n"

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.waiting: dict[bytes, defer.Deferred[None]] = {}
        self.closed: defer.Deferred[None] = defer.Deferred()

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)
        d = self.waiting.pop(line, None)
        if d is not None:
            d.callback(None)

    def expect(self, line: bytes) -> defer.Deferred[None]:
        if line in self.lines:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self.waiting[line] = d
        return d

    def connectionLost(self, reason: object = protocol.connectionDone) -> None:
        self.closed.callback(None)


def started_with(prefix: str):  # noqa: ANN201
    return lambda e: str(e.get("log_format", "")).startswith(prefix)


class ShutdownTests(TestCase):
    timeout = 60

    async def start_hold_gateway(self, drain: str) -> tuple[object, int, int]:
        config = loopback_config(self, drain=drain)
        proc = spawn([sys.executable, "-m", "tests.hold_gateway", config])
        kill_on_cleanup(self, proc)
        hold_port = await proc.wait_listening("hold")
        admin_port = await proc.wait_listening("admin")
        return proc, hold_port, admin_port

    async def connect(self, port: int) -> Client:
        client = Client()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        self.addCleanup(lambda: client.transport.loseConnection())
        return client

    async def test_sigterm_waits_for_in_flight_request(self) -> None:
        """After SIGTERM: no new connections, /health is 503, the held request completes, then exit 0."""
        proc, hold_port, admin_port = await self.start_hold_gateway(drain="30")
        client = await self.connect(hold_port)
        client.sendLine(b"hold")
        await client.expect(b"held")

        proc.signal("TERM")
        await proc.wait_for(started_with("no longer accepting"))
        with self.assertRaises(ConnectionRefusedError):
            await self.connect(hold_port)
        status, _, body = await http_get(f"http://127.0.0.1:{admin_port}/health")
        self.assertEqual(status, 503)
        self.assertEqual(json.loads(body)["overall"], "unhealthy")
        self.assertFalse(proc.ended.called)

        client.sendLine(b"release")
        await client.expect(b"released")
        await client.closed
        self.assertEqual(await proc.ended, 0)
        [drained] = [e for e in proc.events if started_with("drained")(e)]
        self.assertEqual((drained["abandoned"], drained["aborted"]), (0, 0))
        self.assertNotIn("Traceback", "\n".join(proc.text))

    async def test_deadline_cuts_off_stuck_request(self) -> None:
        """A request still running at the drain deadline is cut off and the process exits."""
        proc, hold_port, _ = await self.start_hold_gateway(drain="0.5")
        client = await self.connect(hold_port)
        client.sendLine(b"hold")
        await client.expect(b"held")
        start = reactor.seconds()
        proc.signal("TERM")
        await client.closed
        self.assertEqual(await proc.ended, 0)
        self.assertLess(reactor.seconds() - start, 10)
        [drained] = [e for e in proc.events if started_with("drained")(e)]
        self.assertEqual(drained["abandoned"], 1)
        self.assertNotIn(b"released", client.lines)

    async def test_admin_drain_exits_and_frees_the_data_directory(self) -> None:
        """
        `cfs-gateway drain` drains through the admin API, answers once drained,
        and the process then exits 0 by itself: nothing holds the data
        directory, so the next gateway on it starts.
        """
        config = loopback_config(self, drain="30")
        proc = spawn([sys.executable, "-m", "tests.hold_gateway", config])
        kill_on_cleanup(self, proc)
        hold_port = await proc.wait_listening("hold")
        admin_port = await proc.wait_listening("admin")
        client = await self.connect(hold_port)
        client.sendLine(b"hold")
        await client.expect(b"held")
        drain = spawn(
            [bin_path("cfs-gateway"), "drain", "--admin", f"http://127.0.0.1:{admin_port}"]
        )
        await proc.wait_for(started_with("draining"))
        self.assertFalse(drain.ended.called)
        client.sendLine(b"release")
        self.assertEqual(await drain.ended, 0)
        doc = json.loads("\n".join(drain.text))
        self.assertEqual((doc["state"], doc["in_flight_abandoned"]), ("drained", 0))
        await client.closed
        self.assertEqual(await proc.ended, 0)
        self.assertIn("drained through the admin API: stopping the process", proc.messages())

        again = spawn([bin_path("cfs-gateway"), "start", "--config", config])
        kill_on_cleanup(self, again)
        await again.wait_ready()
        again.signal("TERM")
        self.assertEqual(await again.ended, 0)


class TwistdTests(TestCase):
    timeout = 60

    async def test_twistd_exits_cleanly_on_sigterm(self) -> None:
        """`twistd -n claudefs-gateway` serves /health, then stops cleanly on SIGTERM within the deadline."""
        config = loopback_config(self, drain="5")
        argv = [
            bin_path("twistd"),
            "-n",
            "--pidfile=",
            "--logger=claudefs_gateway.core.log.json_stdout",
            "claudefs-gateway",
            "--config",
            config,
        ]
        proc = spawn(argv, env=child_env())
        kill_on_cleanup(self, proc)
        admin_port = await proc.wait_listening("admin")
        await proc.wait_ready()
        status, _, body = await http_get(f"http://127.0.0.1:{admin_port}/health")
        self.assertEqual((status, json.loads(body)["overall"]), (200, "healthy"))
        start = reactor.seconds()
        proc.signal("TERM")
        # twistd re-raises the signal after a clean shutdown, so the status is "killed by SIGTERM".
        self.assertEqual(await proc.ended, -15)
        self.assertLess(reactor.seconds() - start, 5)
        messages = proc.messages()
        self.assertIn("claudefs-gateway stopped", messages)
        self.assertFalse(
            [e for e in proc.events if e.get("log_level", {}).get("name") in ("error", "critical")]
        )
