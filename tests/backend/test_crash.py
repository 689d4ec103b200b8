"""
kill -9 at any moment loses nothing acknowledged and leaves the store consistent.

Each test runs L{tests.backend.crash_writer} in a subprocess on a fresh store,
waits (no sleeping: on its stdout) for its Nth acknowledged operation, sends
SIGKILL while it is in the middle of later ones, reopens the store here and
checks:

 - C{PRAGMA integrity_check} is ok, and the invariants hold: every entry
   names an existing inode of the entry's type; nlink is the number of names
   (directories: 2 + subdirectories, exactly one name, the right parent);
   usage equals a recomputation from the inodes; the counters are past every
   number in use; recovery left no data file for a missing inode and no
   pending deletion;
 - the tree (paths, types, modes, owners, sizes, nlink, hard-link groups,
   bytes, symlink targets, xattrs) equals the reference backend after replaying
   every acknowledged operation plus some subset of those in flight when the
   kill came (an unstable write whose commit was not acknowledged may or may
   not be there). Every operation must be all there or not at all, except the
   bytes of a data write in flight, which may have landed in part (as on any
   file system): those bytes alone are left out of the comparison.

Kill -9 cannot test power loss (the page cache survives the process), so the
fsyncs themselves are checked by C{test_embedded.DurabilityTests}.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from claudefs_gateway.backend.embedded import EmbeddedBackend
from claudefs_gateway.backend.embedded._files import Layout
from claudefs_gateway.backend.memory import MemoryBackend
from claudefs_gateway.fstypes import FileType
from tests.backend.crash_writer import apply
from tests.helpers import REPO, GatewayProcess, kill_on_cleanup, spawn

ZERO = bytes(8)


class Tree:
    """The canonical shape of a store: per path its properties, hard-link groups, inodes."""

    def __init__(self) -> None:
        self.props: dict[str, tuple[Any, ...]] = {}
        self.inos: dict[str, int] = {}
        self.groups: list[list[str]] = []

    def matches(self, other: Tree, masks: dict[str, list[tuple[int, int]]]) -> bool:
        """Equal, but for the masked byte ranges of some files (writes in flight)."""
        if self.groups != other.groups or set(self.props) != set(other.props):
            return False
        for path, mine in self.props.items():
            theirs = other.props[path]
            if path in masks and mine[0] is FileType.REG:
                if mine[:6] + mine[7:] != theirs[:6] + theirs[7:]:
                    return False
                if _masked(mine[6], masks[path]) != _masked(theirs[6], masks[path]):
                    return False
            elif mine != theirs:
                return False
        return True

    def diff(self, other: Tree) -> dict[str, Any]:
        def show(props: tuple[Any, ...] | None) -> Any:
            if props is None or not isinstance(props[6], bytes):
                return props
            data = props[6]
            return (*props[:6], (len(data), hashlib.sha256(data).hexdigest()[:12]), *props[7:])

        return {
            p: (show(self.props.get(p)), show(other.props.get(p)))
            for p in set(self.props) | set(other.props)
            if self.props.get(p) != other.props.get(p)
        }


def _masked(data: bytes, ranges: list[tuple[int, int]]) -> bytes:
    buf = bytearray(data)
    for offset, length in ranges:
        end = min(offset + length, len(buf))
        if end > offset:
            buf[offset:end] = bytes(end - offset)
    return bytes(buf)


async def tree(b: Any) -> Tree:
    t = Tree()
    groups: dict[int, list[str]] = {}
    stack: list[tuple[str, int]] = [("", 1)]
    while stack:
        path, ino = stack.pop()
        page = await b.readdir(ino, 0, ZERO, 100000, True)
        for e in page.entries:
            p = f"{path}/{e.name.decode()}"
            a = e.attrs
            t.inos[p] = a.ino
            xattrs = {n: await b.getxattr(a.ino, n) for n in await b.listxattr(a.ino)}
            extra: Any = None
            if a.type is FileType.REG:
                extra = (await b.read(a.ino, 0, a.size + 1))[0]
                groups.setdefault(a.ino, []).append(p)
            elif a.type is FileType.LNK:
                extra = await b.readlink(a.ino)
            else:
                stack.append((p, a.ino))
            t.props[p] = (
                a.type,
                a.mode,
                a.uid,
                a.gid,
                a.size,
                a.nlink,
                extra,
                sorted(xattrs.items()),
            )
    t.groups = sorted(sorted(g) for g in groups.values() if len(g) > 1)
    return t


def invariants(data_dir: Path) -> list[str]:
    """Every structural rule the store keeps, checked with plain SQL and a walk of data/."""
    problems: list[str] = []
    c = sqlite3.connect(f"file:{data_dir / 'meta.sqlite3'}?mode=ro", uri=True)
    try:

        def q(sql: str) -> list[Any]:
            return c.execute(sql).fetchall()

        if q("PRAGMA integrity_check") != [("ok",)]:
            problems.append("integrity_check failed")
        if q("PRAGMA foreign_key_check"):
            problems.append("foreign keys")
        for row in q(
            "SELECT d.parent, d.name FROM dirent d LEFT JOIN inode i ON i.ino = d.ino WHERE i.ino IS NULL"
        ):
            problems.append(f"entry {row} names a missing inode")
        for row in q(
            "SELECT d.name FROM dirent d JOIN inode i ON i.ino = d.ino WHERE d.type != i.type"
        ):
            problems.append(f"entry {row} has the wrong type")
        for row in q(
            "SELECT d.name FROM dirent d JOIN inode p ON p.ino = d.parent WHERE p.type != 16384"
        ):
            problems.append(f"entry {row} in a non-directory")
        for ino, nlink, names in q(
            "SELECT i.ino, i.nlink, (SELECT COUNT(*) FROM dirent d WHERE d.ino = i.ino)"
            " FROM inode i WHERE i.type != 16384"
        ):
            if nlink != names or nlink < 1:
                problems.append(f"inode {ino}: nlink {nlink}, {names} names")
        for ino, nlink, parent, subdirs, names, named_in in q(
            "SELECT i.ino, i.nlink, i.parent,"
            " (SELECT COUNT(*) FROM dirent d WHERE d.parent = i.ino AND d.type = 16384),"
            " (SELECT COUNT(*) FROM dirent d WHERE d.ino = i.ino),"
            " (SELECT MIN(d.parent) FROM dirent d WHERE d.ino = i.ino)"
            " FROM inode i WHERE i.type = 16384"
        ):
            if nlink != 2 + subdirs:
                problems.append(f"directory {ino}: nlink {nlink}, {subdirs} subdirectories")
            if ino != 1 and (names != 1 or named_in != parent):
                problems.append(f"directory {ino}: {names} names, parent {parent}/{named_in}")
        for kind, col in (("user", "uid"), ("group", "gid")):
            want = {
                i: (b, n)
                for i, b, n in q(
                    f"SELECT {col}, SUM(CASE WHEN type = 32768 THEN size ELSE 0 END), COUNT(*)"
                    f" FROM inode GROUP BY {col}"
                )
            }
            got = {
                i: (b, n)
                for i, b, n in q(f"SELECT id, bytes, inodes FROM usage WHERE kind = '{kind}'")
            }
            if want != got:
                problems.append(f"{kind} usage {got} != recomputed {want}")
        meta = dict(q("SELECT k, v FROM meta"))
        if meta["next_ino"] <= q("SELECT MAX(ino) FROM inode")[0][0]:
            problems.append("next_ino in use")
        top = q("SELECT MAX(cookie) FROM dirent")[0][0]
        if top is not None and meta["next_cookie"] <= top:
            problems.append("next_cookie in use")
        if q("SELECT COUNT(*) FROM pending_io") != [(0,)]:
            problems.append("pending file changes left after recovery")
        regs = {r[0] for r in q("SELECT ino FROM inode WHERE type = 32768")}
        for ino, length, size in q(
            "SELECT n.ino, length(n.data), i.size FROM inline_data n"
            " LEFT JOIN inode i ON i.ino = n.ino AND i.type = 32768"
        ):
            if size is None:
                problems.append(f"inline bytes of inode {ino}, not a regular file")
            elif length > size:
                problems.append(f"inode {ino}: {length} inline bytes beyond its size {size}")
    finally:
        c.close()
    layout = Layout(str(data_dir / "data"))
    for root, _, files in os.walk(layout.root):
        for name in files:
            ino = layout.ino_of(os.path.join(root, name))
            if ino is None or ino not in regs:
                problems.append(f"stray data file {os.path.join(root, name)}")
    return problems


class CrashTests(TestCase):
    timeout = 60

    async def run_and_kill(
        self, data_dir: Path, seed: int, acks: int, inline_max: int = 0
    ) -> GatewayProcess:
        proc = spawn(
            [
                sys.executable,
                "-m",
                "tests.backend.crash_writer",
                str(data_dir),
                str(seed),
                str(inline_max),
            ],
            path=REPO,
        )
        kill_on_cleanup(self, proc)
        seen = [0]

        def nth_ack(event: dict[str, Any]) -> bool:
            if "r" in event:
                seen[0] += 1
            return seen[0] >= acks or "fatal" in event

        await proc.wait_for(nth_ack)
        proc.signal("KILL")
        status = await proc.ended
        self.assertEqual(status, -9, proc.stderr.decode()[-2000:])
        fatal = [e["fatal"] for e in proc.events if "fatal" in e]
        self.assertEqual(fatal, [], "the store and its mirror disagreed")
        return proc

    async def expected_trees(self, proc: GatewayProcess, seed: int) -> Any:
        """Models for every state the store may legitimately be in after the kill."""
        intents = {e["n"]: e["op"] for e in proc.events if "op" in e}
        acked = {e["n"]: e["r"] for e in proc.events if "r" in e}
        in_flight = sorted(set(intents) - set(acked))
        self.assertLessEqual(len(in_flight), 4)
        # An acknowledged unstable write is durable only once its commit is.
        optional = [
            n
            for n, op in intents.items()
            if n in acked
            and op["k"] == "write"
            and not op["stable"]
            and not any(m in acked and m > n and intents[m]["k"] == "commit" for m in intents)
        ]
        for extra in itertools.chain.from_iterable(
            itertools.combinations(in_flight, k) for k in range(len(in_flight) + 1)
        ):
            for drop in itertools.chain.from_iterable(
                itertools.combinations(optional, k) for k in range(len(optional) + 1)
            ):
                model = MemoryBackend()
                for n in sorted((set(acked) | set(extra)) - set(drop)):
                    outcome = await apply(model, intents[n], seed, n)
                    if n in acked:
                        self.assertEqual(outcome, acked[n], f"replaying op {n}: {intents[n]}")
                want = await tree(model)
                # A write in flight that did not commit may still have landed
                # in part: leave its bytes out, on every name of its file.
                masks: dict[str, list[tuple[int, int]]] = {}
                for n in in_flight:
                    op = intents[n]
                    if n in extra or op["k"] != "write":
                        continue
                    target = want.inos.get("/" + "/".join(op["f"]))
                    for path, ino in want.inos.items():
                        if ino == target:
                            masks.setdefault(path, []).append((op["off"], op["len"]))
                yield want, masks

    async def check(self, seed: int, acks: int, inline_max: int = 0) -> None:
        data_dir = Path(self.mktemp()).absolute()
        proc = await self.run_and_kill(data_dir, seed, acks, inline_max)
        store = EmbeddedBackend(data_dir, reactor)
        await store.open()
        self.addCleanup(store.close)
        self.assertEqual(invariants(data_dir), [])
        actual = await tree(store)
        first = None
        async for want, masks in self.expected_trees(proc, seed):
            if want.matches(actual, masks):
                break
            first = first or want
        else:
            assert first is not None
            self.fail(
                f"store after kill differs from every acknowledged state: {first.diff(actual)}"
                f"\nops in flight: {[e for e in proc.events if 'op' in e][-4:]}"
            )
        # The store still works after recovery.
        await store.create(1, b"after-crash", FileType.REG, 0o644, 0, 0)
        await store.close()
        self.assertEqual(invariants(data_dir), [])

    # Seeds and kill points: each kill lands while later operations are in
    # flight (the writer keeps going until the signal arrives).
    def test_kill_after_3(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self.check(seed=1, acks=3))

    def test_kill_after_17(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self.check(seed=2, acks=17))

    def test_kill_after_41(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self.check(seed=3, acks=41))

    def test_kill_after_64(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self.check(seed=4, acks=64))

    def test_kill_after_97(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self.check(seed=5, acks=97))

    def test_kill_after_130(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self.check(seed=6, acks=130))

    def test_kill_after_171(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self.check(seed=7, acks=171))

    def test_kill_after_220(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self.check(seed=8, acks=220))

    def test_kill_after_283(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self.check(seed=9, acks=283))

    # The same with small files inline (4 KiB): creates, writes within and
    # past the threshold (moving files out of line), truncations, removes.
    # The checker reopens the store with inline data off: what is inline
    # must read back all the same.
    def test_inline_kill_after_23(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self.check(seed=11, acks=23, inline_max=4096))

    def test_inline_kill_after_71(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self.check(seed=12, acks=71, inline_max=4096))

    def test_inline_kill_after_150(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self.check(seed=13, acks=150, inline_max=4096))

    def test_inline_kill_after_240(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self.check(seed=14, acks=240, inline_max=4096))
