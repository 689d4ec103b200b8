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
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.service import IService, MultiService
from twisted.internet import defer

from claudefs_gateway import __version__
from claudefs_gateway.admin.web import build_site
from claudefs_gateway.backend.datadir import DataDir
from claudefs_gateway.core import log
from claudefs_gateway.core.caches import Caches
from claudefs_gateway.core.config import PROTOCOLS, Config
from claudefs_gateway.core.drain import Activity, Drainer, TrackingFactory
from claudefs_gateway.core.health import CheckResult, HealthChecks
from claudefs_gateway.core.log import Logger
from claudefs_gateway.core.metrics import Metrics
from claudefs_gateway.core.runtime import Core
from claudefs_gateway.core.threads import ThreadPools
from claudefs_gateway.errors import NotBuilt

__all__ = ["GatewayService", "build", "is_built", "not_built_message", "FRONT_ENDS"]

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
    """The root of the tree; drains before its children stop."""

    name = "gateway"

    def __init__(self, core: Core) -> None:
        super().__init__()
        self.core = core
        self.skipped: list[str] = []

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
        _log.info("claudefs-gateway {version} started", version=__version__)

    def stopService(self) -> defer.Deferred[Any]:
        deadline = self.core.config.admin.drain_timeout_secs
        d = self.core.drainer.drain(deadline)
        d.addCallback(lambda _: MultiService.stopService(self))
        d.addCallback(lambda _: _log.info("claudefs-gateway stopped"))
        return d


def build(
    config: Config,
    reactor: Any,
    protocols: Sequence[str] | None = None,
    *,
    strict: bool = False,
    registry: CollectorRegistry | None = None,
    worker: bool = False,
) -> GatewayService:
    """
    The service tree for C{config}.

    @param protocols: front ends to start; L{None} means every enabled one.
    @param strict: a requested front end that is not built raises L{NotBuilt}
        (single-protocol starts); otherwise it is skipped with a warning.
    @param worker: one of the C{--workers} processes (L{claudefs_gateway.workers}):
        the data directory is shared, its supervisor holds the lock.
    @raise NotBuilt: see C{strict}.
    """
    log.set_level(config.log_level)
    log.set_secrets(config.secrets())
    metrics = Metrics(registry)
    metrics.add_process_collectors()
    metrics.family("gateway_info").info({"version": __version__, "backend": config.backend.type})
    core = Core(
        config=config,
        reactor=reactor,
        metrics=metrics,
        health=HealthChecks(reactor),
        drainer=Drainer(reactor, metrics),
        caches=Caches(),
        threads=ThreadPools(reactor),
    )
    root = GatewayService(core)
    core.health.register("drain", core.drainer.check)
    core.threads.setServiceParent(root)

    datadir = DataDir(config.data_dir, shared=worker)
    datadir.setServiceParent(root)
    core.extras["datadir"] = datadir

    from claudefs_gateway.vfs.service import VFSService, make_backend

    vfs_service: VFSService | None = None
    try:
        backend = make_backend(core)
    except NotBuilt as e:
        # Transitional: say plainly that no file protocol can be served.
        missing = str(e)
        _log.warn("{why}; no protocol can serve files", why=missing)
    else:
        vfs_service = VFSService(core, backend)
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

    site = build_site(
        quotas=quotas,
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
    return root


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
