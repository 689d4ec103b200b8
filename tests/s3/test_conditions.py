"""
Conditional writes and deletes, the retried CompleteMultipartUpload, and the
other answers AWS gives that a client relies on (issue 16 item 1), on a live
gateway.
"""

from __future__ import annotations

import email.utils
import re

from twisted.trial.unittest import SynchronousTestCase, TestCase

from claudefs_gateway.fstypes import Attributes, FileType
from claudefs_gateway.s3.conditions import DeleteCondition
from claudefs_gateway.s3.errors import S3Error
from claudefs_gateway.s3.owners import canonical_id
from tests.s3.harness import BOB, Client, raw_connect, raw_request, s3_port, start_gateway


def _etag(r) -> str:  # type: ignore[no-untyped-def]
    return r.header("etag").strip('"')


class LiveTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.root = await start_gateway(self)
        self.port = s3_port(self.root)
        self.c = Client(self.port)
        self.addCleanup(self.c.close)
        self.assertEqual((await self.c.request("PUT", "/bkt")).status, 200)

    async def test_if_none_match_etag_on_put(self) -> None:
        """If-None-Match with the current ETag refuses the write (412); another ETag lets it through."""
        r = await self.c.request("PUT", "/bkt/k", body=b"one")
        etag = _etag(r)
        r = await self.c.request(
            "PUT", "/bkt/k", headers={"If-None-Match": f'"{etag}"'}, body=b"two"
        )
        self.assertEqual((r.status, r.code), (412, "PreconditionFailed"))
        r = await self.c.request("GET", "/bkt/k")
        self.assertEqual(r.body, b"one")
        r = await self.c.request("PUT", "/bkt/k", headers={"If-None-Match": '"other"'}, body=b"two")
        self.assertEqual(r.status, 200)
        r = await self.c.request("PUT", "/bkt/k", headers={"If-None-Match": "*"}, body=b"x")
        self.assertEqual((r.status, r.code), (412, "PreconditionFailed"))

    async def test_conditional_delete(self) -> None:
        """DELETE with a wrong If-Match, size or time is refused; the right ones delete."""
        r = await self.c.request("PUT", "/bkt/d", body=b"12345")
        etag = _etag(r)
        r = await self.c.request("HEAD", "/bkt/d")
        mtime = r.header("last-modified")
        for h in (
            {"If-Match": '"bad"'},
            {"x-amz-if-match-size": "4"},
            {"x-amz-if-match-last-modified-time": "Thu, 01 Jan 2015 00:00:00 GMT"},
        ):
            r = await self.c.request("DELETE", "/bkt/d", headers=h)
            self.assertEqual((r.status, r.code), (412, "PreconditionFailed"), h)
        r = await self.c.request("HEAD", "/bkt/d")
        self.assertEqual(r.status, 200)
        r = await self.c.request(
            "DELETE",
            "/bkt/d",
            headers={
                "If-Match": f'"{etag}"',
                "x-amz-if-match-size": "5",
                "x-amz-if-match-last-modified-time": mtime,
            },
        )
        self.assertEqual(r.status, 204)
        self.assertEqual((await self.c.request("HEAD", "/bkt/d")).status, 404)
        # Gone already: deleted, whatever the conditions.
        r = await self.c.request("DELETE", "/bkt/d", headers={"If-Match": '"bad"'})
        self.assertEqual(r.status, 204)

    async def test_conditional_delete_of_a_version(self) -> None:
        """Conditions on a DELETE naming a version are checked against that version."""
        await self.c.request(
            "PUT",
            "/bkt",
            "versioning",
            body=b"<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>",
        )
        r = await self.c.request("PUT", "/bkt/v", body=b"")
        vid = r.header("x-amz-version-id")
        assert vid is not None
        for h in ({"If-Match": '"bad"'}, {"x-amz-if-match-size": "9999"}):
            r = await self.c.request("DELETE", "/bkt/v", {"versionId": vid}, headers=h)
            self.assertEqual((r.status, r.code), (412, "PreconditionFailed"), h)
        r = await self.c.request(
            "DELETE", "/bkt/v", {"versionId": vid}, headers={"x-amz-if-match-size": "0"}
        )
        self.assertEqual(r.status, 204)
        r = await self.c.request("GET", "/bkt", {"versions": ""})
        self.assertNotIn(b"<Version>", r.body)
        # Gone already: deleted, whatever the conditions.
        r = await self.c.request(
            "DELETE", "/bkt/v", {"versionId": vid}, headers={"If-Match": '"bad"'}
        )
        self.assertEqual(r.status, 204)

    async def test_conditional_delete_objects(self) -> None:
        """DeleteObjects' ETag and Size per object: a mismatch is that object's PreconditionFailed."""
        etag = _etag(await self.c.request("PUT", "/bkt/a", body=b"aa"))
        await self.c.request("PUT", "/bkt/b", body=b"bb")
        body = (
            b'<Delete><Object><Key>a</Key><ETag>"bad"</ETag></Object>'
            b"<Object><Key>b</Key><Size>3</Size></Object></Delete>"
        )
        r = await self.c.request(
            "POST", "/bkt", "delete", headers={"Content-MD5": _md5(body)}, body=body
        )
        self.assertEqual(r.body.count(b"<Code>PreconditionFailed</Code>"), 2)
        body = f'<Delete><Object><Key>a</Key><ETag>"{etag}"</ETag></Object></Delete>'.encode()
        r = await self.c.request(
            "POST", "/bkt", "delete", headers={"Content-MD5": _md5(body)}, body=body
        )
        self.assertIn(b"<Deleted><Key>a</Key></Deleted>", r.body)
        self.assertEqual((await self.c.request("HEAD", "/bkt/a")).status, 404)
        self.assertEqual((await self.c.request("HEAD", "/bkt/b")).status, 200)

    async def complete(self, key: str, upload: str, etag: str, **h: str):  # type: ignore[no-untyped-def]
        body = f"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{etag}</ETag></Part></CompleteMultipartUpload>"
        return await self.c.request(
            "POST", key, {"uploadId": upload}, headers=h, body=body.encode()
        )

    async def upload(self, key: str, data: bytes) -> tuple[str, str]:
        r = await self.c.request("POST", key, "uploads")
        upload = re.search(rb"<UploadId>(.*)</UploadId>", r.body).group(1).decode()  # type: ignore[union-attr]
        r = await self.c.request("PUT", key, {"partNumber": "1", "uploadId": upload}, body=data)
        return upload, r.header("etag") or ""

    async def test_complete_retried(self) -> None:
        """A Complete sent again answers 200 with the same result; with other parts, NoSuchUpload."""
        upload, etag = await self.upload("/bkt/mp", b"part data")
        first = await self.complete("/bkt/mp", upload, etag)
        self.assertEqual(first.status, 200)
        again = await self.complete("/bkt/mp", upload, etag)
        self.assertEqual((again.status, again.body), (200, first.body))
        other = await self.complete("/bkt/mp", upload, '"0000"')
        self.assertEqual((other.status, other.code), (404, "NoSuchUpload"))
        bob = Client(self.port, BOB)
        self.addCleanup(bob.close)
        r = await bob.request(
            "POST",
            "/bkt/mp",
            {"uploadId": upload},
            body=f"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{etag}</ETag></Part></CompleteMultipartUpload>".encode(),
        )
        self.assertNotEqual(r.status, 200)

    async def test_complete_retried_where_its_answer_is_not_kept(self) -> None:
        """
        A Complete retried where its answer is not remembered (through
        another gateway or C{--workers} worker, or after a restart) answers
        200 with the same result while the object it made is unchanged, as
        AWS does; it used to answer NoSuchUpload. Other parts, another user,
        or the object written since: NoSuchUpload.
        """
        uploads = self.root.getServiceNamed("proto:s3").uploads
        upload, etag = await self.upload("/bkt/mp", b"part data")
        first = await self.complete("/bkt/mp", upload, etag)
        self.assertEqual(first.status, 200)
        uploads.completed.clear()
        again = await self.complete("/bkt/mp", upload, etag)
        self.assertEqual((again.status, again.body), (200, first.body))
        other = await self.complete("/bkt/mp", upload, '"0123456789abcdef0123456789abcdef"')
        self.assertEqual((other.status, other.code), (404, "NoSuchUpload"))
        elsewhere = await self.complete("/bkt/other", upload, etag)
        self.assertEqual((elsewhere.status, elsewhere.code), (404, "NoSuchUpload"))
        bob = Client(self.port, BOB)
        self.addCleanup(bob.close)
        body = f"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{etag}</ETag></Part></CompleteMultipartUpload>"
        r = await bob.request("POST", "/bkt/mp", {"uploadId": upload}, body=body.encode())
        self.assertEqual((r.status, r.code), (404, "NoSuchUpload"))
        # A plain PUT of the same bytes since: another object, not this upload's.
        self.assertEqual((await self.c.request("PUT", "/bkt/mp", body=b"part data")).status, 200)
        r = await self.complete("/bkt/mp", upload, etag)
        self.assertEqual((r.status, r.code), (404, "NoSuchUpload"))

    async def test_mp_object_size(self) -> None:
        """x-amz-mp-object-size must be the parts' total."""
        upload, etag = await self.upload("/bkt/sized", b"123456")
        r = await self.complete("/bkt/sized", upload, etag, **{"x-amz-mp-object-size": "7"})
        self.assertEqual((r.status, r.code), (400, "InvalidRequest"))
        r = await self.complete("/bkt/sized", upload, etag, **{"x-amz-mp-object-size": "6"})
        self.assertEqual(r.status, 200)

    async def test_expected_bucket_owner(self) -> None:
        """x-amz-expected-bucket-owner naming someone else: 403; the owner's id or uid: served."""
        r = await self.c.request("GET", "/bkt", headers={"x-amz-expected-bucket-owner": "1234"})
        self.assertEqual((r.status, r.code), (403, "AccessDenied"))
        for owner in (canonical_id(1000), "1000"):
            r = await self.c.request("GET", "/bkt", headers={"x-amz-expected-bucket-owner": owner})
            self.assertEqual(r.status, 200)
        await self.c.request("PUT", "/bkt/src", body=b"s")
        r = await self.c.request(
            "PUT",
            "/bkt/dst",
            headers={"x-amz-copy-source": "/bkt/src", "x-amz-source-expected-bucket-owner": "1"},
        )
        self.assertEqual((r.status, r.code), (403, "AccessDenied"))

    async def test_recreate_own_bucket(self) -> None:
        """In us-east-1, creating one's own bucket again answers 200 and keeps its objects."""
        await self.c.request("PUT", "/bkt/keep", body=b"k")
        r = await self.c.request("PUT", "/bkt")
        self.assertEqual(r.status, 200)
        self.assertEqual((await self.c.request("GET", "/bkt/keep")).body, b"k")

    async def test_list_buckets_pages(self) -> None:
        """max-buckets pages ListBuckets with a continuation token."""
        for b in ("bkt2", "bkt3"):
            await self.c.request("PUT", "/" + b)
        names = []
        token = None
        while True:
            q = {"max-buckets": "1"}
            if token:
                q["continuation-token"] = token
            r = await self.c.request("GET", "/", q)
            names += re.findall(rb"<Name>([^<]*)</Name>", r.body)
            m = re.search(rb"<ContinuationToken>([^<]*)</ContinuationToken>", r.body)
            if m is None:
                break
            token = m.group(1).decode()
        self.assertEqual(names, [b"bkt", b"bkt2", b"bkt3"])  # not "shared": root owns that export

    async def test_chunked_transfer_encoding_put(self) -> None:
        """A PUT with Transfer-Encoding: chunked and no Content-Length is stored."""
        url, headers = self.c.sign("PUT", self.c.url("/bkt/te"), {}, unsigned=True)
        headers["Transfer-Encoding"] = "chunked"
        conn = await raw_connect(self.port)
        conn.transport.write(
            raw_request("PUT", url, headers) + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        await conn.wait(lambda b: b"\r\n\r\n" in b)
        conn.transport.loseConnection()
        self.assertTrue(conn.received.startswith(b"HTTP/1.1 200"), conn.received[:200])
        self.assertEqual((await self.c.request("GET", "/bkt/te")).body, b"hello world")


def _md5(body: bytes) -> str:
    import base64
    import hashlib

    return base64.b64encode(hashlib.md5(body).digest()).decode()


def _attrs(size: int, mtime_s: int) -> Attributes:
    return Attributes(
        ino=5,
        type=FileType.REG,
        mode=0o644,
        nlink=1,
        uid=1,
        gid=1,
        size=size,
        used=size,
        rdev=(0, 0),
        atime_ns=0,
        mtime_ns=mtime_s * 10**9,
        ctime_ns=0,
        btime_ns=0,
        gen=1,
        change=1,
    )


class DeleteConditionTests(SynchronousTestCase):
    def test_each_condition(self) -> None:
        a = _attrs(5, 1_700_000_000)
        when = email.utils.formatdate(1_700_000_000, usegmt=True)
        DeleteCondition("*", when, "5").check("e", a)
        DeleteCondition(None, "2023-11-14T22:13:20Z", None).check("e", a)
        for c in (
            DeleteCondition('"x"'),
            DeleteCondition(None, "Thu, 01 Jan 2015 00:00:00 GMT"),
            DeleteCondition(None, None, "6"),
        ):
            self.assertRaises(S3Error, c.check, "e", a)
        e = self.assertRaises(S3Error, DeleteCondition(None, None, "five").check, "e", a)
        self.assertEqual(e.code, "InvalidArgument")
