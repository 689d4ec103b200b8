"""
Changes of one key racing each other, through boto3 (a subprocess,
L{tests.s3.boto_steps}) against a gateway on loopback: a lifecycle expiry
and a PUT of the key it expires, an abort whose upload directory another
gateway removed meanwhile, a copy whose source is a delete marker, a
CompleteMultipartUpload retried after its object was replaced
(docs/s3.rst "Lifecycle", where the key lock is described).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from claudefs_gateway import errors
from claudefs_gateway.fstypes import SetAttrs
from claudefs_gateway.s3.multipart import SWEEPS
from tests.helpers import REPO, child_env, spawn
from tests.s3.harness import ALICE, Client, s3_port, start_gateway

DAY = 86400
VERSIONED = {"Status": "Enabled"}


class ReplacedMeanwhileTests(TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.root = await start_gateway(self)
        self.port = s3_port(self.root)
        self.c = Client(self.port)
        self.addCleanup(self.c.close)
        self.s3 = self.root.getServiceNamed("proto:s3")
        self.tree = self.s3.tree
        self.vfs = self.tree.vfs
        self.rc = self.tree.root_caller
        self.answer: Any = None  # what completed_upload's Complete answered

    async def boto(self, *steps: Any) -> list[Any]:
        """boto3 steps (L{tests.s3.boto_steps}) in a subprocess; their results."""
        argv = [
            sys.executable,
            "-m",
            "tests.s3.boto_steps",
            f"http://127.0.0.1:{self.port}",
            ALICE[0],
            ALICE[1],
            json.dumps(list(steps)),
        ]
        proc = spawn(argv, env=child_env(), path=REPO)
        status = await proc.ended
        err = proc.stderr.decode("utf-8", "replace")
        self.assertEqual(status, 0, err + "\n".join(proc.text))
        return json.loads(proc.text[-1])  # type: ignore[no-any-return]

    def after(
        self,
        obj: Any,
        method: str,
        when: Callable[..., bool],
        change: Callable[[], Awaitable[None]],
    ) -> list[bool]:
        """After the first C{obj.method} call C{when} accepts, run C{change} before going on."""
        real = getattr(obj, method)
        fired: list[bool] = []

        async def hooked(*args: object, **kw: object) -> object:
            result = await real(*args, **kw)
            if not fired and when(*args):
                fired.append(True)
                await change()
            return result

        self.patch(obj, method, lambda *a, **kw: defer.ensureDeferred(hooked(*a, **kw)))
        return fired

    # -- lifecycle expiry against a PUT of the key --------------------------------------------

    async def lifecycle_bucket(self, versioned: bool = False, marker: bool = False) -> Any:
        """
        Bucket lcb, expiring objects a day old (or, with C{marker}, delete
        markers left alone); its object k, written three days ago.
        """
        rule: dict[str, Any] = {"ID": "day", "Filter": {"Prefix": ""}, "Status": "Enabled"}
        rule["Expiration"] = {"ExpiredObjectDeleteMarker": True} if marker else {"Days": 1}
        steps: list[Any] = [["create_bucket", {"Bucket": "lcb"}]]
        if versioned:
            conf = {"Bucket": "lcb", "VersioningConfiguration": VERSIONED}
            steps.append(["put_bucket_versioning", conf])
        steps += [
            [
                "put_bucket_lifecycle_configuration",
                {"Bucket": "lcb", "LifecycleConfiguration": {"Rules": [rule]}},
            ],
            ["put_object", {"Bucket": "lcb", "Key": "k", "Body": "old"}],
        ]
        await self.boto(*steps)
        bucket = await self.vfs.lookup(self.rc, self.tree.export.root_ino, b"lcb")
        old = await self.vfs.lookup(self.rc, bucket.ino, b"k")
        then = int((time.time() - 3 * DAY) * 1e9)
        await self.vfs.setattr(self.rc, old.ino, SetAttrs(mtime=then))
        return old

    async def pass_now(self) -> None:
        """One lifecycle pass, half a day from now: k as written now is not due."""
        worker = self.s3.lifecycle
        clock = Clock()
        clock.advance(time.time() + DAY / 2)
        worker.clock = clock
        await worker.run()

    async def get_k(self) -> Any:
        return (await self.boto(["get_object", {"Bucket": "lcb", "Key": "k"}]))[0]["Body"]

    async def test_expiry_leaves_an_object_written_after_it_was_judged(self) -> None:
        """
        A PUT replacing the three-day-old k after the pass read k (and found
        it due) and before it removed it: the new k, half a day old, stays.
        Before, the pass removed whatever was at k by then.
        """
        old = await self.lifecycle_bucket()

        async def put_new() -> None:
            r = await self.c.request("PUT", "/lcb/k", body=b"new")
            self.assertEqual(r.status, 200, r.body)

        fired = self.after(self.tree, "meta", lambda caller, a: a.ino == old.ino, put_new)
        await self.pass_now()
        self.assertEqual(fired, [True])
        self.assertEqual(await self.get_k(), "new")
        reg = self.root.core.metrics.registry
        expired = reg.get_sample_value("gateway_s3_lifecycle_actions_total", {"action": "expire"})
        self.assertIn(expired, (None, 0))

    async def versions_of_k(self) -> tuple[int, int]:
        """(versions, delete markers) of lcb's key k."""
        got = (await self.boto(["list_object_versions", {"Bucket": "lcb"}]))[0]
        return len(got.get("Versions", [])), len(got.get("DeleteMarkers", []))

    async def test_versioned_expiry_leaves_a_version_written_after_it_was_judged(self) -> None:
        """
        The same in a versioned bucket: the new version stays current, the
        old one noncurrent, no delete marker. Before, the pass, acting on
        the old one's id with the new one at the key, lost the old version.
        """
        old = await self.lifecycle_bucket(versioned=True)

        async def put_new() -> None:
            r = await self.c.request("PUT", "/lcb/k", body=b"new")
            self.assertEqual(r.status, 200, r.body)

        fired = self.after(self.tree, "meta", lambda caller, a: a.ino == old.ino, put_new)
        await self.pass_now()
        self.assertEqual(fired, [True])
        self.assertEqual(await self.get_k(), "new")
        self.assertEqual(await self.versions_of_k(), (2, 0))

    async def test_lone_marker_expiry_leaves_a_marker_written_over(self) -> None:
        """
        ExpiredObjectDeleteMarker: a PUT of k after the pass found k's delete
        marker alone makes it a noncurrent marker behind the new object; the
        pass leaves it. Before, it removed it all the same.
        """
        await self.lifecycle_bucket(versioned=True, marker=True)
        await self.boto(
            ["delete_object", {"Bucket": "lcb", "Key": "k"}],
            ["delete_object", {"Bucket": "lcb", "Key": "k", "VersionId": await self.vid_of_k()}],
        )
        self.assertEqual(await self.versions_of_k(), (0, 1))
        from claudefs_gateway.s3.versions import Versions

        async def put_new() -> None:
            r = await self.c.request("PUT", "/lcb/k", body=b"new")
            self.assertEqual(r.status, 200, r.body)

        fired = self.after(Versions, "older", lambda v, parent, leaf: leaf == b"k", put_new)
        await self.pass_now()
        self.assertEqual(fired, [True])
        self.assertEqual(await self.get_k(), "new")
        self.assertEqual(await self.versions_of_k(), (1, 1))

    async def vid_of_k(self) -> str:
        """The version id of lcb's object k (its only version)."""
        got = (await self.boto(["list_object_versions", {"Bucket": "lcb"}]))[0]
        return str(got["Versions"][0]["VersionId"])

    async def test_put_waits_for_an_expiry_under_way(self) -> None:
        """
        A PUT of k arriving while the pass removes the old k lands after
        the removal: the new k stays. Before, the PUT did not wait, landed
        first, and the removal took it.
        """
        await self.lifecycle_bucket()
        real_delete = self.tree.delete
        put_small = self.tree.put_small
        landed: list[bool] = []

        async def counted(*args: Any, **kw: Any) -> Any:
            result = await put_small(*args, **kw)
            landed.append(True)
            return result

        self.patch(self.tree, "put_small", counted)
        put: list[defer.Deferred[Any]] = []

        async def delete(*args: Any, **kw: Any) -> Any:
            if not put:
                put.append(defer.ensureDeferred(self.c.request("PUT", "/lcb/k", body=b"new")))
                locks = self.s3.api.key_locks.held
                for _ in range(2000):
                    lock = locks.get(("lcb", "k"))
                    if landed or (lock is not None and lock.waiting):
                        break
                    await deferLater(reactor, 0)
                else:
                    self.fail("the PUT neither landed nor waited")
            return await real_delete(*args, **kw)

        self.patch(self.tree, "delete", delete)
        await self.pass_now()
        self.assertEqual(len(put), 1)
        r = await put[0]
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(await self.get_k(), "new")

    # -- an upload directory removed under an abort -------------------------------------------

    async def test_abort_of_an_upload_another_gateway_removed_meanwhile(self) -> None:
        """
        AbortMultipartUpload whose upload directory another gateway removed
        (completed or aborted the upload) after the abort listed its parts:
        the upload is gone, as asked. The stores answer NotFound for the
        directory gone meanwhile (this passed before the change too).
        """
        await self.abort_removed_meanwhile(stale=False)

    async def test_abort_of_an_upload_removed_meanwhile_answered_stale(self) -> None:
        """
        The same where the store answers ESTALE for the directory gone
        meanwhile (as a file handle of it would be; injected: no store here
        answers so today): 204 too (it answered 500).
        """
        await self.abort_removed_meanwhile(stale=True)

    async def abort_removed_meanwhile(self, stale: bool) -> None:
        created = await self.boto(
            ["create_bucket", {"Bucket": "mpb"}],
            ["create_multipart_upload", {"Bucket": "mpb", "Key": "big"}],
        )
        uid = created[1]["UploadId"]
        await self.boto(
            [
                "upload_part",
                {"Bucket": "mpb", "Key": "big", "UploadId": uid, "PartNumber": 1, "Body": "a"},
            ]
        )
        upload = self.s3.uploads.uploads[uid]

        async def other_gateway_removes() -> None:
            for name, _ in await self.tree.read_dir(self.rc, upload.ino):
                await self.vfs.remove(self.rc, upload.ino, name)
            await self.vfs.rmdir(self.rc, self.s3.uploads.mpu_ino, uid.encode())
            if stale:
                real_remove = self.vfs.remove

                def remove(caller: Any, d: int, *rest: Any, **kw: Any) -> Any:
                    if d == upload.ino:
                        return defer.fail(errors.Stale(f"inode {d} is gone"))
                    return real_remove(caller, d, *rest, **kw)

                self.patch(self.vfs, "remove", remove)

        fired = self.after(
            self.vfs, "readdir", lambda c, d, *rest: d == upload.ino, other_gateway_removes
        )
        await self.boto(
            ["abort_multipart_upload", {"Bucket": "mpb", "Key": "big", "UploadId": uid}]
        )
        self.assertEqual(fired, [True])
        listed = await self.boto(["list_multipart_uploads", {"Bucket": "mpb"}])
        self.assertEqual(listed[0].get("Uploads", []), [])
        self.assertFalse(self.flushLoggedErrors())

    async def test_abort_racing_an_upload_part(self) -> None:
        """
        AbortMultipartUpload racing another gateway's UploadPart: a part
        landing in the upload directory after the abort swept it (so its
        rmdir met a non-empty directory) is swept too, and the abort answers
        204 with the upload gone (it answered 500).
        """
        uid, upload = await self.upload_with_a_part()

        async def other_gateway_uploads() -> None:
            await self.stage_part(upload.ino, b"p2")

        fired = self.after(
            self.vfs, "readdir", lambda c, d, *rest: d == upload.ino, other_gateway_uploads
        )
        got = await self.boto(
            ["abort_multipart_upload", {"Bucket": "mpb", "Key": "big", "UploadId": uid}],
            ["list_multipart_uploads", {"Bucket": "mpb"}],
        )
        self.assertEqual(fired, [True])
        self.assertEqual(got[1].get("Uploads", []), [])
        with self.assertRaises(errors.NotFound):
            await self.vfs.lookup(self.rc, self.s3.uploads.mpu_ino, uid.encode())

    async def test_abort_racing_parts_without_end(self) -> None:
        """
        A part landing after every sweep the abort makes: the abort still
        answers 204 after its bounded retries (AWS: a part uploaded while
        the abort runs may be left; abort again), and a later abort, with
        no part arriving, removes the upload.
        """
        uid, upload = await self.upload_with_a_part()
        n = [1]

        async def another_part() -> None:
            n[0] += 1
            await self.stage_part(upload.ino, b"p%d" % n[0])

        real = self.vfs.readdir

        async def readdir(caller: Any, d: int, *rest: Any, **kw: Any) -> Any:
            result = await real(caller, d, *rest, **kw)
            if d == upload.ino:
                await another_part()
            return result

        self.patch(self.vfs, "readdir", lambda *a, **kw: defer.ensureDeferred(readdir(*a, **kw)))
        abort = ["abort_multipart_upload", {"Bucket": "mpb", "Key": "big", "UploadId": uid}]
        await self.boto(abort)
        self.assertEqual(n[0], 1 + SWEEPS)
        await self.vfs.lookup(self.rc, self.s3.uploads.mpu_ino, uid.encode())  # left
        self.patch(self.vfs, "readdir", real)
        got = await self.boto(abort, ["list_multipart_uploads", {"Bucket": "mpb"}])
        self.assertEqual(got[1].get("Uploads", []), [])
        with self.assertRaises(errors.NotFound):
            await self.vfs.lookup(self.rc, self.s3.uploads.mpu_ino, uid.encode())

    async def upload_with_a_part(self) -> tuple[str, Any]:
        """Bucket mpb, an upload of its key big with part 1: (upload id, upload)."""
        created = await self.boto(
            ["create_bucket", {"Bucket": "mpb"}],
            ["create_multipart_upload", {"Bucket": "mpb", "Key": "big"}],
        )
        uid = created[1]["UploadId"]
        part = {"Bucket": "mpb", "Key": "big", "UploadId": uid, "PartNumber": 1, "Body": "a"}
        await self.boto(["upload_part", part])
        return uid, self.s3.uploads.uploads[uid]

    async def stage_part(self, upload_ino: int, name: bytes) -> None:
        """A part file landing in upload directory C{upload_ino}, as another gateway writes it."""
        await self.vfs.create(self.rc, upload_ino, name, 0o600, exclusive=True)

    # -- a conditional DELETE racing a plain PUT ----------------------------------------------

    async def conditional_delete_racing_a_put(self, *steps: Any) -> list[Any]:
        """
        Bucket cdb (no lifecycle rules, unversioned), its object k; C{steps}
        run with a plain PUT of k landing after the first check of k's ETag.
        Their results, then k's body.
        """
        await self.boto(
            ["create_bucket", {"Bucket": "cdb"}],
            ["put_object", {"Bucket": "cdb", "Key": "k", "Body": "old"}],
        )
        bucket = await self.vfs.lookup(self.rc, self.tree.export.root_ino, b"cdb")
        old = await self.vfs.lookup(self.rc, bucket.ino, b"k")

        async def put_new() -> None:
            r = await self.c.request("PUT", "/cdb/k", body=b"new")
            self.assertEqual(r.status, 200, r.body)

        fired = self.after(self.tree, "etag", lambda caller, a, *rest: a.ino == old.ino, put_new)
        got = await self.boto(*steps, ["get_object", {"Bucket": "cdb", "Key": "k"}])
        self.assertEqual(fired, [True])
        return [*got[:-1], got[-1]["Body"]]

    async def test_conditional_delete_leaves_an_object_put_after_its_check(self) -> None:
        """
        DeleteObject with If-Match: a plain PUT (which takes no key lock)
        replacing k after the delete checked k's ETag is left: the delete
        removes only the object it checked, which the PUT replaced (204).
        Before, it removed the new k.
        """
        etag = f'"{hashlib.md5(b"old").hexdigest()}"'
        got = await self.conditional_delete_racing_a_put(
            ["delete_object", {"Bucket": "cdb", "Key": "k", "IfMatch": etag}]
        )
        self.assertEqual(got[-1], "new")

    async def test_delete_objects_with_an_etag_leaves_an_object_put_after_its_check(self) -> None:
        """The same through DeleteObjects with an ETag condition: k is reported deleted, the new k stays."""
        etag = f'"{hashlib.md5(b"old").hexdigest()}"'
        delete = {"Objects": [{"Key": "k", "ETag": etag}]}
        got = await self.conditional_delete_racing_a_put(
            ["delete_objects", {"Bucket": "cdb", "Delete": delete}]
        )
        self.assertEqual([d["Key"] for d in got[0].get("Deleted", [])], ["k"])
        self.assertNotIn("Errors", got[0])
        self.assertEqual(got[-1], "new")

    # -- a copy whose source is a delete marker -------------------------------------------------

    async def test_copy_from_a_delete_marker(self) -> None:
        """
        CopyObject and UploadPartCopy from a key whose current version is a
        delete marker: 404 NoSuchKey with x-amz-delete-marker, as if the
        object were deleted; from a version id naming a delete marker: 400
        InvalidRequest (AWS's CopyObject reference says both).
        """
        made = await self.boto(
            ["create_bucket", {"Bucket": "cpb"}],
            ["put_bucket_versioning", {"Bucket": "cpb", "VersioningConfiguration": VERSIONED}],
            ["put_object", {"Bucket": "cpb", "Key": "k", "Body": "k"}],
            ["delete_object", {"Bucket": "cpb", "Key": "k"}],
            ["create_multipart_upload", {"Bucket": "cpb", "Key": "big"}],
        )
        marker, uid = made[3]["VersionId"], made[4]["UploadId"]
        current = {"Bucket": "cpb", "Key": "k"}
        by_id = {"Bucket": "cpb", "Key": "k", "VersionId": marker}
        part = {"Bucket": "cpb", "Key": "big", "UploadId": uid, "PartNumber": 1}
        got = await self.boto(
            ["failure", "copy_object", {"Bucket": "cpb", "Key": "dst", "CopySource": current}],
            ["failure", "copy_object", {"Bucket": "cpb", "Key": "dst", "CopySource": by_id}],
            ["failure", "upload_part_copy", {**part, "CopySource": current}],
            ["failure", "upload_part_copy", {**part, "CopySource": by_id}],
            ["error", "head_object", {"Bucket": "cpb", "Key": "dst"}],
        )
        self.assertEqual(
            got,
            [
                ["NoSuchKey", 404, "true"],
                ["InvalidRequest", 400, None],
                ["NoSuchKey", 404, "true"],
                ["InvalidRequest", 400, None],
                "404",
            ],
        )

    # -- a Complete retried after its object was replaced -------------------------------------

    async def completed_upload(self, bucket: str, body: str, versioned: bool | None = False) -> Any:
        """
        Bucket C{bucket} (made unless C{versioned} is None), its object big
        made by a completed one-part upload of C{body}; that Complete, whose
        retry answered the same (the answer lost: sent again).
        """
        steps: list[Any] = []
        if versioned is not None:
            steps.append(["create_bucket", {"Bucket": bucket}])
        if versioned:
            conf = {"Bucket": bucket, "VersioningConfiguration": VERSIONED}
            steps.append(["put_bucket_versioning", conf])
        steps.append(["create_multipart_upload", {"Bucket": bucket, "Key": "big"}])
        uid = (await self.boto(*steps))[-1]["UploadId"]
        etag = f'"{hashlib.md5(body.encode()).hexdigest()}"'
        part = {"Bucket": bucket, "Key": "big", "UploadId": uid, "PartNumber": 1, "Body": body}
        complete = {
            "Bucket": bucket,
            "Key": "big",
            "UploadId": uid,
            "MultipartUpload": {"Parts": [{"ETag": etag, "PartNumber": 1}]},
        }
        got = await self.boto(
            ["upload_part", part],
            ["complete_multipart_upload", complete],
            ["complete_multipart_upload", complete],
        )
        self.assertEqual(got[1], got[2])
        self.answer = got[1]
        return complete

    async def test_complete_retried_after_a_put_replaced_its_object(self) -> None:
        """
        A Complete retried after a PUT replaced the object it made:
        NoSuchUpload (the upload is no more), the PUT's object stays. It
        answered 200 with the old ETag, as if the upload's object were the key's.
        """
        complete = await self.completed_upload("cmb", "one")
        got = await self.boto(
            ["put_object", {"Bucket": "cmb", "Key": "big", "Body": "plain"}],
            ["error", "complete_multipart_upload", complete],
            ["get_object", {"Bucket": "cmb", "Key": "big"}],
        )
        self.assertEqual((got[1], got[2]["Body"]), ("NoSuchUpload", "plain"))

    async def test_complete_retried_after_another_upload_replaced_its_object(self) -> None:
        """
        The same where another upload of the same bytes (so the same ETag)
        replaced it in a versioned bucket: NoSuchUpload for the first
        upload's retry, the second's retry still answered.
        """
        complete = await self.completed_upload("cmv", "same", versioned=True)
        second = await self.completed_upload("cmv", "same", versioned=None)
        got = await self.boto(
            ["error", "complete_multipart_upload", complete],
            ["complete_multipart_upload", second],
        )
        self.assertEqual(got[0], "NoSuchUpload")
        self.assertEqual(got[1]["ETag"], f'"{_multipart_md5("same")}-1"')

    async def test_complete_retried_where_forgotten_answers_its_version(self) -> None:
        """
        In a versioned bucket the retry answers the version id the Complete
        made, as the Complete did (it answered none).
        """
        complete = await self.completed_upload("cma", "v", versioned=True)
        self.assertIn("VersionId", self.answer)
        self.s3.uploads.completed.clear()
        got = await self.boto(["complete_multipart_upload", complete])
        self.assertEqual(got[0], self.answer)


def _multipart_md5(body: str) -> str:
    """The ETag (without its part count) of a one-part upload of C{body}."""
    return hashlib.md5(hashlib.md5(body.encode()).digest()).hexdigest()
