# -*- test-case-name: tests.core.test_memreport -*-
"""
Where the process's memory is: a report for operators chasing RSS growth.

RSS that grows under load is either a leak (Python objects accumulating:
the object counts and, when tracing, tracemalloc's allocation sites grow) or
the allocator keeping freed memory (glibc arenas: C{mallinfo2}'s free bytes
grow while the objects stay flat; see L{claudefs_gateway.core.malloc}, which
asks glibc to keep up to 128 MiB of freed heap per arena). One report tells
the two apart.

Off unless the environment asks: C{CFS_MEMORY_REPORT=1} makes C{SIGUSR2} log
a report at info (on the reactor thread); C{CFS_MEMORY_REPORT=trace} also
starts tracemalloc (which slows every allocation) and adds the allocation
sites that grew most since the previous report. C{python -m bench.soak
--memory-report} uses it.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
import tracemalloc
from collections import Counter
from typing import Any

from claudefs_gateway.core.log import Logger
from claudefs_gateway.core.malloc import mallinfo

__all__ = ["install", "report", "ENV"]

ENV = "CFS_MEMORY_REPORT"

_log = Logger()
_last: tracemalloc.Snapshot | None = None


def _mallinfo() -> dict[str, int] | None:
    """glibc's heap totals over every arena (MiB), or None where there is no mallinfo2."""
    m = mallinfo()
    if m is None:
        return None
    mib = 1 << 20
    return {
        "heap_mib": m.arena // mib,  # from the system, not mmapped
        "mmapped_mib": m.hblkhd // mib,
        "in_use_mib": m.uordblks // mib,
        "free_mib": m.fordblks // mib,  # freed, kept by the allocator
        "top_releasable_mib": m.keepcost // mib,
    }


def _rss_mib() -> float | None:
    try:
        with open(f"/proc/{os.getpid()}/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def report(top: int = 15) -> dict[str, Any]:
    """
    The report: RSS, glibc's heap totals, threads, the C{top} most numerous
    object types the garbage collector tracks, and, while tracemalloc runs,
    the traced total and the C{top} allocation sites that grew most since the
    previous report (or the largest, the first time); then a full garbage
    collection, what it found and the RSS and heap in use after it.
    """
    global _last
    counts: Counter[str] = Counter(type(o).__name__ for o in gc.get_objects())
    out: dict[str, Any] = {
        "rss_mib": _rss_mib(),
        "malloc": _mallinfo(),
        "threads": threading.active_count(),
        "gc_objects": sum(counts.values()),
        "types": counts.most_common(top),
    }
    if tracemalloc.is_tracing():
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        current, peak = tracemalloc.get_traced_memory()
        out["traced_mib"] = round(current / (1 << 20), 1)
        out["traced_peak_mib"] = round(peak / (1 << 20), 1)
        if _last is not None:
            stats = snap.compare_to(_last, "lineno")[:top]
            out["grew"] = [
                (str(s.traceback[0]), s.size_diff // 1024, s.size // 1024) for s in stats
            ]
        else:
            out["largest"] = [
                (str(s.traceback[0]), s.size // 1024) for s in snap.statistics("lineno")[:top]
            ]
        _last = snap
    # Garbage in reference cycles (a Failure's traceback holding a READ's
    # data...) waits for a full collection, which an idle process may not run
    # for a long time: collect now and say what that freed.
    out["gc_collected"] = gc.collect()
    out["rss_after_collect_mib"] = _rss_mib()
    after = _mallinfo()
    out["in_use_after_collect_mib"] = after["in_use_mib"] if after is not None else None
    return out


def install(reactor: Any, environ: dict[str, str] | None = None) -> bool:
    """
    If C{CFS_MEMORY_REPORT} is set, log a L{report} on each C{SIGUSR2} (the
    report is made on the reactor thread). Only from the main thread.

    @return: whether the handler was installed.
    """
    mode = (os.environ if environ is None else environ).get(ENV, "")
    if not mode or threading.current_thread() is not threading.main_thread():
        return False
    if mode == "trace" and not tracemalloc.is_tracing():
        tracemalloc.start(1)

    def log_report() -> None:
        _log.info("memory report: {report}", report=report())

    signal.signal(signal.SIGUSR2, lambda signum, frame: reactor.callFromThread(log_report))
    return True
