# -*- test-case-name: tests.backend.remote.test_shared_pg -*-
"""
The NFSv4 and NLM client records of every gateway, and their grace, kept in
PostgreSQL (docs/postgresql.rst "Client records and grace"), so that the
meta servers over one database share them: a gateway that dies while its
sessions were on meta server A is seen as gone by the gateways on B, whose
clients then wait for its clients' reclaims (RFC 8881 §8.4.2), and which let
those clients reclaim through them.

The rules are L{claudefs_gateway.servers.clients.ClientRegistry}'s (one meta
server, in memory); only where they live differs:

 - C{client_record}: one row per client, naming the gateway session serving
   it (0 once that gateway is gone), the meta server that session used, and
   whether the client may reclaim.
 - C{session_lost}: sessions whose event subscription to a live meta server
   went, not yet declared gone (their clients' reclaims are told to wait).
 - C{grace}: its one row says when the grace ends (NULL: none). Every change
   of the records first takes that row C{FOR UPDATE}, so changes through
   different meta servers are applied one at a time and none needs a retry.

A change commits with a C{pg_notify} (kind C{G}) in the same transaction;
each other meta server reads the state again and pushes C{EV_GRACE} to its
own gateways. Each server keeps the last state it read, to answer at once
what its opcodes ask (is there grace, the event for a new subscriber), and
arms a timer for the end of a grace; whichever server's timer fires first
ends it in the database (the others find it ended). The meta-side refusal
of new locks and shares during grace is also checked in the lock's own
transaction (L{PgSharedState}), so it never depends on a notification
having arrived.

A session is declared gone only by the meta server its records name (the
one whose linger timer runs out): a gateway that failed over to another
server re-sends its clients (C{CLIENT_RECLAIMED}, L{ClusterClients.resync}),
which moves their records to the new server. A meta server found dead
(L{PgSharedState}'s heartbeat) has every client still named by it made
reclaimable, with a grace, as if its gateways had gone: those whose gateway
lives on through another server were moved already.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall

from claudefs_gateway.core.log import Logger
from claudefs_gateway.servers import clients as _mem
from claudefs_gateway.servers.clients import GRACE

__all__ = ["PgClientRegistry"]

_TOP = 2**63

#: (milliseconds of grace left or 0, reclaimable clients, pending clients)
State = tuple[int, list[tuple[str, bytes]], list[tuple[str, bytes]]]


def _db(session: int) -> int:
    return session - 2**64 if session >= _TOP else session


class PgClientRegistry:
    """
    L{ClientRegistry}'s interface, over the database of a L{PgSharedState}.

    @param shared: the meta server's L{PgSharedState} (its store, boot id,
        notifications and per-session ordering are used).
    @param publish: C{publish(event_name, value)} sends to every gateway of this server.
    """

    _log = Logger()

    def __init__(self, shared: Any, publish: Callable[[str, Any], None], grace: float = GRACE):
        self.shared = shared
        self.store = shared.store
        self.clock = shared.clock
        self._publish = publish
        self.grace = grace
        self._ends = 0.0
        self._reclaimable: list[tuple[str, bytes]] = []
        self._pending: list[tuple[str, bytes]] = []
        self._timer: IDelayedCall | None = None
        self._stopped = False
        self._reading = False
        self._again = False
        #: New clients' records refused for L{MAX_RECORDS}, and those logged so far.
        self.not_kept = 0
        self._logged_not_kept = 0

    # -- in a transaction (db thread) -----------------------------------------------------------

    def _begin_tx(self, conn: Any) -> list[str]:
        """Take the grace row; end a grace that ran out. Returns what to log."""
        row = conn.execute(
            "SELECT ends_at IS NOT NULL AND ends_at <= now() FROM grace FOR UPDATE"
        ).fetchone()
        if row is None:  # only if someone deleted it: put it back
            conn.execute("INSERT INTO grace (one, ends_at) VALUES (true, NULL)")
            return []
        return self._end_tx(conn, "the grace period ran out") if row[0] else []

    @staticmethod
    def _end_tx(conn: Any, why: str) -> list[str]:
        n = conn.execute("DELETE FROM client_record WHERE reclaimable").rowcount
        conn.execute("UPDATE grace SET ends_at = NULL")
        return [f"cross-gateway grace over: {why}; {n} clients did not reclaim"]

    def _finish_tx(self, conn: Any, logs: list[str], changed: bool) -> tuple[State, list[str]]:
        """End a grace nobody is left to reclaim in; read the state; notify if it changed."""
        active = conn.execute("SELECT ends_at IS NOT NULL FROM grace").fetchone()[0]
        if (
            active
            and conn.execute("SELECT 1 FROM client_record WHERE reclaimable LIMIT 1").fetchone()
            is None
            and conn.execute("SELECT 1 FROM session_lost LIMIT 1").fetchone() is None
        ):
            # NLM has no RECLAIM_COMPLETE: an NLM client left keeps grace to its end.
            # A grace whose clients are still pending (L{grace_begins}) is not over either.
            logs += self._end_tx(conn, "every client reclaimed")
        state = self._read_tx(conn)
        if changed or logs:
            self.shared._notify(conn, "G")
        return state, logs

    @staticmethod
    def _read_tx(conn: Any) -> State:
        left = conn.execute(
            "SELECT greatest(1, ceil(extract(epoch FROM ends_at - now()) * 1000))::bigint"
            " FROM grace WHERE ends_at IS NOT NULL"
        ).fetchone()
        reclaimable = [
            (str(p), bytes(c))
            for p, c in conn.execute(
                "SELECT protocol, client FROM client_record WHERE reclaimable ORDER BY 1, 2"
            )
        ]
        pending = [
            (str(p), bytes(c))
            for p, c in conn.execute(
                "SELECT c.protocol, c.client FROM client_record c"
                " JOIN session_lost l ON l.session = c.session ORDER BY 1, 2"
            )
        ]
        if left is None:
            return 0, [], pending
        return int(left[0]), reclaimable, pending

    def reap_tx(self, conn: Any, boot: str) -> bool:
        """Meta server C{boot} is dead: its clients may reclaim (inside L{PgSharedState}'s beat)."""
        self._begin_tx(conn)
        conn.execute("DELETE FROM session_lost WHERE server = %s", (boot,))
        n = conn.execute(
            "UPDATE client_record SET session = 0, reclaimable = true"
            " WHERE server = %s AND session <> 0 AND NOT reclaimable",
            (boot,),
        ).rowcount
        if n:
            self._start_grace_tx(conn)
            self.shared._notify(conn, "G")
        return bool(n)

    def _insert_tx(self, conn: Any, protocol: str, owner: bytes, session: int) -> bool:
        """
        A new client's record, unless every gateway's together are already
        L{MAX_RECORDS} (as L{ClientRegistry} keeps at most): the grace row
        taken first makes the count exact. Each record is held in every meta
        server's memory while it may reclaim, and sent in C{EV_GRACE}.
        """
        n = conn.execute(
            "INSERT INTO client_record (protocol, client, session, server)"
            " SELECT %s, %s, %s, %s WHERE (SELECT count(*) FROM client_record) < %s",
            (protocol, bytes(owner), _db(session), self.shared.boot, _mem.MAX_RECORDS),
        ).rowcount
        if not n:
            self.not_kept += 1  # logged on the reactor (L{_apply})
        return bool(n)

    def _start_grace_tx(self, conn: Any) -> None:
        conn.execute(
            "UPDATE grace SET ends_at = now() + make_interval(secs => %s)", (float(self.grace),)
        )

    # -- running a change ------------------------------------------------------------------------

    def _run(self, session: int, change: Callable[[Any], bool]) -> defer.Deferred[None]:
        """Run C{change(conn)} (True: the state changed) after the session's earlier calls."""

        def tx(conn: Any) -> tuple[State, list[str]]:
            logs = self._begin_tx(conn)
            changed = change(conn)
            return self._finish_tx(conn, logs, changed)

        def run() -> defer.Deferred[None]:
            d = self.store.transaction(tx)
            d.addCallback(self._apply)
            return d  # type: ignore[no-any-return]

        return self.shared._in_order(session, run)  # type: ignore[no-any-return]

    def _quiet(self, d: defer.Deferred[None]) -> defer.Deferred[None]:
        """A change this server made of its own accord: a failure is logged, not raised."""
        return d.addErrback(lambda f: self._log.warn("client records: {why}", why=str(f.value)))

    def _apply(self, out: tuple[State, list[str]]) -> None:
        (left, reclaimable, pending), logs = out
        for line in logs:
            self._log.info("{line}", line=line)
        if self.not_kept != self._logged_not_kept:
            self._log.warn(
                "too many client records ({max}); {n} not kept",
                max=_mem.MAX_RECORDS,
                n=self.not_kept - self._logged_not_kept,
            )
            self._logged_not_kept = self.not_kept
        was = (self.in_grace, self._reclaimable, self._pending)
        self._ends = self.clock.seconds() + left / 1000.0 if left else 0.0
        self._reclaimable, self._pending = reclaimable, pending
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if left and not self._stopped:
            # A little after the database's end, so that it has ended there.
            self._timer = self.clock.callLater(left / 1000.0 + 0.05, self.refresh)
        if pending and pending != was[2]:
            self._log.info(
                "gateways may be gone: {n} of their clients wait to reclaim", n=len(pending)
            )
        if was != (self.in_grace, reclaimable, pending) or left:
            self._publish("EV_GRACE", self.event())

    def refresh(self) -> None:
        """Read the state again (another server changed it, or the grace may be over)."""
        if self._stopped:
            return
        if self._reading:
            self._again = True
            return
        self._reading = True

        def tx(conn: Any) -> tuple[State, list[str]]:
            return self._finish_tx(conn, self._begin_tx(conn), False)

        d = self.store.transaction(tx)
        d.addCallback(self._apply)
        d.addErrback(lambda f: self._log.warn("client records: {why}", why=str(f.value)))

        def done(_: object) -> None:
            self._reading = False
            if self._again:
                self._again = False
                self.refresh()

        d.addBoth(done)

    # -- what gateways tell ------------------------------------------------------------------------

    def note(self, session: int, protocol: str, owner: bytes) -> defer.Deferred[None]:
        """C{session} serves client C{owner} now (a reclaiming client stays reclaimable)."""
        boot = self.shared.boot

        def change(conn: Any) -> bool:
            if not conn.execute(
                "UPDATE client_record SET session = %s, server = %s"
                " WHERE protocol = %s AND client = %s",
                (_db(session), boot, protocol, bytes(owner)),
            ).rowcount:
                self._insert_tx(conn, protocol, owner, session)
            return bool(self._pending) or self.in_grace

        return self._run(session, change)

    def forget(self, session: int, protocol: str, owner: bytes) -> defer.Deferred[None]:
        """The client is gone for good (destroyed, expired, unmonitored)."""

        def change(conn: Any) -> bool:
            n = conn.execute(
                "DELETE FROM client_record WHERE protocol = %s AND client = %s",
                (protocol, bytes(owner)),
            ).rowcount
            return bool(n) and (bool(self._pending) or self.in_grace)

        return self._run(session, change)

    def reclaimed(self, session: int, protocol: str, owner: bytes) -> defer.Deferred[None]:
        """An NFSv4 client's RECLAIM_COMPLETE: served by C{session} (through this server) now."""
        boot = self.shared.boot

        def change(conn: Any) -> bool:
            row = conn.execute(
                "UPDATE client_record c SET session = %s, server = %s, reclaimable = false"
                " FROM client_record o WHERE c.protocol = %s AND c.client = %s"
                " AND o.protocol = c.protocol AND o.client = c.client RETURNING o.reclaimable",
                (_db(session), boot, protocol, bytes(owner)),
            ).fetchone()
            if row is None:
                self._insert_tx(conn, protocol, owner, session)
                return bool(self._pending)
            return bool(row[0]) or bool(self._pending)

        return self._run(session, change)

    def session_lost(self, session: int) -> defer.Deferred[None]:
        """
        C{session}'s subscription to this server is lost: its gateway may be
        gone. Meanwhile its clients (recorded through this server) are
        I{pending}: a reclaim through any gateway is told to try again shortly.
        """
        boot = self.shared.boot

        def change(conn: Any) -> bool:
            return bool(
                conn.execute(
                    "INSERT INTO session_lost (session, server) SELECT %s, %s WHERE EXISTS"
                    " (SELECT 1 FROM client_record WHERE session = %s AND server = %s)"
                    " ON CONFLICT (session) DO UPDATE SET server = excluded.server",
                    (_db(session), boot, _db(session), boot),
                ).rowcount
            )

        return self._quiet(self._run(session, change))

    def session_back(self, session: int) -> defer.Deferred[None]:
        def change(conn: Any) -> bool:
            return bool(
                conn.execute(
                    "DELETE FROM session_lost WHERE session = %s", (_db(session),)
                ).rowcount
            )

        return self._quiet(self._run(session, change))

    def grace_begins(self, session: int) -> defer.Deferred[None]:
        """
        C{session}'s gateway is gone, its state not yet dropped: if it has
        clients through this server, the grace begins (new state refused) while
        they stay pending (their reclaims told to wait) until L{session_gone}.
        """
        boot = self.shared.boot

        def change(conn: Any) -> bool:
            if (
                conn.execute(
                    "SELECT 1 FROM client_record WHERE session = %s AND server = %s LIMIT 1",
                    (_db(session), boot),
                ).fetchone()
                is None
            ):
                return False
            self._start_grace_tx(conn)
            return True

        return self._quiet(self._run(session, change))

    def session_gone(self, session: int) -> defer.Deferred[None]:
        """C{session}'s gateway is gone: its clients recorded through this server may reclaim."""
        boot = self.shared.boot

        def change(conn: Any) -> bool:
            conn.execute(
                "DELETE FROM session_lost WHERE session = %s AND server = %s", (_db(session), boot)
            )
            n = conn.execute(
                "UPDATE client_record SET session = 0, reclaimable = true"
                " WHERE session = %s AND server = %s",
                (_db(session), boot),
            ).rowcount
            if n:
                self._start_grace_tx(conn)
            return True

        d = self._run(session, change)
        d.addCallback(
            lambda _: self._log.info(
                "gateway session {session:x} gone: its clients may reclaim for {grace}s",
                session=session,
                grace=self.grace,
            )
        )
        return self._quiet(d)

    def holds(self, session: int) -> bool:
        """Unknown without the database: the caller (PgSharedState) always lingers."""
        return True

    # -- grace, as last read ------------------------------------------------------------------------

    @property
    def in_grace(self) -> bool:
        return self._ends > 0

    def may_reclaim(self, protocol: str, owner: bytes) -> bool:
        return self.in_grace and (protocol, bytes(owner)) in self._reclaimable

    def event(self) -> tuple[int, list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        """EV_GRACE's value, as last read (see L{ClientRegistry.event})."""
        if not self.in_grace:
            return 0, [], list(self._pending)
        left = max(1, int((self._ends - self.clock.seconds()) * 1000))
        return left, list(self._reclaimable), list(self._pending)

    @property
    def worth_telling(self) -> bool:
        return self.in_grace or bool(self._pending)

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def counts(self) -> dict[str, int]:
        return {
            "reclaimable": len(self._reclaimable),
            "grace": 1 if self.in_grace else 0,
        }
