# -*- test-case-name: tests.s3.test_versions -*-
"""
Older versions of objects, kept beside them where no file client sees them.

In a versioned bucket the current version of key C{a/b/c} is the file C{c} in
directory C{a/b}, as for any object; its older versions and its delete markers
live in that same directory's private store, C{a/b/.cfs-versions/c/<version
id>} (as NooBaa's NSFS keeps C{.versions/}). The vfs lists that store to no
client and lets no NFS or SMB client reach, make, rename or remove it
(L{claudefs_gateway.vfs.PRIVATE_NAMES}); the S3 front end reaches it as the
gateway (root), after checking the signing user's own permission on the
directory it belongs to. Version files keep their owner, so they count
against their owner's quota.

Versions move by hard links, never by copying: a PUT over a versioned object
first links the current file into the store under its version id, then
renames the new object over the key (a reader sees the old object or the new
one, never neither); a DELETE links the current file into the store, unlinks
the key and adds a delete marker (an empty file whose metadata says so).

Version ids are 24 hex digits: the version's creation time in nanoseconds,
then 32 random bits, so they sort by age without reading each file's
metadata; C{null} is the version of objects written while versioning was
never enabled or suspended.

A file changed over NFS or SMB after S3 wrote it is a new version written by
a file client: its id is derived from its modification time, size and inode
(stable, so two listings agree), and the id S3 gave it before is gone with the
bytes it named. A file a file client made is the C{null} version if it is
older than the bucket's versioning, else such a derived version.
"""

from __future__ import annotations

import hashlib
import os
import re

import attrs

from claudefs_gateway import errors
from claudefs_gateway.core.log import Logger
from claudefs_gateway.fstypes import Attributes, FileType, SetAttrs
from claudefs_gateway.s3.bucketconf import BucketConf
from claudefs_gateway.s3.tree import ObjectMeta, Tree
from claudefs_gateway.vfs import Caller
from claudefs_gateway.vfs.origin import Origin

__all__ = [
    "GONE",
    "VERSIONS",
    "NULL",
    "Version",
    "Versions",
    "new_version_id",
    "valid_version_id",
]

VERSIONS = b".cfs-versions"
NULL = "null"
#: What reading a file or store that a concurrent request removed raises
#: (after the lookup that found it). A listing is no snapshot: what went
#: meanwhile is left out of it, as if removed before the listing began.
GONE = (errors.NotFound, errors.Stale)
_VID = re.compile(r"^[0-9a-f]{24}$")


def new_version_id(now_ns: int) -> str:
    """A fresh version id for a version made at C{now_ns}."""
    return f"{now_ns:016x}{os.urandom(4).hex()}"


def valid_version_id(vid: str) -> bool:
    """Whether C{vid} could be a version id of this gateway (else 400 InvalidArgument)."""
    return vid == NULL or bool(_VID.match(vid))


def derived_version_id(a: Attributes) -> str:
    """The id of a version a file client wrote: its time, then a digest of what it is."""
    digest = hashlib.sha256(f"{a.ino}:{a.gen}:{a.mtime_ns}:{a.size}".encode()).hexdigest()
    return f"{a.mtime_ns:016x}{digest[:8]}"


def _time_of(vid: str) -> int | None:
    return int(vid[:16], 16) if _VID.match(vid) else None


@attrs.frozen
class Version:
    """One version of a key: the current file, or one in the store."""

    vid: str
    time_ns: int
    attrs: Attributes
    meta: ObjectMeta
    current: bool

    @property
    def delete_marker(self) -> bool:
        return bool(self.meta.dm)


class Versions:
    """The private version stores of a bucket's directories, through the vfs."""

    _log = Logger()

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.vfs = tree.vfs
        self.rc = tree.root_caller

    # -- the current file's version ----------------------------------------------------

    def effective(self, conf: BucketConf, a: Attributes, meta: ObjectMeta) -> tuple[str, int]:
        """
        (version id, time) of the file now at a key: what S3 gave it, unless a
        file client changed it since (see the module docstring).
        """
        if meta.mtime_ns == a.mtime_ns and meta.size == a.size and not meta.fc:
            return meta.vid or NULL, meta.vt or a.mtime_ns
        since = conf.versioned_since
        if not conf.versioned or since is None or a.mtime_ns < since:
            return NULL, a.mtime_ns
        return derived_version_id(a), a.mtime_ns

    # -- stores ------------------------------------------------------------------------

    async def _child(self, parent: int, name: bytes, create: bool) -> int | None:
        try:
            a = await self.vfs.lookup(self.rc, parent, name)
        except GONE:
            # Without it (or, on a read, without C{parent}, removed since a
            # listing found it: the gateway prunes emptied directories).
            if not create:
                return None
            try:
                a = await self.vfs.mkdir(self.rc, parent, name, 0o700)
            except errors.Exists:
                a = await self.vfs.lookup(self.rc, parent, name)
        if not a.is_dir:
            raise errors.NotDir("a version store is not a directory")
        return a.ino

    async def key_dir(self, dir_ino: int, name: bytes, create: bool = False) -> int | None:
        """The store of the versions of file C{name} in directory C{dir_ino}."""
        store = await self._child(dir_ino, VERSIONS, create)
        if store is None:
            return None
        return await self._child(store, name, create)

    async def names(self, dir_ino: int) -> list[bytes]:
        """Names in directory C{dir_ino} that have older versions or delete markers."""
        store = await self._child(dir_ino, VERSIONS, False)
        if store is None:
            return []
        try:
            entries = await self.tree.read_dir(self.rc, store)
        except GONE:
            # Removed since its lookup (L{tidy} of its last version): none.
            return []
        return [n for n, e in entries if e.type is FileType.DIR]

    async def older(self, dir_ino: int, name: bytes) -> list[Version]:
        """The versions of C{name} in the store, newest first."""
        kd = await self.key_dir(dir_ino, name)
        if kd is None:
            return []
        out = []
        try:
            entries = await self.tree.read_dir(self.rc, kd)
        except GONE:
            return []  # its last version removed since the lookup (L{tidy})
        for vname, e in entries:
            if e.type is not FileType.REG:
                continue
            vid = vname.decode("ascii", "replace")
            try:
                a = e.attrs or await self.vfs.getattr(self.rc, e.ino)
                meta = await self.tree.meta(self.rc, a)
            except GONE:
                continue  # removed since the store was listed
            t = _time_of(vid)
            if t is None:
                t = meta.vt or a.mtime_ns
            out.append(Version(vid, t, a, meta, False))
        out.sort(key=lambda v: (v.time_ns, v.vid), reverse=True)
        return out

    async def find(self, dir_ino: int, name: bytes, vid: str) -> Version | None:
        """Version C{vid} of C{name} in the store, if it is there."""
        kd = await self.key_dir(dir_ino, name)
        if kd is None:
            return None
        try:
            a = await self.vfs.lookup(self.rc, kd, vid.encode("ascii"))
        except errors.NotFound:
            return None
        meta = await self.tree.meta(self.rc, a)
        return Version(vid, _time_of(vid) or meta.vt or a.mtime_ns, a, meta, False)

    # -- changes -----------------------------------------------------------------------

    async def preserve(
        self, dir_ino: int, name: bytes, current: Attributes, vid: str, time_ns: int
    ) -> None:
        """
        Keep the file now at C{name} as version C{vid}: link it into the store
        (replacing an older C{null} version there) and record its id.
        """
        kd = await self.key_dir(dir_ino, name, create=True)
        assert kd is not None
        vname = vid.encode("ascii")
        try:
            await self.vfs.remove(self.rc, kd, vname)
        except errors.NotFound:
            pass
        meta = await self.tree.meta(self.rc, current)
        if (
            meta.vid != (None if vid == NULL else vid)
            or meta.fc
            or meta.mtime_ns != current.mtime_ns
            or meta.size != current.size
        ):
            # Record the id it is kept under (a file client's version gets one now).
            meta.vid = None if vid == NULL else vid
            meta.vt, meta.fc = time_ns, False
            if meta.mtime_ns != current.mtime_ns or meta.size != current.size:
                meta.etag = None
            meta.mtime_ns, meta.size = current.mtime_ns, current.size
            await self.vfs.meta_set(self.rc, current.ino, b"s3", meta.encode())
        await self.vfs.link(self.rc, current.ino, kd, vname)

    async def add_marker(
        self, caller: Caller, dir_ino: int, name: bytes, vid: str, time_ns: int
    ) -> None:
        """A delete marker C{vid} for C{name}, owned by the caller (who deleted)."""
        kd = await self.key_dir(dir_ino, name, create=True)
        assert kd is not None
        vname = vid.encode("ascii")
        try:
            await self.vfs.remove(self.rc, kd, vname)
        except errors.NotFound:
            pass
        a = await self.vfs.create(self.rc, kd, vname, 0o600, exclusive=True)
        await self.vfs.meta_set(
            self.rc,
            a.ino,
            b"s3",
            ObjectMeta(vid=None if vid == NULL else vid, vt=time_ns, dm=True).encode(),
        )
        await self.vfs.setattr(self.rc, a.ino, SetAttrs(uid=caller.cred.uid, gid=caller.cred.gid))

    async def remove(
        self, dir_ino: int, name: bytes, vid: str, origin: Origin | None = None
    ) -> bool:
        """
        Remove version C{vid} of C{name} from the store; whether it was there.
        C{origin} may allow a bypass of governance retention (vfs/worm.py).
        """
        kd = await self.key_dir(dir_ino, name)
        if kd is None:
            return False
        try:
            await self.vfs.remove(self.rc, kd, vid.encode("ascii"), origin)
        except errors.NotFound:
            return False
        await self.tidy(dir_ino, name)
        return True

    async def promote(self, dir_ino: int, name: bytes, v: Version) -> None:
        """Make stored version C{v} the current file again (a newer one was deleted)."""
        kd = await self.key_dir(dir_ino, name)
        assert kd is not None
        await self.vfs.link(self.rc, v.attrs.ino, dir_ino, name)
        await self.vfs.remove(self.rc, kd, v.vid.encode("ascii"))
        await self.tidy(dir_ino, name)

    async def tidy(self, dir_ino: int, name: bytes) -> None:
        """Remove a key's store once empty, and the directory's store once that is."""
        try:
            store = await self._child(dir_ino, VERSIONS, False)
            if store is None:
                return
            try:
                await self.vfs.rmdir(self.rc, store, name)
            except (errors.NotEmpty, errors.NotFound):
                return
            await self.vfs.rmdir(self.rc, dir_ino, VERSIONS)
        except (errors.NotEmpty, errors.NotFound):
            pass

    async def latest_after_current_gone(self, dir_ino: int, name: bytes) -> Version | None:
        """The newest stored version of C{name}, if any (what is latest with no current file)."""
        older = await self.older(dir_ino, name)
        return older[0] if older else None
