# -*- test-case-name: tests.s3.test_auth -*-
"""
Who sent an S3 request: SigV4 (header or presigned query), SigV2 (header or
query), and the per-chunk signatures of streaming uploads.

Anonymous requests are refused. Keys come from the vfs user database, so a
user added with C{cfs-gateway user add --s3-keys} can sign at once; the request
then runs as that user's uid and groups. Signatures are compared in constant
time; failures are counted (C{gateway_auth_failures_total}) and rate-limited
per source address with the shared L{AuthFailureLimiter}. Nothing secret, no
signature and no presigned query string is ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime

from claudefs_gateway.core.authlimit import AuthFailureLimiter
from claudefs_gateway.core.log import Logger
from claudefs_gateway.s3 import signing as sg
from claudefs_gateway.s3.errors import S3Error

__all__ = ["Authenticator", "AuthResult", "ChunkSigner", "RequestView", "MAX_SKEW"]

MAX_SKEW = 15 * 60

_SIG_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your key and signing method."
)


@attrs.frozen
class RequestView:
    """What authentication needs to know about a request (no twisted.web objects)."""

    method: str
    raw_path: bytes
    raw_query: bytes
    headers: Mapping[str, Sequence[str]]
    source: str
    vhost_bucket: str | None = None

    def header(self, name: str) -> str | None:
        v = self.headers.get(name)
        return v[0] if v else None


class ChunkSigner:
    """
    Checks the chain of chunk signatures of a C{STREAMING-AWS4-HMAC-SHA256-PAYLOAD*}
    upload: each chunk signs its data's SHA-256 and the previous signature,
    starting from the request's own ("seed") signature.
    """

    def __init__(self, key: bytes, amz_date: str, scope: str, seed: str) -> None:
        self._key = key
        self._date = amz_date
        self._scope = scope
        self.previous = seed

    def verify_chunk(self, data_sha256: str, signature: str) -> None:
        """@raise S3Error: SignatureDoesNotMatch."""
        sts = sg.chunk_string_to_sign(self._date, self._scope, self.previous, data_sha256)
        self._check(sts, signature)

    def verify_trailer(self, trailers: list[tuple[str, str]], signature: str) -> None:
        """The trailer signature covers each C{name:value\\n} of the trailing headers."""
        canonical = "".join(f"{n}:{v}\n" for n, v in trailers)
        digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        sts = sg.trailer_string_to_sign(self._date, self._scope, self.previous, digest)
        self._check(sts, signature)

    def _check(self, sts: str, signature: str) -> None:
        want = sg.sign(self._key, sts)
        if not hmac.compare_digest(want.encode(), signature.encode()):
            raise S3Error("SignatureDoesNotMatch", _SIG_MISMATCH)
        self.previous = signature


@attrs.frozen
class AuthResult:
    """
    @ivar user: the L{claudefs_gateway.vfs.identity.User} who signed (None: anonymous).
    @ivar scheme: C{v4}, C{v4-query}, C{v2} or C{v2-query} (for logs and metrics).
    @ivar payload: the C{x-amz-content-sha256} mode: a hex digest the body must
        match, C{UNSIGNED-PAYLOAD}, or one of the C{STREAMING-*} modes.
    @ivar chunks: for signed streaming uploads, what checks each chunk.
    """

    user: Any
    scheme: str
    payload: str
    chunks: ChunkSigner | None = None


_STREAMING = (sg.STREAMING_SIGNED, sg.STREAMING_SIGNED_TRAILER, sg.STREAMING_UNSIGNED_TRAILER)


class Authenticator:
    """
    @param users: a L{claudefs_gateway.vfs.identity.UserDB} (anything with C{by_access_key}).
    @param region: the configured region: SigV4 scopes must name it.
    """

    _log = Logger()

    def __init__(
        self,
        users: Any,
        region: str,
        clock: IReactorTime,
        limiter: AuthFailureLimiter | None = None,
        metrics: Any = None,
    ) -> None:
        self.users = users
        self.region = region
        self.clock = clock
        self.limiter = limiter or AuthFailureLimiter(clock)
        self.metrics = metrics
        self._keys: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()

    def _signing_key(self, secret: str, date: str) -> bytes:
        k = (secret, date, self.region)
        key = self._keys.get(k)
        if key is None:
            key = self._keys[k] = sg.signing_key(secret, date, self.region, "s3")
            while len(self._keys) > 1024:
                self._keys.popitem(last=False)
        return key

    def authenticate(self, req: RequestView) -> AuthResult:
        """
        The user a request is signed by.

        @raise S3Error: AccessDenied (anonymous, expired, locked out),
            InvalidAccessKeyId, SignatureDoesNotMatch, RequestTimeTooSkewed,
            AuthorizationHeaderMalformed, AuthorizationQueryParametersError...
        """
        return self._guarded(req.source, lambda: self._authenticate(req))

    def authenticate_form(self, source: str, fields: Mapping[str, str]) -> AuthResult:
        """
        Who signed a browser form (POST object): its policy signed with SigV2
        (C{AWSAccessKeyId}, C{signature}: base64 HMAC-SHA1 of the policy) or
        SigV4 (C{x-amz-credential}, C{x-amz-date}, C{x-amz-algorithm},
        C{x-amz-signature}: hex HMAC-SHA256 of the policy with the signing
        key); anonymous when the form carries neither. C{fields} are by
        lower-case name.

        @raise S3Error: InvalidArgument (a credential without its signature or
            policy), InvalidAccessKeyId, SignatureDoesNotMatch, AccessDenied.
        """
        return self._guarded(source, lambda: self._form(fields))

    def _guarded(self, source: str, check: Any) -> AuthResult:
        if self.limiter.blocked(source):
            if self.metrics is not None:
                self.metrics.rejected("auth_locked")
            raise S3Error(
                "AccessDenied",
                "Too many failed authentication attempts from your address; try again later",
            )
        try:
            result: AuthResult = check()
        except S3Error as e:
            if self.metrics is not None:
                self.metrics.auth_failed()
            if e.code in ("SignatureDoesNotMatch", "InvalidAccessKeyId"):
                self.limiter.failed(source)
            self._log.info(
                "s3 authentication failed from {source}: {code}", source=source, code=e.code
            )
            raise
        self.limiter.succeeded(source)
        return result

    def _form(self, fields: Mapping[str, str]) -> AuthResult:
        policy = fields.get("policy")
        if "x-amz-signature" in fields or "x-amz-credential" in fields:
            for name in ("x-amz-algorithm", "x-amz-credential", "x-amz-date", "x-amz-signature"):
                if name not in fields:
                    raise S3Error(
                        "InvalidArgument",
                        f"Bucket POST must contain a field named '{name}'.",
                        ArgumentName=name,
                    )
            if policy is None:
                raise S3Error(
                    "InvalidArgument",
                    "Bucket POST must contain a field named 'policy'.",
                    ArgumentName="policy",
                )
            if fields["x-amz-algorithm"] != sg.ALGORITHM:
                raise S3Error(
                    "InvalidArgument",
                    "Only AWS4-HMAC-SHA256 is supported for x-amz-algorithm",
                    ArgumentName="x-amz-algorithm",
                )
            cred = sg.Credential.parse(fields["x-amz-credential"], "InvalidArgument")
            amz_date = fields["x-amz-date"]
            sg.parse_amz_date(amz_date, "InvalidArgument")
            self._check_scope(cred, amz_date, "InvalidArgument")
            user = self._user(cred.access_key)
            key = self._signing_key(user.s3_secret_key, cred.date)
            self._compare(sg.sign(key, policy), fields["x-amz-signature"], user, policy)
            return AuthResult(user, "v4-form", sg.UNSIGNED_PAYLOAD)
        if "awsaccesskeyid" in fields or "signature" in fields:
            for name in ("awsaccesskeyid", "signature", "policy"):
                if name not in fields:
                    shown = "AWSAccessKeyId" if name == "awsaccesskeyid" else name
                    raise S3Error(
                        "InvalidArgument",
                        f"Bucket POST must contain a field named '{shown}'.",
                        ArgumentName=shown,
                    )
            assert policy is not None
            user = self._user(fields["awsaccesskeyid"])
            want = sg.v2_sign(user.s3_secret_key, policy)
            self._compare(want, fields["signature"], user, policy)
            return AuthResult(user, "v2-form", sg.UNSIGNED_PAYLOAD)
        return AuthResult(None, "anonymous", sg.UNSIGNED_PAYLOAD)

    def _authenticate(self, req: RequestView) -> AuthResult:
        authz = req.header("authorization")
        query = (
            {
                n.decode("utf-8", "replace"): v.decode("utf-8", "replace")
                for n, v in sg.parse_query(req.raw_query)
            }
            if req.raw_query
            else {}
        )
        if authz is not None:
            if authz.startswith("AWS4-"):
                return self._v4_header(req, authz)
            if authz.startswith("AWS "):
                return self._v2_header(req, authz)
            raise S3Error("AccessDenied", "Unsupported Authorization Type")
        if "X-Amz-Signature" in query or "X-Amz-Algorithm" in query:
            return self._v4_query(req, query)
        if "Signature" in query and "AWSAccessKeyId" in query:
            return self._v2_query(req, query)
        # Unsigned: an anonymous request, let through only where a bucket's
        # ACL or policy grants everyone (docs/s3.rst "Access control").
        return AuthResult(None, "anonymous", sg.UNSIGNED_PAYLOAD)

    def _user(self, access_key: str) -> Any:
        user = self.users.by_access_key(access_key)
        if user is None or not user.s3_secret_key:
            raise S3Error(
                "InvalidAccessKeyId",
                "The AWS Access Key Id you provided does not exist in our records.",
                AWSAccessKeyId=access_key,
            )
        return user

    def _check_scope(self, cred: sg.Credential, amz_date: str, code: str) -> None:
        if cred.date != amz_date[:8]:
            raise S3Error(code, "the credential date does not match the request date")
        if cred.service != "s3" or cred.terminal != "aws4_request":
            raise S3Error(code, "the credential scope must end with s3/aws4_request")
        if cred.region != self.region:
            raise S3Error(
                code,
                f"The authorization header is malformed; the region '{cred.region}' is wrong; "
                f"expecting '{self.region}'",
                Region=self.region,
            )

    def _skew(self, when: float) -> None:
        now = self.clock.seconds()
        if abs(now - when) > MAX_SKEW:
            raise S3Error(
                "RequestTimeTooSkewed",
                "The difference between the request time and the current time is too large.",
                MaxAllowedSkewMilliseconds=str(MAX_SKEW * 1000),
            )

    def _compare(self, want: str, got: str, user: Any, sts: str, creq: str | None = None) -> None:
        if not hmac.compare_digest(want.encode(), got.encode()):
            extra = {"AWSAccessKeyId": user.s3_access_key, "StringToSign": sts}
            if creq is not None:
                extra["CanonicalRequest"] = creq
            raise S3Error("SignatureDoesNotMatch", _SIG_MISMATCH, **extra)

    # -- SigV4 -------------------------------------------------------------------------

    def _v4_header(self, req: RequestView, authz: str) -> AuthResult:
        auth = sg.parse_authorization(authz)
        amz_date = req.header("x-amz-date")
        if amz_date is None:
            date = req.header("date")
            when = sg.parse_http_date(date) if date else None
            if when is None:
                raise S3Error(
                    "AccessDenied", "AWS authentication requires a valid Date or x-amz-date header"
                )
            amz_date = sg.format_amz_date(when)
        when = sg.parse_amz_date(amz_date, "AccessDenied")
        self._check_scope(auth.credential, amz_date, "AuthorizationHeaderMalformed")
        user = self._user(auth.credential.access_key)
        self._skew(when)
        payload = req.header("x-amz-content-sha256")
        if payload is None:
            raise S3Error(
                "InvalidRequest", "Missing required header for this request: x-amz-content-sha256"
            )
        if payload not in _STREAMING and payload != sg.UNSIGNED_PAYLOAD:
            if len(payload) != 64 or any(c not in "0123456789abcdef" for c in payload):
                raise S3Error(
                    "InvalidArgument",
                    "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, "
                    "STREAMING-… or a lower-case SHA256 hex digest",
                )
        for name in auth.signed_headers:
            if name not in req.headers:
                raise S3Error("SignatureDoesNotMatch", _SIG_MISMATCH)
        creq = sg.canonical_request(
            req.method,
            req.raw_path,
            sg.parse_query(req.raw_query),
            req.headers,
            auth.signed_headers,
            payload,
        )
        sts = sg.string_to_sign(amz_date, auth.credential.scope, creq)
        key = self._signing_key(user.s3_secret_key, auth.credential.date)
        self._compare(sg.sign(key, sts), auth.signature, user, sts, creq)
        chunks = None
        if payload in (sg.STREAMING_SIGNED, sg.STREAMING_SIGNED_TRAILER):
            chunks = ChunkSigner(key, amz_date, auth.credential.scope, auth.signature)
        return AuthResult(user, "v4", payload, chunks)

    def _v4_query(self, req: RequestView, query: dict[str, str]) -> AuthResult:
        pre = sg.parse_presigned(query)
        self._check_scope(pre.credential, pre.amz_date, "AuthorizationQueryParametersError")
        user = self._user(pre.credential.access_key)
        signed_at = sg.parse_amz_date(pre.amz_date)
        now = self.clock.seconds()
        if now > signed_at + pre.expires:
            expired = S3Error("AccessDenied", "Request has expired")
            expired.extra["X-Amz-Expires"] = str(pre.expires)
            raise expired
        if signed_at - now > MAX_SKEW:
            raise S3Error("AccessDenied", "Request is not valid yet")
        payload = query.get("X-Amz-Content-Sha256", sg.UNSIGNED_PAYLOAD)
        creq = sg.canonical_request(
            req.method,
            req.raw_path,
            sg.parse_query(req.raw_query),
            req.headers,
            pre.signed_headers,
            payload,
            exclude_query="X-Amz-Signature",
        )
        sts = sg.string_to_sign(pre.amz_date, pre.credential.scope, creq)
        key = self._signing_key(user.s3_secret_key, pre.credential.date)
        self._compare(sg.sign(key, sts), pre.signature, user, sts, creq)
        return AuthResult(user, "v4-query", payload)

    # -- SigV2 -------------------------------------------------------------------------

    def _v2_header(self, req: RequestView, authz: str) -> AuthResult:
        cred = authz[4:].strip()
        access_key, sep, signature = cred.rpartition(":")
        if not sep or not access_key or not signature:
            raise S3Error(
                "InvalidArgument", "AWS authorization header is invalid; expected AWS KEY:SIGNATURE"
            )
        amz_date = req.header("x-amz-date")
        date = req.header("date")
        # x-amz-date, when sent (even empty), is the date that counts (it is the one signed).
        when = sg.parse_http_date(amz_date if amz_date is not None else (date or ""))
        if when is None or when < 0:
            raise S3Error(
                "AccessDenied", "AWS authentication requires a valid Date or x-amz-date header"
            )
        user = self._user(access_key)
        self._skew(when)
        date_line = "" if amz_date is not None else (date or "")
        self._v2_verify(req, user, date_line, signature)
        return AuthResult(user, "v2", sg.UNSIGNED_PAYLOAD)

    def _v2_verify(self, req: RequestView, user: Any, date_line: str, signature: str) -> None:
        resources = [sg.v2_canonical_resource(req.vhost_bucket, req.raw_path, req.raw_query)]
        path = (
            req.raw_path
            if req.vhost_bucket is None
            else b"/" + req.vhost_bucket.encode() + req.raw_path
        )
        if path.count(b"/") == 1 and len(path) > 1:
            # A bucket request: botocore signs "/bucket/", other clients "/bucket".
            resources.append(
                sg.v2_canonical_resource(req.vhost_bucket, req.raw_path + b"/", req.raw_query)
            )
        sts = ""
        for resource in resources:
            sts = sg.v2_string_to_sign(req.method, req.headers, date_line, resource)
            want = sg.v2_sign(user.s3_secret_key, sts)
            if hmac.compare_digest(want.encode(), signature.encode()):
                return
        self._compare("", signature, user, sts)

    def _v2_query(self, req: RequestView, query: dict[str, str]) -> AuthResult:
        expires = query.get("Expires", "")
        if not expires.isdigit() or len(expires) > 12:
            raise S3Error(
                "AccessDenied", "Query-string authentication requires the Expires parameter"
            )
        user = self._user(query["AWSAccessKeyId"])
        if self.clock.seconds() > int(expires):
            raise S3Error("AccessDenied", "Request has expired", Expires=expires)
        self._v2_verify(req, user, expires, query["Signature"])
        return AuthResult(user, "v2-query", sg.UNSIGNED_PAYLOAD)
