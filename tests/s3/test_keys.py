"""Tests for L{claudefs_gateway.s3.keys}."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.s3.errors import S3Error
from claudefs_gateway.s3.keys import Key, bucket_name_ok, check_new_bucket_name, key_segments


class KeyTests(SynchronousTestCase):
    def test_segments(self) -> None:
        self.assertEqual(key_segments("a/b/c.txt"), ([b"a", b"b", b"c.txt"], False))
        self.assertEqual(key_segments("a/b/"), ([b"a", b"b"], True))
        self.assertEqual(key_segments("\u00e9t\u00e9"), (["\u00e9t\u00e9".encode()], False))
        k = Key("x/y")
        self.assertEqual((k.parents, k.name, k.marker), ([b"x"], b"y", False))

    def test_refused(self) -> None:
        """Keys that cannot be a file path are refused, never mangled."""
        cases = {
            "a/../b": "InvalidArgument",
            "..": "InvalidArgument",
            "./a": "InvalidArgument",
            "a//b": "InvalidArgument",
            "/a": "InvalidArgument",
            "a\x00b": "InvalidArgument",
            "": "InvalidArgument",
            "/": "InvalidArgument",
            "k" * 2000: "KeyTooLongError",
            "a/" + "n" * 256: "KeyTooLongError",
        }
        for key, code in cases.items():
            e = self.assertRaises(S3Error, key_segments, key)
            self.assertEqual(e.code, code, key[:20])

    @given(st.text(max_size=300))
    def test_no_escape(self, key: str) -> None:
        """A key that is accepted never has a segment that could leave the bucket."""
        try:
            parts, _ = key_segments(key)
        except S3Error:
            return
        for p in parts:
            self.assertNotIn(p, (b"", b".", b".."))
            self.assertNotIn(b"/", p)
            self.assertNotIn(b"\x00", p)
            self.assertLessEqual(len(p), 255)

    def test_bucket_names(self) -> None:
        for ok in ["abc", "my.bucket-1", "a" * 63]:
            check_new_bucket_name(ok)
        for bad in [
            "ab",
            "a" * 64,
            "ABC",
            "a_b",
            "-ab",
            "ab-",
            "a..b",
            "192.168.1.1",
            "xn--ab",
            "a.-b",
        ]:
            e = self.assertRaises(S3Error, check_new_bucket_name, bad)
            self.assertEqual(e.code, "InvalidBucketName")
        self.assertTrue(bucket_name_ok(b"Projects_2024"))
        for bad in [b"", b".cfs-s3-uploads", b"a/b", b"a\x00", b"\xff", b"x" * 256]:
            self.assertFalse(bucket_name_ok(bad))
