"""
NLM over real sockets: a blocked lock is granted through a real GRANTED
callback, which the gateway sends over UDP to the lock manager that the
client's portmapper names (both played here by in-process RPC servers on
loopback).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from claudefs_gateway.nfs.callbacks import RPCCallbacks
from claudefs_gateway.nfs.errors import NLM4
from claudefs_gateway.nfs.nlm import NLM, NLM_PROGRAM, NlmLock, dec_testargs
from claudefs_gateway.nfs.v3 import codec as c
from claudefs_gateway.rpc.client import connect_tcp
from claudefs_gateway.rpc.drc import ReplyCache
from claudefs_gateway.rpc.message import AuthSys
from claudefs_gateway.rpc.portmap import Mapping, PortmapTable, portmap_program, uaddr
from claudefs_gateway.rpc.server import (
    Call,
    Procedure,
    Program,
    RPCDatagramProtocol,
    RPCServer,
    RPCStreamFactory,
)
from claudefs_gateway.rpc.xdr import Packer
from claudefs_gateway.vfs.locks import LockTable
from tests.nfs.client import Client, NLMClient, stream_sender
from tests.nfs.harness import Harness


class ClientLockd:
    """The client side: a portmapper and an NLM service that accepts GRANTED."""

    def __init__(self) -> None:
        self.granted: list[Any] = []
        self.got: defer.Deferred[None] = defer.Deferred()
        server = RPCServer()
        prog = Program(NLM_PROGRAM, "client-nlm")

        def granted(call: Call, args: Any) -> list[bytes]:
            self.granted.append(args)
            p = Packer()
            p.opaque(args.cookie)
            p.u32(NLM4.GRANTED)
            if not self.got.called:
                self.got.callback(None)
            return p.chunks()

        prog.add(4, 5, Procedure("GRANTED", dec_testargs, granted))
        server.add(prog)
        self.table = PortmapTable()
        pm = RPCServer()
        pm.add(portmap_program(self.table))
        self.nlm_port = reactor.listenUDP(0, RPCDatagramProtocol(server), interface="127.0.0.1")
        self.pm_port = reactor.listenUDP(0, RPCDatagramProtocol(pm), interface="127.0.0.1")
        self.table.set(
            Mapping(NLM_PROGRAM, 4, "udp", uaddr("127.0.0.1", self.nlm_port.getHost().port))
        )

    def stop(self) -> defer.Deferred[Any]:
        return defer.gatherResults([self.nlm_port.stopListening(), self.pm_port.stopListening()])


class GrantedCallbackTests(TestCase):
    timeout = 20

    async def test_blocked_lock_granted_over_udp(self) -> None:
        lockd = ClientLockd()
        self.addCleanup(lockd.stop)
        callbacks = RPCCallbacks(
            reactor, interval=0.5, tries=4, portmap_port=lockd.pm_port.getHost().port
        )
        self.addCleanup(callbacks.close)
        holder: dict[str, Any] = {}

        def programs(h: Harness) -> list[Program]:
            h.vfs.locks = holder["locks"] = LockTable(reactor)
            return [NLM(h.ctx, callbacks).program()]

        h = Harness(extra=programs)
        server = RPCServer(ReplyCache(16))
        for p in h.server.programs.values():
            server.add(p)
        port = reactor.listenTCP(0, RPCStreamFactory(server, 1 << 20), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        conn = await connect_tcp(reactor, "127.0.0.1", port.getHost().port)
        self.addCleanup(conn.close)
        cred = AuthSys(0, b"t", 0, 0)
        nfs = Client(stream_sender(conn, cred))
        nlm = NLMClient(stream_sender(conn, cred))
        root = (await nfs.mnt(b"/export")).fh
        fh = (await nfs.create(root, b"f", c.GUARDED)).fh
        a = NlmLock(b"host-a", fh, b"oh-a", 1, 0, 0)
        b = NlmLock(b"host-b", fh, b"oh-b", 2, 0, 0)
        self.assertEqual((await nlm.lock(a)).status, NLM4.GRANTED)
        self.assertEqual((await nlm.lock(b, block=True, cookie=b"wait")).status, NLM4.BLOCKED)
        self.assertEqual((await nlm.unlock(a)).status, NLM4.GRANTED)
        await lockd.got
        self.assertEqual(lockd.granted[0].cookie, b"wait")
        self.assertEqual(lockd.granted[0].lock, b)
        locks = holder["locks"]
        ino = (await nfs.getattr(fh)).attrs.fileid
        # The table granted b before the gateway told the client.
        self.assertEqual([lk.owner.client for lk in locks.locks(ino)], [b"host-b"])
