# -*- test-case-name: tests.s3.test_multipart -*-
"""
Multipart uploads: parts staged outside every bucket, assembled atomically.

Each upload is a directory C{/.cfs-s3/mpu/<upload id>} owned by the user who
started it (mode 0700; its parent is root's, 0711), so parts are in the store -
through the vfs, counted against that user's quota, surviving a restart on a
durable backend - but in no bucket and in no client's listing. The upload's
bucket, key, metadata and checksum choice are kept on that directory; part
C{n} is the file C{p<n>} with its ETag and checksum kept on it. A part written
again replaces the earlier one atomically (it too is staged, then renamed).

CompleteMultipartUpload copies the chosen parts, in order, into one staged
file in the upload directory and renames it over the key: readers see the old
object or the new one, never a part. Uploads with no part activity for
C{s3.part_timeout_ms} are aborted by a timer; C{gateway_s3_multipart_active}
counts uploads in progress and C{gateway_s3_multipart_failed_total} those
aborted or expired.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from claudefs_gateway import errors
from claudefs_gateway.core.log import Logger
from claudefs_gateway.fstypes import Attributes, FileType, SetAttrs
from claudefs_gateway.s3.errors import S3Error
from claudefs_gateway.s3.tree import META_KEY, ObjectMeta, Tree
from claudefs_gateway.s3.versions import GONE
from claudefs_gateway.vfs import Caller

__all__ = ["Upload", "Uploads", "part_name", "is_upload_id", "MAX_PART_NUMBER"]

MPU_DIR = b"mpu"
MAX_PART_NUMBER = 10000
STATE_KEY = b"s3.upload"
#: Completed uploads whose answer is kept for a retried Complete.
COMPLETED_KEPT = 10000


def is_upload_id(text: str) -> bool:
    """What L{Uploads.create} makes (48 hex digits): nothing else is looked up in the store."""
    return len(text) == 48 and all(c in "0123456789abcdef" for c in text)


def part_name(number: int) -> bytes:
    """The staged file name of part C{number}."""
    return b"p%05d" % number


@attrs.define(eq=False)
class Upload:
    """One multipart upload in progress."""

    id: str
    bucket: str
    key: str
    uid: int
    gid: int
    ino: int
    initiated: float
    meta: ObjectMeta
    algorithm: str | None = None
    checksum_type: str | None = None
    last_activity: float = 0.0
    active: int = 0
    completing: bool = False
    gone: bool = False
    slots: defer.DeferredSemaphore | None = None
    #: Tags and object lock the object gets when completed (from the create request).
    tags: dict[str, str] | None = None
    lock: bytes | None = None
    #: The ACL headers of the create request, applied when completed.
    acl_headers: dict[str, list[str]] | None = None
    #: How the object is encrypted (s3/sse.py Sse.encode()), if it is.
    sse: dict[str, Any] | None = None

    def state(self) -> bytes:
        return json.dumps(
            {
                "b": self.bucket,
                "k": self.key,
                "u": self.uid,
                "g": self.gid,
                "t": self.initiated,
                "m": self.meta.encode().decode("utf-8"),
                "a": self.algorithm,
                "ct": self.checksum_type,
                "tg": self.tags,
                "lk": self.lock.decode() if self.lock is not None else None,
                "acl": self.acl_headers,
                "sse": self.sse,
            },
            ensure_ascii=False,
        ).encode("utf-8")


@attrs.frozen
class Completed:
    """
    A completed upload's answer, for a Complete sent again (its reply was
    lost), and the object it made (inode and modification time): the answer
    holds only while that object is still the key's.
    """

    bucket: str
    key: str
    uid: int
    parts: list[tuple[int, str]]
    result: bytes
    ino: int
    mtime_ns: int
    #: The version id the Complete answered (x-amz-version-id), if any.
    version_id: str | None = None


class Uploads:
    """
    The multipart uploads of this gateway.

    @param tree: the L{Tree} (its staging directory must be open).
    @param on_change: called with the number of uploads whenever it changes.
    @param on_failed: called once per upload aborted or expired.
    """

    _log = Logger()

    def __init__(
        self,
        tree: Tree,
        clock: IReactorTime,
        part_timeout: float,
        max_concurrent_parts: int,
        on_change: Callable[[int], None] = lambda n: None,
        on_failed: Callable[[], None] = lambda: None,
    ) -> None:
        self.tree = tree
        self.vfs = tree.vfs
        self.clock = clock
        self.part_timeout = part_timeout
        self.max_concurrent_parts = max_concurrent_parts
        self._on_change = on_change
        self._on_failed = on_failed
        self.uploads: dict[str, Upload] = {}
        self.completed: OrderedDict[str, Completed] = OrderedDict()
        self.mpu_ino = 0
        self._sweeper: task.LoopingCall | None = None

    # -- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        """Find the upload directory (making it) and every upload a previous run left."""
        rc = self.tree.root_caller
        try:
            a = await self.vfs.lookup(rc, self.tree.staging_ino, MPU_DIR)
        except errors.NotFound:
            try:
                a = await self.vfs.mkdir(rc, self.tree.staging_ino, MPU_DIR, 0o711)
            except errors.Exists:
                # Another gateway on the same store (a --workers sibling) made it first.
                a = await self.vfs.lookup(rc, self.tree.staging_ino, MPU_DIR)
        self.mpu_ino = a.ino
        now = self.clock.seconds()
        for name, e in await self.tree.read_dir(rc, a.ino):
            if e.type is not FileType.DIR:
                continue
            raw = await self.vfs.meta_get(rc, e.ino, STATE_KEY)
            upload = self._from_state(name.decode("ascii", "replace"), e.ino, raw)
            if upload is None:
                # No state yet may be another gateway's create between its
                # mkdir and its meta_set: only an old one is a crash's.
                a = e.attrs or await self.vfs.getattr(rc, e.ino)
                if self.tree.abandoned(a):
                    await self._remove_dir(e.ino, name)
                continue
            upload.last_activity = now
            self.uploads[upload.id] = upload
        self._changed()
        if self.uploads:
            self._log.info(
                "{n} multipart uploads carried over from an earlier run", n=len(self.uploads)
            )

    def _from_state(self, upload_id: str, ino: int, raw: bytes | None) -> Upload | None:
        try:
            d = json.loads(raw or b"")
            return Upload(
                id=upload_id,
                bucket=d["b"],
                key=d["k"],
                uid=int(d["u"]),
                gid=int(d["g"]),
                ino=ino,
                initiated=float(d["t"]),
                meta=ObjectMeta.decode(d["m"].encode("utf-8")),
                algorithm=d.get("a"),
                checksum_type=d.get("ct"),
                slots=defer.DeferredSemaphore(self.max_concurrent_parts),
                tags=d.get("tg"),
                lock=d["lk"].encode() if d.get("lk") else None,
                acl_headers=d.get("acl"),
                sse=d.get("sse"),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def start_expiry(self) -> None:
        """Check for abandoned uploads periodically (on the injected clock)."""
        interval = max(1.0, min(self.part_timeout / 4, 60.0))
        self._sweeper = task.LoopingCall(self._sweep)
        self._sweeper.clock = self.clock
        d = self._sweeper.start(interval, now=False)
        d.addErrback(lambda f: self._log.failure("multipart expiry stopped", f))

    def stop_expiry(self) -> None:
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._sweeper = None

    def _sweep(self) -> defer.Deferred[None]:
        async def sweep() -> None:
            await self.expire()

        return defer.Deferred.fromCoroutine(sweep())

    async def expire(self) -> int:
        """
        Abort every upload idle for longer than the part timeout; how many.

        Idle by the store too, not only by this gateway's own requests: an
        upload another gateway serves (a --workers sibling; this one loaded it
        at its start) moves its directory or a staged part there whenever a
        part is started or written, and is kept while they do.
        """
        now = self.clock.seconds()
        candidates = [
            u
            for u in self.uploads.values()
            if u.active == 0 and not u.completing and now - u.last_activity > self.part_timeout
        ]
        expired = 0
        for u in candidates:
            try:
                seen = await self._store_activity(u)
            except errors.GatewayError:
                # The store cannot answer now: the next sweep looks again
                # (an error out of here would stop the sweeps).
                self._log.failure("could not read multipart upload {upload_id}", upload_id=u.id)
                continue
            if u.active or u.completing or u.gone or self.uploads.get(u.id) is not u:
                continue  # a request of this gateway took it meanwhile
            if seen is None:
                # Completed or aborted through another gateway: not a failure.
                u.gone = True
                del self.uploads[u.id]
                self._changed()
                continue
            if now - seen <= self.part_timeout:
                u.last_activity = max(u.last_activity, seen)
                continue
            self._log.info(
                "multipart upload {upload_id} expired after {secs:.0f}s without activity",
                upload_id=u.id,
                secs=now - u.last_activity,
            )
            try:
                await self._discard(u)
            except errors.FSError:
                self._log.failure("while removing an expired multipart upload")
            self._on_failed()
            expired += 1
        return expired

    async def _store_activity(self, u: Upload) -> float | None:
        """
        When upload C{u}'s directory or a file in it last changed (another
        gateway's part activity shows there); None if it is gone.
        """
        rc = self.tree.root_caller
        try:
            latest = await self.vfs.getattr(rc, u.ino)
            times = [latest.mtime_ns, latest.ctime_ns]
            for _, e in await self.tree.read_dir(rc, u.ino):
                if e.attrs is not None:
                    times += [e.attrs.mtime_ns, e.attrs.ctime_ns]
        except (errors.NotFound, errors.Stale):
            return None
        return max(times) / 1e9

    def _changed(self) -> None:
        self._on_change(len(self.uploads))

    # -- operations --------------------------------------------------------------------

    async def create(
        self,
        caller: Caller,
        bucket: str,
        key: str,
        meta: ObjectMeta,
        algorithm: str | None,
        checksum_type: str | None,
        tags: dict[str, str] | None = None,
        lock: bytes | None = None,
        acl_headers: dict[str, list[str]] | None = None,
        sse: dict[str, Any] | None = None,
    ) -> Upload:
        upload_id = os.urandom(24).hex()
        rc = self.tree.root_caller
        d = await self.vfs.mkdir(rc, self.mpu_ino, upload_id.encode(), 0o700)
        upload = Upload(
            id=upload_id,
            bucket=bucket,
            key=key,
            uid=caller.cred.uid,
            gid=caller.cred.gid,
            ino=d.ino,
            initiated=self.clock.seconds(),
            meta=meta,
            algorithm=algorithm,
            checksum_type=checksum_type,
            tags=tags,
            lock=lock,
            acl_headers=acl_headers,
            sse=sse,
            last_activity=self.clock.seconds(),
            slots=defer.DeferredSemaphore(self.max_concurrent_parts),
        )
        try:
            await self.vfs.meta_set(rc, d.ino, STATE_KEY, upload.state())
            await self.vfs.setattr(rc, d.ino, SetAttrs(uid=upload.uid, gid=upload.gid))
        except BaseException:
            await self._remove_dir(d.ino, upload_id.encode())
            raise
        self.uploads[upload_id] = upload
        self._changed()
        return upload

    async def find(self, upload_id: str, bucket: str, key: str | None, caller: Caller) -> Upload:
        """
        L{get}, loading from the store an upload this gateway does not know:
        one another gateway on the namespace created (a --workers sibling
        the client's earlier connection landed on) after this one started.

        @raise S3Error: as L{get}.
        """
        if upload_id not in self.uploads and is_upload_id(upload_id):
            await self._load(upload_id)
        return self.get(upload_id, bucket, key, caller)

    async def _load(self, upload_id: str) -> Upload | None:
        """Upload C{upload_id} from the store, kept from now on; None if it is not there."""
        rc = self.tree.root_caller
        try:
            a = await self.vfs.lookup(rc, self.mpu_ino, upload_id.encode())
            raw = await self.vfs.meta_get(rc, a.ino, STATE_KEY)
        except errors.NotFound:
            return None
        if not a.is_dir:
            return None
        known = self.uploads.get(upload_id)
        if known is not None:  # loaded by a concurrent request meanwhile
            return known
        upload = self._from_state(upload_id, a.ino, raw)
        if upload is None:
            return None
        upload.last_activity = self.clock.seconds()
        self.uploads[upload_id] = upload
        self._changed()
        return upload

    async def refresh(self) -> None:
        """
        Bring the uploads kept in memory in line with the store: load those
        other gateways created, drop those they completed or aborted (so
        ListMultipartUploads through any gateway lists the same).
        """
        rc = self.tree.root_caller
        # Only what was known before the listing began can be missing from
        # it because another gateway finished it (not one made meanwhile).
        before = dict(self.uploads)
        names = {
            n.decode("ascii", "replace")
            for n, e in await self.tree.read_dir(rc, self.mpu_ino)
            if e.type is FileType.DIR
        }
        for upload_id in sorted(names - set(self.uploads)):
            if is_upload_id(upload_id):
                await self._load(upload_id)
        for upload_id, u in before.items():
            if upload_id in names or u.completing or u.active or u.gone:
                continue
            if self.uploads.get(upload_id) is u:
                u.gone = True
                del self.uploads[upload_id]
                self._changed()

    def get(self, upload_id: str, bucket: str, key: str | None, caller: Caller) -> Upload:
        """
        @raise S3Error: NoSuchUpload (unknown, finished, another bucket or key);
            AccessDenied (someone else's upload).
        """
        u = self.uploads.get(upload_id)
        if u is None or u.gone or u.bucket != bucket or (key is not None and u.key != key):
            raise S3Error("NoSuchUpload", UploadId=upload_id)
        if caller.cred.uid not in (u.uid, 0):
            raise S3Error("AccessDenied")
        return u

    def touch(self, u: Upload) -> None:
        u.last_activity = self.clock.seconds()

    async def parts(self, u: Upload) -> dict[int, tuple[Attributes, ObjectMeta]]:
        """The parts written so far: number → (attributes, metadata)."""
        out = {}
        rc = self.tree.root_caller
        try:
            entries = await self.tree.read_dir(rc, u.ino)
        except GONE:
            raise S3Error("NoSuchUpload", UploadId=u.id) from None
        for name, e in entries:
            if e.type is not FileType.REG or not name.startswith(b"p") or not name[1:].isdigit():
                continue
            try:
                a = e.attrs or await self.vfs.getattr(rc, e.ino)
                meta = ObjectMeta.decode(await self.vfs.meta_get(rc, a.ino, META_KEY))
            except GONE:
                # Gone since the listing: uploaded again (the new part is at
                # its name now), or the upload was aborted or completed.
                try:
                    a = await self.vfs.lookup(rc, u.ino, name)
                    meta = ObjectMeta.decode(await self.vfs.meta_get(rc, a.ino, META_KEY))
                except GONE:
                    continue
            out[int(name[1:])] = (a, meta)
        if u.gone:
            raise S3Error("NoSuchUpload", UploadId=u.id)
        return out

    async def abort(self, u: Upload) -> None:
        if u.completing:
            raise S3Error("OperationAborted", "The upload is being completed")
        await self._discard(u)
        self._on_failed()

    async def finished(
        self,
        u: Upload,
        parts: list[tuple[int, str]],
        result: bytes,
        made: Attributes,
        version_id: str | None = None,
    ) -> None:
        """
        The upload was completed, making object C{made} (version
        C{version_id}): remove what is left of it, and remember its answer
        (C{result}) for a retried Complete with the same C{parts} (number,
        ETag) - in memory, for the last L{COMPLETED_KEPT} uploads.
        """
        self.completed[u.id] = Completed(
            u.bucket, u.key, u.uid, parts, result, made.ino, made.mtime_ns, version_id
        )
        while len(self.completed) > COMPLETED_KEPT:
            self.completed.popitem(last=False)
        await self._discard(u)

    def lost(self, u: Upload) -> None:
        """C{u}'s directory is gone (another gateway finished it): forget it, as L{refresh} would."""
        if self.uploads.get(u.id) is u:
            u.gone = True
            del self.uploads[u.id]
            self._changed()

    async def _discard(self, u: Upload) -> None:
        u.gone = True
        self.uploads.pop(u.id, None)
        self._changed()
        await self._remove_dir(u.ino, u.id.encode())

    async def _remove_dir(self, ino: int, name: bytes) -> None:
        """
        Remove upload directory C{ino} and what is in it. What went meanwhile
        (another gateway completed or aborted the upload; a file or part
        removed) is removed already: not found, or stale (L{GONE}).
        """
        rc = self.tree.root_caller
        try:
            for child, _ in await self.tree.read_dir(rc, ino):
                try:
                    await self.vfs.remove(rc, ino, child)
                except GONE:
                    pass
            await self.vfs.rmdir(rc, self.mpu_ino, name)
        except GONE:
            pass
