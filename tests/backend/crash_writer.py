"""
The writer process of C{test_crash}: changes an embedded store until killed.

    python -m tests.backend.crash_writer DATA_DIR SEED [INLINE_MAX]

Performs a seeded random sequence of backend operations on the store (on its
writer thread, fsync on: the production path) and prints JSON lines, flushed:

 - C{{"n": N, "op": {...}}} before issuing operation N (its intent), and
 - C{{"n": N, "r": "ok"}} (or the error class name) once its Deferred fired:
   from then on its effect is guaranteed to survive a crash.

Operations run one at a time, except for bursts of 2-4 independent ones
(creates of fresh names, stable writes to distinct files, some large enough
for the data writers) issued together so that they share batches, as
concurrent clients would. An unstable write is always followed by a commit of
the same file. Namespace changes and truncations are sometimes issued with
C{durable=False} (as SMB issues them): acknowledged, they must survive a
kill -9 just the same. Each operation also runs on a
L{MemoryBackend} mirror and the two outcomes must agree.

With C{INLINE_MAX}, small files' bytes are kept in the database (half the
writes are at most 5,000 bytes at offset 0: files go inline and move out).

L{apply} is shared with the checker, which replays the acknowledged
operations on a model and compares it with the store it reopened.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from claudefs_gateway import errors
from claudefs_gateway.backend.embedded import EmbeddedBackend
from claudefs_gateway.backend.memory import MemoryBackend
from claudefs_gateway.fstypes import FileType, SetAttrs

ZERO = bytes(8)
NAMES = [f"n{i}" for i in range(8)]
#: Operations sometimes issued with durable=False (see L{apply}).
LAZY = {"mkdir", "create", "truncate", "rename", "unlink", "rmdir"}


def payload(seed: int, n: int, length: int) -> bytes:
    """The data operation C{n} writes: reproducible from the intent line alone."""
    return random.Random(f"{seed}-{n}").randbytes(length)


async def resolve(b: Any, path: list[str]) -> int:
    ino = 1
    for name in path:
        ino = (await b.lookup(ino, name.encode())).ino
    return ino


async def apply(b: Any, op: dict[str, Any], seed: int, n: int) -> str:
    """Run intent C{op} on backend C{b}; its outcome: C{"ok"} or an FSError class name."""
    try:
        k = op["k"]
        # A "lazy" op asks for durable=False (SMB's metadata changes): once
        # acknowledged it must survive a kill -9 all the same (ordered log).
        durable = not op.get("lazy", False)
        if k == "mkdir":
            await b.create(
                await resolve(b, op["p"]),
                op["name"].encode(),
                FileType.DIR,
                0o755,
                0,
                0,
                durable=durable,
            )
        elif k == "create":
            parent = await resolve(b, op["p"])
            await b.create(
                parent, op["name"].encode(), FileType.REG, 0o644, op["uid"], 100, durable=durable
            )
        elif k == "symlink":
            parent = await resolve(b, op["p"])
            await b.symlink(parent, op["name"].encode(), op["target"].encode(), 0o777, 0, 0)
        elif k == "write":
            data = payload(seed, n, op["len"])
            await b.write(await resolve(b, op["f"]), op["off"], data, op["stable"])
        elif k == "commit":
            await b.commit(await resolve(b, op["f"]))
        elif k == "truncate":
            await b.setattr(await resolve(b, op["f"]), SetAttrs(size=op["size"]), durable=durable)
        elif k == "rename":
            sp, dp = await resolve(b, op["sp"]), await resolve(b, op["dp"])
            await b.rename(sp, op["sn"].encode(), dp, op["dn"].encode(), durable=durable)
        elif k == "link":
            ino, parent = await resolve(b, op["f"]), await resolve(b, op["p"])
            await b.link(ino, parent, op["name"].encode())
        elif k == "unlink":
            await b.unlink(await resolve(b, op["p"]), op["name"].encode(), durable=durable)
        elif k == "rmdir":
            await b.rmdir(await resolve(b, op["p"]), op["name"].encode(), durable=durable)
        elif k == "setxattr":
            value = payload(seed, n, op["len"])
            await b.setxattr(await resolve(b, op["f"]), op["name"].encode(), value)
        elif k == "removexattr":
            await b.removexattr(await resolve(b, op["f"]), op["name"].encode())
        else:  # pragma: no cover
            raise AssertionError(f"unknown op {k}")
    except errors.FSError as e:
        return type(e).__name__
    return "ok"


async def listing(b: Any) -> list[tuple[list[str], FileType]]:
    """Every path in the tree with its type (the mirror is small: a full walk is cheap)."""
    out: list[tuple[list[str], FileType]] = []
    stack: list[tuple[list[str], int]] = [([], 1)]
    while stack:
        path, ino = stack.pop()
        page = await b.readdir(ino, 0, ZERO, 100000)
        for e in page.entries:
            p = [*path, e.name.decode()]
            out.append((p, e.type))
            if e.type is FileType.DIR:
                stack.append((p, e.ino))
    return out


class Writer:
    def __init__(self, store: EmbeddedBackend, seed: int) -> None:
        self.store = store
        self.mirror = MemoryBackend()
        self.seed = seed
        self.rng = random.Random(seed)
        self.n = 0

    def emit(self, obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def issue(self, op: dict[str, Any]) -> defer.Deferred[None]:
        """Print the intent, start the op on both stores, print the ack when the store's fires."""
        if op["k"] in LAZY and self.rng.random() < 0.4:
            op["lazy"] = True
        n = self.n
        self.n += 1
        self.emit({"n": n, "op": op})
        expected = defer.Deferred.fromCoroutine(apply(self.mirror, op, self.seed, n))
        assert expected.called  # the memory backend fires at once
        want = expected.result

        def acked(got: str) -> None:
            if got != want:
                self.emit({"fatal": f"op {n} {op}: store {got}, mirror {want}"})
                raise SystemExit(3)
            self.emit({"n": n, "r": got})

        return defer.Deferred.fromCoroutine(apply(self.store, op, self.seed, n)).addCallback(acked)

    async def step(self) -> None:
        rng = self.rng
        tree = await listing(self.mirror)
        dirs = [[]] + [p for p, t in tree if t is FileType.DIR]
        files = [p for p, t in tree if t is FileType.REG]
        anything = [p for p, _ in tree]
        big = len(tree) > 120
        roll = rng.random()
        if roll < 0.08:
            await self.burst(dirs, files)
            return
        kinds = ["mkdir", "create", "create", "symlink", "rename", "rename", "link", "unlink"]
        kinds += ["rmdir", "setxattr", "removexattr"]
        if files:
            kinds += ["write", "write", "write", "unstable", "truncate"]
        if big:
            kinds += ["unlink"] * 6 + ["rmdir"] * 3
        k = rng.choice(kinds)
        d = rng.choice(dirs)
        name = rng.choice(NAMES)
        if k == "mkdir":
            await self.issue({"k": "mkdir", "p": d, "name": name})
        elif k == "create":
            await self.issue({"k": "create", "p": d, "name": name, "uid": rng.choice([0, 7, 8])})
        elif k == "symlink":
            await self.issue(
                {"k": "symlink", "p": d, "name": name, "target": "t" * rng.randint(1, 9)}
            )
        elif k in ("write", "unstable"):
            f = rng.choice(files)
            off = rng.choice([0, 0, rng.randint(0, 300000)])
            length = rng.choice([rng.randint(1, 5000), rng.randint(1, 200000)])
            op = {"k": "write", "f": f, "off": off, "len": length, "stable": k == "write"}
            await self.issue(op)
            if k == "unstable":
                await self.issue({"k": "commit", "f": f})
        elif k == "truncate":
            size = rng.choice([0, rng.randint(0, 400000)])
            await self.issue({"k": "truncate", "f": rng.choice(files), "size": size})
        elif k == "rename" and anything:
            src = rng.choice(anything)
            op = {"k": "rename", "sp": src[:-1], "sn": src[-1], "dp": d, "dn": name}
            await self.issue(op)
        elif k == "link" and files:
            await self.issue({"k": "link", "f": rng.choice(files), "p": d, "name": name})
        elif k in ("unlink", "rmdir") and anything:
            victim = rng.choice(anything)
            await self.issue({"k": k, "p": victim[:-1], "name": victim[-1]})
        elif k in ("setxattr", "removexattr") and anything:
            target = rng.choice(anything + [[]])
            xname = rng.choice(["user.a", "user.b"])
            op = {"k": k, "f": target, "name": xname}
            if k == "setxattr":
                op["len"] = rng.randint(0, 3000)
            await self.issue(op)

    async def burst(self, dirs: list[list[str]], files: list[list[str]]) -> None:
        """Independent ops issued together: they are in flight at once and share batches."""
        rng = self.rng
        ds = []
        if files and rng.random() < 0.5:
            # Distinct inodes, not just distinct paths (hard links), so the
            # writes are independent and their order cannot matter.
            by_ino: dict[int, list[str]] = {}
            for f in files:
                by_ino.setdefault(await resolve(self.mirror, f), f)
            targets = list(by_ino.values())
            for f in rng.sample(targets, min(len(targets), rng.randint(2, 4))):
                # Some large enough for the data writers (written in pieces,
                # in parallel, before the batch's sync and commit).
                length = rng.choice([rng.randint(1, 20000), rng.randint(64 * 1024, 300_000)])
                op = {"k": "write", "f": f, "off": 0, "len": length, "stable": True}
                ds.append(self.issue(op))
        else:
            d = rng.choice(dirs)
            for _ in range(rng.randint(2, 4)):
                op = {"k": "create", "p": d, "name": f"b{self.n}", "uid": 7}
                ds.append(self.issue(op))
        await defer.gatherResults(ds)

    async def run(self, limit: int) -> None:
        await self.store.open()
        self.emit({"open": True})
        while self.n < limit:
            await self.step()
        await self.store.close()


def main(reactor: Any, data_dir: str, seed: str, inline_max: str = "0") -> defer.Deferred[None]:
    store = EmbeddedBackend(Path(data_dir), reactor, inline_max=int(inline_max))
    return defer.Deferred.fromCoroutine(Writer(store, int(seed)).run(100000))


if __name__ == "__main__":
    task.react(main, sys.argv[1:4])
