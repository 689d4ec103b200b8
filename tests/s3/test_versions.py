"""Versions (issue 16 item 2): ListObjectVersions on an unversioned bucket, on a live gateway."""

from __future__ import annotations

import re

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from claudefs_gateway.s3.versions import VERSIONS
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
        """DeleteObjects naming VersionId null deletes; a malformed version id is InvalidArgument."""
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
        self.assertIn(b"<Code>InvalidArgument</Code>", r.body)
        self.assertEqual((await self.c.request("HEAD", "/bkt/x")).status, 404)


def _vids(body: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """(element, key, version id) of each Version/DeleteMarker in a listing, in order."""
    out = []
    for m in re.finditer(
        rb"<(Version|DeleteMarker)><Key>([^<]*)</Key><VersionId>([^<]*)</VersionId>", body
    ):
        out.append((m.group(1), m.group(2), m.group(3)))
    return out


class VersionedTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.root = await start_gateway(self)
        self.c = Client(s3_port(self.root))
        self.addCleanup(self.c.close)
        self.assertEqual((await self.c.request("PUT", "/bkt")).status, 200)
        await self.enable("Enabled")

    async def enable(self, status: str) -> None:
        body = f"<VersioningConfiguration><Status>{status}</Status></VersioningConfiguration>"
        r = await self.c.request("PUT", "/bkt", "versioning", body=body.encode())
        self.assertEqual(r.status, 200, r.body)

    async def test_state(self) -> None:
        """GetBucketVersioning reports the state; MFA delete is refused, bad states are errors."""
        r = await self.c.request("GET", "/bkt", "versioning")
        self.assertIn(b"<Status>Enabled</Status>", r.body)
        await self.enable("Suspended")
        r = await self.c.request("GET", "/bkt", "versioning")
        self.assertIn(b"<Status>Suspended</Status>", r.body)
        body = b"<VersioningConfiguration><Status>Enabled</Status><MfaDelete>Enabled</MfaDelete></VersioningConfiguration>"
        r = await self.c.request("PUT", "/bkt", "versioning", body=body)
        self.assertEqual((r.status, r.code), (501, "NotImplemented"))
        body = b"<VersioningConfiguration><Status>On</Status></VersioningConfiguration>"
        r = await self.c.request("PUT", "/bkt", "versioning", body=body)
        self.assertEqual(r.status, 400)

    async def test_put_get_delete_by_version(self) -> None:
        """Each PUT is a version; GET by id; DELETE makes a marker; removing it brings the object back."""
        v1 = (await self.c.request("PUT", "/bkt/k", body=b"one")).header("x-amz-version-id")
        v2 = (await self.c.request("PUT", "/bkt/k", body=b"two")).header("x-amz-version-id")
        self.assertNotEqual(v1, v2)
        self.assertEqual((await self.c.request("GET", "/bkt/k")).body, b"two")
        r = await self.c.request("GET", "/bkt/k", {"versionId": v1})
        self.assertEqual((r.body, r.header("x-amz-version-id")), (b"one", v1))
        r = await self.c.request("DELETE", "/bkt/k")
        self.assertEqual(r.header("x-amz-delete-marker"), "true")
        marker = r.header("x-amz-version-id")
        r = await self.c.request("GET", "/bkt/k")
        self.assertEqual((r.status, r.header("x-amz-delete-marker")), (404, "true"))
        r = await self.c.request("GET", "/bkt/k", {"versionId": marker})
        self.assertEqual(r.status, 405)
        r = await self.c.request("GET", "/bkt", {"versions": ""})
        self.assertEqual(
            _vids(r.body),
            [
                (b"DeleteMarker", b"k", marker.encode()),
                (b"Version", b"k", v2.encode()),
                (b"Version", b"k", v1.encode()),
            ],
        )
        self.assertEqual(r.body.count(b"<IsLatest>true</IsLatest>"), 1)
        # Listing the current objects: none.
        r = await self.c.request("GET", "/bkt", {"list-type": "2"})
        self.assertNotIn(b"<Key>", r.body)
        r = await self.c.request("DELETE", "/bkt/k", {"versionId": marker})
        self.assertEqual(r.status, 204)
        self.assertEqual((await self.c.request("GET", "/bkt/k")).body, b"two")
        r = await self.c.request("DELETE", "/bkt/k", {"versionId": v2})
        self.assertEqual((await self.c.request("GET", "/bkt/k")).body, b"one")
        r = await self.c.request("GET", "/bkt/k", {"versionId": "0" * 24})
        self.assertEqual((r.status, r.code), (404, "NoSuchVersion"))
        r = await self.c.request("GET", "/bkt/k", {"versionId": "bad"})
        self.assertEqual((r.status, r.code), (400, "InvalidArgument"))

    async def test_listing_pages(self) -> None:
        """ListObjectVersions pages through versions with key and version-id markers."""
        made = []
        for k in ("a", "b"):
            for i in range(3):
                r = await self.c.request("PUT", f"/bkt/{k}", body=f"{k}{i}".encode())
                made.append((k.encode(), r.header("x-amz-version-id").encode()))
        seen: list[tuple[bytes, bytes, bytes]] = []
        q = {"versions": "", "max-keys": "2"}
        while True:
            r = await self.c.request("GET", "/bkt", q)
            seen += _vids(r.body)
            if b"<IsTruncated>true</IsTruncated>" not in r.body:
                break
            km = re.search(rb"<NextKeyMarker>([^<]*)<", r.body).group(1).decode()  # type: ignore[union-attr]
            vm = re.search(rb"<NextVersionIdMarker>([^<]*)<", r.body).group(1).decode()  # type: ignore[union-attr]
            q = {"versions": "", "max-keys": "2", "key-marker": km, "version-id-marker": vm}
        want = [(b"Version", k, v) for k, v in made[2::-1] + made[:2:-1]]
        self.assertEqual(seen, want)

    async def test_suspended_null_version(self) -> None:
        """Suspended: a PUT writes the null version, replacing the older null; earlier versions stay."""
        v1 = (await self.c.request("PUT", "/bkt/s", body=b"one")).header("x-amz-version-id")
        await self.enable("Suspended")
        r = await self.c.request("PUT", "/bkt/s", body=b"two")
        self.assertIsNone(r.header("x-amz-version-id"))  # the null version, named by none
        await self.c.request("PUT", "/bkt/s", body=b"three")
        r = await self.c.request("GET", "/bkt", {"versions": ""})
        self.assertEqual(
            _vids(r.body), [(b"Version", b"s", b"null"), (b"Version", b"s", v1.encode())]
        )
        r = await self.c.request("DELETE", "/bkt/s")
        self.assertEqual(r.header("x-amz-version-id"), "null")
        r = await self.c.request("GET", "/bkt", {"versions": ""})
        self.assertEqual(
            _vids(r.body), [(b"DeleteMarker", b"s", b"null"), (b"Version", b"s", v1.encode())]
        )

    async def test_copy_by_version(self) -> None:
        """CopyObject from an older version, onto the same key: that content becomes current."""
        v1 = (await self.c.request("PUT", "/bkt/c", body=b"old")).header("x-amz-version-id")
        await self.c.request("PUT", "/bkt/c", body=b"new")
        r = await self.c.request(
            "PUT", "/bkt/c", headers={"x-amz-copy-source": f"/bkt/c?versionId={v1}"}
        )
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.header("x-amz-copy-source-version-id"), v1)
        self.assertEqual((await self.c.request("GET", "/bkt/c")).body, b"old")
        r = await self.c.request("GET", "/bkt", {"versions": ""})
        self.assertEqual(len(_vids(r.body)), 3)

    async def test_file_clients_see_only_current(self) -> None:
        """The version store is invisible to NFS/SMB callers: not listed, not reachable, not creatable."""
        from claudefs_gateway import errors
        from claudefs_gateway.fstypes import Credentials

        await self.c.request("PUT", "/bkt/dir/f", body=b"one")
        await self.c.request("PUT", "/bkt/dir/f", body=b"two")
        s3 = self.root.getServiceNamed("proto:s3")
        vfs = s3.tree.vfs
        nfs = vfs.caller(s3.tree.export, "127.0.0.1", Credentials(1000, 1000), "nfs")
        bucket = await vfs.lookup(nfs, s3.tree.export.root_ino, b"bkt")
        d = await vfs.lookup(nfs, bucket.ino, b"dir")
        page = await vfs.readdir(nfs, d.ino, 0, b"\0" * 8, 100)
        self.assertEqual([e.name for e in page.entries], [b"f"])
        with self.assertRaises(errors.NotFound):
            await vfs.lookup(nfs, d.ino, b".cfs-versions")
        with self.assertRaises(errors.Access):
            await vfs.mkdir(nfs, d.ino, b".cfs-versions", 0o755)
        with self.assertRaises(errors.NotFound):
            await vfs.resolve(nfs, b"bkt/dir/.cfs-versions/f")

    async def test_emptied_bucket_can_be_deleted(self) -> None:
        """Every version of nested keys deleted: no scaffolding keeps the bucket from going."""
        vids = []
        for k in ("a/b/one", "a/two", "three"):
            vids.append(
                (
                    k,
                    (await self.c.request("PUT", f"/bkt/{k}", body=b"x")).header(
                        "x-amz-version-id"
                    ),
                )
            )
            r = await self.c.request("DELETE", f"/bkt/{k}")
            vids.append((k, r.header("x-amz-version-id")))
        r = await self.c.request("DELETE", "/bkt/ghost/key")  # a marker for a key never written
        vids.append(("ghost/key", r.header("x-amz-version-id")))
        r = await self.c.request("DELETE", "/bkt")
        self.assertEqual((r.status, r.code), (409, "BucketNotEmpty"))
        for k, v in vids:
            r = await self.c.request("DELETE", f"/bkt/{k}", {"versionId": v})
            self.assertEqual(r.status, 204)
        r = await self.c.request("GET", "/bkt", {"versions": ""})
        self.assertEqual(_vids(r.body), [])
        r = await self.c.request("DELETE", "/bkt")
        self.assertEqual(r.status, 204, r.body)


class RemovedWhileListedTests(TestCase):
    """
    ListObjectVersions is no snapshot: a version removed while a listing
    walks the bucket (s3-tests' test_versioned_concurrent_object_create_and_remove
    removes versions while it lists) is listed or not, never an error. Each
    test removes versions at one step of the listing: the vfs call named runs,
    then the removals run to their answers, then the listing goes on with what
    that call returned.
    """

    timeout = 60

    async def setUp(self) -> None:
        self.root = await start_gateway(self)
        self.c = Client(s3_port(self.root))
        self.addCleanup(self.c.close)
        self.assertEqual((await self.c.request("PUT", "/bkt")).status, 200)
        body = b"<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>"
        self.assertEqual((await self.c.request("PUT", "/bkt", "versioning", body=body)).status, 200)
        self.v1 = (await self.c.request("PUT", "/bkt/k", body=b"one")).header("x-amz-version-id")
        self.v2 = (await self.c.request("PUT", "/bkt/k", body=b"two")).header("x-amz-version-id")
        self.vfs = self.root.getServiceNamed("proto:s3").tree.vfs

    def remove_after(self, method: str, when: object, *vids: str) -> list[bool]:
        """
        After the first call of vfs C{method} whose arguments C{when} accepts,
        delete versions C{vids} of key k (each to its answer) before that
        call's caller goes on. The list it returns says whether that happened.
        """
        real = getattr(self.vfs, method)
        fired: list[bool] = []

        async def hooked(*args: object, **kw: object) -> object:
            result = await real(*args, **kw)
            if not fired and when(*args):  # type: ignore[operator]
                fired.append(True)
                for vid in vids:
                    r = await self.c.request("DELETE", "/bkt/k", {"versionId": vid})
                    self.assertEqual(r.status, 204, r.body)
            return result

        self.patch(self.vfs, method, lambda *a, **kw: defer.ensureDeferred(hooked(*a, **kw)))
        return fired

    async def listed(self) -> list[tuple[bytes, bytes, bytes]]:
        r = await self.c.request("GET", "/bkt", {"versions": ""})
        self.assertEqual(r.status, 200, r.body)
        return _vids(r.body)

    async def test_store_removed_after_its_lookup(self) -> None:
        """The bucket's version store goes between its lookup and its listing (CI's NoSuchBucket)."""
        fired = self.remove_after("lookup", lambda caller, d, name: name == VERSIONS, self.v1)
        self.assertIn(await self.listed(), ([(b"Version", b"k", self.v2.encode())], []))
        self.assertEqual(fired, [True])

    async def test_key_store_removed_after_its_lookup(self) -> None:
        """The key's store goes between its lookup and its listing (the NoSuchKey seen here)."""
        fired = self.remove_after(
            "lookup", lambda caller, d, name: name == b"k" and d != 1, self.v1
        )
        self.assertIn(await self.listed(), ([(b"Version", b"k", self.v2.encode())], []))
        self.assertEqual(fired, [True])

    async def test_version_removed_after_the_store_listed(self) -> None:
        """A stored version goes once its store is listed, before its metadata is read."""
        names: set[int] = set()

        async def store_of_k() -> None:
            s3 = self.root.getServiceNamed("proto:s3")
            rc = s3.tree.root_caller
            bucket = await self.vfs.lookup(rc, s3.tree.export.root_ino, b"bkt")
            store = await self.vfs.lookup(rc, bucket.ino, VERSIONS)
            names.add((await self.vfs.lookup(rc, store.ino, b"k")).ino)

        await store_of_k()
        fired = self.remove_after("readdir", lambda caller, d, *rest: d in names, self.v1)
        self.assertEqual(await self.listed(), [(b"Version", b"k", self.v2.encode())])
        self.assertEqual(fired, [True])

    async def test_current_removed_after_the_bucket_listed(self) -> None:
        """The current file goes (its older version promoted) before its metadata is read."""
        s3 = self.root.getServiceNamed("proto:s3")
        bucket = await self.vfs.lookup(s3.tree.root_caller, s3.tree.export.root_ino, b"bkt")
        fired = self.remove_after("readdir", lambda caller, d, *rest: d == bucket.ino, self.v2)
        self.assertIn(await self.listed(), ([(b"Version", b"k", self.v1.encode())], []))
        self.assertEqual(fired, [True])

    async def test_object_deleted_after_the_bucket_listed(self) -> None:
        """ListObjectsV2 leaves out an object deleted between its directory's listing and its ETag."""
        await self.c.request("PUT", "/bkt/other", body=b"o")
        s3 = self.root.getServiceNamed("proto:s3")
        bucket = await self.vfs.lookup(s3.tree.root_caller, s3.tree.export.root_ino, b"bkt")
        fired = self.remove_after("readdir", lambda caller, d, *rest: d == bucket.ino, self.v2)
        r = await self.c.request("GET", "/bkt", {"list-type": "2"})
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(fired, [True])
        # k's current version went (v1, promoted, took its place after the
        # listing): k is left out, or listed; the count says what is listed.
        keys = re.findall(rb"<Key>([^<]*)</Key>", r.body)
        self.assertIn(keys, ([b"other"], [b"k", b"other"]))
        self.assertIn(b"<KeyCount>%d</KeyCount>" % len(keys), r.body)
