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
L{HeapTrimmer} hands what is kept back (C{malloc_trim}) when a burst ends.
When, is what the soak measured. Trimming once a minute made RSS a
saw-tooth: each trim dropped it by 25-30 MiB and the steady load faulted the
same pages back within 5 s (the heap's working set under 200 clients is far
above what C{mallinfo2} shows in use at any one instant: buffers live for
milliseconds), so RSS swung -18 % at each trim for nothing. Trimming when RSS
less the heap in use grew did the same every few seconds. What is worth
giving back is memory a burst held and nothing needs since: so every
C{POLL_SECS} the trimmer reads glibc's heap in use (C{mallinfo2}, a walk of
the free lists: 11 ms on a deliberately fragmented 400 MiB heap, 0.2 % of
the reactor's time at that period) and trims when it has fallen a threshold
below its highest reading of the last C{WINDOW_SECS} (clients that held
queued replies left, a load ended). The threshold starts at C{BURST_BYTES}
and learns from RSS: a trim the load faults half back within the window
doubles it (steady load swings its heap in use by 24 MiB and more from one
poll to the next here, 30 MiB on a machine busy enough to queue requests: so
it starts at 64 MiB, where the bursts worth giving back, clients that queued
hundreds of MiB of replies, are far above), one whose release stays given back, or
C{TRIM_INTERVAL_SECS} without a trim, halves it again. A READ's buffer is
freed and reused far below the threshold, so steady I/O never triggers it.
And a trim needs more of the heap free (C{mallinfo2}'s C{fordblks}) than the
load has had in use at its peak over the last C{KEEP_WINDOW_SECS} (and at
least C{KEEP_FREE_BYTES}): that much the load has just shown it needs, and
trimming it only made RSS dip and fault straight back (two 30-minute soaks
with 200 clients: each had one trim that took RSS 12-14 % below its start
for a few seconds, when a slow machine's queued requests had briefly raised
the heap in use). With more free than that, a burst's end trims (all that
is free: C{malloc_trim} cannot keep a part), and so does, once, a peak
turning C{KEEP_WINDOW_SECS} old with the heap holding the threshold more
free than the newer peak.
Without C{mallinfo2} (glibc before 2.33) the trimmer trims every
C{TRIM_INTERVAL_SECS}.
Not glibc (musl, other platforms): nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections import deque
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
    "POLL_SECS",
    "BURST_BYTES",
    "heap_in_use",
    "mallinfo",
    "WINDOW_SECS",
    "MAX_BURST_BYTES",
    "resident_bytes",
    "heap_free",
    "KEEP_FREE_BYTES",
    "KEEP_WINDOW_SECS",
]

_log = Logger()

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

TRIM_THRESHOLD = 128 << 20
MMAP_THRESHOLD = 32 << 20
ARENA_MAX = 2
TRIM_INTERVAL_SECS = 600.0
POLL_SECS = 5.0
BURST_BYTES = 64 << 20
WINDOW_SECS = 60.0
MAX_BURST_BYTES = 256 << 20
KEEP_FREE_BYTES = 64 << 20
KEEP_WINDOW_SECS = 600.0

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


class _MallInfo2(ctypes.Structure):
    # struct mallinfo2 (glibc >= 2.33): ten size_t fields.
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc_mallinfo2() -> Callable[[], _MallInfo2] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        f = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    f.argtypes = []
    f.restype = _MallInfo2
    return f  # type: ignore[no-any-return]


_mallinfo2 = _libc_mallinfo2()


def mallinfo() -> _MallInfo2 | None:
    """glibc's heap totals over every arena (C{struct mallinfo2}), or None without glibc 2.33+."""
    return None if _mallinfo2 is None else _mallinfo2()


def heap_in_use() -> int | None:
    """
    Bytes of glibc's heap handed out and not freed (every arena, C{mallinfo2}'s
    C{uordblks}), or None without glibc 2.33+.
    """
    m = mallinfo()
    return None if m is None else int(m.uordblks)


def heap_free() -> int | None:
    """
    Bytes free inside glibc's heap (every arena, C{mallinfo2}'s C{fordblks}):
    what a trim could give back, or None without glibc 2.33+.
    """
    m = mallinfo()
    return None if m is None else int(m.fordblks)


def resident_bytes() -> int | None:
    """This process's RSS in bytes (C{/proc/self/statm}), or None where there is none."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class HeapTrimmer(Service):
    """
    Give the heap kept by L{keep_freed_memory} back to the kernel when a burst
    ends: every C{poll} seconds, read the heap in use (C{in_use}) and trim
    when it is the threshold below the highest reading of the last C{window}
    seconds. The threshold starts at C{burst} and learns: a trim whose
    release the load faults at least half back within C{window} (RSS, read
    with C{rss}) gave back working set, not a burst's leftovers, and doubles
    it (up to C{MAX_BURST_BYTES}); a trim whose release stays given back, or
    C{interval} seconds without a trim, halves it again (down to C{burst}).
    Either way a trim needs more bytes free in the heap (C{free}; None,
    unknown, holds nothing back) than the most the heap had in use over the
    last C{keep_window} seconds, and than C{keep}: less is the load's own,
    reused soon. Free memory beyond that by the threshold is trimmed with
    no burst's end (a peak older than C{keep_window} seconds has gone).
    Without C{mallinfo2} (C{in_use} None), trim every C{interval} seconds.
    """

    def __init__(
        self,
        clock: Any,
        interval: float = TRIM_INTERVAL_SECS,
        trim: Callable[[], object] = trim_heap,
        in_use: Callable[[], int | None] = heap_in_use,
        poll: float = POLL_SECS,
        burst: int = BURST_BYTES,
        window: float = WINDOW_SECS,
        rss: Callable[[], int | None] = resident_bytes,
        free: Callable[[], int | None] = heap_free,
        keep: int = KEEP_FREE_BYTES,
        keep_window: float = KEEP_WINDOW_SECS,
    ) -> None:
        self._clock = clock
        self._loop = LoopingCall(self._check)
        self._loop.clock = clock
        self._interval = interval
        self._poll = min(poll, interval)
        self._burst = burst
        self._window = window
        self._trim_fn = trim
        self._in_use = in_use
        self._rss = rss
        self._free = free
        self._keep = keep
        self._recent: deque[int] = deque(maxlen=max(int(window / self._poll), 1))
        self._peaks: deque[int] = deque(maxlen=max(int(keep_window / self._poll), 1))
        self._aged = False
        self._last = 0.0
        # The last trim being watched: (when, RSS after it, bytes it released).
        self._watch: tuple[float, int, int] | None = None
        #: The fall of the heap in use that trims now (see the class docstring).
        self.threshold = burst
        #: Trims done; those the load faulted back (wasted); those held back
        #: because the heap had no more than C{keep} bytes free.
        self.trims = 0
        self.wasted = 0
        self.kept = 0

    def _read(self, f: Callable[[], int | None]) -> int | None:
        try:
            return f()
        except Exception:
            _log.failure("reading the heap's size failed")
            return None

    def _check(self) -> None:
        now = self._clock.seconds()
        w = self._watch
        if w is not None:
            when, after, released = w
            rss = self._read(self._rss)
            if rss is not None and released > 0 and rss - after >= released // 2:
                # Faulted straight back: the load's working set, not a
                # burst's leftovers. Trimming it again costs and gains nothing.
                self.wasted += 1
                self.threshold = min(self.threshold * 2, MAX_BURST_BYTES)
                self._watch = None
            elif now - when >= self._window:
                self.threshold = max(self.threshold // 2, self._burst)
                self._watch = None
        used = self._read(self._in_use)
        if used is None:
            if now - self._last >= self._interval:
                self._trim(now)
            return
        recent = self._recent
        recent.append(used)
        self._peaks.append(used)
        fell = max(recent) - used >= self.threshold
        free = self._read(self._free)
        keep = max(self._keep, max(self._peaks))
        if free is not None and free <= keep:
            # Nothing the load has not needed lately: it would take it back.
            self._aged = False
            if fell:
                self.kept += 1
        elif fell:
            self._trim(now)
            return
        elif free is not None and free - keep >= self.threshold and not self._aged:
            # An old peak's memory, once: C{fordblks} still counts released
            # pages as free, so the same excess would trim again every poll.
            self._aged = True
            self._trim(now)
            return
        if now - self._last >= self._interval:
            # Quiet for a while: let the next burst's end count again.
            self._last = now
            self.threshold = max(self.threshold // 2, self._burst)

    def _trim(self, now: float) -> None:
        self._last = now
        self.trims += 1
        # What was held before is given back: the window starts again.
        last = self._recent[-1] if self._recent else None
        self._recent.clear()
        if last is not None:
            self._recent.append(last)
        before = self._read(self._rss)
        try:
            self._trim_fn()
        except Exception:
            _log.failure("heap trim failed")
        after = self._read(self._rss)
        self._watch = (
            (now, after, before - after) if before is not None and after is not None else None
        )

    def startService(self) -> None:
        super().startService()
        self._last = self._clock.seconds()
        self._loop.start(self._poll, now=False)

    def stopService(self) -> None:
        if self._loop.running:
            self._loop.stop()
        super().stopService()
