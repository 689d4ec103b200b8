"""
Several client processes driving one server at once, phase by phase.

A client that sends one call after another can only ever use one worker of
``cfs-gateway start --workers N`` (its connection is one worker's), so the
rows that compare ``--workers`` with one process need clients in parallel,
as users have them. L{run_phases} forks N clients and keeps their phases in
step with a barrier, so each phase is timed and its server CPU read from
the moment the last client is ready to the moment the last one is done:
aggregate rates, and CPU per operation that belongs to one phase (a fast
client's deletes never overlap a slow one's creates).

The clients share the machine's cores with the server: on two cores, four
clients and a gateway with two workers and its meta and data servers are
seven busy processes.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs

from bench.serverstat import children, settle, tree_cpu

__all__ = ["Phase", "per_op", "run_phases", "sync"]

# The barrier of the clients a run_phases forked (set in each client process).
_barrier: Any = None
# A phase that takes longer than this has a stuck client: fail, don't hang.
TIMEOUT = 1800.0


@attrs.frozen
class Phase:
    """One phase of all the clients: wall seconds and server CPU seconds."""

    wall: float
    cpu: float


def _init(barrier: Any) -> None:
    global _barrier
    _barrier = barrier
    # A forked client inherits its parent's Python signal handlers: under a
    # reactor (trial's workers run one) SIGTERM only schedules a reactor stop,
    # so the pool's terminate() at the end of run_phases would never end an
    # idle client and its join would hang.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def sync() -> None:
    """
    In a client: the end of one phase and the start of the next. Returns
    once every client has reached it and the parent has read the server's
    CPU clock.
    """
    assert _barrier is not None, "sync() outside a client of run_phases"
    _barrier.wait()  # all here: the parent reads the clocks
    _barrier.wait()  # the parent read them: go


def _client(fn: Callable[..., Any], i: int, args: tuple[Any, ...]) -> Any:
    try:
        return fn(i, *args)
    except BaseException:
        # The others (and the parent) would wait for this one for ever.
        _barrier.abort()
        raise


def _server_clock(pid: int | None) -> Callable[[], float]:
    """The server tree's CPU seconds, once its per-connection children are reaped."""
    if pid is None:
        return lambda: 0.0
    baseline = children(pid)

    def read() -> float:
        settle(pid, baseline)
        return tree_cpu(pid)

    return read


def run_phases(
    n: int,
    phases: int,
    client: Callable[..., Any],
    args: tuple[Any, ...] = (),
    pid: int | None = None,
    clock: Callable[[], float] | None = None,
) -> tuple[list[Phase], list[Any]]:
    """
    Run C{client(i, *args)} in C{n} forked processes (i = 0 .. n-1). Each
    client does its untimed setup, calls L{sync}, and then calls L{sync}
    after each of its C{phases} phases; what it returns comes back in the
    second list, in order. The first list has each phase's wall time (from
    the last client's start to the last client's end) and the CPU server
    C{pid}'s process tree spent meanwhile (C{clock} replaces the reading).

    A client that fails breaks the barrier for the others, and its
    exception is raised here.
    """
    read = clock or _server_clock(pid)
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(n + 1, timeout=TIMEOUT)
    marks: list[tuple[float, float]] = []
    with ctx.Pool(n, initializer=_init, initargs=(barrier,)) as pool:
        pending = [pool.apply_async(_client, (client, i, args)) for i in range(n)]
        try:
            for _ in range(phases + 1):
                barrier.wait()  # every client at the boundary
                marks.append((time.perf_counter(), read()))
                barrier.wait()  # let them go
        except threading.BrokenBarrierError as broken:
            errors: list[BaseException] = []
            for p in pending:
                try:
                    p.get(TIMEOUT)
                except BaseException as e:  # noqa: BLE001 - collected, one is raised
                    errors.append(e)
            # The client that failed first, not the others' broken barriers.
            cause = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
            raise (cause or errors or [broken])[0] from None
        results = [p.get(TIMEOUT) for p in pending]
        # Let the clients end on their own (close sends each its sentinel):
        # the with's terminate() alone can race its own drain of the queue
        # and leave an idle client waiting for a sentinel it took away.
        pool.close()
        pool.join()
    return [
        Phase(t1 - t0, c1 - c0) for (t0, c0), (t1, c1) in zip(marks, marks[1:], strict=False)
    ], results


def per_op(
    phases: list[Phase], ops: float, names: tuple[str, ...], cpu_scale: float = 1e6
) -> dict[str, float]:
    """
    Aggregate rates and server CPU per operation of L{run_phases}' phases,
    C{ops} operations in each (all clients together). C{names} gives each
    phase's rate and CPU metric in turn (C{rate, cpu, rate, cpu, ...});
    CPU seconds are scaled by C{cpu_scale} (1e6: microseconds).
    """
    if len(names) != 2 * len(phases):
        raise ValueError(f"{len(phases)} phases, {len(names)} names")
    out: dict[str, float] = {}
    for k, phase in enumerate(phases):
        out[names[2 * k]] = ops / phase.wall
        out[names[2 * k + 1]] = phase.cpu * cpu_scale / ops
    return out
