"""
``GET /admin/clients`` (what ``cfs-gateway status`` prints) for NFS
connections: a gateway of the service tree on loopback port 0, the in-tree
NFSv3/NLM and NFSv4.1/4.2 clients over real TCP, and the admin API over
HTTP. An NFSv3 connection shows the NLM locks of its client host; an NFSv4
connection shows its client (id, owner), session, opens, byte-range locks
and delegations, and nothing that would let someone act as that client.
"""

from __future__ import annotations

import json
import os
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from claudefs_gateway import service
from claudefs_gateway.cli import format_status
from claudefs_gateway.core import config as cfg
from claudefs_gateway.nfs.errors import NLM4
from claudefs_gateway.nfs.nlm import NlmLock
from claudefs_gateway.nfs.v3 import codec as c3
from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4.codec import (
    LockArgs,
    OpenToLockOwner,
    ReclaimCompleteArgs,
    StateOwner,
)
from claudefs_gateway.rpc.client import connect_tcp
from claudefs_gateway.rpc.message import AuthSys
from claudefs_gateway.rpc.xdrtypes import Arm
from tests.helpers import http_get
from tests.nfs.client import Client, NLMClient, stream_sender
from tests.nfs.test_service import LOOPBACK
from tests.nfs.v4.client import V4Client


class NFSStatusTests(TestCase):
    timeout = 30

    def start(self) -> dict[str, int]:
        data = os.path.abspath(self.mktemp())
        os.makedirs(data)
        config = cfg.loads(LOOPBACK.format(data=data, extra=""))
        root = service.build(config, reactor, ["nfs"], strict=True, registry=CollectorRegistry())
        root.privilegedStartService()
        root.startService()
        self.addCleanup(root.stopService)
        return {label: svc.bound_port for label, svc in root.listeners().items()}

    async def status(self, ports: dict[str, int]) -> tuple[dict[str, Any], bytes]:
        code, _, body = await http_get(f"http://127.0.0.1:{ports['admin']}/admin/clients")
        self.assertEqual(code, 200, body)
        return json.loads(body), body

    async def connect(self, port: int, uid: int = 0) -> Any:
        conn = await connect_tcp(reactor, "127.0.0.1", port)
        self.addCleanup(conn.close)
        return conn

    async def test_nfs3_connection_shows_its_hosts_nlm_locks(self) -> None:
        """
        A client that mounted, created a file and took an NLM lock over its
        connection: the row says NFSv3+NLMv4 and one lock, names the caller
        and what it holds; the summary counts the host's lock once although
        a second connection from the same host shows it too.
        """
        ports = self.start()
        conn = await self.connect(ports["nfs"])
        cred = AuthSys(0, b"v3host", 0, 0)
        nfs = Client(stream_sender(conn, cred))
        nlm = NLMClient(stream_sender(conn, cred))
        root = (await nfs.mnt(b"/export")).fh
        fh = (await nfs.create(root, b"f", c3.GUARDED)).fh
        lk = NlmLock(b"v3-client", fh, b"oh-1", 7, 0, 10)
        self.assertEqual((await nlm.lock(lk)).status, NLM4.GRANTED)
        other = await self.connect(ports["nfs"])
        await Client(stream_sender(other, cred)).getattr(fh)

        doc, body = await self.status(ports)
        rows = [r for r in doc["connections"] if r["protocol"] == "nfs3"]
        self.assertEqual(len(rows), 2, rows)
        first, second = sorted(rows, key=lambda r: r["id"])
        self.assertEqual(first["dialect"], "MOUNTv3+NFSv3+NLMv4")
        self.assertEqual((first["uid"], first["locks"]), (0, 1), first)
        self.assertEqual(
            first["nlm_clients"],
            [{"caller_name": "v3-client", "locks": 1, "shares": 0, "waiting": 0}],
        )
        # The host's other NFSv3 connection shows the same locks...
        self.assertEqual((second["dialect"], second["locks"]), ("NFSv3", 1))
        self.assertEqual(first["state_of"], second["state_of"])
        # ...which the per-protocol totals count once.
        self.assertEqual(doc["summary"]["nfs3"]["locks"], 1)
        self.assertEqual(doc["summary"]["nfs3"]["connections"], 2)
        text = format_status(doc)
        self.assertIn("NLM lock clients by connection", text)
        self.assertIn("v3-client", text)

        self.assertEqual((await nlm.unlock(lk)).status, NLM4.GRANTED)
        doc, _ = await self.status(ports)
        rows = [r for r in doc["connections"] if r["protocol"] == "nfs3"]
        self.assertEqual([r["locks"] for r in rows], [0, 0])

    async def v4_client(self, ports: dict[str, int], minor: int, owner: bytes) -> V4Client:
        conn = await self.connect(ports["nfs"])
        cred = AuthSys(0, b"v4host", 0, 0)

        def send(prog: int, vers: int, proc: int, args: bytes) -> Any:
            return conn.call(prog, vers, proc, args, cred)

        cl = V4Client(send, minor=minor)
        self.assertEqual((await cl.exchange_id(owner, verifier=b"SECRETVF")).status, c.NFS4_OK)
        self.assertEqual((await cl.create_session()).status, c.NFS4_OK)
        r = await cl.compound([(c.OP_RECLAIM_COMPLETE, ReclaimCompleteArgs(False))])
        self.assertEqual(r.status, c.NFS4_OK)
        return cl

    async def check_v4(self, minor: int) -> None:
        """
        One NFSv4.x client with a file open (with a write delegation) and a
        byte-range lock on it, and a second file open: its connection's row
        shows the minor version, the client id and owner, one session, two
        opens, the lock and the delegation, and neither the session id nor
        the client's verifier.
        """
        ports = self.start()
        owner = b"Linux NFSv4.%d status-host\x01" % minor
        cl = await self.v4_client(ports, minor, owner)
        r = await cl.compound(cl.path(b"export") + [cl.open_create(b"locked"), (c.OP_GETFH, None)])
        self.assertEqual(r.status, c.NFS4_OK)
        opened = r.last(c.OP_OPEN)
        self.assertEqual(opened.delegation.tag, c.OPEN_DELEGATE_WRITE)
        fh = r.last(c.OP_GETFH)
        lock = OpenToLockOwner(0, opened.stateid, 0, StateOwner(0, b"lo"))
        r = await cl.compound(
            [cl.putfh(fh), (c.OP_LOCK, LockArgs(c.WRITE_LT, False, 0, 10, Arm(True, lock)))]
        )
        self.assertEqual(r.status, c.NFS4_OK)
        access = c.OPEN4_SHARE_ACCESS_READ | c.OPEN4_SHARE_ACCESS_WANT_NO_DELEG
        r = await cl.compound(cl.path(b"export") + [cl.open_create(b"other", access=access)])
        self.assertEqual(r.status, c.NFS4_OK)

        doc, body = await self.status(ports)
        [row] = [r for r in doc["connections"] if r["protocol"] == "nfs4"]
        self.assertEqual(row["dialect"], f"NFSv4.{minor}")
        self.assertEqual((row["opens"], row["locks"], row["leases"]), (2, 1, 1))
        [client] = row["nfs4_clients"]
        self.assertEqual(client["clientid"], f"{cl.clientid:016x}")
        self.assertEqual(client["owner"], f"Linux NFSv4.{minor} status-host?")
        self.assertEqual(client["uid"], 0)
        self.assertTrue(client["confirmed"])
        self.assertEqual(
            (client["opens"], client["lock_states"], client["locks"]),
            (2, 1, 1),
        )
        self.assertEqual(
            client["delegations"], {"read": 0, "write": 1, "recalling": 0, "revoked": 0}
        )
        self.assertEqual(client["layouts"], {"read": 0, "rw": 0, "recalling": 0})
        [session] = client["sessions"]
        self.assertEqual(session["minor"], minor)
        self.assertEqual(session["connections"], 1)
        self.assertTrue(session["back_channel"])
        self.assertEqual(session["id_prefix"], cl.sessionid[:4].hex())
        # Nothing that lets someone else act as the client.
        self.assertNotIn(cl.sessionid.hex().encode(), body)
        self.assertNotIn(b"SECRETVF", body)
        self.assertNotIn(b"SECRETVF".hex().encode(), body)
        self.assertEqual(doc["summary"]["nfs4"]["locks"], 1)
        text = format_status(doc)
        self.assertIn("NFSv4 clients:", text)
        self.assertIn(f"{cl.clientid:016x}", text)

        # A second connection bound to the same session shows the same
        # client; the totals count it once.
        conn2 = await self.connect(ports["nfs"])
        cred = AuthSys(0, b"v4host", 0, 0)
        cl2 = V4Client(lambda *a: conn2.call(*a, cred), minor=minor)
        cl2.sessionid, cl2.clientid = cl.sessionid, cl.clientid
        self.assertEqual((await cl2.compound([], slot=1)).status, c.NFS4_OK)
        doc, _ = await self.status(ports)
        rows = [r for r in doc["connections"] if r["protocol"] == "nfs4"]
        self.assertEqual([r["locks"] for r in rows], [1, 1])
        self.assertEqual(
            doc["summary"]["nfs4"], {"connections": 2, "opens": 2, "locks": 1, "leases": 1}
        )

    async def test_nfs41_client_state(self) -> None:
        await self.check_v4(1)

    async def test_nfs42_client_state(self) -> None:
        await self.check_v4(2)
