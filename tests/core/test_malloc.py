"""L{claudefs_gateway.core.malloc}: glibc keeps freed heap for reuse."""

from __future__ import annotations

import sys

from twisted.trial.unittest import TestCase

from tests.helpers import child_env, spawn

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
            clock, 60.0, lambda: calls.append(clock.seconds()), in_use=lambda: None, poll=5.0
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

        trimmer = HeapTrimmer(clock, 10.0, trim, in_use=lambda: None)
        trimmer.startService()
        clock.advance(10)
        clock.advance(10)
        self.assertEqual(len(calls), 2)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 2)
        trimmer.stopService()

    def test_trims_when_a_burst_ends(self) -> None:
        """
        The heap in use falling C{burst} bytes below its highest reading of
        the last C{window} seconds trims at that poll, long before the
        interval; growth, and falls smaller than C{burst}, do not.
        """
        from twisted.internet.task import Clock

        from claudefs_gateway.core.malloc import HeapTrimmer

        mib = 1 << 20
        clock, calls, use = Clock(), [], [40 * mib]
        trimmer = HeapTrimmer(
            clock,
            600.0,
            lambda: calls.append(clock.seconds()),
            in_use=lambda: use[0],
            poll=5.0,
            burst=24 * mib,
            window=60.0,
        )
        trimmer.startService()
        clock.advance(5)
        use[0] = 80 * mib  # a burst: clients queue replies
        clock.advance(5)
        use[0] = 57 * mib  # 23 MiB below the mark: steady load swings that much
        clock.advance(5)
        self.assertEqual(calls, [])
        use[0] = 56 * mib  # 24 MiB below: the burst is over
        clock.advance(5)
        self.assertEqual(calls, [20.0])
        self.assertEqual((trimmer.trims, trimmer.burst_trims), (1, 1))
        # The mark starts again from the reading at the trim.
        use[0] = 40 * mib
        clock.advance(5)
        self.assertEqual(calls, [20.0])
        use[0] = 32 * mib
        clock.advance(5)
        self.assertEqual(calls, [20.0, 30.0])

    def test_the_window_forgets_old_peaks(self) -> None:
        """A peak older than the window no longer counts: a slow decline trims nothing."""
        from twisted.internet.task import Clock

        from claudefs_gateway.core.malloc import HeapTrimmer

        mib = 1 << 20
        clock, calls, use = Clock(), [], [100 * mib]
        trimmer = HeapTrimmer(
            clock,
            600.0,
            lambda: calls.append(clock.seconds()),
            in_use=lambda: use[0],
            poll=5.0,
            burst=24 * mib,
            window=60.0,
        )
        trimmer.startService()
        for _ in range(40):  # 2 MiB less every 10 s: 12 MiB a window at most
            clock.advance(5)
            use[0] -= 1 * mib
        self.assertEqual(calls, [])
        # Nothing falls fast enough: the interval's trim.
        clock.pump([5] * 80)
        self.assertEqual(calls, [600.0])
        self.assertEqual((trimmer.trims, trimmer.burst_trims), (1, 0))
        trimmer.stopService()

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
