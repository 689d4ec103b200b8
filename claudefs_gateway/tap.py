# -*- test-case-name: tests.test_tap -*-
"""
twistd plugins: C{twistd claudefs-gateway} (every enabled protocol) and one per
protocol (C{claudefs-nfs}, C{claudefs-s3}, C{claudefs-smb}).

The same Options back C{cfs-gateway start}. Flags override the configuration
file; a value from a flag that fails validation is reported with the flag's
name instead of a line number.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from claudefs_gateway import service
from claudefs_gateway.core import config as cfg
from claudefs_gateway.errors import ConfigError

__all__ = ["Options", "NfsOptions", "S3Options", "SmbOptions", "OPTIONS", "makeService"]


class Options(usage.Options):
    """Flags shared by every entry point; C{protocol} None means all enabled ones."""

    protocol: str | None = None
    synopsis = "[options]"
    longdesc = (
        "Serve the ClaudeFS namespace. With no --config, every default applies: "
        "the embedded backend under ./cfs-data and the standard ports."
    )

    optParameters: list[list[Any]] = [
        ["config", "c", None, "YAML configuration file."],
        ["data-dir", None, None, "Override backend.data_dir."],
        ["admin-bind", None, None, "Override admin.bind (e.g. 127.0.0.1:8080)."],
        ["log-level", None, None, "Override log_level: debug, info, warn, error, critical."],
        ["log-format", None, None, "Override log_format: human or json."],
        ["workers", None, "0", "Run N gateway worker processes (and local meta and data servers)."],
        ["worker-index", None, None, "Internal: which of the --workers processes this is."],
    ]
    optFlags: list[list[Any]] = [
        ["worker", None, "Internal: this is one of the --workers processes."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self.exports: list[str] = []
        self.config: cfg.Config | None = None
        self.config_text = ""

    def opt_export(self, path: str) -> None:
        """Export a namespace path (repeatable); replaces the configured top-level exports."""
        self.exports.append(path)

    def overrides(self) -> dict[str, tuple[Any, str]]:
        out: dict[str, tuple[Any, str]] = {}
        for flag, key in (
            ("data-dir", "backend.data_dir"),
            ("admin-bind", "admin.bind"),
            ("log-level", "log_level"),
            ("log-format", "log_format"),
        ):
            if self[flag] is not None:
                out[key] = (self[flag], f"--{flag}")
        if self.exports:
            out["exports"] = ([{"path": p} for p in self.exports], "--export")
        return out

    def postOptions(self) -> None:
        try:
            self["workers"] = int(self["workers"])
        except ValueError:
            raise usage.UsageError("--workers takes a number") from None
        if not 0 <= self["workers"] <= 256:
            raise usage.UsageError("--workers must be between 0 and 256")
        if self["worker-index"] is not None:
            try:
                self["worker-index"] = int(self["worker-index"])
            except ValueError:
                raise usage.UsageError("--worker-index takes a number") from None
            if self["worker-index"] < 0:
                raise usage.UsageError("--worker-index must not be negative")
        self.config_text = ""
        if self["config"]:
            try:
                with open(self["config"], encoding="utf-8") as f:
                    self.config_text = f.read()
            except OSError:
                pass  # cfg.load below reports it
        protocol = self.protocol
        if protocol is not None and not service.is_built(protocol):
            raise usage.UsageError(service.not_built_message(protocol))
        try:
            if self["config"]:
                self.config = cfg.load(self["config"], self.overrides())
            else:
                self.config = cfg.default_config(self.overrides())
        except ConfigError as e:
            raise usage.UsageError("invalid configuration:\n" + e.render()) from None

    @property
    def protocols(self) -> list[str] | None:
        return [self.protocol] if self.protocol else None


class _OneProtocol(Options):
    def overrides(self) -> dict[str, tuple[Any, str]]:
        out = super().overrides()
        if self["bind"] is not None:
            out[f"{self.protocol}.bind"] = (self["bind"], "--bind")
        return out


class NfsOptions(_OneProtocol):
    protocol = "nfs"
    optParameters = [
        ["bind", None, None, "NFS listener, e.g. 0.0.0.0:2049 or tcp:2049:interface=127.0.0.1."],
        ["mount-bind", None, None, "MOUNT listener, e.g. 0.0.0.0:20048."],
    ]

    def overrides(self) -> dict[str, tuple[Any, str]]:
        out = super().overrides()
        if self["mount-bind"] is not None:
            out["nfs.mount_bind"] = (self["mount-bind"], "--mount-bind")
        return out


class S3Options(_OneProtocol):
    protocol = "s3"
    optParameters = [
        ["bind", None, None, "S3 listener, e.g. 0.0.0.0:9000."],
        ["tls-cert", None, None, "PEM certificate: serve HTTPS."],
        ["tls-key", None, None, "PEM private key for --tls-cert."],
    ]

    def overrides(self) -> dict[str, tuple[Any, str]]:
        out = super().overrides()
        for flag in ("tls-cert", "tls-key"):
            if self[flag] is not None:
                out[f"s3.{flag.replace('-', '_')}"] = (self[flag], f"--{flag}")
        return out


class SmbOptions(_OneProtocol):
    protocol = "smb"
    optParameters = [
        ["bind", None, None, "SMB listener, e.g. 0.0.0.0:445."],
        ["domain", None, None, "NetBIOS domain name."],
        ["workgroup", None, None, "Workgroup name."],
    ]

    def overrides(self) -> dict[str, tuple[Any, str]]:
        out = super().overrides()
        for flag in ("domain", "workgroup"):
            if self[flag] is not None:
                out[f"smb.{flag}"] = (self[flag], f"--{flag}")
        return out


OPTIONS: dict[str, type[Options]] = {
    "all": Options,
    "nfs": NfsOptions,
    "s3": S3Options,
    "smb": SmbOptions,
}


def makeService(options: Options) -> IService:
    """The service tree for parsed C{options} (twistd's IServiceMaker entry)."""
    from twisted.internet import reactor

    assert options.config is not None
    root = service.build(
        options.config, reactor, options.protocols, strict=options.protocol is not None
    )
    # twistd owns the reactor: a drain through the admin API ends the process.
    root.exit_when_drained = True
    return root
