# -*- test-case-name: tests.s3.test_tagging -*-
"""
Tags on objects and buckets.

An object's tags are a private attribute of its file (the vfs's C{meta_set},
key C{s3.tags}), so they follow the object through renames over any protocol
and are never shown to NFS or SMB clients as data; a bucket's tags are in its
settings (L{claudefs_gateway.s3.bucketconf}). AWS's limits apply: at most 10
tags per object and 50 per bucket, keys of 1-128 characters, values of at
most 256, no key twice, none starting with C{aws:}.
"""

from __future__ import annotations

import json
from urllib.parse import unquote_plus

from claudefs_gateway.s3.errors import S3Error

__all__ = ["TAGS_KEY", "parse_header", "check", "encode", "decode"]

TAGS_KEY = b"s3.tags"
MAX_OBJECT_TAGS = 10
MAX_BUCKET_TAGS = 50


def parse_header(value: str) -> list[tuple[str, str]]:
    """C{x-amz-tagging}: a URL-encoded query string C{k1=v1&k2=v2}."""
    pairs = []
    for part in value.split("&"):
        if not part:
            continue
        k, _, v = part.partition("=")  # a key without "=" has an empty value
        try:
            pairs.append((unquote_plus(k, errors="strict"), unquote_plus(v, errors="strict")))
        except UnicodeDecodeError:
            raise S3Error(
                "InvalidArgument",
                "The header 'x-amz-tagging' shall be encoded as UTF-8 then URLEncoded",
            ) from None
    return pairs


def check(tags: list[tuple[str, str]], limit: int = MAX_OBJECT_TAGS) -> dict[str, str]:
    """
    Validated tags as a dict.

    @raise S3Error: BadRequest-style InvalidTag for a limit broken.
    """
    if len(tags) > limit:
        raise S3Error("InvalidTag", f"Object tags cannot be greater than {limit}")
    out: dict[str, str] = {}
    for k, v in tags:
        if not 1 <= len(k) <= 128:
            raise S3Error("InvalidTag", "The TagKey you have provided is invalid")
        if len(v) > 256:
            raise S3Error("InvalidTag", "The TagValue you have provided is invalid")
        if k in out:
            raise S3Error("InvalidTag", "Cannot provide multiple Tags with the same key")
        if k.lower().startswith("aws:"):
            raise S3Error("InvalidTag", "Your TagKey cannot be prefixed with aws:")
        out[k] = v
    return out


def encode(tags: dict[str, str]) -> bytes | None:
    """The stored form (None: no tags, nothing stored)."""
    if not tags:
        return None
    return json.dumps(tags, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode(raw: bytes | None) -> dict[str, str]:
    if not raw:
        return {}
    try:
        d = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}
    return {str(k): str(v) for k, v in d.items()} if isinstance(d, dict) else {}
