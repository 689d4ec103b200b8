"""
The S3 front end through the whole service tree, over real loopback HTTP,
with botocore's signers (clients in-process, on the reactor).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import TestCase

from claudefs_gateway import errors, service
from claudefs_gateway.core import config as cfg
from claudefs_gateway.s3.errors import S3Error
from claudefs_gateway.s3.multipart import Uploads
from tests.s3.harness import BOB, Client, gateway_yaml, s3_port, start_gateway


class BasicTests(TestCase):
    timeout = 30

    async def setUp(self) -> None:
        self.root = await start_gateway(self)
        self.port = s3_port(self.root)
        self.alice = Client(self.port)
        self.addCleanup(self.alice.close)

    async def test_bucket_and_object_round_trip(self) -> None:
        """Create a bucket, PUT, GET, HEAD, list and DELETE an object."""
        c = self.alice
        r = await c.request("PUT", "/photos")
        self.assertEqual(r.status, 200, r.body)
        self.assertIsNotNone(r.header("x-amz-request-id"))
        data = b"hello world" * 1000
        r = await c.request(
            "PUT",
            "/photos/2026/a.jpg",
            body=data,
            headers={"Content-Type": "image/jpeg", "x-amz-meta-camera": "x100"},
        )
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.header("etag"), f'"{hashlib.md5(data).hexdigest()}"')
        r = await c.request("GET", "/photos/2026/a.jpg")
        self.assertEqual((r.status, r.body), (200, data))
        self.assertEqual(r.header("content-type"), "image/jpeg")
        self.assertEqual(r.header("x-amz-meta-camera"), "x100")
        r = await c.request("HEAD", "/photos/2026/a.jpg")
        self.assertEqual((r.status, r.header("content-length")), (200, str(len(data))))
        r = await c.request("GET", "/photos", {"list-type": "2"})
        self.assertEqual(r.status, 200)
        self.assertIn(b"<Key>2026/a.jpg</Key>", r.body)
        r = await c.request("DELETE", "/photos/2026/a.jpg")
        self.assertEqual(r.status, 204)
        r = await c.request("GET", "/photos/2026/a.jpg")
        self.assertEqual((r.status, r.code), (404, "NoSuchKey"))
        r = await c.request("GET", "/photos", {"list-type": "2"})
        self.assertNotIn(b"<Key>", r.body)
        self.assertNotIn(b"2026", r.body)
        r = await c.request("DELETE", "/photos")
        self.assertEqual(r.status, 204)

    async def test_anonymous_refused(self) -> None:
        r = await self.alice.request("GET", "/", scheme="none")
        self.assertEqual((r.status, r.code), (403, "AccessDenied"))
        self.assertIsNotNone(r.header("x-amz-request-id"))

    async def test_wrong_secret(self) -> None:
        bad = Client(self.port, (BOB[0], "wrong"))
        self.addCleanup(bad.close)
        r = await bad.request("GET", "/")
        self.assertEqual((r.status, r.code), (403, "SignatureDoesNotMatch"))


class HeaderBytesTests(TestCase):
    timeout = 30

    async def test_non_ascii_header_values_round_trip(self) -> None:
        """Stored header values come back byte for byte (UTF-8 filename in Content-Disposition)."""
        from tests.s3.harness import raw_connect, raw_request

        root = await start_gateway(self)
        port = s3_port(root)
        c = Client(port)
        self.addCleanup(c.close)
        await c.request("PUT", "/hdrs")
        value = "attachment; filename*=UTF-8''caf\u00e9.txt; x=\u00e9"
        raw_value = value.encode("utf-8").decode("latin-1")
        url, headers = c.sign("PUT", c.url("/hdrs/f"), {"Content-Disposition": raw_value}, b"x")
        headers["Content-Length"] = "1"
        conn = await raw_connect(port)
        conn.transport.write(raw_request("PUT", url, headers, b"x"))
        await conn.wait(lambda b: b"\r\n\r\n" in b)
        conn.transport.loseConnection()
        url, headers = c.sign("GET", c.url("/hdrs/f"))
        conn = await raw_connect(port)
        conn.transport.write(raw_request("GET", url, headers))
        await conn.wait(lambda b: b"\r\n\r\nx" in b)
        conn.transport.loseConnection()
        self.assertIn(b"Content-Disposition: " + value.encode("utf-8") + b"\r\n", conn.received)


class StopWhileOpeningTests(TestCase):
    timeout = 60

    async def test_store_closing_under_the_open_is_not_an_error(self) -> None:
        """SIGTERM right after start: the S3 state's open fails quietly, callers get 503."""
        gate: defer.Deferred[None] = defer.Deferred()

        async def held_open(uploads: Uploads) -> None:
            await gate
            raise errors.IO("store closed")

        self.patch(Uploads, "open", held_open)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        data = os.path.abspath(self.mktemp())
        root = service.build(cfg.loads(gateway_yaml(data)), reactor, protocols=["s3"])
        root.privilegedStartService()
        root.startService()
        s3 = root.getServiceNamed("proto:s3")
        waiting = s3.ready()
        await root.stopService()
        gate.callback(None)
        failure = await self.assertFailure(waiting, S3Error)
        self.assertEqual(failure.code, "ServiceUnavailable")
        levels = [
            e["log_level"] for e in events if e.get("log_namespace", "").startswith("claudefs")
        ]
        self.assertNotIn(LogLevel.critical, levels)
        self.assertNotIn(LogLevel.error, levels)
        self.assertTrue([e for e in events if "the gateway is stopping" in e.get("log_format", "")])
