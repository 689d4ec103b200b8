"""
``python -m bench.soak [--minutes M] [--connections N]``: the soak and abuse
workload of issue 19 (not a unit test, not a benchmark with a peer).

One gateway (``cfs-gateway start``, NFS+S3+SMB, the embedded backend, short
idle timeouts so descriptors come back within the run) under mixed load from
N well-behaved connections (NFSv3 READ/WRITE/GETATTR over raw RPC, S3
PUT/GET over keep-alive HTTP with SigV4, SMB write/read with smbprotocol),
beside a steady stream of hostile clients: non-readers of every protocol
(bench/abuse.py), idle connections, half-sent messages, and a stream of
malformed frames. The hostile clients are one slot per kind, all filled from
the start; one slot at a time is renewed (its clients close, new ones of the
same kind connect), every kind once per --round seconds, so the number of
hostile clients present never changes. The issue asks for "a stream of
malformed frames" and non-reading, idle and half-sent clients beside the
load; the first version replaced them all at once each minute, which made
the load come and go in bursts and RSS with it: a measurement of the bursts,
not of whether the gateway's memory wanders under a given load.

Every --sample-every seconds (5) it samples the gateway's RSS and open
descriptors (--samples FILE also writes each sample with the memory budget in
use, gateway_memory_budget_bytes, and the seconds since the renewal cycle
began: RSS per phase of the load); at the end it prints RSS at start (after
the warm-up), peak and end, the descriptors at the start and after everyone
left, the well-behaved clients' operations and errors, and every log line at
error level or above.

Targets (issue 19): RSS flat within ±10 % after warm-up and below 512 MiB,
descriptors back to the baseline, no error-level line caused by clients.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import abuse
from bench.targets import Gateway

EXTRA = """
backend: {idle_fd_secs: 10}
nfs: {idle_timeout_secs: 20, partial_record_timeout_secs: 10}
smb: {idle_timeout_secs: 20, setup_timeout_secs: 10}
s3: {idle_timeout_secs: 20, header_timeout_secs: 10}
"""


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def budget_used_mib(admin_port: int) -> float | None:
    """The gateway's C{gateway_memory_budget_bytes{kind="used"}} (MiB), from /metrics."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("gateway_memory_budget_bytes") and 'kind="used"' in line:
                    return float(line.split()[-1]) / (1 << 20)
    except (OSError, ValueError):
        pass
    return None


def sockets(pid: int) -> int:
    """Open descriptors that are sockets (the rest: the store's files and its fd caches)."""
    n = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                n += 1
        except OSError:
            pass
    return n


class Stats:
    def __init__(self) -> None:
        self.ops = 0
        self.errors = 0
        self.lock = threading.Lock()

    def done(self, ok: bool) -> None:
        with self.lock:
            if ok:
                self.ops += 1
            else:
                self.errors += 1


def nfs_worker(ep: dict[str, Any], stop: threading.Event, st: Stats) -> None:
    try:
        s, fh = abuse.nfs_file(ep["host"], ep["nfs_port"], ep["mount_port"])
    except (OSError, AssertionError):
        st.done(False)
        return
    s.settimeout(60)
    x = 1000
    block = os.urandom(64 * 1024)
    while not stop.is_set():
        x += 1
        try:
            if x % 3 == 0:
                args = abuse.opaque(fh) + struct.pack(">QII", (x % 16) * len(block), len(block), 0)
                res = abuse.rpc(s, x, 7, args + abuse.opaque(block))
            elif x % 3 == 1:
                res = abuse.rpc(s, x, 6, abuse.opaque(fh) + struct.pack(">QI", 0, 128 * 1024))
            else:
                res = abuse.rpc(s, x, 1, abuse.opaque(fh))
            st.done(struct.unpack_from(">I", res)[0] == 0)
        except (OSError, ConnectionError):
            st.done(False)
            return
        stop.wait(0.2)
    s.close()


def s3_worker(ep: dict[str, Any], stop: threading.Event, st: Stats, n: int) -> None:
    host, port = ep["host"], ep["s3_port"]
    s = socket.create_connection((host, port))
    body = os.urandom(256 * 1024)
    s.settimeout(60)
    try:
        abuse.s3_request(s, host, port, "PUT", f"/soak{n % 4}")
        i = 0
        while not stop.is_set():
            i += 1
            key = f"/soak{n % 4}/o{n}-{i % 8}"
            st.done(abuse.s3_request(s, host, port, "PUT", key, body) == 200)
            st.done(abuse.s3_request(s, host, port, "GET", key) == 200)
            stop.wait(0.3)
    except (OSError, ValueError):
        st.done(False)
    finally:
        s.close()


def smb_worker(ep: dict[str, Any], stop: threading.Event, st: Stats) -> None:
    try:
        conn, sess, tree, f = abuse.smb_session(ep, file_size=256 * 1024)
        while not stop.is_set():
            f.write(os.urandom(64 * 1024), 0)
            data = f.read(0, 64 * 1024)
            st.done(len(data) == 64 * 1024)
            stop.wait(0.3)
        f.close()
        conn.disconnect()
    except Exception:
        st.done(False)


def nfs_non_reader(ep: dict[str, Any], rng: random.Random) -> abuse.Held:
    """300 pipelined NFSv3 READs of 1 MiB of a file, never read (fresh XIDs each time)."""
    host = ep["host"]
    first, fh = abuse.nfs_file(host, ep["nfs_port"], ep["mount_port"])
    first.close()
    s = abuse._connect(host, ep["nfs_port"])
    s.setblocking(False)
    args = abuse.opaque(fh) + struct.pack(">QI", 0, 1 << 20)
    base = rng.randrange(1 << 20, 1 << 31)
    for i in range(300):
        try:
            s.send(abuse._rpc_call(base + i, 100003, 3, 6, args))
        except BlockingIOError:
            break
    return abuse.Held([s])


def abuse_slots(ep: dict[str, Any], rng: random.Random) -> list[tuple[str, Any]]:
    """
    The hostile clients, one slot per kind: each slot's clients stay until
    the slot's turn comes again (see L{main}: one slot is replaced at a time).
    """
    host = ep["host"]
    slots: list[tuple[str, Any]] = [
        ("smb non-reader", lambda: abuse.smb_non_reader(ep, reads=1000)),
        ("nfs non-reader", lambda: nfs_non_reader(ep, rng)),
        (
            "s3 non-reader",
            lambda: abuse.s3_non_reader(
                ep, "/soak0/big", lambda: abuse.s3_sign(host, ep["s3_port"], "GET", "/soak0/big")
            ),
        ),
    ]
    for proto, port in (("smb", ep["smb_port"]), ("nfs", ep["nfs_port"]), ("s3", ep["s3_port"])):
        slots.append((f"{proto} idle x50", lambda port=port: abuse.idle(host, port, 50)))
        slots.append(
            (
                f"{proto} half-sent x20",
                lambda proto=proto, port=port: abuse.half_sent(host, port, proto, 20),
            )
        )
    return slots


def malformed_stream(ep: dict[str, Any], stop: threading.Event, counter: list[int]) -> None:
    rng = random.Random(19)
    ports = {"smb": ep["smb_port"], "nfs": ep["nfs_port"], "s3": ep["s3_port"]}
    while not stop.is_set():
        proto = rng.choice(list(ports))
        abuse.malformed(ep["host"], ports[proto], proto, rng)
        counter[0] += 1
        stop.wait(0.1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds before RSS start is taken")
    ap.add_argument(
        "--round",
        type=float,
        default=60.0,
        help="seconds in which every kind of hostile client is renewed once (one kind at a time)",
    )
    ap.add_argument(
        "--memory-report",
        choices=["off", "counts", "trace"],
        default="counts",
        help="have the gateway log where its memory is (claudefs_gateway.core.memreport) after "
        "the warm-up, every --report-every seconds and at the end; trace also runs tracemalloc "
        "(slower) to name the allocation sites that grew",
    )
    ap.add_argument("--report-every", type=float, default=300.0)
    ap.add_argument(
        "--samples",
        type=Path,
        default=None,
        help="write every sample (seconds, RSS MiB, descriptors, memory budget used MiB, "
        "seconds since the last abuse round began) to this file as JSON lines",
    )
    ap.add_argument("--sample-every", type=float, default=5.0)
    args = ap.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="cfs-soak-"))
    if args.memory_report != "off":
        os.environ["CFS_MEMORY_REPORT"] = "1" if args.memory_report == "counts" else "trace"
    with Gateway(scratch, ["nfs", "s3", "smb"], extra=EXTRA) as gw:
        ep = gw.endpoints
        pid = ep["pid"]
        fd_base = fds(pid)
        sock_base = sockets(pid)
        rss_boot = rss_mib(pid)
        # The object the S3 non-readers ask for.
        c = socket.create_connection((ep["host"], ep["s3_port"]))
        abuse.s3_request(c, ep["host"], ep["s3_port"], "PUT", "/soak0")
        big = abuse.s3_request(c, ep["host"], ep["s3_port"], "PUT", "/soak0/big", b"z" * (16 << 20))
        assert big == 200, big
        c.close()
        stop = threading.Event()
        st = Stats()
        threads = []
        n = args.connections
        for i in range(n):
            kind = i % 10
            if kind < 3:
                t = threading.Thread(target=nfs_worker, args=(ep, stop, st), daemon=True)
            elif kind < 7:
                t = threading.Thread(target=s3_worker, args=(ep, stop, st, i), daemon=True)
            else:
                t = threading.Thread(target=smb_worker, args=(ep, stop, st), daemon=True)
            t.start()
            threads.append(t)
        bad = [0]
        threading.Thread(target=malformed_stream, args=(ep, stop, bad), daemon=True).start()
        rng = random.Random(1)
        samples: list[tuple[float, float, int]] = []
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        # The hostile clients are a steady stream, not bursts: every slot is
        # filled from the start, and one slot at a time is replaced (its
        # clients leave, new ones of the same kind come), so each kind is
        # renewed once per --round and the number present never changes.
        slots = abuse_slots(ep, rng)
        held: list[abuse.Held | None] = [None] * len(slots)

        def renew(i: int) -> None:
            old, held[i] = held[i], None
            if old is not None:
                old.close()
            try:
                held[i] = slots[i][1]()
            except Exception as e:  # a refused abuser is fine; say so
                print(f"abuse slot {slots[i][0]} failed: {e!r}", flush=True)

        for i in range(len(slots)):
            renew(i)
        step = args.round / len(slots)
        next_swap = time.monotonic() + step
        swaps = 0
        next_sample = t0
        round_began = t0
        out = args.samples.open("w") if args.samples else None
        next_report = t0 + args.warmup

        def memory_report() -> None:
            if args.memory_report != "off":
                os.kill(pid, signal.SIGUSR2)

        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_report:
                memory_report()
                next_report = now + args.report_every
            if now >= next_swap:
                renew(swaps % len(slots))
                swaps += 1
                if swaps % len(slots) == 0:
                    round_began = now
                next_swap += step
            if now >= next_sample:
                samples.append((now - t0, rss_mib(pid), fds(pid)))
                if out is not None:
                    row = {
                        "t": round(now - t0, 1),
                        "rss": round(samples[-1][1], 1),
                        "fds": samples[-1][2],
                        "budget": budget_used_mib(ep["admin_port"]),
                        "in_round": round(now - round_began, 1),
                        "ops": st.ops,
                    }
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                print(
                    f"t={now - t0:6.0f}s rss={samples[-1][1]:7.1f} MiB fds={samples[-1][2]:5d} "
                    f"ops={st.ops} errors={st.errors} malformed={bad[0]} "
                    f"renewed={swaps}",
                    flush=True,
                )
                next_sample += args.sample_every
            stop.wait(max(min(next_swap, next_sample, end) - time.monotonic(), 0.05))
        stop.set()
        for h in held:
            if h is not None:
                h.close()
        deadline = time.monotonic() + 30
        for t in threads:
            t.join(timeout=max(deadline - time.monotonic(), 0.1))
        # Everyone left: wait for the idle and half-open timeouts (20 s + 10 %).
        threading.Event().wait(30)
        fd_end = fds(pid)
        sock_end = sockets(pid)
        rss_end = rss_mib(pid)
        memory_report()
        threading.Event().wait(10)
        warm = [s for s in samples if s[0] >= args.warmup] or samples
        rss_start = warm[0][1]
        rss_peak = max(s[1] for s in samples)
        steady = [s[1] for s in warm]
        errors = []
        warns = 0
        reports = []
        for line in (scratch / "gateway.log").read_text(errors="replace").splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            level = (
                str(ev.get("log_level", {}).get("name", ""))
                if isinstance(ev.get("log_level"), dict)
                else str(ev.get("log_level", ""))
            )
            if str(ev.get("log_format", "")).startswith("memory report"):
                reports.append(ev.get("report"))
            if level in ("error", "critical"):
                errors.append(line[:400])
            elif level == "warn":
                warns += 1
        report = {
            "minutes": args.minutes,
            "connections": n,
            "abuse_rounds": swaps // len(slots),
            "abuse_renewals": swaps,
            "malformed_connections": bad[0],
            "ops": st.ops,
            "client_errors": st.errors,
            "rss_boot_mib": round(rss_boot, 1),
            "rss_start_mib": round(rss_start, 1),
            "rss_peak_mib": round(rss_peak, 1),
            "rss_steady_min_max_mib": [round(min(steady), 1), round(max(steady), 1)],
            "rss_end_mib": round(rss_end, 1),
            "fds_baseline": fd_base,
            "fds_peak": max(s[2] for s in samples),
            "fds_end": fd_end,
            "sockets_baseline": sock_base,
            "sockets_end": sock_end,
            "warn_lines": warns,
            "error_lines": len(errors),
        }
        print(json.dumps(report, indent=2))
        for r in reports:
            print("MEMORY REPORT:", json.dumps(r, default=str))
        for e in errors[:50]:
            print("ERROR LINE:", e)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
