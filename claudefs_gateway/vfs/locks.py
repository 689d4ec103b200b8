# -*- test-case-name: tests.vfs.test_locks -*-
"""
The cross-protocol lock table: byte-range locks and share reservations.

NLM, NFSv4 and SMB each have their own lock vocabulary, but a file is one file
whichever protocol reaches it, so a lock taken over one protocol must hold
against the others. This module keeps the one table they all consult, per
inode number, in memory (one gateway process owns its locks; a restart loses
them, which is what the grace period is for).

Two flavours of owner share the table (see C{docs/locks.rst}):

  - POSIX owners (every protocol but C{"smb"}): fcntl semantics. An owner's
    locks never conflict with each other; a new lock replaces the owner's
    coverage of its range (upgrading, downgrading or splitting existing locks)
    and merges with touching or overlapping locks of the same type.
  - Windows owners (C{"smb"}): locks stack as separate records and must be
    unlocked with exactly the range they were locked with.

Between different owners the rule is the same for both flavours: two locks
conflict when their ranges overlap and at least one is exclusive.

Nothing here touches the reactor except the injected clock, which ends the
grace period. Blocking requests are Deferreds that fire when granted; cancel
one (C{d.cancel()}, or C{d.addTimeout(seconds, clock)}) to give up waiting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from zope.interface import implementer

from claudefs_gateway.core.log import Logger, debugging
from claudefs_gateway.errors import (
    Deadlock,
    Grace,
    Inval,
    LockConflict,
    NoLock,
    ShareConflict,
    Stale,
)
from claudefs_gateway.interfaces import ILockTable

__all__ = [
    "EOF",
    "SHARE_MODES",
    "WINDOWS_PROTOCOLS",
    "Lock",
    "LockOwner",
    "LockTable",
    "ShareToken",
]

#: The exclusive end of a range that runs "to end of file": byte offsets are
#: unsigned 64-bit numbers in every protocol we serve, so nothing lies past it.
EOF = 2**64

#: Protocols whose owners get Windows (MS-FSA) semantics; all others are POSIX.
WINDOWS_PROTOCOLS = frozenset({"smb"})

#: What a share reservation may ask for or deny to others.
SHARE_MODES = frozenset({"read", "write", "delete"})


@attrs.frozen
class LockOwner:
    """
    Who holds a lock: the unit of lock ownership, as each protocol defines it.

    @ivar protocol: C{"nlm"}, C{"nfs4"}, C{"smb"}, C{"local"}...; C{"smb"}
        owners get Windows semantics, every other protocol POSIX semantics.
    @ivar client: the client's identity, the unit a reboot or lost session
        releases at once: NLM caller_name, NFSv4 clientid, SMB session or
        connection id.
    @ivar owner: the owner within that client: NLM svid and oh, NFSv4
        lock-owner, SMB open FileId.
    """

    protocol: str
    client: str | bytes
    owner: bytes

    @property
    def windows(self) -> bool:
        """Whether this owner's locks follow Windows rather than POSIX rules."""
        return self.protocol in WINDOWS_PROTOCOLS


@attrs.frozen
class Lock:
    """
    One byte-range lock (held or, in a conflict report, requested).

    @ivar start: the first byte.
    @ivar length: how many bytes; C{0} means "to end of file" however the
        request spelled it (NLM C{l_len=0}, NFSv4 C{2**64-1}, or any range
        reaching past the last 64-bit offset).
    @ivar exclusive: a write (exclusive) lock rather than a read (shared) one.
    """

    owner: LockOwner
    start: int
    length: int
    exclusive: bool

    @property
    def end(self) -> int:
        """The first byte after the range; L{EOF} for "to end of file"."""
        return EOF if self.length == 0 else self.start + self.length


def _span(start: int, length: int) -> tuple[int, int]:
    """
    The half-open range C{[start, end)} of a request, C{end} being L{EOF}
    for "to end of file".

    @raise Inval: a negative value, or one that does not fit in 64 bits.
    """
    if start < 0 or length < 0 or start >= EOF or length >= EOF:
        raise Inval(f"bad lock range start={start} length={length}")
    end = start + length
    if length == 0 or end >= EOF:
        end = EOF
    return start, end


def _make(owner: LockOwner, start: int, end: int, exclusive: bool) -> Lock:
    return Lock(owner, start, 0 if end == EOF else end - start, exclusive)


def _conflicts(held: Lock, owner: LockOwner, start: int, end: int, exclusive: bool) -> bool:
    """
    Whether C{held} refuses a lock request by C{owner} on C{[start, end)}.

    Different owners conflict when the ranges overlap and either lock is
    exclusive, whatever their protocols. A POSIX owner never conflicts with
    itself. A Windows owner (an SMB open) conflicts with its own overlapping
    locks only when the new lock is exclusive: it cannot set overlapping
    exclusive locks, nor lay an exclusive lock over its own shared one, but it
    may stack shared locks on its own shared or exclusive ones. That is what
    MS-SMB2 3.3.5.14 gets from the object store (MS-FSA 2.1.5.8, 2.1.5.7 in
    older revisions, applying the range-conflict check of 2.1.4.10), and what
    smbtorture's LOCKTEST4 and LOCKTEST5 expect of a Windows server ("the same
    process cannot overlay a read lock with a write lock", "can overlay a
    write lock with a read lock", "can stack read locks"), which Samba's
    C{brl_conflict} implements.
    """
    if held.end <= start or held.start >= end:
        return False
    if held.owner == owner:
        return owner.windows and exclusive
    return exclusive or held.exclusive


@attrs.define(eq=False)
class _Waiter:
    """A blocking request queued on one inode, with the Deferred to fire."""

    ino: int
    owner: LockOwner
    start: int
    end: int
    exclusive: bool
    reclaim: bool
    deferred: defer.Deferred[Lock] | None = None

    def as_lock(self) -> Lock:
        return _make(self.owner, self.start, self.end, self.exclusive)


@attrs.define(eq=False)
class ShareToken:
    """
    One open's share reservation: what it may do and what it denies others.

    Read-only for callers: change it through L{LockTable.upgrade_share},
    L{LockTable.downgrade_share} and L{LockTable.close_share}. Tokens compare
    by identity: two opens with the same modes are still two opens.
    """

    _ino: int
    _owner: LockOwner
    _access: frozenset[str]
    _deny: frozenset[str]
    _closed: bool = False

    @property
    def ino(self) -> int:
        return self._ino

    @property
    def owner(self) -> LockOwner:
        return self._owner

    @property
    def access(self) -> frozenset[str]:
        """What this open may do: a subset of L{SHARE_MODES}."""
        return self._access

    @property
    def deny(self) -> frozenset[str]:
        """What this open denies every other open: a subset of L{SHARE_MODES}."""
        return self._deny

    @property
    def closed(self) -> bool:
        """Closed by its front end, or released with its owner, client or inode."""
        return self._closed


def _modes(modes: Iterable[str]) -> frozenset[str]:
    got = frozenset(modes)
    if not got <= SHARE_MODES:
        raise Inval(f"unknown share modes {sorted(got - SHARE_MODES)}")
    return got


def _share_conflicts(token: ShareToken, access: frozenset[str], deny: frozenset[str]) -> bool:
    return bool(access & token.deny or deny & token.access)


@attrs.define(eq=False)
class _File:
    """Everything the table knows about one inode."""

    held: dict[LockOwner, list[Lock]] = attrs.Factory(dict)
    waiters: list[_Waiter] = attrs.Factory(list)
    shares: list[ShareToken] = attrs.Factory(list)
    # Bumped on every change, so a wake-up pass notices changes made by the
    # callbacks it fires and starts over.
    version: int = 0

    def empty(self) -> bool:
        return not (self.held or self.waiters or self.shares)

    def all_locks(self) -> Iterator[Lock]:
        for own in self.held.values():
            yield from own


@attrs.define(eq=False)
class _Owned:
    """Everything one owner has, so releasing it touches only its own inodes."""

    inodes: set[int] = attrs.Factory(set)
    waiters: list[_Waiter] = attrs.Factory(list)
    shares: list[ShareToken] = attrs.Factory(list)

    def empty(self) -> bool:
        return not (self.inodes or self.waiters or self.shares)


@implementer(ILockTable)
class LockTable:
    """
    Byte-range locks, blocking waiters and share reservations for every inode
    of one gateway, shared by all its front ends.

    @param clock: ends the grace period (L{start_grace}).
    @param max_records: most lock records, share reservations and queued
        blocking requests at once; a request that needs more fails with
        L{NoLock} (ENOLCK), so clients splitting locks or queueing requests
        cannot exhaust memory.
    @param max_waiters: most blocking requests queued on one inode; more
        fail with L{NoLock}.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        *,
        max_records: int = 1_000_000,
        max_waiters: int = 1024,
    ) -> None:
        self._clock = clock
        self.max_records = max_records
        self.max_waiters = max_waiters
        self._files: dict[int, _File] = {}
        self._owners: dict[LockOwner, _Owned] = {}
        self._clients: dict[tuple[str, str | bytes], set[LockOwner]] = {}
        self._records = 0
        self._grace: IDelayedCall | None = None
        # Deferreds waiting for any lock on an inode to be released
        # (notify_when_free): NFSv4 CB_NOTIFY_LOCK.
        self._watchers: dict[int, list[defer.Deferred[None]]] = {}

    # ------------------------------------------------------------------
    # Introspection

    @property
    def records(self) -> int:
        """Lock records, share reservations and waiters now (at most C{max_records})."""
        return self._records

    def busy(self, ino: int) -> bool:
        """Whether any lock, waiter or share reservation exists on C{ino} (the vfs's fast path)."""
        return ino in self._files

    def locks(self, ino: int) -> list[Lock]:
        """Every lock held on C{ino}, in byte order."""
        f = self._files.get(ino)
        if f is None:
            return []
        return sorted(f.all_locks(), key=lambda lk: (lk.start, lk.end))

    def waiting(self, ino: int) -> list[Lock]:
        """The blocking requests queued on C{ino}, oldest first."""
        f = self._files.get(ino)
        return [w.as_lock() for w in f.waiters] if f is not None else []

    def owners_of(self, ino: int) -> set[LockOwner]:
        """The owners holding a lock or a share reservation on C{ino}."""
        f = self._files.get(ino)
        if f is None:
            return set()
        return set(f.held) | {t.owner for t in f.shares}

    def holders(self) -> list[dict[str, object]]:
        """
        Every lock client with what it holds: C{protocol}, C{client} (text),
        C{locks}, C{shares} (share reservations) and C{waiting} (blocked
        requests), for C{cfs-gateway status}. Costs one pass over the owners.
        """
        out: list[dict[str, object]] = []
        for (protocol, client), owners in sorted(
            self._clients.items(), key=lambda kv: (kv[0][0], _text(kv[0][1]))
        ):
            locks, shares, waiting = self._counts(owners)
            name = _text(client)
            out.append(
                {
                    "protocol": protocol,
                    "client": name,
                    "locks": locks,
                    "shares": shares,
                    "waiting": waiting,
                }
            )
        return out

    def held_by(self, protocol: str, client: str | bytes) -> int:
        """Byte-range locks the lock client C{(protocol, client)} holds."""
        return self._counts(self._clients.get((protocol, client), ()))[0]

    def counts_of(self, protocol: str, client: str | bytes) -> tuple[int, int, int]:
        """
        What the lock client C{(protocol, client)} holds: (byte-range locks,
        share reservations, blocked requests).
        """
        return self._counts(self._clients.get((protocol, client), ()))

    def totals(self) -> dict[str, tuple[int, int, int]]:
        """Per lock protocol: (locks, share reservations, blocked requests), for metrics."""
        out: dict[str, tuple[int, int, int]] = {}
        for (protocol, _), owners in self._clients.items():
            counts = self._counts(owners)
            prev = out.get(protocol, (0, 0, 0))
            out[protocol] = (prev[0] + counts[0], prev[1] + counts[1], prev[2] + counts[2])
        return out

    def _counts(self, owners: Iterable[LockOwner]) -> tuple[int, int, int]:
        locks = shares = waiting = 0
        for owner in owners:
            st = self._owners.get(owner)
            if st is None:
                continue
            for ino in st.inodes:
                f = self._files.get(ino)
                if f is not None:
                    locks += len(f.held.get(owner, ()))
            shares += sum(1 for t in st.shares if not t.closed)
            waiting += len(st.waiters)
        return locks, shares, waiting

    # ------------------------------------------------------------------
    # Grace period

    @property
    def in_grace(self) -> bool:
        """Whether only reclaims are granted now."""
        return self._grace is not None

    def start_grace(self, seconds: float) -> None:
        """
        Grant only reclaims for the next C{seconds} (or until L{end_grace}).

        Called at start-up, after a restart lost every lock: the clients
        that held them get this long to reclaim them before anyone may take
        new ones. Calling it again during grace restarts the countdown.
        """
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._grace = self._clock.callLater(seconds, self._grace_over)
        self._log.info("lock grace period started for {seconds}s", seconds=seconds)

    def end_grace(self) -> None:
        """End the grace period now (all clients reclaimed, or an operator said so)."""
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self._grace_over()

    def _grace_over(self) -> None:
        if self._grace is None:
            return
        self._grace = None
        self._log.info("lock grace period over")
        # Waiters queued before grace began may now proceed: a global pass,
        # but it happens once per grace period, not per operation.
        for ino in [ino for ino, f in self._files.items() if f.waiters]:
            self._wake(ino)

    # ------------------------------------------------------------------
    # Byte-range locks

    def lock(
        self,
        ino: int,
        owner: LockOwner,
        start: int,
        length: int,
        exclusive: bool,
        *,
        wait: bool = False,
        reclaim: bool = False,
        on_wait: Callable[[], None] | None = None,
    ) -> defer.Deferred[Lock]:
        """
        Lock C{length} bytes of C{ino} from C{start} (C{0}: to end of file).

        @param wait: block until the lock can be granted instead of failing;
            cancel the Deferred to stop waiting.
        @param reclaim: the owner held this lock before the gateway
            restarted; only reclaims are granted during the grace period.
        @param on_wait: called (before this returns) when the request is
            queued to wait (L{ILockTable.lock}).
        @return: a Deferred firing with the L{Lock} granted (the range as
            requested, even when a POSIX owner's locks merged around it),
            immediately or, with C{wait}, when it can be granted. It fails
            with L{Inval} (bad range), L{Grace} (not a reclaim, in grace),
            L{LockConflict} (another lock, or an older waiter, is in the way
            and not C{wait}; its C{holder} is that L{Lock}), L{Deadlock} (a
            POSIX owner would wait for itself), L{NoLock} (too many records or
            waiters), C{CancelledError} (cancelled, or its owner or client
            released while waiting) or L{Stale} (inode released while waiting).
        """
        try:
            s, e = _span(start, length)
        except Inval:
            return defer.fail()
        if self.in_grace and not reclaim:
            self._log_op("lock", ino, owner, start, length, "grace")
            return defer.fail(Grace("lock refused: grace period"))
        f = self._files.get(ino)
        if f is None:
            blocker = None
        else:
            blocker = self._blocker(f, owner, s, e, exclusive, len(f.waiters), reclaim)
        if blocker is None:
            try:
                granted, again = self._record(ino, owner, s, e, exclusive)
            except NoLock:
                self._log_op("lock", ino, owner, start, length, "no records")
                return defer.fail()
            self._log_op("lock", ino, owner, start, length, "granted")
            result = defer.succeed(granted)
            if again:
                self._wake(ino)
            return result
        assert f is not None
        if not wait:
            self._log_op("lock", ino, owner, start, length, "conflict")
            return defer.fail(LockConflict(blocker))
        if len(f.waiters) >= self.max_waiters or self._records >= self.max_records:
            self._log_op("lock", ino, owner, start, length, "too many waiters")
            return defer.fail(NoLock(f"too many waiters on inode {ino}"))
        if not owner.windows:
            blockers = self._blocking_owners(f, owner, s, e, exclusive, len(f.waiters), reclaim)
            if self._reaches(blockers, owner):
                self._log_op("lock", ino, owner, start, length, "deadlock")
                return defer.fail(Deadlock("lock would deadlock"))
        w = _Waiter(ino, owner, s, e, exclusive, reclaim)
        d: defer.Deferred[Lock] = defer.Deferred(lambda _: self._cancel_waiter(w))
        w.deferred = d
        f.waiters.append(w)
        f.version += 1
        self._records += 1
        self._owned(owner).waiters.append(w)
        self._log_op("lock", ino, owner, start, length, "waiting")
        if on_wait is not None:
            on_wait()
        return d

    def test(
        self, ino: int, owner: LockOwner, start: int, length: int, exclusive: bool
    ) -> Lock | None:
        """
        The lock that would refuse this request now, or L{None} if it would
        be granted (NLM TEST, NFSv4 LOCKT). Ignores the grace period: a front
        end that refuses tests in grace checks L{in_grace} itself.

        @raise Inval: a bad range.
        """
        s, e = _span(start, length)
        f = self._files.get(ino)
        if f is None:
            return None
        return self._blocker(f, owner, s, e, exclusive, len(f.waiters), False)

    def unlock(self, ino: int, owner: LockOwner, start: int, length: int) -> None:
        """
        Unlock a range, then grant whatever waiters can now proceed.

        A POSIX owner's coverage of the range is removed, splitting locks
        that straddle its ends; unlocking bytes it has not locked is not an
        error. A Windows owner must name one of its locks exactly (MS-FSA
        2.1.5.9, STATUS_RANGE_NOT_LOCKED otherwise); one such lock goes, an
        exclusive one first if both kinds match.

        @raise Inval: a bad range.
        @raise NoLock: a Windows owner holds no lock with exactly this range,
            or splitting would need more than C{max_records} records.
        """
        s, e = _span(start, length)
        f = self._files.get(ino)
        own = f.held.get(owner, []) if f is not None else []
        if owner.windows:
            match = None
            for lk in own:
                if lk.start == s and lk.end == e:
                    match = lk
                    if lk.exclusive:
                        break
            if match is None:
                self._log_op("unlock", ino, owner, start, length, "not locked")
                raise NoLock("range not locked")
            new = list(own)
            new.remove(match)
        else:
            new = _carve(own, owner, s, e, None)
        if f is not None and new != own:
            self._replace(ino, f, owner, own, new)
            self._log_op("unlock", ino, owner, start, length, "unlocked")
            self._wake(ino)
        else:
            self._log_op("unlock", ino, owner, start, length, "nothing locked")

    def check_io(
        self,
        ino: int,
        owner: LockOwner,
        start: int,
        length: int,
        write: bool,
        strict: bool = True,
    ) -> bool:
        """
        Whether C{owner} may read or write C{length} bytes at C{start} through
        the locks of others. Locks of Windows owners (SMB) are mandatory and
        bind every protocol's I/O; locks of POSIX owners (NLM, NFSv4) bind
        only C{strict} I/O (SMB and S3 honour them; NFS I/O does not, POSIX
        locks being advisory). C{length} here is a byte count: 0 touches no
        bytes and is always allowed.

        A write is refused by any overlapping lock of another owner, a read
        only by an exclusive one. A Windows owner's own shared lock refuses
        its own writes too (MS-FSA 2.1.4.10 with LockIntent false;
        smbtorture LOCKTEST7 expects STATUS_FILE_LOCK_CONFLICT there, as
        LockFileEx documents: a shared lock denies write access to every
        process, "including the process that first locks the region"); POSIX
        owners' own locks never refuse them.

        @raise Inval: a bad range.
        """
        if length == 0:
            return True
        s, e = _span(start, length)
        f = self._files.get(ino)
        if f is None:
            return True
        for lk in f.all_locks():
            if lk.end <= s or lk.start >= e:
                continue
            if lk.owner == owner:
                if owner.windows and write and not lk.exclusive:
                    return False
                continue
            if not strict and not lk.owner.windows:
                continue
            if write or lk.exclusive:
                return False
        return True

    def cancel_waiters(self, owner: LockOwner, ino: int | None = None) -> None:
        """
        Stop every blocking request of C{owner} (on C{ino} only, if given):
        their Deferreds fail with C{CancelledError}. Locks it holds stay.
        """
        st = self._owners.get(owner)
        if st is None:
            return
        dropped = [w for w in st.waiters if ino is None or w.ino == ino]
        touched: set[int] = set()
        for w in dropped:
            self._unqueue(w)
            touched.add(w.ino)
        self._forget_if_idle(owner)
        self._log.debug(
            "cancelled {count} waiters of {protocol}", count=len(dropped), protocol=owner.protocol
        )
        self._finish(dropped, touched)

    def release_owner(self, owner: LockOwner, tell: bool = True) -> None:
        """
        Drop all of C{owner}'s locks, waiters (failing with C{CancelledError})
        and share reservations, then wake whoever waited on them: NFSv4
        RELEASE_LOCKOWNER, or SMB CLOSE (an open's locks and share
        reservation end with it). C{tell} is for shared tables (nobody to
        tell here).
        """
        dropped: list[_Waiter] = []
        touched: set[int] = set()
        self._drop_owner(owner, dropped, touched)
        if debugging():
            self._log.debug("released owner {protocol}", protocol=owner.protocol)
        self._finish(dropped, touched)

    def release_client(self, protocol: str, client: str | bytes) -> None:
        """
        Drop everything of every owner of one client: it rebooted (NSM
        notify), sent NLM FREE_ALL, its NFSv4 lease expired or its SMB
        session was lost.
        """
        dropped: list[_Waiter] = []
        touched: set[int] = set()
        for owner in list(self._clients.get((protocol, client), ())):
            self._drop_owner(owner, dropped, touched)
        self._log.debug("released client of {protocol}", protocol=protocol)
        self._finish(dropped, touched)

    def notify_when_free(self, ino: int) -> defer.Deferred[None]:
        """
        A Deferred firing (with L{None}) the next time a lock on C{ino} is
        released or narrowed, so a client refused a lock can be told to try
        again (NFSv4 CB_NOTIFY_LOCK, RFC 8881 §20.11). It takes nothing: the
        lock may be taken by someone else first. Cancel it to stop waiting.

        @raise NoLock: C{max_waiters} notifications already wait on C{ino}.
        """
        watchers = self._watchers.setdefault(ino, [])
        if len(watchers) >= self.max_waiters:
            if not watchers:
                del self._watchers[ino]
            raise NoLock(f"too many lock notifications on inode {ino}")

        def cancel(d: defer.Deferred[None]) -> None:
            got = self._watchers.get(ino)
            if got is not None and d in got:
                got.remove(d)
                if not got:
                    del self._watchers[ino]

        d: defer.Deferred[None] = defer.Deferred(cancel)
        watchers.append(d)
        return d

    def _notify_free(self, ino: int) -> None:
        watchers = self._watchers.pop(ino, None)
        for d in watchers or ():
            d.callback(None)

    def release_inode(self, ino: int) -> None:
        """
        Forget C{ino}: the file was deleted. Its locks and share reservations
        go; its waiters fail with L{Stale}.
        """
        if ino in self._watchers:
            self._notify_free(ino)
        f = self._files.pop(ino, None)
        if f is None:
            return
        for owner, own in f.held.items():
            self._records -= len(own)
            self._owned(owner).inodes.discard(ino)
        for w in f.waiters:
            self._records -= 1
            self._owned(w.owner).waiters.remove(w)
        for t in f.shares:
            t._closed = True
            self._records -= 1
            self._owned(t.owner).shares.remove(t)
        for owner in {*f.held, *(w.owner for w in f.waiters), *(t.owner for t in f.shares)}:
            self._forget_if_idle(owner)
        if debugging():
            self._log.debug("released inode {ino}", ino=ino)
        for w in f.waiters:
            assert w.deferred is not None
            w.deferred.errback(Stale(f"inode {ino} released"))

    # ------------------------------------------------------------------
    # Share reservations

    def open_share(
        self,
        ino: int,
        owner: LockOwner,
        access: Iterable[str],
        deny: Iterable[str],
        *,
        reclaim: bool = False,
    ) -> ShareToken:
        """
        Reserve an open of C{ino}: C{access} is what it will do, C{deny} what
        it refuses everyone else (subsets of L{SHARE_MODES}).

        It conflicts with an existing open when its access meets that open's
        deny or its deny meets that open's access. Every existing open is
        checked, the same owner's included: in SMB each open is its own
        owner anyway, and a second open by one NFSv4 open-owner is an upgrade
        of the first, which the front end asks for with L{upgrade_share}.

        @raise Inval: an unknown mode.
        @raise Grace: in grace and not a reclaim.
        @raise ShareConflict: another open's modes conflict (SMB
            STATUS_SHARING_VIOLATION, NFSv4 NFS4ERR_SHARE_DENIED).
        @raise NoLock: more than C{max_records} records.
        """
        acc, den = _modes(access), _modes(deny)
        if self.in_grace and not reclaim:
            raise Grace("open refused: grace period")
        f = self._files.get(ino)
        if f is not None:
            for t in f.shares:
                if _share_conflicts(t, acc, den):
                    self._log.debug(
                        "share conflict {protocol} ino={ino}", protocol=owner.protocol, ino=ino
                    )
                    raise ShareConflict("share reservation conflict")
        if self._records + 1 > self.max_records:
            raise NoLock("too many lock records")
        token = ShareToken(ino, owner, acc, den)
        f = self._file(ino)
        f.shares.append(token)
        f.version += 1
        self._owned(owner).shares.append(token)
        self._records += 1
        if debugging():
            self._log.debug(
                "share {protocol} ino={ino} access={access} deny={deny}",
                protocol=owner.protocol,
                ino=ino,
                access=sorted(acc),
                deny=sorted(den),
            )
        return token

    def upgrade_share(
        self,
        token: ShareToken,
        access: Iterable[str],
        deny: Iterable[str],
        *,
        reclaim: bool = False,
    ) -> None:
        """
        Add modes to an open (NFSv4 OPEN of a file its open-owner has open
        already: RFC 8881 §18.16 makes the result the union of old and new).
        Checked against every other open, not against itself.

        @raise NoLock: the token is closed.
        @raise Inval, Grace, ShareConflict: as L{open_share}; the open keeps
            its old modes.
        """
        acc, den = _modes(access) | token.access, _modes(deny) | token.deny
        if token.closed:
            raise NoLock("share reservation closed")
        if self.in_grace and not reclaim:
            raise Grace("open refused: grace period")
        f = self._files[token.ino]
        for t in f.shares:
            if t is not token and _share_conflicts(t, acc, den):
                self._log.debug(
                    "share upgrade conflict {protocol} ino={ino}",
                    protocol=token.owner.protocol,
                    ino=token.ino,
                )
                raise ShareConflict("share reservation conflict")
        token._access, token._deny = acc, den
        f.version += 1
        self._log.debug(
            "share upgrade {protocol} ino={ino} access={access} deny={deny}",
            protocol=token.owner.protocol,
            ino=token.ino,
            access=sorted(acc),
            deny=sorted(den),
        )

    def downgrade_share(
        self, token: ShareToken, access: Iterable[str], deny: Iterable[str]
    ) -> None:
        """
        Narrow an open to C{access} and C{deny} (NFSv4 OPEN_DOWNGRADE), which
        must be subsets of what it has: narrowing cannot conflict.

        @raise NoLock: the token is closed.
        @raise Inval: an unknown mode, or not a subset.
        """
        acc, den = _modes(access), _modes(deny)
        if token.closed:
            raise NoLock("share reservation closed")
        if not (acc <= token.access and den <= token.deny):
            raise Inval("downgrade is not a subset of the open's modes")
        token._access, token._deny = acc, den
        self._files[token.ino].version += 1
        self._log.debug(
            "share downgrade {protocol} ino={ino} access={access} deny={deny}",
            protocol=token.owner.protocol,
            ino=token.ino,
            access=sorted(acc),
            deny=sorted(den),
        )

    def close_share(self, token: ShareToken) -> None:
        """End an open's reservation. Closing twice is harmless: a release may have beaten it."""
        if token.closed:
            return
        token._closed = True
        f = self._files[token.ino]
        f.shares.remove(token)
        f.version += 1
        self._records -= 1
        self._owned(token.owner).shares.remove(token)
        self._forget_if_idle(token.owner)
        self._drop_if_empty(token.ino)
        if debugging():
            self._log.debug(
                "unshare {protocol} ino={ino}", protocol=token.owner.protocol, ino=token.ino
            )

    def settle_share(self, token: ShareToken) -> defer.Deferred[None]:
        """One process decides at once: nothing to wait for (an already fired Deferred)."""
        return defer.succeed(None)

    def shares(self, ino: int) -> list[ShareToken]:
        """The open share reservations on C{ino}, oldest first."""
        f = self._files.get(ino)
        return list(f.shares) if f is not None else []

    # ------------------------------------------------------------------
    # Internals

    def _log_op(
        self, op: str, ino: int, owner: LockOwner, start: int, length: int, outcome: str
    ) -> None:
        self._log.debug(
            "{op} {protocol} ino={ino} start={start} length={length}: {outcome}",
            op=op,
            protocol=owner.protocol,
            ino=ino,
            start=start,
            length=length,
            outcome=outcome,
        )

    def _file(self, ino: int) -> _File:
        f = self._files.get(ino)
        if f is None:
            f = self._files[ino] = _File()
        return f

    def _drop_if_empty(self, ino: int) -> None:
        f = self._files.get(ino)
        if f is not None and f.empty():
            del self._files[ino]

    def _owned(self, owner: LockOwner) -> _Owned:
        st = self._owners.get(owner)
        if st is None:
            st = self._owners[owner] = _Owned()
            self._clients.setdefault((owner.protocol, owner.client), set()).add(owner)
        return st

    def _forget_if_idle(self, owner: LockOwner) -> None:
        st = self._owners.get(owner)
        if st is not None and st.empty():
            del self._owners[owner]
            key = (owner.protocol, owner.client)
            mine = self._clients.get(key)
            if mine is not None:
                mine.discard(owner)
                if not mine:
                    del self._clients[key]

    def _waiter_blocks(
        self,
        f: _File,
        w: _Waiter,
        owner: LockOwner,
        start: int,
        end: int,
        exclusive: bool,
        reclaim: bool,
    ) -> bool:
        """
        Whether the older waiter C{w} makes this request queue behind it.

        First come, first served: a request that would conflict with an older
        waiter's lock waits for it, so a stream of shared locks cannot starve
        a waiting exclusive one. Two exceptions: a waiter never holds up its
        own owner, nor an owner whose held lock it is itself waiting for
        (queueing that owner behind it would deadlock the two, where granting
        at once costs the waiter nothing: it waits for that owner either way).
        During grace, reclaims also pass waiters that are not reclaims, which
        cannot be granted before grace ends anyway.
        """
        if w.owner == owner or w.end <= start or w.start >= end:
            return False
        if not (exclusive or w.exclusive):
            return False
        if reclaim and not w.reclaim and self.in_grace:
            return False
        return not any(
            _conflicts(lk, w.owner, w.start, w.end, w.exclusive) for lk in f.held.get(owner, ())
        )

    def _blocker(
        self,
        f: _File,
        owner: LockOwner,
        start: int,
        end: int,
        exclusive: bool,
        upto: int,
        reclaim: bool,
    ) -> Lock | None:
        """A held lock, else one of the first C{upto} waiters, that refuses this request."""
        for lk in f.all_locks():
            if _conflicts(lk, owner, start, end, exclusive):
                return lk
        for w in f.waiters[:upto]:
            if self._waiter_blocks(f, w, owner, start, end, exclusive, reclaim):
                return w.as_lock()
        return None

    def _blocking_owners(
        self,
        f: _File,
        owner: LockOwner,
        start: int,
        end: int,
        exclusive: bool,
        upto: int,
        reclaim: bool,
    ) -> set[LockOwner]:
        """Every owner this request would wait for: the edges of the wait-for graph."""
        found = {lk.owner for lk in f.all_locks() if _conflicts(lk, owner, start, end, exclusive)}
        for w in f.waiters[:upto]:
            if self._waiter_blocks(f, w, owner, start, end, exclusive, reclaim):
                found.add(w.owner)
        return found

    def _reaches(self, starts: set[LockOwner], target: LockOwner) -> bool:
        """
        Whether C{target} is reachable from C{starts} in the wait-for graph:
        owner A waits for owner B when a queued request of A is refused by a
        lock B holds or by an older waiter of B. Edges are recomputed from the
        current state, so the search visits only the owners involved.
        """
        seen: set[LockOwner] = set()
        stack = list(starts)
        while stack:
            o = stack.pop()
            if o == target:
                return True
            if o in seen:
                continue
            seen.add(o)
            st = self._owners.get(o)
            if st is None:
                continue
            for w in st.waiters:
                f = self._files[w.ino]
                stack.extend(
                    self._blocking_owners(
                        f, w.owner, w.start, w.end, w.exclusive, f.waiters.index(w), w.reclaim
                    )
                )
        return False

    def _record(
        self, ino: int, owner: LockOwner, start: int, end: int, exclusive: bool
    ) -> tuple[Lock, bool]:
        """
        Record a lock already checked for conflicts.

        @return: the lock, and whether granting it may have let a waiter
            through: a POSIX downgrade frees bytes others wait for.
        @raise NoLock: it needs more than C{max_records} records.
        """
        f = self._file(ino)
        own = f.held.get(owner, [])
        granted = _make(owner, start, end, exclusive)
        if owner.windows:
            new = [*own, granted]
        else:
            new = _carve(own, owner, start, end, exclusive)
        try:
            self._replace(ino, f, owner, own, new)
        except NoLock:
            self._drop_if_empty(ino)
            raise
        downgraded = not exclusive and any(
            lk.exclusive and lk.start < end and lk.end > start for lk in own
        )
        return granted, downgraded

    def _replace(
        self, ino: int, f: _File, owner: LockOwner, old: list[Lock], new: list[Lock]
    ) -> None:
        """Swap an owner's locks on one inode, keeping the counts and indexes true."""
        delta = len(new) - len(old)
        if delta > 0 and self._records + delta > self.max_records:
            raise NoLock("too many lock records")
        self._records += delta
        f.version += 1
        if new:
            f.held[owner] = new
            self._owned(owner).inodes.add(ino)
        else:
            f.held.pop(owner, None)
            st = self._owners.get(owner)
            if st is not None:
                st.inodes.discard(ino)
            self._forget_if_idle(owner)
            self._drop_if_empty(ino)

    def _unqueue(self, w: _Waiter) -> bool:
        """Take a waiter off its queues; False if it was not queued."""
        f = self._files.get(w.ino)
        if f is None or w not in f.waiters:
            return False
        f.waiters.remove(w)
        f.version += 1
        self._records -= 1
        self._owned(w.owner).waiters.remove(w)
        return True

    def _cancel_waiter(self, w: _Waiter) -> None:
        """The Deferred's canceller: leave the queue and let those behind move up."""
        if self._unqueue(w):
            self._log_op("cancel", w.ino, w.owner, w.start, w.as_lock().length, "cancelled")
            self._forget_if_idle(w.owner)
            self._drop_if_empty(w.ino)
            self._wake(w.ino)

    def _drop_owner(self, owner: LockOwner, dropped: list[_Waiter], touched: set[int]) -> None:
        st = self._owners.pop(owner, None)
        if st is None:
            return
        for ino in st.inodes:
            f = self._files[ino]
            self._records -= len(f.held.pop(owner, ()))
            f.version += 1
            touched.add(ino)
        for w in st.waiters:
            f = self._files[w.ino]
            f.waiters.remove(w)
            f.version += 1
            self._records -= 1
            dropped.append(w)
            touched.add(w.ino)
        for t in st.shares:
            t._closed = True
            f = self._files[t.ino]
            f.shares.remove(t)
            f.version += 1
            self._records -= 1
            touched.add(t.ino)
        key = (owner.protocol, owner.client)
        mine = self._clients.get(key)
        if mine is not None:
            mine.discard(owner)
            if not mine:
                del self._clients[key]

    def _finish(self, dropped: list[_Waiter], touched: set[int]) -> None:
        """After a release: tidy, fail the dropped waiters, then wake the rest."""
        for ino in touched:
            self._drop_if_empty(ino)
        for w in dropped:
            assert w.deferred is not None
            w.deferred.errback(defer.CancelledError())
        for ino in sorted(touched):
            self._wake(ino)

    def _wake(self, ino: int) -> None:
        """
        Grant, oldest first, every waiter on C{ino} that can proceed now.

        Each Deferred fires as soon as its lock is recorded; a callback may
        change the table (unlock, lock again), in which case the pass starts
        over. Otherwise it continues where it was: a grant only adds locks
        and shortens the queue, which cannot help an older waiter (the
        waiter it passed did not conflict with it), except a POSIX
        downgrade, after which the pass also starts over.
        """
        f = self._files.get(ino)
        i = 0
        while f is not None and i < len(f.waiters):
            w = f.waiters[i]
            if (self.in_grace and not w.reclaim) or self._blocker(
                f, w.owner, w.start, w.end, w.exclusive, i, w.reclaim
            ) is not None:
                i += 1
                continue
            self._unqueue(w)
            assert w.deferred is not None
            try:
                granted, again = self._record(ino, w.owner, w.start, w.end, w.exclusive)
            except NoLock:
                self._forget_if_idle(w.owner)
                self._log_op("lock", ino, w.owner, w.start, w.as_lock().length, "no records")
                again = False
                version = f.version
                w.deferred.errback()
            else:
                self._log_op("lock", ino, w.owner, w.start, granted.length, "granted after wait")
                version = f.version
                w.deferred.callback(granted)
            if self._files.get(ino) is not f or f.version != version or again:
                f = self._files.get(ino)
                i = 0
        self._drop_if_empty(ino)
        if ino in self._watchers:
            self._notify_free(ino)


def _carve(
    own: list[Lock], owner: LockOwner, start: int, end: int, exclusive: bool | None
) -> list[Lock]:
    """
    A POSIX owner's locks after it locks (C{exclusive} a bool) or unlocks
    (C{None}) C{[start, end)}: its coverage of the range is replaced, locks
    straddling the ends are split, and the new lock absorbs locks of the same
    type that overlap or touch it (fcntl semantics).

    Relies on, and keeps, the owner's invariant: its locks are disjoint, and
    two of the same type never touch. So a merge can only extend the new
    lock over bytes that no other lock of the owner covers.
    """
    out: list[Lock] = []
    new_start, new_end = start, end
    for lk in own:
        ls, le = lk.start, lk.end
        if exclusive is not None and lk.exclusive == exclusive and le >= start and ls <= end:
            new_start, new_end = min(new_start, ls), max(new_end, le)
            continue
        if le <= start or ls >= end:
            out.append(lk)
            continue
        if ls < start:
            out.append(_make(owner, ls, start, lk.exclusive))
        if le > end:
            out.append(_make(owner, end, le, lk.exclusive))
    if exclusive is not None:
        out.append(_make(owner, new_start, new_end, exclusive))
    out.sort(key=lambda lk: lk.start)
    return out


def _text(client: object) -> str:
    """A lock client's name as text (NLM names are bytes; str() of bytes warns under -b)."""
    if isinstance(client, bytes):
        return client.decode("utf-8", "replace")
    return str(client)
