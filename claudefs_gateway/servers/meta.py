# -*- test-case-name: tests.servers.test_meta -*-
"""
C{claudefs-meta}: the namespace, served from its store (embedded SQLite, or PostgreSQL).

Each metadata opcode is the backend contract's method of the same name on an
L{EmbeddedBackend} that holds no file bytes (a data server does; see
C{docs/rpc.rst} for how a write is split between them, and
L{EmbeddedBackend.wrote} for the metadata half). After every change the
server pushes C{EV_CHANGE} to the subscribed gateways, tagged with the
session that made it, so their attribute and name caches drop what changed.

The namespace's layout (which data servers hold a file's bytes, with what
stripe unit and how many mirrors) is chosen when the store is first served,
from C{--data-server}, kept in the store, and handed out by C{LAYOUT_GET}.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from claudefs_gateway import errors
from claudefs_gateway.backend.remote import wire
from claudefs_gateway.backend.remote.marks import MarkWriter, clear_marks
from claudefs_gateway.core.health import CheckResult
from claudefs_gateway.core.log import Logger
from claudefs_gateway.fstypes import RenameResult, WriteResult
from claudefs_gateway.servers.clients import GRACE, ClientRegistry
from claudefs_gateway.servers.shared import LINGER, ISharedState, SharedState

__all__ = ["MetaHandler", "LAYOUT_KEY", "DEFAULT_STRIPE"]

LAYOUT_KEY = "cfs.layout"
#: Stripe unit of a new namespace: one data server's chunk.
DEFAULT_STRIPE = 4 * 1024 * 1024


class MetaHandler:
    """
    The meta server's opcodes over a store: L{EmbeddedBackend} or L{PostgresStore}.

    @param publish: C{publish(event_name, value, origin=0)} pushes an event
        to every subscribed connection but those of session C{origin} (the
        server factory's L{publish}).
    @param grace: seconds of cross-gateway grace (C{meta_store.grace_secs}).
    @param linger: seconds a gateway's lost subscription may take to come
        back before it is gone (C{meta_store.linger_secs}).
    """

    _log = Logger()

    def __init__(
        self,
        backend: Any,
        publish: Callable[..., None],
        layout: wire.Layout | None = None,
        *,
        clock: Any = None,
        push: Callable[[int, str, Any], bool] | None = None,
        shared: Callable[..., ISharedState] | None = None,
        grace: float = GRACE,
        linger: float = LINGER,
        marks: Path | None = None,
    ) -> None:
        self.backend = backend
        #: Where subscribed connections' event counts are shared (marks.py), if anywhere.
        self.marks = marks
        if marks is not None:
            # An earlier run's (killed: its files were never removed) would
            # read as counts nobody updates; a gateway must find none.
            clear_marks(marks)
        self._publish = publish
        self.layout = layout or wire.Layout(DEFAULT_STRIPE, 1, ())
        if clock is None:
            from twisted.internet import reactor as clock
        #: Locks, share reservations and lease holdings of every gateway (servers/shared.py):
        #: in memory, or, given C{shared} (a factory called as SharedState is), elsewhere.
        make = shared or SharedState
        #: While a call's change event waits for its shared-state event
        #: (L{_held}): the inode, and the EV_LOCKS published for it meanwhile.
        self._holding: tuple[int, list[tuple[Any, int]]] | None = None
        self.shared: ISharedState = make(
            clock, push or self._push_via_subscribers, self._publish_shared, linger=linger
        )
        #: NFSv4 and NLM client records of every gateway, and their grace: in this
        #: server's memory (servers/clients.py), or where the shared state keeps them
        #: (over PostgreSQL: in the database, servers/clients_pg.py).
        registry = getattr(self.shared, "client_registry", None)
        self.clients: Any = (
            registry(publish, grace)
            if registry is not None
            else ClientRegistry(clock, publish, grace=grace)
        )
        self.shared.clients = self.clients
        self._subscribers: Any = None
        #: The store's directory rows as its newest delivered change left them
        #: (the embedded store's dir_after), if it keeps them.
        self._kept_dir: Callable[[int], Any] | None = getattr(backend, "dir_after", None)
        # False until the store is open: calls meanwhile are told to try later
        # (a restarted server accepts connections before its store has recovered).
        self.ready = False

    async def open(self, data_servers: list[str], mirrors: int = 1, moved: bool = False) -> None:
        """
        Open the store and settle the namespace's layout (C{mirrors} copies of
        each stripe). With C{moved}, a stored layout with as many data servers
        takes the addresses of C{data_servers} (the same servers, moved: what
        C{--workers} does, its sockets being new at each start).
        """
        await self.backend.open()
        stored = await self.backend.get_state(LAYOUT_KEY)
        wanted = wire.Layout(DEFAULT_STRIPE, mirrors, tuple(data_servers))
        if stored is None:
            await self.backend.set_state(LAYOUT_KEY, bytes(wire.encode(wire.LAYOUT, wanted)))
            self.layout = wanted
        else:
            self.layout = wire.decode(wire.LAYOUT, stored)
            if (
                moved
                and data_servers
                and len(data_servers) == len(self.layout.servers)
                and self.layout.servers != wanted.servers
            ):
                self._log.info(
                    "the store's data servers {kept} are now at {given}",
                    kept=",".join(self.layout.servers),
                    given=",".join(wanted.servers),
                )
                self.layout = wire.Layout(
                    self.layout.stripe_unit, self.layout.mirrors, wanted.servers
                )
                await self.backend.set_state(
                    LAYOUT_KEY, bytes(wire.encode(wire.LAYOUT, self.layout))
                )
            if data_servers and (
                self.layout.servers != wanted.servers or self.layout.mirrors != mirrors
            ):
                # Files already placed stay where they are; moving them is a job of its own.
                self._log.warn(
                    "the store's layout names data servers {kept} with {m} copies; "
                    "--data-server {given} --mirrors {want} ignored",
                    kept=",".join(self.layout.servers),
                    m=self.layout.mirrors,
                    given=",".join(wanted.servers),
                    want=mirrors,
                )
        self.shared.start()
        self.ready = True
        self._log.info("metadata store ready", store_open=True)

    def instance_id(self) -> bytes:
        return bytes(self.backend.instance_id)

    def boot_salt(self) -> bytes:
        """What of the store's own life goes into the boot id (HELLO): PostgreSQL's start."""
        return bytes(getattr(self.backend, "db_boot", b""))

    def check(self) -> CheckResult:
        check = getattr(self.backend, "check", None)
        return check() if check is not None else CheckResult.healthy()

    def _changed(self, conn: Any, ino: int, dir: int = 0) -> None:
        self._publish("EV_CHANGE", wire.ChangeEvent(getattr(conn, "session", 0), ino, dir))

    def _publish_shared(self, name: str, value: Any, origin: int = 0, *rest: Any) -> None:
        """The shared state's publish: an EV_LOCKS of the inode a call holds waits for it."""
        holding = self._holding
        if holding is not None and name == "EV_LOCKS" and value[0] == holding[0]:
            holding[1].append((value, origin))
            return
        self._publish(name, value, origin, *rest)

    def _held(self, conn: Any, ino: int, dir: int, shared: Callable[[], Any]) -> Any:
        """
        Run C{shared()} (a share taken, a removed inode's state dropped) and
        publish the call's EV_CHANGE of C{ino}: when C{shared} published one
        EV_LOCKS of C{ino} alone, before anything else could, and it goes to
        the same gateways as the change (all but the caller's), both leave in
        one EV_CHANGE_LOCKS frame: every other gateway is woken once, not
        twice (docs/workers.rst "One frame for a call's two events").
        Otherwise each is published as it would have been, the change last.
        What C{shared} returns is returned; if it raises, the change is
        published all the same.
        """
        session = getattr(conn, "session", 0)
        change = wire.ChangeEvent(session, ino, dir)
        held: list[tuple[Any, int]] = []
        self._holding = (ino, held)
        try:
            got = shared()
        finally:
            self._holding = None
            if len(held) == 1 and session and held[0][1] == session:
                self._publish("EV_CHANGE_LOCKS", (change, held[0][0]))
            else:
                for value, origin in held:
                    self._publish("EV_LOCKS", value, origin)
                self._publish("EV_CHANGE", change)
        return got

    def _then(self, d: defer.Deferred[Any], fn: Callable[[Any], None]) -> defer.Deferred[Any]:
        def after(result: Any) -> Any:
            fn(result)
            return result

        return d.addCallback(after)

    # -- session --------------------------------------------------------------------

    def _dirs(self, d: defer.Deferred[Any], *dirs: int) -> defer.Deferred[Any]:
        """
        Answer a namespace change with the directories it changed, as they are
        after it (wire.DIRS): the gateway caches them rather than sending a
        GETATTR for its reply's wcc data. Read after the change committed, so
        never older than it; a directory gone meanwhile is left out.
        """

        wanted = tuple(dict.fromkeys(dirs))
        kept = self._kept_dir

        async def read(result: Any) -> tuple[Any, tuple[Any, ...]]:
            after = []
            for ino in wanted:
                try:
                    after.append(await self.backend.getattr(ino))
                except errors.GatewayError:
                    continue  # the change stands; the gateway asks again if it must
            return result, tuple(after)

        def add(result: Any) -> Any:
            # The embedded store keeps the rows its changes left (dir_after):
            # taken from there, no read is queued behind the writer and no
            # coroutine runs per change (docs/workers.rst "What one RPC call
            # costs"). A directory it does not keep is read.
            if kept is not None:
                after = []
                for ino in wanted:
                    a = kept(ino)
                    if a is None:
                        break
                    after.append(a)
                else:
                    return result, tuple(after)
            return defer.Deferred.fromCoroutine(read(result))

        return d.addCallback(add)

    def op_HEARTBEAT(self, conn: Any) -> None:
        return None

    def op_SUBSCRIBE(self, conn: Any, on: bool) -> None:
        subs = conn.factory.subscribers
        self._subscribers = subs
        session = getattr(conn, "session", 0)
        if on:
            if self.marks is not None and getattr(conn, "mark", False) is None:
                try:
                    conn.mark = MarkWriter(self.marks, session)
                    conn.mark.set(conn.pushed)
                except OSError as e:
                    # The gateway then finds no file and asks for sizes.
                    clear_marks(self.marks, session)
                    self._log.warn(
                        "event mark in {dir} not kept: {why}", dir=str(self.marks), why=str(e)
                    )
            subs.add(conn)
            conn.subscribed_once = True
            self.shared.subscribed(session)
            # What is held now, so a gateway that joins late knows the others' state.
            self.shared.send_snapshot(conn.push)
            if self.clients.worth_telling:
                conn.push("EV_GRACE", self.clients.event())
        else:
            subs.discard(conn)
            self._maybe_gone(subs, session)

    def connection_lost(self, conn: Any) -> None:
        """A connection closed: a session without a subscription left may be gone."""
        if getattr(conn, "subscribed_once", False):
            self._maybe_gone(conn.factory.subscribers, conn.session)

    def _maybe_gone(self, subs: Any, session: int) -> None:
        if not any(c.session == session for c in subs):
            self.shared.unsubscribed(session)

    def _push_via_subscribers(self, session: int, name: str, value: Any) -> bool:
        sent = False
        for c in list(self._subscribers or ()):
            if c.session == session:
                c.push(name, value)
                sent = True
                break
        return sent

    # -- shared state: locks, share reservations, leases -------------------------------

    def op_LOCK(
        self,
        conn: Any,
        ino: int,
        owner: Any,
        start: int,
        length: int,
        exclusive: bool,
        reclaim: bool,
    ) -> Any:
        # A coroutine (in memory) or a Deferred (PostgreSQL).
        return defer.ensureDeferred(
            self.shared.lock(conn.session, ino, owner, start, length, exclusive, reclaim)
        )

    def op_LOCK_WAIT(
        self, conn: Any, ino: int, owner: Any, start: int, length: int, exclusive: bool
    ) -> Any:
        return self.shared.lock_wait(conn.session, ino, owner, start, length, exclusive)

    def op_LOCK_UNWAIT(self, conn: Any, owner: Any) -> Any:
        return self.shared.lock_unwait(conn.session, owner)

    def op_UNLOCK(self, conn: Any, ino: int, owner: Any, start: int, length: int) -> Any:
        return self.shared.unlock(conn.session, ino, owner, start, length)

    def op_RELEASE_OWNER(self, conn: Any, owner: Any) -> Any:
        return self.shared.release_owner(conn.session, owner)

    def op_RELEASE_INODE(self, conn: Any, ino: int) -> Any:
        return self.shared.release_inode(ino)

    def op_RELEASE_CLIENT(self, conn: Any, protocol: str, client: bytes) -> Any:
        return self.shared.release_client(conn.session, protocol, client)

    def op_SHARE_OPEN(
        self,
        conn: Any,
        ino: int,
        owner: Any,
        sid: int,
        access: int,
        deny: int,
        reclaim: bool,
    ) -> Any:
        return self.shared.share_open(conn.session, ino, owner, sid, access, deny, reclaim)

    def op_SHARE_SET(self, conn: Any, sid: int, access: int, deny: int) -> Any:
        return self.shared.share_set(conn.session, sid, access, deny)

    def op_SHARE_CLOSE(self, conn: Any, sid: int) -> Any:
        return self.shared.share_close(conn.session, sid)

    def op_LEASE_HOLD(self, conn: Any, ino: int, bits: int) -> Any:
        return self.shared.lease_hold(conn.session, ino, bits)

    def op_LEASE_GRANT(self, conn: Any, ino: int, bits: int) -> Any:
        return self.shared.lease_grant(conn.session, ino, bits)

    def op_LEASE_RECALL(self, conn: Any, ino: int, why: str) -> Any:
        return self.shared.lease_recall(conn.session, ino, why)

    def op_LEASE_BREAK_ACK(self, conn: Any, bid: int) -> Any:
        return self.shared.lease_break_ack(conn.session, bid)

    # Each answers at once (in memory) or with a Deferred (PostgreSQL).

    def op_CLIENT_NOTE(self, conn: Any, protocol: str, owner: bytes) -> Any:
        return self.clients.note(conn.session, protocol, owner)

    def op_CLIENT_FORGET(self, conn: Any, protocol: str, owner: bytes) -> Any:
        return self.clients.forget(conn.session, protocol, owner)

    def op_CLIENT_RECLAIMED(self, conn: Any, protocol: str, owner: bytes) -> Any:
        return self.clients.reclaimed(conn.session, protocol, owner)

    def op_SESSION_RESET(self, conn: Any) -> Any:
        return self.shared.reset(conn.session)

    # -- reads ------------------------------------------------------------------------

    def op_ROOT(self, conn: Any) -> Any:
        return self.backend.root()

    def op_GETATTR(self, conn: Any, ino: int) -> Any:
        return self.backend.getattr(ino)

    def op_LOOKUP(self, conn: Any, parent: int, name: bytes) -> Any:
        return self.backend.lookup(parent, name)

    def op_READDIR(
        self, conn: Any, dir: int, cookie: int, verifier: bytes, count: int, with_attrs: bool
    ) -> Any:
        return self.backend.readdir(dir, cookie, verifier, count, with_attrs)

    def op_READLINK(self, conn: Any, ino: int) -> Any:
        return self.backend.readlink(ino)

    def op_STATFS(self, conn: Any) -> Any:
        return self.backend.statfs()

    def op_GETXATTR(self, conn: Any, ino: int, name: bytes) -> Any:
        return self.backend.getxattr(ino, name)

    def op_LISTXATTR(self, conn: Any, ino: int) -> Any:
        return self.backend.listxattr(ino)

    def op_USAGE(self, conn: Any, kind: str, id: int) -> Any:
        return self.backend.usage(kind, id)

    def op_ALL_USAGE(self, conn: Any, kind: str) -> Any:
        return self.backend.all_usage(kind)

    def op_GET_QUOTA(self, conn: Any, kind: str, id: int) -> Any:
        return self.backend.get_quota(kind, id)

    def op_LIST_QUOTAS(self, conn: Any, kind: str) -> Any:
        return self.backend.list_quotas(kind)

    def op_GET_STATE(self, conn: Any, key: str) -> Any:
        return self.backend.get_state(key)

    def op_LAYOUT_GET(self, conn: Any, ino: int) -> Any:
        # One layout for the namespace in this version; per-file layouts
        # (pNFS striping) would be kept per inode and returned here.
        return self.backend.getattr(ino).addCallback(lambda _: self.layout)

    # -- changes ----------------------------------------------------------------------

    def op_CREATE(
        self,
        conn: Any,
        parent: int,
        name: bytes,
        type: Any,
        mode: int,
        uid: int,
        gid: int,
        rdev: tuple[int, int],
        durable: bool,
    ) -> Any:
        d = self.backend.create(parent, name, type, mode, uid, gid, tuple(rdev), durable=durable)
        return self._dirs(self._then(d, lambda a: self._changed(conn, a.ino, parent)), parent)

    def op_CREATE_OPEN(
        self,
        conn: Any,
        parent: int,
        name: bytes,
        type: Any,
        mode: int,
        uid: int,
        gid: int,
        rdev: tuple[int, int],
        durable: bool,
        owner: Any,
        sid: int,
        access: int,
        deny: int,
    ) -> Any:
        """
        CREATE, then the new inode's share reservation for the opener (an SMB
        CREATE that makes a file: one round trip where it was two). A share
        refused (grace) leaves the file made and says False: the gateway then
        asks with SHARE_OPEN, and undoes its create on the refusal.
        """
        d = self.backend.create(parent, name, type, mode, uid, gid, tuple(rdev), durable=durable)
        made: list[Any] = []
        d = self._dirs(self._then(d, made.append), parent)
        session = getattr(conn, "session", 0)

        def unshared(f: Failure) -> Failure:
            if made:  # the file was made: its change is told all the same
                self._changed(conn, made[0].ino, parent)
            return f

        def share(got: tuple[Any, Any]) -> defer.Deferred[Any]:
            a, dirs = got
            # The create's EV_CHANGE and the share's EV_LOCKS in one frame
            # (both before the answer, as before).
            s = defer.maybeDeferred(
                self._held,
                conn,
                a.ino,
                parent,
                lambda: self.shared.share_open(session, a.ino, owner, sid, access, deny, False),
            )

            def refused(f: Failure) -> bool:
                f.trap(errors.GatewayError)
                self._log.debug("CREATE_OPEN: share not registered: {why}", why=str(f.value))
                return False

            s.addCallbacks(lambda _: True, refused)
            return s.addCallback(lambda ok: (a, dirs, ok))

        return d.addCallbacks(share, unshared)

    def _release_gone(self, a: Any, session: int = 0) -> None:
        """
        The last link of C{a} went: drop its locks, shares and waiters here,
        so the gateway need not send RELEASE_INODE after the answer (a round
        trip per deleted file; docs/rpc.rst "Shared state"). C{session}: the
        removal's gateway, which need not hear of state that was its own.
        """
        if a is None or a.nlink != 0:
            return
        try:
            got = self.shared.release_inode(a.ino, session)
        except errors.GatewayError as e:
            self._log.warn("release of inode {ino} failed: {why}", ino=a.ino, why=str(e))
            return
        if isinstance(got, defer.Deferred):
            got.addErrback(
                lambda f: self._log.warn(
                    "release of inode {ino} failed: {why}", ino=a.ino, why=str(f.value)
                )
            )

    def op_SYMLINK(
        self, conn: Any, parent: int, name: bytes, target: bytes, mode: int, uid: int, gid: int
    ) -> Any:
        d = self.backend.symlink(parent, name, target, mode, uid, gid)
        return self._dirs(self._then(d, lambda a: self._changed(conn, a.ino, parent)), parent)

    def op_LINK(self, conn: Any, ino: int, parent: int, name: bytes) -> Any:
        d = self.backend.link(ino, parent, name)
        return self._dirs(self._then(d, lambda a: self._changed(conn, a.ino, parent)), parent)

    def _removed(self, conn: Any, parent: int) -> Callable[[Any], None]:
        """An UNLINK's or RMDIR's events: the removed inode's state dropped, then the change."""
        session = getattr(conn, "session", 0)

        def events(a: Any) -> None:
            self._held(conn, a.ino, parent, lambda: self._release_gone(a, session))

        return events

    def op_UNLINK(self, conn: Any, parent: int, name: bytes, durable: bool) -> Any:
        d = self.backend.unlink(parent, name, durable=durable)
        return self._dirs(self._then(d, self._removed(conn, parent)), parent)

    def op_RMDIR(self, conn: Any, parent: int, name: bytes, durable: bool) -> Any:
        d = self.backend.rmdir(parent, name, durable=durable)
        return self._dirs(self._then(d, self._removed(conn, parent)), parent)

    def op_RENAME(
        self,
        conn: Any,
        src_parent: int,
        src_name: bytes,
        dst_parent: int,
        dst_name: bytes,
        durable: bool,
    ) -> Any:
        d = self.backend.rename(src_parent, src_name, dst_parent, dst_name, durable=durable)

        def changed(r: RenameResult) -> None:
            self._release_gone(r.replaced, getattr(conn, "session", 0))
            self._changed(conn, r.source.ino, src_parent)
            if dst_parent != src_parent or r.replaced is not None:
                self._changed(conn, r.replaced.ino if r.replaced else r.source.ino, dst_parent)

        return self._dirs(self._then(d, changed), src_parent, dst_parent)

    def op_SETATTR(
        self, conn: Any, ino: int, changes: Any, guard: int | None, durable: bool
    ) -> Any:
        d = self.backend.setattr(ino, changes, guard, durable=durable)
        return self._then(d, lambda a: self._changed(conn, ino))

    def op_SETXATTR(
        self, conn: Any, ino: int, name: bytes, value: bytes, create: bool | None, durable: bool
    ) -> Any:
        d = self.backend.setxattr(ino, name, value, create, durable=durable)
        return self._then(d, lambda _: self._changed(conn, ino))

    def op_REMOVEXATTR(self, conn: Any, ino: int, name: bytes) -> Any:
        d = self.backend.removexattr(ino, name)
        return self._then(d, lambda _: self._changed(conn, ino))

    def op_SYNC(self, conn: Any) -> Any:
        """
        Every change answered so far durable: a gateway's SMB FLUSH (or
        write-through, or its background metadata flush) after changes it sent
        with C{durable} false, which the store answered before a sync.
        """
        return self.backend.sync()

    def op_COMMIT_META(self, conn: Any, ino: int) -> Any:
        return self.backend.commit(ino)

    def op_SET_QUOTA(self, conn: Any, kind: str, id: int, limits: Any) -> Any:
        return self.backend.set_quota(kind, id, limits)

    def op_SET_STATE(self, conn: Any, key: str, value: bytes | None) -> Any:
        return self.backend.set_state(key, value)

    def op_WROTE(
        self,
        conn: Any,
        ino: int,
        offset: int,
        length: int,
        what: int,
        stable: bool,
        mtime_ns: int = 0,
    ) -> Any:
        if what not in (0, 1, 2):
            return defer.fail(errors.Inval("WROTE kind must be 0, 1 or 2"))
        if mtime_ns < 0:
            return defer.fail(errors.Inval("WROTE time must not be negative"))
        durable = stable or what != 0
        d: defer.Deferred[WriteResult] = self.backend.wrote(
            ino, offset, length, what, durable, mtime_ns
        )
        return self._then(d, lambda r: self._changed(conn, ino))
