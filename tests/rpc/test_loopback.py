"""RPC over real loopback sockets: TCP (pipelined, out of order, TCP_NODELAY) and UDP."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from claudefs_gateway.rpc.client import DatagramClient, RPCError, connect_tcp
from claudefs_gateway.rpc.drc import ReplyCache
from claudefs_gateway.rpc.record import encode_record
from claudefs_gateway.rpc.server import (
    Procedure,
    Program,
    RPCDatagramProtocol,
    RPCServer,
    RPCStreamFactory,
    no_args,
)
from claudefs_gateway.rpc.xdr import Packer
from tests.rpc.test_server import PROG, Toy


class LoopbackTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.toy = Toy()
        self.server = RPCServer(ReplyCache(16))
        self.server.add(self.toy.program())
        self.factory = RPCStreamFactory(self.server, 1 << 20, 64)
        self.protos: list[Any] = []
        build = self.factory.buildProtocol

        def keep(addr: Any) -> Any:
            p = build(addr)
            self.protos.append(p)
            return p

        self.factory.buildProtocol = keep  # type: ignore[method-assign]
        port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    async def test_pipelined_out_of_order(self) -> None:
        """Calls pipelined on one connection are answered as they finish, matched by XID."""
        client = await connect_tcp(reactor, "127.0.0.1", self.port)
        self.addCleanup(client.close)
        slow = client.call(PROG, 1, 2)
        echoes = [client.call(PROG, 1, 1, _echo(b"%d" % i)) for i in range(20)]
        got = await defer.gatherResults(echoes)
        self.assertEqual([u.opaque(16) for u in got], [b"%d" % i for i in range(20)])
        self.assertFalse(slow.called)
        self.toy.waiting[0].callback([b"\0\0\0\7"])
        self.assertEqual((await slow).u32(), 7)
        # The server's side of the connection sends without Nagle's delay.
        self.assertTrue(self.protos[0].transport.getTcpNoDelay())

    async def test_multi_fragment_record(self) -> None:
        """A call split in 5-byte fragments is reassembled and answered."""
        client = await connect_tcp(reactor, "127.0.0.1", self.port)
        self.addCleanup(client.close)
        from claudefs_gateway.rpc.message import encode_call

        message = encode_call(1234, PROG, 1, 1, _echo(b"fragmented"))
        got: defer.Deferred[bytes] = defer.Deferred()
        client.waiting[1234] = got
        client.send_raw(encode_record(message, fragment=5))
        reply = await got
        self.assertIn(b"fragmented", reply)

    async def test_rpc_errors_reach_the_client(self) -> None:
        client = await connect_tcp(reactor, "127.0.0.1", self.port)
        self.addCleanup(client.close)
        with self.assertRaises(RPCError) as e:
            await client.call(PROG, 7, 0)
        self.assertEqual((e.exception.name, e.exception.header.detail), ("PROG_MISMATCH", (1, 2)))

    async def test_udp(self) -> None:
        port = reactor.listenUDP(0, RPCDatagramProtocol(self.server), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = DatagramClient(reactor, 0.5, 4)
        cport = reactor.listenUDP(0, client, interface="127.0.0.1")
        self.addCleanup(cport.stopListening)
        u = await client.call(("127.0.0.1", port.getHost().port), PROG, 2, 1, _echo(b"dgram"))
        self.assertEqual(u.opaque(16), b"dgram")


def _echo(data: bytes) -> bytes:
    p = Packer()
    p.opaque(data)
    return p.bytes()


class LargeReplyTests(TestCase):
    timeout = 20

    async def test_reply_larger_than_the_socket_takes(self) -> None:
        """
        A reply the kernel cannot take at once (the client is not reading)
        reaches the client whole and in order, followed by the next reply.
        """
        blob = bytes(range(256)) * (32 * 1024)  # 8 MiB
        called: defer.Deferred[None] = defer.Deferred()
        server = RPCServer()
        prog = Program(PROG, "big")

        def big(call: Any, args: Any) -> list[bytes]:
            if not called.called:
                called.callback(None)
            p = Packer()
            p.opaque(blob)
            return p.chunks()

        prog.add(1, 1, Procedure("BIG", no_args, big))
        prog.add(1, 2, Procedure("SMALL", no_args, lambda c, a: [b"\0\0\0\x2a"]))
        server.add(prog)
        port = reactor.listenTCP(0, RPCStreamFactory(server, 1 << 20), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = await connect_tcp(reactor, "127.0.0.1", port.getHost().port)
        client.reader.max_record = 64 << 20
        self.addCleanup(client.close)
        client.transport.pauseProducing()
        first = client.call(PROG, 1, 1)
        second = client.call(PROG, 1, 2)
        await called
        await deferLater(reactor, 0, lambda: None)
        client.transport.resumeProducing()
        self.assertEqual((await first).opaque(64 << 20), blob)
        self.assertEqual((await second).u32(), 42)
