"""Record marking (L{claudefs_gateway.rpc.record})."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.rpc.record import RecordReader, RecordTooLarge, encode_record


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


class RecordReaderTests(SynchronousTestCase):
    @given(
        records=st.lists(st.binary(max_size=300), max_size=5),
        fragment=st.integers(1, 64),
        cuts=st.lists(st.integers(0, 5000), max_size=20),
    )
    def test_any_split(self, records: list[bytes], fragment: int, cuts: list[int]) -> None:
        """Records arrive whole and in order however they are fragmented and the stream is cut."""
        stream = b"".join(encode_record(r, fragment) for r in records)
        reader = RecordReader(1000)
        got: list[bytes] = []
        for chunk in split_at(stream, cuts):
            got.extend(reader.feed(chunk))
        self.assertEqual(got, records)
        self.assertEqual(reader.buffered, 0)

    def test_single_fragment_too_large(self) -> None:
        """A header announcing more than the maximum fails before its bytes arrive."""
        reader = RecordReader(100)
        self.assertRaises(RecordTooLarge, reader.feed, b"\x80\x00\x00\x65")
        self.assertRaises(RecordTooLarge, RecordReader(100).feed, b"\xff\xff\xff\xff")

    def test_fragments_add_up_too_large(self) -> None:
        """Fragments of one record that add up past the maximum fail on the header that does it."""
        stream = b"\x00\x00\x00\x3c" + b"a" * 60 + b"\x80\x00\x00\x3c"
        reader = RecordReader(100)
        self.assertRaises(RecordTooLarge, reader.feed, stream)

    def test_exact_maximum(self) -> None:
        reader = RecordReader(100)
        self.assertEqual(reader.feed(encode_record(b"b" * 100, 30)), [b"b" * 100])

    def test_missing_is_what_the_fragment_still_lacks(self) -> None:
        """C{missing} says how much of the current fragment is still to come (0 between)."""
        reader = RecordReader(1 << 20)
        self.assertEqual(reader.missing, 0)
        self.assertEqual(reader.feed(b"\x80\x00\x03\xe8" + b"x" * 100), [])
        self.assertEqual(reader.missing, 900)
        self.assertEqual(reader.feed(b"x" * 899), [])
        self.assertEqual(reader.missing, 1)
        self.assertEqual(reader.feed(b"x" + b"\x80\x00"), [b"x" * 1000])
        self.assertEqual(reader.missing, 0)
        self.assertEqual(reader.feed(b"\x00\x02ab"), [b"ab"])
        self.assertEqual(reader.missing, 0)

    def test_empty_record(self) -> None:
        self.assertEqual(RecordReader(10).feed(b"\x80\0\0\0"), [b""])

    def test_buffer_bounded(self) -> None:
        """Bytes held never exceed the maximum record plus one header."""
        reader = RecordReader(1000)
        reader.feed(b"\x80\x00\x03\xe8" + b"x" * 999)
        self.assertLessEqual(reader.buffered, 1004)
        self.assertEqual(reader.feed(b"y"), [b"x" * 999 + b"y"])

    @given(
        records=st.lists(st.binary(max_size=200), min_size=1, max_size=6),
        cuts=st.lists(st.integers(0, 2000), max_size=6),
        oversize=st.booleans(),
    )
    def test_whole_records_in_one_read(
        self, records: list[bytes], cuts: list[int], oversize: bool
    ) -> None:
        """
        Single-fragment records, several to a read and cut anywhere (the path
        that takes whole records straight out of a read), come out whole and
        in order; a record over the maximum among them still fails.
        """
        limit = 150 if oversize else 1000
        stream = b"".join(encode_record(r) for r in records)
        reader = RecordReader(limit)
        got: list[bytes] = []
        try:
            for chunk in split_at(stream, cuts):
                got.extend(reader.feed(chunk))
        except RecordTooLarge:
            self.assertTrue(any(len(r) > limit for r in records))
            first_big = next(i for i, r in enumerate(records) if len(r) > limit)
            self.assertEqual(got, records[: len(got)])
            self.assertLessEqual(len(got), first_big)
            return
        self.assertEqual(got, records)
        self.assertEqual(reader.buffered, 0)

    def test_several_records_and_a_tail(self) -> None:
        """Whole records first, then a partial one is held until the rest arrives."""
        reader = RecordReader(100)
        a, b, c = encode_record(b"one"), encode_record(b"two"), encode_record(b"three")
        self.assertEqual(reader.feed(a + b + c[:5]), [b"one", b"two"])
        self.assertLessEqual(reader.buffered, 5)
        self.assertEqual(reader.feed(c[5:] + a), [b"three", b"one"])
        self.assertEqual(reader.buffered, 0)
