"""
Metadata-heavy workloads through the meta servers, three stores in one run:

 - ``embedded``: one ``claudefs-meta`` on its embedded SQLite store;
 - ``pg1``: one ``claudefs-meta`` on PostgreSQL;
 - ``pg2``: two ``claudefs-meta`` on the same PostgreSQL database, each
   client preferring one of them (half the clients each).

Each has its own ``claudefs-data``. The PostgreSQL server is a fresh Debian
PostgreSQL 15 cluster in the scratch directory with its default durability
(``fsync``, ``synchronous_commit`` on), on a unix socket. Clients are
``bench.meta_client`` processes (the remote backend: pool, breaker, failover),
``CFS_BENCH_META_CLIENTS`` of them (default 4) at once:

 - small files: each client creates files in its own directory and writes
   4 KiB to each with a stable write (create, WRITE, WROTE);
 - GETATTR: each client GETATTRs one file, one call at a time;
 - READDIR: a directory of ``CFS_BENCH_META_ENTRIES`` entries (default
   100,000; filled outside the measurement) listed page by page with
   attributes (512 a page) by every client at once.

Metrics are aggregate operations per second (each phase's count over the
slowest client's time), plus ``pg2 / embedded`` for creates (target >= 0.7).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.stats import Metric
from bench.targets import free_port, wait_port
from bench.workloads import Workload, register
from bench.workloads.rpc import _cfs

CLIENTS = int(os.environ.get("CFS_BENCH_META_CLIENTS", "4"))
FILES = int(os.environ.get("CFS_BENCH_META_FILES", "500"))
GETATTRS = int(os.environ.get("CFS_BENCH_META_OPS", "3000"))
ENTRIES = int(os.environ.get("CFS_BENCH_META_ENTRIES", "100000"))
STORES = ("embedded", "pg1", "pg2")


def _pg_bin() -> Path:
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin")):
        if (d / "initdb").exists():
            return d
    raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")


def _as_owner(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.getuid() == 0 else argv


class Postgres:
    """A scratch cluster on a unix socket, with PostgreSQL's default durability."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cfs-bpg-"))
        self.bin = _pg_bin()

    def start(self) -> str:
        os.chmod(self.dir, 0o755)
        if os.getuid() == 0:
            shutil.chown(self.dir, "postgres")
        subprocess.run(
            _as_owner(
                [
                    str(self.bin / "initdb"),
                    "-D",
                    str(self.dir / "data"),
                    "-U",
                    "claudefs",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ]
            ),
            check=True,
            capture_output=True,
        )
        opts = (
            f"-c listen_addresses= -c unix_socket_directories={self.dir} -c max_connections=200"
            " -c shared_buffers=256MB"
        )
        subprocess.run(
            _as_owner(
                [
                    str(self.bin / "pg_ctl"),
                    "-D",
                    str(self.dir / "data"),
                    "-l",
                    str(self.dir / "server.log"),
                    "-w",
                    "start",
                    "-o",
                    opts,
                ]
            ),
            check=True,
            capture_output=True,
        )
        return f"host={self.dir} port=5432 dbname=postgres user=claudefs"

    def stop(self) -> None:
        subprocess.run(
            _as_owner(
                [str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop"]
            ),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(self.dir, ignore_errors=True)


def _server(role: str, data_dir: Path, port: int, extra: list[str], log: Path) -> Any:
    return subprocess.Popen(
        [
            _cfs(),
            role,
            "--data-dir",
            str(data_dir),
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--admin",
            f"tcp:{free_port()}:interface=127.0.0.1",
            "--log-level",
            "warn",
            *extra,
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def _clients(metas: list[str], phase: str, dirs: list[str], n: int) -> tuple[int, float]:
    """Run CLIENTS client processes at once; (total count, slowest client's seconds)."""
    start_at = time.time() + 2.0
    procs = []
    for i in range(CLIENTS):
        order = metas[i % len(metas) :] + metas[: i % len(metas)]
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.meta_client",
                    "--meta",
                    ",".join(order),
                    "--phase",
                    phase,
                    "--dir",
                    dirs[i % len(dirs)],
                    "--n",
                    str(n),
                    "--start-at",
                    str(start_at),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    total, slowest = 0, 0.0
    for p in procs:
        out, err = p.communicate(timeout=3600)
        got = json.loads(out.decode() or "{}")
        if p.returncode != 0 or "error" in got:
            raise RuntimeError(f"meta client failed: {got.get('error') or err[-2000:]!r}")
        total += got["count"]
        slowest = max(slowest, got["seconds"])
    return total, slowest


def _one_store(kind: str, scratch: Path, dsn: str | None) -> dict[str, float]:
    procs = []
    try:
        dport = free_port()
        procs.append(
            _server("data", scratch / f"{kind}-data", dport, [], scratch / f"{kind}-data.log")
        )
        wait_port(dport)
        extra = ["--data-server", f"127.0.0.1:{dport}"]
        if kind != "embedded":
            conf = scratch / f"{kind}.yaml"
            conf.write_text(
                "meta_store:\n  type: postgresql\n  postgresql:\n"
                f"    dsn: {dsn!r}\n    schema: {kind}\n    pool_max: 16\n"
            )
            extra += ["--config", str(conf)]
        metas = []
        for i in range(2 if kind == "pg2" else 1):
            port = free_port()
            procs.append(
                _server(
                    "meta",
                    scratch / f"{kind}-meta{i}",
                    port,
                    extra,
                    scratch / f"{kind}-meta{i}.log",
                )
            )
            wait_port(port)
            metas.append(f"127.0.0.1:{port}")
        out: dict[str, float] = {}
        n, secs = _clients(metas, "create", [f"c{i}" for i in range(CLIENTS)], FILES)
        out["create/s"] = n / secs
        n, secs = _clients(metas, "getattr", ["g"], GETATTRS)
        out["getattr/s"] = n / secs
        _clients(metas, "fill", ["big"], ENTRIES // CLIENTS)
        n, secs = _clients(metas, "readdir", ["big"], 0)
        out["readdir entries/s"] = n / secs
        return out
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)


def stores(e: dict[str, Any], scratch: Path) -> dict[str, float]:
    scratch.mkdir(parents=True, exist_ok=True)
    pg = Postgres()
    try:
        dsn = pg.start()
        out: dict[str, float] = {}
        for kind in STORES:
            for k, v in _one_store(kind, scratch, dsn).items():
                out[f"{kind} {k}"] = v
    finally:
        pg.stop()
    out["pg2/embedded create"] = out["pg2 create/s"] / out["embedded create/s"]
    return out


register(
    Workload(
        "meta.stores",
        "rpc",
        tuple(
            Metric(f"{kind} {m}", unit)
            for kind in STORES
            for m, unit in (
                ("create/s", "files/s"),
                ("getattr/s", "ops/s"),
                ("readdir entries/s", "entries/s"),
            )
        )
        + (Metric("pg2/embedded create", "x"),),
        stores,
        description=f"small files (create + 4 KiB stable write), GETATTR and READDIR of "
        f"{ENTRIES} entries through claudefs-meta on embedded, PostgreSQL (1 server) and "
        f"PostgreSQL (2 servers), {CLIENTS} client processes",
    )
)
