# -*- test-case-name: tests.core.test_health -*-
"""
Named health checks, and the C{/health} document built from them.

Each subsystem registers its own check (the backend, every listener); C{/health}
runs them all concurrently, each under a deadline, and reports the shape the
operations runbook gives::

    {"overall": "healthy",
     "checks": [{"name": "backend", "status": "healthy", "message": "", "duration_ms": 1}],
     "timestamp": 1706745600}

C{overall} is the worst status of any check, in the order C{healthy},
C{degraded} (still serving), C{starting} (not serving yet: the store is being
opened and no protocol listener accepts connections until it is) and
C{unhealthy}. A check that raises or runs past
its deadline is C{unhealthy}; its message names the exception class only, so no
path, host or secret leaks through a health probe.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from claudefs_gateway.core.log import Logger

__all__ = [
    "HEALTHY",
    "DEGRADED",
    "STARTING",
    "UNHEALTHY",
    "SERVING",
    "CheckResult",
    "HealthChecks",
]

HEALTHY = "healthy"
DEGRADED = "degraded"
STARTING = "starting"
UNHEALTHY = "unhealthy"
_RANK = {HEALTHY: 0, DEGRADED: 1, STARTING: 2, UNHEALTHY: 3}

#: Overall states in which the gateway serves clients (C{/health} answers 200).
SERVING = frozenset({HEALTHY, DEGRADED})


@attrs.frozen
class CheckResult:
    """What one check found. C{message} is shown to anyone who can reach /health."""

    status: str
    message: str = ""

    @classmethod
    def healthy(cls, message: str = "") -> CheckResult:
        return cls(HEALTHY, message)

    @classmethod
    def degraded(cls, message: str) -> CheckResult:
        return cls(DEGRADED, message)

    @classmethod
    def starting(cls, message: str) -> CheckResult:
        return cls(STARTING, message)

    @classmethod
    def unhealthy(cls, message: str) -> CheckResult:
        return cls(UNHEALTHY, message)


Check = Callable[[], "CheckResult | Awaitable[CheckResult]"]


class HealthChecks:
    """
    The registry of named checks.

    @param clock: for deadlines and the document's timestamp.
    @param timer: monotonic seconds for C{duration_ms} (injectable for tests).
    @param timeout: deadline of each check, seconds.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        timer: Callable[[], float] = time.perf_counter,
        timeout: float = 5.0,
    ) -> None:
        self._clock = clock
        self._timer = timer
        self._timeout = timeout
        self._checks: dict[str, Check] = {}

    def register(self, name: str, check: Check) -> None:
        """
        Add C{check} under C{name}, replacing any check of that name.

        C{check} returns a L{CheckResult}, or an awaitable/Deferred firing with one.
        """
        self._checks[name] = check

    def unregister(self, name: str) -> None:
        self._checks.pop(name, None)

    def names(self) -> list[str]:
        return list(self._checks)

    async def _run_one(self, name: str, check: Check) -> dict[str, Any]:
        start = self._timer()
        try:
            result = check()
            if not isinstance(result, CheckResult):
                d: defer.Deferred[CheckResult] = defer.ensureDeferred(result)  # type: ignore[arg-type]
                d.addTimeout(self._timeout, self._clock)
                result = await d
        except defer.TimeoutError:
            result = CheckResult.unhealthy(f"timed out after {self._timeout:g}s")
        except Exception as e:
            self._log.failure("health check {check} failed", check=name)
            result = CheckResult.unhealthy(f"check failed: {e.__class__.__name__}")
        duration_ms = int(round((self._timer() - start) * 1000))
        return {
            "name": name,
            "status": result.status,
            "message": result.message,
            "duration_ms": duration_ms,
        }

    async def run(self) -> dict[str, Any]:
        """Run every check concurrently; fire with the /health document."""
        ds = [
            defer.Deferred.fromCoroutine(self._run_one(n, c)) for n, c in list(self._checks.items())
        ]
        checks = await defer.gatherResults(ds) if ds else []
        overall = HEALTHY
        for c in checks:
            if _RANK.get(c["status"], _RANK[UNHEALTHY]) > _RANK[overall]:
                overall = c["status"] if c["status"] in _RANK else UNHEALTHY
        return {"overall": overall, "checks": checks, "timestamp": int(self._clock.seconds())}
