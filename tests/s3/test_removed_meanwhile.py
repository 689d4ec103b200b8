"""
Requests that walk a listing and then read each entry, racing a concurrent
delete of an entry (docs/s3.rst "What a listing does with what is deleted
while it walks"): what went meanwhile is nothing to do, never a 404 or 500
for the request. The hook is RemovedWhileListedTests' (tests/s3/test_versions.py):
the vfs call named runs, then the concurrent change runs to its answer, then
the request goes on with what that call returned.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Awaitable, Callable

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.s3.harness import Client, s3_port, start_gateway


class RemovedMeanwhileTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.root = await start_gateway(self)
        self.c = Client(s3_port(self.root))
        self.addCleanup(self.c.close)
        self.s3 = self.root.getServiceNamed("proto:s3")
        self.vfs = self.s3.tree.vfs
        self.rc = self.s3.tree.root_caller
        self.assertEqual((await self.c.request("PUT", "/bkt")).status, 200)
        self.bucket = await self.vfs.lookup(self.rc, self.s3.tree.export.root_ino, b"bkt")

    def after(
        self, method: str, when: Callable[..., bool], change: Callable[[], Awaitable[None]]
    ) -> list[bool]:
        """After the first vfs C{method} call C{when} accepts, run C{change} before going on."""
        real = getattr(self.vfs, method)
        fired: list[bool] = []

        async def hooked(*args: object, **kw: object) -> object:
            result = await real(*args, **kw)
            if not fired and when(*args):
                fired.append(True)
                await change()
            return result

        self.patch(self.vfs, method, lambda *a, **kw: defer.ensureDeferred(hooked(*a, **kw)))
        return fired

    async def delete(self, path: str) -> None:
        r = await self.c.request("DELETE", path)
        self.assertEqual(r.status, 204, r.body)

    async def test_delete_bucket_emptied_while_swept(self) -> None:
        """
        DeleteBucket's emptiness check: the last object, under a directory
        the gateway made, goes (pruning the directory) once the bucket is
        listed; the bucket is empty, so it goes too (it answered NoSuchBucket).
        """
        await self.c.request("PUT", "/bkt/d/x", body=b"x")
        fired = self.after(
            "readdir",
            lambda caller, d, *rest: d == self.bucket.ino,
            lambda: self.delete("/bkt/d/x"),
        )
        r = await self.c.request("DELETE", "/bkt")
        self.assertEqual(fired, [True])
        self.assertEqual(r.status, 204, r.body)
        self.assertEqual((await self.c.request("HEAD", "/bkt")).status, 404)

    async def test_list_parts_with_a_part_uploaded_again(self) -> None:
        """ListParts lists a part uploaded again while it read the parts: the new one (it answered NoSuchKey)."""
        r = await self.c.request("POST", "/bkt/big", "uploads")
        uid = re.search(rb"<UploadId>([^<]*)</UploadId>", r.body).group(1).decode()  # type: ignore[union-attr]
        for n in (1, 2):
            q = {"partNumber": str(n), "uploadId": uid}
            self.assertEqual(
                (await self.c.request("PUT", "/bkt/big", q, body=b"a" * n)).status, 200
            )
        upload = self.s3.uploads.uploads[uid]

        async def again() -> None:
            q = {"partNumber": "1", "uploadId": uid}
            self.assertEqual((await self.c.request("PUT", "/bkt/big", q, body=b"new")).status, 200)

        fired = self.after("readdir", lambda caller, d, *rest: d == upload.ino, again)
        r = await self.c.request("GET", "/bkt/big", {"uploadId": uid})
        self.assertEqual(fired, [True])
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(re.findall(rb"<PartNumber>(\d+)</PartNumber>", r.body), [b"1", b"2"])
        self.assertIn(hashlib.md5(b"new").hexdigest().encode(), r.body)
        self.assertIn(b"<Size>3</Size>", r.body)

    async def test_list_parts_of_an_upload_aborted_meanwhile(self) -> None:
        """ListParts of an upload aborted while it read the parts: NoSuchUpload (it answered NoSuchKey)."""
        r = await self.c.request("POST", "/bkt/big", "uploads")
        uid = re.search(rb"<UploadId>([^<]*)</UploadId>", r.body).group(1).decode()  # type: ignore[union-attr]
        q = {"partNumber": "1", "uploadId": uid}
        self.assertEqual((await self.c.request("PUT", "/bkt/big", q, body=b"a")).status, 200)
        upload = self.s3.uploads.uploads[uid]

        async def abort() -> None:
            r = await self.c.request("DELETE", "/bkt/big", {"uploadId": uid})
            self.assertEqual(r.status, 204, r.body)

        fired = self.after("readdir", lambda caller, d, *rest: d == upload.ino, abort)
        r = await self.c.request("GET", "/bkt/big", {"uploadId": uid})
        self.assertEqual(fired, [True])
        self.assertEqual(r.status, 404, r.body)
        self.assertIn(b"<Code>NoSuchUpload</Code>", r.body)

    async def test_delete_objects_versioned_removed_by_a_file_client(self) -> None:
        """
        DeleteObjects in a versioned bucket: an object a file client removed
        between its lookup and its metadata read gets a delete marker, as if
        removed before (it answered NoSuchKey for that key).
        """
        body = b"<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>"
        self.assertEqual((await self.c.request("PUT", "/bkt", "versioning", body=body)).status, 200)
        await self.c.request("PUT", "/bkt/k", body=b"k")

        async def file_client_removes() -> None:
            await self.vfs.remove(self.rc, self.bucket.ino, b"k")

        fired = self.after(
            "lookup",
            lambda caller, d, name, *rest: d == self.bucket.ino and name == b"k",
            file_client_removes,
        )
        req = b"<Delete><Object><Key>k</Key></Object></Delete>"
        md5 = base64.b64encode(hashlib.md5(req).digest()).decode()
        r = await self.c.request("POST", "/bkt", "delete", headers={"Content-MD5": md5}, body=req)
        self.assertEqual(fired, [True])
        self.assertEqual(r.status, 200, r.body)
        self.assertNotIn(b"<Error>", r.body)
        self.assertIn(b"<DeleteMarker>true</DeleteMarker>", r.body)
