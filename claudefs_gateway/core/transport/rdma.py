# -*- test-case-name: tests.core.test_transport -*-
"""
The C{rdma:} endpoint: RDMA when the machine has it, TCP when it does not.

C{rdma:7001:device=mlx5_0[:interface=ADDR]} (server) and
C{rdma:host=H:port=7001[:device=mlx5_0]} (client) are endpoint-parser plugins
(C{twisted/plugins/claudefs_endpoints.py}, as txtorcon's C{onion:}), so a
listener or backend node can name RDMA anywhere an endpoint is accepted.

Each endpoint probes the verbs library (pyverbs, the optional C{rdma} extra)
for the device when it is used: no library, no device, or not the named one,
and it falls back to TCP on the same host and port, saying which and why in
the log and in C{/health} (check C{transport}; see L{RDMA_CHOICES}).

What this version does with a device present: the RDMA data path (queue
pairs carrying the ClaudeFS RPC frames) is not built yet, so even then the
endpoint uses TCP, and says so ("device present; verbs data path not built").
docs/distributed.rst ("Transports") says what was tested and how: these machines have no RDMA
hardware and their kernel has no RDMA core (soft-RoCE, rdma_rxe, cannot be
loaded), so the probe is tested against a fake verbs library with pyverbs's
interface (C{device.get_device_list()} returning devices with a C{name}).
"""

from __future__ import annotations

import importlib
from typing import Any

import attrs
from twisted.internet.endpoints import HostnameEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import (
    IReactorCore,
    IStreamClientEndpoint,
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin

from zope.interface import implementer

from claudefs_gateway.core.log import Logger

__all__ = [
    "Probe",
    "probe",
    "RDMA_CHOICES",
    "RDMAServerEndpoint",
    "RDMAClientEndpoint",
    "RDMAServerParser",
    "RDMAClientParser",
]

_log = Logger()

#: What each rdma: endpoint used ("where" → (transport, why)); /health reads it.
RDMA_CHOICES: dict[str, tuple[str, str]] = {}


@attrs.frozen
class Probe:
    """What the verbs library offers: C{usable} is whether RDMA would be used."""

    usable: bool
    device: str | None
    reason: str


def _load_verbs() -> Any:
    try:
        return importlib.import_module("pyverbs.device")
    except ImportError:
        return None


def probe(device: str | None = None, verbs: Any = None) -> Probe:
    """
    Look for an RDMA device (C{device}: that one; None: any).

    @param verbs: a module or object with pyverbs's C{get_device_list()};
        default: C{pyverbs.device} if installed.
    """
    lib = verbs if verbs is not None else _load_verbs()
    if lib is None:
        return Probe(False, None, "pyverbs not installed")
    try:
        names = [
            d.name.decode() if isinstance(d.name, bytes) else str(d.name)
            for d in lib.get_device_list()
        ]
    except Exception as e:  # pyverbs raises its own PyverbsRDMAError family
        return Probe(False, None, f"verbs library failed: {e.__class__.__name__}")
    if not names:
        return Probe(False, None, "no RDMA device")
    if device is not None and device not in names:
        return Probe(False, None, f"device {device} not present")
    chosen = device or names[0]
    return Probe(False, chosen, f"device {chosen} present; verbs data path not built")


def _note(where: str, p: Probe) -> None:
    transport = "rdma" if p.usable else "tcp"
    why = "" if p.usable else f"fallback: {p.reason}"
    if RDMA_CHOICES.get(where) != (transport, why):
        _log.warn(
            "rdma endpoint {where}: using {transport} ({why})",
            where=where,
            transport=transport,
            why=why or p.reason,
        )
    RDMA_CHOICES[where] = (transport, why)


@implementer(IStreamServerEndpoint)
class RDMAServerEndpoint:
    """Listens over RDMA if usable, else TCP on the same port and interface."""

    def __init__(
        self,
        reactor: Any,
        port: int,
        interface: str = "",
        device: str | None = None,
        backlog: int = 50,
        verbs: Any = None,
    ) -> None:
        self._reactor = reactor
        self.port = port
        self.interface = interface
        self.device = device
        self._backlog = backlog
        self._verbs = verbs
        self.probe: Probe | None = None

    def listen(self, protocolFactory: Any) -> Any:  # noqa: N803 - Twisted's interface
        self.probe = probe(self.device, self._verbs)
        _note(f"listen {self.interface or '*'}:{self.port}", self.probe)
        cls = TCP6ServerEndpoint if ":" in self.interface else TCP4ServerEndpoint
        return cls(self._reactor, self.port, self._backlog, self.interface).listen(protocolFactory)


@implementer(IStreamClientEndpoint)
class RDMAClientEndpoint:
    """Connects over RDMA if usable, else TCP; records the choice in C{choices} too."""

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        device: str | None = None,
        choices: Any = None,
        verbs: Any = None,
        timeout: float = 30.0,
    ) -> None:
        self._reactor = reactor
        self.host = host
        self.port = port
        self.device = device
        self._choices = choices
        self._verbs = verbs
        self._timeout = timeout
        self.probe: Probe | None = None

    def connect(self, protocolFactory: Any) -> Any:  # noqa: N803 - Twisted's interface
        if self.probe is None:
            self.probe = probe(self.device, self._verbs)
            where = f"{self.host}:{self.port}"
            _note(where, self.probe)
            if self._choices is not None:
                self._choices.note(
                    where,
                    "rdma" if self.probe.usable else "tcp",
                    "" if self.probe.usable else f"rdma fallback: {self.probe.reason}",
                )
        tcp = HostnameEndpoint(self._reactor, self.host, self.port, timeout=self._timeout)
        return tcp.connect(protocolFactory)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class RDMAServerParser:
    """C{rdma:PORT[:device=NAME][:interface=ADDR][:backlog=N]}."""

    prefix = "rdma"

    def parseStreamServer(  # type: ignore[override]  # noqa: N802 - Twisted's interface
        self, reactor: IReactorCore, *args: str, **kw: str
    ) -> IStreamServerEndpoint:
        port = kw.pop("port", args[0] if args else None)
        if port is None or not str(port).isdigit():
            raise ValueError("rdma endpoint needs a numeric port")
        device = kw.pop("device", None)
        interface = kw.pop("interface", "")
        backlog = int(kw.pop("backlog", "50"))
        if kw:
            raise ValueError(f"unknown rdma endpoint options: {', '.join(sorted(kw))}")
        return RDMAServerEndpoint(reactor, int(port), interface, device, backlog)


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class RDMAClientParser:
    """C{rdma:host=H:port=P[:device=NAME][:timeout=S]}."""

    prefix = "rdma"

    def parseStreamClient(  # type: ignore[override]  # noqa: N802 - Twisted's interface
        self, reactor: Any, *args: str, **kw: str
    ) -> IStreamClientEndpoint:
        host = kw.pop("host", args[0] if args else None)
        port = kw.pop("port", args[1] if len(args) > 1 else None)
        if not host or port is None or not str(port).isdigit():
            raise ValueError("rdma client endpoint needs host= and port=")
        device = kw.pop("device", None)
        timeout = float(kw.pop("timeout", "30"))
        if kw:
            raise ValueError(f"unknown rdma endpoint options: {', '.join(sorted(kw))}")
        return RDMAClientEndpoint(reactor, host, int(port), device, None, None, timeout)
