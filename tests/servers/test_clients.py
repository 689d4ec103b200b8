"""The meta server's client records and cross-gateway grace (servers/clients.py), on a Clock."""

from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway import errors
from claudefs_gateway.servers.clients import ClientRegistry
from claudefs_gateway.servers.shared import SharedState

OWNER = ("nlm", b"s:host", b"1")


class RegistryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.events: list[tuple[str, Any]] = []
        self.reg = ClientRegistry(self.clock, lambda n, v: self.events.append((n, v)), grace=30)

    def test_gone_session_starts_grace(self) -> None:
        """A gone gateway's clients become reclaimable; grace is announced with them."""
        self.reg.note(1, "nfs4", b"alice")
        self.reg.note(2, "nfs4", b"bob")
        self.assertFalse(self.reg.in_grace)
        self.reg.session_gone(1)
        self.assertTrue(self.reg.in_grace)
        self.assertTrue(self.reg.may_reclaim("nfs4", b"alice"))
        self.assertFalse(self.reg.may_reclaim("nfs4", b"bob"), "bob's gateway is alive")
        self.assertEqual(self.events[-1], ("EV_GRACE", (30000, [("nfs4", b"alice")], [])))

    def test_grace_ends_when_all_reclaimed(self) -> None:
        """RECLAIM_COMPLETE of the last reclaimable NFSv4 client ends grace early."""
        for who in (b"alice", b"carol"):
            self.reg.note(1, "nfs4", who)
        self.reg.session_gone(1)
        self.clock.advance(5)
        self.reg.reclaimed(3, "nfs4", b"alice")
        self.assertTrue(self.reg.in_grace)
        self.assertEqual(self.events[-1], ("EV_GRACE", (25000, [("nfs4", b"carol")], [])))
        self.reg.forget(3, "nfs4", b"carol")
        self.assertFalse(self.reg.in_grace)
        self.assertEqual(self.events[-1], ("EV_GRACE", (0, [], [])))
        self.assertEqual(self.reg.records[("nfs4", b"alice")].session, 3)

    def test_nlm_client_keeps_grace_to_its_end(self) -> None:
        """NLM has no RECLAIM_COMPLETE: grace runs its length, then the unreclaimed go."""
        self.reg.note(1, "nlm", b"host")
        self.reg.note(1, "nfs4", b"alice")
        self.reg.session_gone(1)
        self.reg.reclaimed(2, "nfs4", b"alice")
        self.assertTrue(self.reg.in_grace)
        self.clock.advance(30)
        self.assertFalse(self.reg.in_grace)
        self.assertNotIn(("nlm", b"host"), self.reg.records)
        self.assertIn(("nfs4", b"alice"), self.reg.records)

    def test_lost_session_pending_until_gone_or_back(self) -> None:
        """A lost subscription makes its clients pending (reclaims wait); back, they are not."""
        self.reg.note(1, "nfs4", b"alice")
        self.reg.session_lost(1)
        self.assertEqual(self.events[-1], ("EV_GRACE", (0, [], [("nfs4", b"alice")])))
        self.assertFalse(self.reg.in_grace)
        self.reg.session_back(1)
        self.assertEqual(self.events[-1], ("EV_GRACE", (0, [], [])))
        self.reg.session_lost(1)
        self.reg.session_gone(1)
        self.assertEqual(self.events[-1], ("EV_GRACE", (30000, [("nfs4", b"alice")], [])))

    def test_no_clients_no_grace(self) -> None:
        self.reg.note(1, "nfs4", b"alice")
        self.reg.session_gone(2)
        self.assertFalse(self.reg.in_grace)
        self.assertEqual(self.events, [])


class EnforcedTests(SynchronousTestCase):
    """The meta server refuses new state to every gateway during grace; reclaims pass."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.shared = SharedState(self.clock, lambda s, n, v: False, lambda n, v: None, linger=1)
        self.reg = ClientRegistry(self.clock, lambda n, v: None, grace=30)
        self.shared.clients = self.reg

    def test_grace_refuses_new_state(self) -> None:
        self.reg.note(1, "nfs4", b"alice")
        # Session 1 holds no lock: its client record alone makes its loss noticed.
        self.shared.unsubscribed(1)
        self.clock.advance(1)
        self.assertTrue(self.reg.in_grace)
        d = self.shared.lock(2, 5, OWNER, 0, 1, True, False)
        self.failureResultOf(d, errors.Grace)
        self.assertRaises(errors.Grace, self.shared.share_open, 2, 5, OWNER, 1, 3, 0, False)
        self.successResultOf(self.shared.lock(2, 5, OWNER, 0, 1, True, True))
        self.shared.share_open(2, 6, OWNER, 2, 3, 2, True)
        self.reg.reclaimed(2, "nfs4", b"alice")
        self.successResultOf(self.shared.lock(2, 7, OWNER, 0, 1, True, False))
