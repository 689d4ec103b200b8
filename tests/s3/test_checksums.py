"""Tests for L{claudefs_gateway.s3.checksums}, against botocore's own checksums."""

from __future__ import annotations

import base64
import hashlib

from botocore.httpchecksum import Crc32Checksum, Sha1Checksum, Sha256Checksum
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.s3 import checksums


class ChecksumTests(SynchronousTestCase):
    def test_check_values(self) -> None:
        """The standard check value of each CRC (input "123456789")."""
        for algo, want in [
            ("crc32", 0xCBF43926),
            ("crc32c", 0xE3069283),
            ("crc64nvme", 0xAE8B14860A799888),
        ]:
            h = checksums.new(algo)
            h.update(b"1234")
            h.update(b"56789")
            self.assertEqual(int.from_bytes(h.digest(), "big"), want, algo)

    @given(st.lists(st.binary(max_size=300), max_size=5))
    def test_agrees_with_botocore(self, pieces: list[bytes]) -> None:
        for algo, cls in [
            ("crc32", Crc32Checksum),
            ("sha1", Sha1Checksum),
            ("sha256", Sha256Checksum),
        ]:
            ours, theirs = checksums.new(algo), cls()
            for p in pieces:
                ours.update(p)
                theirs.update(p)
            self.assertEqual(checksums.b64(ours.digest()), theirs.b64digest())

    def test_multipart(self) -> None:
        md5s = [hashlib.md5(b"a").digest(), hashlib.md5(b"b").digest()]
        self.assertEqual(
            checksums.multipart_etag(md5s), hashlib.md5(b"".join(md5s)).hexdigest() + "-2"
        )
        crc = checksums.composite("crc32", [b"\x00\x00\x00\x01", b"\x00\x00\x00\x02"])
        self.assertTrue(crc.endswith("-2"))
        self.assertEqual(checksums.unb64("not base64!"), None)
        self.assertEqual(checksums.unb64(base64.b64encode(b"x").decode()), b"x")
