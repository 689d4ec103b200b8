"""
Multichannel (MS-SMB2 3.3.5.5.2, 3.3.5.15.11): session binding with a
channel key of its own, the interface list, and a session that lives on
when one of its channels is lost.
"""

from __future__ import annotations

import socket
import struct

import spnego
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.smb import constants as c
from claudefs_gateway.smb import ntstatus as st
from claudefs_gateway.smb.crypto import derive_keys, make_signer
from tests.smb.client import CONFIG, PASSWORD, Conn, Reply, Wire

MC = (
    CONFIG
    + """
smb:
  multichannel: {enabled: true, channel_selection: weighted_by_speed}
  interfaces:
    - {name: slow, ip: 192.0.2.1, link_speed_mbps: 1000}
    - {name: fast, ip: "2001:db8::1", link_speed_mbps: 25000, capabilities: {rss: true}}
"""
)
NULL = (0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF)


def bind(wire: Wire, a: Conn, user: str = "alice", dialect: int = c.SMB_3_0) -> tuple[Conn, Reply]:
    """A second connection binding itself to C{a}'s session (SMB 3.0: no preauth hash)."""
    b = wire.connect()
    b.negotiate((dialect,))
    b.session_id, b.signer, b.sign = a.session_id, a.signer, True
    ctx = spnego.client(user, PASSWORD, protocol="negotiate")
    token = ctx.step(None)
    while True:
        body = (
            struct.pack("<HBBIIHHQ", 25, c.SMB2_SESSION_FLAG_BINDING, 1, 0, 0, 88, len(token), 0)
            + token
        )
        b.send([b.build(b.header(c.Command.SESSION_SETUP), body, sign=True)])
        r = b.replies()[-1]
        if r.status != st.STATUS_MORE_PROCESSING_REQUIRED:
            break
        off, n = r.u16(4), r.u16(6)
        token = ctx.step(r.raw[off : off + n])
    if r.status == 0:
        keys = derive_keys(dialect, ctx.session_key, None, b.cipher)
        b.signer = make_signer(c.AES_CMAC, keys.signing)
        b.tree_id = a.tree_id
    return b, r


def setup(wire: Wire, dialect: int = c.SMB_3_0) -> Conn:
    a = wire.connect()
    a.negotiate((dialect,))
    assert a.login().status == 0
    assert a.tree_connect().status == 0
    return a


class BindingTests(SynchronousTestCase):
    def test_bind_and_use_opens_of_the_other_channel(self) -> None:
        """
        A bound channel signs with its own key and reaches the session's trees
        and opens; NEGOTIATE offers GLOBAL_CAP_MULTI_CHANNEL.
        """
        wire = Wire(MC)
        a = setup(wire)
        fid = a.open("f")
        a.write(fid, 0, b"over two channels")
        b, r = bind(wire, a)
        self.assertEqual(r.status, 0)
        self.assertTrue(r.header.flags & c.SMB2_FLAGS_SIGNED)
        self.assertEqual(b.read_data(b.read(fid, 0, 4)), b"over")
        again = wire.connect()
        self.assertTrue(again.negotiate((c.SMB_3_0,)).u32(24) & c.SMB2_GLOBAL_CAP_MULTI_CHANNEL)

    def test_failover(self) -> None:
        """When one channel is lost the session and its opens live on over the other."""
        wire = Wire(MC)
        a = setup(wire)
        fid = a.open("f")
        a.write(fid, 0, b"kept")
        b, _ = bind(wire, a)
        a.proto.connectionLost(Failure(ConnectionError("cut")))
        self.assertEqual(b.read_data(b.read(fid, 0, 4)), b"kept")
        self.assertEqual(b.close(fid).status, 0)

    def test_refusals(self) -> None:
        """
        Binding is refused at SMB 2.x and with multichannel off
        (REQUEST_NOT_ACCEPTED), as another user (ACCESS_DENIED), to an
        unknown session (USER_SESSION_DELETED).
        """
        wire = Wire(MC)
        a = setup(wire)
        _, r = bind(wire, a, user="bob")
        self.assertEqual(r.status, st.STATUS_ACCESS_DENIED)
        off = Wire()
        a2 = setup(off)
        _, r = bind(off, a2)
        self.assertEqual(r.status, st.STATUS_REQUEST_NOT_ACCEPTED)
        old = Wire(MC)
        a3 = setup(old, c.SMB_2_1)
        _, r = bind(old, a3, dialect=c.SMB_2_1)
        self.assertEqual(r.status, st.STATUS_REQUEST_NOT_ACCEPTED)
        a.session_id ^= 0x10000
        _, r = bind(wire, a)
        self.assertEqual(r.status, st.STATUS_USER_SESSION_DELETED)


class ChannelSequenceTests(SynchronousTestCase):
    """MS-SMB2 3.3.5.2.10: a request's ChannelSequence against its open's."""

    EX = c.SMB2_LOCKFLAG_EXCLUSIVE_LOCK

    def basic(self, a: Conn, fid: tuple[int, int]) -> Reply:
        """SET_INFO FileBasicInformation changing nothing."""
        return a.set_info(fid, c.SMB2_0_INFO_FILE, 4, bytes(40))

    def test_stale_sequence_refuses_modifying_requests(self) -> None:
        """
        A newer ChannelSequence moves the open on; an older one fails WRITE,
        SET_INFO and IOCTL with FILE_NOT_AVAILABLE and lets READ through.
        """
        wire = Wire(MC)
        a = setup(wire)
        fid = a.open("f")
        self.assertEqual(a.write(fid, 0, b"zero").status, 0)
        a.channel_sequence = 1
        self.assertEqual(a.write(fid, 0, b"one!").status, 0)
        a.channel_sequence = 0
        self.assertEqual(a.write(fid, 0, b"late").status, st.STATUS_FILE_NOT_AVAILABLE)
        self.assertEqual(self.basic(a, fid).status, st.STATUS_FILE_NOT_AVAILABLE)
        r = a.ioctl(fid, c.FSCTL_SET_SPARSE)
        self.assertEqual(r.status, st.STATUS_FILE_NOT_AVAILABLE)
        self.assertEqual(a.read_data(a.read(fid, 0, 4)), b"one!")
        a.channel_sequence = 1
        self.assertEqual(self.basic(a, fid).status, 0)
        self.assertEqual(a.close(fid).status, 0)

    def test_sequence_wraps(self) -> None:
        """16-bit arithmetic: 0 follows 0xFFFF; 0x8001 past it is stale."""
        wire = Wire(MC)
        a = setup(wire)
        a.channel_sequence = 0xFFFF
        fid = a.open("f")
        a.channel_sequence = 0
        self.assertEqual(a.write(fid, 0, b"x").status, 0)
        a.channel_sequence = 0xFFFF
        self.assertEqual(a.write(fid, 0, b"x").status, st.STATUS_FILE_NOT_AVAILABLE)
        a.channel_sequence = 0x8000
        self.assertEqual(a.write(fid, 0, b"x").status, st.STATUS_FILE_NOT_AVAILABLE)
        a.channel_sequence = 0x7FFF
        self.assertEqual(a.write(fid, 0, b"x").status, 0)

    def test_ignored_before_smb3(self) -> None:
        """SMB 2.x has no ChannelSequence: the Status field of a request is not looked at."""
        wire = Wire(MC)
        a = setup(wire, c.SMB_2_1)
        fid = a.open("f")
        a.channel_sequence = 5
        self.assertEqual(a.write(fid, 0, b"x").status, 0)
        a.channel_sequence = 0
        self.assertEqual(a.write(fid, 0, b"x").status, 0)

    def test_replay_while_older_requests_are_outstanding(self) -> None:
        """
        A replay under a new ChannelSequence is served once; a second one while
        a request of the old number is still outstanding (a blocked LOCK) fails
        FILE_NOT_AVAILABLE; once that request ends, replays are served again.
        """
        wire = Wire(MC)
        a = setup(wire)
        holder = a.open("f")
        self.assertEqual(
            a.lock(holder, [(0, 10, self.EX | c.SMB2_LOCKFLAG_FAIL_IMMEDIATELY)]).status, 0
        )
        b = setup(wire)
        fid = b.open("f")
        self.assertEqual(b.lock(fid, [(0, 10, self.EX)]).status, st.STATUS_PENDING)
        b.channel_sequence = 1
        b.extra_flags = c.SMB2_FLAGS_REPLAY_OPERATION
        self.assertEqual(b.write(fid, 20, b"r").status, 0)
        self.assertEqual(b.write(fid, 20, b"r").status, st.STATUS_FILE_NOT_AVAILABLE)
        # Not a replay: served, and counted under the new number.
        b.extra_flags = 0
        self.assertEqual(b.write(fid, 20, b"n").status, 0)
        self.assertEqual(a.close(holder).status, 0)
        self.assertEqual(b.replies()[-1].status, 0)  # the LOCK, granted
        b.extra_flags = c.SMB2_FLAGS_REPLAY_OPERATION
        self.assertEqual(b.write(fid, 20, b"r").status, 0)


class InterfaceTests(SynchronousTestCase):
    def test_interface_list(self) -> None:
        """
        FSCTL_QUERY_NETWORK_INTERFACE_INFO lists smb.interfaces, fastest first
        (channel_selection weighted_by_speed), with speed, RSS and addresses.
        """
        wire = Wire(MC)
        a = setup(wire)
        r = a.ioctl(NULL, c.FSCTL_QUERY_NETWORK_INTERFACE_INFO)
        self.assertEqual(r.status, 0)
        off, n = r.u32(32), r.u32(36)
        out = r.raw[off : off + n]
        self.assertEqual(len(out), 2 * 152)
        nxt, _index, caps, _res, speed = struct.unpack_from("<IIIIQ", out)
        family = struct.unpack_from("<H", out, 24)[0]
        self.assertEqual((nxt, caps, speed, family), (152, 1, 25_000_000_000, 0x17))
        self.assertEqual(out[24 + 8 : 24 + 24], socket.inet_pton(socket.AF_INET6, "2001:db8::1"))
        self.assertEqual(struct.unpack_from("<I", out, 152)[0], 0)
        self.assertEqual(out[152 + 28 : 152 + 32], socket.inet_aton("192.0.2.1"))
        r = a.ioctl((1, 1), c.FSCTL_QUERY_NETWORK_INTERFACE_INFO)
        self.assertEqual(r.status, st.STATUS_INVALID_PARAMETER)

    def test_off(self) -> None:
        """With multichannel off the FSCTL is NOT_SUPPORTED."""
        wire = Wire()
        a = setup(wire)
        r = a.ioctl(NULL, c.FSCTL_QUERY_NETWORK_INTERFACE_INFO)
        self.assertEqual(r.status, st.STATUS_NOT_SUPPORTED)
