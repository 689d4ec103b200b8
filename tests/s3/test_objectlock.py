"""Object lock and tagging (issue 16 item 3) on a live gateway, and the WORM rules in the vfs."""

from __future__ import annotations

import re

from twisted.trial.unittest import SynchronousTestCase, TestCase

from claudefs_gateway import errors
from claudefs_gateway.fstypes import SetAttrs
from claudefs_gateway.testing.vfs import MemoryVFS
from claudefs_gateway.vfs.origin import Origin
from claudefs_gateway.vfs.worm import COMPLIANCE, GOVERNANCE, WORM_KEY, Retention
from tests.s3.harness import BOB, Client, s3_port, start_gateway

FAR = "2099-01-01T00:00:00Z"


class LockTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.root = await start_gateway(self)
        self.port = s3_port(self.root)
        self.c = Client(self.port)
        self.addCleanup(self.c.close)
        r = await self.c.request(
            "PUT", "/lkbkt", headers={"x-amz-bucket-object-lock-enabled": "true"}
        )
        self.assertEqual(r.status, 200)

    async def test_bucket_is_versioned_and_configurable(self) -> None:
        r = await self.c.request("GET", "/lkbkt", "versioning")
        self.assertIn(b"<Status>Enabled</Status>", r.body)
        body = (
            b"<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule>"
            b"<DefaultRetention><Mode>GOVERNANCE</Mode><Days>1</Days></DefaultRetention></Rule>"
            b"</ObjectLockConfiguration>"
        )
        r = await self.c.request("PUT", "/lkbkt", "object-lock", body=body)
        self.assertEqual(r.status, 200, r.body)
        r = await self.c.request("GET", "/lkbkt", "object-lock")
        self.assertIn(b"<Mode>GOVERNANCE</Mode><Days>1</Days>", r.body)
        # The default applies to new objects.
        r = await self.c.request("PUT", "/lkbkt/d", body=b"x")
        r = await self.c.request("HEAD", "/lkbkt/d")
        self.assertEqual(r.header("x-amz-object-lock-mode"), "GOVERNANCE")
        body = body.replace(b"<Days>1</Days>", b"<Days>0</Days>")
        r = await self.c.request("PUT", "/lkbkt", "object-lock", body=body)
        self.assertEqual(r.code, "InvalidRetentionPeriod")
        r = await self.c.request(
            "PUT",
            "/lkbkt",
            "versioning",
            body=b"<VersioningConfiguration><Status>Suspended</Status></VersioningConfiguration>",
        )
        self.assertEqual((r.status, r.code), (409, "InvalidBucketState"))

    async def test_retention_refuses_deletes(self) -> None:
        """A version under governance retention: deleting it is refused unless the owner bypasses."""
        r = await self.c.request(
            "PUT",
            "/lkbkt/k",
            headers={
                "x-amz-object-lock-mode": "GOVERNANCE",
                "x-amz-object-lock-retain-until-date": FAR,
            },
            body=b"keep me",
        )
        self.assertEqual(r.status, 200, r.body)
        vid = r.header("x-amz-version-id")
        r = await self.c.request("GET", "/lkbkt/k", {"retention": "", "versionId": vid})
        self.assertIn(b"<Mode>GOVERNANCE</Mode>", r.body)
        r = await self.c.request("DELETE", "/lkbkt/k", {"versionId": vid})
        self.assertEqual((r.status, r.code), (403, "AccessDenied"))
        # Without a version id: a delete marker, nothing destroyed.
        r = await self.c.request("DELETE", "/lkbkt/k")
        self.assertEqual((r.status, r.header("x-amz-delete-marker")), (204, "true"))
        r = await self.c.request("GET", "/lkbkt/k", {"versionId": vid})
        self.assertEqual(r.body, b"keep me")
        # Shortening governance needs the bypass; compliance cannot be shortened at all.
        short = b"<Retention><Mode>GOVERNANCE</Mode><RetainUntilDate>2098-01-01T00:00:00Z</RetainUntilDate></Retention>"
        r = await self.c.request("PUT", "/lkbkt/k", {"retention": "", "versionId": vid}, body=short)
        self.assertEqual(r.code, "AccessDenied")
        bob = Client(self.port, BOB)
        self.addCleanup(bob.close)
        r = await self.c.request(
            "DELETE",
            "/lkbkt/k",
            {"versionId": vid},
            headers={"x-amz-bypass-governance-retention": "true"},
        )
        self.assertEqual(r.status, 204)
        r = await self.c.request("GET", "/lkbkt/k", {"versionId": vid})
        self.assertEqual(r.code, "NoSuchVersion")

    async def test_legal_hold(self) -> None:
        r = await self.c.request("PUT", "/lkbkt/h", body=b"held")
        vid = r.header("x-amz-version-id")
        r = await self.c.request(
            "PUT", "/lkbkt/h", "legal-hold", body=b"<LegalHold><Status>ON</Status></LegalHold>"
        )
        self.assertEqual(r.status, 200)
        r = await self.c.request(
            "DELETE",
            "/lkbkt/h",
            {"versionId": vid},
            headers={"x-amz-bypass-governance-retention": "true"},
        )
        self.assertEqual(r.code, "AccessDenied")
        r = await self.c.request("GET", "/lkbkt/h", "legal-hold")
        self.assertIn(b"<Status>ON</Status>", r.body)
        await self.c.request(
            "PUT", "/lkbkt/h", "legal-hold", body=b"<LegalHold><Status>OFF</Status></LegalHold>"
        )
        r = await self.c.request("DELETE", "/lkbkt/h", {"versionId": vid})
        self.assertEqual(r.status, 204)

    async def test_lock_headers_need_a_lock_bucket(self) -> None:
        await self.c.request("PUT", "/plainbkt")
        r = await self.c.request(
            "PUT", "/plainbkt/k", headers={"x-amz-object-lock-legal-hold": "ON"}, body=b"x"
        )
        self.assertEqual((r.status, r.code), (400, "InvalidRequest"))
        r = await self.c.request("GET", "/plainbkt", "object-lock")
        self.assertEqual(r.code, "ObjectLockConfigurationNotFoundError")


class TaggingTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.root = await start_gateway(self)
        self.c = Client(s3_port(self.root))
        self.addCleanup(self.c.close)
        await self.c.request("PUT", "/tgbkt")

    async def test_object_tags(self) -> None:
        r = await self.c.request(
            "PUT", "/tgbkt/o", headers={"x-amz-tagging": "a=1&b=two%20words"}, body=b"x"
        )
        self.assertEqual(r.status, 200)
        r = await self.c.request("HEAD", "/tgbkt/o")
        self.assertEqual(r.header("x-amz-tagging-count"), "2")
        r = await self.c.request("GET", "/tgbkt/o", "tagging")
        self.assertEqual(
            re.findall(rb"<Key>([^<]*)</Key><Value>([^<]*)</Value>", r.body),
            [(b"a", b"1"), (b"b", b"two words")],
        )
        # Copies take the source's tags (COPY) or the request's (REPLACE).
        await self.c.request("PUT", "/tgbkt/c1", headers={"x-amz-copy-source": "/tgbkt/o"})
        r = await self.c.request("GET", "/tgbkt/c1", "tagging")
        self.assertIn(b"<Key>a</Key>", r.body)
        await self.c.request(
            "PUT",
            "/tgbkt/c2",
            headers={
                "x-amz-copy-source": "/tgbkt/o",
                "x-amz-tagging-directive": "REPLACE",
                "x-amz-tagging": "z=9",
            },
        )
        r = await self.c.request("GET", "/tgbkt/c2", "tagging")
        self.assertEqual(re.findall(rb"<Key>([^<]*)</Key>", r.body), [b"z"])
        body = (
            "<Tagging><TagSet>"
            + "".join(f"<Tag><Key>k{i}</Key><Value>v</Value></Tag>" for i in range(11))
            + "</TagSet></Tagging>"
        )
        r = await self.c.request("PUT", "/tgbkt/o", "tagging", body=body.encode())
        self.assertEqual((r.status, r.code), (400, "InvalidTag"))
        r = await self.c.request("DELETE", "/tgbkt/o", "tagging")
        self.assertEqual(r.status, 204)
        r = await self.c.request("GET", "/tgbkt/o", "tagging")
        self.assertNotIn(b"<Tag>", r.body)

    async def test_bucket_tags(self) -> None:
        r = await self.c.request("GET", "/tgbkt", "tagging")
        self.assertEqual((r.status, r.code), (404, "NoSuchTagSet"))
        body = b"<Tagging><TagSet><Tag><Key>team</Key><Value>fs</Value></Tag></TagSet></Tagging>"
        r = await self.c.request("PUT", "/tgbkt", "tagging", body=body)
        self.assertEqual(r.status, 204)
        r = await self.c.request("GET", "/tgbkt", "tagging")
        self.assertIn(b"<Key>team</Key><Value>fs</Value>", r.body)
        bob = Client(s3_port(self.root), BOB)
        self.addCleanup(bob.close)
        r = await bob.request("PUT", "/tgbkt", "tagging", body=body)
        self.assertEqual(r.status, 403)


class WormTests(SynchronousTestCase):
    """The vfs enforces retention and legal hold on every protocol."""

    def setUp(self) -> None:
        self.m = MemoryVFS("exports: [{path: /export, dir_mode: 0777}]\n")
        self.vfs = self.m.vfs
        self.nfs = self.m.caller(protocol="nfs3")
        self.smb = self.m.caller(protocol="smb")
        self.s3 = self.m.caller(protocol="s3")
        root = self.m.root()
        self.root = root
        self.f = self.successResultOf(self.vfs.create(self.nfs, root, b"f", 0o666))
        self.successResultOf(self.vfs.write(self.nfs, self.f.ino, 0, b"data", True))

    def lock(self, r: Retention) -> None:
        self.successResultOf(self.vfs.meta_set(self.s3, self.f.ino, WORM_KEY, r.encode()))

    def test_every_mutation_refused(self) -> None:
        """Under retention: write, truncate, unlink, rename and rename-over are EPERM over NFS and SMB."""
        self.lock(Retention(COMPLIANCE, 2**62, False))
        for who in (self.nfs, self.smb):
            self.failureResultOf(self.vfs.write(who, self.f.ino, 0, b"x", True), errors.Perm)
            self.failureResultOf(self.vfs.setattr(who, self.f.ino, SetAttrs(size=0)), errors.Perm)
            self.failureResultOf(self.vfs.remove(who, self.root, b"f"), errors.Perm)
            self.failureResultOf(
                self.vfs.rename(who, self.root, b"f", self.root, b"g"), errors.Perm
            )
            other = self.successResultOf(self.vfs.create(who, self.root, b"o", 0o666))
            self.failureResultOf(
                self.vfs.rename(who, self.root, b"o", self.root, b"f"), errors.Perm
            )
            self.successResultOf(self.vfs.remove(who, self.root, b"o"))
            del other
        # Reading is fine; so are a second name and its removal.
        self.assertEqual(
            self.successResultOf(self.vfs.read(self.nfs, self.f.ino, 0, 10)).data, b"data"
        )
        self.successResultOf(self.vfs.link(self.nfs, self.f.ino, self.root, b"second"))
        self.successResultOf(self.vfs.remove(self.nfs, self.root, b"second"))

    def test_governance_bypass_only_for_deletes(self) -> None:
        self.lock(Retention(GOVERNANCE, 2**62, False))
        bypass = Origin(strict=True, bypass_governance=True)
        self.failureResultOf(
            self.vfs.write(self.s3, self.f.ino, 0, b"x", True, bypass), errors.Perm
        )
        self.failureResultOf(self.vfs.remove(self.nfs, self.root, b"f"), errors.Perm)
        self.successResultOf(self.vfs.remove(self.s3, self.root, b"f", bypass))

    def test_legal_hold_not_bypassable_and_expiry_frees(self) -> None:
        self.lock(Retention(None, None, True))
        bypass = Origin(strict=True, bypass_governance=True)
        self.failureResultOf(self.vfs.remove(self.s3, self.root, b"f", bypass), errors.Perm)
        self.lock(Retention(GOVERNANCE, 1, False))  # retention long past
        self.successResultOf(self.vfs.write(self.nfs, self.f.ino, 0, b"x", True))
        self.successResultOf(self.vfs.remove(self.nfs, self.root, b"f"))
