# -*- test-case-name: tests.s3.test_head -*-
"""
A request's whole header block, parsed at once.

twisted.web's C{HTTPChannel} takes a request's head one line at a time: a
C{LineReceiver} split, then C{lineReceived} and C{headerReceived} per line,
each header name canonicalised and each value sanitised by C{Headers} as it
is added. For S3's small requests (a dozen headers, all in the first
segment) that was about 7 % of the reactor's time. L{parse_head} takes the
block between the request line and the blank line in one pass, with
twisted.web's own request-line parser and name canonicaliser, so what it
accepts comes out as twisted.web would have made it.

It accepts only the plain case and answers None for anything else - a
folded (continued) header line, a C{Transfer-Encoding}, a second or
non-numeric C{Content-Length}, a value with NUL, CR or LF, a name that is
not a token, a malformed request line, more than C{max_headers} headers -
and the channel then parses the same bytes line by line, as before, with
every limit and refusal twisted.web has (C{tests/s3/test_head.py} checks
both against twisted.web on generated input).
"""

from __future__ import annotations

from typing import NamedTuple

from claudefs_gateway.s3 import _web

__all__ = ["Head", "parse_head"]

_CONTENT_LENGTH = b"Content-Length"
_TRANSFER_ENCODING = b"Transfer-Encoding"

#: Header lines seen before -> their canonical name and value: a client sends
#: most of its lines (Host, User-Agent, the payload hash...) byte for byte
#: again with every request. Short lines only, and emptied when full, so a
#: client sending endless new lines costs a bounded memory (at most
#: _KNOWN_MAX x _KNOWN_LINE bytes of keys) and only loses the shortcut.
_KNOWN: dict[bytes, tuple[bytes, bytes]] = {}
_KNOWN_MAX = 2048
_KNOWN_LINE = 256


class Head(NamedTuple):
    """A parsed request head, in the form HTTPChannel keeps it."""

    #: method, target, version (as C{_parseRequestLine} returns them)
    request_line: tuple[bytes, bytes, bytes]
    #: canonical name -> values, in arrival order (as C{Headers._rawHeaders})
    headers: dict[bytes, list[bytes]]
    #: the C{Content-Length}, or None without one
    length: int | None
    #: how many header lines
    header_count: int
    #: bytes of the lines without their CRLFs (HTTPChannel's C{_receivedHeaderSize})
    size: int


def parse_head(block: bytes, max_headers: int) -> Head | None:
    """
    Parse C{block}, a request line and its header lines separated by CRLF
    (without the blank line that ends them), or return None when it is not
    the plain case this parser takes (see the module docstring).
    """
    lines = block.split(b"\r\n")
    first = lines[0]
    if not first or len(lines) - 1 > max_headers:
        return None
    try:
        request_line = _web.parse_request_line(first)
    except ValueError:
        return None
    canonical = _web.canonical_name
    headers: dict[bytes, list[bytes]] = {}
    length: int | None = None
    size = len(first)
    known = _KNOWN
    for line in lines[1:]:
        seen = known.get(line)
        if seen is not None:
            name, value = seen
        else:
            name, sep, value = line.partition(b":")
            # An empty line cannot be here (the block ends at the first blank
            # line); one starting with a space or tab continues the last header.
            if not sep or line[0] in b" \t":
                return None
            try:
                name = canonical(name)
            except ValueError:
                return None
            value = value.strip(b" \t")
            if b"\r" in value or b"\n" in value or b"\x00" in value:
                return None
            if len(line) <= _KNOWN_LINE:
                if len(known) >= _KNOWN_MAX:
                    known.clear()
                known[line] = (name, value)
        if name == _CONTENT_LENGTH:
            if length is not None or not value.isdigit() or len(value) > 18:
                return None
            length = int(value)
        elif name == _TRANSFER_ENCODING:
            return None
        values = headers.get(name)
        if values is None:
            headers[name] = [value]
        else:
            values.append(value)
        size += len(line)
    return Head(request_line, headers, length, len(lines) - 1, size)
