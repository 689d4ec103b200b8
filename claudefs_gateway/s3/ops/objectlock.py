# -*- test-case-name: tests.s3.test_objectlock -*-
"""
Object lock: a bucket's configuration and default retention, an object
version's retention and legal hold (docs/s3.rst "Object lock").

The record is the vfs's L{claudefs_gateway.vfs.worm.Retention} on the
version's inode, which every protocol is held to; here are the S3 rules for
setting it.
"""

from __future__ import annotations

from typing import Any

from claudefs_gateway.fstypes import Attributes
from claudefs_gateway.s3 import objectlock, xmlio
from claudefs_gateway.s3.bucketconf import BucketConf
from claudefs_gateway.s3.call import Call, iso_date, parse_iso_date
from claudefs_gateway.s3.errors import S3Error
from claudefs_gateway.s3.ops.objects import ObjectOps
from claudefs_gateway.vfs.worm import WORM_KEY, Retention

__all__ = ["LockOps"]

_MALFORMED = (
    "The XML you provided was not well-formed or did not validate against our published schema"
)


class LockOps(ObjectOps):
    """Object lock configuration, retention and legal hold."""

    async def op_GetObjectLockConfiguration(self, call: Call) -> None:
        assert call.bucket is not None
        tree = self._tree()
        b = await tree.bucket(call.caller, call.bucket)
        conf = await tree.bucket_conf(b)
        if not conf.object_lock:
            raise S3Error(
                "ObjectLockConfigurationNotFoundError",
                "Object Lock configuration does not exist for this bucket",
                BucketName=call.bucket,
            )
        fields: list[tuple[str, Any]] = [("ObjectLockEnabled", "Enabled")]
        rule = conf.lock_rule
        if rule:
            retention: list[tuple[str, Any]] = [("Mode", rule["mode"])]
            if "days" in rule:
                retention.append(("Days", rule["days"]))
            else:
                retention.append(("Years", rule["years"]))
            fields.append(("Rule", [("DefaultRetention", retention)]))
        self._xml(call, xmlio.document("ObjectLockConfiguration", fields))

    async def op_PutObjectLockConfiguration(self, call: Call) -> None:
        """
        Set the default retention (and, on a versioned bucket, enable object
        lock: it cannot be disabled again).
        """
        tree = self._tree()
        b = await self._owned(call)
        enabled, mode, days, years = xmlio.parse_lock_configuration(
            await self._read_small(call, 64 * 1024)
        )
        if enabled != "Enabled":
            raise S3Error("MalformedXML", _MALFORMED)
        if mode is not None and mode not in objectlock.MODES:
            raise S3Error("MalformedXML", _MALFORMED)
        if (mode is not None or days is not None or years is not None) and (
            (days is None) == (years is None) or mode is None
        ):
            raise S3Error("MalformedXML", _MALFORMED)
        rule: dict[str, Any] | None = None
        if mode is not None:
            text = days if days is not None else years
            assert text is not None
            try:
                n = int(text)
            except ValueError:
                raise S3Error("MalformedXML", _MALFORMED) from None
            if n <= 0:
                raise S3Error(
                    "InvalidRetentionPeriod",
                    "Default retention period must be a positive integer value",
                )
            rule = {"mode": mode, "days" if days is not None else "years": n}
        conf = await tree.bucket_conf(b)
        if not conf.object_lock and conf.versioning != "Enabled":
            raise S3Error(
                "InvalidBucketState",
                "Versioning must be 'Enabled' on the bucket to apply a Object Lock configuration",
            )
        conf.object_lock = True
        conf.lock_rule = rule
        await tree.set_bucket_conf(call.caller, b, conf)
        self._empty(call, 200)

    # -- one version ------------------------------------------------------------------

    async def _locked_target(self, call: Call) -> tuple[Attributes, Retention | None, BucketConf]:
        """The version a retention or legal-hold request names, its record, the bucket's settings."""
        assert call.bucket is not None
        tree = self._tree()
        bucket = await tree.bucket(call.caller, call.bucket)
        conf = await tree.bucket_conf(bucket)
        if not conf.object_lock:
            raise S3Error("InvalidRequest", "Bucket is missing Object Lock Configuration")
        a, _, call.version_id = await self._resolve(
            call, bucket, self._key(call), call.query.get("versionId")
        )
        raw = await tree.vfs.meta_get(call.caller, a.ino, WORM_KEY)
        return a, Retention.decode(raw), conf

    async def op_GetObjectRetention(self, call: Call) -> None:
        a, r, _ = await self._locked_target(call)
        if (
            not await self._tree().vfs.access(call.caller, a.ino, 0o4)
            and a.uid != call.caller.cred.uid
        ):
            raise S3Error("AccessDenied")
        if r is None or r.mode is None or r.until_ns is None:
            raise S3Error(
                "NoSuchObjectLockConfiguration",
                "The specified object does not have a ObjectLock configuration",
            )
        self._xml(
            call,
            xmlio.document(
                "Retention", [("Mode", r.mode), ("RetainUntilDate", iso_date(r.until_ns))]
            ),
        )

    async def op_PutObjectRetention(self, call: Call) -> None:
        """
        Set a version's retention: longer always; shorter or removed only in
        governance mode with C{x-amz-bypass-governance-retention} by the
        bucket's owner; compliance never.
        """
        a, old, _ = await self._locked_target(call)
        mode, until_text = xmlio.parse_retention(await self._read_small(call, 64 * 1024))
        if mode is not None and mode not in objectlock.MODES:
            raise S3Error("MalformedXML", _MALFORMED)
        if (mode is None) != (until_text is None):
            raise S3Error("MalformedXML", _MALFORMED)
        until_ns: int | None = None
        now = self._now_ns()
        if until_text is not None:
            t = parse_iso_date(until_text)
            if t is None:
                raise S3Error("MalformedXML", _MALFORMED)
            until_ns = int(t * 1_000_000_000)
            if until_ns <= now:
                raise S3Error("InvalidArgument", "The retain until date must be in the future!")
        objectlock.check_change(old, mode, until_ns, await self._may_bypass(call), now)
        record = Retention(mode, until_ns, old.hold if old is not None else False)
        await self._tree().vfs.meta_set(call.caller, a.ino, WORM_KEY, record.encode())
        self._empty(call, 200)

    async def op_GetObjectLegalHold(self, call: Call) -> None:
        a, r, _ = await self._locked_target(call)
        if (
            not await self._tree().vfs.access(call.caller, a.ino, 0o4)
            and a.uid != call.caller.cred.uid
        ):
            raise S3Error("AccessDenied")
        status = "ON" if r is not None and r.hold else "OFF"
        self._xml(call, xmlio.document("LegalHold", [("Status", status)]))

    async def op_PutObjectLegalHold(self, call: Call) -> None:
        a, old, _ = await self._locked_target(call)
        status = xmlio.parse_legal_hold(await self._read_small(call, 64 * 1024))
        record = Retention(
            old.mode if old is not None else None,
            old.until_ns if old is not None else None,
            status == "ON",
        )
        value = record.encode() if (record.mode is not None or record.hold) else None
        await self._tree().vfs.meta_set(call.caller, a.ino, WORM_KEY, value)
        self._empty(call, 200)
