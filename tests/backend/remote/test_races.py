"""
Two gateways deciding the same open at the same instant (docs/rpc.rst
"Shared state"): NFSv4 clients on two in-process gateways over one meta
server send conflicting OPENs while neither gateway has heard of the other's
(their EV_LOCKS held back, as in the moment before they arrive). Both pass
the gateway's own check; the meta server registers one, and the other
client is answered NFS4ERR_SHARE_DENIED, never a second open it could not
have had through one gateway.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from claudefs_gateway.fstypes import FileType
from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4.codec import ReclaimCompleteArgs
from claudefs_gateway.rpc.client import connect_tcp
from claudefs_gateway.rpc.message import AuthSys
from tests.backend.remote.harness import Cluster
from tests.backend.remote.test_gateway import start_in_process
from tests.nfs.test_service import nfs_of
from tests.nfs.v4.client import V4Client

BOTH = c.OPEN4_SHARE_ACCESS_BOTH
DENY_WRITE = c.OPEN4_SHARE_DENY_WRITE


async def serving(root: Any) -> Any:
    """C{root} once its NFS service has started (NSM's record written: no disk I/O left)."""
    nfs = nfs_of(root)
    recovery = nfs.getServiceNamed("proto:nfs:nlm")
    if recovery.starting is not None:
        await recovery.starting
    await nfs.nsm.flushed()
    return root


class HeldBack:
    """A gateway's EV_LOCKS kept from its lock table until L{release}."""

    def __init__(self, locks: Any) -> None:
        self.locks = locks
        self.held: list[tuple[Any, ...]] = []
        self._real = locks.on_locks
        locks.on_locks = lambda *value: self.held.append(value)

    def release(self) -> None:
        self.locks.on_locks = self._real
        for value in self.held:
            self._real(*value)


class OpenRaceTests(TestCase):
    timeout = 60

    async def client(self, root: Any, owner: bytes) -> V4Client:
        port = root.listeners()["nfs"].bound_port
        conn = await connect_tcp(reactor, "127.0.0.1", port)
        self.addCleanup(conn.close)
        cred = AuthSys(0, b"racer", 0, 0, ())

        def send(prog: int, vers: int, proc: int, args: bytes) -> Any:
            return conn.call(prog, vers, proc, args, cred)

        cl = V4Client(send)
        self.assertEqual((await cl.exchange_id(owner)).status, c.NFS4_OK)
        self.assertEqual((await cl.create_session()).status, c.NFS4_OK)
        r = await cl.compound([(c.OP_RECLAIM_COMPLETE, ReclaimCompleteArgs(False))])
        self.assertEqual(r.status, c.NFS4_OK)
        return cl

    async def gateways(self) -> tuple[Any, Any]:
        cluster = Cluster(self)
        await cluster.start()
        a = await serving(await start_in_process(self, cluster, ["nfs"]))
        b = await serving(await start_in_process(self, cluster, ["nfs"]))
        backend = a.core.vfs_service.backend
        root = a.core.vfs_service.vfs.root_ino
        export = await backend.lookup(root, b"export")
        await backend.create(export.ino, b"race", FileType.REG, 0o666, 0, 0)
        return a, b

    async def race(self, access_a: int, deny_a: int, access_b: int, deny_b: int) -> list[int]:
        a, b = await self.gateways()
        ca = await self.client(a, b"client-a")
        cb = await self.client(b, b"client-b")
        held = [HeldBack(gw.core.vfs_service.locks) for gw in (a, b)]
        opens = [
            cl.compound(cl.path(b"export") + [cl.open_existing(b"race", b"o", acc, deny)])
            for cl, acc, deny in ((ca, access_a, deny_a), (cb, access_b, deny_b))
        ]
        got = await defer.gatherResults(opens)
        for h in held:
            h.release()
        # Whatever the OPENs left queued for the meta server is answered before cleanup.
        for gw in (a, b):
            await gw.core.vfs_service.locks.link.call("HEARTBEAT")
        return [r.status for r in got]

    async def test_two_deny_write_opens_at_once(self) -> None:
        """Read-write deny-write OPENs through A and B at once: one is granted, one refused."""
        statuses = await self.race(BOTH, DENY_WRITE, BOTH, DENY_WRITE)
        self.assertEqual(sorted(statuses), sorted([c.NFS4_OK, c.NFS4ERR_SHARE_DENIED]))

    async def test_compatible_opens_at_once(self) -> None:
        """Read opens denying nothing through A and B at once: both granted."""
        read = c.OPEN4_SHARE_ACCESS_READ
        deny_none = c.OPEN4_SHARE_DENY_NONE
        statuses = await self.race(read, deny_none, read, deny_none)
        self.assertEqual(statuses, [c.NFS4_OK, c.NFS4_OK])
