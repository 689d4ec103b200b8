"""Tests for L{claudefs_gateway.core.drain}: the one graceful shutdown."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.core.drain import CLOSE_GRACE, Activity, Drainer, TrackingFactory
from claudefs_gateway.core.metrics import Metrics


class FakeListener:
    def __init__(self, name: str = "l") -> None:
        self.name = name
        self.accepting = True

    def stop_accepting(self) -> defer.Deferred[None]:
        self.accepting = False
        return defer.succeed(None)


class Conn(Protocol):
    """A connection whose transport records closing; closes for real when told."""

    def __init__(self, activity, obeys: bool = True) -> None:
        self.activity = activity
        self.obeys = obeys
        self.transport = StringTransport()
        self.transport.loseConnection = self._lose  # type: ignore[method-assign]
        self.transport.abortConnection = self._abort  # type: ignore[attr-defined]
        self.aborted = False
        activity.connection_made(self)

    def _lose(self) -> None:
        if self.obeys:
            self.activity.connection_lost(self)

    def _abort(self) -> None:
        self.aborted = True
        self.activity.connection_lost(self)


class DrainerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics()
        self.drainer = Drainer(self.clock, self.metrics)
        self.listener = FakeListener()
        self.drainer.add_listener(self.listener)
        self.act = self.drainer.activity("nfs3")

    def test_idle_gateway_drains_at_once(self) -> None:
        d = self.drainer.drain(30)
        result = self.successResultOf(d)
        self.assertFalse(self.listener.accepting)
        self.assertEqual((result.in_flight_abandoned, result.connections_aborted), (0, 0))
        self.assertEqual(self.drainer.state, "drained")

    def test_in_flight_finishes_before_close(self) -> None:
        """Listeners stop first; connections close only once in-flight requests end."""
        conn = Conn(self.act)
        self.act.begin()
        d = self.drainer.drain(30)
        self.assertFalse(self.listener.accepting)
        self.assertEqual(self.drainer.state, "draining")
        self.assertTrue(self.act.draining)
        self.assertIn(conn, self.act.connections)
        self.clock.advance(10)
        self.assertNoResult(d)
        self.act.end()
        result = self.successResultOf(d)
        self.assertEqual(result.in_flight_abandoned, 0)
        self.assertNotIn(conn, self.act.connections)
        self.assertFalse(conn.aborted)

    def test_deadline_cuts_off(self) -> None:
        """At the deadline, stuck requests are abandoned and connections closed."""
        Conn(self.act)
        self.act.begin()
        d = self.drainer.drain(5)
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        result = self.successResultOf(d)
        self.assertEqual(result.in_flight_abandoned, 1)
        self.assertEqual(result.seconds, 5)

    def test_stubborn_connection_aborted(self) -> None:
        """A connection that ignores loseConnection is aborted after the grace period."""
        conn = Conn(self.act, obeys=False)
        d = self.drainer.drain(5)
        self.assertNoResult(d)
        self.clock.advance(CLOSE_GRACE)
        result = self.successResultOf(d)
        self.assertTrue(conn.aborted)
        self.assertEqual(result.connections_aborted, 1)

    def test_second_drain_shares_outcome(self) -> None:
        self.act.begin()
        d1 = self.drainer.drain(30)
        d2 = self.drainer.drain(1)
        self.act.end()
        first = self.successResultOf(d1)
        self.assertIs(self.successResultOf(d2), first)
        self.assertIs(self.successResultOf(self.drainer.drain(0)), first)

    def test_drained_watches_without_starting(self) -> None:
        """drained() fires after the drain's own callers, and does not start a drain."""
        order: list[str] = []
        watched = self.drainer.drained()
        watched.addCallback(lambda r: order.append("watcher"))
        self.assertEqual(self.drainer.state, "running")
        self.act.begin()
        d = self.drainer.drain(30)
        d.addCallback(lambda r: order.append("caller"))
        self.act.end()
        self.assertEqual(order, ["caller", "watcher"])
        self.assertEqual(self.successResultOf(self.drainer.drained()).in_flight_abandoned, 0)

    def test_track_deferred(self) -> None:
        d: defer.Deferred[int] = defer.Deferred()
        self.assertIs(self.act.track(d), d)
        self.assertEqual(self.drainer.in_flight, 1)
        d.callback(3)
        self.assertEqual(self.drainer.in_flight, 0)
        self.assertEqual(self.successResultOf(d), 3)

    def test_status_and_gauges(self) -> None:
        Conn(self.act)
        self.act.begin()
        self.assertEqual(
            self.drainer.status(), {"state": "running", "in_flight": 1, "connections": 1}
        )
        self.drainer.drain(30)
        reg = self.metrics.registry
        self.assertEqual(reg.get_sample_value("gateway_draining"), 1)
        self.assertEqual(
            reg.get_sample_value("gateway_in_flight_requests", {"protocol": "nfs3"}), 1
        )
        self.assertEqual(
            reg.get_sample_value("gateway_active_connections", {"protocol": "nfs3"}), 1
        )

    def test_max_connections(self) -> None:
        """
        With max_connections, one connection more than the limit is aborted at
        once, never counted as open, and counted as rejected; the limit is
        exported as gateway_max_connections.
        """
        drainer = Drainer(self.clock, self.metrics, max_connections=2)
        act = drainer.activity("smb")
        first, second = Conn(act), Conn(act)
        third = Conn(act)
        self.assertTrue(third.aborted)
        self.assertEqual(act.connections, {first, second})
        reg = self.metrics.registry
        self.assertEqual(reg.get_sample_value("gateway_max_connections", {"protocol": "smb"}), 2)
        self.assertEqual(reg.get_sample_value("gateway_active_connections", {"protocol": "smb"}), 2)
        self.assertEqual(
            reg.get_sample_value(
                "gateway_rejected_requests_total", {"protocol": "smb", "reason": "max_connections"}
            ),
            1,
        )
        first.transport.loseConnection()
        self.assertFalse(Conn(act).aborted)

    def test_max_connections_per_client(self) -> None:
        """
        With max_per_client, a client address holding that many connections
        has its next one aborted and counted; other addresses are unaffected,
        and a closed connection frees its place.
        """
        from twisted.internet.address import IPv4Address

        def conn(act: Activity, host: str) -> Conn:
            c = Conn.__new__(Conn)
            c.activity, c.obeys, c.aborted = act, True, False
            c.transport = StringTransport(peerAddress=IPv4Address("TCP", host, 1000))
            c.transport.loseConnection = c._lose  # type: ignore[method-assign]
            c.transport.abortConnection = c._abort  # type: ignore[attr-defined]
            act.connection_made(c)
            return c

        drainer = Drainer(self.clock, self.metrics, max_per_client=2)
        act = drainer.activity("nfs")
        a1, a2 = conn(act, "10.0.0.1"), conn(act, "10.0.0.1")
        self.assertTrue(conn(act, "10.0.0.1").aborted)
        self.assertFalse(conn(act, "10.0.0.2").aborted)
        reg = self.metrics.registry
        self.assertEqual(
            reg.get_sample_value(
                "gateway_rejected_requests_total",
                {"protocol": "nfs", "reason": "max_connections_per_client"},
            ),
            1,
        )
        self.assertEqual(
            reg.get_sample_value("gateway_max_connections_per_client", {"protocol": "nfs"}), 2
        )
        a1.transport.loseConnection()
        self.assertFalse(conn(act, "10.0.0.1").aborted)
        self.assertEqual(len(act.connections), 3)
        del a2

    def test_no_limit_by_default(self) -> None:
        """max_connections 0 (the default) is no limit, exported as 0."""
        conns = [Conn(self.act) for _ in range(50)]
        self.assertFalse(any(c.aborted for c in conns))
        reg = self.metrics.registry
        self.assertEqual(reg.get_sample_value("gateway_max_connections", {"protocol": "nfs3"}), 0)

    def test_failing_listener_does_not_stop_drain(self) -> None:
        class Broken(FakeListener):
            def stop_accepting(self) -> defer.Deferred[None]:
                return defer.fail(RuntimeError("cannot"))

        self.drainer.add_listener(Broken("broken"))
        self.successResultOf(self.drainer.drain(1))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class TrackingFactoryTests(SynchronousTestCase):
    def test_counts_connections(self) -> None:
        drainer = Drainer(Clock(), Metrics())
        act = drainer.activity("admin")
        factory = TrackingFactory(Factory.forProtocol(Protocol), act)
        proto = factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        self.assertEqual(len(act.connections), 1)
        proto.connectionLost(None)
        self.assertEqual(len(act.connections), 0)
