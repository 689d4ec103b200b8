"""
S3 workloads with boto3 (PEERS.md: SeaweedFS is the peer).

- ``s3.large``: one object PUT then GET with one boto3 client, streaming (no
  copy of the object in the client's memory): MB/s each way.
- ``s3.multipart``: boto3's managed upload (``upload_fileobj``, as ``aws s3 cp``):
  8 MiB parts, 8 in flight at once; MB/s. ``CFS_BENCH_S3_MULTIPART_SIZE``
  changes the size (256 MiB).
- ``s3.small``: 4 KiB PUT/GET/DELETE from several client processes (boto3 costs
  1.5-3 ms of client CPU a request, so one process cannot load a server):
  operations/s and p99 latency.
- ``s3.stream5g``: a 5 GiB object in and out while the server's peak resident
  memory is sampled (``VmHWM`` from /proc, reset before each phase): MB/s and
  peak RSS growth. ``CFS_BENCH_S3_STREAM_SIZE`` changes the size.

The clients send ``UNSIGNED-PAYLOAD`` without additional checksums (both
targets alike), so what is measured is the server, not the client hashing.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import time
from pathlib import Path
from typing import Any

from bench.serverstat import process_cpu
from bench.stats import Metric
from bench.workloads import Workload, register

BUCKET = "bench"
LARGE = int(os.environ.get("CFS_BENCH_S3_LARGE_SIZE", str(512 * 1024 * 1024)))
STREAM = int(os.environ.get("CFS_BENCH_S3_STREAM_SIZE", str(5 * 1024**3)))
SMALL = 4096
PROCS = int(os.environ.get("CFS_BENCH_S3_PROCS", "4"))
OPS_PER_PROC = int(os.environ.get("CFS_BENCH_S3_OPS", "300"))
MULTIPART = int(os.environ.get("CFS_BENCH_S3_MULTIPART_SIZE", str(256 * 1024 * 1024)))
MULTIPART_THREADS = 8


def client(endpoints: dict[str, Any], pool: int = 4) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=f"http://{endpoints['host']}:{endpoints['s3_port']}",
        aws_access_key_id=endpoints["access_key"],
        aws_secret_access_key=endpoints["secret_key"],
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path", "payload_signing_enabled": False},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 1},
            max_pool_connections=pool,
        ),
    )


class PatternFile(io.RawIOBase):
    """A seekable file of C{size} bytes made on the fly (1 MiB pattern blocks)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pos = 0
        self.block = bytes(range(256)) * 4096

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, min(self.size, base + offset))
        return self.pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self.pos
        n = min(n, self.size - self.pos, len(self.block))
        within = self.pos % len(self.block)
        if within + n > len(self.block):
            n = len(self.block) - within
        self.pos += n
        return self.block[within : within + n]

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def ensure_bucket(endpoints: dict[str, Any], scratch: Path) -> None:
    s3 = client(endpoints)
    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass


def _put_get(s3: Any, key: str, size: int, during: Any = None) -> tuple[float, float]:
    t0 = time.perf_counter()
    s3.put_object(Bucket=BUCKET, Key=key, Body=PatternFile(size), ContentLength=size)
    put = time.perf_counter() - t0
    if during is not None:
        during("put")
    t0 = time.perf_counter()
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"]
    got = 0
    for chunk in body.iter_chunks(1024 * 1024):
        got += len(chunk)
    get = time.perf_counter() - t0
    if got != size:
        raise RuntimeError(f"GET returned {got} of {size} bytes")
    if during is not None:
        during("get")
    s3.delete_object(Bucket=BUCKET, Key=key)
    return put, get


def large(endpoints: dict[str, Any], scratch: Path) -> dict[str, float]:
    s3 = client(endpoints)
    put, get = _put_get(s3, f"large-{scratch.name}", LARGE)
    mb = LARGE / 1e6
    return {"put": mb / put, "get": mb / get}


def multipart(endpoints: dict[str, Any], scratch: Path) -> dict[str, float]:
    """boto3's managed upload (as ``aws s3 cp``): 8 MiB parts, 8 at once."""
    from boto3.s3.transfer import TransferConfig

    s3 = client(endpoints, pool=MULTIPART_THREADS)
    config = TransferConfig(
        multipart_threshold=8 * 1024 * 1024,
        multipart_chunksize=8 * 1024 * 1024,
        max_concurrency=MULTIPART_THREADS,
        use_threads=True,
    )
    key = f"multipart-{scratch.name}"
    t0 = time.perf_counter()
    # Buffered: s3transfer reads each part with one read(), which a raw stream may cut short.
    body = io.BufferedReader(PatternFile(MULTIPART), buffer_size=8 * 1024 * 1024)
    s3.upload_fileobj(body, BUCKET, key, Config=config)
    put = time.perf_counter() - t0
    s3.delete_object(Bucket=BUCKET, Key=key)
    return {"put": MULTIPART / 1e6 / put}


def _vm(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def stream5g(endpoints: dict[str, Any], scratch: Path) -> dict[str, float]:
    s3 = client(endpoints)
    pid = int(endpoints["pid"])
    marks: dict[str, int] = {}
    base = {"put": _vm(pid, "VmRSS")}
    _reset_peak(pid)

    def during(phase: str) -> None:
        marks[phase] = _vm(pid, "VmHWM") - base[phase]
        if phase == "put":
            base["get"] = _vm(pid, "VmRSS")
            _reset_peak(pid)

    put, get = _put_get(s3, f"stream-{scratch.name}", STREAM, during)
    mb = STREAM / 1e6
    return {
        "put": mb / put,
        "get": mb / get,
        "put_rss": marks["put"] / 2**20,
        "get_rss": marks["get"] / 2**20,
    }


def _small_worker(endpoints: dict[str, Any], tag: str, n: int) -> list[float]:
    s3 = client(endpoints)
    body = os.urandom(SMALL)
    lat = []
    for i in range(n):
        key = f"small/{tag}/{i}"
        for op in ("put", "get", "delete"):
            t0 = time.perf_counter()
            if op == "put":
                s3.put_object(Bucket=BUCKET, Key=key, Body=body)
            elif op == "get":
                s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            else:
                s3.delete_object(Bucket=BUCKET, Key=key)
            lat.append(time.perf_counter() - t0)
    return lat


def small(endpoints: dict[str, Any], scratch: Path) -> dict[str, float]:
    pid = endpoints.get("pid")
    with concurrent.futures.ProcessPoolExecutor(PROCS) as pool:
        # Start the client processes (and import boto3 in them) before the clock starts.
        list(pool.map(_warm, range(PROCS)))
        t0 = time.perf_counter()
        cpu0 = process_cpu(pid) if pid is not None else 0.0
        futures = [
            pool.submit(_small_worker, endpoints, f"{scratch.name}-{p}", OPS_PER_PROC)
            for p in range(PROCS)
        ]
        lat = sorted(x for f in futures for x in f.result())
        cpu = process_cpu(pid) - cpu0 if pid is not None else 0.0
    elapsed = time.perf_counter() - t0
    return {
        "ops/s": len(lat) / elapsed,
        "p99": lat[int(len(lat) * 0.99) - 1] * 1000,
        "server CPU us/op": cpu * 1e6 / len(lat),
    }


def _warm(_: int) -> None:
    import boto3  # noqa: F401


register(
    Workload(
        name="s3.large",
        protocol="s3",
        metrics=(Metric("put", "MB/s"), Metric("get", "MB/s")),
        run=large,
        prepare=ensure_bucket,
        description=f"boto3 PUT then GET of one {LARGE >> 20} MiB object, streaming",
    )
)
register(
    Workload(
        name="s3.multipart",
        protocol="s3",
        metrics=(Metric("put", "MB/s"),),
        run=multipart,
        prepare=ensure_bucket,
        description=f"boto3 managed upload of {MULTIPART >> 20} MiB: 8 MiB parts, 8 at once",
    )
)
register(
    Workload(
        name="s3.small",
        protocol="s3",
        metrics=(
            Metric("ops/s", "ops/s"),
            Metric("p99", "ms", higher_is_better=False),
            Metric("server CPU us/op", "us", higher_is_better=False),
        ),
        run=small,
        prepare=ensure_bucket,
        description=f"4 KiB PUT/GET/DELETE from {PROCS} boto3 processes",
    )
)
register(
    Workload(
        name="s3.stream5g",
        protocol="s3",
        metrics=(
            Metric("put", "MB/s"),
            Metric("get", "MB/s"),
            Metric("put_rss", "MiB peak RSS growth", higher_is_better=False),
            Metric("get_rss", "MiB peak RSS growth", higher_is_better=False),
        ),
        run=stream5g,
        prepare=ensure_bucket,
        description=f"{STREAM / 2**30:.0f} GiB object in and out, server peak RSS sampled",
    )
)
