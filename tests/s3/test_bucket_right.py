"""
A first S3 user creates buckets without the operator opening the S3 root:
the per-user bucket right (C{users[].s3_create_buckets}, on by default).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from claudefs_gateway import service
from claudefs_gateway.core import config as cfg
from tests.helpers import bin_path, child_env, spawn
from tests.s3.harness import ALICE, BACKEND, BOB, REGION, Client, s3_port

# No s3.root_mode: the S3 root is made root's and 0755, as for a new operator.
CONFIG = """
backend: {{type: {backend}, data_dir: "{data}"}}
admin: {{bind: "127.0.0.1:0"}}
s3: {{bind: "127.0.0.1:0", root: /s3, region: {region}}}
users:
  - {{name: alice, uid: 1000, gid: 1000, s3_access_key: {a[0]}, s3_secret_key: "{a[1]}"}}
  - {{name: bob, uid: 1001, gid: 1001, s3_access_key: {b[0]}, s3_secret_key: "{b[1]}",
      s3_create_buckets: false}}
"""


class BucketRightTests(TestCase):
    timeout = 120

    async def setUp(self) -> None:
        data = os.path.abspath(self.mktemp())
        config = cfg.loads(CONFIG.format(backend=BACKEND, data=data, region=REGION, a=ALICE, b=BOB))
        self.root = service.build(config, reactor, protocols=["s3"])
        self.root.privilegedStartService()
        self.root.startService()
        self.addCleanup(self.root.stopService)
        self.s3 = self.root.getServiceNamed("proto:s3")
        await self.s3.ready()
        self.port = s3_port(self.root)
        self.alice = Client(self.port, ALICE)
        self.bob = Client(self.port, BOB)
        self.addCleanup(self.alice.close)
        self.addCleanup(self.bob.close)

    async def root_attrs(self) -> Any:
        tree = self.s3.tree
        return await tree.vfs.getattr(tree.root_caller, tree.export.root_ino)

    async def test_first_user_creates_and_deletes_a_bucket(self) -> None:
        """
        With the S3 root left root's and 0755, a user holding the default bucket
        right creates a bucket, owns it, writes to it and deletes it; the root's
        owner and mode do not change.
        """
        before = await self.root_attrs()
        self.assertEqual((before.uid, before.mode & 0o7777), (0, 0o755))
        r = await self.alice.request("PUT", "/photos")
        self.assertEqual(r.status, 200, r.body)
        tree = self.s3.tree
        b = await tree.bucket(tree.root_caller, "photos")
        self.assertEqual((b.uid, b.gid), (1000, 1000))
        r = await self.alice.request("PUT", "/photos/a.jpg", body=b"jpeg")
        self.assertEqual(r.status, 200, r.body)
        # us-east-1 (the harness's region) answers an owner creating its own
        # bucket again with 200, changing nothing, as AWS does.
        r = await self.alice.request("PUT", "/photos")
        self.assertEqual(r.status, 200, r.body)
        r = await self.alice.request("DELETE", "/photos/a.jpg")
        self.assertEqual(r.status, 204)
        r = await self.alice.request("DELETE", "/photos")
        self.assertEqual(r.status, 204, r.body)
        after = await self.root_attrs()
        self.assertEqual((after.uid, after.mode & 0o7777), (0, 0o755))

    async def test_without_the_right(self) -> None:
        """
        A user whose bucket right is withdrawn cannot create a bucket in a closed
        root (AccessDenied), nor delete another user's bucket.
        """
        r = await self.bob.request("PUT", "/bobs")
        self.assertEqual((r.status, r.code), (403, "AccessDenied"))
        r = await self.alice.request("PUT", "/alices")
        self.assertEqual(r.status, 200, r.body)
        r = await self.bob.request("DELETE", "/alices")
        self.assertEqual((r.status, r.code), (403, "AccessDenied"))
        # Without write permission on the root, the permission check comes first.
        r = await self.bob.request("PUT", "/alices")
        self.assertEqual((r.status, r.code), (403, "AccessDenied"))

    async def test_aws_cli_mb_and_rb(self) -> None:
        """The aws cli, as a new user would run it: ``s3 mb``, ``s3 ls``, ``s3 rb``."""
        home = os.path.abspath(self.mktemp())
        os.makedirs(home)
        env = child_env(
            HOME=home,
            AWS_ACCESS_KEY_ID=ALICE[0],
            AWS_SECRET_ACCESS_KEY=ALICE[1],
            AWS_DEFAULT_REGION=REGION,
            AWS_CONFIG_FILE=os.path.join(home, "config"),
            AWS_SHARED_CREDENTIALS_FILE=os.path.join(home, "credentials"),
            AWS_EC2_METADATA_DISABLED="true",
            AWS_PAGER="",
        )
        endpoint = f"http://127.0.0.1:{self.port}"

        async def aws(*args: str) -> str:
            proc = spawn([bin_path("aws"), "--endpoint-url", endpoint, *args], env=env)
            status = await proc.ended
            out = "\n".join(proc.text) + proc.stderr.decode("utf-8", "replace")
            self.assertEqual(status, 0, out)
            return out

        await aws("s3", "mb", "s3://first-bucket")
        self.assertIn("first-bucket", await aws("s3", "ls"))
        await aws("s3", "rb", "s3://first-bucket")
        self.assertNotIn("first-bucket", await aws("s3", "ls"))
