"""
The private parts of twisted.web.http that claudefs_gateway.s3._web reaches,
checked against the installed Twisted: if Twisted renames or changes one of
them, a test here fails naming it (and the pin in pyproject.toml says which
versions were checked).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import http

from claudefs_gateway.s3 import _web
from claudefs_gateway.s3.channel import S3Channel


class Recorder(http.HTTPChannel):
    """HTTPChannel noting when its hooks run and what the private state says then."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, Any]] = []
        self.bad_requests = 0

    def allHeadersReceived(self) -> None:
        self.seen.append(("headers", (_web.request_line(self), _web.handling_request(self))))
        super().allHeadersReceived()

    def _respondToBadRequestAndDisconnect(self) -> None:  # noqa: N802 - Twisted's name
        self.bad_requests += 1
        super()._respondToBadRequestAndDisconnect()


class Req(http.Request):
    def process(self) -> None:
        self.channel.seen.append(("process", _web.request_gone(self)))


def channel() -> tuple[Recorder, StringTransport]:
    ch = Recorder()
    ch.requestFactory = Req  # type: ignore[assignment]
    t = StringTransport()
    ch.makeConnection(t)
    return ch, t


class PrivateNamesTests(SynchronousTestCase):
    def test_attributes_exist(self) -> None:
        """Every private HTTPChannel attribute _web uses exists on a fresh channel."""
        ch, _ = channel()
        missing = [a for a in _web.PRIVATE_CHANNEL_ATTRIBUTES if not hasattr(ch, a)]
        # _command/_path/_version appear once a request line was read.
        ch.dataReceived(b"GET / HTTP/1.1\r\n")
        missing = [a for a in _web.PRIVATE_CHANNEL_ATTRIBUTES if not hasattr(ch, a)]
        self.assertEqual(missing, [], "twisted.web.http.HTTPChannel changed")

    def test_module_names_exist(self) -> None:
        """The private names of twisted.web.http and http_headers that _web uses exist."""
        from twisted.web import http_headers

        modules = {"http": http, "http_headers": http_headers}
        for dotted in _web.PRIVATE_MODULE_NAMES:
            first, *rest = dotted.split(".")
            obj: Any = modules[first]
            for part in rest:
                if part == "_rawHeaders":
                    obj = obj()  # an instance attribute (a slot)
                self.assertTrue(hasattr(obj, part), dotted)
                obj = getattr(obj, part)

    def test_head_state(self) -> None:
        """head_pending and begin_request read and write the state lineReceived keeps."""
        ch, _ = channel()
        self.assertTrue(_web.head_pending(ch))
        ch.dataReceived(b"PUT /b/k HTTP/1.1\r\n")
        self.assertFalse(_web.head_pending(ch))
        ch.dataReceived(b"Content-Length: 3\r\nHost: h\r\n")
        line_state = (ch._receivedHeaderCount, ch._receivedHeaderSize, ch.length)
        other, _ = channel()
        other.requests.append(Req(other, 0))
        _web.begin_request(other, (b"PUT", b"/b/k", b"HTTP/1.1"), 1, 41, 3)
        # Host is still held back by lineReceived (a continuation could follow).
        self.assertEqual(line_state, (1, 41, 3))
        self.assertEqual(
            (other._receivedHeaderCount, other._receivedHeaderSize, other.length), line_state
        )
        self.assertEqual(_web.request_line(other), _web.request_line(ch))
        self.assertEqual(type(other._transferDecoder), type(ch._transferDecoder))
        self.assertFalse(_web.head_pending(other))

    def test_overridden_methods_exist(self) -> None:
        """The private methods S3Channel overrides are HTTPChannel's own."""
        for name in _web.OVERRIDDEN_PRIVATE_METHODS:
            self.assertTrue(callable(getattr(http.HTTPChannel, name, None)), name)
            self.assertIn(name, vars(S3Channel), name)

    def test_request_line_when_headers_end(self) -> None:
        """allHeadersReceived runs once the headers end, with the request line readable."""
        ch, _ = channel()
        ch.dataReceived(b"PUT /b/k?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n")
        self.assertEqual(ch.seen, [("headers", ((b"PUT", b"/b/k?x=1", b"HTTP/1.1"), False))])
        ch.dataReceived(b"abc")
        self.assertEqual(ch.seen[-1], ("process", False))

    def test_not_handling_between_requests(self) -> None:
        """_handlingRequest: false on a fresh connection, true from a request's end to its response's end."""
        ch, _ = channel()
        self.assertFalse(_web.handling_request(ch))
        ch.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertTrue(_web.handling_request(ch))
        req = ch.requests[0]
        req.finish()
        self.assertFalse(_web.handling_request(ch))

    def test_bad_request_line_calls_the_override(self) -> None:
        """A malformed request line reaches _respondToBadRequestAndDisconnect."""
        ch, t = channel()
        ch.dataReceived(b"NONSENSE\r\n")
        self.assertEqual(ch.bad_requests, 1)
        self.assertTrue(t.disconnecting)

    def test_request_gone(self) -> None:
        """A Request whose connection is lost has no channel and says it is disconnected."""
        ch, _ = channel()
        ch.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        req = ch.requests[0]
        self.assertFalse(_web.request_gone(req))
        ch.connectionLost(Exception("gone"))
        self.assertTrue(_web.request_gone(req))
        self.assertIsNone(req.channel)

    def test_arm_abort_is_cancelled_by_connection_lost(self) -> None:
        """_abortingCall set through arm_abort is HTTPChannel's own: connectionLost cancels it."""
        ch, t = channel()
        clock = Clock()
        ch.callLater = clock.callLater  # type: ignore[method-assign]
        ch.abortTimeout = 15
        _web.arm_abort(ch)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        ch.connectionLost(Exception("gone"))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_not_persistent_request_done_closes(self) -> None:
        """requestDone on a channel that is not persistent closes it instead of reading on."""
        ch, t = channel()
        ch.dataReceived(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n")
        ch.persistent = False
        ch.requests[0].finish()
        self.assertTrue(t.disconnecting)
        self.assertEqual(len([s for s in ch.seen if s[0] == "process"]), 1)

    def test_stop_producing_reaches_the_request_producer(self) -> None:
        """The transport's stopProducing (as a connection closes) reaches a request's producer."""
        ch, _ = channel()
        ch.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")

        class P:
            stopped = False

            def stopProducing(self) -> None:
                self.stopped = True

            def pauseProducing(self) -> None:
                pass

            def resumeProducing(self) -> None:
                pass

        p = P()
        ch.requests[0].registerProducer(p, True)
        ch.stopProducing()
        self.assertTrue(p.stopped)
