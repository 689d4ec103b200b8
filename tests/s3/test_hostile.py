"""
Hostile and broken input: each refused with S3's error, nothing written, no
crash, no hang - over real loopback connections to a live gateway.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.s3.harness import ALICE, Client, raw_connect, raw_request, s3_port, start_gateway


class HostileTests(TestCase):
    timeout = 30

    async def setUp(self) -> None:
        self.root = await start_gateway(self)
        self.port = s3_port(self.root)
        self.s3 = self.root.getServiceNamed("proto:s3")
        self.c = Client(self.port)
        self.addCleanup(self.c.close)
        r = await self.c.request("PUT", "/bkt")
        self.assertEqual(r.status, 200)

    async def assert_nothing_written(self, key: str) -> None:
        r = await self.c.request("HEAD", f"/bkt/{key}")
        self.assertEqual(r.status, 404, key)
        tree = self.s3.tree
        d = await tree.user_dir(tree.vfs.caller(tree.export, "", _cred(1000), "s3"))
        leftovers = await tree.read_dir(tree.root_caller, d)
        self.assertEqual(leftovers, [], "temporary files left behind")

    async def test_wrong_signature(self) -> None:
        bad = Client(self.port, (ALICE[0], "not the secret"))
        self.addCleanup(bad.close)
        r = await bad.request("PUT", "/bkt/x", body=b"data")
        self.assertEqual((r.status, r.code), (403, "SignatureDoesNotMatch"))
        r = await bad.request("GET", "/bkt/x", scheme="v2")
        self.assertEqual((r.status, r.code), (403, "SignatureDoesNotMatch"))
        unknown = Client(self.port, ("AKIANOBODY", "x"))
        self.addCleanup(unknown.close)
        r = await unknown.request("GET", "/")
        self.assertEqual((r.status, r.code), (403, "InvalidAccessKeyId"))
        await self.assert_nothing_written("x")

    async def test_bad_keys(self) -> None:
        """Keys with .., NUL or 2,000 bytes never reach the tree."""
        cases = [
            ("/bkt/a/../x", "InvalidArgument"),
            ("/bkt/..", "InvalidArgument"),
            ("/bkt/a%00b", "InvalidArgument"),
            ("/bkt//x", "InvalidArgument"),
            ("/bkt/" + "k" * 2000, "KeyTooLongError"),
            ("/bkt/a/" + "n" * 300, "KeyTooLongError"),
        ]
        for path, code in cases:
            r = await self.c.request("PUT", path, body=b"evil")
            self.assertEqual((r.status, r.code), (400, code), path[:40])
            r = await self.c.request("GET", path)
            self.assertEqual(r.code, code, path[:40])
        r = await self.c.request("GET", "/bkt", {"list-type": "2"})
        self.assertNotIn(b"<Key>", r.body)

    async def test_complete_with_10001_parts(self) -> None:
        r = await self.c.request("POST", "/bkt/mp", "uploads")
        upload = r.body.split(b"<UploadId>")[1].split(b"</UploadId>")[0].decode()
        parts = "".join(
            f"<Part><PartNumber>{i}</PartNumber><ETag>x</ETag></Part>" for i in range(1, 10002)
        )
        body = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
        r = await self.c.request("POST", "/bkt/mp", {"uploadId": upload}, body=body)
        self.assertEqual((r.status, r.code), (400, "InvalidArgument"))
        await self.assert_nothing_written("mp")

    async def test_body_shorter_than_content_length(self) -> None:
        """The client sends half the body and hangs up: nothing is written."""
        url, headers = self.c.sign(
            "PUT", self.c.url("/bkt/short"), {"Content-Length": "1000"}, unsigned=True
        )
        conn = await raw_connect(self.port)
        conn.transport.write(raw_request("PUT", url, headers, b"x" * 500))
        conn.transport.loseConnection()
        await conn.closed
        # The gateway notices the connection went and throws the partial body away.
        await self.s3.activity.idle()
        await self.assert_nothing_written("short")

    async def test_body_longer_than_content_length(self) -> None:
        """
        A body longer than Content-Length: the declared bytes do not match the
        signed payload hash (refused, nothing written) and the extra bytes are
        a malformed next request (400, connection closed).
        """
        full = b"y" * 1000
        url, headers = self.c.sign("PUT", self.c.url("/bkt/long"), {}, full)
        headers["Content-Length"] = "600"
        conn = await raw_connect(self.port)
        conn.transport.write(raw_request("PUT", url, headers, full))
        await conn.closed
        first = conn.responses()[0]
        self.assertEqual(first[0], 400)
        self.assertIn(b"XAmzContentSHA256Mismatch", first[2])
        self.assertIn(b"HTTP/1.1 400 Bad Request", conn.received)
        await self.assert_nothing_written("long")

    async def test_malformed_aws_chunked(self) -> None:
        headers = {
            "Content-Encoding": "aws-chunked",
            "x-amz-decoded-content-length": "5",
            "X-Amz-Content-SHA256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
            "x-amz-trailer": "x-amz-checksum-crc32",
        }
        body = b"5\r\nhelloGARBAGE"
        url, signed = _resign(self.c, "PUT", "/bkt/chunky", headers)
        signed["Content-Length"] = str(len(body))
        conn = await raw_connect(self.port)
        conn.transport.write(raw_request("PUT", url, signed, body))
        await conn.wait(lambda b: b"</Error>" in b)
        conn.transport.loseConnection()
        status, _, doc = conn.responses()[0]
        self.assertEqual(status, 400)
        self.assertIn(b"InvalidRequest", doc)
        await self.assert_nothing_written("chunky")

    async def test_wrong_checksum_trailer(self) -> None:
        """An aws-chunked body whose CRC32 trailer does not match: BadDigest, nothing written."""
        headers = {
            "Content-Encoding": "aws-chunked",
            "x-amz-decoded-content-length": "5",
            "x-amz-trailer": "x-amz-checksum-crc32",
        }
        body = b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n"
        url, signed = _resign(self.c, "PUT", "/bkt/crc", headers)
        signed["Content-Length"] = str(len(body))
        conn = await raw_connect(self.port)
        conn.transport.write(raw_request("PUT", url, signed, body))
        await conn.wait(lambda b: b"</Error>" in b)
        conn.transport.loseConnection()
        self.assertIn(b"<Code>BadDigest</Code>", conn.responses()[0][2])
        await self.assert_nothing_written("crc")

    async def test_huge_header_refused(self) -> None:
        conn = await raw_connect(self.port)
        conn.transport.write(
            b"GET /bkt HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n"
        )
        await conn.closed
        self.assertIn(b"400", conn.received[:20])
        self.assertIn(b"x-amz-request-id:", conn.received)
        self.assertIn(b"<Code>InvalidRequest</Code>", conn.received)

    async def test_expect_continue_refused_before_body(self) -> None:
        """A PUT that will be refused is refused before the client sends its body."""
        bad = Client(self.port, (ALICE[0], "wrong"))
        self.addCleanup(bad.close)
        url, headers = bad.sign(
            "PUT",
            bad.url("/bkt/e"),
            {"Expect": "100-continue", "Content-Length": "100000"},
            unsigned=True,
        )
        conn = await raw_connect(self.port)
        conn.transport.write(raw_request("PUT", url, headers))
        await conn.closed
        self.assertNotIn(b"100 Continue", conn.received)
        self.assertEqual(conn.responses()[0][0], 403)

    async def test_expect_continue_accepted(self) -> None:
        body = b"z" * 70000
        url, headers = self.c.sign("PUT", self.c.url("/bkt/e"), {"Expect": "100-continue"}, body)
        headers["Content-Length"] = str(len(body))
        conn = await raw_connect(self.port)
        conn.transport.write(raw_request("PUT", url, headers))
        await conn.wait(lambda b: b"100 Continue" in b)
        conn.transport.write(body)
        await conn.wait(lambda b: b"ETag" in b or b"etag" in b)
        conn.transport.loseConnection()
        self.assertEqual(conn.responses()[0][0], 200)
        r = await self.c.request("GET", "/bkt/e")
        self.assertEqual(r.body, body)

    async def test_pipelined_requests(self) -> None:
        """Several requests on one connection without waiting: answered in order."""
        reqs = b""
        for i in range(3):
            body = f"body {i}".encode()
            url, headers = self.c.sign("PUT", self.c.url(f"/bkt/p{i}"), {}, body)
            headers["Content-Length"] = str(len(body))
            reqs += raw_request("PUT", url, headers, body)
        for i in range(3):
            url, headers = self.c.sign("GET", self.c.url(f"/bkt/p{i}"))
            reqs += raw_request("GET", url, headers)
        conn = await raw_connect(self.port)
        conn.transport.write(reqs)
        await conn.wait(lambda b: len(_responses(b)) == 6)
        conn.transport.loseConnection()
        rs = conn.responses()
        self.assertEqual([r[0] for r in rs], [200] * 6)
        self.assertEqual([r[2] for r in rs[3:]], [b"body 0", b"body 1", b"body 2"])

    async def test_refused_body_is_drained_keeping_the_connection(self) -> None:
        """A refused PUT whose body is already coming: the body is read and dropped, the connection stays usable."""
        url, headers = self.c.sign("PUT", self.c.url("/nobucket/x"), {}, b"q" * 200000)
        headers["Content-Length"] = "200000"
        url2, headers2 = self.c.sign("GET", self.c.url("/bkt", {"list-type": "2"}))
        conn = await raw_connect(self.port)
        conn.transport.write(
            raw_request("PUT", url, headers, b"q" * 200000) + raw_request("GET", url2, headers2)
        )
        await conn.wait(lambda b: len(_responses(b)) == 2)
        conn.transport.loseConnection()
        rs = conn.responses()
        self.assertEqual((rs[0][0], rs[1][0]), (404, 200))
        self.assertIn(b"NoSuchBucket", rs[0][2])

    async def test_pipelined_gets_then_gone_logs_nothing_above_info(self) -> None:
        """
        50 pipelined GETs of a 16 MiB object, left unread, then the client hangs
        up: the gateway logs nothing above info (a client going away is not a
        fault), and the connection's work ends.
        """
        from twisted.logger import LogLevel, globalLogPublisher

        body = bytes(range(256)) * (16 * 4096)
        r = await self.c.request("PUT", "/bkt/big", body=body)
        self.assertEqual(r.status, 200)
        events: list[dict] = []

        def observe(e: dict) -> None:
            if e.get("log_level", LogLevel.debug) > LogLevel.info:
                events.append(e)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        reqs = b""
        for _ in range(50):
            url, headers = self.c.sign("GET", self.c.url("/bkt/big"))
            reqs += raw_request("GET", url, headers)
        conn = await raw_connect(self.port)
        conn.transport.pauseProducing()  # never read: the gateway's writes back up
        conn.transport.write(reqs)
        activity = self.s3.activity
        mine = conn.transport.getHost().port
        server = [p for p in activity.connections if p.transport.getPeer().port == mine]
        await until(lambda: server[0].transport.producerPaused)
        served = self.s3.metrics.count("GetObject")
        conn.transport.abortConnection()
        await conn.closed
        await activity.idle()
        self.assertEqual(
            [(e.get("log_level"), e.get("log_format")) for e in events], [], "logged above info"
        )
        # The requests it pipelined were not served into a closed connection.
        self.assertLessEqual(self.s3.metrics.count("GetObject") - served, 1)
        # The gateway still serves.
        r = await self.c.request("HEAD", "/bkt/big")
        self.assertEqual(r.status, 200)


async def until(pred: Callable[[], object]) -> None:
    """Wait (a reactor turn at a time, never a fixed time) until C{pred()} holds."""
    from twisted.internet import reactor, task

    while not pred():
        await task.deferLater(reactor, 0.001, lambda: None)


def _responses(data: bytes) -> list:
    from tests.s3.harness import RawConnection

    c = RawConnection()
    c.received = data
    return c.responses()


def _resign(
    c: Client, method: str, path: str, headers: dict[str, str]
) -> tuple[str, dict[str, str]]:
    """Sign with x-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER (as boto3 over TLS)."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    class Streaming(S3SigV4Auth):
        def payload(self, request: object) -> str:
            return "STREAMING-UNSIGNED-PAYLOAD-TRAILER"

    req = AWSRequest(method=method, url=c.url(path), headers=dict(headers))
    req.headers["X-Amz-Content-SHA256"] = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    Streaming(Credentials(*c.key), "s3", "us-east-1").add_auth(req)
    return req.url, dict(req.headers.items())


def _cred(uid: int):  # type: ignore[no-untyped-def]
    from claudefs_gateway.fstypes import Credentials

    return Credentials(uid, uid)


class SlowHeaderTests(SynchronousTestCase):
    """Headers dribbled a byte a second are cut off at the header deadline."""

    def test_dribbled_headers(self) -> None:
        from twisted.web.resource import Resource

        from claudefs_gateway.s3.channel import S3Site

        clock = Clock()
        slow: list[object] = []
        site = S3Site(
            Resource(),
            clock,
            header_timeout=20,
            idle_timeout=60,
            max_header_bytes=16384,
            on_header_timeout=slow.append,
        )
        proto = site.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        request = b"GET /bucket/key HTTP/1.1\r\nHost: gw\r\nX-Pad: " + b"p" * 100
        sent = 0
        for byte in request:
            if transport.disconnecting:
                break
            proto.dataReceived(bytes([byte]))
            sent += 1
            clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(sent, 20)  # cut off at the 20 s header deadline
        self.assertEqual(len(slow), 1)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408"))
        self.assertIn(b"x-amz-request-id:", transport.value())
        self.assertIn(b"<Code>RequestTimeout</Code>", transport.value())

    def test_idle_between_requests_is_not_slow_headers(self) -> None:
        from twisted.web.resource import Resource

        from claudefs_gateway.s3.channel import S3Site

        clock = Clock()
        site = S3Site(Resource(), clock, header_timeout=20, idle_timeout=60, max_header_bytes=16384)
        proto = site.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        clock.advance(59)
        self.assertFalse(transport.disconnecting)
        clock.advance(2)
        self.assertTrue(transport.disconnecting)  # the idle timeout, not the header one

    def test_deadline_counts_from_each_requests_first_byte(self) -> None:
        """
        One header timer serves a keep-alive connection's requests: quick
        requests one after another arm no timer each (nor cancel one), and a
        request begun later than the timer is still cut off exactly
        C{header_timeout} after its own first byte, not at the timer's.
        """
        from twisted.web.resource import Resource

        from claudefs_gateway.s3.channel import S3Site

        class Leaf(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> bytes:
                return b"ok"

        clock = Clock()
        armed: list[float] = []
        real = clock.callLater

        def call_later(delay: float, *a: Any, **kw: Any) -> Any:
            if delay != 600:  # twisted.web's idle timeout, armed per request
                armed.append(delay)
            return real(delay, *a, **kw)

        site = S3Site(Leaf(), clock, header_timeout=20, idle_timeout=600, max_header_bytes=16384)
        proto = site.buildProtocol(None)
        proto.callLater = call_later
        transport = StringTransport()
        proto.makeConnection(transport)
        timers = len(armed)
        for _ in range(50):
            proto.dataReceived(b"GET /b/k HTTP/1.1\r\nHost: gw\r\n\r\n")
        self.assertEqual(transport.value().count(b"HTTP/1.1 200"), 50)
        self.assertEqual(armed[timers:], [20])
        clock.advance(15)
        proto.dataReceived(b"GET /b/k HTTP/1.1\r\n")  # begun at 15: due at 35
        clock.advance(5)  # the timer fires at 20, and waits on for this request
        self.assertFalse(transport.disconnecting)
        self.assertEqual(armed[timers:], [20, 15])
        clock.advance(14.5)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.5)
        self.assertTrue(transport.disconnecting)
        self.assertIn(b"HTTP/1.1 408", transport.value())
