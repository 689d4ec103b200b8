# -*- test-case-name: tests.nfs.test_nsm -*-
"""
NSM, the status monitor (program 100024 version 1), and what the gateway does
about restarts for NLM.

Locks live in the gateway's memory, so a restart loses them while clients
still believe they hold them. As Linux's statd and lockd do together, the
gateway:

 - records each client that takes an NLM lock or share (its C{caller_name},
   its address and the gateway address it used) in C{<data_dir>/nsm.json}
   (a C{--workers} worker: C{<data_dir>/nsm-worker-<index>.json}, see
   L{state_file}), with the gateway's NSM state number;
 - at start, makes the state number the next odd number, and if the last
   run had lock clients, starts the lock table's grace period
   (C{nfs.grace_secs}, shared with NFSv4: only reclaims are granted) and sends each of
   them SM_NOTIFY (to the NSM service its portmapper names), so they
   reclaim their locks;
 - when a client's own status monitor tells it of the client's restart
   (SM_NOTIFY to the gateway), releases that client's locks, as FREE_ALL
   does.

Served procedures: NULL, STAT, MON and UNMON/UNMON_ALL (the gateway does not
monitor hosts on behalf of other programs: MON answers STAT_FAIL), NOTIFY.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from claudefs_gateway.core.log import Logger
from claudefs_gateway.nfs.nlm import NLM
from claudefs_gateway.rpc.server import Call, Procedure, Program, no_args
from claudefs_gateway.rpc.xdr import Packer, Unpacker

__all__ = [
    "NSM_PROGRAM",
    "StatusMonitor",
    "FileStore",
    "MemoryStore",
    "adopt_records",
    "state_file",
]

NSM_PROGRAM = 100024
NSM_V1 = 1
SM_MAXSTRLEN = 1024
NULL, STAT, MON, UNMON, UNMON_ALL, SIMU_CRASH, NOTIFY = range(7)
STAT_SUCC, STAT_FAIL = 0, 1
MAX_CLIENTS = 10_000
STATE_FILE = "nsm.json"


def state_file(worker: int | None = None) -> str:
    """
    The NSM record's file name in the data directory.

    With C{--workers} every worker shares one data directory, and each keeps
    a record of its own (C{nsm-worker-<index>.json}): one file written by
    several processes would have their saves collide, and a restarted
    worker would SM_NOTIFY every worker's lock clients, voiding locks the
    live workers still hold. The worker index is stable across a worker's
    restarts (the supervisor starts worker I{i} again as I{i}), so the
    replacement finds its predecessor's clients.
    """
    return STATE_FILE if worker is None else f"nsm-worker-{int(worker)}.json"


class MemoryStore:
    """State kept in memory (tests)."""

    def __init__(self, doc: dict[str, Any] | None = None) -> None:
        self.doc = doc
        self.writes = 0

    def load(self) -> defer.Deferred[dict[str, Any] | None]:
        return defer.succeed(self.doc)

    def save(self, doc: dict[str, Any]) -> defer.Deferred[None]:
        self.doc = json.loads(json.dumps(doc))
        self.writes += 1
        return defer.succeed(None)


class FileStore:
    """
    State in a JSON file, written atomically (fsync, rename) off the reactor.

    The state number loaded is the highest of every NSM record in the file's
    directory (C{nsm.json} and the workers' C{nsm-worker-*.json}): clients
    see all the workers of one host as one server, and a client's lockd
    ignores an SM_NOTIFY whose state it has already seen from that host
    (Linux C{nlm_host_rebooted}), so each restart, of any worker, must move
    the host's number past every earlier one. Other records are only read
    (each is replaced by rename, so a read sees a whole file).
    """

    def __init__(
        self, path: Path, run: Callable[..., defer.Deferred[Any]], adopt: bool = False
    ) -> None:
        self.path = path
        self._run = run
        # One save at a time, to the end of its thread's work: a save whose
        # caller gave up (the NSM start cancelled by a service stopping) goes
        # on writing, and the next must not start beside it.
        self._lock = defer.DeferredLock()
        #: The single process of a data directory: take over the records its
        #: workers left (L{adopt_records}) when it loads.
        self.adopt = adopt

    def load(self) -> defer.Deferred[dict[str, Any] | None]:
        return self._run(self._load)

    def _load(self) -> dict[str, Any] | None:
        if self.adopt:
            adopt_records(self.path.parent, self.path.name, {self.path.name})
        doc = self._read(self.path)
        highest = max(
            (
                _state_of(self._read(p))
                for p in self.path.parent.glob("nsm*.json")
                if p != self.path
            ),
            default=0,
        )
        if highest > _state_of(doc):
            doc = dict(doc or {}, state=highest)
        return doc

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            data = path.read_text()
        except OSError:
            return None
        try:
            doc = json.loads(data)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def save(self, doc: dict[str, Any]) -> defer.Deferred[None]:
        """
        Write C{doc}; fires when it is on disk. Cancelling the result stops
        the wait, not the write: the lock is held until the write ends.
        """
        work = self._lock.run(self._run, self._save, json.dumps(doc, sort_keys=True))
        result: defer.Deferred[None] = defer.Deferred()

        def done(outcome: Any) -> None:
            if result.called:  # cancelled: the caller stopped waiting
                return
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(None)

        work.addBoth(done)
        return result

    def _save(self, text: str) -> None:
        _write(self.path, text)


def _write(path: Path, text: str) -> None:
    # A name of this thread's own: no other writer can rename it away.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def adopt_records(directory: Path, into: str, keep: set[str]) -> list[str]:
    """
    Merge the lock clients of every NSM record in C{directory} that no process
    will keep (not named in C{keep}) into the record C{into}, then remove
    them; the names of the records taken over. Blocking; called before any
    process of the data directory serves NLM (the supervisor before it starts
    its workers, a single gateway as it loads its record).

    Without it the clients of a record nobody keeps (C{start --workers 4}
    then C{--workers 2}, or a single gateway after C{--workers}, or back)
    would never get SM_NOTIFY. The merged record is written (fsync, rename)
    before the others are removed: a crash between leaves clients in two
    records, notified twice, never none.
    """
    target = directory / into
    orphans = sorted(
        p for p in directory.glob("nsm*.json") if p.name not in keep and p.name != into
    )
    if not orphans:
        return []
    doc = FileStore._read(target) or {}
    clients = doc.get("clients")
    merged: dict[str, Any] = dict(clients) if isinstance(clients, dict) else {}
    state = _state_of(doc)
    for p in orphans:
        other = FileStore._read(p) or {}
        state = max(state, _state_of(other))
        theirs = other.get("clients")
        if isinstance(theirs, dict):
            for name, info in theirs.items():
                if isinstance(info, dict) and len(merged) < MAX_CLIENTS:
                    merged.setdefault(name, info)
    _write(target, json.dumps({"state": state, "clients": merged}, sort_keys=True))
    for p in orphans:
        p.unlink(missing_ok=True)
    return [p.name for p in orphans]


def _state_of(doc: dict[str, Any] | None) -> int:
    state = (doc or {}).get("state", 0)
    return state if isinstance(state, int) and not isinstance(state, bool) else 0


def _name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class StatusMonitor:
    """
    The NSM program, the record of lock clients, and the restart notice.

    @param nlm: whose L{NLM.forget_client} a client's SM_NOTIFY calls.
    @param callbacks: makes SM_NOTIFY calls to clients (L{RPCCallbacks}).
    @param locks: returns the lock table (once the vfs is open).
    """

    _log = Logger()

    def __init__(
        self,
        store: Any,
        nlm: NLM,
        callbacks: Any,
        grace_secs: float,
        metrics: Any = None,
        grace: Any = None,
    ) -> None:
        self.store = store
        self.nlm = nlm
        self.callbacks = callbacks
        self.grace_secs = grace_secs
        # The grace period NLM shares with NFSv4 (a L{claudefs_gateway.nfs.grace.Grace}).
        self.grace = grace
        self.metrics = metrics
        self.state = 1
        self.clients: dict[str, dict[str, str | None]] = {}
        self.notified: list[str] = []
        self._saving: defer.Deferred[None] | None = None
        self._dirty = False
        self.started = False
        #: Several gateways: the meta server's client records (vfs/shared_clients.py).
        self.cluster: Any = None
        nlm.monitor = self.note
        nlm.forgotten = lambda name: self.forget(_name(name))

    # -- the record of clients ------------------------------------------------------

    def _doc(self) -> dict[str, Any]:
        return {"state": self.state, "clients": self.clients}

    def note(self, name: bytes, host: str, server: str | None) -> None:
        """A client holds (or asks for) locks: remember it for a restart notice."""
        key = _name(name)
        info = {"addr": host, "server": server}
        if self.clients.get(key) == info:
            return
        if key not in self.clients and len(self.clients) >= MAX_CLIENTS:
            self._log.warn("too many NLM clients to monitor; {name} not recorded", name=key)
            return
        self.clients[key] = info
        if self.cluster is not None:
            self.cluster.note("nlm", key.encode("utf-8", "surrogateescape"))
        self._save_soon()

    def describe_connection(self, conn: Any) -> dict[str, Any]:
        """
        For C{cfs-gateway status}: the NLM lock clients whose locks were last
        asked for from the host of an NFSv3 or NLM connection (NLM names a
        client by its caller_name, and its calls may come over a connection
        of their own, so the link is the client address this record keeps),
        with the locks, share reservations and blocked requests each holds.
        C{state_of} names the host, so the summary counts its locks once
        however many of its connections show them. One pass over the record
        (at most C{MAX_CLIENTS}), only when asked.
        """
        programs = getattr(conn, "programs", None) or {}
        if "nlm" not in programs and not any(
            name.rstrip("0123456789") == "nfs" and vers == 3 for name, vers in programs.items()
        ):
            return {}
        peer = getattr(conn, "peer", None)
        host = getattr(peer, "host", None)
        names = sorted(k for k, info in self.clients.items() if host and info.get("addr") == host)
        if not names:
            return {}
        vfs = self.nlm.ctx.vfs
        locks = getattr(vfs, "locks", None) if vfs is not None else None
        rows = []
        total = 0
        for name in names:
            held, shares, waiting = (
                locks.counts_of("nlm", name.encode("utf-8", "surrogateescape"))
                if locks is not None
                else (0, 0, 0)
            )
            total += held
            rows.append(
                {
                    "caller_name": "".join(
                        ch if ch.isprintable() else "?"
                        for ch in name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                    ),
                    "locks": held,
                    "shares": shares,
                    "waiting": waiting,
                }
            )
        return {"locks": total, "state_of": f"nlm:{host}", "nlm_clients": rows}

    def forget(self, name: str) -> None:
        if self.clients.pop(name, None) is not None:
            if self.cluster is not None:
                self.cluster.forget("nlm", name.encode("utf-8", "surrogateescape"))
            self._save_soon()

    def _save_soon(self) -> None:
        self._dirty = True
        if self._saving is None and self.started:
            d = defer.Deferred.fromCoroutine(self._save_loop())
            # A store that answers at once has finished already.
            self._saving = None if d.called else d

    async def _save_loop(self) -> None:
        try:
            while self._dirty:
                self._dirty = False
                try:
                    await self.store.save(self._doc())
                except Exception:
                    self._log.failure("saving the NLM client list")
                    return
        finally:
            self._saving = None

    def flushed(self) -> defer.Deferred[None]:
        """Fires when the client list on disk is up to date."""
        if self._saving is None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()

        def fire(result: object) -> object:
            d.callback(None)
            return result

        self._saving.addBoth(fire)
        return d

    # -- start: state number, grace, notices ------------------------------------------

    async def start(self, locks: Any) -> None:
        """
        Load the record, move to the next odd state, and if the last run had
        lock clients start the grace period and notify them.
        """
        # Several gateways: this gateway's NLM clients are recorded at the meta
        # server too, so that if it goes, every gateway holds grace for them.
        self.cluster = getattr(locks, "clients", None)
        if self.cluster is not None:
            for key in sorted(self.clients):
                self.cluster.note("nlm", key.encode("utf-8", "surrogateescape"))
        doc = await self.store.load() or {}
        old_state = doc.get("state", 0)
        if not isinstance(old_state, int):
            old_state = 0
        self.state = old_state + 1 if old_state % 2 == 0 else old_state + 2
        previous = doc.get("clients", {})
        if not isinstance(previous, dict):
            previous = {}
        # Clients noted while the record loaded are this run's (the listeners
        # serve NLM before the record is read): keep them, so they are saved
        # for the next restart's SM_NOTIFY and shown by cfs-gateway status.
        self.started = True
        # The first save holds the save slot: a note made meanwhile only marks
        # the record dirty, and is saved after it (two saves at once would
        # race on the file's temporary copy).
        gate: defer.Deferred[None] = defer.Deferred()
        self._saving = gate
        self._dirty = False
        try:
            await self.store.save(self._doc())
        finally:
            self._saving = None
            gate.callback(None)
            if self._dirty:
                self._save_soon()
        self._log.info("NSM state {state}", state=self.state)
        if not previous:
            return
        if self.grace is not None:
            self.grace.begin(locks, "nlm")
        elif self.grace_secs > 0 and locks is not None:
            locks.start_grace(self.grace_secs)
        self._log.info(
            "notifying {n} NLM clients of the restart; reclaims only for {grace}s",
            n=len(previous),
            grace=self.grace_secs,
        )
        await defer.DeferredList(
            [
                defer.Deferred.fromCoroutine(self._notify(name, info))
                for name, info in previous.items()
                if isinstance(info, dict)
            ]
        )

    async def _notify(self, name: str, info: dict[str, Any]) -> None:
        host = info.get("addr")
        if not isinstance(host, str):
            return
        # The client's statd matches the notice against the servers it
        # monitors: name ourselves by the address the client used.
        server = info.get("server") or host
        p = Packer()
        p.string(str(server).encode())
        p.i32(self.state)
        try:
            await self.callbacks.call(host, NSM_PROGRAM, NSM_V1, NOTIFY, p.bytes())
        except Exception as e:
            self._log.warn(
                "SM_NOTIFY to {name} ({host}) failed: {why}", name=name, host=host, why=str(e)
            )
            return
        self.notified.append(name)
        self._log.info("SM_NOTIFY sent to {name} ({host})", name=name, host=host)

    # -- the program ----------------------------------------------------------------------

    def program(self) -> Program:
        prog = Program(NSM_PROGRAM, "nsm", self.metrics)

        def dec_name(u: Unpacker) -> bytes:
            return u.string(SM_MAXSTRLEN)

        def dec_mon(u: Unpacker) -> bytes:
            name = u.string(SM_MAXSTRLEN)
            u.string(SM_MAXSTRLEN)  # my_id.my_name
            u.u32()
            u.u32()
            u.u32()
            u.fixed(16)  # priv
            return name

        def dec_mon_id(u: Unpacker) -> bytes:
            name = u.string(SM_MAXSTRLEN)
            u.string(SM_MAXSTRLEN)
            u.u32()
            u.u32()
            u.u32()
            return name

        def dec_my_id(u: Unpacker) -> None:
            u.string(SM_MAXSTRLEN)
            u.u32()
            u.u32()
            u.u32()

        def dec_stat_chge(u: Unpacker) -> tuple[bytes, int]:
            return u.string(SM_MAXSTRLEN), u.i32()

        def stat_res(ok: bool) -> list[bytes]:
            return [
                (STAT_SUCC if ok else STAT_FAIL).to_bytes(4, "big"),
                self.state.to_bytes(4, "big", signed=True),
            ]

        def state(call: Call, args: Any) -> list[bytes]:
            return [self.state.to_bytes(4, "big", signed=True)]

        def mon(call: Call, args: Any) -> list[bytes]:
            call.status = "STAT_FAIL"
            return stat_res(False)

        prog.add(NSM_V1, NULL, Procedure("NULL", no_args, lambda call, args: []))
        prog.add(NSM_V1, STAT, Procedure("STAT", dec_name, lambda call, args: stat_res(True)))
        prog.add(NSM_V1, MON, Procedure("MON", dec_mon, mon))
        prog.add(NSM_V1, UNMON, Procedure("UNMON", dec_mon_id, state))
        prog.add(NSM_V1, UNMON_ALL, Procedure("UNMON_ALL", dec_my_id, state))
        prog.add(NSM_V1, NOTIFY, Procedure("NOTIFY", dec_stat_chge, self._client_rebooted))
        return prog

    def _client_rebooted(self, call: Call, args: tuple[bytes, int]) -> list[bytes]:
        """SM_NOTIFY from a client's statd: the client restarted; its locks are void."""
        mon_name, _state = args
        names = {_name(mon_name)}
        names.update(n for n, info in self.clients.items() if info.get("addr") == call.peer.host)
        for n in names:
            self.nlm.forget_client(n.encode("utf-8", "surrogateescape"))
        return []
