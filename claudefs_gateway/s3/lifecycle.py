# -*- test-case-name: tests.s3.test_lifecycle -*-
"""
Bucket lifecycle: rules (parsed, validated, kept in the bucket's settings)
and the background service that applies them (docs/s3.rst "Lifecycle").

A rule selects objects by a filter (key prefix, tags, size bounds) and says
what happens to them: current versions expire a number of days after they
were written or on a date (in a versioned bucket, expiring adds a delete
marker); a delete marker left with no versions behind it is removed
(C{ExpiredObjectDeleteMarker}); noncurrent versions go a number of days after
they stopped being current, keeping the newest C{NewerNoncurrentVersions};
incomplete multipart uploads are aborted a number of days after they began.
Transitions to other storage classes are not served (every object is
STANDARD): 501.

The service walks every bucket with rules once per C{s3.lifecycle_interval_secs},
as the gateway (root) on the bucket owner's behalf, and skips what object
lock protects. A day is C{s3.lifecycle_day_secs} seconds (86,400; shorter
only to test rules quickly, as RGW's C{rgw_lc_debug_interval}).
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from claudefs_gateway import errors
from claudefs_gateway.core.log import Logger
from claudefs_gateway.fstypes import Credentials
from claudefs_gateway.s3.call import parse_iso_date
from claudefs_gateway.s3.errors import S3Error
from claudefs_gateway.s3.keys import KeyLocks
from claudefs_gateway.s3.versions import GONE

__all__ = ["parse_rules", "render_rules", "matches", "expiration_header", "DAY", "Worker"]

DAY = 86400
_MALFORMED = (
    "The XML you provided was not well-formed or did not validate against our published schema"
)


def _int(text: str | None, what: str) -> int:
    try:
        n = int((text or "").strip())
    except ValueError:
        raise S3Error("MalformedXML", _MALFORMED) from None
    if n <= 0:
        raise S3Error(
            "InvalidArgument", f"'{what}' for Expiration action must be a positive integer"
        )
    return n


def parse_rules(el: Any, local: Any) -> list[dict[str, Any]]:
    """
    The rules of a parsed LifecycleConfiguration element, validated.

    @raise S3Error: MalformedXML, InvalidArgument (as AWS and s3-tests
        expect), NotImplemented (transitions).
    """

    def children(e: Any, name: str) -> list[Any]:
        return [c for c in e if local(c.tag) == name]

    def text(e: Any, name: str) -> str | None:
        found = children(e, name)
        if len(found) > 1:
            raise S3Error("MalformedXML", _MALFORMED)
        return (found[0].text or "") if found else None

    def tags(e: Any) -> dict[str, str]:
        out = {}
        for t in children(e, "Tag"):
            out[(text(t, "Key") or "")] = text(t, "Value") or ""
        return out

    rules = []
    ids = set()
    for r in children(el, "Rule"):
        rule: dict[str, Any] = {}
        rid = text(r, "ID")
        if rid is not None:
            if len(rid) > 255:
                raise S3Error("InvalidArgument", "ID length should not exceed allowed limit of 255")
            if rid in ids:
                raise S3Error(
                    "InvalidArgument",
                    "Rule ID must be unique. Found same ID for more than one rule",
                )
            ids.add(rid)
        rule["id"] = rid or ""
        status = text(r, "Status")
        if status not in ("Enabled", "Disabled"):
            raise S3Error("MalformedXML", _MALFORMED)
        rule["enabled"] = status == "Enabled"
        prefix = text(r, "Prefix")
        filters = children(r, "Filter")
        if len(filters) > 1 or (filters and prefix is not None):
            raise S3Error("MalformedXML", _MALFORMED)
        rule["prefix"] = prefix or ""
        if prefix is not None:
            rule["legacy"] = True  # the old form: Prefix in the Rule, no Filter
        rule["tags"] = {}
        if filters:
            f = filters[0]
            ands = children(f, "And")
            scope = ands[0] if ands else f
            p = text(scope, "Prefix")
            rule["prefix"] = p or ""
            rule["tags"] = tags(scope)
            for name, key in (("ObjectSizeGreaterThan", "gt"), ("ObjectSizeLessThan", "lt")):
                v = text(scope, name)
                if v is not None:
                    try:
                        rule[key] = int(v)
                    except ValueError:
                        raise S3Error("MalformedXML", _MALFORMED) from None
        if children(r, "Transition") or children(r, "NoncurrentVersionTransition"):
            for t in children(r, "Transition"):
                d = text(t, "Date")
                if d is not None and not _midnight(d):
                    raise S3Error("InvalidArgument", "'Date' must be at midnight GMT")
            raise S3Error(
                "NotImplemented",
                "Lifecycle transitions are not implemented by this gateway: every object is STANDARD",
            )
        acted = False
        for e in children(r, "Expiration"):
            days, date, marker = (
                text(e, "Days"),
                text(e, "Date"),
                text(e, "ExpiredObjectDeleteMarker"),
            )
            if sum(x is not None for x in (days, date, marker)) != 1:
                raise S3Error("MalformedXML", _MALFORMED)
            if days is not None:
                rule["days"] = _int(days, "Days")
            if date is not None:
                if not _midnight(date):
                    raise S3Error("InvalidArgument", "'Date' must be at midnight GMT")
                rule["date"] = parse_iso_date(date)
            if marker is not None:
                rule["expired_marker"] = marker.strip().lower() == "true"
            acted = True
        for e in children(r, "NoncurrentVersionExpiration"):
            rule["noncurrent_days"] = _int(text(e, "NoncurrentDays"), "NoncurrentDays")
            newer = text(e, "NewerNoncurrentVersions")
            if newer is not None:
                rule["newer"] = _int(newer, "NewerNoncurrentVersions")
            acted = True
        for e in children(r, "AbortIncompleteMultipartUpload"):
            rule["abort_days"] = _int(text(e, "DaysAfterInitiation"), "DaysAfterInitiation")
            acted = True
        if not acted:
            raise S3Error("MalformedXML", _MALFORMED)
        rules.append(rule)
    if not rules:
        raise S3Error("MalformedXML", _MALFORMED)
    return rules


def _midnight(text: str) -> bool:
    t = parse_iso_date(text)
    return t is not None and int(t) % DAY == 0 and t == int(t)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))


def render_rules(rules: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """The rules as a LifecycleConfiguration's children (for GetBucketLifecycleConfiguration)."""
    out: list[tuple[str, Any]] = []
    for r in rules:
        flt: list[tuple[str, Any]] = []
        extra: list[tuple[str, Any]] = []
        tag_items = [("Tag", [("Key", k), ("Value", v)]) for k, v in r["tags"].items()]
        sizes = [
            (name, r[key])
            for name, key in (("ObjectSizeGreaterThan", "gt"), ("ObjectSizeLessThan", "lt"))
            if key in r
        ]
        if len(tag_items) + len(sizes) + (1 if r["prefix"] else 0) > 1:
            flt = [("And", [("Prefix", r["prefix"]), *tag_items, *sizes])]
        elif tag_items:
            flt = tag_items
        elif sizes:
            flt = sizes
        else:
            flt = [("Prefix", r["prefix"])]
        status = "Enabled" if r["enabled"] else "Disabled"
        if r.get("legacy"):
            rule: list[tuple[str, Any]] = [
                ("ID", r["id"]),
                ("Prefix", r["prefix"]),
                ("Status", status),
            ]
        else:
            rule = [("ID", r["id"]), ("Filter", flt), ("Status", status)]
        if "days" in r:
            extra.append(("Expiration", [("Days", r["days"])]))
        elif "date" in r:
            extra.append(("Expiration", [("Date", _iso(r["date"]))]))
        elif r.get("expired_marker"):
            extra.append(("Expiration", [("ExpiredObjectDeleteMarker", True)]))
        if "noncurrent_days" in r:
            nv: list[tuple[str, Any]] = [("NoncurrentDays", r["noncurrent_days"])]
            if "newer" in r:
                nv.append(("NewerNoncurrentVersions", r["newer"]))
            extra.append(("NoncurrentVersionExpiration", nv))
        if "abort_days" in r:
            extra.append(
                ("AbortIncompleteMultipartUpload", [("DaysAfterInitiation", r["abort_days"])])
            )
        out.append(("Rule", rule + extra))
    return out


def matches(rule: dict[str, Any], key: str, tags: dict[str, str], size: int | None) -> bool:
    """Whether an enabled rule's filter selects this object."""
    if not rule["enabled"] or not key.startswith(rule["prefix"]):
        return False
    for k, v in rule["tags"].items():
        if tags.get(k) != v:
            return False
    if size is not None:
        if "gt" in rule and not size > rule["gt"]:
            return False
        if "lt" in rule and not size < rule["lt"]:
            return False
    return True


def expiration_header(
    rules: list[dict[str, Any]], key: str, tags: dict[str, str], size: int, mtime: float
) -> str | None:
    """
    C{x-amz-expiration} for an object: when the first rule that expires it
    will (days counted from its write, rounded up to the next midnight UTC, as
    AWS does; real days whatever the test day length) and that rule's id.
    """
    for r in rules:
        if not matches(r, key, tags, size):
            continue
        if "days" in r:
            at = mtime + r["days"] * DAY
            at = (int(at) // DAY + 1) * DAY
        elif "date" in r:
            at = r["date"]
        else:
            continue
        date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(at))
        return f'expiry-date="{date}", rule-id="{r["id"]}"'
    return None


class Worker:
    """
    The lifecycle service: applies every bucket's rules once per interval.

    @param tree: the S3 L{claudefs_gateway.s3.tree.Tree}.
    @param uploads: the L{claudefs_gateway.s3.multipart.Uploads} (to abort old ones).
    @param day: the length of a lifecycle day in seconds.
    @param locks: the S3 front end's L{KeyLocks}: an expiry holds the key's
        lock while it checks the object it judged is still there and removes
        it, so a write of that key through this gateway lands before (and
        is not expired: it is not the object judged) or after (and stays).
    """

    _log = Logger()

    def __init__(
        self,
        tree: Any,
        uploads: Any,
        clock: IReactorTime,
        interval: float,
        day: float,
        metrics: Any = None,
        locks: KeyLocks | None = None,
    ) -> None:
        self.tree = tree
        self.locks = locks if locks is not None else KeyLocks()
        self.uploads = uploads
        self.clock = clock
        self.interval = interval
        self.day = day
        self._loop: task.LoopingCall | None = None
        self._running = False
        self._runs = metrics.family("gateway_s3_lifecycle_runs_total") if metrics else None
        self._actions = metrics.family("gateway_s3_lifecycle_actions_total") if metrics else None
        self._seconds = metrics.family("gateway_s3_lifecycle_seconds") if metrics else None

    def start(self) -> None:
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.clock
        d = self._loop.start(self.interval, now=False)
        d.addErrback(lambda f: self._log.failure("lifecycle service stopped", f))

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _tick(self) -> defer.Deferred[None] | None:
        if self._running:
            return None  # a long pass still under way: skip this beat
        self._running = True

        def done(result: Any) -> None:
            self._running = False
            if isinstance(result, Failure):
                self._log.failure("lifecycle pass failed", result)

        return defer.Deferred.fromCoroutine(self.run()).addBoth(done)

    def _count(self, action: str) -> None:
        if self._actions is not None:
            self._actions.labels(action).inc()

    async def run(self) -> None:
        """One pass over every bucket with rules."""
        start = self.clock.seconds()
        tree = self.tree
        for name, b in await tree.buckets(tree.root_caller):
            try:
                conf = await tree.bucket_conf(b)
                rules = [r for r in (conf.lifecycle or []) if r["enabled"]]
                if not rules:
                    continue
                await self._bucket(name, b, conf, rules)
            except GONE:
                # The bucket was deleted since the buckets were listed.
                self._log.debug("lifecycle: bucket {bucket} went meanwhile", bucket=name)
            except Exception:
                self._log.failure("lifecycle of bucket {bucket} failed", bucket=name)
        if self._runs is not None:
            self._runs.inc()
        if self._seconds is not None:
            self._seconds.observe(self.clock.seconds() - start)

    async def _lone_marker(self, versions: Any, parent: int, leaf: bytes, vid: str) -> bool:
        """Whether delete marker C{vid} is still all there is of the key (no current object)."""
        try:
            await self.tree.vfs.lookup(self.tree.root_caller, parent, leaf)
            return False
        except GONE:
            pass
        older = await versions.older(parent, leaf)
        return len(older) == 1 and older[0].vid == vid and older[0].delete_marker

    async def _bucket(self, name: str, bucket: Any, conf: Any, rules: list[dict[str, Any]]) -> None:
        from claudefs_gateway.s3.keys import Key
        from claudefs_gateway.s3.listing import Lister
        from claudefs_gateway.s3.tagging import TAGS_KEY, decode
        from claudefs_gateway.s3.versions import NULL, Versions, new_version_id

        tree = self.tree
        rc = tree.root_caller
        now = self.clock.seconds()
        for u in list(self.uploads.uploads.values()):
            if u.bucket != name or u.gone or u.completing or u.active:
                continue
            for r in rules:
                if "abort_days" in r and u.key.startswith(r["prefix"]):
                    if now - u.initiated >= r["abort_days"] * self.day:
                        await self.uploads.abort(u)
                        self._count("abort_upload")
                        break
        versions = Versions(tree)
        lister = Lister(tree, rc, bucket, with_versions=conf.versioned)
        marker: bytes | None = None
        while True:
            page = await lister.page(b"", None, marker, 1000)
            for it in page.items:
                marker = it.key
                if it.prefix or (it.attrs is not None and it.attrs.is_dir):
                    continue
                text = it.key.decode("utf-8", "surrogateescape")
                leaf = it.key.rsplit(b"/", 1)[-1]
                current = None
                tags: dict[str, str] = {}
                meta = None
                if it.current:
                    try:
                        current = it.attrs or await tree.vfs.lookup(rc, it.parent, leaf)
                        tags = decode(await tree.vfs.meta_get(rc, current.ino, TAGS_KEY))
                        meta = await tree.meta(rc, current)
                    except GONE:
                        # Deleted since its directory was listed: no current
                        # version to expire (its older ones, if any, still count).
                        self._log.debug("lifecycle: {key} went meanwhile", key=text)
                        current, tags, meta = None, {}, None
                size = meta.plain_size(current) if current and meta else None
                try:
                    key = Key(text)
                except Exception:
                    continue
                if current is not None:
                    for r in rules:
                        if not matches(r, text, tags, size):
                            continue
                        due = (
                            "days" in r and now - current.mtime_ns / 1e9 >= r["days"] * self.day
                        ) or ("date" in r and now >= r["date"])
                        if not due:
                            continue
                        lock = self.locks.lock(name, text)
                        await lock.acquire()
                        try:
                            # Judged on what was read before: only that object
                            # expires. One written since is the next pass's.
                            there = await tree.vfs.lookup(rc, it.parent, leaf)
                            if there.ino != current.ino or there.mtime_ns != current.mtime_ns:
                                self._log.debug("lifecycle: {key} was replaced meanwhile", key=text)
                                current = there
                                break
                            if conf.versioned:
                                assert meta is not None
                                vid, t = versions.effective(conf, current, meta)
                                if conf.versioning == "Enabled" or vid != NULL:
                                    await versions.preserve(it.parent, leaf, current, vid, t)
                                await tree.vfs.remove(rc, it.parent, leaf)
                                now_ns = int(now * 1e9)
                                mid = (
                                    new_version_id(now_ns) if conf.versioning == "Enabled" else NULL
                                )
                                owner = tree.vfs.caller(
                                    tree.export, "", Credentials(bucket.uid, bucket.gid), "s3"
                                )
                                await versions.add_marker(owner, it.parent, leaf, mid, now_ns)
                            else:
                                await tree.delete(rc, bucket, key)
                            self._count("expire")
                            current = None
                        except GONE:
                            current = None  # deleted meanwhile: nothing to expire
                        except errors.FSError:
                            pass  # locked, or changed meanwhile: next pass
                        finally:
                            self.locks.unlock(name, text, lock)
                        break
                if not conf.versioned:
                    continue
                older = await versions.older(it.parent, leaf)
                for r in rules:
                    if not matches(r, text, tags, None):
                        continue
                    if "noncurrent_days" in r:
                        keep = r.get("newer", 0)
                        kept = 0
                        newer_time = None
                        if current is not None:
                            newer_time = current.mtime_ns
                        for v in older:
                            became = newer_time
                            newer_time = v.time_ns
                            if v.delete_marker and v is older[0] and current is None:
                                continue  # the latest: not noncurrent
                            if kept < keep:
                                kept += 1
                                continue
                            if (
                                became is not None
                                and now - became / 1e9 >= r["noncurrent_days"] * self.day
                            ):
                                try:
                                    await versions.remove(it.parent, leaf, v.vid)
                                    self._count("noncurrent")
                                except errors.FSError:
                                    pass
                        older = await versions.older(it.parent, leaf)
                    if (
                        current is None
                        and len(older) == 1
                        and older[0].delete_marker
                        and (
                            # ExpiredObjectDeleteMarker: as soon as it is alone;
                            # an Expiration in days: once the marker is that old.
                            r.get("expired_marker")
                            or (
                                "days" in r and now - older[0].time_ns / 1e9 >= r["days"] * self.day
                            )
                        )
                    ):
                        lock = self.locks.lock(name, text)
                        await lock.acquire()
                        try:
                            # Still alone, with nothing written over it since?
                            if await self._lone_marker(versions, it.parent, leaf, older[0].vid):
                                await versions.remove(it.parent, leaf, older[0].vid)
                                self._count("delete_marker")
                        except errors.FSError:
                            pass
                        finally:
                            self.locks.unlock(name, text, lock)
                        older = []
            if not page.truncated:
                break
