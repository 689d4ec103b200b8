# -*- test-case-name: tests.s3.test_errors -*-
"""
S3 errors: the one table from the shared error family to S3 codes, and the
AWS XML error document.

L{S3Error} is what the S3 front end raises for its own refusals (a bad
signature, a malformed range, an upload that does not exist); every other
failure reaching a handler is mapped by L{from_failure}, following the S3
column of C{docs/errors.rst}. Messages are for the client: they never carry a
path, a host, a secret or a traceback (compare Tahoe-LAFS's sftpd
C{_convert_error}: tell the client what kind of thing went wrong, log the rest).
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from claudefs_gateway import errors
from claudefs_gateway.core.log import Logger

__all__ = [
    "S3Error",
    "from_failure",
    "STATUS",
    "error_code_for_errno",
    "directory_data",
    "key_conflict",
]

_log = Logger()

# HTTP status of every code we send (AWS's list, plus our KeyConflict and QuotaExceeded).
STATUS: dict[str, int] = {
    "AccessDenied": 403,
    "NoSuchLifecycleConfiguration": 404,
    "NoSuchCORSConfiguration": 404,
    "AccessForbidden": 403,
    "ServerSideEncryptionConfigurationNotFoundError": 404,
    "InvalidEncryptionAlgorithmError": 400,
    "UnexpectedContent": 400,
    "UnresolvableGrantByEmailAddress": 400,
    "OwnershipControlsNotFoundError": 404,
    "NoSuchPublicAccessBlockConfiguration": 404,
    "NoSuchBucketPolicy": 404,
    "PolicyTooLarge": 400,
    "MalformedPolicy": 400,
    "MalformedACLError": 400,
    "AccessControlListNotSupported": 400,
    "InvalidBucketAclWithObjectOwnership": 400,
    "AuthorizationHeaderMalformed": 400,
    "AuthorizationQueryParametersError": 400,
    "BadDigest": 400,
    "BucketAlreadyExists": 409,
    "BucketAlreadyOwnedByYou": 409,
    "BucketNotEmpty": 409,
    "EntityTooLarge": 400,
    "EntityTooSmall": 400,
    "IllegalLocationConstraintException": 400,
    "IllegalVersioningConfigurationException": 400,
    "IncompleteBody": 400,
    "MalformedPOSTRequest": 400,
    "InvalidPolicyDocument": 400,
    "MaxPostPreDataLengthExceeded": 400,
    "InsufficientStorage": 507,
    "InternalError": 500,
    "InvalidAccessKeyId": 403,
    "InvalidArgument": 400,
    "InvalidBucketName": 400,
    "InvalidBucketState": 409,
    "InvalidDigest": 400,
    "InvalidLocationConstraint": 400,
    "InvalidPart": 400,
    "InvalidPartOrder": 400,
    "InvalidRange": 416,
    "InvalidRequest": 400,
    "InvalidStorageClass": 400,
    "InvalidRetentionPeriod": 400,
    "InvalidTag": 400,
    "KeyConflict": 409,
    "KeyTooLongError": 400,
    "MalformedXML": 400,
    "MaxMessageLengthExceeded": 400,
    "MetadataTooLarge": 400,
    "MethodNotAllowed": 405,
    "MissingContentLength": 411,
    "MissingSecurityHeader": 400,
    "NoSuchBucket": 404,
    "NoSuchKey": 404,
    "NoSuchObjectLockConfiguration": 404,
    "NoSuchTagSet": 404,
    "ObjectLockConfigurationNotFoundError": 404,
    "NoSuchUpload": 404,
    "NoSuchVersion": 404,
    "NotImplemented": 501,
    "OperationAborted": 409,
    "PreconditionFailed": 412,
    "QuotaExceeded": 403,
    "RequestTimeTooSkewed": 403,
    "RequestTimeout": 400,
    "ServiceUnavailable": 503,
    "SignatureDoesNotMatch": 403,
    "SlowDown": 503,
    "XAmzContentSHA256Mismatch": 400,
}

_MESSAGES: dict[str, str] = {
    "AccessDenied": "Access Denied",
    "BucketNotEmpty": "The bucket you tried to delete is not empty",
    "InsufficientStorage": "There is not enough space left to store the object",
    "InternalError": "We encountered an internal error. Please try again.",
    "InvalidArgument": "Invalid Argument",
    "KeyConflict": "The key conflicts with an existing object or prefix "
    "(an object cannot also be a prefix of other keys)",
    "KeyTooLongError": "Your key is too long",
    "MetadataTooLarge": "Your metadata headers exceed the maximum allowed metadata size",
    "NoSuchBucket": "The specified bucket does not exist",
    "NoSuchKey": "The specified key does not exist.",
    "NoSuchUpload": "The specified upload does not exist. The upload ID may be invalid, "
    "or the upload may have been aborted or completed.",
    "NoSuchVersion": "The specified version does not exist.",
    "NotImplemented": "A header or operation you provided implies functionality "
    "that is not implemented",
    "OperationAborted": "A conflicting operation is in progress on this object; try again",
    "PreconditionFailed": "At least one of the pre-conditions you specified did not hold",
    "QuotaExceeded": "Your quota does not allow this much data or this many objects",
    "SlowDown": "Please reduce your request rate.",
    "EntityTooLarge": "Your proposed upload exceeds the maximum allowed size",
}


class S3Error(Exception):
    """
    A refusal with an S3 error code.

    @ivar code: the S3 error code (a key of L{STATUS}).
    @ivar message: what the client is told.
    @ivar extra: further elements of the error document (C{BucketName}, C{Region}...).
    @ivar headers: response headers to send with the error (C{Content-Range}...).
    """

    def __init__(
        self,
        code: str,
        message: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extra: str,
    ) -> None:
        if code not in STATUS:
            raise ValueError(f"unknown S3 error code {code!r}")
        self.code = code
        self.message = message if message is not None else _MESSAGES.get(code, code)
        self.extra = extra
        self.headers = headers or {}
        super().__init__(f"{code}: {self.message}")

    #: For a refusal the file-tree mapping forces (docs/s3.rst "The file-tree
    #: mapping's limits"): C{prefix} or C{dir_data}, the metric's label.
    mapping: str | None = None

    @property
    def status(self) -> int:
        return STATUS[self.code]


def key_conflict(object_in_the_way: bool) -> S3Error:
    """
    409 KeyConflict: key C{a/b} and key C{a/b/c} cannot both be objects, the
    first being a file and the second needing it as a directory (docs/s3.rst
    "The file-tree mapping's limits").

    @param object_in_the_way: an object holds a name the key needs as a
        prefix (else: objects under the key, as a prefix, hold its name).
    """
    if object_in_the_way:
        msg = (
            "An object already exists where this key needs a prefix: this gateway stores "
            "key a/b/c as file c in directory a/b, so objects a/b and a/b/c cannot both exist"
        )
    else:
        msg = (
            "Other objects exist under this key as a prefix: this gateway stores key a/b/c "
            "as file c in directory a/b, so objects a/b and a/b/c cannot both exist"
        )
    e = S3Error("KeyConflict", msg)
    e.mapping = "prefix"
    return e


def directory_data(what: str = "hold data") -> S3Error:
    """
    A key ending in C{/} is a directory in the file tree: it cannot hold data
    (docs/s3.rst "The file-tree mapping's limits").
    """
    e = S3Error(
        "InvalidArgument",
        f"Keys ending in '/' are directories in this gateway and cannot {what}; "
        "write the object under a key without the trailing '/'",
        ArgumentName="key",
    )
    e.mapping = "dir_data"
    return e


# docs/errors.rst, S3 column. NotFound depends on what was looked for (see from_failure).
_BY_ERRNO: dict[int, str] = {
    errno.ENOENT: "NoSuchKey",
    errno.EEXIST: "PreconditionFailed",
    errno.ENOTDIR: "KeyConflict",
    errno.EISDIR: "KeyConflict",
    errno.ENOTEMPTY: "BucketNotEmpty",
    errno.EACCES: "AccessDenied",
    errno.EPERM: "AccessDenied",
    errno.EROFS: "AccessDenied",
    errno.ENOSPC: "InsufficientStorage",
    errno.EDQUOT: "QuotaExceeded",
    errno.ESTALE: "NoSuchKey",
    521: "InternalError",  # EBADHANDLE
    errno.ENAMETOOLONG: "KeyTooLongError",
    errno.EINVAL: "InvalidArgument",
    errno.EOPNOTSUPP: "NotImplemented",
    errno.EIO: "InternalError",
    errno.EXDEV: "InvalidArgument",
    errno.EMLINK: "InvalidArgument",
    errno.EFBIG: "EntityTooLarge",
    errno.ELOOP: "NoSuchKey",
    errno.ENODATA: "NoSuchKey",
    errno.ERANGE: "MetadataTooLarge",
    # S3 takes no locks; should the backend report another protocol's lock, try later.
    errno.EAGAIN: "SlowDown",
    errno.EDEADLK: "SlowDown",
    errno.ENOLCK: "SlowDown",
    errno.EBUSY: "OperationAborted",
    523: "InvalidArgument",  # EBADCOOKIE: a stale continuation token
}


def error_code_for_errno(err: int) -> str:
    """The S3 code for an errno (the table above); C{InternalError} if unknown."""
    return _BY_ERRNO.get(err, "InternalError")


def from_failure(f: Failure, *, missing: str = "NoSuchKey", exists: str | None = None) -> S3Error:
    """
    The S3 error a failure becomes.

    @param missing: the code for L{errors.NotFound}: C{NoSuchKey}, C{NoSuchBucket}
        or C{NoSuchUpload}, as the caller knows what it looked for.
    @param exists: the code for L{errors.Exists} (default C{PreconditionFailed}).
    """
    if f.check(S3Error):
        return f.value  # type: ignore[return-value]
    if f.check(errors.NotFound):
        return S3Error(missing)
    if f.check(errors.Exists) and exists is not None:
        return S3Error(exists)
    if f.check(errors.FSError):
        return S3Error(error_code_for_errno(f.value.errno))  # type: ignore[union-attr]
    if f.check(errors.BackendUnavailable, errors.Timeout, defer.TimeoutError):
        return S3Error("SlowDown")
    _log.failure("unexpected failure serving an S3 request", f)
    return S3Error("InternalError")


def error_fields(err: S3Error, resource: str, request_id: str) -> list[tuple[str, Any]]:
    """The elements of the error document, in AWS's order."""
    out: list[tuple[str, Any]] = [("Code", err.code), ("Message", err.message)]
    out += list(err.extra.items())
    out += [("Resource", resource), ("RequestId", request_id)]
    return out
