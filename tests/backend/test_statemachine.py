"""
The embedded store behaves exactly like the reference memory backend.

A hypothesis RuleBasedStateMachine drives random sequences of every backend
operation against both L{MemoryBackend} (the model) and L{EmbeddedBackend},
and compares each result or error, and now and then the whole tree (names,
types, sizes, nlink, data, xattrs, usage). Both share one fixed clock that
moves between steps, so times compare exactly too; what may differ by design
is left out: C{used} (the embedded store reports real blocks), C{atime} (the
embedded store does not touch it on read: noatime), generation numbers,
verifiers and cookie values (their order is compared).

The embedded store runs in its inline mode (every call runs synchronously on
this thread, so Deferreds have fired when calls return) without fsync: this
test is about logic; durability and the writer thread have their own tests.
Every data write goes through the data writers (a helper thread, pieces of 64
bytes), and the store keeps two descriptors, so their order and evictions are
exercised on every write.
"""

from __future__ import annotations

import itertools
import os
import shutil
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
)
from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway import errors
from claudefs_gateway.backend.embedded import EmbeddedBackend
from claudefs_gateway.backend.memory import MemoryBackend
from claudefs_gateway.fstypes import (
    NOW,
    Attributes,
    DirPage,
    FileType,
    QuotaLimits,
    RenameResult,
    SetAttrs,
    WriteResult,
)
from tests.helpers import run_machine

ZERO = bytes(8)
GOOD_NAMES = [b"a", b"b", b"c", b"dd", b"e"]
# Mostly valid names (so that operations mostly succeed), now and then a bad one.
ANY_NAME = st.sampled_from(GOOD_NAMES * 4 + [b"", b".", b"..", b"x/y", b"n" * 256])
IDS = st.sampled_from([0, 1000, 1001])
NODE_TYPES = st.sampled_from([FileType.FIFO, FileType.CHR, FileType.BLK, FileType.SOCK])
# One write in ten at an offset that must fail (FBig, Inval).
OFFSETS = st.integers(0, 9).flatmap(
    lambda k: st.sampled_from([2**63 - 1, -1]) if k == 0 else st.integers(0, 70000)
)
DATA = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda b, n: bytes([b]) * n, st.integers(1, 255), st.integers(1, 70000)),
)
TIMES = st.one_of(st.none(), st.just(NOW), st.integers(0, 2**62))
XNAMES = st.sampled_from([b"user.a", b"user.b"] * 4 + [b"", b"n" * 256])

_dirs = itertools.count()


def result(d: defer.Deferred[Any]) -> Any:
    """The outcome of an already-fired Deferred: its value, or its FSError instance."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired (the inline store must fire at once)"
    r = out[0]
    if isinstance(r, Failure):
        r.trap(errors.FSError)
        return r.value
    return r


class BackendMachine(RuleBasedStateMachine):
    dirs = Bundle("dirs")
    regs = Bundle("regs")
    others = Bundle("others")

    def __init__(self, base: str) -> None:
        super().__init__()
        self.clock = 1_700_000_000_000_000_000
        self.model = MemoryBackend(now_ns=self.now)
        self.path = os.path.join(base, str(next(_dirs)))
        self.real = self.make_real()
        result(self.real.open())
        self.to_real: dict[int, int] = {}
        self.to_model: dict[int, int] = {}

    def now(self) -> int:
        return self.clock

    def make_real(self) -> Any:
        """
        The store under test (not opened yet); subclasses test others. Every
        write goes through the embedded store's data writers, cut in small pieces.
        """
        real = EmbeddedBackend(
            self.path,
            None,
            inline=True,
            durable=False,
            now_ns=self.now,
            max_fds=2,
            data_threads=1,
        )
        real._engine.defer_min = 1
        real._engine.data.chunk = 64
        real._engine.data.split_lone = True
        return real

    def teardown(self) -> None:
        try:
            self.check_tree()
        finally:
            result(self.real.close())
            shutil.rmtree(self.path, ignore_errors=True)

    # -- comparing ------------------------------------------------------------------

    def pair(self, m: int, r: int) -> None:
        """Record (or check) that model inode C{m} is real inode C{r}."""
        assert self.to_real.setdefault(m, r) == r, (m, r, self.to_real[m])
        assert self.to_model.setdefault(r, m) == m, (m, r, self.to_model[r])

    def attrs(self, m: Attributes | None, r: Attributes | None) -> None:
        if m is None or r is None:
            assert m is None and r is None, (m, r)
            return
        self.pair(m.ino, r.ino)
        fields = ("type", "mode", "nlink", "uid", "gid", "size", "rdev")
        fields += ("mtime_ns", "ctime_ns", "btime_ns", "change")
        for f in fields:
            assert getattr(m, f) == getattr(r, f), (f, m, r)

    def same(self, m: Any, r: Any) -> None:
        if isinstance(m, errors.FSError) or isinstance(r, errors.FSError):
            assert type(m) is type(r), (m, r)
        elif isinstance(m, Attributes):
            self.attrs(m, r)
        elif isinstance(m, RenameResult):
            self.attrs(m.source, r.source)
            self.attrs(m.replaced, r.replaced)
        elif isinstance(m, WriteResult):
            assert (m.count, m.stable) == (r.count, r.stable), (m, r)
            self.attrs(m.attrs, r.attrs)
            self.attrs(m.before, r.before)
        elif isinstance(m, DirPage):
            assert m.eof == r.eof, (m, r)
            assert [e.name for e in m.entries] == [e.name for e in r.entries], (m, r)
            for me, re in zip(m.entries, r.entries, strict=True):
                assert me.type == re.type
                self.pair(me.ino, re.ino)
                self.attrs(me.attrs, re.attrs)
        else:
            assert m == r, (m, r)

    def both(self, call: Any, *inos: tuple[int, int]) -> Any:
        """Call C{call(backend, *inodes)} on both stores, compare, return the model's result."""
        self.clock += 1000
        m = result(call(self.model, *(i[0] for i in inos)))
        r = result(call(self.real, *(i[1] for i in inos)))
        self.same(m, r)
        return m

    def new(self, m: Any) -> Any:
        if isinstance(m, Attributes):
            return (m.ino, self.to_real[m.ino])
        return multiple()

    # -- rules ----------------------------------------------------------------------

    def parent(self, data: st.DataObject) -> tuple[int, int]:
        """Mostly a directory, sometimes anything (NotDir, NotFound paths)."""
        # (st.one_of flattens and de-duplicates its branches, so weight by hand.)
        if data.draw(st.integers(0, 7), label="any inode") == 0:
            return data.draw(self.any(), label="parent")  # type: ignore[no-any-return]
        return data.draw(self.dirs, label="parent")  # type: ignore[no-any-return]

    def any(self) -> Any:
        return st.one_of(self.dirs, self.regs, self.others)

    def entry_name(self, data: st.DataObject, d: tuple[int, int]) -> bytes:
        """A name that exists in C{d} three times in four (when it has any), else any name."""
        page = result(self.model.readdir(d[0], 0, ZERO, 1000))
        names = [e.name for e in page.entries] if isinstance(page, DirPage) else []
        if names and data.draw(st.integers(0, 3), label="existing") > 0:
            return data.draw(st.sampled_from(sorted(names)), label="name")
        return data.draw(ANY_NAME, label="name")

    @initialize(target=dirs)
    def root(self) -> Any:
        m = self.both(lambda b: b.root())
        return (m.ino, self.to_real[m.ino])

    @initialize(target=regs, payload=DATA, uid=IDS)
    def seed_file(self, payload: bytes, uid: int) -> Any:
        """Every run starts with a regular file holding data, so data rules have work."""
        m = self.both(lambda b: b.create(1, b"f", FileType.REG, 0o644, uid, uid))
        self.both(lambda b, i: b.write(i, 0, payload, False), (m.ino, self.to_real[m.ino]))
        return (m.ino, self.to_real[m.ino])

    @initialize(target=dirs)
    def seed_dirs(self) -> Any:
        """And with two nested directories, so that directory renames have work."""
        d = self.both(lambda b: b.create(1, b"d", FileType.DIR, 0o755, 0, 0))
        pair = (d.ino, self.to_real[d.ino])
        s = self.both(lambda b, p: b.create(p, b"s", FileType.DIR, 0o755, 0, 0), pair)
        return multiple(pair, (s.ino, self.to_real[s.ino]))

    @rule(target=dirs, parent=dirs, name=ANY_NAME, mode=st.integers(0, 0o177777), uid=IDS)
    def mkdir(self, parent: tuple[int, int], name: bytes, mode: int, uid: int) -> Any:
        return self.new(
            self.both(lambda b, p: b.create(p, name, FileType.DIR, mode, uid, uid), parent)
        )

    @rule(target=regs, parent=dirs, name=ANY_NAME, mode=st.integers(0, 0o7777), uid=IDS, gid=IDS)
    def create(self, parent: tuple[int, int], name: bytes, mode: int, uid: int, gid: int) -> Any:
        return self.new(
            self.both(lambda b, p: b.create(p, name, FileType.REG, mode, uid, gid), parent)
        )

    @rule(target=others, parent=dirs, name=ANY_NAME, type=NODE_TYPES, uid=IDS)
    def mknod(self, parent: tuple[int, int], name: bytes, type: FileType, uid: int) -> Any:
        return self.new(
            self.both(lambda b, p: b.create(p, name, type, 0o640, uid, 0, (8, 1)), parent)
        )

    @rule(
        target=others,
        parent=dirs,
        name=ANY_NAME,
        target_=st.sampled_from([b"t", b"../x/y", b"t", b"", b"z" * 4097]),
        uid=IDS,
    )
    def symlink(self, parent: tuple[int, int], name: bytes, target_: bytes, uid: int) -> Any:
        return self.new(
            self.both(lambda b, p: b.symlink(p, name, target_, 0o777, uid, uid), parent)
        )

    @rule(data=st.data(), name=ANY_NAME)
    def link(self, data: st.DataObject, name: bytes) -> None:
        ino = data.draw(self.any(), label="ino")
        parent = self.parent(data)
        self.both(lambda b, i, p: b.link(i, p, name), ino, parent)

    @rule(data=st.data())
    def unlink(self, data: st.DataObject) -> None:
        parent = self.parent(data)
        name = self.entry_name(data, parent)
        self.both(lambda b, p: b.unlink(p, name), parent)

    @rule(data=st.data())
    def rmdir(self, data: st.DataObject) -> None:
        parent = self.parent(data)
        name = self.entry_name(data, parent)
        self.both(lambda b, p: b.rmdir(p, name), parent)

    @rule(data=st.data())
    def rename(self, data: st.DataObject) -> None:
        sp = self.parent(data)
        sn = self.entry_name(data, sp)
        dp = self.parent(data)
        dn = self.entry_name(data, dp)
        self.both(lambda b, s, d: b.rename(s, sn, d, dn), sp, dp)

    @rule(data=st.data())
    def rename_dir(self, data: st.DataObject) -> None:
        """Move a directory somewhere (nlink of both parents, "..", loops refused)."""
        sp = data.draw(self.dirs, label="src parent")
        page = result(self.model.readdir(sp[0], 0, ZERO, 1000))
        subdirs = [e.name for e in getattr(page, "entries", ()) if e.type is FileType.DIR]
        if not subdirs:
            return
        sn = data.draw(st.sampled_from(sorted(subdirs)), label="name")
        dp = data.draw(self.dirs, label="dst parent")
        dn = self.entry_name(data, dp)
        self.both(lambda b, s, d: b.rename(s, sn, d, dn), sp, dp)

    @rule(data=st.data())
    def lookup(self, data: st.DataObject) -> None:
        parent = self.parent(data)
        name = data.draw(st.sampled_from([b".", b".."])) if data.draw(st.booleans()) else None
        name = name or self.entry_name(data, parent)
        self.both(lambda b, p: b.lookup(p, name), parent)

    @rule(data=st.data())
    def getattr(self, data: st.DataObject) -> None:
        self.both(lambda b, i: b.getattr(i), data.draw(self.any()))

    def file(self, data: st.DataObject) -> tuple[int, int]:
        """Mostly a regular file, sometimes anything (IsDir, Inval paths)."""
        if data.draw(st.integers(0, 3), label="any inode") == 0:
            return data.draw(self.any(), label="file")  # type: ignore[no-any-return]
        return data.draw(self.regs, label="file")  # type: ignore[no-any-return]

    @rule(
        data=st.data(),
        mode=st.none() | st.integers(0, 0o7777),
        uid=st.none() | IDS,
        gid=st.none() | IDS,
        size=st.none() | st.integers(0, 100000) | st.sampled_from([2**63, 2**62]),
        atime=TIMES,
        mtime=TIMES,
        btime=TIMES,
        guard=st.sampled_from([None, None, "right", "wrong"]),
    )
    def setattr(
        self,
        data: st.DataObject,
        mode: int | None,
        uid: int | None,
        gid: int | None,
        size: int | None,
        atime: Any,
        mtime: Any,
        btime: Any,
        guard: str | None,
    ) -> None:
        ino = self.file(data)
        now = result(self.model.getattr(ino[0]))
        g: int | None = None
        if guard is not None and isinstance(now, Attributes):
            g = now.ctime_ns + (0 if guard == "right" else 1)
        changes = SetAttrs(mode, uid, gid, size, atime, mtime, btime)
        self.both(lambda b, i: b.setattr(i, changes, g), ino)

    @rule(data=st.data(), offset=OFFSETS, payload=DATA, stable=st.booleans())
    def write(self, data: st.DataObject, offset: int, payload: bytes, stable: bool) -> None:
        self.both(lambda b, i: b.write(i, offset, payload, stable), self.file(data))

    @rule(data=st.data(), offset=st.integers(-1, 150000), length=st.integers(-1, 150000))
    def read(self, data: st.DataObject, offset: int, length: int) -> None:
        self.both(lambda b, i: b.read(i, offset, length), self.file(data))

    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        self.both(lambda b, i: b.commit(i), self.file(data))

    @rule(data=st.data(), offset=st.integers(-1, 100000), length=st.integers(0, 100000))
    def allocate(self, data: st.DataObject, offset: int, length: int) -> None:
        self.both(lambda b, i: b.allocate(i, offset, length), self.file(data))

    @rule(data=st.data(), offset=st.integers(-1, 100000), length=st.integers(0, 100000))
    def deallocate(self, data: st.DataObject, offset: int, length: int) -> None:
        self.both(lambda b, i: b.deallocate(i, offset, length), self.file(data))

    @rule(data=st.data())
    def readlink(self, data: st.DataObject) -> None:
        ino = data.draw(self.others if data.draw(st.booleans()) else self.any())
        self.both(lambda b, i: b.readlink(i), ino)

    @rule(
        data=st.data(),
        name=XNAMES,
        value=st.one_of(st.binary(max_size=20), st.just(b"v" * (64 * 1024 + 1))),
        create=st.sampled_from([None, True, False]),
    )
    def setxattr(self, data: st.DataObject, name: bytes, value: bytes, create: Any) -> None:
        self.both(lambda b, i: b.setxattr(i, name, value, create), data.draw(self.any()))

    @rule(data=st.data(), name=XNAMES)
    def getxattr(self, data: st.DataObject, name: bytes) -> None:
        self.both(lambda b, i: b.getxattr(i, name), data.draw(self.any()))

    @rule(data=st.data(), name=XNAMES)
    def removexattr(self, data: st.DataObject, name: bytes) -> None:
        self.both(lambda b, i: b.removexattr(i, name), data.draw(self.any()))

    @rule(data=st.data(), count=st.integers(0, 4), with_attrs=st.booleans())
    def readdir(self, data: st.DataObject, count: int, with_attrs: bool) -> None:
        """Page through a directory on both stores: same pages, same order."""
        dir = self.parent(data)
        pages: list[tuple[int, bytes]] = [(0, ZERO), (0, ZERO)]
        for _ in range(20):
            self.clock += 1000
            got = []
            for k, (b, i) in enumerate(((self.model, dir[0]), (self.real, dir[1]))):
                cookie, verf = pages[k]
                got.append(result(b.readdir(i, cookie, verf, count, with_attrs)))
            self.same(*got)
            if isinstance(got[0], errors.FSError) or got[0].eof or not got[0].entries:
                return
            pages = [(p.entries[-1].cookie, p.verifier) for p in got]

    @rule(data=st.data())
    def readdir_bad_verifier(self, data: st.DataObject) -> None:
        self.both(lambda b, i: b.readdir(i, 7, b"\xff" * 8, 10), self.parent(data))

    @rule(kind=st.sampled_from(["user", "group"]), id=IDS, q=st.none() | st.integers(0, 5))
    def set_quota(self, kind: str, id: int, q: int | None) -> None:
        limits = None if q is None else QuotaLimits(q, q * 2, q * 3, q * 4)
        self.both(lambda b: b.set_quota(kind, id, limits))
        self.both(lambda b: b.get_quota(kind, id))
        self.both(lambda b: b.list_quotas(kind))

    @rule(key=st.sampled_from(["grace", "nsm"]), value=st.none() | st.binary(max_size=10))
    def set_state(self, key: str, value: bytes | None) -> None:
        self.both(lambda b: b.set_state(key, value))
        self.both(lambda b: b.get_state(key))

    @invariant()
    def usage(self) -> None:
        for kind in ("user", "group"):
            m = result(self.model.all_usage(kind))
            assert m == result(self.real.all_usage(kind)), kind
            for id in (0, 1000, 1001):
                assert result(self.model.usage(kind, id)) == result(self.real.usage(kind, id))

    @rule()
    def check_tree(self) -> None:
        """Walk both trees from the root: every entry, inode, byte and xattr alike."""
        seen: set[int] = set()
        stack = [(1, self.to_real.get(1, 1))]
        while stack:
            m, r = stack.pop()
            if m in seen:
                continue
            seen.add(m)
            a = self.both(lambda b, i: b.getattr(i), (m, r))
            self.both(lambda b, i: b.listxattr(i), (m, r))
            for name in (b"user.a", b"user.b"):
                self.both(lambda b, i, n=name: b.getxattr(i, n), (m, r))
            if a.type is FileType.REG:
                # Files are small but sizes may be huge (setattr): head and tail.
                self.both(lambda b, i: b.read(i, 0, 150000), (m, r))
                tail = max(a.size - 1000, 0)
                self.both(lambda b, i, t=tail: b.read(i, t, 2000), (m, r))
            elif a.type is FileType.LNK:
                self.both(lambda b, i: b.readlink(i), (m, r))
            elif a.type is FileType.DIR:
                page = self.both(lambda b, i: b.readdir(i, 0, ZERO, 1000, True), (m, r))
                assert page.eof
                self.both(lambda b, i: b.lookup(i, b".."), (m, r))
                stack += [(e.ino, self.to_real[e.ino]) for e in page.entries]


class StateMachineTests(SynchronousTestCase):
    def test_embedded_matches_memory(self) -> None:
        """Random operation sequences give the same results and trees on both stores."""
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        run_machine(
            lambda: BackendMachine(base),
            settings(
                max_examples=max(500, settings.default.max_examples),
                stateful_step_count=30,
                deadline=None,
            ),
        )


class InlineDataMachine(BackendMachine):
    """
    The same comparison with small files' bytes kept in the database
    (threshold 1000 bytes: files move out of line often), small writes near
    the threshold, and the store closed and reopened now and then.
    """

    def make_real(self) -> Any:
        real = super().make_real()
        real._engine.inline_max = 1000
        return real

    @rule(
        data=st.data(),
        offset=st.integers(0, 1100),
        payload=st.binary(min_size=1, max_size=400),
        stable=st.booleans(),
    )
    def small_write(self, data: st.DataObject, offset: int, payload: bytes, stable: bool) -> None:
        self.both(lambda b, i: b.write(i, offset, payload, stable), self.file(data))

    @rule(data=st.data(), size=st.integers(0, 1500))
    def small_truncate(self, data: st.DataObject, size: int) -> None:
        self.both(lambda b, i: b.setattr(i, SetAttrs(size=size)), self.file(data))

    @rule()
    def reopen(self) -> None:
        result(self.real.close())
        self.real = self.make_real()
        result(self.real.open())


class InlineDataStateMachineTests(SynchronousTestCase):
    def test_inline_data_matches_memory(self) -> None:
        """With inline data, random sequences still match the model, across reopens."""
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        run_machine(
            lambda: InlineDataMachine(base),
            settings(
                max_examples=max(300, settings.default.max_examples),
                stateful_step_count=30,
                deadline=None,
            ),
        )
