"""
Issue 19: what one SMB connection may hold, and for how long it may sit idle
or half-open (StringTransport and Clock; the real-listener test is in
tests/test_bounds_live.py).
"""

from __future__ import annotations

import struct

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.core.budget import MemoryBudget
from claudefs_gateway.smb import constants as c
from claudefs_gateway.smb import ntstatus as st
from tests.smb.client import CONFIG, Conn, Wire


def read_msg(conn: Conn, fid: tuple[int, int], offset: int, length: int) -> bytes:
    body = struct.pack("<HBBIQQQIIIHH", 49, 0, 0, length, offset, *fid, 0, 0, 0, 0, 0) + b"\x00"
    charge = max(1, (length - 1) // 65536 + 1)
    return conn.build(conn.header(c.Command.READ, credit_charge=charge, credits=64), body)


def gated_reads(testcase: SynchronousTestCase, wire: Wire) -> defer.Deferred[None]:
    """Make the backend's reads wait for the returned Deferred."""
    gate: defer.Deferred[None] = defer.Deferred()
    real = wire.mvfs.backend.read

    def slow(*args: object, **kw: object) -> object:
        d: defer.Deferred[None] = defer.Deferred()
        gate.addCallback(lambda _: d.callback(None))
        return d.addCallback(lambda _: real(*args, **kw))

    testcase.patch(wire.mvfs.backend, "read", slow)
    return gate


def ready(wire: Wire, size: int = 1 << 20) -> tuple[Conn, tuple[int, int]]:
    conn = wire.connect().setup()
    conn.call(c.Command.ECHO, b"\x04\x00\x00\x00", credits=4000)
    fid = conn.open("f")
    conn.write(fid, 0, b"d" * size)
    conn.transport.clear()
    return conn, fid


class NonReadingClientTests(SynchronousTestCase):
    def test_unread_replies_stop_reading(self) -> None:
        """
        While the transport says the client leaves replies unread, the
        connection serves nothing more of what it has read and stops reading;
        once the client reads, the held requests are served.
        """
        wire = Wire()
        conn, fid = ready(wire)
        conn.proto.pauseProducing()  # as the transport does when its buffer fills
        self.assertEqual(conn.transport.producerState, "paused")
        for i in range(10):
            conn.send([read_msg(conn, fid, i * 65536, 65536)])
        self.assertEqual(conn.transport.value(), b"")
        conn.proto.resumeProducing()
        self.assertEqual(conn.transport.producerState, "producing")
        replies = conn.replies()
        self.assertEqual([r.status for r in replies], [0] * 10)

    def test_no_new_credits_while_backed_up(self) -> None:
        """A connection whose client leaves replies unread is granted no credits beyond one."""
        wire = Wire()
        conn, fid = ready(wire)
        proto = conn.proto
        before = proto.credits.outstanding
        gate = gated_reads(self, wire)
        for i in range(4):
            conn.send([read_msg(conn, fid, i * 65536, 65536)])
        proto.pauseProducing()
        gate.callback(None)
        replies = conn.replies()
        self.assertEqual(len(replies), 4)
        self.assertEqual([r.header.credits for r in replies], [0, 0, 0, 0])
        self.assertEqual(proto.credits.outstanding, before - 4)
        # Draining again: credits are granted as asked.
        proto.resumeProducing()
        r = conn.read(fid, 0, 65536)
        self.assertEqual(r.header.credits, 32)

    def test_credits_scale_with_what_drained(self) -> None:
        """
        Past half of max_queued_bytes_per_connection, a client holding few
        credits is granted what the room left can take (one credit per 64 KiB
        left, less what it holds), more as its READs are answered; below half
        again, the credits it asks for.
        """
        wire = Wire(CONFIG + "smb: {max_queued_bytes_per_connection: 1MiB}\n")
        conn = wire.connect().setup()
        fid = conn.open("f")
        conn.write(fid, 0, b"d" * (1 << 20))
        conn.transport.clear()
        proto = conn.proto
        gate = gated_reads(self, wire)
        for i in range(12):
            conn.send([read_msg(conn, fid, i * 65536, 65536)])
        # Twelve READs of 64 KiB waiting: about 770 KiB held of 1 MiB.
        self.assertGreater(proto._in_flight * 2, 1 << 20)
        # The client spends every credit it holds on ECHOs asking for none:
        # the last is granted the one it must never lack.
        echoes = [
            conn.call(c.Command.ECHO, b"\x04\x00\x00\x00", credits=0).header.credits
            for _ in range(proto.credits.outstanding)
        ]
        self.assertEqual(echoes[-1], 1)
        self.assertEqual(sum(echoes), 1)
        self.assertEqual(proto.credits.outstanding, 1)
        gate.callback(None)
        grants = [r.header.credits for r in conn.replies()]
        # Each reply asks for 64: room for 3, 4, 5, 6, 7 credits as the READs
        # are answered one by one (less what the client holds by then); then
        # below half of the bound, what was asked.
        self.assertEqual(grants, [2, 1, 1, 1, 1] + [64] * 7)

    def test_queued_bytes_bounded(self) -> None:
        """
        READs whose replies would pass max_queued_bytes_per_connection are not
        started: reading pauses until replies go out.
        """
        wire = Wire(CONFIG + "smb: {max_queued_bytes_per_connection: 1MiB}\n")
        conn, fid = ready(wire)
        gate = gated_reads(self, wire)
        for i in range(40):
            conn.send([read_msg(conn, fid, i * 65536, 65536)])
        self.assertEqual(conn.transport.producerState, "paused")
        # 1 MiB / (64 KiB + request + reply headers) is 15.9: the 16th
        # reaches the bound, and the rest are held.
        self.assertEqual(conn.proto._requests, 16)
        self.assertGreater(len(conn.proto._buf), 0)
        gate.callback(None)
        self.assertEqual(len(conn.replies()), 40)
        self.assertEqual(conn.transport.producerState, "producing")
        self.assertEqual((conn.proto._requests, conn.proto._in_flight), (0, 0))

    def test_requests_in_flight_bounded(self) -> None:
        wire = Wire(CONFIG + "smb: {max_requests_per_connection: 4}\n")
        conn, fid = ready(wire)
        gate = gated_reads(self, wire)
        for _ in range(10):
            conn.send([read_msg(conn, fid, 0, 512)])
        self.assertEqual(conn.proto._requests, 4)
        self.assertEqual(conn.transport.producerState, "paused")
        gate.callback(None)
        self.assertEqual(len(conn.replies()), 10)

    def test_async_requests_hold_nothing(self) -> None:
        """
        Requests gone asynchronous (CHANGE_NOTIFY) do not count against the
        bounds: a client waiting on many can still send its next request.
        """
        wire = Wire(CONFIG + "smb: {max_requests_per_connection: 2}\n")
        conn = wire.connect().setup()
        conn.call(c.Command.ECHO, b"\x04\x00\x00\x00", credits=100)
        d = conn.open("", access=c.GENERIC_READ)
        for _ in range(5):
            self.assertEqual(conn.notify(d).status, st.STATUS_PENDING)
        self.assertEqual(conn.transport.producerState, "producing")
        self.assertEqual(conn.proto._requests, 0)
        self.assertEqual(conn.call(c.Command.ECHO, b"\x04\x00\x00\x00").status, 0)


class MemoryBudgetTests(SynchronousTestCase):
    def test_over_budget_is_insufficient_resources(self) -> None:
        """
        A request that would pass the gateway-wide memory budget is answered
        STATUS_INSUFFICIENT_RESOURCES unserved and counted; later ones pass.
        """
        wire = Wire()
        budget = wire.factory.budget = MemoryBudget(150 * 1024, wire.metrics)
        conn, fid = ready(wire)
        gate = gated_reads(self, wire)
        conn.send([read_msg(conn, fid, 0, 65536)])
        conn.send([read_msg(conn, fid, 0, 65536)])
        r = conn.read(fid, 0, 65536)  # the third passes 150 KiB
        self.assertEqual(r.status, st.STATUS_INSUFFICIENT_RESOURCES)
        self.assertGreater(r.header.credits, 0)
        got = wire.metrics.registry.get_sample_value(
            "gateway_rejected_requests_total", {"protocol": "smb", "reason": "memory"}
        )
        self.assertEqual(got, 1)
        gate.callback(None)
        self.assertEqual(budget.used, 0)
        self.assertEqual(conn.read(fid, 0, 65536).status, 0)
        self.flushLoggedErrors()


class TimeoutTests(SynchronousTestCase):
    def test_idle_closed(self) -> None:
        """A connection idle for smb.idle_timeout_secs with no open file is closed."""
        wire = Wire(CONFIG + "smb: {idle_timeout_secs: 60}\n")
        conn = wire.connect().setup()
        wire.clock.advance(50)
        conn.call(c.Command.ECHO, b"\x04\x00\x00\x00")
        wire.clock.pump([5] * 10)  # 100 s since connecting, 50 since the echo
        self.assertFalse(conn.transport.disconnecting)
        wire.clock.pump([5] * 4)
        self.assertTrue(conn.transport.disconnecting)
        got = wire.metrics.registry.get_sample_value(
            "gateway_rejected_requests_total", {"protocol": "smb", "reason": "timeout"}
        )
        self.assertEqual(got, 1)

    def test_idle_with_open_file_kept(self) -> None:
        """An open (not durable) file keeps an idle connection, as Samba's deadtime."""
        wire = Wire(CONFIG + "smb: {idle_timeout_secs: 60}\n")
        conn = wire.connect().setup()
        conn.open("kept")
        wire.clock.pump([10] * 20)
        self.assertFalse(conn.transport.disconnecting)

    def test_no_session_closed(self) -> None:
        """A connection that never authenticates is closed after setup_timeout_secs."""
        wire = Wire(CONFIG + "smb: {setup_timeout_secs: 30, idle_timeout_secs: 0}\n")
        conn = wire.connect()
        conn.negotiate()
        wire.clock.pump([3] * 9)
        self.assertFalse(conn.transport.disconnecting)
        wire.clock.pump([3] * 2)
        self.assertTrue(conn.transport.disconnecting)

    def test_half_sent_closed(self) -> None:
        """A message begun and never finished closes its (logged-on) connection."""
        wire = Wire(CONFIG + "smb: {setup_timeout_secs: 30}\n")
        conn = wire.connect().setup()
        conn.proto.dataReceived(b"\x00\x00\x10\x00\xfeSMB")
        wire.clock.pump([3] * 11)
        self.assertTrue(conn.transport.disconnecting)

    def test_off(self) -> None:
        wire = Wire(CONFIG + "smb: {setup_timeout_secs: 0, idle_timeout_secs: 0}\n")
        conn = wire.connect()
        wire.clock.pump([100] * 100)
        self.assertFalse(conn.transport.disconnecting)
        self.assertEqual(wire.clock.getDelayedCalls(), [])


class IdleDurableTests(SynchronousTestCase):
    def test_durable_handle_survives_idle_close(self) -> None:
        """
        A connection whose only opens are durable is closed when idle; the
        open is reclaimed on a new connection (DHnC), as after any disconnect.
        """
        from twisted.python.failure import Failure

        from tests.smb.test_durable import BATCH, DHNQ, dhnc

        wire = Wire(CONFIG + "smb: {idle_timeout_secs: 60}\n")
        a = wire.connect().setup()
        r = a.create("d", oplock=BATCH, contexts=[DHNQ])
        self.assertEqual(r.status, 0)
        fid = r.file_id()
        self.assertEqual(a.write(fid, 0, b"kept").status, 0)
        wire.clock.pump([6] * 12)
        self.assertTrue(a.transport.disconnecting)
        a.proto.connectionLost(Failure(ConnectionError("closed")))
        b = wire.connect().setup()
        r = b.create("d", contexts=[dhnc(fid)])
        self.assertEqual(r.status, 0)
        self.assertEqual(b.read_data(b.read(r.file_id(), 0, 4)), b"kept")


class BadInputLogTests(SynchronousTestCase):
    def test_flood_of_bad_frames_logs_once_a_minute(self) -> None:
        """
        Connections from one host that each send a frame that is not SMB are
        each closed and counted, but logged at most once a minute (with the
        number held back), so a hostile client cannot flood the log.
        """
        from twisted.logger import globalLogPublisher

        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        wire = Wire()

        def bad() -> Conn:
            conn = wire.connect()
            conn.proto.dataReceived(struct.pack(">I", 8) + b"NOTSMB!!")
            self.assertTrue(conn.transport.disconnecting)
            return conn

        for _ in range(50):
            bad()
        lines = [e for e in events if "closing connection from" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1)
        wire.clock.advance(61)
        bad()
        lines = [e for e in events if "closing connection from" in e.get("log_format", "")]
        self.assertEqual([e["held"] for e in lines], [0, 49])
