"""
L{claudefs_gateway.core.directsend}: the one place that reads private state of
Twisted's TCP transport. If a Twisted release changes it, these tests say so.
"""

from __future__ import annotations

from twisted.internet import defer, protocol, reactor, tcp
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from claudefs_gateway.core.directsend import PRIVATE_ATTRIBUTES, DirectSender


class Server(protocol.Protocol):
    def connectionMade(self) -> None:
        self.factory.connected.callback(self)


class Client(protocol.Protocol):
    def __init__(self) -> None:
        self.got = b""
        self.want = 0
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.got += data
        if len(self.got) >= self.want and not self.done.called:
            self.done.callback(self.got)


class DirectSenderTests(TestCase):
    timeout = 10

    async def pair(self) -> tuple[Server, Client]:
        factory = protocol.Factory.forProtocol(Server)
        factory.connected = defer.Deferred()  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = Client()
        endpoint = protocol.ClientCreator(reactor, lambda: client)
        await endpoint.connectTCP("127.0.0.1", port.getHost().port)
        server: Server = await factory.connected  # type: ignore[attr-defined]
        self.addCleanup(client.transport.loseConnection)
        self.addCleanup(server.transport.loseConnection)
        return server, client

    async def test_twisted_still_has_what_we_read(self) -> None:
        """
        Twisted's tcp.Connection still has the private attributes DirectSender
        relies on. If this fails, a Twisted upgrade changed them: update
        core/directsend.py (replies still flow, through the transport, meanwhile).
        """
        server, _ = await self.pair()
        self.assertIsInstance(server.transport, tcp.Connection)
        for name in PRIVATE_ATTRIBUTES:
            self.assertTrue(hasattr(server.transport, name), f"tcp.Connection lost {name}")
        self.assertIsNotNone(DirectSender.for_transport(server.transport))

    async def test_sends_everything_when_idle(self) -> None:
        """With nothing buffered, parts go to the socket in one sendmsg and arrive whole."""
        server, client = await self.pair()
        sender = DirectSender.for_transport(server.transport)
        assert sender is not None
        parts = [b"head", b"x" * 100_000, b"tail"]
        client.want = sum(map(len, parts))
        left = sender.send(parts, client.want)
        server.transport.writeSequence(left)
        self.assertEqual(await client.done, b"".join(parts))

    async def test_defers_to_a_busy_transport(self) -> None:
        """When the transport holds data, nothing is sent directly (order is kept)."""
        server, client = await self.pair()
        sender = DirectSender.for_transport(server.transport)
        assert sender is not None
        server.transport.write(b"first")
        self.assertEqual(sender.send([b"second"], 6), [b"second"])
        server.transport.writeSequence([b"second"])
        client.want = 11
        self.assertEqual(await client.done, b"firstsecond")

    def test_not_for_other_transports(self) -> None:
        """Test transports (and TLS, and other reactors') get no direct sender."""
        self.assertIsNone(DirectSender.for_transport(StringTransport()))
