# -*- test-case-name: tests.nfs.v4.test_sessions -*-
"""
NFSv4.1 client records and sessions (RFC 8881 §2.4, §2.10): who the clients
are, their leases, their sessions and each session's slot table with its
reply cache.

A client record is made by EXCHANGE_ID (unconfirmed), confirmed by its first
CREATE_SESSION, kept alive by SEQUENCE (any session renews the lease) and
ends by DESTROY_CLIENTID, by being replaced (a rebooted client's new
EXCHANGE_ID), or when its lease expires; then everything it held (opens,
locks, sessions) is released. Its lifecycle is the L{ClientMachine}; each
session's is a L{SessionMachine} (C{docs/nfs4-client.dot},
C{docs/nfs4-session.dot}).

Exactly-once semantics live in the L{SlotTable}: one reply cached per slot
(RFC 8881 §2.10.6), the whole COMPOUND reply when it fits in the session's
C{ca_maxresponsesize_cached}, else a marker answering a retry with
NFS4ERR_RETRY_UNCACHED_REP. Memory is bounded by design: at most
C{max_clients} records, C{max_sessions_per_client} sessions each,
C{max_slots} slots per session and one cached reply of at most
C{reply_cache_size} bytes per slot.

Nothing here does I/O or reads the time itself: the lease clock is injected.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Callable, Iterator
from typing import Any

import attrs
from automat import MethodicalMachine
from twisted.internet.interfaces import IReactorTime

from claudefs_gateway.core.log import Logger

__all__ = [
    "Principal",
    "Slot",
    "SlotTable",
    "Session",
    "Client",
    "ClientTable",
    "ClientMachine",
    "SessionMachine",
    "UNCACHED",
]


@attrs.frozen(slots=True)
class Principal:
    """Who sent a call, as far as AUTH_SYS tells (RFC 8881 §2.4's principal)."""

    flavor: int
    uid: int
    gid: int


#: A slot's reply was too large to keep: a retry gets NFS4ERR_RETRY_UNCACHED_REP.
UNCACHED = b""


@attrs.define(slots=True, eq=False)
class Slot:
    """
    One slot of a session's fore channel.

    @ivar seqid: the sequence id of the last request accepted on it (0: none yet).
    @ivar busy: a request is being served on it now.
    @ivar reply: the encoded COMPOUND4res of the last request, L{UNCACHED},
        or L{None} before the first request.
    @ivar digest: what identifies that request (tells a retry from a false one).
    """

    seqid: int = 0
    busy: bool = False
    reply: bytes | None = None
    digest: tuple[int, int, int] | None = None


class SlotTable:
    """A session's fore-channel slots (RFC 8881 §2.10.6.1)."""

    def __init__(self, count: int) -> None:
        self.slots = [Slot() for _ in range(count)]

    def __len__(self) -> int:
        return len(self.slots)

    @property
    def highest(self) -> int:
        return len(self.slots) - 1

    def cached_bytes(self) -> int:
        return sum(len(s.reply) for s in self.slots if s.reply)


class SessionMachine:
    """
    One session's lifecycle: created with or without a back channel; a
    connection bound for callbacks (CREATE_SESSION with CONN_BACK_CHAN, or
    BIND_CONN_TO_SESSION) brings the back channel up, losing the last such
    connection takes it down; DESTROY_SESSION (or the end of its client)
    ends it.

    @ivar alive: the session accepts requests.
    @ivar callbacks_up: the server can call the client back on it.
    """

    _machine = MethodicalMachine()

    def __init__(self) -> None:
        self.alive = True
        self.callbacks_up = False

    @_machine.state(initial=True)
    def no_back_channel(self) -> None:
        "Serving requests; no connection to call the client back on."

    @_machine.state()
    def back_channel(self) -> None:
        "Serving requests; callbacks can reach the client."

    @_machine.state()
    def destroyed(self) -> None:
        "Destroyed: its id answers NFS4ERR_BADSESSION."

    @_machine.input()
    def back_bound(self) -> None:
        "A connection was bound to the session for callbacks."

    @_machine.input()
    def back_lost(self) -> None:
        "The last connection bound for callbacks closed."

    @_machine.input()
    def destroy(self) -> None:
        "DESTROY_SESSION, or its client went away."

    @_machine.output()
    def _up(self) -> None:
        self.callbacks_up = True

    @_machine.output()
    def _down(self) -> None:
        self.callbacks_up = False

    @_machine.output()
    def _end(self) -> None:
        self.alive = False
        self.callbacks_up = False

    no_back_channel.upon(back_bound, enter=back_channel, outputs=[_up])
    no_back_channel.upon(back_lost, enter=no_back_channel, outputs=[])
    no_back_channel.upon(destroy, enter=destroyed, outputs=[_end])
    back_channel.upon(back_bound, enter=back_channel, outputs=[])
    back_channel.upon(back_lost, enter=no_back_channel, outputs=[_down])
    back_channel.upon(destroy, enter=destroyed, outputs=[_end])
    destroyed.upon(back_bound, enter=destroyed, outputs=[])
    destroyed.upon(back_lost, enter=destroyed, outputs=[])
    destroyed.upon(destroy, enter=destroyed, outputs=[])


class ClientMachine:
    """
    One client record's lifecycle (RFC 8881 §18.35.4, §18.36.4, §8.4): made
    unconfirmed by EXCHANGE_ID, confirmed by its first CREATE_SESSION;
    SEQUENCE renews a confirmed lease; the record ends when destroyed,
    replaced, or its lease runs out (an unconfirmed record also expires
    after one lease).

    @ivar confirmed: a CREATE_SESSION confirmed it.
    @ivar gone: it ended; its clientid answers NFS4ERR_STALE_CLIENTID.
    """

    _machine = MethodicalMachine()

    def __init__(self, on_end: Callable[[str], None]) -> None:
        self.confirmed = False
        self.gone = False
        self._on_end = on_end

    @_machine.state(initial=True)
    def unconfirmed(self) -> None:
        "Made by EXCHANGE_ID; no session yet."

    @_machine.state()
    def confirmed_state(self) -> None:
        "Confirmed by CREATE_SESSION: holds sessions and state; SEQUENCE renews it."

    @_machine.state()
    def ended(self) -> None:
        "Destroyed, replaced or expired: its state is released."

    @_machine.input()
    def confirm(self) -> None:
        "Its first successful CREATE_SESSION."

    @_machine.input()
    def renew(self) -> None:
        "A SEQUENCE on one of its sessions."

    @_machine.input()
    def expire(self) -> None:
        "Its lease ran out."

    @_machine.input()
    def destroy(self) -> None:
        "DESTROY_CLIENTID."

    @_machine.input()
    def replace(self) -> None:
        "The same client owner confirmed a new record (a client reboot), or a collision."

    @_machine.output()
    def _confirmed(self) -> None:
        self.confirmed = True

    @_machine.output()
    def _expired(self) -> None:
        self.gone = True
        self._on_end("expired")

    @_machine.output()
    def _destroyed(self) -> None:
        self.gone = True
        self._on_end("destroyed")

    @_machine.output()
    def _replaced(self) -> None:
        self.gone = True
        self._on_end("replaced")

    unconfirmed.upon(confirm, enter=confirmed_state, outputs=[_confirmed])
    unconfirmed.upon(renew, enter=unconfirmed, outputs=[])
    unconfirmed.upon(expire, enter=ended, outputs=[_expired])
    unconfirmed.upon(destroy, enter=ended, outputs=[_destroyed])
    unconfirmed.upon(replace, enter=ended, outputs=[_replaced])
    confirmed_state.upon(confirm, enter=confirmed_state, outputs=[])
    confirmed_state.upon(renew, enter=confirmed_state, outputs=[])
    confirmed_state.upon(expire, enter=ended, outputs=[_expired])
    confirmed_state.upon(destroy, enter=ended, outputs=[_destroyed])
    confirmed_state.upon(replace, enter=ended, outputs=[_replaced])
    ended.upon(confirm, enter=ended, outputs=[])
    ended.upon(renew, enter=ended, outputs=[])
    ended.upon(expire, enter=ended, outputs=[])
    ended.upon(destroy, enter=ended, outputs=[])
    ended.upon(replace, enter=ended, outputs=[])


@attrs.define(eq=False)
class Session:
    """
    One session (RFC 8881 §2.10).

    @ivar fore: the negotiated fore channel attributes (a C{ChannelAttrs}).
    @ivar back: the back channel attributes the client offered.
    @ivar conns: connections bound to it (connection id to connection).
    @ivar back_conns: the subset the server may call the client back on.
    @ivar cb_program: the client's callback program number.
    @ivar cb_sec: the callback security parameters (C{Arm}s of
        callback_sec_parms4), as the client gave them.
    @ivar cb_seqid: the sequence id of the next callback on back slot 0.
    """

    id: bytes
    client: Client
    fore: Any
    back: Any
    slots: SlotTable
    minorversion: int
    cb_program: int
    cb_sec: list[Any]
    machine: SessionMachine = attrs.Factory(SessionMachine)
    conns: dict[int, Any] = attrs.Factory(dict)
    back_conns: dict[int, Any] = attrs.Factory(dict)
    cb_seqid: int = 1
    cb_busy: Any = None
    # The client asked for callbacks on this session (SEQUENCE reports a
    # lost back channel only then).
    cb_wanted: bool = False

    @property
    def alive(self) -> bool:
        return self.machine.alive

    @property
    def callbacks_up(self) -> bool:
        return self.machine.callbacks_up


@attrs.define(eq=False)
class Client:
    """
    One client record.

    @ivar clientid: the 64-bit id EXCHANGE_ID gave (boot epoch, counter).
    @ivar owner: C{co_ownerid}, the client's own name for itself.
    @ivar verifier: C{co_verifier}: changes when the client reboots.
    @ivar cs_seq: the sequence id of the last CREATE_SESSION accepted
        (RFC 8881 §18.36.4; EXCHANGE_ID answers this plus one).
    @ivar cs_reply: that CREATE_SESSION's encoded result (a replay gets it).
    @ivar expires: when its lease runs out (clock seconds).
    @ivar reclaim_complete: RECLAIM_COMPLETE was done.
    @ivar state: its opens and locks (a L{claudefs_gateway.nfs.v4.state.ClientState}).
    @ivar lock_key: the client part of its lock-table owners.
    """

    clientid: int
    owner: bytes
    verifier: bytes
    principal: Principal
    expires: float
    machine: ClientMachine
    cs_seq: int = 0
    cs_reply: Any = None
    sessions: dict[bytes, Session] = attrs.Factory(dict)
    reclaim_complete: bool = False
    state: Any = None
    flags: int = 0
    busy: int = 0
    # (lock-owner, inode) -> the Deferred waiting to send CB_NOTIFY_LOCK.
    lock_waits: dict[tuple[bytes, int], Any] = attrs.Factory(dict)

    @property
    def lock_key(self) -> str:
        return f"{self.clientid:016x}"

    @property
    def confirmed(self) -> bool:
        return self.machine.confirmed

    @property
    def gone(self) -> bool:
        return self.machine.gone

    def has_state(self) -> bool:
        """Sessions, opens or locks (RFC 8881 §18.35.4 case 3: a record "in use")."""
        if self.sessions:
            return True
        return self.state is not None and bool(self.state.states)


class ClientTable:
    """
    Every client record and session of this server, and their leases.

    @param clock: the lease clock.
    @param lease_secs: the lease period.
    @param on_end: called with (client, why) when a record ends (after its
        sessions are destroyed), to release its state and forget it in the
        store.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        lease_secs: float,
        *,
        max_clients: int,
        max_sessions: int,
        on_end: Callable[[Client, str], None] = lambda client, why: None,
        epoch: int | None = None,
    ) -> None:
        self.clock = clock
        self.lease_secs = lease_secs
        self.max_clients = max_clients
        self.max_sessions = max_sessions
        self.on_end = on_end
        # The boot epoch: the top half of every clientid and the first four
        # bytes of every stateid's "other", so ids from an earlier run are
        # recognised as stale (NFS4ERR_STALE_CLIENTID / STALE_STATEID).
        self.epoch = (
            epoch if epoch is not None else (struct.unpack(">I", os.urandom(4))[0] | 1)
        ) & 0xFFFFFFFF
        self._ids = itertools.count(1)
        self.by_id: dict[int, Client] = {}
        self.by_owner: dict[bytes, list[Client]] = {}
        self.sessions: dict[bytes, Session] = {}
        self._sweep: Any = None

    # -- records ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.by_id)

    def __iter__(self) -> Iterator[Client]:
        return iter(list(self.by_id.values()))

    def new_clientid(self) -> int:
        return (self.epoch << 32) | (next(self._ids) & 0xFFFFFFFF)

    def is_stale_id(self, clientid: int) -> bool:
        return (clientid >> 32) != self.epoch

    def get(self, clientid: int) -> Client | None:
        c = self.by_id.get(clientid)
        if c is not None and self.expired(c):
            self.end(c, "expired")
            return None
        return c

    def with_owner(self, owner: bytes) -> tuple[Client | None, Client | None]:
        """The (confirmed, unconfirmed) records of a client owner (expired ones end)."""
        conf = unconf = None
        for c in list(self.by_owner.get(owner, ())):
            if self.expired(c):
                self.end(c, "expired")
                continue
            if c.confirmed:
                conf = c
            else:
                unconf = c
        return conf, unconf

    def add(self, owner: bytes, verifier: bytes, principal: Principal, flags: int) -> Client:
        """
        A new unconfirmed record.

        @raise OverflowError: already C{max_clients} records (after ending
            expired ones).
        """
        if len(self.by_id) >= self.max_clients:
            self.expire_due()
            if len(self.by_id) >= self.max_clients:
                raise OverflowError("too many clients")
        clientid = self.new_clientid()
        holder: list[Client] = []
        machine = ClientMachine(lambda why: self._ended(holder[0], why))
        c = Client(
            clientid,
            owner,
            verifier,
            principal,
            self.clock.seconds() + self.lease_secs,
            machine,
            flags=flags,
        )
        holder.append(c)
        self.by_id[clientid] = c
        self.by_owner.setdefault(owner, []).append(c)
        self._schedule()
        return c

    def renew(self, c: Client) -> None:
        c.expires = self.clock.seconds() + self.lease_secs
        c.machine.renew()

    def expired(self, c: Client) -> bool:
        return c.busy == 0 and self.clock.seconds() >= c.expires

    def end(self, c: Client, why: str) -> None:
        """End a record: C{why} is "expired", "destroyed" or "replaced"."""
        if c.gone:
            return
        getattr(c.machine, {"expired": "expire", "destroyed": "destroy"}.get(why, "replace"))()

    def _ended(self, c: Client, why: str) -> None:
        for s in list(c.sessions.values()):
            self.destroy_session(s)
        self.by_id.pop(c.clientid, None)
        same = self.by_owner.get(c.owner)
        if same is not None:
            if c in same:
                same.remove(c)
            if not same:
                del self.by_owner[c.owner]
        self._log.debug("NFSv4 client {clientid:x} {why}", clientid=c.clientid, why=why)
        self.on_end(c, why)

    # -- sessions ------------------------------------------------------------------------

    def new_session(self, c: Client, **kw: Any) -> Session:
        """@raise OverflowError: the client has C{max_sessions} sessions already."""
        if len(c.sessions) >= self.max_sessions:
            raise OverflowError("too many sessions")
        while True:
            sid = os.urandom(16)
            if sid not in self.sessions:
                break
        s = Session(sid, c, **kw)
        c.sessions[sid] = s
        self.sessions[sid] = s
        return s

    def session(self, sid: bytes) -> Session | None:
        s = self.sessions.get(sid)
        if s is None:
            return None
        if self.expired(s.client):
            self.end(s.client, "expired")
            return None
        return s

    def destroy_session(self, s: Session) -> None:
        s.machine.destroy()
        self.sessions.pop(s.id, None)
        s.client.sessions.pop(s.id, None)
        for conn in list(s.conns.values()):
            bound = getattr(conn, "nfs4_sessions", None)
            if bound is not None:
                bound.discard(s.id)
        s.conns.clear()
        s.back_conns.clear()

    def bind(self, s: Session, conn: Any, back: bool) -> None:
        """Bind a connection to a session (for callbacks too, if C{back})."""
        key = getattr(conn, "conn_id", id(conn))
        s.conns[key] = conn
        bound = getattr(conn, "nfs4_sessions", None)
        if bound is None:
            bound = set()
            try:
                conn.nfs4_sessions = bound
            except AttributeError:
                pass
        bound.add(s.id)
        if back:
            s.cb_wanted = True
            s.back_conns[key] = conn
            s.machine.back_bound()

    def connection_lost(self, conn: Any) -> None:
        """Unbind a closed connection from every session it served."""
        key = getattr(conn, "conn_id", id(conn))
        for sid in list(getattr(conn, "nfs4_sessions", ()) or ()):
            s = self.sessions.get(sid)
            if s is None:
                continue
            s.conns.pop(key, None)
            if s.back_conns.pop(key, None) is not None and not s.back_conns:
                s.machine.back_lost()

    # -- leases ----------------------------------------------------------------------------

    def expire_due(self) -> int:
        """End every record whose lease ran out; how many ended."""
        n = 0
        for c in list(self.by_id.values()):
            if self.expired(c):
                self.end(c, "expired")
                n += 1
        return n

    def _schedule(self) -> None:
        if self._sweep is None or not self._sweep.active():
            self._sweep = self.clock.callLater(max(self.lease_secs / 2, 1.0), self._tick)

    def _tick(self) -> None:
        self._sweep = None
        try:
            self.expire_due()
        except Exception:
            self._log.failure("expiring NFSv4 client leases")
        if self.by_id:
            self._schedule()

    def stop(self) -> None:
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
