"""
Tests for the bench runner's logic (bench/): interleaving, statistics, ratios,
the table and the JSON report. No timing is asserted: numbers come from fakes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from bench import runner, targets
from bench.stats import Metric, Summary, ratio, table, to_json
from bench.workloads import Workload, load_all


class FakeTarget(targets.Target):
    def __init__(self, name: str) -> None:
        super().__init__(Path("."))
        self.name = name
        self.endpoints = {"who": name}

    def start(self) -> None:
        pass


class RunnerTests(SynchronousTestCase):
    def test_interleaved_and_summarised(self) -> None:
        """Runs alternate gateway, peer, gateway, peer; each metric gets a row with a ratio."""
        order: list[str] = []
        values = {"gw": iter([10.0, 30.0, 20.0]), "peer": iter([20.0, 20.0, 20.0])}

        def run(endpoints: dict[str, Any], scratch: Path) -> dict[str, float]:
            order.append(endpoints["who"])
            v = next(values[endpoints["who"]])
            return {"ops/s": v, "p99": v}

        w = Workload(
            "fake.w",
            "nfs",
            (Metric("ops/s", "ops/s"), Metric("p99", "ms", higher_is_better=False)),
            run,
        )
        rows = runner.run_workload(
            w, FakeTarget("gw"), FakeTarget("peer"), 3, Path(self.mktemp()), log=lambda s: None
        )
        self.assertEqual(order, ["gw", "peer", "gw", "peer", "gw", "peer"])
        ops, p99 = rows
        self.assertEqual(ops["gateway"], Summary(20.0, 10.0, 30.0, 3))
        self.assertEqual(ops["ratio"], 1.0)
        self.assertEqual(p99["ratio"], 1.0)
        self.assertEqual(ops["gateway_runs"], [10.0, 30.0, 20.0])

    def test_workers_against_single_and_peer(self) -> None:
        """
        With workers and a peer in one run, runs go single, peer, workers;
        each row has workers/1 and workers/peer, both > 1 when the workers did
        better, and the table shows both.
        """
        order: list[str] = []
        values = {"gw": 100.0, "peer": 200.0, "w2": 250.0}

        def run(endpoints: dict[str, Any], scratch: Path) -> dict[str, float]:
            order.append(endpoints["who"])
            v = values[endpoints["who"]]
            return {"ops/s": v, "cpu": 1000 / v}

        w = Workload(
            "fake.w",
            "nfs",
            (Metric("ops/s", "ops/s"), Metric("cpu", "us", higher_is_better=False)),
            run,
        )
        rows = runner.run_workload(
            w,
            FakeTarget("gw"),
            FakeTarget("peer"),
            2,
            Path(self.mktemp()),
            log=lambda s: None,
            workers=FakeTarget("w2"),
        )
        self.assertEqual(order, ["gw", "peer", "w2"] * 2)
        ops, cpu = rows
        self.assertEqual(ops["workers_ratio"], 2.5)
        self.assertEqual(ops["workers_peer_ratio"], 1.25)
        self.assertEqual(cpu["workers_ratio"], 2.5)
        self.assertEqual(cpu["workers_peer_ratio"], 1.25)
        text = table(rows)
        self.assertIn("workers/peer", text.splitlines()[0])
        self.assertIn("1.25x", text.splitlines()[2])
        doc = json.loads(json.dumps(to_json(rows, {})))
        self.assertEqual(doc["results"][0]["workers_peer_ratio"], 1.25)

    def test_warmup_runs_are_not_counted(self) -> None:
        """Warm-up runs come first, interleaved, and no metric includes them."""
        order: list[str] = []
        values = {"gw": iter([99.0, 1.0, 3.0]), "peer": iter([99.0, 2.0, 2.0])}

        def run(endpoints: dict[str, Any], scratch: Path) -> dict[str, float]:
            order.append(endpoints["who"])
            return {"x": next(values[endpoints["who"]])}

        w = Workload("fake.w", "nfs", (Metric("x", "u"),), run)
        (row,) = runner.run_workload(
            w,
            FakeTarget("gw"),
            FakeTarget("peer"),
            2,
            Path(self.mktemp()),
            log=lambda s: None,
            warmup=1,
        )
        self.assertEqual(order, ["gw", "peer"] * 3)
        self.assertEqual(row["gateway_runs"], [1.0, 3.0])
        self.assertEqual(row["peer_runs"], [2.0, 2.0])

    def test_ratio_orientation(self) -> None:
        """A ratio above 1 always means the gateway did better."""
        fast, slow = Summary(2, 2, 2, 1), Summary(1, 1, 1, 1)
        self.assertEqual(ratio(fast, slow, Metric("MiB/s", "MiB/s")), 2.0)
        self.assertEqual(ratio(slow, fast, Metric("p99", "ms", higher_is_better=False)), 2.0)
        self.assertIsNone(ratio(fast, None, Metric("x", "y")))

    def test_uncompared_metric_has_no_ratio(self) -> None:
        """A remainder near zero (the qd1 off-CPU time) is shown without a ratio."""
        a, b = Summary(4.6, 0, 20, 3), Summary(0.03, 0, 1, 3)
        self.assertIsNone(ratio(a, b, Metric("off", "us", higher_is_better=False, compared=False)))
        self.assertIsNone(ratio(Summary(-1, -1, -1, 1), b, Metric("off", "us")))

    def test_table_and_json(self) -> None:
        m = Metric("MiB/s", "MiB/s")
        rows = [
            {
                "workload": "nfs.seq_read",
                "metric": m,
                "gateway": Summary(700, 650, 720, 3),
                "gateway_runs": [650, 700, 720],
                "peer_name": "nfs-ganesha",
                "peer": Summary(1000, 990, 1010, 3),
                "peer_runs": [990, 1000, 1010],
                "ratio": 0.7,
            }
        ]
        text = table(rows)
        self.assertIn("nfs.seq_read", text)
        self.assertIn("0.70x", text)
        self.assertIn("nfs-ganesha", text)
        doc = json.loads(json.dumps(to_json(rows, {"runs": 3})))
        self.assertEqual(doc["results"][0]["peer"]["median"], 1000)
        self.assertEqual(doc["results"][0]["ratio"], 0.7)

    def test_registry_loads(self) -> None:
        self.assertIn("admin.health", load_all())

    def test_unknown_workload_is_an_error(self) -> None:
        with self.assertRaises(SystemExit):
            runner.main(["-w", "no.such"])


class ConfigExtraTests(SynchronousTestCase):
    def test_merged_section_by_section(self) -> None:
        """--config-extra merges into the gateway's configuration; what it names wins."""
        from pathlib import Path

        from bench.targets import Gateway
        from claudefs_gateway.core import config as cfg

        extra = "nfs: {max_requests_per_connection: 1}\ncache: {nfs_attr_cache: {max_entries: 0}}"
        g = Gateway(Path(self.mktemp()), ["nfs"], extra)
        c = cfg.loads(g.config_text(dict.fromkeys(("nfs", "mount", "s3", "smb", "admin"), 1)))
        self.assertEqual(c.nfs.max_requests_per_connection, 1)
        self.assertEqual(c.cache.nfs_attr_cache.max_entries, 0)
        self.assertEqual(c.nfs.bind.port, 1)

    def test_gateway_runs_this_checkout(self) -> None:
        """
        The gateway the bench starts imports the checkout beside the bench,
        not the one an installed script names: before/after runs from a
        worktree with another checkout's venv measured that checkout.
        """
        import claudefs_gateway
        from bench.targets import CHECKOUT, Gateway

        seen: dict[str, Any] = {}

        def popen(argv: list[str], **kw: Any) -> Any:
            seen.update(kw, argv=argv)
            raise OSError("not started in this test")

        self.patch(targets.subprocess, "Popen", popen)
        g = Gateway(Path(self.mktemp()), ["nfs"], workers=2)
        self.assertRaises(OSError, g.start)
        self.assertEqual(seen["argv"][1:4], ["-m", "claudefs_gateway.cli", "start"])
        self.assertEqual(seen["argv"][-2:], ["--workers", "2"])
        self.assertEqual(seen["cwd"], CHECKOUT)
        self.assertEqual(seen["env"]["PYTHONPATH"].split(os.pathsep)[0], str(CHECKOUT))
        # The checkout is where the package under test lives.
        self.assertEqual(Path(claudefs_gateway.__file__).resolve().parents[1], CHECKOUT)
