# -*- test-case-name: tests.vfs.test_leases -*-
"""
The cross-protocol lease manager: what clients may cache, and how they are
told to stop.

SMB oplocks and leases and NFSv4 delegations are one idea spelled three
ways: the server lets a client cache reads (R), writes (W) or open handles
(H) of a file, and takes that back - a *break* (SMB) or *recall* (NFSv4) -
before anything the client would no longer see from its cache happens. A
file is one file whatever protocol reaches it, so every protocol's leases
live here, and every protocol's mutation asks this module first (through the
vfs: "break before mutate").

The rules (docs/locks.rst "Leases"):

 - compatibility: R and H may be held by any number of lease keys at once;
   W only by one key holding the only lease on the file;
 - each operation says which bits other holders may I{keep} (L{KEEP_FOR}):
   a read or an open by someone else leaves R and H, an open for writing
   and a write or size change leave H, a byte-range lock leaves nothing,
   a rename or link of the file leaves R and W, removing its last name
   leaves nothing, a change inside a directory leaves a directory lease H;
 - a break is sent once per lease; while it is outstanding, further breaks
   only lower its target (MS-SMB2 3.3.4.7). The holder acknowledges (SMB
   LEASE_BREAK ACK, NFSv4 DELEGRETURN) or, after the recall timeout (35 s
   by default, as Samba's C{oplock break wait}; RFC 8881 §10.4.6 and
   MS-SMB2 3.3.6.5 both let the server revoke then), the lease is revoked.
   A lease may carry a longer recall time of its own (NFSv4 delegations
   are never revoked sooner than one NFSv4 lease period);
 - the requester of a change never breaks its own leases (its I{exempt}
   keys: the open it acts through, or every lease of its NFSv4 client).

Each lease is a small state machine (held, breaking, gone), drawn in
docs/lease.dot, which a test keeps in step with L{Lease}.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from typing import Any

import attrs
from automat import MethodicalMachine
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from zope.interface import implementer

from claudefs_gateway import errors
from claudefs_gateway.core.log import Logger
from claudefs_gateway.core.metrics import Metrics
from claudefs_gateway.interfaces import ILeaseHolder, ILeaseManager

__all__ = [
    "R",
    "W",
    "H",
    "RWH",
    "Why",
    "KEEP_FOR",
    "LeaseKey",
    "Lease",
    "LeaseManager",
    "bits_text",
]

#: Read caching: the client may serve reads (and attributes) from its cache.
R = 1
#: Write caching: the client may hold writes (and byte-range locks) back.
W = 2
#: Handle caching: the client may keep a file open after its user closed it.
H = 4
RWH = R | W | H


def bits_text(bits: int) -> str:
    """``"RWH"``, ``"RH"``, ... ``"-"`` for none (logs, status output)."""
    return "".join(c for b, c in ((R, "R"), (W, "W"), (H, "H")) if bits & b) or "-"


class Why(enum.Enum):
    """Why a lease must break: the operation another requester is about to do."""

    #: an open of the file by another lease key (SMB CREATE, NFSv4 OPEN)
    OPEN = "open"
    #: an open for writing (or denying others) by another lease key: read caches
    #: will soon be stale, and NFSv4 read delegations are recalled at once
    #: (RFC 8881 §10.4.1; knfsd and Linux's own leases break the same way)
    OPEN_WRITE = "open_write"
    #: an open that would conflict with a holder's share mode unless it lets go of its handle
    OPEN_CONFLICT = "open_conflict"
    #: a read of the data (another protocol's READ or GET)
    READ = "read"
    #: a byte-range lock by someone else: a caching client may hold locks it
    #: has not sent (NFSv4 clients lock locally under any delegation; Windows
    #: breaks every oplock on another key's lock, IRP_MJ_LOCK_CONTROL)
    LOCK = "lock"
    #: a write, truncation, allocation or size change
    WRITE = "write"
    #: an attribute change other than size (times, mode, owner, xattrs)
    SETATTR = "setattr"
    #: rename or link of the file itself, or an unlink that leaves it other names
    NAMESPACE = "namespace"
    #: its last name goes (unlink, or replaced by a rename): nothing cached stays valid
    UNLINK = "unlink"
    #: a name added, removed or renamed inside a leased directory
    DIR_CHANGE = "dir_change"
    #: a rename or removal of a leased directory itself
    DIR_NAMESPACE = "dir_namespace"


#: What other holders may keep when each operation happens.
KEEP_FOR: dict[Why, int] = {
    Why.OPEN: R | H,
    Why.OPEN_WRITE: H,
    Why.OPEN_CONFLICT: R,
    Why.READ: R | H,
    Why.LOCK: 0,
    Why.WRITE: H,
    Why.SETATTR: H,
    Why.NAMESPACE: R | W,
    Why.UNLINK: 0,
    Why.DIR_CHANGE: H,
    Why.DIR_NAMESPACE: R,
}


@attrs.frozen
class LeaseKey:
    """
    Who holds a lease.

    @ivar protocol: C{"smb"}, C{"nfs4"}, ...
    @ivar client: the client as its protocol names it (SMB ClientGuid, NFSv4 clientid).
    @ivar key: the lease within the client (SMB lease key, or the open an oplock
        belongs to; NFSv4 delegation stateid). In an I{exemption}, C{None}
        stands for every lease of the client (NFSv4: a client never recalls
        its own delegations).
    """

    protocol: str
    client: str | bytes
    key: bytes | None

    def covers(self, other: LeaseKey) -> bool:
        """Whether this key, as an exemption, covers the lease key C{other}."""
        if self.protocol != other.protocol or self.client != other.client:
            return False
        return self.key is None or self.key == other.key


class Lease:
    """
    One lease key's lease on one file or directory.

    Read-only for callers: change it through the L{LeaseManager}.

    @ivar state: the bits held now (L{R}, L{W}, L{H}).
    @ivar breaking_to: while a break is outstanding, what the holder was
        asked to keep; L{None} otherwise. A later break meanwhile lowers
        only the I{target}, sent once this one is acknowledged.
    @ivar epoch: grows at every state change (SMB lease v2 epochs).
    @ivar parent: the lease key of the directory lease an SMB v2 lease names
        as its parent; changes made through this lease do not break that one.
    @ivar recall_timeout: this lease's own recall time, or L{None} for the
        manager's.
    """

    _machine = MethodicalMachine()

    def __init__(
        self,
        manager: LeaseManager,
        ino: int,
        key: LeaseKey,
        state: int,
        holder: ILeaseHolder,
        is_dir: bool,
        parent: LeaseKey | None,
        recall_timeout: float | None = None,
    ) -> None:
        self._manager = manager
        self.recall_timeout = recall_timeout
        self.ino = ino
        self.key = key
        self.state = state
        self.holder = holder
        self.is_dir = is_dir
        self.parent = parent
        self.epoch = 1
        self.breaking_to: int | None = None
        self._target: int | None = None
        self.gone = False
        self.revoked = False
        # Which break the recall deadline queue is timing (0: none).
        self._break_seq = 0
        self._waiters: list[tuple[int, defer.Deferred[None]]] = []
        self._break_started = 0.0

    @property
    def target(self) -> int | None:
        """
        While a break is outstanding, the least the holder must come down
        to: L{breaking_to}, or lower if a later break asked for less (it is
        sent once this one is acknowledged). L{None} when not breaking.
        """
        return self._target

    def __repr__(self) -> str:
        return (
            f"<Lease {self.key.protocol} ino={self.ino} {bits_text(self.state)}"
            + (f"->{bits_text(self.breaking_to)}" if self.breaking_to is not None else "")
            + (" gone" if self.gone else "")
            + ">"
        )

    # -- states ------------------------------------------------------------------------------------

    @_machine.state(initial=True)
    def held(self) -> None:
        "Granted; no break outstanding."

    @_machine.state()
    def breaking(self) -> None:
        "A break went out; waiting for the holder's acknowledgement or the recall timeout."

    @_machine.state()
    def ended(self) -> None:
        "Released, broken to nothing, or revoked; the lease key may be granted again."

    # -- inputs ------------------------------------------------------------------------------------

    @_machine.input()
    def upgrade(self, bits: int) -> None:
        "The same key asks for more (a second open with the lease key)."

    @_machine.input()
    def request_break(self, keep: int) -> None:
        "Someone else's operation needs the holder to keep no more than C{keep}."

    @_machine.input()
    def acknowledge(self, bits: int) -> None:
        "The holder accepted a break, keeping C{bits}."

    @_machine.input()
    def expire(self) -> None:
        "The recall timeout passed without an acknowledgement."

    @_machine.input()
    def release(self) -> None:
        "The holder gave the lease up (last open closed, DELEGRETURN, client gone, file gone)."

    # -- outputs -----------------------------------------------------------------------------------

    @_machine.output()
    def _add(self, bits: int) -> None:
        if bits & ~self.state:
            self.state |= bits
            self.epoch += 1

    @_machine.output()
    def _send_break(self, keep: int) -> None:
        self._begin_break(self.state & keep)

    @_machine.output()
    def _lower_target(self, keep: int) -> None:
        assert self._target is not None
        self._target &= keep

    @_machine.output()
    def _accept(self, bits: int) -> None:
        self._break_seq = 0
        target = self._target
        self.breaking_to = self._target = None
        self._manager._observe_break(self, revoked=False)
        self._set_state(bits)
        if target is not None and not self.gone and bits & ~target:
            # A later break lowered the target while this one was outstanding
            # (MS-SMB2 3.3.4.7): break again, from the state just acknowledged.
            self.request_break(target)

    @_machine.output()
    def _revoke(self) -> None:
        self._break_seq = 0
        self.breaking_to = self._target = None
        self.revoked = True
        self._manager._observe_break(self, revoked=True)
        self._finish()
        try:
            self.holder.lease_revoked(self)
        except Exception:
            self._manager._log.failure("lease holder failed on revocation of {lease}", lease=self)

    @_machine.output()
    def _end(self) -> None:
        self._break_seq = 0
        if self.breaking_to is not None:
            self.breaking_to = self._target = None
            self._manager._observe_break(self, revoked=False)
        self._finish()

    held.upon(upgrade, enter=held, outputs=[_add])
    held.upon(request_break, enter=breaking, outputs=[_send_break])
    held.upon(release, enter=ended, outputs=[_end])
    held.upon(expire, enter=held, outputs=[])
    breaking.upon(request_break, enter=breaking, outputs=[_lower_target])
    breaking.upon(acknowledge, enter=held, outputs=[_accept])
    breaking.upon(expire, enter=ended, outputs=[_revoke])
    breaking.upon(release, enter=ended, outputs=[_end])
    ended.upon(release, enter=ended, outputs=[])
    ended.upon(request_break, enter=ended, outputs=[])
    ended.upon(expire, enter=ended, outputs=[])

    # -- helpers -----------------------------------------------------------------------------------

    def _begin_break(self, target: int) -> None:
        """Send one break toward C{target}; a holder that needs no acknowledgement is done at once."""
        manager = self._manager
        self.breaking_to = self._target = target
        self._break_started = manager._now()
        manager._count_break(self)
        try:
            wants_ack = self.holder.lease_break(self, target)
        except Exception:
            manager._log.failure("lease holder failed to send a break for {lease}", lease=self)
            wants_ack = True  # the timeout will revoke it
        if self.breaking_to is None or self.gone:
            return  # the holder answered (or released) from inside lease_break
        if wants_ack:
            manager._time_break(self)
        else:
            # SMB: breaks from a state without W or H need no acknowledgement
            # (MS-SMB2 3.3.4.7 SMB2_NOTIFY_BREAK_LEASE_FLAG_ACK_REQUIRED).
            self.acknowledge(target)

    def _set_state(self, bits: int) -> None:
        if bits != self.state:
            self.state = bits
            self.epoch += 1
        self._wake()
        if bits == 0:
            self.release()

    def _wake(self) -> None:
        # Take the list first: a woken breaker runs its change at once, and
        # that change may end this lease (and wake again) before we return.
        waiters, self._waiters = self._waiters, []
        ready = []
        for keep, d in waiters:
            if self.gone or not self.state & ~keep:
                ready.append(d)
            else:
                self._waiters.append((keep, d))
        for d in ready:
            d.callback(None)

    def _finish(self) -> None:
        if not self.gone:
            self.gone = True
            self.state = 0
            self._manager._forget(self)
        self._wake()

    def _wait(self, keep: int) -> defer.Deferred[None]:
        """Fires once the lease holds nothing beyond C{keep} (or is gone); cancellable."""
        if self.gone or not self.state & ~keep:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred(
            lambda d: setattr(self, "_waiters", [w for w in self._waiters if w[1] is not d])
        )
        self._waiters.append((keep, d))
        return d


@implementer(ILeaseManager)
class LeaseManager:
    """
    Every lease of every protocol, by file.

    @ivar recall_timeout: seconds a holder has to acknowledge a break.
    @ivar max_leases: leases held at once, over all files; past it, L{grant}
        grants nothing (a client then simply does not cache).
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        recall_timeout: float = 35.0,
        max_leases: int = 100_000,
        metrics: Metrics | None = None,
    ) -> None:
        self._clock = clock
        self.recall_timeout = recall_timeout
        self.max_leases = max_leases
        # Per file, its leases by key (insertion-ordered: oldest first).
        self._by_ino: dict[int, dict[LeaseKey, Lease]] = {}
        # Breaks awaiting acknowledgement, one queue per recall time, each in
        # deadline order: the breaks of a queue share its recall time, so
        # appending keeps it sorted, and one timer (due at the earliest head)
        # serves them all: a storm of 10,000 breaks costs O(1) each. There
        # are as many queues as recall times in use (the manager's, and
        # NFSv4's when its lease is longer).
        self._queues: dict[float, deque[tuple[float, int, Lease]]] = {}
        self._seq = 0
        self._timer: IDelayedCall | None = None
        self._by_key: dict[LeaseKey, Lease] = {}
        self._held = self._breaks = self._seconds = self._revoked = None
        if metrics is not None:
            self._held = metrics.family("gateway_leases_held")
            self._breaks = metrics.family("gateway_lease_breaks_total")
            self._seconds = metrics.family("gateway_lease_break_seconds")
            self._revoked = metrics.family("gateway_lease_revocations_total")
        # gateway_leases_held's child per protocol, looked up once: labels()
        # (its checks and lock) cost more than the grant it counts.
        self._held_children: dict[str, Any] = {}

    # -- queries -----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_key)

    def leases(self, ino: int) -> list[Lease]:
        """The leases on C{ino} now, oldest first."""
        return list(self._by_ino.get(ino, {}).values())

    def busy(self, ino: int) -> bool:
        """Whether any lease is held on C{ino}: the vfs skips recalls when none is."""
        return ino in self._by_ino

    def find(self, key: LeaseKey) -> Lease | None:
        """The live lease of C{key}, if any (a lease key names one file at a time)."""
        return self._by_key.get(key)

    def grantable(
        self,
        ino: int,
        key: LeaseKey,
        want: int,
        is_dir: bool = False,
        family: LeaseKey | None = None,
    ) -> int:
        """
        The part of C{want} that C{key} could hold on C{ino} beside the other
        holders as they are now: W only when no other key holds anything, and
        never on a directory (MS-SMB2 3.3.5.9.11: directory leases are R or RH).

        @param family: a key covering C{key}'s siblings (an NFSv4 client's
            delegation and its layouts of one file): their leases are the
            same client's caches and never conflict with C{key}.
        """
        if is_dir:
            want &= R | H
        bucket = self._by_ino.get(ino)
        if not bucket:
            return want & RWH
        others = [
            x for x in bucket.values() if x.key != key and not (family and family.covers(x.key))
        ]
        if not others:
            return want & RWH
        if len(others) == 1:
            # W is only ever held alone, so only a sole other lease can hold it.
            (other,) = others
            if other.state & W or (other.breaking_to is not None and other.state & W):
                # A writer is still caching (or being broken): grant nothing
                # until its break is through; the caller recalls first.
                return 0
        return want & (R | H)

    # -- changes -----------------------------------------------------------------------------------

    def grant(
        self,
        ino: int,
        key: LeaseKey,
        want: int,
        holder: ILeaseHolder,
        *,
        is_dir: bool = False,
        parent: LeaseKey | None = None,
        recall_timeout: float | None = None,
        family: LeaseKey | None = None,
    ) -> Lease | None:
        """
        Grant C{key} as much of C{want} on C{ino} as is compatible with the
        other holders (see L{grantable}); an existing lease of the key on the
        same file is upgraded (never downgraded here). Nothing is broken:
        the front end recalls first (L{recall} with L{Why.OPEN}) when it
        wants others to make room.

        @param recall_timeout: seconds this lease's holder has to answer a
            break, if not the manager's L{recall_timeout} (NFSv4: at least
            one lease period).

        @param family: see L{grantable}.

        @return: the lease, or L{None} when nothing could be granted.
        @raise Inval: C{key} holds a lease on another file (MS-SMB2 3.3.5.9.8:
            a lease key names one file).
        """
        existing = self._by_key.get(key)
        if existing is not None and existing.ino != ino:
            raise errors.Inval("lease key in use on another file")
        bits = self.grantable(ino, key, want, is_dir, family)
        if existing is not None:
            if existing.breaking_to is None and bits & ~existing.state:
                existing.upgrade(bits)
            return existing
        if not bits or len(self._by_key) >= self.max_leases:
            return None
        lease = Lease(self, ino, key, bits, holder, is_dir, parent, recall_timeout)
        self._by_ino.setdefault(ino, {})[key] = lease
        self._by_key[key] = lease
        if self._held is not None:
            self._held_child(key.protocol).inc()
        self._log.debug(
            "lease granted {protocol} ino={ino} {bits}",
            protocol=key.protocol,
            ino=ino,
            bits=bits_text(bits),
        )
        return lease

    def recall(
        self, ino: int, why: Why, exempt: Iterable[LeaseKey] = (), *, wait: bool = True
    ) -> defer.Deferred[None]:
        """
        Break every lease on C{ino} that holds more than C{why} lets others
        keep, except the C{exempt} keys' (the requester's own).

        @param wait: fire only when every such lease is down to what it may
            keep (acknowledged, released or revoked). With C{wait=False} the
            breaks start and, if any is still outstanding, the Deferred fails
            at once with L{errors.LeaseBreaking} (NFS4ERR_DELAY; the client
            retries, as knfsd's clients do).
        @return: fires with None when nothing is left to break.
        """
        keep = KEEP_FOR[why]
        exempt = tuple(exempt)
        pending: list[defer.Deferred[None]] = []
        outstanding = False
        for lease in self.leases(ino):
            if lease.gone or not lease.state & ~keep:
                continue
            if any(e.covers(lease.key) for e in exempt):
                continue
            if lease.parent is not None and any(e.covers(lease.parent) for e in exempt):
                continue
            lease.request_break(keep)
            if lease.gone or not lease.state & ~keep:
                continue
            if not wait:
                outstanding = True
                continue
            pending.append(lease._wait(keep))
        if not wait:
            if outstanding:
                return defer.fail(errors.LeaseBreaking("lease break in progress"))
            return defer.succeed(None)
        if not pending:
            return defer.succeed(None)
        if len(pending) == 1:
            return pending[0]
        gathered = defer.gatherResults(pending, consumeErrors=True)
        return gathered.addCallbacks(lambda _: None, _first_failure)

    def break_lease(self, lease: Lease, keep: int) -> defer.Deferred[None]:
        """
        Break one lease to no more than C{keep}, whatever the operation: for a
        front end that computes its own break targets (SMB CREATE, as MS-SMB2
        3.3.5.9 and MS-FSA 2.1.5.1.2 spell them per open) rather than through
        L{recall}'s per-operation table.

        @return: fires once the lease holds nothing beyond C{keep}
            (acknowledged, released or revoked); cancellable.
        """
        if lease.gone or not lease.state & ~keep:
            return defer.succeed(None)
        lease.request_break(keep)
        return lease._wait(keep)

    def acknowledge(self, lease: Lease, bits: int) -> None:
        """
        The holder accepted the outstanding break, keeping C{bits}.

        @raise Inval: no break is outstanding (SMB STATUS_UNSUCCESSFUL), or
            C{bits} keeps more than the break allowed (SMB
            STATUS_REQUEST_NOT_ACCEPTED).
        """
        if lease.gone or lease.breaking_to is None:
            raise errors.Inval("no break outstanding on this lease")
        if bits & ~lease.breaking_to & RWH or bits & ~lease.state:
            raise errors.Inval("acknowledged more than the break allows")
        lease.acknowledge(bits)

    def settle_lease(self, lease: Lease) -> defer.Deferred[None]:
        """One process decides at once: nothing to wait for."""
        return defer.succeed(None)

    def take_back(self, lease: Lease, keep: int) -> None:
        """
        Lower a lease granted a moment ago to C{keep}, before its holder heard
        of it (several gateways: the meta server refused part of it), so no
        break is sent; nothing left ends it.
        """
        if lease.gone or lease.breaking_to is not None:
            return
        lease._set_state(lease.state & keep)  # noqa: SLF001 - the manager's own lease

    def release(self, lease: Lease) -> None:
        """The holder gives the lease up; any waiting breaker is satisfied."""
        lease.release()

    def release_client(self, protocol: str, client: str | bytes) -> None:
        """A client is gone (NFSv4 lease expiry, SMB connection lost without durable handles)."""
        for key in [k for k in self._by_key if k.protocol == protocol and k.client == client]:
            lease = self._by_key.get(key)
            if lease is not None:
                lease.release()

    def release_inode(self, ino: int) -> None:
        """The file is gone; so are its leases."""
        for lease in self.leases(ino):
            lease.release()

    # -- internals ---------------------------------------------------------------------------------

    def _now(self) -> float:
        return self._clock.seconds()

    def _held_child(self, protocol: str) -> Any:
        child = self._held_children.get(protocol)
        if child is None:
            assert self._held is not None
            child = self._held_children[protocol] = self._held.labels(protocol)
        return child

    def _forget(self, lease: Lease) -> None:
        bucket = self._by_ino.get(lease.ino)
        if bucket is not None:
            if bucket.get(lease.key) is lease:
                del bucket[lease.key]
            if not bucket:
                del self._by_ino[lease.ino]
        if self._by_key.get(lease.key) is lease:
            del self._by_key[lease.key]
            if self._held is not None:
                self._held_child(lease.key.protocol).dec()
        if not self._by_key:
            # Dicts keep their table when emptied: after a storm, start small again.
            self._by_key, self._by_ino = {}, {}
            if not self._queues and self._timer is not None:
                if self._timer.active():
                    self._timer.cancel()
                self._timer = None

    def _count_break(self, lease: Lease) -> None:
        self._log.debug(
            "lease break {protocol} ino={ino} {old} -> {new}",
            protocol=lease.key.protocol,
            ino=lease.ino,
            old=bits_text(lease.state),
            new=bits_text(lease.breaking_to or 0),
        )
        if self._breaks is not None:
            self._breaks.labels(lease.key.protocol).inc()

    def _time_break(self, lease: Lease) -> None:
        """Revoke C{lease} if its break is not acknowledged within its recall time."""
        self._seq += 1
        lease._break_seq = self._seq
        timeout = lease.recall_timeout if lease.recall_timeout is not None else self.recall_timeout
        due = self._now() + timeout
        self._queues.setdefault(timeout, deque()).append((due, self._seq, lease))
        timer = self._timer
        if timer is None:
            self._timer = self._clock.callLater(timeout, self._expire_due)
        elif timer.getTime() > due:
            timer.reset(timeout)

    def _expire_due(self) -> None:
        self._timer = None
        now = self._now()
        revoked: dict[str, int] = {}
        secs: set[float] = set()
        for timeout, queue in list(self._queues.items()):
            while queue and queue[0][0] <= now:
                _, seq, lease = queue.popleft()
                if lease._break_seq == seq and not lease.gone:
                    lease.expire()
                    revoked[lease.key.protocol] = revoked.get(lease.key.protocol, 0) + 1
                    secs.add(timeout)
        nxt: float | None = None
        for timeout, queue in list(self._queues.items()):
            # Entries of breaks already answered are dropped lazily, here.
            while queue and queue[0][2]._break_seq != queue[0][1]:
                queue.popleft()
            if queue:
                nxt = queue[0][0] if nxt is None else min(nxt, queue[0][0])
            else:
                del self._queues[timeout]
        if revoked:
            self._log.warn(
                "leases revoked: {counts} did not acknowledge a break within {secs}s",
                counts=", ".join(f"{n} {p}" for p, n in sorted(revoked.items())),
                secs="/".join(f"{t:g}" for t in sorted(secs)),
            )
        if nxt is not None:
            # (A revocation's holder may have started a break, and a timer, meanwhile.)
            if self._timer is None:
                self._timer = self._clock.callLater(max(0.0, nxt - now), self._expire_due)
            elif self._timer.getTime() > nxt:
                self._timer.reset(max(0.0, nxt - now))

    def _observe_break(self, lease: Lease, revoked: bool) -> None:
        if revoked:
            self._log.debug(
                "lease revoked: {protocol} ino={ino}", protocol=lease.key.protocol, ino=lease.ino
            )
            if self._revoked is not None:
                self._revoked.labels(lease.key.protocol).inc()
        if self._seconds is not None:
            self._seconds.labels(lease.key.protocol).observe(
                max(0.0, self._now() - lease._break_started)
            )

    def describe(self) -> list[dict[str, Any]]:
        """Every lease, for the admin API and the manhole."""
        return [
            {
                "ino": lease.ino,
                "protocol": lease.key.protocol,
                "state": bits_text(lease.state),
                "breaking_to": None if lease.breaking_to is None else bits_text(lease.breaking_to),
                "epoch": lease.epoch,
                "dir": lease.is_dir,
            }
            for lease in self._by_key.values()
        ]


def _first_failure(f: Failure) -> Failure:
    """gatherResults wraps the first failure (a cancellation): pass on the failure itself."""
    value = f.value
    if isinstance(value, defer.FirstError):
        sub: Failure = value.subFailure
        return sub
    return f
