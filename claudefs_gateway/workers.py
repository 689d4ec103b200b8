# -*- test-case-name: tests.test_workers -*-
"""
C{cfs-gateway start --workers N}: one machine, every core.

The supervisor (this process) starts, under the gateway's data directory
(which it locks for all of them):

 - a C{claudefs-data} server on a unix socket (file bytes in C{<data_dir>/data}),
 - a C{claudefs-meta} server on a unix socket (the namespace in
   C{<data_dir>/meta}), placing files on that data server,
 - N gateway workers, each running every enabled front end on
   C{backend: remote} against them. Each worker binds every TCP listener of
   the configuration itself with SO_REUSEPORT (the C{reuseport:} endpoint),
   so the kernel spreads new connections across the workers. The supervisor
   first binds (without listening) one socket per listener, which turns a
   port 0 into one concrete port and keeps it reserved while a worker
   restarts. UDP (NFSv3, MOUNT, NLM, portmapper) is served by worker 0 only.

Workers share the data directory (the handle secret, so a file handle from
one worker is good at every other, and the users file), except each
worker's NSM record (C{nsm-worker-<index>.json}, nfs/nsm.py C{state_file}). What must be one
across workers lives in the meta server (the namespace, usage, quota limits,
durable state); docs/workers.rst says what does not yet.

Every child logs JSON lines to the supervisor, which re-publishes each event
(with C{process} naming its origin) through its own log observer. A worker
that exits unexpectedly is started again after a second; its clients
reconnect and land on the others meanwhile. At start too, up to
C{workers.start_attempts} times; what stops a start is logged with its
cause (L{Supervisor.start}). SIGTERM or SIGINT stops the
workers (each drains), then the meta server, then the data server.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from twisted.internet import defer, protocol, task
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.logger import eventFromJSON, globalLogPublisher
from twisted.python.failure import Failure
from twisted.python.reflect import qual

from claudefs_gateway.backend.datadir import DataDir
from claudefs_gateway.core.config import Config, _split_description
from claudefs_gateway.core.log import Logger
from claudefs_gateway.core.transport.reuseport import reserve
from claudefs_gateway.errors import GatewayError
from claudefs_gateway.nfs.nsm import adopt_records, state_file
from claudefs_gateway.vfs.handles import load_or_create_secret

__all__ = ["Supervisor", "LISTENERS"]

#: Every listener a worker may open: (section, key, protocol or None for admin).
LISTENERS = (
    ("nfs", "bind", "nfs"),
    ("nfs", "mount_bind", "nfs"),
    ("nfs", "portmap_bind", "nfs"),
    ("s3", "bind", "s3"),
    ("smb", "bind", "smb"),
    ("admin", "bind", None),
)

RESTART_DELAY = 1.0


class Child(protocol.ProcessProtocol):
    """One child process whose stdout is JSON log lines."""

    _log = Logger()

    def __init__(self, name: str, on_exit: Callable[[Child, int], None]) -> None:
        self.name = name
        self.on_exit = on_exit
        self.ended: defer.Deferred[int] = defer.Deferred()
        self._buf = b""
        self._err = b""
        self._waiters: list[tuple[Callable[[dict[str, Any]], bool], defer.Deferred[None]]] = []
        self.stopping = False

    def outReceived(self, data: bytes) -> None:
        self._buf += data
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            self._line(line.decode("utf-8", "replace"))

    def errReceived(self, data: bytes) -> None:
        self._err = (self._err + data)[-4096:]
        for line in data.decode("utf-8", "replace").splitlines():
            if line.strip():
                self._log.warn("{process}: {line}", process=self.name, line=line)

    def _line(self, text: str) -> None:
        try:
            event = eventFromJSON(text)
        except (ValueError, TypeError):
            if text.strip():
                self._log.info("{process}: {line}", process=self.name, line=text)
            return
        if not isinstance(event, dict):
            return
        event["process"] = self.name
        event["log_namespace"] = f"{self.name}:{event.get('log_namespace', '-')}"
        for pred, d in list(self._waiters):
            if pred(event):
                self._waiters.remove((pred, d))
                d.callback(None)
        globalLogPublisher(event)

    def wait_for(self, pred: Callable[[dict[str, Any]], bool]) -> defer.Deferred[None]:
        """Fire at the first event C{pred} accepts; cancelling it stops the wait."""

        def cancel(d: defer.Deferred[None]) -> None:
            if (pred, d) in self._waiters:
                self._waiters.remove((pred, d))

        d: defer.Deferred[None] = defer.Deferred(cancel)
        self._waiters.append((pred, d))
        return d

    def signal(self, sig: str) -> None:
        try:
            self.transport.signalProcess(sig)  # type: ignore[union-attr]
        except Exception:
            pass

    def last_words(self) -> str:
        """The child's last stderr line (its "cannot start: ..."), for a message; or ""."""
        lines = [x for x in self._err.decode("utf-8", "replace").splitlines() if x.strip()]
        return f": {lines[-1].strip()}" if lines else ""

    def processEnded(self, reason: Failure) -> None:
        v = reason.value
        status = 0
        if isinstance(v, ProcessTerminated):
            status = -v.signal if v.signal is not None else (v.exitCode or 1)
        elif not isinstance(v, ProcessDone):
            status = 1
        why = f"{self.name} exited ({status}) before it was ready{self.last_words()}"
        for _, d in self._waiters:
            d.errback(GatewayError(why))
        self._waiters = []
        self.ended.callback(status)
        self.on_exit(self, status)


def _serving(role: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("serving") == role


def _store_open(e: dict[str, Any]) -> bool:
    return bool(e.get("store_open"))


def _vfs_open(e: dict[str, Any]) -> bool:
    """A worker is ready once its vfs is open (its listeners accept from then on)."""
    return str(e.get("log_format", "")).startswith("vfs open")


class Supervisor:
    """
    Runs the servers and workers of C{start --workers N} until stopped.

    @param config_text: the configuration file's text ("" for every default).
    @param protocol: C{"all"}, or one front end.
    """

    _log = Logger()

    def __init__(
        self,
        config: Config,
        config_text: str,
        workers: int,
        protocol: str,
        reactor: Any,
        python: str = sys.executable,
        overrides: dict[str, tuple[Any, str]] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("at least one worker")
        self.config = config
        self.raw = yaml.safe_load(config_text) or {}
        for path, (value, _) in (overrides or {}).items():
            node = self.raw
            parts = path.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
        self.workers = workers
        self.protocol = protocol
        self.reactor = reactor
        self.python = python
        self.run_dir = Path(tempfile.mkdtemp(prefix="cfs-run-"))
        self.children: dict[str, Child] = {}
        self.reserved: list[socket.socket] = []
        self.stopping = False
        self.datadir = DataDir(config.data_dir)
        #: Why the supervisor stopped on its own (a start that failed, a server that exited).
        self.failed: str | None = None
        #: Every worker was ready once: from then on one that exits is restarted for ever.
        self.started = False

    # -- set-up -------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> Child:
        child = Child(name, self._exited)
        argv = [self.python, "-m", "claudefs_gateway.cli", *args]
        env = dict(os.environ)
        transport = self.reactor.spawnProcess(
            child, argv[0], argv, env=env, childFDs={0: "w", 1: "r", 2: "r"}
        )
        self.children[name] = child
        kind = "worker" if name.startswith("worker-") else "server"
        self._log.info(
            kind + " process {process} started, pid {pid}",
            process=name,
            pid=getattr(transport, "pid", None),
        )
        return child

    def _server_args(self, role: str) -> list[str]:
        sock = self.run_dir / f"{role}.sock"
        args = [
            role,
            "--data-dir",
            str(self.config.data_dir / role),
            "--listen",
            f"unix:{sock}:mode=600",
            "--admin",
            f"unix:{self.run_dir / (role + '-admin.sock')}:mode=600",
            "--log-format",
            "json",
            "--log-level",
            self.config.log_level,
        ]
        if role == "meta":
            # The socket is new at each start: the stored layout follows it.
            args += [
                "--data-server",
                f"unix:{self.run_dir / 'data.sock'}",
                "--data-servers-moved",
                # Each worker's count of events, so reads skip a GETATTR (marks.py).
                "--event-marks",
                str(self.run_dir / "marks"),
            ]
            # The cross-gateway grace follows the gateway's own (nfs.grace_secs)
            # unless meta_store.grace_secs says otherwise.
            store = dict(self.raw.get("meta_store") or {})
            store.setdefault("grace_secs", self.config.nfs.grace)
            path = self.run_dir / "meta.yaml"
            path.write_text(yaml.safe_dump({"meta_store": store}))
            path.chmod(0o600)
            args += ["--config", str(path)]
        return args

    def _listeners(self) -> dict[tuple[str, str], str]:
        """Reserve each TCP listener's port; the reuseport: description for the workers."""
        wanted = self.config.enabled_protocols() if self.protocol == "all" else [self.protocol]
        out: dict[tuple[str, str], str] = {}
        for section, key, proto in LISTENERS:
            if proto is not None and proto not in wanted:
                continue
            if (
                section == "nfs"
                and key == "portmap_bind"
                and self.config.nfs.portmapper != "embedded"
            ):
                continue
            listen = getattr(getattr(self.config, section), key)
            kind, _, _ = _split_description(listen.description)
            if kind not in ("tcp", "tcp6") or listen.host is None or listen.port is None:
                raise GatewayError(
                    f"--workers needs TCP listeners; {section}.{key} is {listen.description}"
                )
            s = reserve(listen.host, listen.port)
            self.reserved.append(s)
            port = s.getsockname()[1]
            host = listen.host.replace(":", "\\:")
            out[(section, key)] = f"reuseport:port={port}:interface={host}"
        return out

    def _worker_config(self, index: int, listeners: dict[tuple[str, str], str]) -> Path:
        raw = dict(self.raw)
        backend = dict(raw.get("backend") or {})
        # The data server's chunk files are on this host: the workers read and
        # write them directly (docs/workers.rst, "The local data path").
        backend.update(
            type="remote",
            data_dir=str(self.config.data_dir),
            short_circuit=str(self.config.data_dir / "data"),
            event_marks=str(self.run_dir / "marks"),
        )
        backend.pop("tls", None)
        raw["backend"] = backend
        raw["metadata_servers"] = [{"address": f"unix:{self.run_dir / 'meta.sock'}"}]
        raw["log_format"] = "json"
        for (section, key), desc in listeners.items():
            sect = dict(raw.get(section) or {})
            sect[key] = desc
            raw[section] = sect
        if index > 0:
            nfs = dict(raw.get("nfs") or {})
            nfs["udp"] = False
            raw["nfs"] = nfs
        path = self.run_dir / f"worker-{index}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    def _worker_args(self, index: int) -> list[str]:
        args = ["start"]
        if self.protocol != "all":
            args.append(self.protocol)
        # The index names what a worker keeps for itself in the shared data
        # directory (its NSM record: nfs/nsm.py state_file); a restarted
        # worker gets its predecessor's index.
        return [
            *args,
            "--config",
            str(self.run_dir / f"worker-{index}.yaml"),
            "--worker",
            "--worker-index",
            str(index),
        ]

    def _adopt_nsm_records(self) -> list[str]:
        """
        NSM records no worker keeps (an earlier run with more workers, or a
        single gateway's nsm.json) go to worker 0, which notifies their
        clients as it starts (nfs/nsm.py adopt_records); the names taken.
        """
        adopted = adopt_records(
            self.config.data_dir,
            state_file(0),
            {state_file(i) for i in range(self.workers)},
        )
        if adopted:
            self._log.info(
                "NSM records {records} taken over by worker-0", records=",".join(adopted)
            )
        return adopted

    async def start(self) -> None:
        """
        Lock the data directory, start the servers, then the workers.

        A worker that exits before it is ready is started again, up to
        C{workers.start_attempts} times in all; a server that does, or a
        worker's last attempt, stops the start. Its cause (the exit status
        and the child's last words on stderr) is logged and kept in
        L{failed}, and the start fails with a L{GatewayError} saying it.
        """
        try:
            await self._start()
        except Exception as e:
            if self.stopping:
                # SIGTERM during the start: the children were stopped, not lost.
                self._log.info("stopped before every process was ready")
                return
            if self.failed is None:
                self.failed = f"cannot start: {e}"
            if isinstance(e, GatewayError):
                self._log.critical("{why}; stopping", why=self.failed)
            else:
                self._log.failure("cannot start; stopping")
            raise

    async def _start(self) -> None:
        self.datadir.open()
        load_or_create_secret(self.config.data_dir)
        self._adopt_nsm_records()
        listeners = self._listeners()
        data = self._spawn("data", self._server_args("data"))
        await self._ready(data, _serving("data"), "serving")
        meta = self._spawn("meta", self._server_args("meta"))
        await self._ready(meta, _store_open, "its store open")
        for i in range(self.workers):
            self._worker_config(i, listeners)
        ready = [defer.Deferred.fromCoroutine(self._start_worker(i)) for i in range(self.workers)]
        try:
            # consumeErrors: a second worker failing later is not an
            # "Unhandled error in Deferred" at exit.
            await defer.gatherResults(ready, consumeErrors=True)
        except defer.FirstError as e:
            e.subFailure.raiseException()
        self.started = True
        self._log.info(
            "claudefs-gateway supervisor: {n} workers serving",
            n=self.workers,
            workers=self.workers,
            reactor=qual(type(self.reactor)),
        )

    async def _ready(self, child: Child, pred: Callable[[dict[str, Any]], bool], what: str) -> None:
        """
        Wait for C{child}'s event C{pred}, at most C{workers.ready_timeout_secs}.

        A child that neither gets there nor exits (a server hung on its store
        or its disk) used to hold the start for ever, with nothing logged: it
        is killed, and the start (or this attempt of a worker) fails saying so.

        @raise GatewayError: the child exited first, or the deadline passed.
        """
        timeout = self.config.workers.ready_timeout_secs
        d = child.wait_for(pred)
        timer = self.reactor.callLater(timeout, d.cancel)
        try:
            await d
        except defer.CancelledError:
            child.signal("KILL")
            raise GatewayError(
                f"{child.name} not ready ({what}) after {timeout:g}s "
                f"(workers.ready_timeout_secs); killed{child.last_words()}"
            ) from None
        finally:
            if timer.active():
                timer.cancel()

    async def _start_worker(self, index: int) -> None:
        """Start worker C{index} until it is ready, or C{start_attempts} times."""
        attempts = self.config.workers.start_attempts
        name = f"worker-{index}"
        for attempt in range(1, attempts + 1):
            child = self._spawn(name, self._worker_args(index))
            try:
                await self._ready(child, _vfs_open, "its vfs open")
                return
            except GatewayError as e:
                if self.stopping or attempt == attempts:
                    raise GatewayError(
                        f"{e} (attempt {attempt} of {attempts}, workers.start_attempts)"
                    ) from None
                self._log.warn(
                    "{why}; starting it again (attempt {next} of {attempts})",
                    why=str(e),
                    next=attempt + 1,
                    attempts=attempts,
                    process=name,
                )
            await task.deferLater(self.reactor, RESTART_DELAY, lambda: None)
            if self.stopping:
                raise GatewayError(f"{name} not started: stopping")

    # -- running ------------------------------------------------------------------------

    def _exited(self, child: Child, status: int) -> None:
        if self.stopping:
            return
        if child.name.startswith("worker-"):
            if not self.started:
                # The start starts it again itself (L{_start_worker}), or gives up.
                return
            self._log.warn(
                "{process} exited ({status}); starting it again", process=child.name, status=status
            )
            index = int(child.name.split("-", 1)[1])
            # Its write board file (board.py), if it was killed mid-write:
            # the others would wait for its unanswered WROTEs until a timeout.
            from claudefs_gateway.backend.remote.board import board_dir, clear_dead

            clear_dead(board_dir(self.run_dir / "marks"))
            self.reactor.callLater(RESTART_DELAY, self._restart, index)
            return
        if self.failed is None:  # else the start said why already
            self.failed = f"{child.name} server exited ({status}){child.last_words()}"
            self._log.critical(
                "{why}; stopping", why=self.failed, process=child.name, status=status
            )
        if getattr(self.reactor, "running", False) and not self.stopping:
            self.stopping_requested = True
            try:
                self.reactor.stop()
            except Exception:  # already stopping
                pass

    def _restart(self, index: int) -> None:
        if not self.stopping:
            self._spawn(f"worker-{index}", self._worker_args(index))

    async def stop(self) -> None:
        """
        Workers first (they drain), then meta, then data.

        Each group's wait is bounded: a child that ignores SIGTERM (hung on a
        disk) used to hold the stop for ever. Past its deadline it is killed
        (L{_stop_group}); the stop then goes on to the next group.
        """
        self.stopping = True
        grace = self.config.workers.stop_timeout_secs
        for group, timeout, keys in (
            (
                [c for n, c in self.children.items() if n.startswith("worker-")],
                self.config.admin.drain_timeout_secs + grace,
                "admin.drain_timeout_secs + workers.stop_timeout_secs",
            ),
            (
                [c for n, c in self.children.items() if n == "meta"],
                grace,
                "workers.stop_timeout_secs",
            ),
            (
                [c for n, c in self.children.items() if n == "data"],
                grace,
                "workers.stop_timeout_secs",
            ),
        ):
            await self._stop_group(group, timeout, grace, keys)
        for s in self.reserved:
            s.close()
        self.datadir.stopService()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self._log.info("claudefs-gateway supervisor stopped")

    async def _stop_group(
        self, group: list[Child], timeout: float, grace: float, keys: str
    ) -> None:
        """
        SIGTERM C{group}; SIGKILL those not gone C{timeout} seconds later, and
        go on without those not gone C{grace} seconds after that (a process
        in an uninterruptible wait dies only when the kernel lets it).
        """
        live = [c for c in group if not c.ended.called]
        for c in live:
            c.signal("TERM")
        live = await self._wait_ended(live, timeout)
        for c in live:
            self._log.warn(
                "{process} still running {secs:g}s after SIGTERM ({keys}); killing it",
                process=c.name,
                secs=timeout,
                keys=keys,
            )
            c.signal("KILL")
        for c in await self._wait_ended(live, grace):
            self._log.error(
                "{process} still running {secs:g}s after SIGKILL; stopping without it",
                process=c.name,
                secs=grace,
            )

    async def _wait_ended(self, children: list[Child], timeout: float) -> list[Child]:
        """Wait until every child has ended or C{timeout} passes; those still running."""
        if not children:
            return []
        # Not a DeferredList cancelled at the deadline: that would cancel
        # each child's own C{ended}, which its exit still fires.
        done: defer.Deferred[None] = defer.Deferred()
        waiting = set(children)

        def ended(result: object, child: Child) -> object:
            waiting.discard(child)
            if not waiting and not done.called:
                done.callback(None)
            return result

        def deadline() -> None:
            if not done.called:
                done.callback(None)

        for c in children:
            c.ended.addBoth(ended, c)
        timer = self.reactor.callLater(timeout, deadline)
        try:
            await done
        finally:
            if timer.active():
                timer.cancel()
        return [c for c in children if not c.ended.called]
