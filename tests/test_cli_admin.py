"""``cfs-gateway user`` (the users file) and ``cfs-gateway quota`` (through the admin API)."""

from __future__ import annotations

import json
import os

import yaml
from twisted.trial.unittest import TestCase

from claudefs_gateway.vfs.identity import nt_hash
from tests.helpers import bin_path, kill_on_cleanup, loopback_config, spawn, write_config


async def run(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    proc = spawn([bin_path("cfs-gateway"), *args])
    if stdin is not None:
        proc.transport.write(stdin)
        proc.transport.closeStdin()
    status = await proc.ended
    return status, "\n".join(proc.text), proc.stderr.decode()


class UserCommandTests(TestCase):
    timeout = 60

    async def test_bucket_right(self) -> None:
        """
        A user added with S3 keys holds the bucket right by default (nothing
        extra in the users file, "mb" in the list); --no-create-buckets
        withholds it.
        """
        data = os.path.abspath(self.mktemp())
        config = write_config(self, f"backend: {{data_dir: {data}}}\n")
        for name, uid, extra in (("ann", "1000", ()), ("ben", "1001", ("--no-create-buckets",))):
            status, _, err = await run(
                "user", "add", name, "--uid", uid, "--gid", uid, "--s3-keys", "--no-password",
                *extra, "--config", config,
            )  # fmt: skip
            self.assertEqual(status, 0, err)
        ann, ben = yaml.safe_load(open(os.path.join(data, "users.yaml")))
        self.assertNotIn("s3_create_buckets", ann)
        self.assertIs(ben["s3_create_buckets"], False)
        status, out, _ = await run("user", "list", "--config", config)
        lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
        self.assertIn("access=s3,mb ", lines["ann"])
        self.assertIn("access=s3 ", lines["ben"])

    async def test_add_passwd_keys_list_remove(self) -> None:
        data = os.path.abspath(self.mktemp())
        config = write_config(self, f"backend: {{data_dir: {data}}}\n")
        status, out, err = await run(
            "user",
            "add",
            "alice",
            "--uid",
            "1000",
            "--gid",
            "100",
            "--groups",
            "10,20",
            "--s3-keys",
            "--password-stdin",
            "--config",
            config,
            stdin=b"Pass1\n",
        )
        self.assertEqual(status, 0, err)
        users_file = os.path.join(data, "users.yaml")
        self.assertEqual(os.stat(users_file).st_mode & 0o777, 0o600)
        [alice] = yaml.safe_load(open(users_file))
        self.assertEqual((alice["uid"], alice["gid"], alice["groups"]), (1000, 100, [10, 20]))
        self.assertEqual(alice["nt_hash"], nt_hash("Pass1"))
        self.assertIn(f"S3 secret key: {alice['s3_secret_key']}", out)

        status, out, _ = await run("user", "list", "--config", config)
        self.assertEqual(status, 0)
        self.assertIn("alice", out)
        self.assertIn(alice["s3_access_key"], out)
        self.assertNotIn(alice["s3_secret_key"], out)
        self.assertNotIn(alice["nt_hash"], out)

        self.assertEqual(
            (
                await run(
                    "user",
                    "passwd",
                    "alice",
                    "--password-stdin",
                    "--config",
                    config,
                    stdin=b"Other2\n",
                )
            )[0],
            0,
        )
        self.assertEqual(yaml.safe_load(open(users_file))[0]["nt_hash"], nt_hash("Other2"))

        status, _, err = await run(
            "user", "add", "ALICE", "--uid", "1", "--gid", "1", "--no-password", "--config", config
        )
        self.assertEqual(status, 1)
        self.assertIn("exists", err)
        status, _, err = await run(
            "user",
            "add",
            "bad name",
            "--uid",
            "1",
            "--gid",
            "1",
            "--no-password",
            "--config",
            config,
        )
        self.assertEqual(status, 1)
        self.assertIn("users[0].name", err)

        self.assertEqual((await run("user", "remove", "alice", "--config", config))[0], 0)
        self.assertEqual(yaml.safe_load(open(users_file)), [])

    async def test_inline_users_refused(self) -> None:
        config = write_config(self, "users: [{name: a, uid: 1, gid: 1}]\n")
        status, _, err = await run(
            "user", "add", "b", "--uid", "2", "--gid", "2", "--no-password", "--config", config
        )
        self.assertEqual(status, 1)
        self.assertIn("inline", err)


class QuotaCommandTests(TestCase):
    timeout = 60

    async def test_set_report_clear(self) -> None:
        config = loopback_config(self, backend="memory")
        proc = spawn([bin_path("cfs-gateway"), "start", "--config", config])
        kill_on_cleanup(self, proc)
        admin = f"http://127.0.0.1:{await proc.wait_listening('admin')}"
        await proc.wait_ready()

        status, out, err = await run(
            "quota",
            "set-user",
            "--uid",
            "1000",
            "--soft",
            "20GB",
            "--hard",
            "25GB",
            "--inodes-hard",
            "500",
            "--admin",
            admin,
        )
        self.assertEqual(status, 0, err)
        quota = json.loads(out)["quota"]
        self.assertEqual(
            (quota["bytes_soft"], quota["bytes_hard"], quota["inodes_hard"]),
            (20 * 10**9, 25 * 10**9, 500),
        )

        status, out, _ = await run("quota", "report", "--json", "--admin", admin)
        rows = json.loads(out)["quotas"]
        self.assertIn(1000, [r["id"] for r in rows if r["kind"] == "user" and r["own_limits"]])
        status, out, _ = await run("quota", "report", "--admin", admin)
        self.assertIn("user", out)

        status, _, _ = await run(
            "quota", "set-group", "--gid", "5", "--soft", "10", "--hard", "5", "--admin", admin
        )
        self.assertEqual(status, 1)
        status, out, _ = await run(
            "quota", "set-user", "--uid", "1000", "--clear", "--admin", admin
        )
        self.assertEqual(status, 0)
        self.assertFalse(json.loads(out)["quota"] and json.loads(out)["quota"]["own_limits"])
        proc.signal("TERM")
        self.assertEqual(await proc.ended, 0)


class SseKeyCommandTests(TestCase):
    timeout = 60

    async def test_rotate(self) -> None:
        """sse-key rotate makes a keyring (mode 600) and each rotation adds a current key, keeping the old."""
        data = os.path.abspath(self.mktemp())
        os.makedirs(data)
        config = write_config(self, f"backend: {{data_dir: {data}}}\n")
        status, out, err = await run("sse-key", "rotate", "--config", config)
        self.assertEqual(status, 0, err)
        ring = os.path.join(data, "s3-sse-keys.json")
        self.assertEqual(os.stat(ring).st_mode & 0o777, 0o600)
        first = json.load(open(ring))["current"]
        self.assertIn(first, out)
        status, out, err = await run("sse-key", "rotate", "--config", config)
        d = json.load(open(ring))
        self.assertNotEqual(d["current"], first)
        self.assertEqual(set(d["keys"]), {first, d["current"]})
        for key in d["keys"].values():
            self.assertNotIn(key, out + err)
