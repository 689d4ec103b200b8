# -*- test-case-name: tests.core.test_ratelimit -*-
"""
Request-rate limits per client address and per user, for every protocol.

One token bucket per client address (C{limits.per_client}) and one per uid
(C{limits.per_user}); a request takes a token from each bucket that applies,
and a request that finds either empty is refused with L{Throttled}. A user's
bucket is shared by all the user's protocols and machines, as the user
database is one identity for every protocol; a client's bucket by every user
on that machine.

Each front end calls L{RateLimiter.admit} once per request, as soon as it
knows who sent it (NFS: the AUTH_SYS uid; S3: the signing user; SMB: the
session's user), and answers L{Throttled} with its own "try later" status
through its one error table (L{Throttled} is a L{BackendUnavailable}): NFS3ERR_JUKEBOX,
S3 C{SlowDown} (503), SMB STATUS_IO_TIMEOUT. Refusals are counted in
C{gateway_rejected_requests_total{protocol, reason="client_rate"|"user_rate"}}
and logged at most once a minute per client or user.

Memory is bounded: at most C{max_tracked} buckets of each kind are kept, the
least recently used going first (a forgotten bucket comes back full, which
only errs on the side of letting a request through).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from twisted.internet.interfaces import IReactorTime

from claudefs_gateway.core.log import Logger
from claudefs_gateway.core.metrics import Metrics
from claudefs_gateway.errors import Throttled

__all__ = ["TokenBucket", "RateLimiter", "MAX_TRACKED"]

MAX_TRACKED = 65536
_LOG_INTERVAL = 60.0


class TokenBucket:
    """
    C{rate} tokens a second, at most C{burst} kept; starts full.

    @param now: the clock reading at creation.
    """

    __slots__ = ("rate", "burst", "tokens", "stamp", "logged")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now
        self.logged = float("-inf")

    def take(self, now: float) -> bool:
        """Take one token if there is one; whether there was."""
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def retry_after(self) -> float:
        """Seconds until the next token."""
        return max(0.0, (1 - self.tokens) / self.rate) if self.rate else 0.0


class _Buckets:
    def __init__(self, rate: float, burst: int, max_tracked: int) -> None:
        self.rate = rate
        self.burst = float(burst or max(1, int(rate + 0.999)))
        self.max_tracked = max_tracked
        self.buckets: OrderedDict[Any, TokenBucket] = OrderedDict()

    def get(self, key: Any, now: float) -> TokenBucket:
        b = self.buckets.get(key)
        if b is None:
            b = self.buckets[key] = TokenBucket(self.rate, self.burst, now)
            if len(self.buckets) > self.max_tracked:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(key)
        return b


class RateLimiter:
    """
    The gateway's request-rate limits (see module docstring).

    @param per_client: C{(requests_per_sec, burst)} per client address; a rate
        of 0 means no limit.
    @param per_user: the same per uid.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        metrics: Metrics,
        per_client: tuple[float, int] = (0, 0),
        per_user: tuple[float, int] = (0, 0),
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        self._clock = clock
        self._rejected = metrics.family("gateway_rejected_requests_total")
        self._clients = (
            _Buckets(per_client[0], per_client[1], max_tracked) if per_client[0] else None
        )
        self._users = _Buckets(per_user[0], per_user[1], max_tracked) if per_user[0] else None

    @classmethod
    def from_config(cls, clock: IReactorTime, metrics: Metrics, limits: Any) -> RateLimiter:
        """The limiter C{limits} (the configuration's C{limits} section) asks for."""
        return cls(
            clock,
            metrics,
            (limits.per_client.requests_per_sec, limits.per_client.burst),
            (limits.per_user.requests_per_sec, limits.per_user.burst),
        )

    @property
    def enabled(self) -> bool:
        return self._clients is not None or self._users is not None

    def admit(self, protocol: str, client: str, uid: int | None = None) -> None:
        """
        Let one request of C{protocol} from C{client} (an address) by C{uid}
        through, or refuse it.

        @raise Throttled: the client or the user is over its rate.
        """
        now = self._clock.seconds()
        if self._clients is not None:
            b = self._clients.get(client, now)
            if not b.take(now):
                self._refuse(protocol, "client_rate", b, now, client=client)
        if self._users is not None and uid is not None:
            b = self._users.get(uid, now)
            if not b.take(now):
                self._refuse(protocol, "user_rate", b, now, uid=uid)

    def _refuse(
        self, protocol: str, reason: str, bucket: TokenBucket, now: float, **who: Any
    ) -> None:
        self._rejected.labels(protocol, reason).inc()
        if now - bucket.logged >= _LOG_INTERVAL:
            bucket.logged = now
            self._log.warn(
                "{protocol} requests refused: over the {reason} limit "
                "({rate:g}/s) from {who} (logged once a minute)",
                protocol=protocol,
                reason=reason,
                rate=bucket.rate,
                who=", ".join(f"{k} {v}" for k, v in who.items()),
                **who,
            )
        raise Throttled(f"over the {reason.replace('_', ' ')} limit; try later")

    def tracked(self) -> tuple[int, int]:
        """Buckets kept now: (clients, users)."""
        return (
            len(self._clients.buckets) if self._clients is not None else 0,
            len(self._users.buckets) if self._users is not None else 0,
        )
