"""
A scenario run with impacket's C{SMBConnection}, as a subprocess of
tests/smb/test_clients.py. Prints one JSON line per step.

    python -m tests.smb.impacket_client HOST PORT SHARE USER PASSWORD [DIALECT]

impacket signs SMB 3.1.1 with a pure-Python AES-CMAC (slow), so the data
step moves 256 KiB there; pinned to SMB 2.1 (HMAC-SHA256) it moves 4 MiB.
"""

from __future__ import annotations

import io
import json
import sys
import traceback

from impacket.smb3structs import SMB2_DIALECT_21
from impacket.smbconnection import SMBConnection


def step(name: str, **fields: object) -> None:
    print(json.dumps({"step": name, **fields}), flush=True)


def main(host: str, port: str, share: str, user: str, password: str, dialect: str = "") -> int:
    preferred = SMB2_DIALECT_21 if dialect == "2.1" else None
    conn = SMBConnection(host, host, sess_port=int(port), preferredDialect=preferred)
    conn.login(user, password)
    step("login", dialect=f"{conn.getDialect():#x}")
    shares = [s["shi1_netname"][:-1] for s in conn.listShares()]
    step("shares", names=shares)
    size = 4 << 20 if dialect == "2.1" else 256 << 10
    data = bytes((i * 7) & 0xFF for i in range(size))
    name = f"impacket-{dialect or 'default'}.bin"
    conn.putFile(share, name, io.BytesIO(data).read)
    out = io.BytesIO()
    conn.getFile(share, name, out.write)
    step("put_get", same=out.getvalue() == data, size=len(out.getvalue()))
    listed = [f.get_longname() for f in conn.listPath(share, "*")]
    step("list", names=listed)
    conn.createDirectory(share, "impdir")
    conn.rename(share, name, "impdir\\moved.bin")
    step("rename", names=[f.get_longname() for f in conn.listPath(share, "impdir\\*")])
    conn.deleteFile(share, "impdir\\moved.bin")
    conn.deleteDirectory(share, "impdir")
    conn.logoff()
    step("done")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(*sys.argv[1:7]))
    except Exception:
        step("error", traceback=traceback.format_exc())
        sys.exit(1)
