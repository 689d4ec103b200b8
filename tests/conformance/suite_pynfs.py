"""
pynfs, the NFSv4.1 conformance suite knfsd and Ganesha are judged by
(``../shared/suites/pynfs``, run unmodified from a copy in the scratch dir).

It is built with Debian's ``/usr/bin/python3`` (its ``setup.py`` generates the
XDR code with python3-ply) and runs ``nfs4.1/testserver.py
127.0.0.1:PORT/export/pynfs41 --maketree all`` against a gateway whose
``/export`` the test user may write. Every test the ``all`` flag selects is
one result, by its code (``EID1``, ``SEQ6``...); a selected test that did not
run (a dependency failed) counts as a skip. The gateway runs a 20-second
lease: pynfs sleeps a lease and more in its expiry tests, so this keeps its
wall time near two and a half minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from tests.conformance.framework import Context, Results, Suite, suites_dir

CONFIG = """
exports:
  - path: /export
    root_squash: false
    dir_mode: 0777
"""
LEASE_SECS = 20
TIMEOUT = 1800


def _restore_links(tree: Path) -> None:
    """
    The snapshot keeps a few symbolic links as small files holding their
    target (``../nfs4.1/xdrdef``): make them links again in the copy.
    """
    for path in list(tree.rglob("*")):
        if not path.is_file() or path.is_symlink() or path.stat().st_size > 200:
            continue
        try:
            text = path.read_text().strip()
        except (UnicodeDecodeError, OSError):
            continue
        if not text.startswith(("../", "./")) or "\n" in text:
            continue
        if (path.parent / text).exists():
            path.unlink()
            path.symlink_to(text)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = "/usr/bin:/bin:" + env.get("PATH", "")
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    return env


def build(ctx: Context) -> Path:
    """Copy the snapshot into the scratch dir and build it; the nfs4.1 directory."""
    src = suites_dir() / "pynfs"
    if not src.is_dir():
        raise RuntimeError(f"pynfs snapshot not found at {src}")
    dst = ctx.workdir / "pynfs"
    shutil.copytree(src, dst, symlinks=True)
    dst.chmod(dst.stat().st_mode | 0o200)
    for p in dst.rglob("*"):
        if not p.is_symlink():
            p.chmod(p.stat().st_mode | 0o200)
    _restore_links(dst)
    out = subprocess.run(
        ["/usr/bin/python3", "setup.py", "build"],
        cwd=dst,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    (ctx.workdir / "build.log").write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise RuntimeError(f"pynfs build failed: {out.stderr[-1000:]}")
    return dst / "nfs4.1"


def selected(nfs41: Path) -> list[str]:
    """The codes of the tests the ``all`` flag selects."""
    out = subprocess.run(
        ["/usr/bin/python3", "testserver.py", "--showcodesflags"],
        cwd=nfs41,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    codes = []
    for line in out.stdout.splitlines():
        code, _, flags = line.partition(" FLAGS: ")
        if "all" in [f.strip() for f in flags.split(",")]:
            codes.append(code.strip())
    if not codes:
        raise RuntimeError(f"pynfs listed no tests: {out.stderr[-1000:]}")
    return codes


def run(ctx: Context) -> Results:
    nfs41 = build(ctx)
    codes = selected(nfs41)
    report = ctx.workdir / "pynfs.json"
    with ctx.gateway(CONFIG, nfs=f"v4: {{lease_secs: {LEASE_SECS}}}") as gw:
        argv = [
            "/usr/bin/python3",
            "testserver.py",
            f"127.0.0.1:{gw.port('nfs')}/export/pynfs41",
            "--maketree",
            f"--json={report}",
            "all",
        ]
        ctx.log(" ".join(argv))
        proc = subprocess.run(
            argv, cwd=nfs41, env=_env(), capture_output=True, text=True, timeout=TIMEOUT
        )
    (ctx.workdir / "pynfs.out").write_text(proc.stdout + proc.stderr)
    tail = [line for line in proc.stdout.splitlines() if line.startswith("Of those:")]
    ctx.log(tail[-1] if tail else proc.stderr[-500:])
    if not report.exists():
        raise RuntimeError(f"pynfs wrote no report: {proc.stderr[-1000:]}")
    doc = json.loads(report.read_text())
    results: dict[str, str] = {code: "skip" for code in codes}
    for t in doc.get("testcase", []):
        code = t.get("code")
        if code not in results or t.get("skipped"):
            continue
        results[code] = "fail" if "failure" in t else "pass"
    return results


SUITE = Suite("pynfs", run, apt=("python3-ply", "python3-gssapi", "libkrb5-dev", "swig"))
