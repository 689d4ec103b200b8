"""
Ceph's s3-tests (``../shared/suites/s3-tests``), the suite every S3 server is
judged by: ``test_s3.py`` and ``test_headers.py`` with ``-m 'not fails_on_rgw'``.

The suite runs unmodified from a copy in the scratch directory, in a virtualenv
of its own (its ``requirements.txt`` plus pytest-timeout), kept between runs
under ``$CFS_CONFORMANCE_DIR/cfs-conformance/_cache`` (or the temp dir) and
rebuilt when the requirements change. ``s3tests.conf`` is generated: the
gateway's S3 listener, and the suite's four identities (main, alt, tenant, iam)
as gateway users, their S3 canonical ids and names as the gateway shows them.
Each test is one result ``test_s3::<name>`` (or ``test_headers::<name>``),
read from pytest's JUnit XML.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from claudefs_gateway.s3.owners import canonical_id
from tests.conformance.framework import Context, Results, Suite, suites_dir

#: The suite's identities: section, gateway user name, uid, access key, secret key.
IDENTITIES = [
    ("s3 main", "s3main", 2001, "AKIAS3TESTSMAIN00001", "main/secret/key/for/s3tests/000000000000"),
    ("s3 alt", "s3alt", 2002, "AKIAS3TESTSALT000002", "alt/secret/key/for/s3tests/0000000000000"),
    (
        "s3 tenant",
        "s3tenant",
        2003,
        "AKIAS3TESTSTENANT003",
        "tenant/secret/key/for/s3tests/000000000",
    ),
    ("iam", "s3iam", 2004, "AKIAS3TESTSIAM000004", "iam/secret/key/for/s3tests/0000000000000"),
]
#: The suite's own unused root accounts (its configuration reader needs the sections).
UNUSED = [
    ("iam root", "AKIAS3TESTSROOT00005", "root/secret/key/unused"),
    ("iam alt root", "AKIAS3TESTSROOT00006", "altroot/secret/key/unused"),
]

MODULES = ("s3tests/functional/test_s3.py", "s3tests/functional/test_headers.py")
#: Seconds in a lifecycle day for the run (the gateway's s3.lifecycle_day_secs).
LC_DAY = 3
PYTEST_TIMEOUT = int(os.environ.get("CFS_S3TESTS_TIMEOUT", "2400"))


def gateway_users() -> str:
    lines = ["users:"]
    for _, name, uid, key, secret in IDENTITIES:
        lines.append(
            f'  - {{name: {name}, uid: {uid}, gid: {uid}, s3_access_key: {key}, s3_secret_key: "{secret}"}}'
        )
    return "\n".join(lines) + "\n"


def conf(port: int) -> str:
    out = [
        "[DEFAULT]",
        "host = 127.0.0.1",
        f"port = {port}",
        "is_secure = False",
        "ssl_verify = False",
        "",
        "[fixtures]",
        "bucket prefix = cfs-{random}-",
        "iam name prefix = s3-tests-",
        "iam path prefix = /s3-tests/",
        "",
    ]
    for section, name, uid, key, secret in IDENTITIES:
        out += [
            f"[{section}]",
            f"display_name = {name}",
            f"user_id = {canonical_id(uid)}",
            f"email = {name}@example.com",
            f"access_key = {key}",
            f"secret_key = {secret}",
        ]
        if section == "s3 main":
            out.append("api_name = ")
            # A lifecycle "day" of the suite's rules, in seconds (RGW's debug
            # interval); the gateway is started with the same day length.
            out.append(f"lc_debug_interval = {LC_DAY}")
        if section == "s3 tenant":
            out.append("tenant = testx")
        out.append("")
    for section, key, secret in UNUSED:
        out += [
            f"[{section}]",
            f"access_key = {key}",
            f"secret_key = {secret}",
            "user_id = RGW00000000000000000",
            "email = root@example.com",
            "",
        ]
    return "\n".join(out)


def venv(src: Path, log) -> Path:  # type: ignore[no-untyped-def]
    """The suite's virtualenv, built once per requirements and Python, kept between runs."""
    reqs = (src / "requirements.txt").read_bytes()
    tag = hashlib.sha256(reqs + sys.version.encode() + b"pytest-timeout").hexdigest()[:12]
    base = Path(os.environ.get("CFS_CONFORMANCE_DIR") or tempfile.gettempdir()) / "cfs-conformance"
    path = base / "_cache" / f"s3tests-venv-{tag}"
    py = path / "bin" / "python"
    if (path / ".complete").exists() and py.exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    log(f"building the s3-tests virtualenv in {path}")
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    subprocess.run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "-q",
            "-r",
            str(src / "requirements.txt"),
            "pytest-timeout",
        ],
        check=True,
    )
    (path / ".complete").write_text("ok\n")
    return path


def parse_junit(path: Path) -> dict[str, str]:
    results: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        module = (case.get("classname") or "").rsplit(".", 1)[-1]
        test = f"{module}::{case.get('name')}"
        outcome = "pass"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "fail"
            elif child.tag == "skipped":
                outcome = "skip" if outcome == "pass" else outcome
        results[test] = outcome
    return results


def run(ctx: Context) -> Results:
    src = suites_dir() / "s3-tests"
    work = ctx.workdir / "s3-tests"
    shutil.copytree(src, work)
    for d in [work, *(p for p in work.rglob("*") if p.is_dir())]:
        d.chmod(0o755)  # the snapshot may be read-only; the copy gets s3tests.conf
    env_dir = venv(src, ctx.log)
    settings = (
        f"root: /s3, root_mode: 01777, lifecycle_interval_secs: 1, lifecycle_day_secs: {LC_DAY}"
    )
    with ctx.gateway(gateway_users(), s3=settings) as gw:
        port = gw.port("s3")
        (work / "s3tests.conf").write_text(conf(port))
        junit = ctx.workdir / "s3tests.xml"
        argv = [
            str(env_dir / "bin" / "python"),
            "-m",
            "pytest",
            *MODULES,
            "-m",
            "not fails_on_rgw",
            "--timeout=60",
            "-p",
            "no:cacheprovider",
            "-q",
            f"--junitxml={junit}",
        ]
        env = dict(
            os.environ,
            S3TEST_CONF=str(work / "s3tests.conf"),
            AWS_DEFAULT_REGION="us-east-1",
            PYTHONDONTWRITEBYTECODE="1",
        )
        for var in (
            "AWS_CA_BUNDLE",
            "AWS_PROFILE",
            "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE",
        ):
            env.pop(var, None)
        ctx.log("pytest " + " ".join(argv[3:]))
        proc = subprocess.run(
            argv, cwd=work, env=env, capture_output=True, text=True, timeout=PYTEST_TIMEOUT
        )
        (ctx.workdir / "pytest.out").write_text(proc.stdout + proc.stderr)
    tail = proc.stdout.strip().splitlines()
    ctx.log(tail[-1] if tail else proc.stderr[-500:])
    if not junit.exists():
        raise RuntimeError(f"s3-tests wrote no results: {proc.stderr[-1000:]}")
    results = parse_junit(junit)
    if not results:
        raise RuntimeError("s3-tests ran no test")
    return results


SUITE = Suite("s3tests", run)
