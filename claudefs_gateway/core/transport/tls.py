# -*- test-case-name: tests.core.test_transport -*-
"""
Mutual TLS between gateways and backend nodes (pyOpenSSL + service-identity).

Both ends load a certificate, its key and the CA that signs every node's and
gateway's certificate; each side refuses a peer whose certificate that CA did
not sign, and the client checks the server's name (service-identity, as
L{twisted.internet.ssl.optionsForClientTLS} does). L{MutualTLS.reload} re-reads
the files (the services call it on SIGHUP, so certificates can be rotated
without a restart): connections made afterwards use the new ones; a reload
that fails keeps the old material and logs why.

The server side is an endpoint, C{mtls:PORT:certKey=C:privateKey=K:caCerts=CA[:interface=ADDR]}
(an endpoint-parser plugin: Twisted's own C{tls:} server verifies no client).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import attrs
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLContextFactory,
    IReactorCore,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin

from zope.interface import implementer

from claudefs_gateway.core.log import Logger

__all__ = ["TLSFiles", "MutualTLS", "MutualTLSServerParser", "install_sighup", "RELOADABLE"]


@attrs.frozen
class TLSFiles:
    """PEM files: this end's certificate, its private key, and the CA to trust."""

    cert: str
    key: str
    ca: str


class MutualTLS:
    """Certificates for both directions, reloadable. @raise OSError, SSL.Error: at first load."""

    _log = Logger()

    def __init__(self, files: TLSFiles) -> None:
        self.files = files
        self.generation = 0
        self._load()

    def _load(self) -> None:
        f = self.files
        cert_pem = Path(f.cert).read_bytes()
        key_pem = Path(f.key).read_bytes()
        ca_pem = Path(f.ca).read_bytes()
        private = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
        ca = ssl.Certificate.loadPEM(ca_pem)
        server = ssl.CertificateOptions(
            privateKey=private.privateKey.original,
            certificate=private.original,
            verify=True,
            caCerts=[ca.original],
            requireCertificate=True,
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )
        server.getContext()  # fail now, not at the first connection
        self._private, self._ca, self._server = private, ca, server
        self.generation += 1

    def reload(self) -> bool:
        """Re-read the files; True if the new material is in use."""
        try:
            self._load()
        except (OSError, SSL.Error, crypto.Error, ValueError) as e:
            self._log.error(
                "TLS reload failed ({why}); keeping the previous certificates",
                why=e.__class__.__name__,
            )
            return False
        self._log.info("TLS certificates reloaded from {cert}", cert=self.files.cert)
        return True

    def server_context_factory(self) -> Any:
        """A context factory whose every new connection uses the current material."""
        return _ServerContexts(self)

    def client_creator(self, hostname: str) -> IOpenSSLClientConnectionCreator:
        """Client side: present our certificate, verify the server's against the CA and C{hostname}."""
        return _ClientCreator(self, hostname)


@implementer(IOpenSSLContextFactory)
class _ServerContexts:
    def __init__(self, tls: MutualTLS) -> None:
        self._tls = tls

    def getContext(self) -> SSL.Context:  # noqa: N802 - Twisted's IOpenSSLContextFactory
        return self._tls._server.getContext()


@implementer(IOpenSSLClientConnectionCreator)
class _ClientCreator:
    def __init__(self, tls: MutualTLS, hostname: str) -> None:
        self._tls = tls
        self._hostname = hostname
        self._generation = -1
        self._creator: Any = None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:  # noqa: N802, N803
        if self._generation != self._tls.generation:
            self._creator = ssl.optionsForClientTLS(
                self._hostname, trustRoot=self._tls._ca, clientCertificate=self._tls._private
            )
            self._generation = self._tls.generation
        return self._creator.clientConnectionForTLS(tlsProtocol)  # type: ignore[no-any-return]


#: Every MutualTLS made by the server endpoint parser, for the SIGHUP handler.
RELOADABLE: list[MutualTLS] = []


def install_sighup(reactor: Any, *extra: MutualTLS) -> None:
    """Reload every known TLS material on SIGHUP (the service tree calls this; not at import)."""

    def reload_all() -> None:
        for tls in [*RELOADABLE, *extra]:
            tls.reload()

    def handler(signum: int, frame: Any) -> None:
        reactor.callFromThread(reload_all)

    signal.signal(signal.SIGHUP, handler)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class MutualTLSServerParser:
    """C{mtls:PORT:certKey=...:privateKey=...:caCerts=...[:interface=...][:backlog=...]}."""

    prefix = "mtls"

    def parseStreamServer(  # type: ignore[override]  # noqa: N802 - Twisted's interface
        self,
        reactor: IReactorCore,
        port: str | None = None,
        *,
        certKey: str,  # noqa: N803
        privateKey: str,  # noqa: N803
        caCerts: str,  # noqa: N803
        interface: str = "",
        backlog: str = "50",
        **kw: str,
    ) -> IStreamServerEndpoint:
        port = kw.pop("port", port)
        if kw:
            raise ValueError(f"unknown mtls endpoint options: {', '.join(sorted(kw))}")
        if port is None:
            raise ValueError("mtls endpoint needs a port")
        tls = MutualTLS(TLSFiles(certKey, privateKey, caCerts))
        RELOADABLE.append(tls)
        return SSL4ServerEndpoint(  # type: ignore[no-any-return]
            reactor, int(port), tls.server_context_factory(), int(backlog), interface
        )
