"""
The metadata-durability scenario of tests/smb/test_durability.py, with
smbprotocol's low-level API (one request at a time, so the server can note
the store's state after each), as a subprocess: it blocks.

    python -m tests.smb.smbprotocol_meta HOST PORT SHARE USER PASSWORD

Prints one JSON line per step; exits non-zero on failure.
"""

from __future__ import annotations

import json
import sys
import traceback
import uuid

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

ACCESS = (
    FilePipePrinterAccessMask.GENERIC_READ
    | FilePipePrinterAccessMask.GENERIC_WRITE
    | FilePipePrinterAccessMask.DELETE
)
SHARE = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE


def step(name: str, **fields: object) -> None:
    print(json.dumps({"step": name, **fields}), flush=True)


def create(tree: TreeConnect, name: str, disposition: int, options: int = 0) -> Open:
    op = Open(tree, name)
    op.create(ImpersonationLevel.Impersonation, ACCESS, 0, SHARE, disposition, options)
    return op


def main(host: str, port: str, share: str, user: str, password: str) -> int:
    conn = Connection(uuid.uuid4(), host, int(port))
    conn.connect()
    try:
        session = Session(conn, user, password, require_encryption=False)
        session.connect()
        tree = TreeConnect(session, rf"\\{host}\{share}")
        tree.connect()
        step("connected")
        create(tree, "a", CreateDisposition.FILE_CREATE).close()
        step("create_file")
        create(tree, "d", CreateDisposition.FILE_CREATE, CreateOptions.FILE_DIRECTORY_FILE).close()
        step("create_dir")
        create(tree, "a", CreateDisposition.FILE_OVERWRITE_IF).close()
        step("overwrite")
        create(tree, "b", CreateDisposition.FILE_CREATE).close()
        create(tree, "b", CreateDisposition.FILE_OPEN, CreateOptions.FILE_DELETE_ON_CLOSE).close()
        step("delete_on_close")
        op = create(tree, "a", CreateDisposition.FILE_OPEN)
        step("before_flush")
        op.flush()
        step("flushed")
        op.close()
        create(tree, "w", CreateDisposition.FILE_CREATE, CreateOptions.FILE_WRITE_THROUGH).close()
        step("write_through")
        tree.disconnect()
        session.disconnect()
    finally:
        conn.disconnect()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(*sys.argv[1:6]))
    except Exception:
        step("error", traceback=traceback.format_exc())
        sys.exit(1)
