# -*- test-case-name: tests.s3.test_semantics -*-
"""
Multipart uploads: create, parts (uploaded or copied), complete, abort, list.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from claudefs_gateway import errors
from claudefs_gateway.fstypes import Attributes
from claudefs_gateway.s3 import checksums, objectlock, sse, xmlio
from claudefs_gateway.s3.call import (
    COMPLETE_BODY,
    MAX_PART_SIZE,
    Call,
    iso_date,
    unquote_etag,
)
from claudefs_gateway.s3.errors import S3Error, directory_data
from claudefs_gateway.s3.keys import Key
from claudefs_gateway.s3.multipart import MAX_PART_NUMBER, Upload, is_upload_id, part_name
from claudefs_gateway.s3.ops.objects import ObjectOps
from claudefs_gateway.s3.ranges import Unsatisfiable, parse_copy_range
from claudefs_gateway.s3.tree import ObjectMeta, rle
from claudefs_gateway.vfs.worm import Retention

__all__ = ["MultipartOps"]


class MultipartOps(ObjectOps):
    """Multipart uploads: create, parts (uploaded or copied), complete, abort, list."""

    # -- multipart -------------------------------------------------------------------------------

    async def op_CreateMultipartUpload(self, call: Call) -> None:
        assert call.bucket is not None
        tree = self._tree()
        key = self._key(call)
        if key.marker:
            raise directory_data()
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
        tags = self._request_tags(call)
        lock = objectlock.from_headers(call.headers, self._now_ns())
        await self._grants_for_write(
            call, call.caller.cred.uid, bucket, await tree.bucket_conf(bucket)
        )
        if lock is not None and not (await tree.bucket_conf(bucket)).object_lock:
            raise S3Error("InvalidRequest", "Bucket is missing Object Lock Configuration")
        enc = self._sse_for_write(call, (await tree.bucket_conf(bucket)).encryption)
        if enc is not None and ctype == "FULL_OBJECT":
            raise S3Error(
                "NotImplemented",
                "FULL_OBJECT checksums of encrypted multipart uploads are not implemented by this gateway",
            )
        upload = await self._uploads().create(
            call.caller,
            call.bucket,
            key.text,
            meta,
            algo,
            ctype,
            tags,
            lock.encode() if lock is not None else None,
            {
                h: v
                for h, v in call.headers.items()
                if h == "x-amz-acl" or h.startswith("x-amz-grant-")
            },
            enc[0].encode() if enc is not None else None,
        )
        headers = self._sse_headers(enc[0] if enc is not None else None)
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

    async def _upload(self, call: Call) -> Upload:
        assert call.bucket is not None
        uid = call.query.get("uploadId", "")
        return await self._uploads().find(uid, call.bucket, call.key, call.caller)

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
        """
        Stage one part with C{fill(upload, ino, hashes)} (which returns the
        part's checksums and plaintext size) and rename it into place.
        """
        uploads = self._uploads()
        upload = await self._upload(call)
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
                sums, plain = await fill(upload, tmp.ino, hashes)
                a = await tree.vfs.getattr(call.caller, tmp.ino)
                meta = ObjectMeta(
                    etag=hashes["md5"].hexdigest(), mtime_ns=a.mtime_ns, size=a.size, checksums=sums
                )
                if upload.sse is not None:
                    meta.sse = {"p": plain}
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

    def _part_sealer(self, call: Call, upload: Upload) -> sse.Sealer | None:
        """What encrypts a part of an encrypted upload (SSE-C: with the request's key, which must be the upload's)."""
        info = sse.Sse.decode(upload.sse)
        if info is None:
            if sse.customer_key(call.headers) is not None:
                raise S3Error(
                    "InvalidRequest", "The upload was not created with customer-provided keys"
                )
            return None
        key = self._upload_key(call, info)
        return sse.Sealer(sse.object_key(key, info.salt), self._part_number(call))

    def _upload_key(self, call: Call, info: sse.Sse) -> bytes:
        """An encrypted upload's base key; for SSE-C the request's, which must be the upload's."""
        try:
            return self._sse_key(call, info)
        except S3Error as e:
            if e.code != "AccessDenied":
                raise
            # Another key than the upload's: AWS's answer is 400.
            raise S3Error(
                "InvalidArgument",
                "The provided encryption parameters did not match the ones used originally.",
            ) from None

    async def op_UploadPart(self, call: Call) -> None:
        async def fill(
            upload: Upload, ino: int, hashes: dict[str, Any]
        ) -> tuple[dict[str, str], int]:
            algo = self._wanted_checksum(call, upload.algorithm)
            sealer = self._part_sealer(call, upload)
            size, h, sums = await self._receive(call, ino, MAX_PART_SIZE, algo, sealer)
            hashes["md5"] = h["md5"]
            return sums, size

        meta, _ = await self._part(call, fill)
        headers = {"ETag": f'"{meta.etag}"'}
        headers.update(self._sse_headers(sse.Sse.decode((await self._upload(call)).sse)))
        for algo, v in meta.checksums.items():
            headers[checksums.header(algo)] = v
        self._empty(call, 200, headers)

    async def op_UploadPartCopy(self, call: Call) -> None:
        src, _, src_meta, _, _ = await self._source(call)
        read = self._plain_reader(call, src, src_meta, copy_source=True)
        src_size = src_meta.plain_size(src)

        async def fill(
            upload: Upload, ino: int, hashes: dict[str, Any]
        ) -> tuple[dict[str, str], int]:
            rng_text = call.header("x-amz-copy-source-range")
            if rng_text is not None:
                try:
                    rng = parse_copy_range(rng_text, src_size)
                except Unsatisfiable as e:
                    raise S3Error("InvalidRange", str(e)) from None
                except ValueError as e:
                    raise S3Error(
                        "InvalidArgument", str(e), ArgumentName="x-amz-copy-source-range"
                    ) from None
                first, length = rng.first, rng.length
            else:
                first, length = 0, src_size
            if length > MAX_PART_SIZE:
                raise S3Error("EntityTooLarge")
            algo = upload.algorithm
            if algo is not None:
                hashes[algo] = checksums.new(algo)
            sealer = self._part_sealer(call, upload)
            await self._copy_data(call, src, first, length, ino, hashes, read, sealer)
            sums = {algo: checksums.b64(hashes[algo].digest())} if algo is not None else {}
            return sums, length

        meta, a = await self._part(call, fill)
        for hname, hvalue in self._sse_headers(
            sse.Sse.decode((await self._upload(call)).sse)
        ).items():
            call.request.setHeader(hname.encode(), hvalue.encode())
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
        try:
            upload = await self._upload(call)
        except S3Error as e:
            if e.code != "NoSuchUpload":
                raise
            await self._complete_again(call, e)
            return
        tree = self._tree()
        key = self._key(call)
        bucket = await tree.bucket(call.caller, call.bucket)
        raw = await self._read_small(call, COMPLETE_BODY)
        wanted = xmlio.parse_complete(raw)
        info = sse.Sse.decode(upload.sse)
        if info is not None and info.kind != "AES256":
            # SSE-C: Complete carries the upload's key too (as AWS requires).
            self._upload_key(call, info)
        if upload.completing:
            raise S3Error("OperationAborted", "The upload is already being completed")
        if upload.active:
            raise S3Error("OperationAborted", "Parts of this upload are still being written")
        upload.completing = True
        try:
            await self._complete(call, upload, bucket, key, wanted)
        except S3Error as e:
            if e.code != "NoSuchUpload":
                raise
            # Its directory is gone: completed (or aborted) through another
            # gateway since this one loaded it. A retried Complete of it
            # answers as there (L{_complete_again}).
            uploads.lost(upload)
            result = await self._completed_object(call, wanted)
            if result is None:
                raise
            self._finish_xml(call, result)
            return
        finally:
            upload.completing = False
        uploads.touch(upload)

    async def _complete_again(self, call: Call, missing: S3Error) -> None:
        """
        A CompleteMultipartUpload retried after it succeeded (its answer was
        lost): AWS answers 200 with the same result, as long as the parts list
        is the same. Otherwise the upload is no more: C{missing}.

        This gateway remembers the answers of the uploads it completed, and
        gives one while the object it made is still the key's; one
        completed through another gateway (a retry that lands on another
        C{--workers} worker or gateway) is recognised by the object it made,
        while that object is unchanged (L{_completed_object}).
        """
        upload_id = call.query.get("uploadId", "")
        done = self._uploads().completed.get(upload_id)
        if done is None:
            if not is_upload_id(upload_id):
                raise missing
            raw = await self._read_small(call, COMPLETE_BODY)
            result = await self._completed_object(call, xmlio.parse_complete(raw))
            if result is None:
                raise missing
            self._xml(call, result)
            return
        if (
            done.bucket != call.bucket
            or done.key != call.key
            or call.caller.cred.uid not in (done.uid, 0)
        ):
            raise missing
        raw = await self._read_small(call, COMPLETE_BODY)
        wanted = xmlio.parse_complete(raw)
        if [(p.number, unquote_etag(p.etag)) for p in wanted] != done.parts:
            raise missing
        try:
            bucket = await self._tree().bucket(call.caller, call.bucket)
            a = await self._tree().lookup(call.caller, bucket, self._key(call))
        except (S3Error, errors.NotFound, errors.Stale):
            raise missing from None
        if a.ino != done.ino or a.mtime_ns != done.mtime_ns:
            # The object it made was replaced (a PUT, another upload, a
            # delete) or changed since: the upload is no more.
            raise missing
        call.version_id = done.version_id
        self._xml(call, done.result)

    async def _completed_object(self, call: Call, wanted: list[Any]) -> bytes | None:
        """
        The answer of a Complete with the parts C{wanted} if the key's object
        is the one such a Complete made and is unchanged since, else None.

        What the store keeps of the object says so, with no record of the
        upload: its ETag is the MD5 of the parts' MD5s (their ETags) and their
        count, its part sizes are kept only while no file client or later
        write has changed it, and it belongs to the caller (as the upload did).
        """
        assert call.bucket is not None
        try:
            md5s = [bytes.fromhex(unquote_etag(p.etag)) for p in wanted]
        except ValueError:
            return None
        if not md5s:
            return None
        tree = self._tree()
        key = self._key(call)
        try:
            bucket = await tree.bucket(call.caller, call.bucket)
            a = await tree.lookup(call.caller, bucket, key)
        except S3Error:
            return None
        if call.caller.cred.uid not in (a.uid, 0):
            return None
        meta = await tree.meta(call.caller, a)
        if meta.part_count() != len(md5s) or meta.etag != checksums.multipart_etag(md5s):
            return None
        # The version the Complete made and answered (an enabled bucket's).
        call.version_id = meta.vid
        return self._complete_result(call, key, meta)

    def _complete_result(self, call: Call, key: Key, meta: ObjectMeta) -> bytes:
        """The CompleteMultipartUploadResult document for the object C{meta} describes."""
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
        return xmlio.document("CompleteMultipartUploadResult", fields)

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
            if got is None or got[1].etag != unquote_etag(p.etag):
                raise S3Error(
                    "InvalidPart",
                    "One or more of the specified parts could not be found. The part may not have been uploaded, or the specified entity tag may not have matched the part's entity tag.",
                    UploadId=upload.id,
                    PartNumber=str(p.number),
                    ETag=p.etag,
                )
            a, meta = got
            plain = int(meta.sse["p"]) if meta.sse else a.size
            if plain < self.limits.multipart_chunk_min and i != len(wanted) - 1:
                raise S3Error(
                    "EntityTooSmall",
                    "Your proposed upload is smaller than the minimum allowed object size.",
                    ProposedSize=str(plain),
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
            sizes.append(plain)
        expected = call.header("x-amz-mp-object-size")
        if expected is not None and (not expected.isdigit() or int(expected) != sum(sizes)):
            raise S3Error(
                "InvalidRequest",
                "The object size of the parts does not match x-amz-mp-object-size",
                ArgumentName="x-amz-mp-object-size",
                ArgumentValue=expected,
            )
        await tree.check_writable(call.caller, bucket, key)
        name = b"assembly"
        stop = self._start_keepalive(call)
        try:
            try:
                await tree.vfs.remove(call.caller, upload.ino, name)
            except errors.NotFound:
                pass
            out = await tree.vfs.create(call.caller, upload.ino, name, 0o600, exclusive=True)
            info = sse.Sse.decode(upload.sse)
            if info is not None:
                # Encrypted parts are concatenated as stored: each part is its
                # own segment (s3/sse.py), numbered by its part number.
                await self._seal(out.ino)
                info.numbers = [p.number for p in wanted]
                info.sizes = list(sizes)
                info.plain = sum(sizes)
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
            if info is not None:
                meta.sse = info.encode()
            if upload.algorithm is not None:
                if full is not None:
                    meta.checksums = {upload.algorithm: checksums.b64(full.digest())}
                    meta.checksum_type = "FULL_OBJECT"
                else:
                    meta.checksums = {
                        upload.algorithm: checksums.composite(upload.algorithm, part_sums)
                    }
                    meta.checksum_type = "COMPOSITE"
                meta.part_sums = [checksums.b64(x) for x in part_sums]
                given = call.header(checksums.header(upload.algorithm))
                if given is not None and given.strip() != meta.checksums[upload.algorithm]:
                    raise S3Error(
                        "BadDigest",
                        f"The {upload.algorithm.upper()} you specified did not match the calculated checksum.",
                    )
            made = await self._commit(
                call,
                bucket,
                key,
                upload.ino,
                name,
                meta,
                upload.tags,
                Retention.decode(upload.lock),
                upload.acl_headers or {},
            )
        except BaseException:
            stop()
            try:
                await tree.vfs.remove(tree.root_caller, upload.ino, name)
            except errors.FSError:
                pass
            raise
        stop()
        assert call.bucket is not None
        result = self._complete_result(call, key, meta)
        if not call.request.startedWriting:
            for hname, hvalue in self._sse_headers(sse.Sse.decode(meta.sse)).items():
                call.request.setHeader(hname.encode(), hvalue.encode())
        parts = [(p.number, unquote_etag(p.etag)) for p in wanted]
        await uploads.finished(upload, parts, result, made, call.version_id)
        self._finish_xml(call, result)

    async def op_AbortMultipartUpload(self, call: Call) -> None:
        upload = await self._upload(call)
        await self._uploads().abort(upload)
        self._empty(call, 204)

    async def op_ListParts(self, call: Call) -> None:
        upload = await self._upload(call)
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
                ("Size", int(meta.sse["p"]) if meta.sse else a.size),
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
        # Uploads other gateways on the namespace made, completed or aborted.
        await self._uploads().refresh()
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
