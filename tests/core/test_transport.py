"""
Tests for L{claudefs_gateway.core.transport}: the endpoint plugins, the RDMA
probe and fallback (against a fake verbs library: no RDMA here), mutual TLS
on loopback and its reload.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from claudefs_gateway.core import config as cfg
from claudefs_gateway.core.listen import ListenerService
from claudefs_gateway.core.transport import Choices, client_endpoint, rdma, split_address
from claudefs_gateway.core.transport.tls import MutualTLS, TLSFiles
from tests.core.certs import CA


class FakeDevice:
    def __init__(self, name: bytes) -> None:
        self.name = name


class FakeVerbs:
    """pyverbs.device's get_device_list(), as a test wants it."""

    def __init__(self, *names: bytes, broken: bool = False) -> None:
        self.names = names
        self.broken = broken

    def get_device_list(self) -> list[FakeDevice]:
        if self.broken:
            raise OSError("ibv_get_device_list failed")
        return [FakeDevice(n) for n in self.names]


class ProbeTests(SynchronousTestCase):
    def test_no_library(self) -> None:
        self.patch(rdma, "_load_verbs", lambda: None)
        p = rdma.probe()
        self.assertEqual((p.usable, p.reason), (False, "pyverbs not installed"))

    def test_no_device(self) -> None:
        p = rdma.probe(verbs=FakeVerbs())
        self.assertEqual((p.usable, p.reason), (False, "no RDMA device"))

    def test_named_device_missing(self) -> None:
        p = rdma.probe("mlx5_1", verbs=FakeVerbs(b"mlx5_0"))
        self.assertEqual((p.usable, p.reason), (False, "device mlx5_1 not present"))

    def test_library_failure(self) -> None:
        p = rdma.probe(verbs=FakeVerbs(broken=True))
        self.assertEqual(p.reason, "verbs library failed: OSError")

    def test_device_present_still_tcp(self) -> None:
        """With a device, this version says the verbs data path is not built and uses TCP."""
        p = rdma.probe(verbs=FakeVerbs(b"rxe0"))
        self.assertEqual((p.usable, p.device), (False, "rxe0"))
        self.assertIn("not built", p.reason)

    def test_split_address(self) -> None:
        self.assertEqual(split_address("meta-1:7001"), ("meta-1", 7001))
        self.assertEqual(split_address("[::1]:7001"), ("::1", 7001))


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class Collect(Protocol):
    def __init__(self) -> None:
        self.got = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.got += data
        if len(self.got) >= 5 and not self.done.called:
            self.done.callback(self.got)

    def connectionLost(self, reason: Any) -> None:
        if not self.done.called:
            self.done.callback(self.got)
        self.lost.callback(None)


class RDMAEndpointTests(TestCase):
    timeout = 10

    async def test_plugin_listens_with_tcp_fallback(self) -> None:
        """rdma: parses through the plugin, falls back to TCP and records why."""
        ep = serverFromString(reactor, "rdma:0:interface=127.0.0.1:device=mlx5_0")
        self.assertIsInstance(ep, rdma.RDMAServerEndpoint)
        port = await ep.listen(Factory.forProtocol(Echo))
        self.addCleanup(port.stopListening)
        self.assertFalse(ep.probe.usable)
        self.assertEqual(rdma.RDMA_CHOICES["listen 127.0.0.1:0"][0], "tcp")
        client = clientFromString(reactor, f"rdma:host=127.0.0.1:port={port.getHost().port}")
        proto = await client.connect(Factory.forProtocol(Collect))
        proto.transport.write(b"hello")
        self.assertEqual(await proto.done, b"hello")
        proto.transport.loseConnection()
        await proto.lost

    async def test_validate_and_start_agree(self) -> None:
        """A listener validate-config accepts as rdma: is one the service starts."""
        c = cfg.loads('admin:\n  bind: "rdma:0:interface=127.0.0.1"\n')
        svc = ListenerService(
            "admin:web", "admin", c.admin.bind, Factory.forProtocol(Echo), reactor
        )
        svc.startService()
        self.addCleanup(svc.stopService)
        self.assertTrue(svc.bound_port)

    def test_validate_rejects_unknown_rdma_option(self) -> None:
        with self.assertRaises(cfg.ConfigError) as e:
            cfg.loads('admin:\n  bind: "rdma:0:colour=blue"\n')
        self.assertIn("unknown rdma option 'colour'", str(e.exception))

    async def test_client_choice_in_health(self) -> None:
        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
            Factory.forProtocol(Echo)
        )
        self.addCleanup(port.stopListening)
        choices = Choices()
        address = f"127.0.0.1:{port.getHost().port}"
        ep = client_endpoint(reactor, address, "rdma", choices=choices, verbs=FakeVerbs())
        proto = await ep.connect(Factory.forProtocol(Collect))
        proto.transport.loseConnection()
        await proto.lost
        msg = choices.check().message
        self.assertIn(f"{address}: tcp (rdma fallback: no RDMA device)", msg)


class MutualTLSTests(TestCase):
    timeout = 15

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        self.ca = CA(self.dir)
        self.server_cert, self.server_key, _ = self.ca.issue("server")
        self.client_cert, self.client_key, _ = self.ca.issue("client")

    async def serve(self) -> int:
        desc = (
            f"mtls:0:interface=127.0.0.1:certKey={self.server_cert}:"
            f"privateKey={self.server_key}:caCerts={self.ca.path}"
        )
        port = await serverFromString(reactor, desc).listen(Factory.forProtocol(Echo))
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    async def talk(self, port: int, tls: MutualTLS, host: str = "127.0.0.1") -> Collect:
        ep = client_endpoint(reactor, f"{host}:{port}", "tls", tls=tls)
        proto = await ep.connect(Factory.forProtocol(Collect))
        proto.transport.write(b"hello")
        return proto

    async def test_mutual_tls_round_trip(self) -> None:
        port = await self.serve()
        tls = MutualTLS(TLSFiles(self.client_cert, self.client_key, self.ca.path))
        proto = await self.talk(port, tls)
        self.assertEqual(await proto.done, b"hello")
        proto.transport.loseConnection()
        await proto.lost

    async def test_client_without_ca_signature_refused(self) -> None:
        """A client certificate from another CA gets no service."""
        port = await self.serve()
        rogue = CA(os.path.join(self.dir, "rogue"), "rogue-ca")
        cert, key, _ = rogue.issue("intruder")
        tls = MutualTLS(TLSFiles(cert, key, self.ca.path))
        proto = await self.talk(port, tls)
        await proto.lost
        self.assertEqual(proto.got, b"")
        self.flushLoggedErrors()

    async def test_reload_uses_new_certificate(self) -> None:
        """After reload() new connections present the new certificate; a bad reload keeps the old."""
        tls = MutualTLS(TLSFiles(self.client_cert, self.client_key, self.ca.path))
        first = tls.generation
        self.ca.issue("client")  # same paths, new key and certificate
        self.assertTrue(tls.reload())
        self.assertEqual(tls.generation, first + 1)
        port = await self.serve()
        proto = await self.talk(port, tls)
        self.assertEqual(await proto.done, b"hello")
        proto.transport.loseConnection()
        await proto.lost
        with open(self.client_key, "w") as f:
            f.write("not a key")
        self.assertFalse(tls.reload())
        self.assertEqual(tls.generation, first + 1)
