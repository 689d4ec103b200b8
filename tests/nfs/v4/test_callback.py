"""The NFSv4.1 back channel (L{claudefs_gateway.nfs.v4.callback})."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4.callback import CallbackFailed
from claudefs_gateway.nfs.v4.codec import (
    CbNotifyLockArgs,
    CbSequenceResok,
    StateOwner,
    decode_cb_compound,
    encode_cb_result,
)
from claudefs_gateway.rpc import message as msg
from claudefs_gateway.rpc.xdrtypes import Arm
from tests.nfs.v4.harness import Harness


class CallbackTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()
        self.cl = self.h.client().setup()
        self.session = self.h.nfs4.clients.sessions[self.cl.sessionid]
        self.conn = self.cl.conn  # type: ignore[attr-defined]
        self.ops = [(c.OP_CB_NOTIFY_LOCK, CbNotifyLockArgs(b"fh", StateOwner(1, b"o")))]

    def _answer(self, status: int = 0) -> None:
        call = msg.parse_call(self.conn.sent[-1])
        _, _, _, ops = decode_cb_compound(self.conn.sent[-1][call.args_at :])
        seq = Arm(
            status,
            CbSequenceResok(self.cl.sessionid, ops[0][1].sequenceid, 0, 0, 0)
            if status == 0
            else None,
        )
        results = [(c.OP_CB_SEQUENCE, seq)] + (
            [(c.OP_CB_NOTIFY_LOCK, Arm(0))] if status == 0 else []
        )
        self.h.nfs4.callbacks.reply(
            msg.reply_success(call.xid) + encode_cb_result(status, b"", results)
        )

    def test_call_and_reply(self) -> None:
        """A callback is CB_SEQUENCE then the operation, with the client's credentials; the slot advances."""
        d = self.h.nfs4.callbacks.call(self.session, self.ops)
        call = msg.parse_call(self.conn.sent[0])
        self.assertEqual(
            (call.prog, call.vers, call.proc, call.flavor), (0x40000000, 1, 1, c.AUTH_SYS)
        )
        self._answer()
        result = self.successResultOf(d)
        self.assertEqual([op for op, _ in result.results], [c.OP_CB_SEQUENCE, c.OP_CB_NOTIFY_LOCK])
        self.assertEqual(self.session.cb_seqid, 2)

    def test_one_at_a_time(self) -> None:
        """The back channel uses one slot: a second callback waits for the first."""
        first = self.h.nfs4.callbacks.call(self.session, self.ops)
        second = self.h.nfs4.callbacks.call(self.session, self.ops)
        self.assertEqual(len(self.conn.sent), 1)
        self._answer()
        self.successResultOf(first)
        self.assertEqual(len(self.conn.sent), 2)
        self._answer()
        self.successResultOf(second)

    def test_timeout(self) -> None:
        d = self.h.nfs4.callbacks.call(self.session, self.ops)
        self.h.clock.advance(self.h.nfs4.settings.callback_timeout + 1)
        self.failureResultOf(d, CallbackFailed)
        self.assertEqual(self.h.nfs4.callbacks.pending, {})
        self.assertEqual(self.session.cb_seqid, 1)

    def test_refused_sequence_keeps_seqid(self) -> None:
        d = self.h.nfs4.callbacks.call(self.session, self.ops)
        self._answer(status=c.NFS4ERR_SEQ_MISORDERED)
        self.successResultOf(d)
        self.assertEqual(self.session.cb_seqid, 1)

    def test_rpc_error(self) -> None:
        d = self.h.nfs4.callbacks.call(self.session, self.ops)
        call = msg.parse_call(self.conn.sent[0])
        self.h.nfs4.callbacks.reply(msg.reply_error(call.xid, msg.PROG_UNAVAIL))
        self.failureResultOf(d, CallbackFailed)

    def test_garbage_reply(self) -> None:
        d = self.h.nfs4.callbacks.call(self.session, self.ops)
        call = msg.parse_call(self.conn.sent[0])
        self.h.nfs4.callbacks.reply(msg.reply_success(call.xid) + b"\0\0")
        self.failureResultOf(d, CallbackFailed)
        self.h.nfs4.callbacks.reply(b"\0\0\0\x05short")

    def test_no_usable_credentials(self) -> None:
        """A client offering only RPCSEC_GSS for callbacks gets none."""
        from claudefs_gateway.nfs.v4.codec import GssCbHandles

        self.session.cb_sec = [Arm(c.RPCSEC_GSS, GssCbHandles(1, b"", b""))]
        self.failureResultOf(self.h.nfs4.callbacks.call(self.session, self.ops), CallbackFailed)

    def test_no_back_channel(self) -> None:
        self.conn.close()
        self.failureResultOf(self.h.nfs4.callbacks.call(self.session, self.ops), CallbackFailed)
