"""
The backend contract (L{claudefs_gateway.interfaces.IBackend}), as one mixin
suite that every backend runs: L{MemoryContractTests} here, the embedded store
in C{test_embedded.py}.

A backend test case supplies C{make_backend()} returning an opened backend
(its Deferreds may fire asynchronously, so tests await them).
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from zope.interface.verify import verifyObject

from claudefs_gateway import errors
from claudefs_gateway.backend.memory import MemoryBackend
from claudefs_gateway.fstypes import NOW, FileType, QuotaLimits, SetAttrs, Usage
from claudefs_gateway.interfaces import IBackend

REG, DIR = FileType.REG, FileType.DIR
ZERO_VERF = bytes(8)


class ContractMixin:
    """Behaviour every backend must have. Mixed into a trial TestCase."""

    backend: Any

    async def make_backend(self) -> Any:  # pragma: no cover - supplied by subclasses
        raise NotImplementedError

    async def setup(self) -> Any:
        self.backend = await self.make_backend()
        self.root = (await self.backend.root()).ino
        return self.backend

    async def fails(self, d: defer.Deferred[Any], exc: type[BaseException]) -> BaseException:
        try:
            await d
        except exc as e:
            return e
        raise AssertionError(f"did not fail with {exc.__name__}")

    async def mkfile(
        self,
        name: bytes,
        parent: int | None = None,
        data: bytes = b"",
        uid: int = 1000,
        gid: int = 100,
    ) -> Any:
        a = await self.backend.create(parent or self.root, name, REG, 0o644, uid, gid)
        if data:
            await self.backend.write(a.ino, 0, data, True)
            a = await self.backend.getattr(a.ino)
        return a

    async def names(self, d: int) -> list[bytes]:
        out: list[bytes] = []
        cookie, verf = 0, ZERO_VERF
        while True:
            page = await self.backend.readdir(d, cookie, verf, 100)
            out += [e.name for e in page.entries]
            if page.eof:
                return out
            cookie, verf = page.entries[-1].cookie, page.verifier

    # -- basics ---------------------------------------------------------------

    async def test_provides_interface(self) -> None:
        await self.setup()
        verifyObject(IBackend, self.backend)
        self.assertEqual(len(self.backend.instance_id), 8)

    async def test_root(self) -> None:
        await self.setup()
        root = await self.backend.root()
        self.assertEqual(
            (root.type, root.mode, root.uid, root.gid, root.nlink), (DIR, 0o755, 0, 0, 2)
        )
        self.assertEqual((await self.backend.lookup(root.ino, b"..")).ino, root.ino)

    async def test_create_lookup_getattr(self) -> None:
        await self.setup()
        a = await self.backend.create(self.root, b"f", REG, 0o640, 1000, 100)
        self.assertEqual(
            (a.type, a.mode, a.uid, a.gid, a.size, a.nlink), (REG, 0o640, 1000, 100, 0, 1)
        )
        self.assertEqual(a.mtime_ns, a.ctime_ns)
        self.assertEqual(await self.backend.lookup(self.root, b"f"), a)
        self.assertEqual(await self.backend.getattr(a.ino), a)
        await self.fails(self.backend.create(self.root, b"f", DIR, 0o755, 0, 0), errors.Exists)
        await self.fails(self.backend.lookup(self.root, b"missing"), errors.NotFound)
        await self.fails(self.backend.lookup(a.ino, b"x"), errors.NotDir)
        await self.fails(self.backend.getattr(10**12), errors.NotFound)

    async def test_mode_keeps_special_bits_only(self) -> None:
        await self.setup()
        a = await self.backend.create(self.root, b"d", DIR, 0o41777, 0, 0)
        self.assertEqual(a.mode, 0o1777)

    async def test_bad_names(self) -> None:
        await self.setup()
        for bad in (b"", b".", b"..", b"a/b", b"a\x00b"):
            await self.fails(self.backend.create(self.root, bad, REG, 0o644, 0, 0), errors.Inval)
        await self.fails(
            self.backend.create(self.root, b"x" * 256, REG, 0o644, 0, 0), errors.NameTooLong
        )
        await self.backend.create(self.root, b"x" * 255, REG, 0o644, 0, 0)

    async def test_inode_numbers_unique_and_stable(self) -> None:
        await self.setup()
        a = await self.mkfile(b"a")
        await self.backend.unlink(self.root, b"a")
        b = await self.mkfile(b"b")
        self.assertTrue(b.ino != a.ino or b.gen != a.gen)
        await self.fails(self.backend.getattr(a.ino), errors.NotFound) if b.ino != a.ino else None

    async def test_directory_nlink(self) -> None:
        await self.setup()
        d = await self.backend.create(self.root, b"d", DIR, 0o755, 0, 0)
        self.assertEqual(d.nlink, 2)
        self.assertEqual((await self.backend.root()).nlink, 3)
        await self.backend.create(d.ino, b"sub", DIR, 0o755, 0, 0)
        await self.backend.create(d.ino, b"file", REG, 0o644, 0, 0)
        self.assertEqual((await self.backend.getattr(d.ino)).nlink, 3)
        await self.backend.rmdir(d.ino, b"sub")
        self.assertEqual((await self.backend.getattr(d.ino)).nlink, 2)

    # -- links ------------------------------------------------------------------

    async def test_hard_links(self) -> None:
        await self.setup()
        a = await self.mkfile(b"a", data=b"hello")
        d = await self.backend.create(self.root, b"d", DIR, 0o755, 0, 0)
        b = await self.backend.link(a.ino, d.ino, b"b")
        self.assertEqual((b.ino, b.nlink), (a.ino, 2))
        self.assertGreater(b.ctime_ns, a.ctime_ns - 1)
        await self.fails(self.backend.link(a.ino, d.ino, b"b"), errors.Exists)
        await self.fails(self.backend.link(d.ino, self.root, b"dl"), errors.Perm)
        after = await self.backend.unlink(self.root, b"a")
        self.assertEqual(after.nlink, 1)
        self.assertEqual((await self.backend.read(a.ino, 0, 10))[0], b"hello")
        after = await self.backend.unlink(d.ino, b"b")
        self.assertEqual(after.nlink, 0)
        await self.fails(self.backend.getattr(a.ino), errors.NotFound)

    async def test_symlinks(self) -> None:
        await self.setup()
        s = await self.backend.symlink(self.root, b"s", b"../target/x", 0o777, 1, 1)
        self.assertEqual((s.type, s.size), (FileType.LNK, 11))
        self.assertEqual(await self.backend.readlink(s.ino), b"../target/x")
        f = await self.mkfile(b"f")
        await self.fails(self.backend.readlink(f.ino), errors.Inval)
        await self.fails(self.backend.symlink(self.root, b"s", b"t", 0o777, 1, 1), errors.Exists)
        await self.fails(self.backend.symlink(self.root, b"e", b"", 0o777, 1, 1), errors.Inval)

    async def test_device_and_fifo_nodes(self) -> None:
        await self.setup()
        c = await self.backend.create(self.root, b"c", FileType.CHR, 0o600, 0, 0, (4, 64))
        self.assertEqual((c.type, c.rdev), (FileType.CHR, (4, 64)))
        p = await self.backend.create(self.root, b"p", FileType.FIFO, 0o600, 0, 0)
        self.assertEqual((p.type, p.rdev), (FileType.FIFO, (0, 0)))
        await self.fails(self.backend.read(p.ino, 0, 1), errors.Inval)
        s = await self.backend.create(self.root, b"sock", FileType.SOCK, 0o600, 0, 0)
        self.assertEqual(s.type, FileType.SOCK)

    async def test_unlink_rmdir_errors(self) -> None:
        await self.setup()
        d = await self.backend.create(self.root, b"d", DIR, 0o755, 0, 0)
        f = await self.mkfile(b"f", parent=d.ino)
        await self.fails(self.backend.unlink(self.root, b"d"), errors.IsDir)
        await self.fails(self.backend.rmdir(self.root, b"d"), errors.NotEmpty)
        await self.fails(self.backend.rmdir(d.ino, b"f"), errors.NotDir)
        await self.fails(self.backend.unlink(self.root, b"nope"), errors.NotFound)
        await self.backend.unlink(d.ino, b"f")
        gone = await self.backend.rmdir(self.root, b"d")
        self.assertEqual(gone.nlink, 0)
        await self.fails(self.backend.getattr(d.ino), errors.NotFound)
        await self.fails(self.backend.getattr(f.ino), errors.NotFound)

    # -- rename -------------------------------------------------------------------

    async def test_rename_replaces_file(self) -> None:
        await self.setup()
        a = await self.mkfile(b"a", data=b"A")
        b = await self.mkfile(b"b", data=b"BB")
        r = await self.backend.rename(self.root, b"a", self.root, b"b")
        self.assertEqual(r.source.ino, a.ino)
        self.assertEqual((r.replaced.ino, r.replaced.nlink), (b.ino, 0))
        self.assertEqual((await self.backend.lookup(self.root, b"b")).ino, a.ino)
        await self.fails(self.backend.lookup(self.root, b"a"), errors.NotFound)
        await self.fails(self.backend.getattr(b.ino), errors.NotFound)
        self.assertEqual(await self.names(self.root), [b"b"])

    async def test_rename_cross_directory_moves_dotdot(self) -> None:
        await self.setup()
        d1 = await self.backend.create(self.root, b"d1", DIR, 0o755, 0, 0)
        d2 = await self.backend.create(self.root, b"d2", DIR, 0o755, 0, 0)
        sub = await self.backend.create(d1.ino, b"sub", DIR, 0o755, 0, 0)
        await self.backend.rename(d1.ino, b"sub", d2.ino, b"moved")
        self.assertEqual((await self.backend.getattr(d1.ino)).nlink, 2)
        self.assertEqual((await self.backend.getattr(d2.ino)).nlink, 3)
        self.assertEqual((await self.backend.lookup(sub.ino, b"..")).ino, d2.ino)

    async def test_rename_directory_over_empty_directory(self) -> None:
        await self.setup()
        a = await self.backend.create(self.root, b"a", DIR, 0o755, 0, 0)
        b = await self.backend.create(self.root, b"b", DIR, 0o755, 0, 0)
        r = await self.backend.rename(self.root, b"a", self.root, b"b")
        self.assertEqual((r.source.ino, r.replaced.ino), (a.ino, b.ino))
        self.assertEqual((await self.backend.root()).nlink, 3)
        await self.fails(self.backend.getattr(b.ino), errors.NotFound)

    async def test_rename_refusals(self) -> None:
        await self.setup()
        a = await self.backend.create(self.root, b"a", DIR, 0o755, 0, 0)
        inner = await self.backend.create(a.ino, b"inner", DIR, 0o755, 0, 0)
        full = await self.backend.create(self.root, b"full", DIR, 0o755, 0, 0)
        await self.mkfile(b"x", parent=full.ino)
        await self.mkfile(b"f")
        await self.fails(self.backend.rename(self.root, b"a", inner.ino, b"loop"), errors.Inval)
        await self.fails(self.backend.rename(self.root, b"a", a.ino, b"self"), errors.Inval)
        await self.fails(self.backend.rename(self.root, b"a", self.root, b"full"), errors.NotEmpty)
        await self.fails(self.backend.rename(self.root, b"f", self.root, b"full"), errors.IsDir)
        await self.fails(self.backend.rename(self.root, b"a", self.root, b"f"), errors.NotDir)
        await self.fails(self.backend.rename(self.root, b"nope", self.root, b"z"), errors.NotFound)
        self.assertEqual(sorted(await self.names(self.root)), [b"a", b"f", b"full"])

    async def test_rename_onto_same_inode_is_noop(self) -> None:
        await self.setup()
        a = await self.mkfile(b"a")
        await self.backend.link(a.ino, self.root, b"b")
        await self.backend.rename(self.root, b"a", self.root, b"b")
        self.assertEqual(sorted(await self.names(self.root)), [b"a", b"b"])
        self.assertEqual((await self.backend.getattr(a.ino)).nlink, 2)
        await self.backend.rename(self.root, b"a", self.root, b"a")
        self.assertEqual(sorted(await self.names(self.root)), [b"a", b"b"])

    # -- readdir ------------------------------------------------------------------

    async def test_readdir_pages_return_each_entry_once(self) -> None:
        await self.setup()
        d = await self.backend.create(self.root, b"d", DIR, 0o755, 0, 0)
        names = [b"f%04d" % i for i in range(257)]
        for n in names:
            await self.backend.create(d.ino, n, REG, 0o644, 0, 0)
        seen: list[bytes] = []
        cookie, verf = 0, ZERO_VERF
        pages = 0
        while True:
            page = await self.backend.readdir(d.ino, cookie, verf, 10, with_attrs=True)
            pages += 1
            for e in page.entries:
                self.assertGreaterEqual(e.cookie, 3)
                self.assertEqual(e.attrs.ino, e.ino)
            seen += [e.name for e in page.entries]
            if page.eof:
                break
            cookie, verf = page.entries[-1].cookie, page.verifier
        self.assertEqual(sorted(seen), names)
        self.assertEqual(len(seen), len(set(seen)))
        self.assertEqual(pages, 26)

    async def test_readdir_resumes_after_deletions(self) -> None:
        """Removing entries already returned does not make the listing skip or repeat others."""
        await self.setup()
        d = await self.backend.create(self.root, b"d", DIR, 0o755, 0, 0)
        for i in range(20):
            await self.backend.create(d.ino, b"%02d" % i, REG, 0o644, 0, 0)
        first = await self.backend.readdir(d.ino, 0, ZERO_VERF, 5)
        for e in first.entries:
            await self.backend.unlink(d.ino, e.name)
        rest = await self.backend.readdir(d.ino, first.entries[-1].cookie, first.verifier, 100)
        self.assertTrue(rest.eof)
        both = [e.name for e in first.entries] + [e.name for e in rest.entries]
        self.assertEqual(sorted(both), [b"%02d" % i for i in range(20)])

    async def test_readdir_bad_verifier(self) -> None:
        await self.setup()
        d = await self.backend.create(self.root, b"d", DIR, 0o755, 0, 0)
        await self.backend.create(d.ino, b"a", REG, 0o644, 0, 0)
        page = await self.backend.readdir(d.ino, 0, ZERO_VERF, 1)
        bad = bytes(b ^ 0xFF for b in page.verifier)
        e = await self.fails(
            self.backend.readdir(d.ino, page.entries[-1].cookie, bad, 1), errors.BadCookie
        )
        self.assertEqual(e.errno, 523)
        empty = await self.backend.readdir(d.ino, 0, ZERO_VERF, 0)
        self.assertEqual((empty.entries, empty.eof), ((), False))

    async def test_readdir_not_dir(self) -> None:
        await self.setup()
        f = await self.mkfile(b"f")
        await self.fails(self.backend.readdir(f.ino, 0, ZERO_VERF, 10), errors.NotDir)

    # -- setattr ------------------------------------------------------------------

    async def test_setattr(self) -> None:
        await self.setup()
        f = await self.mkfile(b"f", data=b"0123456789")
        a = await self.backend.setattr(f.ino, SetAttrs(mode=0o600, uid=7, gid=8, atime=5, mtime=6))
        self.assertEqual((a.mode, a.uid, a.gid, a.atime_ns, a.mtime_ns), (0o600, 7, 8, 5, 6))
        self.assertGreater(a.change, f.change)
        a = await self.backend.setattr(f.ino, SetAttrs(size=4))
        self.assertEqual(a.size, 4)
        self.assertEqual(await self.backend.read(f.ino, 0, 100), (b"0123", True))
        a = await self.backend.setattr(f.ino, SetAttrs(size=8))
        self.assertEqual(await self.backend.read(f.ino, 0, 100), (b"0123\0\0\0\0", True))
        a = await self.backend.setattr(f.ino, SetAttrs(atime=NOW, btime=123))
        self.assertEqual(a.btime_ns, 123)

    async def test_setattr_same_size_alone_changes_nothing(self) -> None:
        """
        POSIX ftruncate marks the times only if the size changes (RFC 5661
        18.30.4 likewise): a SETATTR of the current size, and nothing else,
        leaves the file as it was, in every backend.
        """
        await self.setup()
        f = await self.mkfile(b"f", data=b"0123")
        a = await self.backend.setattr(f.ino, SetAttrs(size=4))
        self.assertEqual(
            (a.size, a.mtime_ns, a.ctime_ns, a.change), (4, f.mtime_ns, f.ctime_ns, f.change)
        )
        b = await self.backend.setattr(f.ino, SetAttrs(size=4, mode=0o600))
        self.assertGreater(b.change, f.change)

    async def test_setattr_guard(self) -> None:
        await self.setup()
        f = await self.mkfile(b"f")
        await self.fails(
            self.backend.setattr(f.ino, SetAttrs(mode=0), guard_ctime_ns=f.ctime_ns + 1),
            errors.Inval,
        )
        self.assertEqual((await self.backend.getattr(f.ino)).mode, 0o644)
        a = await self.backend.setattr(f.ino, SetAttrs(mode=0o600), guard_ctime_ns=f.ctime_ns)
        self.assertEqual(a.mode, 0o600)

    async def test_setattr_size_refusals(self) -> None:
        await self.setup()
        d = await self.backend.create(self.root, b"d", DIR, 0o755, 0, 0)
        await self.fails(self.backend.setattr(d.ino, SetAttrs(size=0)), errors.IsDir)
        f = await self.mkfile(b"f")
        await self.fails(self.backend.setattr(f.ino, SetAttrs(size=2**63)), errors.FBig)

    # -- data ---------------------------------------------------------------------

    async def test_write_read(self) -> None:
        await self.setup()
        f = await self.mkfile(b"f")
        w = await self.backend.write(f.ino, 0, b"hello world", False)
        self.assertEqual((w.count, w.attrs.size), (11, 11))
        self.assertEqual(w.before.size, 0)
        self.assertGreater(w.attrs.change, f.change)
        self.assertEqual(await self.backend.read(f.ino, 6, 100), (b"world", True))
        self.assertEqual(await self.backend.read(f.ino, 0, 5), (b"hello", False))
        self.assertEqual(await self.backend.read(f.ino, 11, 5), (b"", True))
        self.assertEqual(await self.backend.read(f.ino, 50, 5), (b"", True))
        await self.backend.write(f.ino, 6, b"WORLD!", True)
        self.assertEqual(await self.backend.read(f.ino, 0, 100), (b"hello WORLD!", True))
        c = await self.backend.commit(f.ino)
        self.assertEqual(c.size, 12)

    async def test_zero_length_write_changes_nothing(self) -> None:
        """POSIX: writing zero bytes, even far past the end, leaves size, times and change alone."""
        await self.setup()
        f = await self.mkfile(b"f", data=b"abc")
        w = await self.backend.write(f.ino, 2**63 - 1, b"", False)
        self.assertEqual((w.count, w.attrs.size), (0, 3))
        after = await self.backend.getattr(f.ino)
        self.assertEqual((after.size, after.mtime_ns, after.change), (f.size, f.mtime_ns, f.change))
        await self.backend.write(f.ino, 10, b"", True)
        self.assertEqual((await self.backend.getattr(f.ino)).size, 3)

    async def test_sparse_file(self) -> None:
        await self.setup()
        f = await self.mkfile(b"f")
        w = await self.backend.write(f.ino, 10**12, b"end", False)
        self.assertEqual(w.attrs.size, 10**12 + 3)
        self.assertLess(w.attrs.used, 10**9)
        self.assertEqual(await self.backend.read(f.ino, 10**12 - 2, 5), (b"\0\0end", True))
        self.assertEqual(await self.backend.read(f.ino, 5000, 4), (b"\0\0\0\0", False))

    async def test_large_write_across_chunks(self) -> None:
        await self.setup()
        f = await self.mkfile(b"f")
        data = bytes(range(256)) * 1200
        await self.backend.write(f.ino, 1000, data, True)
        got, eof = await self.backend.read(f.ino, 1000, len(data))
        self.assertEqual((got, eof), (data, True))

    async def test_deallocate_punches_hole(self) -> None:
        await self.setup()
        f = await self.mkfile(b"f", data=b"x" * 200000)
        a = await self.backend.deallocate(f.ino, 100, 150000)
        self.assertEqual(a.size, 200000)
        got, _ = await self.backend.read(f.ino, 0, 200000)
        self.assertEqual(got, b"x" * 100 + bytes(150000) + b"x" * 49900)
        a = await self.backend.allocate(f.ino, 0, 300000)
        self.assertEqual(a.size, 300000)

    async def test_data_ranges(self) -> None:
        """
        Written data is always reported, nothing past the size is; a hole
        punched over whole 64 KiB blocks may be reported as one.
        """
        await self.setup()
        block = 64 * 1024
        f = await self.mkfile(b"f", data=b"x" * (3 * block))
        self.assertEqual(await self.backend.data_ranges(f.ino, 0, 10 * block), [(0, 3 * block)])
        self.assertEqual(await self.backend.data_ranges(f.ino, 5, 10), [(5, 10)])
        await self.backend.deallocate(f.ino, block, block)
        got = await self.backend.data_ranges(f.ino, 0, 3 * block)
        self.assertIn(got, ([(0, 3 * block)], [(0, block), (2 * block, block)]))
        self.assertEqual(await self.backend.data_ranges(f.ino, 3 * block, 10), [])
        empty = await self.mkfile(b"e")
        await self.backend.setattr(empty.ino, SetAttrs(size=block))
        self.assertIn(await self.backend.data_ranges(empty.ino, 0, block), ([], [(0, block)]))
        d = await self.backend.create(self.root, b"d", DIR, 0o755, 0, 0)
        await self.fails(self.backend.data_ranges(d.ino, 0, 1), errors.IsDir)

    async def test_data_on_non_files(self) -> None:
        await self.setup()
        d = await self.backend.create(self.root, b"d", DIR, 0o755, 0, 0)
        await self.fails(self.backend.read(d.ino, 0, 1), errors.IsDir)
        await self.fails(self.backend.write(d.ino, 0, b"x", False), errors.IsDir)
        f = await self.mkfile(b"f")
        await self.fails(self.backend.write(f.ino, 2**63 - 2, b"xyz", False), errors.FBig)

    # -- xattrs ---------------------------------------------------------------------

    async def test_xattrs(self) -> None:
        await self.setup()
        f = await self.mkfile(b"f")
        await self.backend.setxattr(f.ino, b"user.a", b"1")
        await self.backend.setxattr(f.ino, b"user.b", b"")
        self.assertEqual(await self.backend.getxattr(f.ino, b"user.a"), b"1")
        self.assertEqual(await self.backend.listxattr(f.ino), [b"user.a", b"user.b"])
        await self.fails(self.backend.setxattr(f.ino, b"user.a", b"2", create=True), errors.Exists)
        await self.fails(self.backend.setxattr(f.ino, b"user.c", b"2", create=False), errors.NoData)
        await self.backend.setxattr(f.ino, b"user.a", b"2", create=False)
        self.assertEqual(await self.backend.getxattr(f.ino, b"user.a"), b"2")
        await self.backend.removexattr(f.ino, b"user.a")
        await self.fails(self.backend.getxattr(f.ino, b"user.a"), errors.NoData)
        await self.fails(self.backend.removexattr(f.ino, b"user.a"), errors.NoData)
        await self.fails(self.backend.setxattr(f.ino, b"n" * 256, b""), errors.Range)
        await self.fails(
            self.backend.setxattr(f.ino, b"user.big", b"v" * (64 * 1024 + 1)), errors.Range
        )
        await self.backend.setxattr(f.ino, b"user.max", b"v" * (64 * 1024))
        d = await self.backend.create(self.root, b"d", DIR, 0o755, 0, 0)
        await self.backend.setxattr(d.ino, b"user.dir", b"ok")
        self.assertEqual(await self.backend.getxattr(d.ino, b"user.dir"), b"ok")

    # -- usage, quotas, state -------------------------------------------------------

    async def test_usage_exact(self) -> None:
        await self.setup()
        base_u = await self.backend.usage("user", 1000)
        base_g = await self.backend.usage("group", 100)
        f = await self.mkfile(b"f", data=b"x" * 1000)
        await self.mkfile(b"g", data=b"y" * 500)
        d = await self.backend.create(self.root, b"d", DIR, 0o755, 1000, 100)
        await self.backend.symlink(d.ino, b"s", b"target", 0o777, 1000, 100)
        u = await self.backend.usage("user", 1000)
        self.assertEqual(u, Usage(base_u.bytes + 1500, base_u.inodes + 4))
        self.assertEqual(
            await self.backend.usage("group", 100), Usage(base_g.bytes + 1500, base_g.inodes + 4)
        )
        await self.backend.write(f.ino, 1999, b"z", False)
        await self.backend.setattr(f.ino, SetAttrs(uid=2000))
        self.assertEqual(await self.backend.usage("user", 2000), Usage(2000, 1))
        self.assertEqual(
            await self.backend.usage("user", 1000), Usage(base_u.bytes + 500, base_u.inodes + 3)
        )
        await self.backend.setattr(f.ino, SetAttrs(size=10))
        self.assertEqual(await self.backend.usage("user", 2000), Usage(10, 1))
        await self.backend.unlink(self.root, b"f")
        self.assertEqual(await self.backend.usage("user", 2000), Usage(0, 0))
        self.assertNotIn(2000, await self.backend.all_usage("user"))
        self.assertIn(1000, await self.backend.all_usage("user"))

    async def test_usage_past_2_63_bytes_stays_exact(self) -> None:
        """
        Sparse files may sum past 2**63 bytes for one uid: the count stays
        exact there and comes back exactly when they shrink (an SQLite sum
        turned into a float once, and the count stayed wrong afterwards).
        """
        await self.setup()
        a = await self.mkfile(b"a", uid=4000)
        b = await self.mkfile(b"b", uid=4000)
        await self.mkfile(b"c", data=b"x" * 300, uid=4000)
        await self.backend.setattr(a.ino, SetAttrs(size=2**62))
        await self.backend.setattr(b.ino, SetAttrs(size=2**62))
        self.assertEqual(await self.backend.usage("user", 4000), Usage(2**63 + 300, 3))
        self.assertEqual((await self.backend.all_usage("user"))[4000], Usage(2**63 + 300, 3))
        await self.backend.setattr(a.ino, SetAttrs(size=2**62 - 1))
        self.assertEqual(await self.backend.usage("user", 4000), Usage(2**63 + 299, 3))
        await self.backend.setattr(a.ino, SetAttrs(size=0))
        await self.backend.unlink(self.root, b"b")
        u = await self.backend.usage("user", 4000)
        self.assertEqual((u, type(u.bytes)), (Usage(300, 2), int))
        self.assertEqual((await self.backend.all_usage("user"))[4000], Usage(300, 2))

    async def test_usage_hard_link_counted_once(self) -> None:
        await self.setup()
        f = await self.mkfile(b"f", data=b"abc", uid=3000)
        await self.backend.link(f.ino, self.root, b"f2")
        self.assertEqual(await self.backend.usage("user", 3000), Usage(3, 1))
        await self.backend.unlink(self.root, b"f")
        self.assertEqual(await self.backend.usage("user", 3000), Usage(3, 1))
        await self.backend.rename(self.root, b"f2", self.root, b"f3")
        self.assertEqual(await self.backend.usage("user", 3000), Usage(3, 1))
        g = await self.mkfile(b"g", data=b"12345", uid=3000)
        await self.backend.rename(self.root, b"g", self.root, b"f3")
        self.assertEqual(await self.backend.usage("user", 3000), Usage(5, 1))
        self.assertEqual(g.ino, (await self.backend.lookup(self.root, b"f3")).ino)

    async def test_quota_records(self) -> None:
        await self.setup()
        self.assertIsNone(await self.backend.get_quota("user", 5))
        q = QuotaLimits(10, 20, 1, 2)
        await self.backend.set_quota("user", 5, q)
        await self.backend.set_quota("group", 5, QuotaLimits(bytes_hard=1))
        self.assertEqual(await self.backend.get_quota("user", 5), q)
        self.assertEqual(await self.backend.list_quotas("user"), {5: q})
        await self.backend.set_quota("user", 5, None)
        self.assertIsNone(await self.backend.get_quota("user", 5))
        self.assertEqual(await self.backend.list_quotas("group"), {5: QuotaLimits(bytes_hard=1)})

    async def test_state(self) -> None:
        await self.setup()
        self.assertIsNone(await self.backend.get_state("k"))
        await self.backend.set_state("k", b"v")
        self.assertEqual(await self.backend.get_state("k"), b"v")
        await self.backend.set_state("k", None)
        self.assertIsNone(await self.backend.get_state("k"))

    async def test_statfs(self) -> None:
        await self.setup()
        s = await self.backend.statfs()
        self.assertGreater(s.total_bytes, 0)
        self.assertLessEqual(s.avail_bytes, s.free_bytes)
        self.assertLessEqual(s.free_bytes, s.total_bytes)
        self.assertGreaterEqual(s.total_files, s.free_files)

    async def test_errors_carry_errno(self) -> None:
        await self.setup()
        e = await self.fails(self.backend.lookup(self.root, b"nope"), errors.NotFound)
        self.assertEqual(e.errno, errno.ENOENT)

    async def test_change_counter_moves(self) -> None:
        """Every change to an inode moves its change counter; reads do not."""
        await self.setup()
        f = await self.mkfile(b"f")
        seen = [f.change]
        for op in (
            lambda: self.backend.write(f.ino, 0, b"x", False),
            lambda: self.backend.setattr(f.ino, SetAttrs(mode=0o600)),
            lambda: self.backend.setxattr(f.ino, b"user.x", b"1"),
            lambda: self.backend.link(f.ino, self.root, b"f2"),
        ):
            await op()
            seen.append((await self.backend.getattr(f.ino)).change)
        self.assertEqual(seen, sorted(set(seen)))
        await self.backend.read(f.ino, 0, 1)
        self.assertEqual((await self.backend.getattr(f.ino)).change, seen[-1])

    async def test_directory_change_on_entries(self) -> None:
        await self.setup()
        d = await self.backend.create(self.root, b"d", DIR, 0o755, 0, 0)
        await self.backend.create(d.ino, b"a", REG, 0o644, 0, 0)
        after = await self.backend.getattr(d.ino)
        self.assertGreater(after.change, d.change)
        self.assertGreaterEqual(after.mtime_ns, d.mtime_ns)


class MemoryContractTests(ContractMixin, TestCase):
    """The in-memory reference backend meets the contract."""

    async def make_backend(self) -> Any:
        b = MemoryBackend()
        await b.open()
        return b
