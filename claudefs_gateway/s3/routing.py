# -*- test-case-name: tests.s3.test_routing -*-
"""
Which S3 operation a request names.

S3 tells operations apart by method, by whether a bucket and a key are named,
by sub-resources in the query (C{?acl}, C{?uploads}, C{?versioning}...) and,
for a few, by a header (C{x-amz-copy-source}). L{route} makes that choice once;
its answer is the handler's name (C{op_<Operation>}) and the metrics label.
Operations S3 has and this gateway does not serve are listed in L{UNSUPPORTED}
and L{UNSUPPORTED_OTHER}: they answer C{501 NotImplemented} naming the
operation (C{docs/s3.rst} lists them, and a test checks it does).
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["Route", "route", "SERVED", "UNSUPPORTED", "UNSUPPORTED_OTHER", "UNSUPPORTED_OPS"]

# Sub-resources of operations S3 has and we do not serve: sub-resource → method → operation.
_B = "Bucket"
UNSUPPORTED: dict[str, dict[str, dict[str, str]]] = {
    "bucket": {
        "website": {
            "GET": "GetBucketWebsite",
            "PUT": "PutBucketWebsite",
            "DELETE": "DeleteBucketWebsite",
        },
        "logging": {"GET": "GetBucketLogging", "PUT": "PutBucketLogging"},
        "notification": {
            "GET": "GetBucketNotificationConfiguration",
            "PUT": "PutBucketNotificationConfiguration",
        },
        "replication": {
            "GET": "GetBucketReplication",
            "PUT": "PutBucketReplication",
            "DELETE": "DeleteBucketReplication",
        },
        "accelerate": {
            "GET": "GetBucketAccelerateConfiguration",
            "PUT": "PutBucketAccelerateConfiguration",
        },
        "requestPayment": {"GET": "GetBucketRequestPayment", "PUT": "PutBucketRequestPayment"},
        "analytics": {
            "GET": "GetBucketAnalyticsConfiguration",
            "PUT": "PutBucketAnalyticsConfiguration",
            "DELETE": "DeleteBucketAnalyticsConfiguration",
        },
        "inventory": {
            "GET": "GetBucketInventoryConfiguration",
            "PUT": "PutBucketInventoryConfiguration",
            "DELETE": "DeleteBucketInventoryConfiguration",
        },
        "metrics": {
            "GET": "GetBucketMetricsConfiguration",
            "PUT": "PutBucketMetricsConfiguration",
            "DELETE": "DeleteBucketMetricsConfiguration",
        },
        "intelligent-tiering": {
            "GET": "GetBucketIntelligentTieringConfiguration",
            "PUT": "PutBucketIntelligentTieringConfiguration",
            "DELETE": "DeleteBucketIntelligentTieringConfiguration",
        },
        "metadataTable": {"GET": "GetBucketMetadataTableConfiguration"},
    },
    "object": {
        "torrent": {"GET": "GetObjectTorrent"},
        "restore": {"POST": "RestoreObject"},
        "select": {"POST": "SelectObjectContent"},
        "renameObject": {"PUT": "RenameObject"},
    },
}
# Requests told apart by a header rather than a sub-resource.
UNSUPPORTED_OTHER = {
    "WriteGetObjectResponse": "S3 Object Lambda",
    "CreateSession": "S3 Express One Zone sessions (?session)",
}


@attrs.frozen
class Route:
    """The operation a request names, and the bucket and key it names it on."""

    op: str
    bucket: str | None
    key: str | None


def route(
    method: str, bucket: str | None, key: str | None, query: dict[str, str], headers: Any
) -> Route:
    """The operation a request asks for (its name is also the metrics label)."""
    m = method

    def r(op: str) -> Route:
        return Route(op, bucket, key)

    if bucket is None:
        if m in ("GET", "HEAD"):
            return r("ListBuckets")
        return r("MethodNotAllowed")
    if m == "OPTIONS":
        # A browser's CORS preflight, for a bucket or an object (s3/cors.py).
        return r("PreflightRequest")
    level = "bucket" if key is None else "object"
    if query:
        # (Most requests have no query: no sub-resource table to walk.)
        for table in (SERVED, UNSUPPORTED):
            for sub, ops in table[level].items():
                if sub in query and m in ops:
                    return r(ops[m])
    if key is None:
        if "session" in query:
            return r("CreateSession")
        if m == "GET":
            if "location" in query:
                return r("GetBucketLocation")
            if "uploads" in query:
                return r("ListMultipartUploads")
            if query.get("list-type") == "2":
                return r("ListObjectsV2")
            return r("ListObjects")
        if m == "HEAD":
            return r("HeadBucket")
        if m == "PUT":
            return r("CreateBucket")
        if m == "DELETE":
            return r("DeleteBucket")
        if m == "POST":
            if "delete" in query:
                return r("DeleteObjects")
            return r("PostObject")
        return r("MethodNotAllowed")
    copy = headers.get("x-amz-copy-source") is not None
    if m == "PUT":
        if "partNumber" in query and "uploadId" in query:
            return r("UploadPartCopy" if copy else "UploadPart")
        return r("CopyObject" if copy else "PutObject")
    if m == "GET":
        if "uploadId" in query:
            return r("ListParts")
        return r("GetObject")
    if m == "HEAD":
        return r("HeadObject")
    if m == "DELETE":
        if "uploadId" in query:
            return r("AbortMultipartUpload")
        return r("DeleteObject")
    if m == "POST":
        if "uploads" in query:
            return r("CreateMultipartUpload")
        if "uploadId" in query:
            return r("CompleteMultipartUpload")
        return r("PostObject")
    return r("MethodNotAllowed")


# Sub-resources served: sub-resource → method → operation.
SERVED: dict[str, dict[str, dict[str, str]]] = {
    "bucket": {
        "cors": {"GET": "GetBucketCors", "PUT": "PutBucketCors", "DELETE": "DeleteBucketCors"},
        "tagging": {
            "GET": "GetBucketTagging",
            "PUT": "PutBucketTagging",
            "DELETE": "DeleteBucketTagging",
        },
        "object-lock": {"GET": "GetObjectLockConfiguration", "PUT": "PutObjectLockConfiguration"},
        "versioning": {"GET": "GetBucketVersioning", "PUT": "PutBucketVersioning"},
        "versions": {"GET": "ListObjectVersions"},
        "lifecycle": {
            "GET": "GetBucketLifecycleConfiguration",
            "PUT": "PutBucketLifecycleConfiguration",
            "DELETE": "DeleteBucketLifecycle",
        },
        "encryption": {
            "GET": "GetBucketEncryption",
            "PUT": "PutBucketEncryption",
            "DELETE": "DeleteBucketEncryption",
        },
        "acl": {"GET": "GetBucketAcl", "PUT": "PutBucketAcl"},
        "policy": {
            "GET": "GetBucketPolicy",
            "PUT": "PutBucketPolicy",
            "DELETE": "DeleteBucketPolicy",
        },
        "policyStatus": {"GET": "GetBucketPolicyStatus"},
        "ownershipControls": {
            "GET": "GetBucketOwnershipControls",
            "PUT": "PutBucketOwnershipControls",
            "DELETE": "DeleteBucketOwnershipControls",
        },
        "publicAccessBlock": {
            "GET": "GetPublicAccessBlock",
            "PUT": "PutPublicAccessBlock",
            "DELETE": "DeletePublicAccessBlock",
        },
    },
    "object": {
        "acl": {"GET": "GetObjectAcl", "PUT": "PutObjectAcl"},
        "attributes": {"GET": "GetObjectAttributes"},
        "tagging": {
            "GET": "GetObjectTagging",
            "PUT": "PutObjectTagging",
            "DELETE": "DeleteObjectTagging",
        },
        "retention": {"GET": "GetObjectRetention", "PUT": "PutObjectRetention"},
        "legal-hold": {"GET": "GetObjectLegalHold", "PUT": "PutObjectLegalHold"},
    },
}

#: Every operation name that answers 501.
UNSUPPORTED_OPS = {
    op for level in UNSUPPORTED.values() for ops in level.values() for op in ops.values()
} | set(UNSUPPORTED_OTHER)
