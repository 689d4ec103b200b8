# -*- test-case-name: tests.s3.test_web_internals -*-
"""
The private parts of twisted.web.http the S3 front end relies on, in one place.

twisted.web's C{HTTPChannel} has no public way to start a request before its
body arrives, to read the request line once the headers are in, to schedule
its own forced abort, or to tell whether a C{Request}'s connection is gone;
L{claudefs_gateway.s3.channel} needs all of these (see its docstring). Every
private name it uses is reached through this module only, and
C{tests/s3/test_web_internals.py} checks each one against the installed
Twisted, failing with the name of what changed. C{pyproject.toml} bounds
Twisted's version for the same reason: a new major version is taken only
after that test passes against it.
"""

from __future__ import annotations

from typing import Any

from twisted.web import http, http_headers

__all__ = [
    "PRIVATE_CHANNEL_ATTRIBUTES",
    "PRIVATE_MODULE_NAMES",
    "parse_request_line",
    "canonical_name",
    "head_pending",
    "begin_request",
    "set_header_lists",
    "set_plain_header",
    "set_headers",
    "OVERRIDDEN_PRIVATE_METHODS",
    "request_line",
    "handling_request",
    "arm_abort",
    "request_gone",
]

#: Private attributes of C{twisted.web.http.HTTPChannel} read or written here.
PRIVATE_CHANNEL_ATTRIBUTES = (
    "_command",
    "_path",
    "_version",
    "_handlingRequest",
    "_abortingCall",
    "_HTTPChannel__first_line",
    "_HTTPChannel__header",
    "_receivedHeaderCount",
    "_receivedHeaderSize",
    "_transferDecoder",
    "_finishRequestBody",
)
#: Private names of C{twisted.web.http} and C{twisted.web.http_headers} used here.
PRIVATE_MODULE_NAMES = (
    "http._parseRequestLine",
    "http._IdentityTransferDecoder",
    "http_headers._nameEncoder",
    "http_headers.Headers._rawHeaders",
)
#: Private methods of C{HTTPChannel} that L{claudefs_gateway.s3.channel.S3Channel} overrides.
OVERRIDDEN_PRIVATE_METHODS = ("_respondToBadRequestAndDisconnect",)


def request_line(channel: Any) -> tuple[bytes, bytes, bytes]:
    """The method, target and version of the request whose headers just ended."""
    return channel._command, channel._path, channel._version


def handling_request(channel: Any) -> bool:
    """Whether the channel is serving a request: from the end of its body to its response's end."""
    return bool(channel._handlingRequest)


def arm_abort(channel: Any) -> None:
    """
    Abort the connection after C{channel.abortTimeout} seconds unless it closes
    first (HTTPChannel's own timeout does this; C{connectionLost} cancels it).
    """
    if channel.abortTimeout is not None:
        channel._abortingCall = channel.callLater(channel.abortTimeout, channel.forceAbortClient)


def request_gone(request: Any) -> bool:
    """
    Whether a C{Request}'s connection is gone: nothing more can be written, and
    C{unregisterProducer} or C{finish} would fail (its channel is None) or, if
    the transport is still tearing down, would start the next pipelined request.
    """
    return bool(getattr(request, "_disconnected", False)) or getattr(request, "channel", 1) is None


# Bound once: twisted.web.http is a deprecation proxy, whose every attribute
# read costs a Python-level __getattribute__.
_parse_request_line = http._parseRequestLine
_identity_decoder = http._IdentityTransferDecoder


def parse_request_line(line: bytes) -> tuple[bytes, bytes, bytes]:
    """HTTPChannel's own request-line parser. @raise ValueError: a malformed line."""
    return _parse_request_line(line)


#: twisted.web's header-name canonicaliser (C{content-length} -> C{Content-Length},
#: cached); C{canonical_name(name)} raises ValueError for a name that is not a token.
canonical_name = http_headers._nameEncoder.encode


def head_pending(channel: Any) -> bool:
    """
    Whether the channel waits for a request's first line with nothing of it
    parsed yet (no partial header, no header bytes counted): the state in
    which a whole header block may be taken at once.
    """
    return (
        channel._HTTPChannel__first_line == 1
        and not channel._HTTPChannel__header
        and not channel._receivedHeaderSize
    )


def begin_request(
    channel: Any,
    request_line: tuple[bytes, bytes, bytes],
    count: int,
    size: int,
    length: int | None,
) -> None:
    """
    Put the channel in the state its C{lineReceived} leaves after the last
    header line of a request (before the blank line that ends them): the
    request line kept, C{count} headers of C{size} bytes counted, and the
    body's decoder chosen when a C{Content-Length} was given.
    """
    channel._HTTPChannel__first_line = 0
    channel._command, channel._path, channel._version = request_line
    channel._receivedHeaderCount = count
    channel._receivedHeaderSize = size
    if length is not None:
        channel.length = length
        channel._transferDecoder = _identity_decoder(
            length, channel.requests[-1].handleContentChunk, channel._finishRequestBody
        )


def set_header_lists(headers: Any, raw: dict[bytes, list[bytes]]) -> None:
    """
    Fill a C{Headers} with canonical names and checked values, as
    C{setRawHeaders} would one name at a time (its value sanitising changes
    nothing in a value without CR or LF, which L{claudefs_gateway.s3.head}
    refuses and the server's own values never hold).
    """
    headers._rawHeaders.update(raw)


def set_plain_header(headers: Any, name: bytes, value: bytes) -> None:
    """
    C{setRawHeaders(name, [value])} for a C{name} already canonical (made by
    L{canonical_name}) and a C{value} the server made without CR or LF (a
    request id, a date): what its name encoding and value sanitising would
    leave unchanged, without their cost on every response.
    """
    headers._rawHeaders[name] = [value]


#: Header names as the handlers write them (C{str}) -> as L{canonical_name}
#: makes them; bounded, as user metadata names come from clients.
_NAMES: dict[str, bytes] = {}
_NAMES_MAX = 1024


def set_headers(headers: Any, items: dict[str, str]) -> None:
    """
    C{setRawHeaders(name, [value])} for each of C{items}, as C{Request.setHeader}
    does it (the name canonicalised, CR and LF in a value made spaces) with a
    value encoded as L{claudefs_gateway.s3.call.header_bytes} does, without
    four Python calls a header (setHeader, setRawHeaders, the name's
    encoder, the value's sanitiser): a GET's response sets some ten.

    @raise ValueError: a name that is not a token (as C{setHeader}).
    """
    raw = headers._rawHeaders
    names = _NAMES
    for k, v in items.items():
        name = names.get(k)
        if name is None:
            name = canonical_name(k.encode("latin-1"))
            if len(names) < _NAMES_MAX:
                names[k] = name
        try:
            value = v.encode("latin-1")
        except UnicodeEncodeError:
            value = v.encode("utf-8", "surrogateescape")
        if b"\r" in value or b"\n" in value:
            value = b" ".join(value.splitlines())
        raw[name] = [value]
