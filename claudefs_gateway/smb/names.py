# -*- test-case-name: tests.smb.test_names -*-
"""
Case-insensitive names over a case-sensitive namespace.

Windows (and every SMB client written for it) expects names to match
whatever their case, as NTFS does, while the store keeps names exactly as
they were created (case-preserving), as NFS and S3 need. So a name is first
looked up as the client spelt it; only when that misses is the directory
searched for the same name in another case, through L{CaseIndex}: one
uppercase-name map per recently used directory, built by one scan and kept
current by the vfs's change events (which every protocol's changes pass
through), so a miss costs a dictionary lookup rather than a scan. This is
what Samba does for SMB2 by default (C{case sensitive = auto}).

On a shared store (C{backend: remote}, C{--workers}) another gateway's
changes arrive as a directory's L{Action.RESCAN}, without names: the
directory's index is dropped and scanned again at its next use. The index is
trusted only while the vfs has heard every change acknowledged anywhere
(C{changes_heard}); otherwise a miss scans.

When a directory holds names that differ only in case (made over NFS), the
exact spelling wins, then the first one found.
"""

from __future__ import annotations

from collections import OrderedDict

from claudefs_gateway import errors
from claudefs_gateway.core.log import Logger
from claudefs_gateway.interfaces import IVFS
from claudefs_gateway.vfs import Action, Caller, Change

__all__ = ["fold", "CaseIndex"]


def fold(name: bytes) -> str:
    """
    The case-insensitive key of a name: uppercase, character by character
    (Windows' upcase table maps one character to one; C{"ß".upper()} would
    give two, so such characters are kept).
    """
    text = name.decode("utf-8", "surrogateescape")
    if text.isascii():
        # ASCII maps one to one: no walk character by character.
        return text.upper()
    return "".join(u if len(u := ch.upper()) == 1 else ch for ch in text)


class CaseIndex:
    """
    Folded name → the names stored, for recently used directories.

    @param max_dirs: directories kept (least recently used go first).
    @param max_entries: a directory with more entries is searched by a scan
        each time instead of being kept.
    @param max_total: names kept across all directories (bounded memory).
    """

    _log = Logger()

    def __init__(
        self,
        vfs: IVFS,
        max_dirs: int = 256,
        max_entries: int = 100_000,
        max_total: int = 200_000,
    ) -> None:
        self._vfs = vfs
        self._dirs: OrderedDict[int, dict[str, list[bytes]]] = OrderedDict()
        self._sizes: dict[int, int] = {}
        self._max_dirs = max_dirs
        self._max_entries = max_entries
        self._max_total = max_total
        self._total = 0
        self.scans = 0
        # Names only: a write or an attribute change is nothing to the index.
        self.unsubscribe = vfs.events.subscribe(None, self._changed, modified=False)

    async def find(self, caller: Caller, dir_ino: int, name: bytes) -> bytes | None:
        """The stored spelling of C{name} in C{dir_ino} in another case, or None."""
        key = fold(name)
        index = self._dirs.get(dir_ino)
        if index is not None and not self._current():
            # Another gateway may have made the name, and we have not heard.
            self._forget(dir_ino)
            index = None
        if index is not None:
            self._dirs.move_to_end(dir_ino)
            names = index.get(key)
            return names[0] if names else None
        index = await self._scan(caller, dir_ino)
        if index is None:
            return None
        names = index.get(key)
        return names[0] if names else None

    def known_absent(self, dir_ino: int, name: bytes) -> bool:
        """
        Whether C{dir_ino} is indexed here and holds C{name} in no case: a
        create may then skip the lookup that would only miss (it still
        creates exclusively, so a name this index has not heard of, made
        through another gateway, fails with Exists and is looked up then).
        Never scans: False when the directory is not indexed.
        """
        index = self._dirs.get(dir_ino)
        return index is not None and fold(name) not in index and self._current()

    def _current(self) -> bool:
        heard = getattr(self._vfs, "changes_heard", None)
        return heard is None or bool(heard())

    async def _scan(self, caller: Caller, dir_ino: int) -> dict[str, list[bytes]] | None:
        self.scans += 1
        index: dict[str, list[bytes]] = {}
        cookie, verifier, count = 0, b"\x00" * 8, 0
        while True:
            try:
                page = await self._vfs.readdir(caller, dir_ino, cookie, verifier, 1024, False)
            except errors.BadCookie:
                return None
            for e in page.entries:
                index.setdefault(fold(e.name), []).append(e.name)
                cookie = e.cookie
                count += 1
            verifier = page.verifier
            if page.eof or not page.entries:
                break
        if count <= self._max_entries:
            self._dirs[dir_ino] = index
            self._sizes[dir_ino] = count
            self._total += count
            while len(self._dirs) > self._max_dirs or self._total > self._max_total:
                self._forget(next(iter(self._dirs)))
        return index

    def _forget(self, dir_ino: int) -> None:
        self._dirs.pop(dir_ino, None)
        self._total -= self._sizes.pop(dir_ino, 0)

    def _changed(self, change: Change) -> None:
        if change.action is Action.RESCAN:
            if change.dir:
                self._forget(change.dir)
            else:
                self._dirs.clear()
                self._sizes.clear()
                self._total = 0
            return
        if change.action is Action.REMOVED:
            self._forget(change.ino)
        index = self._dirs.get(change.dir)
        if index is None:
            return
        key = fold(change.name)
        if change.action in (Action.ADDED, Action.RENAMED_TO):
            names = index.setdefault(key, [])
            if change.name not in names:
                names.append(change.name)
        elif change.action in (Action.REMOVED, Action.RENAMED_FROM):
            names = index.get(key, [])
            if change.name in names:
                names.remove(change.name)
            if not names:
                index.pop(key, None)
