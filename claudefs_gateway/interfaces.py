# -*- test-case-name: tests.backend.test_contract -*-
"""
Every seam between packages, as zope Interfaces.

Two seams live here. Below the vfs, the backend contract
(L{IMetadataService}, L{IDataService}, L{IBackend}); above it, what every
protocol front end calls (L{IVFS} and its parts: L{IExports}, L{IUserDB},
L{ILockTable}, L{ILeaseManager} with the front end's L{ILeaseHolder}, and
L{IChangeEvents}). Front ends are typed against these and nothing else of
the vfs.

The backend contract is inode based (DESIGN.md "The backend contract"): the
backend stores and returns; it checks no permissions and knows no users,
exports or protocols - L{claudefs_gateway.vfs} does all of that. Every method
returns a Deferred; failures are L{claudefs_gateway.errors.FSError} subclasses
and nothing else.

Durability (what "returns" means below: the Deferred fired):
 - every metadata change is on disk when it returns;
 - a write with C{stable=True}, and C{commit}, are on disk (data, size and
   times) when they return;
 - a write with C{stable=False} is visible to every later call at once, and
   on disk after the next C{commit} of that inode (or a stable write to it).

Names are bytes: not empty, not C{.} or C{..}, no C{/} or NUL, at most
L{claudefs_gateway.fstypes.NAME_MAX} bytes; otherwise L{Inval} or
L{NameTooLong}. Missing inodes raise L{NotFound}; an operation on a parent
that is not a directory raises L{NotDir}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any

    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IReactorTime

    from claudefs_gateway.fstypes import (
        Attributes,
        Credentials,
        DirPage,
        FileType,
        FSStat,
        PutResult,
        QuotaLimits,
        ReadResult,
        RenameResult,
        SetAttrs,
        Usage,
        WriteResult,
    )
    from claudefs_gateway.vfs.events import Change
    from claudefs_gateway.vfs.exports import Caller, ExportInfo
    from claudefs_gateway.vfs.identity import User
    from claudefs_gateway.vfs.leases import Lease, LeaseKey, Why
    from claudefs_gateway.vfs.locks import Lock, LockOwner, ShareToken
    from claudefs_gateway.vfs.origin import Origin
    from claudefs_gateway.vfs.quotas import QuotaManager

__all__ = [
    "IMetadataService",
    "IDataService",
    "IBackend",
    "ISharedStore",
    "IPnfsBackend",
    "IVFS",
    "IExports",
    "IUserDB",
    "ILockTable",
    "ILeaseManager",
    "ILeaseHolder",
    "IChangeEvents",
    "ISharedState",
]


class IMetadataService(Interface):
    """Inodes, directories, links, attributes, xattrs, usage and quota records."""

    def root() -> Deferred[Attributes]:
        """The root directory of the namespace (created with the store, mode 0755, owner 0:0)."""

    def getattr(ino: int) -> Deferred[Attributes]:
        """@raise NotFound: no such inode (never existed, or unlinked and gone)."""

    def lookup(parent: int, name: bytes) -> Deferred[Attributes]:
        """The inode named C{name} in directory C{parent} (C{.} and C{..} are accepted). @raise NotFound, NotDir."""

    def create(
        parent: int,
        name: bytes,
        type: FileType,
        mode: int,
        uid: int,
        gid: int,
        rdev: tuple[int, int] = (0, 0),
        durable: bool = True,
    ) -> Deferred[Attributes]:
        """
        Make a new regular file, directory, device, fifo or socket (not a symlink).

        Times are set to now; a directory gets nlink 2 and its parent's nlink
        grows by one. @raise Exists: the name is taken (whatever its type).

        C{durable=False} (here, in L{setxattr} and L{rmdir}) lets the store
        fire before the change is on stable storage: for a step a later
        durable change of the same caller completes (S3's staging file and
        the directories of its key, made before the rename that publishes
        the object). A store that keeps changes in one ordered log makes
        such a change durable with the next durable one (or L{sync}); a
        store may always treat it as durable.
        """

    def sync() -> Deferred[None]:
        """
        Make every change answered so far durable, the C{durable=False} ones
        included (SMB FLUSH of a directory, and SMB's bounded background
        flush). Cheap when nothing is pending; fires once done.
        """

    def symlink(
        parent: int, name: bytes, target: bytes, mode: int, uid: int, gid: int
    ) -> Deferred[Attributes]:
        """Make a symbolic link holding C{target} (any bytes, at most 4096). @raise Exists."""

    def link(ino: int, parent: int, name: bytes) -> Deferred[Attributes]:
        """
        A new name for C{ino}; its nlink grows by one and its ctime changes.

        @raise Exists: the name is taken. @raise Perm: C{ino} is a directory.
        @raise MLink: C{ino} already has 65000 links.
        """

    def unlink(parent: int, name: bytes, durable: bool = True) -> Deferred[Attributes]:
        """
        Remove a non-directory name; fires with the inode's attributes after
        (nlink 0 means the inode is gone: its data is freed and getattr fails).

        @raise IsDir: the name is a directory (use rmdir). (C{durable}: see L{create}.)
        """

    def rmdir(parent: int, name: bytes, durable: bool = True) -> Deferred[Attributes]:
        """Remove an empty directory. @raise NotEmpty, NotDir. (C{durable}: see L{create}.)"""

    def rename(
        src_parent: int, src_name: bytes, dst_parent: int, dst_name: bytes, durable: bool = True
    ) -> Deferred[RenameResult]:
        """
        POSIX rename, atomic: the destination, if it exists, is replaced.
        (C{durable}: see L{create}.)

        A store whose C{renames_sync_data} attribute is true makes a renamed
        regular file's earlier writes durable before a durable rename is (as
        ext4 does for a file replacing another by rename): S3 then writes a
        small object unstable and lets the rename that publishes it flush
        both. Other stores need not; S3 writes stable for them.

        A store may also offer C{put_file(parent, name, mode, uid, gid, data,
        xattrs, mtime_ns)} (the embedded and memory stores do): a new regular
        file with its bytes and extended attributes put over C{name} as one
        durable, atomic change, firing with a L{PutResult} (see
        L{claudefs_gateway.backend.embedded.EmbeddedBackend.put_file}). S3
        stores a small object that way, without a staging file; a store
        without it gets the staging file and the rename. Likewise
        C{unlink_pruning(parent, name, dirs, durable=True)}: an unlink and
        the removal of the directories C{dirs} (parent, name, inode) it
        leaves empty, in one change (S3's DELETE).

        Renaming a name onto itself (or onto another name of the same inode) is
        a successful no-op. A directory may replace only an empty directory,
        and a non-directory only a non-directory.
        @raise Inval: a directory would move into its own subtree.
        @raise NotEmpty: the destination is a non-empty directory.
        @raise IsDir: a non-directory would replace a directory.
        @raise NotDir: a directory would replace a non-directory.
        """

    def setattr(
        ino: int, changes: SetAttrs, guard_ctime_ns: int | None = None, durable: bool = True
    ) -> Deferred[Attributes]:
        """
        Apply C{changes}; ctime becomes now (and mtime too when size changes).
        (C{durable}: see L{create}; a store may keep a size change durable
        whatever is asked, as the embedded one does with one that cuts data.)

        A size change truncates or extends the data (extension reads as zeros).
        @raise Inval: C{guard_ctime_ns} is given and differs from the inode's ctime
            (NFSv3 SETATTR guard) - nothing is changed then.
        @raise FBig: size beyond L{MAX_FILE_SIZE}.
        """

    def readdir(
        dir: int, cookie: int, verifier: bytes, count: int, with_attrs: bool = False
    ) -> Deferred[DirPage]:
        """
        Up to C{count} entries after C{cookie} (0: from the start), in a stable
        order: listing an unchanged directory page by page returns every entry
        exactly once. "." and ".." are not returned.

        @param verifier: the verifier of an earlier page, or 8 zero bytes with
            cookie 0. @raise BadCookie: the cookie or verifier is not valid now.
        """

    def readlink(ino: int) -> Deferred[bytes]:
        """@raise Inval: not a symlink."""

    def statfs() -> Deferred[FSStat]:
        """Space and inodes of the store (from the real device for the embedded store)."""

    def getxattr(ino: int, name: bytes) -> Deferred[bytes]:
        """@raise NoData: no such attribute."""

    def setxattr(
        ino: int, name: bytes, value: bytes, create: bool | None = None, durable: bool = True
    ) -> Deferred[None]:
        """
        Set an extended attribute. C{create=True}: must not exist (L{Exists});
        C{False}: must exist (L{NoData}); L{None}: either. (C{durable}: see L{create}.)
        @raise Range: name over 255 bytes or value over 64 KiB.
        """

    def listxattr(ino: int) -> Deferred[list[bytes]]:
        """Every extended attribute name, sorted."""

    def removexattr(ino: int, name: bytes) -> Deferred[None]:
        """@raise NoData: no such attribute."""

    def usage(kind: str, id: int) -> Deferred[Usage]:
        """
        What uid (C{kind="user"}) or gid (C{"group"}) C{id} uses: bytes = the sum
        of the sizes of its regular files, inodes = its inodes of every type.
        Exact: updated in the same transaction as the change that moves it.
        """

    def all_usage(kind: str) -> Deferred[dict[int, Usage]]:
        """Usage of every id of C{kind} that owns anything."""

    def get_quota(kind: str, id: int) -> Deferred[QuotaLimits | None]:
        """The limits stored for one id, or None (the configured defaults apply)."""

    def set_quota(kind: str, id: int, limits: QuotaLimits | None) -> Deferred[None]:
        """Store (or with None, remove) one id's limits."""

    def list_quotas(kind: str) -> Deferred[dict[int, QuotaLimits]]:
        """Every stored limit of C{kind}."""

    def get_state(key: str) -> Deferred[bytes | None]:
        """Small durable values the layers above keep in the store (grace clocks, NSM state)."""

    def set_state(key: str, value: bytes | None) -> Deferred[None]:
        """Store (None: delete) one value, durably."""


class IDataService(Interface):
    """File contents by inode."""

    def read(ino: int, offset: int, length: int) -> Deferred[tuple[bytes, bool]]:
        """
        Up to C{length} bytes at C{offset}; fires with (data, eof), eof true if the
        read reached the end of the file. Holes read as zeros.
        @raise IsDir: C{ino} is a directory. @raise Inval: not a regular file.
        """

    def write(
        ino: int, offset: int, data: bytes | memoryview, stable: bool
    ) -> Deferred[WriteResult]:
        """
        Write all of C{data} at C{offset}, extending the file if needed; mtime
        and ctime become now and the change counter grows. See the module
        docstring for what C{stable} promises. @raise FBig.
        """

    def commit(ino: int) -> Deferred[Attributes]:
        """Make every earlier write to C{ino} durable; fires with its attributes."""

    def allocate(ino: int, offset: int, length: int) -> Deferred[Attributes]:
        """Reserve storage for the range (fallocate), extending the size if needed."""

    def deallocate(ino: int, offset: int, length: int) -> Deferred[Attributes]:
        """Punch a hole: the range reads as zeros afterwards; size is unchanged."""

    def data_ranges(ino: int, offset: int, length: int) -> Deferred[list[tuple[int, int]]]:
        """
        The parts of [offset, offset + length), cut at the size, that hold data
        rather than holes: (offset, length) pairs in order. A store may answer
        data where there is a hole (one that keeps no map of them answers the
        whole range), never a hole where data was written.
        """


class IBackend(IMetadataService, IDataService):
    """A whole store: both services plus its lifecycle."""

    instance_id = Attribute(
        "8 bytes, random per store, stable across restarts (verifiers derive from it)."
    )

    def open() -> Deferred[None]:
        """Open (creating on first use) and recover the store; nothing else may be called before."""

    def close() -> Deferred[None]:
        """Flush and close; every change that returned is on disk afterwards."""


class IPnfsBackend(Interface):
    """
    A backend whose file bytes live on data servers that pNFS clients can
    reach themselves (the remote backend; docs/pnfs.rst). The gateway, as
    pNFS metadata server, builds layouts from what this says.
    """

    def pnfs_layout(ino: int) -> Deferred[Any]:
        """
        The file's layout (C{wire.Layout}: stripe unit, mirrors, data server
        addresses). @raise NotFound: no such inode.
        """

    def pnfs_data_server(address: str) -> Deferred[tuple[bytes, str]]:
        """
        (fencing key, NFSv3 C{host:port}) of the data server at C{address};
        an empty address when it serves no pNFS clients.
        @raise BackendUnavailable: the data server cannot be reached.
        """

    def pnfs_fence(address: str, ino: int, epoch: int) -> Deferred[None]:
        """Make the data server refuse C{ino}'s handles minted below C{epoch}."""

    def pnfs_committed(ino: int, end: int) -> Deferred[Attributes]:
        """
        A pNFS client wrote bytes up to C{end} on the data servers
        (LAYOUTCOMMIT): grow the size to C{end} if it is smaller and set
        mtime and ctime, durably. Fires with the new attributes.
        """

    def pnfs_probe(address: str) -> Deferred[None]:
        """Fires if the data server at C{address} answers; fails otherwise."""

    def pnfs_stale(ino: int) -> frozenset[str]:
        """The data servers whose copy of C{ino} missed writes (mirrors; not to be read)."""

    def pnfs_mark_stale(address: str, ino: int) -> Deferred[None]:
        """
        The copy of C{ino} on C{address} will miss writes (a layout without
        it was handed out): re-silver it later. Fires once that is durable.
        """


class ISharedStore(Interface):
    """
    A backend other gateways change too (the remote backend): it tells this
    gateway what they changed, so the vfs drops what it cached of it.
    """

    def on_change(listener: Callable[[Any], None]) -> None:
        """
        Call C{listener(event)} for each change another gateway made; the event
        has C{ino} (what changed) and C{dir} (the directory whose entries changed, or 0).
        """

    def on_reset(listener: Callable[[], object]) -> None:
        """Call C{listener()} when change events may have been missed (a reconnection)."""


# ---------------------------------------------------------------------------
# Above the vfs: what protocol front ends call.


class IExports(Interface):
    """The export table: which parts of the namespace are served, to whom, under which rules."""

    s3: ExportInfo | None  # the S3 export (the bucket root), if S3 serves one

    def get(id: int) -> ExportInfo | None:
        """The export with id C{id} (the id file handles carry)."""

    def by_path(path: str) -> ExportInfo | None:
        """The NFS/SMB export of namespace path C{path}."""

    def by_name(name: str, protocol: str) -> ExportInfo | None:
        """An export by share name, case-insensitively, if C{protocol} serves it."""

    def for_protocol(protocol: str) -> list[ExportInfo]:
        """Every export C{protocol} serves."""

    def __iter__() -> Iterator[ExportInfo]:
        """Every export."""

    def __len__() -> int:
        """How many exports."""


class IUserDB(Interface):
    """One user database for every protocol (DESIGN.md "Identity"); secrets never leave it in logs."""

    nfs4_domain: str

    def all() -> list[User]:
        """Every user."""

    def by_name(name: str) -> User | None:
        """A user by name, case-insensitively (as SMB compares them)."""

    def by_uid(uid: int) -> User | None:
        """The first user with uid C{uid}."""

    def by_access_key(key: str) -> User | None:
        """The user an S3 access key id belongs to."""

    def uid_to_nfs4(uid: int) -> str:
        """An NFSv4 owner string for C{uid} (C{user@domain}, or the number)."""

    def gid_to_nfs4(gid: int) -> str:
        """An NFSv4 owner_group string for C{gid}."""

    def nfs4_to_uid(name: str) -> int | None:
        """The uid an NFSv4 owner string names, or None if unknown."""

    def nfs4_to_gid(name: str) -> int | None:
        """The gid an NFSv4 owner_group string names, or None if unknown."""


class ILockTable(Interface):
    """
    Byte-range locks and share reservations of every protocol (docs/locks.rst).

    Lengths of 0 mean "to end of file". Conflicts raise L{LockConflict} (with
    the holder) or L{ShareConflict}; a request during grace that is not a
    reclaim raises L{Grace}.
    """

    in_grace: bool

    def start_grace(seconds: float) -> None:
        """Refuse non-reclaim requests for C{seconds} (after a restart)."""

    def end_grace() -> None:
        """End the grace period now (every client reclaimed, or none could)."""

    def lock(
        ino: int,
        owner: LockOwner,
        start: int,
        length: int,
        exclusive: bool,
        *,
        wait: bool = False,
        reclaim: bool = False,
        on_wait: Callable[[], None] | None = None,
    ) -> Deferred[Lock]:
        """
        Take a lock. Fires with the lock granted; without C{wait} a conflict
        fails at once with L{LockConflict}, with it the Deferred waits (cancel
        it to give up). @raise Deadlock: waiting would deadlock.

        @param on_wait: called once the request waits, past every deadlock
            check (at once for one gateway's table; after the meta server
            recorded the wait for a shared one), so a front end that must
            answer "blocked" (NLM) answers it only when no deadlock refusal
            can follow.
        """

    def test(ino: int, owner: LockOwner, start: int, length: int, exclusive: bool) -> Lock | None:
        """The lock that would refuse this request, or None."""

    def unlock(ino: int, owner: LockOwner, start: int, length: int) -> None:
        """Release a range (POSIX owners: any part; Windows owners: exactly a locked range)."""

    def check_io(
        ino: int, owner: LockOwner, start: int, length: int, write: bool, strict: bool = True
    ) -> bool:
        """
        Whether I/O by C{owner} on the range passes the locks of others.
        Windows owners' locks bind everyone; with C{strict}, POSIX owners'
        locks bind too (SMB and S3 honour them; NFS I/O does not).
        """

    def busy(ino: int) -> bool:
        """Whether anything (lock, waiter, share reservation) is held on C{ino}."""

    def locks(ino: int) -> list[Lock]:
        """Every lock held on C{ino}."""

    def notify_when_free(ino: int) -> Deferred[None]:
        """
        Fires the next time a lock on C{ino} is released or narrowed (NFSv4
        CB_NOTIFY_LOCK); cancel it to stop waiting. @raise NoLock: too many wait.
        """

    def totals() -> dict[str, tuple[int, int, int]]:
        """Per owner protocol: (locks held, share reservations, waiting requests); for metrics."""

    def owners_of(ino: int) -> set[LockOwner]:
        """Every owner holding a lock or a share reservation on C{ino}."""

    def release_owner(owner: LockOwner, tell: bool = True) -> None:
        """
        Drop every lock and reservation of C{owner} (an open closed).

        C{tell} false: a table shared with other gateways does not tell the
        meta server yet, because the caller is about to remove the owner's
        one file, whose removal drops its state there; the caller releases
        the owner again (C{tell} true) if the file's last link did not go.
        """

    def release_client(protocol: str, client: str | bytes) -> None:
        """Drop everything of a client (rebooted, expired, disconnected)."""

    def release_inode(ino: int) -> None:
        """The file is gone: its locks and reservations go too."""

    def open_share(
        ino: int,
        owner: LockOwner,
        access: Iterable[str],
        deny: Iterable[str],
        *,
        reclaim: bool = False,
    ) -> ShareToken:
        """Reserve an open (access/deny are subsets of read, write, delete). @raise ShareConflict."""

    def upgrade_share(
        token: ShareToken, access: Iterable[str], deny: Iterable[str], *, reclaim: bool = False
    ) -> None:
        """Add modes to an open (NFSv4 OPEN upgrade). @raise ShareConflict."""

    def downgrade_share(token: ShareToken, access: Iterable[str], deny: Iterable[str]) -> None:
        """Narrow an open (NFSv4 OPEN_DOWNGRADE)."""

    def close_share(token: ShareToken) -> None:
        """End an open's reservation (harmless twice)."""

    def settle_share(token: ShareToken) -> Deferred[None]:
        """
        Wait until C{token}'s last L{open_share} or L{upgrade_share} is
        authoritative. One process: already fired. Several gateways: fires
        when the meta server has registered it; fails with L{ShareConflict}
        if another gateway's open got there first (or with the backend's
        error if the meta server cannot be asked), after which the caller
        undoes the open or upgrade as for any later failure of its request.
        A front end awaits this before it answers OPEN, CREATE or SHARE.
        """

    def shares(ino: int) -> list[ShareToken]:
        """The open reservations on C{ino}."""


class ILeaseHolder(Interface):
    """
    A front end's side of a lease: how a break reaches its client.

    SMB sends LEASE_BREAK / OPLOCK_BREAK notifications, NFSv4 CB_RECALL.
    """

    def lease_break(lease: Lease, to: int) -> bool:
        """
        Tell the client to keep no more than C{to} (bits of R, W, H). Must not
        block. @return: whether the client will acknowledge (the manager then
        waits for L{ILeaseManager.acknowledge} or the recall timeout); False
        means the break is complete once sent.
        """

    def lease_revoked(lease: Lease) -> None:
        """The client did not acknowledge in time: the lease is gone, its later use must fail."""


class ILeaseManager(Interface):
    """
    Leases of every protocol (SMB oplocks and leases, NFSv4 delegations),
    with break-before-mutate (docs/locks.rst "Leases").
    """

    recall_timeout: float
    max_leases: int

    def grant(
        ino: int,
        key: LeaseKey,
        want: int,
        holder: ILeaseHolder,
        *,
        is_dir: bool = False,
        parent: LeaseKey | None = None,
        recall_timeout: float | None = None,
        family: LeaseKey | None = None,
    ) -> Lease | None:
        """
        Grant as much of C{want} as is compatible now (None: nothing); the
        holder has C{recall_timeout} seconds (default L{recall_timeout}) to
        answer a break. @raise Inval: key in use elsewhere.
        """

    def grantable(
        ino: int, key: LeaseKey, want: int, is_dir: bool = False, family: LeaseKey | None = None
    ) -> int:
        """What L{grant} would grant now (C{family}: sibling keys that never conflict)."""

    def recall(
        ino: int, why: Why, exempt: Iterable[LeaseKey] = (), *, wait: bool = True
    ) -> Deferred[None]:
        """
        Break others' leases on C{ino} down to what C{why} lets them keep.
        Fires when done; with C{wait=False} fails with L{Again} if a break is
        still outstanding.
        """

    def break_lease(lease: Lease, keep: int) -> Deferred[None]:
        """Break one lease to no more than C{keep}; fires once it holds no more (or is gone)."""

    def settle_lease(lease: Lease) -> Deferred[None]:
        """
        Wait until what L{grant} just gave C{lease} is authoritative. One
        process: already fired. Several gateways: fires once the meta server
        has answered; what it refused (another gateway's grant got there
        first) is taken back first, without a break, so the front end
        answers the client from C{lease.state} (and C{lease.gone}) after it.
        Never fails.
        """

    def acknowledge(lease: Lease, bits: int) -> None:
        """The holder accepted a break, keeping C{bits}. @raise Inval: none outstanding, or too much kept."""

    def release(lease: Lease) -> None:
        """The holder gives the lease up."""

    def release_client(protocol: str, client: str | bytes) -> None:
        """Every lease of a client goes."""

    def release_inode(ino: int) -> None:
        """The file is gone; so are its leases."""

    def leases(ino: int) -> list[Lease]:
        """The leases on C{ino}."""

    def find(key: LeaseKey) -> Lease | None:
        """The live lease of C{key}."""

    def busy(ino: int) -> bool:
        """Whether any lease is held on C{ino} (the fast path skips recalls when not)."""

    def describe() -> list[dict[str, object]]:
        """Every lease, for the admin API."""


class IChangeEvents(Interface):
    """What changed in which directory, as the vfs makes each change (SMB CHANGE_NOTIFY, caches)."""

    def subscribe(
        dir_ino: int | None, listener: Callable[[Change], None], modified: bool = True
    ) -> Callable[[], None]:
        """
        Call C{listener} for changes in C{dir_ino} (None: everywhere); returns
        the unsubscriber. C{modified=False}, everywhere only: names only, no
        C{MODIFIED} changes.
        """

    def emit(change: Change) -> None:
        """Deliver one change to its listeners (the vfs calls this; front ends do not)."""


class IVFS(Interface):
    """
    The one namespace every protocol front end calls (DESIGN.md "Layers").

    Every operation takes the L{Caller} it runs as (export rules and
    squashing applied) and checks permissions, export rules and quotas
    itself; operations that touch a file other clients may hold open also
    take the L{Origin} they act through, for byte-range locks, share
    reservations and leases: mutations break other holders' leases first
    (break-before-mutate) and emit a change event after. Deferreds fail with
    L{FSError} subclasses only (and L{BackendUnavailable}/L{Timeout} when the
    store is unreachable).
    """

    exports: IExports
    users: IUserDB
    locks: ILockTable
    leases: ILeaseManager
    events: IChangeEvents
    quotas: QuotaManager
    root_ino: int
    is_open: bool

    store_id: bytes  # random per store, the same across restarts (NFSv4 server owner)
    server_restarts: int  # restarts of remote meta/data servers seen (NFS write verifier)
    clock: IReactorTime  # the time every vfs decision is made by
    pnfs: Any  # the backend as an IPnfsBackend when pNFS clients can reach its data servers

    def invalidate() -> int:
        """Drop every cached attribute and name; returns how many entries went."""

    def forget_changed(ino: int, dir_ino: int = 0) -> None:
        """Another gateway changed C{ino} (and C{dir_ino}'s entries): drop what is cached of them."""

    def get_state(key: str) -> Deferred[bytes | None]:
        """
        A front end's small durable record (NFSv4 client records, SMB durable
        handles), None if never set; keys start with the protocol's name.
        """

    def set_state(key: str, value: bytes | None) -> Deferred[None]:
        """Store (None: remove) a front end's small durable record."""

    def caller(export: ExportInfo, client: str, cred: Credentials, protocol: str) -> Caller:
        """The identity a request runs as. @raise Access: the client is not allowed by the export."""

    def handle(export: ExportInfo, a: Attributes) -> bytes:
        """An opaque, unforgeable file handle for C{a} within C{export}."""

    def handle_parts(handle: bytes) -> tuple[int, int, int]:
        """
        The export id, inode and generation a handle of ours names, whether or
        not the file still exists (NFSv4 CLOSE of a removed file). @raise BadHandle.
        """

    def from_handle(handle: bytes) -> Deferred[tuple[ExportInfo, Attributes]]:
        """The export and file a handle names. @raise BadHandle: forged. @raise Stale: gone."""

    def getattr(caller: Caller, ino: int) -> Deferred[Attributes]:
        """Attributes (from the cache when fresh)."""

    def access(caller: Caller, ino: int, mask: int) -> Deferred[int]:
        """The part of C{mask} (R, W, X bits) the caller holds."""

    def setattr(
        caller: Caller,
        ino: int,
        changes: SetAttrs,
        guard_ctime_ns: int | None = None,
        origin: Origin | None = None,
        durable: bool = True,
    ) -> Deferred[Attributes]:
        """
        Change attributes (Linux rules; owner may truncate whatever the mode).
        C{durable=False}: see L{IMetadataService.create} (also for L{remove}
        and L{rename}; made durable by L{sync} or any later durable change).
        """

    def lookup(
        caller: Caller, dir_ino: int, name: bytes, fresh: bool = False
    ) -> Deferred[Attributes]:
        """
        A name in a directory (C{.} and C{..} included; C{..} stops at the export
        root). C{fresh}: past the caches when other gateways share the store.
        """

    def create(
        caller: Caller,
        dir_ino: int,
        name: bytes,
        mode: int,
        exclusive: bool = True,
        origin: Origin | None = None,
        durable: bool = True,
        share: Any = None,
    ) -> Deferred[Attributes]:
        """
        A new regular file (or, not exclusive, the existing one). C{durable=False}:
        see L{IMetadataService.create} (also for L{mkdir}, L{rmdir}, L{meta_set}).
        C{share}: a shared lock table's C{share_intent}, registered with the
        create by a backend that can (the remote one's CREATE_OPEN).
        """

    def create_exclusive(
        caller: Caller, dir_ino: int, name: bytes, verifier: bytes, mode: int = 0o600
    ) -> Deferred[Attributes]:
        """An NFS EXCLUSIVE create: a retransmission with the same verifier gets the same file."""

    def mkdir(
        caller: Caller,
        dir_ino: int,
        name: bytes,
        mode: int,
        origin: Origin | None = None,
        durable: bool = True,
    ) -> Deferred[Attributes]:
        """A new directory."""

    def symlink(
        caller: Caller,
        dir_ino: int,
        name: bytes,
        target: bytes,
        mode: int = 0o777,
        origin: Origin | None = None,
    ) -> Deferred[Attributes]:
        """A new symbolic link."""

    def mknod(
        caller: Caller,
        dir_ino: int,
        name: bytes,
        type: FileType,
        mode: int,
        rdev: tuple[int, int] = (0, 0),
    ) -> Deferred[Attributes]:
        """A device, fifo or socket node."""

    def link(
        caller: Caller, ino: int, dir_ino: int, name: bytes, origin: Origin | None = None
    ) -> Deferred[Attributes]:
        """A new name for a file."""

    def remove(
        caller: Caller,
        dir_ino: int,
        name: bytes,
        origin: Origin | None = None,
        durable: bool = True,
        *,
        expect: int | None = None,
    ) -> Deferred[Attributes]:
        """
        Unlink a non-directory; fires with its attributes after (nlink 0:
        gone). C{expect}: only while the name names that inode (else NotFound).
        """

    def rmdir(
        caller: Caller,
        dir_ino: int,
        name: bytes,
        origin: Origin | None = None,
        durable: bool = True,
    ) -> Deferred[Attributes]:
        """Remove an empty directory."""

    def rename(
        caller: Caller,
        src_dir: int,
        src_name: bytes,
        dst_dir: int,
        dst_name: bytes,
        origin: Origin | None = None,
        durable: bool = True,
    ) -> Deferred[RenameResult]:
        """POSIX rename (atomic, replaces) under permission, sticky-bit and share rules."""

    can_prune = Attribute("Whether the store offers remove_pruning (else it raises NotSupp).")

    def remove_pruning(
        caller: Caller,
        dir_ino: int,
        name: bytes,
        dirs: tuple[tuple[int, bytes], ...],
        origin: Origin | None = None,
        expect: int | None = None,
    ) -> Deferred[tuple[Attributes, tuple[Attributes, ...]]]:
        """
        remove, then rmdir of each of C{dirs} (parent, name; innermost
        first) it leaves empty, as one durable store operation; a directory
        that may not go ends the pruning. Fires with the unlinked inode and
        the directories removed. C{expect}: as for remove.
        @raise NotSupp: the store cannot.
        """

    can_put_file = Attribute("Whether the store offers put_file (else it raises NotSupp).")

    def put_file(
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
    ) -> Deferred[PutResult]:
        """
        A new regular file with C{data} and front-end metadata C{meta}, put
        over C{name} (in the directories C{dirs}, made first) as one
        durable, atomic store operation: mkdirs, a create, a write,
        meta_sets and a rename over the name, under their rules.
        @raise NotSupp: the store cannot (L{can_put_file} is false).
        @raise Exists: one of C{dirs} exists.
        """

    def readdir(
        caller: Caller,
        dir_ino: int,
        cookie: int,
        verifier: bytes,
        count: int,
        with_attrs: bool = False,
    ) -> Deferred[DirPage]:
        """A page of entries (stable cookies; see IMetadataService.readdir)."""

    def readlink(caller: Caller, ino: int) -> Deferred[bytes]:
        """A symbolic link's target."""

    def read(
        caller: Caller, ino: int, offset: int, count: int, origin: Origin | None = None
    ) -> Deferred[ReadResult]:
        """Up to C{count} bytes at C{offset}, after breaking others' write caching."""

    def write(
        caller: Caller,
        ino: int,
        offset: int,
        data: bytes | memoryview,
        stable: bool,
        origin: Origin | None = None,
    ) -> Deferred[WriteResult]:
        """Write all of C{data} at C{offset} (any bytes-like object, never copied needlessly)."""

    def commit(caller: Caller, ino: int) -> Deferred[Attributes]:
        """Make earlier unstable writes durable."""

    def sync() -> Deferred[None]:
        """Make every change answered so far durable (L{IMetadataService.sync})."""

    def layout_commit(
        caller: Caller, ino: int, end: int, origin: Origin | None = None
    ) -> Deferred[Attributes]:
        """
        A pNFS client wrote up to C{end} on the data servers (LAYOUTCOMMIT):
        grow the size, move mtime/ctime. @raise NotSupp: no data servers.
        """

    def allocate(
        caller: Caller, ino: int, offset: int, length: int, origin: Origin | None = None
    ) -> Deferred[Attributes]:
        """Reserve storage for a range."""

    def deallocate(
        caller: Caller, ino: int, offset: int, length: int, origin: Origin | None = None
    ) -> Deferred[Attributes]:
        """Punch a hole."""

    def data_ranges(
        caller: Caller, ino: int, offset: int, length: int
    ) -> Deferred[list[tuple[int, int]]]:
        """Where a file holds data, not holes (the caller must be allowed to read it)."""

    def statfs(caller: Caller) -> Deferred[FSStat]:
        """Space and inodes, bounded by the caller's quota."""

    def getxattr(caller: Caller, ino: int, name: bytes) -> Deferred[bytes]:
        """A client extended attribute. @raise NoData."""

    def listxattr(caller: Caller, ino: int) -> Deferred[list[bytes]]:
        """Client extended attribute names."""

    def setxattr(
        caller: Caller,
        ino: int,
        name: bytes,
        value: bytes,
        create: bool | None = None,
        origin: Origin | None = None,
    ) -> Deferred[None]:
        """Set a client extended attribute (through C{origin}'s open, as L{setattr})."""

    def removexattr(
        caller: Caller, ino: int, name: bytes, origin: Origin | None = None
    ) -> Deferred[None]:
        """Remove a client extended attribute. @raise NoData."""

    def meta_get(caller: Caller, ino: int, key: bytes) -> Deferred[bytes | None]:
        """A front end's own metadata on an inode (S3 headers, DOS attributes), None if unset."""

    def meta_set(
        caller: Caller,
        ino: int,
        key: bytes,
        value: bytes | None,
        origin: Origin | None = None,
        durable: bool = True,
    ) -> Deferred[None]:
        """Set (None: remove) a front end's own metadata."""

    def resolve(caller: Caller, path: bytes, follow: bool = True) -> Deferred[Attributes]:
        """Walk a path from the export root (symlinks followed; never above the root)."""

    def resolve_parent(caller: Caller, path: bytes) -> Deferred[tuple[Attributes, bytes]]:
        """The directory holding a path's last component, and that component."""

    def name_of(ino: int) -> tuple[int, bytes] | None:
        """A directory and name this gateway last saw C{ino} under (for change events), if any."""


class ISharedState(Interface):
    """
    Locks, share reservations and lease holdings of every gateway session, as
    the meta server's opcodes (servers/shared.py) of the same names use them (docs/rpc.rst). Each
    change fails with the vfs error a local table would raise (L{LockConflict},
    L{ShareConflict}, L{NoLock}...), directly or through its Deferred.
    """

    clients = Attribute(
        "The client records and grace the meta server sets: a ClientRegistry"
        " (servers/clients.py), a PgClientRegistry (servers/clients_pg.py), or None."
    )

    def start() -> None:
        """The store is open: begin (liveness, upkeep)."""

    def stop() -> None:
        """The server stops: cancel timers, answer waiting recalls."""

    def lock(
        session: int, ino: int, owner: Any, start: int, length: int, exclusive: bool, reclaim: bool
    ) -> Any:
        """LOCK (never waits: a conflict fails at once)."""

    def lock_wait(
        session: int, ino: int, owner: Any, start: int, length: int, exclusive: bool
    ) -> Any:
        """LOCK_WAIT: a gateway's request waits; fails with L{Deadlock} if forever."""

    def lock_unwait(session: int, owner: Any) -> Any:
        """LOCK_UNWAIT: it waits no more."""

    def unlock(session: int, ino: int, owner: Any, start: int, length: int) -> Any:
        """UNLOCK."""

    def release_owner(session: int, owner: Any) -> Any:
        """RELEASE_OWNER: every lock and share of one owner."""

    def release_client(session: int, protocol: str, client: bytes) -> Any:
        """RELEASE_CLIENT: every lock and share of one client."""

    def release_inode(ino: int, origin: int = 0) -> Any:
        """
        RELEASE_INODE: the file is gone. C{origin}: the session whose removal
        took its last link, which need not hear of state that was its own
        alone (0: every gateway hears).
        """

    def share_open(
        session: int, ino: int, owner: Any, sid: int, access: int, deny: int, reclaim: bool
    ) -> Any:
        """SHARE_OPEN: check and register one share reservation, atomically."""

    def share_set(session: int, sid: int, access: int, deny: int) -> Any:
        """SHARE_SET: upgrade or downgrade one."""

    def share_close(session: int, sid: int) -> Any:
        """SHARE_CLOSE."""

    def lease_hold(session: int, ino: int, bits: int) -> Any:
        """LEASE_HOLD: what the session's clients hold on C{ino} now (0: nothing)."""

    def lease_grant(session: int, ino: int, bits: int) -> Any:
        """LEASE_GRANT: the part of C{bits} the session may keep (W for one only), now held."""

    def lease_recall(session: int, ino: int, why: str) -> Deferred[None]:
        """LEASE_RECALL: fires once every other holder broke what C{why} forbids, or timed out."""

    def lease_break_ack(session: int, bid: int) -> None:
        """LEASE_BREAK_ACK."""

    def send_snapshot(push: Callable[[str, Any], None]) -> None:
        """Send every inode's state (EV_LOCKS, EV_LEASES) through C{push}: a new subscriber."""

    def subscribed(session: int) -> None:
        """The session has an event subscription here."""

    def unsubscribed(session: int) -> None:
        """The session's last subscription here went: drop it unless it comes back soon."""

    def reset(session: int) -> Any:
        """SESSION_RESET: drop everything of the session."""

    def sessions() -> dict[str, int]:
        """Counts for /health and tests."""
