"""
A synchronous in-memory connection: bytes written on one end reach the other
end's C{dataReceived} before C{write} returns.

With the inline embedded store behind the meta server and inline chunk I/O
behind the data server, every remote-backend call then completes (its
Deferred fires) before it returns, through the real codec, framing, client,
pool, breaker and servers: what the hypothesis state machine needs, since
its rules cannot wait for a reactor.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IStreamClientEndpoint, ITransport
from twisted.python.failure import Failure

from zope.interface import implementer


@implementer(ITransport)
class SyncTransport:
    disconnecting = False

    def __init__(self, port: int) -> None:
        self.peer: SyncTransport | None = None
        self.protocol: Any = None
        self._addr = IPv4Address("TCP", "127.0.0.1", port)

    def write(self, data: bytes) -> None:
        if self.peer is not None and not self.disconnecting:
            self.peer.protocol.dataReceived(bytes(data))

    def writeSequence(self, seq: Any) -> None:
        self.write(b"".join(bytes(s) for s in seq))

    def loseConnection(self) -> None:
        if self.disconnecting:
            return
        self.disconnecting = True
        peer = self.peer
        self.protocol.connectionLost(Failure(ConnectionDone()))
        if peer is not None and not peer.disconnecting:
            peer.loseConnection()

    def abortConnection(self) -> None:  # noqa: N802 - ITCPTransport's name
        self.loseConnection()

    def getPeer(self) -> IPv4Address:
        return self._addr

    def getHost(self) -> IPv4Address:
        return self._addr

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


@implementer(IStreamClientEndpoint)
class SyncEndpoint:
    """Connects a client protocol to a new protocol of C{server_factory}, at once."""

    def __init__(self, server_factory: Any) -> None:
        self.server_factory = server_factory
        self.connections: list[tuple[SyncTransport, SyncTransport]] = []

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        client = factory.buildProtocol(None)
        server = self.server_factory.buildProtocol(None)
        ct, st = SyncTransport(1), SyncTransport(2)
        ct.peer, st.peer = st, ct
        ct.protocol, st.protocol = client, server
        self.connections.append((ct, st))
        server.makeConnection(st)
        client.makeConnection(ct)
        return defer.succeed(client)

    def drop_all(self) -> None:
        for ct, _ in self.connections:
            ct.loseConnection()
