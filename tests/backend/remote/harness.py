"""Meta and data servers in this process, on loopback port 0, and a remote backend on them."""

from __future__ import annotations

from collections import Counter
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import reactor

from claudefs_gateway.backend.remote import protocol, wire
from claudefs_gateway.backend.remote.client import NodeSpec, RemoteBackend
from claudefs_gateway.core import config as cfg
from claudefs_gateway.core.config import Listen
from claudefs_gateway.servers.service import ServerService, ServerSettings, build_data, build_meta

LOOPBACK = Listen.tcp("127.0.0.1", 0)


class Cluster:
    """One meta and one data server (started by L{start}), stopped by the test's cleanup."""

    def __init__(
        self,
        test: Any,
        durable: bool = False,
        meta_store: Any = None,
        nfs: bool = False,
        event_marks: bool = False,
    ) -> None:
        self.test = test
        #: The meta server's event-mark directory (marks.py), if it keeps marks.
        self.marks: Any = None
        self.nfs = nfs
        self.base = test.mktemp()
        if event_marks:
            self.marks = _path(self.base, "marks")
        self.durable = durable
        self.meta_store = meta_store
        self.meta: ServerService | None = None
        self.data: ServerService | None = None

    async def start(self) -> None:
        self.data = build_data(
            ServerSettings(
                _path(self.base, "data"),
                LOOPBACK,
                LOOPBACK,
                durable=self.durable,
                nfs_listen=LOOPBACK if self.nfs else None,
            ),
            reactor,
            CollectorRegistry(),
        )
        self.data.startService()
        self.test.addCleanup(self.data.stopService)
        assert self.data.rpc is not None
        dport = self.data.rpc.bound_port
        await self.start_meta([f"127.0.0.1:{dport}"])

    async def start_meta(
        self, data_servers: list[str] | None = None, name: str = "meta"
    ) -> ServerService:
        """Start a meta server (more than one with a shared C{meta_store}); the last is L{meta}."""
        if data_servers is None:
            assert self.data is not None and self.data.rpc is not None
            data_servers = [f"127.0.0.1:{self.data.rpc.bound_port}"]
        meta = build_meta(
            ServerSettings(
                _path(self.base, name),
                LOOPBACK,
                LOOPBACK,
                tuple(data_servers),
                durable=self.durable,
                meta_store=self.meta_store,
                event_marks=self.marks,
            ),
            reactor,
            CollectorRegistry(),
        )
        self.meta = meta
        meta.startService()
        self.test.addCleanup(meta.stopService)
        await meta.ready()
        return meta

    @property
    def data_dir(self) -> Any:
        """The data server's directory (its chunk store's root)."""
        return _path(self.base, "data")

    @property
    def meta_address(self) -> str:
        assert self.meta is not None and self.meta.rpc is not None
        return f"127.0.0.1:{self.meta.rpc.bound_port}"

    def backend(
        self, config_text: str = "", metas: list[ServerService] | None = None, **kw: Any
    ) -> RemoteBackend:
        c = cfg.loads(config_text)
        nodes = [NodeSpec(address(m)) for m in metas] if metas else [NodeSpec(self.meta_address)]
        return RemoteBackend(
            nodes,
            reactor,
            c.connection_pool,
            c.circuit_breaker,
            **kw,
        )


def count_rpc(test: Any) -> tuple[Counter[str], Counter[str]]:
    """
    Count, for the rest of C{test}, every call the gateways' RPC clients make
    (by opcode name, HELLO and HEARTBEAT left out) and every event they hear.
    """
    calls: Counter[str] = Counter()
    events: Counter[str] = Counter()
    real_call = protocol.ClientConnection.call
    real_frame = protocol.ClientConnection.frame_received

    def counting(conn: Any, name: str, args: Any = None) -> Any:
        if name not in ("HELLO", "HEARTBEAT"):
            calls[name] += 1
        return real_call(conn, name, args)

    def frame(conn: Any, opcode: int, kind: int, rid: int, payload: bytes) -> None:
        if kind == wire.EVENT:
            events[wire.OPS[opcode].name] += 1
        real_frame(conn, opcode, kind, rid, payload)

    test.patch(protocol.ClientConnection, "call", counting)
    test.patch(protocol.ClientConnection, "frame_received", frame)
    return calls, events


def address(server: ServerService) -> str:
    assert server.rpc is not None
    return f"127.0.0.1:{server.rpc.bound_port}"


def _path(base: str, name: str) -> Any:
    import os
    from pathlib import Path

    return Path(os.path.abspath(os.path.join(base, name)))
