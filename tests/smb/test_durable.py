"""
Durable handles (claudefs_gateway/smb/durable.py): granted with a batch
oplock or a handle lease, kept when the connection drops or a new session
takes over, reclaimed by a reconnect with their locks and lease, closed when
their time runs out or someone else's open needs them gone, and kept in the
state store across a restart.
"""

from __future__ import annotations

import struct
import uuid

import spnego
from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.smb import constants as c
from claudefs_gateway.smb import ntstatus as st
from claudefs_gateway.smb.security import SID
from claudefs_gateway.smb.server import SMBFactory
from claudefs_gateway.vfs import LockTable
from claudefs_gateway.vfs.leases import LeaseManager
from tests.smb.client import Conn, Reply, Wire

BATCH = c.SMB2_OPLOCK_LEVEL_BATCH
DHNQ = (b"DHnQ", b"\x00" * 16)


def dh2q(guid: bytes, timeout_ms: int = 0) -> tuple[bytes, bytes]:
    return (b"DH2Q", struct.pack("<II8s16s", timeout_ms, 0, b"", guid))


def dhnc(fid: tuple[int, int]) -> tuple[bytes, bytes]:
    return (b"DHnC", struct.pack("<QQ", *fid))


def dh2c(fid: tuple[int, int], guid: bytes) -> tuple[bytes, bytes]:
    return (b"DH2C", struct.pack("<QQ16sI", *fid, guid, 0))


def contexts_of(r: Reply) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    off, length = r.u32(80), r.u32(84)
    pos = off
    while length:
        nxt, name_off, name_len = struct.unpack_from("<IHH", r.raw, pos)
        data_off, data_len = struct.unpack_from("<HI", r.raw, pos + 10)
        name = r.raw[pos + name_off : pos + name_off + name_len]
        out[name] = r.raw[pos + data_off : pos + data_off + data_len]
        if not nxt:
            break
        pos += nxt
    return out


def wire_connect(wire: Wire) -> Conn:
    conn = wire.connect()
    conn.negotiate()
    return conn


def drop(conn: Conn) -> None:
    """The TCP connection is cut (no LOGOFF, no CLOSE)."""
    conn.proto.connectionLost(Failure(ConnectionError("cut")))


class DurableTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.wire = Wire()
        self.a = self.wire.connect().setup()

    def durable_open(self, name: str = "f", **kw: object) -> Reply:
        r = self.a.create(name, oplock=BATCH, contexts=[DHNQ], **kw)  # type: ignore[arg-type]
        self.assertEqual(r.status, 0)
        return r

    def test_granted_with_batch_only(self) -> None:
        """DHnQ is answered when the open gets a batch oplock, not otherwise."""
        r = self.durable_open()
        self.assertEqual(r.body[2], BATCH)
        self.assertEqual(contexts_of(r)[b"DHnQ"], b"\x00" * 8)
        r = self.a.create("g", contexts=[DHNQ])
        self.assertNotIn(b"DHnQ", contexts_of(r))

    def test_reconnect_after_cut(self) -> None:
        """
        After the connection is cut, a new connection reclaims the open with
        DHnC: same persistent id, the batch oplock and the byte-range lock kept.
        """
        fid = self.durable_open().file_id()
        self.assertEqual(self.a.write(fid, 0, b"hello").status, 0)
        self.assertEqual(self.a.lock(fid, [(0, 5, c.SMB2_LOCKFLAG_EXCLUSIVE_LOCK)]).status, 0)
        drop(self.a)
        b = self.wire.connect().setup()
        r = b.create("f", contexts=[dhnc(fid)])
        self.assertEqual(r.status, 0)
        self.assertEqual((r.body[2], r.u32(4)), (BATCH, c.FILE_OPENED))
        new = r.file_id()
        self.assertEqual(new[0], fid[0])
        self.assertEqual(b.read_data(b.read(new, 0, 5)), b"hello")
        # The lock came along: this open may unlock it; another one is refused.
        other = self.wire.connect().setup()
        o = other.create("f", access=c.FILE_READ_ATTRIBUTES)
        self.assertEqual(o.status, 0)
        self.assertEqual(b.lock(new, [(0, 5, c.SMB2_LOCKFLAG_UNLOCK)]).status, 0)

    def test_reconnect_refusals(self) -> None:
        """
        Reconnecting an open still connected, or an unknown one, is
        OBJECT_NAME_NOT_FOUND; another user's is ACCESS_DENIED.
        """
        fid = self.durable_open().file_id()
        self.assertEqual(
            self.a.create("f", contexts=[dhnc(fid)]).status, st.STATUS_OBJECT_NAME_NOT_FOUND
        )
        drop(self.a)
        bob = self.wire.connect().setup("bob")
        self.assertEqual(bob.create("f", contexts=[dhnc(fid)]).status, st.STATUS_ACCESS_DENIED)
        alice = self.wire.connect().setup()
        bogus = (fid[0] ^ 1, 0)
        self.assertEqual(
            alice.create("f", contexts=[dhnc(bogus)]).status, st.STATUS_OBJECT_NAME_NOT_FOUND
        )
        self.assertEqual(alice.create("f", contexts=[dhnc(fid)]).status, 0)

    def test_timeout(self) -> None:
        """A disconnected v1 durable open is closed after 16 minutes."""
        fid = self.durable_open().file_id()
        drop(self.a)
        self.wire.clock.advance(16 * 60 + 1)
        b = self.wire.connect().setup()
        self.assertEqual(
            b.create("f", contexts=[dhnc(fid)]).status, st.STATUS_OBJECT_NAME_NOT_FOUND
        )

    def test_conflicting_open_closes_disconnected(self) -> None:
        """Someone else's open that would break its oplock closes a disconnected durable open."""
        fid = self.durable_open(share=0).file_id()
        drop(self.a)
        b = self.wire.connect().setup("bob")
        self.assertEqual(b.create("f", access=c.GENERIC_READ).status, 0)
        alice = self.wire.connect().setup()
        self.assertEqual(
            alice.create("f", contexts=[dhnc(fid)]).status, st.STATUS_OBJECT_NAME_NOT_FOUND
        )

    def test_v2_create_guid(self) -> None:
        """
        DH2Q: the timeout is capped at 300 s (60 s when 0 is asked); a CreateGuid
        in use is DUPLICATE_OBJECTID; DH2C must name the same CreateGuid.
        """
        guid = uuid.uuid4().bytes
        r = self.a.create("f", oplock=BATCH, contexts=[dh2q(guid, 0xFFFFFFFF)])
        self.assertEqual(struct.unpack("<II", contexts_of(r)[b"DH2Q"]), (300_000, 0))
        fid = r.file_id()
        r = self.a.create("g", oplock=BATCH, contexts=[dh2q(uuid.uuid4().bytes, 0)])
        self.assertEqual(struct.unpack("<II", contexts_of(r)[b"DH2Q"]), (60_000, 0))
        self.assertEqual(
            self.a.create("h", oplock=BATCH, contexts=[dh2q(guid)]).status,
            st.STATUS_DUPLICATE_OBJECTID,
        )
        drop(self.a)
        b = self.wire.connect().setup()
        self.assertEqual(
            b.create("f", contexts=[dh2c(fid, uuid.uuid4().bytes)]).status,
            st.STATUS_OBJECT_NAME_NOT_FOUND,
        )
        self.assertEqual(b.create("f", contexts=[dh2c(fid, guid)]).status, 0)

    def test_context_combinations(self) -> None:
        """A v1 request beside a v2 reconnect (and the like) is INVALID_PARAMETER."""
        guid = uuid.uuid4().bytes
        r = self.a.create("f", contexts=[DHNQ, dh2c((1, 1), guid)])
        self.assertEqual(r.status, st.STATUS_INVALID_PARAMETER)
        r = self.a.create("f", contexts=[DHNQ, dh2q(guid)])
        self.assertEqual(r.status, st.STATUS_INVALID_PARAMETER)

    def test_previous_session_id(self) -> None:
        """
        A new session naming the old one as PreviousSessionId ends it (its
        requests then get USER_SESSION_DELETED) and keeps its durable opens.
        """
        fid = self.durable_open().file_id()
        old = self.a.session_id
        b = self.wire.connect()
        b.negotiate()

        ctx = spnego.client("alice", "Pass1", protocol="negotiate")
        token = ctx.step(None)
        while True:
            body = struct.pack("<HBBIIHHQ", 25, 0, 1, 0, 0, 88, len(token), old) + token
            b.send([b.build(b.header(c.Command.SESSION_SETUP), body, sign=False)])
            r = b.replies()[-1]
            b.session_id = r.header.session_id
            if r.status != st.STATUS_MORE_PROCESSING_REQUIRED:
                break
            off, n = r.u16(4), r.u16(6)
            token = ctx.step(r.raw[off : off + n])
        self.assertEqual(r.status, 0)
        q = self.a.query_info(fid, 1, 14)
        self.assertEqual(q.status, st.STATUS_USER_SESSION_DELETED)


class RestartTests(SynchronousTestCase):
    def test_reconnect_after_restart(self) -> None:
        """
        A durable open disconnected when the gateway stopped is honoured by a
        new server over the same store within its timeout (locks are not).
        """
        wire = Wire()
        a = wire.connect().setup()
        fid = a.create("f", oplock=BATCH, contexts=[DHNQ]).file_id()
        a.write(fid, 0, b"kept")
        drop(a)
        self.successResultOf(wire.factory.durability.flush())
        # A restarted gateway: the same store, a new server, empty lock and lease tables.
        vfs = wire.mvfs.vfs
        vfs.locks = wire.locks = LockTable(wire.clock)
        vfs.leases = LeaseManager(wire.clock)
        wire.factory = SMBFactory(
            wire.mvfs.config,
            lambda: defer.succeed(vfs),
            wire.clock,
            domain_sid=SID.parse("S-1-5-21-1-2-3"),
            computer="GW",
        )
        b = wire.connect().setup()
        r = b.create("f", contexts=[dhnc(fid)])
        self.assertEqual(r.status, 0)
        self.assertEqual(b.read_data(b.read(r.file_id(), 0, 4)), b"kept")


class ResilientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.wire = Wire()
        self.a = self.wire.connect().setup()

    def test_resilient_open_survives_a_cut(self) -> None:
        """
        FSCTL_LMR_REQUEST_RESILIENCY keeps an open without any oplock across a
        lost connection, for a v1 reconnect; a timeout over 5 minutes is refused.
        """
        fid = self.a.open("f")
        r = self.a.ioctl(fid, c.FSCTL_LMR_REQUEST_RESILIENCY, struct.pack("<II", 400_000, 0))
        self.assertEqual(r.status, st.STATUS_INVALID_PARAMETER)
        r = self.a.ioctl(fid, c.FSCTL_LMR_REQUEST_RESILIENCY, struct.pack("<II", 10_000, 0))
        self.assertEqual(r.status, 0)
        drop(self.a)
        b = self.wire.connect().setup()
        self.assertEqual(b.create("f", contexts=[dhnc(fid)]).status, 0)

    def test_lock_replay_detection(self) -> None:
        """
        On a resilient (or durable) open, a LOCK with the LockSequence of one
        that succeeded is a replay: answered with success, not done again.
        """
        fid = self.a.open("f")
        self.a.ioctl(fid, c.FSCTL_LMR_REQUEST_RESILIENCY, struct.pack("<II", 10_000, 0))
        flags = c.SMB2_LOCKFLAG_EXCLUSIVE_LOCK | c.SMB2_LOCKFLAG_FAIL_IMMEDIATELY

        def lock(seq: int, f: int = flags) -> int:
            body = struct.pack("<HHIQQQQII", 48, 1, seq, *fid, 100, 100, f, 0)
            return self.a.call(c.Command.LOCK, body).status

        self.assertEqual(lock(0x11), 0)
        self.assertEqual(lock(0x11), 0)  # the replay
        self.assertEqual(lock(0x22), st.STATUS_LOCK_NOT_GRANTED)
        self.assertEqual(lock(0x01), st.STATUS_LOCK_NOT_GRANTED)  # bucket 0: no detection
        self.assertEqual(lock(0x33, c.SMB2_LOCKFLAG_UNLOCK), 0)
