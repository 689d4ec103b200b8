"""
A small stand-in for the vfs lock manager (C{vfs.locks}, branch "locks"),
with the API its author was given: enough to test the SMB wire layer's use
of it (byte-range locks, blocking waits, mandatory I/O checks, share
reservations). It records calls; the real table's semantics are its own
tests' business.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from claudefs_gateway import errors


class FakeLocks:
    def __init__(self) -> None:
        # (ino, owner, start, end, exclusive)
        self.held: list[tuple[int, Any, int, int, bool]] = []
        self.waiters: list[tuple[int, Any, int, int, bool, defer.Deferred[Any]]] = []
        self.shares: list[Any] = []
        self.calls: list[str] = []

    @staticmethod
    def _end(start: int, length: int) -> int:
        return 2**64 if length == 0 else start + length

    def _blocker(self, ino: int, owner: Any, s: int, e: int, exclusive: bool) -> Any:
        for h in self.held:
            hino, howner, hs, he, hx = h
            if hino != ino or he <= s or hs >= e:
                continue
            if howner == owner:
                if exclusive:
                    return h
                continue
            if exclusive or hx:
                return h
        return None

    def lock(
        self, ino: int, owner: Any, start: int, length: int, exclusive: bool, *, wait: bool = False
    ) -> defer.Deferred[Any]:
        self.calls.append("lock")
        s, e = start, self._end(start, length)
        blocker = self._blocker(ino, owner, s, e, exclusive)
        if blocker is None:
            self.held.append((ino, owner, s, e, exclusive))
            return defer.succeed((ino, start, length))
        if not wait:
            return defer.fail(errors.LockConflict(blocker))
        entry: list[Any] = []
        d: defer.Deferred[Any] = defer.Deferred(lambda d: self.waiters.remove(entry[0]))
        entry.append((ino, owner, s, e, exclusive, d))
        self.waiters.append(entry[0])
        return d

    def unlock(self, ino: int, owner: Any, start: int, length: int) -> None:
        self.calls.append("unlock")
        e = self._end(start, length)
        for h in self.held:
            if h[0] == ino and h[1] == owner and h[2] == start and h[3] == e:
                self.held.remove(h)
                self._wake()
                return
        raise errors.NoLock("range not locked")

    def _wake(self) -> None:
        for w in list(self.waiters):
            ino, owner, s, e, x, d = w
            if self._blocker(ino, owner, s, e, x) is None:
                self.waiters.remove(w)
                self.held.append((ino, owner, s, e, x))
                d.callback((ino, s, e))

    def check_io(self, ino: int, owner: Any, start: int, length: int, write: bool) -> bool:
        if length == 0:
            return True
        e = start + length
        for hino, howner, hs, he, hx in self.held:
            if hino != ino or he <= start or hs >= e:
                continue
            if howner == owner:
                if write and not hx:
                    return False
                continue
            if write or hx:
                return False
        return True

    def release_owner(self, owner: Any) -> None:
        self.calls.append("release_owner")
        self.held = [h for h in self.held if h[1] != owner]
        for w in [w for w in self.waiters if w[1] == owner]:
            self.waiters.remove(w)
            w[5].errback(defer.CancelledError())
        self.shares = [t for t in self.shares if t.owner != owner]
        self._wake()

    def release_inode(self, ino: int) -> None:
        self.held = [h for h in self.held if h[0] != ino]

    def open_share(self, ino: int, owner: Any, access: frozenset[str], deny: frozenset[str]) -> Any:
        for t in self.shares:
            if t.ino == ino and (access & t.deny or deny & t.access):
                raise errors.ShareConflict("share conflict")
        token = _Token(ino, owner, frozenset(access), frozenset(deny))
        self.shares.append(token)
        return token

    def close_share(self, token: Any) -> None:
        if token in self.shares:
            self.shares.remove(token)


class _Token:
    def __init__(self, ino: int, owner: Any, access: frozenset[str], deny: frozenset[str]) -> None:
        self.ino, self.owner, self.access, self.deny = ino, owner, access, deny
