"""Case-insensitive, case-preserving names over the case-sensitive vfs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as s
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.fstypes import FileType
from claudefs_gateway.smb import constants as c
from claudefs_gateway.smb import ntstatus as st
from claudefs_gateway.smb.names import CaseIndex, fold
from tests.smb.client import Wire, parse_names


class FoldTests(SynchronousTestCase):
    def test_fold(self) -> None:
        self.assertEqual(fold(b"Readme.TXT"), fold(b"README.txt"))
        self.assertEqual(fold("straße".encode()), "STRAßE")
        self.assertNotEqual(fold(b"a"), fold(b"b"))

    @given(s.binary(max_size=40))
    def test_any_bytes(self, name: bytes) -> None:
        fold(name)

    @given(
        s.binary(max_size=40)
        | s.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass"))
    )
    def test_one_to_one(self, name: bytes) -> None:
        """The ASCII shortcut agrees with the character-by-character rule."""
        text = name.decode("utf-8", "surrogateescape")
        slow = "".join(u if len(u := ch.upper()) == 1 else ch for ch in text)
        self.assertEqual(fold(name), slow)


def find(wire: Wire, index: CaseIndex, *args: object) -> bytes | None:
    return wire.fired(defer.Deferred.fromCoroutine(index.find(*args)))  # type: ignore[arg-type]


class IndexTests(SynchronousTestCase):
    def test_kept_by_events(self) -> None:
        """One scan per directory; later changes (from any protocol) keep the index right."""
        wire = Wire()
        vfs = wire.mvfs.vfs
        root = wire.mvfs.caller(0, 0)
        dir_ino = wire.mvfs.root()
        index = CaseIndex(vfs)
        wire.fired(vfs.create(root, dir_ino, b"Alpha", 0o644))
        self.assertEqual(find(wire, index, root, dir_ino, b"ALPHA"), b"Alpha")
        wire.fired(vfs.create(root, dir_ino, b"Beta", 0o644))
        wire.fired(vfs.rename(root, dir_ino, b"Alpha", dir_ino, b"Gamma"))
        self.assertEqual(find(wire, index, root, dir_ino, b"beta"), b"Beta")
        self.assertIsNone(find(wire, index, root, dir_ino, b"alpha"))
        self.assertEqual(find(wire, index, root, dir_ino, b"GAMMA"), b"Gamma")
        wire.fired(vfs.remove(root, dir_ino, b"Gamma"))
        self.assertIsNone(find(wire, index, root, dir_ino, b"gamma"))
        self.assertEqual(index.scans, 1)

    def test_names_made_through_another_gateway(self) -> None:
        """
        A name another gateway made reaches the index through the shared
        store's change event (the directory, no name): the directory is
        scanned again. While the vfs has not heard every change (no event
        marks), the index is not trusted: a miss scans, and no name is
        known to be absent.
        """
        wire = Wire()
        vfs = wire.mvfs.vfs
        root = wire.mvfs.caller(0, 0)
        dir_ino = wire.mvfs.root()
        index = CaseIndex(vfs)
        self.assertIsNone(find(wire, index, root, dir_ino, b"REPORT"))
        self.assertTrue(index.known_absent(dir_ino, b"report"))
        # Made in the store without this vfs's events, as through another gateway.
        made = wire.fired(
            defer.maybeDeferred(vfs.backend.create, dir_ino, b"Report", FileType.REG, 0o644, 0, 0)
        )
        vfs.forget_changed(made.ino, dir_ino)
        self.assertFalse(index.known_absent(dir_ino, b"report"))
        self.assertEqual(find(wire, index, root, dir_ino, b"REPORT"), b"Report")
        self.assertEqual(index.scans, 2)
        self.patch(vfs, "changes_heard", lambda: False)
        self.assertFalse(index.known_absent(dir_ino, b"other"))
        self.assertEqual(find(wire, index, root, dir_ino, b"report"), b"Report")
        self.assertEqual(index.scans, 3)
        vfs.invalidate()
        self.patch(vfs, "changes_heard", lambda: True)
        self.assertFalse(index.known_absent(dir_ino, b"other"))

    def test_names_kept_bounded_across_directories(self) -> None:
        """The index forgets the least recently used directories to stay under max_total names."""
        wire = Wire()
        vfs = wire.mvfs.vfs
        root = wire.mvfs.caller(0, 0)
        top = wire.mvfs.root()
        index = CaseIndex(vfs, max_total=10)
        dirs = []
        for d in range(4):
            attr = wire.fired(vfs.mkdir(root, top, b"d%d" % d, 0o755))
            dirs.append(attr.ino)
            for f in range(4):
                wire.fired(vfs.create(root, attr.ino, b"F%d" % f, 0o644))
        for ino in dirs:
            self.assertEqual(find(wire, index, root, ino, b"f1"), b"F1")
        self.assertEqual(index.scans, 4)
        self.assertLessEqual(index._total, 10)
        # The most recent directory is still kept; the first was forgotten and is scanned again.
        find(wire, index, root, dirs[-1], b"f2")
        self.assertEqual(index.scans, 4)
        find(wire, index, root, dirs[0], b"f2")
        self.assertEqual(index.scans, 5)


class CaseInsensitiveTests(SynchronousTestCase):
    def test_open_in_any_case(self) -> None:
        conn = Wire().connect().setup()
        conn.open("Dir", options=c.FILE_DIRECTORY_FILE)
        fid = conn.open("Dir\\Report.TXT")
        conn.write(fid, 0, b"quarterly")
        other = conn.open("DIR\\report.txt", disposition=c.FILE_OPEN)
        self.assertEqual(conn.read_data(conn.read(other, 0, 20)), b"quarterly")
        r = conn.create("dir\\REPORT.txt", disposition=c.FILE_CREATE)
        self.assertEqual(r.status, st.STATUS_OBJECT_NAME_COLLISION)
        d = conn.open("dir", access=c.GENERIC_READ)
        self.assertEqual(sorted(conn.list(d)), [".", "..", "Report.TXT"])
        r = conn.query_directory(d, "REPORT.TXT", flags=c.SMB2_RESTART_SCANS)
        self.assertEqual(parse_names(r.buffer()), ["Report.TXT"])

    def test_case_only_rename_and_replace(self) -> None:
        from tests.smb.test_files import FILE, rename_info

        conn = Wire().connect().setup()
        fid = conn.open("name")
        self.assertEqual(conn.set_info(fid, FILE, 10, rename_info("NAME")).status, 0)
        d = conn.open("", access=c.GENERIC_READ)
        self.assertEqual(sorted(conn.list(d)), [".", "..", "NAME"])
        conn.close(conn.open("Other"))
        self.assertEqual(
            conn.set_info(fid, FILE, 10, rename_info("other")).status,
            st.STATUS_OBJECT_NAME_COLLISION,
        )
        self.assertEqual(conn.set_info(fid, FILE, 10, rename_info("other", True)).status, 0)
        self.assertEqual(sorted(conn.list(d)), [".", "..", "other"])
