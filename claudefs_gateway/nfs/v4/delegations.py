# -*- test-case-name: tests.nfs.v4.test_delegations -*-
"""
NFSv4 read and write delegations (RFC 8881 §10.2, §10.4) over the vfs's
cross-protocol lease manager.

A delegation is a lease (docs/locks.rst "Leases") held under
C{LeaseKey("nfs4", clientid, stateid other)}: a read delegation is R+H, a
write delegation R+W+H, so every protocol's change that the holder would not
see from its cache - another NFSv4 client's open, write, rename or remove, an
NFSv3 write, an SMB open, an S3 PUT - breaks it, and any lost bit is a
recall of the whole delegation: CB_RECALL on the client's back channel, then
the client's DELEGRETURN. Requests of the holder's own client never recall
it (every v4 request exempts all of its client's leases).

When a delegation is granted (L{Delegations.for_open}), where the RFC lets
the server choose (RFC 8881 §10.4: a server may decline any delegation):

 - never without a back channel the server can call (no CB_RECALL, no
   delegation), during grace (other clients are still reclaiming), on a
   file recalled in the last C{RECENT_SECS} (no ping-pong: knfsd remembers
   recent conflicts too), or past the per-client cap;
 - a read delegation when the open has read access, nobody else (another
   client, another protocol) has the file open for writing or holds a
   byte-range lock on it, and no one else caches writes;
 - a write delegation when the open has write access and nobody else has
   the file open, locked or leased at all (C{nfs.v4.delegations:
   read_write}, the default; C{read} grants read delegations only, C{none}
   none);
 - with no preference expressed (the Linux client), a write delegation if
   the open may write and it can be had, else a read delegation; an
   explicit want (OPEN4_SHARE_ACCESS_WANT_*) gets that kind or
   OPEN_DELEGATE_NONE_EXT with the reason.

A recall the client does not answer with DELEGRETURN in time is revoked:
the time is C{leases.recall_timeout_secs} or one NFSv4 lease, whichever is
longer (RFC 8881 §10.2: a client is owed at least a lease to return it).
Then the delegation stateid answers NFS4ERR_DELEG_REVOKED until the client
frees it, and SEQUENCE raises SEQ4_STATUS_RECALLABLE_STATE_REVOKED
meanwhile. A CB_RECALL the client answers NFS4ERR_BAD_STATEID, BADHANDLE or
DELAY (it has not seen the OPEN reply yet) is sent again a few times; one
that cannot be sent (no back channel) is sent when the client binds one.

After a server restart a client reclaims its delegations in grace with OPEN
CLAIM_PREVIOUS (or WANT_DELEGATION CLAIM_PREVIOUS) naming the delegation
type it held; if the lease cannot be had then, the delegation is granted
with C{recall} set, so the client returns it at once (RFC 8881 §18.16.3).
Delegations survive neither a client restart (CLAIM_DELEGATE_PREV,
DELEGPURGE: NFS4ERR_NOTSUPP, as knfsd) nor a server restart beyond grace.

Another client's GETATTR of a file under a write delegation asks the holder
(CB_GETATTR) for the size and change attribute it has cached rather than
recall it (RFC 8881 §10.4.3); only if that cannot be done is it recalled.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from zope.interface import implementer

from claudefs_gateway.core.log import Logger
from claudefs_gateway.interfaces import IVFS, ILeaseHolder, ILeaseManager
from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4.base import Nfs4Error
from claudefs_gateway.nfs.v4.callback import CallbackFailed, Callbacks, usable
from claudefs_gateway.nfs.v4.clients import Client, Session
from claudefs_gateway.nfs.v4.codec import (
    CbGetattrArgs,
    CbRecallArgs,
    Fattr,
    Nfsace,
    ReadDelegation,
    ReferringCall,
    ReferringCallList,
    WriteDelegation,
)
from claudefs_gateway.nfs.v4.fattr import bitmap, bits
from claudefs_gateway.nfs.v4.state import DELEG, ClientState, State, StateIds
from claudefs_gateway.rpc.xdr import Unpacker, XDRError
from claudefs_gateway.rpc.xdrtypes import Arm
from claudefs_gateway.vfs.leases import RWH, H, Lease, LeaseKey, R

__all__ = ["Delegations", "MODES", "RECENT_SECS", "check_want", "no_delegation"]

#: C{nfs.v4.delegations}: what may be granted.
MODES = ("none", "read", "read_write")
#: A file recalled this recently gets no new delegation (knfsd keeps such a
#: memory of recent conflicts for 30-60 s, so two clients do not ping-pong).
RECENT_SECS = 30.0
_RECENT_MAX = 4096
#: CB_RECALL answered "not yet" is sent this many times, this far apart.
RECALL_TRIES = 5
RECALL_RETRY_SECS = 1.0
#: CB_RECALL statuses that mean "try again": the client has not yet seen
#: the reply granting the delegation (knfsd retries on the same ones).
_RETRY = frozenset({c.NFS4ERR_DELAY, c.NFS4ERR_BAD_STATEID, c.NFS4ERR_BADHANDLE})
#: The ACE every delegation carries: no access granted by it, so the
#: client asks (ACCESS) as it would without one (as knfsd sends).
_NO_ACE = Nfsace(0, 0, 0, b"")
_NFS_LIMIT_SIZE = 1
_UINT64_MAX = 2**64 - 1

_WANT_KINDS = frozenset(
    {
        c.OPEN4_SHARE_ACCESS_WANT_NO_PREFERENCE,
        c.OPEN4_SHARE_ACCESS_WANT_READ_DELEG,
        c.OPEN4_SHARE_ACCESS_WANT_WRITE_DELEG,
        c.OPEN4_SHARE_ACCESS_WANT_ANY_DELEG,
        c.OPEN4_SHARE_ACCESS_WANT_NO_DELEG,
        c.OPEN4_SHARE_ACCESS_WANT_CANCEL,
    }
)


def check_want(want: int) -> int:
    """
    The OPEN4_SHARE_ACCESS_WANT_* kind of C{want}.

    @raise Nfs4Error: NFS4ERR_INVAL for an undefined one (RFC 8881 §18.16.3).
    """
    kind = want & c.OPEN4_SHARE_ACCESS_WANT_DELEG_MASK
    if kind not in _WANT_KINDS:
        raise Nfs4Error(c.NFS4ERR_INVAL, f"delegation want {kind:#x}")
    return kind


def no_delegation(explicit: bool, why: int) -> Arm:
    """No delegation: OPEN_DELEGATE_NONE, or NONE_EXT with C{why} when one was wanted."""
    if not explicit:
        return Arm(c.OPEN_DELEGATE_NONE)
    if why in (c.WND4_CONTENTION, c.WND4_RESOURCE):
        # ond_server_will_push_deleg / _signal_avail: never promised.
        return Arm(c.OPEN_DELEGATE_NONE_EXT, Arm(why, False))
    return Arm(c.OPEN_DELEGATE_NONE_EXT, Arm(why))


def _change_and_size(f: Fattr) -> tuple[int, int] | None:
    """(change, size) from a CB_GETATTR answer, or None if it lacks them."""
    nums = bits(f.mask)
    if c.FATTR4_CHANGE not in nums or c.FATTR4_SIZE not in nums:
        return None
    if any(n < c.FATTR4_CHANGE for n in nums):
        return None  # values of unasked attributes before ours: not worth parsing
    u = Unpacker(f.vals)
    try:
        return u.u64(), u.u64()
    except XDRError:
        return None


def _mine(owner: Any, client: Client) -> bool:
    return bool(owner.protocol == "nfs4" and owner.client == client.lock_key)


@implementer(ILeaseHolder)
class Delegations:
    """
    Every delegation of one NFSv4 server: granted on OPEN and
    WANT_DELEGATION, recalled (the server's L{ILeaseHolder}), returned,
    revoked.

    @param ids: the server's stateids.
    @param callbacks: the back channel.
    @param clock: retries of CB_RECALL.
    @param state_of: a client's L{ClientState} (made if it has none yet).
    @param lease_secs: the NFSv4 lease (the least time a recall is given).
    @param mode: C{nfs.v4.delegations} (one of L{MODES}).
    @param max_per_client: delegations one client may hold.
    """

    _log = Logger()

    def __init__(
        self,
        ids: StateIds,
        callbacks: Callbacks,
        clock: IReactorTime,
        state_of: Callable[[Client], ClientState],
        lease_secs: float,
        mode: str = "read_write",
        max_per_client: int = 4096,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"delegation mode {mode!r}")
        self.ids = ids
        self.callbacks = callbacks
        self.clock = clock
        self.state_of = state_of
        self.lease_secs = lease_secs
        self.mode = mode
        self.max_per_client = max_per_client
        self.leases: ILeaseManager | None = None
        # Inodes recalled lately, oldest first, with when.
        self._recent: OrderedDict[int, float] = OrderedDict()
        self._sending: set[defer.Deferred[None]] = set()

    # -- granting -------------------------------------------------------------------------------

    def recall_secs(self, leases: ILeaseManager) -> float:
        """How long a recalled client has before its delegation is revoked."""
        return max(float(leases.recall_timeout), float(self.lease_secs))

    def back_channel(self, client: Client) -> Session | None:
        """A session on which callbacks reach C{client} now, if any."""
        for s in client.sessions.values():
            if usable(s):
                return s
        return None

    def for_open(
        self,
        vfs: IVFS,
        client: Client,
        want: int,
        access: int,
        ino: int,
        export_id: int,
        handle: bytes,
        *,
        opened: State | None = None,
        reclaim: int | None = None,
        granted_by: tuple[bytes, int, int] | None = None,
    ) -> Arm:
        """
        The open_delegation4 for an OPEN (or WANT_DELEGATION) of regular
        file C{ino} with C{want} (its OPEN4_SHARE_ACCESS_WANT_* bits) and
        C{access} (OPEN4_SHARE_ACCESS_READ/WRITE): a delegation granted
        now, or none with the reason (module docstring).

        @param opened: the open the delegation comes with (its share
            reservation is what I/O through the delegation stateid uses).
        @param reclaim: the delegation type a CLAIM_PREVIOUS reclaims (in
            grace, after a restart).
        @param granted_by: the request granting it (CB_SEQUENCE's referring call).
        @raise Nfs4Error: NFS4ERR_INVAL for an undefined want.
        """
        kind = check_want(want)
        explicit = kind != c.OPEN4_SHARE_ACCESS_WANT_NO_PREFERENCE
        if kind == c.OPEN4_SHARE_ACCESS_WANT_NO_DELEG:
            return no_delegation(True, c.WND4_NOT_WANTED)
        if kind == c.OPEN4_SHARE_ACCESS_WANT_CANCEL:
            return no_delegation(True, c.WND4_CANCELLED)
        leases = self.leases = vfs.leases
        locks = vfs.locks
        cs = self.state_of(client)
        held = cs.delegs.get(ino)
        if reclaim in (c.OPEN_DELEGATE_READ, c.OPEN_DELEGATE_WRITE):
            if held is not None:
                return self._arm(held)
            return self._reclaim(vfs, client, cs, reclaim, ino, export_id, handle, opened)
        if self.mode == "none" or leases.max_leases <= 0:
            return no_delegation(explicit, c.WND4_RESOURCE)
        if held is not None:
            if (
                kind == c.OPEN4_SHARE_ACCESS_WANT_WRITE_DELEG
                and held.deleg_type == c.OPEN_DELEGATE_READ
            ):
                return no_delegation(True, c.WND4_NOT_SUPP_UPGRADE)
            if (
                kind == c.OPEN4_SHARE_ACCESS_WANT_READ_DELEG
                and held.deleg_type == c.OPEN_DELEGATE_WRITE
            ):
                return no_delegation(True, c.WND4_NOT_SUPP_DOWNGRADE)
            return no_delegation(explicit, c.WND4_CONTENTION)
        if locks.in_grace or self.back_channel(client) is None:
            return no_delegation(explicit, c.WND4_RESOURCE)
        if len(cs.delegs) >= self.max_per_client:
            return no_delegation(explicit, c.WND4_RESOURCE)
        if self._recently_recalled(ino):
            return no_delegation(explicit, c.WND4_CONTENTION)
        writers = opens = locked = False
        for t in locks.shares(ino):
            if not _mine(t.owner, client):
                opens = True
                writers = writers or "write" in t.access
        for lk in locks.locks(ino):
            if not _mine(lk.owner, client):
                locked = True
                break
        key = LeaseKey("nfs4", client.lock_key, None)
        may_write = self.mode == "read_write" and bool(access & c.OPEN4_SHARE_ACCESS_WRITE)
        if kind in (
            c.OPEN4_SHARE_ACCESS_WANT_WRITE_DELEG,
            c.OPEN4_SHARE_ACCESS_WANT_ANY_DELEG,
            c.OPEN4_SHARE_ACCESS_WANT_NO_PREFERENCE,
        ):
            if (
                may_write
                and not (opens or locked)
                and leases.grantable(ino, key, RWH, family=key) == RWH
            ):
                st = self._grant(
                    leases, client, cs, c.OPEN_DELEGATE_WRITE, ino, export_id, handle, opened
                )
                if st is not None:
                    st.granted_by = granted_by
                    return self._arm(st)
            if kind == c.OPEN4_SHARE_ACCESS_WANT_WRITE_DELEG:
                return no_delegation(True, c.WND4_CONTENTION)
        if not access & c.OPEN4_SHARE_ACCESS_READ or writers or locked:
            return no_delegation(explicit, c.WND4_CONTENTION)
        if leases.grantable(ino, key, R | H, family=key) != R | H:
            return no_delegation(explicit, c.WND4_CONTENTION)
        st = self._grant(leases, client, cs, c.OPEN_DELEGATE_READ, ino, export_id, handle, opened)
        if st is None:
            return no_delegation(explicit, c.WND4_RESOURCE)
        st.granted_by = granted_by
        return self._arm(st)

    async def settled(self, vfs: IVFS, client: Client, ino: int, want: int, arm: Arm) -> Arm:
        """
        C{arm} (what L{for_open} answered) once the lease under a delegation
        it grants is authoritative: several gateways ask the meta server,
        which may refuse it (another gateway's lease got there first); the
        delegation is then withdrawn before the client hears of it
        (OPEN_DELEGATE_NONE, or NONE_EXT with WND4_CONTENTION when wanted).
        """
        if arm.tag not in (c.OPEN_DELEGATE_READ, c.OPEN_DELEGATE_WRITE):
            return arm
        cs = self.state_of(client)
        st = cs.delegs.get(ino)
        lease = st.lease if st is not None else None
        if st is None or lease is None:
            return arm
        await vfs.leases.settle_lease(lease)
        bits = RWH if st.deleg_type == c.OPEN_DELEGATE_WRITE else R | H
        if not lease.gone and lease.state == bits:
            return arm
        if not lease.gone:
            vfs.leases.release(lease)
        st.lease = None
        cs.forget(st)
        kind = check_want(want)
        return no_delegation(kind != c.OPEN4_SHARE_ACCESS_WANT_NO_PREFERENCE, c.WND4_CONTENTION)

    def _grant(
        self,
        leases: ILeaseManager,
        client: Client,
        cs: ClientState,
        deleg_type: int,
        ino: int,
        export_id: int,
        handle: bytes,
        opened: State | None,
    ) -> State | None:
        """A delegation of C{deleg_type} with its lease, or None if the lease manager grants too little."""
        bits = RWH if deleg_type == c.OPEN_DELEGATE_WRITE else R | H
        st = cs.new_deleg(client, ino, export_id, deleg_type)
        key = LeaseKey("nfs4", client.lock_key, st.other)
        lease = leases.grant(
            ino,
            key,
            bits,
            self,
            recall_timeout=self.recall_secs(leases),
            family=LeaseKey("nfs4", client.lock_key, None),
        )
        if lease is None or lease.state != bits:
            if lease is not None:
                leases.release(lease)
            cs.forget(st)
            return None
        st.lease = lease
        st.fh = handle
        st.open = opened
        self._log.debug(
            "NFSv4 {kind} delegation granted ino={ino}",
            kind="write" if deleg_type == c.OPEN_DELEGATE_WRITE else "read",
            ino=ino,
        )
        return st

    def _reclaim(
        self,
        vfs: IVFS,
        client: Client,
        cs: ClientState,
        deleg_type: int,
        ino: int,
        export_id: int,
        handle: bytes,
        opened: State | None,
    ) -> Arm:
        """
        A delegation reclaimed in grace (RFC 8881 §10.2.1): granted if the
        lease can be had, else granted with C{recall} set and no lease, for
        the client to return at once (§18.16.3).
        """
        leases = self.leases = vfs.leases
        st = None
        if self.mode == "read_write" or (
            self.mode == "read" and deleg_type == c.OPEN_DELEGATE_READ
        ):
            st = self._grant(leases, client, cs, deleg_type, ino, export_id, handle, opened)
        if st is not None:
            return self._arm(st)
        st = cs.new_deleg(client, ino, export_id, deleg_type)
        st.fh = handle
        st.open = opened
        return self._arm(st, recall=True)

    def _arm(self, st: State, recall: bool = False) -> Arm:
        if st.deleg_type == c.OPEN_DELEGATE_WRITE:
            limit = Arm(_NFS_LIMIT_SIZE, _UINT64_MAX)
            return Arm(c.OPEN_DELEGATE_WRITE, WriteDelegation(st.stateid(), recall, limit, _NO_ACE))
        return Arm(c.OPEN_DELEGATE_READ, ReadDelegation(st.stateid(), recall, _NO_ACE))

    # -- recent recalls ---------------------------------------------------------------------------

    def _recently_recalled(self, ino: int) -> bool:
        when = self._recent.get(ino)
        if when is None:
            return False
        if self.clock.seconds() - when < RECENT_SECS:
            return True
        del self._recent[ino]
        return False

    def _note_recall(self, ino: int) -> None:
        recent = self._recent
        recent.pop(ino, None)
        recent[ino] = self.clock.seconds()
        horizon = self.clock.seconds() - RECENT_SECS
        while recent:
            oldest, when = next(iter(recent.items()))
            if when >= horizon and len(recent) <= _RECENT_MAX:
                break
            del recent[oldest]

    # -- ILeaseHolder ---------------------------------------------------------------------------

    def lease_break(self, lease: Lease, to: int) -> bool:
        """
        Another's change needs the delegation back: CB_RECALL (any lost bit
        recalls the whole delegation). Always wants the acknowledgement
        (DELEGRETURN, or revocation at the recall time).
        """
        st = self.ids.by_other.get(lease.key.key or b"")
        if st is None or st.kind != DELEG or st.lease is not lease:
            # Nothing here answers for it any more: let it go.
            if self.leases is not None:
                self.leases.release(lease)
            return True
        self._note_recall(lease.ino)
        self._log.debug("NFSv4 delegation recalled ino={ino}", ino=lease.ino)
        self._send(st)
        return True

    def lease_revoked(self, lease: Lease) -> None:
        """Not returned in time: the stateid now answers NFS4ERR_DELEG_REVOKED until freed."""
        st = self.ids.by_other.get(lease.key.key or b"")
        if st is None or st.kind != DELEG or st.closed:
            return
        st.revoked = True
        st.lease = None
        st.recall_pending = False
        cs = st.client.state
        if cs is not None:
            cs.revoked.add(st.other)
        self._log.info(
            "NFSv4 client {clientid:x}: delegation revoked (not returned within {secs}s)",
            clientid=st.client.clientid,
            secs=self.recall_secs(self.leases) if self.leases is not None else 0,
        )

    # -- CB_RECALL --------------------------------------------------------------------------------

    def _send(self, st: State) -> None:
        if st.recalling is not None:
            return
        st.recall_pending = False
        d = defer.Deferred.fromCoroutine(self._recall(st))
        if d.called:
            d.addErrback(self._recall_failed)
            return
        st.recalling = d
        self._sending.add(d)

        def done(result: object) -> None:
            self._sending.discard(d)
            if st.recalling is d:
                st.recalling = None
            if isinstance(result, Failure):
                self._recall_failed(result)

        d.addBoth(done)

    def _recall_failed(self, f: Failure) -> None:
        if not f.check(defer.CancelledError):
            self._log.failure("sending CB_RECALL", f)

    def _live(self, st: State) -> bool:
        lease = st.lease
        return not (st.closed or st.revoked or lease is None or lease.gone)

    async def _recall(self, st: State) -> None:
        for attempt in range(RECALL_TRIES):
            if not self._live(st):
                return
            session = self.back_channel(st.client)
            if session is None:
                # Sent when the client binds a back channel again (SEQUENCE
                # tells it CB_PATH_DOWN meanwhile); revoked if it never does.
                st.recall_pending = True
                return
            referring: list[ReferringCallList] = []
            if st.granted_by is not None and st.granted_by[0] == session.id:
                sid, seq, slot = st.granted_by
                referring = [ReferringCallList(sid, [ReferringCall(seq, slot)])]
            args = CbRecallArgs(st.stateid(), False, st.fh)
            try:
                result = await self.callbacks.call(
                    session, [(c.OP_CB_RECALL, args)], referring=referring
                )
            except CallbackFailed as e:
                self._log.debug("CB_RECALL not delivered: {why}", why=str(e))
                st.recall_pending = self._live(st)
                return
            if result.status == c.NFS4_OK:
                return
            if result.status in _RETRY and attempt + 1 < RECALL_TRIES:
                await task.deferLater(self.clock, RECALL_RETRY_SECS, lambda: None)
                continue
            self._log.debug("CB_RECALL answered {status}", status=c.status_name(result.status))
            return

    def channel_up(self, client: Client) -> None:
        """A back channel came up for C{client}: send the recalls that could not go."""
        cs = client.state
        if cs is None:
            return
        for st in list(cs.delegs.values()):
            if st.recall_pending and self._live(st):
                self._send(st)

    # -- CB_GETATTR --------------------------------------------------------------------------------

    async def cb_getattr(self, st: State) -> tuple[int, int] | None:
        """
        Ask a write delegation's holder for the file's change attribute and
        size (CB_GETATTR, RFC 8881 §10.4.3): what another client's GETATTR
        should see. L{None} when it cannot be asked or did not answer
        usably (the caller recalls instead).
        """
        if not self._live(st) or st.deleg_type != c.OPEN_DELEGATE_WRITE:
            return None
        session = self.back_channel(st.client)
        if session is None:
            return None
        args = CbGetattrArgs(st.fh, bitmap([c.FATTR4_CHANGE, c.FATTR4_SIZE]))
        try:
            result = await self.callbacks.call(session, [(c.OP_CB_GETATTR, args)])
        except CallbackFailed as e:
            self._log.debug("CB_GETATTR not delivered: {why}", why=str(e))
            return None
        if result.status != c.NFS4_OK or len(result.results) < 2:
            return None
        return _change_and_size(result.results[1][1].value)

    # -- returning and forgetting -------------------------------------------------------------

    def returned(self, st: State) -> None:
        """DELEGRETURN (or a client freeing a revoked one): the lease goes, and the stateid."""
        # A CB_RECALL still out is left to finish (cancelling it would leave
        # the back channel's sequence id behind the client's); the recall
        # loop sees the delegation gone and sends nothing more.
        lease, st.lease = st.lease, None
        if lease is not None and not lease.gone and self.leases is not None:
            self.leases.release(lease)
        cs = st.client.state
        if cs is not None:
            cs.forget(st)

    def release_client(self, client: Client, vfs: IVFS | None) -> None:
        """A client ended: every delegation of it goes (its states are cleared by the caller)."""
        if vfs is not None:
            vfs.leases.release_client("nfs4", client.lock_key)

    def stop(self) -> None:
        for d in list(self._sending):
            d.cancel()
        self._sending.clear()
