# -*- test-case-name: tests.s3.test_semantics -*-
"""
Objects: PUT, GET, HEAD, DELETE (one or many) and copies.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet import defer

from claudefs_gateway import errors
from claudefs_gateway.fstypes import Attributes
from claudefs_gateway.s3 import checksums, xmlio
from claudefs_gateway.s3.body import ClientGone, ObjectProducer, ShortRead
from claudefs_gateway.s3.call import (
    DEFAULT_CONTENT_TYPE,
    DELETE_BODY,
    KEEPALIVE_SECS,
    SMALL_BODY,
    Call,
    etag_matches,
    failure,
    first_error,
    header_bytes,
    http_date,
    iso_date,
)
from claudefs_gateway.s3.errors import S3Error, from_failure
from claudefs_gateway.s3.keys import Key
from claudefs_gateway.s3.multipart import MAX_PART_NUMBER
from claudefs_gateway.s3.ops.base import Operations
from claudefs_gateway.s3.ranges import ByteRange, Unsatisfiable, parse_range
from claudefs_gateway.s3.signing import parse_http_date, parse_query
from claudefs_gateway.s3.tree import EMPTY_MD5, ObjectMeta

__all__ = ["ObjectOps"]


class ObjectOps(Operations):
    """Objects: PUT, GET, HEAD, DELETE (one or many) and copies."""

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
            req.setHeader(k.encode("latin-1"), header_bytes(v))
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
        except (defer.CancelledError, ClientGone):
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
        if not req.gone and not req.finished:
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
            raise from_failure(failure()) from None
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
                err = from_failure(failure())
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
            work: list[defer.Deferred[Any]] = [
                defer.ensureDeferred(tree.hash(h, data)) for h in hashes.values()
            ]
            work.append(vfs.write(call.caller, dst, offset, data, False))
            await defer.gatherResults(work, consumeErrors=True).addErrback(first_error)
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
            if req.finished or req.gone:
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
