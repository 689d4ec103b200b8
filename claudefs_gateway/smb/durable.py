# -*- test-case-name: tests.smb.test_durable -*-
"""
Durable handles (MS-SMB2 3.3.5.9.6, 3.3.5.9.7, 3.3.5.9.10, 3.3.5.9.12):
opens that outlive their connection.

An open asked for durability (DHnQ, or DH2Q with a CreateGuid) gets it when
it holds a batch oplock or a lease with handle caching, as on Windows and
Samba. When its connection drops, or a new session of its user names the old
one as PreviousSessionId, such an open is *disconnected*, not closed: it keeps
its share reservation, its byte-range locks and its lease, for its timeout
(v1: 16 minutes, as Samba; v2: what the client asked, at most 300 s, 60 s if
it asked 0). A reconnect (DHnC, DH2C with the same CreateGuid) by the same
user reclaims all of that; an open of the file by someone else that would
break the disconnected open's caching or meet its share mode closes it
instead (there is nobody to send a break to). LOGOFF and TREE_DISCONNECT
close durable opens like any other.

A disconnected open is written to the backend's state store (C{vfs.set_state},
key C{smb.durable.<persistent id>}), listed in this gateway instance's own
index (C{smb.durable.index.<instance>}: several gateways on one meta server
never write each other's), so that a gateway
restarted within the timeout still honours the reconnect: the open is made
again from the record (the file by inode, the share reservation, the lease or
oplock if they can be granted again). What a restart loses: byte-range locks
(the lock table starts empty) and a lease another client took meanwhile.

Persistent handles (MS-SMB2 3.3.5.9.10, C{ca: true} shares, SMB 3): a DH2Q
with SMB2_DHANDLE_FLAG_PERSISTENT on a continuously available share is
granted whatever the open caches. Its record (the open, its share mode, its
lease, its byte-range locks) is written to the state store when it is granted
and again whenever its locks or lease change, not only when its connection
drops, and listed in the keeping instance's own C{smb.persistent.index.<instance>}
(only it writes that key, so concurrent grants of several gateways lose no
entry): a gateway killed with C{-9} leaves it behind. Every gateway
serving a CA share beats in the store; one that finds an instance's beat
stopped (L{Durability.recover}, at its start and at each beat) makes every
open of that instance again, disconnected: its share reservation and locks
held in the lock table (the meta server's, shared by every gateway on it), so
other clients stay out of the file, until the reconnect or the timeout,
counted from the takeover. While the killed gateway's own reservations still
linger at the meta server (C{meta_store.linger_secs}) it retries when the lock
table reports a change on the file (the meta server's release), at least
each second. A
break of a disconnected persistent open's lease or oplock lowers it without
an acknowledgement (nobody to send it to) instead of closing the open, so its
share mode and locks still keep others out.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import attrs
from twisted.internet import defer, task
from twisted.python.failure import Failure

from claudefs_gateway import errors
from claudefs_gateway.core.log import Logger
from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.smb import constants as c
from claudefs_gateway.smb import ntstatus as st
from claudefs_gateway.smb.errors import SMBError
from claudefs_gateway.vfs.leases import H

__all__ = [
    "DurableAsk",
    "Durability",
    "parse_durable",
    "V1_TIMEOUT",
    "V2_DEFAULT_TIMEOUT",
    "V2_MAX_TIMEOUT",
]

#: Seconds a v1 durable open survives its connection (Samba's choice; MS-SMB2 leaves it open).
V1_TIMEOUT = 16 * 60.0
#: A v2 request with Timeout 0 gets this (Windows Server 2012's default).
V2_DEFAULT_TIMEOUT = 60.0
#: The most a v2 request gets (Samba's and Windows' cap).
V2_MAX_TIMEOUT = 300.0
SMB2_DHANDLE_FLAG_PERSISTENT = 0x00000002
#: The previous format's one durable index, written whole by every gateway (read only now).
_INDEX_KEY = "smb.durable.index"
#: Each gateway instance's own durable index (written by it alone), and the
#: instances that have one.
_MY_INDEX_KEY = "smb.durable.index.{}"
_DGATEWAYS_KEY = "smb.durable.gateways"
#: The previous format's one shared persistent index (read, never written now).
_PINDEX_KEY = "smb.persistent.index"
#: Each gateway instance's own list of the persistent records it keeps: written
#: whole by that instance alone, so no other gateway's write can lose an entry.
_MY_PINDEX_KEY = "smb.persistent.index.{}"
#: The instances that ever kept persistent records (a takeover looks at their lists).
_GATEWAYS_KEY = "smb.persistent.gateways"
#: Seconds between attempts to take a persistent open's reservations back at a
#: start, while the killed gateway's still linger at the meta server.
RETAKE_INTERVAL = 1.0
# Random persistent FileIds, read from the kernel this many at a time.
_RANDOM_IDS = struct.Struct("<256Q")
#: Seconds between a gateway's beats (taking over persistent handles, below).
HEARTBEAT = 2.0
#: A gateway whose beat has not moved for this long is dead (below linger_secs' 10).
DEAD_AFTER = 3 * HEARTBEAT
_BEAT_KEY = "smb.gateway.{}"


@attrs.frozen
class DurableAsk:
    """
    What a CREATE asks about durability.

    @ivar version: 1 (DHnQ/DHnC), 2 (DH2Q/DH2C) or 0 (nothing).
    @ivar reconnect: the FileId of the open to reconnect to (DHnC, DH2C).
    @ivar timeout: the v2 timeout asked for, in seconds.
    @ivar create_guid: the v2 CreateGuid.
    @ivar replay: a v2 request flagged REPLAY_OPERATION.
    @ivar app_instance: SMB2_CREATE_APP_INSTANCE_ID's GUID.
    @ivar persistent: a DH2Q with SMB2_DHANDLE_FLAG_PERSISTENT.
    """

    version: int = 0
    reconnect: tuple[int, int] | None = None
    timeout: float = 0.0
    create_guid: bytes | None = None
    replay: bool = False
    app_instance: bytes | None = None
    persistent: bool = False


#: The contexts L{parse_durable} reads.
_DURABLE_CONTEXTS = frozenset(
    {
        c.SMB2_CREATE_DURABLE_HANDLE_REQUEST,
        c.SMB2_CREATE_DURABLE_HANDLE_RECONNECT,
        c.SMB2_CREATE_DURABLE_HANDLE_REQUEST_V2,
        c.SMB2_CREATE_DURABLE_HANDLE_RECONNECT_V2,
        c.SMB2_CREATE_APP_INSTANCE_ID,
    }
)


NO_DURABLE_ASK = DurableAsk()


def parse_durable(contexts: dict[bytes, bytes], replay: bool) -> DurableAsk:
    """
    The durability a CREATE's contexts ask for, with MS-SMB2's rules on
    which go together (3.3.5.9.6-3.3.5.9.12, as Samba checks them).

    @raise SMBError: a context of the wrong size or a combination that is
        refused (STATUS_INVALID_PARAMETER); other contexts beside a reconnect
        (STATUS_OBJECT_NAME_NOT_FOUND).
    """
    if contexts.keys().isdisjoint(_DURABLE_CONTEXTS):
        # Most opens ask nothing of the kind (the end of the rules below):
        # one answer for all (frozen), not one built per CREATE.
        return NO_DURABLE_ASK
    dhnq = contexts.get(c.SMB2_CREATE_DURABLE_HANDLE_REQUEST)
    dhnc = contexts.get(c.SMB2_CREATE_DURABLE_HANDLE_RECONNECT)
    dh2q = contexts.get(c.SMB2_CREATE_DURABLE_HANDLE_REQUEST_V2)
    dh2c = contexts.get(c.SMB2_CREATE_DURABLE_HANDLE_RECONNECT_V2)
    app = contexts.get(c.SMB2_CREATE_APP_INSTANCE_ID)
    if (
        (dhnc is not None and dh2c is not None)
        or (dhnc is not None and dh2q is not None)
        or (dh2c is not None and dhnq is not None)
        or (dh2q is not None and dh2c is not None)
        or (dhnq is not None and dh2q is not None)
    ):
        raise SMBError(st.STATUS_INVALID_PARAMETER, "conflicting durable handle contexts")
    app_instance = None
    if app is not None:
        if len(app) != 20 or struct.unpack_from("<H", app)[0] != 20:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "bad AppInstanceId context")
        app_instance = app[4:20]
    others = set(contexts) - {c.SMB2_CREATE_REQUEST_LEASE}
    if dhnc is not None:
        if len(dhnc) != 16:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "DHnC size")
        if others - {c.SMB2_CREATE_DURABLE_HANDLE_RECONNECT, c.SMB2_CREATE_DURABLE_HANDLE_REQUEST}:
            # MS-SMB2 3.3.5.9.7: only a DHnQ (ignored) and a lease may go with it.
            raise SMBError(st.STATUS_OBJECT_NAME_NOT_FOUND, "other contexts with DHnC")
        return DurableAsk(1, struct.unpack("<QQ", dhnc), app_instance=app_instance)
    if dh2c is not None:
        if len(dh2c) != 36:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "DH2C size")
        if others - {c.SMB2_CREATE_DURABLE_HANDLE_RECONNECT_V2}:
            raise SMBError(st.STATUS_OBJECT_NAME_NOT_FOUND, "other contexts with DH2C")
        fid = struct.unpack_from("<QQ", dh2c)
        return DurableAsk(2, fid, create_guid=dh2c[16:32], app_instance=app_instance)
    if dhnq is not None:
        if len(dhnq) != 16:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "DHnQ size")
        return DurableAsk(1, timeout=V1_TIMEOUT, app_instance=app_instance)
    if dh2q is not None:
        if len(dh2q) != 32:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "DH2Q size")
        timeout_ms, flags = struct.unpack_from("<II", dh2q)
        timeout = min(timeout_ms / 1000.0, V2_MAX_TIMEOUT) or V2_DEFAULT_TIMEOUT
        return DurableAsk(
            2,
            timeout=timeout,
            create_guid=dh2q[16:32],
            replay=replay,
            app_instance=app_instance,
            persistent=bool(flags & SMB2_DHANDLE_FLAG_PERSISTENT),
        )
    return DurableAsk(app_instance=app_instance)


def can_be_durable(op: Any) -> bool:
    """
    A batch oplock or a lease with handle caching (MS-SMB2 3.3.5.9.6,
    3.3.5.9.10); not a named stream's open (its state is not kept for a
    reconnect).
    """
    if op.stream is not None:
        return False
    if op.lease is not None:
        return bool(op.lease.state & H)
    return op.oplock == c.SMB2_OPLOCK_LEVEL_BATCH


def may_be_persistent(op: Any, ask: DurableAsk) -> bool:
    """
    MS-SMB2 3.3.5.9.10: a DH2Q asking for persistence, over SMB 3, on a
    continuously available share (C{ca: true}); not a named stream's open.
    """
    if not ask.persistent or ask.version != 2 or op.stream is not None or op.tree is None:
        return False
    conn = op.conn
    if conn is None or conn.dialect < c.SMB_3_0:
        return False
    return bool(getattr(op.tree.export.rules, "ca", False))


def response_context(op: Any) -> tuple[bytes, bytes]:
    """The DHnQ or DH2Q answer for an open granted durability (persistence flagged)."""
    if op.durable == 1:
        return c.SMB2_CREATE_DURABLE_HANDLE_REQUEST, b"\x00" * 8
    flags = SMB2_DHANDLE_FLAG_PERSISTENT if op.persistent else 0
    return c.SMB2_CREATE_DURABLE_HANDLE_REQUEST_V2, struct.pack(
        "<II", int(op.durable_timeout * 1000), flags
    )


def _hex(b: bytes | None) -> str | None:
    return b.hex() if b is not None else None


def _unhex(s: str | None) -> bytes | None:
    return bytes.fromhex(s) if s is not None else None


class Durability:
    """
    The server's durable opens: by persistent FileId, by CreateGuid and by
    AppInstanceId; disconnecting, timing out, persisting and finding them.
    """

    _log = Logger()

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.by_id: dict[int, Any] = {}
        # By (ClientGuid, CreateGuid): MS-SMB2 3.3.5.9.10 looks CreateGuids up per client.
        self.by_create_guid: dict[tuple[bytes, bytes], Any] = {}
        self.by_app: dict[bytes, Any] = {}
        self._writes: set[defer.Deferred[None]] = set()
        self._index: set[int] = set()
        self._index_loaded = False
        self.started = factory.reactor.seconds()
        # Persistent opens: the ids this gateway keeps records of, the writes
        # of its own index (one at a time), the records a start is still
        # taking back (their reservations linger at the meta server), and who
        # waits for the start's reading of the index.
        self._persisted: set[int] = set()
        self._plock = defer.DeferredLock()
        self.retaking: dict[int, list[defer.Deferred[None]]] = {}
        self._recovered: list[defer.Deferred[None]] | None = None
        # Named in the list of gateways yet; every name seen there (a name
        # lost to a concurrent write of that list is still looked at); a dead
        # instance's records not yet taken here.
        self._registered = False
        self._dlock = defer.DeferredLock()
        # What load_index read of other instances' durable indexes (and of the
        # previous format's): pruned at the sweep if no one changed them.
        self._loaded_lists: dict[str, bytes | None] = {}
        self._known: set[str] = set()
        # Names listed with no list of records (at the last reading).
        self._listless: set[str] = set()
        self._dead_left: dict[str, set[int]] = {}
        # This gateway's instance (named in the index beside its records), its
        # beat, and what it saw of others' beats (counter, when it last moved).
        self.instance = os.urandom(8).hex()
        self._random_ids: list[int] = []
        self._beats = 0
        self._seen: dict[str, tuple[bytes, float]] = {}
        self._beating: task.LoopingCall | None = None
        self._ticking = False
        #: One gateway on its own store (backend: embedded): no other instance is alive.
        backend = getattr(getattr(factory.config, "backend", None), "type", "embedded")
        self.single = backend == "embedded"

    def new_persistent_id(self) -> int:
        """
        Random, so ids of a previous run (kept for reconnects) are not reused;
        drawn from the kernel 256 at a time (one C{getrandom} per 256 opens,
        not one per open).
        """
        ids = self._random_ids
        if not ids:
            ids.extend([x >> 1 or 1 for x in _RANDOM_IDS.unpack(os.urandom(_RANDOM_IDS.size))])
        return ids.pop()

    # -- granting ----------------------------------------------------------------------

    def grant(self, op: Any, ask: DurableAsk, user: str) -> tuple[bytes, bytes] | None:
        """
        Make C{op} durable if it may be; @return: the response context, or
        None. The caller writes a persistent open's record (L{persist})
        before it answers.
        """
        op.app_instance = ask.app_instance
        if ask.app_instance is not None:
            self.by_app[ask.app_instance] = op
        persistent = may_be_persistent(op, ask)
        # A persistent open needs no batch oplock or handle lease (MS-SMB2
        # 3.3.5.9.10): that is what a continuously available share is for.
        if not ask.version or not (persistent or can_be_durable(op)):
            return None
        op.durable = ask.version
        op.durable_timeout = ask.timeout
        op.create_guid = ask.create_guid
        op.owner = user
        op.persistent = persistent
        self.by_id[op.file_id[0]] = op
        if ask.create_guid is not None:
            self.by_create_guid[(op.client_guid, ask.create_guid)] = op
        return response_context(op)

    def make_resilient(self, op: Any, timeout: float) -> None:
        """
        FSCTL_LMR_REQUEST_RESILIENCY (MS-SMB2 3.3.5.15.9): the open survives
        a lost connection for C{timeout} whatever it caches, and is
        reclaimed with a v1 reconnect.
        """
        op.resilient = True
        if not op.durable:
            op.durable = 1
            op.owner = op.session.user
        op.durable_timeout = timeout
        self.by_id[op.file_id[0]] = op

    def forget(self, op: Any) -> None:
        """An open ends: it is no longer reachable by any of its names."""
        pid, guid, app, client = op.file_id[0], op.create_guid, op.app_instance, op.client_guid
        if self.by_id.get(pid) is op:
            del self.by_id[pid]
        if guid is not None and self.by_create_guid.get((client, guid)) is op:
            del self.by_create_guid[(client, guid)]
        if app is not None and self.by_app.get(app) is op:
            del self.by_app[app]
        if op.expiry is not None:
            if op.expiry.active():
                op.expiry.cancel()
            op.expiry = None
        if op.file_id[0] in self._index:
            self._drop_record(op.file_id[0])
        if op.file_id[0] in self._persisted:
            self._unpersist(op.file_id[0])

    # -- disconnecting ---------------------------------------------------------------------

    def keeps(self, op: Any) -> bool:
        """Whether C{op} survives its connection (still durable, still caching handles)."""
        if op.closed or not op.durable:
            return False
        return op.persistent or op.resilient or can_be_durable(op)

    def disconnect(self, op: Any) -> None:
        """
        C{op}'s connection or session is gone: keep it for its timeout, and
        write it down for a restarted gateway.
        """
        op.disconnected = True
        op.conn = None
        op.expiry = self.factory.reactor.callLater(op.durable_timeout, self._expired, op)
        self._write_record(op)

    def _expired(self, op: Any) -> None:
        op.expiry = None
        if op.disconnected and not op.closed:
            self._log.info("smb durable handle not reclaimed in time: closed", ino=op.ino)
            self.factory.files.close_quietly(None, op)

    def reconnected(self, op: Any) -> None:
        op.disconnected = False
        if op.expiry is not None:
            if op.expiry.active():
                op.expiry.cancel()
            op.expiry = None
        if op.file_id[0] in self._index:
            self._drop_record(op.file_id[0])

    # -- the state store ---------------------------------------------------------------------

    def _record(self, op: Any) -> dict[str, Any]:
        sl = op.lease
        rec = {
            "v": op.durable,
            "ino": op.ino,
            "export": op.tree.export.name,
            "path": op.node.path if op.node is not None else "",
            "is_dir": op.is_dir,
            "access": op.access,
            "share": op.share_access,
            "user": op.owner,
            "create_guid": _hex(op.create_guid),
            "client": op.client_guid.hex(),
            "timeout": op.durable_timeout,
            "oplock": op.oplock,
            "lease": None
            if sl is None
            else {
                "client": sl.client.hex(),
                "key": sl.key.hex(),
                "state": sl.state,
                "version": sl.version,
                "epoch": sl.epoch,
                "parent": _hex(sl.parent),
            },
        }
        if op.persistent:
            rec.update(self._persistent_fields(op))
        return rec

    def _persistent_fields(self, op: Any) -> dict[str, Any]:
        """What a persistent open's record adds: its locks and who it runs as."""
        locks = self.factory.files.locks
        held = []
        if locks is not None and op.lock_owner is not None and op.node is not None:
            held = [
                [lk.start, lk.length, lk.exclusive]
                for lk in locks.locks(op.ino)
                if lk.owner == op.lock_owner
            ]
        caller = op.tree.caller
        pending = op.restored_lease
        return {
            "persistent": True,
            "locks": held,
            "zero_locks": [[z, x] for z, x in op.zero_locks],
            "uid": caller.cred.uid,
            "gid": caller.cred.gid,
            "groups": list(caller.cred.groups),
            "peer": caller.client,
            # A lease not granted again yet (a start took the open back, no reconnect yet).
            **({"lease": pending} if op.lease is None and pending is not None else {}),
        }

    def _key(self, pid: int) -> str:
        return f"smb.durable.{pid:016x}"

    def _track(self, d: defer.Deferred[None]) -> None:
        self._writes.add(d)

        def done(result: Any) -> None:
            self._writes.discard(d)
            if isinstance(result, Failure):
                self._log.failure("smb: keeping durable handle state failed", result)

        d.addBoth(done)

    def _write_record(self, op: Any) -> None:
        if op.persistent:
            self.persist(op)
            return
        vfs = self.factory.vfs
        if vfs is None:
            return
        pid = op.file_id[0]
        self._index.add(pid)
        self._track(vfs.set_state(self._key(pid), json.dumps(self._record(op)).encode()))
        self._write_index()

    def _drop_record(self, pid: int) -> None:
        vfs = self.factory.vfs
        self._index.discard(pid)
        if vfs is None:
            return
        self._track(vfs.set_state(self._key(pid), None))
        self._write_index()

    def _write_index(self) -> None:
        if self.factory.vfs is not None:
            self._track(defer.Deferred.fromCoroutine(self._write_dindex()))

    async def _write_dindex(self) -> None:
        """
        Write this instance's durable index (its own key, from memory: other
        gateways on the meta server write theirs, never this one), first
        making sure its name is in C{smb.durable.gateways}. That list is
        read-modify-written: a name dropped by another gateway's write at the
        same instant is put back at this instance's next write. One write at a
        time, so the last lands last.
        """
        vfs = self.factory.vfs
        assert vfs is not None
        async with self._dlock:
            blob = json.dumps(sorted(self._index)).encode() if self._index else None
            if blob is None:
                # Nothing to find: the name may go (a sweep takes it then).
                await vfs.set_state(_MY_INDEX_KEY.format(self.instance), None)
                return
            await self._name_in(_DGATEWAYS_KEY)
            await vfs.set_state(_MY_INDEX_KEY.format(self.instance), blob)
            # Looked at again after: a write of the list begun by another
            # gateway before this one's landed may have dropped it.
            await self._name_in(_DGATEWAYS_KEY)

    async def _name_in(self, key: str, also: frozenset[str] = frozenset()) -> None:
        """This instance's name (and C{also}) in the list of gateways under C{key}."""
        names = await self._read_names(key)
        if self.instance not in names or not also <= names:
            await self._write_names(key, names | {self.instance} | also)

    async def _read_names(self, key: str) -> set[str]:
        vfs = self.factory.vfs
        assert vfs is not None
        raw = await vfs.get_state(key)
        try:
            got = json.loads(raw) if raw else []
            return {str(g) for g in got}
        except (ValueError, TypeError):
            self._log.warn("smb: unreadable list of gateways; ignored", key=key)
            return set()

    async def _write_names(self, key: str, names: set[str]) -> None:
        vfs = self.factory.vfs
        assert vfs is not None
        await vfs.set_state(key, json.dumps(sorted(names)).encode() if names else None)

    # -- persistent opens ------------------------------------------------------------------

    def persist(self, op: Any) -> defer.Deferred[None]:
        """
        Write C{op}'s record now (it was granted, or its locks or lease
        changed): a reply sent after this fires, a gateway killed after that
        reply leaves the record for the next.

        @return: fires when the record (and the index, the first time) is
            written; never fails (a failed write is logged).
        """
        vfs = self.factory.vfs
        if vfs is None or op.closed or not op.persistent:
            return defer.succeed(None)
        pid = op.file_id[0]
        writes = [vfs.set_state(self._key(pid), json.dumps(self._record(op)).encode())]
        if pid not in self._persisted:
            self._persisted.add(pid)
            writes.append(defer.Deferred.fromCoroutine(self._write_pindex()))
        for w in writes:
            self._track(w)
        return defer.gatherResults(writes, consumeErrors=True).addBoth(lambda _: None)

    def _unpersist(self, pid: int) -> None:
        vfs = self.factory.vfs
        self._persisted.discard(pid)
        if vfs is None:
            return
        self._track(vfs.set_state(self._key(pid), None))
        self._track(defer.Deferred.fromCoroutine(self._write_pindex()))

    async def _write_pindex(self) -> None:
        """
        Write this instance's list of persistent records (its own key, from
        memory: nobody else writes it, so nothing read-modify-written can be
        lost), having first named this instance in the list of gateways.
        Writes are one at a time, so the last one lands last.
        """
        vfs = self.factory.vfs
        assert vfs is not None
        async with self._plock:
            await self._register()
            blob = json.dumps(sorted(self._persisted)).encode() if self._persisted else None
            await vfs.set_state(_MY_PINDEX_KEY.format(self.instance), blob)
            # Looked at again after the list is written: a write of the list
            # of gateways begun by another before this one's landed may have
            # dropped it (and the beat looks again each time).
            await self._name_in(_GATEWAYS_KEY)

    async def _register(self) -> None:
        """
        Name this instance in C{smb.persistent.gateways} (once; after each
        write of its list and at each beat it looks again). That list is
        read-modify-written (the state store has no conditional write), so
        two gateways writing it at one instant can drop each other's name:
        the one dropped puts itself back, and a taker keeps every name it has
        seen (L{_read_pindex}).
        """
        if self._registered:
            return
        if self._beating is not None and self._beats == 0:
            # The beat before the first record is listed: a taker finding a
            # listed instance with no beat takes it for one that stopped.
            vfs = self.factory.vfs
            assert vfs is not None
            self._beats = 1
            await vfs.set_state(_BEAT_KEY.format(self.instance), b"1")
        await self._name_in(_GATEWAYS_KEY)
        self._registered = True

    async def _read_gateways(self) -> set[str]:
        return await self._read_names(_GATEWAYS_KEY)

    async def _write_gateways(self, names: set[str]) -> None:
        await self._write_names(_GATEWAYS_KEY, names)

    async def _read_pindex(self) -> dict[int, str]:
        """
        Every persistent record in the store and the instance keeping it:
        each listed instance's own list, and what the previous format's one
        shared index still names (a gateway of the previous version, or
        records it left).
        """
        vfs = self.factory.vfs
        assert vfs is not None
        index: dict[int, str] = {}
        raw = await vfs.get_state(_PINDEX_KEY)
        try:
            got = json.loads(raw) if raw else {}
            index.update({int(p): str(g) for p, g in got.items()})
        except (ValueError, TypeError, AttributeError):
            self._log.warn("smb: unreadable persistent handle index; ignored")
        names = await self._read_gateways()
        if self._registered and self.instance not in names:
            # Dropped by another gateway's write of the list: back in.
            self._write_gateways_later(names | {self.instance})
        self._known |= names
        self._listless = set()
        for inst in sorted(self._known):
            raw = await vfs.get_state(_MY_PINDEX_KEY.format(inst))
            if raw is None:
                # No records (yet, or any more): nothing of it to lose.
                self._known.discard(inst)
                if inst in names and inst != self.instance:
                    self._listless.add(inst)
                continue
            try:
                pids = json.loads(raw) if raw else []
                index.update({int(p): inst for p in pids})
            except (ValueError, TypeError):
                self._log.warn("smb: unreadable persistent handle index; ignored", gateway=inst)
        return index

    def _write_gateways_later(self, names: set[str]) -> None:
        self._track(defer.Deferred.fromCoroutine(self._write_gateways(names)))

    def _disowned(self, owner: str, pid: int) -> None:
        """
        A dead instance's record is taken here (or dropped): when none of
        its records is left to take, its list and its name go.
        """
        left = self._dead_left.get(owner)
        if left is None:
            return
        left.discard(pid)
        if left:
            return
        del self._dead_left[owner]
        vfs = self.factory.vfs
        assert vfs is not None
        self._track(vfs.set_state(_MY_PINDEX_KEY.format(owner), None))
        self._track(defer.Deferred.fromCoroutine(self._forget_gateway(owner)))

    async def _forget_gateway(self, owner: str) -> None:
        names = await self._read_gateways()
        if owner in names:
            await self._write_gateways(names - {owner})

    def when_recovered(self) -> defer.Deferred[None]:
        """Fires once a start's L{recover} knows which records it is taking back."""
        if self._recovered is None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._recovered.append(d)
        return d

    def when_retaken(self, pid: int) -> defer.Deferred[None]:
        """Fires once the attempt at C{pid}'s record is over (taken back or not)."""
        if pid not in self.retaking:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self.retaking[pid].append(d)
        return d

    async def kept_elsewhere(self, pid: int) -> bool:
        """Whether C{pid} is a persistent open another gateway instance keeps (alive or not)."""
        if self.factory.vfs is None:
            return False
        owner = (await self._read_pindex()).get(pid)
        return owner is not None and owner != self.instance

    async def wait_takeover(self, pid: int) -> None:
        """
        A reconnect names a persistent open another gateway instance keeps:
        if this gateway beats, wait (at most until that instance would be
        found dead and its opens taken) for it to be taken over here.
        """
        if self._beating is None or pid in self.by_id or not await self.kept_elsewhere(pid):
            return
        clock = self.factory.reactor
        deadline = clock.seconds() + DEAD_AFTER + 2 * HEARTBEAT
        while pid not in self.by_id and clock.seconds() < deadline:
            if pid in self.retaking:
                await self.when_retaken(pid)
            else:
                await task.deferLater(clock, HEARTBEAT / 2, lambda: None)

    # -- taking over -------------------------------------------------------------------------
    #
    # Every gateway serving a CA share beats: it bumps a counter under
    # smb.gateway.<instance> every HEARTBEAT seconds, and reads the index and
    # the beats of the instances named there. An instance whose counter has
    # not moved for DEAD_AFTER seconds of this gateway's clock (no clocks are
    # compared across machines), or whose beat is gone (it stopped cleanly),
    # is dead: its persistent opens are taken back here. DEAD_AFTER is below
    # the meta server's default linger (10 s), so the retake is already
    # knocking when the dead gateway's reservations are let go.

    def start(self) -> None:
        """The SMB service starts (a CA share is served): beat, and take back the dead's opens."""
        if self.single:
            # backend: embedded: nobody else to beat for; what a previous run
            # left is taken back once, now.
            self._recovered = []
            d = defer.Deferred.fromCoroutine(self.recover())
            d.addErrback(self.recover_failed)
            d.addBoth(lambda _: self._release_recovered())
            return
        if self._beating is None:
            self._recovered = []
            loop = task.LoopingCall(self._tick)
            loop.clock = self.factory.reactor
            self._beating = loop
            loop.start(HEARTBEAT, now=True).addErrback(self.recover_failed)

    def stop(self) -> defer.Deferred[None]:
        """The service stops: no more beats, and the beat removed (others take over at once)."""
        loop, self._beating = self._beating, None
        if loop is None or not loop.running:
            return defer.succeed(None)
        loop.stop()
        vfs = self.factory.vfs
        if vfs is None:
            return defer.succeed(None)
        d = vfs.set_state(_BEAT_KEY.format(self.instance), None)
        self._track(d)
        return self.flush()

    def _tick(self) -> defer.Deferred[None] | None:
        if self._ticking:
            return None
        self._ticking = True
        d = defer.Deferred.fromCoroutine(self._beat_and_look())

        def done(result: Any) -> None:
            self._ticking = False
            if isinstance(result, Failure):
                self._log.failure("smb: persistent handle heartbeat failed", result)
                # Reconnects waiting for the first look go on (finding less).
                self._release_recovered()

        d.addBoth(done)
        return d

    async def _beat_and_look(self) -> None:
        vfs = await self.factory.get_vfs()
        self._beats += 1
        await vfs.set_state(_BEAT_KEY.format(self.instance), b"%d" % self._beats)
        await self.recover()

    async def recover(self) -> int:
        """
        Make again, disconnected, every persistent open in the store whose
        gateway is dead (its share reservation and locks held, until a
        reconnect or its timeout from now). Those whose reservations or
        locks are still held elsewhere (the killed gateway's, lingering at
        the meta server) are tried again each L{RETAKE_INTERVAL} seconds
        within their timeout. With C{backend: embedded} (one gateway, its
        own lock table) every other instance's open is taken at once.

        @return: (a coroutine) how many records it started taking back.
        """
        try:
            vfs = await self.factory.get_vfs()
            index = await self._read_pindex()
            dead = await self._dead(
                {g for g in index.values() if g != self.instance} | self._listless
            )
            for inst in sorted(dead & self._listless):
                # A dead instance with nothing left to take: its name goes.
                self._track(defer.Deferred.fromCoroutine(self._forget_gateway(inst)))
            found = 0
            for pid, owner in sorted(index.items()):
                if owner in dead:
                    self._dead_left.setdefault(owner, set()).add(pid)
            for pid, owner in sorted(index.items()):
                if owner not in dead or pid in self.retaking:
                    continue
                if pid in self.by_id:
                    self._disowned(owner, pid)
                    continue
                raw = await vfs.get_state(self._key(pid))
                try:
                    rec = json.loads(raw) if raw else None
                except ValueError:
                    rec = None
                if not isinstance(rec, dict) or not rec.get("persistent"):
                    self._drop_legacy(pid)
                    self._disowned(owner, pid)
                    continue
                found += 1
                self.retaking[pid] = []
                deadline = self.factory.reactor.seconds() + float(rec.get("timeout", 0))
                # Its beat as it was when found dead: one that moves on later
                # means the gateway only stalled.
                last = self._seen.get(owner, (None, 0.0))[0]
                d = defer.Deferred.fromCoroutine(self._retake(pid, rec, deadline, owner, last))
                d.addErrback(lambda f: self._log.failure("smb: taking back a handle failed", f))
        finally:
            self._release_recovered()
        if found:
            self._log.info("smb: taking back {n} persistent handles", n=found)
        return found

    async def _dead(self, instances: set[str]) -> set[str]:
        """Which of C{instances} are gone (see above)."""
        if self.single:
            return instances
        vfs = self.factory.vfs
        assert vfs is not None
        now = self.factory.reactor.seconds()
        dead = set()
        for inst in instances:
            beat = await vfs.get_state(_BEAT_KEY.format(inst))
            if beat is None:
                dead.add(inst)
                continue
            seen = self._seen.get(inst)
            if seen is None or seen[0] != beat:
                self._seen[inst] = (beat, now)
            elif now - seen[1] >= DEAD_AFTER:
                dead.add(inst)
        return dead

    def _drop_legacy(self, pid: int) -> None:
        """A record gone: out of the previous format's shared index, if it names it."""
        vfs = self.factory.vfs
        assert vfs is not None

        async def drop() -> None:
            raw = await vfs.get_state(_PINDEX_KEY)
            try:
                got = json.loads(raw) if raw else {}
            except ValueError:
                got = {}
            if not isinstance(got, dict) or f"{pid}" not in got:
                return
            del got[f"{pid}"]
            await vfs.set_state(_PINDEX_KEY, json.dumps(got).encode() if got else None)

        self._track(defer.Deferred.fromCoroutine(drop()))

    def _release_recovered(self) -> None:
        waiting, self._recovered = self._recovered or [], None
        for w in waiting:
            w.callback(None)

    def recover_failed(self, failure: Failure) -> None:
        """Taking back failed (the store could not be read): logged; the next beat tries again."""
        self._log.failure("smb: taking back persistent handles failed", failure)

    async def _revived(self, owner: str, last: bytes | None) -> bool:
        """Whether the instance C{owner}, found dead at beat C{last}, beats again (it stalled)."""
        if self.single or last is None:
            return False
        vfs = self.factory.vfs
        assert vfs is not None
        beat = await vfs.get_state(_BEAT_KEY.format(owner))
        return beat is not None and beat != last

    async def _taken_elsewhere(self, pid: int, owner: str) -> bool:
        """
        Whether a gateway other than C{owner} (found dead) and this one lists
        C{pid} in its own index: another taker got there first.
        """
        vfs = self.factory.vfs
        assert vfs is not None
        for inst in sorted(await self._read_gateways() - {owner, self.instance}):
            raw = await vfs.get_state(_MY_PINDEX_KEY.format(inst))
            try:
                if raw and pid in {int(p) for p in json.loads(raw)}:
                    return True
            except (ValueError, TypeError):
                continue
        return False

    async def _retake(
        self, pid: int, rec: dict[str, Any], deadline: float, owner: str, last: bytes | None
    ) -> None:
        clock = self.factory.reactor
        done = True
        try:
            while True:
                try:
                    op = await self.factory.files.restore_persistent(pid, rec)
                except errors.Busy:
                    if await self._revived(owner, last):
                        # Its gateway was slow, not dead: the open stays its.
                        self._log.info("smb: a persistent handle's gateway beats again: left")
                        done = False
                        self._dead_left.pop(owner, None)
                        return
                    if clock.seconds() + RETAKE_INTERVAL >= deadline:
                        if await self._taken_elsewhere(pid, owner):
                            # Busy because another gateway took it over: the
                            # record is that gateway's now, and stays.
                            self._log.info("smb: a persistent handle was taken by another gateway")
                            return
                        self._log.info("smb: a persistent handle's file stayed busy: dropped")
                        self._unpersist(pid)
                        return
                    await self._wait_free(int(rec["ino"]), RETAKE_INTERVAL)
                    continue
                except (KeyError, ValueError, TypeError):
                    self._log.warn("smb: unreadable persistent handle record: dropped", pid=pid)
                    self._unpersist(pid)
                    return
                if op is None:
                    self._unpersist(pid)
                    return
                op.expiry = clock.callLater(max(0.0, deadline - clock.seconds()), self._expired, op)
                # Ours now: the record and this instance's list say so (and
                # the dead one's list goes once all of it is taken).
                self._persisted.discard(pid)
                await self.persist(op)
                return
        finally:
            if done:
                self._drop_legacy(pid)
                self._disowned(owner, pid)
            for w in self.retaking.pop(pid, []):
                w.callback(None)

    async def _wait_free(self, ino: int, timeout: float) -> None:
        """
        Until a lock or reservation on C{ino} is let go (the lock table's
        notification: with C{backend: remote}, the meta server's change event,
        as when it releases a killed gateway's lingering ones), or C{timeout}
        seconds at most: the retake knocks again at once, not up to a second
        later, so the gap in which another client could get in is one event's
        way from the meta server.
        """
        clock = self.factory.reactor
        waits: list[defer.Deferred[None]] = [task.deferLater(clock, timeout, lambda: None)]
        locks = self.factory.files.locks
        if locks is not None:
            try:
                waits.append(locks.notify_when_free(ino))
            except errors.NoLock:
                pass  # too many waiting on it already: the timer alone
        try:
            await defer.DeferredList(waits, fireOnOneCallback=True, consumeErrors=True)
        finally:
            for w in waits:
                if not w.called:
                    w.cancel()

    def flush(self) -> defer.Deferred[Any]:
        """Fires once every state write issued so far is done (the service waits at stop)."""
        return defer.gatherResults(list(self._writes), consumeErrors=True).addErrback(
            lambda _: None
        )

    async def load_index(self) -> None:
        """
        At the first request after a start: the records a previous run left.
        Those nobody reclaims within their timeout are dropped then.
        """
        if self._index_loaded:
            return
        self._index_loaded = True
        vfs = self.factory.vfs
        if vfs is None:
            return
        # The previous format's one index, and every instance's own.
        keys = [_INDEX_KEY] + [
            _MY_INDEX_KEY.format(g)
            for g in sorted(await self._read_names(_DGATEWAYS_KEY))
            if g != self.instance
        ]
        pids: list[int] = []
        for key in keys:
            raw = await vfs.get_state(key)
            self._loaded_lists[key] = raw
            try:
                pids += [int(p) for p in json.loads(raw)] if raw else []
            except (ValueError, TypeError):
                self._log.warn("smb: unreadable durable handle index; ignored", key=key)
        longest = V1_TIMEOUT
        for pid in pids:
            if pid not in self.by_id:
                self._index.add(pid)
        if pids or len(keys) > 1:
            self.factory.reactor.callLater(longest, self._sweep, set(pids))

    def _sweep(self, pids: set[int]) -> None:
        """
        The records a previous run (or another gateway) left are past any
        timeout now: dropped. An index nobody changed since the start (its
        instance gone, or every entry expired) goes with its name.
        """
        vfs = self.factory.vfs
        assert vfs is not None
        dropped = {pid for pid in pids if pid in self._index and pid not in self.by_id}
        self._index -= dropped
        for pid in sorted(dropped):
            self._track(vfs.set_state(self._key(pid), None))
        if dropped:
            self._write_index()
        loaded, self._loaded_lists = self._loaded_lists, {}
        d = defer.Deferred.fromCoroutine(self._prune(loaded))
        self._track(d)

    async def _prune(self, loaded: dict[str, bytes | None]) -> None:
        vfs = self.factory.vfs
        assert vfs is not None
        gone = set()
        for key, raw in loaded.items():
            if await vfs.get_state(key) == raw:
                await vfs.set_state(key, None)
                gone.add(key.rsplit(".", 1)[1])
        async with self._dlock:
            names = await self._read_names(_DGATEWAYS_KEY)
            if names & gone:
                await self._write_names(_DGATEWAYS_KEY, names - gone)

    async def stored(self, pid: int) -> dict[str, Any] | None:
        """The record a previous run left for C{pid}, if it is still within its timeout."""
        vfs = self.factory.vfs
        if vfs is None or pid not in self._index:
            return None
        raw = await vfs.get_state(self._key(pid))
        if raw is None:
            return None
        try:
            rec: dict[str, Any] = json.loads(raw)
        except ValueError:
            raise ProtocolError("unreadable durable handle record") from None
        # Disconnected at the latest when this run started.
        if self.factory.reactor.seconds() > self.started + float(rec.get("timeout", 0)):
            self._drop_record(pid)
            return None
        return rec

    def forget_record(self, pid: int) -> None:
        if pid in self._index:
            self._drop_record(pid)
