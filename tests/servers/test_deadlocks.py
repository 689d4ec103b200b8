"""Deadlocks across gateways (servers/deadlocks.py): waits registered at the meta server."""

from __future__ import annotations

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway import errors
from claudefs_gateway.servers.shared import SharedState

X = ("nlm", b"s:host-x", b"1")
Y = ("smb", b"b:sess-y", b"fid")
Z = ("nfs4", b"b:client-z", b"lo")


class WaitGraphTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.shared = SharedState(task.Clock(), lambda s, n, v: False, lambda n, v, *_: None)

    def hold(self, session: int, ino: int, owner: object, start: int = 0, length: int = 10) -> None:
        self.successResultOf(self.shared.lock(session, ino, owner, start, length, True, False))

    def test_two_gateways_cycle_refused(self) -> None:
        """X (gateway 1) holds 1 and waits for 2; Y (gateway 2) holds 2: its wait for 1 is refused."""
        self.hold(1, 1, X)
        self.hold(2, 2, Y)
        self.shared.lock_wait(1, 2, X, 0, 10, True)
        self.assertRaises(errors.Deadlock, self.shared.lock_wait, 2, 1, Y, 5, 1, True)
        # X's wait stays; once it is over, Y may wait for 1 again.
        self.shared.lock_unwait(1, X)
        self.shared.lock_wait(2, 1, Y, 5, 1, True)

    def test_three_owners_cycle_refused(self) -> None:
        self.hold(1, 1, X)
        self.hold(2, 2, Y)
        self.hold(3, 3, Z)
        self.shared.lock_wait(1, 2, X, 0, 0, True)
        self.shared.lock_wait(2, 3, Y, 0, 0, True)
        self.assertRaises(errors.Deadlock, self.shared.lock_wait, 3, 1, Z, 0, 0, True)

    def test_no_cycle_without_conflict(self) -> None:
        """Shared locks and disjoint ranges block no one: no cycle is seen."""
        self.successResultOf(self.shared.lock(1, 1, X, 0, 10, False, False))
        self.hold(2, 2, Y)
        self.shared.lock_wait(1, 2, X, 0, 10, True)
        self.shared.lock_wait(2, 1, Y, 0, 10, False)  # a read beside a read lock
        self.shared.lock_wait(2, 1, Y, 20, 5, True)  # past X's range

    def test_gone_session_waits_go(self) -> None:
        self.hold(1, 1, X)
        self.hold(2, 2, Y)
        self.shared.lock_wait(1, 2, X, 0, 10, True)
        self.shared.reset(1)
        self.assertEqual(self.shared.waits.waits, {})
        self.shared.lock_wait(2, 1, Y, 0, 10, True)
