"""
Hostile clients for the soak workload (issue 19), each one real protocol
client or raw socket behaving badly on purpose:

  - L{smb_non_reader}: smbprotocol logs on, opens a file, then queues READs of
    64 KiB and never reads a reply (its receiving thread is stalled);
  - L{nfs_non_reader}: NFSv3 READ calls of 1 MiB pipelined on a raw socket, unread;
  - L{s3_non_reader}: pipelined GETs of a large object, unread;
  - L{idle}: connects and says nothing; L{half_sent}: sends part of a message;
  - L{malformed}: a stream of garbage frames for every protocol.

Each returns an object with C{close()}; nothing here is a unit test.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import threading
import uuid
from typing import Any

KiB = 1024
_names = itertools.count()
S3_KEY = ("benchkey", "benchsecret")


class Held:
    """Sockets (and whatever keeps them alive) held open until C{close}."""

    def __init__(self, socks: list[socket.socket], keep: Any = None) -> None:
        self.socks = socks
        self.keep = keep

    def close(self) -> None:
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass
        self.socks = []


def _connect(host: str, port: int, rcvbuf: int | None = 16 * KiB) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        # A small receive window: the gateway's replies back up into its own
        # memory quickly, which is what the bound must stop.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect((host, port))
    return s


# -- SMB ---------------------------------------------------------------------------------


def smb_session(ep: dict[str, Any], file_size: int = 1024 * KiB) -> Any:
    """An smbprotocol connection, session, tree and an open file of C{file_size} bytes."""
    from smbprotocol.connection import Connection
    from smbprotocol.open import (
        CreateDisposition,
        CreateOptions,
        FilePipePrinterAccessMask,
        ImpersonationLevel,
        Open,
        ShareAccess,
    )
    from smbprotocol.session import Session
    from smbprotocol.tree import TreeConnect

    conn = Connection(uuid.uuid4(), ep["host"], ep["smb_port"])
    conn.connect()
    sess = Session(conn, ep["user"], ep["password"], require_encryption=False)
    sess.connect()
    tree = TreeConnect(sess, rf"\\{ep['host']}\{ep['share']}")
    tree.connect()
    f = Open(tree, f"abuse-{uuid.uuid4().hex[:8]}.bin")
    f.create(
        ImpersonationLevel.Impersonation,
        FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE,
        0,
        ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE,
        CreateDisposition.FILE_OVERWRITE_IF,
        CreateOptions.FILE_NON_DIRECTORY_FILE,
    )
    chunk = os.urandom(64 * KiB)
    for off in range(0, file_size, len(chunk)):
        f.write(chunk, off)
    return conn, sess, tree, f


def smb_non_reader(ep: dict[str, Any], reads: int = 1000, size: int = 64 * KiB) -> Held:
    """
    Log on with smbprotocol, gather credits, then stall its receiving thread
    and queue C{reads} READs of C{size} bytes whose replies are never read.
    """
    from smbprotocol.connection import SMB2Echo
    from smbprotocol.open import SMB2ReadRequest

    conn, sess, tree, f = smb_session(ep)
    # Ask for credits until the window covers the READs (the server grants what it allows).
    while conn.sequence_window["high"] - conn.sequence_window["low"] < reads + 8:
        before = conn.sequence_window["high"]
        conn.echo(sid=sess.session_id, credit_request=min(512, reads))
        if conn.sequence_window["high"] == before:
            break
    stall = threading.Event()
    transport = conn.transport
    real_recv = transport.recv

    def stalled(timeout: Any) -> Any:
        stall.wait()
        return real_recv(timeout)

    transport.recv = stalled
    # The receiving thread is in recv: one echo lets it return once and stall.
    conn.send(SMB2Echo(), sid=sess.session_id)
    sent = 0
    for i in range(reads):
        if conn.sequence_window["high"] - conn.sequence_window["low"] < 1:
            break
        req = SMB2ReadRequest()
        req["length"] = size
        req["offset"] = (i * size) % (1024 * KiB)
        req["file_id"] = f.file_id
        conn.send(req, sid=sess.session_id, tid=tree.tree_connect_id)
        sent += 1
    return Held([transport._sock], keep=(conn, sess, tree, f, stall, sent))


# -- NFS (raw ONC RPC over TCP) -------------------------------------------------------------


def _rpc_call(xid: int, prog: int, vers: int, proc: int, args: bytes, uid: int = 0) -> bytes:
    """One ONC RPC call record, AUTH_SYS as C{uid} (RFC 5531)."""
    mach = b"abuse\0\0\0"
    body = struct.pack(">II", 0, 5) + mach + struct.pack(">III", uid, uid, 0)
    cred = struct.pack(">II", 1, len(body)) + body
    verf = struct.pack(">II", 0, 0)
    msg = struct.pack(">IIIIII", xid, 0, 2, prog, vers, proc) + cred + verf + args
    return struct.pack(">I", 0x80000000 | len(msg)) + msg


def nfs_root_handle(host: str, mount_port: int, export: str) -> bytes:
    """MOUNT v3 MNT of C{export}: its file handle."""
    s = socket.create_connection((host, mount_port))
    try:
        path = export.encode()
        args = struct.pack(">I", len(path)) + path + b"\0" * (-len(path) % 4)
        s.sendall(_rpc_call(1, 100005, 3, 1, args))
        hdr = _recv_exact(s, 4)
        rec = _recv_exact(s, struct.unpack(">I", hdr)[0] & 0x7FFFFFFF)
        # xid, REPLY, MSG_ACCEPTED, verf(flavor,len=0), SUCCESS, status
        status = struct.unpack_from(">I", rec, 24)[0]
        if status != 0:
            raise RuntimeError(f"MNT failed: {status}")
        n = struct.unpack_from(">I", rec, 28)[0]
        return bytes(rec[32 : 32 + n])
    finally:
        s.close()


def _recv_exact(s: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        b = s.recv(n - len(out))
        if not b:
            raise ConnectionError("closed")
        out += b
    return bytes(out)


def nfs_non_reader(ep: dict[str, Any], calls: int = 1000, size: int = 1024 * KiB) -> Held:
    """NFSv3 READs of C{size} bytes on the export's root handle... of a file, pipelined, unread."""
    fh = nfs_root_handle(ep["host"], ep["mount_port"], ep["export"])
    s = _connect(ep["host"], ep["nfs_port"])
    fhx = struct.pack(">I", len(fh)) + fh + b"\0" * (-len(fh) % 4)
    # READ of a directory handle answers an error at once; READDIR with a big
    # count makes a real reply. Use GETATTR-free READDIRPLUS (proc 17).
    args = fhx + struct.pack(">Q", 0) + b"\0" * 8 + struct.pack(">II", 8192, size)
    s.setblocking(False)
    sent = 0
    for i in range(calls):
        try:
            s.send(_rpc_call(1000 + i, 100003, 3, 17, args))
            sent += 1
        except BlockingIOError:
            break
    return Held([s], keep=sent)


def rpc(s: socket.socket, xid: int, proc: int, args: bytes, prog: int = 100003) -> bytes:
    s.sendall(_rpc_call(xid, prog, 3, proc, args))
    out = b""
    while True:
        hdr = _recv_exact(s, 4)
        (mark,) = struct.unpack(">I", hdr)
        out += _recv_exact(s, mark & 0x7FFFFFFF)
        if mark & 0x80000000:
            return out[24:]  # past xid, REPLY, ACCEPTED, verf, SUCCESS


def opaque(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b + b"\0" * (-len(b) % 4)


def nfs_file(host: str, port: int, mount_port: int) -> tuple[socket.socket, bytes]:
    """A connection and the handle of a 1 MiB file it wrote (NFSv3 CREATE, WRITE)."""
    root = nfs_root_handle(host, mount_port, "/export")
    s = socket.create_connection((host, port))
    name = f"f{os.getpid()}-{next(_names)}".encode()
    # CREATE3args: dirop (dir, name), createhow UNCHECKED + sattr3 (nothing set).
    res = rpc(s, 1, 8, opaque(root) + opaque(name) + struct.pack(">I", 0) + b"\0" * 24)
    status, follows, n = struct.unpack_from(">III", res, 0)
    assert status == 0 and follows, (status, follows)
    fh = res[12 : 12 + n]
    data = b"x" * (1 << 20)
    res = rpc(s, 2, 7, opaque(fh) + struct.pack(">QII", 0, len(data), 2) + opaque(data))
    assert struct.unpack_from(">I", res)[0] == 0
    return s, fh


def s3_sign(host: str, port: int, method: str, path: str, body: bytes = b"") -> dict[str, str]:
    """SigV4 headers (botocore's signer) for one request with C{body}."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    req = AWSRequest(method=method, url=f"http://{host}:{port}{path}", data=body)
    S3SigV4Auth(Credentials(*S3_KEY), "s3", "us-east-1").add_auth(req)
    return dict(req.headers.items()) | {"Host": f"{host}:{port}"}


def s3_request(
    s: socket.socket, host: str, port: int, method: str, path: str, body: bytes = b""
) -> int:
    hdrs = s3_sign(host, port, method, path, body)
    hdrs["Content-Length"] = str(len(body))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    s.sendall(head.encode() + b"\r\n" + body)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head_b, _, rest = buf.partition(b"\r\n\r\n")
    status = int(head_b.split()[1])
    length = 0
    chunked = False
    for line in head_b.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
        if k.strip().lower() == b"transfer-encoding" and b"chunked" in v.lower():
            chunked = True
    if method == "HEAD":
        return status
    if chunked:
        while not rest.endswith(b"0\r\n\r\n"):
            rest += s.recv(65536)
        return status
    while len(rest) < length:
        rest += s.recv(65536)
    return status


# -- S3 (raw HTTP) -----------------------------------------------------------------------------


def s3_non_reader(ep: dict[str, Any], key_url: str, headers_for: Any, count: int = 50) -> Held:
    """C{count} pipelined GETs (signed by C{headers_for()}), unread."""
    s = _connect(ep["host"], ep["s3_port"])
    reqs = b""
    for _ in range(count):
        hdrs = headers_for()
        lines = [f"GET {key_url} HTTP/1.1"] + [f"{k}: {v}" for k, v in hdrs.items()]
        reqs += ("\r\n".join(lines) + "\r\n\r\n").encode()
    s.setblocking(False)
    try:
        s.send(reqs)
    except BlockingIOError:
        pass
    return Held([s])


# -- idle, half-sent, malformed ---------------------------------------------------------------------


def idle(host: str, port: int, n: int) -> Held:
    """C{n} connections that never say anything."""
    return Held([_connect(host, port, None) for _ in range(n)])


def half_sent(host: str, port: int, kind: str, n: int) -> Held:
    """C{n} connections each sending the first part of a message and nothing more."""
    first = {
        "smb": b"\x00\x00\x01\x00" + b"\xfeSMB" + b"\0" * 20,
        "nfs": struct.pack(">I", 0x80000000 | 200) + b"\0" * 40,
        "s3": b"GET /bucket/key HTTP/1.1\r\nHost: x\r\n",
    }[kind]
    socks = []
    for _ in range(n):
        s = _connect(host, port, None)
        s.sendall(first)
        socks.append(s)
    return Held(socks)


def malformed(host: str, port: int, kind: str, rng: Any) -> None:
    """One connection sending one malformed frame, read until closed (bounded)."""
    junk = rng.randbytes(rng.randint(1, 300))
    frame = {
        "smb": b"\x00" + len(junk).to_bytes(3, "big") + b"\xfeSMB" + junk,
        "nfs": struct.pack(">I", 0x80000000 | (len(junk) + 4)) + b"\0\0\0\1" + junk,
        "s3": b"GET /" + junk.replace(b"\r", b"").replace(b"\n", b"") + b" HTTP/1.1\r\n\r\n",
    }[kind]
    try:
        s = socket.create_connection((host, port), timeout=5)
    except OSError:
        return
    try:
        s.sendall(frame)
        s.shutdown(socket.SHUT_WR)
        for _ in range(64):
            if not s.recv(65536):
                break
    except OSError:
        pass
    finally:
        s.close()
