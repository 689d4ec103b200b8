# -*- test-case-name: tests.core.test_transport -*-
"""
Transports to backend nodes, as Twisted endpoints (DESIGN.md "The distributed half").

 - C{tcp}: plain TCP (one machine, trusted networks);
 - C{tls}: mutual TLS (L{claudefs_gateway.core.transport.tls}): both ends
   present certificates signed by the configured CA; re-read on SIGHUP. Server
   side it is the C{mtls:} endpoint (Twisted's own C{tls:} server endpoint
   checks no client certificate);
 - C{rdma}: verbs through pyverbs when a device is present, else TCP
   (L{claudefs_gateway.core.transport.rdma}; the C{rdma:} endpoint plugin).

L{client_endpoint} picks one per node, and L{Choices} remembers what was
chosen and why, for C{/health} (check C{transport}) and the log.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

from claudefs_gateway.core.health import CheckResult
from claudefs_gateway.core.log import Logger

__all__ = ["Choices", "client_endpoint", "split_address"]


def split_address(address: str) -> tuple[str, int]:
    """C{"host:port"} or C{"[v6]:port"} → (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


@attrs.define
class Choices:
    """Which transport each node got, and why (shown in /health)."""

    chosen: dict[str, tuple[str, str]] = attrs.field(factory=dict)
    _log = Logger()

    def note(self, node: str, transport: str, why: str = "") -> None:
        if self.chosen.get(node) != (transport, why):
            self._log.info(
                "backend {node}: transport {transport}{why}",
                node=node,
                transport=transport,
                why=f" ({why})" if why else "",
            )
        self.chosen[node] = (transport, why)

    def check(self) -> CheckResult:
        """Healthy; the message says which transport each node uses."""
        if not self.chosen:
            return CheckResult.healthy("no backend node")
        parts = [
            f"{node}: {t}" + (f" ({why})" if why else "")
            for node, (t, why) in sorted(self.chosen.items())
        ]
        return CheckResult.healthy("; ".join(parts))


def client_endpoint(
    reactor: Any,
    address: str,
    transport: str = "tcp",
    *,
    tls: Any = None,
    device: str | None = None,
    choices: Choices | None = None,
    connect_timeout: float = 5.0,
    verbs: Any = None,
) -> Any:
    """
    An endpoint that connects to C{address} ("host:port") over C{transport}.

    @param tls: a L{claudefs_gateway.core.transport.tls.MutualTLS}, required
        for C{transport="tls"}.
    @param verbs: the verbs library to probe for RDMA (default: pyverbs if installed).
    @raise ValueError: C{tls} transport without TLS material, or an unknown transport.
    """
    if address.startswith("unix:"):
        from twisted.internet.endpoints import UNIXClientEndpoint

        if choices is not None:
            choices.note(address, "unix")
        return UNIXClientEndpoint(reactor, address[5:], timeout=connect_timeout)
    host, port = split_address(address)
    tcp = HostnameEndpoint(reactor, host, port, timeout=connect_timeout)
    if transport == "tcp":
        if choices is not None:
            choices.note(address, "tcp")
        return tcp
    if transport == "tls":
        if tls is None:
            raise ValueError("tls transport needs backend.tls certificates")
        if choices is not None:
            choices.note(address, "tls")
        return wrapClientTLS(tls.client_creator(host), tcp)
    if transport == "rdma":
        from claudefs_gateway.core.transport.rdma import RDMAClientEndpoint

        return RDMAClientEndpoint(reactor, host, port, device, choices, verbs, connect_timeout)
    raise ValueError(f"unknown transport {transport!r}")
