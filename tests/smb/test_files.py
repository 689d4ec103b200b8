"""
File commands through the vfs: CREATE dispositions and options, contexts,
READ/WRITE, QUERY_DIRECTORY, QUERY_INFO/SET_INFO, locks and share modes
through the vfs lock table, CHANGE_NOTIFY, and what other protocols see.
"""

from __future__ import annotations

import struct
from typing import Any

import spnego
from hypothesis import given
from hypothesis import strategies as s
from twisted.trial.unittest import SynchronousTestCase

from zope.interface import implementer

from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.fstypes import SetAttrs
from claudefs_gateway.interfaces import ILeaseHolder
from claudefs_gateway.smb import constants as c
from claudefs_gateway.smb import ntstatus as st
from claudefs_gateway.smb.constants import FileInfoClass as F
from claudefs_gateway.smb.errors import SMBError
from claudefs_gateway.smb.filebase import DOS_KEY, ea_entries, get_ea_names, pack_eas, split_name
from claudefs_gateway.smb.info import from_filetime, to_filetime
from claudefs_gateway.smb.security import (
    AUTHENTICATED_USERS,
    EVERYONE,
    ParsedDescriptor,
    pack_descriptor,
    parse_security_descriptor,
)
from claudefs_gateway.vfs import Lease, LeaseKey, LockOwner
from claudefs_gateway.vfs.leases import H, R, W
from tests.smb.client import PASSWORD, Conn, Wire, parse_names

FILE = c.SMB2_0_INFO_FILE
FS = c.SMB2_0_INFO_FILESYSTEM
SEC = c.SMB2_0_INFO_SECURITY
SHARE_ALL = c.FILE_SHARE_READ | c.FILE_SHARE_WRITE | c.FILE_SHARE_DELETE


def conn_for(wire: Wire | None = None, user: str = "alice", **kw: object) -> Conn:
    return (wire or Wire()).connect().setup(user, **kw)  # type: ignore[arg-type]


def rename_info(name: str, replace: bool = False) -> bytes:
    raw = name.encode("utf-16-le")
    return struct.pack("<B7sQI", replace, b"", 0, len(raw)) + raw


class CreateTests(SynchronousTestCase):
    def test_dispositions(self) -> None:
        """Each CreateDisposition on a missing and on an existing file (MS-SMB2 2.2.13)."""
        conn = conn_for()
        missing = {
            c.FILE_OPEN: st.STATUS_OBJECT_NAME_NOT_FOUND,
            c.FILE_OVERWRITE: st.STATUS_OBJECT_NAME_NOT_FOUND,
            c.FILE_CREATE: 0,
            c.FILE_OPEN_IF: 0,
            c.FILE_OVERWRITE_IF: 0,
            c.FILE_SUPERSEDE: 0,
        }
        for disp, want in missing.items():
            r = conn.create(f"new{disp}", disposition=disp)
            self.assertEqual(r.status, want, disp)
            if want == 0:
                self.assertEqual(r.u32(4), c.FILE_CREATED, disp)
                conn.close(r.file_id())
        existing = {
            c.FILE_OPEN: (0, c.FILE_OPENED),
            c.FILE_CREATE: (st.STATUS_OBJECT_NAME_COLLISION, None),
            c.FILE_OPEN_IF: (0, c.FILE_OPENED),
            c.FILE_OVERWRITE: (0, c.FILE_OVERWRITTEN),
            c.FILE_OVERWRITE_IF: (0, c.FILE_OVERWRITTEN),
            c.FILE_SUPERSEDE: (0, c.FILE_SUPERSEDED),
        }
        for disp, (want, action) in existing.items():
            fid = conn.open("exists")
            conn.write(fid, 0, b"data")
            conn.close(fid)
            r = conn.create("exists", disposition=disp)
            self.assertEqual(r.status, want, disp)
            if want == 0:
                self.assertEqual(r.u32(4), action, disp)
                size = r.u64(48)
                self.assertEqual(size, 4 if action == c.FILE_OPENED else 0, disp)
                conn.close(r.file_id())

    def test_directory_options(self) -> None:
        conn = conn_for()
        r = conn.create("d", options=c.FILE_DIRECTORY_FILE, disposition=c.FILE_CREATE)
        self.assertEqual((r.status, r.u32(56) & c.FILE_ATTRIBUTE_DIRECTORY), (0, 0x10))
        self.assertEqual(
            conn.create("d", options=c.FILE_NON_DIRECTORY_FILE).status,
            st.STATUS_FILE_IS_A_DIRECTORY,
        )
        conn.open("f")
        self.assertEqual(
            conn.create("f", options=c.FILE_DIRECTORY_FILE).status, st.STATUS_NOT_A_DIRECTORY
        )
        self.assertEqual(
            conn.create("x", options=c.FILE_DIRECTORY_FILE | c.FILE_NON_DIRECTORY_FILE).status,
            st.STATUS_INVALID_PARAMETER,
        )
        self.assertEqual(
            conn.create("d", disposition=c.FILE_OVERWRITE_IF).status, st.STATUS_INVALID_PARAMETER
        )

    def test_paths(self) -> None:
        conn = conn_for()
        conn.open("a", options=c.FILE_DIRECTORY_FILE)
        self.assertEqual(conn.create("a\\b\\c").status, st.STATUS_OBJECT_PATH_NOT_FOUND)
        self.assertEqual(conn.create("\\lead").status, st.STATUS_INVALID_PARAMETER)
        for bad in ("x*", "x:stream:$BAD", "a:s\\x", "x:", "x:a/b", "a\\\\b"):
            self.assertEqual(conn.create(bad).status, st.STATUS_OBJECT_NAME_INVALID, bad)
        for bad in ("a\\..\\x", ".", "..\\..\\.."):
            self.assertEqual(conn.create(bad).status, st.STATUS_OBJECT_PATH_SYNTAX_BAD, bad)
        self.assertEqual(conn.create("a\\f.txt::$DATA").status, 0)
        self.assertEqual(conn.create("x" * 256).status, st.STATUS_OBJECT_NAME_INVALID)
        self.assertEqual(conn.create("ünïcödé").status, 0)

    def test_contexts(self) -> None:
        """
        MxAc and QFid are answered; a durable request without a batch oplock and
        a lease context without the LEASE level get nothing; TWrp (no snapshots)
        and a DHnC of no durable open are OBJECT_NAME_NOT_FOUND.
        """
        wire = Wire()
        conn = conn_for(wire)
        r = conn.create(
            "ctx",
            contexts=[
                (b"MxAc", b""),
                (b"QFid", b""),
                (b"DHnQ", b"\x00" * 16),
                (b"RqLs", b"\x00" * 32),
                (b"Unkn", b"x"),
            ],
        )
        self.assertEqual(r.status, 0)
        off, n = r.u32(80), r.u32(84)
        blob = r.raw[off : off + n]
        names = []
        pos = 0
        while True:
            nxt, noff, nlen, _, doff, dlen = struct.unpack_from("<IHHHHI", blob, pos)
            names.append(blob[pos + noff : pos + noff + nlen])
            data = blob[pos + doff : pos + doff + dlen]
            if names[-1] == b"MxAc":
                self.assertEqual(struct.unpack("<II", data)[0], 0)
                self.assertTrue(struct.unpack("<II", data)[1] & c.FILE_WRITE_DATA)
            if names[-1] == b"QFid":
                ino = wire.fired(wire.mvfs.vfs.resolve(wire.mvfs.caller(0, 0), b"ctx")).ino
                self.assertEqual(struct.unpack_from("<Q", data)[0], ino)
            if not nxt:
                break
            pos += nxt
        self.assertEqual(names, [b"MxAc", b"QFid"])
        self.assertEqual(r.body[2], 0)  # no oplock granted
        self.assertEqual(
            conn.create("ctx", contexts=[(b"TWrp", b"\x00" * 8)]).status,
            st.STATUS_OBJECT_NAME_NOT_FOUND,
        )
        for tag in (b"x", b"xxx"):
            r = conn.create("ctx", contexts=[(tag, b"")])
            self.assertEqual(r.status, st.STATUS_INVALID_PARAMETER, tag)
        self.assertEqual(conn.create("ctx", contexts=[(b"xxxxx", b"")]).status, 0)
        self.assertEqual(
            conn.create("ctx", contexts=[(b"DHnC", b"\x00" * 16)]).status,
            st.STATUS_OBJECT_NAME_NOT_FOUND,
        )
        self.assertEqual(
            conn.create("ctx", contexts=[(b"MxAc", b"x")]).status, st.STATUS_INVALID_PARAMETER
        )

    def test_ea_context(self) -> None:
        wire = Wire()
        conn = conn_for(wire)
        ea = struct.pack("<IBBH", 0, 0, 4, 3) + b"NOTE\x00abc"
        self.assertEqual(conn.create("eaf", contexts=[(b"ExtA", ea)]).status, 0)
        root = wire.mvfs.caller(0, 0)
        ino = wire.fired(wire.mvfs.vfs.resolve(root, b"eaf")).ino
        self.assertEqual(wire.fired(wire.mvfs.vfs.getxattr(root, ino, b"user.NOTE")), b"abc")

    def test_access_checks(self) -> None:
        """Permissions are the vfs's: bob cannot write alice's 0644 file; nobody writes a read-only share."""
        wire = Wire()
        alice = conn_for(wire)
        fid = alice.open("mine")
        alice.write(fid, 0, b"x")
        alice.close(fid)
        bob = conn_for(wire, "bob")
        self.assertEqual(bob.create("mine", access=c.GENERIC_WRITE).status, st.STATUS_ACCESS_DENIED)
        self.assertEqual(bob.create("mine", access=c.GENERIC_READ).status, 0)
        r = bob.create("mine", access=c.MAXIMUM_ALLOWED, contexts=[(b"MxAc", b"")])
        self.assertEqual(r.status, 0)
        ro = conn_for(wire, "root", share="ro")
        self.assertEqual(
            ro.create("new", disposition=c.FILE_CREATE).status, st.STATUS_MEDIA_WRITE_PROTECTED
        )
        self.assertEqual(ro.create("", access=c.GENERIC_WRITE).status, st.STATUS_ACCESS_DENIED)

    def test_new_files_belong_to_the_user(self) -> None:
        """A file created over SMB is owned by the logged-on user's uid, mode 0644 (dirs 0755)."""
        wire = Wire()
        conn = conn_for(wire)
        conn.open("owned")
        conn.open("dir", options=c.FILE_DIRECTORY_FILE)
        root = wire.mvfs.caller(0, 0)
        a = wire.fired(wire.mvfs.vfs.resolve(root, b"owned"))
        self.assertEqual((a.uid, a.gid, a.mode), (1000, 1000, 0o644))
        self.assertEqual(wire.fired(wire.mvfs.vfs.resolve(root, b"dir")).mode, 0o755)

    def test_delete_on_close(self) -> None:
        wire = Wire()
        conn = conn_for(wire)
        fid = conn.open("tmp", options=c.FILE_DELETE_ON_CLOSE)
        other = conn.open("tmp")
        conn.close(fid)
        self.assertEqual(
            conn.create("tmp", disposition=c.FILE_OPEN).status, st.STATUS_DELETE_PENDING
        )
        conn.close(other)
        self.assertEqual(
            conn.create("tmp", disposition=c.FILE_OPEN).status, st.STATUS_OBJECT_NAME_NOT_FOUND
        )
        self.assertEqual(
            conn.create("x", access=c.GENERIC_READ, options=c.FILE_DELETE_ON_CLOSE).status,
            st.STATUS_INVALID_PARAMETER,
        )

    def test_write_through(self) -> None:
        """FILE_WRITE_THROUGH makes writes stable."""
        wire = Wire()
        calls: list[bool] = []
        real = wire.mvfs.backend.write

        def write(ino: int, offset: int, data: bytes, stable: bool) -> object:
            calls.append(stable)
            return real(ino, offset, data, stable)

        self.patch(wire.mvfs.backend, "write", write)
        conn = conn_for(wire)
        conn.write(conn.open("wt", options=c.FILE_WRITE_THROUGH), 0, b"a")
        conn.write(conn.open("plain"), 0, b"a")
        self.assertEqual(calls, [True, False])

    def test_open_share_root(self) -> None:
        conn = conn_for()
        r = conn.create("", access=c.GENERIC_READ)
        self.assertEqual(r.status, 0)
        self.assertTrue(r.u32(56) & c.FILE_ATTRIBUTE_DIRECTORY)


class DataTests(SynchronousTestCase):
    def test_large_io(self) -> None:
        """8 MiB writes and reads with multi-credit requests, byte for byte."""
        conn = conn_for()
        conn.call(c.Command.ECHO, b"\x04\x00\x00\x00", credits=300)
        fid = conn.open("big")
        data = bytes(range(256)) * (8 * 4096)
        self.assertEqual(conn.write(fid, 0, data).status, 0)
        r = conn.read(fid, 0, len(data))
        self.assertEqual((r.status, conn.read_data(r) == data), (0, True))
        self.assertEqual(conn.read(fid, len(data), 10).status, st.STATUS_END_OF_FILE)
        r = conn.read(fid, len(data) - 3, 100, minimum=10)
        self.assertEqual(r.status, st.STATUS_END_OF_FILE)
        self.assertEqual(conn.flush(fid).status, 0)

    def test_append_only(self) -> None:
        conn = conn_for()
        fid = conn.open("log")
        conn.write(fid, 0, b"one")
        app = conn.open("log", access=c.FILE_APPEND_DATA | c.SYNCHRONIZE)
        conn.write(app, 0, b"two")
        self.assertEqual(conn.read_data(conn.read(fid, 0, 10)), b"onetwo")
        self.assertEqual(conn.read(app, 0, 1).status, st.STATUS_ACCESS_DENIED)

    def test_read_needs_access(self) -> None:
        conn = conn_for()
        fid = conn.open("f", access=c.FILE_READ_ATTRIBUTES)
        self.assertEqual(conn.read(fid, 0, 1).status, st.STATUS_ACCESS_DENIED)
        self.assertEqual(conn.write(fid, 0, b"x").status, st.STATUS_ACCESS_DENIED)
        d = conn.open("", access=c.GENERIC_READ)
        self.assertEqual(conn.read(d, 0, 1).status, st.STATUS_INVALID_DEVICE_REQUEST)

    def test_closed_handle(self) -> None:
        conn = conn_for()
        fid = conn.open("f")
        conn.close(fid)
        self.assertEqual(conn.read(fid, 0, 1).status, st.STATUS_FILE_CLOSED)
        self.assertEqual(conn.close(fid).status, st.STATUS_FILE_CLOSED)
        other = conn_for(conn.wire)
        fid = conn.open("g")
        self.assertEqual(other.read(fid, 0, 1).status, st.STATUS_FILE_CLOSED)

    def test_read_advances_position(self) -> None:
        """A READ leaves FilePositionInformation after the bytes it returned."""
        conn = conn_for()
        fid = conn.open("pos")
        conn.write(fid, 0, b"0123456789")
        self.assertEqual(conn.query_info(fid, FILE, 14).buffer(), struct.pack("<Q", 0))
        self.assertEqual(conn.read_data(conn.read(fid, 2, 5)), b"23456")
        self.assertEqual(conn.query_info(fid, FILE, 14).buffer(), struct.pack("<Q", 7))
        conn.read(fid, 8, 100)
        self.assertEqual(conn.query_info(fid, FILE, 14).buffer(), struct.pack("<Q", 10))

    def test_largest_file(self) -> None:
        """
        Writes at or past NTFS's largest file (16 TiB - 64 KiB) are refused,
        and one reaching it is DISK_FULL; the sparse file stays empty.
        """
        conn = conn_for()
        fid = conn.open("huge")
        top = 0xFFFFFFF0000
        self.assertEqual(conn.write(fid, top, b"x").status, st.STATUS_INVALID_PARAMETER)
        self.assertEqual(conn.write(fid, 16 << 40, b"x").status, st.STATUS_INVALID_PARAMETER)
        self.assertEqual(conn.write(fid, top - 1, b"x").status, st.STATUS_DISK_FULL)
        self.assertEqual(struct.unpack_from("<q", conn.query_info(fid, FILE, 5).buffer(), 8)[0], 0)
        self.assertEqual(conn.write(fid, top - 2, b"x").status, 0)

    def test_close_post_query(self) -> None:
        conn = conn_for()
        fid = conn.open("pq")
        conn.write(fid, 0, b"12345")
        r = conn.close(fid, flags=1)
        self.assertEqual((r.u16(2), r.u64(48)), (1, 5))


class DirectoryTests(SynchronousTestCase):
    def populate(self, conn: Conn, n: int) -> tuple[int, int]:
        conn.open("dir", options=c.FILE_DIRECTORY_FILE)
        for i in range(n):
            conn.close(conn.open(f"dir\\file{i:03}.txt"))
        conn.close(conn.open("dir\\notes.md"))
        return conn.open("dir", options=c.FILE_DIRECTORY_FILE, access=c.GENERIC_READ)

    def test_every_class(self) -> None:
        conn = conn_for()
        d = self.populate(conn, 3)
        for cls in (1, 2, 3, 12, 37, 38):
            names = conn.list(d, info_class=cls)
            self.assertEqual(
                sorted(names),
                [".", "..", "file000.txt", "file001.txt", "file002.txt", "notes.md"],
                cls,
            )
        self.assertEqual(conn.query_directory(d, info_class=4).status, st.STATUS_INVALID_INFO_CLASS)

    def test_wildcards_and_exact(self) -> None:
        conn = conn_for()
        d = self.populate(conn, 3)
        self.assertEqual(
            sorted(conn.list(d, "*.TXT")), ["file000.txt", "file001.txt", "file002.txt"]
        )
        self.assertEqual(conn.list(d, "notes.md"), ["notes.md"])
        self.assertEqual(conn.list(d, "file00?.txt"), ["file000.txt", "file001.txt", "file002.txt"])
        r = conn.query_directory(d, "nothing*", flags=c.SMB2_RESTART_SCANS)
        self.assertEqual(r.status, st.STATUS_NO_SUCH_FILE)
        r = conn.query_directory(d, "absent.txt", flags=c.SMB2_RESTART_SCANS)
        self.assertEqual(r.status, st.STATUS_NO_SUCH_FILE)

    def test_resume_and_single_entry(self) -> None:
        """Small buffers resume where they stopped; SINGLE_ENTRY gives one; then NO_MORE_FILES."""
        conn = conn_for()
        d = self.populate(conn, 300)
        seen: list[str] = []
        flags = c.SMB2_RESTART_SCANS
        while True:
            r = conn.query_directory(d, "*", info_class=37, flags=flags, length=1024)
            flags = 0
            if r.status:
                self.assertEqual(r.status, st.STATUS_NO_MORE_FILES)
                break
            seen += parse_names(r.buffer())
        self.assertEqual(len(seen), 303)
        self.assertEqual(len(set(seen)), 303)
        r = conn.query_directory(d, "*", flags=c.SMB2_RESTART_SCANS | c.SMB2_RETURN_SINGLE_ENTRY)
        self.assertEqual(parse_names(r.buffer()), ["."])
        self.assertEqual(
            conn.query_directory(d, "*", length=10).status, st.STATUS_INFO_LENGTH_MISMATCH
        )
        fid = conn.open("dir\\file000.txt")
        self.assertEqual(conn.query_directory(fid).status, st.STATUS_INVALID_PARAMETER)

    def test_attributes_in_listing(self) -> None:
        """Listed sizes and DOS attributes are the files' (hidden dot-files included)."""
        conn = conn_for()
        conn.open("dir", options=c.FILE_DIRECTORY_FILE)
        fid = conn.open("dir\\.hidden")
        conn.write(fid, 0, b"12345")
        d = conn.open("dir", access=c.GENERIC_READ)
        r = conn.query_directory(d, ".hidden")
        buf = r.buffer()
        eof, attrs_ = struct.unpack_from("<qxxxxxxxxI", buf, 40)
        self.assertEqual(eof, 5)
        self.assertEqual(attrs_, c.FILE_ATTRIBUTE_ARCHIVE | c.FILE_ATTRIBUTE_HIDDEN)


class InfoTests(SynchronousTestCase):
    def test_file_classes(self) -> None:
        conn = conn_for()
        fid = conn.open("dir\\", options=c.FILE_DIRECTORY_FILE)
        fid = conn.open("dir\\info.txt")
        conn.write(fid, 0, b"x" * 5000)
        sizes = {4: 40, 5: 24, 6: 8, 7: 4, 8: 4, 14: 8, 16: 4, 17: 4, 34: 56, 35: 8}
        for cls, n in sizes.items():
            r = conn.query_info(fid, FILE, cls)
            self.assertEqual((r.status, len(r.buffer())), (0, n), cls)
        r = conn.query_info(fid, FILE, F.FileAllInformation)
        buf = r.buffer()
        self.assertEqual(struct.unpack_from("<q", buf, 48)[0], 5000)
        name_len = struct.unpack_from("<I", buf, 96)[0]
        self.assertEqual(buf[100 : 100 + name_len].decode("utf-16-le"), "\\dir\\info.txt")
        self.assertIn(
            "::$DATA".encode("utf-16-le"),
            conn.query_info(fid, FILE, F.FileStreamInformation).buffer(),
        )
        self.assertEqual(conn.query_info(fid, FILE, 99).status, st.STATUS_INVALID_INFO_CLASS)
        r = conn.query_info(fid, FILE, F.FileAllInformation, length=110)
        self.assertEqual((r.status, len(r.buffer())), (st.STATUS_BUFFER_OVERFLOW, 110))
        r = conn.query_info(fid, FILE, F.FileAllInformation, length=103)
        self.assertEqual(r.status, st.STATUS_INFO_LENGTH_MISMATCH)
        self.assertEqual(
            conn.query_info(fid, FILE, F.FileBasicInformation, length=10).status,
            st.STATUS_INFO_LENGTH_MISMATCH,
        )

    def test_fs_classes(self) -> None:
        conn = conn_for()
        d = conn.open("", access=c.GENERIC_READ)
        for cls in (1, 3, 4, 5, 6, 7, 8, 11):
            self.assertEqual(conn.query_info(d, FS, cls).status, 0, cls)
        self.assertEqual(conn.query_info(d, FS, 2).status, st.STATUS_INVALID_INFO_CLASS)
        r = conn.query_info(d, FS, 1, length=26)
        self.assertEqual((r.status, len(r.buffer())), (st.STATUS_BUFFER_OVERFLOW, 26))
        self.assertEqual(
            conn.query_info(d, FS, 1, length=23).status, st.STATUS_INFO_LENGTH_MISMATCH
        )

    def test_security_descriptor(self) -> None:
        from impacket.ldap import ldaptypes

        conn = conn_for()
        fid = conn.open("sd", access=c.GENERIC_ALL)
        r = conn.query_info(fid, SEC, 0, additional=7)
        sd = ldaptypes.SR_SECURITY_DESCRIPTOR(data=r.buffer())
        self.assertEqual(sd["OwnerSid"].formatCanonical(), "S-1-5-21-1-2-3-3000")
        self.assertEqual(len(sd["Dacl"].aces), 3)
        r = conn.query_info(fid, SEC, 0, additional=7, length=8)
        self.assertEqual((r.status, r.u32(4)), (st.STATUS_BUFFER_TOO_SMALL, 4))
        # Set it back with the group's and others' rights removed: mode 0600.
        owner = sd["OwnerSid"]
        dacl = ldaptypes.ACL()
        dacl["AclRevision"] = 2
        dacl["Sbz1"] = 0
        dacl["Sbz2"] = 0
        ace = ldaptypes.ACE()
        ace["AceType"] = 0
        ace["AceFlags"] = 0
        body = ldaptypes.ACCESS_ALLOWED_ACE()
        body["Mask"] = ldaptypes.ACCESS_MASK()
        body["Mask"]["Mask"] = c.FILE_GENERIC_READ | c.FILE_GENERIC_WRITE
        body["Sid"] = owner
        ace["Ace"] = body
        dacl.aces = [ace]
        new = ldaptypes.SR_SECURITY_DESCRIPTOR()
        new["Revision"] = b"\x01"
        new["Sbz1"] = b"\x00"
        new["Control"] = 0x8004
        new["OwnerSid"] = b""
        new["GroupSid"] = b""
        new["Sacl"] = b""
        new["Dacl"] = dacl
        self.assertEqual(conn.set_info(fid, SEC, 0, new.getData(), additional=4).status, 0)
        wire = conn.wire
        a = wire.fired(wire.mvfs.vfs.resolve(wire.mvfs.caller(0, 0), b"sd"))
        self.assertEqual(a.mode, 0o600)

    def test_descriptor_kept_beside_the_mode(self) -> None:
        """
        A DACL with an ACE mode bits cannot hold is kept and shown as set; the
        mode follows the owner's, group's and Everyone's ACEs (what NFS checks);
        a chmod through another protocol makes the kept one stale.
        """
        wire = Wire()
        conn = conn_for(wire)
        fid = conn.open("acl", access=c.GENERIC_ALL)
        sd = parse_security_descriptor(conn.query_info(fid, SEC, 0, additional=7).buffer())
        assert sd.dacl is not None and sd.owner is not None
        owner_ace = (0, 0, c.FILE_GENERIC_READ | c.FILE_GENERIC_WRITE, sd.owner)
        extra = (0, 0, c.FILE_ALL_ACCESS, AUTHENTICATED_USERS)
        new = ParsedDescriptor(sd.owner, sd.group, (owner_ace, extra), True, 0x8004)
        raw = pack_descriptor(new, 4)
        self.assertEqual(conn.set_info(fid, SEC, 0, raw, additional=4).status, 0)
        got = parse_security_descriptor(conn.query_info(fid, SEC, 0, additional=7).buffer())
        self.assertEqual(got.dacl, (owner_ace, extra))
        self.assertEqual((got.owner, got.group), (sd.owner, sd.group))
        vfs, root = wire.mvfs.vfs, wire.mvfs.caller(0, 0)
        a = wire.fired(vfs.resolve(root, b"acl"))
        self.assertEqual(a.mode & 0o777, 0o600)
        wire.fired(vfs.setattr(root, a.ino, SetAttrs(mode=0o640)))
        got = parse_security_descriptor(conn.query_info(fid, SEC, 0, additional=7).buffer())
        assert got.dacl is not None
        self.assertEqual(len(got.dacl), 3)
        self.assertNotIn(AUTHENTICATED_USERS, [ace[3] for ace in got.dacl])

    def test_null_and_empty_dacl(self) -> None:
        """
        A NULL DACL (DACL_SECURITY_INFORMATION without SE_DACL_PRESENT) lets
        everyone in (mode 0777); an empty one lets no one but the owner read
        and change the descriptor (mode 0).
        """
        wire = Wire()
        conn = conn_for(wire)
        fid = conn.open("null", access=c.GENERIC_ALL)
        nothing = pack_descriptor(ParsedDescriptor(None, None, None, False, 0x8000), 4)
        self.assertEqual(conn.set_info(fid, SEC, 0, nothing, additional=4).status, 0)
        got = parse_security_descriptor(conn.query_info(fid, SEC, 0, additional=7).buffer())
        self.assertEqual((got.dacl_present, got.dacl), (True, None))
        a = wire.fired(wire.mvfs.vfs.resolve(wire.mvfs.caller(0, 0), b"null"))
        self.assertEqual(a.mode & 0o777, 0o777)
        self.assertEqual(conn_for(wire, "bob").create("null", access=c.FILE_WRITE_DATA).status, 0)
        empty = pack_descriptor(ParsedDescriptor(None, None, (), True, 0x8004), 4)
        self.assertEqual(conn.set_info(fid, SEC, 0, empty, additional=4).status, 0)
        got = parse_security_descriptor(conn.query_info(fid, SEC, 0, additional=7).buffer())
        self.assertEqual((got.dacl_present, got.dacl), (True, ()))
        self.assertEqual(conn.create("null", access=c.READ_CONTROL).status, 0)
        self.assertEqual(
            conn.create("null", access=c.FILE_READ_DATA).status, st.STATUS_ACCESS_DENIED
        )

    def test_deny_ace_narrows_smb_access(self) -> None:
        """
        A deny ACE for a user the mode lets in keeps that user out over SMB
        (the DACL narrows what the mode grants, never widens it).
        """
        wire = Wire()
        conn = conn_for(wire)
        fid = conn.open("deny", access=c.GENERIC_ALL)
        sd = parse_security_descriptor(conn.query_info(fid, SEC, 0, additional=7).buffer())
        assert sd.dacl is not None
        bob = conn_for(wire, "bob")
        bob_sid = wire.factory.idmap.uid_sid(1001)
        everyone_rw = (0, 0, c.FILE_GENERIC_READ | c.FILE_GENERIC_WRITE, EVERYONE)
        deny = (1, 0, c.FILE_WRITE_DATA, bob_sid)
        dacl = (deny, *sd.dacl[:2], everyone_rw)
        raw = pack_descriptor(ParsedDescriptor(None, None, dacl, True, 0x8004), 4)
        self.assertEqual(conn.set_info(fid, SEC, 0, raw, additional=4).status, 0)
        self.assertEqual(bob.create("deny", access=c.FILE_READ_DATA).status, 0)
        self.assertEqual(
            bob.create("deny", access=c.FILE_WRITE_DATA).status, st.STATUS_ACCESS_DENIED
        )
        self.assertEqual(conn.create("deny", access=c.FILE_WRITE_DATA).status, 0)

    def test_descriptor_at_create(self) -> None:
        """A CREATE's SD context without a DACL leaves the default; one with a DACL keeps it."""
        conn = conn_for()
        nothing = pack_descriptor(ParsedDescriptor(None, None, None, False, 0x8000), 7)
        conn.close(conn.open("plain", contexts=[(b"SecD", nothing)]))
        fid = conn.open("plain")
        got = parse_security_descriptor(conn.query_info(fid, SEC, 0, additional=7).buffer())
        assert got.dacl is not None
        self.assertEqual(len(got.dacl), 3)
        dacl = (
            (0, 0, c.FILE_ALL_ACCESS, EVERYONE),
            (0, 3, c.FILE_GENERIC_READ, AUTHENTICATED_USERS),
        )
        sd = pack_descriptor(ParsedDescriptor(EVERYONE, None, dacl, True, 0x8004), 7)
        fid = conn.open("given", contexts=[(b"SecD", sd)])
        got = parse_security_descriptor(conn.query_info(fid, SEC, 0, additional=7).buffer())
        self.assertEqual((got.owner, got.dacl), (EVERYONE, dacl))

    def test_eas(self) -> None:
        conn = conn_for()
        fid = conn.open("ea", access=c.GENERIC_ALL)
        self.assertEqual(
            conn.query_info(fid, FILE, F.FileFullEaInformation).status, st.STATUS_NO_EAS_ON_FILE
        )
        ea = struct.pack("<IBBH", 0, 0, 5, 2) + b"COLOR\x00hi"
        self.assertEqual(conn.set_info(fid, FILE, F.FileFullEaInformation, ea).status, 0)
        r = conn.query_info(fid, FILE, F.FileFullEaInformation)
        self.assertIn(b"COLOR\x00hi", r.buffer())
        self.assertGreater(
            struct.unpack("<I", conn.query_info(fid, FILE, F.FileEaInformation).buffer())[0], 0
        )
        self.assertEqual(
            conn.set_info(fid, FILE, F.FileFullEaInformation, b"\x01").status,
            st.STATUS_INVALID_PARAMETER,
        )


class SetInfoTests(SynchronousTestCase):
    def test_basic_round_trip(self) -> None:
        """Creation time and DOS attributes set over SMB read back, and are kept beside the inode."""
        wire = Wire()
        conn = conn_for(wire)
        fid = conn.open("b", access=c.GENERIC_ALL)
        created = to_filetime(1_500_000_000 * 10**9)
        written = to_filetime(1_600_000_000 * 10**9)
        attrs_ = c.FILE_ATTRIBUTE_HIDDEN | c.FILE_ATTRIBUTE_SYSTEM
        data = struct.pack("<qqqqII", created, 0, written, 0, attrs_, 0)
        self.assertEqual(conn.set_info(fid, FILE, F.FileBasicInformation, data).status, 0)
        got = struct.unpack("<QQQQII", conn.query_info(fid, FILE, F.FileBasicInformation).buffer())
        self.assertEqual((got[0], got[2], got[4]), (created, written, attrs_))
        root = wire.mvfs.caller(0, 0)
        a = wire.fired(wire.mvfs.vfs.resolve(root, b"b"))
        self.assertEqual(a.btime_ns, from_filetime(created))
        raw = wire.fired(wire.mvfs.vfs.meta_get(root, a.ino, DOS_KEY))
        self.assertEqual(struct.unpack("<I", raw)[0], attrs_)
        self.assertNotIn(b"cfs." + DOS_KEY, wire.fired(wire.mvfs.vfs.listxattr(root, a.ino)))
        bad = struct.pack("<qqqqII", 0, 0, 0, 0, c.FILE_ATTRIBUTE_DIRECTORY, 0)
        self.assertEqual(
            conn.set_info(fid, FILE, F.FileBasicInformation, bad).status,
            st.STATUS_INVALID_PARAMETER,
        )

    def test_change_time_kept(self) -> None:
        """
        A ChangeTime set through an open stands through changes made through
        that open, and gives way to the real one at a change made otherwise.
        """
        wire = Wire()
        conn = conn_for(wire)
        fid = conn.open("ct", access=c.GENERIC_ALL)
        when = to_filetime(1_400_000_000 * 10**9)

        def change_time() -> int:
            return struct.unpack_from("<q", conn.query_info(fid, FILE, 4).buffer(), 24)[0]

        data = struct.pack("<qqqqII", 0, 0, 0, when, c.FILE_ATTRIBUTE_NORMAL, 0)
        self.assertEqual(conn.set_info(fid, FILE, F.FileBasicInformation, data).status, 0)
        self.assertEqual(change_time(), when)
        conn.write(fid, 0, b"mine")
        hidden = struct.pack("<qqqqII", 0, 0, 0, 0, c.FILE_ATTRIBUTE_HIDDEN, 0)
        conn.set_info(fid, FILE, F.FileBasicInformation, hidden)
        self.assertEqual(change_time(), when)
        other = conn_for(wire)
        other.write(other.open("ct"), 0, b"theirs")
        self.assertGreater(change_time(), when)

    def test_times_beyond_the_store(self) -> None:
        """
        FILETIMEs past 2262 (or before 1677) are clamped to what a store
        holds (signed 64-bit nanoseconds), not refused; below -2 is refused.
        """
        wire = Wire()
        conn = conn_for(wire)
        fid = conn.open("far", access=c.GENERIC_ALL)
        seen: list[SetAttrs] = []
        real = wire.mvfs.vfs.setattr

        def setattr(caller: object, ino: int, changes: SetAttrs, **kw: object) -> object:
            seen.append(changes)
            return real(caller, ino, changes, **kw)  # type: ignore[arg-type]

        wire.mvfs.vfs.setattr = setattr  # type: ignore[method-assign]
        year_2446 = to_filetime(15032385535 * 10**9)
        data = struct.pack("<qqqqII", year_2446, 0, 0x7FFFFFFFFFFFFFFF, 0, 0, 0)
        self.assertEqual(conn.set_info(fid, FILE, F.FileBasicInformation, data).status, 0)
        self.assertEqual((seen[-1].btime, seen[-1].mtime), (2**63 - 1, 2**63 - 1))
        data = struct.pack("<qqqqII", 0, 1, 0, 0, 0, 0)  # 1601
        self.assertEqual(conn.set_info(fid, FILE, F.FileBasicInformation, data).status, 0)
        self.assertEqual(seen[-1].atime, -(2**63))
        data = struct.pack("<qqqqII", 0, 0, -3, 0, 0, 0)
        self.assertEqual(
            conn.set_info(fid, FILE, F.FileBasicInformation, data).status,
            st.STATUS_INVALID_PARAMETER,
        )

    def test_links_pending_deletion(self) -> None:
        """NumberOfLinks counts a name pending deletion out."""
        conn = conn_for()
        fid = conn.open("nl", access=c.GENERIC_ALL)

        def links() -> int:
            return struct.unpack_from("<I", conn.query_info(fid, FILE, 5).buffer(), 16)[0]

        self.assertEqual(links(), 1)
        conn.set_info(fid, FILE, F.FileDispositionInformation, b"\x01")
        self.assertEqual(links(), 0)
        conn.set_info(fid, FILE, F.FileDispositionInformation, b"\x00")
        self.assertEqual(links(), 1)

    def test_readonly_attribute(self) -> None:
        conn = conn_for()
        fid = conn.open("ro", access=c.GENERIC_ALL)
        conn.set_info(fid, FILE, F.FileBasicInformation, struct.pack("<qqqqII", 0, 0, 0, 0, 1, 0))
        conn.close(fid)
        self.assertEqual(conn.create("ro", access=c.GENERIC_WRITE).status, st.STATUS_ACCESS_DENIED)
        fid = conn.open("ro", access=c.GENERIC_READ | c.DELETE)
        self.assertEqual(
            conn.set_info(fid, FILE, F.FileDispositionInformation, b"\x01").status,
            st.STATUS_CANNOT_DELETE,
        )

    def test_rename(self) -> None:
        conn = conn_for()
        conn.close(conn.open("sub", options=c.FILE_DIRECTORY_FILE))
        fid = conn.open("old")
        conn.write(fid, 0, b"content")
        self.assertEqual(
            conn.set_info(fid, FILE, F.FileRenameInformation, rename_info("sub\\new")).status, 0
        )
        self.assertEqual(
            conn.create("old", disposition=c.FILE_OPEN).status, st.STATUS_OBJECT_NAME_NOT_FOUND
        )
        r = conn.query_info(fid, FILE, F.FileAllInformation)
        self.assertTrue(r.buffer()[100:].decode("utf-16-le").endswith("\\sub\\new"))
        conn.close(conn.open("other"))
        self.assertEqual(
            conn.set_info(fid, FILE, F.FileRenameInformation, rename_info("other")).status,
            st.STATUS_OBJECT_NAME_COLLISION,
        )
        self.assertEqual(
            conn.set_info(fid, FILE, F.FileRenameInformation, rename_info("\\other", True)).status,
            0,
        )
        self.assertEqual(conn.read_data(conn.read(conn.open("other"), 0, 10)), b"content")
        ro = conn.open("other", access=c.GENERIC_READ)
        self.assertEqual(
            conn.set_info(ro, FILE, F.FileRenameInformation, rename_info("x")).status,
            st.STATUS_ACCESS_DENIED,
        )

    def test_rename_into_directory_open_for_delete(self) -> None:
        """
        A rename into a directory another handle holds open with DELETE access
        fails with STATUS_SHARING_VIOLATION (Windows and Samba; smbtorture
        smb2.oplock.batch19); once that handle closes it succeeds.
        """
        conn = conn_for()
        d = conn.open("dir", options=c.FILE_DIRECTORY_FILE)
        fid = conn.open("dir\\a")
        r = conn.set_info(fid, FILE, F.FileRenameInformation, rename_info("dir\\b"))
        self.assertEqual(r.status, st.STATUS_SHARING_VIOLATION)
        conn.close(d)
        r = conn.set_info(fid, FILE, F.FileRenameInformation, rename_info("dir\\b"))
        self.assertEqual(r.status, 0)
        reader = conn.open("dir", options=c.FILE_DIRECTORY_FILE, access=c.GENERIC_READ)
        r = conn.set_info(fid, FILE, F.FileRenameInformation, rename_info("dir\\c"))
        self.assertEqual(r.status, 0)
        conn.close(reader)

    def test_disposition(self) -> None:
        conn = conn_for()
        fid = conn.open("gone")
        self.assertEqual(conn.set_info(fid, FILE, F.FileDispositionInformation, b"\x01").status, 0)
        r = conn.query_info(fid, FILE, F.FileStandardInformation)
        self.assertEqual(r.buffer()[20], 1)
        conn.close(fid)
        self.assertEqual(
            conn.create("gone", disposition=c.FILE_OPEN).status, st.STATUS_OBJECT_NAME_NOT_FOUND
        )
        d = conn.open("full", options=c.FILE_DIRECTORY_FILE)
        conn.close(conn.open("full\\x"))
        self.assertEqual(
            conn.set_info(d, FILE, F.FileDispositionInformation, b"\x01").status,
            st.STATUS_DIRECTORY_NOT_EMPTY,
        )
        ex = conn.open("ex")
        self.assertEqual(
            conn.set_info(ex, FILE, F.FileDispositionInformationEx, struct.pack("<I", 1)).status, 0
        )
        conn.close(ex)
        self.assertEqual(
            conn.create("ex", disposition=c.FILE_OPEN).status, st.STATUS_OBJECT_NAME_NOT_FOUND
        )

    def test_sizes(self) -> None:
        conn = conn_for()
        fid = conn.open("sz")
        self.assertEqual(
            conn.set_info(fid, FILE, F.FileEndOfFileInformation, struct.pack("<q", 100000)).status,
            0,
        )
        self.assertEqual(
            struct.unpack_from("<q", conn.query_info(fid, FILE, 5).buffer(), 8)[0], 100000
        )
        conn.set_info(fid, FILE, F.FileAllocationInformation, struct.pack("<q", 1 << 30))
        self.assertEqual(
            struct.unpack_from("<q", conn.query_info(fid, FILE, 5).buffer(), 8)[0], 100000
        )
        conn.set_info(fid, FILE, F.FileAllocationInformation, struct.pack("<q", 10))
        self.assertEqual(struct.unpack_from("<q", conn.query_info(fid, FILE, 5).buffer(), 8)[0], 10)
        self.assertEqual(
            conn.set_info(fid, FILE, F.FileEndOfFileInformation, b"\x01").status,
            st.STATUS_INFO_LENGTH_MISMATCH,
        )

    def test_position_and_mode(self) -> None:
        conn = conn_for()
        fid = conn.open("pm")
        conn.set_info(fid, FILE, F.FilePositionInformation, struct.pack("<q", 42))
        self.assertEqual(conn.query_info(fid, FILE, 14).buffer(), struct.pack("<Q", 42))
        conn.set_info(fid, FILE, F.FileModeInformation, struct.pack("<I", c.FILE_WRITE_THROUGH))
        self.assertEqual(
            conn.query_info(fid, FILE, 16).buffer(), struct.pack("<I", c.FILE_WRITE_THROUGH)
        )
        self.assertEqual(
            conn.set_info(fid, FILE, F.FileModeInformation, struct.pack("<I", 0x30)).status,
            st.STATUS_INVALID_PARAMETER,
        )

    def test_hard_link(self) -> None:
        conn = conn_for()
        fid = conn.open("orig")
        conn.write(fid, 0, b"same")
        self.assertEqual(
            conn.set_info(fid, FILE, F.FileLinkInformation, rename_info("alias")).status, 0
        )
        self.assertEqual(conn.read_data(conn.read(conn.open("alias"), 0, 10)), b"same")
        self.assertEqual(struct.unpack_from("<I", conn.query_info(fid, FILE, 5).buffer(), 16)[0], 2)


class LockTests(SynchronousTestCase):
    SH = c.SMB2_LOCKFLAG_SHARED_LOCK | c.SMB2_LOCKFLAG_FAIL_IMMEDIATELY
    EX = c.SMB2_LOCKFLAG_EXCLUSIVE_LOCK | c.SMB2_LOCKFLAG_FAIL_IMMEDIATELY

    def test_conflicts_and_io(self) -> None:
        """Byte-range locks conflict between opens, and READ/WRITE honour them (mandatory)."""
        wire = Wire()
        conn = conn_for(wire)
        a = conn.open("l")
        conn.write(a, 0, b"x" * 100)
        b = conn.open("l")
        self.assertEqual(conn.lock(a, [(0, 10, self.EX)]).status, 0)
        self.assertEqual(conn.lock(b, [(5, 10, self.SH)]).status, st.STATUS_LOCK_NOT_GRANTED)
        self.assertEqual(conn.read(b, 0, 5).status, st.STATUS_FILE_LOCK_CONFLICT)
        self.assertEqual(conn.write(b, 8, b"y").status, st.STATUS_FILE_LOCK_CONFLICT)
        self.assertEqual(conn.read(a, 0, 5).status, 0)
        self.assertEqual(conn.read(b, 20, 5).status, 0)
        self.assertEqual(conn.lock(a, [(0, 10, c.SMB2_LOCKFLAG_UNLOCK)]).status, 0)
        self.assertEqual(
            conn.lock(a, [(0, 10, c.SMB2_LOCKFLAG_UNLOCK)]).status, st.STATUS_RANGE_NOT_LOCKED
        )
        self.assertEqual(conn.lock(b, [(5, 10, self.SH)]).status, 0)

    def test_all_or_nothing(self) -> None:
        conn = conn_for()
        a, b = conn.open("l"), conn.open("l")
        conn.lock(b, [(50, 10, self.EX)])
        self.assertEqual(
            conn.lock(a, [(0, 10, self.EX), (55, 1, self.EX)]).status, st.STATUS_LOCK_NOT_GRANTED
        )
        self.assertEqual(conn.lock(b, [(0, 10, self.EX)]).status, 0)

    def test_validation(self) -> None:
        conn = conn_for()
        a = conn.open("l")
        self.assertEqual(
            conn.lock(a, [(0, 1, self.EX), (5, 1, c.SMB2_LOCKFLAG_UNLOCK)]).status,
            st.STATUS_INVALID_PARAMETER,
        )
        self.assertEqual(conn.lock(a, [(0, 1, 3)]).status, st.STATUS_INVALID_PARAMETER)
        self.assertEqual(conn.lock(a, [(2**64 - 2, 5, self.EX)]).status, 0xC00001A1)
        self.assertEqual(
            conn.lock(a, [(0, 1, 2), (2, 1, self.EX)]).status, st.STATUS_INVALID_PARAMETER
        )
        self.assertEqual(conn.lock(a, [(7, 0, self.EX)]).status, 0)
        self.assertEqual(conn.lock(a, [(7, 0, c.SMB2_LOCKFLAG_UNLOCK)]).status, 0)

    def test_blocking_then_granted(self) -> None:
        """A lock without FAIL_IMMEDIATELY waits (STATUS_PENDING) and is granted when the holder unlocks."""
        wire = Wire()
        c1, c2 = conn_for(wire), conn_for(wire, "bob")
        a = c1.open("w")
        c1.lock(a, [(0, 10, self.EX)])
        b = c2.open("w", access=c.GENERIC_READ)
        interim = c2.lock(b, [(0, 10, c.SMB2_LOCKFLAG_EXCLUSIVE_LOCK)])
        self.assertEqual(interim.status, st.STATUS_PENDING)
        c1.close(a)
        [final] = c2.replies()
        self.assertEqual((final.status, final.header.async_id), (0, interim.header.async_id))

    def test_blocking_cancelled(self) -> None:
        wire = Wire()
        c1, c2 = conn_for(wire), conn_for(wire)
        a = c1.open("w")
        c1.lock(a, [(0, 10, self.EX)])
        b = c2.open("w")
        interim = c2.lock(b, [(0, 10, c.SMB2_LOCKFLAG_SHARED_LOCK)])
        cancel = c2.header(
            c.Command.CANCEL,
            flags=c.SMB2_FLAGS_ASYNC_COMMAND,
            async_id=interim.header.async_id,
            message_id=0,
        )
        c2.send([c2.build(cancel, b"\x04\x00\x00\x00")])
        [final] = c2.replies()
        self.assertEqual(final.status, st.STATUS_CANCELLED)
        self.assertEqual(
            wire.locks.waiting(
                c1.wire.fired(wire.mvfs.vfs.resolve(wire.mvfs.caller(0, 0), b"w")).ino
            ),
            [],
        )

    def test_disconnect_releases(self) -> None:
        wire = Wire()
        c1, c2 = conn_for(wire), conn_for(wire)
        a = c1.open("w")
        c1.lock(a, [(0, 10, self.EX)])
        c1.proto.connectionLost(None)
        b = c2.open("w")
        self.assertEqual(c2.lock(b, [(0, 10, self.EX)]).status, 0)

    def test_other_protocols_locks(self) -> None:
        """An NLM lock on the same inode refuses SMB's lock and write; SMB's refuses NLM's."""
        wire = Wire()
        conn = conn_for(wire)
        fid = conn.open("shared.dat")
        conn.write(fid, 0, b"z" * 100)
        ino = wire.fired(wire.mvfs.vfs.resolve(wire.mvfs.caller(0, 0), b"shared.dat")).ino
        nlm = LockOwner("nlm", "client.example", b"svid1")
        wire.fired(wire.locks.lock(ino, nlm, 0, 50, True))
        self.assertEqual(conn.lock(fid, [(10, 5, self.SH)]).status, st.STATUS_LOCK_NOT_GRANTED)
        self.assertEqual(conn.write(fid, 10, b"w").status, st.STATUS_FILE_LOCK_CONFLICT)
        wire.locks.unlock(ino, nlm, 0, 50)
        self.assertEqual(conn.lock(fid, [(60, 10, self.EX)]).status, 0)
        d = wire.locks.lock(ino, nlm, 60, 1, False)
        self.assertEqual(len(self.failureResultOf(d).value.args), 1)


class ShareModeTests(SynchronousTestCase):
    def test_sharing_violation(self) -> None:
        """An open denying writes refuses a writer; closing it lets the writer in."""
        conn = conn_for()
        a = conn.open("s", share=c.FILE_SHARE_READ)
        self.assertEqual(
            conn.create("s", access=c.GENERIC_WRITE).status, st.STATUS_SHARING_VIOLATION
        )
        self.assertEqual(
            conn.create("s", access=c.GENERIC_READ, share=c.FILE_SHARE_READ).status,
            st.STATUS_SHARING_VIOLATION,
        )
        self.assertEqual(conn.create("s", access=c.GENERIC_READ).status, 0)
        r = conn.create("s", access=c.FILE_READ_ATTRIBUTES)
        self.assertEqual(r.status, 0)
        conn.close(a)
        self.assertEqual(conn.create("s", access=c.GENERIC_WRITE).status, 0)

    def test_delete_sharing(self) -> None:
        conn = conn_for()
        conn.open("d", share=c.FILE_SHARE_READ | c.FILE_SHARE_WRITE)
        self.assertEqual(conn.create("d", access=c.DELETE).status, st.STATUS_SHARING_VIOLATION)

    def test_other_protocol_reservation(self) -> None:
        """An NFSv4-style reservation denying writes refuses an SMB writer."""
        wire = Wire()
        conn = conn_for(wire)
        conn.close(conn.open("n"))
        ino = wire.fired(wire.mvfs.vfs.resolve(wire.mvfs.caller(0, 0), b"n")).ino
        token = wire.locks.open_share(ino, LockOwner("nfs4", b"c1", b"o1"), {"read"}, {"write"})
        self.assertEqual(
            conn.create("n", access=c.GENERIC_WRITE).status, st.STATUS_SHARING_VIOLATION
        )
        wire.locks.close_share(token)
        self.assertEqual(conn.create("n", access=c.GENERIC_WRITE).status, 0)


def notify_changes(buf: bytes) -> list[tuple[int, str]]:
    got = []
    pos = 0
    while True:
        nxt, action, n = struct.unpack_from("<III", buf, pos)
        got.append((action, buf[pos + 12 : pos + 12 + n].decode("utf-16-le")))
        if not nxt:
            return got
        pos += nxt


class NotifyTests(SynchronousTestCase):
    def test_actions(self) -> None:
        """A waiting request is answered at the first change; later ones queue for the next, in order."""
        wire = Wire()
        conn = conn_for(wire)
        d = conn.open("", access=c.GENERIC_READ)
        self.assertEqual(conn.notify(d).status, st.STATUS_PENDING)
        other = conn_for(wire)
        fid = other.open("n1")
        [first] = conn.replies()
        self.assertEqual(notify_changes(first.buffer()), [(1, "n1")])
        other.set_info(fid, FILE, F.FileRenameInformation, rename_info("n2"))
        other.write(fid, 0, b"data")
        other.set_info(fid, FILE, F.FileDispositionInformation, b"\x01")
        other.close(fid)
        r = conn.notify(d)
        self.assertEqual(notify_changes(r.buffer()), [(4, "n1"), (5, "n2"), (3, "n2"), (2, "n2")])

    def pending(self, conn: Conn, name: str = "", **kw: object) -> tuple[int, int]:
        d = conn.open(name, access=c.GENERIC_READ, options=c.FILE_DIRECTORY_FILE, **kw)  # type: ignore[arg-type]
        self.assertEqual(conn.notify(d).status, st.STATUS_PENDING)
        return d

    def test_logoff_answers_pending(self) -> None:
        """A LOGOFF answers the session's waiting requests with NOTIFY_CLEANUP."""
        conn = conn_for()
        self.pending(conn)
        conn.send([conn.build(conn.header(c.Command.LOGOFF), b"\x04\x00\x00\x00")])
        self.assertEqual(sorted(r.status for r in conn.replies()), [0, st.STATUS_NOTIFY_CLEANUP])

    def test_previous_session_answers_pending(self) -> None:
        """A new session naming the old as PreviousSessionId answers the old one's waiting requests."""
        wire = Wire()
        conn = conn_for(wire)
        self.pending(conn)
        b = wire.connect()
        b.negotiate()
        ctx = spnego.client("alice", PASSWORD, protocol="negotiate")
        token = ctx.step(None)
        while True:
            body = struct.pack("<HBBIIHHQ", 25, 0, 1, 0, 0, 88, len(token), conn.session_id)
            b.send([b.build(b.header(c.Command.SESSION_SETUP), body + token, sign=False)])
            r = b.replies()[-1]
            b.session_id = r.header.session_id
            if r.status != st.STATUS_MORE_PROCESSING_REQUIRED:
                break
            token = ctx.step(r.raw[r.u16(4) : r.u16(4) + r.u16(6)])
        self.assertEqual(r.status, 0)
        [final] = conn.replies()
        self.assertEqual((final.status, final.body[2:8]), (st.STATUS_NOTIFY_CLEANUP, bytes(6)))

    def test_failed_reauth_answers_pending(self) -> None:
        """A re-authentication that fails ends the session; its waiting requests get NOTIFY_CLEANUP."""
        wire = Wire()
        conn = conn_for(wire)
        self.pending(conn)
        ctx = spnego.client("alice", "wrong", protocol="negotiate")
        r, out = conn.session_setup(ctx.step(None))
        token = ctx.step(out)
        body = struct.pack("<HBBIIHHQ", 25, 0, 1, 0, 0, 88, len(token), 0) + token
        conn.send([conn.build(conn.header(c.Command.SESSION_SETUP), body, sign=False)])
        replies = conn.replies()
        wire.clock.advance(10)  # failed logons are answered after a pause
        self.assertEqual(
            sorted(x.status for x in replies + conn.replies()),
            [st.STATUS_NOTIFY_CLEANUP, st.STATUS_LOGON_FAILURE],
        )

    def test_watched_directory_deleted(self) -> None:
        """
        Delete-on-close set on the watched directory through another handle,
        or the directory removed through the vfs (NFS, S3), answers a waiting
        request with DELETE_PENDING.
        """
        wire = Wire()
        conn = conn_for(wire)
        share = c.FILE_SHARE_READ | c.FILE_SHARE_WRITE | c.FILE_SHARE_DELETE
        self.pending(conn, "gone", disposition=c.FILE_CREATE, share=share)
        other = conn_for(wire)
        fid = other.open("gone", access=c.DELETE, options=c.FILE_DIRECTORY_FILE, share=share)
        self.assertEqual(other.set_info(fid, FILE, F.FileDispositionInformation, b"\x01").status, 0)
        self.assertEqual(other.close(fid).status, 0)
        [final] = conn.replies()
        self.assertEqual(final.status, st.STATUS_DELETE_PENDING)

        self.pending(conn, "nfs", disposition=c.FILE_CREATE, share=share)
        vfs, caller = wire.mvfs.vfs, wire.mvfs.caller(0, 0)
        root = wire.fired(vfs.resolve(caller, b"")).ino
        wire.fired(vfs.rmdir(caller, root, b"nfs"))
        [final] = conn.replies()
        self.assertEqual(final.status, st.STATUS_DELETE_PENDING)

    def test_second_request_filter_zero(self) -> None:
        """The filter is fixed by the first request: a later one may pass 0."""
        wire = Wire()
        conn = conn_for(wire)
        d = self.pending(conn)
        conn_for(wire).open("one")
        [first] = conn.replies()
        self.assertEqual(notify_changes(first.buffer()), [(1, "one")])
        self.assertEqual(conn.notify(d, filter=0).status, st.STATUS_PENDING)
        conn_for(wire).open("two")
        [second] = conn.replies()
        self.assertEqual(notify_changes(second.buffer()), [(1, "two")])
        fresh = conn.open("", access=c.GENERIC_READ)
        self.assertEqual(conn.notify(fresh, filter=0).status, st.STATUS_INVALID_PARAMETER)

    def test_tree_watch(self) -> None:
        """A change below a WATCH_TREE directory says "re-read" (STATUS_NOTIFY_ENUM_DIR)."""
        wire = Wire()
        conn = conn_for(wire)
        conn.open("deep", options=c.FILE_DIRECTORY_FILE)
        conn.open("deep\\er", options=c.FILE_DIRECTORY_FILE)
        d = conn.open("", access=c.GENERIC_READ)
        conn.notify(d, flags=c.SMB2_WATCH_TREE)
        conn_for(wire).open("deep\\er\\file")
        [final] = conn.replies()
        self.assertEqual(final.status, st.STATUS_NOTIFY_ENUM_DIR)

    def test_change_through_another_gateway(self) -> None:
        """
        A directory's entries changed through another gateway (a remote
        backend's change event: the directory, no name) answer a waiting
        request with "re-read" (STATUS_NOTIFY_ENUM_DIR); a tree watch hears
        it for a directory below; a watch of attributes only does not.
        """
        wire = Wire()
        vfs = wire.mvfs.vfs
        root = wire.mvfs.root()
        conn = conn_for(wire)
        conn.open("deep", options=c.FILE_DIRECTORY_FILE)
        below = wire.fired(vfs.lookup(wire.mvfs.caller(0, 0), root, b"deep")).ino
        d = conn.open("", access=c.GENERIC_READ)
        self.assertEqual(conn.notify(d).status, st.STATUS_PENDING)
        vfs.forget_changed(below + 1000, root)
        [final] = conn.replies()
        self.assertEqual(final.status, st.STATUS_NOTIFY_ENUM_DIR)
        tree = conn.open("", access=c.GENERIC_READ)
        self.assertEqual(conn.notify(tree, flags=c.SMB2_WATCH_TREE).status, st.STATUS_PENDING)
        attrs = conn.open("deep", access=c.GENERIC_READ, options=c.FILE_DIRECTORY_FILE)
        watch_attrs = conn.notify(attrs, filter=c.FILE_NOTIFY_CHANGE_ATTRIBUTES)
        self.assertEqual(watch_attrs.status, st.STATUS_PENDING)
        vfs.forget_changed(below + 1000, below)
        [tree_reply] = conn.replies()
        self.assertEqual(tree_reply.status, st.STATUS_NOTIFY_ENUM_DIR)

    def test_overflow(self) -> None:
        wire = Wire()
        conn = conn_for(wire)
        d = conn.open("", access=c.GENERIC_READ)
        conn.notify(d)
        conn.replies()
        for i in range(300):
            conn.close(conn.open(f"f{i}"))
        self.assertEqual(conn.notify(d).status, st.STATUS_NOTIFY_ENUM_DIR)
        self.assertEqual(conn.notify(d, length=8).status, st.STATUS_PENDING)


class CrossProtocolTests(SynchronousTestCase):
    def test_written_over_smb_read_through_the_vfs(self) -> None:
        """What SMB writes, another protocol reads through the vfs: same bytes, the user's uid."""
        wire = Wire()
        conn = conn_for(wire)
        data = bytes(range(256)) * 1000
        fid = conn.open("cross.bin")
        conn.write(fid, 0, data)
        conn.close(fid)
        nfs = wire.mvfs.caller(2000, 2000, protocol="nfs")
        a = wire.fired(wire.mvfs.vfs.resolve(nfs, b"cross.bin"))
        self.assertEqual((a.uid, a.size), (1000, len(data)))
        self.assertEqual(wire.fired(wire.mvfs.vfs.read(nfs, a.ino, 0, len(data))).data, data)

    def test_change_elsewhere_visible(self) -> None:
        wire = Wire()
        conn = conn_for(wire)
        fid = conn.open("t")
        root = wire.mvfs.caller(0, 0)
        a = wire.fired(wire.mvfs.vfs.resolve(root, b"t"))
        wire.fired(wire.mvfs.vfs.setattr(root, a.ino, SetAttrs(size=33)))
        self.assertEqual(struct.unpack_from("<q", conn.query_info(fid, FILE, 5).buffer(), 8)[0], 33)

    def _delegated(self, wire: Wire, conn: Conn, bits: int) -> tuple[Any, list[int]]:
        """An NFSv4 client holds a delegation (a lease of C{bits}) on "deleg"; the breaks it is sent."""
        fid = conn.open("deleg")
        conn.close(fid)
        a = wire.fired(wire.mvfs.vfs.resolve(wire.mvfs.caller(0, 0), b"deleg"))
        breaks: list[int] = []

        @implementer(ILeaseHolder)
        class Holder:
            def lease_break(self, lease: Lease, to: int) -> bool:
                breaks.append(to)
                return True

            def lease_revoked(self, lease: Lease) -> None:
                pass

        leases = wire.mvfs.vfs.leases
        lease = leases.grant(a.ino, LeaseKey("nfs4", "c", b"d"), bits, Holder())
        assert lease is not None
        return lease, breaks

    def test_open_recalls_nfs4_delegations(self) -> None:
        """
        An SMB open of a file an NFSv4 client holds a read delegation on leaves
        it when reading only; an open that may write recalls it: the CREATE goes
        asynchronous (STATUS_PENDING) and completes once the delegation is back.
        """
        wire = Wire()
        conn = conn_for(wire)
        lease, breaks = self._delegated(wire, conn, R | H)
        fid = conn.open("deleg", access=c.GENERIC_READ)
        conn.close(fid)
        self.assertEqual(breaks, [])
        interim = conn.create("deleg")
        self.assertEqual(interim.status, st.STATUS_PENDING)
        self.assertEqual(breaks, [H])
        wire.mvfs.vfs.leases.release(lease)
        [final] = conn.replies()
        self.assertEqual((final.status, final.header.async_id), (0, interim.header.async_id))

    def test_read_open_recalls_write_delegation(self) -> None:
        """Any SMB open recalls a write delegation (the NFSv4 client caches writes)."""
        wire = Wire()
        conn = conn_for(wire)
        lease, breaks = self._delegated(wire, conn, R | W | H)
        interim = conn.create("deleg", access=c.GENERIC_READ)
        self.assertEqual(interim.status, st.STATUS_PENDING)
        self.assertEqual(breaks, [R | H])
        wire.mvfs.vfs.leases.acknowledge(lease, 0)
        [final] = conn.replies()
        self.assertEqual(final.status, 0)


class ConformanceTests(SynchronousTestCase):
    """Details smbtorture checks, kept here so they stay right."""

    def test_create_validation(self) -> None:
        conn = conn_for()
        for access, want in (
            (0, st.STATUS_ACCESS_DENIED),
            (0x08000000, st.STATUS_ACCESS_DENIED),
            (c.ACCESS_SYSTEM_SECURITY, st.STATUS_PRIVILEGE_NOT_HELD),
        ):
            self.assertEqual(conn.create("v", access=access).status, want, hex(access))
        for attrs_ in (0x8, 0x40, 0x8000, 0x10000):
            self.assertEqual(
                conn.create("v", attributes=attrs_).status, st.STATUS_INVALID_PARAMETER
            )
        self.assertEqual(
            conn.create("v", attributes=c.FILE_ATTRIBUTE_ENCRYPTED).status, st.STATUS_ACCESS_DENIED
        )
        for opt in (0x80, 0x2000, 0x100000):
            self.assertEqual(conn.create("v", options=opt).status, st.STATUS_NOT_SUPPORTED)
        self.assertEqual(conn.create("v", options=0x01000000).status, st.STATUS_INVALID_PARAMETER)
        r = conn.create(
            "v",
            options=c.FILE_DELETE_ON_CLOSE,
            attributes=c.FILE_ATTRIBUTE_READONLY,
            disposition=c.FILE_CREATE,
        )
        self.assertEqual(r.status, st.STATUS_CANNOT_DELETE)
        r = conn.create("v", attributes=c.FILE_ATTRIBUTE_HIDDEN | c.FILE_ATTRIBUTE_DIRECTORY)
        self.assertEqual(r.u32(56), c.FILE_ATTRIBUTE_HIDDEN | c.FILE_ATTRIBUTE_ARCHIVE)

    def test_unlock_array_is_sequential(self) -> None:
        """Unlocks apply one by one: an error leaves the earlier ones done (MS-SMB2 3.3.5.14.1)."""
        conn = conn_for()
        fid = conn.open("seq")
        ex = c.SMB2_LOCKFLAG_EXCLUSIVE_LOCK | c.SMB2_LOCKFLAG_FAIL_IMMEDIATELY
        conn.lock(fid, [(0, 10, ex), (20, 10, ex)])
        r = conn.lock(fid, [(0, 10, c.SMB2_LOCKFLAG_UNLOCK), (20, 10, ex)])
        self.assertEqual(r.status, st.STATUS_INVALID_PARAMETER)
        self.assertEqual(conn.lock(fid, [(0, 10, ex)]).status, 0)
        r = conn.lock(fid, [(40, 1, c.SMB2_LOCKFLAG_UNLOCK), (0, 0, 0)])
        self.assertEqual(r.status, st.STATUS_RANGE_NOT_LOCKED)

    def test_zero_length_locks(self) -> None:
        """A zero-byte lock conflicts only with a lock strictly around its offset."""
        conn = conn_for()
        a, b = conn.open("z"), conn.open("z")
        ex = c.SMB2_LOCKFLAG_EXCLUSIVE_LOCK | c.SMB2_LOCKFLAG_FAIL_IMMEDIATELY
        unlock = c.SMB2_LOCKFLAG_UNLOCK
        cases = [
            ((10, 0), (9, 2), False),
            ((10, 0), (10, 2), True),
            ((9, 2), (10, 0), False),
            ((10, 1), (10, 0), True),
            ((10, 0), (10, 0), True),
        ]
        for first, second, ok in cases:
            for other in (a, b):
                self.assertEqual(conn.lock(a, [(*first, ex)]).status, 0)
                r = conn.lock(other, [(*second, ex)])
                self.assertEqual(r.status, 0 if ok else st.STATUS_LOCK_NOT_GRANTED, (first, second))
                if ok:
                    conn.lock(other, [(*second, unlock)])
                self.assertEqual(conn.lock(a, [(*first, unlock)]).status, 0)

    def test_close_ends_pending_lock(self) -> None:
        """Closing the handle of a pending lock answers it STATUS_RANGE_NOT_LOCKED."""
        wire = Wire()
        c1, c2 = conn_for(wire), conn_for(wire)
        a = c1.open("p")
        c1.lock(a, [(0, 10, c.SMB2_LOCKFLAG_EXCLUSIVE_LOCK | c.SMB2_LOCKFLAG_FAIL_IMMEDIATELY)])
        b = c2.open("p")
        self.assertEqual(
            c2.lock(b, [(0, 10, c.SMB2_LOCKFLAG_EXCLUSIVE_LOCK)]).status, st.STATUS_PENDING
        )
        c2.send([c2.build(c2.header(c.Command.CLOSE), struct.pack("<HHIQQ", 24, 0, 0, *b))])
        self.assertEqual(sorted(r.status for r in c2.replies()), [0, st.STATUS_RANGE_NOT_LOCKED])

    def test_notify_buffer_fixed_by_first_request(self) -> None:
        wire = Wire()
        conn = conn_for(wire)
        d = conn.open("", access=c.GENERIC_READ)
        self.assertEqual(conn.notify(d, length=1).status, st.STATUS_PENDING)
        other = conn_for(wire)
        other.close(other.open("one"))
        self.assertEqual(conn.replies()[0].status, st.STATUS_NOTIFY_ENUM_DIR)
        self.assertEqual(conn.notify(d, length=4096).status, st.STATUS_PENDING)
        other.close(other.open("two"))
        self.assertEqual(conn.replies()[0].status, st.STATUS_NOTIFY_ENUM_DIR)
        self.assertEqual(conn.notify(d, length=1 << 30).status, st.STATUS_INVALID_PARAMETER)

    def test_normalized_name(self) -> None:
        conn = conn_for()
        root = conn.open("", access=c.GENERIC_READ)
        self.assertEqual(conn.query_info(root, FILE, 48).buffer(), b"\x00" * 4)
        fid = conn.open("n.txt")
        self.assertEqual(conn.query_info(fid, FILE, 48).buffer()[4:].decode("utf-16-le"), "n.txt")
        self.assertEqual(conn.query_info(fid, FILE, 21).status, st.STATUS_OBJECT_NAME_NOT_FOUND)


class ParserFuzzTests(SynchronousTestCase):
    """The file-level parsers (EA lists, names) take any input and raise only their errors."""

    @given(s.binary(max_size=300))
    def test_ea_lists(self, data: bytes) -> None:
        for parse in (ea_entries, get_ea_names):
            try:
                parse(data)
            except ProtocolError:
                pass

    @given(
        s.lists(
            s.tuples(s.binary(min_size=1, max_size=20), s.binary(max_size=50)),
            min_size=1,
            max_size=5,
        )
    )
    def test_ea_round_trip(self, eas: list[tuple[bytes, bytes]]) -> None:
        got = ea_entries(pack_eas(eas))
        self.assertEqual([(n, v) for _f, n, v in got], eas)

    @given(s.text(max_size=100))
    def test_names(self, name: str) -> None:
        try:
            parts = split_name(name)
        except SMBError:
            return
        for p in parts:
            self.assertTrue(0 < len(p) <= 255)
            self.assertNotIn(p, (b".", b".."))


class StreamTests(SynchronousTestCase):
    def streams(self, conn: Conn, fid: tuple[int, int]) -> list[tuple[str, int]]:
        buf = conn.query_info(fid, FILE, F.FileStreamInformation).buffer()
        out = []
        pos = 0
        while buf:
            nxt, n, size = struct.unpack_from("<IIq", buf, pos)
            out.append((buf[pos + 24 : pos + 24 + n].decode("utf-16-le"), size))
            if not nxt:
                break
            pos += nxt
        return out

    def test_named_streams(self) -> None:
        """
        A stream made with the file, written and read on its own open, listed
        by FileStreamInformation, matched without regard to case, deleted
        on close; kept beside the file, where NFS sees no trace of it.
        """
        wire = Wire()
        conn = conn_for(wire)
        s = conn.open("f.txt:Zone.Identifier", disposition=c.FILE_CREATE)
        self.assertEqual(conn.write(s, 0, b"[ZoneTransfer]").status, 0)
        self.assertEqual(conn.write(s, 20, b"x").status, 0)
        self.assertEqual(conn.read_data(conn.read(s, 0, 100)), b"[ZoneTransfer]" + bytes(6) + b"x")
        self.assertEqual(struct.unpack_from("<q", conn.query_info(s, FILE, 5).buffer(), 8)[0], 21)
        f = conn.open("f.txt")
        conn.write(f, 0, b"main")
        self.assertEqual(self.streams(conn, f), [("::$DATA", 4), (":Zone.Identifier:$DATA", 21)])
        again = conn.open("F.TXT:zone.identifier:$DATA", disposition=c.FILE_OPEN)
        self.assertEqual(conn.read_data(conn.read(again, 0, 14)), b"[ZoneTransfer]")
        self.assertEqual(conn.read_data(conn.read(f, 0, 10)), b"main")
        self.assertEqual(
            conn.create("f.txt:Zone.Identifier", disposition=c.FILE_CREATE).status,
            st.STATUS_OBJECT_NAME_COLLISION,
        )
        self.assertEqual(
            conn.create("f.txt:other", disposition=c.FILE_OPEN).status,
            st.STATUS_OBJECT_NAME_NOT_FOUND,
        )
        eof = struct.pack("<q", 3)
        self.assertEqual(conn.set_info(again, FILE, F.FileEndOfFileInformation, eof).status, 0)
        self.assertEqual(conn.read_data(conn.read(s, 0, 100)), b"[Zo")
        vfs, root = wire.mvfs.vfs, wire.mvfs.caller(0, 0)
        a = wire.fired(vfs.resolve(root, b"f.txt"))
        self.assertEqual((a.size, wire.fired(vfs.listxattr(root, a.ino))), (4, []))
        conn.set_info(again, FILE, F.FileDispositionInformation, b"\x01")
        conn.close(again)
        conn.close(s)
        self.assertEqual(self.streams(conn, f), [("::$DATA", 4)])
        self.assertEqual(conn.read_data(conn.read(f, 0, 10)), b"main")

    def test_streams_have_their_own_oplocks(self) -> None:
        """A batch oplock on a file and another on its stream are both granted (as on NTFS)."""
        wire = Wire()
        a, b = conn_for(wire), conn_for(wire)
        r = a.create("o.txt:s", oplock=c.SMB2_OPLOCK_LEVEL_BATCH)
        self.assertEqual(r.body[2], c.SMB2_OPLOCK_LEVEL_BATCH)
        r = b.create("o.txt", oplock=c.SMB2_OPLOCK_LEVEL_BATCH)
        self.assertEqual(r.body[2], c.SMB2_OPLOCK_LEVEL_BATCH)
        self.assertEqual(a.replies(), [])

    def test_stream_share_modes(self) -> None:
        """Share modes hold per stream: a stream open denying writes refuses the stream, not the file."""
        wire = Wire()
        a, b = conn_for(wire), conn_for(wire)
        a.open("sm.txt:s", share=c.FILE_SHARE_READ)
        self.assertEqual(b.create("sm.txt:s").status, st.STATUS_SHARING_VIOLATION)
        self.assertEqual(b.create("sm.txt").status, 0)

    def test_bad_stream_names(self) -> None:
        conn = conn_for()
        for bad in ("f:s:$INDEX_ALLOCATION", "d:x\\f", "f:a:b:$DATA"):
            self.assertEqual(conn.create(bad).status, st.STATUS_OBJECT_NAME_INVALID, bad)
        self.assertEqual(
            conn.create("f:s", options=c.FILE_DIRECTORY_FILE).status, st.STATUS_NOT_A_DIRECTORY
        )


class SparseTests(SynchronousTestCase):
    def ranges(self, r: Any) -> list[tuple[int, int]]:
        buf = r.raw[r.u32(32) : r.u32(32) + r.u32(36)]
        return [struct.unpack_from("<qq", buf, i) for i in range(0, len(buf), 16)]

    def test_holes_after_zero_data(self) -> None:
        """
        FSCTL_SET_ZERO_DATA on a sparse file leaves a hole that
        QUERY_ALLOCATED_RANGES leaves out; a file not marked sparse is
        allocated throughout; a buffer too small for every range gets the
        ranges that fit and BUFFER_OVERFLOW.
        """
        conn = conn_for()
        fid = conn.open("sparse", access=c.GENERIC_ALL)
        block = 64 * 1024
        conn.call(c.Command.ECHO, b"\x04\x00\x00\x00", credits=64)
        conn.write(fid, 0, b"x" * (3 * block))
        whole = struct.pack("<qq", 0, 3 * block)
        zero = struct.pack("<qq", block, 2 * block)
        self.assertEqual(conn.ioctl(fid, c.FSCTL_SET_ZERO_DATA, zero).status, 0)
        r = conn.ioctl(fid, c.FSCTL_QUERY_ALLOCATED_RANGES, whole)
        self.assertEqual(self.ranges(r), [(0, 3 * block)])
        self.assertEqual(conn.ioctl(fid, c.FSCTL_SET_SPARSE, b"\x01").status, 0)
        self.assertEqual(conn.ioctl(fid, c.FSCTL_SET_ZERO_DATA, zero).status, 0)
        r = conn.ioctl(fid, c.FSCTL_QUERY_ALLOCATED_RANGES, whole)
        self.assertEqual(self.ranges(r), [(0, block), (2 * block, block)])
        r = conn.ioctl(fid, c.FSCTL_QUERY_ALLOCATED_RANGES, whole, max_out=16)
        self.assertEqual((r.status, self.ranges(r)), (st.STATUS_BUFFER_OVERFLOW, [(0, block)]))
        self.assertEqual(conn.read_data(conn.read(fid, block - 1, 2)), b"x\x00")


class ServerSideCopyTests(SynchronousTestCase):
    def key(self, conn: Conn, fid: tuple[int, int]) -> bytes:
        r = conn.ioctl(fid, c.FSCTL_SRV_REQUEST_RESUME_KEY)
        self.assertEqual(r.status, 0)
        return r.raw[r.u32(32) : r.u32(32) + 24]

    def copy(
        self,
        conn: Conn,
        dst: tuple[int, int],
        key: bytes,
        chunks: list[tuple[int, int, int]],
        write: bool = False,
    ) -> object:
        data = key + struct.pack("<II", len(chunks), 0)
        for src_off, dst_off, length in chunks:
            data += struct.pack("<QQII", src_off, dst_off, length, 0)
        code = c.FSCTL_SRV_COPYCHUNK_WRITE if write else c.FSCTL_SRV_COPYCHUNK
        return conn.ioctl(dst, code, data)

    def test_copy(self) -> None:
        """Chunks copy through the vfs; the reply counts them."""
        conn = conn_for()
        src = conn.open("src")
        data = bytes(range(256)) * 64
        conn.write(src, 0, data)
        dst = conn.open("dst")
        r = self.copy(conn, dst, self.key(conn, src), [(0, 0, 8192), (8192, 100_000, 8192)])
        self.assertEqual(r.status, 0)
        out = r.raw[r.u32(32) : r.u32(32) + 12]
        self.assertEqual(struct.unpack("<III", out), (2, 0, 16384))
        self.assertEqual(conn.read_data(conn.read(dst, 0, 8192)), data[:8192])
        self.assertEqual(conn.read_data(conn.read(dst, 100_000, 8192)), data[8192:])

    def test_refusals(self) -> None:
        conn = conn_for()
        src = conn.open("src")
        conn.write(src, 0, b"x" * 4096)
        dst = conn.open("dst")
        key = self.key(conn, src)
        r = self.copy(conn, dst, key, [(0, 0, 2 << 20)])
        self.assertEqual(r.status, st.STATUS_INVALID_PARAMETER)
        limits = r.raw[r.u32(32) : r.u32(32) + 12]
        self.assertEqual(struct.unpack("<III", limits), (256, 1 << 20, 16 << 20))
        self.assertEqual(
            self.copy(conn, dst, b"k" * 24, [(0, 0, 10)]).status, st.STATUS_OBJECT_NAME_NOT_FOUND
        )
        self.assertEqual(self.copy(conn, dst, key, [(4000, 0, 200)]).status, 0xC000001F)
        ro = conn.open("dst", access=c.GENERIC_READ)
        self.assertEqual(self.copy(conn, ro, key, [(0, 0, 10)]).status, st.STATUS_ACCESS_DENIED)
        wo = conn.open("dst", access=c.FILE_WRITE_DATA)
        self.assertEqual(self.copy(conn, wo, key, [(0, 0, 10)]).status, st.STATUS_ACCESS_DENIED)
        self.assertEqual(self.copy(conn, wo, key, [(0, 0, 10)], write=True).status, 0)
        conn.close(src)
        self.assertEqual(
            self.copy(conn, dst, key, [(0, 0, 10)]).status, st.STATUS_OBJECT_NAME_NOT_FOUND
        )
