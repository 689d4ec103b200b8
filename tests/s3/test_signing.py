"""
Tests for L{claudefs_gateway.s3.signing}.

Known answers come from AWS's own worked examples (S3 API reference,
"Signature Calculations for the Authorization Header", "Authenticating Requests:
Using Query Parameters" and "Transferring Payload in Multiple Chunks"); the
property tests check our verifier against botocore's signer, which nobody here
wrote.
"""

from __future__ import annotations

import hashlib
import hmac
from unittest import mock
from urllib.parse import urlsplit

from botocore.auth import HmacV1Auth, S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.s3 import signing as sg
from claudefs_gateway.s3.errors import S3Error

AKID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SCOPE = "20130524/us-east-1/s3/aws4_request"
KEY = sg.signing_key(SECRET, "20130524", "us-east-1", "s3")


def sig_of(method, path, query, headers, signed, payload, exclude=None):
    creq = sg.canonical_request(method, path, query, headers, signed, payload, exclude)
    return sg.sign(KEY, sg.string_to_sign("20130524T000000Z", SCOPE, creq))


class KnownAnswerTests(SynchronousTestCase):
    def test_get_object_example(self) -> None:
        """AWS's GET /test.txt example (Range header, empty payload)."""
        headers = {
            "host": ["examplebucket.s3.amazonaws.com"],
            "range": ["bytes=0-9"],
            "x-amz-content-sha256": [sg.EMPTY_SHA256],
            "x-amz-date": ["20130524T000000Z"],
        }
        signed = ["host", "range", "x-amz-content-sha256", "x-amz-date"]
        self.assertEqual(
            sig_of("GET", b"/test.txt", [], headers, signed, sg.EMPTY_SHA256),
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
        )

    def test_presigned_example(self) -> None:
        """AWS's presigned GET /test.txt example (expires in 86400 s)."""
        query = sg.parse_query(
            b"X-Amz-Algorithm=AWS4-HMAC-SHA256"
            b"&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
            b"&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
            b"&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        )
        headers = {"host": ["examplebucket.s3.amazonaws.com"]}
        self.assertEqual(
            sig_of(
                "GET",
                b"/test.txt",
                query,
                headers,
                ["host"],
                sg.UNSIGNED_PAYLOAD,
                "X-Amz-Signature",
            ),
            "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404",
        )

    def test_chunked_upload_example(self) -> None:
        """AWS's 66560-byte chunked upload: the seed and every chunk signature."""
        headers = {
            "content-encoding": ["aws-chunked"],
            "content-length": ["66824"],
            "host": ["s3.amazonaws.com"],
            "x-amz-content-sha256": [sg.STREAMING_SIGNED],
            "x-amz-date": ["20130524T000000Z"],
            "x-amz-decoded-content-length": ["66560"],
            "x-amz-storage-class": ["REDUCED_REDUNDANCY"],
        }
        signed = sorted(headers)
        seed = sig_of(
            "PUT", b"/examplebucket/chunkObject.txt", [], headers, signed, sg.STREAMING_SIGNED
        )
        self.assertEqual(seed, "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9")
        prev = seed
        expected = [
            "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
            "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
            "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
        ]
        for data, want in zip([b"a" * 65536, b"a" * 1024, b""], expected, strict=True):
            sts = sg.chunk_string_to_sign(
                "20130524T000000Z", SCOPE, prev, hashlib.sha256(data).hexdigest()
            )
            prev = sg.sign(KEY, sts)
            self.assertEqual(prev, want)


class ParseTests(SynchronousTestCase):
    def test_authorization(self) -> None:
        h = sg.parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AK/20130524/us-east-1/s3/aws4_request, "
            "SignedHeaders=host;x-amz-date,Signature=" + "a" * 64
        )
        self.assertEqual(h.credential.access_key, "AK")
        self.assertEqual(h.credential.scope, SCOPE)
        self.assertEqual(h.signed_headers, ("host", "x-amz-date"))

    def test_malformed_authorization(self) -> None:
        for bad in [
            "",
            "AWS4-HMAC-SHA256",
            "AWS4-HMAC-SHA1 Credential=a/b/c/d/e, SignedHeaders=host, Signature=" + "a" * 64,
            "AWS4-HMAC-SHA256 Credential=AK/2013/us-east-1/s3/aws4_request, SignedHeaders=host, Signature="
            + "a" * 64,
            "AWS4-HMAC-SHA256 Credential=AK/20130524/us-east-1/s3/aws4_request, SignedHeaders=x-amz-date, Signature="
            + "a" * 64,
            "AWS4-HMAC-SHA256 Credential=AK/20130524/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=zz",
            "AWS4-HMAC-SHA256 Credential=AK/20130524/us-east-1/s3/aws4_request, SignedHeaders=x;host, Signature="
            + "a" * 64,
        ]:
            e = self.assertRaises(S3Error, sg.parse_authorization, bad)
            self.assertEqual(e.code, "AuthorizationHeaderMalformed")

    @given(
        st.lists(
            st.sampled_from(
                [
                    "Credential=AK/20130524/us-east-1/s3/aws4_request",
                    "Credential=AK/2013/us-east-1/s3/aws4_request",
                    "SignedHeaders=host;x-amz-date",
                    "SignedHeaders=x-amz-date;host",
                    "Signature=" + "b" * 64,
                    "Signature=zz",
                    "Other=1",
                    "",
                ]
            ),
            max_size=4,
        ),
        st.sampled_from([", ", ",", " , "]),
        st.sampled_from(["a" * 64, "0123456789abcdef" * 4, "A" * 64, "a" * 63]),
        st.sampled_from(["AWS4-HMAC-SHA256 ", " AWS4-HMAC-SHA256 ", "AWS4-HMAC-SHA1 "]),
    )
    def test_authorization_kept_parse_agrees(
        self, fields: list[str], sep: str, sig: str, algo: str
    ) -> None:
        """
        The parse that keeps all but the signature (the same header again
        but for it) gives what the whole parse gives: the same header, or
        the same error.
        """
        text = algo + sep.join([*fields, "Signature=" + sig])
        for _ in range(2):  # the second time from the kept parse
            try:
                want: object = sg._parse_authorization(text)
            except S3Error as e:
                want = (e.code, str(e))
            try:
                got: object = sg.parse_authorization(text)
            except S3Error as e:
                got = (e.code, str(e))
            self.assertEqual(got, want)

    @given(st.text(max_size=300))
    def test_authorization_garbage(self, text: str) -> None:
        """Any text parses or raises S3Error, nothing else."""
        try:
            sg.parse_authorization(text)
        except S3Error:
            pass

    @given(
        st.dictionaries(
            st.sampled_from(
                [
                    "X-Amz-Algorithm",
                    "X-Amz-Credential",
                    "X-Amz-Date",
                    "X-Amz-Expires",
                    "X-Amz-SignedHeaders",
                    "X-Amz-Signature",
                ]
            ),
            st.text(max_size=80),
        )
    )
    def test_presigned_garbage(self, query: dict[str, str]) -> None:
        try:
            sg.parse_presigned(query)
        except S3Error as e:
            self.assertEqual(e.status, 400 if e.code != "AccessDenied" else 403)

    def test_expires_limit(self) -> None:
        q = {
            "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
            "X-Amz-Credential": "AK/20130524/us-east-1/s3/aws4_request",
            "X-Amz-Date": "20130524T000000Z",
            "X-Amz-Expires": "604801",
            "X-Amz-SignedHeaders": "host",
            "X-Amz-Signature": "a" * 64,
        }
        self.assertRaises(S3Error, sg.parse_presigned, q)
        q["X-Amz-Expires"] = "604800"
        self.assertEqual(sg.parse_presigned(q).expires, 604800)

    def test_dates(self) -> None:
        self.assertEqual(sg.parse_amz_date("20130524T000000Z"), 1369353600.0)
        self.assertRaises(S3Error, sg.parse_amz_date, "20131324T000000Z")
        self.assertRaises(S3Error, sg.parse_amz_date, "2013-05-24T00:00:00Z")
        # Kept answers (the parse is cached) are the same, errors and their codes too.
        for _ in range(2):
            self.assertEqual(sg.parse_amz_date("20130524T000000Z"), 1369353600.0)
            self.assertEqual(sg.parse_amz_date("19690101T000000Z"), -31536000.0)
            for text, message in [
                ("20131324T000000Z", "not a valid date"),
                ("2013-05-24T00:00:00Z", "ISO8601"),
            ]:
                e = self.assertRaises(S3Error, sg.parse_amz_date, text, "InvalidArgument")
                self.assertEqual(e.code, "InvalidArgument")
                self.assertIn(message, e.message)
        self.assertEqual(sg.parse_http_date("Fri, 24 May 2013 00:00:00 GMT"), 1369353600.0)
        self.assertIsNone(sg.parse_http_date("yesterday"))

    def test_canonical_uri(self) -> None:
        """Segments are re-encoded the AWS way; encoded slashes stay encoded."""
        self.assertEqual(sg.canonical_uri(b"/b/a%2Fb/c~d/e f"), "/b/a%2Fb/c~d/e%20f")
        self.assertEqual(sg.canonical_uri(b"/b/%7e%21"), "/b/~%21")
        self.assertEqual(sg.canonical_uri(b"/"), "/")

    def test_canonical_query(self) -> None:
        q = sg.parse_query(b"uploads&prefix=a%20b&max-keys=2&a=2&a=1")
        self.assertEqual(sg.canonical_query(q), "a=1&a=2&max-keys=2&prefix=a%20b&uploads=")


_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=40)


class BotocoreAgreementTests(SynchronousTestCase):
    """Whatever botocore signs, we verify (SigV4 header and query, SigV2)."""

    def _request(self, method: str, key: str, params: dict[str, str], headers: dict[str, str]):
        from botocore.utils import percent_encode_sequence

        url = "http://gw.example:9000/bucket/" + _quote(key)
        if params:
            url += "?" + percent_encode_sequence(params)
        return AWSRequest(method=method, url=url, headers=dict(headers), data=b"payload")

    def _ours(self, req, amz_date: str, payload: str, signed, exclude=None) -> str:
        split = urlsplit(req.url)
        headers: dict[str, list[str]] = {}
        for k, v in req.headers.items():
            headers.setdefault(k.lower(), []).append(v)
        headers.setdefault("host", [split.netloc])
        creq = sg.canonical_request(
            req.method,
            split.path.encode(),
            sg.parse_query(split.query.encode()),
            headers,
            signed,
            payload,
            exclude,
        )
        day = amz_date[:8]
        key = sg.signing_key("secret/key", day, "eu-west-1", "s3")
        return sg.sign(key, sg.string_to_sign(amz_date, f"{day}/eu-west-1/s3/aws4_request", creq))

    @given(
        key=_text,
        params=st.dictionaries(st.text("abcxyz-_.~", min_size=1, max_size=8), _text, max_size=4),
        meta=st.dictionaries(
            st.text("abc", min_size=1, max_size=5),
            st.text("ab c\t!", max_size=10).map(lambda s: s.strip() or "x"),
            max_size=3,
        ),
    )
    def test_header_auth(self, key: str, params: dict[str, str], meta: dict[str, str]) -> None:
        headers = {f"x-amz-meta-{k}": v for k, v in meta.items()}
        req = self._request("PUT", key, params, headers)
        S3SigV4Auth(Credentials("AK", "secret/key"), "s3", "eu-west-1").add_auth(req)
        auth = sg.parse_authorization(req.headers["Authorization"])
        payload = req.headers["X-Amz-Content-SHA256"]
        ours = self._ours(req, req.headers["X-Amz-Date"], payload, auth.signed_headers)
        self.assertEqual(ours, auth.signature)

    @given(key=_text)
    def test_query_auth(self, key: str) -> None:
        req = AWSRequest(method="GET", url="http://gw.example:9000/bucket/" + _quote(key))
        S3SigV4QueryAuth(Credentials("AK", "secret/key"), "s3", "eu-west-1", expires=300).add_auth(
            req
        )
        split = urlsplit(req.url)
        query = {k.decode(): v.decode() for k, v in sg.parse_query(split.query.encode())}
        pre = sg.parse_presigned(query)
        ours = self._ours(
            req, pre.amz_date, sg.UNSIGNED_PAYLOAD, pre.signed_headers, "X-Amz-Signature"
        )
        self.assertEqual(ours, pre.signature)

    @given(
        key=_text,
        amz=st.dictionaries(
            st.text("abc", min_size=1, max_size=4),
            st.text("xyz", min_size=1, max_size=4),
            max_size=3,
        ),
    )
    def test_v2(self, key: str, amz: dict[str, str]) -> None:
        headers = {f"x-amz-meta-{k}": v for k, v in amz.items()}
        headers["Content-Type"] = "text/plain"
        req = self._request("PUT", key, {"acl": "", "prefix": "p"}, headers)
        HmacV1Auth(Credentials("AK", "secret/key")).add_auth(req)
        sig = req.headers["Authorization"].split(":", 1)[1]
        split = urlsplit(req.url)
        hdrs: dict[str, list[str]] = {}
        for k, v in req.headers.items():
            hdrs.setdefault(k.lower(), []).append(v)
        resource = sg.v2_canonical_resource(None, split.path.encode(), split.query.encode())
        sts = sg.v2_string_to_sign("PUT", hdrs, hdrs["date"][0], resource)
        self.assertEqual(sg.v2_sign("secret/key", sts), sig)


def _quote(key: str) -> str:
    from urllib.parse import quote

    return quote(key.encode("utf-8"), safe="/~")


class SignTests(SynchronousTestCase):
    """L{sg.sign}: HMAC-SHA256 from a copy of the signing key's kept HMAC state (issue 18, ninth round)."""

    @given(st.binary(max_size=200), st.text(max_size=300))
    def test_same_as_hmac(self, key: bytes, sts: str) -> None:
        """Any key (longer than a block too) and message: the standard library's HMAC."""
        want = hmac.new(key, sts.encode("utf-8"), "sha256").hexdigest()
        self.assertEqual(sg.sign(key, sts), want)
        self.assertEqual(sg.sign(key, sts), want)  # from the kept pads

    def test_no_one_shot_hmac(self) -> None:
        """A request's signature copies the key's kept HMAC state, not OpenSSL's one-shot HMAC."""
        key = sg.signing_key("secret", "20261208", "us-east-1", "s3")
        want = hmac.new(key, b"sts", "sha256").hexdigest()
        with mock.patch.object(sg.hmac, "digest", side_effect=AssertionError("one-shot HMAC")):
            self.assertEqual(sg.sign(key, "sts"), want)
