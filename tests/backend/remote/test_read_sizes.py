"""
Reads without a GETATTR (marks.py, docs/workers.rst "Reads without a round
trip"): a gateway whose meta server counts the events it pushed in a shared
file takes a file's size for a read from what it fetched before, only while
no change went unheard; and the local path's reads (ChunkStore.read_exact)
across chunk boundaries, holes and a chunk file cut short.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from claudefs_gateway import errors
from claudefs_gateway.backend.remote.marks import MarkReader, MarkWriter, clear_marks, mark_path
from claudefs_gateway.fstypes import FileType, SetAttrs
from claudefs_gateway.servers.data import CHUNK, ChunkStore
from tests.backend.remote.harness import Cluster
from tests.backend.test_contract import ContractMixin


class MarkFileTests(TestCase):
    def test_count_is_shared(self) -> None:
        d = Path(self.mktemp())
        w = MarkWriter(d, 0xAB)
        self.assertEqual(mark_path(d, 0xAB).name, "00000000000000ab")
        r = MarkReader(d, 0xAB)
        self.assertEqual(r.value(), 0)
        w.set(7)
        self.assertEqual(r.value(), 7)
        w.set(2**63 + 5)
        self.assertEqual(r.value(), 2**63 + 5)
        r.close()
        self.assertEqual(r.value(), 1 << 64)  # closed: never current
        r.close()
        w.close()
        self.assertFalse(mark_path(d, 0xAB).exists())
        w.close()

    def test_new_subscription_new_file(self) -> None:
        """A reader of the old file never sees the new one's count, and the old writer leaves it."""
        d = Path(self.mktemp())
        old = MarkWriter(d, 1)
        old_reader = MarkReader(d, 1)
        old.set(10)
        new = MarkWriter(d, 1)
        new_reader = MarkReader(d, 1)
        self.assertEqual(new_reader.value(), 0)
        new.set(3)
        self.assertEqual(old_reader.value(), 10)
        old.close()
        self.assertTrue(mark_path(d, 1).exists())
        self.assertEqual(MarkReader(d, 1).value(), 3)
        new.close()
        self.assertFalse(mark_path(d, 1).exists())

    def test_cleared(self) -> None:
        """What a killed meta server left is removed by the next (all), or for a failed subscription."""
        d = Path(self.mktemp())
        clear_marks(d)  # no directory: nothing to do
        for session in (1, 2):
            MarkWriter(d, session).set(50)
        clear_marks(d, 1)
        self.assertEqual(os.listdir(d), [mark_path(d, 2).name])
        clear_marks(d)
        self.assertEqual(os.listdir(d), [])
        clear_marks(d, 3)

    def test_no_file(self) -> None:
        d = Path(self.mktemp())
        with self.assertRaises(OSError):
            MarkReader(d, 5)
        d.mkdir()
        mark_path(d, 5).write_bytes(b"123")
        with self.assertRaises(OSError):
            MarkReader(d, 5)


async def _two(test: TestCase, marks: bool = True) -> tuple[Cluster, Any, Any]:
    cluster = Cluster(test, event_marks=marks)
    await cluster.start()
    out = []
    for _ in range(2):
        b = cluster.backend(
            short_circuit=ChunkStore(cluster.data_dir, durable=False),
            event_marks=str(cluster.marks) if cluster.marks else None,
        )
        await b.open()
        test.addCleanup(b.close)
        out.append(b)
    for b in out:
        while b._events is None:
            await _turn()
    return cluster, out[0], out[1]


def _turn() -> defer.Deferred[None]:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    return deferLater(reactor, 0, lambda: None)


class ReadSizeTests(TestCase):
    timeout = 60

    async def test_second_read_asks_nothing(self) -> None:
        _, a, b = await _two(self)
        root = (await a.root()).ino
        f = await a.create(root, b"f", FileType.REG, 0o644, 0, 0)
        await a.write(f.ino, 0, b"x" * 100, stable=False)
        calls: list[str] = []
        real = b._call

        def counting(name: str, args: Any = None) -> Any:
            calls.append(name)
            return real(name, args)

        self.patch(b, "_call", counting)
        self.assertEqual(await b.read(f.ino, 0, 10), (b"x" * 10, False))
        self.assertEqual(await b.read(f.ino, 10, 200), (b"x" * 90, True))
        self.assertEqual(await b.read(f.ino, 0, 100), (b"x" * 100, True))
        self.assertEqual(calls, ["GETATTR"])
        self.assertEqual((b.read_sizes_asked, b.read_sizes_kept), (1, 2))

    async def test_others_changes_are_never_missed(self) -> None:
        """
        What a write, a truncate or a remove through one gateway did is what a
        read through the other finds as soon as the first was answered,
        whether the other had heard the event yet or not.
        """
        _, a, b = await _two(self)
        root = (await a.root()).ino
        f = await a.create(root, b"f", FileType.REG, 0o644, 0, 0)
        expected = b""
        for i in range(40):
            piece = bytes([65 + i % 26]) * (i + 1)
            await a.write(f.ino, len(expected), piece, stable=False)
            expected += piece
            self.assertEqual(await b.read(f.ino, 0, 10_000), (expected, True), i)
            if i % 7 == 6:
                await a.setattr(f.ino, SetAttrs(size=len(expected) // 2))
                expected = expected[: len(expected) // 2]
                self.assertEqual(await b.read(f.ino, 0, 10_000), (expected, True), i)
        self.assertGreater(b.read_sizes_asked, 0)
        await b.read(f.ino, 0, 1)
        await a.unlink(root, b"f")
        with self.assertRaises((errors.NotFound, errors.Stale)):
            await b.read(f.ino, 0, 1)

    async def test_events_held_back(self) -> None:
        """
        The other gateway's event not yet handled when the read comes (held
        back here; a busy machine does it): the mark is ahead, the read asks.
        """
        _, a, b = await _two(self)
        f = await a.create((await a.root()).ino, b"f", FileType.REG, 0o644, 0, 0)
        await a.write(f.ino, 0, b"abc", stable=False)
        self.assertEqual(await b.read(f.ino, 0, 10), (b"abc", True))
        conn = b._events
        real = conn.frame_received
        held: list[tuple[Any, ...]] = []
        self.patch(conn, "frame_received", lambda *frame: held.append(frame))
        await a.write(f.ino, 3, b"def", stable=False)
        while not held:
            await _turn()
        self.assertEqual(await b.read(f.ino, 0, 10), (b"abcdef", True))
        self.assertEqual(b.read_sizes_kept, 0)
        await a.setattr(f.ino, SetAttrs(size=1))
        self.assertEqual(await b.read(f.ino, 0, 10), (b"a", True))
        for frame in held:
            real(*frame)
        self.assertEqual(await b.read(f.ino, 0, 10), (b"a", True))
        self.assertEqual(await b.read(f.ino, 0, 10), (b"a", True))
        self.assertEqual(b.read_sizes_kept, 1)

    async def test_behind_the_mark_asks(self) -> None:
        """An event pushed and not yet handled (the mark ahead) makes the read ask."""
        _, a, b = await _two(self)
        f = await a.create((await a.root()).ino, b"f", FileType.REG, 0o644, 0, 0)
        await a.write(f.ino, 0, b"abc", stable=False)
        await b.read(f.ino, 0, 3)
        await b.read(f.ino, 0, 3)
        self.assertEqual(b.read_sizes_kept, 1)
        b._mark[1].events_received -= 1
        await b.read(f.ino, 0, 3)
        self.assertEqual(b.read_sizes_kept, 1)
        self.assertEqual(b.read_sizes_asked, 2)

    async def test_own_changes_drop_the_sizes(self) -> None:
        _, a, _ = await _two(self)
        f = await a.create((await a.root()).ino, b"f", FileType.REG, 0o644, 0, 0)
        await a.write(f.ino, 0, b"abc", stable=False)
        self.assertEqual(await a.read(f.ino, 0, 10), (b"abc", True))
        await a.write(f.ino, 3, b"def", stable=False)
        self.assertEqual(await a.read(f.ino, 0, 10), (b"abcdef", True))
        await a.setattr(f.ino, SetAttrs(size=2))
        self.assertEqual(await a.read(f.ino, 0, 10), (b"ab", True))
        self.assertEqual(a.read_sizes_kept, 0)
        self.assertEqual(await a.read(f.ino, 0, 10), (b"ab", True))
        self.assertEqual(a.read_sizes_kept, 1)

    async def test_events_lost_drop_the_mark(self) -> None:
        _, a, b = await _two(self)
        f = await a.create((await a.root()).ino, b"f", FileType.REG, 0o644, 0, 0)
        await b.read(f.ino, 0, 1)
        events = b._events
        events.transport.loseConnection()
        while b._mark is not None and b._mark[1] is events:
            await _turn()
        self.assertEqual(b._read_attrs, {})
        # Subscribed again: a new mark, and sizes are kept again.
        while b._mark is None:
            await _turn()
        await a.write(f.ino, 0, b"xy", stable=False)
        self.assertEqual(await b.read(f.ino, 0, 5), (b"xy", True))
        self.assertEqual(await b.read(f.ino, 0, 5), (b"xy", True))
        self.assertEqual(b.read_sizes_kept, 1)

    async def test_meta_server_removes_stale_marks(self) -> None:
        """A mark file a killed meta server left is gone before any gateway subscribes."""
        cluster = Cluster(self, event_marks=True)
        cluster.marks.mkdir(parents=True)
        stale = MarkWriter(cluster.marks, 0x1234)
        stale.set(99)
        await cluster.start()
        self.assertEqual(os.listdir(cluster.marks), [])
        b = cluster.backend(event_marks=str(cluster.marks))
        await b.open()
        self.addCleanup(b.close)
        while b._mark is None:
            await _turn()
        self.assertEqual(os.listdir(cluster.marks), [mark_path(cluster.marks, b.session).name])

    async def test_without_marks_every_read_asks(self) -> None:
        _, a, b = await _two(self, marks=False)
        f = await a.create((await a.root()).ino, b"f", FileType.REG, 0o644, 0, 0)
        for _ in range(3):
            await b.read(f.ino, 0, 1)
        self.assertIsNone(b._mark)
        self.assertEqual((b.read_sizes_asked, b.read_sizes_kept), (3, 0))


class SameSizeSetattrTests(TestCase):
    """
    The O_TRUNC SETATTR after a create (the size the file has, nothing
    else): answered from the create's answer, no round trip, only while
    nothing went unheard and nothing is held past the size.
    """

    timeout = 60

    async def _counted(self, b: Any) -> list[str]:
        calls: list[str] = []
        real = b._call

        def counting(name: str, args: Any = None) -> Any:
            calls.append(name)
            return real(name, args)

        self.patch(b, "_call", counting)
        return calls

    async def test_after_create(self) -> None:
        _, a, _ = await _two(self)
        root = (await a.root()).ino
        f = await a.create(root, b"f", FileType.REG, 0o644, 0, 0)
        calls = await self._counted(a)
        self.assertEqual(await a.setattr(f.ino, SetAttrs(size=0)), f)
        self.assertEqual((calls, a.setattrs_skipped), ([], 1))
        # Not for anything more than the size, nor with a guard.
        await a.setattr(f.ino, SetAttrs(size=0), guard_ctime_ns=f.ctime_ns)
        self.assertEqual(calls, ["SETATTR"])
        f = await a.create(root, b"g", FileType.REG, 0o644, 0, 0)
        await a.setattr(f.ino, SetAttrs(size=0, mode=0o600))
        self.assertEqual(calls, ["SETATTR", "CREATE", "SETATTR"])
        # A directory: never kept.
        d = await a.create(root, b"d", FileType.DIR, 0o755, 0, 0)
        with self.assertRaises(errors.IsDir):
            await a.setattr(d.ino, SetAttrs(size=0))

    async def test_a_change_through_another_gateway_is_undone(self) -> None:
        """
        The other gateway's extension (which holds no bytes) not yet heard
        (held back): the mark says so, and the size is set back.
        """
        _, a, b = await _two(self)
        f = await a.create((await a.root()).ino, b"f", FileType.REG, 0o644, 0, 0)
        conn = a._events
        real = conn.frame_received
        held: list[tuple[Any, ...]] = []
        self.patch(conn, "frame_received", lambda *frame: held.append(frame))
        await b.setattr(f.ino, SetAttrs(size=100))
        while not held:
            await _turn()
        after = await a.setattr(f.ino, SetAttrs(size=0))
        self.assertEqual((after.size, a.setattrs_skipped), (0, 0))
        self.assertEqual(await b.read(f.ino, 0, 10), (b"", True))
        for frame in held:
            real(*frame)

    async def test_bytes_held_past_the_size_are_cut(self) -> None:
        """Bytes in the chunk files past the size (a crash lost their write's metadata) go."""
        cluster, a, _ = await _two(self)
        f = await a.create((await a.root()).ino, b"f", FileType.REG, 0o644, 0, 0)
        a._local.put(f.ino, 0, b"left by a crash")
        await a.setattr(f.ino, SetAttrs(size=0))
        self.assertEqual(a.setattrs_skipped, 0)
        self.assertEqual(a._local.held(f.ino), 0)
        await a.setattr(f.ino, SetAttrs(size=20))
        self.assertEqual(await a.read(f.ino, 0, 30), (bytes(20), True))


class MarkedContractTests(ContractMixin, TestCase):
    """The backend contract holds with kept read sizes and the local path on."""

    timeout = 30

    async def make_backend(self) -> Any:
        cluster = Cluster(self, event_marks=True)
        await cluster.start()
        backend = cluster.backend(
            short_circuit=ChunkStore(cluster.data_dir, durable=False),
            event_marks=str(cluster.marks),
        )
        await backend.open()
        self.addCleanup(backend.close)
        while backend._mark is None:
            await _turn()
        return backend


class ReadExactTests(TestCase):
    """The local path's reads: what read() gave, clipped to a size, in one pread when it can."""

    def setUp(self) -> None:
        self.store = ChunkStore(Path(self.mktemp()), durable=False)

    def test_across_chunk_boundaries(self) -> None:
        data = os.urandom(CHUNK + 1000)
        self.store.put(7, CHUNK - 500, data)
        start = CHUNK - 500
        for offset, n in ((start, len(data)), (CHUNK - 1, 2), (start + 10, CHUNK), (0, 3)):
            expected = (bytes(start) + data + bytes(CHUNK))[offset : offset + n]
            self.assertEqual(self.store.read_exact(7, offset, n), expected, (offset, n))

    def test_holes_and_missing_chunks_read_as_zeros(self) -> None:
        self.store.put(9, 2 * CHUNK + 5, b"tail")
        self.assertEqual(self.store.read_exact(9, 0, 10), bytes(10))
        got = self.store.read_exact(9, CHUNK - 2, CHUNK + 11)
        self.assertEqual(got, bytes(CHUNK + 7) + b"tail")
        self.assertEqual(self.store.read_exact(8, 100, 50), bytes(50))
        self.assertEqual(self.store.read_exact(9, 0, 0), b"")

    def test_a_chunk_cut_short(self) -> None:
        """A chunk file shorter than the size says (a crash before its bytes reached the disk)."""
        self.store.put(3, 0, b"a" * 5000)
        self.store.put(3, CHUNK, b"b" * 10)
        path = self.store._path(3, 0)
        os.truncate(path, 100)
        self.assertEqual(self.store.read_exact(3, 0, 5000), b"a" * 100 + bytes(4900))
        got = self.store.read_exact(3, CHUNK - 10, 30)
        self.assertEqual(got, bytes(10) + b"b" * 10 + bytes(10))

    def test_what_was_written(self) -> None:
        """Against a plain bytearray written the same way (and read(), which stops at what is held)."""
        model = bytearray()
        for i, (offset, data) in enumerate(((0, b"x" * 10), (CHUNK * 3 - 1, b"yz"), (5, b"q"))):
            self.store.put(11, offset, data)
            model.extend(bytes(max(0, offset + len(data) - len(model))))
            model[offset : offset + len(data)] = data
            end = self.store.held(11)
            self.assertEqual(end, len(model), i)
            self.assertEqual(self.store.read_exact(11, 0, end + 7), bytes(model) + bytes(7), i)
            self.assertEqual(self.store.read(11, 1, end + 7), (True, bytes(model[1:])), i)

    def test_negative(self) -> None:
        with self.assertRaises(errors.Inval):
            self.store.read_exact(1, -1, 5)


class RealClientTests(TestCase):
    """libnfs's nfs-cp through a gateway whose backend keeps sizes (what --workers sets)."""

    timeout = 120

    async def test_nfs_cp_costs_no_getattr_per_read_nor_setattr(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.threads import deferToThread

        from claudefs_gateway import service
        from claudefs_gateway.core import config as cfg
        from tests.backend.remote.test_gateway import remote_yaml
        from tests.helpers import bin_path, spawn

        cluster = Cluster(self, event_marks=True)
        await cluster.start()
        data = os.path.abspath(self.mktemp())
        text = remote_yaml(data, cluster.meta_address).replace(
            f'backend: {{type: remote, data_dir: "{data}"}}',
            f'backend: {{type: remote, data_dir: "{data}", short_circuit: "{cluster.data_dir}",'
            f' event_marks: "{cluster.marks}"}}',
        )
        root = service.build(cfg.loads(text), reactor, protocols=["nfs"])
        root.privilegedStartService()
        root.startService()
        self.addCleanup(root.stopService)
        await root.core.vfs_ready()
        backend = root.core.vfs_service.backend
        self.assertTrue(backend.short_circuited)
        while backend._mark is None:
            await _turn()
        calls: list[str] = []
        real = backend._call

        def counting(name: str, args: Any = None) -> Any:
            calls.append(name)
            return real(name, args)

        self.patch(backend, "_call", counting)
        ports = root.listeners()
        url = (
            f"nfs://127.0.0.1/export/f.bin?version=3&nfsport={ports['nfs'].bound_port}"
            f"&mountport={ports['mount'].bound_port}"
        )
        body = os.urandom(3 * CHUNK + 12345)
        src = os.path.abspath(self.mktemp())
        await deferToThread(Path(src).write_bytes, body)
        self.assertEqual(await spawn([bin_path("nfs-cp"), src, url]).ended, 0)
        # Created with O_TRUNC: no SETATTR reached the meta server.
        self.assertNotIn("SETATTR", calls)
        self.assertEqual(backend.setattrs_skipped, 1)
        calls.clear()
        dst = os.path.abspath(self.mktemp())
        self.assertEqual(await spawn([bin_path("nfs-cp"), url, dst]).ended, 0)
        self.assertEqual(await deferToThread(Path(dst).read_bytes), body)
        # Reads across the chunk boundaries, one GETATTR for all of them.
        self.assertLessEqual(calls.count("GETATTR"), 2)
        self.assertGreater(backend.read_sizes_kept, 3)
