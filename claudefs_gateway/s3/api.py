# -*- test-case-name: tests.s3.test_api -*-
"""
The S3 REST API: routing a request to its operation and each operation.

L{S3Resource} is the twisted.web resource; it hands each request to
L{S3Api.handle}, a coroutine that authenticates the request, names the
operation (C{PutObject}, C{ListObjectsV2}…; also the metrics label), runs it
as the signing user, and answers - with AWS's XML error document on failure
and C{x-amz-request-id} on every response. Operations S3 has and this gateway
does not serve answer C{501 NotImplemented} naming the operation
(L{UNSUPPORTED}; C{docs/s3.rst} lists them).
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote_to_bytes

import attrs
from twisted.internet import defer
from twisted.web import resource, server

from claudefs_gateway import errors
from claudefs_gateway.core.log import Logger
from claudefs_gateway.fstypes import Attributes
from claudefs_gateway.s3 import checksums, xmlio
from claudefs_gateway.s3.auth import Authenticator, AuthResult, RequestView
from claudefs_gateway.s3.body import Body, ClientGone, ObjectProducer, ShortRead
from claudefs_gateway.s3.errors import S3Error, error_fields, from_failure
from claudefs_gateway.s3.keys import Key, check_new_bucket_name
from claudefs_gateway.s3.listing import Lister
from claudefs_gateway.s3.multipart import MAX_PART_NUMBER, Upload, Uploads, part_name
from claudefs_gateway.s3.ranges import ByteRange, Unsatisfiable, parse_copy_range, parse_range
from claudefs_gateway.s3.signing import parse_http_date, parse_query
from claudefs_gateway.s3.tree import EMPTY_MD5, STORED_HEADERS, ObjectMeta, Tree, rle

__all__ = ["S3Api", "S3Resource", "UNSUPPORTED", "route", "Limits"]

SMALL_BODY = 64 * 1024
DELETE_BODY = 2 * 1024 * 1024
COMPLETE_BODY = 4 * 1024 * 1024
MAX_USER_META = 2048
KEEPALIVE_SECS = 5.0
MAX_SINGLE_PUT = 5 * 1024**3
MAX_PART_SIZE = 5 * 1024**3
DEFAULT_CONTENT_TYPE = "binary/octet-stream"

# Sub-resources of operations S3 has and we do not serve: sub-resource → method → operation.
_B = "Bucket"
UNSUPPORTED: dict[str, dict[str, dict[str, str]]] = {
    "bucket": {
        "acl": {"GET": "GetBucketAcl", "PUT": "PutBucketAcl"},
        "policy": {
            "GET": "GetBucketPolicy",
            "PUT": "PutBucketPolicy",
            "DELETE": "DeleteBucketPolicy",
        },
        "policyStatus": {"GET": "GetBucketPolicyStatus"},
        "cors": {"GET": "GetBucketCors", "PUT": "PutBucketCors", "DELETE": "DeleteBucketCors"},
        "lifecycle": {
            "GET": "GetBucketLifecycleConfiguration",
            "PUT": "PutBucketLifecycleConfiguration",
            "DELETE": "DeleteBucketLifecycle",
        },
        "tagging": {
            "GET": "GetBucketTagging",
            "PUT": "PutBucketTagging",
            "DELETE": "DeleteBucketTagging",
        },
        "website": {
            "GET": "GetBucketWebsite",
            "PUT": "PutBucketWebsite",
            "DELETE": "DeleteBucketWebsite",
        },
        "logging": {"GET": "GetBucketLogging", "PUT": "PutBucketLogging"},
        "notification": {
            "GET": "GetBucketNotificationConfiguration",
            "PUT": "PutBucketNotificationConfiguration",
        },
        "replication": {
            "GET": "GetBucketReplication",
            "PUT": "PutBucketReplication",
            "DELETE": "DeleteBucketReplication",
        },
        "encryption": {
            "GET": "GetBucketEncryption",
            "PUT": "PutBucketEncryption",
            "DELETE": "DeleteBucketEncryption",
        },
        "object-lock": {"GET": "GetObjectLockConfiguration", "PUT": "PutObjectLockConfiguration"},
        "ownershipControls": {
            "GET": "GetBucketOwnershipControls",
            "PUT": "PutBucketOwnershipControls",
            "DELETE": "DeleteBucketOwnershipControls",
        },
        "publicAccessBlock": {
            "GET": "GetPublicAccessBlock",
            "PUT": "PutPublicAccessBlock",
            "DELETE": "DeletePublicAccessBlock",
        },
        "accelerate": {
            "GET": "GetBucketAccelerateConfiguration",
            "PUT": "PutBucketAccelerateConfiguration",
        },
        "requestPayment": {"GET": "GetBucketRequestPayment", "PUT": "PutBucketRequestPayment"},
        "analytics": {
            "GET": "GetBucketAnalyticsConfiguration",
            "PUT": "PutBucketAnalyticsConfiguration",
            "DELETE": "DeleteBucketAnalyticsConfiguration",
        },
        "inventory": {
            "GET": "GetBucketInventoryConfiguration",
            "PUT": "PutBucketInventoryConfiguration",
            "DELETE": "DeleteBucketInventoryConfiguration",
        },
        "metrics": {
            "GET": "GetBucketMetricsConfiguration",
            "PUT": "PutBucketMetricsConfiguration",
            "DELETE": "DeleteBucketMetricsConfiguration",
        },
        "intelligent-tiering": {
            "GET": "GetBucketIntelligentTieringConfiguration",
            "PUT": "PutBucketIntelligentTieringConfiguration",
            "DELETE": "DeleteBucketIntelligentTieringConfiguration",
        },
        "versions": {"GET": "ListObjectVersions"},
        "versioning": {"PUT": "PutBucketVersioning"},
        "metadataTable": {"GET": "GetBucketMetadataTableConfiguration"},
    },
    "object": {
        "acl": {"GET": "GetObjectAcl", "PUT": "PutObjectAcl"},
        "tagging": {
            "GET": "GetObjectTagging",
            "PUT": "PutObjectTagging",
            "DELETE": "DeleteObjectTagging",
        },
        "retention": {"GET": "GetObjectRetention", "PUT": "PutObjectRetention"},
        "legal-hold": {"GET": "GetObjectLegalHold", "PUT": "PutObjectLegalHold"},
        "torrent": {"GET": "GetObjectTorrent"},
        "restore": {"POST": "RestoreObject"},
        "select": {"POST": "SelectObjectContent"},
        "attributes": {"GET": "GetObjectAttributes"},
        "renameObject": {"PUT": "RenameObject"},
    },
}
# Requests told apart by a header rather than a sub-resource.
UNSUPPORTED_OTHER = {
    "PostObject": "POST to a bucket without ?delete or ?uploads (browser form uploads)",
    "WriteGetObjectResponse": "S3 Object Lambda",
    "CreateSession": "S3 Express One Zone sessions (?session)",
}


@attrs.frozen
class Route:
    """The operation a request names, and the bucket and key it names it on."""

    op: str
    bucket: str | None
    key: str | None


def route(
    method: str, bucket: str | None, key: str | None, query: dict[str, str], headers: Any
) -> Route:
    """The operation a request asks for (its name is also the metrics label)."""
    m = method

    def r(op: str) -> Route:
        return Route(op, bucket, key)

    if bucket is None:
        if m in ("GET", "HEAD"):
            return r("ListBuckets")
        return r("MethodNotAllowed")
    if key is None:
        for sub, ops in UNSUPPORTED["bucket"].items():
            if sub in query and m in ops:
                return r(ops[m])
        if "session" in query:
            return r("CreateSession")
        if m == "GET":
            if "location" in query:
                return r("GetBucketLocation")
            if "versioning" in query:
                return r("GetBucketVersioning")
            if "uploads" in query:
                return r("ListMultipartUploads")
            if query.get("list-type") == "2":
                return r("ListObjectsV2")
            return r("ListObjects")
        if m == "HEAD":
            return r("HeadBucket")
        if m == "PUT":
            return r("CreateBucket")
        if m == "DELETE":
            return r("DeleteBucket")
        if m == "POST":
            if "delete" in query:
                return r("DeleteObjects")
            return r("PostObject")
        return r("MethodNotAllowed")
    for sub, ops in UNSUPPORTED["object"].items():
        if sub in query and m in ops:
            return r(ops[m])
    copy = headers.get("x-amz-copy-source") is not None
    if m == "PUT":
        if "partNumber" in query and "uploadId" in query:
            return r("UploadPartCopy" if copy else "UploadPart")
        return r("CopyObject" if copy else "PutObject")
    if m == "GET":
        if "uploadId" in query:
            return r("ListParts")
        return r("GetObject")
    if m == "HEAD":
        return r("HeadObject")
    if m == "DELETE":
        if "uploadId" in query:
            return r("AbortMultipartUpload")
        return r("DeleteObject")
    if m == "POST":
        if "uploads" in query:
            return r("CreateMultipartUpload")
        if "uploadId" in query:
            return r("CompleteMultipartUpload")
        return r("PostObject")
    return r("MethodNotAllowed")


_UNSUPPORTED_OPS = {
    op for level in UNSUPPORTED.values() for ops in level.values() for op in ops.values()
} | set(UNSUPPORTED_OTHER)


@attrs.frozen
class Limits:
    """Sizes and counts the configuration bounds."""

    max_object_size: int = MAX_SINGLE_PUT
    multipart_chunk_min: int = 5 * 1024 * 1024
    max_keys: int = 1000


def http_date(ns: int) -> str:
    """RFC 1123 date (Last-Modified) of a nanosecond time."""
    return email.utils.formatdate(ns / 1e9, usegmt=True)


def iso_date(ns: int) -> str:
    """ISO 8601 with milliseconds and Z, as S3's XML writes times."""
    t = time.gmtime(ns // 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{(ns // 1_000_000) % 1000:03d}Z"


def _unquote_etag(v: str) -> str:
    v = v.strip()
    if v.startswith("W/"):
        v = v[2:]
    return v.strip('"')


def etag_matches(header: str, etag: str) -> bool:
    """Whether an If-Match/If-None-Match list (or C{*}) matches C{etag} (weak tags compared as strong)."""
    for item in header.split(","):
        item = item.strip()
        if item == "*" or _unquote_etag(item) == etag:
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
    caller: Any = None
    user: Any = None

    def header(self, name: str) -> str | None:
        v = self.headers.get(name)
        return v[0] if v else None

    @property
    def resource(self) -> str:
        if self.bucket is None:
            return "/"
        return "/" + self.bucket + ("/" + self.key if self.key is not None else "")


def _note_user(request: Any, user: Any) -> None:
    """Tell the connection who signed its latest request (C{cfs-gateway status})."""
    channel = getattr(request, "_chan", None) or getattr(request, "channel", None)
    if channel is not None:
        channel.user, channel.uid = user.name, user.uid


class S3Api:
    """
    Every S3 operation, over a L{Tree} and L{Uploads}.

    @param ready: returns a Deferred firing with (tree, uploads) once the store is open.
    """

    _log = Logger()

    def __init__(
        self,
        ready: Callable[[], defer.Deferred[tuple[Tree, Uploads]]],
        authenticator: Authenticator,
        region: str,
        domain: str | None,
        clock: Any,
        limits: Limits,
        metrics: Any = None,
        activity: Any = None,
    ) -> None:
        self._ready = ready
        self.auth = authenticator
        self.region = region
        self.domain = domain.lower().rstrip(".") if domain else None
        self.clock = clock
        self.limits = limits
        self.metrics = metrics
        self.activity = activity
        self.tree: Tree | None = None
        self.uploads: Uploads | None = None
        self._locks: dict[tuple[str, str], defer.DeferredLock] = {}
        # The request-rate hook, admit(address, uid): returns or raises Throttled
        # (answered SlowDown, 503). Set by the S3 service.
        self.admit: Callable[[str, int], None] | None = None

    # -- the request cycle ---------------------------------------------------------------

    def parse(self, request: Any) -> Call:
        headers: dict[str, list[str]] = {}
        for name, values in request.requestHeaders.getAllRawHeaders():
            headers[name.decode("latin-1").lower()] = [v.decode("latin-1") for v in values]
        raw_path = request.path
        raw_query = getattr(request, "raw_query", b"")
        query: dict[str, str] = {}
        for n, v in parse_query(raw_query):
            query.setdefault(
                n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape")
            )
        peer = request.getClientAddress()
        call = Call(
            request=request,
            request_id=os.urandom(8).hex().upper(),
            method=request.method.decode("latin-1").upper(),
            raw_path=raw_path,
            raw_query=raw_query,
            query=query,
            headers=headers,
            source=getattr(peer, "host", "") or "",
        )
        return call

    def _address(self, call: Call) -> None:
        """Bucket and key from the Host header (virtual-hosted style) or the path."""
        path = unquote_to_bytes(call.raw_path)
        try:
            text = path.decode("utf-8")
        except UnicodeDecodeError:
            raise S3Error("InvalidArgument", "The request path is not valid UTF-8") from None
        host = (call.header("host") or "").lower()
        if host.startswith("["):
            hostname = host.split("]")[0] + "]"
        else:
            hostname = host.rsplit(":", 1)[0] if ":" in host else host
        if self.domain and hostname.endswith("." + self.domain):
            call.vhost_bucket = hostname[: -len(self.domain) - 1]
            call.bucket = call.vhost_bucket
            rest = text[1:] if text.startswith("/") else text
            call.key = rest or None
            return
        if not text.startswith("/"):
            raise S3Error("InvalidArgument", "The request path must start with /")
        rest = text[1:]
        if not rest:
            return
        bucket, sep, key = rest.partition("/")
        call.bucket = bucket
        call.key = key if sep and key else None

    async def handle(self, request: Any) -> None:
        """Serve one request, start to finish (never raises)."""
        start = self.clock.seconds()
        status_code: str | None = None
        call: Call | None = None
        if self.activity is not None:
            self.activity.begin()
        try:
            call = self.parse(request)
            request.setHeader(b"x-amz-request-id", call.request_id.encode())
            request.setHeader(b"x-amz-id-2", base64.b64encode(os.urandom(24)))
            request.setHeader(b"Server", b"ClaudeFS")
            if self.activity is not None and self.activity.draining:
                request.setHeader(b"Connection", b"close")
                ch = getattr(request, "_chan", None) or getattr(request, "channel", None)
                if ch is not None:
                    ch.persistent = False
            try:
                await self._serve(call)
            except S3Error as e:
                status_code = e.code
                self._send_error(call, e)
            except ClientGone:
                status_code = "ClientGone"
                self._log.debug("s3 client went away during {op}", op=call.op)
            except defer.CancelledError:
                status_code = "Cancelled"
            except Exception:
                err = from_failure(_failure())
                status_code = err.code
                self._send_error(call, err)
        except Exception:
            self._log.failure("unexpected failure in the S3 request cycle")
            try:
                if not request.finished and not request._disconnected:
                    request.setResponseCode(500)
                    request.finish()
            except Exception:
                pass
        finally:
            if self.activity is not None:
                self.activity.end()
            if self.metrics is not None and call is not None:
                self.metrics.observe(call.op, self.clock.seconds() - start, status_code)
            if call is not None:
                self._log.debug(
                    "s3 {op} {status} {source} {request_id}",
                    op=call.op,
                    status=status_code or "ok",
                    source=call.source,
                    request_id=call.request_id,
                )

    async def _serve(self, call: Call) -> None:
        self._address(call)
        r = route(call.method, call.bucket, call.key, call.query, call.headers)
        call.op = r.op
        view = RequestView(
            call.method, call.raw_path, call.raw_query, call.headers, call.source, call.vhost_bucket
        )
        tree, uploads = await self._ready()
        self.tree, self.uploads = tree, uploads
        call.auth = self.auth.authenticate(view)
        call.user = call.auth.user
        _note_user(call.request, call.user)
        if self.admit is not None:
            self.admit(call.source, call.user.uid)
        try:
            call.caller = tree.vfs.caller(tree.export, call.source, call.user.credentials, "s3")
        except errors.Access:
            raise S3Error("AccessDenied") from None
        if r.op == "MethodNotAllowed":
            raise S3Error(
                "MethodNotAllowed",
                "The specified method is not allowed against this resource.",
                Method=call.method,
                ResourceType="OBJECT" if call.key else "BUCKET",
            )
        if r.op in _UNSUPPORTED_OPS:
            raise S3Error(
                "NotImplemented",
                f"{r.op} is not implemented by this gateway (see docs/s3.rst)",
                Operation=r.op,
            )
        handler = getattr(self, "op_" + r.op)
        await handler(call)

    # -- responses ---------------------------------------------------------------------------

    def _send_error(self, call: Call, err: S3Error) -> None:
        req = call.request
        if req.finished or req._disconnected:
            return
        if req.startedWriting:
            # Headers went out already (a long Complete or Copy): the error goes in the body.
            req.write(
                xmlio.document(
                    "Error", error_fields(err, call.resource, call.request_id), namespace=False
                )
            )
            req.finish()
            return
        req.setResponseCode(err.status)
        for k, v in err.headers.items():
            req.setHeader(k.encode(), v.encode())
        if err.code in ("NoSuchBucket", "AuthorizationHeaderMalformed") or err.extra.get("Region"):
            req.setHeader(b"x-amz-bucket-region", self.region.encode())
        body = xmlio.document(
            "Error", error_fields(err, call.resource, call.request_id), namespace=False
        )
        req.setHeader(b"Content-Type", b"application/xml")
        req.setHeader(b"Content-Length", str(len(body)).encode())
        if call.method == "HEAD":
            req.setHeader(b"Content-Length", b"0")
            req.finish()
            return
        req.write(body)
        req.finish()

    def _xml(self, call: Call, body: bytes, status: int = 200) -> None:
        req = call.request
        req.setResponseCode(status)
        req.setHeader(b"Content-Type", b"application/xml")
        req.setHeader(b"Content-Length", str(len(body)).encode())
        req.write(body)
        req.finish()

    def _empty(self, call: Call, status: int = 200, headers: dict[str, str] | None = None) -> None:
        req = call.request
        req.setResponseCode(status)
        for k, v in (headers or {}).items():
            req.setHeader(k.encode("latin-1"), v.encode("latin-1"))
        if status != 204 and status != 304:
            req.setHeader(b"Content-Length", b"0")
        req.finish()

    # -- helpers ----------------------------------------------------------------------------

    def _tree(self) -> Tree:
        assert self.tree is not None
        return self.tree

    def _uploads(self) -> Uploads:
        assert self.uploads is not None
        return self.uploads

    def _owner(self, uid: int) -> list[tuple[str, Any]]:
        u = self.auth.users.by_uid(uid)
        return [
            ("ID", hashlib.sha256(f"claudefs-uid:{uid}".encode()).hexdigest()),
            ("DisplayName", u.name if u is not None else str(uid)),
        ]

    async def _read_small(self, call: Call, limit: int) -> bytes:
        body = self._body(call, limit)
        chunks = []
        md5 = hashlib.md5()
        while True:
            data = await body.read()
            if not data:
                break
            md5.update(data)
            chunks.append(data)
        raw = b"".join(chunks)
        self._check_digests(call, body, {"md5": md5}, raw_sha256=hashlib.sha256(raw).hexdigest())
        return raw

    def _body(self, call: Call, max_size: int) -> Body:
        req = call.request
        assert call.auth is not None
        payload = call.auth.payload
        encodings = [
            e.strip().lower()
            for e in (call.header("content-encoding") or "").split(",")
            if e.strip()
        ]
        chunked = payload.startswith("STREAMING-") or "aws-chunked" in encodings
        if chunked:
            decoded = call.header("x-amz-decoded-content-length")
            if decoded is None or not decoded.isdigit():
                raise S3Error(
                    "MissingContentLength",
                    "You must provide the x-amz-decoded-content-length HTTP header with aws-chunked bodies.",
                )
            length: int | None = int(decoded)
        else:
            cl = call.header("content-length")
            if cl is None:
                if req.has_body:
                    raise S3Error(
                        "MissingContentLength", "You must provide the Content-Length HTTP header."
                    )
                length = 0
            else:
                length = int(cl) if cl.isdigit() else 0
        if length is not None and length > max_size:
            raise S3Error("EntityTooLarge", MaxSizeAllowed=str(max_size), ProposedSize=str(length))
        trailer = (call.header("x-amz-trailer") or "").strip().lower() or None
        if trailer is not None and not chunked:
            raise S3Error("InvalidRequest", "x-amz-trailer needs an aws-chunked body")
        return Body(req.pipe, length, chunked, call.auth.chunks, trailer, max_size)

    def _wanted_checksum(self, call: Call, default: str | None = None) -> str | None:
        """The additional checksum this request computes: header, trailer or SDK algorithm."""
        for algo in checksums.ALGORITHMS:
            if call.header(checksums.header(algo)) is not None:
                return algo
        trailer = (call.header("x-amz-trailer") or "").strip().lower()
        if trailer.startswith("x-amz-checksum-"):
            algo = trailer[len("x-amz-checksum-") :]
            if algo not in checksums.ALGORITHMS:
                raise S3Error(
                    "NotImplemented", f"The {algo} checksum is not implemented by this gateway"
                )
            return algo
        sdk = (
            call.header("x-amz-sdk-checksum-algorithm")
            or call.header("x-amz-checksum-algorithm")
            or ""
        ).lower()
        if sdk:
            if sdk not in checksums.ALGORITHMS:
                raise S3Error(
                    "NotImplemented", f"The {sdk} checksum is not implemented by this gateway"
                )
            return sdk
        for name in call.headers:
            if name.startswith("x-amz-checksum-") and name not in (
                "x-amz-checksum-mode",
                "x-amz-checksum-type",
                "x-amz-checksum-algorithm",
            ):
                raise S3Error(
                    "NotImplemented", f"The {name[15:]} checksum is not implemented by this gateway"
                )
        return default

    def _check_digests(
        self, call: Call, body: Body, hashes: dict[str, Any], raw_sha256: str | None = None
    ) -> dict[str, str]:
        """
        Check the body against Content-MD5, x-amz-content-sha256 and x-amz-checksum-*
        (header or trailer); the additional checksums computed, base64.
        """
        assert call.auth is not None
        payload = call.auth.payload
        if len(payload) == 64 and not payload.startswith("STREAMING"):
            got = raw_sha256 if raw_sha256 is not None else hashes["sha256-payload"].hexdigest()
            if got != payload:
                raise S3Error(
                    "XAmzContentSHA256Mismatch",
                    "The provided 'x-amz-content-sha256' header does not match what was computed.",
                    ClientComputedContentSHA256=payload,
                    S3ComputedContentSHA256=got,
                )
        md5_header = call.header("content-md5")
        if md5_header is not None:
            want = checksums.unb64(md5_header)
            if want is None or len(want) != 16:
                raise S3Error("InvalidDigest", "The Content-MD5 you specified was invalid.")
            if want != hashes["md5"].digest():
                raise S3Error(
                    "BadDigest", "The Content-MD5 you specified did not match what we received."
                )
        out = {}
        for algo in checksums.ALGORITHMS:
            h = hashes.get(algo)
            if h is None:
                continue
            value = checksums.b64(h.digest())
            out[algo] = value
            given = call.header(checksums.header(algo)) or body.trailers.get(checksums.header(algo))
            if given is not None and given.strip() != value:
                raise S3Error(
                    "BadDigest",
                    f"The {algo.upper()} you specified did not match the calculated checksum.",
                )
        return out

    def _user_meta(self, call: Call) -> ObjectMeta:
        meta = ObjectMeta()
        meta.content_type = call.header("content-type") or DEFAULT_CONTENT_TYPE
        size = 0
        for name, values in call.headers.items():
            if name.startswith("x-amz-meta-"):
                v = ",".join(values)
                meta.user[name[11:]] = v
                size += len(name) - 11 + len(v.encode("utf-8", "surrogateescape"))
            elif name in STORED_HEADERS:
                v = values[0]
                if name == "content-encoding":
                    v = ",".join(
                        e
                        for e in (x.strip() for x in v.split(","))
                        if e and e.lower() != "aws-chunked"
                    )
                    if not v:
                        continue
                meta.headers[name] = v
        if size > MAX_USER_META:
            raise S3Error(
                "MetadataTooLarge",
                "Your metadata headers exceed the maximum allowed metadata size",
                Size=str(size),
                MaxSizeAllowed=str(MAX_USER_META),
            )
        return meta

    def _lock(self, bucket: str, key: str) -> defer.DeferredLock:
        k = (bucket, key)
        lock = self._locks.get(k)
        if lock is None:
            lock = self._locks[k] = defer.DeferredLock()
        return lock

    def _unlock(self, bucket: str, key: str, lock: defer.DeferredLock) -> None:
        lock.release()
        if not lock.locked and not lock.waiting and self._locks.get((bucket, key)) is lock:
            del self._locks[(bucket, key)]

    async def _write_body(self, call: Call, ino: int, body: Body, hashes: dict[str, Any]) -> int:
        """Stream the request body into file C{ino}, hashing as it goes; the size."""
        tree = self._tree()
        vfs = tree.vfs
        offset = 0
        while True:
            data = await body.read()
            if not data:
                break
            # Hash and write together: the CPU pool hashes while the store writes.
            work = [defer.ensureDeferred(tree.hash(h, data)) for h in hashes.values()]
            work.append(vfs.write(call.caller, ino, offset, data, False))
            await defer.gatherResults(work, consumeErrors=True).addErrback(_first_error)
            offset += len(data)
        await vfs.commit(call.caller, ino)
        return offset

    async def _receive(
        self, call: Call, ino: int, max_size: int, algo: str | None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Receive and verify the body into C{ino}: (size, hashes, checksums)."""
        body = self._body(call, max_size)
        assert call.auth is not None
        hashes: dict[str, Any] = {"md5": hashlib.md5()}
        payload = call.auth.payload
        if len(payload) == 64 and not payload.startswith("STREAMING"):
            hashes["sha256-payload"] = hashlib.sha256()
        if algo is not None:
            hashes[algo] = checksums.new(algo)
        size = await self._write_body(call, ino, body, hashes)
        sums = self._check_digests(call, body, hashes)
        return size, hashes, sums

    async def _object_etag(self, call: Call, a: Attributes) -> tuple[str, ObjectMeta]:
        tree = self._tree()
        meta = await tree.meta(call.caller, a)
        return await tree.etag(call.caller, a, meta), meta

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
            raise from_failure(_failure()) from None
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
            raise from_failure(_failure(), missing="NoSuchBucket") from None
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
            raise from_failure(_failure(), missing="NoSuchBucket") from None

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

    # -- objects ------------------------------------------------------------------------------

    def _key(self, call: Call) -> Key:
        assert call.key is not None
        return Key(call.key)

    def _versionless(self, call: Call) -> None:
        v = call.query.get("versionId")
        if v is not None and v != "null":
            raise S3Error(
                "InvalidArgument",
                "Invalid version id specified",
                ArgumentName="versionId",
                ArgumentValue=v,
            )

    async def op_PutObject(self, call: Call) -> None:
        assert call.bucket is not None
        tree = self._tree()
        key = self._key(call)
        bucket = await tree.bucket(call.caller, call.bucket)
        meta = self._user_meta(call)
        algo = self._wanted_checksum(call)
        if key.marker:
            await self._put_marker(call, bucket, key, meta)
            return
        await tree.check_writable(call.caller, bucket, key)
        tmp_dir, tmp_name, tmp = await tree.temp_file(call.caller)
        try:
            size, hashes, sums = await self._receive(
                call, tmp.ino, self.limits.max_object_size, algo
            )
            meta.etag = hashes["md5"].hexdigest()
            if algo is not None:
                meta.checksums = {algo: sums[algo]}
                meta.checksum_type = "FULL_OBJECT"
            a = await self._commit(call, bucket, key, tmp_dir, tmp_name, meta)
        except BaseException:
            await tree.discard_temp(call.caller, tmp_dir, tmp_name)
            raise
        headers = {"ETag": f'"{meta.etag}"'}
        for algo_name, v in meta.checksums.items():
            headers[checksums.header(algo_name)] = v
        del a
        self._empty(call, 200, headers)

    async def _put_marker(self, call: Call, bucket: Attributes, key: Key, meta: ObjectMeta) -> None:
        body = await self._read_small(call, SMALL_BODY)
        if body:
            raise S3Error(
                "InvalidArgument",
                "Keys ending in '/' are directories in this gateway and cannot hold data",
            )
        meta.etag = EMPTY_MD5
        await self._tree().put_marker(call.caller, bucket, key, meta)
        self._empty(call, 200, {"ETag": f'"{EMPTY_MD5}"'})

    async def _commit(
        self,
        call: Call,
        bucket: Attributes,
        key: Key,
        tmp_dir: int,
        tmp_name: bytes,
        meta: ObjectMeta,
    ) -> Attributes:
        """Rename a finished object into place, honouring If-Match/If-None-Match on writes."""
        assert call.bucket is not None
        im, inm = call.header("if-match"), call.header("if-none-match")
        precondition = None
        if im is not None or inm is not None:

            async def precondition(current: Attributes | None) -> None:
                if inm is not None and current is not None and inm.strip() == "*":
                    raise S3Error("PreconditionFailed", Condition="If-None-Match")
                if im is not None:
                    if current is None or not current.is_reg:
                        raise S3Error("NoSuchKey")
                    etag, _ = await self._object_etag(call, current)
                    if not etag_matches(im, etag):
                        raise S3Error("PreconditionFailed", Condition="If-Match")

            lock = self._lock(call.bucket, key.text)
            await lock.acquire()
            try:
                return await self._tree().commit(
                    call.caller, bucket, key, tmp_dir, tmp_name, meta, precondition
                )
            finally:
                self._unlock(call.bucket, key.text, lock)
        return await self._tree().commit(
            call.caller, bucket, key, tmp_dir, tmp_name, meta, precondition
        )

    def _conditions(self, call: Call, etag: str, mtime_ns: int, prefix: str = "") -> int | None:
        """RFC 9110 §13.2.2 order; 304 for GET/HEAD, or raise 412."""
        im = call.header(prefix + "if-match")
        ius = call.header(prefix + "if-unmodified-since")
        inm = call.header(prefix + "if-none-match")
        ims = call.header(prefix + "if-modified-since")
        secs = mtime_ns // 1_000_000_000
        if im is not None:
            if not etag_matches(im, etag):
                raise S3Error("PreconditionFailed", Condition=prefix + "If-Match")
        elif ius is not None:
            t = parse_http_date(ius)
            if t is not None and secs > t:
                raise S3Error("PreconditionFailed", Condition=prefix + "If-Unmodified-Since")
        if inm is not None:
            if etag_matches(inm, etag):
                if prefix:
                    raise S3Error("PreconditionFailed", Condition=prefix + "If-None-Match")
                return 304
        elif ims is not None:
            t = parse_http_date(ims)
            if t is not None and secs <= t:
                if prefix:
                    raise S3Error("PreconditionFailed", Condition=prefix + "If-Modified-Since")
                return 304
        return None

    def _object_headers(
        self, call: Call, a: Attributes, etag: str, meta: ObjectMeta
    ) -> dict[str, str]:
        h = {
            "ETag": f'"{etag}"',
            "Last-Modified": http_date(a.mtime_ns),
            "Accept-Ranges": "bytes",
            "Content-Type": meta.content_type or DEFAULT_CONTENT_TYPE,
        }
        for name, v in meta.headers.items():
            h[name.title()] = v
        for name, v in meta.user.items():
            h["x-amz-meta-" + name] = v
        for qname, hname in (
            ("response-content-type", "Content-Type"),
            ("response-content-language", "Content-Language"),
            ("response-expires", "Expires"),
            ("response-cache-control", "Cache-Control"),
            ("response-content-disposition", "Content-Disposition"),
            ("response-content-encoding", "Content-Encoding"),
        ):
            override = call.query.get(qname)
            if override is not None:
                h[hname] = override
        return h

    async def _get(self, call: Call, head: bool) -> None:
        assert call.bucket is not None
        tree = self._tree()
        self._versionless(call)
        key = self._key(call)
        bucket = await tree.bucket(call.caller, call.bucket)
        a = await tree.lookup(call.caller, bucket, key)
        etag, meta = await self._object_etag(call, a)
        size = a.size if a.is_reg else 0
        headers = self._object_headers(call, a, etag, meta)
        cond = self._conditions(call, etag, a.mtime_ns)
        if cond == 304:
            self._empty(
                call, 304, {"ETag": headers["ETag"], "Last-Modified": headers["Last-Modified"]}
            )
            return
        rng: ByteRange | None = None
        part = call.query.get("partNumber")
        if part is not None:
            if not part.isdigit() or not 1 <= int(part) <= MAX_PART_NUMBER:
                raise S3Error(
                    "InvalidArgument",
                    "Part number must be an integer between 1 and 10000, inclusive",
                    ArgumentName="partNumber",
                    ArgumentValue=part,
                )
            n = int(part)
            count = meta.part_count()
            if count is None:
                if n != 1:
                    raise S3Error(
                        "InvalidRange",
                        "The requested partnumber is not satisfiable",
                        headers={"Content-Range": f"bytes */{size}"},
                    )
            else:
                pr = meta.part_range(n)
                if pr is None:
                    raise S3Error(
                        "InvalidRange",
                        "The requested partnumber is not satisfiable",
                        headers={"Content-Range": f"bytes */{size}"},
                    )
                if size:
                    rng = ByteRange(pr[0], pr[0] + pr[1] - 1, size)
                headers["x-amz-mp-parts-count"] = str(count)
        else:
            try:
                rng = parse_range(call.header("range"), size)
            except Unsatisfiable:
                raise S3Error(
                    "InvalidRange",
                    "The requested range is not satisfiable",
                    headers={"Content-Range": f"bytes */{size}"},
                    ActualObjectSize=str(size),
                    RangeRequested=call.header("range") or "",
                ) from None
        if rng is None and (call.header("x-amz-checksum-mode") or "").upper() == "ENABLED":
            for algo, v in meta.checksums.items():
                headers[checksums.header(algo)] = v
            if meta.checksum_type:
                headers["x-amz-checksum-type"] = meta.checksum_type
        req = call.request
        first, length = (rng.first, rng.length) if rng is not None else (0, size)
        if rng is not None:
            req.setResponseCode(206)
            headers["Content-Range"] = rng.content_range
        for k, v in headers.items():
            req.setHeader(k.encode("latin-1"), _header_bytes(v))
        req.setHeader(b"Content-Length", str(length).encode())
        if head or length == 0:
            req.finish()
            return
        producer = ObjectProducer(
            lambda off, n: tree.vfs.read(call.caller, a.ino, off, n).addCallback(lambda r: r.data),
            req,
            first,
            length,
        )
        finished = req.notifyFinish()
        finished.addErrback(lambda f: producer.stopProducing())
        try:
            await producer.start()
        except defer.CancelledError:
            raise
        except Exception as e:
            # Headers and part of the body are out: the only honest signal left is
            # to cut the connection (the client sees a short body, never wrong bytes).
            if isinstance(e, (ShortRead, errors.NotFound, errors.Stale)):
                self._log.warn("object changed while it was being sent; connection cut")
            else:
                self._log.failure("while sending an object; connection cut")
            transport = getattr(req, "transport", None)
            if transport is not None:
                transport.abortConnection()
            raise ClientGone("object read failed") from None
        if not req._disconnected and not req.finished:
            req.finish()

    async def op_GetObject(self, call: Call) -> None:
        await self._get(call, head=False)

    async def op_HeadObject(self, call: Call) -> None:
        await self._get(call, head=True)

    async def op_DeleteObject(self, call: Call) -> None:
        assert call.bucket is not None
        self._versionless(call)
        tree = self._tree()
        bucket = await tree.bucket(call.caller, call.bucket)
        key = self._key(call)
        try:
            await tree.delete(call.caller, bucket, key)
        except errors.FSError:
            raise from_failure(_failure()) from None
        self._empty(call, 204)

    async def op_DeleteObjects(self, call: Call) -> None:
        assert call.bucket is not None
        tree = self._tree()
        bucket = await tree.bucket(call.caller, call.bucket)
        if call.header("content-md5") is None and not any(
            call.header(checksums.header(a))
            or (call.header("x-amz-trailer") or "").lower() == checksums.header(a)
            for a in checksums.ALGORITHMS
        ):
            raise S3Error("InvalidRequest", "Missing required header for this request: Content-MD5")
        algo = self._wanted_checksum(call)
        body = self._body(call, DELETE_BODY)
        hashes: dict[str, Any] = {"md5": hashlib.md5()}
        if algo is not None:
            hashes[algo] = checksums.new(algo)
        chunks = []
        while True:
            data = await body.read()
            if not data:
                break
            for h in hashes.values():
                h.update(data)
            chunks.append(data)
        raw = b"".join(chunks)
        self._check_digests(call, body, hashes, raw_sha256=hashlib.sha256(raw).hexdigest())
        req = xmlio.parse_delete(raw)
        results: list[tuple[str, Any]] = []
        for text in req.keys:
            try:
                key = Key(text)
                await tree.delete(call.caller, bucket, key)
            except (S3Error, errors.FSError):
                err = from_failure(_failure())
                results.append(
                    ("Error", [("Key", text), ("Code", err.code), ("Message", err.message)])
                )
                continue
            if not req.quiet:
                results.append(("Deleted", [("Key", text)]))
        self._xml(call, xmlio.document("DeleteResult", results))

    # -- copies ------------------------------------------------------------------------------

    async def _source(self, call: Call) -> tuple[Attributes, str, ObjectMeta, str, str]:
        """The object named by x-amz-copy-source: (attrs, etag, meta, bucket, key)."""
        raw = call.header("x-amz-copy-source") or ""
        path, _, qs = raw.partition("?")
        text = unquote_to_bytes(path).decode("utf-8", "surrogateescape")
        text = text[1:] if text.startswith("/") else text
        src_bucket, sep, src_key = text.partition("/")
        if not sep or not src_bucket or not src_key:
            raise S3Error(
                "InvalidArgument",
                "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
                ArgumentName="x-amz-copy-source",
            )
        for n, v in parse_query(qs.encode("latin-1")):
            if n == b"versionId" and v not in (b"null", b""):
                raise S3Error("InvalidArgument", "Invalid version id specified")
        tree = self._tree()
        sb = await tree.bucket(call.caller, src_bucket)
        key = Key(src_key)
        if key.marker:
            raise S3Error("InvalidArgument", "Directory markers cannot be copied")
        a = await tree.lookup(call.caller, sb, key)
        etag, meta = await self._object_etag(call, a)
        self._conditions(call, etag, a.mtime_ns, prefix="x-amz-copy-source-")
        return a, etag, meta, src_bucket, src_key

    async def _copy_data(
        self, call: Call, src: Attributes, first: int, length: int, dst: int, hashes: dict[str, Any]
    ) -> None:
        tree = self._tree()
        vfs = tree.vfs
        offset = 0
        while offset < length:
            r = await vfs.read(
                call.caller, src.ino, first + offset, min(1024 * 1024, length - offset)
            )
            if not r.data:
                raise S3Error("InvalidRequest", "The source object changed during the copy")
            data = r.data[: length - offset]
            work = [defer.ensureDeferred(tree.hash(h, data)) for h in hashes.values()]
            work.append(vfs.write(call.caller, dst, offset, data, False))
            await defer.gatherResults(work, consumeErrors=True).addErrback(_first_error)
            offset += len(data)
        await vfs.commit(call.caller, dst)

    def _start_keepalive(self, call: Call) -> Callable[[], None]:
        """
        For an operation that may run long (Complete, Copy): after a while send
        200 and then a space every few seconds, as S3 does, so clients do not
        time out. Returns what stops it.
        """
        req = call.request
        state: dict[str, Any] = {}

        def tick() -> None:
            if req.finished or req._disconnected:
                return
            if not req.startedWriting:
                req.setResponseCode(200)
                req.setHeader(b"Content-Type", b"application/xml")
                req.write(b'<?xml version="1.0" encoding="UTF-8"?>\n')
            else:
                req.write(b" ")
            state["call"] = self.clock.callLater(KEEPALIVE_SECS, tick)

        state["call"] = self.clock.callLater(KEEPALIVE_SECS, tick)

        def stop() -> None:
            c = state.get("call")
            if c is not None and c.active():
                c.cancel()

        return stop

    def _finish_xml(self, call: Call, body: bytes) -> None:
        req = call.request
        if req.startedWriting:
            req.write(body.split(b"\n", 1)[1])
            req.finish()
        else:
            self._xml(call, body)

    async def op_CopyObject(self, call: Call) -> None:
        assert call.bucket is not None
        tree = self._tree()
        key = self._key(call)
        bucket = await tree.bucket(call.caller, call.bucket)
        src, src_etag, src_meta, sb, sk = await self._source(call)
        directive = (call.header("x-amz-metadata-directive") or "COPY").upper()
        if directive not in ("COPY", "REPLACE"):
            raise S3Error("InvalidArgument", "Unknown metadata directive.")
        if key.marker:
            raise S3Error("InvalidArgument", "Directory markers cannot be copied to")
        if sb == call.bucket and sk == key.text and directive == "COPY":
            raise S3Error(
                "InvalidRequest",
                "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes.",
            )
        meta = (
            self._user_meta(call)
            if directive == "REPLACE"
            else ObjectMeta(
                content_type=src_meta.content_type,
                headers=dict(src_meta.headers),
                user=dict(src_meta.user),
            )
        )
        algo = self._wanted_checksum(call) or next(iter(src_meta.checksums), None)
        if algo is not None and "-" in src_meta.checksums.get(algo, ""):
            algo = None
        await tree.check_writable(call.caller, bucket, key)
        tmp_dir, tmp_name, tmp = await tree.temp_file(call.caller)
        stop = self._start_keepalive(call)
        try:
            hashes: dict[str, Any] = {"md5": hashlib.md5()}
            if algo is not None:
                hashes[algo] = checksums.new(algo)
            await self._copy_data(call, src, 0, src.size, tmp.ino, hashes)
            if src_meta.parts and src_meta.etag == src_etag:
                meta.etag, meta.parts = src_etag, src_meta.parts
            else:
                meta.etag = hashes["md5"].hexdigest()
            if algo is not None:
                meta.checksums = {algo: checksums.b64(hashes[algo].digest())}
                meta.checksum_type = "FULL_OBJECT"
            a = await self._commit(call, bucket, key, tmp_dir, tmp_name, meta)
        except BaseException:
            stop()
            await tree.discard_temp(call.caller, tmp_dir, tmp_name)
            raise
        stop()
        fields: list[tuple[str, Any]] = [
            ("LastModified", iso_date(a.mtime_ns)),
            ("ETag", f'"{meta.etag}"'),
        ]
        for algo_name, v in meta.checksums.items():
            fields.append(("Checksum" + algo_name.upper(), v))
        self._finish_xml(call, xmlio.document("CopyObjectResult", fields))

    # -- multipart -------------------------------------------------------------------------------

    async def op_CreateMultipartUpload(self, call: Call) -> None:
        assert call.bucket is not None
        tree = self._tree()
        key = self._key(call)
        if key.marker:
            raise S3Error(
                "InvalidArgument",
                "Keys ending in '/' are directories in this gateway and cannot hold data",
            )
        bucket = await tree.bucket(call.caller, call.bucket)
        await tree.check_writable(call.caller, bucket, key)
        meta = self._user_meta(call)
        algo = (call.header("x-amz-checksum-algorithm") or "").lower() or None
        if algo is not None and algo not in checksums.ALGORITHMS:
            raise S3Error(
                "NotImplemented", f"The {algo} checksum is not implemented by this gateway"
            )
        ctype = (call.header("x-amz-checksum-type") or "").upper() or None
        if ctype not in (None, "COMPOSITE", "FULL_OBJECT"):
            raise S3Error("InvalidRequest", "x-amz-checksum-type must be COMPOSITE or FULL_OBJECT")
        if algo is not None and ctype is None:
            ctype = "COMPOSITE"
        if algo is None and ctype is not None:
            raise S3Error("InvalidRequest", "x-amz-checksum-type needs x-amz-checksum-algorithm")
        upload = await self._uploads().create(call.caller, call.bucket, key.text, meta, algo, ctype)
        headers = {}
        if algo is not None:
            headers["x-amz-checksum-algorithm"] = algo.upper()
            headers["x-amz-checksum-type"] = ctype or "COMPOSITE"
        for k, v in headers.items():
            call.request.setHeader(k.encode(), v.encode())
        self._xml(
            call,
            xmlio.document(
                "InitiateMultipartUploadResult",
                [("Bucket", call.bucket), ("Key", key.text), ("UploadId", upload.id)],
            ),
        )

    def _upload(self, call: Call) -> Upload:
        assert call.bucket is not None
        uid = call.query.get("uploadId", "")
        return self._uploads().get(uid, call.bucket, call.key, call.caller)

    def _part_number(self, call: Call) -> int:
        p = call.query.get("partNumber", "")
        if not p.isdigit() or not 1 <= int(p) <= MAX_PART_NUMBER:
            raise S3Error(
                "InvalidArgument",
                "Part number must be an integer between 1 and 10000, inclusive",
                ArgumentName="partNumber",
                ArgumentValue=p,
            )
        return int(p)

    async def _part(
        self, call: Call, fill: Callable[[Upload, int, dict[str, Any]], Any]
    ) -> tuple[ObjectMeta, Attributes]:
        """Stage one part with C{fill(upload, ino, hashes)} and rename it into place."""
        uploads = self._uploads()
        upload = self._upload(call)
        number = self._part_number(call)
        tree = self._tree()
        await tree.bucket(call.caller, upload.bucket)
        upload.active += 1
        uploads.touch(upload)
        assert upload.slots is not None
        await upload.slots.acquire()
        name = b"t-" + os.urandom(12).hex().encode()
        try:
            if upload.gone:
                raise S3Error("NoSuchUpload", UploadId=upload.id)
            try:
                tmp = await tree.vfs.create(call.caller, upload.ino, name, 0o600, exclusive=True)
            except (errors.NotFound, errors.Stale):
                raise S3Error("NoSuchUpload", UploadId=upload.id) from None
            try:
                hashes: dict[str, Any] = {"md5": hashlib.md5()}
                sums = await fill(upload, tmp.ino, hashes)
                a = await tree.vfs.getattr(call.caller, tmp.ino)
                meta = ObjectMeta(
                    etag=hashes["md5"].hexdigest(), mtime_ns=a.mtime_ns, size=a.size, checksums=sums
                )
                await tree.vfs.meta_set(call.caller, tmp.ino, b"s3", meta.encode())
                await tree.vfs.rename(call.caller, upload.ino, name, upload.ino, part_name(number))
                a = await tree.vfs.getattr(call.caller, tmp.ino)
            except BaseException:
                try:
                    await tree.vfs.remove(tree.root_caller, upload.ino, name)
                except errors.FSError:
                    pass
                raise
            return meta, a
        except (errors.NotFound, errors.Stale):
            raise S3Error("NoSuchUpload", UploadId=upload.id) from None
        finally:
            upload.slots.release()
            upload.active -= 1
            uploads.touch(upload)

    async def op_UploadPart(self, call: Call) -> None:
        async def fill(upload: Upload, ino: int, hashes: dict[str, Any]) -> dict[str, str]:
            algo = self._wanted_checksum(call, upload.algorithm)
            _, h, sums = await self._receive(call, ino, MAX_PART_SIZE, algo)
            hashes["md5"] = h["md5"]
            return sums

        meta, _ = await self._part(call, fill)
        headers = {"ETag": f'"{meta.etag}"'}
        for algo, v in meta.checksums.items():
            headers[checksums.header(algo)] = v
        self._empty(call, 200, headers)

    async def op_UploadPartCopy(self, call: Call) -> None:
        src, _, _, _, _ = await self._source(call)

        async def fill(upload: Upload, ino: int, hashes: dict[str, Any]) -> dict[str, str]:
            rng_text = call.header("x-amz-copy-source-range")
            if rng_text is not None:
                try:
                    rng = parse_copy_range(rng_text, src.size)
                except ValueError as e:
                    raise S3Error(
                        "InvalidArgument", str(e), ArgumentName="x-amz-copy-source-range"
                    ) from None
                first, length = rng.first, rng.length
            else:
                first, length = 0, src.size
            if length > MAX_PART_SIZE:
                raise S3Error("EntityTooLarge")
            algo = upload.algorithm
            if algo is not None:
                hashes[algo] = checksums.new(algo)
            await self._copy_data(call, src, first, length, ino, hashes)
            return {algo: checksums.b64(hashes[algo].digest())} if algo is not None else {}

        meta, a = await self._part(call, fill)
        fields: list[tuple[str, Any]] = [
            ("LastModified", iso_date(a.mtime_ns)),
            ("ETag", f'"{meta.etag}"'),
        ]
        for algo, v in meta.checksums.items():
            fields.append(("Checksum" + algo.upper(), v))
        self._xml(call, xmlio.document("CopyPartResult", fields))

    async def op_CompleteMultipartUpload(self, call: Call) -> None:
        assert call.bucket is not None
        uploads = self._uploads()
        upload = self._upload(call)
        tree = self._tree()
        key = self._key(call)
        bucket = await tree.bucket(call.caller, call.bucket)
        raw = await self._read_small(call, COMPLETE_BODY)
        wanted = xmlio.parse_complete(raw)
        if upload.completing:
            raise S3Error("OperationAborted", "The upload is already being completed")
        if upload.active:
            raise S3Error("OperationAborted", "Parts of this upload are still being written")
        upload.completing = True
        try:
            await self._complete(call, upload, bucket, key, wanted)
        finally:
            upload.completing = False
        uploads.touch(upload)

    async def _complete(
        self, call: Call, upload: Upload, bucket: Attributes, key: Key, wanted: list[Any]
    ) -> None:
        uploads = self._uploads()
        tree = self._tree()
        have = await uploads.parts(upload)
        last = 0
        md5s = []
        sizes = []
        part_sums: list[bytes] = []
        for i, p in enumerate(wanted):
            if p.number <= last:
                raise S3Error(
                    "InvalidPartOrder",
                    "The list of parts was not in ascending order. The parts list must be specified in order by part number.",
                )
            last = p.number
            got = have.get(p.number)
            if got is None or got[1].etag != _unquote_etag(p.etag):
                raise S3Error(
                    "InvalidPart",
                    "One or more of the specified parts could not be found. The part may not have been uploaded, or the specified entity tag may not have matched the part's entity tag.",
                    UploadId=upload.id,
                    PartNumber=str(p.number),
                    ETag=p.etag,
                )
            a, meta = got
            if a.size < self.limits.multipart_chunk_min and i != len(wanted) - 1:
                raise S3Error(
                    "EntityTooSmall",
                    "Your proposed upload is smaller than the minimum allowed object size.",
                    ProposedSize=str(a.size),
                    MinSizeAllowed=str(self.limits.multipart_chunk_min),
                    PartNumber=str(p.number),
                    ETag=p.etag,
                )
            if upload.algorithm is not None:
                v = meta.checksums.get(upload.algorithm)
                given = p.checksums.get(upload.algorithm)
                if v is None or (given is not None and given != v):
                    raise S3Error(
                        "InvalidPart",
                        f"The part's {upload.algorithm.upper()} checksum is missing or does not match",
                        PartNumber=str(p.number),
                    )
                part_sums.append(checksums.unb64(v) or b"")
            md5s.append(bytes.fromhex(meta.etag or ""))
            sizes.append(a.size)
        await tree.check_writable(call.caller, bucket, key)
        name = b"assembly"
        stop = self._start_keepalive(call)
        try:
            try:
                await tree.vfs.remove(call.caller, upload.ino, name)
            except errors.NotFound:
                pass
            out = await tree.vfs.create(call.caller, upload.ino, name, 0o644, exclusive=True)
            full: Any = None
            if upload.algorithm is not None and upload.checksum_type == "FULL_OBJECT":
                full = checksums.new(upload.algorithm)
            offset = 0
            for p in wanted:
                a, _ = have[p.number]
                pos = 0
                while pos < a.size:
                    r = await tree.vfs.read(call.caller, a.ino, pos, 1024 * 1024)
                    if not r.data:
                        raise S3Error(
                            "InvalidPart", "A part changed while the upload was being completed"
                        )
                    if full is not None:
                        await tree.hash(full, r.data)
                    await tree.vfs.write(call.caller, out.ino, offset, r.data, False)
                    pos += len(r.data)
                    offset += len(r.data)
            await tree.vfs.commit(call.caller, out.ino)
            meta = ObjectMeta(
                etag=checksums.multipart_etag(md5s),
                content_type=upload.meta.content_type,
                headers=dict(upload.meta.headers),
                user=dict(upload.meta.user),
                parts=rle(sizes),
            )
            if upload.algorithm is not None:
                if full is not None:
                    meta.checksums = {upload.algorithm: checksums.b64(full.digest())}
                    meta.checksum_type = "FULL_OBJECT"
                else:
                    meta.checksums = {
                        upload.algorithm: checksums.composite(upload.algorithm, part_sums)
                    }
                    meta.checksum_type = "COMPOSITE"
            await self._commit(call, bucket, key, upload.ino, name, meta)
        except BaseException:
            stop()
            try:
                await tree.vfs.remove(tree.root_caller, upload.ino, name)
            except errors.FSError:
                pass
            raise
        stop()
        await uploads.finished(upload)
        assert call.bucket is not None
        fields: list[tuple[str, Any]] = [
            ("Location", f"/{call.bucket}/{quote(key.text)}"),
            ("Bucket", call.bucket),
            ("Key", key.text),
            ("ETag", f'"{meta.etag}"'),
        ]
        for algo, v in meta.checksums.items():
            fields.append(("Checksum" + algo.upper(), v))
        if meta.checksum_type:
            fields.append(("ChecksumType", meta.checksum_type))
        self._finish_xml(call, xmlio.document("CompleteMultipartUploadResult", fields))

    async def op_AbortMultipartUpload(self, call: Call) -> None:
        upload = self._upload(call)
        await self._uploads().abort(upload)
        self._empty(call, 204)

    async def op_ListParts(self, call: Call) -> None:
        upload = self._upload(call)
        uploads = self._uploads()
        have = await uploads.parts(upload)
        q = call.query
        marker = q.get("part-number-marker", "0")
        mp = q.get("max-parts", "1000")
        if not marker.isdigit() or not mp.isdigit():
            raise S3Error("InvalidArgument", "part-number-marker and max-parts must be integers")
        max_parts = min(int(mp), 1000)
        numbers = sorted(n for n in have if n > int(marker))
        page, truncated = numbers[:max_parts], len(numbers) > max_parts
        owner = self._owner(upload.uid)
        fields: list[tuple[str, Any]] = [
            ("Bucket", upload.bucket),
            ("Key", upload.key),
            ("UploadId", upload.id),
            ("Initiator", owner),
            ("Owner", owner),
            ("StorageClass", "STANDARD"),
            ("PartNumberMarker", int(marker)),
            ("NextPartNumberMarker", page[-1] if page else int(marker)),
            ("MaxParts", max_parts),
            ("IsTruncated", truncated),
        ]
        if upload.algorithm:
            fields.append(("ChecksumAlgorithm", upload.algorithm.upper()))
            fields.append(("ChecksumType", upload.checksum_type or "COMPOSITE"))
        for n in page:
            a, meta = have[n]
            part: list[tuple[str, Any]] = [
                ("PartNumber", n),
                ("LastModified", iso_date(a.mtime_ns)),
                ("ETag", f'"{meta.etag}"'),
                ("Size", a.size),
            ]
            for algo, v in meta.checksums.items():
                part.append(("Checksum" + algo.upper(), v))
            fields.append(("Part", part))
        self._xml(call, xmlio.document("ListPartsResult", fields))

    async def op_ListMultipartUploads(self, call: Call) -> None:
        assert call.bucket is not None
        tree = self._tree()
        b = await tree.bucket(call.caller, call.bucket)
        if not await tree.vfs.access(call.caller, b.ino, 0o4):
            raise S3Error("AccessDenied")
        q = call.query
        prefix = q.get("prefix", "")
        delimiter = q.get("delimiter") or None
        key_marker = q.get("key-marker", "")
        id_marker = q.get("upload-id-marker", "")
        mu = q.get("max-uploads", "1000")
        if not mu.isdigit():
            raise S3Error("InvalidArgument", "max-uploads must be an integer")
        max_uploads = min(int(mu), 1000)
        enc = q.get("encoding-type")
        ups = sorted(
            (
                u
                for u in self._uploads().uploads.values()
                if u.bucket == call.bucket and u.key.startswith(prefix) and not u.gone
            ),
            key=lambda u: (u.key.encode("utf-8", "surrogateescape"), u.initiated, u.id),
        )

        def k(text: str) -> str:
            return quote(text, safe="/") if enc == "url" else text

        items: list[tuple[str, Any]] = []
        last_cp = None
        count = 0
        truncated = False
        next_key = next_id = ""
        for u in ups:
            if key_marker:
                if u.key < key_marker or (
                    u.key == key_marker and (not id_marker or u.id <= id_marker)
                ):
                    continue
            if delimiter:
                rem = u.key[len(prefix) :]
                i = rem.find(delimiter)
                if i >= 0:
                    cp = prefix + rem[: i + len(delimiter)]
                    if cp == last_cp or cp == key_marker:
                        continue
                    if count == max_uploads:
                        truncated = True
                        break
                    last_cp = cp
                    items.append(("CommonPrefixes", [("Prefix", k(cp))]))
                    count += 1
                    next_key, next_id = cp, ""
                    continue
            if count == max_uploads:
                truncated = True
                break
            owner = self._owner(u.uid)
            items.append(
                (
                    "Upload",
                    [
                        ("Key", k(u.key)),
                        ("UploadId", u.id),
                        ("Initiator", owner),
                        ("Owner", owner),
                        ("StorageClass", "STANDARD"),
                        ("Initiated", iso_date(int(u.initiated * 1e9))),
                    ],
                )
            )
            count += 1
            next_key, next_id = u.key, u.id
        fields: list[tuple[str, Any]] = [
            ("Bucket", call.bucket),
            ("KeyMarker", k(key_marker)),
            ("UploadIdMarker", id_marker),
            ("NextKeyMarker", k(next_key)),
            ("NextUploadIdMarker", next_id),
            ("MaxUploads", max_uploads),
            ("IsTruncated", truncated),
            ("Prefix", k(prefix)),
        ]
        if delimiter:
            fields.append(("Delimiter", k(delimiter)))
        if enc:
            fields.append(("EncodingType", enc))
        self._xml(call, xmlio.document("ListMultipartUploadsResult", fields + items))


def _header_bytes(value: str) -> bytes:
    """
    A header value back to bytes: stored values were decoded from latin-1 (HTTP's
    own byte-for-byte reading), so they go out as the same bytes; a value with
    characters beyond latin-1 (a ``response-*`` override from the query) as UTF-8.
    """
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape")


def _failure() -> Any:
    from twisted.python.failure import Failure

    return Failure()


def _first_error(f: Any) -> Any:
    """gatherResults wraps failures in FirstError: give the caller the real one."""
    if f.check(defer.FirstError):
        return f.value.subFailure
    return f


class S3Resource(resource.Resource):
    """The one twisted.web resource of the S3 front end: every path is an S3 request."""

    isLeaf = True

    def __init__(self, api: S3Api) -> None:
        super().__init__()
        self.api = api

    def render(self, request: Any) -> Any:
        d = defer.Deferred.fromCoroutine(self.api.handle(request))
        finished = request.notifyFinish()
        # The client went away: stop the work (STYLE.md §5), without logging it as an error.
        finished.addErrback(lambda f: d.cancel())
        d.addErrback(lambda f: f.trap(defer.CancelledError))
        return server.NOT_DONE_YET
