"""
S3 features as NFS and SMB clients see them, with real clients on every side:
boto3 (a subprocess, L{tests.s3.boto_steps}), libnfs through ctypes
(L{tests.nfs.libnfs_ops}) and Samba's smbclient, against one gateway serving
all three protocols over the same tree (the S3 root is both an NFS export
and an SMB share).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from claudefs_gateway import service
from claudefs_gateway.core import config as cfg
from claudefs_gateway.vfs.identity import nt_hash
from tests.helpers import REPO, bin_path, spawn
from tests.s3.harness import ALICE, BACKEND

PASSWORD = "Pass1"


def config_text(data: str) -> str:
    h = nt_hash(PASSWORD)
    return f"""
backend: {{type: {BACKEND}, data_dir: "{data}"}}
admin: {{bind: "127.0.0.1:0"}}
nfs: {{bind: "127.0.0.1:0", mount_bind: "127.0.0.1:0", portmap_bind: "127.0.0.1:0"}}
smb: {{bind: "127.0.0.1:0"}}
exports:
  - {{path: /s3, name: s3root, root_squash: false, dir_mode: 01777}}
s3:
  bind: "127.0.0.1:0"
  root: /s3
  region: us-east-1
users:
  - {{name: alice, uid: 1000, gid: 1000, nt_hash: {h}, s3_access_key: {ALICE[0]}, s3_secret_key: "{ALICE[1]}"}}
"""


async def run(argv: list[str]) -> tuple[int, list[str], str]:
    proc = spawn(argv, path=REPO)
    status = await proc.ended
    return status, proc.text, proc.stderr.decode("utf-8", "replace")


class CrossProtocolTestCase(TestCase):
    timeout = 180

    async def setUp(self) -> None:
        data = os.path.abspath(self.mktemp())
        root = service.build(cfg.loads(config_text(data)), reactor, protocols=["s3", "nfs", "smb"])
        root.privilegedStartService()
        root.startService()
        self.addCleanup(root.stopService)
        await root.getServiceNamed("proto:s3").ready()
        ports = root.listeners()
        self.s3_port = int(ports["s3"].bound_port)
        self.nfs_port = int(ports["nfs"].bound_port)
        self.mount_port = int(ports["mount"].bound_port)
        self.smb_port = int(ports["smb"].bound_port)
        self.root = root

    async def boto(self, *steps: Any) -> list[Any]:
        """Run boto3 steps (L{tests.s3.boto_steps}) in a subprocess; their results."""
        argv = [
            sys.executable,
            "-m",
            "tests.s3.boto_steps",
            f"http://127.0.0.1:{self.s3_port}",
            ALICE[0],
            ALICE[1],
            json.dumps(list(steps)),
        ]
        status, out, err = await run(argv)
        self.assertEqual(status, 0, err + "\n".join(out))
        return json.loads(out[-1])  # type: ignore[no-any-return]

    async def nfs(self, *ops: str) -> list[dict[str, Any]]:
        """libnfs operations as uid 1000 (alice) on the S3 root's export."""
        url = (
            f"nfs://127.0.0.1/s3?version=3&nfsport={self.nfs_port}"
            f"&mountport={self.mount_port}&uid=1000&gid=1000"
        )
        status, out, err = await run([sys.executable, "-m", "tests.nfs.libnfs_ops", url, *ops])
        self.assertEqual(status, 0, err + "\n".join(out))
        return [json.loads(line) for line in out if line.startswith("{")]

    async def smb(self, commands: str) -> tuple[int, str]:
        conf = self.mktemp() + ".conf"
        with open(conf, "w") as f:
            f.write(
                "[global]\n   client min protocol = SMB2_02\n   client max protocol = SMB3_11\n"
            )
        argv = [
            bin_path("smbclient"),
            "//127.0.0.1/s3root",
            "-s",
            conf,
            "-p",
            str(self.smb_port),
            "-U",
            f"alice%{PASSWORD}",
            "-m",
            "SMB3",
            "--client-protection=sign",
            "-c",
            commands,
        ]
        status, out, err = await run(argv)
        return status, "\n".join(out) + err

    def local(self, data: bytes) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(data)
        return path


class VersionsTests(CrossProtocolTestCase):
    async def test_version_written_over_nfs(self) -> None:
        """
        An NFS overwrite of a versioned object is a new version: listed as the
        latest with an id of its own, readable through boto3; the version it
        overwrote in place is gone, older ones stay; the store is listed by
        neither NFS nor SMB.
        """
        r = await self.boto(
            ["create_bucket", {"Bucket": "vbkt"}],
            [
                "put_bucket_versioning",
                {"Bucket": "vbkt", "VersioningConfiguration": {"Status": "Enabled"}},
            ],
            ["put_object", {"Bucket": "vbkt", "Key": "d/k", "Body": "one"}],
            ["put_object", {"Bucket": "vbkt", "Key": "d/k", "Body": "two"}],
        )
        v1, v2 = r[2]["VersionId"], r[3]["VersionId"]
        ops = await self.nfs("overwrite", "/vbkt/d/k", "three over NFS", "listdir", "/vbkt/d")
        self.assertEqual(ops[0]["ret"], 0, ops[0])
        self.assertEqual(sorted(ops[1]["result"]), [".", "..", "k"])
        r = await self.boto(
            ["list_object_versions", {"Bucket": "vbkt"}],
            ["get_object", {"Bucket": "vbkt", "Key": "d/k"}],
            ["get_object", {"Bucket": "vbkt", "Key": "d/k", "VersionId": v1}],
            ["error", "get_object", {"Bucket": "vbkt", "Key": "d/k", "VersionId": v2}],
        )
        versions = [(v["VersionId"], v["IsLatest"]) for v in r[0]["Versions"]]
        self.assertEqual(len(versions), 2, versions)
        v3 = versions[0][0]
        self.assertNotIn(v3, (v1, v2))
        self.assertEqual(versions, [(v3, True), (v1, False)])
        self.assertEqual(r[1]["Body"], "three over NFS")
        self.assertEqual(r[1]["VersionId"], v3)
        self.assertEqual(r[2]["Body"], "one")
        self.assertEqual(r[3], "NoSuchVersion")
        status, text = await self.smb("cd vbkt\\d; ls")
        self.assertEqual(status, 0, text)
        self.assertNotIn(".cfs-versions", text)
        self.assertIn(" k ", text)


class ObjectLockTests(CrossProtocolTestCase):
    async def test_locked_object_refused_over_nfs_and_smb(self) -> None:
        """
        An object under compliance retention cannot be overwritten, truncated,
        renamed or deleted over NFS (libnfs) or SMB (smbclient); it still reads
        back whole through both and through boto3. An unlocked neighbour can.
        """
        r = await self.boto(
            ["create_bucket", {"Bucket": "lockbkt", "ObjectLockEnabledForBucket": True}],
            [
                "put_object",
                {
                    "Bucket": "lockbkt",
                    "Key": "sealed.txt",
                    "Body": "sealed contents",
                    "ObjectLockMode": "COMPLIANCE",
                    "ObjectLockRetainUntilDate": "2099-01-01T00:00:00Z",
                },
            ],
            ["put_object", {"Bucket": "lockbkt", "Key": "free.txt", "Body": "free"}],
        )
        del r
        ops = await self.nfs(
            "overwrite", "/lockbkt/sealed.txt", "overwritten",
            "truncate", "/lockbkt/sealed.txt", "0",
            "rename", "/lockbkt/sealed.txt", "/lockbkt/moved.txt",
            "unlink", "/lockbkt/sealed.txt",
            "readall", "/lockbkt/sealed.txt",
            "overwrite", "/lockbkt/free.txt", "changed",
        )  # fmt: skip
        self.assertEqual([op["ret"] < 0 for op in ops[:4]], [True] * 4, ops)
        self.assertEqual((ops[4]["ret"], ops[4]["result"]), (0, "sealed contents"))
        self.assertEqual(ops[5]["ret"], 0, ops[5])
        local = self.local(b"smb overwrite")
        got = self.local(b"")
        status, text = await self.smb(
            f"cd lockbkt; put {local} sealed.txt; rename sealed.txt x.txt; del sealed.txt; "
            f"get sealed.txt {got}"
        )
        self.assertIn("NT_STATUS_ACCESS_DENIED opening remote file", text)
        self.assertIn("NT_STATUS_ACCESS_DENIED renaming files", text)
        with open(got, "rb") as f:
            self.assertEqual(f.read(), b"sealed contents")
        # smbclient's del reports nothing; the file is still there, whole.
        r = await self.boto(["get_object", {"Bucket": "lockbkt", "Key": "sealed.txt"}])
        self.assertEqual(r[0]["Body"], "sealed contents")


class EncryptionTests(CrossProtocolTestCase):
    async def test_encrypted_object_refused_to_file_clients(self) -> None:
        """
        An SSE-C (or SSE-S3) object's bytes are ciphertext at rest: libnfs and
        smbclient reads get the protocol's access error, never ciphertext;
        boto3 with the key reads the plaintext.
        """
        key = "0123456789abcdef0123456789abcdef"
        await self.boto(
            ["create_bucket", {"Bucket": "encbkt"}],
            [
                "put_object",
                {
                    "Bucket": "encbkt",
                    "Key": "c.txt",
                    "Body": "customer secret",
                    "SSECustomerAlgorithm": "AES256",
                    "SSECustomerKey": key,
                },
            ],
            [
                "put_object",
                {
                    "Bucket": "encbkt",
                    "Key": "s.txt",
                    "Body": "gateway secret",
                    "ServerSideEncryption": "AES256",
                },
            ],
        )
        ops = await self.nfs(
            "readall",
            "/encbkt/c.txt",
            "readall",
            "/encbkt/s.txt",
            "overwrite",
            "/encbkt/s.txt",
            "x",
        )
        self.assertEqual([op["ret"] < 0 for op in ops], [True, True, True], ops)
        self.assertTrue(all("secret" not in str(op.get("result")) for op in ops))
        got = self.local(b"")
        status, text = await self.smb(f"cd encbkt; get c.txt {got}")
        self.assertIn("NT_STATUS_ACCESS_DENIED", text)
        r = await self.boto(
            [
                "get_object",
                {
                    "Bucket": "encbkt",
                    "Key": "c.txt",
                    "SSECustomerAlgorithm": "AES256",
                    "SSECustomerKey": key,
                },
            ],
            ["get_object", {"Bucket": "encbkt", "Key": "s.txt"}],
        )
        self.assertEqual((r[0]["Body"], r[1]["Body"]), ("customer secret", "gateway secret"))


class AclTests(CrossProtocolTestCase):
    async def test_chmod_over_nfs_is_the_acl(self) -> None:
        """A chmod over NFS is what GetObjectAcl shows next; a public-read ACL is the mode NFS sees."""
        await self.boto(
            ["create_bucket", {"Bucket": "aclbkt"}],
            ["put_object", {"Bucket": "aclbkt", "Key": "f", "Body": "x"}],
            ["put_object", {"Bucket": "aclbkt", "Key": "pub", "Body": "y", "ACL": "public-read"}],
        )
        ops = await self.nfs(
            "stat", "/aclbkt/f", "stat", "/aclbkt/pub", "chmod", "/aclbkt/f", "644"
        )
        self.assertEqual(ops[0]["result"]["mode"] & 0o777, 0o600)
        self.assertEqual(ops[1]["result"]["mode"] & 0o777, 0o644)
        self.assertEqual(ops[2]["ret"], 0)
        r = await self.boto(["get_object_acl", {"Bucket": "aclbkt", "Key": "f"}])
        grants = {
            (g["Grantee"].get("URI", g["Grantee"].get("ID")), g["Permission"])
            for g in r[0]["Grants"]
        }
        self.assertIn(("http://acs.amazonaws.com/groups/global/AuthenticatedUsers", "READ"), grants)


class MappingLimitsTests(CrossProtocolTestCase):
    async def test_keys_the_tree_cannot_hold(self) -> None:
        """
        foo/bar and foo/bar/xyzzy cannot both be objects, whichever comes first
        and whoever made the file in the way; a key ending in / holds no data.
        Each refusal is AWS-shaped, clear, counted by kind, and writes nothing.
        """
        r = await self.boto(
            ["create_bucket", {"Bucket": "tree"}],
            ["put_object", {"Bucket": "tree", "Key": "foo/bar", "Body": "file"}],
            ["error", "put_object", {"Bucket": "tree", "Key": "foo/bar/xyzzy", "Body": "x"}],
            ["put_object", {"Bucket": "tree", "Key": "a/b/c", "Body": "deep"}],
            ["error", "put_object", {"Bucket": "tree", "Key": "a/b", "Body": "x"}],
            ["error", "put_object", {"Bucket": "tree", "Key": "dir/", "Body": "data"}],
            ["error", "create_multipart_upload", {"Bucket": "tree", "Key": "dir/"}],
            [
                "error",
                "copy_object",
                {"Bucket": "tree", "Key": "foo/bar/copy", "CopySource": "tree/a/b/c"},
            ],
            ["put_object", {"Bucket": "tree", "Key": "dir/", "Body": ""}],
            ["list_objects_v2", {"Bucket": "tree"}],
        )
        self.assertEqual(r[2], "KeyConflict")
        self.assertEqual(r[4], "KeyConflict")
        self.assertEqual(r[5:8], ["InvalidArgument", "InvalidArgument", "KeyConflict"])
        self.assertEqual(sorted(o["Key"] for o in r[9]["Contents"]), ["a/b/c", "dir/", "foo/bar"])
        # A file made over NFS is in the way just the same.
        ops = await self.nfs(
            "creat", "/tree/nfsfile", "overwrite", "/tree/nfsfile", "made over NFS"
        )
        self.assertEqual([o["ret"] for o in ops], [0, 0], ops)
        r = await self.boto(
            ["error", "put_object", {"Bucket": "tree", "Key": "nfsfile/k", "Body": "x"}],
            ["get_object", {"Bucket": "tree", "Key": "nfsfile"}],
        )
        self.assertEqual((r[0], r[1]["Body"]), ("KeyConflict", "made over NFS"))
        reg = self.root.core.metrics.registry
        count = reg.get_sample_value
        self.assertEqual(count("gateway_s3_mapping_conflicts_total", {"kind": "prefix"}), 4)
        self.assertEqual(count("gateway_s3_mapping_conflicts_total", {"kind": "dir_data"}), 2)
