"""
``python -m bench.embedded [--dir DIR]``: micro-benchmarks of the embedded store.

Not a workload of ``python -m bench`` (those drive real clients over the
wire): this times the backend API itself on a real reactor, writer thread and
fsync on, to ground the design choices written up in docs/backend.rst - which
reads run inline on the reactor thread, what group commit buys, what a thread
hop costs next to a pread or pwrite.

Prints one line per measurement: the median of a few repetitions, in
microseconds per operation (and operations per second).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, task, threads

from claudefs_gateway.backend.embedded import EmbeddedBackend
from claudefs_gateway.fstypes import FileType

REG, DIR = FileType.REG, FileType.DIR
ZERO = bytes(8)


async def timed(label: str, n: int, body: Callable[[int], Awaitable[Any]], reps: int = 5) -> None:
    """Run C{body(rep)} C{reps} times, each doing C{n} operations; print the median per op."""
    runs = []
    for rep in range(reps):
        t0 = time.perf_counter()
        await body(rep)
        runs.append((time.perf_counter() - t0) / n)
    per = statistics.median(runs)
    print(f"{label:<52} {per * 1e6:10.1f} us/op {1 / per:12.0f} op/s", flush=True)


async def run(reactor: Any, where: str) -> None:
    path = Path(tempfile.mkdtemp(prefix="cfs-bench-", dir=where))
    b = EmbeddedBackend(path / "store", reactor)
    await b.open()
    print(
        f"store in {path} ({os.uname().sysname} {os.uname().release}, python {sys.version.split()[0]})"
    )
    d = await b.create(1, b"d", DIR, 0o755, 0, 0)
    names = [b"f%05d" % i for i in range(1000)]
    inos = [
        a.ino
        for a in await defer.gatherResults([b.create(d.ino, n, REG, 0o644, 0, 0) for n in names])
    ]

    async def getattrs(_: int) -> None:
        for i in inos:
            await b.getattr(i)

    async def lookups(_: int) -> None:
        for n in names:
            await b.lookup(d.ino, n)

    async def readdir(_: int) -> None:
        cookie, verf = 0, ZERO
        while True:
            page = await b.readdir(d.ino, cookie, verf, 100, with_attrs=True)
            if page.eof:
                return
            cookie, verf = page.entries[-1].cookie, page.verifier

    await timed("getattr (idle store: reactor thread)", len(inos), getattrs)
    await timed("lookup (idle store: reactor thread)", len(names), lookups)
    await timed("readdir with attrs, per entry (pages of 100)", len(names), readdir)

    async def creates_seq(rep: int) -> None:
        for i in range(200):
            await b.create(d.ino, b"s%d-%d" % (rep, i), REG, 0o644, 0, 0)

    async def creates_par(rep: int, width: int) -> None:
        async def client(c: int) -> None:
            for i in range(2000 // width):
                await b.create(d.ino, b"p%d-%d-%d-%d" % (width, rep, c, i), REG, 0o644, 0, 0)

        await defer.gatherResults([defer.Deferred.fromCoroutine(client(c)) for c in range(width)])

    before = b.stats.durable_commits
    await timed("create, one at a time (1 fsync each)", 200, creates_seq)
    print(f"    durable commits: {b.stats.durable_commits - before} for 1000 creates")
    for width in (8, 64):
        before = b.stats.durable_commits
        await timed(
            f"create, {width} concurrent clients (group commit)",
            2000,
            lambda rep, w=width: creates_par(rep, w),
        )
        print(f"    durable commits: {b.stats.durable_commits - before} for 10000 creates")

    f = await b.create(1, b"data", REG, 0o644, 0, 0)
    small, big = os.urandom(4096), os.urandom(1 << 20)

    async def writes(data: bytes, stable: bool, n: int) -> None:
        for i in range(n):
            await b.write(f.ino, i * len(data), data, stable)

    await timed("write 4 KiB unstable", 500, lambda _: writes(small, False, 500))
    await timed(
        "write 4 KiB stable (fdatasync + FULL commit)", 200, lambda _: writes(small, True, 200)
    )
    await timed("write 1 MiB unstable", 50, lambda _: writes(big, False, 50))
    commit_times = []
    for _ in range(3):
        await writes(big, False, 50)
        t0 = time.perf_counter()
        await b.commit(f.ino)
        commit_times.append(time.perf_counter() - t0)
    print(
        f"{'commit after 50 MiB of unstable writes':<52} {statistics.median(commit_times) * 1e3:10.1f} ms"
    )

    async def reads(size: int, n: int) -> None:
        for i in range(n):
            await b.read(f.ino, (i * size) % (50 << 20), size)

    await timed("read 4 KiB (page cache, reactor thread)", 2000, lambda _: reads(4096, 2000))
    await timed("read 1 MiB (page cache, reactor thread)", 200, lambda _: reads(1 << 20, 200))
    assert b._reader is not None
    b._reader.nowait = False
    await timed("read 4 KiB forced through the thread pool", 2000, lambda _: reads(4096, 2000))
    await timed("read 1 MiB forced through the thread pool", 200, lambda _: reads(1 << 20, 200))
    b._reader.nowait = True

    fd = os.open(path / "raw", os.O_RDWR | os.O_CREAT, 0o600)
    os.pwrite(fd, big, 0)

    async def raw(fn: Callable[[], Any], n: int) -> None:
        for _ in range(n):
            fn()

    async def hop(n: int) -> None:
        for _ in range(n):
            await threads.deferToThread(lambda: None)

    await timed(
        "raw pread 4 KiB (for comparison)", 5000, lambda _: raw(lambda: os.pread(fd, 4096, 0), 5000)
    )
    await timed("raw pread 1 MiB", 500, lambda _: raw(lambda: os.pread(fd, 1 << 20, 0), 500))
    await timed("raw pwrite 1 MiB", 500, lambda _: raw(lambda: os.pwrite(fd, big, 0), 500))
    await timed("thread pool round trip (deferToThread, no work)", 2000, lambda _: hop(2000))
    os.close(fd)
    await b.close()
    shutil.rmtree(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dir", default=".", help="where to make the scratch store (the disk to measure)"
    )
    args = p.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor, args.dir)))


if __name__ == "__main__":
    main()
