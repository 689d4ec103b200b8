"""
SMB workloads, driven by Samba's smbclient (a C client: what it costs is
small next to either server), side by side with Samba's smbd (PEERS.md).

  - ``smb.seq_write`` / ``smb.seq_read``: one large file put and got with
    smbclient, SMB 3.1.1 without signing (``--client-protection=off``).
  - ``smb.seq_write_encrypted``: the same put, encrypted (AES-128-GCM).
  - ``smb.small_files``: 300 files of 4 KiB created and written (one
    smbclient session of ``put``), then deleted (one session of ``del``).

  - ``smb.small_files_parallel``: the same from CFS_BENCH_SMB_CLIENTS (4)
    smbclient sessions at once, each in a directory of its own.

  - ``smb.small_files_leases``: 200 files created with an RWH lease (v2),
    written and closed, then each opened again with the lease and its
    FileBasicInformation queried, over one smbprotocol session.

Every workload also reports the server's CPU time per MiB or per file, read
from the process's CPU clock and /proc/<pid>/stat (for Samba, the parent
smbd's own time, its live children's (the connection's smbd, which a
workload holding one session open keeps alive) and its reaped ones':
bench/serverstat.py), since wall time on a shared machine mostly measures
the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.parallel import per_op, run_phases, sync
from bench.serverstat import children, settle, tree_cpu
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
    cpu0 = tree_cpu(pid)
    wall = run()
    settle(pid, kids)
    return wall, tree_cpu(pid) - cpu0


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


PARALLEL = int(os.environ.get("CFS_BENCH_SMB_CLIENTS", "4"))


def _small_files_client(i: int, endpoints: dict[str, Any], scratch: str) -> None:
    """One client of small_files_parallel (a forked process): its own directory."""
    mine = Path(scratch) / f"client-{i}"
    local = mine / "small"
    local.mkdir(parents=True, exist_ok=True)
    data = os.urandom(SMALL_SIZE)
    for j in range(SMALL_COUNT):
        (local / f"f{j:04d}").write_bytes(data)
    d = f"small-{Path(scratch).name}-{i}"
    _smbclient(endpoints, f"mkdir {d}", mine)
    sync()
    _smbclient(
        endpoints,
        f"lcd {local}; cd {d}; " + "; ".join(f"put f{j:04d}" for j in range(SMALL_COUNT)),
        mine,
    )
    sync()
    _smbclient(
        endpoints, f"cd {d}; " + "; ".join(f"del f{j:04d}" for j in range(SMALL_COUNT)), mine
    )
    sync()
    _smbclient(endpoints, f"rmdir {d}", mine)


def small_files_parallel(endpoints: dict[str, Any], scratch: Path) -> dict[str, float]:
    """
    smb.small_files from PARALLEL smbclient processes at once, each its own
    session (with --workers the kernel spreads the connections over the
    workers) and directory, the put and del phases in step: aggregate
    files/s and the server's CPU per file.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    phases, _ = run_phases(
        PARALLEL, 2, _small_files_client, (endpoints, str(scratch)), pid=endpoints.get("pid")
    )
    return per_op(
        phases,
        SMALL_COUNT * PARALLEL,
        ("creates/s", "server CPU us/create", "deletes/s", "server CPU us/delete"),
    )


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

register(
    Workload(
        name="smb.small_files_parallel",
        protocol="smb",
        metrics=(
            Metric("creates/s", "files/s"),
            Metric("deletes/s", "files/s"),
            Metric("server CPU us/create", "us", higher_is_better=False),
            Metric("server CPU us/delete", "us", higher_is_better=False),
            Metric("clients CPU us/create", "us", higher_is_better=False),
            Metric("clients CPU us/delete", "us", higher_is_better=False),
        ),
        run=small_files_parallel,
        description=(
            f"smb.small_files from {PARALLEL} smbclient sessions at once, each {SMALL_COUNT}"
            " files in its own directory (aggregate files/s)"
        ),
    )
)

# -- leases: small files through smbprotocol, each open asking for an RWH lease ----------------

LEASE_FILES = int(os.environ.get("CFS_BENCH_SMB_LEASE_FILES", "200"))


def _lease_session(endpoints: dict[str, Any]) -> tuple[Any, Any, Any]:
    import uuid

    from smbprotocol.connection import Connection
    from smbprotocol.session import Session
    from smbprotocol.tree import TreeConnect

    conn = Connection(uuid.uuid4(), endpoints["host"], int(endpoints["smb_port"]))
    conn.connect()
    session = Session(conn, endpoints["user"], endpoints["password"])
    session.connect()
    tree = TreeConnect(session, rf"\\{endpoints['host']}\{endpoints['share']}")
    tree.connect()
    return conn, session, tree


def _leased_open(tree: Any, path: str, key: bytes, disposition: int) -> Any:
    """An open asking for an RWH lease (v2); fails unless the server grants one."""
    from smbprotocol.create_contexts import (
        CreateContextName,
        SMB2CreateContextRequest,
        SMB2CreateRequestLeaseV2,
        SMB2CreateResponseLeaseV2,
    )
    from smbprotocol.open import CreateOptions, FileAttributes, ImpersonationLevel, Open

    lease = SMB2CreateRequestLeaseV2()
    lease["lease_key"] = key
    lease["lease_state"] = 0x07
    lease["parent_lease_key"] = b"\x00" * 16
    lease["epoch"] = b"\x00\x00"
    ctx = SMB2CreateContextRequest()
    ctx["buffer_name"] = CreateContextName.SMB2_CREATE_REQUEST_LEASE_V2
    ctx["buffer_data"] = lease
    f = Open(tree, path)
    answers = f.create(
        ImpersonationLevel.Impersonation,
        0x0012019F,  # read, write, attributes
        FileAttributes.FILE_ATTRIBUTE_NORMAL,
        0x07,
        disposition,
        CreateOptions.FILE_NON_DIRECTORY_FILE,
        create_contexts=[ctx],
        oplock_level=0xFF,
    )
    leases = [a for a in answers or [] if isinstance(a, SMB2CreateResponseLeaseV2)]
    if not leases:
        raise RuntimeError("no lease granted: is the server's lease support on?")
    if leases[0]["lease_state"].get_value() & 0x07 != 0x07:
        # Both servers grant RWH to a lone client; anything less is not the workload.
        raise RuntimeError(f"lease granted {leases[0]['lease_state'].get_value():#x}, not RWH")
    return f


def _query_basic(f: Any) -> None:
    """QUERY_INFO FileBasicInformation on an open (smbprotocol's message types)."""
    from smbprotocol.file_info import FileBasicInformation
    from smbprotocol.open import SMB2QueryInfoRequest, SMB2QueryInfoResponse

    req = SMB2QueryInfoRequest()
    req["info_type"] = FileBasicInformation.INFO_TYPE
    req["file_info_class"] = FileBasicInformation.INFO_CLASS
    req["file_id"] = f.file_id
    req["output_buffer_length"] = 40
    sent = f.connection.send(req, f.tree_connect.session.session_id, f.tree_connect.tree_connect_id)
    resp = SMB2QueryInfoResponse()
    resp.unpack(f.connection.receive(sent)["data"].get_value())


def small_files_leases(endpoints: dict[str, Any], scratch: Path) -> dict[str, float]:
    """
    Over one smbprotocol session: LEASE_FILES files created with an RWH
    lease, written (4 KiB) and closed; then each opened again with a lease
    and its FileBasicInformation queried. Both sides grant the leases.
    """
    import hashlib

    from smbprotocol.open import CreateDisposition

    data = os.urandom(SMALL_SIZE)
    conn, session, tree = _lease_session(endpoints)
    d = f"leases-{scratch.name}"
    try:
        names = [f"{d}-f{i:04d}" for i in range(LEASE_FILES)]

        def key(name: str) -> bytes:
            return hashlib.md5(name.encode()).digest()  # noqa: S324 - a lease key, not security

        def create() -> float:
            t0 = time.perf_counter()
            for name in names:
                f = _leased_open(tree, name, key(name), CreateDisposition.FILE_CREATE)
                f.write(data, 0)
                f.close()
            return time.perf_counter() - t0

        def stat() -> float:
            t0 = time.perf_counter()
            for name in names:
                f = _leased_open(tree, name, key(name), CreateDisposition.FILE_OPEN)
                _query_basic(f)
                f.close()
            return time.perf_counter() - t0

        wall_c, cpu_c = _measured(endpoints, create)
        wall_s, cpu_s = _measured(endpoints, stat)
        from smbprotocol.open import CreateOptions, FileAttributes, ImpersonationLevel, Open

        for name in names:
            f = Open(tree, name)
            f.create(
                ImpersonationLevel.Impersonation,
                0x00010000,  # DELETE
                FileAttributes.FILE_ATTRIBUTE_NORMAL,
                0x07,
                CreateDisposition.FILE_OPEN,
                CreateOptions.FILE_NON_DIRECTORY_FILE | CreateOptions.FILE_DELETE_ON_CLOSE,
            )
            f.close()
    finally:
        conn.disconnect()
    return {
        "creates/s": LEASE_FILES / wall_c,
        "stats/s": LEASE_FILES / wall_s,
        "server CPU us/create": cpu_c * 1e6 / LEASE_FILES,
        "server CPU us/stat": cpu_s * 1e6 / LEASE_FILES,
    }


register(
    Workload(
        name="smb.small_files_leases",
        protocol="smb",
        metrics=(
            Metric("creates/s", "files/s"),
            Metric("stats/s", "files/s"),
            Metric("server CPU us/create", "us", higher_is_better=False),
            Metric("server CPU us/stat", "us", higher_is_better=False),
        ),
        run=small_files_leases,
        description=(
            f"{LEASE_FILES} x 4 KiB files created with an RWH lease, then opened with one and "
            "stat'ed (smbprotocol, one session)"
        ),
    )
)
