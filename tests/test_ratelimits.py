"""
The request-rate limits (L{claudefs_gateway.core.ratelimit}) as each front end
answers them: NFS3ERR_JUKEBOX, SMB STATUS_IO_TIMEOUT, S3 SlowDown (503), each
counted in C{gateway_rejected_requests_total}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from claudefs_gateway.core.metrics import Metrics
from claudefs_gateway.core.ratelimit import RateLimiter
from claudefs_gateway.nfs.errors import NFS3ERR
from claudefs_gateway.smb import ntstatus as st


def rejected(metrics: Metrics, protocol: str, reason: str) -> float | None:
    return metrics.registry.get_sample_value(
        "gateway_rejected_requests_total", {"protocol": protocol, "reason": reason}
    )


class NFSTests(SynchronousTestCase):
    def setUp(self) -> None:
        from tests.nfs.harness import Harness

        self.h = Harness()
        self.clock = Clock()
        self.metrics = Metrics()
        self.fh = self.h.root()

    def limit(self, **kw: Any) -> None:
        limiter = RateLimiter(self.clock, self.metrics, **kw)
        self.h.ctx.admit = lambda host, uid: limiter.admit("nfs3", host, uid)

    def test_client_over_its_rate_gets_jukebox(self) -> None:
        """Calls over a client's rate get NFS3ERR_JUKEBOX (try later); other clients are served."""
        self.limit(per_client=(1, 2))
        client = self.h.client()
        self.assertEqual(
            [client.getattr(self.fh).status for _ in range(3)], [0, 0, NFS3ERR.JUKEBOX]
        )
        self.assertEqual(self.h.client(host="10.0.0.9").getattr(self.fh).status, 0)
        self.assertEqual(rejected(self.metrics, "nfs3", "client_rate"), 1)
        self.clock.advance(1)
        self.assertEqual(client.getattr(self.fh).status, 0)

    def test_the_gateways_admission_hook(self) -> None:
        """
        The hook the NFS service installs (L{admission}, one Python call per
        call: issue 18) refuses as C{Core.admit} does: over a client's rate,
        and while the memory budget is spent, a call gets NFS3ERR_JUKEBOX;
        with no limit set calls are served.
        """
        from claudefs_gateway.core.budget import MemoryBudget
        from claudefs_gateway.core.runtime import admission

        budget = MemoryBudget(1000, self.metrics)
        limiter = RateLimiter(self.clock, self.metrics, per_client=(1, 2))
        self.h.ctx.admit = admission("nfs3", budget, limiter)
        client = self.h.client()
        self.assertEqual(
            [client.getattr(self.fh).status for _ in range(3)], [0, 0, NFS3ERR.JUKEBOX]
        )
        self.assertEqual(rejected(self.metrics, "nfs3", "client_rate"), 1)
        self.clock.advance(2)
        budget.hold(2000)
        self.assertEqual(client.getattr(self.fh).status, NFS3ERR.JUKEBOX)
        self.assertEqual(rejected(self.metrics, "nfs3", "memory"), 1)
        budget.release(2000)
        self.assertEqual(client.getattr(self.fh).status, 0)
        self.h.ctx.admit = admission("nfs3", MemoryBudget(0), RateLimiter(self.clock, self.metrics))
        self.assertEqual([client.getattr(self.fh).status for _ in range(5)], [0] * 5)
        self.flushLoggedErrors()

    def test_user_rate_follows_the_uid(self) -> None:
        self.limit(per_user=(1, 1))
        self.assertEqual(self.h.client(uid=1000).getattr(self.fh).status, 0)
        self.assertEqual(
            self.h.client(uid=1000, host="10.0.0.2").getattr(self.fh).status, NFS3ERR.JUKEBOX
        )
        self.assertEqual(self.h.client(uid=1001).getattr(self.fh).status, 0)

    def test_one_token_per_call_with_two_handles(self) -> None:
        """RENAME resolves two handles but is one request: it takes one token."""
        self.limit(per_client=(1, 1))
        c = self.h.client(0, 0)
        self.clock.advance(10)
        created = c.create(self.fh, b"a")
        self.assertEqual(created.status, 0)
        self.clock.advance(1)
        self.assertEqual(c.rename(self.fh, b"a", self.fh, b"b").status, 0)


class NFS4Tests(SynchronousTestCase):
    """NFSv4 COMPOUNDs go through the same limits as NFSv3 calls (issue 19)."""

    def setUp(self) -> None:
        from tests.nfs.v4.harness import Harness

        self.h = Harness()
        self.cl = self.h.client().setup()
        self.clock = Clock()
        self.metrics = Metrics()

    def limit(self, **kw: Any) -> None:
        limiter = RateLimiter(self.clock, self.metrics, **kw)
        self.h.nfs4.admit = lambda host, uid: limiter.admit("nfs4", host, uid)

    def test_client_over_its_rate_gets_delay(self) -> None:
        """
        COMPOUNDs over the client's rate get NFS4ERR_DELAY before SEQUENCE
        touches its slot (the same seqid is served later); a SEQUENCE alone
        (a lease renewal) is never refused.
        """
        from claudefs_gateway.nfs.v4 import const as c

        self.limit(per_client=(1, 2))
        statuses = [self.cl.compound([(c.OP_PUTROOTFH, None)]).status for _ in range(3)]
        self.assertEqual(statuses, [c.NFS4_OK, c.NFS4_OK, c.NFS4ERR_DELAY])
        self.assertEqual(rejected(self.metrics, "nfs4", "client_rate"), 1)
        self.assertEqual(self.cl.compound([]).status, c.NFS4_OK)
        self.clock.advance(1)
        self.assertEqual(self.cl.compound([(c.OP_PUTROOTFH, None)]).status, c.NFS4_OK)

    def test_user_rate_follows_the_uid(self) -> None:
        from claudefs_gateway.nfs.v4 import const as c

        self.limit(per_user=(1, 1))
        self.assertEqual(self.cl.compound([(c.OP_PUTROOTFH, None)]).status, c.NFS4_OK)
        r = self.cl.compound([(c.OP_PUTROOTFH, None)])
        self.assertEqual((r.status, r.results[0][0]), (c.NFS4ERR_DELAY, c.OP_SEQUENCE))
        self.assertEqual(rejected(self.metrics, "nfs4", "user_rate"), 1)

    def test_wired_by_the_service(self) -> None:
        """The NFS service hands NFSv4 the gateway's limiter, under protocol nfs4."""
        from claudefs_gateway import service
        from claudefs_gateway.core import config as cfg

        root = service.build(
            cfg.loads(
                "backend: {type: memory}\n"
                "limits: {per_client: {requests_per_sec: 1, burst: 1}}\n"
                'nfs: {bind: "127.0.0.1:0", mount_bind: "127.0.0.1:0", portmapper: "off"}\n'
            ),
            self.clock,
            protocols=["nfs"],
        )
        nfs4 = root.getServiceNamed("proto:nfs").nfs4
        assert nfs4 is not None and nfs4.admit is not None
        nfs4.admit("10.0.0.1", 0)
        from claudefs_gateway import errors

        self.assertRaises(errors.Throttled, nfs4.admit, "10.0.0.1", 0)
        self.assertEqual(rejected(root.core.metrics, "nfs4", "client_rate"), 1)

    def test_no_hook_without_limits(self) -> None:
        """
        With no request-rate limit set, NFSv4 has no admission hook at all
        (issue 18: not a call per COMPOUND that limits nothing); the memory
        budget is still checked per COMPOUND.
        """
        from claudefs_gateway import service
        from claudefs_gateway.core import config as cfg

        root = service.build(
            cfg.loads(
                "backend: {type: memory}\n"
                'nfs: {bind: "127.0.0.1:0", mount_bind: "127.0.0.1:0", portmapper: "off"}\n'
            ),
            self.clock,
            protocols=["nfs"],
        )
        nfs4 = root.getServiceNamed("proto:nfs").nfs4
        assert nfs4 is not None
        self.assertIsNone(nfs4.admit)
        self.assertIs(nfs4.budget, root.core.budget)


class SMBTests(SynchronousTestCase):
    def test_over_the_user_rate(self) -> None:
        """
        File requests over the session user's rate get STATUS_IO_TIMEOUT; CLOSE
        is never refused (it frees what the client holds).
        """
        from tests.smb.client import Wire

        wire = Wire()
        clock = Clock()
        limiter = RateLimiter(clock, wire.metrics, per_user=(1, 3))
        wire.factory.admit = lambda address, uid: limiter.admit("smb", address, uid)
        conn = wire.connect().setup()  # TREE_CONNECT takes the first token
        fid = conn.open("f.txt")
        self.assertEqual(conn.flush(fid).status, 0)
        self.assertEqual(conn.flush(fid).status, st.STATUS_IO_TIMEOUT)
        self.assertEqual(conn.close(fid).status, 0)
        self.assertEqual(rejected(wire.metrics, "smb", "user_rate"), 1)


class S3Tests(TestCase):
    timeout = 60

    async def test_slow_down(self) -> None:
        """A user over its rate gets S3's SlowDown (503), which SDKs retry with back-off."""
        from tests.s3.harness import ALICE, BOB, Client, s3_port, start_gateway

        root = await start_gateway(
            self, extra="limits: {per_user: {requests_per_sec: 0.001, burst: 2}}"
        )
        alice, bob = Client(s3_port(root), ALICE), Client(s3_port(root), BOB)
        self.addCleanup(alice.close)
        self.addCleanup(bob.close)
        got = [(await alice.request("GET", "/")).status for _ in range(3)]
        self.assertEqual(got, [200, 200, 503])
        r = await alice.request("GET", "/")
        self.assertEqual((r.status, r.code), (503, "SlowDown"))
        self.assertEqual((await bob.request("GET", "/")).status, 200)
        registry = root.core.metrics.registry
        self.assertEqual(
            registry.get_sample_value(
                "gateway_rejected_requests_total", {"protocol": "s3", "reason": "user_rate"}
            ),
            2,
        )
