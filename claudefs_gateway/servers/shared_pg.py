# -*- test-case-name: tests.backend.remote.test_shared_pg -*-
"""
The shared state of every gateway (servers/shared.py) kept in PostgreSQL, so
that several C{claudefs-meta} servers over one database share it
(docs/postgresql.rst "Shared state").

Byte-range locks and share reservations: each change of an inode's locks or
shares is one READ COMMITTED transaction that first takes that inode's row
of C{shared_inode} C{FOR UPDATE} (inserting it if missing), then reads every
lock and share row of the inode, replays them into a fresh L{LockTable} (the
same conflict rules as one meta server's memory: POSIX and Windows ranges,
share modes), applies the change there (a conflict raises, and the
transaction rolls back), writes the inode's rows back, and sends
C{pg_notify} inside the same transaction: the other meta servers hear of
exactly the committed changes, and reload the inode and push C{EV_LOCKS} to
their gateways. Row locks rather than SERIALIZABLE: every conflict is about
one inode, so one row lock orders its changes and nothing needs a retry;
rather than advisory locks: an advisory key space is shared with every
other user of the database, a row of our own schema is not.

Lease holdings are one row per (inode, gateway session); C{LEASE_RECALL}
reads the inode's rows and sends C{EV_LEASE_BREAK} to its own sessions
directly and, through C{pg_notify}, asks the meta server each other session
is on to do it; that server forwards the session's C{LEASE_BREAK_ACK} back
the same way.

Each row names the meta server that wrote it last (its boot id,
L{PostgresStore.server_id}, new at every start). Each meta server renews its
row of C{meta_server} every L{HEARTBEAT} seconds; one not seen for
C{dead_after} seconds (L{LINGER}) is dead, and the first live server to see it
deletes its rows (in the same per-inode order and transaction as any lock
change) and tells everyone. A gateway of the dead server has meanwhile failed
over to another and sent C{SESSION_RESET} and all it holds again, so its
rows now name the new server and stay. A session whose subscription to a
live server goes loses the rows it has through that server after L{LINGER}
seconds, as with one server.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from zope.interface import implementer

from claudefs_gateway import errors
from claudefs_gateway.core.log import Logger
from claudefs_gateway.servers.clients_pg import PgClientRegistry
from claudefs_gateway.servers.deadlocks import WaitGraph
from claudefs_gateway.servers.shared import LINGER, RECALL_TIMEOUT, BreakBook, ISharedState
from claudefs_gateway.vfs.leases import KEEP_FOR, W, Why
from claudefs_gateway.vfs.locks import LockOwner, LockTable, ShareToken
from claudefs_gateway.vfs.shared import modes_from_bits, modes_to_bits, owner_from_wire

__all__ = ["PgSharedState", "HEARTBEAT"]

#: Seconds between a meta server's renewals of its C{meta_server} row.
HEARTBEAT = 2.0

_TOP = 2**63


def _db(session: int) -> int:
    """A u64 session id as PostgreSQL's signed bigint."""
    return session - 2**64 if session >= _TOP else session


def _u64(value: int) -> int:
    return value + 2**64 if value < 0 else value


WireOwner = tuple[str, bytes, bytes]


class _View:
    """One inode's locks and shares as read from the database, in a fresh L{LockTable}."""

    def __init__(self, ino: int, clock: IReactorTime) -> None:
        self.ino = ino
        self.table = LockTable(clock)
        self.owners: dict[LockOwner, tuple[int, WireOwner]] = {}
        self.server: dict[int, str] = {}  # session -> the meta server its rows name
        self.tokens: dict[int, tuple[int, int, ShareToken]] = {}  # id(token) -> session, sid

    def owner(self, session: int, wire: Any) -> LockOwner:
        w: WireOwner = (str(wire[0]), bytes(wire[1]), bytes(wire[2]))
        theirs = owner_from_wire(w)
        client = theirs.client.encode() if isinstance(theirs.client, str) else theirs.client
        mine = LockOwner(theirs.protocol, b"%x/" % session + client, theirs.owner)
        self.owners[mine] = (session, w)
        return mine

    def load(self, conn: Any) -> None:
        ino = self.ino
        rows = conn.execute(
            "SELECT session, protocol, client, owner, start_off, length, exclusive, server"
            " FROM lock_range WHERE ino = %s ORDER BY id",
            (ino,),
        ).fetchall()
        for sess, proto, client, owner, start, length, exclusive, server in rows:
            s = _u64(sess)
            self.server[s] = server
            mo = self.owner(s, (proto, client, owner))
            d = self.table.lock(ino, mo, int(start), int(length), exclusive, reclaim=True)
            d.addErrback(lambda f: _log.warn("stored lock refused: {why}", why=str(f.value)))
        rows = conn.execute(
            "SELECT session, sid, protocol, client, owner, access, deny, server"
            " FROM share_reservation WHERE ino = %s ORDER BY id",
            (ino,),
        ).fetchall()
        for sess, sid, proto, client, owner, access, deny, server in rows:
            s = _u64(sess)
            self.server[s] = server
            mo = self.owner(s, (proto, client, owner))
            try:
                t = self.table.open_share(
                    ino, mo, modes_from_bits(access), modes_from_bits(deny), reclaim=True
                )
            except errors.FSError as e:
                _log.warn("stored share refused: {why}", why=str(e))
                continue
            self.tokens[id(t)] = (s, int(sid), t)

    def save(self, conn: Any) -> None:
        ino = self.ino
        conn.execute("DELETE FROM lock_range WHERE ino = %s", (ino,))
        conn.execute("DELETE FROM share_reservation WHERE ino = %s", (ino,))
        for lk in self.table.locks(ino):
            s, (proto, client, owner) = self.owners[lk.owner]
            conn.execute(
                "INSERT INTO lock_range (ino, session, protocol, client, owner, start_off,"
                " length, exclusive, server) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (ino, _db(s), proto, client, owner, lk.start, lk.length, lk.exclusive,
                 self.server[s]),
            )  # fmt: skip
        for t in self.table.shares(ino):
            s, sid, _ = self.tokens[id(t)]
            _, (proto, client, owner) = self.owners[t.owner]
            conn.execute(
                "INSERT INTO share_reservation (ino, session, sid, protocol, client, owner,"
                " access, deny, server) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (ino, _db(s), sid, proto, client, owner, modes_to_bits(t.access),
                 modes_to_bits(t.deny), self.server[s]),
            )  # fmt: skip
        if not self.table.busy(ino):
            conn.execute("DELETE FROM shared_inode WHERE ino = %s", (ino,))

    def drop_session(self, session: int, server: str | None = None) -> None:
        """Release everything of C{session} (only if its rows name C{server}, if given)."""
        if server is not None and self.server.get(session) != server:
            return
        for mo, (s, _) in list(self.owners.items()):
            if s == session:
                self.table.release_owner(mo)

    def event(self) -> tuple[int, list[Any], list[Any]]:
        """EV_LOCKS: the inode's whole state, owners as their gateways named them."""
        locks = [
            (self.owners[lk.owner][0], self.owners[lk.owner][1], lk.start, lk.length, lk.exclusive)
            for lk in self.table.locks(self.ino)
        ]
        shares = [
            (
                self.owners[t.owner][0],
                self.owners[t.owner][1],
                modes_to_bits(t.access),
                modes_to_bits(t.deny),
            )
            for t in self.table.shares(self.ino)
        ]
        return self.ino, locks, shares


class _Tables:
    """The locks of several inodes' L{_View}s, as L{WaitGraph} reads a lock table."""

    def __init__(self, views: dict[int, _View]) -> None:
        self.views = views

    def locks(self, ino: int) -> list[Any]:
        view = self.views.get(ino)
        return [] if view is None else list(view.table.locks(ino))


_log = Logger()


@implementer(ISharedState)
class PgSharedState(BreakBook):
    """
    L{ISharedState} in the database of a L{PostgresStore}, shared by every meta
    server on it.

    @param store: the meta server's open L{PostgresStore} (its pool, boot id
        C{server_id} and LISTEN connection are used).
    @param push: as L{SharedState}'s: one event to one of this server's sessions.
    @param publish: as L{SharedState}'s: one event to every gateway of this server.
    """

    _log = _log

    def __init__(
        self,
        clock: IReactorTime,
        store: Any,
        push: Callable[[int, str, Any], bool],
        publish: Callable[[str, Any], None],
        recall_timeout: float = RECALL_TIMEOUT,
        linger: float = LINGER,
        dead_after: float = LINGER,
        heartbeat: float = HEARTBEAT,
    ) -> None:
        self.clock = clock
        self.store = store
        self._push = push
        self._publish = publish
        self.recall_timeout = recall_timeout
        self.linger = linger
        self.dead_after = dead_after
        self.heartbeat = heartbeat
        self._breaks: dict[int, tuple[set[int], defer.Deferred[None], IDelayedCall]] = {}
        # (break id, session) -> the meta server that asked
        self._forwarded: dict[tuple[int, int], str] = {}
        # Break ids unique across meta servers: a random high half, a counter below.
        self._ids = itertools.count((int.from_bytes(os.urandom(4), "big") >> 1) << 32 | 1)
        self._gone: dict[int, IDelayedCall] = {}
        #: Sessions subscribed to this server now (L{_gone_elsewhere} leaves their rows).
        self._live: set[int] = set()
        self._tails: dict[int, tuple[defer.Deferred[None], int]] = {}
        self._reloading: dict[tuple[str, int], bool] = {}
        self._beat: IDelayedCall | None = None
        self._stopped = False
        #: Boot ids of the dead meta servers whose rows this one reaped.
        self.reaped: list[str] = []
        # bid -> (session, ino, keep) of this server's recalls under way
        self._recalling: dict[int, tuple[int, int, int]] = {}
        #: The client records and their grace, if kept: a L{PgClientRegistry} (in the
        #: database, shared with every meta server) made by L{client_registry}.
        self.clients: Any = None
        store.on_shared_event(self._heard)

    def client_registry(
        self, publish: Callable[[str, Any], None], grace: float
    ) -> PgClientRegistry:
        """The client records and grace of every gateway, in this state's database."""
        return PgClientRegistry(self, publish, grace=grace)

    @property
    def boot(self) -> str:
        return str(self.store.server_id)

    # -- running ---------------------------------------------------------------------------------

    def _notify(self, conn: Any, *parts: object) -> None:
        payload = ";".join([self.boot, *(str(p) for p in parts)])
        conn.execute("SELECT pg_notify(%s, %s)", (self.store.settings.shared_channel, payload))

    def _in_order(self, session: int, make: Callable[[], Any]) -> defer.Deferred[Any]:
        """Run C{make} after the session's earlier calls finished: a gateway sends in order."""
        result: defer.Deferred[Any] = defer.Deferred()
        tail, pending = self._tails.get(session, (None, 0))

        def run(_: object = None) -> defer.Deferred[None]:
            d = defer.maybeDeferred(make)
            d.chainDeferred(result)
            return d.addBoth(lambda _: self._done(session))

        # Counted before running: a call that ends at once has found its entry.
        self._tails[session] = (tail, pending + 1)  # type: ignore[assignment]
        if tail is None:
            first = run()
            if session in self._tails:
                self._tails[session] = (first, self._tails[session][1])
        else:
            tail.addCallback(run)
        return result

    def _done(self, session: int) -> None:
        tail, pending = self._tails[session]
        if pending <= 1:
            del self._tails[session]
        else:
            self._tails[session] = (tail, pending - 1)

    def _inode_tx(
        self, conn: Any, ino: int, apply: Callable[[_View], Any], new_state: bool = False
    ) -> tuple[Any, Any]:
        """
        On a db thread, in a transaction: lock C{ino}'s row, load, apply, save,
        notify. With C{new_state} (a LOCK or SHARE_OPEN that is no reclaim),
        refused with L{errors.Grace} while the database says a grace runs: the
        grace of any meta server's gateways, whether or not its notification
        reached this server yet.
        """
        if (
            new_state
            and conn.execute("SELECT 1 FROM grace WHERE ends_at > now()").fetchone() is not None
        ):
            # RFC 8881 §8.4.2: while another gateway's clients reclaim, nothing new.
            raise errors.Grace("another gateway's clients are reclaiming")
        while True:
            conn.execute(
                "INSERT INTO shared_inode (ino) VALUES (%s) ON CONFLICT DO NOTHING", (ino,)
            )
            # A row deleted by the transaction we waited for returns nothing: again.
            got = conn.execute("SELECT 1 FROM shared_inode WHERE ino = %s FOR UPDATE", (ino,))
            if got.fetchone() is not None:
                break
        view = _View(ino, self.clock)
        view.load(conn)
        result = apply(view)
        view.save(conn)
        self._notify(conn, "L", f"{ino:x}")
        return result, view.event()

    def _change(
        self, ino: int, apply: Callable[[_View], Any], new_state: bool = False
    ) -> defer.Deferred[Any]:
        d = self.store.transaction(self._inode_tx, ino, apply, new_state)

        def done(out: tuple[Any, Any]) -> Any:
            self._publish("EV_LOCKS", out[1])
            return out[0]

        return d.addCallback(done)  # type: ignore[no-any-return]

    def _inos_of(self, where: str, params: tuple[Any, ...]) -> defer.Deferred[list[int]]:
        def read(conn: Any) -> list[int]:
            rows = conn.execute(
                f"SELECT ino FROM lock_range WHERE {where}"
                f" UNION SELECT ino FROM share_reservation WHERE {where}",
                params + params,
            )
            return sorted(r[0] for r in rows)

        return self.store.transaction(read)  # type: ignore[no-any-return]

    def _grace_refusal(self, reclaim: bool) -> defer.Deferred[None] | None:
        if not reclaim and self.clients is not None and self.clients.in_grace:
            # RFC 8881 §8.4.2: while another gateway's clients reclaim, nothing new.
            return defer.fail(errors.Grace("another gateway's clients are reclaiming"))
        return None

    # -- locks and shares --------------------------------------------------------------------------

    def lock(
        self,
        session: int,
        ino: int,
        owner: Any,
        start: int,
        length: int,
        exclusive: bool,
        reclaim: bool,
    ) -> defer.Deferred[None]:
        refused = self._grace_refusal(reclaim)
        if refused is not None:
            return refused

        def apply(v: _View) -> None:
            mo = v.owner(session, owner)
            v.server[session] = self.boot
            d = v.table.lock(ino, mo, start, length, exclusive, wait=False, reclaim=reclaim)
            failed: list[Any] = []
            d.addErrback(failed.append)
            if failed:
                failed[0].raiseException()

        return self._in_order(session, lambda: self._change(ino, apply, not reclaim))

    def lock_wait(
        self, session: int, ino: int, owner: Any, start: int, length: int, exclusive: bool
    ) -> defer.Deferred[None]:
        """
        LOCK_WAIT: fires once the wait is recorded in C{lock_waiter}; fails with
        L{errors.Deadlock} if it would wait forever. Every meta server's locks
        and waits are read from the database, in one transaction that first
        takes C{lock_waiter} in SHARE ROW EXCLUSIVE mode (which conflicts with
        itself): two waits closing one cycle through two meta servers are
        checked one after the other, so the second sees the first.
        """
        w = (str(owner[0]), bytes(owner[1]), bytes(owner[2]))

        def tx(conn: Any) -> None:
            conn.execute("LOCK TABLE lock_waiter IN SHARE ROW EXCLUSIVE MODE")
            namer = _View(0, self.clock)
            waits: dict[LockOwner, tuple[int, int, int, int, bool]] = {}
            for s, proto, client, own, i, st, ln, ex in conn.execute(
                "SELECT session, protocol, client, owner, ino, start_off, length, exclusive"
                " FROM lock_waiter"
            ).fetchall():
                mo = namer.owner(_u64(s), (proto, client, own))
                waits[mo] = (_u64(s), int(i), int(st), int(ln), bool(ex))
            views: dict[int, _View] = {}
            for i in sorted({ino} | {v[1] for v in waits.values()}):
                views[i] = _View(i, self.clock)
                views[i].load(conn)
            graph = WaitGraph(_Tables(views))  # type: ignore[arg-type]
            graph.waits = waits
            mine = namer.owner(session, w)
            graph.wait(session, mine, ino, start, length, exclusive)
            if mine in graph.waits:
                conn.execute(
                    "INSERT INTO lock_waiter (session, protocol, client, owner, ino, start_off,"
                    " length, exclusive, server) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (session, protocol, client, owner) DO UPDATE SET"
                    " ino = excluded.ino, start_off = excluded.start_off,"
                    " length = excluded.length, exclusive = excluded.exclusive,"
                    " server = excluded.server",
                    (_db(session), *w, ino, start, length, exclusive, self.boot),
                )

        return self._in_order(session, lambda: self.store.transaction(tx))

    def lock_unwait(self, session: int, owner: Any) -> defer.Deferred[None]:
        w = (str(owner[0]), bytes(owner[1]), bytes(owner[2]))

        def tx(conn: Any) -> None:
            conn.execute(
                "DELETE FROM lock_waiter WHERE session = %s AND protocol = %s AND client = %s"
                " AND owner = %s",
                (_db(session), *w),
            )

        return self._in_order(session, lambda: self.store.transaction(tx))

    def waiters(self) -> defer.Deferred[int]:
        """How many lock requests wait, through every meta server (for tests and /health)."""

        def tx(conn: Any) -> int:
            return int(conn.execute("SELECT count(*) FROM lock_waiter").fetchone()[0])

        return self.store.transaction(tx)  # type: ignore[no-any-return]

    def unlock(
        self, session: int, ino: int, owner: Any, start: int, length: int
    ) -> defer.Deferred[None]:
        def apply(v: _View) -> None:
            v.server[session] = self.boot
            v.table.unlock(ino, v.owner(session, owner), start, length)

        return self._in_order(session, lambda: self._change(ino, apply))

    async def _each_inode(self, inos: list[int], apply: Callable[[_View], Any]) -> None:
        for ino in inos:
            await self._change(ino, apply)

    def release_owner(self, session: int, owner: Any) -> defer.Deferred[None]:
        w = (str(owner[0]), bytes(owner[1]), bytes(owner[2]))

        def apply(v: _View) -> None:
            v.table.release_owner(v.owner(session, w))

        async def run() -> None:
            inos = await self._inos_of(
                "session = %s AND protocol = %s AND client = %s AND owner = %s",
                (_db(session), *w),
            )
            await self._each_inode(inos, apply)

        return self._in_order(session, lambda: defer.Deferred.fromCoroutine(run()))

    def release_client(self, session: int, protocol: str, client: bytes) -> defer.Deferred[None]:
        def apply(v: _View) -> None:
            for mo, (s, w) in list(v.owners.items()):
                if s == session and w[0] == protocol and w[1] == bytes(client):
                    v.table.release_owner(mo)

        async def run() -> None:
            inos = await self._inos_of(
                "session = %s AND protocol = %s AND client = %s",
                (_db(session), protocol, bytes(client)),
            )
            await self._each_inode(inos, apply)

        return self._in_order(session, lambda: defer.Deferred.fromCoroutine(run()))

    def release_inode(self, ino: int, origin: int = 0) -> defer.Deferred[None]:
        # Every meta server hears the change through the database and pushes
        # it to all its gateways: C{origin} is not told apart here.
        return self._change(ino, lambda v: v.table.release_inode(ino))

    def share_open(
        self,
        session: int,
        ino: int,
        owner: Any,
        sid: int,
        access: int,
        deny: int,
        reclaim: bool,
    ) -> defer.Deferred[None]:
        refused = self._grace_refusal(reclaim)
        if refused is not None:
            return refused

        def apply(v: _View) -> None:
            for key, (s, i, token) in list(v.tokens.items()):
                if s == session and i == sid:
                    v.table.close_share(token)
                    del v.tokens[key]
            mo = v.owner(session, owner)
            v.server[session] = self.boot
            t = v.table.open_share(
                ino, mo, modes_from_bits(access), modes_from_bits(deny), reclaim=reclaim
            )
            v.tokens[id(t)] = (session, sid, t)

        async def run() -> None:
            old = await self._share_inode(session, sid)
            if old is not None and old != ino:
                await self._change(old, self._closer(session, sid))
            await self._change(ino, apply, not reclaim)

        return self._in_order(session, lambda: defer.Deferred.fromCoroutine(run()))

    def _share_inode(self, session: int, sid: int) -> defer.Deferred[int | None]:
        def read(conn: Any) -> int | None:
            row = conn.execute(
                "SELECT ino FROM share_reservation WHERE session = %s AND sid = %s",
                (_db(session), sid),
            ).fetchone()
            return None if row is None else int(row[0])

        return self.store.transaction(read)  # type: ignore[no-any-return]

    @staticmethod
    def _closer(session: int, sid: int) -> Callable[[_View], None]:
        def apply(v: _View) -> None:
            for key, (s, i, token) in list(v.tokens.items()):
                if s == session and i == sid:
                    v.table.close_share(token)
                    del v.tokens[key]

        return apply

    def share_set(self, session: int, sid: int, access: int, deny: int) -> defer.Deferred[None]:
        acc, den = modes_from_bits(access), modes_from_bits(deny)

        def apply(v: _View) -> None:
            found = [t for s, i, t in v.tokens.values() if s == session and i == sid]
            if not found:
                raise errors.NoLock("no such share reservation")
            token = found[0]
            v.server[session] = self.boot
            if not (acc <= token.access and den <= token.deny):
                v.table.upgrade_share(token, acc, den)
            if token.access != acc or token.deny != den:
                v.table.downgrade_share(token, acc, den)

        async def run() -> None:
            ino = await self._share_inode(session, sid)
            if ino is None:
                raise errors.NoLock("no such share reservation")
            await self._change(ino, apply)

        return self._in_order(session, lambda: defer.Deferred.fromCoroutine(run()))

    def share_close(self, session: int, sid: int) -> defer.Deferred[None]:
        async def run() -> None:
            ino = await self._share_inode(session, sid)
            if ino is not None:
                await self._change(ino, self._closer(session, sid))

        return self._in_order(session, lambda: defer.Deferred.fromCoroutine(run()))

    # -- leases -----------------------------------------------------------------------------------

    @staticmethod
    def _holdings(conn: Any, ino: int) -> list[tuple[int, int]]:
        rows = conn.execute("SELECT session, bits FROM lease WHERE ino = %s", (ino,))
        return sorted((_u64(s), int(b)) for s, b in rows)

    def lease_hold(self, session: int, ino: int, bits: int) -> defer.Deferred[None]:
        def tx(conn: Any) -> list[tuple[int, int]]:
            if bits:
                conn.execute(
                    "INSERT INTO lease (ino, session, bits, server) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT (ino, session) DO UPDATE"
                    " SET bits = excluded.bits, server = excluded.server",
                    (ino, _db(session), bits, self.boot),
                )
            else:
                conn.execute(
                    "DELETE FROM lease WHERE ino = %s AND session = %s", (ino, _db(session))
                )
            self._notify(conn, "H", f"{ino:x}")
            return self._holdings(conn, ino)

        def run() -> defer.Deferred[None]:
            d = self.store.transaction(tx)
            d.addCallback(lambda held: self._publish("EV_LEASES", (ino, held)))
            return d  # type: ignore[no-any-return]

        return self._in_order(session, run)

    def lease_grant(self, session: int, ino: int, bits: int) -> defer.Deferred[int]:
        """
        LEASE_GRANT: fires with the part of C{bits} C{session} may keep on C{ino}, now
        counted as held (as L{SharedState.lease_grant}). Decided in one transaction
        holding the inode's C{shared_inode} row, so grants through different meta
        servers are ordered: one W holder across all of them. An outstanding
        recall limits it only if this meta server runs the recall.
        """
        limits = [
            keep for recaller, rino, keep in self._recalling.values()
            if rino == ino and recaller != session
        ]  # fmt: skip

        def tx(conn: Any) -> tuple[int, list[tuple[int, int]] | None]:
            while True:
                conn.execute(
                    "INSERT INTO shared_inode (ino) VALUES (%s) ON CONFLICT DO NOTHING", (ino,)
                )
                got = conn.execute("SELECT 1 FROM shared_inode WHERE ino = %s FOR UPDATE", (ino,))
                if got.fetchone() is not None:
                    break
            others = mine = 0
            for s, held_bits in self._holdings(conn, ino):
                if s == session:
                    mine = held_bits
                else:
                    others |= held_bits
            granted = 0 if others & W else bits & ~W if others else bits
            for keep in limits:
                granted &= keep
            held = None
            if granted:
                conn.execute(
                    "INSERT INTO lease (ino, session, bits, server) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT (ino, session) DO UPDATE"
                    " SET bits = excluded.bits, server = excluded.server",
                    (ino, _db(session), mine | granted, self.boot),
                )
                self._notify(conn, "H", f"{ino:x}")
                held = self._holdings(conn, ino)
            # The row orders grants only; it stays while locks or shares use it.
            conn.execute(
                "DELETE FROM shared_inode WHERE ino = %s"
                " AND NOT EXISTS (SELECT 1 FROM lock_range WHERE ino = %s)"
                " AND NOT EXISTS (SELECT 1 FROM share_reservation WHERE ino = %s)",
                (ino, ino, ino),
            )
            return granted, held

        def done(out: tuple[int, list[tuple[int, int]] | None]) -> int:
            if out[1] is not None:
                self._publish("EV_LEASES", (ino, out[1]))
            return out[0]

        return self._in_order(session, lambda: self.store.transaction(tx).addCallback(done))

    def lease_recall(self, session: int, ino: int, why: str) -> defer.Deferred[None]:
        try:
            keep = KEEP_FOR[Why(why)]
        except ValueError:
            return defer.fail(errors.Inval(f"unknown recall reason {why!r}"))

        def read(conn: Any) -> list[tuple[int, str, bool]]:
            rows = conn.execute(
                "SELECT l.session, l.server, m.boot IS NOT NULL FROM lease l"
                " LEFT JOIN meta_server m ON m.boot = l.server"
                " AND m.seen_at > now() - make_interval(secs => %s)"
                " WHERE l.ino = %s AND l.session <> %s AND (l.bits & ~%s) <> 0",
                (self.dead_after, ino, _db(session), keep),
            )
            return [(_u64(s), server, bool(alive)) for s, server, alive in rows]

        async def run() -> None:
            targets = await self.store.transaction(read)
            if not targets:
                return
            bid = next(self._ids)
            done: defer.Deferred[None] = defer.Deferred()
            timer = self.clock.callLater(self.recall_timeout, self._break_timed_out, bid)
            self._breaks[bid] = ({s for s, _, _ in targets}, done, timer)
            self._recalling[bid] = (session, ino, keep)
            done.addBoth(self._recalled, bid)
            for s, server, alive in targets:
                if server == self.boot or not alive:
                    self._break_here(bid, s, ino, why, self.boot)
                else:
                    self._tell(("B", server, f"{bid:x}", f"{s:x}", f"{ino:x}", why))
            await done

        return defer.Deferred.fromCoroutine(run())

    def _tell(self, parts: tuple[object, ...]) -> None:
        d = self.store.transaction(lambda conn: self._notify(conn, *parts))
        d.addErrback(
            lambda f: self._log.warn("could not reach other meta servers: {why}", why=str(f.value))
        )

    def _break_here(self, bid: int, session: int, ino: int, why: str, origin: str) -> None:
        """Send EV_LEASE_BREAK to one of our sessions, or drop its lease if it has none here."""
        if origin != self.boot:
            self._forwarded[(bid, session)] = origin
        if not self._push(session, "EV_LEASE_BREAK", (bid, ino, why)):
            # Nobody to tell: the session is gone, and so are its leases.
            d = self.lease_hold(session, ino, 0)
            d.addErrback(lambda f: self._log.warn("lease drop failed: {why}", why=str(f.value)))
            d.addBoth(lambda _: self.lease_break_ack(session, bid))

    def lease_break_ack(self, session: int, bid: int) -> None:
        origin = self._forwarded.pop((bid, session), None)
        if origin is not None:
            self._tell(("A", origin, f"{bid:x}", f"{session:x}"))
        else:
            self._acked(bid, session)

    # -- what other meta servers say -----------------------------------------------------------

    def _heard(self, payload: str) -> None:
        parts = payload.split(";")
        try:
            kind = parts[1]
            if kind == "L":
                self._reload("L", int(parts[2], 16))
            elif kind == "H":
                self._reload("H", int(parts[2], 16))
            elif kind == "B" and parts[2] == self.boot:
                bid, s, ino = (int(x, 16) for x in parts[3:6])
                self._break_here(bid, s, ino, parts[6], parts[0])
            elif kind == "G":
                if self.clients is not None:
                    self.clients.refresh()
            elif kind == "A" and parts[2] == self.boot:
                self._acked(int(parts[3], 16), int(parts[4], 16))
            elif kind == "X" and parts[0] != self.boot:
                self._gone_elsewhere(int(parts[2], 16))
        except (IndexError, ValueError):
            self._log.warn("unreadable shared-state notification ignored")

    def _reload(self, kind: str, ino: int) -> None:
        """Read C{ino}'s state again and push it to our gateways; one read at a time per inode."""
        key = (kind, ino)
        if key in self._reloading:
            self._reloading[key] = True  # read again when the running one ends
            return
        self._reloading[key] = False

        def locks(conn: Any) -> Any:
            view = _View(ino, self.clock)
            view.load(conn)
            return view.event()

        def leases(conn: Any) -> Any:
            return ino, self._holdings(conn, ino)

        d = self.store.transaction(locks if kind == "L" else leases)
        d.addCallback(lambda ev: self._publish("EV_LOCKS" if kind == "L" else "EV_LEASES", ev))
        d.addErrback(lambda f: self._log.warn("shared state reload: {why}", why=str(f.value)))

        def again(_: object) -> None:
            if self._reloading.pop(key, False) and not self._stopped:
                self._reload(kind, ino)

        d.addBoth(again)

    # -- snapshot, sessions, liveness -------------------------------------------------------------

    def send_snapshot(self, push: Callable[[str, Any], None]) -> None:
        def read(conn: Any) -> list[tuple[str, Any]]:
            out: list[tuple[str, Any]] = []
            for (ino,) in conn.execute(
                "SELECT ino FROM lock_range UNION SELECT ino FROM share_reservation"
            ).fetchall():
                view = _View(ino, self.clock)
                view.load(conn)
                out.append(("EV_LOCKS", view.event()))
            for (ino,) in conn.execute("SELECT DISTINCT ino FROM lease").fetchall():
                out.append(("EV_LEASES", (ino, self._holdings(conn, ino))))
            return out

        def send(events: list[tuple[str, Any]]) -> None:
            for name, value in events:
                push(name, value)

        d = self.store.transaction(read)
        d.addCallback(send)
        d.addErrback(lambda f: self._log.warn("shared state snapshot: {why}", why=str(f.value)))

    def subscribed(self, session: int) -> None:
        self._live.add(session)
        super().subscribed(session)

    def _gone_elsewhere(self, session: int) -> None:
        """
        Another server declared C{session} gone: the rows naming this server
        go too, unless the session is subscribed here (its gateway moved its
        subscription here) or its linger runs here.
        """
        if session in self._live or session in self._gone or self._stopped:
            return
        self._log.info(
            "gateway session {session:x} gone at another server: its state through this one goes",
            session=session,
        )
        d = self._drop(session, self.boot)
        d.addErrback(
            lambda f: self._log.warn("dropping a gone session failed: {why}", why=str(f.value))
        )

    def unsubscribed(self, session: int) -> None:
        self._live.discard(session)
        if session in self._gone or self._stopped:
            return
        self._gone[session] = self.clock.callLater(self.linger, self._expire, session)
        if self.clients is not None:
            self.clients.session_lost(session)

    def _expire(self, session: int) -> defer.Deferred[None]:
        """
        C{session}'s gateway is gone. In three steps, as one meta server does in
        one: the grace begins (new state is refused; its clients' reclaims are
        still told to wait), its locks and shares through this server go, and
        only then may its clients reclaim (a reclaim before the drop would
        conflict with the very state it reclaims).
        """
        self._gone.pop(session, None)
        self._log.info(
            "gateway session {session:x} gone: its locks and leases through this server go",
            session=session,
        )

        async def run() -> None:
            if self.clients is not None:
                await self.clients.grace_begins(session)
            try:
                await self._drop(session, self.boot)
                # What it took through other servers (its calls may have gone
                # to another than its subscription): theirs to drop (L{_heard}).
                await self.store.transaction(lambda conn: self._notify(conn, "X", f"{session:x}"))
            except Exception as e:
                self._log.warn("dropping a gone session failed: {why}", why=str(e))
            if self.clients is not None:
                await self.clients.session_gone(session)

        return defer.Deferred.fromCoroutine(run())

    def reset(self, session: int) -> defer.Deferred[None]:
        """SESSION_RESET: drop everything of C{session}, through whichever server it held it."""
        return self._drop(session, None)

    def _drop(self, session: int, server: str | None) -> defer.Deferred[None]:
        where = "session = %s" + ("" if server is None else " AND server = %s")
        params: tuple[Any, ...] = (_db(session),) if server is None else (_db(session), server)

        def leases(conn: Any) -> list[tuple[int, list[tuple[int, int]]]]:
            rows = conn.execute(f"DELETE FROM lease WHERE {where} RETURNING ino", params)
            inos = sorted({r[0] for r in rows})
            for ino in inos:
                self._notify(conn, "H", f"{ino:x}")
            return [(ino, self._holdings(conn, ino)) for ino in inos]

        def unwait(conn: Any) -> None:
            conn.execute(f"DELETE FROM lock_waiter WHERE {where}", params)

        async def run() -> None:
            await self.store.transaction(unwait)
            inos = await self._inos_of(where, params)
            await self._each_inode(inos, lambda v: v.drop_session(session, server))
            for ev in await self.store.transaction(leases):
                self._publish("EV_LEASES", ev)
            for bid in list(self._breaks):
                self._acked(bid, session)

        return self._in_order(session, lambda: defer.Deferred.fromCoroutine(run()))

    def start(self) -> None:
        """The store is open: announce this server, and watch for dead ones."""
        if self.clients is not None:
            self.clients.refresh()
        self._tick()

    def _tick(self) -> None:
        self._beat = None
        if self._stopped:
            return
        d = self.store.transaction(self._beat_tx)
        d.addCallback(self._reaped)
        d.addErrback(lambda f: self._log.warn("meta server heartbeat: {why}", why=str(f.value)))

        def again(_: object) -> None:
            if not self._stopped:
                self._beat = self.clock.callLater(self.heartbeat, self._tick)

        d.addBoth(again)

    def _beat_tx(self, conn: Any) -> tuple[list[str], list[Any], list[Any], bool]:
        """Renew our row; reap the rows of servers not seen for C{dead_after} seconds."""
        conn.execute(
            "INSERT INTO meta_server (boot) VALUES (%s)"
            " ON CONFLICT (boot) DO UPDATE SET seen_at = now()",
            (self.boot,),
        )
        dead = [
            r[0]
            for r in conn.execute(
                "SELECT boot FROM meta_server WHERE seen_at < now() - make_interval(secs => %s)"
                " FOR UPDATE SKIP LOCKED",
                (self.dead_after,),
            )
        ]
        lock_events: list[Any] = []
        lease_events: list[Any] = []
        grace = False
        for boot in dead:
            inos = sorted(
                r[0]
                for r in conn.execute(
                    "SELECT ino FROM lock_range WHERE server = %s"
                    " UNION SELECT ino FROM share_reservation WHERE server = %s",
                    (boot, boot),
                )
            )
            for ino in inos:

                def apply(v: _View, boot: str = boot) -> None:
                    for s, srv in list(v.server.items()):
                        if srv == boot:
                            v.drop_session(s)

                _, ev = self._inode_tx(conn, ino, apply)
                lock_events.append(ev)
            rows = conn.execute("DELETE FROM lease WHERE server = %s RETURNING ino", (boot,))
            for ino in sorted({r[0] for r in rows}):
                self._notify(conn, "H", f"{ino:x}")
                lease_events.append((ino, self._holdings(conn, ino)))
            conn.execute("DELETE FROM lock_waiter WHERE server = %s", (boot,))
            if self.clients is not None and self.clients.reap_tx(conn, boot):
                grace = True
            conn.execute("DELETE FROM meta_server WHERE boot = %s", (boot,))
        return dead, lock_events, lease_events, grace

    def _reaped(self, out: tuple[list[str], list[Any], list[Any], bool]) -> None:
        dead, lock_events, lease_events, grace = out
        if grace:
            self.clients.refresh()
        self.reaped.extend(dead)
        for boot in dead:
            self._log.warn(
                "meta server {boot} not seen for {secs}s: its gateways' locks and leases dropped",
                boot=boot,
                secs=self.dead_after,
            )
        for ev in lock_events:
            self._publish("EV_LOCKS", ev)
        for ev in lease_events:
            self._publish("EV_LEASES", ev)

    def stop(self) -> None:
        self._stopped = True
        if self._beat is not None and self._beat.active():
            self._beat.cancel()
        self._beat = None
        self._settle_all()

    def sessions(self) -> dict[str, int]:
        return {
            "breaks_outstanding": len(self._breaks),
            "breaks_forwarded": len(self._forwarded),
        }
