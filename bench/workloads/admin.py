"""Admin API workloads: the health endpoint a load balancer polls."""

from __future__ import annotations

import http.client
import time
from pathlib import Path
from typing import Any

from bench.stats import Metric
from bench.workloads import Workload, register

REQUESTS = 2000


def health_requests(
    endpoints: dict[str, Any], scratch: Path, n: int = REQUESTS
) -> dict[str, float]:
    """Sequential GET /health on one keep-alive connection (http.client)."""
    conn = http.client.HTTPConnection(endpoints["host"], endpoints["admin_port"], timeout=30)
    latencies = []
    start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", "/health")
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"/health answered {resp.status}")
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    conn.close()
    latencies.sort()
    return {
        "req/s": n / elapsed,
        "p50": latencies[len(latencies) // 2] * 1000,
        "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


register(
    Workload(
        name="admin.health",
        protocol="admin",
        metrics=(
            Metric("req/s", "requests/s"),
            Metric("p50", "ms", higher_is_better=False),
            Metric("p99", "ms", higher_is_better=False),
        ),
        run=health_requests,
        description="GET /health over one keep-alive connection",
    )
)
