"""Tests for L{claudefs_gateway.core.pool} on a Clock with fake connections."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.core.config import ConnectionPool
from claudefs_gateway.core.pool import Pool
from claudefs_gateway.errors import BackendUnavailable


def _pending_calls() -> tuple[list[defer.Deferred[int]], Any]:
    """A call for run() that leaves its Deferred pending, and the list of them."""
    inner: list[defer.Deferred[int]] = []

    def call(conn: FakeConnection) -> defer.Deferred[int]:
        d: defer.Deferred[int] = defer.Deferred()
        inner.append(d)
        return d

    return inner, call


class FakeConnection:
    def __init__(self, n: int) -> None:
        self.n = n
        self.connected = True
        self.closed = False
        self.pings: list[defer.Deferred[None]] = []
        self._lost: list[Any] = []

    def ping(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self.pings.append(d)
        return d

    def close(self) -> None:
        self.closed = True
        self.lose()

    def lose(self) -> None:
        if self.connected:
            self.connected = False
            for cb in self._lost:
                cb()

    def notify_lost(self, cb: Any) -> None:
        self._lost.append(cb)


def settings(**kw: int) -> ConnectionPool:
    base = dict(
        min_per_node=0,
        max_per_node=2,
        max_idle_ms=10000,
        connect_timeout_ms=1000,
        health_check_interval_ms=5000,
    )
    base.update(kw)
    return ConnectionPool(**base)


class PoolTests(SynchronousTestCase):
    def make(self, streams: int = 2, **kw: int) -> Pool:
        self.clock = Clock()
        self.attempts: list[defer.Deferred[FakeConnection]] = []
        self.conns: list[FakeConnection] = []

        def connect() -> defer.Deferred[FakeConnection]:
            d: defer.Deferred[FakeConnection] = defer.Deferred()
            self.attempts.append(d)
            return d

        self.pool = Pool("meta-1", connect, settings(**kw), self.clock, streams=streams)
        self.pool.start()
        self.addCleanup(self.pool.stop)
        return self.pool

    def finish_connect(self, i: int = -1) -> FakeConnection:
        conn = FakeConnection(len(self.conns))
        self.conns.append(conn)
        self.attempts[i].callback(conn)
        return conn

    def test_min_per_node_opened_at_start(self) -> None:
        self.make(min_per_node=2, max_per_node=4)
        self.assertEqual(len(self.attempts), 2)

    def test_lease_opens_then_reuses(self) -> None:
        """The first call opens a connection; later calls reuse the idle one."""
        pool = self.make()
        d = pool.acquire()
        self.assertNoResult(d)
        conn = self.finish_connect()
        lease = self.successResultOf(d)
        self.assertIs(lease.conn, conn)
        lease.release()
        lease2 = self.successResultOf(pool.acquire())
        self.assertIs(lease2.conn, conn)
        self.assertEqual(len(self.attempts), 1)

    def test_max_per_node_then_shared_then_queued_fifo(self) -> None:
        """At max_per_node connections calls share them up to `streams`, then queue in order."""
        pool = self.make(streams=2, max_per_node=2)
        a = pool.acquire()
        b = pool.acquire()
        self.assertEqual(len(self.attempts), 2)
        self.finish_connect(0)
        self.finish_connect(1)
        la, lb = self.successResultOf(a), self.successResultOf(b)
        self.assertIsNot(la.conn, lb.conn)
        lc = self.successResultOf(pool.acquire())  # shared: second stream
        ld = self.successResultOf(pool.acquire())
        self.assertEqual({lc.conn.n, ld.conn.n}, {0, 1})
        order: list[str] = []
        waiting = [pool.acquire() for _ in range(3)]
        for name, w in zip("xyz", waiting, strict=True):
            w.addCallback(lambda lease, name=name: (order.append(name), lease)[1])
        self.assertEqual(len(self.attempts), 2)  # never past max_per_node
        self.assertEqual(pool.waiting, 3)
        la.release()
        lb.release()
        self.assertEqual(order, ["x", "y"])
        lc.release()
        self.assertEqual(order, ["x", "y", "z"])
        for w in waiting:
            self.successResultOf(w).release()

    def test_cancelled_waiter_leaves_queue(self) -> None:
        """A caller that cancels while queued frees its place; the next caller gets the slot."""
        pool = self.make(streams=1, max_per_node=1)
        a = pool.acquire()
        self.finish_connect()
        la = self.successResultOf(a)
        w1, w2 = pool.acquire(), pool.acquire()
        w1.cancel()
        self.failureResultOf(w1, defer.CancelledError)
        self.assertEqual(pool.waiting, 1)
        la.release()
        self.successResultOf(w2).release()

    def test_cancelled_call_frees_slot(self) -> None:
        """Cancelling a call made with run() cancels it and returns its connection to the pool."""
        pool = self.make(streams=1, max_per_node=1)
        inner, call = _pending_calls()

        d = pool.run(call)
        self.finish_connect()
        self.assertEqual(len(inner), 1)
        queued = pool.run(call)
        self.assertEqual(len(inner), 1)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertTrue(inner[0].called)
        self.assertEqual(len(inner), 2)  # the queued call got the slot
        inner[1].callback(5)
        self.assertEqual(self.successResultOf(queued), 5)

    def test_free_slot_call_is_one_deferred(self) -> None:
        """
        With a connection free, run() gives the call's own Deferred (the
        release added to it), not one more fired from it; cancelling it
        still frees the slot, and a failure still releases it.
        """
        pool = self.make(streams=1, max_per_node=1)
        warm = pool.run(lambda conn: defer.succeed(conn.n))  # waits for the first connection
        self.finish_connect(0)
        self.assertEqual(self.successResultOf(warm), 0)
        inner, call = _pending_calls()

        d = pool.run(call)
        self.assertIs(d, inner[0])
        queued = pool.run(call)
        self.assertEqual(len(inner), 1)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(len(inner), 2)  # the slot went to the queued call
        inner[1].errback(BackendUnavailable("gone"))
        self.failureResultOf(queued, BackendUnavailable)
        again = pool.run(call)
        self.assertIs(again, inner[2])  # released after the failure: free again
        inner[2].callback(7)
        self.assertEqual(self.successResultOf(again), 7)

    def test_unreachable_node_fails_waiters_fast(self) -> None:
        pool = self.make()
        d = pool.acquire()
        self.attempts[0].errback(ConnectionRefusedError())
        self.failureResultOf(d, BackendUnavailable)
        self.assertEqual(pool.check().status, "unhealthy")

    def test_connect_timeout(self) -> None:
        """A connect that hangs is cancelled after connect_timeout_ms."""
        pool = self.make(connect_timeout_ms=1000)
        d = pool.acquire()
        self.clock.advance(0.999)
        self.assertNoResult(d)
        self.clock.advance(0.001)
        self.failureResultOf(d, BackendUnavailable)

    def test_idle_connections_close_above_minimum(self) -> None:
        pool = self.make(min_per_node=1, max_per_node=3, max_idle_ms=10000)
        self.finish_connect(0)
        leases = [pool.acquire() for _ in range(3)]
        self.finish_connect(1)
        self.finish_connect(2)
        for d in leases:
            self.successResultOf(d).release()
        self.assertEqual(pool.open_count, 3)
        self.clock.advance(5)  # health tick: probes
        for c in self.conns:
            for p in c.pings:
                p.callback(None)
        self.clock.advance(5)  # 10 s idle
        self.assertEqual(pool.open_count, 1)
        self.assertEqual(sum(c.closed for c in self.conns), 2)

    def test_failed_health_check_closes(self) -> None:
        """An idle connection whose heartbeat goes unanswered is closed and replaced to the minimum."""
        pool = self.make(min_per_node=1)
        conn = self.finish_connect(0)
        self.clock.advance(5)
        self.assertEqual(len(conn.pings), 1)
        self.clock.advance(1)  # connect_timeout_ms without an answer
        self.assertTrue(conn.closed)
        self.assertEqual(pool.open_count, 0)
        self.clock.advance(4)  # next tick refills the minimum
        self.assertEqual(len(self.attempts), 2)

    def test_lost_connection_leaves_pool(self) -> None:
        pool = self.make()
        d = pool.acquire()
        conn = self.finish_connect()
        self.successResultOf(d).release()
        self.assertFalse(pool.suspect)
        conn.lose()
        self.assertEqual(pool.open_count, 0)
        self.assertTrue(pool.suspect, "a connection the node dropped makes it suspect")
        d2 = pool.acquire()
        self.assertEqual(len(self.attempts), 2)
        self.finish_connect()
        self.assertFalse(pool.suspect, "until a connection is made again")
        self.successResultOf(d2).release()

    def test_stop_fails_waiters(self) -> None:
        pool = self.make()
        d = pool.acquire()
        pool.stop()
        self.failureResultOf(d, BackendUnavailable)
