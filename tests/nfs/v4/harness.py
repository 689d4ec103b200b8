"""An NFSv4 server over the memory vfs, in memory, for unit tests."""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock

from claudefs_gateway.core.metrics import Metrics, RequestMetrics
from claudefs_gateway.nfs.context import NFSContext
from claudefs_gateway.nfs.grace import Grace
from claudefs_gateway.nfs.v4.compound import Settings
from claudefs_gateway.nfs.v4.server import NFS4
from claudefs_gateway.rpc.message import AuthSys
from claudefs_gateway.rpc.server import Peer, RPCServer
from claudefs_gateway.testing.vfs import MemoryVFS
from claudefs_gateway.vfs.locks import LockTable
from tests.nfs.client import server_sender
from tests.nfs.v4.client import V4Client

CONFIG = """
exports:
  - {path: /export, root_squash: false}
  - {path: /data/projects, root_squash: false}
  - {path: /ro, read_only: true, root_squash: false}
  - {path: /lan, clients: ["10.0.0.0/8"], root_squash: false}
  - {path: /smbonly, protocols: [smb]}
"""

_conn_ids = itertools.count(1000)


class FakeConn:
    """A stand-in for an RPC stream connection: records what the server sends."""

    def __init__(self) -> None:
        self.conn_id = next(_conn_ids)
        self.on_close: list[Any] = []
        self.reply_sink: Any = None
        self.sent: list[bytes] = []

    def send_call(self, message: bytes) -> None:
        self.sent.append(message)

    def seen(self, program: str, vers: int, uid: int | None) -> None:
        """What the RPC server tells a connection of each call (for cfs-gateway status)."""

    def close(self) -> None:
        hooks, self.on_close = self.on_close, []
        for h in hooks:
            h(self)


class Harness:
    def __init__(self, config: str = CONFIG, settings: Settings | None = None, **kw: Any) -> None:
        self.clock = Clock()
        self.m = MemoryVFS(config, users=kw.pop("users", None), clock=self.clock)
        self.vfs = self.m.vfs
        self.vfs.locks = LockTable(self.clock)
        self.metrics = Metrics()
        self.ctx = NFSContext(
            lambda: defer.succeed(self.vfs), write_verifier=b"VERIFIER", protocol="nfs4"
        )
        self.grace = Grace(kw.pop("grace_secs", 90))
        self.nfs4 = NFS4(
            self.ctx,
            self.clock,
            settings or Settings(lease_secs=90),
            RequestMetrics(self.metrics, "nfs4"),
            self.grace,
        )
        self.server = RPCServer()
        self.server.add(self.nfs4.program())
        d = defer.Deferred.fromCoroutine(self.nfs4.start())
        assert d.called

    def client(
        self,
        uid: int = 0,
        gid: int = 0,
        host: str = "127.0.0.1",
        conn: FakeConn | None = None,
        minor: int = 2,
        deferred: bool = False,
        transport: str = "tcp",
    ) -> V4Client:
        """
        A client with its own connection; with C{deferred}, its calls answer
        Deferreds (for tests that hold a call open).
        """
        conn = conn or FakeConn()
        peer = Peer(host, 700, transport, 1 << 30, conn)
        cred = AuthSys(0, b"client", uid, gid, ())
        sender = server_sender(
            self.server, peer, cred, on_deferred=(lambda d: d) if deferred else None
        )
        client = V4Client(sender, minor)
        client.conn = conn  # type: ignore[attr-defined]
        return client
