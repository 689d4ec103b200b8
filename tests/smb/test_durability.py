"""
What SMB metadata changes cost the store and when they are durable (issue 15):
CREATE, overwrite, delete on close and rename are answered from the embedded
store's ordered log, without a flush; FLUSH, write-through opens and the
background flush (smb.metadata_flush_interval_ms) make them durable; a kill -9
of the gateway loses none that was answered.

The counts are the embedded store's own statistics, so these run on it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from claudefs_gateway.backend.embedded import EmbeddedBackend
from claudefs_gateway.smb import constants as c
from claudefs_gateway.vfs.identity import nt_hash
from tests.helpers import bin_path, kill_on_cleanup, spawn, write_config
from tests.smb.client import CONFIG, PASSWORD, Conn, Wire
from tests.smb.test_clients import LiveServer, run, smb_conf


def config(interval_ms: int) -> str:
    return f"""
exports:
  - {{path: /export, name: share, root_squash: false}}
smb:
  metadata_flush_interval_ms: {interval_ms}
"""


class Recorder:
    """The store's flush count and whether its log holds unsynced changes, after each reply."""

    def __init__(self, server: LiveServer) -> None:
        self.seen: list[tuple[str, int, bool]] = []
        factory = server.factory
        backend = server.backend
        real = factory.observe

        def observe(op: str, seconds: float, status: int) -> None:
            self.seen.append((op, backend.stats.durable_commits, backend._engine._wal_unsynced))
            real(op, seconds, status)

        factory.observe = observe

    def index(self, op: str, nth: int = 0) -> int:
        return [i for i, s in enumerate(self.seen) if s[0] == op][nth]


async def scenario(testcase: TestCase, server: LiveServer, port: int) -> dict[str, Any]:
    argv = [
        sys.executable,
        "-m",
        "tests.smb.smbprotocol_meta",
        "127.0.0.1",
        str(port),
        "share",
        "alice",
        PASSWORD,
    ]
    status, out, err = await run(argv, testcase)
    steps = {e["step"]: e for e in map(json.loads, (line for line in out if line.startswith("{")))}
    testcase.assertEqual(status, 0, json.dumps(steps.get("error", {}), indent=1) + err[-2000:])
    return steps


class FlushCountTests(TestCase):
    timeout = 120

    async def test_metadata_changes_wait_for_flush(self) -> None:
        """
        With the background flush far away: creating a file and a directory,
        overwriting, and deleting on close cost no flush; FLUSH costs one and
        leaves nothing unsynced; a write-through CREATE is durable before its reply.
        """
        server = LiveServer(self, config(60_000))
        port = await server.start()
        rec = Recorder(server)
        await scenario(self, server, port)
        seen = rec.seen
        first = rec.index("create")
        flush = rec.index("flush")
        before = seen[first - 1][1]
        # CREATE a, CLOSE, CREATE d, CLOSE, overwrite a, CLOSE, CREATE b,
        # CLOSE, delete-on-close b, CLOSE, open a: no flush among them.
        changes = seen[first:flush]
        self.assertEqual([op for op, _, _ in changes].count("create"), 6)
        self.assertEqual({n for _, n, _ in changes}, {before}, changes)
        self.assertTrue(changes[-1][2], "the changes wait in the log")
        self.assertEqual(seen[flush][1], before + 1)
        self.assertFalse(seen[flush][2])
        # The write-through CREATE of w.
        wt = rec.index("create", 6)
        self.assertEqual(seen[wt][1], before + 2)
        self.assertFalse(seen[wt][2])
        export = await server.backend.lookup(1, b"export")
        names = {
            e.name for e in (await server.backend.readdir(export.ino, 0, bytes(8), 100)).entries
        }
        self.assertEqual(names, {b"a", b"d", b"w"})

    async def test_durable_at_once_when_the_interval_is_zero(self) -> None:
        """metadata_flush_interval_ms 0: every CREATE and delete flushes before its reply."""
        server = LiveServer(self, config(0))
        port = await server.start()
        rec = Recorder(server)
        await scenario(self, server, port)
        seen = rec.seen
        first = rec.index("create")
        flush = rec.index("flush")
        before = seen[first - 1][1]
        # a, d created, b created and deleted: four flushes at least.
        self.assertGreaterEqual(seen[flush - 1][1] - before, 4)
        self.assertFalse(any(unsynced for _, _, unsynced in seen[first:]))


def flushes(wire: Wire) -> list[Any]:
    """The background flushes due on the wire's clock."""
    files = wire.factory.files
    return [d for d in wire.clock.getDelayedCalls() if d.func == files._flush_meta]


class BackgroundFlushTests(SynchronousTestCase):
    """The bounded background flush, on a Clock (memory vfs; its sync() counted)."""

    def wire(self, interval_ms: int) -> tuple[Wire, Conn, list[None]]:
        wire = Wire(CONFIG + f"smb: {{metadata_flush_interval_ms: {interval_ms}}}\n")
        syncs: list[None] = []
        backend = wire.mvfs.vfs.backend
        real = backend.sync

        def counting() -> Any:
            syncs.append(None)
            return real()

        self.patch(backend, "sync", counting)
        return wire, wire.connect().setup(), syncs

    def test_flushed_once_within_the_interval(self) -> None:
        wire, a, syncs = self.wire(1000)
        for name in ("x", "y", "z"):
            a.close(a.open(name, disposition=c.FILE_CREATE))
        self.assertEqual(syncs, [])
        self.assertEqual(len(flushes(wire)), 1)
        wire.clock.advance(0.999)
        self.assertEqual(syncs, [])
        wire.clock.advance(0.001)
        self.assertEqual(len(syncs), 1)
        wire.clock.advance(10)
        self.assertEqual(len(syncs), 1)
        # A later change arms it again.
        fid = a.open("x", options=c.FILE_DELETE_ON_CLOSE)
        a.close(fid)
        wire.clock.advance(1)
        self.assertEqual(len(syncs), 2)

    def test_flush_of_a_directory_syncs(self) -> None:
        """FLUSH of a directory handle syncs the store (a file's FLUSH commits it)."""
        wire, a, syncs = self.wire(1000)
        fid = a.open("dir", disposition=c.FILE_CREATE, options=c.FILE_DIRECTORY_FILE)
        self.assertEqual(a.flush(fid).status, 0)
        self.assertEqual(len(syncs), 1)

    def test_stopping_flushes_what_is_due(self) -> None:
        wire, a, syncs = self.wire(1000)
        a.close(a.open("x", disposition=c.FILE_CREATE))
        wire.fired(wire.factory.files.stop_flushing())
        self.assertEqual(len(syncs), 1)
        self.assertEqual(flushes(wire), [])

    def test_interval_zero_never_arms(self) -> None:
        wire, a, syncs = self.wire(0)
        a.close(a.open("x", disposition=c.FILE_CREATE))
        self.assertEqual(flushes(wire), [])
        self.assertEqual(syncs, [])


class KillTests(TestCase):
    timeout = 120

    async def test_kill_after_acknowledged_changes(self) -> None:
        """
        smbclient creates, renames and deletes through a gateway that never
        flushes on its own; kill -9 right after its last reply; the store,
        reopened, has every change.
        """
        data = os.path.abspath(self.mktemp())
        text = f"""
log_format: json
backend: {{type: embedded, data_dir: {data}}}
exports: [{{path: /export, name: share, root_squash: false}}]
users: [{{name: root, uid: 0, gid: 0, nt_hash: {nt_hash("Pass1")}}}]
smb: {{bind: "127.0.0.1:0", metadata_flush_interval_ms: 60000}}
nfs: {{bind: "127.0.0.1:0", mount_bind: "127.0.0.1:0", portmap_bind: "127.0.0.1:0"}}
s3: {{bind: "127.0.0.1:0"}}
admin: {{bind: "127.0.0.1:0"}}
"""
        proc = spawn(
            [bin_path("cfs-gateway"), "start", "smb", "--config", write_config(self, text)]
        )
        kill_on_cleanup(self, proc)
        port = await proc.wait_listening("smb")
        local = os.path.abspath(self.mktemp())
        os.makedirs(local)
        body = os.urandom(10_000)
        with open(os.path.join(local, "f.bin"), "wb") as f:
            f.write(body)
        commands = (
            f"lcd {local}; mkdir d; put f.bin d\\f.bin; put f.bin g.bin; "
            "rename g.bin h.bin; put f.bin gone.bin; del gone.bin"
        )
        client = spawn(
            [
                bin_path("smbclient"),
                "//127.0.0.1/share",
                "-s",
                smb_conf(self),
                "-p",
                str(port),
                "-U",
                "root%Pass1",
                "-m",
                "SMB3",
                "-c",
                commands,
            ]
        )
        self.assertEqual(await client.ended, 0, "\n".join(client.text) + client.stderr.decode())
        proc.signal("KILL")
        self.assertEqual(await proc.ended, -9)
        store = EmbeddedBackend(Path(data), reactor)
        await store.open()
        self.addCleanup(store.close)
        export = await store.lookup(1, b"export")
        names = {e.name for e in (await store.readdir(export.ino, 0, bytes(8), 100)).entries}
        self.assertEqual(names, {b"d", b"h.bin"})
        d = await store.lookup(export.ino, b"d")
        f = await store.lookup(d.ino, b"f.bin")
        got, _ = await store.read(f.ino, 0, len(body) + 1)
        self.assertEqual(got, body)
        h = await store.lookup(export.ino, b"h.bin")
        self.assertEqual(h.size, len(body))
