# -*- test-case-name: tests.servers.test_clients -*-
"""
NFSv4 and NLM client records of every gateway on one C{claudefs-meta}, and
the grace period they need across gateways (docs/rpc.rst "Client records
and grace").

A gateway records each client that holds (or may hold) state through it:
an NFSv4 client once it sent RECLAIM_COMPLETE (its C{co_ownerid}), an NLM
client once NSM monitors it (its caller name). When a gateway's session is
gone (its subscription lost and not renewed in time: the process was
killed or restarted), its locks and shares go (L{SharedState.reset}) and
its clients' records become I{reclaimable}: those clients come back,
through a restarted gateway or any other (a killed worker's connections go
to the others), and reclaim what they held (RFC 8881 §8.4.2: CLAIM_PREVIOUS
opens, reclaiming LOCKs; NLM reclaims after SM_NOTIFY).

While any record is reclaimable the whole cluster is in grace: the meta
server refuses every LOCK and SHARE_OPEN that is not a reclaim with
C{Grace} (so no gateway grants a new open or lock that a reclaim would
then conflict with), and each gateway learns the grace and the
reclaimable clients from C{EV_GRACE}, refusing new state itself with
NFS4ERR_GRACE / NLM4_DENIED_GRACE_PERIOD and allowing those clients'
reclaims. Grace ends when every reclaimable NFSv4 client has sent
RECLAIM_COMPLETE (RFC 8881 §18.51) and no NLM client is left to reclaim,
or after C{grace} seconds; what was not reclaimed by then is gone.

The records live in the meta server's memory, as the lock table does: a
restarted meta server starts with none, and the live gateways send theirs
again with their locks. Several meta servers over PostgreSQL keep them in
the database instead (L{claudefs_gateway.servers.clients_pg}), by these rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from claudefs_gateway.core.log import Logger

__all__ = ["ClientRegistry", "GRACE", "PROTOCOLS"]

#: Seconds of cross-gateway grace after a gateway with clients is gone
#: (the gateway's own C{nfs.grace_secs} default); C{meta_store.grace_secs}
#: sets it (servers/service.py build_meta).
GRACE = 90.0
PROTOCOLS = ("nfs4", "nlm")
#: Records kept at most (every gateway's together); more are not kept, logged.
MAX_RECORDS = 65536


@attrs.define
class Record:
    session: int  # the gateway session holding the client now; 0 once gone
    reclaimable: bool = False


class ClientRegistry:
    """
    @param publish: C{publish(event_name, value)} sends to every subscriber.
    """

    _log = Logger()

    def __init__(
        self, clock: IReactorTime, publish: Callable[[str, Any], None], grace: float = GRACE
    ) -> None:
        self.clock = clock
        self._publish = publish
        self.grace = grace
        self.records: dict[tuple[str, bytes], Record] = {}
        self._timer: IDelayedCall | None = None
        self._ends = 0.0
        # Sessions whose subscription is lost, not yet declared gone (SharedState.LINGER).
        self._lost: set[int] = set()

    # -- what gateways tell -----------------------------------------------------------------------

    def note(self, session: int, protocol: str, owner: bytes) -> None:
        """C{session} serves client C{owner} now (a reclaiming client stays reclaimable)."""
        key = (protocol, bytes(owner))
        rec = self.records.get(key)
        if rec is None:
            if len(self.records) >= MAX_RECORDS:
                self._log.warn("too many client records; one not kept")
                return
            self.records[key] = Record(session)
        else:
            rec.session = session

    def forget(self, session: int, protocol: str, owner: bytes) -> None:
        """The client is gone for good (destroyed, expired, unmonitored)."""
        rec = self.records.pop((protocol, bytes(owner)), None)
        if rec is not None and rec.reclaimable:
            self._reclaimed_one()

    def reclaimed(self, session: int, protocol: str, owner: bytes) -> None:
        """An NFSv4 client's RECLAIM_COMPLETE: it is served by C{session} from now."""
        key = (protocol, bytes(owner))
        rec = self.records.get(key)
        if rec is None:
            self.note(session, protocol, owner)
            return
        rec.session = session
        if rec.reclaimable:
            rec.reclaimable = False
            self._reclaimed_one()

    def session_lost(self, session: int) -> None:
        """
        C{session}'s subscription is lost: its gateway may be gone (it is
        declared so after the linger time). Meanwhile its clients are
        I{pending}: one that comes back through another gateway to reclaim
        is told to try again shortly (NFS4ERR_DELAY), not that it may not.
        """
        if self.holds(session):
            self._lost.add(session)
            self._announce()

    def session_back(self, session: int) -> None:
        if session in self._lost:
            self._lost.discard(session)
            self._announce()

    def session_gone(self, session: int) -> None:
        """C{session}'s gateway is gone: its clients may reclaim, through any gateway."""
        self._lost.discard(session)
        gone = [k for k, r in self.records.items() if r.session == session]
        if not gone:
            return
        for key in gone:
            rec = self.records[key]
            rec.session = 0
            rec.reclaimable = True
        self._log.info(
            "gateway session {session:x} gone with {n} clients: grace of {grace}s",
            session=session,
            n=len(gone),
            grace=self.grace,
        )
        self._begin()

    def holds(self, session: int) -> bool:
        """Whether C{session} serves clients (so its loss must be noticed)."""
        return any(r.session == session for r in self.records.values())

    # -- grace -------------------------------------------------------------------------------------

    @property
    def in_grace(self) -> bool:
        return self._timer is not None

    def may_reclaim(self, protocol: str, owner: bytes) -> bool:
        rec = self.records.get((protocol, bytes(owner)))
        return self.in_grace and rec is not None and rec.reclaimable

    def _begin(self) -> None:
        self._ends = self.clock.seconds() + self.grace
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.grace)
        else:
            self._timer = self.clock.callLater(self.grace, self._over, "the grace period ran out")
        self._announce()

    def _reclaimed_one(self) -> None:
        # NLM has no RECLAIM_COMPLETE: an NLM client left keeps grace to its end.
        if not any(r.reclaimable for r in self.records.values()):
            self._over("every client reclaimed")
        else:
            self._announce()

    def _over(self, why: str) -> None:
        timer, self._timer = self._timer, None
        if timer is None:
            return
        if timer.active():
            timer.cancel()
        left = [k for k, r in self.records.items() if r.reclaimable]
        for key in left:
            del self.records[key]
        self._log.info(
            "cross-gateway grace over: {why}; {n} clients did not reclaim", why=why, n=len(left)
        )
        self._announce()

    def event(self) -> tuple[int, list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        """
        EV_GRACE's value: milliseconds of grace left (0: none), who may
        reclaim, and whose gateway may be gone (L{session_lost}).
        """
        pending = sorted(k for k, r in self.records.items() if r.session in self._lost)
        if self._timer is None:
            return 0, [], pending
        left = max(1, int((self._ends - self.clock.seconds()) * 1000))
        return left, sorted(k for k, r in self.records.items() if r.reclaimable), pending

    @property
    def worth_telling(self) -> bool:
        """Whether a gateway that subscribes now needs an EV_GRACE."""
        return self.in_grace or bool(self._lost)

    def _announce(self) -> None:
        self._publish("EV_GRACE", self.event())

    def stop(self) -> None:
        self._lost.clear()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def counts(self) -> dict[str, int]:
        return {
            "client_records": len(self.records),
            "reclaimable": sum(1 for r in self.records.values() if r.reclaimable),
            "grace": 1 if self.in_grace else 0,
        }
