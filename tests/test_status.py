"""
``cfs-gateway status``: who is connected over each protocol, from a running
gateway's admin API (``GET /admin/clients``), with real clients holding
connections, opens and locks: smbprotocol (SMB), libnfs (NFSv3 + NLM: the lock
shows on the NFSv3 connection of its host), boto3 (S3).
"""

from __future__ import annotations

import json
import sys

from twisted.trial.unittest import TestCase

from claudefs_gateway.vfs.identity import nt_hash
from tests.helpers import bin_path, kill_on_cleanup, loopback_config, spawn

KEY, SECRET = "AKIASTATUS000000000", "status/secret+key000000000000000000000000"
USERS = f"""
users:
  - {{name: alice, uid: 1000, gid: 1000, nt_hash: {nt_hash("Pass1")},
      s3_access_key: {KEY}, s3_secret_key: "{SECRET}"}}
exports:
  - {{path: /export, root_squash: false, dir_uid: 1000, dir_gid: 1000}}
"""


class StatusTests(TestCase):
    timeout = 180

    async def test_status_lists_every_protocol(self) -> None:
        """
        With an SMB session holding an open file and a lock, a libnfs client
        holding an NLM lock and a boto3 client that wrote an object, status
        lists each connection with its client address, user, dialect, opens
        and locks, and the lock table's NLM client.
        """
        config = loopback_config(self, USERS)
        gw = spawn([bin_path("cfs-gateway"), "start", "--config", config])
        kill_on_cleanup(self, gw)
        ports = {}
        for label in ("admin", "nfs", "mount", "s3", "smb"):
            ports[label] = await gw.wait_listening(label)
        await gw.wait_ready()
        admin = f"http://127.0.0.1:{ports['admin']}"

        async def hold(argv: list[str], ready: object) -> None:
            proc = spawn([sys.executable, "-m", *argv])
            kill_on_cleanup(self, proc)
            await proc.wait_for(ready)  # type: ignore[arg-type]
            self.addCleanup(lambda: proc.transport.closeStdin())

        await hold(
            ["tests.hold_clients", "s3", f"http://127.0.0.1:{ports['s3']}", KEY, SECRET]
            + ["export", "locked"],
            lambda e: e.get("ready"),
        )
        url = f"nfs://127.0.0.1/export?version=3&nfsport={ports['nfs']}&mountport={ports['mount']}"
        await hold(
            ["tests.nfs.libnfs_nlm", url, "/locked", "statushost", "lock", "7", "0", "10", "1"]
            + ["1", "hold"],
            lambda e: e.get("op") == "hold",
        )
        await hold(
            ["tests.hold_clients", "smb", "127.0.0.1", str(ports["smb"]), "export", "alice"]
            + ["Pass1"],
            lambda e: e.get("ready"),
        )

        proc = spawn([bin_path("cfs-gateway"), "status", "--json", "--admin", admin])
        self.assertEqual(await proc.ended, 0, proc.stderr)
        doc = json.loads("\n".join(proc.text))
        by_protocol: dict[str, list[dict[str, object]]] = {}
        for row in doc["connections"]:
            by_protocol.setdefault(str(row["protocol"]), []).append(row)
            self.assertEqual(row["address"], "127.0.0.1")
            self.assertGreater(row["port"], 0)

        [smb] = by_protocol["smb"]
        self.assertEqual(
            (smb["user"], smb["dialect"], smb["opens"], smb["locks"], smb["leases"]),
            ("alice", "SMB 3.1.1", 1, 1, 0),
        )
        self.assertEqual(smb["shares"], ["export"])
        [s3] = by_protocol["s3"]
        self.assertEqual((s3["user"], s3["uid"], s3["dialect"]), ("alice", 1000, "HTTP/1.1"))
        nfs = [r for r in by_protocol["nfs3"] if "NLMv4" in str(r["dialect"])]
        self.assertEqual(len(nfs), 1, by_protocol["nfs3"])
        self.assertIn("NFSv3", str(nfs[0]["dialect"]))
        # The NFSv3 connection shows its host's NLM lock (libnfs's caller_name).
        self.assertEqual(nfs[0]["locks"], 1)
        self.assertEqual(
            nfs[0]["nlm_clients"],
            [{"caller_name": "statushost", "locks": 1, "shares": 0, "waiting": 0}],
        )
        self.assertEqual(doc["summary"]["nfs3"]["locks"], 1)
        self.assertEqual(
            doc["summary"]["smb"], {"connections": 1, "opens": 1, "locks": 1, "leases": 0}
        )
        holders = {(h["protocol"], h["client"]): h for h in doc["lock_clients"]}
        self.assertEqual(holders[("nlm", "statushost")]["locks"], 1)

        proc = spawn([bin_path("cfs-gateway"), "status", "--admin", admin])
        self.assertEqual(await proc.ended, 0, proc.stderr)
        text = "\n".join(proc.text)
        for expected in ("alice", "SMB 3.1.1", "HTTP/1.1", "NFSv3", "statushost", "lock table"):
            self.assertIn(expected, text)
        [line] = [ln for ln in text.splitlines() if "NFSv3" in ln and "NLMv4" in ln]
        after = line.split()
        after = after[after.index("NFSv3+NLMv4") + 1 :]
        self.assertEqual(after[:3], ["0", "1", "0"])  # opens, locks, leases
        [line] = [ln for ln in text.splitlines() if "statushost" in ln and ln.split()[0].isdigit()]
        self.assertEqual(line.split()[2:], ["statushost", "1", "0", "0"])
        proc = spawn([bin_path("cfs-gateway"), "status", "--admin", admin, "--protocol", "s3"])
        self.assertEqual(await proc.ended, 0, proc.stderr)
        self.assertNotIn("SMB 3.1.1", "\n".join(proc.text))
