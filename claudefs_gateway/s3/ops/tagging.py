# -*- test-case-name: tests.s3.test_tagging -*-
"""Tags of objects (Get/Put/DeleteObjectTagging) and buckets (Get/Put/DeleteBucketTagging)."""

from __future__ import annotations

from typing import Any

from claudefs_gateway.s3 import tagging, xmlio
from claudefs_gateway.s3.call import Call
from claudefs_gateway.s3.errors import S3Error
from claudefs_gateway.s3.ops.objects import ObjectOps

__all__ = ["TaggingOps"]


def tag_set(tags: dict[str, str]) -> list[tuple[str, Any]]:
    return [("TagSet", [("Tag", [("Key", k), ("Value", tags[k])]) for k in sorted(tags)])]


class TaggingOps(ObjectOps):
    """Tags of objects and buckets."""

    async def op_GetObjectTagging(self, call: Call) -> None:
        assert call.bucket is not None
        tree = self._tree()
        bucket = await tree.bucket(call.caller, call.bucket)
        a, _, call.version_id = await self._resolve(
            call, bucket, self._key(call), call.query.get("versionId")
        )
        if not await tree.vfs.access(call.caller, a.ino, 0o4) and a.uid != call.caller.cred.uid:
            raise S3Error("AccessDenied")
        tags = tagging.decode(await tree.vfs.meta_get(call.caller, a.ino, tagging.TAGS_KEY))
        self._xml(call, xmlio.document("Tagging", tag_set(tags)))

    async def op_PutObjectTagging(self, call: Call) -> None:
        assert call.bucket is not None
        tree = self._tree()
        bucket = await tree.bucket(call.caller, call.bucket)
        a, _, call.version_id = await self._resolve(
            call, bucket, self._key(call), call.query.get("versionId")
        )
        tags = tagging.check(xmlio.parse_tagging(await self._read_small(call, 64 * 1024)))
        await tree.vfs.meta_set(call.caller, a.ino, tagging.TAGS_KEY, tagging.encode(tags))
        self._empty(call, 200)

    async def op_DeleteObjectTagging(self, call: Call) -> None:
        assert call.bucket is not None
        tree = self._tree()
        bucket = await tree.bucket(call.caller, call.bucket)
        a, _, call.version_id = await self._resolve(
            call, bucket, self._key(call), call.query.get("versionId")
        )
        await tree.vfs.meta_set(call.caller, a.ino, tagging.TAGS_KEY, None)
        self._empty(call, 204)

    # -- buckets -----------------------------------------------------------------------

    async def op_GetBucketTagging(self, call: Call) -> None:
        assert call.bucket is not None
        tree = self._tree()
        b = await tree.bucket(call.caller, call.bucket)
        conf = await tree.bucket_conf(b)
        if not conf.tags:
            raise S3Error("NoSuchTagSet", "The TagSet does not exist", BucketName=call.bucket)
        self._xml(call, xmlio.document("Tagging", tag_set(conf.tags)))

    async def op_PutBucketTagging(self, call: Call) -> None:
        tree = self._tree()
        b = await self._owned(call)
        tags = tagging.check(
            xmlio.parse_tagging(await self._read_small(call, 64 * 1024)), tagging.MAX_BUCKET_TAGS
        )
        conf = await tree.bucket_conf(b)
        conf.tags = tags or None
        await tree.set_bucket_conf(call.caller, b, conf)
        self._empty(call, 204)

    async def op_DeleteBucketTagging(self, call: Call) -> None:
        tree = self._tree()
        b = await self._owned(call)
        conf = await tree.bucket_conf(b)
        conf.tags = None
        await tree.set_bucket_conf(call.caller, b, conf)
        self._empty(call, 204)
