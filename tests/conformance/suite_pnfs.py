"""
pNFS with the Linux kernel client: a gateway on ``backend: remote`` as
metadata server (``nfs.pnfs.enabled``), a meta server and two data servers
on this machine, each data server with its NFSv3 listener; the kernel
client (Debian's, under QEMU, ``../shared/tools/kernel-nfs-client.sh``)
mounts with ``vers=4.1`` and runs the script's steps (64 MiB written and
read back, listing, renames, removal). The guest sees this machine as
10.0.2.2, so the gateway advertises the data servers there.

Besides the script's steps (``v4.1/<step>``), this driver checks where the
bytes went:

``pnfs/layoutget``
    the guest's mountstats show LAYOUTGETs (its per-op READ count is no
    evidence either way: the flexfiles client counts the data servers'
    READs under the mount too);
``pnfs/ds-write``, ``pnfs/ds-read``
    the data servers' own counters (``gateway_pnfs_ds_bytes``) grew by at
    least the file's size in each direction;
``pnfs/mds-data``
    the gateway's NFSv4 READ and WRITE counts stayed near zero (the data
    did not go through it).

Then the script runs again (``kill/v4.1/<step>``) while one data server is
killed (SIGKILL) once 16 MiB of the write reached it and started again on
the same directory and ports two seconds later: the client re-lays out or
falls back to I/O through the gateway, and the readback's md5 shows no
byte was lost.

Mirrors: a second namespace keeps two copies of each stripe
(``cfs-gateway meta --mirrors 2``) on two more data servers.
``mirror/v4.1/<step>`` runs the script, and ``mirror/every-copy`` checks each
data server received the whole file (the client wrote every mirror).
``mirror-kill/v4.1/<step>`` runs it again with one of them killed mid-write
and restarted: the client reports the failing server, gets layouts without
it, the copy it misses is marked stale (``mirror-kill/stale``) and
re-silvered once the server is back (``mirror-kill/resilvered``: the
gateway's ``gateway_mirror_stale_copies`` back at 0).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from typing import Any

from tests.conformance import servers
from tests.conformance.framework import Context, Results, Suite
from tests.conformance.suite_kernel_nfs import script

SIZE_MIB = int(os.environ.get("CFS_PNFS_SIZE_MIB", "64"))

CONFIG = """
exports:
  - path: /export
    root_squash: false
    dir_mode: 0777
"""


def _mds_ops(admin: int, op: str) -> float:
    return servers.metric(admin, "gateway_requests_total", f'protocol="nfs4",op="{op}"')


def _ds_bytes(d: servers.Server, direction: str) -> float:
    return servers.metric(d.ports["admin"], "gateway_pnfs_ds_bytes", f'direction="{direction}"')


class Killer:
    """Kills data server C{ds[0]} once 16 MiB of a write reached it; restarts it 2 s later."""

    def __init__(self, ctx: Context, ds: list[servers.Server]) -> None:
        self.ctx, self.ds = ctx, ds
        self.base = _ds_bytes(ds[0], "write")
        self.done = threading.Event()
        self.restarted: servers.Server | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        victim = self.ds[0]
        while not self.done.is_set():
            try:
                if _ds_bytes(victim, "write") - self.base >= 16 << 20:
                    break
            except OSError:
                pass
            self.done.wait(0.05)
        else:
            return
        self.ctx.log("killing a data server mid-write")
        victim.stop(signal.SIGKILL)
        threading.Event().wait(2)  # the crash lasts a moment
        self.restarted = victim.restart_killed()
        self.ds[0] = self.restarted
        self.ctx.log("data server restarted")


def _kernel(
    ctx: Context,
    meta: servers.Server,
    prefix: str,
    results: dict[str, str],
    killer: Killer | None = None,
    after: Any = None,
    during: Any = None,
) -> str:
    """The kernel client's script against a fresh gateway on C{meta}; its output."""
    with ctx.gateway(
        CONFIG + servers.remote_config(meta),
        backend="remote",
        nfs="pnfs: {enabled: true, advertise_host: 10.0.2.2, probe_interval_secs: 1}",
    ) as gw:
        argv = [
            "bash",
            str(script()),
            "--versions",
            "4.1",
            "--nfs-port",
            str(gw.port("nfs")),
            "--mount-port",
            str(gw.port("mount")),
            "--size-mib",
            str(SIZE_MIB),
            "--timeout",
            "900",
        ]
        ctx.log(" ".join(argv))
        if killer is not None:
            killer.thread.start()
        stop = during(gw) if during is not None else None
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=1200)
        if stop is not None:
            stop()
        if killer is not None:
            killer.done.set()
            killer.thread.join(60)
        if after is not None:
            after(gw)
    out = proc.stdout
    name = prefix.rstrip("/") or "pnfs"
    (ctx.workdir / f"kernel-client-{name}.out").write_text(out + proc.stderr)
    found = False
    for m in re.finditer(r"^CFS-RESULT (\S+) (\S+) (ok|fail)(.*)$", out, re.M):
        scope, step, outcome, detail = m.groups()
        results[f"{prefix}{scope}/{step}"] = "pass" if outcome == "ok" else "fail"
        ctx.log(f"{prefix}{scope}/{step} {outcome}{detail}")
        found = True
    if not found:
        raise RuntimeError(f"the kernel client reported no step: {proc.stderr[-1000:]}")
    return out


def run(ctx: Context) -> Results:
    results: dict[str, str] = {}
    size = SIZE_MIB << 20
    ds = [servers.start_data(ctx.workdir, name=f"data{i}") for i in range(2)]
    meta = servers.start_meta(ctx.workdir, [d.address for d in ds])
    try:
        before = {d: (_ds_bytes(d, "read"), _ds_bytes(d, "write")) for d in ds}
        mds: dict[str, float] = {}

        def count(gw: Any) -> None:
            mds["READ"] = _mds_ops(gw.port("admin"), "READ")
            mds["WRITE"] = _mds_ops(gw.port("admin"), "WRITE")

        out = _kernel(ctx, meta, "", results, after=count)
        written = sum(_ds_bytes(d, "write") - before[d][1] for d in ds)
        read = sum(_ds_bytes(d, "read") - before[d][0] for d in ds)
        per_ds = [int(_ds_bytes(d, "write") - before[d][1]) for d in ds]
        ctx.log(f"data servers: {written:.0f} bytes written ({per_ds} each), {read:.0f} read")
        ctx.log(f"gateway: NFSv4 READ {mds['READ']:.0f}, WRITE {mds['WRITE']:.0f}")
        m = re.search(r"LAYOUTGET=(\d+) READ-via-MDS=(\d+)", out)
        lg = int(m.group(1)) if m else 0
        ctx.log(
            f"guest: LAYOUTGET {lg}, READ (data servers and gateway) {m.group(2) if m else '?'}"
        )
        results["pnfs/layoutget"] = "pass" if lg > 0 else "fail"
        results["pnfs/ds-write"] = "pass" if written >= size else "fail"
        results["pnfs/ds-read"] = "pass" if read >= size else "fail"
        results["pnfs/ds-striped"] = "pass" if all(w > 0 for w in per_ds) else "fail"
        results["pnfs/mds-data"] = "pass" if mds["READ"] + mds["WRITE"] < 16 else "fail"
        if os.environ.get("CFS_PNFS_KILL", "1") == "1":
            killer = Killer(ctx, ds)
            _kernel(ctx, meta, "kill/", results, killer)
            results["kill/restarted"] = "pass" if killer.restarted else "fail"
    finally:
        meta.stop()
        for d in ds:
            d.stop()
    if os.environ.get("CFS_PNFS_MIRRORS", "1") == "1":
        _mirrors(ctx, results)
    return results


def _mirrors(ctx: Context, results: dict[str, str]) -> None:
    size = SIZE_MIB << 20
    ds = [servers.start_data(ctx.workdir, name=f"mirror{i}") for i in range(2)]
    meta = servers.start_meta(ctx.workdir, [d.address for d in ds], mirrors=2)
    try:
        before = [_ds_bytes(d, "write") for d in ds]
        _kernel(ctx, meta, "mirror/", results)
        per_ds = [int(_ds_bytes(d, "write") - b) for d, b in zip(ds, before, strict=True)]
        ctx.log(f"mirror: bytes written per data server {per_ds}")
        results["mirror/every-copy"] = "pass" if all(w >= size for w in per_ds) else "fail"
        killer = Killer(ctx, ds)
        seen: dict[str, float] = {"max": 0.0, "end": -1.0}

        def sample(gw: Any) -> Any:
            """Watch the gateway's stale copies while the client runs."""
            admin = gw.port("admin")
            stop = threading.Event()

            def loop() -> None:
                while not stop.is_set():
                    try:
                        got = servers.metric(admin, "gateway_mirror_stale_copies")
                        seen["max"] = max(seen["max"], got)
                    except OSError:
                        pass
                    stop.wait(0.2)

            t = threading.Thread(target=loop, daemon=True)
            t.start()
            return lambda: (stop.set(), t.join(10))

        def watch(gw: Any) -> None:
            admin = gw.port("admin")
            # Re-silvering runs every 5 s once the server answers; give it a minute.
            for _ in range(600):
                left = servers.metric(admin, "gateway_mirror_stale_copies")
                seen["end"] = left
                if left == 0:
                    break
                threading.Event().wait(0.1)

        _kernel(ctx, meta, "mirror-kill/", results, killer, after=watch, during=sample)
        ctx.log(f"mirror-kill: at most {seen['max']:.0f} stale copies, {seen['end']:.0f} left")
        results["mirror-kill/stale"] = "pass" if seen["max"] > 0 else "fail"
        results["mirror-kill/resilvered"] = "pass" if seen["end"] == 0 else "fail"
    finally:
        meta.stop()
        for d in ds:
            d.stop()


SUITE = Suite("pnfs", run, apt=("qemu-system-x86", "busybox-static", "kmod", "cpio"))
