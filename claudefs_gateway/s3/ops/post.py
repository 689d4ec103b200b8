# -*- test-case-name: tests.s3.test_post -*-
"""
POST object: an upload from a browser's HTML form (docs/s3.rst "POST object").

The form carries what a PUT carries in headers (C{key}, C{Content-Type},
C{acl}, C{x-amz-meta-*}, C{tagging}, encryption, checksums...) as fields
before the C{file} field, and its authority as a policy document signed
with the user's secret (SigV2 or SigV4: L{Authenticator.authenticate_form}).
The policy says what the form may contain (L{claudefs_gateway.s3.post});
an unsigned form is an anonymous request, allowed where the bucket grants
everyone WRITE. Once the fields are read the request is a PutObject in every
other way: the same access checks, refusals of what is not honoured,
versioning, object lock, ACL, encryption and commit.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import quote, urlencode

from claudefs_gateway.s3 import checksums, objectlock, sse, xmlio
from claudefs_gateway.s3.call import Call
from claudefs_gateway.s3.errors import S3Error, directory_data
from claudefs_gateway.s3.headers import refuse
from claudefs_gateway.s3.keys import Key
from claudefs_gateway.s3.ops.access import AccessOps
from claudefs_gateway.s3.post import MAX_FIELDS, FormReader, check_policy, parse_policy

__all__ = ["PostOps"]

# Form fields that become the headers of the object written (beside x-amz-*).
_HEADER_FIELDS = {
    "content-type",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "expires",
    "content-md5",
}
# Fields that are the form's own business, never headers.
_FORM_FIELDS = {
    "key",
    "policy",
    "signature",
    "awsaccesskeyid",
    "acl",
    "tagging",
    "success_action_status",
    "success_action_redirect",
    "redirect",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-algorithm",
    "x-amz-date",
    "x-amz-security-token",
}


class _FilePart:
    """The file field as a request body (what L{Operations._write_body} reads)."""

    def __init__(self, pieces: Any, limit: int) -> None:
        self._pieces = pieces
        self._limit = limit
        self.size = 0
        self.trailers: dict[str, str] = {}

    async def read(self) -> bytes:
        try:
            data: bytes = await self._pieces.__anext__()
        except StopAsyncIteration:
            return b""
        self.size += len(data)
        if self.size > self._limit:
            raise S3Error(
                "EntityTooLarge",
                "Your proposed upload exceeds the maximum allowed size",
                MaxSizeAllowed=str(self._limit),
            )
        return data


class PostOps(AccessOps):
    """POST object (browser form uploads)."""

    async def op_PostObject(self, call: Call) -> None:
        assert call.bucket is not None
        ctype = call.header("content-type") or ""
        mime, _, params = ctype.partition(";")
        boundary = None
        for p in params.split(";"):
            k, _, v = p.strip().partition("=")
            if k.strip().lower() == "boundary":
                boundary = v.strip().strip('"')
        if mime.strip().lower() != "multipart/form-data" or not boundary:
            raise S3Error(
                "PreconditionFailed",
                "Bucket POST must be of the enclosure-type multipart/form-data",
                Condition="Bucket POST must be of the enclosure-type multipart/form-data",
            )
        raw = self._body(call, self.limits.max_object_size + MAX_FIELDS + 64 * 1024)
        form = FormReader(raw.read, boundary.encode("latin-1"))
        fields: dict[str, str] = {}
        total = 0
        filename = None
        file_type = None
        while True:
            part = await form.next_part()
            if part is None:
                raise S3Error(
                    "InvalidArgument",
                    "POST requires exactly one file upload per request.",
                    ArgumentName="file",
                )
            name = part["name"].lower()
            if name == "file":
                filename = part.get("filename", "")
                file_type = part.get("content-type")
                break
            value = await form.field()
            total += len(name) + len(value)
            if total > MAX_FIELDS:
                raise S3Error(
                    "MaxPostPreDataLengthExceeded",
                    "Your POST request fields preceding the upload file were too large.",
                )
            fields.setdefault(name, value)
        if "key" not in fields:
            raise S3Error(
                "InvalidArgument",
                "Bucket POST must contain a field named 'key'.  If it is specified, please check the order of the fields.",
                ArgumentName="key",
            )
        key_text = fields["key"].replace("${filename}", filename or "")
        if not key_text:
            raise S3Error("InvalidArgument", "The key must not be empty", ArgumentName="key")
        fields["key"] = key_text
        # Who signed the form (its policy), and what the policy allows.
        auth = self.auth.authenticate_form(call.source, fields)
        policy = parse_policy(fields["policy"]) if "policy" in fields else None
        if auth.user is not None:
            assert policy is not None
            check_policy(policy, fields, call.bucket, self.clock.seconds())
            tree = self._tree()
            call.user = auth.user
            call.auth = auth
            call.who = tree.vfs.caller(tree.export, call.source, auth.user.credentials, "s3")
        elif policy is not None:
            check_policy(policy, fields, call.bucket, self.clock.seconds())
        # From here on it is a PutObject whose headers are the form's fields.
        call.key = key_text
        call.headers = self._form_headers(fields)
        if file_type and "content-type" not in call.headers:
            # The file part's own type, when the form names none.
            call.headers["content-type"] = [file_type]
        refuse(call.op, call.headers)
        await self._authorize(call)
        status = fields.get("success_action_status", "")
        redirect = fields.get("success_action_redirect") or fields.get("redirect")
        limit = self.limits.max_object_size
        low = 0
        if policy is not None and policy.length_range is not None:
            low, high = policy.length_range
            limit = min(limit, high)
        body = _FilePart(form.part_data(), limit)
        etag = await self._post_write(call, body, low)
        location = self._location(call)
        if redirect:
            sep = "&" if "?" in redirect else "?"
            target = (
                redirect
                + sep
                + urlencode(
                    {"bucket": call.bucket, "key": key_text, "etag": f'"{etag}"'}, quote_via=quote
                )
            )
            self._empty(call, 303, {"Location": target, "ETag": f'"{etag}"'})
            return
        headers = {"ETag": f'"{etag}"', "Location": location}
        if status == "201":
            doc = xmlio.document(
                "PostResponse",
                [
                    ("Location", location),
                    ("Bucket", call.bucket),
                    ("Key", key_text),
                    ("ETag", f'"{etag}"'),
                ],
                namespace=False,
            )
            req = call.request
            for k, v in headers.items():
                req.setHeader(k.encode("latin-1"), v.encode("latin-1", "replace"))
            self._xml(call, doc, 201)
            return
        self._empty(call, 200 if status == "200" else 204, headers)

    def _form_headers(self, fields: dict[str, str]) -> dict[str, list[str]]:
        """The headers a PutObject would have carried for these fields."""
        out: dict[str, list[str]] = {}
        for name, value in fields.items():
            if name in _FORM_FIELDS or name.startswith("x-ignore-"):
                continue
            if name in _HEADER_FIELDS or name.startswith("x-amz-"):
                out[name] = [value]
        if "acl" in fields:
            out["x-amz-acl"] = [fields["acl"]]
        if "tagging" in fields:
            pairs = xmlio.parse_tagging(fields["tagging"].encode("utf-8", "surrogateescape"))
            out["x-amz-tagging"] = [urlencode(pairs)]
        return out

    def _location(self, call: Call) -> str:
        host = call.header("host") or "localhost"
        assert call.bucket is not None and call.key is not None
        scheme = "https" if call.request.isSecure() else "http"
        if call.vhost_bucket is not None:
            return f"{scheme}://{host}/{quote(call.key)}"
        return f"{scheme}://{host}/{quote(call.bucket)}/{quote(call.key)}"

    async def _post_write(self, call: Call, body: _FilePart, low: int) -> str:
        """Write the file field as the object: its ETag."""
        assert call.bucket is not None
        tree = self._tree()
        key = Key(call.key or "")
        if key.marker:
            raise directory_data()
        bucket = await tree.bucket(call.caller, call.bucket)
        meta = self._user_meta(call)
        algo = self._wanted_checksum(call)
        tags = self._request_tags(call)
        lock = objectlock.from_headers(call.headers, self._now_ns())
        await tree.check_writable(call.caller, bucket, key)
        enc = self._sse_for_write(call, (await tree.bucket_conf(bucket)).encryption)
        tmp_dir, tmp_name, tmp = await tree.temp_file(call.caller)
        try:
            sealer = None
            if enc is not None:
                await self._seal(tmp.ino)
                sealer = sse.Sealer(sse.object_key(enc[1], enc[0].salt), 0)
            hashes: dict[str, Any] = {"md5": hashlib.md5()}
            if algo is not None:
                hashes[algo] = checksums.new(algo)
            size = await self._write_body(call, tmp.ino, body, hashes, sealer)
            if size < low:
                raise S3Error(
                    "EntityTooSmall",
                    "Your proposed upload is smaller than the minimum allowed size",
                    MinSizeAllowed=str(low),
                    ProposedSize=str(size),
                )
            sums = self._check_digests(call, body, hashes)
            meta.etag = hashes["md5"].hexdigest()
            if algo is not None:
                meta.checksums = {algo: sums[algo]}
                meta.checksum_type = "FULL_OBJECT"
            if enc is not None:
                enc[0].plain, enc[0].sizes = size, [size]
                meta.sse = enc[0].encode()
            await self._commit(call, bucket, key, tmp_dir, tmp_name, meta, tags, lock)
        except BaseException:
            await tree.discard_temp(call.caller, tmp_dir, tmp_name)
            raise
        for k, v in self._sse_headers(enc[0] if enc is not None else None).items():
            call.request.setHeader(k.encode("latin-1"), v.encode("latin-1"))
        return meta.etag
