"""
A real client that takes orders: one process per client, driven by the
cross-protocol tests (tests/test_crossproto.py) through JSON lines on stdin,
answering each with one JSON line on stdout. The clients block, so they never
run on the test's reactor; a test holds one open over SMB while another
protocol's client tries its luck.

    python -m tests.xproto_actor smb HOST PORT SHARE USER PASSWORD
    python -m tests.xproto_actor s3 ENDPOINT ACCESS_KEY SECRET_KEY

Every order is ``{"seq": N, "op": ..., ...}``; every answer ``{"seq": N,
"ok": true, ...}`` or ``{"seq": N, "ok": false, "error": "..."}``. Change
notifications arrive on their own: ``{"event": "notify", "id": ...,
"changes": [[action, name], ...]}``.
"""

from __future__ import annotations

import json
import sys
import threading
import traceback
import uuid
from collections.abc import Callable
from typing import Any

_out = threading.Lock()


def emit(obj: dict[str, Any]) -> None:
    with _out:
        print(json.dumps(obj), flush=True)


def serve(handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any] | None]]) -> int:
    emit({"event": "ready"})
    for line in sys.stdin:
        order = json.loads(line)
        if order["op"] == "quit":
            emit({"seq": order.get("seq"), "ok": True})
            return 0
        try:
            result = handlers[order["op"]](order) or {}
            emit({"seq": order.get("seq"), "ok": True, **result})
        except Exception as e:
            emit(
                {
                    "seq": order.get("seq"),
                    "ok": False,
                    "error": f"{type(e).__name__}: {e}",
                    "trace": traceback.format_exc()[-800:],
                }
            )
    return 0


# -- SMB: smbprotocol's low-level API, so an open can be held across orders --------------------


def smb(host: str, port: str, share: str, user: str, password: str) -> int:
    from smbprotocol.change_notify import CompletionFilter, FileSystemWatcher
    from smbprotocol.connection import Connection
    from smbprotocol.open import (
        CreateDisposition,
        CreateOptions,
        FileAttributes,
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
    opens: dict[str, Any] = {}
    watchers: dict[str, Any] = {}

    def share_bits(text: str) -> int:
        bits = 0
        for ch, flag in (
            ("r", ShareAccess.FILE_SHARE_READ),
            ("w", ShareAccess.FILE_SHARE_WRITE),
            ("d", ShareAccess.FILE_SHARE_DELETE),
        ):
            if ch in text:
                bits |= flag
        return bits

    def open_(o: dict[str, Any]) -> dict[str, Any]:
        f = Open(tree, o["path"])
        is_dir = o.get("dir", False)
        access = 0x80000000 | 0x00100000  # GENERIC_READ | SYNCHRONIZE
        if "w" in o.get("access", "r"):
            access |= 0x40000000  # GENERIC_WRITE
        if "d" in o.get("access", "r"):
            access |= 0x00010000  # DELETE
        f.create(
            ImpersonationLevel.Impersonation,
            access,
            FileAttributes.FILE_ATTRIBUTE_DIRECTORY
            if is_dir
            else FileAttributes.FILE_ATTRIBUTE_NORMAL,
            share_bits(o.get("share", "rwd")),
            CreateDisposition.FILE_OPEN_IF if not is_dir else CreateDisposition.FILE_OPEN,
            CreateOptions.FILE_DIRECTORY_FILE if is_dir else CreateOptions.FILE_NON_DIRECTORY_FILE,
        )
        opens[o["id"]] = f
        return {}

    def write(o: dict[str, Any]) -> dict[str, Any]:
        n = opens[o["id"]].write(o["data"].encode(), o.get("offset", 0))
        return {"written": n}

    def read(o: dict[str, Any]) -> dict[str, Any]:
        data = opens[o["id"]].read(o.get("offset", 0), o["length"])
        return {"data": data.decode("latin-1")}

    def lock(o: dict[str, Any]) -> dict[str, Any]:
        el = SMB2LockElement()
        el["offset"] = o["offset"]
        el["length"] = o["length"]
        el["flags"] = (
            LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK
            if o.get("exclusive", True)
            else LockFlags.SMB2_LOCKFLAG_SHARED_LOCK
        ) | LockFlags.SMB2_LOCKFLAG_FAIL_IMMEDIATELY
        opens[o["id"]].lock([el])
        return {}

    def close(o: dict[str, Any]) -> dict[str, Any]:
        opens.pop(o["id"]).close()
        return {}

    def watch(o: dict[str, Any]) -> dict[str, Any]:
        watcher = FileSystemWatcher(opens[o["id"]])
        watcher.start(
            CompletionFilter.FILE_NOTIFY_CHANGE_FILE_NAME
            | CompletionFilter.FILE_NOTIFY_CHANGE_DIR_NAME
            | CompletionFilter.FILE_NOTIFY_CHANGE_SIZE
            | CompletionFilter.FILE_NOTIFY_CHANGE_LAST_WRITE
        )
        watchers[o["id"]] = watcher

        def wait() -> None:
            try:
                changes = watcher.wait()
                emit(
                    {
                        "event": "notify",
                        "id": o["id"],
                        "changes": [
                            [int(c["action"].get_value()), c["file_name"].get_value()]
                            for c in changes
                        ],
                    }
                )
            except Exception as e:
                emit({"event": "notify", "id": o["id"], "error": f"{type(e).__name__}: {e}"})

        threading.Thread(target=wait, daemon=True).start()
        return {}

    def rename(o: dict[str, Any]) -> dict[str, Any]:
        import smbclient

        smbclient.register_session(host, username=user, password=password, port=int(port))
        base = rf"\\{host}\{share}"
        smbclient.rename(base + "\\" + o["src"], base + "\\" + o["dst"], port=int(port))
        return {}

    return serve(
        {
            "open": open_,
            "write": write,
            "read": read,
            "lock": lock,
            "close": close,
            "watch": watch,
            "rename": rename,
        }
    )


# -- S3: boto3 ------------------------------------------------------------------------------------


def s3(endpoint: str, key: str, secret: str) -> int:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
    )

    def call(f: Callable[[], Any]) -> dict[str, Any]:
        try:
            return {"result": f()}
        except ClientError as e:
            return {
                "status": e.response["ResponseMetadata"]["HTTPStatusCode"],
                "code": e.response["Error"]["Code"],
            }

    def put(o: dict[str, Any]) -> dict[str, Any]:
        return call(
            lambda: client.put_object(Bucket=o["bucket"], Key=o["key"], Body=o["data"].encode())[
                "ETag"
            ]
        )

    def get(o: dict[str, Any]) -> dict[str, Any]:
        return call(
            lambda: (
                client.get_object(Bucket=o["bucket"], Key=o["key"])["Body"].read().decode("latin-1")
            )
        )

    def delete(o: dict[str, Any]) -> dict[str, Any]:
        return call(lambda: client.delete_object(Bucket=o["bucket"], Key=o["key"]) and None)

    def listing(o: dict[str, Any]) -> dict[str, Any]:
        return call(
            lambda: [
                c["Key"]
                for c in client.list_objects_v2(Bucket=o["bucket"], Prefix=o.get("prefix", "")).get(
                    "Contents", []
                )
            ]
        )

    return serve({"put": put, "get": get, "delete": delete, "list": listing})


if __name__ == "__main__":
    kind, *args = sys.argv[1:]
    sys.exit({"smb": smb, "s3": s3}[kind](*args))
