# -*- test-case-name: tests.s3.test_policy -*-
"""
Bucket policies: the JSON documents of S3, parsed strictly and evaluated.

A policy is a list of statements (Effect Allow or Deny, Principal, Action,
Resource, Condition). L{Policy.evaluate} answers C{"deny"} when a Deny
statement matches (the request is refused whoever sends it, root excepted),
C{"allow"} when an Allow statement does, else None.

What an Allow can do is bounded by the file tree: every request runs as its
caller's uid (anonymous ones as the export's anonymous uid) and the vfs still
checks the files' modes, which NFS and SMB share. So an Allow lets an
anonymous request past the front end's gate, and grants nothing the modes do
not already; a Deny takes away from anyone (docs/s3.rst "Access control").

Condition operators: String(Not)Equals(IgnoreCase), String(Not)Like,
Numeric(Not)Equals/LessThan(Equals)/GreaterThan(Equals), Bool,
(Not)IpAddress, Null, each with C{...IfExists} and the C{ForAnyValue:} /
C{ForAllValues:} qualifiers. Keys: C{aws:SourceIp}, C{aws:SecureTransport},
C{aws:username}, C{aws:userid}, C{aws:PrincipalType}, C{aws:Referer},
C{aws:UserAgent}, C{aws:CurrentTime}, C{aws:EpochTime}, C{s3:prefix},
C{s3:delimiter}, C{s3:max-keys}, C{s3:VersionId}, C{s3:x-amz-acl},
C{s3:x-amz-server-side-encryption}, C{s3:x-amz-copy-source},
C{s3:x-amz-metadata-directive}, C{s3:ExistingObjectTag/<key>},
C{s3:RequestObjectTag/<key>}, C{s3:RequestObjectTagKeys},
C{s3:signatureversion}, C{s3:authType}. A key the request does not carry is
absent (only C{Null} and C{...IfExists} match it). An unknown operator is
refused when the policy is put (400 MalformedPolicy).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from claudefs_gateway.s3.errors import S3Error

__all__ = ["Policy", "Statement", "action_for", "MAX_POLICY_BYTES"]

MAX_POLICY_BYTES = 20 * 1024

# The S3 action each operation needs (IAM's names).
_ACTIONS = {
    "GetObject": "s3:GetObject",
    "HeadObject": "s3:GetObject",
    "PutObject": "s3:PutObject",
    "CopyObject": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "UploadPartCopy": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "ListParts": "s3:ListMultipartUploadParts",
    "DeleteObject": "s3:DeleteObject",
    "DeleteObjects": "s3:DeleteObject",
    "ListObjects": "s3:ListBucket",
    "ListObjectsV2": "s3:ListBucket",
    "HeadBucket": "s3:ListBucket",
    "ListObjectVersions": "s3:ListBucketVersions",
    "ListMultipartUploads": "s3:ListBucketMultipartUploads",
    "GetObjectTagging": "s3:GetObjectTagging",
    "PutObjectTagging": "s3:PutObjectTagging",
    "DeleteObjectTagging": "s3:DeleteObjectTagging",
    "GetObjectAcl": "s3:GetObjectAcl",
    "PutObjectAcl": "s3:PutObjectAcl",
    "GetObjectRetention": "s3:GetObjectRetention",
    "PutObjectRetention": "s3:PutObjectRetention",
    "GetObjectLegalHold": "s3:GetObjectLegalHold",
    "PutObjectLegalHold": "s3:PutObjectLegalHold",
    "GetObjectAttributes": "s3:GetObjectAttributes",
    "GetBucketLocation": "s3:GetBucketLocation",
    "GetBucketVersioning": "s3:GetBucketVersioning",
    "PutBucketVersioning": "s3:PutBucketVersioning",
    "GetBucketAcl": "s3:GetBucketAcl",
    "PutBucketAcl": "s3:PutBucketAcl",
    "GetBucketPolicy": "s3:GetBucketPolicy",
    "PutBucketPolicy": "s3:PutBucketPolicy",
    "DeleteBucketPolicy": "s3:DeleteBucketPolicy",
    "GetBucketPolicyStatus": "s3:GetBucketPolicyStatus",
    "GetBucketTagging": "s3:GetBucketTagging",
    "PutBucketTagging": "s3:PutBucketTagging",
    "DeleteBucketTagging": "s3:PutBucketTagging",
    "GetObjectLockConfiguration": "s3:GetBucketObjectLockConfiguration",
    "PutObjectLockConfiguration": "s3:PutBucketObjectLockConfiguration",
    "GetPublicAccessBlock": "s3:GetBucketPublicAccessBlock",
    "PutPublicAccessBlock": "s3:PutBucketPublicAccessBlock",
    "DeletePublicAccessBlock": "s3:PutBucketPublicAccessBlock",
    "GetBucketOwnershipControls": "s3:GetBucketOwnershipControls",
    "PutBucketOwnershipControls": "s3:PutBucketOwnershipControls",
    "DeleteBucketOwnershipControls": "s3:PutBucketOwnershipControls",
    "DeleteBucket": "s3:DeleteBucket",
    "GetBucketCors": "s3:GetBucketCORS",
    "PutBucketCors": "s3:PutBucketCORS",
    "DeleteBucketCors": "s3:PutBucketCORS",
    "GetBucketLifecycleConfiguration": "s3:GetLifecycleConfiguration",
    "PutBucketLifecycleConfiguration": "s3:PutLifecycleConfiguration",
    "DeleteBucketLifecycle": "s3:PutLifecycleConfiguration",
    "GetBucketEncryption": "s3:GetEncryptionConfiguration",
    "PutBucketEncryption": "s3:PutEncryptionConfiguration",
    "DeleteBucketEncryption": "s3:PutEncryptionConfiguration",
    "PostObject": "s3:PutObject",
}
_VERSIONED = {
    "s3:GetObject": "s3:GetObjectVersion",
    "s3:DeleteObject": "s3:DeleteObjectVersion",
    "s3:GetObjectTagging": "s3:GetObjectVersionTagging",
    "s3:PutObjectTagging": "s3:PutObjectVersionTagging",
    "s3:DeleteObjectTagging": "s3:DeleteObjectVersionTagging",
    "s3:GetObjectAcl": "s3:GetObjectVersionAcl",
    "s3:PutObjectAcl": "s3:PutObjectVersionAcl",
}


def action_for(op: str, versioned: bool = False) -> str | None:
    """The IAM action of an operation (its version form when a versionId is named)."""
    a = _ACTIONS.get(op)
    if a is not None and versioned:
        return _VERSIONED.get(a, a)
    return a


def _list(v: Any) -> list[Any]:
    if v is None:
        return []
    return list(v) if isinstance(v, list) else [v]


def _glob(pattern: str, value: str, ignore_case: bool = False) -> bool:
    """IAM wildcards: * and ? (no character classes)."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.I | re.S if ignore_case else re.S) is not None


_OPERATORS = (
    "StringEquals",
    "StringNotEquals",
    "StringEqualsIgnoreCase",
    "StringNotEqualsIgnoreCase",
    "StringLike",
    "StringNotLike",
    "NumericEquals",
    "NumericNotEquals",
    "NumericLessThan",
    "NumericLessThanEquals",
    "NumericGreaterThan",
    "NumericGreaterThanEquals",
    "Bool",
    "IpAddress",
    "NotIpAddress",
    "Null",
    "DateEquals",
    "DateNotEquals",
    "DateLessThan",
    "DateLessThanEquals",
    "DateGreaterThan",
    "DateGreaterThanEquals",
    "ArnEquals",
    "ArnLike",
    "ArnNotEquals",
    "ArnNotLike",
)
_NEGATED = {
    "StringNotEquals",
    "StringNotEqualsIgnoreCase",
    "StringNotLike",
    "NumericNotEquals",
    "NotIpAddress",
    "DateNotEquals",
    "ArnNotEquals",
    "ArnNotLike",
}


def _match_one(op: str, want: str, have: str) -> bool:
    base = op.replace("Not", "") if op in _NEGATED else op
    try:
        if base in ("StringEquals", "ArnEquals"):
            return have == want
        if base == "StringEqualsIgnoreCase":
            return have.lower() == want.lower()
        if base in ("StringLike", "ArnLike"):
            return _glob(want, have)
        if base.startswith("Numeric"):
            h, w = float(have), float(want)
            return {
                "NumericEquals": h == w,
                "NumericLessThan": h < w,
                "NumericLessThanEquals": h <= w,
                "NumericGreaterThan": h > w,
                "NumericGreaterThanEquals": h >= w,
            }[base]
        if base == "Bool":
            return have.lower() == want.lower()
        if base == "IpAddress":
            return ipaddress.ip_address(have) in ipaddress.ip_network(want, strict=False)
        if base.startswith("Date"):
            from claudefs_gateway.s3.call import parse_iso_date

            h2 = parse_iso_date(have) if not have.isdigit() else float(have)
            w2 = parse_iso_date(want) if not want.isdigit() else float(want)
            if h2 is None or w2 is None:
                return False
            return {
                "DateEquals": h2 == w2,
                "DateLessThan": h2 < w2,
                "DateLessThanEquals": h2 <= w2,
                "DateGreaterThan": h2 > w2,
                "DateGreaterThanEquals": h2 >= w2,
            }[base]
    except (ValueError, KeyError):
        return False
    return False


@attrs.frozen
class Statement:
    effect: str
    principals: tuple[str, ...] | None
    not_principals: tuple[str, ...] | None
    actions: tuple[str, ...] | None
    not_actions: tuple[str, ...] | None
    resources: tuple[str, ...] | None
    not_resources: tuple[str, ...] | None
    conditions: tuple[tuple[str, str, tuple[str, ...]], ...]

    def applies(
        self,
        principal_ids: Iterable[str],
        action: str,
        resource: str,
        context: Callable[[str], list[str] | None],
    ) -> bool:
        ids = set(principal_ids)
        if self.principals is not None and not any(p == "*" or p in ids for p in self.principals):
            return False
        if self.not_principals is not None and any(
            p == "*" or p in ids for p in self.not_principals
        ):
            return False
        if self.actions is not None and not any(_glob(a, action, True) for a in self.actions):
            return False
        if self.not_actions is not None and any(_glob(a, action, True) for a in self.not_actions):
            return False
        if self.resources is not None and not any(_glob(r, resource) for r in self.resources):
            return False
        if self.not_resources is not None and any(_glob(r, resource) for r in self.not_resources):
            return False
        return all(self._condition(op, key, values, context) for op, key, values in self.conditions)

    @staticmethod
    def _condition(
        op: str, key: str, values: tuple[str, ...], context: Callable[[str], list[str] | None]
    ) -> bool:
        qualifier = ""
        if ":" in op and op.split(":", 1)[0] in ("ForAnyValue", "ForAllValues"):
            qualifier, op = op.split(":", 1)
        if_exists = op.endswith("IfExists")
        if if_exists:
            op = op[: -len("IfExists")]
        have = context(key)
        if op == "Null":
            want_null = values[0].lower() == "true" if values else True
            return (have is None) == want_null
        if have is None:
            # An absent key matches nothing, so a negated operator holds (as in IAM).
            return if_exists or op in _NEGATED
        negated = op in _NEGATED
        if qualifier == "ForAllValues":
            return all(any(_match_one(op, w, h) != negated for w in values) for h in have)
        hits = any(_match_one(op, w, h) for w in values for h in have)
        return not hits if negated else hits


def _principals(v: Any) -> tuple[str, ...] | None:
    if v is None:
        return None
    if v == "*":
        return ("*",)
    if not isinstance(v, dict):
        raise S3Error("MalformedPolicy", "Invalid principal in policy")
    out = []
    for kind, ids in v.items():
        if kind not in ("AWS", "CanonicalUser"):
            raise S3Error("MalformedPolicy", "Invalid principal in policy")
        for i in _list(ids):
            if not isinstance(i, str):
                raise S3Error("MalformedPolicy", "Invalid principal in policy")
            out.append(_principal_id(i))
    return tuple(out)


def _principal_id(text: str) -> str:
    """C{arn:aws:iam::<id>:root} or C{arn:aws:iam::<id>:user/<name>} → the id or name."""
    if text == "*":
        return "*"
    m = re.match(r"^arn:aws:iam::([^:]*):(?:root|user/(.+))$", text)
    if m:
        return m.group(2) or m.group(1)
    return text


class Policy:
    """A parsed bucket policy."""

    def __init__(self, text: str, bucket: str) -> None:
        self.text = text
        if len(text.encode("utf-8")) > MAX_POLICY_BYTES:
            raise S3Error("PolicyTooLarge", "Policies must be at most 20 KB")
        try:
            doc = json.loads(text)
        except ValueError:
            raise S3Error("MalformedPolicy", "Policies must be valid JSON") from None
        if not isinstance(doc, dict) or "Statement" not in doc:
            raise S3Error("MalformedPolicy", "Missing required field Statement")
        stmts = _list(doc["Statement"])
        if not stmts:
            raise S3Error("MalformedPolicy", "Missing required field Statement")
        self.statements = [self._statement(s, bucket) for s in stmts]

    def _statement(self, s: Any, bucket: str) -> Statement:
        if not isinstance(s, dict):
            raise S3Error("MalformedPolicy", "Statements must be objects")
        effect = s.get("Effect")
        if effect not in ("Allow", "Deny"):
            raise S3Error("MalformedPolicy", "Invalid effect")
        if "Principal" not in s and "NotPrincipal" not in s:
            raise S3Error("MalformedPolicy", "Missing required field Principal")
        if "Action" not in s and "NotAction" not in s:
            raise S3Error("MalformedPolicy", "Missing required field Action")
        if "Resource" not in s and "NotResource" not in s:
            raise S3Error("MalformedPolicy", "Missing required field Resource")
        resources = [str(r) for r in _list(s.get("Resource")) + _list(s.get("NotResource"))]
        for r in resources:
            if not r.startswith("arn:aws:s3:::") or not (
                r == "arn:aws:s3:::*"
                or r[len("arn:aws:s3:::") :].split("/", 1)[0] in (bucket, "*")
                or _glob(r[len("arn:aws:s3:::") :].split("/", 1)[0], bucket)
            ):
                raise S3Error("MalformedPolicy", "Policy has invalid resource")
        for a in _list(s.get("Action")) + _list(s.get("NotAction")):
            if not isinstance(a, str) or not (a == "*" or a.lower().startswith("s3:")):
                raise S3Error("MalformedPolicy", "Policy has an invalid action")
        conditions = []
        cond = s.get("Condition") or {}
        if not isinstance(cond, dict):
            raise S3Error("MalformedPolicy", "Invalid Condition")
        for op, body in cond.items():
            base = op.split(":", 1)[-1]
            base = base[: -len("IfExists")] if base.endswith("IfExists") else base
            if base not in _OPERATORS or not isinstance(body, dict):
                raise S3Error("MalformedPolicy", f"Unknown condition operator {op}")
            for key, values in body.items():
                conditions.append(
                    (
                        op,
                        str(key).lower(),
                        tuple(
                            str(v).lower() if isinstance(v, bool) else str(v) for v in _list(values)
                        ),
                    )
                )

        def strs(v: Any) -> tuple[str, ...] | None:
            return None if v is None else tuple(str(x) for x in _list(v))

        return Statement(
            effect,
            _principals(s.get("Principal")),
            _principals(s.get("NotPrincipal")),
            strs(s.get("Action")),
            strs(s.get("NotAction")),
            strs(s.get("Resource")),
            strs(s.get("NotResource")),
            tuple(conditions),
        )

    @property
    def public(self) -> bool:
        """An Allow statement open to everyone (AWS's notion of a public policy, simplified)."""
        return any(
            st.effect == "Allow"
            and st.principals is not None
            and "*" in st.principals
            and not any(
                k in ("aws:sourceip", "aws:sourcevpc", "aws:principalaccount")
                for _, k, _ in st.conditions
            )
            for st in self.statements
        )

    def evaluate(
        self,
        principal_ids: Iterable[str],
        action: str,
        resource: str,
        context: Callable[[str], list[str] | None],
    ) -> str | None:
        """C{"deny"}, C{"allow"} or None (no statement applies)."""
        ids = list(principal_ids)
        allowed = False
        for st in self.statements:
            if st.applies(ids, action, resource, context):
                if st.effect == "Deny":
                    return "deny"
                allowed = True
        return "allow" if allowed else None
