"""NFSv4 file system operations and their error paths (L{claudefs_gateway.nfs.v4.ops_fs})."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4 import fattr
from claudefs_gateway.nfs.v4.codec import (
    AccessArgs,
    CommitArgs,
    CreateArgs,
    FattrArgs,
    GetxattrArgs,
    ListxattrsArgs,
    NameArgs,
    OpenattrArgs,
    ReadArgs,
    ReaddirArgs,
    RenameArgs,
    SecinfoNoNameArgs,
    SetattrArgs,
    SetxattrArgs,
    SpecData,
    StateId,
    WriteArgs,
)
from claudefs_gateway.rpc.xdrtypes import Arm
from tests.nfs.v4.client import ANON, attrs_of, fattr_of
from tests.nfs.v4.harness import Harness

ATTRS = fattr_of({c.FATTR4_MODE: 0o755})


def mkdir(name: bytes) -> tuple[int, Any]:
    return (c.OP_CREATE, CreateArgs(Arm(c.NF4DIR), name, ATTRS))


class FileHandleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()
        self.cl = self.h.client().setup()

    def test_pseudo_root(self) -> None:
        """PUTROOTFH is the pseudo root: read-only directories leading to the exports."""
        r = self.cl.compound(
            [(c.OP_PUTROOTFH, None), self.cl.getattr(c.FATTR4_TYPE, c.FATTR4_MODE, c.FATTR4_FSID)]
        )
        got = attrs_of(r.last())
        self.assertEqual(
            (got[c.FATTR4_TYPE], got[c.FATTR4_MODE], got[c.FATTR4_FSID]), (c.NF4DIR, 0o555, (0, 1))
        )
        r = self.cl.compound([(c.OP_PUTROOTFH, None), mkdir(b"nope")])
        self.assertEqual(r.status, c.NFS4ERR_ROFS)

    def test_nested_export_and_lookupp(self) -> None:
        """/data/projects is reached through pseudo /data; LOOKUPP walks back to the root."""
        ops = self.cl.path(b"data", b"projects") + [(c.OP_GETFH, None)]
        ops += [(c.OP_LOOKUPP, None), (c.OP_GETFH, None), (c.OP_LOOKUPP, None), (c.OP_GETFH, None)]
        r = self.cl.compound(ops)
        self.assertEqual(r.status, c.NFS4_OK)
        root = self.cl.compound([(c.OP_PUTROOTFH, None), (c.OP_GETFH, None)]).last()
        fhs = [v.value for op, v in r.results if op == c.OP_GETFH]
        self.assertEqual(fhs[-1], root)
        r = self.cl.compound([(c.OP_PUTROOTFH, None), (c.OP_LOOKUPP, None)])
        self.assertEqual(r.status, c.NFS4ERR_NOENT)

    def test_export_root_attrs(self) -> None:
        """An export's root has the export's fsid and is mounted on its pseudo directory."""
        r = self.cl.compound(
            self.cl.path(b"export")
            + [self.cl.getattr(c.FATTR4_FSID, c.FATTR4_FILEID, c.FATTR4_MOUNTED_ON_FILEID)]
        )
        got = attrs_of(r.last())
        self.assertNotEqual(got[c.FATTR4_FSID], (0, 1))
        self.assertNotEqual(got[c.FATTR4_MOUNTED_ON_FILEID], got[c.FATTR4_FILEID])

    def test_client_rules(self) -> None:
        """Exports the client's address may not use are not in the pseudo tree."""
        r = self.cl.compound(self.cl.path(b"lan"))
        self.assertEqual(r.status, c.NFS4ERR_NOENT)
        r = self.cl.compound(self.cl.path(b"smbonly"))
        self.assertEqual(r.status, c.NFS4ERR_NOENT)
        lan = self.h.client(host="10.1.2.3").setup()
        self.assertEqual(lan.compound(lan.path(b"lan")).status, c.NFS4_OK)

    def test_bad_handles(self) -> None:
        r = self.cl.compound([self.cl.putfh(b"abc")])
        self.assertEqual(r.status, c.NFS4ERR_BADHANDLE)
        r = self.cl.compound([self.cl.putfh(b"\0cfspsd1" + b"x" * 16)])
        self.assertEqual(r.status, c.NFS4ERR_STALE)

    def test_no_filehandle(self) -> None:
        for op in ([(c.OP_GETFH, None)], [(c.OP_LOOKUP, NameArgs(b"x"))], [(c.OP_SAVEFH, None)]):
            self.assertEqual(self.cl.compound(op).status, c.NFS4ERR_NOFILEHANDLE)
        self.assertEqual(self.cl.compound([(c.OP_RESTOREFH, None)]).status, c.NFS4ERR_RESTOREFH)

    def test_stale_handle_kept(self) -> None:
        """A removed file's handle is accepted by PUTFH and reported stale where it matters."""
        r = self.cl.compound(
            self.cl.path(b"export") + [self.cl.open_create(b"gone"), (c.OP_GETFH, None)]
        )
        fh = r.last(c.OP_GETFH)
        sid = r.last(c.OP_OPEN).stateid
        self.cl.compound(self.cl.path(b"export") + [(c.OP_REMOVE, NameArgs(b"gone"))])
        self.assertEqual(
            self.cl.compound([self.cl.putfh(fh), self.cl.getattr(c.FATTR4_SIZE)]).status,
            c.NFS4ERR_STALE,
        )
        from claudefs_gateway.nfs.v4.codec import CloseArgs

        self.assertEqual(
            self.cl.compound([self.cl.putfh(fh), (c.OP_CLOSE, CloseArgs(0, sid))]).status, c.NFS4_OK
        )

    def test_names(self) -> None:
        """Empty (INVAL), long (NAMETOOLONG), dots (BADNAME), slash (BADCHAR)."""
        cases = {
            b"": c.NFS4ERR_INVAL,
            b"x" * 256: c.NFS4ERR_NAMETOOLONG,
            b"..": c.NFS4ERR_BADNAME,
            b"a/b": c.NFS4ERR_BADCHAR,
        }
        for name, status in cases.items():
            r = self.cl.compound(self.cl.path(b"export") + [(c.OP_LOOKUP, NameArgs(name))])
            self.assertEqual(r.status, status, name)

    def test_lookup_not_dir(self) -> None:
        self.cl.compound(self.cl.path(b"export") + [self.cl.open_create(b"plain")])
        r = self.cl.compound(self.cl.path(b"export", b"plain") + [(c.OP_LOOKUP, NameArgs(b"x"))])
        self.assertEqual(r.status, c.NFS4ERR_NOTDIR)
        r = self.cl.compound(self.cl.path(b"export", b"plain") + [(c.OP_LOOKUPP, None)])
        self.assertEqual(r.status, c.NFS4ERR_NOTDIR)


class AttributeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()
        self.cl = self.h.client().setup()
        self.cl.compound(self.cl.path(b"export") + [self.cl.open_create(b"f")])

    def test_supported(self) -> None:
        r = self.cl.compound(
            self.cl.path(b"export", b"f")
            + [self.cl.getattr(c.FATTR4_SUPPORTED_ATTRS, c.FATTR4_XATTR_SUPPORT, c.FATTR4_ACL)]
        )
        got = attrs_of(r.last())
        self.assertEqual(fattr.bits(got[c.FATTR4_SUPPORTED_ATTRS]), sorted(fattr.SUPPORTED))
        self.assertTrue(got[c.FATTR4_XATTR_SUPPORT])
        self.assertNotIn(c.FATTR4_ACL, got)

    def test_numeric_owners(self) -> None:
        r = self.cl.compound(
            self.cl.path(b"export", b"f") + [self.cl.getattr(c.FATTR4_OWNER, c.FATTR4_OWNER_GROUP)]
        )
        got = attrs_of(r.last())
        self.assertEqual((got[c.FATTR4_OWNER], got[c.FATTR4_OWNER_GROUP]), (b"0", b"0"))

    def test_setattr(self) -> None:
        """SETATTR answers what it set; owners by number; unknown owners are BADOWNER."""
        ops = self.cl.path(b"export", b"f")
        r = self.cl.compound(
            ops
            + [
                (
                    c.OP_SETATTR,
                    SetattrArgs(
                        ANON,
                        fattr_of({c.FATTR4_MODE: 0o600, c.FATTR4_OWNER: b"1000", c.FATTR4_SIZE: 5}),
                    ),
                )
            ]
        )
        self.assertEqual(r.status, c.NFS4_OK)
        self.assertEqual(fattr.bits(r.last()), [c.FATTR4_SIZE, c.FATTR4_MODE, c.FATTR4_OWNER])
        got = attrs_of(
            self.cl.compound(
                ops + [self.cl.getattr(c.FATTR4_MODE, c.FATTR4_OWNER, c.FATTR4_SIZE)]
            ).last()
        )
        self.assertEqual(
            (got[c.FATTR4_MODE], got[c.FATTR4_OWNER], got[c.FATTR4_SIZE]), (0o600, b"1000", 5)
        )
        r = self.cl.compound(
            ops + [(c.OP_SETATTR, SetattrArgs(ANON, fattr_of({c.FATTR4_OWNER: b"nobody@nowhere"})))]
        )
        self.assertEqual(r.status, c.NFS4ERR_BADOWNER)
        self.assertEqual(r.last(), [])

    def test_setattr_refusals(self) -> None:
        ops = self.cl.path(b"export", b"f")
        readonly = fattr.Fattr(fattr.bitmap([c.FATTR4_TYPE]), b"\0\0\0\1")
        self.assertEqual(
            self.cl.compound(ops + [(c.OP_SETATTR, SetattrArgs(ANON, readonly))]).status,
            c.NFS4ERR_INVAL,
        )
        acl = fattr.Fattr(fattr.bitmap([c.FATTR4_ACL]), b"\0\0\0\0")
        self.assertEqual(
            self.cl.compound(ops + [(c.OP_SETATTR, SetattrArgs(ANON, acl))]).status,
            c.NFS4ERR_ATTRNOTSUPP,
        )
        short = fattr.Fattr(fattr.bitmap([c.FATTR4_SIZE]), b"\0\0")
        self.assertEqual(
            self.cl.compound(ops + [(c.OP_SETATTR, SetattrArgs(ANON, short))]).status,
            c.NFS4ERR_BADXDR,
        )

    def test_mode_set_masked(self) -> None:
        ops = self.cl.path(b"export", b"f")
        self.cl.compound(
            ops + [(c.OP_SETATTR, SetattrArgs(ANON, fattr_of({c.FATTR4_MODE: 0o644})))]
        )
        self.cl.compound(
            ops
            + [
                (
                    c.OP_SETATTR,
                    SetattrArgs(ANON, fattr_of({c.FATTR4_MODE_SET_MASKED: (0o001, 0o007)})),
                )
            ]
        )
        got = attrs_of(self.cl.compound(ops + [self.cl.getattr(c.FATTR4_MODE)]).last())
        self.assertEqual(got[c.FATTR4_MODE], 0o641)

    def test_verify(self) -> None:
        """VERIFY passes on equal attributes, NVERIFY on different ones; write-only are INVAL."""
        ops = self.cl.path(b"export", b"f")
        mine = self.cl.compound(
            ops + [self.cl.getattr(c.FATTR4_SIZE, c.FATTR4_TYPE, c.FATTR4_FILEHANDLE)]
        ).last()
        self.assertEqual(self.cl.compound(ops + [(c.OP_VERIFY, FattrArgs(mine))]).status, c.NFS4_OK)
        self.assertEqual(
            self.cl.compound(ops + [(c.OP_NVERIFY, FattrArgs(mine))]).status, c.NFS4ERR_SAME
        )
        other = fattr_of({c.FATTR4_SIZE: 99})
        self.assertEqual(
            self.cl.compound(ops + [(c.OP_VERIFY, FattrArgs(other))]).status, c.NFS4ERR_NOT_SAME
        )
        self.assertEqual(
            self.cl.compound(ops + [(c.OP_NVERIFY, FattrArgs(other))]).status, c.NFS4_OK
        )
        wo = fattr_of({c.FATTR4_TIME_MODIFY_SET: None})
        self.assertEqual(
            self.cl.compound(ops + [(c.OP_VERIFY, FattrArgs(wo))]).status, c.NFS4ERR_INVAL
        )

    def test_access(self) -> None:
        """ACCESS answers what the caller may do; a stranger may read a 0644 file, not modify it."""
        ops = self.cl.path(b"export", b"f")
        want = c.ACCESS4_READ | c.ACCESS4_MODIFY | c.ACCESS4_EXECUTE
        res = self.cl.compound(ops + [(c.OP_ACCESS, AccessArgs(want))]).last()
        self.assertEqual((res.supported, res.access), (want, c.ACCESS4_READ | c.ACCESS4_MODIFY))
        stranger = self.h.client(uid=4321, gid=4321).setup()
        res = stranger.compound(
            stranger.path(b"export", b"f") + [(c.OP_ACCESS, AccessArgs(want))]
        ).last()
        self.assertEqual(res.access, c.ACCESS4_READ)


class NamespaceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()
        self.cl = self.h.client().setup()
        self.base = self.cl.path(b"export")

    def test_create_types(self) -> None:
        """CREATE makes directories, links, devices, fifos, sockets; regular files are BADTYPE."""
        kinds = {
            b"d": Arm(c.NF4DIR),
            b"l": Arm(c.NF4LNK, b"/target"),
            b"b": Arm(c.NF4BLK, SpecData(1, 2)),
            b"ff": Arm(c.NF4FIFO),
            b"s": Arm(c.NF4SOCK),
        }
        for name, kind in kinds.items():
            r = self.cl.compound(
                self.base
                + [(c.OP_CREATE, CreateArgs(kind, name, ATTRS)), self.cl.getattr(c.FATTR4_TYPE)]
            )
            self.assertEqual(r.status, c.NFS4_OK, name)
            self.assertEqual(attrs_of(r.last())[c.FATTR4_TYPE], kind.tag)
        r = self.cl.compound(self.base + [(c.OP_CREATE, CreateArgs(Arm(c.NF4REG), b"r", ATTRS))])
        self.assertEqual(r.status, c.NFS4ERR_BADTYPE)
        r = self.cl.compound(self.cl.path(b"export", b"l") + [(c.OP_READLINK, None)])
        self.assertEqual(r.last(), b"/target")
        r = self.cl.compound(self.cl.path(b"export", b"d") + [(c.OP_READLINK, None)])
        self.assertEqual(r.status, c.NFS4ERR_INVAL)
        r = self.cl.compound(self.cl.path(b"export", b"l") + [(c.OP_LOOKUP, NameArgs(b"x"))])
        self.assertEqual(r.status, c.NFS4ERR_SYMLINK)

    def test_create_cinfo(self) -> None:
        r = self.cl.compound(self.base + [mkdir(b"cd")])
        res = r.last(c.OP_CREATE)
        self.assertLess(res.cinfo.before, res.cinfo.after)
        self.assertEqual(self.cl.compound(self.base + [mkdir(b"cd")]).status, c.NFS4ERR_EXIST)

    def test_remove(self) -> None:
        self.cl.compound(
            self.base + [mkdir(b"rd"), (c.OP_CREATE, CreateArgs(Arm(c.NF4DIR), b"inner", ATTRS))]
        )
        self.assertEqual(
            self.cl.compound(self.base + [(c.OP_REMOVE, NameArgs(b"rd"))]).status,
            c.NFS4ERR_NOTEMPTY,
        )
        self.assertEqual(
            self.cl.compound(
                self.cl.path(b"export", b"rd") + [(c.OP_REMOVE, NameArgs(b"inner"))]
            ).status,
            c.NFS4_OK,
        )
        self.assertEqual(
            self.cl.compound(self.base + [(c.OP_REMOVE, NameArgs(b"rd"))]).status, c.NFS4_OK
        )
        self.assertEqual(
            self.cl.compound(self.base + [(c.OP_REMOVE, NameArgs(b"rd"))]).status, c.NFS4ERR_NOENT
        )

    def test_rename(self) -> None:
        """RENAME moves between directories; onto itself changes nothing; dots are BADNAME."""
        self.cl.compound(self.base + [mkdir(b"a"), *self.cl.path(b"export"), mkdir(b"b")])
        self.cl.compound(self.cl.path(b"export", b"a") + [self.cl.open_create(b"x")])
        ops = self.cl.path(b"export", b"a") + [(c.OP_SAVEFH, None)] + self.cl.path(b"export", b"b")
        r = self.cl.compound(ops + [(c.OP_RENAME, RenameArgs(b"x", b"y"))])
        self.assertEqual(r.status, c.NFS4_OK)
        self.assertEqual(self.cl.compound(self.cl.path(b"export", b"b", b"y")).status, c.NFS4_OK)
        ops = self.cl.path(b"export", b"b") + [(c.OP_SAVEFH, None)] + self.cl.path(b"export", b"b")
        res = self.cl.compound(ops + [(c.OP_RENAME, RenameArgs(b"y", b"y"))]).last()
        self.assertEqual(res.source_cinfo.before, res.source_cinfo.after)
        r = self.cl.compound(ops + [(c.OP_RENAME, RenameArgs(b".", b"z"))])
        self.assertEqual(r.status, c.NFS4ERR_BADNAME)
        r = self.cl.compound(self.base + [(c.OP_RENAME, RenameArgs(b"y", b"z"))])
        self.assertEqual(r.status, c.NFS4ERR_NOFILEHANDLE)
        cross = self.cl.path(b"export") + [(c.OP_SAVEFH, None)] + self.cl.path(b"data", b"projects")
        self.assertEqual(
            self.cl.compound(cross + [(c.OP_RENAME, RenameArgs(b"a", b"a"))]).status, c.NFS4ERR_XDEV
        )

    def test_link(self) -> None:
        self.cl.compound(self.base + [self.cl.open_create(b"orig")])
        ops = self.cl.path(b"export", b"orig") + [(c.OP_SAVEFH, None)] + self.cl.path(b"export")
        self.assertEqual(
            self.cl.compound(ops + [(c.OP_LINK, NameArgs(b"alias"))]).status, c.NFS4_OK
        )
        got = attrs_of(
            self.cl.compound(
                self.cl.path(b"export", b"alias") + [self.cl.getattr(c.FATTR4_NUMLINKS)]
            ).last()
        )
        self.assertEqual(got[c.FATTR4_NUMLINKS], 2)
        dirs = self.cl.path(b"export") + [(c.OP_SAVEFH, None)] + self.cl.path(b"export")
        self.assertEqual(
            self.cl.compound(dirs + [(c.OP_LINK, NameArgs(b"dl"))]).status, c.NFS4ERR_ISDIR
        )

    def test_readdir_pages(self) -> None:
        """READDIR pages by cookie with the store's verifier; small counts are TOOSMALL."""
        for i in range(30):
            self.cl.compound(self.base + [mkdir(b"e%02d" % i)])
        names: list[bytes] = []
        cookie, verf = 0, bytes(8)
        req = fattr.bitmap([c.FATTR4_TYPE, c.FATTR4_FILEID])
        while True:
            res = self.cl.compound(
                self.base + [(c.OP_READDIR, ReaddirArgs(cookie, verf, 200, 600, req))]
            ).last()
            names += [e.name for e in res.entries]
            if res.eof:
                break
            cookie, verf = res.entries[-1].cookie, res.cookieverf
        self.assertEqual(sorted(names), [b"e%02d" % i for i in range(30)])
        r = self.cl.compound(self.base + [(c.OP_READDIR, ReaddirArgs(0, bytes(8), 10, 20, req))])
        self.assertEqual(r.status, c.NFS4ERR_TOOSMALL)
        r = self.cl.compound(self.base + [(c.OP_READDIR, ReaddirArgs(1, bytes(8), 100, 1000, req))])
        self.assertEqual(r.status, c.NFS4ERR_BAD_COOKIE)

    def test_secinfo(self) -> None:
        """SECINFO offers AUTH_SYS and AUTH_NONE and consumes the file handle."""
        r = self.cl.compound(
            [(c.OP_PUTROOTFH, None), (c.OP_SECINFO, NameArgs(b"export")), (c.OP_GETFH, None)]
        )
        self.assertEqual(r.status, c.NFS4ERR_NOFILEHANDLE)
        self.assertEqual(r.results[2][1].value, [Arm(c.AUTH_SYS), Arm(c.AUTH_NONE)])
        r = self.cl.compound(
            [
                (c.OP_PUTROOTFH, None),
                (c.OP_SECINFO_NO_NAME, SecinfoNoNameArgs(c.SECINFO_STYLE4_PARENT)),
            ]
        )
        self.assertEqual(r.status, c.NFS4ERR_NOENT)
        r = self.cl.compound(
            self.base + [(c.OP_SECINFO_NO_NAME, SecinfoNoNameArgs(c.SECINFO_STYLE4_PARENT))]
        )
        self.assertEqual(r.status, c.NFS4_OK)

    def test_not_served(self) -> None:
        """Operations not served answer NFS4ERR_NOTSUPP; 4.0-only ones too; unknown ones OP_ILLEGAL."""
        r = self.cl.compound(self.base + [(c.OP_OPENATTR, OpenattrArgs(False))])
        self.assertEqual(r.status, c.NFS4ERR_NOTSUPP)
        from claudefs_gateway.nfs.v4.codec import ClientidArgs

        r = self.cl.compound([(c.OP_RENEW, ClientidArgs(self.cl.clientid))])
        self.assertEqual(r.status, c.NFS4ERR_NOTSUPP)
        r = self.cl.compound([(c.OP_ILLEGAL, None)])
        self.assertEqual((r.status, r.results[-1][0]), (c.NFS4ERR_OP_ILLEGAL, c.OP_ILLEGAL))

    def test_minor_versions(self) -> None:
        """4.0 (and 3, 50...) answer MINOR_VERS_MISMATCH with no results; 4.2 ops are illegal in 4.1."""
        for minor in (0, 3, 50):
            r = self.cl.raw([(c.OP_PUTROOTFH, None)], minor=minor)
            self.assertEqual((r.status, r.results), (c.NFS4ERR_MINOR_VERS_MISMATCH, []))
        v41 = self.h.client(minor=1).setup()
        r = v41.compound(self.cl.path(b"export") + [(c.OP_GETXATTR, GetxattrArgs(b"a"))])
        self.assertEqual(r.status, c.NFS4ERR_OP_ILLEGAL)

    def test_udp_refused(self) -> None:
        udp = self.h.client(transport="udp")
        self.assertEqual(udp.raw([]).status, c.NFS4ERR_INVAL)


class DataTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()
        self.cl = self.h.client().setup()
        r = self.cl.compound(
            self.cl.path(b"export") + [self.cl.open_create(b"data"), (c.OP_GETFH, None)]
        )
        self.fh = r.last(c.OP_GETFH)
        self.sid = r.last(c.OP_OPEN).stateid

    def test_write_read_commit(self) -> None:
        p = self.cl.putfh(self.fh)
        r = self.cl.compound([p, (c.OP_WRITE, WriteArgs(self.sid, 3, c.UNSTABLE4, b"hello"))])
        res = r.last()
        self.assertEqual((res.count, res.writeverf), (5, b"VERIFIER"))
        r = self.cl.compound(
            [p, (c.OP_READ, ReadArgs(ANON, 0, 100)), (c.OP_COMMIT, CommitArgs(0, 0))]
        )
        self.assertEqual(r.last(c.OP_READ).data, b"\0\0\0hello")
        self.assertTrue(r.last(c.OP_READ).eof)
        self.assertEqual(r.last(c.OP_COMMIT), b"VERIFIER")

    def test_current_stateid(self) -> None:
        """The special current stateid names the OPEN's in the same COMPOUND."""
        cur = StateId(1, bytes(12))
        r = self.cl.compound(
            self.cl.path(b"export")
            + [
                self.cl.open_create(b"cur", owner=b"o9"),
                (c.OP_WRITE, WriteArgs(cur, 0, c.FILE_SYNC4, b"x")),
            ]
        )
        self.assertEqual(r.status, c.NFS4_OK)
        self.assertEqual(
            self.cl.compound([(c.OP_WRITE, WriteArgs(cur, 0, c.FILE_SYNC4, b"x"))]).status,
            c.NFS4ERR_NOFILEHANDLE,
        )
        r = self.cl.compound(
            [self.cl.putfh(self.fh), (c.OP_WRITE, WriteArgs(cur, 0, c.FILE_SYNC4, b"x"))]
        )
        self.assertEqual(r.status, c.NFS4ERR_BAD_STATEID)

    def test_stateid_checks(self) -> None:
        """Bad, old, future and another file's stateids; another run's are stale."""
        p = self.cl.putfh(self.fh)

        def w(sid: StateId) -> int:
            return int(
                self.cl.compound([p, (c.OP_WRITE, WriteArgs(sid, 0, c.FILE_SYNC4, b"x"))]).status
            )

        self.assertEqual(w(StateId(1, b"\0\0\0\1" + bytes(8))), c.NFS4ERR_STALE_STATEID)
        known = self.sid.other
        self.assertEqual(w(StateId(1, known[:4] + b"\xff" * 8)), c.NFS4ERR_BAD_STATEID)
        self.assertEqual(w(StateId(9, known)), c.NFS4ERR_BAD_STATEID)
        self.assertEqual(w(StateId(0, known)), c.NFS4_OK)
        self.cl.compound(
            self.cl.path(b"export")
            + [self.cl.open_existing(b"data", access=c.OPEN4_SHARE_ACCESS_READ)]
        )
        self.assertEqual(w(StateId(1, known)), c.NFS4ERR_OLD_STATEID)
        r = self.cl.compound(
            self.cl.path(b"export")
            + [
                self.cl.open_create(b"other", owner=b"o2"),
                (c.OP_WRITE, WriteArgs(StateId(0, known), 0, c.FILE_SYNC4, b"x")),
            ]
        )
        self.assertEqual(r.status, c.NFS4ERR_BAD_STATEID)

    def test_openmode(self) -> None:
        """A read-only open may not write (OPENMODE); a write-only open may read."""
        r = self.cl.compound(
            self.cl.path(b"export")
            + [
                self.cl.open_create(b"ro", owner=b"r", access=c.OPEN4_SHARE_ACCESS_READ),
                (c.OP_WRITE, WriteArgs(StateId(1, bytes(12)), 0, c.FILE_SYNC4, b"x")),
            ]
        )
        self.assertEqual(r.status, c.NFS4ERR_OPENMODE)
        r = self.cl.compound(
            self.cl.path(b"export")
            + [
                self.cl.open_create(b"wo", owner=b"w", access=c.OPEN4_SHARE_ACCESS_WRITE),
                (c.OP_READ, ReadArgs(StateId(1, bytes(12)), 0, 10)),
            ]
        )
        self.assertEqual(r.status, c.NFS4_OK)

    def test_types(self) -> None:
        r = self.cl.compound(self.cl.path(b"export") + [(c.OP_READ, ReadArgs(ANON, 0, 10))])
        self.assertEqual(r.status, c.NFS4ERR_ISDIR)

    def test_large_read_clamped(self) -> None:
        """A READ larger than the session may answer is cut to fit."""
        cl = self.h.client()
        cl.exchange_id(b"small-reply")
        from claudefs_gateway.nfs.v4.codec import ChannelAttrs

        cl.create_session(fore=ChannelAttrs(0, 8192, 1024, 1024, 8, 8, []))
        self.cl.compound(
            [
                self.cl.putfh(self.fh),
                (c.OP_WRITE, WriteArgs(self.sid, 0, c.FILE_SYNC4, b"z" * 4000)),
            ]
        )
        r = cl.compound([cl.putfh(self.fh), (c.OP_READ, ReadArgs(ANON, 0, 4000))])
        self.assertEqual(r.status, c.NFS4_OK)
        self.assertLess(len(r.last().data), 1024)


class XattrTests(SynchronousTestCase):
    """RFC 8276 extended attributes, the store's user. attributes (SMB's EAs)."""

    def setUp(self) -> None:
        self.h = Harness()
        self.cl = self.h.client().setup()
        self.cl.compound(self.cl.path(b"export") + [self.cl.open_create(b"x")])
        self.ops = self.cl.path(b"export", b"x")

    def _do(self, op: tuple[int, Any]) -> Any:
        return self.cl.compound(self.ops + [op])

    def test_lifecycle(self) -> None:
        self.assertEqual(self._do((c.OP_GETXATTR, GetxattrArgs(b"k"))).status, c.NFS4ERR_NOXATTR)
        self.assertEqual(
            self._do((c.OP_SETXATTR, SetxattrArgs(c.SETXATTR4_REPLACE, b"k", b"v"))).status,
            c.NFS4ERR_NOXATTR,
        )
        self.assertEqual(
            self._do((c.OP_SETXATTR, SetxattrArgs(c.SETXATTR4_CREATE, b"k", b"v"))).status,
            c.NFS4_OK,
        )
        self.assertEqual(
            self._do((c.OP_SETXATTR, SetxattrArgs(c.SETXATTR4_CREATE, b"k", b"v"))).status,
            c.NFS4ERR_EXIST,
        )
        self.assertEqual(
            self._do((c.OP_SETXATTR, SetxattrArgs(c.SETXATTR4_EITHER, b"k", b"w"))).status,
            c.NFS4_OK,
        )
        self.assertEqual(self._do((c.OP_GETXATTR, GetxattrArgs(b"k"))).last(), b"w")
        self.assertEqual(self._do((c.OP_LISTXATTRS, ListxattrsArgs(0, 4096))).last().names, [b"k"])
        self.assertEqual(self._do((c.OP_REMOVEXATTR, GetxattrArgs(b"k"))).status, c.NFS4_OK)
        self.assertEqual(self._do((c.OP_REMOVEXATTR, GetxattrArgs(b"k"))).status, c.NFS4ERR_NOXATTR)

    def test_stored_under_user(self) -> None:
        """The store keeps them as user.<name>, as SMB's EAs and Linux xattrs."""
        self._do((c.OP_SETXATTR, SetxattrArgs(c.SETXATTR4_EITHER, b"color", b"blue")))
        m = self.h.m
        ino = self.h.vfs.name_cache.get((m.root(), b"x"))
        self.assertEqual(self.successResultOf(m.backend.getxattr(ino, b"user.color")), b"blue")

    def test_list_pages(self) -> None:
        for i in range(20):
            self._do((c.OP_SETXATTR, SetxattrArgs(c.SETXATTR4_EITHER, b"name%02d" % i, b"v")))
        names: list[bytes] = []
        cookie = 0
        while True:
            res = self._do((c.OP_LISTXATTRS, ListxattrsArgs(cookie, 100))).last()
            names += res.names
            if res.eof:
                break
            cookie = res.cookie
        self.assertEqual(names, [b"name%02d" % i for i in range(20)])
        self.assertEqual(
            self._do((c.OP_LISTXATTRS, ListxattrsArgs(0, 20))).status, c.NFS4ERR_TOOSMALL
        )


class OwnerNameTests(SynchronousTestCase):
    """With C{only_numeric_owners: false}, owners are names from the user database."""

    def setUp(self) -> None:
        from claudefs_gateway.nfs.v4.compound import Settings
        from claudefs_gateway.vfs.identity import User

        users = [User("alice", 1000, 1000, nfs4_name="alice@example.org"), User("bob", 1001, 1001)]
        self.h = Harness(settings=Settings(only_numeric_owners=False), users=users)
        self.cl = self.h.client().setup()
        self.cl.compound(self.cl.path(b"export") + [self.cl.open_create(b"o")])
        self.ops = self.cl.path(b"export", b"o")

    def _owner(self) -> bytes:
        got = attrs_of(self.cl.compound(self.ops + [self.cl.getattr(c.FATTR4_OWNER)]).last())
        owner: bytes = got[c.FATTR4_OWNER]
        return owner

    def test_names_both_ways(self) -> None:
        self.assertEqual(self._owner(), b"0")
        for given, shown in (
            (b"alice@example.org", b"alice@example.org"),
            (b"bob@localdomain", b"bob@localdomain"),
            (b"1000", b"alice@example.org"),
        ):
            r = self.cl.compound(
                self.ops + [(c.OP_SETATTR, SetattrArgs(ANON, fattr_of({c.FATTR4_OWNER: given})))]
            )
            self.assertEqual(r.status, c.NFS4_OK, given)
            self.assertEqual(self._owner(), shown)
        r = self.cl.compound(
            self.ops
            + [(c.OP_SETATTR, SetattrArgs(ANON, fattr_of({c.FATTR4_OWNER: b"carol@localdomain"})))]
        )
        self.assertEqual(r.status, c.NFS4ERR_BADOWNER)
