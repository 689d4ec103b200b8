# -*- test-case-name: tests.vfs.test_quotas -*-
"""
Quotas per user and per group: bytes and inodes, soft and hard limits, grace.

Limits are the configuration's C{quota.user_defaults}/C{group_defaults} unless
an id has its own record in the store (C{cfs-gateway quota set-user}). Usage is
the store's exact accounting (bytes = sum of regular file sizes, inodes = every
inode), mirrored in memory at open and moved by every change the vfs makes, so
a check costs no I/O. Growth is admitted synchronously against usage plus the
growth already admitted but not yet done (reservations): two concurrent
writers cannot both squeeze under a limit that only one fits.

 - usage may reach a hard limit exactly; growth beyond it fails with L{DQuot};
 - crossing a soft limit logs a warning once and starts the grace clock;
 - once the grace period has passed while still over the soft limit, the soft
   limit refuses growth like a hard one; dropping below it resets the clock;
 - shrinking is never refused; uid 0 and gid 0 are counted but not limited.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime

from claudefs_gateway import errors
from claudefs_gateway.core.config import Quota as QuotaConfig
from claudefs_gateway.core.log import Logger
from claudefs_gateway.fstypes import QuotaLimits, Usage

__all__ = ["QuotaManager", "Ticket", "KINDS"]

KINDS = ("user", "group")
_GRACE_KEY = "quota.grace"
_HARD_LOG_INTERVAL = 60.0


def _fmt(n: int) -> str:
    for unit, size in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            v = n / size
            return f"{v:.0f}{unit}" if v == int(v) else f"{v:.1f}{unit}"
    return f"{n}B"


@attrs.define
class Ticket:
    """Growth admitted for one operation, released by L{QuotaManager.settle}."""

    entries: list[tuple[tuple[str, int], int, int]] = attrs.Factory(list)
    settled: bool = False


# What L{QuotaManager.admit} hands out while no id has a limit: nothing
# reserved, so nothing to release (shared: no operation changes a ticket
# after admit made it).
_UNLIMITED = Ticket(settled=True)


class QuotaManager:
    _log = Logger()

    def __init__(self, backend: Any, config: QuotaConfig, clock: IReactorTime) -> None:
        self._backend = backend
        self._config = config
        self._clock = clock
        self._usage: dict[tuple[str, int], list[int]] = {}
        self._reserved: dict[tuple[str, int], list[int]] = {}
        self._limits: dict[tuple[str, int], QuotaLimits] = {}
        self._grace: dict[tuple[str, int], float] = {}
        self._warned: set[tuple[str, int, str]] = set()
        self._hard_logged: dict[tuple[str, int], float] = {}
        self._defaults = {
            "user": QuotaLimits(**attrs.asdict(config.user_defaults)),
            "group": QuotaLimits(**attrs.asdict(config.group_defaults)),
        }
        self._limited = self._any_limit()

    @property
    def grace_period(self) -> float:
        return float(self._config.soft_limit_grace_period_seconds)

    async def open(self) -> None:
        """Load stored limits, usage and running grace clocks from the store."""
        for kind in KINDS:
            for id, lim in (await self._backend.list_quotas(kind)).items():
                self._limits[(kind, id)] = lim
            for id, u in (await self._backend.all_usage(kind)).items():
                self._usage[(kind, id)] = [u.bytes, u.inodes]
        self._limited = self._any_limit()
        raw = await self._backend.get_state(_GRACE_KEY)
        if raw:
            for key, start in json.loads(raw).items():
                kind, _, id = key.partition(":")
                self._grace[(kind, int(id))] = float(start)

    # -- reading --------------------------------------------------------------

    def _any_limit(self) -> bool:
        """
        Whether any id has a limit (its own or a default): without one no
        growth can be refused, and L{admit_keys} skips the checks (one per
        create and per write that grows a file, on every protocol).
        """
        return any(
            lim.bytes_soft or lim.bytes_hard or lim.inodes_soft or lim.inodes_hard
            for lim in (*self._defaults.values(), *self._limits.values())
        )

    def limits(self, kind: str, id: int) -> QuotaLimits:
        return self._limits.get((kind, id), self._defaults[kind])

    def usage(self, kind: str, id: int) -> Usage:
        u = self._usage.get((kind, id), (0, 0))
        return Usage(u[0], u[1])

    def grace_left(self, kind: str, id: int) -> float | None:
        """Seconds of grace left (may be negative once expired), or None if not over a soft limit."""
        start = self._grace.get((kind, id))
        if start is None:
            return None
        return start + self.grace_period - self._clock.seconds()

    def report(self) -> list[dict[str, Any]]:
        """Every id with usage or its own limits, for C{cfs-gateway quota report}."""
        rows = []
        for kind in KINDS:
            ids = {i for (k, i) in self._usage if k == kind} | {
                i for (k, i) in self._limits if k == kind
            }
            for id in sorted(ids):
                u, lim = self.usage(kind, id), self.limits(kind, id)
                left = self.grace_left(kind, id)
                rows.append(
                    {
                        "kind": kind,
                        "id": id,
                        "bytes": u.bytes,
                        "inodes": u.inodes,
                        "bytes_soft": lim.bytes_soft,
                        "bytes_hard": lim.bytes_hard,
                        "inodes_soft": lim.inodes_soft,
                        "inodes_hard": lim.inodes_hard,
                        "own_limits": (kind, id) in self._limits,
                        "grace_left_secs": None if left is None else round(left, 1),
                    }
                )
        return rows

    def pressure(self) -> dict[tuple[str, str], float]:
        """
        For metrics: per (kind, C{bytes}|C{inodes}), the highest usage / hard
        limit of any id with a hard limit (0 when none has one). Alerting on
        it warns before anyone's writes start failing with EDQUOT.
        """
        out = {(k, r): 0.0 for k in KINDS for r in ("bytes", "inodes")}
        for row in self.report():
            for what in ("bytes", "inodes"):
                hard = row[f"{what}_hard"]
                if hard and row["id"] != 0:
                    key = (row["kind"], what)
                    out[key] = max(out[key], row[what] / hard)
        return out

    def over_soft(self) -> dict[str, int]:
        """For metrics: per kind, the ids over a soft limit (their grace clock running)."""
        out = dict.fromkeys(KINDS, 0)
        for kind, _ in self._grace:
            out[kind] = out.get(kind, 0) + 1
        return out

    # -- changing limits ------------------------------------------------------

    async def set_limits(self, kind: str, id: int, limits: QuotaLimits | None) -> None:
        """Store one id's limits (None: back to the defaults) and apply them at once."""
        if kind not in KINDS:
            raise errors.Inval(f"quota kind {kind!r}")
        for what in ("bytes", "inodes"):
            if limits is not None:
                soft, hard = getattr(limits, f"{what}_soft"), getattr(limits, f"{what}_hard")
                if soft < 0 or hard < 0 or (soft and hard and soft > hard):
                    raise errors.Inval(f"{what}: soft limit above hard limit")
        await self._backend.set_quota(kind, id, limits)
        if limits is None:
            self._limits.pop((kind, id), None)
        else:
            self._limits[(kind, id)] = limits
        self._limited = self._any_limit()
        self._log.info("quota for {kind} {id} set to {limits}", kind=kind, id=id, limits=limits)
        self._review(kind, id)

    # -- enforcement ----------------------------------------------------------

    def admit(self, uid: int, gid: int, add_bytes: int, add_inodes: int) -> Ticket:
        """
        Reserve growth for an operation by (uid, gid), or refuse it.

        @raise DQuot: a hard limit, or a soft limit past its grace, would be exceeded.
        """
        if not self._limited:
            return _UNLIMITED
        return self.admit_keys(
            [(("user", uid), add_bytes, add_inodes), (("group", gid), add_bytes, add_inodes)]
        )

    def admit_keys(self, adds: list[tuple[tuple[str, int], int, int]]) -> Ticket:
        """
        L{admit} with each (kind, id) given its own growth (a chown moves a
        whole file to a new owner).

        Reservations only feed the checks of L{_check}: while no id has a
        limit (its own or a default) none is taken, which saves a create or
        a growing write its dictionary updates here and in L{settle}. An
        operation admitted so, still running when a limit is set, counts
        against it once it settles (as usage), not before.
        """
        if not self._limited:
            return _UNLIMITED
        ticket = Ticket()
        wanted = [(key, max(b, 0), max(i, 0)) for key, b, i in adds if b > 0 or i > 0]
        for key, b, i in wanted:
            if key[1] != 0:
                self._check(key, b, i)
        for key, b, i in wanted:
            r = self._reserved.setdefault(key, [0, 0])
            r[0] += b
            r[1] += i
            ticket.entries.append((key, b, i))
        return ticket

    def _check(self, key: tuple[str, int], add_bytes: int, add_inodes: int) -> None:
        kind, id = key
        lim = self.limits(kind, id)
        used = self._usage.get(key, (0, 0))
        res = self._reserved.get(key, (0, 0))
        grace_over = (left := self.grace_left(kind, id)) is not None and left <= 0
        for what, idx, add in (("bytes", 0, add_bytes), ("inodes", 1, add_inodes)):
            if add <= 0:
                continue
            total = used[idx] + res[idx] + add
            hard, soft = getattr(lim, f"{what}_hard"), getattr(lim, f"{what}_soft")
            if hard and total > hard:
                self._refuse(kind, id, what, used[idx], hard, "hard")
            if soft and total > soft and grace_over:
                self._refuse(kind, id, what, used[idx], soft, "soft limit past grace")

    def _refuse(self, kind: str, id: int, what: str, used: int, limit: int, why: str) -> None:
        now = self._clock.seconds()
        if now - self._hard_logged.get((kind, id), float("-inf")) >= _HARD_LOG_INTERVAL:
            self._hard_logged[(kind, id)] = now
            shown = (_fmt(used), _fmt(limit)) if what == "bytes" else (str(used), str(limit))
            self._log.warn(
                "Hard quota exceeded for {who}={id} (usage={used}/{limit}, {what}, {why})",
                who="uid" if kind == "user" else "gid",
                id=id,
                used=shown[0],
                limit=shown[1],
                what=what,
                why=why,
            )
        raise errors.DQuot(f"{kind} {id} {what} quota")

    def settle(self, ticket: Ticket, changes: Iterable[tuple[int, int, int, int]] = ()) -> None:
        """
        The operation is over: release its reservation and apply what really
        changed, as (uid, gid, bytes delta, inodes delta) tuples.
        """
        if not ticket.settled:
            ticket.settled = True
            for key, b, i in ticket.entries:
                r = self._reserved[key]
                r[0] -= b
                r[1] -= i
                if r == [0, 0]:
                    del self._reserved[key]
        for uid, gid, db, di in changes:
            self.apply(uid, gid, db, di)

    def apply_all(self, changes: Iterable[tuple[int, int, int, int]]) -> None:
        """L{apply} each (uid, gid, bytes delta, inodes delta)."""
        for change in changes:
            self.apply(*change)

    def apply(self, uid: int, gid: int, d_bytes: int, d_inodes: int) -> None:
        """Move usage by a change already made in the store."""
        if d_bytes == 0 and d_inodes == 0:
            return
        for key in (("user", uid), ("group", gid)):
            u = self._usage.setdefault(key, [0, 0])
            u[0] += d_bytes
            u[1] += d_inodes
            if u == [0, 0]:
                del self._usage[key]
            self._review(*key)

    def _review(self, kind: str, id: int) -> None:
        """Start or stop the grace clock and warn once per soft-limit crossing."""
        if id == 0 or not (self._limited or self._warned or self._grace):
            # No limit anywhere, no clock running, nothing warned: nothing to
            # do (asked twice per change of usage, on every protocol).
            return
        key = (kind, id)
        lim = self.limits(kind, id)
        if not (lim.bytes_soft or lim.inodes_soft or self._warned or self._grace):
            return  # no soft limit, no clock running, nothing warned: nothing to do
        used = self._usage.get(key, (0, 0))
        over = False
        for what, idx in (("bytes", 0), ("inodes", 1)):
            soft = getattr(lim, f"{what}_soft")
            if soft and used[idx] > soft:
                over = True
                if (kind, id, what) not in self._warned:
                    self._warned.add((kind, id, what))
                    shown = (
                        (_fmt(used[idx]), _fmt(soft))
                        if what == "bytes"
                        else (str(used[idx]), str(soft))
                    )
                    self._log.warn(
                        "Soft quota exceeded for {who}={id} (usage={used}/{limit}, {what}); "
                        "grace period {grace}s starts",
                        who="uid" if kind == "user" else "gid",
                        id=id,
                        used=shown[0],
                        limit=shown[1],
                        what=what,
                        grace=int(self.grace_period),
                    )
            else:
                self._warned.discard((kind, id, what))
        if over and key not in self._grace:
            self._grace[key] = self._clock.seconds()
            self._save_grace()
        elif not over and key in self._grace:
            del self._grace[key]
            self._save_grace()

    def _save_grace(self) -> None:
        doc = json.dumps({f"{k}:{i}": t for (k, i), t in self._grace.items()}).encode()
        d = self._backend.set_state(_GRACE_KEY, doc)
        d.addErrback(lambda f: self._log.failure("saving quota grace clocks failed", f))
