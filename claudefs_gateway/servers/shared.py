# -*- test-case-name: tests.servers.test_shared -*-
"""
The shared state of every gateway on one C{claudefs-meta}: byte-range locks,
share reservations, and who holds leases where (docs/rpc.rst "Shared state").

The meta server keeps the one authoritative L{LockTable}: a gateway's LOCK
and SHARE_OPEN succeed only if no owner through I{any} gateway conflicts.
Owners are kept apart per gateway session (two gateways' SMB session ids
may be equal numbers). After every change the inode's whole lock and share
state goes to every subscribed gateway (C{EV_LOCKS}), which answers its
synchronous questions (may this write pass, who holds this range) from it.

Leases stay with the gateway whose clients hold them (only it can talk to
them); the meta server knows which sessions hold which bits on each inode
(C{LEASE_HOLD}, pushed as C{EV_LEASES}). C{LEASE_RECALL} from one gateway
sends C{EV_LEASE_BREAK} to each other session holding more than the
operation lets it keep, and answers once each has broken its holders and
sent C{LEASE_BREAK_ACK} (or the recall timeout passed, or the session went).

A session whose event subscription is lost and not renewed within
L{LINGER} seconds is gone: its locks, shares and lease holdings go, as a
client's do when it reboots. A gateway that subscribes again sends
C{SESSION_RESET} and then all it holds.

L{ISharedState} is what the meta server's opcodes need of this state;
L{SharedState} keeps it in this server's memory (the embedded store, one
meta server), L{claudefs_gateway.servers.shared_pg.PgSharedState} in
PostgreSQL, shared by every meta server on the database. A method may answer
at once (None) or with a Deferred.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from zope.interface import implementer

from claudefs_gateway import errors
from claudefs_gateway.core.log import Logger
from claudefs_gateway.interfaces import ISharedState
from claudefs_gateway.servers.deadlocks import WaitGraph
from claudefs_gateway.vfs.leases import KEEP_FOR, W, Why
from claudefs_gateway.vfs.locks import LockOwner, LockTable, ShareToken
from claudefs_gateway.vfs.shared import (
    modes_from_bits,
    modes_to_bits,
    owner_from_wire,
    owner_to_wire,
)

__all__ = ["BreakBook", "ISharedState", "SharedState", "LINGER", "RECALL_TIMEOUT"]

#: Seconds a session's state outlives its lost event subscription.
#: C{meta_store.linger_secs} sets it (servers/service.py build_meta).
LINGER = 10.0
#: Seconds a LEASE_RECALL waits for other gateways (their own recall timeout,
#: 35 s by default, plus slack: they revoke, then acknowledge).
RECALL_TIMEOUT = 45.0


class BreakBook:
    """
    What both shared states (in memory: L{SharedState}; over PostgreSQL:
    L{claudefs_gateway.servers.shared_pg.PgSharedState}) keep alike: the lease
    breaks out and who has still to acknowledge each, and sessions coming back
    within their linger time.
    """

    _breaks: dict[int, tuple[set[int], defer.Deferred[None], IDelayedCall]]
    _recalling: dict[int, Any]
    _gone: dict[int, IDelayedCall]
    clients: Any
    _log: Logger

    def _settle_all(self) -> None:
        """Stopping: cancel the linger timers and answer every recall still waiting."""
        for timer in self._gone.values():
            if timer.active():
                timer.cancel()
        self._gone.clear()
        for bid in list(self._breaks):
            _, done, timer = self._breaks.pop(bid)
            if timer.active():
                timer.cancel()
            done.callback(None)

    def _acked(self, bid: int, session: int) -> None:
        entry = self._breaks.get(bid)
        if entry is None:
            return
        waiting, done, timer = entry
        waiting.discard(session)
        if not waiting:
            del self._breaks[bid]
            if timer.active():
                timer.cancel()
            done.callback(None)

    def _break_timed_out(self, bid: int) -> None:
        entry = self._breaks.pop(bid, None)
        if entry is not None:
            self._log.warn(
                "lease break {bid}: sessions {sessions} did not answer in time",
                bid=bid,
                sessions=",".join(f"{s:x}" for s in entry[0]),
            )
            entry[1].callback(None)

    def _recalled(self, result: Any, bid: int) -> Any:
        self._recalling.pop(bid, None)
        return result

    def subscribed(self, session: int) -> None:
        timer = self._gone.pop(session, None)
        if timer is not None and timer.active():
            timer.cancel()
            if self.clients is not None:
                self.clients.session_back(session)


@implementer(ISharedState)
class SharedState(BreakBook):
    """
    @param push: C{push(session, event_name, value)} sends one event to the
        session's subscribed connection; returns False if it has none.
    @param publish: C{publish(event_name, value, origin)} sends to every
        subscriber but the connections of session C{origin} (0: every one).
        A change's C{EV_LOCKS} and C{EV_LEASES} go to every gateway but the
        one whose call made it: each gateway keeps only the other gateways'
        part of an inode's state (vfs/shared.py), which its own call did not
        change (docs/rpc.rst "Shared state").
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        push: Callable[[int, str, Any], bool],
        publish: Callable[..., None],
        recall_timeout: float = RECALL_TIMEOUT,
        linger: float = LINGER,
    ) -> None:
        self.clock = clock
        self.table = LockTable(clock)
        self._push = push
        self._publish = publish
        self.recall_timeout = recall_timeout
        self.linger = linger
        # meta-side owner -> (session, the gateway's owner)
        self._owners: dict[LockOwner, tuple[int, LockOwner]] = {}
        self._shares: dict[tuple[int, int], ShareToken] = {}
        self._touched: dict[int, set[int]] = {}  # session -> inodes it locked or reserved
        self.leases: dict[int, dict[int, int]] = {}  # ino -> session -> bits
        self._breaks: dict[int, tuple[set[int], defer.Deferred[None], IDelayedCall]] = {}
        self._recalling: dict[int, tuple[int, int, int]] = {}  # bid -> (session, ino, keep)
        self._ids = itertools.count(1)
        self._gone: dict[int, IDelayedCall] = {}
        self._stopped = False
        #: The client records and their grace (servers/clients.ClientRegistry), if kept.
        self.clients: Any = None
        #: Every gateway's blocked lock requests, for deadlocks across gateways.
        self.waits = WaitGraph(self.table)

    # -- owners ---------------------------------------------------------------------------

    def _owner(self, session: int, wire_owner: Any) -> LockOwner:
        theirs = owner_from_wire(wire_owner)
        client = theirs.client.encode() if isinstance(theirs.client, str) else theirs.client
        mine = LockOwner(theirs.protocol, b"%x/" % session + client, theirs.owner)
        self._owners[mine] = (session, theirs)
        return mine

    def _session_of(self, owner: LockOwner) -> tuple[int, LockOwner]:
        return self._owners.get(owner, (0, owner))

    def _touch(self, session: int, ino: int) -> None:
        self._touched.setdefault(session, set()).add(ino)

    def snapshot_inodes(self) -> set[int]:
        """Every inode with locks, shares or lease holdings now."""
        return {i for i in self._all_inos() if self.table.busy(i)} | set(self.leases)

    def send_snapshot(self, push: Callable[[str, Any], None]) -> None:
        for ino in self.snapshot_inodes():
            self.push_state(push, ino)

    def start(self) -> None:
        pass

    def push_state(self, push: Callable[[str, Any], None], ino: int) -> None:
        """Send C{ino}'s state (EV_LOCKS, EV_LEASES) through C{push} alone."""
        push("EV_LOCKS", self._locks_event(ino))
        push("EV_LEASES", (ino, sorted(self.leases.get(ino, {}).items())))

    def _locks_event(self, ino: int) -> tuple[int, list[Any], list[Any]]:
        locks = []
        for lk in self.table.locks(ino):
            s, o = self._session_of(lk.owner)
            locks.append((s, owner_to_wire(o), lk.start, lk.length, lk.exclusive))
        shares = []
        for t in self.table.shares(ino):
            s, o = self._session_of(t.owner)
            shares.append((s, owner_to_wire(o), modes_to_bits(t.access), modes_to_bits(t.deny)))
        return ino, locks, shares

    def _changed(self, inos: Iterable[int], origin: int = 0) -> None:
        """Push the whole lock and share state of each inode (EV_LOCKS), not to C{origin}."""
        for ino in set(inos):
            self._publish("EV_LOCKS", self._locks_event(ino), origin)
        self._forget_owners()

    def _untouch(self, session: int, inos: Iterable[int]) -> None:
        """
        Forget C{inos} of C{session} where it holds nothing any more: the set
        is what L{release_owner} scans, and a gateway that opens and closes
        many files must not make every close cost a pass over all it ever
        opened.
        """
        touched = self._touched.get(session)
        if not touched:
            return
        for ino in inos:
            if not any(self._session_of(o)[0] == session for o in self.table.owners_of(ino)):
                touched.discard(ino)

    def _forget_owners(self) -> None:
        if len(self._owners) > 4 * max(64, self.table.records):
            live = {o for ino in self._all_inos() for o in self.table.owners_of(ino)}
            self._owners = {k: v for k, v in self._owners.items() if k in live}

    def _all_inos(self) -> set[int]:
        out: set[int] = set()
        for inos in self._touched.values():
            out |= inos
        return out

    # -- locks and shares -----------------------------------------------------------------------

    async def lock(
        self,
        session: int,
        ino: int,
        owner: Any,
        start: int,
        length: int,
        exclusive: bool,
        reclaim: bool,
    ) -> None:
        self._check_grace(reclaim)
        mo = self._owner(session, owner)
        await self.table.lock(ino, mo, start, length, exclusive, wait=False, reclaim=reclaim)
        self._touch(session, ino)
        self._changed([ino], session)

    def lock_wait(
        self, session: int, ino: int, owner: Any, start: int, length: int, exclusive: bool
    ) -> None:
        """A gateway's request waits (LOCK_WAIT); @raise Deadlock: it would wait forever."""
        self.waits.wait(session, self._owner(session, owner), ino, start, length, exclusive)

    def lock_unwait(self, session: int, owner: Any) -> None:
        self.waits.unwait(self._owner(session, owner))

    def _check_grace(self, reclaim: bool) -> None:
        if not reclaim and self.clients is not None and self.clients.in_grace:
            # RFC 8881 §8.4.2: while another gateway's clients reclaim, nothing new.
            raise errors.Grace("another gateway's clients are reclaiming")

    def unlock(self, session: int, ino: int, owner: Any, start: int, length: int) -> None:
        self.table.unlock(ino, self._owner(session, owner), start, length)
        self._changed([ino], session)

    def release_owner(self, session: int, owner: Any) -> None:
        mo = self._owner(session, owner)
        inos = [i for i in self._touched.get(session, ()) if mo in self.table.owners_of(i)]
        self.table.release_owner(mo)
        self._drop_closed(session)
        self._untouch(session, inos)
        self._changed(inos, session)

    def release_client(self, session: int, protocol: str, client: bytes) -> None:
        theirs = owner_from_wire((protocol, client, b""))
        raw = theirs.client.encode() if isinstance(theirs.client, str) else theirs.client
        self.table.release_client(protocol, b"%x/" % session + raw)
        self._drop_closed(session)
        self._changed(self._touched.get(session, ()))

    def release_inode(self, ino: int, origin: int = 0) -> None:
        # Most removed files had no lock or share: every subscriber's replica
        # already says so (each change was pushed), so there is nothing to push.
        held = self.table.busy(ino)
        if held and origin:
            # The removal's own gateway keeps only the other gateways' part
            # of the inode's state: if there was none, its replica has
            # nothing to drop (an SMB delete-on-close's share, released at
            # its close and dropped here by the UNLINK: docs/workers.rst
            # "An SMB delete's close").
            owners = self.table.owners_of(ino) | {w.owner for w in self.table.waiting(ino)}
            if any(self._session_of(o)[0] != origin for o in owners):
                origin = 0
        self.table.release_inode(ino)
        if held:
            for s, inos in self._touched.items():
                inos.discard(ino)
                self._drop_closed(s)
            self._changed([ino], origin)

    def share_open(
        self,
        session: int,
        ino: int,
        owner: Any,
        sid: int,
        access: int,
        deny: int,
        reclaim: bool,
    ) -> None:
        self._check_grace(reclaim)
        mo = self._owner(session, owner)
        old = self._shares.pop((session, sid), None)
        if old is not None:
            self.table.close_share(old)
        token = self.table.open_share(
            ino, mo, modes_from_bits(access), modes_from_bits(deny), reclaim=reclaim
        )
        self._shares[(session, sid)] = token
        self._touch(session, ino)
        self._changed([ino], session)

    def share_set(self, session: int, sid: int, access: int, deny: int) -> None:
        token = self._shares.get((session, sid))
        if token is None or token.closed:
            raise errors.NoLock("no such share reservation")
        acc, den = modes_from_bits(access), modes_from_bits(deny)
        if not (acc <= token.access and den <= token.deny):
            self.table.upgrade_share(token, acc, den)
        if token.access != acc or token.deny != den:
            self.table.downgrade_share(token, acc, den)
        self._changed([token.ino], session)

    def share_close(self, session: int, sid: int) -> None:
        token = self._shares.pop((session, sid), None)
        if token is not None and not token.closed:
            self.table.close_share(token)
            self._changed([token.ino], session)

    def _drop_closed(self, session: int) -> None:
        for key in [k for k, t in self._shares.items() if k[0] == session and t.closed]:
            del self._shares[key]

    # -- leases ---------------------------------------------------------------------------------

    def lease_hold(self, session: int, ino: int, bits: int) -> None:
        held = self.leases.setdefault(ino, {})
        if bits:
            held[session] = bits
        else:
            held.pop(session, None)
        if not held:
            del self.leases[ino]
        self._publish_leases(ino, session)

    def lease_grant(self, session: int, ino: int, bits: int) -> int:
        """
        A lease C{session} is granting on C{ino}: the part of C{bits} it may
        keep, now counted as held. The meta server is the one place two
        gateways' grants meet: W only while no other session holds anything,
        nothing while another holds W, and no more than an outstanding recall
        of the inode lets others keep.
        """
        others = 0
        for s, held_bits in self.leases.get(ino, {}).items():
            if s != session:
                others |= held_bits
        granted = 0 if others & W else bits & ~W if others else bits
        for recaller, rino, keep in self._recalling.values():
            if rino == ino and recaller != session:
                granted &= keep
        if granted:
            held = self.leases.setdefault(ino, {})
            held[session] = held.get(session, 0) | granted
            self._publish_leases(ino, session)
        return granted

    def _publish_leases(self, ino: int, origin: int = 0) -> None:
        held = self.leases.get(ino, {})
        self._publish("EV_LEASES", (ino, sorted(held.items())), origin)

    def lease_recall(self, session: int, ino: int, why: str) -> defer.Deferred[None]:
        try:
            keep = KEEP_FOR[Why(why)]
        except ValueError:
            return defer.fail(errors.Inval(f"unknown recall reason {why!r}"))
        targets = {
            s for s, bits in self.leases.get(ino, {}).items() if s != session and bits & ~keep
        }
        if not targets:
            return defer.succeed(None)
        bid = next(self._ids)
        done: defer.Deferred[None] = defer.Deferred()
        timer = self.clock.callLater(self.recall_timeout, self._break_timed_out, bid)
        self._breaks[bid] = (targets, done, timer)
        self._recalling[bid] = (session, ino, keep)
        done.addBoth(self._recalled, bid)
        for s in list(targets):
            if not self._push(s, "EV_LEASE_BREAK", (bid, ino, why)):
                # Nobody to tell: the session is gone, and so are its leases.
                self.lease_hold(s, ino, 0)
                self._acked(bid, s)
        return done

    def lease_break_ack(self, session: int, bid: int) -> None:
        self._acked(bid, session)

    # -- sessions -------------------------------------------------------------------------------

    def unsubscribed(self, session: int) -> None:
        """The session's last event subscription went: drop it unless it comes back soon."""
        if session in self._gone or self._stopped or not self._holds(session):
            return
        self._gone[session] = self.clock.callLater(self.linger, self._expire, session)
        if self.clients is not None:
            self.clients.session_lost(session)

    def _holds(self, session: int) -> bool:
        """Whether C{session} holds anything here (locks, shares, leases, awaited breaks)."""
        return (
            bool(self._touched.get(session))
            or any(session in held for held in self.leases.values())
            or any(session in waiting for waiting, _, _ in self._breaks.values())
            or (self.clients is not None and self.clients.holds(session))
        )

    def _expire(self, session: int) -> None:
        self._gone.pop(session, None)
        self._log.info("gateway session {session:x} gone: its locks and leases go", session=session)
        self.reset(session)
        if self.clients is not None:
            self.clients.session_gone(session)

    def reset(self, session: int) -> None:
        """Drop everything of C{session} (SESSION_RESET, or the session is gone)."""
        inos = self._touched.pop(session, set())
        self.waits.drop_session(session)
        for mo, (s, _) in list(self._owners.items()):
            if s == session:
                self.table.release_owner(mo)
                del self._owners[mo]
        for key in [k for k in self._shares if k[0] == session]:
            del self._shares[key]
        self._changed(inos)
        for ino in [i for i, held in self.leases.items() if session in held]:
            self.lease_hold(session, ino, 0)
        for bid in list(self._breaks):
            self._acked(bid, session)

    def stop(self) -> None:
        """The server stops: cancel its timers, answer waiting recalls."""
        self._stopped = True
        self._settle_all()

    def sessions(self) -> dict[str, int]:
        """Counts for /health and tests."""
        return {
            "lock_records": self.table.records,
            "lease_inodes": len(self.leases),
            "breaks_outstanding": len(self._breaks),
        }
