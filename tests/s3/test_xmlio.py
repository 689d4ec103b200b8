"""Tests for L{claudefs_gateway.s3.xmlio}: safe parsing, exact rendering."""

from __future__ import annotations

from xml.etree import ElementTree

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.s3 import xmlio
from claudefs_gateway.s3.errors import S3Error


class RenderTests(SynchronousTestCase):
    def test_document(self) -> None:
        doc = xmlio.document(
            "R", [("A", "x<&>"), ("B", 3), ("C", True), ("D", None), ("E", [("F", "y")])]
        )
        self.assertEqual(
            doc,
            b'<?xml version="1.0" encoding="UTF-8"?>\n<R xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            b"<A>x&lt;&amp;&gt;</A><B>3</B><C>true</C><E><F>y</F></E></R>",
        )

    @given(st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=50))
    def test_text_round_trip(self, text: str) -> None:
        """Text an XML 1.0 parser can read comes back as it went (control characters aside)."""
        doc = xmlio.document("R", [("K", text)], namespace=False)
        if any(ord(c) < 0x20 and c not in "\t\n\r" or c in "\ufffe\uffff" for c in text):
            return
        got = ElementTree.fromstring(doc).findtext("K")
        self.assertEqual(got, text.replace("\r\n", "\n").replace("\r", "\n"))


class ParseTests(SynchronousTestCase):
    def test_complete(self) -> None:
        body = (
            b'<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            b'<Part><PartNumber>1</PartNumber><ETag>"aa"</ETag><ChecksumCRC32>AAAAAA==</ChecksumCRC32></Part>'
            b"<Part><ETag>bb</ETag><PartNumber>2</PartNumber></Part></CompleteMultipartUpload>"
        )
        parts = xmlio.parse_complete(body)
        self.assertEqual([(p.number, p.etag) for p in parts], [(1, '"aa"'), (2, "bb")])
        self.assertEqual(parts[0].checksums, {"crc32": "AAAAAA=="})

    def test_complete_limits(self) -> None:
        too_many = (
            b"<CompleteMultipartUpload>"
            + b"<Part><PartNumber>1</PartNumber><ETag>a</ETag></Part>" * 10001
            + b"</CompleteMultipartUpload>"
        )
        self.assertEqual(
            self.assertRaises(S3Error, xmlio.parse_complete, too_many).code, "InvalidArgument"
        )
        for n in (b"0", b"10001", b"x", b"-1"):
            body = (
                b"<CompleteMultipartUpload><Part><PartNumber>"
                + n
                + b"</PartNumber><ETag>a</ETag></Part></CompleteMultipartUpload>"
            )
            self.assertEqual(
                self.assertRaises(S3Error, xmlio.parse_complete, body).code, "InvalidArgument"
            )

    def test_entities_refused(self) -> None:
        """A billion-laughs body is refused, not expanded."""
        bomb = (
            b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">'
            b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
            b"<Delete><Object><Key>&b;</Key></Object></Delete>"
        )
        self.assertEqual(self.assertRaises(S3Error, xmlio.parse_delete, bomb).code, "MalformedXML")
        ext = b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><Delete><Object><Key>&x;</Key></Object></Delete>'
        self.assertEqual(self.assertRaises(S3Error, xmlio.parse_delete, ext).code, "MalformedXML")

    def test_delete(self) -> None:
        r = xmlio.parse_delete(
            b"<Delete><Quiet>true</Quiet><Object><Key>a</Key></Object><Object><Key>b/c</Key></Object></Delete>"
        )
        self.assertEqual((r.quiet, r.keys), (True, ["a", "b/c"]))
        self.assertRaises(S3Error, xmlio.parse_delete, b"<Delete></Delete>")
        many = b"<Delete>" + b"<Object><Key>a</Key></Object>" * 1001 + b"</Delete>"
        self.assertRaises(S3Error, xmlio.parse_delete, many)

    def test_location(self) -> None:
        self.assertIsNone(xmlio.parse_location(b""))
        self.assertEqual(
            xmlio.parse_location(
                b"<CreateBucketConfiguration><LocationConstraint>eu-west-1</LocationConstraint></CreateBucketConfiguration>"
            ),
            "eu-west-1",
        )

    @given(st.binary(max_size=300))
    def test_garbage(self, body: bytes) -> None:
        """Any bytes: a result or S3Error, nothing else."""
        for f in (xmlio.parse_complete, xmlio.parse_delete, xmlio.parse_location):
            try:
                f(body)
            except S3Error:
                pass
