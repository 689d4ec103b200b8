# -*- test-case-name: tests.s3.test_bucketconf -*-
"""
What S3 keeps about a bucket besides its objects.

A bucket is a directory; its S3 settings (versioning state, object lock
configuration, tags, ACL, policy, public access block, ownership controls,
CORS, lifecycle rules, default encryption) are one JSON document in a hidden
attribute of that directory (the vfs's C{meta_set}, key C{s3.bucket}), never
visible over NFS or SMB. Each part is kept as the client gave it once
validated, so a GET returns what a PUT stored.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

__all__ = ["BucketConf", "BUCKET_KEY"]

BUCKET_KEY = b"s3.bucket"

_FIELDS = (
    "versioning",
    "versioned_since",
    "mfa_delete",
    "object_lock",
    "lock_rule",
    "tags",
    "acl",
    "policy",
    "public_access_block",
    "ownership",
    "cors",
    "lifecycle",
    "encryption",
)


@attrs.define
class BucketConf:
    """
    @ivar versioning: None (never enabled), C{"Enabled"} or C{"Suspended"}.
    @ivar versioned_since: when versioning was first enabled (ns); files
        written over NFS or SMB before then are the C{null} version.
    @ivar object_lock: object lock is enabled (only at creation, or on a
        versioned bucket).
    @ivar lock_rule: the default retention: C{{"mode": ..., "days"|"years": n}}.
    @ivar tags: bucket tags, key → value.
    @ivar acl: the bucket's ACL (see L{claudefs_gateway.s3.acl}).
    @ivar policy: the bucket policy document, as stored text.
    """

    versioning: str | None = None
    versioned_since: int | None = None
    mfa_delete: bool = False
    object_lock: bool = False
    lock_rule: dict[str, Any] | None = None
    tags: dict[str, str] | None = None
    acl: dict[str, Any] | None = None
    policy: str | None = None
    public_access_block: dict[str, bool] | None = None
    ownership: str | None = None
    cors: list[dict[str, Any]] | None = None
    lifecycle: list[dict[str, Any]] | None = None
    encryption: dict[str, Any] | None = None

    @property
    def versioned(self) -> bool:
        """Versioning was ever enabled: objects carry version ids."""
        return self.versioning is not None

    def encode(self) -> bytes:
        d = {f: getattr(self, f) for f in _FIELDS if getattr(self, f) not in (None, False)}
        return json.dumps(d, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    @classmethod
    def decode(cls, raw: bytes | None) -> BucketConf:
        if not raw:
            return cls()
        try:
            d = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return cls()
        if not isinstance(d, dict):
            return cls()
        return cls(**{f: d[f] for f in _FIELDS if f in d})
