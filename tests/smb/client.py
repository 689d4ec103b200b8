"""
A small SMB2/3 client for unit tests: drives an L{SMBConnection} on a
StringTransport, over a memory vfs, with a Clock. Everything is synchronous
(the memory backend answers at once), so tests read replies right after
sending.

Requests are packed here with C{struct}, written from MS-SMB2 independently
of the server's codec; authentication is pyspnego's NTLM initiator.
"""

from __future__ import annotations

import struct
from typing import Any

import spnego
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from claudefs_gateway.core.drain import Activity
from claudefs_gateway.core.metrics import Metrics, RequestMetrics
from claudefs_gateway.fstypes import SetAttrs
from claudefs_gateway.smb import constants as c
from claudefs_gateway.smb.crypto import PreauthHash, Sealer, derive_keys, make_signer
from claudefs_gateway.smb.header import Header, TransformHeader
from claudefs_gateway.smb.security import SID
from claudefs_gateway.smb.server import SMBFactory
from claudefs_gateway.testing.vfs import MemoryVFS
from claudefs_gateway.vfs import LockTable
from claudefs_gateway.vfs.identity import User, nt_hash

PASSWORD = "Pass1"
ALL_ONES = 0xFFFFFFFFFFFFFFFF
RELATED = (ALL_ONES, ALL_ONES)

CONFIG = """
exports: [{path: /export, name: share, root_squash: false}, {path: /ro, name: ro, read_only: true}]
"""


def users() -> list[User]:
    h = nt_hash(PASSWORD)
    return [
        User("alice", 1000, 1000, (), h),
        User("bob", 1001, 1001, (), h),
        User("root", 0, 0, (), h),
    ]


class Wire:
    """One server (factory) and helpers to open connections to it."""

    def __init__(
        self, config: str = CONFIG, metrics: Metrics | None = None, locks: bool = True
    ) -> None:
        self.mvfs = MemoryVFS(config, users=users())
        self.clock = self.mvfs.clock
        # The vfs's cross-protocol lock table, as the service tree gives it one.
        self.locks = LockTable(self.clock) if locks else None
        self.mvfs.vfs.locks = self.locks
        self.metrics = metrics or Metrics()
        self.activity = Activity("smb", self.metrics)
        self.factory = SMBFactory(
            self.mvfs.config,
            lambda: defer.succeed(self.mvfs.vfs),
            self.clock,
            metrics=RequestMetrics(self.metrics, "smb"),
            activity=self.activity,
            domain_sid=SID.parse("S-1-5-21-1-2-3"),
            computer="GW",
        )
        root = self.mvfs.caller(0, 0)
        # The share's root is writable by every test user, as a share admin would make it.
        self.fired(self.mvfs.vfs.setattr(root, self.mvfs.root(), SetAttrs(mode=0o777)))

    @staticmethod
    def fired(d: defer.Deferred[Any]) -> Any:
        out: list[Any] = []
        d.addBoth(out.append)
        assert out, "Deferred has not fired"
        if isinstance(out[0], Exception) or hasattr(out[0], "raiseException"):
            out[0].raiseException()
        return out[0]

    def connect(self) -> Conn:
        proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        proto.makeConnection(transport)
        return Conn(self, proto, transport)


class Reply:
    def __init__(self, header: Header, raw: bytes) -> None:
        self.header = header
        self.raw = raw
        self.body = raw[64:]

    @property
    def status(self) -> int:
        return self.header.status

    def u16(self, off: int) -> int:
        return int(struct.unpack_from("<H", self.body, off)[0])

    def u32(self, off: int) -> int:
        return int(struct.unpack_from("<I", self.body, off)[0])

    def u64(self, off: int) -> int:
        return int(struct.unpack_from("<Q", self.body, off)[0])

    def buffer(self) -> bytes:
        """The buffer of a QUERY_INFO / QUERY_DIRECTORY / CHANGE_NOTIFY reply."""
        off, length = self.u16(2), self.u32(4)
        return self.raw[off : off + length]

    def file_id(self) -> tuple[int, int]:
        """The FileId of a CREATE reply."""
        return (self.u64(64), self.u64(72))


class Conn:
    """One client connection."""

    def __init__(self, wire: Wire, proto: Any, transport: StringTransport) -> None:
        self.wire = wire
        self.proto = proto
        self.transport = transport
        self.mid = 0
        self.dialect = 0
        self.session_id = 0
        self.tree_id = 0
        self.signer: Any = None
        self.sealer: Any = None
        self.sign = False
        self.encrypt = False
        self.cipher = 0
        self.signing_alg = c.HMAC_SHA256
        self.preauth: PreauthHash | None = None
        self.session_key = b""
        self.credits = 1
        # The ClientGuid of NEGOTIATE (leases are scoped by it).
        self.client_guid = b"G" * 16
        # Put in every request header: the ChannelSequence (the Status field's
        # low 16 bits, SMB 3.x) and extra flags (REPLAY_OPERATION).
        self.channel_sequence = 0
        self.extra_flags = 0

    # -- raw I/O ------------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        self.proto.dataReceived(len(data).to_bytes(4, "big") + data)

    def frames(self) -> list[bytes]:
        data = self.transport.value()
        self.transport.clear()
        out = []
        while data:
            n = int.from_bytes(data[1:4], "big")
            out.append(data[4 : 4 + n])
            data = data[4 + n :]
        return out

    def replies(self) -> list[Reply]:
        out = []
        for frame in self.frames():
            if frame[:4] == c.TRANSFORM_MAGIC:
                h = TransformHeader.unpack(frame)
                frame = _client_decrypt(self, h, frame)
            pos = 0
            while True:
                h = Header.unpack(frame[pos:])
                end = pos + h.next_command if h.next_command else len(frame)
                out.append(Reply(h, frame[pos:end]))
                self.credits += h.credits
                if not h.next_command:
                    break
                pos = end
        return out

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    # -- requests -------------------------------------------------------------------------

    def header(
        self,
        command: int,
        *,
        credit_charge: int = 1,
        credits: int = 32,
        flags: int = 0,
        message_id: int | None = None,
        tree_id: int | None = None,
        session_id: int | None = None,
        async_id: int = 0,
    ) -> Header:
        if message_id is None:
            message_id = self.mid
            self.mid += max(credit_charge, 1)
            if command != c.Command.CANCEL:
                self.credits -= max(credit_charge, 1)
        return Header(
            command,
            status=self.channel_sequence,
            credit_charge=credit_charge,
            credits=credits,
            flags=flags | self.extra_flags,
            message_id=message_id,
            async_id=async_id,
            tree_id=self.tree_id if tree_id is None else tree_id,
            session_id=self.session_id if session_id is None else session_id,
        )

    def build(self, header: Header, body: bytes, sign: bool | None = None) -> bytes:
        """A request; marked for signing (signed by L{send}, once NextCommand is known)."""
        msg = bytearray(header.pack() + body)
        if (self.sign if sign is None else sign) and self.signer is not None:
            msg[16:20] = struct.pack("<I", header.flags | c.SMB2_FLAGS_SIGNED)
            msg[48:64] = self.signer.sign(
                msg, response=False, cancel=header.command == c.Command.CANCEL
            )
        return bytes(msg)

    def send(self, messages: list[bytes], encrypt: bool | None = None) -> None:
        parts = []
        for i, m in enumerate(messages):
            m = bytearray(m)
            if i + 1 < len(messages):
                m += b"\x00" * ((-len(m)) % 8)
                m[20:24] = struct.pack("<I", len(m))
                if m[16] & c.SMB2_FLAGS_SIGNED and self.signer is not None:
                    m[48:64] = self.signer.sign(m, response=False)
            parts.append(bytes(m))
        data = b"".join(parts)
        if (self.encrypt if encrypt is None else encrypt) and self.sealer is not None:
            data = self.sealer.encrypt(data, self.session_id)
        self.send_raw(data)

    def call(
        self,
        command: int,
        body: bytes,
        *,
        sign: bool | None = None,
        encrypt: bool | None = None,
        **kw: Any,
    ) -> Reply:
        msg = self.build(self.header(command, **kw), body, sign)
        self.send([msg], encrypt)
        replies = self.replies()
        assert replies, f"no reply to {c.Command(command).name}"
        return replies[-1]

    # -- NEGOTIATE / SESSION_SETUP / TREE_CONNECT ------------------------------------------

    def negotiate(
        self,
        dialects: tuple[int, ...] = c.DIALECTS,
        *,
        ciphers: tuple[int, ...] = (c.AES_128_GCM, c.AES_128_CCM, c.AES_256_GCM, c.AES_256_CCM),
        signing: tuple[int, ...] | None = (c.AES_GMAC, c.AES_CMAC, c.HMAC_SHA256),
        security_mode: int = c.SMB2_NEGOTIATE_SIGNING_ENABLED,
        capabilities: int = c.SMB2_GLOBAL_CAP_ENCRYPTION | c.SMB2_GLOBAL_CAP_LARGE_MTU,
        contexts: list[tuple[int, bytes]] | None = None,
    ) -> Reply:
        dial = b"".join(struct.pack("<H", d) for d in dialects)
        fixed_len = 36 + len(dial)
        ctx_blob = b""
        ctx_offset = 0
        if c.SMB_3_1_1 in dialects:
            if contexts is None:
                contexts = [
                    (
                        c.SMB2_PREAUTH_INTEGRITY_CAPABILITIES,
                        struct.pack("<HHH", 1, 32, c.SHA_512) + b"s" * 32,
                    )
                ]
                if ciphers:
                    contexts.append(
                        (
                            c.SMB2_ENCRYPTION_CAPABILITIES,
                            struct.pack(f"<H{len(ciphers)}H", len(ciphers), *ciphers),
                        )
                    )
                if signing:
                    contexts.append(
                        (
                            c.SMB2_SIGNING_CAPABILITIES,
                            struct.pack(f"<H{len(signing)}H", len(signing), *signing),
                        )
                    )
            ctx_offset = (64 + fixed_len + 7) & ~7
            blob = bytearray()
            for i, (t, d) in enumerate(contexts):
                blob += struct.pack("<HHI", t, len(d), 0) + d
                if i + 1 < len(contexts):
                    blob += b"\x00" * ((-len(blob)) % 8)
            ctx_blob = b"\x00" * (ctx_offset - 64 - fixed_len) + bytes(blob)
            tail = struct.pack("<IHH", ctx_offset, len(contexts), 0)
        else:
            tail = b"\x00" * 8
        body = (
            struct.pack(
                "<HHHHI16s", 36, len(dialects), security_mode, 0, capabilities, self.client_guid
            )
            + tail
            + dial
            + ctx_blob
        )
        msg = self.build(self.header(c.Command.NEGOTIATE, credit_charge=0), body, sign=False)
        self.send([msg], encrypt=False)
        replies = self.replies()
        r = replies[-1]
        if r.status == 0:
            self.dialect = r.u16(4)
            if self.dialect == c.SMB_3_1_1:
                self.preauth = PreauthHash()
                self.preauth.update(msg)
                self.preauth.update(r.raw)
                off, count = r.u32(60), r.u16(6)
                pos = off
                for _ in range(count):
                    t, n = struct.unpack_from("<HH", r.raw, pos)
                    data = r.raw[pos + 8 : pos + 8 + n]
                    if t == c.SMB2_ENCRYPTION_CAPABILITIES:
                        self.cipher = struct.unpack_from("<H", data, 2)[0]
                    if t == c.SMB2_SIGNING_CAPABILITIES:
                        self.signing_alg = struct.unpack_from("<H", data, 2)[0]
                    pos = (pos + 8 + n + 7) & ~7
                if not signing:
                    self.signing_alg = c.AES_CMAC
            elif self.dialect >= c.SMB_3_0:
                self.signing_alg = c.AES_CMAC
                self.cipher = c.AES_128_CCM if r.u32(24) & c.SMB2_GLOBAL_CAP_ENCRYPTION else 0
        return r

    def session_setup(
        self, token: bytes, security_mode: int = 1, flags: int = 0
    ) -> tuple[Reply, bytes]:
        body = struct.pack("<HBBIIHHQ", 25, flags, security_mode, 0, 0, 88, len(token), 0) + token
        msg = self.build(self.header(c.Command.SESSION_SETUP), body, sign=False)
        if self.preauth is not None:
            self.preauth.update(msg)
        self.send([msg], encrypt=False)
        r = self.replies()[-1]
        self.session_id = r.header.session_id
        if r.status == 0xC0000016 and self.preauth is not None:
            self.preauth.update(r.raw)
        off, n = r.u16(4), r.u16(6)
        return r, r.raw[off : off + n] if n else b""

    def login(
        self,
        user: str = "alice",
        password: str = PASSWORD,
        *,
        sign: bool = True,
        encrypt: bool = False,
        raw_ntlm: bool = False,
        security_mode: int = 1,
    ) -> Reply:
        if not self.dialect:
            self.negotiate()
        ctx = spnego.client(user, password, protocol="ntlm" if raw_ntlm else "negotiate")
        token = ctx.step(None)
        while True:
            r, out = self.session_setup(token, security_mode)
            if r.status != 0xC0000016:
                break
            token = ctx.step(out)
        if r.status == 0:
            if out:
                ctx.step(out)
            self.session_key = ctx.session_key
            keys = derive_keys(
                self.dialect,
                ctx.session_key,
                self.preauth.value if self.preauth else None,
                self.cipher,
            )
            self.signer = make_signer(self.signing_alg, keys.signing)
            if self.cipher:
                self.sealer = Sealer(self.cipher, keys.decryption, keys.encryption)
            self.sign = sign
            self.encrypt = encrypt
        return r

    def tree_connect(self, share: str = "share", **kw: Any) -> Reply:
        path = f"\\\\GW\\{share}".encode("utf-16-le")
        body = struct.pack("<HHHH", 9, 0, 72, len(path)) + path
        r = self.call(c.Command.TREE_CONNECT, body, tree_id=0, **kw)
        if r.status == 0:
            self.tree_id = r.header.tree_id
        return r

    def setup(self, user: str = "alice", share: str = "share", **kw: Any) -> Conn:
        self.negotiate()
        r = self.login(user, **kw)
        assert r.status == 0, hex(r.status)
        r = self.tree_connect(share)
        assert r.status == 0, hex(r.status)
        return self

    # -- file commands --------------------------------------------------------------------

    def create_body(
        self,
        name: str,
        *,
        access: int = c.GENERIC_READ | c.GENERIC_WRITE | c.DELETE,
        disposition: int = c.FILE_OPEN_IF,
        options: int = 0,
        share: int = c.FILE_SHARE_READ | c.FILE_SHARE_WRITE | c.FILE_SHARE_DELETE,
        attributes: int = 0,
        contexts: list[tuple[bytes, bytes]] | None = None,
        oplock: int = 0,
    ) -> bytes:
        raw = name.encode("utf-16-le")
        ctx = b""
        if contexts:
            parts = []
            for i, (n, d) in enumerate(contexts):
                data_off = (16 + len(n) + 7) & ~7 if d else 0
                e = struct.pack("<IHHHHI", 0, 16, len(n), 0, data_off, len(d)) + n
                if d:
                    e += b"\x00" * (data_off - len(e)) + d
                if i + 1 < len(contexts):
                    e += b"\x00" * ((-len(e)) % 8)
                    e = struct.pack("<I", len(e)) + e[4:]
                parts.append(e)
            ctx = b"".join(parts)
        name_off = 120
        buf = raw or b"\x00"
        ctx_off = (name_off + len(buf) + 7) & ~7 if ctx else 0
        body = (
            struct.pack(
                "<HBBIQQIIIIIHHII",
                57,
                0,
                oplock,
                2,
                0,
                0,
                access,
                attributes,
                share,
                disposition,
                options,
                name_off,
                len(raw),
                ctx_off,
                len(ctx),
            )
            + buf
        )
        if ctx:
            body += b"\x00" * (ctx_off - 64 - len(body)) + ctx
        return body

    def create(self, name: str, encrypt: bool | None = None, **kw: Any) -> Reply:
        return self.call(c.Command.CREATE, self.create_body(name, **kw), encrypt=encrypt)

    def open(self, name: str, **kw: Any) -> tuple[int, int]:
        r = self.create(name, **kw)
        assert r.status == 0, f"create {name}: {r.status:#x}"
        return r.file_id()

    def close(self, fid: tuple[int, int], flags: int = 0) -> Reply:
        return self.call(c.Command.CLOSE, struct.pack("<HHIQQ", 24, flags, 0, *fid))

    def write(
        self,
        fid: tuple[int, int],
        offset: int,
        data: bytes,
        charge: int | None = None,
        flags: int = 0,
    ) -> Reply:
        body = (
            struct.pack("<HHIQQQIIHHI", 49, 112, len(data), offset, *fid, 0, 0, 0, 0, flags) + data
        )
        if charge is None:
            charge = max(1, (len(data) - 1) // 65536 + 1)
        return self.call(c.Command.WRITE, body, credit_charge=charge)

    def read(
        self,
        fid: tuple[int, int],
        offset: int,
        length: int,
        charge: int | None = None,
        minimum: int = 0,
    ) -> Reply:
        body = (
            struct.pack("<HBBIQQQIIIHH", 49, 0, 0, length, offset, *fid, minimum, 0, 0, 0, 0)
            + b"\x00"
        )
        if charge is None:
            charge = max(1, (length - 1) // 65536 + 1)
        return self.call(c.Command.READ, body, credit_charge=charge)

    @staticmethod
    def read_data(r: Reply) -> bytes:
        off, n = r.body[2], r.u32(4)
        return r.raw[off : off + n]

    def flush(self, fid: tuple[int, int]) -> Reply:
        return self.call(c.Command.FLUSH, struct.pack("<HHIQQ", 24, 0, 0, *fid))

    def query_directory_body(
        self,
        fid: tuple[int, int],
        pattern: str = "*",
        info_class: int = 37,
        flags: int = 0,
        length: int = 65536,
    ) -> bytes:
        raw = pattern.encode("utf-16-le")
        return struct.pack("<HBBIQQHHI", 33, info_class, flags, 0, *fid, 96, len(raw), length) + (
            raw or b"\x00"
        )

    def query_directory(self, fid: tuple[int, int], pattern: str = "*", **kw: Any) -> Reply:
        return self.call(c.Command.QUERY_DIRECTORY, self.query_directory_body(fid, pattern, **kw))

    def list(self, fid: tuple[int, int], pattern: str = "*", info_class: int = 37) -> list[str]:
        names: list[str] = []
        flags = c.SMB2_RESTART_SCANS
        while True:
            r = self.query_directory(fid, pattern, info_class=info_class, flags=flags)
            flags = 0
            if r.status != 0:
                return names
            names += parse_names(r.buffer(), info_class)

    def query_info_body(
        self,
        fid: tuple[int, int],
        info_type: int,
        info_class: int,
        length: int = 65536,
        additional: int = 0,
        input: bytes = b"",
    ) -> bytes:
        return struct.pack(
            "<HBBIHHIIIQQ",
            33 + 8,
            info_type,
            info_class,
            length,
            104 if input else 0,
            0,
            len(input),
            additional,
            0,
            *fid,
        ) + (input or b"\x00")

    def query_info(self, fid: tuple[int, int], info_type: int, info_class: int, **kw: Any) -> Reply:
        return self.call(
            c.Command.QUERY_INFO, self.query_info_body(fid, info_type, info_class, **kw)
        )

    def set_info(
        self,
        fid: tuple[int, int],
        info_type: int,
        info_class: int,
        data: bytes,
        additional: int = 0,
    ) -> Reply:
        body = (
            struct.pack("<HBBIHHIQQ", 33, info_type, info_class, len(data), 96, 0, additional, *fid)
            + data
        )
        return self.call(c.Command.SET_INFO, body)

    def lock(self, fid: tuple[int, int], locks: list[tuple[int, int, int]]) -> Reply:
        body = struct.pack("<HHIQQ", 48, len(locks), 0, *fid)
        for off, length, flags in locks:
            body += struct.pack("<QQII", off, length, flags, 0)
        return self.call(c.Command.LOCK, body)

    def ioctl(
        self,
        fid: tuple[int, int],
        code: int,
        data: bytes = b"",
        max_out: int = 65536,
        flags: int = 1,
    ) -> Reply:
        body = (
            struct.pack(
                "<HHIQQIIIIIIII",
                57,
                0,
                code,
                *fid,
                120 if data else 0,
                len(data),
                0,
                0,
                0,
                max_out,
                flags,
                0,
            )
            + data
        )
        return self.call(c.Command.IOCTL, body)

    def notify(
        self, fid: tuple[int, int], filter: int = 0x17, flags: int = 0, length: int = 4096
    ) -> Reply:
        body = struct.pack("<HHIQQII", 32, flags, length, *fid, filter, 0)
        return self.call(c.Command.CHANGE_NOTIFY, body)


def parse_names(buf: bytes, info_class: int = 37) -> list[str]:
    """Names in a directory listing buffer."""
    name_at = {1: 64, 2: 68, 3: 94, 37: 104, 38: 80, 12: 12}[info_class]
    len_at = {12: 8}.get(info_class, 60)
    out = []
    pos = 0
    while True:
        nxt = struct.unpack_from("<I", buf, pos)[0]
        n = struct.unpack_from("<I", buf, pos + len_at)[0]
        out.append(buf[pos + name_at : pos + name_at + n].decode("utf-16-le"))
        if not nxt:
            return out
        pos += nxt


def _client_decrypt(conn: Conn, h: TransformHeader, frame: bytes) -> bytes:
    assert conn.sealer is not None
    return conn.sealer.decrypt(h, frame)
