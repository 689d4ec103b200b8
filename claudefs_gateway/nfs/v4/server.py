# -*- test-case-name: tests.nfs.v4.test_compound -*-
"""
NFSv4.1 and 4.2 (program 100003, version 4): NULL and COMPOUND.

A COMPOUND's operations are decoded and run one at a time, in order, until
one fails (RFC 8881 §15.2, §16.2.3): an opcode outside the minor version
answers NFS4ERR_OP_ILLEGAL, arguments that do not decode NFS4ERR_BADXDR,
each after the operations before it ran. Session rules (RFC 8881 §2.10.6,
§18.46): a COMPOUND starts with SEQUENCE, or is one of EXCHANGE_ID,
CREATE_SESSION, DESTROY_SESSION, BIND_CONN_TO_SESSION or DESTROY_CLIENTID
alone (NFS4ERR_NOT_ONLY_OP otherwise, NFS4ERR_OP_NOT_IN_SESSION for any
other first operation); SEQUENCE elsewhere is NFS4ERR_SEQUENCE_POS.

SEQUENCE checks the session, the operation count (NFS4ERR_TOO_MANY_OPS),
the request's size (NFS4ERR_REQ_TOO_BIG) and the slot; a retry of the
slot's last request gets the cached reply byte for byte (or
NFS4ERR_RETRY_UNCACHED_REP if it was too large to keep, NFS4ERR_DELAY while
the first is still running, NFS4ERR_SEQ_FALSE_RETRY if it is not the same
request), so every request runs exactly once. Replies grow operation by
operation within the session's C{ca_maxresponsesize} (or
C{ca_maxresponsesize_cached} when the client asked for caching): the
operation that would pass it answers NFS4ERR_REP_TOO_BIG(_TO_CACHE).

Minor version 0 is not served: it answers NFS4ERR_MINOR_VERS_MISMATCH, as
does any version not in C{nfs.v4.minor_versions}.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from claudefs_gateway import errors
from claudefs_gateway.core.log import Logger
from claudefs_gateway.nfs.context import NFSContext
from claudefs_gateway.nfs.errors import nfs4_status
from claudefs_gateway.nfs.grace import Grace
from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4 import fattr
from claudefs_gateway.nfs.v4.base import Nfs4Error
from claudefs_gateway.nfs.v4.callback import Callbacks
from claudefs_gateway.nfs.v4.clients import UNCACHED, Client, ClientTable
from claudefs_gateway.nfs.v4.codec import (
    ILLEGAL,
    OPS,
    Always,
    CompoundHeader,
    SequenceArgs,
    SequenceResok,
    read_header,
    reply_size,
)
from claudefs_gateway.nfs.v4.compound import CompoundState, Settings
from claudefs_gateway.nfs.v4.delegations import Delegations
from claudefs_gateway.nfs.v4.ops_fs import FileOps
from claudefs_gateway.nfs.v4.ops_session import SessionOps
from claudefs_gateway.nfs.v4.ops_state import StateOps
from claudefs_gateway.nfs.v4.ops_v42 import V42Ops
from claudefs_gateway.nfs.v4.pnfs import PnfsOps
from claudefs_gateway.nfs.v4.recovery import ClientRecords
from claudefs_gateway.nfs.v4.state import StateIds
from claudefs_gateway.rpc.server import Call, Procedure, Program, no_args
from claudefs_gateway.rpc.xdr import PADDING, Packer, XDRError
from claudefs_gateway.rpc.xdrtypes import Arm

__all__ = ["NFS4", "Settings"]

#: Operations that may start a COMPOUND without SEQUENCE, alone.
SESSIONLESS = frozenset(
    {
        c.OP_EXCHANGE_ID,
        c.OP_CREATE_SESSION,
        c.OP_DESTROY_SESSION,
        c.OP_BIND_CONN_TO_SESSION,
        c.OP_DESTROY_CLIENTID,
    }
)
# RPC reply header (AUTH_NONE verifier) of every reply: counted in the
# session's size limits, which cover the whole RPC message (RFC 8881 §18.36).
_RPC_REPLY = 24
# A reply of SEQUENCE alone, less the tag.
_SEQUENCE_REPLY = _RPC_REPLY + 4 + 4 + 4 + 4 + 4 + 16 + 20

Handler = Callable[[CompoundState, Any], Awaitable[Arm]]
_DIGEST_BYTES = 512


def _printable(raw: bytes, limit: int = 64) -> str:
    """A client's name for itself (co_ownerid) as text safe to print: no control bytes, bounded."""
    text = raw[: limit * 4].decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# COMPOUNDs that only manage the client's own state (RFC 8881 §18.35-18.37,
# 18.50, 18.34): refusing them would keep what they free held, or cost a
# client its lease, and save no work on files.
_UNLIMITED_FIRST = frozenset(
    {
        c.OP_EXCHANGE_ID,
        c.OP_CREATE_SESSION,
        c.OP_DESTROY_SESSION,
        c.OP_DESTROY_CLIENTID,
        c.OP_BIND_CONN_TO_SESSION,
    }
)


def _rate_limited(h: CompoundHeader) -> bool:
    """
    Whether a COMPOUND goes through the request-rate limits: not one opening
    or closing a client or session, nor a SEQUENCE alone (a lease renewal).
    """
    u = h.u
    if u.remaining() < 4:
        return False
    first = int.from_bytes(u.data[u.pos : u.pos + 4], "big")
    if first in _UNLIMITED_FIRST:
        return False
    return not (h.count == 1 and first == c.OP_SEQUENCE)


def _pad(n: int) -> int:
    return n + (-n & 3)


class NFS4(SessionOps, FileOps, StateOps, V42Ops, PnfsOps):
    """
    The NFSv4.1/4.2 server (see module docstring).

    @param ctx: the vfs and the write verifier NFSv3 shares.
    @param clock: leases, callbacks, grace.
    @param grace: the grace period shared with NLM.
    @param metrics: a L{RequestMetrics} for protocol C{nfs4} (each
        operation is counted by its name).
    """

    _log = Logger()

    def __init__(
        self,
        ctx: NFSContext,
        clock: IReactorTime,
        settings: Settings | None = None,
        metrics: Any = None,
        grace: Grace | None = None,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.ctx = ctx
        #: The gateway-wide memory budget (L{claudefs_gateway.core.budget.MemoryBudget}),
        #: or None: while it is spent, a COMPOUND is refused with NFS4ERR_DELAY.
        self.budget: Any = None
        #: The request-rate limits, C{admit(address, uid)}: returns, or raises
        #: L{errors.Throttled} (answered NFS4ERR_DELAY). Set by the NFS
        #: service, as NFSv3's L{NFSContext.admit}; one token per COMPOUND.
        self.admit: Callable[[str, int | None], None] | None = None
        self.settings = s = settings or Settings()
        self.metrics = metrics
        self.timer = timer
        self.grace = grace if grace is not None else Grace(0)
        self.clients = ClientTable(
            clock,
            s.lease_secs,
            max_clients=s.max_clients,
            max_sessions=s.max_sessions_per_client,
            on_end=self._client_ended,
        )
        self.ids = StateIds(self.clients.epoch)
        self.callbacks = Callbacks(clock, s.callback_timeout)
        self.records = ClientRecords(self._get_state, self._set_state, self.grace, s.max_clients)
        self.delegations = Delegations(
            self.ids,
            self.callbacks,
            clock,
            self.client_state,
            s.lease_secs,
            s.delegations,
            s.max_open_states_per_client,
        )
        self.info = fattr.ServerInfo(
            s.lease_secs, s.io_size, s.io_size, self._uid_name, self._gid_name
        )
        self._pseudo = None
        self._pseudo_vfs = None
        self.handlers: dict[int, Handler] = {}
        for number, spec in OPS.items():
            method = getattr(self, f"op_{spec.name}", None)
            if method is not None:
                self.handlers[number] = method

    # -- plumbing ------------------------------------------------------------------------------

    @property
    def server_owner(self) -> bytes:  # type: ignore[override]
        vfs = self.ctx.vfs
        store = vfs.store_id if vfs is not None else b""
        return b"claudefs-gateway:" + store.hex().encode()

    def program(self) -> Program:
        prog = Program(c.NFS4_PROGRAM, "nfs4", None)
        prog.add(c.NFS_V4, 0, Procedure("NULL", no_args, lambda call, args: []))
        prog.add(
            c.NFS_V4,
            1,
            Procedure(
                "COMPOUND",
                read_header,
                self.proc_COMPOUND,
                # Sessions give exactly-once semantics; the DRC is not for v4.1.
                cached=False,
                # A COMPOUND may change things: it runs to its end (and into
                # its slot's reply cache) even if the connection goes.
                cancel_on_close=False,
                # A reply never exceeds the largest record (st.limit below).
                reply_size=lambda h: min(reply_size(h), self.settings.max_record),
            ),
        )
        return prog

    async def start(self) -> None:
        """Once the store is open: last run's client records, and grace if any."""
        vfs = await self.ctx.ready()
        await self.records.start(vfs.locks)

    def stop(self) -> defer.Deferred[None]:
        """
        At shutdown: the lease sweep, background copies, lock notices and
        callbacks stop; fires when the client records are on disk.
        """
        self.clients.stop()
        self.delegations.stop()
        for client in self.clients:
            for d in list(client.lock_waits.values()):
                d.cancel()
            if client.state is not None:
                for st in list(client.state.states.values()):
                    if st.job is not None:
                        st.job.cancel()
        self.callbacks.close()
        if self.pnfs is not None:
            self.pnfs.stop()
        return self.records.flushed()

    # -- cfs-gateway status ----------------------------------------------------------------------

    def describe_connection(self, conn: Any) -> dict[str, Any]:
        """
        What a connection carries for C{cfs-gateway status}, as C{ganesha_mgr}
        shows a client: each NFSv4 client with a session bound to it (client
        id, owner string, AUTH_SYS uid, lease left), its sessions, opens,
        byte-range locks, delegations and pNFS layouts, and their totals
        (C{opens}, C{locks}, C{leases} = delegations). Computed only when
        asked: one pass over the client's state, and over the layouts when
        pNFS is on. Nothing here lets someone act as the client: no verifier,
        no stateid, and of each session id (a bearer capability without
        state protection, RFC 8881 §2.10.8.3) only its first four bytes.
        An empty dict for a connection no session is bound to.
        """
        found: dict[int, Client] = {}
        minor = None
        for sid in list(getattr(conn, "nfs4_sessions", None) or ()):
            s = self.clients.sessions.get(sid)
            if s is None or not s.alive or s.client.gone:
                continue
            found.setdefault(s.client.clientid, s.client)
            minor = max(minor or 0, s.minorversion)
        if not found:
            return {}
        vfs = self.ctx.vfs
        locks = vfs.locks if vfs is not None else None
        now = self.clients.clock.seconds()
        rows = []
        totals = {"opens": 0, "locks": 0, "leases": 0}
        for client in found.values():
            row = self._describe_client(client, locks, now)
            rows.append(row)
            totals["opens"] += row["opens"]
            totals["locks"] += row["locks"]
            totals["leases"] += row["delegations"]["read"] + row["delegations"]["write"]
        return {
            **totals,
            "nfs_minor": minor,
            "state_of": "nfs4:" + ",".join(sorted(r["clientid"] for r in rows)),
            "nfs4_clients": rows,
        }

    def _describe_client(self, client: Client, locks: Any, now: float) -> dict[str, Any]:
        state = client.state
        delegs = {"read": 0, "write": 0, "recalling": 0, "revoked": 0}
        opens = lock_states = 0
        if state is not None:
            opens = len(state.opens)
            lock_states = len(state.lock_states)
            for st in state.delegs.values():
                if st.revoked:
                    continue
                delegs["write" if st.deleg_type == c.OPEN_DELEGATE_WRITE else "read"] += 1
                if st.recalling is not None or st.recall_pending:
                    delegs["recalling"] += 1
            delegs["revoked"] = len(state.revoked)
        held = waiting = 0
        if locks is not None:
            held, _, waiting = locks.counts_of("nfs4", client.lock_key)
        layouts = {"read": 0, "rw": 0, "recalling": 0}
        if self.pnfs is not None:
            for (clientid, _), ls in list(self.pnfs.by_key.items()):
                if clientid != client.clientid or ls.gone:
                    continue
                layouts["rw" if ls.writable else "read"] += 1
                if ls.recalling:
                    layouts["recalling"] += 1
        return {
            "clientid": f"{client.clientid:016x}",
            "owner": _printable(client.owner),
            "uid": client.principal.uid,
            "confirmed": client.confirmed,
            "lease_left_secs": round(max(0.0, client.expires - now), 1),
            "reclaim_complete": client.reclaim_complete,
            "sessions": [
                {
                    "id_prefix": s.id[:4].hex(),
                    "minor": s.minorversion,
                    "slots": len(s.slots),
                    "connections": len(s.conns),
                    "back_channel": s.callbacks_up,
                }
                for s in list(client.sessions.values())
                if s.alive
            ],
            "opens": opens,
            "lock_states": lock_states,
            "locks": held,
            "waiting": waiting,
            "delegations": delegs,
            "layouts": layouts,
        }

    def _get_state(self, key: str) -> defer.Deferred[bytes | None]:
        return defer.Deferred.fromCoroutine(self._get_state_async(key))

    async def _get_state_async(self, key: str) -> bytes | None:
        vfs = await self.vfs()
        got: bytes | None = await vfs.get_state(key)
        return got

    def _set_state(self, key: str, value: bytes | None) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._set_state_async(key, value))

    async def _set_state_async(self, key: str, value: bytes | None) -> None:
        vfs = await self.vfs()
        await vfs.set_state(key, value)

    def _uid_name(self, uid: int) -> bytes:
        vfs = self.ctx.vfs
        if self.settings.only_numeric_owners or vfs is None:
            return str(uid).encode()
        return vfs.users.uid_to_nfs4(uid).encode("utf-8")

    def _gid_name(self, gid: int) -> bytes:
        vfs = self.ctx.vfs
        if self.settings.only_numeric_owners or vfs is None:
            return str(gid).encode()
        return vfs.users.gid_to_nfs4(gid).encode("utf-8")

    def _client_ended(self, client: Client, why: str) -> None:
        if why == "expired" and client.confirmed:
            self._log.info(
                "NFSv4 client {clientid:x} expired: its opens and locks are released",
                clientid=client.clientid,
            )
        self.release_client(client)
        if self.pnfs is not None:
            self.pnfs.client_gone(client, why == "expired")
        if why in ("destroyed", "expired"):
            self.records.forget(client.owner)

    # -- COMPOUND --------------------------------------------------------------------------------

    def proc_COMPOUND(self, call: Call, h: CompoundHeader) -> defer.Deferred[list[bytes]]:
        return defer.Deferred.fromCoroutine(self.compound(call, h))

    @staticmethod
    def _reply(status: int, tag: bytes, count: int, parts: list[bytes]) -> list[bytes]:
        n = len(tag)
        head = (
            status.to_bytes(4, "big")
            + n.to_bytes(4, "big")
            + tag
            + PADDING[n & 3]
            + count.to_bytes(4, "big")
        )
        return [head, *parts]

    async def compound(self, call: Call, h: CompoundHeader) -> list[bytes]:
        """The COMPOUND4res of one call (see module docstring)."""
        tag = h.tag
        if call.peer.transport != "tcp":
            # RFC 8881 §2.9.1: NFSv4.1 needs a transport with congestion control.
            return self._reply(c.NFS4ERR_INVAL, tag, 0, [])
        if h.minorversion not in self.settings.minor_versions:
            return self._reply(c.NFS4ERR_MINOR_VERS_MISMATCH, tag, 0, [])
        budget = self.budget
        if h.count and (budget is not None or self.admit is not None):
            try:
                # MemoryBudget.check's test in line (as core.admission's):
                # a Python call per COMPOUND only when the budget is spent.
                if budget is not None and budget.limit and budget.used > budget.limit:
                    budget.check("nfs4")
                if self.admit is not None and _rate_limited(h):
                    cred = call.cred
                    self.admit(call.peer.host, cred.uid if cred is not None else None)
            except errors.Throttled:
                # The memory budget spent (Overloaded) or the client or user
                # over its request rate. RFC 8881 §15.1.1.3: NFS4ERR_DELAY,
                # before any operation ran (SEQUENCE included: the slot is
                # untouched, the client retries the same seqid).
                try:
                    op = h.u.u32()
                except XDRError:
                    op = c.OP_ILLEGAL
                res = op.to_bytes(4, "big") + c.NFS4ERR_DELAY.to_bytes(4, "big")
                return self._reply(c.NFS4ERR_DELAY, tag, 1, [res])
        st = CompoundState(call, h.minorversion, count=h.count)
        base = _RPC_REPLY + 4 + 4 + _pad(len(tag)) + 4
        st.limit = self.settings.max_record
        st.size = base
        out = Packer()
        status = c.NFS4_OK
        n = 0
        cached = False
        try:
            status, n, replay = await self._run_ops(st, h, out, base)
            if replay is not None:
                return [replay]
            reply = self._reply(status, tag, n, out.parts)
            cached = True
            self._cache(st, reply)
            return reply
        finally:
            if not cached:
                self._cache(st, None)

    def _cache(self, st: CompoundState, reply: list[bytes] | None) -> None:
        """Keep a reply in its slot (or mark it uncached) and free the slot."""
        slot, s = st.slot, st.session
        if slot is None or s is None:
            return
        st.slot = None
        s.client.busy -= 1
        slot.busy = False
        if reply is None:
            slot.reply = UNCACHED
            return
        size = sum(len(x) for x in reply)
        if s.alive and size + _RPC_REPLY <= s.fore.maxresponsesize_cached:
            slot.reply = b"".join(reply)
        else:
            slot.reply = UNCACHED

    async def _run_ops(
        self, st: CompoundState, h: CompoundHeader, out: Packer, base: int
    ) -> tuple[int, int, bytes | None]:
        """Run the operations; (status, results encoded, a replayed reply or None)."""
        u = h.u
        last = c.LAST_OP[st.minorversion]
        status = c.NFS4_OK
        n = 0
        for i in range(h.count):
            st.index = i
            mark = (len(out.parts), out.size)
            try:
                op = u.u32()
            except XDRError:
                self._emit(out, c.OP_ILLEGAL, Arm(c.NFS4ERR_BADXDR))
                return c.NFS4ERR_BADXDR, n + 1, None
            spec = OPS.get(op)
            if spec is None or op > last:
                self._emit(out, c.OP_ILLEGAL, Arm(c.NFS4ERR_OP_ILLEGAL))
                self._observe("ILLEGAL", 0.0, c.NFS4ERR_OP_ILLEGAL)
                return c.NFS4ERR_OP_ILLEGAL, n + 1, None
            try:
                args = spec.args.dec(u)
            except XDRError as e:
                self._log.debug(
                    "NFSv4 {op}: arguments do not decode: {why}", op=spec.name, why=str(e)
                )
                self._emit(out, op, self._error(op, c.NFS4ERR_BADXDR))
                self._observe(spec.name, 0.0, c.NFS4ERR_BADXDR)
                return c.NFS4ERR_BADXDR, n + 1, None
            started = self.timer()
            if i == 0:
                if op == c.OP_SEQUENCE:
                    res = self._sequence(st, args, h)
                    if isinstance(res, bytes):
                        return c.NFS4_OK, 0, res
                elif op in SESSIONLESS:
                    if h.count > 1:
                        res = Arm(c.NFS4ERR_NOT_ONLY_OP)
                    else:
                        res = await self._run(st, op, spec.name, args)
                else:
                    res = self._error(op, c.NFS4ERR_OP_NOT_IN_SESSION)
            elif op == c.OP_SEQUENCE:
                res = self._error(op, c.NFS4ERR_SEQUENCE_POS)
            elif op == c.OP_DESTROY_SESSION and i != h.count - 1:
                res = Arm(c.NFS4ERR_NOT_ONLY_OP)
            else:
                res = await self._run(st, op, spec.name, args)
            self._emit(out, op, res)
            n += 1
            st.size = base + out.size
            if st.limit and st.size > st.limit:
                # The reply would pass the session's limit: this operation
                # answers REP_TOO_BIG(_TO_CACHE) instead (RFC 8881 §2.10.6.4).
                del out.parts[mark[0] :]
                out.size = mark[1]
                big = c.NFS4ERR_REP_TOO_BIG_TO_CACHE if st.cachethis else c.NFS4ERR_REP_TOO_BIG
                self._emit(out, op, self._error(op, big))
                st.size = base + out.size
                self._observe(spec.name, self.timer() - started, big)
                return big, n, None
            self._observe(spec.name, self.timer() - started, res.tag)
            if res.tag != c.NFS4_OK:
                return res.tag, n, None
        return status, n, None

    @staticmethod
    def _error(op: int, status: int) -> Arm:
        spec = OPS.get(op, ILLEGAL)
        return Arm(status, [] if isinstance(spec.res, Always) else None)

    @staticmethod
    def _emit(out: Packer, op: int, res: Arm) -> None:
        out.u32(op)
        OPS.get(op, ILLEGAL).res.enc(out, res)

    def _observe(self, name: str, seconds: float, status: int) -> None:
        if self.metrics is not None:
            self.metrics.observe(
                name, seconds, None if status == c.NFS4_OK else c.status_name(status)
            )

    async def _run(self, st: CompoundState, op: int, name: str, args: Any) -> Arm:
        handler = self.handlers.get(op)
        if handler is None:
            return self._error(op, c.NFS4ERR_NOTSUPP)
        try:
            res = await handler(st, args)
        except Nfs4Error as e:
            body = e.body
            if body is None and isinstance(OPS[op].res, Always):
                body = []
            return Arm(e.status, body)
        except defer.CancelledError:
            raise
        except Exception as e:
            return self._error(op, nfs4_status(e, name))
        if isinstance(OPS[op].res, Always) and res.value is None:
            return Arm(res.tag, [])
        return res

    # -- SEQUENCE ------------------------------------------------------------------------------

    def _sequence(self, st: CompoundState, a: SequenceArgs, h: CompoundHeader) -> Arm | bytes:
        """
        RFC 8881 §18.46.3: the session, its limits and the slot; a retry's
        cached reply (bytes); else accepts the request on the slot.
        """
        s = self.clients.session(a.sessionid)
        if s is None:
            return Arm(c.NFS4ERR_BADSESSION)
        fore = s.fore
        if h.count > fore.maxoperations:
            return Arm(c.NFS4ERR_TOO_MANY_OPS)
        if h.size > fore.maxrequestsize:
            return Arm(c.NFS4ERR_REQ_TOO_BIG)
        if a.slotid > s.slots.highest:
            return Arm(c.NFS4ERR_BADSLOT)
        slot = s.slots.slots[a.slotid]
        u = h.u
        # What tells a retry from a different request on the same seqid: the
        # rest of the COMPOUND's length, operation count and first bytes (a
        # checksum of a whole 1 MiB WRITE would cost more than it tells).
        rest = u.end - u.pos
        digest = (h.count, rest, zlib.crc32(memoryview(u.data)[u.pos : u.pos + _DIGEST_BYTES]))
        if a.sequenceid == slot.seqid and (slot.busy or slot.reply is not None):
            if slot.busy:
                return Arm(c.NFS4ERR_DELAY)
            if slot.digest != digest:
                return Arm(c.NFS4ERR_SEQ_FALSE_RETRY)
            if slot.reply == UNCACHED or slot.reply is None:
                return Arm(c.NFS4ERR_RETRY_UNCACHED_REP)
            return slot.reply
        if slot.busy or a.sequenceid != (slot.seqid + 1) & 0xFFFFFFFF:
            return Arm(c.NFS4ERR_SEQ_MISORDERED)
        need = _SEQUENCE_REPLY + _pad(len(h.tag))
        if a.cachethis and fore.maxresponsesize_cached < need:
            return Arm(c.NFS4ERR_REP_TOO_BIG_TO_CACHE)
        if fore.maxresponsesize < need:
            return Arm(c.NFS4ERR_REP_TOO_BIG)
        conn = st.call.peer.conn
        if conn is not None and getattr(conn, "conn_id", id(conn)) not in s.conns:
            # RFC 8881 §2.10.3.1: without state protection, a request on an
            # unbound connection binds it to the session's fore channel.
            self.clients.bind(s, conn, False)
            self._watch(conn)
        slot.seqid = a.sequenceid
        slot.busy = True
        slot.digest = digest
        slot.reply = None
        client = s.client
        client.busy += 1
        st.session = s
        st.slot = slot
        st.slotid = a.slotid
        self.clients.renew(client)
        st.cachethis = a.cachethis
        st.limit = fore.maxresponsesize_cached if a.cachethis else fore.maxresponsesize
        flags = 0
        if s.cb_wanted and not s.callbacks_up:
            flags |= c.SEQ4_STATUS_CB_PATH_DOWN_SESSION
            if not any(x.callbacks_up for x in client.sessions.values()):
                flags |= c.SEQ4_STATUS_CB_PATH_DOWN
        if client.state is not None and client.state.revoked:
            # RFC 8881 §18.46.3: revoked delegations the client has not freed.
            flags |= c.SEQ4_STATUS_RECALLABLE_STATE_REVOKED
        return Arm(
            c.NFS4_OK,
            SequenceResok(s.id, a.sequenceid, a.slotid, s.slots.highest, s.slots.highest, flags),
        )
