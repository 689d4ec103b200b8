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
