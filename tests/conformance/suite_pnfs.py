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
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading

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


def run(ctx: Context) -> Results:
    ds = [servers.start_data(ctx.workdir, name=f"data{i}") for i in range(2)]
    meta = servers.start_meta(ctx.workdir, [d.address for d in ds])
    results: dict[str, str] = {}
    try:
        before = {d: (_ds_bytes(d, "read"), _ds_bytes(d, "write")) for d in ds}
        with ctx.gateway(
            CONFIG + servers.remote_config(meta),
            backend="remote",
            nfs="pnfs: {enabled: true, advertise_host: 10.0.2.2}",
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
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=1200)
            admin = gw.port("admin")
            mds_read = _mds_ops(admin, "READ")
            mds_write = _mds_ops(admin, "WRITE")
        out = proc.stdout
        (ctx.workdir / "kernel-client.out").write_text(out + proc.stderr)
        for m in re.finditer(r"^CFS-RESULT (\S+) (\S+) (ok|fail)(.*)$", out, re.M):
            scope, step, outcome, detail = m.groups()
            results[f"{scope}/{step}"] = "pass" if outcome == "ok" else "fail"
            ctx.log(f"{scope}/{step} {outcome}{detail}")
        if not results:
            raise RuntimeError(f"the kernel client reported no step: {proc.stderr[-1000:]}")
        size = SIZE_MIB << 20
        written = sum(_ds_bytes(d, "write") - before[d][1] for d in ds)
        read = sum(_ds_bytes(d, "read") - before[d][0] for d in ds)
        per_ds = [int(_ds_bytes(d, "write") - before[d][1]) for d in ds]
        ctx.log(f"data servers: {written} bytes written ({per_ds} each), {read} read")
        ctx.log(f"gateway: NFSv4 READ {mds_read:.0f}, WRITE {mds_write:.0f}")
        m = re.search(r"LAYOUTGET=(\d+) READ-via-MDS=(\d+)", out)
        lg = int(m.group(1)) if m else 0
        via = int(m.group(2)) if m else -1
        ctx.log(f"guest: LAYOUTGET {lg}, READ (data servers and gateway) {via}")
        results["pnfs/layoutget"] = "pass" if lg > 0 else "fail"
        results["pnfs/ds-write"] = "pass" if written >= size else "fail"
        results["pnfs/ds-read"] = "pass" if read >= size else "fail"
        results["pnfs/ds-striped"] = "pass" if all(w > 0 for w in per_ds) else "fail"
        results["pnfs/mds-data"] = "pass" if mds_read + mds_write < 16 else "fail"
        if os.environ.get("CFS_PNFS_KILL", "1") == "1":
            ds[0] = _killed_run(ctx, ds, meta, results)
    finally:
        meta.stop()
        for d in ds:
            d.stop()
    return results


def _killed_run(
    ctx: Context, ds: list[servers.Server], meta: servers.Server, results: dict[str, str]
) -> servers.Server:
    """The script again, with data server 0 killed and restarted during the write."""
    victim = ds[0]
    base = _ds_bytes(victim, "write")
    box: dict[str, servers.Server] = {}
    done = threading.Event()

    def killer() -> None:
        while not done.is_set():
            try:
                if _ds_bytes(victim, "write") - base >= 16 << 20:
                    break
            except OSError:
                pass
            done.wait(0.05)
        else:
            return
        ctx.log("killing data server 0 mid-write")
        victim.stop(signal.SIGKILL)
        threading.Event().wait(2)  # the crash lasts a moment
        box["new"] = victim.restart_killed()
        ctx.log("data server 0 restarted")

    t = threading.Thread(target=killer, daemon=True)
    with ctx.gateway(
        CONFIG + servers.remote_config(meta),
        backend="remote",
        nfs="pnfs: {enabled: true, advertise_host: 10.0.2.2, probe_interval_secs: 1}",
    ) as gw:
        t.start()
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
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=1200)
        done.set()
        t.join(60)
    (ctx.workdir / "kernel-client-kill.out").write_text(proc.stdout + proc.stderr)
    for m in re.finditer(r"^CFS-RESULT (\S+) (\S+) (ok|fail)(.*)$", proc.stdout, re.M):
        scope, step, outcome, detail = m.groups()
        results[f"kill/{scope}/{step}"] = "pass" if outcome == "ok" else "fail"
        ctx.log(f"kill/{scope}/{step} {outcome}{detail}")
    results["kill/restarted"] = "pass" if "new" in box else "fail"
    return box.get("new", victim)


def _ds_bytes(d: servers.Server, direction: str) -> float:
    return servers.metric(d.ports["admin"], "gateway_pnfs_ds_bytes", f'direction="{direction}"')


SUITE = Suite("pnfs", run, apt=("qemu-system-x86", "busybox-static", "kmod", "cpio"))
