"""MOUNT v1 and v3 (L{claudefs_gateway.nfs.mount})."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.fstypes import SetAttrs
from claudefs_gateway.nfs.errors import NFS3ERR
from claudefs_gateway.rpc.client import RPCError
from claudefs_gateway.rpc.message import AUTH_SYS
from tests.nfs.harness import Harness


class MountTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()
        self.c = self.h.client(0, 0)

    def test_mnt_gives_root_handle_and_flavours(self) -> None:
        r = self.c.mnt(b"/export")
        self.assertEqual((r.status, r.flavors), (0, [AUTH_SYS]))
        g = self.c.getattr(r.fh)
        self.assertEqual(g.attrs.fileid, self.h.m.root())

    def test_mnt_normalises(self) -> None:
        a = self.c.mnt(b"/export").fh
        self.assertEqual(self.c.mnt(b"//export/").fh, a)
        self.assertEqual(self.c.mnt(b"/export/./").fh, a)

    def test_mnt_subdirectory(self) -> None:
        root = self.c.mnt(b"/export").fh
        sub = self.c.mkdir(root, b"sub", SetAttrs(mode=0o755)).fh
        r = self.c.mnt(b"/export/sub")
        self.assertEqual((r.status, r.fh), (0, sub))
        self.c.create(sub, b"file")
        self.assertEqual(self.c.mnt(b"/export/sub/file").status, NFS3ERR.NOTDIR)
        self.assertEqual(self.c.mnt(b"/export/nope").status, NFS3ERR.NOENT)

    def test_mnt_errors(self) -> None:
        self.assertEqual(self.c.mnt(b"/nowhere").status, NFS3ERR.NOENT)
        self.assertEqual(self.c.mnt(b"/export/../etc").status, NFS3ERR.ACCES)
        self.assertEqual(self.c.mnt(b"").status, NFS3ERR.NOENT)
        self.assertRaises(RPCError, self.c.mnt, b"/" * 1025)

    def test_mnt_client_rules(self) -> None:
        """An address outside the export's networks gets MNT3ERR_ACCES."""
        outside = self.h.client(0, 0, host="192.0.2.1")
        self.assertEqual(outside.mnt(b"/lan").status, NFS3ERR.ACCES)
        inside = self.h.client(0, 0, host="10.9.8.7")
        self.assertEqual(inside.mnt(b"/lan").status, 0)

    def test_dump_umnt_umntall(self) -> None:
        self.c.mnt(b"/export")
        other = self.h.client(0, 0, host="10.0.0.2")
        other.mnt(b"/lan")
        other.mnt(b"/export")
        self.assertEqual(
            sorted(self.c.mount_dump()),
            [(b"10.0.0.2", b"/export"), (b"10.0.0.2", b"/lan"), (b"127.0.0.1", b"/export")],
        )
        self.c.umnt(b"/export")
        self.assertEqual(len(self.c.mount_dump()), 2)
        other.umntall()
        self.assertEqual(self.c.mount_dump(), [])

    def test_export_lists_nfs_exports_with_groups(self) -> None:
        got = dict(self.c.exports())
        self.assertEqual(got[b"/export"], [b"*"])
        self.assertEqual(got[b"/lan"], [b"10.0.0.0/8"])
        self.assertNotIn(b"/smbonly", got)
        self.assertEqual(dict(self.c.exports(vers=1)), got)

    def test_v1_mnt_not_supported(self) -> None:
        self.assertEqual(self.c.mnt(b"/export", vers=1).status, 10004)

    def test_other_versions(self) -> None:
        with self.assertRaises(RPCError) as e:
            self.c.mnt(b"/export", vers=2)
        self.assertEqual(e.exception.header.detail, (1, 3))
