# -*- test-case-name: tests.s3.test_semantics -*-
"""
Buckets (create, delete, head, location, versioning) and listing their objects.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

from claudefs_gateway import errors
from claudefs_gateway.s3 import acl, cors, lifecycle, xmlio
from claudefs_gateway.s3.bucketconf import BucketConf
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
from claudefs_gateway.s3.owners import canonical_id
from claudefs_gateway.s3.tree import EMPTY_MD5
from claudefs_gateway.s3.versions import GONE

__all__ = ["BucketOps"]


class BucketOps(Operations):
    """Buckets (create, delete, head, location, versioning) and listing their objects."""

    # -- service and buckets ---------------------------------------------------------------

    async def op_ListBuckets(self, call: Call) -> None:
        """
        The buckets the caller owns (root: every bucket), in name order; C{max-buckets}
        (1-10000), C{continuation-token}, C{prefix} and C{bucket-region} page and
        filter as AWS does.
        """
        tree = self._tree()
        q = call.query
        mb = q.get("max-buckets")
        if mb is not None and (not mb.isdigit() or not 1 <= int(mb) <= 10000):
            raise S3Error(
                "InvalidArgument",
                "max-buckets must be an integer between 1 and 10000",
                ArgumentName="max-buckets",
                ArgumentValue=mb,
            )
        token = q.get("continuation-token")
        after: str | None = None
        if token is not None:
            try:
                after = base64.urlsafe_b64decode(token.encode("ascii") + b"==").decode("utf-8")
            except (ValueError, UnicodeError):
                raise S3Error(
                    "InvalidArgument", "The continuation token provided is incorrect"
                ) from None
        prefix = q.get("prefix", "")
        region = q.get("bucket-region")
        out: list[tuple[str, Any]] = []
        truncated = False
        if region is None or region == self.region:
            for name, a in await tree.buckets(call.caller):
                if not name.startswith(prefix) or (after is not None and name <= after):
                    continue
                if a.uid != call.caller.cred.uid and not call.caller.cred.is_root:
                    # As in S3, ListBuckets lists one's own buckets; others'
                    # (public ones, directories shared over NFS or SMB) are
                    # reached by name, as their modes allow.
                    continue
                if mb is not None and len(out) == int(mb):
                    truncated = True
                    break
                out.append(
                    (
                        "Bucket",
                        [
                            ("Name", name),
                            ("CreationDate", iso_date(a.btime_ns)),
                            ("BucketRegion", self.region),
                        ],
                    )
                )
        fields: list[tuple[str, Any]] = [
            ("Owner", self._owner(call.caller.cred.uid)),
            ("Buckets", out),
        ]
        if truncated:
            last = out[-1][1][0][1]
            token_out = base64.urlsafe_b64encode(last.encode("utf-8")).decode("ascii").rstrip("=")
            fields.append(("ContinuationToken", token_out))
        if "prefix" in q:
            fields.append(("Prefix", prefix))
        self._xml(call, xmlio.document("ListAllMyBucketsResult", fields))

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
        lock = (call.header("x-amz-bucket-object-lock-enabled") or "").strip().lower()
        if lock not in ("", "true", "false"):
            raise S3Error(
                "InvalidArgument", "x-amz-bucket-object-lock-enabled must be true or false"
            )
        tree = self._tree()
        ownership = call.header("x-amz-object-ownership")
        if ownership is not None and ownership not in (
            "BucketOwnerEnforced",
            "BucketOwnerPreferred",
            "ObjectWriter",
        ):
            raise S3Error("InvalidArgument", "Invalid x-amz-object-ownership header")
        owner_id = canonical_id(call.caller.cred.uid)
        grants = acl.from_headers(call.headers, owner_id, owner_id)
        if grants is not None:
            self._check_acl_allowed(
                BucketConf(ownership=ownership), grants, call.headers.get("x-amz-acl")
            )
        try:
            b = await tree.create_bucket(
                call.caller,
                call.bucket,
                granted=call.user is not None and call.user.s3_create_buckets,
            )
        except S3Error as e:
            # us-east-1 answers an owner creating its own bucket again with 200,
            # changing nothing (every other region: BucketAlreadyOwnedByYou).
            if e.code != "BucketAlreadyOwnedByYou" or self.region != "us-east-1":
                raise
        except errors.FSError:
            raise from_failure(failure()) from None
        else:
            conf = BucketConf()
            if lock == "true":
                # Object lock needs versions: the bucket is versioned from the start.
                conf.versioning = "Enabled"
                conf.versioned_since = int(self.clock.seconds() * 1_000_000_000)
                conf.object_lock = True
            if ownership is not None:
                conf.ownership = ownership
            if conf != BucketConf():
                await tree.set_bucket_conf(call.caller, b, conf)
            if grants is not None:
                await self._apply_grants(call, b, grants, True)
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
                call.caller,
                call.bucket,
                granted=call.user is not None and call.user.s3_create_buckets,
            )
        except errors.FSError:
            raise from_failure(failure(), missing="NoSuchBucket") from None
        self._empty(call, 204)

    async def op_GetBucketLocation(self, call: Call) -> None:
        assert call.bucket is not None
        await self._tree().bucket(call.caller, call.bucket)
        region = "" if self.region == "us-east-1" else self.region
        self._xml(call, xmlio.text_document("LocationConstraint", region))

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
                try:
                    etag, meta = await self._object_etag(call, a)
                except GONE:
                    continue  # deleted since its directory was listed: not listed
                size = meta.plain_size(a)
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
        # ListObjects (v1) returns its Prefix as given even with encoding-type=url
        # (botocore decodes only V2's); ListObjectsV2 encodes it.
        fields: list[tuple[str, Any]] = [
            ("Name", call.bucket),
            ("Prefix", k(prefix) if v2 else prefix),
        ]
        if v2:
            fields += [("KeyCount", len(contents) + len(prefixes))]
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

    # -- default encryption (s3/sse.py) -----------------------------------------------------

    async def op_GetBucketEncryption(self, call: Call) -> None:
        tree = self._tree()
        b = await self._owned(call)
        conf = await tree.bucket_conf(b)
        if not conf.encryption:
            raise S3Error(
                "ServerSideEncryptionConfigurationNotFoundError",
                "The server side encryption configuration was not found",
                BucketName=call.bucket or "",
            )
        rule = [
            (
                "ApplyServerSideEncryptionByDefault",
                [("SSEAlgorithm", conf.encryption["algorithm"])],
            ),
            ("BucketKeyEnabled", False),
        ]
        self._xml(call, xmlio.document("ServerSideEncryptionConfiguration", [("Rule", rule)]))

    async def op_PutBucketEncryption(self, call: Call) -> None:
        """
        The default encryption of new objects: AES256 (SSE-S3). SSE-KMS is not
        served (501).
        """
        tree = self._tree()
        b = await self._owned(call)
        algorithm = xmlio.parse_encryption(await self._read_small(call, 64 * 1024))
        if algorithm in ("aws:kms", "aws:kms:dsse"):
            raise S3Error(
                "NotImplemented", "SSE-KMS is not implemented by this gateway (see docs/s3.rst)"
            )
        if algorithm != "AES256":
            raise S3Error("MalformedXML", "SSEAlgorithm must be AES256")
        conf = await tree.bucket_conf(b)
        conf.encryption = {"algorithm": "AES256"}
        await tree.set_bucket_conf(call.caller, b, conf)
        self._empty(call, 200)

    async def op_DeleteBucketEncryption(self, call: Call) -> None:
        tree = self._tree()
        b = await self._owned(call)
        conf = await tree.bucket_conf(b)
        conf.encryption = None
        await tree.set_bucket_conf(call.caller, b, conf)
        self._empty(call, 204)

    # -- lifecycle (s3/lifecycle.py) ----------------------------------------------------------

    async def op_GetBucketLifecycleConfiguration(self, call: Call) -> None:
        tree = self._tree()
        b = await self._owned(call)
        conf = await tree.bucket_conf(b)
        if not conf.lifecycle:
            raise S3Error(
                "NoSuchLifecycleConfiguration",
                "The lifecycle configuration does not exist",
                BucketName=call.bucket or "",
            )
        self._xml(
            call, xmlio.document("LifecycleConfiguration", lifecycle.render_rules(conf.lifecycle))
        )

    async def op_PutBucketLifecycleConfiguration(self, call: Call) -> None:
        tree = self._tree()
        b = await self._owned(call)
        rules = xmlio.parse_lifecycle(await self._read_small(call, 256 * 1024))
        conf = await tree.bucket_conf(b)
        conf.lifecycle = rules
        await tree.set_bucket_conf(call.caller, b, conf)
        self._empty(call, 200)

    async def op_DeleteBucketLifecycle(self, call: Call) -> None:
        tree = self._tree()
        b = await self._owned(call)
        conf = await tree.bucket_conf(b)
        conf.lifecycle = None
        await tree.set_bucket_conf(call.caller, b, conf)
        self._empty(call, 204)

    # -- CORS (s3/cors.py) ----------------------------------------------------------------

    async def op_GetBucketCors(self, call: Call) -> None:
        tree = self._tree()
        b = await self._owned(call)
        conf = await tree.bucket_conf(b)
        if not conf.cors:
            raise S3Error(
                "NoSuchCORSConfiguration",
                "The CORS configuration does not exist",
                BucketName=call.bucket or "",
            )
        self._xml(call, xmlio.document("CORSConfiguration", cors.render_rules(conf.cors)))

    async def op_PutBucketCors(self, call: Call) -> None:
        tree = self._tree()
        b = await self._owned(call)
        rules = xmlio.parse_cors(await self._read_small(call, 256 * 1024))
        conf = await tree.bucket_conf(b)
        conf.cors = rules
        await tree.set_bucket_conf(call.caller, b, conf)
        self._empty(call, 200)

    async def op_DeleteBucketCors(self, call: Call) -> None:
        tree = self._tree()
        b = await self._owned(call)
        conf = await tree.bucket_conf(b)
        conf.cors = None
        await tree.set_bucket_conf(call.caller, b, conf)
        self._empty(call, 204)

    async def op_PreflightRequest(self, call: Call) -> None:
        """
        C{OPTIONS}: whether the bucket's CORS rules let a page from C{Origin}
        send the request it describes. Never authenticated (browsers do not
        sign preflights); it reveals only what the rules say.
        """
        origin = call.header("origin")
        if origin is None:
            raise S3Error(
                "InvalidRequest", "Insufficient information. Origin request header needed."
            )
        method = call.header("access-control-request-method")
        if method is None or method not in cors.METHODS:
            raise S3Error("InvalidRequest", "Invalid Access-Control-Request-Method")
        tree = self._tree()
        assert call.bucket is not None
        b = await tree.bucket(tree.root_caller, call.bucket)
        conf = await tree.bucket_conf(b)
        if not conf.cors:
            raise S3Error("AccessForbidden", "CORSResponse: CORS is not enabled for this bucket.")
        wanted = _header_list(call.header("access-control-request-headers"))
        rule = cors.match(conf.cors, origin, method, wanted)
        if rule is None:
            raise S3Error(
                "AccessForbidden",
                "CORSResponse: This CORS request is not allowed. This is usually because the "
                "evalution of Origin, request method / Access-Control-Request-Method or "
                "Access-Control-Request-Headers are not whitelisted by the resource's CORS spec.",
            )
        self._empty(call, 200, cors.response_headers(rule, origin, wanted, True))

    async def _cors_headers(self, call: Call) -> None:
        """An actual request from a page (C{Origin}): the headers its bucket's CORS rules give it."""
        origin = call.header("origin")
        if origin is None or call.bucket is None:
            return
        tree = self._tree()
        try:
            b = await tree.bucket(tree.root_caller, call.bucket)
        except S3Error:
            return
        conf = await tree.bucket_conf(b)
        if not conf.cors:
            return
        method = call.header("access-control-request-method") or call.method
        rule = cors.match(conf.cors, origin, method, [])
        if rule is None:
            return
        for k, v in cors.response_headers(rule, origin, [], False).items():
            call.request.setHeader(k.encode("latin-1"), v.encode("latin-1", "replace"))


def _header_list(value: str | None) -> list[str]:
    return [h.strip().lower() for h in (value or "").split(",") if h.strip()]
