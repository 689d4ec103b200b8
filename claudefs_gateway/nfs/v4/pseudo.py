# -*- test-case-name: tests.nfs.v4.test_pseudo -*-
"""
The NFSv4 pseudo-filesystem (RFC 8881 §7.3): the read-only directories that
join the exports into one tree under the root file handle.

NFSv4 clients mount C{HOST:/export} by walking from PUTROOTFH with LOOKUP,
so the server must present the directories above each export even though
they are not exported themselves. With exports C{/export} and
C{/data/projects}, the root holds C{export} (the export's own root) and
C{data}, a pseudo directory holding C{projects}. Pseudo directories are
mode 0555, owned by root, in a file system of their own (fsid (0, 1)), and
list only the paths that lead to an export the client's address may use.
An export at C{/} is the root itself: then there is no pseudo directory at
all, and other exports are ordinary directories inside it.

Pseudo handles are 24 bytes (a marker and a digest of the path), so they
stay valid across restarts and never collide with the vfs's 33-byte handles.
"""

from __future__ import annotations

import hashlib

import attrs

from claudefs_gateway.fstypes import Attributes, FileType
from claudefs_gateway.vfs import ExportInfo

__all__ = ["PseudoFS", "PseudoNode", "PSEUDO_FSID", "is_pseudo_handle"]

_MARK = b"\x00cfspsd1"
_HANDLE_SIZE = len(_MARK) + 16
#: The pseudo-filesystem's fsid (exports are (export id, 0)).
PSEUDO_FSID = (0, 1)


def is_pseudo_handle(fh: bytes) -> bool:
    return len(fh) == _HANDLE_SIZE and fh.startswith(_MARK)


def _handle(path: str) -> bytes:
    return _MARK + hashlib.sha256(path.encode("utf-8", "surrogateescape")).digest()[:16]


@attrs.define(eq=False)
class PseudoNode:
    """
    One pseudo directory.

    @ivar children: name to pseudo directory or export.
    @ivar mount_ids: the pseudo fileid of each export mounted here
        (C{mounted_on_fileid} of the export's root).
    """

    path: str
    fileid: int
    parent: PseudoNode | None
    handle: bytes
    children: dict[bytes, PseudoNode | ExportInfo] = attrs.Factory(dict)
    mount_ids: dict[int, int] = attrs.Factory(dict)


class PseudoFS:
    """
    The pseudo tree over a set of exports (see module docstring).

    @param exports: the NFS exports (with their root inodes).
    @param start_ns: the times pseudo directories report.
    """

    def __init__(self, exports: list[ExportInfo], start_ns: int) -> None:
        self.start_ns = start_ns
        self.root_export: ExportInfo | None = None
        self._nodes: dict[bytes, PseudoNode] = {}
        self._parent_of: dict[int, PseudoNode] = {}
        next_id = [1]

        def new(path: str, parent: PseudoNode | None) -> PseudoNode:
            node = PseudoNode(path, next_id[0], parent, _handle(path))
            next_id[0] += 1
            self._nodes[node.handle] = node
            return node

        self.root = new("/", None)
        for e in sorted(exports, key=lambda e: e.path):
            parts = [p for p in e.path.split("/") if p]
            if not parts:
                self.root_export = e
                continue
            node = self.root
            ok = True
            for i, part in enumerate(parts[:-1]):
                name = part.encode("utf-8", "surrogateescape")
                child = node.children.get(name)
                if child is None:
                    child = new("/" + "/".join(parts[: i + 1]), node)
                    node.children[name] = child
                if not isinstance(child, PseudoNode):
                    # Nested inside another export: reached through that export.
                    ok = False
                    break
                node = child
            if not ok:
                continue
            last = parts[-1].encode("utf-8", "surrogateescape")
            if last in node.children:
                continue
            node.children[last] = e
            node.mount_ids[e.id] = next_id[0]
            next_id[0] += 1
            self._parent_of[e.id] = node

    def node(self, handle: bytes) -> PseudoNode | None:
        """The pseudo directory a pseudo handle names, or L{None} (stale)."""
        if self.root_export is not None:
            return None
        return self._nodes.get(handle)

    def parent_of(self, export: ExportInfo) -> PseudoNode | None:
        """The pseudo directory an export's root is reached through."""
        return self._parent_of.get(export.id)

    def mounted_on(self, export: ExportInfo) -> int:
        """C{mounted_on_fileid} of an export's root."""
        node = self._parent_of.get(export.id)
        if node is None:
            return 0
        return node.mount_ids.get(export.id, 0)

    @staticmethod
    def _leads_to_allowed(item: PseudoNode | ExportInfo, host: str) -> bool:
        if isinstance(item, ExportInfo):
            return not host or item.rules.allows(host)
        return any(PseudoFS._leads_to_allowed(x, host) for x in item.children.values())

    def lookup(self, node: PseudoNode, name: bytes, host: str) -> PseudoNode | ExportInfo | None:
        """A child of a pseudo directory the client may see, or L{None}."""
        got = node.children.get(name)
        if got is None or not self._leads_to_allowed(got, host):
            return None
        return got

    def listing(self, node: PseudoNode, host: str) -> list[tuple[bytes, PseudoNode | ExportInfo]]:
        """The entries of a pseudo directory the client may see, by name."""
        return [
            (name, item)
            for name, item in sorted(node.children.items())
            if self._leads_to_allowed(item, host)
        ]

    def attrs(self, node: PseudoNode) -> Attributes:
        """A pseudo directory's attributes (read-only, root-owned, mode 0555)."""
        subdirs = sum(1 for x in node.children.values())
        t = self.start_ns
        return Attributes(
            ino=node.fileid,
            gen=0,
            type=FileType.DIR,
            mode=0o555,
            nlink=2 + subdirs,
            uid=0,
            gid=0,
            size=4096,
            used=4096,
            rdev=(0, 0),
            atime_ns=t,
            mtime_ns=t,
            ctime_ns=t,
            btime_ns=t,
            change=1,
        )
