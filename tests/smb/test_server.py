"""
The SMB connection: framing, NEGOTIATE, SESSION_SETUP, signing, encryption,
credits, compounds, asynchronous replies, IPC$, and hostile input.
"""

from __future__ import annotations

import os
import struct
import sys
from typing import Any

import spnego
from hypothesis import given, settings
from hypothesis import strategies as s
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.smb import constants as c
from claudefs_gateway.smb import ntstatus as st
from claudefs_gateway.smb.header import Header
from claudefs_gateway.smb.logon import FAILED_LOGON_DELAY, MAX_SESSIONS
from claudefs_gateway.smb.server import MAX_CREDITS, CreditWindow
from claudefs_gateway.smb.state import Request
from tests.smb.client import CONFIG, PASSWORD, RELATED, Conn, Wire
from tests.smb.test_dcerpc import NDR, bind_pdu, enum_request, request_pdu
from tests.smb.test_header import smb1_negotiate

SECRET_SHARE = """
exports:
  - {path: /export, name: share, root_squash: false}
  - {path: /secret, name: secret, encrypt: required}
"""
SIGNING_REQUIRED = CONFIG + "smb: {signing: required}\n"
ENCRYPT_REQUIRED = CONFIG + "smb: {encrypt: required}\n"


def echo(conn: Conn, **kw: object) -> bytes:
    return conn.build(conn.header(c.Command.ECHO, **kw), b"\x04\x00\x00\x00")  # type: ignore[arg-type]


class NegotiateTests(SynchronousTestCase):
    def test_each_dialect(self) -> None:
        """Every dialect 2.0.2-3.1.1 negotiates, logs on and connects a tree."""
        wire = Wire()
        for d in c.DIALECTS:
            conn = wire.connect()
            r = conn.negotiate((d,))
            self.assertEqual((r.status, conn.dialect), (0, d))
            self.assertEqual(r.u32(24) & c.SMB2_GLOBAL_CAP_LARGE_MTU, 0 if d == c.SMB_2_0_2 else 4)
            max_read = r.u32(32)
            self.assertEqual(max_read, 65536 if d == c.SMB_2_0_2 else 8 * 1024 * 1024)
            self.assertEqual(conn.login().status, 0)
            self.assertEqual(conn.tree_connect().status, 0)

    def test_311_contexts(self) -> None:
        """3.1.1 answers with preauth (SHA-512), the cipher and the signing algorithm chosen."""
        conn = Wire().connect()
        r = conn.negotiate(ciphers=(c.AES_256_GCM,), signing=(c.AES_CMAC,))
        self.assertEqual(r.u16(6), 3)
        self.assertEqual((conn.cipher, conn.signing_alg), (c.AES_256_GCM, c.AES_CMAC))

    def test_no_common_dialect(self) -> None:
        conn = Wire().connect()
        r = conn.negotiate((0x0100,))
        self.assertEqual(r.status, st.STATUS_NOT_SUPPORTED)
        self.assertTrue(conn.closed)

    def test_smb1_upgrade(self) -> None:
        """An SMB1 NEGOTIATE offering SMB 2.??? gets dialect 0x02FF; the SMB2 NEGOTIATE follows as MessageId 1."""
        conn = Wire().connect()
        conn.send_raw(smb1_negotiate([b"NT LM 0.12", b"SMB 2.002", b"SMB 2.???"]))
        [r] = conn.replies()
        self.assertEqual((r.header.command, r.u16(4), r.header.message_id), (0, 0x02FF, 0))
        conn.mid = 1
        self.assertEqual(conn.negotiate().status, 0)
        self.assertEqual(conn.login().status, 0)

    def test_smb1_only_refused(self) -> None:
        """SMB1 itself is not served: an SMB1-only NEGOTIATE closes the connection."""
        conn = Wire().connect()
        conn.send_raw(smb1_negotiate([b"NT LM 0.12"]))
        self.assertEqual(conn.replies(), [])
        self.assertTrue(conn.closed)

    def test_second_negotiate_closes(self) -> None:
        conn = Wire().connect()
        conn.negotiate()
        conn.send([conn.build(conn.header(c.Command.NEGOTIATE), b"\x24\x00" + b"\x00" * 40)])
        self.assertTrue(conn.closed)

    def test_request_before_negotiate(self) -> None:
        conn = Wire().connect()
        conn.send([echo(conn)])
        self.assertTrue(conn.closed)

    def test_validate_negotiate(self) -> None:
        """FSCTL_VALIDATE_NEGOTIATE_INFO echoes the NEGOTIATE for 3.0.x; a mismatch closes."""
        for good in (True, False):
            conn = Wire().connect()
            conn.negotiate((c.SMB_2_1, c.SMB_3_0_2))
            conn.login()
            conn.tree_connect()
            caps = c.SMB2_GLOBAL_CAP_ENCRYPTION | c.SMB2_GLOBAL_CAP_LARGE_MTU
            data = struct.pack(
                "<I16sHHHH", caps, b"G" * 16, 1 if good else 2, 2, c.SMB_2_1, c.SMB_3_0_2
            )
            r = conn.ioctl(RELATED_NONE, c.FSCTL_VALIDATE_NEGOTIATE_INFO, data)
            if good:
                self.assertEqual(r.status, 0)
                out = r.raw[r.u32(32) : r.u32(32) + r.u32(36)]
                self.assertEqual(struct.unpack_from("<H", out, 22)[0], c.SMB_3_0_2)
                self.assertTrue(r.header.flags & c.SMB2_FLAGS_SIGNED)
            else:
                self.assertTrue(conn.closed)


RELATED_NONE = (0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF)


class SessionTests(SynchronousTestCase):
    def test_logon_failure_is_slow_and_counted(self) -> None:
        """A wrong password fails with STATUS_LOGON_FAILURE after a delay, counted in metrics."""
        wire = Wire()
        conn = wire.connect()
        conn.negotiate()
        import spnego

        ctx = spnego.client("alice", "nope", protocol="negotiate")
        r, out = conn.session_setup(ctx.step(None))
        self.assertEqual(r.status, st.STATUS_MORE_PROCESSING_REQUIRED)
        conn.send(
            [
                conn.build(
                    conn.header(c.Command.SESSION_SETUP), _setup_body(ctx.step(out)), sign=False
                )
            ]
        )
        self.assertEqual(conn.replies(), [])
        wire.clock.advance(FAILED_LOGON_DELAY)
        [r] = conn.replies()
        self.assertEqual(r.status, st.STATUS_LOGON_FAILURE)
        value = wire.metrics.registry.get_sample_value(
            "gateway_auth_failures_total", {"protocol": "smb"}
        )
        self.assertEqual(value, 1.0)

    def test_lockout(self) -> None:
        """After five failures from one address, even the right password is refused for a while."""
        wire = Wire()
        for _ in range(5):
            conn = wire.connect()
            conn.negotiate()
            login_async(conn, wire, "alice", "bad")
        conn = wire.connect()
        conn.negotiate()
        self.assertEqual(login_async(conn, wire, "alice", "Pass1").status, st.STATUS_LOGON_FAILURE)
        wire.clock.advance(61)
        conn = wire.connect()
        self.assertEqual(conn.login().status, 0)

    def test_guest_off_by_default(self) -> None:
        conn = Wire().connect()
        conn.negotiate()
        self.assertEqual(
            login_async(conn, conn.wire, "mallory", "x").status, st.STATUS_LOGON_FAILURE
        )

    def test_guest_when_allowed(self) -> None:
        conn = Wire(CONFIG + "smb: {guest: true}\n").connect()
        conn.negotiate()
        r = conn.login("mallory", "x")
        self.assertEqual((r.status, r.u16(2)), (0, c.SMB2_SESSION_FLAG_IS_GUEST))

    def test_unknown_session(self) -> None:
        conn = Wire().connect()
        conn.setup()
        conn.session_id = 999
        self.assertEqual(
            conn.call(c.Command.ECHO, b"\x04\x00\x00\x00", sign=False).status,
            st.STATUS_USER_SESSION_DELETED,
        )

    def test_echo_without_session(self) -> None:
        conn = Wire().connect()
        conn.negotiate()
        self.assertEqual(conn.call(c.Command.ECHO, b"\x04\x00\x00\x00").status, 0)

    def test_logoff(self) -> None:
        wire = Wire()
        conn = wire.connect()
        conn.setup()
        self.assertEqual(conn.call(c.Command.LOGOFF, b"\x04\x00\x00\x00").status, 0)
        wire.clock.advance(0)
        self.assertEqual(conn.create("x").status, st.STATUS_USER_SESSION_DELETED)

    def test_sessions_per_connection_bounded(self) -> None:
        """Half-open sessions cannot pile up on one connection: past the bound, a clean refusal."""
        conn = Wire().connect()
        conn.negotiate()
        token = spnego.client("alice", PASSWORD, protocol="ntlm").step(None)
        for _ in range(MAX_SESSIONS):
            conn.session_id = 0
            r, _ = conn.session_setup(token)
            self.assertEqual(r.status, 0xC0000016)
        conn.session_id = 0
        r, _ = conn.session_setup(token)
        self.assertEqual(r.status, st.STATUS_INSUFFICIENT_RESOURCES)

    def test_binding_refused(self) -> None:
        conn = Wire().connect()
        conn.setup()
        r, _ = conn.session_setup(b"x", flags=c.SMB2_SESSION_FLAG_BINDING)
        self.assertEqual(r.status, st.STATUS_REQUEST_NOT_ACCEPTED)


def _setup_body(token: bytes) -> bytes:
    return struct.pack("<HBBIIHHQ", 25, 0, 1, 0, 0, 88, len(token), 0) + token


def login_async(conn: Conn, wire: Wire, user: str, password: str) -> object:
    """A logon that may be answered after the failed-logon delay."""
    import spnego

    ctx = spnego.client(user, password, protocol="negotiate")
    token = ctx.step(None)
    while True:
        msg = conn.build(conn.header(c.Command.SESSION_SETUP), _setup_body(token), sign=False)
        conn.send([msg], encrypt=False)
        wire.clock.advance(FAILED_LOGON_DELAY)
        r = conn.replies()[-1]
        conn.session_id = r.header.session_id
        if r.status != st.STATUS_MORE_PROCESSING_REQUIRED:
            return r
        off, n = r.u16(4), r.u16(6)
        token = ctx.step(r.raw[off : off + n])


class SigningTests(SynchronousTestCase):
    def test_signed_replies(self) -> None:
        """Signed requests get signed replies, which verify with the session's key."""
        conn = Wire().connect()
        conn.setup()
        r = conn.create("f")
        self.assertTrue(r.header.flags & c.SMB2_FLAGS_SIGNED)
        self.assertTrue(conn.signer.verify(r.raw, response=True))

    def test_bad_signature(self) -> None:
        """A request whose signature does not verify fails with STATUS_ACCESS_DENIED."""
        conn = Wire().connect()
        conn.setup()
        msg = bytearray(conn.build(conn.header(c.Command.ECHO), b"\x04\x00\x00\x00"))
        msg[50] ^= 1
        conn.send([bytes(msg)])
        [r] = conn.replies()
        self.assertEqual(r.status, st.STATUS_ACCESS_DENIED)
        self.assertFalse(r.header.flags & c.SMB2_FLAGS_SIGNED)

    def test_unsigned_311_tree_connect(self) -> None:
        """At 3.1.1 an unsigned, unencrypted TREE_CONNECT is refused (MS-SMB2 3.3.5.7)."""
        conn = Wire().connect()
        conn.login(sign=False)
        self.assertEqual(conn.tree_connect().status, st.STATUS_ACCESS_DENIED)
        self.assertEqual(conn.tree_connect(sign=True).status, 0)
        self.assertEqual(conn.create("f").status, 0)

    def test_required(self) -> None:
        """With smb.signing: required, NEGOTIATE says so and unsigned requests are refused."""
        conn = Wire(SIGNING_REQUIRED).connect()
        r = conn.negotiate((c.SMB_2_1,))
        self.assertTrue(r.u16(2) & c.SMB2_NEGOTIATE_SIGNING_REQUIRED)
        conn.login(sign=False)
        self.assertEqual(conn.tree_connect().status, st.STATUS_ACCESS_DENIED)
        self.assertEqual(conn.tree_connect(sign=True).status, 0)

    def test_client_requires(self) -> None:
        """A client whose SESSION_SETUP requires signing gets every reply signed."""
        conn = Wire().connect()
        conn.negotiate((c.SMB_3_0,))
        conn.login(sign=False, security_mode=3)
        r = conn.tree_connect(sign=True)
        self.assertTrue(r.header.flags & c.SMB2_FLAGS_SIGNED)
        self.assertEqual(
            conn.call(c.Command.ECHO, b"\x04\x00\x00\x00", sign=False).status,
            st.STATUS_ACCESS_DENIED,
        )

    def test_replayed_message_closes(self) -> None:
        """A signed message sent again reuses its MessageId: the connection closes."""
        conn = Wire().connect()
        conn.setup()
        msg = echo(conn)
        conn.send([msg])
        self.assertEqual(conn.replies()[0].status, 0)
        conn.send([msg])
        self.assertEqual(conn.replies(), [])
        self.assertTrue(conn.closed)


class EncryptionTests(SynchronousTestCase):
    def test_client_encrypts(self) -> None:
        """Encrypted requests get encrypted replies, for every cipher."""
        for cipher in (c.AES_128_CCM, c.AES_128_GCM, c.AES_256_CCM, c.AES_256_GCM):
            conn = Wire().connect()
            conn.negotiate(ciphers=(cipher,))
            conn.login(encrypt=True)
            self.assertEqual(conn.tree_connect().status, 0)
            fid = conn.open("f")
            conn.write(fid, 0, b"secret")
            conn.send([conn.build(conn.header(c.Command.ECHO), b"\x04\x00\x00\x00")])
            self.assertEqual(conn.transport.value()[4:8], c.TRANSFORM_MAGIC)
            self.assertNotIn(b"secret", conn.transport.value())
            conn.replies()

    def test_30_encryption(self) -> None:
        conn = Wire().connect()
        conn.negotiate((c.SMB_3_0,))
        self.assertEqual(conn.cipher, c.AES_128_CCM)
        conn.login(encrypt=True)
        self.assertEqual(conn.tree_connect().status, 0)

    def test_required(self) -> None:
        """smb.encrypt: required sets EncryptData; plain requests are then refused."""
        conn = Wire(ENCRYPT_REQUIRED).connect()
        r = conn.login()
        self.assertEqual(r.u16(2), c.SMB2_SESSION_FLAG_ENCRYPT_DATA)
        self.assertEqual(conn.tree_connect(encrypt=False).status, st.STATUS_ACCESS_DENIED)
        self.assertEqual(conn.tree_connect(encrypt=True).status, 0)

    def test_required_without_cipher(self) -> None:
        """A client that cannot encrypt cannot log on when encryption is required."""
        conn = Wire(ENCRYPT_REQUIRED).connect()
        conn.negotiate((c.SMB_2_1,))
        self.assertEqual(
            login_async(conn, conn.wire, "alice", "Pass1").status, st.STATUS_LOGON_FAILURE
        )

    def test_per_share(self) -> None:
        """A share with encrypt: required needs encrypted requests; other shares do not."""
        conn = Wire(SECRET_SHARE).connect()
        conn.login()
        r = conn.tree_connect("secret", encrypt=True)
        self.assertEqual(r.status, 0)
        self.assertTrue(r.u32(4) & c.SMB2_SHAREFLAG_ENCRYPT_DATA)
        self.assertEqual(
            conn.create("", encrypt=False, access=c.GENERIC_READ).status, st.STATUS_ACCESS_DENIED
        )
        self.assertEqual(conn.create("", encrypt=True, access=c.GENERIC_READ).status, 0)
        conn2 = Wire(SECRET_SHARE).connect()
        conn2.negotiate((c.SMB_2_1,))
        conn2.login()
        self.assertEqual(conn2.tree_connect("secret").status, st.STATUS_ACCESS_DENIED)

    def test_undecryptable_closes(self) -> None:
        conn = Wire().connect()
        conn.setup()
        sealed = bytearray(conn.sealer.encrypt(echo(conn), conn.session_id))
        sealed[-1] ^= 1
        conn.send_raw(bytes(sealed))
        self.assertTrue(conn.closed)


class CreditTests(SynchronousTestCase):
    def test_grants_bounded(self) -> None:
        """Credits are granted as asked, up to the server's limit of outstanding credits."""
        conn = Wire().connect()
        conn.negotiate()
        conn.login()
        total = 1
        for _ in range(40):
            total += conn.call(c.Command.ECHO, b"\x04\x00\x00\x00", credits=1000).header.credits - 1
        self.assertLessEqual(total, MAX_CREDITS)
        self.assertGreater(total, MAX_CREDITS - 100)

    def test_message_id_outside_window_closes(self) -> None:
        conn = Wire().connect()
        conn.setup()
        conn.send([echo(conn, message_id=conn.mid + 5000)])
        self.assertTrue(conn.closed)

    def test_credit_exhaustion(self) -> None:
        """A client that spends credits it was never granted is disconnected, not served."""
        conn = Wire().connect()
        conn.negotiate()
        conn.login()
        self.assertGreater(conn.credits, 1)
        conn.send([echo(conn, credits=0) for _ in range(conn.credits + 1)])
        self.assertEqual(conn.replies(), [])
        self.assertTrue(conn.closed)

    def test_window_held_open_by_an_unused_id(self) -> None:
        """A client that never uses one granted id cannot make the server remember ids forever."""
        window = CreditWindow(limit=4)
        window.grant(4)
        self.assertTrue(window.consume(1, 1))
        nxt = 2
        ok = True
        for _ in range(100):
            window.grant(4)
            while ok and nxt < window.high:
                ok = window.consume(nxt, 1)
                nxt += 1
            if not ok:
                break
        self.assertFalse(ok)
        self.assertLessEqual(len(window.used), 2 * 4 + 4)

    def test_window_in_and_out_of_order(self) -> None:
        """
        Ids used in order move the window's bottom without being remembered;
        ids used out of order are remembered until the gap below them fills,
        and no id is accepted twice either way.
        """
        window = CreditWindow(limit=64)
        window.grant(63)
        self.assertTrue(window.consume(0, 1))
        self.assertTrue(window.consume(1, 8))  # a multi-credit request, in order
        self.assertEqual((window.low, window.used), (9, set()))
        self.assertFalse(window.consume(4, 1))  # below the window: used
        self.assertTrue(window.consume(12, 2))  # ahead of 9..11
        self.assertEqual((window.low, window.used), (9, {12, 13}))
        self.assertFalse(window.consume(13, 1))
        self.assertFalse(window.consume(11, 2))  # 11 is free, 12 is not
        self.assertTrue(window.consume(9, 3))  # fills the gap
        self.assertEqual((window.low, window.used), (14, set()))
        self.assertFalse(window.consume(60, 8))  # beyond what was granted
        self.assertEqual(window.outstanding, 64 - 14)

    def test_multi_credit(self) -> None:
        """A 1 MiB READ needs a CreditCharge of 16 (MS-SMB2 3.3.5.2.5)."""
        conn = Wire().connect()
        conn.setup()
        conn.call(c.Command.ECHO, b"\x04\x00\x00\x00", credits=64)
        fid = conn.open("f")
        self.assertEqual(conn.read(fid, 0, 1 << 20, charge=1).status, st.STATUS_INVALID_PARAMETER)
        self.assertEqual(conn.read(fid, 0, 1 << 20, charge=16).status, st.STATUS_END_OF_FILE)

    def test_202_limit(self) -> None:
        conn = Wire().connect()
        conn.setup()
        conn.negotiate  # noqa: B018 - setup negotiated 3.1.1
        conn2 = Wire().connect()
        conn2.negotiate((c.SMB_2_0_2,))
        conn2.login()
        conn2.tree_connect()
        fid = conn2.open("f")
        self.assertEqual(conn2.read(fid, 0, 65537, charge=0).status, st.STATUS_INVALID_PARAMETER)


class CompoundTests(SynchronousTestCase):
    def test_related_create_write_close(self) -> None:
        """CREATE + WRITE + CLOSE related: the later ones use the CREATE's FileId."""
        conn = Wire().connect()
        conn.setup()
        h = lambda cmd: conn.header(cmd, flags=c.SMB2_FLAGS_RELATED_OPERATIONS)  # noqa: E731
        msgs = [
            conn.build(conn.header(c.Command.CREATE), conn.create_body("comp.txt")),
            conn.build(
                h(c.Command.WRITE),
                struct.pack("<HHIQQQIIHHI", 49, 112, 5, 0, *RELATED, 0, 0, 0, 0, 0) + b"hello",
            ),
            conn.build(h(c.Command.CLOSE), struct.pack("<HHIQQ", 24, 1, 0, *RELATED)),
        ]
        conn.send(msgs)
        replies = conn.replies()
        self.assertEqual([r.status for r in replies], [0, 0, 0])
        self.assertTrue(all(r.header.flags & c.SMB2_FLAGS_RELATED_OPERATIONS for r in replies[1:]))
        self.assertEqual(replies[2].u64(48), 5)  # EndOfFile after close
        for r in replies:
            self.assertTrue(conn.signer.verify(r.raw, response=True))

    def test_every_response_padded(self) -> None:
        """In a compound every response is padded to 8 bytes, the last one too; alone, none is."""
        conn = Wire().connect()
        conn.setup()
        conn.send([echo(conn), echo(conn)])
        [frame] = conn.frames()
        first = struct.unpack_from("<I", frame, 20)[0]
        self.assertEqual((first, len(frame) - first), (72, 72))
        conn.send([echo(conn)])
        [frame] = conn.frames()
        self.assertEqual(len(frame), 68)

    def test_related_after_failure(self) -> None:
        """A related request after a failed CREATE fails with the CREATE's status."""
        conn = Wire().connect()
        conn.setup()
        msgs = [
            conn.build(
                conn.header(c.Command.CREATE), conn.create_body("missing", disposition=c.FILE_OPEN)
            ),
            conn.build(
                conn.header(c.Command.CLOSE, flags=c.SMB2_FLAGS_RELATED_OPERATIONS),
                struct.pack("<HHIQQ", 24, 0, 0, *RELATED),
            ),
        ]
        conn.send(msgs)
        self.assertEqual([r.status for r in conn.replies()], [st.STATUS_OBJECT_NAME_NOT_FOUND] * 2)

    def test_unrelated(self) -> None:
        conn = Wire().connect()
        conn.setup()
        conn.send(
            [
                echo(conn),
                conn.build(conn.header(c.Command.CREATE), conn.create_body("u")),
                echo(conn),
            ]
        )
        self.assertEqual([r.status for r in conn.replies()], [0, 0, 0])


class AsyncTests(SynchronousTestCase):
    def test_notify_pending_then_fires(self) -> None:
        """CHANGE_NOTIFY goes async (STATUS_PENDING with an AsyncId) and completes on a change."""
        wire = Wire()
        watcher = wire.connect().setup()
        d = watcher.open("", access=c.GENERIC_READ)
        interim = watcher.notify(d)
        self.assertEqual(interim.status, st.STATUS_PENDING)
        self.assertTrue(interim.header.flags & c.SMB2_FLAGS_ASYNC_COMMAND)
        other = wire.connect().setup("bob")
        other.open("new.txt")
        [final] = watcher.replies()
        self.assertEqual((final.status, final.header.async_id), (0, interim.header.async_id))
        buf = final.buffer()
        action, n = struct.unpack_from("<II", buf, 4)
        self.assertEqual(
            (action, buf[12 : 12 + n].decode("utf-16-le")), (c.FILE_ACTION_ADDED, "new.txt")
        )

    def test_cancel(self) -> None:
        conn = Wire().connect().setup()
        d = conn.open("", access=c.GENERIC_READ)
        interim = conn.notify(d)
        cancel = conn.header(
            c.Command.CANCEL,
            flags=c.SMB2_FLAGS_ASYNC_COMMAND,
            async_id=interim.header.async_id,
            message_id=interim.header.message_id,
        )
        conn.send([conn.build(cancel, b"\x04\x00\x00\x00")])
        [final] = conn.replies()
        self.assertEqual(final.status, st.STATUS_CANCELLED)

    def test_close_ends_notify(self) -> None:
        conn = Wire().connect().setup()
        d = conn.open("", access=c.GENERIC_READ)
        conn.notify(d)
        replies = []
        conn.send([conn.build(conn.header(c.Command.CLOSE), struct.pack("<HHIQQ", 24, 0, 0, *d))])
        replies = conn.replies()
        self.assertEqual(sorted(r.status for r in replies), [0, st.STATUS_NOTIFY_CLEANUP])


class IpcTests(SynchronousTestCase):
    def test_srvsvc_over_write_read_and_transceive(self) -> None:
        """IPC$ serves srvsvc: BIND by WRITE/READ, NetShareEnumAll by FSCTL_PIPE_TRANSCEIVE."""
        from impacket.dcerpc.v5 import srvs

        conn = Wire().connect().setup(share="IPC$")
        fid = conn.open("srvsvc", access=c.GENERIC_READ | c.GENERIC_WRITE)
        self.assertEqual(conn.write(fid, 0, bind_pdu([NDR])).status, 0)
        r = conn.read(fid, 0, 4280)
        self.assertEqual((r.status, conn.read_data(r)[2]), (0, 12))
        r = conn.ioctl(fid, c.FSCTL_PIPE_TRANSCEIVE, request_pdu(15, enum_request(1)), max_out=4280)
        self.assertEqual(r.status, 0)
        out = r.raw[r.u32(32) : r.u32(32) + r.u32(36)]
        resp = srvs.NetrShareEnumResponse(out[24:])
        names = [
            e["shi1_netname"][:-1] for e in resp["InfoStruct"]["ShareInfo"]["Level1"]["Buffer"]
        ]
        self.assertEqual(names, ["share", "ro", "IPC$"])

    def test_other_pipes(self) -> None:
        conn = Wire().connect().setup(share="IPC$")
        self.assertEqual(conn.create("lsarpc").status, st.STATUS_OBJECT_NAME_NOT_FOUND)

    def test_unknown_share(self) -> None:
        conn = Wire().connect()
        conn.login()
        self.assertEqual(conn.tree_connect("nope").status, st.STATUS_BAD_NETWORK_NAME)


class HostileTests(SynchronousTestCase):
    def test_truncated_header(self) -> None:
        """A frame shorter than an SMB2 header closes the connection."""
        conn = Wire().connect()
        conn.negotiate()
        conn.send_raw(Header(c.Command.ECHO, message_id=1).pack()[:40])
        self.assertTrue(conn.closed)

    def test_reading_pauses_while_much_is_in_flight(self) -> None:
        """Bytes waiting on slow requests are bounded: reading pauses, then resumes."""
        from twisted.internet import defer as d_

        wire = Wire()
        conn = wire.connect().setup()
        conn.call(c.Command.ECHO, b"\x04\x00\x00\x00", credits=8000)
        fid = conn.open("slow")
        gate: d_.Deferred[None] = d_.Deferred()
        real = wire.mvfs.backend.write

        def slow(*args: object, **kw: object) -> object:
            return gate.addCallback(lambda _: real(*args, **kw))

        self.patch(wire.mvfs.backend, "write", slow)
        big = b"x" * (8 << 20)
        for i in range(9):
            msg = conn.build(
                conn.header(c.Command.WRITE, credit_charge=128),
                struct.pack("<HHIQQQIIHHI", 49, 112, len(big), i * len(big), *fid, 0, 0, 0, 0, 0)
                + big,
            )
            conn.send([msg])
        self.assertEqual(conn.transport.producerState, "paused")
        gate.callback(None)
        self.assertEqual(conn.transport.producerState, "producing")

    def test_oversized_frame(self) -> None:
        """A length over smb.max_message_size closes the connection before buffering it."""
        conn = Wire().connect()
        conn.proto.dataReceived(b"\x00\xff\xff\xff" + b"x" * 100)
        self.assertTrue(conn.closed)
        self.assertLess(len(conn.proto._buf), 200)

    def test_not_a_session_message(self) -> None:
        conn = Wire().connect()
        conn.proto.dataReceived(b"\x81\x00\x00\x04abcd")
        self.assertTrue(conn.closed)

    def test_keepalive_ignored(self) -> None:
        conn = Wire().connect()
        conn.proto.dataReceived(b"\x85\x00\x00\x00")
        self.assertFalse(conn.closed)
        self.assertEqual(conn.negotiate().status, 0)

    def test_unknown_command(self) -> None:
        conn = Wire().connect().setup()
        self.assertEqual(conn.call(0x77, b"\x04\x00\x00\x00").status, st.STATUS_INVALID_PARAMETER)
        self.assertFalse(conn.closed)

    def test_reply_flags_in_a_request(self) -> None:
        """A request flagged as a reply, or async other than CANCEL, is INVALID_PARAMETER."""
        conn = Wire().connect().setup()
        for flags in (c.SMB2_FLAGS_SERVER_TO_REDIR, c.SMB2_FLAGS_ASYNC_COMMAND):
            r = conn.call(c.Command.ECHO, b"\x04\x00\x00\x00", flags=flags)
            self.assertEqual(r.status, st.STATUS_INVALID_PARAMETER)
        self.assertFalse(conn.closed)

    def test_oversized_read(self) -> None:
        conn = Wire().connect().setup()
        conn.call(c.Command.ECHO, b"\x04\x00\x00\x00", credits=400)
        fid = conn.open("f")
        self.assertEqual(
            conn.read(fid, 0, 16 << 20, charge=256).status, st.STATUS_INVALID_PARAMETER
        )

    def test_malformed_bodies(self) -> None:
        """Bodies that do not parse get STATUS_INVALID_PARAMETER; the connection lives on."""
        conn = Wire().connect().setup()
        for cmd in (
            c.Command.CREATE,
            c.Command.READ,
            c.Command.WRITE,
            c.Command.QUERY_INFO,
            c.Command.LOCK,
        ):
            self.assertEqual(conn.call(cmd, b"\x00\x00\x01").status, st.STATUS_INVALID_PARAMETER)
        self.assertEqual(conn.call(c.Command.ECHO, b"\x04\x00\x00\x00").status, 0)

    def test_split_delivery(self) -> None:
        """Frames arrive whole however the stream is cut."""
        conn = Wire().connect()
        conn.negotiate()
        msg = echo(conn)
        data = len(msg).to_bytes(4, "big") + msg
        for b in data:
            conn.proto.dataReceived(bytes([b]))
        self.assertEqual(conn.replies()[0].status, 0)

    @settings(max_examples=60)
    @given(s.binary(min_size=1, max_size=300))
    def test_fuzz_after_logon(self, junk: bytes) -> None:
        """Random frames after a logon are answered or close the connection; nothing is logged as a bug."""
        conn = Wire().connect().setup()
        conn.send_raw(junk)
        conn.frames()
        self.assertEqual(self.flushLoggedErrors(), [])

    @settings(max_examples=60)
    @given(s.integers(0, 0x13), s.binary(max_size=200))
    def test_fuzz_bodies(self, command: int, body: bytes) -> None:
        """Random bodies for every command, with a valid signed header."""
        conn = Wire().connect().setup()
        if command in (c.Command.NEGOTIATE, c.Command.CANCEL):
            return
        conn.send([conn.build(conn.header(command), body)])
        conn.wire.clock.advance(1)
        conn.frames()
        self.assertEqual(self.flushLoggedErrors(), [])


class ChainTests(SynchronousTestCase):
    """Compound rules as smbtorture's smb2.compound checks them."""

    def close_body(self, fid: tuple[int, int] = RELATED) -> bytes:
        return struct.pack("<HHIQQ", 24, 0, 0, *fid)

    def test_first_related_is_invalid(self) -> None:
        conn = Wire().connect().setup()
        rel = c.SMB2_FLAGS_RELATED_OPERATIONS
        conn.send(
            [
                conn.build(conn.header(c.Command.CREATE, flags=rel), conn.create_body("x")),
                conn.build(conn.header(c.Command.CLOSE, flags=rel), self.close_body()),
                conn.build(conn.header(c.Command.CLOSE), self.close_body()),
            ]
        )
        self.assertEqual(
            [r.status for r in conn.replies()],
            [st.STATUS_INVALID_PARAMETER, st.STATUS_INVALID_PARAMETER, st.STATUS_FILE_CLOSED],
        )

    def test_failure_does_not_spread_except_create(self) -> None:
        """A failed WRITE does not fail the related READ after it; an unrelated request drops the FileId."""
        conn = Wire().connect().setup()
        conn.close(conn.open("f"))
        rel = c.SMB2_FLAGS_RELATED_OPERATIONS
        read = struct.pack("<HBBIQQQIIIHH", 49, 0, 0, 1, 0, *RELATED, 0, 0, 0, 0, 0) + b"\x00"
        write = struct.pack("<HHIQQQIIHHI", 49, 112, 1, 0, *RELATED, 0, 0, 0, 0, 0) + b"x"
        conn.send(
            [
                conn.build(
                    conn.header(c.Command.CREATE), conn.create_body("f", access=c.FILE_READ_DATA)
                ),
                conn.build(conn.header(c.Command.WRITE, flags=rel), write),
                conn.build(conn.header(c.Command.READ, flags=rel), read),
                conn.build(conn.header(c.Command.CLOSE), self.close_body()),
                conn.build(conn.header(c.Command.CLOSE, flags=rel), self.close_body()),
            ]
        )
        self.assertEqual(
            [r.status for r in conn.replies()],
            [
                0,
                st.STATUS_ACCESS_DENIED,
                st.STATUS_END_OF_FILE,
                st.STATUS_FILE_CLOSED,
                st.STATUS_FILE_CLOSED,
            ],
        )

    def test_async_in_the_middle(self) -> None:
        """A request that would go asynchronous inside a compound fails with STATUS_INTERNAL_ERROR."""
        conn = Wire().connect().setup()
        rel = c.SMB2_FLAGS_RELATED_OPERATIONS
        notify = struct.pack("<HHIQQII", 32, 0, 4096, *RELATED, 0x17, 0)
        info = conn.query_info_body(RELATED, 1, 4)
        conn.send(
            [
                conn.build(
                    conn.header(c.Command.CREATE), conn.create_body("", access=c.GENERIC_READ)
                ),
                conn.build(conn.header(c.Command.CHANGE_NOTIFY, flags=rel), notify),
                conn.build(conn.header(c.Command.QUERY_INFO, flags=rel), info),
            ]
        )
        self.assertEqual([r.status for r in conn.replies()], [0, st.STATUS_INTERNAL_ERROR, 0])


def _read_body(fid: tuple[int, int], offset: int, length: int) -> bytes:
    return struct.pack("<HBBIQQQIIIHH", 49, 0, 0, length, offset, *fid, 0, 0, 0, 0, 0) + b"\x00"


class ReadPiecesTests(SynchronousTestCase):
    """
    A READ reply goes to the transport as its header, its fixed part and the
    data as the store read it, never joined; signed over the pieces.
    """

    def _file(self, conn: Conn, size: int) -> tuple[tuple[int, int], bytes]:
        data = os.urandom(size)
        fid = conn.open("r.bin")
        for pos in range(0, size, 65536):
            self.assertEqual(conn.write(fid, pos, data[pos : pos + 65536]).status, 0)
        return fid, data

    def test_data_sent_apart(self) -> None:
        """The data is a piece of its own in the transport's writeSequence, and the reply verifies."""
        for dialects in ((c.SMB_2_1,), (c.SMB_3_0,), (c.SMB_3_1_1,)):
            conn = Wire().connect()
            conn.negotiate(dialects)
            conn.login()
            conn.tree_connect()
            fid, data = self._file(conn, 300_000)
            writes: list[list[bytes]] = []
            real = conn.transport.writeSequence

            def spy(seq: list[bytes], real: Any = real, writes: Any = writes) -> None:
                writes.append(list(seq))
                real(seq)

            conn.transport.writeSequence = spy  # type: ignore[method-assign]
            r = conn.read(fid, 1000, 250_000)
            self.assertEqual(r.status, 0)
            self.assertEqual(Conn.read_data(r), data[1000:251_000])
            self.assertTrue(r.header.flags & c.SMB2_FLAGS_SIGNED)
            self.assertTrue(conn.signer.verify(r.raw, response=True))
            [pieces] = writes
            self.assertIn(data[1000:251_000], pieces)
            self.assertEqual([len(p) for p in pieces[:3]], [4, 64, 16])

    def test_compound_reads(self) -> None:
        """Two READs in a compound: the first padded, NextCommand right, both signed."""
        conn = Wire().connect()
        conn.setup()
        fid, data = self._file(conn, 200_000)
        conn.send(
            [
                conn.build(conn.header(c.Command.READ), _read_body(fid, 3, 1001)),
                conn.build(conn.header(c.Command.READ, credit_charge=2), _read_body(fid, 0, 70001)),
                conn.build(conn.header(c.Command.READ), _read_body(fid, 199_999, 10)),
            ]
        )
        [frame] = conn.frames()
        first, second = (struct.unpack_from("<I", frame, off)[0] for off in (20, 20 + 1088))
        self.assertEqual(first, 64 + 16 + 1001 + 7)
        self.assertEqual(second, 64 + 16 + 70001 + 7)
        replies = []
        pos = 0
        while True:
            h = Header.unpack(frame[pos:])
            end = pos + h.next_command if h.next_command else len(frame)
            replies.append(frame[pos:end])
            if not h.next_command:
                break
            pos = end
        self.assertEqual([len(r) % 8 for r in replies], [0, 0, 0])
        got = [r[80 : 80 + struct.unpack_from("<I", r, 68)[0]] for r in replies]
        self.assertEqual(got, [data[3:1004], data[0:70001], data[199_999:]])
        for r in replies:
            self.assertTrue(conn.signer.verify(r, response=True))

    @settings(max_examples=60, deadline=None)
    @given(
        s.lists(s.binary(max_size=200), max_size=5),
        s.booleans(),
        s.booleans(),
        s.booleans(),
        s.sampled_from([c.SMB_2_1, c.SMB_3_0, c.SMB_3_1_1]),
    )
    def test_pieces_frame_as_joined(
        self, pieces: list[bytes], last: bool, pad: bool, signed: bool, dialect: int
    ) -> None:
        """A body in pieces makes the same reply bytes as the same body joined."""
        conn = Wire().connect()
        conn.negotiate((dialect,))
        conn.login()
        proto = conn.proto
        proto._grant = lambda requested: 1
        session = next(iter(proto.sessions.values()))
        flags = c.SMB2_FLAGS_SIGNED if signed else 0
        header = conn.header(c.Command.READ, flags=flags)
        req = Request(header, memoryview(header.pack()), session=session)
        in_parts = proto._response(req, 0, [bytes(p) for p in pieces], last=last, pad=pad)
        joined = proto._response(req, 0, b"".join(pieces), last=last, pad=pad)
        self.assertEqual(b"".join(in_parts), b"".join(joined))
        self.assertEqual(bool(in_parts[0][16] & c.SMB2_FLAGS_SIGNED), signed)


class FileIdTests(SynchronousTestCase):
    """A FileId's persistent part: random, unrepeated, and cheap to draw."""

    def test_random_ids_drawn_in_bulk(self) -> None:
        """
        Opens draw their random persistent ids from the kernel in bulk: one
        C{getrandom} per 256 opens, where each open made one (a system call
        per CREATE; docs/bench.rst, seventh round).
        """
        conn = Wire().connect().setup()
        conn.sign = False
        real = os.urandom
        drawn = []

        def urandom(n: int) -> bytes:
            drawn.append(n)
            return real(n)

        self.patch(os, "urandom", urandom)
        ids = []
        for i in range(300):
            fid = conn.open(f"f{i}", disposition=c.FILE_OVERWRITE_IF)
            ids.append(fid[0])
            conn.close(fid)
        self.assertLessEqual(len(drawn), 2)
        self.assertEqual(len(set(ids)), 300)
        self.assertTrue(all(0 < p < 2**63 for p in ids))


class RequestCostTests(SynchronousTestCase):
    """
    What one file costs the server in Python calls (issue 18), counted inside
    the connection's C{dataReceived} (the server alone: the test client's
    own work is outside it), as a file is put the way smbclient puts one,
    stat-ed the way smbprotocol does with a lease, and deleted the way
    smbclient's C{del} does. The bounds sit between the costs before (put
    460, leased stat 528 to 543, delete 904 calls) and after (435, 495, 838)
    the eighth round of docs/bench.rst "SMB: the per-request floor" (request
    bodies read with one unpack, no frozen attrs instance per parsed body,
    no origin built for an open that changes nothing); the leased stat's
    count moves by a few calls from run to run.
    """

    FILES = 20

    def setUp(self) -> None:
        self.wire = Wire()
        self.conn = self.wire.connect().setup()
        self.conn.sign = False  # as smbclient runs
        self.sealed = self.wire.connect().setup(encrypt=True)  # as smbprotocol runs
        self.calls = 0
        self.conn.close(self.conn.open("d", options=c.FILE_DIRECTORY_FILE))

    def counted(self, conn: Conn) -> None:
        """Count the Python calls the server makes for C{conn}'s requests."""
        real = conn.proto.dataReceived

        def count(frame: Any, event: str, arg: Any) -> None:
            if event == "call":
                self.calls += 1

        def data(raw: bytes) -> None:
            before = sys.getprofile()
            sys.setprofile(count)
            try:
                real(raw)
            finally:
                sys.setprofile(before)

        conn.proto.dataReceived = data

    def per_file(self, conn: Conn, one: Any) -> float:
        one(0)  # the first file warms what is kept per connection
        self.counted(conn)
        self.calls = 0
        for i in range(1, self.FILES):
            one(i)
        return self.calls / (self.FILES - 1)

    def put(self, i: int) -> None:
        conn = self.conn
        fid = conn.open(f"d\\f{i}", disposition=c.FILE_OVERWRITE_IF, access=0x0012019F)
        self.assertEqual(conn.write(fid, 0, b"x" * 4096).status, 0)
        conn.close(fid)

    def test_put(self) -> None:
        self.assertLess(self.per_file(self.conn, self.put), 448)

    def test_leased_stat(self) -> None:
        for i in range(self.FILES):
            self.put(i)
        enc = self.sealed

        def stat(i: int) -> None:
            ctx = struct.pack("<16sIIQ", b"%016d" % i, 7, 0, 0)
            body = enc.create_body(
                f"d\\f{i}",
                contexts=[(b"RqLs", ctx)],
                oplock=0xFF,
                disposition=c.FILE_OPEN,
                access=0x0012019F,
            )
            r = enc.call(c.Command.CREATE, body)
            self.assertEqual(r.status, 0)
            fid = r.file_id()
            self.assertEqual(enc.query_info(fid, 1, 4).status, 0)
            enc.close(fid)

        self.assertLess(self.per_file(enc, stat), 515)

    def test_smbclient_delete(self) -> None:
        for i in range(self.FILES):
            self.put(i)
        conn = self.conn

        def delete(i: int) -> None:
            d = conn.open("d", options=c.FILE_DIRECTORY_FILE, disposition=c.FILE_OPEN)
            r = conn.query_directory(d, f"f{i}", flags=c.SMB2_RESTART_SCANS)
            self.assertEqual(r.status, 0)
            self.assertEqual(conn.query_directory(d, f"f{i}").status, st.STATUS_NO_MORE_FILES)
            conn.close(d)
            fid = conn.open(
                f"d\\f{i}",
                options=c.FILE_DELETE_ON_CLOSE | c.FILE_NON_DIRECTORY_FILE,
                disposition=c.FILE_OPEN,
                access=0x00110080,
            )
            conn.close(fid)

        self.assertLess(self.per_file(conn, delete), 870)
        d = conn.open("d", options=c.FILE_DIRECTORY_FILE, disposition=c.FILE_OPEN)
        self.assertEqual(conn.list(d), [".", ".."])
