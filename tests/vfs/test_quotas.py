"""
Quota edges through the vfs: exactly at a limit, one past it, soft limits and
their grace period on a Clock, concurrent writers, chown, root, statfs.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway import errors
from claudefs_gateway.fstypes import QuotaLimits, SetAttrs, Usage
from claudefs_gateway.testing.vfs import MemoryVFS

CONFIG = """
exports: [{path: /export, root_squash: false}]
quota:
  soft_limit_grace_period_seconds: 3600
  user_defaults: {bytes_soft: 50, bytes_hard: 100, inodes_soft: 0, inodes_hard: 3}
"""


def hold_writes(backend: Any) -> list[defer.Deferred[Any]]:
    """
    Hold the backend's writes: each waits on a Deferred in the returned list
    and runs when it is fired, so a test sees the vfs with writes in flight.
    """
    pending: list[defer.Deferred[Any]] = []
    real_write = backend.write

    def slow_write(*args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        pending.append(d)
        d.addCallback(lambda _: real_write(*args))
        return d

    backend.write = slow_write
    return pending


class QuotaTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.m = MemoryVFS(CONFIG)
        self.vfs = self.m.vfs
        root = self.m.caller(0, 0)
        d = self.successResultOf(self.vfs.mkdir(root, self.m.root(), b"home", 0o777))
        self.home = d.ino
        self.alice = self.m.caller(1000, 1000)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def mkfile(self, name: bytes, who: Any = None) -> int:
        return self.successResultOf(self.vfs.create(who or self.alice, self.home, name, 0o644)).ino

    def write(self, ino: int, offset: int, data: bytes, who: Any = None) -> defer.Deferred[Any]:
        return self.vfs.write(who or self.alice, ino, offset, data, False)

    def warnings(self, text: str) -> list[dict[str, Any]]:
        return [e for e in self.events if text in str(e.get("log_format", ""))]

    def test_bytes_exactly_at_hard_limit(self) -> None:
        """Usage may reach the hard limit exactly; one byte more is EDQUOT and nothing is written."""
        f = self.mkfile(b"f")
        self.successResultOf(self.write(f, 0, b"x" * 40))
        self.successResultOf(self.write(f, 40, b"y" * 60))
        self.assertEqual(self.vfs.quotas.usage("user", 1000), Usage(100, 1))
        self.failureResultOf(self.write(f, 100, b"z"), errors.DQuot)
        self.assertEqual(self.successResultOf(self.vfs.getattr(self.alice, f)).size, 100)
        self.successResultOf(self.write(f, 0, b"overwrite in place is fine"))
        self.assertEqual(len(self.warnings("Hard quota exceeded")), 1)

    def test_inodes_exactly_at_hard_limit(self) -> None:
        for name in (b"a", b"b", b"c"):
            self.mkfile(name)
        self.failureResultOf(self.vfs.create(self.alice, self.home, b"d", 0o644), errors.DQuot)
        self.failureResultOf(self.vfs.mkdir(self.alice, self.home, b"dir", 0o755), errors.DQuot)
        self.failureResultOf(self.vfs.symlink(self.alice, self.home, b"l", b"a"), errors.DQuot)
        self.successResultOf(self.vfs.remove(self.alice, self.home, b"a"))
        self.mkfile(b"d")

    def test_extend_by_setattr_and_allocate(self) -> None:
        f = self.mkfile(b"f")
        self.successResultOf(self.vfs.setattr(self.alice, f, SetAttrs(size=100)))
        self.failureResultOf(self.vfs.setattr(self.alice, f, SetAttrs(size=101)), errors.DQuot)
        self.failureResultOf(self.vfs.allocate(self.alice, f, 0, 101), errors.DQuot)
        self.successResultOf(self.vfs.setattr(self.alice, f, SetAttrs(size=10)))
        self.assertEqual(self.vfs.quotas.usage("user", 1000).bytes, 10)

    def test_soft_limit_warns_once_and_starts_grace(self) -> None:
        f = self.mkfile(b"f")
        self.successResultOf(self.write(f, 0, b"x" * 51))
        self.successResultOf(self.write(f, 51, b"x" * 5))
        [warning] = self.warnings("Soft quota exceeded")
        self.assertEqual(
            (warning["who"], warning["id"], warning["used"], warning["limit"]),
            ("uid", 1000, "51B", "50B"),
        )
        self.assertAlmostEqual(self.vfs.quotas.grace_left("user", 1000), 3600)
        stored = self.successResultOf(self.m.backend.get_state("quota.grace"))
        self.assertIn(b"user:1000", stored)

    def test_pressure_and_over_soft(self) -> None:
        """For metrics: the highest usage/hard ratio per kind and resource, and ids over a soft limit."""
        q = self.vfs.quotas
        self.assertEqual(q.over_soft(), {"user": 0, "group": 0})
        f = self.mkfile(b"f")
        self.successResultOf(self.write(f, 0, b"x" * 75))
        pressure = q.pressure()
        self.assertAlmostEqual(pressure[("user", "bytes")], 0.75)
        self.assertAlmostEqual(pressure[("user", "inodes")], 1 / 3)
        self.assertEqual(q.over_soft()["user"], 1)

    def test_grace_expiry_on_clock(self) -> None:
        """Past the grace period, the soft limit refuses growth like a hard one."""
        f = self.mkfile(b"f")
        self.successResultOf(self.write(f, 0, b"x" * 60))
        self.m.clock.advance(3599)
        self.successResultOf(self.write(f, 60, b"x"))
        self.m.clock.advance(1)
        self.failureResultOf(self.write(f, 61, b"x"), errors.DQuot)
        self.successResultOf(self.vfs.setattr(self.alice, f, SetAttrs(size=50)))
        self.assertIsNone(self.vfs.quotas.grace_left("user", 1000))
        self.successResultOf(self.write(f, 50, b"x" * 10))
        self.assertEqual(len(self.warnings("Soft quota exceeded")), 2)

    def test_concurrent_writers_cannot_both_fit(self) -> None:
        """Two writes in flight that each fit alone but not together: the second is refused."""
        f, g = self.mkfile(b"f"), self.mkfile(b"g")
        pending = hold_writes(self.m.backend)
        first = self.write(f, 0, b"x" * 60)
        second = self.write(g, 0, b"y" * 60)
        self.failureResultOf(second, errors.DQuot)
        self.assertNoResult(first)
        pending[0].callback(None)
        self.successResultOf(first)
        self.assertEqual(self.vfs.quotas.usage("user", 1000), Usage(60, 2))
        self.assertEqual(self.successResultOf(self.m.backend.usage("user", 1000)), Usage(60, 2))

    def test_chown_moves_usage_and_is_checked(self) -> None:
        root = self.m.caller(0, 0)
        f = self.mkfile(b"f")
        self.successResultOf(self.write(f, 0, b"x" * 80))
        bob_file = self.mkfile(b"bob", who=self.m.caller(2000, 2000))
        self.successResultOf(self.write(bob_file, 0, b"b" * 30, who=self.m.caller(2000, 2000)))
        self.failureResultOf(self.vfs.setattr(root, f, SetAttrs(uid=2000)), errors.DQuot)
        self.successResultOf(self.vfs.setattr(root, bob_file, SetAttrs(size=0)))
        self.successResultOf(self.vfs.setattr(root, f, SetAttrs(uid=2000)))
        self.assertEqual(self.vfs.quotas.usage("user", 2000), Usage(80, 2))
        self.assertEqual(self.vfs.quotas.usage("user", 1000), Usage(0, 0))

    def test_root_not_limited(self) -> None:
        root = self.m.caller(0, 0)
        f = self.successResultOf(self.vfs.create(root, self.home, b"big", 0o644)).ino
        self.successResultOf(self.vfs.write(root, f, 0, b"x" * 1000, False))
        self.assertEqual(self.vfs.quotas.usage("user", 0).bytes, 1000)

    def test_per_id_limits_and_report(self) -> None:
        self.successResultOf(
            defer.Deferred.fromCoroutine(
                self.vfs.quotas.set_limits("user", 1000, QuotaLimits(bytes_hard=10))
            )
        )
        f = self.mkfile(b"f")
        self.failureResultOf(self.write(f, 0, b"x" * 11), errors.DQuot)
        self.assertEqual(
            self.successResultOf(self.m.backend.get_quota("user", 1000)), QuotaLimits(bytes_hard=10)
        )
        [row] = [r for r in self.vfs.quotas.report() if r["kind"] == "user" and r["id"] == 1000]
        self.assertEqual((row["bytes_hard"], row["inodes"], row["own_limits"]), (10, 1, True))
        self.failureResultOf(
            defer.Deferred.fromCoroutine(
                self.vfs.quotas.set_limits("user", 1000, QuotaLimits(bytes_soft=5, bytes_hard=4))
            ),
            errors.Inval,
        )
        self.successResultOf(
            defer.Deferred.fromCoroutine(self.vfs.quotas.set_limits("user", 1000, None))
        )
        self.successResultOf(self.write(f, 0, b"x" * 11))

    def test_group_limits(self) -> None:
        m = MemoryVFS(
            "exports: [{path: /export, root_squash: false}]\n"
            "quota: {group_defaults: {bytes_hard: 10}}\n"
        )
        c = m.caller(1000, 500)
        home = self.successResultOf(m.vfs.mkdir(m.caller(0, 0), m.root(), b"h", 0o777)).ino
        f = self.successResultOf(m.vfs.create(c, home, b"f", 0o644)).ino
        self.successResultOf(m.vfs.write(c, f, 0, b"x" * 10, False))
        self.failureResultOf(m.vfs.write(m.caller(1001, 500), f, 10, b"x", False), errors.Access)
        self.failureResultOf(m.vfs.write(c, f, 10, b"x", False), errors.DQuot)

    def test_statfs_bounded_by_quota(self) -> None:
        f = self.mkfile(b"f")
        self.successResultOf(self.write(f, 0, b"x" * 30))
        s = self.successResultOf(self.vfs.statfs(self.alice))
        self.assertEqual((s.total_bytes, s.avail_bytes), (100, 70))
        self.assertEqual((s.total_files, s.avail_files), (3, 2))
        root = self.successResultOf(self.vfs.statfs(self.m.caller(0, 0)))
        self.assertGreater(root.total_bytes, 100)

    def test_usage_survives_reopen(self) -> None:
        """The mirror loads exact usage from the store on open."""
        f = self.mkfile(b"f")
        self.successResultOf(self.write(f, 0, b"x" * 42))
        from claudefs_gateway.vfs.quotas import QuotaManager

        fresh = QuotaManager(self.m.backend, self.m.config.quota, self.m.clock)
        self.successResultOf(defer.Deferred.fromCoroutine(fresh.open()))
        self.assertEqual(fresh.usage("user", 1000), Usage(42, 1))


class NoLimitsTests(SynchronousTestCase):
    """
    Without any limit (the default) no growth can be refused, so creates and
    writes skip the per-id checks; a limit set later, or stored and loaded
    at open, is enforced from then on.
    """

    def setUp(self) -> None:
        self.m = MemoryVFS("exports: [{path: /export, root_squash: false}]\n")
        self.vfs = self.m.vfs
        root = self.m.caller(0, 0)
        self.home = self.successResultOf(self.vfs.mkdir(root, self.m.root(), b"h", 0o777)).ino
        self.alice = self.m.caller(1000, 1000)
        self.checks: list[tuple[Any, ...]] = []
        real = self.vfs.quotas._check

        def counted(*args: Any) -> None:
            self.checks.append(args)
            real(*args)

        self.vfs.quotas._check = counted  # type: ignore[method-assign]

    def test_no_checks_without_limits(self) -> None:
        f = self.successResultOf(self.vfs.create(self.alice, self.home, b"f", 0o644)).ino
        self.successResultOf(self.vfs.write(self.alice, f, 0, b"x" * 20, False))
        self.assertEqual(self.checks, [])
        # Usage is still kept.
        self.assertEqual(self.vfs.quotas.usage("user", 1000), Usage(20, 1))

    def test_nothing_reserved_without_limits(self) -> None:
        """
        A create and a growing write in flight hold no reservation when no
        id has a limit (reservations only feed the checks); usage still
        moves when they are done.
        """
        f = self.successResultOf(self.vfs.create(self.alice, self.home, b"f", 0o644)).ino
        pending = hold_writes(self.m.backend)
        d = self.vfs.write(self.alice, f, 0, b"x" * 20, False)
        self.assertNoResult(d)
        self.assertEqual(self.vfs.quotas._reserved, {})
        pending[0].callback(None)
        self.successResultOf(d)
        self.assertEqual(self.vfs.quotas._reserved, {})
        self.assertEqual(self.vfs.quotas.usage("user", 1000), Usage(20, 1))
        self.assertEqual(self.vfs.quotas.usage("group", 1000), Usage(20, 1))

    def test_reserved_once_limited(self) -> None:
        """With a limit set, a write in flight holds its growth until it settles."""
        q = self.vfs.quotas
        f = self.successResultOf(self.vfs.create(self.alice, self.home, b"f", 0o644)).ino
        self.successResultOf(
            defer.Deferred.fromCoroutine(q.set_limits("user", 1000, QuotaLimits(bytes_hard=30)))
        )
        pending = hold_writes(self.m.backend)
        d = self.vfs.write(self.alice, f, 0, b"x" * 20, False)
        self.assertEqual(q._reserved[("user", 1000)], [20, 0])
        self.failureResultOf(self.vfs.write(self.alice, f, 20, b"y" * 20, False), errors.DQuot)
        pending[0].callback(None)
        self.successResultOf(d)
        self.assertEqual(q._reserved, {})
        self.assertEqual(q.usage("user", 1000), Usage(20, 1))

    def test_limit_set_later_is_enforced(self) -> None:
        f = self.successResultOf(self.vfs.create(self.alice, self.home, b"f", 0o644)).ino
        q = self.vfs.quotas
        self.successResultOf(
            defer.Deferred.fromCoroutine(q.set_limits("user", 1000, QuotaLimits(bytes_hard=30)))
        )
        self.successResultOf(self.vfs.write(self.alice, f, 0, b"x" * 30, False))
        self.failureResultOf(self.vfs.write(self.alice, f, 30, b"y", False), errors.DQuot)
        self.assertNotEqual(self.checks, [])
        # Back to no limit: nothing refused, nothing checked.
        self.successResultOf(defer.Deferred.fromCoroutine(q.set_limits("user", 1000, None)))
        self.checks.clear()
        self.successResultOf(self.vfs.write(self.alice, f, 30, b"y", False))
        self.assertEqual(self.checks, [])

    def test_no_review_without_limits(self) -> None:
        """
        With no limit anywhere, a change of usage looks up no limits to
        review soft-limit clocks by (twice per create and per growing write
        before); a soft limit set later is reviewed again.
        """
        q = self.vfs.quotas
        looked: list[tuple[str, int]] = []
        real = q.limits

        def limits(kind: str, id: int) -> QuotaLimits:
            looked.append((kind, id))
            return real(kind, id)

        q.limits = limits  # type: ignore[method-assign]
        f = self.successResultOf(self.vfs.create(self.alice, self.home, b"f", 0o644)).ino
        self.successResultOf(self.vfs.write(self.alice, f, 0, b"x" * 20, False))
        self.assertEqual(looked, [])
        self.successResultOf(
            defer.Deferred.fromCoroutine(q.set_limits("user", 1000, QuotaLimits(bytes_soft=25)))
        )
        looked.clear()
        self.successResultOf(self.vfs.write(self.alice, f, 20, b"y" * 10, False))
        self.assertIn(("user", 1000), looked)
        self.assertIsNotNone(q.grace_left("user", 1000))

    def test_stored_limit_loaded_at_open(self) -> None:
        from claudefs_gateway.vfs.quotas import QuotaManager

        q = self.vfs.quotas
        self.successResultOf(
            defer.Deferred.fromCoroutine(q.set_limits("user", 1000, QuotaLimits(inodes_hard=1)))
        )
        fresh = QuotaManager(self.m.backend, self.m.config.quota, self.m.clock)
        self.successResultOf(defer.Deferred.fromCoroutine(fresh.open()))
        fresh.admit(1000, 1000, 0, 1)
        self.assertRaises(errors.DQuot, fresh.admit, 1000, 1000, 0, 1)
