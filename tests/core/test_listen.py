"""Tests for L{claudefs_gateway.core.listen}: real loopback ports."""

from __future__ import annotations

import socket

from twisted.internet import defer, reactor
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from claudefs_gateway.core.config import Listen
from claudefs_gateway.core.listen import ListenerService


class ListenerServiceTests(TestCase):
    timeout = 10

    def make(self, listen: Listen, gate: object = None) -> ListenerService:
        self.built: list[object] = []
        self.accepted: defer.Deferred[None] = defer.Deferred()
        factory = Factory.forProtocol(Protocol)
        build = factory.buildProtocol

        def counting(addr: object) -> Protocol | None:
            self.built.append(addr)
            if not self.accepted.called:
                self.accepted.callback(None)
            return build(addr)

        factory.buildProtocol = counting  # type: ignore[method-assign]
        svc = ListenerService("t", "t", listen, factory, reactor, gate=gate)  # type: ignore[arg-type]
        self.addCleanup(lambda: svc.stopService() if svc.running else None)
        return svc

    async def test_port_zero_and_stop_accepting(self) -> None:
        svc = self.make(Listen.tcp("127.0.0.1", 0))
        svc.privilegedStartService()
        svc.startService()
        port = svc.bound_port
        assert port is not None
        self.assertGreater(port, 0)
        self.assertEqual(svc.check().status, "healthy")
        await svc.stop_accepting()
        self.assertEqual(svc.check().status, "unhealthy")
        self.assertIn("draining", svc.check().message)
        s = socket.socket()
        self.addCleanup(s.close)
        self.assertNotEqual(s.connect_ex(("127.0.0.1", port)), 0)

    def test_bind_failure_raised_at_start(self) -> None:
        """A port already in use fails the start loudly, it is not swallowed."""
        s = socket.socket()
        self.addCleanup(s.close)
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        svc = self.make(Listen.tcp("127.0.0.1", s.getsockname()[1]))
        self.assertRaises(CannotListenError, svc.privilegedStartService)
        self.assertEqual(svc.check().message, "not listening")
        self.flushLoggedErrors()

    async def test_gated_listener_accepts_once_the_gate_opens(self) -> None:
        """
        A gated listener binds at start (the port is taken) but accepts no
        connection, and its check says starting, until the gate fires; then it
        accepts the connection that waited in the backlog.
        """
        gate: defer.Deferred[None] = defer.Deferred()
        svc = self.make(Listen.tcp("127.0.0.1", 0), gate=lambda: gate)
        svc.privilegedStartService()
        svc.startService()
        port = svc.bound_port
        assert port is not None and svc.port is not None
        self.assertNotIn(svc.port, reactor.getReaders())
        self.assertEqual(
            (svc.check().status, svc.check().message), ("starting", "waiting for the store to open")
        )
        s = socket.socket()
        self.addCleanup(s.close)
        self.assertEqual(s.connect_ex(("127.0.0.1", port)), 0)  # queued by the kernel
        self.assertEqual(self.built, [])
        gate.callback(None)
        self.assertIn(svc.port, reactor.getReaders())
        self.assertEqual(svc.check().status, "healthy")
        await self.accepted
        self.assertEqual(len(self.built), 1)

    async def test_failed_gate_never_accepts(self) -> None:
        """If the gate fails (the store cannot open), the listener never accepts."""
        svc = self.make(Listen.tcp("127.0.0.1", 0), gate=lambda: defer.fail(RuntimeError("no")))
        svc.privilegedStartService()
        svc.startService()
        self.assertNotIn(svc.port, reactor.getReaders())
