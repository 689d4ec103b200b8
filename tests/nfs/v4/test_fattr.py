"""NFSv4 attribute bitmaps and values (L{claudefs_gateway.nfs.v4.fattr})."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.fstypes import NOW, Attributes, FileType
from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4 import fattr
from claudefs_gateway.nfs.v4.base import Nfs4Error
from claudefs_gateway.nfs.v4.codec import Fattr
from tests.nfs.v4.client import attrs_of, fattr_of

A = Attributes(
    7, 1, FileType.REG, 0o640, 1, 1000, 100, 12, 4096, (0, 0), 1_500_000_000_123, 2, 3, 4, 99
)
INFO = fattr.ServerInfo(60, 1 << 20, 1 << 20, lambda u: str(u).encode(), lambda g: str(g).encode())


class BitmapTests(SynchronousTestCase):
    @given(nums=st.sets(st.integers(0, 200)))
    def test_round_trip(self, nums: set[int]) -> None:
        self.assertEqual(fattr.bits(fattr.bitmap(nums)), sorted(nums))

    def test_trailing_words(self) -> None:
        self.assertEqual(fattr.bitmap([]), [])
        self.assertEqual(fattr.bitmap([33]), [0, 2])


class EncodeTests(SynchronousTestCase):
    def test_values(self) -> None:
        src = fattr.Source(A, b"fh", (5, 0), 7)
        want = [
            c.FATTR4_TYPE,
            c.FATTR4_CHANGE,
            c.FATTR4_SIZE,
            c.FATTR4_FSID,
            c.FATTR4_FILEHANDLE,
            c.FATTR4_MODE,
            c.FATTR4_OWNER,
            c.FATTR4_TIME_ACCESS,
            c.FATTR4_LEASE_TIME,
        ]
        got = attrs_of(fattr.encode(fattr.bitmap(want), src, INFO))
        self.assertEqual(got[c.FATTR4_TYPE], c.NF4REG)
        self.assertEqual((got[c.FATTR4_CHANGE], got[c.FATTR4_SIZE]), (99, 12))
        self.assertEqual((got[c.FATTR4_FSID], got[c.FATTR4_FILEHANDLE]), ((5, 0), b"fh"))
        self.assertEqual((got[c.FATTR4_MODE], got[c.FATTR4_OWNER]), (0o640, b"1000"))
        self.assertEqual(got[c.FATTR4_TIME_ACCESS], (1500, 123))
        self.assertEqual(got[c.FATTR4_LEASE_TIME], 60)

    def test_unsupported_left_out(self) -> None:
        f = fattr.encode(
            fattr.bitmap([c.FATTR4_ACL, c.FATTR4_SIZE, 200]), fattr.Source(A, b"", (0, 0), 0), INFO
        )
        self.assertEqual(fattr.bits(f.mask), [c.FATTR4_SIZE])


class DecodeTests(SynchronousTestCase):
    def _dec(self, f: Fattr) -> fattr.Settable:
        return fattr.decode_settable(
            f, lambda n: int(n) if n.isdigit() else None, lambda n: int(n) if n.isdigit() else None
        )

    def test_settable(self) -> None:
        s = self._dec(
            fattr_of(
                {
                    c.FATTR4_SIZE: 10,
                    c.FATTR4_MODE: 0o4755,
                    c.FATTR4_OWNER: b"12",
                    c.FATTR4_TIME_ACCESS_SET: None,
                    c.FATTR4_TIME_MODIFY_SET: (5, 6),
                }
            )
        )
        ch = s.changes
        self.assertEqual(
            (ch.size, ch.mode, ch.uid, ch.atime, ch.mtime), (10, 0o4755, 12, NOW, 5_000_000_006)
        )

    def test_refusals(self) -> None:
        with self.assertRaises(Nfs4Error) as e:
            self._dec(fattr_of({c.FATTR4_OWNER: b"someone@else"}))
        self.assertEqual(e.exception.status, c.NFS4ERR_BADOWNER)
        with self.assertRaises(Nfs4Error) as e:
            self._dec(Fattr(fattr.bitmap([c.FATTR4_TIME_MODIFY_SET]), b"\0\0\0\x07"))
        self.assertEqual(e.exception.status, c.NFS4ERR_BADXDR)
        with self.assertRaises(Nfs4Error) as e:
            self._dec(fattr_of({c.FATTR4_TIME_MODIFY_SET: (0, 2_000_000_000)}))
        self.assertEqual(e.exception.status, c.NFS4ERR_INVAL)

    @given(mask=st.lists(st.integers(0, 2**32 - 1), max_size=3), vals=st.binary(max_size=64))
    def test_garbage(self, mask: list[int], vals: bytes) -> None:
        """Any attribute list decodes or answers an NFSv4 status, nothing else."""
        try:
            self._dec(Fattr(mask, vals))
        except Nfs4Error:
            pass
