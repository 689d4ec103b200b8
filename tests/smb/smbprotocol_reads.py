"""
Signed READs with smbprotocol's low-level API, as a subprocess of
tests/smb/test_clients.py (it blocks, so it never runs in the test's reactor).
smbprotocol checks the signature of every signed reply it receives and fails
the call when one does not verify, so each read here that returns proves its
reply (header and data, sent as separate pieces) was signed right.

Reads: a large file in reads of 2 MiB (what smbprotocol's credits
allow, so a reply spans many socket writes), an unaligned read across
them, a small file the store keeps inline, a range of a sparse file inside
its hole and one across the hole's end, and two READs in one compound (the
first reply padded, with NextCommand, both signed).

    python -m tests.smb.smbprotocol_reads HOST PORT SHARE USER PASSWORD DIALECT SIGNING

DIALECT is 2.1, 3.0.2 or 3.1.1; SIGNING is hmac, cmac or gmac (3.1.1 only).
Prints one JSON line per step; exits non-zero on failure.
"""

from __future__ import annotations

import hashlib
import json
import sys
import traceback
import uuid

from smbprotocol.connection import Connection, Dialects, SigningAlgorithms
from smbprotocol.open import (
    CreateDisposition,
    CreateOptions,
    FileAttributes,
    FilePipePrinterAccessMask,
    ImpersonationLevel,
    Open,
    ShareAccess,
)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

DIALECTS = {"2.1": Dialects.SMB_2_1_0, "3.0.2": Dialects.SMB_3_0_2, "3.1.1": Dialects.SMB_3_1_1}
SIGNING = {
    "hmac": SigningAlgorithms.HMAC_SHA256,
    "cmac": SigningAlgorithms.AES_CMAC,
    "gmac": SigningAlgorithms.AES_GMAC,
}


def step(name: str, **fields: object) -> None:
    print(json.dumps({"step": name, **fields}), flush=True)


def pattern(size: int, seed: int = 0) -> bytes:
    """Bytes no two 32-byte blocks of which are alike (a misplaced piece shows)."""
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out[:size])


def open_file(tree: TreeConnect, name: str) -> Open:
    f = Open(tree, name)
    f.create(
        ImpersonationLevel.Impersonation,
        FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE,
        FileAttributes.FILE_ATTRIBUTE_NORMAL,
        ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE,
        CreateDisposition.FILE_OVERWRITE_IF,
        CreateOptions.FILE_NON_DIRECTORY_FILE,
    )
    return f


#: The largest I/O used: 32 credits (smbprotocol holds fewer than the 128 of 8 MiB).
IO = 2 << 20


def write_all(conn: Connection, f: Open, offset: int, data: bytes) -> None:
    step_size = min(conn.max_write_size, IO)
    for pos in range(0, len(data), step_size):
        f.write(data[pos : pos + step_size], offset + pos)


def read_all(conn: Connection, f: Open, offset: int, length: int) -> bytes:
    step_size = min(conn.max_read_size, IO)
    out = bytearray()
    while len(out) < length:
        out += f.read(offset + len(out), min(step_size, length - len(out)))
    return bytes(out)


def main(
    host: str, port: str, share: str, user: str, password: str, dialect: str, signing: str
) -> int:
    conn = Connection(uuid.uuid4(), host, int(port), require_signing=True)
    kw = {"preferred_signing_algos": [SIGNING[signing]]} if dialect == "3.1.1" else {}
    conn.connect(dialect=DIALECTS[dialect], **kw)
    session = Session(conn, user, password, require_encryption=False)
    session.connect()
    tree = TreeConnect(session, rf"\\{host}\{share}")
    tree.connect()
    step(
        "login",
        dialect=f"{conn.dialect:#x}",
        signing=session.signing_required,
        encrypted=session.encrypt_data,
        max_read=conn.max_read_size,
    )

    io = min(conn.max_read_size, IO)
    big = pattern(2 * io + 12345)
    f = open_file(tree, "big.bin")
    write_all(conn, f, 0, big)
    back = read_all(conn, f, 0, len(big))
    step("big", same=back == big, size=len(back))
    # An unaligned read spanning most of one largest read and into the next.
    start = io // 2 + 3
    got = f.read(start, io - 5)
    step("unaligned", same=got == big[start : start + io - 5])

    # Two READs in one compound: the first reply is padded and carries NextCommand.
    r1, recv1 = f.read(1, 1001, send=False)
    r2, recv2 = f.read(70000, 3 * 65536 + 7, send=False)
    sent = conn.send_compound([r1, r2], session.session_id, tree.tree_connect_id)
    one, two = recv1(sent[0]), recv2(sent[1])
    step("compound", same=(one == big[1:1002] and two == big[70000 : 70000 + 3 * 65536 + 7]))
    f.close()

    small = pattern(1000, seed=1)
    g = open_file(tree, "small.bin")
    g.write(small, 0)
    step("inline", same=g.read(0, 65536) == small, partial=g.read(10, 20) == small[10:30])
    g.close()

    tail = pattern(100000, seed=2)
    h = open_file(tree, "sparse.bin")
    h.write(tail, 5 << 20)
    hole = h.read(1 << 20, 1 << 20)
    across = h.read((5 << 20) - 4096, 8192)
    step(
        "sparse",
        hole=hole == bytes(1 << 20),
        across=across == bytes(4096) + tail[:4096],
    )
    h.close()
    tree.disconnect()
    session.disconnect()
    conn.disconnect()
    step("done")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(*sys.argv[1:8]))
    except Exception:
        step("error", traceback=traceback.format_exc())
        sys.exit(1)
