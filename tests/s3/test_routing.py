"""Which operation a request names (claudefs_gateway.s3.routing.route)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.s3.routing import UNSUPPORTED, UNSUPPORTED_OPS, route


class RouteTests(SynchronousTestCase):
    def op(
        self, method: str, bucket: str | None, key: str | None, query: str = "", **h: str
    ) -> str:
        q = dict(p.partition("=")[::2] for p in query.split("&") if p)
        headers = {k.replace("_", "-"): v for k, v in h.items()}
        return route(method, bucket, key, q, headers).op

    def test_service(self) -> None:
        """No bucket: GET lists buckets; anything else is not allowed."""
        self.assertEqual(self.op("GET", None, None), "ListBuckets")
        self.assertEqual(self.op("PUT", None, None), "MethodNotAllowed")

    def test_bucket(self) -> None:
        """Bucket operations by method and sub-resource."""
        self.assertEqual(self.op("PUT", "b", None), "CreateBucket")
        self.assertEqual(self.op("GET", "b", None), "ListObjects")
        self.assertEqual(self.op("GET", "b", None, "list-type=2"), "ListObjectsV2")
        self.assertEqual(self.op("GET", "b", None, "uploads"), "ListMultipartUploads")
        self.assertEqual(self.op("POST", "b", None, "delete"), "DeleteObjects")
        self.assertEqual(self.op("DELETE", "b", None), "DeleteBucket")

    def test_object(self) -> None:
        """Object operations, copies told apart by x-amz-copy-source."""
        self.assertEqual(self.op("PUT", "b", "k"), "PutObject")
        self.assertEqual(self.op("PUT", "b", "k", x_amz_copy_source="/a/b"), "CopyObject")
        self.assertEqual(self.op("PUT", "b", "k", "partNumber=1&uploadId=u"), "UploadPart")
        self.assertEqual(
            self.op("PUT", "b", "k", "partNumber=1&uploadId=u", x_amz_copy_source="/a/b"),
            "UploadPartCopy",
        )
        self.assertEqual(self.op("POST", "b", "k", "uploads"), "CreateMultipartUpload")
        self.assertEqual(self.op("POST", "b", "k", "uploadId=u"), "CompleteMultipartUpload")
        self.assertEqual(self.op("DELETE", "b", "k", "uploadId=u"), "AbortMultipartUpload")
        self.assertEqual(self.op("GET", "b", "k", "uploadId=u"), "ListParts")

    def test_unsupported_named(self) -> None:
        """Every unsupported sub-resource routes to its own operation name, which answers 501."""
        for level, subs in UNSUPPORTED.items():
            key = "k" if level == "object" else None
            for sub, methods in subs.items():
                for method, op in methods.items():
                    self.assertEqual(self.op(method, "b", key, sub), op)
                    self.assertIn(op, UNSUPPORTED_OPS)
