"""
One client process of the metadata workloads (bench/workloads/meta.py):
a remote backend (pool, breaker, failover) on the meta servers given, in
that order of preference, driving one phase and printing one JSON object.

    python -m bench.meta_client --meta A,B --phase create|getattr|readdir|fill
        --dir NAME --n N

Runs with its own reactor (the bench runner is synchronous).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from twisted.internet import defer, reactor

from claudefs_gateway import errors
from claudefs_gateway.backend.remote.client import NodeSpec, RemoteBackend
from claudefs_gateway.core import config as cfg
from claudefs_gateway.fstypes import FileType

DATA = os.urandom(4096)


async def _dir(b: RemoteBackend, root: int, name: bytes) -> int:
    try:
        return (await b.create(root, name, FileType.DIR, 0o755, 0, 0)).ino
    except errors.Exists:
        return (await b.lookup(root, name)).ino


async def run(metas: list[str], phase: str, name: str, n: int, start_at: float) -> dict[str, Any]:
    c = cfg.default_config()
    b = RemoteBackend([NodeSpec(m) for m in metas], reactor, c.connection_pool, c.circuit_breaker)
    await b.open()
    try:
        root = (await b.root()).ino
        d = await _dir(b, root, name.encode())
        # Every client starts its timed phase at the same moment.
        while time.time() < start_at:
            await _sleep(min(0.01, start_at - time.time()))
        t0 = time.perf_counter()
        count = 0
        if phase in ("create", "fill"):
            tag = os.getpid()
            for i in range(n):
                a = await b.create(d, b"f%d-%07d" % (tag, i), FileType.REG, 0o644, 0, 0)
                if phase == "create":
                    await b.write(a.ino, 0, DATA, True)
                count += 1
        elif phase == "getattr":
            a = await b.create(d, b"g%d" % os.getpid(), FileType.REG, 0o644, 0, 0)
            t0 = time.perf_counter()
            for _ in range(n):
                await b.getattr(a.ino)
            count = n
        elif phase == "readdir":
            cookie, verf = 0, bytes(8)
            while True:
                page = await b.readdir(d, cookie, verf, 512, True)
                count += len(page.entries)
                if page.eof:
                    break
                cookie, verf = page.entries[-1].cookie, page.verifier
        elapsed = time.perf_counter() - t0
    finally:
        await b.close()
    return {"count": count, "seconds": elapsed}


def _sleep(seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(max(seconds, 0), d.callback, None)
    return d


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--meta", required=True)
    p.add_argument("--phase", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--start-at", type=float, default=0.0)
    args = p.parse_args()
    out: dict[str, Any] = {}

    def go() -> None:
        d = defer.Deferred.fromCoroutine(
            run(args.meta.split(","), args.phase, args.dir, args.n, args.start_at)
        )
        d.addCallback(out.update)
        d.addErrback(lambda f: out.update(error=f.getErrorMessage()))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    sys.stdout.write(json.dumps(out) + "\n")
    sys.exit(1 if "error" in out else 0)


if __name__ == "__main__":
    main()
