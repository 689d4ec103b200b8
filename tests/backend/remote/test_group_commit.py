"""
Group commit at the meta server across gateways: the changes several
gateways (C{--workers}) send at once are committed together, one SQLite
transaction and one flush for all of them, and each is answered only after
the commit that holds it (RFC 1813 section 3.3.8: a CREATE is replied to
once it is on stable storage).
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from claudefs_gateway.fstypes import FileType
from tests.backend.remote.harness import Cluster

#: Creates each of the two gateways sends at once.
N = 40


class GroupCommitTests(TestCase):
    timeout = 60

    async def test_two_gateways_creates_share_commits(self) -> None:
        cluster = Cluster(self, durable=True)
        await cluster.start()
        gateways = [cluster.backend(), cluster.backend()]
        for g in gateways:
            await g.open()
            self.addCleanup(g.close)
        root = (await gateways[0].root()).ino
        assert cluster.meta is not None and cluster.meta.factory is not None
        store = cluster.meta.factory.handler.backend
        commits, ops = store.stats.durable_commits, store.stats.ops
        answered: list[int] = []

        def create(g: int, i: int) -> defer.Deferred[None]:
            d = gateways[g].create(root, b"g%d-%d" % (g, i), FileType.REG, 0o644, 0, 0)

            def done(_: object) -> None:
                answered.append(g)

            return d.addCallback(done)

        await defer.gatherResults([create(g, i) for i in range(N) for g in (0, 1)])
        self.assertEqual(len(answered), 2 * N)
        self.assertEqual(store.stats.ops - ops, 2 * N)
        made = store.stats.durable_commits - commits
        # Without group commit each create is a commit of its own (2 * N).
        self.assertGreaterEqual(made, 1)
        self.assertLessEqual(made, N, f"{made} commits for {2 * N} creates")
        self.assertGreater(store.stats.largest_batch, 1)


class UnsyncedChangesTests(TestCase):
    """
    Changes sent with C{durable} false (SMB's: the lead's durability rule,
    docs/workers.rst) are answered by the meta server without a sync, as the
    single process answers them; the gateway's C{sync()} (the RPC's SYNC)
    makes them durable, and the default stays a sync per change (NFS).
    """

    timeout = 60

    async def test_unsynced_until_sync(self) -> None:
        from claudefs_gateway.fstypes import SetAttrs

        cluster = Cluster(self, durable=True)
        await cluster.start()
        g = cluster.backend()
        await g.open()
        self.addCleanup(g.close)
        root = (await g.root()).ino
        assert cluster.meta is not None and cluster.meta.factory is not None
        store = cluster.meta.factory.handler.backend
        commits = store.stats.durable_commits
        f = await g.create(root, b"a", FileType.REG, 0o644, 0, 0, durable=False)
        d = await g.create(root, b"d", FileType.DIR, 0o755, 0, 0, durable=False)
        await g.setattr(f.ino, SetAttrs(mode=0o600), durable=False)
        await g.setxattr(f.ino, b"user.k", b"v", durable=False)
        r = await g.rename(root, b"a", root, b"b", durable=False)
        self.assertEqual(r.source.ino, f.ino)
        await g.rmdir(root, b"d", durable=False)
        gone = await g.unlink(root, b"b", durable=False)
        self.assertEqual(gone.ino, f.ino)
        self.assertNotEqual(d.ino, f.ino)
        self.assertEqual(store.stats.durable_commits - commits, 0, "an unsynced change synced")
        await g.sync()
        self.assertEqual(store.stats.durable_commits - commits, 1)
        await g.create(root, b"c", FileType.REG, 0o644, 0, 0)
        self.assertEqual(store.stats.durable_commits - commits, 2, "a default change unsynced")
