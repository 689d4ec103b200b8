"""
Write-behind of unstable WROTEs (docs/workers.rst "Write-behind"): a
gateway on the data server's host answers an unstable write once its bytes
are in the chunk files, with the WROTE sent and not awaited; its COMMIT and
every later call wait for those WROTEs, another gateway waits for them
(board.py) before it takes a size, and one that is lost changes the write
verifier.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from twisted.internet import defer
from twisted.python.monkey import MonkeyPatcher
from twisted.trial.unittest import TestCase

from claudefs_gateway import errors
from claudefs_gateway.backend.remote import board
from claudefs_gateway.backend.remote.board import WriteBoard, board_dir, clear_dead
from claudefs_gateway.fstypes import FileType, SetAttrs
from claudefs_gateway.servers.data import ChunkStore
from tests.backend.remote.test_read_sizes import _turn, _two


class _Held:
    """
    Holds C{backend}'s write-behind WROTEs before they are sent, until
    released. With C{at_write} each write's WROTE is sent (here: held) as
    the write is answered, not when the backend's own hold ends
    (L{client.WROTE_HOLD_SECS}): what these tests hold is a WROTE in flight.
    """

    def __init__(self, test: TestCase, backend: Any, at_write: bool = True) -> None:
        self.real = backend._call_now
        self.held: list[tuple[defer.Deferred[Any], tuple[str, Any]]] = []
        self.calls: list[str] = []
        self.args: list[Any] = []
        self.hold = True
        test.patch(backend, "_call_now", self._call_now)
        if at_write:
            real_write = backend.write

            def write(*a: Any, **kw: Any) -> Any:
                d = real_write(*a, **kw)
                backend._send_held()
                return d

            test.patch(backend, "write", write)

    def _call_now(self, name: str, args: Any = None) -> defer.Deferred[Any]:
        self.calls.append(name)
        self.args.append(args)
        if name == "WROTE" and args[-1] != 0 and self.hold:
            d: defer.Deferred[Any] = defer.Deferred()
            self.held.append((d, (name, args)))
            return d
        return self.real(name, args)

    def release(self) -> None:
        held, self.held = self.held, []
        for d, (name, args) in held:
            self.real(name, args).chainDeferred(d)

    def fail(self, error: Exception) -> None:
        held, self.held = self.held, []
        for d, _ in held:
            d.errback(error)


class WriteBehindTests(TestCase):
    timeout = 60

    async def test_writes_go_behind_and_match_the_store(self) -> None:
        """
        Each unstable write to a file just created (whose attributes the
        CREATE answer gave) answers before its WROTE is: one WROTE per write
        and no other call; the attributes each answer gave are those the
        store then holds.
        """
        _, a, _ = await _two(self)
        f = await a.create((await a.root()).ino, b"f", FileType.REG, 0o644, 0, 0)
        counted = _Held(self, a, at_write=False)
        counted.hold = False
        results = []
        for i in range(10):
            results.append(
                await a.write(f.ino, i * 100, bytes([65 + i]) * 100, stable=False, behind=True)
            )
        # Each write sends the one before it; the last is held for the COMMIT.
        self.assertEqual(counted.calls, ["WROTE"] * 9)
        self.assertEqual(a.writes_behind, 10)
        self.assertEqual(results[0].before, f)
        for i, r in enumerate(results):
            self.assertEqual((r.count, r.stable, r.attrs.size), (100, False, (i + 1) * 100))
        for before, after in zip(results, results[1:], strict=False):
            self.assertEqual(after.before, before.attrs)
        committed = await a.commit(f.ino)
        # The COMMIT carried the last write's WROTE, made stable: no COMMIT_META.
        self.assertEqual(counted.calls, ["WROTE"] * 10)
        self.assertEqual(counted.args[-1][4], True)
        self.assertEqual(a.wrotes_folded, 1)
        self.assertEqual(committed, results[-1].attrs)
        self.assertEqual((await a.read(f.ino, 0, 2000))[0][-100:], b"J" * 100)

    async def test_commit_waits_for_the_writes(self) -> None:
        """A COMMIT is not answered before every write-behind WROTE is, and then holds them."""
        cluster, a, _ = await _two(self)
        f = await a.create((await a.root()).ino, b"f", FileType.REG, 0o644, 0, 0)
        await a.write(f.ino, 0, b"a" * 10, stable=False, behind=True)
        a._send_held()  # (its own hold: L{client.WROTE_HOLD_SECS})
        held = _Held(self, a)
        r = await a.write(f.ino, 10, b"b" * 4000, stable=False, behind=True)
        self.assertEqual(r.attrs.size, 4010)
        self.assertEqual(len(held.held), 1)
        done = a.commit(f.ino)
        for _ in range(20):
            await _turn()
        self.assertFalse(done.called)
        self.assertNotIn("COMMIT_META", held.calls)
        held.release()
        committed = await done
        self.assertEqual(committed.size, 4010)
        # What the meta server's store holds, asked directly.
        store = cluster.meta.factory.handler.backend  # type: ignore[union-attr]
        self.assertEqual((await store.getattr(f.ino)).size, 4010)

    async def test_other_gateway_never_sees_an_old_size(self) -> None:
        """
        A write answered through A and its WROTE not yet at the meta server:
        a read or a GETATTR through B waits for it rather than answer the
        old size (or kept attributes).
        """
        _, a, b = await _two(self)
        f = await a.create((await a.root()).ino, b"f", FileType.REG, 0o644, 0, 0)
        await a.write(f.ino, 0, b"x" * 10, stable=False, behind=True)
        self.assertEqual(await b.read(f.ino, 0, 100), (b"x" * 10, True))
        a._send_held()  # (its own hold: L{client.WROTE_HOLD_SECS})
        held = _Held(self, a)
        r = await a.write(f.ino, 10, b"y" * 10, stable=False, behind=True)
        read = b.read(f.ino, 0, 100)
        got = b.getattr(f.ino)
        for _ in range(20):
            await _turn()
        self.assertFalse(read.called)
        self.assertFalse(got.called)
        held.release()
        self.assertEqual(await read, (b"x" * 10 + b"y" * 10, True))
        a2 = await got
        self.assertEqual((a2.size, a2.mtime_ns, a2.change), (20, r.attrs.mtime_ns, r.attrs.change))
        self.assertGreater(b.board_waits, 0)

    async def test_lost_wrote_changes_the_verifier(self) -> None:
        """A write-behind WROTE that fails: the client must resend (restarts moves)."""
        _, a, _ = await _two(self)
        f = await a.create((await a.root()).ino, b"f", FileType.REG, 0o644, 0, 0)
        await a.write(f.ino, 0, b"a", stable=False, behind=True)
        a._send_held()  # (its own hold: L{client.WROTE_HOLD_SECS})
        held = _Held(self, a)
        await a.write(f.ino, 1, b"b", stable=False, behind=True)
        before = a.restarts
        behind = a.writes_behind
        held.fail(errors.BackendUnavailable("gone"))
        self.assertEqual(a.restarts, before + 1)
        # The next write learns the file's attributes again (no guess on a lost one).
        held.hold = False
        await a.write(f.ino, 2, b"c", stable=False, behind=True)
        self.assertEqual(held.calls[-1], "WROTE")
        self.assertEqual(a.writes_behind, behind)
        # The file's COMMIT says so (try later), not that the writes are safe:
        # a client that does not check the verifier (libnfs) sees its fsync fail.
        with self.assertRaises(errors.UnstableLost):
            await a.commit(f.ino)
        self.assertEqual((await a.commit(f.ino)).size, 3)

    async def test_server_restart_fails_the_next_commit(self) -> None:
        """
        A server restart between an NFS unstable write and the file's COMMIT:
        the COMMIT fails with UnstableLost (the verifier has changed too);
        a file with no unstable write since its last COMMIT commits as before.
        """
        _, a, _ = await _two(self)
        root = (await a.root()).ino
        f = await a.create(root, b"f", FileType.REG, 0o644, 0, 0)
        g = await a.create(root, b"g", FileType.REG, 0o644, 0, 0)
        await a.write(g.ino, 0, b"g", stable=False, behind=True)
        await a.commit(g.ino)
        await a.write(f.ino, 0, b"f", stable=False, behind=True)
        before = a.restarts
        address = next(iter(a._boots))
        a._greeted(address, SimpleNamespace(boot=b"another boot", role="meta"))
        self.assertEqual(a.restarts, before + 1)
        with self.assertRaises(errors.UnstableLost):
            await a.commit(f.ino)
        await a.commit(f.ino)
        await a.commit(g.ino)

    async def test_meta_server_lost_unstable_changes_the_verifier(self) -> None:
        """The meta server's UnstableLost (a database restart) fails the COMMIT and moves restarts."""
        _, a, _ = await _two(self)
        f = await a.create((await a.root()).ino, b"f", FileType.REG, 0o644, 0, 0)
        await a.write(f.ino, 0, b"f", stable=False, behind=True)
        a._send_held()
        real = a._call_now

        def call_now(name: str, args: Any = None) -> Any:
            if name in ("COMMIT_META", "WROTE"):
                return defer.fail(errors.UnstableLost("lost in a database restart"))
            return real(name, args)

        self.patch(a, "_call_now", call_now)
        before = a.restarts
        with self.assertRaises(errors.UnstableLost):
            await a.commit(f.ino)
        self.assertEqual(a.restarts, before + 1)

    async def test_commit_carries_the_held_wrote(self) -> None:
        """
        A COMMIT that comes while the file's last write-behind WROTE is
        still held sends that WROTE, made stable, in place of COMMIT_META:
        one call. Lost (the meta server gone), the COMMIT fails and the
        write verifier changes, so the client resends the write.
        """
        _, a, _ = await _two(self)
        f = await a.create((await a.root()).ino, b"f", FileType.REG, 0o644, 0, 0)
        held = _Held(self, a, at_write=False)
        r = await a.write(f.ino, 0, b"z" * 4096, stable=False, behind=True)
        self.assertEqual((held.calls, r.attrs.size), ([], 4096))
        done = a.commit(f.ino)
        await _turn()
        self.assertEqual(held.calls, ["WROTE"])
        self.assertEqual(held.args[0][:5], (f.ino, 0, 4096, 0, True))
        before = a.restarts
        held.fail(errors.BackendUnavailable("gone"))
        with self.assertRaises(errors.BackendUnavailable):
            await done
        self.assertEqual(a.restarts, before + 1)
        # Carried and answered: the COMMIT's attributes are the store's (the
        # first write after the loss learns the attributes again, waiting).
        held.hold = False
        await a.write(f.ino, 0, b"y" * 100, stable=False, behind=True)
        await a.write(f.ino, 100, b"w" * 100, stable=False, behind=True)
        committed = await a.commit(f.ino)
        self.assertEqual(held.calls[-1], "WROTE")
        self.assertEqual(committed, await a.getattr(f.ino))
        self.assertEqual(a.wrotes_folded, 2)

    async def test_stable_write_waits_for_the_writes_behind(self) -> None:
        """A FILE_SYNC write's WROTE goes out after the unanswered ones, and its answer holds them."""
        _, a, _ = await _two(self)
        f = await a.create((await a.root()).ino, b"f", FileType.REG, 0o644, 0, 0)
        held = _Held(self, a)
        await a.write(f.ino, 0, b"u" * 100, stable=False, behind=True)
        stable = a.write(f.ino, 0, b"s", stable=True, behind=True)
        for _ in range(20):
            await _turn()
        self.assertFalse(stable.called)
        self.assertEqual(held.calls, ["WROTE"])
        held.release()
        r = await stable
        self.assertEqual((r.stable, r.attrs.size), (True, 100))
        self.assertNotIn(f.ino, a._wb_attrs)

    async def test_other_changes_end_write_behind(self) -> None:
        """A truncate (here or through another gateway) drops what the next write would build on."""
        _, a, b = await _two(self)
        f = await a.create((await a.root()).ino, b"f", FileType.REG, 0o644, 0, 0)
        await a.write(f.ino, 0, b"a" * 100, stable=False, behind=True)
        behind = a.writes_behind
        await b.setattr(f.ino, SetAttrs(size=10))
        while f.ino in a._wb_attrs:
            await _turn()
        r = await a.write(f.ino, 10, b"b", stable=False, behind=True)
        self.assertEqual(a.writes_behind, behind)
        self.assertEqual(r.attrs.size, 11)
        await a.setattr(f.ino, SetAttrs(size=5))
        r = await a.write(f.ino, 5, b"c", stable=False, behind=True)
        self.assertEqual(a.writes_behind, behind)
        self.assertEqual(r.attrs.size, 6)


async def _vfs(test: TestCase, backend: Any, protocol: str = "nfs3") -> Any:
    from twisted.internet import reactor

    from claudefs_gateway.core import config as cfg
    from claudefs_gateway.core.metrics import Metrics
    from claudefs_gateway.fstypes import Credentials
    from claudefs_gateway.vfs import VFS, UserDB

    config = cfg.loads("exports: [{path: /export, root_squash: false, dir_mode: 0777}]\n")
    vfs = VFS(backend, config, reactor, b"k" * 32, UserDB(reactor, inline=[]), Metrics())
    await vfs.open()
    export = vfs.exports.by_path("/export")
    return vfs, vfs.caller(export, "127.0.0.1", Credentials(0, 0, ()), protocol), export.root_ino


class VFSTests(TestCase):
    timeout = 60

    async def test_cached_attributes_wait_for_another_gateways_write(self) -> None:
        """
        Gateway B has the file's attributes cached; a write answered through
        A whose WROTE the meta server has not applied: B's GETATTR answers
        neither from its cache nor from the meta server before it is applied,
        and then gives the size and mtime A's client was told.
        """
        _, a, b = await _two(self)
        va, ca, root = await _vfs(self, a)
        vb, cb, _ = await _vfs(self, b)
        f = await va.create(ca, root, b"f", 0o644)
        await va.write(ca, f.ino, 0, b"1" * 10, False)
        self.assertEqual((await vb.getattr(cb, f.ino)).size, 10)
        self.assertIsNotNone(vb.attr_cache.get(f.ino))
        held = _Held(self, a)
        r = await va.write(ca, f.ino, 10, b"2" * 10, False)
        self.assertEqual(r.attrs.size, 20)
        got = vb.getattr(cb, f.ino)
        for _ in range(20):
            await _turn()
        self.assertFalse(got.called)
        held.release()
        after = await got
        self.assertEqual((after.size, after.mtime_ns), (20, r.attrs.mtime_ns))
        # The writing gateway's own view matches what it answered.
        self.assertEqual(await va.getattr(ca, f.ino), r.attrs)
        self.assertEqual((await vb.read(cb, f.ino, 0, 100)).data, b"1" * 10 + b"2" * 10)

    async def test_fresh_lookup_waits_for_another_gateways_write(self) -> None:
        """
        A fresh lookup (S3's read-after-write, SMB's open) through gateway B,
        whose caches hold the file and have heard every event: a write
        answered through A and not yet applied by the meta server (its event
        not out yet) keeps B from answering from its caches or from the meta
        server until it is applied; then B gives the size A's client was told.
        """
        _, a, b = await _two(self)
        va, ca, root = await _vfs(self, a)
        vb, cb, _ = await _vfs(self, b, "s3")
        # As vfs/service.py wires them: B's caches drop what events name.
        b.on_change(lambda ev: vb.forget_changed(ev.ino, ev.dir))
        b.on_reset(vb.invalidate)
        f = await va.create(ca, root, b"f", 0o644)
        await va.write(ca, f.ino, 0, b"1" * 10, False)
        self.assertEqual((await vb.lookup(cb, root, b"f", fresh=True)).size, 10)
        self.assertTrue(b.heard_everything())
        held = _Held(self, a)
        r = await va.write(ca, f.ino, 10, b"2" * 10, False)
        self.assertEqual(r.attrs.size, 20)
        self.assertFalse(b.heard_everything())
        got = vb.lookup(cb, root, b"f", fresh=True)
        for _ in range(20):
            await _turn()
        self.assertFalse(got.called)
        held.release()
        after = await got
        self.assertEqual((after.size, after.mtime_ns), (20, r.attrs.mtime_ns))

    async def test_only_nfs_writes_go_behind(self) -> None:
        """
        SMB has no write verifier to make a client resend: its unstable
        writes wait for their WROTE, as before.
        """
        _, a, _ = await _two(self)
        vs, cs, root = await _vfs(self, a, "smb")
        vn, cn, _ = await _vfs(self, a, "nfs3")
        f = await vs.create(cs, root, b"f", 0o644)
        held = _Held(self, a)
        done = vs.write(cs, f.ino, 0, b"s" * 10, False)
        for _ in range(10):
            await _turn()
        self.assertTrue(done.called)
        self.assertEqual(a.writes_behind, 0)
        self.assertEqual(held.held, [])
        await vn.write(cn, f.ino, 10, b"n" * 10, False)
        self.assertEqual(a.writes_behind, 1)
        self.assertEqual(len(held.held), 1)
        held.release()
        self.assertEqual((await a.getattr(f.ino)).size, 20)


class BoardTests(TestCase):
    def test_counts_and_dead_writers(self) -> None:
        d = Path(self.mktemp())
        mine = WriteBoard(d, 1)
        other = WriteBoard(d, 2)
        self.addCleanup(mine.close)
        self.assertEqual(mine.behind(), [])
        other.sent()
        other.sent()
        waits = mine.behind()
        self.assertEqual(len(waits), 1)
        other.answered()
        self.assertEqual(mine.caught_up(waits), waits)
        other.sent()  # a later one is not waited for
        other.answered()
        self.assertEqual(mine.caught_up(waits), [])
        # A writer whose process is gone (killed) with WROTEs unanswered.
        other._words[0] = 2**30 + 12345  # type: ignore[index]
        other.sent()
        waits = mine.behind()
        self.assertEqual(mine.caught_up(waits), [])
        self.assertFalse(other.path.exists())
        other.close()
        self.assertEqual(_files(d), [mine.path.name])

    def test_no_system_call_when_nobody_came_or_went(self) -> None:
        """
        The look every GETATTR and LOOKUP makes reads mapped words only; a
        gateway started, closed or removed dead since is seen at the next look.
        """
        d = Path(self.mktemp())
        mine = WriteBoard(d, 1)
        self.addCleanup(mine.close)
        other = WriteBoard(d, 2)
        self.addCleanup(other.close)
        self.assertEqual(mine.behind(), [])

        def no(*a: object, **kw: object) -> None:
            raise AssertionError("a system call on the board's directory")

        # (board.os is the os module: patched only around these lines.)
        patcher = MonkeyPatcher(
            *((board.os, n, no) for n in ("stat", "listdir", "scandir", "open"))
        )
        with patcher:
            other.sent()
            self.assertEqual(mine.behind(), [(other.path.name, 1)])
            other.answered()
            self.assertEqual(mine.behind(), [])
        # A gateway started after the first look, with a write unanswered.
        late = WriteBoard(d, 3)
        self.addCleanup(late.close)
        late.sent()
        self.assertEqual(mine.behind(), [(late.path.name, 1)])
        # Killed (its process gone): the supervisor's clear_dead removes it,
        # and the next look no longer waits for it.
        late._words[0] = 2**30 + 99  # type: ignore[index]
        self.assertEqual(clear_dead(d), 1)
        self.assertEqual(mine.behind(), [])
        # A gateway that stops is forgotten: its file and mapping go.
        other.close()
        mine.behind()
        self.assertEqual(sorted(mine._others), [])

    def test_clear_dead(self) -> None:
        """What the supervisor does when a worker exits: files of gone processes go."""
        d = Path(self.mktemp())
        self.assertEqual(clear_dead(d), 0)
        live = WriteBoard(d, 1)
        self.addCleanup(live.close)
        dead = WriteBoard(d, 2)
        dead._words[0] = 2**30 + 7  # type: ignore[index]
        (d / "junk").write_bytes(b"x")
        self.assertEqual(clear_dead(d), 1)
        self.assertEqual(_files(d), sorted([live.path.name, "junk"]))
        dead.close()

    def test_beside_the_marks(self) -> None:
        self.assertEqual(board_dir("/run/cfs/marks"), Path("/run/cfs/marks.writes"))


def _files(d: Path) -> list[str]:
    """The board's files, without its generation count."""
    return sorted(n for n in os.listdir(d) if not n.startswith("."))


class KillMetaTests(TestCase):
    timeout = 60

    async def test_committed_writes_behind_survive_kill(self) -> None:
        """
        Unstable writes answered before their WROTE was (write-behind), the
        files then committed: a SIGKILL of the meta server right after loses
        no committed byte or size; what was written behind and not committed
        comes back with a changed write verifier if it was lost.
        """
        from claudefs_gateway.backend.remote.client import NodeSpec, RemoteBackend
        from claudefs_gateway.core import config as cfg
        from tests.backend.remote.test_faults import SETTINGS, ServerProcess, answering_again

        marks = os.path.abspath(self.mktemp())
        data = ServerProcess(self, "data")
        await data.start()
        meta = ServerProcess(self, "meta", ["--data-server", data.address, "--event-marks", marks])
        await meta.start()
        backend = RemoteBackend(
            [NodeSpec(meta.address)],
            _reactor(),
            cfg.loads(SETTINGS).connection_pool,
            cfg.loads(SETTINGS).circuit_breaker,
            short_circuit=ChunkStore(data.dir, durable=True),
            event_marks=marks,
        )
        await backend.open()
        self.addCleanup(backend.close)
        while backend._mark is None:
            await _turn()
        root = (await backend.root()).ino
        block = 64 * 1024
        committed: dict[int, bytes] = {}
        loose: dict[int, bytes] = {}
        for i in range(6):
            f = await backend.create(root, f"u{i}".encode(), FileType.REG, 0o644, 0, 0)
            payload = os.urandom(block * (i + 2) + i)
            for offset in range(0, len(payload), block):
                await backend.write(
                    f.ino, offset, payload[offset : offset + block], False, behind=True
                )
            if i % 2 == 0:
                c = await backend.commit(f.ino)
                self.assertEqual(c.size, len(payload))
                committed[f.ino] = payload
            else:
                loose[f.ino] = payload
        self.assertGreater(backend.writes_behind, 20)
        verifier = backend.restarts
        await meta.kill()
        await meta.start()
        await answering_again(backend, root)
        for ino, payload in committed.items():
            a = await backend.getattr(ino)
            self.assertEqual(a.size, len(payload), f"inode {ino}: committed size lost")
            got, _ = await backend.read(ino, 0, len(payload) + 10)
            self.assertEqual(got, payload, f"inode {ino}: committed bytes lost")
        for ino, payload in loose.items():
            got, _ = await backend.read(ino, 0, len(payload) + 10)
            if got != payload:
                self.assertGreater(backend.restarts, verifier)


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor
