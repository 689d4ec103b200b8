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
