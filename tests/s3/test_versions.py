"""Versions (issue 16 item 2): ListObjectVersions on an unversioned bucket, on a live gateway."""

from __future__ import annotations

import re

from twisted.trial.unittest import TestCase

from tests.s3.harness import Client, s3_port, start_gateway


class UnversionedTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.root = await start_gateway(self)
        self.c = Client(s3_port(self.root))
        self.addCleanup(self.c.close)
        self.assertEqual((await self.c.request("PUT", "/bkt")).status, 200)

    async def test_each_object_once_with_null(self) -> None:
        """An unversioned bucket lists each object once, VersionId null, latest; paged by key."""
        for k in ("a", "b/c", "d"):
            await self.c.request("PUT", f"/bkt/{k}", body=k.encode())
        r = await self.c.request("GET", "/bkt", {"versions": "", "max-keys": "2"})
        self.assertEqual(r.status, 200)
        self.assertEqual(re.findall(rb"<Key>([^<]*)</Key>", r.body), [b"a", b"b/c"])
        self.assertEqual(r.body.count(b"<VersionId>null</VersionId>"), 2)
        self.assertEqual(r.body.count(b"<IsLatest>true</IsLatest>"), 2)
        self.assertIn(b"<NextKeyMarker>b/c</NextKeyMarker>", r.body)
        self.assertIn(b"<NextVersionIdMarker>null</NextVersionIdMarker>", r.body)
        r = await self.c.request(
            "GET", "/bkt", {"versions": "", "key-marker": "b/c", "version-id-marker": "null"}
        )
        self.assertEqual(re.findall(rb"<Key>([^<]*)</Key>", r.body), [b"d"])
        self.assertIn(b"<IsTruncated>false</IsTruncated>", r.body)

    async def test_delete_objects_by_null_version(self) -> None:
        """DeleteObjects naming VersionId null deletes; another version id is NoSuchVersion."""
        await self.c.request("PUT", "/bkt/x", body=b"x")
        body = (
            b"<Delete><Object><Key>x</Key><VersionId>null</VersionId></Object>"
            b"<Object><Key>y</Key><VersionId>abc</VersionId></Object></Delete>"
        )
        import base64
        import hashlib

        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        r = await self.c.request("POST", "/bkt", "delete", headers={"Content-MD5": md5}, body=body)
        self.assertIn(b"<Deleted><Key>x</Key><VersionId>null</VersionId></Deleted>", r.body)
        self.assertIn(b"<Code>NoSuchVersion</Code>", r.body)
        self.assertEqual((await self.c.request("HEAD", "/bkt/x")).status, 404)
