"""L{claudefs_gateway.core.memreport}: the memory report and its opt-in signal hook."""

from __future__ import annotations

import signal
import tracemalloc

from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.core import memreport


class ReportTests(SynchronousTestCase):
    def test_report_counts_objects(self) -> None:
        """The report names the most numerous object types and the RSS."""
        keep = [_Marker() for _ in range(50000)]
        out = memreport.report(top=5)
        self.assertIn(("_Marker", 50000), out["types"])
        self.assertGreater(out["rss_mib"], 0)
        self.assertGreaterEqual(out["gc_objects"], 50000)
        del keep

    def test_tracing_reports_growth(self) -> None:
        """While tracemalloc runs, the second report names what grew since the first."""
        tracemalloc.start(1)
        self.addCleanup(tracemalloc.stop)
        self.patch(memreport, "_last", None)
        first = memreport.report()
        self.assertIn("largest", first)
        keep = [bytearray(1000) for _ in range(2000)]
        second = memreport.report()
        self.assertIn("grew", second)
        self.assertTrue(any("test_memreport" in site for site, _, _ in second["grew"]))
        del keep

    def test_off_by_default(self) -> None:
        """Without CFS_MEMORY_REPORT nothing is installed."""
        self.assertFalse(memreport.install(MemoryReactor(), {}))

    def test_signal_installed(self) -> None:
        """With it, SIGUSR2 is handled (restored after the test)."""
        prev = signal.getsignal(signal.SIGUSR2)
        self.addCleanup(signal.signal, signal.SIGUSR2, prev)
        self.assertTrue(memreport.install(MemoryReactor(), {memreport.ENV: "1"}))
        self.assertNotEqual(signal.getsignal(signal.SIGUSR2), prev)


class _Marker:
    pass
