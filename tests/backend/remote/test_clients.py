"""
NFSv4 client records and grace across gateways (servers/clients.py,
vfs/shared_clients.py): a client whose gateway went reclaims its open
through another gateway, which meanwhile refuses every other client new
state, and grace ends when it sent RECLAIM_COMPLETE (RFC 8881 §8.4.2,
§18.51). NFSv4 clients on the wire (the repo's pynfs-style client), two
in-process gateways on one meta server.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from claudefs_gateway.fstypes import FileType
from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4.codec import OpenArgs, ReclaimCompleteArgs, StateOwner
from claudefs_gateway.rpc.client import connect_tcp
from claudefs_gateway.rpc.message import AuthSys
from claudefs_gateway.rpc.xdrtypes import Arm
from tests.backend.remote.harness import Cluster
from tests.backend.remote.test_gateway import start_in_process
from tests.backend.remote.test_races import serving
from tests.backend.remote.test_shared import until
from tests.nfs.v4.client import V4Client

BOTH = c.OPEN4_SHARE_ACCESS_BOTH


def claim_previous(owner: bytes, deny: int) -> tuple[int, Any]:
    return (
        c.OP_OPEN,
        OpenArgs(
            0,
            BOTH,
            deny,
            StateOwner(0, owner),
            Arm(c.OPEN4_NOCREATE),
            Arm(c.CLAIM_PREVIOUS, c.OPEN_DELEGATE_NONE),
        ),
    )


class ReclaimAcrossGatewaysTests(TestCase):
    timeout = 60

    async def client(self, root: Any, owner: bytes, complete: bool = True) -> V4Client:
        port = root.listeners()["nfs"].bound_port
        conn = await connect_tcp(reactor, "127.0.0.1", port)
        self.addCleanup(conn.close)
        cred = AuthSys(0, b"reclaimer", 0, 0, ())

        def send(prog: int, vers: int, proc: int, args: bytes) -> Any:
            return conn.call(prog, vers, proc, args, cred)

        cl = V4Client(send)
        self.assertEqual((await cl.exchange_id(owner)).status, c.NFS4_OK)
        self.assertEqual((await cl.create_session()).status, c.NFS4_OK)
        if complete:
            await self.reclaim_complete(cl)
        return cl

    async def reclaim_complete(self, cl: V4Client) -> None:
        r = await cl.compound([(c.OP_RECLAIM_COMPLETE, ReclaimCompleteArgs(False))])
        self.assertEqual(r.status, c.NFS4_OK)

    async def test_reclaim_through_another_gateway(self) -> None:
        cluster = Cluster(self)
        await cluster.start()
        assert cluster.meta is not None and cluster.meta.factory is not None
        handler = cluster.meta.factory.handler
        # The linger time is ended below, by hand, once the pending state was seen.
        handler.shared.linger = 60.0
        handler.clients.grace = 30.0
        a = await serving(await start_in_process(self, cluster, ["nfs"]))
        b = await serving(await start_in_process(self, cluster, ["nfs"]))
        backend = a.core.vfs_service.backend
        export = await backend.lookup(a.core.vfs_service.vfs.root_ino, b"export")
        await backend.create(export.ino, b"kept", FileType.REG, 0o666, 0, 0)

        # Through A: a client, recorded at the meta server, opens denying writes.
        one = await self.client(a, b"client-one")
        await until(lambda: ("nfs4", b"client-one") in handler.clients.records, "recorded")
        r = await one.compound(
            one.path(b"export") + [one.open_existing(b"kept", b"o", BOTH, c.OPEN4_SHARE_DENY_WRITE)]
        )
        self.assertEqual(r.status, c.NFS4_OK)
        locks_b = b.core.vfs_service.locks
        kept = await backend.lookup(export.ino, b"kept")
        await until(lambda: locks_b.view.shares(kept.ino), "B hears of the open")

        # A goes (its connection to the meta server is lost for good). Until the
        # meta server declares it gone, a reclaim of its client is told to wait.
        await a.core.vfs_service.backend.close()
        await until(lambda: locks_b.clients.pending, "B hears A may be gone")
        early = await self.client(b, b"client-one", complete=False)
        r = await early.compound(
            early.path(b"export", b"kept") + [claim_previous(b"o", c.OPEN4_SHARE_DENY_WRITE)]
        )
        self.assertEqual(r.status, c.NFS4ERR_DELAY)
        [gone] = handler.shared._gone.values()
        gone.reset(0)
        await until(lambda: locks_b.clients.in_grace, "B hears of the grace")
        self.assertFalse(locks_b.clients.pending)
        self.assertTrue(handler.clients.may_reclaim("nfs4", b"client-one"))

        # Another client through B may not open anything new meanwhile.
        two = await self.client(b, b"client-two")
        r = await two.compound(two.path(b"export") + [two.open_existing(b"kept", b"p", BOTH)])
        self.assertEqual(r.status, c.NFS4ERR_GRACE)
        # A client that held nothing anywhere may not reclaim.
        stranger = await self.client(b, b"stranger", complete=False)
        r = await stranger.compound(stranger.path(b"export", b"kept") + [claim_previous(b"s", 0)])
        self.assertEqual(r.status, c.NFS4ERR_NO_GRACE)

        # The first client comes back through B and reclaims its open.
        back = await self.client(b, b"client-one", complete=False)
        r = await back.compound(
            back.path(b"export", b"kept") + [claim_previous(b"o", c.OPEN4_SHARE_DENY_WRITE)]
        )
        self.assertEqual(r.status, c.NFS4_OK)
        await self.reclaim_complete(back)
        # Nobody is left to reclaim: grace is over everywhere, early.
        await until(lambda: not locks_b.clients.in_grace, "grace over at B")
        self.assertFalse(handler.clients.in_grace)
        # The reclaimed open still denies writes to the other client.
        r = await two.compound(two.path(b"export") + [two.open_existing(b"kept", b"p", BOTH)])
        self.assertEqual(r.status, c.NFS4ERR_SHARE_DENIED)
        r = await two.compound(
            two.path(b"export") + [two.open_existing(b"kept", b"p", c.OPEN4_SHARE_ACCESS_READ)]
        )
        self.assertEqual(r.status, c.NFS4_OK)


class ResubscribeTests(TestCase):
    timeout = 30

    async def test_gateway_back_after_declared_gone_ends_grace(self) -> None:
        """
        A gateway cut off longer than the linger time keeps its clients' state;
        when it subscribes again, it sends that state and its clients, and the
        grace its loss started ends at once.
        """
        from tests.backend.remote.test_shared import SETTINGS, Gateway

        cluster = Cluster(self)
        await cluster.start()
        assert cluster.meta is not None and cluster.meta.factory is not None
        handler = cluster.meta.factory.handler
        handler.shared.linger = 0.05
        backend = cluster.backend(SETTINGS)
        gw = Gateway(backend)
        self.addCleanup(gw.stop)
        await backend.open()
        self.addCleanup(backend.close)
        await until(lambda: backend._events is not None, "subscribed")
        clients = gw.locks.clients
        assert clients is not None
        clients.note("nfs4", b"alice")
        await until(lambda: ("nfs4", b"alice") in handler.clients.records, "recorded")
        # The meta server declares the session gone (as after a long cut)...
        handler.shared._expire(backend.session)
        self.assertTrue(handler.clients.in_grace)
        # ...and the gateway, subscribing again, says its client is still its own.
        clients.resync()
        await until(lambda: not handler.clients.in_grace, "grace over")
        self.assertEqual(handler.clients.records[("nfs4", b"alice")].session, backend.session)
