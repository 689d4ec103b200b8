# -*- test-case-name: tests.test_cli -*-
"""
C{cfs-gateway}: the operator's command line.

::

    cfs-gateway start [all|nfs|s3|smb] [--config F] [--bind …] [--export …] …
    cfs-gateway validate-config --config F
    cfs-gateway health  [--config F | --admin URL]
    cfs-gateway metrics [--config F | --admin URL]
    cfs-gateway drain   [--config F | --admin URL] [--no-wait]

C{start} runs the gateway in the foreground, logging to stdout, and stops
gracefully on SIGTERM or SIGINT (a drain, as C{twistd} does). The admin-API
commands find the running gateway from the same configuration file (its
C{admin.bind} and C{admin.token}), or from C{--admin}, and read a token from
C{$CFS_ADMIN_TOKEN} if the file has none.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

from claudefs_gateway import __version__
from claudefs_gateway.core import config as cfg
from claudefs_gateway.core.config import _split_description
from claudefs_gateway.errors import ConfigError, GatewayError

__all__ = ["main"]

PROTOCOL_CHOICES = ("all", "nfs", "s3", "smb")


def _print_err(msg: str) -> None:
    sys.stderr.write(f"cfs-gateway: {msg}\n")


# ---------------------------------------------------------------------------
# start


def cmd_start(argv: list[str]) -> int:
    from twisted.python import usage

    from claudefs_gateway.tap import OPTIONS

    protocol = "all"
    if argv and argv[0] in PROTOCOL_CHOICES:
        protocol, argv = argv[0], argv[1:]
    options = OPTIONS[protocol]()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        _print_err(str(e))
        return 2
    assert options.config is not None
    return run_foreground(options.config, options.protocols)


def run_foreground(
    config: cfg.Config, protocols: list[str] | None, customize: Callable[[Any], None] | None = None
) -> int:
    """
    Run the gateway until a signal stops it; the process's exit status.

    @param customize: called with the built service tree before it starts
        (tests add a protocol of their own to exercise the real shutdown path).
    """
    from twisted.application.service import Application, IService
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner

    from claudefs_gateway import service
    from claudefs_gateway.core.log import make_observer

    globalLogBeginner.beginLoggingTo(
        [make_observer(config.log_format, sys.stdout)], redirectStandardIO=False
    )
    try:
        root = service.build(config, reactor, protocols, strict=protocols is not None)
    except GatewayError as e:
        _print_err(str(e))
        return 1
    if customize is not None:
        customize(root)
    app = Application("claudefs-gateway")
    root.setServiceParent(app)
    svc = IService(app)
    try:
        svc.privilegedStartService()
        svc.startService()
    except Exception as e:  # noqa: BLE001 - report any start failure plainly, then stop
        _print_err(f"cannot start: {e}")
        return 1
    reactor.addSystemEventTrigger("before", "shutdown", svc.stopService)
    reactor.run()
    return 0


# ---------------------------------------------------------------------------
# validate-config


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        config = cfg.load(args.config)
    except ConfigError as e:
        sys.stdout.write(e.render() + "\n")
        n = len(e.problems)
        sys.stdout.write(f"{n} problem{'s' if n != 1 else ''} in {args.config}\n")
        return 1
    protos = ", ".join(config.enabled_protocols()) or "none"
    sys.stdout.write(
        f"OK: {args.config} is valid (protocols: {protos}; "
        f"{len(config.all_exports())} export(s); backend {config.backend.type})\n"
    )
    return 0


# ---------------------------------------------------------------------------
# admin API clients


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def admin_target(args: argparse.Namespace) -> tuple[str, str | None]:
    """
    The admin API base URL and token for C{args}.

    C{--admin} wins; otherwise C{admin.bind} of C{--config} (or the default),
    with a wildcard interface reached on loopback.
    """
    token = os.environ.get("CFS_ADMIN_TOKEN") or None
    if args.admin:
        return args.admin.rstrip("/"), token
    config = cfg.load(args.config) if args.config else cfg.default_config()
    token = config.admin.token or token
    listen = config.admin.bind
    kind, posargs, kw = _split_description(listen.description)
    if kind == "unix":
        return "unix:" + (posargs[0] if posargs else kw.get("address", "")), token
    host = listen.host or "127.0.0.1"
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if kind == "ssl" else "http"
    return f"{scheme}://{host}:{listen.port}", token


def admin_request(
    base: str, method: str, path: str, token: str | None, timeout: float = 60.0
) -> tuple[int, bytes]:
    """One request to the admin API; (status, body). @raise OSError: unreachable."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    conn: http.client.HTTPConnection
    if base.startswith("unix:"):
        conn = _UnixConnection(base[5:], timeout)
    else:
        u = urllib.parse.urlsplit(base)
        cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        conn = cls(u.hostname or "127.0.0.1", u.port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _admin_cmd(args: argparse.Namespace, method: str, path: str) -> tuple[int, bytes] | None:
    try:
        base, token = admin_target(args)
    except ConfigError as e:
        _print_err("invalid configuration:\n" + e.render())
        return None
    try:
        return admin_request(base, method, path, token, timeout=args.timeout)
    except OSError as e:
        _print_err(f"cannot reach the admin API at {base}: {e.strerror or e}")
        return None


def cmd_metrics(args: argparse.Namespace) -> int:
    r = _admin_cmd(args, "GET", "/metrics")
    if r is None:
        return 1
    status, body = r
    sys.stdout.write(body.decode("utf-8", "replace"))
    return 0 if status == 200 else 1


def cmd_health(args: argparse.Namespace) -> int:
    r = _admin_cmd(args, "GET", "/health")
    if r is None:
        return 1
    status, body = r
    sys.stdout.write(body.decode("utf-8", "replace"))
    return 0 if status == 200 else 1


def cmd_drain(args: argparse.Namespace) -> int:
    path = "/admin/drain" if args.no_wait else "/admin/drain?wait=1"
    r = _admin_cmd(args, "POST", path)
    if r is None:
        return 1
    status, body = r
    try:
        doc: Any = json.loads(body)
    except ValueError:
        doc = {"error": body.decode("utf-8", "replace")}
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    return 0 if status in (200, 202) else 1


# ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cfs-gateway", description="ClaudeFS multi-protocol gateway.")
    p.add_argument("--version", action="version", version=f"claudefs-gateway {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser(
        "start",
        help="run the gateway in the foreground (see: cfs-gateway start --help)",
        add_help=False,
    )
    v = sub.add_parser("validate-config", help="check a configuration file; exit 0 if valid")
    v.add_argument("--config", "-c", required=True)
    for name, helptext in (
        ("health", "print the running gateway's /health"),
        ("metrics", "print the running gateway's Prometheus metrics"),
        ("drain", "stop accepting connections and let requests finish"),
    ):
        a = sub.add_parser(name, help=helptext)
        a.add_argument("--config", "-c", help="find the admin API from this configuration")
        a.add_argument("--admin", help="admin API base URL, e.g. http://127.0.0.1:8080")
        a.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for an answer")
        if name == "drain":
            a.add_argument("--no-wait", action="store_true", help="return once the drain has begun")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "start":
        return cmd_start(args_list[1:])
    parser = _parser()
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return 2
    handler = {
        "validate-config": cmd_validate,
        "metrics": cmd_metrics,
        "health": cmd_health,
        "drain": cmd_drain,
    }[args.command]
    return handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
