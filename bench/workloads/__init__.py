"""
Named workloads. Each protocol's benchmarks register here as they are built.

A workload runs a real client against a target's endpoints and returns one
number per metric it declares. ``prepare`` (optional) runs once per target
before the timed runs, outside the measurement.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from bench.stats import Metric

Run = Callable[[dict[str, Any], Path], dict[str, float]]


@attrs.frozen
class Workload:
    name: str
    protocol: str
    metrics: tuple[Metric, ...]
    run: Run
    prepare: Callable[[dict[str, Any], Path], None] | None = None
    description: str = ""


REGISTRY: dict[str, Workload] = {}


def register(w: Workload) -> Workload:
    REGISTRY[w.name] = w
    return w


def load_all() -> dict[str, Workload]:
    """Import every workload module so each registers itself."""
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
    return REGISTRY
