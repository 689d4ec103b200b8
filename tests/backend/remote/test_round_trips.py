"""
Round trips to the meta server per namespace change: the answers of CREATE,
MKDIR, UNLINK, RMDIR and RENAME carry the directories after them (wire.DIRS),
so the attributes an NFS reply needs for its wcc data come from the cache, not
from a GETATTR. The counts are of the client's calls, over a real meta server.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from claudefs_gateway.fstypes import Credentials
from tests.backend.remote.harness import Cluster
from tests.backend.remote.test_gateway import start_in_process


class RoundTripTests(TestCase):
    timeout = 60

    async def _gateway(self) -> tuple[Any, Any, Any, Counter[str]]:
        cluster = Cluster(self)
        await cluster.start()
        root = await start_in_process(self, cluster, [])
        vfs = root.core.vfs_service.vfs
        backend = root.core.vfs_service.backend
        calls: Counter[str] = Counter()
        real = backend._call

        def counting(name: str, args: Any = None) -> Any:
            calls[name] += 1
            return real(name, args)

        backend._call = counting
        export = vfs.exports.by_path("/export")
        caller = vfs.caller(export, "127.0.0.1", Credentials(0, 0, ()), "test")
        return vfs, caller, export.root_ino, calls

    async def _then_dir(self, vfs: Any, caller: Any, d: int, calls: Counter[str], op: Any) -> Any:
        """Run C{op}, then read the directory as an NFS reply's wcc data does."""
        calls.clear()
        result = await op()
        after = await vfs.getattr(caller, d)
        # The data an unlink frees goes in the background: let it finish.
        await defer.gatherResults(list(vfs.backend._background))
        return result, after

    async def test_create_mkdir_answer_the_directory(self) -> None:
        """CREATE and MKDIR cost one meta round trip each, the directory's attributes included."""
        vfs, caller, top, calls = await self._gateway()
        await vfs.getattr(caller, top)
        before = await vfs.getattr(caller, top)
        f, after = await self._then_dir(
            vfs, caller, top, calls, lambda: vfs.create(caller, top, b"f", 0o644)
        )
        self.assertEqual(dict(calls), {"CREATE": 1})
        self.assertGreater(after.change, before.change)
        self.assertEqual(after, await vfs.backend.getattr(top))
        sub, after = await self._then_dir(
            vfs, caller, top, calls, lambda: vfs.mkdir(caller, top, b"d", 0o755)
        )
        self.assertEqual(dict(calls), {"CREATE": 1})
        self.assertEqual(after.nlink, (await vfs.backend.getattr(top)).nlink)
        self.assertEqual(after, await vfs.backend.getattr(top))

    async def test_remove_rmdir_rename_answer_the_directories(self) -> None:
        """UNLINK, RMDIR and RENAME need no GETATTR of the directories they changed."""
        vfs, caller, top, calls = await self._gateway()
        sub = await vfs.mkdir(caller, top, b"d", 0o755)
        await vfs.create(caller, top, b"f", 0o644)
        await vfs.create(caller, top, b"g", 0o644)
        await vfs.getattr(caller, sub.ino)
        _, after = await self._then_dir(
            vfs, caller, top, calls, lambda: vfs.rename(caller, top, b"g", sub.ino, b"g2")
        )
        await vfs.getattr(caller, sub.ino)
        self.assertEqual(calls["RENAME"], 1)
        self.assertEqual(calls["GETATTR"], 0)
        self.assertEqual(after, await vfs.backend.getattr(top))
        self.assertEqual(await vfs.getattr(caller, sub.ino), await vfs.backend.getattr(sub.ino))
        _, after = await self._then_dir(
            vfs, caller, top, calls, lambda: vfs.remove(caller, top, b"f")
        )
        self.assertEqual(calls["UNLINK"], 1)
        self.assertEqual(calls["GETATTR"], 0)
        self.assertEqual(after, await vfs.backend.getattr(top))
        await vfs.remove(caller, sub.ino, b"g2")
        _, after = await self._then_dir(
            vfs, caller, top, calls, lambda: vfs.rmdir(caller, top, b"d")
        )
        self.assertEqual(calls["RMDIR"], 1)
        self.assertEqual(calls["GETATTR"], 0)
        self.assertEqual(after, await vfs.backend.getattr(top))
        self.assertIsNone(vfs.backend.dir_after(sub.ino))

    async def test_without_the_answer_a_getattr(self) -> None:
        """A backend that answers no directories (the version before) costs a GETATTR more."""
        vfs, caller, top, calls = await self._gateway()
        vfs._dir_after = None
        await vfs.getattr(caller, top)
        await self._then_dir(vfs, caller, top, calls, lambda: vfs.create(caller, top, b"f", 0o644))
        self.assertEqual(dict(calls), {"CREATE": 1, "GETATTR": 1})
        await self._then_dir(vfs, caller, top, calls, lambda: vfs.remove(caller, top, b"f"))
        self.assertEqual(calls["GETATTR"], 1)
