"""
L{claudefs_gateway.core.directsend}: the one place that reads private state of
Twisted's TCP transport. If a Twisted release changes it, these tests say so.
"""

from __future__ import annotations

import os
import tempfile

from twisted.internet import defer, protocol, reactor, tcp
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from claudefs_gateway.core.directsend import PRIVATE_ATTRIBUTES, DirectSender, FileRange, Later


class Server(protocol.Protocol):
    def connectionMade(self) -> None:
        self.factory.connected.callback(self)


class Client(protocol.Protocol):
    def __init__(self) -> None:
        self.got = bytearray()
        self.want = 0
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.got += data
        if len(self.got) >= self.want and not self.done.called:
            self.done.callback(bytes(self.got))


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

    def data_file(self, data: bytes) -> int:
        with tempfile.NamedTemporaryFile(delete=False) as f:
            f.write(data)
        self.addCleanup(os.unlink, f.name)
        fd = os.open(f.name, os.O_RDONLY)
        self.addCleanup(os.close, fd)
        return fd

    async def test_ranges_sent_by_sendfile(self) -> None:
        """Buffers, a file range and a buffer after it arrive whole and in order."""
        server, client = await self.pair()
        sender = DirectSender.for_transport(server.transport)
        assert sender is not None
        data = os.urandom(300_000)
        fd = self.data_file(data)
        parts = [b"head", FileRange(fd, 1000, 200_000), b"pad"]
        client.want = 4 + 200_000 + 3
        self.assertEqual(sender.send_ranges(parts, client.want), [])
        self.assertEqual(await client.done, b"head" + data[1000:201_000] + b"pad")

    async def test_range_past_the_file_end_reads_zeros(self) -> None:
        """Bytes of a range past its file's end (a sparse tail) arrive as zeros."""
        server, client = await self.pair()
        sender = DirectSender.for_transport(server.transport)
        assert sender is not None
        fd = self.data_file(b"x" * 100)
        client.want = 4 + 5000
        left = sender.send_ranges([b"head", FileRange(fd, 50, 5000)], client.want)
        self.assertTrue(all(type(p) is not FileRange for p in left))
        server.transport.writeSequence(left)
        self.assertEqual(await client.done, b"head" + b"x" * 50 + bytes(4950))

    async def test_range_larger_than_the_socket_takes(self) -> None:
        """
        What the socket does not take of a range (the client is not reading)
        comes back read into bytes, for the transport to queue: the file's
        descriptor is not needed after the call.
        """
        server, client = await self.pair()
        sender = DirectSender.for_transport(server.transport)
        assert sender is not None
        client.transport.pauseProducing()
        data = os.urandom(24 << 20)
        fd = self.data_file(data)
        left = sender.send_ranges([b"head", FileRange(fd, 0, len(data)), b"tail"], len(data) + 8)
        self.assertNotEqual(left, [])
        self.assertTrue(all(type(p) is not FileRange for p in left))
        server.transport.writeSequence(left)
        client.want = len(data) + 8
        client.transport.resumeProducing()
        self.assertEqual(await client.done, b"head" + data + b"tail")

    async def test_ranges_wait_for_a_busy_transport(self) -> None:
        """With data queued in the transport, a range is read into bytes (order kept)."""
        server, client = await self.pair()
        sender = DirectSender.for_transport(server.transport)
        assert sender is not None
        fd = self.data_file(b"0123456789")
        server.transport.write(b"first")
        self.assertEqual(sender.send_ranges([FileRange(fd, 2, 5)], 5), [b"23456"])

    def test_evicted_range_is_read_later(self) -> None:
        """
        A range whose pages are no longer cached is not read on the spot
        (that would wait for the disk): it becomes a L{Later} with its own
        descriptor (the range's is the caller's, good only until it
        returns), whose read gives the bytes (zeros past the file's end)
        and closes it.
        """
        fd = self.data_file(b"0123456789")
        real = os.preadv

        def evicted(fd: int, buffers: list[memoryview], offset: int, flags: int = 0) -> int:
            if flags & os.RWF_NOWAIT:
                raise BlockingIOError(11, "EAGAIN")
            return real(fd, buffers, offset, flags)

        self.assertEqual(FileRange(fd, 2, 5).take(), b"23456")
        self.patch(os, "preadv", evicted)
        caller = os.dup(fd)
        later = FileRange(caller, 4, 20).take(2)
        assert isinstance(later, Later)
        self.assertNotIn(later.fd, (fd, caller))
        self.assertEqual((later.offset, len(later)), (6, 18))
        os.close(caller)  # the caller's descriptor goes: the piece's stays good
        self.assertEqual(later.read(), b"6789" + bytes(14))
        self.assertEqual(later.fd, -1)
        later.close()  # closed once only

    def test_not_for_other_transports(self) -> None:
        """Test transports (and TLS, and other reactors') get no direct sender."""
        self.assertIsNone(DirectSender.for_transport(StringTransport()))
