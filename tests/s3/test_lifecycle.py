"""Lifecycle (issue 16 item 6): rules validated, and the service applying them on a live gateway."""

from __future__ import annotations

import re
import time

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from claudefs_gateway.s3 import lifecycle, xmlio
from claudefs_gateway.s3.errors import S3Error
from tests.s3.harness import Client, s3_port, start_gateway

DAY = 86400


def rules(body: str) -> list[dict]:  # type: ignore[type-arg]
    return xmlio.parse_lifecycle(
        f"<LifecycleConfiguration>{body}</LifecycleConfiguration>".encode()
    )


class RuleTests(SynchronousTestCase):
    def test_validation(self) -> None:
        ok = rules(
            "<Rule><ID>r</ID><Filter><And><Prefix>logs/</Prefix><Tag><Key>k</Key><Value>v</Value></Tag>"
            "</And></Filter><Status>Enabled</Status><Expiration><Days>3</Days></Expiration></Rule>"
        )
        self.assertEqual((ok[0]["prefix"], ok[0]["tags"], ok[0]["days"]), ("logs/", {"k": "v"}, 3))
        for bad, code in [
            (
                "<Rule><ID>r</ID><Status>Maybe</Status><Expiration><Days>1</Days></Expiration></Rule>",
                "MalformedXML",
            ),
            (
                "<Rule><ID>r</ID><Status>Enabled</Status><Expiration><Days>0</Days></Expiration></Rule>",
                "InvalidArgument",
            ),
            (
                "<Rule><ID>r</ID><Status>Enabled</Status><Expiration><Date>2030-01-01T10:00:00Z</Date></Expiration></Rule>",
                "InvalidArgument",
            ),
            (
                f"<Rule><ID>{'x' * 256}</ID><Status>Enabled</Status><Expiration><Days>1</Days></Expiration></Rule>",
                "InvalidArgument",
            ),
            (
                "<Rule><ID>a</ID><Status>Enabled</Status><Expiration><Days>1</Days></Expiration></Rule>"
                * 2,
                "InvalidArgument",
            ),
            (
                "<Rule><ID>t</ID><Status>Enabled</Status><Transition><Days>1</Days><StorageClass>GLACIER</StorageClass></Transition></Rule>",
                "NotImplemented",
            ),
        ]:
            e = self.assertRaises(S3Error, rules, bad)
            self.assertEqual(e.code, code, bad[:60])

    def test_expiration_header(self) -> None:
        r = rules(
            "<Rule><ID>rule1</ID><Prefix>days1/</Prefix><Status>Enabled</Status><Expiration><Days>1</Days></Expiration></Rule>"
        )
        h = lifecycle.expiration_header(r, "days1/foo", {}, 3, 1_700_000_000.0)
        self.assertEqual(h, 'expiry-date="Thu, 16 Nov 2023 00:00:00 GMT", rule-id="rule1"')
        self.assertIsNone(lifecycle.expiration_header(r, "other", {}, 3, 1_700_000_000.0))


class ServiceTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.root = await start_gateway(self)
        self.c = Client(s3_port(self.root))
        self.addCleanup(self.c.close)
        self.s3 = self.root.getServiceNamed("proto:s3")
        await self.c.request("PUT", "/lcbkt")

    async def put_rules(self, body: str) -> None:
        r = await self.c.request(
            "PUT",
            "/lcbkt",
            "lifecycle",
            body=f"<LifecycleConfiguration>{body}</LifecycleConfiguration>".encode(),
        )
        self.assertEqual(r.status, 200, r.body)

    async def run_at(self, days: float) -> None:
        """One pass of the lifecycle service as if C{days} had gone by."""
        worker = self.s3.lifecycle
        clock = Clock()
        clock.advance(time.time() + days * DAY)
        worker.clock = clock
        await worker.run()

    async def keys(self) -> list[bytes]:
        r = await self.c.request("GET", "/lcbkt", {"list-type": "2"})
        return re.findall(rb"<Key>([^<]*)</Key>", r.body)

    async def test_expiration_by_prefix_tag_and_size(self) -> None:
        await self.put_rules(
            "<Rule><ID>old</ID><Filter><Prefix>tmp/</Prefix></Filter><Status>Enabled</Status><Expiration><Days>2</Days></Expiration></Rule>"
            "<Rule><ID>tagged</ID><Filter><Tag><Key>kind</Key><Value>scratch</Value></Tag></Filter><Status>Enabled</Status><Expiration><Days>1</Days></Expiration></Rule>"
            "<Rule><ID>big</ID><Filter><ObjectSizeGreaterThan>10</ObjectSizeGreaterThan></Filter><Status>Enabled</Status><Expiration><Days>5</Days></Expiration></Rule>"
        )
        await self.c.request("PUT", "/lcbkt/tmp/a", body=b"a")
        await self.c.request("PUT", "/lcbkt/keep", body=b"k")
        await self.c.request(
            "PUT", "/lcbkt/t", headers={"x-amz-tagging": "kind=scratch"}, body=b"t"
        )
        await self.c.request("PUT", "/lcbkt/large", body=b"x" * 100)
        r = await self.c.request("HEAD", "/lcbkt/tmp/a")
        self.assertIn('rule-id="old"', r.header("x-amz-expiration") or "")
        await self.run_at(1.5)
        self.assertEqual(await self.keys(), [b"keep", b"large", b"tmp/a"])
        await self.run_at(2.5)
        self.assertEqual(await self.keys(), [b"keep", b"large"])
        await self.run_at(6)
        self.assertEqual(await self.keys(), [b"keep"])
        reg = self.root.core.metrics.registry
        self.assertEqual(
            reg.get_sample_value("gateway_s3_lifecycle_actions_total", {"action": "expire"}), 3
        )

    async def test_versioned_noncurrent_and_markers(self) -> None:
        await self.c.request(
            "PUT",
            "/lcbkt",
            "versioning",
            body=b"<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>",
        )
        await self.put_rules(
            "<Rule><ID>cur</ID><Filter><Prefix></Prefix></Filter><Status>Enabled</Status><Expiration><Days>3</Days></Expiration>"
            "<NoncurrentVersionExpiration><NoncurrentDays>1</NoncurrentDays></NoncurrentVersionExpiration></Rule>"
        )
        for body in (b"1", b"2", b"3"):
            await self.c.request("PUT", "/lcbkt/k", body=body)
        await self.run_at(1.5)
        r = await self.c.request("GET", "/lcbkt", {"versions": ""})
        self.assertEqual(r.body.count(b"<Version>"), 1)  # noncurrent ones went
        await self.run_at(3.5)
        r = await self.c.request("GET", "/lcbkt", {"versions": ""})
        self.assertEqual((r.body.count(b"<Version>"), r.body.count(b"<DeleteMarker>")), (1, 1))
        await self.run_at(5)  # the version went too; the marker stays until it is 3 days old
        r = await self.c.request("GET", "/lcbkt", {"versions": ""})
        self.assertEqual((r.body.count(b"<Version>"), r.body.count(b"<DeleteMarker>")), (0, 1))
        await self.run_at(7)  # then it is removed
        r = await self.c.request("GET", "/lcbkt", {"versions": ""})
        self.assertEqual((r.body.count(b"<Version>"), r.body.count(b"<DeleteMarker>")), (0, 0))

    async def test_abort_incomplete_uploads(self) -> None:
        await self.put_rules(
            "<Rule><ID>mp</ID><Filter><Prefix></Prefix></Filter><Status>Enabled</Status>"
            "<AbortIncompleteMultipartUpload><DaysAfterInitiation>1</DaysAfterInitiation></AbortIncompleteMultipartUpload></Rule>"
        )
        await self.c.request("POST", "/lcbkt/big", "uploads")
        await self.run_at(2)
        r = await self.c.request("GET", "/lcbkt", "uploads")
        self.assertNotIn(b"<Upload>", r.body)
        r = await self.c.request("GET", "/lcbkt", "lifecycle")
        self.assertIn(b"<DaysAfterInitiation>1</DaysAfterInitiation>", r.body)


class RemovedWhilePassedTests(TestCase):
    """
    A lifecycle pass is no snapshot either: an object deleted between its
    directory's listing and the pass's read of its metadata is nothing to do,
    and the pass goes on with the rest of the bucket (before, it stopped
    there, and the rest waited for the next interval - forever, for a bucket
    always busy). The hook is RemovedWhileListedTests' (tests/s3/test_versions.py).
    """

    timeout = 60
    setUp = ServiceTests.setUp
    put_rules = ServiceTests.put_rules
    run_at = ServiceTests.run_at
    keys = ServiceTests.keys

    async def remove_after_listing(self, *deletes: tuple[str, dict[str, str] | None]) -> list[bool]:
        """After the first listing of the bucket, run C{deletes} (path, query) to their answers."""
        vfs = self.s3.tree.vfs
        rc = self.s3.tree.root_caller
        bucket = await vfs.lookup(rc, self.s3.tree.export.root_ino, b"lcbkt")
        real = vfs.readdir
        fired: list[bool] = []

        async def hooked(*args: object, **kw: object) -> object:
            result = await real(*args, **kw)
            if not fired and args[1] == bucket.ino:
                fired.append(True)
                for path, query in deletes:
                    r = await self.c.request("DELETE", path, query)
                    self.assertEqual(r.status, 204, r.body)
            return result

        self.patch(vfs, "readdir", lambda *a, **kw: defer.ensureDeferred(hooked(*a, **kw)))
        return fired

    async def test_expiry_goes_on_past_an_object_deleted_meanwhile(self) -> None:
        """The objects after one deleted during the pass expire in that pass."""
        await self.put_rules(
            "<Rule><ID>all</ID><Filter><Prefix></Prefix></Filter><Status>Enabled</Status>"
            "<Expiration><Days>1</Days></Expiration></Rule>"
        )
        for k in ("a", "b", "c"):
            await self.c.request("PUT", f"/lcbkt/{k}", body=k.encode())
        fired = await self.remove_after_listing(("/lcbkt/b", None))
        await self.run_at(2)
        self.assertEqual(fired, [True])
        self.assertEqual(await self.keys(), [])
        reg = self.root.core.metrics.registry
        self.assertEqual(
            reg.get_sample_value("gateway_s3_lifecycle_actions_total", {"action": "expire"}), 2
        )
        self.assertFalse(self.flushLoggedErrors())

    async def test_noncurrent_goes_on_past_a_current_version_deleted_meanwhile(self) -> None:
        """A versioned key whose current version went during the pass; the next key is done."""
        await self.c.request(
            "PUT",
            "/lcbkt",
            "versioning",
            body=b"<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>",
        )
        await self.put_rules(
            "<Rule><ID>nc</ID><Filter><Prefix></Prefix></Filter><Status>Enabled</Status>"
            "<NoncurrentVersionExpiration><NoncurrentDays>1</NoncurrentDays></NoncurrentVersionExpiration></Rule>"
        )
        vids = {}
        for k in ("k", "z"):
            for body in (b"1", b"2"):
                r = await self.c.request("PUT", f"/lcbkt/{k}", body=body)
                vids[k, body] = r.header("x-amz-version-id")
        # k's current version (2) goes: its version 1 is promoted to current.
        fired = await self.remove_after_listing(("/lcbkt/k", {"versionId": vids["k", b"2"]}))
        await self.run_at(1.5)
        self.assertEqual(fired, [True])
        r = await self.c.request("GET", "/lcbkt", {"versions": ""})
        listed = re.findall(rb"<Key>([^<]*)</Key><VersionId>([^<]*)</VersionId>", r.body)
        self.assertEqual(
            listed, [(b"k", vids["k", b"1"].encode()), (b"z", vids["z", b"2"].encode())]
        )
        self.assertFalse(self.flushLoggedErrors())
