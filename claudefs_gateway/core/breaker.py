# -*- test-case-name: tests.core.test_breaker -*-
"""
A circuit breaker per backend node (config C{circuit_breaker}).

While a node keeps failing, calls to it are refused at once with
L{BackendUnavailable} (the front ends' try-later status: NFS3ERR_JUKEBOX,
NFS4ERR_DELAY, S3 503, SMB STATUS_INSUFFICIENT_RESOURCES) instead of each
waiting out a timeout, so one dead node cannot tie up every client's
requests, and the node gets a rest to come back in.

The states are an Automat machine (C{docs/circuit-breaker.dot})::

    closed --failure_threshold consecutive failures--> open
    open --open_duration_ms elapsed--> half_open
    half_open --success_threshold successes--> closed
    half_open --a failure--> open

A failure is a call that raised anything but an L{FSError} (an FSError is the
node answering: "no such file" is a healthy node's reply), or that ran past
C{timeout_ms} (it is cancelled and fails with L{Timeout}). In half-open at most
C{success_threshold} trial calls run at once; the others are refused. The
state is published as C{gateway_circuit_breaker_state{backend}} (0 closed,
1 open, 2 half-open).

Results of calls admitted before the last state change are ignored (each
admission carries the epoch it was admitted in): a slow call from before the
circuit opened must not close it, nor re-open a circuit that recovered since.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from automat import MethodicalMachine
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from claudefs_gateway.core.aio import Aio
from claudefs_gateway.core.log import Logger
from claudefs_gateway.core.metrics import Metrics
from claudefs_gateway.errors import BackendUnavailable, FSError, Timeout

__all__ = ["Breaker", "BreakerMachine", "CLOSED", "OPEN", "HALF_OPEN"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
_GAUGE = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2}


def _counts_as_failure(f: Failure) -> bool:
    return not f.check(FSError)


class BreakerMachine:
    """The states and transitions alone; L{Breaker} feeds it and keeps the counters."""

    _machine = MethodicalMachine()

    def __init__(self, owner: Breaker) -> None:
        self._owner = owner

    @_machine.state(initial=True)
    def closed(self) -> None:
        """Calls go through; consecutive failures are counted."""

    @_machine.state()
    def open(self) -> None:
        """Calls are refused until the cool-down ends."""

    @_machine.state()
    def half_open(self) -> None:
        """A few trial calls go through; their outcome decides."""

    @_machine.input()
    def admit(self) -> None:
        """A call asks to go through."""

    @_machine.input()
    def succeeded(self) -> None:
        """An admitted call succeeded (or failed with the node's own answer)."""

    @_machine.input()
    def failed(self) -> None:
        """An admitted call failed or timed out."""

    @_machine.input()
    def tripped(self) -> None:
        """Failures reached C{failure_threshold}."""

    @_machine.input()
    def cooled(self) -> None:
        """C{open_duration_ms} passed since the circuit opened."""

    @_machine.input()
    def recovered(self) -> None:
        """Trial successes reached C{success_threshold}."""

    @_machine.output()
    def _allow(self) -> bool:
        return True

    @_machine.output()
    def _refuse(self) -> bool:
        return False

    @_machine.output()
    def _allow_trial(self) -> bool:
        return self._owner._take_trial()

    @_machine.output()
    def _reset_failures(self) -> None:
        self._owner._failures = 0

    @_machine.output()
    def _count_failure(self) -> int:
        self._owner._failures += 1
        return self._owner._failures

    @_machine.output()
    def _count_success(self) -> int:
        self._owner._successes += 1
        self._owner._trials = max(0, self._owner._trials - 1)
        return self._owner._successes

    @_machine.output()
    def _enter_open(self) -> None:
        self._owner._entered(OPEN)

    @_machine.output()
    def _enter_half_open(self) -> None:
        self._owner._entered(HALF_OPEN)

    @_machine.output()
    def _enter_closed(self) -> None:
        self._owner._entered(CLOSED)

    closed.upon(admit, enter=closed, outputs=[_allow])
    closed.upon(succeeded, enter=closed, outputs=[_reset_failures])
    closed.upon(failed, enter=closed, outputs=[_count_failure])
    closed.upon(tripped, enter=open, outputs=[_enter_open])
    open.upon(admit, enter=open, outputs=[_refuse])
    open.upon(cooled, enter=half_open, outputs=[_enter_half_open])
    half_open.upon(admit, enter=half_open, outputs=[_allow_trial])
    half_open.upon(succeeded, enter=half_open, outputs=[_count_success])
    half_open.upon(failed, enter=open, outputs=[_enter_open])
    half_open.upon(recovered, enter=closed, outputs=[_enter_closed])


class Breaker:
    """
    One node's circuit breaker.

    @param name: the node, as the C{backend} label of the metrics (from the
        configuration, so the label set is bounded).
    @param settings: the C{circuit_breaker} section.
    @param clock: times the cool-down and each call's deadline.
    @param is_failure: which failures count against the node (default: all but
        L{FSError}).
    """

    _log = Logger()

    def __init__(
        self,
        name: str,
        settings: Any,
        clock: IReactorTime,
        metrics: Metrics | None = None,
        is_failure: Callable[[Failure], bool] = _counts_as_failure,
    ) -> None:
        self.name = name
        self.failure_threshold: int = settings.failure_threshold
        self.success_threshold: int = settings.success_threshold
        self.open_duration = settings.open_duration_ms / 1000.0
        self.timeout = settings.timeout_ms / 1000.0
        self._aio = Aio(clock)
        self._is_failure = is_failure
        self._machine = BreakerMachine(self)
        self.state = CLOSED
        self.epoch = 0
        self.opened_at: float | None = None
        self._failures = 0
        self._successes = 0
        self._trials = 0
        self._cooldown: IDelayedCall | None = None
        self._listeners: list[Callable[[str], None]] = []
        self._gauge = self._rejected = None
        if metrics is not None:
            self._gauge = metrics.family("gateway_circuit_breaker_state").labels(name)
            self._gauge.set(0)
            self._rejected = metrics.family("gateway_rejected_requests_total").labels(
                "backend", "circuit_open"
            )

    # -- what the machine calls back --------------------------------------------------

    def _take_trial(self) -> bool:
        if self._trials >= self.success_threshold:
            return False
        self._trials += 1
        return True

    def _entered(self, state: str) -> None:
        old, self.state = self.state, state
        self.epoch += 1
        self._failures = self._successes = self._trials = 0
        if self._cooldown is not None and self._cooldown.active():
            self._cooldown.cancel()
        self._cooldown = None
        if state == OPEN:
            self.opened_at = self._aio.clock.seconds()
            self._cooldown = self._aio.call_later(self.open_duration, self._cooled)
            self._log.warn(
                "backend {backend}: circuit open for {secs}s after failures",
                backend=self.name,
                secs=self.open_duration,
                from_state=old,
            )
        elif state == CLOSED:
            self._log.info("backend {backend}: circuit closed", backend=self.name)
        else:
            self._log.info("backend {backend}: circuit half-open, trying", backend=self.name)
        if self._gauge is not None:
            self._gauge.set(_GAUGE[state])
        for listener in list(self._listeners):
            listener(state)

    def _cooled(self) -> None:
        self._cooldown = None
        self._machine.cooled()

    # -- public ---------------------------------------------------------------------

    def stop(self) -> None:
        """Cancel the cool-down timer (the owner is shutting down)."""
        if self._cooldown is not None and self._cooldown.active():
            self._cooldown.cancel()
        self._cooldown = None

    def on_change(self, listener: Callable[[str], None]) -> None:
        """Call C{listener(state)} on every state change (the pool drops connections on open)."""
        self._listeners.append(listener)

    @property
    def available(self) -> bool:
        """Whether a call now could be admitted (open refuses; half-open may)."""
        if self.state == OPEN:
            return False
        return not (self.state == HALF_OPEN and self._trials >= self.success_threshold)

    def admit(self) -> int:
        """
        Ask to make one call; the epoch to report its outcome with.

        @raise BackendUnavailable: the circuit is open (or half-open with every
            trial slot taken).
        """
        if self.state == CLOSED:
            # closed.upon(admit) is a loop whose one output (_allow) does
            # nothing: skip the machine's dispatch, which builds a wrapper per
            # input and was ~5 % of a --workers worker's Python time per call.
            return self.epoch
        [ok] = self._machine.admit()
        if not ok:
            if self._rejected is not None:
                self._rejected.inc()
            raise BackendUnavailable(f"circuit open for {self.name}")
        return self.epoch

    def record(self, epoch: int, failure: Failure | None) -> None:
        """The outcome of a call admitted at C{epoch} (None: success)."""
        if epoch != self.epoch:
            return
        bad = failure is not None and self._is_failure(failure)
        if not bad and self.state == CLOSED and self._failures == 0:
            # closed.upon(succeeded) only resets a count that is 0 already: an
            # answer, an error answer included ("no such file", which every
            # SMB open of a new name and every exclusive create gets), skips
            # the machine's dispatch as a success does.
            return
        if bad:
            [count] = self._machine.failed()
            if self.state == CLOSED and count is not None and count >= self.failure_threshold:
                self._machine.tripped()
        else:
            [count] = self._machine.succeeded()
            if self.state == HALF_OPEN and count is not None and count >= self.success_threshold:
                self._machine.recovered()

    def abandon(self, epoch: int) -> None:
        """A call admitted at C{epoch} ended with no verdict (its caller cancelled it)."""
        if epoch == self.epoch and self.state == HALF_OPEN:
            self._trials = max(0, self._trials - 1)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """
        Run C{fn(*args, **kwargs)} through the breaker, under C{timeout_ms}.

        @return: a Deferred firing with C{fn}'s result; failing with
            L{BackendUnavailable} at once if the circuit is open, with
            L{Timeout} if C{fn} ran past the deadline (its Deferred is
            cancelled), or with C{fn}'s own failure. Cancelling it cancels C{fn}'s.
        """
        try:
            epoch = self.admit()
        except BackendUnavailable as e:
            return self._aio.fail(e)
        inner = self._aio.as_future(fn, *args, **kwargs)
        timed_out: list[bool] = []

        def expire() -> None:
            timed_out.append(True)
            self._aio.cancel(inner)

        timer = self._aio.call_later(self.timeout, expire)

        # The verdict is taken on C{fn}'s own Deferred, which is the result:
        # no second Deferred fired from the first (one per call; a caller
        # that cancels it cancels C{fn}'s, as before).
        def done(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            if isinstance(result, Failure):
                if timed_out and result.check(CancelledError):
                    result = Failure(Timeout(f"{self.name}: no answer in {self.timeout:g}s"))
                    self.record(epoch, result)
                elif result.check(CancelledError):
                    # The caller gave up: no verdict on the node.
                    self.abandon(epoch)
                else:
                    self.record(epoch, result)
                return result
            self.record(epoch, None)
            return result

        self._aio.add_callbacks(inner, done, done)
        return inner
