# -*- test-case-name: tests.s3.test_conditions -*-
"""
Conditional deletes: what a DeleteObject request's headers, or one object of a
DeleteObjects body, ask of the object before it may be deleted.
"""

from __future__ import annotations

import attrs

from claudefs_gateway.fstypes import Attributes
from claudefs_gateway.s3.call import etag_matches, parse_iso_date
from claudefs_gateway.s3.errors import S3Error
from claudefs_gateway.s3.signing import parse_http_date

__all__ = ["DeleteCondition"]


@attrs.frozen
class DeleteCondition:
    """
    The conditions of a conditional delete: If-Match (an ETag list or C{*}),
    the last modification time (an HTTP date) and the size the object must have.
    """

    etag: str | None = None
    mtime: str | None = None
    size: str | None = None

    @property
    def empty(self) -> bool:
        return self.etag is None and self.mtime is None and self.size is None

    def check(self, etag: str, a: Attributes) -> None:
        """@raise S3Error: PreconditionFailed (or InvalidArgument for a malformed value)."""
        if self.etag is not None and not etag_matches(self.etag, etag):
            raise S3Error("PreconditionFailed", Condition="If-Match")
        if self.mtime is not None:
            t = parse_http_date(self.mtime) or parse_iso_date(self.mtime)
            if t is None:
                raise S3Error(
                    "InvalidArgument",
                    "Invalid x-amz-if-match-last-modified-time",
                    ArgumentName="x-amz-if-match-last-modified-time",
                )
            if a.mtime_ns // 1_000_000_000 != int(t):
                raise S3Error("PreconditionFailed", Condition="x-amz-if-match-last-modified-time")
        if self.size is not None:
            if not self.size.strip().isdigit():
                raise S3Error(
                    "InvalidArgument",
                    "Invalid x-amz-if-match-size",
                    ArgumentName="x-amz-if-match-size",
                )
            if int(self.size) != a.size:
                raise S3Error("PreconditionFailed", Condition="x-amz-if-match-size")
