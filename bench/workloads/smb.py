"""
SMB workloads, driven by Samba's smbclient (a C client: what it costs is
small next to either server), side by side with Samba's smbd (PEERS.md).

  - ``smb.seq_write`` / ``smb.seq_read``: one large file put and got with
    smbclient, SMB 3.1.1 without signing (``--client-protection=off``).
  - ``smb.seq_write_encrypted``: the same put, encrypted (AES-128-GCM).
  - ``smb.small_files``: 300 files of 4 KiB created and written (one
    smbclient session of ``put``), then deleted (one session of ``del``).

Every workload also reports the server's CPU time per MiB or per file, read
from the process's CPU clock and /proc/<pid>/stat (for Samba, the parent
smbd's own time and its reaped per-connection children's: bench/serverstat.py),
since wall time on a shared machine mostly measures the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.serverstat import children, family_cpu, settle
from bench.stats import Metric
from bench.workloads import Workload, register

BIG = 256 * 1024 * 1024
SMALL_COUNT = 300
SMALL_SIZE = 4096


def _smbclient(
    endpoints: dict[str, Any], commands: str, scratch: Path, protection: str = "off"
) -> float:
    """Run one smbclient session; its wall time in seconds."""
    conf = scratch / "smb.conf"
    if not conf.exists():
        conf.write_text("[global]\n   client min protocol = SMB2_02\n")
    exe = shutil.which("smbclient") or "smbclient"
    argv = [
        exe,
        f"//{endpoints['host']}/{endpoints['share']}",
        "-s",
        str(conf),
        "-p",
        str(endpoints["smb_port"]),
        "-U",
        f"{endpoints['user']}%{endpoints['password']}",
        "-m",
        "SMB3",
        f"--client-protection={protection}",
        "-c",
        commands,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, timeout=600)
    elapsed = time.perf_counter() - t0
    out = proc.stdout.decode("utf-8", "replace") + proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0 or "NT_STATUS_" in out:
        raise RuntimeError(f"smbclient failed ({proc.returncode}): {out[-2000:]}")
    return elapsed


def _measured(endpoints: dict[str, Any], run: Any) -> tuple[float, float]:
    """(wall seconds, server CPU seconds) of C{run()}."""
    pid = endpoints["pid"]
    kids = children(pid)
    cpu0 = family_cpu(pid)
    wall = run()
    settle(pid, kids)
    return wall, family_cpu(pid) - cpu0


def prepare_big(endpoints: dict[str, Any], scratch: Path) -> None:
    """A local 256 MiB file beside the runs' directories, and the same on the server."""
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch.parent / "big.bin"
    if not path.exists():
        block = os.urandom(1 << 20)
        with open(path, "wb") as f:
            for _ in range(BIG >> 20):
                f.write(block)
    _smbclient(endpoints, f"lcd {scratch.parent}; put big.bin big.bin", scratch)


def seq_write(
    endpoints: dict[str, Any], scratch: Path, protection: str = "off"
) -> dict[str, float]:
    # prepare_big left the local file beside every run's scratch directory.
    cmd = f"lcd {scratch.parent}; put big.bin written.bin"
    wall, cpu = _measured(endpoints, lambda: _smbclient(endpoints, cmd, scratch, protection))
    mib = BIG / (1 << 20)
    return {"MiB/s": mib / wall, "server CPU ms/MiB": cpu * 1000 / mib}


def seq_write_encrypted(endpoints: dict[str, Any], scratch: Path) -> dict[str, float]:
    return seq_write(endpoints, scratch, "encrypt")


def seq_read(endpoints: dict[str, Any], scratch: Path) -> dict[str, float]:
    out = scratch / "read.bin"
    cmd = f"lcd {scratch}; get big.bin read.bin"
    wall, cpu = _measured(endpoints, lambda: _smbclient(endpoints, cmd, scratch))
    size = out.stat().st_size
    out.unlink()
    if size != BIG:
        raise RuntimeError(f"read {size} bytes, expected {BIG}")
    mib = BIG / (1 << 20)
    return {"MiB/s": mib / wall, "server CPU ms/MiB": cpu * 1000 / mib}


def small_files(endpoints: dict[str, Any], scratch: Path) -> dict[str, float]:
    local = scratch / "small"
    local.mkdir(parents=True, exist_ok=True)
    data = os.urandom(SMALL_SIZE)
    for i in range(SMALL_COUNT):
        (local / f"f{i:04d}").write_bytes(data)
    d = f"small-{scratch.name}"
    puts = f"lcd {local}; mkdir {d}; cd {d}; " + "; ".join(
        f"put f{i:04d}" for i in range(SMALL_COUNT)
    )
    dels = (
        f"cd {d}; " + "; ".join(f"del f{i:04d}" for i in range(SMALL_COUNT)) + f"; cd ..; rmdir {d}"
    )
    wall_c, cpu_c = _measured(endpoints, lambda: _smbclient(endpoints, puts, scratch))
    wall_d, cpu_d = _measured(endpoints, lambda: _smbclient(endpoints, dels, scratch))
    return {
        "creates/s": SMALL_COUNT / wall_c,
        "deletes/s": SMALL_COUNT / wall_d,
        "server CPU us/create": cpu_c * 1e6 / SMALL_COUNT,
        "server CPU us/delete": cpu_d * 1e6 / SMALL_COUNT,
    }


_THROUGHPUT = (
    Metric("MiB/s", "MiB/s"),
    Metric("server CPU ms/MiB", "ms", higher_is_better=False),
)

register(
    Workload(
        name="smb.seq_write",
        protocol="smb",
        metrics=_THROUGHPUT,
        run=seq_write,
        prepare=prepare_big,
        description="smbclient put of a 256 MiB file (SMB 3.1.1, no signing)",
    )
)
register(
    Workload(
        name="smb.seq_write_encrypted",
        protocol="smb",
        metrics=_THROUGHPUT,
        run=seq_write_encrypted,
        prepare=prepare_big,
        description="smbclient put of a 256 MiB file, encrypted (--client-protection=encrypt)",
    )
)
register(
    Workload(
        name="smb.seq_read",
        protocol="smb",
        metrics=_THROUGHPUT,
        run=seq_read,
        prepare=prepare_big,
        description="smbclient get of a 256 MiB file (SMB 3.1.1, no signing)",
    )
)
register(
    Workload(
        name="smb.small_files",
        protocol="smb",
        metrics=(
            Metric("creates/s", "files/s"),
            Metric("deletes/s", "files/s"),
            Metric("server CPU us/create", "us", higher_is_better=False),
            Metric("server CPU us/delete", "us", higher_is_better=False),
        ),
        run=small_files,
        description=f"{SMALL_COUNT} x 4 KiB files put, then deleted, one smbclient session each",
    )
)
