"""
The Linux kernel NFS client (Debian's kernel under QEMU, ``../shared/tools/kernel-nfs-client.sh``).

Each version mounts the export, writes and reads back (after dropping the
guest's caches) a file, lists, makes a directory, renames, removes and
unmounts; every step is one test ``v<version>/<step>``.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.conformance.framework import REPO, Context, Results, Suite

#: The NFS versions the gateway serves (4.0 is not: it answers NFS4ERR_MINOR_VERS_MISMATCH).
VERSIONS = os.environ.get("CFS_KCLIENT_VERSIONS", "3 4.1 4.2")

CONFIG = """
exports:
  - path: /export
    root_squash: false
    dir_mode: 0777
"""


def script() -> Path:
    env = os.environ.get("CFS_KCLIENT_SCRIPT")
    return Path(env) if env else REPO.parent / "shared" / "tools" / "kernel-nfs-client.sh"


def run(ctx: Context) -> Results:
    with ctx.gateway(CONFIG) as gw:
        argv = [
            "bash",
            str(script()),
            "--versions",
            VERSIONS,
            "--nfs-port",
            str(gw.port("nfs")),
            "--mount-port",
            str(gw.port("mount")),
            "--size-mib",
            "32",
            "--timeout",
            "600",
        ]
        ctx.log(" ".join(argv))
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    out = proc.stdout
    (ctx.workdir / "kernel-client.out").write_text(out + proc.stderr)
    results: dict[str, str] = {}
    for m in re.finditer(r"^CFS-RESULT (\S+) (\S+) (ok|fail)", out, re.M):
        scope, step, outcome = m.groups()
        results[f"{scope}/{step}"] = "pass" if outcome == "ok" else "fail"
    ctx.log(out.strip().splitlines()[-1] if out.strip() else proc.stderr[-500:])
    if not results:
        raise RuntimeError(f"the kernel client reported no step: {proc.stderr[-1000:]}")
    return results


SUITE = Suite("kernel_nfs", run, apt=("qemu-system-x86", "busybox-static", "kmod", "cpio"))
