# -*- test-case-name: tests.core.test_retry -*-
"""
Retry with jittered back-off, and failover across a list of backend nodes.

A call that fails with a try-later error (L{BackendUnavailable}: circuit open,
no connection; L{Timeout}) may be sent again, elsewhere or later:

 - an I{idempotent} call (a read; a write whose repeat has the same effect)
   is retried on the next available node at once, and after every node has
   been tried, again after a back-off with full jitter (a delay drawn
   uniformly from 0 to C{min(cap, base * 2**round)}), up to C{attempts} rounds;
 - a call that is not idempotent (create, rename, unlink...) is sent again
   only when it certainly never reached a node (the circuit refused it, or no
   connection could be had); once it may have run (L{Timeout},
   L{InFlightLost}) its failure goes to the caller, who sees a try-later
   status and decides.

Nodes are tried in the order configured (C{metadata_servers}), starting with
the one that last answered, so a healthy first node takes the load and the
others are used while it is down.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from claudefs_gateway.core.aio import Aio
from claudefs_gateway.core.breaker import Breaker
from claudefs_gateway.core.log import Logger
from claudefs_gateway.core.pool import Pool
from claudefs_gateway.errors import BackendUnavailable, InFlightLost, Timeout

__all__ = ["Backoff", "Node", "Failover"]

RETRYABLE = (BackendUnavailable, Timeout)


@attrs.frozen
class Backoff:
    """Full-jitter exponential back-off: C{attempts} rounds, delays within [0, cap]."""

    attempts: int = 3
    base: float = 0.05
    cap: float = 1.0

    def delay(self, round_: int, rng: Callable[[], float] = random.random) -> float:
        return rng() * min(self.cap, self.base * (2**round_))


def _never_sent(f: Failure) -> bool:
    """True if the call certainly did not reach the node."""
    return bool(f.check(BackendUnavailable)) and not f.check(InFlightLost)


@attrs.define
class Node:
    """One backend node: its pool behind its breaker."""

    name: str
    pool: Pool
    breaker: Breaker

    def call(self, fn: Callable[[Any], Any]) -> Any:
        """C{fn(conn)} on a pooled connection, through the breaker; a Deferred."""
        return self.breaker.call(self.pool.run, fn)


class Failover:
    """
    Calls to whichever of C{nodes} is available, with retry.

    @param nodes: in order of preference.
    @param rng: a C{random()} for the jitter (tests pass a fixed one).
    """

    _log = Logger()

    def __init__(
        self,
        nodes: Sequence[Node],
        clock: IReactorTime,
        backoff: Backoff = Backoff(),
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not nodes:
            raise ValueError("no backend nodes")
        self.nodes = list(nodes)
        self.backoff = backoff
        self._aio = Aio(clock)
        self._rng = rng
        self._preferred = 0
        self._stopped = False
        # Back-off waits in progress: stop() cancels them, so a closed backend
        # leaves no timer behind (a call failing at close is not retried).
        self._waits: set[Any] = set()

    def stop(self) -> None:
        """No more retries: back-off waits in progress end, their calls fail now."""
        self._stopped = True
        for wait in list(self._waits):
            self._aio.cancel(wait)

    @property
    def current(self) -> Node:
        return self.nodes[self._preferred]

    def _order(self) -> list[int]:
        n = len(self.nodes)
        if n == 1:
            return [0]
        first = [(self._preferred + i) % n for i in range(n)]

        def rank(i: int) -> int:
            node = self.nodes[i]
            if not node.breaker.available:
                return 2
            # A node that just dropped our connections (a killed server) is tried
            # after the others at once, not only once enough failures open its
            # circuit: failover within one call, not within open_duration_ms.
            return 1 if getattr(node.pool, "suspect", False) else 0

        # Healthy nodes first, then suspect ones, then open circuits; preference
        # order kept within each group (sorted is stable).
        return sorted(first, key=rank)

    def call(self, fn: Callable[[Any], Any], idempotent: bool) -> Any:
        """
        Run C{fn(conn)} on a node; a Deferred firing with its result.

        @return: fails with the last failure once retries are spent (a
            L{BackendUnavailable} or L{Timeout} for the callers' try-later
            status), or at once with any other failure (a node's answer).
            Cancelling it cancels the attempt in progress or the back-off wait.
        """
        return self._attempt(fn, idempotent, 0, self._order(), 0)

    def _attempt(
        self, fn: Callable[[Any], Any], idempotent: bool, round_: int, order: list[int], pos: int
    ) -> Any:
        """
        One attempt on C{nodes[order[pos]]}; its Deferred carries the call's
        outcome, a retry chained on it when it fails with one to retry (so
        cancelling it cancels the attempt or back-off wait in progress, as
        Deferreds chain). One Deferred per call, not one more per layer.
        """
        index = order[pos]
        node = self.nodes[index]
        d = node.call(fn)

        def ok(result: Any) -> Any:
            self._preferred = index
            return result

        def failed(f: Failure) -> Any:
            if not f.check(*RETRYABLE):
                return f
            if not (idempotent or _never_sent(f)):
                return f
            if pos + 1 < len(order):
                self._log.debug(
                    "{node} unavailable ({why}); trying {next}",
                    node=node.name,
                    why=f.getErrorMessage(),
                    next=self.nodes[order[pos + 1]].name,
                )
                return self._attempt(fn, idempotent, round_, order, pos + 1)
            if (
                self._stopped
                or round_ + 1 >= self.backoff.attempts
                or not any(n.breaker.available for n in self.nodes)
            ):
                # Spent, or every circuit is open: waiting a few ms more
                # will not close one (open_duration_ms is far longer).
                return f
            wait = self._aio.sleep(self.backoff.delay(round_, self._rng))
            self._waits.add(wait)

            def waited(_: Any) -> Any:
                self._waits.discard(wait)
                return self._attempt(fn, idempotent, round_ + 1, self._order(), 0)

            def wait_ended(why: Failure) -> Failure:
                self._waits.discard(wait)
                # Cancelled by stop(): the caller gets the failure that
                # would have been retried, not a CancelledError.
                return f if self._stopped else why

            self._aio.add_callbacks(wait, waited, wait_ended)
            return wait

        self._aio.add_callbacks(d, ok, failed)
        return d
