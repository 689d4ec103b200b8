"""
ClaudeFS meta and data servers of this checkout as subprocesses on
127.0.0.1 port 0, for suites and benches that need ``backend: remote``
(pNFS: data servers with an NFSv3 listener). Ports are read from the
servers' JSON log lines, as the gateway harness reads the gateway's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from tests.conformance.framework import REPO

LOOPBACK = "tcp:0:interface=127.0.0.1"


class Server:
    """One C{cfs-gateway meta|data} process and the ports its listeners bound."""

    def __init__(self, role: str, data_dir: Path, argv: list[str], logfile: Path) -> None:
        self.role = role
        self.data_dir = data_dir
        self.logfile = logfile
        self.ports: dict[str, int] = {}
        self.ready = threading.Event()
        self.ended = threading.Event()
        exe = Path(sys.executable).with_name("cfs-gateway")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [str(exe), role, "--data-dir", str(data_dir), "--log-format", "json", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        threading.Thread(target=self._pump, daemon=True).start()

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
                if event.get("serving"):
                    self.ready.set()
        self.ended.set()
        self.ready.set()

    def restart_killed(self) -> Server:
        """
        SIGKILL this server and start it again on the same directory and
        ports (a crash and a restart, as clients see it). The new process
        is returned once it serves.
        """
        self.stop(signal.SIGKILL)
        argv = [
            "--listen",
            f"tcp:{self.ports['rpc']}:interface=127.0.0.1",
            "--admin",
            f"tcp:{self.ports['admin']}:interface=127.0.0.1",
        ]
        if "nfs" in self.ports:
            argv += ["--nfs-listen", f"tcp:{self.ports['nfs']}:interface=127.0.0.1"]
        return Server(self.role, self.data_dir, argv, self.logfile).wait()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports['rpc']}"

    def wait(self, timeout: float = 60) -> Server:
        if not self.ready.wait(timeout) or self.ended.is_set():
            raise RuntimeError(f"{self.role} server did not start; see {self.logfile}")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.ended.wait(10)


def start_data(workdir: Path, nfs: bool = True, name: str = "data", port: int = 0) -> Server:
    """A data server (with its pNFS NFSv3 listener when C{nfs}) in a fresh directory."""
    d = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
    argv = ["--listen", LOOPBACK, "--admin", LOOPBACK]
    if nfs:
        argv += ["--nfs-listen", f"tcp:{port}:interface=127.0.0.1"]
    return Server("data", d, argv, d.with_suffix(".log")).wait()


def start_meta(workdir: Path, data_servers: list[str], mirrors: int = 1) -> Server:
    """A meta server placing new namespaces' bytes on C{data_servers}, C{mirrors} copies each."""
    d = Path(tempfile.mkdtemp(prefix="meta-", dir=workdir))
    argv = ["--listen", LOOPBACK, "--admin", LOOPBACK, "--mirrors", str(mirrors)]
    for a in data_servers:
        argv += ["--data-server", a]
    return Server("meta", d, argv, d.with_suffix(".log")).wait()


def remote_config(meta: Server) -> str:
    """The gateway configuration lines pointing at C{meta}."""
    return f'metadata_servers:\n  - address: "{meta.address}"\n'


def metric(admin_port: int, name: str, labels: str = "") -> float:
    """One sample of a server's /metrics (0 when absent)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    want = name + ("{" + labels + "}" if labels else "")
    total = 0.0
    for line in text.splitlines():
        if line.startswith(want + " ") or (not labels and line.startswith(name + "{")):
            if labels or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
    return total
