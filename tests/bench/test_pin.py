"""
The bench's confinement of the servers under test to a CPU list
(``--server-cpus``, bench/serverstat.py): parsed as taskset(1) takes it,
set in the server's process before it runs so its children inherit it, and
checked over the whole process tree. Real processes, no server.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from bench import runner, serverstat, targets


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
