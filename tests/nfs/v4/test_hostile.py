"""
Hostile and arbitrary input to the NFSv4 server: whatever a client sends
inside a session answers with an NFSv4 status, never a server fault, a
crash or a logged traceback.
"""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.nfs.v4 import codec
from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4.codec import SequenceArgs, encode_compound
from claudefs_gateway.rpc import message as msg
from tests.nfs.v4.harness import Harness
from tests.rpc.xdr_strategies import values

# Session management is exercised elsewhere; here every other operation.
_FUZZED = sorted(
    op
    for op in codec.OPS
    if op
    not in (
        c.OP_SEQUENCE,
        c.OP_EXCHANGE_ID,
        c.OP_CREATE_SESSION,
        c.OP_DESTROY_SESSION,
        c.OP_DESTROY_CLIENTID,
        c.OP_BIND_CONN_TO_SESSION,
    )
)


def _ops() -> st.SearchStrategy[list[tuple[int, Any]]]:
    one = st.sampled_from(_FUZZED).flatmap(
        lambda op: st.tuples(st.just(op), values(codec.OPS[op].args))
    )
    return st.lists(one, min_size=1, max_size=3)


class ArbitraryOperationTests(SynchronousTestCase):
    @settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(ops=_ops(), start=st.sampled_from(["root", "export", "file"]))
    def test_no_server_fault(self, ops: list[tuple[int, Any]], start: str) -> None:
        """Arbitrary well-formed operations answer statuses, never NFS4ERR_SERVERFAULT."""
        h = _harness()
        cl = h.cl
        prefix: list[tuple[int, Any]] = [(c.OP_PUTROOTFH, None)]
        if start != "root":
            prefix = cl.path(b"export")
        if start == "file":
            prefix = cl.path(b"export", b"f")
        res = cl.compound(prefix + ops)
        for op, r in res.results:
            self.assertNotEqual(r.tag, c.NFS4ERR_SERVERFAULT, (op, ops))
        self.assertEqual(self.flushLoggedErrors(), [])

    @given(body=st.binary(max_size=200))
    def test_garbage_after_sequence(self, body: bytes) -> None:
        """Garbage after a valid SEQUENCE answers BADXDR, OP_ILLEGAL or a decoded result."""
        h = _harness()
        cl = h.cl
        seqid = cl.slots.get(0, 0) + 1
        cl.slots[0] = seqid
        head = encode_compound(
            b"", 2, [(c.OP_SEQUENCE, SequenceArgs(cl.sessionid, seqid, 0, 0, False))]
        )
        # Claim as many operations as the body could hold, at least two.
        count = max(2, min(len(body) // 4, 30))
        data = head[:8] + struct.pack(">I", count) + head[12:] + body
        got = h.server.handle(msg.encode_call(7, c.NFS4_PROGRAM, 4, 1, data), cl.peer)  # type: ignore[attr-defined]
        assert isinstance(got, list) or got is None or hasattr(got, "addCallback")
        self.assertEqual(self.flushLoggedErrors(), [])


_H: list[Harness] = []


def _harness() -> Harness:
    """One server for all examples (a fresh one per example would dominate the run)."""
    if not _H:
        h = Harness()
        h.cl = h.client().setup()  # type: ignore[attr-defined]
        from claudefs_gateway.rpc.server import Peer

        h.cl.peer = Peer("127.0.0.1", 700, "tcp", 1 << 30, h.cl.conn)  # type: ignore[attr-defined]
        r = h.cl.compound(h.cl.path(b"export") + [h.cl.open_create(b"f")])  # type: ignore[attr-defined]
        assert r.status == c.NFS4_OK, r
        _H.append(h)
    return _H[0]
