"""Tests for L{claudefs_gateway.vfs.locks}: the cross-protocol lock table."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.core import log
from claudefs_gateway.errors import (
    FS_ERRORS,
    Deadlock,
    Grace,
    Inval,
    LockConflict,
    NoLock,
    ShareConflict,
    Stale,
)
from claudefs_gateway.vfs.locks import EOF, SHARE_MODES, Lock, LockOwner, LockTable

PROTOCOLS = ("nlm", "nfs4", "smb")
INO = 7


def owner(protocol: str, n: int = 1, client: str | None = None) -> LockOwner:
    """A distinct owner C{n} of C{protocol}, on its own client unless told."""
    return LockOwner(
        protocol, client if client is not None else f"{protocol}-client{n}", b"o%d" % n
    )


class TableTestCase(SynchronousTestCase):
    """A fresh table on a fake clock, and shorthands that unwrap Deferreds."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.table = LockTable(self.clock)

    def grant(
        self,
        who: LockOwner,
        start: int,
        length: int,
        exclusive: bool,
        ino: int = INO,
        **kw: Any,
    ) -> Lock:
        d = self.table.lock(ino, who, start, length, exclusive, **kw)
        return self.successResultOf(d)

    def refuse(
        self,
        who: LockOwner,
        start: int,
        length: int,
        exclusive: bool,
        ino: int = INO,
        error: type[Exception] = LockConflict,
        **kw: Any,
    ) -> Failure:
        d = self.table.lock(ino, who, start, length, exclusive, **kw)
        return self.failureResultOf(d, error)

    def wait(
        self, who: LockOwner, start: int, length: int, exclusive: bool, ino: int = INO, **kw: Any
    ) -> defer.Deferred[Lock]:
        d = self.table.lock(ino, who, start, length, exclusive, wait=True, **kw)
        self.assertNoResult(d)
        return d

    def ranges(self, ino: int = INO) -> list[tuple[bytes, int, int, str]]:
        """The held locks as (owner, start, length, "S"/"X"), in byte order."""
        return [
            (lk.owner.owner, lk.start, lk.length, "X" if lk.exclusive else "S")
            for lk in self.table.locks(ino)
        ]

    def assert_empty_table(self) -> None:
        """Nothing is left behind: releasing everything frees all memory."""
        self.assertEqual(self.table.records, 0)
        self.assertEqual(self.table._files, {})
        self.assertEqual(self.table._owners, {})
        self.assertEqual(self.table._clients, {})


# ---------------------------------------------------------------------------
# Conflict matrices, generated: every protocol pair x lock types x overlap kind.

#: A held lock covers [10, 20). Each kind is a request (start, length) and
#: whether its bytes overlap the held lock.
OVERLAPS: dict[str, tuple[int, int, bool]] = {
    "disjoint": (40, 5, False),
    "touching_after": (20, 5, False),
    "touching_before": (5, 5, False),
    "overlapping_end": (15, 10, True),
    "overlapping_start": (5, 6, True),
    "containing": (0, 100, True),
    "contained": (12, 3, True),
    "identical": (10, 10, True),
    "one_byte_first": (10, 1, True),
    "one_byte_last": (19, 1, True),
    "infinite_overlapping": (15, 0, True),
    "infinite_nfs4_overlapping": (15, 2**64 - 1, True),
    "infinite_from_zero": (0, 0, True),
    "infinite_touching": (20, 0, False),
    "infinite_disjoint": (30, 2**64 - 1, False),
}

#: The held lock may itself run to end of file: [10, EOF).
HELD_SHAPES: dict[str, tuple[int, int]] = {"finite": (10, 10), "infinite": (10, 0)}


def _overlaps_infinite_held(start: int, length: int) -> bool:
    end = EOF if length == 0 or start + length >= EOF else start + length
    return end > 10


def _type(exclusive: bool) -> str:
    return "exclusive" if exclusive else "shared"


def _make_other_owner_case(
    p1: str, held_x: bool, p2: str, req_x: bool, kind: str, shape: str
) -> Callable[[ConflictMatrixTests], None]:
    start, length, overlap = OVERLAPS[kind]
    if shape == "infinite":
        overlap = _overlaps_infinite_held(start, length)
    # Different owners conflict when the bytes overlap and either is exclusive,
    # whichever protocols they came from.
    expected = overlap and (held_x or req_x)

    def case(self: ConflictMatrixTests) -> None:
        a, b = owner(p1, 1), owner(p2, 2)
        held = self.grant(a, *HELD_SHAPES[shape], held_x)
        self.assertEqual(self.table.test(INO, b, start, length, req_x), held if expected else None)
        d = self.table.lock(INO, b, start, length, req_x)
        if expected:
            self.assertEqual(self.failureResultOf(d, LockConflict).value.holder, held)
            self.assertEqual(self.table.locks(INO), [held])
        else:
            self.successResultOf(d)
            self.assertEqual(len(self.table.locks(INO)), 2)

    case.__doc__ = (
        f"A {p2} {_type(req_x)} request {kind} a {p1} {_type(held_x)} lock of another owner "
        f"({shape} held range) {'conflicts' if expected else 'is granted'}."
    )
    return case


def _make_same_owner_case(
    p: str, held_x: bool, req_x: bool, kind: str
) -> Callable[[ConflictMatrixTests], None]:
    start, length, overlap = OVERLAPS[kind]
    # POSIX owners never conflict with themselves. A Windows open's exclusive
    # request conflicts with any of its own overlapping locks; its shared
    # request stacks on its own locks of either type.
    expected = p == "smb" and overlap and req_x

    def case(self: ConflictMatrixTests) -> None:
        a = owner(p, 1)
        held = self.grant(a, 10, 10, held_x)
        self.assertEqual(self.table.test(INO, a, start, length, req_x), held if expected else None)
        d = self.table.lock(INO, a, start, length, req_x)
        if expected:
            self.assertEqual(self.failureResultOf(d, LockConflict).value.holder, held)
        else:
            self.successResultOf(d)

    case.__doc__ = (
        f"A {p} owner's {_type(req_x)} request {kind} its own {_type(held_x)} lock "
        f"{'conflicts' if expected else 'is granted'}."
    )
    return case


class ConflictMatrixTests(TableTestCase):
    """Generated: one test per protocol pair, lock types, overlap kind and held shape."""


for _p1, _p2, _hx, _rx, _kind, _shape in itertools.product(
    PROTOCOLS, PROTOCOLS, (False, True), (False, True), OVERLAPS, HELD_SHAPES
):
    _name = f"test_{_p1}_{_type(_hx)}_vs_{_p2}_{_type(_rx)}_{_kind}_{_shape}"
    setattr(ConflictMatrixTests, _name, _make_other_owner_case(_p1, _hx, _p2, _rx, _kind, _shape))
for _p, _hx, _rx, _kind in itertools.product(PROTOCOLS, (False, True), (False, True), OVERLAPS):
    _name = f"test_same_owner_{_p}_{_type(_hx)}_then_{_type(_rx)}_{_kind}"
    setattr(ConflictMatrixTests, _name, _make_same_owner_case(_p, _hx, _rx, _kind))


class CrossProtocolTests(TableTestCase):
    def test_one_table_for_all_protocols(self) -> None:
        """An exclusive lock over any protocol refuses the same bytes over every other."""
        for holder_protocol in PROTOCOLS:
            self.setUp()
            holder = owner(holder_protocol, 1)
            held = self.grant(holder, 100, 50, True)
            for other in PROTOCOLS:
                f = self.refuse(owner(other, 2), 120, 1, False)
                self.assertEqual(f.value.holder, held)
            self.table.release_owner(holder)
            for n, other in enumerate(PROTOCOLS, 2):
                self.grant(owner(other, n), 120, 1, False)

    def test_shared_across_protocols(self) -> None:
        """Shared locks of NLM, NFSv4 and SMB owners coexist on the same bytes."""
        for n, p in enumerate(PROTOCOLS):
            self.grant(owner(p, n), 0, 10, False)
        self.assertEqual(len(self.table.locks(INO)), 3)
        self.assertEqual(self.table.owners_of(INO), {owner(p, n) for n, p in enumerate(PROTOCOLS)})

    def test_same_client_name_other_protocol_is_another_owner(self) -> None:
        """Owners with equal client and owner fields but different protocols are distinct."""
        nlm = LockOwner("nlm", "host", b"x")
        smb = LockOwner("smb", "host", b"x")
        self.grant(nlm, 0, 10, True)
        self.refuse(smb, 5, 1, False)
        self.table.release_client("smb", "host")
        self.assertEqual(len(self.table.locks(INO)), 1)
        self.table.release_client("nlm", "host")
        self.assertEqual(self.table.locks(INO), [])

    def test_inodes_are_independent(self) -> None:
        a, b = owner("nlm", 1), owner("smb", 2)
        self.grant(a, 0, 0, True, ino=1)
        self.grant(b, 0, 0, True, ino=2)
        self.assertEqual(self.table.test(1, b, 0, 0, True), self.table.locks(1)[0])
        self.assertIsNone(self.table.test(3, b, 0, 0, True))


# ---------------------------------------------------------------------------
# Ranges


class RangeTests(TableTestCase):
    def test_negative_values_invalid(self) -> None:
        a = owner("nlm")
        for start, length in [(-1, 1), (0, -1), (2**64, 1), (0, 2**64)]:
            self.refuse(a, start, length, True, error=Inval)
            self.assertRaises(Inval, self.table.test, INO, a, start, length, True)
            self.assertRaises(Inval, self.table.unlock, INO, a, start, length)
            self.assertRaises(Inval, self.table.check_io, INO, a, start, length, True)
        self.assertEqual(self.table.records, 0)

    def test_to_eof_spellings(self) -> None:
        """Length 0, NFSv4's 2**64-1 and any range past the last offset all mean to EOF."""
        a = owner("nfs4")
        for start, length in [(5, 0), (5, 2**64 - 1), (5, 2**64 - 5), (2**64 - 1, 1)]:
            lk = self.grant(a, start, length, True)
            self.assertEqual((lk.start, lk.length, lk.end), (start, 0, EOF))
            self.table.unlock(INO, a, 0, 0)

    def test_largest_finite_range(self) -> None:
        lk = self.grant(owner("nlm"), 0, 2**64 - 2, True)
        self.assertEqual((lk.length, lk.end), (2**64 - 2, 2**64 - 2))
        self.assertIsNone(self.table.test(INO, owner("nlm", 2), 2**64 - 2, 1, True))


# ---------------------------------------------------------------------------
# POSIX owners: split, merge, upgrade, downgrade


class PosixTests(TableTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.a = owner("nlm", 1)
        self.b = owner("nfs4", 2)

    def test_merge_adjacent_same_type(self) -> None:
        self.grant(self.a, 0, 10, False)
        self.grant(self.a, 10, 10, False)
        self.assertEqual(self.ranges(), [(b"o1", 0, 20, "S")])

    def test_merge_overlapping_same_type(self) -> None:
        self.grant(self.a, 0, 10, True)
        self.grant(self.a, 5, 10, True)
        self.assertEqual(self.ranges(), [(b"o1", 0, 15, "X")])

    def test_merge_bridges_gap(self) -> None:
        """A lock filling the gap between two of the same type joins all three."""
        self.grant(self.a, 0, 10, False)
        self.grant(self.a, 20, 10, False)
        self.grant(self.a, 10, 10, False)
        self.assertEqual(self.ranges(), [(b"o1", 0, 30, "S")])
        self.assertEqual(self.table.records, 1)

    def test_merge_many_inside_larger(self) -> None:
        for start in range(0, 50, 10):
            self.grant(self.a, start, 5, True)
        self.grant(self.a, 2, 40, True)
        self.assertEqual(self.ranges(), [(b"o1", 0, 45, "X")])

    def test_merge_with_infinite(self) -> None:
        self.grant(self.a, 0, 10, False)
        self.grant(self.a, 10, 0, False)
        self.assertEqual(self.ranges(), [(b"o1", 0, 0, "S")])

    def test_no_merge_across_types(self) -> None:
        self.grant(self.a, 0, 10, False)
        self.grant(self.a, 10, 10, True)
        self.assertEqual(self.ranges(), [(b"o1", 0, 10, "S"), (b"o1", 10, 10, "X")])

    def test_no_merge_across_owners(self) -> None:
        self.grant(self.a, 0, 10, False)
        self.grant(self.b, 10, 10, False)
        self.assertEqual(self.ranges(), [(b"o1", 0, 10, "S"), (b"o2", 10, 10, "S")])

    def test_same_type_inside_is_unchanged(self) -> None:
        self.grant(self.a, 0, 30, True)
        lk = self.grant(self.a, 10, 5, True)
        self.assertEqual((lk.start, lk.length), (10, 5), "the lock as requested is reported")
        self.assertEqual(self.ranges(), [(b"o1", 0, 30, "X")])

    def test_upgrade_middle_splits(self) -> None:
        self.grant(self.a, 0, 30, False)
        self.grant(self.a, 10, 10, True)
        self.assertEqual(
            self.ranges(), [(b"o1", 0, 10, "S"), (b"o1", 10, 10, "X"), (b"o1", 20, 10, "S")]
        )
        self.assertEqual(self.table.records, 3)

    def test_downgrade_middle_splits(self) -> None:
        self.grant(self.a, 0, 30, True)
        self.grant(self.a, 10, 10, False)
        self.assertEqual(
            self.ranges(), [(b"o1", 0, 10, "X"), (b"o1", 10, 10, "S"), (b"o1", 20, 10, "X")]
        )

    def test_upgrade_overlapping_end(self) -> None:
        self.grant(self.a, 0, 20, False)
        self.grant(self.a, 10, 20, True)
        self.assertEqual(self.ranges(), [(b"o1", 0, 10, "S"), (b"o1", 10, 20, "X")])

    def test_downgrade_across_two_locks(self) -> None:
        self.grant(self.a, 0, 10, True)
        self.grant(self.a, 20, 10, True)
        self.grant(self.a, 5, 20, False)
        self.assertEqual(
            self.ranges(), [(b"o1", 0, 5, "X"), (b"o1", 5, 20, "S"), (b"o1", 25, 5, "X")]
        )

    def test_upgrade_whole_to_eof(self) -> None:
        self.grant(self.a, 0, 10, False)
        self.grant(self.a, 50, 10, True)
        self.grant(self.a, 0, 0, True)
        self.assertEqual(self.ranges(), [(b"o1", 0, 0, "X")])

    def test_upgrade_is_atomic(self) -> None:
        """An upgrade refused by another owner leaves the owner's lock exactly as it was."""
        self.grant(self.a, 0, 30, False)
        theirs = self.grant(self.b, 25, 1, False)
        f = self.refuse(self.a, 0, 30, True)
        self.assertEqual(f.value.holder, theirs)
        self.assertEqual(self.ranges(), [(b"o1", 0, 30, "S"), (b"o2", 25, 1, "S")])

    def test_unlock_middle_splits(self) -> None:
        self.grant(self.a, 0, 30, True)
        self.table.unlock(INO, self.a, 10, 10)
        self.assertEqual(self.ranges(), [(b"o1", 0, 10, "X"), (b"o1", 20, 10, "X")])
        self.assertIsNone(self.table.test(INO, self.b, 10, 10, True))

    def test_unlock_across_several(self) -> None:
        self.grant(self.a, 0, 10, True)
        self.grant(self.a, 10, 10, False)
        self.grant(self.a, 30, 10, True)
        self.table.unlock(INO, self.a, 5, 30)
        self.assertEqual(self.ranges(), [(b"o1", 0, 5, "X"), (b"o1", 35, 5, "X")])

    def test_unlock_tail_of_infinite(self) -> None:
        self.grant(self.a, 0, 0, True)
        self.table.unlock(INO, self.a, 100, 0)
        self.assertEqual(self.ranges(), [(b"o1", 0, 100, "X")])

    def test_unlock_middle_of_infinite(self) -> None:
        self.grant(self.a, 0, 0, False)
        self.table.unlock(INO, self.a, 100, 1)
        self.assertEqual(self.ranges(), [(b"o1", 0, 100, "S"), (b"o1", 101, 0, "S")])

    def test_unlock_unlocked_bytes_is_fine(self) -> None:
        self.table.unlock(INO, self.a, 0, 10)
        self.grant(self.a, 0, 10, True)
        self.table.unlock(INO, self.a, 50, 10)
        self.table.unlock(INO, self.b, 0, 10)
        self.assertEqual(self.ranges(), [(b"o1", 0, 10, "X")])

    def test_unlock_all_forgets(self) -> None:
        self.grant(self.a, 0, 10, True)
        self.grant(self.a, 20, 10, False)
        self.table.unlock(INO, self.a, 0, 0)
        self.assertEqual(self.ranges(), [])
        self.assert_empty_table()


# ---------------------------------------------------------------------------
# Windows owners: stacking, self-conflict, exact unlock


class WindowsTests(TableTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.a = owner("smb", 1)
        self.b = owner("smb", 2)

    def test_shared_locks_stack(self) -> None:
        self.grant(self.a, 0, 10, False)
        self.grant(self.a, 0, 10, False)
        self.grant(self.a, 5, 10, False)
        self.assertEqual(
            self.ranges(), [(b"o1", 0, 10, "S"), (b"o1", 0, 10, "S"), (b"o1", 5, 10, "S")]
        )
        self.assertEqual(self.table.records, 3)

    def test_adjacent_locks_do_not_merge(self) -> None:
        self.grant(self.a, 0, 10, True)
        self.grant(self.a, 10, 10, True)
        self.assertEqual(self.ranges(), [(b"o1", 0, 10, "X"), (b"o1", 10, 10, "X")])

    def test_own_exclusive_blocks_own_exclusive(self) -> None:
        held = self.grant(self.a, 0, 10, True)
        self.assertEqual(self.refuse(self.a, 5, 10, True).value.holder, held)

    def test_own_shared_blocks_own_exclusive(self) -> None:
        """No upgrade in place: an exclusive request over the open's own shared lock conflicts."""
        held = self.grant(self.a, 0, 10, False)
        self.assertEqual(self.refuse(self.a, 0, 10, True).value.holder, held)
        self.assertEqual(self.ranges(), [(b"o1", 0, 10, "S")])

    def test_shared_stacks_on_own_exclusive(self) -> None:
        self.grant(self.a, 0, 10, True)
        self.grant(self.a, 0, 10, False)
        self.assertEqual(self.ranges(), [(b"o1", 0, 10, "X"), (b"o1", 0, 10, "S")])
        self.refuse(self.b, 0, 1, False)

    def test_unlock_exact_match_only(self) -> None:
        self.grant(self.a, 10, 10, True)
        for start, length in [(10, 5), (10, 11), (15, 5), (0, 0), (10, 0)]:
            f = self.assertRaises(NoLock, self.table.unlock, INO, self.a, start, length)
            self.assertNotIsInstance(f, Grace)
        self.assertRaises(NoLock, self.table.unlock, INO, self.b, 10, 10)
        self.table.unlock(INO, self.a, 10, 10)
        self.assertEqual(self.ranges(), [])
        self.assertRaises(NoLock, self.table.unlock, INO, self.a, 10, 10)

    def test_unlock_removes_one_stacked_lock(self) -> None:
        self.grant(self.a, 0, 10, False)
        self.grant(self.a, 0, 10, False)
        self.table.unlock(INO, self.a, 0, 10)
        self.assertEqual(self.ranges(), [(b"o1", 0, 10, "S")])
        self.refuse(self.b, 0, 10, True)
        self.table.unlock(INO, self.a, 0, 10)
        self.grant(self.b, 0, 10, True)

    def test_unlock_prefers_exclusive(self) -> None:
        """MS-FSA 2.1.5.9: of an exclusive and a shared lock on one range, the exclusive goes."""
        self.grant(self.a, 0, 10, True)
        self.grant(self.a, 0, 10, False)
        self.table.unlock(INO, self.a, 0, 10)
        self.assertEqual(self.ranges(), [(b"o1", 0, 10, "S")])
        self.grant(self.b, 0, 10, False)

    def test_unlock_to_eof_matches_any_spelling(self) -> None:
        """A lock reaching past the last offset is unlocked by any to-EOF spelling."""
        self.grant(self.a, 5, 2**64 - 5, True)
        self.table.unlock(INO, self.a, 5, 0)
        self.assertEqual(self.ranges(), [])

    def test_blocking_request_behind_own_lock(self) -> None:
        """Windows waits (it does no deadlock detection) until the open unlocks itself."""
        self.grant(self.a, 0, 10, True)
        d = self.wait(self.a, 0, 10, True)
        self.table.unlock(INO, self.a, 0, 10)
        self.assertEqual(self.successResultOf(d).owner, self.a)
        self.assertEqual(self.ranges(), [(b"o1", 0, 10, "X")])

    def test_windows_and_posix_owner_side_by_side(self) -> None:
        """A POSIX owner's merge does not absorb a Windows owner's lock of the same type."""
        nlm = owner("nlm", 3)
        self.grant(self.a, 10, 10, False)
        self.grant(nlm, 0, 10, False)
        self.grant(nlm, 20, 10, False)
        self.grant(nlm, 5, 20, False)
        self.assertEqual(self.ranges(), [(b"o3", 0, 30, "S"), (b"o1", 10, 10, "S")])


# ---------------------------------------------------------------------------
# Blocking requests: fairness, wake-ups, cancellation, deadlock


class WaiterTests(TableTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.a, self.b, self.c, self.d = (owner("nlm", n) for n in range(1, 5))

    def test_granted_at_once_when_free(self) -> None:
        d = self.table.lock(INO, self.a, 0, 10, True, wait=True)
        self.assertEqual(self.successResultOf(d).owner, self.a)

    def test_wakes_on_unlock(self) -> None:
        self.grant(self.a, 0, 10, True)
        d = self.wait(self.b, 5, 10, True)
        self.assertEqual(self.table.waiting(INO), [Lock(self.b, 5, 10, True)])
        self.table.unlock(INO, self.a, 0, 5)
        self.assertNoResult(d)
        self.table.unlock(INO, self.a, 5, 5)
        self.assertEqual(self.successResultOf(d), Lock(self.b, 5, 10, True))
        self.assertEqual(self.table.waiting(INO), [])
        self.assertEqual(self.ranges(), [(b"o2", 5, 10, "X")])

    def test_exclusive_waiter_not_starved_by_shared(self) -> None:
        """
        First come, first served: shared requests that arrive after an
        exclusive waiter queue behind it, though they would not conflict with
        the shared lock actually held.
        """
        self.grant(self.a, 0, 10, False)
        xd = self.wait(self.b, 0, 10, True)
        f = self.refuse(self.c, 0, 10, False)
        self.assertEqual(f.value.holder, Lock(self.b, 0, 10, True), "reports the waiter")
        self.assertEqual(self.table.test(INO, self.c, 5, 1, False), Lock(self.b, 0, 10, True))
        sd = self.wait(self.c, 5, 1, False)
        sd2 = self.wait(self.d, 0, 0, False)
        self.table.unlock(INO, self.a, 0, 10)
        self.assertEqual(self.successResultOf(xd).owner, self.b)
        self.assertNoResult(sd)
        self.assertNoResult(sd2)
        self.table.unlock(INO, self.b, 0, 10)
        self.successResultOf(sd)
        self.successResultOf(sd2)
        self.assertEqual(self.ranges(), [(b"o4", 0, 0, "S"), (b"o3", 5, 1, "S")])

    def test_fifo_order(self) -> None:
        """Conflicting waiters are granted in the order they asked."""
        self.grant(self.a, 0, 10, True)
        order: list[bytes] = []
        ds = []
        for who in (self.b, self.c, self.d):
            d = self.wait(who, 0, 10, True)
            d.addCallback(lambda lk: order.append(lk.owner.owner))
            ds.append(d)
        self.table.unlock(INO, self.a, 0, 10)
        self.assertEqual(order, [b"o2"])
        self.table.unlock(INO, self.b, 0, 10)
        self.assertEqual(order, [b"o2", b"o3"])
        self.table.release_owner(self.c)
        self.assertEqual(order, [b"o2", b"o3", b"o4"])

    def test_shared_waiters_granted_together(self) -> None:
        self.grant(self.a, 0, 10, True)
        ds = [self.wait(who, 0, 10, False) for who in (self.b, self.c, self.d)]
        self.table.unlock(INO, self.a, 0, 0)
        for d in ds:
            self.successResultOf(d)
        self.assertEqual(len(self.table.locks(INO)), 3)

    def test_unrelated_waiter_passes_blocked_one(self) -> None:
        """Fairness is per conflict: a waiter behind nothing in its way is granted first."""
        self.grant(self.a, 0, 10, True)
        self.grant(self.d, 20, 10, True)
        first = self.wait(self.b, 0, 10, True)
        second = self.wait(self.c, 20, 10, True)
        self.table.unlock(INO, self.d, 20, 10)
        self.successResultOf(second)
        self.assertNoResult(first)

    def test_non_conflicting_request_ignores_queue(self) -> None:
        self.grant(self.a, 0, 10, False)
        self.wait(self.b, 0, 10, True)
        self.grant(self.c, 10, 10, True)
        self.grant(self.d, 20, 0, False)

    def test_holder_not_queued_behind_its_own_waiter(self) -> None:
        """
        An owner whose lock a waiter waits for may still extend or upgrade
        its locks: queueing it behind that waiter would deadlock the two.
        """
        self.grant(self.a, 0, 10, False)
        xd = self.wait(self.b, 0, 10, True)
        self.grant(self.a, 5, 10, False)
        self.grant(self.a, 0, 5, True)
        self.assertNoResult(xd)
        self.table.unlock(INO, self.a, 0, 0)
        self.successResultOf(xd)

    def test_downgrade_wakes_shared_waiter(self) -> None:
        self.grant(self.a, 0, 10, True)
        d = self.wait(self.b, 0, 10, False)
        self.grant(self.a, 0, 10, False)
        self.successResultOf(d)
        self.assertEqual(self.ranges(), [(b"o1", 0, 10, "S"), (b"o2", 0, 10, "S")])

    def test_downgrade_by_waiter_wakes_older_waiter(self) -> None:
        """A granted waiter's downgrade lets an older shared waiter through in the same pass."""
        self.grant(self.a, 0, 10, True)
        self.grant(self.b, 20, 10, True)
        # c holds [30, 40) exclusively and waits for a shared lock on [20, 40):
        # when granted, it downgrades its own [30, 40) and so frees d.
        self.grant(self.c, 30, 10, True)
        d_waits = self.wait(self.d, 35, 1, False)
        c_waits = self.wait(self.c, 20, 20, False)
        self.table.unlock(INO, self.b, 20, 10)
        self.successResultOf(c_waits)
        self.successResultOf(d_waits)

    def test_wakes_on_release_owner(self) -> None:
        self.grant(self.a, 0, 10, True)
        self.grant(self.a, 50, 10, True, ino=8)
        d = self.wait(self.b, 0, 10, True)
        d8 = self.wait(self.c, 50, 1, False, ino=8)
        self.table.release_owner(self.a)
        self.successResultOf(d)
        self.successResultOf(d8)

    def test_wakes_on_release_client(self) -> None:
        x = owner("nlm", 5, client="host-x")
        y = owner("nlm", 6, client="host-x")
        self.grant(x, 0, 10, True)
        self.grant(y, 10, 10, True)
        d = self.wait(self.b, 0, 20, True)
        self.table.release_client("nlm", "host-x")
        self.successResultOf(d)

    def test_cancel(self) -> None:
        """NLM CANCEL / SMB CANCEL: cancelling the Deferred leaves the queue."""
        self.grant(self.a, 0, 10, True)
        d = self.wait(self.b, 0, 10, True)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.table.waiting(INO), [])
        self.table.unlock(INO, self.a, 0, 10)
        self.assertEqual(self.ranges(), [])
        self.assert_empty_table()

    def test_cancelled_head_lets_queue_move(self) -> None:
        self.grant(self.a, 0, 10, False)
        xd = self.wait(self.b, 0, 10, True)
        sd = self.wait(self.c, 0, 10, False)
        xd.cancel()
        self.failureResultOf(xd, defer.CancelledError)
        self.successResultOf(sd)

    def test_cancel_after_grant_is_harmless(self) -> None:
        self.grant(self.a, 0, 10, True)
        d = self.wait(self.b, 0, 10, True)
        self.table.unlock(INO, self.a, 0, 10)
        d.cancel()
        self.successResultOf(d)
        self.assertEqual(self.ranges(), [(b"o2", 0, 10, "X")])

    def test_timeout_by_clock(self) -> None:
        """A front end bounds the wait with addTimeout on the same clock."""
        self.grant(self.a, 0, 10, True)
        d = self.wait(self.b, 0, 10, True)
        d.addTimeout(30, self.clock)
        self.clock.advance(29)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.failureResultOf(d, defer.TimeoutError)
        self.assertEqual(self.table.waiting(INO), [])

    def test_cancel_waiters(self) -> None:
        self.grant(self.a, 0, 10, True)
        self.grant(self.b, 20, 10, True)
        self.grant(self.c, 0, 1, True, ino=9)
        d1 = self.wait(self.b, 0, 10, True)
        d2 = self.wait(self.b, 0, 10, True, ino=9)
        # Only on one inode first, then everywhere; b keeps its lock.
        self.table.cancel_waiters(self.b, ino=INO)
        self.failureResultOf(d1, defer.CancelledError)
        self.assertNoResult(d2)
        self.table.cancel_waiters(self.b)
        self.failureResultOf(d2, defer.CancelledError)
        self.assertEqual(self.ranges(), [(b"o1", 0, 10, "X"), (b"o2", 20, 10, "X")])
        self.table.cancel_waiters(self.d)

    def test_release_owner_fails_its_waiters(self) -> None:
        self.grant(self.a, 0, 10, True)
        d = self.wait(self.b, 0, 10, True)
        self.table.release_owner(self.b)
        self.failureResultOf(d, defer.CancelledError)
        self.table.release_owner(self.a)
        self.assert_empty_table()

    def test_release_inode_fails_waiters_stale(self) -> None:
        self.grant(self.a, 0, 10, True)
        d = self.wait(self.b, 0, 10, True)
        token = self.table.open_share(INO, self.c, {"read"}, set())
        self.table.release_inode(INO)
        self.failureResultOf(d, Stale)
        self.assertTrue(token.closed)
        self.assertEqual(self.table.locks(INO), [])
        self.assert_empty_table()
        self.table.release_inode(INO)

    def test_callback_may_reenter(self) -> None:
        """A grant callback that unlocks at once lets the next waiter through."""
        self.grant(self.a, 0, 10, True)
        d1 = self.wait(self.b, 0, 10, True)
        d1.addCallback(lambda lk: self.table.unlock(INO, lk.owner, lk.start, lk.length))
        d2 = self.wait(self.c, 0, 10, True)
        self.table.unlock(INO, self.a, 0, 10)
        self.successResultOf(d1)
        self.assertEqual(self.successResultOf(d2).owner, self.c)
        self.assertEqual(self.ranges(), [(b"o3", 0, 10, "X")])

    def test_callback_may_release_next_waiter(self) -> None:
        self.grant(self.a, 0, 10, True)
        d1 = self.wait(self.b, 0, 10, False)
        d2 = self.wait(self.c, 0, 10, False)
        d1.addCallback(lambda _: self.table.release_owner(self.c))
        self.table.unlock(INO, self.a, 0, 10)
        self.successResultOf(d1)
        self.failureResultOf(d2, defer.CancelledError)
        self.assertEqual(self.ranges(), [(b"o2", 0, 10, "S")])

    def test_waiters_bounded(self) -> None:
        self.table = LockTable(self.clock, max_waiters=2)
        self.grant(self.a, 0, 10, True)
        self.wait(self.b, 0, 10, True)
        self.wait(self.c, 0, 10, True)
        self.refuse(self.d, 0, 10, True, wait=True, error=NoLock)
        # Other inodes have their own bound.
        self.grant(self.a, 0, 10, True, ino=8)
        self.wait(self.d, 0, 10, True, ino=8)

    def test_deadlock_two_inodes(self) -> None:
        """a waits for b on one file; b asking to wait for a on another is EDEADLK."""
        self.grant(self.a, 0, 10, True, ino=1)
        self.grant(self.b, 0, 10, True, ino=2)
        da = self.wait(self.a, 0, 10, True, ino=2)
        self.refuse(self.b, 0, 10, True, ino=1, wait=True, error=Deadlock)
        # A non-blocking request cannot deadlock: it is simply refused.
        self.refuse(self.b, 0, 10, True, ino=1)
        self.table.unlock(2, self.b, 0, 10)
        self.successResultOf(da)

    def test_deadlock_upgrade(self) -> None:
        """Two shared holders both upgrading: the second to ask fails, the first proceeds."""
        self.grant(self.a, 0, 10, False)
        self.grant(self.b, 0, 10, False)
        da = self.wait(self.a, 0, 10, True)
        self.refuse(self.b, 0, 10, True, wait=True, error=Deadlock)
        self.table.unlock(INO, self.b, 0, 10)
        self.successResultOf(da)
        self.assertEqual(self.ranges(), [(b"o1", 0, 10, "X")])

    def test_deadlock_three_owners(self) -> None:
        self.grant(self.a, 0, 1, True, ino=1)
        self.grant(self.b, 0, 1, True, ino=2)
        self.grant(self.c, 0, 1, True, ino=3)
        self.wait(self.a, 0, 1, True, ino=2)
        self.wait(self.b, 0, 1, True, ino=3)
        self.refuse(self.c, 0, 1, True, ino=1, wait=True, error=Deadlock)
        # Without the cycle, c may wait.
        self.grant(self.d, 0, 1, True, ino=4)
        self.wait(self.c, 0, 1, True, ino=4)

    def test_deadlock_through_queue(self) -> None:
        """Waiting behind another owner's waiter (fairness) is an edge of the wait-for graph."""
        self.grant(self.a, 0, 10, False)
        self.grant(self.c, 0, 1, True, ino=2)
        # b waits for a's shared lock; c queues behind b on the same bytes.
        self.wait(self.b, 0, 10, True)
        self.wait(self.c, 0, 10, False)
        # a waiting for c now closes a -> c -> b -> a.
        self.refuse(self.a, 0, 1, True, ino=2, wait=True, error=Deadlock)

    def test_no_deadlock_detection_for_windows(self) -> None:
        x, y = owner("smb", 1), owner("smb", 2)
        self.grant(x, 0, 10, True, ino=1)
        self.grant(y, 0, 10, True, ino=2)
        self.wait(x, 0, 10, True, ino=2)
        dy = self.wait(y, 0, 10, True, ino=1)
        dy.cancel()
        self.failureResultOf(dy, defer.CancelledError)

    def test_cross_protocol_deadlock_detected(self) -> None:
        """An SMB waiter is part of the graph a POSIX request is checked against."""
        x = owner("smb", 9)
        self.grant(self.a, 0, 10, True, ino=1)
        self.grant(x, 0, 10, True, ino=2)
        self.wait(x, 0, 10, True, ino=1)
        self.refuse(self.a, 0, 10, True, ino=2, wait=True, error=Deadlock)


# ---------------------------------------------------------------------------
# Grace period


class GraceTests(TableTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.a, self.b = owner("nlm", 1), owner("nfs4", 2)

    def test_grace_is_a_nolock(self) -> None:
        self.assertTrue(issubclass(Grace, NoLock))
        self.assertIn(Grace, FS_ERRORS)

    def test_only_reclaims_during_grace(self) -> None:
        self.assertFalse(self.table.in_grace)
        self.table.start_grace(90)
        self.assertTrue(self.table.in_grace)
        self.refuse(self.a, 0, 10, True, error=Grace)
        self.refuse(self.a, 0, 10, True, wait=True, error=Grace)
        self.grant(self.a, 0, 10, True, reclaim=True)
        self.refuse(self.b, 0, 10, True, reclaim=True, error=LockConflict)
        self.clock.advance(89)
        self.assertTrue(self.table.in_grace)
        self.refuse(self.b, 20, 10, True, error=Grace)
        self.clock.advance(1)
        self.assertFalse(self.table.in_grace)
        self.grant(self.b, 20, 10, True)

    def test_unlock_and_test_during_grace(self) -> None:
        self.table.start_grace(90)
        self.grant(self.a, 0, 10, True, reclaim=True)
        self.assertEqual(self.table.test(INO, self.b, 0, 1, False), self.table.locks(INO)[0])
        self.table.unlock(INO, self.a, 0, 10)
        self.assertEqual(self.ranges(), [])

    def test_end_grace_early(self) -> None:
        self.table.start_grace(90)
        self.table.end_grace()
        self.assertFalse(self.table.in_grace)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.grant(self.a, 0, 10, True)
        self.table.end_grace()

    def test_restart_grace(self) -> None:
        self.table.start_grace(90)
        self.clock.advance(60)
        self.table.start_grace(90)
        self.clock.advance(60)
        self.assertTrue(self.table.in_grace)
        self.clock.advance(30)
        self.assertFalse(self.table.in_grace)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reclaim_outside_grace_is_ordinary(self) -> None:
        self.grant(self.a, 0, 10, True, reclaim=True)
        self.refuse(self.b, 0, 10, True, reclaim=True)

    def test_waiters_held_until_grace_ends(self) -> None:
        """A non-reclaim waiter queued before grace began is not granted during it."""
        self.grant(self.a, 0, 10, True)
        d = self.wait(self.b, 0, 10, True)
        self.table.start_grace(90)
        self.table.unlock(INO, self.a, 0, 10)
        self.assertNoResult(d)
        # A reclaim passes the waiter that grace holds back.
        self.grant(self.a, 20, 10, True, reclaim=True)
        rd = self.table.lock(INO, owner("nlm", 3), 5, 1, False, wait=True, reclaim=True)
        self.successResultOf(rd)
        self.table.unlock(INO, owner("nlm", 3), 5, 1)
        self.clock.advance(90)
        self.successResultOf(d)

    def test_shares_during_grace(self) -> None:
        self.table.start_grace(90)
        self.assertRaises(Grace, self.table.open_share, INO, self.a, {"read"}, set())
        token = self.table.open_share(INO, self.a, {"read"}, {"write"}, reclaim=True)
        self.assertRaises(Grace, self.table.upgrade_share, token, {"write"}, set())
        self.table.upgrade_share(token, {"write"}, set(), reclaim=True)
        self.table.downgrade_share(token, {"read"}, set())
        self.table.close_share(token)


# ---------------------------------------------------------------------------
# Share reservations


def _subsets(modes: frozenset[str]) -> list[frozenset[str]]:
    items = sorted(modes)
    return [frozenset(c) for r in range(len(items) + 1) for c in itertools.combinations(items, r)]


MODE_SETS = _subsets(SHARE_MODES)


def _make_share_matrix_case(p1: str, p2: str) -> Callable[[ShareMatrixTests], None]:
    def case(self: ShareMatrixTests) -> None:
        first, second = owner(p1, 1), owner(p2, 2)
        for acc1, den1, acc2, den2 in itertools.product(MODE_SETS, repeat=4):
            table = LockTable(self.clock)
            table.open_share(INO, first, acc1, den1)
            # What the second open wants must not be denied by the first, and
            # what it denies must not be in use by the first.
            expected = bool(acc2 & den1) or bool(den2 & acc1)
            try:
                table.open_share(INO, second, acc2, den2)
            except ShareConflict:
                got = True
            else:
                got = False
            self.assertEqual(
                got, expected, (sorted(acc1), sorted(den1), sorted(acc2), sorted(den2))
            )

    case.__doc__ = f"All 4096 access x deny combinations of a {p1} open then a {p2} open."
    return case


class ShareMatrixTests(SynchronousTestCase):
    """Generated: one test per protocol pair over every access x deny combination."""

    def setUp(self) -> None:
        self.clock = Clock()


for _p1, _p2 in itertools.product(PROTOCOLS, PROTOCOLS):
    setattr(ShareMatrixTests, f"test_{_p1}_then_{_p2}", _make_share_matrix_case(_p1, _p2))


class ShareTests(TableTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.a, self.b = owner("smb", 1), owner("nfs4", 2)

    def test_windows_sharing_examples(self) -> None:
        """The classic cases: FILE_SHARE_READ lets readers in and keeps writers out."""
        t = self.table
        first = t.open_share(INO, self.a, {"read"}, {"write", "delete"})
        t.open_share(INO, owner("smb", 3), {"read"}, {"write", "delete"})
        self.assertRaises(ShareConflict, t.open_share, INO, self.b, {"write"}, set())
        self.assertRaises(ShareConflict, t.open_share, INO, self.b, {"delete"}, set())
        self.assertRaises(ShareConflict, t.open_share, INO, self.b, {"read"}, {"read"})
        t.open_share(INO, self.b, set(), {"write"})
        self.assertEqual(len(t.shares(INO)), 3)
        self.assertEqual(t.shares(INO)[0], first)

    def test_same_owner_checked_against_itself(self) -> None:
        t = self.table
        t.open_share(INO, self.a, {"read"}, {"read"})
        self.assertRaises(ShareConflict, t.open_share, INO, self.a, {"read"}, set())

    def test_upgrade_is_union_checked_against_others_only(self) -> None:
        t = self.table
        token = t.open_share(INO, self.b, {"read"}, {"write"})
        # Its own deny-write does not stop it from adding write access.
        t.upgrade_share(token, {"write"}, set())
        self.assertEqual(token.access, {"read", "write"})
        self.assertEqual(token.deny, {"write"})
        other = t.open_share(INO, self.a, {"read"}, set())
        with self.assertRaises(ShareConflict):
            t.upgrade_share(token, set(), {"read"})
        self.assertEqual((token.access, token.deny), ({"read", "write"}, {"write"}))
        t.close_share(other)
        t.upgrade_share(token, set(), {"read"})
        self.assertEqual(token.deny, {"read", "write"})

    def test_downgrade(self) -> None:
        t = self.table
        token = t.open_share(INO, self.b, {"read", "write"}, {"write"})
        self.assertRaises(Inval, t.downgrade_share, token, {"delete"}, set())
        self.assertRaises(Inval, t.downgrade_share, token, {"read"}, {"read"})
        t.downgrade_share(token, {"read"}, set())
        self.assertEqual((token.access, token.deny), ({"read"}, frozenset()))
        t.open_share(INO, self.a, {"write"}, set())

    def test_close_lets_others_in(self) -> None:
        t = self.table
        token = t.open_share(INO, self.a, {"read"}, {"write"})
        self.assertRaises(ShareConflict, t.open_share, INO, self.b, {"write"}, set())
        t.close_share(token)
        t.close_share(token)
        self.assertTrue(token.closed)
        t.open_share(INO, self.b, {"write"}, set())

    def test_closed_token(self) -> None:
        t = self.table
        token = t.open_share(INO, self.a, {"read"}, set())
        t.release_owner(self.a)
        self.assertTrue(token.closed)
        self.assertRaises(NoLock, t.upgrade_share, token, {"write"}, set())
        self.assertRaises(NoLock, t.downgrade_share, token, set(), set())
        t.close_share(token)
        self.assert_empty_table()

    def test_bad_modes(self) -> None:
        self.assertRaises(Inval, self.table.open_share, INO, self.a, {"execute"}, set())
        self.assertRaises(Inval, self.table.open_share, INO, self.a, set(), {"READ"})
        self.assertEqual(self.table.shares(INO), [])

    def test_release_client_closes_shares(self) -> None:
        t = self.table
        tokens = [t.open_share(n, self.a, {"read"}, {"write"}) for n in (1, 2)]
        t.open_share(1, self.b, {"read"}, set())
        t.release_client("smb", self.a.client)
        self.assertTrue(all(tok.closed for tok in tokens))
        self.assertEqual(t.owners_of(1), {self.b})
        self.assertEqual(t.shares(2), [])

    def test_shares_and_locks_independent(self) -> None:
        """A share reservation does not refuse byte-range locks, nor the reverse."""
        t = self.table
        t.open_share(INO, self.a, {"read", "write"}, {"read", "write", "delete"})
        self.grant(self.b, 0, 0, True)
        self.assertEqual(t.owners_of(INO), {self.a, self.b})

    def test_token_identity(self) -> None:
        t = self.table
        one = t.open_share(INO, self.a, {"read"}, set())
        two = t.open_share(INO, self.a, {"read"}, set())
        self.assertNotEqual(one, two)
        t.close_share(one)
        self.assertEqual(t.shares(INO), [two])


# ---------------------------------------------------------------------------
# Mandatory checks for I/O


class CheckIOTests(TableTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.smb, self.smb2, self.nlm = owner("smb", 1), owner("smb", 2), owner("nlm", 3)

    def io(self, who: LockOwner, start: int, length: int) -> tuple[bool, bool]:
        """(may read, may write)."""
        return (
            self.table.check_io(INO, who, start, length, False),
            self.table.check_io(INO, who, start, length, True),
        )

    def test_others_exclusive(self) -> None:
        self.grant(self.nlm, 10, 10, True)
        self.assertEqual(self.io(self.smb, 15, 10), (False, False))
        self.assertEqual(self.io(self.smb, 0, 10), (True, True))
        self.assertEqual(self.io(self.smb, 20, 100), (True, True))
        self.assertEqual(self.io(self.nlm, 15, 10), (True, True))

    def test_others_shared(self) -> None:
        self.grant(self.smb2, 10, 10, False)
        self.assertEqual(self.io(self.smb, 19, 1), (True, False))
        self.assertEqual(self.io(self.nlm, 0, 11), (True, False))

    def test_own_windows_locks(self) -> None:
        """An open's own exclusive lock lets it read and write; its own shared lock, only read."""
        self.grant(self.smb, 0, 10, True)
        self.grant(self.smb, 20, 10, False)
        self.assertEqual(self.io(self.smb, 0, 10), (True, True))
        self.assertEqual(self.io(self.smb, 25, 1), (True, False))
        self.assertEqual(self.io(self.smb2, 5, 1), (False, False))

    def test_own_posix_locks(self) -> None:
        self.grant(self.nlm, 0, 10, False)
        self.assertEqual(self.io(self.nlm, 0, 10), (True, True))

    def test_zero_length_io(self) -> None:
        self.grant(self.nlm, 0, 0, True)
        self.assertEqual(self.io(self.smb, 5, 0), (True, True))

    def test_unlocked_file(self) -> None:
        self.assertEqual(self.io(self.smb, 0, 2**63), (True, True))


# ---------------------------------------------------------------------------
# Limits, releases, logging


class LimitTests(TableTestCase):
    def test_records_bounded(self) -> None:
        t = self.table = LockTable(self.clock, max_records=3)
        a, b = owner("nlm", 1), owner("smb", 2)
        self.grant(a, 0, 10, True)
        self.grant(a, 10, 10, True)  # merges: still one record
        self.grant(b, 100, 1, True)
        self.grant(b, 101, 1, True)
        self.assertEqual(t.records, 3)
        self.refuse(b, 102, 1, True, error=NoLock)
        self.assertRaises(NoLock, t.open_share, INO, b, {"read"}, set())
        # Splitting a lock in two needs a record too.
        self.assertRaises(NoLock, t.unlock, INO, a, 5, 1)
        self.assertEqual(
            self.ranges(), [(b"o1", 0, 20, "X"), (b"o2", 100, 1, "X"), (b"o2", 101, 1, "X")]
        )
        # Trimming an end does not.
        t.unlock(INO, a, 0, 1)
        t.unlock(INO, b, 100, 1)
        t.open_share(INO, b, {"read"}, set())
        self.assertEqual(t.records, 3)

    def test_waiters_count_as_records(self) -> None:
        t = self.table = LockTable(self.clock, max_records=2)
        a, b = owner("nlm", 1), owner("nlm", 2)
        self.grant(a, 0, 10, True)
        d = self.wait(b, 0, 10, True)
        self.assertEqual(t.records, 2)
        self.refuse(owner("nlm", 3), 0, 10, True, wait=True, error=NoLock)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(t.records, 1)
        self.wait(owner("nlm", 3), 0, 10, True)

    def test_waiter_fails_when_records_run_out(self) -> None:
        """A waiter whose turn comes when it needs more records than are left fails with ENOLCK."""
        t = self.table = LockTable(self.clock, max_records=3)
        a, b = owner("nlm", 1), owner("nlm", 2)
        self.grant(a, 0, 30, False)
        self.grant(b, 19, 2, False)
        # a's upgrade of the middle of its lock splits it in three.
        d = self.wait(a, 10, 10, True)
        self.assertEqual(t.records, 3)
        t.unlock(INO, b, 19, 1)
        self.failureResultOf(d, NoLock)
        self.assertEqual(t.waiting(INO), [])
        self.assertEqual(self.ranges(), [(b"o1", 0, 30, "S"), (b"o2", 20, 1, "S")])
        self.assertEqual(t.records, 2)

    def test_release_frees_everything(self) -> None:
        t = self.table
        owners = [owner(p, n) for n, p in enumerate(PROTOCOLS * 3)]
        for n, who in enumerate(owners):
            self.grant(who, n * 10, 10, n % 2 == 0, ino=n % 4)
            t.open_share(n % 4, who, set(), set())
        pending = self.wait(owners[1], 0, 100, True, ino=0)
        for who in owners:
            t.release_client(who.protocol, who.client)
        self.failureResultOf(pending, defer.CancelledError)
        self.assert_empty_table()


class LoggingTests(TableTestCase):
    def test_debug_event_per_operation(self) -> None:
        """Each lock operation logs at debug with its protocol and inode, never the client."""
        log.set_level("debug")
        self.addCleanup(log.set_level, "info")
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        who = LockOwner("smb", "secret-host", b"fid")
        self.grant(who, 0, 10, True)
        self.table.unlock(INO, who, 0, 10)
        mine = [
            e for e in events if e.get("log_namespace", "").startswith("claudefs_gateway.vfs.locks")
        ]
        self.assertEqual(
            [(e["op"], e["outcome"]) for e in mine], [("lock", "granted"), ("unlock", "unlocked")]
        )
        for e in mine:
            self.assertEqual((e["protocol"], e["ino"]), ("smb", INO))
            self.assertNotIn("secret-host", repr(e))


# ---------------------------------------------------------------------------
# Properties


BOUND = 72  # model bytes 0..71; finite ranges stay below 64, "to EOF" covers the rest

byte_ranges = st.tuples(st.integers(0, 63), st.integers(0, 16)).filter(lambda r: r[0] + r[1] <= 64)
posix_owners = st.sampled_from([owner("nlm", 1), owner("nfs4", 2), owner("nlm", 3)])


def _bytes_of(start: int, length: int) -> range:
    return range(start, BOUND if length == 0 else start + length)


def _conflicting_pairs(locks: list[Lock]) -> list[tuple[Lock, Lock]]:
    return [
        (x, y)
        for x, y in itertools.combinations(locks, 2)
        if x.owner != y.owner
        and (x.exclusive or y.exclusive)
        and x.start < y.end
        and y.start < x.end
    ]


class PropertyTests(SynchronousTestCase):
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["lock", "unlock"]), posix_owners, byte_ranges, st.booleans()
            ),
            max_size=40,
        )
    )
    def test_posix_matches_byte_model(
        self, ops: list[tuple[str, LockOwner, tuple[int, int], bool]]
    ) -> None:
        """
        After every step of random locks and unlocks by POSIX owners, the
        table covers exactly the bytes a byte-by-byte model says, in the
        canonical (split and merged) form, and no two conflicting locks coexist.
        """
        table = LockTable(Clock())
        model: list[dict[LockOwner, bool]] = [{} for _ in range(BOUND)]
        for op, who, (start, length), exclusive in ops:
            covered = _bytes_of(start, length)
            if op == "lock":
                conflict = any(
                    o != who and (x or exclusive) for b in covered for o, x in model[b].items()
                )
                d = table.lock(INO, who, start, length, exclusive)
                if conflict:
                    self.failureResultOf(d, LockConflict)
                else:
                    self.successResultOf(d)
                    for b in covered:
                        model[b][who] = exclusive
            else:
                table.unlock(INO, who, start, length)
                for b in covered:
                    model[b].pop(who, None)

            locks = table.locks(INO)
            got: list[dict[LockOwner, bool]] = [{} for _ in range(BOUND)]
            for lk in locks:
                for b in _bytes_of(lk.start, lk.length):
                    self.assertNotIn(lk.owner, got[b], "an owner's locks never overlap")
                    got[b][lk.owner] = lk.exclusive
            self.assertEqual(got, model)
            self.assertEqual(_conflicting_pairs(locks), [])
            # Canonical: same-owner same-type locks never touch (they merge).
            for x, y in itertools.combinations(locks, 2):
                if x.owner == y.owner and x.exclusive == y.exclusive:
                    self.assertFalse(x.start <= y.end and y.start <= x.end, (x, y))
            self.assertEqual(table.records, len(locks))

    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["lock", "unlock"]),
                st.sampled_from([owner("smb", 1), owner("smb", 2)]),
                byte_ranges,
                st.booleans(),
            ),
            max_size=40,
        )
    )
    def test_windows_matches_stack_model(
        self, ops: list[tuple[str, LockOwner, tuple[int, int], bool]]
    ) -> None:
        """Windows owners: the table holds exactly the multiset of granted, not unlocked, locks."""
        table = LockTable(Clock())
        model: list[Lock] = []
        for op, who, (start, length), exclusive in ops:
            if op == "lock":
                lk = Lock(who, start, length, exclusive)
                conflict = any(
                    h.start < lk.end
                    and lk.start < h.end
                    and (exclusive if h.owner == who else (exclusive or h.exclusive))
                    for h in model
                )
                d = table.lock(INO, who, start, length, exclusive)
                if conflict:
                    self.failureResultOf(d, LockConflict)
                else:
                    self.successResultOf(d)
                    model.append(lk)
            else:
                matches = [
                    h for h in model if h.owner == who and (h.start, h.length) == (start, length)
                ]
                if not matches:
                    self.assertRaises(NoLock, table.unlock, INO, who, start, length)
                else:
                    table.unlock(INO, who, start, length)
                    exclusive_ones = [h for h in matches if h.exclusive]
                    model.remove(exclusive_ones[0] if exclusive_ones else matches[0])
            key = lambda lk: (lk.owner.owner, lk.start, lk.length, lk.exclusive)  # noqa: E731
            self.assertEqual(sorted(table.locks(INO), key=key), sorted(model, key=key))
            self.assertEqual(_conflicting_pairs(table.locks(INO)), [])

    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["lock", "wait", "unlock", "cancel", "release"]),
                st.sampled_from(
                    [owner("nlm", 1), owner("nfs4", 2), owner("smb", 3), owner("smb", 4)]
                ),
                st.tuples(st.integers(0, 31), st.integers(0, 8)),
                st.booleans(),
                st.integers(0, 100),
            ),
            max_size=40,
        )
    )
    def test_waiters_never_stuck(
        self, ops: list[tuple[str, LockOwner, tuple[int, int], bool, int]]
    ) -> None:
        """
        Whatever happens, no two conflicting locks are ever held, every
        queued request is refused by something (no waiter is left behind
        when it could proceed), and every Deferred fires at most once with a
        lock that was really granted.
        """
        table = LockTable(Clock())
        pending: list[defer.Deferred[Lock]] = []
        fired: list[Any] = []

        def track(d: defer.Deferred[Lock]) -> None:
            d.addBoth(fired.append)
            pending.append(d)

        for op, who, (start, length), exclusive, pick in ops:
            if op in ("lock", "wait"):
                d = table.lock(INO, who, start, length, exclusive, wait=op == "wait")
                track(d)
            elif op == "unlock":
                try:
                    table.unlock(INO, who, start, length)
                except NoLock:
                    pass
            elif op == "cancel" and pending:
                pending[pick % len(pending)].cancel()
            elif op == "release":
                table.release_owner(who)
            locks = table.locks(INO)
            self.assertEqual(_conflicting_pairs(locks), [])
            f = table._files.get(INO)
            for i, w in enumerate(f.waiters if f is not None else []):
                self.assertIsNotNone(
                    table._blocker(f, w.owner, w.start, w.end, w.exclusive, i, w.reclaim)
                )
        self.assertEqual(len(fired), len([d for d in pending if d.called]))
        for d in pending:
            if not d.called:
                d.cancel()
        for who in {owner("nlm", 1), owner("nfs4", 2), owner("smb", 3), owner("smb", 4)}:
            table.release_owner(who)
        self.assertEqual(table.records, 0)
        self.assertEqual(table._files, {})


class NotifyWhenFreeTests(TableTestCase):
    """L{LockTable.notify_when_free}: NFSv4's CB_NOTIFY_LOCK trigger."""

    def test_fires_on_unlock_not_before(self) -> None:
        nlm = owner("nlm")
        self.grant(nlm, 0, 10, True)
        d = self.table.notify_when_free(INO)
        self.grant(owner("smb"), 100, 1, True)
        self.assertNoResult(d)
        self.table.unlock(INO, nlm, 0, 10)
        self.assertIsNone(self.successResultOf(d))

    def test_fires_on_release_and_inode_end(self) -> None:
        nlm = owner("nlm")
        self.grant(nlm, 0, 10, True)
        d1 = self.table.notify_when_free(INO)
        self.table.release_client("nlm", nlm.client)
        self.successResultOf(d1)
        self.grant(nlm, 0, 10, True)
        d2 = self.table.notify_when_free(INO)
        self.table.release_inode(INO)
        self.successResultOf(d2)

    def test_cancel_and_bound(self) -> None:
        """A cancelled notice is gone; at most max_waiters wait on one inode."""
        table = LockTable(self.clock, max_waiters=2)
        d = table.notify_when_free(INO)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        table.notify_when_free(INO)
        table.notify_when_free(INO)
        self.assertRaises(NoLock, table.notify_when_free, INO)
