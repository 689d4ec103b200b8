"""
What a server process spent: CPU time, read from outside the process.

Wall time on a shared machine mostly measures the machine; the CPU a server
spends per operation is steady from run to run, so every workload reports it
beside its rate.

L{process_cpu} reads the process's CPU-time clock (C{clock_getcpuclockid(3)}:
every thread, including threads that have exited, in nanoseconds), so even a
few milliseconds of work measure well. L{family_cpu} adds the children the
process has reaped (C{cutime + cstime} from C{/proc/<pid>/stat}, in clock
ticks), for servers that fork a process per connection (Samba's smbd).

L{server_cpus} and L{pin} confine the servers under test to a CPU list
(``--server-cpus``, ``CFS_BENCH_SERVER_CPUS``): how far a second core takes
a server is only seen against the same server on one (docs/bench.rst "How
far a second core can go here"). The affinity is set in the child before it
runs the server, so every thread and every process it starts (smbd's
per-connection children, the supervisor's workers and meta and data
servers) inherits it; L{check_pinned} verifies that it held.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

__all__ = [
    "process_cpu",
    "family_cpu",
    "tree_cpu",
    "measured",
    "children",
    "parse_cpus",
    "server_cpus",
    "pin",
    "check_pinned",
    "client_pinned",
    "tree_wait",
    "thread_wait",
]

T = TypeVar("T")
_TICK = os.sysconf("SC_CLK_TCK")
# CPUCLOCK_SCHED of a whole process (the thread group): what
# clock_getcpuclockid(3) returns, (~pid << 3) | 2.
_CPUCLOCK_SCHED = 2
#: The environment variable naming the CPUs the servers under test may use.
PIN_ENV = "CFS_BENCH_SERVER_CPUS"
#: Where the process information is (a test points it elsewhere).
PROC = "/proc"
#: The one naming the CPUs the bench's own client may use (``--client-cpus``).
CLIENT_PIN_ENV = "CFS_BENCH_CLIENT_CPUS"


def parse_cpus(text: str) -> frozenset[int]:
    """A CPU list as taskset(1) -c takes it ("0", "0,1", "0-3"); @raise ValueError: bad or empty."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        first, last = int(lo), int(hi) if hi else int(lo)
        if first < 0 or last < first:
            raise ValueError(f"bad CPU range {part!r}")
        cpus.update(range(first, last + 1))
    if not cpus:
        raise ValueError(f"no CPUs in {text!r}")
    return frozenset(cpus)


def server_cpus() -> frozenset[int] | None:
    """The CPUs the servers under test are confined to, or None (not confined)."""
    text = os.environ.get(PIN_ENV, "")
    return parse_cpus(text) if text.strip() else None


def pin() -> Callable[[], None] | None:
    """
    A C{preexec_fn} for C{subprocess.Popen} of a server under test that
    confines it to L{server_cpus}, or None when they are not set.
    """
    cpus = server_cpus()
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def _tree_tasks(pid: int) -> Iterator[tuple[int, int]]:
    """
    (process id, thread id) of every thread of C{pid} and of its live
    descendants (from L{PROC}; gone ones skipped).
    """
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"{PROC}/{p}/task")
        except OSError:
            continue
        for task in tasks:
            yield p, int(task)
        todo += _child_pids(p)


def tree_affinity(pid: int) -> dict[int, frozenset[int]]:
    """The CPU affinity of every thread of C{pid} and of its live descendants, by thread id."""
    out: dict[int, frozenset[int]] = {}
    for _, task in _tree_tasks(pid):
        try:
            out[task] = frozenset(os.sched_getaffinity(task))
        except OSError:
            pass  # gone meanwhile
    return out


def check_pinned(pid: int, cpus: frozenset[int]) -> int:
    """
    The number of threads in C{pid}'s tree, all confined to C{cpus};
    @raise RuntimeError: one of them may run elsewhere (the pinning did not hold).
    """
    got = tree_affinity(pid)
    wrong = {t: sorted(a) for t, a in got.items() if a != cpus}
    if wrong or not got:
        raise RuntimeError(f"server {pid} not confined to CPUs {sorted(cpus)}: {wrong or 'gone'}")
    return len(got)


@contextmanager
def client_pinned(cpus: frozenset[int] | None) -> Iterator[None]:
    """
    Confine the calling thread (the bench's client: the queue-depth-1
    workloads call libnfs on it, and the client processes and C{nfs-cp} it
    starts inherit it) to C{cpus} for the block, then give it back the CPUs
    it had; None leaves it alone. Entered once the servers run, so they do
    not inherit it. With L{pin}, it puts client and server on one core or
    on two: at queue depth 1 the client's CPU per call depends on that more
    than on the server (docs/bench.rst "The client's CPU per call").
    """
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def process_cpu(pid: int) -> float:
    """CPU seconds every thread of C{pid} has used so far (nanosecond resolution)."""
    try:
        return time.clock_gettime_ns(((~pid) << 3) | _CPUCLOCK_SCHED) / 1e9
    except OSError:
        # No CPU clock for another process here: fall back to /proc (ticks).
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK


def family_cpu(pid: int) -> float:
    """L{process_cpu} plus the CPU of the children C{pid} has reaped."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # cutime, cstime are fields 16-17 (1-based); [0] here is field 3.
    return process_cpu(pid) + (int(fields[13]) + int(fields[14])) / _TICK


def _child_pids(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return out


def tree_cpu(pid: int) -> float:
    """
    L{family_cpu} of C{pid} and of every live descendant: a server that
    forks a process per connection (smbd), measured while a connection is
    still open. A child that exits between two readings is counted once it
    is reaped (its parent's C{cutime}); call L{settle} before the last reading.
    """
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            total += family_cpu(p) if p == pid else _family_cpu_or_zero(p)
        except OSError:
            continue
        todo += _child_pids(p)
    return total


def _run_delay(path: str) -> float:
    """
    The second field of a C{schedstat} file (seconds spent runnable but
    waiting for a CPU), 0 where the kernel keeps none (no C{CONFIG_SCHED_INFO})
    or the thread is gone.
    """
    try:
        with open(path) as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def tree_wait(pid: int) -> float:
    """
    Seconds every thread of C{pid} and of its live descendants has spent
    runnable but not running (waiting on a run queue, C{/proc/<tid>/schedstat}):
    at queue depth 1, the part of a round trip where the server had its call
    and no CPU. A thread that exits takes its count with it (the servers
    under test keep theirs for the run).
    """
    return sum(_run_delay(f"{PROC}/{p}/task/{t}/schedstat") for p, t in _tree_tasks(pid))


def thread_wait() -> float:
    """L{tree_wait} of the calling thread alone (the bench's client)."""
    return _run_delay(f"{PROC}/thread-self/schedstat")


def _family_cpu_or_zero(pid: int) -> float:
    try:
        return family_cpu(pid)
    except (OSError, ValueError, IndexError):
        return 0.0  # gone meanwhile: its parent's cutime has it once reaped


def children(pid: int) -> int:
    """Live children of C{pid}."""
    return len(_child_pids(pid))


def settle(pid: int, before: int, deadline: float = 10.0) -> None:
    """Wait (bounded) until the children a run started have been reaped."""
    done = threading.Event()
    end = time.monotonic() + deadline
    while time.monotonic() < end and children(pid) > before:
        done.wait(0.02)


def measured(pid: int | None, run: Callable[[], T]) -> tuple[T, float]:
    """C{run()}'s result and the CPU seconds server C{pid} spent meanwhile (0 without a pid)."""
    if pid is None:
        return run(), 0.0
    cpu0 = process_cpu(pid)
    result = run()
    return result, process_cpu(pid) - cpu0
