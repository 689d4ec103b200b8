"""POST object (issue 16 item 8): the form parser, the policy, and browser-form uploads on a live gateway."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import boto3
from botocore.config import Config
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from claudefs_gateway.s3.errors import S3Error
from claudefs_gateway.s3.post import FormReader, check_policy, parse_policy
from tests.s3.harness import ALICE, REGION, Client, s3_port, start_gateway

BOUNDARY = "----cfsformboundary"


def form(fields: list[tuple[str, Any]], boundary: str = BOUNDARY) -> bytes:
    """multipart/form-data: (name, value) fields, or (name, (filename, data)) for a file."""
    out = b""
    for name, value in fields:
        out += f"--{boundary}\r\n".encode()
        if isinstance(value, tuple):
            fn, data = value
            out += f'Content-Disposition: form-data; name="{name}"; filename="{fn}"\r\n'.encode()
            out += b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
        else:
            v = value if isinstance(value, bytes) else str(value).encode()
            out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + v + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def parse_all(body: bytes, cuts: list[int]) -> list[tuple[dict[str, str], bytes]]:
    """The parts of C{body}, read in pieces cut at C{cuts}."""
    pieces = []
    last = 0
    # A read answers b"" only at the end: no empty pieces.
    for c in sorted({c for c in cuts if 0 < c < len(body)}) + [len(body)]:
        pieces.append(body[last:c])
        last = c
    it = iter(pieces)

    async def read() -> bytes:
        return next(it, b"")

    async def go() -> list[tuple[dict[str, str], bytes]]:
        r = FormReader(read, BOUNDARY.encode())
        parts = []
        while (h := await r.next_part()) is not None:
            data = b""
            async for p in r.part_data():
                data += p
            parts.append((h, data))
        return parts

    d = defer.Deferred.fromCoroutine(go())
    out: list[Any] = []
    d.addBoth(out.append)
    result = out[0]
    if isinstance(result, Exception) or hasattr(result, "raiseException"):
        result.raiseException()
    return result  # type: ignore[no-any-return]


def strip(data: bytes) -> bytes:
    """C{data} without the boundary in it (removing one can make another)."""
    while BOUNDARY.encode() in data:
        data = data.replace(BOUNDARY.encode(), b"")
    return data


def policy_of(conditions: list[Any], secs: int = 600) -> str:
    exp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + secs))
    return base64.b64encode(
        json.dumps({"expiration": exp, "conditions": conditions}).encode()
    ).decode()


def v2_sign(policy: str, secret: str = ALICE[1]) -> str:
    return base64.b64encode(
        hmac.new(secret.encode(), policy.encode(), hashlib.sha1).digest()
    ).decode()


class FormReaderTests(SynchronousTestCase):
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["key", "acl", "x-amz-meta-a", "policy"]), st.binary(max_size=40)
            ),
            max_size=4,
        ),
        st.binary(max_size=300),
        st.lists(st.integers(min_value=0, max_value=600), max_size=8),
    )
    def test_any_split(self, fields: list[tuple[str, bytes]], data: bytes, cuts: list[int]) -> None:
        """However the body arrives, the parts and their bytes are the same (the boundary is never in the data)."""
        data, fields = strip(data), [(n, strip(v)) for n, v in fields]
        body = form([*fields, ("file", ("f.bin", data))])
        parts = parse_all(body, [c for c in cuts if c < len(body)])
        self.assertEqual([(h["name"], d) for h, d in parts], [*fields, ("file", data)])
        self.assertEqual(parts[-1][0]["filename"], "f.bin")

    @given(st.binary(max_size=200))
    def test_garbage_is_refused(self, junk: bytes) -> None:
        """Anything that is not a form fails with S3's error (never another exception)."""
        try:
            parse_all(junk, [])
        except S3Error as e:
            self.assertIn(e.code, ("MalformedPOSTRequest", "IncompleteBody"))

    def test_truncated(self) -> None:
        body = form([("key", "k"), ("file", ("f", b"data"))])
        e = self.assertRaises(S3Error, parse_all, body[:-20], [])
        self.assertEqual(e.code, "IncompleteBody")


class PolicyTests(SynchronousTestCase):
    def test_parse_errors(self) -> None:
        for doc in [
            b"not json",
            json.dumps({"conditions": [{"a": "b"}]}).encode(),
            json.dumps({"expiration": "2030-01-01 00:00:00", "conditions": [{"a": "b"}]}).encode(),
            json.dumps({"expiration": "2030-01-01T00:00:00Z", "CONDITIONS": []}).encode(),
            json.dumps({"expiration": "2030-01-01T00:00:00Z", "conditions": []}).encode(),
            json.dumps(
                {"expiration": "2030-01-01T00:00:00Z", "conditions": [["content-length-range", 0]]}
            ).encode(),
            json.dumps(
                {
                    "expiration": "2030-01-01T00:00:00Z",
                    "conditions": [["content-length-range", -1, 0]],
                }
            ).encode(),
        ]:
            e = self.assertRaises(S3Error, parse_policy, base64.b64encode(doc).decode())
            self.assertEqual(e.code, "InvalidPolicyDocument", doc)

    def test_conditions(self) -> None:
        p = parse_policy(
            policy_of(
                [
                    {"bucket": "b"},
                    ["starts-with", "$key", "up/"],
                    ["eq", "$acl", "private"],
                    ["content-length-range", 1, 10],
                ]
            )
        )
        self.assertEqual(p.length_range, (1, 10))
        check_policy(p, {"key": "up/x", "acl": "private", "signature": "s"}, "b")
        for fields, bucket in [
            ({"key": "down/x", "acl": "private"}, "b"),
            ({"key": "up/x", "acl": "public-read"}, "b"),
            ({"key": "up/x", "acl": "private"}, "other"),
            ({"key": "up/x", "acl": "private", "x-amz-meta-extra": "1"}, "b"),
        ]:
            e = self.assertRaises(S3Error, check_policy, p, fields, bucket)
            self.assertEqual(e.code, "AccessDenied", fields)
        check_policy(p, {"key": "up/x", "acl": "private", "x-ignore-me": "1"}, "b")
        e = self.assertRaises(
            S3Error, check_policy, p, {"key": "up/x", "acl": "private"}, "b", time.time() + 3600
        )
        self.assertIn("expired", e.message)


class LivePostTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.root = await start_gateway(self)
        self.port = s3_port(self.root)
        self.c = Client(self.port)
        self.addCleanup(self.c.close)
        await self.c.request("PUT", "/forms")

    async def post(self, body: bytes, bucket: str = "forms") -> tuple[int, dict[str, str], bytes]:
        h = Headers({b"Content-Type": [f"multipart/form-data; boundary={BOUNDARY}".encode()]})
        url = f"http://127.0.0.1:{self.port}/{bucket}".encode()
        import io

        resp = await self.c.agent.request(b"POST", url, h, FileBodyProducer(io.BytesIO(body)))
        data = await readBody(resp)
        hdrs = {k.decode().lower(): v[-1].decode() for k, v in resp.headers.getAllRawHeaders()}
        return resp.code, hdrs, data

    def v2_fields(self, conditions: list[Any], **extra: Any) -> list[tuple[str, Any]]:
        p = policy_of(conditions)
        return [
            ("AWSAccessKeyId", ALICE[0]),
            ("policy", p),
            ("signature", v2_sign(p)),
            *extra.items(),
        ]

    async def test_boto3_presigned_post_sigv4(self) -> None:
        """boto3's own form signer (SigV4): the object lands as alice's, with its fields."""
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.port}",
            aws_access_key_id=ALICE[0],
            aws_secret_access_key=ALICE[1],
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
        )
        pp = s3.generate_presigned_post(
            "forms",
            "up/${filename}",
            Fields={
                "Content-Type": "text/plain",
                "x-amz-meta-color": "blue",
                "success_action_status": "201",
            },
            Conditions=[
                ["starts-with", "$Content-Type", "text/"],
                {"x-amz-meta-color": "blue"},
                {"success_action_status": "201"},
                ["content-length-range", 1, 100],
            ],
        )
        self.assertIn("x-amz-signature", pp["fields"])
        fields = list(pp["fields"].items()) + [("file", ("hello.txt", b"hello form"))]
        code, hdrs, body = await self.post(form(fields))
        self.assertEqual(code, 201, body)
        self.assertIn(b"<Key>up/hello.txt</Key>", body)
        self.assertEqual(hdrs["etag"], f'"{hashlib.md5(b"hello form").hexdigest()}"')
        r = await self.c.request("GET", "/forms/up/hello.txt")
        self.assertEqual(
            (r.body, r.header("content-type"), r.header("x-amz-meta-color")),
            (b"hello form", "text/plain", "blue"),
        )
        # Tampering with a field the policy fixes is refused.
        tampered = [(k, "red" if k == "x-amz-meta-color" else v) for k, v in pp["fields"].items()]
        code, _, body = await self.post(form([*tampered, ("file", ("x", b"x"))]))
        self.assertEqual(code, 403, body)
        # As is a wrong signature.
        forged = [(k, "0" * 64 if k == "x-amz-signature" else v) for k, v in pp["fields"].items()]
        code, _, body = await self.post(form([*forged, ("file", ("x", b"x"))]))
        self.assertEqual((code, b"SignatureDoesNotMatch" in body), (403, True))

    async def test_v2_statuses_redirect_tags_and_limits(self) -> None:
        conds = [
            {"bucket": "forms"},
            ["starts-with", "$key", ""],
            ["starts-with", "$success_action_status", ""],
            ["starts-with", "$tagging", ""],
            ["content-length-range", 2, 8],
        ]
        code, _, body = await self.post(
            form(
                self.v2_fields(conds, key="a", success_action_status="200")
                + [("file", ("f", b"abc"))]
            )
        )
        self.assertEqual((code, body), (200, b""))
        code, _, _ = await self.post(
            form(self.v2_fields(conds, key="b") + [("file", ("f", b"abc"))])
        )
        self.assertEqual(code, 204)
        tags = "<Tagging><TagSet><Tag><Key>k</Key><Value>v</Value></Tag></TagSet></Tagging>"
        code, _, _ = await self.post(
            form(self.v2_fields(conds, key="t", tagging=tags) + [("file", ("f", b"abc"))])
        )
        self.assertEqual(code, 204)
        r = await self.c.request("GET", "/forms/t", "tagging")
        self.assertIn(b"<Key>k</Key><Value>v</Value>", r.body)
        code, _, body = await self.post(
            form(self.v2_fields(conds, key="big") + [("file", ("f", b"x" * 9))])
        )
        self.assertEqual((code, b"EntityTooLarge" in body), (400, True))
        code, _, body = await self.post(
            form(self.v2_fields(conds, key="small") + [("file", ("f", b"x"))])
        )
        self.assertEqual((code, b"EntityTooSmall" in body), (400, True))
        r = await self.c.request("HEAD", "/forms/big")
        self.assertEqual(r.status, 404)
        redirect = "http://example.test/done"
        conds.append({"success_action_redirect": redirect})
        code, hdrs, _ = await self.post(
            form(
                self.v2_fields(conds, key="r", success_action_redirect=redirect)
                + [("file", ("f", b"abc"))]
            )
        )
        self.assertEqual(code, 303)
        self.assertTrue(
            hdrs["location"].startswith(redirect + "?bucket=forms&key=r&etag=%22"), hdrs["location"]
        )

    async def test_refusals(self) -> None:
        """What the form asks and the gateway cannot honour is refused, as for a PUT."""
        conds = [["starts-with", "$key", ""], ["starts-with", "$x-amz-storage-class", ""]]
        code, _, body = await self.post(
            form(
                self.v2_fields(conds, key="g", **{"x-amz-storage-class": "GLACIER"})
                + [("file", ("f", b"a"))]
            )
        )
        self.assertEqual((code, b"InvalidStorageClass" in body), (400, True))
        code, _, body = await self.post(
            form(self.v2_fields(conds, acl="private") + [("file", ("f", b"a"))])
        )
        self.assertEqual((code, b"InvalidArgument" in body), (400, True))  # no key
        code, _, body = await self.post(form(self.v2_fields(conds, key="nofile")))
        self.assertEqual(code, 400, body)
        h = Headers({b"Content-Type": [b"text/plain"]})
        import io

        resp = await self.c.agent.request(
            b"POST",
            f"http://127.0.0.1:{self.port}/forms".encode(),
            h,
            FileBodyProducer(io.BytesIO(b"x")),
        )
        self.assertEqual(resp.code, 412)
        await readBody(resp)

    async def test_anonymous(self) -> None:
        """An unsigned form writes only where everyone was granted WRITE, as the export's anonymous user."""
        code, _, body = await self.post(form([("key", "anon"), ("file", ("f", b"a"))]))
        self.assertEqual((code, b"AccessDenied" in body), (403, True))
        await self.c.request("PUT", "/open", headers={"x-amz-acl": "public-read-write"})
        fields = [("key", "anon"), ("acl", "public-read"), ("file", ("f", b"a"))]
        code, _, body = await self.post(form(fields), bucket="open")
        self.assertEqual(code, 204, body)
        r = await self.c.request("GET", "/open/anon")
        self.assertEqual((r.status, r.body), (200, b"a"))
        # Written as the export's anonymous uid, so alice (not its owner) cannot change it.
        r = await self.c.request("PUT", "/open/anon", "acl", headers={"x-amz-acl": "private"})
        self.assertEqual(r.status, 403, r.body)
