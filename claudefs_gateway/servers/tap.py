# -*- test-case-name: tests.servers.test_service -*-
"""
C{twistd claudefs-meta} / C{twistd claudefs-data} and C{cfs-gateway meta|data}.

::

    cfs-gateway meta --data-dir /var/lib/claudefs/meta --listen tcp:7001 \\
        --admin tcp:8081:interface=127.0.0.1 --data-server data-1:7002
    cfs-gateway data --data-dir /var/lib/claudefs/data --listen tcp:7002 \\
        --admin tcp:8082:interface=127.0.0.1

C{--listen} takes any endpoint: C{tcp:}, C{mtls:} (mutual TLS) or C{rdma:}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from claudefs_gateway.core import config as cfg
from claudefs_gateway.errors import ConfigError

__all__ = ["MetaOptions", "DataOptions", "makeService"]

_ROLES = {"meta": (7001, 8081), "data": (7002, 8082)}


class _ServerOptions(usage.Options):
    role = "meta"

    optParameters: list[list[Any]] = [
        ["data-dir", None, None, "Where the store lives (required)."],
        ["listen", None, None, "RPC endpoint (default tcp:<port>:interface=127.0.0.1)."],
        ["admin", None, None, "Admin HTTP endpoint for /health and /metrics."],
        ["log-level", None, "info", "debug, info, warn, error, critical."],
        ["log-format", None, "human", "human or json (cfs-gateway meta|data)."],
        [
            "config",
            None,
            None,
            "meta: a gateway configuration file whose meta_store section names the store.",
        ],
        [
            "stall-timeout",
            None,
            "30",
            "Seconds a client may leave replies unread before it is cut off.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self.data_servers: list[str] = []
        self.settings: Any = None

    def postOptions(self) -> None:
        from claudefs_gateway.servers.service import ServerSettings

        if not self["data-dir"]:
            raise usage.UsageError("--data-dir is required")
        port, admin_port = _ROLES[self.role]
        listen = self["listen"] or f"tcp:{port}:interface=127.0.0.1"
        admin = self["admin"] or f"tcp:{admin_port}:interface=127.0.0.1"
        text = f"admin:\n  bind: {listen!r}\n"
        try:
            parsed = cfg.loads(text, "--listen").admin.bind
            parsed_admin = cfg.loads(f"admin:\n  bind: {admin!r}\n", "--admin").admin.bind
        except ConfigError as e:
            raise usage.UsageError(e.render()) from None
        if self["log-format"] not in ("human", "json"):
            raise usage.UsageError(f"unknown log format {self['log-format']!r}")
        if self["log-level"] not in ("debug", "info", "warn", "error", "critical"):
            raise usage.UsageError(f"unknown log level {self['log-level']!r}")
        for address in self.data_servers:
            if address.startswith("unix:/"):
                continue
            host, sep, p = address.rpartition(":")
            if not sep or not host or not p.isdigit():
                raise usage.UsageError(f"--data-server {address!r} is not host:port")
        try:
            stall = float(self["stall-timeout"])
        except ValueError:
            raise usage.UsageError("--stall-timeout takes seconds") from None
        if not 0.1 <= stall <= 3600:
            raise usage.UsageError("--stall-timeout must be between 0.1 and 3600 seconds")
        mirrors = 1
        if self.role == "meta":
            try:
                mirrors = int(self["mirrors"])
            except ValueError:
                raise usage.UsageError("--mirrors takes a number") from None
            if not 1 <= mirrors <= max(1, len(self.data_servers)):
                raise usage.UsageError("--mirrors must be between 1 and the number of data servers")
        nfs_listen = None
        if self.role == "data" and self["nfs-listen"]:
            try:
                nfs_listen = cfg.loads(
                    f"admin:\n  bind: {self['nfs-listen']!r}\n", "--nfs-listen"
                ).admin.bind
            except ConfigError as e:
                raise usage.UsageError(e.render()) from None
        meta_store = None
        if self["config"]:
            if self.role != "meta":
                raise usage.UsageError("--config is for the meta server")
            try:
                meta_store = cfg.load(self["config"]).meta_store
            except ConfigError as e:
                raise usage.UsageError(e.render()) from None
        self.settings = ServerSettings(
            data_dir=Path(self["data-dir"]).absolute(),
            listen=parsed,
            admin=parsed_admin,
            data_servers=tuple(self.data_servers),
            mirrors=mirrors,
            data_servers_moved=bool(self.role == "meta" and self["data-servers-moved"]),
            log_level=self["log-level"],
            stall_timeout=stall,
            meta_store=meta_store,
            nfs_listen=nfs_listen,
            event_marks=(
                Path(self["event-marks"]).absolute()
                if self.role == "meta" and self["event-marks"]
                else None
            ),
        )


class MetaOptions(_ServerOptions):
    role = "meta"
    synopsis = (
        "--data-dir DIR [--listen tcp:7001] [--admin ENDPOINT] [--data-server HOST:PORT]..."
        " [--mirrors N]"
        " [--config FILE]"
    )
    longdesc = (
        "The ClaudeFS metadata server: the namespace, from an embedded SQLite store or, with"
        " --config naming meta_store.type postgresql, from PostgreSQL."
    )

    optParameters: list[list[Any]] = [
        *_ServerOptions.optParameters,
        [
            "mirrors",
            None,
            "1",
            "Copies of each stripe on consecutive data servers, for new namespaces (pNFS "
            "mirrors; docs/pnfs.rst).",
        ],
        [
            "event-marks",
            None,
            None,
            "A directory on this host where the count of events pushed to each subscribed "
            "gateway is kept (docs/workers.rst); gateways on this host with "
            "backend.event_marks naming it read files' sizes without a round trip. "
            "--workers passes it. Ignored over PostgreSQL.",
        ],
    ]
    optFlags: list[list[Any]] = [
        [
            "data-servers-moved",
            None,
            "The data servers of the stored layout are now at the --data-server addresses "
            "(the same servers, in the same order): the layout takes the new addresses. "
            "--workers passes it, its unix sockets being new at each start.",
        ],
    ]

    def opt_data_server(self, address: str) -> None:
        """A data server (host:port or unix:/path) new namespaces place file bytes on (repeatable)."""
        self.data_servers.append(address)


class DataOptions(_ServerOptions):
    role = "data"
    synopsis = "--data-dir DIR [--listen tcp:7002] [--admin ENDPOINT] [--nfs-listen ENDPOINT]"
    longdesc = (
        "The ClaudeFS data server: file bytes as chunk files; with --nfs-listen also a pNFS"
        " flexfiles data server (NFSv3) for clients of gateways with nfs.pnfs.enabled."
    )
    optParameters: list[list[Any]] = [
        *_ServerOptions.optParameters,
        [
            "nfs-listen",
            None,
            None,
            "pNFS: the NFSv3 data-server endpoint (e.g. tcp:20490:interface=127.0.0.1); "
            "none: no pNFS.",
        ],
    ]


def makeService(options: _ServerOptions) -> IService:
    """twistd's entry for both plugins."""
    from twisted.internet import reactor

    from claudefs_gateway.servers.service import build_data, build_meta

    build = build_meta if options.role == "meta" else build_data
    return build(options.settings, reactor)
