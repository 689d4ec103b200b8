"""
L{MetaHandler}'s answers to namespace changes: the directories after the
change (wire.DIRS), taken from the rows the embedded store keeps rather than
read again per change (docs/workers.rst "What one RPC call costs").
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import task
from twisted.trial.unittest import TestCase

from claudefs_gateway.backend.embedded import EmbeddedBackend
from claudefs_gateway.backend.memory import MemoryBackend
from claudefs_gateway.fstypes import FileType
from claudefs_gateway.servers.meta import MetaHandler


class _Conn:
    session = 7


class ChangeAnswerTests(TestCase):
    async def handler(self, store: Any) -> tuple[MetaHandler, list[int]]:
        events: list[Any] = []
        handler = MetaHandler(store, lambda n, v, *_: events.append(v), clock=task.Clock())
        self.addCleanup(handler.shared.stop)
        await handler.open([])
        read: list[int] = []
        real = store.getattr

        def getattr(ino: int) -> Any:
            read.append(ino)
            return real(ino)

        self.patch(store, "getattr", getattr)
        return handler, read

    async def check(self, store: Any, reads_per_answer: int) -> None:
        handler, read = await self.handler(store)
        conn = _Conn()
        root = (await store.root()).ino
        a, dirs = await handler.op_CREATE(conn, root, b"d", FileType.DIR, 0o755, 0, 0, (0, 0), True)
        f, _ = await handler.op_CREATE(conn, a.ino, b"f", FileType.REG, 0o644, 0, 0, (0, 0), True)
        g, dirs2 = await handler.op_CREATE(
            conn, root, b"g", FileType.REG, 0o644, 0, 0, (0, 0), True
        )
        answers = [dirs, dirs2]
        r, moved = await handler.op_RENAME(conn, a.ino, b"f", root, b"f2", True)
        answers.append(moved)
        gone, after_unlink = await handler.op_UNLINK(conn, root, b"g", True)
        answers.append(after_unlink)
        self.assertEqual(len(read), 6 * reads_per_answer)
        del read[:]
        self.assertEqual([d.ino for d in moved], [a.ino, root])
        self.assertEqual((r.source.ino, gone.ino, gone.nlink), (f.ino, g.ino, 0))
        # Each answer is the directory as the store holds it after that change.
        self.assertEqual(list(after_unlink), [await store.getattr(root)])
        self.assertEqual(moved[0], await store.getattr(a.ino))
        self.assertLess(dirs[0].change, dirs2[0].change)
        self.assertLess(dirs2[0].change, moved[1].change)
        self.assertLess(moved[1].change, after_unlink[0].change)

    async def test_embedded_answers_from_kept_rows(self) -> None:
        """Over the embedded store, no directory is read again for a change's answer."""
        path = os.path.abspath(self.mktemp())
        store = EmbeddedBackend(path, None, inline=True, durable=False)
        self.addCleanup(store.close)
        await self.check(store, 0)

    async def test_other_stores_read_the_directories(self) -> None:
        """A store that keeps no rows (memory, PostgreSQL) has the directories read."""
        await self.check(MemoryBackend(), 1)
