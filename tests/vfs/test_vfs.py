"""The vfs operations (L{claudefs_gateway.vfs.VFS}) over the memory backend."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway import errors
from claudefs_gateway.fstypes import FileType, SetAttrs
from claudefs_gateway.testing.vfs import MemoryVFS
from claudefs_gateway.vfs import Action, Change, R, W, X
from claudefs_gateway.vfs import _vfs as vfs_module
from claudefs_gateway.vfs.worm import WORM_KEY, Retention

CONFIG = """
exports:
  - {path: /export, root_squash: false}
  - {path: /ro, read_only: true, root_squash: false}
  - {path: /squashed}
"""


class VFSTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.m = MemoryVFS(CONFIG)
        self.vfs = self.m.vfs
        self.root = self.m.caller(0, 0)
        self.alice = self.m.caller(1000, 1000)
        self.bob = self.m.caller(2000, 2000)
        self.top = self.m.root()
        self.pub = self.ok(self.vfs.mkdir(self.root, self.top, b"pub", 0o777)).ino

    def ok(self, d):  # type: ignore[no-untyped-def]
        return self.successResultOf(d)

    def bad(self, d, exc):  # type: ignore[no-untyped-def]
        return self.failureResultOf(d, exc)

    # -- exports --------------------------------------------------------------

    def test_export_dirs_created(self) -> None:
        for path in ("/export", "/ro", "/squashed"):
            a = self.ok(self.vfs.getattr(self.root, self.m.root(path)))
            self.assertTrue(a.is_dir)

    def test_export_dir_owner_and_mode(self) -> None:
        """dir_uid/dir_gid/dir_mode hand a fresh, squashed export to a user, and hold at restart."""
        m = MemoryVFS(
            "exports: [{path: /home/alice, dir_uid: 1000, dir_gid: 100, dir_mode: 0700}]\n"
        )
        top = m.root("/home/alice")
        alice = m.caller(1000, 100, path="/home/alice")
        a = self.successResultOf(m.vfs.getattr(alice, top))
        self.assertEqual((a.uid, a.gid, a.mode), (1000, 100, 0o700))
        self.successResultOf(m.vfs.mkdir(alice, top, b"docs", 0o755))
        bob = m.caller(2000, 2000, path="/home/alice")
        self.failureResultOf(m.vfs.mkdir(bob, top, b"x", 0o755), errors.Access)
        # Changed by hand, then the gateway starts again: the configured settings are back.
        self.successResultOf(m.backend.setattr(top, SetAttrs(uid=0, mode=0o755)))
        self.successResultOf(defer.Deferred.fromCoroutine(m.vfs.open()))
        a = self.successResultOf(m.backend.getattr(top))
        self.assertEqual((a.uid, a.gid, a.mode), (1000, 100, 0o700))

    def test_export_dir_left_alone_by_default(self) -> None:
        a = self.ok(self.vfs.getattr(self.root, self.top))
        self.assertEqual((a.uid, a.gid, a.mode), (0, 0, 0o755))

    def test_read_only_export(self) -> None:
        c = self.m.caller(0, 0, path="/ro")
        ro = self.m.root("/ro")
        self.bad(self.vfs.create(c, ro, b"f", 0o644), errors.ReadOnly)
        self.bad(self.vfs.mkdir(c, ro, b"d", 0o755), errors.ReadOnly)
        self.bad(self.vfs.setattr(c, ro, SetAttrs(mode=0o700)), errors.ReadOnly)
        self.assertEqual(self.ok(self.vfs.access(c, ro, R | W | X)), R | X)
        self.ok(self.vfs.readdir(c, ro, 0, bytes(8), 10))

    def test_root_squash_applies(self) -> None:
        c = self.m.caller(0, 0, path="/squashed")
        self.assertEqual(c.cred.uid, 65534)
        self.bad(self.vfs.mkdir(c, self.m.root("/squashed"), b"d", 0o755), errors.Access)

    def test_dotdot_clamped_at_export_root(self) -> None:
        c = self.m.caller(0, 0, path="/ro")
        self.assertEqual(
            self.ok(self.vfs.lookup(c, self.m.root("/ro"), b"..")).ino, self.m.root("/ro")
        )
        self.assertEqual(self.ok(self.vfs.resolve(c, b"../../..")).ino, self.m.root("/ro"))

    def test_export_root_cannot_be_removed(self) -> None:
        real_root = self.vfs.root_ino
        top = self.m.caller(0, 0)
        self.bad(self.vfs.rmdir(top, real_root, b"export"), errors.Busy)

    # -- permissions through operations -----------------------------------------

    def test_create_owned_by_caller(self) -> None:
        a = self.ok(self.vfs.create(self.alice, self.pub, b"f", 0o640))
        self.assertEqual((a.uid, a.gid, a.mode), (1000, 1000, 0o640))

    def test_private_directory(self) -> None:
        d = self.ok(self.vfs.mkdir(self.alice, self.pub, b"private", 0o700)).ino
        self.ok(self.vfs.create(self.alice, d, b"f", 0o644))
        self.bad(self.vfs.lookup(self.bob, d, b"f"), errors.Access)
        self.bad(self.vfs.create(self.bob, d, b"g", 0o644), errors.Access)
        self.bad(self.vfs.readdir(self.bob, d, 0, bytes(8), 10), errors.Access)
        self.ok(self.vfs.lookup(self.root, d, b"f"))

    def test_owner_override_for_data(self) -> None:
        """Like knfsd, the owner may read and write a file whatever its mode; others may not."""
        f = self.ok(self.vfs.create(self.alice, self.pub, b"f", 0o000)).ino
        self.ok(self.vfs.write(self.alice, f, 0, b"mine", True))
        self.assertEqual(self.ok(self.vfs.read(self.alice, f, 0, 10)).data, b"mine")
        self.bad(self.vfs.read(self.bob, f, 0, 10), errors.Access)
        self.bad(self.vfs.write(self.bob, f, 0, b"x", True), errors.Access)
        self.ok(self.vfs.setattr(self.alice, f, SetAttrs(size=0)))

    def test_read_allowed_with_execute(self) -> None:
        f = self.ok(self.vfs.create(self.alice, self.pub, b"prog", 0o711)).ino
        self.ok(self.vfs.write(self.alice, f, 0, b"#!", True))
        self.assertEqual(self.ok(self.vfs.read(self.bob, f, 0, 2)).data, b"#!")

    def test_write_strips_setuid(self) -> None:
        f = self.ok(self.vfs.create(self.alice, self.pub, b"s", 0o4777)).ino
        a = self.ok(self.vfs.write(self.bob, f, 0, b"x", False)).attrs
        self.assertEqual(a.mode, 0o777)

    def test_sticky_directory(self) -> None:
        tmp = self.ok(self.vfs.mkdir(self.root, self.top, b"tmp", 0o1777)).ino
        self.ok(self.vfs.create(self.alice, tmp, b"a", 0o644))
        self.bad(self.vfs.remove(self.bob, tmp, b"a"), errors.Perm)
        self.bad(self.vfs.rename(self.bob, tmp, b"a", tmp, b"b"), errors.Perm)
        self.ok(self.vfs.create(self.bob, tmp, b"b", 0o644))
        self.bad(self.vfs.rename(self.alice, tmp, b"a", tmp, b"b"), errors.Perm)
        self.ok(self.vfs.remove(self.alice, tmp, b"a"))

    def test_moving_directory_needs_write_on_it(self) -> None:
        d = self.ok(self.vfs.mkdir(self.alice, self.pub, b"d", 0o555)).ino
        other = self.ok(self.vfs.mkdir(self.bob, self.pub, b"o", 0o777)).ino
        self.bad(self.vfs.rename(self.bob, self.pub, b"d", other, b"d"), errors.Access)
        self.ok(self.vfs.rename(self.bob, self.pub, b"o", self.pub, b"o2"))
        self.assertTrue(d)

    def test_mknod_devices_need_root(self) -> None:
        self.bad(
            self.vfs.mknod(self.alice, self.pub, b"c", FileType.CHR, 0o600, (1, 3)), errors.Perm
        )
        self.ok(self.vfs.mknod(self.root, self.pub, b"c", FileType.CHR, 0o600, (1, 3)))
        self.ok(self.vfs.mknod(self.alice, self.pub, b"p", FileType.FIFO, 0o600))
        self.bad(self.vfs.mknod(self.alice, self.pub, b"r", FileType.REG, 0o600), errors.Inval)

    # -- creates ----------------------------------------------------------------

    def test_unchecked_and_guarded_create(self) -> None:
        a = self.ok(self.vfs.create(self.alice, self.pub, b"f", 0o644))
        self.bad(self.vfs.create(self.alice, self.pub, b"f", 0o644), errors.Exists)
        again = self.ok(self.vfs.create(self.alice, self.pub, b"f", 0o600, exclusive=False))
        self.assertEqual(again.ino, a.ino)
        self.ok(self.vfs.mkdir(self.alice, self.pub, b"d", 0o755))
        self.bad(self.vfs.create(self.alice, self.pub, b"d", 0o644, exclusive=False), errors.Exists)

    def test_exclusive_create_replay(self) -> None:
        """A retransmitted EXCLUSIVE create (same verifier) returns the same file; another verifier is EEXIST."""
        a = self.ok(self.vfs.create_exclusive(self.alice, self.pub, b"x", b"verf0001"))
        b = self.ok(self.vfs.create_exclusive(self.alice, self.pub, b"x", b"verf0001"))
        self.assertEqual(a.ino, b.ino)
        self.bad(self.vfs.create_exclusive(self.alice, self.pub, b"x", b"verf0002"), errors.Exists)
        self.assertEqual(self.ok(self.vfs.listxattr(self.alice, a.ino)), [])

    # -- caches stay right ---------------------------------------------------------

    def test_cached_attrs_follow_changes(self) -> None:
        f = self.ok(self.vfs.create(self.alice, self.pub, b"f", 0o644)).ino
        self.ok(self.vfs.getattr(self.alice, f))
        self.ok(self.vfs.write(self.alice, f, 0, b"12345", False))
        self.assertEqual(self.ok(self.vfs.getattr(self.alice, f)).size, 5)
        self.ok(self.vfs.rename(self.alice, self.pub, b"f", self.pub, b"g"))
        self.bad(self.vfs.lookup(self.alice, self.pub, b"f"), errors.NotFound)
        self.assertEqual(self.ok(self.vfs.lookup(self.alice, self.pub, b"g")).ino, f)
        self.ok(self.vfs.remove(self.alice, self.pub, b"g"))
        self.bad(self.vfs.lookup(self.alice, self.pub, b"g"), errors.NotFound)
        self.bad(self.vfs.getattr(self.alice, f), errors.NotFound)

    def test_invalidate(self) -> None:
        self.ok(self.vfs.create(self.alice, self.pub, b"f", 0o644))
        self.assertGreater(self.vfs.invalidate(), 0)
        self.assertEqual(self.vfs.invalidate(), 0)

    # -- xattrs ---------------------------------------------------------------------

    def test_internal_namespace_hidden(self) -> None:
        f = self.ok(self.vfs.create(self.alice, self.pub, b"f", 0o644)).ino
        self.ok(self.vfs.setxattr(self.alice, f, b"user.a", b"1"))
        self.ok(self.vfs.meta_set(self.alice, f, b"s3.etag", b"abc"))
        self.assertEqual(self.ok(self.vfs.listxattr(self.alice, f)), [b"user.a"])
        self.assertEqual(self.ok(self.vfs.meta_get(self.alice, f, b"s3.etag")), b"abc")
        self.assertIsNone(self.ok(self.vfs.meta_get(self.alice, f, b"nope")))
        self.bad(self.vfs.getxattr(self.alice, f, b"cfs.s3.etag"), errors.Perm)
        self.bad(self.vfs.setxattr(self.alice, f, b"cfs.x", b"1"), errors.Perm)
        self.bad(self.vfs.setxattr(self.bob, f, b"user.b", b"1"), errors.Access)
        self.bad(self.vfs.meta_set(self.bob, f, b"x", b"1"), errors.Access)
        self.ok(self.vfs.meta_set(self.alice, f, b"s3.etag", None))
        self.assertIsNone(self.ok(self.vfs.meta_get(self.alice, f, b"s3.etag")))

    def _count_getxattr(self) -> list[bytes]:
        """Record the store's getxattr calls from now on."""
        seen: list[bytes] = []
        real = self.m.backend.getxattr

        def counting(ino: int, name: bytes) -> defer.Deferred[bytes]:
            seen.append(name)
            return real(ino, name)

        self.m.backend.getxattr = counting  # type: ignore[method-assign]
        return seen

    def test_meta_of_a_new_file_known(self) -> None:
        """A file made here has no metadata of its own: no store read asks (issue 18)."""
        f = self.ok(self.vfs.create(self.alice, self.pub, b"f", 0o644)).ino
        seen = self._count_getxattr()
        self.assertIsNone(self.ok(self.vfs.meta_get(self.alice, f, b"smb.dosattrib")))
        self.ok(self.vfs.write(self.alice, f, 0, b"x", stable=True))
        self.assertEqual(seen, [])
        self.ok(self.vfs.meta_set(self.alice, f, b"smb.dosattrib", b"\x20\0\0\0"))
        got = self.ok(self.vfs.meta_get(self.alice, f, b"smb.dosattrib"))
        self.assertEqual(got, b"\x20\0\0\0")
        self.assertIsNone(self.ok(self.vfs.meta_get(self.alice, f, b"smb.ntacl")))
        self.assertEqual(seen, [])

    def test_meta_cache_read_once(self) -> None:
        """An inode's metadata is read from the store once, then answered from memory."""
        f = self.ok(self.vfs.create(self.alice, self.pub, b"f", 0o644)).ino
        self.ok(self.vfs.meta_set(self.alice, f, b"s3.etag", b"abc"))
        self.vfs.forget_changed(f)  # as if another gateway had changed it
        seen = self._count_getxattr()
        for _ in range(3):
            self.assertEqual(self.ok(self.vfs.meta_get(self.alice, f, b"s3.etag")), b"abc")
            self.assertIsNone(self.ok(self.vfs.meta_get(self.alice, f, b"nope")))
        self.assertEqual(seen, [b"cfs.s3.etag", b"cfs.nope"])
        # Another gateway's change: read again.
        self.successResultOf(self.m.backend.setxattr(f, b"cfs.s3.etag", b"def"))
        self.vfs.forget_changed(f)
        self.assertEqual(self.ok(self.vfs.meta_get(self.alice, f, b"s3.etag")), b"def")
        self.vfs.invalidate()
        self.assertEqual(self.ok(self.vfs.meta_get(self.alice, f, b"s3.etag")), b"def")
        self.assertEqual(len(seen), 4)

    def test_fresh_lookup_on_a_shared_store(self) -> None:
        """
        Another gateway's change not yet announced: a fresh lookup sees it,
        metadata included (an S3 GET must not pair new bytes with an old checksum).
        """
        f = self.ok(self.vfs.create(self.alice, self.pub, b"f", 0o644)).ino
        self.ok(self.vfs.meta_set(self.alice, f, b"s3.sum", b"old"))
        self.assertEqual(self.ok(self.vfs.lookup(self.alice, self.pub, b"f")).size, 0)
        # "Another gateway": straight to the store, no change event.
        self.successResultOf(self.m.backend.write(f, 0, b"12345", True))
        self.successResultOf(self.m.backend.setxattr(f, b"cfs.s3.sum", b"new"))
        # Not shared (one gateway owns the store): the caches are the truth.
        self.assertEqual(self.ok(self.vfs.lookup(self.alice, self.pub, b"f", fresh=True)).size, 0)
        self.vfs.shared = True
        self.assertEqual(self.ok(self.vfs.lookup(self.alice, self.pub, b"f")).size, 0)
        got = self.ok(self.vfs.lookup(self.alice, self.pub, b"f", fresh=True))
        self.assertEqual(got.size, 5)
        self.assertEqual(self.ok(self.vfs.meta_get(self.alice, f, b"s3.sum")), b"new")
        self.assertEqual(self.ok(self.vfs.getattr(self.alice, f)).size, 5)
        # Removed elsewhere: NotFound, and the cached name goes.
        self.successResultOf(self.m.backend.unlink(self.pub, b"f"))
        self.bad(self.vfs.lookup(self.alice, self.pub, b"f", fresh=True), errors.NotFound)
        self.bad(self.vfs.lookup(self.alice, self.pub, b"f"), errors.NotFound)

    def test_meta_cache_read_racing_a_change(self) -> None:
        """A read under way while the record changes does not leave the old value cached."""
        f = self.ok(self.vfs.create(self.alice, self.pub, b"f", 0o644)).ino
        self.ok(self.vfs.meta_set(self.alice, f, b"k", b"old"))
        self.vfs.forget_changed(f)
        held: list[defer.Deferred[bytes]] = []
        real = self.m.backend.getxattr

        def slow(ino: int, name: bytes) -> defer.Deferred[bytes]:
            d: defer.Deferred[bytes] = defer.Deferred()
            held.append(d)
            return d

        self.m.backend.getxattr = slow  # type: ignore[method-assign]
        reading = self.vfs.meta_get(self.alice, f, b"k")
        self.m.backend.getxattr = real  # type: ignore[method-assign]
        self.ok(self.vfs.meta_set(self.alice, f, b"k", b"new"))
        held[0].callback(b"old")  # what the store held when the read was made
        self.assertEqual(self.ok(reading), b"old")
        self.assertEqual(self.ok(self.vfs.meta_get(self.alice, f, b"k")), b"new")

    def _hold(self, method: str) -> list[defer.Deferred[Any]]:
        """The store's C{method} answers only when the test fires what it returns."""
        held: list[defer.Deferred[Any]] = []
        real = getattr(self.m.backend, method)

        def slow(*args: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            held.append(d)
            setattr(self.m.backend, method, real)
            return d

        setattr(self.m.backend, method, slow)
        return held

    def test_attr_read_racing_a_change_event(self) -> None:
        """
        A GETATTR answered by the store before another gateway's change but
        heard after its event (a remote store answers reads on pooled
        connections and sends events on another) is not kept: the next
        GETATTR asks again and sees the change.
        """
        f = self.ok(self.vfs.create(self.alice, self.pub, b"f", 0o644)).ino
        old = self.ok(self.vfs.getattr(self.alice, f))
        self.vfs.forget_changed(f)
        held = self._hold("getattr")
        reading = self.vfs.getattr(self.alice, f)
        self.successResultOf(self.m.backend.write(f, 0, b"12345", True))
        self.vfs.forget_changed(f)  # the event, before the read's answer
        held[0].callback(old)
        self.assertEqual(self.ok(reading).size, 0)
        self.assertEqual(self.ok(self.vfs.getattr(self.alice, f)).size, 5)

    def test_attr_read_racing_own_change(self) -> None:
        """An older GETATTR answer heard after this gateway's own write is not kept over it."""
        f = self.ok(self.vfs.create(self.alice, self.pub, b"f", 0o644)).ino
        old = self.ok(self.vfs.getattr(self.alice, f))
        self.vfs.forget_changed(f)
        held = self._hold("getattr")
        reading = self.vfs.getattr(self.alice, f)
        self.ok(self.vfs.write(self.alice, f, 0, b"123", stable=True))
        held[0].callback(old)
        self.ok(reading)
        self.assertEqual(self.ok(self.vfs.getattr(self.alice, f)).size, 3)

    def test_lookup_racing_a_change_event(self) -> None:
        """A LOOKUP answer older than an event heard meanwhile leaves no name or attributes."""
        f = self.ok(self.vfs.create(self.alice, self.pub, b"f", 0o644)).ino
        old = self.ok(self.vfs.getattr(self.alice, f))
        self.vfs.forget_changed(f, self.pub)
        held = self._hold("lookup")
        reading = self.vfs.lookup(self.alice, self.pub, b"f")
        self.successResultOf(self.m.backend.unlink(self.pub, b"f"))
        self.vfs.forget_changed(f, self.pub)
        held[0].callback(old)
        self.assertEqual(self.ok(reading).ino, f)
        self.bad(self.vfs.lookup(self.alice, self.pub, b"f"), errors.NotFound)

    def test_readdir_attrs_racing_a_change_event(self) -> None:
        """READDIRPLUS attributes older than an event heard meanwhile are not kept."""
        f = self.ok(self.vfs.create(self.alice, self.pub, b"f", 0o644)).ino
        self.vfs.forget_changed(f)
        held = self._hold("readdir")
        listing = self.vfs.readdir(self.alice, self.pub, 0, b"", 65536, True)
        page = self.successResultOf(self.m.backend.readdir(self.pub, 0, b"", 65536, True))
        self.successResultOf(self.m.backend.write(f, 0, b"1234567", True))
        self.vfs.forget_changed(f)
        held[0].callback(page)
        self.ok(listing)
        self.assertEqual(self.ok(self.vfs.getattr(self.alice, f)).size, 7)

    def test_meta_cache_off(self) -> None:
        """With the attribute cache off (max_entries 0) every read goes to the store."""
        m = MemoryVFS(CONFIG + "cache: {nfs_attr_cache: {max_entries: 0}}\n")
        alice = m.caller(1000, 1000)
        top = m.root()
        self.successResultOf(m.vfs.setattr(m.caller(0, 0), top, SetAttrs(mode=0o777)))
        f = self.successResultOf(m.vfs.create(alice, top, b"f", 0o644)).ino
        self.successResultOf(m.vfs.meta_set(alice, f, b"k", b"v"))
        self.successResultOf(m.backend.setxattr(f, b"cfs.k", b"w"))
        self.assertEqual(self.successResultOf(m.vfs.meta_get(alice, f, b"k")), b"w")

    # -- paths ------------------------------------------------------------------------

    def test_resolve_follows_symlinks(self) -> None:
        a = self.ok(self.vfs.mkdir(self.alice, self.pub, b"a", 0o755)).ino
        f = self.ok(self.vfs.create(self.alice, a, b"file", 0o644)).ino
        self.ok(self.vfs.symlink(self.alice, self.pub, b"rel", b"a/file"))
        self.ok(self.vfs.symlink(self.alice, self.pub, b"abs", b"/pub/a"))
        self.ok(self.vfs.symlink(self.alice, self.pub, b"up", b"../pub/a"))
        c = self.alice
        self.assertEqual(self.ok(self.vfs.resolve(c, b"pub/rel")).ino, f)
        self.assertEqual(self.ok(self.vfs.resolve(c, b"/pub//abs/file")).ino, f)
        self.assertEqual(self.ok(self.vfs.resolve(c, b"pub/up/file")).ino, f)
        self.assertTrue(self.ok(self.vfs.resolve(c, b"pub/rel", follow=False)).is_link)
        self.bad(self.vfs.resolve(c, b"pub/a/file/x"), errors.NotDir)
        self.bad(self.vfs.resolve(c, b"pub/missing"), errors.NotFound)
        parent, name = self.ok(self.vfs.resolve_parent(c, b"pub/abs/new"))
        self.assertEqual((parent.ino, name), (a, b"new"))

    def test_symlink_loop(self) -> None:
        self.ok(self.vfs.symlink(self.alice, self.pub, b"l1", b"l2"))
        self.ok(self.vfs.symlink(self.alice, self.pub, b"l2", b"l1"))
        self.bad(self.vfs.resolve(self.alice, b"pub/l1"), errors.Loop)

    # -- put_file (S3's small PUT in one store operation) ----------------------------------

    def test_put_file_new_and_replacing(self) -> None:
        """
        A new file with its bytes and front-end metadata at a name, then
        another over it: the name, bytes, owner, time and metadata are the
        new file's; the old one is gone; usage follows; events say so.
        """
        seen = []
        self.vfs.events.subscribe(self.pub, lambda c: seen.append((c.action, c.name)))
        r = self.ok(self.vfs.put_file(self.alice, self.pub, b"o", 0o600, b"one", {b"k": b"1"}, 5))
        self.assertIsNone(r.replaced)
        a = r.source
        self.assertEqual((a.uid, a.gid, a.mode, a.size, a.mtime_ns), (1000, 1000, 0o600, 3, 5))
        self.assertEqual(self.ok(self.vfs.lookup(self.alice, self.pub, b"o")).ino, a.ino)
        self.assertEqual(self.ok(self.vfs.read(self.alice, a.ino, 0, 10)).data, b"one")
        self.assertEqual(self.ok(self.vfs.meta_get(self.alice, a.ino, b"k")), b"1")
        self.assertIsNone(self.ok(self.vfs.meta_get(self.alice, a.ino, b"other")))
        r2 = self.ok(self.vfs.put_file(self.alice, self.pub, b"o", 0o600, b"second", {}, 6))
        assert r2.replaced is not None
        self.assertEqual((r2.replaced.ino, r2.replaced.nlink), (a.ino, 0))
        self.assertEqual(self.ok(self.vfs.lookup(self.alice, self.pub, b"o")).ino, r2.source.ino)
        self.assertIsNone(self.ok(self.vfs.meta_get(self.alice, r2.source.ino, b"k")))
        self.bad(self.vfs.getattr(self.alice, a.ino), errors.NotFound)
        self.assertEqual(self.vfs.quotas.usage("user", 1000).bytes, 6)
        self.assertEqual(
            seen,
            [(Action.ADDED, b"o"), (Action.REMOVED, b"o"), (Action.ADDED, b"o")],
        )

    def test_put_file_refusals(self) -> None:
        """The rules of a create and a rename over the name: permission, sticky bit, directories."""
        priv = self.ok(self.vfs.mkdir(self.alice, self.pub, b"priv", 0o755)).ino
        self.bad(self.vfs.put_file(self.bob, priv, b"x", 0o600, b"", {}, 1), errors.Access)
        tmp = self.ok(self.vfs.mkdir(self.root, self.top, b"tmp", 0o1777)).ino
        self.ok(self.vfs.put_file(self.alice, tmp, b"a", 0o644, b"mine", {}, 1))
        self.bad(self.vfs.put_file(self.bob, tmp, b"a", 0o644, b"not", {}, 1), errors.Perm)
        self.bad(self.vfs.put_file(self.alice, self.pub, b"priv", 0o600, b"", {}, 1), errors.IsDir)
        a = self.ok(self.vfs.lookup(self.alice, tmp, b"a"))
        self.assertEqual(self.ok(self.vfs.read(self.alice, a.ino, 0, 10)).data, b"mine")

    def test_put_file_over_a_protected_file(self) -> None:
        """A file under object lock is not replaced."""
        a = self.ok(self.vfs.put_file(self.alice, self.pub, b"w", 0o600, b"kept", {}, 1)).source
        self.ok(self.vfs.meta_set(self.root, a.ino, WORM_KEY, Retention(hold=True).encode()))
        self.bad(self.vfs.put_file(self.alice, self.pub, b"w", 0o600, b"new", {}, 1), errors.Perm)
        self.assertEqual(self.ok(self.vfs.lookup(self.alice, self.pub, b"w")).ino, a.ino)

    def test_put_file_making_directories(self) -> None:
        """
        C{dirs}: made as the caller's C{mkdir -p} would (owner, setgid
        group, mode, metadata), cached and announced; a directory made
        meanwhile is Exists; no write permission on the top one is Access.
        """
        g = self.ok(self.vfs.mkdir(self.root, self.top, b"g", 0o2777)).ino
        self.ok(self.vfs.setattr(self.root, g, SetAttrs(gid=500)))
        seen = []
        self.vfs.events.subscribe(g, lambda c: seen.append((c.action, c.name)))
        r = self.ok(
            self.vfs.put_file(
                self.alice, g, b"f", 0o600, b"x", {}, 1, dirs=(b"a", b"b"), dir_meta={b"d": b"1"}
            )
        )
        a = self.ok(self.vfs.lookup(self.alice, g, b"a"))
        self.assertEqual((a.ino, a.uid, a.gid, a.mode & 0o2000), (r.made[0].ino, 1000, 500, 0o2000))
        self.assertEqual(self.ok(self.vfs.meta_get(self.alice, a.ino, b"d")), b"1")
        b = self.ok(self.vfs.lookup(self.alice, a.ino, b"b"))
        f = self.ok(self.vfs.lookup(self.alice, b.ino, b"f"))
        self.assertEqual((f.ino, f.gid), (r.source.ino, 500))
        self.assertEqual(seen, [(Action.ADDED, b"a")])
        self.bad(
            self.vfs.put_file(self.alice, g, b"f", 0o600, b"", {}, 1, dirs=(b"a",)), errors.Exists
        )
        priv = self.ok(self.vfs.mkdir(self.alice, self.pub, b"priv", 0o755)).ino
        self.bad(
            self.vfs.put_file(self.bob, priv, b"f", 0o600, b"", {}, 1, dirs=(b"d",)), errors.Access
        )

    def test_put_file_not_supported(self) -> None:
        """A store without C{put_file}: NotSupp, and L{can_put_file} says so first."""
        self.assertTrue(self.vfs.can_put_file)
        self.vfs.backend.put_file = None
        self.assertFalse(self.vfs.can_put_file)
        self.bad(self.vfs.put_file(self.alice, self.pub, b"n", 0o600, b"", {}, 1), errors.NotSupp)

    # -- events -------------------------------------------------------------------------

    def test_change_events(self) -> None:
        seen = []
        unsubscribe = self.vfs.events.subscribe(self.pub, lambda c: seen.append((c.action, c.name)))
        self.ok(self.vfs.create(self.alice, self.pub, b"f", 0o644))
        self.ok(self.vfs.rename(self.alice, self.pub, b"f", self.pub, b"g"))
        self.ok(self.vfs.remove(self.alice, self.pub, b"g"))
        unsubscribe()
        self.ok(self.vfs.create(self.alice, self.pub, b"h", 0o644))
        self.assertEqual(
            seen,
            [
                (Action.ADDED, b"f"),
                (Action.RENAMED_FROM, b"f"),
                (Action.RENAMED_TO, b"g"),
                (Action.REMOVED, b"g"),
            ],
        )

    def test_remove_of_the_inode_judged(self) -> None:
        """
        remove(expect=ino) removes the name only while it names that inode:
        a file renamed over it since (an S3 PUT) is left, NotFound.
        """
        old = self.ok(self.vfs.create(self.alice, self.pub, b"k", 0o644))
        new = self.ok(self.vfs.create(self.alice, self.pub, b"t", 0o644))
        self.ok(self.vfs.rename(self.alice, self.pub, b"t", self.pub, b"k"))
        self.bad(self.vfs.remove(self.alice, self.pub, b"k", expect=old.ino), errors.NotFound)
        self.assertEqual(self.ok(self.vfs.lookup(self.alice, self.pub, b"k")).ino, new.ino)
        if self.vfs.can_prune:
            self.bad(
                self.vfs.remove_pruning(self.alice, self.pub, b"k", (), expect=old.ino),
                errors.NotFound,
            )
        self.ok(self.vfs.remove(self.alice, self.pub, b"k", expect=new.ino))
        self.bad(self.vfs.lookup(self.alice, self.pub, b"k"), errors.NotFound)

    def test_removed_directory_hears_of_it(self) -> None:
        """Listeners of a directory hear of its own removal (SMB answers a watch on it)."""
        d = self.ok(self.vfs.mkdir(self.alice, self.pub, b"d", 0o755))
        inside, parent = [], []
        self.vfs.events.subscribe(d.ino, inside.append)
        self.vfs.events.subscribe(self.pub, parent.append)
        self.ok(self.vfs.rmdir(self.alice, self.pub, b"d"))
        self.assertEqual(
            [(c.action, c.dir, c.ino) for c in inside], [(Action.REMOVED, self.pub, d.ino)]
        )
        self.assertEqual(inside, parent)

    def test_names_only_listener(self) -> None:
        """
        A listener of every directory that wants names only (the SMB case
        index) hears additions, renames and removals, not writes or
        attribute changes; and with only such listeners, a write builds no
        change at all. One that wants everything hears both.
        """
        names: list[tuple[Action, bytes]] = []
        self.vfs.events.subscribe(None, lambda c: names.append((c.action, c.name)), modified=False)
        f = self.ok(self.vfs.create(self.alice, self.pub, b"f", 0o644))
        built: list[Change] = []
        real = Change

        def counting(*a: Any, **kw: Any) -> Change:
            built.append(real(*a, **kw))
            return built[-1]

        self.patch(vfs_module, "Change", counting)
        self.ok(self.vfs.write(self.alice, f.ino, 0, b"abc", False))
        self.ok(self.vfs.setattr(self.alice, f.ino, SetAttrs(mode=0o600)))
        self.assertEqual(built, [])
        self.ok(self.vfs.rename(self.alice, self.pub, b"f", self.pub, b"g"))
        self.ok(self.vfs.remove(self.alice, self.pub, b"g"))
        self.assertEqual(
            names,
            [
                (Action.ADDED, b"f"),
                (Action.RENAMED_FROM, b"f"),
                (Action.RENAMED_TO, b"g"),
                (Action.REMOVED, b"g"),
            ],
        )
        everything: list[tuple[Action, bytes]] = []
        self.vfs.events.subscribe(None, lambda c: everything.append((c.action, c.name)))
        f = self.ok(self.vfs.create(self.alice, self.pub, b"h", 0o644))
        self.ok(self.vfs.write(self.alice, f.ino, 0, b"abc", False))
        self.assertEqual(everything, [(Action.ADDED, b"h"), (Action.MODIFIED, b"h")])
        self.assertEqual(names[-1], (Action.ADDED, b"h"))

    def test_failing_listener_does_not_break_changes(self) -> None:
        def boom(_: object) -> None:
            raise RuntimeError("listener bug")

        self.vfs.events.subscribe(None, boom)
        self.ok(self.vfs.create(self.alice, self.pub, b"f", 0o644))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class BackendErrorMetricTests(SynchronousTestCase):
    def test_backend_trouble_counted_not_caller_errors(self) -> None:
        """IO-class failures count in gateway_backend_errors_total; a missing name does not."""
        from twisted.internet import defer

        m = MemoryVFS("exports: [{path: /export, root_squash: false}]\n")
        c = m.caller(0, 0)
        self.failureResultOf(m.vfs.lookup(c, m.root(), b"nope"), errors.NotFound)
        m.backend.statfs = lambda: defer.fail(errors.IO("disk"))  # type: ignore[method-assign]
        self.failureResultOf(m.vfs.statfs(c), errors.IO)
        reg = m.metrics.registry
        self.assertEqual(
            reg.get_sample_value(
                "gateway_backend_errors_total", {"backend": "embedded", "kind": "IO"}
            ),
            1,
        )
        self.assertIsNone(
            reg.get_sample_value(
                "gateway_backend_errors_total", {"backend": "embedded", "kind": "NotFound"}
            )
        )


class LockIntegrationTests(SynchronousTestCase):
    def test_last_unlink_releases_locks(self) -> None:
        """Locks on a file go when its last name does (a later inode cannot inherit them)."""
        from claudefs_gateway.vfs import LockOwner, LockTable

        m = MemoryVFS("exports: [{path: /export, root_squash: false}]\n")
        m.vfs.locks = LockTable(m.clock)
        c = m.caller(0, 0)
        f = self.successResultOf(m.vfs.create(c, m.root(), b"f", 0o644))
        self.successResultOf(m.vfs.link(c, f.ino, m.root(), b"g"))
        owner = LockOwner("nlm", "client", b"1")
        self.successResultOf(m.vfs.locks.lock(f.ino, owner, 0, 10, True))
        self.successResultOf(m.vfs.remove(c, m.root(), b"f"))
        self.assertEqual(len(m.vfs.locks.locks(f.ino)), 1)
        self.successResultOf(m.vfs.remove(c, m.root(), b"g"))
        self.assertEqual(m.vfs.locks.locks(f.ino), [])


class InMemoryAnswerTests(SynchronousTestCase):
    """
    The synchronous answers the NFS replies use (L{VFS.from_handle_now},
    L{VFS.attrs_now}) give what their Deferred counterparts would, and
    nothing while the store says cached attributes may be behind (another
    gateway's write-behind, L{claudefs_gateway.backend.remote}).
    """

    def test_same_as_getattr_and_not_while_behind(self) -> None:
        m = MemoryVFS("exports: [{path: /export, root_squash: false}]\n")
        c = m.caller(0, 0)
        a = self.successResultOf(m.vfs.create(c, m.root(), b"f", 0o644))
        export = m.vfs.exports.by_path("/export")
        assert export is not None
        fh = m.vfs.handle(export, a)
        self.successResultOf(m.vfs.from_handle(fh))  # verified once
        self.assertEqual(m.vfs.attrs_now(a.ino), self.successResultOf(m.vfs.getattr(c, a.ino)))
        self.assertEqual(m.vfs.from_handle_now(fh), self.successResultOf(m.vfs.from_handle(fh)))
        current = [False]
        m.vfs._attrs_current = lambda: current[0]
        self.assertIsNone(m.vfs.attrs_now(a.ino))
        self.assertIsNone(m.vfs.from_handle_now(fh))
        current[0] = True
        self.assertEqual(m.vfs.attrs_now(a.ino), a)
        self.assertEqual(m.vfs.from_handle_now(fh), (export, a))


class UsageChangeTests(SynchronousTestCase):
    def test_as_per_owner_sums(self) -> None:
        """
        The quota deltas of a change are each owner's (bytes, inodes) after
        less before, an inode counting while it has a link and bytes only
        for a regular file: every pairing of these cases, against that
        definition written out with dictionaries.
        """
        import itertools

        import attrs

        from claudefs_gateway.vfs._vfs import _usage_changes

        def contrib(a: Any) -> dict[tuple[int, int], tuple[int, int]]:
            if a is None or a.nlink == 0:
                return {}
            return {(a.uid, a.gid): (a.size if a.type is FileType.REG else 0, 1)}

        def reference(b: Any, a: Any) -> set[tuple[int, int, int, int]]:
            cb, ca = contrib(b), contrib(a)
            out = set()
            for key in {*cb, *ca}:
                bb, bi = cb.get(key, (0, 0))
                ab, ai = ca.get(key, (0, 0))
                if ab - bb or ai - bi:
                    out.add((key[0], key[1], ab - bb, ai - bi))
            return out

        m = MemoryVFS("exports: [{path: /export, root_squash: false}]\n")
        c = m.caller(0, 0)
        base = self.successResultOf(m.vfs.create(c, m.root(), b"f", 0o644))
        cases: list[Any] = [None]
        for uid, gid, size, nlink, kind in itertools.product(
            (1, 2), (5, 6), (0, 7, 9), (0, 1, 2), (FileType.REG, FileType.DIR)
        ):
            cases.append(attrs.evolve(base, uid=uid, gid=gid, size=size, nlink=nlink, type=kind))
        for b, a in itertools.product(cases, cases):
            got = _usage_changes(b, a)
            self.assertEqual(len(got), len(set(got)))
            self.assertEqual(set(got), reference(b, a), (b, a))


class OpenRaceTests(SynchronousTestCase):
    def test_export_directory_made_by_another_gateway_meanwhile(self) -> None:
        """
        Two gateways opening one new store (the workers of C{start --workers}
        on a fresh data directory) both find no export directory and both
        make it: the one whose create comes second finds it made and opens,
        where it used to stop with "cannot open the store: Exists".
        """
        from claudefs_gateway.testing.vfs import RacingBackend

        class Racing(RacingBackend):
            racing = frozenset({b"export"})

        m = MemoryVFS(backend=Racing)
        self.assertEqual(m.backend.raced, [b"export"])
        self.assertTrue(m.vfs.is_open)
        a = self.successResultOf(m.backend.lookup(m.vfs.root_ino, b"export"))
        self.assertEqual(m.root(), a.ino)
        self.assertTrue(a.is_dir)
