"""
Never a silent yes: every request header that names functionality the gateway
does not provide is refused with AWS's error (claudefs_gateway.s3.headers),
on a live gateway, and nothing is written; the values that are honoured pass.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase, TestCase

from claudefs_gateway.s3.errors import STATUS
from claudefs_gateway.s3.headers import REFUSALS, Refusal
from tests.helpers import REPO
from tests.s3.harness import Client, s3_port, start_gateway
from tests.s3.test_post import BOUNDARY, form, policy_of, v2_sign

#: A value each refused header may carry that is not honoured.
BAD_VALUE = {
    "x-amz-acl": "public-read",
    "x-amz-tagging-directive": "REPLACE",
    "x-amz-bucket-object-lock-enabled": "true",
    "x-amz-storage-class": "GLACIER",
    "x-amz-object-lock-retain-until-date": "2030-01-01T00:00:00Z",
    "x-amz-object-lock-mode": "GOVERNANCE",
    "x-amz-object-lock-legal-hold": "ON",
    "x-amz-server-side-encryption": "AES256",
}


class RefusedHeaderTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.root = await start_gateway(self)
        self.c = Client(s3_port(self.root))
        self.addCleanup(self.c.close)
        self.assertEqual((await self.c.request("PUT", "/bkt")).status, 200)
        r = await self.c.request("PUT", "/bkt/src", body=b"source")
        self.assertEqual(r.status, 200)
        r = await self.c.request("POST", "/bkt/mp", "uploads")
        self.upload = r.body.split(b"<UploadId>")[1].split(b"</UploadId>")[0].decode()

    async def send(self, op: str, headers: dict[str, str]) -> tuple[int, str | None, str]:
        """Send operation C{op} with C{headers}; (status, error code, key written)."""
        key = "/bkt/target-" + os.urandom(4).hex()
        copy = {"x-amz-copy-source": "/bkt/src"}
        part = {"partNumber": "1", "uploadId": self.upload}
        if op == "PutObject":
            r = await self.c.request("PUT", key, headers=headers, body=b"data")
        elif op == "PostObject":
            # A browser form: the header is a field, the policy allows it.
            conds = [["starts-with", "$key", ""]] + [["starts-with", f"${h}", ""] for h in headers]
            p = policy_of(conds)
            fields = [("key", key[5:]), ("AWSAccessKeyId", self.c.key[0]), ("policy", p)]
            fields += [("signature", v2_sign(p)), *headers.items(), ("file", ("f", b"data"))]
            r = await self.c.request(
                "POST",
                "/bkt",
                headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
                body=form(fields),
                scheme="none",
            )
        elif op == "CopyObject":
            r = await self.c.request("PUT", key, headers={**copy, **headers})
        elif op == "CreateMultipartUpload":
            r = await self.c.request("POST", key, "uploads", headers=headers)
        elif op == "CreateBucket":
            key = "/nb-" + os.urandom(4).hex()
            r = await self.c.request("PUT", key, headers=headers)
        elif op == "GetObject":
            r = await self.c.request("GET", "/bkt/src", headers=headers)
        elif op == "HeadObject":
            r = await self.c.request("HEAD", "/bkt/src", headers=headers)
        elif op == "UploadPart":
            r = await self.c.request("PUT", "/bkt/mp", part, headers=headers, body=b"p")
        elif op == "UploadPartCopy":
            r = await self.c.request("PUT", "/bkt/mp", part, headers={**copy, **headers})
        elif op == "CompleteMultipartUpload":
            body = b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>x</ETag></Part></CompleteMultipartUpload>"
            r = await self.c.request(
                "POST", "/bkt/mp", {"uploadId": self.upload}, headers=headers, body=body
            )
        else:
            raise AssertionError(op)
        if op == "HeadObject":
            # HEAD has no body: the code is not readable, the status is.
            return r.status, None, key
        return r.status, r.code, key

    async def test_every_refusal(self) -> None:
        """Each listed header, on each operation it is refused for, gets its error; nothing written."""
        checked = 0
        for refusal in REFUSALS:
            ops = sorted(refusal.ops) if refusal.ops is not None else ["PutObject"]
            value = BAD_VALUE.get(refusal.header, "x")
            if refusal.header.endswith("-key"):
                value = "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U="
            for op in ops:
                status, code, key = await self.send(op, {refusal.header: value})
                what = f"{refusal.header} on {op}"
                self.assertEqual(status, STATUS[refusal.code], what)
                if code is not None:
                    self.assertEqual(code, refusal.code, what)
                if op in ("PutObject", "PostObject", "CopyObject"):
                    r = await self.c.request("HEAD", key)
                    self.assertEqual(r.status, 404, what + ": written anyway")
                if op == "CreateBucket":
                    r = await self.c.request("HEAD", key)
                    self.assertEqual(r.status, 404, what + ": bucket made anyway")
                checked += 1
        self.assertGreater(checked, len(REFUSALS))

    async def test_key_never_echoed(self) -> None:
        """A customer key in a refused header is not echoed in the error document."""
        secret = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="
        r = await self.c.request(
            "PUT",
            "/bkt/k",
            headers={
                "x-amz-server-side-encryption-customer-algorithm": "AES256",
                "x-amz-server-side-encryption-customer-key": secret,
            },
            body=b"x",
        )
        self.assertGreaterEqual(r.status, 400)
        self.assertNotIn(secret.encode(), r.body)

    async def test_honoured_values_pass(self) -> None:
        """The values that are honoured (private, STANDARD, COPY) are not refused."""
        for headers in (
            {"x-amz-acl": "private"},
            {"x-amz-storage-class": "STANDARD"},
        ):
            status, _, _ = await self.send("PutObject", headers)
            self.assertEqual(status, 200, headers)
        status, _, _ = await self.send("CopyObject", {"x-amz-tagging-directive": "COPY"})
        self.assertEqual(status, 200)
        status, _, _ = await self.send("CreateBucket", {"x-amz-acl": "private"})
        self.assertEqual(status, 200)


class RefusalTableTests(SynchronousTestCase):
    def test_codes_known(self) -> None:
        """Every refusal names an S3 error code the front end can send."""
        for r in REFUSALS:
            self.assertIn(r.code, STATUS, r.header)

    def test_documented(self) -> None:
        """docs/s3.rst names every refused header."""
        with open(os.path.join(REPO, "docs", "s3.rst")) as f:
            text = f.read()
        missing = sorted({r.header for r in REFUSALS if r.header not in text})
        self.assertEqual(missing, [])

    def test_allowed_values(self) -> None:
        """A refusal passes the values it honours and refuses the rest, on its operations only."""
        r = Refusal(
            "x-amz-acl", frozenset({"PutObject"}), "NotImplemented", "m", frozenset({"private"})
        )
        self.assertFalse(r.refuses("PutObject", "Private"))
        self.assertTrue(r.refuses("PutObject", "public-read"))
        self.assertFalse(r.refuses("GetObject", "public-read"))
