# -*- test-case-name: tests.rpc.test_server -*-
"""
An ONC RPC server: programs, dispatch, and the TCP and UDP transports.

L{RPCServer} holds the programs and turns one call message into one reply
message (RFC 5531 §9): PROG_UNAVAIL, PROG_MISMATCH (with the lowest and
highest version served), PROC_UNAVAIL, GARBAGE_ARGS for arguments that do not
decode, SYSTEM_ERR for a procedure that failed unexpectedly, MSG_DENIED with
RPC_MISMATCH for a call that is not RPC version 2, and AUTH_ERROR for a
credential that is malformed or of a flavour not served (only AUTH_NONE and
AUTH_SYS are). Non-idempotent procedures go through the duplicate request
cache (L{claudefs_gateway.rpc.drc}).

L{RPCStreamProtocol} frames calls with record marking and keeps many calls in
flight per connection, replying in whatever order they finish (clients match
replies by XID). It stops reading when C{max_in_flight} calls are running,
when the calls running and the replies queued unread hold C{max_queued_bytes}
(a call counts the reply its procedure says it may return: a READ its
count), or when the client stops reading replies (it is the transport's
producer), so a client cannot make it hold unbounded work or output. L{RPCDatagramProtocol}
serves one call per datagram.

A program is a table of L{Procedure}s per version; each procedure has a pure
decoder (bytes to arguments, raising L{XDRError}) and a handler returning the
encoded results, or a Deferred of them.
"""

from __future__ import annotations

import itertools
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from typing_extensions import override

from zope.interface import implementer

from claudefs_gateway.core.directsend import DirectSender, Later, materialize
from claudefs_gateway.core.log import Logger, Sampler
from claudefs_gateway.rpc import message as msg
from claudefs_gateway.rpc.drc import BUSY, ReplyCache, call_key
from claudefs_gateway.rpc.message import Call
from claudefs_gateway.rpc.record import LAST_FRAGMENT, RecordReader, RecordTooLarge
from claudefs_gateway.rpc.xdr import Unpacker, XDRError

__all__ = [
    "Call",
    "Peer",
    "Procedure",
    "Program",
    "RPCServer",
    "AuthError",
    "RPCStreamProtocol",
    "RPCStreamFactory",
    "RPCDatagramProtocol",
    "UDP_MAX_REPLY",
    "UDPListener",
]

# The largest reply a UDP datagram carries (IPv4: 65535 - 20 - 8).
UDP_MAX_REPLY = 65507
# Socket reads: Twisted's 64 KiB, or while a large record (a 1 MiB WRITE) is
# arriving, up to what it still lacks (at most READ_MAX): four reactor turns
# and four chunks to join per MiB instead of sixteen.
READ_DEFAULT = 1 << 16
READ_MAX = 1 << 18
# Replies of calls served together (a pipelining client's, read at once) leave
# in one write: until they hold this many bytes or pieces (under the kernel's
# IOV_MAX of 1024 iovecs for one sendmsg).
BATCH_BYTES = 256 * 1024
BATCH_PARTS = 512
# nfs.max_queued_bytes_per_connection's default.
DEFAULT_MAX_QUEUED_BYTES = 8 * 1024 * 1024
# A big-endian word (a record marker, a reply's xid), packed without a
# Python-level call per reply.
_U32 = struct.Struct(">I").pack

Results = list[bytes]
Handler = Callable[["Call", Any], "Results | defer.Deferred[Results] | None"]


class AuthError(Exception):
    """Raised by a handler to refuse a call with MSG_DENIED, AUTH_ERROR C{stat}."""

    def __init__(self, stat: int = msg.AUTH_TOOWEAK) -> None:
        super().__init__(stat)
        self.stat = stat


@attrs.define(slots=True, eq=False)
class Peer:
    """
    Where a call came from.

    @ivar host: the client's address (no port), for export rules, the DRC and locks.
    @ivar transport: C{"tcp"} or C{"udp"}.
    @ivar max_reply: the largest reply the transport can carry.
    @ivar conn: the connection (TCP) the call arrived on, else L{None}.
    @ivar expected: how large the reply of the call just started may grow
        (its procedure's C{reply_size}): set by L{RPCServer.handle} when the
        call is left running (one answered at once needs no estimate), read
        by the connection, which counts it against C{max_queued_bytes}.
    @ivar seen_procs: the procedures (one program's version) of the latest
        call told to C{conn.seen}.
    @ivar seen_cred: that call's credential (the parsed credentials are
        shared per encoded body): a call with the same procedures and
        credential as the one told (a client's usual case) skips telling.
    @ivar sendfile: replies may hold L{FileRange<claudefs_gateway.core.directsend.FileRange>}
        pieces (a TCP connection that writes to its socket itself): a
        procedure answering synchronously may reply with file data the
        kernel sends from the page cache.
    @ivar ranged: the reply being made holds such a piece: set by the
        procedure, read and cleared by the connection as it sends it, in
        the same call stack (the range's descriptor is good only until the
        procedure's caller returns).
    """

    host: str
    port: int
    transport: str
    max_reply: int
    conn: Any = None
    expected: int = 0
    seen_procs: Any = None
    seen_cred: Any = None
    sendfile: bool = False
    ranged: bool = False


@attrs.frozen(slots=True)
class Procedure:
    """
    @ivar name: the RFC's name (metrics C{op}, logs).
    @ivar decode: arguments from an L{Unpacker} positioned at them.
    @ivar handle: C{(call, args)} to results (list of encoded chunks), a
        Deferred of them, or L{None} for no reply at all.
    @ivar cached: non-idempotent: replies go through the duplicate request cache.
    @ivar cancel_on_close: cancel the call if its connection closes (reads);
        false for calls whose effect must complete (writes).
    @ivar reply_size: from the decoded arguments, how large the reply may
        grow (a READ's count), so a connection counts the reply against its
        byte bound before the call runs (L{RPCStreamProtocol}); L{None}: small.
    @ivar fast: C{(call, args)} to results when the answer is at hand in
        memory (a cached GETATTR, a page-cache READ), else L{None}: then
        C{handle} serves the call. Both must answer alike; the fast one only
        leaves out the coroutine and Deferreds of an answer already known,
        and the server tries it first without a wrapper's call per call.
    """

    name: str
    decode: Callable[[Unpacker], Any]
    handle: Handler
    cached: bool = False
    cancel_on_close: bool = True
    reply_size: Callable[[Any], int] | None = None
    fast: Callable[[Call, Any], Results | None] | None = None


def no_args(u: Unpacker) -> None:
    return None


class Program:
    """
    One RPC program: numbered procedures per version.

    @ivar metrics: a L{RequestMetrics} for the program's calls, or L{None}.
    """

    def __init__(self, number: int, name: str, metrics: Any = None) -> None:
        self.number = number
        self.name = name
        self.metrics = metrics
        self.versions: dict[int, dict[int, Procedure]] = {}
        # Versions merged in from another Program keep that program's metrics
        # (NFSv3 and NFSv4 are one program number, counted apart).
        self.version_metrics: dict[int, Any] = {}

    def add(self, vers: int, number: int, proc: Procedure) -> None:
        self.versions.setdefault(vers, {})[number] = proc

    def metrics_for(self, vers: int) -> Any:
        if vers in self.version_metrics:
            return self.version_metrics[vers]
        return self.metrics

    def version_range(self) -> tuple[int, int]:
        return min(self.versions), max(self.versions)


class RPCServer:
    """
    Dispatch of call messages to programs.

    @param drc: the duplicate request cache (shared by every transport, so a
        retransmission over a new connection still finds the first reply).
    @param activity: counts calls in flight for the drain (an L{Activity}).
    @param timer: monotonic seconds, for latency metrics.
    """

    _log = Logger()

    def __init__(
        self,
        drc: ReplyCache | None = None,
        activity: Any = None,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.programs: dict[int, Program] = {}
        self.drc = drc if drc is not None else ReplyCache(0)
        self.activity = activity
        self.timer = timer
        self.garbage = 0
        #: Bad input is logged at most once a minute per client host (counted always).
        self.bad_input_log = Sampler()
        # What the programs know of a connection, for cfs-gateway status: each
        # is called with an RPCStreamProtocol only when the status is asked for
        # and returns more facts for its row (see RPCStreamProtocol.describe).
        self.describers: list[Callable[[Any], dict[str, Any]]] = []

    def add(self, program: Program) -> None:
        if program.number in self.programs:
            existing = self.programs[program.number]
            for vers, procs in program.versions.items():
                existing.versions.setdefault(vers, {}).update(procs)
                existing.version_metrics[vers] = program.metrics
            return
        self.programs[program.number] = program

    def handle(self, data: bytes, peer: Peer) -> Results | defer.Deferred[Results | None] | None:
        """
        The reply to one call message: a list of chunks, a Deferred of one, or
        L{None} when nothing is to be sent (not a call; a retransmission of a
        call still running).
        """
        try:
            call = msg.parse_call(data)
        except msg.RPCMismatch as e:
            self._bad(peer, "RPC version mismatch", e)
            assert e.xid is not None
            return [msg.reply_rpc_mismatch(e.xid)]
        except msg.BadCred as e:
            self._bad(peer, "bad credential", e)
            assert e.xid is not None
            return [msg.reply_auth_error(e.xid, e.stat)]
        except msg.BadCall as e:
            self._bad(peer, "undecodable call dropped", e)
            return None
        xid = call.xid
        program = self.programs.get(call.prog)
        if program is None:
            self._log.debug(
                "call for program {prog} not served from {host}", prog=call.prog, host=peer.host
            )
            return [msg.reply_error(xid, msg.PROG_UNAVAIL)]
        procs = program.versions.get(call.vers)
        if procs is None:
            low, high = program.version_range()
            return [msg.reply_prog_mismatch(xid, low, high)]
        proc = procs.get(call.proc)
        if proc is None:
            return [msg.reply_error(xid, msg.PROC_UNAVAIL)]
        if call.flavor != msg.AUTH_SYS and call.flavor != msg.AUTH_NONE:
            self._log.debug(
                "{program} call with auth flavour {flavor} refused",
                program=program.name,
                flavor=call.flavor,
            )
            return [msg.reply_auth_error(xid, msg.AUTH_BADCRED)]
        try:
            args = proc.decode(Unpacker(data, call.args_at))
        except (XDRError, struct.error, ValueError) as e:
            self._bad(peer, f"{program.name} {proc.name}: arguments do not decode", e)
            metrics = program.metrics_for(call.vers)
            if metrics is not None:
                metrics.observe(proc.name, 0.0, "GARBAGE_ARGS")
            return [msg.reply_error(xid, msg.GARBAGE_ARGS)]
        key = None
        if proc.cached:
            key = call_key(peer.host, xid, call.prog, call.vers, call.proc, data, call.args_at)
            seen = self.drc.lookup(key)
            if seen is BUSY:
                self._log.debug("retransmission of xid {xid} in progress; dropped", xid=xid)
                return None
            if seen is not None:
                self._log.debug("retransmission of xid {xid} answered from the cache", xid=xid)
                return [seen]
        call.peer = peer
        conn = peer.conn
        if conn is not None:
            cred = call.cred
            if peer.seen_procs is not procs or peer.seen_cred is not cred:
                # What conn.seen keeps depends on these alone: telling it
                # again the same is a call per call for nothing.
                conn.seen(program.name, call.vers, cred.uid if cred is not None else None)
                peer.seen_procs = procs
                peer.seen_cred = cred
        started = self.timer()
        try:
            # The answer from memory if the procedure has one (no coroutine,
            # no Deferred), else the general handler's.
            fast = proc.fast
            result: Results | defer.Deferred[Results] | None = (
                fast(call, args) if fast is not None else None
            )
            if result is None:
                result = proc.handle(call, args)
        except Exception:
            result = defer.fail()
        if type(result) is not list and isinstance(result, defer.Deferred):
            # Only a call still running when the handler returns can be seen
            # in flight by the drain (everything here is on the reactor thread).
            pending = not result.called
            running = pending and self.activity is not None
            if running:
                self.activity.begin()
            if pending and conn is not None and proc.reply_size is not None:
                # Only a call left running holds its reply's bytes against
                # the connection's bound (one answered at once is sent now).
                try:
                    expected = int(proc.reply_size(args))
                except Exception:  # an estimate only: a call that will fail anyway
                    expected = 0
                peer.expected = expected if expected > 0 else 0
            done: defer.Deferred[Results | None] = result.addBoth(
                self._finish, call, program, proc, key, started, running
            )
            return done if proc.cancel_on_close else _shield(done)
        if type(result) is list and key is None:
            # _finish's success path, in line: the answer most calls get.
            metrics = program.version_metrics.get(call.vers, program.metrics)
            if metrics is not None:
                metrics.observe(proc.name, self.timer() - started, call.status)
            return [_U32(xid) + msg.SUCCESS_TAIL, *result]
        return self._finish(result, call, program, proc, key, started)

    def _finish(
        self,
        result: Results | Failure | None,
        call: Call,
        program: Program,
        proc: Procedure,
        key: Any,
        started: float,
        running: bool = False,
    ) -> Results | None:
        if running:
            self.activity.end()
        xid = call.xid
        if isinstance(result, Failure):
            if result.check(defer.CancelledError):
                if key is not None:
                    self.drc.forget(key)
                return None
            if isinstance(result.value, AuthError):
                call.status = "AUTH_ERROR"
                reply = [msg.reply_auth_error(xid, result.value.stat)]
            else:
                self._log.failure(
                    "{program} {proc} failed (xid {xid})",
                    result,
                    program=program.name,
                    proc=proc.name,
                    xid=xid,
                )
                call.status = "SYSTEM_ERR"
                reply = [msg.reply_error(xid, msg.SYSTEM_ERR)]
        elif result is None:
            if key is not None:
                self.drc.forget(key)
            return None
        else:
            reply = [_U32(xid) + msg.SUCCESS_TAIL, *result]
        # program.metrics_for, without a call per call.
        metrics = program.version_metrics.get(call.vers, program.metrics)
        if metrics is not None:
            metrics.observe(proc.name, self.timer() - started, call.status)
        if key is not None:
            self.drc.finish(key, b"".join(reply))
        return reply

    def _bad(self, peer: Peer, what: str, e: Exception) -> None:
        self.garbage += 1
        held = self.bad_input_log.admit(peer.host)
        if held is None:
            return
        self._log.warn(
            "{what} from {host} over {transport}: {why}"
            " ({held} more from this host since the last such line; at most one a minute)",
            what=what,
            host=peer.host,
            transport=peer.transport,
            why=str(e)[:200],
            held=held,
        )


def _size(parts: list[Any]) -> int:
    n = 0
    for p in parts:
        n += len(p)
    return n


def _shield(d: defer.Deferred[Any]) -> defer.Deferred[Any]:
    """
    A Deferred firing with C{d}'s result whose cancellation leaves C{d} running
    (a call that changes things finishes and reaches the reply cache even if
    the client went away).
    """
    out: defer.Deferred[Any] = defer.Deferred()

    def fire(result: Any) -> None:
        if not out.called:
            out.callback(result)
        elif isinstance(result, Failure):
            _log_late(result)

    d.addBoth(fire)
    return out


def _log_late(f: Failure) -> None:
    RPCServer._log.failure("a call finished after its client left", f)


_conn_ids = itertools.count(1)


@implementer(IPushProducer)
class RPCStreamProtocol(Protocol):
    """
    ONC RPC over a stream (TCP): record marking, many calls in flight.

    @ivar conn_id: correlates this connection's log events.
    """

    transport: Any

    _log = Logger()

    def __init__(
        self,
        server: RPCServer,
        max_record: int,
        max_in_flight: int,
        activity: Any,
        max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
    ) -> None:
        self.server = server
        self.reader = RecordReader(max_record)
        self._read_size = READ_DEFAULT
        self.max_in_flight = max_in_flight
        self.max_queued_bytes = max_queued_bytes
        # Bytes held by calls being served: each record plus the reply its
        # procedure may return (Peer.expected); with _queued, bounded by
        # max_queued_bytes (issue 19).
        self._held = 0
        self.activity = activity
        self.pending: set[defer.Deferred[Any]] = set()
        self.peer: Peer | None = None
        self.conn_id = next(_conn_ids)
        self.closed = False
        # For cfs-gateway status: the programs called over this connection and
        # the uid of the latest call (see describe).
        self.programs: dict[str, int] = {}
        self.uid: int | None = None
        self._reading_paused = False
        self._paused_output = False
        self._direct: DirectSender | None = None
        self._counted = False
        # Calls read but not yet started (see _drain_backlog).
        self.backlog: deque[bytes] = deque()
        # Replies made while calls are drained from the backlog, sent together
        # when the drain ends (see send), and their bytes.
        self._batch: list[bytes] | None = None
        self._batch_size = 0
        # The connection can also carry calls from the server to the client
        # (the NFSv4.1 back channel, RFC 8881 §2.10.3.1): their replies go to
        # reply_sink; without one they are dropped as before.
        self.reply_sink: Callable[[bytes], None] | None = None
        # Called with this protocol when the connection closes.
        self.on_close: list[Callable[[RPCStreamProtocol], None]] = []
        # Timeouts (issue 19): when the last call arrived, since when a
        # record has been half-received, and the timer checking both.
        self._last_active = 0.0
        self._partial_since: float | None = None
        self._watch: Any = None
        self._clock: Any = None
        # Bytes counted in the memory budget: calls being served, replies queued.
        self._budget: Any = None
        self._queued = 0
        # Replies waiting for a file read in a thread, in order (_write, _pump).
        self._later: list[list[Any]] | None = None

    def seen(self, program: str, vers: int, uid: int | None) -> None:
        """Note a call of C{program} version C{vers} by C{uid} (None: AUTH_NONE)."""
        if self.programs.get(program) != vers and len(self.programs) < 8:
            self.programs[program] = vers
        self.uid = uid

    def describe(self) -> dict[str, Any]:
        """
        This connection for C{cfs-gateway status} (L{claudefs_gateway.core.clients}):
        uid, dialect and calls in flight, and what each of the server's
        L{RPCServer.describers} adds (NFSv4 clients and their state, NLM
        locks of the client host). Counts (C{opens}, C{locks}, C{leases})
        from several describers add up; a describer may name the NFS minor
        version (C{nfs_minor}) shown in the dialect ("NFSv4.2").
        """
        doc: dict[str, Any] = {"uid": self.uid, "in_flight": len(self.pending)}
        minor: int | None = None
        for describer in self.server.describers:
            try:
                facts = describer(self)
            except Exception:
                self._log.failure("describing connection {conn_id}", conn_id=self.conn_id)
                continue
            for k, v in facts.items():
                if k == "nfs_minor":
                    minor = v
                elif k in ("opens", "locks", "leases") and isinstance(doc.get(k), int):
                    doc[k] += v
                else:
                    doc[k] = v
        parts = []
        for name, vers in self.programs.items():
            base = name.rstrip("0123456789")
            label = f"{base.upper()}v{vers}"
            if base == "nfs" and vers == 4 and minor is not None:
                label += f".{minor}"
            parts.append(label)
        doc["dialect"] = "+".join(parts) or None
        return doc

    @override
    def connectionMade(self) -> None:
        addr = self.transport.getPeer()
        host = getattr(addr, "host", "") or ""
        if host.startswith("::ffff:"):
            host = host[7:]
        self.peer = Peer(host, getattr(addr, "port", 0) or 0, "tcp", 2**31 - 1, self)
        if self.activity is not None:
            self.activity.connection_made(self)
        # Replies are many and small: without this, Nagle holds a reply back
        # until the client ACKs the previous one, which a pipelining client
        # delays (40 ms on Linux).
        set_nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            try:
                set_nodelay(True)
            except OSError:
                pass
        self.transport.registerProducer(self, True)
        # Twisted sends at most SEND_LIMIT (128 KiB) per reactor turn: a 1 MiB
        # READ reply would take eight turns. Let the kernel take what it can.
        self._direct = DirectSender.for_transport(self.transport)
        self.peer.sendfile = self._direct is not None
        self._log.debug("connection {conn_id} from {host}", conn_id=self.conn_id, host=host)
        factory = getattr(self, "factory", None)
        self._budget = getattr(factory, "budget", None)
        self._clock = getattr(factory, "clock", None)
        if self._clock is not None:
            self._last_active = self._clock.seconds()
            self._arm_watch()

    def _timeouts(self) -> tuple[float, float]:
        factory = getattr(self, "factory", None)
        return (getattr(factory, "idle_timeout", 0.0), getattr(factory, "partial_timeout", 0.0))

    def _arm_watch(self) -> None:
        steps = [t for t in self._timeouts() if t > 0]
        if steps and not self.closed and self._clock is not None:
            # Checked at a tenth of the shortest timeout: each is kept within 10 %.
            self._watch = self._clock.callLater(max(min(steps) / 10, 0.5), self._check)

    def _check(self) -> None:
        """
        Close a connection idle for the factory's C{idle_timeout} (no call
        arriving, none in flight: knfsd closes such connections after about 6
        minutes and clients reconnect) or holding a half-received record for
        C{partial_timeout} (a half-open or dribbling client).
        """
        self._watch = None
        if self.closed:
            return
        idle, partial = self._timeouts()
        now = self._clock.seconds()
        why = None
        if partial > 0 and self._partial_since is not None and now - self._partial_since >= partial:
            why = "a record left incomplete"
        elif idle > 0 and now - self._last_active >= idle and not self.pending and not self.backlog:
            why = "idle"
        if why is None:
            self._arm_watch()
            return
        self._log.info(
            "connection {conn_id} from {host}: closing, {why} (timeout)",
            conn_id=self.conn_id,
            host=self.peer.host if self.peer else "?",
            why=why,
        )
        metrics = getattr(getattr(self, "factory", None), "metrics", None)
        if metrics is not None:
            metrics.rejected("timeout")
        self.closed = True
        self.transport.abortConnection()

    def _count_as(self, first: bytes) -> None:
        """Count the connection under the activity of the version its first call speaks."""
        self._counted = True
        choose = getattr(getattr(self, "factory", None), "activity_for", None)
        if choose is None or len(first) < 20 or first[4:8] != b"\0\0\0\0":
            return
        prog, vers = struct.unpack_from(">II", first, 12)
        other = choose(prog, vers)
        if other is None or other is self.activity:
            return
        if self.activity is not None:
            self.activity.connection_lost(self)
        self.activity = other
        other.connection_made(self)

    @override
    def dataReceived(self, data: bytes) -> None:
        try:
            records = self.reader.feed(data)
        except RecordTooLarge as e:
            host = self.peer.host if self.peer else "?"
            self.server.garbage += 1
            held = self.server.bad_input_log.admit(host)
            if held is not None:
                self._log.warn(
                    "connection {conn_id} from {host}: {why}; closing"
                    " ({held} more from this host since the last such line; at most one a minute)",
                    conn_id=self.conn_id,
                    host=host,
                    why=str(e),
                    held=held,
                )
            self.transport.loseConnection()
            self.closed = True
            return
        missing = self.reader.missing
        if missing > READ_DEFAULT or self._read_size != READ_DEFAULT:
            size = READ_DEFAULT if missing <= READ_DEFAULT else min(missing, READ_MAX)
            if size != self._read_size and hasattr(self.transport, "bufferSize"):
                self._read_size = self.transport.bufferSize = size
        if self._clock is not None:
            if records:
                self._last_active = self._clock.seconds()
            if self.reader.buffered:
                if self._partial_since is None or records:
                    self._partial_since = self._clock.seconds()
            else:
                self._partial_since = None
        if records and not self._counted:
            self._count_as(records[0])
        if records:
            sink = self.reply_sink
            if sink is not None:
                calls = []
                for r in records:
                    # msg_type (the second word) REPLY: an answer to a callback.
                    if r[4:8] == b"\0\0\0\1":
                        try:
                            sink(r)
                        except Exception:
                            self._log.failure(
                                "connection {conn_id}: a callback reply", conn_id=self.conn_id
                            )
                    else:
                        calls.append(r)
                records = calls
            self.backlog.extend(records)
            self._drain_backlog()

    def send_call(self, message: bytes) -> None:
        """Send a call to the client over this connection (a back-channel callback)."""
        self.send([message])

    def _full(self) -> bool:
        """
        No more work for now: the client leaves replies unread, or
        C{max_in_flight} calls are running, or the calls running (with the
        replies they may return) and the replies queued unread hold
        C{max_queued_bytes}.
        """
        return (
            self._paused_output
            or len(self.pending) >= self.max_in_flight
            or self._held + self._queued >= self.max_queued_bytes
        )

    def _drain_backlog(self) -> None:
        """
        Serve queued calls while the connection may take more work (see
        L{_full}): a client that sends 64 KiB of 1 MiB READs and reads
        nothing must not make the gateway hold 500 MiB of replies, nor the
        128 calls already running when it stopped reading 128 MiB. The byte
        bound is checked before each call, so it is exceeded by one call at
        most (a call larger than the bound still runs, alone). Reading from
        the socket is paused meanwhile, so the backlog holds at most one
        read's worth.
        """
        # Re-entered (a call finishing while another is served): the outer
        # drain sends what this one answers.
        outer = self._batch is None
        if outer:
            self._batch = []
        try:
            # One method, not two: this runs once per read of every connection.
            backlog = self.backlog
            while backlog and not self.closed:
                # With no call running and nothing queued unread (a client
                # at queue depth 1) the connection cannot be full: no call
                # to _full for that.
                if (self.pending or self._paused_output or self._queued) and self._full():
                    self._pause_reading()
                    return
                try:
                    self._serve(backlog.popleft())
                except Exception:
                    self._log.failure("connection {conn_id}: serving a call", conn_id=self.conn_id)
            if self.pending or self._paused_output or self._queued or self._reading_paused:
                if self._full():
                    self._pause_reading()
                elif self._reading_paused:
                    self._resume_reading()
        finally:
            if outer:
                batch, size = self._batch, self._batch_size
                self._batch, self._batch_size = None, 0
                if batch and not self.closed:
                    # _write's direct send, in line (once per read of every
                    # connection): what the kernel does not take, or all of
                    # it without a direct sender, goes through _write.
                    direct = self._direct
                    if direct is None or self._later is not None:
                        # (Behind a reply waiting for its file's bytes: in turn.)
                        self._write(batch, size)
                    else:
                        rest = direct.send(batch, size)
                        if rest:
                            self._write(rest, size, queue_only=True)

    def _pause_reading(self) -> None:
        if not self._reading_paused and not self.closed:
            self._reading_paused = True
            self.transport.pauseProducing()

    def _resume_reading(self) -> None:
        if self._reading_paused and not self.closed and not self.backlog and not self._full():
            self._reading_paused = False
            self.transport.resumeProducing()

    def _serve(self, record: bytes) -> None:
        assert self.peer is not None
        peer = self.peer
        peer.expected = 0
        result = self.server.handle(record, peer)
        if type(result) is list:
            # Answered at once (the common case; a type test: an isinstance
            # of Deferred, an ABC, costs a Python-level check per call).
            batch = self._batch
            if batch is None or self.closed or peer.ranged:
                # (A reply holding file ranges goes at once: send().)
                self.send(result)
                return
            # send()'s batching, in line (see there).
            size = 0
            for c in result:
                size += len(c)
            batch.append(_U32(LAST_FRAGMENT | size))
            batch.extend(result)
            self._batch_size += size + 4
            if self._batch_size >= BATCH_BYTES or len(batch) >= BATCH_PARTS:
                self._flush()
            return
        if result is None:
            return
        if not isinstance(result, defer.Deferred):
            self.send(result)
            return
        if result.called:
            # Synchronous handlers (memory backend, caches) finish here.
            out: list[Any] = []
            result.addBoth(out.append)
            if out and isinstance(out[0], list):
                self.send(out[0])
            return
        # Left running: the record (and the reply it may return) is held,
        # against the connection's bound and in the memory budget, until
        # it is answered. A call answered at once holds nothing: no other
        # call can run meanwhile, and its own admission is decided by what
        # the calls before it hold (two budget calls per call saved).
        if self._budget is not None:
            self._budget.hold(len(record))
        self.pending.add(result)
        held = len(record) + peer.expected
        self._held += held
        result.addBoth(self._done, result, len(record), held)

    def _done(
        self,
        result: Results | Failure | None,
        d: defer.Deferred[Any],
        size: int = 0,
        held: int = 0,
    ) -> None:
        self.pending.discard(d)
        self._held -= held
        if self._budget is not None:
            self._budget.release(size)
        if isinstance(result, list):
            self.send(result)
        elif isinstance(result, Failure) and not result.check(defer.CancelledError):
            self._log.failure("connection {conn_id}: call failed", result, conn_id=self.conn_id)
        self._drain_backlog()

    def send(self, chunks: Results) -> None:
        """
        Write one reply record.

        When the transport has nothing buffered, the record goes straight to
        the socket with one C{sendmsg} (scatter/gather: a READ's data is not
        copied into a joined buffer, and no reactor turn is spent waiting to
        write); whatever the kernel does not take, or everything when the
        transport is busy, goes through the transport as usual, which keeps
        ordering and back-pressure intact. Replies made while the calls of
        one read are served are batched: one C{sendmsg} (one wake-up of the
        client) for the lot, up to C{BATCH_BYTES} or C{BATCH_PARTS} pieces.
        """
        peer = self.peer
        if self.closed:
            if peer is not None:
                peer.ranged = False
            return
        size = 0
        for c in chunks:
            size += len(c)
        batch = self._batch
        if peer is not None and peer.ranged:
            # A reply with file ranges goes now, before anything else runs
            # (their descriptors are only good until then), after the
            # replies batched before it, in one write.
            peer.ranged = False
            parts: list[Any] = [_U32(LAST_FRAGMENT | size), *chunks]
            size += 4
            if batch:
                parts = [*batch, *parts]
                size += self._batch_size
                self._batch = []
                self._batch_size = 0
            self._write(parts, size, True)
            return
        if batch is not None:
            # Calls served from one read (a pipelining client's): their
            # replies leave together, in order, in one sendmsg (see _flush).
            batch.append(_U32(LAST_FRAGMENT | size))  # record_marker(size)
            batch.extend(chunks)
            self._batch_size += size + 4
            if self._batch_size >= BATCH_BYTES or len(batch) >= BATCH_PARTS:
                self._flush()
            return
        self._write([_U32(LAST_FRAGMENT | size), *chunks], size + 4)

    def _flush(self) -> None:
        """Write the replies batched so far (L{send} while draining calls)."""
        batch = self._batch
        if batch:
            size, self._batch_size = self._batch_size, 0
            self._batch = []
            if not self.closed:
                self._write(batch, size)

    def _write(
        self, parts: list[Any], size: int, ranged: bool = False, queue_only: bool = False
    ) -> None:
        """
        Write reply records (C{parts}, C{size} bytes in all) to the client;
        C{ranged}: some parts are L{FileRange<claudefs_gateway.core.directsend.FileRange>}s.
        A range the socket does not take whose pages are no longer cached
        is read in a thread, never on the reactor's: this reply's rest and
        every reply after it wait for it (L{_pump}). C{queue_only}: the
        direct sender has had its try (C{parts} is what it left): through
        the transport only.
        """
        if self._later is not None:
            # A reply ahead waits for its file's bytes: this one follows it.
            if ranged:
                parts = materialize(parts)
            self._later.append(parts)
            self._held += size
            return
        direct = self._direct
        if direct is not None and not queue_only:
            parts = direct.send_ranges(parts, size) if ranged else direct.send(parts, size)
            if not parts:
                return
        elif ranged:
            parts = materialize(parts)
        if ranged:
            for p in parts:
                if type(p) is Later:
                    # Pages evicted since the READ looked: read them in a
                    # thread, holding the replies after this one (in order).
                    self._later = [parts]
                    self._held += _size(parts)
                    self._pump()
                    return
        self._out(parts, size)

    def _pump(self) -> bool:
        """
        Write the replies held behind a L{Later} piece, in order, reading
        each such piece in a thread (one at a time: the next waits for the
        bytes before it). True when all are written.
        """
        later = self._later
        assert later is not None
        while later:
            parts = later[0]
            k = 0
            for p in parts:
                if type(p) is Later:
                    break
                k += 1
            if k:
                head = parts[:k]
                size = _size(head)
                self._held -= size
                self._out(head, size)
            if k == len(parts):
                later.pop(0)
                continue
            later[0] = parts[k:]
            from twisted.internet import reactor
            from twisted.internet.threads import deferToThreadPool

            r: Any = reactor
            d = deferToThreadPool(r, r.getThreadPool(), parts[k].read)
            # A running call for the connection's bounds (_full), cancelled with the others.
            self.pending.add(d)
            d.addBoth(self._read_later, d)
            return False
        self._later = None
        return True

    def _read_later(self, result: bytes | Failure, d: defer.Deferred[Any]) -> None:
        """A L{Later} piece was read (L{_pump}): write on, or give the replies up."""
        self.pending.discard(d)
        later = self._later
        if later is None:
            return
        if self.closed or not isinstance(result, bytes):
            if isinstance(result, Failure) and not result.check(defer.CancelledError):
                # Its record's head may be out already: the stream cannot go on.
                self._log.failure(
                    "connection {conn_id}: reading a READ reply's data",
                    result,
                    conn_id=self.conn_id,
                )
                self.closed = True
                self.transport.abortConnection()
            # (The first piece is the one read: its read closes its descriptor.)
            self._held -= len(later[0][0])
            later[0] = later[0][1:]
            for parts in later:
                for p in parts:
                    if type(p) is Later:
                        p.close()
                self._held -= _size(parts)
            self._later = None
            return
        later[0][0] = result
        if self._pump():
            self._drain_backlog()

    def _out(self, parts: list[Any], size: int) -> None:
        """Hand reply bytes to the transport (counted while the client reads none)."""
        if self._paused_output:
            # Queued behind replies the client has not read: counted (in
            # max_queued_bytes and the memory budget) until it reads them
            # (the transport resumes us once its buffer is empty).
            self._queued += size
            if self._budget is not None:
                self._budget.hold(size)
        self.transport.writeSequence(parts)

    def _release_queued(self) -> None:
        n, self._queued = self._queued, 0
        if n and self._budget is not None:
            self._budget.release(n)

    # IPushProducer: the transport tells us when the client is not reading replies.
    def pauseProducing(self) -> None:
        self._paused_output = True
        self._pause_reading()

    def resumeProducing(self) -> None:
        self._paused_output = False
        self._release_queued()
        self._drain_backlog()

    def stopProducing(self) -> None:
        self.closed = True
        self._release_queued()

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        w, self._watch = self._watch, None
        if w is not None and w.active():
            w.cancel()
        self._release_queued()
        # Reads are abandoned; calls that change things run to the end (the
        # server shields them), so their replies reach the reply cache for the
        # client's retransmission.
        for d in list(self.pending):
            d.cancel()
        if self.activity is not None:
            self.activity.connection_lost(self)
        hooks, self.on_close = self.on_close, []
        for hook in hooks:
            try:
                hook(self)
            except Exception:
                self._log.failure("connection {conn_id}: a close hook", conn_id=self.conn_id)
        self._log.debug("connection {conn_id} closed", conn_id=self.conn_id)


class RPCStreamFactory(Factory):
    """Builds L{RPCStreamProtocol}s that share one L{RPCServer}."""

    noisy = False

    def __init__(
        self,
        server: RPCServer,
        max_record: int,
        max_in_flight: int = 128,
        activity: Any = None,
        activity_for: Callable[[int, int], Any] | None = None,
        *,
        clock: Any = None,
        idle_timeout: float = 0.0,
        partial_timeout: float = 0.0,
        metrics: Any = None,
        budget: Any = None,
        max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
    ) -> None:
        """
        @param max_queued_bytes: what one connection's calls running (each
            with the reply its procedure may return) and replies queued
            unread may hold before it stops reading (C{nfs.max_queued_bytes_per_connection}).
        @param clock: what times C{idle_timeout} and C{partial_timeout}
            (seconds; 0 = never); without one neither applies.
        @param metrics: a L{RequestMetrics}: timeouts counted as rejections.
        @param budget: the gateway-wide L{claudefs_gateway.core.budget.MemoryBudget}:
            calls left running (one answered at once holds nothing) and
            replies queued unread count in it (the programs refuse new calls
            while it is spent).
        """
        self.budget = budget
        self.max_queued_bytes = max_queued_bytes
        self.server = server
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.partial_timeout = partial_timeout
        self.metrics = metrics
        self.max_record = max_record
        self.max_in_flight = max_in_flight
        self.activity = activity
        #: C{activity_for(prog, vers)}: the activity a connection is counted
        #: under once its first call names a program and version (NFSv3 and
        #: NFSv4 share a port; each connection is counted as the version it
        #: speaks), or None to keep C{activity}.
        self.activity_for = activity_for

    @override
    def buildProtocol(self, addr: Any) -> RPCStreamProtocol:
        p = RPCStreamProtocol(
            self.server, self.max_record, self.max_in_flight, self.activity, self.max_queued_bytes
        )
        p.factory = self
        return p


class RPCDatagramProtocol(DatagramProtocol):
    """
    ONC RPC over UDP: one call per datagram, replies to the sender.

    @param max_in_flight: calls running at once; datagrams beyond are dropped
        (UDP clients retransmit).
    """

    transport: Any

    _log = Logger()
    noisy = False

    def __init__(self, server: RPCServer, max_in_flight: int = 1024) -> None:
        self.server = server
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.accepting = True
        self.dropped = 0

    @override
    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if not self.accepting or self.in_flight >= self.max_in_flight:
            self.dropped += 1
            return
        host, port = addr[0], addr[1]
        if host.startswith("::ffff:"):
            host = host[7:]
        peer = Peer(host, port, "udp", UDP_MAX_REPLY)
        try:
            result = self.server.handle(data, peer)
        except Exception:
            self._log.failure("serving a datagram from {host}", host=host)
            return
        if result is None:
            return
        if isinstance(result, defer.Deferred):
            self.in_flight += 1
            result.addBoth(self._done, addr)
        else:
            self._send(result, addr)

    def _done(self, result: Results | Failure | None, addr: Any) -> None:
        self.in_flight -= 1
        if isinstance(result, list):
            self._send(result, addr)
        elif isinstance(result, Failure):
            self._log.failure("datagram call failed", result)

    def _send(self, chunks: Results, addr: Any) -> None:
        data = b"".join(chunks)
        if len(data) > UDP_MAX_REPLY:
            self._log.warn("reply of {n} bytes too large for UDP; dropped", n=len(data))
            return
        if self.transport is None:
            return
        try:
            self.transport.write(data, addr)
        except Exception:
            self._log.failure("sending a datagram to {host}", host=addr[0])


class UDPListener(Service):
    """
    One UDP port serving an L{RPCServer} (endpoints are stream-only, so this
    is the gateway's L{ListenerService} for datagrams).

    Binds in C{privilegedStartService} (port 111 before twistd drops
    privileges) and raises if it cannot. For the drain, L{stop_accepting}
    stops taking new calls but keeps the port open so calls in flight can
    still reply; C{stopService} closes it.
    """

    _log = Logger()

    def __init__(
        self,
        name: str,
        label: str,
        host: str,
        port: int,
        protocol: RPCDatagramProtocol,
        reactor: Any,
    ) -> None:
        self.name = name
        self.label = label
        self.host = host
        self.port_number = port
        self.protocol = protocol
        self.reactor = reactor
        self.port: Any = None
        self._stopped_accepting = False

    @property
    def bound_port(self) -> int | None:
        if self.port is None:
            return None
        return int(self.port.getHost().port)

    @override
    def privilegedStartService(self) -> None:
        if self.port is not None:
            return
        try:
            self.port = self.reactor.listenUDP(self.port_number, self.protocol, interface=self.host)
        except Exception as e:
            self._log.error(
                "{label}: cannot listen on {host}:{port}: {why}",
                label=self.label,
                host=self.host,
                port=self.port_number,
                why=str(e),
            )
            raise
        self._log.info(
            "{label} listening on {where}",
            label=self.label,
            where=f"{self.host}:{self.bound_port}",
            port=self.bound_port,
            listener=self.label,
        )

    @override
    def startService(self) -> None:
        super().startService()
        self.privilegedStartService()

    def stop_accepting(self) -> defer.Deferred[None]:
        self._stopped_accepting = True
        self.protocol.accepting = False
        return defer.succeed(None)

    @override
    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        self.protocol.accepting = False
        if self.port is None:
            return None
        port, self.port = self.port, None
        return defer.maybeDeferred(port.stopListening)

    def check(self) -> Any:
        from claudefs_gateway.core.health import CheckResult

        if self.port is not None and not self._stopped_accepting:
            return CheckResult.healthy()
        if self._stopped_accepting:
            return CheckResult.unhealthy("draining: not accepting calls")
        return CheckResult.unhealthy("not listening")
