# -*- test-case-name: tests.s3.test_semantics -*-
"""
What every S3 operation shares: writing responses, reading and checking
request bodies (Content-MD5, payload hash, additional checksums), the user
metadata of a request, per-key serialisation of conditional writes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer

from claudefs_gateway import errors as fs_errors
from claudefs_gateway.core.log import Logger
from claudefs_gateway.fstypes import Attributes, SetAttrs
from claudefs_gateway.s3 import acl, checksums, sse, xmlio
from claudefs_gateway.s3._web import canonical_name, set_headers, set_plain_header
from claudefs_gateway.s3.auth import Authenticator
from claudefs_gateway.s3.body import Body
from claudefs_gateway.s3.bucketconf import BucketConf
from claudefs_gateway.s3.call import (
    DEFAULT_CONTENT_TYPE,
    MAX_USER_META,
    SMALL_WRITE,
    Call,
    Limits,
    first_error,
)
from claudefs_gateway.s3.errors import S3Error, error_fields
from claudefs_gateway.s3.keys import KeyLocks
from claudefs_gateway.s3.multipart import Uploads
from claudefs_gateway.s3.owners import canonical_id
from claudefs_gateway.s3.tree import STORED_HEADERS, ObjectMeta, Tree
from claudefs_gateway.vfs import inline
from claudefs_gateway.vfs.worm import SEAL_KEY

__all__ = ["Operations"]


#: Response header names, as twisted.web canonicalises them.
_CONTENT_LENGTH = canonical_name(b"Content-Length")
_VERSION_ID = canonical_name(b"x-amz-version-id")

#: The header names L{Operations._wanted_checksum} reads start with one of these.
_CHECKSUM_NAMES = ("x-amz-checksum-", "x-amz-trailer", "x-amz-sdk-checksum-")


class Readable(Protocol):
    """A request body as operations read it (L{Body}, or a POST form's file field)."""

    trailers: dict[str, str]

    async def read(self) -> bytes: ...


class Held:
    """
    A request body read into memory by L{Operations._receive_held}: its
    chunks and the digests of them, and whether that was all of it.

    @ivar sums: the additional checksums (base64), once C{complete}.
    """

    def __init__(self, body: Readable, hashes: dict[str, Any]) -> None:
        self.body = body
        self.hashes = hashes
        self.chunks: list[bytes] = []
        self.size = 0
        self.complete = False
        self.sums: dict[str, str] = {}


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
    keyring: sse.Keyring | None = None
    key_locks: KeyLocks

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

    def _version_header(self, call: Call) -> None:
        if call.version_id is not None:
            set_plain_header(
                call.request.responseHeaders, _VERSION_ID, call.version_id.encode("ascii")
            )

    def _xml(self, call: Call, body: bytes, status: int = 200) -> None:
        req = call.request
        self._version_header(call)
        req.setResponseCode(status)
        req.setHeader(b"Content-Type", b"application/xml")
        req.setHeader(b"Content-Length", str(len(body)).encode())
        req.write(body)
        req.finish()

    def _empty(self, call: Call, status: int = 200, headers: dict[str, str] | None = None) -> None:
        req = call.request
        self._version_header(call)
        req.setResponseCode(status)
        if headers:
            set_headers(req.responseHeaders, headers)
        if status != 204 and status != 304:
            set_plain_header(req.responseHeaders, _CONTENT_LENGTH, b"0")
        req.finish()

    # -- helpers ----------------------------------------------------------------------------

    def _tree(self) -> Tree:
        assert self.tree is not None
        return self.tree

    async def _bucket(self, call: Call) -> Attributes:
        """
        The bucket's directory as the caller finds it: the one the request's
        authorization looked up (L{Call.bucket_attrs}), else looked up now.

        @raise S3Error: NoSuchBucket, AccessDenied.
        """
        kept = call.bucket_attrs
        if kept is not None:
            return kept  # type: ignore[no-any-return]
        assert call.bucket is not None
        return await self._tree().bucket(call.caller, call.bucket)

    def _uploads(self) -> Uploads:
        assert self.uploads is not None
        return self.uploads

    def _owner(self, uid: int) -> list[tuple[str, Any]]:
        u = self.auth.users.by_uid(uid)
        return [
            ("ID", canonical_id(uid)),
            ("DisplayName", u.name if u is not None else str(uid)),
        ]

    async def _owned(self, call: Call) -> Attributes:
        """
        The request's bucket, if the caller owns it (or is root): a bucket's
        settings (versioning, tags, lock, policy...) are its owner's to change.

        @raise S3Error: NoSuchBucket, AccessDenied.
        """
        assert call.bucket is not None
        b = await self._tree().bucket(call.caller, call.bucket)
        if b.uid != call.caller.cred.uid and not call.caller.cred.is_root:
            raise S3Error("AccessDenied")
        return b

    async def _expected_owner(self, call: Call, header: str, bucket: str | None) -> None:
        """
        Refuse a request whose C{x-amz-expected-bucket-owner} (or, for a copy's
        source, C{x-amz-source-expected-bucket-owner}) does not name the
        bucket's owner: its canonical id, or its uid. A missing bucket is left
        for the operation to report.

        @raise S3Error: AccessDenied.
        """
        expected = call.header(header)
        if expected is None or bucket is None or call.op in ("CreateBucket", "ListBuckets"):
            return
        try:
            b = await self._tree().bucket(call.caller, bucket)
        except S3Error:
            return
        if expected.strip() not in (canonical_id(b.uid), str(b.uid)):
            raise S3Error("AccessDenied", "The bucket is owned by someone else")

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
        # The payload hash says whether the body is aws-chunked; Content-Encoding
        # alone (an SDK may add aws-chunked to an empty plain body) only with
        # the decoded length that a chunked body must announce.
        chunked = payload.startswith("STREAMING-") or (
            "aws-chunked" in encodings and call.header("x-amz-decoded-content-length") is not None
        )
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
            te = (call.header("transfer-encoding") or "").lower()
            if cl is None and "chunked" in te:
                # HTTP/1.1 chunked body of unknown length (twisted.web undoes the
                # chunking): streamed like any other, bounded by max_size.
                length = None
            elif cl is None:
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
        for name in call.headers:
            if name.startswith(_CHECKSUM_NAMES):
                break
        else:
            # None of the headers below: one scan of the names, not a dozen
            # look-ups (most requests, every small PUT of bench's s3.small).
            return default
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
        self, call: Call, body: Readable, hashes: dict[str, Any], raw_sha256: str | None = None
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
                    v = ", ".join(
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
        return self.key_locks.lock(bucket, key)

    def _unlock(self, bucket: str, key: str, lock: defer.DeferredLock) -> None:
        self.key_locks.unlock(bucket, key, lock)

    async def _write_body(
        self,
        call: Call,
        ino: int,
        body: Readable,
        hashes: dict[str, Any],
        sealer: sse.Sealer | None = None,
        renamed: bool = False,
        first: bytes = b"",
    ) -> int:
        """
        Stream the request body into file C{ino}, hashing the plaintext as it
        goes (and encrypting it with C{sealer}, if given); the plaintext size.
        C{first}: the body's start, read and hashed already (no sealer), too
        large for one small write.

        A body of at most L{SMALL_WRITE} bytes (the 4 KiB PUT most clients
        send) is kept in memory until it is complete and written with one
        stable write: one store transaction and one flush instead of a write
        and a commit. Larger bodies stream in unstable writes, committed at
        the end.

        @param renamed: the file is published by a durable rename as soon as
            this returns (PutObject). If the store's durable renames make the
            renamed file's data durable (C{renames_sync_data}), a small body
            is written unstable: the rename then flushes the data and the
            name together, one flush per PUT; nothing is acknowledged before
            it. Not for parts, which no rename publishes.
        """
        tree = self._tree()
        vfs = tree.vfs
        size = 0
        at = 0
        held: list[bytes] = []
        held_size = 0
        streaming = sealer is not None
        if first:
            assert sealer is None
            streaming = True
            await vfs.write(call.caller, ino, 0, first, False)
            size = at = len(first)
        while True:
            data = await body.read()
            if not data:
                break
            if not streaming:
                if held_size + len(data) <= SMALL_WRITE:
                    for h in hashes.values():
                        h.update(data)
                    held.append(data)
                    held_size += len(data)
                    size += len(data)
                    continue
                # Too large for one write: what was held goes first, then stream.
                streaming = True
                if held:
                    first = b"".join(held)
                    held = []
                    await vfs.write(call.caller, ino, 0, first, False)
                    at = len(first)
            stored = sealer.feed(data) if sealer is not None else data
            # Hash and write together: the CPU pool hashes while the store writes.
            work: list[defer.Deferred[Any]] = [
                defer.ensureDeferred(tree.hash(h, data)) for h in hashes.values()
            ]
            if stored:
                work.append(vfs.write(call.caller, ino, at, stored, False))
            await defer.gatherResults(work, consumeErrors=True).addErrback(first_error)
            size += len(data)
            at += len(stored)
        if not streaming:
            if held:
                # Stable: data and size on disk when it fires, as commit would make
                # them; or left to the publishing rename (see renamed).
                stable = not (renamed and tree.renames_sync_data)
                await vfs.write(call.caller, ino, 0, b"".join(held), stable)
            return size
        if sealer is not None:
            tail = sealer.finish()
            if tail:
                await vfs.write(call.caller, ino, at, tail, False)
        await vfs.commit(call.caller, ino)
        return size

    # -- server-side encryption (s3/sse.py) --------------------------------------------

    def _keyring(self) -> sse.Keyring:
        if self.keyring is None:
            raise S3Error("NotImplemented", "Server-side encryption needs a data directory")
        return self.keyring

    def _sse_for_write(
        self, call: Call, default: dict[str, Any] | None
    ) -> tuple[sse.Sse, bytes] | None:
        """
        How a new object is to be encrypted - by SSE-C headers, by
        C{x-amz-server-side-encryption}, or by the bucket's default - and its
        base key; None for plaintext.

        @raise S3Error: InvalidArgument (both kinds asked for, an unknown
            algorithm), NotImplemented (SSE-KMS).
        """
        customer = sse.customer_key(call.headers)
        asked = call.header("x-amz-server-side-encryption")
        if customer is not None and asked is not None:
            raise S3Error(
                "InvalidArgument",
                "Server Side Encryption with Customer provided key is incompatible with the encryption method specified",
            )
        salt = os.urandom(16)
        if customer is not None:
            key, md5 = customer
            return sse.Sse("SSE-C", salt, check=self._keyring().check(key), md5=md5), key
        if asked is None and default:
            asked = default.get("algorithm")
        if asked is None:
            return None
        if asked in ("aws:kms", "aws:kms:dsse"):
            raise S3Error(
                "NotImplemented", "SSE-KMS is not implemented by this gateway (see docs/s3.rst)"
            )
        if asked != "AES256":
            raise S3Error(
                "InvalidArgument",
                "The encryption method specified is not supported",
                ArgumentName="x-amz-server-side-encryption",
                ArgumentValue=asked,
            )
        data_key = os.urandom(32)
        kid, wrapped = self._keyring().wrap(data_key)
        return sse.Sse("AES256", salt, kid=kid, wrapped=wrapped), data_key

    def _sse_key(self, call: Call, info: sse.Sse, copy_source: bool = False) -> bytes:
        """
        The base key to read an encrypted object: SSE-S3's unwrapped, or the
        customer's, which the request must carry and which must be the one the
        object was written with.

        @raise S3Error: InvalidRequest (no key), AccessDenied (another key).
        """
        if info.kind == "AES256":
            assert info.kid is not None and info.wrapped is not None
            return self._keyring().unwrap(info.kid, info.wrapped)
        prefix = (
            "x-amz-copy-source-server-side-encryption-customer-"
            if copy_source
            else "x-amz-server-side-encryption-customer-"
        )
        customer = sse.customer_key(call.headers, prefix)
        if customer is None:
            raise S3Error(
                "InvalidRequest",
                "The object was stored using a form of Server Side Encryption. The correct parameters must be provided to retrieve the object.",
            )
        key, _ = customer
        if info.check is None or not hmac.compare_digest(self._keyring().check(key), info.check):
            raise S3Error("AccessDenied", "The provided customer key does not match this object")
        return key

    def _sse_headers(self, info: sse.Sse | None) -> dict[str, str]:
        """The encryption headers an answer about the object carries."""
        if info is None:
            return {}
        if info.kind == "AES256":
            return {"x-amz-server-side-encryption": "AES256"}
        return {
            "x-amz-server-side-encryption-customer-algorithm": "AES256",
            "x-amz-server-side-encryption-customer-key-MD5": info.md5 or "",
        }

    async def _seal(self, ino: int) -> None:
        """Keep file clients from an encrypted object's bytes (vfs: a sealed file)."""
        tree = self._tree()
        await tree.vfs.meta_set(tree.root_caller, ino, SEAL_KEY, b"1")

    def _plain_reader(
        self, call: Call, a: Attributes, meta: ObjectMeta, copy_source: bool = False
    ) -> Callable[[int, int], Any]:
        """C{read(offset, count)} of an object's plaintext (decrypting if it is encrypted)."""
        tree = self._tree()

        async def raw(off: int, n: int) -> bytes:
            r = await inline(tree.vfs.read, call.caller, a.ino, off, n)
            return r.data

        info = sse.Sse.decode(meta.sse)
        if info is None:
            return raw
        key = self._sse_key(call, info, copy_source)
        opener = sse.Opener(sse.object_key(key, info.salt), info.segments(), raw)
        return opener.read

    async def _receive(
        self,
        call: Call,
        ino: int,
        max_size: int,
        algo: str | None,
        sealer: sse.Sealer | None = None,
        renamed: bool = False,
        started: Held | None = None,
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """
        Receive and verify the body into C{ino}: (plaintext size, hashes,
        checksums). (C{renamed}: see L{_write_body}.) C{started}: what
        L{_receive_held} read of it already (plaintext only).
        """
        if started is not None:
            body, hashes, first = started.body, started.hashes, b"".join(started.chunks)
        else:
            body, hashes, first = self._body(call, max_size), self._hashes(call, algo), b""
        size = await self._write_body(call, ino, body, hashes, sealer, renamed, first)
        sums = self._check_digests(call, body, hashes)
        return size, hashes, sums

    def _hashes(self, call: Call, algo: str | None) -> dict[str, Any]:
        """The digests a body is checked against (and its ETag made from)."""
        assert call.auth is not None
        hashes: dict[str, Any] = {"md5": hashlib.md5()}
        payload = call.auth.payload
        if len(payload) == 64 and not payload.startswith("STREAMING"):
            hashes["sha256-payload"] = hashlib.sha256()
        if algo is not None:
            hashes[algo] = checksums.new(algo)
        return hashes

    async def _receive_held(self, call: Call, max_size: int, algo: str | None) -> Held:
        """
        Read the body into memory while it fits one small write
        (L{SMALL_WRITE}), hashing it: C{complete} if all of it did (then
        checked against its digests, which L{Held.sums} holds), else what
        was read so far, for L{_receive} to go on from.
        """
        body = self._body(call, max_size)
        hashes = self._hashes(call, algo)
        held = Held(body, hashes)
        while True:
            data = await body.read()
            if not data:
                break
            for h in hashes.values():
                h.update(data)
            held.chunks.append(data)
            held.size += len(data)
            if held.size > SMALL_WRITE:
                return held
        held.sums = self._check_digests(call, body, hashes)
        held.complete = True
        return held

    async def _object_etag(self, call: Call, a: Attributes) -> tuple[str, ObjectMeta]:
        tree = self._tree()
        meta = await tree.meta(call.caller, a)
        return await tree.etag(call.caller, a, meta), meta

    # -- ACLs and ownership (s3/acl.py; the operations are in ops/access.py) -------------

    def _ownership(self, conf: BucketConf) -> str:
        return conf.ownership or "ObjectWriter"

    async def _grants_for_write(
        self, call: Call, owner_uid: int, bucket: Attributes, conf: BucketConf
    ) -> list[acl.Grant] | None:
        """The grants a write's ACL headers ask for (None: the default, private)."""
        grants = acl.from_headers(call.headers, canonical_id(owner_uid), canonical_id(bucket.uid))
        if grants is None:
            return None
        self._check_acl_allowed(conf, grants, call.headers.get("x-amz-acl"))
        return grants

    def _check_acl_allowed(
        self, conf: BucketConf, grants: list[acl.Grant], canned: list[str] | None
    ) -> None:
        """Ownership controls and the public access block may refuse an ACL."""
        if self._ownership(conf) == "BucketOwnerEnforced":
            name = canned[0].strip() if canned else None
            if name not in ("private", "bucket-owner-full-control"):
                raise S3Error("AccessControlListNotSupported", "The bucket does not allow ACLs")
        pab = conf.public_access_block or {}
        if pab.get("BlockPublicAcls") and any(
            g.kind == "group" and g.id in (acl.ALL_USERS, acl.AUTH_USERS) for g in grants
        ):
            raise S3Error("AccessDenied", "The bucket's public access block refuses public ACLs")

    async def _apply_grants(
        self, call: Call, a: Attributes, grants: list[acl.Grant], is_dir: bool
    ) -> None:
        """Give a file or directory the mode and public flags an ACL maps to (as its owner)."""
        tree = self._tree()
        users = tree.vfs.users
        mapped = acl.map_grants(grants, a.uid, a.gid, is_dir, users)
        special = a.mode & 0o7000
        if (a.mode & 0o777) != mapped.mode:
            await tree.vfs.setattr(call.caller, a.ino, SetAttrs(mode=special | mapped.mode))
        return await self._store_public(call, a, mapped.public, is_dir)

    async def _store_public(
        self, call: Call, a: Attributes, public: frozenset[str], is_dir: bool
    ) -> None:
        tree = self._tree()
        if is_dir:
            b = a
            conf = await tree.bucket_conf(b)
            conf.acl = {"public": sorted(public)} if public else None
            await tree.set_bucket_conf(call.caller, b, conf)
        else:
            await tree.vfs.meta_set(call.caller, a.ino, acl.ACL_KEY, acl.encode_public(public))

    async def _owner_for_new_object(
        self, call: Call, bucket: Attributes, conf: BucketConf
    ) -> int | None:
        """
        The uid a new object is given to, if not its writer: the bucket's owner
        when the bucket enforces it (BucketOwnerEnforced), or prefers it and the
        writer grants it (BucketOwnerPreferred with bucket-owner-full-control).
        """
        own = self._ownership(conf)
        if bucket.uid == call.caller.cred.uid:
            return None
        canned = (call.header("x-amz-acl") or "").strip()
        if own == "BucketOwnerEnforced" or (
            own == "BucketOwnerPreferred" and canned == "bucket-owner-full-control"
        ):
            return bucket.uid
        return None

    async def _give_to(self, a: Attributes, uid: int) -> None:
        tree = self._tree()
        u = tree.vfs.users.by_uid(uid)
        gid = u.gid if u is not None else a.gid
        try:
            await tree.vfs.setattr(tree.root_caller, a.ino, SetAttrs(uid=uid, gid=gid))
        except fs_errors.FSError:
            self._log.failure("while giving an object to its bucket's owner")
