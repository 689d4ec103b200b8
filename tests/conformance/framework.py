"""
What every conformance suite driver shares: a gateway subprocess, the
expected-failure lists and the tally.

A suite is a module ``tests/conformance/suite_<name>.py`` with a module-level
``SUITE = Suite(...)``. Its C{run} callable gets a L{Context} and returns a
mapping of test id to ``"pass"``, ``"fail"`` or ``"skip"``. Every result that
is not a pass must be listed, with its reason, in ``expected/<name>.txt``;
otherwise it counts as a failure. A listed test that passes is reported (so
the list can shrink) but not counted against the run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
EXPECTED = HERE / "expected"

Results = Mapping[str, str]


def suites_dir() -> Path:
    """Where the unmodified third-party suite snapshots are (``../shared/suites``)."""
    env = os.environ.get("CFS_SUITES")
    return Path(env) if env else REPO.parent / "shared" / "suites"


def load_expected(name: str) -> dict[str, str]:
    """C{test id -> reason} from C{expected/<name>.txt} (``id  # reason``; ``#`` lines are comments)."""
    path = EXPECTED / f"{name}.txt"
    out: dict[str, str] = {}
    if not path.exists():
        return out
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        test, _, reason = line.partition("#")
        out[test.strip()] = reason.strip()
    return out


@dataclass
class Tally:
    """One suite's outcome against its expected failures."""

    name: str
    passed: int = 0
    failed: list[str] = field(default_factory=list)
    expected: int = 0
    fixed: list[str] = field(default_factory=list)
    error: str | None = None

    def line(self) -> str:
        text = f"{self.name}: {self.passed} passed, {len(self.failed)} failed, {self.expected} expected failures"
        if self.error:
            text += f" (error: {self.error})"
        return text


def compare(name: str, results: Results, expected: Mapping[str, str]) -> Tally:
    tally = Tally(name)
    for test, outcome in sorted(results.items()):
        if outcome == "pass":
            tally.passed += 1
            if test in expected:
                tally.fixed.append(test)
        elif test in expected:
            tally.expected += 1
        else:
            tally.failed.append(f"{test} ({outcome})")
    return tally


@dataclass
class Suite:
    """
    @ivar apt: Debian packages the suite needs (installed before it runs).
    @ivar run: the driver; raises to report the whole suite as broken.
    """

    name: str
    run: Callable[[Context], Results]
    apt: tuple[str, ...] = ()


@dataclass
class Context:
    """What a driver works with: a scratch directory of its own and a gateway starter."""

    name: str
    workdir: Path
    log: Callable[[str], None]

    def gateway(
        self, config: str = "", *, backend: str = "embedded", nfs: str = "", s3: str = ""
    ) -> AbstractContextManager[Gateway]:
        """
        A gateway of this checkout; C{config} is YAML added to the generated
        file; C{nfs} and C{s3} hold more keys of the ``nfs`` and ``s3``
        mappings, in flow style (``"v4: {lease_secs: 20}"``, ``"root: /s3,
        root_mode: 01777"``), which the harness writes itself for the listeners.
        """
        return running_gateway(self.workdir, config, backend=backend, log=self.log, nfs=nfs, s3=s3)


class Gateway:
    """A gateway subprocess of this checkout; C{ports} maps listener labels to bound ports."""

    def __init__(self, proc: subprocess.Popen[bytes], data_dir: Path, logfile: Path) -> None:
        self.proc = proc
        self.data_dir = data_dir
        self.logfile = logfile
        self.ports: dict[str, int] = {}
        self.ready = threading.Event()
        self.ended = threading.Event()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        with open(self.logfile, "ab") as out:
            for raw in self.proc.stdout:
                out.write(raw)
                out.flush()
                try:
                    event: dict[str, Any] = json.loads(raw)
                except ValueError:
                    continue
                if event.get("listener") and event.get("port") is not None:
                    self.ports[str(event["listener"])] = int(event["port"])
                if str(event.get("log_format", "")).startswith("vfs open"):
                    self.ready.set()
        self.ended.set()
        self.ready.set()

    def port(self, label: str) -> int:
        """The port of listener C{label} (such as C{"nfs"}, C{"s3"}, C{"smb"}, C{"admin"})."""
        for key, value in self.ports.items():
            if key == label or key.endswith(":" + label):
                return value
        raise KeyError(f"no listener {label!r}; have {sorted(self.ports)}")


@contextmanager
def running_gateway(
    workdir: Path,
    extra: str,
    *,
    backend: str,
    log: Callable[[str], None],
    nfs: str = "",
    s3: str = "",
) -> Iterator[Gateway]:
    """Start a gateway with every listener on 127.0.0.1 port 0; stop it (SIGTERM) after."""
    data = Path(tempfile.mkdtemp(prefix="data-", dir=workdir))
    cfg = data.with_suffix(".yaml")
    config: dict[str, Any] = {
        "log_format": "json",
        "log_level": "info",
        "backend": {"type": backend, "data_dir": str(data)},
        "nfs": {
            "bind": "127.0.0.1:0",
            "mount_bind": "127.0.0.1:0",
            "portmap_bind": "127.0.0.1:0",
        },
        "s3": {"bind": "127.0.0.1:0"},
        "smb": {"bind": "127.0.0.1:0"},
        "admin": {"bind": "127.0.0.1:0", "drain_timeout_secs": 5},
    }
    if nfs:
        config["nfs"].update(yaml.safe_load("{" + nfs + "}"))
    if s3:
        config["s3"].update(yaml.safe_load("{" + s3 + "}"))
    # A suite's own settings join these (its section of a protocol merges
    # into the listener settings above).
    for key, value in (yaml.safe_load(extra) or {}).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    exe = Path(sys.executable).with_name("cfs-gateway")
    argv = [str(exe), "start", "--config", str(cfg)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    gw = Gateway(proc, data, data.with_suffix(".log"))
    threading.Thread(target=gw._pump, daemon=True).start()
    try:
        if not gw.ready.wait(120) or gw.ended.is_set():
            raise RuntimeError(f"gateway did not become ready; see {gw.logfile}")
        log(f"gateway ready: {dict(sorted(gw.ports.items()))}")
        yield gw
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        gw.ended.wait(10)


def apt_install(packages: tuple[str, ...]) -> None:
    """Install missing Debian packages non-interactively (as root, or through sudo)."""
    missing = [
        p
        for p in packages
        if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0
    ]
    if not missing:
        return
    prefix = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*prefix, "apt-get", "update", "-qq"], env=env, check=False)
    subprocess.run(
        [*prefix, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def scratch(name: str) -> Path:
    """A fresh scratch directory for one suite under C{$CFS_CONFORMANCE_DIR} (or the temp dir)."""
    base = Path(os.environ.get("CFS_CONFORMANCE_DIR") or tempfile.gettempdir()) / "cfs-conformance"
    path = base / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
