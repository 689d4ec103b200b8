# -*- test-case-name: tests.nfs.test_nlm -*-
"""
Calls from the gateway to a client's RPC services: NLM GRANTED (and the
*_RES replies of the asynchronous NLM procedures) to its lock manager, and
NSM SM_NOTIFY to its status monitor after a gateway restart.

The client's port for the program comes from the client's own portmapper
(GETPORT over UDP, port 111); the call goes over UDP with retransmissions
(L{DatagramClient}). L{RPCCallbacks} is the real thing; tests hand the NLM
and NSM programs a fake with the same L{call} method.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from claudefs_gateway.core.log import Logger
from claudefs_gateway.rpc.client import DatagramClient
from claudefs_gateway.rpc.portmap import IPPROTO_UDP, PMAP_PROG, PMAPPROC_GETPORT, encode_mapping
from claudefs_gateway.rpc.xdr import Unpacker

__all__ = ["RPCCallbacks"]


class RPCCallbacks:
    """
    Calls to clients' RPC programs over UDP.

    @param portmap_port: where clients' portmappers listen (111; tests change it).
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        interval: float = 2.0,
        tries: int = 4,
        portmap_port: int = 111,
    ) -> None:
        self.reactor = reactor
        self.interval = interval
        self.tries = tries
        self.portmap_port = portmap_port
        self._client: DatagramClient | None = None
        self._port: Any = None

    def _open(self) -> DatagramClient:
        if self._client is None:
            self._client = DatagramClient(self.reactor, self.interval, self.tries)
            self._port = self.reactor.listenUDP(0, self._client)
        return self._client

    def call(
        self, host: str, prog: int, vers: int, proc: int, args: bytes
    ) -> defer.Deferred[Unpacker]:
        """
        Call C{prog}/C{vers} procedure C{proc} on C{host}; fires with an
        L{Unpacker} at the results.

        Fails with L{RPCError} (the client answered with an RPC error),
        C{TimeoutError} (no answer from its portmapper or the program) or
        L{LookupError} (its portmapper does not know the program).
        """
        return defer.Deferred.fromCoroutine(self._call(host, prog, vers, proc, args))

    async def _call(self, host: str, prog: int, vers: int, proc: int, args: bytes) -> Unpacker:
        client = self._open()
        u = await client.call(
            (host, self.portmap_port),
            PMAP_PROG,
            2,
            PMAPPROC_GETPORT,
            encode_mapping(prog, vers, IPPROTO_UDP, 0),
        )
        port = u.u32()
        if not port:
            raise LookupError(f"program {prog} v{vers} is not registered on {host}")
        return await client.call((host, port), prog, vers, proc, args)

    def close(self) -> defer.Deferred[None]:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._port is not None:
            port, self._port = self._port, None
            return defer.maybeDeferred(port.stopListening)
        return defer.succeed(None)
