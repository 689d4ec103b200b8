# -*- test-case-name: tests.backend.remote.test_write_behind -*-
"""
The write board: how many write-behind C{WROTE}s each gateway on this host
has sent to the meta server and how many were answered, in small shared
files, so a gateway can wait for another's unanswered ones before it takes
a file's size from anywhere (docs/workers.rst, "Write-behind").

A gateway answering an unstable NFS WRITE once its bytes are in the chunk
files, before the meta server has applied the size (C{WROTE} sent and not
awaited), lets its client go on before the change is published: another
gateway's client told of the write (by the first client) could read the old
size. So each writing gateway keeps the file C{DIR/<session as 16 hex
digits>}: three aligned little-endian 64-bit words, its process id, the
count of write-behind C{WROTE}s sent, and the count answered (or failed).
A reader takes every other file's C{sent}, and waits until that file's
C{answered} reaches it: then every write answered to a client before the
look has been applied by the meta server, and published (the meta server
publishes a change's events before it answers it; marks.py), so the
reader's event mark says whether its caches heard it.

A file whose process is gone (a worker killed with C{-9}) is removed by the
first reader that finds it behind: its unanswered C{WROTE}s will never be,
and the writes they stood for were never acknowledged durably (the write
verifier changes with a lost one: the client resends).

The set of files changes only when a gateway starts or goes, and a reader
looks on every C{GETATTR} and C{LOOKUP} (about 15 times per SMB delete), so
it does not list the directory, nor even C{stat} it, each time: whoever adds
or removes a file then bumps the count in C{DIR/.generation} (one aligned
64-bit word, every gateway maps it; bumped under an C{flock}, so no bump is
lost), after the file is in place or gone, and a reader lists the directory
again only when that count moved. A gateway's file is renamed in and the
count bumped before its first write, so before any client can have been
told of one: a reader that looks after that sees the new count. The
C{.generation} file is never removed while gateways use the directory (the
supervisor removes the whole run directory when it stops): a reader keeps
its mapping and would not see a new file's count.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
from pathlib import Path

__all__ = ["WriteBoard", "board_dir", "bump", "clear_dead"]

_WORDS = 3
_SIZE = 8 * _WORDS
_GENERATION = ".generation"


def board_dir(marks: Path | str) -> Path:
    """The board's directory beside the meta server's event-mark directory C{marks}."""
    p = Path(marks)
    return p.with_name(p.name + ".writes")


class _Generation:
    """
    C{DIR/.generation}: a count bumped each time a board file is added or
    removed, so a reader knows when to list the directory again.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / _GENERATION
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_size < 8:
                    os.ftruncate(fd, 8)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            self._map: mmap.mmap | None = mmap.mmap(fd, 8)
        finally:
            os.close(fd)
        self._word: ctypes.c_uint64 | None = ctypes.c_uint64.from_buffer(self._map)

    def value(self) -> int:
        return -1 if self._word is None else int(self._word.value)

    def bump(self) -> None:
        """One more change to the set of files (after it is made)."""
        bump(self.path.parent)

    def close(self) -> None:
        if self._map is not None:
            self._word = None
            self._map.close()
            self._map = None


def bump(directory: Path | str) -> None:
    """
    Tell the readers of the board in C{directory} that its set of files
    changed: the count in its C{.generation} file one up, under an C{flock}
    (two gateways starting at once both count).
    """
    path = Path(directory) / _GENERATION
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_size < 8:
            os.ftruncate(fd, 8)
        with mmap.mmap(fd, 8) as m:
            word = ctypes.c_uint64.from_buffer(m)
            word.value = (word.value + 1) & 0xFFFFFFFFFFFFFFFF
            del word
    finally:
        os.close(fd)  # drops the flock


class _Entry:
    """Another gateway's file, mapped read-only."""

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            st = os.fstat(fd)
            if st.st_size != _SIZE:
                raise OSError(f"{path}: not a write-board file")
            self.ino = st.st_ino
            self._map: mmap.mmap | None = mmap.mmap(fd, _SIZE)
        finally:
            os.close(fd)
        self._words = (ctypes.c_uint64 * _WORDS).from_buffer(self._map)
        self.path = path

    def read(self) -> tuple[int, int, int]:
        """(pid, sent, answered): each an aligned 8-byte word, loaded whole."""
        w = self._words
        sent = int(w[1])
        return int(w[0]), sent, int(w[2])

    def close(self) -> None:
        if self._map is not None:
            del self._words
            self._map.close()
            self._map = None


class WriteBoard:
    """
    This gateway's counts (L{sent}, L{answered}) and a view of the others'
    (L{behind}, L{caught_up}).

    @raise OSError: the directory cannot be made or written.
    """

    def __init__(self, directory: Path | str, session: int) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = self.dir / f"{session & 0xFFFFFFFFFFFFFFFF:016x}"
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, _SIZE)
            self._map: mmap.mmap | None = mmap.mmap(fd, _SIZE)
        finally:
            os.close(fd)
        self._words: ctypes.Array[ctypes.c_uint64] | None = (ctypes.c_uint64 * _WORDS).from_buffer(
            self._map
        )
        self._words[0] = os.getpid()
        try:
            self._generation = _Generation(self.dir)
        except OSError:
            del self._words
            self._map.close()
            os.unlink(tmp)
            raise
        os.replace(tmp, self.path)
        self._generation.bump()
        self._sent = 0
        self._answered = 0
        self._others: dict[str, _Entry] = {}
        self._listed = -1

    # -- this gateway's side ---------------------------------------------------------

    def sent(self) -> None:
        """One more write-behind WROTE sent (before the write's reply leaves)."""
        self._sent += 1
        if self._words is not None:
            self._words[1] = self._sent

    def answered(self) -> None:
        """One more write-behind WROTE answered, or failed."""
        self._answered += 1
        if self._words is not None:
            self._words[2] = self._answered

    def close(self) -> None:
        for e in self._others.values():
            e.close()
        self._others.clear()
        if self._map is None:
            return
        self._words = None
        self._map.close()
        self._map = None
        self._generation.close()
        try:
            os.unlink(self.path)
        except OSError:
            return
        bump(self.dir)

    # -- the others' ---------------------------------------------------------------------

    def _refresh(self) -> None:
        """Map the files of gateways started since the last look (the generation moved)."""
        stamp = self._generation.value()
        if stamp == self._listed:
            return
        self._listed = stamp
        try:
            names = {n for n in os.listdir(self.dir) if not n.startswith(".")}
        except OSError:
            return
        names.discard(self.path.name)
        for gone in set(self._others) - names:
            self._others.pop(gone).close()
        for name in names - set(self._others):
            try:
                self._others[name] = _Entry(self.dir / name)
            except (OSError, ValueError):
                continue

    def behind(self) -> list[tuple[str, int]]:
        """
        The other gateways with write-behind WROTEs unanswered now, each with
        the count its answered one must reach: empty (the usual case) when
        every write any of them answered has been applied by the meta server.
        """
        if self._map is None:
            return []
        self._refresh()
        out = []
        for name, e in self._others.items():
            _, sent, answered = e.read()
            if answered < sent:
                out.append((name, sent))
        return out

    def caught_up(self, waits: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """
        Of C{waits} (from L{behind}), those still waited for; a gateway whose
        process is gone (killed) is dropped and its file removed.
        """
        left = []
        for name, target in waits:
            e = self._others.get(name)
            if e is None:
                continue
            pid, _, answered = e.read()
            if answered >= target:
                continue
            if not _alive(pid):
                self._others.pop(name).close()
                try:
                    if os.stat(e.path).st_ino == e.ino:
                        os.unlink(e.path)
                        bump(self.dir)
                except OSError:
                    pass
                continue
            left.append((name, target))
        return left


def clear_dead(directory: Path | str) -> int:
    """
    Remove the files of gateways whose process is gone (the C{--workers}
    supervisor, when a worker exits: it is reaped, so its process id is not
    yet anyone else's); how many were removed.
    """
    d = Path(directory)
    try:
        names = [n for n in os.listdir(d) if not n.startswith(".")]
    except OSError:
        return 0
    removed = 0
    for name in names:
        try:
            e = _Entry(d / name)
        except (OSError, ValueError):
            continue
        try:
            pid = e.read()[0]
        finally:
            e.close()
        if not _alive(pid):
            try:
                os.unlink(d / name)
                removed += 1
            except OSError:
                pass
    if removed:
        bump(d)
    return removed


def _alive(pid: int) -> bool:
    if pid <= 0 or pid >= 2**31:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
