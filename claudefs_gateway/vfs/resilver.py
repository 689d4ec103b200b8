# -*- test-case-name: tests.backend.remote.test_mirrors -*-
"""
Holding writers off a file while a mirror copy of it is re-silvered.

The remote backend copies what a mirror missed from a good copy; a write
landing between its read of the good copy and its write to the stale one
would be undone. So the copy runs under a lease of its own (R, key
C{resilver}): before it starts, every other lease on the file is recalled
and waited for (pNFS layouts, delegations), and whatever another client is
about to change breaks it - the vfs's break-before-mutate - which marks the
copy I{interrupted}; the backend checks that before each write and tries
again later. Reads do not break it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from zope.interface import implementer

from claudefs_gateway.interfaces import ILeaseHolder, ILeaseManager
from claudefs_gateway.vfs.leases import LeaseKey, R, Why

__all__ = ["Held", "resilver_guard"]


@implementer(ILeaseHolder)
class Held:
    """The re-silver's side of its lease: C{interrupted} once anyone else changes the file."""

    def __init__(self) -> None:
        self.interrupted = False

    def lease_break(self, lease: Any, to: int) -> bool:
        self.interrupted = True
        return False

    def lease_revoked(self, lease: Any) -> None:
        self.interrupted = True


def resilver_guard(leases: ILeaseManager) -> Any:
    """C{guard(ino)}: an async context manager giving a L{Held} for the copy of C{ino}."""

    @asynccontextmanager
    async def guard(ino: int) -> AsyncIterator[Held]:
        held = Held()
        await leases.recall(ino, Why.WRITE, (), wait=True)
        key = LeaseKey("resilver", "gateway", ino.to_bytes(8, "big"))
        lease = leases.grant(ino, key, R, held)
        if lease is not None:
            # Several gateways: the meta server may refuse it (another's writer).
            await leases.settle_lease(lease)
        if lease is None or lease.gone:
            held.interrupted = True
        try:
            yield held
        finally:
            if lease is not None and not lease.gone:
                leases.release(lease)

    return guard
