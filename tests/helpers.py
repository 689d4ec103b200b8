"""
Helpers shared by the integration tests: real subprocesses, real HTTP.

Nothing here sleeps: every wait is on a Deferred that fires on an event (a log
line, a process exit), bounded by the test case's timeout.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Under CI a missing real client is a failure, never a skip (README "Tests").
IN_CI = bool(os.environ.get("CI"))


def run_machine(factory: Callable[[], Any], settings: Any) -> None:
    """
    Run a hypothesis state machine as a test, with its falsifying steps in
    the failure's message: hypothesis puts them in the exception's
    C{__notes__}, which trial's report leaves out, and a rare failure in CI
    is only worth having with the steps that made it.
    """
    from hypothesis.stateful import run_state_machine_as_test

    try:
        run_state_machine_as_test(factory, settings=settings)
    except Exception as e:
        notes = getattr(e, "__notes__", None)
        if not notes:
            raise
        raise AssertionError(f"{type(e).__name__}: {e}\n" + "\n".join(notes)) from e


def bin_path(name: str) -> str:
    """An executable next to this interpreter (the venv's), else on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(here):
        return here
    found = shutil.which(name)
    if found is None:
        raise AssertionError(f"{name} is not installed; run the README's test command")
    return found


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("CFS_ADMIN_TOKEN", None)
    env.update(extra)
    return env


class GatewayProcess(protocol.ProcessProtocol):
    """
    A child process whose stdout is JSON log lines (``log_format: json``).

    ``wait_for(pred)`` fires with the first event (past or future) matching
    ``pred``; ``ended`` fires with the exit status (a negative signal number if
    killed by a signal, as subprocess reports it).
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.text: list[str] = []
        self.stderr = b""
        self._buf = b""
        self._waiters: list[
            tuple[Callable[[dict[str, Any]], bool], defer.Deferred[dict[str, Any]]]
        ] = []
        self.ended: defer.Deferred[int] = defer.Deferred()
        self.pid: int | None = None
        #: Started in a session of its own (L{spawn}'s C{new_session}): its
        #: process group is its pid, and holds what it starts.
        self.group = False

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def outReceived(self, data: bytes) -> None:
        self._buf += data
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            text = line.decode("utf-8", "replace")
            self.text.append(text)
            try:
                event = json.loads(text)
            except ValueError:
                continue
            if isinstance(event, dict):
                self.events.append(event)
                for pred, d in list(self._waiters):
                    if pred(event):
                        self._waiters.remove((pred, d))
                        d.callback(event)

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Failure) -> None:
        for _, d in self._waiters:
            d.errback(
                AssertionError(
                    f"process ended before the awaited event; stderr: {self.stderr[-2000:]!r}"
                    f"\nwarnings and errors: {self.trouble()[-30:]!r}"
                    f"\nstdout: {self.text[-20:]!r}"
                )
            )
        self._waiters = []
        v = reason.value
        if isinstance(v, ProcessDone):
            self.ended.callback(0)
        elif isinstance(v, ProcessTerminated):
            self.ended.callback(-v.signal if v.signal is not None else v.exitCode)
        else:  # pragma: no cover
            self.ended.errback(reason)

    def trouble(self) -> list[str]:
        """
        Every line the child logged at warn level or above, or not as JSON: a
        child that ended early says why there, often long before the last lines
        (the workers' shutdown chatter).
        """
        bad = {"warn", "error", "critical"}
        out = []
        for text in self.text:
            try:
                event = json.loads(text)
            except ValueError:
                out.append(text)
                continue
            level = event.get("log_level") if isinstance(event, dict) else None
            name = level.get("name") if isinstance(level, dict) else None
            if name in bad or (isinstance(event, dict) and event.get("isError")):
                out.append(text[:2000])
        return out

    def wait_for(self, pred: Callable[[dict[str, Any]], bool]) -> defer.Deferred[dict[str, Any]]:
        for event in self.events:
            if pred(event):
                return defer.succeed(event)
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._waiters.append((pred, d))
        return d

    def wait_listening(self, label: str) -> defer.Deferred[int]:
        """Fire with the port the child's listener C{label} bound."""
        d = self.wait_for(lambda e: e.get("listener") == label and e.get("port") is not None)
        return d.addCallback(lambda e: int(e["port"]))

    def wait_ready(self) -> defer.Deferred[dict[str, Any]]:
        """Fire once the child's store is open (its vfs logged "vfs open")."""
        return self.wait_for(lambda e: str(e.get("log_format", "")).startswith("vfs open"))

    def signal(self, sig: str) -> None:
        self.transport.signalProcess(sig)

    def messages(self) -> list[str]:
        """Each event's format string, for asserting on what was logged."""
        return [str(e.get("log_format", "")) for e in self.events]


#: Runs argv[1:] in a session (and process group) of its own: setsid, then
#: exec, so the pid stays the one spawnProcess reports.
_SETSID = "import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])"


def spawn(
    argv: list[str],
    env: dict[str, str] | None = None,
    path: str | None = None,
    new_session: bool = False,
) -> GatewayProcess:
    """
    Start C{argv}. With C{new_session} the child leads a process group of
    its own, which everything it starts joins (the C{--workers} supervisor's
    servers and workers): L{kill_on_cleanup} then kills the whole group, so
    no process outlives a test that fails partway.
    """
    proto = GatewayProcess()
    if new_session:
        proto.group = True
        argv = [sys.executable, "-c", _SETSID, *argv]
    reactor.spawnProcess(proto, argv[0], argv, env=env or child_env(), path=path)
    return proto


def kill_group(proc: GatewayProcess) -> defer.Deferred[Any] | None:
    """
    SIGKILL C{proc}, and with its own process group (L{spawn}'s
    C{new_session}) everything in that group, even once C{proc} has ended
    (its children outlive it otherwise); fires when C{proc} has ended.
    """
    if proc.group and proc.pid:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # no process left in the group (or not yet made: below)
    if proc.ended.called:
        return None
    try:
        proc.signal("KILL")
    except Exception:
        return None
    return proc.ended.addErrback(lambda _: None)


def kill_on_cleanup(testcase: Any, proc: GatewayProcess) -> None:
    testcase.addCleanup(kill_group, proc)


async def http_get(
    url: str, headers: dict[str, str] | None = None, method: bytes = b"GET"
) -> tuple[int, dict[str, list[str]], bytes]:
    """A real HTTP request with twisted.web's Agent; (status, headers, body)."""
    agent = Agent(reactor)
    h = Headers({k: [v] for k, v in (headers or {}).items()})
    response = await agent.request(method, url.encode(), h)
    body = await readBody(response)
    hdrs = {
        k.decode().lower(): [v.decode() for v in vs]
        for k, vs in response.headers.getAllRawHeaders()
    }
    return response.code, hdrs, body


def write_config(testcase: Any, text: str) -> str:
    path = testcase.mktemp() + ".yaml"
    with open(path, "w") as f:
        f.write(text)
    return path


def loopback_config(testcase: Any, extra: str = "", **settings: str) -> str:
    """A configuration with every listener on 127.0.0.1 port 0 and a fresh data dir."""
    data = os.path.abspath(testcase.mktemp())
    text = f"""
log_format: json
backend:
  type: {settings.get("backend", "embedded")}
  data_dir: {data}
nfs:
  bind: "127.0.0.1:0"
  mount_bind: "127.0.0.1:0"
  portmap_bind: "127.0.0.1:0"
s3:
  bind: "127.0.0.1:0"
smb:
  bind: "127.0.0.1:0"
admin:
  bind: "127.0.0.1:0"
  drain_timeout_secs: {settings.get("drain", "5")}
{extra}
"""
    return write_config(testcase, text)


UNBUILT_MESSAGE = "the {p} front end is not built in this version of claudefs-gateway"


def unbuild(testcase: Any, protocol: str) -> str:
    """
    Make C{protocol}'s front end look not built for the rest of C{testcase},
    so the "refuse plainly" path stays tested once every front end exists.
    """
    from claudefs_gateway.service import FRONT_ENDS

    module = importlib.import_module(FRONT_ENDS[protocol])
    message = UNBUILT_MESSAGE.format(p=protocol)
    testcase.patch(module, "BUILT", False)
    testcase.patch(module, "NOT_BUILT", message)
    return message


# Run the cfs-gateway command with one front end made to look not built.
UNBUILT_CLI = """
import importlib, sys
from claudefs_gateway import cli
from claudefs_gateway.service import FRONT_ENDS
module = importlib.import_module(FRONT_ENDS[sys.argv[1]])
module.BUILT = False
module.NOT_BUILT = sys.argv[2]
sys.exit(cli.main(sys.argv[3:]))
"""
