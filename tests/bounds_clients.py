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
import socket
import struct
import sys
import time
from typing import Any

from bench import abuse
from bench.abuse import nfs_file, opaque, rpc, s3_request, s3_sign

USER, PASSWORD = "bench", "Pass1"


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
        args = opaque(fh) + struct.pack(">QI", 0, 1 << 20)
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
    status = s3_request(c, host, port, "PUT", "/flood/big", b"y" * (16 << 20))
    assert status == 200, status
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
            res = rpc(s, 10 + i, 6, opaque(fh) + struct.pack(">QI", 0, 65536))
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
