# -*- test-case-name: tests.core.test_drain -*-
"""
Connection and in-flight accounting, and the graceful drain built on it.

Every front end owns one L{Activity}: its factory adds and removes connections,
and each request is bracketed by L{Activity.begin}/L{Activity.end} (or
L{Activity.track} for a Deferred). The L{Drainer} then implements one shutdown
for all protocols, used by SIGTERM/SIGINT and by C{POST /admin/drain}:

 1. stop accepting: every drainable listener stops listening;
 2. let in-flight requests finish, up to the configured deadline;
 3. close connections (loseConnection, then abortConnection for any that have
    not gone within L{CLOSE_GRACE} seconds).

The admin listener is not drainable, so C{/health} keeps answering (503 while
draining) and the drain's progress stays visible.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

from claudefs_gateway.core.health import CheckResult
from claudefs_gateway.core.log import Logger
from claudefs_gateway.core.metrics import Metrics

__all__ = ["Activity", "Drainer", "DrainResult", "CLOSE_GRACE", "IDrainable", "TrackingFactory"]

CLOSE_GRACE = 1.0

T = TypeVar("T")


class IDrainable(Protocol):
    """A listener the drain can tell to stop accepting."""

    name: str | None

    def stop_accepting(self) -> defer.Deferred[None]: ...


class Activity:
    """
    Live connections and in-flight requests of one protocol.

    @ivar draining: true once a drain began; front ends may use it to ask
        clients to go (HTTP C{Connection: close}) but keep serving requests.
    """

    _log = Logger()

    def __init__(
        self,
        protocol: str,
        metrics: Metrics,
        max_connections: int = 0,
        clients: Any = None,
        max_per_client: int = 0,
    ) -> None:
        self.protocol = protocol
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        # Open connections by client address (for max_per_client).
        self._by_host: dict[str, int] = {}
        self._host_of: dict[int, str] = {}
        self._clients = clients
        self.connections: set[Any] = set()
        self.in_flight = 0
        self.draining = False
        self._idle_waiters: list[defer.Deferred[None]] = []
        self._closed_waiters: list[defer.Deferred[None]] = []
        self._conn_gauge = metrics.family("gateway_active_connections").labels(protocol)
        self._conn_gauge.set(0)
        metrics.gauge_from("gateway_in_flight_requests", (protocol,), lambda: self.in_flight)
        metrics.family("gateway_max_connections").labels(protocol).set(max_connections)
        self._refused = metrics.family("gateway_rejected_requests_total").labels(
            protocol, "max_connections"
        )
        metrics.family("gateway_max_connections_per_client").labels(protocol).set(max_per_client)
        self._refused_client = metrics.family("gateway_rejected_requests_total").labels(
            protocol, "max_connections_per_client"
        )

    # -- connections ----------------------------------------------------------

    def connection_made(self, proto: Any) -> bool:
        """
        Count a new connection; false (and the connection aborted) when the
        protocol already holds C{max_connections}.

        Callers need not check the result: the abort makes the connection's
        C{connectionLost} run soon, as for any other closed connection.
        """
        transport = getattr(proto, "transport", None)
        peer = getattr(transport.getPeer(), "host", "?") if transport is not None else "?"
        if self.max_connections and len(self.connections) >= self.max_connections:
            self._refused.inc()
            self._log.warn(
                "{protocol} connection from {peer} refused: {limit} connections open "
                "(limits.max_connections)",
                protocol=self.protocol,
                peer=peer,
                limit=self.max_connections,
            )
            self._abort(transport)
            return False
        if self.max_per_client and self._by_host.get(peer, 0) >= self.max_per_client:
            self._refused_client.inc()
            # A client's own behaviour: info, not warn (it may retry in a loop).
            self._log.info(
                "{protocol} connection from {peer} refused: it holds {limit} connections "
                "(limits.max_connections_per_client)",
                protocol=self.protocol,
                peer=peer,
                limit=self.max_per_client,
            )
            self._abort(transport)
            return False
        if proto not in self.connections:
            self._by_host[peer] = self._by_host.get(peer, 0) + 1
            self._host_of[id(proto)] = peer
        self.connections.add(proto)
        self._conn_gauge.set(len(self.connections))
        if self._clients is not None:
            self._clients.add(self.protocol, proto)
        return True

    @staticmethod
    def _abort(transport: Any) -> None:
        if transport is not None:
            abort = getattr(transport, "abortConnection", transport.loseConnection)
            abort()

    def connection_lost(self, proto: Any) -> None:
        host = self._host_of.pop(id(proto), None)
        if host is not None:
            left = self._by_host.get(host, 1) - 1
            if left > 0:
                self._by_host[host] = left
            else:
                self._by_host.pop(host, None)
        self.connections.discard(proto)
        if self._clients is not None:
            self._clients.remove(proto)
        self._conn_gauge.set(len(self.connections))
        if not self.connections:
            waiters, self._closed_waiters = self._closed_waiters, []
            for d in waiters:
                d.callback(None)

    # -- requests ---------------------------------------------------------------

    def begin(self) -> None:
        self.in_flight += 1

    def end(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)

    def track(self, d: defer.Deferred[T]) -> defer.Deferred[T]:
        """Count C{d} as in flight until it fires; returns C{d}."""
        self.begin()

        def done(result: T | Failure) -> T | Failure:
            self.end()
            return result

        d.addBoth(done)
        return d

    # -- waiting --------------------------------------------------------------

    def idle(self) -> defer.Deferred[None]:
        """Fire when no request is in flight (now, if none is)."""
        if self.in_flight == 0:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred(lambda d: self._idle_waiters.remove(d))
        self._idle_waiters.append(d)
        return d

    def all_closed(self) -> defer.Deferred[None]:
        """Fire when no connection is open."""
        if not self.connections:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred(lambda d: self._closed_waiters.remove(d))
        self._closed_waiters.append(d)
        return d

    def close_connections(self, abort: bool = False) -> None:
        for proto in list(self.connections):
            transport = getattr(proto, "transport", None)
            if transport is None:
                continue
            if abort and hasattr(transport, "abortConnection"):
                transport.abortConnection()
            else:
                transport.loseConnection()


@attrs.frozen
class DrainResult:
    """How a drain went: requests that had to be cut off, connections aborted."""

    in_flight_abandoned: int
    connections_aborted: int
    seconds: float


class Drainer:
    """
    The one graceful shutdown for every protocol (see module docstring).

    States: C{running} → C{draining} → C{drained}. A second call while
    draining returns the same Deferred; a drain cannot be undone (restart).
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        metrics: Metrics,
        max_connections: int = 0,
        clients: Any = None,
        max_per_client: int = 0,
    ) -> None:
        """
        @param max_connections: each protocol's connection limit (0: none).
        @param max_per_client: each protocol's limit per client address (0: none).
        @param clients: a L{claudefs_gateway.core.clients.ClientTable} every
            protocol's connections are entered in, or None.
        """
        self._clock = clock
        self._metrics = metrics
        self._max_connections = max_connections
        self._max_per_client = max_per_client
        self.clients = clients
        self._listeners: list[IDrainable] = []
        self._activities: dict[str, Activity] = {}
        self.state = "running"
        self._outcome: DrainResult | None = None
        self._waiters: list[defer.Deferred[DrainResult]] = []
        self._watchers: list[defer.Deferred[DrainResult]] = []
        self._gauge = metrics.family("gateway_draining")
        self._gauge.set(0)

    def activity(self, protocol: str) -> Activity:
        """The L{Activity} of C{protocol}, created on first use."""
        act = self._activities.get(protocol)
        if act is None:
            act = self._activities[protocol] = Activity(
                protocol,
                self._metrics,
                self._max_connections,
                self.clients,
                self._max_per_client,
            )
        return act

    def activities(self) -> list[Activity]:
        return list(self._activities.values())

    def add_listener(self, listener: IDrainable) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: IDrainable) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    @property
    def in_flight(self) -> int:
        return sum(a.in_flight for a in self._activities.values())

    @property
    def connections(self) -> int:
        return sum(len(a.connections) for a in self._activities.values())

    def check(self) -> CheckResult:
        """Health: unhealthy once a drain began, so load balancers move on."""
        if self.state == "running":
            return CheckResult.healthy()
        return CheckResult.unhealthy(f"{self.state}: not accepting connections")

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "in_flight": self.in_flight, "connections": self.connections}

    def drain(self, deadline: float) -> defer.Deferred[DrainResult]:
        """
        Drain, giving in-flight requests C{deadline} seconds.

        @return: fires with a L{DrainResult} when every connection is closed;
            never fails.
        """
        if self._outcome is not None:
            return defer.succeed(self._outcome)
        d: defer.Deferred[DrainResult] = defer.Deferred()
        self._waiters.append(d)
        if self.state == "running":
            run = defer.Deferred.fromCoroutine(self._drain(deadline))
            run.addCallback(self._finished)
            run.addErrback(lambda f: self._log.failure("drain failed", f))
        return d

    def drained(self) -> defer.Deferred[DrainResult]:
        """
        Fire with the L{DrainResult} once a drain, started by anyone, has
        finished (after every caller of L{drain} has had its result); this
        does not start one.
        """
        if self._outcome is not None:
            return defer.succeed(self._outcome)
        d: defer.Deferred[DrainResult] = defer.Deferred(lambda d: self._watchers.remove(d))
        self._watchers.append(d)
        return d

    def _finished(self, outcome: DrainResult) -> None:
        self._outcome = outcome
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(outcome)
        watchers, self._watchers = self._watchers, []
        for d in watchers:
            d.callback(outcome)

    async def _drain(self, deadline: float) -> DrainResult:
        start = self._clock.seconds()
        self.state = "draining"
        self._gauge.set(1)
        for act in self._activities.values():
            act.draining = True
        self._log.info(
            "draining: {in_flight} requests in flight, {connections} connections, deadline {deadline}s",
            in_flight=self.in_flight,
            connections=self.connections,
            deadline=deadline,
        )
        stops = []
        for listener in self._listeners:
            d = defer.maybeDeferred(listener.stop_accepting)
            d.addErrback(self._log_stop_failure, listener.name)
            stops.append(d)
        await defer.DeferredList(stops)
        self._log.info(
            "no longer accepting connections; waiting for {in_flight} requests",
            in_flight=self.in_flight,
        )

        acts = list(self._activities.values())
        abandoned = 0
        if self.in_flight:
            idle = defer.DeferredList([a.idle() for a in acts])
            finished = await _within(idle, deadline - (self._clock.seconds() - start), self._clock)
            if not finished:
                abandoned = self.in_flight
                self._log.warn(
                    "drain deadline passed with {n} requests in flight; closing", n=abandoned
                )

        for act in acts:
            act.close_connections()
        closed = defer.DeferredList([a.all_closed() for a in acts])
        aborted = 0
        if not await _within(closed, CLOSE_GRACE, self._clock):
            aborted = self.connections
            for act in acts:
                act.close_connections(abort=True)
            await _within(
                defer.DeferredList([a.all_closed() for a in acts]), CLOSE_GRACE, self._clock
            )
        self.state = "drained"
        seconds = self._clock.seconds() - start
        self._log.info(
            "drained in {seconds:.3f}s ({abandoned} requests cut off, {aborted} connections aborted)",
            seconds=seconds,
            abandoned=abandoned,
            aborted=aborted,
        )
        return DrainResult(abandoned, aborted, seconds)

    def _log_stop_failure(self, f: Failure, name: str | None) -> None:
        self._log.failure("while {listener} stopped accepting", f, listener=name)


async def _within(d: defer.Deferred[Any], seconds: float, clock: IReactorTime) -> bool:
    """Wait for C{d} at most C{seconds}; true if it fired in time. C{d} is not cancelled."""
    if d.called:
        return True
    if seconds <= 0:
        return False
    timer: defer.Deferred[bool] = defer.Deferred()
    call = clock.callLater(seconds, timer.callback, False)

    def fired(_: object) -> None:
        if not timer.called:
            call.cancel()
            timer.callback(True)

    d.addBoth(fired)
    return await timer


class _TrackedProtocol(ProtocolWrapper):
    def describe(self) -> dict[str, Any]:
        """What the wrapped protocol says of itself (L{claudefs_gateway.core.clients})."""
        describe = getattr(self.wrappedProtocol, "describe", None)
        return describe() if describe is not None else {}

    def connectionMade(self) -> None:
        self.factory.activity.connection_made(self)
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.factory.activity.connection_lost(self)


class TrackingFactory(WrappingFactory):
    """
    Count a factory's connections in an L{Activity} without changing its protocol.

    For front ends built on someone else's protocol (twisted.web's HTTPChannel);
    our own protocols call the Activity directly and skip the wrapper.
    """

    protocol = _TrackedProtocol
    noisy = False

    def __init__(self, wrapped: Any, activity: Activity) -> None:
        super().__init__(wrapped)
        self.activity = activity
