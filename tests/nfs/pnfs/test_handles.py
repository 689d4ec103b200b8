"""Data-server file handles (L{claudefs_gateway.nfs.pnfs.handles})."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.nfs.pnfs import handles

KEY = b"k" * 32
u32 = st.integers(0, 2**32 - 1)
handle_values = st.builds(handles.DSHandle, st.integers(0, 2**64 - 1), u32, u32, u32, st.booleans())


class HandleTests(SynchronousTestCase):
    @given(h=handle_values)
    def test_round_trip(self, h: handles.DSHandle) -> None:
        """A handle minted with a key parses with that key to what was minted; 38 bytes."""
        raw = handles.mint(KEY, h)
        self.assertEqual(len(raw), handles.HANDLE_SIZE)
        self.assertLessEqual(len(raw), 64)
        self.assertEqual(handles.parse(KEY, raw), h)

    @given(h=handle_values, where=st.integers(0, handles.HANDLE_SIZE - 1), bit=st.integers(0, 7))
    def test_any_flipped_bit_is_refused(self, h: handles.DSHandle, where: int, bit: int) -> None:
        """Changing any bit (inode, epoch, uid, write flag, MAC) makes the handle unusable."""
        raw = bytearray(handles.mint(KEY, h))
        raw[where] ^= 1 << bit
        with self.assertRaises(handles.BadDSHandle):
            handles.parse(KEY, bytes(raw))

    @given(h=handle_values)
    def test_other_key_refused(self, h: handles.DSHandle) -> None:
        """A handle minted for another data server (another key) is refused."""
        with self.assertRaises(handles.BadDSHandle):
            handles.parse(b"x" * 32, handles.mint(KEY, h))

    @given(garbage=st.binary(max_size=80))
    def test_garbage(self, garbage: bytes) -> None:
        """Anything a client makes up is refused with BadDSHandle, nothing else."""
        with self.assertRaises(handles.BadDSHandle):
            handles.parse(KEY, garbage)
