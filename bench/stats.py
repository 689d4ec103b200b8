"""Summaries of repeated measurements, the comparison table and the JSON report."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import attrs


@attrs.frozen
class Metric:
    """
    One number a workload reports; C{higher_is_better} decides how ratios
    read. C{compared=False}: a number with no ratio (one that sits near zero,
    as a remainder does, where a ratio of two noisy small numbers means
    nothing).
    """

    name: str
    unit: str
    higher_is_better: bool = True
    compared: bool = True


@attrs.frozen
class Summary:
    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        return cls(statistics.median(values), min(values), max(values), len(values))


def ratio(gateway: Summary, peer: Summary | None, metric: Metric) -> float | None:
    """gateway/peer on medians, oriented so that > 1 always means the gateway is better."""
    if not metric.compared or peer is None or peer.median <= 0 or gateway.median <= 0:
        return None
    r = gateway.median / peer.median
    return r if metric.higher_is_better else 1 / r


def fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table: workload, metric, gateway med/min/max, peer med, ratio."""
    header = ["workload", "metric", "gateway median", "min", "max", "peer", "peer median", "ratio"]
    with_workers = any(r.get("workers") is not None for r in rows)
    if with_workers:
        header += ["workers median", "workers/1"]
    with_both = any(r.get("workers_peer_ratio") is not None for r in rows)
    if with_both:
        header += ["workers/peer"]
    lines = [header]
    for r in rows:
        g: Summary = r["gateway"]
        p: Summary | None = r.get("peer")
        rt = r.get("ratio")
        line = [
            r["workload"],
            f"{r['metric'].name} ({r['metric'].unit})",
            fmt(g.median),
            fmt(g.min),
            fmt(g.max),
            r.get("peer_name") or "-",
            fmt(p.median) if p else "-",
            f"{rt:.2f}x" if rt is not None else "n/a",
        ]
        if with_workers:
            w: Summary | None = r.get("workers")
            wr = r.get("workers_ratio")
            line += [fmt(w.median) if w else "-", f"{wr:.2f}x" if wr is not None else "n/a"]
        if with_both:
            wp = r.get("workers_peer_ratio")
            line.append(f"{wp:.2f}x" if wp is not None else "n/a")
        lines.append(line)
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(header))]
    out = []
    for i, row in enumerate(lines):
        out.append(
            "  ".join(
                str(c).ljust(w) if j < 2 else str(c).rjust(w)
                for j, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def to_json(rows: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    def summ(s: Summary | None) -> dict[str, Any] | None:
        return attrs.asdict(s) if s is not None else None

    return {
        "meta": meta,
        "results": [
            {
                "workload": r["workload"],
                "metric": r["metric"].name,
                "unit": r["metric"].unit,
                "higher_is_better": r["metric"].higher_is_better,
                "gateway": summ(r["gateway"]),
                "gateway_runs": r["gateway_runs"],
                "peer_name": r.get("peer_name"),
                "peer": summ(r.get("peer")),
                "peer_runs": r.get("peer_runs"),
                "ratio": r.get("ratio"),
                "workers_name": r.get("workers_name"),
                "workers": summ(r.get("workers")),
                "workers_runs": r.get("workers_runs"),
                "workers_ratio": r.get("workers_ratio"),
                "workers_peer_ratio": r.get("workers_peer_ratio"),
            }
            for r in rows
        ],
    }
