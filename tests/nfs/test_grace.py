"""One grace period for NLM and NFSv4 (L{claudefs_gateway.nfs.grace})."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.nfs.grace import Grace
from claudefs_gateway.vfs.locks import LockTable


class GraceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.locks = LockTable(self.clock)

    def test_one_period(self) -> None:
        """The second protocol joins the first's grace; it does not restart the countdown."""
        g = Grace(60)
        g.begin(self.locks, "nlm")
        self.clock.advance(40)
        g.begin(self.locks, "nfs4")
        self.clock.advance(21)
        self.assertFalse(self.locks.in_grace)

    def test_early_end(self) -> None:
        g = Grace(60)
        g.begin(self.locks, "nfs4")
        g.done("nfs4")
        self.assertFalse(self.locks.in_grace)

    def test_early_end_waits_for_all(self) -> None:
        g = Grace(60)
        g.begin(self.locks, "nlm")
        g.begin(self.locks, "nfs4")
        g.done("nfs4")
        self.assertTrue(self.locks.in_grace)

    def test_disabled(self) -> None:
        g = Grace(0)
        g.begin(self.locks, "nfs4")
        self.assertFalse(self.locks.in_grace)
        self.assertFalse(g.active)
