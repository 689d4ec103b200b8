"""
Concurrent NFSv3 changes share the embedded store's commits (group commit),
end to end: CREATE calls from several clients in flight at once, over the
RPC layer and the vfs, on the store's writer thread with fsync on. Each reply
still comes after the commit that made its change durable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from claudefs_gateway.backend.embedded import EmbeddedBackend
from claudefs_gateway.core import config as cfg
from claudefs_gateway.core.metrics import Metrics, RequestMetrics
from claudefs_gateway.nfs.context import NFSContext
from claudefs_gateway.nfs.v3 import codec as c
from claudefs_gateway.nfs.v3.procs import NFS3
from claudefs_gateway.rpc import message as msg
from claudefs_gateway.rpc.drc import ReplyCache
from claudefs_gateway.rpc.message import AuthSys
from claudefs_gateway.rpc.server import Peer, RPCServer
from claudefs_gateway.rpc.xdr import Packer, Unpacker
from claudefs_gateway.vfs import VFS, UserDB

CONFIG = "exports: [{path: /export, root_squash: false}]\n"
# mode 0644 set, nothing else
SATTR = b"\0\0\0\1\0\0\x01\xa4" + b"\0\0\0\0" * 5


class GroupCommitTests(TestCase):
    async def test_concurrent_creates_share_commits(self) -> None:
        store = EmbeddedBackend(Path(self.mktemp()), reactor)
        await store.open()
        self.addCleanup(store.close)
        vfs = VFS(
            store, cfg.loads(CONFIG), reactor, os.urandom(32), UserDB(reactor, inline=[]), Metrics()
        )
        await vfs.open()
        server = RPCServer(ReplyCache(1024))
        ctx = NFSContext(lambda: defer.succeed(vfs))
        server.add(NFS3(ctx, RequestMetrics(Metrics(), "nfs3")).program())
        export = vfs.exports.by_path("/export")
        assert export is not None
        root = vfs.handle(export, await store.getattr(export.root_ino))
        acked: list[str] = []
        before = store.stats.durable_commits

        def create(i: int) -> Any:
            p = Packer()
            p.opaque(root)
            p.string(b"f%03d" % i)
            p.u32(c.UNCHECKED)
            call = msg.encode_call(
                i + 1,
                c.NFS_PROGRAM,
                c.NFS_V3,
                c.CREATE,
                p.bytes() + SATTR,
                AuthSys(0, b"client%d" % (i % 8), 0, 0, ()),
            )
            peer = Peer(f"10.0.0.{i % 8 + 1}", 700, "tcp", 1 << 30)
            got = server.handle(call, peer)
            assert isinstance(got, defer.Deferred)

            def done(chunks: list[bytes]) -> None:
                data = b"".join(chunks)
                u = Unpacker(data, msg.parse_reply(data).results_at)
                self.assertEqual(u.u32(), 0)
                # The reply goes only once a commit made the change durable.
                self.assertGreater(store.stats.durable_commits, before)
                acked.append(f"f{i:03d}")

            return got.addCallback(done)

        await defer.gatherResults([create(i) for i in range(40)])
        self.assertEqual(len(acked), 40)
        used = store.stats.durable_commits - before
        # 40 creates at once: a handful of commits, not 40.
        self.assertGreaterEqual(used, 1)
        self.assertLessEqual(used, 10)
        self.assertGreater(store.stats.largest_batch, 1)
        page = await store.readdir(export.root_ino, 0, bytes(8), 100)
        self.assertEqual(len(page.entries), 40)
