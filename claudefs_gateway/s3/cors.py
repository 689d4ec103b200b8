# -*- test-case-name: tests.s3.test_cors -*-
"""
Cross-origin resource sharing (CORS) for browsers: a bucket's rules, the
preflight (C{OPTIONS}) they answer, and the headers an actual request gets.

A rule names the origins (at most one C{*} wildcard each), methods and
request headers it allows, the response headers a page may read, and how
long a browser may cache the answer. As in AWS, the first rule that matches
the request's C{Origin}, method (C{Access-Control-Request-Method} when the
request sends one) and requested headers decides; no match means no CORS
headers (and a 403 for a preflight). CORS only tells a browser what it may
show a page: it never grants access, which is still the caller's signature,
ACLs and policy (docs/s3.rst "CORS").
"""

from __future__ import annotations

import re
from typing import Any

from claudefs_gateway.s3.errors import S3Error

__all__ = ["parse_rules", "render_rules", "match", "response_headers", "METHODS", "MAX_RULES"]

METHODS = ("GET", "PUT", "POST", "DELETE", "HEAD")
MAX_RULES = 100


def parse_rules(root: Any, local: Any) -> list[dict[str, Any]]:
    """
    A CORSConfiguration's rules, validated.

    @param root: the parsed C{CORSConfiguration} element; C{local}: its tag-name function.
    @raise S3Error: MalformedXML, InvalidRequest (an unknown method, an
        origin with two wildcards).
    """
    rules: list[dict[str, Any]] = []
    for el in root:
        if local(el.tag) != "CORSRule":
            raise S3Error("MalformedXML", "A CORSConfiguration holds CORSRule elements only")
        rule: dict[str, Any] = {"methods": [], "origins": [], "headers": [], "expose": []}
        for c in el:
            name, text = local(c.tag), (c.text or "").strip()
            if name == "AllowedMethod":
                if text not in METHODS:
                    raise S3Error(
                        "InvalidRequest",
                        f"Found unsupported HTTP method in CORS config. Unsupported method is {text}",
                    )
                rule["methods"].append(text)
            elif name == "AllowedOrigin":
                if text.count("*") > 1:
                    raise S3Error(
                        "InvalidRequest",
                        f"AllowedOrigin '{text}' can not have more than one wildcard.",
                    )
                rule["origins"].append(text)
            elif name == "AllowedHeader":
                if text.count("*") > 1:
                    raise S3Error(
                        "InvalidRequest",
                        f"AllowedHeader '{text}' can not have more than one wildcard.",
                    )
                rule["headers"].append(text)
            elif name == "ExposeHeader":
                rule["expose"].append(text)
            elif name == "MaxAgeSeconds":
                if not text.isdigit():
                    raise S3Error("MalformedXML", "MaxAgeSeconds must be a whole number")
                rule["max_age"] = int(text)
            elif name == "ID":
                if len(text) > 255:
                    raise S3Error(
                        "InvalidArgument", "ID length should not exceed allowed limit of 255"
                    )
                rule["id"] = text
            else:
                raise S3Error("MalformedXML", f"Unknown element {name} in a CORSRule")
        if not rule["methods"] or not rule["origins"]:
            raise S3Error("MalformedXML", "A CORSRule needs an AllowedMethod and an AllowedOrigin")
        rules.append(rule)
    if not rules:
        raise S3Error("MalformedXML", "A CORSConfiguration needs at least one CORSRule")
    if len(rules) > MAX_RULES:
        raise S3Error("MalformedXML", f"A CORSConfiguration holds at most {MAX_RULES} rules")
    return rules


def render_rules(rules: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """The rules as a CORSConfiguration's children (GetBucketCors)."""
    out: list[tuple[str, Any]] = []
    for r in rules:
        items: list[tuple[str, Any]] = []
        if "id" in r:
            items.append(("ID", r["id"]))
        items += [("AllowedHeader", h) for h in r["headers"]]
        items += [("AllowedMethod", m) for m in r["methods"]]
        items += [("AllowedOrigin", o) for o in r["origins"]]
        items += [("ExposeHeader", h) for h in r["expose"]]
        if "max_age" in r:
            items.append(("MaxAgeSeconds", r["max_age"]))
        out.append(("CORSRule", items))
    return out


def _wild(pattern: str, value: str, fold: bool) -> bool:
    """C{pattern} with at most one C{*} (any run of characters) against C{value}."""
    if fold:
        pattern, value = pattern.lower(), value.lower()
    return (
        re.fullmatch(".*".join(re.escape(p) for p in pattern.split("*")), value, re.S) is not None
    )


def match(
    rules: list[dict[str, Any]], origin: str, method: str, headers: list[str]
) -> dict[str, Any] | None:
    """The first rule allowing C{origin} to use C{method} with C{headers} (None: none does)."""
    for r in rules:
        if method not in r["methods"]:
            continue
        if not any(_wild(o, origin, False) for o in r["origins"]):
            continue
        if all(any(_wild(a, h, True) for a in r["headers"]) for h in headers):
            return r
    return None


def response_headers(
    rule: dict[str, Any], origin: str, headers: list[str], preflight: bool
) -> dict[str, str]:
    """The C{Access-Control-*} headers a matched request is answered with."""
    wildcard = "*" in rule["origins"]
    out = {
        "Access-Control-Allow-Origin": "*" if wildcard else origin,
        "Access-Control-Allow-Methods": ", ".join(rule["methods"]),
        "Vary": "Origin, Access-Control-Request-Headers, Access-Control-Request-Method",
    }
    if not wildcard:
        out["Access-Control-Allow-Credentials"] = "true"
    if rule["expose"]:
        out["Access-Control-Expose-Headers"] = ", ".join(rule["expose"])
    if preflight:
        if headers:
            out["Access-Control-Allow-Headers"] = ", ".join(headers)
        if "max_age" in rule:
            out["Access-Control-Max-Age"] = str(rule["max_age"])
    return out
