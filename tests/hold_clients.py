"""
Real clients that connect, do a little, and stay connected until standard
input closes, for the C{cfs-gateway status} tests (the gateway must list
them while they are there).

    python -m tests.hold_clients smb HOST PORT SHARE USER PASSWORD
        smbprotocol: session, tree connect, one file open (and a byte-range lock).
    python -m tests.hold_clients s3 ENDPOINT KEY SECRET BUCKET KEY
        boto3: PUT one object (the connection stays in boto3's pool).

Each prints the JSON line ``{"ready": true}`` once connected, then waits.
"""

from __future__ import annotations

import sys
import uuid


def smb(host: str, port: str, share: str, user: str, password: str) -> None:
    from smbprotocol.connection import Connection
    from smbprotocol.open import (
        CreateDisposition,
        CreateOptions,
        FileAttributes,
        FilePipePrinterAccessMask,
        ImpersonationLevel,
        LockFlags,
        Open,
        ShareAccess,
        SMB2LockElement,
    )
    from smbprotocol.session import Session
    from smbprotocol.tree import TreeConnect

    conn = Connection(uuid.uuid4(), host, int(port))
    conn.connect()
    session = Session(conn, user, password)
    session.connect()
    tree = TreeConnect(session, rf"\\{host}\{share}")
    tree.connect()
    f = Open(tree, "held.txt")
    f.create(
        ImpersonationLevel.Impersonation,
        FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE,
        FileAttributes.FILE_ATTRIBUTE_NORMAL,
        ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE,
        CreateDisposition.FILE_OVERWRITE_IF,
        CreateOptions.FILE_NON_DIRECTORY_FILE,
    )
    lock = SMB2LockElement()
    lock["offset"] = 0
    lock["length"] = 10
    lock["flags"] = (
        LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK | LockFlags.SMB2_LOCKFLAG_FAIL_IMMEDIATELY
    )
    f.lock([lock])
    print('{"ready": true}', flush=True)
    sys.stdin.read()
    f.close()
    conn.disconnect()


def s3(endpoint: str, key: str, secret: str, bucket: str, name: str) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    client.put_object(Bucket=bucket, Key=name, Body=b"locked file\n")
    print('{"ready": true}', flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    {"smb": smb, "s3": s3}[sys.argv[1]](*sys.argv[2:])
