# -*- test-case-name: tests.s3.test_listing -*-
"""
ListObjects over a directory tree, in exact S3 key order.

S3 lists keys in UTF-8 byte order. In a directory, a file C{name} has key
C{…/name} and everything under a subdirectory C{name} has keys starting
C{…/name/}; sorting each directory's entries by C{name} (files) or C{name + "/"}
(directories) and walking depth first therefore yields keys in exactly S3's
order (C{a-b} < C{a/x} < C{a0}, as bytes). The walk starts at the directory
the prefix names, skips whole subtrees that sort before the marker, and with
the C{/} delimiter never descends at all: each subdirectory is one common
prefix. Other delimiters roll keys up as S3 does.

A directory is itself the key C{name/} when it was made as a directory marker
(C{PUT name/}) or when it is empty and was not made by the gateway (an empty
directory made over NFS or SMB would otherwise be invisible).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import attrs

from claudefs_gateway import errors
from claudefs_gateway.fstypes import Attributes, FileType
from claudefs_gateway.s3.versions import GONE, Versions
from claudefs_gateway.vfs import Caller

__all__ = ["Item", "Page", "Lister"]


@attrs.frozen
class Item:
    """
    A key (with its file or directory attributes) or a common prefix.

    @ivar parent: the directory holding the key's file (for its older versions).
    @ivar current: the key has a file now; false for a key with only older
        versions or delete markers (listed only with versions).
    """

    key: bytes
    attrs: Attributes | None = None
    prefix: bool = False
    parent: int = 0
    current: bool = True


@attrs.frozen
class _Entry:
    """A directory entry as the walk sees it (a versions-only name has no file)."""

    name: bytes
    ino: int
    type: FileType
    attrs: Attributes | None
    parent: int
    current: bool = True


@attrs.frozen
class Page:
    """One page of a listing; C{truncated} if more items follow the last."""

    items: list[Item]
    truncated: bool

    @property
    def last(self) -> bytes | None:
        return self.items[-1].key if self.items else None


class Lister:
    """
    @param tree: the L{claudefs_gateway.s3.tree.Tree}.
    @param caller: who lists (needs read and search permission on each directory).
    """

    def __init__(
        self, tree: Any, caller: Caller, bucket: Attributes, with_versions: bool = False
    ) -> None:
        self.tree = tree
        self.vfs = tree.vfs
        self.caller = caller
        self.bucket = bucket
        self.with_versions = with_versions

    async def page(
        self, prefix: bytes, delimiter: bytes | None, marker: bytes | None, max_keys: int
    ) -> Page:
        """
        Up to C{max_keys} keys and common prefixes after C{marker}, starting with C{prefix}.
        """
        if max_keys <= 0:
            return Page([], False)
        slash = prefix.rfind(b"/")
        dir_part, name_filter = prefix[: slash + 1], prefix[slash + 1 :]
        start = await self._resolve(dir_part)
        if start is None:
            return Page([], False)
        if marker is not None and marker < prefix:
            marker = None
        rollup_dirs = delimiter == b"/"
        items: list[Item] = []
        truncated = False
        last_cp: bytes | None = None
        walk = self._top(start, dir_part, name_filter, marker, rollup_dirs)
        try:
            async for it in walk:
                if delimiter:
                    rem = it.key[len(prefix) :]
                    idx = rem.find(delimiter)
                    if idx >= 0:
                        cp = prefix + rem[: idx + len(delimiter)]
                        if cp == marker or cp == last_cp:
                            continue
                        last_cp = cp
                        it = Item(cp, None, True)
                if len(items) == max_keys:
                    truncated = True
                    break
                items.append(it)
        finally:
            await walk.aclose()
        return Page(items, truncated)

    async def _resolve(self, dir_part: bytes) -> Attributes | None:
        cur = self.bucket
        for seg in dir_part.split(b"/")[:-1]:
            if not seg:
                return None
            try:
                cur = await self.vfs.lookup(self.caller, cur.ino, seg)
            except (errors.NotFound, errors.NotDir):
                return None
            if not cur.is_dir:
                return None
        return cur

    async def _sorted(self, ino: int) -> list[tuple[bytes, bytes, Any]]:
        entries = await self.tree.read_dir(self.caller, ino)
        out = []
        files = set()
        for name, e in entries:
            if e.type is FileType.DIR:
                out.append((name + b"/", name, _Entry(name, e.ino, e.type, e.attrs, ino)))
            elif e.type is FileType.REG:
                files.add(name)
                out.append((name, name, _Entry(name, e.ino, e.type, e.attrs, ino)))
        if self.with_versions:
            # Keys with older versions but no file now (deleted: a delete marker is latest).
            for name in await Versions(self.tree).names(ino):
                if name not in files:
                    out.append((name, name, _Entry(name, 0, FileType.REG, None, ino, False)))
        out.sort(key=lambda t: t[0])
        return out

    async def _dir_is_key(self, d: Attributes, empty: bool) -> bool:
        try:
            m = await self.tree.meta(self.caller, d)
        except GONE:
            return False  # removed since it was listed: no key
        return m.dir == "marker" or (empty and m.dir is None)

    async def _top(
        self,
        start: Attributes,
        dir_key: bytes,
        name_filter: bytes,
        marker: bytes | None,
        rollup_dirs: bool,
    ) -> AsyncGenerator[Item, None]:
        entries = await self._sorted(start.ino)
        if dir_key and not name_filter and (marker is None or dir_key > marker):
            # The prefix names a directory: it may itself be a key ("photos/").
            if await self._dir_is_key(start, not entries):
                yield Item(dir_key, start)
        async for it in self._walk(entries, dir_key, name_filter, marker, rollup_dirs):
            yield it

    async def _walk(
        self,
        entries: list[tuple[bytes, bytes, Any]],
        dir_key: bytes,
        name_filter: bytes,
        marker: bytes | None,
        rollup_dirs: bool,
    ) -> AsyncGenerator[Item, None]:
        for _, name, e in entries:
            if name_filter and not name.startswith(name_filter):
                continue
            full = dir_key + name
            if e.type is FileType.REG:
                if marker is None or full > marker:
                    yield Item(full, e.attrs, parent=e.parent, current=e.current)
                continue
            dkey = full + b"/"
            inside = marker is not None and marker.startswith(dkey)
            if marker is not None and not inside and dkey <= marker:
                continue
            try:
                d = e.attrs or await self.vfs.getattr(self.caller, e.ino)
                sub = await self._sorted(e.ino)
            except (errors.Access, errors.NotDir, *GONE):
                continue  # unreadable or vanished: nothing of it is listed
            if rollup_dirs:
                if not sub and not await self._dir_is_key(d, True):
                    continue
                if inside and dkey != marker:
                    if not await self._any_after(sub, dkey, marker):
                        continue
                yield Item(dkey, None, True)
                continue
            if (marker is None or dkey > marker) and await self._dir_is_key(d, not sub):
                yield Item(dkey, d)
            inner = self._walk(sub, dkey, b"", marker if inside else None, False)
            try:
                async for it in inner:
                    yield it
            finally:
                await inner.aclose()

    async def _any_after(
        self, entries: list[tuple[bytes, bytes, Any]], dir_key: bytes, marker: bytes | None
    ) -> bool:
        inner = self._walk(entries, dir_key, b"", marker, False)
        try:
            async for _ in inner:
                return True
        finally:
            await inner.aclose()
        return False
