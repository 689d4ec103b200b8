"""
The per-request shortcuts of S3's sixth and eighth small-request rounds
(docs/bench.rst "S3: small requests, sixth round" and "eighth round"): each
gives what the general path gives, and each skips the work it was made to
skip.
"""

from __future__ import annotations

import re
from typing import Any
from unittest import mock
from urllib.parse import unquote_to_bytes

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientCreator, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import http_headers
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from claudefs_gateway.core.directsend import DirectSender
from claudefs_gateway.fstypes import Credentials
from claudefs_gateway.s3 import _web, api, channel, tree
from claudefs_gateway.s3 import signing as sg
from claudefs_gateway.s3.call import header_bytes
from claudefs_gateway.s3.channel import S3Site
from claudefs_gateway.s3.keys import Key


def general_uri(raw_path: bytes) -> str:
    """canonical_uri's general path: every segment decoded and re-encoded."""
    return "/".join(sg.uri_encode(unquote_to_bytes(s)) for s in raw_path.split(b"/")) or "/"


_PLAIN = st.binary(max_size=40).map(
    lambda b: bytes(b"ab/~-._Z09%"[x % 11] for x in b)
)  # mostly plain, sometimes with a %, sometimes a malformed one


class CanonicalUriTests(SynchronousTestCase):
    @given(st.one_of(_PLAIN, st.binary(max_size=40)))
    def test_same_as_general_path(self, raw_path: bytes) -> None:
        """Any path: the canonical URI is the segment-by-segment re-encoding's."""
        self.assertEqual(sg.canonical_uri(raw_path), general_uri(raw_path))

    def test_plain_path_not_decoded(self) -> None:
        """A path of unreserved characters and slashes is taken as it is, not decoded."""
        with mock.patch.object(sg, "unquote_to_bytes", side_effect=AssertionError("decoded")):
            self.assertEqual(
                sg.canonical_uri(b"/bench/small/x-0/17~a.b_c"), "/bench/small/x-0/17~a.b_c"
            )
            self.assertRaises(AssertionError, sg.canonical_uri, b"/b/a%2Fb")


class PlainHeaderTests(SynchronousTestCase):
    @given(
        st.sampled_from([b"x-amz-request-id", b"x-amz-id-2", b"Server", b"Date"]),
        st.binary(max_size=60).filter(lambda v: b"\r" not in v and b"\n" not in v),
    )
    def test_same_as_set_raw_headers(self, name: bytes, value: bytes) -> None:
        """A canonical name and a value without CR or LF: the Headers setRawHeaders makes."""
        general, fast = Headers(), Headers()
        general.setRawHeaders(name, [value])
        _web.set_plain_header(fast, _web.canonical_name(name), value)
        self.assertEqual(list(fast.getAllRawHeaders()), list(general.getAllRawHeaders()))

    @given(
        st.dictionaries(
            st.sampled_from(
                ["ETag", "Content-Type", "x-amz-meta-Colour", "Last-Modified", "cache-control"]
            ),
            st.text(max_size=30),
        )
    )
    def test_set_headers_same_as_set_header(self, items: dict[str, str]) -> None:
        """
        Any values (CR and LF in them, characters beyond latin-1): the
        headers C{Request.setHeader} stores for the value bytes
        L{claudefs_gateway.s3.call.header_bytes} makes, which is what the
        handlers set before the tenth round.
        """
        general, fast = Headers(), Headers()
        for k, v in items.items():
            general.setRawHeaders(k.encode("latin-1"), [header_bytes(v)])
        _web.set_headers(fast, items)
        self.assertEqual(list(fast.getAllRawHeaders()), list(general.getAllRawHeaders()))

    def test_set_headers_refuses_what_set_header_refuses(self) -> None:
        """A name that is not a token is refused, as twisted.web refuses it."""
        self.assertRaises(ValueError, _web.set_headers, Headers(), {"bad name": "v"})
        self.assertRaises(ValueError, Headers().setRawHeaders, b"bad name", [b"v"])

    def test_names_are_canonical(self) -> None:
        """The names the channel and the API set are those twisted.web would store."""
        for made, name in [
            (channel.SERVER, b"server"),
            (channel.DATE, b"date"),
            (api._REQUEST_ID, b"x-amz-request-id"),
            (api._ID_2, b"x-amz-id-2"),
            (api._SERVER, b"server"),
        ]:
            h = Headers()
            h.setRawHeaders(name, [b"v"])
            self.assertEqual([n for n, _ in h.getAllRawHeaders()], [made])


class _Leaf(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.addresses: list[tuple[Any, Any]] = []

    def render(self, request: Any) -> bytes:
        self.addresses.append((request.getHost(), request.getClientAddress()))
        return b"ok"


_GET = b"GET /b/k HTTP/1.1\r\nHost: h\r\n\r\n"


class ConnectionTests(SynchronousTestCase):
    def _serve(self, requests: int) -> tuple[_Leaf, StringTransport, bytes]:
        leaf = _Leaf()
        site = S3Site(leaf, Clock(), header_timeout=20, idle_timeout=60, max_header_bytes=1024)
        proto = site.buildProtocol(None)
        t = StringTransport(
            hostAddress=IPv4Address("TCP", "10.0.0.1", 9000),
            peerAddress=IPv4Address("TCP", "10.0.0.2", 40000),
        )
        proto.makeConnection(t)
        for _ in range(requests):
            proto.dataReceived(_GET)
        return leaf, t, t.value()

    def test_addresses_asked_once(self) -> None:
        """Three requests on one connection: the transport is asked its addresses once."""
        transport_host = StringTransport.getHost
        transport_peer = StringTransport.getPeer
        with (
            mock.patch.object(
                StringTransport, "getHost", autospec=True, side_effect=transport_host
            ) as host,
            mock.patch.object(
                StringTransport, "getPeer", autospec=True, side_effect=transport_peer
            ) as peer,
        ):
            leaf, _, out = self._serve(3)
        self.assertEqual(out.count(b"HTTP/1.1 200 OK"), 3)
        self.assertEqual(host.call_count, 1)
        self.assertEqual(peer.call_count, 1)
        self.assertEqual(
            leaf.addresses,
            [(IPv4Address("TCP", "10.0.0.1", 9000), IPv4Address("TCP", "10.0.0.2", 40000))] * 3,
        )

    def test_own_headers_not_sanitised(self) -> None:
        """The channel's Server and Date skip twisted.web's value sanitising; both are sent."""
        calls = []
        real = http_headers._sanitizeLinearWhitespace

        def counting(v: bytes) -> bytes:
            calls.append(v)
            return real(v)

        with mock.patch.object(http_headers, "_sanitizeLinearWhitespace", counting):
            _, _, out = self._serve(1)
        self.assertIn(b"\r\nServer: ClaudeFS\r\n", out)
        self.assertRegex(out, rb"\r\nDate: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT\r\n")
        self.assertNotIn(b"ClaudeFS", calls)


class AutoDirMetaTests(SynchronousTestCase):
    def test_same_as_json(self) -> None:
        """A gateway-made directory's metadata decodes as the JSON parse makes it, without it."""
        general = tree.ObjectMeta.decode(b" " + tree.AUTO_DIR)  # JSON allows the space
        self.assertEqual(general.dir, "auto")
        with mock.patch.object(tree.json, "loads", side_effect=AssertionError("parsed")):
            fast = tree.ObjectMeta.decode(tree.AUTO_DIR)
        self.assertEqual(fast, general)
        self.assertEqual(fast, tree.ObjectMeta(dir="auto"))


class StoreChangeTests(SynchronousTestCase):
    """A small PUT's and a DELETE's vfs calls run under the request's own driver."""

    def test_put_and_delete_without_a_deferred_of_their_own(self) -> None:
        from claudefs_gateway.vfs import _vfs
        from tests.nfs.harness import EmbeddedVFS

        m = EmbeddedVFS("s3: {root: /s3}\n", self.mktemp())
        self.addCleanup(lambda: m.backend.close())
        vfs = m.vfs
        t = tree.Tree(vfs)
        caller = vfs.caller(vfs.exports.s3, "", Credentials(0, 0), "s3")

        def run(coro: Any) -> Any:
            return self.successResultOf(Deferred.fromCoroutine(coro))

        run(t.open())
        bucket = run(t.create_bucket(caller, "bkt"))
        made: list[str] = []
        real = _vfs.eager_deferred

        def recording(coro: Any, *args: Any) -> Any:
            made.append(coro.__qualname__)
            return real(coro, *args)

        key = Key("a/b/obj")
        with mock.patch.object(_vfs, "eager_deferred", recording):
            run(t.put_small(caller, bucket, key, b"x" * 4096, tree.ObjectMeta(etag="e")))
            self.assertEqual(run(t.lookup(caller, bucket, key)).size, 4096)
            run(t.delete(caller, bucket, key))
        # Neither the one store change nor (since the ninth round) the
        # lookups and metadata reads around it.
        self.assertEqual(made, [])
        # The object and the directories made for it are gone.
        self.assertEqual(run(t.read_dir(caller, bucket.ino)), [])


class _Sizes(Resource):
    """Answers C{/<n>} with n bytes (HEAD: the head alone), C{/nocontent} with a 204."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        name = request.path.strip(b"/")
        if name == b"nocontent":
            request.setResponseCode(204)
            return b""
        return b"y" * int(name)


class DirectResponseTests(TestCase):
    """A response's start goes straight to the socket; the bytes are those of the transport path."""

    async def _exchange(self, direct: bool, requests: list[bytes], answers: int) -> bytes:
        site = S3Site(_Sizes(), reactor, header_timeout=20, idle_timeout=60, max_header_bytes=4096)
        site.protocol = type("Channel", (channel.S3Channel,), {"direct_send": direct})
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        got = bytearray()
        done: Deferred[None] = Deferred()

        class Client(Protocol):
            def dataReceived(self, data: bytes) -> None:
                got.extend(data)
                if got.count(b"HTTP/1.1 ") >= answers and got.endswith(b"y" * 70000):
                    self.transport.loseConnection()

            def connectionLost(self, reason: Any = None) -> None:
                done.callback(None)

        client = await ClientCreator(reactor, Client).connectTCP("127.0.0.1", port.getHost().port)
        for r in requests:
            client.transport.write(r)
        await done
        return re.sub(rb"Date: [^\r]*\r\n", b"", bytes(got))

    async def test_same_bytes_as_the_transport_path(self) -> None:
        requests = [
            b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n",
            b"HEAD /4096 HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /nocontent HTTP/1.1\r\nHost: h\r\n\r\n"
            b"GET /4096 HTTP/1.1\r\nHost: h\r\n\r\n",  # pipelined
            b"GET /70000 HTTP/1.1\r\nHost: h\r\n\r\n",
        ]
        sent: list[tuple[int, int]] = []
        pieces: list[int] = []
        real = DirectSender.send

        def counting(self: Any, parts: Any, size: int) -> Any:
            pieces.append(len(parts))
            left = real(self, parts, size)
            sent.append((size, size - sum(len(p) for p in left)))
            return left

        with mock.patch.object(DirectSender, "send", counting):
            fast = await self._exchange(True, requests, 5)
        general = await self._exchange(False, requests, 5)
        self.assertEqual(fast, general)
        self.assertEqual(fast.count(b"HTTP/1.1 200 OK\r\n"), 4)
        self.assertIn(b"HTTP/1.1 204 No Content\r\n", fast)
        # Each response's start went to the socket directly, all of it for the small ones.
        self.assertEqual(len(sent), 5)
        self.assertEqual([size for size, n in sent[:4] if size != n], [])
        self.assertGreater(sent[4][1], 0)
        self.assertGreater(sent[4][0], 70000)
        # The head in one piece (and the body's start in another, if any):
        # not an iovec per name, separator, value and line end.
        self.assertEqual(pieces, [2, 1, 1, 2, 2])


# -- the eighth round (docs/bench.rst "S3: small requests, eighth round") --------------


class _Held(Resource):
    """Answers each request when the test says (L{requests} holds them)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []

    def render(self, request: Any) -> Any:
        self.requests.append(request)
        return NOT_DONE_YET


class IdleTimerTests(SynchronousTestCase):
    """The idle timeout is one timer per connection, with twisted.web's semantics."""

    def _connect(self, resource: Resource) -> tuple[Clock, Any, StringTransport, list[float]]:
        clock = Clock()
        armed: list[float] = []
        real = clock.callLater

        def call_later(delay: float, *a: Any, **kw: Any) -> Any:
            armed.append(delay)
            return real(delay, *a, **kw)

        site = S3Site(resource, clock, header_timeout=20, idle_timeout=600, max_header_bytes=1024)
        proto = site.buildProtocol(None)
        proto.callLater = call_later
        transport = StringTransport()
        proto.makeConnection(transport)
        return clock, proto, transport, armed

    def test_no_timer_per_request(self) -> None:
        """
        Fifty requests on one connection arm no timer and cancel none (the
        connection's idle and header timers serve them all; twisted.web armed
        and cancelled an idle timer per request).
        """
        clock, proto, transport, armed = self._connect(_Leaf())
        proto.dataReceived(_GET)
        before, calls = len(armed), len(clock.getDelayedCalls())
        cancelled: list[object] = []
        with mock.patch.object(
            type(clock.getDelayedCalls()[0]), "cancel", autospec=True, side_effect=cancelled.append
        ):
            for _ in range(50):
                proto.dataReceived(_GET)
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 51)
        self.assertEqual(armed[before:], [])
        self.assertEqual(cancelled, [])
        self.assertEqual(len(clock.getDelayedCalls()), calls)

    def test_idle_counts_from_the_response_end(self) -> None:
        """
        A request served for longer than the idle timeout is not cut off; the
        connection then closes C{idle_timeout} after its response ended.
        """
        held = _Held()
        clock, proto, transport, _ = self._connect(held)
        proto.dataReceived(_GET)
        clock.advance(1000)
        self.assertFalse(transport.disconnecting)
        held.requests[0].write(b"ok")
        held.requests[0].finish()
        self.assertIn(b"HTTP/1.1 200 OK", transport.value())
        clock.advance(599)
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(b"GET /b/k HTTP/1.1\r\n")  # bytes arriving push it on too
        clock.advance(20)  # ...but the headers are late: the header deadline cuts it
        self.assertTrue(transport.disconnecting)
        self.assertIn(b"HTTP/1.1 408", transport.value())

    def test_idle_connection_closed(self) -> None:
        clock, proto, transport, _ = self._connect(_Leaf())
        proto.dataReceived(_GET)
        clock.advance(599)
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertTrue(transport.disconnecting)


class _Echo(Resource):
    """Reads a request's body (which sends C{100 Continue}) and answers its length."""

    isLeaf = True

    def render(self, request: Any) -> Any:
        async def run() -> None:
            n = 0
            while chunk := await request.pipe.read():
                n += len(chunk)
            request.setHeader(b"Content-Length", b"%d" % len(b"%d" % n))
            request.write(b"%d" % n)
            request.finish()

        Deferred.fromCoroutine(run())
        return NOT_DONE_YET


class ContinueTests(TestCase):
    async def test_continue_sent_directly(self) -> None:
        """
        A PUT with C{Expect: 100-continue}: its C{100 Continue} and its
        response both go straight to the socket, nothing through the
        transport's buffer (the C{100 Continue} went through it, sent at
        the reactor's next turn).
        """
        site = S3Site(_Echo(), reactor, header_timeout=20, idle_timeout=60, max_header_bytes=4096)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        got = bytearray()
        waiting: list[tuple[bytes, Deferred[None]]] = []

        class Client(Protocol):
            def dataReceived(self, data: bytes) -> None:
                got.extend(data)
                for w in list(waiting):
                    if w[0] in got:
                        waiting.remove(w)
                        w[1].callback(None)

        def wait(marker: bytes) -> Deferred[None]:
            d: Deferred[None] = Deferred()
            waiting.append((marker, d))
            return d

        buffered: list[bytes] = []
        real_write, real_seq = tcp.Server.write, tcp.Server.writeSequence
        with (
            mock.patch.object(
                tcp.Server,
                "write",
                lambda self, data: (buffered.append(data), real_write(self, data))[1],
            ),
            mock.patch.object(
                tcp.Server,
                "writeSequence",
                lambda self, seq: (buffered.extend(seq), real_seq(self, seq))[1],
            ),
        ):
            client = await ClientCreator(reactor, Client).connectTCP(
                "127.0.0.1", port.getHost().port
            )
            for _ in range(3):
                del got[:]
                cont = wait(b"100 Continue\r\n\r\n")
                client.transport.write(
                    b"PUT /b/k HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
                    b"Content-Length: 4096\r\n\r\n"
                )
                await cont
                done = wait(b"\r\n\r\n4096")
                client.transport.write(b"z" * 4096)
                await done
                self.assertTrue(got.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"))
            client.transport.loseConnection()
        self.assertEqual(buffered, [])
