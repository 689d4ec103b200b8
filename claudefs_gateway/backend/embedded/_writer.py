# -*- test-case-name: tests.backend.test_embedded -*-
"""
Who runs the engine: one dedicated writer thread (group commit), or the
caller's thread (inline, for tests).

Group commit: the writer thread blocks on its queue for the first op, then
takes every op that is already waiting (up to C{max_batch}) and runs them as
one batch - one transaction, one fsync. While that fsync runs, new ops pile up
in the queue and become the next batch, so N concurrent changes cost about
log(N) fsyncs rather than N, with no timer and no added latency for a lone op.

Results go back to the reactor with one C{callFromThread} per batch, which
fires the ops' Deferreds in submission order (the queue is FIFO, batches are
delivered in order), so what a caller sees follows the order it called in.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from claudefs_gateway import errors
from claudefs_gateway.backend.embedded._engine import Engine, Op

__all__ = ["ThreadWriter", "InlineWriter", "Deliver"]

Deliver = Callable[[list[Op], list[int]], None]


class _Call:
    """A control function (open, close) run on the writer thread between batches."""

    __slots__ = ("fn", "args", "d", "stop")

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], d: defer.Deferred[Any], stop: bool
    ) -> None:
        self.fn = fn
        self.args = args
        self.d = d
        self.stop = stop


def _fire(d: defer.Deferred[Any], ok: bool, result: Any) -> None:
    if ok:
        d.callback(result)
    else:
        d.errback(result)


class ThreadWriter:
    """
    The production runner: the engine lives on one thread named
    C{cfs-embedded-writer}, which owns its SQLite connection and data-file
    descriptors, so the engine needs no locks.

    @param deliver: called on the reactor thread with each finished batch.
    """

    def __init__(
        self, engine: Engine, reactor: Any, deliver: Deliver, max_batch: int = 256
    ) -> None:
        self.engine = engine
        self.reactor = reactor
        self.deliver = deliver
        self.max_batch = max_batch
        self._q: queue.SimpleQueue[Op | _Call] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # Held while the engine runs a batch, by the writer thread or by the
        # reactor's own run of an op (see run_here): the engine has no locks
        # of its own, so this is what keeps it on one thread at a time.
        self._engine_lock = threading.Lock()

    def start(self) -> None:
        # A daemon thread: a process that exits without closing the store must
        # not hang on it; what it loses then is what a crash would lose.
        self._thread = threading.Thread(target=self._run, name="cfs-embedded-writer", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, op: Op) -> None:
        self._q.put(op)

    def run_here(self, op: Op) -> bool:
        """
        Run C{op} at once on the calling (reactor) thread, as a batch of its
        own, and deliver it before returning; or return False (nothing done)
        when the writer thread is busy or has anything queued, in which case
        the caller submits the op as usual.

        For ops that need no fsync (an unstable write, a metadata change
        asked without durability, as SMB's are): handing such an op to
        the writer thread and its result back costs two thread wake-ups, the
        GIL changing hands twice and a pipe write, more CPU on this path than
        the op itself. The caller must also know every op submitted before
        has been delivered, so the order callers see is the order they called
        in; an op that must be durable always goes to the writer, where group
        commit can batch it with other clients' changes.
        """
        if not self._q.empty() or not self._engine_lock.acquire(blocking=False):
            return False
        try:
            if not self._q.empty():
                return False
            count, freed = self._run_batch([op])
            assert count == 1
            self.engine.after_batch()
        finally:
            self._engine_lock.release()
        self.deliver([op], freed)
        return True

    def run_unsynced(self, op: Op) -> tuple[list[int], int] | None:
        """
        Run the durable C{op} at once on the calling (reactor) thread,
        committed without a sync of the log (L{Engine.run_unsynced}), when
        the writer thread is idle with nothing queued; the caller syncs the
        log and delivers. None when it could not (busy, or not such an op):
        nothing was done, and the caller submits the op.
        """
        if not self._q.empty() or not self._engine_lock.acquire(blocking=False):
            return None
        try:
            if not self._q.empty():
                return None
            try:
                result = self.engine.run_unsynced(op)
            except BaseException:
                # As in _run_batch: a bug; the op fails, the reactor lives.
                op.ok, op.value = False, errors.IO("internal store error")
                op.failure = Failure()
                return [], 0
            if result is not None:
                self.engine.after_batch()
        finally:
            self._engine_lock.release()
        return result

    def log_synced(self, covered: int) -> bool:
        """
        Tell the engine (L{Engine.log_synced}) that a sync of the log
        finished; False (nothing done: the next durable commit clears the
        engine's flag instead) when the writer thread holds the engine,
        which the reactor must not wait for.
        """
        if not self._engine_lock.acquire(blocking=False):
            return False
        try:
            self.engine.log_synced(covered)
        finally:
            self._engine_lock.release()
        return True

    def after_batch_here(self) -> None:
        """
        Delete the data files freed by changes now durable (L{Engine.after_batch})
        on this thread, after their replies; left to the writer's next batch
        when it holds the engine.
        """
        if not self._engine_lock.acquire(blocking=False):
            return
        try:
            self.engine.after_batch()
        finally:
            self._engine_lock.release()

    def _run_batch(self, batch: list[Op]) -> tuple[int, list[int]]:
        try:
            return self.engine.run_batch(batch)
        except BaseException:
            # run_batch handles every error it expects; this is a bug. Fail
            # the batch rather than the thread, which would hang every
            # caller waiting on it.
            failure = Failure()
            for op in batch:
                op.ok, op.value = False, errors.IO("internal store error")
            batch[0].failure = failure
            return len(batch), []

    def call(self, fn: Callable[..., Any], *args: Any, stop: bool = False) -> defer.Deferred[Any]:
        """Run C{fn(*args)} on the writer thread after every op queued so far."""
        d: defer.Deferred[Any] = defer.Deferred()
        self._q.put(_Call(fn, args, d, stop))
        return d

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        held: Op | _Call | None = None
        carry: list[Op] = []
        while True:
            if carry:
                # What the last batch left (it ended early): these go first.
                batch, carry = carry, []
            else:
                item = held if held is not None else self._q.get()
                held = None
                if isinstance(item, _Call):
                    if self._run_call(item):
                        return
                    continue
                batch = [item]
            while held is None and len(batch) < self.max_batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if isinstance(nxt, _Call):
                    held = nxt
                    break
                batch.append(nxt)
            with self._engine_lock:
                count, freed = self._run_batch(batch)
            carry = batch[count:]
            # Outside the lock: waking the reactor hands it the GIL, and it
            # may then want the engine for an op of its own (run_here).
            self.reactor.callFromThread(self.deliver, batch[:count], freed)
            # Work that no reply waits for (deleting freed inodes' data files).
            with self._engine_lock:
                self.engine.after_batch()

    def _run_call(self, c: _Call) -> bool:
        try:
            with self._engine_lock:
                result, ok = c.fn(*c.args), True
        except BaseException:
            result, ok = Failure(), False
        self.reactor.callFromThread(_fire, c.d, ok, result)
        return c.stop


class InlineWriter:
    """
    Runs every op at once on the caller's thread, one op per transaction, and
    delivers before returning: the backend's Deferreds have fired by the time
    a call returns. For tests (the hypothesis state machine drives the store
    this way with C{successResultOf}) and offline tools; it blocks, so never
    on a reactor serving clients.
    """

    alive = True

    def __init__(self, engine: Engine, deliver: Deliver) -> None:
        self.engine = engine
        self.deliver = deliver

    def start(self) -> None:
        pass

    def submit(self, op: Op) -> None:
        _, freed = self.engine.run_batch([op])
        self.deliver([op], freed)
        self.engine.after_batch()

    def call(self, fn: Callable[..., Any], *args: Any, stop: bool = False) -> defer.Deferred[Any]:
        try:
            return defer.succeed(fn(*args))
        except BaseException:
            return defer.fail()

    def join(self) -> None:
        pass
