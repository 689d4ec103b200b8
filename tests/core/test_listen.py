"""Tests for L{claudefs_gateway.core.listen}: real loopback ports."""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from claudefs_gateway.core.config import Listen
from claudefs_gateway.core.listen import ListenerService


class ListenerServiceTests(TestCase):
    timeout = 10

    def make(self, listen: Listen) -> ListenerService:
        svc = ListenerService("t", "t", listen, Factory.forProtocol(Protocol), reactor)
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
