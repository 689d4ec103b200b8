"""
A vfs over the in-memory backend, for tests of the vfs and of front ends.

Everything fires synchronously (the memory backend answers at once), so a test
can use C{successResultOf}/C{failureResultOf} on vfs calls, and time is a
L{Clock} the test advances.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock

from claudefs_gateway import errors
from claudefs_gateway.backend.memory import MemoryBackend
from claudefs_gateway.core import config as cfg
from claudefs_gateway.core.metrics import Metrics
from claudefs_gateway.fstypes import Credentials, FileType
from claudefs_gateway.vfs import VFS, Caller, ExportInfo, UserDB
from claudefs_gateway.vfs.identity import User

__all__ = ["MemoryVFS", "RacingBackend", "make_memory_vfs"]


class MemoryVFS:
    """A ready vfs with helpers to make callers; attributes: vfs, backend, clock, metrics, config."""

    def __init__(
        self,
        config_text: str = "",
        users: list[User] | None = None,
        clock: Clock | None = None,
        backend: type[MemoryBackend] = MemoryBackend,
    ) -> None:
        self.clock = clock or Clock()
        self.clock.advance(1_700_000_000)
        self.backend = backend(now_ns=lambda: int(self.clock.seconds() * 1e9))
        self.config = cfg.loads(config_text)
        self.metrics = Metrics()
        self.users = UserDB(self.clock, inline=users or [])
        self.vfs = VFS(
            self.backend, self.config, self.clock, os.urandom(32), self.users, self.metrics
        )
        d = defer.Deferred.fromCoroutine(self.vfs.open())
        failures: list[Any] = []
        d.addErrback(failures.append)
        if failures:
            failures[0].raiseException()

    def export(self, path: str = "/export") -> ExportInfo:
        e = self.vfs.exports.by_path(path)
        assert e is not None, path
        return e

    def caller(
        self,
        uid: int = 1000,
        gid: int = 1000,
        groups: tuple[int, ...] = (),
        path: str = "/export",
        client: str = "127.0.0.1",
        protocol: str = "test",
    ) -> Caller:
        return self.vfs.caller(self.export(path), client, Credentials(uid, gid, groups), protocol)

    def root(self, path: str = "/export") -> int:
        return self.export(path).root_ino


class RacingBackend(MemoryBackend):
    """
    A memory backend shared with another gateway that, the first time this one
    looks up a name of L{racing} and finds nothing, makes it a directory just
    after (as a C{--workers} sibling opening the same new store does): this
    gateway's create of it then fails with C{Exists}.
    """

    racing: frozenset[bytes] = frozenset()

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.raced: list[bytes] = []

    def lookup(self, parent: int, name: bytes) -> defer.Deferred[Any]:
        d = super().lookup(parent, name)
        if name in self.racing and name not in self.raced:

            def other_gateway(f: Any) -> Any:
                if f.check(errors.NotFound):
                    self.raced.append(name)
                    MemoryBackend.create(self, parent, name, FileType.DIR, 0o755, 0, 0)
                return f

            d.addErrback(other_gateway)
        return d


def make_memory_vfs(config_text: str = "", **kw: Any) -> MemoryVFS:
    return MemoryVFS(config_text, **kw)
