# -*- test-case-name: tests.vfs.test_service -*-
"""
The vfs in the service tree: opens the store at start, closes it at stop.

Opening the embedded store recovers it, which can take a moment: until it is
open, C{/health} reports C{starting} and no protocol listener accepts
connections (L{claudefs_gateway.core.runtime.Core.listener}); front ends also
wait on L{VFSService.ready} before serving a request. If the store cannot be opened,
the gateway stops: serving clients from a store we could not open would only
turn one clear error into many confusing ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer

from claudefs_gateway.core.health import CheckResult
from claudefs_gateway.core.log import Logger
from claudefs_gateway.core.runtime import Core
from claudefs_gateway.interfaces import (
    IVFS,
    IBackend,
    ILeaseManager,
    ILockTable,
    ISharedStore,
    IUserDB,
)
from claudefs_gateway.vfs._vfs import VFS
from claudefs_gateway.vfs.handles import load_or_create_secret
from claudefs_gateway.vfs.identity import User, UserDB

__all__ = ["VFSService", "make_users", "users_path"]


def users_path(config: Any) -> Path | None:
    """The users file this configuration uses, or None if users are inline."""
    if isinstance(config.users, list):
        return None
    if isinstance(config.users, str):
        return Path(config.users)
    return config.data_dir / "users.yaml"


def make_users(core: Core) -> UserDB:
    config = core.config
    domain = config.nfs.v4.domain
    if isinstance(config.users, list):
        return UserDB(
            core.reactor, inline=[User.from_config(u) for u in config.users], nfs4_domain=domain
        )
    return UserDB(core.reactor, path=users_path(config), nfs4_domain=domain)


class VFSService(Service):
    name = "core:vfs"
    _log = Logger()

    def __init__(
        self,
        core: Core,
        backend: IBackend,
        users: IUserDB,
        locks: ILockTable,
        leases: ILeaseManager,
    ) -> None:
        self.core = core
        self.backend = backend
        self.users = users
        self.locks = locks
        self.leases = leases
        self.vfs: VFS | None = None
        self.error: str | None = None
        self._ready: list[defer.Deferred[IVFS]] = []
        self._opening: defer.Deferred[None] | None = None

    def ready(self) -> defer.Deferred[IVFS]:
        """Fire with the open vfs (at once if open); fails if opening failed."""
        if self.vfs is not None and self.vfs.is_open:
            return defer.succeed(self.vfs)
        if self.error is not None:
            return defer.fail(RuntimeError(self.error))
        d: defer.Deferred[IVFS] = defer.Deferred()
        self._ready.append(d)
        return d

    def _build(self) -> VFS:
        if self.vfs is None:
            core = self.core
            secret = load_or_create_secret(core.config.data_dir)
            self.vfs = VFS(
                self.backend,
                core.config,
                core.reactor,
                secret,
                self.users,
                core.metrics,
                locks=self.locks,
                leases=self.leases,
            )
            core.caches.register("attr", self.vfs.invalidate)
            # A shared (remote) store tells us what other gateways changed.
            if ISharedStore.providedBy(self.backend):
                vfs = self.vfs
                shared = ISharedStore(self.backend)
                shared.on_change(lambda ev: vfs.forget_changed(ev.ino, ev.dir))
                shared.on_reset(vfs.invalidate)
        return self.vfs

    def startService(self) -> None:
        super().startService()
        vfs = self._build()
        self._opening = defer.Deferred.fromCoroutine(self._open(vfs))

    async def _open(self, vfs: VFS) -> None:
        try:
            await self.backend.open()
            await vfs.open()
        except Exception as e:
            self.error = f"cannot open the store: {e.__class__.__name__}: {e}"
            self._log.failure(
                "cannot open the {kind} store; stopping", kind=self.core.config.backend.type
            )
            waiters, self._ready = self._ready, []
            for d in waiters:
                d.errback(RuntimeError(self.error))
            self.core.extras["fatal"] = self.error
            if getattr(self.core.reactor, "running", False):
                self.core.reactor.stop()
            return
        waiters, self._ready = self._ready, []
        for d in waiters:
            d.callback(vfs)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.Deferred.fromCoroutine(self._close())

    async def _close(self) -> None:
        if self._opening is not None and not self._opening.called:
            await self._opening
        if self.vfs is not None and self.vfs.is_open:
            self.vfs.is_open = False
            await self.backend.close()
            self._log.info("store closed")

    def check(self) -> CheckResult:
        if self.error is not None:
            return CheckResult.unhealthy("store could not be opened")
        if self.vfs is None or not self.vfs.is_open:
            if self.running:
                return CheckResult.starting("opening the store")
            return CheckResult.unhealthy("store closed")
        check = getattr(self.backend, "check", None)
        return check() if check is not None else CheckResult.healthy()
