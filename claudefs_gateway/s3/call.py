# -*- test-case-name: tests.s3.test_semantics -*-
"""
One S3 request in flight (L{Call}), and the small pieces every operation shares:
the configured limits, S3's date formats, ETag matching.
"""

from __future__ import annotations

import email.utils
import functools
import time
from typing import Any

import attrs
from twisted.internet import defer
from twisted.python.failure import Failure

from claudefs_gateway.s3.auth import AuthResult
from claudefs_gateway.vfs import Caller

__all__ = [
    "Call",
    "Limits",
    "http_date",
    "iso_date",
    "parse_iso_date",
    "etag_matches",
    "unquote_etag",
    "header_bytes",
    "failure",
    "first_error",
]

SMALL_BODY = 64 * 1024
#: Object bodies up to this size are held in memory and written in one stable write.
SMALL_WRITE = 256 * 1024
DELETE_BODY = 2 * 1024 * 1024
COMPLETE_BODY = 4 * 1024 * 1024
MAX_USER_META = 2048
KEEPALIVE_SECS = 5.0
MAX_SINGLE_PUT = 5 * 1024**3
MAX_PART_SIZE = 5 * 1024**3
DEFAULT_CONTENT_TYPE = "binary/octet-stream"


@attrs.frozen
class Limits:
    """Sizes and counts the configuration bounds."""

    max_object_size: int = MAX_SINGLE_PUT
    multipart_chunk_min: int = 5 * 1024 * 1024
    max_keys: int = 1000
    versioning: bool = True


def http_date(ns: int) -> str:
    """RFC 1123 date (Last-Modified) of a nanosecond time."""
    return _http_date(ns // 1_000_000_000)


@functools.lru_cache(maxsize=4096)
def _http_date(seconds: int) -> str:
    # Whole seconds (the format has no fraction; gmtime floors as // does):
    # a GET of a recently written object formats a time formatted before.
    return email.utils.formatdate(seconds, usegmt=True)


def iso_date(ns: int) -> str:
    """ISO 8601 with milliseconds and Z, as S3's XML writes times."""
    t = time.gmtime(ns // 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{(ns // 1_000_000) % 1000:03d}Z"


def parse_iso_date(text: str) -> float | None:
    """
    Seconds since the epoch of an ISO 8601 time as S3's XML and headers write
    them (C{2026-01-01T00:00:00Z}, C{...00.123Z}, C{...+02:00}); None if it is
    not one. A time without a zone is UTC.
    """
    import datetime

    t = text.strip()
    if t.endswith(("Z", "z")):
        t = t[:-1] + "+00:00"
    try:
        d = datetime.datetime.fromisoformat(t)
    except ValueError:
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=datetime.UTC)
    try:
        return d.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


def unquote_etag(v: str) -> str:
    """An entity tag without its quotes and weak prefix."""
    v = v.strip()
    if v.startswith("W/"):
        v = v[2:]
    return v.strip('"')


def etag_matches(header: str, etag: str) -> bool:
    """Whether an If-Match/If-None-Match list (or C{*}) matches C{etag} (weak tags compared as strong)."""
    for item in header.split(","):
        item = item.strip()
        if item == "*" or unquote_etag(item) == etag:
            return True
    return False


@attrs.define
class Call:
    """One request in flight: what the handlers need, parsed once."""

    request: Any
    request_id: str
    method: str
    raw_path: bytes
    raw_query: bytes
    query: dict[str, str]
    headers: dict[str, list[str]]
    source: str
    vhost_bucket: str | None = None
    op: str = "Unknown"
    bucket: str | None = None
    key: str | None = None
    auth: AuthResult | None = None
    who: Caller | None = None
    user: Any = None
    #: The version id the response names (C{x-amz-version-id}), once known.
    version_id: str | None = None
    #: The random bytes of C{x-amz-id-2} (drawn with the request id's).
    request_id_2: bytes = b""
    #: The bucket's directory as the caller looked it up while the request
    #: was authorized (L{claudefs_gateway.s3.ops.access.AccessOps._authorize}),
    #: for the handler to use rather than look it up again (issue 18).
    bucket_attrs: Any = None

    @property
    def caller(self) -> Caller:
        """Who the request runs as: set once it is authenticated, before any handler runs."""
        if self.who is None:
            raise AssertionError("a handler ran before the request was authenticated")
        return self.who

    def header(self, name: str) -> str | None:
        v = self.headers.get(name)
        return v[0] if v else None

    @property
    def resource(self) -> str:
        if self.bucket is None:
            return "/"
        return "/" + self.bucket + ("/" + self.key if self.key is not None else "")


def header_bytes(value: str) -> bytes:
    """
    A header value back to bytes: stored values were decoded from latin-1 (HTTP's
    own byte-for-byte reading), so they go out as the same bytes; a value with
    characters beyond latin-1 (a ``response-*`` override from the query) as UTF-8.
    """
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape")


def failure() -> Failure:
    """The exception being handled, as a Failure (for L{from_failure} in an C{except})."""
    return Failure()


def first_error(f: Any) -> Any:
    """gatherResults wraps failures in FirstError: give the caller the real one."""
    if f.check(defer.FirstError):
        return f.value.subFailure
    return f
