"""
C{cfs-gateway start --workers N}: a supervisor, local meta and data servers,
N workers sharing every port (SO_REUSEPORT); real clients; a killed worker is
replaced and its clients land on the others; SIGTERM stops everything.
"""

from __future__ import annotations

import os
import shutil
import socket
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase, TestCase

from claudefs_gateway.core.transport.reuseport import ReusePortEndpoint, reserve
from tests.helpers import bin_path, http_get, kill_group, kill_on_cleanup, loopback_config, spawn

OUR_REACTOR = "claudefs_gateway.core.reactor.EPollReactor"

EXPORTS = """
exports:
  - {path: /export, root_squash: false}
"""


def alive(pid: int) -> bool:
    """Whether C{pid} runs (a zombie, killed and not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


async def gone(pids: list[int], within: float = 10.0) -> list[int]:
    """The C{pids} still running after up to C{within} seconds (SIGKILL is asynchronous)."""
    from twisted.internet.task import deferLater

    waited = 0.0
    while [p for p in pids if alive(p)] and waited < within:
        await deferLater(reactor, 0.05, lambda: None)
        waited += 0.05
    return [p for p in pids if alive(p)]


class ReusePortTests(TestCase):
    timeout = 10

    async def test_two_listeners_one_port(self) -> None:
        """Two reuseport listeners bind one port a reserved socket holds."""
        held = reserve("127.0.0.1", 0)
        self.addCleanup(held.close)
        port = held.getsockname()[1]
        ports = []
        for _ in range(2):
            p = await ReusePortEndpoint(reactor, port, "127.0.0.1").listen(
                Factory.forProtocol(Protocol)
            )
            self.addCleanup(p.stopListening)
            ports.append(p.getHost().port)
        self.assertEqual(ports, [port, port])
        s = socket.create_connection(("127.0.0.1", port))
        s.close()


class OptionsTests(SynchronousTestCase):
    def test_workers_number(self) -> None:
        from twisted.python import usage

        from claudefs_gateway.tap import Options

        for bad in ("x", "-1", "1000"):
            self.assertRaises(usage.UsageError, Options().parseOptions, ["--workers", bad])


class WorkerConfigTests(SynchronousTestCase):
    def test_delegations_across_workers(self) -> None:
        """
        Delegations stay on with several workers: a change served by one
        worker recalls what another granted through the meta server
        (docs/rpc.rst "Shared state"; tests/test_multigateway.py).
        """
        import yaml

        from claudefs_gateway.core import config as cfg
        from claudefs_gateway.workers import Supervisor

        text = EXPORTS + "nfs: {v4: {delegations: read_write}}\n"
        config = cfg.loads(text)
        for n, want in ((1, "read_write"), (2, "read_write")):
            sup = Supervisor(config, text, n, "all", reactor)
            self.addCleanup(shutil.rmtree, sup.run_dir, True)
            path = sup._worker_config(0, {})
            got = yaml.safe_load(path.read_text())["nfs"]["v4"]["delegations"]
            self.assertEqual(got, want)

    def test_each_worker_has_its_own_nsm_record(self) -> None:
        """
        Each worker is told its index, which names its NSM record in the
        shared data directory (nfs/nsm.py state_file), and the index reaches
        the NFS front end.
        """
        from claudefs_gateway import service
        from claudefs_gateway.core import config as cfg
        from claudefs_gateway.tap import Options
        from claudefs_gateway.workers import Supervisor

        text = EXPORTS
        config = cfg.loads(text)
        sup = Supervisor(config, text, 2, "all", reactor)
        self.addCleanup(shutil.rmtree, sup.run_dir, True)
        for i in (0, 1):
            args = sup._worker_args(i)
            self.assertEqual(args[args.index("--worker-index") + 1], str(i))
            opts = Options()
            opts.parseOptions(["--worker", "--worker-index", str(i)])
            self.assertEqual(opts["worker-index"], i)
        from twisted.python import usage

        self.assertRaises(usage.UsageError, Options().parseOptions, ["--worker-index", "x"])
        self.assertRaises(usage.UsageError, Options().parseOptions, ["--worker-index", "-1"])
        data = self.mktemp()
        config = cfg.loads(EXPORTS + f"backend: {{data_dir: {os.path.abspath(data)}}}\n")
        from twisted.internet.testing import MemoryReactorClock

        root = service.build(config, MemoryReactorClock(), ["nfs"], worker_index=1)
        nfs = root.getServiceNamed("proto:nfs")
        self.assertEqual(nfs.nsm.store.path.name, "nsm-worker-1.json")
        root = service.build(config, MemoryReactorClock(), ["nfs"])
        self.assertEqual(root.getServiceNamed("proto:nfs").nsm.store.path.name, "nsm.json")

    def test_records_no_worker_keeps_go_to_worker_0(self) -> None:
        """An earlier run's extra workers' (or single gateway's) NSM clients are not lost."""
        import json

        from claudefs_gateway.core import config as cfg
        from claudefs_gateway.workers import Supervisor

        data = os.path.abspath(self.mktemp())
        os.makedirs(data)
        for name, client in (
            ("nsm-worker-0.json", "a"),
            ("nsm-worker-1.json", "b"),
            ("nsm-worker-2.json", "c"),
            ("nsm.json", "d"),
        ):
            with open(os.path.join(data, name), "w") as f:
                json.dump({"state": 3, "clients": {client: {"addr": "10.0.0.1"}}}, f)
        text = EXPORTS + f"backend: {{data_dir: {data}}}\n"
        sup = Supervisor(cfg.loads(text), text, 2, "all", reactor)
        self.addCleanup(shutil.rmtree, sup.run_dir, True)
        self.assertEqual(sup._adopt_nsm_records(), ["nsm-worker-2.json", "nsm.json"])
        self.assertEqual(sorted(os.listdir(data)), ["nsm-worker-0.json", "nsm-worker-1.json"])
        with open(os.path.join(data, "nsm-worker-0.json")) as f:
            self.assertEqual(sorted(json.load(f)["clients"]), ["a", "c", "d"])


class WorkersTests(TestCase):
    timeout = 120

    async def test_workers_serve_share_ports_and_survive_a_kill(self) -> None:
        config = loopback_config(self, EXPORTS)
        proc = spawn(
            [bin_path("cfs-gateway"), "start", "--config", config, "--workers", "2"],
            new_session=True,
        )
        kill_on_cleanup(self, proc)
        await proc.wait_for(lambda e: e.get("workers") == 2)
        ports = {
            e["process"]: e["port"]
            for e in proc.events
            if e.get("listener") == "nfs" and e.get("port") is not None
        }
        self.assertEqual(set(ports), {"worker-0", "worker-1"})
        self.assertEqual(len(set(ports.values())), 1)  # one port, two processes
        nfs = ports["worker-0"]
        mount = next(e["port"] for e in proc.events if e.get("listener") == "mount")
        admin = next(
            e["port"]
            for e in proc.events
            if e.get("listener") == "admin" and e.get("process") == "worker-0"
        )

        status, _, body = await http_get(f"http://127.0.0.1:{admin}/health")
        self.assertEqual(status, 200, body)
        self.assertIn(b'"metadata"', body)
        self.assertIn(b'"transport"', body)

        url = f"nfs://127.0.0.1/export/f.bin?version=3&nfsport={nfs}&mountport={mount}"
        data = os.urandom(3 * 1024 * 1024 + 7)
        src = os.path.abspath(self.mktemp())
        with open(src, "wb") as f:
            f.write(data)
        self.assertEqual(await spawn([bin_path("nfs-cp"), src, url]).ended, 0)

        async def read_back() -> None:
            dst = os.path.abspath(self.mktemp())
            self.assertEqual(await spawn([bin_path("nfs-cp"), url, dst]).ended, 0)
            with open(dst, "rb") as f:
                self.assertEqual(f.read(), data)

        # Several connections: the kernel spreads them; every worker sees the one namespace.
        await defer.gatherResults([defer.Deferred.fromCoroutine(read_back()) for _ in range(4)])

        pids = {
            e["process"]: e.get("pid")
            for e in proc.events
            if str(e.get("log_format", "")).startswith("worker process")
        }
        victim = pids.get("worker-1")
        self.assertIsNotNone(victim, pids)
        os.kill(victim, 9)
        await proc.wait_for(lambda e: "starting it again" in str(e.get("log_format", "")))
        await read_back()  # served by the other worker meanwhile

        def vfs_opens(name: str) -> int:
            return sum(
                1
                for e in proc.events
                if e.get("process") == name and str(e.get("log_format", "")).startswith("vfs open")
            )

        await proc.wait_for(lambda e: vfs_opens("worker-1") >= 2)  # its replacement is serving
        await read_back()
        # Every worker reads and writes the data server's chunk files itself.
        self.assertEqual(
            {
                e["process"]
                for e in proc.events
                if "chunk files directly" in str(e.get("log_format", ""))
            },
            {"worker-0", "worker-1"},
        )
        children = [p for p in self._child_pids(proc) if p]
        proc.signal("TERM")
        self.assertEqual(await proc.ended, 0)
        self.assertEqual(await gone(children), [])

        # Started again on the same data directory: the data server's socket
        # is new, and the stored layout follows it.
        proc = spawn(
            [bin_path("cfs-gateway"), "start", "--config", config, "--workers", "2"],
            new_session=True,
        )
        kill_on_cleanup(self, proc)
        await proc.wait_for(lambda e: e.get("workers") == 2)
        nfs = next(e["port"] for e in proc.events if e.get("listener") == "nfs")
        mount = next(e["port"] for e in proc.events if e.get("listener") == "mount")
        url = f"nfs://127.0.0.1/export/f.bin?version=3&nfsport={nfs}&mountport={mount}"
        self.assertTrue(
            any("are now at" in str(e.get("log_format", "")) for e in proc.events),
            "the meta server kept the old data server address",
        )
        await read_back()
        url = url.replace("/f.bin", "/g.bin")
        data = os.urandom(1024 * 1024 + 3)
        with open(src, "wb") as f:
            f.write(data)
        self.assertEqual(await spawn([bin_path("nfs-cp"), src, url]).ended, 0)
        await read_back()
        proc.signal("TERM")
        self.assertEqual(await proc.ended, 0)

    async def test_cleanup_kills_every_child(self) -> None:
        """
        A test that fails partway leaves no process behind: the supervisor
        leads a process group of its own, and the clean-up kills the group
        (its servers and workers with it), not the supervisor alone.
        """
        config = loopback_config(self, EXPORTS)
        proc = spawn(
            [bin_path("cfs-gateway"), "start", "--config", config, "--workers", "1"],
            new_session=True,
        )
        kill_on_cleanup(self, proc)
        await proc.wait_for(lambda e: e.get("workers") == 1)
        assert proc.pid is not None
        self.assertEqual(os.getpgid(proc.pid), proc.pid)
        children = [
            e["pid"]
            for e in proc.events
            if str(e.get("log_format", "")).endswith("started, pid {pid}") and e.get("pid")
        ]
        self.assertEqual(len(children), 3, children)  # data, meta, worker-0
        for pid in children:
            self.assertEqual(os.getpgid(pid), proc.pid)
        # Every process runs on our reactor (core/reactor.py): the supervisor,
        # the meta and data servers and the worker.
        reactors = [(e.get("role", "gateway"), e["reactor"]) for e in proc.events if "reactor" in e]
        self.assertEqual(
            sorted(reactors),
            [
                ("data", OUR_REACTOR),
                ("gateway", OUR_REACTOR),  # the supervisor
                ("gateway", OUR_REACTOR),  # worker-0
                ("meta", OUR_REACTOR),
            ],
        )
        await kill_group(proc)
        self.assertEqual(await gone(children), [])

    def _child_pids(self, proc: object) -> list[int]:
        return [
            e["pid"]
            for e in getattr(proc, "events", [])
            if str(e.get("log_format", "")).startswith("worker process") and e.get("pid")
        ]


class _FakeTransport:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, sig: str) -> None:  # noqa: N802 - IProcessTransport's name
        self.signals.append(sig)


class _SpawningClock:
    """A Clock that records the processes the supervisor spawns, and starts none."""

    def __init__(self) -> None:
        from twisted.internet.task import Clock

        self.clock = Clock()
        self.spawned: list[tuple[str, Any, list[str]]] = []
        self.running = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.clock, name)

    def spawnProcess(  # noqa: N802 - IReactorProcess's name
        self, proto: Any, exe: str, args: list[str], **kw: Any
    ) -> _FakeTransport:
        t = _FakeTransport(1000 + len(self.spawned))
        proto.makeConnection(t)
        name = proto.name
        self.spawned.append((name, proto, args))
        return t

    def live(self, name: str) -> Any:
        """The newest child called C{name}."""
        return [p for n, p, _ in self.spawned if n == name][-1]


def _say(child: Any, **event: Any) -> None:
    """C{child} logs C{event}, as a child's JSON log line."""
    from twisted.logger import LogLevel, eventAsJSON

    event.setdefault("log_format", "")
    event.update(log_time=0.0, log_level=LogLevel.info, log_namespace="test")
    child.outReceived(eventAsJSON(event).encode() + b"\n")


def _exit(child: Any, code: int, stderr: bytes = b"") -> None:
    from twisted.internet.error import ProcessTerminated
    from twisted.python.failure import Failure

    if stderr:
        child.errReceived(stderr)
    child.processEnded(Failure(ProcessTerminated(exitCode=code)))


class StartTests(SynchronousTestCase):
    """
    The start of C{--workers N} on a Clock, its children faked: a worker that
    exits before it is ready (on a starved machine, a store it could not open
    within the RPC deadlines) is started again, up to C{workers.start_attempts};
    what finally stops the start is logged with its cause, never left as an
    unhandled error.
    """

    def supervisor(self, extra: str = "") -> tuple[Any, _SpawningClock, list[dict[str, Any]]]:
        from twisted.logger import globalLogPublisher

        from claudefs_gateway.core import config as cfg
        from claudefs_gateway.workers import Supervisor

        with open(loopback_config(self, EXPORTS + extra)) as f:
            text = f.read()
        clock = _SpawningClock()
        sup = Supervisor(cfg.loads(text), text, 2, "all", clock)
        self.addCleanup(sup.datadir.stopService)
        self.addCleanup(lambda: [s.close() for s in sup.reserved])
        self.addCleanup(shutil.rmtree, sup.run_dir, True)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return sup, clock, events

    def servers_up(self, clock: _SpawningClock) -> None:
        _say(clock.live("data"), serving="data")
        _say(clock.live("meta"), store_open=True)

    def test_worker_exiting_before_ready_is_started_again(self) -> None:
        from claudefs_gateway.workers import RESTART_DELAY

        sup, clock, events = self.supervisor()
        d = defer.Deferred.fromCoroutine(sup.start())
        self.servers_up(clock)
        first = clock.live("worker-0")
        _say(clock.live("worker-1"), log_format="vfs open: 1 exports")
        _exit(first, 1, b"cfs-gateway: cannot open the store: Timeout: meta: no answer in 5s\n")
        self.assertNoResult(d)
        clock.advance(RESTART_DELAY)
        second = clock.live("worker-0")
        self.assertIsNot(second, first)
        self.assertEqual([n for n, _, _ in clock.spawned].count("worker-1"), 1)
        _say(second, log_format="vfs open: 1 exports")
        self.successResultOf(d)
        self.assertIsNone(sup.failed)
        warned = [e for e in events if "starting it again (attempt" in e.get("log_format", "")]
        self.assertEqual(len(warned), 1)
        self.assertIn("no answer in 5s", warned[0]["why"])
        self.assertTrue(any(e.get("workers") == 2 for e in events), "the supervisor's serving line")

    def test_gives_up_after_start_attempts_and_says_why(self) -> None:
        from claudefs_gateway.errors import GatewayError
        from claudefs_gateway.workers import RESTART_DELAY

        sup, clock, events = self.supervisor("workers: {start_attempts: 2}\n")
        d = defer.Deferred.fromCoroutine(sup.start())
        self.servers_up(clock)
        for _ in range(2):
            _exit(clock.live("worker-0"), 1, b"cfs-gateway: cannot open the store: Timeout: x\n")
            clock.advance(RESTART_DELAY)
        f = self.failureResultOf(d, GatewayError)
        self.assertEqual([n for n, _, _ in clock.spawned].count("worker-0"), 2)
        self.assertIn("worker-0 exited (1) before it was ready", str(f.value))
        self.assertIn("cannot open the store: Timeout: x", str(f.value))
        self.assertIn("attempt 2 of 2", str(f.value))
        self.assertEqual(sup.failed, f"cannot start: {f.value}")
        critical = [e["why"] for e in events if e.get("log_level") == LogLevel.critical]
        self.assertEqual(critical, [sup.failed])
        # The other worker, stopped with the rest, leaves no unhandled failure behind.
        self.successResultOf(defer.Deferred.fromCoroutine(self._stop(sup, clock)))
        import gc

        del f, d  # what they hold (the start's frames) goes too
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(), [])

    async def _stop(self, sup: Any, clock: _SpawningClock) -> None:
        d = defer.Deferred.fromCoroutine(sup.stop())
        for name in ("worker-1", "meta", "data"):
            child = clock.live(name)
            if not child.ended.called:
                _exit(child, 0)
        await d

    def test_server_exiting_before_ready_stops_the_start_with_its_cause(self) -> None:
        from claudefs_gateway.errors import GatewayError

        sup, clock, events = self.supervisor()
        d = defer.Deferred.fromCoroutine(sup.start())
        _say(clock.live("data"), serving="data")
        _exit(clock.live("meta"), 1, b"cfs-gateway: meta: store is locked\n")
        f = self.failureResultOf(d, GatewayError)
        self.assertIn(
            "meta exited (1) before it was ready: cfs-gateway: meta: store is locked", str(f.value)
        )
        self.assertFalse([n for n, _, _ in clock.spawned if n.startswith("worker-")])
        self.assertIn("store is locked", sup.failed)
        critical = [e["why"] for e in events if e.get("log_level") == LogLevel.critical]
        self.assertEqual(critical, [sup.failed])

    def test_server_that_never_gets_ready_stops_the_start_at_the_deadline(self) -> None:
        """
        A meta server hung before its store opened (it neither serves nor
        exits) stops the start after C{workers.ready_timeout_secs}: killed,
        one critical line saying which and why; it used to wait for ever.
        """
        from claudefs_gateway.errors import GatewayError

        sup, clock, events = self.supervisor("workers: {ready_timeout_secs: 30}\n")
        d = defer.Deferred.fromCoroutine(sup.start())
        _say(clock.live("data"), serving="data")
        meta = clock.live("meta")
        meta.errReceived(b"meta: opening the store\n")
        clock.advance(29.9)
        self.assertNoResult(d)
        self.assertEqual(meta.transport.signals, [])
        clock.advance(0.2)
        f = self.failureResultOf(d, GatewayError)
        self.assertEqual(
            str(f.value),
            "meta not ready (its store open) after 30s (workers.ready_timeout_secs); "
            "killed: meta: opening the store",
        )
        self.assertEqual(meta.transport.signals, ["KILL"])
        self.assertEqual(meta._waiters, [])
        self.assertFalse([n for n, _, _ in clock.spawned if n.startswith("worker-")])
        critical = [e["why"] for e in events if e.get("log_level") == LogLevel.critical]
        self.assertEqual(critical, [sup.failed])
        self.assertIn("workers.ready_timeout_secs", sup.failed)
        # Killed, it exits: nothing more is said, nothing waits.
        _exit(meta, -9)
        self.assertEqual(len([e for e in events if e.get("log_level") == LogLevel.critical]), 1)

    def test_worker_that_never_gets_ready_is_killed_and_started_again(self) -> None:
        from claudefs_gateway.workers import RESTART_DELAY

        sup, clock, events = self.supervisor("workers: {ready_timeout_secs: 30}\n")
        d = defer.Deferred.fromCoroutine(sup.start())
        self.servers_up(clock)
        hung = clock.live("worker-0")
        _say(clock.live("worker-1"), log_format="vfs open: 1 exports")
        clock.advance(30.1)
        self.assertEqual(hung.transport.signals, ["KILL"])
        _exit(hung, -9)
        clock.advance(RESTART_DELAY)
        second = clock.live("worker-0")
        self.assertIsNot(second, hung)
        _say(second, log_format="vfs open: 1 exports")
        self.successResultOf(d)
        warned = [
            e["why"] for e in events if "starting it again (attempt" in e.get("log_format", "")
        ]
        self.assertEqual(
            warned,
            ["worker-0 not ready (its vfs open) after 30s (workers.ready_timeout_secs); killed"],
        )

    def started(self, extra: str = "") -> tuple[Any, _SpawningClock, list[dict[str, Any]]]:
        sup, clock, events = self.supervisor(extra)
        d = defer.Deferred.fromCoroutine(sup.start())
        self.servers_up(clock)
        for name in ("worker-0", "worker-1"):
            _say(clock.live(name), log_format="vfs open: 1 exports")
        self.successResultOf(d)
        return sup, clock, events

    def test_stop_kills_a_child_that_ignores_sigterm(self) -> None:
        """
        A worker that ignores SIGTERM (hung on a disk) is killed once its drain
        and C{workers.stop_timeout_secs} have passed, with a line naming it,
        and the servers are stopped after it; the stop used to wait for ever.
        """
        # loopback_config's admin.drain_timeout_secs is 5.
        sup, clock, events = self.started("workers: {stop_timeout_secs: 10}\n")
        d = defer.Deferred.fromCoroutine(sup.stop())
        hung, other = clock.live("worker-0"), clock.live("worker-1")
        self.assertEqual(hung.transport.signals, ["TERM"])
        _exit(other, 0)
        clock.advance(14.9)
        self.assertEqual(hung.transport.signals, ["TERM"])
        self.assertEqual(clock.live("meta").transport.signals, [])
        clock.advance(0.2)
        self.assertEqual(hung.transport.signals, ["TERM", "KILL"])
        warned = [e for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual([e["process"] for e in warned], ["worker-0"])
        self.assertIn(
            "still running 15s after SIGTERM", warned[0]["log_format"].format(**warned[0])
        )
        _exit(hung, -9)
        meta = clock.live("meta")
        self.assertEqual(meta.transport.signals, ["TERM"])
        _exit(meta, 0)
        _exit(clock.live("data"), 0)
        self.successResultOf(d)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stop_goes_on_without_a_child_that_survives_sigkill(self) -> None:
        """
        A server in an uninterruptible wait outlives SIGKILL: after
        C{workers.stop_timeout_secs} more, an error line names it and the
        stop finishes (the data server is still stopped).
        """
        sup, clock, events = self.started("workers: {stop_timeout_secs: 10}\n")
        d = defer.Deferred.fromCoroutine(sup.stop())
        for name in ("worker-0", "worker-1"):
            _exit(clock.live(name), 0)
        meta, data = clock.live("meta"), clock.live("data")
        clock.advance(10.1)
        self.assertEqual(meta.transport.signals, ["TERM", "KILL"])
        self.assertEqual(data.transport.signals, [])
        clock.advance(10)
        self.assertEqual(data.transport.signals, ["TERM"])
        errors = [e for e in events if e.get("log_level") == LogLevel.error]
        self.assertEqual([e["process"] for e in errors], ["meta"])
        _exit(data, 0)
        self.successResultOf(d)
