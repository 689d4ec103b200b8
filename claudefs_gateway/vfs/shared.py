# -*- test-case-name: tests.vfs.test_shared -*-
"""
Locks, share reservations and leases shared by every gateway on one meta
server (C{backend: remote}; docs/rpc.rst "Shared state").

L{SharedLockTable} and L{SharedLeaseManager} stand where the vfs expects
its L{ILockTable} and L{ILeaseManager}. Each keeps this gateway's own
table and lease manager (its clients' locks and leases, exactly as in one
process) and adds what the meta server says about the others:

 - a byte-range lock is taken at the meta server first (authoritative over
   every gateway), then in the local table; a waiting lock asks again each
   time the inode's state changes;
 - the synchronous questions (may this I/O pass, which opens deny a write,
   is anything held here) are answered from the local table and a replica of
   the other gateways' locks and shares, which the meta server keeps current
   with C{EV_LOCKS};
 - a share reservation is checked against both at once and registered at the
   meta server, which refuses it if another gateway's open got there first
   in the moment before its C{EV_LOCKS} arrived; front ends await that
   decision (C{settle_share}) before they answer the open;
 - leases are granted here, never with W while another gateway holds any
   lease on the file, then confirmed by the meta server (C{LEASE_GRANT}),
   which takes back what another gateway's grant at the same moment left no
   room for; front ends await it (C{settle_lease}); what this gateway's
   clients hold per inode afterwards is told to the meta server
   (C{LEASE_HOLD}); a recall that finds other gateways
   holding too much asks the meta server (C{LEASE_RECALL}), which has them
   break their holders (C{EV_LEASE_BREAK}) and answers when they have.

Nothing here is used by the embedded store: one process needs no RPC.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.python.failure import Failure

from zope.interface import implementer

from claudefs_gateway import errors
from claudefs_gateway.core.log import Logger
from claudefs_gateway.interfaces import ILeaseHolder, ILeaseManager, ILockTable
from claudefs_gateway.vfs.leases import KEEP_FOR, Lease, LeaseKey, LeaseManager, W, Why
from claudefs_gateway.vfs.locks import Lock, LockOwner, LockTable, ShareToken
from claudefs_gateway.vfs.shared_clients import ClusterClients

__all__ = [
    "ShareIntent",
    "SharedLockTable",
    "SharedLeaseManager",
    "Link",
    "owner_to_wire",
    "owner_from_wire",
    "modes_to_bits",
    "modes_from_bits",
]

_MODE_BITS = {"read": 1, "write": 2, "delete": 4}


def modes_to_bits(modes: Iterable[str]) -> int:
    """Share modes as wire bits (read 1, write 2, delete 4)."""
    return sum(_MODE_BITS[m] for m in set(modes))


def modes_from_bits(bits: int) -> frozenset[str]:
    return frozenset(m for m, b in _MODE_BITS.items() if bits & b)


def owner_to_wire(owner: LockOwner) -> tuple[str, bytes, bytes]:
    """A L{LockOwner} as the RPC's Owner: the client tagged s: (str) or b: (bytes)."""
    c = owner.client
    client = b"s:" + c.encode() if isinstance(c, str) else b"b:" + c
    return (owner.protocol, client, bytes(owner.owner))


def owner_from_wire(value: Any) -> LockOwner:
    protocol, client, owner = value
    client = bytes(client)
    if client.startswith(b"s:"):
        return LockOwner(protocol, client[2:].decode("utf-8", "replace"), bytes(owner))
    return LockOwner(protocol, client[2:] if client.startswith(b"b:") else client, bytes(owner))


def _client_to_wire(client: str | bytes) -> bytes:
    return b"s:" + client.encode() if isinstance(client, str) else b"b:" + client


class Link:
    """
    This gateway's side of the shared state: calls to the meta server, in
    the order they were made (one at a time, so the meta server sees an
    unlock before the lock that follows it), and its events.

    @param backend: the L{RemoteBackend}: C{session}, C{shared_call(name,
        args)}, C{on_shared_event(listener)}, C{on_subscribed(listener)}.
    """

    _log = Logger()

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.session: int = backend.session
        self._tail: defer.Deferred[None] = defer.succeed(None)

    def call(self, name: str, args: Any = None) -> defer.Deferred[Any]:
        """Send C{name} after every call sent before; fires with its result."""
        result: defer.Deferred[Any] = defer.Deferred()

        def run(_: Any) -> defer.Deferred[None]:
            d = self.backend.shared_call(name, args)
            d.chainDeferred(result)
            return d.addBoth(lambda _: None)

        self._tail = self._tail.addCallback(run)
        return result

    def settled(self) -> defer.Deferred[None]:
        """Fires once every call made so far has its answer (or failed)."""
        d: defer.Deferred[None] = defer.Deferred()

        def fire(result: None) -> None:
            d.callback(None)
            return result

        self._tail.addCallback(fire)
        return d

    def send(self, name: str, args: Any = None) -> None:
        """L{call} whose failure is only logged (the meta server will be told again on reset)."""

        def failed(f: Failure) -> None:
            if not f.check(errors.GatewayError, ConnectionError):
                self._log.failure("shared state: {op} failed", f, op=name)
            else:
                self._log.debug("shared state: {op}: {why}", op=name, why=str(f.value))

        self.call(name, args).addErrback(failed)


@implementer(ILockTable)
class SharedLockTable:
    """
    An L{ILockTable} over this gateway's L{LockTable} (C{local}) and the meta
    server's word on every other gateway's (C{view}: a replica, never in grace).
    """

    _log = Logger()

    def __init__(self, local: LockTable, link: Link, clock: Any) -> None:
        self.local = local
        self.link = link
        self.view = LockTable(clock)
        self._sids: dict[int, tuple[ShareToken, int]] = {}  # id(token) -> (token, share id)
        # id(token) -> (token, the meta server's answer to its last SHARE_OPEN or SHARE_SET)
        self._settling: dict[int, tuple[ShareToken, _Answer]] = {}
        # The tokens above, by owner and owners by client: a release forgets
        # the closed ones among its own, not by a scan of every open (L{_forget}).
        self._tracked: dict[LockOwner, set[ShareToken]] = {}
        self._owners: dict[tuple[str, str | bytes], set[LockOwner]] = {}
        self._ids = itertools.count(1)
        self._changes: dict[int, list[defer.Deferred[None]]] = {}
        self._probe = LockOwner("shared-probe", b"", b"")
        #: Share reservations a CREATE_OPEN registers with the create (share_intent).
        self._intents: dict[LockOwner, ShareIntent] = {}
        #: The meta server's client records and grace (vfs/shared_clients.py), if wired.
        self.clients: ClusterClients | None = None
        # What the meta server may hold of each owner: the inodes a LOCK,
        # LOCK_WAIT, SHARE_OPEN or CREATE_OPEN named it on (and the owners
        # by inode, for release_inode). An owner named in none has nothing
        # there, and its release is not sent (L{release_owner}).
        self._told: dict[LockOwner, set[int]] = {}
        self._told_on: dict[int, set[LockOwner]] = {}
        self._told_by: dict[tuple[str, str | bytes], set[LockOwner]] = {}  # by client
        self._locking: dict[tuple[LockOwner, int], int] = {}  # LOCKs under way

    def __getattr__(self, name: str) -> Any:
        # Admin and metrics helpers (records, holders, waiting...) are about this gateway.
        return getattr(self.local, name)

    # -- events -----------------------------------------------------------------------------------

    def on_locks(self, ino: int, locks: list[Any], shares: list[Any]) -> None:
        """EV_LOCKS: the inode's state at the meta server; keep the others' part."""
        view = self.view
        view.release_inode(ino)
        mine = self.link.session
        for session, owner, start, length, exclusive in locks:
            if session == mine:
                continue
            o = _foreign(session, owner)
            d = view.lock(ino, o, start, length, exclusive, wait=False, reclaim=True)
            d.addErrback(lambda f: self._log.warn("replica lock refused: {why}", why=str(f.value)))
        for session, owner, access, deny in shares:
            if session == mine:
                continue
            try:
                view.open_share(
                    ino,
                    _foreign(session, owner),
                    modes_from_bits(access),
                    modes_from_bits(deny),
                    reclaim=True,
                )
            except errors.FSError as e:
                self._log.warn("replica share refused: {why}", why=str(e))
        for waiter in self._changes.pop(ino, []):
            if not waiter.called:
                waiter.callback(None)

    def _tell(self, owner: LockOwner, ino: int) -> None:
        """Note that a call naming C{owner} on C{ino} goes to the meta server."""
        inos = self._told.get(owner)
        if inos is None:
            inos = self._told[owner] = set()
            self._told_by.setdefault((owner.protocol, owner.client), set()).add(owner)
        inos.add(ino)
        owners = self._told_on.get(ino)
        if owners is None:
            owners = self._told_on[ino] = set()
        owners.add(owner)

    def _untell(self, owner: LockOwner) -> bool:
        """Forget C{owner}'s notes; whether the meta server may hold anything of it."""
        inos = self._told.pop(owner, None)
        if inos is None:
            return False
        self._untold(owner)
        for ino in inos:
            owners = self._told_on.get(ino)
            if owners is not None:
                owners.discard(owner)
                if not owners:
                    del self._told_on[ino]
        return True

    def _untold(self, owner: LockOwner) -> None:
        key = (owner.protocol, owner.client)
        owners = self._told_by.get(key)
        if owners is not None:
            owners.discard(owner)
            if not owners:
                del self._told_by[key]

    def _untell_ino(self, owner: LockOwner, ino: int) -> None:
        inos = self._told.get(owner)
        if inos is not None:
            inos.discard(ino)
            if not inos:
                del self._told[owner]
                self._untold(owner)
        owners = self._told_on.get(ino)
        if owners is not None:
            owners.discard(owner)
            if not owners:
                del self._told_on[ino]

    def _changed(self, ino: int) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self._changes.setdefault(ino, []).append(d)
        return d

    def resync(self) -> None:
        """The meta server may have forgotten us: tell it everything again."""
        self.link.send("SESSION_RESET")
        for ino in list(self.local._files):  # noqa: SLF001 - the table is ours
            for lk in self.local.locks(ino):
                self._tell(lk.owner, ino)
                self.link.send(
                    "LOCK",
                    (ino, owner_to_wire(lk.owner), lk.start, lk.length, lk.exclusive, True),
                )
            for t in self.local.shares(ino):
                sid = self._sid(t)
                self._tell(t.owner, ino)
                self.link.send(
                    "SHARE_OPEN",
                    (
                        ino,
                        owner_to_wire(t.owner),
                        sid,
                        modes_to_bits(t.access),
                        modes_to_bits(t.deny),
                        True,
                    ),
                )

    # -- grace ----------------------------------------------------------------------------------

    @property
    def in_grace(self) -> bool:
        """This gateway's grace, or the cluster's (another gateway went with clients)."""
        return self.local.in_grace or (self.clients is not None and self.clients.in_grace)

    def start_grace(self, seconds: float) -> None:
        self.local.start_grace(seconds)

    def end_grace(self) -> None:
        self.local.end_grace()

    # -- locks ----------------------------------------------------------------------------------

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
        key = (owner, ino)
        self._locking[key] = self._locking.get(key, 0) + 1

        def done(result: Any) -> Any:
            n = self._locking[key] - 1
            if n:
                self._locking[key] = n
            else:
                del self._locking[key]
            return result

        return defer.Deferred.fromCoroutine(
            self._lock(ino, owner, start, length, exclusive, wait, reclaim, on_wait)
        ).addBoth(done)

    async def _lock(
        self,
        ino: int,
        owner: LockOwner,
        start: int,
        length: int,
        exclusive: bool,
        wait: bool,
        reclaim: bool,
        on_wait: Callable[[], None] | None = None,
    ) -> Lock:
        if self.in_grace and not reclaim:
            raise errors.Grace("lock refused: grace period")
        wired = owner_to_wire(owner)
        args = (ino, wired, start, length, exclusive, reclaim)
        waiting = False
        retried = False
        try:
            while True:
                # Conflicts this gateway can see are settled here, waiting as one process would.
                if wait and self.local.test(ino, owner, start, length, exclusive) is not None:
                    if not waiting:
                        waiting = await self._wait_at_meta(ino, wired, start, length, exclusive)
                        if on_wait is not None:
                            on_wait()
                    await self.local.notify_when_free(ino)
                    continue
                changed = self._changed(ino)
                self._tell(owner, ino)
                try:
                    await self.link.call("LOCK", args)
                except errors.LockConflict:
                    holder = self.test(ino, owner, start, length, exclusive)
                    if not wait:
                        raise errors.LockConflict(
                            holder, "a lock through another gateway"
                        ) from None
                    if self.local.test(ino, owner, start, length, exclusive) is not None:
                        # Another owner of this gateway got there first: its
                        # changes push no EV_LOCKS here (docs/rpc.rst), so the
                        # wait is the local table's, at the top of the loop.
                        continue
                    if holder is None and not retried:
                        # Nothing here shows the conflict: a lock of this
                        # gateway whose UNLOCK was queued behind this LOCK
                        # (sent in order, so asking again comes after it), or
                        # another gateway's lock whose EV_LOCKS is on its way.
                        retried = True
                        continue
                    if not waiting:
                        waiting = await self._wait_at_meta(ino, wired, start, length, exclusive)
                        if on_wait is not None:
                            on_wait()
                    # Ask again when the meta server says the inode's locks changed.
                    await changed
                    continue
                break
        finally:
            if waiting:
                self.link.send("LOCK_UNWAIT", (wired,))
        try:
            got: Lock = await self.local.lock(
                ino, owner, start, length, exclusive, wait=False, reclaim=True
            )
        except BaseException:
            self.link.send("UNLOCK", (ino, owner_to_wire(owner), start, length))
            raise
        return got

    async def _wait_at_meta(
        self, ino: int, wired: Any, start: int, length: int, exclusive: bool
    ) -> bool:
        """
        Tell the meta server this request waits (LOCK_WAIT), so a cycle of
        waiters through several gateways is refused (@raise Deadlock).
        """
        self._tell(owner_from_wire(wired), ino)
        await self.link.call("LOCK_WAIT", (ino, wired, start, length, exclusive))
        return True

    def test(
        self, ino: int, owner: LockOwner, start: int, length: int, exclusive: bool
    ) -> Lock | None:
        got = self.local.test(ino, owner, start, length, exclusive)
        if got is None:
            got = self.view.test(ino, owner, start, length, exclusive)
        return got

    def unlock(self, ino: int, owner: LockOwner, start: int, length: int) -> None:
        self.local.unlock(ino, owner, start, length)
        self.link.send("UNLOCK", (ino, owner_to_wire(owner), start, length))
        if (owner, ino) not in self._locking and owner not in self.local.owners_of(ino):
            # Nothing of it left on the inode here, nor on its way: after this
            # UNLOCK (calls go in order) the meta server holds none either.
            self._untell_ino(owner, ino)

    def check_io(
        self, ino: int, owner: LockOwner, start: int, length: int, write: bool, strict: bool = True
    ) -> bool:
        return self.local.check_io(ino, owner, start, length, write, strict) and self.view.check_io(
            ino, owner, start, length, write, strict
        )

    def busy(self, ino: int) -> bool:
        return self.local.busy(ino) or self.view.busy(ino)

    def locks(self, ino: int) -> list[Lock]:
        return self.local.locks(ino) + self.view.locks(ino)

    def notify_when_free(self, ino: int) -> defer.Deferred[None]:
        if not self.view.busy(ino):
            return self.local.notify_when_free(ino)
        mine = self.local.notify_when_free(ino)
        theirs = self._changed(ino)
        d = defer.DeferredList([mine, theirs], fireOnOneCallback=True, consumeErrors=True)

        def first(_: Any) -> None:
            for x in (mine, theirs):
                if not x.called:
                    x.cancel()

        return d.addCallback(first)

    def totals(self) -> dict[str, tuple[int, int, int]]:
        return self.local.totals()

    def owners_of(self, ino: int) -> set[LockOwner]:
        return self.local.owners_of(ino) | self.view.owners_of(ino)

    def release_owner(self, owner: LockOwner, tell: bool = True) -> None:
        self.local.release_owner(owner)
        self._forget(list(self._tracked.get(owner, ())))
        # Not told when the caller removes the owner's file next: the
        # UNLINK that takes its last link drops its state at the meta
        # server (an SMB delete-on-close's CLOSE: one call less); the notes
        # stay until then (release_inode), or a release told after all.
        # Nor when no call ever named the owner there: an SMB open for
        # attributes only (a stat: CREATE, QUERY_INFO, CLOSE) takes no
        # share reservation and no lock, so its CLOSE costs no round trip.
        if tell and self._untell(owner):
            self.link.send("RELEASE_OWNER", (owner_to_wire(owner),))

    def release_client(self, protocol: str, client: str | bytes) -> None:
        self.local.release_client(protocol, client)
        owners = self._owners.get((protocol, client), ())
        self._forget([t for o in list(owners) for t in self._tracked.get(o, ())])
        for o in list(self._told_by.get((protocol, client), ())):
            self._untell(o)
        self.link.send("RELEASE_CLIENT", (protocol, _client_to_wire(client)))

    def release_inode(self, ino: int) -> None:
        # No RELEASE_INODE: the UNLINK, RMDIR or RENAME whose answer said the
        # last link went has dropped the inode's state at the meta server
        # (protocol version 5), and the vfs calls this only after such an answer.
        tokens = self.local.shares(ino)
        self.local.release_inode(ino)
        self._forget(tokens)
        for owner in list(self._told_on.get(ino, ())):
            if (owner, ino) not in self._locking:
                self._untell_ino(owner, ino)

    # -- shares ---------------------------------------------------------------------------------

    def _sid(self, token: ShareToken) -> int:
        got = self._sids.get(id(token))
        if got is None or got[0] is not token:
            got = (token, next(self._ids))
            self._track(token, got[1])
        return got[1]

    def _track(self, token: ShareToken, sid: int) -> None:
        """Keep C{token}'s share id (C{_sids}) and index it by its owner."""
        self._sids[id(token)] = (token, sid)
        owner = token.owner
        self._tracked.setdefault(owner, set()).add(token)
        self._owners.setdefault((owner.protocol, owner.client), set()).add(owner)

    def _untrack(self, token: ShareToken) -> None:
        owner = token.owner
        mine = self._tracked.get(owner)
        if mine is None:
            return
        mine.discard(token)
        if not mine:
            del self._tracked[owner]
            key = (owner.protocol, owner.client)
            owners = self._owners[key]
            owners.discard(owner)
            if not owners:
                del self._owners[key]

    def _forget(self, tokens: Iterable[ShareToken]) -> None:
        """
        Drop what is kept for those of C{tokens} a release closed. Only a
        release's own tokens are looked at: a scan of every open share at
        each release made many opens and closes quadratic.
        """
        for t in tokens:
            if not t.closed:
                continue
            self._untrack(t)
            key = id(t)
            got = self._sids.get(key)
            if got is not None and got[0] is t:
                del self._sids[key]
            answer = self._settling.get(key)
            if answer is not None and answer[0] is t:
                del self._settling[key]

    def _check_view(self, ino: int, access: frozenset[str], deny: frozenset[str]) -> None:
        if not self.view.shares(ino):
            return
        probe = self.view.open_share(ino, self._probe, access, deny, reclaim=True)
        self.view.close_share(probe)

    def share_intent(
        self, owner: LockOwner, access: Iterable[str], deny: Iterable[str]
    ) -> ShareIntent:
        """
        The share reservation C{owner} will ask for on a file it is about to
        create: the vfs passes it to the backend's create (C{CREATE_OPEN}),
        which registers it at the meta server with the new inode, and the
        L{open_share} that follows for that owner and modes then sends no
        C{SHARE_OPEN}. Give it back with L{drop_intent} when the open does not
        get that far.
        """
        intent = ShareIntent(owner, frozenset(access), frozenset(deny), next(self._ids))
        self._intents[owner] = intent
        return intent

    def drop_intent(self, intent: ShareIntent) -> None:
        """An intent L{open_share} did not use: the meta server's registration, if any, goes."""
        if self._intents.get(intent.owner) is intent:
            del self._intents[intent.owner]
            if intent.ino:
                self.link.send("SHARE_CLOSE", (intent.sid,))

    def open_share(
        self,
        ino: int,
        owner: LockOwner,
        access: Iterable[str],
        deny: Iterable[str],
        *,
        reclaim: bool = False,
    ) -> ShareToken:
        acc, den = frozenset(access), frozenset(deny)
        intent = self._intents.pop(owner, None) if self._intents else None
        if intent is not None and intent.ino:
            if not reclaim and intent.ino == ino and intent.access == acc and intent.deny == den:
                # Registered by the create itself (CREATE_OPEN): the meta
                # server's decision is already in, no SHARE_OPEN.
                try:
                    self._check_view(ino, acc, den)
                    token = self.local.open_share(ino, owner, acc, den, reclaim=False)
                except BaseException:
                    self.link.send("SHARE_CLOSE", (intent.sid,))
                    raise
                self._tell(owner, ino)
                self._track(token, intent.sid)
                return token
            self.link.send("SHARE_CLOSE", (intent.sid,))
        if not reclaim and self.clients is not None and self.clients.in_grace:
            raise errors.Grace("open refused: another gateway's clients are reclaiming")
        self._check_view(ino, acc, den)
        token = self.local.open_share(ino, owner, acc, den, reclaim=reclaim)
        sid = self._sid(token)
        args = (ino, owner_to_wire(owner), sid, modes_to_bits(acc), modes_to_bits(den), reclaim)
        self._tell(owner, ino)

        self._await(token, self.link.call("SHARE_OPEN", args))
        return token

    def _await(self, token: ShareToken, call: defer.Deferred[Any]) -> None:
        """Keep the meta server's answer on C{token} for L{settle_share}."""
        ino = token.ino
        key = id(token)
        answer = _Answer()
        self._settling[key] = (token, answer)

        def over(result: Any) -> None:
            # A refusal stays until the token closes: settle_share may be asked later.
            if not isinstance(result, Failure) and self._settling.get(key, (None,))[-1] is answer:
                del self._settling[key]
            if isinstance(result, Failure):
                if result.check(errors.ShareConflict):
                    self._log.info(
                        "share reservation on inode {ino} refused: another gateway's open "
                        "got to the meta server first",
                        ino=ino,
                    )
                elif not result.check(errors.GatewayError, ConnectionError):
                    self._log.failure("SHARE_OPEN failed", result)
            answer.fire(result)

        call.addBoth(over)

    def settle_share(self, token: ShareToken) -> defer.Deferred[None]:
        """
        Fires once the meta server registered C{token}'s last open or upgrade;
        fails with L{errors.ShareConflict} if another gateway's open got there
        first in the moment before its C{EV_LOCKS} reached us (the caller then
        closes or downgrades, as for any later failure of its request), or
        with the backend's error when the meta server could not be asked.
        """
        got = self._settling.get(id(token))
        if got is None or got[0] is not token:
            return defer.succeed(None)
        return got[1].wait()

    def upgrade_share(
        self,
        token: ShareToken,
        access: Iterable[str],
        deny: Iterable[str],
        *,
        reclaim: bool = False,
    ) -> None:
        acc, den = frozenset(access) | token.access, frozenset(deny) | token.deny
        self._check_view(token.ino, acc, den)
        self.local.upgrade_share(token, access, deny, reclaim=reclaim)
        self._share_set(token)

    def downgrade_share(
        self, token: ShareToken, access: Iterable[str], deny: Iterable[str]
    ) -> None:
        self.local.downgrade_share(token, access, deny)
        self._share_set(token)

    def _share_set(self, token: ShareToken) -> None:
        args = (self._sid(token), modes_to_bits(token.access), modes_to_bits(token.deny))
        self._await(token, self.link.call("SHARE_SET", args))

    def close_share(self, token: ShareToken) -> None:
        was_open = not token.closed
        self.local.close_share(token)
        got = self._sids.get(id(token))
        if got is not None and got[0] is token:
            del self._sids[id(token)]
            self._untrack(token)
        answer = self._settling.get(id(token))
        if answer is not None and answer[0] is token:
            del self._settling[id(token)]
        if was_open and got is not None and got[0] is token:
            self.link.send("SHARE_CLOSE", (got[1],))

    def shares(self, ino: int) -> list[ShareToken]:
        return self.local.shares(ino) + self.view.shares(ino)


@attrs.define
class ShareIntent:
    """
    A share reservation to register with a file's create (L{SharedLockTable.share_intent}).

    @ivar sid: the share id it is registered under.
    @ivar ino: the inode the meta server registered it on (CREATE_OPEN's
        answer said so), or 0 while it is not registered.
    """

    owner: LockOwner
    access: frozenset[str]
    deny: frozenset[str]
    sid: int
    ino: int = 0

    def wire(self) -> tuple[Any, int, int, int]:
        """CREATE_OPEN's share arguments: Owner, share id, access and deny bits."""
        return (
            owner_to_wire(self.owner),
            self.sid,
            modes_to_bits(self.access),
            modes_to_bits(self.deny),
        )


class _Answer:
    """One meta server answer, for any number of later waiters (none: nothing logged twice)."""

    __slots__ = ("result", "waiters", "done")

    def __init__(self) -> None:
        self.result: Any = None
        self.done = False
        self.waiters: list[defer.Deferred[None]] = []

    def fire(self, result: Any) -> None:
        self.result, self.done = result, True
        waiters, self.waiters = self.waiters, []
        for w in waiters:
            self._tell(w)

    def _tell(self, w: defer.Deferred[None]) -> None:
        if isinstance(self.result, Failure):
            w.errback(self.result)
        else:
            w.callback(None)

    def wait(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if self.done:
            self._tell(d)
        else:
            self.waiters.append(d)
        return d


def _foreign(session: int, owner: Any) -> LockOwner:
    """Another gateway's owner, kept apart from ours (their client ids are theirs)."""
    o = owner_from_wire(owner)
    client = o.client.encode() if isinstance(o.client, str) else o.client
    return LockOwner(o.protocol, b"%x/" % session + client, o.owner)


@implementer(ILeaseManager)
class SharedLeaseManager:
    """
    An L{ILeaseManager} over this gateway's L{LeaseManager} (C{local}), which
    knows from the meta server which bits other gateways hold per inode.
    """

    _log = Logger()

    def __init__(self, local: LeaseManager, link: Link) -> None:
        self.local = local
        self.link = link
        self.foreign: dict[int, int] = {}  # ino -> bits other gateways hold
        self._told: dict[int, int] = {}  # ino -> bits we told the meta server we hold
        self._recalls: dict[tuple[int, str], defer.Deferred[None]] = {}
        # id(lease) -> (lease, its LEASE_GRANT's answer) while the meta server decides
        self._confirming: dict[int, tuple[Lease, _Answer]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)

    @property
    def recall_timeout(self) -> float:
        return self.local.recall_timeout

    @property
    def max_leases(self) -> int:
        return self.local.max_leases

    # -- what we hold ---------------------------------------------------------------------------

    def _sync(self, ino: int) -> None:
        bits = 0
        for lease in self.local.leases(ino):
            # A grant the meta server has not answered yet is not told as held:
            # LEASE_GRANT asks for it, and a plain LEASE_HOLD would bypass its check.
            if not lease.gone and id(lease) not in self._confirming:
                bits |= lease.state
        if bits != self._told.get(ino, 0):
            if bits:
                self._told[ino] = bits
            else:
                self._told.pop(ino, None)
            self.link.send("LEASE_HOLD", (ino, bits))

    def _sync_all(self) -> None:
        for ino in list(self._told):
            self._sync(ino)

    def resync(self) -> None:
        """After SESSION_RESET: tell the meta server again what we hold."""
        told, self._told = self._told, {}
        for ino in told:
            self._sync(ino)

    def on_leases(self, ino: int, held: list[Any]) -> None:
        """EV_LEASES: who holds what on C{ino}."""
        bits = 0
        for session, b in held:
            if session != self.link.session:
                bits |= b
        if bits:
            self.foreign[ino] = bits
        else:
            self.foreign.pop(ino, None)

    def on_break(self, bid: int, ino: int, why: str) -> None:
        """EV_LEASE_BREAK: another gateway's change needs our holders broken."""
        try:
            reason = Why(why)
        except ValueError:
            reason = Why.UNLINK
        if self.local.busy(ino):
            d = self.local.recall(ino, reason, (), wait=True)
        else:
            d = defer.succeed(None)

        def done(result: Any) -> None:
            if isinstance(result, Failure):
                self._log.failure("breaking leases for another gateway", result)
            self._sync(ino)
            self.link.send("LEASE_BREAK_ACK", (bid,))

        d.addBoth(done)

    # -- ILeaseManager --------------------------------------------------------------------------

    def _allowed(self, ino: int, want: int) -> int:
        theirs = self.foreign.get(ino, 0)
        if theirs & W:
            return 0
        if theirs:
            return want & ~W
        return want

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
        allowed = self._allowed(ino, want)
        if not allowed:
            return None
        lease = self.local.grant(
            ino,
            key,
            allowed,
            holder,
            is_dir=is_dir,
            parent=parent,
            recall_timeout=recall_timeout,
            family=family,
        )
        if lease is not None and id(lease) not in self._confirming:
            self._confirm(lease)
        return lease

    def _confirm(self, lease: Lease) -> _Answer:
        """
        Ask the meta server for C{lease}'s bits (LEASE_GRANT): another gateway's
        grant may have got there in the moment before its EV_LEASES reached us.
        What it refuses is taken back before the client hears of the lease; a
        meta server that cannot be asked grants nothing.
        """
        key = id(lease)
        answer = _Answer()
        self._confirming[key] = (lease, answer)
        ino, bits = lease.ino, lease.state

        def decided(result: Any) -> None:
            self._confirming.pop(key, None)
            if isinstance(result, Failure):
                if not result.check(errors.GatewayError, ConnectionError):
                    self._log.failure("LEASE_GRANT failed", result)
                granted = 0
            else:
                granted = int(result)
                # The meta server now counts these as held by us.
                self._told[ino] = self._told.get(ino, 0) | granted
            if bits & ~granted:
                self._log.info(
                    "lease on inode {ino} lowered to {granted} of {bits}: another gateway's "
                    "lease got to the meta server first",
                    ino=ino,
                    granted=granted,
                    bits=bits,
                )
                self.local.take_back(lease, granted)
            if not lease.gone and lease.state & ~bits:
                # Upgraded while we asked: ask for the rest too, then answer.
                self._confirm(lease).wait().addCallback(lambda _: answer.fire(None))
                return
            self._sync(ino)
            answer.fire(None)

        self.link.call("LEASE_GRANT", (ino, bits)).addBoth(decided)
        return answer

    def settle_lease(self, lease: Lease) -> defer.Deferred[None]:
        """Fires once the meta server has answered C{lease}'s grant (and what it refused is taken back)."""
        got = self._confirming.get(id(lease))
        if got is None or got[0] is not lease:
            return defer.succeed(None)
        return got[1].wait()

    def grantable(
        self,
        ino: int,
        key: LeaseKey,
        want: int,
        is_dir: bool = False,
        family: LeaseKey | None = None,
    ) -> int:
        return self.local.grantable(ino, key, self._allowed(ino, want), is_dir, family)

    def recall(
        self, ino: int, why: Why, exempt: Iterable[LeaseKey] = (), *, wait: bool = True
    ) -> defer.Deferred[None]:
        local = (
            self.local.recall(ino, why, exempt, wait=wait)
            if self.local.busy(ino)
            else defer.succeed(None)
        )
        local.addBoth(self._synced, ino)
        if not self.foreign.get(ino, 0) & ~KEEP_FOR[why]:
            return local
        remote = self._remote_recall(ino, why)
        if not wait and not remote.called:
            local.addErrback(lambda _: None)
            return defer.fail(errors.LeaseBreaking("lease break in progress at another gateway"))
        d = defer.gatherResults([local, remote], consumeErrors=True)
        return d.addCallbacks(lambda _: None, lambda f: f.value.subFailure)

    def foreign_recall(self, ino: int, why: Why) -> defer.Deferred[None] | None:
        """
        Have other gateways break what C{why} does not let them keep on C{ino}
        (for front ends that break their own leases themselves, as SMB CREATE
        does); None when they hold nothing that needs it.
        """
        if not self.foreign.get(ino, 0) & ~KEEP_FOR[why]:
            return None
        return self._remote_recall(ino, why)

    def _synced(self, result: Any, ino: int) -> Any:
        self._sync(ino)
        return result

    def _remote_recall(self, ino: int, why: Why) -> defer.Deferred[None]:
        key = (ino, why.value)
        pending = self._recalls.get(key)
        if pending is None:
            pending = self.link.call("LEASE_RECALL", (ino, why.value))
            self._recalls[key] = pending

            def over(result: Any) -> Any:
                self._recalls.pop(key, None)
                if not isinstance(result, Failure):
                    # The meta server settled it; its EV_LEASES may still be on the way.
                    keep = KEEP_FOR[why]
                    if ino in self.foreign:
                        self.foreign[ino] &= keep
                        if not self.foreign[ino]:
                            del self.foreign[ino]
                return result

            pending.addBoth(over)
        out: defer.Deferred[None] = defer.Deferred()
        pending.addBoth(_pass_to, out)
        return out

    def acknowledge(self, lease: Lease, bits: int) -> None:
        self.local.acknowledge(lease, bits)
        self._sync(lease.ino)

    def release(self, lease: Lease) -> None:
        self.local.release(lease)
        self._sync(lease.ino)

    def release_client(self, protocol: str, client: str | bytes) -> None:
        self.local.release_client(protocol, client)
        self._sync_all()

    def release_inode(self, ino: int) -> None:
        self.local.release_inode(ino)
        self._sync(ino)

    def leases(self, ino: int) -> list[Lease]:
        return self.local.leases(ino)

    def find(self, key: LeaseKey) -> Lease | None:
        return self.local.find(key)

    def busy(self, ino: int) -> bool:
        return self.local.busy(ino) or ino in self.foreign

    def describe(self) -> list[dict[str, object]]:
        return self.local.describe()


def _pass_to(result: Any, d: defer.Deferred[Any]) -> Any:
    if isinstance(result, Failure):
        d.errback(result)
        return None
    d.callback(result)
    return result


def wire_up(
    backend: Any, locks: LockTable, leases: LeaseManager, clock: Any
) -> tuple[SharedLockTable, SharedLeaseManager]:
    """
    The shared lock table and lease manager of a gateway on C{backend}, its
    events routed to them and its state sent again on every (re)subscription.
    """
    link = Link(backend)
    table = SharedLockTable(locks, link, clock)
    manager = SharedLeaseManager(leases, link)
    table.clients = clients = ClusterClients(link, clock)

    def event(name: str, value: Any) -> None:
        if name == "EV_LOCKS":
            table.on_locks(*value)
        elif name == "EV_LEASES":
            manager.on_leases(*value)
        elif name == "EV_LEASE_BREAK":
            manager.on_break(*value)
        elif name == "EV_GRACE":
            clients.on_grace(*value)

    def subscribed(first: bool) -> None:
        if not first:
            table.resync()
            manager.resync()
            clients.resync()

    backend.on_shared_event(event)
    backend.on_subscribed(subscribed)
    return table, manager
