"""
Test helpers for the S3 front end: a live gateway on loopback, and clients
that run on the reactor (botocore signs, twisted.web or raw TCP sends).

boto3 and the aws cli block: tests drive them in subprocesses
(L{tests.s3.boto_client}); what runs here never blocks the reactor.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote, urlencode

import attrs
from botocore.auth import HmacV1Auth, S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from claudefs_gateway import service
from claudefs_gateway.core import config as cfg

ALICE = ("AKIAALICE0000000000", "alice/secret+key0000000000000000000000000")
BOB = ("AKIABOB00000000000000", "bob/secret+key000000000000000000000000000")
REGION = "us-east-1"

USERS = f"""
users:
  - {{name: alice, uid: 1000, gid: 1000, s3_access_key: {ALICE[0]}, s3_secret_key: "{ALICE[1]}"}}
  - {{name: bob, uid: 1001, gid: 1001, s3_access_key: {BOB[0]}, s3_secret_key: "{BOB[1]}"}}
  - {{name: carol, uid: 1002, gid: 1002}}
"""


# The backend the live S3 tests run on: the default embedded store (memory is faster
# for a quick run: CFS_S3_TEST_BACKEND=memory).
BACKEND = os.environ.get("CFS_S3_TEST_BACKEND", "embedded")


def gateway_yaml(data: str, s3_extra: str = "", extra: str = "", backend: str = BACKEND) -> str:
    return f"""
backend: {{type: {backend}, data_dir: "{data}"}}
admin: {{bind: "127.0.0.1:0"}}
exports: [{{path: /s3/shared, name: shared, root_squash: false}}]
s3:
  bind: "127.0.0.1:0"
  root: /s3
  root_mode: 01777
  region: {REGION}
{s3_extra}
{USERS}
{extra}
"""


async def start_gateway(testcase: Any, s3_extra: str = "", extra: str = "") -> Any:
    """A service tree serving S3 on a free loopback port; stopped at cleanup."""
    data = os.path.abspath(testcase.mktemp())
    config = cfg.loads(gateway_yaml(data, s3_extra, extra))
    root = service.build(config, reactor, protocols=["s3"])
    root.privilegedStartService()
    root.startService()
    testcase.addCleanup(root.stopService)
    s3 = root.getServiceNamed("proto:s3")
    await s3.ready()
    return root


def s3_port(root: Any) -> int:
    return int(root.listeners()["s3"].bound_port)


@attrs.frozen
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def code(self) -> str | None:
        """The S3 error code in the body, if any."""
        import re

        m = re.search(rb"<Code>([^<]*)</Code>", self.body)
        return m.group(1).decode() if m else None


class Client:
    """A signing S3 client on the reactor (botocore's signers, twisted.web's Agent)."""

    def __init__(self, port: int, key: tuple[str, str] = ALICE, host: str = "127.0.0.1") -> None:
        self.port = port
        self.key = key
        self.host = host
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.agent = Agent(reactor, pool=self.pool)

    def close(self) -> defer.Deferred[None]:
        return self.pool.closeCachedConnections()

    def url(self, path: str, query: dict[str, str] | str | None = None) -> str:
        url = f"http://{self.host}:{self.port}{path}"
        if isinstance(query, dict) and query:
            url += "?" + urlencode(query, quote_via=quote, safe="")
        elif isinstance(query, str) and query:
            url += "?" + query
        return url

    def sign(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        scheme: str = "v4",
        unsigned: bool = False,
        expires: int = 300,
    ) -> tuple[str, dict[str, str]]:
        req = AWSRequest(method=method, url=url, headers=dict(headers or {}), data=body)
        creds = Credentials(*self.key)
        if scheme == "v4":
            if unsigned:
                req.headers["X-Amz-Content-SHA256"] = "UNSIGNED-PAYLOAD"
                req.context["payload_signing_enabled"] = False

                class Unsigned(S3SigV4Auth):
                    def payload(self, request: Any) -> str:
                        return "UNSIGNED-PAYLOAD"

                Unsigned(creds, "s3", REGION).add_auth(req)
            else:
                S3SigV4Auth(creds, "s3", REGION).add_auth(req)
        elif scheme == "v4-query":
            S3SigV4QueryAuth(creds, "s3", REGION, expires=expires).add_auth(req)
        elif scheme == "v2":
            HmacV1Auth(creds).add_auth(req)
        elif scheme != "none":
            raise ValueError(scheme)
        return req.url, {k: v for k, v in req.headers.items()}

    async def request(
        self,
        method: str,
        path: str,
        query: dict[str, str] | str | None = None,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        scheme: str = "v4",
        unsigned: bool = False,
    ) -> Response:
        url, signed = self.sign(method, self.url(path, query), headers, body, scheme, unsigned)
        h = Headers({k.encode(): [v.encode()] for k, v in signed.items()})
        producer = FileBodyProducer(_bytes_io(body)) if body or method in ("PUT", "POST") else None
        response = await self.agent.request(method.encode(), url.encode(), h, producer)
        data = await readBody(response) if method != "HEAD" else b""
        if method == "HEAD":
            response.deliverBody(_Discard())
        hdrs = {
            k.decode().lower(): v[-1].decode("utf-8", "surrogateescape")
            for k, v in response.headers.getAllRawHeaders()
        }
        return Response(response.code, hdrs, data)


def _bytes_io(b: bytes) -> Any:
    import io

    return io.BytesIO(b)


class _Discard(protocol.Protocol):
    pass


class RawConnection(protocol.Protocol):
    """Bytes in, bytes out: for requests no polite client would send."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: defer.Deferred[None] = defer.Deferred()
        self._waiters: list[tuple[Any, defer.Deferred[None]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for pred, d in list(self._waiters):
            if pred(self.received):
                self._waiters.remove((pred, d))
                d.callback(None)

    def connectionLost(self, reason: Any = None) -> None:
        for _, d in self._waiters:
            d.callback(None)
        self._waiters = []
        if not self.closed.called:
            self.closed.callback(None)

    def wait(self, pred: Any) -> defer.Deferred[None]:
        if pred(self.received) or self.closed.called:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((pred, d))
        return d

    def responses(self) -> list[tuple[int, dict[str, str], bytes]]:
        """Complete responses received so far (Content-Length or chunked bodies)."""
        out = []
        data = self.received
        while data:
            head, sep, rest = data.partition(b"\r\n\r\n")
            if not sep:
                break
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            if status == 100:
                data = rest
                continue
            if headers.get("transfer-encoding") == "chunked":
                body = b""
                while True:
                    size_line, sep2, rest = rest.partition(b"\r\n")
                    if not sep2:
                        return out
                    size = int(size_line, 16)
                    if size == 0:
                        rest = rest[2:]
                        break
                    body += rest[:size]
                    rest = rest[size + 2 :]
            else:
                n = int(headers.get("content-length", "0"))
                if len(rest) < n:
                    break
                body, rest = rest[:n], rest[n:]
            out.append((status, headers, body))
            data = rest
        return out


async def raw_connect(port: int) -> RawConnection:
    ep = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    conn = RawConnection()
    await ep.connect(protocol.Factory.forProtocol(lambda: conn))
    return conn


def raw_request(
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes = b"",
) -> bytes:
    """An HTTP/1.1 request as bytes (url as signed: http://host:port/path?query)."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    target = u.path + (("?" + u.query) if u.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {u.netloc}"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "host"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
