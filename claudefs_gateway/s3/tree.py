# -*- test-case-name: tests.s3.test_tree -*-
"""
Buckets and objects on the shared file tree, through the vfs only.

The mapping (``docs/s3.rst``):

 - a bucket is a directory at the top of C{s3.root};
 - key C{a/b/c} is file C{c} in directory C{a/b} of the bucket, made as
   needed when the object is written and removed (if the gateway made them
   and they are empty) when the last object under them is deleted;
 - key C{a/b/} (a "directory marker") is the directory C{a/b} itself;
 - so object C{a} and object C{a/b} cannot both exist: the second write is
   refused with C{409 KeyConflict} rather than silently replacing anything.

Objects are written to a temporary file in a staging area outside every
bucket (C{/.cfs-s3} at the top of the namespace, not reachable through S3,
locked to root and each user's own subdirectory) and renamed into place only
when the body is complete and verified: a reader sees the old object or the
new one, never a part, and a refused upload leaves nothing behind.

Per-object metadata S3 keeps (content type, C{x-amz-meta-*}, Cache-Control and
friends, the ETag and checksums) lives in one hidden vfs attribute
(C{meta_set}). The ETag is the MD5 of the content; for files written over NFS or
SMB it is computed when first asked for and cached with the modification time
and size it belongs to, so a later write over any protocol invalidates it.
(The inode's change counter cannot be the cache key here: storing the ETag,
and the rename into place, move it too.)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.python.failure import Failure

from claudefs_gateway import errors
from claudefs_gateway.core.log import Logger
from claudefs_gateway.fstypes import Attributes, Credentials, FileType, SetAttrs
from claudefs_gateway.interfaces import IVFS
from claudefs_gateway.s3.bucketconf import BUCKET_KEY, BucketConf
from claudefs_gateway.s3.errors import S3Error, key_conflict
from claudefs_gateway.s3.keys import Key, bucket_name_ok
from claudefs_gateway.vfs import PRIVATE_NAMES, Caller, inline

__all__ = ["Tree", "ObjectMeta", "META_KEY", "STAGING", "EMPTY_MD5"]

META_KEY = b"s3"
STAGING = b".cfs-s3"
EMPTY_MD5 = hashlib.md5(b"").hexdigest()
#: C{s3.temp_max_age_secs}' default: see L{Tree.open}.
TEMP_MAX_AGE = 3600.0
ROOT = Credentials(0, 0)

# New objects are private (S3's default ACL): their owner alone reads them. A
# bucket is private too, but keeps other-execute so an object its own ACL
# opens can be reached without listing the bucket (s3/acl.py).
FILE_MODE = 0o600
DIR_MODE = 0o755
BUCKET_MODE = 0o711
HASH_BLOCK = 1024 * 1024
# Times a commit or directory marker is retried when a concurrent delete prunes
# a directory it was about to use.
RACE_RETRIES = 5
# Buckets whose stored settings are kept (bucket_conf); past this, all are dropped.
CONF_CACHE = 4096

# Response headers S3 stores with an object and returns on GET/HEAD.
STORED_HEADERS = (
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "expires",
)


#: json.dumps with these options builds an encoder per call; every PUT encodes.
_META_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


@attrs.define
class ObjectMeta:
    """
    What S3 keeps about an object besides its bytes (JSON in one hidden attribute).

    @ivar etag: the unquoted ETag, valid while the file has C{mtime_ns} and C{size}.
    @ivar checksums: algorithm → base64 value (C{…-N} for a composite multipart one).
    @ivar parts: multipart objects: part sizes, run-length encoded [[size, count], …].
    @ivar dir: for directories: C{marker} (an S3 C{key/} object) or C{auto}
        (made by the gateway for nested keys; removed again when empty).
    @ivar vid: the version id S3 gave this content (None: the C{null} version).
    @ivar vt: when that version was made (ns).
    @ivar dm: a delete marker (an empty file in a version store).
    @ivar fc: the content was written by a file client (NFS, SMB), not S3: the
        ETag was computed from it, and no S3 version id names it.
    @ivar sse: how the object is encrypted (L{claudefs_gateway.s3.sse.Sse}), if it is.
    @ivar part_sums: a multipart object's parts' checksums (base64, in part order).
    """

    etag: str | None = None
    mtime_ns: int | None = None
    size: int | None = None
    content_type: str | None = None
    headers: dict[str, str] = attrs.field(factory=dict)
    user: dict[str, str] = attrs.field(factory=dict)
    checksums: dict[str, str] = attrs.field(factory=dict)
    checksum_type: str | None = None
    parts: list[list[int]] | None = None
    dir: str | None = None
    vid: str | None = None
    vt: int | None = None
    dm: bool = False
    fc: bool = False
    sse: dict[str, Any] | None = None
    part_sums: list[str] | None = None

    def encode(self) -> bytes:
        d: dict[str, Any] = {"v": 1}
        for name, short in (
            ("etag", "e"),
            ("mtime_ns", "t"),
            ("size", "s"),
            ("content_type", "ct"),
            ("headers", "h"),
            ("user", "m"),
            ("checksums", "ck"),
            ("checksum_type", "cty"),
            ("parts", "p"),
            ("dir", "d"),
            ("vid", "vi"),
            ("vt", "vt"),
            ("dm", "dm"),
            ("fc", "fc"),
            ("sse", "x"),
            ("part_sums", "pk"),
        ):
            v = getattr(self, name)
            # Zero is a size and a time (an empty object), not "absent".
            if v or (v == 0 and name in ("size", "mtime_ns") and v is not None):
                d[short] = v
        return _META_JSON.encode(d).encode("utf-8")

    @classmethod
    def decode(cls, raw: bytes | None) -> ObjectMeta:
        if not raw:
            return cls()
        if raw == AUTO_DIR:
            # Every directory the gateway made for nested keys carries this
            # (a DELETE reads each parent's to prune): no JSON to parse.
            return cls(dir="auto")
        try:
            d = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return cls()
        if not isinstance(d, dict):
            return cls()
        return cls(
            etag=d.get("e"),
            mtime_ns=d.get("t"),
            size=d.get("s"),
            content_type=d.get("ct"),
            headers=dict(d.get("h") or {}),
            user=dict(d.get("m") or {}),
            checksums=dict(d.get("ck") or {}),
            checksum_type=d.get("cty"),
            parts=d.get("p"),
            dir=d.get("d"),
            vid=d.get("vi"),
            vt=d.get("vt"),
            dm=bool(d.get("dm")),
            fc=bool(d.get("fc")),
            sse=d.get("x"),
            part_sums=d.get("pk"),
        )

    def plain_size(self, a: Attributes) -> int:
        """The object's size as S3 shows it (an encrypted file holds more at rest)."""
        if self.sse:
            return int(self.sse.get("p", 0))
        return a.size

    def etag_valid(self, a: Attributes) -> bool:
        return self.etag is not None and self.mtime_ns == a.mtime_ns and self.size == a.size

    def part_count(self) -> int | None:
        if not self.parts:
            return None
        return sum(c for _, c in self.parts)

    def part_range(self, number: int) -> tuple[int, int] | None:
        """(offset, length) of part C{number} (1-based) of a multipart object."""
        if not self.parts:
            return None
        offset = 0
        n = number
        for size, count in self.parts:
            if n <= count:
                return offset + (n - 1) * size, size
            offset += size * count
            n -= count
        return None


#: The metadata of a directory the gateway made for nested keys.
AUTO_DIR = ObjectMeta(dir="auto").encode()


def rle(sizes: list[int]) -> list[list[int]]:
    """Part sizes run-length encoded ([[size, count], ...]): uniform parts stay small."""
    out: list[list[int]] = []
    for s in sizes:
        if out and out[-1][0] == s:
            out[-1][1] += 1
        else:
            out.append([s, 1])
    return out


class Tree:
    """
    S3 buckets and objects over the vfs.

    @param vfs: an open L{claudefs_gateway.vfs.VFS}.
    @param hash_in_pool: run C{f(*args)} in the CPU pool (a Deferred), or None
        to hash on the calling thread.
    """

    _log = Logger()

    def __init__(self, vfs: IVFS, hash_in_pool: Callable[..., Any] | None = None) -> None:
        self.vfs = vfs
        export = vfs.exports.s3
        if export is None:
            raise errors.NotFound("no S3 export is configured")
        self.export = export
        self.root_caller = vfs.caller(export, "", ROOT, "s3")
        self._hash_in_pool = hash_in_pool
        self.staging_ino = 0
        self.temp_max_age = TEMP_MAX_AGE
        self._user_dirs: dict[int, int] = {}
        self._etags: dict[tuple[int, int, int], list[defer.Deferred[str]]] = {}
        # bucket inode -> ((gen, change), stored settings): see bucket_conf.
        self._confs: dict[int, tuple[tuple[int, int], bytes | None, BucketConf | None]] = {}
        #: The store's durable renames make the renamed file's data durable
        #: (L{claudefs_gateway.interfaces.IMetadataService.rename}): a small
        #: PUT writes unstable and its publishing rename flushes both.
        self.renames_sync_data = bool(
            getattr(getattr(vfs, "backend", None), "renames_sync_data", False)
        )

    # -- setup ------------------------------------------------------------------------

    async def open(self, temp_max_age: float = TEMP_MAX_AGE) -> None:
        """
        Make the staging area (root-owned, mode 0711) and clear the temporary
        files no live gateway can still be writing.

        Several gateways share one staging area (the workers of C{start
        --workers}, a worker the supervisor starts again while the others
        serve, gateways on other machines on the same servers): a temporary
        file is removed only when nothing changed it for C{temp_max_age}
        seconds (C{s3.temp_max_age_secs}; a live upload's file changes at least
        every C{s3.idle_timeout_secs}), not every one found, which deleted a
        sibling's upload in progress (docs/s3.rst "Multipart staging").
        """
        vfs = self.vfs
        rc = self.root_caller
        self.temp_max_age = temp_max_age
        try:
            a = await vfs.lookup(rc, vfs.root_ino, STAGING)
        except errors.NotFound:
            try:
                a = await vfs.mkdir(rc, vfs.root_ino, STAGING, 0o711)
                self._log.info("created the S3 staging directory /{name}", name=STAGING.decode())
            except errors.Exists:
                # Another gateway on the same store (a --workers sibling) made it first.
                a = await vfs.lookup(rc, vfs.root_ino, STAGING)
                self._log.info("S3 staging directory made by another gateway")
        if not a.is_dir:
            raise errors.NotDir("the S3 staging path is not a directory")
        if a.mode != 0o711 or a.uid != 0:
            await vfs.setattr(rc, a.ino, SetAttrs(mode=0o711, uid=0, gid=0))
        self.staging_ino = a.ino
        removed = kept = 0
        for name, entry in await self.read_dir(rc, a.ino):
            if name.startswith(b"u") and entry.type is FileType.DIR:
                for tmp, te in await self.read_dir(rc, entry.ino):
                    if te.type is not FileType.REG:
                        continue
                    ta = te.attrs or await vfs.getattr(rc, te.ino)
                    if not self.abandoned(ta):
                        kept += 1
                        continue
                    try:
                        await vfs.remove(rc, entry.ino, tmp)
                        removed += 1
                    except errors.NotFound:
                        pass  # its upload finished meanwhile, or another gateway removed it
        if removed:
            self._log.info("removed {n} temporary S3 files left by an earlier run", n=removed)
        if kept:
            self._log.info(
                "kept {n} temporary S3 files changed in the last {secs:.0f}s"
                " (another gateway's uploads in progress, or removed at a later start)",
                n=kept,
                secs=temp_max_age,
            )

    def abandoned(self, a: Attributes) -> bool:
        """
        Whether staged file or directory C{a} cannot belong to an upload in
        progress: unchanged for C{temp_max_age} (by the vfs clock; the store's
        times and the gateways' clocks must agree to well within that).
        """
        now_ns = int(self.vfs.clock.seconds() * 1e9)
        last = max(a.mtime_ns, a.ctime_ns)
        return now_ns - last > self.temp_max_age * 1e9

    async def user_dir(self, caller: Caller) -> int:
        """The caller's own staging directory (uid-owned, 0700), made on first use."""
        uid = caller.cred.uid
        ino = self._user_dirs.get(uid)
        if ino is not None:
            return ino
        rc = self.root_caller
        name = f"u{uid}".encode()
        try:
            a = await self.vfs.lookup(rc, self.staging_ino, name)
        except errors.NotFound:
            try:
                a = await self.vfs.mkdir(rc, self.staging_ino, name, 0o700)
            except errors.Exists:
                a = await self.vfs.lookup(rc, self.staging_ino, name)
        if a.uid != uid or a.gid != caller.cred.gid or a.mode != 0o700:
            a = await self.vfs.setattr(
                rc, a.ino, SetAttrs(uid=uid, gid=caller.cred.gid, mode=0o700)
            )
        self._user_dirs[uid] = a.ino
        return a.ino

    async def temp_file(self, caller: Caller) -> tuple[int, bytes, Attributes]:
        """
        A new empty file in the caller's staging directory: (dir, name, attrs).

        Made without waiting for stable storage: a staging file matters only
        once the object is renamed into place, and that rename is durable
        (with the store's ordered log, it makes this create durable too; a
        crash before it leaves at most a stray staging file, cleared by
        a later L{open} once it is C{s3.temp_max_age_secs} old).
        """
        d = await self.user_dir(caller)
        name = b"t-" + os.urandom(12).hex().encode()
        try:
            a = await self.vfs.create(caller, d, name, FILE_MODE, exclusive=True, durable=False)
        except errors.NotFound:
            # The staging directory went away (removed by hand): make it again.
            self._user_dirs.pop(caller.cred.uid, None)
            d = await self.user_dir(caller)
            a = await self.vfs.create(caller, d, name, FILE_MODE, exclusive=True, durable=False)
        return d, name, a

    async def discard_temp(self, caller: Caller, d: int, name: bytes) -> None:
        try:
            await self.vfs.remove(self.root_caller, d, name)
        except errors.FSError:
            self._log.warn("could not remove a temporary S3 file")

    # -- directory helpers ---------------------------------------------------------------

    async def read_dir(self, caller: Caller, ino: int) -> list[tuple[bytes, Any]]:
        """Every entry of a directory (name, DirEntry with attrs), restarting if it changes."""
        for _ in range(5):
            out = []
            cookie, verifier = 0, b"\0" * 8
            try:
                while True:
                    page = await self.vfs.readdir(caller, ino, cookie, verifier, 1024, True)
                    for e in page.entries:
                        out.append((e.name, e))
                        cookie = e.cookie
                    verifier = page.verifier
                    if page.eof or not page.entries:
                        return out
            except errors.BadCookie:
                continue
        raise errors.BackendUnavailable("directory kept changing while being read")

    async def is_empty(self, caller: Caller, ino: int) -> bool:
        page = await self.vfs.readdir(caller, ino, 0, b"\0" * 8, 1, False)
        return not page.entries

    # -- buckets ------------------------------------------------------------------------

    async def bucket(self, caller: Caller, name: str) -> Attributes:
        """@raise S3Error: NoSuchBucket (or AccessDenied if the S3 root cannot be searched)."""
        raw = name.encode("utf-8", "surrogateescape")
        if not bucket_name_ok(raw):
            raise S3Error("NoSuchBucket", BucketName=name)
        try:
            a = await inline(self.vfs.lookup, caller, self.export.root_ino, raw)
        except (errors.NotFound, errors.NotDir):
            raise S3Error("NoSuchBucket", BucketName=name) from None
        if not a.is_dir:
            raise S3Error("NoSuchBucket", BucketName=name)
        return a

    async def buckets(self, caller: Caller) -> list[tuple[str, Attributes]]:
        out = []
        for name, e in await self.read_dir(caller, self.export.root_ino):
            if e.type is FileType.DIR and bucket_name_ok(name) and e.attrs is not None:
                out.append((name.decode("utf-8"), e.attrs))
        out.sort(key=lambda t: t[0].encode("utf-8"))
        return out

    async def create_bucket(self, caller: Caller, name: str, granted: bool = False) -> Attributes:
        """
        Make bucket C{name} as C{caller} (a directory at the top of the S3 root).

        @param granted: the user holds the bucket right (C{users[].s3_create_buckets}):
            without write permission on the S3 root, the gateway makes the
            directory itself and gives it to the caller, so a first user can
            create buckets while the root stays closed.
        """
        raw = name.encode("utf-8")
        try:
            try:
                return await self.vfs.mkdir(caller, self.export.root_ino, raw, BUCKET_MODE)
            except errors.Access:
                if not granted:
                    raise
            a = await self.vfs.mkdir(self.root_caller, self.export.root_ino, raw, BUCKET_MODE)
            cred = caller.cred
            return await self.vfs.setattr(
                self.root_caller, a.ino, SetAttrs(uid=cred.uid, gid=cred.gid)
            )
        except errors.Exists:
            a = await self.vfs.lookup(self.root_caller, self.export.root_ino, raw)
            if a.is_dir and a.uid == caller.cred.uid:
                raise S3Error(
                    "BucketAlreadyOwnedByYou",
                    "Your previous request to create the named bucket succeeded and you already own it.",
                    BucketName=name,
                ) from None
            raise S3Error(
                "BucketAlreadyExists",
                "The requested bucket name is not available.",
                BucketName=name,
            ) from None

    async def delete_bucket(self, caller: Caller, name: str, granted: bool = False) -> None:
        """
        Remove an empty bucket. Scaffolding the gateway made and left empty
        (directories it made for keys, empty version stores) does not make a
        bucket non-empty: it is swept first, as S3 lists none of it.

        @param granted: the user holds the bucket right: a bucket the caller owns
            may be removed without write permission on the S3 root.
        """
        b = await self.bucket(caller, name)
        raw = name.encode("utf-8")

        async def rmdir() -> None:
            try:
                await self.vfs.rmdir(caller, self.export.root_ino, raw)
            except errors.Access:
                if not (granted and b.uid == caller.cred.uid):
                    raise
                await self.vfs.rmdir(self.root_caller, self.export.root_ino, raw)

        try:
            await rmdir()
        except errors.NotEmpty:
            if not await self._sweep(b.ino):
                raise S3Error("BucketNotEmpty", BucketName=name) from None
            try:
                await rmdir()
            except errors.NotEmpty:
                raise S3Error("BucketNotEmpty", BucketName=name) from None
        except errors.Busy:
            raise S3Error(
                "AccessDenied", "This bucket is an export's root and cannot be deleted"
            ) from None

    async def _sweep(self, ino: int, in_store: bool = False, depth: int = 0) -> bool:
        """
        Remove empty gateway-made directories under C{ino} (C{auto} ones, and
        private version stores and their per-key directories once empty);
        whether nothing else is left in it.

        @param in_store: C{ino} is a private version store (its directories
            are per-key stores, gateway-made).
        """
        rc = self.root_caller
        if depth > 64:
            return False
        entries = [(name, e.ino, e.type, False) for name, e in await self.read_dir(rc, ino)]
        for private in PRIVATE_NAMES:
            try:
                a = await self.vfs.lookup(rc, ino, private)
                entries.append((private, a.ino, a.type, True))
            except errors.NotFound:
                pass
        empty = True
        for name, child_ino, kind, store in entries:
            if kind is not FileType.DIR:
                empty = False
                continue
            try:
                child = await self.vfs.getattr(rc, child_ino)
                scaffold = store or in_store or (await self.meta(rc, child)).dir == "auto"
                if not scaffold or not await self._sweep(child_ino, store, depth + 1):
                    empty = False
                    continue
            except (errors.NotFound, errors.Stale):
                # Removed since it was listed (a DELETE of the last object
                # under it pruned it): not in the way.
                continue
            try:
                await self.vfs.rmdir(rc, ino, name)
            except (errors.NotEmpty, errors.NotFound):
                empty = False
        return empty

    async def bucket_conf(self, bucket: Attributes) -> BucketConf:
        """
        The bucket's S3 settings (versioning, lock, tags, ACL...): a fresh
        object the caller may change.

        Every request reads them, a PUT three times; the stored bytes are
        kept per bucket with the inode's change counter they were read at
        (every store bumps it when an attribute is set), so an unchanged
        bucket costs no store read. C{bucket} comes from the vfs, whose
        attribute cache follows every change, this process's or (through the
        shared store's events) another worker's.
        """
        return BucketConf.decode(await self._bucket_raw(bucket))

    async def bucket_settings(self, bucket: Attributes) -> BucketConf:
        """
        The bucket's S3 settings as L{bucket_conf} reads them, but shared: the
        same object for every request until the bucket changes, which the
        caller must not change (the request paths that only read them: a
        small PUT, GET, HEAD and DELETE decode no JSON and build no object).
        """
        stamp = (bucket.gen, bucket.change)
        hit = self._confs.get(bucket.ino)
        if hit is not None and hit[0] == stamp:
            conf = hit[2]
            if conf is None:
                conf = BucketConf.decode(hit[1])
                self._confs[bucket.ino] = (stamp, hit[1], conf)
            return conf
        raw = await self._bucket_raw(bucket)
        conf = BucketConf.decode(raw)
        if self._confs.get(bucket.ino, (None,))[0] == stamp:
            self._confs[bucket.ino] = (stamp, raw, conf)
        return conf

    async def _bucket_raw(self, bucket: Attributes) -> bytes | None:
        """The stored bytes of the bucket's settings, kept per bucket (L{bucket_conf})."""
        stamp = (bucket.gen, bucket.change)
        hit = self._confs.get(bucket.ino)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        raw = await self.vfs.meta_get(self.root_caller, bucket.ino, BUCKET_KEY)
        if len(self._confs) >= CONF_CACHE:
            self._confs.clear()
        self._confs[bucket.ino] = (stamp, raw, None)
        return raw

    async def set_bucket_conf(self, caller: Caller, bucket: Attributes, conf: BucketConf) -> None:
        """Store the bucket's S3 settings (as the caller: its owner, or root)."""
        self._confs.pop(bucket.ino, None)
        try:
            await self.vfs.meta_set(caller, bucket.ino, BUCKET_KEY, conf.encode())
        finally:
            self._confs.pop(bucket.ino, None)

    # -- objects: lookup -------------------------------------------------------------------

    async def lookup(self, caller: Caller, bucket: Attributes, key: Key) -> Attributes:
        """
        The file (or, for a C{key/} marker, the directory) a key names.

        @raise S3Error: NoSuchKey.
        """
        cur = bucket
        last = len(key.segments) - 1
        try:
            for i, seg in enumerate(key.segments):
                if not cur.is_dir:
                    raise S3Error("NoSuchKey")
                # The object itself is read fresh: another gateway's PUT a moment
                # ago may not have reached our caches yet (read-after-write).
                cur = await inline(self.vfs.lookup, caller, cur.ino, seg, fresh=i == last)
                if cur.is_link:
                    # Symbolic links made over NFS/SMB are not objects (see docs/s3.rst).
                    raise S3Error("NoSuchKey")
        except (errors.NotFound, errors.NotDir, errors.Loop, errors.Stale):
            raise S3Error("NoSuchKey") from None
        if key.marker:
            if not cur.is_dir:
                raise S3Error("NoSuchKey")
        elif not cur.is_reg:
            raise S3Error("NoSuchKey")
        return cur

    async def parent_dir(
        self, caller: Caller, bucket: Attributes, parents: list[bytes]
    ) -> Attributes | None:
        """The existing directory holding a key's object, or None if a directory is missing."""
        cur = bucket
        for seg in parents:
            try:
                cur = await self.vfs.lookup(caller, cur.ino, seg)
            except errors.NotFound:
                return None
            if not cur.is_dir:
                raise key_conflict(True)
        return cur

    async def check_writable(
        self, caller: Caller, bucket: Attributes, key: Key
    ) -> tuple[Attributes, list[bytes]] | None:
        """
        Refuse a write before its body is read: a file where a directory is
        needed (or the reverse), or no permission to write where the object goes.

        A directory that vanishes while we look (a concurrent delete pruning it)
        is simply looked for again; the commit makes whatever is missing.
        Returns what was found (for L{put_small}): the deepest existing
        directory of the key's and the names still to make below it (None
        if directories kept vanishing).
        """
        for _ in range(RACE_RETRIES):
            try:
                return await self._check_writable(caller, bucket, key)
            except (errors.NotFound, errors.Stale):
                continue
        return None

    async def _check_writable(
        self, caller: Caller, bucket: Attributes, key: Key
    ) -> tuple[Attributes, list[bytes]]:
        cur = bucket
        segments = key.segments[:-1] if not key.marker else key.segments
        missing: list[bytes] = []
        for i, seg in enumerate(segments):
            try:
                nxt = await inline(self.vfs.lookup, caller, cur.ino, seg)
            except errors.NotFound:
                missing = list(segments[i:])
                break
            if not nxt.is_dir:
                raise key_conflict(True)
            cur = nxt
        else:
            if not key.marker:
                try:
                    existing = await inline(self.vfs.lookup, caller, cur.ino, key.name)
                except errors.NotFound:
                    existing = None
                if existing is not None and existing.is_dir:
                    raise key_conflict(False)
        granted = await inline(self.vfs.access, caller, cur.ino, 0o3)  # W|X
        if granted != 0o3:
            raise S3Error("AccessDenied")
        return cur, missing

    async def make_parents(
        self,
        caller: Caller,
        bucket: Attributes,
        parents: list[bytes],
        made: list[tuple[int, bytes]],
    ) -> Attributes:
        """
        C{mkdir -p} of a key's directories as the caller; records what it made in C{made}.

        The directories are made without waiting for stable storage: both
        callers end with a durable change (the object's rename, the marker's
        metadata) that makes them durable with it.
        """
        cur = bucket
        for seg in parents:
            try:
                nxt = await self.vfs.lookup(caller, cur.ino, seg)
            except errors.NotFound:
                try:
                    nxt = await self.vfs.mkdir(caller, cur.ino, seg, DIR_MODE, durable=False)
                    made.append((cur.ino, seg))
                    await self.vfs.meta_set(caller, nxt.ino, META_KEY, AUTO_DIR, durable=False)
                except errors.Exists:
                    nxt = await self.vfs.lookup(caller, cur.ino, seg)
            if not nxt.is_dir:
                raise key_conflict(True)
            cur = nxt
        return cur

    async def unmake(self, caller: Caller, made: list[tuple[int, bytes]]) -> None:
        for parent, name in reversed(made):
            try:
                await self.vfs.rmdir(caller, parent, name)
            except errors.FSError:
                return

    # -- metadata and ETags ---------------------------------------------------------------

    async def meta(self, caller: Caller, a: Attributes) -> ObjectMeta:
        """
        The S3 metadata of a file. If a file client changed the file since S3
        wrote it (its modification time or size moved), what described the
        old bytes - checksums, part sizes - is dropped; the ETag is recomputed
        when asked for (L{etag}).
        """
        meta = ObjectMeta.decode(await inline(self.vfs.meta_get, self.root_caller, a.ino, META_KEY))
        if meta.mtime_ns is not None and (meta.mtime_ns != a.mtime_ns or meta.size != a.size):
            meta.checksums, meta.checksum_type, meta.parts = {}, None, None
            meta.part_sums = None
        return meta

    async def set_meta(
        self, caller: Caller, ino: int, meta: ObjectMeta, durable: bool = True
    ) -> None:
        raw = meta.encode()
        if len(raw) > 60 * 1024:
            raise S3Error("MetadataTooLarge")
        await self.vfs.meta_set(caller, ino, META_KEY, raw, durable=durable)

    async def etag(self, caller: Caller, a: Attributes, meta: ObjectMeta) -> str:
        """The object's ETag (unquoted): cached, or the MD5 of the content computed now."""
        if a.is_dir:
            return EMPTY_MD5
        if meta.etag_valid(a):
            assert meta.etag is not None
            return meta.etag
        k = (a.ino, a.mtime_ns, a.size)
        waiters = self._etags.get(k)
        # Concurrent requests for one file share a single computation; each waits
        # on its own Deferred, so one cancelled GET does not cancel the others.
        out: defer.Deferred[str] = defer.Deferred()
        if waiters is not None:
            waiters.append(out)
            return await out
        waiters = self._etags[k] = [out]

        def deliver(result: Any) -> None:
            del self._etags[k]
            for w in waiters:
                if not w.called:
                    if isinstance(result, Failure):
                        w.errback(result)
                    else:
                        w.callback(result)

        d = defer.Deferred.fromCoroutine(self._compute_etag(caller, a, meta))
        d.addBoth(deliver)
        return await out

    async def _compute_etag(self, caller: Caller, a: Attributes, meta: ObjectMeta) -> str:
        h = hashlib.md5()
        offset = 0
        try:
            while offset < a.size:
                r = await self.vfs.read(caller, a.ino, offset, HASH_BLOCK)
                if not r.data:
                    break
                await self.hash(h, r.data)
                offset += len(r.data)
        except (errors.Access, errors.Perm):
            # Not readable by this caller: a stable stand-in that reveals nothing of the content.
            return hashlib.md5(f"{a.ino}:{a.gen}:{a.mtime_ns}:{a.size}".encode()).hexdigest()
        etag = h.hexdigest()
        if offset == a.size:
            try:
                cur = await self.vfs.getattr(self.root_caller, a.ino)
                if cur.mtime_ns == a.mtime_ns and cur.size == a.size:
                    fresh = await self.meta(caller, cur)
                    stale = fresh.mtime_ns != a.mtime_ns or fresh.size != a.size
                    fresh.etag, fresh.mtime_ns, fresh.size = etag, a.mtime_ns, a.size
                    fresh.parts = None
                    fresh.checksums, fresh.checksum_type = {}, None
                    if stale:
                        fresh.vid, fresh.vt, fresh.fc = None, None, True
                    await self.vfs.meta_set(self.root_caller, a.ino, META_KEY, fresh.encode())
            except errors.FSError:
                pass
        return etag

    async def hash(self, h: Any, data: bytes) -> None:
        """Update hash C{h} with C{data}, in the CPU pool when the data is large."""
        if self._hash_in_pool is not None and len(data) >= 256 * 1024:
            await self._hash_in_pool(h.update, data)
        else:
            h.update(data)

    # -- objects: commit and delete ------------------------------------------------------------

    async def commit(
        self,
        caller: Caller,
        bucket: Attributes,
        key: Key,
        tmp_dir: int,
        tmp_name: bytes,
        meta: ObjectMeta,
        precondition: Callable[[Attributes | None, Attributes], Any] | None = None,
    ) -> Attributes:
        """
        Give the finished temporary file its metadata and rename it over the key.

        @param precondition: called with the object now at the key (or None) and
            the directory it is in, just before the rename; raises to refuse
            (conditional writes), or keeps the current object (versioning).
        """
        tmp = await self.vfs.lookup(self.root_caller, tmp_dir, tmp_name)
        meta.mtime_ns, meta.size = tmp.mtime_ns, tmp.size
        # The metadata is stored while the key's directories are found or made
        # (the store commits both in one transaction when they meet in its
        # queue); it must be in place before the rename publishes the object.
        # Not durable by itself: the rename after it is (see temp_file).
        stored: defer.Deferred[None] | None = defer.Deferred.fromCoroutine(
            self.set_meta(caller, tmp.ino, meta, durable=False)
        )
        try:
            for attempt in range(RACE_RETRIES):
                made: list[tuple[int, bytes]] = []
                try:
                    parent = await self.make_parents(caller, bucket, key.parents, made)
                    if stored is not None:
                        d, stored = stored, None
                        await d
                    if parent.mode & 0o2000 and tmp.gid != parent.gid:
                        # A setgid directory gives new entries its group, as a local create would.
                        await self.vfs.setattr(self.root_caller, tmp.ino, SetAttrs(gid=parent.gid))
                    if precondition is not None:
                        try:
                            current: Attributes | None = await self.vfs.lookup(
                                caller, parent.ino, key.name
                            )
                        except errors.NotFound:
                            current = None
                        await precondition(current, parent)
                    try:
                        result = await self.vfs.rename(
                            caller, tmp_dir, tmp_name, parent.ino, key.name
                        )
                    except errors.IsDir:
                        raise key_conflict(False) from None
                    return result.source
                except (errors.NotFound, errors.Stale):
                    # A directory on the way was removed under us (a concurrent delete
                    # pruning its emptied prefix): make the path again and retry. If
                    # the staged file itself is gone, that is the error.
                    await self.unmake(caller, made)
                    await self.vfs.lookup(self.root_caller, tmp_dir, tmp_name)
                    if attempt == RACE_RETRIES - 1:
                        raise
                    self._log.debug("a directory vanished during an S3 commit; retrying")
                except BaseException:
                    await self.unmake(caller, made)
                    raise
        finally:
            if stored is not None:
                # make_parents failed first: wait for the metadata write (its
                # outcome no longer matters, the temporary file is discarded).
                await stored.addErrback(lambda f: None)
        raise AssertionError("unreachable")  # pragma: no cover

    async def put_small(
        self,
        caller: Caller,
        bucket: Attributes,
        key: Key,
        data: bytes,
        meta: ObjectMeta,
        found: tuple[Attributes, list[bytes]] | None = None,
    ) -> Attributes:
        """
        Store an object whose bytes are all in memory with one store
        operation (L{claudefs_gateway.vfs.VFS.put_file}): the key's missing
        directories, the new file, its bytes and its metadata are put over
        the key in one durable transaction, without a staging file.
        C{found}: what L{check_writable} found, tried first (if a directory
        changed since, the store refuses and the key's path is looked up
        again).

        @raise S3Error: MetadataTooLarge; a key that conflicts with a directory.
        """
        mtime_ns = time.time_ns()
        meta.mtime_ns, meta.size = mtime_ns, len(data)
        raw = meta.encode()
        if len(raw) > 60 * 1024:
            raise S3Error("MetadataTooLarge")
        for attempt in range(RACE_RETRIES):
            try:
                if found is not None and attempt == 0:
                    parent, missing = found
                else:
                    parent, missing = await self._existing_parents(caller, bucket, key.parents)
                try:
                    # Under this coroutine's driver (inline): the store's wait
                    # resumes the request directly, not through a Deferred
                    # and a driver of the VFS method's own.
                    result = await inline(
                        self.vfs.put_file,
                        caller,
                        parent.ino,
                        key.name,
                        FILE_MODE,
                        data,
                        {META_KEY: raw},
                        mtime_ns,
                        dirs=tuple(missing),
                        dir_mode=DIR_MODE,
                        dir_meta={META_KEY: AUTO_DIR},
                    )
                except errors.IsDir:
                    raise key_conflict(False) from None
                return result.source
            except (errors.NotFound, errors.Stale, errors.Exists):
                # A directory on the way was pruned by a concurrent delete, or
                # one to make was made by a concurrent put: look again.
                if attempt == RACE_RETRIES - 1:
                    raise
                self._log.debug("a directory changed during an S3 put; retrying")
        raise AssertionError("unreachable")  # pragma: no cover

    async def _existing_parents(
        self, caller: Caller, bucket: Attributes, parents: list[bytes]
    ) -> tuple[Attributes, list[bytes]]:
        """The deepest existing directory of a key's, and the names below it still to make."""
        cur = bucket
        for i, seg in enumerate(parents):
            try:
                nxt = await inline(self.vfs.lookup, caller, cur.ino, seg)
            except errors.NotFound:
                return cur, parents[i:]
            if not nxt.is_dir:
                raise key_conflict(True)
            cur = nxt
        return cur, []

    async def put_marker(
        self, caller: Caller, bucket: Attributes, key: Key, meta: ObjectMeta
    ) -> Attributes:
        """Make the directory a C{key/} object names, and mark it as an S3 object."""
        for attempt in range(RACE_RETRIES):
            made: list[tuple[int, bytes]] = []
            try:
                parent = await self.make_parents(caller, bucket, key.parents, made)
                try:
                    d = await self.vfs.lookup(caller, parent.ino, key.name)
                except errors.NotFound:
                    try:
                        d = await self.vfs.mkdir(caller, parent.ino, key.name, DIR_MODE)
                    except errors.Exists:
                        d = await self.vfs.lookup(caller, parent.ino, key.name)
                break
            except (errors.NotFound, errors.Stale):
                # A parent was pruned by a concurrent delete: make the path again.
                await self.unmake(caller, made)
                if attempt == RACE_RETRIES - 1:
                    raise
        if not d.is_dir:
            raise key_conflict(True)
        meta.dir = "marker"
        await self.set_meta(caller, d.ino, meta)
        return await self.vfs.getattr(caller, d.ino)

    async def delete(
        self, caller: Caller, bucket: Attributes, key: Key, expect: int | None = None
    ) -> None:
        """
        Delete an object (absent is success), then prune emptied directories
        the gateway made. C{expect}: only if the object is still that inode
        (the one a conditional DELETE or an expiry judged; a PUT since renamed
        another over it, which stays).
        """
        chain = [bucket]
        try:
            for seg in key.segments[:-1] if not key.marker else key.segments:
                nxt = await inline(self.vfs.lookup, caller, chain[-1].ino, seg)
                if not nxt.is_dir:
                    return
                chain.append(nxt)
        except (errors.NotFound, errors.NotDir):
            return
        names = key.segments
        if key.marker:
            target = chain[-1]
            m = await self.meta(caller, target)
            if m.dir == "marker":
                if await self.is_empty(caller, target.ino):
                    try:
                        await self.vfs.rmdir(caller, chain[-2].ino, names[-1])
                    except (errors.NotFound, errors.NotEmpty):
                        pass
                else:
                    m.dir = "auto"
                    await self.set_meta(caller, target.ino, m)
                    return
            elif m.dir is None and await self.is_empty(caller, target.ino):
                # An empty directory made over NFS/SMB lists as "name/": deleting it removes it.
                try:
                    await self.vfs.rmdir(caller, chain[-2].ino, names[-1])
                except (errors.NotFound, errors.NotEmpty):
                    pass
            else:
                return
            chain.pop()
            names = names[:-1]
        else:
            if self.vfs.can_prune:
                # The object and the emptied directories above it in one change.
                dirs = await self._auto_dirs(caller, chain, names[:-1])
                try:
                    await inline(
                        self.vfs.remove_pruning,
                        caller,
                        chain[-1].ino,
                        names[-1],
                        dirs,
                        expect=expect,
                    )
                except (errors.NotFound, errors.IsDir):
                    pass
                return
            try:
                await self.vfs.remove(caller, chain[-1].ino, names[-1], expect=expect)
            except (errors.NotFound, errors.IsDir):
                return
            names = names[:-1]
        await self.prune(caller, chain, names)

    async def _auto_dirs(
        self, caller: Caller, chain: list[Attributes], names: list[bytes]
    ) -> tuple[tuple[int, bytes], ...]:
        """
        The directories the gateway made (C{auto}) at the end of C{chain},
        innermost first, as (parent, name): what a delete below them may
        prune once they are empty (never the bucket).
        """
        out = []
        for i in range(len(chain) - 1, 0, -1):
            try:
                m = await self.meta(caller, chain[i])
            except errors.FSError:
                break
            if m.dir != "auto":
                break
            out.append((chain[i - 1].ino, names[i - 1]))
        return tuple(out)

    async def prune_key(self, bucket: Attributes, key: Key) -> None:
        """Remove the emptied C{auto} directories above a key (after a versioned delete)."""
        chain = [bucket]
        rc = self.root_caller
        try:
            for seg in key.parents:
                nxt = await self.vfs.lookup(rc, chain[-1].ino, seg)
                if not nxt.is_dir:
                    return
                chain.append(nxt)
        except (errors.NotFound, errors.NotDir):
            return
        await self.prune(rc, chain, list(key.parents))

    async def prune(self, caller: Caller, chain: list[Attributes], names: list[bytes]) -> None:
        """
        Remove emptied C{auto} directories from the deepest up (never the bucket).

        Without waiting for stable storage: a crash may bring an emptied
        directory back, the state a crash between the delete and its pruning
        always could leave, and one the next delete below it prunes.
        """
        while len(chain) > 1:
            d = chain[-1]
            try:
                m = await self.meta(caller, d)
                if m.dir != "auto" or not await self.is_empty(caller, d.ino):
                    return
                await self.vfs.rmdir(caller, chain[-2].ino, names[-1], durable=False)
            except errors.FSError:
                return
            chain.pop()
            names = names[:-1]
