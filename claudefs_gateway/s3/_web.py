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

__all__ = [
    "PRIVATE_CHANNEL_ATTRIBUTES",
    "OVERRIDDEN_PRIVATE_METHODS",
    "request_line",
    "handling_request",
    "arm_abort",
    "request_gone",
]

#: Private attributes of C{twisted.web.http.HTTPChannel} read or written here.
PRIVATE_CHANNEL_ATTRIBUTES = ("_command", "_path", "_version", "_handlingRequest", "_abortingCall")
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
