"""
Tests for L{claudefs_gateway.core.reactor}: our epoll reactor does what
Twisted's does (Twisted's own reactor tests run on it), minus the legacy log
context per event; C{cfs-gateway}'s processes run on it (tests/test_cli.py,
tests/test_workers.py).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import protocol
from twisted.internet.test import test_core, test_fdset, test_time
from twisted.internet.test.reactormixins import ReactorBuilder
from twisted.python import context, log
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.core import reactor as ours

OURS = "claudefs_gateway.core.reactor.EPollReactor"


class _Ours:
    """Mixed into a Twisted reactor test builder: build only our reactor."""

    _reactors = [OURS]


# Twisted's reactor-independent tests (timers, readers/writers, run/stop and
# system events), run on our reactor. Its TCP tests need hamcrest, which we
# do not install: test_tcp_echo below covers connections.
for _builder in (test_time.TimeTestsBuilder, test_core.SystemEventTestsBuilder):
    globals().update(type(_builder.__name__, (_Ours, _builder), {}).makeTestCaseClasses())
del _builder
# Of the descriptor-set tests, all but test_lostFileDescriptor, which Twisted
# skips for every epoll reactor (a closed descriptor leaves the epoll set
# unseen), and a skip counts as a failure under CI.
_fdset = {
    k: v
    for k, v in vars(test_fdset.ReactorFDSetTestsBuilder).items()
    if k not in ("test_lostFileDescriptor", "__dict__", "__weakref__")
}
globals().update(
    type("ReactorFDSetTestsBuilder", (_Ours, ReactorBuilder), _fdset).makeTestCaseClasses()
)
del _fdset


class _Raising(protocol.Protocol):
    """Raises from C{dataReceived}, as a protocol with a bug does."""

    def __init__(self, lost: list[Any]) -> None:
        self.lost = lost

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        raise ZeroDivisionError("bug in dataReceived")

    def connectionLost(self, reason: Any) -> None:  # noqa: N802 - Twisted's name
        self.lost.append(reason)


class _Pipe:
    """A reader on a pipe for L{doPoll}; C{lost} raises if C{bad}."""

    def __init__(self, test: SynchronousTestCase, name: str, events: list[str], bad: bool) -> None:
        self.r, self.w = os.pipe()
        test.addCleanup(os.close, self.r)
        test.addCleanup(os.close, self.w)
        os.write(self.w, b"x")
        self.name, self.events, self.bad = name, events, bad

    def fileno(self) -> int:
        return self.r

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's name
        return self.name

    def doRead(self) -> Any:  # noqa: N802 - Twisted's name
        self.events.append(f"read {self.name}")
        return Exception("done") if self.bad else None

    def connectionLost(self, reason: Any) -> None:  # noqa: N802 - Twisted's name
        self.events.append(f"lost {self.name}")
        raise RuntimeError("bug in connectionLost")


class OurReactorTestsBuilder(_Ours, ReactorBuilder):
    def test_install_is_ours(self) -> None:
        """The module names the class that L{install} puts in place where epoll exists."""
        self.assertEqual(f"{ours.EPollReactor.__module__}.EPollReactor", OURS)

    def test_tcp_echo(self) -> None:
        """
        Bytes go both ways over a loopback connection, a large write (more than
        the socket buffers hold, so it waits for writability) arrives whole,
        and a timer fires alongside.
        """
        reactor = self.buildReactor()
        payload = os.urandom(4 * 1024 * 1024 + 7)
        got = bytearray()
        fired: list[bool] = []

        def stop_when_both() -> None:
            if fired and len(got) >= len(payload):
                reactor.stop()

        def timer() -> None:
            fired.append(True)
            stop_when_both()

        reactor.callLater(0.01, timer)

        class Echo(protocol.Protocol):
            def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
                self.transport.write(data)

        class Client(protocol.Protocol):
            def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
                self.transport.write(payload)

            def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
                got.extend(data)
                stop_when_both()

        port = reactor.listenTCP(0, protocol.ServerFactory.forProtocol(Echo), interface="127.0.0.1")
        reactor.connectTCP(
            "127.0.0.1", port.getHost().port, protocol.ClientFactory.forProtocol(Client)
        )
        self.runReactor(reactor, timeout=30)
        self.assertEqual(bytes(got), payload)
        self.assertEqual(fired, [True])

    def test_error_in_data_received_logged_and_connection_dropped(self) -> None:
        """
        A protocol raising in C{dataReceived} has the error logged and its
        connection lost with that error, while the reactor keeps serving: the
        peer sees the connection closed.
        """
        reactor = self.buildReactor()
        server_lost: list[Any] = []
        client_lost: list[Any] = []
        server = protocol.ServerFactory.forProtocol(lambda: _Raising(server_lost))
        port = reactor.listenTCP(0, server, interface="127.0.0.1")

        class Client(protocol.Protocol):
            def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
                self.transport.write(b"hello")

            def connectionLost(self, reason: Any) -> None:  # noqa: N802 - Twisted's name
                client_lost.append(reason)
                reactor.stop()

        reactor.connectTCP(
            "127.0.0.1", port.getHost().port, protocol.ClientFactory.forProtocol(Client)
        )
        self.runReactor(reactor, timeout=10)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(len(server_lost), 1)
        self.assertTrue(server_lost[0].check(ZeroDivisionError))
        self.assertEqual(len(client_lost), 1)

    def test_error_escaping_one_event_logged_others_served(self) -> None:
        """
        What escapes C{_doReadOrWrite} (a C{connectionLost} that raises) is
        logged, and the other descriptors ready in the same poll are still served.
        """
        reactor = self.buildReactor()
        events: list[str] = []
        a = _Pipe(self, "a", events, bad=True)
        b = _Pipe(self, "b", events, bad=True)
        reactor.addReader(a)
        reactor.addReader(b)
        reactor.doPoll(0)
        self.assertEqual(sorted(events), ["lost a", "lost b", "read a", "read b"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_no_legacy_log_context_per_event(self) -> None:
        """
        C{dataReceived} runs without the legacy log context that stock
        C{EPollReactor} builds for each event (the cost this reactor removes).
        """
        reactor = self.buildReactor()
        systems: list[str] = []

        class Record(protocol.Protocol):
            def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
                systems.append(context.get(log.ILogContext)["system"])
                reactor.stop()

        port = reactor.listenTCP(
            0, protocol.ServerFactory.forProtocol(Record), interface="127.0.0.1"
        )

        class Client(protocol.Protocol):
            def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
                self.transport.write(b"x")

        reactor.connectTCP(
            "127.0.0.1", port.getHost().port, protocol.ClientFactory.forProtocol(Client)
        )
        self.runReactor(reactor, timeout=10)
        self.assertEqual(systems, ["-"])


globals().update(OurReactorTestsBuilder.makeTestCaseClasses())
