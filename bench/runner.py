"""
``python -m bench``: run named workloads against the gateway (and a peer).

    python -m bench --list
    python -m bench -w nfs.seq_write,nfs.seq_read --runs 5 --peer --json out.json
    python -m bench -w nfs.getattr_qd1 --profile

For each workload the gateway and (with --peer) the peer server of
``../shared/PEERS.md`` for that protocol run on loopback with fresh scratch
directories, and the runs interleave A B A B (shared machines are noisy, so the
ratio of one run's interleaved medians is what means something). Prints
median/min/max per metric and gateway/peer (> 1 = the gateway is better), and
writes the same as JSON. With --profile, py-spy samples the gateway over each
workload's timed runs: a flame graph (SVG), the collapsed stacks and a summary
of the top costs land beside the JSON (bench/profile.py).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import serverstat, targets
from bench.profile import Profiler
from bench.stats import Summary, ratio, table, to_json
from bench.workloads import Workload, load_all


def run_workload(
    w: Workload,
    gateway: targets.Target,
    peer: targets.Target | None,
    runs: int,
    scratch: Path,
    log: Callable[[str], None] = print,
    workers: targets.Target | None = None,
    profiler: Profiler | None = None,
    warmup: int = 0,
) -> list[dict[str, Any]]:
    """
    Interleaved runs of C{w}; one result row per metric. C{warmup} untimed
    runs per target come first (interleaved too). C{profiler} (on the
    gateway) samples from the first timed run to the last.
    """
    pairs = [(gateway, "gateway")] + ([(peer, "peer")] if peer is not None else [])
    if workers is not None:
        pairs.append((workers, "workers"))
    results: dict[str, list[dict[str, float]]] = {"gateway": [], "peer": [], "workers": []}
    for target, role in pairs:
        if w.prepare is not None:
            w.prepare(target.endpoints, scratch / f"{role}-prep")
    for i in range(warmup):
        for target, role in pairs:
            where = scratch / f"{role}-warmup-{i}"
            where.mkdir(parents=True, exist_ok=True)
            w.run(target.endpoints, where)
            log(f"  {w.name} warm-up {i + 1}/{warmup} {target.name}")
    if profiler is not None:
        profiler.start()
    try:
        for i in range(runs):
            for target, role in pairs:
                where = scratch / f"{role}-{i}"
                where.mkdir(parents=True, exist_ok=True)
                got = w.run(target.endpoints, where)
                log(
                    f"  {w.name} run {i + 1}/{runs} {target.name}: "
                    + ", ".join(f"{k}={v:.4g}" for k, v in got.items())
                )
                results[role].append(got)
    finally:
        if profiler is not None:
            text = profiler.stop()
            log(f"  profile: {profiler.stem}.svg")
            log("".join(f"    {line}\n" for line in text.splitlines()[:24]).rstrip())
    rows = []
    for m in w.metrics:
        g = [r[m.name] for r in results["gateway"]]
        row: dict[str, Any] = {
            "workload": w.name,
            "metric": m,
            "gateway": Summary.of(g),
            "gateway_runs": g,
        }
        if peer is not None:
            p = [r[m.name] for r in results["peer"]]
            row.update(peer_name=peer.name, peer=Summary.of(p), peer_runs=p)
            row["ratio"] = ratio(row["gateway"], row["peer"], m)
        if workers is not None:
            wr = [r[m.name] for r in results["workers"]]
            row.update(workers_name=workers.name, workers=Summary.of(wr), workers_runs=wr)
            row["workers_ratio"] = ratio(row["workers"], row["gateway"], m)
            if peer is not None:
                # Issue 12's comparison, same run: the workers against the peer.
                row["workers_peer_ratio"] = ratio(row["workers"], row["peer"], m)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    registry = load_all()
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-w", "--workloads", default="", help="comma-separated names (see --list)")
    p.add_argument("-n", "--runs", type=int, default=3, help="timed runs per target (default 3)")
    p.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed runs per target before the timed ones (default 1: the first run on a"
        " fresh server, or of a fresh process's memory, is slower for whichever target goes"
        " first)",
    )
    p.add_argument(
        "--peer", action="store_true", help="also run the PEERS.md peer for each protocol"
    )
    p.add_argument(
        "--json", type=Path, help="write results here (default bench/results/<time>.json)"
    )
    p.add_argument(
        "--scratch", type=Path, help="scratch directory (default: a fresh temporary one)"
    )
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument(
        "--config-extra",
        default="",
        metavar="YAML",
        help="configuration merged into the gateway's, e.g. "
        "'cache: {nfs_attr_cache: {max_entries: 0}}' (docs/tuning.rst measures keys this way)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="also run the gateway as `cfs-gateway start --workers N` (ratio: wN / single)",
    )
    p.add_argument(
        "--server-cpus",
        default=os.environ.get(serverstat.PIN_ENV, ""),
        metavar="LIST",
        help="confine every server under test (the gateway, the workers' whole tree, the peers)"
        " to these CPUs, as taskset -c takes them (e.g. 0); the parallel workloads check at each"
        f" phase that it held (default: ${serverstat.PIN_ENV}, else not confined)",
    )
    p.add_argument(
        "--client-cpus",
        default=os.environ.get(serverstat.CLIENT_PIN_ENV, ""),
        metavar="LIST",
        help="run the bench's client (the workloads, the client processes and nfs-cp they start)"
        " on these CPUs once the servers are up; with --server-cpus, client and server on one"
        f" core or on two (default: ${serverstat.CLIENT_PIN_ENV}, else not confined)",
    )
    p.add_argument("--list", action="store_true", help="list workloads and exit")
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy flame graph of the gateway per workload (beside the JSON results)",
    )
    p.add_argument(
        "--profile-rate",
        type=int,
        default=1000,
        help="with --profile, samples per second (default 1000)",
    )
    p.add_argument(
        "--profile-native",
        action="store_true",
        help="with --profile, also sample C frames (sqlite3, ssl, struct)",
    )
    p.add_argument(
        "--profile-gil",
        action="store_true",
        help="with --profile, sample only the thread holding the GIL (Python CPU, no syscalls)",
    )
    args = p.parse_args(argv)

    if args.list:
        for name, w in sorted(registry.items()):
            print(f"{name:28} {w.protocol:6} {w.description}")
        return 0
    names = [n for n in args.workloads.split(",") if n]
    unknown = [n for n in names if n not in registry]
    if not names or unknown:
        p.error(
            f"unknown workloads: {', '.join(unknown)}"
            if unknown
            else "name workloads with -w (see --list)"
        )
    chosen = [registry[n] for n in names]
    pinned: frozenset[int] | None = None
    if args.server_cpus.strip():
        try:
            pinned = serverstat.parse_cpus(args.server_cpus)
        except ValueError as e:
            p.error(f"--server-cpus: {e}")
        # The targets' Popen and the parallel workloads' checks read it.
        os.environ[serverstat.PIN_ENV] = ",".join(str(c) for c in sorted(pinned))
    else:
        os.environ.pop(serverstat.PIN_ENV, None)
    client_cpus: frozenset[int] | None = None
    if args.client_cpus.strip():
        try:
            client_cpus = serverstat.parse_cpus(args.client_cpus)
        except ValueError as e:
            p.error(f"--client-cpus: {e}")

    when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    out = args.json or Path(__file__).parent / "results" / (when.replace(":", "") + ".json")
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="cfs-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    protocols = sorted({w.protocol for w in chosen if w.protocol not in ("admin", "rpc")})
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    gateway = targets.Gateway(scratch / "gateway", protocols, args.config_extra)
    started: list[targets.Target] = []
    stack = contextlib.ExitStack()
    try:
        gateway.start()
        started.append(gateway)
        multi: targets.Target | None = None
        if args.workers:
            multi = targets.Gateway(
                scratch / "gateway-workers", protocols, args.config_extra, workers=args.workers
            )
            multi.start()
            started.append(multi)
        peers: dict[str, targets.Target] = {}
        if args.peer:
            for proto in protocols:
                peer = targets.PEERS[proto](scratch / f"peer-{proto}")
                peer.start()
                started.append(peer)
                peers[proto] = peer
        if pinned is not None:
            for t in started:
                tasks = serverstat.check_pinned(t.endpoints["pid"], pinned)
                print(f"{t.name}: {tasks} threads, all on CPUs {sorted(pinned)}")
        if client_cpus is not None:
            print(f"client: on CPUs {sorted(client_cpus)}")
        stack.enter_context(serverstat.client_pinned(client_cpus))
        for w in chosen:
            print(f"{w.name}: {w.description}")
            profiler = None
            if args.profile:
                profiler = Profiler(
                    gateway.endpoints["pid"],
                    out.with_name(f"{out.stem}-{w.name}"),
                    rate=args.profile_rate,
                    native=args.profile_native,
                    gil=args.profile_gil,
                )
            rows += run_workload(
                w,
                gateway,
                peers.get(w.protocol),
                args.runs,
                scratch / w.name,
                workers=multi if w.protocol != "rpc" else None,
                profiler=profiler,
                warmup=args.warmup,
            )
    finally:
        stack.close()
        for t in reversed(started):
            t.stop()
        if not args.keep and args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)

    load_after = os.getloadavg()
    print()
    print(table(rows))
    print(
        "\nload average (1, 5, 15 min): before "
        + ", ".join(f"{x:.2f}" for x in load_before)
        + "; after "
        + ", ".join(f"{x:.2f}" for x in load_after)
    )
    meta = {
        "when": when,
        "runs": args.runs,
        "warmup": args.warmup,
        "peer": args.peer,
        "command": " ".join(["python -m bench", *(argv or sys.argv[1:])]),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "server_cpus": sorted(pinned) if pinned is not None else None,
        "client_cpus": sorted(client_cpus) if client_cpus is not None else None,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "python": platform.python_version(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(to_json(rows, meta), indent=2) + "\n")
    print(f"\nresults written to {out}")
    return 0
