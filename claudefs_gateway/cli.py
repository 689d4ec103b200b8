# -*- test-case-name: tests.test_cli -*-
"""
C{cfs-gateway}: the operator's command line.

::

    cfs-gateway start [all|nfs|s3|smb] [--config F] [--bind …] [--export …] …
    cfs-gateway meta --data-dir D [--listen tcp:7001] [--admin …] [--data-server H:P]…
    cfs-gateway data --data-dir D [--listen tcp:7002] [--admin …]
    cfs-gateway validate-config --config F
    cfs-gateway health  [--config F | --admin URL]
    cfs-gateway metrics [--config F | --admin URL]
    cfs-gateway drain   [--config F | --admin URL] [--no-wait]
    cfs-gateway status  [--config F | --admin URL] [--json] [--protocol P]
    cfs-gateway quota set-user|set-group|report …
    cfs-gateway user add|passwd|s3-keys|remove|list …
    cfs-gateway store export|import DIR (--embedded D [--chunks C] | --config F --chunks C)

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
from typing import Any, cast

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
    if options["workers"]:
        return run_supervisor(options, protocol)
    return run_foreground(
        options.config,
        options.protocols,
        worker=bool(options["worker"]),
        worker_index=options["worker-index"],
    )


def run_supervisor(options: Any, protocol: str) -> int:
    """C{start --workers N}: local meta and data servers and N workers (L{claudefs_gateway.workers})."""
    from twisted.internet import defer, reactor
    from twisted.logger import globalLogBeginner

    from claudefs_gateway.core.log import make_observer, set_level
    from claudefs_gateway.workers import Supervisor

    config = options.config
    globalLogBeginner.beginLoggingTo(
        [make_observer(config.log_format, sys.stdout)], redirectStandardIO=False
    )
    set_level(config.log_level)
    try:
        sup = Supervisor(
            config,
            options.config_text,
            options["workers"],
            protocol,
            reactor,
            overrides=options.overrides(),
        )
    except (GatewayError, ValueError) as e:
        _print_err(str(e))
        return 1
    status = [0]

    def failed(reason: Any) -> None:
        # Supervisor.start logged the cause (sup.failed), printed below.
        if sup.failed is None:
            sup.failed = f"cannot start: {reason.getErrorMessage()}"
        status[0] = 1
        if reactor.running:
            try:
                reactor.stop()
            except Exception:  # noqa: BLE001 - already stopping
                pass

    def run() -> None:
        d = defer.Deferred.fromCoroutine(sup.start())
        d.addErrback(failed)

    reactor.callWhenRunning(run)
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: defer.Deferred.fromCoroutine(sup.stop())
    )
    reactor.run()
    if sup.failed:
        _print_err(sup.failed)
        return 1
    return status[0]


def run_foreground(
    config: cfg.Config,
    protocols: list[str] | None,
    customize: Callable[[Any], None] | None = None,
    worker: bool = False,
    worker_index: int | None = None,
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
        root = service.build(
            config,
            reactor,
            protocols,
            strict=protocols is not None,
            worker=worker,
            worker_index=worker_index,
        )
    except GatewayError as e:
        _print_err(str(e))
        return 1
    root.exit_when_drained = True
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
    # SIGUSR2 logs where memory is, when CFS_MEMORY_REPORT asks (off by default).
    from claudefs_gateway.core import memreport

    memreport.install(reactor)
    reactor.run()
    fatal = root.core.extras.get("fatal")
    if fatal:
        _print_err(str(fatal))
        return 1
    return 0


# ---------------------------------------------------------------------------
# meta / data: the ClaudeFS servers


def cmd_server(role: str, argv: list[str]) -> int:
    """Run C{claudefs-meta} or C{claudefs-data} in the foreground until a signal stops it."""
    from twisted.application.service import Application, IService
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner
    from twisted.python import usage

    from claudefs_gateway.core.log import make_observer
    from claudefs_gateway.servers.service import build_data, build_meta
    from claudefs_gateway.servers.tap import DataOptions, MetaOptions

    options = MetaOptions() if role == "meta" else DataOptions()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        _print_err(str(e))
        return 2
    globalLogBeginner.beginLoggingTo(
        [make_observer(options["log-format"], sys.stdout)], redirectStandardIO=False
    )
    root = (build_meta if role == "meta" else build_data)(options.settings, reactor)
    app = Application(f"claudefs-{role}")
    root.setServiceParent(app)
    svc = IService(app)
    try:
        svc.privilegedStartService()
        svc.startService()
    except Exception as e:  # noqa: BLE001 - report any start failure plainly, then stop
        _print_err(f"cannot start: {e}")
        return 1
    reactor.addSystemEventTrigger("before", "shutdown", svc.stopService)
    reactor.callWhenRunning(root.serving)
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
    base: str,
    method: str,
    path: str,
    token: str | None,
    timeout: float = 60.0,
    body: bytes | None = None,
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
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _admin_cmd(
    args: argparse.Namespace, method: str, path: str, body: bytes | None = None
) -> tuple[int, bytes] | None:
    try:
        base, token = admin_target(args)
    except ConfigError as e:
        _print_err("invalid configuration:\n" + e.render())
        return None
    try:
        return admin_request(base, method, path, token, timeout=args.timeout, body=body)
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


def _duration(secs: float) -> str:
    s = int(secs)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _address(row: dict[str, Any]) -> str:
    host, port = str(row.get("address", "?")), row.get("port") or 0
    if not port:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_status(doc: dict[str, Any], protocol: str | None = None) -> str:
    """
    The text C{cfs-gateway status} prints for a C{GET /admin/clients} document:
    a summary per protocol, one line per connection (as C{smbstatus} lists
    sessions), then the lock table's clients.
    """
    rows = [r for r in doc.get("connections", []) if protocol in (None, r.get("protocol"))]
    summary = {p: v for p, v in doc.get("summary", {}).items() if protocol in (None, p)}
    holders = [h for h in doc.get("lock_clients", []) if protocol in (None, h.get("protocol"))]
    out = [f"{'protocol':10} {'conns':>6} {'opens':>6} {'locks':>6} {'leases':>6}"]
    for p, v in sorted(summary.items()):
        out.append(f"{p:10} {v['connections']:>6} {v['opens']:>6} {v['locks']:>6} {v['leases']:>6}")
    if not summary:
        out.append("(no client connections)")
    if rows:
        out.append("")
        out.append(
            f"{'id':>5} {'protocol':9} {'client':28} {'user':14} {'dialect':20} "
            f"{'opens':>5} {'locks':>5} {'leases':>6}  connected"
        )
        for r in rows:
            user = r.get("user") or (f"uid {r['uid']}" if r.get("uid") is not None else "-")
            out.append(
                f"{r['id']:>5} {r['protocol']:9} {_address(r):28} {user:14} "
                f"{r.get('dialect') or '-':20} {r.get('opens', 0):>5} {r.get('locks', 0):>5} "
                f"{r.get('leases', 0):>6}  {_duration(r.get('connected_secs', 0))}"
            )
    v4 = [(r, c) for r in rows for c in r.get("nfs4_clients") or ()]
    if v4:
        # As ganesha_mgr lists clients: who each is and the state it holds.
        out.append("")
        out.append("NFSv4 clients:")
        out.append(
            f"{'conn':>5} {'clientid':16} {'owner':32} {'uid':>6} {'sess':>4} {'opens':>5} "
            f"{'locks':>5} {'deleg r/w':>9} {'layouts':>7}  lease left"
        )
        seen: set[tuple[int, str]] = set()
        for r, cl in v4:
            if (r["id"], cl["clientid"]) in seen:
                continue
            seen.add((r["id"], cl["clientid"]))
            d, lay = cl.get("delegations") or {}, cl.get("layouts") or {}
            deleg = f"{d.get('read', 0)}/{d.get('write', 0)}"
            out.append(
                f"{r['id']:>5} {cl['clientid']:16} {str(cl.get('owner', ''))[:32]:32} "
                f"{cl.get('uid', '-'):>6} {len(cl.get('sessions') or ()):>4} "
                f"{cl.get('opens', 0):>5} {cl.get('locks', 0):>5} {deleg:>9} "
                f"{lay.get('read', 0) + lay.get('rw', 0):>7}  "
                f"{_duration(cl.get('lease_left_secs', 0))}"
            )
    nlm = [(r, c) for r in rows for c in r.get("nlm_clients") or ()]
    if nlm:
        out.append("")
        out.append("NLM lock clients by connection (the client host's NFSv3 locks):")
        out.append(
            f"{'conn':>5} {'client':28} {'caller_name':30} {'locks':>6} {'shares':>6} "
            f"{'waiting':>7}"
        )
        for r, cl in nlm:
            out.append(
                f"{r['id']:>5} {_address(r):28} {str(cl['caller_name'])[:30]:30} "
                f"{cl['locks']:>6} {cl['shares']:>6} {cl['waiting']:>7}"
            )
    if holders:
        out.append("")
        out.append("lock table clients:")
        out.append(f"{'protocol':10} {'client':36} {'locks':>6} {'shares':>6} {'waiting':>7}")
        for h in holders:
            out.append(
                f"{h['protocol']:10} {str(h['client'])[:36]:36} {h['locks']:>6} "
                f"{h['shares']:>6} {h['waiting']:>7}"
            )
    return "\n".join(out) + "\n"


def cmd_status(args: argparse.Namespace) -> int:
    r = _admin_cmd(args, "GET", "/admin/clients")
    if r is None:
        return 1
    status, body = r
    try:
        doc: Any = json.loads(body)
    except ValueError:
        doc = {"error": body.decode("utf-8", "replace")}
    if status != 200:
        _print_err(str(doc.get("error", f"HTTP {status}")))
        return 1
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        sys.stdout.write(format_status(doc, args.protocol))
    return 0


# ---------------------------------------------------------------------------
# quota


def _size(text: str) -> int:
    from claudefs_gateway.core._schema import parse_size

    try:
        return parse_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size (e.g. 20GB, 512MiB, 1000)"
        ) from None


def cmd_quota(args: argparse.Namespace) -> int:
    if args.quota_command == "report":
        r = _admin_cmd(args, "GET", "/admin/quota")
        if r is None:
            return 1
        status, body = r
        doc = (
            json.loads(body)
            if body.startswith(b"{")
            else {"error": body.decode("utf-8", "replace")}
        )
        if status != 200:
            _print_err(doc.get("error", f"HTTP {status}"))
            return 1
        if args.json:
            sys.stdout.write(json.dumps(doc, indent=2) + "\n")
            return 0
        rows: list[dict[str, Any]] = cast(list[dict[str, Any]], doc["quotas"])
        header = f"{'kind':6} {'id':>8} {'bytes':>14} {'soft':>14} {'hard':>14} {'inodes':>10} {'soft':>10} {'hard':>10}  grace"
        sys.stdout.write(header + "\n")
        for row in rows:
            grace = (
                "-"
                if row["grace_left_secs"] is None
                else (
                    "expired" if row["grace_left_secs"] <= 0 else f"{row['grace_left_secs']:.0f}s"
                )
            )
            sys.stdout.write(
                f"{row['kind']:6} {row['id']:>8} {row['bytes']:>14} {row['bytes_soft'] or '-':>14} "
                f"{row['bytes_hard'] or '-':>14} {row['inodes']:>10} {row['inodes_soft'] or '-':>10} "
                f"{row['inodes_hard'] or '-':>10}  {grace}\n"
            )
        return 0
    kind = "user" if args.quota_command == "set-user" else "group"
    ident = args.uid if kind == "user" else args.gid
    path = f"/admin/quota/{kind}/{ident}"
    if args.clear:
        r = _admin_cmd(args, "DELETE", path)
    else:
        limits = {
            "bytes_soft": args.soft or 0,
            "bytes_hard": args.hard or 0,
            "inodes_soft": args.inodes_soft or 0,
            "inodes_hard": args.inodes_hard or 0,
        }
        r = _admin_cmd(args, "PUT", path, json.dumps(limits).encode())
    if r is None:
        return 1
    status, body = r
    sys.stdout.write(body.decode("utf-8", "replace"))
    return 0 if status == 200 else 1


# ---------------------------------------------------------------------------
# user


def _users_file(args: argparse.Namespace) -> Any:
    from claudefs_gateway.vfs.service import users_path

    config = cfg.load(args.config) if args.config else cfg.default_config()
    path = users_path(config)
    if path is None:
        raise GatewayError("users are listed inline in the configuration file; edit them there")
    return path


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        if not line:
            raise GatewayError("no password on standard input")
        return line.rstrip("\r\n")
    import getpass

    if not sys.stdin.isatty():
        raise GatewayError("no terminal to ask for a password: use --password-stdin")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Again: "):
        raise GatewayError("the passwords differ")
    return first


def cmd_user(args: argparse.Namespace) -> int:
    import attrs

    from claudefs_gateway.vfs.identity import (
        User,
        load_users_file,
        new_access_key,
        new_secret_key,
        nt_hash,
        save_users_file,
    )

    try:
        path = _users_file(args)
        users = load_users_file(path)
        by_name = {u.name.lower(): u for u in users}
        sub = args.user_command
        if sub == "list":
            for u in users:
                groups = ",".join(str(g) for g in u.groups) or "-"
                flags = [f for f, on in (("smb", u.nt_hash), ("s3", u.s3_access_key)) if on]
                if u.s3_access_key and u.s3_create_buckets:
                    flags.append("mb")
                key = u.s3_access_key or "-"
                sys.stdout.write(
                    f"{u.name:16} uid={u.uid:<6} gid={u.gid:<6} groups={groups:12} "
                    f"access={','.join(flags) or '-':10} s3_key={key}\n"
                )
            return 0
        name = args.name
        existing = by_name.get(name.lower())
        if sub == "add":
            if existing is not None:
                raise GatewayError(f"user {name!r} exists")
            gids = tuple(int(g) for g in args.groups.split(",") if g) if args.groups else ()
            password = None if args.no_password else _read_password(args)
            user = User(
                name,
                args.uid,
                args.gid,
                gids,
                nt_hash(password) if password is not None else None,
                nfs4_name=args.nfs4_name,
                s3_create_buckets=not args.no_create_buckets,
            )
            if args.s3_keys:
                user = attrs.evolve(
                    user, s3_access_key=new_access_key(), s3_secret_key=new_secret_key()
                )
            _validate_user(user)
            users.append(user)
        elif existing is None:
            raise GatewayError(f"no user {name!r}")
        elif sub == "remove":
            users = [u for u in users if u is not existing]
        elif sub == "passwd":
            user = attrs.evolve(existing, nt_hash=nt_hash(_read_password(args)))
            users = [user if u is existing else u for u in users]
        elif sub == "s3-keys":
            user = attrs.evolve(
                existing, s3_access_key=new_access_key(), s3_secret_key=new_secret_key()
            )
            users = [user if u is existing else u for u in users]
        save_users_file(path, users)
    except (GatewayError, ValueError) as e:
        _print_err(str(e))
        return 1
    if sub in ("add", "s3-keys") and user.s3_access_key:
        sys.stdout.write(
            f"S3 access key: {user.s3_access_key}\nS3 secret key: {user.s3_secret_key}\n"
            "(the secret is shown once; it is stored in the users file, mode 600)\n"
        )
    sys.stdout.write(f"{sub}: {name}: done ({path})\n")
    return 0


def cmd_sse_key(args: argparse.Namespace) -> int:
    """
    C{sse-key rotate}: a new current SSE-S3 master key (new objects use it;
    the old ones stay, to read what was written under them). A running
    gateway picks it up at once (it re-reads the keyring when it changes).
    """
    from pathlib import Path

    from claudefs_gateway.s3.sse import KEYRING_FILE, Keyring

    config = cfg.load(args.config) if args.config else cfg.default_config()
    ring = Keyring(Path(config.data_dir) / KEYRING_FILE)
    kid = ring.rotate()
    print(f"SSE-S3 master key {kid} is current ({ring.path})")
    return 0


def _validate_user(user: Any) -> None:
    """Check a new user against the configuration schema's rules."""
    import yaml

    cfg.loads(yaml.safe_dump({"users": [user.to_dict()]}), "<new user>")


# ---------------------------------------------------------------------------
# store export | import


def _store_side(args: argparse.Namespace) -> Any:
    from claudefs_gateway.backend.transfer import EmbeddedSide, PostgresSide

    chunks = args.chunks
    if args.embedded:
        return EmbeddedSide(args.embedded, chunks)
    config = cfg.load(args.config)
    pg = config.meta_store.postgresql
    if config.meta_store.type != "postgresql" or pg is None:
        raise GatewayError(f"{args.config}: meta_store.type is not postgresql")
    return PostgresSide(pg.conninfo(), pg.schema, chunks)


def cmd_store(args: argparse.Namespace) -> int:
    """Move a namespace between stores (docs/postgresql.rst "Moving a namespace")."""
    from claudefs_gateway.backend.datadir import DataDir
    from claudefs_gateway.backend.transfer import export_namespace, import_namespace

    locks = []
    try:
        side = _store_side(args)
        # The embedded store and the chunk files must not be in use meanwhile.
        for path in (args.embedded, args.chunks):
            if path:
                from pathlib import Path

                Path(path).mkdir(parents=True, exist_ok=True)
                lock = DataDir(Path(path).absolute())
                lock.open()
                locks.append(lock)
        if args.store_command == "export":
            counts = export_namespace(side, args.dir)
            verb = "exported and verified"
        else:
            counts = import_namespace(args.dir, side)
            verb = "imported and verified"
    except (GatewayError, OSError) as e:
        _print_err(str(e))
        return 1
    finally:
        for lock in locks:
            lock.stopService()
    sys.stdout.write(
        f"{verb}: {counts.get('inode', 0)} inodes, {counts.get('dirent', 0)} entries, "
        f"{counts.get('xattr', 0)} xattrs, {counts.get('quota', 0)} quotas, "
        f"{counts.get('state', 0)} state keys\n"
    )
    return 0


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
    for role, text in (
        ("meta", "metadata server (port 7001)"),
        ("data", "data server (port 7002)"),
    ):
        sub.add_parser(
            role,
            help=f"run a ClaudeFS {text} (see: cfs-gateway {role} --help)",
            add_help=False,
        )
    v = sub.add_parser("validate-config", help="check a configuration file; exit 0 if valid")
    v.add_argument("--config", "-c", required=True)
    for name, helptext in (
        ("health", "print the running gateway's /health"),
        ("metrics", "print the running gateway's Prometheus metrics"),
        ("drain", "stop accepting connections, let requests finish, then exit"),
        ("status", "who is connected over each protocol, with opens, locks and leases"),
    ):
        a = sub.add_parser(name, help=helptext)
        a.add_argument("--config", "-c", help="find the admin API from this configuration")
        a.add_argument("--admin", help="admin API base URL, e.g. http://127.0.0.1:8080")
        a.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for an answer")
        if name == "drain":
            a.add_argument("--no-wait", action="store_true", help="return once the drain has begun")
        if name == "status":
            a.add_argument("--json", action="store_true", help="the admin API's document as is")
            a.add_argument("--protocol", "-p", help="only this protocol (nfs3, mount, s3, smb...)")
    q = sub.add_parser("quota", help="user and group quotas of a running gateway")
    qsub = q.add_subparsers(dest="quota_command", metavar="QUOTA_COMMAND", required=True)
    for name, idflag in (("set-user", "--uid"), ("set-group", "--gid")):
        a = qsub.add_parser(name, help=f"set (or --clear) the limits of one {name[4:]}")
        a.add_argument(idflag, type=int, required=True)
        a.add_argument("--soft", type=_size, help="soft byte limit, e.g. 20GB")
        a.add_argument("--hard", type=_size, help="hard byte limit, e.g. 25GB")
        a.add_argument("--inodes-soft", type=int)
        a.add_argument("--inodes-hard", type=int)
        a.add_argument("--clear", action="store_true", help="back to the configured defaults")
    rep = qsub.add_parser("report", help="usage and limits of every id")
    rep.add_argument("--json", action="store_true")
    for a in (*qsub.choices.values(),):
        a.add_argument("--config", "-c", help="find the admin API from this configuration")
        a.add_argument("--admin", help="admin API base URL")
        a.add_argument("--timeout", type=float, default=60.0)

    u = sub.add_parser("user", help="maintain the users file (SMB passwords, S3 keys)")
    usub = u.add_subparsers(dest="user_command", metavar="USER_COMMAND", required=True)
    add = usub.add_parser("add", help="add a user")
    add.add_argument("name")
    add.add_argument("--uid", type=int, required=True)
    add.add_argument("--gid", type=int, required=True)
    add.add_argument("--groups", help="supplementary gids, comma-separated")
    add.add_argument("--nfs4-name", help="NFSv4 owner name, user@domain")
    add.add_argument("--s3-keys", action="store_true", help="generate an S3 access key and secret")
    add.add_argument(
        "--no-create-buckets",
        action="store_true",
        help="withhold the S3 bucket right (creating buckets then needs write permission "
        "on s3.root)",
    )
    add.add_argument("--no-password", action="store_true", help="no SMB password")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the SMB password from stdin"
    )
    pw = usub.add_parser("passwd", help="set a user's SMB password")
    pw.add_argument("name")
    pw.add_argument("--password-stdin", action="store_true")
    keys = usub.add_parser("s3-keys", help="give a user a new S3 access key and secret")
    keys.add_argument("name")
    rm = usub.add_parser("remove", help="remove a user")
    rm.add_argument("name")
    usub.add_parser("list", help="list users (no secrets)")
    st = sub.add_parser(
        "store", help="move a namespace between the embedded store and PostgreSQL (servers stopped)"
    )
    stsub = st.add_subparsers(dest="store_command", metavar="STORE_COMMAND", required=True)
    for name, helptext in (
        ("export", "write the namespace (rows, file bytes, checksums) to a new directory"),
        ("import", "load an export into an empty store, then verify every checksum"),
    ):
        a = stsub.add_parser(name, help=helptext)
        a.add_argument("dir", help="the export directory")
        where = a.add_mutually_exclusive_group(required=True)
        where.add_argument(
            "--embedded", metavar="DIR", help="an embedded store's directory (meta.sqlite3)"
        )
        where.add_argument(
            "--config", "-c", metavar="FILE", help="a configuration whose meta_store is postgresql"
        )
        a.add_argument(
            "--chunks",
            metavar="DIR",
            help="file bytes in this data server's --data-dir (with --config, required)",
        )
    for a in usub.choices.values():
        a.add_argument("--config", "-c", help="the gateway configuration (where the users file is)")
    k = sub.add_parser("sse-key", help="the S3 server-side encryption master keys")
    ksub = k.add_subparsers(dest="sse_command", metavar="SSE_COMMAND", required=True)
    rot = ksub.add_parser("rotate", help="make a new SSE-S3 master key current (old ones stay)")
    rot.add_argument("--config", "-c", help="the gateway configuration (where the data is)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in ("start", "meta", "data"):
        # Before anything imports twisted.internet.reactor (core/reactor.py).
        from claudefs_gateway.core import reactor

        reactor.install()
    if args_list and args_list[0] == "start":
        return cmd_start(args_list[1:])
    if args_list and args_list[0] in ("meta", "data"):
        return cmd_server(args_list[0], args_list[1:])
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
        "status": cmd_status,
        "quota": cmd_quota,
        "user": cmd_user,
        "store": cmd_store,
        "sse-key": cmd_sse_key,
    }[args.command]
    return handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
