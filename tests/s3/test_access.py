"""
Access control (issue 16 item 4) on a live gateway: ACLs as the files' modes,
anonymous access only where granted, bucket policies, the public access block
and ownership controls.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase, TestCase

from claudefs_gateway.s3 import acl
from claudefs_gateway.s3.errors import S3Error
from claudefs_gateway.s3.owners import canonical_id
from claudefs_gateway.s3.policy import Policy
from claudefs_gateway.vfs.identity import User
from tests.s3.harness import BOB, Client, s3_port, start_gateway


class Users:
    def __init__(self, users: list[User]) -> None:
        self.users = users

    def all(self) -> list[User]:
        return self.users

    def by_uid(self, uid: int) -> User | None:
        return next((u for u in self.users if u.uid == uid), None)


USERS = Users(
    [User("alice", 1000, 1000, ()), User("bob", 1001, 1001, (1000,)), User("carol", 1002, 1002, ())]
)


class MappingTests(SynchronousTestCase):
    def test_canned_to_modes(self) -> None:
        """Each canned ACL becomes the mode S3's meaning needs, on a bucket and on an object."""
        owner = canonical_id(1000)
        cases = {
            "private": (0o711, 0o600, frozenset()),
            "public-read": (0o755, 0o644, frozenset({"READ"})),
            "public-read-write": (0o777, 0o644, frozenset({"READ", "WRITE"})),
            "authenticated-read": (0o755, 0o644, frozenset()),
        }
        for name, (dmode, fmode, public) in cases.items():
            grants = acl.canned(name, owner)
            d = acl.map_grants(grants, 1000, 1000, True, USERS)
            f = acl.map_grants(grants, 1000, 1000, False, USERS)
            self.assertEqual((d.mode, f.mode, d.public), (dmode, fmode, public), name)

    def test_group_grant_and_refusals(self) -> None:
        """A grant to a member of the file's group maps to group bits; one to an outsider is refused."""
        owner = canonical_id(1000)
        grants = [
            acl.Grant("user", owner, "FULL_CONTROL"),
            acl.Grant("user", canonical_id(1001), "READ"),
        ]
        self.assertEqual(acl.map_grants(grants, 1000, 1000, False, USERS).mode, 0o640)
        grants[1] = acl.Grant("user", canonical_id(1002), "READ")
        e = self.assertRaises(S3Error, acl.map_grants, grants, 1000, 1000, False, USERS)
        self.assertEqual(e.code, "NotImplemented")
        e = self.assertRaises(
            S3Error, acl.map_grants, [acl.Grant("email", "x@y", "READ")], 1000, 1000, False, USERS
        )
        self.assertEqual(e.code, "UnresolvableGrantByEmailAddress")

    def test_round_trip(self) -> None:
        """The ACL read back from a mode is the one that made it."""
        owner = canonical_id(1000)
        for name in ("private", "public-read", "authenticated-read"):
            m = acl.map_grants(acl.canned(name, owner), 1000, 1000, False, USERS)
            back = acl.grants_of(m.mode, 1000, 1000, False, m.public, USERS)
            self.assertEqual(
                sorted(back, key=repr), sorted(acl.canned(name, owner), key=repr), name
            )


class PolicyTests(SynchronousTestCase):
    def test_conditions(self) -> None:
        doc = {
            "Statement": [
                {
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": ["arn:aws:s3:::b", "arn:aws:s3:::b/*"],
                    "Condition": {"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}},
                },
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": "*"},
                    "Action": "s3:ListBucket",
                    "Resource": "arn:aws:s3:::b",
                    "Condition": {"StringLike": {"s3:prefix": "pub/*"}},
                },
            ]
        }
        p = Policy(json.dumps(doc), "b")

        def ctx(ip: str, prefix: str | None):  # type: ignore[no-untyped-def]
            values = {"aws:sourceip": [ip], "s3:prefix": [prefix] if prefix else None}
            return lambda k: values.get(k)

        self.assertEqual(
            p.evaluate([], "s3:GetObject", "arn:aws:s3:::b/k", ctx("192.0.2.1", None)), "deny"
        )
        self.assertEqual(
            p.evaluate([], "s3:ListBucket", "arn:aws:s3:::b", ctx("10.1.2.3", "pub/x")), "allow"
        )
        self.assertIsNone(
            p.evaluate([], "s3:ListBucket", "arn:aws:s3:::b", ctx("10.1.2.3", "priv/"))
        )
        self.assertTrue(p.public)

    def test_malformed(self) -> None:
        for doc in ("not json", "{}", '{"Statement": [{"Effect": "Maybe"}]}'):
            e = self.assertRaises(S3Error, Policy, doc, "b")
            self.assertEqual(e.code, "MalformedPolicy")
        bad = {
            "Statement": {
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": "arn:aws:s3:::other/*",
            }
        }
        self.assertRaises(S3Error, Policy, json.dumps(bad), "b")


class LiveTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.root = await start_gateway(self)
        self.port = s3_port(self.root)
        self.c = Client(self.port)
        self.addCleanup(self.c.close)
        self.anon = Client(self.port)
        self.addCleanup(self.anon.close)
        self.bob = Client(self.port, BOB)
        self.addCleanup(self.bob.close)
        self.assertEqual((await self.c.request("PUT", "/acbkt")).status, 200)

    async def mode(self, path: bytes) -> int:
        s3 = self.root.getServiceNamed("proto:s3")
        a = await s3.tree.vfs.resolve(s3.tree.root_caller, path)
        return int(a.mode & 0o777)

    async def test_private_by_default(self) -> None:
        await self.c.request("PUT", "/acbkt/p", body=b"private")
        self.assertEqual(await self.mode(b"acbkt/p"), 0o600)
        self.assertEqual(await self.mode(b"acbkt"), 0o711)
        r = await self.anon.request("GET", "/acbkt/p", scheme="none")
        self.assertEqual(r.status, 403)
        r = await self.bob.request("GET", "/acbkt/p")
        self.assertEqual(r.status, 403)
        r = await self.c.request("GET", "/acbkt/p", "acl")
        self.assertIn(b"<Permission>FULL_CONTROL</Permission>", r.body)
        self.assertNotIn(b"AllUsers", r.body)

    async def test_public_read_object_anonymous(self) -> None:
        """public-read: anonymous GET works (the mode opens it, the ACL says everyone); listing stays closed."""
        r = await self.c.request(
            "PUT", "/acbkt/pub", headers={"x-amz-acl": "public-read"}, body=b"hello"
        )
        self.assertEqual(r.status, 200)
        self.assertEqual(await self.mode(b"acbkt/pub"), 0o644)
        r = await self.anon.request("GET", "/acbkt/pub", scheme="none")
        self.assertEqual((r.status, r.body), (200, b"hello"))
        r = await self.anon.request("GET", "/acbkt", scheme="none")
        self.assertEqual(r.status, 403)
        r = await self.anon.request("PUT", "/acbkt/x", scheme="none", body=b"x")
        self.assertEqual(r.status, 403)
        r = await self.c.request("GET", "/acbkt/pub", "acl")
        self.assertIn(b"AllUsers</URI></Grantee><Permission>READ", r.body)

    async def test_authenticated_read_not_anonymous(self) -> None:
        await self.c.request(
            "PUT", "/acbkt/auth", headers={"x-amz-acl": "authenticated-read"}, body=b"a"
        )
        r = await self.bob.request("GET", "/acbkt/auth")
        self.assertEqual(r.status, 200)
        r = await self.anon.request("GET", "/acbkt/auth", scheme="none")
        self.assertEqual(r.status, 403)

    async def test_put_bucket_acl_and_public_access_block(self) -> None:
        r = await self.c.request("PUT", "/acbkt", "acl", headers={"x-amz-acl": "public-read"})
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(await self.mode(b"acbkt"), 0o755)
        r = await self.anon.request("GET", "/acbkt", scheme="none")
        self.assertEqual(r.status, 200)
        body = b"<PublicAccessBlockConfiguration><IgnorePublicAcls>true</IgnorePublicAcls><BlockPublicAcls>true</BlockPublicAcls></PublicAccessBlockConfiguration>"
        r = await self.c.request("PUT", "/acbkt", "publicAccessBlock", body=body)
        self.assertEqual(r.status, 200)
        r = await self.anon.request("GET", "/acbkt", scheme="none")
        self.assertEqual(r.status, 403)
        r = await self.c.request("PUT", "/acbkt/o", headers={"x-amz-acl": "public-read"}, body=b"x")
        self.assertEqual(r.status, 403)
        # Only the owner may change a bucket's ACL.
        r = await self.bob.request("PUT", "/acbkt", "acl", headers={"x-amz-acl": "private"})
        self.assertEqual(r.status, 403)

    async def test_grant_outside_group_refused(self) -> None:
        r = await self.c.request(
            "PUT",
            "/acbkt/g",
            headers={"x-amz-grant-read": f'id="{canonical_id(1002)}"'},
            body=b"x",
        )
        self.assertEqual((r.status, r.code), (501, "NotImplemented"))

    async def test_policy_deny_and_anonymous_allow(self) -> None:
        await self.c.request(
            "PUT", "/acbkt/doc", headers={"x-amz-acl": "authenticated-read"}, body=b"d"
        )
        policy = {
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": "*",
                    "Action": "s3:GetObject",
                    "Resource": "arn:aws:s3:::acbkt/*",
                },
                {
                    "Effect": "Deny",
                    "Principal": {"AWS": [canonical_id(1001)]},
                    "Action": "s3:GetObject",
                    "Resource": "arn:aws:s3:::acbkt/*",
                },
            ]
        }
        r = await self.c.request("PUT", "/acbkt", "policy", body=json.dumps(policy).encode())
        self.assertEqual(r.status, 204, r.body)
        r = await self.anon.request("GET", "/acbkt/doc", scheme="none")
        self.assertEqual((r.status, r.body), (200, b"d"))
        r = await self.bob.request("GET", "/acbkt/doc")
        self.assertEqual(r.status, 403)
        r = await self.c.request("GET", "/acbkt", "policyStatus")
        self.assertIn(b"<IsPublic>true</IsPublic>", r.body)
        r = await self.c.request("GET", "/acbkt", "policy")
        self.assertEqual(json.loads(r.body), policy)

    async def test_ownership_enforced(self) -> None:
        r = await self.c.request(
            "PUT", "/ownbkt", headers={"x-amz-object-ownership": "BucketOwnerEnforced"}
        )
        self.assertEqual(r.status, 200)
        r = await self.c.request("GET", "/ownbkt", "ownershipControls")
        self.assertIn(b"<ObjectOwnership>BucketOwnerEnforced</ObjectOwnership>", r.body)
        r = await self.c.request(
            "PUT", "/ownbkt/x", headers={"x-amz-acl": "public-read"}, body=b"x"
        )
        self.assertEqual((r.status, r.code), (400, "AccessControlListNotSupported"))
        # ACLs are switched off only on a bucket that grants no one else anything.
        r = await self.c.request("PUT", "/pubbkt", headers={"x-amz-acl": "public-read"})
        self.assertEqual(r.status, 200)
        body = (
            b"<OwnershipControls><Rule><ObjectOwnership>BucketOwnerEnforced</ObjectOwnership>"
            b"</Rule></OwnershipControls>"
        )
        r = await self.c.request("PUT", "/pubbkt", "ownershipControls", body=body)
        self.assertEqual((r.status, r.code), (400, "InvalidBucketAclWithObjectOwnership"))
        r = await self.c.request("PUT", "/pubbkt", "acl", headers={"x-amz-acl": "private"})
        self.assertEqual(r.status, 200)
        r = await self.c.request("PUT", "/pubbkt", "ownershipControls", body=body)
        self.assertEqual(r.status, 200, r.body)
