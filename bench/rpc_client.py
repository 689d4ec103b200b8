"""
GETATTR round trips through the remote backend, one at a time.

    python -m bench.rpc_client --address HOST:PORT|unix:/path --ops N [--server-pid P]

Prints one JSON object: p50 and p99 in microseconds, calls per second, and
the CPU time per call of this client process (pool, breaker, codec,
framing, its reactor) and, given the server's pid, of the server process,
both over the timed calls only. Runs in its own process with its own
reactor (the bench runner is synchronous).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from claudefs_gateway.core.reactor import install

install()  # the reactor a gateway worker runs on (core/reactor.py)

from twisted.internet import defer, reactor  # noqa: E402

from bench.serverstat import process_cpu  # noqa: E402
from claudefs_gateway.backend.remote.client import NodeSpec, RemoteBackend  # noqa: E402
from claudefs_gateway.core import config as cfg  # noqa: E402


async def measure(address: str, ops: int, server_pid: int = 0) -> dict[str, Any]:
    c = cfg.default_config()
    backend = RemoteBackend([NodeSpec(address)], reactor, c.connection_pool, c.circuit_breaker)
    await backend.open()
    try:
        root = (await backend.root()).ino
        for _ in range(500):
            await backend.getattr(root)
        lat = []
        server0 = process_cpu(server_pid) if server_pid else 0.0
        cpu0 = time.process_time()
        start = time.perf_counter()
        for _ in range(ops):
            t0 = time.perf_counter()
            await backend.getattr(root)
            lat.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        server = process_cpu(server_pid) - server0 if server_pid else 0.0
    finally:
        await backend.close()
    lat.sort()
    out = {
        "p50_us": lat[len(lat) // 2] * 1e6,
        "p99_us": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6,
        "calls/s": ops / elapsed,
        "client_cpu_us": cpu / ops * 1e6,
    }
    if server_pid:
        out["server_cpu_us"] = server / ops * 1e6
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--address", required=True)
    p.add_argument("--ops", type=int, default=5000)
    p.add_argument("--server-pid", type=int, default=0, help="the server's pid, for its CPU")
    args = p.parse_args()
    out: dict[str, Any] = {}

    def run() -> None:
        d = defer.Deferred.fromCoroutine(measure(args.address, args.ops, args.server_pid))
        d.addCallback(out.update)
        d.addErrback(lambda f: out.update(error=f.getErrorMessage()))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    sys.exit(1 if "error" in out else 0)


if __name__ == "__main__":
    main()
