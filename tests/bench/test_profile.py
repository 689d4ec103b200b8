"""
Tests for bench's profiling and CPU accounting (bench/profile.py,
bench/serverstat.py): parsing py-spy's collapsed stacks, the summary and the
flame graph drawn from them, and reading a process's CPU clock. No timing is
asserted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bench import profile, runner, serverstat
from bench.stats import Metric
from bench.workloads import Workload
from tests.bench.test_runner import FakeTarget

STACKS = """\
thread (10): MainThread;main (cli.py:1);handle (claudefs_gateway/rpc/server.py:10);parse (x/message.py:3) 30
thread (10): MainThread;main (cli.py:1);handle (claudefs_gateway/rpc/server.py:10) 10
thread (11): cfs-embedded-writer;_run (x/_writer.py:5);run_batch (x/_engine.py:9) 60
garbage line without a count
"""


class ProfileTests(SynchronousTestCase):
    def stacks(self) -> Path:
        path = Path(self.mktemp())
        path.write_text(STACKS)
        return path

    def test_load(self) -> None:
        """Collapsed stacks load as frame tuples with their counts; other lines are ignored."""
        got = profile.load(self.stacks())
        self.assertEqual(sum(got.values()), 100)
        self.assertEqual(len(got), 3)

    def test_summary(self) -> None:
        """The summary gives shares by thread, by self frame and by inclusive frame."""
        text = profile.summary(profile.load(self.stacks()))
        self.assertIn("100 busy samples (0 idle left out)", text)
        self.assertIn("60.0%  thread (11): cfs-embedded-writer", text)
        self.assertIn("60.0%  run_batch (_engine.py)", text)
        self.assertIn("30.0%  parse (message.py)", text)
        # handle is on the stack of 40 samples, 10 of them its own.
        self.assertIn("40.0%  handle (server.py)", text)
        self.assertIn("10.0%  handle (server.py)", text)

    def test_flamegraph(self) -> None:
        """The SVG has one titled frame per distinct (stack prefix) node."""
        svg = profile.flamegraph(profile.load(self.stacks()), "t")
        self.assertTrue(svg.startswith("<svg"))
        self.assertTrue(svg.rstrip().endswith("</svg>"))
        self.assertEqual(svg.count("<title>"), 7)
        self.assertIn("run_batch (x/_engine.py:9) (60 samples, 60.00%)", svg)

    def test_idle_left_out(self) -> None:
        stacks = profile.load(self.stacks())
        stacks[("thread (10): MainThread", "main (cli.py:1)", "EPollReactor.doPoll (x.py:3)")] = 900
        text = profile.summary(stacks)
        self.assertIn("100 busy samples (900 idle left out)", text)

    def test_empty(self) -> None:
        self.assertEqual(profile.summary({}), "no samples\n")
        self.assertIn("</svg>", profile.flamegraph({}, "t"))

    def test_runner_profiles_timed_runs_only(self) -> None:
        """The profiler starts after prepare and stops after the last run, even if one fails."""
        events: list[str] = []

        class FakeProfiler:
            stem = Path("x")

            def start(self) -> None:
                events.append("start")

            def stop(self) -> str:
                events.append("stop")
                return "1 samples\n"

        def prepare(endpoints: dict[str, Any], scratch: Path) -> None:
            events.append("prepare")

        def run(endpoints: dict[str, Any], scratch: Path) -> dict[str, float]:
            events.append("run")
            if events.count("run") == 2:
                raise RuntimeError("boom")
            return {"x": 1.0}

        w = Workload("fake.p", "nfs", (Metric("x", "u"),), run, prepare=prepare)
        with self.assertRaises(RuntimeError):
            runner.run_workload(
                w,
                FakeTarget("gw"),
                None,
                3,
                Path(self.mktemp()),
                log=lambda s: None,
                profiler=FakeProfiler(),  # type: ignore[arg-type]
            )
        self.assertEqual(events, ["prepare", "start", "run", "run", "stop"])


class ServerStatTests(SynchronousTestCase):
    def test_process_cpu(self) -> None:
        """Our own CPU clock, read as another process's would be, moves forward with work."""
        before = serverstat.process_cpu(os.getpid())
        x = 0
        for i in range(300_000):
            x += i
        self.assertGreater(serverstat.process_cpu(os.getpid()), before)
        self.assertGreaterEqual(serverstat.family_cpu(os.getpid()), before)

    def test_measured(self) -> None:
        result, used = serverstat.measured(None, lambda: 7)
        self.assertEqual((result, used), (7, 0.0))
        result, used = serverstat.measured(os.getpid(), lambda: sum(range(200_000)))
        self.assertEqual(result, sum(range(200_000)))
        self.assertGreaterEqual(used, 0.0)

    def test_tree_cpu_counts_live_children(self) -> None:
        """
        A live child's CPU is in L{serverstat.tree_cpu} (smbd's connection
        process, alive while a workload holds its session), not in
        L{serverstat.family_cpu} until it is reaped.
        """
        import subprocess
        import sys

        code = "import sys; sum(range(2_000_000)); print('done', flush=True); sys.stdin.read()"
        child = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        try:
            assert child.stdout is not None
            self.assertEqual(child.stdout.readline(), b"done\n")
            # The child now waits on its stdin: its CPU time stays put.
            spent = serverstat.process_cpu(child.pid)
            self.assertGreater(spent, 0.0)
            own = serverstat.family_cpu(os.getpid())
            tree = serverstat.tree_cpu(os.getpid())
            self.assertGreaterEqual(tree - own, spent)
        finally:
            assert child.stdin is not None
            child.stdin.close()
            child.wait()
