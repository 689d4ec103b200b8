"""
The shared state of gateways on I{different} meta servers over one PostgreSQL
(servers/shared_pg.py): every test of C{test_shared.py} with gateway A on one
meta server and B on another, plus what only several servers have: races
decided in the database, a dead server's rows reaped, a gateway failing over
keeps what it holds.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer

from claudefs_gateway import errors
from claudefs_gateway.vfs.leases import RWH, H, LeaseKey, R, Why
from claudefs_gateway.vfs.locks import LockOwner
from tests.backend import postgres
from tests.backend.remote import test_shared as base
from tests.backend.remote.harness import Cluster
from tests.backend.remote.test_shared import SETTINGS, Gateway, pause, until


class TwoServersSharedStateTests(base.SharedStateTests):
    """test_shared.py's tests, A's gateway on meta server 1 and B's on meta server 2."""

    async def gateways(self) -> tuple[Cluster, Gateway, Gateway]:
        cluster = Cluster(self, meta_store=postgres.meta_store_config(postgres.new_schema(self)))
        await cluster.start()
        m1 = cluster.meta
        m2 = await cluster.start_meta(name="meta2")
        self.servers = (m1, m2)
        out = []
        for m in (m1, m2):
            b = cluster.backend(SETTINGS, metas=[m])
            gw = Gateway(b)
            self.addCleanup(gw.stop)
            await b.open()
            self.addCleanup(b.close)
            await until(lambda b=b: b._events is not None, "subscribed")
            out.append(gw)
        # Tests that reach for cluster.meta (linger, a late gateway) mean A's server.
        cluster.meta = m1

        async def settle() -> None:
            # Calls a test's last step sent (acknowledgements, holdings) answered before
            # the backends close: a meta server on PostgreSQL answers a little later.
            # (A link's _tail is always "called": its settled() is what waits.)
            await defer.gatherResults(
                [link.settled() for g in out for link in {g.locks.link, g.leases.link}]
            )

        self.addCleanup(lambda: defer.Deferred.fromCoroutine(settle()))
        return cluster, out[0], out[1]

    def shared(self, i: int) -> Any:
        return self.servers[i].factory.handler.shared

    async def test_race_decided_once(self) -> None:
        """Conflicting locks sent at once through both servers: exactly one wins per file."""
        _, a, b = await self.gateways()
        inos = list(range(100, 120))
        tries = []
        for ino in inos:
            tries.append(a.locks.lock(ino, LockOwner("nlm", "ha", b"1"), 0, 0, True))
            tries.append(b.locks.lock(ino, LockOwner("smb", b"sb", b"f"), 0, 0, True))
        got = await defer.DeferredList(tries, consumeErrors=True)
        for i in range(len(inos)):
            wins = [ok for ok, _ in got[2 * i : 2 * i + 2]]
            self.assertEqual(sorted(wins), [False, True], f"inode {inos[i]}")
            for ok, value in got[2 * i : 2 * i + 2]:
                if not ok:
                    value.trap(errors.LockConflict)

    async def test_share_reservation_atomic(self) -> None:
        """Opens denying each other, sent at once through both servers: one is refused."""
        _, a, b = await self.gateways()
        sa = a.backend.shared_call("SHARE_OPEN", (50, ("smb", b"b:x", b"1"), 1, 3, 3, False))
        sb = b.backend.shared_call("SHARE_OPEN", (50, ("smb", b"b:y", b"1"), 1, 3, 3, False))
        got = await defer.DeferredList([sa, sb], consumeErrors=True)
        self.assertEqual(sorted(ok for ok, _ in got), [False, True])

    async def test_dead_server_reaped(self) -> None:
        """A meta server that stops renewing its row loses its gateways' locks and leases."""
        _, a, b = await self.gateways()
        await a.locks.lock(21, LockOwner("nlm", "h", b"1"), 0, 0, True)
        await until(lambda: b.locks.busy(21), "B hears of A's lock")
        s2 = self.shared(1)
        s2.dead_after = 0.5
        s2.heartbeat = 0.1
        # Server 1 goes (its gateway cannot fail over: it knows no other).
        await self.servers[0].stopService()
        await until(lambda: not b.locks.busy(21), "server 1's locks reaped")
        await b.locks.lock(21, LockOwner("nlm", "h2", b"1"), 0, 0, True)

    async def test_failover_keeps_locks(self) -> None:
        """A gateway on [1, 2] whose server 1 goes holds its lock through server 2."""
        cluster, _, b = await self.gateways()
        m1, m2 = self.servers
        c = Gateway(cluster.backend(SETTINGS, metas=[m1, m2]))
        self.addCleanup(c.stop)
        await c.backend.open()
        self.addCleanup(c.backend.close)
        await until(lambda: c.backend._events is not None, "subscribed")
        owner = LockOwner("nlm", "hc", b"1")
        await c.locks.lock(31, owner, 0, 0, True)
        await until(lambda: b.locks.busy(31), "B hears of C's lock")
        s2 = self.shared(1)
        s2.dead_after = 0.5
        s2.heartbeat = 0.1
        gone = self.shared(0).boot
        await m1.stopService()
        # C fails over to server 2 and tells it all it holds again; server 1's rows are reaped.
        await until(lambda: gone in s2.reaped, "server 1 reaped")
        await pause(0.2)
        with self.assertRaises(errors.LockConflict):
            await b.locks.lock(31, LockOwner("nlm", "hb", b"1"), 0, 0, True)
        self.assertTrue(c.locks.check_io(31, owner, 0, 1, True))

    async def test_recall_of_two_sessions_on_another_server(self) -> None:
        """B's recall reaches two gateways of server 1; both acknowledgements come back."""
        cluster, a, b = await self.gateways()
        c = Gateway(cluster.backend(base.SETTINGS, metas=[self.servers[0]]))
        self.addCleanup(c.stop)
        await c.backend.open()
        self.addCleanup(c.backend.close)
        await until(lambda: c.backend._events is not None, "subscribed")
        ha, hc = base.Holder(), base.Holder()
        la = a.leases.grant(41, LeaseKey("smb", b"a", b"k"), R | H, ha)
        await until(lambda: c.leases.busy(41), "C hears of A's lease")
        lc = c.leases.grant(41, LeaseKey("smb", b"c", b"k"), R | H, hc)
        assert la is not None and lc is not None
        await until(lambda: b.leases.busy(41) and len(b.leases.foreign) == 1, "B hears")
        # A byte-range lock lets others keep nothing: both breaks want an acknowledgement.
        recall = b.leases.recall(41, Why.LOCK)
        await until(lambda: ha.breaks and hc.breaks, "both holders told")
        self.assertFalse(recall.called)
        for gw, lease, holder in ((a, la, ha), (c, lc, hc)):
            if lease.breaking_to is not None:  # else the break needed no answer
                gw.leases.acknowledge(lease, holder.breaks[-1][1])
        await until(lambda: recall.called, "the recall answered by both acknowledgements")

    async def gateway_on(self, cluster: Cluster, *servers: Any) -> Gateway:
        c = Gateway(cluster.backend(SETTINGS, metas=list(servers)))
        self.addCleanup(c.stop)
        await c.backend.open()
        self.addCleanup(c.backend.close)
        await until(lambda: c.backend._events is not None, "subscribed")
        return c

    async def test_gone_gateway_state_through_the_other_server_released(self) -> None:
        """
        A gateway subscribed to server 1 whose calls went to server 2 (they
        stay on the server that answered last) goes: the lock it took through
        server 2 is released too, not only what it took through server 1.
        """
        cluster, _, b = await self.gateways()
        m1, m2 = self.servers
        self.shared(0).linger = 0.1
        c = await self.gateway_on(cluster, m1, m2)
        c.backend._meta._preferred = 1  # calls to server 2, the subscription on server 1
        await c.locks.lock(33, LockOwner("nlm", "hc", b"1"), 0, 0, True)
        await until(lambda: b.locks.busy(33), "B hears of C's lock")
        await c.backend.close()
        await until(lambda: not b.locks.busy(33), "C's lock through server 2 released")
        await b.locks.lock(33, LockOwner("nlm", "hb", b"1"), 0, 0, True)

    async def test_grace_crosses_meta_servers(self) -> None:
        """
        A gateway C with a client, on meta server 1, goes: gateway B on server 2
        is told the client's reclaim must wait, then that it may reclaim, and
        meanwhile refuses new locks (so does server 2 itself); the client's
        RECLAIM_COMPLETE through B ends the grace everywhere.
        """
        cluster, a, b = await self.gateways()
        s1, s2 = self.shared(0), self.shared(1)
        s1.linger = 60.0
        c = await self.gateway_on(cluster, self.servers[0])
        assert c.locks.clients is not None and b.locks.clients is not None
        clients_b = b.locks.clients
        c.locks.clients.note("nfs4", b"client-c")
        await c.locks.link._tail
        await c.backend.close()
        await until(lambda: ("nfs4", b"client-c") in clients_b.pending, "B: C may be gone")
        self.assertFalse(clients_b.in_grace)
        [gone] = s1._gone.values()
        gone.reset(0)  # C's linger time at server 1 runs out now
        # The grace begins first, C's client still told to wait; once C's open is
        # dropped, the client may reclaim.
        await until(lambda: clients_b.may_reclaim("nfs4", b"client-c"), "B: C's client may reclaim")
        self.assertFalse(clients_b.pending)
        self.assertTrue(s2.clients.in_grace)
        with self.assertRaises(errors.Grace):
            await b.locks.lock(63, LockOwner("nlm", "hb", b"1"), 0, 0, True)
        # Server 2 refuses too, whatever its gateway believes (checked in the transaction).
        with self.assertRaises(errors.Grace):
            await b.backend.shared_call("LOCK", (63, ("nlm", b"hb", b"1"), 0, 0, True, False))
        with self.assertRaises(errors.Grace):
            await a.locks.lock(64, LockOwner("nlm", "ha", b"1"), 0, 0, True)
        await b.locks.lock(65, LockOwner("nfs4", b"client-c", b"o"), 0, 0, True, reclaim=True)
        clients_b.reclaimed("nfs4", b"client-c")
        await until(lambda: not clients_b.in_grace and not a.locks.clients.in_grace, "over")
        self.assertFalse(s1.clients.in_grace or s2.clients.in_grace)
        await b.locks.lock(63, LockOwner("nlm", "hb", b"1"), 0, 0, True)

    async def test_client_records_capped(self) -> None:
        """
        Every gateway's client records together stay within C{MAX_RECORDS}
        in the database (each is also held in each meta server's memory
        while it may reclaim); a recorded client still moves to a new
        session, and refusals are counted.
        """
        from claudefs_gateway.servers import clients

        self.patch(clients, "MAX_RECORDS", 2)
        await self.gateways()
        reg1, reg2 = self.shared(0).clients, self.shared(1).clients
        await reg1.note(1, "nfs4", b"a")
        await reg2.note(2, "nlm", b"b")
        await reg1.note(1, "nfs4", b"c")
        await reg2.reclaimed(2, "nfs4", b"d")
        await reg2.note(3, "nfs4", b"a")

        def rows(conn: Any) -> list[tuple[str, bytes, int]]:
            return [
                (str(p), bytes(c), int(s))
                for p, c, s in conn.execute(
                    "SELECT protocol, client, session FROM client_record ORDER BY 1, 2"
                )
            ]

        self.assertEqual(await reg1.store.transaction(rows), [("nfs4", b"a", 3), ("nlm", b"b", 2)])
        self.assertEqual((reg1.not_kept, reg2.not_kept), (1, 1))

    async def test_grace_runs_out(self) -> None:
        """A grace nobody reclaims in ends after meta_store.grace_secs, at every server."""
        cluster, a, b = await self.gateways()
        s1, s2 = self.shared(0), self.shared(1)
        s1.linger = 0.1
        s1.clients.grace = 0.5
        c = await self.gateway_on(cluster, self.servers[0])
        assert c.locks.clients is not None
        c.locks.clients.note("nlm", b"host-c")
        await c.locks.link._tail
        await c.backend.close()
        await until(lambda: s2.clients.in_grace, "grace at server 2")
        await until(lambda: not s2.clients.in_grace and not s1.clients.in_grace, "grace over")
        await until(lambda: not b.locks.clients.in_grace, "B hears it is over")
        self.assertFalse(s2.clients.may_reclaim("nlm", b"host-c"))
        await b.locks.lock(66, LockOwner("nlm", "hb", b"1"), 0, 0, True)

    async def test_dead_server_clients_may_reclaim(self) -> None:
        """
        Meta server 1 dies with gateway C (its only server) and C's client: when
        server 2 reaps server 1, the client may reclaim through B, in a grace.
        """
        cluster, _, b = await self.gateways()
        s2 = self.shared(1)
        s2.dead_after = 0.5
        s2.heartbeat = 0.1
        c = await self.gateway_on(cluster, self.servers[0])
        assert c.locks.clients is not None and b.locks.clients is not None
        c.locks.clients.note("nfs4", b"client-c")
        await c.locks.link._tail
        gone = self.shared(0).boot
        await self.servers[0].stopService()
        await until(lambda: gone in s2.reaped, "server 1 reaped")
        await until(lambda: b.locks.clients.may_reclaim("nfs4", b"client-c"), "B: may reclaim")
        with self.assertRaises(errors.Grace):
            await b.locks.lock(67, LockOwner("nlm", "hb", b"1"), 0, 0, True)

    async def test_failover_takes_client_records_along(self) -> None:
        """
        Gateway C on [1, 2] with a client; server 1 dies. C fails over to server
        2 and sends its clients again, so reaping server 1 starts no grace.
        """
        cluster, _, b = await self.gateways()
        s2 = self.shared(1)
        s2.dead_after = 0.5
        s2.heartbeat = 0.1
        c = await self.gateway_on(cluster, *self.servers)
        assert c.locks.clients is not None and b.locks.clients is not None
        c.locks.clients.note("nfs4", b"client-c")
        await c.locks.link._tail
        gone = self.shared(0).boot
        await self.servers[0].stopService()
        await until(lambda: gone in s2.reaped, "server 1 reaped")
        await pause(0.2)
        self.assertFalse(s2.clients.in_grace)
        self.assertFalse(b.locks.clients.in_grace)
        await b.locks.lock(68, LockOwner("nlm", "hb", b"1"), 0, 0, True)

    async def test_lease_grant_decided_in_the_database(self) -> None:
        """LEASE_GRANT through two meta servers: W for one session only, counted as held."""
        _, a, b = await self.gateways()
        got_a = await a.backend.shared_call("LEASE_GRANT", (71, int(RWH)))
        got_b = await b.backend.shared_call("LEASE_GRANT", (71, int(RWH)))
        self.assertEqual((got_a, got_b), (int(RWH), 0))
        got_b = await b.backend.shared_call("LEASE_GRANT", (72, int(R | H)))
        got_a = await a.backend.shared_call("LEASE_GRANT", (72, int(RWH)))
        self.assertEqual((got_a, got_b), (int(R | H), int(R | H)))


class PgDeadlockTests(base.CrossGatewayDeadlockTests):
    """
    Deadlock detection through L{PgSharedState}: gateway A on meta server 1 and B
    on meta server 2, the waits in the database (C{lock_waiter}).
    """

    gateways = TwoServersSharedStateTests.gateways
    shared = TwoServersSharedStateTests.shared

    async def waiters(self, cluster: Any, n: int, what: str) -> None:
        deadline = time.monotonic() + 30
        while await self.shared(1).waiters() != n:
            if time.monotonic() > deadline:
                raise AssertionError(f"never: {what}")
            await pause()

    async def test_gone_session_waits_dropped(self) -> None:
        """A SESSION_RESET drops the session's waits, through whichever server it waited."""
        cluster, a, b = await self.gateways()
        nlm = LockOwner("nlm", "host-a", b"1")
        await b.locks.lock(43, LockOwner("smb", b"s", b"f"), 0, 10, True)
        await a.backend.shared_call("LOCK_WAIT", (43, ("nlm", b"host-a", b"1"), 0, 10, True))
        await self.waiters(cluster, 1, "A waits")
        await a.backend.shared_call("SESSION_RESET")
        await self.waiters(cluster, 0, "A's wait dropped")
        del nlm
