# -*- test-case-name: tests.backend.remote.test_contract -*-
"""
L{RemoteBackend}: the backend contract over the ClaudeFS RPC (``backend: remote``).

Metadata goes to the meta servers of C{metadata_servers} (through a
L{Failover} over one pool and breaker per server: C{connection_pool},
C{circuit_breaker}); file bytes go to the data servers the namespace's
layout names (learnt from the meta server at open), each with its own pool
and breaker. A server that cannot be reached gives L{BackendUnavailable}
(circuit open, no connection) or L{Timeout} (no answer in C{timeout_ms}),
which the front ends answer with their try-later status; never a hang.

How each data operation is split between the servers is in docs/rpc.rst
("How a gateway uses them"). Errors keep the contract's precedence: when a
data server refuses a range, the meta server's word on the inode's type
(NotFound, IsDir, Inval) comes first, as in the embedded store.

A dedicated connection subscribes to the meta server's change events
(reconnecting with back-off); L{on_change} listeners hear every change
made by I{other} gateways (the vfs drops those cache entries), and
L{on_reset} listeners hear when events may have been missed (the vfs drops
its whole cache).
"""

from __future__ import annotations

import collections
import functools
import os
import random
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from zope.interface import implementer

from claudefs_gateway import errors
from claudefs_gateway.backend.remote import wire
from claudefs_gateway.backend.remote.board import WriteBoard, board_dir
from claudefs_gateway.backend.remote.marks import MarkReader
from claudefs_gateway.backend.remote.protocol import ClientConnection
from claudefs_gateway.core.breaker import CLOSED, Breaker
from claudefs_gateway.core.health import CheckResult
from claudefs_gateway.core.log import Logger
from claudefs_gateway.core.pool import Pool
from claudefs_gateway.core.retry import Backoff, Failover, Node
from claudefs_gateway.core.transport import Choices, client_endpoint
from claudefs_gateway.fstypes import (
    Attributes,
    DirPage,
    FileType,
    FSStat,
    QuotaLimits,
    RenameResult,
    SetAttrs,
    Usage,
    WriteResult,
)
from claudefs_gateway.interfaces import IBackend, IPnfsBackend, ISharedStore

__all__ = ["RemoteBackend", "NodeSpec"]

_BACKOFF = Backoff()
#: Type errors the meta server decides, which win over a data server's range errors.
_TYPE_ERRORS = (errors.NotFound, errors.IsDir, errors.Inval, errors.Stale)
#: A data server that did not answer (as opposed to one that answered an error).
_UNREACHABLE = (errors.BackendUnavailable, errors.Timeout, ConnectionError)
#: How often copies missing writes are looked at for re-silvering (seconds).
RESILVER_INTERVAL = 5.0

#: Calls that change nothing a read's size depends on; any other call through
#: this gateway drops the sizes reads keep (L{RemoteBackend._read_attrs}).
_PURE = frozenset(
    {
        "HELLO",
        "HEARTBEAT",
        "SUBSCRIBE",
        "SYNC",
        "ROOT",
        "GETATTR",
        "LOOKUP",
        "READDIR",
        "READLINK",
        "STATFS",
        "GETXATTR",
        "LISTXATTR",
        "USAGE",
        "ALL_USAGE",
        "GET_QUOTA",
        "LIST_QUOTAS",
        "GET_STATE",
        "LAYOUT_GET",
    }
)
#: Files whose attributes reads keep at most (then all are dropped).
READ_ATTRS_MAX = 4096
#: How long the last write-behind WROTE waits to be sent, for the file's
#: COMMIT to carry it (one round trip, not two: L{RemoteBackend._commit}).
#: A small file's COMMIT follows its WRITE's reply by a client round trip;
#: meanwhile other gateways' reads of the file wait for it (board.py).
WROTE_HOLD_SECS = 0.002

#: Files with unstable writes kept track of (L{RemoteBackend._note_unstable}).
_UNSTABLE_MAX = 65536


class NodeSpec:
    """How to reach one server: address, transport, RDMA device."""

    def __init__(self, address: str, transport: str = "tcp", device: str | None = None) -> None:
        self.address = address
        self.transport = transport
        self.device = device

    @classmethod
    def from_config(cls, m: Any) -> NodeSpec:
        return cls(m.address, m.transport, m.device)


class _OneShot(Factory):
    """Hands one prepared connection to an endpoint (quietly: one per pooled connection)."""

    noisy = False

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn

    def buildProtocol(self, addr: Any) -> ClientConnection:
        return self.conn


def _node_connector(
    reactor: Any,
    spec: NodeSpec,
    session: int,
    tls: Any,
    choices: Choices,
    connect_timeout: float,
    endpoint_factory: Callable[[NodeSpec], Any] | None,
    on_event: Callable[[str, Any], None] | None = None,
    on_hello: Callable[[str, wire.Hello], None] | None = None,
) -> Callable[[], defer.Deferred[ClientConnection]]:
    def connect() -> defer.Deferred[ClientConnection]:
        if endpoint_factory is not None:
            ep = endpoint_factory(spec)
        else:
            ep = client_endpoint(
                reactor,
                spec.address,
                spec.transport,
                tls=tls,
                device=spec.device,
                choices=choices,
                connect_timeout=connect_timeout,
            )
        conn = ClientConnection(session, on_event)
        d = ep.connect(_OneShot(conn))

        def greeted(hello: wire.Hello, c: ClientConnection) -> ClientConnection:
            if on_hello is not None:
                on_hello(spec.address, hello)
            return c

        d.addCallback(lambda c: c.ready.addCallback(greeted, c))
        return d

    return connect


@implementer(IBackend, ISharedStore, IPnfsBackend)
class RemoteBackend:
    """
    @param meta: the meta servers, in order of preference.
    @param pool_settings: the C{connection_pool} section.
    @param breaker_settings: the C{circuit_breaker} section.
    @param tls: a L{MutualTLS} for nodes with transport C{tls}.
    @param endpoint_factory: tests: builds the client endpoint for a node.
    @param clock: for pools, breakers and retries (default: C{reactor}).
    @param short_circuit: the chunk store (a L{ChunkStore}) of the namespace's
        only data server when its chunk files are on this host
        (C{backend.short_circuit}, which C{--workers} sets): reads and
        writes then use the chunk files directly instead of a call to the
        data server (docs/workers.rst, "The local data path").
    @param event_marks: the directory where the meta server, on this host,
        counts the events it pushed to each gateway (C{backend.event_marks},
        which C{--workers} sets; marks.py): a read whose file's attributes
        this gateway fetched, with no change heard since and none unheard,
        takes the size from them instead of a C{GETATTR} (docs/workers.rst,
        "Reads without a round trip").
    """

    _log = Logger()

    def __init__(
        self,
        meta: Sequence[NodeSpec],
        reactor: Any,
        pool_settings: Any,
        breaker_settings: Any,
        *,
        metrics: Any = None,
        tls: Any = None,
        choices: Choices | None = None,
        endpoint_factory: Callable[[NodeSpec], Any] | None = None,
        clock: Any = None,
        backoff: Backoff = _BACKOFF,
        session: int | None = None,
        short_circuit: Any = None,
        event_marks: str | None = None,
    ) -> None:
        if not meta:
            raise errors.ConfigError([errors.Problem("metadata_servers", None, "no meta server")])
        self.meta_specs = list(meta)
        self.instance_id = bytes(8)
        self.session = session if session is not None else struct.unpack("<Q", os.urandom(8))[0]
        self.choices = choices if choices is not None else Choices()
        self.layout: wire.Layout | None = None
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._pool_settings = pool_settings
        self._breaker_settings = breaker_settings
        self._metrics = metrics
        self._tls = tls
        self._endpoint_factory = endpoint_factory
        self._backoff = backoff
        self._meta_nodes = [self._node(s, "meta") for s in self.meta_specs]
        self._meta = Failover(self._meta_nodes, self._clock, backoff)
        self._data: dict[str, Failover] = {}
        self._data_nodes: list[Node] = []
        self._change_listeners: list[Callable[[wire.ChangeEvent], None]] = []
        self._shared_listeners: list[Callable[[str, Any], None]] = []
        self._subscribed_listeners: list[Callable[[bool], None]] = []
        self._reset_listeners: list[Callable[[], object]] = []
        self._events: ClientConnection | None = None
        self._subscribed_before = False
        self._events_loop: defer.Deferred[None] | None = None
        self._state = "new"
        self._background: set[defer.Deferred[Any]] = set()
        #: Mirrors: per data server, the inodes whose copy there missed writes
        #: (kept in the meta store, cfs.stale.<server>) until re-silvered.
        self.stale: dict[str, set[int]] = {}
        # Per inode, a counter of data changes sent through this gateway (a
        # re-silver that saw it move copies again).
        self._wgen: dict[int, int] = {}
        #: An async context manager factory C{guard(ino)} the vfs installs: holds
        #: writers of other clients off an inode while it is re-silvered.
        self.resilver_guard: Any = None
        self.resilvered = 0
        self._resilver: Any = None
        self._resilvering = False
        #: Each server's boot id, as its latest HELLO gave it.
        self._boots: dict[str, bytes] = {}
        #: How many server restarts this gateway has seen (a boot id that
        #: changed): the NFS write verifier folds it in, so clients resend
        #: unstable writes a restarted server may have lost.
        self.restarts = 0
        self._local = short_circuit
        #: Directories as the latest namespace change's answer gave them
        #: (wire.DIRS), newest change kept, bounded; see dir_after.
        self._dirs_after: collections.OrderedDict[int, Attributes] = collections.OrderedDict()
        #: True once open() found the layout the short-circuit path serves.
        self.short_circuited = False
        self._marks_dir = event_marks
        #: The meta server's count of events pushed to the subscribed
        #: connection, and that connection (None while unsubscribed or kept nowhere).
        self._mark: tuple[MarkReader, ClientConnection] | None = None
        #: Attributes reads take sizes from, by inode: each a GETATTR's answer
        #: with no change heard while it was in flight, dropped by any change
        #: heard or made here since (see _read).
        self._read_attrs: dict[int, Attributes] = {}
        #: Bumped by every change heard or made here: a GETATTR that saw it
        #: move while in flight is not kept.
        self._heard = 0
        #: Reads answered with a kept size, and with a GETATTR (tests, benchmarks).
        self.read_sizes_kept = 0
        self.read_sizes_asked = 0
        #: SETATTRs of a file's own size alone answered from the kept attributes.
        self.setattrs_skipped = 0
        #: Write-behind (docs/workers.rst): per file written here, its
        #: attributes as this gateway's latest unstable write left them
        #: (answered, or predicted for a WROTE not yet answered); dropped by
        #: any other change made or heard.
        self._wb_attrs: dict[int, Attributes] = {}
        #: WROTEs sent and not awaited, not yet answered (and how many per file).
        self._wb_pending: set[defer.Deferred[Any]] = set()
        self._wb_count: dict[int, int] = {}
        #: Bumped by any change heard or made here other than a WROTE: a
        #: WROTE answer that saw it move is not taken as the file's latest.
        self._wb_gen = 0
        #: This gateway's counts of them, and the other gateways' (board.py).
        self._board: WriteBoard | None = None
        #: Unstable writes answered before their WROTE was (tests, benchmarks).
        self.writes_behind = 0
        #: Waits for another gateway's unanswered WROTEs (tests).
        self.board_waits = 0
        #: The latest write-behind WROTE, not sent yet (L{WROTE_HOLD_SECS}):
        #: (inode, its arguments, the Deferred in _wb_pending, the timer).
        self._held: tuple[int, tuple[Any, ...], defer.Deferred[Any], Any] | None = None
        #: Write-behind WROTEs a COMMIT carried (made stable; tests, benchmarks).
        self.wrotes_folded = 0
        #: Files with NFS unstable writes answered since their last COMMIT
        #: began, oldest first (bounded): a server restart moves them to
        #: _unstable_lost, as does a write-behind WROTE that failed; the
        #: file's next COMMIT then fails with UnstableLost (try later, and
        #: the verifier has changed) rather than answer that they are safe.
        self._unstable: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._unstable_lost: collections.OrderedDict[int, None] = collections.OrderedDict()

    def _spawn(self, coro: Any) -> None:
        """Run C{coro} in the background; close() cancels it."""
        d = defer.Deferred.fromCoroutine(coro)
        self._background.add(d)

        def done(_: Any) -> None:
            self._background.discard(d)

        d.addBoth(done)

    def _node(self, spec: NodeSpec, role: str) -> Node:
        connect = _node_connector(
            self._reactor,
            spec,
            self.session,
            self._tls,
            self.choices,
            self._pool_settings.connect_timeout_ms / 1000.0,
            self._endpoint_factory,
            on_hello=self._greeted,
        )
        pool = Pool(spec.address, connect, self._pool_settings, self._clock)
        breaker = Breaker(spec.address, self._breaker_settings, self._clock, self._metrics)
        return Node(spec.address, pool, breaker)

    def _greeted(self, address: str, hello: wire.Hello) -> None:
        """A connection to C{address} said HELLO: note a restart (a new boot id)."""
        boot = bytes(hello.boot)
        before = self._boots.get(address)
        self._boots[address] = boot
        if before is not None and before != boot:
            self.restarts += 1
            for ino in self._unstable:
                self._lose(ino)
            self._unstable.clear()
            self._log.warn(
                "{role} server {node} restarted: unstable writes sent before may be lost; "
                "write verifier changed",
                role=hello.role,
                node=address,
                restarts=self.restarts,
            )

    def _lose(self, ino: int) -> None:
        """C{ino}'s unstable writes may be lost: its next COMMIT says so (L{_commit})."""
        lost = self._unstable_lost
        lost[ino] = None
        if len(lost) > _UNSTABLE_MAX:
            # Forgotten, not reported: the write verifier has changed for a
            # client that checks it.
            lost.popitem(last=False)

    def _note_unstable(self, ino: int) -> None:
        notes = self._unstable
        notes.pop(ino, None)
        notes[ino] = None
        if len(notes) > _UNSTABLE_MAX:
            notes.popitem(last=False)

    # -- lifecycle ---------------------------------------------------------------------

    def open(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._open())

    async def _open(self) -> None:
        if self._state != "new":
            raise errors.IO("backend already opened")
        self._state = "opening"
        for node in self._meta_nodes:
            node.pool.start()
        hello: wire.Hello = await self._meta.call(lambda c: defer.succeed(c.server), True)
        self.instance_id = hello.instance_id
        root: Attributes = await self._call("ROOT")
        self.layout = await self._call("LAYOUT_GET", (root.ino,))
        for address in self.layout.servers:
            spec = self._data_spec(address)
            node = self._node(spec, "data")
            node.pool.start()
            self._data_nodes.append(node)
            self._data[address] = Failover([node], self._clock, self._backoff)
        for address in self.layout.servers:
            raw = await self._call("GET_STATE", (_stale_key(address),))
            if raw:
                self.stale[address] = {int(x) for x in raw.decode().split() if x.isdigit()}
        self._state = "open"
        if self._local is not None:
            # One data server holding the only copy: its chunk files are the
            # file bytes. Mirrors or stripes over several servers need the
            # data servers (stale copies, re-silvering), so no short circuit.
            self.short_circuited = len(self.layout.servers) == 1 and self.layout.mirrors <= 1
            if self.short_circuited:
                self._log.info(
                    "remote backend: reading and writing {node}'s chunk files directly in {path}",
                    node=self.layout.servers[0],
                    path=str(self._local.root),
                )
            else:
                self._log.warn(
                    "remote backend: backend.short_circuit ignored: the layout has {n} data "
                    "servers and {m} copies (the local path needs one of each)",
                    n=len(self.layout.servers),
                    m=self.layout.mirrors,
                )
        if self.layout.mirrors > 1:
            from twisted.internet import task

            loop = task.LoopingCall(self._resilver_pass)
            loop.clock = self._clock
            self._resilver = loop
            loop.start(RESILVER_INTERVAL, now=False).addErrback(
                lambda f: self._log.failure("re-silver loop", f)
            )
        if self.short_circuited and self._marks_dir is not None:
            try:
                self._board = WriteBoard(board_dir(self._marks_dir), self.session)
            except OSError as e:
                self._log.warn(
                    "no write board in {dir}: {why}; unstable writes wait for WROTE",
                    dir=str(board_dir(self._marks_dir)),
                    why=str(e),
                )
        self._events_loop = defer.Deferred.fromCoroutine(self._follow_events())
        self._events_loop.addErrback(self._log_events_failure)
        self._log.info(
            "remote backend open: meta {meta}; data {data}",
            meta=",".join(s.address for s in self.meta_specs),
            data=",".join(self.layout.servers) or "(none)",
        )

    def _data_spec(self, address: str) -> NodeSpec:
        # Data servers use the transport of the first meta server (one network).
        first = self.meta_specs[0]
        return NodeSpec(address, first.transport, first.device)

    def _log_events_failure(self, f: Failure) -> None:
        if not f.check(defer.CancelledError):
            self._log.failure("change-event subscription stopped", f)

    def close(self) -> defer.Deferred[None]:
        self._send_held()
        self._state = "closed"
        if self._resilver is not None and self._resilver.running:
            self._resilver.stop()
        for d in list(self._background):
            d.cancel()
        # Cancelling the loop forgets the connection; close it all the same.
        events, self._events = self._events, None
        if self._events_loop is not None:
            self._events_loop.cancel()
            self._events_loop = None
        if events is not None:
            events.close()
        if self._board is not None:
            self._board.close()
            self._board = None
        self._meta.stop()
        for failover in self._data.values():
            failover.stop()
        for node in self._meta_nodes + self._data_nodes:
            node.pool.stop()
            node.breaker.stop()
        return defer.succeed(None)

    # -- change events -----------------------------------------------------------------

    def on_change(self, listener: Callable[[wire.ChangeEvent], None]) -> None:
        """Call C{listener(event)} for each change another gateway made."""
        self._change_listeners.append(listener)

    def on_reset(self, listener: Callable[[], object]) -> None:
        """Call C{listener()} when change events may have been missed."""
        self._reset_listeners.append(listener)

    def on_shared_event(self, listener: Callable[[str, Any], None]) -> None:
        """Call C{listener(name, value)} for each shared-state event (EV_LOCKS, EV_LEASES...)."""
        self._shared_listeners.append(listener)

    def on_subscribed(self, listener: Callable[[bool], None]) -> None:
        """Call C{listener(first)} each time the event subscription is (re)made."""
        self._subscribed_listeners.append(listener)

    def shared_call(self, name: str, args: Any = None) -> defer.Deferred[Any]:
        """One shared-state call (locks, shares, leases) to a meta server."""
        return self._call(name, args)

    def _event(self, name: str, value: Any) -> None:
        if name == "EV_CHANGE_LOCKS":
            # One frame for both events of one call (a removal's, an SMB create's).
            change, locks = value
            self._event("EV_LOCKS", locks)
            self._event("EV_CHANGE", change)
            return
        if name != "EV_CHANGE":
            for shared in list(self._shared_listeners):
                try:
                    shared(name, value)
                except Exception:
                    self._log.failure("{event} listener failed", event=name)
            return
        if value.session == self.session:
            return
        # Another gateway changed it: what an earlier answer said is history.
        self._heard += 1
        self._wb_gen += 1
        self._read_attrs.pop(value.ino, None)
        self._wb_attrs.pop(value.ino, None)
        self._dirs_after.pop(value.ino, None)
        if value.dir:
            self._dirs_after.pop(value.dir, None)
        for listener in list(self._change_listeners):
            listener(value)

    def _reset(self) -> None:
        self._dirs_after.clear()
        self._wb_gen += 1
        self._wb_attrs.clear()
        self._forget_read_attrs()
        for listener in list(self._reset_listeners):
            try:
                listener()
            except Exception:
                self._log.failure("cache reset listener failed")

    async def _follow_events(self) -> None:
        """Keep one subscribed connection to a meta server, reconnecting with back-off."""
        attempt = 0
        rng = random.random
        while self._state == "open":
            spec = self.meta_specs[attempt % len(self.meta_specs)]
            connect = _node_connector(
                self._reactor,
                spec,
                self.session,
                self._tls,
                self.choices,
                self._pool_settings.connect_timeout_ms / 1000.0,
                self._endpoint_factory,
                on_event=self._event,
                on_hello=self._greeted,
            )
            try:
                conn = await connect()
                await conn.call("SUBSCRIBE", True)
            except defer.CancelledError:
                return
            except (errors.GatewayError, OSError, ConnectionError, defer.TimeoutError) as e:
                if self._state != "open":
                    return
                attempt += 1
                delay = min(5.0, 0.1 * 2 ** min(attempt, 6)) * (0.5 + rng() / 2)
                self._log.debug(
                    "event subscription to {node} failed: {why}", node=spec.address, why=str(e)
                )
                await _sleep(self._clock, delay)
                continue
            except Exception as e:  # a connect error of a kind we did not foresee
                if self._state != "open":
                    return
                attempt += 1
                self._log.warn(
                    "event subscription to {node} failed: {why}", node=spec.address, why=repr(e)
                )
                await _sleep(self._clock, 1.0)
                continue
            self._events = conn
            self._open_mark(conn)
            first = not self._subscribed_before
            self._subscribed_before = True
            for subscribed in list(self._subscribed_listeners):
                try:
                    subscribed(first)
                except Exception:
                    self._log.failure("subscription listener failed")
            if attempt:
                # Reconnected: whatever changed meanwhile went unheard.
                self._reset()
            attempt = 0
            lost: defer.Deferred[None] = defer.Deferred()
            conn.notify_lost(functools.partial(_fire, lost))
            try:
                await lost
            finally:
                self._events = None
                self._drop_mark()
            if self._state == "open":
                self._reset()
                attempt = 1

    def _open_mark(self, conn: ClientConnection) -> None:
        """After SUBSCRIBE: map the meta server's count of the events it pushed us."""
        self._drop_mark()
        if self._marks_dir is None:
            return
        try:
            self._mark = (MarkReader(self._marks_dir, self.session), conn)
        except OSError as e:
            self._log.warn(
                "no event mark in {dir}: {why}; reads ask the meta server for sizes",
                dir=self._marks_dir,
                why=str(e),
            )

    def _drop_mark(self) -> None:
        if self._mark is not None:
            self._mark[0].close()
            self._mark = None
        self._forget_read_attrs()

    def _forget_read_attrs(self) -> None:
        self._heard += 1
        self._read_attrs.clear()

    def heard_everything(self) -> bool:
        """
        Whether every event the meta server pushed this gateway so far has
        been received and handled (marks.py): then no change acknowledged to
        any client before now is unknown here, and the vfs's caches, which
        the change events clear, answer a lookup that must be fresh. False
        without event marks (another host, or a meta server over PostgreSQL),
        and while another gateway on this host has write-behind WROTEs
        unanswered (its clients were told of writes whose events are not out
        yet: L{attrs_current}).
        """
        if self._mark is None or not self.attrs_current():
            return False
        mark, conn = self._mark
        return mark.value() <= conn.events_received

    def _kept_attrs(self, ino: int) -> Attributes | None:
        """
        The attributes kept for C{ino}, if they are current: no change to it
        heard or made here since they were fetched, and every event the meta
        server pushed us so far handled (marks.py: any change acknowledged
        to any client before now was published before that acknowledgement).
        """
        if self._mark is None:
            return None
        a = self._read_attrs.get(ino)
        if a is None:
            return None
        mark, conn = self._mark
        if mark.value() > conn.events_received:
            return None
        return a

    # -- plumbing ------------------------------------------------------------------------

    def _call(self, name: str, args: Any = None) -> defer.Deferred[Any]:
        self._send_held()
        if self._wb_pending:
            # This gateway's later calls come after its write-behind WROTEs
            # (which may be on other pooled connections): a COMMIT_META, a
            # GETATTR, a truncate, a stable write's WROTE sees every write
            # answered before it. (_write_behind sends its own with _call_now.)
            d = self._written()
            d.addCallback(lambda _: self._call_now(name, args))
            return d
        return self._call_now(name, args)

    def _written(self) -> defer.Deferred[Any]:
        """Fires (with None, whatever they gave) once every write-behind WROTE sent so far is answered."""
        return defer.DeferredList(
            [_copy(d) for d in self._wb_pending], consumeErrors=True
        ).addCallback(lambda _: None)

    def _call_now(self, name: str, args: Any = None) -> defer.Deferred[Any]:
        if self._state not in ("open", "opening"):
            return defer.fail(errors.IO("backend is not open"))
        op = wire.BY_NAME[name]
        d: defer.Deferred[Any] = self._meta.call(lambda c: c.call(name, args), op.idempotent)
        if name not in _PURE:
            # A change through this gateway: sizes kept for reads are dropped
            # when it is sent and again when it is answered (a GETATTR answered
            # in between may hold either side of it).
            self._forget_read_attrs()
            if name != "WROTE":
                self._wb_gen += 1
                self._wb_attrs.clear()
            d.addBoth(_tap(lambda _: self._forget_read_attrs()))
        return d

    def _dcall(self, address: str, name: str, args: Any = None) -> defer.Deferred[Any]:
        if self._state != "open":
            return defer.fail(errors.IO("backend is not open"))
        op = wire.BY_NAME[name]
        return self._data[address].call(lambda c: c.call(name, args), op.idempotent)  # type: ignore[no-any-return]

    def _pieces(self, offset: int, length: int) -> list[tuple[tuple[str, ...], int, int]]:
        """(copies, offset, length) for each stripe of the range (copies: the servers holding it)."""
        layout = self.layout
        if layout is None or not layout.servers:
            raise errors.IO("the namespace has no data server")
        if len(layout.servers) == 1 or length <= 0 or offset < 0:
            return [(layout.copies_for(max(0, offset)), offset, length)]
        out = []
        pos, end = offset, offset + length
        unit = layout.stripe_unit
        while pos < end:
            n = min(unit - pos % unit, end - pos)
            out.append((layout.copies_for(pos), pos, n))
            pos += n
        return out

    @property
    def mirrored(self) -> bool:
        return self.layout is not None and self.layout.mirrors > 1 and len(self.layout.servers) > 1

    async def _all_copies(self, ino: int, copies: Sequence[str], name: str, args: Any) -> None:
        """
        Send C{name} to every copy. With mirrors a copy that cannot be reached
        is marked stale for C{ino} (durably, before this answers) as long as
        one copy took the call; an error answered by a server, or no copy
        reached, fails the call.
        """
        if any(ino in s for s in self.stale.values()):
            # Only inodes being (or to be) re-silvered need telling apart.
            self._wgen[ino] = self._wgen.get(ino, 0) + 1
        if len(copies) == 1:
            await self._dcall(copies[0], name, args)
            return
        results = await defer.DeferredList(
            [self._dcall(a, name, args) for a in copies], consumeErrors=True
        )
        missed = []
        first: Failure | None = None
        for address, (ok, value) in zip(copies, results, strict=True):
            if ok:
                continue
            if value.check(*_UNREACHABLE):
                missed.append(address)
                first = first or value
            else:
                value.raiseException()
        if len(missed) == len(copies):
            assert first is not None
            first.raiseException()
        for address in missed:
            await self.mark_stale(address, ino)

    async def mark_stale(self, address: str, ino: int) -> None:
        """The copy of C{ino} on C{address} missed a change: re-silver it (kept durably)."""
        got = self.stale.setdefault(address, set())
        if ino in got:
            return
        got.add(ino)
        self._log.warn(
            "mirror: the copy of inode {ino} on {node} missed a write; it will be re-silvered",
            ino=ino,
            node=address,
        )
        await self._save_stale(address)

    async def _save_stale(self, address: str) -> None:
        inos = self.stale.get(address, set())
        value = " ".join(str(i) for i in sorted(inos)).encode() if inos else None
        await self._call("SET_STATE", (_stale_key(address), value))

    def stale_copies(self) -> int:
        return sum(len(v) for v in self.stale.values())

    def check_mirrors(self) -> CheckResult:
        """Health: degraded while a copy is missing writes (re-silvering pending)."""
        n = self.stale_copies()
        if n:
            return CheckResult.degraded(f"{n} mirror copies missing writes (re-silvering)")
        return CheckResult.healthy()

    # -- re-silvering ------------------------------------------------------------------------

    def _resilver_pass(self) -> defer.Deferred[None]:
        if self._resilvering or not self.stale_copies():
            return defer.succeed(None)
        self._resilvering = True
        d = defer.Deferred.fromCoroutine(self.resilver())

        def done(result: Any) -> Any:
            self._resilvering = False
            if isinstance(result, Failure) and not result.check(defer.CancelledError):
                self._log.failure("re-silver pass", result)
            return None

        return d.addBoth(done)

    async def resilver(self) -> int:
        """
        Copy what each stale copy missed from a good copy, for data servers
        that answer again; fires with the number of copies made whole.
        """
        fixed = 0
        for address in sorted(self.stale):
            inos = self.stale.get(address)
            if not inos:
                continue
            try:
                await self._dcall(address, "HEARTBEAT")
            except errors.GatewayError:
                continue
            for ino in sorted(inos):
                if self._state != "open":
                    return fixed
                try:
                    done = await self._resilver_one(address, ino)
                except errors.GatewayError as e:
                    self._log.info(
                        "mirror: re-silvering inode {ino} on {node} postponed: {why}",
                        ino=ino,
                        node=address,
                        why=str(e),
                    )
                    break
                if done:
                    self.stale[address].discard(ino)
                    if not any(ino in s for s in self.stale.values()):
                        self._wgen.pop(ino, None)
                    await self._save_stale(address)
                    fixed += 1
                    self.resilvered += 1
        return fixed

    async def _resilver_one(self, address: str, ino: int) -> bool:
        guard = self.resilver_guard
        if guard is None:
            return await self._copy_to(address, ino)
        async with guard(ino) as held:
            done = await self._copy_to(address, ino, held)
        return done

    async def _copy_to(self, address: str, ino: int, held: Any = None) -> bool:
        """Make C{address}'s copy of C{ino} whole; False if a writer came by meanwhile."""
        gen = self._wgen.get(ino, 0)
        try:
            a: Attributes = await self._call("GETATTR", (ino,))
        except errors.NotFound:
            await self._dcall(address, "FORGET", (ino,))
            return True
        if a.type is not FileType.REG:
            return True
        # The copy may hold bytes the others dropped since (a truncation it missed).
        await self._dcall(address, "TRUNCATE", (ino, 0))
        step = 1 << 20
        for copies, pos, n in self._pieces(0, a.size) if a.size else ():
            if address not in copies:
                continue
            sources = [s for s in copies if s != address and ino not in self.stale.get(s, ())]
            if not sources:
                raise errors.BackendUnavailable("no good copy to re-silver from")
            off = pos
            while off < pos + n:
                size = min(step, pos + n - off)
                _, data = await self._dcall(sources[0], "READ", (ino, off, size))
                if self._wgen.get(ino, 0) != gen or (held is not None and held.interrupted):
                    return False
                await self._dcall(address, "WRITE", (ino, off, False, data))
                off += size
        await self._dcall(address, "COMMIT", (ino,))
        if self._wgen.get(ino, 0) != gen or (held is not None and held.interrupted):
            return False
        self._log.info("mirror: inode {ino} re-silvered on {node}", ino=ino, node=address)
        return True

    async def _type_first(self, ino: int, error: Exception) -> None:
        """A data server refused a range; the meta server's word on the inode wins."""
        if isinstance(error, (errors.Inval, errors.FBig)):
            a = await self._call("GETATTR", (ino,))
            _check_regular(a)
        raise error

    async def _forget(self, ino: int) -> None:
        if self.layout is None:
            return
        if self.short_circuited:
            try:
                # A small file's chunks here, on the reactor: a thread hop
                # (two wake-ups, the GIL fought over while rmtree's Python
                # runs beside the reactor: 26 futex calls per file in a
                # strace of nfs.small_files) costs more than its unlink. In
                # the next reactor turn, not now: this runs from the callback
                # chain of the change that removed the last link, whose reply
                # need not wait for the unlink.
                await deferLater(self._reactor, 0, lambda: None)
                try:
                    small = self._local.forget_small(ino)
                except OSError as e:
                    raise self._local_failed(e) from None
                if not small:
                    await self._local_run(self._local.forget, ino)
            except errors.GatewayError as e:
                self._log.warn("could not free the data of inode {ino}: {why}", ino=ino, why=str(e))
            return
        for address in self.layout.servers:
            try:
                await self._dcall(address, "FORGET", (ino,))
            except errors.GatewayError as e:
                # The chunks stay behind (space, not data, is lost): logged for an operator.
                self._log.warn(
                    "could not free the data of inode {ino} on {node}: {why}",
                    ino=ino,
                    node=address,
                    why=str(e),
                )

    def _gone(self, a: Attributes | None) -> None:
        if a is not None and a.nlink == 0 and a.type is FileType.REG:
            self._spawn(self._forget(a.ino))

    # -- health ---------------------------------------------------------------------------

    def check_metadata(self) -> CheckResult:
        """Health of the meta servers: every breaker closed and a connection possible."""
        return _nodes_check(self._meta_nodes, "meta server")

    def check_transport(self) -> CheckResult:
        """Health of the data servers and which transport each node uses."""
        if self._state != "open":
            return CheckResult.unhealthy("backend not open")
        result = _nodes_check(self._data_nodes, "data server")
        chosen = self.choices.check().message
        return CheckResult(result.status, "; ".join(m for m in (result.message, chosen) if m))

    def check(self) -> CheckResult:
        if self._state != "open":
            return CheckResult.unhealthy("backend not open")
        return self.check_metadata()

    # -- directories after a change ---------------------------------------------------------

    def _took_dirs(self, reply: tuple[Any, Sequence[Attributes]]) -> Any:
        """Keep the directories a namespace change's answer carried; fire with its result."""
        result, dirs = reply
        kept = self._dirs_after
        for a in dirs:
            old = kept.get(a.ino)
            if old is None or old.gen != a.gen or a.change >= old.change:
                kept[a.ino] = a
                kept.move_to_end(a.ino)
        while len(kept) > 1024:
            kept.popitem(last=False)
        # An inode whose last link went (a removed directory) has no "after".
        for gone in (result, getattr(result, "replaced", None)):
            if isinstance(gone, Attributes) and gone.nlink == 0:
                kept.pop(gone.ino, None)
        return result

    def dir_after(self, ino: int) -> Attributes | None:
        """
        Directory C{ino} as the newest answer of a namespace change made
        through this gateway gave it (CREATE, SYMLINK, LINK, UNLINK, RMDIR,
        RENAME carry their directories after: wire.DIRS), or None. The vfs
        caches it after such a change instead of a GETATTR round trip. A
        change event from another gateway or a missed-events reset drops it.
        """
        return self._dirs_after.get(ino)

    # -- IMetadataService -------------------------------------------------------------------

    def root(self) -> defer.Deferred[Attributes]:
        return self._call("ROOT")

    def getattr(self, ino: int) -> defer.Deferred[Attributes]:
        return self._after_others("GETATTR", (ino,))

    def _after_others(self, name: str, args: Any) -> defer.Deferred[Any]:
        """
        C{name} asked once the write-behind WROTEs other gateways on this
        host had sent are answered (L{_others_written}): an answer carrying a
        file's size then holds every write answered to any client before.
        """
        if self._board is not None and self._board.behind():
            d = defer.Deferred.fromCoroutine(self._others_written())
            return d.addCallback(lambda _: self._call(name, args))
        return self._call(name, args)

    def attrs_current(self) -> bool:
        """
        Whether attributes cached before now may answer a client: False while
        another gateway on this host has write-behind WROTEs unanswered (its
        client was told of a write the meta server has not applied). The vfs
        then asks (L{getattr}, which waits for them).
        """
        board = self._board
        return board is None or not board.behind()

    async def _others_written(self) -> None:
        """
        Wait until every write-behind WROTE another gateway on this host had
        sent when this was called is answered (board.py): a size taken after
        that includes every write answered to any client before this call.
        Bounded by the RPC timeout (a WROTE fails by then).
        """
        board = self._board
        if board is None:
            return
        waits = board.behind()
        if not waits:
            return
        self.board_waits += 1
        deadline = self._clock.seconds() + self._breaker_settings.timeout_ms / 1000.0
        delay = 0.0001
        while waits and self._clock.seconds() < deadline:
            await deferLater(self._clock, delay, lambda: None)
            delay = min(delay * 2, 0.002)
            waits = board.caught_up(waits)

    def lookup(self, parent: int, name: bytes) -> defer.Deferred[Attributes]:
        # Its answer is the entry's attributes, size included, as GETATTR's.
        return self._after_others("LOOKUP", (parent, bytes(name)))

    def create(
        self,
        parent: int,
        name: bytes,
        type: FileType,
        mode: int,
        uid: int,
        gid: int,
        rdev: tuple[int, int] = (0, 0),
        durable: bool = True,
        share: Any = None,
    ) -> defer.Deferred[Attributes]:
        """
        CREATE; given C{share} (a L{vfs.shared.ShareIntent}), CREATE_OPEN,
        which registers the opener's share reservation on the new inode in
        the same round trip and sets C{share.ino} when it did.
        """
        # durable=False (SMB's changes): the meta server answers before a
        # sync, and SYNC (sync()) makes it durable (interfaces.IMetadataService.create).
        args = (parent, bytes(name), type, mode, uid, gid, tuple(rdev), bool(durable))
        if share is not None:
            d = self._call("CREATE_OPEN", (*args, *share.wire()))

            def registered(reply: tuple[Attributes, Any, bool]) -> tuple[Attributes, Any]:
                a, dirs, ok = reply
                if ok:
                    share.ino = a.ino
                return a, dirs

            d.addCallback(registered)
        else:
            d = self._call("CREATE", args)
        # The new file's attributes are kept like a read's GETATTR answer
        # when only this call's own answer was heard meanwhile (its callback
        # in _call bumps _heard once): the O_TRUNC SETATTR that follows a
        # create then needs no round trip (_setattr).
        heard = self._heard
        gen = self._wb_gen
        d.addCallback(self._took_dirs)
        return d.addCallback(_tap(lambda a: self._keep_created(a, heard, gen)))

    def _keep_created(self, a: Attributes, heard: int, gen: int) -> None:
        if a.type is not FileType.REG:
            return
        if self._heard == heard + 1:
            self._keep(a)
        if self._board is not None and self._wb_gen == gen:
            # A new file's attributes are exact: its first unstable write may
            # go behind (_write_behind) too, its WROTE then overlapping the
            # chunk sync of the COMMIT that follows a small file's write.
            self._wb_attrs[a.ino] = a

    def _keep(self, a: Attributes) -> None:
        if self._mark is None:
            return
        if len(self._read_attrs) >= READ_ATTRS_MAX:
            self._read_attrs.clear()
        self._read_attrs[a.ino] = a

    def symlink(
        self, parent: int, name: bytes, target: bytes, mode: int, uid: int, gid: int
    ) -> defer.Deferred[Attributes]:
        d = self._call("SYMLINK", (parent, bytes(name), bytes(target), mode, uid, gid))
        return d.addCallback(self._took_dirs)

    def link(self, ino: int, parent: int, name: bytes) -> defer.Deferred[Attributes]:
        return self._call("LINK", (ino, parent, bytes(name))).addCallback(self._took_dirs)

    def unlink(self, parent: int, name: bytes, durable: bool = True) -> defer.Deferred[Attributes]:
        d = self._call("UNLINK", (parent, bytes(name), bool(durable)))
        d.addCallback(self._took_dirs)
        return d.addCallback(_tap(self._gone))

    def sync(self) -> defer.Deferred[None]:
        """
        Every change answered so far durable (the meta server's SYNC): those
        sent with C{durable} false were answered before a sync.
        """
        return self._call("SYNC")

    def rmdir(self, parent: int, name: bytes, durable: bool = True) -> defer.Deferred[Attributes]:
        d = self._call("RMDIR", (parent, bytes(name), bool(durable)))
        return d.addCallback(self._took_dirs)

    def rename(
        self,
        src_parent: int,
        src_name: bytes,
        dst_parent: int,
        dst_name: bytes,
        durable: bool = True,
    ) -> defer.Deferred[RenameResult]:
        d = self._call(
            "RENAME", (src_parent, bytes(src_name), dst_parent, bytes(dst_name), bool(durable))
        )
        d.addCallback(self._took_dirs)
        return d.addCallback(_tap(lambda r: self._gone(r.replaced)))

    def setattr(
        self,
        ino: int,
        changes: SetAttrs,
        guard_ctime_ns: int | None = None,
        durable: bool = True,
    ) -> defer.Deferred[Attributes]:
        return defer.Deferred.fromCoroutine(self._setattr(ino, changes, guard_ctime_ns, durable))

    async def _setattr(
        self, ino: int, changes: SetAttrs, guard: int | None, durable: bool = True
    ) -> Attributes:
        if (
            changes.size is not None
            and guard is None
            and self.short_circuited
            and changes == SetAttrs(size=changes.size)
        ):
            kept = self._kept_attrs(ino)
            if kept is not None and kept.type is FileType.REG and kept.size == changes.size:
                # The size it has, and nothing else: a change of nothing (the
                # contract; POSIX ftruncate marks no times then), so no round
                # trip, as long as nothing is held past it to cut (bytes a
                # crash left past the size: the round trip below cuts them).
                try:
                    held = self._local.held(ino)
                except OSError as e:
                    raise self._local_failed(e) from None
                if held <= changes.size:
                    self.setattrs_skipped += 1
                    return kept
        if changes.size is not None:
            # A size may shrink: it goes after every write another gateway
            # on this host answered before it (a write-behind WROTE held or
            # in flight there would otherwise land after it and grow the
            # file back over the bytes cut here).
            await self._others_written()
        # A size change is always synced: the chunk files are cut after it.
        lazy = not durable and changes.size is None
        a: Attributes = await self._call("SETATTR", (ino, changes, guard, not lazy))
        if changes.size is not None:
            # Bytes at and past the new size go (a later extension reads zeros);
            # the meta server answered first, so a refused setattr cuts nothing.
            servers = tuple(self.layout.servers) if self.layout else ()
            if self.short_circuited:
                # Nothing held: nothing to cut (a file created with O_TRUNC), and
                # no thread or data server needed to say so.
                try:
                    held = self._local.held(ino)
                except OSError as e:
                    raise self._local_failed(e) from None
                if held > changes.size:
                    await self._local_run(self._local.truncate, ino, changes.size)
            elif self.mirrored:
                await self._all_copies(ino, servers, "TRUNCATE", (ino, changes.size))
            else:
                for address in servers:
                    await self._dcall(address, "TRUNCATE", (ino, changes.size))
        return a

    def readdir(
        self, dir: int, cookie: int, verifier: bytes, count: int, with_attrs: bool = False
    ) -> defer.Deferred[DirPage]:
        count = max(0, min(count, 2**32 - 1))
        return self._call("READDIR", (dir, cookie, bytes(verifier), count, with_attrs))

    def readlink(self, ino: int) -> defer.Deferred[bytes]:
        return self._call("READLINK", (ino,))

    def statfs(self) -> defer.Deferred[FSStat]:
        return defer.Deferred.fromCoroutine(self._statfs())

    async def _statfs(self) -> FSStat:
        meta: FSStat = await self._call("STATFS")
        if not self.layout or not self.layout.servers:
            return meta
        total = free = avail = 0
        for address in self.layout.servers:
            s: FSStat = await self._dcall(address, "DATA_STATFS")
            total, free, avail = total + s.total_bytes, free + s.free_bytes, avail + s.avail_bytes
        return FSStat(
            total,
            free,
            avail,
            meta.total_files,
            meta.free_files,
            meta.avail_files,
            meta.block_size,
            meta.name_max,
        )

    #: Each call is a round trip to the meta server: the vfs asks for an
    #: inode's names (LISTXATTR) once rather than for each of its records an
    #: SMB open reads, most of them absent (docs/workers.rst "Records an
    #: SMB open reads").
    survey_xattrs = True

    def getxattr(self, ino: int, name: bytes) -> defer.Deferred[bytes]:
        return self._call("GETXATTR", (ino, bytes(name)))

    def setxattr(
        self,
        ino: int,
        name: bytes,
        value: bytes,
        create: bool | None = None,
        durable: bool = True,
    ) -> defer.Deferred[None]:
        return self._call("SETXATTR", (ino, bytes(name), bytes(value), create, bool(durable)))

    def listxattr(self, ino: int) -> defer.Deferred[list[bytes]]:
        return self._call("LISTXATTR", (ino,))

    def removexattr(self, ino: int, name: bytes) -> defer.Deferred[None]:
        return self._call("REMOVEXATTR", (ino, bytes(name)))

    def usage(self, kind: str, id: int) -> defer.Deferred[Usage]:
        return self._call("USAGE", (kind, id))

    def all_usage(self, kind: str) -> defer.Deferred[dict[int, Usage]]:
        return self._call("ALL_USAGE", (kind,))

    def get_quota(self, kind: str, id: int) -> defer.Deferred[QuotaLimits | None]:
        return self._call("GET_QUOTA", (kind, id))

    def set_quota(self, kind: str, id: int, limits: QuotaLimits | None) -> defer.Deferred[None]:
        return self._call("SET_QUOTA", (kind, id, limits))

    def list_quotas(self, kind: str) -> defer.Deferred[dict[int, QuotaLimits]]:
        return self._call("LIST_QUOTAS", (kind,))

    def get_state(self, key: str) -> defer.Deferred[bytes | None]:
        return self._call("GET_STATE", (key,))

    def set_state(self, key: str, value: bytes | None) -> defer.Deferred[None]:
        return self._call("SET_STATE", (key, None if value is None else bytes(value)))

    # -- IDataService ----------------------------------------------------------------------

    def read(self, ino: int, offset: int, length: int) -> defer.Deferred[tuple[bytes, bool]]:
        return defer.Deferred.fromCoroutine(self._read(ino, offset, length))

    async def _read(self, ino: int, offset: int, length: int) -> tuple[bytes, bool]:
        await self._others_written()
        a = self._kept_attrs(ino)
        if a is not None:
            self.read_sizes_kept += 1
        else:
            self.read_sizes_asked += 1
            heard = self._heard
            a = await self._call("GETATTR", (ino,))
            if heard == self._heard:
                self._keep(a)
        _check_regular(a)
        if offset < 0 or length < 0:
            raise errors.Inval("negative offset or length")
        n = min(length, a.size - offset)
        if n <= 0:
            return b"", True
        if self.short_circuited:
            got = self._local_read(ino, offset, n)
            return got, offset + n >= a.size
        parts = []
        for copies, pos, size in self._pieces(offset, n):
            got = await self._read_piece(ino, copies, pos, size)
            parts.append(got[:size] if len(got) >= size else got + bytes(size - len(got)))
        return b"".join(parts), offset + n >= a.size

    def _local_read(self, ino: int, offset: int, n: int) -> bytes:
        """
        C{n} bytes at C{offset} from the chunk files, on the reactor thread: a
        read from the page cache costs less than a thread hop, let alone a
        call to the data server.
        """
        try:
            return self._local.read_exact(ino, offset, n)  # type: ignore[no-any-return]
        except OSError as e:
            raise self._local_failed(e) from None

    async def _read_piece(self, ino: int, copies: Sequence[str], pos: int, size: int) -> bytes:
        """A piece from the first copy that answers and missed no write."""
        good = [a for a in copies if ino not in self.stale.get(a, ())] or list(copies)
        for i, address in enumerate(good):
            try:
                _, got = await self._dcall(address, "READ", (ino, pos, size))
                return bytes(got)
            except _UNREACHABLE:
                if i == len(good) - 1:
                    raise
        raise errors.IO("no copy")  # pragma: no cover - good is never empty

    #: The vfs passes C{behind} for NFS's unstable writes (write-behind).
    supports_write_behind = True

    def write(
        self, ino: int, offset: int, data: bytes | memoryview, stable: bool, behind: bool = False
    ) -> defer.Deferred[WriteResult]:
        """
        The contract's write; with C{behind} (NFS's unstable writes: a lost
        one changes the write verifier, which an NFS client heeds and an SMB
        client has no word for) it may be answered before the meta server
        applied it (L{_write_behind}).
        """
        return defer.Deferred.fromCoroutine(self._write(ino, offset, data, stable, behind))

    async def _write(
        self, ino: int, offset: int, data: bytes | memoryview, stable: bool, behind: bool = False
    ) -> WriteResult:
        if behind and data and not stable:
            self._note_unstable(ino)
            if self._board is not None:
                last = self._wb_attrs.get(ino)
                if last is not None and last.type is FileType.REG:
                    return self._write_behind(ino, offset, data, last)
        if data:
            try:
                if self.short_circuited:
                    # No copy: the bytes go from the request's buffer to pwrite.
                    await self._local_write(ino, offset, data, stable)
                else:
                    data = bytes(data)
                    for copies, pos, size in self._pieces(offset, len(data)):
                        piece = data[pos - offset : pos - offset + size]
                        await self._all_copies(ino, copies, "WRITE", (ino, pos, stable, piece))
            except errors.FSError as e:
                await self._type_first(ino, e)
        gen = self._wb_gen
        try:
            r: WriteResult = await self._call("WROTE", (ino, offset, len(data), 0, stable, 0))
        except _TYPE_ERRORS:
            if data:
                self._spawn(self._forget_if_not_file(ino))
            raise
        if data and not stable and self._board is not None and self._wb_gen == gen:
            # Nothing but writes heard or made while it was in flight: the
            # next unstable write to the file may go behind (_write_behind).
            # Concurrent WROTEs answer in any order: the latest change wins.
            old = self._wb_attrs.get(ino)
            if old is None or old.change < r.attrs.change:
                self._wb_attrs[ino] = r.attrs
        elif data and stable:
            # Its change is not in what the next write behind would build on.
            self._wb_attrs.pop(ino, None)
        if not data and stable:
            await self._call("COMMIT_META", (ino,))
            await self._commit_data(ino)
        return WriteResult(r.count, stable, r.attrs, r.before)

    def _write_behind(
        self, ino: int, offset: int, data: bytes | memoryview, last: Attributes
    ) -> WriteResult:
        """
        An unstable write answered once its bytes are in the chunk files, its
        WROTE sent and not awaited (docs/workers.rst, "Write-behind"): the
        attributes after it are those the store will hold (size grown to the
        end, the times this write gives in WROTE, the change counter one up),
        computed from the file's last ones here. COMMIT_META and every other
        call of this gateway wait for the WROTE (L{_call}); other gateways
        wait through the board before taking a size. A WROTE that fails other
        than for the file being gone changes the write verifier, so the
        client resends what it has not seen committed (RFC 1813 section 3.3.7).
        """
        try:
            self._local.put(ino, offset, data)
        except OSError as e:
            raise self._local_failed(e) from None
        now = max(time.time_ns(), last.mtime_ns + 1, last.ctime_ns + 1)
        end = offset + len(data)
        after = attrs.evolve(
            last, size=max(last.size, end), mtime_ns=now, ctime_ns=now, change=last.change + 1
        )
        board = self._board
        assert board is not None
        board.sent()
        # Held, not sent: the file's COMMIT, if it comes first, carries it
        # (_commit); the next write, any other call or the timer sends it.
        self._send_held()
        self._forget_read_attrs()
        d: defer.Deferred[Any] = defer.Deferred()
        timer = self._clock.callLater(WROTE_HOLD_SECS, self._send_held)
        self._held = (ino, (ino, offset, len(data), 0, False, now), d, timer)
        self._wb_attrs[ino] = after
        self._wb_pending.add(d)
        self._wb_count[ino] = self._wb_count.get(ino, 0) + 1
        self.writes_behind += 1

        def done(result: Any) -> None:
            self._wb_pending.discard(d)
            left = self._wb_count.pop(ino, 1) - 1
            if left:
                self._wb_count[ino] = left
            board.answered()
            if isinstance(result, Failure):
                self._wb_attrs.pop(ino, None)
                if result.check(*_TYPE_ERRORS):
                    # The file went (or is no file): its bytes do not matter.
                    self._spawn(self._forget_if_not_file(ino))
                    return None
                self.restarts += 1
                self._lose(ino)
                self._log.warn(
                    "write-behind WROTE of inode {ino} failed ({why}): write verifier changed, "
                    "clients resend their unstable writes and its next COMMIT fails",
                    ino=ino,
                    why=result.getErrorMessage(),
                )
                return None
            got: Attributes = result.attrs
            latest = self._wb_attrs.get(ino)
            if left or latest is None:
                return None
            if (got.size, got.mtime_ns, got.change) != (
                latest.size,
                latest.mtime_ns,
                latest.change,
            ):
                # Another writer came between (or the answers crossed): what
                # was answered is history; the caches drop it.
                self._wb_attrs.pop(ino, None)
                for listener in list(self._change_listeners):
                    listener(wire.ChangeEvent(0, ino, 0))
            return None

        d.addBoth(done)
        return WriteResult(len(data), False, after, last)

    def _send_held(self) -> None:
        """Send the held write-behind WROTE, if any (L{_write_behind})."""
        held, self._held = self._held, None
        if held is None:
            return
        _, args, d, timer = held
        if timer.active():
            timer.cancel()
        self._call_now("WROTE", args).chainDeferred(d)

    def _take_held(self, ino: int) -> tuple[tuple[Any, ...], defer.Deferred[Any]] | None:
        """The held WROTE of C{ino}, taken off the hold (None if the held one is another's)."""
        held = self._held
        if held is None or held[0] != ino:
            return None
        self._held = None
        if held[3].active():
            held[3].cancel()
        return held[1], held[2]

    async def _fold(self, args: tuple[Any, ...], held: defer.Deferred[Any]) -> Attributes:
        """
        COMMIT_META and the file's held WROTE in one call: the WROTE made
        durable (C{stable}), which commits at the meta server what a
        COMMIT_META would (its store's durable commit covers every change
        before it). This gateway's other WROTEs still unanswered go first,
        so the commit covers every write answered before it.
        """
        others = [_copy(x) for x in self._wb_pending if x is not held]
        if others:
            await defer.DeferredList(others, consumeErrors=True)
        self.wrotes_folded += 1
        ino, offset, length, what, _, mtime_ns = args
        try:
            r: WriteResult = await self._call_now(
                "WROTE", (ino, offset, length, what, True, mtime_ns)
            )
        except BaseException:
            held.errback()
            raise
        held.callback(r)
        return r.attrs

    async def _local_write(
        self, ino: int, offset: int, data: bytes | memoryview, stable: bool
    ) -> None:
        """
        Write into the chunk files on the reactor thread (a write into the
        page cache); a stable write then syncs the chunks it wrote, and
        their directories, on a thread before it answers.
        """
        try:
            touched = self._local.put(ino, offset, data)
        except OSError as e:
            raise self._local_failed(e) from None
        if stable:
            await self._local_sync(ino, touched)

    async def _local_sync(self, ino: int, chunks: list[int] | None) -> None:
        """
        Sync C{chunks} of C{ino} (None: all it has) and their directories,
        each file and directory on a thread of its own at once
        (L{ChunkStore.sync_steps}): a small file's COMMIT waits for one
        journal commit, not one per sync.
        """
        from twisted.internet.threads import deferToThreadPool

        try:
            steps = self._local.sync_steps(ino, chunks)
        except OSError as e:
            raise self._local_failed(e) from None
        if len(steps) <= 1:
            for step in steps:
                await self._local_run(step)
            return
        pool = self._reactor.getThreadPool()
        results = await defer.DeferredList(
            [deferToThreadPool(self._reactor, pool, step) for step in steps], consumeErrors=True
        )
        for ok, value in results:
            if not ok:
                if value.check(OSError):
                    raise self._local_failed(value.value) from None
                value.raiseException()

    async def _local_run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """C{fn(*args)} on the chunk store, on a thread (it syncs: that may take a while)."""
        from twisted.internet.threads import deferToThreadPool

        try:
            return await deferToThreadPool(self._reactor, self._reactor.getThreadPool(), fn, *args)
        except OSError as e:
            raise self._local_failed(e) from None

    def _local_failed(self, e: OSError) -> errors.FSError:
        """An I/O error on the local path: logged, and answered as the data server would."""
        from claudefs_gateway.servers.data import _convert

        self._log.warn(
            "local data path: I/O error in {path}: {why}",
            path=str(self._local.root),
            why=str(e),
        )
        return _convert(e)

    async def _forget_if_not_file(self, ino: int) -> None:
        try:
            a = await self._call("GETATTR", (ino,))
        except errors.NotFound:
            await self._forget(ino)
            return
        except errors.GatewayError:
            return
        if a.type is not FileType.REG:
            await self._forget(ino)

    async def _commit_data(self, ino: int) -> None:
        if self.short_circuited:
            # Every chunk of the inode: unstable writes to it may have come
            # through another worker, whose dirty set this one cannot see.
            await self._local_sync(ino, None)
            return
        servers = tuple(self.layout.servers) if self.layout else ()
        if self.mirrored:
            await self._all_copies(ino, servers, "COMMIT", (ino,))
            return
        for address in servers:
            await self._dcall(address, "COMMIT", (ino,))

    def commit(self, ino: int) -> defer.Deferred[Attributes]:
        return defer.Deferred.fromCoroutine(self._commit(ino))

    async def _commit(self, ino: int) -> Attributes:
        noted = self._unstable.pop(ino, 1) is None
        seen = self.restarts
        try:
            a = await self._commit_both(ino)
        except BaseException as e:
            # This failure tells the client (resend, or its fsync failed).
            self._unstable_lost.pop(ino, None)
            if noted:
                self._note_unstable(ino)
            if isinstance(e, errors.UnstableLost):
                # The meta server found this file's unstable metadata lost (a
                # database restart): the verifier changes before the retry's answer.
                self.restarts += 1
            raise
        if self._unstable_lost.pop(ino, 1) is None or (noted and self.restarts != seen):
            raise errors.UnstableLost(
                f"inode {ino}: unstable writes lost to a failed WROTE or a server restart"
            )
        return a

    async def _commit_both(self, ino: int) -> Attributes:
        # The meta server checks the type (IsDir, Inval) and syncs the
        # metadata of earlier unstable writes; then the data server syncs bytes.
        held = self._take_held(ino)
        if self.short_circuited:
            # Both at once: the reply waits for both either way, and a crash
            # half-way leaves what the one-after-the-other order could leave
            # (metadata synced before the bytes). The meta server's errors win.
            meta: defer.Deferred[Any]
            if held is not None:
                meta = defer.Deferred.fromCoroutine(self._fold(*held))
            else:
                meta = self._call("COMMIT_META", (ino,))
            data: defer.Deferred[Any] = defer.Deferred.fromCoroutine(self._commit_data(ino))
            results = await defer.DeferredList([meta, data], consumeErrors=True)
            for ok, value in results:
                if not ok:
                    value.raiseException()
            committed: Attributes = results[0][1]
            return committed
        if held is not None:
            a: Attributes = await self._fold(*held)
        else:
            a = await self._call("COMMIT_META", (ino,))
        await self._commit_data(ino)
        return a

    def allocate(self, ino: int, offset: int, length: int) -> defer.Deferred[Attributes]:
        return defer.Deferred.fromCoroutine(self._ranged(ino, offset, length, "ALLOCATE", 1))

    def deallocate(self, ino: int, offset: int, length: int) -> defer.Deferred[Attributes]:
        return defer.Deferred.fromCoroutine(self._ranged(ino, offset, length, "DEALLOCATE", 2))

    def data_ranges(
        self, ino: int, offset: int, length: int
    ) -> defer.Deferred[list[tuple[int, int]]]:
        """The data servers keep no map of holes here: the whole range, cut at the size."""
        return defer.Deferred.fromCoroutine(self._data_ranges(ino, offset, length))

    async def _data_ranges(self, ino: int, offset: int, length: int) -> list[tuple[int, int]]:
        a: Attributes = await self._call("GETATTR", (ino,))
        _check_regular(a)
        end = min(offset + length, a.size)
        return [(offset, end - offset)] if end > offset else []

    async def _ranged(self, ino: int, offset: int, length: int, name: str, what: int) -> Attributes:
        try:
            for copies, pos, size in self._pieces(offset, length):
                await self._all_copies(ino, copies, name, (ino, pos, size))
        except errors.FSError as e:
            await self._type_first(ino, e)
        r: WriteResult = await self._call("WROTE", (ino, offset, length, what, True, 0))
        return r.attrs

    # -- IPnfsBackend ---------------------------------------------------------------------

    def pnfs_layout(self, ino: int) -> defer.Deferred[wire.Layout]:
        return self._call("LAYOUT_GET", (ino,))

    def pnfs_data_server(self, address: str) -> defer.Deferred[tuple[bytes, str]]:
        if address not in self._data:
            return defer.fail(errors.IO("not a data server of this namespace"))
        d: defer.Deferred[Any] = self._dcall(address, "PNFS_INFO")
        return d.addCallback(lambda r: (bytes(r[0]), str(r[1])))

    def pnfs_fence(self, address: str, ino: int, epoch: int) -> defer.Deferred[None]:
        if address not in self._data:
            return defer.fail(errors.IO("not a data server of this namespace"))
        return self._dcall(address, "PNFS_FENCE", (ino, epoch))

    def pnfs_committed(self, ino: int, end: int) -> defer.Deferred[Attributes]:
        return defer.Deferred.fromCoroutine(self._pnfs_committed(ino, end))

    async def _pnfs_committed(self, ino: int, end: int) -> Attributes:
        # WROTE of the last byte written: the size grows to end if smaller,
        # mtime and ctime move, durably (stable) - the data is on the data
        # servers already, committed by the client.
        r: WriteResult = await self._call(
            "WROTE", (ino, max(0, end - 1), 1 if end else 0, 0, True, 0)
        )
        return r.attrs

    def pnfs_stale(self, ino: int) -> frozenset[str]:
        return frozenset(a for a, inos in self.stale.items() if ino in inos)

    def pnfs_mark_stale(self, address: str, ino: int) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self.mark_stale(address, ino))

    def pnfs_probe(self, address: str) -> defer.Deferred[None]:
        if address not in self._data:
            return defer.fail(errors.IO("not a data server of this namespace"))
        return self._dcall(address, "HEARTBEAT")


def _stale_key(address: str) -> str:
    return f"cfs.stale.{address}"


def _check_regular(a: Attributes) -> None:
    if a.type is FileType.DIR:
        raise errors.IsDir("is a directory")
    if a.type is not FileType.REG:
        raise errors.Inval("not a regular file")


def _copy(d: defer.Deferred[Any]) -> defer.Deferred[Any]:
    """A Deferred firing with None when C{d} fires (either way), C{d}'s result left as it is."""
    out: defer.Deferred[Any] = defer.Deferred()

    def fire(result: Any) -> Any:
        out.callback(None)
        return result

    d.addBoth(fire)
    return out


def _tap(fn: Callable[[Any], None]) -> Callable[[Any], Any]:
    def run(result: Any) -> Any:
        fn(result)
        return result

    return run


def _nodes_check(nodes: Sequence[Node], what: str) -> CheckResult:
    if not nodes:
        return CheckResult.healthy(f"no {what}")
    down = [n.name for n in nodes if n.breaker.state != CLOSED]
    unreachable = [n.name for n in nodes if n.pool.check().status == "unhealthy"]
    if len(down) == len(nodes):
        return CheckResult.unhealthy(
            f"every {what} unavailable: circuit open for {', '.join(down)}"
        )
    if down or unreachable:
        bad = sorted(set(down + unreachable))
        return CheckResult.degraded(f"{what} {', '.join(bad)} unavailable")
    return CheckResult.healthy()


def _fire(d: defer.Deferred[None]) -> None:
    if not d.called:
        d.callback(None)


def _sleep(clock: Any, seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    call = clock.callLater(seconds, d.callback, None)
    d.addErrback(lambda f: (call.cancel() if call.active() else None, f)[1])
    return d
