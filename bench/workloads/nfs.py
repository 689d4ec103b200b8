"""
NFSv3 workloads, driven by libnfs: ``nfs-cp`` (libnfs-utils) for sequential
copies, the ``libnfs`` PyPI binding (``pip install -e '.[bench]'``; it builds
against Debian's libnfs-dev) for synchronous calls at queue depth 1, and
libnfs's asynchronous API through ctypes for queue depth 16 (the binding has
no asynchronous calls). Debian's fio has no NFS engine.

Sizes can be shrunk for a quick look with ``CFS_BENCH_NFS_SEQ_MB`` (default
1024) and ``CFS_BENCH_NFS_OPS`` (default 5000 random reads or GETATTRs).
The ``*_parallel`` workloads run ``CFS_BENCH_NFS_CLIENTS`` (default 4)
client processes at once (bench/parallel.py).

Every workload also reports the server's CPU time per operation (or per MiB)
over its timed part, from the server process's CPU clock
(bench/serverstat.py): on a shared machine the rates swing with the load, the
CPU an operation costs much less.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import random
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.parallel import per_op, run_phases, sync
from bench.serverstat import thread_wait, tree_cpu, tree_wait
from bench.stats import Metric
from bench.workloads import Workload, register

SEQ_MB = int(os.environ.get("CFS_BENCH_NFS_SEQ_MB", "1024"))
OPS = int(os.environ.get("CFS_BENCH_NFS_OPS", "5000"))
RAND_FILE_MB = 64
SMALL_FILES = int(os.environ.get("CFS_BENCH_NFS_FILES", "500"))


def url(e: dict[str, Any], path: str = "") -> str:
    return (
        f"nfs://{e['host']}{e['export']}{path}"
        f"?version=3&nfsport={e['nfs_port']}&mountport={e['mount_port']}"
    )


def _nfs_cp(src: str, dst: str) -> None:
    exe = shutil.which("nfs-cp")
    if exe is None:
        raise RuntimeError("nfs-cp is not installed (apt-get install libnfs-utils)")
    done = subprocess.run([exe, src, dst], capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"nfs-cp {src} {dst}: {done.stderr.decode()[-500:]}")


def _binding() -> Any:
    try:
        import libnfs  # type: ignore[import-not-found]
    except ImportError as e:  # pragma: no cover - a bench dependency
        raise RuntimeError("the libnfs binding is missing: pip install -e '.[bench]'") from e
    return libnfs


def _percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    p50 = samples[len(samples) // 2]
    p99 = samples[max(0, int(len(samples) * 0.99) - 1)]
    return p50 * 1000, p99 * 1000


class _CPU:
    """
    The server's CPU seconds between L{start} and L{stop} (0 if its pid is
    unknown): its process tree's, so with C{--workers} the workers', the meta
    and the data server's CPU count too.
    """

    def __init__(self, e: dict[str, Any]) -> None:
        self.pid: int | None = e.get("pid")
        self.t0 = 0.0
        self.used = 0.0

    def start(self) -> None:
        if self.pid is not None:
            self.t0 = tree_cpu(self.pid)

    def stop(self) -> float:
        if self.pid is not None:
            self.used = tree_cpu(self.pid) - self.t0
        return self.used


def _source(scratch: Path, mib: int = SEQ_MB) -> Path:
    """A local file of C{mib} MiB (random blocks), made once per bench run."""
    src = scratch.parent / f"seq-{mib}MiB.bin"
    if not src.exists() or src.stat().st_size != mib << 20:
        src.parent.mkdir(parents=True, exist_ok=True)
        block = os.urandom(16 << 20)
        with open(src, "wb") as f:
            for i in range(mib // 16):
                f.write(block[i % 7 :] + block[: i % 7])
            f.write(block[: (mib % 16) << 20])
    return src


# -- sequential ------------------------------------------------------------------


def _unlink(e: dict[str, Any], name: str) -> None:
    nfs = _binding().NFS(url(e))
    nfs.unlink(name)


def _settle(e: dict[str, Any]) -> None:
    """
    A namespace change made and undone, so work a server does after replying
    to earlier calls (the gateway deletes a removed file's data after the
    REMOVE's reply) is over before the CPU clock starts.
    """
    nfs = _binding().NFS(url(e))
    name = f"/settle-{time.monotonic_ns()}"
    nfs.mkdir(name)
    nfs.rmdir(name)


def seq_write(e: dict[str, Any], scratch: Path) -> dict[str, float]:
    """nfs-cp a 1 GiB local file to a fresh name on the server."""
    src = _source(scratch)
    name = f"/seqw-{time.monotonic_ns()}.bin"
    _settle(e)
    cpu = _CPU(e)
    cpu.start()
    start = time.perf_counter()
    _nfs_cp(str(src), url(e, name))
    elapsed = time.perf_counter() - start
    cpu.stop()
    _unlink(e, name)
    size = src.stat().st_size
    return {"MB/s": size / elapsed / 1e6, "server CPU ms/MiB": cpu.used * 1e3 / (size / 2**20)}


def seq_read_prepare(e: dict[str, Any], scratch: Path) -> None:
    src = _source(scratch)
    try:
        _unlink(e, "/seqr.bin")
    except Exception:
        pass
    _nfs_cp(str(src), url(e, "/seqr.bin"))


def seq_read(e: dict[str, Any], scratch: Path) -> dict[str, float]:
    """nfs-cp the 1 GiB file from the server to a local file."""
    dst = scratch / "seqr.out"
    cpu = _CPU(e)
    cpu.start()
    start = time.perf_counter()
    _nfs_cp(url(e, "/seqr.bin"), str(dst))
    elapsed = time.perf_counter() - start
    cpu.stop()
    size = dst.stat().st_size
    dst.unlink()
    if size != SEQ_MB << 20:
        raise RuntimeError(f"read {size} bytes, expected {SEQ_MB << 20}")
    return {"MB/s": size / elapsed / 1e6, "server CPU ms/MiB": cpu.used * 1e3 / (size / 2**20)}


# -- random reads and GETATTR at queue depth 1 (libnfs binding) ----------------------


def rand_prepare(e: dict[str, Any], scratch: Path) -> None:
    scratch.mkdir(parents=True, exist_ok=True)
    local = scratch / "rand.bin"
    local.write_bytes(os.urandom(RAND_FILE_MB << 20))
    try:
        _unlink(e, "/rand.bin")
    except Exception:
        pass
    _nfs_cp(str(local), url(e, "/rand.bin"))
    local.unlink()


def _qd1(e: dict[str, Any], one: Any) -> dict[str, float]:
    """
    C{one(i)} for i in range(OPS), timed, with its latencies and the CPU each
    side spent: at queue depth 1 the client and the server take turns, so a
    round trip is the client's CPU, the server's, and the time neither ran
    (waiting for a CPU, being woken), reported as "off-CPU" (docs/bench.rst
    "Queue depth one: where the round trip goes"). Work a server does after
    its reply, while the client runs on the other core, is in its CPU and not
    in the round trip, so "off-CPU" can be a little low, never high.
    "server wait" and "client wait" are the time each side was runnable and
    had no CPU (schedstat's run delay; docs/bench.rst "The client's CPU per
    call"): on cores of their own, what the scheduler added to the round
    trip; on a shared core they also hold the time one side waited while
    the other ran, so they are not a part of "off-CPU".
    """
    lat = []
    cpu = _CPU(e)
    pid = e.get("pid")
    cpu.start()
    server_wait0 = tree_wait(pid) if pid is not None else 0.0
    client_wait0 = thread_wait()
    client0 = time.process_time()
    start = time.perf_counter()
    for i in range(OPS):
        t0 = time.perf_counter()
        one(i)
        lat.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    client = time.process_time() - client0
    client_wait = thread_wait() - client_wait0
    server_wait = tree_wait(pid) - server_wait0 if pid is not None else 0.0
    cpu.stop()
    p50, p99 = _percentiles(lat)
    return {
        "ops/s": OPS / elapsed,
        "p50": p50,
        "p99": p99,
        "server CPU us/op": cpu.used * 1e6 / OPS,
        "client CPU us/op": client * 1e6 / OPS,
        "off-CPU us/op": (elapsed - client - cpu.used) * 1e6 / OPS,
        "server wait us/op": server_wait * 1e6 / OPS,
        "client wait us/op": client_wait * 1e6 / OPS,
    }


def rand_read_qd1(e: dict[str, Any], scratch: Path) -> dict[str, float]:
    """4 KiB reads at random 4 KiB-aligned offsets, one at a time."""
    lib = _binding()
    nfs = lib.NFS(url(e))
    fh = nfs.open("/rand.bin", "rb")
    raw, handle = nfs._nfs, fh._nfsfh
    buf = bytearray(4096)
    rnd = random.Random(1)
    blocks = (RAND_FILE_MB << 20) // 4096
    offsets = [rnd.randrange(blocks) * 4096 for _ in range(OPS)]
    for off in offsets[:200]:  # warm up
        lib.nfs_pread(raw, handle, off, 4096, buf)

    def one(i: int) -> None:
        n = lib.nfs_pread(raw, handle, offsets[i], 4096, buf)
        if n != 4096:
            raise RuntimeError(f"short read: {n}")

    got = _qd1(e, one)
    fh.close()
    got["IOPS"] = got.pop("ops/s")
    return got


def getattr_qd1(e: dict[str, Any], scratch: Path) -> dict[str, float]:
    """GETATTR (libnfs fstat of an open file), one at a time."""
    lib = _binding()
    nfs = lib.NFS(url(e))
    fh = nfs.open("/rand.bin", "rb")
    raw, handle = nfs._nfs, fh._nfsfh
    st = lib.nfs_stat_64()
    for _ in range(200):
        lib.nfs_fstat64(raw, handle, st)

    def one(i: int) -> None:
        rc = lib.nfs_fstat64(raw, handle, st)
        if rc != 0:
            raise RuntimeError(f"fstat failed: {rc}")

    got = _qd1(e, one)
    fh.close()
    return got


# -- random reads at queue depth 16 (libnfs asynchronous API through ctypes) ---------

_CB = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)


def _libnfs() -> Any:
    lib = ctypes.CDLL(ctypes.util.find_library("nfs") or "libnfs.so.13")
    lib.nfs_init_context.restype = ctypes.c_void_p
    lib.nfs_parse_url_dir.restype = ctypes.c_void_p
    lib.nfs_parse_url_dir.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nfs_mount.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
    lib.nfs_open.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p]
    lib.nfs_pread_async.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_uint64,
        ctypes.c_uint64,
        _CB,
        ctypes.c_void_p,
    ]
    lib.nfs_get_fd.argtypes = [ctypes.c_void_p]
    lib.nfs_which_events.argtypes = [ctypes.c_void_p]
    lib.nfs_service.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.nfs_get_error.restype = ctypes.c_char_p
    lib.nfs_get_error.argtypes = [ctypes.c_void_p]
    lib.nfs_close.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.nfs_destroy_context.argtypes = [ctypes.c_void_p]
    return lib


class _Url(ctypes.Structure):
    _fields_ = [("server", ctypes.c_char_p), ("path", ctypes.c_char_p), ("file", ctypes.c_char_p)]


def rand_read_qd16(e: dict[str, Any], scratch: Path, depth: int = 16) -> dict[str, float]:
    """4 KiB random reads with 16 outstanding on one connection (libnfs async API)."""
    lib = _libnfs()
    nfs = lib.nfs_init_context()
    u = ctypes.cast(lib.nfs_parse_url_dir(nfs, url(e).encode()), ctypes.POINTER(_Url)).contents
    if lib.nfs_mount(nfs, u.server, u.path) != 0:
        raise RuntimeError(lib.nfs_get_error(nfs).decode())
    fh = ctypes.c_void_p()
    if lib.nfs_open(nfs, b"/rand.bin", os.O_RDONLY, ctypes.byref(fh)) != 0:
        raise RuntimeError(lib.nfs_get_error(nfs).decode())
    rnd = random.Random(2)
    blocks = (RAND_FILE_MB << 20) // 4096
    total = OPS * 2
    started: dict[int, float] = {}
    lat: list[float] = []
    state = {"issued": 0, "done": 0, "errors": 0}

    def issue() -> None:
        i = state["issued"]
        state["issued"] += 1
        started[i] = time.perf_counter()
        rc = lib.nfs_pread_async(nfs, fh, rnd.randrange(blocks) * 4096, 4096, callback, i)
        if rc != 0:
            raise RuntimeError(lib.nfs_get_error(nfs).decode())

    def on_done(err: int, ctx: Any, data: Any, private: Any) -> None:
        i = private or 0
        lat.append(time.perf_counter() - started.pop(i))
        state["done"] += 1
        if err != 4096:
            state["errors"] += 1
        if state["issued"] < total:
            issue()

    callback = _CB(on_done)
    cpu = _CPU(e)
    cpu.start()
    begin = time.perf_counter()
    for _ in range(depth):
        issue()
    fd = lib.nfs_get_fd(nfs)
    poller = select.poll()
    while state["done"] < total:
        poller.register(fd, lib.nfs_which_events(nfs))
        events = poller.poll(10_000)
        if not events:
            raise RuntimeError("no progress for 10 s")
        if lib.nfs_service(nfs, events[0][1]) < 0:
            raise RuntimeError(lib.nfs_get_error(nfs).decode())
    elapsed = time.perf_counter() - begin
    cpu.stop()
    lib.nfs_close(nfs, fh)
    lib.nfs_destroy_context(nfs)
    if state["errors"]:
        raise RuntimeError(f"{state['errors']} reads failed")
    p50, p99 = _percentiles(lat)
    return {
        "IOPS": total / elapsed,
        "p50": p50,
        "p99": p99,
        "server CPU us/op": cpu.used * 1e6 / total,
    }


# -- small files ------------------------------------------------------------------------


def _create_small(lib: Any, raw: Any, path: str, data: bytearray) -> None:
    """One small file as a client makes it: create, a 4 KiB write, close (libnfs)."""
    fh = lib.new_NFSFileHandle()
    rc = lib.nfs_create(raw, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, fh)
    if rc != 0:
        raise RuntimeError(f"create failed: {rc}")
    h = lib.NFSFileHandle_value(fh)
    lib.nfs_write(raw, h, 4096, data)
    lib.nfs_close(raw, h)


def small_files(e: dict[str, Any], scratch: Path) -> dict[str, float]:
    """Create + write 4 KiB + close N files, list the directory, unlink them all."""
    lib = _binding()
    nfs = lib.NFS(url(e))
    d = f"/small-{time.monotonic_ns()}"
    nfs.mkdir(d)
    data = bytearray(os.urandom(4096))
    raw = nfs._nfs
    cpu = _CPU(e)
    cpu.start()
    start = time.perf_counter()
    for i in range(SMALL_FILES):
        _create_small(lib, raw, f"{d}/f{i:05d}", data)
    created = time.perf_counter() - start
    cpu_created = cpu.stop()
    cpu.start()
    start = time.perf_counter()
    names = nfs.listdir(d)
    listed = time.perf_counter() - start
    cpu_listed = cpu.stop()
    if len([n for n in names if n not in (".", "..")]) != SMALL_FILES:
        raise RuntimeError(f"listed {len(names)} names")
    cpu.start()
    start = time.perf_counter()
    for i in range(SMALL_FILES):
        nfs.unlink(f"{d}/f{i:05d}")
    removed = time.perf_counter() - start
    cpu_removed = cpu.stop()
    nfs.rmdir(d)
    return {
        "create/s": SMALL_FILES / created,
        "list entries/s": SMALL_FILES / listed,
        "unlink/s": SMALL_FILES / removed,
        "server CPU us/create": cpu_created * 1e6 / SMALL_FILES,
        "server CPU us/entry": cpu_listed * 1e6 / SMALL_FILES,
        "server CPU us/unlink": cpu_removed * 1e6 / SMALL_FILES,
    }


PARALLEL = int(os.environ.get("CFS_BENCH_NFS_CLIENTS", "4"))


def _small_files_client(i: int, e: dict[str, Any], tag: str) -> None:
    """One client of small_files_parallel (a forked process): its own directory."""
    lib = _binding()
    nfs = lib.NFS(url(e))
    raw = nfs._nfs
    d = f"/small-{tag}-{i}"
    nfs.mkdir(d)
    data = bytearray(os.urandom(4096))
    sync()
    for j in range(SMALL_FILES):
        _create_small(lib, raw, f"{d}/f{j:05d}", data)
    sync()
    for j in range(SMALL_FILES):
        nfs.unlink(f"{d}/f{j:05d}")
    sync()
    nfs.rmdir(d)


def small_files_parallel(e: dict[str, Any], scratch: Path) -> dict[str, float]:
    """
    nfs.small_files' creates and unlinks from PARALLEL client processes at
    once, each on its own connection and in its own directory (with
    --workers the kernel spreads the connections over the workers), the
    phases in step: aggregate files/s and the server's CPU per file.
    """
    _settle(e)
    phases, _ = run_phases(
        PARALLEL, 2, _small_files_client, (e, str(time.monotonic_ns())), pid=e.get("pid")
    )
    return per_op(
        phases,
        SMALL_FILES * PARALLEL,
        ("create/s", "server CPU us/create", "unlink/s", "server CPU us/unlink"),
    )


def _seq_write_client(i: int, e: dict[str, Any], src: str, tag: str) -> None:
    """One client of seq_write_parallel (a forked process): nfs-cp to its own name."""
    name = f"/seqw-{tag}-{i}.bin"
    sync()
    _nfs_cp(src, url(e, name))
    sync()
    _unlink(e, name)


def seq_write_parallel(e: dict[str, Any], scratch: Path) -> dict[str, float]:
    """
    PARALLEL nfs-cp processes at once, each copying SEQ_MB / PARALLEL MiB
    to a file of its own (the same bytes in all as nfs.seq_write): aggregate
    MB/s from the first byte to the last copy's COMMIT.
    """
    src = _source(scratch, SEQ_MB // PARALLEL)
    _settle(e)
    (phase,), _ = run_phases(
        PARALLEL,
        1,
        _seq_write_client,
        (e, str(src), str(time.monotonic_ns())),
        pid=e.get("pid"),
    )
    size = src.stat().st_size * PARALLEL
    return {
        "MB/s": size / phase.wall / 1e6,
        "server CPU ms/MiB": phase.cpu * 1e3 / (size / 2**20),
        "clients CPU ms/MiB": phase.clients * 1e3 / (size / 2**20),
    }


HIGHER = True
LOWER = False

_CPU_MIB = Metric("server CPU ms/MiB", "ms", higher_is_better=False)
_CPU_OP = Metric("server CPU us/op", "us", higher_is_better=False)
# Queue depth 1: the round trip split into both sides' CPU and the rest (see _qd1).
_QD1 = (
    _CPU_OP,
    Metric("client CPU us/op", "us", higher_is_better=False),
    Metric("off-CPU us/op", "us", higher_is_better=False, compared=False),
    # Each side's time runnable on a run queue (schedstat's run delay): a
    # server that had the call and no CPU. No ratio: near zero when idle.
    Metric("server wait us/op", "us", higher_is_better=False, compared=False),
    Metric("client wait us/op", "us", higher_is_better=False, compared=False),
)

register(
    Workload(
        "nfs.seq_write",
        "nfs",
        (Metric("MB/s", "MB/s"), _CPU_MIB),
        seq_write,
        description=f"nfs-cp of a {SEQ_MB} MiB local file to the server",
    )
)
register(
    Workload(
        "nfs.seq_read",
        "nfs",
        (Metric("MB/s", "MB/s"), _CPU_MIB),
        seq_read,
        prepare=seq_read_prepare,
        description=f"nfs-cp of a {SEQ_MB} MiB file from the server",
    )
)
_LAT = (Metric("p50", "ms", higher_is_better=False), Metric("p99", "ms", higher_is_better=False))
register(
    Workload(
        "nfs.rand_read_qd1",
        "nfs",
        (Metric("IOPS", "ops/s"), *_LAT, *_QD1),
        rand_read_qd1,
        prepare=rand_prepare,
        description="4 KiB random reads, queue depth 1 (libnfs binding)",
    )
)
register(
    Workload(
        "nfs.rand_read_qd16",
        "nfs",
        (Metric("IOPS", "ops/s"), *_LAT, _CPU_OP),
        rand_read_qd16,
        prepare=rand_prepare,
        description="4 KiB random reads, queue depth 16 (libnfs async API)",
    )
)
register(
    Workload(
        "nfs.getattr_qd1",
        "nfs",
        (Metric("ops/s", "ops/s"), *_LAT, *_QD1),
        getattr_qd1,
        prepare=rand_prepare,
        description="GETATTR of an open file, queue depth 1 (libnfs binding)",
    )
)
register(
    Workload(
        "nfs.small_files_parallel",
        "nfs",
        (
            Metric("create/s", "files/s"),
            Metric("unlink/s", "files/s"),
            Metric("server CPU us/create", "us", higher_is_better=False),
            Metric("server CPU us/unlink", "us", higher_is_better=False),
            Metric("clients CPU us/create", "us", higher_is_better=False),
            Metric("clients CPU us/unlink", "us", higher_is_better=False),
        ),
        small_files_parallel,
        description=f"nfs.small_files from {PARALLEL} clients at once (aggregate files/s)",
    )
)
register(
    Workload(
        "nfs.seq_write_parallel",
        "nfs",
        (
            Metric("MB/s", "MB/s"),
            _CPU_MIB,
            Metric("clients CPU ms/MiB", "ms", higher_is_better=False),
        ),
        seq_write_parallel,
        description=(
            f"{PARALLEL} nfs-cp at once, each of {SEQ_MB // PARALLEL} MiB to its own file"
            " (aggregate MB/s)"
        ),
    )
)
register(
    Workload(
        "nfs.small_files",
        "nfs",
        (
            Metric("create/s", "files/s"),
            Metric("list entries/s", "entries/s"),
            Metric("unlink/s", "files/s"),
            Metric("server CPU us/create", "us", higher_is_better=False),
            Metric("server CPU us/entry", "us", higher_is_better=False),
            Metric("server CPU us/unlink", "us", higher_is_better=False),
        ),
        small_files,
        description=f"create+write 4 KiB+close {SMALL_FILES} files, list, unlink (libnfs binding)",
    )
)
