"""
SMB oplocks and leases (claudefs_gateway/smb/leasing.py) through the wire:
what a CREATE is granted, what it breaks and waits for, acknowledgements,
the recall time, and breaks caused by other protocols through the vfs.
"""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import given
from hypothesis import strategies as s
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.smb import constants as c
from claudefs_gateway.smb import ntstatus as st
from claudefs_gateway.smb.leasing import from_wire, is_oplock_stat_open, to_wire
from claudefs_gateway.smb.messages import LeaseBreakAck, LeaseRequest, OplockBreakAck
from claudefs_gateway.vfs.leases import H, R, W
from tests.smb.client import Conn, Reply, Wire

RWH = 0x7  # wire bits
RH = 0x3
R_ = 0x1
KEY1 = bytes(range(16))
KEY2 = bytes(range(16, 32))
BATCH = c.SMB2_OPLOCK_LEVEL_BATCH
LEVEL_II = c.SMB2_OPLOCK_LEVEL_II


def lease_ctx(key: bytes, state: int, v2: bool = False, parent: bytes | None = None) -> bytes:
    if not v2:
        return struct.pack("<16sIIQ", key, state, 0, 0)
    flags = 4 if parent else 0
    return struct.pack("<16sIIQ16sHH", key, state, flags, 0, parent or b"\x00" * 16, 0, 0)


def lease_open(conn: Conn, name: str, key: bytes, state: int, **kw: object) -> Reply:
    body = conn.create_body(
        name,
        contexts=[(b"RqLs", lease_ctx(key, state))],
        oplock=0xFF,
        **kw,  # type: ignore[arg-type]
    )
    return conn.call(c.Command.CREATE, body)


def lease_of(r: Reply) -> tuple[int, int, int]:
    """(state, flags, epoch) from the RqLs answer of a CREATE reply."""
    off, length = r.u32(80), r.u32(84)
    ctx = r.raw[off : off + length]
    name_off, name_len = struct.unpack_from("<HH", ctx, 4)
    data_off, data_len = struct.unpack_from("<HI", ctx, 10)
    assert ctx[name_off : name_off + name_len] == b"RqLs"
    data = ctx[data_off : data_off + data_len]
    state, flags = struct.unpack_from("<II", data, 16)
    epoch = struct.unpack_from("<H", data, 48)[0] if data_len == 52 else 0
    return state, flags, epoch


def send_create(conn: Conn, body: bytes) -> list[Reply]:
    """Send a CREATE that may go pending; return what came back at once."""
    conn.send([conn.build(conn.header(c.Command.CREATE), body)])
    return conn.replies()


def breaks(conn: Conn) -> list[Reply]:
    return [r for r in conn.replies() if r.header.message_id == 0xFFFFFFFFFFFFFFFF]


def ack_lease(conn: Conn, key: bytes, state: int) -> Reply:
    body = struct.pack("<HHI16sIQ", 36, 0, 0, key, state, 0)
    return conn.call(c.Command.OPLOCK_BREAK, body)


def ack_oplock(conn: Conn, fid: tuple[int, int], level: int) -> Reply:
    body = struct.pack("<HBBIQQ", 24, level, 0, 0, *fid)
    return conn.call(c.Command.OPLOCK_BREAK, body)


def two_clients(wire: Wire) -> tuple[Conn, Conn]:
    a = wire.connect()
    a.client_guid = b"A" * 16
    b = wire.connect()
    b.client_guid = b"B" * 16
    return a.setup(), b.setup()


class CodecTests(SynchronousTestCase):
    def test_wire_bits(self) -> None:
        """Wire lease states (R=1, H=2, W=4) map to and from the manager's bits."""
        self.assertEqual(from_wire(RWH), R | W | H)
        self.assertEqual(from_wire(RH), R | H)
        for bits in range(8):
            self.assertEqual(to_wire(from_wire(bits)), bits)

    def test_lease_request_sizes(self) -> None:
        """A lease context is 32 (v1) or 52 (v2) bytes; anything else is refused."""
        v1 = LeaseRequest.parse(lease_ctx(KEY1, RWH))
        self.assertEqual((v1.version, v1.key, v1.state), (1, KEY1, RWH))
        v2 = LeaseRequest.parse(lease_ctx(KEY1, RH, v2=True, parent=KEY2))
        self.assertEqual((v2.version, v2.parent), (2, KEY2))
        self.assertRaises(ProtocolError, LeaseRequest.parse, b"\x00" * 40)

    @given(s.binary(max_size=120))
    def test_garbage(self, data: bytes) -> None:
        """Garbage in break acknowledgements and lease contexts raises only ProtocolError."""
        framed = b"\xfeSMB" + b"\x00" * 60 + data
        for parse in (LeaseRequest.parse, OplockBreakAck.parse, LeaseBreakAck.parse):
            try:
                parse(data if parse is LeaseRequest.parse else framed)  # type: ignore[operator]
            except ProtocolError:
                pass

    def test_stat_open(self) -> None:
        """Opens for attributes only neither break nor get oplocks."""
        self.assertTrue(is_oplock_stat_open(c.FILE_READ_ATTRIBUTES | c.SYNCHRONIZE))
        self.assertFalse(is_oplock_stat_open(c.FILE_READ_DATA | c.FILE_READ_ATTRIBUTES))


class LeaseTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.wire = Wire()
        self.a, self.b = two_clients(self.wire)

    def test_grant_and_capability(self) -> None:
        """NEGOTIATE offers leasing from 2.1; a lone open gets the RWH it asks for."""
        r = lease_open(self.a, "f", KEY1, RWH)
        self.assertEqual((r.status, r.body[2]), (0, c.SMB2_OPLOCK_LEVEL_LEASE))
        self.assertEqual(lease_of(r)[:2], (RWH, 0))

    def test_open_of_unleased_file_waits_for_nothing(self) -> None:
        """
        An open of a file no one holds a lease or oplock on listens for no
        lease change (nothing can be broken); one of a leased file does, and
        the other client's lease is still broken.
        """
        leasing = self.wire.factory.leasing
        listened: list[int] = []
        real = leasing.wait_change

        def wait_change(ino: int) -> Any:
            listened.append(ino)
            return real(ino)

        leasing.wait_change = wait_change  # type: ignore[method-assign]
        self.a.close(self.a.open("f"))
        self.b.close(self.b.open("f"))
        r = lease_open(self.a, "f", KEY1, RWH)
        self.assertEqual(lease_of(r)[0], RWH)
        self.assertEqual(listened, [])
        self.assertEqual(
            [r.status for r in send_create(self.b, self.b.create_body("f"))], [st.STATUS_PENDING]
        )
        self.assertEqual(len(listened), 1)
        (brk,) = breaks(self.a)
        self.assertEqual(struct.unpack_from("<I16sII", brk.body, 4)[1:], (KEY1, RWH, RH))

    def test_conflicting_open_breaks_and_waits(self) -> None:
        """
        A second client's open breaks RWH to RH and goes pending until the
        holder acknowledges; then it completes with RH itself.
        """
        lease_open(self.a, "f", KEY1, RWH)
        body = self.b.create_body("f", contexts=[(b"RqLs", lease_ctx(KEY2, RWH))], oplock=0xFF)
        pending = send_create(self.b, body)
        self.assertEqual([r.status for r in pending], [st.STATUS_PENDING])
        (brk,) = breaks(self.a)
        self.assertEqual(brk.header.command, c.Command.OPLOCK_BREAK)
        flags, key, current, new = struct.unpack_from("<I16sII", brk.body, 4)
        self.assertEqual((flags, key, current, new), (1, KEY1, RWH, RH))
        self.assertEqual(ack_lease(self.a, KEY1, RH).status, 0)
        (done,) = self.b.replies()
        self.assertEqual(done.status, 0)
        self.assertEqual(lease_of(done)[0], RH)

    def test_ack_errors(self) -> None:
        """
        Acknowledging with no break outstanding is UNSUCCESSFUL, keeping more
        than asked REQUEST_NOT_ACCEPTED, an unknown key OBJECT_NAME_NOT_FOUND.
        """
        lease_open(self.a, "f", KEY1, RWH)
        self.assertEqual(ack_lease(self.a, KEY1, RH).status, st.STATUS_UNSUCCESSFUL)
        self.assertEqual(ack_lease(self.a, KEY2, 0).status, st.STATUS_OBJECT_NAME_NOT_FOUND)
        send_create(
            self.b,
            self.b.create_body("f", contexts=[(b"RqLs", lease_ctx(KEY2, RH))], oplock=0xFF),
        )
        self.assertEqual(len(breaks(self.a)), 1)
        self.assertEqual(ack_lease(self.a, KEY1, RWH).status, st.STATUS_REQUEST_NOT_ACCEPTED)
        self.assertEqual(ack_lease(self.a, KEY1, RH).status, 0)

    def test_recall_time(self) -> None:
        """A holder that never acknowledges loses its lease after the recall time."""
        lease_open(self.a, "f", KEY1, RWH)
        body = self.b.create_body("f", contexts=[(b"RqLs", lease_ctx(KEY2, RWH))], oplock=0xFF)
        send_create(self.b, body)
        self.assertEqual(len(breaks(self.a)), 1)
        self.wire.clock.advance(34)
        self.assertEqual(self.b.replies(), [])
        self.wire.clock.advance(2)
        (done,) = self.b.replies()
        self.assertEqual(done.status, 0)
        # The holder's lease is down to none; it learns so at its next open.
        r = lease_open(self.a, "f", KEY1, 0)
        self.assertEqual(lease_of(r)[0], 0)

    def test_key_names_one_file(self) -> None:
        """A lease key in use on one file is refused for another (MS-SMB2 3.3.5.9.8)."""
        lease_open(self.a, "f", KEY1, RWH)
        self.assertEqual(lease_open(self.a, "g", KEY1, RWH).status, st.STATUS_INVALID_PARAMETER)
        # Another client may use the same key bytes: its leases are its own.
        self.assertEqual(lease_open(self.b, "g", KEY1, RWH).status, 0)

    def test_write_by_other_client_breaks_read_lease(self) -> None:
        """Another client's write breaks an R lease to none without an acknowledgement."""
        lease_open(self.a, "f", KEY1, R_)
        fid = self.b.open("f")
        self.assertEqual(self.b.write(fid, 0, b"x").status, 0)
        (brk,) = breaks(self.a)
        flags, _key, current, new = struct.unpack_from("<I16sII", brk.body, 4)
        self.assertEqual((flags, current, new), (0, R_, 0))

    def test_other_protocol_write_breaks_and_waits(self) -> None:
        """
        A write from another protocol (through the vfs, as NFS and S3 do)
        breaks an RWH lease and waits for the acknowledgement.
        """
        lease_open(self.a, "f", KEY1, RWH)
        vfs = self.wire.mvfs.vfs
        caller = self.wire.mvfs.caller(1000, 1000, protocol="nfs")
        ino = self.wire.fired(vfs.lookup(caller, self.wire.mvfs.root(), b"f")).ino
        d = vfs.write(caller, ino, 0, b"nfs", False)
        self.assertNoResult(d)
        (brk,) = breaks(self.a)
        _flags, _key, current, new = struct.unpack_from("<I16sII", brk.body, 4)
        self.assertEqual((current, new), (RWH, 0))
        self.assertEqual(ack_lease(self.a, KEY1, 0).status, 0)
        self.successResultOf(d)

    def test_own_write_keeps_lease(self) -> None:
        """A client's own writes and attribute changes never break its own lease."""
        r = lease_open(self.a, "f", KEY1, RWH)
        fid = r.file_id()
        self.assertEqual(self.a.write(fid, 0, b"data").status, 0)
        self.assertEqual(breaks(self.a), [])

    def test_break_in_progress_flag(self) -> None:
        """An open of a lease whose break is outstanding says BREAK_IN_PROGRESS."""
        lease_open(self.a, "f", KEY1, RWH)
        send_create(
            self.b,
            self.b.create_body("f", contexts=[(b"RqLs", lease_ctx(KEY2, RH))], oplock=0xFF),
        )
        breaks(self.a)
        r = lease_open(self.a, "f", KEY1, RWH)
        state, flags, _ = lease_of(r)
        self.assertEqual((state, flags), (RWH, c.SMB2_LEASE_FLAG_BREAK_IN_PROGRESS))


class OplockTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.wire = Wire()
        self.a, self.b = two_clients(self.wire)

    def test_batch_breaks_to_level_ii(self) -> None:
        """
        A batch oplock breaks to level II for a second open, which waits for
        the acknowledgement and then gets level II itself.
        """
        r = self.a.create("f", oplock=BATCH)
        self.assertEqual(r.body[2], BATCH)
        fid = r.file_id()
        pending = send_create(self.b, self.b.create_body("f", oplock=BATCH))
        self.assertEqual([x.status for x in pending], [st.STATUS_PENDING])
        (brk,) = breaks(self.a)
        self.assertEqual(brk.body[2], LEVEL_II)
        self.assertEqual(struct.unpack_from("<QQ", brk.body, 8), fid)
        r = ack_oplock(self.a, fid, LEVEL_II)
        self.assertEqual((r.status, r.body[2]), (0, LEVEL_II))
        (done,) = self.b.replies()
        self.assertEqual((done.status, done.body[2]), (0, LEVEL_II))

    def test_level_ii_breaks_to_none_on_write(self) -> None:
        """A write breaks every level II oplock, its own open's too, without acknowledgement."""
        fa = self.a.create("f", oplock=LEVEL_II).file_id()
        fb = self.b.create("f", oplock=LEVEL_II)
        self.assertEqual(fb.body[2], LEVEL_II)
        body = struct.pack("<HHIQQQIIHHI", 49, 112, 1, 0, *fb.file_id(), 0, 0, 0, 0, 0) + b"x"
        self.b.send([self.b.build(self.b.header(c.Command.WRITE), body)])
        got = self.b.replies()
        self.assertEqual(
            [(r.header.message_id == 2**64 - 1, r.status) for r in got], [(True, 0), (False, 0)]
        )
        (brk,) = breaks(self.a)
        self.assertEqual((brk.body[2], struct.unpack_from("<QQ", brk.body, 8)), (0, fa))
        self.assertEqual(ack_oplock(self.a, fa, 0).status, st.STATUS_INVALID_OPLOCK_PROTOCOL)

    def test_stat_open_gets_no_oplock(self) -> None:
        """An attribute-only open of an existing file gets no oplock and breaks nothing."""
        self.a.create("f", oplock=BATCH)
        r = self.b.create("f", oplock=BATCH, access=c.FILE_READ_ATTRIBUTES)
        self.assertEqual((r.status, r.body[2]), (0, 0))
        self.assertEqual(breaks(self.a), [])

    def test_close_ends_the_wait(self) -> None:
        """Closing the oplocked open ends a waiting open's wait."""
        fid = self.a.create("f", oplock=BATCH).file_id()
        send_create(self.b, self.b.create_body("f", oplock=BATCH))
        breaks(self.a)
        self.a.close(fid)
        (done,) = self.b.replies()
        self.assertEqual((done.status, done.body[2]), (0, BATCH))
