"""L{claudefs_gateway.core.malloc}: glibc keeps freed heap for reuse."""

from __future__ import annotations

import sys
from typing import Any

from twisted.trial.unittest import TestCase

from tests.helpers import child_env, spawn

MIB = 1 << 20

SCRIPT = """
import ctypes, sys
from claudefs_gateway.core import malloc
first = malloc.keep_freed_memory()
second = malloc.keep_freed_memory()
print(first, second)
"""


class KeepFreedMemoryTests(TestCase):
    timeout = 60

    async def test_applied_once(self) -> None:
        """In a fresh process (glibc, as on Debian) the settings apply once; a second call is a no-op."""
        proc = spawn([sys.executable, "-c", SCRIPT], env=child_env())
        self.assertEqual(await proc.ended, 0, proc.stderr)
        self.assertEqual(proc.text, ["True False"])


class HeapTrimmerTests(TestCase):
    def test_trims_every_interval_while_running(self) -> None:
        """A trim each minute while the service runs, none before the first minute or after stop."""
        from twisted.internet.task import Clock

        from claudefs_gateway.core.malloc import HeapTrimmer

        clock, calls = Clock(), []
        trimmer = HeapTrimmer(
            clock,
            60.0,
            lambda: calls.append(clock.seconds()),
            in_use=lambda: None,
            poll=5.0,
            free=lambda: None,
        )
        trimmer.startService()
        clock.pump([5] * 11)
        self.assertEqual(calls, [])
        clock.advance(5)
        clock.pump([5] * 12)
        self.assertEqual(calls, [60.0, 120.0])
        trimmer.stopService()
        clock.advance(600)
        self.assertEqual(calls, [60.0, 120.0])

    def test_a_failing_trim_is_logged_and_the_loop_goes_on(self) -> None:
        from twisted.internet.task import Clock

        from claudefs_gateway.core.malloc import HeapTrimmer

        clock, calls = Clock(), []

        def trim() -> None:
            calls.append(1)
            raise OSError("no")

        trimmer = HeapTrimmer(clock, 10.0, trim, in_use=lambda: None, free=lambda: None)
        trimmer.startService()
        clock.advance(10)
        clock.advance(10)
        self.assertEqual(len(calls), 2)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 2)
        trimmer.stopService()

    def _trimmer(
        self, use: list[int], rss: list[int], free: list[int] | None = None
    ) -> tuple[Any, Any, list[float]]:
        from twisted.internet.task import Clock

        from claudefs_gateway.core.malloc import HeapTrimmer

        clock, calls = Clock(), []
        trimmer = HeapTrimmer(
            clock,
            600.0,
            lambda: calls.append(clock.seconds()),
            in_use=lambda: use[0],
            poll=5.0,
            burst=24 * MIB,
            window=60.0,
            rss=lambda: rss[0],
            free=lambda: free[0] if free else None,
            keep=64 * MIB,
            keep_window=600.0,
        )
        trimmer.startService()
        self.addCleanup(trimmer.stopService)
        return clock, trimmer, calls

    def test_trims_when_a_burst_ends(self) -> None:
        """
        The heap in use falling the threshold (C{burst}) below its highest
        reading of the last C{window} seconds trims at that poll; growth, and
        smaller falls, do not. The window starts again after a trim.
        """
        use, rss = [40 * MIB], [100 * MIB]
        clock, trimmer, calls = self._trimmer(use, rss)
        clock.advance(5)
        use[0] = 80 * MIB  # a burst: clients queue replies
        clock.advance(5)
        use[0] = 57 * MIB  # 23 MiB below the mark: steady load swings that much
        clock.advance(5)
        self.assertEqual(calls, [])
        use[0] = 56 * MIB  # 24 MiB below: the burst is over
        clock.advance(5)
        self.assertEqual(calls, [20.0])
        use[0] = 40 * MIB
        clock.advance(5)
        self.assertEqual(calls, [20.0])
        use[0] = 32 * MIB
        clock.advance(5)
        self.assertEqual(calls, [20.0, 30.0])
        self.assertEqual((trimmer.trims, trimmer.wasted, trimmer.threshold), (2, 0, 24 * MIB))

    def test_a_trim_faulted_back_raises_the_threshold(self) -> None:
        """
        A trim whose release RSS regains by half within the window was working
        set: the threshold doubles, so the same swing no longer trims; a trim
        whose release stays given back halves it again.
        """
        use, rss = [60 * MIB], [200 * MIB]
        clock, trimmer, calls = self._trimmer(use, rss)
        clock.advance(5)
        use[0] = 30 * MIB
        rss[0] = 200 * MIB
        # The trim releases 30 MiB (RSS read before and after it).
        reads = iter([200 * MIB, 170 * MIB])
        trimmer._rss = lambda: next(reads, rss[0])
        clock.advance(5)
        self.assertEqual(calls, [10.0])
        rss[0] = 185 * MIB  # half of it back: the load's working set
        use[0] = 60 * MIB
        clock.advance(5)
        self.assertEqual((trimmer.wasted, trimmer.threshold), (1, 48 * MIB))
        use[0] = 30 * MIB  # the same swing: no trim now
        clock.advance(5)
        self.assertEqual(calls, [10.0])
        use[0] = 10 * MIB  # a bigger one (50 MiB): trims, and stays given back
        reads = iter([185 * MIB, 135 * MIB])
        trimmer._rss = lambda: next(reads, rss[0])
        rss[0] = 135 * MIB
        clock.advance(5)
        self.assertEqual(calls, [10.0, 25.0])
        clock.pump([5] * 12)
        self.assertEqual((trimmer.wasted, trimmer.threshold), (1, 24 * MIB))

    def test_quiet_lowers_the_threshold_again(self) -> None:
        """C{interval} seconds without a trim halve a raised threshold (never below C{burst})."""
        use, rss = [60 * MIB], [200 * MIB]
        clock, trimmer, calls = self._trimmer(use, rss)
        trimmer.threshold = 96 * MIB
        clock.pump([5] * 120)
        self.assertEqual(trimmer.threshold, 48 * MIB)
        clock.pump([5] * 240)
        self.assertEqual(trimmer.threshold, 24 * MIB)
        self.assertEqual(calls, [])

    def test_the_window_forgets_old_peaks(self) -> None:
        """A peak older than the window no longer counts: a slow decline trims nothing."""
        use, rss = [100 * MIB], [200 * MIB]
        clock, trimmer, calls = self._trimmer(use, rss)
        for _ in range(40):  # 2 MiB less every 10 s: 12 MiB a window at most
            clock.advance(5)
            use[0] -= 1 * MIB
        self.assertEqual(calls, [])

    def test_no_trim_of_what_the_load_needed_lately(self) -> None:
        """
        A burst's end with no more free in the heap than C{keep} or than the
        most in use over the last C{keep_window} seconds trims nothing (the
        load takes that back at once: each soak's one such trim only made
        RSS dip); with more free than both, the same fall trims.
        """
        use, rss, free = [80 * MIB], [150 * MIB], [50 * MIB]
        clock, trimmer, calls = self._trimmer(use, rss, free)
        clock.advance(5)
        use[0] = 40 * MIB  # 40 MiB below the mark: a burst's end
        clock.advance(5)
        self.assertEqual((calls, trimmer.kept), ([], 1))
        free[0] = 80 * MIB  # above keep (64), not above the peak in use (80)
        clock.advance(5)
        self.assertEqual((calls, trimmer.kept), ([], 2))
        free[0] = 81 * MIB
        clock.advance(5)
        self.assertEqual((calls, trimmer.trims), ([20.0], 1))

    def test_an_old_peaks_memory_goes_back_once(self) -> None:
        """
        After a 400 MiB burst the heap keeps its free memory while the peak
        is in the last C{keep_window} seconds; once the peak is older (and
        the free memory is a threshold above the newer peak), one trim gives
        it back, and only one while the excess lasts.
        """
        use, rss, free = [400 * MIB], [500 * MIB], [10 * MIB]
        clock, trimmer, calls = self._trimmer(use, rss, free)
        clock.advance(5)
        use[0], free[0] = 30 * MIB, 380 * MIB  # the burst's clients left
        clock.pump([5] * 119)  # the peak still among the last 600 s of readings
        self.assertEqual(calls, [])
        self.assertGreater(trimmer.kept, 0)  # the burst's end was seen, and held back
        clock.advance(5)  # the 400 MiB reading has left them
        self.assertEqual(calls, [605.0])
        clock.pump([5] * 60)
        self.assertEqual(calls, [605.0])
        free[0] = 60 * MIB  # a later burst used it, and left less
        clock.advance(5)
        free[0] = 380 * MIB
        clock.advance(5)
        self.assertEqual(calls, [605.0, 915.0])

    def test_steady_load_with_some_free_no_trims(self) -> None:
        """
        The soak's steady state: 30-60 MiB in use, 40-60 MiB free, swinging
        by more than the threshold from one poll to the next: never a trim.
        """
        use, rss, free = [30 * MIB], [150 * MIB], [50 * MIB]
        clock, trimmer, calls = self._trimmer(use, rss, free)
        for i in range(720):  # an hour
            use[0] = (30 + (i % 7) * 5) * MIB
            free[0] = (40 + (i % 5) * 5) * MIB
            clock.advance(5)
        self.assertEqual(calls, [])

    def test_heap_free_in_a_real_process(self) -> None:
        """glibc's mallinfo2 reports free heap (Debian's glibc), never negative."""
        from claudefs_gateway.core.malloc import heap_free

        free = heap_free()
        assert free is not None
        self.assertGreaterEqual(free, 0)

    def test_resident_bytes(self) -> None:
        """This process's RSS, from /proc/self/statm (Linux)."""
        from claudefs_gateway.core.malloc import resident_bytes

        rss = resident_bytes()
        assert rss is not None
        self.assertGreater(rss, 1 << 20)

    async def test_heap_in_use_in_a_real_process(self) -> None:
        """glibc's mallinfo2 is found (Debian's glibc) and sees a 16 MiB buffer (below the mmap threshold) come and go."""
        script = (
            "from claudefs_gateway.core import malloc\n"
            "malloc.keep_freed_memory()\n"
            "a = malloc.heap_in_use(); b = bytearray(16 << 20); c = malloc.heap_in_use()\n"
            "del b; d = malloc.heap_in_use()\n"
            "print(c - a >= 16 << 20, c - d >= 16 << 20)"
        )
        proc = spawn([sys.executable, "-c", script], env=child_env())
        self.assertEqual(await proc.ended, 0, proc.stderr)
        self.assertEqual(proc.text, ["True True"])

    async def test_trim_heap_in_a_real_process(self) -> None:
        """glibc's malloc_trim is found and callable (Debian's glibc)."""
        proc = spawn(
            [
                sys.executable,
                "-c",
                "from claudefs_gateway.core import malloc; print(malloc._libc_trim() is not None, malloc.trim_heap() in (True, False))",
            ],
            env=child_env(),
        )
        self.assertEqual(await proc.ended, 0, proc.stderr)
        self.assertEqual(proc.text, ["True True"])
