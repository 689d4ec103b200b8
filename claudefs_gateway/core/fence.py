# -*- test-case-name: tests.backend.test_log_sync,tests.nfs.v3.test_fence -*-
"""
L{Fence}: a reply's wait for the log sync of a change the store answered
before that sync returned.

Why: at queue depth 1 an NFSv3 CREATE, REMOVE or COMMIT is a wait for the
store's log sync with reactor work on either side. The work after it (the
vfs's bookkeeping, the wcc attributes, the reply's encoding) depends on the
change's result, not on its durability; only the reply's leaving does (RFC
1813's stable storage). A caller that hands a fence to such a change lets the
store answer as soon as the change is committed, its sync in flight, and the
fence then holds that sync: the caller does its work meanwhile and sends its
reply once the sync returned, failing it (as an I/O error) if the sync
failed. A store that cannot, or a change that needed no sync, leaves the
fence empty and answers once durable, as without one.

Only a caller that waits on the fence before anything of the change leaves
the gateway may pass one; other clients may see the change meanwhile (as
they see a local file system's change before its journal commit), never
its acknowledgement.
"""

from __future__ import annotations

from twisted.internet import defer

__all__ = ["Fence"]


class Fence:
    """
    The sync a reply waits for: C{sync} is None (nothing to wait for), or a
    Deferred that fires with None once the change is durable, or fails with
    the store's error if its sync failed.
    """

    __slots__ = ("sync",)

    def __init__(self) -> None:
        self.sync: defer.Deferred[None] | None = None
