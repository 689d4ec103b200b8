# -*- test-case-name: tests.core.test_metrics -*-
"""
Prometheus metrics on a per-gateway registry.

The names are the design documents' (DESIGN.md "Observability"); L{CATALOGUE}
holds each one's kind, help text and labels exactly once, and a subsystem
registers the families it owns by asking L{Metrics} for them by name, so two
owners cannot define one name two ways, and a gateway without S3 shows no S3
metrics. Labels are bounded (protocol, op, status, backend, cache): never
peers, paths or users (STYLE.md §9).
"""

from __future__ import annotations

import bisect
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString

from claudefs_gateway.core.log import Logger

__all__ = ["CATALOGUE", "Metrics", "RequestMetrics", "Tally", "TallyHistogram", "LATENCY_BUCKETS"]

# From 50 µs (a cached GETATTR) to 30 s (a large object over a slow link).
LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


@attrs.frozen
class Spec:
    kind: type
    help: str
    labels: tuple[str, ...] = ()


CATALOGUE: dict[str, Spec] = {
    "gateway_requests_total": Spec(
        Counter, "Requests served, by protocol and operation.", ("protocol", "op")
    ),
    "gateway_errors_total": Spec(
        Counter, "Requests answered with an error status.", ("protocol", "op", "status")
    ),
    "gateway_latency_seconds": Spec(
        Histogram, "Time from request decoded to reply queued.", ("protocol", "op")
    ),
    "gateway_latency_p99_us": Spec(
        Gauge, "p99 latency of the last 2048 requests, microseconds.", ("protocol",)
    ),
    "gateway_active_connections": Spec(Gauge, "Open client connections.", ("protocol",)),
    "gateway_max_connections": Spec(
        Gauge, "Most client connections accepted at once (0 = unlimited).", ("protocol",)
    ),
    "gateway_in_flight_requests": Spec(Gauge, "Requests being served now.", ("protocol",)),
    "gateway_max_connections_per_client": Spec(
        Gauge,
        "Most connections one client address may hold open at once (0 = unlimited).",
        ("protocol",),
    ),
    "gateway_memory_budget_bytes": Spec(
        Gauge,
        "The gateway-wide memory budget of requests in flight: its limit and what is used.",
        ("kind",),
    ),
    "gateway_rejected_requests_total": Spec(
        Counter,
        "Requests refused without being served (circuit open, draining, overload).",
        ("protocol", "reason"),
    ),
    "gateway_auth_failures_total": Spec(Counter, "Failed authentications.", ("protocol",)),
    "gateway_backend_errors_total": Spec(
        Counter, "Backend operations that failed.", ("backend", "kind")
    ),
    "gateway_circuit_breaker_state": Spec(
        Gauge, "Circuit state: 0 closed, 1 open, 2 half-open.", ("backend",)
    ),
    "gateway_leases_held": Spec(
        Gauge, "Leases, oplocks and delegations held now, by protocol.", ("protocol",)
    ),
    "gateway_lease_breaks_total": Spec(
        Counter, "Lease, oplock and delegation breaks sent, by holder's protocol.", ("protocol",)
    ),
    "gateway_lease_break_seconds": Spec(
        Histogram,
        "Time from a break sent to its acknowledgement (or revocation), by protocol.",
        ("protocol",),
    ),
    "gateway_lease_revocations_total": Spec(
        Counter, "Leases revoked because a break went unacknowledged, by protocol.", ("protocol",)
    ),
    "gateway_cache_hits_total": Spec(Counter, "Cache lookups answered from the cache.", ("cache",)),
    "gateway_cache_misses_total": Spec(
        Counter, "Cache lookups that went to the backend.", ("cache",)
    ),
    "gateway_s3_multipart_active": Spec(Gauge, "Multipart uploads in progress."),
    "gateway_s3_multipart_failed_total": Spec(Counter, "Multipart uploads aborted or expired."),
    "gateway_s3_lifecycle_runs_total": Spec(Counter, "Passes of the S3 lifecycle service."),
    "gateway_s3_lifecycle_actions_total": Spec(
        Counter,
        "What the S3 lifecycle service did: expire (current versions), noncurrent, "
        "delete_marker, abort_upload.",
        ("action",),
    ),
    "gateway_s3_lifecycle_seconds": Spec(Histogram, "Duration of an S3 lifecycle pass."),
    "gateway_s3_mapping_conflicts_total": Spec(
        Counter,
        "S3 writes refused because the file tree cannot hold the key (a key that is also "
        "a prefix; data under a key ending in /).",
        ("kind",),
    ),
    "gateway_cpu_usage_percent": Spec(
        Gauge, "Gateway process CPU use since the last scrape, percent of one core."
    ),
    "gateway_draining": Spec(Gauge, "1 while the gateway drains (no new connections), else 0."),
    "gateway_open_files": Spec(
        Gauge,
        "Files held open by connected clients (SMB opens, NFSv4 open states), by protocol.",
        ("protocol",),
    ),
    "gateway_locks_held": Spec(
        Gauge,
        "Byte-range locks in the cross-protocol lock table, by their owner's protocol.",
        ("protocol",),
    ),
    "gateway_share_reservations": Spec(
        Gauge, "Share reservations (share modes) held, by their owner's protocol.", ("protocol",)
    ),
    "gateway_lock_waiters": Spec(
        Gauge, "Blocked lock requests waiting, by their owner's protocol.", ("protocol",)
    ),
    "gateway_quota_usage_ratio": Spec(
        Gauge,
        "Highest usage / hard limit of any uid or gid with a hard limit (0: none).",
        ("kind", "resource"),
    ),
    "gateway_quota_over_soft": Spec(
        Gauge, "Uids or gids over a soft limit (grace period running or past).", ("kind",)
    ),
    "gateway_data_dir_free_bytes": Spec(
        Gauge, "Free space for the gateway in the file system of its data directory."
    ),
    "gateway_data_dir_size_bytes": Spec(
        Gauge, "Size of the file system holding the gateway's data directory."
    ),
    "gateway_info": Spec(Info, "Gateway version and backend type."),
    "gateway_pnfs_ds_bytes": Spec(
        Gauge,
        "Bytes a pNFS data server read and wrote for clients over NFSv3 since it started.",
        ("direction",),
    ),
    "gateway_pnfs_layouts": Spec(
        Gauge, "pNFS layouts held by clients of this gateway.", ("iomode",)
    ),
    "gateway_pnfs_layout_ops_total": Spec(
        Counter, "pNFS layout operations answered, by operation and outcome.", ("op", "status")
    ),
    "gateway_mirror_stale_copies": Spec(
        Gauge, "Mirror copies of files that missed writes and wait to be re-silvered."
    ),
    "gateway_pnfs_mirrors_degraded": Spec(
        Gauge, "Files whose layout lacks a mirror (a data server down or being re-silvered)."
    ),
}


class Metrics:
    """
    The gateway's metric families on one registry.

    @ivar registry: what C{/metrics} serves; tests pass a fresh one.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._families: dict[str, Any] = {}
        self._read_at_scrape: dict[tuple[str, tuple[str, ...]], list[Callable[[], float]]] = {}

    def gauge_from(self, name: str, labels: tuple[str, ...], value: Callable[[], float]) -> None:
        """
        Gauge C{name}'s child C{labels} reads C{value()} at each scrape
        (summed with every other reader given for the same child), instead
        of being set on a hot path (requests in flight: two gauge updates,
        each a lock, per request).
        """
        readers = self._read_at_scrape.get((name, labels))
        if readers is None:
            readers = self._read_at_scrape[(name, labels)] = []
            self.family(name).labels(*labels).set_function(
                lambda: float(sum(read() for read in readers))
            )
        readers.append(value)

    def family(self, name: str) -> Any:
        """
        The family C{name} from L{CATALOGUE}, registered on first use.

        @raise KeyError: C{name} is not in the catalogue.
        """
        fam = self._families.get(name)
        if fam is None:
            spec = CATALOGUE[name]
            kw: dict[str, Any] = {"registry": self.registry}
            if spec.kind is Histogram:
                kw["buckets"] = LATENCY_BUCKETS
            # prometheus_client adds _total to counters itself.
            base = name[: -len("_total")] if spec.kind is Counter else name
            if spec.kind is Info:
                base = name[: -len("_info")]
            fam = spec.kind(base, spec.help, spec.labels, **kw)
            self._families[name] = fam
        return fam

    def registered(self) -> list[str]:
        return sorted(self._families)

    def collect_with(
        self, name: str, values: Callable[[], Mapping[tuple[str, ...], float] | float]
    ) -> None:
        """
        Export gauge C{name} from L{CATALOGUE} with values read at each scrape:
        C{values()} returns the value (no labels) or a mapping from label
        values to values. For figures that live elsewhere (the lock table,
        quotas, free space) and would be stale if copied into a gauge.

        @raise KeyError: C{name} is not in the catalogue.
        @raise ValueError: C{name} is not a gauge, or is already registered.
        """
        spec = CATALOGUE[name]
        if spec.kind is not Gauge or name in self._families:
            raise ValueError(f"{name} cannot be collected this way")
        collector = _Collected(name, spec, values)
        self.registry.register(collector)
        self._families[name] = collector

    def tally(self, name: str, *labels: str) -> Tally:
        """
        A child of counter C{name} from L{CATALOGUE} kept as a plain integer
        and read at each scrape: for counts taken several times a request
        (cache lookups), where a prometheus_client child's C{inc} (a check
        and a lock) costs more than the lookup it counts. Tallies with the
        same label values are summed.

        @raise KeyError: C{name} is not in the catalogue.
        @raise ValueError: C{name} is not a counter, or is already registered
            as an ordinary family.
        """
        return self._tallied(name).child(labels)

    def _tallied(self, name: str) -> _Tallied:
        fam = self._families.get(name)
        if fam is None:
            spec = CATALOGUE[name]
            if spec.kind is not Counter:
                raise ValueError(f"{name} is not a counter")
            fam = _Tallied(name, spec)
            self.registry.register(fam)
            self._families[name] = fam
        elif not isinstance(fam, _Tallied):
            raise ValueError(f"{name} is already registered")
        return fam

    def tally_histogram(self, name: str, *labels: str) -> TallyHistogram:
        """
        A child of histogram C{name} from L{CATALOGUE} (buckets
        L{LATENCY_BUCKETS}) kept as plain integers and read at each scrape,
        as L{tally} does for counters: one observation per request costs a
        bisection and two additions, not a check and two locks.

        @raise KeyError: C{name} is not in the catalogue.
        @raise ValueError: C{name} is not a histogram, or is already
            registered as an ordinary family.
        """
        return self._tally_histograms(name).child(labels)

    def _tally_histograms(self, name: str) -> _TallyHistograms:
        fam = self._families.get(name)
        if fam is None:
            spec = CATALOGUE[name]
            if spec.kind is not Histogram:
                raise ValueError(f"{name} is not a histogram")
            fam = _TallyHistograms(name, spec)
            self.registry.register(fam)
            self._families[name] = fam
        elif not isinstance(fam, _TallyHistograms):
            raise ValueError(f"{name} is already registered")
        return fam

    def add_process_collectors(self, clock: Callable[[], float] = time.monotonic) -> None:
        """process_* series and gateway_cpu_usage_percent, owned by the process itself."""
        ProcessCollector(registry=self.registry)
        cpu = CpuUsage(clock)
        self.family("gateway_cpu_usage_percent").set_function(cpu.percent)


class _Collected:
    """A gauge family whose samples C{values()} gives at each scrape (L{Metrics.collect_with})."""

    _log = Logger()

    def __init__(
        self,
        name: str,
        spec: Spec,
        values: Callable[[], Mapping[tuple[str, ...], float] | float],
    ) -> None:
        self.name = name
        self.spec = spec
        self.values = values

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(self.name, self.spec.help, labels=self.spec.labels)]

    def collect(self) -> list[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.spec.help, labels=self.spec.labels)
        try:
            got = self.values()
        except Exception:
            self._log.failure("collecting {metric}", metric=self.name)
            return [family]
        if isinstance(got, Mapping):
            for labels, value in sorted(got.items()):
                family.add_metric(list(labels), float(value))
        else:
            family.add_metric([], float(got))
        return [family]


class Tally:
    """One counter child as a plain integer (L{Metrics.tally}); only the reactor thread counts."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class _Tallied:
    """A counter family whose children are L{Tally}s, summed per label values at each scrape."""

    def __init__(self, name: str, spec: Spec) -> None:
        self.name = name
        self.spec = spec
        self._children: list[tuple[tuple[str, ...], Tally]] = []

    def child(self, labels: tuple[str, ...]) -> Tally:
        if len(labels) != len(self.spec.labels):
            raise ValueError(f"{self.name} takes labels {self.spec.labels}")
        t = Tally()
        self._children.append((labels, t))
        return t

    def describe(self) -> list[CounterMetricFamily]:
        return [CounterMetricFamily(self.name, self.spec.help, labels=self.spec.labels)]

    def collect(self) -> list[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.spec.help, labels=self.spec.labels)
        sums: dict[tuple[str, ...], int] = {}
        for labels, t in self._children:
            sums[labels] = sums.get(labels, 0) + t.value
        for labels, value in sorted(sums.items()):
            family.add_metric(list(labels), float(value))
        return [family]


class TallyHistogram:
    """One histogram child as plain numbers (L{Metrics.tally_histogram}); reactor thread only."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        # One count per bucket of LATENCY_BUCKETS, then one beyond the last.
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, as a bucket's "le" means.
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1
        self.sum += value


class _TallyHistograms:
    """A histogram family whose children are L{TallyHistogram}s, read at each scrape."""

    def __init__(self, name: str, spec: Spec) -> None:
        self.name = name
        self.spec = spec
        self._children: list[tuple[tuple[str, ...], TallyHistogram]] = []

    def child(self, labels: tuple[str, ...]) -> TallyHistogram:
        if len(labels) != len(self.spec.labels):
            raise ValueError(f"{self.name} takes labels {self.spec.labels}")
        h = TallyHistogram()
        self._children.append((labels, h))
        return h

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self.name, self.spec.help, labels=self.spec.labels)]

    def collect(self) -> list[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.spec.help, labels=self.spec.labels)
        merged: dict[tuple[str, ...], tuple[list[int], float]] = {}
        for labels, h in self._children:
            counts, total = merged.get(labels, ([0] * len(h.counts), 0.0))
            merged[labels] = ([a + b for a, b in zip(counts, h.counts, strict=True)], total + h.sum)
        bounds = [*map(floatToGoString, LATENCY_BUCKETS), "+Inf"]
        for labels, (counts, total) in sorted(merged.items()):
            running = 0
            buckets = []
            for bound, n in zip(bounds, counts, strict=True):
                running += n
                buckets.append((bound, float(running)))
            family.add_metric(list(labels), buckets, total)
        return [family]


class CpuUsage:
    """CPU percent of one core used by this process between two readings."""

    def __init__(self, clock: Callable[[], float], times: Callable[[], Any] = os.times) -> None:
        self._clock = clock
        self._times = times
        t = times()
        self._last = (clock(), t.user + t.system)

    def percent(self) -> float:
        now = self._clock()
        t = self._times()
        cpu = t.user + t.system
        last_wall, last_cpu = self._last
        self._last = (now, cpu)
        wall = now - last_wall
        if wall <= 0:
            return 0.0
        return round(100.0 * (cpu - last_cpu) / wall, 2)


class _Reservoir:
    """The last N latencies of one protocol, for the p99 gauge."""

    def __init__(self, size: int = 2048) -> None:
        self.samples: deque[float] = deque(maxlen=size)

    def p99_us(self) -> float:
        return round(percentile(sorted(self.samples), 0.99) * 1e6, 1)


class RequestMetrics:
    """
    Per-protocol request accounting: count, errors, latency histogram, p99.

    Front ends call L{observe} once per request. Label children are cached per
    operation so the hot path is a dict lookup, a tally's increment and the
    histogram's observation.
    """

    def __init__(self, metrics: Metrics, protocol: str) -> None:
        self.protocol = protocol
        # Counts and latencies as tallies (read at scrape), their families
        # exported from the start (alert rules name them before any request).
        self._metrics = metrics
        metrics._tallied("gateway_requests_total")
        metrics._tallied("gateway_errors_total")
        metrics._tally_histograms("gateway_latency_seconds")
        self._rejected = metrics.family("gateway_rejected_requests_total")
        self._auth = metrics.family("gateway_auth_failures_total").labels(protocol)
        self._reservoir = _Reservoir()
        metrics.family("gateway_latency_p99_us").labels(protocol).set_function(
            self._reservoir.p99_us
        )
        self._ops: dict[str, tuple[Tally, TallyHistogram]] = {}
        self._errs: dict[tuple[str, str], Tally] = {}

    def observe(self, op: str, seconds: float, status: str | None = None) -> None:
        """Count one request of C{op} that took C{seconds}; C{status} names an error."""
        pair = self._ops.get(op)
        if pair is None:
            pair = (
                self._metrics.tally("gateway_requests_total", self.protocol, op),
                self._metrics.tally_histogram("gateway_latency_seconds", self.protocol, op),
            )
            self._ops[op] = pair
        pair[0].value += 1
        # TallyHistogram.observe, inline: once per request of every protocol.
        h = pair[1]
        h.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        h.sum += seconds
        self._reservoir.samples.append(seconds)
        if status is not None:
            key = (op, status)
            child = self._errs.get(key)
            if child is None:
                child = self._errs[key] = self._metrics.tally(
                    "gateway_errors_total", self.protocol, op, status
                )
            child.value += 1

    def count(self, op: str, status: str | None = None) -> int:
        """Requests of C{op} counted so far (with C{status}: those failed so)."""
        if status is None:
            pair = self._ops.get(op)
            return 0 if pair is None else pair[0].value
        child = self._errs.get((op, status))
        return 0 if child is None else child.value

    def rejected(self, reason: str) -> None:
        self._rejected.labels(self.protocol, reason).inc()

    def auth_failed(self) -> None:
        self._auth.inc()


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-quantile (0..1) of already sorted values, nearest rank."""
    if not sorted_values:
        return 0.0
    idx = max(0, min(len(sorted_values) - 1, int(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[idx]
