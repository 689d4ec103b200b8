"""Tests for L{claudefs_gateway.core.metrics}."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.core.metrics import (
    CATALOGUE,
    LATENCY_BUCKETS,
    CpuUsage,
    Metrics,
    RequestMetrics,
    percentile,
)


def scrape(m: Metrics) -> dict[str, list]:
    text = generate_latest(m.registry).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


class MetricsTests(SynchronousTestCase):
    def test_only_registered_families_exposed(self) -> None:
        """A family appears once its owner asks for it, not before."""
        m = Metrics()
        self.assertEqual(scrape(m), {})
        m.family("gateway_s3_multipart_active").set(3)
        self.assertEqual(scrape(m)["gateway_s3_multipart_active"][0].value, 3)
        self.assertIs(
            m.family("gateway_s3_multipart_active"), m.family("gateway_s3_multipart_active")
        )

    def test_catalogue_names_are_exposed_as_is(self) -> None:
        """Every catalogue name is exactly the exposed name (counters keep their _total)."""
        m = Metrics()
        for name, spec in CATALOGUE.items():
            fam = m.family(name)
            if spec.labels:
                fam = fam.labels(*["x"] * len(spec.labels))
            if hasattr(fam, "inc"):
                fam.inc()
            elif hasattr(fam, "observe"):
                fam.observe(0.001)
            elif hasattr(fam, "info"):
                fam.info({"version": "1"})
        text = generate_latest(m.registry).decode()
        for name in CATALOGUE:
            self.assertIn(f"\n{name}", "\n" + text, name)

    def test_separate_registries(self) -> None:
        a, b = Metrics(), Metrics()
        a.family("gateway_draining").set(1)
        self.assertNotIn("gateway_draining", scrape(b))

    def test_unknown_name(self) -> None:
        self.assertRaises(KeyError, Metrics().family, "gateway_made_up")

    def test_collect_with(self) -> None:
        """A collected gauge is read at each scrape; a failing reader leaves it empty, logged."""
        m = Metrics()
        figures = {("nlm",): 2.0}
        m.collect_with("gateway_locks_held", lambda: figures)
        m.collect_with("gateway_data_dir_free_bytes", lambda: 123)
        reg = m.registry
        self.assertEqual(reg.get_sample_value("gateway_locks_held", {"protocol": "nlm"}), 2)
        self.assertEqual(reg.get_sample_value("gateway_data_dir_free_bytes"), 123)
        figures[("smb",)] = 1.0
        self.assertEqual(reg.get_sample_value("gateway_locks_held", {"protocol": "smb"}), 1)
        self.assertIn("gateway_locks_held", m.registered())
        self.assertRaises(ValueError, m.collect_with, "gateway_locks_held", lambda: {})
        self.assertRaises(ValueError, m.collect_with, "gateway_requests_total", lambda: {})

        def broken() -> float:
            raise RuntimeError("gone")

        m.collect_with("gateway_data_dir_size_bytes", broken)
        self.assertIn("# TYPE gateway_data_dir_size_bytes gauge", generate_latest(reg).decode())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class TallyTests(SynchronousTestCase):
    def test_tally(self) -> None:
        """Tallies are a counter's children, summed per label values at each scrape."""
        m = Metrics()
        a = m.tally("gateway_cache_hits_total", "attr")
        b = m.tally("gateway_cache_hits_total", "attr")
        n = m.tally("gateway_cache_hits_total", "name")
        a.inc()
        b.value += 2
        n.inc(5)
        reg = m.registry
        self.assertEqual(reg.get_sample_value("gateway_cache_hits_total", {"cache": "attr"}), 3)
        self.assertEqual(reg.get_sample_value("gateway_cache_hits_total", {"cache": "name"}), 5)
        a.inc()
        self.assertEqual(reg.get_sample_value("gateway_cache_hits_total", {"cache": "attr"}), 4)
        text = generate_latest(reg).decode()
        self.assertIn("# TYPE gateway_cache_hits_total counter", text)
        self.assertIn('gateway_cache_hits_total{cache="attr"} 4.0', text)

    def test_tally_refused(self) -> None:
        """Only counters, never one already registered as an ordinary family, right labels."""
        m = Metrics()
        self.assertRaises(ValueError, m.tally, "gateway_locks_held", "nlm")
        m.family("gateway_auth_failures_total")
        self.assertRaises(ValueError, m.tally, "gateway_auth_failures_total", "smb")
        self.assertRaises(ValueError, m.tally, "gateway_cache_hits_total", "attr", "extra")
        self.assertRaises(KeyError, m.tally, "no_such_total", "x")


class TallyHistogramTests(SynchronousTestCase):
    def test_same_as_prometheus_client(self) -> None:
        """
        The samples are those prometheus_client's own Histogram gives for
        the same observations (bucket edges included: "le" is inclusive),
        children of the same labels summed.
        """
        values = [0.0, 0.00005, 0.00006, 0.001, 0.0011, 2.5, 1e9, 0.3]
        m = Metrics()
        a = m.tally_histogram("gateway_latency_seconds", "smb", "CREATE")
        b = m.tally_histogram("gateway_latency_seconds", "smb", "CREATE")
        for i, v in enumerate(values):
            (a if i % 2 else b).observe(v)
        m.tally_histogram("gateway_latency_seconds", "smb", "CLOSE").observe(0.01)
        ref = CollectorRegistry()
        h = Histogram(
            "gateway_latency_seconds",
            "x",
            ("protocol", "op"),
            registry=ref,
            buckets=LATENCY_BUCKETS,
        )
        for v in values:
            h.labels("smb", "CREATE").observe(v)
        h.labels("smb", "CLOSE").observe(0.01)

        def samples(reg: CollectorRegistry) -> list[tuple[str, tuple[Any, ...], float]]:
            return sorted(
                (x.name, tuple(sorted(x.labels.items())), x.value)
                for fam in reg.collect()
                for x in fam.samples
                if not x.name.endswith("_created")
            )

        self.assertEqual(samples(m.registry), samples(ref))

    def test_refused(self) -> None:
        m = Metrics()
        self.assertRaises(ValueError, m.tally_histogram, "gateway_requests_total", "a", "b")
        m.family("gateway_lease_break_seconds")
        self.assertRaises(ValueError, m.tally_histogram, "gateway_lease_break_seconds", "smb")
        self.assertRaises(ValueError, m.tally_histogram, "gateway_latency_seconds", "smb")


class GaugeFromTests(SynchronousTestCase):
    def test_gauge_from(self) -> None:
        """A gauge child read at scrape, summed over every reader given for it."""
        m = Metrics()
        figures = {"a": 1, "b": 2}
        m.gauge_from("gateway_in_flight_requests", ("smb",), lambda: figures["a"])
        m.gauge_from("gateway_in_flight_requests", ("smb",), lambda: figures["b"])
        m.gauge_from("gateway_in_flight_requests", ("nfs3",), lambda: 7)
        reg = m.registry
        self.assertEqual(reg.get_sample_value("gateway_in_flight_requests", {"protocol": "smb"}), 3)
        figures["a"] = 0
        self.assertEqual(reg.get_sample_value("gateway_in_flight_requests", {"protocol": "smb"}), 2)
        self.assertEqual(
            reg.get_sample_value("gateway_in_flight_requests", {"protocol": "nfs3"}), 7
        )


class RequestMetricsTests(SynchronousTestCase):
    def test_observe(self) -> None:
        m = Metrics()
        r = RequestMetrics(m, "nfs3")
        r.observe("GETATTR", 0.0002)
        r.observe("GETATTR", 0.0004)
        r.observe("LOOKUP", 0.003, status="NFS3ERR_NOENT")
        r.rejected("draining")
        r.auth_failed()
        s = scrape(m)
        reqs = {
            tuple(sorted(x.labels.items())): x.value
            for x in s["gateway_requests"]
            if x.name.endswith("_total")
        }
        self.assertEqual(reqs[(("op", "GETATTR"), ("protocol", "nfs3"))], 2)
        errs = [x for x in s["gateway_errors"] if x.name.endswith("_total")]
        self.assertEqual([(x.labels["status"], x.value) for x in errs], [("NFS3ERR_NOENT", 1)])
        self.assertEqual(s["gateway_latency_p99_us"][0].value, 3000.0)
        buckets = [x for x in s["gateway_latency_seconds"] if x.name.endswith("_count")]
        self.assertEqual(sum(x.value for x in buckets), 3)
        self.assertEqual(
            [x.value for x in s["gateway_auth_failures"] if x.name.endswith("_total")], [1]
        )

    def test_percentile(self) -> None:
        self.assertEqual(percentile([], 0.99), 0.0)
        values = [float(i) for i in range(1, 101)]
        self.assertEqual(percentile(values, 0.99), 99.0)
        self.assertEqual(percentile(values, 0.5), 50.0)


class CpuUsageTests(SynchronousTestCase):
    def test_percent_between_readings(self) -> None:
        class T:
            user, system = 0.0, 0.0

        now = [100.0]
        t = T()
        cpu = CpuUsage(lambda: now[0], lambda: t)
        now[0], t.user, t.system = 102.0, 0.5, 0.5
        self.assertEqual(cpu.percent(), 50.0)
        self.assertEqual(cpu.percent(), 0.0)
