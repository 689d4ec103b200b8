# -*- test-case-name: tests.s3.test_keys -*-
"""
Bucket names and object keys, and how they map onto the file tree.

A bucket is a directory at the top of the S3 root; a key's C{/}-separated
segments are nested directories and, last, a file. A key ending in C{/} is a
directory marker (the directory itself). So some keys S3 would store cannot be
files: empty segments (C{a//b}, C{/a}), C{.} and C{..} segments, NUL, segments
over 255 bytes. Those are refused with a clear error instead of being mangled,
which also means no key can climb out of its bucket.
"""

from __future__ import annotations

import ipaddress
import re

from twisted.internet import defer

from claudefs_gateway.fstypes import NAME_MAX
from claudefs_gateway.s3.errors import S3Error

__all__ = [
    "MAX_KEY_BYTES",
    "check_new_bucket_name",
    "bucket_name_ok",
    "key_segments",
    "Key",
    "KeyLocks",
]

MAX_KEY_BYTES = 1024

_STRICT_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def check_new_bucket_name(name: str) -> None:
    """
    The rules AWS applies to new buckets (3-63 characters, lower-case letters,
    digits, dots and hyphens, starting and ending with a letter or digit, not
    an IP address, no C{..}).

    @raise S3Error: InvalidBucketName.
    """
    bad = (
        not _STRICT_BUCKET.match(name)
        or ".." in name
        or ".-" in name
        or "-." in name
        or name.startswith("xn--")
        or name.endswith("-s3alias")
        or name.endswith("--ol-s3")
    )
    if not bad:
        try:
            ipaddress.IPv4Address(name)
            bad = True
        except ValueError:
            pass
    if bad:
        raise S3Error("InvalidBucketName", "The specified bucket is not valid.", BucketName=name)


def bucket_name_ok(name: bytes) -> bool:
    """
    Whether a directory at the top of the S3 root is served as a bucket.

    Looser than L{check_new_bucket_name}, so directories made over NFS or SMB
    (C{Projects_2024}) are reachable; names starting with a dot are never
    buckets (the gateway keeps its own state under such names).
    """
    if not name or len(name) > NAME_MAX or name.startswith(b".") or b"\x00" in name:
        return False
    if b"/" in name:
        return False
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def key_segments(key: str) -> tuple[list[bytes], bool]:
    """
    The path segments of C{key} and whether it names a directory marker.

    @raise S3Error: KeyTooLongError (key over 1024 bytes, or a segment over
        255 bytes); InvalidArgument (NUL, empty, C{.} or C{..} segments).
    """
    raw = key.encode("utf-8", "surrogateescape")
    if len(raw) > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError", "Your key is too long")
    if not raw:
        raise S3Error("InvalidArgument", "An object key must not be empty")
    if b"\x00" in raw:
        raise S3Error("InvalidArgument", "Object keys may not contain NUL characters")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise S3Error("InvalidArgument", "Object keys must be valid UTF-8") from None
    marker = raw.endswith(b"/")
    parts = (raw[:-1] if marker else raw).split(b"/")
    for p in parts:
        if p in (b"", b".", b".."):
            raise S3Error(
                "InvalidArgument",
                "Object keys with empty, '.' or '..' path segments cannot be stored "
                "in this gateway's file tree",
            )
        if len(p) > NAME_MAX:
            raise S3Error(
                "KeyTooLongError", f"Each '/'-separated part of a key is at most {NAME_MAX} bytes"
            )
    return parts, marker


class Key:
    """A validated key: C{segments} (directories then the name) and C{marker}."""

    __slots__ = ("text", "segments", "marker")

    def __init__(self, text: str) -> None:
        self.text = text
        self.segments, self.marker = key_segments(text)

    @property
    def parents(self) -> list[bytes]:
        """The directories above the object (for a marker: above the directory)."""
        return self.segments[:-1]

    @property
    def name(self) -> bytes:
        return self.segments[-1]

    def __repr__(self) -> str:
        return f"Key({self.text!r})"


class KeyLocks:
    """
    One lock per key (bucket name, key text) in this gateway process, held
    while a change of that key decides on the object there and makes its
    change: conditional and versioned writes, conditional and versioned
    deletes, every write of a bucket with lifecycle rules and the lifecycle's
    expiry (docs/s3.rst "Lifecycle", where the key lock is described). A lock nobody holds
    or waits for is dropped, so the table holds only busy keys.
    """

    def __init__(self) -> None:
        self.held: dict[tuple[str, str], defer.DeferredLock] = {}

    def lock(self, bucket: str, key: str) -> defer.DeferredLock:
        """The lock of C{key} (acquire it, then give it to L{unlock})."""
        k = (bucket, key)
        lock = self.held.get(k)
        if lock is None:
            lock = self.held[k] = defer.DeferredLock()
        return lock

    def unlock(self, bucket: str, key: str, lock: defer.DeferredLock) -> None:
        lock.release()
        if not lock.locked and not lock.waiting and self.held.get((bucket, key)) is lock:
            del self.held[(bucket, key)]
