"""NFSv3 codec (L{claudefs_gateway.nfs.v3.codec}): what the procedure tests do not reach."""

from __future__ import annotations

import struct

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.fstypes import Attributes, FileType
from claudefs_gateway.nfs.v3 import codec as c
from claudefs_gateway.rpc.xdr import PADDING, Unpacker

ATTRS = Attributes(
    ino=5,
    gen=1,
    type=FileType.REG,
    mode=0o644,
    nlink=1,
    uid=1,
    gid=2,
    size=10,
    used=4096,
    rdev=(0, 0),
    atime_ns=1_700_000_000_123_456_789,
    mtime_ns=1_700_000_001_000_000_000,
    ctime_ns=1_700_000_002_000_000_001,
    btime_ns=0,
    change=3,
)


class EncodedAttributesTests(SynchronousTestCase):
    def test_remembered_per_object_and_fsid(self) -> None:
        """fattr3 of the same object is encoded once; another object or fsid is encoded anew."""
        a = ATTRS
        first = c.fattr3(a, 7)
        self.assertIs(c.fattr3(a, 7), first)
        other_fsid = c.dec_fattr3(Unpacker(c.fattr3(a, 8)))
        self.assertEqual(other_fsid.fsid, 8)
        b = attrs.evolve(a, size=11)
        self.assertEqual(c.dec_fattr3(Unpacker(c.fattr3(b, 7))).size, 11)
        self.assertEqual(c.dec_fattr3(Unpacker(first)).size, 10)

    def test_decodes_to_the_attributes(self) -> None:
        f = c.dec_fattr3(Unpacker(c.fattr3(ATTRS, 7)))
        self.assertEqual(
            (f.type, f.mode, f.nlink, f.uid, f.gid, f.size, f.used, f.fsid, f.fileid),
            (c.NF3.REG, 0o644, 1, 1, 2, 10, 4096, 7, 5),
        )
        self.assertEqual(f.atime, (1_700_000_000, 123_456_789))
        self.assertEqual(f.ctime, (1_700_000_002, 1))

    def test_post_op_forms(self) -> None:
        first = c.fattr3(ATTRS, 7)
        self.assertEqual(c.post_op_attr(ATTRS, 7), c.TRUE + first)
        self.assertEqual(c.post_op_attr(None, 7), c.FALSE)
        self.assertEqual(c.status_post_op(3, ATTRS, 7), b"\0\0\0\3" + c.TRUE + first)
        self.assertEqual(c.status_post_op(3, None, 7), b"\0\0\0\3" + c.FALSE)


class EntryTests(SynchronousTestCase):
    """entry3 and entryplus3 in one pack: the same bytes as their parts, and decodable."""

    @settings(max_examples=200, deadline=None)
    @given(
        name=st.binary(min_size=1, max_size=300),
        cookie=st.integers(0, 2**64 - 1),
        handle=st.binary(min_size=0, max_size=64),
        fsid=st.integers(0, 2**64 - 1),
        size=st.integers(0, 2**63 - 1),
        mtime=st.integers(-(10**9), 2**34 * 10**9),
        nlink=st.integers(0, 2**40),
    )
    def test_same_as_parts(
        self, name: bytes, cookie: int, handle: bytes, fsid: int, size: int, mtime: int, nlink: int
    ) -> None:
        a = attrs.evolve(ATTRS, size=size, mtime_ns=mtime, nlink=nlink, ino=cookie or 1)
        n = len(name)
        head = struct.pack(">IQI", 1, a.ino, n) + name + PADDING[n & 3] + struct.pack(">Q", cookie)
        self.assertEqual(c.entry3(name, a.ino, cookie), head)
        self.assertEqual(
            c.entryplus3(name, cookie, a, fsid, handle),
            head + c.post_op_attr(a, fsid) + c.post_op_fh(handle),
        )
        u = Unpacker(c.entryplus3(name, cookie, a, fsid, handle))
        self.assertTrue(u.bool())
        self.assertEqual((u.u64(), u.string(1024), u.u64()), (a.ino, name, cookie))
        self.assertEqual(c.dec_post_op_attr(u).size, size)
        self.assertEqual(c.dec_post_op_fh(u), handle)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=3, max_size=3))
    def test_times(self, times: list[int]) -> None:
        """nfstime3 of any time: before the epoch 0, past 2**32 s the last second, else exact."""

        def expect(ns: int) -> tuple[int, int]:
            if ns <= 0:
                return (0, 0)
            if ns // 10**9 > 0xFFFFFFFF:
                return (0xFFFFFFFF, 999_999_999)
            return (ns // 10**9, ns % 10**9)

        a = attrs.evolve(ATTRS, atime_ns=times[0], mtime_ns=times[1], ctime_ns=times[2])
        f = c.dec_fattr3(Unpacker(c.fattr3(a, 1)))
        self.assertEqual((f.atime, f.mtime, f.ctime), tuple(expect(t) for t in times))
