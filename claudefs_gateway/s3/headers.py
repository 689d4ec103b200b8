# -*- test-case-name: tests.s3.test_headers -*-
"""
Request headers that ask for S3 functionality this gateway does not provide.

S3 clients ask for a good deal through headers alone: encryption, ACLs, tags,
object lock, storage classes, website redirects. A server that accepts such a
header and does nothing with it answers a silent yes: the client believes its
object is encrypted, tagged or locked when it is not. So every header that names
functionality is either honoured (the operations in L{claudefs_gateway.s3.ops}
act on it) or listed here with the error AWS answers when the functionality
is absent or the value is one it refuses; L{refuse} raises it before the
operation runs. C{tests/s3/test_headers.py} walks the list against a live
gateway, and C{docs/s3.rst} ("Request headers") lists what is honoured and
what is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs

from claudefs_gateway.s3.errors import S3Error

__all__ = ["Refusal", "REFUSALS", "refuse", "WRITES"]

#: Operations that write an object (and so take its headers).
WRITES = frozenset({"PutObject", "PostObject", "CopyObject", "CreateMultipartUpload"})
READS = frozenset({"GetObject", "HeadObject"})
PARTS = frozenset({"UploadPart", "UploadPartCopy"})
#: Operations that read or write an object's data.
DATA = WRITES | READS | PARTS | {"CompleteMultipartUpload"}


@attrs.frozen
class Refusal:
    """
    A header this gateway refuses on C{ops} (None: on every operation).

    @ivar allowed: values that are honoured (compared case-insensitively); a
        header with any other value is refused.
    """

    header: str
    ops: frozenset[str] | None
    code: str
    message: str
    allowed: frozenset[str] = frozenset()
    check: Callable[[str], bool] | None = None

    def refuses(self, op: str, value: str) -> bool:
        if self.ops is not None and op not in self.ops:
            return False
        if value.strip().lower() in self.allowed:
            return False
        return not (self.check is not None and self.check(value))


def _nyi(what: str) -> str:
    return f"{what} is not implemented by this gateway (see docs/s3.rst)"


_SSE_C = "x-amz-server-side-encryption-customer-"
_SRC_SSE_C = "x-amz-copy-source-server-side-encryption-customer-"
_KMS = "SSE-KMS (a key-management service)"

REFUSALS: list[Refusal] = [
    # Server-side encryption is s3/sse.py's (SSE-S3 and SSE-C); SSE-KMS is not served.
    Refusal(
        "x-amz-server-side-encryption",
        READS | PARTS | {"CompleteMultipartUpload"},
        "InvalidArgument",
        "x-amz-server-side-encryption is only valid when an object is written",
    ),
    Refusal("x-amz-server-side-encryption-aws-kms-key-id", None, "NotImplemented", _nyi(_KMS)),
    Refusal("x-amz-server-side-encryption-context", None, "NotImplemented", _nyi(_KMS)),
    Refusal("x-amz-server-side-encryption-bucket-key-enabled", None, "NotImplemented", _nyi(_KMS)),
    # Every object is stored the same way.
    Refusal(
        "x-amz-storage-class",
        WRITES,
        "InvalidStorageClass",
        "The storage class you specified is not valid: this gateway stores every object as STANDARD",
        allowed=frozenset({"standard"}),
    ),
    Refusal(
        "x-amz-website-redirect-location",
        WRITES,
        "NotImplemented",
        _nyi("Website hosting"),
    ),
    # S3 Express / directory-bucket features.
    Refusal("x-amz-write-offset-bytes", None, "NotImplemented", _nyi("Appending to objects")),
    Refusal(
        "x-amz-if-match-initiated-time",
        None,
        "NotImplemented",
        _nyi("x-amz-if-match-initiated-time"),
    ),
]


def refuse(op: str, headers: Mapping[str, list[str]]) -> None:
    """
    Refuse a request carrying a header it cannot have honoured.

    @raise S3Error: the first refused header's error.
    """
    for r in REFUSALS:
        values = headers.get(r.header)
        if values and r.refuses(op, values[0]):
            if r.header.endswith("-key") or "encryption-context" in r.header:
                # Key material is never echoed (nor logged).
                raise S3Error(r.code, r.message, ArgumentName=r.header)
            raise S3Error(r.code, r.message, ArgumentName=r.header, ArgumentValue=values[0])
