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

from claudefs_gateway import errors
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


class _Other:
    session = 9


class JoinedEventTests(TestCase):
    """
    A call's EV_CHANGE and the EV_LOCKS it made go in one EV_CHANGE_LOCKS
    frame when they go to the same gateways (docs/workers.rst "One frame for
    a call's two events"), and apart otherwise.
    """

    async def handler(self) -> tuple[MetaHandler, list[tuple[str, Any, int]], int]:
        published: list[tuple[str, Any, int]] = []

        def publish(name: str, value: Any, origin: int = 0, *_: Any) -> None:
            published.append((name, value, origin))

        store = MemoryBackend()
        handler = MetaHandler(store, publish, clock=task.Clock())
        self.addCleanup(handler.shared.stop)
        await handler.open([])
        return handler, published, (await store.root()).ino

    async def test_create_open_and_delete(self) -> None:
        handler, published, root = await self.handler()
        owner = ("smb", b"s:1", b"o1")
        a, _, ok = await handler.op_CREATE_OPEN(
            _Conn(), root, b"f", FileType.REG, 0o644, 0, 0, (0, 0), True, owner, 1, 1, 0
        )
        self.assertTrue(ok)
        ((name, (change, locks), _),) = published
        self.assertEqual(name, "EV_CHANGE_LOCKS")
        self.assertEqual((change.session, change.ino, change.dir), (7, a.ino, root))
        self.assertEqual((locks[0], len(locks[2])), (a.ino, 1))
        del published[:]
        # The delete's own share goes with the file: one frame again.
        await handler.op_UNLINK(_Conn(), root, b"f", True)
        ((name, (change, locks), _),) = published
        self.assertEqual((name, change.ino, locks), ("EV_CHANGE_LOCKS", a.ino, (a.ino, [], [])))

    async def test_another_gateways_state_goes_apart(self) -> None:
        """
        A removed inode another gateway held a share on: that gateway must
        hear of the drop, the remover too (EV_LOCKS to all), and the change
        goes to all but the remover, so the two are not joined.
        """
        handler, published, root = await self.handler()
        a, _ = await handler.op_CREATE(_Conn(), root, b"g", FileType.REG, 0o644, 0, 0, (0, 0), True)
        handler.shared.share_open(9, a.ino, ("smb", b"s:2", b"o"), 1, 1, 0, False)
        del published[:]
        await handler.op_UNLINK(_Conn(), root, b"g", True)
        self.assertEqual([(n, o) for n, _, o in published], [("EV_LOCKS", 0), ("EV_CHANGE", 0)])

    async def test_change_told_when_the_share_is_refused(self) -> None:
        """A share refused at CREATE_OPEN (grace): the file was made, its change still goes."""
        handler, published, root = await self.handler()

        def in_grace(reclaim: bool) -> None:
            raise errors.Grace("another gateway's clients are reclaiming")

        self.patch(handler.shared, "_check_grace", in_grace)
        a, _, ok = await handler.op_CREATE_OPEN(
            _Conn(),
            root,
            b"h",
            FileType.REG,
            0o644,
            0,
            0,
            (0, 0),
            True,
            ("smb", b"s", b"o"),
            1,
            1,
            0,
        )
        self.assertFalse(ok)
        self.assertEqual([n for n, _, _ in published], ["EV_CHANGE"])
        self.assertEqual(published[0][1].ino, a.ino)
