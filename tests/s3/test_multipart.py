"""Tests for L{claudefs_gateway.s3.multipart}: staging, expiry on a Clock, restart."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.fstypes import Credentials
from claudefs_gateway.s3.errors import S3Error
from claudefs_gateway.s3.multipart import Uploads
from claudefs_gateway.s3.tree import ObjectMeta, Tree
from claudefs_gateway.testing.vfs import MemoryVFS


def run(testcase: SynchronousTestCase, d: Any) -> Any:
    if not isinstance(d, defer.Deferred):
        d = defer.Deferred.fromCoroutine(d)
    return testcase.successResultOf(d)


class UploadsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.m = MemoryVFS("s3: {root: /s3}\n")
        self.tree = Tree(self.m.vfs)
        run(self, self.tree.open())
        self.active: list[int] = []
        self.failed: list[None] = []
        self.uploads = Uploads(
            self.tree, self.m.clock, 300.0, 4, self.active.append, lambda: self.failed.append(None)
        )
        run(self, self.uploads.open())
        vfs = self.m.vfs
        self.alice = vfs.caller(vfs.exports.s3, "", Credentials(1000, 1000), "s3")
        self.bob = vfs.caller(vfs.exports.s3, "", Credentials(1001, 1001), "s3")

    def test_staged_out_of_every_bucket(self) -> None:
        """An upload is a directory under the hidden staging root, owned by its user."""
        u = run(self, self.uploads.create(self.alice, "b", "k", ObjectMeta(), None, None))
        a = run(self, self.m.vfs.getattr(self.alice, u.ino))
        self.assertEqual((a.uid, a.mode), (1000, 0o700))
        staging = run(self, self.m.vfs.getattr(self.alice, self.tree.staging_ino))
        self.assertEqual((staging.uid, staging.mode), (0, 0o711))
        self.assertEqual(self.active[-1], 1)
        self.assertRaises(S3Error, self.uploads.get, u.id, "b", "k", self.bob)
        self.assertIs(self.uploads.get(u.id, "b", "k", self.alice), u)
        e = self.assertRaises(S3Error, self.uploads.get, u.id, "other", "k", self.alice)
        self.assertEqual(e.code, "NoSuchUpload")

    def test_expiry(self) -> None:
        """No part activity for part_timeout: aborted, counted, staging removed."""
        self.uploads.start_expiry()
        self.addCleanup(self.uploads.stop_expiry)
        idle = run(self, self.uploads.create(self.alice, "b", "idle", ObjectMeta(), None, None))
        busy = run(self, self.uploads.create(self.alice, "b", "busy", ObjectMeta(), None, None))
        busy.active = 1  # a part is being written
        self.m.clock.advance(299)
        self.assertIn(idle.id, self.uploads.uploads)
        self.m.clock.advance(76)
        self.assertNotIn(idle.id, self.uploads.uploads)
        self.assertIn(busy.id, self.uploads.uploads)
        self.assertEqual((len(self.failed), self.active[-1]), (1, 1))
        entries = run(self, self.tree.read_dir(self.tree.root_caller, self.uploads.mpu_ino))
        self.assertEqual([n for n, _ in entries], [busy.id.encode()])

    def test_survive_restart(self) -> None:
        u = run(
            self,
            self.uploads.create(
                self.alice, "b", "k/ey", ObjectMeta(content_type="x/y"), "crc32", "COMPOSITE"
            ),
        )
        again = Uploads(self.tree, self.m.clock, 300.0, 4)
        run(self, again.open())
        v = again.get(u.id, "b", "k/ey", self.alice)
        self.assertEqual((v.meta.content_type, v.algorithm, v.uid), ("x/y", "crc32", 1000))

    def test_abort(self) -> None:
        u = run(self, self.uploads.create(self.alice, "b", "k", ObjectMeta(), None, None))
        run(self, self.uploads.abort(u))
        self.assertEqual((self.uploads.uploads, len(self.failed), self.active[-1]), ({}, 1, 0))
        self.assertRaises(S3Error, self.uploads.get, u.id, "b", "k", self.alice)


class OpenRaceTests(SynchronousTestCase):
    def test_staging_directories_made_by_another_gateway_meanwhile(self) -> None:
        """
        Two gateways opening the S3 state of one new store at once (the
        workers of C{start --workers}) both find no staging directory and no
        upload directory: the one whose mkdir comes second takes the other's
        and opens, where it used to fail (Exists) and answer 503 to S3.
        """
        from claudefs_gateway.s3.multipart import MPU_DIR
        from claudefs_gateway.s3.tree import STAGING
        from claudefs_gateway.testing.vfs import RacingBackend

        class Racing(RacingBackend):
            racing = frozenset({STAGING, MPU_DIR})

        m = MemoryVFS("s3: {root: /s3}\n", backend=Racing)
        tree = Tree(m.vfs)
        run(self, tree.open())
        uploads = Uploads(tree, m.clock, 300.0, 4)
        run(self, uploads.open())
        self.assertEqual(m.backend.raced, [STAGING, MPU_DIR])
        root = tree.root_caller
        staging = run(self, m.vfs.lookup(root, m.vfs.root_ino, STAGING))
        self.assertEqual(tree.staging_ino, staging.ino)
        mpu = run(self, m.vfs.lookup(root, staging.ino, MPU_DIR))
        self.assertEqual(uploads.mpu_ino, mpu.ino)
        # The staging area's owner and mode are still put right.
        self.assertEqual((staging.uid, staging.mode), (0, 0o711))
