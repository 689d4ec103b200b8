"""
The small PUT's fast paths (issue 18): a body that fits one write is put
with one store operation (the embedded store's C{put_file}: created, written,
described and published in one durable transaction) or, on the staging
path, written unstable and made durable by the rename that publishes it
(C{renames_sync_data}). What must still hold: an acknowledged PUT is
durable, a failure leaves no partial object and answers as before, concurrent
PUTs of one key leave one whole object, and a crash loses nothing
acknowledged.

These run on the embedded store whatever C{CFS_S3_TEST_BACKEND} says: the
fast path is its own.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from claudefs_gateway import service
from claudefs_gateway.backend.embedded import EmbeddedBackend
from claudefs_gateway.backend.embedded import _engine as engine_module
from claudefs_gateway.core import config as cfg
from claudefs_gateway.s3.tree import STAGING
from tests.helpers import bin_path, kill_on_cleanup, spawn, write_config
from tests.s3.harness import Client, gateway_yaml, raw_connect, raw_request, s3_port

#: Past the embedded store's inline size (4 KiB by default): the object has a
#: data file, which the publishing rename syncs.
SIZE = 8192


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


class SmallPutFailureTests(TestCase):
    async def setUp(self) -> None:
        data = os.path.abspath(self.mktemp())
        root = service.build(cfg.loads(gateway_yaml(data, backend="embedded")), reactor, ["s3"])
        root.privilegedStartService()
        root.startService()
        self.addCleanup(root.stopService)
        self.s3 = root.getServiceNamed("proto:s3")
        await self.s3.ready()
        self.assertTrue(self.s3.tree.renames_sync_data)
        self.client = Client(s3_port(root))
        self.addCleanup(self.client.close)
        r = await self.client.request("PUT", "/bkt")
        self.assertEqual(r.status, 200)

    async def put(self, key: str, body: bytes) -> Any:
        return await self.client.request("PUT", f"/bkt/{key}", body=body)

    async def staged(self) -> list[bytes]:
        """Names left in the staging area's user directories."""
        tree = self.s3.tree
        out = []
        for _, entry in await tree.read_dir(tree.root_caller, tree.staging_ino):
            for name, _ in await tree.read_dir(tree.root_caller, entry.ino):
                out.append(name)
        return out

    async def test_write_error_at_publish_keeps_the_old_object(self) -> None:
        """
        The data cannot be made durable when the rename publishes it (an
        I/O error in writeback): 500, the key keeps its old object, nothing
        is left staged.
        """
        old = os.urandom(SIZE)
        self.assertEqual((await self.put("k/obj", old)).status, 200)

        def failing(fd: int) -> None:
            raise OSError(errno.EIO, "I/O error")

        self.patch(os, "fdatasync", failing)
        r = await self.put("k/obj", os.urandom(SIZE))
        self.assertEqual((r.status, r.code), (500, "InternalError"), r.body)
        r = await self.put("k/new", os.urandom(SIZE))
        self.assertEqual((r.status, r.code), (500, "InternalError"), r.body)
        self.flushLoggedErrors(OSError)
        self.patch(os, "fdatasync", os.fdatasync)
        got = await self.client.request("GET", "/bkt/k/obj")
        self.assertEqual((got.status, got.body), (200, old))
        self.assertEqual(got.header("etag"), f'"{md5(old)}"')
        missing = await self.client.request("GET", "/bkt/k/new")
        self.assertEqual(missing.status, 404)
        self.assertEqual(await self.staged(), [])

    async def test_disk_full_mid_small_put(self) -> None:
        """
        The store is full when the small body is written: 507
        InsufficientStorage as before, the old object stays, a new key does
        not appear, nothing is left staged.
        """
        old = os.urandom(SIZE)
        self.assertEqual((await self.put("obj", old)).status, 200)

        def full(fd: int, data: Any, offset: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(engine_module, "pwrite_all", full)
        for key in ("obj", "fresh"):
            r = await self.put(key, os.urandom(SIZE))
            self.assertEqual((r.status, r.code), (507, "InsufficientStorage"), r.body)
        self.patch(engine_module, "pwrite_all", engine_module.pwrite_all)
        got = await self.client.request("GET", "/bkt/obj")
        self.assertEqual((got.status, got.body), (200, old))
        self.assertEqual((await self.client.request("GET", "/bkt/fresh")).status, 404)
        self.assertEqual(await self.staged(), [])

    async def test_concurrent_puts_of_one_key(self) -> None:
        """
        Eight clients PUT the same key at once: each is answered 200 with
        its own body's ETag, and the key then holds one of the bodies whole,
        with that body's ETag.
        """
        bodies = [os.urandom(4096 + 1024 * i) for i in range(8)]
        clients = [Client(self.client.port) for _ in bodies]
        for c in clients:
            self.addCleanup(c.close)
        rs = await defer.gatherResults(
            [
                defer.ensureDeferred(c.request("PUT", "/bkt/same/key", body=b))
                for c, b in zip(clients, bodies, strict=True)
            ]
        )
        for r, b in zip(rs, bodies, strict=True):
            self.assertEqual(r.status, 200, r.body)
            self.assertEqual(r.header("etag"), f'"{md5(b)}"')
        got = await self.client.request("GET", "/bkt/same/key")
        self.assertIn(got.body, bodies)
        self.assertEqual(got.header("etag"), f'"{md5(got.body)}"')
        self.assertEqual(await self.staged(), [])

    async def test_pipelined_on_one_connection(self) -> None:
        """
        PUT, PUT again, GET, DELETE, GET of one key sent at once on one
        keep-alive connection: answered in order, each seeing the one before.
        """
        a, b = os.urandom(4096), os.urandom(4000)
        c = self.client
        reqs = b""
        for method, body in (("PUT", a), ("PUT", b), ("GET", b""), ("DELETE", b""), ("GET", b"")):
            url, headers = c.sign(method, c.url("/bkt/p/key"), {}, body)
            if method == "PUT":
                headers["Content-Length"] = str(len(body))
            reqs += raw_request(method, url, headers, body)
        conn = await raw_connect(c.port)
        conn.transport.write(reqs)
        await conn.wait(lambda _: len(conn.responses()) == 5)
        conn.transport.loseConnection()
        rs = conn.responses()
        self.assertEqual([r[0] for r in rs], [200, 200, 200, 204, 404])
        self.assertEqual([r[1].get("etag") for r in rs[:2]], [f'"{md5(a)}"', f'"{md5(b)}"'])
        self.assertEqual(rs[2][2], b)

    async def test_stable_write_when_the_store_does_not_sync_on_rename(self) -> None:
        """
        A store without C{renames_sync_data} (nor C{put_file}): the small
        body is staged and written stable, as before.
        """
        self.patch(self.s3.tree.vfs.backend, "put_file", None)
        self.assertEqual((await self.put("warm", b"x")).status, 200)  # the staging directory
        self.s3.tree.renames_sync_data = False
        stats = self.s3.tree.vfs.backend.stats
        before = stats.durable_commits
        body = os.urandom(4096)
        self.assertEqual((await self.put("stable", body)).status, 200)
        self.assertEqual(stats.durable_commits - before, 2)
        got = await self.client.request("GET", "/bkt/stable")
        self.assertEqual(got.body, body)


class StagedSmallPutFailureTests(SmallPutFailureTests):
    """
    The same, through a staging file published by a rename: the path a
    store without C{put_file} takes (and large or encrypted bodies, tags,
    conditional or versioned writes on any store).
    """

    async def setUp(self) -> None:
        await super().setUp()
        self.patch(self.s3.tree.vfs.backend, "put_file", None)
        self.assertFalse(self.s3.tree.vfs.can_put_file)


class SmallPutKillTests(TestCase):
    timeout = 120

    async def test_kill_loses_nothing_acknowledged(self) -> None:
        """
        Small PUTs (new keys and overwrites) and DELETEs through a gateway
        process; then a burst of PUTs still in flight when kill -9 comes.
        The store, reopened, holds every acknowledged object whole, and each
        key of the burst holds its old body or its new one, whole.
        """
        data = os.path.abspath(self.mktemp())
        text = "log_format: json\n" + gateway_yaml(data, backend="embedded")
        proc = spawn([bin_path("cfs-gateway"), "start", "s3", "--config", write_config(self, text)])
        kill_on_cleanup(self, proc)
        port = await proc.wait_listening("s3")
        client = Client(port)
        self.addCleanup(client.close)
        self.assertEqual((await client.request("PUT", "/bkt")).status, 200)
        want: dict[str, bytes] = {}
        for i in range(12):
            key = f"d{i % 3}/k{i}"
            want[key] = os.urandom(4096)
            r = await client.request("PUT", f"/bkt/{key}", body=want[key])
            self.assertEqual(r.status, 200, r.body)
        for i in range(0, 12, 4):
            key = f"d{i % 3}/k{i}"
            want[key] = os.urandom(3000)
            self.assertEqual(
                (await client.request("PUT", f"/bkt/{key}", body=want[key])).status, 200
            )
        for key in ("d1/k1", "d2/k2"):
            self.assertEqual((await client.request("DELETE", f"/bkt/{key}")).status, 204)
            del want[key]
        # A burst in flight: overwrites of acknowledged keys and new keys.
        burst = {f"d{i % 3}/k{i}": os.urandom(SIZE) for i in range(3, 9)}
        burst.update({f"new/b{i}": os.urandom(4096 * (1 + i % 2)) for i in range(4)})
        clients = [Client(port) for _ in burst]
        for c in clients:
            self.addCleanup(c.close)
        acked: list[str] = []

        def answered(r: Any, key: str) -> None:
            if r.status == 200:
                acked.append(key)

        inflight = [
            defer.ensureDeferred(c.request("PUT", f"/bkt/{k}", body=b)).addCallbacks(
                answered, lambda f: None, callbackArgs=(k,)
            )
            for c, (k, b) in zip(clients, burst.items(), strict=True)
        ]
        # Killed as soon as the first of them is answered: the others are in flight.
        await defer.DeferredList(inflight, fireOnOneCallback=True)
        proc.signal("KILL")
        self.assertEqual(await proc.ended, -9)
        await defer.DeferredList(inflight)
        store = EmbeddedBackend(Path(data), reactor)
        await store.open()
        self.addCleanup(store.close)

        async def read(key: str) -> bytes | None:
            ino = (await store.lookup(1, b"s3")).ino
            ino = (await store.lookup(ino, b"bkt")).ino
            try:
                for seg in key.split("/"):
                    ino = (await store.lookup(ino, seg.encode())).ino
            except Exception:
                return None
            got, _ = await store.read(ino, 0, 1 << 20)
            return got

        for key, body in want.items():
            got = await read(key)
            if key in burst:
                self.assertIn(got, (body, burst[key]), key)
            else:
                self.assertEqual(got, body, key)
        for key in ("d1/k1", "d2/k2"):
            if key not in burst:
                self.assertIsNone(await read(key), key)
        for key, body in burst.items():
            if key in acked:
                self.assertEqual(await read(key), body, key)
            elif key not in want:
                self.assertIn(await read(key), (None, body), key)
        self.assertEqual((await store.lookup(1, STAGING)).type.name, "DIR")
