# -*- test-case-name: tests.servers.test_service -*-
"""
The service trees of C{claudefs-meta} and C{claudefs-data}.

::

    claudefs-meta (ServerService)           claudefs-data (ServerService)
      core:threads                            core:threads
      core:datadir    locked store dir        core:datadir
      server:store    opens the store         server:rpc   the RPC listener (7002)
      server:rpc      the RPC listener (7001) admin:web    /health /metrics
      admin:web       /health /metrics

Each has C{/health} (checks C{store} and C{rpc}) and C{/metrics} on its own
admin listener. Stopping closes the RPC connections, then the store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
from prometheus_client import CollectorRegistry
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.python.reflect import qual

from claudefs_gateway import __version__
from claudefs_gateway.admin.web import build_site
from claudefs_gateway.backend.datadir import DataDir
from claudefs_gateway.backend.remote import wire
from claudefs_gateway.backend.remote.protocol import ServerFactory
from claudefs_gateway.core import log
from claudefs_gateway.core.caches import Caches
from claudefs_gateway.core.config import Listen
from claudefs_gateway.core.drain import Drainer
from claudefs_gateway.core.health import CheckResult, HealthChecks
from claudefs_gateway.core.listen import ListenerService
from claudefs_gateway.core.log import Logger
from claudefs_gateway.core.metrics import Metrics
from claudefs_gateway.core.threads import DEFAULT_SIZES, ThreadPools
from claudefs_gateway.servers.data import ChunkStore, DataHandler
from claudefs_gateway.servers.meta import MetaHandler

__all__ = ["ServerSettings", "ServerService", "build_meta", "build_data"]

_log = Logger()


@attrs.frozen
class ServerSettings:
    """What a server is told on its command line."""

    data_dir: Path
    listen: Listen
    admin: Listen
    data_servers: tuple[str, ...] = ()
    #: meta: copies of each stripe a new namespace's layout asks for.
    mirrors: int = 1
    #: meta: the stored layout's data servers are now at C{data_servers}.
    data_servers_moved: bool = False
    log_level: str = "info"
    durable: bool = True
    stall_timeout: float = 30.0
    #: The C{meta_store} section (None: the embedded store under C{data_dir}).
    meta_store: Any = None
    #: data: the pNFS data server's NFSv3 listener (None: serve no pNFS clients).
    nfs_listen: Listen | None = None
    #: meta: where subscribed gateways' event counts are shared (marks.py), if anywhere.
    event_marks: Path | None = None


class ServerService(MultiService):
    """The root of a server's tree."""

    def __init__(self, role: str, settings: ServerSettings, reactor: Any, metrics: Metrics) -> None:
        super().__init__()
        self.name = f"claudefs-{role}"
        self.role = role
        self.settings = settings
        self.reactor = reactor
        self.metrics = metrics
        self.factory: ServerFactory | None = None
        self.rpc: ListenerService | None = None
        self.admin: ListenerService | None = None
        self.health = HealthChecks(reactor)
        self.ready: Any = lambda: defer.succeed(None)

    def startService(self) -> None:
        super().startService()
        _log.info(
            "claudefs-{role} {version} started",
            role=self.role,
            version=__version__,
            reactor=qual(type(self.reactor)),
        )

    def serving(self) -> None:
        """Logged once the reactor runs (signals are handled from then on)."""
        _log.info("claudefs-{role} serving", role=self.role, serving=self.role)

    def stopService(self) -> defer.Deferred[Any]:
        if not self.running:
            return defer.succeed(None)
        if self.factory is not None:
            self.factory.close_all()
        d = defer.maybeDeferred(MultiService.stopService, self)
        d.addCallback(lambda _: _log.info("claudefs-{role} stopped", role=self.role))
        return d


class _MetaStore(Service):
    name = "server:store"

    def __init__(
        self,
        handler: MetaHandler,
        data_servers: list[str],
        root: ServerService,
        mirrors: int = 1,
        moved: bool = False,
    ) -> None:
        self.handler = handler
        self.data_servers = data_servers
        self.mirrors = mirrors
        self.moved = moved
        self.root = root
        self.error: str | None = None
        self.opened = False
        self._opening: defer.Deferred[None] | None = None
        self._waiters: list[defer.Deferred[None]] = []

    def startService(self) -> None:
        super().startService()
        self._opening = defer.Deferred.fromCoroutine(self._open())

    async def _open(self) -> None:
        try:
            await self.handler.open(self.data_servers, self.mirrors, self.moved)
        except Exception as e:
            self.error = f"{e.__class__.__name__}: {e}"
            _log.failure("cannot open the metadata store; stopping")
            if getattr(self.root.reactor, "running", False):
                self.root.reactor.stop()
            return
        self.opened = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def when_open(self) -> defer.Deferred[None]:
        """Fires once the store is open (tests and the --workers supervisor wait on it)."""
        if self.opened:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(d)
        return d

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.Deferred.fromCoroutine(self._close())

    async def _close(self) -> None:
        if self._opening is not None and not self._opening.called:
            await self._opening
        self.handler.shared.stop()
        self.handler.clients.stop()
        if self.opened:
            self.opened = False
            self.handler.ready = False
            await self.handler.backend.close()

    def check(self) -> CheckResult:
        if self.error is not None:
            return CheckResult.unhealthy("store could not be opened")
        if not self.opened:
            return CheckResult.unhealthy("store not open yet")
        return self.handler.check()


def _common(
    role: str,
    settings: ServerSettings,
    reactor: Any,
    registry: CollectorRegistry | None,
    pools: dict[str, int] | None = None,
) -> tuple[ServerService, ThreadPools]:
    log.set_level(settings.log_level)
    metrics = Metrics(registry)
    metrics.add_process_collectors()
    metrics.family("gateway_info").info({"version": __version__, "backend": f"server-{role}"})
    root = ServerService(role, settings, reactor, metrics)
    threads = ThreadPools(reactor, pools)
    threads.setServiceParent(root)
    DataDir(settings.data_dir).setServiceParent(root)
    return root, threads


def _listeners(root: ServerService, handler: Any, role: str) -> None:
    settings = root.settings
    factory = ServerFactory(handler, role, root.reactor, stall_timeout=settings.stall_timeout)
    root.factory = factory
    root.rpc = ListenerService("server:rpc", "rpc", settings.listen, factory, root.reactor)
    root.rpc.setServiceParent(root)
    root.health.register("rpc", root.rpc.check)
    site = build_site(
        health=root.health,
        metrics=root.metrics,
        drainer=Drainer(root.reactor, root.metrics),
        caches=Caches(),
        token=None,
        drain_deadline=0,
        clock=root.reactor,
    )
    root.admin = ListenerService("admin:web", "admin", settings.admin, site, root.reactor)
    root.admin.setServiceParent(root)


def build_meta(
    settings: ServerSettings, reactor: Any, registry: CollectorRegistry | None = None
) -> ServerService:
    """
    The C{claudefs-meta} tree: the namespace without file bytes, served on the RPC,
    from the embedded store under the data directory or from PostgreSQL
    (C{settings.meta_store}).
    """
    store_config = settings.meta_store
    pg = store_config.postgresql if store_config and store_config.type == "postgresql" else None
    pools = None
    if pg is not None:
        # One thread per pooled connection, and one for notifications and upkeep.
        pools = {**DEFAULT_SIZES, "db": pg.pool_max + 1}
    root, threads = _common("meta", settings, reactor, registry, pools)
    backend: Any
    if pg is not None:
        from claudefs_gateway.backend.postgresql import PgSettings, PostgresStore

        backend = PostgresStore(
            PgSettings(
                pg.conninfo(),
                pg.schema,
                pg.pool_min,
                pg.pool_max,
                pg.statement_timeout_ms,
                pg.connect_timeout_ms,
            ),
            reactor,
            threads,
            data_dir=settings.data_dir,
        )
    else:
        from claudefs_gateway.backend.embedded import EmbeddedBackend

        # A meta server's bytes live on data servers (WROTE, never write):
        # nothing of its store is inline.
        backend = EmbeddedBackend(
            settings.data_dir,
            reactor,
            threads,
            durable=settings.durable,
            inline_max=0,
            data_files=False,
        )
    factories: list[ServerFactory] = []

    def publish(name: str, value: Any, origin: int = 0) -> None:
        factories[0].publish(name, value, origin)
        if pg is not None and name in ("EV_CHANGE", "EV_CHANGE_LOCKS"):
            # The gateways of the other meta servers hear of it through the database.
            change = value if name == "EV_CHANGE" else value[0]
            backend.notify_change(change.session, change.ino, change.dir)

    shared = None
    if pg is not None:
        from claudefs_gateway.servers.shared_pg import PgSharedState

        def shared(clock: Any, push: Any, publish: Any, linger: float) -> Any:
            # Several meta servers over one database share the gateways' locks and leases.
            return PgSharedState(clock, backend, push, publish, linger=linger, dead_after=linger)

    timing = {}
    if store_config is not None:
        timing = {"grace": store_config.grace_secs, "linger": store_config.linger_secs}
    marks = settings.event_marks
    if marks is not None and pg is not None:
        # Changes through other meta servers reach this one's gateways late
        # (through the database): a count of this server's events proves nothing.
        _log.warn("--event-marks ignored: the store is shared with other meta servers")
        marks = None
    handler = MetaHandler(backend, publish, clock=reactor, shared=shared, marks=marks, **timing)
    store = _MetaStore(
        handler,
        list(settings.data_servers),
        root,
        settings.mirrors,
        settings.data_servers_moved,
    )
    store.setServiceParent(root)
    root.ready = store.when_open
    root.health.register("store", store.check)
    _listeners(root, handler, "meta")
    assert root.factory is not None
    factory = root.factory
    factories.append(factory)
    if pg is not None:
        backend.on_remote_change(
            lambda c: factory.publish("EV_CHANGE", wire.ChangeEvent(c.session, c.ino, c.dir))
        )
        # Other servers' changes may have gone unheard: each subscribed gateway must
        # drop its whole cache, which it does when its event connection is lost.
        backend.on_reset(factory.drop_subscribers)
    return root


def build_data(
    settings: ServerSettings, reactor: Any, registry: CollectorRegistry | None = None
) -> ServerService:
    """The C{claudefs-data} tree: chunk files under the data directory, served on the RPC."""
    root, threads = _common("data", settings, reactor, registry)
    store = ChunkStore(settings.data_dir, durable=settings.durable)
    # Settled now (a new store's layout file written), before any gateway on
    # the local path looks; an unknown layout stops the server here.
    _log.info("chunk layout {layout}", layout=store.layout)

    def run(fn: Any, *a: Any) -> defer.Deferred[Any]:
        return threads.run("disk", fn, *a)  # type: ignore[no-any-return]

    pnfs = None
    if settings.nfs_listen is not None:
        from claudefs_gateway.core.metrics import RequestMetrics
        from claudefs_gateway.rpc.server import RPCServer, RPCStreamFactory
        from claudefs_gateway.servers.ds_nfs import MAX_IO, DSState, ds_program

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        pnfs = DSState(settings.data_dir, run)
    handler = DataHandler(store, run, pnfs)
    root.health.register("store", handler.check)
    _listeners(root, handler, "data")
    if pnfs is not None:
        assert settings.nfs_listen is not None
        rpc = RPCServer()
        rpc.add(ds_program(pnfs, handler, RequestMetrics(root.metrics, "pnfs_ds")))
        metrics = root.metrics
        metrics.collect_with(
            "gateway_pnfs_ds_bytes",
            lambda: {("read",): pnfs.bytes_read, ("write",): pnfs.bytes_written},
        )
        factory = RPCStreamFactory(rpc, MAX_IO + 64 * 1024)
        listener = ListenerService("server:nfs", "nfs", settings.nfs_listen, factory, reactor)
        listener.setServiceParent(root)
        pnfs.listener = listener
        root.health.register("nfs", listener.check)
    return root
