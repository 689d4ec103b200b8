"""The NFSv3, MOUNT and NLM error tables (L{claudefs_gateway.nfs.errors})."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway import errors
from claudefs_gateway.nfs.errors import (
    NFS3ERR,
    NLM4,
    mount_status,
    nfs3_name,
    nfs3_status,
    nlm4_status,
)


class TableTests(SynchronousTestCase):
    def test_every_fs_error_has_an_nfs3_status(self) -> None:
        """Every FSError maps to a defined nfsstat3 without logging an unexpected failure."""
        for cls in errors.FS_ERRORS:
            code = nfs3_status(cls("x"))
            self.assertTrue(nfs3_name(code).startswith("NFS3ERR_"), cls)
            self.assertNotEqual(code, NFS3ERR.SERVERFAULT, cls)
            self.assertIn(mount_status(cls("x")), {1, 2, 5, 13, 20, 22, 63, 10004, 10006})
            self.assertNotEqual(nlm4_status(cls("x")), None)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_documented_rows(self) -> None:
        """Spot checks of docs/errors.rst."""
        rows = {
            errors.NotFound: NFS3ERR.NOENT,
            errors.Stale: NFS3ERR.STALE,
            errors.BadHandle: NFS3ERR.BADHANDLE,
            errors.BadCookie: NFS3ERR.BAD_COOKIE,
            errors.Loop: NFS3ERR.INVAL,
            errors.Busy: NFS3ERR.ACCES,
            errors.DQuot: NFS3ERR.DQUOT,
            errors.Perm: NFS3ERR.PERM,
            errors.Access: NFS3ERR.ACCES,
        }
        for cls, code in rows.items():
            self.assertEqual(nfs3_status(cls()), code, cls)

    def test_try_later(self) -> None:
        self.assertEqual(nfs3_status(errors.BackendUnavailable()), NFS3ERR.JUKEBOX)
        self.assertEqual(nfs3_status(errors.Timeout()), NFS3ERR.JUKEBOX)

    def test_anything_else_is_serverfault_and_logged(self) -> None:
        self.assertEqual(nfs3_status(RuntimeError("bug")), NFS3ERR.SERVERFAULT)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(nlm4_status(KeyError("bug")), NLM4.FAILED)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_nlm_rows(self) -> None:
        self.assertEqual(nlm4_status(errors.LockConflict(None)), NLM4.DENIED)
        self.assertEqual(nlm4_status(errors.Deadlock()), NLM4.DEADLCK)
        self.assertEqual(nlm4_status(errors.Grace()), NLM4.DENIED_GRACE_PERIOD)
        self.assertEqual(nlm4_status(errors.NoLock()), NLM4.DENIED_NOLOCKS)
        self.assertEqual(nlm4_status(errors.ShareConflict()), NLM4.DENIED)
        self.assertEqual(nlm4_status(errors.Stale()), NLM4.STALE_FH)
        self.assertEqual(nlm4_status(errors.ReadOnly()), NLM4.ROFS)
        self.assertEqual(nlm4_status(errors.Inval()), NLM4.FAILED)


class NFS4TableTests(SynchronousTestCase):
    def test_every_fs_error_has_a_status(self) -> None:
        """Every FSError maps to a defined nfsstat4 without logging an unexpected failure."""
        from claudefs_gateway.nfs.errors import nfs4_status
        from claudefs_gateway.nfs.v4 import const as c

        for cls in errors.FS_ERRORS:
            code = nfs4_status(cls("x"))
            self.assertTrue(c.status_name(code).startswith("NFS4ERR_"), cls)
            self.assertNotEqual(code, c.NFS4ERR_SERVERFAULT, cls)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_documented_rows(self) -> None:
        """Spot checks of docs/errors.rst's NFSv4.1 column."""
        from claudefs_gateway.nfs.errors import nfs4_status
        from claudefs_gateway.nfs.v4 import const as c

        rows = {
            errors.NotFound: c.NFS4ERR_NOENT,
            errors.Loop: c.NFS4ERR_SYMLINK,
            errors.NoData: c.NFS4ERR_NOXATTR,
            errors.Range: c.NFS4ERR_XATTR2BIG,
            errors.Grace: c.NFS4ERR_GRACE,
            errors.NoLock: c.NFS4ERR_DELAY,
            errors.ShareConflict: c.NFS4ERR_SHARE_DENIED,
            errors.Busy: c.NFS4ERR_ACCESS,
            errors.Deadlock: c.NFS4ERR_DEADLOCK,
            errors.BadCookie: c.NFS4ERR_BAD_COOKIE,
            errors.BackendUnavailable: c.NFS4ERR_DELAY,
        }
        for cls, code in rows.items():
            self.assertEqual(nfs4_status(cls()), code, cls)
        self.assertEqual(nfs4_status(errors.LockConflict(None)), c.NFS4ERR_DENIED)
        self.assertEqual(nfs4_status(RuntimeError("bug")), c.NFS4ERR_SERVERFAULT)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
