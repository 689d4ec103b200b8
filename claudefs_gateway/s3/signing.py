# -*- test-case-name: tests.s3.test_signing -*-
"""
AWS request signatures, as pure functions: Signature Version 4 (header and
query-string/presigned forms, and the per-chunk signatures of streaming
uploads) and the older Signature Version 2 that some clients still send.

Nothing here knows about users, clocks or HTTP objects: L{claudefs_gateway.s3.auth}
feeds these functions what a request carried and compares what they compute.

References: AWS "Signature Version 4 signing process" (canonical request,
string to sign, signing key), "Authenticating Requests: Using Query
Parameters", "Signature Calculations for the Authorization Header: Transferring
Payload in Multiple Chunks (Chunked Upload)", and the S3 Developer Guide's
"Signing and Authenticating REST Requests" (version 2).
"""

from __future__ import annotations

import base64
import calendar
import functools
import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from email.utils import parsedate_tz
from typing import Any
from urllib.parse import unquote_to_bytes

import attrs

from claudefs_gateway.s3.errors import S3Error

__all__ = [
    "ALGORITHM",
    "UNSIGNED_PAYLOAD",
    "STREAMING_SIGNED",
    "STREAMING_SIGNED_TRAILER",
    "STREAMING_UNSIGNED_TRAILER",
    "EMPTY_SHA256",
    "uri_encode",
    "canonical_uri",
    "canonical_query",
    "canonical_headers",
    "canonical_request",
    "string_to_sign",
    "signing_key",
    "sign",
    "chunk_string_to_sign",
    "trailer_string_to_sign",
    "Credential",
    "AuthHeader",
    "Presigned",
    "parse_authorization",
    "parse_presigned",
    "parse_amz_date",
    "parse_http_date",
    "parse_query",
    "V2_SUBRESOURCES",
    "v2_string_to_sign",
    "v2_canonical_resource",
    "v2_sign",
]

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600

# RFC 3986 unreserved characters: never percent-encoded in canonical forms.
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ENC = [chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in range(256)]
#: What a path made only of unreserved characters and slashes leaves after
#: C{translate(None, _PLAIN_PATH)}: nothing.
_PLAIN_PATH = bytes(sorted(_UNRESERVED | {ord("/")}))


def uri_encode(data: bytes, keep_slash: bool = False) -> str:
    """AWS's UriEncode: every byte but the unreserved ones as %XX (upper case)."""
    if keep_slash:
        return "/".join("".join(_ENC[b] for b in part) for part in data.split(b"/"))
    return "".join(_ENC[b] for b in data)


def canonical_uri(raw_path: bytes) -> str:
    """
    The canonical URI of a request path as sent on the wire.

    S3 does not normalise paths (no C{.}/C{..} folding, no doubled encoding).
    Each segment between literal slashes is decoded and re-encoded, so clients
    that encode a little more or less than AWS's rule (C{~}, C{!}, C{'}) are
    still verified, and an encoded slash (C{%2F}) stays encoded as they signed it.

    A path of unreserved characters and slashes alone (most keys) decodes and
    re-encodes to itself, so it is taken as it is.
    """
    if raw_path and not raw_path.translate(None, _PLAIN_PATH):
        return raw_path.decode("ascii")
    return "/".join(uri_encode(unquote_to_bytes(seg)) for seg in raw_path.split(b"/")) or "/"


def parse_query(raw: bytes) -> list[tuple[bytes, bytes]]:
    """The query string's (name, value) pairs, percent-decoded, in order; C{?a} gives (a, "")."""
    out = []
    for part in raw.split(b"&"):
        if not part:
            continue
        name, _, value = part.partition(b"=")
        out.append((unquote_to_bytes(name), unquote_to_bytes(value)))
    return out


def canonical_query(pairs: Iterable[tuple[bytes, bytes]], exclude: str | None = None) -> str:
    """Sorted, re-encoded C{name=value} pairs joined by C{&}."""
    items = sorted(
        (uri_encode(n), uri_encode(v)) for n, v in pairs if exclude is None or n != exclude.encode()
    )
    return "&".join(f"{n}={v}" for n, v in items)


def canonical_headers(headers: Mapping[str, Sequence[str]], signed: Sequence[str]) -> str:
    """
    C{name:value\\n} for each signed header (lower-case names; several values
    joined by commas; values trimmed, runs of spaces folded to one).

    @raise S3Error: a signed header is missing from the request.
    """
    lines = []
    for name in signed:
        values = headers.get(name)
        if values is None:
            # A header named in SignedHeaders but absent cannot have been signed as sent.
            raise S3Error(
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        # Whitespace runs fold to one space, as botocore (and AWS's own check) do it.
        if len(values) == 1:  # the usual case, without a generator's calls
            joined = " ".join(values[0].split())
        else:
            joined = ",".join(" ".join(v.split()) for v in values)
        lines.append(f"{name}:{joined}\n")
    return "".join(lines)


def canonical_request(
    method: str,
    raw_path: bytes,
    query: Iterable[tuple[bytes, bytes]],
    headers: Mapping[str, Sequence[str]],
    signed: Sequence[str],
    payload_hash: str,
    exclude_query: str | None = None,
) -> str:
    """Method, URI, query, headers, signed header names and payload hash, one a line."""
    return "\n".join(
        [
            method,
            canonical_uri(raw_path),
            canonical_query(query, exclude_query),
            canonical_headers(headers, signed),
            ";".join(signed),
            payload_hash,
        ]
    )


def string_to_sign(amz_date: str, scope: str, creq: str) -> str:
    """AWS4-HMAC-SHA256, the time, the scope, the canonical request's SHA-256."""
    return "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(creq.encode("utf-8")).hexdigest()])


def _hmac(key: bytes, msg: str) -> bytes:
    # hmac.digest: OpenSSL's one-shot HMAC, without building an HMAC object.
    return hmac.digest(key, msg.encode("utf-8"), "sha256")


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """kSigning = HMAC(HMAC(HMAC(HMAC("AWS4"+secret, date), region), service), "aws4_request")."""
    k = _hmac(("AWS4" + secret).encode("utf-8"), date)
    k = _hmac(k, region)
    k = _hmac(k, service)
    return _hmac(k, "aws4_request")


#: Signing keys' HMAC states (the key's pads already hashed), at most this
#: many (cleared when full).
_KEYED_MAX = 1024
_KEYED: dict[bytes, Any] = {}


def sign(key: bytes, sts: str) -> str:
    """
    The hex signature of a string to sign: a copy of the key's HMAC-SHA256
    state, kept per signing key (the same for a user all day): OpenSSL 3's
    one-shot C{hmac.digest} sets up its digest and pads on every call, about
    half again the CPU (every request, and every chunk of a signed streaming
    upload).
    """
    keyed = _KEYED.get(key)
    if keyed is None:
        if len(_KEYED) >= _KEYED_MAX:
            _KEYED.clear()
        keyed = _KEYED[key] = hmac.new(key, digestmod="sha256")
    h = keyed.copy()
    h.update(sts.encode("utf-8"))
    return h.hexdigest()  # type: ignore[no-any-return]


def chunk_string_to_sign(amz_date: str, scope: str, previous: str, chunk_sha256: str) -> str:
    """What one aws-chunked chunk's signature signs (C{STREAMING-AWS4-HMAC-SHA256-PAYLOAD})."""
    return "\n".join(
        ["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, previous, EMPTY_SHA256, chunk_sha256]
    )


def trailer_string_to_sign(amz_date: str, scope: str, previous: str, trailer_sha256: str) -> str:
    """What the trailing headers' signature signs (C{…-PAYLOAD-TRAILER})."""
    return "\n".join(["AWS4-HMAC-SHA256-TRAILER", amz_date, scope, previous, trailer_sha256])


# -- parsing what the client sent ------------------------------------------------------


@attrs.frozen
class Credential:
    """C{AKID/20130524/us-east-1/s3/aws4_request}."""

    access_key: str
    date: str
    region: str
    service: str
    terminal: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/{self.terminal}"

    @classmethod
    def parse(cls, text: str, code: str) -> Credential:
        parts = text.split("/")
        if len(parts) != 5 or not all(parts):
            raise S3Error(
                code,
                'the Credential is mal-formed; expecting "<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".',
            )
        if not re.fullmatch(r"\d{8}", parts[1]):
            raise S3Error(code, "the Credential date is mal-formed")
        return cls(*parts)


@attrs.frozen
class AuthHeader:
    """A parsed SigV4 Authorization header."""

    credential: Credential
    signed_headers: tuple[str, ...]
    signature: str


_SIGNED_HEADER_RE = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")


def _signed_headers(text: str, code: str) -> tuple[str, ...]:
    names = tuple(text.split(";"))
    if not text or not all(_SIGNED_HEADER_RE.match(n) for n in names):
        raise S3Error(code, "SignedHeaders is mal-formed")
    if "host" not in names:
        raise S3Error(code, "SignedHeaders must include host")
    if list(names) != sorted(names):
        raise S3Error(code, "SignedHeaders must be sorted")
    return names


_SIGNATURE_FIELD = "Signature="
_SIGNATURE_RE = re.compile(r"[0-9a-f]{64}")
_PLACEHOLDER = "0" * 64


def parse_authorization(value: str) -> AuthHeader:
    """
    Parse C{AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…}.

    A client sends the same header but for its signature request after
    request (the credential's date changes once a day): with the signature
    last, as every SDK writes it, the rest is parsed once and kept
    (L{_parse_unsigned}); anything else takes the whole parse.

    @raise S3Error: AuthorizationHeaderMalformed.
    """
    at = value.rfind(_SIGNATURE_FIELD)
    if at > 0 and len(value) - at == len(_SIGNATURE_FIELD) + 64:
        sig = value[at + len(_SIGNATURE_FIELD) :]
        if _SIGNATURE_RE.fullmatch(sig):
            credential, signed = _parse_unsigned(value[:at])
            return AuthHeader(credential, signed, sig)
    return _parse_authorization(value)


@functools.lru_cache(maxsize=256)
def _parse_unsigned(head: str) -> tuple[Credential, tuple[str, ...]]:
    """
    The credential and signed headers of an Authorization header up to its
    signature (a valid one stands in for it: the errors are the full parse's).
    """
    h = _parse_authorization(head + _SIGNATURE_FIELD + _PLACEHOLDER)
    return h.credential, h.signed_headers


def _parse_authorization(value: str) -> AuthHeader:
    code = "AuthorizationHeaderMalformed"
    algo, _, rest = value.strip().partition(" ")
    if algo != ALGORITHM:
        raise S3Error(code, "The authorization header is malformed; unsupported algorithm")
    fields: dict[str, str] = {}
    for item in rest.split(","):
        k, sep, v = item.strip().partition("=")
        if not sep or k in fields:
            raise S3Error(code, "The authorization header is malformed")
        fields[k] = v.strip()
    if set(fields) != {"Credential", "SignedHeaders", "Signature"}:
        raise S3Error(code, "The authorization header is malformed; missing or unknown fields")
    sig = fields["Signature"]
    if not re.fullmatch(r"[0-9a-f]{64}", sig):
        raise S3Error(code, "The authorization header is malformed; bad signature format")
    return AuthHeader(
        Credential.parse(fields["Credential"], code),
        _signed_headers(fields["SignedHeaders"], code),
        sig,
    )


@attrs.frozen
class Presigned:
    """The SigV4 parameters of a presigned URL."""

    credential: Credential
    amz_date: str
    expires: int
    signed_headers: tuple[str, ...]
    signature: str


def parse_presigned(query: Mapping[str, str]) -> Presigned:
    """
    The SigV4 query parameters of a presigned URL.

    @raise S3Error: AuthorizationQueryParametersError.
    """
    code = "AuthorizationQueryParametersError"
    needed = (
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
    )
    missing = [n for n in needed if n not in query]
    if missing:
        raise S3Error(
            code,
            "Query-string authentication version 4 requires the X-Amz-Algorithm, "
            "X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, "
            "and X-Amz-Expires parameters.",
        )
    if query["X-Amz-Algorithm"] != ALGORITHM:
        raise S3Error(code, 'X-Amz-Algorithm only supports "AWS4-HMAC-SHA256"')
    exp = query["X-Amz-Expires"]
    if not exp.isdigit() or len(exp) > 7:
        raise S3Error(code, "X-Amz-Expires should be a number")
    expires = int(exp)
    if expires > MAX_PRESIGN_EXPIRES:
        raise S3Error(code, "X-Amz-Expires must be less than a week (in seconds) that is 604800")
    sig = query["X-Amz-Signature"]
    if not re.fullmatch(r"[0-9a-f]{64}", sig):
        raise S3Error(code, "X-Amz-Signature is mal-formed")
    parse_amz_date(query["X-Amz-Date"], code)
    return Presigned(
        Credential.parse(query["X-Amz-Credential"], code),
        query["X-Amz-Date"],
        expires,
        _signed_headers(query["X-Amz-SignedHeaders"], code),
        sig,
    )


_AMZ_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$")


def parse_amz_date(text: str, code: str = "AccessDenied") -> float:
    """Seconds since the epoch of an ISO 8601 basic timestamp (C{20130524T000000Z})."""
    seconds = _amz_seconds(text)
    if seconds is None:
        raise S3Error(
            code, "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\""
        )
    if seconds != seconds:  # NaN
        raise S3Error(code, "X-Amz-Date is not a valid date")
    return seconds


@functools.lru_cache(maxsize=64)
def _amz_seconds(text: str) -> float | None:
    """
    L{parse_amz_date}'s work, kept: every request signed in the same second
    carries the same timestamp. None: not the format; NaN: not a date.
    """
    m = _AMZ_DATE.match(text)
    if not m:
        return None
    y, mo, d, h, mi, s = (int(g) for g in m.groups())
    try:
        return float(calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)))
    except (ValueError, OverflowError):
        return float("nan")


def format_amz_date(seconds: float) -> str:
    """Seconds since the epoch as an ISO 8601 basic timestamp."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(seconds))


def parse_http_date(text: str) -> float | None:
    """Seconds since the epoch of an RFC 1123/850/asctime date, or None if it is not one."""
    try:
        t = parsedate_tz(text)
    except (TypeError, ValueError, IndexError):
        return None
    if t is None:
        return None
    try:
        return float(calendar.timegm(t[:9]) - (t[9] or 0))
    except (ValueError, OverflowError):
        return None


# -- Signature Version 2 ---------------------------------------------------------------

# Sub-resources that belong in the V2 canonical resource (botocore's and s3cmd's lists).
V2_SUBRESOURCES = frozenset(
    {
        "accelerate",
        "acl",
        "analytics",
        "cors",
        "defaultObjectAcl",
        "delete",
        "inventory",
        "lifecycle",
        "location",
        "logging",
        "metrics",
        "notification",
        "object-lock",
        "partNumber",
        "policy",
        "replication",
        "requestPayment",
        "response-cache-control",
        "response-content-disposition",
        "response-content-encoding",
        "response-content-language",
        "response-content-type",
        "response-expires",
        "restore",
        "select",
        "select-type",
        "storageClass",
        "tagging",
        "torrent",
        "uploadId",
        "uploads",
        "versionId",
        "versioning",
        "versions",
        "website",
    }
)


def v2_canonical_resource(vhost_bucket: str | None, raw_path: bytes, raw_query: bytes) -> str:
    """
    C{[/bucket]/path[?sub&sub=value]}: the path as sent, sub-resources sorted,
    values decoded, and C{=} kept exactly when the client sent one (C{?acl} and
    C{?acl=} are signed differently).
    """
    path = raw_path.decode("latin-1")
    if vhost_bucket is not None:
        path = "/" + vhost_bucket + path
    subs: list[tuple[str, str | None]] = []
    for part in raw_query.split(b"&"):
        name, eq, value = part.partition(b"=")
        n = unquote_to_bytes(name).decode("utf-8", "replace")
        if n in V2_SUBRESOURCES:
            subs.append((n, unquote_to_bytes(value).decode("utf-8", "replace") if eq else None))
    if not subs:
        return path
    subs.sort(key=lambda nv: nv[0])
    return path + "?" + "&".join(n if v is None else f"{n}={v}" for n, v in subs)


def v2_string_to_sign(
    method: str, headers: Mapping[str, Sequence[str]], date_line: str, resource: str
) -> str:
    """
    VERB, Content-MD5, Content-Type, Date (or Expires), x-amz-* headers, resource.

    @param date_line: the Date header, "" when x-amz-date is sent, or the
        Expires parameter of a presigned URL.
    """

    def first(name: str) -> str:
        v = headers.get(name)
        return v[0].strip() if v else ""

    amz = sorted(
        (name, ",".join(v.strip() for v in values))
        for name, values in headers.items()
        if name.startswith("x-amz-")
    )
    lines = [method, first("content-md5"), first("content-type"), date_line]
    lines += [f"{n}:{v}" for n, v in amz]
    lines.append(resource)
    return "\n".join(lines)


def v2_sign(secret: str, sts: str) -> str:
    """Base64 HMAC-SHA1 of the string to sign."""
    mac = hmac.new(secret.encode("utf-8"), sts.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(mac).decode("ascii")
