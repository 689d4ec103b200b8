"""
boto3 calls given as JSON, for tests that interleave S3 with other protocols.

    python -m tests.s3.boto_steps ENDPOINT KEY SECRET '[["put_object", {...}], ...]'

Each step is C{[method, params]} (a client method and its keyword arguments)
or C{["error", method, params]} (the call must fail: its result is the error
code), or C{["failure", method, params]} (likewise; its result is the error
code, the HTTP status and the C{x-amz-delete-marker} header). Prints one JSON list of results: each response with its metadata
removed, datetimes as ISO strings, bodies read as text. Run in a subprocess:
boto3 blocks.
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError


def plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items() if k != "ResponseMetadata"}
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, datetime.datetime):
        return v.isoformat()
    if hasattr(v, "read"):
        return v.read().decode("utf-8", "replace")
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v


def main(argv: list[str]) -> int:
    endpoint, key, secret, steps = argv[0], argv[1], argv[2], json.loads(argv[3])
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    out: list[Any] = []
    for step in steps:
        if step[0] in ("error", "failure"):
            try:
                getattr(s3, step[1])(**step[2])
            except ClientError as e:
                code = e.response["Error"].get("Code", "")
                if step[0] == "error":
                    out.append(code)
                else:
                    meta = e.response["ResponseMetadata"]
                    marker = meta.get("HTTPHeaders", {}).get("x-amz-delete-marker")
                    out.append([code, meta["HTTPStatusCode"], marker])
                continue
            print(f"step {step} did not fail", file=sys.stderr)
            return 1
        out.append(plain(getattr(s3, step[0])(**step[1])))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
