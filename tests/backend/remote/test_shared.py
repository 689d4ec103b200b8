"""
Shared state across gateways (vfs/shared.py, servers/shared.py): two remote
backends on one meta server, each with its own local lock table and lease
manager wired through the meta server, as two gateway processes are.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from zope.interface import implementer

from claudefs_gateway import errors
from claudefs_gateway.fstypes import FileType
from claudefs_gateway.interfaces import ILeaseHolder
from claudefs_gateway.servers.shared import SharedState
from claudefs_gateway.vfs.leases import KEEP_FOR, RWH, H, Lease, LeaseKey, LeaseManager, R, Why
from claudefs_gateway.vfs.locks import LockOwner, LockTable
from claudefs_gateway.vfs.shared import (
    SharedLeaseManager,
    SharedLockTable,
    modes_from_bits,
    modes_to_bits,
    owner_from_wire,
    owner_to_wire,
    wire_up,
)
from tests.backend.remote.harness import Cluster

SETTINGS = """
connection_pool: {min_per_node: 1, max_per_node: 4, connect_timeout_ms: 2000}
circuit_breaker: {failure_threshold: 3, open_duration_ms: 500, timeout_ms: 5000}
"""


def pause(seconds: float = 0.01) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


async def until(cond: Any, what: str, within: float = 30.0) -> None:
    """
    Wait for C{cond}, up to C{within} seconds of the wall clock (a count of
    polls was too short on a loaded machine: over PostgreSQL an event
    crosses two meta servers and the database's notifications).
    """
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        await pause()


@implementer(ILeaseHolder)
class Holder:
    def __init__(self) -> None:
        self.breaks: list[tuple[Lease, int]] = []

    def lease_break(self, lease: Lease, to: int) -> bool:
        self.breaks.append((lease, to))
        return True

    def lease_revoked(self, lease: Lease) -> None:
        pass


class Gateway:
    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.locks: SharedLockTable
        self.leases: SharedLeaseManager
        self.locks, self.leases = wire_up(
            backend, LockTable(reactor), LeaseManager(reactor, 5.0), reactor
        )

    def stop(self) -> None:
        timer = self.leases.local._timer
        if timer is not None and timer.active():
            timer.cancel()


class CodecTests(TestCase):
    def test_owner_round_trip(self) -> None:
        for o in (LockOwner("nlm", "host-a", b"\x01"), LockOwner("smb", b"\x00\x01", b"fid")):
            self.assertEqual(owner_from_wire(owner_to_wire(o)), o)

    def test_modes(self) -> None:
        for m in (set(), {"read"}, {"read", "write", "delete"}):
            self.assertEqual(modes_from_bits(modes_to_bits(m)), frozenset(m))


class SharedStateTests(TestCase):
    timeout = 60

    async def gateways(self) -> tuple[Cluster, Gateway, Gateway]:
        cluster = Cluster(self)
        await cluster.start()
        out = []
        for _ in range(2):
            b = cluster.backend(SETTINGS)
            gw = Gateway(b)
            self.addCleanup(gw.stop)
            await b.open()
            self.addCleanup(b.close)
            await until(lambda b=b: b._events is not None, "subscribed")
            out.append(gw)
        return cluster, out[0], out[1]

    async def test_lock_through_a_refuses_b(self) -> None:
        """A lock through A: B's conflicting lock fails, B's I/O check fails, and B waits for it."""
        _, a, b = await self.gateways()
        nlm = LockOwner("nlm", "host-a", b"1")
        smb = LockOwner("smb", b"sess", b"fid")
        await a.locks.lock(7, nlm, 0, 10, True)
        with self.assertRaises(errors.LockConflict):
            await b.locks.lock(7, smb, 5, 1, True)
        await until(lambda: b.locks.busy(7), "B hears of A's lock")
        self.assertFalse(b.locks.check_io(7, smb, 2, 1, True, True))
        self.assertTrue(b.locks.check_io(7, smb, 20, 1, True, True))
        self.assertIsNotNone(b.locks.test(7, smb, 0, 1, True))
        waiting = b.locks.lock(7, smb, 5, 1, True, wait=True)
        await pause(0.05)
        self.assertFalse(waiting.called)
        a.locks.unlock(7, nlm, 0, 10)
        got = await waiting
        self.assertEqual((got.start, got.length), (5, 1))
        await until(lambda: a.locks.busy(7) and not a.locks.check_io(7, nlm, 5, 1, True), "A hears")

    async def test_share_reservation_crosses(self) -> None:
        """An open through A that denies writing refuses a writing open through B."""
        _, a, b = await self.gateways()
        t = a.locks.open_share(9, LockOwner("smb", b"s", b"1"), {"read", "write"}, {"write"})
        await until(lambda: b.locks.shares(9), "B hears of A's open")
        with self.assertRaises(errors.ShareConflict):
            b.locks.open_share(9, LockOwner("nfs4", "c", b"o"), {"write"}, set())
        b.locks.open_share(9, LockOwner("nfs4", "c", b"r"), {"read"}, set())
        a.locks.close_share(t)
        await until(lambda: len(b.locks.shares(9)) == 1, "B hears of the close")
        b.locks.open_share(9, LockOwner("nfs4", "c", b"o"), {"write"}, set())

    async def test_lease_break_crosses(self) -> None:
        """B's write recalls A's lease: A's holder is told, and B waits for its acknowledgement."""
        _, a, b = await self.gateways()
        holder = Holder()
        lease = a.leases.grant(11, LeaseKey("smb", b"c", b"k"), RWH, holder)
        assert lease is not None
        self.assertEqual(lease.state, RWH)
        await until(lambda: b.leases.busy(11), "B hears of A's lease")
        # B may not take W while A holds a lease.
        self.assertEqual(b.leases.grantable(11, LeaseKey("smb", b"d", b"k"), RWH) & 2, 0)
        recall = b.leases.recall(11, Why.WRITE)
        await until(lambda: holder.breaks, "A's holder is told")
        self.assertEqual(holder.breaks[0][1], H)
        await pause(0.05)
        self.assertFalse(recall.called, "B's change waits for A's holder")
        a.leases.acknowledge(lease, H)
        await recall
        # wait=False: nothing left to break at A now (H may stay).
        await b.leases.recall(11, Why.WRITE, wait=False)
        # B can hear of A's acknowledgement before A has its answer (the
        # meta server's event to B may leave first): wait for it, or A's
        # connection closes with LEASE_BREAK_ACK in flight and the call is
        # retried after the test.
        await a.leases.link.settled()

    async def test_recall_without_wait_answers_delay(self) -> None:
        """wait=False (NFS4ERR_DELAY, S3 503): LeaseBreaking while A's holder has not answered."""
        _, a, b = await self.gateways()
        holder = Holder()
        lease = a.leases.grant(12, LeaseKey("nfs4", "c", b"d"), RWH, holder)
        assert lease is not None
        await until(lambda: b.leases.busy(12), "B hears of A's lease")
        with self.assertRaises(errors.LeaseBreaking):
            await b.leases.recall(12, Why.WRITE, wait=False)
        await until(lambda: holder.breaks, "A's holder is told")
        a.leases.acknowledge(lease, 0)
        await until(lambda: not b.leases.busy(12), "B hears A let go")
        await b.leases.recall(12, Why.WRITE, wait=False)
        # B can hear A let go (EV_LEASES) before the answer to its first
        # LEASE_RECALL arrives: wait for it, or B's connection closes with
        # the call in flight (InFlightLost logged after the test).
        await b.leases.link.settled()

    async def test_gone_gateway_releases(self) -> None:
        """A gateway that goes away (its subscription lost) loses its locks after the linger time."""
        cluster, a, b = await self.gateways()
        assert cluster.meta is not None and cluster.meta.factory is not None
        cluster.meta.factory.handler.shared.linger = 0.1
        await a.locks.lock(3, LockOwner("nlm", "h", b"1"), 0, 0, True)
        await until(lambda: b.locks.busy(3), "B hears of A's lock")
        await a.backend.close()
        await until(lambda: not b.locks.busy(3), "A's lock released")
        await b.locks.lock(3, LockOwner("nlm", "h2", b"1"), 0, 0, True)

    async def test_late_gateway_learns_state(self) -> None:
        """A gateway that subscribes after a lock was taken hears of it at once."""
        cluster, a, _ = await self.gateways()
        await a.locks.lock(4, LockOwner("nlm", "h", b"1"), 0, 0, True)
        late = cluster.backend(SETTINGS)
        c = Gateway(late)
        self.addCleanup(c.stop)
        await late.open()
        self.addCleanup(late.close)
        await until(lambda: c.locks.busy(4), "the late gateway hears of the lock")
        self.assertFalse(c.locks.check_io(4, LockOwner("smb", b"x", b"y"), 0, 1, False))


class RaceTests(TestCase):
    """
    Two gateways deciding at the same instant, before either hears of the
    other (no EV_LOCKS / EV_LEASES between them): the meta server decides,
    and the loser learns it before its client would be answered.
    """

    timeout = 60

    gateways = SharedStateTests.gateways

    async def test_two_opens_at_once_one_wins(self) -> None:
        """Two deny-write opens through A and B in one instant: both pass locally, one settles."""
        _, a, b = await self.gateways()
        ta = a.locks.open_share(21, LockOwner("smb", b"s", b"1"), {"read", "write"}, {"write"})
        tb = b.locks.open_share(21, LockOwner("nfs4", "c", b"o"), {"read", "write"}, {"write"})
        results = await defer.DeferredList(
            [a.locks.settle_share(ta), b.locks.settle_share(tb)], consumeErrors=True
        )
        wins = [ok for ok, _ in results]
        self.assertEqual(sorted(wins), [False, True], "exactly one open is registered")
        loser = results[wins.index(False)][1]
        self.assertTrue(loser.check(errors.ShareConflict), loser)
        # The loser's front end closes its open; the winner's stands at both.
        lost, won = (tb, b) if wins[0] else (ta, a)
        (b if lost is tb else a).locks.close_share(lost)
        other = b if won is a else a
        await until(lambda: other.locks.shares(21), "the loser hears of the winner's open")
        with self.assertRaises(errors.ShareConflict):
            other.locks.open_share(21, LockOwner("smb", b"x", b"2"), {"write"}, set())

    async def test_upgrade_at_once_one_wins(self) -> None:
        """An upgrade to deny-write through A racing a write open through B: one settles."""
        _, a, b = await self.gateways()
        ta = a.locks.open_share(22, LockOwner("nfs4", "c", b"o"), {"read"}, set())
        await a.locks.settle_share(ta)
        await until(lambda: b.locks.shares(22), "B hears of A's open")
        a.locks.upgrade_share(ta, {"read"}, {"write"})
        tb = b.locks.open_share(22, LockOwner("smb", b"s", b"1"), {"write"}, set())
        results = await defer.DeferredList(
            [a.locks.settle_share(ta), b.locks.settle_share(tb)], consumeErrors=True
        )
        self.assertEqual(sorted(ok for ok, _ in results), [False, True])

    async def test_settled_open_is_settled_again(self) -> None:
        """A refusal stays with its token (asked after the answer came) until it is closed."""
        _, a, b = await self.gateways()
        ta = a.locks.open_share(23, LockOwner("smb", b"s", b"1"), {"write"}, {"write"})
        tb = b.locks.open_share(23, LockOwner("smb", b"t", b"1"), {"write"}, {"write"})
        await until(lambda: a.locks.shares(23) and b.locks.shares(23), "both answered")
        await pause(0.05)
        got = await defer.DeferredList(
            [a.locks.settle_share(ta), b.locks.settle_share(tb)], consumeErrors=True
        )
        self.assertEqual(sorted(ok for ok, _ in got), [False, True])

    async def test_two_lease_grants_at_once_one_writer(self) -> None:
        """RWH granted through A and B in one instant: the meta server lets one keep W."""
        _, a, b = await self.gateways()
        la = a.leases.grant(31, LeaseKey("smb", b"c1", b"k"), RWH, Holder())
        lb = b.leases.grant(31, LeaseKey("smb", b"c2", b"k"), RWH, Holder())
        assert la is not None and lb is not None
        self.assertEqual((la.state, lb.state), (RWH, RWH), "neither knew of the other")
        await defer.gatherResults([a.leases.settle_lease(la), b.leases.settle_lease(lb)])
        states = sorted([0 if la.gone else la.state, 0 if lb.gone else lb.state])
        # The first keeps RWH; the second may not hold anything beside a writer.
        self.assertEqual(states, [0, RWH])
        loser = la if la.gone else lb
        self.assertTrue(loser.gone)
        winner_gw, loser_gw = (b, a) if la.gone else (a, b)
        await until(lambda: loser_gw.leases.busy(31), "the loser hears of the winner's lease")
        self.assertFalse(winner_gw.leases.foreign.get(31))

    async def test_read_leases_at_once_both_kept(self) -> None:
        """R|H through A and B at once: no conflict, both kept."""
        _, a, b = await self.gateways()
        la = a.leases.grant(32, LeaseKey("smb", b"c1", b"k"), R | H, Holder())
        lb = b.leases.grant(32, LeaseKey("smb", b"c2", b"k"), R | H, Holder())
        assert la is not None and lb is not None
        await defer.gatherResults([a.leases.settle_lease(la), b.leases.settle_lease(lb)])
        self.assertEqual((la.state, lb.state), (R | H, R | H))


class MetaReleaseInodeTests(TestCase):
    """RELEASE_INODE on the meta server (servers/shared.py)."""

    async def test_pushes_only_state_it_had(self) -> None:
        """A removed file that had no lock or share pushes no EV_LOCKS; one that had, an empty one."""
        published: list[tuple[str, Any]] = []
        st = SharedState(
            task.Clock(), lambda s, n, v: True, lambda n, v, *_: published.append((n, v))
        )
        st.release_inode(9)
        self.assertEqual(published, [])
        await st.lock(1, 9, ("nlm", b"b:c", b"o"), 0, 10, True, False)
        self.assertTrue(published)
        published.clear()
        st.release_inode(9)
        self.assertEqual(published, [("EV_LOCKS", (9, [], []))])

    async def test_removal_origin_not_told_of_its_own_state(self) -> None:
        """
        The removing gateway (session 1) is not sent the EV_LOCKS of state that
        was its own alone (its replica holds only the others' part); once
        another gateway held state on the inode too, every gateway is.
        """
        published: list[tuple[str, Any, int]] = []
        st = SharedState(
            task.Clock(),
            lambda s, n, v: True,
            lambda n, v, origin=0, *_: published.append((n, v, origin)),
        )
        st.share_open(1, 9, ("smb", b"c", b"1"), 1, 1, 0, False)
        published.clear()
        st.release_inode(9, 1)
        self.assertEqual(published, [("EV_LOCKS", (9, [], []), 1)])
        st.share_open(1, 9, ("smb", b"c", b"2"), 2, 1, 0, False)
        await st.lock(2, 9, ("nlm", b"b:c", b"o"), 0, 10, False, False)
        published.clear()
        st.release_inode(9, 1)
        self.assertEqual(published, [("EV_LOCKS", (9, [], []), 0)])


class MetaLeaseGrantTests(TestCase):
    """The meta server's LEASE_GRANT rule (servers/shared.py), on a Clock."""

    def state(self) -> SharedState:
        return SharedState(task.Clock(), lambda s, n, v: True, lambda n, v, *_: None)

    def test_one_writer(self) -> None:
        st = self.state()
        self.assertEqual(st.lease_grant(1, 5, RWH), RWH)
        self.assertEqual(st.lease_grant(2, 5, RWH), 0)
        self.assertEqual(st.lease_grant(1, 5, RWH), RWH, "its own holding is no conflict")
        self.assertEqual(st.leases[5], {1: RWH})

    def test_readers_share_no_writer(self) -> None:
        st = self.state()
        self.assertEqual(st.lease_grant(1, 6, R | H), R | H)
        self.assertEqual(st.lease_grant(2, 6, RWH), R | H)
        self.assertEqual(st.leases[6], {1: R | H, 2: R | H})

    def test_grant_during_recall_keeps_what_it_lets(self) -> None:
        """While B's recall of the file is out, a grant keeps only what the recall lets others keep."""
        st = self.state()
        st.lease_hold(1, 7, R | H)
        recall = st.lease_recall(2, 7, Why.WRITE.value)
        self.assertFalse(recall.called)
        self.assertEqual(st.lease_grant(3, 7, R | H), KEEP_FOR[Why.WRITE] & (R | H))
        self.assertEqual(st.lease_grant(2, 7, R | H), R | H, "the recaller itself is not held back")
        st.lease_break_ack(1, 1)
        self.assertTrue(recall.called)
        self.assertEqual(st.lease_grant(4, 7, R | H), R | H, "the recall is over")


class CrossGatewayDeadlockTests(TestCase):
    timeout = 60

    gateways = SharedStateTests.gateways

    async def test_cycle_through_two_gateways_refused(self) -> None:
        """
        An NLM owner through A holds file 41 and waits for file 42, held by an
        SMB owner through B, whose own blocking request for 41 would wait
        forever: it is refused with Deadlock; A's waiter is granted once B's
        owner lets 42 go.
        """
        cluster, a, b = await self.gateways()
        nlm = LockOwner("nlm", "host-a", b"1")
        smb = LockOwner("smb", b"sess", b"fid")
        await a.locks.lock(41, nlm, 0, 10, True)
        await b.locks.lock(42, smb, 0, 10, True)
        waiting = a.locks.lock(42, nlm, 0, 10, True, wait=True)
        await self.waiters(cluster, 1, "A's wait registered at the meta server")
        self.assertFalse(waiting.called)
        with self.assertRaises(errors.Deadlock):
            await b.locks.lock(41, smb, 5, 1, True, wait=True)
        b.locks.unlock(42, smb, 0, 10)
        got = await waiting
        self.assertEqual((got.start, got.length), (0, 10))
        await self.waiters(cluster, 0, "A's wait over at the meta server")

    async def test_on_wait_only_once_recorded(self) -> None:
        """
        C{on_wait} (what lets NLM answer BLOCKED) is called once the meta
        server has recorded the wait, and never for a wait refused as a
        deadlock: NLM answers that one NLM4_DEADLCK.
        """
        cluster, a, b = await self.gateways()
        nlm_a = LockOwner("nlm", "host-a", b"1")
        nlm_b = LockOwner("nlm", "host-b", b"2")
        await a.locks.lock(51, nlm_a, 0, 10, True)
        await b.locks.lock(52, nlm_b, 0, 10, True)
        told: list[str] = []
        waiting = a.locks.lock(52, nlm_a, 0, 10, True, wait=True, on_wait=lambda: told.append("a"))
        await until(lambda: told == ["a"], "A's wait recorded")
        await self.waiters(cluster, 1, "the wait is at the meta server")
        with self.assertRaises(errors.Deadlock):
            await b.locks.lock(51, nlm_b, 0, 10, True, wait=True, on_wait=lambda: told.append("b"))
        self.assertEqual(told, ["a"])
        b.locks.unlock(52, nlm_b, 0, 10)
        await waiting
        self.assertEqual(told, ["a"])

    async def waiters(self, cluster: Any, n: int, what: str) -> None:
        """Until C{n} lock requests wait at the meta server."""
        assert cluster.meta is not None and cluster.meta.factory is not None
        waits = cluster.meta.factory.handler.shared.waits.waits
        await until(lambda: len(waits) == n, what)


class ProtocolFiveTests(TestCase):
    """
    Protocol version 5 (docs/rpc.rst): no EV_LOCKS or EV_LEASES of a
    gateway's own calls come back to it, CREATE_OPEN registers the opener's
    share with the create, and a removal drops the inode's state at the meta
    server with no RELEASE_INODE.
    """

    timeout = 60

    async def gateways(self) -> tuple[Cluster, Gateway, Gateway, list[str], list[str]]:
        cluster = Cluster(self)
        await cluster.start()
        out = []
        heard: list[list[str]] = [[], []]
        for i in range(2):
            b = cluster.backend(SETTINGS)
            gw = Gateway(b)
            self.addCleanup(gw.stop)
            await b.open()
            self.addCleanup(b.close)
            await until(lambda b=b: b._events is not None, "subscribed")
            b.on_shared_event(lambda name, value, i=i: heard[i].append(name))
            out.append(gw)
        return cluster, out[0], out[1], heard[0], heard[1]

    async def test_own_changes_not_echoed(self) -> None:
        """A's lock, unlock, share and lease reach B as events, and A hears none of them."""
        _, a, b, heard_a, heard_b = await self.gateways()
        nlm = LockOwner("nlm", "host-a", b"1")
        await a.locks.lock(7, nlm, 0, 10, True)
        await until(lambda: b.locks.busy(7), "B hears of A's lock")
        a.locks.unlock(7, nlm, 0, 10)
        token = a.locks.open_share(8, nlm, {"read"}, {"write"})
        await a.locks.settle_share(token)
        await until(lambda: heard_b.count("EV_LOCKS") >= 3, "B hears every change")
        self.assertFalse(b.locks.busy(7))
        self.assertEqual(heard_a, [])

    async def test_blocking_locks_within_one_gateway(self) -> None:
        """
        Two owners of one gateway racing for one range: the loser waits and
        gets it when the winner unlocks, with no event of the gateway's own
        to wake it.
        """
        _, a, _, _, _ = await self.gateways()
        one, two = LockOwner("nlm", "h", b"1"), LockOwner("nlm", "h", b"2")
        first = a.locks.lock(9, one, 0, 10, True, wait=True)
        second = a.locks.lock(9, two, 0, 10, True, wait=True)
        await first
        await pause(0.05)
        self.assertFalse(second.called)
        a.locks.unlock(9, one, 0, 10)
        got = await second
        self.assertEqual(got.owner, two)

    async def test_create_open_registers_the_share(self) -> None:
        """The share of a CREATE_OPEN holds at the meta server at once; open_share sends nothing."""
        _, a, b, _, _ = await self.gateways()
        root = await a.backend.root()
        owner = LockOwner("smb", b"conn", b"fid")
        intent = a.locks.share_intent(owner, {"read", "write"}, {"write", "delete"})
        calls: list[str] = []
        real = a.backend.shared_call

        def counting(name: str, args: Any = None) -> Any:
            calls.append(name)
            return real(name, args)

        a.backend.shared_call = counting
        f = await a.backend.create(root.ino, b"new", FileType.REG, 0o644, 0, 0, share=intent)
        self.assertEqual(intent.ino, f.ino)
        token = a.locks.open_share(f.ino, owner, {"read", "write"}, {"write", "delete"})
        await a.locks.settle_share(token)
        self.assertEqual(calls, [])
        # B's writer is refused: by B's replica once it heard, by the meta server before.
        other = LockOwner("smb", b"conn-b", b"fid")
        with self.assertRaises(errors.ShareConflict):
            b_token = b.locks.open_share(f.ino, other, {"write"}, set())
            await b.locks.settle_share(b_token)
        # An intent nobody used takes its registration back.
        spare = a.locks.share_intent(LockOwner("smb", b"conn", b"fid2"), {"read"}, {"read"})
        g = await a.backend.create(root.ino, b"spare", FileType.REG, 0o644, 0, 0, share=spare)
        await until(lambda: len(b.locks.view.shares(g.ino)) == 1, "B hears of the spare")
        a.locks.drop_intent(spare)
        await until(lambda: not b.locks.view.shares(g.ino), "B hears it went")

    async def test_unlink_releases_at_the_meta_server(self) -> None:
        """The UNLINK of a file's last link drops its locks and shares there: no RELEASE_INODE."""
        cluster, a, b, _, _ = await self.gateways()
        root = await a.backend.root()
        f = await a.backend.create(root.ino, b"doomed", FileType.REG, 0o644, 0, 0)
        nlm = LockOwner("nlm", "host-a", b"1")
        await a.locks.lock(f.ino, nlm, 0, 10, True)
        await until(lambda: b.locks.busy(f.ino), "B hears of the lock")
        gone = await a.backend.unlink(root.ino, b"doomed")
        self.assertEqual(gone.nlink, 0)
        assert cluster.meta is not None
        await until(lambda: not b.locks.busy(f.ino), "B hears the inode's state went")


class _QuietLink:
    """A link whose every call succeeds at once; what is sent is kept."""

    session = 1

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def send(self, name: str, args: Any) -> None:
        self.sent.append((name, args))

    def call(self, name: str, args: Any) -> defer.Deferred[Any]:
        return defer.succeed(None)


class ReleaseCostTests(TestCase):
    """
    A release (SMB CLOSE, NFSv4 RELEASE_LOCKOWNER, a lost client, a removed
    file) forgets what this gateway kept of the share reservations it closed
    by looking at those alone: it used to scan every open share, so many
    opens each closed so were quadratic.
    """

    N = 300

    def table(self) -> tuple[SharedLockTable, list[Any]]:
        from claudefs_gateway.vfs.locks import ShareToken

        clock = task.Clock()
        t = SharedLockTable(LockTable(clock), _QuietLink(), clock)  # type: ignore[arg-type]
        examined: list[Any] = []
        closed = ShareToken.closed

        def counting(token: Any) -> bool:
            examined.append(token)
            return bool(closed.fget(token))  # type: ignore[attr-defined]

        self.patch(ShareToken, "closed", property(counting))
        return t, examined

    def open_many(self, t: SharedLockTable) -> list[Any]:
        return [
            t.open_share(100 + i, LockOwner("smb", f"session-{i}", b"fid"), {"read"}, set())
            for i in range(self.N)
        ]

    def test_release_owner_examines_its_own_shares(self) -> None:
        t, examined = self.table()
        tokens = self.open_many(t)
        del examined[:]
        for i in range(self.N):
            t.release_owner(tokens[i].owner)
        self.assertTrue(all(tok.closed for tok in tokens))
        del examined[-self.N :]  # the line above
        self.assertLessEqual(len(examined), self.N)  # one each; it was N * (N + 1) / 2
        self.assertEqual((t._sids, t._settling, t._tracked, t._owners), ({}, {}, {}, {}))

    def test_release_client_and_inode_examine_their_own_shares(self) -> None:
        t, examined = self.table()
        tokens = self.open_many(t)
        del examined[:]
        for i in range(0, self.N, 2):
            t.release_client("smb", f"session-{i}")
            t.release_inode(101 + i)
        self.assertLessEqual(len(examined), self.N)  # one each; it was N * (N + 1) / 2
        self.assertEqual((t._sids, t._settling, t._tracked, t._owners), ({}, {}, {}, {}))
        sent = [name for name, _ in t.link.sent]  # type: ignore[attr-defined]
        self.assertEqual(sent.count("RELEASE_CLIENT"), self.N // 2)
        self.assertEqual(len(tokens), self.N)

    def test_close_share_forgets_it(self) -> None:
        t, _ = self.table()
        tokens = self.open_many(t)
        for tok in tokens:
            t.close_share(tok)
        self.assertEqual((t._sids, t._settling, t._tracked, t._owners), ({}, {}, {}, {}))
        closes = [args for name, args in t.link.sent if name == "SHARE_CLOSE"]  # type: ignore[attr-defined]
        self.assertEqual(len(closes), self.N)


class ReleaseToldTests(TestCase):
    """
    A release is sent to the meta server only for an owner some call named
    there (LOCK, LOCK_WAIT, SHARE_OPEN, CREATE_OPEN): an SMB open for
    attributes only reserves nothing, so its CLOSE costs no round trip
    (docs/workers.rst "What an SMB create costs"); what is noted of an owner
    goes with its release, its client's, its inode's, or its last unlock.
    """

    def setUp(self) -> None:
        clock = task.Clock()
        self.link = _QuietLink()
        self.t = SharedLockTable(LockTable(clock), self.link, clock)  # type: ignore[arg-type]
        self.owner = LockOwner("smb", b"conn", b"fid")

    def releases(self) -> int:
        return sum(name == "RELEASE_OWNER" for name, _ in self.link.sent)

    def assert_forgotten(self) -> None:
        self.assertEqual((self.t._told, self.t._told_on, self.t._told_by), ({}, {}, {}))

    def test_nothing_named_nothing_sent(self) -> None:
        self.t.release_owner(self.owner)
        self.assertEqual(self.releases(), 0)
        self.assert_forgotten()

    def test_share_released(self) -> None:
        self.t.open_share(7, self.owner, {"read"}, set())
        self.t.release_owner(self.owner)
        self.assertEqual(self.releases(), 1)
        self.assert_forgotten()

    def test_lock_released(self) -> None:
        self.successResultOf(self.t.lock(7, self.owner, 0, 10, True))
        self.t.release_owner(self.owner)
        self.assertEqual(self.releases(), 1)
        self.assert_forgotten()

    def test_unlocked_not_released(self) -> None:
        """After the UNLOCK of all it held (sent in order), the meta server holds none of it."""
        self.successResultOf(self.t.lock(7, self.owner, 0, 10, True))
        self.successResultOf(self.t.lock(7, self.owner, 20, 10, True))
        self.t.unlock(7, self.owner, 0, 10)
        self.assertEqual(self.t._told, {self.owner: {7}})  # still holds 20-30
        self.t.unlock(7, self.owner, 20, 10)
        self.assert_forgotten()
        self.t.release_owner(self.owner)
        self.assertEqual(self.releases(), 0)

    def test_removed_file(self) -> None:
        """A delete-on-close's close: untold, then its inode's removal forgets it."""
        self.t.open_share(7, self.owner, {"delete"}, set())
        self.t.release_owner(self.owner, tell=False)
        self.assertEqual(self.t._told, {self.owner: {7}})
        self.t.release_inode(7)
        self.assert_forgotten()
        self.assertEqual(self.releases(), 0)

    def test_removal_failed(self) -> None:
        """The file stayed: the release told after all still goes."""
        self.t.open_share(7, self.owner, {"delete"}, set())
        self.t.release_owner(self.owner, tell=False)
        self.t.release_owner(self.owner)
        self.assertEqual(self.releases(), 1)
        self.assert_forgotten()

    def test_client_released(self) -> None:
        other = LockOwner("smb", b"conn", b"fid2")
        self.t.open_share(7, self.owner, {"read"}, set())
        self.successResultOf(self.t.lock(8, other, 0, 1, False))
        self.t.release_client("smb", b"conn")
        self.assert_forgotten()
