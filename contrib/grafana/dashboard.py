"""
Generates ``claudefs-gateway.json``, the Grafana dashboard (import it in
Grafana: Dashboards > New > Import, and pick the Prometheus data source)::

    python contrib/grafana/dashboard.py > contrib/grafana/claudefs-gateway.json

One row per protocol (NFS, S3, SMB) after an overview, then the backend, the
circuit breaker, quotas, and locks and leases. A test keeps the JSON equal to
this script's output and checks that every metric a panel names is exported
by a running gateway.
"""

from __future__ import annotations

import json
import sys
from typing import Any

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
SEL = 'job="claudefs-gateway", instance=~"$instance"'

# Server-side failures and try-later answers (as the ErrorRatio alert counts them).
SERVER_ERRORS = (
    "NFS3ERR_(IO|SERVERFAULT|JUKEBOX)|SYSTEM_ERR|NLM4_FAILED|InternalError|ServiceUnavailable"
    "|SlowDown|STATUS_(INTERNAL_ERROR|IO_TIMEOUT|UNEXPECTED_IO_ERROR|INSUFFICIENT_RESOURCES)"
    "|5[0-9][0-9]"
)


class Board:
    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.y = 0
        self.x = 0
        self.row_height = 0
        self.next_id = 1

    def row(self, title: str) -> None:
        self.newline()
        self.panels.append(
            {
                "type": "row",
                "id": self._id(),
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def newline(self) -> None:
        if self.x:
            self.y += self.row_height
            self.x = 0
            self.row_height = 0

    def panel(
        self,
        title: str,
        targets: list[tuple[str, str]],
        unit: str = "short",
        kind: str = "timeseries",
        width: int = 8,
        height: int = 8,
        description: str = "",
        thresholds: list[tuple[str, float | None]] | None = None,
        mappings: list[dict[str, Any]] | None = None,
    ) -> None:
        if self.x + width > 24:
            self.newline()
        steps = [{"color": c, "value": v} for c, v in (thresholds or [("green", None)])]
        p: dict[str, Any] = {
            "type": kind,
            "id": self._id(),
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": {"h": height, "w": width, "x": self.x, "y": self.y},
            "fieldConfig": {
                "defaults": {
                    "unit": unit,
                    "thresholds": {"mode": "absolute", "steps": steps},
                    "mappings": mappings or [],
                },
                "overrides": [],
            },
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}}
            if kind == "timeseries"
            else {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
            "targets": [
                {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": chr(65 + i)}
                for i, (expr, legend) in enumerate(targets)
            ],
        }
        self.panels.append(p)
        self.x += width
        self.row_height = max(self.row_height, height)

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def rate(metric: str, by: str, extra: str = "", window: str = "$__rate_interval") -> str:
    sel = SEL + (", " + extra if extra else "")
    return f"sum by ({by}) (rate({metric}{{{sel}}}[{window}]))"


def p99(extra: str, by: str) -> str:
    return (
        f"histogram_quantile(0.99, sum by ({by}, le) "
        f"(rate(gateway_latency_seconds_bucket{{{SEL}, {extra}}}[$__rate_interval])))"
    )


def protocol_row(b: Board, title: str, protocol: str, ops_note: str) -> None:
    sel = f'protocol="{protocol}"'
    b.row(title)
    b.panel(
        "Requests / s by operation",
        [(rate("gateway_requests_total", "op", sel), "{{op}}")],
        unit="reqps",
        description=f"gateway_requests_total{{protocol={protocol}}} {ops_note}",
    )
    b.panel(
        "p99 latency by operation",
        [(p99(sel, "op"), "{{op}}")],
        unit="s",
        description="From gateway_latency_seconds; the design targets are in docs/tuning.rst.",
    )
    b.panel(
        "Errors / s by status",
        [(rate("gateway_errors_total", "status", sel), "{{status}}")],
        unit="reqps",
    )
    b.panel(
        "Connections",
        [
            (f"sum(gateway_active_connections{{{SEL}, {sel}}})", "open"),
            (f"sum(gateway_max_connections{{{SEL}, {sel}}} > 0)", "limit"),
        ],
        width=6,
    )
    b.panel(
        "In flight",
        [(f"sum(gateway_in_flight_requests{{{SEL}, {sel}}})", "requests")],
        width=6,
    )
    b.panel(
        "Rejected / s by reason",
        [(rate("gateway_rejected_requests_total", "reason", sel), "{{reason}}")],
        unit="reqps",
        width=6,
    )
    b.panel(
        "Authentication failures / s",
        [(rate("gateway_auth_failures_total", "protocol", sel), "failures")],
        unit="reqps",
        width=6,
    )


def build() -> dict[str, Any]:
    b = Board()
    b.row("Overview")
    b.panel(
        "Gateways up",
        [(f"sum(up{{{SEL}}})", "up")],
        kind="stat",
        width=4,
        height=5,
        thresholds=[("red", None), ("green", 1)],
    )
    b.panel(
        "Version",
        [(f"gateway_info{{{SEL}}}", "{{version}} ({{backend}})")],
        kind="stat",
        width=4,
        height=5,
        description="gateway_info: version and backend type.",
    )
    b.panel(
        "Draining",
        [(f"max(gateway_draining{{{SEL}}})", "draining")],
        kind="stat",
        width=4,
        height=5,
        thresholds=[("green", None), ("orange", 1)],
        mappings=[{"type": "value", "options": {"0": {"text": "no"}, "1": {"text": "draining"}}}],
    )
    b.panel(
        "CPU (% of one core)",
        [(f"gateway_cpu_usage_percent{{{SEL}}}", "{{instance}}")],
        unit="percent",
        width=6,
        height=5,
    )
    b.panel(
        "Resident memory",
        [(f"process_resident_memory_bytes{{{SEL}}}", "{{instance}}")],
        unit="bytes",
        width=6,
        height=5,
    )
    b.panel(
        "Requests / s by protocol",
        [(rate("gateway_requests_total", "protocol"), "{{protocol}}")],
        unit="reqps",
    )
    b.panel(
        "Server-side error ratio by protocol",
        [
            (
                f"{rate('gateway_errors_total', 'protocol', f'status=~{json.dumps(SERVER_ERRORS)}')}"
                f" / {rate('gateway_requests_total', 'protocol')}",
                "{{protocol}}",
            )
        ],
        unit="percentunit",
        description="The ClaudeFSGatewayErrorRatio alert fires over 1 % for 10 minutes.",
    )
    b.panel(
        "Open connections by protocol",
        [(f"sum by (protocol) (gateway_active_connections{{{SEL}}})", "{{protocol}}")],
    )
    protocol_row(b, "NFS", "nfs3", "(MOUNT, NLM and the portmapper have their own labels)")
    b.panel(
        "MOUNT, NLM, NSM, portmapper requests / s",
        [
            (
                rate("gateway_requests_total", "protocol, op", 'protocol=~"mount|nlm|nsm|portmap"'),
                "{{protocol}} {{op}}",
            )
        ],
        unit="reqps",
        width=12,
    )
    protocol_row(b, "NFSv4.1/4.2", "nfs4", "(ops are the COMPOUND operations)")
    protocol_row(b, "S3", "s3", "(ops are the S3 API names)")
    b.panel(
        "Multipart uploads in progress",
        [(f"sum(gateway_s3_multipart_active{{{SEL}}})", "active")],
        width=12,
    )
    b.panel(
        "Multipart uploads failed / s",
        [(f"sum(rate(gateway_s3_multipart_failed_total{{{SEL}}}[$__rate_interval]))", "failed")],
        unit="reqps",
        width=12,
    )
    protocol_row(b, "SMB", "smb", "(ops are the SMB2 commands)")
    b.panel(
        "Open files (SMB)",
        [(f'sum(gateway_open_files{{{SEL}, protocol="smb"}})', "open files")],
        width=12,
    )
    b.row("Backend")
    b.panel(
        "Backend errors / s by kind",
        [(rate("gateway_backend_errors_total", "backend, kind"), "{{backend}} {{kind}}")],
        unit="reqps",
    )
    b.panel(
        "Cache hit ratio",
        [
            (
                f"{rate('gateway_cache_hits_total', 'cache')} / ({rate('gateway_cache_hits_total', 'cache')}"
                f" + {rate('gateway_cache_misses_total', 'cache')})",
                "{{cache}}",
            )
        ],
        unit="percentunit",
        description="Target over 80 % (docs/tuning.rst, cache).",
    )
    b.panel(
        "Data directory free",
        [
            (f"gateway_data_dir_free_bytes{{{SEL}}}", "free {{instance}}"),
            (f"gateway_data_dir_size_bytes{{{SEL}}}", "size {{instance}}"),
        ],
        unit="bytes",
    )
    b.row("Circuit breaker")
    b.panel(
        "Circuit state by backend",
        [(f"gateway_circuit_breaker_state{{{SEL}}}", "{{backend}}")],
        kind="stat",
        width=12,
        thresholds=[("green", None), ("red", 1), ("orange", 2)],
        mappings=[
            {
                "type": "value",
                "options": {
                    "0": {"text": "closed"},
                    "1": {"text": "open"},
                    "2": {"text": "half-open"},
                },
            }
        ],
        description="0 closed, 1 open, 2 half-open; empty while no remote backend is used.",
    )
    b.panel(
        "Rejected requests / s by reason (all protocols)",
        [(rate("gateway_rejected_requests_total", "reason"), "{{reason}}")],
        unit="reqps",
        width=12,
    )
    b.row("Quotas")
    b.panel(
        "Highest usage / hard limit",
        [(f"gateway_quota_usage_ratio{{{SEL}}}", "{{kind}} {{resource}}")],
        unit="percentunit",
        width=12,
        thresholds=[("green", None), ("orange", 0.9), ("red", 1)],
        description="cfs-gateway quota report names the id; the alert fires over 90 %.",
    )
    b.panel(
        "Ids over a soft limit",
        [(f"gateway_quota_over_soft{{{SEL}}}", "{{kind}}")],
        width=12,
    )
    b.row("Locks and leases")
    b.panel(
        "Byte-range locks by owner protocol",
        [(f"sum by (protocol) (gateway_locks_held{{{SEL}}})", "{{protocol}}")],
    )
    b.panel(
        "Share reservations and blocked lock requests",
        [
            (f"sum by (protocol) (gateway_share_reservations{{{SEL}}})", "shares {{protocol}}"),
            (f"sum by (protocol) (gateway_lock_waiters{{{SEL}}})", "waiting {{protocol}}"),
        ],
    )
    b.panel(
        "Leases, oplocks, delegations by protocol",
        [(f"sum by (protocol) (gateway_leases_held{{{SEL}}})", "{{protocol}}")],
        description="gateway_leases_held: SMB leases and oplocks (smb), NFSv4 delegations and pNFS "
        "layouts (nfs4), in this gateway process's lease manager (docs/locks.rst).",
    )
    return {
        "__inputs": [
            {
                "name": "DS_PROMETHEUS",
                "label": "Prometheus",
                "description": "The Prometheus that scrapes the gateways (job claudefs-gateway)",
                "type": "datasource",
                "pluginId": "prometheus",
                "pluginName": "Prometheus",
            }
        ],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "9.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
            {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
        ],
        "title": "ClaudeFS gateway",
        "uid": "claudefs-gateway",
        "description": "claudefs-gateway: NFS, S3 and SMB front ends, backend, breaker, quotas, locks.",
        "tags": ["claudefs", "nfs", "s3", "smb"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "browser",
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "instance",
                    "label": "Gateway",
                    "type": "query",
                    "datasource": DS,
                    "query": {
                        "query": 'label_values(gateway_info{job="claudefs-gateway"}, instance)',
                        "refId": "instance",
                    },
                    "definition": 'label_values(gateway_info{job="claudefs-gateway"}, instance)',
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {},
                    "refresh": 2,
                    "sort": 1,
                }
            ]
        },
        "panels": b.panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
