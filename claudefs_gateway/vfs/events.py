# -*- test-case-name: tests.vfs.test_events -*-
"""
Change events: what changed in which directory, as the vfs makes each change.

Every mutation through the vfs, from every protocol, emits one (SMB
CHANGE_NOTIFY watches directories through them; caches that are not the
vfs's own drop entries on them). Delivery is synchronous and in order,
right after the change is durable; a subscriber that raises is logged and
kept.

A change names the directory it happened in and the entry's name there. The
listeners of a directory that is removed hear of its removal too (a change
whose C{ino} is the directory they watch). For
changes to a file's data or attributes the vfs names the directory and name
it last saw the file under (L{claudefs_gateway.interfaces.IVFS.name_of}); a
change to a file this gateway has not seen by name since it started (an NFS
client writing through a handle it kept across a gateway restart, before any
LOOKUP) has no directory to report and is not emitted.

Changes made through another gateway on a shared store arrive without names
(the meta server's change event carries the directory and the inode): they
are emitted as L{Action.RESCAN} of the directory, which an SMB watcher
answers with C{NOTIFY_ENUM_DIR} ("read it again") and the SMB case index
with a scan at its next miss.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import attrs

from zope.interface import implementer

from claudefs_gateway.core.log import Logger
from claudefs_gateway.interfaces import IChangeEvents

__all__ = ["Action", "Change", "ChangeEvents", "What"]


class Action(enum.Enum):
    ADDED = "added"
    REMOVED = "removed"
    MODIFIED = "modified"  # data or attributes of the entry changed: see Change.what
    RENAMED_FROM = "renamed_from"
    RENAMED_TO = "renamed_to"
    #: the directory's entries changed through another gateway (a remote
    #: backend's change event names the directory, not the entry): what a
    #: listener keeps of its names must be read again. C{name} is empty and
    #: C{ino} is the directory; C{dir} 0 means every directory (events may
    #: have been missed).
    RESCAN = "rescan"


class What(enum.IntFlag):
    """What a C{MODIFIED} change touched (SMB maps these to its completion-filter bits)."""

    NONE = 0
    #: the data (a write, a hole punched)
    DATA = 1
    #: the size (a write past the end, a truncation, an allocation)
    SIZE = 2
    #: mode or DOS attributes
    ATTRIBUTES = 4
    #: owner, group or mode bits that decide access (SMB: the security descriptor)
    SECURITY = 8
    #: access, modification or creation times set explicitly
    TIMES = 16
    #: extended attributes (SMB: EAs)
    XATTR = 32


@attrs.frozen
class Change:
    """
    @ivar dir: the directory the change happened in.
    @ivar name: the entry's name in C{dir}.
    @ivar ino: the entry's inode.
    @ivar what: for C{MODIFIED}, what changed.
    """

    dir: int
    action: Action
    name: bytes
    ino: int
    what: What = What.NONE


Listener = Callable[[Change], None]


@implementer(IChangeEvents)
class ChangeEvents:
    _log = Logger()

    def __init__(self) -> None:
        self._by_dir: dict[int, list[Listener]] = {}
        self._everything: list[Listener] = []
        # Listeners of every directory that want its names only (the SMB
        # case index): a write or an attribute change builds no Change for them.
        self._names_everywhere: list[Listener] = []

    def subscribe(
        self, dir_ino: int | None, listener: Listener, modified: bool = True
    ) -> Callable[[], None]:
        """
        Call C{listener} for changes in C{dir_ino} (None: every directory);
        returns an unsubscriber. C{modified=False} (every directory only):
        not for L{Action.MODIFIED} changes, which are then not even built
        while no other listener wants them.
        """
        if dir_ino is None:
            bucket = self._everything if modified else self._names_everywhere
        else:
            bucket = self._by_dir.setdefault(dir_ino, [])
        bucket.append(listener)

        def unsubscribe() -> None:
            if listener in bucket:
                bucket.remove(listener)
            if dir_ino is not None and not bucket:
                self._by_dir.pop(dir_ino, None)

        return unsubscribe

    @property
    def quiet(self) -> bool:
        """No one is listening (the vfs skips building changes then)."""
        return not self._by_dir and not self._everything and not self._names_everywhere

    def wants(self, dir_ino: int) -> bool:
        """Whether anyone listens to changes in C{dir_ino}."""
        return bool(self._everything or self._names_everywhere) or dir_ino in self._by_dir

    def wants_modified(self, dir_ino: int) -> bool:
        """Whether anyone listens to L{Action.MODIFIED} changes in C{dir_ino}."""
        return bool(self._everything) or dir_ino in self._by_dir

    def rescan(self, dir_ino: int) -> None:
        """
        Tell the listeners of C{dir_ino} (0: every listener) that its entries
        changed in ways not known here (L{Action.RESCAN}).
        """
        if dir_ino:
            if self.wants(dir_ino):
                self.emit(Change(dir_ino, Action.RESCAN, b"", dir_ino))
            return
        for d in list(self._by_dir):
            for listener in list(self._by_dir.get(d, ())):
                self._deliver(listener, Change(d, Action.RESCAN, b"", d))
        for listener in [*self._everything, *self._names_everywhere]:
            self._deliver(listener, Change(0, Action.RESCAN, b"", 0))

    def _deliver(self, listener: Listener, change: Change) -> None:
        try:
            listener(change)
        except Exception:
            self._log.failure("change listener failed")

    def emit(self, change: Change) -> None:
        listeners = self._by_dir.get(change.dir)
        if change.action is Action.REMOVED and change.ino != change.dir:
            # A removed directory's own listeners hear of its removal too.
            itself = self._by_dir.get(change.ino)
            if itself:
                listeners = [*(listeners or ()), *itself]
        everywhere = self._everything
        if change.action is not Action.MODIFIED and self._names_everywhere:
            everywhere = [*everywhere, *self._names_everywhere]
        if not listeners and not everywhere:
            return
        for listener in [*(listeners or ()), *everywhere]:
            self._deliver(listener, change)
