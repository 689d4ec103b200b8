# -*- test-case-name: tests.backend.test_datadir -*-
"""
The data directory: created on first start, owned by one gateway at a time.

Two gateways writing one embedded store would corrupt it, so the directory is
locked with C{flock} on C{gateway.lock} for as long as the gateway runs; a
second gateway on the same directory fails at start with a plain message.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import IO

from twisted.application.service import Service

from claudefs_gateway.core.health import CheckResult
from claudefs_gateway.core.log import Logger
from claudefs_gateway.errors import GatewayError

__all__ = ["DataDir", "DataDirLocked"]

# Below this much free space the backend reports degraded.
LOW_SPACE = 256 * 1024 * 1024


class DataDirLocked(GatewayError):
    """Another gateway holds the data directory."""


class DataDir(Service):
    name = "core:datadir"
    _log = Logger()

    def __init__(self, path: Path, shared: bool = False) -> None:
        """
        @param shared: a C{--workers} worker: the supervisor holds the lock
            for all of them; the worker only checks the directory.
        """
        self.path = path
        self.shared = shared
        self._lock: IO[bytes] | None = None
        self._open = False

    def privilegedStartService(self) -> None:
        self.open()

    def startService(self) -> None:
        super().startService()
        self.open()

    def open(self) -> None:
        """Create and lock the directory. @raise DataDirLocked: another gateway has it."""
        if self._lock is not None or self._open:
            return
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.shared:
            self._open = True
            return
        f = open(self.path / "gateway.lock", "ab")  # noqa: SIM115 - held for the process lifetime
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            f.close()
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DataDirLocked(
                    f"data directory {self.path} is in use by another gateway"
                ) from None
            raise
        self._lock = f
        self._log.info("data directory {path}", path=str(self.path))

    def stopService(self) -> None:
        super().stopService()
        if self._lock is not None:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def space(self) -> tuple[int, int]:
        """(free bytes for the gateway, file system size) where the data directory lives."""
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize

    def check(self) -> CheckResult:
        if self._lock is None and not self._open:
            return CheckResult.unhealthy("data directory not open")
        if not os.access(self.path, os.W_OK):
            return CheckResult.unhealthy("data directory not writable")
        st = os.statvfs(self.path)
        free = st.f_bavail * st.f_frsize
        if free < LOW_SPACE:
            return CheckResult.degraded(f"low disk space: {free // (1024 * 1024)} MiB free")
        return CheckResult.healthy()
