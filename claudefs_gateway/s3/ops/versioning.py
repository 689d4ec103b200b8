# -*- test-case-name: tests.s3.test_versions -*-
"""
Bucket versioning: its state (Get/PutBucketVersioning) and ListObjectVersions.

How versions are kept is L{claudefs_gateway.s3.versions}; how PUT, GET, COPY
and DELETE treat them is in L{claudefs_gateway.s3.ops.objects}.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from claudefs_gateway import errors
from claudefs_gateway.fstypes import Attributes
from claudefs_gateway.s3 import xmlio
from claudefs_gateway.s3.call import Call, failure, iso_date
from claudefs_gateway.s3.errors import S3Error, from_failure
from claudefs_gateway.s3.keys import Key
from claudefs_gateway.s3.listing import Item, Lister
from claudefs_gateway.s3.ops.base import Operations
from claudefs_gateway.s3.tree import EMPTY_MD5
from claudefs_gateway.s3.versions import GONE, NULL, Version, Versions, valid_version_id

__all__ = ["VersioningOps"]


class VersioningOps(Operations):
    """Bucket versioning state, and the listing of every version."""

    async def op_GetBucketVersioning(self, call: Call) -> None:
        assert call.bucket is not None
        tree = self._tree()
        b = await tree.bucket(call.caller, call.bucket)
        conf = await tree.bucket_conf(b)
        fields: list[tuple[str, Any]] = []
        if conf.versioning is not None:
            fields.append(("Status", conf.versioning))
            fields.append(("MfaDelete", "Disabled"))
        self._xml(call, xmlio.document("VersioningConfiguration", fields))

    async def op_PutBucketVersioning(self, call: Call) -> None:
        """
        Enable or suspend versioning. A bucket once versioned is never
        unversioned again (as in AWS); one with object lock cannot be
        suspended; MFA delete is refused (there are no MFA devices).
        """
        b = await self._owned(call)
        tree = self._tree()
        raw = await self._read_small(call, 64 * 1024)
        status, mfa = xmlio.parse_versioning(raw)
        if status == "Enabled" and not self.limits.versioning:
            raise S3Error(
                "NotImplemented",
                "Versioning is not enabled on this gateway (s3.enable_versioning: false)",
            )
        if mfa is not None and mfa.lower() == "enabled":
            raise S3Error("NotImplemented", "MFA delete is not implemented by this gateway")
        conf = await tree.bucket_conf(b)
        if status is not None:
            if status == "Suspended" and conf.object_lock:
                raise S3Error(
                    "InvalidBucketState",
                    "An Object Lock configuration is present on this bucket, so the versioning state cannot be changed.",
                )
            if status == "Enabled" and conf.versioned_since is None:
                conf.versioned_since = int(self.clock.seconds() * 1_000_000_000)
            if status == "Suspended" and conf.versioning is None:
                # Suspending a bucket never versioned changes nothing visible,
                # but from now on it reports its state (as AWS does).
                conf.versioned_since = int(self.clock.seconds() * 1_000_000_000)
            conf.versioning = status
        await tree.set_bucket_conf(call.caller, b, conf)
        self._empty(call, 200)

    # -- listing ---------------------------------------------------------------------------

    async def op_ListObjectVersions(self, call: Call) -> None:
        """
        Every version and delete marker of every key, keys in S3 order, each
        key's newest first. An unversioned bucket has one version per object,
        C{VersionId} C{null} (what SDKs and s3-tests use to empty a bucket).
        Paged by C{key-marker} and C{version-id-marker}; C{max-keys} counts
        versions, delete markers and common prefixes.
        """
        assert call.bucket is not None
        tree = self._tree()
        bucket = await tree.bucket(call.caller, call.bucket)
        conf = await tree.bucket_conf(bucket)
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
        key_marker = q.get("key-marker") or None
        vid_marker = q.get("version-id-marker") or None
        if vid_marker and not key_marker:
            raise S3Error(
                "InvalidArgument",
                "A version-id marker cannot be specified without a key marker.",
                ArgumentName="version-id-marker",
                ArgumentValue=vid_marker,
            )
        if vid_marker and not valid_version_id(vid_marker):
            raise S3Error("InvalidArgument", "Invalid version id marker")

        def k(text: str) -> str:
            return quote(text, safe="/") if enc == "url" else text

        entries: list[tuple[str, Any]] = []
        last: tuple[str, str | None] | None = None
        truncated = False
        count = 0

        async def emit_key(key: str, versions: list[Version], after: str | None) -> bool:
            """Add a key's versions (after version C{after}); false once max-keys is reached."""
            nonlocal count, last, truncated
            skipping = after is not None
            for i, v in enumerate(versions):
                if skipping:
                    if v.vid == after:
                        skipping = False
                    continue
                if count == max_keys:
                    truncated = True
                    return False
                # The latest is the file now at the key or, with none, a delete
                # marker; a key whose file a file client removed has none.
                latest = i == 0 and (v.current or v.delete_marker)
                try:
                    entry = await self._version_entry(call, k(key), v, latest)
                except GONE:
                    continue  # removed since it was found (its ETag read its bytes)
                entries.append(entry)
                count += 1
                last = (key, v.vid)
            return True

        if max_keys > 0 and key_marker is not None and vid_marker is not None:
            if key_marker.startswith(prefix):
                versions = await self._key_versions(call, bucket, key_marker, conf)
                await emit_key(key_marker, versions, vid_marker)
        lister = Lister(tree, call.caller, bucket, with_versions=conf.versioned)
        if not truncated and max_keys > 0:
            try:
                page = await lister.page(
                    prefix.encode("utf-8", "surrogateescape"),
                    delimiter.encode("utf-8", "surrogateescape") if delimiter else None,
                    key_marker.encode("utf-8", "surrogateescape") if key_marker else None,
                    max_keys - count + 1,
                )
            except errors.FSError:
                raise from_failure(failure(), missing="NoSuchBucket") from None
            for it in page.items:
                key = it.key.decode("utf-8", "surrogateescape")
                if it.prefix:
                    if count == max_keys:
                        truncated = True
                        break
                    entries.append(("CommonPrefixes", [("Prefix", k(key))]))
                    count += 1
                    last = (key, None)
                    continue
                versions = await self._item_versions(call, it, conf)
                if not await emit_key(key, versions, None):
                    break
            else:
                truncated = truncated or page.truncated
        fields: list[tuple[str, Any]] = [
            ("Name", call.bucket),
            ("Prefix", k(prefix)),
            ("KeyMarker", k(key_marker or "")),
            ("VersionIdMarker", vid_marker or ""),
            ("MaxKeys", max_keys),
        ]
        if delimiter:
            fields.append(("Delimiter", k(delimiter)))
        if enc:
            fields.append(("EncodingType", enc))
        fields.append(("IsTruncated", truncated))
        if truncated and last is not None:
            fields.append(("NextKeyMarker", k(last[0])))
            if last[1] is not None:
                fields.append(("NextVersionIdMarker", last[1]))
        self._xml(call, xmlio.document("ListVersionsResult", fields + entries))

    async def _version_entry(
        self, call: Call, key: str, v: Version, latest: bool
    ) -> tuple[str, Any]:
        if v.delete_marker:
            return (
                "DeleteMarker",
                [
                    ("Key", key),
                    ("VersionId", v.vid),
                    ("IsLatest", latest),
                    ("LastModified", iso_date(v.time_ns)),
                    ("Owner", self._owner(v.attrs.uid)),
                ],
            )
        a = v.attrs
        if a.is_dir:
            etag, size = EMPTY_MD5, 0
        else:
            etag = await self._tree().etag(call.caller, a, v.meta)
            size = v.meta.plain_size(a)
        return (
            "Version",
            [
                ("Key", key),
                ("VersionId", v.vid),
                ("IsLatest", latest),
                ("LastModified", iso_date(v.time_ns if not v.current else a.mtime_ns)),
                ("ETag", f'"{etag}"'),
                ("Size", size),
                ("StorageClass", "STANDARD"),
                ("Owner", self._owner(a.uid)),
            ],
        )

    async def _item_versions(self, call: Call, it: Item, conf: Any) -> list[Version]:
        """A listed key's versions, newest first: its file (if any), then the store's."""
        tree = self._tree()
        out: list[Version] = []
        name = it.key.rstrip(b"/").rsplit(b"/", 1)[-1]
        a = it.attrs
        if it.current:
            try:
                if a is None:
                    a = await tree.vfs.lookup(call.caller, it.parent, name)
                meta = await tree.meta(call.caller, a)
            except GONE:
                # Removed since the directory was listed (a DELETE of it, or
                # of its version): only the store's versions are left.
                a = None
        if a is not None and it.current:
            if a.is_dir or not conf.versioned:
                out.append(Version(NULL, a.mtime_ns, a, meta, True))
            else:
                vid, t = Versions(tree).effective(conf, a, meta)
                out.append(Version(vid, t, a, meta, True))
        if conf.versioned and (a is None or not a.is_dir):
            out += await Versions(tree).older(it.parent, name)
        return out

    async def _key_versions(
        self, call: Call, bucket: Attributes, text: str, conf: Any
    ) -> list[Version]:
        """The versions of one key, newest first (to resume a page inside it)."""
        tree = self._tree()
        try:
            key = Key(text)
        except S3Error:
            return []
        parent = await tree.parent_dir(call.caller, bucket, key.parents)
        if parent is None:
            return []
        out: list[Version] = []
        try:
            a: Attributes | None = await tree.lookup(call.caller, bucket, key)
        except S3Error:
            a = None
        if a is not None:
            try:
                meta = await tree.meta(call.caller, a)
            except GONE:
                a = None  # removed since its lookup
        if a is not None:
            vid, t = (
                Versions(tree).effective(conf, a, meta)
                if conf.versioned and not a.is_dir
                else (NULL, a.mtime_ns)
            )
            out.append(Version(vid, t, a, meta, True))
        if conf.versioned and not key.marker:
            out += await Versions(tree).older(parent.ino, key.name)
        return out
