"""
Tests for the bench's parallel clients (bench/parallel.py) and the workloads
built on them: phases kept in step across forked clients, a failing client's
error raised rather than a hang, and the aggregate rates and CPU per
operation each parallel workload reports. No server runs: the server's CPU
clock and the clients are fakes, the processes real.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bench import parallel
from bench.parallel import Phase, per_op, run_phases, sync
from bench.workloads import load_all


def _stepper(i: int, base: int) -> int:
    sync()
    sync()
    sync()
    return base + i


def _failing(i: int) -> None:
    sync()
    if i == 1:
        raise RuntimeError("client 1 failed")
    sync()
    sync()


def _counting(i: int, path: str) -> None:
    """Each client appends to a file per phase: the parent sees what each phase held."""
    sync()
    with open(f"{path}/phase1-{i}", "w") as f:
        f.write("x")
    sync()
    sync()


class RunPhasesTests(SynchronousTestCase):
    def setUp(self) -> None:
        # A broken barrier must fail a test within seconds, not hang it.
        self.patch(parallel, "TIMEOUT", 30.0)

    def test_phases_and_results(self) -> None:
        """
        One CPU reading per boundary, each phase's CPU the difference; the
        clients' results come back in client order.
        """
        readings = iter([10.0, 11.5, 14.0])
        phases, results = run_phases(3, 2, _stepper, (100,), clock=readings.__next__)
        self.assertEqual([p.cpu for p in phases], [1.5, 2.5])
        self.assertTrue(all(p.wall > 0 for p in phases))
        self.assertEqual(results, [100, 101, 102])

    def test_phase_ends_when_every_client_is_done(self) -> None:
        """The reading that ends phase 1 comes after every client's phase-1 work."""
        where = Path(self.mktemp())
        where.mkdir()
        seen: list[int] = []

        def clock() -> float:
            seen.append(len(list(where.iterdir())))
            return 0.0

        run_phases(4, 2, _counting, (str(where),), clock=clock)
        self.assertEqual(seen, [0, 4, 4])

    def test_failing_client_raises_its_error(self) -> None:
        """
        A client that fails breaks the others' wait at once (not after the
        barrier's timeout); its own error is raised, not a broken barrier.
        """
        start = time.monotonic()
        with self.assertRaises(RuntimeError) as caught:
            run_phases(3, 2, _failing, clock=lambda: 0.0)
        self.assertEqual(str(caught.exception), "client 1 failed")
        self.assertLess(time.monotonic() - start, parallel.TIMEOUT / 2)


def _burner(i: int, seconds: float) -> None:
    """Phase 1 burns C{seconds} of CPU in this client, phase 2 as much in a child it reaps."""
    sync()
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    sync()
    code = (
        f"import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    sync()
    sync()


class ClientCPUTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.patch(parallel, "TIMEOUT", 60.0)

    def test_each_phase_has_its_clients_cpu(self) -> None:
        """
        The clients' CPU of a phase is what they (and the children they
        reaped: an nfs-cp, an smbclient) spent in it, not in another phase.
        """
        phases, _ = run_phases(2, 3, _burner, (0.3,), clock=lambda: 0.0)
        burnt, child, idle = (p.clients for p in phases)
        # Two clients x 0.3 s each (clock ticks of 10 ms).
        self.assertGreaterEqual(burnt, 0.55)
        self.assertGreaterEqual(child, 0.55)
        self.assertLess(idle, 0.1)


class PerOpTests(SynchronousTestCase):
    def test_rates_and_cpu(self) -> None:
        """ops over all clients / the phase's wall time; CPU per op in microseconds."""
        got = per_op(
            [Phase(2.0, 0.5, 0.25), Phase(4.0, 0.1)],
            1000,
            ("c/s", "server CPU us/c", "d/s", "server CPU us/d"),
        )
        self.assertEqual(
            got,
            {
                "c/s": 500.0,
                "server CPU us/c": 500.0,
                "clients CPU us/c": 250.0,
                "d/s": 250.0,
                "server CPU us/d": 100.0,
                "clients CPU us/d": 0.0,
            },
        )

    def test_names_must_match_phases(self) -> None:
        self.assertRaises(ValueError, per_op, [Phase(1.0, 1.0)], 1, ("a/s",))


def _fake_run_phases(phases: list[Phase]) -> Any:
    calls: list[tuple[Any, ...]] = []

    def fake(n: int, count: int, client: Any, args: tuple[Any, ...] = (), **kw: Any) -> Any:
        calls.append((n, count, client, args, kw))
        return phases[:count], [None] * n

    return fake, calls


class ParallelWorkloadTests(SynchronousTestCase):
    """The parallel workloads: registered, and what they report from their phases."""

    def test_registered_with_cpu_metrics(self) -> None:
        registry = load_all()
        for name, proto in (
            ("nfs.seq_write_parallel", "nfs"),
            ("nfs.small_files_parallel", "nfs"),
            ("smb.small_files_parallel", "smb"),
        ):
            w = registry[name]
            self.assertEqual(w.protocol, proto)
            self.assertTrue(
                any(m.name.startswith("server CPU") for m in w.metrics), f"{name}: no CPU metric"
            )

    def test_nfs_small_files_parallel(self) -> None:
        from bench.workloads import nfs

        fake, calls = _fake_run_phases([Phase(2.0, 1.0), Phase(1.0, 0.5)])
        self.patch(nfs, "run_phases", fake)
        self.patch(nfs, "_settle", lambda e: None)
        self.patch(nfs, "PARALLEL", 4)
        self.patch(nfs, "SMALL_FILES", 250)
        got = nfs.small_files_parallel({"pid": 1234}, Path(self.mktemp()))
        # 4 clients x 250 files in each phase.
        self.assertEqual(got["create/s"], 500.0)
        self.assertEqual(got["unlink/s"], 1000.0)
        self.assertEqual(got["server CPU us/create"], 1000.0)
        self.assertEqual(got["server CPU us/unlink"], 500.0)
        ((n, count, _, _, kw),) = calls
        self.assertEqual((n, count, kw["pid"]), (4, 2, 1234))
        self.assertEqual(set(got), {m.name for m in load_all()["nfs.small_files_parallel"].metrics})

    def test_nfs_seq_write_parallel(self) -> None:
        """Each client copies SEQ_MB / PARALLEL MiB: the aggregate is the sum over the wall."""
        from bench.workloads import nfs

        scratch = Path(self.mktemp())
        scratch.mkdir()
        fake, calls = _fake_run_phases([Phase(0.5, 0.032)])
        self.patch(nfs, "run_phases", fake)
        self.patch(nfs, "_settle", lambda e: None)
        self.patch(nfs, "PARALLEL", 2)
        self.patch(nfs, "SEQ_MB", 32)
        got = nfs.seq_write_parallel({"pid": 1}, scratch / "run")
        # 2 x 16 MiB in 0.5 s; 32 ms of CPU for 32 MiB.
        self.assertAlmostEqual(got["MB/s"], 32 * 2**20 / 0.5 / 1e6)
        self.assertAlmostEqual(got["server CPU ms/MiB"], 1.0)
        ((n, count, client, args, _),) = calls
        self.assertEqual((n, count), (2, 1))
        self.assertEqual(Path(args[1]).stat().st_size, 16 << 20)
        self.assertEqual(set(got), {m.name for m in load_all()["nfs.seq_write_parallel"].metrics})

    def test_smb_small_files_parallel(self) -> None:
        from bench.workloads import smb

        fake, calls = _fake_run_phases([Phase(3.0, 0.6), Phase(1.5, 0.3)])
        self.patch(smb, "run_phases", fake)
        self.patch(smb, "PARALLEL", 3)
        got = smb.small_files_parallel({"pid": 7}, Path(self.mktemp()))
        total = smb.SMALL_COUNT * 3
        self.assertAlmostEqual(got["creates/s"], total / 3.0)
        self.assertAlmostEqual(got["deletes/s"], total / 1.5)
        self.assertAlmostEqual(got["server CPU us/create"], 0.6e6 / total)
        self.assertAlmostEqual(got["server CPU us/delete"], 0.3e6 / total)
        ((n, count, _, _, kw),) = calls
        self.assertEqual((n, count, kw["pid"]), (3, 2, 7))
        self.assertEqual(set(got), {m.name for m in load_all()["smb.small_files_parallel"].metrics})


def _sigterm_default(i: int) -> bool:
    sync()
    return signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


class InheritedSignalTests(SynchronousTestCase):
    def test_clients_take_default_sigterm(self) -> None:
        """
        A forked client does not keep its parent's SIGTERM handler: under a
        reactor (a trial worker's) that handler only schedules a stop, so a
        client the pool terminates would stay and the pool's join hang.
        """
        old = signal.signal(signal.SIGTERM, lambda *a: None)
        self.addCleanup(signal.signal, signal.SIGTERM, old)
        self.assertEqual(run_phases(2, 0, _sigterm_default, clock=lambda: 0.0)[1], [True, True])
