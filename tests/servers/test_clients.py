"""The meta server's client records and cross-gateway grace (servers/clients.py), on a Clock."""

from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway import errors
from claudefs_gateway.servers.clients import ClientRegistry
from claudefs_gateway.servers.shared import SharedState

OWNER = ("nlm", b"s:host", b"1")


class RegistryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.events: list[tuple[str, Any]] = []
        self.reg = ClientRegistry(self.clock, lambda n, v: self.events.append((n, v)), grace=30)

    def test_records_capped(self) -> None:
        """
        At most C{MAX_RECORDS} clients are recorded (a client flood cannot
        grow the meta server without bound); a recorded client still moves.
        """
        from claudefs_gateway.servers import clients

        self.patch(clients, "MAX_RECORDS", 2)
        self.reg.note(1, "nfs4", b"a")
        self.reg.note(1, "nlm", b"b")
        self.reg.note(1, "nfs4", b"c")
        self.reg.reclaimed(1, "nfs4", b"d")
        self.assertEqual(sorted(self.reg.records), [("nfs4", b"a"), ("nlm", b"b")])
        self.reg.note(2, "nfs4", b"a")
        self.assertEqual(self.reg.records[("nfs4", b"a")].session, 2)

    def test_gone_session_starts_grace(self) -> None:
        """A gone gateway's clients become reclaimable; grace is announced with them."""
        self.reg.note(1, "nfs4", b"alice")
        self.reg.note(2, "nfs4", b"bob")
        self.assertFalse(self.reg.in_grace)
        self.reg.session_gone(1)
        self.assertTrue(self.reg.in_grace)
        self.assertTrue(self.reg.may_reclaim("nfs4", b"alice"))
        self.assertFalse(self.reg.may_reclaim("nfs4", b"bob"), "bob's gateway is alive")
        self.assertEqual(self.events[-1], ("EV_GRACE", (30000, [("nfs4", b"alice")], [])))

    def test_grace_ends_when_all_reclaimed(self) -> None:
        """RECLAIM_COMPLETE of the last reclaimable NFSv4 client ends grace early."""
        for who in (b"alice", b"carol"):
            self.reg.note(1, "nfs4", who)
        self.reg.session_gone(1)
        self.clock.advance(5)
        self.reg.reclaimed(3, "nfs4", b"alice")
        self.assertTrue(self.reg.in_grace)
        self.assertEqual(self.events[-1], ("EV_GRACE", (25000, [("nfs4", b"carol")], [])))
        self.reg.forget(3, "nfs4", b"carol")
        self.assertFalse(self.reg.in_grace)
        self.assertEqual(self.events[-1], ("EV_GRACE", (0, [], [])))
        self.assertEqual(self.reg.records[("nfs4", b"alice")].session, 3)

    def test_nlm_client_keeps_grace_to_its_end(self) -> None:
        """NLM has no RECLAIM_COMPLETE: grace runs its length, then the unreclaimed go."""
        self.reg.note(1, "nlm", b"host")
        self.reg.note(1, "nfs4", b"alice")
        self.reg.session_gone(1)
        self.reg.reclaimed(2, "nfs4", b"alice")
        self.assertTrue(self.reg.in_grace)
        self.clock.advance(30)
        self.assertFalse(self.reg.in_grace)
        self.assertNotIn(("nlm", b"host"), self.reg.records)
        self.assertIn(("nfs4", b"alice"), self.reg.records)

    def test_lost_session_pending_until_gone_or_back(self) -> None:
        """A lost subscription makes its clients pending (reclaims wait); back, they are not."""
        self.reg.note(1, "nfs4", b"alice")
        self.reg.session_lost(1)
        self.assertEqual(self.events[-1], ("EV_GRACE", (0, [], [("nfs4", b"alice")])))
        self.assertFalse(self.reg.in_grace)
        self.reg.session_back(1)
        self.assertEqual(self.events[-1], ("EV_GRACE", (0, [], [])))
        self.reg.session_lost(1)
        self.reg.session_gone(1)
        self.assertEqual(self.events[-1], ("EV_GRACE", (30000, [("nfs4", b"alice")], [])))

    def test_no_clients_no_grace(self) -> None:
        self.reg.note(1, "nfs4", b"alice")
        self.reg.session_gone(2)
        self.assertFalse(self.reg.in_grace)
        self.assertEqual(self.events, [])


class EnforcedTests(SynchronousTestCase):
    """The meta server refuses new state to every gateway during grace; reclaims pass."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.shared = SharedState(
            self.clock, lambda s, n, v: False, lambda n, v, *_: None, linger=1
        )
        self.reg = ClientRegistry(self.clock, lambda n, v, *_: None, grace=30)
        self.shared.clients = self.reg

    def test_grace_refuses_new_state(self) -> None:
        self.reg.note(1, "nfs4", b"alice")
        # Session 1 holds no lock: its client record alone makes its loss noticed.
        self.shared.unsubscribed(1)
        self.clock.advance(1)
        self.assertTrue(self.reg.in_grace)
        d = self.shared.lock(2, 5, OWNER, 0, 1, True, False)
        self.failureResultOf(d, errors.Grace)
        self.assertRaises(errors.Grace, self.shared.share_open, 2, 5, OWNER, 1, 3, 0, False)
        self.successResultOf(self.shared.lock(2, 5, OWNER, 0, 1, True, True))
        self.shared.share_open(2, 6, OWNER, 2, 3, 2, True)
        self.reg.reclaimed(2, "nfs4", b"alice")
        self.successResultOf(self.shared.lock(2, 7, OWNER, 0, 1, True, False))


class ConfiguredTimingTests(SynchronousTestCase):
    """
    C{meta_store.grace_secs} and C{meta_store.linger_secs}: the meta server's
    cross-gateway grace and how long a lost gateway may take to come back.
    """

    def build(self, text: str | None) -> Any:
        from pathlib import Path

        from twisted.internet.testing import MemoryReactorClock

        from claudefs_gateway.core import config as cfg
        from claudefs_gateway.servers.service import ServerSettings, build_meta

        store = cfg.loads(text).meta_store if text is not None else None
        settings = ServerSettings(
            data_dir=Path(self.mktemp()).absolute(),
            listen=cfg.loads("admin: {bind: '127.0.0.1:0'}\n").admin.bind,
            admin=cfg.loads("admin: {bind: '127.0.0.1:0'}\n").admin.bind,
            meta_store=store,
        )
        root = build_meta(settings, MemoryReactorClock())
        return root.getServiceNamed("server:store").handler

    def test_defaults(self) -> None:
        for text in (None, "meta_store: {type: embedded}\n"):
            handler = self.build(text)
            self.assertEqual((handler.clients.grace, handler.shared.linger), (90, 10))

    def test_keys_reach_the_handler(self) -> None:
        handler = self.build("meta_store: {grace_secs: 30, linger_secs: 3}\n")
        self.assertEqual((handler.clients.grace, handler.shared.linger), (30, 3))

    def test_bad_values(self) -> None:
        from claudefs_gateway.core import config as cfg
        from claudefs_gateway.errors import ConfigError

        for text in (
            "meta_store: {linger_secs: 0}\n",
            "meta_store: {grace_secs: -1}\n",
            "meta_store: {grace_secs: 4000}\n",
        ):
            self.assertRaises(ConfigError, cfg.loads, text)

    def test_linger_and_grace_timing(self) -> None:
        """A lost gateway is gone after linger_secs; its clients' grace lasts grace_secs."""
        from claudefs_gateway.servers.meta import MetaHandler

        clock = task.Clock()
        handler = MetaHandler(None, lambda n, v, *_: None, clock=clock, grace=20, linger=4)
        handler.clients.note(1, "nlm", b"host")
        handler.shared.unsubscribed(1)
        clock.advance(3.9)
        self.assertFalse(handler.clients.in_grace)
        clock.advance(0.1)
        self.assertTrue(handler.clients.in_grace)
        clock.advance(19.9)
        self.assertTrue(handler.clients.in_grace)
        clock.advance(0.1)
        self.assertFalse(handler.clients.in_grace)

    def test_workers_pass_the_gateway_grace(self) -> None:
        """start --workers: the meta server's grace follows nfs.grace_secs unless set."""
        import shutil

        import yaml
        from twisted.internet.testing import MemoryReactorClock

        from claudefs_gateway.core import config as cfg
        from claudefs_gateway.workers import Supervisor

        for text, want in (
            ("nfs: {grace_secs: 45}\n", 45),
            ("nfs: {grace_secs: 45}\nmeta_store: {grace_secs: 20, linger_secs: 5}\n", 20),
            ("", 90),
        ):
            sup = Supervisor(cfg.loads(text), text, 1, "all", MemoryReactorClock())
            self.addCleanup(shutil.rmtree, sup.run_dir, True)
            args = sup._server_args("meta")
            path = args[args.index("--config") + 1]
            store = cfg.load(path).meta_store
            self.assertEqual(store.grace_secs, want)
            if "linger_secs" in text:
                self.assertEqual(store.linger_secs, 5)
            with open(path) as f:
                self.assertEqual(yaml.safe_load(f)["meta_store"]["grace_secs"], want)
