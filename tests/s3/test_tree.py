"""Tests for L{claudefs_gateway.s3.tree}: the mapping's edge cases on a memory vfs."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway import errors
from claudefs_gateway.fstypes import Credentials
from claudefs_gateway.s3.errors import S3Error
from claudefs_gateway.s3.keys import Key
from claudefs_gateway.s3.tree import ObjectMeta, Tree
from claudefs_gateway.testing.vfs import MemoryVFS


def run(testcase: SynchronousTestCase, d: Any) -> Any:
    if not isinstance(d, defer.Deferred):
        d = defer.Deferred.fromCoroutine(d)
    return testcase.successResultOf(d)


class TreeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.m = MemoryVFS("s3: {root: /s3}\n")
        self.vfs = self.m.vfs
        self.tree = Tree(self.vfs)
        run(self, self.tree.open())
        self.root = self.vfs.caller(self.vfs.exports.s3, "", Credentials(0, 0), "s3")
        self.alice = self.vfs.caller(self.vfs.exports.s3, "", Credentials(1000, 1000), "s3")
        run(self, self.vfs.setattr(self.root, self.vfs.exports.s3.root_ino, _mode(0o1777)))
        self.bucket = run(self, self.tree.create_bucket(self.alice, "bkt"))

    async def put(self, key: str, data: bytes) -> Any:
        d, name, tmp = await self.tree.temp_file(self.alice)
        await self.vfs.write(self.alice, tmp.ino, 0, data, True)
        return await self.tree.commit(
            self.alice, self.bucket, Key(key), d, name, ObjectMeta(etag="e")
        )

    def test_commit_survives_a_concurrent_prune(self) -> None:
        """A delete prunes the directory a PUT was about to rename into: the PUT remakes it."""
        run(self, self.put("p/one", b"1"))
        real_rename = self.vfs.rename
        state = {"pruned": False}

        def rename(caller: Any, *args: Any) -> Any:
            if not state["pruned"]:
                state["pruned"] = True
                # What a concurrent DeleteObject of p/one does between our mkdir and rename.
                run(self, self.tree.delete(self.alice, self.bucket, Key("p/one")))
            return real_rename(caller, *args)

        self.vfs.rename = rename  # type: ignore[method-assign]
        a = run(self, self.put("p/two", b"2"))
        self.vfs.rename = real_rename  # type: ignore[method-assign]
        got = run(self, self.tree.lookup(self.alice, self.bucket, Key("p/two")))
        self.assertEqual((got.ino, state["pruned"]), (a.ino, True))

    def test_conflicts(self) -> None:
        """Object a and object a/b cannot both exist, in either order."""
        run(self, self.put("a", b"file"))
        f = self.failureResultOf(defer.Deferred.fromCoroutine(self.put("a/b", b"x")), S3Error)
        self.assertEqual(f.value.code, "KeyConflict")
        run(self, self.put("c/d", b"x"))
        f = self.failureResultOf(defer.Deferred.fromCoroutine(self.put("c", b"x")), S3Error)
        self.assertEqual(f.value.code, "KeyConflict")

    def test_bucket_rules(self) -> None:
        bob = self.vfs.caller(self.vfs.exports.s3, "", Credentials(1001, 1001), "s3")
        f = self.failureResultOf(
            defer.Deferred.fromCoroutine(self.tree.create_bucket(bob, "bkt")), S3Error
        )
        self.assertEqual(f.value.code, "BucketAlreadyExists")
        f = self.failureResultOf(
            defer.Deferred.fromCoroutine(self.tree.create_bucket(self.alice, "bkt")), S3Error
        )
        self.assertEqual(f.value.code, "BucketAlreadyOwnedByYou")
        self.assertEqual((self.bucket.mode, self.bucket.uid), (0o711, 1000))
        f = self.failureResultOf(
            defer.Deferred.fromCoroutine(self.tree.bucket(self.alice, ".cfs-s3")), S3Error
        )
        self.assertEqual(f.value.code, "NoSuchBucket")

    def test_crash_leftovers_removed_at_open(self) -> None:
        """
        Once unchanged for s3.temp_max_age_secs: younger, a temporary file
        may be another gateway's upload in progress (test_multipart
        L{SharedStagingTests}).
        """
        d, name, _ = run(self, self.tree.temp_file(self.alice))
        self.m.clock.advance(3600.5)
        again = Tree(self.vfs)
        run(self, again.open())
        self.failureResultOf(self.vfs.lookup(self.root, d, name), errors.NotFound)


def _mode(mode: int) -> Any:
    from claudefs_gateway.fstypes import SetAttrs

    return SetAttrs(mode=mode)


class ObjectMetaTests(SynchronousTestCase):
    def test_empty_object_round_trip(self) -> None:
        """An empty object's size and time survive encoding (0 is not "absent")."""
        m = ObjectMeta(etag="e", mtime_ns=0, size=0, vid="v")
        back = ObjectMeta.decode(m.encode())
        self.assertEqual((back.size, back.mtime_ns, back.vid), (0, 0, "v"))
        self.assertIsNone(ObjectMeta.decode(ObjectMeta(etag="e").encode()).size)
