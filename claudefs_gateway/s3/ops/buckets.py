# -*- test-case-name: tests.s3.test_semantics -*-
"""
Buckets (create, delete, head, location, versioning) and listing their objects.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

from claudefs_gateway import errors
from claudefs_gateway.s3 import xmlio
from claudefs_gateway.s3.call import (
    SMALL_BODY,
    Call,
    failure,
    iso_date,
)
from claudefs_gateway.s3.errors import S3Error, from_failure
from claudefs_gateway.s3.keys import check_new_bucket_name
from claudefs_gateway.s3.listing import Lister
from claudefs_gateway.s3.ops.base import Operations
from claudefs_gateway.s3.tree import EMPTY_MD5

__all__ = ["BucketOps"]


class BucketOps(Operations):
    """Buckets (create, delete, head, location, versioning) and listing their objects."""

    # -- service and buckets ---------------------------------------------------------------

    async def op_ListBuckets(self, call: Call) -> None:
        tree = self._tree()
        out = []
        for name, a in await tree.buckets(call.caller):
            if a.uid != call.caller.cred.uid and not call.caller.cred.is_root:
                if not await tree.vfs.access(call.caller, a.ino, 0o1):
                    continue
            out.append(("Bucket", [("Name", name), ("CreationDate", iso_date(a.btime_ns))]))
        doc = xmlio.document(
            "ListAllMyBucketsResult",
            [("Owner", self._owner(call.caller.cred.uid)), ("Buckets", out)],
        )
        self._xml(call, doc)

    async def op_CreateBucket(self, call: Call) -> None:
        assert call.bucket is not None
        check_new_bucket_name(call.bucket)
        body = await self._read_small(call, SMALL_BODY)
        loc = xmlio.parse_location(body)
        if (
            loc is not None
            and loc != self.region
            and not (loc == "" and self.region == "us-east-1")
        ):
            raise S3Error(
                "InvalidLocationConstraint",
                f"The specified location-constraint is not valid; this gateway serves {self.region}",
                LocationConstraint=loc,
            )
        try:
            await self._tree().create_bucket(
                call.caller, call.bucket, granted=call.user.s3_create_buckets
            )
        except errors.FSError:
            raise from_failure(failure()) from None
        self._empty(call, 200, {"Location": "/" + call.bucket})

    async def op_HeadBucket(self, call: Call) -> None:
        assert call.bucket is not None
        tree = self._tree()
        b = await tree.bucket(call.caller, call.bucket)
        if not await tree.vfs.access(call.caller, b.ino, 0o1):
            raise S3Error("AccessDenied")
        self._empty(call, 200, {"x-amz-bucket-region": self.region})

    async def op_DeleteBucket(self, call: Call) -> None:
        assert call.bucket is not None
        try:
            await self._tree().delete_bucket(
                call.caller, call.bucket, granted=call.user.s3_create_buckets
            )
        except errors.FSError:
            raise from_failure(failure(), missing="NoSuchBucket") from None
        self._empty(call, 204)

    async def op_GetBucketLocation(self, call: Call) -> None:
        assert call.bucket is not None
        await self._tree().bucket(call.caller, call.bucket)
        region = "" if self.region == "us-east-1" else self.region
        self._xml(call, xmlio.text_document("LocationConstraint", region))

    async def op_GetBucketVersioning(self, call: Call) -> None:
        assert call.bucket is not None
        await self._tree().bucket(call.caller, call.bucket)
        self._xml(call, xmlio.document("VersioningConfiguration", []))

    # -- listing ---------------------------------------------------------------------------------

    async def _list(self, call: Call, v2: bool) -> None:
        assert call.bucket is not None
        tree = self._tree()
        bucket = await tree.bucket(call.caller, call.bucket)
        q = call.query
        prefix = q.get("prefix", "")
        delimiter = q.get("delimiter") or None
        enc = q.get("encoding-type")
        if enc is not None and enc != "url":
            raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request")
        mk = q.get("max-keys", str(self.limits.max_keys))
        if not mk.isdigit():
            raise S3Error(
                "InvalidArgument", "Provided max-keys not an integer or within integer range"
            )
        max_keys = min(int(mk), self.limits.max_keys)
        token = q.get("continuation-token")
        if v2:
            if token is not None:
                try:
                    marker: str | None = base64.urlsafe_b64decode(
                        token.encode("ascii") + b"=="
                    ).decode("utf-8")
                except (ValueError, UnicodeError):
                    raise S3Error(
                        "InvalidArgument", "The continuation token provided is incorrect"
                    ) from None
            else:
                marker = q.get("start-after") or None
        else:
            marker = q.get("marker") or None
        lister = Lister(tree, call.caller, bucket)
        try:
            page = await lister.page(
                prefix.encode("utf-8", "surrogateescape"),
                delimiter.encode("utf-8", "surrogateescape") if delimiter else None,
                marker.encode("utf-8", "surrogateescape") if marker else None,
                max_keys,
            )
        except errors.FSError:
            raise from_failure(failure(), missing="NoSuchBucket") from None

        def k(text: str) -> str:
            return quote(text, safe="/") if enc == "url" else text

        contents = []
        prefixes = []
        fetch_owner = not v2 or q.get("fetch-owner") == "true"
        for it in page.items:
            key = it.key.decode("utf-8", "surrogateescape")
            if it.prefix:
                prefixes.append(("CommonPrefixes", [("Prefix", k(key))]))
                continue
            a = it.attrs
            assert a is not None
            if a.is_dir:
                etag, size = EMPTY_MD5, 0
            else:
                etag, _ = await self._object_etag(call, a)
                size = a.size
            entry: list[tuple[str, Any]] = [
                ("Key", k(key)),
                ("LastModified", iso_date(a.mtime_ns)),
                ("ETag", f'"{etag}"'),
                ("Size", size),
            ]
            if fetch_owner:
                entry.append(("Owner", self._owner(a.uid)))
            entry.append(("StorageClass", "STANDARD"))
            contents.append(("Contents", entry))
        last = page.last.decode("utf-8", "surrogateescape") if page.last is not None else None
        fields: list[tuple[str, Any]] = [("Name", call.bucket), ("Prefix", k(prefix))]
        if v2:
            fields += [("KeyCount", len(page.items))]
            if token is not None:
                fields.append(("ContinuationToken", token))
            if q.get("start-after") is not None:
                fields.append(("StartAfter", k(q["start-after"])))
        else:
            fields.append(("Marker", k(marker or "")))
        fields += [("MaxKeys", max_keys)]
        if delimiter:
            fields.append(("Delimiter", k(delimiter)))
        if enc:
            fields.append(("EncodingType", enc))
        fields.append(("IsTruncated", page.truncated))
        if page.truncated and last is not None:
            if v2:
                fields.append(
                    (
                        "NextContinuationToken",
                        base64.urlsafe_b64encode(last.encode("utf-8", "surrogateescape"))
                        .decode("ascii")
                        .rstrip("="),
                    )
                )
            else:
                fields.append(("NextMarker", k(last)))
        self._xml(call, xmlio.document("ListBucketResult", fields + contents + prefixes))

    async def op_ListObjects(self, call: Call) -> None:
        await self._list(call, v2=False)

    async def op_ListObjectsV2(self, call: Call) -> None:
        await self._list(call, v2=True)
