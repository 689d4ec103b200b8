# -*- test-case-name: tests.nfs.v4.test_callback -*-
"""
The NFSv4.1 back channel (RFC 8881 §2.10.3.1, §20): calls from the server
to a client over a connection the client bound to its session for
callbacks - usually the very connection it sends its requests on, so no
client port needs to be reachable.

Each call is a CB_COMPOUND of CB_SEQUENCE (on back-channel slot 0, one call
at a time per session) and the callback proper: CB_NOTIFY_LOCK when a lock
a client waited for may be free, CB_OFFLOAD when an asynchronous COPY ends,
CB_RECALL once delegations exist. Credentials are the ones the client asked
for in CREATE_SESSION or BACKCHANNEL_CTL (AUTH_SYS or AUTH_NONE; a client
that offers only RPCSEC_GSS gets no callbacks). A call unanswered within
C{timeout} seconds fails, and the session reports a back-channel fault in
its next SEQUENCE reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from claudefs_gateway.core.log import Logger
from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4.clients import Session
from claudefs_gateway.nfs.v4.codec import (
    AuthSysParms,
    CbSequenceArgs,
    CompoundResult,
    decode_cb_result,
    encode_cb_compound,
)
from claudefs_gateway.rpc import message as msg
from claudefs_gateway.rpc.client import new_xid
from claudefs_gateway.rpc.message import AuthSys
from claudefs_gateway.rpc.xdr import Unpacker, XDRError

__all__ = ["Callbacks", "CallbackFailed"]


class CallbackFailed(Exception):
    """A callback could not be delivered, or the client answered it with an error."""


def _cred(session: Session) -> tuple[AuthSys | None, bool]:
    """The credential for a session's callbacks: (AUTH_SYS cred or None, usable)."""
    for parm in session.cb_sec:
        if parm.tag == c.AUTH_SYS and isinstance(parm.value, AuthSysParms):
            v = parm.value
            return AuthSys(v.stamp, v.machinename, v.uid, v.gid, tuple(v.gids)), True
        if parm.tag == c.AUTH_NONE:
            return None, True
    return None, False


class Callbacks:
    """
    Outstanding callbacks of one NFSv4 server, by XID.

    @param clock: times calls out.
    @param timeout: seconds to wait for a client's reply.
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime, timeout: float = 15.0, max_pending: int = 4096) -> None:
        self.clock = clock
        self.timeout = timeout
        self.max_pending = max_pending
        self.pending: dict[int, defer.Deferred[bytes]] = {}
        self.faults = 0

    def attach(self, conn: Any) -> None:
        """Let replies arriving on C{conn} reach their callbacks."""
        if getattr(conn, "reply_sink", None) is None:
            try:
                conn.reply_sink = self.reply
            except AttributeError:
                pass

    def reply(self, record: bytes) -> None:
        """A REPLY message arrived on some back-channel connection."""
        if len(record) < 4:
            return
        xid = int.from_bytes(record[:4], "big")
        d = self.pending.pop(xid, None)
        if d is None:
            self._log.debug("callback reply for unknown xid {xid}", xid=xid)
            return
        d.callback(record)

    def call(
        self, session: Session, ops: Sequence[tuple[int, Any]], tag: bytes = b""
    ) -> defer.Deferred[CompoundResult]:
        """
        Send C{ops} after a CB_SEQUENCE on C{session}'s back channel.

        Fires with the client's CB_COMPOUND4res; fails with
        L{CallbackFailed} (no back channel, no usable credential, an RPC
        error, an undecodable reply) or a timeout.
        """
        return defer.Deferred.fromCoroutine(self._call(session, list(ops), tag))

    async def _call(
        self, session: Session, ops: list[tuple[int, Any]], tag: bytes
    ) -> CompoundResult:
        cred, usable = _cred(session)
        if not usable:
            raise CallbackFailed("the client offered no callback security we speak")
        # One call at a time per session: the back channel uses slot 0 only.
        if session.cb_busy is None:
            session.cb_busy = defer.DeferredLock()
        lock: defer.DeferredLock = session.cb_busy
        await lock.acquire()
        try:
            if not session.alive or not session.back_conns:
                raise CallbackFailed("no back channel")
            if len(self.pending) >= self.max_pending:
                raise CallbackFailed("too many callbacks outstanding")
            conn = next(iter(session.back_conns.values()))
            seq = CbSequenceArgs(session.id, session.cb_seqid, 0, 0, False, [])
            args = encode_cb_compound(tag, session.minorversion, 0, [(c.OP_CB_SEQUENCE, seq), *ops])
            xid = new_xid()
            message = msg.encode_call(
                xid, session.cb_program, c.NFS4_CALLBACK_VERSION, c.CB_COMPOUND, args, cred
            )
            d: defer.Deferred[bytes] = defer.Deferred(lambda _: self._forget(xid))
            d.addTimeout(self.timeout, self.clock)
            self.pending[xid] = d
            conn.send_call(message)
            try:
                record = await d
            except defer.TimeoutError:
                self.faults += 1
                raise CallbackFailed("the client did not answer the callback") from None
            finally:
                self.pending.pop(xid, None)
            try:
                h = msg.parse_reply(record)
                if not h.accepted or h.stat != msg.SUCCESS:
                    raise CallbackFailed(f"callback refused: {msg.accept_stat_name(h.stat)}")
                result = decode_cb_result(Unpacker(record, h.results_at))
            except XDRError as e:
                raise CallbackFailed(f"undecodable callback reply: {e}") from None
            if result.results and result.results[0][0] == c.OP_CB_SEQUENCE:
                if result.results[0][1].tag == c.NFS4_OK:
                    session.cb_seqid = session.cb_seqid + 1 if session.cb_seqid < 0xFFFFFFFF else 1
            return result
        finally:
            lock.release()

    def _forget(self, xid: int) -> None:
        self.pending.pop(xid, None)

    def close(self) -> None:
        pending, self.pending = self.pending, {}
        for d in pending.values():
            d.cancel()
