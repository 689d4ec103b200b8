# -*- test-case-name: tests.s3.test_post -*-
"""
POST object: a browser's HTML form upload (C{multipart/form-data}) and the
policy document that authorizes it.

L{FormReader} reads the form as it streams in, with bounded buffers: the
fields before the file (at most L{MAX_FIELD} bytes each, L{MAX_FIELDS} in
all), then the file part, handed on in pieces as it arrives; what follows the
file is ignored, as S3 does. L{check_policy} applies the policy's expiration
and conditions (C{eq}, C{starts-with}, exact-match objects, and
C{content-length-range}) to the form's fields, as AWS does: every field but
the signature, the file, the policy itself and C{x-ignore-*} ones must be
named by a condition.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from claudefs_gateway.s3.call import parse_iso_date
from claudefs_gateway.s3.errors import S3Error

__all__ = ["FormReader", "Policy", "parse_policy", "check_policy", "MAX_FIELD", "MAX_FIELDS"]

MAX_FIELD = 64 * 1024
MAX_FIELDS = 1024 * 1024
MAX_PART_HEADERS = 16 * 1024
# Fields a policy need not name.
_EXEMPT = {
    "awsaccesskeyid",
    "signature",
    "file",
    "policy",
    "x-amz-signature",
    # SigV4's own fields: the signature already depends on them.
    "x-amz-credential",
    "x-amz-algorithm",
    "x-amz-date",
}
# The policy's expiration: ISO 8601 in UTC, as AWS requires it.
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z")


class FormReader:
    """
    The parts of a C{multipart/form-data} body, as they arrive.

    @param read: the body's C{read()} (plaintext pieces; C{b""} at the end).
    """

    def __init__(self, read: Any, boundary: bytes) -> None:
        self._read = read
        self._delim = b"\r\n--" + boundary
        self._buf = bytearray()
        self._eof = False
        self._first = True
        self._done = False

    async def _fill(self) -> bool:
        if self._eof:
            return False
        data = await self._read()
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    async def next_part(self) -> dict[str, str] | None:
        """The next part's headers (lower-case names, plus C{name} and C{filename}), or None at the end."""
        if self._done:
            return None
        if self._first:
            opening = self._delim[2:]
            while len(self._buf) < len(opening) + 2:
                if not await self._fill():
                    raise S3Error(
                        "MalformedPOSTRequest",
                        "The body of your POST request is not well-formed multipart/form-data.",
                    )
            if not self._buf.startswith(opening):
                raise S3Error(
                    "MalformedPOSTRequest",
                    "The body of your POST request is not well-formed multipart/form-data.",
                )
            del self._buf[: len(opening)]
            self._first = False
        # After a delimiter: "--" ends the form, CRLF starts a part.
        while len(self._buf) < 2:
            if not await self._fill():
                raise S3Error("MalformedPOSTRequest", "The multipart/form-data body ended early.")
        if self._buf[:2] == b"--":
            self._done = True
            return None
        if self._buf[:2] != b"\r\n":
            raise S3Error(
                "MalformedPOSTRequest",
                "The body of your POST request is not well-formed multipart/form-data.",
            )
        del self._buf[:2]
        while b"\r\n\r\n" not in self._buf:
            if len(self._buf) > MAX_PART_HEADERS or not await self._fill():
                raise S3Error("MalformedPOSTRequest", "A part's headers are malformed or too long.")
        end = self._buf.index(b"\r\n\r\n")
        raw = bytes(self._buf[:end]).decode("utf-8", "replace")
        del self._buf[: end + 4]
        headers: dict[str, str] = {}
        for line in raw.split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        disp = headers.get("content-disposition", "")
        for k in ("name", "filename"):
            m = re.search(rf'(?:^|;)\s*{k}="((?:[^"\\]|\\.)*)"', disp) or re.search(
                rf"(?:^|;)\s*{k}=([^;]*)", disp
            )
            if m:
                headers[k] = m.group(1).strip()
        if "name" not in headers:
            raise S3Error("MalformedPOSTRequest", "A part has no name.")
        return headers

    async def part_data(self) -> AsyncIterator[bytes]:
        """The current part's bytes, in pieces, up to the next delimiter."""
        keep = len(self._delim)
        while True:
            i = self._buf.find(self._delim)
            if i >= 0:
                if i:
                    yield bytes(self._buf[:i])
                del self._buf[: i + len(self._delim)]
                return
            if len(self._buf) > keep:
                n = len(self._buf) - keep
                yield bytes(self._buf[:n])
                del self._buf[:n]
            if not await self._fill():
                raise S3Error("IncompleteBody", "The multipart/form-data body ended inside a part.")

    async def field(self) -> str:
        """The current part's value (a form field), bounded."""
        out = bytearray()
        async for piece in self.part_data():
            out += piece
            if len(out) > MAX_FIELD:
                raise S3Error(
                    "MaxPostPreDataLengthExceeded",
                    "Your POST request fields preceding the upload file were too large.",
                )
        return out.decode("utf-8", "surrogateescape")


class Policy:
    """A decoded policy document: its expiration and conditions."""

    def __init__(self, expiration: float, conditions: list[Any]) -> None:
        self.expiration = expiration
        self.conditions = conditions
        self.length_range: tuple[int, int] | None = None
        for c in conditions:
            if isinstance(c, list) and c and str(c[0]).lower() == "content-length-range":
                if len(c) != 3:
                    raise S3Error(
                        "InvalidPolicyDocument",
                        "Invalid Policy: content-length-range needs a minimum and a maximum",
                    )
                try:
                    lo, hi = int(c[1]), int(c[2])
                except (TypeError, ValueError):
                    raise S3Error(
                        "InvalidPolicyDocument",
                        "Invalid Policy: content-length-range bounds must be integers",
                    ) from None
                if lo < 0 or hi < lo:
                    raise S3Error(
                        "InvalidPolicyDocument", "Invalid Policy: content-length-range is invalid"
                    )
                self.length_range = (lo, hi)


def parse_policy(encoded: str) -> Policy:
    """
    The policy document of a form (base64 JSON).

    @raise S3Error: InvalidPolicyDocument (not base64 JSON, no expiration,
        no conditions list, a date that is not ISO 8601).
    """
    try:
        doc = json.loads(base64.b64decode(encoded, validate=False))
    except (ValueError, TypeError):
        raise S3Error("InvalidPolicyDocument", "Invalid Policy: Invalid JSON.") from None
    if not isinstance(doc, dict):
        raise S3Error("InvalidPolicyDocument", "Invalid Policy: Invalid JSON.")
    if "expiration" not in doc:
        raise S3Error("InvalidPolicyDocument", "Invalid Policy: Policy missing expiration.")
    text = str(doc["expiration"])
    exp = parse_iso_date(text) if _ISO.fullmatch(text) else None
    if exp is None:
        raise S3Error("InvalidPolicyDocument", "Invalid Policy: Invalid 'expiration' value.")
    if "conditions" not in doc or not isinstance(doc["conditions"], list):
        raise S3Error("InvalidPolicyDocument", "Invalid Policy: Policy missing conditions.")
    if not doc["conditions"]:
        raise S3Error("InvalidPolicyDocument", "Invalid Policy: Policy has no conditions.")
    return Policy(exp, doc["conditions"])


def check_policy(
    policy: Policy, fields: dict[str, str], bucket: str, now: float | None = None
) -> None:
    """
    The form against its policy (C{fields} by lower-case name, C{bucket} the
    request's).

    @raise S3Error: AccessDenied (expired, a condition not met, a field no
        condition names), InvalidPolicyDocument (a condition that is malformed).
    """
    if (now if now is not None else time.time()) >= policy.expiration:
        raise S3Error("AccessDenied", "Invalid according to Policy: Policy expired.")
    values = dict(fields)
    values["bucket"] = bucket
    named: set[str] = set()
    for c in policy.conditions:
        if isinstance(c, dict):
            if len(c) != 1:
                raise S3Error("InvalidPolicyDocument", "Invalid Policy: Invalid Simple-Condition.")
            ((k, v),) = c.items()
            name = k.lower()
            named.add(name)
            if values.get(name) != str(v):
                raise S3Error(
                    "AccessDenied", f"Invalid according to Policy: Policy Condition failed: {name}"
                )
        elif isinstance(c, list) and c:
            op = str(c[0]).lower()
            if op == "content-length-range":
                continue
            if op not in ("eq", "starts-with") or len(c) != 3 or not str(c[1]).startswith("$"):
                raise S3Error("InvalidPolicyDocument", "Invalid Policy: Invalid condition.")
            name = str(c[1])[1:].lower()
            named.add(name)
            have = values.get(name)
            want = str(c[2])
            # An absent field is empty: ["starts-with", "$x", ""] allows it to be left out.
            have = have or ""
            ok = have == want if op == "eq" else have.startswith(want)
            if not ok:
                raise S3Error(
                    "AccessDenied", f"Invalid according to Policy: Policy Condition failed: {name}"
                )
        else:
            raise S3Error("InvalidPolicyDocument", "Invalid Policy: Invalid condition.")
    for name in fields:
        if name in _EXEMPT or name in named or name.startswith(("x-ignore-", "x-amz-checksum-")):
            continue
        raise S3Error("AccessDenied", f"Invalid according to Policy: Extra input fields: {name}")
