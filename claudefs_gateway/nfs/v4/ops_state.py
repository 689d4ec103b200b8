# -*- test-case-name: tests.nfs.v4.test_state -*-
"""
NFSv4 state operations (RFC 8881 §18.10-18.18, §18.39, §18.49): OPEN and
its share reservations, CLOSE, OPEN_DOWNGRADE, byte-range locks (LOCK,
LOCKT, LOCKU) and the delegation operations, over the vfs lock table.

Choices, where the RFC leaves them:

 - A client must send RECLAIM_COMPLETE before it opens or locks anything
   new (NFS4ERR_GRACE before, as knfsd); reclaims (CLAIM_PREVIOUS, LOCK
   with reclaim) are for the last run's clients during grace only, else
   NFS4ERR_NO_GRACE.
 - OPEN of an existing file checks the caller may read and write it as
   asked, with the owner always allowed (knfsd's owner override); the
   creator of a file may open it whatever its mode.
 - A READ lock needs an open with read access, a WRITE lock one with write
   access (NFS4ERR_OPENMODE). Locks have POSIX semantics per lock-owner.
 - A refused blocking lock (READW_LT, WRITEW_LT) is not queued: the client
   polls, and is sent CB_NOTIFY_LOCK when a lock on the file is released
   within a lease (OPEN answers OPEN4_RESULT_MAY_NOTIFY_LOCK).
 - CLOSE with locks still held answers NFS4ERR_LOCKS_HELD; a successful
   CLOSE answers the invalid special stateid (RFC 8881 §18.2.4).
 - Before another client's OPEN, LOCK or LOCKT is decided, the
   delegations it conflicts with are recalled; while a recall is out it
   answers NFS4ERR_DELAY (the open is not kept), as knfsd. OPEN and
   WANT_DELEGATION grant delegations as
   L{claudefs_gateway.nfs.v4.delegations} decides; CLAIM_DELEGATE_CUR and
   CLAIM_DELEG_CUR_FH turn a delegation holder's local opens into server
   opens; CLAIM_DELEGATE_PREV, CLAIM_DELEG_PREV_FH and DELEGPURGE are
   NFS4ERR_NOTSUPP; GET_DIR_DELEGATION answers GDD4_UNAVAIL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from claudefs_gateway import errors
from claudefs_gateway.core.log import Logger
from claudefs_gateway.fstypes import SetAttrs
from claudefs_gateway.interfaces import IVFS, ILockTable
from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4 import fattr
from claudefs_gateway.nfs.v4.base import Nfs4Error, check_name
from claudefs_gateway.nfs.v4.clients import Client
from claudefs_gateway.nfs.v4.codec import (
    CbNotifyLockArgs,
    ChangeInfo,
    ClientidArgs,
    CloseArgs,
    CreatVerfAttr,
    LockArgs,
    LockDenied,
    LocktArgs,
    LockuArgs,
    OpenArgs,
    OpenDowngradeArgs,
    OpenResok,
    StateidArgs,
    StateOwner,
    WantDelegationArgs,
)
from claudefs_gateway.nfs.v4.compound import FH, CompoundState, OpsBase, ok
from claudefs_gateway.nfs.v4.delegations import check_want, no_delegation
from claudefs_gateway.nfs.v4.ops_fs import require_regular
from claudefs_gateway.nfs.v4.state import (  # noqa: F401
    COPY,
    DELEG,
    INVALID,
    LOCK,
    OPEN,
    State,
    share_modes,
)
from claudefs_gateway.rpc.xdrtypes import Arm
from claudefs_gateway.vfs import Caller, LeaseKey, Origin, R, W
from claudefs_gateway.vfs.leases import Why
from claudefs_gateway.vfs.locks import Lock, LockOwner

__all__ = ["StateOps", "lock_range"]

_OPEN_ACCESS = (c.OPEN4_SHARE_ACCESS_READ, c.OPEN4_SHARE_ACCESS_WRITE, c.OPEN4_SHARE_ACCESS_BOTH)
# The signal/push wants are hints never acted on (no delegation is promised
# for later); delegated timestamps (RFC 9754) are not granted: the server
# answers a plain delegation, which that RFC allows.
_WANT_BITS = (
    c.OPEN4_SHARE_ACCESS_WANT_DELEG_MASK
    | c.OPEN4_SHARE_ACCESS_WANT_SIGNAL_DELEG_WHEN_RESRC_AVAIL
    | c.OPEN4_SHARE_ACCESS_WANT_PUSH_DELEG_WHEN_UNCONTENDED
    | c.OPEN4_SHARE_ACCESS_WANT_DELEG_TIMESTAMPS
)


def lock_range(offset: int, length: int) -> int:
    """
    The lock table's length for an NFSv4 range (0: to end of file).

    @raise Nfs4Error: NFS4ERR_INVAL for length 0 or a range past 2**64
        (RFC 8881 §18.10.4).
    """
    if length == 0:
        raise Nfs4Error(c.NFS4ERR_INVAL, "lock of length 0")
    if length == c.NFS4_UINT64_MAX:
        return 0
    if offset + length > 2**64:
        raise Nfs4Error(c.NFS4ERR_INVAL, "lock range past the last offset")
    if offset + length == 2**64:
        return 0
    return length


def _denied(holder: Any) -> LockDenied:
    """LOCK4denied for the lock in the way (another protocol's owner shows as such)."""
    if not isinstance(holder, Lock):
        return LockDenied(0, c.NFS4_UINT64_MAX, c.WRITE_LT, StateOwner(0, b""))
    o = holder.owner
    if o.protocol == "nfs4" and isinstance(o.client, str):
        try:
            clientid = int(o.client, 16)
        except ValueError:
            clientid = 0
        owner = StateOwner(clientid, o.owner[2:])
    else:
        owner = StateOwner(0, o.protocol.encode())
    length = c.NFS4_UINT64_MAX if holder.length == 0 else holder.length
    return LockDenied(holder.start, length, c.WRITE_LT if holder.exclusive else c.READ_LT, owner)


class StateOps(OpsBase):
    """Opens, locks and the delegation operations."""

    _log = Logger()

    def locks_of(self, vfs: IVFS) -> ILockTable:
        return vfs.locks

    def check_grace(self, client: Client, locks: ILockTable, reclaim: bool) -> None:
        """RFC 8881 §8.4.2 and §18.51.3: who may reclaim, and who must wait."""
        if reclaim:
            if not client.reclaim_complete and self.records.reclaim_pending(client.owner):
                # Several gateways: the one that had the client's state may be
                # gone, and is not yet declared so (docs/rpc.rst): try again.
                raise Nfs4Error(c.NFS4ERR_DELAY, "the client's gateway may be gone")
            if client.reclaim_complete or not self.records.may_reclaim(client.owner):
                raise Nfs4Error(c.NFS4ERR_NO_GRACE)
            return
        if not client.reclaim_complete or locks.in_grace:
            raise Nfs4Error(c.NFS4ERR_GRACE)

    # -- OPEN ---------------------------------------------------------------------------------

    async def op_OPEN(self, st: CompoundState, a: OpenArgs) -> Arm:
        client = st.client
        access = a.share_access & 0xFF
        want = a.share_access & ~0xFF
        if access not in _OPEN_ACCESS or a.share_deny > c.OPEN4_SHARE_DENY_BOTH:
            raise Nfs4Error(c.NFS4ERR_INVAL, "share access or deny out of range")
        if want & ~_WANT_BITS:
            raise Nfs4Error(c.NFS4ERR_INVAL, "undefined share access bits")
        check_want(want)
        claim = a.claim.tag
        if claim in (c.CLAIM_DELEGATE_PREV, c.CLAIM_DELEG_PREV_FH):
            # Delegations do not outlive a client restart here (as knfsd).
            raise Nfs4Error(c.NFS4ERR_NOTSUPP, "delegations are not kept across client restarts")
        reclaim = claim == c.CLAIM_PREVIOUS
        creating = a.openhow.tag == c.OPEN4_CREATE
        fh = self.cfh(st)
        vfs = await self.vfs()
        locks = self.locks_of(vfs)
        self.check_grace(client, locks, reclaim)
        attrset: list[int] = []
        created = False
        truncate: int | None = None
        if claim in (c.CLAIM_NULL, c.CLAIM_DELEGATE_CUR):
            name = a.claim.value if claim == c.CLAIM_NULL else a.claim.value.file
            if fh.node is not None:
                check_name(name)
                if creating:
                    raise Nfs4Error(c.NFS4ERR_ROFS, "pseudo directory")
                if self.pseudo(vfs).lookup(fh.node, name, st.call.peer.host) is None:
                    raise Nfs4Error(c.NFS4ERR_NOENT)
                raise Nfs4Error(c.NFS4ERR_ISDIR)
            if creating and claim == c.CLAIM_DELEGATE_CUR:
                raise Nfs4Error(c.NFS4ERR_INVAL, "CLAIM_DELEGATE_CUR cannot create")
            d, caller = self.dir_of(st, fh, write=creating)
            check_name(name)
            before = await vfs.getattr(caller, d.ino)
            if creating:
                obj, created, attrset, truncate = await self._create(
                    vfs, caller, d.ino, name, a, self.own_origin(st)
                )
            else:
                # Close-to-open: the open sees other gateways' latest change.
                obj = await vfs.lookup(caller, d.ino, name, fresh=True)
            after = await vfs.getattr(caller, d.ino) if created else before
            fh.attrs = after
            cinfo = self.cinfo(before, after)
            target = self.child(vfs, fh, obj)
        else:
            if creating:
                raise Nfs4Error(c.NFS4ERR_INVAL, "only CLAIM_NULL creates")
            obj, caller = self.real(st, fh)
            cinfo = ChangeInfo(False, 0, 0)
            target = fh
        if obj.is_dir:
            raise Nfs4Error(c.NFS4ERR_ISDIR)
        if obj.is_link:
            raise Nfs4Error(c.NFS4ERR_SYMLINK)
        if not obj.is_reg:
            raise Nfs4Error(c.NFS4ERR_WRONG_TYPE)
        # CLAIM_DELEGATE_CUR / CLAIM_DELEG_CUR_FH: the holder of a delegation
        # tells the server of an open it made locally (before DELEGRETURN).
        deleg: State | None = None
        if claim in (c.CLAIM_DELEGATE_CUR, c.CLAIM_DELEG_CUR_FH):
            sid = a.claim.value.delegate_stateid if claim == c.CLAIM_DELEGATE_CUR else a.claim.value
            deleg = self.find_state(st, sid, (DELEG,))
            if deleg.ino != obj.ino:
                raise Nfs4Error(c.NFS4ERR_BAD_STATEID, "delegation of another file")
            if access & c.OPEN4_SHARE_ACCESS_WRITE and deleg.deleg_type != c.OPEN_DELEGATE_WRITE:
                raise Nfs4Error(c.NFS4ERR_OPENMODE, "a read delegation covers no write open")
        if not created:
            await self._may_open(vfs, caller, obj, access)
        if (
            truncate is not None
            and obj.size != truncate
            and not access & c.OPEN4_SHARE_ACCESS_WRITE
        ):
            raise Nfs4Error(c.NFS4ERR_INVAL, "truncating open without write access")
        assert target.export is not None
        state, sid, undo = self._share(
            client, locks, target, access, a.share_deny, a.owner.owner, reclaim
        )
        try:
            # Several gateways: the meta server's word on the share reservation
            # (NFS4ERR_SHARE_DENIED if another gateway's open got there first).
            if state.share is not None:
                await locks.settle_share(state.share)
            if deleg is None and not reclaim and not created:
                await self._recall_for_open(vfs, client, obj.ino, access, a.share_deny)
            if truncate is not None and obj.size != truncate:
                own = Origin(
                    share=state.share,
                    exempt=(LeaseKey("nfs4", client.lock_key, None),),
                    wait=False,
                )
                try:
                    target.attrs = await vfs.setattr(
                        caller, obj.ino, SetAttrs(size=truncate), origin=own
                    )
                except errors.LockConflict:
                    raise Nfs4Error(c.NFS4ERR_LOCKED) from None
                attrset = fattr.bitmap([c.FATTR4_SIZE])
            if deleg is not None:
                delegation = Arm(c.OPEN_DELEGATE_NONE)
            else:
                delegation = self.delegations.for_open(
                    vfs,
                    client,
                    want,
                    state.access,
                    obj.ino,
                    target.export.id,
                    target.handle,
                    opened=state,
                    reclaim=a.claim.value if reclaim else None,
                    granted_by=st.request(),
                )
                delegation = await self.delegations.settled(vfs, client, obj.ino, want, delegation)
        except BaseException:
            # The client never hears of this open: take it back.
            undo()
            raise
        st.cfh = target
        st.cstateid = sid
        rflags = c.OPEN4_RESULT_LOCKTYPE_POSIX | c.OPEN4_RESULT_MAY_NOTIFY_LOCK
        return ok(OpenResok(sid, cinfo, rflags, attrset, delegation))

    async def _recall_for_open(
        self, vfs: IVFS, client: Client, ino: int, access: int, deny: int
    ) -> None:
        """
        Before another client's open of C{ino} is granted: delegations it
        would conflict with are recalled (RFC 8881 §10.4.1: a write open, or
        an open denying anything, recalls read delegations; any open
        recalls a write delegation). Fails with L{errors.LeaseBreaking}
        (NFS4ERR_DELAY) while a recall is out: the client retries.
        """
        leases = vfs.leases
        if not leases.busy(ino):
            return
        writes = access & c.OPEN4_SHARE_ACCESS_WRITE or deny != c.OPEN4_SHARE_DENY_NONE
        why = Why.OPEN_WRITE if writes else Why.OPEN
        await leases.recall(ino, why, (LeaseKey("nfs4", client.lock_key, None),), wait=False)

    async def _create(
        self, vfs: IVFS, caller: Caller, dir_ino: int, name: bytes, a: OpenArgs, origin: Origin
    ) -> tuple[Any, bool, list[int], int | None]:
        """OPEN4_CREATE: (object, created now, attrset, size to truncate to)."""
        how = a.openhow.value
        mode4 = how.tag
        truncate = None
        if mode4 in (c.UNCHECKED4, c.GUARDED4):
            want = fattr.decode_settable(how.value, self.uid_of, self.gid_of)
            ch = want.changes
            mode = ch.mode if ch.mode is not None else 0o644
            if want.umask is not None:
                mode &= ~want.umask
            try:
                obj = await vfs.create(caller, dir_ino, name, mode, exclusive=True, origin=origin)
            except errors.Exists:
                if mode4 == c.GUARDED4:
                    raise Nfs4Error(c.NFS4ERR_EXIST) from None
                obj = await vfs.lookup(caller, dir_ino, name, fresh=True)
                return obj, False, [], ch.size
            rest = SetAttrs(
                uid=ch.uid, gid=ch.gid, size=ch.size, atime=ch.atime, mtime=ch.mtime, btime=ch.btime
            )
            if not rest.is_empty():
                obj = await vfs.setattr(caller, obj.ino, rest)
            return obj, True, want.mask, truncate
        if mode4 == c.EXCLUSIVE4:
            obj = await vfs.create_exclusive(caller, dir_ino, name, bytes(how.value), 0o644)
            return obj, True, [], None
        cva: CreatVerfAttr = how.value
        want = fattr.decode_settable(cva.attrs, self.uid_of, self.gid_of, fattr.EXCLCREAT)
        ch = want.changes
        mode = ch.mode if ch.mode is not None else 0o644
        if want.umask is not None:
            mode &= ~want.umask
        obj = await vfs.create_exclusive(caller, dir_ino, name, bytes(cva.verf), mode)
        rest = SetAttrs(
            uid=ch.uid, gid=ch.gid, size=ch.size, atime=ch.atime, mtime=ch.mtime, btime=ch.btime
        )
        if not rest.is_empty():
            obj = await vfs.setattr(caller, obj.ino, rest)
        return obj, True, want.mask, None

    async def _may_open(self, vfs: IVFS, caller: Caller, obj: Any, access: int) -> None:
        write = bool(access & c.OPEN4_SHARE_ACCESS_WRITE)
        if write and caller.read_only:
            raise Nfs4Error(c.NFS4ERR_ROFS)
        if caller.cred.uid == obj.uid:
            return
        need = (R if access & c.OPEN4_SHARE_ACCESS_READ else 0) | (W if write else 0)
        held = await vfs.access(caller, obj.ino, need)
        if held != need:
            raise Nfs4Error(c.NFS4ERR_ACCESS)

    def _share(
        self,
        client: Client,
        locks: ILockTable,
        target: FH,
        access: int,
        deny: int,
        owner: bytes,
        reclaim: bool,
    ) -> tuple[State, Any, Callable[[], None]]:
        """
        The open state of (open-owner, file), made or upgraded (RFC 8881
        §18.16.4), its new stateid, and what undoes it (an OPEN failing
        after this point must leave nothing the client does not know of).
        """
        cs = self.client_state(client)
        acc, den = share_modes(access, deny)
        existing = cs.opens.get((owner, target.ino))
        if existing is not None and not existing.closed and existing.share is not None:
            token = existing.share
            old = (token.access, token.deny, existing.access, existing.deny, set(existing.opened))
            seqid = existing.seqid
            locks.upgrade_share(token, acc, den, reclaim=reclaim)
            existing.access |= access
            existing.deny |= deny
            existing.opened.add((access, deny))

            def downgrade() -> None:
                if not token.closed:
                    locks.downgrade_share(token, old[0], old[1])
                existing.access, existing.deny, existing.opened = old[2], old[3], old[4]
                existing.seqid = seqid

            return existing, existing.bump(), downgrade
        assert target.export is not None
        state = cs.new_open(client, target.ino, target.export.id, owner)
        try:
            state.share = locks.open_share(
                target.ino,
                LockOwner("nfs4", client.lock_key, b"o:" + owner),
                acc,
                den,
                reclaim=reclaim,
            )
        except BaseException:
            cs.forget(state)
            raise
        state.access, state.deny = access, deny
        state.opened.add((access, deny))

        def close() -> None:
            if state.share is not None:
                locks.close_share(state.share)
            cs.forget(state)

        return state, state.stateid(), close

    # -- CLOSE and OPEN_DOWNGRADE ------------------------------------------------------------------

    def _open_state(self, st: CompoundState, sid: Any) -> State:
        fh = self.cfh(st)
        state = self.find_state(st, sid, (OPEN,))
        if state.ino != fh.ino:
            raise Nfs4Error(c.NFS4ERR_BAD_STATEID, "stateid of another file")
        return state

    async def op_CLOSE(self, st: CompoundState, a: CloseArgs) -> Arm:
        state = self._open_state(st, a.open_stateid)
        vfs = await self.vfs()
        locks = self.locks_of(vfs)
        held = {lk.owner for lk in locks.locks(state.ino)}
        if any(ls.lock_owner in held for ls in state.locks):
            raise Nfs4Error(c.NFS4ERR_LOCKS_HELD)
        cs = self.client_state(st.client)
        if state.share is not None:
            locks.close_share(state.share)
        for ls in list(state.locks):
            cs.forget(ls)
        cs.forget(state)
        st.cstateid = INVALID
        return ok(INVALID)

    async def op_OPEN_DOWNGRADE(self, st: CompoundState, a: OpenDowngradeArgs) -> Arm:
        state = self._open_state(st, a.open_stateid)
        access = a.share_access & 0xFF
        if access not in _OPEN_ACCESS or a.share_deny > c.OPEN4_SHARE_DENY_BOTH:
            raise Nfs4Error(c.NFS4ERR_INVAL, "share access or deny out of range")
        if access & ~state.access or a.share_deny & ~state.deny:
            raise Nfs4Error(c.NFS4ERR_INVAL, "not a downgrade")
        vfs = await self.vfs()
        locks = self.locks_of(vfs)
        if state.share is None or state.share.closed:
            raise Nfs4Error(c.NFS4ERR_BAD_STATEID, "open released")
        acc, den = share_modes(access, a.share_deny)
        locks.downgrade_share(state.share, acc, den)
        state.access, state.deny = access, a.share_deny
        state.opened = {(access, a.share_deny)}
        sid = state.bump()
        st.cstateid = sid
        return ok(sid)

    # -- byte-range locks --------------------------------------------------------------------------

    async def op_LOCK(self, st: CompoundState, a: LockArgs) -> Arm:
        fh = self.cfh(st)
        obj, _ = self.real(st, fh)
        require_regular(obj)
        length = lock_range(a.offset, a.length)
        client = st.client
        vfs = await self.vfs()
        locks = self.locks_of(vfs)
        self.check_grace(client, locks, a.reclaim)
        cs = self.client_state(client)
        made: State | None = None
        if a.locker.tag:
            otlo = a.locker.value
            opened = self.find_state(st, otlo.open_stateid, (OPEN,))
            if opened.ino != fh.ino:
                raise Nfs4Error(c.NFS4ERR_BAD_STATEID, "open stateid of another file")
            owner = otlo.lock_owner.owner
            lstate = cs.lock_states.get((owner, fh.ino))
            if lstate is None or lstate.closed:
                lstate = made = cs.new_lock(
                    client, opened, owner, LockOwner("nfs4", client.lock_key, b"l:" + owner)
                )
        else:
            lstate = self.find_state(st, a.locker.value.lock_stateid, (LOCK,))
            if lstate.ino != fh.ino:
                raise Nfs4Error(c.NFS4ERR_BAD_STATEID, "lock stateid of another file")
        its_open = lstate.open
        exclusive = a.locktype in (c.WRITE_LT, c.WRITEW_LT)
        if its_open is None or its_open.closed:
            raise Nfs4Error(c.NFS4ERR_BAD_STATEID, "open closed")
        need = c.OPEN4_SHARE_ACCESS_WRITE if exclusive else c.OPEN4_SHARE_ACCESS_READ
        if not its_open.access & need:
            if made is not None:
                cs.forget(made)
            raise Nfs4Error(c.NFS4ERR_OPENMODE, "open does not allow this lock type")
        assert lstate.lock_owner is not None
        try:
            if not a.reclaim:
                await self._recall_for_lock(vfs, client, fh.ino)
            await locks.lock(
                fh.ino, lstate.lock_owner, a.offset, length, exclusive, reclaim=a.reclaim
            )
        except errors.LockConflict as e:
            if made is not None:
                cs.forget(made)
            if a.locktype in (c.READW_LT, c.WRITEW_LT):
                self._notify_when_free(st, fh, lstate.owner)
            raise Nfs4Error(c.NFS4ERR_DENIED, body=_denied(e.holder)) from None
        except BaseException:
            if made is not None:
                cs.forget(made)
            raise
        sid = lstate.stateid() if made is not None else lstate.bump()
        st.cstateid = sid
        return ok(sid)

    async def op_LOCKT(self, st: CompoundState, a: LocktArgs) -> Arm:
        fh = self.cfh(st)
        obj, _ = self.real(st, fh)
        require_regular(obj)
        length = lock_range(a.offset, a.length)
        vfs = await self.vfs()
        locks = self.locks_of(vfs)
        if locks.in_grace:
            raise Nfs4Error(c.NFS4ERR_GRACE)
        await self._recall_for_lock(vfs, st.client, fh.ino)
        owner = LockOwner("nfs4", st.client.lock_key, b"l:" + a.owner.owner)
        holder = locks.test(
            fh.ino, owner, a.offset, length, a.locktype in (c.WRITE_LT, c.WRITEW_LT)
        )
        if holder is not None:
            raise Nfs4Error(c.NFS4ERR_DENIED, body=_denied(holder))
        return ok()

    async def op_LOCKU(self, st: CompoundState, a: LockuArgs) -> Arm:
        fh = self.cfh(st)
        lstate = self.find_state(st, a.lock_stateid, (LOCK,))
        if lstate.ino != fh.ino:
            raise Nfs4Error(c.NFS4ERR_BAD_STATEID, "lock stateid of another file")
        length = lock_range(a.offset, a.length)
        vfs = await self.vfs()
        locks = self.locks_of(vfs)
        assert lstate.lock_owner is not None
        locks.unlock(fh.ino, lstate.lock_owner, a.offset, length)
        sid = lstate.bump()
        st.cstateid = sid
        return ok(sid)

    async def _recall_for_lock(self, vfs: IVFS, client: Client, ino: int) -> None:
        """
        Others' delegations are recalled before a lock is decided: their
        clients may hold locks they never sent (the Linux client locks
        locally under any delegation). NFS4ERR_DELAY while a recall is out.
        """
        leases = vfs.leases
        if leases.busy(ino):
            await leases.recall(
                ino, Why.LOCK, (LeaseKey("nfs4", client.lock_key, None),), wait=False
            )

    def _notify_when_free(self, st: CompoundState, fh: FH, owner: bytes) -> None:
        """Tell the client (CB_NOTIFY_LOCK) when a lock on the file is released, within a lease."""
        session = st.session
        vfs = self.ctx.vfs
        if session is None or vfs is None or vfs.locks is None or not session.callbacks_up:
            return
        client = session.client
        waits = client.lock_waits
        key = (owner, fh.ino)
        if key in waits or len(waits) >= self.settings.max_locks_per_client:
            return
        try:
            d = vfs.locks.notify_when_free(fh.ino)
        except errors.NoLock:
            return
        waits[key] = d
        d.addTimeout(self.settings.lease_secs, self.clients.clock)

        def fire(_: object) -> None:
            waits.pop(key, None)
            for s in list(client.sessions.values()):
                if s.callbacks_up:
                    args = CbNotifyLockArgs(fh.handle, StateOwner(client.clientid, owner))
                    cb = self.callbacks.call(s, [(c.OP_CB_NOTIFY_LOCK, args)])
                    cb.addErrback(self._callback_failed, "CB_NOTIFY_LOCK")
                    return

        def gone(f: Failure) -> None:
            waits.pop(key, None)
            f.trap(defer.CancelledError, defer.TimeoutError)

        d.addCallbacks(fire, gone)

    def _callback_failed(self, f: Failure, what: str) -> None:
        self._log.debug("{what} not delivered: {why}", what=what, why=f.getErrorMessage())

    # -- delegations (the policy is in the delegations module) ------------------------------------

    async def op_DELEGRETURN(self, st: CompoundState, a: StateidArgs) -> Arm:
        fh = self.cfh(st)
        state = self.find_state(st, a.stateid, (DELEG,))
        if state.ino != fh.ino:
            raise Nfs4Error(c.NFS4ERR_BAD_STATEID, "delegation of another file")
        self.delegations.returned(state)
        return ok()

    async def op_DELEGPURGE(self, st: CompoundState, a: ClientidArgs) -> Arm:
        # RFC 8881 §18.5.3: for servers that keep delegations across client
        # restarts (CLAIM_DELEGATE_PREV); none are kept here, as knfsd.
        raise Nfs4Error(c.NFS4ERR_NOTSUPP, "delegations are not kept across client restarts")

    async def op_WANT_DELEGATION(self, st: CompoundState, a: WantDelegationArgs) -> Arm:
        fh = self.cfh(st)
        if a.want & ~_WANT_BITS:
            raise Nfs4Error(c.NFS4ERR_INVAL, "undefined want bits")
        kind = check_want(a.want)
        if a.claim.tag == c.CLAIM_DELEG_PREV_FH:
            raise Nfs4Error(c.NFS4ERR_NOTSUPP, "delegations are not kept across client restarts")
        vfs = await self.vfs()
        reclaim = None
        if a.claim.tag == c.CLAIM_PREVIOUS:
            self.check_grace(st.client, self.locks_of(vfs), True)
            reclaim = a.claim.value
        explicit = kind != c.OPEN4_SHARE_ACCESS_WANT_NO_PREFERENCE
        if kind in (c.OPEN4_SHARE_ACCESS_WANT_NO_DELEG, c.OPEN4_SHARE_ACCESS_WANT_CANCEL):
            explicit = True
        elif fh.is_dir:
            return ok(no_delegation(explicit, c.WND4_IS_DIR))
        elif not self.live(fh).is_reg:
            return ok(no_delegation(explicit, c.WND4_NOT_SUPP_FTYPE))
        if not explicit and reclaim is None:
            # RFC 8881 §18.49.3 gives no meaning to wanting "no preference".
            return ok(Arm(c.OPEN_DELEGATE_NONE))
        # Without an open of its own, the client may have the kind it asked for.
        cs = self.client_state(st.client)
        access = 0
        for (_, ino), o in cs.opens.items():
            if ino == fh.ino and not o.closed:
                access |= o.access
        if not access:
            access = c.OPEN4_SHARE_ACCESS_BOTH
        assert fh.export is not None
        arm = self.delegations.for_open(
            vfs,
            st.client,
            a.want,
            access,
            fh.ino,
            fh.export.id,
            fh.handle,
            reclaim=reclaim,
            granted_by=st.request(),
        )
        return ok(await self.delegations.settled(vfs, st.client, fh.ino, a.want, arm))

    async def op_GET_DIR_DELEGATION(self, st: CompoundState, a: Any) -> Arm:
        fh = self.cfh(st)
        if not fh.is_dir:
            raise Nfs4Error(c.NFS4ERR_NOTDIR)
        # RFC 8881 §18.39.3: "unavailable" is a successful answer.
        return ok(Arm(1, False))

    # -- a client's end ---------------------------------------------------------------------------

    def release_client(self, client: Client) -> None:
        """Everything a client held goes: opens, locks, delegations, notifications, copies."""
        for d in list(client.lock_waits.values()):
            d.cancel()
        if client.state is not None:
            for s in client.state.clear():
                if s.kind == COPY and s.job is not None:
                    s.job.cancel()
                if s.recalling is not None:
                    s.recalling.cancel()
        vfs = self.ctx.vfs
        if vfs is not None and vfs.locks is not None:
            vfs.locks.release_client("nfs4", client.lock_key)
        self.delegations.release_client(client, vfs)
