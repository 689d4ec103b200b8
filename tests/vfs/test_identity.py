"""The user database (L{claudefs_gateway.vfs.identity})."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.errors import ConfigError
from claudefs_gateway.fstypes import Credentials
from claudefs_gateway.vfs.identity import (
    User,
    UserDB,
    load_users_file,
    new_access_key,
    new_secret_key,
    nt_hash,
    save_users_file,
)

ALICE = User(
    "alice",
    1000,
    1000,
    (100, 1000),
    nt_hash("Pass1"),
    "AKALICE",
    "s3cret-alice-key",
    "alice@example.com",
)


class IdentityTests(SynchronousTestCase):
    def test_nt_hash_known_vectors(self) -> None:
        """MD4(UTF-16LE(password)): known answers."""
        self.assertEqual(nt_hash("password"), "8846f7eaee8fb117ad06bdd830b7586c")
        self.assertEqual(nt_hash(""), "31d6cfe0d16ae931b73c59d7e0c089c0")

    def test_lookups(self) -> None:
        db = UserDB(Clock(), inline=[ALICE])
        self.assertIs(db.by_name("ALICE"), ALICE)
        self.assertIs(db.by_uid(1000), ALICE)
        self.assertIs(db.by_access_key("AKALICE"), ALICE)
        self.assertIsNone(db.by_access_key("nope"))
        self.assertEqual(ALICE.credentials, Credentials(1000, 1000, (100,)))

    def test_secrets_masked(self) -> None:
        self.assertNotIn("s3cret", repr(ALICE))
        self.assertNotIn(ALICE.nt_hash or "x", repr(ALICE))

    def test_nfs4_names(self) -> None:
        db = UserDB(Clock(), inline=[ALICE, User("bob", 1001, 1001)], nfs4_domain="example.com")
        self.assertEqual(db.uid_to_nfs4(1000), "alice@example.com")
        self.assertEqual(db.uid_to_nfs4(1001), "bob@example.com")
        self.assertEqual(db.uid_to_nfs4(4242), "4242")
        self.assertEqual(db.nfs4_to_uid("alice@example.com"), 1000)
        self.assertEqual(db.nfs4_to_uid("BOB@example.com"), 1001)
        self.assertEqual(db.nfs4_to_uid("77"), 77)
        self.assertIsNone(db.nfs4_to_uid("carol@example.com"))

    def test_generated_keys(self) -> None:
        k, s = new_access_key(), new_secret_key()
        self.assertTrue(k.startswith("AK") and len(k) == 20 and k.isalnum())
        self.assertEqual(len(s), 40)
        self.assertNotEqual(new_secret_key(), s)


class UsersFileTests(SynchronousTestCase):
    def test_round_trip_and_mode(self) -> None:
        path = Path(self.mktemp())
        save_users_file(path, [ALICE])
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(load_users_file(path), [ALICE])

    def test_missing_is_empty(self) -> None:
        self.assertEqual(load_users_file(Path(self.mktemp())), [])

    def test_invalid_reports_line(self) -> None:
        path = Path(self.mktemp())
        path.write_text("- name: a\n  uid: 1\n  gid: 1\n- name: b\n  uid: -4\n  gid: 1\n")
        with self.assertRaises(ConfigError) as ctx:
            load_users_file(path)
        self.assertIn(":5: users[1].uid: must be at least 0", str(ctx.exception))

    def test_reload_on_change(self) -> None:
        clock = Clock()
        path = Path(self.mktemp())
        db = UserDB(clock, path=path)
        self.assertEqual(db.all(), [])
        save_users_file(path, [ALICE])
        clock.advance(2)
        self.assertEqual(db.by_name("alice").uid, 1000)

    def test_bad_reload_keeps_old(self) -> None:
        clock = Clock()
        path = Path(self.mktemp())
        save_users_file(path, [ALICE])
        db = UserDB(clock, path=path)
        path.write_text("- {name: x}\n")
        clock.advance(2)
        self.assertEqual([u.name for u in db.all()], ["alice"])
        self.flushLoggedErrors()
