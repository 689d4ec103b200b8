"""
The ClaudeFS RPC: GETATTR round trips through the remote backend.

Starts its own ``cfs-gateway data`` and ``cfs-gateway meta`` processes (the
gateway target is not used), then times sequential GETATTRs of the root from a
client process through the pool, breaker and failover, over TCP on loopback
and over a unix socket (what ``--workers`` uses), and counts the CPU each
call cost the client and the meta server. Target (the seeds): p99 within
1 ms.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from bench.stats import Metric
from bench.targets import free_port, wait_port
from bench.workloads import Workload, register

OPS = int(os.environ.get("CFS_BENCH_RPC_OPS", "5000"))


def _cfs() -> str:
    return shutil.which("cfs-gateway", path=os.path.dirname(sys.executable)) or "cfs-gateway"


def _server(role: str, data_dir: Path, listen: str, extra: list[str], log: Path) -> Any:
    return subprocess.Popen(
        [
            _cfs(),
            role,
            "--data-dir",
            str(data_dir),
            "--listen",
            listen,
            "--admin",
            f"tcp:{free_port()}:interface=127.0.0.1",
            "--log-level",
            "warn",
            *extra,
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def _client(address: str, server_pid: int) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.rpc_client",
            "--address",
            address,
            "--ops",
            str(OPS),
            "--server-pid",
            str(server_pid),
        ],
        capture_output=True,
        check=False,
        timeout=600,
    )
    got = json.loads(out.stdout.decode() or "{}")
    if out.returncode != 0 or "error" in got:
        raise RuntimeError(f"rpc client failed: {got.get('error') or out.stderr[-2000:]!r}")
    return got  # type: ignore[no-any-return]


def _wait_path(path: Path, deadline: float = 30.0) -> None:
    """Block until a unix socket exists (bench processes may block)."""
    pause = threading.Event()
    for _ in range(int(deadline / 0.05)):
        if path.exists():
            return
        pause.wait(0.05)
    raise RuntimeError(f"{path} did not appear")


def getattr_rtt(e: dict[str, Any], scratch: Path) -> dict[str, float]:
    sock_dir = Path(tempfile.mkdtemp(prefix="cfs-rpc-"))  # unix socket paths must be short
    procs = []
    try:
        dport, mport = free_port(), free_port()
        procs.append(
            _server(
                "data",
                scratch / "data",
                f"tcp:{dport}:interface=127.0.0.1",
                [],
                scratch / "data.log",
            )
        )
        wait_port(dport)
        procs.append(
            _server(
                "meta",
                scratch / "meta",
                f"tcp:{mport}:interface=127.0.0.1",
                ["--data-server", f"127.0.0.1:{dport}"],
                scratch / "meta.log",
            )
        )
        wait_port(mport)
        usock = sock_dir / "meta.sock"
        procs.append(
            _server(
                "meta",
                scratch / "meta-unix",
                f"unix:{usock}",
                ["--data-server", f"127.0.0.1:{dport}"],
                scratch / "meta-unix.log",
            )
        )
        tcp = _client(f"127.0.0.1:{mport}", procs[1].pid)
        _wait_path(usock)
        unix = _client(f"unix:{usock}", procs[2].pid)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        shutil.rmtree(sock_dir, ignore_errors=True)
    return {
        "tcp p50": tcp["p50_us"],
        "tcp p99": tcp["p99_us"],
        "unix p50": unix["p50_us"],
        "unix p99": unix["p99_us"],
        "tcp calls/s": tcp["calls/s"],
        "unix client CPU": unix["client_cpu_us"],
        "unix server CPU": unix["server_cpu_us"],
        "tcp client CPU": tcp["client_cpu_us"],
        "tcp server CPU": tcp["server_cpu_us"],
    }


register(
    Workload(
        "rpc.getattr_rtt",
        "rpc",
        (
            Metric("tcp p50", "µs", higher_is_better=False),
            Metric("tcp p99", "µs", higher_is_better=False),
            Metric("unix p50", "µs", higher_is_better=False),
            Metric("unix p99", "µs", higher_is_better=False),
            Metric("tcp calls/s", "calls/s"),
            # CPU per call in each process over the timed calls: steadier
            # than the latencies on a shared machine (docs/bench.rst "What
            # one RPC call costs").
            Metric("unix client CPU", "µs/call", higher_is_better=False),
            Metric("unix server CPU", "µs/call", higher_is_better=False),
            Metric("tcp client CPU", "µs/call", higher_is_better=False),
            Metric("tcp server CPU", "µs/call", higher_is_better=False),
        ),
        getattr_rtt,
        description="GETATTR round trips through the remote backend (own meta/data servers)",
    )
)
