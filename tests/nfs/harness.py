"""An NFS front end over the memory vfs, in memory, for unit tests."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from claudefs_gateway.backend.embedded import EmbeddedBackend
from claudefs_gateway.core import config as cfg
from claudefs_gateway.core.metrics import Metrics, RequestMetrics
from claudefs_gateway.nfs.context import NFSContext
from claudefs_gateway.nfs.mount import Mount
from claudefs_gateway.nfs.v3.procs import NFS3
from claudefs_gateway.rpc import message as msg
from claudefs_gateway.rpc.drc import ReplyCache
from claudefs_gateway.rpc.message import AuthSys
from claudefs_gateway.rpc.server import Peer, RPCServer
from claudefs_gateway.testing.vfs import MemoryVFS
from claudefs_gateway.vfs import VFS, UserDB
from tests.nfs.client import Client, server_sender

CONFIG = """
exports:
  - {path: /export, root_squash: false}
  - {path: /squash}
  - {path: /ro, read_only: true, root_squash: false}
  - {path: /lan, clients: ["10.0.0.0/8"], root_squash: false}
  - {path: /allsquash, all_squash: true, anonuid: 4000, anongid: 4000}
  - {path: /smbonly, protocols: [smb]}
"""

VERIFIER = b"VERIFIER"


class EmbeddedVFS(MemoryVFS):
    """L{MemoryVFS}'s helpers over the embedded store in its inline (synchronous) mode."""

    def __init__(self, config_text: str, path: str) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        # Small files' bytes inline, as the gateway's default configuration has them.
        self.backend = EmbeddedBackend(
            path,
            None,
            inline=True,
            durable=False,
            now_ns=lambda: int(self.clock.seconds() * 1e9),
            inline_max=4096,
        )
        _fired(self.backend.open())
        self.config = cfg.loads(config_text)
        self.metrics = Metrics()
        self.users = UserDB(self.clock, inline=[])
        self.vfs = VFS(
            self.backend, self.config, self.clock, os.urandom(32), self.users, self.metrics
        )
        _fired(defer.Deferred.fromCoroutine(self.vfs.open()))


def _fired(d: defer.Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


class Harness:
    """
    A MOUNT + NFSv3 server over a L{MemoryVFS} (or, with C{store}, the
    embedded store in its inline mode); L{client} makes clients with a given
    identity and address.
    """

    def __init__(
        self,
        config: str = CONFIG,
        io_size: int = 1 << 20,
        extra: Any = None,
        store: str | None = None,
    ) -> None:
        self.m = MemoryVFS(config) if store is None else EmbeddedVFS(config, store)
        self.vfs = self.m.vfs
        self.metrics = Metrics()
        self.ctx = NFSContext(
            lambda: defer.succeed(self.vfs), write_verifier=VERIFIER, io_size=io_size
        )
        self.server = RPCServer(ReplyCache(64))
        self.nfs_metrics = RequestMetrics(self.metrics, "nfs3")
        self.nfs3 = NFS3(self.ctx, self.nfs_metrics, max_write=io_size)
        self.mount = Mount(self.ctx, RequestMetrics(self.metrics, "mount"))
        self.server.add(self.nfs3.program())
        self.server.add(self.mount.program())
        if extra is not None:
            for prog in extra(self):
                self.server.add(prog)

    def nlm_client(self, host: str = "127.0.0.1", uid: int = 1000) -> Any:
        from tests.nfs.client import NLMClient

        return NLMClient(server_sender(self.server, self.peer(host), AuthSys(0, b"c", uid, uid)))

    def nlm_client_deferred(self, host: str = "127.0.0.1", uid: int = 1000) -> Any:
        """An NLM client whose calls return Deferreds (for replies that come later)."""
        from tests.nfs.client import NLMClient

        return NLMClient(
            server_sender(
                self.server, self.peer(host), AuthSys(0, b"c", uid, uid), on_deferred=lambda d: d
            )
        )

    def peer(self, host: str = "127.0.0.1", transport: str = "tcp") -> Peer:
        return Peer(host, 700, transport, 65507 if transport == "udp" else 1 << 30)

    def client(
        self,
        uid: int = 1000,
        gid: int = 1000,
        gids: tuple[int, ...] = (),
        host: str = "127.0.0.1",
        transport: str = "tcp",
        auth_none: bool = False,
    ) -> Client:
        cred = None if auth_none else AuthSys(0, b"client", uid, gid, gids)
        return Client(
            server_sender(
                self.server,
                self.peer(host, transport),
                cred,
                flavor=msg.AUTH_NONE if auth_none else None,
            )
        )

    def root(self, path: str = "/export") -> bytes:
        """The root handle of an export, as MNT gives it to root on loopback."""
        got = self.client(0, 0).mnt(path.encode())
        assert got.status == 0, got
        fh: bytes = got.fh
        return fh
