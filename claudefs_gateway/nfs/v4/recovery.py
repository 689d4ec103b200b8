# -*- test-case-name: tests.nfs.v4.test_recovery -*-
"""
NFSv4 client records kept in the store, and reclaim after a restart (RFC
8881 §8.4.2, §8.4.3).

A client that completed its reclaims (RECLAIM_COMPLETE) is recorded by its
C{co_ownerid} in the store's small durable state (C{IMetadataService.set_state},
key C{nfs4.clients}); the record goes when the client is destroyed or its
lease expires. At start, the last run's records are the clients allowed to
reclaim: if there are any, the shared grace period begins
(L{claudefs_gateway.nfs.grace.Grace}), and each such client may reclaim its
opens and locks (CLAIM_PREVIOUS, LOCK with reclaim) until it sends
RECLAIM_COMPLETE or grace ends. Once every one of them has, grace ends
early. Clients not in the record, and reclaims after RECLAIM_COMPLETE or
outside grace, answer NFS4ERR_NO_GRACE.

Writes are coalesced: one in flight at a time, the latest set written next.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from claudefs_gateway.core.log import Logger

__all__ = ["ClientRecords", "STATE_KEY"]

STATE_KEY = "nfs4.clients"


class ClientRecords:
    """
    @param get: reads the stored value (C{vfs.get_state}), a Deferred.
    @param put: stores a value (C{vfs.set_state}), a Deferred.
    @param grace: the shared grace period.
    @param max_records: the most client owners kept (C{nfs.v4.max_clients}).
    """

    _log = Logger()

    def __init__(
        self,
        get: Callable[[str], defer.Deferred[bytes | None]],
        put: Callable[[str, bytes | None], defer.Deferred[None]],
        grace: Any,
        max_records: int,
    ) -> None:
        self._get = get
        self._put = put
        self.grace = grace
        self.max_records = max_records
        self.previous: set[bytes] = set()
        self.current: set[bytes] = set()
        self.started = False
        #: The meta server's records (vfs/shared_clients.ClusterClients) on several gateways.
        self.cluster: Any = None
        self._dirty = False
        self._saving: defer.Deferred[None] | None = None

    async def start(self, locks: Any) -> None:
        """Load the last run's records; begin grace if there are any."""
        # Several gateways: the meta server keeps every gateway's records and
        # the grace a gone gateway's clients need (servers/clients.py); the
        # store's one key would be overwritten by each gateway in turn.
        self.cluster = getattr(locks, "clients", None)
        if self.cluster is not None:
            self.started = True
            for owner in sorted(self.current):
                self.cluster.note("nfs4", owner)
            return
        raw = await self._get(STATE_KEY)
        owners: set[bytes] = set()
        if raw:
            try:
                doc = json.loads(raw)
                owners = {bytes.fromhex(h) for h in doc.get("clients", [])}
            except (ValueError, TypeError, AttributeError):
                self._log.warn("NFSv4 client records unreadable; no reclaims this time")
        self.previous = owners
        self.started = True
        if owners:
            self._log.info("{n} NFSv4 clients may reclaim their state", n=len(owners))
            self.grace.begin(locks, "nfs4")
        if self._dirty:
            # Clients recorded while the store was opening.
            self._save_soon()

    def may_reclaim(self, owner: bytes) -> bool:
        """Whether a client may reclaim now: it had state last run, and it is grace."""
        if self.cluster is not None and self.cluster.may_reclaim("nfs4", owner):
            return True
        return owner in self.previous and self.grace.active

    def reclaim_pending(self, owner: bytes) -> bool:
        """Several gateways: C{owner}'s gateway may be gone; its reclaim waits (NFS4ERR_DELAY)."""
        return self.cluster is not None and self.cluster.reclaim_pending("nfs4", owner)

    def reclaimed(self, owner: bytes) -> None:
        """RECLAIM_COMPLETE from C{owner}: record it, and end grace once all are back."""
        self.previous.discard(owner)
        if self.cluster is not None:
            self.current.add(owner)
            self.cluster.reclaimed("nfs4", owner)
            return
        self.note(owner)
        if not self.previous:
            self.grace.done("nfs4")

    def note(self, owner: bytes) -> None:
        if owner in self.current:
            return
        if len(self.current) >= self.max_records:
            self._log.warn("too many NFSv4 client records; one not kept")
            return
        self.current.add(owner)
        if self.cluster is not None:
            self.cluster.note("nfs4", owner)
            return
        self._save_soon()

    def forget(self, owner: bytes) -> None:
        if owner in self.current:
            self.current.discard(owner)
            if self.cluster is not None:
                self.cluster.forget("nfs4", owner)
                return
            self._save_soon()

    def _doc(self) -> bytes:
        keep = set(self.current)
        if self.grace.active:
            keep |= self.previous
        return json.dumps({"clients": sorted(o.hex() for o in keep)}).encode()

    def _save_soon(self) -> None:
        self._dirty = True
        if self._saving is None and self.started:
            d = defer.Deferred.fromCoroutine(self._save_loop())
            self._saving = None if d.called else d

    async def _save_loop(self) -> None:
        try:
            while self._dirty:
                self._dirty = False
                try:
                    await self._put(STATE_KEY, self._doc())
                except Exception:
                    self._log.failure("saving NFSv4 client records")
                    return
        finally:
            self._saving = None

    def flushed(self) -> defer.Deferred[None]:
        """Fires when the stored records are up to date."""
        if self._saving is None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()

        def fire(result: object) -> object:
            d.callback(None)
            return result

        self._saving.addBoth(fire)
        return d
