# -*- test-case-name: tests.s3.test_ranges -*-
"""
HTTP byte ranges (RFC 9110 §14) as S3 serves them: one range per request.

S3 answers a single satisfiable range with 206, an unsatisfiable one with 416
C{InvalidRange}, and ignores what it does not serve (several ranges, other
units, syntax it cannot read) by sending the whole object with 200, as RFC 9110
allows a server to ignore C{Range}.
"""

from __future__ import annotations

import re

import attrs

__all__ = ["ByteRange", "parse_range", "Unsatisfiable", "parse_copy_range"]

_SPEC = re.compile(r"^bytes=(\d{0,19})-(\d{0,19})$")


class Unsatisfiable(Exception):
    """The range starts at or past the end of the object (416)."""


@attrs.frozen
class ByteRange:
    """Bytes C{first} to C{last} inclusive of an object of C{size} bytes."""

    first: int
    last: int
    size: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    @property
    def content_range(self) -> str:
        return f"bytes {self.first}-{self.last}/{self.size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """
    The range a C{Range} header asks for, clipped to the object.

    @return: None to send the whole object (no header, or one to ignore).
    @raise Unsatisfiable: a valid range that selects no byte of the object.
    """
    if header is None:
        return None
    m = _SPEC.match(header.strip().replace(" ", ""))
    if m is None:
        return None
    a, b = m.group(1), m.group(2)
    if a == "" and b == "":
        return None
    if a == "":
        # Suffix range: the last N bytes.
        n = int(b)
        if n == 0 or size == 0:
            raise Unsatisfiable()
        return ByteRange(max(size - n, 0), size - 1, size)
    first = int(a)
    last = int(b) if b != "" else size - 1
    if b != "" and last < first:
        return None  # syntactically invalid: ignored
    if first >= size:
        raise Unsatisfiable()
    return ByteRange(first, min(last, size - 1), size)


def parse_copy_range(header: str, size: int) -> ByteRange:
    """
    C{x-amz-copy-source-range: bytes=first-last} of UploadPartCopy: both ends
    required and inside the source.

    @raise Unsatisfiable: outside the source.
    @raise ValueError: malformed.
    """
    m = _SPEC.match(header.strip())
    if m is None or m.group(1) == "" or m.group(2) == "":
        raise ValueError("The x-amz-copy-source-range value must be of the form bytes=first-last")
    first, last = int(m.group(1)), int(m.group(2))
    if last < first:
        raise ValueError("The x-amz-copy-source-range value must be of the form bytes=first-last")
    if last >= size:
        raise Unsatisfiable("Range specified is not valid for source object of size: " + str(size))
    return ByteRange(first, last, size)
