# -*- test-case-name: tests.s3.test_xmlio -*-
"""
The XML of the S3 API: request bodies parsed safely, response documents built.

Request bodies are parsed with defusedxml (no DTDs, no entity expansion, no
external references: a "billion laughs" body is refused, not expanded) after the
caller has capped their size. Parsers return plain values and raise only
L{S3Error} C{MalformedXML} (or a more precise code), whatever the bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any
from xml.etree.ElementTree import Element

import attrs
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, fromstring

from claudefs_gateway.s3.conditions import DeleteCondition
from claudefs_gateway.s3.errors import S3Error

__all__ = [
    "NS",
    "document",
    "text_document",
    "parse_complete",
    "parse_delete",
    "parse_location",
    "parse_versioning",
    "parse_tagging",
    "parse_retention",
    "parse_legal_hold",
    "parse_lock_configuration",
    "parse_acl",
    "parse_flags",
    "parse_ownership",
    "parse_encryption",
    "parse_lifecycle",
    "CompletePart",
    "DeleteRequest",
    "MAX_DELETE_KEYS",
]

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
MAX_DELETE_KEYS = 1000
MAX_PARTS = 10000

# Children of an element: (name, value) where value is text, a number, a bool, None
# (element omitted) or a nested sequence of children.
Node = tuple[str, Any]
Children = Sequence[Node]

# XML 1.0 allows tab, newline, carriage return and these ranges; anything else in a
# key (S3 keys may hold any UTF-8) goes out as a numeric character reference.
_INVALID_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(value: str) -> str:
    value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _INVALID_XML.sub(lambda m: f"&#x{ord(m.group()):x};", value)


def _render(out: list[str], children: Iterable[Node]) -> None:
    for name, value in children:
        if value is None:
            continue
        if isinstance(value, bool):
            out.append(f"<{name}>{'true' if value else 'false'}</{name}>")
        elif isinstance(value, (int, float)):
            out.append(f"<{name}>{value}</{name}>")
        elif isinstance(value, str):
            out.append(f"<{name}>{_text(value)}</{name}>")
        else:
            out.append(f"<{name}>")
            _render(out, value)
            out.append(f"</{name}>")


def document(root: str, children: Children, namespace: bool = True) -> bytes:
    """An XML document C{<root>children</root>}, UTF-8, with S3's namespace."""
    attrs_ = f' xmlns="{NS}"' if namespace else ""
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n', f"<{root}{attrs_}>"]
    _render(out, children)
    out.append(f"</{root}>")
    return "".join(out).encode("utf-8")


def text_document(root: str, text: str) -> bytes:
    """A document whose root element holds only text (GetBucketLocation)."""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} xmlns="{NS}">{_text(text)}</{root}>'
    ).encode()


# -- parsing -------------------------------------------------------------------


def _parse(body: bytes, root: str) -> Element:
    if not body.strip():
        raise S3Error(
            "MalformedXML", "The XML you provided was not well-formed or did not validate"
        )
    try:
        el = fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (ParseError, DefusedXmlException, ValueError, UnicodeError):
        raise S3Error(
            "MalformedXML", "The XML you provided was not well-formed or did not validate"
        ) from None
    if _local(el.tag) != root:
        raise S3Error("MalformedXML", f"expected a {root} document")
    return el


def _local(tag: Any) -> str:
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1]


def _children(el: Element, name: str) -> list[Element]:
    return [c for c in el if _local(c.tag) == name]


def _one_text(el: Element, name: str, required: bool = True) -> str | None:
    found = _children(el, name)
    if not found:
        if required:
            raise S3Error("MalformedXML", f"missing {name}")
        return None
    if len(found) > 1:
        raise S3Error("MalformedXML", f"more than one {name}")
    return found[0].text or ""


@attrs.frozen
class CompletePart:
    """One Part of a CompleteMultipartUpload body."""

    number: int
    etag: str
    checksums: dict[str, str]


_CHECKSUM_ELEMENTS = {
    "ChecksumCRC32": "crc32",
    "ChecksumCRC32C": "crc32c",
    "ChecksumCRC64NVME": "crc64nvme",
    "ChecksumSHA1": "sha1",
    "ChecksumSHA256": "sha256",
}


def parse_complete(body: bytes) -> list[CompletePart]:
    """
    The parts of a CompleteMultipartUpload body, in the order given.

    @raise S3Error: MalformedXML; InvalidArgument for a part number outside
        1..10000 or more than 10000 parts.
    """
    el = _parse(body, "CompleteMultipartUpload")
    parts = _children(el, "Part")
    if not parts:
        raise S3Error(
            "MalformedXML", "The XML you provided was not well-formed or did not validate"
        )
    if len(parts) > MAX_PARTS:
        raise S3Error("InvalidArgument", f"an upload has at most {MAX_PARTS} parts")
    out = []
    for p in parts:
        num_text = (_one_text(p, "PartNumber") or "").strip()
        if not num_text.isdigit() or len(num_text) > 6:
            raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000")
        number = int(num_text)
        if not 1 <= number <= MAX_PARTS:
            raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000")
        etag = (_one_text(p, "ETag") or "").strip()
        sums = {}
        for elname, algo in _CHECKSUM_ELEMENTS.items():
            v = _one_text(p, elname, required=False)
            if v is not None:
                sums[algo] = v.strip()
        out.append(CompletePart(number, etag, sums))
    return out


@attrs.frozen
class DeleteRequest:
    """A DeleteObjects body."""

    quiet: bool
    keys: list[str]
    #: The C{VersionId} given with each key (None where none was).
    versions: list[str | None] = attrs.field(factory=list)
    #: Each key's conditions: C{ETag}, C{LastModifiedTime}, C{Size} (each None if absent).
    conditions: list[DeleteCondition | None] = attrs.field(factory=list)


def parse_delete(body: bytes) -> DeleteRequest:
    """
    A DeleteObjects body: quiet flag and keys (at most 1000).

    @raise S3Error: MalformedXML.
    """
    el = _parse(body, "Delete")
    quiet_text = _one_text(el, "Quiet", required=False)
    quiet = (quiet_text or "").strip().lower() == "true"
    objects = _children(el, "Object")
    if not objects or len(objects) > MAX_DELETE_KEYS:
        raise S3Error("MalformedXML", f"a Delete request names 1 to {MAX_DELETE_KEYS} objects")
    keys = []
    versions = []
    conditions: list[DeleteCondition | None] = []
    for o in objects:
        key = _one_text(o, "Key")
        keys.append(key or "")
        v = _one_text(o, "VersionId", required=False)
        versions.append(v.strip() if v is not None else None)
        etag = _one_text(o, "ETag", required=False)
        mtime = _one_text(o, "LastModifiedTime", required=False)
        size = _one_text(o, "Size", required=False)
        conditions.append(
            None
            if etag is None and mtime is None and size is None
            else DeleteCondition(etag, mtime, size)
        )
    return DeleteRequest(quiet, keys, versions, conditions)


def parse_versioning(body: bytes) -> tuple[str | None, str | None]:
    """
    A PutBucketVersioning body: (Status, MfaDelete), each None if absent.

    @raise S3Error: MalformedXML; IllegalVersioningConfigurationException for a
        status other than Enabled or Suspended.
    """
    el = _parse(body, "VersioningConfiguration")
    status = _one_text(el, "Status", required=False)
    mfa = _one_text(el, "MfaDelete", required=False)
    if status is not None:
        status = status.strip()
        if status not in ("Enabled", "Suspended"):
            raise S3Error(
                "IllegalVersioningConfigurationException",
                "The Versioning element must be specified as Enabled or Suspended",
            )
    return status, (mfa.strip() if mfa is not None else None)


def parse_tagging(body: bytes) -> list[tuple[str, str]]:
    """A Tagging document's TagSet: (key, value) pairs in order. @raise S3Error: MalformedXML."""
    el = _parse(body, "Tagging")
    sets = _children(el, "TagSet")
    if len(sets) != 1:
        raise S3Error("MalformedXML", "a Tagging document has one TagSet")
    out = []
    for tag in _children(sets[0], "Tag"):
        out.append((_one_text(tag, "Key") or "", _one_text(tag, "Value") or ""))
    return out


def parse_retention(body: bytes) -> tuple[str | None, str | None]:
    """A Retention document: (Mode, RetainUntilDate), each None if absent."""
    el = _parse(body, "Retention")
    mode = _one_text(el, "Mode", required=False)
    until = _one_text(el, "RetainUntilDate", required=False)
    return (mode.strip() if mode is not None else None), (
        until.strip() if until is not None else None
    )


def parse_legal_hold(body: bytes) -> str:
    """A LegalHold document's Status. @raise S3Error: MalformedXML (not ON or OFF)."""
    el = _parse(body, "LegalHold")
    status = (_one_text(el, "Status") or "").strip()
    if status not in ("ON", "OFF"):
        raise S3Error(
            "MalformedXML", "The XML you provided was not well-formed or did not validate"
        )
    return status


def parse_lock_configuration(
    body: bytes,
) -> tuple[str | None, str | None, str | None, str | None]:
    """An ObjectLockConfiguration: (ObjectLockEnabled, Mode, Days, Years), each None if absent."""
    el = _parse(body, "ObjectLockConfiguration")
    enabled = _one_text(el, "ObjectLockEnabled", required=False)
    mode = days = years = None
    rules = _children(el, "Rule")
    if len(rules) > 1:
        raise S3Error("MalformedXML", "more than one Rule")
    if rules:
        dr = _children(rules[0], "DefaultRetention")
        if len(dr) != 1:
            raise S3Error("MalformedXML", "a Rule has one DefaultRetention")
        mode = _one_text(dr[0], "Mode", required=False)
        days = _one_text(dr[0], "Days", required=False)
        years = _one_text(dr[0], "Years", required=False)
    strip = lambda v: v.strip() if v is not None else None  # noqa: E731
    return strip(enabled), strip(mode), strip(days), strip(years)


def parse_acl(body: bytes) -> tuple[str | None, list[Any]]:
    """An AccessControlPolicy: (owner id, grants). @raise S3Error: MalformedACLError."""
    from claudefs_gateway.s3.acl import parse_policy_xml

    try:
        el = _parse(body, "AccessControlPolicy")
    except S3Error:
        raise S3Error("MalformedACLError", "The XML you provided was not well-formed") from None
    return parse_policy_xml(el, _local)


def parse_flags(body: bytes, root: str, names: Sequence[str]) -> dict[str, bool]:
    """A document of boolean flags (PublicAccessBlockConfiguration): absent ones are false."""
    el = _parse(body, root)
    out = {}
    for n in names:
        v = _one_text(el, n, required=False)
        if v is not None and v.strip().lower() not in ("true", "false"):
            raise S3Error("MalformedXML", f"{n} must be true or false")
        out[n] = v is not None and v.strip().lower() == "true"
    return out


def parse_ownership(body: bytes) -> str:
    """OwnershipControls: its one rule's ObjectOwnership."""
    el = _parse(body, "OwnershipControls")
    rules = _children(el, "Rule")
    if len(rules) != 1:
        raise S3Error("MalformedXML", "OwnershipControls has one Rule")
    return (_one_text(rules[0], "ObjectOwnership") or "").strip()


def parse_encryption(body: bytes) -> str:
    """A ServerSideEncryptionConfiguration: its rule's SSEAlgorithm."""
    el = _parse(body, "ServerSideEncryptionConfiguration")
    rules = _children(el, "Rule")
    if len(rules) != 1:
        raise S3Error("MalformedXML", "ServerSideEncryptionConfiguration has one Rule")
    apply = _children(rules[0], "ApplyServerSideEncryptionByDefault")
    if len(apply) != 1:
        raise S3Error("MalformedXML", "a Rule has one ApplyServerSideEncryptionByDefault")
    return (_one_text(apply[0], "SSEAlgorithm") or "").strip()


def parse_lifecycle(body: bytes) -> list[dict[str, Any]]:
    """A LifecycleConfiguration's rules, validated (L{claudefs_gateway.s3.lifecycle.parse_rules})."""
    from claudefs_gateway.s3.lifecycle import parse_rules

    return parse_rules(_parse(body, "LifecycleConfiguration"), _local)


def parse_cors(body: bytes) -> list[dict[str, Any]]:
    """A CORSConfiguration's rules, validated (L{claudefs_gateway.s3.cors.parse_rules})."""
    from claudefs_gateway.s3.cors import parse_rules

    return parse_rules(_parse(body, "CORSConfiguration"), _local)


def parse_location(body: bytes) -> str | None:
    """The LocationConstraint of a CreateBucket body (None if the body is empty)."""
    if not body.strip():
        return None
    el = _parse(body, "CreateBucketConfiguration")
    v = _one_text(el, "LocationConstraint", required=False)
    return v.strip() if v is not None else None
