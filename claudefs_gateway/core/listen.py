# -*- test-case-name: tests.core.test_listen -*-
"""
A listener built from a Twisted endpoint description.

Like L{twisted.application.internet.StreamServerEndpointService} (it binds in
C{privilegedStartService}, so ports below 1024 are bound before twistd drops
privileges, and a failure to bind is raised at start, not swallowed), plus what
the gateway needs of every listener: the bound port (tests listen on port 0),
a health check, and C{stop_accepting} for the drain.

A listener may be I{gated}: it binds at start as any other (so a port in use
still fails the start, and ports below 1024 are bound before twistd drops
privileges), but accepts no connection until its gate fires - the gateway's
protocol listeners wait for the store to open, so a client that connects is
served at once and C{/health} never answers "not serving" while a listener
accepts. Meanwhile the kernel queues connection attempts in the listen backlog.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.python.failure import Failure

from claudefs_gateway.core.config import Listen
from claudefs_gateway.core.health import CheckResult
from claudefs_gateway.core.log import Logger

__all__ = ["ListenerService"]


class ListenerService(Service):
    """
    One listening port.

    @param name: service name, e.g. C{proto:nfs:listen}.
    @param label: short name used in /health and logs, e.g. C{nfs}.
    @param drainable: false for the admin listener, which serves during a drain.
    @param gate: called at start; the listener accepts connections only once the
        Deferred it returns has fired (see module docstring). If it fails, the
        listener never accepts (the gateway is stopping).
    """

    _log = Logger()

    def __init__(
        self,
        name: str,
        label: str,
        listen: Listen,
        factory: IProtocolFactory,
        reactor: Any,
        drainable: bool = True,
        gate: Callable[[], defer.Deferred[Any]] | None = None,
    ) -> None:
        self.name = name
        self.label = label
        self.listen = listen
        self.factory = factory
        self.reactor = reactor
        self.drainable = drainable
        self.port: IListeningPort | None = None
        self._stopped_accepting = False
        self._starting = False
        self._gate = gate
        self._gated = False

    @property
    def bound_port(self) -> int | None:
        """The port actually bound (useful after listening on port 0)."""
        if self.port is None:
            return None
        return getattr(self.port.getHost(), "port", None)

    def privilegedStartService(self) -> None:
        if self.port is not None or self._starting:
            return
        self._starting = True
        endpoint = serverFromString(self.reactor, self.listen.description)
        d = endpoint.listen(self.factory)
        result: list[Any] = []
        d.addBoth(result.append)
        if not result:
            # Only endpoints that cannot bind synchronously get here.
            d.addCallback(self._listening)
            return
        if isinstance(result[0], Failure):
            self._starting = False
            self._log.error(
                "{label}: cannot listen on {where}: {why}",
                label=self.label,
                where=self.listen.shown,
                why=result[0].getErrorMessage(),
            )
            result[0].raiseException()
        self._listening(result[0])

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        self._starting = False
        if self._gate is not None:
            self._hold(port, self._gate)
        host = port.getHost()
        self._log.info(
            "{label} listening on {where}",
            label=self.label,
            where=f"{getattr(host, 'host', '')}:{getattr(host, 'port', '')}".strip(":")
            if hasattr(host, "port")
            else str(getattr(host, "name", host)),
            port=getattr(host, "port", None),
            listener=self.label,
        )

    def _hold(self, port: IListeningPort, gate: Callable[[], defer.Deferred[Any]]) -> None:
        """Stop accepting on C{port} until C{gate} fires (ports that cannot pause accept)."""
        self._gate = None
        stop_reading = getattr(port, "stopReading", None)
        if stop_reading is None:
            return
        stop_reading()
        self._gated = True

        def open_gate(_: object) -> None:
            self._gated = False
            if self.port is port and not self._stopped_accepting:
                port.startReading()  # type: ignore[attr-defined]
                self._log.debug("{label} accepting connections", label=self.label)

        def closed(f: Failure) -> None:
            self._log.debug(
                "{label} will not accept connections: {why}",
                label=self.label,
                why=f.getErrorMessage(),
            )

        defer.maybeDeferred(gate).addCallbacks(open_gate, closed)

    def startService(self) -> None:
        super().startService()
        self.privilegedStartService()

    def stop_accepting(self) -> defer.Deferred[None]:
        """Stop listening; existing connections are untouched."""
        self._stopped_accepting = True
        if self.port is None:
            return defer.succeed(None)
        port, self.port = self.port, None
        stopped = port.stopListening()
        return defer.succeed(None) if stopped is None else stopped

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return self.stop_accepting()

    def check(self) -> CheckResult:
        """Health: healthy while accepting connections; starting while gated."""
        if self.port is not None and self._gated:
            return CheckResult.starting("waiting for the store to open")
        if self.port is not None:
            return CheckResult.healthy()
        if self._stopped_accepting:
            return CheckResult.unhealthy("draining: not accepting connections")
        return CheckResult.unhealthy("not listening")
