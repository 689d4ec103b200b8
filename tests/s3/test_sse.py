"""Server-side encryption (issue 16 item 5): the at-rest layout, and SSE-S3/SSE-C on a live gateway."""

from __future__ import annotations

import base64
import hashlib
import os
import re

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from claudefs_gateway.s3 import sse
from claudefs_gateway.s3.errors import S3Error
from tests.s3.harness import Client, s3_port, start_gateway


def seal(data: bytes, key: bytes, salt: bytes, segment: int = 0) -> bytes:
    s = sse.Sealer(sse.object_key(key, salt), segment)
    return s.feed(data) + s.finish()


class LayoutTests(SynchronousTestCase):
    @given(
        sizes=st.lists(st.integers(0, 3 * sse.CHUNK + 7), min_size=1, max_size=3),
        cut=st.integers(0, 10**6),
        span=st.integers(0, 10**6),
    )
    def test_any_range_of_any_segments(self, sizes: list[int], cut: int, span: int) -> None:
        """Any plaintext range of a multi-segment object reads back exactly (and stored sizes add up)."""
        key, salt = os.urandom(32), os.urandom(16)
        numbers = list(range(1, len(sizes) + 1))
        plains = [os.urandom(n) for n in sizes]
        stored = b"".join(seal(p, key, salt, n) for p, n in zip(plains, numbers, strict=True))
        self.assertEqual(len(stored), sum(sse.cipher_size(n) for n in sizes))
        whole = b"".join(plains)

        async def read(off: int, n: int) -> bytes:
            return stored[off : off + n]

        opener = sse.Opener(sse.object_key(key, salt), sse.segments(numbers, sizes), read)
        first = cut % (len(whole) + 1)
        length = span % (len(whole) - first + 1)
        got = self.successResultOf(defer.Deferred.fromCoroutine(opener.read(first, length)))
        self.assertEqual(got, whole[first : first + length])

    def test_tampering_detected(self) -> None:
        key, salt = os.urandom(32), os.urandom(16)
        stored = bytearray(seal(b"x" * 1000, key, salt))
        stored[10] ^= 1

        async def read(off: int, n: int) -> bytes:
            return bytes(stored[off : off + n])

        opener = sse.Opener(sse.object_key(key, salt), sse.segments([0], [1000]), read)
        f = self.failureResultOf(defer.Deferred.fromCoroutine(opener.read(0, 10)), S3Error)
        self.assertEqual(f.value.code, "InternalError")

    def test_keyring_rotation_keeps_old_keys(self) -> None:
        from pathlib import Path

        ring = sse.Keyring(Path(self.mktemp()))
        data_key = os.urandom(32)
        kid, wrapped = ring.wrap(data_key)
        new = ring.rotate()
        self.assertNotEqual(kid, new)
        self.assertEqual(ring.unwrap(kid, wrapped), data_key)
        self.assertEqual(ring.wrap(data_key)[0], new)
        self.assertEqual(oct(ring.path.stat().st_mode & 0o777), "0o600")

    def test_customer_key_checks(self) -> None:
        key = os.urandom(32)
        h = {
            "x-amz-server-side-encryption-customer-algorithm": ["AES256"],
            "x-amz-server-side-encryption-customer-key": [base64.b64encode(key).decode()],
            "x-amz-server-side-encryption-customer-key-md5": [
                base64.b64encode(hashlib.md5(key).digest()).decode()
            ],
        }
        self.assertEqual(sse.customer_key(h)[0], key)  # type: ignore[index]
        bad = dict(h, **{"x-amz-server-side-encryption-customer-key-md5": ["AAAA"]})
        self.assertRaises(S3Error, sse.customer_key, bad)
        short = dict(h, **{"x-amz-server-side-encryption-customer-key": ["c2hvcnQ="]})
        self.assertRaises(S3Error, sse.customer_key, short)


def ssec(key: bytes, copy: bool = False) -> dict[str, str]:
    p = (
        "x-amz-copy-source-server-side-encryption-customer-"
        if copy
        else "x-amz-server-side-encryption-customer-"
    )
    return {
        p + "algorithm": "AES256",
        p + "key": base64.b64encode(key).decode(),
        p + "key-MD5": base64.b64encode(hashlib.md5(key).digest()).decode(),
    }


class LiveTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.root = await start_gateway(self)
        self.c = Client(s3_port(self.root))
        self.addCleanup(self.c.close)
        await self.c.request("PUT", "/encbkt")
        self.s3 = self.root.getServiceNamed("proto:s3")
        from twisted.logger import globalLogPublisher

        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    async def stored(self, key: bytes) -> bytes:
        tree = self.s3.tree
        a = await tree.vfs.resolve(tree.root_caller, b"encbkt/" + key)
        return (await tree.vfs.read(tree.root_caller, a.ino, 0, a.size)).data

    async def test_sse_s3(self) -> None:
        body = os.urandom(200_000)
        r = await self.c.request(
            "PUT", "/encbkt/s3obj", headers={"x-amz-server-side-encryption": "AES256"}, body=body
        )
        self.assertEqual((r.status, r.header("x-amz-server-side-encryption")), (200, "AES256"))
        at_rest = await self.stored(b"s3obj")
        self.assertNotIn(body[:64], at_rest)
        r = await self.c.request("GET", "/encbkt/s3obj")
        self.assertEqual((r.body, r.header("x-amz-server-side-encryption")), (body, "AES256"))
        r = await self.c.request("GET", "/encbkt/s3obj", headers={"Range": "bytes=70000-130000"})
        self.assertEqual(r.body, body[70000:130001])
        r = await self.c.request("GET", "/encbkt", {"list-type": "2"})
        self.assertIn(b"<Size>200000</Size>", r.body)

    async def test_sse_c(self) -> None:
        key = os.urandom(32)
        body = b"secret " * 5000
        r = await self.c.request("PUT", "/encbkt/cobj", headers=ssec(key), body=body)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.header("x-amz-server-side-encryption-customer-algorithm"), "AES256")
        r = await self.c.request("GET", "/encbkt/cobj")
        self.assertEqual((r.status, r.code), (400, "InvalidRequest"))
        r = await self.c.request("GET", "/encbkt/cobj", headers=ssec(os.urandom(32)))
        self.assertEqual(r.status, 403)
        self.assertNotIn(base64.b64encode(key), r.body)
        r = await self.c.request("GET", "/encbkt/cobj", headers=ssec(key))
        self.assertEqual(r.body, body)
        # A copy decrypts with the source's key and encrypts with the bucket default / request.
        r = await self.c.request(
            "PUT",
            "/encbkt/copied",
            headers={
                "x-amz-copy-source": "/encbkt/cobj",
                "x-amz-server-side-encryption": "AES256",
                **ssec(key, copy=True),
            },
        )
        self.assertEqual(r.status, 200, r.body)
        r = await self.c.request("GET", "/encbkt/copied")
        self.assertEqual(r.body, body)
        # No key is ever logged (a wrong key, a malformed one: their errors say so without it).
        self.assertFalse(any(base64.b64encode(key).decode() in repr(e) for e in self.events))

    async def test_sse_c_multipart(self) -> None:
        key = os.urandom(32)
        r = await self.c.request("POST", "/encbkt/mp", "uploads", headers=ssec(key))
        upload = re.search(rb"<UploadId>(.*)</UploadId>", r.body).group(1).decode()  # type: ignore[union-attr]
        parts = [os.urandom(5 * 1024 * 1024), os.urandom(1234)]
        etags = []
        for i, data in enumerate(parts, start=1):
            r = await self.c.request(
                "PUT",
                "/encbkt/mp",
                {"partNumber": str(i), "uploadId": upload},
                headers=ssec(key),
                body=data,
            )
            self.assertEqual(r.status, 200, r.body)
            etags.append(r.header("etag"))
        body = (
            "<CompleteMultipartUpload>"
            + "".join(
                f"<Part><PartNumber>{i}</PartNumber><ETag>{e}</ETag></Part>"
                for i, e in enumerate(etags, 1)
            )
            + "</CompleteMultipartUpload>"
        )
        # Complete carries the upload's key too (AWS: 400 without it, or with another).
        r = await self.c.request("POST", "/encbkt/mp", {"uploadId": upload}, body=body.encode())
        self.assertEqual((r.status, r.code), (400, "InvalidRequest"))
        r = await self.c.request(
            "POST",
            "/encbkt/mp",
            {"uploadId": upload},
            headers=ssec(os.urandom(32)),
            body=body.encode(),
        )
        self.assertEqual((r.status, r.code), (400, "InvalidArgument"))
        r = await self.c.request(
            "POST", "/encbkt/mp", {"uploadId": upload}, headers=ssec(key), body=body.encode()
        )
        self.assertEqual(r.status, 200, r.body)
        r = await self.c.request(
            "GET", "/encbkt/mp", headers={**ssec(key), "Range": "bytes=5242000-5243000"}
        )
        self.assertEqual(r.body, b"".join(parts)[5242000:5243001])
        r = await self.c.request("GET", "/encbkt/mp", {"partNumber": "2"}, headers=ssec(key))
        self.assertEqual(r.body, parts[1])

    async def test_bucket_default(self) -> None:
        body = b"<ServerSideEncryptionConfiguration><Rule><ApplyServerSideEncryptionByDefault><SSEAlgorithm>AES256</SSEAlgorithm></ApplyServerSideEncryptionByDefault></Rule></ServerSideEncryptionConfiguration>"
        r = await self.c.request("PUT", "/encbkt", "encryption", body=body)
        self.assertEqual(r.status, 200)
        r = await self.c.request("PUT", "/encbkt/dflt", body=b"plain text here")
        self.assertEqual(r.header("x-amz-server-side-encryption"), "AES256")
        self.assertNotIn(b"plain text", await self.stored(b"dflt"))
        r = await self.c.request("GET", "/encbkt", "encryption")
        self.assertIn(b"<SSEAlgorithm>AES256</SSEAlgorithm>", r.body)
        kms = body.replace(b"AES256", b"aws:kms")
        r = await self.c.request("PUT", "/encbkt", "encryption", body=kms)
        self.assertEqual((r.status, r.code), (501, "NotImplemented"))

    async def test_file_clients_refused(self) -> None:
        """An NFS (or SMB) read or write of an encrypted object's bytes is EACCES, never ciphertext."""
        from claudefs_gateway import errors
        from claudefs_gateway.fstypes import Credentials

        await self.c.request(
            "PUT",
            "/encbkt/sealed",
            headers={"x-amz-server-side-encryption": "AES256"},
            body=b"x" * 100,
        )
        tree = self.s3.tree
        nfs = tree.vfs.caller(tree.export, "127.0.0.1", Credentials(1000, 1000), "nfs")
        a = await tree.vfs.resolve(nfs, b"encbkt/sealed")
        with self.assertRaises(errors.Access):
            await tree.vfs.read(nfs, a.ino, 0, 10)
        with self.assertRaises(errors.Access):
            await tree.vfs.write(nfs, a.ino, 0, b"y", True)
