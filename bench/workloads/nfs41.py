"""
NFSv4.1 workloads, driven by the bench's own load generator
(``bench/nfs4client.py``; libnfs speaks only NFSv4.0): sequential WRITE and
READ in 1 MiB operations with four in flight on one session, and small
files (OPEN with create + WRITE 4 KiB + CLOSE in one COMPOUND each, READDIR,
REMOVE). The same sizes as the NFSv3 workloads (``CFS_BENCH_NFS_SEQ_MB``,
``CFS_BENCH_NFS_FILES``), so the two versions compare in one run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from bench.nfs4client import Client
from bench.stats import Metric
from bench.workloads import Workload, register
from bench.workloads.nfs import SEQ_MB, SMALL_FILES
from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4.codec import (
    CloseArgs,
    CommitArgs,
    NameArgs,
    ReadArgs,
    ReaddirArgs,
    StateId,
    WriteArgs,
)

IO = 1 << 20
DEPTH = int(os.environ.get("CFS_BENCH_NFS41_DEPTH", "4"))
CURRENT = StateId(1, bytes(12))


def _client(e: dict[str, Any]) -> Client:
    return Client(e["host"], e["nfs_port"])


def _export(cl: Client, e: dict[str, Any]) -> bytes:
    return cl.lookup(e["export"])


def _write_file(cl: Client, dir_fh: bytes, name: bytes, size: int) -> float:
    """Create and write C{size} bytes of a random block pattern; seconds it took."""
    block = os.urandom(IO)
    start = time.perf_counter()
    res = cl.compound([cl.putfh(dir_fh), cl.open_create(name, b"w"), (c.OP_GETFH, None)])
    sid = res.results[-2][1].value.stateid
    fh = res.results[-1][1].value
    inflight: list[int] = []
    for off in range(0, size, IO):
        if len(inflight) >= DEPTH:
            cl.collect(inflight.pop(0))
        inflight.append(
            cl.submit([cl.putfh(fh), (c.OP_WRITE, WriteArgs(sid, off, c.UNSTABLE4, block))])
        )
    for xid in inflight:
        cl.collect(xid)
    cl.compound([cl.putfh(fh), (c.OP_COMMIT, CommitArgs(0, 0)), (c.OP_CLOSE, CloseArgs(0, sid))])
    return time.perf_counter() - start


def seq_write(e: dict[str, Any], scratch: Path) -> dict[str, float]:
    """Write SEQ_MB MiB in 1 MiB UNSTABLE WRITEs (4 in flight), COMMIT, CLOSE."""
    cl = _client(e)
    try:
        d = _export(cl, e)
        name = b"seqw41-%d.bin" % time.monotonic_ns()
        elapsed = _write_file(cl, d, name, SEQ_MB << 20)
        cl.compound([cl.putfh(d), (c.OP_REMOVE, NameArgs(name))])
    finally:
        cl.close()
    return {"MB/s": (SEQ_MB << 20) / elapsed / 1e6}


def seq_read_prepare(e: dict[str, Any], scratch: Path) -> None:
    cl = _client(e)
    try:
        d = _export(cl, e)
        try:
            cl.compound([cl.putfh(d), (c.OP_REMOVE, NameArgs(b"seqr41.bin"))])
        except Exception:
            pass
        _write_file(cl, d, b"seqr41.bin", SEQ_MB << 20)
    finally:
        cl.close()


def seq_read(e: dict[str, Any], scratch: Path) -> dict[str, float]:
    """Read the SEQ_MB MiB file in 1 MiB READs (4 in flight)."""
    cl = _client(e)
    try:
        d = _export(cl, e)
        start = time.perf_counter()
        res = cl.compound([cl.putfh(d), cl.open_read(b"seqr41.bin", b"r"), (c.OP_GETFH, None)])
        sid = res.results[-2][1].value.stateid
        fh = res.results[-1][1].value
        total = SEQ_MB << 20
        got = 0
        inflight: list[int] = []
        offsets = iter(range(0, total, IO))
        for off in offsets:
            inflight.append(cl.submit([cl.putfh(fh), (c.OP_READ, ReadArgs(sid, off, IO))]))
            if len(inflight) >= DEPTH:
                got += len(cl.collect(inflight.pop(0)).results[-1][1].value.data)
        for xid in inflight:
            got += len(cl.collect(xid).results[-1][1].value.data)
        cl.compound([cl.putfh(fh), (c.OP_CLOSE, CloseArgs(0, sid))])
        elapsed = time.perf_counter() - start
    finally:
        cl.close()
    if got != total:
        raise RuntimeError(f"read {got} bytes, expected {total}")
    return {"MB/s": total / elapsed / 1e6}


def small_files(e: dict[str, Any], scratch: Path) -> dict[str, float]:
    """Create+write 4 KiB+close N files (one COMPOUND each), list them, remove them."""
    cl = _client(e)
    data = os.urandom(4096)
    try:
        d = _export(cl, e)
        sub = b"small41-%d" % time.monotonic_ns()
        from bench.nfs4client import mode_attrs
        from claudefs_gateway.nfs.v4.codec import CreateArgs
        from claudefs_gateway.rpc.xdrtypes import Arm

        res = cl.compound(
            [
                cl.putfh(d),
                (c.OP_CREATE, CreateArgs(Arm(c.NF4DIR), sub, mode_attrs(0o755))),
                (c.OP_GETFH, None),
            ]
        )
        dir_fh = res.results[-1][1].value
        start = time.perf_counter()
        for i in range(SMALL_FILES):
            cl.compound(
                [
                    cl.putfh(dir_fh),
                    cl.open_create(b"f%05d" % i, b"s"),
                    (c.OP_WRITE, WriteArgs(CURRENT, 0, c.FILE_SYNC4, data)),
                    (c.OP_CLOSE, CloseArgs(0, CURRENT)),
                ]
            )
        created = time.perf_counter() - start
        start = time.perf_counter()
        names = 0
        cookie, verf = 0, bytes(8)
        while True:
            res = cl.compound(
                [
                    cl.putfh(dir_fh),
                    (c.OP_READDIR, ReaddirArgs(cookie, verf, 32768, 65536, [1 << c.FATTR4_TYPE])),
                ]
            )
            page = res.results[-1][1].value
            names += len(page.entries)
            if page.eof or not page.entries:
                break
            cookie, verf = page.entries[-1].cookie, page.cookieverf
        listed = time.perf_counter() - start
        if names != SMALL_FILES:
            raise RuntimeError(f"listed {names} names")
        start = time.perf_counter()
        for i in range(SMALL_FILES):
            cl.compound([cl.putfh(dir_fh), (c.OP_REMOVE, NameArgs(b"f%05d" % i))])
        removed = time.perf_counter() - start
        cl.compound([cl.putfh(d), (c.OP_REMOVE, NameArgs(sub))])
    finally:
        cl.close()
    return {
        "create/s": SMALL_FILES / created,
        "list entries/s": SMALL_FILES / listed,
        "unlink/s": SMALL_FILES / removed,
    }


register(
    Workload(
        "nfs41.seq_write",
        "nfs",
        (Metric("MB/s", "MB/s"),),
        seq_write,
        description=f"NFSv4.1 WRITE of {SEQ_MB} MiB, 1 MiB x 4 in flight (bench/nfs4client.py)",
    )
)
register(
    Workload(
        "nfs41.seq_read",
        "nfs",
        (Metric("MB/s", "MB/s"),),
        seq_read,
        prepare=seq_read_prepare,
        description=f"NFSv4.1 READ of {SEQ_MB} MiB, 1 MiB x 4 in flight (bench/nfs4client.py)",
    )
)
register(
    Workload(
        "nfs41.small_files",
        "nfs",
        (
            Metric("create/s", "files/s"),
            Metric("list entries/s", "entries/s"),
            Metric("unlink/s", "files/s"),
        ),
        small_files,
        description=f"NFSv4.1 OPEN+WRITE 4 KiB+CLOSE of {SMALL_FILES} files, READDIR, REMOVE",
    )
)
