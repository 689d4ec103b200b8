# -*- test-case-name: tests.core.test_malloc -*-
"""
Keep freed heap memory for reuse (glibc ``mallopt``).

A file server allocates and frees a buffer of up to a megabyte per READ or
WRITE. With glibc's defaults the freed top of the heap is returned to the
kernel (``brk`` shrinks past ``M_TRIM_THRESHOLD``) and the next request grows
it again and page-faults every page back in: measured on an NFSv3 1 MiB READ,
that churn was four fifths of the server's time (1.76 ms against 0.33 ms with
the thresholds below). Setting the thresholds also turns off glibc's dynamic
mmap threshold, which otherwise moves after the first large free.

The cost is that up to C{trim} bytes of freed memory stay with the process,
per malloc arena, and each thread that allocates may get an arena of its own:
under the soak (bench.soak, issue 19) the freed-but-kept heap ratcheted from
50 to 139 MiB while the heap in use stayed flat. So the arenas are capped at
C{ARENA_MAX} (the GIL serialises almost every allocation anyway) and
L{HeapTrimmer} hands what is kept back once a minute (C{malloc_trim}): one
refill per minute costs the READ path nothing measurable, and RSS follows the
load instead of its peak.
Not glibc (musl, other platforms): nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.task import LoopingCall

from claudefs_gateway.core.log import Logger

__all__ = [
    "keep_freed_memory",
    "trim_heap",
    "HeapTrimmer",
    "TRIM_THRESHOLD",
    "MMAP_THRESHOLD",
    "ARENA_MAX",
    "TRIM_INTERVAL_SECS",
]

_log = Logger()

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

TRIM_THRESHOLD = 128 << 20
MMAP_THRESHOLD = 32 << 20
ARENA_MAX = 2
TRIM_INTERVAL_SECS = 60.0

_done = False


def keep_freed_memory(trim: int = TRIM_THRESHOLD, mmap: int = MMAP_THRESHOLD) -> bool:
    """
    Ask glibc to keep up to C{trim} bytes of freed heap and to serve
    allocations below C{mmap} bytes from the heap. Once per process.

    @return: whether the settings were applied now.
    """
    global _done
    if _done:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))
    if ok:
        mallopt(_M_ARENA_MAX, ARENA_MAX)
    _done = ok
    if ok:
        _log.info(
            "heap: keeping up to {trim} MiB of freed memory, mmap threshold {mmap} MiB",
            trim=trim >> 20,
            mmap=mmap >> 20,
        )
    return ok


def _libc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


def trim_heap() -> bool:
    """
    Give freed heap back to the kernel (glibc C{malloc_trim(0)}, every arena).

    @return: whether memory was released (False also without glibc).
    """
    trim = _libc_trim()
    return bool(trim(0)) if trim is not None else False


class HeapTrimmer(Service):
    """
    Run L{trim_heap} every C{interval} seconds while running, so the heap kept
    by L{keep_freed_memory} never outlives the burst that needed it.
    """

    def __init__(
        self,
        clock: Any,
        interval: float = TRIM_INTERVAL_SECS,
        trim: Callable[[], object] = trim_heap,
    ) -> None:
        self._loop = LoopingCall(self._trim)
        self._loop.clock = clock
        self._interval = interval
        self._trim_fn = trim

    def _trim(self) -> None:
        try:
            self._trim_fn()
        except Exception:
            _log.failure("heap trim failed")

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=False)

    def stopService(self) -> None:
        if self._loop.running:
            self._loop.stop()
        super().stopService()
