# -*- test-case-name: tests.s3.test_channel -*-
"""
twisted.web, taught to stream request bodies.

Stock twisted.web reads a whole request body (into memory or a temporary
file) before the resource sees the request, and answers C{Expect:
100-continue} before anyone looked at the headers. S3 needs the opposite: a
5 GiB PUT must flow into the store as it arrives, and a request that will be
refused (bad signature, no such bucket) must be refused before the client sends
its body. So:

 - L{S3Channel} starts a request as soon as its headers are in, and sends no
   automatic C{100 Continue}; L{S3Request} sends it when the handler first
   reads the body (after authentication and the checks that can refuse it).
 - The body goes to a L{BodyPipe} whose reader applies TCP back-pressure.
 - A response finished before its request body was read (an early refusal)
   does not end the request: the rest of the body is read and dropped (up to
   L{DISCARD_LIMIT}, then the connection is cut), so keep-alive and pipelining
   stay correct; if the client is still waiting for C{100 Continue}, the
   connection closes instead, because no body will come.
 - Headers must arrive within C{header_timeout} seconds of a request's first
   byte: a client dribbling them a byte at a time is cut off.
 - A request's header block that arrives whole in one read is parsed in one
   pass (L{claudefs_gateway.s3.head}); anything else, line by line as
   twisted.web does.
 - A response's head and the first piece of its body (all of a small
   object, or nothing), and a C{100 Continue}, go to the socket in one
   C{sendmsg} when the transport has nothing queued
   (L{claudefs_gateway.core.directsend}), as NFS and SMB replies do: no
   reactor turn and no epoll change per response.
 - The idle timeout is one timer per connection, pushed on by what arrives
   and by each response's end, and re-armed when it fires during a request
   (twisted.web cancels it when a request's body is in and arms a new one
   when its response ends: a C{cancel} and a C{callLater} per request).

Keep-alive and pipelining are HTTPChannel's own.
"""

from __future__ import annotations

import functools
import io
import os
import time
from typing import Any

from twisted.internet.interfaces import IDelayedCall, ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.protocols import basic
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.iweb import INonQueuedRequestFactory
from typing_extensions import override

from claudefs_gateway.core.directsend import DirectSender
from claudefs_gateway.core.log import Logger
from claudefs_gateway.s3 import _web
from claudefs_gateway.s3.body import BodyPipe, ClientGone
from claudefs_gateway.s3.head import Head, parse_head

__all__ = ["S3Channel", "S3Request", "S3Site", "DISCARD_LIMIT"]

DISCARD_LIMIT = 64 * 1024 * 1024

#: Response header names as twisted.web canonicalises them, made once
#: (L{_web.set_plain_header}).
SERVER = _web.canonical_name(b"Server")
DATE = _web.canonical_name(b"Date")


_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@functools.lru_cache(maxsize=4)
def _date_header(seconds: int) -> bytes:
    """The C{Date} header of a response sent in this second (RFC 9110 section 6.6.1)."""
    return http.datetimeToString(seconds)


class S3Request(server.Request):
    """
    A request whose handler runs while its body is still arriving.

    @ivar pipe: the body, for the handler to read (empty when there is none).
    """

    _log = Logger()
    pipe: BodyPipe | None = None
    _done_deferred = False
    _started = False
    _continue_sent = False
    _declared: int | None = 0

    def gotLength(self, length: int | None) -> None:
        # Never buffer the body: it goes to self.pipe.
        self.content = io.BytesIO()
        self._declared = length

    def _set_request_line(self, command: bytes, path: bytes, version: bytes) -> None:
        self.method, self.uri = command, path
        self.clientproto = version
        self.path, _, self.raw_query = path.partition(b"?")
        self.args = {}

    @property
    def gone(self) -> bool:
        """The client went away: nothing more can be sent (see L{_web.request_gone})."""
        chan = getattr(self, "_chan", None)
        return _web.request_gone(self) or bool(chan is not None and chan.gone)

    @property
    def has_body(self) -> bool:
        return self._declared is None or self._declared > 0

    def write(self, data: bytes) -> None:
        """
        As twisted.web's; the first write (the response's head, and C{data}
        if any) is gathered by the channel and sent at once, straight to the
        socket when nothing is queued (L{S3Channel.send_parts}).
        """
        chan: Any = self.channel
        if self.startedWriting or getattr(chan, "_direct", None) is None:
            super().write(data)
            return
        chan._held = []
        try:
            super().write(data)
        finally:
            parts, chan._held = chan._held, None
            if parts:
                chan.send_parts(parts)

    def headers_received(self, command: bytes, path: bytes, version: bytes, channel: Any) -> None:
        """The headers are complete: make the body pipe; body requests start now."""
        self._chan = channel
        self._set_request_line(command, path, version)
        site = getattr(channel, "site", None)
        self.pipe = BodyPipe(
            channel.transport, self.send_continue, budget=getattr(site, "budget", None)
        )

    def start(self) -> None:
        if not self._started:
            self._started = True
            self.process()

    def process(self) -> None:
        """
        As twisted.web's C{Request.process}, for a site whose root is a leaf
        (the S3 front end's one resource): its default headers (the C{Date}
        formatted once a second, not once a request), then the resource's
        render; no path traversal (C{postpath}, which S3 never reads, stays
        empty). Another site takes twisted.web's own.
        """
        channel: Any = self.channel
        site = self.site = channel.site
        root = site.resource
        if not getattr(root, "isLeaf", False):
            super().process()
            return
        headers = self.responseHeaders
        _web.set_plain_header(headers, SERVER, b"ClaudeFS")
        _web.set_plain_header(headers, DATE, _date_header(int(time.time())))
        self.prepath = []
        self.postpath = []
        try:
            self.render(root)
        except BaseException:
            self.processingFailed(Failure())

    def handleContentChunk(self, data: bytes) -> None:
        pipe = self.pipe
        if pipe is None:
            return
        pipe.feed(data)
        if pipe.discarding and pipe.discarded > DISCARD_LIMIT:
            self._log.info("refused request body over {limit} bytes: closing", limit=DISCARD_LIMIT)
            self._chan.transport.abortConnection()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """The body is complete (twisted.web calls this at the end of the request)."""
        if self.pipe is None:  # pragma: no cover - headers_received always ran
            self._set_request_line(command, path, version)
            self.pipe = BodyPipe(None)
        self.pipe.finish()
        if not self._started:
            self.start()
        elif self._done_deferred:
            self._done_deferred = False
            self._chan.requestDone(self)

    def connectionLost(self, reason: Any) -> None:
        if self.pipe is not None:
            self.pipe.fail(ClientGone("connection lost"))
        super().connectionLost(reason)

    # -- 100-continue ----------------------------------------------------------------

    @property
    def expects_continue(self) -> bool:
        v = self.requestHeaders.getRawHeaders(b"expect")
        if not v:
            return False
        return v[0].lower() == b"100-continue" and self.clientproto == b"HTTP/1.1"

    def send_continue(self) -> None:
        """Tell a client waiting on C{Expect: 100-continue} to send the body (once)."""
        if self.expects_continue and not self._continue_sent and not self.startedWriting:
            self._continue_sent = True
            if not _web.request_gone(self):
                # Straight to the socket when nothing is queued, as responses
                # go: through the transport it waited for the reactor's next
                # turn (and cost two epoll changes) while the client waited.
                self._chan.send_parts([_CONTINUE])

    @property
    def waiting_for_continue(self) -> bool:
        """The client holds its body back until we say C{100 Continue}."""
        return (
            self.expects_continue
            and not self._continue_sent
            and self.pipe is not None
            and self.pipe.received == 0
        )


class S3Channel(http.HTTPChannel):
    """HTTPChannel with early request start, header deadline and deferred completion."""

    _log = Logger()
    header_timeout: float = 20.0
    # Who signed the latest request on this connection (set by the API).
    user: str | None = None
    uid: int | None = None
    _header_timer: IDelayedCall | None = None
    #: The site's reactor (set by L{S3Site}): the header deadline's clock.
    clock: Any = None
    #: When the first byte of the request whose headers are awaited came (None: none awaited).
    _header_since: float | None = None
    _awaiting_headers = True
    _start_pending: S3Request | None = None
    #: The connection is going away: the transport stopped its producer (it
    #: does so just before C{connectionLost}), or it was lost.
    gone = False
    #: Take a header block that arrives whole at once (L{claudefs_gateway.s3.head});
    #: False: always line by line, as twisted.web (the tests compare the two).
    whole_heads = True
    #: Send a response's start straight to the socket when nothing is queued
    #: (False: always through the transport; the tests compare the two).
    direct_send = True
    _direct: DirectSender | None = None
    #: What a request's first write gathers (L{S3Request.write}), or None.
    _held: list[bytes] | None = None

    #: This connection's two addresses, asked of the transport once: twisted.web's
    #: C{Request.__init__} asks for both on every request, and the local one
    #: is a C{getsockname} system call each time.
    _peer: Any = None
    _host: Any = None

    def getPeer(self) -> Any:
        peer = self._peer
        if peer is None:
            peer = self._peer = super().getPeer()
        return peer

    def getHost(self) -> Any:
        host = self._host
        if host is None:
            host = self._host = super().getHost()
        return host

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.direct_send:
            # Under the connection-tracking wrapper (core/drain.py) is the TCP
            # transport; under TLS there is none to write to directly.
            t: Any = self.transport
            if isinstance(t, ProtocolWrapper):
                t = t.transport
            self._direct = DirectSender.for_transport(t)

    def send_parts(self, parts: list[bytes]) -> None:
        """Send C{parts}: what the socket takes now directly, the rest through the transport."""
        if self._direct is not None:
            size = 0
            for p in parts:
                size += len(p)
            parts = self._direct.send(parts, size)
            if not parts:
                return
        if self.transport is not None:
            self.transport.writeSequence([p if type(p) is bytes else bytes(p) for p in parts])

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            held.append(data)
            return
        super().write(data)

    def writeSequence(self, iovec: Any) -> None:
        held = self._held
        if held is not None:
            held.extend(iovec)
            return
        super().writeSequence(iovec)

    def stopProducing(self) -> None:
        # The transport calls this as the connection closes, before
        # connectionLost reaches the requests: from here on nothing may start
        # the next pipelined request (see requestDone).
        self.gone = True
        super().stopProducing()

    def describe(self) -> dict[str, Any]:
        """This connection for C{cfs-gateway status} (L{claudefs_gateway.core.clients})."""
        tls = ISSLTransport.providedBy(self.transport)
        return {
            "user": self.user,
            "uid": self.uid,
            "dialect": "HTTPS/1.1" if tls else "HTTP/1.1",
            "in_flight": len(self.requests),
        }

    def dataReceived(self, data: bytes) -> None:
        if (
            self._awaiting_headers
            and self._header_since is None
            and not _web.handling_request(self)
        ):
            # A request's first byte: its headers are due header_timeout
            # seconds from now. One timer serves a keep-alive connection's
            # requests one after the other (re-armed when it fires, for the
            # request then waiting), not a callLater and a cancel each.
            self._header_since = self._seconds()
            if self._header_timer is None:
                self._header_timer = self.callLater(self.header_timeout, self._header_deadline)
        if (
            self.whole_heads
            and self.line_mode
            and not self._buffer
            and not self._busyReceiving
            and not self.paused
            and self.persistent
            and _web.head_pending(self)
        ):
            end = data.find(b"\r\n\r\n")
            # Within both of HTTPChannel's limits (each line's and the
            # whole head's), else line by line, which refuses what is over.
            if 0 < end <= self.MAX_LENGTH and end <= self.totalHeadersSize:
                head = parse_head(data[:end], self.maxHeaders)
                if head is not None:
                    self.resetTimeout()
                    self._take_head(head)
                    rest = data[end + 4 :]
                    transport: Any = self.transport
                    if rest and not (transport is not None and transport.disconnecting):
                        basic.LineReceiver.dataReceived(self, rest)
                    return
        super().dataReceived(data)

    def _take_head(self, head: Head) -> None:
        """
        A whole request head, parsed: do what C{lineReceived} does over its
        lines and the blank line after them (make the request, keep its
        line and headers, choose the body's decoder, then the headers-done
        step), leaving the channel in the same state.
        """
        factory: Any = self.requestFactory
        if INonQueuedRequestFactory.providedBy(factory):
            req = factory(self)
        else:
            req = factory(self, len(self.requests))
        self.requests.append(req)
        _web.set_header_lists(req.requestHeaders, head.headers)
        _web.begin_request(self, head.request_line, head.header_count, head.size, head.length)
        self.allHeadersReceived()
        if self.length == 0:
            self.allContentReceived()
        else:
            self.setRawMode()
            pending, self._start_pending = self._start_pending, None
            if pending is not None:
                pending.start()

    def _seconds(self) -> float:
        """The time on the clock C{callLater} runs on (the site's reactor, or a test's Clock)."""
        clock = self.clock if self.clock is not None else getattr(self.callLater, "__self__", None)
        seconds = getattr(clock, "seconds", None)
        return seconds() if seconds is not None else time.time()

    def _header_deadline(self) -> None:
        """The header timer fired: cut off the request waiting for its headers if it is late."""
        self._header_timer = None
        since = self._header_since
        if since is None:
            return  # every request's headers came in time; the next one arms it again
        left = since + self.header_timeout - self._seconds()
        if left > 0:
            self._header_timer = self.callLater(left, self._header_deadline)
            return
        self._headers_too_slow()

    @override
    def allContentReceived(self) -> None:
        # HTTPChannel turns the idle timeout off here (cancelling its timer)
        # and on again in requestDone (a new callLater): with timeOut None for
        # the call it does neither, and the one timer stays (timeoutConnection).
        timeout, self.timeOut = self.timeOut, None
        try:
            super().allContentReceived()
        finally:
            if self.timeOut is None:
                self.timeOut = timeout

    @override
    def timeoutConnection(self) -> None:
        """
        The idle timer fired: while a request is being served it waits on
        (twisted.web's has no idle timeout then); else the connection has
        been idle C{timeOut} seconds, since its last bytes or its last
        response's end (each pushes the timer on), and is closed as
        twisted.web closes it.
        """
        if _web.handling_request(self):
            self.setTimeout(self.timeOut)
            return
        super().timeoutConnection()

    def lineReceived(self, line: bytes) -> None:
        super().lineReceived(line)
        req, self._start_pending = self._start_pending, None
        if req is not None:
            req.start()

    def allHeadersReceived(self) -> None:
        # In time: the timer, if still pending, finds nothing to cut off.
        self._header_since = None
        self._awaiting_headers = False
        req = self.requests[-1]
        command, path, version = _web.request_line(self)
        self.persistent = self.checkPersistence(req, version)
        req.gotLength(self.length)
        req.headers_received(command, path, version, self)
        if req.has_body:
            # Start once HTTPChannel has switched to reading the body (see lineReceived).
            self._start_pending = req

    def requestDone(self, request: S3Request) -> None:  # type: ignore[override]
        if request.pipe is not None and request.pipe.complete:
            # Answered: whatever of its body was never read leaves the memory budget.
            request.pipe.release()
        if self.gone:
            # The client went away: HTTPChannel would go on to parse and serve
            # the requests it pipelined, writing each response into nothing.
            self.persistent = False
        pipe = request.pipe
        if pipe is not None and not pipe.complete:
            pipe.discard()
            if request.waiting_for_continue:
                # The client will never send this body: close rather than wait for it.
                self.persistent = False
                self.loseConnection()
                return
            request._done_deferred = True
            return
        self._awaiting_headers = True
        super().requestDone(request)
        # The idle time counts from the response's end (twisted.web armed a
        # new timer here; the one timer is pushed on instead).
        self.resetTimeout()

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        """
        As HTTPChannel's, but C{x-amz-*} names go out in lower case (twisted.web
        title-cases names, and clients read C{x-amz-meta-*} names case-sensitively:
        botocore would report metadata C{color} as C{Color}).
        """
        out = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            if name[:6].lower() == b"x-amz-":
                name = name.lower()
            for value in values:
                out.extend((name, b": ", value, b"\r\n"))
        out.append(b"\r\n")
        held = self._held
        if held is not None:
            # One piece for the direct send: some thirty iovecs otherwise,
            # each counted and handed to sendmsg.
            held.append(b"".join(out))
            return
        assert self.transport is not None
        self.transport.writeSequence(out)

    def lineLengthExceeded(self, line: bytes) -> None:
        # A request line or header longer than max_header_bytes: 400 and close
        # (LineReceiver's default would close without a word).
        self._respondToBadRequestAndDisconnect()

    def _respondToBadRequestAndDisconnect(self) -> None:  # noqa: N802 - HTTPChannel's name
        """Unparseable HTTP: S3's error document (with a request id) and close."""
        self._reject(400, b"Bad Request", "InvalidRequest", "The HTTP request could not be parsed")

    def _reject(self, status: int, reason: bytes, code: str, message: str) -> None:
        rid = os.urandom(8).hex().upper()
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message><RequestId>{rid}</RequestId></Error>"
        ).encode()
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nConnection: close\r\nContent-Type: application/xml\r\n"
            b"x-amz-request-id: %s\r\nContent-Length: %d\r\n\r\n%s"
            % (status, reason, rid.encode(), len(body), body)
        )
        self.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.gone = True
        self._cancel_header_timer()
        super().connectionLost(reason)

    def _cancel_header_timer(self) -> None:
        self._header_since = None
        t, self._header_timer = self._header_timer, None
        if t is not None and t.active():
            t.cancel()

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        self._header_since = None
        site = getattr(self, "site", None)
        on_slow = getattr(site, "on_header_timeout", None)
        if on_slow is not None:
            on_slow(self)
        self._reject(
            408, b"Request Timeout", "RequestTimeout", "Your request headers took too long"
        )
        _web.arm_abort(self)


class S3Site(server.Site):
    """
    A Site of S3Channels. Access logging is the S3 front end's own (it never
    writes a query string: presigned URLs carry credentials).
    """

    protocol = S3Channel  # type: ignore[assignment]
    requestFactory = S3Request
    noisy = False
    #: The gateway-wide memory budget request bodies count in, or None.
    budget: Any = None

    def __init__(
        self,
        resource: Any,
        reactor: Any,
        header_timeout: float,
        idle_timeout: float,
        max_header_bytes: int,
        on_header_timeout: Any = None,
    ) -> None:
        super().__init__(resource, timeout=idle_timeout, reactor=reactor)
        self.header_timeout = header_timeout
        self.max_header_bytes = max_header_bytes
        self.on_header_timeout = on_header_timeout

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.header_timeout = self.header_timeout
        channel.clock = self.reactor
        channel.totalHeadersSize = self.max_header_bytes
        channel.MAX_LENGTH = self.max_header_bytes
        return channel

    def log(self, request: Any) -> None:
        pass
