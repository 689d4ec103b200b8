# -*- test-case-name: tests.core.test_pool -*-
"""
A connection pool per backend node (config C{connection_pool}).

Like L{twisted.web.client.HTTPConnectionPool}, keyed by node, with the seeds'
knobs: C{min_per_node} connections are kept open, at most C{max_per_node} are
ever open, an idle connection above the minimum closes after C{max_idle_ms},
opening one gives up after C{connect_timeout_ms}, and every
C{health_check_interval_ms} each idle connection is probed with a heartbeat
(a connection that does not answer in C{connect_timeout_ms} is closed).

A lease gives a caller one connection for one call. An idle connection is
preferred; with none idle and fewer than C{max_per_node} open, a new one is
opened; at the maximum, calls share connections (the ClaudeFS RPC multiplexes
request ids) up to C{streams} each. Beyond that callers wait in one FIFO
queue, served strictly in arrival order. A waiting caller that cancels leaves
the queue; a caller that cancels a leased call frees its slot (L{Pool.run}).
If the node cannot be reached and no connection is open, every waiter fails
at once with L{BackendUnavailable} rather than waiting for a timeout.

A connection is anything with C{ping() -> Deferred}, C{close()}, a boolean
C{connected} and C{notify_lost(callback)} (L{IPoolConnection}).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from claudefs_gateway.core.aio import Aio
from claudefs_gateway.core.health import CheckResult
from claudefs_gateway.core.log import Logger
from claudefs_gateway.errors import BackendUnavailable, Timeout

__all__ = ["Pool", "Lease", "DEFAULT_STREAMS"]

#: Calls one connection carries at once once every connection is busy.
DEFAULT_STREAMS = 16


class _Slot:
    """One open connection and what the pool knows of it."""

    def __init__(self, conn: Any, now: float) -> None:
        self.conn = conn
        self.in_flight = 0
        self.idle_since = now
        self.probing = False


class Lease:
    """One caller's use of one connection; L{release} exactly once."""

    def __init__(self, pool: Pool, slot: _Slot) -> None:
        self._pool = pool
        self._slot: _Slot | None = slot
        self.conn = slot.conn

    def release(self) -> None:
        slot, self._slot = self._slot, None
        if slot is not None:
            self._pool._release(slot)


class Pool:
    """
    Connections to one node.

    @param name: the node (for logs and health).
    @param connect: opens one connection; a Deferred firing with it.
    @param settings: the C{connection_pool} section.
    @param clock: for idle timers, connect deadlines and health probes.
    """

    _log = Logger()

    def __init__(
        self,
        name: str,
        connect: Callable[[], Any],
        settings: Any,
        clock: IReactorTime,
        streams: int = DEFAULT_STREAMS,
    ) -> None:
        self.name = name
        self._connect = connect
        self.min = settings.min_per_node
        self.max = settings.max_per_node
        self.max_idle = settings.max_idle_ms / 1000.0
        self.connect_timeout = settings.connect_timeout_ms / 1000.0
        self.interval = settings.health_check_interval_ms / 1000.0
        self.streams = max(1, streams)
        self._aio = Aio(clock)
        self._clock = clock
        self._slots: list[_Slot] = []
        self._connecting = 0
        self._waiters: deque[Any] = deque()
        self._attempts: set[Any] = set()
        self._timer: IDelayedCall | None = None
        self._running = False
        self._stopped = False
        self.last_error: str | None = None
        self.connects = 0
        #: The node dropped a connection we did not close, and no connection has
        #: been made since: it may be gone (a killed server). L{Failover} tries the
        #: other nodes first meanwhile, rather than waiting for the breaker to open.
        self.suspect = False

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Open the minimum and begin the health loop."""
        if self._running:
            return
        self._running = True
        self._stopped = False
        self._fill_minimum()
        self._timer = self._aio.call_later(self.interval, self._tick)

    def stop(self) -> None:
        """Close every connection; waiting callers fail with L{BackendUnavailable}."""
        self._running = False
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        slots, self._slots = self._slots, []
        for s in slots:
            s.conn.close()
        for attempt in list(self._attempts):
            self._aio.cancel(attempt)
        self._fail_waiters(BackendUnavailable(f"pool for {self.name} stopped"))

    # -- state ----------------------------------------------------------------------

    @property
    def open_count(self) -> int:
        return len(self._slots)

    @property
    def idle_count(self) -> int:
        return sum(1 for s in self._slots if s.in_flight == 0)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def check(self) -> CheckResult:
        """Health: connected, or at least not failing to connect."""
        if self._slots:
            if self._waiters:
                return CheckResult.degraded(f"{self.name}: pool full, {len(self._waiters)} waiting")
            return CheckResult.healthy()
        if self.last_error is not None:
            return CheckResult.unhealthy(f"{self.name}: cannot connect")
        return CheckResult.healthy(f"{self.name}: no connection yet")

    # -- leasing ----------------------------------------------------------------------

    def acquire(self) -> Any:
        """
        A Deferred firing with a L{Lease}; fails with L{BackendUnavailable} if
        the node cannot be reached (or the pool is stopped). Cancel it to stop
        waiting.
        """
        slot = self._pick(idle_only=True)
        if slot is None and self._total < self.max:
            slot = None
        elif slot is None:
            slot = self._pick(idle_only=False)
        if slot is not None and not self._waiters:
            return self._aio.succeed(self._lease(slot))

        def cancel(f: Any) -> None:
            try:
                self._waiters.remove(f)
            except ValueError:
                pass

        waiter = self._aio.create_future(canceller=cancel)
        self._waiters.append(waiter)
        if self._total < self.max and self._connecting < len(self._waiters):
            self._open()
        return waiter

    def run(self, fn: Callable[[Any], Any]) -> Any:
        """
        Lease a connection, call C{fn(conn)}, release it when C{fn}'s Deferred fires.

        Cancelling the result cancels the wait or C{fn}'s Deferred, and frees the slot.
        """
        if not self._waiters:
            # A free slot now (acquire's choice): C{fn}'s own Deferred is the
            # result, with the release on it, not a second Deferred fired
            # from the first (per call, in every process of --workers:
            # docs/workers.rst "Where the CPU of a create went").
            slot = self._pick(idle_only=True)
            if slot is None and self._total >= self.max:
                slot = self._pick(idle_only=False)
            if slot is not None:
                lease = self._lease(slot)
                inner = self._aio.as_future(fn, lease.conn)

                def release(result: Any) -> Any:
                    lease.release()
                    return result

                self._aio.add_callbacks(inner, release, release)
                return inner
        current: list[Any] = []

        def cancel_current(_: Any) -> None:
            for d in list(current):
                self._aio.cancel(d)

        outer = self._aio.create_future(canceller=cancel_current)

        def leased(lease: Lease) -> None:
            try:
                inner = self._aio.as_future(fn, lease.conn)
            except Exception:  # as_future turns exceptions into failures; belt and braces
                lease.release()
                raise
            current[:] = [inner]

            def finished(result: Any) -> None:
                lease.release()
                if not self._aio.is_called(outer):
                    if isinstance(result, Failure):
                        self._aio.reject(outer, result)
                    else:
                        self._aio.resolve(outer, result)

            self._aio.add_callbacks(inner, finished, finished)

        def no_lease(f: Failure) -> None:
            if not self._aio.is_called(outer):
                self._aio.reject(outer, f)

        d = self.acquire()
        current.append(d)
        self._aio.add_callbacks(d, leased, no_lease)
        return outer

    @property
    def _total(self) -> int:
        return len(self._slots) + self._connecting

    def _pick(self, idle_only: bool) -> _Slot | None:
        best: _Slot | None = None
        for s in self._slots:
            if not s.conn.connected or s.probing and s.in_flight == 0 and idle_only:
                continue
            if s.in_flight == 0:
                return s
            if not idle_only and s.in_flight < self.streams:
                if best is None or s.in_flight < best.in_flight:
                    best = s
        return best

    def _lease(self, slot: _Slot) -> Lease:
        slot.in_flight += 1
        return Lease(self, slot)

    def _release(self, slot: _Slot) -> None:
        slot.in_flight -= 1
        if slot.in_flight == 0:
            slot.idle_since = self._clock.seconds()
        if slot in self._slots and slot.conn.connected:
            self._serve(slot)

    def _serve(self, slot: _Slot) -> None:
        """Hand C{slot} to waiters, first come first served, while it has room."""
        while self._waiters and slot.in_flight < (
            self.streams if len(self._slots) >= self.max else 1
        ):
            waiter = self._waiters.popleft()
            self._aio.resolve(waiter, self._lease(slot))

    def _serve_all(self) -> None:
        for s in sorted(self._slots, key=lambda s: s.in_flight):
            if not self._waiters:
                return
            self._serve(s)

    def _fail_waiters(self, error: Exception) -> None:
        waiters, self._waiters = self._waiters, deque()
        for w in waiters:
            self._aio.reject(w, error)

    # -- connecting ---------------------------------------------------------------------

    def _open(self) -> None:
        self._connecting += 1
        attempt = self._aio.as_future(self._connect)
        self._attempts.add(attempt)
        timed_out: list[bool] = []

        def expire() -> None:
            timed_out.append(True)
            self._aio.cancel(attempt)

        timer = self._aio.call_later(self.connect_timeout, expire)

        def connected(conn: Any) -> None:
            self._attempts.discard(attempt)
            self._connecting -= 1
            if timer.active():
                timer.cancel()
            if not self._running and not self._waiters:
                conn.close()
                return
            self.connects += 1
            self.last_error = None
            self.suspect = False
            slot = _Slot(conn, self._clock.seconds())
            self._slots.append(slot)
            conn.notify_lost(lambda: self._lost(slot))
            self._serve(slot)
            if self._waiters:
                self._serve_all()

        def failed(f: Failure) -> None:
            self._attempts.discard(attempt)
            self._connecting -= 1
            if timer.active():
                timer.cancel()
            if self._stopped:
                return
            if timed_out and f.check(CancelledError):
                f = Failure(Timeout(f"connecting to {self.name} took over {self.connect_timeout}s"))
            self.last_error = f.getErrorMessage()
            self._log.warn(
                "cannot connect to {node}: {why}", node=self.name, why=f.getErrorMessage()
            )
            if not self._slots and not self._connecting:
                self._fail_waiters(BackendUnavailable(f"cannot connect to {self.name}"))

        self._aio.add_callbacks(attempt, connected, failed)

    def _lost(self, slot: _Slot) -> None:
        if slot in self._slots:
            self._slots.remove(slot)
            self.suspect = True
            self._log.info("connection to {node} lost", node=self.name)
        if self._waiters and self._running and self._total < self.max:
            self._open()

    def _fill_minimum(self) -> None:
        while self._running and self._total < self.min:
            self._open()

    # -- health loop --------------------------------------------------------------------

    def _tick(self) -> None:
        self._timer = None
        if not self._running:
            return
        now = self._clock.seconds()
        idle = [s for s in self._slots if s.in_flight == 0 and not s.probing]
        idle.sort(key=lambda s: s.idle_since)
        for s in idle:
            if len(self._slots) > self.min and now - s.idle_since >= self.max_idle:
                self._slots.remove(s)
                s.conn.close()
                self._log.debug("closed idle connection to {node}", node=self.name)
            else:
                self._probe(s)
        self._fill_minimum()
        self._timer = self._aio.call_later(self.interval, self._tick)

    def _probe(self, slot: _Slot) -> None:
        slot.probing = True
        d = self._aio.as_future(slot.conn.ping)
        timer = self._aio.call_later(self.connect_timeout, self._aio.cancel, d)

        def answered(_: Any) -> None:
            slot.probing = False
            if timer.active():
                timer.cancel()

        def silent(f: Failure) -> None:
            slot.probing = False
            if timer.active():
                timer.cancel()
            self._log.warn(
                "connection to {node} failed its health check: {why}",
                node=self.name,
                why=f.getErrorMessage(),
            )
            if slot in self._slots:
                self._slots.remove(slot)
            slot.conn.close()

        self._aio.add_callbacks(d, answered, silent)
