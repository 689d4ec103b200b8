"""
Permission matrices (L{claudefs_gateway.vfs.permissions}): every class of
caller against every mode bit, the sticky bit, setgid directories, and the
chmod/chown/utimes rules.
"""

from __future__ import annotations

import itertools
import stat

from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway import errors
from claudefs_gateway.fstypes import NOW, Attributes, Credentials, FileType, SetAttrs
from claudefs_gateway.vfs import permissions as perm

OWNER = Credentials(1000, 1000, (50,))
GROUP = Credentials(2000, 100, ())
SUPP = Credentials(3000, 3000, (100,))
OTHER = Credentials(4000, 4000, ())
ROOT = Credentials(0, 0)


def attrs(mode: int, type: FileType = FileType.REG, uid: int = 1000, gid: int = 100) -> Attributes:
    return Attributes(
        ino=5,
        gen=1,
        type=type,
        mode=mode,
        nlink=1,
        uid=uid,
        gid=gid,
        size=0,
        used=0,
        rdev=(0, 0),
        atime_ns=0,
        mtime_ns=0,
        ctime_ns=0,
        btime_ns=0,
        change=1,
    )


class GrantedMatrixTests(SynchronousTestCase):
    def test_every_mode_for_every_class(self) -> None:
        """For all 512 rwx modes, owner/group/supplementary-group/other get exactly their triplet."""
        for mode in range(0o1000):
            a = attrs(mode)
            self.assertEqual(perm.granted(OWNER, a), (mode >> 6) & 7, oct(mode))
            self.assertEqual(perm.granted(GROUP, a), (mode >> 3) & 7, oct(mode))
            self.assertEqual(perm.granted(SUPP, a), (mode >> 3) & 7, oct(mode))
            self.assertEqual(perm.granted(OTHER, a), mode & 7, oct(mode))

    def test_owner_class_wins_even_if_less(self) -> None:
        """POSIX: the owner gets the owner triplet even when group or other grant more."""
        self.assertEqual(perm.granted(OWNER, attrs(0o077)), 0)

    def test_root(self) -> None:
        self.assertEqual(perm.granted(ROOT, attrs(0o000)), perm.R | perm.W)
        self.assertEqual(perm.granted(ROOT, attrs(0o001)), perm.R | perm.W | perm.X)
        self.assertEqual(perm.granted(ROOT, attrs(0o000, FileType.DIR)), 7)

    def test_check_raises_access(self) -> None:
        perm.check(OWNER, attrs(0o600), perm.R | perm.W)
        with self.assertRaises(errors.Access):
            perm.check(OTHER, attrs(0o604), perm.W)

    def test_acl_hook_overrides(self) -> None:
        def acl(cred: Credentials, a: Attributes) -> int | None:
            return 7 if cred.uid == 4000 else None

        self.assertEqual(perm.granted(OTHER, attrs(0o600), acl), 7)
        self.assertEqual(perm.granted(GROUP, attrs(0o600), acl), 0)


class StickyTests(SynchronousTestCase):
    def test_matrix(self) -> None:
        """In a sticky directory only the entry's owner, the directory's owner and root may remove it."""
        sticky = attrs(0o1777, FileType.DIR, uid=2000, gid=2000)
        entry = attrs(0o644, uid=1000)
        for cred, allowed in (
            (OWNER, True),
            (GROUP, True),
            (ROOT, True),
            (OTHER, False),
            (SUPP, False),
        ):
            if allowed:
                perm.check_sticky(cred, sticky, entry)
            else:
                self.assertRaises(errors.Perm, perm.check_sticky, cred, sticky, entry)
        perm.check_sticky(OTHER, attrs(0o777, FileType.DIR), entry)


class NewEntryTests(SynchronousTestCase):
    def test_setgid_directory_passes_group_and_bit(self) -> None:
        d = attrs(0o2775, FileType.DIR, uid=0, gid=500)
        self.assertEqual(perm.new_owner(OWNER, d), (1000, 500))
        self.assertEqual(perm.new_mode(OWNER, d, 0o755, FileType.DIR, 500), 0o2755)
        self.assertEqual(perm.new_mode(OWNER, d, 0o644, FileType.REG, 500), 0o644)
        plain = attrs(0o775, FileType.DIR, gid=500)
        self.assertEqual(perm.new_owner(OWNER, plain), (1000, 1000))
        self.assertEqual(perm.new_mode(OWNER, plain, 0o755, FileType.DIR, 1000), 0o755)

    def test_setgid_file_needs_group_membership(self) -> None:
        d = attrs(0o775, FileType.DIR)
        self.assertEqual(perm.new_mode(OWNER, d, 0o2755, FileType.REG, 9999), 0o755)
        self.assertEqual(perm.new_mode(OWNER, d, 0o2755, FileType.REG, 50), 0o2755)
        self.assertEqual(perm.new_mode(ROOT, d, 0o2755, FileType.REG, 9999), 0o2755)


class SetattrRuleTests(SynchronousTestCase):
    def test_chmod_owner_or_root(self) -> None:
        a = attrs(0o644)
        self.assertEqual(perm.check_setattr(OWNER, a, SetAttrs(mode=0o600)).mode, 0o600)
        self.assertEqual(perm.check_setattr(ROOT, a, SetAttrs(mode=0o600)).mode, 0o600)
        self.assertRaises(errors.Perm, perm.check_setattr, GROUP, a, SetAttrs(mode=0o600))

    def test_chmod_setgid_dropped_for_non_member(self) -> None:
        a = attrs(0o644, gid=9999)
        self.assertEqual(perm.check_setattr(OWNER, a, SetAttrs(mode=0o2755)).mode, 0o755)
        self.assertEqual(perm.check_setattr(ROOT, a, SetAttrs(mode=0o2755)).mode, 0o2755)

    def test_chown_rules(self) -> None:
        a = attrs(0o644, uid=1000, gid=1000)
        self.assertRaises(errors.Perm, perm.check_setattr, OWNER, a, SetAttrs(uid=2000))
        perm.check_setattr(OWNER, a, SetAttrs(uid=1000))
        perm.check_setattr(OWNER, a, SetAttrs(gid=50))
        self.assertRaises(errors.Perm, perm.check_setattr, OWNER, a, SetAttrs(gid=100))
        self.assertRaises(
            errors.Perm,
            perm.check_setattr,
            SUPP,
            attrs(0o644, uid=1000, gid=100),
            SetAttrs(gid=100 + 1),
        )
        perm.check_setattr(ROOT, a, SetAttrs(uid=7, gid=7))

    def test_chown_clears_setid_for_non_root(self) -> None:
        a = attrs(0o6755, uid=1000, gid=1000)
        self.assertEqual(perm.check_setattr(OWNER, a, SetAttrs(gid=50)).mode, 0o755)
        self.assertIsNone(perm.check_setattr(ROOT, a, SetAttrs(uid=5)).mode)

    def test_times(self) -> None:
        a = attrs(0o646)
        perm.check_setattr(OWNER, a, SetAttrs(mtime=5))
        self.assertRaises(errors.Perm, perm.check_setattr, OTHER, a, SetAttrs(mtime=5))
        perm.check_setattr(OTHER, a, SetAttrs(mtime=NOW))
        self.assertRaises(
            errors.Access, perm.check_setattr, OTHER, attrs(0o644), SetAttrs(atime=NOW)
        )
        self.assertRaises(errors.Perm, perm.check_setattr, OTHER, a, SetAttrs(btime=5))

    def test_truncate_needs_write(self) -> None:
        perm.check_setattr(OTHER, attrs(0o646), SetAttrs(size=0))
        self.assertRaises(errors.Access, perm.check_setattr, OTHER, attrs(0o644), SetAttrs(size=0))

    def test_strip_setid_on_write(self) -> None:
        self.assertEqual(perm.strip_setid_on_write(OWNER, attrs(0o6755)), 0o755)
        self.assertEqual(
            perm.strip_setid_on_write(OWNER, attrs(0o2645)), None
        )  # mandatory-lock marking kept
        self.assertEqual(perm.strip_setid_on_write(OWNER, attrs(0o4645)), 0o645)
        self.assertIsNone(perm.strip_setid_on_write(ROOT, attrs(0o6755)))
        self.assertIsNone(perm.strip_setid_on_write(OWNER, attrs(0o755)))

    def test_every_bit_combination_is_checked_consistently(self) -> None:
        """For each caller and mode, check() raises exactly when may() is false."""
        for cred, mode, mask in itertools.product(
            (OWNER, GROUP, OTHER, ROOT), range(0, 0o1000, 7), (1, 2, 4, 6, 7)
        ):
            a = attrs(mode)
            ok = perm.may(cred, a, mask)
            try:
                perm.check(cred, a, mask)
                self.assertTrue(ok)
            except errors.Access:
                self.assertFalse(ok)
        self.assertEqual(stat.S_ISVTX, 0o1000)
