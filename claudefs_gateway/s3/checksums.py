# -*- test-case-name: tests.s3.test_checksums -*-
"""
Object checksums: the MD5 behind every ETag and the additional checksums
(C{x-amz-checksum-crc32|crc32c|crc64nvme|sha1|sha256}) clients may send.

CRC32 comes from zlib, CRC32C and CRC64/NVME from awscrt (the AWS common
runtime's C implementations, which botocore itself uses), SHA from hashlib.
All of them release the GIL on large buffers, so hashing can run in the
C{cpu} thread pool while the reactor moves the next buffer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from typing import Protocol

from awscrt import checksums as _crt

__all__ = [
    "ALGORITHMS",
    "Hash",
    "new",
    "b64",
    "unb64",
    "header",
    "composite",
    "multipart_etag",
]

ALGORITHMS = ("crc32", "crc32c", "crc64nvme", "sha1", "sha256")


class Hash(Protocol):
    """What hashlib objects and our CRCs have in common."""

    def update(self, data: bytes) -> None: ...

    def digest(self) -> bytes: ...


class _Crc:
    """A running CRC whose digest is the big-endian value, as S3 encodes it."""

    __slots__ = ("_f", "_v", "_n")

    def __init__(self, f: object, nbytes: int) -> None:
        self._f = f
        self._v = 0
        self._n = nbytes

    def update(self, data: bytes) -> None:
        self._v = self._f(data, self._v)  # type: ignore[operator]

    def digest(self) -> bytes:
        return self._v.to_bytes(self._n, "big")


def _crc32(data: bytes, prev: int) -> int:
    return zlib.crc32(data, prev)


def new(algorithm: str) -> Hash:
    """A fresh hash for one of L{ALGORITHMS} (or C{md5})."""
    if algorithm == "crc32":
        return _Crc(_crc32, 4)
    if algorithm == "crc32c":
        return _Crc(_crt.crc32c, 4)
    if algorithm == "crc64nvme":
        return _Crc(_crt.crc64nvme, 8)
    if algorithm in ("sha1", "sha256", "md5"):
        return hashlib.new(algorithm)
    raise ValueError(f"unknown checksum algorithm {algorithm!r}")


def b64(digest: bytes) -> str:
    """Base64 of a digest, as x-amz-checksum-* and Content-MD5 carry it."""
    return base64.b64encode(digest).decode("ascii")


def unb64(text: str) -> bytes | None:
    """Strict base64 decoding; None if C{text} is not base64."""
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def header(algorithm: str) -> str:
    """The header (and trailer) name of an algorithm's checksum."""
    return f"x-amz-checksum-{algorithm}"


def digest_size(algorithm: str) -> int:
    """Bytes in an algorithm's digest."""
    return {"crc32": 4, "crc32c": 4, "crc64nvme": 8, "sha1": 20, "sha256": 32, "md5": 16}[algorithm]


def composite(algorithm: str, part_digests: list[bytes]) -> str:
    """A multipart object's COMPOSITE checksum: hash of the parts' checksums, then C{-N}."""
    h = new(algorithm)
    h.update(b"".join(part_digests))
    return f"{b64(h.digest())}-{len(part_digests)}"


def multipart_etag(part_md5s: list[bytes]) -> str:
    """S3's multipart ETag: MD5 of the parts' binary MD5s, C{-N} (unquoted)."""
    return f"{hashlib.md5(b''.join(part_md5s)).hexdigest()}-{len(part_md5s)}"
