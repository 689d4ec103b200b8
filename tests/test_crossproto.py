"""
One file, every protocol, with real clients on both sides (issue 10): a
gateway subprocess serves NFS, S3 and SMB over one namespace, and clients
nobody here wrote act on the same files - smbprotocol and Samba's smbclient
for SMB, libnfs (through nfs-cp and ctypes) and its raw NLM client for NFS,
boto3 for S3. The rules they meet are docs/locks.rst's "One file, every
protocol". An NFSv4.1 delegation holder is the in-tree client (the only v4.1
client here besides the kernel's): it answers CB_RECALL on its own
connection, flushes and returns, while the real clients break it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from claudefs_gateway.nfs.v4 import const as v4
from claudefs_gateway.nfs.v4.codec import (
    CbSequenceResok,
    ReclaimCompleteArgs,
    StateId,
    StateidArgs,
    WriteArgs,
    decode_cb_compound,
    encode_cb_result,
)
from claudefs_gateway.rpc import message as msg
from claudefs_gateway.rpc.client import connect_tcp
from claudefs_gateway.rpc.message import AuthSys
from claudefs_gateway.rpc.xdrtypes import Arm
from claudefs_gateway.vfs.identity import nt_hash
from tests.helpers import (
    GatewayProcess,
    bin_path,
    child_env,
    kill_on_cleanup,
    loopback_config,
    spawn,
)
from tests.nfs.v4.client import V4Client

PASSWORD = "Cross-Pass1"
ACCESS_KEY = "AKIACROSSPROTOCOL01"
SECRET_KEY = "cross-protocol-secret-key-0123456789"

CONFIG = f"""
exports:
  - {{path: /export, name: share, root_squash: false, dir_uid: 1000, dir_gid: 1000, dir_mode: 0777}}
users:
  - name: alice
    uid: 1000
    gid: 1000
    nt_hash: {nt_hash(PASSWORD)}
    s3_access_key: {ACCESS_KEY}
    s3_secret_key: {SECRET_KEY}
leases:
  recall_timeout_secs: 5
"""

STATUS_FILE_LOCK_CONFLICT = 0xC0000054
STATUS_LOCK_NOT_GRANTED = 0xC0000055
# FILE_ACTION_* (MS-FSCC 2.4.42)
ADDED, REMOVED, MODIFIED = 1, 2, 3


async def run(argv: list[str]) -> tuple[int, list[str], str]:
    proc = spawn(argv)
    status = await proc.ended
    return status, proc.text, proc.stderr.decode("utf-8", "replace")


class Actor(GatewayProcess):
    """A real client in a child process (L{tests.xproto_actor}) taking one order at a time."""

    def __init__(self) -> None:
        super().__init__()
        self._seq = 0

    async def do(self, op: str, **fields: Any) -> dict[str, Any]:
        self._seq += 1
        seq = self._seq
        self.transport.write(json.dumps({"seq": seq, "op": op, **fields}).encode() + b"\n")
        return await self.wait_for(lambda e: e.get("seq") == seq)

    async def ok(self, op: str, **fields: Any) -> dict[str, Any]:
        answer = await self.do(op, **fields)
        if not answer["ok"]:
            raise AssertionError(f"{op} {fields}: {answer['error']}\n{answer.get('trace', '')}")
        return answer


class Holder:
    """
    The in-tree NFSv4.1 client as a delegation holder that behaves as the
    Linux client does: on CB_RECALL it answers NFS4_OK, writes back what it
    cached (through the delegation stateid) and sends DELEGRETURN.
    """

    FLUSH = b"FLUSHED-BY-NFS4-HOLDER"

    def __init__(self, cl: V4Client, conn: Any) -> None:
        self.cl = cl
        self.conn = conn
        self.held: dict[bytes, tuple[str, bytes]] = {}
        self.recalled: list[str] = []
        self.returns: list[defer.Deferred[None]] = []
        conn.on_call = self.on_call

    async def delegate(self, name: str) -> None:
        """Create C{name} with an open for reading and writing: a write delegation, cached data."""
        cl = self.cl
        r = await cl.compound(
            cl.path(b"export")
            + [
                cl.open_create(name.encode(), access=v4.OPEN4_SHARE_ACCESS_BOTH),
                (v4.OP_GETFH, None),
            ]
        )
        assert r.status == v4.NFS4_OK, r
        deleg = r.last(v4.OP_OPEN).delegation
        assert deleg.tag == v4.OPEN_DELEGATE_WRITE, deleg
        self.held[deleg.value.stateid.other] = (name, r.last(v4.OP_GETFH))

    def on_call(self, record: bytes) -> bytes:
        call = msg.parse_call(record)
        _, _, _, ops = decode_cb_compound(record[call.args_at :])
        seq = Arm(0, CbSequenceResok(self.cl.sessionid, ops[0][1].sequenceid, 0, 0, 0))
        results = [(v4.OP_CB_SEQUENCE, seq)]
        for op, args in ops[1:]:
            results.append((op, Arm(v4.NFS4_OK)))
            if op == v4.OP_CB_RECALL:
                self.returns.append(defer.Deferred.fromCoroutine(self._return(args.stateid)))
        return msg.reply_success(call.xid) + encode_cb_result(v4.NFS4_OK, b"", results)

    async def _return(self, sid: StateId) -> None:
        name, fh = self.held.pop(sid.other)
        self.recalled.append(name)
        cl = self.cl
        flush = (v4.OP_WRITE, WriteArgs(sid, 0, v4.FILE_SYNC4, self.FLUSH))
        back = (v4.OP_DELEGRETURN, StateidArgs(sid))
        r = await cl.compound([cl.putfh(fh), flush, back], slot=1)
        assert r.status == v4.NFS4_OK, r


class CrossProtocolTests(TestCase):
    timeout = 180

    async def setUp(self) -> None:  # type: ignore[override]
        config = loopback_config(self, CONFIG)
        proc = spawn([bin_path("cfs-gateway"), "start", "--config", config])
        kill_on_cleanup(self, proc)
        self.nfs = await proc.wait_listening("nfs")
        self.mount = await proc.wait_listening("mount")
        self.s3port = await proc.wait_listening("s3")
        self.smbport = await proc.wait_listening("smb")
        await proc.wait_ready()
        self.gateway = proc

    # -- clients ---------------------------------------------------------------------------------

    async def actor(self, *args: str) -> Actor:
        proto = Actor()
        argv = [sys.executable, "-m", "tests.xproto_actor", *args]
        reactor.spawnProcess(proto, argv[0], argv, env=child_env())

        def stop() -> defer.Deferred[Any] | None:
            if proto.ended.called:
                return None
            proto.transport.signalProcess("KILL")
            return proto.ended.addErrback(lambda _: None)

        self.addCleanup(stop)
        await proto.wait_for(lambda e: e.get("event") == "ready")
        return proto

    async def smb(self) -> Actor:
        return await self.actor("smb", "127.0.0.1", str(self.smbport), "share", "alice", PASSWORD)

    async def s3(self) -> Actor:
        return await self.actor("s3", f"http://127.0.0.1:{self.s3port}", ACCESS_KEY, SECRET_KEY)

    def url(self) -> str:
        return f"nfs://127.0.0.1/export?version=3&nfsport={self.nfs}&mountport={self.mount}"

    async def libnfs(self, *ops: str) -> list[dict[str, Any]]:
        """libnfs as uid 1000 (the NFS client is alice too)."""
        url = self.url() + "&uid=1000&gid=1000"
        status, out, err = await run([sys.executable, "-m", "tests.nfs.libnfs_ops", url, *ops])
        self.assertEqual(status, 0, err + "\n".join(out))
        return [json.loads(line) for line in out if line.startswith("{")]

    async def nlm(self, caller: str, *ops: str) -> list[dict[str, Any]]:
        status, out, err = await run(
            [sys.executable, "-m", "tests.nfs.libnfs_nlm", self.url(), "/locked.bin", caller, *ops]
        )
        self.assertEqual(status, 0, err + "\n".join(out))
        return [json.loads(line) for line in out if line.startswith("{")]

    async def holder(self) -> Holder:
        """An NFSv4.1 client (uid 1000) with a session whose back channel is its connection."""
        conn = await connect_tcp(reactor, "127.0.0.1", self.nfs)
        self.addCleanup(conn.close)
        cred = AuthSys(0, b"holder", 1000, 1000, ())

        def send(prog: int, vers: int, proc: int, args: bytes) -> Any:
            return conn.call(prog, vers, proc, args, cred)

        cl = V4Client(send)
        self.assertEqual((await cl.exchange_id(b"deleg-holder")).status, v4.NFS4_OK)
        self.assertEqual((await cl.create_session()).status, v4.NFS4_OK)
        r = await cl.compound([(v4.OP_RECLAIM_COMPLETE, ReclaimCompleteArgs(False))])
        self.assertEqual(r.status, v4.NFS4_OK)
        return Holder(cl, conn)

    # -- the scenarios ---------------------------------------------------------------------------

    async def test_nfs4_delegation_recalled_by_every_protocol(self) -> None:
        """
        An NFSv4.1 client holds a write delegation and caches a write; an
        NFSv3 write (libnfs), an S3 PUT (boto3) and an SMB open (smbprotocol)
        each make the gateway send CB_RECALL and wait: the holder flushes its
        cached write through the delegation and returns it, and only then
        does the other protocol's change land (what ends up in the file is
        the flush overwritten by the breaker, never the reverse).
        """
        holder = await self.holder()
        smb, s3 = await self.smb(), await self.s3()
        flush = "FLUSHED-BY-NFS4-HOLDER"

        # NFSv3 write over the start of the file.
        await holder.delegate("v3.txt")
        [w] = await self.libnfs("write", "/v3.txt", "0", "from v3")
        self.assertEqual(w["ret"], len("from v3"), w)
        self.assertEqual(holder.recalled, ["v3.txt"])
        got = await s3.ok("get", bucket="export", key="v3.txt")
        self.assertEqual(got["result"], "from v3" + flush[len("from v3") :])

        # S3 PUT replacing the object.
        await holder.delegate("put.txt")
        put = await s3.ok("put", bucket="export", key="put.txt", data="from s3")
        self.assertIn("result", put)
        self.assertEqual(holder.recalled, ["v3.txt", "put.txt"])
        self.assertEqual((await s3.ok("get", bucket="export", key="put.txt"))["result"], "from s3")

        # SMB open for reading and writing, then a write through it.
        await holder.delegate("smb.txt")
        await smb.ok("open", id="s", path="smb.txt", access="rw", share="rwd")
        self.assertEqual(holder.recalled, ["v3.txt", "put.txt", "smb.txt"])
        await smb.ok("write", id="s", data="from smb")
        await smb.ok("close", id="s")
        got = await s3.ok("get", bucket="export", key="smb.txt")
        self.assertEqual(got["result"], "from smb" + flush[len("from smb") :])
        await defer.gatherResults(holder.returns)

    async def test_deny_write_open_refuses_nfs_and_s3(self) -> None:
        """
        smbprotocol holds an open that denies writing: an NFS write (libnfs)
        gets NFS3ERR_ACCES and an S3 PUT over the object gets 409
        OperationAborted; once the open closes, both go through.
        """
        smb, s3 = await self.smb(), await self.s3()
        await smb.ok("open", id="h", path="held.txt", access="rw", share="r")
        await smb.ok("write", id="h", data="held by smb")
        [nfs_write] = await self.libnfs("write", "/held.txt", "0", "from nfs")
        self.assertLess(nfs_write["ret"], 0, nfs_write)
        self.assertIn("NFS3ERR_ACCES", nfs_write["server_error"], nfs_write)
        put = await s3.ok("put", bucket="export", key="held.txt", data="from s3")
        self.assertEqual((put.get("status"), put.get("code")), (409, "OperationAborted"), put)
        got = await s3.ok("get", bucket="export", key="held.txt")
        self.assertEqual(got["result"], "held by smb")
        await smb.ok("close", id="h")
        [nfs_write] = await self.libnfs("write", "/held.txt", "0", "from nfs")
        self.assertEqual(nfs_write["ret"], len("from nfs"), nfs_write)
        put = await s3.ok("put", bucket="export", key="held.txt", data="from s3")
        self.assertIn("result", put)
        self.assertEqual((await s3.ok("get", bucket="export", key="held.txt"))["result"], "from s3")

    async def test_nlm_lock_blocks_smb_write(self) -> None:
        """An NLM lock taken by libnfs's NLM client refuses an SMB write to its bytes."""
        [created] = await self.libnfs("creat", "/locked.bin")
        self.assertEqual(created["ret"], 0)
        [locked] = await self.nlm("host-a", "lock", "100", "0", "10", "1", "0")
        self.assertEqual(locked["status"], 0)
        smb = await self.smb()
        await smb.ok("open", id="f", path="locked.bin", access="rw", share="rwd")
        refused = await smb.do("write", id="f", data="x", offset=2)
        self.assertFalse(refused["ok"])
        self.assertIn(str(STATUS_FILE_LOCK_CONFLICT), refused["error"])
        # Past the locked bytes, and after the unlock, the write lands.
        await smb.ok("write", id="f", data="y", offset=20)
        [unlocked] = await self.nlm("host-a", "unlock", "100", "0", "10")
        self.assertEqual(unlocked["status"], 0)
        await smb.ok("write", id="f", data="x", offset=2)

    async def test_s3_object_identical_over_nfs_and_smb(self) -> None:
        """An object written by boto3 reads back byte-identical through nfs-cp and smbclient, owned by alice."""
        s3 = await self.s3()
        data = "".join(chr(32 + (i * 7) % 90) for i in range(300_000))
        await s3.ok("put", bucket="export", key="dir/obj.bin", data=data)
        want = hashlib.sha256(data.encode()).hexdigest()
        over_nfs = os.path.abspath(self.mktemp())
        status, out, err = await run(
            [bin_path("nfs-cp"), self.url().replace("/export?", "/export/dir/obj.bin?"), over_nfs]
        )
        self.assertEqual(status, 0, err)
        with open(over_nfs, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), want)
        local = os.path.abspath(self.mktemp())
        status, out, err = await run(
            [
                bin_path("smbclient"),
                "//127.0.0.1/share",
                "-p",
                str(self.smbport),
                "-U",
                f"alice%{PASSWORD}",
                "-m",
                "SMB3",
                "-c",
                f"get dir\\obj.bin {local}",
            ]
        )
        self.assertEqual(status, 0, err + "\n".join(out))
        with open(local, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), want)
        [st] = await self.libnfs("stat", "/dir/obj.bin")
        self.assertEqual(st["result"]["size"], len(data))
        self.assertEqual(st["result"]["uid"], 1000)  # the S3 user's uid

    async def test_nfs_write_and_s3_delete_wake_smb_watcher(self) -> None:
        """An NFS write wakes an SMB CHANGE_NOTIFY with MODIFIED; an S3 DELETE with REMOVED."""
        s3, smb = await self.s3(), await self.smb()
        await s3.ok("put", bucket="export", key="watched/f.txt", data="v1")
        await smb.ok("open", id="d", path="watched", dir=True, share="rwd")
        await smb.ok("watch", id="d")
        [w] = await self.libnfs("write", "/watched/f.txt", "0", "v2 from nfs")
        self.assertGreater(w["ret"], 0, w)
        note = await smb.wait_for(lambda e: e.get("event") == "notify" and e.get("id") == "d")
        self.assertIn([MODIFIED, "f.txt"], note["changes"], note)
        await smb.ok("watch", id="d")
        await s3.ok("delete", bucket="export", key="watched/f.txt")
        note = await smb.wait_for(
            lambda e: e.get("event") == "notify" and e is not note and e.get("id") == "d"
        )
        self.assertIn([REMOVED, "f.txt"], note["changes"], note)

    async def test_nfs_and_s3_changes_seen_by_next_smb_create(self) -> None:
        """
        An SMB CREATE right after an NFS write or an S3 PUT reports the file
        and its directory as they changed (the store's kept inode rows and
        the vfs's directory attributes follow every protocol's changes).
        """
        s3, smb = await self.s3(), await self.smb()
        await s3.ok("put", bucket="export", key="fresh/a.txt", data="a")
        first = await smb.ok("open", id="a1", path="fresh\\a.txt")
        self.assertEqual(first["size"], 1)
        await smb.ok("close", id="a1")
        before = await smb.ok("open", id="d1", path="fresh", dir=True)
        await smb.ok("close", id="d1")
        [w] = await self.libnfs("write", "/fresh/a.txt", "0", "written over nfs")
        self.assertGreater(w["ret"], 0, w)
        after_nfs = await smb.ok("open", id="a2", path="fresh\\a.txt")
        self.assertEqual(after_nfs["size"], len("written over nfs"))
        await smb.ok("close", id="a2")
        await s3.ok("put", bucket="export", key="fresh/b.txt", data="bb")
        dir_after = await smb.ok("open", id="d2", path="fresh", dir=True)
        await smb.ok("close", id="d2")
        self.assertGreater(dir_after["change_time"], before["change_time"])
        new = await smb.ok("open", id="b1", path="fresh\\b.txt")
        self.assertEqual(new["size"], 2)
        await smb.ok("close", id="b1")

    async def test_smb_rename_seen_by_s3_and_nfs(self) -> None:
        """A rename over SMB is what the next S3 listing and NFS READDIR show."""
        s3, smb = await self.s3(), await self.smb()
        await s3.ok("put", bucket="export", key="ren/a.txt", data="a")
        await smb.ok("rename", src="ren\\a.txt", dst="ren\\b.txt")
        listing = await s3.ok("list", bucket="export", prefix="ren/")
        self.assertEqual(listing["result"], ["ren/b.txt"])
        [names] = await self.libnfs("listdir", "/ren")
        self.assertEqual(sorted(n for n in names["result"] if n not in (".", "..")), ["b.txt"])

    # -- leases and durable handles (issue 15) ---------------------------------------------------

    async def test_nfs_write_breaks_smb_lease(self) -> None:
        """
        smbprotocol holds an RWH lease and has written through it: a libnfs
        WRITE breaks the lease (a LEASE_BREAK with an acknowledgement due),
        waits for the acknowledgement, and lands on what SMB wrote.
        """
        smb = await self.smb()
        opened = await smb.ok("open", id="f", path="leased.txt", access="rw", lease="rwh")
        self.assertEqual(opened["lease"], "rwh")
        await smb.ok("write", id="f", data="cached by smb")
        nfs = defer.ensureDeferred(self.libnfs("write", "/leased.txt", "0", "from nfs"))
        brk = await smb.wait_for(lambda e: e.get("event") == "break")
        self.assertEqual((brk["kind"], brk["from"], brk["ack_required"]), ("lease", "rwh", True))
        self.assertNotIn("w", brk["to"])
        self.assertFalse(nfs.called, "the NFS write went through before the acknowledgement")
        await smb.ok("ack", id="f", to=brk["to"])
        [written] = await nfs
        self.assertEqual(written["ret"], len("from nfs"), written)
        got = await smb.ok("read", id="f", length=13)
        self.assertEqual(got["data"], "from nfsy smb")

    async def test_s3_put_breaks_smb_lease(self) -> None:
        """An S3 PUT over a file an SMB client leases (RWH) breaks the lease and waits for the ack."""
        smb, s3 = await self.smb(), await self.s3()
        opened = await smb.ok("open", id="f", path="leased-s3.txt", access="rw", lease="rwh")
        self.assertEqual(opened["lease"], "rwh")
        await smb.ok("write", id="f", data="cached by smb")
        put = defer.ensureDeferred(s3.ok("put", bucket="export", key="leased-s3.txt", data="s3"))
        brk = await smb.wait_for(lambda e: e.get("event") == "break")
        self.assertEqual((brk["from"], brk["ack_required"]), ("rwh", True))
        self.assertFalse(put.called, "the PUT went through before the acknowledgement")
        await smb.ok("ack", id="f", to=brk["to"])
        self.assertIn("result", await put)
        self.assertEqual((await s3.ok("get", bucket="export", key="leased-s3.txt"))["result"], "s3")

    async def test_durable_open_reclaimed_after_tcp_cut(self) -> None:
        """
        smbprotocol opens a file durably (DH2Q, RWH lease), writes and locks,
        then its TCP connection is cut (no CLOSE, no LOGOFF): a new connection
        reclaims the open with a DH2C - the same FileId, its data, its lock.
        """
        smb = await self.smb()
        opened = await smb.ok(
            "open", id="d", path="durable.txt", access="rw", lease="rwh", durable=True
        )
        self.assertEqual((opened.get("durable"), opened["lease"]), (True, "rwh"))
        await smb.ok("write", id="d", data="kept across the cut")
        await smb.ok("lock", id="d", offset=0, length=4)
        await smb.ok("cut")
        back = await smb.ok("reconnect")
        self.assertEqual((back["reclaimed"], back["same_ids"]), (["d"], True))
        got = await smb.ok("read", id="d", length=19)
        self.assertEqual(got["data"], "kept across the cut")
        # The open's exclusive lock survived: the same open cannot take it twice.
        again = await smb.do("lock", id="d", offset=0, length=4)
        self.assertFalse(again["ok"])
        self.assertIn(str(STATUS_LOCK_NOT_GRANTED), again["error"])
        await smb.ok("close", id="d")
