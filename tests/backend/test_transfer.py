"""
C{cfs-gateway store export|import}: a namespace moves from the embedded
store to PostgreSQL (bytes into a data server's chunk files) and back,
every file's bytes and every attribute the same at each step, compared
through the stores themselves (the embedded backend; a meta server on
PostgreSQL with its data server, through the RPC).
"""

from __future__ import annotations

import hashlib
import io
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from claudefs_gateway import cli
from claudefs_gateway.backend.embedded import EmbeddedBackend
from claudefs_gateway.fstypes import FileType, QuotaLimits, SetAttrs
from tests.backend import postgres
from tests.backend.remote.harness import Cluster

REG, DIR = FileType.REG, FileType.DIR


def run_cli(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue() + err.getvalue()


async def snapshot(b: Any) -> dict[bytes, Any]:
    """Every path: its attributes (all but C{used}), xattrs, and a hash of its bytes or target."""
    out: dict[bytes, Any] = {}
    root = await b.root()
    stack = [(b"", root)]
    while stack:
        path, a = stack.pop()
        xattrs = {n: await b.getxattr(a.ino, n) for n in await b.listxattr(a.ino)}
        extra: Any = None
        if a.type is REG:
            h = hashlib.sha256()
            pos = 0
            while pos < min(a.size, 64 << 20):
                data, eof = await b.read(a.ino, pos, 1 << 20)
                h.update(data)
                pos += len(data)
                if eof or not data:
                    break
            extra = (h.hexdigest(), pos)
        elif a.type is FileType.LNK:
            extra = await b.readlink(a.ino)
        out[path or b"/"] = (a.ino, a.gen, a.type, a.mode, a.nlink, a.uid, a.gid, a.size)
        out[path or b"/"] += (a.rdev, a.atime_ns, a.mtime_ns, a.ctime_ns, a.btime_ns, a.change)
        out[path or b"/"] += (tuple(sorted(xattrs.items())), extra)
        if a.type is DIR:
            cookie, verf = 0, bytes(8)
            while True:
                page = await b.readdir(a.ino, cookie, verf, 50, True)
                for e in page.entries:
                    out[path + b"/" + e.name + b"#cookie"] = e.cookie
                    stack.append((path + b"/" + e.name, e.attrs))
                if page.eof:
                    break
                cookie, verf = page.entries[-1].cookie, page.verifier
    return out


class TransferTests(TestCase):
    timeout = 120

    async def build(self, path: Path) -> dict[bytes, Any]:
        b = EmbeddedBackend(path, None, inline=True, durable=False, inline_max=4096)
        await b.open()
        root = (await b.root()).ino
        # Small files whose bytes the store keeps in its database (inline).
        tiny = await b.create(root, b"tiny", REG, 0o644, 0, 0)
        await b.write(tiny.ino, 0, b"inline bytes", True)
        grown = await b.create(root, b"grown", REG, 0o644, 0, 0)
        await b.write(grown.ino, 10, b"inline, then a larger size", True)
        await b.setattr(grown.ino, SetAttrs(size=100000))
        d = await b.create(root, b"dir", DIR, 0o2775, 1000, 100)
        sub = await b.create(d.ino, b"sub", DIR, 0o700, 1001, 100)
        f = await b.create(d.ino, b"hello.txt", REG, 0o644, 1000, 100)
        await b.write(f.ino, 0, b"hello, world\n" * 1000, True)
        big = await b.create(sub.ino, b"big", REG, 0o600, 1001, 100)
        await b.write(big.ino, 0, os.urandom(5 << 20), True)
        sparse = await b.create(root, b"sparse", REG, 0o644, 0, 0)
        await b.write(sparse.ino, 10**9, b"tail", True)
        await b.write(sparse.ino, 4096, b"head", True)
        await b.setattr(sparse.ino, SetAttrs(atime=123, mtime=456, btime=789))
        await b.link(f.ino, root, b"hard")
        await b.symlink(root, b"link", b"dir/hello.txt", 0o777, 1000, 100)
        await b.create(root, b"fifo", FileType.FIFO, 0o644, 0, 0)
        await b.create(root, b"dev", FileType.CHR, 0o600, 0, 0, (1, 3))
        await b.setxattr(f.ino, b"user.k", b"v" * 1000)
        await b.setxattr(d.ino, b"user.d", b"")
        for i in range(300):
            await b.create(sub.ino, b"n%03d" % i, REG, 0o644, 1001, 100)
        for i in range(0, 300, 3):
            await b.unlink(sub.ino, b"n%03d" % i)
        # Two sparse files whose sizes sum past 2**63 for uid 1002 (and gid 100).
        for name in (b"huge1", b"huge2"):
            h = await b.create(root, name, REG, 0o644, 1002, 100)
            await b.setattr(h.ino, SetAttrs(size=2**62 + 5))
        await b.set_quota("user", 1000, QuotaLimits(10, 20, 30, 40))
        await b.set_state("grace", b"\x01\x02")
        snap = await snapshot(b)
        self.usage = (await b.all_usage("user"), await b.all_usage("group"))
        assert self.usage[0][1002].bytes == 2**63 + 10, self.usage
        await b.close()
        return snap

    async def test_embedded_to_postgresql_and_back(self) -> None:
        """Every byte and attribute survives embedded -> PostgreSQL -> embedded, checked at each step."""
        base = Path(os.path.abspath(self.mktemp()))
        original = await self.build(base / "embedded")
        schema = postgres.new_schema(self)
        conf = base / "gateway.yaml"
        conf.write_text(postgres.meta_store_yaml(schema))
        cluster = Cluster(self, meta_store=postgres.meta_store_config(schema))
        chunks = Path(os.path.abspath(os.path.join(cluster.base, "data")))

        code, text = run_cli(
            "store", "export", str(base / "x1"), "--embedded", str(base / "embedded")
        )
        self.assertEqual(code, 0, text)
        self.assertIn("exported and verified: ", text)
        code, text = run_cli(
            "store", "import", str(base / "x1"), "--config", str(conf), "--chunks", str(chunks)
        )
        self.assertEqual(code, 0, text)
        self.assertIn("imported and verified: ", text)
        # Imported twice: refused, nothing changed.
        code, text = run_cli(
            "store", "import", str(base / "x1"), "--config", str(conf), "--chunks", str(chunks)
        )
        self.assertEqual(code, 1)
        self.assertIn("already holds a namespace", text)

        # Served by a meta server on PostgreSQL and a data server on those chunks.
        await cluster.start()
        remote = cluster.backend()
        await remote.open()
        self.addCleanup(remote.close)
        self.assertEqual(await snapshot(remote), original)
        self.assertEqual(
            (await remote.all_usage("user"), await remote.all_usage("group")), self.usage
        )
        self.assertEqual(await remote.get_quota("user", 1000), QuotaLimits(10, 20, 30, 40))
        self.assertEqual(await remote.get_state("grace"), b"\x01\x02")
        await remote.close()
        assert cluster.meta is not None and cluster.data is not None
        await cluster.meta.stopService()
        await cluster.data.stopService()

        # And back to an embedded store.
        code, text = run_cli(
            "store", "export", str(base / "x2"), "--config", str(conf), "--chunks", str(chunks)
        )
        self.assertEqual(code, 0, text)
        code, text = run_cli("store", "import", str(base / "x2"), "--embedded", str(base / "again"))
        self.assertEqual(code, 0, text)
        b = EmbeddedBackend(base / "again", None, inline=True, durable=False)
        await b.open()
        self.addCleanup(b.close)
        self.assertEqual(await snapshot(b), original)
        self.assertEqual((await b.all_usage("user"), await b.all_usage("group")), self.usage)

    async def test_embedded_to_embedded_with_inline_files(self) -> None:
        """Small files kept inline export and import byte for byte (into data files)."""
        base = Path(os.path.abspath(self.mktemp()))
        original = await self.build(base / "embedded")
        code, text = run_cli(
            "store", "export", str(base / "x"), "--embedded", str(base / "embedded")
        )
        self.assertEqual(code, 0, text)
        code, text = run_cli("store", "import", str(base / "x"), "--embedded", str(base / "again"))
        self.assertEqual(code, 0, text)
        again = EmbeddedBackend(base / "again", None, inline=True, durable=False)
        await again.open()
        self.addCleanup(again.close)
        self.assertEqual(await snapshot(again), original)
        self.assertEqual(
            (await again.all_usage("user"), await again.all_usage("group")), self.usage
        )
        tiny = await again.lookup(1, b"tiny")
        self.assertEqual(await again.read(tiny.ino, 0, 100), (b"inline bytes", True))

    async def test_damaged_export_refused(self) -> None:
        """An export whose bytes changed is refused by import (its checksums), the target left empty."""
        base = Path(os.path.abspath(self.mktemp()))
        await self.build(base / "embedded")
        code, text = run_cli(
            "store", "export", str(base / "x"), "--embedded", str(base / "embedded")
        )
        self.assertEqual(code, 0, text)
        victim = sorted((base / "x" / "files").iterdir())[0]
        with open(victim, "r+b") as f:
            first = f.read(1)
            f.seek(0)
            f.write(bytes([first[0] ^ 1]))
        code, text = run_cli("store", "import", str(base / "x"), "--embedded", str(base / "t"))
        self.assertEqual(code, 1)
        self.assertIn("differ", text)
        self.assertFalse((base / "t" / "meta.sqlite3").exists())
        code, text = run_cli(
            "store", "export", str(base / "x"), "--embedded", str(base / "embedded")
        )
        self.assertEqual(code, 1)
        self.assertIn("exists", text)
