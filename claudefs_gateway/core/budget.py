# -*- test-case-name: tests.core.test_budget -*-
"""
The gateway-wide memory budget (issue 19).

Each front end bounds what one connection may hold (the RPC layer and SMB stop
reading while a client leaves replies unread; S3 streams bodies through
bounded pipes); this bounds all connections together. A request reserves the
bytes it holds while it is served (its body, and what its reply may carry: a
READ counts its length) before it starts, and gives them back when answered.
A reservation that would pass C{limits.memory_budget} is refused: the front
end answers with its protocol's busy status (SMB STATUS_INSUFFICIENT_RESOURCES,
NFS3ERR_JUKEBOX, NFS4ERR_DELAY, S3 503 SlowDown), counted in
C{gateway_rejected_requests_total{protocol, reason="memory"}}. One request is
always admitted when nothing is reserved, so an outsized request is never
refused forever.
"""

from __future__ import annotations

from typing import Any

from claudefs_gateway.core.log import Logger
from claudefs_gateway.errors import Overloaded

__all__ = ["MemoryBudget"]


class MemoryBudget:
    """
    Bytes reserved by requests in flight, over every protocol and connection.

    @param limit: most bytes reserved at once; 0 = no limit (still counted).
    @param metrics: a L{claudefs_gateway.core.metrics.Metrics} (rejections and
        the C{gateway_memory_budget_bytes} gauges), or None.
    """

    _log = Logger()

    def __init__(self, limit: int, metrics: Any = None) -> None:
        self.limit = limit
        self.used = 0
        self._metrics = metrics
        self._rejected: dict[str, Any] = {}
        if metrics is not None:
            metrics.family("gateway_memory_budget_bytes").labels("limit").set(limit)
            # Read at each scrape: hold and release run twice per request (a
            # gauge's set takes a lock each time).
            metrics.family("gateway_memory_budget_bytes").labels("used").set_function(
                lambda: float(self.used)
            )
        self._warned = False

    def check(self, protocol: str) -> None:
        """
        For front ends that account bytes as they arrive (L{hold}): refuse a
        new request while what is held is over the limit.

        @raise Overloaded: the budget is spent (counted under C{protocol}).
        """
        if self.limit and self.used > self.limit:
            self._refuse(protocol)
            raise Overloaded("the gateway is short of memory; try later")

    def hold(self, n: int) -> None:
        """Count C{n} bytes that are in memory already (a request read, a reply queued)."""
        self.used += n

    def reserve(self, n: int, protocol: str) -> bool:
        """
        Reserve C{n} bytes for a request of C{protocol}; False (and counted) if
        that would pass the limit while other requests hold some.
        """
        if self.limit and self.used and self.used + n > self.limit:
            self._refuse(protocol)
            return False
        self.used += n
        return True

    def _refuse(self, protocol: str) -> None:
        child = self._rejected.get(protocol)
        if child is None and self._metrics is not None:
            child = self._rejected[protocol] = self._metrics.family(
                "gateway_rejected_requests_total"
            ).labels(protocol, "memory")
        if child is not None:
            child.inc()
        if not self._warned:
            # Once per episode: the refusals themselves are counted, not logged.
            self._warned = True
            self._log.warn(
                "memory budget of {limit} bytes spent: refusing requests with the "
                "protocol's busy status (limits.memory_budget)",
                limit=self.limit,
            )

    def release(self, n: int) -> None:
        """Give back C{n} bytes reserved earlier."""
        self.used = max(self.used - n, 0)
        if self._warned and self.used <= self.limit // 2:
            self._warned = False
            self._log.info("memory budget below half again: requests admitted")
