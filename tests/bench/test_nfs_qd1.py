"""
The queue-depth-1 NFS workloads split each round trip into the client's CPU,
the server's CPU and the time neither ran (docs/bench.rst "Queue depth one:
where the round trip goes"), driven here by a fake libnfs binding.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bench.workloads import REGISTRY, nfs

#: CPU seconds the fake client spends per call, and the fake server's.
CLIENT_CPU = 50e-6
SERVER_CPU = 100e-6
#: Seconds each side waits on a run queue per call (schedstat's run delay).
SERVER_WAIT = 30e-6
CLIENT_WAIT = 7e-6


class FakeBinding:
    """
    The few calls of the libnfs binding the qd1 workloads make: each burns
    C{CLIENT_CPU} of this process's CPU and adds C{SERVER_CPU} to a fake
    server's CPU clock (read through C{tree_cpu}).
    """

    def __init__(self) -> None:
        self.server = 0.0
        self.server_wait = 0.0
        self.client_wait = 0.0
        self.calls = 0
        binding = self

        class File:
            _nfsfh = object()

            def close(self) -> None:
                pass

        class NFS:
            _nfs = object()

            def __init__(self, url: str) -> None:
                pass

            def open(self, path: str, mode: str) -> File:
                return File()

        self.NFS = NFS
        self.nfs_stat_64 = object

        def work() -> None:
            binding.calls += 1
            binding.server += SERVER_CPU
            binding.server_wait += SERVER_WAIT
            binding.client_wait += CLIENT_WAIT
            until = time.process_time() + CLIENT_CPU
            while time.process_time() < until:
                pass

        def nfs_fstat64(raw: Any, handle: Any, st: Any) -> int:
            work()
            return 0

        def nfs_pread(raw: Any, handle: Any, off: int, n: int, buf: Any) -> int:
            work()
            return n

        self.nfs_fstat64 = nfs_fstat64
        self.nfs_pread = nfs_pread


class RoundTripSplitTests(SynchronousTestCase):
    OPS = 40

    def setUp(self) -> None:
        self.lib = FakeBinding()
        self.patch(nfs, "_binding", lambda: self.lib)
        self.patch(nfs, "OPS", self.OPS)
        self.patch(nfs, "tree_cpu", lambda pid: self.lib.server)
        self.patch(nfs, "tree_wait", lambda pid: self.lib.server_wait)
        self.patch(nfs, "thread_wait", lambda: self.lib.client_wait)
        self.e = {
            "host": "127.0.0.1",
            "export": "/export",
            "nfs_port": 1,
            "mount_port": 2,
            "pid": 1,
        }

    def check(self, name: str, rate_key: str) -> None:
        workload = REGISTRY[name]
        got = workload.run(self.e, Path("unused"))
        self.assertEqual({m.name for m in workload.metrics}, set(got))
        # Each timed call cost the fake server SERVER_CPU (the warm-up is not timed).
        self.assertAlmostEqual(got["server CPU us/op"], SERVER_CPU * 1e6, places=3)
        self.assertGreaterEqual(got["client CPU us/op"], CLIENT_CPU * 1e6)
        # What is left of the round trip once both sides' CPU is taken out.
        per_op = 1e6 / got[rate_key]
        self.assertAlmostEqual(
            got["off-CPU us/op"],
            per_op - got["client CPU us/op"] - got["server CPU us/op"],
            places=3,
        )
        # Of it, each side's time on a run queue over the timed calls alone.
        self.assertAlmostEqual(got["server wait us/op"], SERVER_WAIT * 1e6, places=3)
        self.assertAlmostEqual(got["client wait us/op"], CLIENT_WAIT * 1e6, places=3)

    def test_getattr(self) -> None:
        self.check("nfs.getattr_qd1", "ops/s")
        self.assertEqual(self.lib.calls, 200 + self.OPS)

    def test_random_read(self) -> None:
        self.check("nfs.rand_read_qd1", "IOPS")
        self.assertEqual(self.lib.calls, min(200, self.OPS) + self.OPS)
