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


class SharedStagingTests(SynchronousTestCase):
    """
    Several gateways on one staging area (the workers of C{start --workers},
    one of them started again by the supervisor while the others serve): a
    gateway starting clears only what no live gateway can still be writing.
    """

    def setUp(self) -> None:
        self.m = MemoryVFS("s3: {root: /s3}\n")
        self.a = Tree(self.m.vfs)
        run(self, self.a.open())
        vfs = self.m.vfs
        self.alice = vfs.caller(vfs.exports.s3, "", Credentials(1000, 1000), "s3")

    def names(self, tree: Tree, ino: int) -> list[bytes]:
        return [n for n, _ in run(self, tree.read_dir(tree.root_caller, ino))]

    def test_a_starting_gateway_keeps_another_ones_upload_in_progress(self) -> None:
        """
        Gateway A is receiving a PUT body into its temporary file when
        gateway B starts: the file stays (B used to remove it, and A's PUT
        failed), until it is C{s3.temp_max_age_secs} without a change.
        """
        d, name, tmp = run(self, self.a.temp_file(self.alice))
        run(self, self.m.vfs.write(self.alice, tmp.ino, 0, b"x" * 10000, False))
        self.m.clock.advance(120)
        run(self, self.m.vfs.write(self.alice, tmp.ino, 10000, b"y" * 10000, False))
        self.m.clock.advance(120)
        b = Tree(self.m.vfs)
        run(self, b.open(600.0))
        self.assertEqual(self.names(b, d), [name])
        # A finishes its upload: the rename into place still finds its file.
        run(self, self.m.vfs.rename(self.alice, d, name, d, b"done"))
        self.assertEqual(run(self, self.m.vfs.lookup(self.alice, d, b"done")).size, 20000)
        # Left by a crash, unchanged for longer than the bound: removed.
        self.m.clock.advance(601)
        c = Tree(self.m.vfs)
        run(self, c.open(600.0))
        self.assertEqual(self.names(c, d), [])

    def test_upload_directory_being_created_by_another_gateway_stays(self) -> None:
        """
        An upload directory without its state is another gateway's create
        between its mkdir and its state (kept), or, once old, a crash's
        (removed).
        """

        first = Uploads(self.a, self.m.clock, 300.0, 4)
        run(self, first.open())
        rc = self.a.root_caller
        run(self, self.m.vfs.mkdir(rc, first.mpu_ino, b"f" * 48, 0o700))
        second = Uploads(Tree(self.m.vfs), self.m.clock, 300.0, 4)
        run(self, second.tree.open())
        run(self, second.open())
        self.assertEqual(self.names(self.a, first.mpu_ino), [b"f" * 48])
        self.m.clock.advance(3601)
        third = Uploads(Tree(self.m.vfs), self.m.clock, 300.0, 4)
        run(self, third.tree.open())
        run(self, third.open())
        self.assertEqual(self.names(self.a, first.mpu_ino), [])

    def test_upload_served_by_another_gateway_does_not_expire(self) -> None:
        """
        Gateway B loaded A's upload at its start; A keeps writing parts of
        it, which B never sees: B's expiry finds the activity in the store
        and keeps the upload, and expires it once the store too is idle.
        """
        from claudefs_gateway.s3.multipart import part_name

        a = Uploads(self.a, self.m.clock, 300.0, 4)
        run(self, a.open())
        u = run(self, a.create(self.alice, "b", "k", ObjectMeta(), None, None))
        b = Uploads(self.a, self.m.clock, 300.0, 4)
        run(self, b.open())
        self.assertIn(u.id, b.uploads)
        for n in range(1, 4):
            self.m.clock.advance(200)
            f = run(self, self.m.vfs.create(self.alice, u.ino, b"t-%d" % n, 0o600))
            run(self, self.m.vfs.write(self.alice, f.ino, 0, b"p" * 100, False))
            run(self, self.m.vfs.rename(self.alice, u.ino, b"t-%d" % n, u.ino, part_name(n)))
            a.touch(u)
            self.assertEqual(run(self, b.expire()), 0)
        self.assertEqual(len(self.names(self.a, u.ino)), 3)
        self.m.clock.advance(301)
        self.assertEqual(run(self, b.expire()), 1)
        self.assertEqual(self.names(self.a, b.mpu_ino), [])

    def test_only_upload_ids_are_looked_up(self) -> None:
        """An uploadId that no create could have made (a path, a dot) is NoSuchUpload, not a lookup."""
        u = Uploads(self.a, self.m.clock, 300.0, 4)
        run(self, u.open())
        run(self, self.m.vfs.mkdir(self.a.root_caller, u.mpu_ino, b"x" * 48, 0o700))
        for bad in ("..", ".", "", "x" * 48, "A" * 48, "../u1000"):
            f = self.failureResultOf(
                defer.Deferred.fromCoroutine(u.find(bad, "b", "k", self.alice)), S3Error
            )
            self.assertEqual(f.value.code, "NoSuchUpload")
        self.assertEqual(u.uploads, {})

    def test_upload_finished_elsewhere_is_dropped_not_expired(self) -> None:
        """
        Completed or aborted through another gateway: this one drops it
        without counting an expiry; and a store that cannot answer keeps
        the sweeps going.
        """
        from claudefs_gateway import errors

        a = Uploads(self.a, self.m.clock, 300.0, 4)
        run(self, a.open())
        gone = run(self, a.create(self.alice, "b", "gone", ObjectMeta(), None, None))
        kept = run(self, a.create(self.alice, "b", "kept", ObjectMeta(), None, None))
        failed: list[None] = []
        b = Uploads(self.a, self.m.clock, 300.0, 4, on_failed=lambda: failed.append(None))
        run(self, b.open())
        run(self, a.abort(gone))
        self.m.clock.advance(301)
        real = self.m.vfs.getattr

        def getattr(caller: Any, ino: int) -> Any:
            if ino == kept.ino:
                raise errors.BackendUnavailable("meta: no answer")
            return real(caller, ino)

        self.patch(self.m.vfs, "getattr", getattr)
        self.assertEqual(run(self, b.expire()), 0)
        self.assertEqual((list(b.uploads), failed), ([kept.id], []))
        self.assertEqual(len(self.flushLoggedErrors(errors.BackendUnavailable)), 1)
        self.patch(self.m.vfs, "getattr", real)
        self.assertEqual(run(self, b.expire()), 1)
        self.assertEqual((b.uploads, failed), ({}, [None]))
