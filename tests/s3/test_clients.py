"""
Real S3 clients nobody here wrote - boto3, the aws cli, s3cmd - against a
gateway on loopback. The clients block, so each runs in its own process
(tests/s3/boto_client.py for boto3) while the gateway runs on this reactor.
"""

from __future__ import annotations

import os
import sys

from twisted.trial.unittest import TestCase

from tests.helpers import REPO, spawn
from tests.s3.harness import ALICE, s3_port, start_gateway
from tests.s3.tls import make_cert


async def run(testcase: TestCase, argv: list[str], env: dict[str, str] | None = None) -> str:
    from tests.helpers import child_env

    proc = spawn(argv, env=child_env(**(env or {})), path=REPO)
    status = await proc.ended
    out = "\n".join(proc.text) + "\n" + proc.stderr.decode("utf-8", "replace")
    testcase.assertEqual(status, 0, out[-6000:])
    return out


class Boto3Tests(TestCase):
    """Every API of issue #5 through boto3 (plain HTTP unless said otherwise)."""

    timeout = 120

    async def scenario(self, name: str, tls: bool = False) -> None:
        extra = ""
        ca = None
        if tls:
            cert, key = make_cert(os.path.abspath(self.mktemp()))
            extra = f'  tls_cert: "{cert}"\n  tls_key: "{key}"\n'
            ca = cert
        root = await start_gateway(self, s3_extra=extra)
        scheme = "https" if tls else "http"
        argv = [
            sys.executable,
            "-m",
            "tests.s3.boto_client",
            name,
            "--endpoint",
            f"{scheme}://127.0.0.1:{s3_port(root)}",
            "--key",
            ALICE[0],
            "--secret",
            ALICE[1],
        ]
        if ca:
            argv += ["--ca", ca]
        await run(self, argv)

    async def test_buckets(self) -> None:
        await self.scenario("buckets")

    async def test_objects(self) -> None:
        await self.scenario("objects")

    async def test_listing(self) -> None:
        await self.scenario("listing")

    async def test_multipart(self) -> None:
        await self.scenario("multipart")

    async def test_presigned(self) -> None:
        await self.scenario("presigned")

    async def test_sigv2(self) -> None:
        await self.scenario("sigv2")

    async def test_streaming_signed_chunks(self) -> None:
        """STREAMING-AWS4-HMAC-SHA256-PAYLOAD: every chunk signature checked."""
        await self.scenario("streaming_signed")

    async def test_tls_streaming_trailer(self) -> None:
        """HTTPS with a generated certificate: boto3's default aws-chunked CRC32 trailer."""
        await self.scenario("streaming_trailer", tls=True)


def write_random(path: str, size: int, seed: int) -> bytes:
    """A file of C{size} reproducible bytes (written in 1 MiB blocks)."""
    import random

    rnd = random.Random(seed)
    h = __import__("hashlib").md5()
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            block = rnd.randbytes(n)
            h.update(block)
            f.write(block)
            left -= n
    return h.digest()


def md5_file(path: str) -> bytes:
    import hashlib

    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()


class AwsCliTests(TestCase):
    """The aws cli (awscli from PyPI): high-level s3 commands and s3api calls."""

    timeout = 240

    async def setUp(self) -> None:
        self.root = await start_gateway(self)
        self.endpoint = f"http://127.0.0.1:{s3_port(self.root)}"
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)
        self.env = {
            "HOME": self.home,
            "AWS_ACCESS_KEY_ID": ALICE[0],
            "AWS_SECRET_ACCESS_KEY": ALICE[1],
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.path.join(self.home, "config"),
            "AWS_SHARED_CREDENTIALS_FILE": os.path.join(self.home, "credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_PAGER": "",
        }

    async def aws(self, *args: str) -> str:
        from tests.helpers import bin_path

        return await run(self, [bin_path("aws"), "--endpoint-url", self.endpoint, *args], self.env)

    async def test_high_level_commands(self) -> None:
        """mb, cp both ways (with a > 64 MiB multipart upload), sync, ls, rm, rb."""
        work = os.path.join(self.home, "work")
        os.makedirs(os.path.join(work, "tree", "sub"))
        big = os.path.join(work, "big.bin")
        big_md5 = write_random(big, 65 * 1024 * 1024 + 123, 1)
        for i, name in enumerate(["a.txt", "sub/b.txt", "sub/c d.txt"]):
            with open(os.path.join(work, "tree", name), "wb") as f:
                f.write(f"file {i}\n".encode() * (i + 1))
        await self.aws("s3", "mb", "s3://cli-bucket")
        out = await self.aws("s3", "ls")
        self.assertIn("cli-bucket", out)
        await self.aws("s3", "cp", big, "s3://cli-bucket/big/big.bin")
        head = await self.aws(
            "s3api", "head-object", "--bucket", "cli-bucket", "--key", "big/big.bin"
        )
        self.assertIn('-9\\"', head)  # 65 MiB in the cli's 8 MiB parts: a 9-part ETag
        back = os.path.join(work, "big.back")
        await self.aws("s3", "cp", "s3://cli-bucket/big/big.bin", back)
        self.assertEqual(md5_file(back), big_md5)
        await self.aws("s3", "sync", os.path.join(work, "tree"), "s3://cli-bucket/tree")
        out = await self.aws("s3", "ls", "--recursive", "s3://cli-bucket/tree/")
        for name in ["tree/a.txt", "tree/sub/b.txt", "tree/sub/c d.txt"]:
            self.assertIn(name, out)
        # A second sync finds nothing to do: sizes and times agree.
        out = await self.aws("s3", "sync", os.path.join(work, "tree"), "s3://cli-bucket/tree")
        self.assertNotIn("upload:", out)
        down = os.path.join(work, "down")
        await self.aws("s3", "sync", "s3://cli-bucket/tree", down)
        with open(os.path.join(down, "sub", "c d.txt"), "rb") as f:
            self.assertEqual(f.read(), b"file 2\n" * 3)
        await self.aws("s3", "rm", "s3://cli-bucket/big/big.bin")
        await self.aws("s3", "rm", "--recursive", "s3://cli-bucket/tree")
        out = await self.aws("s3", "ls", "--recursive", "s3://cli-bucket/")
        self.assertNotIn("tree/", out)
        await self.aws("s3", "rb", "s3://cli-bucket")
        out = await self.aws("s3", "ls")
        self.assertNotIn("cli-bucket", out)

    async def test_s3api(self) -> None:
        """Low-level calls: put/get/head/list/copy/delete and a multipart upload by hand."""
        import json

        work = os.path.join(self.home, "w")
        os.makedirs(work)
        part = os.path.join(work, "part")
        write_random(part, 5 * 1024 * 1024, 2)
        await self.aws("s3api", "create-bucket", "--bucket", "api")
        await self.aws(
            "s3api",
            "put-object",
            "--bucket",
            "api",
            "--key",
            "k",
            "--body",
            part,
            "--content-type",
            "text/x-test",
            "--metadata",
            "a=1",
        )
        out = json.loads(
            await self.aws(
                "s3api", "head-object", "--bucket", "api", "--key", "k", "--output", "json"
            )
        )
        self.assertEqual(
            (out["ContentType"], out["Metadata"], out["ContentLength"]),
            ("text/x-test", {"a": "1"}, 5 * 1024 * 1024),
        )
        dest = os.path.join(work, "got")
        await self.aws(
            "s3api", "get-object", "--bucket", "api", "--key", "k", "--range", "bytes=0-99", dest
        )
        with open(dest, "rb") as f, open(part, "rb") as g:
            self.assertEqual(f.read(), g.read(100))
        await self.aws(
            "s3api", "copy-object", "--bucket", "api", "--key", "k2", "--copy-source", "api/k"
        )
        up = json.loads(
            await self.aws(
                "s3api",
                "create-multipart-upload",
                "--bucket",
                "api",
                "--key",
                "m",
                "--output",
                "json",
            )
        )
        uid = up["UploadId"]
        e1 = json.loads(
            await self.aws(
                "s3api",
                "upload-part",
                "--bucket",
                "api",
                "--key",
                "m",
                "--upload-id",
                uid,
                "--part-number",
                "1",
                "--body",
                part,
                "--output",
                "json",
            )
        )["ETag"]
        e2 = json.loads(
            await self.aws(
                "s3api",
                "upload-part-copy",
                "--bucket",
                "api",
                "--key",
                "m",
                "--upload-id",
                uid,
                "--part-number",
                "2",
                "--copy-source",
                "api/k",
                "--copy-source-range",
                "bytes=0-999",
                "--output",
                "json",
            )
        )["CopyPartResult"]["ETag"]
        listed = json.loads(
            await self.aws(
                "s3api",
                "list-parts",
                "--bucket",
                "api",
                "--key",
                "m",
                "--upload-id",
                uid,
                "--output",
                "json",
            )
        )
        self.assertEqual([p["PartNumber"] for p in listed["Parts"]], [1, 2])
        mpu = os.path.join(work, "mpu.json")
        with open(mpu, "w") as f:
            json.dump({"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]}, f)
        await self.aws(
            "s3api",
            "complete-multipart-upload",
            "--bucket",
            "api",
            "--key",
            "m",
            "--upload-id",
            uid,
            "--multipart-upload",
            f"file://{mpu}",
        )
        out = json.loads(
            await self.aws("s3api", "list-objects-v2", "--bucket", "api", "--output", "json")
        )
        sizes = {o["Key"]: o["Size"] for o in out["Contents"]}
        self.assertEqual(
            sizes, {"k": 5 * 1024 * 1024, "k2": 5 * 1024 * 1024, "m": 5 * 1024 * 1024 + 1000}
        )
        await self.aws(
            "s3api",
            "delete-objects",
            "--bucket",
            "api",
            "--delete",
            "Objects=[{Key=k},{Key=k2},{Key=m}]",
        )
        await self.aws("s3api", "delete-bucket", "--bucket", "api")


class S3cmdTests(TestCase):
    """s3cmd (PyPI): put/get/ls/del and multipart, SigV4 and SigV2."""

    timeout = 180

    async def setUp(self) -> None:
        self.root = await start_gateway(self)
        port = s3_port(self.root)
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)
        self.cfg = os.path.join(self.home, "s3cfg")
        with open(self.cfg, "w") as f:
            f.write(
                "[default]\n"
                f"access_key = {ALICE[0]}\n"
                f"secret_key = {ALICE[1]}\n"
                f"host_base = 127.0.0.1:{port}\n"
                f"host_bucket = 127.0.0.1:{port}\n"
                "bucket_location = us-east-1\n"
                "use_https = False\n"
                "check_ssl_certificate = False\n"
                "multipart_chunk_size_mb = 5\n"
            )

    async def s3cmd(self, *args: str) -> str:
        from tests.helpers import bin_path

        return await run(
            self, [sys.executable, bin_path("s3cmd"), "-c", self.cfg, *args], {"HOME": self.home}
        )

    async def _round_trip(self, *flags: str) -> None:
        bucket = "s3cmd-v2" if flags else "s3cmd-v4"
        src = os.path.join(self.home, f"src{len(flags)}")
        small = os.path.join(self.home, f"small{len(flags)}")
        with open(small, "wb") as f:
            f.write(b"small object\n")
        src_md5 = write_random(src, 12 * 1024 * 1024 + 17, 3)
        await self.s3cmd(*flags, "mb", f"s3://{bucket}")
        await self.s3cmd(*flags, "put", small, f"s3://{bucket}/dir/small.txt")
        await self.s3cmd(*flags, "put", src, f"s3://{bucket}/dir/big.bin")
        out = await self.s3cmd(*flags, "ls", "--recursive", f"s3://{bucket}")
        self.assertIn("dir/small.txt", out)
        self.assertIn("dir/big.bin", out)
        out = await self.s3cmd(*flags, "ls", f"s3://{bucket}/")
        self.assertIn("DIR", out)
        back = os.path.join(self.home, f"back{len(flags)}")
        await self.s3cmd(*flags, "get", f"s3://{bucket}/dir/big.bin", back)
        self.assertEqual(md5_file(back), src_md5)
        await self.s3cmd(*flags, "info", f"s3://{bucket}/dir/big.bin")
        # 12 MiB in s3cmd's 5 MiB parts: stored as a 3-part multipart object.
        from tests.s3.harness import Client

        c = Client(s3_port(self.root))
        self.addCleanup(c.close)
        r = await c.request("HEAD", f"/{bucket}/dir/big.bin")
        self.assertTrue(r.header("etag").endswith('-3"'), r.headers)
        await self.s3cmd(
            *flags, "del", f"s3://{bucket}/dir/small.txt", f"s3://{bucket}/dir/big.bin"
        )
        out = await self.s3cmd(*flags, "ls", "--recursive", f"s3://{bucket}")
        self.assertNotIn("dir/", out)
        await self.s3cmd(*flags, "rb", f"s3://{bucket}")

    async def test_sigv4(self) -> None:
        await self._round_trip()

    async def test_sigv2(self) -> None:
        await self._round_trip("--signature-v2")
