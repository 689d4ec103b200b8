"""File information classes, directory entries, wildcards and times."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as s
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.fstypes import Attributes, FileType, FSStat
from claudefs_gateway.smb import constants as c
from claudefs_gateway.smb.info import (
    OpenState,
    Stat,
    Volume,
    dos_attributes,
    from_filetime,
    fs_info,
    matches,
    pack_dir_entry,
    pack_stat_info,
    to_filetime,
)


def attrs(kind: FileType = FileType.REG, size: int = 10, used: int = 10) -> Attributes:
    return Attributes(7, 1, kind, 0o644, 1, 1000, 1000, size, used, (0, 0), 1, 2, 3, 4, 5)


class TimeTests(SynchronousTestCase):
    @given(s.integers(0, 2**62))
    def test_round_trip(self, ns: int) -> None:
        self.assertEqual(from_filetime(to_filetime(ns)), ns // 100 * 100)

    def test_epoch(self) -> None:
        self.assertEqual(to_filetime(0), 116444736000000000)
        self.assertEqual(to_filetime(-(10**20)), 0)


class DosAttributeTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """A file never given attributes is ARCHIVE, a directory DIRECTORY, dot-files HIDDEN."""
        self.assertEqual(dos_attributes(attrs(), None), c.FILE_ATTRIBUTE_ARCHIVE)
        self.assertEqual(dos_attributes(attrs(FileType.DIR), None), c.FILE_ATTRIBUTE_DIRECTORY)
        self.assertEqual(dos_attributes(attrs(), 0), c.FILE_ATTRIBUTE_NORMAL)
        self.assertEqual(
            dos_attributes(attrs(), None, b".profile"),
            c.FILE_ATTRIBUTE_ARCHIVE | c.FILE_ATTRIBUTE_HIDDEN,
        )
        self.assertEqual(
            dos_attributes(attrs(), c.FILE_ATTRIBUTE_DIRECTORY | 1), c.FILE_ATTRIBUTE_READONLY
        )


class WildcardTests(SynchronousTestCase):
    def test_patterns(self) -> None:
        cases = [
            ("*", "anything", True),
            ("*.txt", "a.TXT", True),
            ("*.txt", "a.txt.bak", False),
            ("a?c", "abc", True),
            ("a?c", "ac", False),
            ("<.txt", "name.txt", True),
            ("<", "x.y.z", False),
            ("<", "xyz", True),
            ("<.*", "x.y.z", True),
            ("a>>", "a", True),
            ("a>>", "abc", True),
            ("a>>", "abcd", False),
            ('a"txt', "a.txt", True),
            ("exact", "EXACT", True),
            ("exact", "exactly", False),
            ("[x]", "[x]", True),
        ]
        for pattern, name, want in cases:
            self.assertEqual(matches(pattern, name), want, (pattern, name))

    @given(s.text(max_size=20), s.text(max_size=30))
    def test_never_raises(self, pattern: str, name: str) -> None:
        matches(pattern, name)


class EntryTests(SynchronousTestCase):
    def test_sizes(self) -> None:
        """Each directory class has its fixed part, then the UTF-16 name."""
        st = Stat(attrs(), c.FILE_ATTRIBUTE_ARCHIVE)
        for cls, fixed in ((1, 64), (2, 68), (3, 94), (37, 104), (38, 80), (12, 12)):
            e = pack_dir_entry(cls, st, "ab")
            self.assertEqual(len(e), fixed + 4, cls)
            self.assertEqual(e[-4:], "ab".encode("utf-16-le"))
        e = pack_dir_entry(37, st, "x")
        self.assertEqual(struct.unpack_from("<Q", e, 96)[0], 7)
        self.assertEqual(struct.unpack_from("<q", e, 40)[0], 10)


class InfoClassTests(SynchronousTestCase):
    op = OpenState(0x12019F, 5, 0, False, "\\dir\\f")

    def test_fixed_sizes(self) -> None:
        st = Stat(attrs(), 0x20)
        sizes = {4: 40, 5: 24, 6: 8, 7: 4, 8: 4, 14: 8, 16: 4, 17: 4, 34: 56, 35: 8, 59: 24}
        for cls, n in sizes.items():
            self.assertEqual(len(pack_stat_info(cls, st, self.op)), n, cls)

    def test_all_information(self) -> None:
        data = pack_stat_info(18, Stat(attrs(), 0x20), self.op)
        self.assertEqual(len(data), 100 + len("\\dir\\f") * 2)
        self.assertEqual(struct.unpack_from("<Q", data, 64)[0], 7)
        self.assertEqual(struct.unpack_from("<Q", data, 80)[0], 5)

    def test_streams(self) -> None:
        self.assertIn(
            "::$DATA".encode("utf-16-le"), pack_stat_info(22, Stat(attrs(), 0x20), self.op)
        )
        self.assertEqual(pack_stat_info(22, Stat(attrs(FileType.DIR), 0x10), self.op), b"")

    def test_unknown(self) -> None:
        self.assertRaises(KeyError, pack_stat_info, 99, Stat(attrs(), 0), self.op)

    def test_fs_classes(self) -> None:
        vol = Volume("share", 0xABCD, 0, False)
        stat = FSStat(10 * 4096, 4 * 4096, 3 * 4096, 100, 50, 50)
        self.assertEqual(struct.unpack("<QQII", fs_info(3, vol, stat)), (10, 3, 8, 512))
        self.assertEqual(struct.unpack("<QQQII", fs_info(7, vol, stat)), (10, 3, 4, 8, 512))
        self.assertTrue(fs_info(1, vol, None).endswith("share".encode("utf-16-le")))
        self.assertIn("NTFS".encode("utf-16-le"), fs_info(5, vol, None))
        self.assertEqual(len(fs_info(11, vol, None)), 28)
        self.assertEqual(struct.unpack("<II", fs_info(4, vol, None))[0], c.FILE_DEVICE_DISK)
        self.assertEqual(struct.unpack("<QQQqqII", fs_info(6, vol, None))[3:5], (-1, -1))
        self.assertRaises(KeyError, fs_info, 2, vol, None)
