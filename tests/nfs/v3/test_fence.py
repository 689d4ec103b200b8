"""
An NFSv3 CREATE, REMOVE or COMMIT over the embedded store on the real
reactor, fsync on, with the store's AIO log sync held: the reply is made
while the sync is in flight (the vfs has applied the change, the reply's
bytes are ready) and leaves only once the sync returned (RFC 1813's stable
storage); a failed sync turns it into NFS3ERR_IO (L{claudefs_gateway.core.fence}).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import SkipTest, TestCase

from claudefs_gateway.backend.embedded import EmbeddedBackend
from claudefs_gateway.backend.embedded._logsync import AioLogSync
from claudefs_gateway.core import config as cfg
from claudefs_gateway.core.metrics import Metrics, RequestMetrics
from claudefs_gateway.nfs.context import NFSContext
from claudefs_gateway.nfs.errors import NFS3ERR
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
PEER = Peer("10.0.0.1", 700, "tcp", 1 << 30)


class FencedReplyTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        s = AioLogSync.create(reactor)
        if s is None:
            raise SkipTest("no Linux AIO here")
        s.close()
        self.store = store = EmbeddedBackend(Path(self.mktemp()), reactor, inline_max=4096)
        await store.open()
        self.addCleanup(store.close)
        self.vfs = vfs = VFS(
            store, cfg.loads(CONFIG), reactor, os.urandom(32), UserDB(reactor, inline=[]), Metrics()
        )
        await vfs.open()
        self.server = RPCServer(ReplyCache(1024))
        ctx = NFSContext(lambda: defer.succeed(vfs))
        self.server.add(NFS3(ctx, RequestMetrics(Metrics(), "nfs3")).program())
        export = vfs.exports.by_path("/export")
        assert export is not None
        self.export = export
        self.root = vfs.handle(export, await store.getattr(export.root_ino))
        self.xid = 0

    def hold(self, fail: BaseException | None = None) -> list[Any]:
        """Hold each AIO sync: (Deferred of the real sync, release) per sync."""
        assert self.store._log_sync is not None
        real = self.store._log_sync.sync
        held: list[Any] = []
        answered: list[Any] = []

        def sync(fd: int) -> defer.Deferred[None]:
            done = real(fd)
            gate: defer.Deferred[None] = defer.Deferred()

            def release() -> None:
                if gate.called or done in answered:
                    return
                answered.append(done)

                def answer(result: object) -> None:
                    if fail is not None:
                        gate.errback(fail)
                    else:
                        gate.callback(None)

                done.addBoth(answer)

            held.append((done, release))
            return gate

        def release_all() -> None:
            for _, release in held:
                release()

        # Before the store's close (cleanups run last first): a test that
        # failed holding a sync would leave close waiting for it.
        self.addCleanup(release_all)
        self.patch(self.store._log_sync, "sync", sync)
        return held

    def call(self, proc: int, args: bytes) -> defer.Deferred[Any]:
        """The reply's chunks (a Deferred, fired already if it was sent at once)."""
        self.xid += 1
        data = msg.encode_call(
            self.xid, c.NFS_PROGRAM, c.NFS_V3, proc, args, AuthSys(0, b"client", 0, 0, ())
        )
        got = self.server.handle(data, PEER)
        return got if isinstance(got, defer.Deferred) else defer.succeed(got)

    def create(self, name: bytes) -> defer.Deferred[Any]:
        p = Packer()
        p.opaque(self.root)
        p.string(name)
        p.u32(c.UNCHECKED)
        return self.call(c.CREATE, p.bytes() + SATTR)

    def remove(self, name: bytes) -> defer.Deferred[Any]:
        p = Packer()
        p.opaque(self.root)
        p.string(name)
        return self.call(c.REMOVE, p.bytes())

    def status(self, chunks: list[bytes]) -> int:
        data = b"".join(chunks)
        return Unpacker(data, msg.parse_reply(data).results_at).u32()

    async def test_create_reply_made_during_the_sync_sent_after(self) -> None:
        held = self.hold()
        got = self.create(b"f")
        self.assertEqual(len(held), 1)
        # The vfs has the new file (the work after the store's answer is
        # done) while the reply waits for the sync.
        a = self.vfs.attrs_now((await self.store.lookup(self.export.root_ino, b"f")).ino)
        self.assertIsNotNone(a)
        await held[0][0]
        self.assertNoResult(got)
        held[0][1]()
        self.assertEqual(self.status(await got), 0)
        self.assertFalse(self.store._engine._wal_unsynced)

    async def test_remove_reply_made_during_the_sync_sent_after(self) -> None:
        self.assertEqual(self.status(await self.create(b"f")), 0)
        held = self.hold()
        got = self.remove(b"f")
        self.assertEqual(len(held), 1)
        self.assertNotIn((self.export.root_ino, b"f"), self.vfs.name_cache)
        await held[0][0]
        self.assertNoResult(got)
        held[0][1]()
        self.assertEqual(self.status(await got), 0)

    async def test_commit_reply_waits_for_the_sync(self) -> None:
        self.assertEqual(self.status(await self.create(b"f")), 0)
        f = await self.store.lookup(self.export.root_ino, b"f")
        handle = self.vfs.handle(self.export, f)
        p = Packer()
        p.opaque(handle)
        p.u64(0)
        p.u32(4096)
        p.u32(c.UNSTABLE)
        p.opaque(b"x" * 4096)
        self.assertEqual(self.status(await self.call(c.WRITE, p.bytes())), 0)
        held = self.hold()
        p = Packer()
        p.opaque(handle)
        got = self.call(c.COMMIT, p.bytes() + bytes(12))
        self.assertEqual(len(held), 1)
        await held[0][0]
        self.assertNoResult(got)
        held[0][1]()
        self.assertEqual(self.status(await got), 0)

    async def test_failed_sync_answers_io(self) -> None:
        held = self.hold(OSError(errno.EIO, "injected"))
        got = self.create(b"f")
        held[0][1]()
        self.assertEqual(self.status(await got), NFS3ERR.IO)
        self.flushLoggedErrors(OSError)
