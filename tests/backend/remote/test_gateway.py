"""
The gateway on ``backend: remote``: real clients through a gateway whose vfs
runs over the RPC to meta and data servers; change events from one gateway
clear another's caches; a meta server that goes away gives try-later
answers, never a hang.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from claudefs_gateway import errors, service
from claudefs_gateway.core import config as cfg
from claudefs_gateway.fstypes import FileType, SetAttrs
from tests.backend.remote.harness import Cluster
from tests.helpers import bin_path, http_get, kill_on_cleanup, spawn, write_config
from tests.s3.harness import ALICE, USERS, Client
from tests.s3.test_clients import run as run_checked


def remote_yaml(data: str, meta: str, protocols: str = "", extra: str = "") -> str:
    return f"""
log_format: json
backend: {{type: remote, data_dir: "{data}"}}
metadata_servers:
  - address: "{meta}"
connection_pool: {{min_per_node: 1, max_per_node: 8, connect_timeout_ms: 2000}}
circuit_breaker: {{failure_threshold: 3, open_duration_ms: 500, timeout_ms: 2000}}
admin: {{bind: "127.0.0.1:0"}}
exports: [{{path: /export, root_squash: false}}, {{path: /s3/shared, name: shared, root_squash: false}}]
nfs: {{bind: "127.0.0.1:0", mount_bind: "127.0.0.1:0", portmap_bind: "127.0.0.1:0"}}
s3: {{bind: "127.0.0.1:0", root: /s3, root_mode: 01777, region: us-east-1}}
smb: {{bind: "127.0.0.1:0"}}
{USERS}
{extra}
"""


async def start_in_process(test: TestCase, cluster: Cluster, protocols: list[str]) -> Any:
    data = os.path.abspath(test.mktemp())
    config = cfg.loads(remote_yaml(data, cluster.meta_address))
    root = service.build(config, reactor, protocols=protocols)
    root.privilegedStartService()
    root.startService()
    test.addCleanup(root.stopService)
    await root.core.vfs_ready()
    return root


class RealClientTests(TestCase):
    timeout = 120

    async def test_nfs_copy_through_remote_backend(self) -> None:
        """libnfs's nfs-cp writes 6 MiB through a gateway process on remote servers and reads it back."""
        cluster = Cluster(self)
        await cluster.start()
        config = write_config(
            self, remote_yaml(os.path.abspath(self.mktemp()), cluster.meta_address)
        )
        proc = spawn([bin_path("cfs-gateway"), "start", "nfs", "--config", config])
        kill_on_cleanup(self, proc)
        nfs = await proc.wait_listening("nfs")
        mount = await proc.wait_listening("mount")
        await proc.wait_ready()
        url = f"nfs://127.0.0.1/export/big.bin?version=3&nfsport={nfs}&mountport={mount}"
        data = os.urandom(6 * 1024 * 1024 + 123)
        src = os.path.abspath(self.mktemp())
        with open(src, "wb") as f:
            f.write(data)
        status = await spawn([bin_path("nfs-cp"), src, url]).ended
        self.assertEqual(status, 0)
        dst = os.path.abspath(self.mktemp())
        self.assertEqual(await spawn([bin_path("nfs-cp"), url, dst]).ended, 0)
        with open(dst, "rb") as f:
            self.assertEqual(f.read(), data)
        # The bytes are on the data server, the names on the meta server.
        assert cluster.data is not None and cluster.meta is not None
        chunks = os.path.join(cluster.base, "data", "chunks")
        self.assertTrue(any(files for _, _, files in os.walk(chunks)))

    async def test_boto3_objects_through_remote_backend(self) -> None:
        """boto3's object scenario passes against a gateway on the remote backend."""
        cluster = Cluster(self)
        await cluster.start()
        root = await start_in_process(self, cluster, ["s3"])
        port = root.listeners()["s3"].bound_port
        argv = [
            sys.executable,
            "-m",
            "tests.s3.boto_client",
            "objects",
            "--endpoint",
            f"http://127.0.0.1:{port}",
            "--key",
            ALICE[0],
            "--secret",
            ALICE[1],
        ]
        await run_checked(self, argv)


class ChangeEventTests(TestCase):
    timeout = 30

    async def test_other_gateways_changes_clear_the_cache(self) -> None:
        """Gateway A's cached attributes go when gateway B changes the inode, before any TTL."""
        cluster = Cluster(self)
        await cluster.start()
        a = await start_in_process(self, cluster, [])
        b = await start_in_process(self, cluster, [])
        vfs_a = a.core.vfs_service.vfs
        vfs_b = b.core.vfs_service.vfs
        backend_b = b.core.vfs_service.backend
        f = await backend_b.create(vfs_b.root_ino, b"f", FileType.REG, 0o644, 0, 0)
        seen: defer.Deferred[None] = defer.Deferred()

        def heard(ev: Any) -> None:
            if ev.ino == f.ino and not seen.called:
                seen.callback(None)

        a.core.vfs_service.backend.on_change(heard)
        cached = await vfs_a._getattr(f.ino)
        self.assertEqual(cached.mode, 0o644)
        await backend_b.setattr(f.ino, SetAttrs(mode=0o600))
        await seen
        self.assertIsNone(vfs_a.attr_cache.get(f.ino))
        self.assertEqual((await vfs_a._getattr(f.ino)).mode, 0o600)

    async def test_own_changes_are_not_echoed(self) -> None:
        cluster = Cluster(self)
        await cluster.start()
        a = await start_in_process(self, cluster, [])
        backend = a.core.vfs_service.backend
        heard: list[Any] = []
        backend.on_change(heard.append)
        await backend.create(a.core.vfs_service.vfs.root_ino, b"g", FileType.REG, 0o644, 0, 0)
        await backend.getattr(1)  # a round trip after the change: its event would be here by now
        self.assertEqual(heard, [])


class MetaServerGoneTests(TestCase):
    timeout = 30

    async def test_try_later_not_hang(self) -> None:
        """With the meta server gone, S3 answers 503 SlowDown and the vfs BackendUnavailable; health says so."""
        cluster = Cluster(self)
        await cluster.start()
        root = await start_in_process(self, cluster, ["s3"])
        client = Client(root.listeners()["s3"].bound_port)
        self.addCleanup(client.close)
        r = await client.request("PUT", "/shared")
        self.assertIn(r.status, (200, 409))
        assert cluster.meta is not None
        await cluster.meta.stopService()
        vfs = root.core.vfs_service.vfs
        with self.assertRaises(errors.BackendUnavailable):
            await vfs.backend.getattr(vfs.root_ino)
        r = await client.request("PUT", "/shared/k", body=b"data")
        self.assertEqual((r.status, r.code), (503, "SlowDown"))
        admin = root.listeners()["admin"].bound_port
        for _ in range(3):  # failure_threshold: the circuit opens
            try:
                await vfs.backend.getattr(vfs.root_ino)
            except errors.BackendUnavailable:
                pass
        status, _, body = await http_get(f"http://127.0.0.1:{admin}/health")
        self.assertEqual(status, 503)
        self.assertIn(b'"metadata"', body)


class MultipartAcrossGatewaysTests(TestCase):
    timeout = 60

    async def test_upload_made_through_one_gateway_continues_through_another(self) -> None:
        """
        Two S3 gateways on one meta server (as two C{--workers} workers, whose
        client connections the kernel spreads): an upload created through A
        takes parts, is listed and completes through B, and A reads the
        object. B used to answer 404 NoSuchUpload: uploads were known only
        to the gateway that made them (or loaded them at its start). The
        Complete retried through A answers as B did.
        """
        import hashlib

        cluster = Cluster(self)
        await cluster.start()
        a = Client((await start_in_process(self, cluster, ["s3"])).listeners()["s3"].bound_port)
        b = Client((await start_in_process(self, cluster, ["s3"])).listeners()["s3"].bound_port)
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        self.assertIn((await a.request("PUT", "/mpb")).status, (200, 409))
        r = await a.request("POST", "/mpb/big", "uploads")
        self.assertEqual(r.status, 200, r.body)
        upload = r.body.split(b"<UploadId>")[1].split(b"</UploadId>")[0].decode()
        one, two = os.urandom(5 * 1024 * 1024), b"tail"
        r = await b.request("PUT", "/mpb/big", {"partNumber": "1", "uploadId": upload}, body=one)
        self.assertEqual((r.status, r.code), (200, None), r.body)
        r = await a.request("PUT", "/mpb/big", {"partNumber": "2", "uploadId": upload}, body=two)
        self.assertEqual(r.status, 200, r.body)
        r = await b.request("GET", "/mpb", "uploads")
        self.assertIn(upload.encode(), r.body)
        r = await b.request("GET", "/mpb/big", {"uploadId": upload})
        self.assertEqual(r.body.count(b"<Part>"), 2, r.body)
        etags = [hashlib.md5(p).hexdigest() for p in (one, two)]
        parts = "".join(
            f'<Part><PartNumber>{n}</PartNumber><ETag>"{e}"</ETag></Part>'
            for n, e in enumerate(etags, 1)
        )
        body = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
        r = await b.request("POST", "/mpb/big", {"uploadId": upload}, body=body)
        self.assertEqual((r.status, r.code), (200, None), r.body)
        completed = r.body
        r = await a.request("GET", "/mpb/big")
        self.assertEqual((r.status, r.body == one + two), (200, True))
        # The Complete retried (its answer lost) lands on A: the same answer,
        # as AWS gives while the object is unchanged (it was NoSuchUpload).
        r = await a.request("POST", "/mpb/big", {"uploadId": upload}, body=body)
        self.assertEqual((r.status, r.body), (200, completed))
        # Completed through B: A, which made it, no longer lists it.
        r = await a.request("GET", "/mpb", "uploads")
        self.assertNotIn(upload.encode(), r.body)
