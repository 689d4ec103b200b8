"""The SMB column of docs/errors.rst: every error of the family has its NTSTATUS."""

from __future__ import annotations

import os
import re

from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway import errors
from claudefs_gateway.smb import ntstatus
from claudefs_gateway.smb.errors import FS_STATUS, SMBError, status_for
from tests.helpers import REPO


class TableTests(SynchronousTestCase):
    def test_every_fs_error(self) -> None:
        """Each FSError subclass maps to a status, and that status is the one docs/errors.rst names."""
        with open(os.path.join(REPO, "docs", "errors.rst")) as f:
            doc = f.read()
        for cls in errors.FS_ERRORS:
            status = status_for(cls("x"))
            name = ntstatus.name(status)
            self.assertTrue(name.startswith("STATUS_"), cls)
            row = next(line for line in doc.splitlines() if line.startswith(f"``{cls.__name__}``"))
            self.assertIn(name, doc[doc.index(row) : doc.index(row) + 600], cls.__name__)
        self.assertEqual(status_for(errors.LockConflict(None)), ntstatus.STATUS_LOCK_NOT_GRANTED)
        self.assertEqual(status_for(errors.ShareConflict()), ntstatus.STATUS_SHARING_VIOLATION)
        self.assertEqual(set(FS_STATUS) >= set(errors.FS_ERRORS), True)

    def test_others(self) -> None:
        self.assertEqual(status_for(errors.BackendUnavailable()), ntstatus.STATUS_IO_TIMEOUT)
        self.assertEqual(status_for(errors.Timeout()), ntstatus.STATUS_IO_TIMEOUT)
        self.assertEqual(status_for(CancelledError()), ntstatus.STATUS_CANCELLED)
        self.assertEqual(status_for(errors.ProtocolError()), ntstatus.STATUS_INVALID_PARAMETER)
        self.assertEqual(status_for(SMBError(0x1234)), 0x1234)

    def test_bug_is_logged(self) -> None:
        self.assertEqual(
            status_for(Failure(KeyError("x")), "create"), ntstatus.STATUS_INTERNAL_ERROR
        )
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_names(self) -> None:
        self.assertEqual(ntstatus.name(0), "STATUS_SUCCESS")
        self.assertEqual(ntstatus.name(0xC0001234), "0xC0001234")
        self.assertTrue(re.match(r"STATUS_\w+", ntstatus.name(0xC000006D)))
