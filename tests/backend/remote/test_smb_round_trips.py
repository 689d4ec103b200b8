"""
Round trips to the meta server per SMB operation through a gateway on
C{backend: remote} (a C{--workers} worker): the RPC calls one SMB CREATE,
WRITE and CLOSE of a new small file cost, and those of a delete, counted at
every connection of the gateway (metadata, shared state, data) while a real
client (smbprotocol) drives it. The counts are upper bounds: a change that
adds a round trip to these paths fails here (docs/workers.rst "What an SMB
create costs").
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import TestCase

from claudefs_gateway import service
from claudefs_gateway.core import config as cfg
from claudefs_gateway.vfs.identity import nt_hash
from tests.backend.remote.harness import Cluster, count_rpc
from tests.backend.remote.test_shared import until

PASSWORD = "Trips-Pass1"


def _yaml(data: str, meta: str, chunks: str, marks: str) -> str:
    # As a --workers worker (workers.py): the chunk files read and written here.
    return f"""
log_format: json
backend: {{type: remote, data_dir: "{data}", short_circuit: "{chunks}", event_marks: "{marks}"}}
metadata_servers:
  - address: "{meta}"
connection_pool: {{min_per_node: 1, max_per_node: 8, connect_timeout_ms: 2000}}
admin: {{bind: "127.0.0.1:0"}}
exports:
  - {{path: /export, name: share, root_squash: false, dir_uid: 1000, dir_gid: 1000, dir_mode: 0777}}
smb: {{bind: "127.0.0.1:0"}}
users:
  - {{name: alice, uid: 1000, gid: 1000, nt_hash: {nt_hash(PASSWORD)}}}
"""


class _Client:
    """One smbprotocol session (blocking: every method runs on a thread)."""

    def __init__(self, port: int) -> None:
        import uuid

        from smbprotocol.connection import Connection
        from smbprotocol.session import Session
        from smbprotocol.tree import TreeConnect

        self.conn = Connection(uuid.uuid4(), "127.0.0.1", port)
        self.conn.connect()
        session = Session(self.conn, "alice", PASSWORD)
        session.connect()
        self.tree = TreeConnect(session, r"\\127.0.0.1\share")
        self.tree.connect()

    def open(
        self,
        name: str,
        disposition: int,
        options: int = 0,
        access: int = 0x0012019F,
        lease: bool = False,
    ) -> Any:
        from smbprotocol.create_contexts import (
            CreateContextName,
            SMB2CreateContextRequest,
            SMB2CreateRequestLeaseV2,
        )
        from smbprotocol.open import CreateOptions, FileAttributes, ImpersonationLevel, Open

        contexts = []
        if lease:
            req = SMB2CreateRequestLeaseV2()
            req["lease_key"] = name.encode().ljust(16, b"\0")[:16]
            req["lease_state"] = 0x07
            req["parent_lease_key"] = b"\x00" * 16
            req["epoch"] = b"\x00\x00"
            ctx = SMB2CreateContextRequest()
            ctx["buffer_name"] = CreateContextName.SMB2_CREATE_REQUEST_LEASE_V2
            ctx["buffer_data"] = req
            contexts.append(ctx)
        f = Open(self.tree, name)
        f.create(
            ImpersonationLevel.Impersonation,
            access,
            FileAttributes.FILE_ATTRIBUTE_NORMAL,
            0x07,
            disposition,
            CreateOptions.FILE_NON_DIRECTORY_FILE | options,
            create_contexts=contexts or None,
            oplock_level=0xFF if lease else 0,
        )
        return f

    def create_write_close(self, name: str, lease: bool = False) -> None:
        from smbprotocol.open import CreateDisposition

        f = self.open(name, CreateDisposition.FILE_CREATE, lease=lease)
        f.write(b"x" * 4096, 0)
        f.close()

    def delete(self, name: str) -> None:
        from smbprotocol.open import CreateDisposition, CreateOptions

        f = self.open(
            name,
            CreateDisposition.FILE_OPEN,
            CreateOptions.FILE_DELETE_ON_CLOSE,
            access=0x00010000,
        )
        f.close()

    def close(self) -> None:
        self.conn.disconnect()


def _smb_factory(root: Any) -> Any:
    todo = [root]
    while todo:
        svc = todo.pop()
        factory = getattr(svc, "factory", None)
        if getattr(factory, "files", None) is not None:
            return factory
        todo.extend(getattr(svc, "services", []))
    raise AssertionError("no SMB service")


async def smb_gateway(test: TestCase, cluster: Cluster, stopped: bool = True) -> Any:
    """
    A gateway serving SMB alone from C{cluster}, as a C{--workers} worker,
    started with its store open (and stopped at the test's end unless
    C{stopped} is false: the test stops it).
    """
    data = os.path.abspath(test.mktemp())
    chunks = os.path.join(os.path.abspath(cluster.base), "data")
    config = cfg.loads(_yaml(data, cluster.meta_address, chunks, str(cluster.marks)))
    root = service.build(config, reactor, protocols=["smb"])
    root.privilegedStartService()
    root.startService()
    if stopped:
        test.addCleanup(root.stopService)
    await root.core.vfs_ready()
    return root


class SMBRoundTripTests(TestCase):
    timeout = 60

    async def _gateway(self) -> tuple[Any, Counter[str], Counter[str]]:
        cluster = self.cluster = Cluster(self, event_marks=True)
        await cluster.start()
        root = self._root = await smb_gateway(self, cluster)
        calls, events = count_rpc(self)
        port = root.listeners()["smb"].bound_port
        client = await threads.deferToThread(_Client, port)
        self.addCleanup(lambda: threads.deferToThread(client.close))
        # The first file warms the caches (the share's root, its names).
        await threads.deferToThread(client.create_write_close, "warm")
        return client, calls, events

    async def _settle(self) -> None:
        """Let what is sent after the reply (not awaited by it) go out and be answered."""
        for _ in range(10):
            d: defer.Deferred[None] = defer.Deferred()
            reactor.callLater(0.01, d.callback, None)
            await d

    async def _count(
        self, calls: Counter[str], events: Counter[str], run: Any, *args: Any
    ) -> dict[str, int]:
        await self._settle()
        calls.clear()
        events.clear()
        await threads.deferToThread(run, *args)
        await self._settle()
        return dict(calls)

    async def test_create_write_close(self) -> None:
        """
        A new file's CREATE, WRITE and CLOSE: three calls (the lookup of a
        name the case index knows is absent is skipped; the share reservation
        goes with the create; the bytes go to the chunk files directly).
        """
        client, calls, events = await self._gateway()
        got = await self._count(calls, events, client.create_write_close, "f1")
        self.assertEqual(got, {"CREATE_OPEN": 1, "WROTE": 1, "RELEASE_OWNER": 1})
        # No event of its own changes comes back to the gateway that made them.
        self.assertEqual(dict(events), {})

    async def test_leased_create_write_close(self) -> None:
        """With an RWH lease: the grant is confirmed and the release told (five calls)."""
        client, calls, events = await self._gateway()
        got = await self._count(calls, events, client.create_write_close, "f2", True)
        self.assertEqual(
            got,
            {"CREATE_OPEN": 1, "LEASE_GRANT": 1, "WROTE": 1, "RELEASE_OWNER": 1, "LEASE_HOLD": 1},
        )
        self.assertEqual(dict(events), {})

    async def test_delete(self) -> None:
        """
        An open with delete-on-close, then CLOSE: two calls. The name is
        answered from the caches (the event marks say every change was heard:
        no LOOKUP), and the meta server drops the removed inode's shared state
        with the UNLINK: no RELEASE_INODE, and no RELEASE_OWNER for the
        closing open's share, released here before the UNLINK.
        """
        client, calls, events = await self._gateway()
        await threads.deferToThread(client.create_write_close, "f3")
        got = await self._count(calls, events, client.delete, "f3")
        self.assertEqual(got, {"SHARE_OPEN": 1, "UNLINK": 1})
        self.assertEqual(dict(events), {})

    async def test_delete_unsure_asks(self) -> None:
        """Without the marks' word that every change was heard, the name is asked for (LOOKUP)."""
        client, calls, events = await self._gateway()
        await threads.deferToThread(client.create_write_close, "f4")
        backend = self._root.core.vfs_service.backend
        backend.heard_everything = lambda: False
        got = await self._count(calls, events, client.delete, "f4")
        self.assertEqual(got, {"LOOKUP": 1, "SHARE_OPEN": 1, "UNLINK": 1})

    async def test_stat_open(self) -> None:
        """
        An open for attributes only (a stat: CREATE with FILE_READ_ATTRIBUTES,
        CLOSE) takes no share reservation and no lock: no call at all, not
        even the close's RELEASE_OWNER (the meta server holds nothing of it).
        """
        from smbprotocol.open import CreateDisposition

        client, calls, events = await self._gateway()
        await threads.deferToThread(client.create_write_close, "f6")

        def stat() -> None:
            client.open("f6", CreateDisposition.FILE_OPEN, access=0x80).close()

        got = await self._count(calls, events, stat)
        self.assertEqual(got, {})

    async def test_smbclient_put_and_del(self) -> None:
        """
        What the bench's C{smb.small_files} costs per file (smbclient's
        C{put} and C{del}, docs/workers.rst "What an SMB create costs"): a
        put is CREATE_OPEN, WROTE, RELEASE_OWNER; a del opens the directory
        to list it (SHARE_OPEN, and RELEASE_OWNER at its close), then the file
        with delete-on-close (SHARE_OPEN) and closes it (UNLINK). The
        session's C{cd} (an attributes-only open) costs nothing, and the
        first new name scans the directory once (LOOKUP, READDIR).
        """
        from tests.helpers import bin_path
        from tests.smb.test_clients import run, smb_conf

        cluster = Cluster(self, event_marks=True)
        await cluster.start()
        root = await smb_gateway(self, cluster)
        port = root.listeners()["smb"].bound_port
        local = os.path.abspath(self.mktemp())
        os.makedirs(local)
        n = 8
        for i in range(n):
            with open(os.path.join(local, f"f{i}"), "wb") as f:
                f.write(b"x" * 4096)

        async def smbclient(commands: str) -> None:
            argv = [
                bin_path("smbclient"),
                "//127.0.0.1/share",
                "-s",
                smb_conf(self),
                "-p",
                str(port),
                "-U",
                f"alice%{PASSWORD}",
                "-m",
                "SMB3",
                "--client-protection=off",
                "-c",
                commands,
            ]
            status, out, err = await run(argv, self)
            self.assertEqual(status, 0, "\n".join(out) + err)

        await smbclient("mkdir d")
        calls, events = count_rpc(self)
        await SMBRoundTripTests()._settle()
        calls.clear()
        await smbclient(f"lcd {local}; cd d; " + "; ".join(f"put f{i}" for i in range(n)))
        await self._settle()
        # (The background metadata flush's SYNC comes by the clock, not per file.)
        calls.pop("SYNC", None)
        self.assertEqual(
            dict(calls),
            {"LOOKUP": 1, "READDIR": 1, "CREATE_OPEN": n, "WROTE": n, "RELEASE_OWNER": n},
        )
        calls.clear()
        await smbclient("cd d; " + "; ".join(f"del f{i}" for i in range(n)))
        await self._settle()
        calls.pop("SYNC", None)
        self.assertEqual(dict(calls), {"SHARE_OPEN": 2 * n, "RELEASE_OWNER": n, "UNLINK": n})

    async def test_delete_on_close_file_stays(self) -> None:
        """
        A delete-on-close open closed while another open of the file stays:
        the file is not removed, so its share is released at the meta server
        (RELEASE_OWNER), where only the other open's is left; the last
        close removes the file and sends none.
        """
        from smbprotocol.open import CreateDisposition, CreateOptions

        client, calls, events = await self._gateway()
        await threads.deferToThread(client.create_write_close, "f5")
        keep = await threads.deferToThread(client.open, "f5", CreateDisposition.FILE_OPEN)
        doomed = await threads.deferToThread(
            client.open,
            "f5",
            CreateDisposition.FILE_OPEN,
            CreateOptions.FILE_DELETE_ON_CLOSE,
            0x00010000,
        )
        backend = self._root.core.vfs_service.backend
        root = await backend.root()
        export = await backend.lookup(root.ino, b"export")
        ino = (await backend.lookup(export.ino, b"f5")).ino
        assert self.cluster.meta is not None and self.cluster.meta.factory is not None
        table = self.cluster.meta.factory.handler.shared.table
        self.assertEqual(len(table.shares(ino)), 2)
        got = await self._count(calls, events, doomed.close)
        self.assertEqual(got, {"RELEASE_OWNER": 1})
        self.assertEqual(len(table.shares(ino)), 1)
        got = await self._count(calls, events, keep.close)
        self.assertEqual(got, {"UNLINK": 1})
        self.assertEqual(table.shares(ino), [])


def _event_ino(name: str, value: Any) -> int:
    if name == "EV_CHANGE":
        return int(value.ino)
    if name == "EV_CHANGE_LOCKS":
        return int(value[0].ino)
    return int(value[0])


class OtherGatewayEventTests(TestCase):
    """
    The EVENT frames a second, idle gateway (another worker) is sent per SMB
    file made and deleted through the first (docs/workers.rst "One frame
    for a call's two events"), counted as they arrive.
    """

    timeout = 60

    async def test_frames_per_file(self) -> None:
        from claudefs_gateway.backend.remote import protocol, wire

        cluster = Cluster(self, event_marks=True)
        await cluster.start()
        root = await smb_gateway(self, cluster)
        idle = await smb_gateway(self, cluster)
        client = await threads.deferToThread(_Client, root.listeners()["smb"].bound_port)
        self.addCleanup(lambda: threads.deferToThread(client.close))
        frames: list[tuple[str, int]] = []
        heard: list[tuple[str, int]] = []
        real = protocol.ClientConnection.frame_received

        def frame(conn: Any, opcode: int, kind: int, rid: int, payload: bytes) -> None:
            if kind == wire.EVENT:
                op = wire.OPS[opcode]
                frames.append((op.name, _event_ino(op.name, wire.decode(op.result, payload))))
            real(conn, opcode, kind, rid, payload)

        self.patch(protocol.ClientConnection, "frame_received", frame)
        backend = idle.core.vfs_service.backend
        backend.on_shared_event(lambda name, value: heard.append((name, _event_ino(name, value))))
        backend.on_change(lambda event: heard.append(("EV_CHANGE", event.ino)))
        await threads.deferToThread(client.create_write_close, "f")
        ino = (
            await backend.lookup(
                (await backend.lookup((await backend.root()).ino, b"export")).ino, b"f"
            )
        ).ino

        async def settled(n: int) -> list[str]:
            await until(lambda: sum(i == ino for _, i in frames) >= n, f"{n} frames")
            await SMBRoundTripTests()._settle()  # any frame more would come now
            got = sorted(name for name, i in frames if i == ino)
            frames.clear()
            return got

        # The create's change and its share in one frame; the write's
        # change; the close's release of the share.
        self.assertEqual(await settled(3), ["EV_CHANGE", "EV_CHANGE_LOCKS", "EV_LOCKS"])
        await threads.deferToThread(client.delete, "f")
        # The delete's open (its share); the removal's change and its drop.
        self.assertEqual(await settled(2), ["EV_CHANGE_LOCKS", "EV_LOCKS"])
        # Every event of a frame reached the idle gateway's listeners.
        got = sorted(name for name, i in heard if i == ino)
        self.assertEqual(got, ["EV_CHANGE"] * 3 + ["EV_LOCKS"] * 4)
        # Its view of the file's locks and shares is the meta server's: none.
        self.assertFalse(idle.core.vfs_service.vfs.locks.view.busy(ino))


class OtherGatewayOpenTests(TestCase):
    """
    A file made through one gateway and opened through another, which has
    cached nothing of it (smbclient's C{put} and C{del} are two sessions, so
    with C{--workers} the delete lands on the other worker about half the
    time): the records an SMB open reads (DOS attributes, the security
    descriptor, the delete's retention) are found with one LISTXATTR, not a
    GETXATTR each that the meta server answers NoData (docs/workers.rst
    "Records an SMB open reads").
    """

    timeout = 60

    async def _two(self) -> tuple[_Client, _Client, Counter[str]]:
        cluster = Cluster(self, event_marks=True)
        await cluster.start()
        a = await smb_gateway(self, cluster)
        b = await smb_gateway(self, cluster)
        ca = await threads.deferToThread(_Client, a.listeners()["smb"].bound_port)
        self.addCleanup(lambda: threads.deferToThread(ca.close))
        cb = await threads.deferToThread(_Client, b.listeners()["smb"].bound_port)
        self.addCleanup(lambda: threads.deferToThread(cb.close))
        # Both have opened the share's root (the first open warms it).
        await threads.deferToThread(ca.create_write_close, "warm-a")
        await threads.deferToThread(cb.create_write_close, "warm-b")
        calls, _ = count_rpc(self)
        return ca, cb, calls

    async def test_delete_through_the_other(self) -> None:
        ca, cb, calls = await self._two()
        await threads.deferToThread(ca.create_write_close, "f")
        await SMBRoundTripTests()._settle()
        calls.clear()
        await threads.deferToThread(cb.delete, "f")
        await SMBRoundTripTests()._settle()
        calls.pop("SYNC", None)
        # (The directory's attributes, which the create through the other
        # dropped, and the name are asked for too; no GETXATTR.)
        self.assertEqual(
            dict(calls),
            {"GETATTR": 1, "LOOKUP": 1, "LISTXATTR": 1, "SHARE_OPEN": 1, "UNLINK": 1},
        )

    async def test_stored_attributes_seen_through_the_other(self) -> None:
        """A record the inode has (DOS attributes: HIDDEN) is still read, once."""
        from smbprotocol.open import (
            CreateDisposition,
            CreateOptions,
            FileAttributes,
            ImpersonationLevel,
            Open,
        )

        ca, cb, calls = await self._two()

        def make() -> None:
            f = Open(ca.tree, "h")
            f.create(
                ImpersonationLevel.Impersonation,
                0x0012019F,
                FileAttributes.FILE_ATTRIBUTE_HIDDEN,
                0x07,
                CreateDisposition.FILE_CREATE,
                CreateOptions.FILE_NON_DIRECTORY_FILE,
            )
            f.close()

        await threads.deferToThread(make)
        await SMBRoundTripTests()._settle()
        calls.clear()
        f = await threads.deferToThread(cb.open, "h", CreateDisposition.FILE_OPEN)
        self.assertTrue(f.file_attributes & FileAttributes.FILE_ATTRIBUTE_HIDDEN)
        await threads.deferToThread(f.close)
        await SMBRoundTripTests()._settle()
        self.assertEqual(calls["LISTXATTR"], 1)
        self.assertEqual(calls["GETXATTR"], 1)  # the DOS attributes; no descriptor is stored
