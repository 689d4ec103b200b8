# -*- test-case-name: tests.backend.remote.test_marks -*-
"""
Event marks: how many events a meta server has pushed to a subscribed
gateway, in a small shared file, so a gateway on the same host can tell
without a round trip whether it has heard every change made so far.

A meta server started with C{--event-marks DIR} (C{--workers} does) keeps,
for each subscribed connection, the file C{DIR/<session as 16 hex digits>}:
8 bytes, a little-endian count of the events it pushed on that connection
(counted before the push, even one it drops for a subscriber that does not
read), updated before any later reply leaves the server. A gateway with
C{backend.event_marks} set to the same directory maps that file after its
C{SUBSCRIBE} and counts the events it received and handled on the
connection. When the file's count is no more than its own, every change the
meta server answered before this moment has reached the gateway's caches:
a change made through another gateway and acknowledged to a client was
published before it was answered, and so counted. A read can then take a
file's size from what it cached (docs/workers.rst, "Reads without a round
trip") rather than asking the meta server.

Each subscription gets a new file (written aside, then renamed over the
name): a gateway that maps it after its own SUBSCRIBE answered never sees an
earlier connection's count. The count is an aligned 8-byte word stored and
loaded whole (ctypes), so a reader never sees half of an update.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path

__all__ = ["MarkWriter", "MarkReader", "clear_marks", "mark_path"]

_SIZE = 8


def mark_path(directory: Path | str, session: int) -> Path:
    """The mark file of C{session} under C{directory}."""
    return Path(directory) / f"{session & 0xFFFFFFFFFFFFFFFF:016x}"


def clear_marks(directory: Path | str, session: int | None = None) -> None:
    """
    Remove C{session}'s mark file (None: every file) under C{directory}: a
    meta server starting removes what an earlier one, killed, left, so no
    gateway reads a count nobody updates.
    """
    d = Path(directory)
    try:
        names = [mark_path(d, session).name] if session is not None else os.listdir(d)
    except FileNotFoundError:
        return
    for name in names:
        try:
            os.unlink(d / name)
        except FileNotFoundError:
            pass


class _Mapped:
    """The 8-byte word of a mapped mark file, shared by both sides."""

    _map: mmap.mmap | None
    _word: ctypes.c_uint64 | None

    def _unmap(self) -> bool:
        """Drop the mapping; False if it was already gone."""
        if self._map is None:
            return False
        self._word = None
        self._map.close()
        self._map = None
        return True


class MarkWriter(_Mapped):
    """The meta server's side: a new mark file for one subscribed connection."""

    def __init__(self, directory: Path | str, session: int) -> None:
        self.path = mark_path(directory, session)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{id(self):x}")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, _SIZE)
            self._map = mmap.mmap(fd, _SIZE)
            self._ino = os.fstat(fd).st_ino
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        self._word = ctypes.c_uint64.from_buffer(self._map)

    def set(self, count: int) -> None:
        if self._word is not None:
            self._word.value = count

    def close(self) -> None:
        """Stop counting; remove the file unless a newer subscription's replaced it."""
        if not self._unmap():
            return
        try:
            if os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)
        except OSError:
            pass


class MarkReader(_Mapped):
    """
    A gateway's side: the count in one mark file.

    @raise OSError: no such file (the meta server keeps no marks), or not 8 bytes.
    """

    def __init__(self, directory: Path | str, session: int) -> None:
        path = mark_path(directory, session)
        fd = os.open(path, os.O_RDWR)
        try:
            if os.fstat(fd).st_size != _SIZE:
                raise OSError(f"{path}: not a mark file")
            self._map = mmap.mmap(fd, _SIZE)
        finally:
            os.close(fd)
        self._word = ctypes.c_uint64.from_buffer(self._map)

    def value(self) -> int:
        """The count the meta server wrote last (a huge one once closed: never current)."""
        if self._word is None:
            return 1 << 64
        return int(self._word.value)

    def close(self) -> None:
        self._unmap()
