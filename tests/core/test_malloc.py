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
        trimmer = HeapTrimmer(clock, 60.0, lambda: calls.append(clock.seconds()))
        trimmer.startService()
        clock.advance(59)
        self.assertEqual(calls, [])
        clock.advance(1)
        clock.advance(60)
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

        trimmer = HeapTrimmer(clock, 10.0, trim)
        trimmer.startService()
        clock.advance(10)
        clock.advance(10)
        self.assertEqual(len(calls), 2)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 2)
        trimmer.stopService()

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
