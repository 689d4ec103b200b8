"""
The bench's confinement of the servers under test to a CPU list
(``--server-cpus``, bench/serverstat.py): parsed as taskset(1) takes it,
set in the server's process before it runs so its children inherit it, and
checked over the whole process tree. Real processes, no server.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from bench import runner, serverstat, targets
from bench.stats import Metric
from bench.workloads import Workload


class ParseTests(SynchronousTestCase):
    def test_lists_and_ranges(self) -> None:
        self.assertEqual(serverstat.parse_cpus("0"), {0})
        self.assertEqual(serverstat.parse_cpus("0-2,5"), {0, 1, 2, 5})
        for bad in ("", ",", "2-1", "x", "-1"):
            self.assertRaises(ValueError, serverstat.parse_cpus, bad)

    def test_runner_refuses_a_bad_list(self) -> None:
        with self.assertRaises(SystemExit):
            runner.main(["-w", "admin.health", "--server-cpus", "1-0"])


class PinTests(SynchronousTestCase):
    def setUp(self) -> None:
        mine = os.sched_getaffinity(0)
        if len(mine) < 2:
            raise SkipTest("needs two CPUs to tell a confined process from another")
        self.one = min(mine)
        self.patch(os, "environ", dict(os.environ, **{serverstat.PIN_ENV: str(self.one)}))

    def _tree(self, preexec: Any) -> subprocess.Popen[bytes]:
        # A shell with a child of its own, as smbd forks one per connection.
        proc = subprocess.Popen(
            ["sh", "-c", "sleep 60 & wait"], preexec_fn=preexec, stdout=subprocess.DEVNULL
        )
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        self.addCleanup(lambda: [os.kill(c, 9) for c in serverstat._child_pids(proc.pid)])
        for _ in range(1000):
            if serverstat._child_pids(proc.pid):
                break
            os.sched_yield()
        return proc

    def test_children_inherit(self) -> None:
        """A server started with pin() and the process it forks run on the CPUs named alone."""
        proc = self._tree(serverstat.pin())
        affinity = serverstat.tree_affinity(proc.pid)
        self.assertEqual(len(affinity), 2, "the shell and its sleep")
        self.assertEqual(set(affinity.values()), {frozenset({self.one})})
        self.assertEqual(serverstat.check_pinned(proc.pid, frozenset({self.one})), 2)

    def test_unconfined_is_caught(self) -> None:
        """A tree started without it fails the check, naming the threads that may run elsewhere."""
        proc = self._tree(None)
        self.assertRaises(RuntimeError, serverstat.check_pinned, proc.pid, frozenset({self.one}))

    def test_no_list_no_pin(self) -> None:
        del os.environ[serverstat.PIN_ENV]
        self.assertIsNone(serverstat.pin())
        self.assertIsNone(serverstat.server_cpus())

    def test_gateway_started_confined(self) -> None:
        """The gateway's Popen (the --workers supervisor and all it starts) gets the pin."""
        seen: dict[str, Any] = {}

        def popen(argv: list[str], **kw: Any) -> Any:
            seen.update(kw)
            raise OSError("not started in this test")

        self.patch(targets.subprocess, "Popen", popen)
        g = targets.Gateway(Path(self.mktemp()), ["nfs"], workers=2)
        self.assertRaises(OSError, g.start)
        self.assertIsNotNone(seen["preexec_fn"])


class ClientPinTests(SynchronousTestCase):
    """
    ``--client-cpus``: the bench's own client runs on the CPUs named, the
    servers (started before) do not inherit it, and the thread gets its CPUs
    back at the end (docs/bench.rst "The client's CPU per call").
    """

    def setUp(self) -> None:
        self.mine = os.sched_getaffinity(0)
        if len(self.mine) < 2:
            raise SkipTest("needs two CPUs to tell a confined process from another")
        self.one = min(self.mine)
        self.seen: dict[str, set[int]] = {}
        seen = self.seen

        class Server(targets.Target):
            name = "gateway"

            def __init__(self, scratch: Path, *a: Any, **kw: Any) -> None:
                super().__init__(scratch)

            def start(self) -> None:
                seen["server"] = os.sched_getaffinity(0)
                self.endpoints = {"pid": os.getpid()}

        def run(endpoints: dict[str, Any], scratch: Path) -> dict[str, float]:
            seen["client"] = os.sched_getaffinity(0)
            return {"ops/s": 1.0}

        w = Workload("fake.pin", "admin", (Metric("ops/s", "ops/s"),), run)
        self.patch(runner, "load_all", lambda: {w.name: w})
        self.patch(targets, "Gateway", Server)
        self.patch(os, "environ", dict(os.environ))
        os.environ.pop(serverstat.CLIENT_PIN_ENV, None)

    def _main(self, *extra: str) -> dict[str, Any]:
        out = Path(self.mktemp())
        argv = ["-w", "fake.pin", "--runs", "1", "--json", str(out), *extra]
        self.assertEqual(runner.main([*argv, "--scratch", self.mktemp()]), 0)
        result: dict[str, Any] = json.loads(out.read_text())
        return result

    def test_client_confined_servers_not(self) -> None:
        got = self._main("--client-cpus", str(self.one))
        self.assertEqual(self.seen["server"], self.mine)
        self.assertEqual(self.seen["client"], {self.one})
        self.assertEqual(os.sched_getaffinity(0), self.mine, "given back")
        self.assertEqual(got["meta"]["client_cpus"], [self.one])

    def test_unconfined_by_default(self) -> None:
        got = self._main()
        self.assertEqual(self.seen["client"], self.mine)
        self.assertIsNone(got["meta"]["client_cpus"])

    def test_runner_refuses_a_bad_list(self) -> None:
        with self.assertRaises(SystemExit):
            runner.main(["-w", "fake.pin", "--client-cpus", "3-1"])


class WaitTests(SynchronousTestCase):
    """
    L{serverstat.tree_wait}: the run-queue wait (schedstat's second field) of
    every thread of a server and of its children, read from a fake /proc.
    """

    def setUp(self) -> None:
        proc = Path(self.mktemp())
        # Server 10 with two threads and a child 11 (smbd's per-connection
        # process); 12 is not in its tree.
        for pid, tid, line in [
            (10, 10, "500 2000000 7"),
            (10, 13, "100 3000000 2"),
            (11, 11, "100 500000 1"),
            (12, 12, "100 9000000 1"),
        ]:
            d = proc / str(pid) / "task" / str(tid)
            d.mkdir(parents=True)
            (d / "schedstat").write_text(line + "\n")
        (proc / "thread-self").mkdir()
        (proc / "thread-self" / "schedstat").write_text("1 250000 3\n")
        self.patch(serverstat, "PROC", str(proc))
        self.patch(serverstat, "_child_pids", lambda pid: [11] if pid == 10 else [])

    def test_threads_and_children(self) -> None:
        self.assertAlmostEqual(serverstat.tree_wait(10), 0.0055)
        self.assertAlmostEqual(serverstat.tree_wait(11), 0.0005)

    def test_own_thread(self) -> None:
        self.assertAlmostEqual(serverstat.thread_wait(), 0.00025)

    def test_gone_is_zero(self) -> None:
        self.assertEqual(serverstat.tree_wait(99), 0.0)

    def test_real_process(self) -> None:
        """On this kernel: a number, and one that does not go back."""
        self.patch(serverstat, "PROC", "/proc")
        first = serverstat.tree_wait(os.getpid())
        self.assertGreaterEqual(first, 0.0)
        self.assertGreaterEqual(serverstat.tree_wait(os.getpid()), first)
