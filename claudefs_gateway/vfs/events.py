# -*- test-case-name: tests.vfs.test_vfs -*-
"""
Change events: what changed in which directory, as the vfs makes each change.

SMB CHANGE_NOTIFY watches directories through this; it is also where any
cache that is not the vfs's own can learn to drop entries. Delivery is
synchronous and in order, right after the change is durable; a subscriber
that raises is logged and kept.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import attrs

from claudefs_gateway.core.log import Logger

__all__ = ["Action", "Change", "ChangeEvents"]


class Action(enum.Enum):
    ADDED = "added"
    REMOVED = "removed"
    MODIFIED = "modified"  # data or attributes of the entry changed
    RENAMED_FROM = "renamed_from"
    RENAMED_TO = "renamed_to"


@attrs.frozen
class Change:
    dir: int
    action: Action
    name: bytes
    ino: int


Listener = Callable[[Change], None]


class ChangeEvents:
    _log = Logger()

    def __init__(self) -> None:
        self._by_dir: dict[int, list[Listener]] = {}
        self._everything: list[Listener] = []

    def subscribe(self, dir_ino: int | None, listener: Listener) -> Callable[[], None]:
        """Call C{listener} for changes in C{dir_ino} (None: every directory); returns an unsubscriber."""
        bucket = self._everything if dir_ino is None else self._by_dir.setdefault(dir_ino, [])
        bucket.append(listener)

        def unsubscribe() -> None:
            if listener in bucket:
                bucket.remove(listener)
            if dir_ino is not None and not bucket:
                self._by_dir.pop(dir_ino, None)

        return unsubscribe

    def emit(self, dir_ino: int, action: Action, name: bytes, ino: int) -> None:
        listeners = self._by_dir.get(dir_ino)
        if not listeners and not self._everything:
            return
        change = Change(dir_ino, action, name, ino)
        for listener in [*(listeners or ()), *self._everything]:
            try:
                listener(change)
            except Exception:
                self._log.failure("change listener failed")
