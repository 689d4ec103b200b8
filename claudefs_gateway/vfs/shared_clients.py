# -*- test-case-name: tests.backend.remote.test_clients -*-
"""
This gateway's side of the client records kept by the meta server
(C{servers/clients.py}; docs/rpc.rst "Client records and grace").

The NFSv4 server and NSM tell it which clients this gateway serves
(C{CLIENT_NOTE}), which are gone (C{CLIENT_FORGET}) and which finished
reclaiming (C{CLIENT_RECLAIMED}); it keeps the meta server's last
C{EV_GRACE}: whether the cluster is in grace (another gateway went with
clients that may reclaim) and which clients may. The shared lock table
consults it, so every front end refuses new state during a grace begun by
another gateway's loss, and lets that gateway's clients reclaim here.

Nothing here is used by the embedded store: one process has its own grace
(C{nfs/grace.py}) and its records in the store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from claudefs_gateway.core.log import Logger

__all__ = ["ClusterClients"]


class ClusterClients:
    """
    @param link: the L{claudefs_gateway.vfs.shared.Link} to the meta server.
    @param clock: for the end of the grace the meta server announced.
    """

    _log = Logger()

    def __init__(self, link: Any, clock: Any) -> None:
        self.link = link
        self.clock = clock
        self.reclaimable: set[tuple[str, bytes]] = set()
        self.noted: set[tuple[str, bytes]] = set()
        self.pending: set[tuple[str, bytes]] = set()
        self._until = 0.0
        self._listeners: list[Callable[[], None]] = []

    # -- what the meta server says -----------------------------------------------------------

    def on_grace(self, left_ms: int, clients: list[Any], pending: Iterable[Any] = ()) -> None:
        """
        EV_GRACE: grace for C{left_ms} more milliseconds (0: over), who may
        reclaim, and whose gateway may be gone (not yet declared so).
        """
        was = self.in_grace
        self._until = self.clock.seconds() + left_ms / 1000.0 if left_ms else 0.0
        self.reclaimable = {(p, bytes(o)) for p, o in clients}
        self.pending = {(p, bytes(o)) for p, o in pending}
        if self.in_grace and not was:
            self._log.info(
                "cross-gateway grace: {n} clients of a gateway that went may reclaim",
                n=len(self.reclaimable),
            )
        for listener in list(self._listeners):
            listener()

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    @property
    def in_grace(self) -> bool:
        return self._until > 0 and self.clock.seconds() < self._until

    def may_reclaim(self, protocol: str, owner: bytes) -> bool:
        """Whether C{owner} held state through a gateway that went, and may reclaim it now."""
        return self.in_grace and (protocol, bytes(owner)) in self.reclaimable

    def reclaim_pending(self, protocol: str, owner: bytes) -> bool:
        """Whether C{owner}'s gateway may be gone: a reclaim should be tried again shortly."""
        return (protocol, bytes(owner)) in self.pending

    # -- what this gateway tells ---------------------------------------------------------------

    def note(self, protocol: str, owner: bytes) -> None:
        key = (protocol, bytes(owner))
        if key not in self.noted:
            self.noted.add(key)
            self.link.send("CLIENT_NOTE", key)

    def forget(self, protocol: str, owner: bytes) -> None:
        key = (protocol, bytes(owner))
        self.noted.discard(key)
        self.link.send("CLIENT_FORGET", key)

    def reclaimed(self, protocol: str, owner: bytes) -> None:
        key = (protocol, bytes(owner))
        self.noted.add(key)
        self.reclaimable.discard(key)
        self.link.send("CLIENT_RECLAIMED", key)

    def resync(self) -> None:
        """
        Subscribed again: the meta server may have forgotten us (it restarted)
        or declared us gone (a cut longer than its linger time) while our
        clients kept their state here, which the lock table sends again. Each
        client is the meta server's as reclaimed through us: recorded if it
        was forgotten, no longer awaited if it was made reclaimable.
        """
        for key in sorted(self.noted):
            self.link.send("CLIENT_RECLAIMED", key)
