"""Tests for L{claudefs_gateway.s3.auth}: time rules on a Clock, and the lockout."""

from __future__ import annotations

from urllib.parse import urlsplit

from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.core.authlimit import AuthFailureLimiter
from claudefs_gateway.s3.auth import Authenticator, RequestView
from claudefs_gateway.s3.errors import S3Error
from claudefs_gateway.vfs.identity import User, UserDB

ALICE = User("alice", 1000, 1000, s3_access_key="AKALICE", s3_secret_key="secret")


def view(req: AWSRequest, source: str = "192.0.2.1") -> RequestView:
    split = urlsplit(req.url)
    headers: dict[str, list[str]] = {}
    for k, v in req.headers.items():
        headers.setdefault(k.lower(), []).append(v if isinstance(v, str) else v.decode())
    headers.setdefault("host", [split.netloc])
    return RequestView(req.method, split.path.encode(), split.query.encode(), headers, source)


class AuthTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.users = UserDB(self.clock, inline=[ALICE])
        self.auth = Authenticator(
            self.users, "us-east-1", self.clock, AuthFailureLimiter(self.clock)
        )

    def signed(self, secret: str = "secret", region: str = "us-east-1") -> AWSRequest:
        req = AWSRequest(method="GET", url="http://gw:9000/b/k")
        S3SigV4Auth(Credentials("AKALICE", secret), "s3", region).add_auth(req)
        return req

    def at_signing_time(self, req: AWSRequest) -> None:
        """Set the clock to when botocore signed C{req} (header or query)."""
        from urllib.parse import parse_qs

        from claudefs_gateway.s3.signing import parse_amz_date

        stamp = req.headers.get("X-Amz-Date") or parse_qs(urlsplit(req.url).query)["X-Amz-Date"][0]
        self.clock.rightNow = parse_amz_date(stamp)

    def test_valid(self) -> None:
        req = self.signed()
        self.at_signing_time(req)
        r = self.auth.authenticate(view(req))
        self.assertEqual((r.user.name, r.scheme), ("alice", "v4"))

    def test_clock_skew(self) -> None:
        """More than 15 minutes either way: RequestTimeTooSkewed."""
        req = self.signed()
        self.at_signing_time(req)
        self.clock.advance(15 * 60 - 1)
        self.auth.authenticate(view(req))
        self.clock.advance(2)
        e = self.assertRaises(S3Error, self.auth.authenticate, view(req))
        self.assertEqual((e.code, e.status), ("RequestTimeTooSkewed", 403))

    def test_wrong_region(self) -> None:
        req = self.signed(region="eu-west-1")
        self.at_signing_time(req)
        e = self.assertRaises(S3Error, self.auth.authenticate, view(req))
        self.assertEqual(
            (e.code, e.extra.get("Region")), ("AuthorizationHeaderMalformed", "us-east-1")
        )

    def test_presigned_expiry(self) -> None:
        req = AWSRequest(method="GET", url="http://gw:9000/b/k")
        S3SigV4QueryAuth(Credentials("AKALICE", "secret"), "s3", "us-east-1", expires=60).add_auth(
            req
        )
        self.at_signing_time(req)
        self.clock.advance(60)
        self.assertEqual(self.auth.authenticate(view(req)).scheme, "v4-query")
        self.clock.advance(1)
        e = self.assertRaises(S3Error, self.auth.authenticate, view(req))
        self.assertEqual((e.code, e.message), ("AccessDenied", "Request has expired"))

    def test_presigned_not_yet_valid(self) -> None:
        req = AWSRequest(method="GET", url="http://gw:9000/b/k")
        S3SigV4QueryAuth(
            Credentials("AKALICE", "secret"), "s3", "us-east-1", expires=3600
        ).add_auth(req)
        self.at_signing_time(req)
        self.clock.rightNow -= 16 * 60
        e = self.assertRaises(S3Error, self.auth.authenticate, view(req))
        self.assertEqual(e.message, "Request is not valid yet")

    def test_lockout(self) -> None:
        """Five bad signatures from one address lock it out for a minute, even with a good one."""
        bad, good = self.signed("wrong"), self.signed()
        self.at_signing_time(good)
        for _ in range(5):
            e = self.assertRaises(S3Error, self.auth.authenticate, view(bad))
            self.assertEqual(e.code, "SignatureDoesNotMatch")
        e = self.assertRaises(S3Error, self.auth.authenticate, view(good))
        self.assertEqual(e.code, "AccessDenied")
        self.auth.authenticate(view(good, source="192.0.2.99"))  # other sources unaffected
        self.clock.advance(61)
        self.auth.authenticate(view(good))

    def test_anonymous(self) -> None:
        """An unsigned request is anonymous (what it may do is the ACLs' and policies' call)."""
        req = AWSRequest(method="GET", url="http://gw:9000/b/k")
        result = self.auth.authenticate(view(req))
        self.assertEqual((result.user, result.scheme), (None, "anonymous"))

    def test_secrets_never_in_errors(self) -> None:
        req = self.signed("wrong")
        self.at_signing_time(req)
        e = self.assertRaises(S3Error, self.auth.authenticate, view(req))
        text = repr(e.extra) + e.message
        self.assertNotIn("secret", text)
