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
from claudefs_gateway.s3 import acl, checksums, lifecycle, objectlock, sse, tagging, xmlio
from claudefs_gateway.s3._web import set_headers
from claudefs_gateway.s3.body import ClientGone, ObjectProducer, ShortRead
from claudefs_gateway.s3.bucketconf import BucketConf
from claudefs_gateway.s3.call import (
    DEFAULT_CONTENT_TYPE,
    DELETE_BODY,
    KEEPALIVE_SECS,
    SMALL_BODY,
    Call,
    etag_matches,
    failure,
    first_error,
    http_date,
    iso_date,
)
from claudefs_gateway.s3.conditions import DeleteCondition
from claudefs_gateway.s3.errors import S3Error, directory_data, from_failure
from claudefs_gateway.s3.keys import Key
from claudefs_gateway.s3.multipart import MAX_PART_NUMBER
from claudefs_gateway.s3.ops.base import Operations
from claudefs_gateway.s3.owners import canonical_id
from claudefs_gateway.s3.ranges import ByteRange, Unsatisfiable, parse_range
from claudefs_gateway.s3.signing import parse_http_date, parse_query
from claudefs_gateway.s3.tree import EMPTY_MD5, ObjectMeta
from claudefs_gateway.s3.versions import GONE, NULL, Versions, new_version_id, valid_version_id
from claudefs_gateway.vfs import inline
from claudefs_gateway.vfs.origin import Origin
from claudefs_gateway.vfs.worm import WORM_KEY, Retention

__all__ = ["ObjectOps"]

#: An object (or range) up to this size is sent with one read and one write,
#: without an L{ObjectProducer}.
SMALL_SEND = 64 * 1024


class ObjectOps(Operations):
    """Objects: PUT, GET, HEAD, DELETE (one or many) and copies."""

    # -- objects ------------------------------------------------------------------------------

    def _key(self, call: Call) -> Key:
        assert call.key is not None
        return Key(call.key)

    async def op_PutObject(self, call: Call) -> None:
        assert call.bucket is not None
        tree = self._tree()
        key = self._key(call)
        bucket = await self._bucket(call)
        meta = self._user_meta(call)
        algo = self._wanted_checksum(call)
        tags = self._request_tags(call)
        lock = objectlock.from_headers(call.headers, self._now_ns())
        if key.marker:
            if tags or lock is not None:
                raise S3Error("InvalidArgument", "Directory markers cannot be tagged or locked")
            await self._put_marker(call, bucket, key, meta)
            return
        found = await tree.check_writable(call.caller, bucket, key)
        conf = await tree.bucket_settings(bucket)
        enc = self._sse_for_write(call, conf.encryption)
        held = None
        if enc is None and not tags and lock is None and await self._one_step(call, bucket, conf):
            held = await self._receive_held(call, self.limits.max_object_size, algo)
        if held is not None and held.complete:
            # All of it in memory: one store operation creates, fills and
            # publishes it (docs/s3.rst "Small objects").
            size = held.size
            self._describe(meta, held.hashes, held.sums, algo)
            data = b"".join(held.chunks)
            if conf.lifecycle:
                # Not while the lifecycle expires what is there (L{_commit}).
                key_lock = self._lock(call.bucket, key.text)
                await key_lock.acquire()
                try:
                    a = await tree.put_small(call.caller, bucket, key, data, meta, found)
                finally:
                    self._unlock(call.bucket, key.text, key_lock)
            else:
                a = await tree.put_small(call.caller, bucket, key, data, meta, found)
        else:
            tmp_dir, tmp_name, tmp = await tree.temp_file(call.caller)
            try:
                sealer = None
                if enc is not None:
                    await self._seal(tmp.ino)
                    sealer = sse.Sealer(sse.object_key(enc[1], enc[0].salt), 0)
                size, hashes, sums = await self._receive(
                    call,
                    tmp.ino,
                    self.limits.max_object_size,
                    algo,
                    sealer,
                    renamed=True,
                    started=held,
                )
                self._describe(meta, hashes, sums, algo)
                if enc is not None:
                    enc[0].plain, enc[0].sizes = size, [size]
                    meta.sse = enc[0].encode()
                a = await self._commit(call, bucket, key, tmp_dir, tmp_name, meta, tags, lock)
            except BaseException:
                await tree.discard_temp(call.caller, tmp_dir, tmp_name)
                raise
        headers = {"ETag": f'"{meta.etag}"'}
        headers.update(self._sse_headers(enc[0] if enc is not None else None))
        expiry = await self._expiration(bucket, key.text, tags or {}, size, a.mtime_ns)
        if expiry is not None:
            headers["x-amz-expiration"] = expiry
        for algo_name, v in meta.checksums.items():
            headers[checksums.header(algo_name)] = v
        self._empty(call, 200, headers)

    def _describe(
        self, meta: ObjectMeta, hashes: dict[str, Any], sums: dict[str, str], algo: str | None
    ) -> None:
        meta.etag = hashes["md5"].hexdigest()
        if algo is not None:
            meta.checksums = {algo: sums[algo]}
            meta.checksum_type = "FULL_OBJECT"

    async def _one_step(self, call: Call, bucket: Attributes, conf: BucketConf) -> bool:
        """
        Whether a plain PUT (no encryption, tags or retention asked) may be
        stored by L{Tree.put_small}: the store can, and nothing that
        L{_commit} does besides the rename applies - no condition, no
        versioning, no object lock default, no ACL headers, no change of
        owner.
        """
        if conf.versioning is not None or conf.object_lock:
            return False
        if not self._tree().vfs.can_put_file:
            return False
        headers = call.headers
        if "if-match" in headers or "if-none-match" in headers or "x-amz-acl" in headers:
            return False
        for name in headers:  # a loop, not any() over a generator: no call per header
            if name.startswith("x-amz-grant-"):
                return False
        return await self._owner_for_new_object(call, bucket, conf) is None

    async def _put_marker(self, call: Call, bucket: Attributes, key: Key, meta: ObjectMeta) -> None:
        body = await self._read_small(call, SMALL_BODY)
        if body:
            raise directory_data()
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
        tags: dict[str, str] | None = None,
        lock: Retention | None = None,
        acl_headers: dict[str, list[str]] | None = None,
    ) -> Attributes:
        """
        Rename a finished object into place, honouring If-Match/If-None-Match
        on writes and, in a versioned bucket, keeping the object it replaces
        as an older version (docs/s3.rst "Versioning"). Conditional and
        versioned writes of one key, and writes of a bucket with lifecycle
        rules, are serialised (L{claudefs_gateway.s3.keys.KeyLocks}). The new object gets
        C{tags} and the retention C{lock} asks for, or the bucket's default.
        """
        assert call.bucket is not None
        tree = self._tree()
        conf = await tree.bucket_conf(bucket)
        if lock is not None and not conf.object_lock:
            raise S3Error("InvalidRequest", "Bucket is missing Object Lock Configuration")
        if conf.object_lock:
            lock = objectlock.merge(
                lock, objectlock.default_retention(conf.lock_rule, self._now_ns())
            )
        if tags:
            tmp = await tree.vfs.lookup(tree.root_caller, tmp_dir, tmp_name)
            await tree.vfs.meta_set(
                tree.root_caller, tmp.ino, tagging.TAGS_KEY, tagging.encode(tags)
            )
        # The ACL the request asks for becomes the new file's mode (s3/acl.py).
        headers = acl_headers if acl_headers is not None else call.headers
        grants = acl.from_headers(
            headers, canonical_id(call.caller.cred.uid), canonical_id(bucket.uid)
        )
        if grants is not None:
            self._check_acl_allowed(conf, grants, headers.get("x-amz-acl"))
            tmp = await tree.vfs.lookup(tree.root_caller, tmp_dir, tmp_name)
            await self._apply_grants(call, tmp, grants, False)
        give_to = await self._owner_for_new_object(call, bucket, conf)
        state = conf.versioning
        versions = Versions(tree)
        if state is not None:
            now = self._now_ns()
            meta.vid = new_version_id(now) if state == "Enabled" else None
            meta.vt = now
        im, inm = call.header("if-match"), call.header("if-none-match")
        kept: list[tuple[int, str]] = []

        async def before(current: Attributes | None, parent: Attributes) -> None:
            if inm is not None and current is not None and current.is_reg:
                # RFC 9110 §13.1.2: "*" or any listed tag matching the current one.
                if inm.strip() == "*":
                    raise S3Error("PreconditionFailed", Condition="If-None-Match")
                etag, _ = await self._object_etag(call, current)
                if etag_matches(inm, etag):
                    raise S3Error("PreconditionFailed", Condition="If-None-Match")
            if im is not None:
                if current is None or not current.is_reg:
                    raise S3Error("NoSuchKey")
                etag, _ = await self._object_etag(call, current)
                if not etag_matches(im, etag):
                    raise S3Error("PreconditionFailed", Condition="If-Match")
            if state is None:
                return
            if current is not None and current.is_reg:
                cur_meta = await tree.meta(tree.root_caller, current)
                vid, t = versions.effective(conf, current, cur_meta)
                if state == "Enabled" or vid != NULL:
                    await versions.preserve(parent.ino, key.name, current, vid, t)
                    kept.append((parent.ino, vid))
            if state == "Suspended":
                # The new object is the null version: an older one goes.
                await versions.remove(parent.ino, key.name, NULL)

        # The lifecycle's expiry decides on the object there, then removes
        # it: a write of a bucket with rules waits for it (lifecycle.Worker).
        conditional = im is not None or inm is not None or state is not None or bool(conf.lifecycle)
        if not conditional:
            a = await tree.commit(call.caller, bucket, key, tmp_dir, tmp_name, meta)
            if give_to is not None:
                await self._give_to(a, give_to)
            if lock is not None:
                await tree.vfs.meta_set(tree.root_caller, a.ino, WORM_KEY, lock.encode())
            return a
        key_lock = self._lock(call.bucket, key.text)
        await key_lock.acquire()
        try:
            try:
                a = await tree.commit(call.caller, bucket, key, tmp_dir, tmp_name, meta, before)
            except BaseException:
                for parent_ino, vid in kept:
                    # The new object did not land: the old one is still current.
                    await versions.remove(parent_ino, key.name, vid)
                raise
        finally:
            self._unlock(call.bucket, key.text, key_lock)
        if state == "Enabled":
            # A suspended bucket writes the null version and names none (as s3-tests expects).
            call.version_id = meta.vid
        if give_to is not None:
            await self._give_to(a, give_to)
        if lock is not None:
            # Protected from here on, over every protocol (vfs/worm.py).
            await tree.vfs.meta_set(tree.root_caller, a.ino, WORM_KEY, lock.encode())
        return a

    async def _expiration(
        self, bucket: Attributes, key: str, tags: dict[str, str], size: int, mtime_ns: int
    ) -> str | None:
        """C{x-amz-expiration}: when a lifecycle rule of the bucket will expire this object."""
        conf = await self._tree().bucket_settings(bucket)
        if not conf.lifecycle:
            return None
        return lifecycle.expiration_header(conf.lifecycle, key, tags, size, mtime_ns / 1e9)

    def _now_ns(self) -> int:
        return int(self.clock.seconds() * 1_000_000_000)

    def _request_tags(self, call: Call) -> dict[str, str] | None:
        """The tags C{x-amz-tagging} gives a new object (validated), if any."""
        v = call.header("x-amz-tagging")
        if v is None:
            return None
        return tagging.check(tagging.parse_header(v)) or None

    async def _may_bypass(self, call: Call) -> bool:
        """
        C{x-amz-bypass-governance-retention: true} from the bucket's owner (or
        root): governance retention may be shortened, removed or deleted past.
        """
        if (call.header("x-amz-bypass-governance-retention") or "").strip().lower() != "true":
            return False
        assert call.bucket is not None
        b = await self._tree().bucket(call.caller, call.bucket)
        return b.uid == call.caller.cred.uid or call.caller.cred.is_root

    def _conditions(self, call: Call, etag: str, mtime_ns: int, prefix: str = "") -> int | None:
        """RFC 9110 §13.2.2 order; 304 for GET/HEAD, or raise 412."""
        headers = call.headers
        if (
            prefix + "if-match" not in headers
            and prefix + "if-unmodified-since" not in headers
            and prefix + "if-none-match" not in headers
            and prefix + "if-modified-since" not in headers
        ):
            return None  # most requests: no condition, and no four calls
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

    async def _resolve(
        self, call: Call, bucket: Attributes, key: Key, vid: str | None
    ) -> tuple[Attributes, ObjectMeta, str | None]:
        """
        The object a read names: the current one, or version C{vid}; (attributes,
        metadata, version id to report - None in a bucket never versioned).

        @raise S3Error: NoSuchKey (with C{x-amz-delete-marker} when the latest
            version is a delete marker), NoSuchVersion, InvalidArgument (a
            malformed id), MethodNotAllowed (C{vid} is a delete marker).
        """
        tree = self._tree()
        if vid is not None and not valid_version_id(vid):
            raise S3Error(
                "InvalidArgument",
                "Invalid version id specified",
                ArgumentName="versionId",
                ArgumentValue=vid,
            )
        conf = await tree.bucket_settings(bucket)
        if key.marker or not conf.versioned:
            # Directory markers have only their null version, as does every
            # object of a bucket never versioned.
            if vid not in (None, NULL):
                raise S3Error("NoSuchVersion", Key=key.text, VersionId=vid or "")
            a = await tree.lookup(call.caller, bucket, key)
            meta = await tree.meta(call.caller, a)
            return a, meta, (NULL if conf.versioned and vid is not None else None)
        versions = Versions(tree)
        try:
            current: Attributes | None = await tree.lookup(call.caller, bucket, key)
        except S3Error as e:
            if e.code != "NoSuchKey":
                raise
            current = None
        if current is not None:
            meta = await tree.meta(call.caller, current)
            cur_vid, _ = versions.effective(conf, current, meta)
            if vid is None or vid == cur_vid:
                return current, meta, cur_vid
        parent = await tree.parent_dir(call.caller, bucket, key.parents)
        if vid is None:
            if current is None and parent is not None:
                older = await versions.older(parent.ino, key.name)
                if older and older[0].delete_marker:
                    raise S3Error(
                        "NoSuchKey",
                        headers={
                            "x-amz-delete-marker": "true",
                            "x-amz-version-id": older[0].vid,
                        },
                    )
            raise S3Error("NoSuchKey")
        v = await versions.find(parent.ino, key.name, vid) if parent is not None else None
        if v is None:
            raise S3Error("NoSuchVersion", Key=key.text, VersionId=vid)
        if v.delete_marker:
            raise S3Error(
                "MethodNotAllowed",
                "The specified method is not allowed against this resource.",
                headers={
                    "x-amz-delete-marker": "true",
                    "x-amz-version-id": v.vid,
                    "Last-Modified": http_date(v.time_ns),
                },
                Method=call.method,
                ResourceType="DeleteMarker",
            )
        return v.attrs, v.meta, v.vid

    async def _get(self, call: Call, head: bool) -> None:
        assert call.bucket is not None
        tree = self._tree()
        key = self._key(call)
        bucket = await self._bucket(call)
        a, meta, call.version_id = await self._resolve(
            call, bucket, key, call.query.get("versionId")
        )
        caller = call.caller
        if a.is_reg and a.uid != caller.cred.uid:
            # Read permission is checked before anything is sent (the vfs
            # checks it again on every read).
            if not await inline(tree.vfs.access, caller, a.ino, 0o4):
                raise S3Error("AccessDenied")
        etag = await tree.etag(caller, a, meta)
        out = call.request.responseHeaders
        if call.version_id is not None:
            self._version_header(call)
        tags = tagging.decode(await inline(tree.vfs.meta_get, caller, a.ino, tagging.TAGS_KEY))
        if tags:
            set_headers(out, {"x-amz-tagging-count": str(len(tags))})
        if a.is_reg and call.query.get("versionId") is None:
            expiry = await self._expiration(bucket, key.text, tags, meta.plain_size(a), a.mtime_ns)
            if expiry is not None:
                set_headers(out, {"x-amz-expiration": expiry})
        record = Retention.decode(await inline(tree.vfs.meta_get, caller, a.ino, WORM_KEY))
        if record is not None:
            set_headers(out, objectlock.lock_headers(record))
        info = sse.Sse.decode(meta.sse)
        if info is None and sse.customer_key(call.headers) is not None:
            raise S3Error(
                "InvalidRequest", "The encryption parameters are not applicable to this object."
            )
        if info is not None:
            set_headers(out, self._sse_headers(info))
        size = meta.plain_size(a) if a.is_reg else 0
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
                    # 400 InvalidPart, as s3-tests expects of every server (RGW does).
                    raise S3Error("InvalidPart", "The requested part number does not exist")
            else:
                pr = meta.part_range(n)
                if pr is None:
                    raise S3Error("InvalidPart", "The requested part number does not exist")
                if size:
                    rng = ByteRange(pr[0], pr[0] + pr[1] - 1, size)
                headers["x-amz-mp-parts-count"] = str(count)
                algo = next(iter(meta.checksums), None)
                if algo is not None and meta.part_sums and n <= len(meta.part_sums):
                    # A part's own checksum, as uploaded.
                    headers[checksums.header(algo)] = meta.part_sums[n - 1]
                    headers["x-amz-checksum-type"] = meta.checksum_type or "COMPOSITE"
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
        # Checks the key (SSE-C: the request's must be the object's) before a byte goes out.
        read = self._plain_reader(call, a, meta) if a.is_reg else None
        req = call.request
        first, length = (rng.first, rng.length) if rng is not None else (0, size)
        if rng is not None:
            req.setResponseCode(206)
            headers["Content-Range"] = rng.content_range
        headers["Content-Length"] = str(length)
        set_headers(out, headers)
        if head or length == 0:
            req.finish()
            return
        assert read is not None
        reader = read
        try:
            if length <= SMALL_SEND:
                # One read, one write: a small object needs no producer (and
                # none of its Deferreds); the transport buffers it whole.
                data = await reader(first, length)
                if not data or len(data) > length:
                    raise ShortRead(f"object ended {length} bytes early")
                if req.gone:
                    raise ClientGone("the connection closed while the object was being read")
                req.write(data)
                first, length = first + len(data), length - len(data)
            if length:
                producer = ObjectProducer(
                    lambda off, n: defer.Deferred.fromCoroutine(reader(off, n)),
                    req,
                    first,
                    length,
                )
                finished = req.notifyFinish()
                finished.addErrback(lambda f: producer.stopProducing())
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
        bucket = await self._bucket(call)
        key = self._key(call)
        cond = DeleteCondition(
            call.header("if-match"),
            call.header("x-amz-if-match-last-modified-time"),
            call.header("x-amz-if-match-size"),
        )
        vid, marker = await self._delete(call, bucket, key, cond, call.query.get("versionId"))
        headers = {}
        if vid is not None:
            headers["x-amz-version-id"] = vid
        if marker:
            headers["x-amz-delete-marker"] = "true"
        self._empty(call, 204, headers)

    async def _delete(
        self,
        call: Call,
        bucket: Attributes,
        key: Key,
        cond: DeleteCondition | None,
        vid: str | None = None,
    ) -> tuple[str | None, bool]:
        """
        Delete one object, or one version of it; with conditions (If-Match,
        x-amz-if-match-last-modified-time, x-amz-if-match-size) only if the
        object matches them. A missing object is deleted already, whatever the
        conditions. Returns the version id deleted or made (a delete marker),
        and whether it is a delete marker.

        @raise S3Error: PreconditionFailed; InvalidArgument (a malformed version id).
        """
        tree = self._tree()
        assert call.bucket is not None
        if vid is not None and not valid_version_id(vid):
            raise S3Error(
                "InvalidArgument",
                "Invalid version id specified",
                ArgumentName="versionId",
                ArgumentValue=vid,
            )
        conf = await tree.bucket_settings(bucket)
        if conf.versioned and not key.marker:
            lock = self._lock(call.bucket, key.text)
            await lock.acquire()
            try:
                result = await self._delete_versioned(call, bucket, key, cond, vid, conf)
                await tree.prune_key(bucket, key)
                return result
            except errors.FSError:
                raise from_failure(failure()) from None
            finally:
                self._unlock(call.bucket, key.text, lock)
        if vid not in (None, NULL):
            # AWS answers 204 for a version that does not exist.
            return vid, False
        await self._delete_current(call, bucket, key, cond)
        return vid, False

    async def _delete_versioned(
        self,
        call: Call,
        bucket: Attributes,
        key: Key,
        cond: DeleteCondition | None,
        vid: str | None,
        conf: BucketConf,
    ) -> tuple[str | None, bool]:
        """
        DELETE in a versioned bucket (docs/s3.rst "Versioning"): without a
        version id the current object becomes an older version under a new
        delete marker (Enabled) or the null delete marker (Suspended); with one,
        that version goes for good, and if it was the latest the next one
        becomes current again.
        """
        tree = self._tree()
        versions = Versions(tree)
        made: list[tuple[int, bytes]] = []
        parent = await tree.parent_dir(call.caller, bucket, key.parents)
        if parent is None:
            if vid is not None:
                return vid, False
            parent = await tree.make_parents(call.caller, bucket, key.parents, made)
        if await tree.vfs.access(call.caller, parent.ino, 0o3) != 0o3:
            raise S3Error("AccessDenied")
        try:
            current: Attributes | None = await tree.vfs.lookup(call.caller, parent.ino, key.name)
        except errors.NotFound:
            current = None
        if current is not None and not current.is_reg:
            current = None
        cur_vid: str | None = None
        cur_time = 0
        if current is not None:
            try:
                cur_meta = await tree.meta(tree.root_caller, current)
                cur_vid, cur_time = versions.effective(conf, current, cur_meta)
            except GONE:
                current = None  # removed since its lookup (a file client, another worker)
        conditional = cond is not None and not cond.empty
        if vid is None:
            if conditional:
                assert cond is not None
                if current is None:
                    # Nothing to delete. Where a delete marker is latest, only
                    # If-Match: * holds (s3-tests' conditional deletes).
                    older = await versions.older(parent.ino, key.name)
                    if (
                        older
                        and older[0].delete_marker
                        and (
                            cond.etag is None or cond.etag.strip() != "*" or cond.size or cond.mtime
                        )
                    ):
                        raise S3Error("PreconditionFailed", Condition="If-Match")
                    return None, False
                etag, _ = await self._object_etag(call, current)
                cond.check(etag, current)
            now = self._now_ns()
            new_vid = new_version_id(now) if conf.versioning == "Enabled" else NULL
            if current is not None and cur_vid is not None:
                if conf.versioning == "Enabled" or cur_vid != NULL:
                    await versions.preserve(parent.ino, key.name, current, cur_vid, cur_time)
                await tree.vfs.remove(call.caller, parent.ino, key.name)
            await versions.add_marker(call.caller, parent.ino, key.name, new_vid, now)
            return new_vid, True
        bypass = await self._may_bypass(call)
        origin = Origin(strict=True, bypass_governance=bypass)
        if current is not None and cur_vid == vid:
            if conditional:
                assert cond is not None
                etag, _ = await self._object_etag(call, current)
                cond.check(etag, current)
            await self._check_retention(current, bypass)
            await tree.vfs.remove(call.caller, parent.ino, key.name, origin)
            await self._promote_latest(versions, parent, key)
            return vid, False
        older = await versions.older(parent.ino, key.name)
        target = next((v for v in older if v.vid == vid), None)
        if target is None:
            return vid, False
        if conditional and not target.delete_marker:
            assert cond is not None
            etag = await tree.etag(call.caller, target.attrs, target.meta)
            cond.check(etag, target.attrs)
        await self._check_retention(target.attrs, bypass)
        await versions.remove(parent.ino, key.name, vid, origin)
        if current is None and older[0].vid == vid:
            await self._promote_latest(versions, parent, key)
        return vid, target.delete_marker

    async def _check_retention(self, a: Attributes, bypass: bool) -> None:
        """
        A version under retention or legal hold is not deleted (403
        AccessDenied, as AWS); governance retention gives way to a bypass.
        """
        raw = await self._tree().vfs.meta_get(self._tree().root_caller, a.ino, WORM_KEY)
        r = Retention.decode(raw)
        if r is None:
            return
        now = self._now_ns()
        if r.active(now) and not (bypass and r.bypassable(now)):
            raise S3Error("AccessDenied", "The object version is locked (object lock)")

    async def _promote_latest(self, versions: Versions, parent: Attributes, key: Key) -> None:
        """The latest version went: the newest left becomes current, unless it is a delete marker."""
        older = await versions.older(parent.ino, key.name)
        if older and not older[0].delete_marker:
            await versions.promote(parent.ino, key.name, older[0])

    async def _delete_current(
        self, call: Call, bucket: Attributes, key: Key, cond: DeleteCondition | None
    ) -> None:
        """Delete the object at a key of an unversioned bucket (see L{_delete})."""
        tree = self._tree()
        assert call.bucket is not None
        if cond is None or cond.empty:
            try:
                await tree.delete(call.caller, bucket, key)
            except errors.FSError:
                raise from_failure(failure()) from None
            return
        lock = self._lock(call.bucket, key.text)
        await lock.acquire()
        try:
            try:
                current = await tree.lookup(call.caller, bucket, key)
            except S3Error as e:
                if e.code == "NoSuchKey":
                    return
                raise
            etag, _ = await self._object_etag(call, current)
            cond.check(etag, current)
            try:
                # Only the object checked: a plain PUT takes no key lock, and
                # one that landed since stays (as if after this DELETE).
                await tree.delete(call.caller, bucket, key, expect=current.ino)
            except errors.FSError:
                raise from_failure(failure()) from None
        finally:
            self._unlock(call.bucket, key.text, lock)

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
        for text, vid, cond in zip(req.keys, req.versions, req.conditions, strict=True):
            try:
                key = Key(text)
                done_vid, marker = await self._delete(call, bucket, key, cond, vid)
            except (S3Error, errors.FSError):
                err = from_failure(failure())
                error: list[tuple[str, Any]] = [("Key", text)]
                if vid is not None:
                    error.append(("VersionId", vid))
                error += [("Code", err.code), ("Message", err.message)]
                results.append(("Error", error))
                continue
            if not req.quiet:
                done: list[tuple[str, Any]] = [("Key", text)]
                if vid is not None:
                    done.append(("VersionId", vid))
                if marker:
                    done.append(("DeleteMarker", True))
                    if done_vid is not None:
                        done.append(("DeleteMarkerVersionId", done_vid))
                results.append(("Deleted", done))
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
        vid: str | None = None
        for n, v in parse_query(qs.encode("latin-1")):
            if n == b"versionId":
                vid = v.decode("utf-8", "replace")
        tree = self._tree()
        await self._expected_owner(call, "x-amz-source-expected-bucket-owner", src_bucket)
        sb = await tree.bucket(call.caller, src_bucket)
        key = Key(src_key)
        if key.marker:
            raise S3Error("InvalidArgument", "Directory markers cannot be copied")
        try:
            a, meta, src_vid = await self._resolve(call, sb, key, vid)
        except S3Error as e:
            if e.code == "MethodNotAllowed":
                # A delete marker cannot be a copy's source.
                raise S3Error(
                    "InvalidRequest", "The source of a copy request may not be a delete marker"
                ) from None
            raise
        etag = await tree.etag(call.caller, a, meta)
        self._conditions(call, etag, a.mtime_ns, prefix="x-amz-copy-source-")
        if src_vid is not None:
            call.request.setHeader(b"x-amz-copy-source-version-id", src_vid.encode("ascii"))
        return a, etag, meta, src_bucket, src_key

    async def _copy_data(
        self,
        call: Call,
        src: Attributes,
        first: int,
        length: int,
        dst: int,
        hashes: dict[str, Any],
        read: Callable[[int, int], Any] | None = None,
        sealer: sse.Sealer | None = None,
    ) -> None:
        """
        Copy C{length} plaintext bytes of C{src} from C{first} into file C{dst},
        hashing them; C{read} gives the source's plaintext (decrypting), C{sealer}
        encrypts what is written.
        """
        tree = self._tree()
        vfs = tree.vfs
        if read is None:

            async def read(off: int, n: int) -> bytes:
                return (await vfs.read(call.caller, src.ino, off, n)).data

        offset = 0
        at = 0
        while offset < length:
            data = await read(first + offset, min(1024 * 1024, length - offset))
            if not data:
                raise S3Error("InvalidRequest", "The source object changed during the copy")
            data = data[: length - offset]
            stored = sealer.feed(data) if sealer is not None else data
            work: list[defer.Deferred[Any]] = [
                defer.ensureDeferred(tree.hash(h, data)) for h in hashes.values()
            ]
            if stored:
                work.append(vfs.write(call.caller, dst, at, stored, False))
            await defer.gatherResults(work, consumeErrors=True).addErrback(first_error)
            offset += len(data)
            at += len(stored)
        if sealer is not None:
            tail = sealer.finish()
            if tail:
                await vfs.write(call.caller, dst, at, tail, False)
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
            raise directory_data("be copied to")
        from_version = "versionId=" in (call.header("x-amz-copy-source") or "")
        changes_encryption = any(h.startswith("x-amz-server-side-encryption") for h in call.headers)
        if (
            sb == call.bucket
            and sk == key.text
            and directive == "COPY"
            and not from_version
            and not changes_encryption
        ):
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
        tag_directive = (call.header("x-amz-tagging-directive") or "COPY").upper()
        if tag_directive not in ("COPY", "REPLACE"):
            raise S3Error("InvalidArgument", "Unknown tagging directive.")
        if tag_directive == "REPLACE":
            tags = self._request_tags(call)
        else:
            tags = tagging.decode(await tree.vfs.meta_get(call.caller, src.ino, tagging.TAGS_KEY))
        lock = objectlock.from_headers(call.headers, self._now_ns())
        await tree.check_writable(call.caller, bucket, key)
        # The source decrypts with its own key; the copy is encrypted as asked.
        read = self._plain_reader(call, src, src_meta, copy_source=True)
        src_size = src_meta.plain_size(src)
        enc = self._sse_for_write(call, (await tree.bucket_conf(bucket)).encryption)
        tmp_dir, tmp_name, tmp = await tree.temp_file(call.caller)
        stop = self._start_keepalive(call)
        try:
            hashes: dict[str, Any] = {"md5": hashlib.md5()}
            if algo is not None:
                hashes[algo] = checksums.new(algo)
            sealer = None
            if enc is not None:
                await self._seal(tmp.ino)
                sealer = sse.Sealer(sse.object_key(enc[1], enc[0].salt), 0)
            await self._copy_data(call, src, 0, src_size, tmp.ino, hashes, read, sealer)
            if src_meta.parts and src_meta.etag == src_etag:
                meta.etag, meta.parts = src_etag, src_meta.parts
            else:
                meta.etag = hashes["md5"].hexdigest()
            if algo is not None:
                meta.checksums = {algo: checksums.b64(hashes[algo].digest())}
                meta.checksum_type = "FULL_OBJECT"
            if enc is not None:
                enc[0].plain, enc[0].sizes = src_size, [src_size]
                meta.sse = enc[0].encode()
            a = await self._commit(call, bucket, key, tmp_dir, tmp_name, meta, tags, lock)
        except BaseException:
            stop()
            await tree.discard_temp(call.caller, tmp_dir, tmp_name)
            raise
        stop()
        for hname, hvalue in self._sse_headers(enc[0] if enc is not None else None).items():
            if not call.request.startedWriting:
                call.request.setHeader(hname.encode(), hvalue.encode())
        fields: list[tuple[str, Any]] = [
            ("LastModified", iso_date(a.mtime_ns)),
            ("ETag", f'"{meta.etag}"'),
        ]
        for algo_name, v in meta.checksums.items():
            fields.append(("Checksum" + algo_name.upper(), v))
        self._finish_xml(call, xmlio.document("CopyObjectResult", fields))

    # -- attributes ----------------------------------------------------------------------

    async def op_GetObjectAttributes(self, call: Call) -> None:
        """
        What S3 knows about an object without its bytes: the attributes named
        in C{x-amz-object-attributes} (ETag, Checksum, ObjectParts,
        StorageClass, ObjectSize); parts paged by C{x-amz-max-parts} and
        C{x-amz-part-number-marker}.
        """
        assert call.bucket is not None
        tree = self._tree()
        bucket = await tree.bucket(call.caller, call.bucket)
        wanted = {
            a.strip()
            for v in call.headers.get("x-amz-object-attributes", [])
            for a in v.split(",")
            if a.strip()
        }
        known = {"ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"}
        if not wanted or not wanted <= known:
            raise S3Error(
                "InvalidArgument",
                "Invalid attribute name specified",
                ArgumentName="x-amz-object-attributes",
            )
        a, meta, call.version_id = await self._resolve(
            call, bucket, self._key(call), call.query.get("versionId")
        )
        if a.is_reg and a.uid != call.caller.cred.uid:
            if not await tree.vfs.access(call.caller, a.ino, 0o4):
                raise S3Error("AccessDenied")
        info = sse.Sse.decode(meta.sse)
        if info is not None and info.kind == "SSE-C":
            self._sse_key(call, info)  # the customer's key is needed, as for HEAD
        fields: list[tuple[str, Any]] = []
        if "ETag" in wanted:
            fields.append(("ETag", await tree.etag(call.caller, a, meta)))
        if "Checksum" in wanted and meta.checksums:
            ck: list[tuple[str, Any]] = [
                ("Checksum" + algo.upper(), v) for algo, v in meta.checksums.items()
            ]
            if meta.checksum_type:
                ck.append(("ChecksumType", meta.checksum_type))
            fields.append(("Checksum", ck))
        count = meta.part_count()
        if "ObjectParts" in wanted and count is not None:
            mp = (call.header("x-amz-max-parts") or "1000").strip()
            marker_text = (call.header("x-amz-part-number-marker") or "0").strip()
            if not mp.isdigit() or not marker_text.isdigit():
                raise S3Error(
                    "InvalidArgument", "max-parts and part-number-marker must be integers"
                )
            max_parts, marker = min(int(mp), 1000), int(marker_text)
            numbers = list(range(marker + 1, count + 1))
            page = numbers[:max_parts]
            op: list[tuple[str, Any]] = [
                ("PartsCount", count),  # botocore's TotalPartsCount
                ("PartNumberMarker", marker),
                ("NextPartNumberMarker", page[-1] if page else marker),
                ("MaxParts", max_parts),
                ("IsTruncated", len(numbers) > max_parts),
            ]
            algo = next(iter(meta.checksums), None)
            for n in page:
                rng = meta.part_range(n)
                part: list[tuple[str, Any]] = [("PartNumber", n), ("Size", rng[1] if rng else 0)]
                if algo is not None and meta.part_sums and n <= len(meta.part_sums):
                    part.append(("Checksum" + algo.upper(), meta.part_sums[n - 1]))
                op.append(("Part", part))
            fields.append(("ObjectParts", op))
        if "StorageClass" in wanted:
            fields.append(("StorageClass", "STANDARD"))
        if "ObjectSize" in wanted:
            fields.append(("ObjectSize", meta.plain_size(a) if a.is_reg else 0))
        call.request.setHeader(b"Last-Modified", http_date(a.mtime_ns).encode())
        self._xml(call, xmlio.document("GetObjectAttributesResponse", fields))
