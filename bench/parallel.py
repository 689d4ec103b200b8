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
seven busy processes. So each phase also has the clients' CPU (each
client's own and its reaped children's, an ``nfs-cp`` or ``smbclient``):
what was left of the machine for the server.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs

from bench.serverstat import check_pinned, children, server_cpus, settle, tree_cpu

__all__ = ["Phase", "clients_metric", "per_op", "run_phases", "sync"]

# The barrier of the clients a run_phases forked (set in each client process).
_barrier: Any = None
# A phase that takes longer than this has a stuck client: fail, don't hang.
TIMEOUT = 1800.0
# In a client: its CPU clock (self and reaped children) at each sync().
_readings: list[float] = []


@attrs.frozen
class Phase:
    """One phase of all the clients: wall seconds, server and clients' CPU seconds."""

    wall: float
    cpu: float
    clients: float = 0.0


def _init(barrier: Any) -> None:
    global _barrier
    _barrier = barrier
    _readings.clear()
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
    t = os.times()
    _readings.append(t.user + t.system + t.children_user + t.children_system)
    _barrier.wait()  # all here: the parent reads the clocks
    _barrier.wait()  # the parent read them: go


def _client(fn: Callable[..., Any], i: int, args: tuple[Any, ...]) -> Any:
    try:
        _readings.clear()
        return fn(i, *args), list(_readings)
    except BaseException:
        # The others (and the parent) would wait for this one for ever.
        _barrier.abort()
        raise


def _server_clock(pid: int | None) -> Callable[[], float]:
    """The server tree's CPU seconds, once its per-connection children are reaped."""
    if pid is None:
        return lambda: 0.0
    baseline = children(pid)
    cpus = server_cpus()

    def read() -> float:
        if cpus is not None:
            # At each boundary, while the clients are connected (smbd's
            # per-connection children are alive): the confinement held.
            check_pinned(pid, cpus)
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
    the last client's start to the last client's end), the CPU server
    C{pid}'s process tree spent meanwhile (C{clock} replaces the reading)
    and the CPU the clients spent in their phase's work (their own and
    their reaped children's: an ``nfs-cp``'s, an ``smbclient``'s).

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
        got = [p.get(TIMEOUT) for p in pending]
        # Let the clients end on their own (close sends each its sentinel):
        # the with's terminate() alone can race its own drain of the queue
        # and leave an idle client waiting for a sentinel it took away.
        pool.close()
        pool.join()
    results = [r for r, _ in got]
    clients = [0.0] * phases
    for _, readings in got:
        for k in range(min(phases, len(readings) - 1)):
            clients[k] += readings[k + 1] - readings[k]
    return [
        Phase(t1 - t0, c1 - c0, clients[k])
        for k, ((t0, c0), (t1, c1)) in enumerate(zip(marks, marks[1:], strict=False))
    ], results


def per_op(
    phases: list[Phase], ops: float, names: tuple[str, ...], cpu_scale: float = 1e6
) -> dict[str, float]:
    """
    Aggregate rates and server CPU per operation of L{run_phases}' phases,
    C{ops} operations in each (all clients together). C{names} gives each
    phase's rate and CPU metric in turn (C{rate, cpu, rate, cpu, ...});
    CPU seconds are scaled by C{cpu_scale} (1e6: microseconds). The clients'
    CPU per operation comes under the CPU metric's name with ``server``
    made ``clients`` (L{clients_metric}).
    """
    if len(names) != 2 * len(phases):
        raise ValueError(f"{len(phases)} phases, {len(names)} names")
    out: dict[str, float] = {}
    for k, phase in enumerate(phases):
        out[names[2 * k]] = ops / phase.wall
        out[names[2 * k + 1]] = phase.cpu * cpu_scale / ops
        out[clients_metric(names[2 * k + 1])] = phase.clients * cpu_scale / ops
    return out


def clients_metric(server_metric: str) -> str:
    """The clients' counterpart of a server CPU metric: "server CPU us/x" -> "clients CPU us/x"."""
    return server_metric.replace("server CPU", "clients CPU", 1)
