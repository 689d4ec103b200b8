# -*- test-case-name: tests.nfs.v4.test_sessions -*-
"""
NFSv4.1 client and session operations (RFC 8881 §18.34-18.51):
EXCHANGE_ID, CREATE_SESSION, DESTROY_SESSION, BIND_CONN_TO_SESSION,
BACKCHANNEL_CTL, DESTROY_CLIENTID, RECLAIM_COMPLETE, TEST_STATEID,
FREE_STATEID (SEQUENCE itself is part of the COMPOUND loop in
L{claudefs_gateway.nfs.v4.server}).
"""

from __future__ import annotations

from typing import Any

from claudefs_gateway import __version__ as _version
from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4.base import Nfs4Error
from claudefs_gateway.nfs.v4.clients import Client, Principal, SlotTable
from claudefs_gateway.nfs.v4.codec import (
    BackchannelCtlArgs,
    BindConnArgs,
    BindConnResok,
    ChannelAttrs,
    ClientidArgs,
    CreateSessionArgs,
    CreateSessionResok,
    ExchangeIdArgs,
    ExchangeIdResok,
    ImplId,
    NfsTime,
    ReclaimCompleteArgs,
    ServerOwner,
    SessionArgs,
    StateidArgs,
    TestStateidArgs,
)
from claudefs_gateway.nfs.v4.compound import CompoundState, OpsBase, ok
from claudefs_gateway.nfs.v4.state import CURRENT, LOCK, OPEN, State
from claudefs_gateway.rpc.xdrtypes import Arm

__all__ = ["SessionOps", "MIN_REQUEST", "MIN_RESPONSE"]

# The smallest request and reply a channel must carry (a COMPOUND of one
# SEQUENCE with its RPC header): less could never be used (RFC 8881
# §18.36.3, NFS4ERR_TOOSMALL).
MIN_REQUEST = 100
MIN_RESPONSE = 100
MIN_CB_REQUEST = 100
MIN_CB_RESPONSE = 48

# Flags a client may send in EXCHANGE_ID (RFC 8881 §18.35.3; others: INVAL).
_CLIENT_FLAGS = (
    c.EXCHGID4_FLAG_SUPP_MOVED_REFER
    | c.EXCHGID4_FLAG_SUPP_MOVED_MIGR
    | c.EXCHGID4_FLAG_BIND_PRINC_STATEID
    | c.EXCHGID4_FLAG_MASK_PNFS
    | c.EXCHGID4_FLAG_UPD_CONFIRMED_REC_A
)
_SESSION_FLAGS = (
    c.CREATE_SESSION4_FLAG_PERSIST
    | c.CREATE_SESSION4_FLAG_CONN_BACK_CHAN
    | c.CREATE_SESSION4_FLAG_CONN_RDMA
)
_IMPL = ImplId(b"claudefs", f"claudefs-gateway {_version}".encode(), NfsTime(0, 0))


def principal(st: CompoundState) -> Principal:
    cred = st.call.cred
    if cred is None:
        return Principal(st.call.flavor, 65534, 65534)
    return Principal(st.call.flavor, cred.uid, cred.gid)


class SessionOps(OpsBase):
    """Client records, sessions, stateid tests."""

    server_owner: bytes

    # -- EXCHANGE_ID ----------------------------------------------------------------------

    async def op_EXCHANGE_ID(self, st: CompoundState, a: ExchangeIdArgs) -> Arm:
        # RFC 8881 §18.35.4: the nine cases of an EXCHANGE_ID against the
        # confirmed and unconfirmed records of the same client owner.
        if a.flags & ~_CLIENT_FLAGS:
            raise Nfs4Error(c.NFS4ERR_INVAL, "undefined or server-only EXCHANGE_ID flags")
        if a.state_protect.tag != c.SP4_NONE:
            # SP4_MACH_CRED and SP4_SSV need RPCSEC_GSS, which is not served.
            raise Nfs4Error(c.NFS4ERR_INVAL, "state protection needs RPCSEC_GSS")
        update = bool(a.flags & c.EXCHGID4_FLAG_UPD_CONFIRMED_REC_A)
        who = principal(st)
        conf, unconf = self.clients.with_owner(a.ownerid)
        if conf is not None:
            same_cred = conf.principal == who
            same_verf = conf.verifier == a.verifier
            if update:
                if not same_cred:
                    raise Nfs4Error(c.NFS4ERR_PERM, "update by another principal")  # case 9
                if not same_verf:
                    raise Nfs4Error(c.NFS4ERR_NOT_SAME, "update with another verifier")  # 8
                return ok(self._eid_result(conf, confirmed=True))  # case 6
            if not same_cred:
                if conf.has_state():  # case 3, in use
                    raise Nfs4Error(c.NFS4ERR_CLID_INUSE, "client owner in use")
                self.clients.end(conf, "replaced")
            elif same_verf:
                return ok(self._eid_result(conf, confirmed=True))  # case 2
            # case 5: a rebooted client; the old record goes when the new is confirmed.
        elif update:
            raise Nfs4Error(c.NFS4ERR_NOENT, "no confirmed record to update")  # case 7
        if unconf is not None:
            self.clients.end(unconf, "replaced")  # case 4
        try:
            new = self.clients.add(a.ownerid, a.verifier, who, a.flags)
        except OverflowError:
            raise Nfs4Error(c.NFS4ERR_DELAY, "too many clients") from None
        return ok(self._eid_result(new, confirmed=False))

    def _eid_result(self, client: Client, confirmed: bool) -> ExchangeIdResok:
        flags = c.EXCHGID4_FLAG_USE_NON_PNFS
        if confirmed:
            flags |= c.EXCHGID4_FLAG_CONFIRMED_R
        return ExchangeIdResok(
            client.clientid,
            (client.cs_seq + 1) & 0xFFFFFFFF,
            flags,
            Arm(c.SP4_NONE),
            ServerOwner(0, self.server_owner),
            self.server_owner,
            [_IMPL],
        )

    # -- CREATE_SESSION -------------------------------------------------------------------

    def _fore(self, ca: ChannelAttrs) -> ChannelAttrs:
        s = self.settings
        if ca.maxrequestsize < MIN_REQUEST or ca.maxresponsesize < MIN_RESPONSE:
            raise Nfs4Error(c.NFS4ERR_TOOSMALL, "fore channel too small for a request")
        if ca.maxrequests == 0 or ca.maxoperations == 0:
            raise Nfs4Error(c.NFS4ERR_TOOSMALL, "fore channel without slots or operations")
        return ChannelAttrs(
            0,
            min(ca.maxrequestsize, s.max_record),
            min(ca.maxresponsesize, s.max_record),
            min(ca.maxresponsesize_cached, s.reply_cache_size),
            min(ca.maxoperations, s.max_ops),
            min(ca.maxrequests, s.max_slots),
            [],
        )

    @staticmethod
    def _back(ca: ChannelAttrs) -> ChannelAttrs:
        if ca.maxrequestsize < MIN_CB_REQUEST or ca.maxresponsesize < MIN_CB_RESPONSE:
            raise Nfs4Error(c.NFS4ERR_TOOSMALL, "back channel too small for a callback")
        if ca.maxrequests == 0 or ca.maxoperations < 2:
            raise Nfs4Error(c.NFS4ERR_TOOSMALL, "back channel without slots or operations")
        # The Linux client insists on getting exactly what it offered.
        return ChannelAttrs(
            0,
            ca.maxrequestsize,
            ca.maxresponsesize,
            ca.maxresponsesize_cached,
            ca.maxoperations,
            ca.maxrequests,
            [],
        )

    async def op_CREATE_SESSION(self, st: CompoundState, a: CreateSessionArgs) -> Arm:
        # RFC 8881 §18.36.4, in the order knfsd checks: flags and channel
        # sizes (no sequence consumed), the client, its CREATE_SESSION
        # sequence (a retry gets the cached result), then the session.
        if a.flags & ~_SESSION_FLAGS:
            raise Nfs4Error(c.NFS4ERR_INVAL, "undefined CREATE_SESSION flags")
        fore = self._fore(a.fore_chan_attrs)
        back = self._back(a.back_chan_attrs)
        client = self.clients.get(a.clientid)
        if client is None:
            raise Nfs4Error(c.NFS4ERR_STALE_CLIENTID)
        if client.confirmed:
            if a.sequence == client.cs_seq and client.cs_reply is not None:
                cached: Arm = client.cs_reply
                return cached
            if a.sequence != (client.cs_seq + 1) & 0xFFFFFFFF:
                raise Nfs4Error(c.NFS4ERR_SEQ_MISORDERED)
        else:
            if client.principal != principal(st):
                raise Nfs4Error(c.NFS4ERR_CLID_INUSE, "another principal")
            if a.sequence != (client.cs_seq + 1) & 0xFFFFFFFF:
                # An unconfirmed record has no replay to give.
                raise Nfs4Error(c.NFS4ERR_SEQ_MISORDERED)
        try:
            session = self.clients.new_session(
                client,
                fore=fore,
                back=back,
                slots=SlotTable(fore.maxrequests),
                minorversion=st.minorversion,
                cb_program=a.cb_program,
                cb_sec=list(a.sec_parms),
            )
        except OverflowError:
            raise Nfs4Error(c.NFS4ERR_DELAY, "too many sessions for this client") from None
        flags = 0
        conn = st.call.peer.conn
        if conn is not None:
            back_chan = bool(a.flags & c.CREATE_SESSION4_FLAG_CONN_BACK_CHAN)
            self.clients.bind(session, conn, back_chan)
            self._watch(conn)
            if back_chan:
                self.callbacks.attach(conn)
                flags |= c.CREATE_SESSION4_FLAG_CONN_BACK_CHAN
        if not client.confirmed:
            client.machine.confirm()
            # RFC 8881 §18.35.4 case 5: the rebooted client's old record goes now.
            for other in list(self.clients.by_owner.get(client.owner, ())):
                if other is not client and other.confirmed:
                    self.clients.end(other, "replaced")
        client.cs_seq = a.sequence
        self.clients.renew(client)
        result = ok(CreateSessionResok(session.id, a.sequence, flags, fore, back))
        client.cs_reply = result
        return result

    def _watch(self, conn: Any) -> None:
        hooks = getattr(conn, "on_close", None)
        if hooks is not None and self._conn_closed not in hooks:
            hooks.append(self._conn_closed)

    def _conn_closed(self, conn: Any) -> None:
        self.clients.connection_lost(conn)

    # -- the other session operations -------------------------------------------------------

    async def op_DESTROY_SESSION(self, st: CompoundState, a: SessionArgs) -> Arm:
        s = self.clients.session(a.sessionid)
        if s is None:
            raise Nfs4Error(c.NFS4ERR_BADSESSION)
        conn = st.call.peer.conn
        key = getattr(conn, "conn_id", id(conn))
        if key not in s.conns and not (st.session is not None and st.session is s):
            raise Nfs4Error(c.NFS4ERR_CONN_NOT_BOUND_TO_SESSION)
        if any(slot.busy for slot in s.slots.slots) and st.session is not s:
            raise Nfs4Error(c.NFS4ERR_DELAY, "requests in progress on the session")
        self.clients.destroy_session(s)
        return ok()

    async def op_BIND_CONN_TO_SESSION(self, st: CompoundState, a: BindConnArgs) -> Arm:
        s = self.clients.session(a.sessid)
        if s is None:
            raise Nfs4Error(c.NFS4ERR_BADSESSION)
        if a.use_conn_in_rdma_mode:
            raise Nfs4Error(c.NFS4ERR_INVAL, "RDMA mode is not served")
        conn = st.call.peer.conn
        if conn is None:
            raise Nfs4Error(c.NFS4ERR_INVAL, "not a stream connection")
        if a.dir == c.CDFC4_FORE:
            back, dir_ = False, c.CDFS4_FORE
        elif a.dir == c.CDFC4_BACK:
            back, dir_ = True, c.CDFS4_BACK
        else:
            back, dir_ = True, c.CDFS4_BOTH
        self.clients.bind(s, conn, back)
        self._watch(conn)
        if back:
            self.callbacks.attach(conn)
        return ok(BindConnResok(s.id, dir_, False))

    async def op_BACKCHANNEL_CTL(self, st: CompoundState, a: BackchannelCtlArgs) -> Arm:
        s = st.session
        assert s is not None
        if not any(p.tag in (c.AUTH_NONE, c.AUTH_SYS) for p in a.sec_parms):
            raise Nfs4Error(c.NFS4ERR_INVAL, "no callback security the server speaks")
        s.cb_program = a.cb_program
        s.cb_sec = list(a.sec_parms)
        return ok()

    async def op_DESTROY_CLIENTID(self, st: CompoundState, a: ClientidArgs) -> Arm:
        client = self.clients.get(a.clientid)
        if client is None:
            raise Nfs4Error(c.NFS4ERR_STALE_CLIENTID)
        if client.sessions:
            raise Nfs4Error(c.NFS4ERR_CLIENTID_BUSY, "the client has sessions")
        self.clients.end(client, "destroyed")
        return ok()

    async def op_RECLAIM_COMPLETE(self, st: CompoundState, a: ReclaimCompleteArgs) -> Arm:
        client = st.client
        if a.one_fs:
            # Per file system reclaim is not tracked: the global one decides.
            self.cfh(st)
            return ok()
        if client.reclaim_complete:
            raise Nfs4Error(c.NFS4ERR_COMPLETE_ALREADY)
        client.reclaim_complete = True
        self.records.reclaimed(client.owner)
        return ok()

    # -- stateids ----------------------------------------------------------------------------

    def _test(self, st: CompoundState, sid: Any) -> int:
        if sid.other == bytes(12) or sid.other == b"\xff" * 12 or sid == CURRENT:
            return c.NFS4ERR_BAD_STATEID
        try:
            self.find_state(st, sid, (OPEN, LOCK, 3))
        except Nfs4Error as e:
            return e.status
        return c.NFS4_OK

    async def op_TEST_STATEID(self, st: CompoundState, a: TestStateidArgs) -> Arm:
        return ok([self._test(st, sid) for sid in a.stateids])

    async def op_FREE_STATEID(self, st: CompoundState, a: StateidArgs) -> Arm:
        state: State = self.find_state(st, a.stateid, (OPEN, LOCK, 3))
        cs = self.client_state(st.client)
        if state.kind == OPEN:
            raise Nfs4Error(c.NFS4ERR_LOCKS_HELD, "the open is still open")
        if state.kind == LOCK:
            vfs = await self.vfs()
            if vfs.locks is not None and state.lock_owner is not None:
                if any(lk.owner == state.lock_owner for lk in vfs.locks.locks(state.ino)):
                    raise Nfs4Error(c.NFS4ERR_LOCKS_HELD, "locks held")
        cs.forget(state)
        return ok()
