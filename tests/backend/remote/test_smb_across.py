"""
Two SMB gateways on one meta server (C{backend: remote}, as two C{--workers}
workers): what a client does through one is seen by a client of the other,
by name in any case and through CHANGE_NOTIFY, with real clients
(smbprotocol). The meta server's change events name the directory, not the
entry (docs/workers.rst "What is shared, and what is not yet").
"""

from __future__ import annotations

from typing import Any

from twisted.internet import threads
from twisted.trial.unittest import TestCase

from tests.backend.remote.harness import Cluster
from tests.backend.remote.test_shared import until
from tests.backend.remote.test_smb_round_trips import _Client, _smb_factory, smb_gateway


class AcrossGatewaysTests(TestCase):
    timeout = 60

    async def _gateways(self) -> tuple[_Client, _Client]:
        cluster = Cluster(self, event_marks=True)
        await cluster.start()
        clients = []
        self.roots: list[Any] = []
        for _ in range(2):
            root = await smb_gateway(self, cluster)
            self.roots.append(root)
            port = root.listeners()["smb"].bound_port
            client = await threads.deferToThread(_Client, port)
            self.addCleanup(lambda client=client: threads.deferToThread(client.close))
            clients.append(client)
        return clients[0], clients[1]

    async def test_name_in_another_case(self) -> None:
        """
        B has listed the share's names (its case index holds them); a file
        A then creates opens through B in another case, at once.
        """
        from smbprotocol.exceptions import SMBResponseException
        from smbprotocol.open import CreateDisposition

        a, b = await self._gateways()
        await threads.deferToThread(b.create_write_close, "seen-by-b")
        with self.assertRaises(SMBResponseException):
            await threads.deferToThread(b.open, "report.txt", CreateDisposition.FILE_OPEN)
        await threads.deferToThread(a.create_write_close, "Report.txt")
        f = await threads.deferToThread(b.open, "REPORT.TXT", CreateDisposition.FILE_OPEN)
        self.assertEqual(f.end_of_file, 4096)
        await threads.deferToThread(f.close)
        # A create in another case through B opens A's file, never a second one.
        g = await threads.deferToThread(b.open, "report.TXT", CreateDisposition.FILE_OPEN_IF)
        self.assertEqual(g.end_of_file, 4096)
        await threads.deferToThread(g.close)

    async def test_change_notify_hears_the_other_gateway(self) -> None:
        """A watch through B is answered "re-read" (NOTIFY_ENUM_DIR) when A adds a file."""
        from smbprotocol.change_notify import CompletionFilter, FileSystemWatcher
        from smbprotocol.open import (
            CreateDisposition,
            CreateOptions,
            FileAttributes,
            ImpersonationLevel,
            Open,
        )

        a, b = await self._gateways()

        def watch() -> Any:
            d = Open(b.tree, "")
            d.create(
                ImpersonationLevel.Impersonation,
                0x00000001 | 0x00100000,  # FILE_LIST_DIRECTORY | SYNCHRONIZE
                FileAttributes.FILE_ATTRIBUTE_DIRECTORY,
                0x07,
                CreateDisposition.FILE_OPEN,
                CreateOptions.FILE_DIRECTORY_FILE,
            )
            w = FileSystemWatcher(d)
            w.start(CompletionFilter.FILE_NOTIFY_CHANGE_FILE_NAME)
            return w

        watcher = await threads.deferToThread(watch)
        await threads.deferToThread(a.create_write_close, "added-through-a")
        self.assertEqual(await threads.deferToThread(watcher.wait), [])

    async def test_delete_on_close_share_leaves_the_other_view(self) -> None:
        """
        A's delete-on-close open of a file is in B's lock view while it is
        open; its close sends no RELEASE_OWNER (the UNLINK drops the share at
        the meta server), and B's view loses the share all the same, so B
        makes the name again at once (docs/workers.rst "An SMB delete's
        close").
        """
        from smbprotocol.open import CreateDisposition, CreateOptions

        a, b = await self._gateways()
        await threads.deferToThread(a.create_write_close, "doomed")
        backend = self.roots[0].core.vfs_service.backend
        export = await backend.lookup((await backend.root()).ino, b"export")
        ino = (await backend.lookup(export.ino, b"doomed")).ino
        view = self.roots[1].core.vfs_service.vfs.locks.view
        f = await threads.deferToThread(
            a.open,
            "doomed",
            CreateDisposition.FILE_OPEN,
            CreateOptions.FILE_DELETE_ON_CLOSE,
            0x00010000,
        )
        await until(lambda: view.shares(ino), "B hears of A's open")
        await threads.deferToThread(f.close)
        await until(lambda: not view.shares(ino), "B hears the share go with the file")
        await threads.deferToThread(b.create_write_close, "doomed")


class StopTests(TestCase):
    timeout = 60

    async def test_last_metadata_flush_before_the_store_closes(self) -> None:
        """
        A gateway stopping with SMB metadata changes not yet synced (the
        background flush is due) syncs them at the meta server before its
        connections close: the stop sends SYNC, and logs no failed flush
        (trial fails a test on a logged error).
        """
        from claudefs_gateway.backend.remote import protocol

        cluster = Cluster(self, event_marks=True)
        await cluster.start()
        root = await smb_gateway(self, cluster, stopped=False)
        port = root.listeners()["smb"].bound_port
        client = await threads.deferToThread(_Client, port)
        await threads.deferToThread(client.create_write_close, "unsynced")
        await threads.deferToThread(client.close)
        self.assertIsNotNone(_smb_factory(root).files._meta_flush)
        calls: list[str] = []
        real = protocol.ClientConnection.call

        def counting(conn: Any, name: str, args: Any = None) -> Any:
            calls.append(name)
            return real(conn, name, args)

        self.patch(protocol.ClientConnection, "call", counting)
        await root.stopService()
        self.assertIn("SYNC", calls)
