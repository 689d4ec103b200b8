# -*- test-case-name: tests.test_service -*-
"""
Build the gateway's service tree from a validated configuration.

::

    gateway (GatewayService)
      core:threads     named thread pools
      core:datadir     the data directory, locked for this gateway  (health: backend)
      admin:web        /health /metrics /admin/*                     (health: admin)
      admin:manhole    SSH console, when configured                  (health: manhole)
      proto:nfs …      one MultiService per front end, its listeners (health: one per listener)

Stopping the tree (SIGTERM, SIGINT, reactor.stop) drains first: protocol
listeners stop accepting, in-flight requests get C{admin.drain_timeout_secs},
connections close; then children stop in reverse order, the admin API last.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from twisted.application.service import IService, MultiService, Service
from twisted.internet import defer
from twisted.python.reflect import qual

from claudefs_gateway import __version__
from claudefs_gateway.admin.web import build_site
from claudefs_gateway.backend.datadir import DataDir
from claudefs_gateway.core import log
from claudefs_gateway.core.budget import MemoryBudget
from claudefs_gateway.core.caches import Caches
from claudefs_gateway.core.clients import ClientTable, summarize
from claudefs_gateway.core.config import PROTOCOLS, Config
from claudefs_gateway.core.drain import Activity, Drainer, TrackingFactory
from claudefs_gateway.core.health import CheckResult, HealthChecks
from claudefs_gateway.core.log import Logger
from claudefs_gateway.core.metrics import Metrics
from claudefs_gateway.core.ratelimit import RateLimiter
from claudefs_gateway.core.runtime import Core
from claudefs_gateway.core.threads import ThreadPools
from claudefs_gateway.errors import NotBuilt
from claudefs_gateway.interfaces import IBackend

if TYPE_CHECKING:
    from claudefs_gateway.vfs.service import VFSService

__all__ = [
    "GatewayService",
    "build",
    "is_built",
    "make_backend",
    "not_built_message",
    "FRONT_ENDS",
]

# Each front end package offers make_service(core) -> IService, or raises NotBuilt.
FRONT_ENDS = {name: f"claudefs_gateway.{name}" for name in PROTOCOLS}

_log = Logger()


def is_built(protocol: str) -> bool:
    """True if the front end for C{protocol} exists in this build."""
    module = importlib.import_module(FRONT_ENDS[protocol])
    return bool(getattr(module, "BUILT", False))


def not_built_message(protocol: str) -> str:
    """Why C{protocol} cannot start in this build ("" if it can)."""
    module = importlib.import_module(FRONT_ENDS[protocol])
    return "" if getattr(module, "BUILT", False) else str(module.NOT_BUILT)


class GatewayService(MultiService):
    """
    The root of the tree; drains before its children stop.

    @ivar exit_when_drained: once a drain started through the admin API
        (C{cfs-gateway drain}) has finished, stop the reactor, so the process
        exits (status 0) and lets go of the data directory. Set by the
        process runners (C{cfs-gateway start}, twistd); left false where the
        tree shares a reactor it does not own (tests).
    """

    name = "gateway"

    def __init__(self, core: Core) -> None:
        super().__init__()
        self.core = core
        self.skipped: list[str] = []
        #: the protocol front ends' services, stopped before the rest
        self.front_ends: list[IService] = []
        self.exit_when_drained = False
        self._stopping = False

    def listeners(self) -> dict[str, Any]:
        """Every listener in the tree by health label (tests read bound ports here)."""
        from claudefs_gateway.core.listen import ListenerService

        found: dict[str, Any] = {}

        def visit(svc: Any) -> None:
            if isinstance(svc, ListenerService):
                found[svc.label] = svc
            for child in getattr(svc, "services", []):
                visit(child)

        visit(self)
        return found

    def startService(self) -> None:
        super().startService()
        # reactor: which loop serves us (core/reactor.py), for the operator and the tests.
        _log.info(
            "claudefs-gateway {version} started",
            version=__version__,
            reactor=qual(type(self.core.reactor)),
        )
        if self.exit_when_drained:
            self.core.drainer.drained().addCallback(self._drained)

    def _drained(self, _: object) -> None:
        # A drained gateway serves nothing yet holds the data directory, so the
        # next start would fail: a drain asked for through the admin API ends
        # the process, as a drain on SIGTERM does.
        if self._stopping or not self.running:
            return
        _log.info("drained through the admin API: stopping the process")
        reactor = self.core.reactor
        reactor.callLater(0, reactor.stop)

    def stopService(self) -> defer.Deferred[Any]:
        self._stopping = True
        deadline = self.core.config.admin.drain_timeout_secs
        d = self.core.drainer.drain(deadline)
        d.addCallback(lambda _: self._stop_children())
        d.addCallback(lambda _: _log.info("claudefs-gateway stopped"))
        return d

    def _stop_children(self) -> defer.Deferred[Any]:
        """
        The front ends first, and only once their stops are over the store
        and the rest: a front end's stop still writes through the vfs (SMB's
        last metadata flush, its durable handles' records), which a remote
        store whose connections closed beside it, as C{MultiService} stops
        every child at once, failed.
        """
        Service.stopService(self)
        children = list(self)
        children.reverse()

        def stop(services: list[IService]) -> defer.Deferred[Any]:
            return defer.DeferredList([defer.maybeDeferred(s.stopService) for s in services])

        d = stop([s for s in children if s in self.front_ends])
        d.addCallback(lambda _: stop([s for s in children if s not in self.front_ends]))
        return d


def build(
    config: Config,
    reactor: Any,
    protocols: Sequence[str] | None = None,
    *,
    strict: bool = False,
    registry: CollectorRegistry | None = None,
    worker: bool = False,
    worker_index: int | None = None,
) -> GatewayService:
    """
    The service tree for C{config}.

    @param protocols: front ends to start; L{None} means every enabled one.
    @param strict: a requested front end that is not built raises L{NotBuilt}
        (single-protocol starts); otherwise it is skipped with a warning.
    @param worker: one of the C{--workers} processes (L{claudefs_gateway.workers}):
        the data directory is shared, its supervisor holds the lock.
    @param worker_index: which worker (C{--worker-index}): names the files a
        worker keeps for itself in the shared data directory (its NSM record).
    @raise NotBuilt: see C{strict}.
    """
    log.set_level(config.log_level)
    log.set_secrets(config.secrets())
    metrics = Metrics(registry)
    metrics.add_process_collectors()
    metrics.family("gateway_info").info({"version": __version__, "backend": config.backend.type})
    # Exported from the start so dashboards and alert rules find the family; the
    # circuit breaker in front of a remote backend sets one child per backend.
    metrics.family("gateway_circuit_breaker_state")
    clients = ClientTable(reactor)
    core = Core(
        config=config,
        reactor=reactor,
        metrics=metrics,
        health=HealthChecks(reactor),
        drainer=Drainer(
            reactor,
            metrics,
            config.limits.max_connections,
            clients,
            max_per_client=config.limits.max_connections_per_client,
        ),
        caches=Caches(),
        threads=ThreadPools(reactor),
        limiter=RateLimiter.from_config(reactor, metrics, config.limits),
        clients=clients,
        budget=MemoryBudget(config.limits.memory_budget, metrics),
    )
    root = GatewayService(core)
    core.health.register("drain", core.drainer.check)
    core.threads.setServiceParent(root)

    datadir = DataDir(config.data_dir, shared=worker)
    datadir.setServiceParent(root)
    core.extras["datadir"] = datadir
    core.extras["worker_index"] = worker_index

    composed = _compose_vfs(core)
    missing = ""
    vfs_service: VFSService | None = None
    if isinstance(composed, str):
        # Say plainly that no file protocol can be served (Core.vfs_ready
        # then fails every request with BackendUnavailable).
        missing = composed
        _log.warn("{why}; no protocol can serve files", why=missing)
    else:
        vfs_service = composed
        vfs_service.setServiceParent(root)
        core.vfs_service = vfs_service

    def backend_health() -> Any:
        first = datadir.check()
        if first.status != "healthy":
            return first
        if vfs_service is None:
            return CheckResult.degraded(missing)
        return vfs_service.check()

    core.health.register("backend", backend_health)

    def quotas() -> Any:
        vfs = vfs_service.vfs if vfs_service is not None else None
        return vfs.quotas if vfs is not None and vfs.is_open else None

    _export_live_figures(core, datadir, quotas, vfs_service)

    def status() -> dict[str, Any]:
        vfs = vfs_service.vfs if vfs_service is not None else None
        if vfs is not None and not vfs.is_open:
            vfs = None
        locks = getattr(vfs, "locks", None)

        def user_of(uid: int) -> str | None:
            user = vfs.users.by_uid(uid) if vfs is not None else None
            return user.name if user is not None else None

        def locks_of(protocol: str, client: Any) -> int | None:
            return locks.held_by(protocol, client) if locks is not None else None

        rows = clients.snapshot(user_of, locks_of)
        return {
            "connections": rows,
            "summary": summarize(rows),
            "lock_clients": locks.holders() if locks is not None else [],
        }

    site = build_site(
        quotas=quotas,
        clients=status,
        health=core.health,
        metrics=metrics,
        drainer=core.drainer,
        caches=core.caches,
        token=config.admin.token,
        drain_deadline=config.admin.drain_timeout_secs,
        clock=reactor,
    )
    admin_activity = Activity("admin", metrics)
    core.listener(
        root,
        "admin:web",
        "admin",
        config.admin.bind,
        TrackingFactory(site, admin_activity),
        drainable=False,
    )

    if config.admin.manhole is not None:
        _add_manhole(core, root)

    wanted = list(protocols) if protocols is not None else config.enabled_protocols()
    for name in wanted:
        module = importlib.import_module(FRONT_ENDS[name])
        if not getattr(module, "BUILT", False):
            if strict:
                raise NotBuilt(module.NOT_BUILT)
            _log.warn("{protocol}: {why}; not started", protocol=name, why=module.NOT_BUILT)
            root.skipped.append(name)
            continue
        svc = IService(module.make_service(core))
        svc.setServiceParent(root)
        root.front_ends.append(svc)
    return root


def make_backend(core: Core) -> IBackend:
    """
    The backend the configuration names (not opened yet).

    @raise NotBuilt: this build has no such backend.
    """
    kind = core.config.backend.type
    if kind == "memory":
        from claudefs_gateway.backend.memory import MemoryBackend

        return MemoryBackend()
    if kind == "embedded":
        try:
            from claudefs_gateway.backend.embedded import EmbeddedBackend
        except ImportError:
            raise NotBuilt(
                "the embedded backend is not built in this version of claudefs-gateway"
            ) from None
        return EmbeddedBackend(
            core.config.data_dir,
            core.reactor,
            core.threads,
            idle_fd_secs=core.config.backend.idle_fd_secs,
            inline_max=core.config.backend.inline_max_bytes,
        )
    if kind == "remote":
        return _remote_backend(core)
    raise NotBuilt(f"the {kind} backend is not built in this version of claudefs-gateway")


def _remote_backend(core: Core) -> IBackend:
    """
    The ClaudeFS RPC client (docs/distributed.rst), with the seeds' C{metadata}
    and C{transport} health checks and TLS material reloaded on SIGHUP.
    """
    from claudefs_gateway.backend.remote.client import NodeSpec, RemoteBackend
    from claudefs_gateway.core.transport import Choices
    from claudefs_gateway.core.transport.tls import MutualTLS, TLSFiles, install_sighup

    config = core.config
    tls = None
    if config.backend.tls is not None:
        t = config.backend.tls
        tls = MutualTLS(TLSFiles(t.cert, t.key, t.ca))
        install_sighup(core.reactor, tls)
    backend = RemoteBackend(
        [NodeSpec.from_config(m) for m in config.metadata_servers],
        core.reactor,
        config.connection_pool,
        config.circuit_breaker,
        metrics=core.metrics,
        tls=tls,
        choices=Choices(),
        short_circuit=_short_circuit(config.backend.short_circuit),
        event_marks=config.backend.event_marks,
    )
    core.health.register("metadata", backend.check_metadata)
    core.health.register("transport", backend.check_transport)
    core.health.register("mirrors", backend.check_mirrors)
    core.metrics.collect_with("gateway_mirror_stale_copies", lambda: float(backend.stale_copies()))
    return backend


def _short_circuit(path: str | None) -> Any:
    """The local data server's chunk store (C{backend.short_circuit}), if any."""
    if path is None:
        return None
    from claudefs_gateway.servers.data import ChunkStore

    return ChunkStore(Path(path).absolute())


def _compose_vfs(core: Core) -> VFSService | str:
    """
    The vfs and what it stands on, wired here and nowhere else (STYLE.md §3):
    the backend, the user database, the lock table and the lease manager.
    A backend this build lacks gives the reason instead.
    """
    from claudefs_gateway.vfs.leases import LeaseManager
    from claudefs_gateway.vfs.locks import LockTable
    from claudefs_gateway.vfs.service import VFSService, make_users

    config = core.config
    try:
        backend = make_backend(core)
    except NotBuilt as e:
        return str(e)
    leases = LeaseManager(
        core.reactor,
        config.leases.recall_timeout_secs,
        config.leases.max_leases,
        core.metrics,
    )
    locks: Any = LockTable(core.reactor)
    if hasattr(backend, "on_shared_event"):
        # Several gateways on one meta server: locks, shares and lease breaks
        # cross them through it (vfs/shared.py); one process needs no RPC.
        from claudefs_gateway.vfs.shared import wire_up

        locks, leases = wire_up(backend, locks, leases, core.reactor)  # type: ignore[assignment]
    return VFSService(core, backend, make_users(core), locks, leases)


def _export_live_figures(
    core: Core, datadir: DataDir, quotas: Any, vfs_service: VFSService | None
) -> None:
    """
    Gauges read at each scrape from where the figures live: open files and
    leases of connected clients, the lock table, quota pressure, free space
    (the dashboard's and alert rules' inputs; C{contrib/}).
    """
    metrics, drainer, clients = core.metrics, core.drainer, core.clients

    def per_protocol(field: str) -> dict[tuple[str, ...], float]:
        out: dict[tuple[str, ...], float] = {(a.protocol,): 0 for a in drainer.activities()}
        for protocol, c in clients.counts().items():
            out[(protocol,)] = c[field]
        return out

    def lock_figure(index: int) -> dict[tuple[str, ...], float]:
        if vfs_service is None:
            return {}
        return {(p,): t[index] for p, t in vfs_service.locks.totals().items()}

    def space(index: int) -> float:
        try:
            return float(datadir.space()[index])
        except OSError:
            return 0.0

    metrics.collect_with("gateway_open_files", lambda: per_protocol("opens"))
    metrics.collect_with("gateway_locks_held", lambda: lock_figure(0))
    metrics.collect_with("gateway_share_reservations", lambda: lock_figure(1))
    metrics.collect_with("gateway_lock_waiters", lambda: lock_figure(2))
    metrics.collect_with(
        "gateway_quota_usage_ratio", lambda: q.pressure() if (q := quotas()) is not None else {}
    )
    metrics.collect_with(
        "gateway_quota_over_soft",
        lambda: {(k,): n for k, n in q.over_soft().items()} if (q := quotas()) is not None else {},
    )
    metrics.collect_with("gateway_data_dir_free_bytes", lambda: space(0))
    metrics.collect_with("gateway_data_dir_size_bytes", lambda: space(1))


def _add_manhole(core: Core, root: GatewayService) -> None:
    from claudefs_gateway.admin.manhole import ManholeService

    def namespace() -> dict[str, Any]:
        return {
            "gateway": root,
            "config": core.config,
            "core": core,
            "services": {s.name: s for s in root},
        }

    ManholeService(core, namespace).setServiceParent(root)
