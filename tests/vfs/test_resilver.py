"""The lease a mirror re-silver runs under (L{claudefs_gateway.vfs.resilver})."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from zope.interface import implementer

from claudefs_gateway.interfaces import ILeaseHolder
from claudefs_gateway.vfs.leases import LeaseKey, LeaseManager, R, W, Why
from claudefs_gateway.vfs.resilver import resilver_guard


@implementer(ILeaseHolder)
class Holder:
    def __init__(self) -> None:
        self.breaks: list[int] = []

    def lease_break(self, lease: Any, to: int) -> bool:
        self.breaks.append(to)
        return True

    def lease_revoked(self, lease: Any) -> None:
        pass


class GuardTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.leases = LeaseManager(self.clock, recall_timeout=10)
        self.guard = resilver_guard(self.leases)

    def _enter(self, ino: int) -> tuple[Any, defer.Deferred[Any]]:
        cm = self.guard(ino)
        return cm, defer.Deferred.fromCoroutine(cm.__aenter__())

    def test_waits_for_other_leases(self) -> None:
        """A layout (or delegation) on the file is recalled and returned before the copy starts."""
        other = Holder()
        lease = self.leases.grant(7, LeaseKey("nfs4", "c1", b"layout"), R | W, other)
        assert lease is not None
        cm, entered = self._enter(7)
        self.assertNoResult(entered)
        self.assertEqual(len(other.breaks), 1)
        self.leases.release(lease)
        held = self.successResultOf(entered)
        self.assertFalse(held.interrupted)
        self.successResultOf(defer.Deferred.fromCoroutine(cm.__aexit__(None, None, None)))
        self.assertEqual(len(self.leases), 0)

    def test_writer_interrupts_reader_does_not(self) -> None:
        """A write by anyone breaks the copy's lease (interrupted); a read leaves it."""
        cm, entered = self._enter(7)
        held = self.successResultOf(entered)
        self.successResultOf(self.leases.recall(7, Why.READ, ()))
        self.assertFalse(held.interrupted)
        self.successResultOf(self.leases.recall(7, Why.WRITE, ()))
        self.assertTrue(held.interrupted)
        self.successResultOf(defer.Deferred.fromCoroutine(cm.__aexit__(None, None, None)))
