"""
``contrib/``: the Prometheus alert rules and example configuration (promtool),
the Grafana dashboard, and the systemd units (systemd-analyze), each checked by
the tools that will read them; and every metric a panel or rule names is one a
running gateway exports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.helpers import REPO, bin_path, http_get, kill_on_cleanup, loopback_config, spawn

CONTRIB = os.path.join(REPO, "contrib")
RULES = os.path.join(CONTRIB, "prometheus", "claudefs-gateway.rules.yml")
DASHBOARD = os.path.join(CONTRIB, "grafana", "claudefs-gateway.json")
UNITS = os.path.join(CONTRIB, "systemd")

# A metric selector: a name followed by its label matchers.
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{")
# Series Prometheus makes itself, not the gateway.
_SYNTHETIC = {"up"}


def tool(name: str) -> str:
    """A system tool the test needs (scripts/run-tests installs it); missing fails."""
    found = shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/bin/{name}") if os.path.exists(p)), None
    )
    if found is None:
        raise AssertionError(f"{name} is not installed; run scripts/run-tests")
    return found


async def run(argv: list[str], cwd: str | None = None) -> tuple[int, str]:
    proc = spawn(argv, path=cwd)
    status = await proc.ended
    return status, "\n".join(proc.text) + "\n" + proc.stderr.decode("utf-8", "replace")


def rule_exprs() -> dict[str, str]:
    import yaml

    with open(RULES) as f:
        doc = yaml.safe_load(f)
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def dashboard() -> dict[str, Any]:
    with open(DASHBOARD) as f:
        doc: dict[str, Any] = json.load(f)
    return doc


def panel_exprs() -> dict[str, str]:
    out = {}
    for p in dashboard()["panels"]:
        for t in p.get("targets", []):
            out[f"{p['title']} {t['refId']}"] = t["expr"]
    return out


def as_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables given values Prometheus accepts."""
    return expr.replace("$__rate_interval", "5m").replace("$instance", ".*")


def metric_names(expr: str) -> set[str]:
    return set(_SELECTOR.findall(expr))


class PromtoolTests(TestCase):
    timeout = 60

    async def test_check_rules(self) -> None:
        status, out = await run([tool("promtool"), "check", "rules", RULES])
        self.assertEqual(status, 0, out)
        self.assertIn("SUCCESS", out)

    async def test_rule_unit_tests(self) -> None:
        """The alerts fire (and stay quiet) on the synthetic series of the rules' own tests."""
        status, out = await run(
            [tool("promtool"), "test", "rules", "claudefs-gateway.rules.test.yml"],
            cwd=os.path.join(CONTRIB, "prometheus"),
        )
        self.assertEqual(status, 0, out)

    async def test_example_prometheus_config(self) -> None:
        status, out = await run(
            [tool("promtool"), "check", "config", "prometheus.yml"],
            cwd=os.path.join(CONTRIB, "prometheus"),
        )
        self.assertEqual(status, 0, out)

    async def test_dashboard_queries_are_promql(self) -> None:
        """Every panel's query parses as PromQL (checked as recording rules by promtool)."""
        import yaml

        rules = [
            {"record": f"claudefs:panel_{i}", "expr": as_promql(expr)}
            for i, expr in enumerate(panel_exprs().values())
        ]
        path = self.mktemp() + ".yml"
        with open(path, "w") as f:
            yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}, f)
        status, out = await run([tool("promtool"), "check", "rules", path])
        self.assertEqual(status, 0, out)


class DashboardTests(SynchronousTestCase):
    def test_generated(self) -> None:
        """The JSON is what contrib/grafana/dashboard.py makes (edit the script, regenerate)."""
        sys.path.insert(0, os.path.join(CONTRIB, "grafana"))
        self.addCleanup(sys.path.remove, os.path.join(CONTRIB, "grafana"))
        import dashboard as generator  # type: ignore[import-not-found]

        with open(DASHBOARD) as f:
            self.assertEqual(f.read(), generator.render())

    def test_importable_shape(self) -> None:
        """
        An importable dashboard: a Prometheus data-source input that every panel
        uses, unique panel ids, panels that do not overlap, and one row per
        protocol plus backend, breaker, quotas, and locks and leases.
        """
        doc = dashboard()
        self.assertEqual(doc["__inputs"][0]["pluginId"], "prometheus")
        rows = [p["title"] for p in doc["panels"] if p["type"] == "row"]
        self.assertEqual(
            rows,
            ["Overview", "NFS", "NFSv4.1/4.2", "S3", "SMB", "Backend", "Circuit breaker", "Quotas",
             "Locks and leases"],
        )  # fmt: skip
        ids = [p["id"] for p in doc["panels"]]
        self.assertEqual(len(ids), len(set(ids)))
        cells: set[tuple[int, int]] = set()
        for p in doc["panels"]:
            g = p["gridPos"]
            self.assertLessEqual(g["x"] + g["w"], 24, p["title"])
            mine = {
                (x, y)
                for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])
            }
            self.assertFalse(cells & mine, f"{p['title']} overlaps another panel")
            cells |= mine
            if p["type"] != "row":
                self.assertEqual(p["datasource"]["uid"], "${DS_PROMETHEUS}")
                self.assertTrue(p["targets"], p["title"])


class SystemdTests(TestCase):
    timeout = 60

    def staged(self) -> str:
        """
        The units, with /usr/local/bin pointing at a stand-in: systemd-analyze
        checks that each command exists, and the package is not installed there
        (test_server_units_run_what_exists runs the real parsers).
        """
        where = os.path.abspath(self.mktemp())
        bindir = os.path.join(where, "bin")
        os.makedirs(bindir)
        for name in ("cfs-gateway",):
            path = os.path.join(bindir, name)
            with open(path, "w") as f:
                f.write("#!/bin/sh\nexit 0\n")
            os.chmod(path, stat.S_IRWXU)
        for unit in sorted(os.listdir(UNITS)):
            with open(os.path.join(UNITS, unit)) as f:
                text = f.read()
            with open(os.path.join(where, unit), "w") as f:
                f.write(text.replace("/usr/local/bin/", bindir + "/"))
        return where

    def units(self) -> list[str]:
        return sorted(u for u in os.listdir(UNITS) if u.endswith(".service"))

    async def test_verify(self) -> None:
        where = self.staged()
        units = self.units()
        self.assertEqual(
            units, ["claudefs-data.service", "claudefs-gateway.service", "claudefs-meta.service"]
        )
        status, out = await run([tool("systemd-analyze"), "verify", *units], cwd=where)
        self.assertEqual(status, 0, out)
        self.assertNotIn("Unknown", out)

    async def test_hardened(self) -> None:
        """Each unit's exposure (systemd-analyze security) is at most 2.0 of 10."""
        where = self.staged()
        for unit in self.units():
            status, out = await run(
                [tool("systemd-analyze"), "security", "--offline=yes", "--threshold=20", unit],
                cwd=where,
            )
            self.assertEqual(status, 0, out[-1500:])

    def test_gateway_unit_runs_what_exists(self) -> None:
        """The gateway unit's commands are the CLI's (validate-config, start --data-dir)."""
        with open(os.path.join(UNITS, "claudefs-gateway.service")) as f:
            text = f.read()
        self.assertIn("cfs-gateway validate-config --config /etc/claudefs/gateway.yaml", text)
        self.assertIn("cfs-gateway start --config /etc/claudefs/gateway.yaml --data-dir", text)
        self.assertIn("AmbientCapabilities=CAP_NET_BIND_SERVICE", text)


class ExportedTests(TestCase):
    timeout = 120

    async def test_every_named_metric_is_exported(self) -> None:
        """
        Every metric an alert rule or a dashboard panel names is in the /metrics
        of a gateway serving every protocol (started on port 0); only
        Prometheus's own "up" is not.
        """
        config = loopback_config(self)
        proc = spawn([bin_path("cfs-gateway"), "start", "--config", config])
        kill_on_cleanup(self, proc)
        admin = await proc.wait_listening("admin")
        await proc.wait_ready()
        status, _, body = await http_get(f"http://127.0.0.1:{admin}/metrics")
        self.assertEqual(status, 200)
        exported: set[str] = set()
        for line in body.decode().splitlines():
            m = re.match(r"# TYPE (\S+) (\S+)", line)
            if m:
                name, kind = m.groups()
                exported.add(name)
                if kind == "histogram":
                    exported |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
            elif line and not line.startswith("#"):
                exported.add(re.split(r"[{ ]", line, maxsplit=1)[0])
        named: dict[str, set[str]] = {}
        for where, expr in [*rule_exprs().items(), *panel_exprs().items()]:
            for name in metric_names(expr):
                named.setdefault(name, set()).add(where)
        self.assertIn("gateway_circuit_breaker_state", named)
        self.assertIn("gateway_quota_usage_ratio", named)
        missing = {n: sorted(w) for n, w in named.items() if n not in exported | _SYNTHETIC}
        self.assertEqual(missing, {})
        proc.signal("TERM")
        self.assertEqual(await proc.ended, 0)
