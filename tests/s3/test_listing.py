"""
Tests for L{claudefs_gateway.s3.listing}: the directory walk lists exactly
what sorting every key and applying S3's rules would.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway import errors
from claudefs_gateway.fstypes import Credentials
from claudefs_gateway.s3.listing import Lister
from claudefs_gateway.s3.tree import META_KEY, ObjectMeta, Tree
from claudefs_gateway.testing.vfs import MemoryVFS


def run(testcase: SynchronousTestCase, coro: Any) -> Any:
    d = coro if isinstance(coro, defer.Deferred) else defer.Deferred.fromCoroutine(coro)
    return testcase.successResultOf(d)


async def build(
    tree: Tree,
    caller: Any,
    bucket: int,
    files: list[bytes],
    markers: list[bytes],
    empty: list[bytes],
) -> set[bytes]:
    """Make files and directories as a file protocol would; the keys that exist."""
    vfs = tree.vfs
    keys: set[bytes] = set()

    async def mkdirs(parts: list[bytes]) -> int | None:
        cur = bucket
        for p in parts:
            try:
                a = await vfs.lookup(caller, cur, p)
            except errors.NotFound:
                a = await vfs.mkdir(caller, cur, p, 0o755)
            if not a.is_dir:
                return None
            cur = a.ino
        return cur

    for f in files:
        parts = f.split(b"/")
        d = await mkdirs(parts[:-1])
        if d is None:
            continue
        try:
            await vfs.create(caller, d, parts[-1], 0o644)
            keys.add(f)
        except (errors.Exists, errors.IsDir):
            pass
    for m in markers + empty:
        d = await mkdirs(m.split(b"/"))
        if d is None:
            continue
        if m in markers:
            await vfs.meta_set(caller, d, META_KEY, ObjectMeta(dir="marker").encode())

    # Directory keys: marked ones, and empty unmarked ones.
    async def visit(ino: int, key: bytes) -> None:
        entries = await tree.read_dir(caller, ino)
        if key:
            m = ObjectMeta.decode(await vfs.meta_get(caller, ino, META_KEY))
            if m.dir == "marker" or not entries:
                keys.add(key)
        for name, e in entries:
            if e.attrs.is_dir:
                await visit(e.ino, key + name + b"/")

    await visit(bucket, b"")
    return keys


def reference(
    keys: set[bytes], prefix: bytes, delimiter: bytes | None, marker: bytes | None, max_keys: int
) -> tuple[list[tuple[bytes, bool]], bool]:
    out: list[tuple[bytes, bool]] = []
    last_cp = None
    for k in sorted(keys):
        if not k.startswith(prefix) or (marker is not None and k <= marker):
            continue
        item = (k, False)
        if delimiter:
            rem = k[len(prefix) :]
            i = rem.find(delimiter)
            if i >= 0:
                cp = prefix + rem[: i + len(delimiter)]
                if cp == marker or cp == last_cp:
                    continue
                last_cp = cp
                item = (cp, True)
        if len(out) == max_keys:
            return out, True
        out.append(item)
    return out, False


segment = st.sampled_from([b"a", b"b", b"a-", b"a0", b"ab", b"\xc3\xa9"])
key_st = st.lists(segment, min_size=1, max_size=3).map(lambda p: b"/".join(p))


class ListingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.m = MemoryVFS("s3: {root: /s3}\n")
        self.tree = Tree(self.m.vfs)
        run(self, self.tree.open())
        self.caller = self.m.vfs.caller(self.m.vfs.exports.s3, "", Credentials(0, 0), "s3")

    @settings(max_examples=60)
    @given(
        files=st.lists(key_st, max_size=12),
        markers=st.lists(key_st, max_size=3),
        empty=st.lists(key_st, max_size=2),
        prefix=st.sampled_from([b"", b"a", b"a/", b"a-", b"b/a", b"a/b/"]),
        delimiter=st.sampled_from([None, b"/", b"-", b"0", b"b/"]),
        marker=st.one_of(st.none(), key_st, key_st.map(lambda k: k + b"/")),
        max_keys=st.integers(1, 6),
    )
    def test_matches_reference(
        self, files, markers, empty, prefix, delimiter, marker, max_keys
    ) -> None:
        m = MemoryVFS("s3: {root: /s3}\n")
        tree = Tree(m.vfs)
        run(self, tree.open())
        caller = m.vfs.caller(m.vfs.exports.s3, "", Credentials(0, 0), "s3")
        bucket = run(self, m.vfs.mkdir(caller, m.vfs.exports.s3.root_ino, b"bkt", 0o755))
        keys = run(self, build(tree, caller, bucket.ino, files, markers, empty))
        lister = Lister(tree, caller, bucket)
        page = run(self, lister.page(prefix, delimiter, marker, max_keys))
        want, truncated = reference(keys, prefix, delimiter, marker, max_keys)
        self.assertEqual([(i.key, i.prefix) for i in page.items], want)
        self.assertEqual(page.truncated, truncated)
        # Paging from the last item returned reaches every item exactly once.
        full, _ = reference(keys, prefix, delimiter, marker, 10**6)
        got = [(i.key, i.prefix) for i in page.items]
        while page.truncated:
            page = run(self, lister.page(prefix, delimiter, page.last, max_keys))
            got += [(i.key, i.prefix) for i in page.items]
        self.assertEqual(got, full)

    def test_s3_order(self) -> None:
        """a-b < a/x < a0: file and directory entries interleave in byte order."""
        bucket = run(
            self, self.m.vfs.mkdir(self.caller, self.m.vfs.exports.s3.root_ino, b"b", 0o755)
        )
        keys = run(self, build(self.tree, self.caller, bucket.ino, [b"a0", b"a/x", b"a-b"], [], []))
        page = run(self, Lister(self.tree, self.caller, bucket).page(b"", None, None, 100))
        self.assertEqual([i.key for i in page.items], [b"a-b", b"a/x", b"a0"])
        self.assertEqual(keys, {b"a-b", b"a/x", b"a0"})
