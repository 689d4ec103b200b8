# -*- test-case-name: tests.test_workers -*-
"""
C{reuseport:PORT[:interface=ADDR][:backlog=N]}: a TCP listener with SO_REUSEPORT.

Several processes (the C{--workers} of C{cfs-gateway start}) each listen on
the same address and port; the kernel spreads new connections across them,
so one machine's cores share the load, and a worker that dies takes only its
own connections with it (its clients reconnect and land on the others).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import (
    IReactorCore,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin

from zope.interface import implementer

__all__ = ["ReusePortEndpoint", "ReusePortParser", "reserve"]


def _socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, port))
    return s


def reserve(host: str, port: int) -> socket.socket:
    """
    Bind (not listen) a SO_REUSEPORT socket: the supervisor holds one per
    listener, so port 0 becomes one concrete port every worker can bind, and
    no other program takes it while a worker restarts.
    """
    return _socket(host, port)


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    def __init__(self, reactor: Any, port: int, interface: str = "", backlog: int = 50) -> None:
        self._reactor = reactor
        self.port = port
        self.interface = interface or "0.0.0.0"
        self.backlog = backlog

    def listen(self, protocolFactory: Any) -> defer.Deferred[Any]:  # noqa: N803
        try:
            s = _socket(self.interface, self.port)
            s.listen(self.backlog)
            s.setblocking(False)
            family = s.family
            try:
                port = self._reactor.adoptStreamPort(s.fileno(), family, protocolFactory)
            finally:
                s.close()  # the reactor holds its own duplicate
        except OSError as e:
            return defer.fail(e)
        return defer.succeed(port)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class ReusePortParser:
    prefix = "reuseport"

    def parseStreamServer(  # type: ignore[override]  # noqa: N802 - Twisted's interface
        self, reactor: IReactorCore, *args: str, **kw: str
    ) -> IStreamServerEndpoint:
        port = kw.pop("port", args[0] if args else None)
        if port is None or not str(port).isdigit():
            raise ValueError("reuseport endpoint needs a numeric port")
        interface = kw.pop("interface", "")
        backlog = int(kw.pop("backlog", "50"))
        if kw:
            raise ValueError(f"unknown reuseport options: {', '.join(sorted(kw))}")
        return ReusePortEndpoint(reactor, int(port), interface, backlog)
