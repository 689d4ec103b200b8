"""
claudefs_gateway.s3.head and the channel's whole-head path: what it accepts
comes out as twisted.web's line-by-line parsing makes it, and what it does
not accept is left to that parsing (same requests, same 400s).
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from claudefs_gateway.s3 import head as head_module
from claudefs_gateway.s3.channel import S3Site
from claudefs_gateway.s3.head import parse_head


class Leaf(Resource):
    """Records each request as the resource sees it, answers C{ok}."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[Any, ...]] = []

    def render(self, request: Any) -> bytes:
        self.seen.append(
            (
                request.method,
                request.uri,
                request.clientproto,
                list(request.requestHeaders.getAllRawHeaders()),
            )
        )
        return b"ok"


def serve(data: list[bytes], whole: bool) -> tuple[list[Any], bytes, bool, int]:
    """Feed C{data}, one read each, to a fresh S3 connection; what the resource saw and sent."""
    leaf = Leaf()
    site = S3Site(leaf, Clock(), header_timeout=20, idle_timeout=60, max_header_bytes=1024)
    proto = site.buildProtocol(None)
    proto.whole_heads = whole
    proto.maxHeaders = 8
    lines = 0
    real = proto.lineReceived

    def counting(line: bytes) -> None:
        nonlocal lines
        lines += 1
        real(line)

    proto.lineReceived = counting
    t = StringTransport()
    proto.makeConnection(t)
    for chunk in data:
        if t.disconnecting:
            break
        proto.dataReceived(chunk)
    out = re.sub(rb"(?m)^Date: [^\r]*\r\n", b"", t.value())
    out = re.sub(rb"[0-9A-F]{16}", b"<id>", out)
    return leaf.seen, out, t.disconnecting, lines


_NAMES = [
    b"Host",
    b"host",
    b"Content-Length",
    b"content-length",
    b"Transfer-Encoding",
    b"Expect",
    b"Connection",
    b"X-Amz-Date",
    b"x-amz-meta-Color",
    b"Content-MD5",
    b"etag",
    b"Bad Name",
    b"",
    b"a\x00b",
]
_name = st.one_of(st.sampled_from(_NAMES), st.binary(max_size=6))
_value = st.one_of(
    st.sampled_from([b"", b"0", b"3", b"10", b"-1", b"abc", b"chunked", b"close", b"100-continue"]),
    st.binary(max_size=12),
    st.text(alphabet=" \tabc09:\x00\r\n", max_size=8).map(str.encode),
)
_line = st.one_of(
    st.tuples(_name, st.sampled_from([b":", b": ", b" : ", b":\t"]), _value).map(b"".join),
    st.tuples(st.sampled_from([b" ", b"\t"]), _value).map(b"".join),  # a continuation
    st.binary(max_size=10),
)
_request_line = st.one_of(
    st.sampled_from(
        [
            b"GET /b/k HTTP/1.1",
            b"PUT /b/k?x=1 HTTP/1.1",
            b"DELETE /b/k HTTP/1.0",
            b"HEAD / HTTP/1.1",
            b"GET /b/k",
            b"GET  /b/k HTTP/1.1",
            b"GET /b/k HTTP/2.0",
            b"G@T / HTTP/1.1",
            b"",
        ]
    ),
    st.binary(max_size=20),
)


_TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_valid_line = st.tuples(
    st.one_of(
        st.sampled_from([n for n in _NAMES if n not in (b"Bad Name", b"", b"a\x00b")]),
        st.text(alphabet=_TCHAR, min_size=1, max_size=8).map(str.encode),
    ),
    st.sampled_from([b":", b": ", b":  ", b":\t"]),
    st.one_of(
        st.sampled_from([b"0", b"3", b"close", b"100-continue"]),
        st.binary(max_size=12).map(lambda v: v.translate(None, b"\r\n\x00")),
    ),
).map(b"".join)
_valid_request_line = st.tuples(
    st.sampled_from([b"GET", b"PUT", b"HEAD", b"DELETE", b"POST", b"X-Y"]),
    st.text(alphabet="/abc?=&%20~", min_size=1, max_size=12).map(lambda t: ("/" + t).encode()),
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
).map(b" ".join)


@st.composite
def _requests(draw: Any) -> list[bytes]:
    if draw(st.booleans()):
        # Well formed, mostly: the whole-head path's own ground.
        lines = [draw(_valid_request_line), *draw(st.lists(_valid_line, max_size=10))]
        if draw(st.integers(0, 4)) == 0:
            lines.insert(draw(st.integers(1, len(lines))), draw(_line))
    else:
        lines = [draw(_request_line), *draw(st.lists(_line, max_size=10))]
    head = b"\r\n".join(lines)
    tail = draw(st.sampled_from([b"", b"abc", b"abcGET /next HTTP/1.1\r\nHost: h\r\n\r\n"]))
    data = head + b"\r\n\r\n" + tail
    # Most in one read (the whole-head path), some split at a random point.
    cut = draw(st.one_of(st.just(len(data)), st.integers(0, len(data))))
    return [c for c in (data[:cut], data[cut:]) if c]


class WholeHeadTests(SynchronousTestCase):
    @settings(max_examples=400, deadline=None)
    @given(_requests())
    def test_same_as_line_by_line(self, data: list[bytes]) -> None:
        """
        On any input, the S3 channel with its whole-head parsing serves the
        same requests, with the same headers, and sends the same bytes (400
        included) as twisted.web's line-by-line parsing.
        """
        self.assertEqual(serve(data, True)[:3], serve(data, False)[:3])

    def test_whole_head_takes_no_line(self) -> None:
        """A header block in one read is parsed at once: no lineReceived per line."""
        data = b"PUT /b/k HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nX-Amz-Meta-A: 1\r\n\r\nabc"
        seen, out, closed, lines = serve([data], True)
        self.assertEqual(lines, 0)
        self.assertFalse(closed)
        self.assertEqual(
            seen,
            [
                (
                    b"PUT",
                    b"/b/k",
                    b"HTTP/1.1",
                    [(b"Host", [b"h"]), (b"Content-Length", [b"3"]), (b"X-Amz-Meta-A", [b"1"])],
                )
            ],
        )
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertEqual(serve([data], False)[:3], (seen, out, closed))

    def test_pipelined_heads(self) -> None:
        """Two pipelined GETs in one read: both served, in order, the second after the first."""
        data = b"GET /b/1 HTTP/1.1\r\nHost: h\r\n\r\nGET /b/2 HTTP/1.1\r\nHost: h\r\n\r\n"
        seen, out, closed, _ = serve([data], True)
        self.assertEqual([s[1] for s in seen], [b"/b/1", b"/b/2"])
        self.assertEqual(out.count(b"HTTP/1.1 200 OK"), 2)
        self.assertFalse(closed)

    def test_malformed_gets_400(self) -> None:
        """What the whole-head parser leaves alone still gets S3's 400 and a closed connection."""
        for head in [
            b"GET /b/k HTTP/1.1\r\nHost h",  # no colon
            b"GET /b/k HTTP/1.1\r\nBad Name: 1",  # not a token
            b"GET /b/k HTTP/1.1\r\nX: a\x00b",  # NUL in a value
            b"GET /b/k HTTP/1.1\r\nContent-Length: x",
            b"GET /b/k HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1",
            b"GET /b/k HTTP/1.1\r\nTransfer-Encoding: gzip",
            b"G@T /b/k HTTP/1.1\r\nHost: h",
            b"GET /b/k HTTP/1.1\r\n" + b"\r\n".join(b"X-%d: 1" % i for i in range(9)),
            b"GET /b/k HTTP/1.1\r\nX-Pad: " + b"p" * 1100,
        ]:
            seen, out, closed, _ = serve([head + b"\r\n\r\n"], True)
            self.assertEqual(seen, [], head)
            self.assertTrue(out.startswith(b"HTTP/1.1 400 Bad Request\r\n"), (head, out))
            self.assertIn(b"<Code>InvalidRequest</Code>", out)
            self.assertTrue(closed, head)


class ParseHeadTests(SynchronousTestCase):
    def test_plain(self) -> None:
        head = parse_head(b"PUT /b/k HTTP/1.1\r\nhost: h\r\ncontent-md5:  x \r\nHOST: i", 10)
        assert head is not None
        self.assertEqual(head.request_line, (b"PUT", b"/b/k", b"HTTP/1.1"))
        self.assertEqual(head.headers, {b"Host": [b"h", b"i"], b"Content-MD5": [b"x"]})
        self.assertEqual((head.length, head.header_count), (None, 3))
        self.assertEqual(head.size, len(b"PUT /b/k HTTP/1.1host: hcontent-md5:  x HOST: i"))

    def test_left_to_twisted(self) -> None:
        """The cases parsed line by line instead (folded lines, chunked bodies, limits...)."""
        for block in [
            b"",
            b"GET / HTTP/1.1\r\nX: a\r\n b",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked",
            b"GET / HTTP/1.1\r\nContent-Length: 1" + b"0" * 18,
            b"GET / HTTP/1.1\r\nX: 1\r\nY: 2",  # over max_headers=1
        ]:
            self.assertIsNone(parse_head(block, 1), block)

    def test_content_length(self) -> None:
        head = parse_head(b"PUT / HTTP/1.1\r\nContent-Length: 0042", 5)
        assert head is not None
        self.assertEqual(head.length, 42)

    def test_known_lines(self) -> None:
        """
        Lines kept from earlier requests parse as they did the first time, a
        kept line's Content-Length still counts once, and the kept lines stay
        bounded however many different ones arrive.
        """
        block = b"PUT / HTTP/1.1\r\nhost:  h \r\nContent-Length: 7"
        first = parse_head(block, 5)
        self.assertEqual(parse_head(block, 5), first)
        self.assertIsNone(parse_head(block + b"\r\nContent-Length: 7", 5))
        for i in range(head_module._KNOWN_MAX + 10):
            parse_head(b"GET / HTTP/1.1\r\nX-N: %d" % i, 5)
        self.assertLessEqual(len(head_module._KNOWN), head_module._KNOWN_MAX)
        parse_head(b"GET / HTTP/1.1\r\nX-Long: " + b"x" * 300, 5)
        self.assertNotIn(b"X-Long: " + b"x" * 300, head_module._KNOWN)
