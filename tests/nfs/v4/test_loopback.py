"""
NFSv4.1 over real TCP: the NFS front end of the service tree on port 0 with
the in-tree client, the back channel on the client's own connection, the
portmapper's view, and the NFSv4 metrics.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from claudefs_gateway import service
from claudefs_gateway.core import config as cfg
from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4.codec import (
    CbSequenceResok,
    LockArgs,
    LockuArgs,
    OpenToLockOwner,
    ReadArgs,
    StateId,
    StateOwner,
    WriteArgs,
    decode_cb_compound,
    encode_cb_result,
)
from claudefs_gateway.rpc import message as msg
from claudefs_gateway.rpc.client import connect_tcp
from claudefs_gateway.rpc.message import AuthSys
from claudefs_gateway.rpc.portmap import PMAP_PROG, decode_dump_v2
from claudefs_gateway.rpc.xdrtypes import Arm
from tests.nfs.test_service import LOOPBACK, nfs_of
from tests.nfs.v4.client import V4Client

CURRENT = StateId(1, bytes(12))


class LoopbackTests(TestCase):
    timeout = 30

    async def start(self) -> dict[str, int]:
        data = os.path.abspath(self.mktemp())
        os.makedirs(data)
        self.registry = CollectorRegistry()
        config = cfg.loads(LOOPBACK.format(data=data, extra=""))
        root = service.build(config, reactor, ["nfs"], strict=True, registry=self.registry)
        root.privilegedStartService()
        root.startService()
        self.addCleanup(root.stopService)
        self.nfs = nfs_of(root)
        return {label: svc.bound_port for label, svc in root.listeners().items()}

    async def client(self, port: int) -> tuple[V4Client, Any]:
        conn = await connect_tcp(reactor, "127.0.0.1", port)
        self.addCleanup(conn.close)
        cred = AuthSys(0, b"loopback", 0, 0, ())

        def send(prog: int, vers: int, proc: int, args: bytes) -> Any:
            return conn.call(prog, vers, proc, args, cred)

        return V4Client(send), conn

    async def setup(self, cl: V4Client, owner: bytes) -> None:
        self.assertEqual((await cl.exchange_id(owner)).status, c.NFS4_OK)
        self.assertEqual((await cl.create_session()).status, c.NFS4_OK)
        from claudefs_gateway.nfs.v4.codec import ReclaimCompleteArgs

        r = await cl.compound([(c.OP_RECLAIM_COMPLETE, ReclaimCompleteArgs(False))])
        self.assertEqual(r.status, c.NFS4_OK)

    async def test_mount_write_read(self) -> None:
        """A client walks to the export, creates, writes and reads a file over TCP."""
        ports = await self.start()
        cl, _ = await self.client(ports["nfs"])
        await self.setup(cl, b"loop")
        r = await cl.compound(
            cl.path(b"export")
            + [
                cl.open_create(b"hello"),
                (c.OP_WRITE, WriteArgs(CURRENT, 0, c.FILE_SYNC4, b"over tcp")),
                (c.OP_READ, ReadArgs(CURRENT, 0, 100)),
            ]
        )
        self.assertEqual(r.status, c.NFS4_OK)
        self.assertEqual(r.last(c.OP_READ).data, b"over tcp")
        text = _metrics(self.registry)
        self.assertIn('gateway_requests_total{op="OPEN",protocol="nfs4"}', text)

    async def test_portmapper_names_v4_over_tcp_only(self) -> None:
        ports = await self.start()
        conn = await connect_tcp(reactor, "127.0.0.1", ports["portmap"])
        self.addCleanup(conn.close)
        got = decode_dump_v2(await conn.call(PMAP_PROG, 2, 4))
        self.assertIn((100003, 4, 6, ports["nfs"]), got)
        self.assertNotIn((100003, 4, 17, ports["nfs"]), got)

    async def test_notify_lock_on_the_clients_connection(self) -> None:
        """CB_NOTIFY_LOCK reaches a waiting client over its own connection, and it answers."""
        ports = await self.start()
        a, _ = await self.client(ports["nfs"])
        b, bconn = await self.client(ports["nfs"])
        await self.setup(a, b"holder")
        await self.setup(b, b"waiter")
        notified: defer.Deferred[Any] = defer.Deferred()

        def on_call(record: bytes) -> bytes:
            call = msg.parse_call(record)
            _, _, _, ops = decode_cb_compound(record[call.args_at :])
            notified.callback(ops)
            seq = Arm(0, CbSequenceResok(b.sessionid, ops[0][1].sequenceid, 0, 0, 0))
            return msg.reply_success(call.xid) + encode_cb_result(
                0, b"", [(c.OP_CB_SEQUENCE, seq), (c.OP_CB_NOTIFY_LOCK, Arm(0))]
            )

        bconn.on_call = on_call
        r = await a.compound(cl_open(a, b"locked"))
        sid_a = r.last(c.OP_OPEN).stateid
        fh = r.last(c.OP_GETFH)
        lock = OpenToLockOwner(0, sid_a, 0, StateOwner(0, b"la"))
        r = await a.compound(
            [a.putfh(fh), (c.OP_LOCK, LockArgs(c.WRITE_LT, False, 0, 2**64 - 1, Arm(True, lock)))]
        )
        lsid = r.last()
        r = await b.compound(cl_open(b, b"locked", create=False))
        sid_b = r.last(c.OP_OPEN).stateid
        want = OpenToLockOwner(0, sid_b, 0, StateOwner(0, b"lb"))
        r = await b.compound(
            [b.putfh(fh), (c.OP_LOCK, LockArgs(c.WRITEW_LT, False, 0, 10, Arm(True, want)))]
        )
        self.assertEqual(r.status, c.NFS4ERR_DENIED)
        await a.compound([a.putfh(fh), (c.OP_LOCKU, LockuArgs(c.WRITE_LT, 0, lsid, 0, 2**64 - 1))])
        ops = await notified
        self.assertEqual([op for op, _ in ops], [c.OP_CB_SEQUENCE, c.OP_CB_NOTIFY_LOCK])
        self.assertEqual(ops[1][1].lock_owner.owner, b"lb")
        r = await b.compound(
            [b.putfh(fh), (c.OP_LOCK, LockArgs(c.WRITE_LT, False, 0, 10, Arm(True, want)))]
        )
        self.assertEqual(r.status, c.NFS4_OK)


def cl_open(cl: V4Client, name: bytes, create: bool = True) -> list[tuple[int, Any]]:
    op = (
        cl.open_create(name, access=c.OPEN4_SHARE_ACCESS_BOTH)
        if create
        else cl.open_existing(name, access=c.OPEN4_SHARE_ACCESS_BOTH)
    )
    return cl.path(b"export") + [op, (c.OP_GETFH, None)]


def _metrics(registry: Any) -> str:
    from prometheus_client import generate_latest

    return str(generate_latest(registry).decode())
