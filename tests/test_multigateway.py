"""
Two gateway processes on one claudefs-meta and one claudefs-data, real
clients on each (docs/rpc.rst "Shared state"): a lock taken through gateway
A holds against a write through gateway B, an open through A that denies
writing refuses a write through B, and a change through B has what A's
clients cache recalled first.

L{TwoMetaServersTests}: the same tests with A on one claudefs-meta and B on
another, both over one PostgreSQL (servers/shared_pg.py, servers/clients_pg.py):
the locks, share reservations, lease breaks, client records and the grace
after a gateway is killed cross between meta servers through the database.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from claudefs_gateway.nfs.v4 import const as v4
from claudefs_gateway.nfs.v4.codec import OpenArgs, ReclaimCompleteArgs, StateOwner
from claudefs_gateway.rpc.client import connect_tcp
from claudefs_gateway.rpc.message import AuthSys
from claudefs_gateway.rpc.xdrtypes import Arm
from tests.backend.remote.test_faults import ServerProcess
from tests.helpers import bin_path, child_env, kill_on_cleanup, loopback_config, spawn
from tests.nfs.v4.client import V4Client
from tests.test_crossproto import (
    ACCESS_KEY,
    CONFIG,
    PASSWORD,
    SECRET_KEY,
    STATUS_FILE_LOCK_CONFLICT,
    Actor,
    Holder,
    run,
)


class Gateway:
    """One gateway process's ports."""

    def __init__(self, proc: Any, nfs: int, mount: int, s3: int, smb: int) -> None:
        self.proc = proc
        self.nfs, self.mount, self.s3, self.smb = nfs, mount, s3, smb

    def url(self) -> str:
        return f"nfs://127.0.0.1/export?version=3&nfsport={self.nfs}&mountport={self.mount}"


class TwoGatewaysTests(TestCase):
    timeout = 180

    async def setUp(self) -> None:  # type: ignore[override]
        data = ServerProcess(self, "data")
        await data.start()
        meta = ServerProcess(self, "meta", ["--data-server", data.address])
        await meta.start()
        extra = CONFIG + f'metadata_servers: [{{address: "{meta.address}"}}]\n'
        self.a = await self.gateway(extra)
        self.b = await self.gateway(extra)

    async def meta_servers(self, n: int) -> list[ServerProcess]:
        """A data server and C{n} meta servers on one PostgreSQL schema of the scratch server."""
        from tests.backend import postgres

        conf = os.path.abspath(self.mktemp())
        self.schema = postgres.new_schema(self)
        with open(conf, "w") as f:
            f.write(postgres.meta_store_yaml(self.schema))
        data = ServerProcess(self, "data")
        await data.start()
        metas = [
            ServerProcess(self, "meta", ["--data-server", data.address, "--config", conf])
            for _ in range(n)
        ]
        for m in metas:
            await m.start()

        return metas

    async def gateway(self, extra: str) -> Gateway:
        config = loopback_config(self, extra, backend="remote")
        proc = spawn([bin_path("cfs-gateway"), "start", "--config", config])
        kill_on_cleanup(self, proc)
        ports = [await proc.wait_listening(p) for p in ("nfs", "mount", "s3", "smb")]
        await proc.wait_ready()
        return Gateway(proc, *ports)

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

    async def smb(self, gw: Gateway) -> Actor:
        return await self.actor("smb", "127.0.0.1", str(gw.smb), "share", "alice", PASSWORD)

    async def s3(self, gw: Gateway) -> Actor:
        return await self.actor("s3", f"http://127.0.0.1:{gw.s3}", ACCESS_KEY, SECRET_KEY)

    async def nlm(self, gw: Gateway, caller: str, *ops: str) -> list[dict[str, Any]]:
        import json

        status, out, err = await run(
            [sys.executable, "-m", "tests.nfs.libnfs_nlm", gw.url(), "/locked.bin", caller, *ops]
        )
        self.assertEqual(status, 0, err + "\n".join(out))
        return [json.loads(line) for line in out if line.startswith("{")]

    async def holder(self, gw: Gateway) -> Holder:
        conn = await connect_tcp(reactor, "127.0.0.1", gw.nfs)
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

    async def lease_registered(self) -> None:
        """
        Between meta servers: wait until A's lease is in the database. The meta server
        decides a grant (LEASE_GRANT) before the client has it, but the holder's
        gateway may answer its client a moment before B's test step starts.
        """

    async def a_seen_lost(self) -> None:
        """
        Between meta servers: wait until B's meta server heard that A's may be
        gone (one meta server learns it from the connection's close at once).
        """

    async def test_nlm_lock_through_a_blocks_smb_write_through_b(self) -> None:
        """libnfs's NLM client locks through A; smbprotocol's write through B is refused, then lands."""
        maker = await self.smb(self.a)
        await maker.ok("open", id="m", path="locked.bin", access="rw", share="rwd")
        await maker.ok("write", id="m", data="0123456789" * 3)
        await maker.ok("close", id="m")
        [locked] = await self.nlm(self.a, "host-a", "lock", "100", "0", "10", "1", "0")
        self.assertEqual(locked["status"], 0)
        # A second NLM client through B is refused too (NLM4_DENIED).
        [denied] = await self.nlm(self.b, "host-b", "lock", "200", "5", "1", "1", "0")
        self.assertEqual(denied["status"], 1)
        smb = await self.smb(self.b)
        await smb.ok("open", id="f", path="locked.bin", access="rw", share="rwd")
        refused = await smb.do("write", id="f", data="x", offset=2)
        self.assertFalse(refused["ok"])
        self.assertIn(str(STATUS_FILE_LOCK_CONFLICT), refused["error"])
        await smb.ok("write", id="f", data="y", offset=20)
        [unlocked] = await self.nlm(self.a, "host-a", "unlock", "100", "0", "10")
        self.assertEqual(unlocked["status"], 0)
        # B hears of the unlock from the meta server (EV_LOCKS); the write then lands.
        for _ in range(100):
            answer = await smb.do("write", id="f", data="x", offset=2)
            if answer["ok"]:
                break
        else:
            self.fail("the SMB write through B stayed refused after the unlock")
        got = await smb.ok("read", id="f", offset=0, length=30)
        self.assertEqual(got["data"][:3], "01x")
        await smb.ok("close", id="f")

    async def test_deny_write_open_through_a_refuses_s3_through_b(self) -> None:
        """smbprotocol's open through A denying writes: boto3's PUT through B gets 409 until it closes."""
        smb = await self.smb(self.a)
        s3 = await self.s3(self.b)
        await smb.ok("open", id="h", path="held.txt", access="rw", share="r")
        await smb.ok("write", id="h", data="held by smb")
        put = await s3.ok("put", bucket="export", key="held.txt", data="from s3")
        self.assertEqual((put.get("status"), put.get("code")), (409, "OperationAborted"), put)
        await smb.ok("close", id="h")
        for _ in range(100):
            put = await s3.ok("put", bucket="export", key="held.txt", data="from s3")
            if "result" in put:
                break
        else:
            self.fail("the PUT through B stayed refused after the close")
        self.assertEqual((await s3.ok("get", bucket="export", key="held.txt"))["result"], "from s3")

    async def test_s3_put_through_b_recalls_delegation_through_a(self) -> None:
        """
        An NFSv4.1 client holds a write delegation through A with a cached
        write; boto3's PUT through B makes A send CB_RECALL, the holder
        flushes and returns it, and only then does the PUT land.
        """
        holder = await self.holder(self.a)
        s3 = await self.s3(self.b)
        await holder.delegate("put.txt")
        await self.lease_registered()
        put = await s3.ok("put", bucket="export", key="put.txt", data="from s3")
        self.assertIn("result", put)
        self.assertEqual(holder.recalled, ["put.txt"])
        await defer.gatherResults(holder.returns)
        self.assertEqual((await s3.ok("get", bucket="export", key="put.txt"))["result"], "from s3")

    async def test_s3_put_through_b_breaks_smb_lease_through_a(self) -> None:
        """
        smbprotocol holds an RWH lease through A and has written through it;
        boto3's PUT through B makes A send the LEASE_BREAK, and the PUT waits
        for smbprotocol's acknowledgement to A before it lands.
        """
        smb, s3 = await self.smb(self.a), await self.s3(self.b)
        opened = await smb.ok("open", id="f", path="leased.txt", access="rw", lease="rwh")
        self.assertEqual(opened["lease"], "rwh")
        await self.lease_registered()
        await smb.ok("write", id="f", data="cached by smb")
        put = defer.ensureDeferred(s3.ok("put", bucket="export", key="leased.txt", data="s3"))
        brk = await smb.wait_for(lambda e: e.get("event") == "break")
        self.assertEqual((brk["kind"], brk["from"], brk["ack_required"]), ("lease", "rwh", True))
        self.assertNotIn("w", brk["to"])
        self.assertFalse(put.called, "the PUT through B went through before the acknowledgement")
        await smb.ok("ack", id="f", to=brk["to"])
        self.assertIn("result", await put)
        self.assertEqual((await s3.ok("get", bucket="export", key="leased.txt"))["result"], "s3")

    async def test_smb_open_through_b_breaks_smb_lease_through_a(self) -> None:
        """Two smbprotocol clients, one per gateway: B's open breaks A's RWH lease and gets no W."""
        one, two = await self.smb(self.a), await self.smb(self.b)
        first = await one.ok("open", id="f", path="two.txt", access="rw", lease="rwh")
        self.assertEqual(first["lease"], "rwh")
        await self.lease_registered()
        second = defer.ensureDeferred(
            two.ok("open", id="g", path="two.txt", access="rw", lease="rwh")
        )
        brk = await one.wait_for(lambda e: e.get("event") == "break")
        self.assertNotIn("w", brk["to"])
        await one.ok("ack", id="f", to=brk["to"])
        got = await second
        self.assertNotIn("w", got.get("lease", ""))

    async def v4(self, gw: Gateway, owner: bytes, complete: bool = True) -> V4Client:
        conn = await connect_tcp(reactor, "127.0.0.1", gw.nfs)
        self.addCleanup(conn.close)
        cred = AuthSys(0, b"reclaimer", 0, 0, ())

        def send(prog: int, vers: int, proc: int, args: bytes) -> Any:
            return conn.call(prog, vers, proc, args, cred)

        cl = V4Client(send)
        self.assertEqual((await cl.exchange_id(owner)).status, v4.NFS4_OK)
        self.assertEqual((await cl.create_session()).status, v4.NFS4_OK)
        if complete:
            r = await cl.compound([(v4.OP_RECLAIM_COMPLETE, ReclaimCompleteArgs(False))])
            self.assertEqual(r.status, v4.NFS4_OK)
        return cl

    async def test_nfs4_client_reclaims_through_b_after_a_is_killed(self) -> None:
        """
        An NFSv4.1 client's deny-write open through A; A is killed (-9). The
        client comes back through B: told to wait (NFS4ERR_DELAY) until the
        meta server declares A gone, then it reclaims its open (CLAIM_PREVIOUS)
        while B refuses another client's open (NFS4ERR_GRACE); its
        RECLAIM_COMPLETE ends the grace, and its open denies the other writes.
        """
        both = v4.OPEN4_SHARE_ACCESS_BOTH
        deny_write = v4.OPEN4_SHARE_DENY_WRITE
        one = await self.v4(self.a, b"client-one")
        r = await one.compound(
            one.path(b"export") + [one.open_create(b"kept.bin", b"o", both, deny_write)]
        )
        self.assertEqual(r.status, v4.NFS4_OK)
        self.a.proc.signal("KILL")
        await self.a.proc.ended
        await self.a_seen_lost()

        back = await self.v4(self.b, b"client-one", complete=False)
        reclaim = OpenArgs(
            0,
            both,
            deny_write,
            StateOwner(0, b"o"),
            Arm(v4.OPEN4_NOCREATE),
            Arm(v4.CLAIM_PREVIOUS, v4.OPEN_DELEGATE_NONE),
        )
        seen = set()
        for _ in range(2000):
            r = await back.compound(back.path(b"export", b"kept.bin") + [(v4.OP_OPEN, reclaim)])
            seen.add(r.status)
            if r.status != v4.NFS4ERR_DELAY:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(r.status, v4.NFS4_OK, seen)

        two = await self.v4(self.b, b"client-two")
        r = await two.compound(two.path(b"export") + [two.open_existing(b"kept.bin", b"p", both)])
        self.assertEqual(r.status, v4.NFS4ERR_GRACE)
        r = await back.compound([(v4.OP_RECLAIM_COMPLETE, ReclaimCompleteArgs(False))])
        self.assertEqual(r.status, v4.NFS4_OK)
        # The grace's end reaches B a moment later (between meta servers: a
        # transaction and a notification).
        for _ in range(200):
            r = await two.compound(
                two.path(b"export") + [two.open_existing(b"kept.bin", b"p", both)]
            )
            if r.status != v4.NFS4ERR_GRACE:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(r.status, v4.NFS4ERR_SHARE_DENIED)

    async def test_nlm_client_reclaims_through_b_after_a_is_killed(self) -> None:
        """
        libnfs's NLM client locks through A; A is killed (-9). Once the meta
        server declares A gone, B refuses another host's lock with
        NLM4_DENIED_GRACE_PERIOD and grants the first host's reclaim.
        """
        maker = await self.smb(self.a)
        await maker.ok("open", id="m", path="locked.bin", access="rw", share="rwd")
        await maker.ok("write", id="m", data="0123456789" * 3)
        await maker.ok("close", id="m")
        [locked] = await self.nlm(self.a, "host-a", "lock", "100", "0", "10", "1", "0")
        self.assertEqual(locked["status"], 0)
        self.a.proc.signal("KILL")
        await self.a.proc.ended
        seen = []
        for _ in range(400):
            [other] = await self.nlm(self.b, "host-b", "lock", "200", "5", "1", "1", "0")
            seen.append(other["status"])
            if other["status"] != 1:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        # NLM4_DENIED while A's lock lingers at the meta server, then
        # NLM4_DENIED_GRACE_PERIOD: never granted meanwhile.
        self.assertEqual(seen[-1], 4, seen)
        [back] = await self.nlm(self.b, "host-a", "reclaim", "100", "0", "10", "1", "0")
        self.assertEqual(back["status"], 0)

    async def test_nlm_deadlock_across_gateways(self) -> None:
        """
        libnfs's NLM clients: host-a through A and host-b through B each
        lock one range, host-a's blocking request for host-b's range is
        BLOCKED, and host-b's blocking request for host-a's range, which
        would wait forever, is refused NLM4_DEADLCK (the meta server sees
        both gateways' waits). Once host-a cancels, host-b gets its lock.
        """
        maker = await self.smb(self.a)
        await maker.ok("open", id="m", path="locked.bin", access="rw", share="rwd")
        await maker.ok("write", id="m", data="0123456789" * 3)
        await maker.ok("close", id="m")
        [a1] = await self.nlm(self.a, "host-a", "lock", "1", "0", "10", "1", "0")
        [b1] = await self.nlm(self.b, "host-b", "lock", "2", "20", "10", "1", "0")
        self.assertEqual((a1["status"], b1["status"]), (0, 0))
        [a2] = await self.nlm(self.a, "host-a", "lock", "1", "20", "10", "1", "1")
        self.assertEqual(a2["status"], 3)  # NLM4_BLOCKED
        [b2] = await self.nlm(self.b, "host-b", "lock", "2", "0", "10", "1", "1")
        self.assertEqual(b2["status"], 5)  # NLM4_DEADLCK
        [cancelled, unlocked] = await self.nlm(
            self.a, "host-a", "cancel", "1", "20", "10", "1", "unlock", "1", "0", "10"
        )
        self.assertEqual((cancelled["status"], unlocked["status"]), (0, 0))
        for _ in range(200):  # B hears of A's unlock from the meta server
            [b3] = await self.nlm(self.b, "host-b", "lock", "2", "0", "10", "1", "0")
            if b3["status"] == 0:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(b3["status"], 0)


class TwoMetaServersTests(TwoGatewaysTests):
    """Every test above, gateway A on meta server 1 and B on meta server 2, over one PostgreSQL."""

    async def setUp(self) -> None:  # type: ignore[override]
        one, two = await self.meta_servers(2)
        self.two = two
        self.a = await self.gateway(CONFIG + f'metadata_servers: [{{address: "{one.address}"}}]\n')
        self.b = await self.gateway(CONFIG + f'metadata_servers: [{{address: "{two.address}"}}]\n')

    async def lease_registered(self) -> None:
        import psycopg

        from tests.backend import postgres

        def held() -> bool:
            with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
                q = f"SELECT count(*) FROM {self.schema}.lease"
                return bool(conn.execute(q).fetchone()[0])  # type: ignore[index]

        for _ in range(500):
            if held():
                return
            await deferLater(reactor, 0.01, lambda: None)
        self.fail("A's lease never reached the database")

    async def a_seen_lost(self) -> None:
        assert self.two.proc is not None
        await self.two.proc.wait_for(lambda e: "may be gone" in str(e.get("log_format", "")))
