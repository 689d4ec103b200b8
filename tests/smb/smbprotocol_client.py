"""
A scenario run with smbprotocol's high-level C{smbclient} API (encryption on),
as a subprocess of tests/smb/test_clients.py: it blocks, so it never runs in
the test's reactor. Prints one JSON line per step; exits non-zero on failure.

    python -m tests.smb.smbprotocol_client HOST PORT SHARE USER PASSWORD
"""

from __future__ import annotations

import json
import sys
import traceback

import smbclient
from smbprotocol.exceptions import SMBResponseException
from smbprotocol.open import LockFlags, SMB2LockElement


def step(name: str, **fields: object) -> None:
    print(json.dumps({"step": name, **fields}), flush=True)


def main(host: str, port: str, share: str, user: str, password: str) -> int:
    kw = {"port": int(port)}
    smbclient.register_session(host, username=user, password=password, encrypt=True, **kw)
    base = rf"\\{host}\{share}\spdir"
    smbclient.mkdir(base, **kw)
    step("mkdir")
    data = bytes(range(256)) * (3 * 4096)  # 3 MiB
    with smbclient.open_file(base + r"\data.bin", mode="wb", **kw) as f:
        f.write(data)
    with smbclient.open_file(base + r"\data.bin", mode="rb", **kw) as f:
        back = f.read()
    step("write_read", same=back == data, size=len(back))
    st = smbclient.stat(base + r"\data.bin", **kw)
    step("stat", size=st.st_size, attributes=st.st_file_attributes)
    smbclient.utime(base + r"\data.bin", times=(1_500_000_000, 1_600_000_000), **kw)
    step("utime", mtime=int(smbclient.stat(base + r"\data.bin", **kw).st_mtime))
    smbclient.setxattr(base + r"\data.bin", b"COMMENT", b"hello", **kw)
    step("xattr", value=smbclient.getxattr(base + r"\data.bin", b"COMMENT", **kw).decode())
    step("listdir", names=sorted(smbclient.listdir(base, **kw)))
    smbclient.rename(base + r"\data.bin", base + r"\renamed.bin", **kw)
    step("rename", names=sorted(smbclient.listdir(base, **kw)))
    volume = smbclient.stat_volume(base, **kw)
    step("volume", total=volume.total_size > 0)

    # Byte-range locks on two opens of one file.
    path = base + r"\renamed.bin"
    with (
        smbclient.open_file(path, mode="rb", buffering=0, share_access="rwd", **kw) as a,
        smbclient.open_file(path, mode="rb", buffering=0, share_access="rwd", **kw) as b,
    ):
        exclusive = SMB2LockElement()
        exclusive["offset"] = 0
        exclusive["length"] = 100
        exclusive["flags"] = (
            LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK | LockFlags.SMB2_LOCKFLAG_FAIL_IMMEDIATELY
        )
        a.fd.lock([exclusive])
        try:
            b.fd.lock([exclusive])
            conflict = "granted"
        except SMBResponseException as e:
            conflict = f"{e.status:#x}"
        try:
            b.fd.read(0, 10)
            read = "allowed"
        except SMBResponseException as e:
            read = f"{e.status:#x}"
        unlock = SMB2LockElement()
        unlock["offset"] = 0
        unlock["length"] = 100
        unlock["flags"] = LockFlags.SMB2_LOCKFLAG_UNLOCK
        a.fd.lock([unlock])
        b.fd.lock([exclusive])
        step("locks", conflict=conflict, read=read, after_unlock="granted")
    smbclient.remove(path, **kw)
    smbclient.rmdir(base, **kw)
    step("cleanup", names=sorted(smbclient.listdir(rf"\\{host}\{share}", **kw)))
    smbclient.reset_connection_cache()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(*sys.argv[1:6]))
    except Exception:
        step("error", traceback=traceback.format_exc())
        sys.exit(1)
