"""Tests for L{claudefs_gateway.vfs.leases}: the cross-protocol lease manager."""

from __future__ import annotations

import gc
import os
import tracemalloc

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from zope.interface import implementer
from zope.interface.verify import verifyObject

from claudefs_gateway import errors
from claudefs_gateway.core.machines import to_dot
from claudefs_gateway.core.metrics import Metrics
from claudefs_gateway.interfaces import ILeaseHolder, ILeaseManager
from claudefs_gateway.vfs.leases import (
    RWH,
    H,
    Lease,
    LeaseKey,
    LeaseManager,
    R,
    W,
    Why,
    bits_text,
)

INO = 42
DOCS = os.path.join(os.path.dirname(__file__), "..", "..", "docs")


def key(n: int, protocol: str = "smb", client: str = "c") -> LeaseKey:
    return LeaseKey(protocol, f"{client}{n}", b"k%d" % n)


@implementer(ILeaseHolder)
class Holder:
    """Records breaks; acknowledges only when the test says (or never, with C{ack=False})."""

    def __init__(self, ack: bool = True) -> None:
        self.ack = ack
        self.breaks: list[tuple[Lease, int]] = []
        self.revoked: list[Lease] = []

    def lease_break(self, lease: Lease, to: int) -> bool:
        self.breaks.append((lease, to))
        return self.ack

    def lease_revoked(self, lease: Lease) -> None:
        self.revoked.append(lease)


class LeaseTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics()
        self.leases = LeaseManager(self.clock, recall_timeout=35.0, metrics=self.metrics)

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


class GrantTests(LeaseTestCase):
    def test_interface(self) -> None:
        """The manager provides ILeaseManager."""
        self.assertTrue(verifyObject(ILeaseManager, self.leases))

    def test_read_and_handle_are_shared(self) -> None:
        """Any number of keys hold R and H together."""
        for n in range(5):
            lease = self.leases.grant(INO, key(n), R | H, Holder())
            assert lease is not None
            self.assertEqual(lease.state, R | H)
        self.assertEqual(len(self.leases.leases(INO)), 5)

    def test_write_only_alone(self) -> None:
        """W is granted only to a key holding the only lease on the file."""
        first = self.leases.grant(INO, key(1), RWH, Holder())
        assert first is not None
        self.assertEqual(first.state, RWH)
        # While the first caches writes, a second key gets nothing until it is broken.
        self.assertIsNone(self.leases.grant(INO, key(2), RWH, Holder()))
        self.assertEqual(self.leases.grantable(INO, key(2), RWH), 0)

    def test_write_dropped_beside_readers(self) -> None:
        """Beside read-only holders a key is granted R and H, not W."""
        self.leases.grant(INO, key(1), R, Holder())
        lease = self.leases.grant(INO, key(2), RWH, Holder())
        assert lease is not None
        self.assertEqual(lease.state, R | H)

    def test_directory_never_write(self) -> None:
        """Directory leases are R or RH (MS-SMB2 3.3.5.9.11)."""
        lease = self.leases.grant(INO, key(1), RWH, Holder(), is_dir=True)
        assert lease is not None
        self.assertEqual(lease.state, R | H)

    def test_same_key_upgrades(self) -> None:
        """A second grant to the same key on the same file adds bits and moves the epoch."""
        lease = self.leases.grant(INO, key(1), R, Holder())
        assert lease is not None
        again = self.leases.grant(INO, key(1), RWH, Holder())
        self.assertIs(again, lease)
        self.assertEqual(lease.state, RWH)
        self.assertEqual(lease.epoch, 2)

    def test_key_names_one_file(self) -> None:
        """A lease key in use on one file cannot be granted on another."""
        self.leases.grant(INO, key(1), R, Holder())
        self.assertRaises(errors.Inval, self.leases.grant, INO + 1, key(1), R, Holder())

    def test_limit(self) -> None:
        """Past max_leases nothing more is granted (clients work uncached)."""
        leases = LeaseManager(self.clock, max_leases=2)
        self.assertIsNotNone(leases.grant(1, key(1), R, Holder()))
        self.assertIsNotNone(leases.grant(2, key(2), R, Holder()))
        self.assertIsNone(leases.grant(3, key(3), R, Holder()))

    def test_held_gauge(self) -> None:
        """gateway_leases_held counts live leases per protocol."""
        a = self.leases.grant(INO, key(1), R, Holder())
        self.leases.grant(INO, key(2, "nfs4"), R, Holder())
        self.assertEqual(self.sample("gateway_leases_held", protocol="smb"), 1)
        self.assertEqual(self.sample("gateway_leases_held", protocol="nfs4"), 1)
        assert a is not None
        self.leases.release(a)
        self.assertEqual(self.sample("gateway_leases_held", protocol="smb"), 0)

    def test_bits_text(self) -> None:
        self.assertEqual(bits_text(RWH), "RWH")
        self.assertEqual(bits_text(R | H), "RH")
        self.assertEqual(bits_text(0), "-")


class BreakTests(LeaseTestCase):
    def test_write_breaks_to_handle(self) -> None:
        """A write by someone else asks holders to keep only H, and waits for the acknowledgement."""
        holder = Holder()
        lease = self.leases.grant(INO, key(1), RWH, holder)
        assert lease is not None
        d = self.leases.recall(INO, Why.WRITE)
        self.assertNoResult(d)
        self.assertEqual(holder.breaks, [(lease, H)])
        self.assertEqual(lease.breaking_to, H)
        self.leases.acknowledge(lease, H)
        self.successResultOf(d)
        self.assertEqual(lease.state, H)
        self.assertIsNone(lease.breaking_to)
        self.assertEqual(self.sample("gateway_lease_breaks_total", protocol="smb"), 1)
        self.assertEqual(self.sample("gateway_lease_break_seconds_count", protocol="smb"), 1)

    def test_read_keeps_read(self) -> None:
        """A read by someone else breaks only write caching."""
        holder = Holder()
        lease = self.leases.grant(INO, key(1), RWH, holder)
        assert lease is not None
        d = self.leases.recall(INO, Why.READ)
        self.assertEqual(holder.breaks, [(lease, R | H)])
        self.leases.acknowledge(lease, R | H)
        self.successResultOf(d)

    def test_break_lease_to_a_target(self) -> None:
        """
        break_lease breaks one lease to what the caller says (SMB CREATE's own
        rules), fires once the holder is down to it, and the target only
        lowers while a break is outstanding.
        """
        holder = Holder()
        lease = self.leases.grant(INO, key(1), RWH, holder)
        assert lease is not None
        d = self.leases.break_lease(lease, R | W)
        self.assertEqual(holder.breaks, [(lease, R | W)])
        self.assertEqual(lease.target, R | W)
        d2 = self.leases.break_lease(lease, R)
        self.assertEqual(lease.target, R)
        self.assertEqual(len(holder.breaks), 1)
        self.leases.acknowledge(lease, R | W)
        self.successResultOf(d)
        self.assertEqual(holder.breaks[-1], (lease, R))
        self.assertNoResult(d2)
        self.leases.acknowledge(lease, R)
        self.successResultOf(d2)
        self.assertIsNone(lease.target)
        self.successResultOf(self.leases.break_lease(lease, R | H))

    def test_nothing_to_break(self) -> None:
        """A holder already within what it may keep gets no break; the recall fires at once."""
        holder = Holder()
        self.leases.grant(INO, key(1), R | H, holder)
        self.successResultOf(self.leases.recall(INO, Why.READ))
        self.assertEqual(holder.breaks, [])

    def test_exempt(self) -> None:
        """The requester's own leases are never broken; an exemption with key None covers a client."""
        own, other = Holder(), Holder()
        self.leases.grant(INO, LeaseKey("nfs4", "client-a", b"deleg1"), R | H, own)
        self.leases.grant(INO, key(2), R | H, other)
        d = self.leases.recall(INO, Why.WRITE, [LeaseKey("nfs4", "client-a", None)])
        self.assertEqual(own.breaks, [])
        self.assertEqual(len(other.breaks), 1)
        self.leases.acknowledge(other.breaks[0][0], H)
        self.successResultOf(d)

    def test_parent_exempt(self) -> None:
        """A directory lease named as an open's parent lease key is not broken by that open's changes."""
        holder = Holder()
        dir_key = key(9)
        self.leases.grant(INO, dir_key, R | H, holder, is_dir=True)
        self.successResultOf(self.leases.recall(INO, Why.DIR_CHANGE, [dir_key]))
        self.assertEqual(holder.breaks, [])

    def test_no_ack_needed(self) -> None:
        """A holder that needs no acknowledgement (SMB R-only) is broken as soon as told."""
        holder = Holder(ack=False)
        lease = self.leases.grant(INO, key(1), R, holder)
        assert lease is not None
        self.successResultOf(self.leases.recall(INO, Why.WRITE))
        self.assertTrue(lease.gone)
        self.assertEqual(self.leases.leases(INO), [])

    def test_ack_to_nothing_releases(self) -> None:
        """Acknowledging a break to nothing ends the lease (the key may be granted again)."""
        holder = Holder()
        lease = self.leases.grant(INO, key(1), RWH, holder)
        assert lease is not None
        d = self.leases.recall(INO, Why.UNLINK)
        self.leases.acknowledge(lease, 0)
        self.successResultOf(d)
        self.assertTrue(lease.gone)
        self.assertIsNone(self.leases.find(key(1)))
        self.assertIsNotNone(self.leases.grant(INO + 1, key(1), R, holder))

    def test_second_break_lowers_target(self) -> None:
        """
        A break arriving while one is outstanding sends nothing then; after the
        first acknowledgement the lease is broken again to the lower target
        (MS-SMB2 3.3.4.7).
        """
        holder = Holder()
        lease = self.leases.grant(INO, key(1), RWH, holder)
        assert lease is not None
        first = self.leases.recall(INO, Why.READ)
        second = self.leases.recall(INO, Why.WRITE)
        self.assertEqual([to for _, to in holder.breaks], [R | H])
        self.leases.acknowledge(lease, R | H)
        self.successResultOf(first)
        self.assertNoResult(second)
        self.assertEqual([to for _, to in holder.breaks], [R | H, H])
        self.leases.acknowledge(lease, H)
        self.successResultOf(second)
        self.assertEqual(lease.epoch, 3)

    def test_bad_acknowledgements(self) -> None:
        """Acknowledging without a break, or keeping more than allowed, is refused."""
        holder = Holder()
        lease = self.leases.grant(INO, key(1), RWH, holder)
        assert lease is not None
        self.assertRaises(errors.Inval, self.leases.acknowledge, lease, R)
        self.leases.recall(INO, Why.WRITE)
        self.assertRaises(errors.Inval, self.leases.acknowledge, lease, R | H)
        self.assertEqual(lease.breaking_to, H)

    def test_release_satisfies_breaker(self) -> None:
        """A holder that closes instead of acknowledging lets the waiting operation go ahead."""
        holder = Holder()
        lease = self.leases.grant(INO, key(1), RWH, holder)
        assert lease is not None
        d = self.leases.recall(INO, Why.WRITE)
        self.leases.release(lease)
        self.successResultOf(d)
        self.assertEqual(self.leases.leases(INO), [])

    def test_timeout_revokes(self) -> None:
        """A break not acknowledged within the recall time is revoked, and the operation proceeds."""
        holder = Holder()
        lease = self.leases.grant(INO, key(1), RWH, holder)
        assert lease is not None
        d = self.leases.recall(INO, Why.WRITE)
        self.clock.advance(34.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.successResultOf(d)
        self.assertEqual(holder.revoked, [lease])
        self.assertTrue(lease.revoked)
        self.assertTrue(lease.gone)
        self.assertEqual(self.sample("gateway_lease_revocations_total", protocol="smb"), 1)
        # Its later use is refused: an acknowledgement now is an error.
        self.assertRaises(errors.Inval, self.leases.acknowledge, lease, H)

    def test_own_recall_time(self) -> None:
        """
        A lease granted with a longer recall time of its own (an NFSv4
        delegation: one NFSv4 lease at least) is revoked then, while others
        keep the manager's; one timer serves both.
        """
        short, long_ = Holder(), Holder()
        a = self.leases.grant(INO, key(1), R | H, short)
        b = self.leases.grant(INO, key(2, "nfs4"), R | H, long_, recall_timeout=90.0)
        assert a is not None and b is not None
        d = self.leases.recall(INO, Why.WRITE)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(35)
        self.assertEqual(short.revoked, [a])
        self.assertEqual(long_.revoked, [])
        self.assertNoResult(d)
        self.clock.advance(54.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(long_.revoked, [b])
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_shorter_break_after_longer(self) -> None:
        """A short-timed break started after a long one still revokes at its own, earlier, time."""
        long_, short = Holder(), Holder()
        b = self.leases.grant(1, key(2, "nfs4"), R | H, long_, recall_timeout=90.0)
        a = self.leases.grant(2, key(1), R | H, short)
        assert a is not None and b is not None
        self.leases.recall(1, Why.WRITE)
        self.clock.advance(10)
        self.leases.recall(2, Why.WRITE)
        self.clock.advance(35)
        self.assertEqual((short.revoked, long_.revoked), ([a], []))
        self.clock.advance(45)
        self.assertEqual(long_.revoked, [b])

    def test_open_for_writing_and_locks(self) -> None:
        """
        An open for writing by someone else leaves handle caching (so a read
        delegation, R+H, is recalled); a byte-range lock leaves nothing.
        """
        holder = Holder()
        lease = self.leases.grant(INO, key(1, "nfs4"), R | H, holder)
        assert lease is not None
        self.successResultOf(self.leases.recall(INO, Why.OPEN, wait=False))
        self.assertEqual(holder.breaks, [])
        self.failureResultOf(self.leases.recall(INO, Why.OPEN_WRITE, wait=False), errors.Again)
        self.assertEqual(holder.breaks, [(lease, H)])
        self.leases.release(lease)
        lease = self.leases.grant(INO, key(1, "nfs4"), R | H, holder)
        assert lease is not None
        self.failureResultOf(self.leases.recall(INO, Why.LOCK, wait=False), errors.Again)
        self.assertEqual(holder.breaks[-1], (lease, 0))

    def test_no_wait(self) -> None:
        """With wait=False an outstanding break fails the request with Again (NFS: try later)."""
        holder = Holder()
        lease = self.leases.grant(INO, key(1), RWH, holder)
        assert lease is not None
        self.failureResultOf(self.leases.recall(INO, Why.WRITE, wait=False), errors.Again)
        self.assertEqual(len(holder.breaks), 1)
        # Retried after the acknowledgement, it goes through.
        self.leases.acknowledge(lease, H)
        self.successResultOf(self.leases.recall(INO, Why.WRITE, wait=False))

    def test_cancel(self) -> None:
        """Cancelling a waiting recall leaves the lease breaking and frees the waiter."""
        holder = Holder()
        lease = self.leases.grant(INO, key(1), RWH, holder)
        assert lease is not None
        d = self.leases.recall(INO, Why.WRITE)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(lease._waiters, [])
        self.leases.acknowledge(lease, H)
        self.assertEqual(lease.state, H)

    def test_release_client_and_inode(self) -> None:
        """A client's leases go with it; a file's go with the file."""
        self.leases.grant(1, key(1, client="x"), R, Holder())
        self.leases.grant(2, key(2, client="x"), R, Holder())
        self.leases.grant(2, key(3), R, Holder())
        self.leases.release_client("smb", "x1")
        self.leases.release_client("smb", "x2")
        self.assertEqual(len(self.leases), 1)
        self.leases.release_inode(2)
        self.assertEqual(len(self.leases), 0)

    def test_holder_failure_is_logged_and_revoked(self) -> None:
        """A holder that raises while sending a break is logged; the timeout revokes its lease."""

        @implementer(ILeaseHolder)
        class Broken(Holder):
            def lease_break(self, lease: Lease, to: int) -> bool:
                raise RuntimeError("connection gone")

        holder = Broken()
        self.leases.grant(INO, key(1), RWH, holder)
        d = self.leases.recall(INO, Why.WRITE)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.clock.advance(35)
        self.successResultOf(d)
        self.assertEqual(len(holder.revoked), 1)

    def test_machine_drawing(self) -> None:
        """docs/lease.dot is what the Lease machine is (regenerate with to_dot if this fails)."""
        with open(os.path.join(DOCS, "lease.dot")) as f:
            self.assertEqual(f.read(), to_dot(Lease, "lease"))


class StormTests(LeaseTestCase):
    """10,000 leases on one directory: a break storm ends in bounded time and memory."""

    N = 10_000

    def _grant_all(self, holder: Holder) -> None:
        for n in range(self.N):
            self.leases.grant(INO, key(n), R | H, holder, is_dir=True)

    def test_acknowledged(self) -> None:
        """Every lease is broken once and the change goes ahead when the last one answers."""
        holder = Holder()
        self._grant_all(holder)
        d = self.leases.recall(INO, Why.DIR_NAMESPACE)
        self.assertEqual(len(holder.breaks), self.N)
        for lease, to in holder.breaks[:-1]:
            self.leases.acknowledge(lease, to)
        self.assertNoResult(d)
        last, to = holder.breaks[-1]
        self.leases.acknowledge(last, to)
        self.successResultOf(d)
        self.assertEqual(len(self.leases), self.N)

    def _storm(self, holder: Holder) -> None:
        self._grant_all(holder)
        d = self.leases.recall(INO, Why.DIR_NAMESPACE)
        self.clock.advance(35)
        self.successResultOf(d)
        self.assertEqual(len(holder.revoked), self.N)
        holder.breaks.clear()
        holder.revoked.clear()

    def test_revoked(self) -> None:
        """Silent holders are all revoked at the recall time, in one log line; nothing stays behind."""
        holder = Holder()
        self._storm(holder)  # warm up: interned strings, Automat's tables, the log buffer
        tracemalloc.start()
        try:
            before, _ = tracemalloc.get_traced_memory()
            self._storm(holder)
            gc.collect()  # Automat's per-instance transitioners make leases cyclic garbage
            after, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.assertEqual(len(self.leases), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # Nothing per lease survives a storm.
        self.assertLess(after - before, 64 * 1024)
