# -*- test-case-name: tests.test_service -*-
"""
The one core per process that every front end is handed (STYLE.md §10).

It carries the validated configuration, the reactor, and the shared subsystems
(metrics, health, drain, caches, thread pools), and offers front ends one way
to add a listener, so every listener gets a health check and joins the drain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.interfaces import IProtocolFactory

from claudefs_gateway.core.caches import Caches
from claudefs_gateway.core.config import Config, Listen
from claudefs_gateway.core.drain import Drainer
from claudefs_gateway.core.health import HealthChecks
from claudefs_gateway.core.listen import ListenerService
from claudefs_gateway.core.metrics import Metrics
from claudefs_gateway.core.threads import ThreadPools
from claudefs_gateway.errors import BackendUnavailable

if TYPE_CHECKING:
    from claudefs_gateway.interfaces import IVFS

__all__ = ["Core", "admission"]


def admission(protocol: str, budget: Any, limiter: Any) -> Callable[[str, int | None], None]:
    """
    L{Core.admit} for C{protocol} as the one function a front end calls per
    request (C{admit(address, uid)}): it refuses as L{Core.admit} does, but
    compares the memory budget's use with its limit in line and leaves the
    rate limiter out when it limits nothing (its limits are fixed when it is
    built), so a request pays one Python call here instead of four (a lambda,
    L{Core.admit}, C{MemoryBudget.check}, C{RateLimiter.admit}): an NFS
    GETATTR at queue depth 1 is about twenty in all (issue 18).

    @param budget: a L{claudefs_gateway.core.budget.MemoryBudget}, or L{None}.
    @param limiter: a L{claudefs_gateway.core.ratelimit.RateLimiter}, or L{None}.
    """
    if limiter is not None and not limiter.enabled:
        limiter = None

    def admit(address: str, uid: int | None = None) -> None:
        if budget is not None and budget.limit and budget.used > budget.limit:
            budget.check(protocol)
        if limiter is not None:
            limiter.admit(protocol, address, uid)

    return admit


class Opens(Protocol):
    """What opens the namespace (the vfs service): front ends wait on it."""

    def ready(self) -> defer.Deferred[IVFS]: ...


@attrs.define
class Core:
    config: Config
    reactor: Any
    metrics: Metrics
    health: HealthChecks
    drainer: Drainer
    caches: Caches
    threads: ThreadPools
    vfs_service: Opens | None = None
    #: The request-rate limits (L{claudefs_gateway.core.ratelimit.RateLimiter}):
    #: front ends call C{limiter.admit(protocol, address, uid)} once per request.
    limiter: Any = None
    #: Every client connection (L{claudefs_gateway.core.clients.ClientTable}).
    clients: Any = None
    #: The gateway-wide memory budget (L{claudefs_gateway.core.budget.MemoryBudget}).
    budget: Any = None
    extras: dict[str, Any] = attrs.field(factory=dict)

    def admit(self, protocol: str, address: str, uid: int | None = None) -> None:
        """
        The per-request hook of the rate limits and the memory budget: let the
        request through or raise L{claudefs_gateway.errors.Throttled} (over a
        rate) or L{claudefs_gateway.errors.Overloaded} (the memory budget is
        spent by what is in flight and queued).
        """
        if self.budget is not None:
            self.budget.check(protocol)
        if self.limiter is not None:
            self.limiter.admit(protocol, address, uid)

    def admitter(self, protocol: str) -> Callable[[str, int | None], None]:
        """L{admit} for C{protocol}, as one function a front end calls per request (L{admission})."""
        return admission(protocol, self.budget, self.limiter)

    def vfs_ready(self) -> defer.Deferred[IVFS]:
        """
        A Deferred firing with the open vfs (front ends await it before a
        request); it fails with L{BackendUnavailable} when this build serves
        no backend, which every front end answers as "try later".
        """
        if self.vfs_service is None:
            return defer.fail(BackendUnavailable("no backend is serving the namespace"))
        return self.vfs_service.ready()

    def listener(
        self,
        parent: MultiService,
        name: str,
        label: str,
        listen: Listen,
        factory: IProtocolFactory,
        drainable: bool = True,
    ) -> ListenerService:
        """
        Add a listener under C{parent}: health check C{label}, and (if
        C{drainable}) stopped by the drain. A drainable (protocol) listener
        binds at start but accepts connections only once the store is open
        (L{ListenerService} C{gate}), so no client is taken in that the
        gateway cannot serve yet and C{/health} never reports "starting"
        while a listener accepts.
        """
        gate = self.vfs_ready if drainable and self.vfs_service is not None else None
        svc = ListenerService(
            name, label, listen, factory, self.reactor, drainable=drainable, gate=gate
        )
        svc.setServiceParent(parent)
        self.health.register(label, svc.check)
        if drainable:
            self.drainer.add_listener(svc)
        return svc
