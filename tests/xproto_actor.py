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
import struct
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
    from smbprotocol.create_contexts import (
        CreateContextName,
        DurableHandleFlags,
        SMB2CreateDurableHandleReconnectV2,
        SMB2CreateDurableHandleRequestV2,
        SMB2CreateDurableHandleResponseV2,
        SMB2CreateRequestLeaseV2,
        SMB2CreateResponseLeaseV2,
    )
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

    client_guid = uuid.uuid4()
    link: dict[str, Any] = {}
    target = {"port": int(port)}

    def connect() -> None:
        """A connection, session and tree; oplock and lease breaks reported as events."""
        conn = Connection(client_guid, host, target["port"])
        conn.connect()
        # smbprotocol has no handler for what the server sends unasked (MessageId
        # all ones: oplock and lease breaks, MS-SMB2 3.3.4.6 and 3.3.4.7): its
        # receive thread looks the id up among its requests. A table answering
        # that id with a sink turns each into an event instead.
        conn.outstanding_requests = _BreakTable(conn.outstanding_requests)
        session = Session(conn, user, password)
        session.connect()
        tree = TreeConnect(session, rf"\\{host}\{share}")
        tree.connect()
        link.update(conn=conn, session=session, tree=tree)

    connect()
    opens: dict[str, Any] = {}
    watchers: dict[str, Any] = {}
    durable: dict[str, tuple[bytes, Any]] = {}  # open id -> (FileId, CreateGuid)
    persistent: set[str] = set()  # open ids granted a persistent handle

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
        f = Open(link["tree"], o["path"])
        is_dir = o.get("dir", False)
        access = 0x80000000 | 0x00100000  # GENERIC_READ | SYNCHRONIZE
        if "w" in o.get("access", "r"):
            access |= 0x40000000  # GENERIC_WRITE
        if "d" in o.get("access", "r"):
            access |= 0x00010000  # DELETE
        contexts = []
        if "lease" in o:
            lease = SMB2CreateRequestLeaseV2()
            lease["lease_key"] = _lease_key(o["id"])
            lease["lease_state"] = _lease_bits(o["lease"])
            lease["parent_lease_key"] = b"\x00" * 16
            lease["epoch"] = b"\x00\x00"
            contexts.append(_context(CreateContextName.SMB2_CREATE_REQUEST_LEASE_V2, lease))
        guid = None
        if o.get("durable") or o.get("persistent"):
            guid = uuid.uuid4()
            dh2q = SMB2CreateDurableHandleRequestV2()
            dh2q["timeout"] = 60_000
            dh2q["create_guid"] = guid
            if o.get("persistent"):
                # MS-SMB2 2.2.13.2.11: SMB2_DHANDLE_FLAG_PERSISTENT (smbprotocol has no helper).
                dh2q["flags"] = DurableHandleFlags.SMB2_DHANDLE_FLAG_PERSISTENT
            contexts.append(_context(CreateContextName.SMB2_CREATE_DURABLE_HANDLE_REQUEST_V2, dh2q))
        answer = f.create(
            ImpersonationLevel.Impersonation,
            access,
            FileAttributes.FILE_ATTRIBUTE_DIRECTORY
            if is_dir
            else FileAttributes.FILE_ATTRIBUTE_NORMAL,
            share_bits(o.get("share", "rwd")),
            CreateDisposition.FILE_OPEN_IF if not is_dir else CreateDisposition.FILE_OPEN,
            CreateOptions.FILE_DIRECTORY_FILE if is_dir else CreateOptions.FILE_NON_DIRECTORY_FILE,
            create_contexts=contexts or None,
            oplock_level=0xFF if "lease" in o else 0,
        )
        opens[o["id"]] = f
        out: dict[str, Any] = {
            "oplock": f.oplock_level,
            # What the CREATE response said of the file (MS-SMB2 2.2.14).
            "size": f.end_of_file,
            "change_time": f.change_time.isoformat(),
        }
        for ctx in answer or []:
            if isinstance(ctx, SMB2CreateResponseLeaseV2):
                out["lease"] = _lease_text(ctx["lease_state"].get_value())
            elif isinstance(ctx, SMB2CreateDurableHandleResponseV2) and guid is not None:
                out["durable"] = True
                durable[o["id"]] = (f.file_id, guid)
                flags = ctx["flags"].get_value()
                out["persistent"] = bool(flags & DurableHandleFlags.SMB2_DHANDLE_FLAG_PERSISTENT)
                if out["persistent"]:
                    persistent.add(o["id"])
        return out

    def ack(o: dict[str, Any]) -> dict[str, Any]:
        """A LEASE_BREAK_ACKNOWLEDGMENT (MS-SMB2 2.2.24.2) of the state the break went to."""
        msg = _LeaseBreakAck()
        msg["lease_key"] = _lease_key(o["id"])
        msg["lease_state"] = _lease_bits(o["to"])
        conn, session, tree = link["conn"], link["session"], link["tree"]
        request = conn.send(msg, session.session_id, tree.tree_connect_id)
        response = conn.receive(request)
        state = struct.unpack_from("<I", response["data"].get_value(), 24)[0]
        return {"lease": _lease_text(state)}

    def cut(o: dict[str, Any]) -> dict[str, Any]:
        """Drop the TCP connection: no CLOSE, no LOGOFF, as a network failure does."""
        link["conn"].disconnect(close=False)
        return {}

    def reconnect(o: dict[str, Any]) -> dict[str, Any]:
        """
        A new connection and session (to C{port} if given: another gateway);
        each durable open reclaimed with a DH2C (and its lease).
        """
        if "port" in o:
            target["port"] = int(o["port"])
        connect()
        for ident, (file_id, guid) in durable.items():
            old = opens[ident]
            f = Open(link["tree"], old.file_name)
            dh2c = SMB2CreateDurableHandleReconnectV2()
            dh2c["file_id"] = file_id
            dh2c["create_guid"] = guid
            if ident in persistent:
                dh2c["flags"] = DurableHandleFlags.SMB2_DHANDLE_FLAG_PERSISTENT
            contexts = [_context(CreateContextName.SMB2_CREATE_DURABLE_HANDLE_RECONNECT_V2, dh2c)]
            if old.oplock_level == 0xFF:
                lease = SMB2CreateRequestLeaseV2()
                lease["lease_key"] = _lease_key(ident)
                lease["lease_state"] = _lease_bits("rwh")
                lease["parent_lease_key"] = b"\x00" * 16
                lease["epoch"] = b"\x00\x00"
                contexts.append(_context(CreateContextName.SMB2_CREATE_REQUEST_LEASE_V2, lease))
            f.create(
                ImpersonationLevel.Impersonation,
                old.desired_access,
                old.file_attributes,
                old.share_mode,
                CreateDisposition.FILE_OPEN,
                old.create_options,
                create_contexts=contexts,
                oplock_level=old.oplock_level,
            )
            opens[ident] = f
        # The persistent half of the FileId is the open's (MS-SMB2 3.3.5.9.12).
        same = all(opens[i].file_id[:8] == fid[:8] for i, (fid, _) in durable.items())
        return {"reclaimed": sorted(durable), "same_ids": same}

    def write(o: dict[str, Any]) -> dict[str, Any]:
        n = opens[o["id"]].write(o["data"].encode(), o.get("offset", 0))
        return {"written": n}

    def flush(o: dict[str, Any]) -> dict[str, Any]:
        opens[o["id"]].flush()
        return {}

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
            "flush": flush,
            "lock": lock,
            "close": close,
            "watch": watch,
            "rename": rename,
            "ack": ack,
            "cut": cut,
            "reconnect": reconnect,
        }
    )


def _lease_key(ident: str) -> bytes:
    return uuid.uuid5(uuid.NAMESPACE_URL, "lease:" + ident).bytes


_LEASE_BITS = {"r": 0x01, "h": 0x02, "w": 0x04}


def _lease_bits(text: str) -> int:
    return sum(_LEASE_BITS[ch] for ch in text)


def _lease_text(bits: int) -> str:
    return "".join(ch for ch in "rwh" if bits & _LEASE_BITS[ch])


def _context(name: bytes, data: Any) -> Any:
    from smbprotocol.create_contexts import SMB2CreateContextRequest

    ctx = SMB2CreateContextRequest()
    ctx["buffer_name"] = name
    ctx["buffer_data"] = data
    return ctx


class _Zero:
    @staticmethod
    def get_value() -> int:
        return 0


class _BreakSink:
    """
    Stands for a request the receive thread can hand a server-initiated
    message to: the message is reported as an event (see L{_BreakTable}).
    """

    session_id = None
    message = {"reserved": _Zero()}

    def __init__(self) -> None:
        self.async_id = None
        self.response: Any = None
        self.response_event_lock = threading.Lock()
        self.response_event = self

    def set(self) -> None:
        body = self.response["data"].get_value()
        size = struct.unpack_from("<H", body)[0]
        if size == 44:  # lease break notification (MS-SMB2 2.2.23.2)
            epoch, flags, key, current, new, reason = struct.unpack_from("<HI16sIII", body, 2)
            emit(
                {
                    "event": "break",
                    "kind": "lease",
                    "key": key.hex(),
                    "from": _lease_text(current),
                    "to": _lease_text(new),
                    "ack_required": bool(flags & 0x01),
                    "epoch": epoch,
                }
            )
        else:  # oplock break notification (2.2.23.1)
            emit({"event": "break", "kind": "oplock", "level": body[2]})


class _BreakTable(dict):  # type: ignore[type-arg]
    """smbprotocol's outstanding-request table, answering MessageId all ones with a sink."""

    def __getitem__(self, key: int) -> Any:
        if key == 0xFFFFFFFFFFFFFFFF:
            return _BreakSink()
        return super().__getitem__(key)


def _lease_break_ack_type() -> Any:
    from collections import OrderedDict

    from smbprotocol.header import Commands
    from smbprotocol.structure import BytesField, IntField, Structure

    class LeaseBreakAck(Structure):
        COMMAND = Commands.SMB2_OPLOCK_BREAK

        def __init__(self) -> None:
            self.fields = OrderedDict(
                [
                    ("structure_size", IntField(size=2, default=36)),
                    ("reserved", IntField(size=2)),
                    ("flags", IntField(size=4)),
                    ("lease_key", BytesField(size=16)),
                    ("lease_state", IntField(size=4)),
                    ("lease_duration", IntField(size=8)),
                ]
            )
            super().__init__()

    return LeaseBreakAck


def _LeaseBreakAck() -> Any:  # noqa: N802 - stands for the class
    return _lease_break_ack_type()()


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
