# -*- test-case-name: tests.s3.test_objectlock -*-
"""
S3 object lock: what a request asks for, and the rules AWS applies.

The record itself (mode, retain-until date, legal hold) is the vfs's
L{claudefs_gateway.vfs.worm.Retention} on the object's inode, so NFS and SMB
clients are held to it too; this module turns S3 headers and XML into such
records and decides, as AWS does, who may change them.
"""

from __future__ import annotations

from typing import Any

from claudefs_gateway.s3.call import iso_date, parse_iso_date
from claudefs_gateway.s3.errors import S3Error
from claudefs_gateway.vfs.worm import COMPLIANCE, GOVERNANCE, Retention

__all__ = [
    "MODES",
    "from_headers",
    "default_retention",
    "check_change",
    "lock_headers",
    "parse_lock_config",
]

MODES = (GOVERNANCE, COMPLIANCE)
_DAY_NS = 86400 * 1_000_000_000


def _until(text: str, name: str) -> int:
    t = parse_iso_date(text)
    if t is None:
        raise S3Error(
            "InvalidArgument",
            "The retain until date must be an ISO 8601 date and time",
            ArgumentName=name,
        )
    return int(t * 1_000_000_000)


def from_headers(headers: dict[str, list[str]], now_ns: int) -> Retention | None:
    """
    The retention and legal hold a write asks for (C{x-amz-object-lock-*}),
    or None if it asks for none.

    @raise S3Error: InvalidArgument (mode without date or the reverse, an
        unknown mode or hold status, a date in the past).
    """

    if (
        "x-amz-object-lock-mode" not in headers
        and "x-amz-object-lock-retain-until-date" not in headers
        and "x-amz-object-lock-legal-hold" not in headers
    ):
        return None  # most writes: no closure and no three calls

    def h(name: str) -> str | None:
        v = headers.get(name)
        return v[0].strip() if v else None

    mode = h("x-amz-object-lock-mode")
    until = h("x-amz-object-lock-retain-until-date")
    hold = h("x-amz-object-lock-legal-hold")
    if mode is None and until is None and hold is None:
        return None
    if (mode is None) != (until is None):
        raise S3Error(
            "InvalidArgument",
            "x-amz-object-lock-retain-until-date and x-amz-object-lock-mode must both be supplied",
        )
    if mode is not None and mode not in MODES:
        raise S3Error(
            "InvalidArgument", "Unknown wormMode directive.", ArgumentName="x-amz-object-lock-mode"
        )
    until_ns = _until(until, "x-amz-object-lock-retain-until-date") if until is not None else None
    if until_ns is not None and until_ns <= now_ns:
        raise S3Error("InvalidArgument", "The retain until date must be in the future!")
    if hold is not None and hold not in ("ON", "OFF"):
        raise S3Error(
            "InvalidArgument",
            "Legal hold status must be ON or OFF",
            ArgumentName="x-amz-object-lock-legal-hold",
        )
    return Retention(mode, until_ns, hold == "ON")


def default_retention(rule: dict[str, Any] | None, now_ns: int) -> Retention | None:
    """A bucket's default retention applied to an object written now."""
    if not rule:
        return None
    days = int(rule.get("days") or 0) + 365 * int(rule.get("years") or 0)
    if days <= 0:
        return None
    return Retention(rule.get("mode"), now_ns + days * _DAY_NS, False)


def merge(explicit: Retention | None, default: Retention | None) -> Retention | None:
    """What a new object gets: explicit headers win; a legal hold stands alone."""
    if explicit is None:
        return default
    if explicit.mode is None and default is not None:
        return Retention(default.mode, default.until_ns, explicit.hold)
    return explicit if (explicit.mode is not None or explicit.hold) else default


def check_change(
    old: Retention | None, mode: str | None, until_ns: int | None, bypass: bool, now_ns: int
) -> None:
    """
    Whether retention C{old} may become (C{mode}, C{until_ns}): extending is
    always allowed; shortening, removing or changing the mode of compliance
    retention never; of governance retention only with a bypass.

    @raise S3Error: AccessDenied.
    """
    if old is None or not old.retained(now_ns):
        return
    assert old.until_ns is not None
    # Any change of mode, like any shortening, needs the bypass (and compliance
    # gives way to none).
    weaker = mode is None or until_ns is None or until_ns < old.until_ns or mode != old.mode
    if not weaker:
        return
    if old.mode == GOVERNANCE and bypass:
        return
    raise S3Error(
        "AccessDenied", "The object is under retention; it cannot be shortened or removed"
    )


def lock_headers(r: Retention | None) -> dict[str, str]:
    """The C{x-amz-object-lock-*} response headers of GET and HEAD."""
    if r is None:
        return {}
    out = {}
    if r.mode is not None and r.until_ns is not None:
        out["x-amz-object-lock-mode"] = r.mode
        out["x-amz-object-lock-retain-until-date"] = iso_date(r.until_ns)
    out["x-amz-object-lock-legal-hold"] = "ON" if r.hold else "OFF"
    return out


def parse_lock_config(
    el_mode: str | None, days: str | None, years: str | None
) -> dict[str, Any] | None:
    """
    A bucket's DefaultRetention (mode and days or years), validated.

    @raise S3Error: MalformedXML (both days and years, or neither), InvalidArgument.
    """
    if el_mode is None and days is None and years is None:
        return None
    if el_mode not in MODES:
        raise S3Error(
            "MalformedXML",
            "The XML you provided was not well-formed or did not validate against our published schema",
        )
    if (days is None) == (years is None):
        raise S3Error(
            "MalformedXML",
            "The XML you provided was not well-formed or did not validate against our published schema",
        )
    text = days if days is not None else years
    assert text is not None
    if not text.strip().lstrip("-").isdigit() or int(text) <= 0:
        raise S3Error(
            "InvalidArgument", "Default retention period must be a positive integer value"
        )
    return {"mode": el_mode, "days" if days is not None else "years": int(text)}
