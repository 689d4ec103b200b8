"""The status monitor and restart recovery (L{claudefs_gateway.nfs.nsm})."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.nfs.nsm import (
    NOTIFY,
    NSM_PROGRAM,
    FileStore,
    MemoryStore,
    StatusMonitor,
    adopt_records,
    state_file,
)
from claudefs_gateway.rpc.xdr import Unpacker
from claudefs_gateway.vfs.locks import LockTable


class RecordingNLM:
    def __init__(self) -> None:
        self.forgot: list[bytes] = []
        self.monitor: Any = None
        self.forgotten: Any = None

    def forget_client(self, name: bytes) -> None:
        self.forgot.append(name)


class Callbacks:
    def __init__(self, fail: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.calls: list[tuple[str, int, int, int, bytes]] = []
        self.fail = fail

    def call(
        self, host: str, prog: int, vers: int, proc: int, args: bytes
    ) -> defer.Deferred[Unpacker]:
        self.calls.append((host, prog, vers, proc, args))
        if host in self.fail:
            return defer.fail(defer.TimeoutError("no reply"))
        return defer.succeed(Unpacker(b""))


class StartTests(SynchronousTestCase):
    def start(
        self, doc: dict[str, Any] | None, fail: set[str] = frozenset()
    ) -> tuple[StatusMonitor, Callbacks, LockTable, MemoryStore]:  # type: ignore[assignment]
        store = MemoryStore(doc)
        cb = Callbacks(fail)
        clock = Clock()
        locks = LockTable(clock)
        mon = StatusMonitor(store, RecordingNLM(), cb, 45)  # type: ignore[arg-type]
        self.successResultOf(defer.Deferred.fromCoroutine(mon.start(locks)))
        self.clock = clock
        return mon, cb, locks, store

    def test_first_start(self) -> None:
        """No previous run: state 1, no grace, nobody notified."""
        mon, cb, locks, store = self.start(None)
        self.assertEqual(mon.state, 1)
        self.assertFalse(locks.in_grace)
        self.assertEqual(cb.calls, [])
        self.assertEqual(store.doc, {"state": 1, "clients": {}})

    def test_restart_without_clients(self) -> None:
        mon, cb, locks, _ = self.start({"state": 7, "clients": {}})
        self.assertEqual(mon.state, 9)
        self.assertFalse(locks.in_grace)

    def test_restart_with_clients(self) -> None:
        """Lock clients of the last run get SM_NOTIFY with the new state; grace begins."""
        previous = {
            "host-a": {"addr": "10.0.0.1", "server": "10.0.0.100"},
            "host-b": {"addr": "10.0.0.2", "server": None},
            "host-c": {"addr": "10.0.0.3", "server": None},
        }
        mon, cb, locks, store = self.start({"state": 4, "clients": previous}, fail={"10.0.0.3"})
        self.assertEqual(mon.state, 5)
        self.assertTrue(locks.in_grace)
        self.clock.advance(46)
        self.assertFalse(locks.in_grace)
        sent = {host: Unpacker(args) for host, prog, vers, proc, args in cb.calls}
        self.assertEqual({(c[1], c[2], c[3]) for c in cb.calls}, {(NSM_PROGRAM, 1, NOTIFY)})
        u = sent["10.0.0.1"]
        self.assertEqual((u.string(1024), u.i32()), (b"10.0.0.100", 5))
        u = sent["10.0.0.2"]
        self.assertEqual(u.string(1024), b"10.0.0.2")
        self.assertEqual(sorted(mon.notified), ["host-a", "host-b"])
        self.assertEqual(store.doc, {"state": 5, "clients": {}})

    def test_damaged_record(self) -> None:
        mon, _, locks, _ = self.start({"state": "x", "clients": []})
        self.assertEqual(mon.state, 1)
        self.assertFalse(locks.in_grace)

    def test_notes_while_loading_kept(self) -> None:
        """
        A client that locks while the record is still loading (NLM is served
        from the first moment) is kept and saved, not lost when the load ends.
        """
        loaded: defer.Deferred[dict[str, Any] | None] = defer.Deferred()
        store = MemoryStore({"state": 2, "clients": {}})
        store.load = lambda: loaded  # type: ignore[method-assign]
        mon = StatusMonitor(store, RecordingNLM(), Callbacks(), 45)  # type: ignore[arg-type]
        started = defer.Deferred.fromCoroutine(mon.start(LockTable(Clock())))
        mon.note(b"early", "10.0.0.9", None)
        loaded.callback({"state": 2, "clients": {}})
        self.successResultOf(started)
        self.assertEqual(mon.clients, {"early": {"addr": "10.0.0.9", "server": None}})
        self.assertEqual(store.doc, {"state": 3, "clients": mon.clients})

    def test_note_during_first_save_waits_for_it(self) -> None:
        """
        A note made while start's save is under way starts no second save at
        the same time (both would write the same temporary file); it is saved
        right after, and flushed() waits for the save under way.
        """
        saving: list[defer.Deferred[None]] = []
        docs: list[dict[str, Any]] = []

        class SlowStore(MemoryStore):
            def save(self, doc: dict[str, Any]) -> defer.Deferred[None]:
                docs.append(json.loads(json.dumps(doc)))
                saving.append(defer.Deferred())
                return saving[-1]

        mon = StatusMonitor(SlowStore(None), RecordingNLM(), Callbacks(), 45)  # type: ignore[arg-type]
        started = defer.Deferred.fromCoroutine(mon.start(LockTable(Clock())))
        mon.note(b"h", "10.0.0.5", None)
        self.assertEqual(len(saving), 1)
        flushed = mon.flushed()
        saving[0].callback(None)
        self.successResultOf(started)
        self.assertEqual(len(saving), 2)
        self.assertEqual(docs[1]["clients"], {"h": {"addr": "10.0.0.5", "server": None}})
        self.assertNoResult(mon.flushed())
        saving[1].callback(None)
        self.successResultOf(mon.flushed())
        self.successResultOf(flushed)

    def test_notes_saved_after_start(self) -> None:
        mon, _, _, store = self.start(None)
        mon.note(b"h", "10.0.0.5", "10.0.0.100")
        mon.note(b"h", "10.0.0.5", "10.0.0.100")
        self.assertEqual(store.writes, 2)
        self.assertEqual(store.doc["clients"], {"h": {"addr": "10.0.0.5", "server": "10.0.0.100"}})  # type: ignore[index]
        mon.forget("h")
        self.assertEqual(store.doc["clients"], {})  # type: ignore[index]
        self.successResultOf(mon.flushed())


class FileStoreTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        path = Path(self.mktemp())
        os.makedirs(path)
        store = FileStore(path / "nsm.json", lambda f, *a: defer.maybeDeferred(f, *a))
        self.assertIsNone(self.successResultOf(store.load()))
        self.successResultOf(store.save({"state": 3, "clients": {"a": {"addr": "1.2.3.4"}}}))
        self.assertEqual(self.successResultOf(store.load())["state"], 3)  # type: ignore[index]
        self.assertEqual(oct((path / "nsm.json").stat().st_mode & 0o777), oct(0o600))
        (path / "nsm.json").write_text("not json")
        self.assertIsNone(self.successResultOf(store.load()))
        self.assertEqual(json.loads("{}"), {})


class WorkerRecordTests(SynchronousTestCase):
    """
    C{--workers}: each worker keeps its own NSM record in the shared data
    directory, and the host's state number moves past every record's.
    """

    def monitor(self, path: Path, index: int | None, cb: Callbacks) -> StatusMonitor:
        store = FileStore(path / state_file(index), lambda f, *a: defer.maybeDeferred(f, *a))
        mon = StatusMonitor(store, RecordingNLM(), cb, 45)  # type: ignore[arg-type]
        self.successResultOf(defer.Deferred.fromCoroutine(mon.start(LockTable(Clock()))))
        return mon

    def test_file_names(self) -> None:
        self.assertEqual(state_file(None), "nsm.json")
        self.assertEqual(state_file(0), "nsm-worker-0.json")
        self.assertEqual(state_file(3), "nsm-worker-3.json")

    def test_restarted_worker_notifies_only_its_clients(self) -> None:
        path = Path(self.mktemp())
        os.makedirs(path)
        cb = Callbacks()
        w0 = self.monitor(path, 0, cb)
        w1 = self.monitor(path, 1, cb)
        w0.note(b"client-a", "10.0.0.1", None)
        w1.note(b"client-b", "10.0.0.2", None)
        self.successResultOf(w0.flushed())
        self.successResultOf(w1.flushed())
        self.assertEqual(
            sorted(p.name for p in path.iterdir()), ["nsm-worker-0.json", "nsm-worker-1.json"]
        )
        self.assertIn("client-a", json.loads((path / "nsm-worker-0.json").read_text())["clients"])
        self.assertNotIn(
            "client-a", json.loads((path / "nsm-worker-1.json").read_text())["clients"]
        )
        # Worker 1 is killed and started again: it notifies its own client
        # only (client-a's locks at worker 0 stay valid).
        cb.calls.clear()
        again = self.monitor(path, 1, cb)
        self.assertEqual([c[0] for c in cb.calls], ["10.0.0.2"])
        self.assertEqual(again.notified, ["client-b"])
        # The state is new for the host, past both workers' numbers (a
        # client's lockd ignores a notice whose state it has seen).
        self.assertGreater(again.state, max(w0.state, w1.state))
        self.assertEqual(again.state % 2, 1)
        self.assertEqual(Unpacker(cb.calls[0][4]).string(1024), b"10.0.0.2")

    def test_highest_state_of_every_record(self) -> None:
        path = Path(self.mktemp())
        os.makedirs(path)
        (path / "nsm-worker-0.json").write_text(json.dumps({"state": 41, "clients": {}}))
        (path / "nsm-worker-5.json").write_text("damaged")
        (path / "nsm.json").write_text(json.dumps({"state": True, "clients": {}}))
        mon = self.monitor(path, 1, Callbacks())
        self.assertEqual(mon.state, 43)
        self.assertEqual(json.loads((path / "nsm-worker-1.json").read_text())["state"], 43)
        # The other records are only read.
        self.assertEqual(json.loads((path / "nsm-worker-0.json").read_text())["state"], 41)

    def write(self, path: Path, name: str, state: int, *clients: str) -> None:
        doc = {
            "state": state,
            "clients": {
                c: {"addr": f"10.0.0.{i + 1}", "server": None} for i, c in enumerate(clients)
            },
        }
        (path / name).write_text(json.dumps(doc))

    def test_records_nobody_keeps_are_adopted(self) -> None:
        """
        --workers 3 then --workers 1 (and a single gateway's record): the
        supervisor gives worker 0 the clients of records no worker keeps, so
        they are still notified; the others are removed once it is written.
        """
        path = Path(self.mktemp())
        os.makedirs(path)
        self.write(path, "nsm-worker-0.json", 5, "a")
        self.write(path, "nsm-worker-1.json", 9, "b")
        self.write(path, "nsm-worker-2.json", 7, "c", "a")
        self.write(path, "nsm.json", 3, "d")
        keep = {state_file(0)}
        taken = adopt_records(path, state_file(0), keep)
        self.assertEqual(taken, ["nsm-worker-1.json", "nsm-worker-2.json", "nsm.json"])
        self.assertEqual(sorted(p.name for p in path.iterdir()), ["nsm-worker-0.json"])
        doc = json.loads((path / "nsm-worker-0.json").read_text())
        self.assertEqual(sorted(doc["clients"]), ["a", "b", "c", "d"])
        self.assertEqual(doc["clients"]["a"]["addr"], "10.0.0.1")  # its own entry wins
        self.assertEqual(doc["state"], 9)
        cb = Callbacks()
        mon = self.monitor(path, 0, cb)
        self.assertEqual(sorted(mon.notified), ["a", "b", "c", "d"])
        self.assertEqual(mon.state, 11)
        # Nothing to take over: nothing written.
        before = (path / "nsm-worker-0.json").stat().st_mtime_ns
        self.assertEqual(adopt_records(path, state_file(0), keep), [])
        self.assertEqual((path / "nsm-worker-0.json").stat().st_mtime_ns, before)

    def test_single_gateway_adopts_the_workers_records(self) -> None:
        path = Path(self.mktemp())
        os.makedirs(path)
        self.write(path, "nsm-worker-0.json", 5, "a")
        self.write(path, "nsm-worker-1.json", 7, "b")
        cb = Callbacks()
        store = FileStore(path / "nsm.json", lambda f, *a: defer.maybeDeferred(f, *a), adopt=True)
        mon = StatusMonitor(store, RecordingNLM(), cb, 45)  # type: ignore[arg-type]
        self.successResultOf(defer.Deferred.fromCoroutine(mon.start(LockTable(Clock()))))
        self.assertEqual(sorted(mon.notified), ["a", "b"])
        self.assertEqual(mon.state, 9)
        self.assertEqual(sorted(p.name for p in path.iterdir()), ["nsm.json"])

    def test_a_worker_adopts_nothing(self) -> None:
        path = Path(self.mktemp())
        os.makedirs(path)
        self.write(path, "nsm-worker-1.json", 7, "b")
        mon = self.monitor(path, 0, Callbacks())
        self.assertEqual(mon.notified, [])
        self.assertTrue((path / "nsm-worker-1.json").exists())


class FileStoreSerialTests(SynchronousTestCase):
    """
    One save at a time, to the end of its write: a save whose caller stopped
    waiting (the NSM start cancelled as its service stops) still holds the
    file until its thread is done, and the next save waits for it (two at
    once raced on one temporary copy: C{os.replace} found it gone).
    """

    def test_cancelled_save_still_holds_the_file(self) -> None:
        path = Path(self.mktemp())
        os.makedirs(path)
        pending: list[tuple[defer.Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []

        def run(f: Callable[..., Any], *a: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            pending.append((d, f, a))
            return d

        store = FileStore(path / "nsm.json", run)
        first = store.save({"state": 1})
        first.cancel()
        self.failureResultOf(first, defer.CancelledError)
        second = store.save({"state": 3})
        self.assertEqual(len(pending), 1)  # the second waits for the first's write
        d, f, a = pending.pop()
        d.callback(f(*a))
        self.assertEqual(len(pending), 1)
        d, f, a = pending.pop()
        d.callback(f(*a))
        self.successResultOf(second)
        self.assertEqual(json.loads((path / "nsm.json").read_text())["state"], 3)
        self.assertEqual(sorted(p.name for p in path.iterdir()), ["nsm.json"])

    def test_failed_save_fails_its_caller_and_frees_the_file(self) -> None:
        path = Path(self.mktemp())
        os.makedirs(path)
        calls: list[str] = []

        def run(f: Callable[..., Any], *a: Any) -> defer.Deferred[Any]:
            calls.append(f.__name__)
            if len(calls) == 1:
                return defer.fail(OSError("disk full"))
            return defer.maybeDeferred(f, *a)

        store = FileStore(path / "nsm.json", run)
        self.failureResultOf(store.save({"state": 1}), OSError)
        self.successResultOf(store.save({"state": 5}))
        self.assertEqual(json.loads((path / "nsm.json").read_text())["state"], 5)
