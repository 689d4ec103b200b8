"""
Persistent handles on continuously available shares (``ca: true``;
claudefs_gateway/smb/durable.py): offered at NEGOTIATE and TREE_CONNECT,
granted without an oplock or lease, written to the state store as they
change, taken back by a restarted gateway (share mode and locks held until
a reconnect or the timeout), reclaimed with their lease by a reconnect.
The real-client test over killed gateway processes is
tests/test_persistent_failover.py.
"""

from __future__ import annotations

import json
import struct
import uuid
from types import SimpleNamespace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st_
from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.smb import constants as c
from claudefs_gateway.smb import ntstatus as st
from claudefs_gateway.smb.durable import (
    SMB2_DHANDLE_FLAG_PERSISTENT,
    V1_TIMEOUT,
    Durability,
    parse_durable,
)
from claudefs_gateway.smb.errors import SMBError
from claudefs_gateway.smb.security import SID
from claudefs_gateway.smb.server import SMBFactory
from claudefs_gateway.vfs import LockOwner, LockTable
from claudefs_gateway.vfs.leases import LeaseManager
from tests.smb.client import Conn, Wire
from tests.smb.test_durable import contexts_of, dh2c, drop

CA_CONFIG = """
exports:
  - {path: /export, name: share, root_squash: false, ca: true}
  - {path: /plain, name: plain, root_squash: false}
"""
EXCLUSIVE = c.SMB2_LOCKFLAG_EXCLUSIVE_LOCK | c.SMB2_LOCKFLAG_FAIL_IMMEDIATELY
RW = c.FILE_SHARE_READ | c.FILE_SHARE_WRITE
ALL = RW | c.FILE_SHARE_DELETE


def dh2q_persistent(guid: bytes, timeout_ms: int = 60_000) -> tuple[bytes, bytes]:
    return (b"DH2Q", struct.pack("<II8s16s", timeout_ms, SMB2_DHANDLE_FLAG_PERSISTENT, b"", guid))


def lease_v2(key: bytes, state: int) -> tuple[bytes, bytes]:
    return (b"RqLs", struct.pack("<16sIIQ16sHH", key, state, 0, 0, b"\x00" * 16, 0, 0))


def index_of(wire: Wire) -> list[int]:
    """The persistent ids the listed gateways' own lists name."""
    vfs = wire.mvfs.vfs
    raw = wire.fired(vfs.get_state("smb.persistent.gateways"))
    pids: set[int] = set()
    for inst in json.loads(raw) if raw else []:
        mine = wire.fired(vfs.get_state(f"smb.persistent.index.{inst}"))
        pids.update(json.loads(mine) if mine else [])
    return sorted(pids)


def another_gateway(wire: Wire) -> SMBFactory:
    """A second gateway (or a restarted one) on the same store as C{wire}'s."""
    vfs = wire.mvfs.vfs
    return SMBFactory(
        wire.mvfs.config,
        lambda: defer.succeed(vfs),
        wire.clock,
        domain_sid=SID.parse("S-1-5-21-1-2-3"),
        computer="GW",
    )


def restart(wire: Wire) -> None:
    """
    A gateway killed with -9 and started again: the same store, a new
    server, empty lock and lease tables, nothing written at the kill.
    """
    vfs = wire.mvfs.vfs
    vfs.locks = wire.locks = LockTable(wire.clock)
    vfs.leases = LeaseManager(wire.clock)
    wire.factory = another_gateway(wire)


class OfferTests(SynchronousTestCase):
    def test_negotiate_offers_persistent_handles_with_a_ca_share(self) -> None:
        """SMB 3.x NEGOTIATE says PERSISTENT_HANDLES when a share is CA; 2.1 and no CA share do not."""
        caps = Wire(CA_CONFIG).connect().negotiate().u32(24)
        self.assertTrue(caps & c.SMB2_GLOBAL_CAP_PERSISTENT_HANDLES)
        caps = Wire(CA_CONFIG).connect().negotiate((c.SMB_2_1,)).u32(24)
        self.assertFalse(caps & c.SMB2_GLOBAL_CAP_PERSISTENT_HANDLES)
        caps = Wire().connect().negotiate().u32(24)
        self.assertFalse(caps & c.SMB2_GLOBAL_CAP_PERSISTENT_HANDLES)

    def test_tree_connect_says_continuously_available(self) -> None:
        """MS-SMB2 3.3.5.7: SMB2_SHARE_CAP_CONTINUOUS_AVAILABILITY on the CA share only."""
        conn = Wire(CA_CONFIG).connect()
        conn.negotiate()
        conn.login("alice")
        ca = conn.tree_connect("share")
        self.assertEqual(ca.status, 0)
        self.assertTrue(ca.u32(8) & c.SMB2_SHARE_CAP_CONTINUOUS_AVAILABILITY)
        plain = conn.tree_connect("plain")
        self.assertFalse(plain.u32(8) & c.SMB2_SHARE_CAP_CONTINUOUS_AVAILABILITY)

    def test_parse_persistent_flag(self) -> None:
        ask = parse_durable({b"DH2Q": dh2q_persistent(b"g" * 16)[1]}, False)
        self.assertTrue(ask.persistent)
        self.assertEqual(ask.timeout, 60.0)
        plain = struct.pack("<II8s16s", 0, 0, b"", b"g" * 16)
        self.assertFalse(parse_durable({b"DH2Q": plain}, False).persistent)

    @given(
        st_.dictionaries(
            st_.sampled_from(
                [b"DHnQ", b"DHnC", b"DH2Q", b"DH2C", c.SMB2_CREATE_APP_INSTANCE_ID, b"RqLs"]
            ),
            st_.binary(max_size=64),
            max_size=3,
        ),
        st_.booleans(),
    )
    def test_parse_durable_fuzz(self, contexts: dict[bytes, bytes], replay: bool) -> None:
        """Any mix of durable contexts parses or is refused with the protocol's error."""
        try:
            ask = parse_durable(contexts, replay)
        except SMBError:
            return
        self.assertIn(ask.version, (0, 1, 2))
        if ask.persistent:
            self.assertEqual(ask.version, 2)


class GrantTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.wire = Wire(CA_CONFIG)
        self.a = self.wire.connect().setup()

    def stored(self, pid: int) -> dict[str, Any] | None:
        raw = self.wire.fired(self.wire.mvfs.vfs.get_state(f"smb.durable.{pid:016x}"))
        return json.loads(raw) if raw else None

    def index(self) -> list[int]:
        return index_of(self.wire)

    def test_granted_without_oplock_or_lease(self) -> None:
        """A persistent DH2Q on the CA share gets persistence with no oplock; on another share, nothing."""
        r = self.a.create("f", contexts=[dh2q_persistent(uuid.uuid4().bytes)])
        self.assertEqual(r.status, 0)
        self.assertEqual(r.body[2], 0)
        timeout, flags = struct.unpack("<II", contexts_of(r)[b"DH2Q"])
        self.assertEqual((timeout, flags), (60_000, SMB2_DHANDLE_FLAG_PERSISTENT))
        plain = self.wire.connect().setup(user="root", share="plain")
        r = plain.create("f", contexts=[dh2q_persistent(uuid.uuid4().bytes)])
        self.assertEqual(r.status, 0)
        self.assertNotIn(b"DH2Q", contexts_of(r))

    def test_durable_not_persistent_on_a_plain_share(self) -> None:
        """On a share that is not CA, the flag is ignored: a durable handle with a batch oplock."""
        plain = self.wire.connect().setup(user="root", share="plain")
        r = plain.create(
            "f", oplock=c.SMB2_OPLOCK_LEVEL_BATCH, contexts=[dh2q_persistent(uuid.uuid4().bytes)]
        )
        self.assertEqual(struct.unpack("<II", contexts_of(r)[b"DH2Q"])[1], 0)
        self.assertEqual(self.index(), [])

    def test_state_written_as_it_changes(self) -> None:
        """The record is in the store from the CREATE on, with each lock taken, and gone at CLOSE."""
        r = self.a.create("f", share=RW, contexts=[dh2q_persistent(uuid.uuid4().bytes)])
        fid = r.file_id()
        rec = self.stored(fid[0])
        assert rec is not None
        self.assertTrue(rec["persistent"])
        self.assertEqual((rec["locks"], rec["share"], rec["user"]), ([], RW, "alice"))
        self.assertEqual(self.index(), [fid[0]])
        self.assertEqual(self.a.lock(fid, [(10, 5, EXCLUSIVE)]).status, 0)
        self.assertEqual(self.stored(fid[0])["locks"], [[10, 5, True]])  # type: ignore[index]
        self.assertEqual(self.a.lock(fid, [(10, 5, c.SMB2_LOCKFLAG_UNLOCK)]).status, 0)
        self.assertEqual(self.stored(fid[0])["locks"], [])  # type: ignore[index]
        self.assertEqual(self.a.close(fid).status, 0)
        self.assertIsNone(self.stored(fid[0]))
        self.assertEqual(self.index(), [])

    def test_kept_when_the_connection_drops_whatever_it_caches(self) -> None:
        """Without any oplock or lease the open survives a cut and is reclaimed."""
        guid = uuid.uuid4().bytes
        fid = self.a.create("f", share=0, contexts=[dh2q_persistent(guid)]).file_id()
        drop(self.a)
        other = self.wire.connect().setup()
        self.assertEqual(other.create("f").status, st.STATUS_SHARING_VIOLATION)
        b = self.wire.connect().setup()
        r = b.create("f", contexts=[dh2c(fid, guid)])
        self.assertEqual(r.status, 0)
        self.assertEqual(r.file_id()[0], fid[0])

    def test_break_of_a_disconnected_persistent_lease_lowers_it(self) -> None:
        """
        Another client's write open breaks a disconnected persistent open's
        write caching without closing it (a durable one would be closed);
        the reconnect gets the lowered lease.
        """
        guid, key = uuid.uuid4().bytes, b"K" * 16
        r = self.a.create(
            "f",
            share=RW,
            oplock=c.SMB2_OPLOCK_LEVEL_LEASE,
            contexts=[lease_v2(key, 7), dh2q_persistent(guid)],
        )
        fid = r.file_id()
        drop(self.a)
        other = self.wire.connect().setup()
        o = other.create("f", access=c.GENERIC_READ | c.GENERIC_WRITE, share=ALL)
        self.assertEqual(o.status, 0)
        other.close(o.file_id())
        b = self.wire.connect().setup()
        r = b.create(
            "f", oplock=c.SMB2_OPLOCK_LEVEL_LEASE, contexts=[dh2c(fid, guid), lease_v2(key, 7)]
        )
        self.assertEqual(r.status, 0, hex(r.status))
        state = struct.unpack_from("<I", contexts_of(r)[b"RqLs"], 16)[0]
        # Wire bits: R 1, H 2, W 4. Read and handle caching stay; write caching went.
        self.assertEqual(state, 1 | 2)


class RestartTests(SynchronousTestCase):
    """A gateway killed without any goodbye, and another started on the same store."""

    def setUp(self) -> None:
        self.wire = Wire(CA_CONFIG)
        self.a = self.wire.connect().setup()
        self.guid = uuid.uuid4().bytes

    def open_and_lock(self, share: int = RW) -> tuple[int, int]:
        r = self.a.create("f", share=share, contexts=[dh2q_persistent(self.guid)])
        self.assertEqual(r.status, 0)
        fid = r.file_id()
        self.assertEqual(self.a.write(fid, 0, b"persisted").status, 0)
        self.assertEqual(self.a.lock(fid, [(0, 4, EXCLUSIVE)]).status, 0)
        return fid

    def killed_and_restarted(self) -> int:
        # No drop(): a kill -9 sends nothing and runs no disconnect.
        restart(self.wire)
        return int(
            self.wire.fired(defer.Deferred.fromCoroutine(self.wire.factory.durability.recover()))
        )

    def reconnect(self, fid: tuple[int, int]) -> tuple[Conn, Any]:
        b = self.wire.connect().setup()
        return b, b.create("f", contexts=[dh2c(fid, self.guid)])

    def test_others_kept_out_until_reconnect(self) -> None:
        """
        The restarted gateway holds the share mode and the lock: another
        client's open is refused (share mode), or with a shared open its
        conflicting lock is; the reconnect gets the open, the lock, the data.
        """
        fid = self.open_and_lock()
        self.assertEqual(self.killed_and_restarted(), 1)
        other = self.wire.connect().setup()
        self.assertEqual(
            other.create("f", access=c.GENERIC_WRITE, share=0).status, st.STATUS_SHARING_VIOLATION
        )
        ofid = other.create("f", access=c.GENERIC_READ | c.GENERIC_WRITE, share=ALL).file_id()
        self.assertEqual(other.lock(ofid, [(0, 4, EXCLUSIVE)]).status, st.STATUS_LOCK_NOT_GRANTED)
        other.close(ofid)
        b, r = self.reconnect(fid)
        self.assertEqual(r.status, 0)
        new = r.file_id()
        self.assertEqual(new[0], fid[0])
        self.assertEqual(b.read_data(b.read(new, 0, 9)), b"persisted")
        # The lock is the reconnected open's: it unlocks it, and then others may lock.
        self.assertEqual(b.lock(new, [(0, 4, c.SMB2_LOCKFLAG_UNLOCK)]).status, 0)
        ofid = other.create("f", access=c.GENERIC_READ | c.GENERIC_WRITE, share=ALL).file_id()
        self.assertEqual(other.lock(ofid, [(0, 4, EXCLUSIVE)]).status, 0)

    def test_embedded_start_takes_back_at_once(self) -> None:
        """With backend: embedded the service start takes every record back at once (no beats)."""
        fid = self.open_and_lock(share=0)
        restart(self.wire)
        durability = self.wire.factory.durability
        self.assertTrue(durability.single)
        durability.start()
        self.assertIn(fid[0], durability.by_id)
        self.assertIsNone(durability._beating)
        other = self.wire.connect().setup()
        self.assertEqual(other.create("f").status, st.STATUS_SHARING_VIOLATION)

    def test_deny_all_share_mode_kept(self) -> None:
        fid = self.open_and_lock(share=0)
        self.killed_and_restarted()
        other = self.wire.connect().setup()
        self.assertEqual(
            other.create("f", access=c.GENERIC_READ).status, st.STATUS_SHARING_VIOLATION
        )
        self.assertEqual(self.reconnect(fid)[1].status, 0)

    def test_released_after_the_timeout(self) -> None:
        """Nobody reconnects: after the timeout the open, its lock and its record go."""
        fid = self.open_and_lock(share=0)
        self.killed_and_restarted()
        self.wire.clock.advance(59)
        other = self.wire.connect().setup()
        self.assertEqual(other.create("f").status, st.STATUS_SHARING_VIOLATION)
        self.wire.clock.advance(2)
        o = other.create("f", share=RW)
        self.assertEqual(o.status, 0)
        self.assertEqual(other.lock(o.file_id(), [(0, 4, EXCLUSIVE)]).status, 0)
        self.assertEqual(self.reconnect(fid)[1].status, st.STATUS_OBJECT_NAME_NOT_FOUND)
        self.assertEqual(index_of(self.wire), [])

    def test_wrong_create_guid_or_user_refused(self) -> None:
        fid = self.open_and_lock()
        self.killed_and_restarted()
        b = self.wire.connect().setup()
        self.assertEqual(
            b.create("f", contexts=[dh2c(fid, uuid.uuid4().bytes)]).status,
            st.STATUS_OBJECT_NAME_NOT_FOUND,
        )
        bob = self.wire.connect().setup(user="bob")
        self.assertEqual(
            bob.create("f", contexts=[dh2c(fid, self.guid)]).status, st.STATUS_ACCESS_DENIED
        )
        self.assertEqual(self.reconnect(fid)[1].status, 0)

    def test_reconnect_waits_while_the_old_reservation_lingers(self) -> None:
        """
        The killed gateway's reservation is still held (the meta server lets
        it go after linger_secs): the start retries each second, and a
        reconnect meanwhile waits (STATUS_PENDING) and then succeeds.
        """
        fid = self.open_and_lock(share=0)
        restart(self.wire)
        ghost = LockOwner("smb", "killed-gateway", b"x")
        vfs = self.wire.mvfs.vfs
        ino = self.wire.fired(
            vfs.lookup(self.wire.mvfs.caller(0, 0), self.wire.mvfs.root(), b"f")
        ).ino
        self.wire.locks.open_share(ino, ghost, {"read", "write"}, {"read", "write", "delete"})
        self.wire.fired(defer.Deferred.fromCoroutine(self.wire.factory.durability.recover()))
        self.assertIn(fid[0], self.wire.factory.durability.retaking)
        b = self.wire.connect().setup()
        b.send(
            [
                b.build(
                    b.header(c.Command.CREATE), b.create_body("f", contexts=[dh2c(fid, self.guid)])
                )
            ]
        )
        (interim,) = b.replies()
        self.assertEqual(interim.status, st.STATUS_PENDING)
        self.wire.locks.release_owner(ghost)
        self.wire.clock.advance(1)
        (final,) = b.replies()
        self.assertEqual(final.status, 0, hex(final.status))
        self.assertEqual(final.file_id()[0], fid[0])

    def test_gives_up_when_the_file_stays_busy(self) -> None:
        fid = self.open_and_lock(share=0)
        restart(self.wire)
        ghost = LockOwner("smb", "someone-else", b"x")
        vfs = self.wire.mvfs.vfs
        ino = self.wire.fired(
            vfs.lookup(self.wire.mvfs.caller(0, 0), self.wire.mvfs.root(), b"f")
        ).ino
        self.wire.locks.open_share(ino, ghost, {"read", "write"}, {"read", "write", "delete"})
        self.wire.fired(defer.Deferred.fromCoroutine(self.wire.factory.durability.recover()))
        self.wire.clock.pump([1.0] * 61)
        self.assertNotIn(fid[0], self.wire.factory.durability.retaking)
        self.assertEqual(self.reconnect(fid)[1].status, st.STATUS_OBJECT_NAME_NOT_FOUND)


class TakeoverTests(SynchronousTestCase):
    """
    Two gateways on one shared store and lock table (as on one meta server):
    A keeps a persistent open and dies; B, running all along, finds A's beat
    stopped and takes the open over once A's reservations are let go.
    """

    def setUp(self) -> None:
        self.wire = Wire(CA_CONFIG)
        self.gw_a = self.wire.factory
        self.gw_b = another_gateway(self.wire)
        for gw in (self.gw_a, self.gw_b):
            gw.durability.single = False  # as with backend: remote
            gw.durability.start()
        self.addCleanup(self.gw_b.durability.stop)
        self.guid = uuid.uuid4().bytes
        a = self.wire.connect().setup()
        r = a.create("f", share=0, contexts=[dh2q_persistent(self.guid)])
        self.fid = r.file_id()
        self.assertEqual(a.write(self.fid, 0, b"kept").status, 0)
        self.assertEqual(a.lock(self.fid, [(0, 4, EXCLUSIVE)]).status, 0)
        (self.op,) = [o for o in self.gw_a.durability.by_id.values()]

    def through_b(self) -> Conn:
        self.wire.factory = self.gw_b
        return self.wire.connect().setup()

    def test_a_living_keeps_its_opens(self) -> None:
        self.wire.clock.pump([1.0] * 30)
        self.assertNotIn(self.fid[0], self.gw_b.durability.by_id)
        self.assertNotIn(self.fid[0], self.gw_b.durability.retaking)
        self.assertEqual(index_of(self.wire), [self.fid[0]])
        self.gw_a.durability.stop()

    def test_b_takes_over_when_a_dies(self) -> None:
        loop = self.gw_a.durability._beating
        assert loop is not None
        loop.stop()  # kill -9: no more beats, the beat left behind, nothing released
        self.wire.clock.pump([1.0] * 8)
        # B found A dead and knocks; A's reservation still lingers.
        self.assertIn(self.fid[0], self.gw_b.durability.retaking)
        other = self.through_b()
        self.assertEqual(other.create("f").status, st.STATUS_SHARING_VIOLATION)
        # The meta server lets A's reservations and locks go (linger_secs).
        assert self.op.lock_owner is not None
        self.wire.locks.release_owner(self.op.lock_owner)
        # Taken at the release itself, not at the next second's retry: no
        # other client can get in between.
        self.assertIn(self.fid[0], self.gw_b.durability.by_id)
        self.assertEqual(other.create("f").status, st.STATUS_SHARING_VIOLATION)
        b_list = f"smb.persistent.index.{self.gw_b.durability.instance}"
        raw = self.wire.fired(self.wire.mvfs.vfs.get_state(b_list))
        self.assertEqual(json.loads(raw), [self.fid[0]])
        # A's list and name are gone, all of it taken.
        a_list = f"smb.persistent.index.{self.gw_a.durability.instance}"
        self.assertIsNone(self.wire.fired(self.wire.mvfs.vfs.get_state(a_list)))
        raw = self.wire.fired(self.wire.mvfs.vfs.get_state("smb.persistent.gateways"))
        self.assertNotIn(self.gw_a.durability.instance, json.loads(raw))
        b = self.through_b()
        r = b.create("f", contexts=[dh2c(self.fid, self.guid)])
        self.assertEqual(r.status, 0, hex(r.status))
        new = r.file_id()
        self.assertEqual(b.read_data(b.read(new, 0, 4)), b"kept")
        self.assertEqual(b.lock(new, [(0, 4, c.SMB2_LOCKFLAG_UNLOCK)]).status, 0)

    def test_second_taker_giving_up_leaves_the_record(self) -> None:
        """
        B and C both find A dead; one takes the open and its client
        reconnects there; the other's retake stays busy until its deadline
        and gives up, leaving the record the winner holds in the store (the
        winner's own death later must not lose the handle).
        """
        vfs = self.wire.mvfs.vfs
        gw_c = another_gateway(self.wire)
        gw_c.durability.single = False
        gw_c.durability.start()
        self.addCleanup(gw_c.durability.stop)
        pid = self.fid[0]
        loop = self.gw_a.durability._beating
        assert loop is not None
        loop.stop()
        self.wire.clock.pump([1.0] * 8)
        self.assertIn(pid, self.gw_b.durability.retaking)
        self.assertIn(pid, gw_c.durability.retaking)
        self.wire.locks.release_owner(self.op.lock_owner)  # type: ignore[arg-type]
        if pid in self.gw_b.durability.by_id:
            winner, loser = self.gw_b, gw_c
        else:
            winner, loser = gw_c, self.gw_b
        self.assertIn(pid, winner.durability.by_id)
        self.wire.factory = winner
        b = self.wire.connect().setup()
        self.assertEqual(b.create("f", contexts=[dh2c(self.fid, self.guid)]).status, 0)
        self.wire.clock.pump([1.0] * 70)
        self.assertNotIn(pid, loser.durability.retaking)
        self.assertNotIn(pid, loser.durability.by_id)
        self.assertIsNotNone(self.wire.fired(vfs.get_state(f"smb.durable.{pid:016x}")))
        self.assertIn(pid, index_of(self.wire))

    def test_not_taken_for_dead_before_its_first_beat(self) -> None:
        """
        A gateway whose first beat has not landed when it lists its first
        persistent record: a taker looking in between finds a beat (written
        before the record is listed) and leaves the open alone.
        """
        gw_d = another_gateway(self.wire)
        gw_d.durability.single = False
        # Started, its first tick's write still on its way.
        gw_d.durability._beating = task.LoopingCall(lambda: None)
        self.wire.factory = gw_d
        d = self.wire.connect().setup()
        r = d.create("g", share=0, contexts=[dh2q_persistent(uuid.uuid4().bytes)])
        self.assertEqual(r.status, 0, hex(r.status))
        pid = r.file_id()[0]
        self.assertIn(pid, index_of(self.wire))
        self.wire.fired(defer.Deferred.fromCoroutine(self.gw_b.durability.recover()))
        self.assertNotIn(pid, self.gw_b.durability.retaking)
        self.gw_a.durability.stop()

    def test_reconnect_to_b_waits_for_the_takeover(self) -> None:
        """A DH2C through B before B found A dead waits (STATUS_PENDING), then succeeds."""
        loop = self.gw_a.durability._beating
        assert loop is not None
        loop.stop()
        self.wire.locks.release_owner(self.op.lock_owner)  # type: ignore[arg-type]
        b = self.through_b()
        body = b.create_body("f", contexts=[dh2c(self.fid, self.guid)])
        b.send([b.build(b.header(c.Command.CREATE), body)])
        (interim,) = b.replies()
        self.assertEqual(interim.status, st.STATUS_PENDING)
        self.wire.clock.pump([1.0] * 8)
        (final,) = b.replies()
        self.assertEqual(final.status, 0, hex(final.status))

    def test_a_stopping_cleanly_is_taken_over_at_once(self) -> None:
        """A stopped gateway removes its beat: B takes its opens at its next beat."""
        self.wire.locks.release_owner(self.op.lock_owner)  # type: ignore[arg-type]
        self.wire.fired(self.gw_a.durability.stop())
        self.wire.clock.advance(2)
        self.assertIn(self.fid[0], self.gw_b.durability.by_id)

    def test_stalled_gateway_keeps_its_open(self) -> None:
        """A's beat stalls past DEAD_AFTER, then resumes: B stops knocking and leaves the record."""
        loop = self.gw_a.durability._beating
        assert loop is not None
        loop.stop()
        self.wire.clock.pump([1.0] * 8)
        self.assertIn(self.fid[0], self.gw_b.durability.retaking)
        loop.start(2.0, now=True)
        self.wire.clock.pump([1.0] * 2)
        self.assertNotIn(self.fid[0], self.gw_b.durability.retaking)
        self.assertNotIn(self.fid[0], self.gw_b.durability.by_id)
        a_list = f"smb.persistent.index.{self.gw_a.durability.instance}"
        raw = self.wire.fired(self.wire.mvfs.vfs.get_state(a_list))
        self.assertEqual(json.loads(raw), [self.fid[0]])
        self.assertIs(self.gw_a.durability.by_id[self.fid[0]], self.op)
        self.gw_a.durability.stop()


class BadRecordTests(SynchronousTestCase):
    def test_unreadable_record_dropped(self) -> None:
        """A record that cannot be made again is dropped with its index entry, once."""
        wire = Wire(CA_CONFIG)
        vfs = wire.mvfs.vfs
        wire.fired(vfs.set_state("smb.persistent.index", b'{"77": "gone"}'))
        wire.fired(vfs.set_state(f"smb.durable.{77:016x}", b'{"persistent": true}'))
        wire.fired(defer.Deferred.fromCoroutine(wire.factory.durability.recover()))
        self.assertEqual(index_of(wire), [])
        self.assertIsNone(wire.fired(vfs.get_state(f"smb.durable.{77:016x}")))

    def test_reconnect_not_stuck_when_the_first_beat_fails(self) -> None:
        """The store refuses the beat: a reconnect waiting for the first look is answered."""
        wire = Wire(CA_CONFIG)
        vfs = wire.mvfs.vfs
        real = vfs.set_state

        def set_state(key: str, value: bytes | None) -> defer.Deferred[None]:
            if key.startswith("smb.gateway."):
                return defer.fail(RuntimeError("store down"))
            return real(key, value)  # type: ignore[no-any-return]

        vfs.set_state = set_state  # type: ignore[method-assign]
        durability = wire.factory.durability
        durability.single = False
        durability.start()
        # Last: what stop()'s removal of the beat logs (the store still refuses).
        self.addCleanup(self.flushLoggedErrors, RuntimeError)
        self.addCleanup(durability.stop)
        b = wire.connect().setup()
        r = b.create("f", contexts=[dh2c((5, 5), uuid.uuid4().bytes)])
        self.assertEqual(r.status, st.STATUS_OBJECT_NAME_NOT_FOUND)
        self.assertTrue(self.flushLoggedErrors(RuntimeError))


class _InterleavedStore:
    """
    A state store whose every read and write answers only when the test says
    (L{run}: in the order asked), as two gateways' requests to one meta server
    interleave.
    """

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.pending: list[tuple[defer.Deferred[Any], Any]] = []

    def get_state(self, key: str) -> defer.Deferred[bytes | None]:
        d: defer.Deferred[bytes | None] = defer.Deferred()
        self.pending.append((d, lambda: self.data.get(key)))
        return d

    def set_state(self, key: str, value: bytes | None) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()

        def put() -> None:
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value

        self.pending.append((d, put))
        return d

    def run(self) -> None:
        """Answer every request, oldest first, and those the answers cause, until none is left."""
        while self.pending:
            step, self.pending = self.pending, []
            for d, do in step:
                d.callback(do())


class _Op:
    """An open as far as persisting it goes (its record's fields)."""

    def __init__(self, pid: int) -> None:
        self.file_id = (pid, pid)
        self.closed = False
        self.persistent = True


class ConcurrentGrantTests(SynchronousTestCase):
    """Two gateways on one store granting persistent opens at one instant lose no entry."""

    def gateway(self, store: _InterleavedStore) -> Durability:
        clock = task.Clock()
        factory = SimpleNamespace(
            vfs=store,
            reactor=clock,
            config=SimpleNamespace(backend=SimpleNamespace(type="remote")),
            get_vfs=lambda: defer.succeed(store),
        )
        d = Durability(factory)
        d._record = lambda op: {"persistent": True, "timeout": 60}  # type: ignore[method-assign]
        return d

    def test_interleaved_grants_both_listed(self) -> None:
        store = _InterleavedStore()
        a, b, taker = (self.gateway(store) for _ in range(3))
        # Both grants' reads of the store answered before either's write (the
        # previous format's one shared index lost one of the two entries here).
        done = [a.persist(_Op(1)), b.persist(_Op(2))]
        store.run()
        for d in done:
            self.successResultOf(d)
        # A beat of each (a name lost to the other's write of the list of
        # gateways is written back at its next beat).
        for gw in (a, b):
            d = defer.Deferred.fromCoroutine(gw._read_pindex())
            store.run()
            self.successResultOf(d)
        store.run()
        d = defer.Deferred.fromCoroutine(taker._read_pindex())
        store.run()
        self.assertEqual(self.successResultOf(d), {1: a.instance, 2: b.instance})

    def test_previous_format_read(self) -> None:
        """Records the previous format's one shared index lists are still found."""
        store = _InterleavedStore()
        store.data["smb.persistent.index"] = b'{"7": "old"}'
        taker = self.gateway(store)
        d = defer.Deferred.fromCoroutine(taker._read_pindex())
        store.run()
        self.assertEqual(self.successResultOf(d), {7: "old"})

    def test_durable_indexes_of_two_gateways(self) -> None:
        """
        Two gateways on one store keep durable records at one instant: a
        gateway started after finds both (the previous format's one index,
        written whole by each, kept only the last writer's).
        """
        store = _InterleavedStore()
        store.data["smb.durable.index"] = b"[9]"
        a, b = self.gateway(store), self.gateway(store)
        a._index.add(1)
        b._index.add(2)
        a._write_index()
        b._write_index()
        store.run()
        b._index.add(3)
        b._write_index()  # b's name is back if a's write of the list dropped it
        store.run()
        later = self.gateway(store)
        d = defer.Deferred.fromCoroutine(later.load_index())
        store.run()
        self.successResultOf(d)
        self.assertEqual(later._index, {1, 2, 3, 9})
        # Past every timeout, what nobody changed is swept, lists and names.
        a._index.discard(1)
        a._write_index()
        store.run()
        later.factory.reactor.advance(V1_TIMEOUT)
        store.run()
        self.assertEqual(later._index, set())
        self.assertNotIn("smb.durable.index", store.data)
        self.assertNotIn(f"smb.durable.index.{b.instance}", store.data)
        self.assertEqual(json.loads(store.data["smb.durable.gateways"]), [a.instance])

    def test_names_of_gone_gateways_forgotten(self) -> None:
        """A gateway that kept nothing and stopped is forgotten at the next look."""
        store = _InterleavedStore()
        a, taker = self.gateway(store), self.gateway(store)
        a.persist(_Op(1))
        store.run()
        a._unpersist(1)
        store.run()
        self.assertEqual(json.loads(store.data["smb.persistent.gateways"]), [a.instance])
        self.assertNotIn(f"smb.persistent.index.{a.instance}", store.data)
        d = defer.Deferred.fromCoroutine(taker.recover())
        store.run()
        self.assertEqual(self.successResultOf(d), 0)
        store.run()
        self.assertNotIn("smb.persistent.gateways", store.data)
