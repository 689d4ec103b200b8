# -*- test-case-name: tests.vfs.test_vfs -*-
"""
The vfs: the one API every protocol front end calls.

It turns (caller, inode, name) requests into backend calls after deciding
whether they are allowed: export rules (read-only, squash, client networks,
handles that cannot leave their export), POSIX permissions, quotas; and it
keeps the attribute and name caches and the change events in step with every
change it makes.

Every public operation returns a Deferred (coroutines inside) firing with the
documented result or failing with an L{FSError}. Data-path choices follow the
Linux NFS server, because that is what clients are tuned for: the owner of a
file may always read and write its data whatever the mode bits (the client
checked at open time; "owner override"), a file may be read by anyone who may
execute it, and ".." of an export's root is the root itself.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from zope.interface import implementer

from claudefs_gateway import errors
from claudefs_gateway.core.config import Config, Export
from claudefs_gateway.core.directsend import FileRange
from claudefs_gateway.core.eager import eager_deferred
from claudefs_gateway.core.fence import Fence
from claudefs_gateway.core.log import Logger
from claudefs_gateway.core.metrics import Metrics
from claudefs_gateway.fstypes import (
    MAX_FILE_SIZE,
    Attributes,
    Credentials,
    DirPage,
    FileType,
    FSStat,
    PutResult,
    ReadResult,
    RenameResult,
    SetAttrs,
    WriteResult,
)
from claudefs_gateway.interfaces import (
    IVFS,
    IBackend,
    ILeaseManager,
    ILockTable,
    ISharedStore,
    IUserDB,
)
from claudefs_gateway.vfs import permissions as perm
from claudefs_gateway.vfs.cache import AttrCache, BoundedCache, NameCache
from claudefs_gateway.vfs.events import Action, Change, ChangeEvents, What
from claudefs_gateway.vfs.exports import Caller, ExportInfo, Exports
from claudefs_gateway.vfs.handles import HandleCodec
from claudefs_gateway.vfs.leases import LeaseManager, Why
from claudefs_gateway.vfs.locks import EOF, LockTable
from claudefs_gateway.vfs.origin import Origin, default_origin
from claudefs_gateway.vfs.quotas import QuotaManager
from claudefs_gateway.vfs.worm import SEAL_KEY, WORM_KEY, Retention, WormCache

__all__ = ["VFS", "INTERNAL_PREFIX", "SYMLOOP_MAX", "PRIVATE_NAMES", "PRIVATE_OWNER"]

P = ParamSpec("P")
T = TypeVar("T")

# Extended attributes under this prefix belong to the gateway (S3 metadata, SMB
# DOS attributes, NFS create verifiers): hidden from clients, reached only
# through meta_get/meta_set.
INTERNAL_PREFIX = b"cfs."
# In L{VFS.meta_cache}: the inode has this record (its names were listed), not read yet.
_UNREAD = b"\x00cfs: listed, not read\x00"
SYMLOOP_MAX = 40
#: Directory entries the gateway keeps for its own use inside client-visible
#: directories: S3's per-directory store of older object versions
#: (docs/s3.rst "Versioning"). No listing shows them; no client of any
#: protocol can look them up, make, remove or rename them; only the front end
#: that owns them (PRIVATE_OWNER) reaches them, through lookup.
PRIVATE_NAMES = frozenset({b".cfs-versions"})
PRIVATE_OWNER = "s3"
_VERIFIER = b"cfs.nfs.create_verifier"
#: The whole of a file, as a byte-range lock check sees it.
_WHOLE = EOF - 1
_READ, _WRITE, _DELETE = frozenset({"read"}), frozenset({"write"}), frozenset({"delete"})
# A write's change event, built once (an enum flag's "|" costs about a microsecond).
_DATA_SIZE = What.DATA | What.SIZE
_REPLACE = frozenset({"write", "delete"})
#: Verified file handles remembered (cleared when full).
_VERIFIED_MAX = 16384


# Failures that say the backend itself is in trouble (not the caller's request).
_BACKEND_TROUBLE = (errors.IO, errors.NoSpace, errors.BackendUnavailable, errors.Timeout)


def deferred(f: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, defer.Deferred[T]]:
    """
    Make an C{async def} method return a Deferred (STYLE.md §4), counting
    backend trouble in C{gateway_backend_errors_total} on the way out.

    The coroutine runs eagerly (L{claudefs_gateway.core.eager}): when all it
    awaits has fired already (cached attributes, a page-cache read), the
    Deferred returned has fired too, and no coroutine driver was built.
    """

    @functools.wraps(f)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> defer.Deferred[T]:
        return eager_deferred(f(*args, **kwargs), args[0]._count_backend_error)  # type: ignore[attr-defined]

    return wrapper


async def inline(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """
    Await C{method(*args, **kwargs)}, a bound L{deferred} method of the VFS,
    from inside the caller's own coroutine: its coroutine runs under the
    caller's driver instead of a Deferred and a driver of its own, which is
    what a change that waits for the store costs twice over on the reactor
    otherwise (a Deferred built and fired, a second coroutine driver resumed,
    for every NFS CREATE and REMOVE). Backend trouble is counted as the
    wrapper counts it. Any other callable (a vfs that is not a L{VFS}) is
    called and awaited as it is.
    """
    f = getattr(getattr(method, "__func__", None), "__wrapped__", None)
    if f is None:
        return await method(*args, **kwargs)
    vfs = method.__self__  # type: ignore[attr-defined]
    try:
        return await f(vfs, *args, **kwargs)
    except _BACKEND_TROUBLE as e:
        vfs._count_backend_error(Failure(e))
        raise


def _usage_changes(
    before: Attributes | None, after: Attributes | None
) -> list[tuple[int, int, int, int]]:
    """(uid, gid, bytes delta, inodes delta) moving usage from C{before} to C{after}."""
    # An inode adds (size if a regular file, 1) to its (uid, gid)'s usage
    # while it has a link; no dictionaries (every create, write and unlink
    # comes here).
    if before is not None and before.nlink:
        bk: tuple[int, int] | None = (before.uid, before.gid)
        bb = before.size if before.type is FileType.REG else 0
    else:
        bk, bb = None, 0
    if after is not None and after.nlink:
        ak: tuple[int, int] | None = (after.uid, after.gid)
        ab = after.size if after.type is FileType.REG else 0
    else:
        ak, ab = None, 0
    if ak == bk:
        if ak is None or ab == bb:
            return []
        return [(ak[0], ak[1], ab - bb, 0)]
    out = []
    if bk is not None:
        out.append((bk[0], bk[1], -bb, -1))
    if ak is not None:
        out.append((ak[0], ak[1], ab, 1))
    return out


@implementer(IVFS)
class VFS:
    """
    @ivar exports: the export table (ids, rules, root inodes).
    @ivar users: the user database.
    @ivar quotas: quota limits and usage.
    @ivar events: change events (SMB CHANGE_NOTIFY, caches).
    @ivar locks: the cross-protocol lock table (byte ranges, share modes).
    @ivar leases: the cross-protocol lease manager (oplocks, leases, delegations).
    """

    _log = Logger()

    def __init__(
        self,
        backend: IBackend,
        config: Config,
        clock: IReactorTime,
        secret: bytes,
        users: IUserDB,
        metrics: Metrics | None = None,
        locks: ILockTable | None = None,
        leases: ILeaseManager | None = None,
    ) -> None:
        self.backend = backend
        #: Whether C{create}, C{remove}, C{rmdir} and C{commit} take a
        #: L{Fence} (the store answers before its log sync returned).
        self.fences = bool(getattr(backend, "fences", False))
        self._dir_after: Callable[[int], Attributes | None] | None = getattr(
            backend, "dir_after", None
        )
        #: The remote backend's word on whether cached attributes may be
        #: answered now (another gateway's write answered and not yet applied
        #: by the meta server: write-behind, docs/workers.rst).
        self._attrs_current: Callable[[], bool] | None = getattr(backend, "attrs_current", None)
        #: Whether the backend may answer an unstable write before its
        #: metadata is applied (the remote backend's write-behind), which only
        #: NFS asks for: its write verifier tells a client to resend what a
        #: lost one dropped; SMB has none (docs/workers.rst "Write-behind").
        self._write_behind = bool(getattr(backend, "supports_write_behind", False))
        #: Whether a record not cached is found by listing the inode's names
        #: first (L{meta_get}'s C{survey}): a backend whose every call is a
        #: round trip (the remote one) says so.
        self._survey = bool(getattr(backend, "survey_xattrs", False))
        self.config = config
        self.clock = clock
        self.exports = Exports.from_config(config.all_exports(), s3_root=config.s3.root)
        self.handles = HandleCodec(secret)
        # Handles whose MAC verified, and what they name: a client sends the
        # same few handles over and over, and the HMAC is most of decoding.
        self._verified: dict[bytes, tuple[int, int, int]] = {}
        c = config.cache.nfs_attr_cache
        self.attr_cache = AttrCache(
            c.max_entries, c.default_ttl_secs, c.eviction, clock, metrics, "attr"
        )
        self.name_cache = NameCache(c.max_entries, c.default_ttl_secs, c.eviction, clock, metrics)
        # Front ends' own metadata (L{meta_get}) by inode: key -> value (None:
        # unset); the key C{b""} present means every other key is unset (an
        # inode made here). Bounded like the attribute cache, and like it
        # replaced on every change made here and dropped on others' (an SMB
        # CREATE reads DOS attributes and the security descriptor, a WRITE
        # the seal and retention: each a store round trip otherwise).
        self.meta_cache: BoundedCache[int, dict[bytes, bytes | None]] = BoundedCache(
            c.max_entries, c.default_ttl_secs, c.eviction, clock
        )
        # Bumped whenever a cached record may be out of date, so a read that
        # was under way then does not store what it read.
        self._meta_gen = 0
        self.quotas = QuotaManager(backend, config.quota, clock)
        self.users = users
        self.events = ChangeEvents()
        self.locks: ILockTable = locks if locks is not None else LockTable(clock)
        self.leases: ILeaseManager = (
            leases
            if leases is not None
            else LeaseManager(
                clock,
                config.leases.recall_timeout_secs,
                config.leases.max_leases,
                metrics,
            )
        )
        # Where each inode was last seen by name, so a change to its data or
        # attributes can be reported in its directory (see vfs/events.py).
        self._names: OrderedDict[int, tuple[int, bytes]] = OrderedDict()
        # Retention records (WORM) and seals by inode: vfs/worm.py.
        self._worm = WormCache()
        self._seals: dict[int, bool] = {}
        self._names_max = max(4096, c.max_entries)
        # Other gateways change this store too: what we cache of it may be a
        # change event behind, so reads that promise read-after-write (an S3
        # GET after another gateway's PUT) ask the store (L{lookup} fresh=).
        self.shared = bool(ISharedStore.providedBy(backend))
        self.root_ino = 0
        self.is_open = False
        self._backend_errors = (
            metrics.family("gateway_backend_errors_total") if metrics is not None else None
        )
        self._backend_kind = config.backend.type
        if hasattr(backend, "resilver_guard"):
            # Mirrors: a copy being re-silvered holds other writers off (vfs/resilver.py).
            from claudefs_gateway.vfs.resilver import resilver_guard

            backend.resilver_guard = resilver_guard(self.leases)

    def _count_backend_error(self, f: Failure) -> Failure:
        # isinstance, not Failure.check (which compares the qualified names
        # of the exception's classes): every expected error (a LOOKUP of a
        # name that is not there, libnfs's before each create) passes here.
        if self._backend_errors is not None and isinstance(f.value, _BACKEND_TROUBLE):
            self._backend_errors.labels(self._backend_kind, type(f.value).__name__).inc()
        return f

    # -- lifecycle ------------------------------------------------------------

    async def open(self) -> None:
        """Open the backend's namespace: export directories exist, quotas loaded."""
        root = await self.backend.root()
        self.root_ino = root.ino
        for export in list(self.exports):
            ino = await self._ensure_dir(export.path)
            await self._apply_dir_settings(export.rules, ino)
            self.exports.replace(ExportInfo(export.id, export.rules, ino))
        await self.quotas.open()
        self.is_open = True
        self._log.info("vfs open: {n} exports", n=len(self.exports))

    async def _ensure_dir(self, path: str) -> int:
        ino = self.root_ino
        for part in (p for p in path.split("/") if p):
            name = part.encode("utf-8", "surrogateescape")
            try:
                a = await self.backend.lookup(ino, name)
            except errors.NotFound:
                try:
                    a = await self.backend.create(ino, name, FileType.DIR, 0o755, 0, 0)
                    self._log.info("created export directory {path}", path=path)
                except errors.Exists:
                    # Another gateway on the same store made it since our lookup
                    # (the workers of start --workers open a new store at once).
                    a = await self.backend.lookup(ino, name)
                    self._log.info("export directory {path} made by another gateway", path=path)
            if not a.is_dir:
                raise errors.NotDir(f"export path component is not a directory: {path}")
            ino = a.ino
        return ino

    async def _apply_dir_settings(self, rules: Export, ino: int) -> None:
        """The configured owner and mode of an export directory, kept at every start."""
        a = await self.backend.getattr(ino)
        change = SetAttrs(
            uid=rules.dir_uid if rules.dir_uid not in (None, a.uid) else None,
            gid=rules.dir_gid if rules.dir_gid not in (None, a.gid) else None,
            mode=rules.dir_mode if rules.dir_mode not in (None, a.mode) else None,
        )
        if change.uid is None and change.gid is None and change.mode is None:
            return
        await self.backend.setattr(ino, change)
        self._log.info(
            "export {path}: directory owner {uid}:{gid}, mode {mode:o}",
            path=rules.path,
            uid=a.uid if change.uid is None else change.uid,
            gid=a.gid if change.gid is None else change.gid,
            mode=a.mode if change.mode is None else change.mode,
        )

    def forget_changed(self, ino: int, dir_ino: int = 0) -> None:
        """
        Another gateway changed C{ino} (and the entries of C{dir_ino}, if not 0):
        drop what we cache of them (the remote backend's change events).
        """
        self.attr_cache.discard(ino)
        self._meta_forget(ino)
        if dir_ino:
            self.attr_cache.discard(dir_ino)
            self.name_cache.forget_dir(dir_ino)
            # Its names changed, which ones is not said: listeners read again.
            self.events.rescan(dir_ino)

    def changes_heard(self) -> bool:
        """
        Whether every change any gateway acknowledged so far is known here, so
        that what the caches and the change events' listeners keep is current:
        always for a store of this gateway alone; for a shared store, what its
        event marks say (C{heard_everything}, docs/workers.rst), else False.
        """
        if not self.shared:
            return True
        heard = getattr(self.backend, "heard_everything", None)
        return heard is not None and bool(heard())

    @property
    def store_id(self) -> bytes:
        """
        The store's identity: random per store, the same across restarts
        (NFSv4 names its server owner and scope after it, so clients know
        a restarted gateway for the same server and reclaim their state).
        """
        got = getattr(self.backend, "instance_id", None)
        return bytes(got) if got else b"\0" * 8

    @property
    def server_restarts(self) -> int:
        """
        How many restarts of the servers holding its data (meta or data
        servers, C{backend: remote}) the backend has seen; 0 for a store in
        this process. NFS folds it into its write verifier.
        """
        return int(getattr(self.backend, "restarts", 0))

    @deferred
    async def get_state(self, key: str) -> bytes | None:
        """
        A front end's small durable record (NFSv4 client records for
        reclaim after a restart, SMB durable handles); L{None} if never set.
        Keys start with the protocol's name.
        """
        got: bytes | None = await self.backend.get_state(key)
        return got

    @deferred
    async def set_state(self, key: str, value: bytes | None) -> None:
        """Store (L{None}: remove) a front end's small durable record."""
        await self.backend.set_state(key, value)

    def invalidate(self) -> int:
        """Drop every cached attribute and name (C{POST /admin/cache/invalidate})."""
        self._meta_gen += 1
        self.meta_cache.clear()
        self._seals.clear()
        dropped = self.attr_cache.clear() + self.name_cache.clear()
        self.events.rescan(0)
        return dropped

    # -- identity and handles -------------------------------------------------

    def caller(self, export: ExportInfo, client: str, cred: Credentials, protocol: str) -> Caller:
        """
        The identity a request runs as (export client rules and squashing applied).

        @raise Access: the client's address is not allowed by the export.
        """
        return self.exports.caller(export, client, cred, protocol)

    def handle(self, export: ExportInfo, a: Attributes) -> bytes:
        return self.handles.encode(export.id, a.ino, a.gen)

    def handle_parts(self, handle: bytes) -> tuple[int, int, int]:
        """The export id, inode and generation of a handle of ours. @raise BadHandle."""
        return self.handles.decode(handle)

    @deferred
    async def from_handle(self, handle: bytes) -> tuple[ExportInfo, Attributes]:
        """
        The export and inode a handle names.

        @raise BadHandle: malformed or forged. @raise Stale: the export or file is gone.
        """
        if type(handle) is not bytes:
            handle = bytes(handle)
        got = self._verified.get(handle)
        if got is None:
            got = self.handles.decode(handle)
            if len(self._verified) >= _VERIFIED_MAX:
                self._verified.clear()
            self._verified[handle] = got
        export_id, ino, gen = got
        export = self.exports.get(export_id)
        if export is None:
            raise errors.Stale("export no longer exists")
        try:
            a = await self._getattr(ino)
        except errors.NotFound:
            raise errors.Stale(f"inode {ino} is gone") from None
        if a.gen != gen:
            raise errors.Stale(f"inode {ino} generation changed")
        return export, a

    def from_handle_now(self, handle: bytes) -> tuple[ExportInfo, Attributes] | None:
        """
        L{from_handle}'s answer when it is in memory (a handle verified
        before, its attributes cached), else L{None}: then call
        L{from_handle}, which also raises what this does not. For the NFS
        fast paths (a cached GETATTR or page-cache READ with no Deferred and
        no coroutine); the attributes are the attribute cache's, the same
        L{from_handle} would give. L{attrs_now} is in line: this runs once
        per NFS GETATTR and READ (issue 18).
        """
        got = self._verified.get(handle)
        if got is None:
            return None
        export = self.exports.get(got[0])
        if export is None:
            return None
        a = self.attr_cache.get(got[1])
        if (
            a is None
            or a.gen != got[2]
            or (self._attrs_current is not None and not self._attrs_current())
        ):
            return None
        return export, a

    def attrs_now(self, ino: int) -> Attributes | None:
        """
        L{getattr}'s answer when the attribute cache has it and may give it
        (see L{_getattr}), else L{None}: then call L{getattr}. For the NFS
        replies' post-op and wcc attributes of an object a change just
        cached, without a coroutine and an already fired Deferred.
        """
        a = self.attr_cache.get(ino)
        if a is not None and self._attrs_current is not None and not self._attrs_current():
            return None
        return a

    def read_now(
        self, caller: Caller, a: Attributes, offset: int, count: int, ranged: bool = False
    ) -> tuple[bytes | FileRange, bool] | None:
        """
        L{read}'s result, as (data, eof), when it needs no wait (no lock,
        lease or seal to check, the backend has the bytes at hand), else
        L{None}: then call L{read}, which also raises what this does not.
        C{a} is the file's attributes as L{attrs_now} or L{from_handle_now}
        just gave them (the reply's post-op attributes: taking them again
        from the cache would cost a second lookup per READ). A tuple:
        building a frozen L{ReadResult} costs as much as the rest of a
        cached read's checks. C{ranged}: the caller can send a
        L{FileRange} at once (before it returns to the reactor), and a
        large read all in the page cache may answer one instead of bytes
        (no copy of the data through the gateway's memory).
        """
        fast = getattr(self.backend, "read_now", None)
        ino = a.ino
        if (
            fast is None
            or a.type is not FileType.REG
            or self.locks.busy(ino)
            or self.leases.busy(ino)
        ):
            return None
        if caller.protocol != PRIVATE_OWNER and self._seals.get(ino) is not False:
            return None  # unknown or sealed: read() checks and refuses
        cred = caller.cred
        if cred.uid != a.uid and not perm.granted(cred, a) & (perm.R | perm.X):
            return None  # read() refuses
        got: tuple[bytes | FileRange, bool] | None = (
            fast(ino, offset, count, True) if ranged else fast(ino, offset, count)
        )
        return got

    # -- internal helpers -----------------------------------------------------

    async def _getattr(self, ino: int) -> Attributes:
        cache = self.attr_cache
        a = cache.get(ino)
        if a is not None and self._attrs_current is not None and not self._attrs_current():
            a = None
        if a is None:
            epoch = cache.epoch
            a = await self.backend.getattr(ino)
            cache.put_read(ino, a, epoch)
        return a

    async def _dir(self, ino: int) -> Attributes:
        d = await self._getattr(ino)
        if not d.is_dir:
            raise errors.NotDir(f"inode {ino}")
        return d

    def _writable(self, caller: Caller) -> None:
        if caller.read_only:
            raise errors.ReadOnly("export is read-only")

    async def _lookup_raw(self, dir_ino: int, name: bytes) -> Attributes:
        ino = self.name_cache.get((dir_ino, name))
        if ino is not None:
            try:
                a = await self._getattr(ino)
            except errors.NotFound:
                self.name_cache.discard((dir_ino, name))
            else:
                self._seen(dir_ino, name, a.ino)
                return a
        epoch = self.attr_cache.epoch
        a = await self.backend.lookup(dir_ino, name)
        # Kept only if no change came during the lookup (AttrCache.epoch).
        if self.attr_cache.put_read(a.ino, a, epoch):
            self.name_cache.put((dir_ino, name), a.ino)
        self._seen(dir_ino, name, a.ino)
        return a

    def _dir_changed(self, dir_ino: int) -> None:
        """
        A namespace change through this vfs changed C{dir_ino}: its cached
        attributes are old. A backend whose answer carried the directory
        after the change (the remote client's C{dir_after}) saves the
        GETATTR the front end's reply would send (NFS wcc data).
        """
        if self._dir_after is not None:
            after = self._dir_after(dir_ino)
            if after is not None:
                self.attr_cache.put(dir_ino, after)  # replaces, and counts as a change
                return
        self.attr_cache.discard(dir_ino)

    def _gone(self, a: Attributes) -> None:
        """Forget an inode whose last link went."""
        self.attr_cache.discard(a.ino)
        if a.is_dir:
            self.name_cache.forget_dir(a.ino)
        self._names.pop(a.ino, None)
        self._worm.drop(a.ino)
        self._seals.pop(a.ino, None)
        self._meta_forget(a.ino)
        self.locks.release_inode(a.ino)
        self.leases.release_inode(a.ino)

    # -- names of inodes, change events -----------------------------------------

    def _seen(self, dir_ino: int, name: bytes, ino: int) -> None:
        if name in (b".", b".."):
            return
        names = self._names
        names[ino] = (dir_ino, name)
        names.move_to_end(ino)
        if len(names) > self._names_max:
            names.popitem(last=False)

    def name_of(self, ino: int) -> tuple[int, bytes] | None:
        """A directory and name this gateway last saw C{ino} under, if any."""
        return self._names.get(ino)

    def _emit(
        self, dir_ino: int, action: Action, name: bytes, ino: int, what: What = What.NONE
    ) -> None:
        if self.events.wants(dir_ino):
            self.events.emit(Change(dir_ino, action, name, ino, what))

    def _modified(self, ino: int, what: What) -> None:
        """A file's data or attributes changed: tell its directory's watchers."""
        events = self.events
        if events.quiet:
            return
        where = self._names.get(ino)
        if where is not None and events.wants_modified(where[0]):
            events.emit(Change(where[0], Action.MODIFIED, where[1], ino, what))

    # -- write once, read many (vfs/worm.py) -------------------------------------

    async def _protection(self, ino: int) -> Retention | None:
        known, r = self._worm.get(ino)
        if not known:
            try:
                raw: bytes | None = await self.backend.getxattr(ino, INTERNAL_PREFIX + WORM_KEY)
            except errors.NoData:
                raw = None
            r = Retention.decode(raw)
            self._worm.put(ino, r)
        return r

    async def _check_sealed(self, caller: Caller, a: Attributes) -> None:
        """
        A sealed file's bytes (S3 server-side encryption: ciphertext at rest)
        are its owning front end's alone: any other protocol's data access is
        refused rather than handed ciphertext.

        @raise Access: sealed, and the caller is a file client.
        """
        if caller.protocol == PRIVATE_OWNER or not a.is_reg:
            return
        sealed = self._seals.get(a.ino)
        if sealed is None:
            try:
                await self.backend.getxattr(a.ino, INTERNAL_PREFIX + SEAL_KEY)
                sealed = True
            except errors.NoData:
                sealed = False
            if len(self._seals) > 65536:
                self._seals.clear()
            self._seals[a.ino] = sealed
        if sealed:
            raise errors.Access("the file is encrypted by S3 (server-side encryption)")

    async def _check_worm(self, a: Attributes, origin: Origin, destroy: bool) -> None:
        """
        Refuse to change (or, C{destroy}, to remove the last name of) a file
        under retention or legal hold, whatever the protocol.

        @raise Perm: it is protected.
        """
        if not a.is_reg:
            return
        r = await self._protection(a.ino)
        if r is None:
            return
        now = int(self.clock.seconds() * 1_000_000_000)
        if not r.active(now):
            return
        if destroy and origin.bypass_governance and r.bypassable(now):
            return
        raise errors.Perm("the file is under object lock (retention or legal hold)")

    # -- locks, share modes and leases (docs/locks.rst "One file, every protocol") -

    def _origin(self, caller: Caller, origin: Origin | None) -> Origin:
        return origin if origin is not None else default_origin(caller.protocol)

    def _check_shares(self, ino: int, origin: Origin, doing: frozenset[str]) -> None:
        """
        A request that comes through no open of C{ino} (NFSv3, S3, a rename's
        target) is refused by any open that denies what it does.
        """
        share = origin.share
        if share is not None and share.ino == ino:
            return  # checked when its open was made
        for token in self.locks.shares(ino):
            if token.deny & doing:
                raise errors.ShareConflict(
                    f"another open denies {'/'.join(sorted(token.deny & doing))}"
                )

    def _check_range(self, ino: int, origin: Origin, start: int, length: int, write: bool) -> None:
        if not origin.ranges:
            return
        if not self.locks.check_io(ino, origin.lock_owner, start, length, write, origin.strict):
            raise errors.LockConflict(None, "a byte-range lock of another owner covers the range")

    async def _before(
        self,
        ino: int,
        origin: Origin,
        why: Why,
        doing: frozenset[str] = frozenset(),
        span: tuple[int, int, bool] | None = None,
    ) -> None:
        """
        What every change (or read) of C{ino} passes first: other opens' deny
        modes (C{doing}), byte-range locks (C{span}: start, length, write),
        then break-before-mutate of other holders' leases (C{why}).
        """
        if not origin.bypass:
            if doing:
                self._check_shares(ino, origin, doing)
            if span is not None:
                self._check_range(ino, origin, *span)
        leases = self.leases
        if leases.busy(ino):
            await leases.recall(ino, why, origin.exempt, wait=origin.wait)

    async def _dir_change(self, dir_ino: int, origin: Origin) -> None:
        """Break directory leases on C{dir_ino}: an entry in it is about to change."""
        leases = self.leases
        if leases.busy(dir_ino):
            await leases.recall(dir_ino, Why.DIR_CHANGE, origin.exempt, wait=origin.wait)

    async def _after_write(
        self, caller: Caller, before: Attributes, after: Attributes
    ) -> Attributes:
        mode = perm.strip_setid_on_write(caller.cred, after)
        if mode is not None:
            after = await self.backend.setattr(after.ino, SetAttrs(mode=mode))
        self.attr_cache.put(after.ino, after)
        return after

    # -- attributes -----------------------------------------------------------

    @deferred
    async def getattr(self, caller: Caller, ino: int) -> Attributes:
        return await self._getattr(ino)

    @deferred
    async def access(self, caller: Caller, ino: int, mask: int) -> int:
        """The subset of C{mask} (R/W/X bits) the caller holds; W is never held on a read-only export."""
        a = await self._getattr(ino)
        bits = perm.granted(caller.cred, a)
        if caller.read_only:
            bits &= ~perm.W
        return bits & mask

    @deferred
    async def setattr(
        self,
        caller: Caller,
        ino: int,
        changes: SetAttrs,
        guard_ctime_ns: int | None = None,
        origin: Origin | None = None,
        durable: bool = True,
    ) -> Attributes:
        """
        Change attributes under Linux's rules (see L{permissions.check_setattr});
        a truncation by the owner is allowed whatever the mode (owner override).
        A size change is a write as far as other opens' deny modes, byte-range
        locks (the bytes between the old and the new size) and leases go.
        """
        self._writable(caller)
        a = await self._getattr(ino)
        if changes.is_empty():
            return a
        cred = caller.cred
        size_change = changes.size
        if size_change is not None and (cred.uid == a.uid or cred.is_root):
            # Owner override for truncation: check the rest without the size.
            checked = perm.check_setattr(
                cred,
                a,
                SetAttrs(
                    mode=changes.mode,
                    uid=changes.uid,
                    gid=changes.gid,
                    atime=changes.atime,
                    mtime=changes.mtime,
                    btime=changes.btime,
                ),
            )
            changes = SetAttrs(
                mode=checked.mode,
                uid=checked.uid,
                gid=checked.gid,
                size=size_change,
                atime=checked.atime,
                mtime=checked.mtime,
                btime=checked.btime,
            )
        else:
            changes = perm.check_setattr(cred, a, changes)
        if size_change is not None:
            if a.is_dir:
                raise errors.IsDir("size of a directory")
            if size_change > MAX_FILE_SIZE:
                raise errors.FBig("size too large")
            await self._check_sealed(caller, a)
            await self._check_worm(a, self._origin(caller, origin), destroy=False)
        new_uid = changes.uid if changes.uid is not None else a.uid
        new_gid = changes.gid if changes.gid is not None else a.gid
        new_size = (
            size_change if size_change is not None and a.is_reg else (a.size if a.is_reg else 0)
        )
        moved = new_uid != a.uid or new_gid != a.gid
        org = self._origin(caller, origin)
        if size_change is not None and a.is_reg and size_change != a.size:
            low, high = sorted((size_change, a.size))
            await self._before(ino, org, Why.WRITE, _WRITE, (low, high - low, True))
        else:
            await self._before(ino, org, Why.SETATTR)
        if (
            guard_ctime_ns is None
            and a.is_reg
            and changes == SetAttrs(size=a.size)
            and not self.shared
        ):
            # A truncation to the size the file has, and nothing else: every
            # store changes nothing for it (POSIX ftruncate marks the times
            # only "if the file size is changed"; RFC 1813 SETATTR), so
            # nothing needs a commit and the attributes at hand are the
            # answer. libnfs sends this after every O_TRUNC create (CREATE,
            # then SETATTR size 0): a round trip to the store's writer saved
            # per small file. (Not on a shared store: another gateway may
            # have changed the size since this one's cache heard of it.)
            return a
        ticket = self._admit_move(a, new_uid, new_gid, new_size, moved)
        try:
            after = await self.backend.setattr(ino, changes, guard_ctime_ns, durable=durable)
        except BaseException:
            self.quotas.settle(ticket)
            raise
        self.quotas.settle(ticket, _usage_changes(a, after))
        self.attr_cache.put(ino, after)
        what = What.NONE
        if size_change is not None:
            what |= What.SIZE | What.DATA
        if changes.mode is not None or moved:
            what |= What.ATTRIBUTES | What.SECURITY
        if changes.atime is not None or changes.mtime is not None or changes.btime is not None:
            what |= What.TIMES
        self._modified(ino, what)
        return after

    def _admit_move(self, a: Attributes, uid: int, gid: int, size: int, moved: bool) -> Any:
        """Reserve what a setattr adds: growth, or a whole file for a new owner."""
        old_size = a.size if a.is_reg else 0
        grow = size - old_size
        if not moved:
            return self.quotas.admit(uid, gid, grow, 0)
        return self.quotas.admit_keys(
            [
                (("user", uid), size if uid != a.uid else grow, 1 if uid != a.uid else 0),
                (("group", gid), size if gid != a.gid else grow, 1 if gid != a.gid else 0),
            ]
        )

    # -- names ----------------------------------------------------------------

    def _private(self, caller: Caller, name: bytes) -> None:
        """A client naming one of the gateway's private entries finds nothing there."""
        if name in PRIVATE_NAMES and caller.protocol != PRIVATE_OWNER:
            raise errors.NotFound("no such entry")

    def _reserved(self, caller: Caller, name: bytes) -> None:
        """A client may not make, remove or rename one of the gateway's private entries."""
        if name in PRIVATE_NAMES and caller.protocol != PRIVATE_OWNER:
            raise errors.Access("the name is reserved by the gateway")

    @deferred
    async def lookup(
        self, caller: Caller, dir_ino: int, name: bytes, fresh: bool = False
    ) -> Attributes:
        """
        The entry C{name} of C{dir_ino}. C{fresh}: on a store other gateways
        change too (L{shared}), ask the store rather than the caches, which may
        be a change event behind (S3 promises read-after-write across every
        gateway; the object's stored metadata, such as its checksums, is
        dropped from the cache when the inode changed meanwhile).
        """
        d = await self._dir(dir_ino)
        perm.check(caller.cred, d, perm.X)
        self._private(caller, name)
        if name == b".":
            return d
        if name == b"..":
            if dir_ino == caller.export.root_ino:
                return d
            return await self._lookup_raw(dir_ino, name)
        if fresh and self.shared:
            return await self._lookup_fresh(dir_ino, name)
        return await self._lookup_raw(dir_ino, name)

    async def _lookup_fresh(self, dir_ino: int, name: bytes) -> Attributes:
        heard = getattr(self.backend, "heard_everything", None)
        if heard is not None and heard():
            # Every change any gateway acknowledged so far has reached this
            # one and dropped what it made stale (forget_changed; the event
            # marks of docs/workers.rst "Reads without a round trip"): what
            # the caches hold now is what the store would answer.
            ino = self.name_cache.get((dir_ino, name))
            if ino is not None:
                a = self.attr_cache.get(ino)
                if a is not None:
                    self._seen(dir_ino, name, a.ino)
                    return a
        epoch = self.attr_cache.epoch
        try:
            a = await self.backend.lookup(dir_ino, name)
        except errors.NotFound:
            self.name_cache.discard((dir_ino, name))
            raise
        old = self.attr_cache.get(a.ino)
        if old is None or old.change != a.change or old.gen != a.gen:
            self._meta_forget(a.ino)
        if self.attr_cache.put_read(a.ino, a, epoch):
            self.name_cache.put((dir_ino, name), a.ino)
        else:
            self.name_cache.discard((dir_ino, name))
        self._seen(dir_ino, name, a.ino)
        return a

    async def _prepare_new(self, caller: Caller, dir_ino: int) -> Attributes:
        self._writable(caller)
        d = await self._dir(dir_ino)
        perm.check(caller.cred, d, perm.W | perm.X)
        return d

    async def _make(
        self,
        caller: Caller,
        dir_ino: int,
        name: bytes,
        type: FileType,
        mode: int,
        rdev: tuple[int, int] = (0, 0),
        target: bytes | None = None,
        origin: Origin | None = None,
        durable: bool = True,
        share: Any = None,
        fence: Fence | None = None,
    ) -> Attributes:
        self._reserved(caller, name)
        d = await self._prepare_new(caller, dir_ino)
        uid, gid = perm.new_owner(caller.cred, d)
        mode = perm.new_mode(caller.cred, d, mode, type, gid)
        await self._dir_change(dir_ino, self._origin(caller, origin))
        ticket = self.quotas.admit(uid, gid, 0, 1)
        try:
            if target is not None:
                a = await self.backend.symlink(dir_ino, name, target, mode, uid, gid)
            elif share is not None:
                # A shared lock table's intent (vfs/shared.py): the remote
                # backend registers the opener's share with the create.
                remote: Any = self.backend
                a = await remote.create(
                    dir_ino, name, type, mode, uid, gid, rdev, durable=durable, share=share
                )
            elif fence is not None and self.fences:
                store: Any = self.backend
                a = await store.create(
                    dir_ino, name, type, mode, uid, gid, rdev, durable=durable, fence=fence
                )
            else:
                a = await self.backend.create(
                    dir_ino, name, type, mode, uid, gid, rdev, durable=durable
                )
        except BaseException:
            self.quotas.settle(ticket)
            raise
        self.quotas.settle(ticket, [(uid, gid, 0, 1)])
        self.attr_cache.put(a.ino, a)
        self.name_cache.put((dir_ino, name), a.ino)
        # A new inode has no metadata of its own: no seal, no retention, no
        # front end's records, until they are set through this vfs.
        self._meta_forget(a.ino)
        self.meta_cache.put(a.ino, {b"": None})
        self._worm.put(a.ino, None)
        if len(self._seals) > 65536:
            self._seals.clear()
        self._seals[a.ino] = False
        self._seen(dir_ino, name, a.ino)
        self._dir_changed(dir_ino)
        self._emit(dir_ino, Action.ADDED, name, a.ino)
        return a

    @deferred
    async def create(
        self,
        caller: Caller,
        dir_ino: int,
        name: bytes,
        mode: int,
        exclusive: bool = True,
        origin: Origin | None = None,
        durable: bool = True,
        share: Any = None,
        fence: Fence | None = None,
    ) -> Attributes:
        """
        A new regular file. With C{exclusive=False} an existing regular file of
        that name is returned instead (NFSv3 UNCHECKED; the caller may then
        truncate it). C{durable=False}: see L{IMetadataService.create}.
        C{share}: the opener's share reservation to register with the create,
        from the lock table's C{share_intent} (only a shared lock table has
        one: docs/workers.rst "What an SMB create costs"). C{fence}: answered
        before the store's log sync returned, which the caller then waits
        for (L{claudefs_gateway.core.fence}; only where L{fences}).

        @raise Exists: the name is taken (by anything, when exclusive; by a
            non-file, when not).
        """
        try:
            return await self._make(
                caller,
                dir_ino,
                name,
                FileType.REG,
                mode,
                origin=origin,
                durable=durable,
                share=share,
                fence=fence,
            )
        except errors.Exists:
            if exclusive:
                raise
        a = await self._lookup_raw(dir_ino, name)
        if not a.is_reg:
            raise errors.Exists("name exists and is not a regular file")
        return a

    @deferred
    async def create_exclusive(
        self, caller: Caller, dir_ino: int, name: bytes, verifier: bytes, mode: int = 0o600
    ) -> Attributes:
        """
        NFSv3/v4 EXCLUSIVE create: the verifier is kept with the file, so a
        retransmitted create (same verifier) gets the same file back instead of
        EEXIST.
        """
        try:
            a = await self._make(caller, dir_ino, name, FileType.REG, mode)
        except errors.Exists:
            a = await self._lookup_raw(dir_ino, name)
            try:
                stored = await self.backend.getxattr(a.ino, _VERIFIER) if a.is_reg else None
            except errors.NoData:
                stored = None
            if stored != verifier:
                raise
            return a
        await self.backend.setxattr(a.ino, _VERIFIER, verifier)
        self._meta_forget(a.ino)
        return a

    @deferred
    async def mkdir(
        self,
        caller: Caller,
        dir_ino: int,
        name: bytes,
        mode: int,
        origin: Origin | None = None,
        durable: bool = True,
    ) -> Attributes:
        return await self._make(
            caller, dir_ino, name, FileType.DIR, mode, origin=origin, durable=durable
        )

    @deferred
    async def symlink(
        self,
        caller: Caller,
        dir_ino: int,
        name: bytes,
        target: bytes,
        mode: int = 0o777,
        origin: Origin | None = None,
    ) -> Attributes:
        return await self._make(
            caller, dir_ino, name, FileType.LNK, mode, target=target, origin=origin
        )

    @deferred
    async def mknod(
        self,
        caller: Caller,
        dir_ino: int,
        name: bytes,
        type: FileType,
        mode: int,
        rdev: tuple[int, int] = (0, 0),
    ) -> Attributes:
        """Device, fifo or socket nodes; device nodes need root (as CAP_MKNOD)."""
        if type in (FileType.BLK, FileType.CHR):
            if not caller.cred.is_root:
                raise errors.Perm("only root may make device nodes")
        elif type not in (FileType.FIFO, FileType.SOCK):
            raise errors.Inval("mknod makes devices, fifos and sockets")
        return await self._make(caller, dir_ino, name, type, mode, rdev)

    @deferred
    async def link(
        self, caller: Caller, ino: int, dir_ino: int, name: bytes, origin: Origin | None = None
    ) -> Attributes:
        self._reserved(caller, name)
        await self._prepare_new(caller, dir_ino)
        org = self._origin(caller, origin)
        await self._before(ino, org, Why.NAMESPACE)
        await self._dir_change(dir_ino, org)
        a = await self.backend.link(ino, dir_ino, name)
        self.attr_cache.put(a.ino, a)
        self.name_cache.put((dir_ino, name), a.ino)
        self._seen(dir_ino, name, a.ino)
        self._dir_changed(dir_ino)
        self._emit(dir_ino, Action.ADDED, name, a.ino)
        return a

    async def _prepare_remove(
        self, caller: Caller, dir_ino: int, name: bytes
    ) -> tuple[Attributes, Attributes]:
        self._writable(caller)
        d = await self._dir(dir_ino)
        perm.check(caller.cred, d, perm.W | perm.X)
        if name in (b".", b".."):
            raise errors.Inval("cannot remove . or ..")
        self._private(caller, name)
        a = await self._lookup_raw(dir_ino, name)
        perm.check_sticky(caller.cred, d, a)
        return d, a

    async def _before_unlink(self, a: Attributes, origin: Origin, doing: frozenset[str]) -> None:
        """
        A name of C{a} goes (unlink, or replaced by a rename): opens that deny
        delete refuse it; for strict origins (S3) any byte-range lock of
        another owner does too; its last name going breaks every lease on it.
        """
        span = (0, _WHOLE, True) if origin.strict and a.is_reg else None
        why = Why.UNLINK if a.nlink <= 1 or a.is_dir else Why.NAMESPACE
        await self._before(a.ino, origin, why, doing, span)

    @deferred
    async def remove(
        self,
        caller: Caller,
        dir_ino: int,
        name: bytes,
        origin: Origin | None = None,
        durable: bool = True,
        fence: Fence | None = None,
        *,
        expect: int | None = None,
    ) -> Attributes:
        """
        Unlink a non-directory; fires with the inode after (nlink 0: gone).
        C{fence}: as for L{create}. C{expect}: remove the name only if it
        still names that inode (the one the caller judged: an S3 conditional
        DELETE); another there means that one was replaced (NotFound).
        """
        _, a = await self._prepare_remove(caller, dir_ino, name)
        if expect is not None and a.ino != expect:
            raise errors.NotFound("replaced meanwhile")
        if a.is_dir:
            raise errors.IsDir("is a directory")
        org = self._origin(caller, origin)
        if a.nlink <= 1:
            await self._check_worm(a, org, destroy=True)
        await self._before_unlink(a, org, _DELETE)
        await self._dir_change(dir_ino, org)
        if fence is not None and self.fences:
            store: Any = self.backend
            after = await store.unlink(dir_ino, name, durable=durable, fence=fence)
        else:
            after = await self.backend.unlink(dir_ino, name, durable=durable)
        self._after_remove(dir_ino, name, a, after)
        return after

    @property
    def can_prune(self) -> bool:
        """Whether the store makes L{remove_pruning} one operation (else it raises NotSupp)."""
        return callable(getattr(self.backend, "unlink_pruning", None))

    @deferred
    async def remove_pruning(
        self,
        caller: Caller,
        dir_ino: int,
        name: bytes,
        dirs: tuple[tuple[int, bytes], ...],
        origin: Origin | None = None,
        expect: int | None = None,
    ) -> tuple[Attributes, tuple[Attributes, ...]]:
        """
        L{remove}, then L{rmdir} of each of C{dirs} (parent, name: the
        directory C{dir_ino} as its parent names it, then the one holding
        that...) left empty, as one durable store operation (S3's DELETE
        pruning the directories it made). A directory the caller may not
        remove, one with a lease or open, or one not empty, ends the
        pruning there (it is not an error). Fires with the unlinked inode
        after and the directories removed, after. C{expect}: as for L{remove}.

        @raise NotSupp: the store cannot (L{can_prune}).
        """
        unlink = getattr(self.backend, "unlink_pruning", None)
        if unlink is None:
            raise errors.NotSupp("the store cannot prune in one operation")
        _, a = await self._prepare_remove(caller, dir_ino, name)
        if expect is not None and a.ino != expect:
            raise errors.NotFound("replaced meanwhile")
        if a.is_dir:
            raise errors.IsDir("is a directory")
        org = self._origin(caller, origin)
        if a.nlink <= 1:
            await self._check_worm(a, org, destroy=True)
        await self._before_unlink(a, org, _DELETE)
        await self._dir_change(dir_ino, org)
        plan: list[tuple[int, bytes, Attributes]] = []
        want = dir_ino
        roots = {e.root_ino for e in self.exports}
        for parent, dname in dirs:
            try:
                d, sub = await self._prepare_remove(caller, parent, dname)
            except errors.FSError:
                break
            if sub.ino != want or not sub.is_dir or sub.ino in roots:
                break
            if self.leases.busy(sub.ino) or self.leases.busy(parent) or self.locks.busy(sub.ino):
                break
            if not self._shares_allow(sub.ino, org):
                break
            plan.append((parent, dname, sub))
            want = parent
        after, removed = await unlink(dir_ino, name, tuple((p, n, sub.ino) for p, n, sub in plan))
        self._after_remove(dir_ino, name, a, after)
        for (parent, dname, sub), gone in zip(plan, removed, strict=False):
            self._after_remove(parent, dname, sub, gone)
        return after, removed

    def _shares_allow(self, ino: int, origin: Origin) -> bool:
        """Whether other opens' share modes let C{ino} be deleted."""
        try:
            self._check_shares(ino, origin, _DELETE)
        except errors.FSError:
            return False
        return True

    @deferred
    async def rmdir(
        self,
        caller: Caller,
        dir_ino: int,
        name: bytes,
        origin: Origin | None = None,
        durable: bool = True,
        fence: Fence | None = None,
    ) -> Attributes:
        """Remove an empty directory. C{fence}: as for L{create}."""
        _, a = await self._prepare_remove(caller, dir_ino, name)
        if not a.is_dir:
            raise errors.NotDir("not a directory")
        if a.ino in {e.root_ino for e in self.exports}:
            raise errors.Busy("an export's root cannot be removed")
        org = self._origin(caller, origin)
        await self._before(a.ino, org, Why.DIR_NAMESPACE, _DELETE)
        await self._dir_change(dir_ino, org)
        if fence is not None and self.fences:
            store: Any = self.backend
            after = await store.rmdir(dir_ino, name, durable=durable, fence=fence)
        else:
            after = await self.backend.rmdir(dir_ino, name, durable=durable)
        self._after_remove(dir_ino, name, a, after)
        return after

    def _after_remove(
        self, dir_ino: int, name: bytes, before: Attributes, after: Attributes
    ) -> None:
        self.quotas.apply_all(_usage_changes(before, after))
        self.name_cache.discard((dir_ino, name))
        self._dir_changed(dir_ino)
        if after.nlink == 0:
            self._gone(after)
        else:
            self.attr_cache.put(after.ino, after)
            if self._names.get(after.ino) == (dir_ino, name):
                del self._names[after.ino]
        self._emit(dir_ino, Action.REMOVED, name, after.ino)

    @deferred
    async def rename(
        self,
        caller: Caller,
        src_dir: int,
        src_name: bytes,
        dst_dir: int,
        dst_name: bytes,
        origin: Origin | None = None,
        durable: bool = True,
    ) -> RenameResult:
        """
        POSIX rename under permission and sticky-bit rules; see
        IMetadataService.rename. Opens of the source that deny delete refuse
        it (as Windows does); a replaced destination is unlinked as far as
        share modes, locks and leases go, and its data replaced, so opens
        denying write refuse that too.
        """
        self._writable(caller)
        sd = await self._dir(src_dir)
        dd = await self._dir(dst_dir)
        perm.check(caller.cred, sd, perm.W | perm.X)
        perm.check(caller.cred, dd, perm.W | perm.X)
        for n in (src_name, dst_name):
            if n in (b".", b".."):
                raise errors.Inval("cannot rename . or ..")
            self._reserved(caller, n)
        src = await self._lookup_raw(src_dir, src_name)
        perm.check_sticky(caller.cred, sd, src)
        if src.ino in {e.root_ino for e in self.exports}:
            raise errors.Busy("an export's root cannot be renamed")
        try:
            dst: Attributes | None = await self._lookup_raw(dst_dir, dst_name)
        except errors.NotFound:
            dst = None
        if dst is not None and dst.ino != src.ino:
            perm.check_sticky(caller.cred, dd, dst)
            if dst.ino in {e.root_ino for e in self.exports}:
                raise errors.Busy("an export's root cannot be replaced")
        if src.is_dir and src_dir != dst_dir:
            # Moving a directory rewrites its "..": Linux needs write permission on it.
            perm.check(caller.cred, src, perm.W)
        org = self._origin(caller, origin)
        if dst is None or dst.ino != src.ino:
            if caller.protocol != PRIVATE_OWNER:
                # A file client renaming a protected file would change its key.
                await self._check_worm(src, org, destroy=False)
            if dst is not None and dst.nlink <= 1:
                await self._check_worm(dst, org, destroy=True)
            await self._before(
                src.ino, org, Why.DIR_NAMESPACE if src.is_dir else Why.NAMESPACE, _DELETE
            )
            if dst is not None:
                await self._before_unlink(dst, org, _REPLACE)
            await self._dir_change(src_dir, org)
            if dst_dir != src_dir:
                await self._dir_change(dst_dir, org)
        result = await self.backend.rename(src_dir, src_name, dst_dir, dst_name, durable=durable)
        if dst is not None and result.replaced is not None:
            self.quotas.apply_all(_usage_changes(dst, result.replaced))
            if result.replaced.nlink == 0:
                self._gone(result.replaced)
            else:
                self.attr_cache.put(result.replaced.ino, result.replaced)
        self.name_cache.discard((src_dir, src_name))
        self.name_cache.discard((dst_dir, dst_name))
        self.name_cache.put((dst_dir, dst_name), result.source.ino)
        if src.is_dir:
            self.name_cache.discard((src.ino, b".."))
        self.attr_cache.put(result.source.ino, result.source)
        self._seen(dst_dir, dst_name, result.source.ino)
        self._dir_changed(src_dir)
        self._dir_changed(dst_dir)
        if src_dir == dst_dir:
            self._emit(src_dir, Action.RENAMED_FROM, src_name, src.ino)
            self._emit(dst_dir, Action.RENAMED_TO, dst_name, src.ino)
        else:
            self._emit(src_dir, Action.REMOVED, src_name, src.ino)
            self._emit(dst_dir, Action.ADDED, dst_name, src.ino)
        return result

    @property
    def can_put_file(self) -> bool:
        """Whether the store makes L{put_file} one operation (else it raises NotSupp)."""
        return callable(getattr(self.backend, "put_file", None))

    @deferred
    async def put_file(
        self,
        caller: Caller,
        dir_ino: int,
        name: bytes,
        mode: int,
        data: bytes,
        meta: dict[bytes, bytes],
        mtime_ns: int,
        origin: Origin | None = None,
        dirs: tuple[bytes, ...] = (),
        dir_mode: int = 0o755,
        dir_meta: dict[bytes, bytes] | None = None,
    ) -> PutResult:
        """
        A new regular file with C{data} and the front end's metadata C{meta}
        (as L{meta_set} keeps it), modified at C{mtime_ns}, put at C{name},
        replacing a regular file there: what a create in a staging
        directory, a write, L{meta_set}s and a L{rename} over the name do,
        as one durable and atomic store operation (S3's small PUT: the
        store's C{put_file}). C{dirs}: directories to make first (C{mkdir
        -p} below C{dir_ino}, each with C{dir_mode} and C{dir_meta}), the
        file going in the last. The same rules apply as for those
        operations: write and search permission on the directory, the
        sticky bit, object lock and opens denying delete or write of a
        replaced file, quotas. Fires with the new file, the replaced one and
        the directories made (L{PutResult}) once durable.

        @raise NotSupp: the store has no C{put_file} (see L{can_put_file}).
        @raise IsDir: the name is a directory.
        @raise Exists: one of C{dirs} exists (made meanwhile: look again).
        """
        put = getattr(self.backend, "put_file", None)
        if put is None:
            raise errors.NotSupp("the store cannot put a file in one operation")
        for n in (*dirs, name):
            self._reserved(caller, n)
            if n in (b".", b".."):
                raise errors.Inval("cannot replace . or ..")
        d = await self._prepare_new(caller, dir_ino)
        org = self._origin(caller, origin)
        # The directories to make, and the one the file goes in as it will be.
        plan = []
        cur = d
        for n in dirs:
            uid, gid = perm.new_owner(caller.cred, cur)
            m = perm.new_mode(caller.cred, cur, dir_mode, FileType.DIR, gid)
            xattrs = tuple((INTERNAL_PREFIX + k, v) for k, v in (dir_meta or {}).items())
            plan.append((n, m, uid, gid, xattrs))
            cur = attrs.evolve(cur, uid=uid, gid=gid, mode=m, nlink=2)
            perm.check(caller.cred, cur, perm.W | perm.X)
        dst: Attributes | None = None
        if not dirs:
            try:
                dst = await self._lookup_raw(dir_ino, name)
            except errors.NotFound:
                dst = None
        if dst is not None:
            if dst.is_dir:
                raise errors.IsDir("non-directory over directory")
            perm.check_sticky(caller.cred, d, dst)
            if dst.nlink <= 1:
                await self._check_worm(dst, org, destroy=True)
            await self._before_unlink(dst, org, _REPLACE)
        await self._dir_change(dir_ino, org)
        uid, gid = perm.new_owner(caller.cred, cur)
        mode = perm.new_mode(caller.cred, cur, mode, FileType.REG, gid)
        ticket = self.quotas.admit(uid, gid, len(data), 1 + len(dirs))
        xattrs = tuple((INTERNAL_PREFIX + k, v) for k, v in meta.items())
        try:
            result: PutResult = await put(
                dir_ino, name, mode, uid, gid, data, xattrs, mtime_ns, tuple(plan)
            )
        except BaseException:
            self.quotas.settle(ticket)
            raise
        a = result.source
        changes = _usage_changes(None, a)
        for made in result.made:
            changes += _usage_changes(None, made)
        self.quotas.settle(ticket, changes)
        if dst is not None and result.replaced is not None:
            self.quotas.apply_all(_usage_changes(dst, result.replaced))
            if result.replaced.nlink == 0:
                self._gone(result.replaced)
            else:
                self.attr_cache.put(result.replaced.ino, result.replaced)
        parent = dir_ino
        for n, made in zip(dirs, result.made, strict=True):
            self._new_inode(parent, n, made, dir_meta or {})
            parent = made.ino
        self._new_inode(parent, name, a, meta)
        self._dir_changed(dir_ino)
        if dst is not None:
            self._emit(dir_ino, Action.REMOVED, name, dst.ino)
        parent = dir_ino
        for n, made in zip(dirs, result.made, strict=True):
            self._emit(parent, Action.ADDED, n, made.ino)
            parent = made.ino
        self._emit(parent, Action.ADDED, name, a.ino)
        return result

    def _new_inode(
        self, dir_ino: int, name: bytes, a: Attributes, meta: dict[bytes, bytes]
    ) -> None:
        """What the caches know of an inode just made at C{name} with C{meta} (and nothing else)."""
        self.attr_cache.put(a.ino, a)
        self.name_cache.put((dir_ino, name), a.ino)
        self._meta_forget(a.ino)
        known: dict[bytes, bytes | None] = {b"": None}
        known.update(meta)
        self.meta_cache.put(a.ino, known)
        if WORM_KEY not in meta:
            self._worm.put(a.ino, None)
        if SEAL_KEY not in meta:
            if len(self._seals) > 65536:
                self._seals.clear()
            self._seals[a.ino] = False
        self._seen(dir_ino, name, a.ino)

    @deferred
    async def readdir(
        self,
        caller: Caller,
        dir_ino: int,
        cookie: int,
        verifier: bytes,
        count: int,
        with_attrs: bool = False,
    ) -> DirPage:
        """
        A page of entries (see IMetadataService.readdir). Needs read permission;
        attributes are included only if also asked for and the caller may search
        the directory.
        """
        d = await self._dir(dir_ino)
        perm.check(caller.cred, d, perm.R)
        with_attrs = with_attrs and perm.may(caller.cred, d, perm.X)
        cache = self.attr_cache
        epoch = cache.epoch
        from_cache = False
        # The embedded store (no other writer: what this cache has is the
        # store's) lists with the attributes cached here, as GETATTR would
        # answer them: a listing right after its files were made or listed
        # reads names only.
        cached = getattr(self.backend, "readdir_cached", None) if with_attrs else None
        if cached is not None and cache.max_entries > 0:
            page, from_cache = await cached(dir_ino, cookie, verifier, count, cache.get_many)
        else:
            page = await self.backend.readdir(dir_ino, cookie, verifier, count, with_attrs)
        if any(e.name in PRIVATE_NAMES for e in page.entries):
            # The gateway's private entries are listed to nobody. A page left
            # empty but not the last is followed on, so a client never sees an
            # empty page that is not the end (it would ask again forever).
            kept = tuple(e for e in page.entries if e.name not in PRIVATE_NAMES)
            while not kept and not page.eof and page.entries:
                from_cache = False
                page = await self.backend.readdir(
                    dir_ino, page.entries[-1].cookie, page.verifier, count, with_attrs
                )
                kept = tuple(e for e in page.entries if e.name not in PRIVATE_NAMES)
            page = DirPage(kept, page.verifier, page.eof)
        entries = page.entries
        if with_attrs and not from_cache:
            # One pass for the page (a listing's per-entry cost): the
            # attributes cached as each put_read would, the names as _seen.
            cache.put_read_many([(e.ino, e.attrs) for e in entries], epoch)
        names = self._names
        move = names.move_to_end
        for e in entries:
            name = e.name
            if name != b"." and name != b"..":
                names[e.ino] = (dir_ino, name)
                move(e.ino)
        while len(names) > self._names_max:
            names.popitem(last=False)
        return page

    @deferred
    async def readlink(self, caller: Caller, ino: int) -> bytes:
        a = await self._getattr(ino)
        if not a.is_link:
            raise errors.Inval("not a symlink")
        return await self.backend.readlink(ino)

    # -- data -------------------------------------------------------------------

    def _data_allowed(self, caller: Caller, a: Attributes, write: bool) -> None:
        if a.is_dir:
            raise errors.IsDir("is a directory")
        if not a.is_reg:
            raise errors.Inval("not a regular file")
        cred = caller.cred
        if cred.uid == a.uid:
            return  # owner override (knfsd NFSD_MAY_OWNER_OVERRIDE)
        bits = perm.granted(cred, a)
        if write:
            if not bits & perm.W:
                raise errors.Access("write denied")
        elif not bits & (perm.R | perm.X):
            raise errors.Access("read denied")

    @deferred
    async def read(
        self, caller: Caller, ino: int, offset: int, count: int, origin: Origin | None = None
    ) -> ReadResult:
        """
        Read after other opens' deny-read modes, exclusive byte-range locks
        and other holders' write caching (broken to read first) allow it.
        """
        a = await self._getattr(ino)
        self._data_allowed(caller, a, write=False)
        await self._check_sealed(caller, a)
        if self.locks.busy(ino) or self.leases.busy(ino):
            span = (offset, min(count, _WHOLE - offset), False) if 0 <= offset < _WHOLE else None
            await self._before(ino, self._origin(caller, origin), Why.READ, _READ, span)
        data, eof = await self.backend.read(ino, offset, count)
        return ReadResult(data, eof, a)

    @deferred
    async def write(
        self,
        caller: Caller,
        ino: int,
        offset: int,
        data: bytes | memoryview,
        stable: bool,
        origin: Origin | None = None,
    ) -> WriteResult:
        """
        Write C{data} (bytes, or a memoryview a front end passes to avoid a
        copy of a large payload; the backends take any bytes-like object),
        after other opens' deny-write modes, byte-range locks and leases
        (others' caching broken first) allow it.
        """
        self._writable(caller)
        a = await self._getattr(ino)
        self._data_allowed(caller, a, write=True)
        if offset < 0:
            raise errors.Inval("negative offset")
        end = offset + len(data)
        if end > MAX_FILE_SIZE:
            raise errors.FBig("file too large")
        await self._check_sealed(caller, a)
        await self._check_worm(a, self._origin(caller, origin), destroy=False)
        if self.locks.busy(ino) or self.leases.busy(ino):
            await self._before(
                ino, self._origin(caller, origin), Why.WRITE, _WRITE, (offset, len(data), True)
            )
        ticket = self.quotas.admit(a.uid, a.gid, end - a.size if len(data) else 0, 0)
        try:
            if not stable and self._write_behind and caller.protocol.startswith("nfs"):
                result = await self.backend.write(  # type: ignore[call-arg]
                    ino, offset, data, stable, behind=True
                )
            else:
                result = await self.backend.write(ino, offset, data, stable)
        except BaseException:
            self.quotas.settle(ticket)
            raise
        before = result.before or a
        self.quotas.settle(ticket, _usage_changes(before, result.attrs))
        after = await self._after_write(caller, before, result.attrs)
        if len(data):
            self._modified(ino, _DATA_SIZE if after.size != before.size else What.DATA)
        return WriteResult(result.count, result.stable, after, before)

    @property
    def pnfs(self) -> Any:
        """
        The backend as an L{IPnfsBackend} when file bytes live on data servers
        pNFS clients can reach (the remote backend), else L{None}.
        """
        from claudefs_gateway.interfaces import IPnfsBackend

        return self.backend if IPnfsBackend.providedBy(self.backend) else None

    @deferred
    async def layout_commit(
        self, caller: Caller, ino: int, end: int, origin: Origin | None = None
    ) -> Attributes:
        """
        A pNFS client wrote bytes up to C{end} straight to the data servers
        (LAYOUTCOMMIT, RFC 8881 §18.42): the size grows to C{end} if smaller,
        mtime and ctime move, as a write by C{caller} would (quota, leases of
        others, change events). Fires with the new attributes.

        @raise NotSupp: the backend keeps no bytes on data servers.
        """
        pnfs = self.pnfs
        if pnfs is None:
            raise errors.NotSupp("no data servers")
        self._writable(caller)
        a = await self._getattr(ino)
        if not a.is_reg:
            raise errors.Inval("LAYOUTCOMMIT of a non-regular file")
        if end > MAX_FILE_SIZE:
            raise errors.FBig("file too large")
        if self.leases.busy(ino):
            await self._before(ino, self._origin(caller, origin), Why.WRITE)
        ticket = self.quotas.admit(a.uid, a.gid, max(0, end - a.size), 0)
        try:
            after: Attributes = await pnfs.pnfs_committed(ino, end)
        except BaseException:
            self.quotas.settle(ticket)
            raise
        self.quotas.settle(ticket, _usage_changes(a, after))
        self.attr_cache.put(ino, after)
        self._modified(ino, _DATA_SIZE if after.size != a.size else What.DATA)
        return after

    def sync(self) -> defer.Deferred[None]:
        """Make every change answered so far durable (L{IMetadataService.sync})."""
        d: defer.Deferred[None] = self.backend.sync()
        return d

    @deferred
    async def commit(self, caller: Caller, ino: int, fence: Fence | None = None) -> Attributes:
        """Make C{ino}'s writes durable. C{fence}: as for L{create}."""
        if fence is not None and self.fences:
            store: Any = self.backend
            a = await store.commit(ino, fence=fence)
        else:
            a = await self.backend.commit(ino)
        self.attr_cache.put(ino, a)
        return a

    @deferred
    async def allocate(
        self, caller: Caller, ino: int, offset: int, length: int, origin: Origin | None = None
    ) -> Attributes:
        self._writable(caller)
        a = await self._getattr(ino)
        self._data_allowed(caller, a, write=True)
        await self._check_sealed(caller, a)
        await self._check_worm(a, self._origin(caller, origin), destroy=False)
        await self._before(
            ino, self._origin(caller, origin), Why.WRITE, _WRITE, (offset, length, True)
        )
        ticket = self.quotas.admit(a.uid, a.gid, offset + length - a.size, 0)
        try:
            after = await self.backend.allocate(ino, offset, length)
        except BaseException:
            self.quotas.settle(ticket)
            raise
        self.quotas.settle(ticket, _usage_changes(a, after))
        self.attr_cache.put(ino, after)
        if after.size != a.size:
            self._modified(ino, What.SIZE)
        return after

    @deferred
    async def deallocate(
        self, caller: Caller, ino: int, offset: int, length: int, origin: Origin | None = None
    ) -> Attributes:
        self._writable(caller)
        a = await self._getattr(ino)
        self._data_allowed(caller, a, write=True)
        await self._check_sealed(caller, a)
        await self._check_worm(a, self._origin(caller, origin), destroy=False)
        await self._before(
            ino, self._origin(caller, origin), Why.WRITE, _WRITE, (offset, length, True)
        )
        after = await self.backend.deallocate(ino, offset, length)
        self.attr_cache.put(ino, after)
        self._modified(ino, What.DATA)
        return after

    @deferred
    async def data_ranges(
        self, caller: Caller, ino: int, offset: int, length: int
    ) -> list[tuple[int, int]]:
        """Where the file holds data (L{IDataService.data_ranges}); SMB's allocated ranges."""
        a = await self._getattr(ino)
        self._data_allowed(caller, a, write=False)
        if offset < 0 or length < 0:
            raise errors.Inval("negative offset or length")
        ranges: list[tuple[int, int]] = await self.backend.data_ranges(ino, offset, length)
        return ranges

    @deferred
    async def statfs(self, caller: Caller) -> FSStat:
        """The store's statfs, bounded by the caller's own quota (as a user sees from df)."""
        s = await self.backend.statfs()
        uid = caller.cred.uid
        if uid == 0:
            return s
        lim = self.quotas.limits("user", uid)
        use = self.quotas.usage("user", uid)
        total_b, free_b, avail_b = s.total_bytes, s.free_bytes, s.avail_bytes
        total_f, free_f, avail_f = s.total_files, s.free_files, s.avail_files
        if lim.bytes_hard:
            left = max(lim.bytes_hard - use.bytes, 0)
            total_b, free_b, avail_b = (
                min(total_b, lim.bytes_hard),
                min(free_b, left),
                min(avail_b, left),
            )
        if lim.inodes_hard:
            left = max(lim.inodes_hard - use.inodes, 0)
            total_f, free_f, avail_f = (
                min(total_f, lim.inodes_hard),
                min(free_f, left),
                min(avail_f, left),
            )
        return FSStat(total_b, free_b, avail_b, total_f, free_f, avail_f, s.block_size, s.name_max)

    # -- extended attributes ------------------------------------------------------

    def _client_xattr(self, name: bytes) -> None:
        if name.startswith(INTERNAL_PREFIX):
            raise errors.Perm("reserved attribute namespace")

    @deferred
    async def getxattr(self, caller: Caller, ino: int, name: bytes) -> bytes:
        self._client_xattr(name)
        a = await self._getattr(ino)
        perm.check(caller.cred, a, perm.R)
        return await self.backend.getxattr(ino, name)

    @deferred
    async def listxattr(self, caller: Caller, ino: int) -> list[bytes]:
        a = await self._getattr(ino)
        perm.check(caller.cred, a, perm.R)
        return [n for n in await self.backend.listxattr(ino) if not n.startswith(INTERNAL_PREFIX)]

    @deferred
    async def setxattr(
        self,
        caller: Caller,
        ino: int,
        name: bytes,
        value: bytes,
        create: bool | None = None,
        origin: Origin | None = None,
    ) -> None:
        self._client_xattr(name)
        self._writable(caller)
        a = await self._getattr(ino)
        perm.check(caller.cred, a, perm.W)
        await self._before(ino, self._origin(caller, origin), Why.SETATTR)
        await self.backend.setxattr(ino, name, value, create)
        self.attr_cache.discard(ino)
        self._modified(ino, What.XATTR)

    @deferred
    async def removexattr(
        self, caller: Caller, ino: int, name: bytes, origin: Origin | None = None
    ) -> None:
        self._client_xattr(name)
        self._writable(caller)
        a = await self._getattr(ino)
        perm.check(caller.cred, a, perm.W)
        await self._before(ino, self._origin(caller, origin), Why.SETATTR)
        await self.backend.removexattr(ino, name)
        self.attr_cache.discard(ino)
        self._modified(ino, What.XATTR)

    def _meta_forget(self, ino: int) -> None:
        self._meta_gen += 1
        self.meta_cache.discard(ino)

    @deferred
    async def meta_get(
        self, caller: Caller, ino: int, key: bytes, survey: bool = False
    ) -> bytes | None:
        """
        A front end's own metadata on an inode (S3 headers, DOS attributes);
        None if unset. Answered from L{meta_cache} when it knows.

        @param survey: the caller will read other records of the inode too,
            most often absent (an SMB open: DOS attributes, the security
            descriptor, then a delete's retention): on a backend whose calls
            are round trips, an inode nothing is cached of has its names
            listed first (one call), which answers every absent record, the
            retention and the seal included, without asking for each.
        """
        known = self.meta_cache.get(ino)
        if known is not None:
            if key in known:
                got = known[key]
                if got is not _UNREAD:
                    return got
            elif b"" in known:
                return None
        gen = self._meta_gen
        if survey and known is None and self._survey:
            names = await self.backend.listxattr(ino)
            n = len(INTERNAL_PREFIX)
            held = {bytes(x[n:]) for x in names if x[:n] == INTERNAL_PREFIX}
            if gen == self._meta_gen:
                if WORM_KEY not in held:
                    self._worm.put(ino, None)
                if SEAL_KEY not in held:
                    if len(self._seals) > 65536:
                        self._seals.clear()
                    self._seals[ino] = False
                # Every other record is absent; those it has are read when asked.
                listed: dict[bytes, bytes | None] = dict.fromkeys(held, _UNREAD)
                listed[b""] = None
                self.meta_cache.put(ino, listed)
            if key not in held:
                return None
        try:
            value: bytes | None = await self.backend.getxattr(ino, INTERNAL_PREFIX + key)
        except errors.NoData:
            value = None
        if gen == self._meta_gen:
            known = self.meta_cache.get(ino)
            if known is None:
                self.meta_cache.put(ino, {key: value})
            else:
                known[key] = value
        return value

    @deferred
    async def meta_set(
        self,
        caller: Caller,
        ino: int,
        key: bytes,
        value: bytes | None,
        origin: Origin | None = None,
        durable: bool = True,
    ) -> None:
        """
        Set (None: remove) a front end's own metadata; the caller must be
        allowed to write the inode. Others' leases break as for an attribute
        change (the metadata is an attribute to every protocol that shows it).
        """
        self._writable(caller)
        a = await self._getattr(ino)
        if caller.cred.uid != a.uid:
            perm.check(caller.cred, a, perm.W)
        await self._before(ino, self._origin(caller, origin), Why.SETATTR)
        self._meta_gen += 1
        known = self.meta_cache.get(ino)
        try:
            if value is None:
                try:
                    await self.backend.removexattr(ino, INTERNAL_PREFIX + key)
                except errors.NoData:
                    pass
            else:
                await self.backend.setxattr(ino, INTERNAL_PREFIX + key, value, durable=durable)
        except BaseException:
            self._meta_forget(ino)
            raise
        # What is known of the other keys still holds; this one is now known
        # (unless the record was replaced meanwhile, perhaps by a read that
        # raced this change: then it goes).
        self._meta_gen += 1
        if known is not None and self.meta_cache.get(ino) is known:
            known[key] = value
        else:
            self.meta_cache.discard(ino)
        if key == WORM_KEY:
            self._worm.drop(ino)
        if key == SEAL_KEY:
            self._seals.pop(ino, None)
        self.attr_cache.discard(ino)
        self._modified(ino, What.ATTRIBUTES)

    # -- paths ------------------------------------------------------------------

    @deferred
    async def resolve(self, caller: Caller, path: bytes, follow: bool = True) -> Attributes:
        """
        Walk C{path} ("a/b/c", relative to the export's root; leading and doubled
        slashes ignored) with search permission on each directory. ".." never
        climbs above the export root; symbolic links are followed on the way
        (and at the end if C{follow}), absolute targets from the export root.

        @raise Loop: more than 40 links.
        """
        return await self._walk(caller, path, follow, [0])

    async def _walk(
        self, caller: Caller, path: bytes, follow: bool, hops: list[int], start: int | None = None
    ) -> Attributes:
        root = caller.export.root_ino
        cur = await self._getattr(root if start is None or path.startswith(b"/") else start)
        parts = [p for p in path.split(b"/") if p and p != b"."]
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if not cur.is_dir:
                raise errors.NotDir("path component is not a directory")
            perm.check(caller.cred, cur, perm.X)
            if part == b"..":
                nxt = cur if cur.ino == root else await self._lookup_raw(cur.ino, b"..")
            else:
                self._private(caller, part)
                nxt = await self._lookup_raw(cur.ino, part)
            if nxt.is_link and (follow or not last):
                hops[0] += 1
                if hops[0] > SYMLOOP_MAX:
                    raise errors.Loop("too many symbolic links")
                target = await self.backend.readlink(nxt.ino)
                nxt = await self._walk(caller, target, True, hops, start=cur.ino)
            cur = nxt
        return cur

    @deferred
    async def resolve_parent(self, caller: Caller, path: bytes) -> tuple[Attributes, bytes]:
        """The directory that holds the last component of C{path}, and that component."""
        parts = [p for p in path.split(b"/") if p and p != b"."]
        if not parts or parts[-1] == b"..":
            raise errors.Inval("path has no final name")
        parent = await self._walk(caller, b"/".join(parts[:-1]), True, [0])
        if not parent.is_dir:
            raise errors.NotDir("parent is not a directory")
        return parent, parts[-1]
