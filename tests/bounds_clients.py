"""
``python -m tests.bounds_clients ROLE PROTO HOST PORT [MOUNT_PORT]``: the clients
of tests/test_bounds_live.py (issue 19). They block, so they run as
subprocesses, never in the test's reactor.

  - ``flood``: logs on / mounts, then queues requests with large replies and
    never reads one; prints ``flooding N`` and holds the connection until its
    stdin closes.
  - ``good``: on its own connection, 20 small requests one after another;
    prints the longest round trip in seconds as JSON.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time
from typing import Any

from bench import abuse

USER, PASSWORD = "bench", "Pass1"
ACCESS, SECRET = "benchkey", "benchsecret"


def _rpc(s: socket.socket, xid: int, proc: int, args: bytes, prog: int = 100003) -> bytes:
    s.sendall(abuse._rpc_call(xid, prog, 3, proc, args))
    out = b""
    while True:
        hdr = abuse._recv_exact(s, 4)
        (mark,) = struct.unpack(">I", hdr)
        out += abuse._recv_exact(s, mark & 0x7FFFFFFF)
        if mark & 0x80000000:
            return out[24:]  # past xid, REPLY, ACCEPTED, verf, SUCCESS


def _opaque(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b + b"\0" * (-len(b) % 4)


def nfs_file(host: str, port: int, mount_port: int) -> tuple[socket.socket, bytes]:
    """A connection and the handle of a 1 MiB file it wrote."""
    root = abuse.nfs_root_handle(host, mount_port, "/export")
    s = socket.create_connection((host, port))
    name = f"f{os.getpid()}".encode()
    # CREATE3args: dirop (dir, name), createhow UNCHECKED + sattr3 (nothing set).
    res = _rpc(s, 1, 8, _opaque(root) + _opaque(name) + struct.pack(">I", 0) + b"\0" * 24)
    status, follows, n = struct.unpack_from(">III", res, 0)
    assert status == 0 and follows, (status, follows)
    fh = res[12 : 12 + n]
    data = b"x" * (1 << 20)
    res = _rpc(s, 2, 7, _opaque(fh) + struct.pack(">QII", 0, len(data), 2) + _opaque(data))
    assert struct.unpack_from(">I", res)[0] == 0
    return s, fh


def s3_sign(host: str, port: int, method: str, path: str) -> dict[str, str]:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    req = AWSRequest(method=method, url=f"http://{host}:{port}{path}")
    req.headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
    S3SigV4Auth(Credentials(ACCESS, SECRET), "s3", "us-east-1").add_auth(req)
    return dict(req.headers.items()) | {"Host": f"{host}:{port}"}


def s3_request(
    s: socket.socket, host: str, port: int, method: str, path: str, body: bytes = b""
) -> int:
    hdrs = s3_sign(host, port, method, path)
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


def flood(proto: str, host: str, port: int, mount_port: int) -> Any:
    ep = {
        "host": host,
        "smb_port": port,
        "nfs_port": port,
        "s3_port": port,
        "mount_port": mount_port,
        "user": USER,
        "password": PASSWORD,
        "share": "share",
        "export": "/export",
    }
    if proto == "smb":
        held = abuse.smb_non_reader(ep, reads=1000)
        return held, held.keep[-1]
    if proto == "nfs":
        _, fh = nfs_file(host, port, mount_port)
        s = abuse._connect(host, port)
        args = _opaque(fh) + struct.pack(">QI", 0, 1 << 20)
        s.setblocking(False)
        sent = 0
        for i in range(500):
            try:
                s.send(abuse._rpc_call(100 + i, 100003, 3, 6, args))
                sent += 1
            except BlockingIOError:
                break
        return abuse.Held([s]), sent
    c = socket.create_connection((host, port))
    s3_request(c, host, port, "PUT", "/flood")
    s3_request(c, host, port, "PUT", "/flood/big", b"y" * (16 << 20))
    c.close()
    h = abuse.s3_non_reader(ep, "/flood/big", lambda: s3_sign(host, port, "GET", "/flood/big"))
    return h, 50


def good(proto: str, host: str, port: int, mount_port: int) -> float:
    worst = 0.0
    if proto == "smb":
        from smbprotocol.connection import SMB2Echo

        conn, sess, tree, f = abuse.smb_session(
            {"host": host, "smb_port": port, "user": USER, "password": PASSWORD, "share": "share"},
            file_size=64 * 1024,
        )
        for _ in range(20):
            t = time.monotonic()
            f.read(0, 65536)
            conn.receive(conn.send(SMB2Echo(), sid=sess.session_id))
            worst = max(worst, time.monotonic() - t)
        return worst
    if proto == "nfs":
        s, fh = nfs_file(host, port, mount_port)
        for i in range(20):
            t = time.monotonic()
            res = _rpc(s, 10 + i, 6, _opaque(fh) + struct.pack(">QI", 0, 65536))
            assert struct.unpack_from(">I", res)[0] == 0
            worst = max(worst, time.monotonic() - t)
        return worst
    s = socket.create_connection((host, port))
    s3_request(s, host, port, "PUT", "/good")
    for _ in range(20):
        t = time.monotonic()
        assert s3_request(s, host, port, "GET", "/good") == 200
        worst = max(worst, time.monotonic() - t)
    return worst


def main(argv: list[str]) -> int:
    role, proto, host, port = argv[0], argv[1], argv[2], int(argv[3])
    mount_port = int(argv[4]) if len(argv) > 4 else 0
    if role == "flood":
        held, n = flood(proto, host, port, mount_port)
        print(f"flooding {n}", flush=True)
        sys.stdin.read()
        held.close()
        return 0
    print(json.dumps({"worst": good(proto, host, port, mount_port)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
