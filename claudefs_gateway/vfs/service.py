# -*- test-case-name: tests.vfs.test_service -*-
"""
The vfs in the service tree: opens the store at start, closes it at stop.

Listeners may start accepting before the store is open (opening the embedded
store recovers it, which can take a moment); front ends wait on
L{VFSService.ready} before serving a request. If the store cannot be opened,
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
from claudefs_gateway.errors import NotBuilt
from claudefs_gateway.vfs._vfs import VFS
from claudefs_gateway.vfs.handles import load_or_create_secret
from claudefs_gateway.vfs.identity import User, UserDB

__all__ = ["VFSService", "make_backend", "make_users"]


def make_backend(core: Core) -> Any:
    """The backend the configuration names (not opened yet)."""
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
        return EmbeddedBackend(core.config.data_dir, core.reactor, core.threads)
    raise NotBuilt(f"the {kind} backend is not built in this version of claudefs-gateway")


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

    def __init__(self, core: Core, backend: Any) -> None:
        self.core = core
        self.backend = backend
        self.vfs: VFS | None = None
        self.error: str | None = None
        self._ready: list[defer.Deferred[VFS]] = []
        self._opening: defer.Deferred[None] | None = None

    def ready(self) -> defer.Deferred[VFS]:
        """Fire with the open vfs (at once if open); fails if opening failed."""
        if self.vfs is not None and self.vfs.is_open:
            return defer.succeed(self.vfs)
        if self.error is not None:
            return defer.fail(RuntimeError(self.error))
        d: defer.Deferred[VFS] = defer.Deferred()
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
                make_users(core),
                core.metrics,
                locks=make_locks(core),
            )
            core.caches.register("attr", self.vfs.invalidate)
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
            return CheckResult.unhealthy("store not open yet")
        check = getattr(self.backend, "check", None)
        return check() if check is not None else CheckResult.healthy()


def make_locks(core: Core) -> Any:
    """The cross-protocol lock table every front end shares."""
    from claudefs_gateway.vfs.locks import LockTable

    return LockTable(core.reactor)
