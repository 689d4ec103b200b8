# -*- test-case-name: tests.smb.test_service -*-
"""C{proto:smb}: the SMB listener in the gateway's service tree."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet import defer

from claudefs_gateway.core.authlimit import AuthFailureLimiter
from claudefs_gateway.core.metrics import RequestMetrics

__all__ = ["make_service"]


def make_service(core: Any) -> IService:
    """
    The SMB front end for C{core}: a MultiService named C{proto:smb} with
    one listener (health check C{smb}) that joins the drain. Requests wait
    for the vfs to open; nothing here does I/O.
    """
    from claudefs_gateway.smb.server import SMBFactory
    from claudefs_gateway.vfs.handles import load_or_create_secret

    svc = _SMBService()
    svc.setName("proto:smb")
    config = core.config

    factory = SMBFactory(
        config,
        core.vfs_ready,
        core.reactor,
        metrics=RequestMetrics(core.metrics, "smb"),
        activity=core.drainer.activity("smb"),
        limiter=AuthFailureLimiter(core.reactor),
        domain_secret=lambda: load_or_create_secret(config.data_dir),
    )
    factory.admit = core.admitter("smb")
    factory.budget = core.budget
    core.listener(svc, "proto:smb:listen", "smb", config.smb.bind, factory)
    svc.factory = factory
    return svc


class _SMBService(MultiService):
    """
    C{proto:smb}: stops after the connections closed (the drain) and the
    durable handles they left are written to the state store, so a restarted
    gateway can honour their reconnects, and the metadata changes not yet
    synced are (FileBase.meta_durable).
    """

    factory: Any = None

    def startService(self) -> None:
        MultiService.startService(self)
        if self.factory is not None and self.factory.any_ca:
            # Persistent handles a killed gateway left are taken back, so other
            # clients stay out of their files; the beat tells others we live
            # (smb/durable.py).
            self.factory.durability.start()

    def stopService(self) -> defer.Deferred[Any]:  # type: ignore[override]
        d = defer.maybeDeferred(MultiService.stopService, self)
        if self.factory is not None:
            factory = self.factory
            d.addCallback(lambda _: factory.durability.stop())
            d.addCallback(lambda _: factory.durability.flush())
            d.addCallback(lambda _: factory.files.stop_flushing())
        return d
