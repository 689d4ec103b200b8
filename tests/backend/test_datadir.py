"""Tests for L{claudefs_gateway.backend.datadir}."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.backend.datadir import DataDir, DataDirLocked


class DataDirTests(SynchronousTestCase):
    def test_created_private_and_locked(self) -> None:
        path = Path(self.mktemp()) / "nested" / "data"
        d = DataDir(path)
        d.startService()
        self.addCleanup(d.stopService)
        self.assertTrue(path.is_dir())
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o700)
        self.assertEqual(d.check().status, "healthy")
        other = DataDir(path)
        self.assertRaises(DataDirLocked, other.open)

    def test_unlocked_after_stop(self) -> None:
        path = Path(self.mktemp())
        d = DataDir(path)
        d.startService()
        d.stopService()
        self.assertEqual(d.check().status, "unhealthy")
        again = DataDir(path)
        again.open()
        again.stopService()
