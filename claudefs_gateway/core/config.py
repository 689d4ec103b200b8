# -*- test-case-name: tests.core.test_config -*-
"""
The gateway's configuration: one YAML file, validated into frozen attrs objects.

Keys follow the original design documents (C{nfs}, C{s3}, C{smb} with
C{multichannel}, C{metadata_servers}, C{connection_pool}, C{circuit_breaker},
C{quota}, C{cache}) plus C{backend}, C{exports}, C{users} and C{admin}.
C{docs/configuration.rst} is generated from this module (L{reference}); a test
keeps it and C{docs/gateway.example.yaml} in step with the schema.

Every listener is a Twisted endpoint description. A C{bind} accepts the
design documents' C{{addr, port}} mapping, a C{"host:port"} shorthand, a bare
port, or any server endpoint string (C{"ssl:9000:privateKey=k.pem"}).
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import attrs

from claudefs_gateway.core._schema import (
    Builder,
    Custom,
    LineMap,
    Where,
    build,
    join,
    line_of,
    load_yaml,
    reference_rst,
    set_override,
    setting,
    walk,
)
from claudefs_gateway.errors import ConfigError, Problem

__all__ = [
    "Config",
    "ConfigError",
    "Listen",
    "load",
    "loads",
    "default_config",
    "reference",
    "key_paths",
    "PROTOCOLS",
]

PROTOCOLS = ("nfs", "s3", "smb")

MAX_U32 = 2**32 - 1
MAX_I64 = 2**63 - 1

# Endpoint types a listener may name. rdma and mtls come from our endpoint-parser
# plugins (twisted/plugins/claudefs_endpoints.py): what validates here also starts.
_ENDPOINT_TYPES = ("tcp", "tcp6", "ssl", "unix", "systemd", "rdma", "mtls", "reuseport")
_ENDPOINT_RE = re.compile(r"^([a-z][a-z0-9+-]*):")


def rdma_endpoints_available() -> bool:
    """
    Whether an C{rdma:} server endpoint parser is installed (a Twisted
    C{IStreamServerEndpointStringParser} plugin with prefix C{rdma}).

    C{start} resolves listeners with C{serverFromString}, which finds endpoint
    types through exactly these plugins, so validation asks the same question
    and the two cannot disagree about an C{rdma:} listener.
    """
    from twisted.internet.interfaces import IStreamServerEndpointStringParser
    from twisted.plugin import getPlugins

    return any(
        getattr(p, "prefix", None) == "rdma" for p in getPlugins(IStreamServerEndpointStringParser)
    )


def _split_description(desc: str) -> tuple[str, list[str], dict[str, str]]:
    """Split a Twisted endpoint description into kind, positional and keyword args."""
    parts: list[str] = []
    cur = []
    escaped = False
    for ch in desc:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    kind, rest = parts[0], parts[1:]
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for p in rest:
        if "=" in p:
            k, v = p.split("=", 1)
            kwargs[k] = v
        else:
            args.append(p)
    return kind, args, kwargs


def _escape(host: str) -> str:
    return host.replace("\\", "\\\\").replace(":", "\\:")


@attrs.frozen
class Listen(Custom):
    """
    Where a listener binds, as a Twisted server endpoint description.

    @ivar description: passed to C{serverFromString}.
    @ivar host: the interface for TCP/SSL endpoints, else L{None}.
    @ivar port: the port for TCP/SSL endpoints (0 = any free port), else L{None}.
    """

    description: str
    host: str | None = None
    port: int | None = None

    type_doc = (
        "endpoint (``{addr, port}``, ``host:port``, a port, or ``tcp:…``/``ssl:…``/``unix:…``)"
    )

    @property
    def shown(self) -> str:
        if self.host is not None and self.port is not None:
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"{host}:{self.port}"
        return self.description

    @property
    def is_tcp(self) -> bool:
        return self.port is not None

    @property
    def is_loopback(self) -> bool:
        """True for TCP on a loopback interface and for UNIX sockets."""
        if self.description.startswith("unix:"):
            return True
        if self.host is None:
            return False
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @classmethod
    def tcp(cls, host: str, port: int) -> Listen:
        kind = "tcp6" if ":" in host else "tcp"
        return cls(f"{kind}:port={port}:interface={_escape(host)}", host, port)

    def with_port(self, port: int) -> Listen:
        """The same listener on another port (tests use port 0)."""
        if self.host is None:
            raise ValueError(f"{self.description} has no port")
        kind, args, kwargs = _split_description(self.description)
        if kind in ("tcp", "tcp6"):
            return Listen.tcp(self.host, port)
        kwargs["port"] = str(port)
        parts = [kind, *args[1:], *(f"{k}={v}" for k, v in kwargs.items())]
        return Listen(":".join(parts), self.host, port)

    @classmethod
    def convert(cls, raw: Any, default: Any, path: str, where: Where, b: Builder) -> Any:
        dflt_host = default.host if isinstance(default, Listen) and default.host else "0.0.0.0"
        dflt_port = default.port if isinstance(default, Listen) and default.port is not None else 0
        if isinstance(raw, bool):
            b.report(path, where, "expected an endpoint, got a boolean")
            return b.INVALID
        if isinstance(raw, int):
            return cls._hostport(dflt_host, raw, path, where, b, join(path, "port"))
        if isinstance(raw, dict):
            ok = True
            for key in raw:
                if key not in ("addr", "port"):
                    near = "; did you mean 'addr'?" if key in ("address", "host", "ip") else ""
                    b.report(join(path, key), line_of(raw, key), f"unknown key{near}")
                    ok = False
            host = raw.get("addr", dflt_host)
            port = raw.get("port", dflt_port)
            if not isinstance(host, str):
                b.report(join(path, "addr"), line_of(raw, "addr"), "expected an IP address string")
                ok = False
            if isinstance(port, bool) or not isinstance(port, int):
                b.report(join(path, "port"), line_of(raw, "port"), "expected an integer port")
                ok = False
            if not ok:
                return b.INVALID
            return cls._hostport(
                host,
                port,
                path,
                line_of(raw, "port") or where,
                b,
                join(path, "port"),
                host_where=line_of(raw, "addr") or where,
            )
        if not isinstance(raw, str):
            b.report(path, where, "expected an endpoint string or {addr, port} mapping")
            return b.INVALID
        m = _ENDPOINT_RE.match(raw)
        if m and m.group(1) in _ENDPOINT_TYPES:
            return cls._description(raw, path, where, b)
        if m and not raw[m.end() :].isdigit() and "." not in m.group(1):
            b.report(
                path,
                where,
                f"unknown endpoint type {m.group(1)!r} (known: {', '.join(_ENDPOINT_TYPES)})",
            )
            return b.INVALID
        # host:port shorthand, as the seeds' CLI takes it ("0.0.0.0:9000", ":9000").
        host, sep, port_s = raw.rpartition(":")
        if not sep:
            b.report(path, where, f"{raw!r} is not host:port or an endpoint description")
            return b.INVALID
        host = host.strip("[]") or dflt_host
        if not port_s.isdigit():
            b.report(path, where, f"port {port_s!r} is not a number")
            return b.INVALID
        return cls._hostport(host, int(port_s), path, where, b, path)

    @classmethod
    def _hostport(
        cls,
        host: str,
        port: int,
        path: str,
        where: Where,
        b: Builder,
        port_path: str,
        host_where: Where = None,
    ) -> Any:
        ok = True
        if not 0 <= port <= 65535:
            b.report(port_path, where, f"port {port} is out of range 0..65535")
            ok = False
        if host != "localhost":
            try:
                ipaddress.ip_address(host)
            except ValueError:
                b.report(
                    join(path, "addr") if port_path != path else path,
                    host_where or where,
                    f"{host!r} is not an IP address",
                )
                ok = False
        return cls.tcp(host, port) if ok else b.INVALID

    @classmethod
    def _description(cls, raw: str, path: str, where: Where, b: Builder) -> Any:
        kind, args, kwargs = _split_description(raw)
        host: str | None = None
        port: int | None = None
        if kind in ("tcp", "tcp6", "ssl", "rdma", "mtls", "reuseport"):
            port_s = kwargs.get("port", args[0] if args else None)
            if port_s is None or not port_s.isdigit():
                b.report(path, where, f"{kind} endpoint needs a numeric port")
                return b.INVALID
            port = int(port_s)
            if not 0 <= port <= 65535:
                b.report(path, where, f"port {port} is out of range 0..65535")
                return b.INVALID
            host = kwargs.get("interface", "::" if kind == "tcp6" else "0.0.0.0")
        if kind == "rdma" and not rdma_endpoints_available():
            b.report(
                path,
                where,
                "rdma: listeners are not available in this build (no rdma endpoint parser "
                "is installed); use a tcp: listener",
            )
            return b.INVALID
        if kind == "unix" and not ((args and args[0]) or kwargs.get("address")):
            b.report(path, where, "unix endpoint needs a socket path")
            return b.INVALID
        if kind == "ssl":
            for key in ("privateKey", "certKey"):
                f = kwargs.get(key)
                if f is not None and not os.path.exists(f):
                    b.report(path, where, f"{key} file does not exist")
                    return b.INVALID
            if "privateKey" not in kwargs:
                b.report(path, where, "ssl endpoint needs privateKey=")
                return b.INVALID
        if kind == "mtls":
            for key in ("certKey", "privateKey", "caCerts"):
                f = kwargs.get(key)
                if f is None:
                    b.report(path, where, f"mtls endpoint needs {key}=")
                    return b.INVALID
                if not os.path.exists(f):
                    b.report(path, where, f"{key} file does not exist")
                    return b.INVALID
        if kind == "rdma":
            unknown = set(kwargs) - {"port", "device", "interface", "backlog"}
            if unknown:
                b.report(path, where, f"unknown rdma option {sorted(unknown)[0]!r}")
                return b.INVALID
        return cls(raw, host, port)


@attrs.frozen
class Network(Custom):
    """An allowed client network (CIDR or single address)."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network

    type_doc = "network (``10.0.0.0/8``, ``192.168.1.5``, ``::1``)"

    def __str__(self) -> str:
        return str(self.network)

    @classmethod
    def parse(cls, text: str) -> Network:
        return cls(ipaddress.ip_network(text, strict=False))

    @classmethod
    def convert(cls, raw: Any, default: Any, path: str, where: Where, b: Builder) -> Any:
        if not isinstance(raw, str):
            b.report(path, where, f"expected a network string, got {type(raw).__name__}")
            return b.INVALID
        try:
            return cls.parse(raw)
        except ValueError:
            b.report(path, where, f"{raw!r} is not a network (e.g. 10.0.0.0/8)")
            return b.INVALID

    def __contains__(self, address: str) -> bool:
        parsed = _ip_address(address)
        return parsed is not None and parsed in self.network


@functools.lru_cache(maxsize=1024)
def _ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A client address parsed once (every request checks it against the export's networks)."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _any_network() -> list[Network]:
    return [Network.parse("0.0.0.0/0"), Network.parse("::/0")]


_NAME_RE = re.compile(r"^[A-Za-z0-9._$-]{1,80}$")


def _check_ns_path(b: Builder, path: str, where: Where, value: str) -> None:
    if not value.startswith("/"):
        b.report(path, where, "must be an absolute path in the namespace (start with /)")
    elif any(part in (".", "..") for part in value.split("/")):
        b.report(path, where, "must not contain . or .. components")


# ---------------------------------------------------------------------------
# Sections.


@attrs.frozen(kw_only=True)
class ExportRules:
    """Who may use an export and as whom; shared by NFS exports and SMB shares."""

    path: str = setting(
        doc="Directory in the gateway's namespace that is exported, e.g. ``/export``."
    )
    read_only: bool = setting(False, doc="Refuse every change made through this export.")
    root_squash: bool = setting(
        True, doc="Map uid 0 and gid 0 from clients to ``anonuid``/``anongid``."
    )
    all_squash: bool = setting(False, doc="Map every client identity to ``anonuid``/``anongid``.")
    anonuid: int = setting(65534, min=0, max=MAX_U32, doc="uid that squashed requests run as.")
    anongid: int = setting(65534, min=0, max=MAX_U32, doc="gid that squashed requests run as.")
    clients: list[Network] = setting(
        factory=_any_network,
        shown_default="0.0.0.0/0, ::/0",
        doc="Client networks allowed to use this export; enforced at mount and on every call.",
    )
    dir_uid: int | None = setting(
        None,
        min=0,
        max=MAX_U32,
        shown_default="left as it is (0 when created)",
        doc="Owner uid given to the export directory at start: the way to hand a fresh "
        "export to a user (with ``root_squash``, no client can chown it).",
    )
    dir_gid: int | None = setting(
        None,
        min=0,
        max=MAX_U32,
        shown_default="left as it is (0 when created)",
        doc="Owner gid given to the export directory at start.",
    )
    dir_mode: int | None = setting(
        None,
        min=0,
        max=0o7777,
        shown_default="left as it is (0755 when created)",
        doc="Mode given to the export directory at start, e.g. ``01777`` (octal in YAML) "
        "for a shared scratch area.",
    )

    def check(self, b: Builder, path: str, raw: Any) -> None:
        _check_ns_path(b, join(path, "path"), line_of(raw, "path"), self.path)

    def allows(self, address: str) -> bool:
        return any(address in net for net in self.clients)


@attrs.frozen(kw_only=True)
class Export(ExportRules):
    """An export served over NFS and/or as an SMB share."""

    name: str | None = setting(
        None,
        shown_default="last component of path",
        doc="Share name for SMB and the export's label; unique.",
    )
    protocols: list[Literal["nfs", "smb"]] = setting(
        factory=lambda: ["nfs", "smb"],
        shown_default="nfs, smb",
        doc="Which file protocols serve this export.",
    )
    browseable: bool = setting(True, doc="Listed by SMB share enumeration (``smbclient -L``).")
    encrypt: Literal["default", "required"] = setting(
        "default",
        doc="SMB: ``required`` makes every request to this share arrive encrypted (SMB 3); "
        "``default`` follows ``smb.encrypt``.",
    )
    ca: bool = setting(
        False,
        doc="SMB: a continuously available share. SMB 3 clients may ask for persistent "
        "handles on it (MS-SMB2 3.3.5.9.10), granted without an oplock or lease; their "
        "opens, share modes, leases and byte-range locks are kept in the backend's state "
        "store as they change, so a gateway killed and started again (``backend: remote``: "
        "any gateway on the same meta server) honours their reconnects and keeps other "
        "clients out of the files until the handles' timeouts. With ``backend: embedded`` "
        "the one gateway's own store keeps them (a restart of that gateway): docs/smb.rst.",
    )

    @property
    def share_name(self) -> str:
        return self.name or (self.path.rstrip("/").rsplit("/", 1)[-1] or "root")

    def check(self, b: Builder, path: str, raw: Any) -> None:
        super().check(b, path, raw)
        if self.name is not None and not _NAME_RE.match(self.name):
            b.report(
                join(path, "name"), line_of(raw, "name"), "must be 1-80 letters, digits, or . _ $ -"
            )


@attrs.frozen(kw_only=True)
class NfsExport(ExportRules):
    """An export as the design documents write it under C{nfs.exports}: NFS only."""

    def as_export(self) -> Export:
        return Export(
            path=self.path,
            read_only=self.read_only,
            root_squash=self.root_squash,
            all_squash=self.all_squash,
            anonuid=self.anonuid,
            anongid=self.anongid,
            clients=self.clients,
            dir_uid=self.dir_uid,
            dir_gid=self.dir_gid,
            dir_mode=self.dir_mode,
            protocols=["nfs"],
            browseable=False,
        )


@attrs.frozen(kw_only=True)
class NfsV4:
    enabled: bool = setting(
        True, doc="Serve NFSv4.1 and 4.2 (program 100003 version 4) on ``nfs.bind``."
    )
    minor_versions: list[Literal[1, 2]] = setting(
        factory=lambda: [1, 2],
        doc="Minor versions served; any other (4.0 included) answers NFS4ERR_MINOR_VERS_MISMATCH.",
    )
    lease_secs: int = setting(
        90,
        min=10,
        max=3600,
        doc="Client lease: a client silent this long loses its opens and locks.",
    )
    only_numeric_owners: bool = setting(
        True,
        doc="Owners as numeric strings (``1000``), as clients without an idmapper want "
        "(Ganesha's ``Only_Numeric_Owners``); false: ``user@domain`` from the user database.",
    )
    domain: str = setting("localdomain", doc="NFSv4 id mapping domain of ``user@domain`` owners.")
    max_clients: int = setting(
        1024,
        min=1,
        max=1_000_000,
        doc="Client records at once (Ganesha's ``Max_Client_Ids``); more answer NFS4ERR_DELAY.",
    )
    max_sessions_per_client: int = setting(8, min=1, max=256, doc="Sessions one client may hold.")
    max_slots: int = setting(
        64, min=1, max=1024, doc="Most slots (concurrent requests) per session."
    )
    max_ops_per_compound: int = setting(
        64, min=16, max=1024, doc="Most operations per COMPOUND a session accepts."
    )
    reply_cache_size: int = setting(
        8192,
        min=1024,
        max=1024 * 1024,
        size=True,
        doc="Largest reply kept per slot for retries (``ca_maxresponsesize_cached``).",
    )
    max_open_states_per_client: int = setting(
        4096,
        min=1,
        max=1_000_000,
        doc="Opens one client may hold (Ganesha's ``Max_Open_States_Per_Client``).",
    )
    max_locks_per_client: int = setting(
        4096, min=1, max=1_000_000, doc="Lock states (lock-owner, file) one client may hold."
    )
    async_copy_min: int = setting(
        8 * 1024 * 1024,
        min=0,
        size=True,
        doc="Smallest COPY run in the background (answered at once, CB_OFFLOAD when done).",
    )
    delegations: Literal["read_write", "read", "none"] = setting(
        "read_write",
        doc='Delegations granted on OPEN (docs/nfs.rst "Delegations"): read and write, '
        "read only, or none. A recalled client has ``leases.recall_timeout_secs`` or one "
        "``lease_secs``, whichever is longer, to return one before it is revoked.",
    )


@attrs.frozen(kw_only=True)
class PnfsAdvertise:
    data_server: str = setting(
        doc="A data server as the gateway reaches it (``host:port`` of its ClaudeFS RPC, "
        "as the meta server's layout names it)."
    )
    address: str = setting(
        doc="Its NFSv3 data-server listener as clients reach it: ``ip:port``, or ``ip`` "
        "to keep the port the data server listens on."
    )

    def check(self, b: Builder, path: str, raw: Any) -> None:
        host, sep, port = self.address.rpartition(":")
        if sep and port.isdigit() and host:
            candidate = host.strip("[]")
        else:
            candidate = self.address.strip("[]")
        try:
            ipaddress.ip_address(candidate)
        except ValueError:
            b.report(
                join(path, "address"),
                line_of(raw, "address"),
                "must be an IP address (clients get it as a netaddr4), with an optional :port",
            )


@attrs.frozen(kw_only=True)
class NfsPnfs:
    enabled: bool = setting(
        False,
        doc="Be a pNFS metadata server (flexible file layouts, RFC 8435): NFSv4.1 clients "
        "read and write file bytes straight to the data servers that run with "
        "``--nfs-listen``. Only with ``backend: remote``; see docs/pnfs.rst.",
    )
    advertise_host: str | None = setting(
        None,
        doc="The IP address clients reach every data server at, when it differs from how "
        "the gateway reaches them (the port stays the data server's); unset: the data "
        "server's own listening address.",
    )
    advertise: list[PnfsAdvertise] = setting(
        factory=list,
        doc="Per data server, the NFSv3 address clients reach it at (wins over "
        "``advertise_host``).",
    )
    ds_uid: int = setting(
        65534,
        min=0,
        max=2**32 - 2,
        doc="The synthetic uid layouts tell clients to send to the data servers "
        "(RFC 8435 §2.2), which they check against the file handle.",
    )
    ds_gid: int = setting(65534, min=0, max=2**32 - 2, doc="The synthetic gid, likewise.")
    probe_interval_secs: float = setting(
        5.0,
        min=0.1,
        max=3600,
        doc="How often a data server marked down is probed until it answers again.",
    )

    def check(self, b: Builder, path: str, raw: Any) -> None:
        if self.advertise_host:
            try:
                ipaddress.ip_address(self.advertise_host)
            except ValueError:
                b.report(
                    join(path, "advertise_host"),
                    line_of(raw, "advertise_host"),
                    "must be an IP address (clients get it as a netaddr4)",
                )


@attrs.frozen(kw_only=True)
class Nfs:
    enabled: bool = setting(True, doc="Serve NFSv3 (with MOUNT and NLM) and NFSv4.1/4.2.")
    bind: Listen = setting(
        Listen.tcp("0.0.0.0", 2049), doc="NFS listener (NFSv3, NLM and NFSv4 share it)."
    )
    mount_bind: Listen = setting(Listen.tcp("0.0.0.0", 20048), doc="MOUNT protocol listener.")
    exports: list[NfsExport] = setting(
        factory=list,
        doc="NFS-only exports, as the design documents write them; "
        "top-level ``exports`` serve NFS and SMB.",
    )
    portmapper: Literal["embedded", "system", "off"] = setting(
        "embedded",
        doc="``embedded`` serves rpcbind v2-4 on ``portmap_bind``; ``system`` registers "
        "with a running rpcbind; ``off`` does neither.",
    )
    portmap_bind: Listen = setting(Listen.tcp("0.0.0.0", 111), doc="Embedded portmapper listener.")
    udp: bool = setting(
        True,
        doc="Also serve NFSv3, MOUNT, NLM and the portmapper over UDP on the same ports "
        "(TCP and UDP listeners need a host and port).",
    )
    max_record_size: int = setting(
        2 * 1024 * 1024,
        min=64 * 1024,
        max=64 * 1024 * 1024,
        size=True,
        doc="Largest RPC record accepted over TCP; a client sending more is disconnected. "
        "READ and WRITE sizes (rtmax, wtmax) are the largest power of two 4 KiB below it.",
    )
    max_requests_per_connection: int = setting(
        128,
        min=1,
        max=65536,
        doc="Calls one connection may have in flight; beyond it the gateway stops reading "
        "from that connection until some finish.",
    )
    max_queued_bytes_per_connection: int = setting(
        8 * 1024 * 1024,
        min=1024 * 1024,
        max=1024 * 1024 * 1024,
        size=True,
        doc="Bytes one TCP connection may hold in calls being served plus the replies they may "
        "return (a READ or READDIR counts its count, a COMPOUND its READs' and READDIRs') plus "
        "replies queued unread; beyond it, or while the client leaves replies unread, the "
        "gateway stops reading from that connection (TCP back-pressure) until it drains. "
        "A single call larger than this still runs, alone. 8 MiB is eight 1 MiB READs or "
        "WRITEs in flight: a single client's sequential reads and writes run as fast as with "
        "32 MiB (docs/bench.rst), and a client that reads no replies holds a quarter as much.",
    )
    idle_timeout_secs: float = setting(
        360.0,
        min=0,
        max=7 * 86400,
        doc="A TCP connection (NFS or MOUNT) with no call arriving and none in flight for this "
        "long is closed, as knfsd closes idle connections after about 6 minutes; clients "
        "reconnect when they next need to (an NFSv4.1 client renews its lease well within "
        "it). 0 = never.",
    )
    partial_record_timeout_secs: float = setting(
        60.0,
        min=0,
        max=3600,
        doc="A TCP connection holding a record begun but not completed for this long "
        "(half-open or dribbling clients) is closed. 0 = never.",
    )
    drc_entries: int = setting(
        4096,
        min=0,
        max=1_000_000,
        doc="Replies of non-idempotent calls kept for retransmissions (duplicate request "
        "cache); 0 disables it.",
    )
    grace_secs: int = setting(
        90,
        min=0,
        max=3600,
        doc="After a restart, how long NLM and NFSv4 clients that held locks or opens may "
        "reclaim them before new ones are granted (only when the previous run had such "
        "clients; NFSv4 alone ends it early once all of them reclaimed).",
    )
    nlm_grace_secs: int | None = setting(
        None,
        min=0,
        max=3600,
        doc="Deprecated: the older name of ``grace_secs``; when set, it is used instead.",
    )
    v4: NfsV4 = setting(factory=NfsV4, doc="NFSv4.1 and 4.2.")
    pnfs: NfsPnfs = setting(factory=NfsPnfs, doc="pNFS: the gateway as metadata server.")

    @property
    def grace(self) -> int:
        """The grace period in seconds (``grace_secs``, or the deprecated name)."""
        return self.grace_secs if self.nlm_grace_secs is None else self.nlm_grace_secs


@attrs.frozen(kw_only=True)
class S3:
    enabled: bool = setting(True, doc="Serve the S3 REST API.")
    bind: Listen = setting(Listen.tcp("0.0.0.0", 9000), doc="S3 listener.")
    region: str = setting(
        "us-east-1", doc="Region reported by GetBucketLocation and required in SigV4 scopes."
    )
    enable_versioning: bool = setting(
        True,
        doc="Let bucket owners enable versioning (PutBucketVersioning); false refuses it "
        "with 501 NotImplemented, and buckets already versioned stay so.",
    )
    domain: str | None = setting(
        None,
        doc="Base domain for virtual-hosted-style addressing "
        "(``bucket.s3.example.com``); path style always works.",
    )
    root: str = setting("/", doc="Directory of the namespace whose subdirectories are the buckets.")
    tls_cert: str | None = setting(
        None, doc="PEM certificate; with ``tls_key`` the listener speaks HTTPS."
    )
    tls_key: str | None = setting(None, doc="PEM private key for ``tls_cert``.")
    multipart_chunk_min: int = setting(
        5 * 1024 * 1024,
        min=1,
        max=5 * 1024**3,
        size=True,
        doc="Smallest part accepted, except the last part of an upload.",
    )
    part_timeout_ms: int = setting(
        300000,
        min=1000,
        max=7 * 24 * 3600 * 1000,
        doc="An upload with no part activity for this long is aborted.",
    )
    max_concurrent_parts: int = setting(
        4, min=1, max=10000, doc="Parts of one upload that may be written at once."
    )
    temp_max_age_secs: float = setting(
        3600.0,
        min=60,
        max=30 * 86400,
        doc="A temporary file of the S3 staging area (a PUT, copy or POST body, or an "
        "upload directory without its state) unchanged for this long is removed when a "
        "gateway starts; younger ones may be another gateway's uploads in progress (a "
        "``--workers`` sibling, a gateway on the same servers). Keep it well above "
        "``idle_timeout_secs`` and the clock skew between gateways and servers.",
    )
    lifecycle_interval_secs: float = setting(
        3600.0,
        min=1,
        max=7 * 24 * 3600,
        doc="How often the lifecycle service applies buckets' lifecycle rules.",
    )
    lifecycle_day_secs: float = setting(
        86400.0,
        min=1,
        max=86400,
        doc="The length of a lifecycle rule's day. Shorter only to test rules (as RGW's "
        "``rgw_lc_debug_interval``); the ``x-amz-expiration`` header always counts real days.",
    )
    max_object_size: int = setting(
        5 * 1024**3,
        min=1,
        max=5 * 1024**4,
        size=True,
        doc="Largest object a single PUT or copy may write (``EntityTooLarge`` beyond); "
        "multipart objects are bounded by their parts instead.",
    )
    max_keys: int = setting(
        1000, min=1, max=1000, doc="Most keys one ListObjects page returns (S3's own cap is 1000)."
    )
    header_timeout_secs: float = setting(
        20.0,
        min=1,
        max=600,
        doc="A request's headers must be complete this long after its first byte, "
        "or the connection is closed (slow-header attacks).",
    )
    idle_timeout_secs: float = setting(
        60.0,
        min=1,
        max=86400,
        doc="A connection with no bytes from the client for this long is closed "
        "(between requests, or in the middle of a request body).",
    )
    max_header_bytes: int = setting(
        16384,
        min=4096,
        max=1024 * 1024,
        size=True,
        doc="Largest request line plus headers accepted (400 and close beyond).",
    )
    root_mode: int | None = setting(
        None,
        min=0,
        max=0o7777,
        shown_default="left as it is",
        doc="Mode given to the S3 root directory at start, e.g. ``01777`` (octal in YAML) so "
        "anyone (over any protocol) may make directories there and only an owner may delete "
        "one. Not needed for buckets: users holding the bucket right "
        "(``users[].s3_create_buckets``, the default) create them in a closed root.",
    )

    def check(self, b: Builder, path: str, raw: Any) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            b.report(
                join(path, "tls_cert"),
                line_of(raw, "tls_cert"),
                "tls_cert and tls_key must be given together",
            )
        for key in ("tls_cert", "tls_key"):
            f = getattr(self, key)
            if f is not None and not os.path.isfile(f):
                b.report(join(path, key), line_of(raw, key), "file does not exist")
        _check_ns_path(b, join(path, "root"), line_of(raw, "root"), self.root)


@attrs.frozen(kw_only=True)
class NicCapabilities:
    rdma: bool = setting(False, doc="The interface can carry SMB Direct (RDMA).")
    rss: bool = setting(False, doc="Receive-side scaling is available.")
    tso: bool = setting(False, doc="TCP segmentation offload is available.")
    checksum_offload: bool = setting(False, doc="Checksum offload is available.")


@attrs.frozen(kw_only=True)
class Interface:
    name: str = setting(doc="Interface name, e.g. ``eth0``.")
    ip: str = setting(doc="Address clients reach this interface at.")
    link_speed_mbps: int = setting(10000, min=1, max=10_000_000, doc="Advertised link speed.")
    capabilities: NicCapabilities = setting(factory=NicCapabilities, doc="What the NIC offers.")

    def check(self, b: Builder, path: str, raw: Any) -> None:
        try:
            ipaddress.ip_address(self.ip)
        except ValueError:
            b.report(join(path, "ip"), line_of(raw, "ip"), f"{self.ip!r} is not an IP address")


@attrs.frozen(kw_only=True)
class Multichannel:
    enabled: bool = setting(
        False, doc="Offer SMB3 multichannel: session binding and the interface list."
    )
    max_channels: int = setting(8, min=1, max=32, doc="Most channels one session may bind.")
    min_channels: int = setting(
        2,
        min=1,
        max=32,
        doc="Kept from the design documents and validated; not acted on: clients choose how "
        "many channels to open per interface (Windows: up to 4 per RSS-capable one).",
    )
    prefer_rdma: bool = setting(True, doc="Advertise RDMA-capable interfaces first.")
    channel_selection: Literal["round_robin", "weighted_by_speed", "prefer_rdma"] = setting(
        "weighted_by_speed", doc="How interfaces are ordered for clients."
    )

    def check(self, b: Builder, path: str, raw: Any) -> None:
        if self.min_channels > self.max_channels:
            b.report(
                join(path, "min_channels"),
                line_of(raw, "min_channels"),
                f"must not exceed max_channels ({self.max_channels})",
            )


@attrs.frozen(kw_only=True)
class Smb:
    enabled: bool = setting(True, doc="Serve SMB 2.0.2-3.1.1.")
    bind: Listen = setting(Listen.tcp("0.0.0.0", 445), doc="SMB listener (direct TCP).")
    domain: str = setting("CLAUDEFS", doc="NetBIOS domain name reported in NTLM challenges.")
    workgroup: str = setting("CLAUDEFS", doc="Workgroup reported to browsing clients.")
    domain_sid: str | None = setting(
        None,
        shown_default="derived from the install secret",
        doc="Domain SID for uid/gid ↔ SID mapping (``S-1-5-21-a-b-c``).",
    )
    signing: Literal["disabled", "enabled", "required"] = setting(
        "enabled", doc="Message signing: offered (``enabled``) or demanded (``required``)."
    )
    encrypt: Literal["off", "enabled", "desired", "required"] = setting(
        "enabled", doc="Encryption: refused, allowed on request, preferred, or demanded."
    )
    guest: bool = setting(False, doc="Allow guest logons (off by default).")
    directory_leases: bool = setting(
        False,
        doc="Offer SMB 3 directory leases (GLOBAL_CAP_DIRECTORY_LEASING); off by default "
        "because impacket's client cannot open files on a server that offers them.",
    )
    max_message_size: int = setting(
        8 * 1024 * 1024 + 65536,
        min=65536 + 64,
        max=16 * 1024 * 1024 + 65536,
        size=True,
        doc="Largest SMB2 message accepted on the wire.",
    )
    max_requests_per_connection: int = setting(
        512,
        min=1,
        max=65536,
        doc="Requests one connection may have being served at once (a request that went "
        "asynchronous, such as CHANGE_NOTIFY or a blocking lock, no longer counts); beyond it "
        "the gateway stops reading from that connection until some finish.",
    )
    max_queued_bytes_per_connection: int = setting(
        8 * 1024 * 1024,
        min=1024 * 1024,
        max=1024 * 1024 * 1024,
        size=True,
        doc="Bytes one connection may hold in requests being served plus the replies they may "
        "return (a READ counts its length); beyond it, or while the client leaves replies "
        "unread, the gateway stops reading from it (TCP back-pressure) and grants no new "
        "credits until it drains. 8 MiB is one READ of the largest size offered (or 128 "
        "of 64 KiB): smbclient's get runs as fast as with 32 MiB (docs/bench.rst), and a "
        "client that reads no replies holds a quarter as much.",
    )
    idle_timeout_secs: float = setting(
        900.0,
        min=0,
        max=7 * 86400,
        doc="A connection with no request for this long and no open files is closed (Samba's "
        "``deadtime``); durable handles survive it as any disconnect. 0 = never.",
    )
    setup_timeout_secs: float = setting(
        60.0,
        min=0,
        max=3600,
        doc="Half-open connections: one without an authenticated session this long after it "
        "was made, or with a message begun but not completed for this long, is closed. "
        "0 = never.",
    )
    metadata_flush_interval_ms: int = setting(
        1000,
        min=0,
        max=60000,
        doc="SMB metadata changes (create, overwrite, attributes and times, delete on close, "
        "rename) are answered once in the store's ordered log, which survives a crash of the "
        "gateway, and made durable against power loss by FLUSH, by write-through opens, by "
        "any later durable change, and at most this long after they were answered (Samba "
        "syncs none of them). 0 = each one durable before its reply.",
    )
    multichannel: Multichannel = setting(factory=Multichannel, doc="SMB3 multichannel.")
    interfaces: list[Interface] = setting(
        factory=list, doc="Interfaces advertised for multichannel."
    )

    def check(self, b: Builder, path: str, raw: Any) -> None:
        if self.domain_sid is not None and not re.match(r"^S-1-5-21(-\d+){3}$", self.domain_sid):
            b.report(
                join(path, "domain_sid"),
                line_of(raw, "domain_sid"),
                "must look like S-1-5-21-<n>-<n>-<n>",
            )
        if self.signing == "disabled" and self.encrypt == "required":
            b.report(
                join(path, "encrypt"),
                line_of(raw, "encrypt"),
                "encryption cannot be required while signing is disabled",
            )


@attrs.frozen(kw_only=True)
class MetadataServer:
    address: str = setting(
        doc="``host:port`` of a ClaudeFS metadata server (port 7001), or ``unix:/path`` "
        "(what ``--workers`` uses on one machine)."
    )
    transport: Literal["tcp", "tls", "rdma"] = setting(
        "tcp",
        doc="Transport to this server: ``tcp``, ``tls`` (mutual TLS with ``backend.tls``) "
        "or ``rdma`` (falls back to TCP when no RDMA device or library is present).",
    )
    device: str | None = setting(None, doc="RDMA device name, e.g. ``mlx5_0``.")

    def check(self, b: Builder, path: str, raw: Any) -> None:
        if self.address.startswith("unix:/"):
            return
        host, sep, port = self.address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            b.report(
                join(path, "address"),
                line_of(raw, "address"),
                "must be host:port with a port 1..65535",
            )


@attrs.frozen(kw_only=True)
class ConnectionPool:
    min_per_node: int = setting(
        4, min=0, max=1024, doc="Connections kept open to each backend node."
    )
    max_per_node: int = setting(32, min=1, max=4096, doc="Most connections to one backend node.")
    max_idle_ms: int = setting(
        300000, min=0, max=86_400_000, doc="Idle connections above the minimum close after this."
    )
    connect_timeout_ms: int = setting(
        5000, min=1, max=600_000, doc="Deadline for opening a connection."
    )
    health_check_interval_ms: int = setting(
        30000, min=100, max=3_600_000, doc="How often idle connections are probed."
    )

    def check(self, b: Builder, path: str, raw: Any) -> None:
        if self.min_per_node > self.max_per_node:
            b.report(
                join(path, "min_per_node"),
                line_of(raw, "min_per_node"),
                f"must not exceed max_per_node ({self.max_per_node})",
            )


@attrs.frozen(kw_only=True)
class CircuitBreaker:
    failure_threshold: int = setting(
        5, min=1, max=1000, doc="Consecutive failures that open the circuit."
    )
    success_threshold: int = setting(
        2, min=1, max=1000, doc="Successes in half-open state that close it."
    )
    open_duration_ms: int = setting(
        30000, min=1, max=3_600_000, doc="Time open before a trial call."
    )
    timeout_ms: int = setting(5000, min=1, max=600_000, doc="Deadline of one backend operation.")


@attrs.frozen(kw_only=True)
class QuotaLimits:
    bytes_soft: int = setting(0, min=0, max=MAX_I64, size=True, doc="Soft byte limit; 0 = none.")
    bytes_hard: int = setting(0, min=0, max=MAX_I64, size=True, doc="Hard byte limit; 0 = none.")
    inodes_soft: int = setting(0, min=0, max=MAX_I64, doc="Soft inode limit; 0 = none.")
    inodes_hard: int = setting(0, min=0, max=MAX_I64, doc="Hard inode limit; 0 = none.")

    def check(self, b: Builder, path: str, raw: Any) -> None:
        for kind in ("bytes", "inodes"):
            soft, hard = getattr(self, f"{kind}_soft"), getattr(self, f"{kind}_hard")
            if soft and hard and soft > hard:
                b.report(
                    join(path, f"{kind}_soft"),
                    line_of(raw, f"{kind}_soft"),
                    f"must not exceed {kind}_hard ({hard})",
                )


@attrs.frozen(kw_only=True)
class Quota:
    soft_limit_grace_period_seconds: int = setting(
        604800,
        min=0,
        max=10 * 365 * 86400,
        doc="After a soft limit is crossed, it is enforced as hard once this much time has passed.",
    )
    user_defaults: QuotaLimits = setting(
        factory=QuotaLimits, doc="Limits for every uid without its own."
    )
    group_defaults: QuotaLimits = setting(
        factory=QuotaLimits, doc="Limits for every gid without its own."
    )


@attrs.frozen(kw_only=True)
class Leases:
    recall_timeout_secs: float = setting(
        35.0,
        min=1,
        max=3600,
        doc="How long a client has to acknowledge a lease, oplock or delegation break before "
        "the lease is revoked and the waiting operation goes ahead (Samba's ``oplock break "
        "wait`` is 35 s; MS-SMB2 and RFC 8881 both let the server revoke after a timeout).",
    )
    max_leases: int = setting(
        100_000,
        min=0,
        max=100_000_000,
        doc="Leases held at once across every protocol; past it clients are granted no "
        "caching (they work uncached). 0 disables leases, oplocks and delegations.",
    )


@attrs.frozen(kw_only=True)
class AttrCache:
    max_entries: int = setting(
        10000, min=0, max=100_000_000, doc="Cached attribute entries; 0 disables the cache."
    )
    default_ttl_secs: int = setting(30, min=0, max=86400, doc="How long an entry may be served.")
    eviction: Literal["lru", "lfu", "fifo"] = setting(
        "lru", doc="Which entry goes when the cache is full."
    )


@attrs.frozen(kw_only=True)
class Cache:
    nfs_attr_cache: AttrCache = setting(
        factory=AttrCache, doc="Attribute cache used by every front end."
    )


@attrs.frozen(kw_only=True)
class BackendTLS:
    cert: str = setting(doc="PEM certificate this gateway presents to backend nodes.")
    key: str = setting(doc="PEM private key of ``cert``.")
    ca: str = setting(
        doc="PEM certificate of the CA that signs every node's and gateway's certificate."
    )

    def check(self, b: Builder, path: str, raw: Any) -> None:
        for key in ("cert", "key", "ca"):
            if not os.path.isfile(getattr(self, key)):
                b.report(join(path, key), line_of(raw, key), "file does not exist")


@attrs.frozen(kw_only=True)
class Backend:
    type: Literal["embedded", "memory", "remote"] = setting(
        "embedded",
        doc="``embedded``: SQLite metadata and per-inode files under ``data_dir``; ``memory``: "
        "volatile, everything is lost when the gateway stops (tests and demos); "
        "``remote``: ClaudeFS metadata/data servers.",
    )
    data_dir: str = setting(
        "./cfs-data",
        doc="Where the embedded store, install secret and runtime state live; "
        "relative paths are taken from the current directory.",
    )
    tls: BackendTLS | None = setting(
        None, doc="Mutual-TLS material for ``metadata_servers`` with ``transport: tls``."
    )
    idle_fd_secs: float = setting(
        30.0,
        min=0,
        max=86400,
        doc="Embedded store: a data file's descriptor (the writer and the reader each cache up "
        "to 128) unused for this long is closed, checked every half of it, so open "
        "descriptors return to the baseline after a burst; one with unsynced data is synced "
        "first. 0 = kept until evicted.",
    )
    inline_max_bytes: int = setting(
        4096,
        min=0,
        max=65536,
        doc="Embedded store: a regular file's bytes stay in the metadata database (no data "
        "file) while every write to it ends within this many bytes, so committing a small "
        "file costs one sync of the database's log and removing it deletes no file; a write "
        "beyond it moves the bytes to a data file (synced first). A file once out of line "
        "stays so. 0 = no new inline files (those already inline keep working).",
    )
    short_circuit: str | None = setting(
        None,
        doc="``remote`` only: the data directory of the namespace's only data server, when it "
        "is on this host and this gateway may open its files (``cfs-gateway data "
        "--data-dir``): reads and writes then use its chunk files directly instead of a call "
        "to it (metadata still goes to the meta server). Ignored unless the layout has one "
        "data server and one copy. ``--workers`` sets it for its workers.",
    )
    event_marks: str | None = setting(
        None,
        doc="``remote`` only: the directory where the meta server, on this host, keeps the "
        "count of events it pushed to each gateway (``cfs-gateway meta --event-marks``): a "
        "read then takes a file's size from this gateway's cache when it has heard every "
        "change, instead of asking the meta server. ``--workers`` sets it for its workers.",
    )


@attrs.frozen(kw_only=True)
class PostgreSQL:
    dsn: str | None = setting(
        None,
        secret=True,
        doc="libpq connection string (``host=/run/postgresql dbname=claudefs user=claudefs``) "
        "or URI (``postgresql://claudefs@db-1,db-2/claudefs?target_session_attrs=read-write``); "
        "the parts below, when set, override the same parts of it. Kept out of logs: it may "
        "hold a password. ``PGPASSFILE``, ``PGSERVICE`` and the other libpq variables apply.",
    )
    host: str | None = setting(
        None, doc="Server host names or a unix-socket directory (libpq ``host``; comma-separated)."
    )
    port: int | None = setting(None, min=1, max=65535, doc="Server port (libpq ``port``).")
    dbname: str | None = setting(None, doc="Database name.")
    user: str | None = setting(None, doc="Role to connect as.")
    password: str | None = setting(
        None, secret=True, doc="Password (prefer a ``.pgpass`` file or ``PGPASSFILE``)."
    )
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = (
        setting(None, doc="libpq ``sslmode``.")
    )
    schema: str = setting(
        "claudefs",
        doc="PostgreSQL schema holding the namespace's tables (created and migrated at start); "
        "one database can hold several namespaces in different schemas.",
    )
    pool_min: int = setting(2, min=0, max=1000, doc="Connections each meta server keeps open.")
    pool_max: int = setting(
        8,
        min=1,
        max=1000,
        doc="Most connections of each meta server, and threads running its statements.",
    )
    statement_timeout_ms: int = setting(
        5000,
        min=1,
        max=3_600_000,
        doc="PostgreSQL ``statement_timeout``: a statement running longer is cancelled and the "
        "call fails with a try-later error.",
    )
    connect_timeout_ms: int = setting(
        5000, min=1000, max=600_000, doc="Deadline for opening a database connection."
    )

    def check(self, b: Builder, path: str, raw: Any) -> None:
        if not self.dsn and not self.host and not self.dbname:
            b.report(path, line_of(raw, "dsn"), "needs dsn, or host and dbname")
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,40}", self.schema):
            b.report(
                join(path, "schema"),
                line_of(raw, "schema"),
                "must be a lower-case SQL identifier (letters, digits, _; at most 41)",
            )
        if self.pool_min > self.pool_max:
            b.report(
                join(path, "pool_min"),
                line_of(raw, "pool_min"),
                f"must not exceed pool_max ({self.pool_max})",
            )

    def conninfo(self) -> str:
        """The libpq connection string: C{dsn} with the parts set here merged in."""
        from psycopg.conninfo import make_conninfo

        parts = {
            k: getattr(self, k)
            for k in ("host", "port", "dbname", "user", "password", "sslmode")
            if getattr(self, k) is not None
        }
        parts.setdefault("application_name", "claudefs-meta")
        return make_conninfo(self.dsn or "", **parts)


@attrs.frozen(kw_only=True)
class MetaStore:
    type: Literal["embedded", "postgresql"] = setting(
        "embedded",
        doc="Where ``claudefs-meta`` keeps the namespace: ``embedded`` (SQLite under its "
        "``--data-dir``; one meta server) or ``postgresql`` (several meta servers active at "
        "once over one database; docs/postgresql.rst).",
    )
    postgresql: PostgreSQL | None = setting(None, doc="The database, for ``type: postgresql``.")
    grace_secs: int = setting(
        90,
        min=0,
        max=3600,
        doc="The cross-gateway grace: once a gateway that had NFSv4 or NLM clients is "
        "declared gone, how long every gateway lets those clients reclaim their state, "
        "refusing new opens and locks (NFSv4 ends it early once all of them reclaimed). "
        "``start --workers`` passes its ``nfs.grace_secs`` unless this is set.",
    )
    linger_secs: int = setting(
        10,
        min=1,
        max=3600,
        doc="How long a gateway whose event subscription is lost may take to subscribe "
        "again before the meta server declares it gone (its locks, shares and lease "
        "holdings released, the cross-gateway grace begun). Shorter frees a dead "
        "gateway's locks sooner; longer rides out longer network cuts.",
    )

    def check(self, b: Builder, path: str, raw: Any) -> None:
        if self.type == "postgresql" and self.postgresql is None:
            b.report(
                join(path, "postgresql"), line_of(raw, "type"), "type postgresql needs this section"
            )


@attrs.frozen(kw_only=True)
class User:
    name: str = setting(doc="Login name for SMB and the owner name shown by S3.")
    uid: int = setting(min=0, max=MAX_U32 - 1, doc="Numeric user id.")
    gid: int = setting(min=0, max=MAX_U32 - 1, doc="Primary group id.")
    groups: list[int] = setting(factory=list, doc="Supplementary group ids.")
    nt_hash: str | None = setting(
        None, secret=True, doc="NT password hash (32 hex digits) for SMB NTLMv2."
    )
    s3_access_key: str | None = setting(None, doc="S3 access key id.")
    s3_secret_key: str | None = setting(None, secret=True, doc="S3 secret access key.")
    nfs4_name: str | None = setting(None, doc="NFSv4 owner name (``user@domain``).")
    s3_create_buckets: bool = setting(
        True,
        doc="The user may create S3 buckets (and delete the ones they own) even without write "
        "permission on ``s3.root``: the gateway makes the bucket directory and gives it to "
        "the user, as any AWS account may create buckets, while the S3 root stays as it is "
        "(root's, ``0755``). False: creating a bucket needs write permission on the S3 root.",
    )

    def check(self, b: Builder, path: str, raw: Any) -> None:
        if not re.match(r"^[A-Za-z0-9._-]{1,64}$", self.name):
            b.report(
                join(path, "name"), line_of(raw, "name"), "must be 1-64 letters, digits, or . _ -"
            )
        if self.nt_hash is not None and not re.match(r"^[0-9a-fA-F]{32}$", self.nt_hash):
            b.report(join(path, "nt_hash"), line_of(raw, "nt_hash"), "must be 32 hex digits")
        if (self.s3_access_key is None) != (self.s3_secret_key is None):
            b.report(
                join(path, "s3_access_key"),
                line_of(raw, "s3_access_key"),
                "s3_access_key and s3_secret_key must be given together",
            )
        for i, g in enumerate(self.groups):
            if not 0 <= g < MAX_U32:
                b.report(join(join(path, "groups"), i), line_of(raw, "groups"), "gid out of range")


@attrs.frozen(kw_only=True)
class Manhole:
    bind: Listen = setting(
        Listen.tcp("127.0.0.1", 2222), doc="SSH listener; must be loopback or a ``unix:`` socket."
    )
    authorized_keys: str = setting(
        doc="OpenSSH authorized_keys file; only these keys may log in (no password authentication)."
    )
    host_key: str | None = setting(
        None,
        shown_default="<data_dir>/manhole_host_key",
        doc="SSH host key file; generated on first start if absent.",
    )

    def check(self, b: Builder, path: str, raw: Any) -> None:
        if not self.bind.is_loopback:
            b.report(
                join(path, "bind"),
                line_of(raw, "bind"),
                "the manhole must listen on loopback or a unix socket",
            )
        if not os.path.isfile(self.authorized_keys):
            b.report(
                join(path, "authorized_keys"),
                line_of(raw, "authorized_keys"),
                "file does not exist",
            )


@attrs.frozen(kw_only=True)
class Admin:
    bind: Listen = setting(
        Listen.tcp("127.0.0.1", 8080),
        doc="Admin HTTP listener: ``/health``, ``/metrics``, ``/admin/*``.",
    )
    token: str | None = setting(
        None,
        secret=True,
        doc="Bearer token. Unset: only loopback clients are served. Set: non-loopback "
        "clients and every ``/admin/*`` call must present it.",
    )
    drain_timeout_secs: float = setting(
        30.0, min=0, max=3600, doc="On SIGTERM or drain, how long in-flight requests may run on."
    )
    manhole: Manhole | None = setting(None, doc="SSH admin console; off unless configured.")

    def check(self, b: Builder, path: str, raw: Any) -> None:
        if self.token is not None and len(self.token) < 16:
            b.report(join(path, "token"), line_of(raw, "token"), "must be at least 16 characters")


@attrs.frozen(kw_only=True)
class Workers:
    start_attempts: int = setting(
        3,
        min=1,
        max=100,
        doc="``start --workers``: how many times a worker that exits before it is ready "
        "(one that lost a start-up race, or whose store did not open) is started, a second "
        "apart, before the supervisor gives up and stops, logging the last exit's cause.",
    )
    ready_timeout_secs: float = setting(
        300.0,
        min=1,
        max=86400,
        doc="``start --workers``: how long the supervisor waits for the data server to "
        "serve, the meta server's store to open and each worker's vfs to open. A server "
        "not ready by then is killed and the start stops (a ``critical`` line, exit "
        "status 1); a worker is killed and counts as one of ``start_attempts``.",
    )
    stop_timeout_secs: float = setting(
        30.0,
        min=1,
        max=3600,
        doc="``start --workers``: at a stop, how long a child may take to exit after "
        "SIGTERM (a worker: past its drain, ``admin.drain_timeout_secs``) before the "
        "supervisor kills it (SIGKILL, a ``warn`` line naming it); one still there that "
        "long after SIGKILL (stuck in the kernel, on a disk) is left behind with an "
        "``error`` line and the stop goes on.",
    )


@attrs.frozen(kw_only=True)
class RateLimit:
    requests_per_sec: float = setting(
        0,
        min=0,
        max=10_000_000,
        doc="Sustained requests a second; 0 = no limit.",
    )
    burst: int = setting(
        0,
        min=0,
        max=100_000_000,
        shown_default="0 (one second's worth)",
        doc="Requests allowed at once above the sustained rate (the bucket's size); "
        "0 = ``requests_per_sec``.",
    )


@attrs.frozen(kw_only=True)
class Limits:
    max_connections: int = setting(
        0,
        min=0,
        max=1_000_000,
        doc="Most client connections each protocol holds open at once (NFS, MOUNT, the "
        "portmapper, S3 and SMB are counted apart); one more is closed at once and counted in "
        '``gateway_rejected_requests_total{reason="max_connections"}``. 0 = no limit. '
        "Exported as ``gateway_max_connections``.",
    )
    max_connections_per_client: int = setting(
        0,
        min=0,
        max=1_000_000,
        doc="Most connections one client address holds open at once to each protocol; one "
        "more is closed at once and counted in "
        '``gateway_rejected_requests_total{reason="max_connections_per_client"}``. 0 = no '
        "limit. Exported as ``gateway_max_connections_per_client``.",
    )
    memory_budget: int = setting(
        256 * 1024 * 1024,
        min=0,
        max=1 << 40,
        size=True,
        doc="Bytes all connections together may hold in requests being served and replies "
        "queued unread (NFS call records and queued replies, S3 request bodies buffered, SMB "
        "requests and what their replies may carry: a READ counts its length). A request "
        "over it gets the protocol's busy status (NFS3ERR_JUKEBOX, NFS4ERR_DELAY, S3 "
        "``SlowDown`` 503, SMB STATUS_INSUFFICIENT_RESOURCES) and is counted in "
        '``gateway_rejected_requests_total{reason="memory"}``; usage is '
        "``gateway_memory_budget_bytes``. 0 = no limit.",
    )
    per_client: RateLimit = setting(
        factory=RateLimit,
        doc="Request rate of each client address, over all its protocols and users. A request "
        "over it gets the protocol's try-later answer (NFS3ERR_JUKEBOX, S3 ``SlowDown``, "
        "STATUS_IO_TIMEOUT) and is counted in "
        '``gateway_rejected_requests_total{reason="client_rate"}``.',
    )
    per_user: RateLimit = setting(
        factory=RateLimit,
        doc="Request rate of each user (uid: the NFS AUTH_SYS uid, the S3 signer's, the SMB "
        "session's), over all its protocols and machines; "
        '``gateway_rejected_requests_total{reason="user_rate"}``.',
    )


@attrs.frozen(kw_only=True)
class Config:
    """The whole validated configuration. Build it with L{load} or L{loads}."""

    log_level: Literal["debug", "info", "warn", "error", "critical"] = setting(
        "info", doc="Least severe log level written."
    )
    log_format: Literal["human", "json"] = setting(
        "human", doc="Log lines as text or as JSON objects."
    )
    backend: Backend = setting(factory=Backend, doc="Where the namespace is stored.")
    exports: list[Export] = setting(
        factory=list,
        shown_default="[] (then /export is exported)",
        doc="Exports served over NFS and SMB. If neither this nor ``nfs.exports`` lists any, "
        "``/export`` is exported with the defaults below.",
    )
    users: list[User] | str | None = setting(
        None,
        shown_default="<data_dir>/users.yaml",
        doc="The user database: a list of users, or the path of a users file kept by ``cfs-gateway user``.",
    )
    nfs: Nfs = setting(factory=Nfs, doc="NFS front end.")
    s3: S3 = setting(factory=S3, doc="S3 front end.")
    smb: Smb = setting(factory=Smb, doc="SMB front end.")
    metadata_servers: list[MetadataServer] = setting(
        factory=list, doc="Used by the remote backend."
    )
    meta_store: MetaStore = setting(
        factory=MetaStore,
        doc="The store of ``claudefs-meta`` (``cfs-gateway meta --config``, and the local meta "
        "server of ``start --workers``).",
    )
    connection_pool: ConnectionPool = setting(
        factory=ConnectionPool, doc="Backend connection pool."
    )
    circuit_breaker: CircuitBreaker = setting(
        factory=CircuitBreaker, doc="Backend circuit breaker."
    )
    quota: Quota = setting(factory=Quota, doc="Quota defaults; per-id limits live in the store.")
    cache: Cache = setting(factory=Cache, doc="Caches.")
    leases: Leases = setting(
        factory=Leases,
        doc="Leases of every protocol (SMB oplocks and leases, NFSv4 delegations): docs/locks.rst.",
    )
    admin: Admin = setting(factory=Admin, doc="Admin HTTP and manhole.")
    limits: Limits = setting(factory=Limits, doc="Connection and request-rate limits.")
    workers: Workers = setting(
        factory=Workers, doc="The supervisor of ``start --workers N`` (docs/workers.rst)."
    )

    def check(self, b: Builder, path: str, raw: Any) -> None:
        if self.nfs.pnfs.enabled and self.backend.type != "remote":
            b.report(
                "nfs.pnfs.enabled",
                line_of(raw.get("nfs", raw), "pnfs"),
                "pNFS needs backend: remote (data servers clients can reach)",
            )
        if self.backend.type == "remote" and not self.metadata_servers:
            b.report(
                "metadata_servers",
                line_of(raw, "metadata_servers")
                if "metadata_servers" in raw
                else line_of(raw.get("backend", raw), "type"),
                "the remote backend needs at least one metadata server",
            )
        for i, m in enumerate(self.metadata_servers):
            if m.transport == "tls" and self.backend.tls is None:
                b.report(
                    f"metadata_servers[{i}].transport",
                    line_of(raw, "metadata_servers"),
                    "transport tls needs backend.tls (cert, key, ca)",
                )
        seen_paths: dict[str, str] = {}
        seen_names: dict[str, str] = {}
        for i, e in enumerate(self.all_exports()):
            where = f"exports[{i}]"
            if e.path in seen_paths:
                b.report(
                    "exports",
                    line_of(raw, "exports") or line_of(raw, "nfs"),
                    f"path {e.path} is exported twice ({seen_paths[e.path]} and {where})",
                )
            seen_paths.setdefault(e.path, where)
            if "smb" in e.protocols:
                key = e.share_name.lower()
                if key in seen_names or key == "ipc$":
                    b.report(
                        "exports",
                        line_of(raw, "exports"),
                        f"share name {e.share_name!r} is used twice",
                    )
                seen_names.setdefault(key, where)
        if isinstance(self.users, list):
            names: set[str] = set()
            keys: set[str] = set()
            for i, u in enumerate(self.users):
                if u.name in names:
                    b.report(
                        f"users[{i}].name",
                        line_of(raw, "users"),
                        f"user {u.name!r} is listed twice",
                    )
                names.add(u.name)
                if u.s3_access_key is not None:
                    if u.s3_access_key in keys:
                        b.report(
                            f"users[{i}].s3_access_key",
                            line_of(raw, "users"),
                            "access key is used twice",
                        )
                    keys.add(u.s3_access_key)

    # -- derived views --------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return Path(self.backend.data_dir).absolute()

    def all_exports(self) -> list[Export]:
        """Top-level exports then C{nfs.exports}; C{/export} when there are none."""
        out = list(self.exports) + [e.as_export() for e in self.nfs.exports]
        if not out:
            out = [Export(path="/export")]
        return out

    def exports_for(self, protocol: str) -> list[Export]:
        return [e for e in self.all_exports() if protocol in e.protocols]

    def enabled_protocols(self) -> list[str]:
        return [p for p in PROTOCOLS if getattr(self, p).enabled]

    def secrets(self) -> Iterator[str]:
        """Every secret value in this configuration (for log scrubbing)."""
        if self.admin.token:
            yield self.admin.token
        if isinstance(self.users, list):
            for u in self.users:
                if u.nt_hash:
                    yield u.nt_hash
                if u.s3_secret_key:
                    yield u.s3_secret_key

    @property
    def manhole_host_key(self) -> Path | None:
        m = self.admin.manhole
        if m is None:
            return None
        return Path(m.host_key) if m.host_key else self.data_dir / "manhole_host_key"


def loads(
    text: str, source: str = "<config>", overrides: dict[str, tuple[Any, str]] | None = None
) -> Config:
    """
    Validate configuration text.

    @param overrides: dotted key path → (value, flag name), applied before validation.
    @raise ConfigError: with every problem, each naming its key path and line.
    """
    raw = load_yaml(text, source)
    if raw is None:
        raw = LineMap()
        raw.line, raw.key_lines, raw.duplicates = 1, {}, []
    if not isinstance(raw, dict):
        raise ConfigError(
            [Problem("", 1, "the configuration must be a mapping of sections")], source
        )
    for path, (value, label) in (overrides or {}).items():
        set_override(raw, path, value, label)
    return build(Config, raw, source)


def load(
    path: str | os.PathLike[str], overrides: dict[str, tuple[Any, str]] | None = None
) -> Config:
    """
    Read and validate a configuration file.

    @raise ConfigError: unreadable, not YAML, or invalid.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            [Problem("", None, f"cannot read: {e.__class__.__name__}: {e.args[-1]}")], str(path)
        ) from None
    return loads(text, str(path), overrides)


def default_config(overrides: dict[str, tuple[Any, str]] | None = None) -> Config:
    """The configuration used when no file is given: every default."""
    return loads("", "<defaults>", overrides)


def key_paths() -> list[str]:
    """Every key path of the schema (list items as C{key[]}), for docs and tests."""
    return [k.path for k in walk(Config)]


_INTRO = """
.. This file is generated by ``python -m claudefs_gateway.core.config``; a test keeps
   it in step with the schema in ``claudefs_gateway/core/config.py``. Edit the schema.

One YAML file configures the gateway. Every key below is optional unless marked
*required*; unknown keys are errors. ``cfs-gateway validate-config --config FILE``
reports every problem with its key path and line and exits 1, or prints ``OK``.
``docs/gateway.example.yaml`` shows every key with its default.

Listeners (every ``bind``) take a ``{addr, port}`` mapping, ``"host:port"``, a bare
port, or a Twisted endpoint description such as ``tcp:2049:interface=127.0.0.1``,
``tcp6:port=2049:interface=\\:\\:1``, ``ssl:9000:privateKey=key.pem:certKey=cert.pem``
or ``unix:/run/claudefs/admin.sock:mode=600``. Command-line flags of
``cfs-gateway start`` and the twistd plugins override the file.
"""


def reference() -> str:
    """The generated reference for C{docs/configuration.rst}."""
    return reference_rst(Config, "Configuration reference", _INTRO)


if __name__ == "__main__":  # pragma: no cover - documentation generator
    import sys

    sys.stdout.write(reference())
