# -*- test-case-name: tests.nfs.test_nlm -*-
"""
NLM version 4 (X/Open XNFS "Network Lock Manager", the version NFSv3 clients
speak), program 100021, through the vfs's cross-protocol lock table: an NLM
lock refuses an SMB or NFSv4 lock on the same bytes and the reverse
(C{docs/locks.rst}).

Procedures: TEST, LOCK (blocking or not), CANCEL, UNLOCK, SHARE, UNSHARE,
NM_LOCK, FREE_ALL, the asynchronous *_MSG forms (whose results go back as
*_RES calls to the client's lock manager) and GRANTED_RES. A client's
C{GRANTED} call to the server is refused (DENIED): it is the server that
grants.

Owners and clients: a lock belongs to C{LockOwner("nlm", caller_name,
svid + oh)} (POSIX semantics); C{caller_name} is the unit FREE_ALL and a
client's reboot (SM_NOTIFY) release.

Blocking locks: a LOCK with C{block} that cannot be granted now answers
NLM4_BLOCKED and waits in the table; when granted, the gateway calls the
client's GRANTED procedure (or GRANTED_MSG when the request came as
LOCK_MSG), retrying a few times; a client that cannot be reached or that
no longer wants the lock has it unlocked again. A retransmitted blocking
LOCK for the same owner and range answers BLOCKED without queueing twice;
CANCEL withdraws the request.

Grace: after a restart the table grants only reclaims for
C{nfs.nlm_grace_secs} (see L{claudefs_gateway.nfs.nsm}); a non-reclaim LOCK,
NM_LOCK, SHARE or TEST answers DENIED_GRACE_PERIOD, and so does a reclaim
outside grace (as Linux knfsd: a lock not reclaimed in time may be lost).
UNLOCK, CANCEL and UNSHARE work throughout.

Locks are advisory: NLM takes no part in READ and WRITE, and needs only that
the client may use the export (its network rules), not file permissions.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.python.failure import Failure

from claudefs_gateway import errors
from claudefs_gateway.core.log import Logger
from claudefs_gateway.interfaces import ILockTable
from claudefs_gateway.nfs.context import NFSContext
from claudefs_gateway.nfs.errors import NLM4, nlm4_name, nlm4_status
from claudefs_gateway.rpc.server import Call, Procedure, Program, no_args
from claudefs_gateway.rpc.xdr import Packer, Unpacker, XDRError
from claudefs_gateway.vfs.leases import Why
from claudefs_gateway.vfs.locks import Lock, LockOwner, ShareToken

__all__ = ["NLM_PROGRAM", "NLM_V4", "NLM", "NlmLock", "encode_lock", "encode_lockargs"]

NLM_PROGRAM = 100021
NLM_V4 = 4
LM_MAXSTRLEN = 1024
MAXNETOBJ = 1024

NULL, TEST, LOCK, CANCEL, UNLOCK, GRANTED = range(6)
TEST_MSG, LOCK_MSG, CANCEL_MSG, UNLOCK_MSG, GRANTED_MSG = range(6, 11)
TEST_RES, LOCK_RES, CANCEL_RES, UNLOCK_RES, GRANTED_RES = range(11, 16)
SHARE, UNSHARE, NM_LOCK, FREE_ALL = 20, 21, 22, 23

# fsh4_access and fsh4_mode (deny) as share-reservation modes.
_ACCESS = {
    0: frozenset(),
    1: frozenset({"read"}),
    2: frozenset({"write"}),
    3: frozenset({"read", "write"}),
}
_DENY = _ACCESS

_SVID = struct.Struct(">i")


@attrs.frozen(slots=True)
class NlmLock:
    """nlm4_lock."""

    caller_name: bytes
    fh: bytes
    oh: bytes
    svid: int
    offset: int
    length: int


@attrs.frozen(slots=True)
class LockArgs:
    cookie: bytes
    block: bool
    exclusive: bool
    lock: NlmLock
    reclaim: bool = False
    state: int = 0


@attrs.frozen(slots=True)
class ShareArgs:
    cookie: bytes
    caller_name: bytes
    fh: bytes
    oh: bytes
    mode: int
    access: int
    reclaim: bool


def dec_lock(u: Unpacker) -> NlmLock:
    return NlmLock(
        u.string(LM_MAXSTRLEN),
        u.opaque(MAXNETOBJ),
        u.opaque(MAXNETOBJ),
        u.i32(),
        u.u64(),
        u.u64(),
    )


def encode_lock(p: Packer, lock: NlmLock) -> None:
    p.string(lock.caller_name)
    p.opaque(lock.fh)
    p.opaque(lock.oh)
    p.i32(lock.svid)
    p.u64(lock.offset)
    p.u64(lock.length)


def dec_lockargs(u: Unpacker) -> LockArgs:
    cookie = u.opaque(MAXNETOBJ)
    block = u.bool()
    exclusive = u.bool()
    lock = dec_lock(u)
    return LockArgs(cookie, block, exclusive, lock, u.bool(), u.i32())


def encode_lockargs(a: LockArgs) -> bytes:
    p = Packer()
    p.opaque(a.cookie)
    p.bool(a.block)
    p.bool(a.exclusive)
    encode_lock(p, a.lock)
    p.bool(a.reclaim)
    p.i32(a.state)
    return p.bytes()


def dec_cancargs(u: Unpacker) -> LockArgs:
    cookie = u.opaque(MAXNETOBJ)
    block = u.bool()
    exclusive = u.bool()
    return LockArgs(cookie, block, exclusive, dec_lock(u))


def dec_testargs(u: Unpacker) -> LockArgs:
    cookie = u.opaque(MAXNETOBJ)
    exclusive = u.bool()
    return LockArgs(cookie, False, exclusive, dec_lock(u))


def encode_testargs(cookie: bytes, exclusive: bool, lock: NlmLock) -> bytes:
    p = Packer()
    p.opaque(cookie)
    p.bool(exclusive)
    encode_lock(p, lock)
    return p.bytes()


def dec_unlockargs(u: Unpacker) -> LockArgs:
    cookie = u.opaque(MAXNETOBJ)
    return LockArgs(cookie, False, False, dec_lock(u))


def dec_shareargs(u: Unpacker) -> ShareArgs:
    cookie = u.opaque(MAXNETOBJ)
    name = u.string(LM_MAXSTRLEN)
    fh = u.opaque(MAXNETOBJ)
    oh = u.opaque(MAXNETOBJ)
    mode = u.u32()
    access = u.u32()
    if mode > 3 or access > 3:
        raise XDRError(f"fsh4 mode {mode} or access {access}")
    return ShareArgs(cookie, name, fh, oh, mode, access, u.bool())


def dec_notify(u: Unpacker) -> tuple[bytes, int]:
    return u.string(LM_MAXSTRLEN), u.i32()


def dec_res(u: Unpacker) -> tuple[bytes, int]:
    return u.opaque(MAXNETOBJ), u.u32()


def res(cookie: bytes, stat: int) -> list[bytes]:
    """nlm4_res."""
    p = Packer()
    p.opaque(cookie)
    p.u32(stat)
    return p.chunks()


def owner_of(lock: NlmLock) -> LockOwner:
    return LockOwner("nlm", lock.caller_name, _SVID.pack(lock.svid) + lock.oh)


def _holder(p: Packer, held: Lock) -> None:
    """nlm4_holder of a lock in the table (another protocol's owner: svid 0, no oh)."""
    owner = held.owner
    if owner.protocol == "nlm" and len(owner.owner) >= 4:
        svid = _SVID.unpack_from(owner.owner)[0]
        oh = owner.owner[4:]
    else:
        svid, oh = 0, b""
    p.bool(held.exclusive)
    p.i32(svid)
    p.opaque(oh)
    p.u64(held.start)
    p.u64(held.length)


@attrs.define(eq=False)
class Pending:
    """A blocking LOCK waiting in the table."""

    key: tuple[Any, ...]
    args: LockArgs
    host: str
    via_msg: bool
    deferred: defer.Deferred[Lock] | None = None


class NLM:
    """
    The NLM v4 program.

    @param callbacks: has C{call(host, prog, vers, proc, args) -> Deferred[Unpacker]}
        (L{RPCCallbacks}).
    @param monitor: C{monitor(caller_name, client_host, server_host)} records
        a client that holds locks, for SM_NOTIFY after a restart.
    """

    _log = Logger()

    def __init__(
        self,
        ctx: NFSContext,
        callbacks: Any,
        metrics: Any = None,
        monitor: Callable[[bytes, str, str | None], None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.callbacks = callbacks
        self.metrics = metrics
        self.monitor = monitor
        # Told when a client's locks were all released (FREE_ALL, SM_NOTIFY).
        self.forgotten: Callable[[bytes], None] | None = None
        self.pending: dict[tuple[Any, ...], Pending] = {}
        self.shares: dict[tuple[LockOwner, int], list[ShareToken]] = {}
        # GRANTED_MSG callbacks awaiting the client's GRANTED_RES, by cookie.
        self.granted_msgs: dict[bytes, tuple[int, LockOwner, int, int]] = {}
        self.callbacks_in_flight: set[defer.Deferred[Any]] = set()

    def program(self) -> Program:
        prog = Program(NLM_PROGRAM, "nlm", self.metrics)
        v = NLM_V4

        def add(n: int, name: str, decode: Any, handle: Any) -> None:
            prog.add(v, n, Procedure(name, decode, handle, cancel_on_close=False))

        add(NULL, "NULL", no_args, lambda call, args: [])
        add(TEST, "TEST", dec_testargs, self._sync(self._test))
        add(LOCK, "LOCK", dec_lockargs, self._sync(self._lock))
        add(CANCEL, "CANCEL", dec_cancargs, self._sync(self._cancel))
        add(UNLOCK, "UNLOCK", dec_unlockargs, self._sync(self._unlock))
        add(GRANTED, "GRANTED", dec_testargs, self._granted_to_server)
        add(TEST_MSG, "TEST_MSG", dec_testargs, self._msg(self._test, TEST_RES))
        add(LOCK_MSG, "LOCK_MSG", dec_lockargs, self._msg(self._lock, LOCK_RES))
        add(CANCEL_MSG, "CANCEL_MSG", dec_cancargs, self._msg(self._cancel, CANCEL_RES))
        add(UNLOCK_MSG, "UNLOCK_MSG", dec_unlockargs, self._msg(self._unlock, UNLOCK_RES))
        add(GRANTED_MSG, "GRANTED_MSG", dec_testargs, lambda call, args: [])
        for n, name in (
            (TEST_RES, "TEST_RES"),
            (LOCK_RES, "LOCK_RES"),
            (CANCEL_RES, "CANCEL_RES"),
            (UNLOCK_RES, "UNLOCK_RES"),
        ):
            add(n, name, no_args, lambda call, args: [])
        add(GRANTED_RES, "GRANTED_RES", dec_res, self._granted_res)
        add(SHARE, "SHARE", dec_shareargs, self._deferred(self._share))
        add(UNSHARE, "UNSHARE", dec_shareargs, self._deferred(self._unshare))
        add(NM_LOCK, "NM_LOCK", dec_lockargs, self._sync(self._nm_lock))
        add(FREE_ALL, "FREE_ALL", dec_notify, self._free_all)
        return prog

    # -- plumbing ---------------------------------------------------------------

    def _deferred(self, method: Any) -> Any:
        def handle(call: Call, args: Any) -> defer.Deferred[list[bytes]]:
            return defer.Deferred.fromCoroutine(method(call, args))

        return handle

    def _sync(self, method: Any) -> Any:
        """A procedure answering with its result (nlm4_res or nlm4_testres)."""

        async def run(call: Call, args: LockArgs) -> list[bytes]:
            stat, extra = await method(call, args, False)
            if stat != NLM4.GRANTED and stat != NLM4.BLOCKED:
                call.status = nlm4_name(stat)
            return [*res(args.cookie, stat), *extra]

        return self._deferred(run)

    def _msg(self, method: Any, res_proc: int) -> Any:
        """An asynchronous *_MSG procedure: void reply now, the result as a *_RES call."""

        async def run(call: Call, args: LockArgs) -> list[bytes]:
            stat, extra = await method(call, args, True)
            if stat != NLM4.GRANTED and stat != NLM4.BLOCKED:
                call.status = nlm4_name(stat)
            body = b"".join([*res(args.cookie, stat), *extra])
            self._callback(call.peer.host, res_proc, body, f"proc {res_proc}")
            return []

        return self._deferred(run)

    def _callback(self, host: str, proc: int, body: bytes, what: str) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = self.callbacks.call(host, NLM_PROGRAM, NLM_V4, proc, body)
        self.callbacks_in_flight.add(d)

        def done(result: Any) -> Any:
            self.callbacks_in_flight.discard(d)
            return result

        d.addBoth(done)
        d.addErrback(self._callback_failed, host, what)
        return d

    def _callback_failed(self, f: Failure, host: str, what: str) -> None:
        self._log.warn(
            "NLM {what} to {host} failed: {why}", what=what, host=host, why=f.getErrorMessage()
        )

    async def _target(self, call: Call, fh: bytes) -> tuple[ILockTable, int]:
        vfs, export, a, caller = await self.ctx.file(call, fh)
        return vfs.locks, a.ino

    def _fail(self, e: BaseException, proc: str) -> int:
        if isinstance(e, defer.CancelledError):
            raise e
        return nlm4_status(e, proc)

    def _note(self, call: Call, name: bytes) -> None:
        if self.monitor is not None:
            conn = call.peer.conn
            server = None
            if conn is not None and conn.transport is not None:
                server = getattr(conn.transport.getHost(), "host", None)
            self.monitor(name, call.peer.host, server)

    # -- TEST -------------------------------------------------------------------

    async def _test(self, call: Call, a: LockArgs, via_msg: bool) -> tuple[int, list[bytes]]:
        try:
            locks, ino = await self._target(call, a.lock.fh)
            if locks.in_grace:
                return NLM4.DENIED_GRACE_PERIOD, []
            held = locks.test(ino, owner_of(a.lock), a.lock.offset, a.lock.length, a.exclusive)
        except Exception as e:
            return self._fail(e, "TEST"), []
        if held is None:
            return NLM4.GRANTED, []
        p = Packer()
        _holder(p, held)
        return NLM4.DENIED, p.chunks()

    # -- LOCK -------------------------------------------------------------------

    async def _nm_lock(self, call: Call, a: LockArgs, via_msg: bool) -> tuple[int, list[bytes]]:
        return await self._lock(call, attrs.evolve(a, block=False), via_msg, monitored=False)

    async def _lock(
        self, call: Call, a: LockArgs, via_msg: bool, monitored: bool = True
    ) -> tuple[int, list[bytes]]:
        lk = a.lock
        try:
            locks, ino = await self._target(call, lk.fh)
            if a.reclaim and not locks.in_grace:
                return NLM4.DENIED_GRACE_PERIOD, []
            owner = owner_of(lk)
            if monitored:
                self._note(call, lk.caller_name)
            key = (owner, ino, lk.offset, lk.length, a.exclusive)
            if key in self.pending:
                return NLM4.BLOCKED, []
            vfs = self.ctx.vfs
            if vfs is not None and vfs.leases.busy(ino):
                # Another client caching writes may hold locks in its cache
                # too: it flushes them before this lock is decided.
                await vfs.leases.recall(ino, Why.LOCK)
            waits: defer.Deferred[None] = defer.Deferred()

            def decided() -> None:
                if not waits.called:
                    waits.callback(None)

            d = locks.lock(
                ino,
                owner,
                lk.offset,
                lk.length,
                a.exclusive,
                wait=a.block,
                reclaim=a.reclaim,
                on_wait=decided,
            )
        except Exception as e:
            return self._fail(e, "LOCK"), []
        if a.block and not d.called and not waits.called:
            # A table shared through a meta server decides later (vfs/shared.py):
            # BLOCKED only once the request waits there, since NLM cannot tell a
            # blocked client of a deadlock found afterwards (NLM4_DEADLCK is a
            # reply, not a callback). Meanwhile a retransmission is BLOCKED.
            outcome: list[Any] = []

            def settle(result: Any) -> Any:
                if waits.called:
                    return result  # it waits: the GRANTED callback takes it on
                outcome.append(result)
                waits.callback(None)
                return None

            deciding = Pending(key, a, call.peer.host, via_msg, d)
            self.pending[key] = deciding
            d.addBoth(settle)
            await waits
            if self.pending.get(key) is deciding:
                del self.pending[key]
            if outcome:
                if not isinstance(outcome[0], Failure):
                    return NLM4.GRANTED, []
                if outcome[0].check(defer.CancelledError):
                    return NLM4.DENIED, []  # cancelled (NLM CANCEL, released) meanwhile
                assert outcome[0].value is not None
                return self._fail(outcome[0].value, "LOCK"), []
        if d.called:
            out: list[Any] = []
            d.addBoth(out.append)
            if isinstance(out[0], Failure):
                assert out[0].value is not None
                return self._fail(out[0].value, "LOCK"), []
            return NLM4.GRANTED, []
        if not a.block:
            # A table shared through a meta server answers later (vfs/shared.py).
            try:
                await d
            except Exception as e:
                return self._fail(e, "LOCK"), []
            return NLM4.GRANTED, []
        pending = Pending(key, a, call.peer.host, via_msg, d)
        self.pending[key] = pending
        d.addCallbacks(
            self._granted, self._wait_ended, callbackArgs=(pending,), errbackArgs=(pending,)
        )
        return NLM4.BLOCKED, []

    def _granted(self, lock: Lock, pending: Pending) -> None:
        """A blocked request got its lock: tell the client (GRANTED callback)."""
        self.pending.pop(pending.key, None)
        a = pending.args
        body = encode_testargs(a.cookie, a.exclusive, a.lock)
        owner, ino = pending.key[0], pending.key[1]
        if pending.via_msg:
            self.granted_msgs[a.cookie] = (ino, owner, a.lock.offset, a.lock.length)
            while len(self.granted_msgs) > 4096:
                self.granted_msgs.pop(next(iter(self.granted_msgs)))
            sent = self._callback(pending.host, GRANTED_MSG, body, "GRANTED_MSG")

            def delivered(u: Any) -> None:
                if u is None:
                    self.granted_msgs.pop(a.cookie, None)
                    self._release(ino, owner, a.lock, "the client could not be told")

            sent.addCallback(delivered)
            return
        d = self._callback(pending.host, GRANTED, body, "GRANTED")

        def answered(u: Any) -> None:
            if u is None:
                self._release(ino, owner, a.lock, "the client could not be told")
                return
            _, stat = dec_res(u)
            if stat != NLM4.GRANTED:
                self._release(ino, owner, a.lock, "the client refused the grant")

        d.addCallback(answered)

    def _release(self, ino: int, owner: LockOwner, lk: NlmLock, why: str) -> None:
        vfs = self.ctx.vfs
        if vfs is None or vfs.locks is None:
            return
        self._log.info("unlocking a granted NLM lock: {why}", why=why)
        try:
            vfs.locks.unlock(ino, owner, lk.offset, lk.length)
        except errors.FSError:
            self._log.failure("unlocking after a failed GRANTED callback")

    def _wait_ended(self, f: Failure, pending: Pending) -> None:
        self.pending.pop(pending.key, None)
        if not f.check(defer.CancelledError, errors.Stale):
            self._log.failure("blocked NLM lock request failed", f)

    def _granted_to_server(self, call: Call, a: LockArgs) -> list[bytes]:
        call.status = nlm4_name(NLM4.DENIED)
        return res(a.cookie, NLM4.DENIED)

    def _granted_res(self, call: Call, args: tuple[bytes, int]) -> list[bytes]:
        cookie, stat = args
        got = self.granted_msgs.pop(cookie, None)
        if got is not None and stat != NLM4.GRANTED:
            ino, owner, offset, length = got
            vfs = self.ctx.vfs
            if vfs is not None and vfs.locks is not None:
                vfs.locks.unlock(ino, owner, offset, length)
        return []

    # -- CANCEL and UNLOCK -----------------------------------------------------------

    async def _cancel(self, call: Call, a: LockArgs, via_msg: bool) -> tuple[int, list[bytes]]:
        try:
            locks, ino = await self._target(call, a.lock.fh)
        except Exception as e:
            return self._fail(e, "CANCEL"), []
        lk = a.lock
        pending = self.pending.pop((owner_of(lk), ino, lk.offset, lk.length, a.exclusive), None)
        if pending is not None and pending.deferred is not None:
            pending.deferred.cancel()
        return NLM4.GRANTED, []

    async def _unlock(self, call: Call, a: LockArgs, via_msg: bool) -> tuple[int, list[bytes]]:
        lk = a.lock
        try:
            locks, ino = await self._target(call, lk.fh)
            locks.unlock(ino, owner_of(lk), lk.offset, lk.length)
        except Exception as e:
            return self._fail(e, "UNLOCK"), []
        return NLM4.GRANTED, []

    # -- SHARE and UNSHARE ------------------------------------------------------------

    def _share_res(self, call: Call, cookie: bytes, stat: int) -> list[bytes]:
        if stat != NLM4.GRANTED:
            call.status = nlm4_name(stat)
        p = Packer()
        p.opaque(cookie)
        p.u32(stat)
        p.i32(0)
        return p.chunks()

    async def _share(self, call: Call, a: ShareArgs) -> list[bytes]:
        try:
            locks, ino = await self._target(call, a.fh)
            if a.reclaim and not locks.in_grace:
                return self._share_res(call, a.cookie, NLM4.DENIED_GRACE_PERIOD)
            owner = LockOwner("nlm", a.caller_name, a.oh)
            self._note(call, a.caller_name)
            token = locks.open_share(
                ino, owner, _ACCESS[a.access], _DENY[a.mode], reclaim=a.reclaim
            )
        except Exception as e:
            return self._share_res(call, a.cookie, self._fail(e, "SHARE"))
        try:
            # Several gateways: the meta server decides (NLM4_DENIED if another
            # gateway's open got there first).
            await locks.settle_share(token)
        except Exception as e:
            locks.close_share(token)
            return self._share_res(call, a.cookie, self._fail(e, "SHARE"))
        tokens = self.shares.setdefault((owner, ino), [])
        tokens[:] = [t for t in tokens if not t.closed]
        tokens.append(token)
        return self._share_res(call, a.cookie, NLM4.GRANTED)

    async def _unshare(self, call: Call, a: ShareArgs) -> list[bytes]:
        try:
            locks, ino = await self._target(call, a.fh)
        except Exception as e:
            return self._share_res(call, a.cookie, self._fail(e, "UNSHARE"))
        owner = LockOwner("nlm", a.caller_name, a.oh)
        tokens = [t for t in self.shares.get((owner, ino), []) if not t.closed]
        want = (_ACCESS[a.access], _DENY[a.mode])
        exact = [t for t in tokens if (t.access, t.deny) == want]
        # The open with exactly these modes, else every open of this owner on the file.
        for t in exact[:1] or tokens:
            locks.close_share(t)
        left = [t for t in tokens if not t.closed]
        if left:
            self.shares[(owner, ino)] = left
        else:
            self.shares.pop((owner, ino), None)
        return self._share_res(call, a.cookie, NLM4.GRANTED)

    # -- clients going away -------------------------------------------------------------

    def _free_all(self, call: Call, args: tuple[bytes, int]) -> list[bytes]:
        name, _state = args
        self.forget_client(name)
        return []

    def forget_client(self, name: bytes) -> None:
        """Release everything a client holds or waits for (FREE_ALL, SM_NOTIFY)."""
        vfs = self.ctx.vfs
        for key, pending in list(self.pending.items()):
            if key[0].client == name and pending.deferred is not None:
                pending.deferred.cancel()
        if vfs is not None and vfs.locks is not None:
            vfs.locks.release_client("nlm", name)
        for key in [k for k in self.shares if k[0].client == name]:
            del self.shares[key]
        if self.forgotten is not None:
            self.forgotten(name)
        self._log.info(
            "released the NLM locks of client {name}", name=name.decode("utf-8", "replace")
        )

    def close(self) -> None:
        """Stop waiting: cancel blocked requests and callbacks (the gateway stops)."""
        for pending in list(self.pending.values()):
            if pending.deferred is not None:
                pending.deferred.cancel()
        for d in list(self.callbacks_in_flight):
            d.cancel()
