"""
The gateway-wide memory budget (issue 19) as each front end answers it:
NFS3ERR_JUKEBOX, NFS4ERR_DELAY, S3 SlowDown (503), SMB
STATUS_INSUFFICIENT_RESOURCES (tests/smb/test_bounds.py), each counted in
C{gateway_rejected_requests_total{reason="memory"}}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase, TestCase

from claudefs_gateway.core.budget import MemoryBudget
from claudefs_gateway.core.metrics import Metrics
from claudefs_gateway.nfs.errors import NFS3ERR
from claudefs_gateway.nfs.v4 import const as c


def rejected(metrics: Metrics, protocol: str) -> float | None:
    return metrics.registry.get_sample_value(
        "gateway_rejected_requests_total", {"protocol": protocol, "reason": "memory"}
    )


class NFS3Tests(SynchronousTestCase):
    def test_spent_budget_is_jukebox(self) -> None:
        """While the budget is spent, calls get NFS3ERR_JUKEBOX; once freed they are served."""
        from tests.nfs.harness import Harness

        h = Harness()
        fh = h.root()
        metrics = Metrics()
        budget = MemoryBudget(1000, metrics)
        h.ctx.admit = lambda host, uid: budget.check("nfs3")
        client = h.client()
        self.assertEqual(client.getattr(fh).status, 0)
        budget.hold(2000)
        self.assertEqual(client.getattr(fh).status, NFS3ERR.JUKEBOX)
        self.assertEqual(rejected(metrics, "nfs3"), 1)
        budget.release(2000)
        self.assertEqual(client.getattr(fh).status, 0)
        self.flushLoggedErrors()


class NFS4Tests(SynchronousTestCase):
    def test_spent_budget_is_delay(self) -> None:
        """
        While the budget is spent a COMPOUND gets NFS4ERR_DELAY before SEQUENCE
        touches its slot: the same seqid is served once the budget is free.
        """
        from tests.nfs.v4.harness import Harness

        h = Harness()
        cl = h.client().setup()
        metrics = Metrics()
        budget = h.nfs4.budget = MemoryBudget(1000, metrics)
        budget.hold(2000)
        r = cl.compound([(c.OP_PUTROOTFH, None)])
        self.assertEqual(r.status, c.NFS4ERR_DELAY)
        self.assertEqual(r.results[0][0], c.OP_SEQUENCE)
        self.assertEqual(rejected(metrics, "nfs4"), 1)
        budget.release(2000)
        r = cl.compound([(c.OP_PUTROOTFH, None)])
        self.assertEqual(r.status, c.NFS4_OK)


class S3Tests(TestCase):
    timeout = 60

    async def test_slow_down(self) -> None:
        """While the budget is spent S3 answers SlowDown (503), which SDKs retry."""
        from tests.s3.harness import ALICE, Client, s3_port, start_gateway

        root = await start_gateway(self)
        alice = Client(s3_port(root), ALICE)
        self.addCleanup(alice.close)
        self.assertEqual((await alice.request("GET", "/")).status, 200)
        budget = root.core.budget
        budget.hold(budget.limit + 1)
        r = await alice.request("GET", "/")
        self.assertEqual((r.status, r.code), (503, "SlowDown"))
        budget.release(budget.limit + 1)
        self.assertEqual((await alice.request("GET", "/")).status, 200)
        self.assertEqual(rejected(root.core.metrics, "s3"), 1)
        self.flushLoggedErrors()
