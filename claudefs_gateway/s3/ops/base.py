# -*- test-case-name: tests.s3.test_semantics -*-
"""
What every S3 operation shares: writing responses, reading and checking
request bodies (Content-MD5, payload hash, additional checksums), the user
metadata of a request, per-key serialisation of conditional writes.
"""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet import defer

from claudefs_gateway.core.log import Logger
from claudefs_gateway.fstypes import Attributes
from claudefs_gateway.s3 import checksums, xmlio
from claudefs_gateway.s3.auth import Authenticator
from claudefs_gateway.s3.body import Body
from claudefs_gateway.s3.call import (
    DEFAULT_CONTENT_TYPE,
    MAX_USER_META,
    Call,
    Limits,
    first_error,
)
from claudefs_gateway.s3.errors import S3Error, error_fields
from claudefs_gateway.s3.multipart import Uploads
from claudefs_gateway.s3.tree import STORED_HEADERS, ObjectMeta, Tree

__all__ = ["Operations"]


class Operations:
    """
    The state and helpers every operation family uses; L{S3Api} sets the
    state up and runs the request cycle.
    """

    _log = Logger()
    auth: Authenticator
    region: str
    clock: Any
    limits: Limits
    metrics: Any
    tree: Tree | None
    uploads: Uploads | None
    _locks: dict[tuple[str, str], defer.DeferredLock]

    # -- responses ---------------------------------------------------------------------------

    def _send_error(self, call: Call, err: S3Error) -> None:
        req = call.request
        if req.finished or req.gone:
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
            work: list[defer.Deferred[Any]] = [
                defer.ensureDeferred(tree.hash(h, data)) for h in hashes.values()
            ]
            work.append(vfs.write(call.caller, ino, offset, data, False))
            await defer.gatherResults(work, consumeErrors=True).addErrback(first_error)
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
