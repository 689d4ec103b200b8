"""Tests for L{claudefs_gateway.s3.ranges}."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.s3.ranges import ByteRange, Unsatisfiable, parse_copy_range, parse_range


class RangeTests(SynchronousTestCase):
    def test_forms(self) -> None:
        self.assertEqual(parse_range("bytes=0-9", 100), ByteRange(0, 9, 100))
        self.assertEqual(parse_range("bytes=90-", 100), ByteRange(90, 99, 100))
        self.assertEqual(parse_range("bytes=-10", 100), ByteRange(90, 99, 100))
        self.assertEqual(parse_range("bytes=-1000", 100), ByteRange(0, 99, 100))
        self.assertEqual(parse_range("bytes=50-1000", 100), ByteRange(50, 99, 100))
        self.assertEqual(parse_range("bytes=0-9", 100).content_range, "bytes 0-9/100")

    def test_ignored(self) -> None:
        """Several ranges, other units and nonsense are ignored: the whole object."""
        for h in [None, "bytes=0-1,5-6", "items=0-1", "bytes=9-2", "bytes=-", "bytes=a-b", ""]:
            self.assertIsNone(parse_range(h, 100))

    def test_unsatisfiable(self) -> None:
        for h, size in [
            ("bytes=100-", 100),
            ("bytes=100-200", 100),
            ("bytes=-0", 100),
            ("bytes=0-", 0),
            ("bytes=-5", 0),
        ]:
            self.assertRaises(Unsatisfiable, parse_range, h, size)

    def test_copy_range(self) -> None:
        self.assertEqual(parse_copy_range("bytes=0-9", 10), ByteRange(0, 9, 10))
        for h in ["bytes=5-", "bytes=-5", "bytes=3-2", "x"]:
            self.assertRaises(ValueError, parse_copy_range, h, 10)
        # Well formed but beyond the source: 416 InvalidRange rather than 400.
        self.assertRaises(Unsatisfiable, parse_copy_range, "bytes=0-10", 10)

    @given(st.text(max_size=40), st.integers(0, 2**40))
    def test_garbage(self, header: str, size: int) -> None:
        """Any header: None, a range inside the object, or Unsatisfiable."""
        try:
            r = parse_range(header, size)
        except Unsatisfiable:
            return
        if r is not None:
            self.assertTrue(0 <= r.first <= r.last < size)
