"""
``python -m bench.s3_head``: what the S3 channel costs per request, in process.

Not a workload of ``python -m bench``: this feeds a boto3-shaped 4 KiB PUT (its
header block in one read, then its body) to L{claudefs_gateway.s3.channel.S3Site}
over an in-memory transport, with a leaf resource that answers at once, and
prints the microseconds of CPU per request with the whole-head parser
(L{claudefs_gateway.s3.head}) and with twisted.web's line-by-line parsing,
interleaved. What it measures is the HTTP layer alone (head parsing, the
request object, the response's headers), without the network, the store or
the noise of a shared machine's other processes.

    python -m bench.s3_head [--requests 3000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource

from claudefs_gateway.s3.channel import S3Site

#: The head botocore sends for put_object of 4 KiB (UNSIGNED-PAYLOAD, as bench's s3.small).
HEAD = (
    b"PUT /bench/small/x-0/17 HTTP/1.1\r\n"
    b"Host: 127.0.0.1:9000\r\n"
    b"Accept-Encoding: identity\r\n"
    b"User-Agent: Boto3/1.35.0 md/Botocore#1.35.0 ua/2.0 os/linux#6.1 md/arch#x86_64"
    b" lang/python#3.11.7 md/pyimpl#CPython cfg/retry-mode#legacy Botocore/1.35.0\r\n"
    b"Content-MD5: 1B2M2Y8AsgTpgAmY7PhCfg==\r\n"
    b"X-Amz-Date: 20261207T083000Z\r\n"
    b"X-Amz-Content-SHA256: UNSIGNED-PAYLOAD\r\n"
    b"Authorization: AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20261207/us-east-1/s3/"
    b"aws4_request, SignedHeaders=content-md5;host;x-amz-content-sha256;x-amz-date, "
    b"Signature=" + b"a" * 64 + b"\r\n"
    b"amz-sdk-invocation-id: 6b0f8c1e-4d6a-4a0e-9b7e-0e2f3c4d5e6f\r\n"
    b"amz-sdk-request: attempt=1\r\n"
    b"Content-Length: 4096\r\n\r\n"
)
BODY = b"x" * 4096


class _Leaf(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        return b"ok"


def run(whole: bool, requests: int) -> float:
    """Microseconds of CPU per request over C{requests} on one connection."""
    site = S3Site(_Leaf(), Clock(), header_timeout=20, idle_timeout=60, max_header_bytes=16384)
    proto = site.buildProtocol(None)
    proto.whole_heads = whole
    transport = StringTransport()
    proto.makeConnection(transport)
    t0 = time.process_time()
    for _ in range(requests):
        proto.dataReceived(HEAD)
        proto.dataReceived(BODY)
        transport.clear()
    return (time.process_time() - t0) / requests * 1e6


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    results: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for whole in (False, True):
            results[whole].append(run(whole, args.requests))
    for whole, label in ((False, "line by line (twisted.web)"), (True, "whole head")):
        v = results[whole]
        print(
            f"{label:28s} {statistics.median(v):6.1f} µs/request "
            f"(min {min(v):.1f}, max {max(v):.1f}, {args.rounds} rounds)"
        )


if __name__ == "__main__":
    main()
