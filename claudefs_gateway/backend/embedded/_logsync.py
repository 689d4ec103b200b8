# -*- test-case-name: tests.backend.test_log_sync -*-
"""
The WAL's C{fdatasync} without a thread: Linux AIO (C{IOCB_CMD_FDSYNC},
kernel 4.18 and later) submitted from the reactor's thread, its completion
signalled on an C{eventfd} the reactor watches.

Why: a durable change at queue depth 1 (an NFS CREATE or REMOVE, RFC 1813's
stable storage) went to the store's writer thread and back: two thread
wake-ups, the GIL changing hands twice and a pipe write, about 90-100 µs
of CPU per change on the project's VM (docs/bench.rst), more than the
SQLite transaction itself. The engine commits such a change on the reactor's
thread without a sync (as it does an unstable write), and this syncs the
log; the change is acknowledged once the sync has returned, which is what
a C{synchronous=FULL} commit would have waited for (see
L{claudefs_gateway.backend.embedded._engine.Engine.run_unsynced}).

Where the kernel has no AIO (not Linux, an architecture whose system call
numbers are not known here, C{io_setup} refused: C{aio-max-nr} reached, a
seccomp filter) L{AioLogSync.create} returns None and the store keeps every
durable change on its writer thread.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

__all__ = ["AioLogSync"]

# (io_setup, io_destroy, io_getevents, io_submit) per machine.
_SYSCALLS = {
    "x86_64": (206, 207, 208, 209),
    "aarch64": (0, 1, 4, 2),
}
_IOCB_CMD_FDSYNC = 3
_IOCB_FLAG_RESFD = 1
_EVENTS = 8


class _IOCB(ctypes.Structure):
    # struct iocb (linux/aio_abi.h), little-endian layout.
    _fields_ = [
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_int32),
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    ]


class _Event(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_uint64),
        ("obj", ctypes.c_uint64),
        ("res", ctypes.c_int64),
        ("res2", ctypes.c_int64),
    ]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class AioLogSync:
    """
    C{sync(fd)} returns a Deferred that fires (on the reactor) once an
    C{fdatasync} of C{fd} has completed, or fails with the C{OSError} it
    returned. Syncs run in the kernel; any number may be in flight.
    """

    def __init__(self, reactor: Any, libc: Any, calls: tuple[int, int, int, int]) -> None:
        self._reactor = reactor
        self._libc = libc
        self._setup, self._destroy, self._getevents, self._submit = calls
        self._ctx = ctypes.c_ulong(0)
        if libc.syscall(self._setup, _EVENTS * 4, ctypes.byref(self._ctx)) != 0:
            raise OSError(ctypes.get_errno(), "io_setup")
        try:
            self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except BaseException:
            libc.syscall(self._destroy, self._ctx)
            raise
        self._events = (_Event * _EVENTS)()
        self._zero = _Timespec(0, 0)
        self._zero_ref = ctypes.byref(self._zero)
        self._syscall = libc.syscall
        # Control blocks (and the one-element arrays io_submit takes) kept
        # for reuse: making them is most of a submission's Python time.
        self._free: list[tuple[_IOCB, Any]] = []
        # token -> (control block, kept alive while in flight; its Deferred)
        self._pending: dict[int, tuple[tuple[_IOCB, Any], defer.Deferred[None]]] = {}
        self._token = 0
        self._closed = False
        reactor.addReader(self)

    @classmethod
    def create(cls, reactor: Any) -> AioLogSync | None:
        """One for C{reactor}, or None where this kernel cannot do it."""
        calls = _SYSCALLS.get(platform.machine())
        if not sys.platform.startswith("linux") or calls is None or reactor is None:
            return None
        if not hasattr(reactor, "addReader") or not hasattr(os, "eventfd"):
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            return cls(reactor, libc, calls)
        except (OSError, AttributeError):
            return None

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def sync(self, fd: int) -> defer.Deferred[None]:
        """
        Submit an C{fdatasync} of C{fd}.

        @raise OSError: the kernel refused it (C{EINVAL}: no AIO fsync for
            this file system); nothing is in flight then.
        """
        if self._closed:
            raise OSError(9, "log sync closed")
        self._token += 1
        token = self._token
        if self._free:
            block = self._free.pop()
            cb = block[0]
        else:
            cb = _IOCB()
            cb.aio_lio_opcode = _IOCB_CMD_FDSYNC
            cb.aio_flags = _IOCB_FLAG_RESFD
            cb.aio_resfd = self._efd
            block = (cb, (ctypes.POINTER(_IOCB) * 1)(ctypes.pointer(cb)))
        cb.aio_fildes = fd
        cb.aio_data = token
        if self._syscall(self._submit, self._ctx, 1, block[1]) != 1:
            self._free.append(block)
            raise OSError(ctypes.get_errno() or 5, "io_submit")
        d: defer.Deferred[None] = defer.Deferred()
        self._pending[token] = (block, d)
        return d

    # IReadDescriptor: the eventfd is readable once a sync completed.

    def fileno(self) -> int:
        return self._efd

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's name
        return "AioLogSync"

    def doRead(self) -> None:  # noqa: N802 - Twisted's name
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            return
        self._reap()

    def _reap(self) -> None:
        events = self._events
        while self._pending:
            n = self._syscall(self._getevents, self._ctx, 0, _EVENTS, events, self._zero_ref)
            if n <= 0:
                return
            done = []
            for i in range(n):
                ev = events[i]
                entry = self._pending.pop(ev.data, None)
                if entry is not None:
                    self._free.append(entry[0])
                    done.append((entry[1], ev.res))
            # Answered once every completion read is recorded: a callback
            # may submit the next sync.
            for d, res in done:
                if res < 0:
                    d.errback(Failure(OSError(-res, os.strerror(-res))))
                else:
                    d.callback(None)
            if n < _EVENTS:
                return

    def connectionLost(self, reason: object) -> None:  # noqa: N802 - Twisted's name
        pass

    def close(self) -> None:
        """
        Stop watching and free the kernel's context. Call with nothing in
        flight (io_destroy would wait for it, blocking the reactor).
        """
        if self._closed:
            return
        self._closed = True
        self._reactor.removeReader(self)
        self._libc.syscall(self._destroy, self._ctx)
        os.close(self._efd)
