"""
boto3 (and botocore) against a running S3 endpoint: one scenario per run.

    python -m tests.s3.boto_client SCENARIO --endpoint URL --key K --secret S [--ca PEM]

Exits 0 when every check of the scenario held; otherwise prints what did not
and exits 1. Run in a subprocess by tests/s3/test_clients.py: boto3 blocks, so it
never runs on the test's reactor.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import hmac
import http.client
import io
import os
import sys
import traceback
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

SCENARIOS: dict[str, Callable[[Any, argparse.Namespace], None]] = {}


def scenario(
    f: Callable[[Any, argparse.Namespace], None],
) -> Callable[[Any, argparse.Namespace], None]:
    SCENARIOS[f.__name__] = f
    return f


def check(cond: object, what: str) -> None:
    if not cond:
        raise AssertionError(what)


def error_code(f: Callable[[], Any]) -> tuple[str, int]:
    try:
        f()
    except ClientError as e:
        return e.response["Error"].get("Code", ""), e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError("expected an error")


def client(args: argparse.Namespace, **config: Any) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=args.endpoint,
        aws_access_key_id=args.key,
        aws_secret_access_key=args.secret,
        region_name="us-east-1",
        verify=args.ca if args.ca else None,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, **config),
    )


@scenario
def buckets(s3: Any, args: argparse.Namespace) -> None:
    s3.create_bucket(Bucket="b-one")
    s3.create_bucket(Bucket="b-two")
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    check({"b-one", "b-two"} <= set(names), f"list_buckets: {names}")
    check(
        s3.head_bucket(Bucket="b-one")["ResponseMetadata"]["HTTPStatusCode"] == 200, "head_bucket"
    )
    loc = s3.get_bucket_location(Bucket="b-one")["LocationConstraint"]
    check(loc in (None, ""), f"location {loc!r}")
    # us-east-1: creating one's own bucket again is a 200 that changes nothing (as AWS).
    s3.create_bucket(Bucket="b-one")
    check(error_code(lambda: s3.head_bucket(Bucket="nope-nope"))[1] == 404, "head missing")
    check(
        error_code(lambda: s3.list_objects_v2(Bucket="nope-nope"))[0] == "NoSuchBucket",
        "list missing",
    )
    s3.put_object(Bucket="b-two", Key="x", Body=b"x")
    check(error_code(lambda: s3.delete_bucket(Bucket="b-two"))[0] == "BucketNotEmpty", "not empty")
    s3.delete_object(Bucket="b-two", Key="x")
    s3.delete_bucket(Bucket="b-two")
    s3.delete_bucket(Bucket="b-one")
    code, status = error_code(lambda: s3.get_bucket_policy(Bucket="whatever"))
    check((code, status) in (("NotImplemented", 501), ("NoSuchBucket", 404)), f"policy {code}")


@scenario
def objects(s3: Any, args: argparse.Namespace) -> None:
    s3.create_bucket(Bucket="objs")
    body = os.urandom(300_000)
    md5 = hashlib.md5(body)
    import base64

    r = s3.put_object(
        Bucket="objs",
        Key="dir/sub/file.bin",
        Body=body,
        ContentType="application/x-test",
        Metadata={"color": "blue", "n": "1"},
        CacheControl="max-age=60",
        ContentDisposition='attachment; filename="f.bin"',
        ContentEncoding="identity",
        ContentLanguage="en",
        Expires=datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC),
        ContentMD5=base64.b64encode(md5.digest()).decode(),
    )
    etag = r["ETag"]
    check(etag == f'"{md5.hexdigest()}"', f"etag {etag}")
    g = s3.get_object(Bucket="objs", Key="dir/sub/file.bin")
    check(g["Body"].read() == body, "body")
    check(g["ContentType"] == "application/x-test", "content type")
    check(g["Metadata"] == {"color": "blue", "n": "1"}, f"metadata {g['Metadata']}")
    check(g["CacheControl"] == "max-age=60", "cache-control")
    check(g["ContentDisposition"] == 'attachment; filename="f.bin"', "disposition")
    check(g["ContentEncoding"] == "identity", "encoding")
    check(g["ContentLanguage"] == "en", "language")
    check(g["ETag"] == etag, "get etag")
    h = s3.head_object(Bucket="objs", Key="dir/sub/file.bin")
    check(h["ContentLength"] == len(body), "head length")
    # Content-MD5 that does not match: refused, nothing written.
    bad = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    check(
        error_code(lambda: s3.put_object(Bucket="objs", Key="bad", Body=b"data", ContentMD5=bad))[0]
        == "BadDigest",
        "bad md5",
    )
    check(error_code(lambda: s3.head_object(Bucket="objs", Key="bad"))[1] == 404, "bad not written")
    # Ranges.
    r = s3.get_object(Bucket="objs", Key="dir/sub/file.bin", Range="bytes=10-19")
    check(
        r["Body"].read() == body[10:20] and r["ContentRange"] == f"bytes 10-19/{len(body)}", "range"
    )
    r = s3.get_object(Bucket="objs", Key="dir/sub/file.bin", Range="bytes=-100")
    check(r["Body"].read() == body[-100:], "suffix range")
    r = s3.get_object(Bucket="objs", Key="dir/sub/file.bin", Range=f"bytes={len(body) - 5}-")
    check(
        r["Body"].read() == body[-5:] and r["ResponseMetadata"]["HTTPStatusCode"] == 206,
        "open range",
    )
    check(
        error_code(
            lambda: s3.get_object(
                Bucket="objs", Key="dir/sub/file.bin", Range=f"bytes={len(body)}-"
            )
        )[0]
        == "InvalidRange",
        "416",
    )
    # Conditionals.
    check(
        error_code(lambda: s3.get_object(Bucket="objs", Key="dir/sub/file.bin", IfNoneMatch=etag))[
            1
        ]
        == 304,
        "if-none-match",
    )
    check(
        error_code(lambda: s3.get_object(Bucket="objs", Key="dir/sub/file.bin", IfMatch='"nope"'))[
            1
        ]
        == 412,
        "if-match",
    )
    future = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    past = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
    check(
        error_code(
            lambda: s3.head_object(Bucket="objs", Key="dir/sub/file.bin", IfModifiedSince=future)
        )[1]
        == 304,
        "ims",
    )
    check(
        error_code(
            lambda: s3.get_object(Bucket="objs", Key="dir/sub/file.bin", IfUnmodifiedSince=past)
        )[1]
        == 412,
        "ius",
    )
    s3.get_object(Bucket="objs", Key="dir/sub/file.bin", IfMatch=etag, IfModifiedSince=past)[
        "Body"
    ].read()
    # Conditional writes.
    check(
        error_code(
            lambda: s3.put_object(Bucket="objs", Key="dir/sub/file.bin", Body=b"x", IfNoneMatch="*")
        )[1]
        == 412,
        "put if-none-match",
    )
    s3.put_object(Bucket="objs", Key="new-one", Body=b"x", IfNoneMatch="*")
    check(
        error_code(
            lambda: s3.put_object(Bucket="objs", Key="new-one", Body=b"y", IfMatch='"nope"')
        )[1]
        == 412,
        "put if-match",
    )
    # The mapping's conflicts: an object cannot also be a prefix.
    check(
        error_code(lambda: s3.put_object(Bucket="objs", Key="dir/sub", Body=b"x"))[0]
        == "KeyConflict",
        "file over dir",
    )
    check(
        error_code(lambda: s3.put_object(Bucket="objs", Key="dir/sub/file.bin/x", Body=b"x"))[0]
        == "KeyConflict",
        "dir under file",
    )
    # Directory markers.
    s3.put_object(Bucket="objs", Key="empty-dir/", Body=b"")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="objs")["Contents"]]
    check("empty-dir/" in keys, f"marker listed {keys}")
    s3.delete_object(Bucket="objs", Key="empty-dir/")
    # Copy: COPY and REPLACE metadata, copy conditions.
    c = s3.copy_object(
        Bucket="objs", Key="copy", CopySource={"Bucket": "objs", "Key": "dir/sub/file.bin"}
    )
    check(c["CopyObjectResult"]["ETag"] == etag, "copy etag")
    h = s3.head_object(Bucket="objs", Key="copy")
    check(
        h["Metadata"] == {"color": "blue", "n": "1"} and h["ContentType"] == "application/x-test",
        "copy meta",
    )
    s3.copy_object(
        Bucket="objs",
        Key="copy",
        CopySource="objs/copy",
        MetadataDirective="REPLACE",
        Metadata={"k": "v"},
        ContentType="text/plain",
    )
    h = s3.head_object(Bucket="objs", Key="copy")
    check(
        h["Metadata"] == {"k": "v"} and h["ContentType"] == "text/plain",
        f"replace meta {h['Metadata']}",
    )
    check(
        error_code(
            lambda: s3.copy_object(
                Bucket="objs", Key="copy2", CopySource="objs/copy", CopySourceIfMatch='"nope"'
            )
        )[1]
        == 412,
        "copy if-match",
    )
    check(
        error_code(lambda: s3.copy_object(Bucket="objs", Key="copy", CopySource="objs/copy"))[0]
        == "InvalidRequest",
        "copy onto itself",
    )
    # DeleteObjects, quiet and verbose.
    for i in range(5):
        s3.put_object(Bucket="objs", Key=f"del/{i}", Body=b"d")
    r = s3.delete_objects(
        Bucket="objs", Delete={"Objects": [{"Key": "del/0"}, {"Key": "del/1"}, {"Key": "missing"}]}
    )
    check(sorted(d["Key"] for d in r["Deleted"]) == ["del/0", "del/1", "missing"], f"verbose {r}")
    r = s3.delete_objects(
        Bucket="objs", Delete={"Objects": [{"Key": f"del/{i}"} for i in (2, 3, 4)], "Quiet": True}
    )
    check(not r.get("Deleted") and not r.get("Errors"), f"quiet {r}")
    check("Contents" not in s3.list_objects_v2(Bucket="objs", Prefix="del/"), "deleted")
    # Keys with awkward characters.
    for key in ["sp ace", "plus+sign", "uni-\u00e9\u6f22", "q?uery&x=1", "tilde~", "pct%41"]:
        s3.put_object(Bucket="objs", Key=key, Body=key.encode())
        check(s3.get_object(Bucket="objs", Key=key)["Body"].read() == key.encode(), key)
    # Response header overrides, partNumber on a single-part object, versioning state.
    g = s3.get_object(
        Bucket="objs",
        Key="dir/sub/file.bin",
        ResponseContentType="text/x-override",
        ResponseCacheControl="no-store",
        PartNumber=1,
    )
    check(g["ContentType"] == "text/x-override" and g["CacheControl"] == "no-store", "overrides")
    check(len(g["Body"].read()) == len(body), "partNumber=1 of a single-part object")
    check("Status" not in s3.get_bucket_versioning(Bucket="objs"), "never versioned")
    # Checksums stored and returned.
    for algo in ("CRC32", "CRC32C", "SHA1", "SHA256"):
        r = s3.put_object(
            Bucket="objs", Key=f"ck-{algo}", Body=b"checksummed", ChecksumAlgorithm=algo
        )
        g = s3.get_object(Bucket="objs", Key=f"ck-{algo}", ChecksumMode="ENABLED")
        check(g["Body"].read() == b"checksummed", algo)
        check(
            g.get(f"Checksum{algo}") == r.get(f"Checksum{algo}") and r.get(f"Checksum{algo}"),
            f"{algo}: {g.get(f'Checksum{algo}')}",
        )


@scenario
def listing(s3: Any, args: argparse.Namespace) -> None:
    s3.create_bucket(Bucket="lst")
    keys = ["a-b", "a/x", "a/y/z", "a0", "b", "c/d/e", "c/d/f", "sp ace/k", "\u00e9t\u00e9"]
    for k in keys:
        s3.put_object(Bucket="lst", Key=k, Body=k.encode())
    want = sorted(keys, key=lambda k: k.encode())
    got = [o["Key"] for o in s3.list_objects_v2(Bucket="lst")["Contents"]]
    check(got == want, f"order {got}")
    got = [o["Key"] for o in s3.list_objects(Bucket="lst")["Contents"]]
    check(got == want, f"v1 order {got}")
    r = s3.list_objects_v2(Bucket="lst", Delimiter="/")
    check(
        [p["Prefix"] for p in r["CommonPrefixes"]] == ["a/", "c/", "sp ace/"],
        f"prefixes {r.get('CommonPrefixes')}",
    )
    check([o["Key"] for o in r["Contents"]] == ["a-b", "a0", "b", "\u00e9t\u00e9"], "top keys")
    r = s3.list_objects_v2(Bucket="lst", Prefix="a/", Delimiter="/")
    check(
        [o["Key"] for o in r["Contents"]] == ["a/x"]
        and [p["Prefix"] for p in r["CommonPrefixes"]] == ["a/y/"],
        "nested",
    )
    # Paging, v2 and v1, through boto3's paginators.
    pages = list(
        s3.get_paginator("list_objects_v2").paginate(Bucket="lst", PaginationConfig={"PageSize": 2})
    )
    check(len(pages) == 5, f"{len(pages)} pages")
    check([o["Key"] for p in pages for o in p.get("Contents", [])] == want, "v2 paging")
    pages = list(
        s3.get_paginator("list_objects").paginate(Bucket="lst", PaginationConfig={"PageSize": 3})
    )
    check([o["Key"] for p in pages for o in p.get("Contents", [])] == want, "v1 paging")
    r = s3.list_objects_v2(Bucket="lst", StartAfter="a0")
    check([o["Key"] for o in r["Contents"]][0] == "b", "start-after")
    r = s3.list_objects(Bucket="lst", Marker="a/y/z")
    check([o["Key"] for o in r["Contents"]][0] == "a0", "marker")
    r = s3.list_objects_v2(Bucket="lst", MaxKeys=1)
    check(r["IsTruncated"] and r["KeyCount"] == 1 and r["NextContinuationToken"], "max-keys")
    r = s3.list_objects_v2(Bucket="lst", FetchOwner=True, MaxKeys=1)
    check(r["Contents"][0]["Owner"]["DisplayName"], "fetch-owner")
    r = s3.list_objects_v2(Bucket="lst", Prefix="sp ace/", EncodingType="url")
    # Asked for explicitly, boto3 hands the encoded keys back as they came.
    check([o["Key"] for o in r["Contents"]] == ["sp%20ace/k"], f"url encoding {r['Contents']}")
    check(r["Contents"][0]["ETag"] == f'"{hashlib.md5(b"sp ace/k").hexdigest()}"', "list etag")


@scenario
def multipart(s3: Any, args: argparse.Namespace) -> None:
    s3.create_bucket(Bucket="mpu")
    part = 5 * 1024 * 1024
    p1, p2, p3 = os.urandom(part), os.urandom(part), os.urandom(1000)
    up = s3.create_multipart_upload(
        Bucket="mpu", Key="big/obj", ContentType="application/x-big", Metadata={"m": "1"}
    )
    uid = up["UploadId"]
    e1 = s3.upload_part(Bucket="mpu", Key="big/obj", UploadId=uid, PartNumber=1, Body=p1)["ETag"]
    e3 = s3.upload_part(Bucket="mpu", Key="big/obj", UploadId=uid, PartNumber=3, Body=p3)["ETag"]
    s3.put_object(Bucket="mpu", Key="src", Body=p2 + b"tail")
    cp = s3.upload_part_copy(
        Bucket="mpu",
        Key="big/obj",
        UploadId=uid,
        PartNumber=2,
        CopySource="mpu/src",
        CopySourceRange=f"bytes=0-{part - 1}",
    )
    e2 = cp["CopyPartResult"]["ETag"]
    parts = s3.list_parts(Bucket="mpu", Key="big/obj", UploadId=uid)["Parts"]
    check(
        [p["PartNumber"] for p in parts] == [1, 2, 3] and parts[1]["Size"] == part,
        f"list_parts {parts}",
    )
    ups = s3.list_multipart_uploads(Bucket="mpu")["Uploads"]
    check([u["UploadId"] for u in ups] == [uid], f"list uploads {ups}")
    # Refusals: order, unknown part, small part.
    check(
        error_code(
            lambda: s3.complete_multipart_upload(
                Bucket="mpu",
                Key="big/obj",
                UploadId=uid,
                MultipartUpload={
                    "Parts": [{"PartNumber": 2, "ETag": e2}, {"PartNumber": 1, "ETag": e1}]
                },
            )
        )[0]
        == "InvalidPartOrder",
        "order",
    )
    check(
        error_code(
            lambda: s3.complete_multipart_upload(
                Bucket="mpu",
                Key="big/obj",
                UploadId=uid,
                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"00"'}]},
            )
        )[0]
        == "InvalidPart",
        "etag",
    )
    check(
        error_code(
            lambda: s3.complete_multipart_upload(
                Bucket="mpu",
                Key="big/obj",
                UploadId=uid,
                MultipartUpload={
                    "Parts": [{"PartNumber": 3, "ETag": e3}, {"PartNumber": 4, "ETag": e3}]
                },
            )
        )[0]
        in ("InvalidPart", "EntityTooSmall"),
        "small",
    )
    check(
        error_code(lambda: s3.head_object(Bucket="mpu", Key="big/obj"))[1] == 404,
        "nothing visible before complete",
    )
    r = s3.complete_multipart_upload(
        Bucket="mpu",
        Key="big/obj",
        UploadId=uid,
        MultipartUpload={
            "Parts": [
                {"PartNumber": 1, "ETag": e1},
                {"PartNumber": 2, "ETag": e2},
                {"PartNumber": 3, "ETag": e3},
            ]
        },
    )
    md5s = b"".join(hashlib.md5(p).digest() for p in (p1, p2, p3))
    check(r["ETag"] == f'"{hashlib.md5(md5s).hexdigest()}-3"', f"multipart etag {r['ETag']}")
    g = s3.get_object(Bucket="mpu", Key="big/obj")
    check(
        g["Body"].read() == p1 + p2 + p3
        and g["ContentType"] == "application/x-big"
        and g["Metadata"] == {"m": "1"},
        "assembled",
    )
    h = s3.head_object(Bucket="mpu", Key="big/obj", PartNumber=2)
    check(h["PartsCount"] == 3 and h["ContentLength"] == part, f"part 2 {h.get('PartsCount')}")
    check(not s3.list_multipart_uploads(Bucket="mpu").get("Uploads"), "upload gone")
    check(
        error_code(lambda: s3.list_parts(Bucket="mpu", Key="big/obj", UploadId=uid))[0]
        == "NoSuchUpload",
        "no such upload",
    )
    # Listing uploads with a prefix and a delimiter.
    ids = [
        s3.create_multipart_upload(Bucket="mpu", Key=k)["UploadId"]
        for k in ("logs/a", "logs/b", "logs/sub/c", "other")
    ]
    r = s3.list_multipart_uploads(Bucket="mpu", Prefix="logs/", Delimiter="/")
    check([u["Key"] for u in r["Uploads"]] == ["logs/a", "logs/b"], f"uploads {r.get('Uploads')}")
    check([p["Prefix"] for p in r["CommonPrefixes"]] == ["logs/sub/"], "upload prefixes")
    r = s3.list_multipart_uploads(Bucket="mpu", MaxUploads=2)
    check(r["IsTruncated"] and len(r["Uploads"]) == 2, "max-uploads")
    for k, i in zip(("logs/a", "logs/b", "logs/sub/c", "other"), ids, strict=True):
        s3.abort_multipart_upload(Bucket="mpu", Key=k, UploadId=i)
    # Abort.
    up = s3.create_multipart_upload(Bucket="mpu", Key="aborted")
    s3.upload_part(
        Bucket="mpu", Key="aborted", UploadId=up["UploadId"], PartNumber=1, Body=b"x" * 100
    )
    s3.abort_multipart_upload(Bucket="mpu", Key="aborted", UploadId=up["UploadId"])
    check(
        error_code(
            lambda: s3.upload_part(
                Bucket="mpu", Key="aborted", UploadId=up["UploadId"], PartNumber=2, Body=b"x"
            )
        )[0]
        == "NoSuchUpload",
        "aborted",
    )
    # Checksummed multipart (what s3transfer does by default) through upload_fileobj.
    data = os.urandom(12 * 1024 * 1024 + 5)
    cfg = TransferConfig(
        multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024, max_concurrency=3
    )
    s3.upload_fileobj(io.BytesIO(data), "mpu", "transfer", Config=cfg)
    out = io.BytesIO()
    s3.download_fileobj("mpu", "transfer", out, Config=cfg)
    check(out.getvalue() == data, "transfer round trip")
    h = s3.head_object(Bucket="mpu", Key="transfer", ChecksumMode="ENABLED")
    check(h["ETag"].endswith('-3"'), f"transfer etag {h['ETag']}")


@scenario
def presigned(s3: Any, args: argparse.Namespace) -> None:
    s3 = client(args, signature_version="s3v4")
    s3.create_bucket(Bucket="pre")
    put = s3.generate_presigned_url(
        "put_object", Params={"Bucket": "pre", "Key": "p/obj"}, ExpiresIn=60
    )
    req = urllib.request.Request(put, data=b"presigned body", method="PUT")
    try:
        with urllib.request.urlopen(req) as r:
            check(r.status == 200, "presigned put")
    except urllib.error.HTTPError as e:
        raise AssertionError(f"presigned put: {e.code} {e.read()!r}") from None
    get = s3.generate_presigned_url(
        "get_object", Params={"Bucket": "pre", "Key": "p/obj"}, ExpiresIn=60
    )
    with urllib.request.urlopen(get) as r:
        check(r.read() == b"presigned body", "presigned get")
    # A URL signed two minutes ago for one minute (botocore's clock, moved back).
    # (botocore signs with the AWS CRT when awscrt is installed, else in Python: move both.)
    import botocore.auth
    import botocore.crt.auth

    real_now = botocore.auth.get_current_datetime

    def earlier(*a: Any, **k: Any) -> Any:
        return real_now(*a, **k) - datetime.timedelta(seconds=120)

    botocore.auth.get_current_datetime = botocore.crt.auth.get_current_datetime = earlier
    try:
        expired = s3.generate_presigned_url(
            "get_object", Params={"Bucket": "pre", "Key": "p/obj"}, ExpiresIn=60
        )
    finally:
        botocore.auth.get_current_datetime = botocore.crt.auth.get_current_datetime = real_now
    try:
        urllib.request.urlopen(expired)
        raise AssertionError("expired URL served")
    except urllib.error.HTTPError as e:
        check(e.code == 403 and b"expired" in e.read(), "expired refused")
    tampered = get.replace("p%2Fobj", "p%2Fother").replace("/p/obj", "/p/other")
    try:
        urllib.request.urlopen(tampered)
        raise AssertionError("tampered URL served")
    except urllib.error.HTTPError as e:
        check(e.code == 403, "tampered")


@scenario
def sigv2(s3: Any, args: argparse.Namespace) -> None:
    v2 = client(args, signature_version="s3")
    v2.create_bucket(Bucket="v2b")
    v2.put_object(Bucket="v2b", Key="k k", Body=b"v2 body", Metadata={"a": "b"})
    check(v2.get_object(Bucket="v2b", Key="k k")["Body"].read() == b"v2 body", "v2 get")
    check([o["Key"] for o in v2.list_objects(Bucket="v2b")["Contents"]] == ["k k"], "v2 list")
    url = v2.generate_presigned_url(
        "get_object", Params={"Bucket": "v2b", "Key": "k k"}, ExpiresIn=60
    )
    with urllib.request.urlopen(url) as r:
        check(r.read() == b"v2 body", "v2 presigned")


@scenario
def streaming_trailer(s3: Any, args: argparse.Namespace) -> None:
    """Over TLS boto3 sends STREAMING-UNSIGNED-PAYLOAD-TRAILER with a CRC32 trailer by default."""
    s3.create_bucket(Bucket="tls")
    seen: list[str] = []
    s3.meta.events.register(
        "before-send.s3.PutObject",
        lambda request, **kw: seen.append(
            request.headers.get("X-Amz-Content-SHA256", b"").decode()
            if isinstance(request.headers.get("X-Amz-Content-SHA256"), bytes)
            else str(request.headers.get("X-Amz-Content-SHA256"))
        ),
    )
    data = os.urandom(3 * 1024 * 1024 + 7)
    r = s3.put_object(Bucket="tls", Key="t", Body=io.BytesIO(data))
    check(seen and seen[0] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER", f"mode {seen}")
    check(r["ETag"] == f'"{hashlib.md5(data).hexdigest()}"', "etag")
    check(
        s3.get_object(Bucket="tls", Key="t", ChecksumMode="ENABLED")["Body"].read() == data, "get"
    )
    for algo in ("CRC32C", "SHA256", "SHA1"):
        s3.put_object(
            Bucket="tls", Key=algo, Body=io.BytesIO(b"abc" * 1000), ChecksumAlgorithm=algo
        )
        check(
            s3.get_object(Bucket="tls", Key=algo, ChecksumMode="ENABLED")["Body"].read()
            == b"abc" * 1000,
            algo,
        )


def _chunk_sig(key: bytes, amz_date: str, scope: str, prev: str, data: bytes) -> str:
    empty = hashlib.sha256(b"").hexdigest()
    sts = "\n".join(
        ["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, prev, empty, hashlib.sha256(data).hexdigest()]
    )
    return hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()


def signed_chunked_put(
    args: argparse.Namespace,
    bucket: str,
    key: str,
    data: bytes,
    chunk: int,
    tamper: bool = False,
    trailer: bool = False,
    tamper_trailer: bool = False,
) -> int:
    """
    PUT with STREAMING-AWS4-HMAC-SHA256-PAYLOAD (or ...-TRAILER with a signed CRC32
    trailer): botocore signs the headers, each chunk is signed here from the spec.
    """
    import base64
    import zlib

    mode = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" + ("-TRAILER" if trailer else "")
    url = f"{args.endpoint}/{bucket}/{key}"
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    headers = {
        "Content-Encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(len(data)),
        "X-Amz-Content-SHA256": mode,
    }
    if trailer:
        headers["x-amz-trailer"] = "x-amz-checksum-crc32"
    req = AWSRequest(method="PUT", url=url, headers=headers)

    class Streaming(S3SigV4Auth):
        def payload(self, request: Any) -> str:
            return mode

    signer = Streaming(Credentials(args.key, args.secret), "s3", "us-east-1")
    signer.add_auth(req)
    amz_date = req.headers["X-Amz-Date"]
    seed = req.headers["Authorization"].rsplit("Signature=", 1)[1]
    scope = f"{amz_date[:8]}/us-east-1/s3/aws4_request"
    k = signer._sign(("AWS4" + args.secret).encode(), amz_date[:8])
    for part in ("us-east-1", "s3", "aws4_request"):
        k = signer._sign(k, part)
    prev = seed
    body = b""
    for c in [*chunks, b""]:
        sig = _chunk_sig(k, amz_date, scope, prev, c)
        prev = sig
        if tamper and c:
            c = bytes([c[0] ^ 1]) + c[1:]
        if c:
            body += f"{len(c):x};chunk-signature={sig}\r\n".encode() + c + b"\r\n"
        else:
            body += f"0;chunk-signature={sig}\r\n".encode()
    if trailer:
        # The trailer signature covers "name:value\n" of each trailing header.
        canonical = f"x-amz-checksum-crc32:{crc}\n"
        sts = "\n".join(
            [
                "AWS4-HMAC-SHA256-TRAILER",
                amz_date,
                scope,
                prev,
                hashlib.sha256(canonical.encode()).hexdigest(),
            ]
        )
        tsig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
        if tamper_trailer:
            tsig = "0" * 64
        body += f"x-amz-checksum-crc32:{crc}\r\nx-amz-trailer-signature:{tsig}\r\n".encode()
    body += b"\r\n"
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.putrequest("PUT", u.path, skip_host=True, skip_accept_encoding=True)
    for name, value in req.headers.items():
        conn.putheader(name, value)
    conn.putheader("Content-Length", str(len(body)))
    conn.putheader("Host", u.netloc)
    conn.endheaders()
    conn.send(body)
    resp = conn.getresponse()
    resp.read()
    return resp.status


@scenario
def streaming_signed(s3: Any, args: argparse.Namespace) -> None:
    s3.create_bucket(Bucket="chunked")
    data = os.urandom(200_000)
    check(signed_chunked_put(args, "chunked", "good", data, 65536) == 200, "signed chunks accepted")
    check(
        s3.get_object(Bucket="chunked", Key="good")["Body"].read() == data, "signed chunks stored"
    )
    check(
        signed_chunked_put(args, "chunked", "bad", data, 65536, tamper=True) == 403,
        "tampered chunk refused",
    )
    check(
        error_code(lambda: s3.head_object(Bucket="chunked", Key="bad"))[1] == 404, "nothing written"
    )
    # STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER: signed chunks and a signed CRC32 trailer.
    ok = signed_chunked_put(args, "chunked", "trailed", data, 65536, trailer=True)
    check(ok == 200, f"signed trailer {ok}")
    g = s3.get_object(Bucket="chunked", Key="trailed", ChecksumMode="ENABLED")
    check(g["Body"].read() == data and g.get("ChecksumCRC32"), "trailer checksum stored")
    bad = signed_chunked_put(
        args, "chunked", "trailed-bad", data, 65536, trailer=True, tamper_trailer=True
    )
    check(bad == 403, f"bad trailer signature {bad}")
    check(
        error_code(lambda: s3.head_object(Bucket="chunked", Key="trailed-bad"))[1] == 404,
        "nothing written",
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--endpoint", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--ca")
    args = p.parse_args(argv)
    try:
        SCENARIOS[args.scenario](client(args), args)
    except Exception as e:
        traceback.print_exc()
        if isinstance(e, ClientError):
            print("error document:", e.response.get("Error"))
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
