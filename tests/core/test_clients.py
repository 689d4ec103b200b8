"""Tests for L{claudefs_gateway.core.clients}: the table behind ``cfs-gateway status``."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.cli import format_status
from claudefs_gateway.core.clients import ClientTable, summarize
from claudefs_gateway.core.drain import Drainer
from claudefs_gateway.core.metrics import Metrics


class Conn(Protocol):
    def __init__(self, peer: Any, facts: dict[str, Any] | None = None) -> None:
        self.transport = StringTransport(peerAddress=peer)
        self.facts = facts

    def describe(self) -> dict[str, Any]:
        if self.facts is None:
            raise RuntimeError("broken describe")
        return self.facts


class ClientTableTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.table = ClientTable(self.clock)

    def test_rows_from_the_connection_and_its_description(self) -> None:
        """
        Address, port and age come from the connection; user, dialect, opens,
        locks and leases from its describe(); other facts pass through.
        """
        smb = Conn(
            IPv4Address("TCP", "10.0.0.5", 50122),
            {"user": "alice", "dialect": "SMB 3.1.1", "opens": 3, "leases": 1, "sessions": 1},
        )
        self.table.add("smb", smb)
        self.clock.advance(42)
        [row] = self.table.snapshot()
        self.assertEqual(
            {k: row[k] for k in ("protocol", "address", "port", "connected_secs", "user")},
            {
                "protocol": "smb",
                "address": "10.0.0.5",
                "port": 50122,
                "connected_secs": 42,
                "user": "alice",
            },
        )
        self.assertEqual((row["opens"], row["locks"], row["leases"], row["sessions"]), (3, 0, 1, 1))

    def test_uid_named_and_locks_counted(self) -> None:
        """A uid without a name is looked up; a lock client without a count is counted."""
        nfs = Conn(
            IPv6Address("TCP", "::ffff:10.0.0.7", 800),
            {"uid": 1000, "dialect": "NFSv3", "lock_client": ["nlm", "host7"]},
        )
        self.table.add("nfs3", nfs)
        [row] = self.table.snapshot(
            user_of={1000: "alice"}.get,
            locks_of=lambda p, c: 4 if (p, c) == ("nlm", "host7") else 0,
        )
        self.assertEqual((row["address"], row["user"], row["locks"]), ("10.0.0.7", "alice", 4))
        self.assertNotIn("lock_client", row)

    def test_without_describe_or_failing(self) -> None:
        """A connection with no describe(), or one that raises, still has its row."""
        plain = Protocol()
        plain.transport = StringTransport(peerAddress=UNIXAddress(b"/run/x.sock"))  # type: ignore[assignment]
        self.table.add("admin", plain)
        self.table.add("s3", Conn(IPv4Address("TCP", "10.0.0.1", 1)))
        rows = self.table.snapshot()
        self.assertEqual(
            [(r["protocol"], r["address"]) for r in rows],
            [("admin", "unix:/run/x.sock"), ("s3", "10.0.0.1")],
        )
        self.assertEqual(rows[1]["user"], None)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_remove(self) -> None:
        c = Conn(IPv4Address("TCP", "10.0.0.1", 1), {})
        self.table.add("s3", c)
        self.table.remove(c)
        self.table.remove(c)
        self.assertEqual(self.table.snapshot(), [])

    def test_summary_and_text(self) -> None:
        """The per-protocol summary, and cfs-gateway status's text from the document."""
        self.table.add(
            "smb",
            Conn(IPv4Address("TCP", "10.0.0.5", 5), {"user": "alice", "opens": 2, "locks": 1}),
        )
        self.table.add("smb", Conn(IPv4Address("TCP", "10.0.0.6", 6), {"user": "bob", "opens": 1}))
        self.table.add(
            "nfs3", Conn(IPv6Address("TCP", "fe80::1", 7), {"uid": 0, "dialect": "NFSv3"})
        )
        rows = self.table.snapshot()
        summary = summarize(rows)
        self.assertEqual(summary["smb"], {"connections": 2, "opens": 3, "locks": 1, "leases": 0})
        doc = {
            "connections": rows,
            "summary": summary,
            "lock_clients": [
                {"protocol": "nlm", "client": "host7", "locks": 2, "shares": 0, "waiting": 1}
            ],
        }
        text = format_status(doc)
        self.assertIn("[fe80::1]:7", text)
        self.assertIn("uid 0", text)
        self.assertIn("host7", text)
        only = format_status(doc, "smb")
        self.assertIn("alice", only)
        self.assertNotIn("NFSv3", only)
        self.assertNotIn("host7", only)
        self.assertIn("(no client connections)", format_status({"connections": []}))

    def test_shared_state_counted_once(self) -> None:
        """
        Rows naming the same C{state_of} (one NFSv4 client over two
        connections) show its opens, locks and leases each, and the summary
        and the metrics figures count them once.
        """
        facts = {"opens": 2, "locks": 1, "leases": 1, "state_of": "nfs4:00000001"}
        for port in (1, 2):
            self.table.add("nfs4", Conn(IPv4Address("TCP", "10.0.0.5", port), dict(facts)))
        other = {"opens": 1, "locks": 0, "leases": 0, "state_of": "nfs4:00000002"}
        self.table.add("nfs4", Conn(IPv4Address("TCP", "10.0.0.6", 3), other))
        rows = self.table.snapshot()
        self.assertEqual([r["locks"] for r in rows], [1, 1, 0])
        self.assertEqual(
            summarize(rows)["nfs4"], {"connections": 3, "opens": 3, "locks": 1, "leases": 1}
        )
        self.assertEqual(self.table.counts()["nfs4"], {"opens": 3, "leases": 1})

    def test_nfs_sections_of_the_text(self) -> None:
        """
        NFSv4 clients (as ganesha_mgr lists them) and the NLM clients of each
        NFSv3 connection's host get a section each; a client shown by two
        connections of one row appears once per connection.
        """
        v4 = {
            "clientid": "5f3a1c2e00000001",
            "owner": "Linux NFSv4.2 client1",
            "uid": 1000,
            "sessions": [{"id_prefix": "0a1b2c3d"}],
            "opens": 2,
            "locks": 1,
            "delegations": {"read": 1, "write": 0},
            "layouts": {"read": 0, "rw": 1},
            "lease_left_secs": 75,
        }
        doc = {
            "connections": [
                {
                    "id": 4,
                    "protocol": "nfs4",
                    "address": "10.0.0.7",
                    "port": 801,
                    "dialect": "NFSv4.2",
                    "nfs4_clients": [v4],
                },
                {
                    "id": 5,
                    "protocol": "nfs3",
                    "address": "10.0.0.8",
                    "port": 802,
                    "dialect": "NFSv3+NLMv4",
                    "locks": 2,
                    "nlm_clients": [
                        {"caller_name": "client2", "locks": 2, "shares": 0, "waiting": 1}
                    ],
                },
            ],
            "summary": {},
        }
        text = format_status(doc)
        self.assertIn("NFSv4 clients:", text)
        [line] = [ln for ln in text.splitlines() if "5f3a1c2e00000001" in ln]
        self.assertEqual(
            line.split(),
            ["4", "5f3a1c2e00000001", "Linux", "NFSv4.2", "client1", "1000"]
            + ["1", "2", "1", "1/0", "1", "1m15s"],
        )
        [line] = [ln for ln in text.splitlines() if "client2" in ln]
        self.assertEqual(line.split(), ["5", "10.0.0.8:802", "client2", "2", "0", "1"])
        self.assertNotIn("client2", format_status(doc, "nfs4"))


class ActivityEntersTableTests(SynchronousTestCase):
    def test_activity_adds_and_removes(self) -> None:
        """Every connection an Activity counts is in the table; a refused one is not."""
        table = ClientTable(Clock())
        drainer = Drainer(Clock(), Metrics(), max_connections=1, clients=table)
        act = drainer.activity("smb")
        first = Conn(IPv4Address("TCP", "10.0.0.1", 1), {})
        second = Conn(IPv4Address("TCP", "10.0.0.2", 2), {})
        self.assertTrue(act.connection_made(first))
        self.assertFalse(act.connection_made(second))
        self.assertEqual([r.address for r in table.rows()], ["10.0.0.1"])
        act.connection_lost(first)
        self.assertEqual(len(table), 0)
