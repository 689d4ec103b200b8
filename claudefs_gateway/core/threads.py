# -*- test-case-name: tests.core.test_threads -*-
"""
Named thread pools for work that must not run on the reactor thread.

C{disk} takes fsync and file I/O that can stall; C{cpu} takes hashing and other
CPU-bound work, so a burst of checksums cannot starve the disk pool (compare
Tahoe-LAFS's cputhreadpool). Threads reach the reactor only through
C{callFromThread}, which C{deferToThreadPool} does for us.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

__all__ = ["ThreadPools"]

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_SIZES = {"disk": 8, "cpu": 2}


class ThreadPools(Service):
    """The gateway's pools, started and stopped with the service tree."""

    name = "core:threads"

    def __init__(self, reactor: Any, sizes: dict[str, int] | None = None) -> None:
        self.reactor = reactor
        self.pools: dict[str, ThreadPool] = {
            name: ThreadPool(minthreads=0, maxthreads=n, name=f"cfs-{name}")
            for name, n in (sizes or DEFAULT_SIZES).items()
        }

    def startService(self) -> None:
        super().startService()
        for pool in self.pools.values():
            pool.start()

    def stopService(self) -> None:
        super().stopService()
        # Joins each worker after its current job. The pools stop last, after the
        # drain and every front end, so nothing is queued behind them by now.
        for pool in self.pools.values():
            pool.stop()

    def run(
        self, pool: str, f: Callable[P, R], *args: P.args, **kwargs: P.kwargs
    ) -> defer.Deferred[R]:
        """Run C{f(*args, **kwargs)} in the named pool; fires with its result."""
        return deferToThreadPool(self.reactor, self.pools[pool], f, *args, **kwargs)
