# -*- test-case-name: tests.core.test_pagecache -*-
"""
Whether a file's byte range is all in the page cache (Linux C{cachestat}).

The NFS READ fast path answers on the reactor thread only what it can read
without waiting for the disk. Reading into a buffer with C{RWF_NOWAIT} tells
that by trying; a reply sent with C{sendfile} (no copy through the gateway's
memory) must know before it starts, since C{sendfile} of a range not cached
would block the reactor on the disk. C{cachestat} (Linux 6.5) counts the
cached pages of a range in one system call, whatever its size.

Without it (an older kernel, another platform, a seccomp filter) L{cached}
answers L{None} from then on and callers read into a buffer as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import sys
from typing import Any

__all__ = ["cached", "available", "PAGE"]

PAGE = mmap.PAGESIZE

# The same number on every architecture (new system calls share a table since 424).
_NR_CACHESTAT = 451


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Stat(ctypes.Structure):
    _fields_ = [
        ("nr_cache", ctypes.c_uint64),
        ("nr_dirty", ctypes.c_uint64),
        ("nr_writeback", ctypes.c_uint64),
        ("nr_evicted", ctypes.c_uint64),
        ("nr_recently_evicted", ctypes.c_uint64),
    ]


def _syscall() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        call = libc.syscall
    except (OSError, AttributeError):
        return None
    call.restype = ctypes.c_long
    return call


_call = _syscall()
# Reused arguments: the reactor thread is the only caller.
_range = _Range()
_stat = _Stat()
_range_ref = ctypes.byref(_range)
_stat_ref = ctypes.byref(_stat)


def available() -> bool:
    """Whether L{cached} can answer (it stops trying after an C{ENOSYS})."""
    return _call is not None


def cached(fd: int, offset: int, length: int) -> bool | None:
    """
    Whether every page of [C{offset}, C{offset} + C{length}) of C{fd} is in
    the page cache (dirty pages count: they are the newest bytes); L{None}
    when the kernel cannot say. Pages past the file's end are never cached,
    so a range that runs past it answers False.
    """
    global _call
    call = _call
    if call is None or length <= 0:
        return None if call is None else True
    _range.off = offset
    _range.len = length
    if call(_NR_CACHESTAT, fd, _range_ref, _stat_ref, 0) != 0:
        if ctypes.get_errno() in (errno.ENOSYS, errno.EPERM):
            _call = None
            return None
        return False
    pages = (offset + length - 1) // PAGE - offset // PAGE + 1
    return bool(_stat.nr_cache >= pages)
