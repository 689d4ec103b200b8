"""File handles cannot be forged, and go stale when their file does."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway import errors
from claudefs_gateway.testing.vfs import MemoryVFS
from claudefs_gateway.vfs import handles
from claudefs_gateway.vfs.handles import HANDLE_SIZE, HandleCodec, load_or_create_secret

CODEC = HandleCodec(b"k" * 32)


class CodecTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        h = CODEC.encode(7, 2**63 + 5, 3)
        self.assertEqual(len(h), HANDLE_SIZE)
        self.assertLessEqual(HANDLE_SIZE, 64)
        self.assertEqual(CODEC.decode(h), (7, 2**63 + 5, 3))

    def test_every_single_bit_flip_is_refused(self) -> None:
        h = CODEC.encode(7, 42, 1)
        for i in range(len(h) * 8):
            forged = bytearray(h)
            forged[i // 8] ^= 1 << (i % 8)
            self.assertRaises(errors.BadHandle, CODEC.decode, bytes(forged))

    def test_handles_of_earlier_releases_still_verify(self) -> None:
        """
        A handle is its body and the first bytes of HMAC-SHA256(secret,
        body), byte for byte as before: handles clients hold across an
        upgrade stay valid however the MAC is computed.
        """
        import hashlib
        import hmac

        h = CODEC.encode(7, 42, 1)
        body, mac = h[: handles._BODY.size], h[handles._BODY.size :]
        self.assertEqual(mac, hmac.new(b"k" * 32, body, hashlib.sha256).digest()[: len(mac)])
        self.assertEqual(CODEC.decode(h), (7, 42, 1))
        self.assertEqual(HandleCodec(b"k" * 32).decode(h), (7, 42, 1))

    def test_other_install_secret_refused(self) -> None:
        self.assertRaises(errors.BadHandle, HandleCodec(b"j" * 32).decode, CODEC.encode(7, 42, 1))

    @given(st.binary(max_size=200))
    def test_garbage_never_crashes(self, data: bytes) -> None:
        """Any bytes either decode (only if we made them) or raise BadHandle."""
        try:
            CODEC.decode(data)
        except errors.BadHandle:
            pass

    @given(
        st.lists(
            st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**40)),
            max_size=50,
        )
    )
    def test_kept_handles_are_the_ones_made(self, keys: list[tuple[int, int, int]]) -> None:
        """A handle answered from the codec's memory is byte for byte the one it would make."""
        for export_id, ino, gen in keys + keys:
            self.assertEqual(
                CODEC.encode(export_id, ino, gen),
                HandleCodec(b"k" * 32).encode(export_id, ino, gen),
            )
            self.assertEqual(CODEC.decode(CODEC.encode(export_id, ino, gen))[:2], (export_id, ino))

    def test_kept_handles_bounded(self) -> None:
        codec = HandleCodec(b"k" * 32)
        first = codec.encode(1, 1, 1)
        for ino in range(handles._MADE_MAX + 10):
            codec.encode(1, ino + 2, 0)
        self.assertLessEqual(len(codec._made), handles._MADE_MAX)
        self.assertEqual(codec.encode(1, 1, 1), first)

    def test_secret_file(self) -> None:
        from pathlib import Path

        d = Path(self.mktemp())
        d.mkdir()
        s = load_or_create_secret(d)
        self.assertEqual(len(s), 32)
        self.assertEqual(load_or_create_secret(d), s)
        self.assertEqual(os.stat(d / "handle_secret").st_mode & 0o777, 0o600)


class VFSHandleTests(SynchronousTestCase):
    def test_stale_after_delete(self) -> None:
        m = MemoryVFS("exports: [{path: /export, root_squash: false}]\n")
        c = m.caller(0, 0)
        a = self.successResultOf(m.vfs.create(c, m.root(), b"f", 0o644))
        h = m.vfs.handle(c.export, a)
        export, got = self.successResultOf(m.vfs.from_handle(h))
        self.assertEqual((export.id, got.ino), (c.export.id, a.ino))
        self.successResultOf(m.vfs.remove(c, m.root(), b"f"))
        self.failureResultOf(m.vfs.from_handle(h), errors.Stale)

    def test_unknown_export_is_stale(self) -> None:
        m = MemoryVFS()
        a = self.successResultOf(m.backend.root())
        h = m.vfs.handles.encode(12345, a.ino, a.gen)
        self.failureResultOf(m.vfs.from_handle(h), errors.Stale)

    def test_wrong_generation_is_stale(self) -> None:
        m = MemoryVFS()
        a = self.successResultOf(m.backend.root())
        h = m.vfs.handles.encode(m.export().id, a.ino, a.gen + 1)
        self.failureResultOf(m.vfs.from_handle(h), errors.Stale)

    def test_verified_handles_remembered(self) -> None:
        """
        A handle verified once is not verified again (its MAC is most of the
        cost), yet a forged handle next to it still fails, and a handle given
        as another bytes-like type works the same.
        """
        m = MemoryVFS("exports: [{path: /export, root_squash: false}]\n")
        c = m.caller(0, 0)
        a = self.successResultOf(m.vfs.create(c, m.root(), b"f", 0o644))
        h = m.vfs.handle(c.export, a)
        calls: list[bytes] = []
        real = m.vfs.handles.decode

        def counting(handle: bytes) -> tuple[int, int, int]:
            calls.append(handle)
            return real(handle)

        m.vfs.handles.decode = counting  # type: ignore[method-assign]
        for _ in range(3):
            _, got = self.successResultOf(m.vfs.from_handle(h))
            self.assertEqual(got.ino, a.ino)
        _, got = self.successResultOf(m.vfs.from_handle(bytearray(h)))  # type: ignore[arg-type]
        self.assertEqual(got.ino, a.ino)
        self.assertEqual(len(calls), 1)
        forged = h[:-1] + bytes([h[-1] ^ 1])
        self.failureResultOf(m.vfs.from_handle(forged), errors.BadHandle)
        # Still stale once the file goes, cached or not.
        self.successResultOf(m.vfs.remove(c, m.root(), b"f"))
        self.failureResultOf(m.vfs.from_handle(h), errors.Stale)
