# -*- test-case-name: tests.smb.test_files -*-
"""
The file commands of SMB2 (CREATE, CLOSE, READ, WRITE, FLUSH, LOCK,
QUERY_DIRECTORY, CHANGE_NOTIFY, QUERY_INFO, SET_INFO and the file IOCTLs),
served through the vfs.

Every name, permission and attribute decision is the vfs's: this module
turns SMB's vocabulary into vfs calls and back. What SMB has and POSIX has
not is kept here or beside the inode:

  - DOS attributes live in the vfs's per-inode front-end metadata
    (C{meta_set}, key C{smb.dosattrib}); creation time is the inode's btime.
  - Extended attributes (EAs) are the client-visible xattrs under C{user.}.
  - Delete-on-close and delete-pending belong to the file, not to one open:
    the server's L{FileNode} table holds them across connections, and the
    name goes when the last open closes.
  - Byte-range locks and share modes are the vfs lock manager's
    (C{vfs.locks}), so they hold against NLM and NFSv4 as well. While that
    manager is absent LOCK answers STATUS_NOT_SUPPORTED and share modes are
    not enforced.
  - Names match case-insensitively and keep their case (L{claudefs_gateway.smb.names}).
"""

from __future__ import annotations

import os
import struct
from collections import OrderedDict
from typing import Any

from twisted.internet import defer

from claudefs_gateway import errors
from claudefs_gateway.core.log import Logger
from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.fstypes import Attributes, SetAttrs
from claudefs_gateway.interfaces import IVFS, ILockTable
from claudefs_gateway.smb import constants as c
from claudefs_gateway.smb import ntstatus as st
from claudefs_gateway.smb.constants import FileInfoClass as F
from claudefs_gateway.smb.constants import FsInfoClass as Fs
from claudefs_gateway.smb.dcerpc import (
    STYPE_DISKTREE,
    STYPE_IPC,
    STYPE_SPECIAL,
    Pipe,
    Share,
    Srvsvc,
)
from claudefs_gateway.smb.errors import SMBError
from claudefs_gateway.smb.header import Reader, error_body
from claudefs_gateway.smb.info import (
    DIRECTORY_CLASSES,
    OpenState,
    Stat,
    Volume,
    dos_attributes,
    file_times,
    from_filetime,
    fs_info,
    matches,
    pack_dir_entry,
    pack_stat_info,
    pattern_matcher,
)
from claudefs_gateway.smb.messages import (
    SIMPLE_BODY,
    ChangeNotifyRequest,
    CloseRequest,
    CreateContext,
    CreateRequest,
    FileId,
    FileIdRequest,
    FileTimes,
    IoctlRequest,
    LockRequest,
    QueryDirectoryRequest,
    QueryInfoRequest,
    ReadRequest,
    SetInfoRequest,
    WriteRequest,
    pack_buffer_response,
    pack_close_response,
    pack_create_response,
    pack_ioctl_response,
    pack_read_response_header,
    pack_write_response,
)
from claudefs_gateway.smb.names import CaseIndex
from claudefs_gateway.smb.security import (
    mode_from_dacl,
    parse_security_descriptor,
    security_descriptor,
)
from claudefs_gateway.smb.state import DirScan, FileNode, Open, Reply, Request, Watch
from claudefs_gateway.vfs import Action, Caller, Change, LockOwner, R, W, X
from claudefs_gateway.vfs.events import What
from claudefs_gateway.vfs.origin import Origin

__all__ = ["FileService", "split_name", "DOS_KEY"]

DOS_KEY = b"smb.dosattrib"
EA_PREFIX = b"user."
ALL_ONES = 0xFFFFFFFFFFFFFFFF
MAX_OPENS = 16384
MAX_NOTIFY_QUEUE = 256
STATUS_BAD_IMPERSONATION_LEVEL = 0xC00000A5
STATUS_INVALID_LOCK_RANGE = 0xC00001A1
STATUS_PIPE_EMPTY = 0xC00000D9
STATUS_INVALID_OPLOCK_PROTOCOL = 0xC00000E3
STATUS_INVALID_VIEW_SIZE = 0xC000001F
COPYCHUNK_MAX_CHUNKS = 256
COPYCHUNK_MAX_CHUNK = 1024 * 1024
COPYCHUNK_MAX_TOTAL = 16 * 1024 * 1024
# CreateOptions refused with NOT_SUPPORTED (FILE_CREATE_TREE_CONNECTION,
# FILE_OPEN_BY_FILE_ID, FILE_RESERVE_OPFILTER), as Windows does.
CREATE_OPTIONS_NOT_SUPPORTED = 0x00000080 | 0x00002000 | 0x00100000
# FileAttributes a CREATE may not carry: VOLUME, DEVICE, INTEGRITY_STREAM, undefined.
FILE_ATTRIBUTES_INVALID = 0xFFFF0000 | 0x00000008 | 0x00000040 | 0x00008000
ACCESS_INVALID = 0x0CE0FE00
# Information classes of variable size: the size of their fixed part, as
# Windows counts it (the C structure with its first name character, padded
# to 8 bytes; smbtorture smb2.getinfo.q*_buffercheck).
VARIABLE_FILE_CLASSES: dict[int, int] = {
    F.FileAllInformation: 104,
    F.FileNameInformation: 8,
    F.FileNormalizedNameInformation: 8,
    F.FileStreamInformation: 32,
}
VARIABLE_FS_CLASSES: dict[int, int] = {
    Fs.FileFsVolumeInformation: 24,
    Fs.FileFsAttributeInformation: 16,
}
_BAD_CHARS = frozenset('"*/:<>?|') | frozenset(chr(i) for i in range(32))
_DATA_STREAM = "::$data"


def split_name(name: str) -> list[bytes]:
    """
    A CREATE or rename name as path components (UTF-8). Backslash separates
    components; a trailing one is allowed; the default data stream suffix
    C{::$DATA} is dropped.

    @raise SMBError: a leading backslash (STATUS_INVALID_PARAMETER, MS-SMB2
        3.3.5.9), an empty, "." or ".." component, a wildcard, a stream or a
        control character (STATUS_OBJECT_NAME_INVALID).
    """
    if name.lower().endswith(_DATA_STREAM):
        name = name[: -len(_DATA_STREAM)]
    if name.startswith("\\"):
        raise SMBError(st.STATUS_INVALID_PARAMETER, "name begins with a backslash")
    if name.endswith("\\"):
        name = name[:-1]
    if not name:
        return []
    out = []
    for part in name.split("\\"):
        if part in (".", ".."):
            raise SMBError(st.STATUS_OBJECT_PATH_SYNTAX_BAD, "dot component")
        if not part or any(ch in _BAD_CHARS for ch in part):
            raise SMBError(st.STATUS_OBJECT_NAME_INVALID, "bad name component")
        raw = part.encode("utf-8", "surrogatepass")
        if len(raw) > 255:
            raise SMBError(st.STATUS_OBJECT_NAME_INVALID, "name component too long")
        out.append(raw)
    return out


#: What each kind of modification means to a CHANGE_NOTIFY completion filter (MS-FSCC 2.4.42 / MS-SMB2 2.2.35).
_NOTIFY_BITS: tuple[tuple[What, int], ...] = (
    (What.DATA, c.FILE_NOTIFY_CHANGE_LAST_WRITE),
    (What.SIZE, c.FILE_NOTIFY_CHANGE_SIZE),
    (What.ATTRIBUTES, c.FILE_NOTIFY_CHANGE_ATTRIBUTES),
    (What.SECURITY, c.FILE_NOTIFY_CHANGE_SECURITY),
    (
        What.TIMES,
        c.FILE_NOTIFY_CHANGE_LAST_WRITE
        | c.FILE_NOTIFY_CHANGE_LAST_ACCESS
        | c.FILE_NOTIFY_CHANGE_CREATION,
    ),
    (What.XATTR, c.FILE_NOTIFY_CHANGE_EA),
)


def _notify_bits(what: What) -> int:
    """The completion-filter bits a "modified" change matches (every non-name bit if unknown)."""
    bits = 0
    for flag, mask in _NOTIFY_BITS:
        if what & flag:
            bits |= mask
    if not bits:
        bits = ~(c.FILE_NOTIFY_CHANGE_FILE_NAME | c.FILE_NOTIFY_CHANGE_DIR_NAME)
    return bits


def _decode(name: bytes) -> str | None:
    """A stored name as SMB can show it, or None if it is not UTF-8."""
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _generic(mask: int) -> int:
    """Map GENERIC_* bits to file rights (MS-SMB2 3.3.5.9, MS-DTYP 2.4.3)."""
    out = mask & ~(c.GENERIC_ALL | c.GENERIC_READ | c.GENERIC_WRITE | c.GENERIC_EXECUTE)
    if mask & c.GENERIC_READ:
        out |= c.FILE_GENERIC_READ
    if mask & c.GENERIC_WRITE:
        out |= c.FILE_GENERIC_WRITE
    if mask & c.GENERIC_EXECUTE:
        out |= c.FILE_GENERIC_EXECUTE
    if mask & c.GENERIC_ALL:
        out |= c.FILE_ALL_ACCESS
    return out


def _share_modes(access: int, share: int) -> tuple[frozenset[str], frozenset[str]]:
    """What an open does and what it denies others, in the lock manager's terms."""
    acc = set()
    if access & (c.FILE_READ_DATA | c.FILE_EXECUTE):
        acc.add("read")
    if access & (c.FILE_WRITE_DATA | c.FILE_APPEND_DATA):
        acc.add("write")
    if access & c.DELETE:
        acc.add("delete")
    deny = set()
    if not share & c.FILE_SHARE_READ:
        deny.add("read")
    if not share & c.FILE_SHARE_WRITE:
        deny.add("write")
    if not share & c.FILE_SHARE_DELETE:
        deny.add("delete")
    return frozenset(acc), frozenset(deny)


def _ea_entries(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """FILE_FULL_EA_INFORMATION entries (MS-FSCC 2.4.15): (flags, name, value)."""
    r = Reader(data)
    out = []
    pos = 0
    while pos < len(data):
        nxt, flags, nlen, vlen = r.u32(pos), r.u8(pos + 4), r.u8(pos + 5), r.u16(pos + 6)
        name = r.raw(pos + 8, nlen)
        if r.u8(pos + 8 + nlen) != 0:
            raise ProtocolError("EA name not NUL-terminated")
        value = r.raw(pos + 9 + nlen, vlen)
        out.append((flags, name, value))
        if len(out) > 256:
            raise ProtocolError("too many EAs")
        if nxt == 0:
            break
        if nxt < 8 + nlen + 1 + vlen or nxt % 4:
            raise ProtocolError("bad EA NextEntryOffset")
        pos += nxt
    return out


def _pack_eas(eas: list[tuple[bytes, bytes]]) -> bytes:
    out = bytearray()
    for i, (name, value) in enumerate(eas):
        entry = struct.pack("<IBBH", 0, 0, len(name), len(value)) + name + b"\x00" + value
        if i + 1 < len(eas):
            entry += b"\x00" * ((-len(entry)) % 4)
            entry = struct.pack("<I", len(entry)) + entry[4:]
        out += entry
    return bytes(out)


def _get_ea_names(data: bytes) -> list[bytes]:
    """FILE_GET_EA_INFORMATION entries (MS-FSCC 2.4.15.1)."""
    r = Reader(data)
    out = []
    pos = 0
    while pos < len(data):
        nxt, nlen = r.u32(pos), r.u8(pos + 4)
        out.append(r.raw(pos + 5, nlen))
        if len(out) > 256:
            raise ProtocolError("too many EA names")
        if nxt == 0:
            break
        if nxt < 5 + nlen:
            raise ProtocolError("bad EA NextEntryOffset")
        pos += nxt
    return out


class FileService:
    """The file commands, shared by every connection of one server."""

    _log = Logger()

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.nodes: dict[int, FileNode] = {}
        self._parents: OrderedDict[int, int] = OrderedDict()
        self._case: CaseIndex | None = None
        # Server-side copy: resume key → the open it names.
        self.resume_keys: dict[bytes, Open] = {}

    @property
    def vfs(self) -> IVFS:
        vfs: IVFS = self.factory.open_vfs
        return vfs

    @property
    def locks(self) -> ILockTable:
        return self.vfs.locks

    # -- helpers ---------------------------------------------------------------------------

    def lookup_open(self, conn: Any, req: Request, fid: FileId) -> Open:
        """
        The open a FileId names (a related request's all-ones FileId names the
        previous request's).

        @raise SMBError: STATUS_FILE_CLOSED for an unknown FileId or one of
            another session or tree.
        """
        if fid == (ALL_ONES, ALL_ONES) and req.related_file_id is not None:
            fid = req.related_file_id
        op = conn.opens.get(fid[1])
        if op is None or op.file_id != fid or op.closed or op.session is not req.session:
            if req.related and req.chain.create_error:
                # A related request after a failed CREATE fails as the CREATE did.
                raise SMBError(req.chain.create_error, "the CREATE before it failed")
            raise SMBError(st.STATUS_FILE_CLOSED, "no such open")
        if req.tree is not None and op.tree is not req.tree:
            raise SMBError(st.STATUS_FILE_CLOSED, "open of another tree")
        req.result_file_id = fid
        return op

    async def stored_dos(self, caller: Caller, ino: int) -> int | None:
        raw = await self.vfs.meta_get(caller, ino, DOS_KEY)
        if raw is None or len(raw) != 4:
            return None
        return int.from_bytes(raw, "little")

    async def stat(self, caller: Caller, a: Attributes, name: bytes = b"") -> Stat:
        stored = await self.stored_dos(caller, a.ino)
        return Stat(a, dos_attributes(a, stored, name))

    async def _set_dos(self, caller: Caller, ino: int, bits: int) -> None:
        await self.vfs.meta_set(caller, ino, DOS_KEY, struct.pack("<I", bits & c.STORED_ATTRIBUTES))

    async def maximal_access(self, caller: Caller, a: Attributes, parent: int | None) -> int:
        """What C{caller} may do to C{a} (and, with its C{parent}, whether it may delete it)."""
        vfs = self.vfs
        bits = await vfs.access(caller, a.ino, R | W | X)
        mask = c.FILE_READ_ATTRIBUTES | c.SYNCHRONIZE | c.READ_CONTROL
        if bits & R:
            mask |= c.FILE_READ_DATA | c.FILE_READ_EA
        if bits & W:
            mask |= c.FILE_WRITE_DATA | c.FILE_APPEND_DATA | c.FILE_WRITE_EA
            mask |= c.FILE_WRITE_ATTRIBUTES | c.FILE_DELETE_CHILD
        # A remote client "executes" a file by reading it, and the vfs lets
        # whoever may execute a file read it: the two go together here.
        if bits & X or (bits & R and not a.is_dir):
            mask |= c.FILE_EXECUTE
        cred = caller.cred
        if cred.is_root or cred.uid == a.uid:
            mask |= c.WRITE_DAC | c.WRITE_OWNER | c.FILE_WRITE_ATTRIBUTES | c.FILE_WRITE_EA
        if parent is not None:
            pbits = await vfs.access(caller, parent, W | X)
            if pbits == W | X:
                mask |= c.DELETE
        if caller.read_only:
            mask &= ~c.MODIFY_ACCESS
        return mask

    def _owner(self, conn: Any, fid: FileId) -> LockOwner:
        return LockOwner("smb", conn.conn_id, struct.pack("<QQ", *fid))

    # -- CREATE ------------------------------------------------------------------------------

    async def smb_CREATE(self, conn: Any, req: Request) -> bytes:
        body = CreateRequest.parse(req.raw)
        tree = req.tree
        assert tree is not None and req.session is not None
        if body.impersonation > c.SECURITY_DELEGATION:
            raise SMBError(STATUS_BAD_IMPERSONATION_LEVEL)
        if body.disposition > c.FILE_OVERWRITE_IF:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "bad CreateDisposition")
        opts = body.options
        if opts & c.CREATE_OPTIONS_INVALID or (
            opts & c.FILE_DIRECTORY_FILE and opts & c.FILE_NON_DIRECTORY_FILE
        ):
            raise SMBError(st.STATUS_INVALID_PARAMETER, "bad CreateOptions")
        if opts & CREATE_OPTIONS_NOT_SUPPORTED:
            raise SMBError(st.STATUS_NOT_SUPPORTED, "open by file id, tree connection or opfilter")
        if body.desired_access == 0 or body.desired_access & ACCESS_INVALID:
            # MS-SMB2 3.3.5.9: the bits of 0x0CE0FE00 are refused.
            raise SMBError(st.STATUS_ACCESS_DENIED, "bad DesiredAccess")
        if body.file_attributes & FILE_ATTRIBUTES_INVALID:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "bad FileAttributes")
        if body.file_attributes & c.FILE_ATTRIBUTE_ENCRYPTED:
            # EFS: a standalone server does not encrypt files (Samba answers the same).
            raise SMBError(st.STATUS_ACCESS_DENIED, "encrypted files are not served")
        desired = _generic(body.desired_access)
        if desired & c.ACCESS_SYSTEM_SECURITY:
            raise SMBError(st.STATUS_PRIVILEGE_NOT_HELD, "SACL access")
        if opts & c.FILE_DELETE_ON_CLOSE and not desired & (c.DELETE | c.MAXIMUM_ALLOWED):
            raise SMBError(st.STATUS_INVALID_PARAMETER, "delete-on-close without DELETE access")
        if opts & c.FILE_DELETE_ON_CLOSE and body.file_attributes & c.FILE_ATTRIBUTE_READONLY:
            raise SMBError(st.STATUS_CANNOT_DELETE, "delete-on-close of a read-only file")
        if len(conn.opens) >= MAX_OPENS:
            raise SMBError(st.STATUS_INSUFFICIENT_RESOURCES, "too many opens")
        contexts = self._contexts(body.contexts)
        if tree.ipc:
            return await self._create_pipe(conn, req, body)
        caller = tree.caller
        vfs = self.vfs
        parts = split_name(body.name)
        root = tree.export.root_ino
        if not parts:
            parent_ino: int | None = None
            leaf = b""
            existing: Attributes | None = await vfs.getattr(caller, root)
        else:
            parent, dir_parts = await self.resolve_dir(caller, parts[:-1])
            parent_ino = parent.ino
            existing, leaf = await self._lookup(caller, parent_ino, parts[-1], dir_parts)
            parts = [*dir_parts, leaf]
        path = "\\".join(p.decode("utf-8", "surrogatepass") for p in parts)
        disp = body.disposition
        action = c.FILE_OPENED
        created = False
        overwrite = False
        if existing is None:
            if disp in (c.FILE_OPEN, c.FILE_OVERWRITE):
                raise SMBError(st.STATUS_OBJECT_NAME_NOT_FOUND, "no such file")
            assert parent_ino is not None
            try:
                if opts & c.FILE_DIRECTORY_FILE:
                    a = await vfs.mkdir(caller, parent_ino, leaf, 0o755)
                else:
                    a = await vfs.create(caller, parent_ino, leaf, 0o644, exclusive=True)
                created = True
                action = c.FILE_CREATED
            except errors.Exists:
                if disp == c.FILE_CREATE:
                    raise SMBError(st.STATUS_OBJECT_NAME_COLLISION) from None
                found, leaf = await self._lookup(caller, parent_ino, leaf, parts[:-1])
                if found is None:
                    raise SMBError(st.STATUS_OBJECT_NAME_COLLISION) from None
                a = found
        else:
            a = existing
            if disp == c.FILE_CREATE:
                raise SMBError(st.STATUS_OBJECT_NAME_COLLISION, "name exists")
            overwrite = disp in (c.FILE_SUPERSEDE, c.FILE_OVERWRITE, c.FILE_OVERWRITE_IF)
        if a.is_dir and opts & c.FILE_NON_DIRECTORY_FILE:
            raise SMBError(st.STATUS_FILE_IS_A_DIRECTORY)
        if not a.is_dir and opts & c.FILE_DIRECTORY_FILE:
            raise SMBError(st.STATUS_NOT_A_DIRECTORY)
        if a.is_dir and overwrite:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "overwrite of a directory")
        if not (a.is_dir or a.is_reg):
            raise SMBError(st.STATUS_ACCESS_DENIED, "not a regular file or directory")
        node = self.nodes.get(a.ino)
        if node is not None and node.delete_pending and not created:
            raise SMBError(st.STATUS_DELETE_PENDING)
        stored = None if created else await self.stored_dos(caller, a.ino)
        maximal = await self.maximal_access(caller, a, parent_ino)
        if created:
            maximal |= c.FILE_ALL_ACCESS & ~(c.MODIFY_ACCESS if caller.read_only else 0)
        if desired & c.MAXIMUM_ALLOWED:
            granted = maximal | (desired & ~c.MAXIMUM_ALLOWED & maximal)
        else:
            if desired & ~maximal & c.FILE_ALL_ACCESS:
                raise SMBError(st.STATUS_ACCESS_DENIED, "access not granted")
            granted = desired
        if overwrite and not maximal & c.FILE_WRITE_DATA:
            raise SMBError(st.STATUS_ACCESS_DENIED, "overwrite without write access")
        if overwrite and stored is not None:
            # MS-FSA 2.1.5.1.2.1: overwriting a hidden or system file must say so.
            keep = stored & (c.FILE_ATTRIBUTE_HIDDEN | c.FILE_ATTRIBUTE_SYSTEM)
            if keep & ~body.file_attributes:
                raise SMBError(st.STATUS_ACCESS_DENIED, "overwrite drops HIDDEN or SYSTEM")
        if (
            stored is not None
            and stored & c.FILE_ATTRIBUTE_READONLY
            and not a.is_dir
            and (desired & (c.FILE_WRITE_DATA | c.FILE_APPEND_DATA) or overwrite)
        ):
            raise SMBError(st.STATUS_ACCESS_DENIED, "file is read-only")
        if opts & c.FILE_DELETE_ON_CLOSE:
            if not granted & c.DELETE:
                raise SMBError(st.STATUS_ACCESS_DENIED, "delete-on-close without DELETE")
            if stored is not None and stored & c.FILE_ATTRIBUTE_READONLY:
                raise SMBError(st.STATUS_CANNOT_DELETE, "read-only file")
        fid = (self.factory.new_file_id(), 0)
        fid = (fid[0], fid[0])
        owner = self._owner(conn, fid)
        token = None
        locks = self.locks
        acc, deny = _share_modes(granted, body.share_access)
        if locks is not None and acc:
            try:
                token = locks.open_share(a.ino, owner, acc, deny)
            except (errors.ShareConflict, errors.Grace):
                if created:
                    await self._undo_create(caller, parent_ino, leaf, a)
                raise SMBError(st.STATUS_SHARING_VIOLATION) from None
        dos = stored
        try:
            if overwrite:
                a = await vfs.setattr(
                    caller,
                    a.ino,
                    SetAttrs(size=0),
                    origin=Origin(owner=owner, share=token, strict=True),
                )
                action = c.FILE_SUPERSEDED if disp == c.FILE_SUPERSEDE else c.FILE_OVERWRITTEN
                dos = (
                    body.file_attributes & ~c.FILE_ATTRIBUTE_SPARSE_FILE
                ) | c.FILE_ATTRIBUTE_ARCHIVE
                await self._set_dos(caller, a.ino, dos)
            elif (
                created
                and body.file_attributes & c.STORED_ATTRIBUTES & ~c.FILE_ATTRIBUTE_SPARSE_FILE
            ):
                # (SPARSE_FILE is FSCTL_SET_SPARSE's to set, as on Windows.)
                dos = body.file_attributes & ~c.FILE_ATTRIBUTE_SPARSE_FILE
                if not a.is_dir:
                    dos |= c.FILE_ATTRIBUTE_ARCHIVE
                await self._set_dos(caller, a.ino, dos)
            if created or overwrite:
                ea = contexts.get(c.SMB2_CREATE_EA_BUFFER)
                if ea:
                    await self._set_eas(caller, a.ino, ea)
                sd = contexts.get(c.SMB2_CREATE_SD_BUFFER)
                if sd:
                    a = await self._apply_security(
                        caller,
                        a,
                        sd,
                        c.OWNER_SECURITY_INFORMATION
                        | c.GROUP_SECURITY_INFORMATION
                        | c.DACL_SECURITY_INFORMATION,
                    )
            if created or overwrite:
                a = await vfs.getattr(caller, a.ino)
            st_ = Stat(a, dos_attributes(a, dos, leaf))
        except BaseException:
            if token is not None:
                locks.close_share(token)
            raise
        if node is None:
            node = FileNode(a.ino, parent_ino or 0, leaf, path)
            self.nodes[a.ino] = node
        op = Open(
            fid,
            req.session,
            tree,
            node,
            a.is_dir,
            granted,
            lock_owner=owner,
            share=token,
            delete_on_close=bool(opts & c.FILE_DELETE_ON_CLOSE),
            write_through=bool(opts & c.FILE_WRITE_THROUGH),
            mode=opts & c.FILE_MODE_SETTABLE,
        )
        node.opens.add(op)
        conn.opens[fid[1]] = op
        req.result_file_id = fid
        answers: list[CreateContext] = []
        if c.SMB2_CREATE_QUERY_MAXIMAL_ACCESS_REQUEST in contexts:
            answers.append(
                CreateContext(
                    c.SMB2_CREATE_QUERY_MAXIMAL_ACCESS_REQUEST, struct.pack("<II", 0, maximal)
                )
            )
        if c.SMB2_CREATE_QUERY_ON_DISK_ID in contexts:
            volume = tree.export.id
            answers.append(
                CreateContext(
                    c.SMB2_CREATE_QUERY_ON_DISK_ID, struct.pack("<QQ16s", a.ino, volume, b"")
                )
            )
        self._log.debug(
            "smb create {action} ino={ino}", action=action, ino=a.ino, conn_id=conn.conn_id
        )
        return pack_create_response(action, file_times(st_), fid, answers)

    @property
    def case(self) -> CaseIndex:
        if self._case is None:
            self._case = CaseIndex(self.vfs)
        return self._case

    async def lookup_name(
        self, caller: Caller, dir_ino: int, name: bytes
    ) -> tuple[Attributes, bytes]:
        """
        An entry of C{dir_ino} matched case-insensitively (see
        L{claudefs_gateway.smb.names}), and its stored name.

        @raise NotFound: no entry matches.
        """
        vfs = self.vfs
        try:
            return await vfs.lookup(caller, dir_ino, name), name
        except errors.NotFound:
            real = await self.case.find(caller, dir_ino, name)
            if real is None or real == name:
                raise
            return await vfs.lookup(caller, dir_ino, real), real

    async def resolve_dir(
        self, caller: Caller, parts: list[bytes]
    ) -> tuple[Attributes, list[bytes]]:
        """
        The directory C{parts} names from the share's root, case-insensitively,
        and the components as stored.

        @raise SMBError: STATUS_OBJECT_PATH_NOT_FOUND if a component is missing
            or not a directory.
        """
        vfs = self.vfs
        try:
            a = await vfs.resolve(caller, b"/".join(parts))
            found = parts
        except errors.NotFound:
            found = []
            a = None
            for part in parts:
                try:
                    a = await vfs.resolve(caller, b"/".join([*found, part]))
                    found.append(part)
                    continue
                except errors.NotFound:
                    pass
                except (errors.NotDir, errors.Loop):
                    break
                here = await vfs.resolve(caller, b"/".join(found))
                real = await self.case.find(caller, here.ino, part) if here.is_dir else None
                if real is None:
                    raise SMBError(st.STATUS_OBJECT_PATH_NOT_FOUND, "parent not found") from None
                a = await vfs.resolve(caller, b"/".join([*found, real]))
                found.append(real)
            if a is None or len(found) != len(parts):
                raise SMBError(st.STATUS_OBJECT_PATH_NOT_FOUND, "parent not found") from None
        except (errors.NotDir, errors.Loop):
            raise SMBError(st.STATUS_OBJECT_PATH_NOT_FOUND, "parent not found") from None
        if a is None or not a.is_dir:
            raise SMBError(st.STATUS_OBJECT_PATH_NOT_FOUND, "parent is not a directory")
        return a, found

    async def _lookup(
        self, caller: Caller, parent: int, leaf: bytes, dir_parts: list[bytes]
    ) -> tuple[Attributes | None, bytes]:
        """
        The entry C{leaf} of C{parent} (case-insensitively), symbolic links
        followed, and its stored name; None if absent.

        @raise SMBError: a dangling link (STATUS_OBJECT_NAME_NOT_FOUND).
        """
        vfs = self.vfs
        try:
            a, leaf = await self.lookup_name(caller, parent, leaf)
        except errors.NotFound:
            return None, leaf
        if a.is_link:
            try:
                a = await vfs.resolve(caller, b"/".join([*dir_parts, leaf]))
            except (errors.NotFound, errors.Loop):
                raise SMBError(st.STATUS_OBJECT_NAME_NOT_FOUND, "dangling link") from None
        return a, leaf

    async def _undo_create(
        self, caller: Caller, parent: int | None, leaf: bytes, a: Attributes
    ) -> None:
        if parent is None:
            return
        try:
            if a.is_dir:
                await self.vfs.rmdir(caller, parent, leaf)
            else:
                await self.vfs.remove(caller, parent, leaf)
        except errors.FSError:
            self._log.failure("smb: could not undo a create")

    def _contexts(self, contexts: tuple[CreateContext, ...]) -> dict[bytes, bytes]:
        """
        The create contexts we act on, checked; refuse the ones we know and do
        not serve; ignore the ones we do not know (MS-SMB2 3.3.5.9) and the
        requests for durability and leases (granting none is a valid answer).
        """
        out: dict[bytes, bytes] = {}
        for ctx in contexts:
            name = ctx.name
            if name in out:
                raise SMBError(st.STATUS_INVALID_PARAMETER, "duplicate create context")
            if name == c.SMB2_CREATE_TIMEWARP_TOKEN:
                raise SMBError(st.STATUS_NOT_SUPPORTED, "previous versions are not served")
            if name in (
                c.SMB2_CREATE_DURABLE_HANDLE_RECONNECT,
                c.SMB2_CREATE_DURABLE_HANDLE_RECONNECT_V2,
            ):
                raise SMBError(st.STATUS_OBJECT_NAME_NOT_FOUND, "no durable handle to reconnect")
            if name == c.SVHDX_OPEN_DEVICE_CONTEXT:
                raise SMBError(st.STATUS_NOT_SUPPORTED, "virtual disks are not served")
            if name == c.SMB2_CREATE_QUERY_MAXIMAL_ACCESS_REQUEST and len(ctx.data) not in (0, 8):
                raise SMBError(st.STATUS_INVALID_PARAMETER, "MxAc context size")
            if name == c.SMB2_CREATE_ALLOCATION_SIZE and len(ctx.data) != 8:
                raise SMBError(st.STATUS_INVALID_PARAMETER, "AlSi context size")
            if name == c.SMB2_CREATE_EA_BUFFER:
                try:
                    _ea_entries(ctx.data)
                except ProtocolError:
                    raise SMBError(st.STATUS_INVALID_PARAMETER, "bad EA context") from None
            out[name] = ctx.data
        return out

    async def _create_pipe(self, conn: Any, req: Request, body: CreateRequest) -> bytes:
        name = body.name.lower().lstrip("\\")
        if name.startswith("pipe\\"):
            name = name[5:]
        if name != "srvsvc":
            raise SMBError(st.STATUS_OBJECT_NAME_NOT_FOUND, "no such pipe")
        fid = (self.factory.new_file_id(), 0)
        fid = (fid[0], fid[0])
        assert req.session is not None and req.tree is not None
        pipe = Pipe(
            name,
            Srvsvc(self._share_list, self.factory.computer, "claudefs-gateway"),
        )
        op = Open(
            fid, req.session, req.tree, None, False, c.FILE_GENERIC_READ | c.FILE_GENERIC_WRITE
        )
        op.pipe = pipe
        conn.opens[fid[1]] = op
        req.result_file_id = fid
        times = FileTimes(0, 0, 0, 0, 4096, 0, c.FILE_ATTRIBUTE_NORMAL)
        return pack_create_response(c.FILE_OPENED, times, fid, [])

    def _share_list(self) -> list[Share]:
        shares = [
            Share(e.name, STYPE_DISKTREE, "", "C:" + e.path.replace("/", "\\"))
            for e in self.vfs.exports.for_protocol("smb")
            if e.rules.browseable
        ]
        shares.append(Share("IPC$", STYPE_IPC | STYPE_SPECIAL, "IPC Service (claudefs-gateway)"))
        return shares

    # -- CLOSE ---------------------------------------------------------------------------------

    async def smb_CLOSE(self, conn: Any, req: Request) -> bytes:
        body = CloseRequest.parse(req.raw)
        op = self.lookup_open(conn, req, body.file_id)
        ino = op.node.ino if op.node is not None else None
        caller = op.tree.caller
        await self.close(conn, op)
        if not body.flags & c.SMB2_CLOSE_FLAG_POSTQUERY_ATTRIB or ino is None:
            return pack_close_response(0, None)
        try:
            a = await self.vfs.getattr(caller, ino)
            if a.nlink == 0:
                raise errors.NotFound("deleted")
        except errors.FSError:
            return pack_close_response(0, None)
        st_ = await self.stat(caller, a)
        return pack_close_response(c.SMB2_CLOSE_FLAG_POSTQUERY_ATTRIB, file_times(st_))

    async def close(self, conn: Any, op: Open) -> None:
        """End an open: its watch, locks and share reservation; the file's deletion if pending."""
        if op.closed:
            return
        op.closed = True
        conn.opens.pop(op.file_id[1], None)
        if op.resume_key:
            self.resume_keys.pop(op.resume_key, None)
        if op.watch is not None:
            self._end_watch(conn, op)
        if op.lock_owner is not None:
            self.locks.release_owner(op.lock_owner)
        node = op.node
        if node is None:
            return
        node.opens.discard(op)
        if op.delete_on_close:
            node.delete_pending = True
        if node.opens:
            return
        if self.nodes.get(node.ino) is node:
            del self.nodes[node.ino]
        if node.delete_pending and node.name:
            caller = op.tree.caller
            try:
                if op.is_dir:
                    await self.vfs.rmdir(caller, node.parent, node.name)
                else:
                    await self.vfs.remove(caller, node.parent, node.name)
            except errors.FSError as e:
                self._log.info("smb: delete on close failed: {why}", why=str(e))

    def close_quietly(self, conn: Any, op: Open) -> None:
        d = defer.Deferred.fromCoroutine(self.close(conn, op))
        d.addErrback(lambda f: self._log.failure("smb: closing an open failed", f))

    # -- READ, WRITE, FLUSH ------------------------------------------------------------------------

    async def smb_READ(self, conn: Any, req: Request) -> Reply | bytes:
        body = ReadRequest.parse(req.raw)
        op = self.lookup_open(conn, req, body.file_id)
        if body.length > self.factory.max_io:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "read larger than MaxReadSize")
        if op.pipe is not None:
            data = op.pipe.read(body.length)
            if not data:
                raise SMBError(STATUS_PIPE_EMPTY)
            status = st.STATUS_BUFFER_OVERFLOW if op.pipe.pending else 0
            return Reply(pack_read_response_header(len(data)) + data, status)
        if op.is_dir:
            raise SMBError(st.STATUS_INVALID_DEVICE_REQUEST, "read of a directory")
        if not op.access & (c.FILE_READ_DATA | c.FILE_EXECUTE):
            raise SMBError(st.STATUS_ACCESS_DENIED, "no read access")
        if body.offset + body.length > 2**63 - 1:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "read past the largest offset")
        try:
            result = await self.vfs.read(
                op.tree.caller, op.ino, body.offset, body.length, op.origin
            )
        except errors.LockConflict:
            raise SMBError(st.STATUS_FILE_LOCK_CONFLICT) from None
        data = result.data
        if (body.length and not data) or len(data) < body.minimum:
            raise SMBError(st.STATUS_END_OF_FILE)
        return pack_read_response_header(len(data)) + data

    async def smb_WRITE(self, conn: Any, req: Request) -> bytes:
        body = WriteRequest.parse(req.raw)
        op = self.lookup_open(conn, req, body.file_id)
        length = len(body.data)
        if length > self.factory.max_io:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "write larger than MaxWriteSize")
        if op.pipe is not None:
            try:
                op.pipe.write(bytes(body.data))
            except ProtocolError:
                raise SMBError(st.STATUS_INVALID_PARAMETER, "bad DCE/RPC PDU") from None
            return pack_write_response(length)
        if op.is_dir:
            raise SMBError(st.STATUS_INVALID_DEVICE_REQUEST, "write to a directory")
        offset = body.offset
        caller = op.tree.caller
        if not op.access & c.FILE_WRITE_DATA:
            if not op.access & c.FILE_APPEND_DATA:
                raise SMBError(st.STATUS_ACCESS_DENIED, "no write access")
            # An append-only open writes at the end whatever the offset
            # (MS-SMB2 3.3.5.13 spells it 0xFFFFFFFFFFFFFFFF).
            offset = (await self.vfs.getattr(caller, op.ino)).size
        if offset + length > 2**63 - 1:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "write past the largest offset")
        stable = op.write_through or bool(body.flags & c.SMB2_WRITEFLAG_WRITE_THROUGH)
        if length:
            try:
                await self.vfs.write(caller, op.ino, offset, bytes(body.data), stable, op.origin)
            except errors.LockConflict:
                raise SMBError(st.STATUS_FILE_LOCK_CONFLICT) from None
        return pack_write_response(length)

    async def smb_FLUSH(self, conn: Any, req: Request) -> bytes:
        body = FileIdRequest.parse(req.raw)
        op = self.lookup_open(conn, req, body.file_id)
        if op.pipe is not None:
            return SIMPLE_BODY
        if not op.access & (c.FILE_WRITE_DATA | c.FILE_APPEND_DATA):
            raise SMBError(st.STATUS_ACCESS_DENIED, "flush without write access")
        if not op.is_dir:
            await self.vfs.commit(op.tree.caller, op.ino)
        return SIMPLE_BODY

    # -- LOCK ----------------------------------------------------------------------------------------

    async def smb_LOCK(self, conn: Any, req: Request) -> bytes:
        """
        LOCK (MS-SMB2 3.3.5.14) on the vfs lock table, Windows owners (one per
        open). Unlock arrays are applied element by element, so an error
        leaves the earlier ones unlocked; lock arrays are all or nothing.
        """
        body = LockRequest.parse(req.raw)
        op = self.lookup_open(conn, req, body.file_id)
        if op.pipe is not None or op.is_dir:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "LOCK on a directory or pipe")
        locks = self.locks
        if locks is None:
            raise SMBError(st.STATUS_NOT_SUPPORTED, "byte-range locks need the vfs lock manager")
        elems = body.locks
        if elems[0].flags == c.SMB2_LOCKFLAG_UNLOCK:
            for e in elems:
                if e.flags != c.SMB2_LOCKFLAG_UNLOCK:
                    raise SMBError(st.STATUS_INVALID_PARAMETER, "lock in an unlock array")
                self._unlock(locks, op, e.offset, e.length)
            return SIMPLE_BODY
        for e in elems:
            kind = e.flags & ~c.SMB2_LOCKFLAG_FAIL_IMMEDIATELY
            if kind not in (c.SMB2_LOCKFLAG_SHARED_LOCK, c.SMB2_LOCKFLAG_EXCLUSIVE_LOCK):
                raise SMBError(st.STATUS_INVALID_PARAMETER, "bad lock flags")
            if len(elems) > 1 and not e.flags & c.SMB2_LOCKFLAG_FAIL_IMMEDIATELY:
                raise SMBError(st.STATUS_INVALID_PARAMETER, "blocking lock in a lock array")
            if e.length and e.offset + e.length > 2**64:
                raise SMBError(STATUS_INVALID_LOCK_RANGE)
        taken: list[tuple[int, int, bool]] = []
        try:
            for e in elems:
                exclusive = bool(e.flags & c.SMB2_LOCKFLAG_EXCLUSIVE_LOCK)
                wait = not e.flags & c.SMB2_LOCKFLAG_FAIL_IMMEDIATELY
                await self._lock(conn, req, locks, op, e.offset, e.length, exclusive, wait)
                taken.append((e.offset, e.length, exclusive))
        except BaseException as e:
            for off, length, _x in reversed(taken):
                try:
                    self._unlock(locks, op, off, length)
                except SMBError:
                    pass
            if isinstance(e, defer.CancelledError) and op.closed:
                # MS-SMB2 3.3.5.14: closing the handle ends its pending lock so.
                raise SMBError(
                    st.STATUS_RANGE_NOT_LOCKED, "the open closed while waiting"
                ) from None
            raise
        return SIMPLE_BODY

    async def _lock(
        self,
        conn: Any,
        req: Request,
        locks: ILockTable,
        op: Open,
        offset: int,
        length: int,
        exclusive: bool,
        wait: bool,
    ) -> None:
        """
        One lock. The table's length 0 means "to EOF", so SMB's zero-length
        locks stay with their open here; they conflict only with a lock
        strictly around their offset (MS-FSA 2.1.4.10; smbtorture
        smb2.lock.zerobytelength), and such locks of other protocols do not
        see them.
        """
        ino = op.ino
        if length == 0:
            for held in locks.locks(ino):
                if held.start < offset < held.end and self._zero_conflict(
                    held.owner == op.lock_owner, held.exclusive, exclusive
                ):
                    raise SMBError(st.STATUS_LOCK_NOT_GRANTED)
            op.zero_locks.append((offset, exclusive))
            return
        end = offset + length
        node = op.node
        assert node is not None
        for other in node.opens:
            for z, zx in other.zero_locks:
                if offset < z < end and self._zero_conflict(other is op, zx, exclusive):
                    raise SMBError(st.STATUS_LOCK_NOT_GRANTED)
        if op.lock_owner is None:
            raise SMBError(st.STATUS_INVALID_DEVICE_REQUEST, "no byte-range locks here")
        d = locks.lock(ino, op.lock_owner, offset, length, exclusive, wait=wait)
        if wait:
            d = conn.go_async(req, d)
        await d

    @staticmethod
    def _zero_conflict(same_open: bool, held_exclusive: bool, exclusive: bool) -> bool:
        # Windows owners: another open's locks conflict unless both are shared;
        # one's own only refuse a new exclusive lock.
        return exclusive if same_open else (held_exclusive or exclusive)

    def _unlock(self, locks: ILockTable, op: Open, offset: int, length: int) -> None:
        """Unlock exactly one lock of C{op}. @raise SMBError: STATUS_RANGE_NOT_LOCKED."""
        if length == 0:
            for i, (z, _x) in sorted(enumerate(op.zero_locks), key=lambda p: not p[1][1]):
                if z == offset:
                    del op.zero_locks[i]
                    return
            raise SMBError(st.STATUS_RANGE_NOT_LOCKED)
        if op.lock_owner is None:
            raise SMBError(st.STATUS_RANGE_NOT_LOCKED)
        try:
            locks.unlock(op.ino, op.lock_owner, offset, length)
        except (errors.NoLock, errors.Inval):
            raise SMBError(st.STATUS_RANGE_NOT_LOCKED) from None

    # -- QUERY_DIRECTORY ------------------------------------------------------------------------

    async def smb_QUERY_DIRECTORY(self, conn: Any, req: Request) -> Reply | bytes:
        body = QueryDirectoryRequest.parse(req.raw)
        op = self.lookup_open(conn, req, body.file_id)
        if not op.is_dir or op.pipe is not None:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "QUERY_DIRECTORY on a file")
        if body.info_class not in DIRECTORY_CLASSES:
            raise SMBError(st.STATUS_INVALID_INFO_CLASS)
        if not op.access & c.FILE_LIST_DIRECTORY:
            raise SMBError(st.STATUS_ACCESS_DENIED, "no list access")
        limit = min(body.output_length, self.factory.max_io)
        if limit == 0:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "zero OutputBufferLength")
        pattern = body.pattern or "*"
        if len(pattern) > 255:
            raise SMBError(st.STATUS_OBJECT_NAME_INVALID)
        scan = op.scan
        if scan is None or body.flags & (c.SMB2_RESTART_SCANS | c.SMB2_REOPEN):
            scan = op.scan = DirScan(pattern=pattern)
        elif not scan.started:
            scan.pattern = pattern
        single = bool(body.flags & c.SMB2_RETURN_SINGLE_ENTRY)
        caller = op.tree.caller
        out = bytearray()
        last_start = -1
        count = 0
        while True:
            if not scan.buffered:
                if not await self._fill(caller, op, scan):
                    break
            name, st_ = scan.buffered[0]
            entry = pack_dir_entry(body.info_class, st_, name)
            start = (len(out) + 7) & ~7
            if start + len(entry) > limit:
                if count == 0:
                    raise SMBError(st.STATUS_INFO_LENGTH_MISMATCH, "buffer too small for one entry")
                break
            scan.buffered.popleft()
            if last_start >= 0:
                out += b"\x00" * (start - len(out))
                struct.pack_into("<I", out, last_start, start - last_start)
            last_start = len(out)
            out += entry
            count += 1
            if single:
                break
        if count == 0:
            first = not scan.returned_any
            scan.returned_any = True
            raise SMBError(st.STATUS_NO_SUCH_FILE if first else st.STATUS_NO_MORE_FILES)
        scan.returned_any = True
        return bytes(pack_buffer_response(bytes(out)))

    async def _fill(self, caller: Caller, op: Open, scan: DirScan) -> bool:
        """Buffer the next matching entries; False at the end of the directory."""
        vfs = self.vfs
        assert op.node is not None
        ino = op.node.ino
        scan.started = True
        if not scan.dots_done:
            scan.dots_done = True
            if pattern_matcher(scan.pattern) is not None and not any(
                ch in scan.pattern for ch in '*?<>"'
            ):
                # An exact name: one lookup instead of a scan (Windows asks this way a lot).
                scan.eof = True
                name = scan.pattern
                if name in (".", ".."):
                    pass
                else:
                    try:
                        a, raw = await self.lookup_name(
                            caller, ino, name.encode("utf-8", "surrogatepass")
                        )
                    except (errors.NotFound, errors.NameTooLong, errors.Inval):
                        return False
                    name = raw.decode("utf-8", "surrogatepass")
                    if a.is_link:
                        target = await self._follow(caller, op, raw)
                        if target is None:
                            return False
                        a = target
                    scan.buffered.append((name, await self.stat(caller, a, raw)))
                    return True
            here = await vfs.getattr(caller, ino)
            up = await vfs.lookup(caller, ino, b"..")
            for name, dot in ((".", here), ("..", up)):
                if matches(scan.pattern, name):
                    scan.buffered.append((name, await self.stat(caller, dot)))
            if scan.buffered:
                return True
        while not scan.buffered:
            if scan.eof:
                return False
            try:
                page = await vfs.readdir(caller, ino, scan.cookie, scan.verifier, 256, True)
            except errors.BadCookie:
                # The directory changed under us: start over after what we had (best effort).
                scan.cookie, scan.verifier = 0, b"\x00" * 8
                page = await vfs.readdir(caller, ino, 0, scan.verifier, 256, True)
            scan.verifier = page.verifier
            scan.eof = page.eof
            for e in page.entries:
                scan.cookie = e.cookie
                decoded = _decode(e.name)
                if decoded is None or not matches(scan.pattern, decoded):
                    continue
                if e.attrs is not None:
                    a = e.attrs
                else:
                    try:
                        a = await vfs.getattr(caller, e.ino)
                    except errors.NotFound:
                        continue
                if a.is_link:
                    target = await self._follow(caller, op, e.name)
                    if target is None:
                        continue
                    a = target
                scan.buffered.append((decoded, await self.stat(caller, a, e.name)))
            if not page.entries and not page.eof:
                return False
        return True

    async def _follow(self, caller: Caller, op: Open, name: bytes) -> Attributes | None:
        """
        The attributes of what a symbolic link in the open directory points to
        (None if it dangles): SMB clients see the target, as Samba shows them.
        """
        assert op.node is not None
        base = op.node.path.replace("\\", "/").encode("utf-8", "surrogatepass")
        try:
            a: Attributes = await self.vfs.resolve(caller, base + b"/" + name)
        except errors.FSError:
            return None
        return a

    # -- CHANGE_NOTIFY ------------------------------------------------------------------------------

    async def smb_CHANGE_NOTIFY(self, conn: Any, req: Request) -> Reply | bytes:
        body = ChangeNotifyRequest.parse(req.raw)
        op = self.lookup_open(conn, req, body.file_id)
        if not op.is_dir or op.pipe is not None:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "CHANGE_NOTIFY on a file")
        if not op.access & c.FILE_LIST_DIRECTORY:
            raise SMBError(st.STATUS_ACCESS_DENIED)
        if body.completion_filter == 0:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "empty CompletionFilter")
        watch = op.watch
        if body.output_length > self.factory.max_io:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "OutputBufferLength over MaxTransactSize")
        if watch is None:
            # Windows fixes the filter, the tree flag and the buffer at the first
            # request on a handle (smbtorture smb2.notify.valid-req, mask-change).
            watch = op.watch = Watch(tree=bool(body.flags & c.SMB2_WATCH_TREE))
            watch.filter = body.completion_filter
            watch.limit = body.output_length
            watch.unsubscribe = self.vfs.events.subscribe(
                None if watch.tree else op.ino, lambda change: self._changed(conn, op, change)
            )
        if len(watch.waiting) >= 16:
            raise SMBError(st.STATUS_INSUFFICIENT_RESOURCES, "too many waiting notifies")
        limit = min(body.output_length, watch.limit)
        if watch.changes or watch.overflow:
            return self._notify_reply(watch, limit)
        d: defer.Deferred[Reply] = defer.Deferred(lambda d: self._notify_cancelled(watch, d))
        watch.waiting.append((d, limit))
        return await conn.go_async(req, d)

    def _notify_cancelled(self, watch: Watch, d: defer.Deferred[Any]) -> None:
        watch.waiting = type(watch.waiting)(w for w in watch.waiting if w[0] is not d)

    def _notify_reply(self, watch: Watch, limit: int) -> Reply:
        if watch.overflow:
            watch.overflow = False
            watch.changes.clear()
            return Reply(pack_buffer_response(b""), st.STATUS_NOTIFY_ENUM_DIR)
        out = bytearray()
        last = -1
        for action, name in watch.changes:
            raw = name.encode("utf-16-le")
            entry = struct.pack("<III", 0, action, len(raw)) + raw
            start = (len(out) + 3) & ~3
            if last >= 0:
                out += b"\x00" * (start - len(out))
                struct.pack_into("<I", out, last, start - last)
            last = len(out)
            out += entry
        watch.changes.clear()
        if len(out) > limit:
            return Reply(pack_buffer_response(b""), st.STATUS_NOTIFY_ENUM_DIR)
        return Reply(pack_buffer_response(bytes(out)))

    def _changed(self, conn: Any, op: Open, change: Change) -> None:
        watch = op.watch
        if watch is None or op.closed:
            return
        if change.action in (Action.REMOVED, Action.RENAMED_FROM):
            self._parents.pop(change.ino, None)
        if change.dir == op.ino:
            self._queue_change(conn, op, watch, change)
            return
        if watch.tree:
            d = defer.Deferred.fromCoroutine(self._descendant(op, change.dir))
            d.addCallback(
                lambda inside: self._queue_change(conn, op, watch, None) if inside else None
            )
            d.addErrback(lambda f: self._log.failure("smb: notify ancestry", f))

    async def _descendant(self, op: Open, dir_ino: int) -> bool:
        """Whether C{dir_ino} lies under the watched directory (walking up, cached)."""
        vfs = self.vfs
        caller = op.tree.caller
        root = op.tree.export.root_ino
        cur = dir_ino
        for _ in range(64):
            if cur == op.ino:
                return True
            if cur == root:
                return False
            parent = self._parents.get(cur)
            if parent is None:
                try:
                    parent = (await vfs.lookup(caller, cur, b"..")).ino
                except errors.FSError:
                    return False
                self._parents[cur] = parent
                if len(self._parents) > 4096:
                    self._parents.popitem(last=False)
            if parent == cur:
                return False
            cur = parent
        return False

    def _queue_change(self, conn: Any, op: Open, watch: Watch, change: Change | None) -> None:
        if change is None:
            watch.overflow = True  # a change below: clients re-read the tree
        else:
            action = {
                Action.ADDED: c.FILE_ACTION_ADDED,
                Action.REMOVED: c.FILE_ACTION_REMOVED,
                Action.MODIFIED: c.FILE_ACTION_MODIFIED,
                Action.RENAMED_FROM: c.FILE_ACTION_RENAMED_OLD_NAME,
                Action.RENAMED_TO: c.FILE_ACTION_RENAMED_NEW_NAME,
            }[change.action]
            names = c.FILE_NOTIFY_CHANGE_FILE_NAME | c.FILE_NOTIFY_CHANGE_DIR_NAME
            wanted = names if action != c.FILE_ACTION_MODIFIED else _notify_bits(change.what)
            if not watch.filter & wanted:
                return
            name = _decode(change.name)
            if name is None:
                return
            if watch.changes and watch.changes[-1] == (action, name):
                return  # one write after another: one "modified" is enough
            if len(watch.changes) >= MAX_NOTIFY_QUEUE:
                watch.overflow = True
            else:
                watch.changes.append((action, name))
        if watch.waiting:
            # Answered at once; what changes meanwhile waits for the next request
            # (as Windows does: smbtorture smb2.notify.valid-req).
            d, limit = watch.waiting.popleft()
            d.callback(self._notify_reply(watch, limit))

    def _end_watch(self, conn: Any, op: Open) -> None:
        watch = op.watch
        op.watch = None
        if watch is None:
            return
        if watch.unsubscribe is not None:
            watch.unsubscribe()
        while watch.waiting:
            d, _ = watch.waiting.popleft()
            d.callback(Reply(pack_buffer_response(b""), st.STATUS_NOTIFY_CLEANUP))

    # -- QUERY_INFO ----------------------------------------------------------------------------------

    async def smb_QUERY_INFO(self, conn: Any, req: Request) -> Reply | bytes:
        body = QueryInfoRequest.parse(req.raw)
        op = self.lookup_open(conn, req, body.file_id)
        limit = min(body.output_length, self.factory.max_io)
        if op.pipe is not None:
            return self._pipe_info(body, limit)
        caller = op.tree.caller
        vfs = self.vfs
        if body.info_type == c.SMB2_0_INFO_FILE:
            if body.info_class == F.FileFullEaInformation:
                return await self._query_eas(op, body, limit)
            if body.info_class in (
                F.FileBasicInformation,
                F.FileAllInformation,
                F.FileNetworkOpenInformation,
                F.FileAttributeTagInformation,
                F.FileEaInformation,
            ):
                if (
                    not op.access & c.FILE_READ_ATTRIBUTES
                    and body.info_class != F.FileEaInformation
                ):
                    raise SMBError(st.STATUS_ACCESS_DENIED)
            a = await vfs.getattr(caller, op.ino)
            assert op.node is not None
            st_ = await self.stat(caller, a, op.node.name)
            ea_size = 0
            if body.info_class in (F.FileEaInformation, F.FileAllInformation):
                ea_size = len(_pack_eas(await self._eas(caller, op.ino)))
            if body.info_class == F.FileNormalizedNameInformation:
                n = conn.negotiated
                if n is None or n.dialect < c.SMB_3_1_1:
                    raise SMBError(st.STATUS_NOT_SUPPORTED, "normalized names are 3.1.1 only")
            if body.info_class == F.FileAlternateNameInformation:
                # No 8.3 short names are made (as on a volume with 8dot3name disabled).
                raise SMBError(st.STATUS_OBJECT_NAME_NOT_FOUND, "no short name")
            state = OpenState(
                op.access, op.position, op.mode, op.node.delete_pending, "\\" + op.node.path
            )
            try:
                data = pack_stat_info(body.info_class, st_, state, ea_size)
            except KeyError:
                raise SMBError(st.STATUS_INVALID_INFO_CLASS) from None
            return self._fit(VARIABLE_FILE_CLASSES.get(body.info_class), data, limit)
        if body.info_type == c.SMB2_0_INFO_FILESYSTEM:
            export = op.tree.export
            vol = Volume(
                export.name,
                export.id,
                self.factory.start_time,
                caller.read_only,
            )
            stats = None
            if body.info_class in (Fs.FileFsSizeInformation, Fs.FileFsFullSizeInformation):
                stats = await vfs.statfs(caller)
            try:
                data = fs_info(body.info_class, vol, stats)
            except KeyError:
                raise SMBError(st.STATUS_INVALID_INFO_CLASS) from None
            return self._fit(VARIABLE_FS_CLASSES.get(body.info_class), data, limit)
        if body.info_type == c.SMB2_0_INFO_SECURITY:
            if not op.access & c.READ_CONTROL:
                raise SMBError(st.STATUS_ACCESS_DENIED)
            if body.additional & c.SACL_SECURITY_INFORMATION:
                raise SMBError(st.STATUS_PRIVILEGE_NOT_HELD, "SACL")
            a = await vfs.getattr(caller, op.ino)
            idmap = self.factory.idmap
            sd = security_descriptor(idmap, a.uid, a.gid, a.mode, a.is_dir, body.additional)
            if len(sd) > limit:
                raise SMBError(
                    st.STATUS_BUFFER_TOO_SMALL, body=error_body(struct.pack("<I", len(sd)))
                )
            return bytes(pack_buffer_response(sd))
        if body.info_type == c.SMB2_0_INFO_QUOTA:
            raise SMBError(st.STATUS_NOT_SUPPORTED, "quota queries")
        raise SMBError(st.STATUS_INVALID_PARAMETER, "bad InfoType")

    def _fit(self, fixed: int | None, data: bytes, limit: int) -> Reply | bytes:
        """
        Fit an answer in the client's buffer (MS-SMB2 3.3.5.20.1): below the
        fixed part (the whole of a fixed-size class, whose C{fixed} is None)
        fails with STATUS_INFO_LENGTH_MISMATCH; a variable class cut short
        after its fixed part is sent with STATUS_BUFFER_OVERFLOW.
        """
        if len(data) <= limit:
            return bytes(pack_buffer_response(data))
        if fixed is None or limit < fixed:
            raise SMBError(st.STATUS_INFO_LENGTH_MISMATCH)
        return Reply(pack_buffer_response(data[:limit]), st.STATUS_BUFFER_OVERFLOW)

    def _pipe_info(self, body: QueryInfoRequest, limit: int) -> Reply | bytes:
        if body.info_type == c.SMB2_0_INFO_FILE and body.info_class == F.FileStandardInformation:
            data = struct.pack("<qqIBBH", 4096, 0, 1, 1, 0, 0)
            return self._fit(None, data, limit)
        raise SMBError(st.STATUS_NOT_SUPPORTED, "pipe information")

    async def _eas(self, caller: Caller, ino: int) -> list[tuple[bytes, bytes]]:
        vfs = self.vfs
        out = []
        try:
            names = await vfs.listxattr(caller, ino)
        except errors.Access:
            return []
        for n in sorted(names):
            if n.startswith(EA_PREFIX) and len(n) - len(EA_PREFIX) <= 255:
                try:
                    out.append((n[len(EA_PREFIX) :], await vfs.getxattr(caller, ino, n)))
                except errors.NoData:
                    continue
        return [(n, v) for n, v in out if len(v) <= 0xFFFF]

    async def _query_eas(self, op: Open, body: QueryInfoRequest, limit: int) -> Reply | bytes:
        if not op.access & c.FILE_READ_EA:
            raise SMBError(st.STATUS_ACCESS_DENIED)
        caller = op.tree.caller
        eas = await self._eas(caller, op.ino)
        if body.input:
            try:
                wanted = _get_ea_names(body.input)
            except ProtocolError:
                raise SMBError(st.STATUS_INVALID_PARAMETER) from None
            have = {n.lower(): (n, v) for n, v in eas}
            eas = [have.get(w.lower(), (w, b"")) for w in wanted]
        elif not eas:
            raise SMBError(st.STATUS_NO_EAS_ON_FILE)
        data = _pack_eas(eas)
        if len(data) > limit:
            raise SMBError(st.STATUS_BUFFER_TOO_SMALL)
        return bytes(pack_buffer_response(data))

    # -- SET_INFO --------------------------------------------------------------------------------------

    async def smb_SET_INFO(self, conn: Any, req: Request) -> bytes:
        body = SetInfoRequest.parse(req.raw)
        op = self.lookup_open(conn, req, body.file_id)
        if op.pipe is not None:
            raise SMBError(st.STATUS_NOT_SUPPORTED, "set information on a pipe")
        caller = op.tree.caller
        buf = body.buffer
        if body.info_type == c.SMB2_0_INFO_SECURITY:
            if body.additional & (c.OWNER_SECURITY_INFORMATION | c.GROUP_SECURITY_INFORMATION):
                if not op.access & c.WRITE_OWNER:
                    raise SMBError(st.STATUS_ACCESS_DENIED)
            if body.additional & c.DACL_SECURITY_INFORMATION and not op.access & c.WRITE_DAC:
                raise SMBError(st.STATUS_ACCESS_DENIED)
            a = await self.vfs.getattr(caller, op.ino)
            await self._apply_security(caller, a, buf, body.additional)
            return b"\x02\x00"
        if body.info_type == c.SMB2_0_INFO_FILESYSTEM:
            raise SMBError(st.STATUS_ACCESS_DENIED, "file system information cannot be set")
        if body.info_type == c.SMB2_0_INFO_QUOTA:
            raise SMBError(st.STATUS_NOT_SUPPORTED)
        if body.info_type != c.SMB2_0_INFO_FILE:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "bad InfoType")
        cls = body.info_class
        handlers: dict[int, Any] = {
            F.FileBasicInformation: self._set_basic,
            F.FileRenameInformation: self._set_rename,
            F.FileLinkInformation: self._set_link,
            F.FileDispositionInformation: self._set_disposition,
            F.FileDispositionInformationEx: self._set_disposition_ex,
            F.FileEndOfFileInformation: self._set_eof,
            F.FileAllocationInformation: self._set_allocation,
            F.FilePositionInformation: self._set_position,
            F.FileModeInformation: self._set_mode,
            F.FileFullEaInformation: self._set_ea_info,
        }
        handler = handlers.get(cls)
        if handler is None:
            if cls in (F.FileShortNameInformation, F.FileValidDataLengthInformation):
                raise SMBError(st.STATUS_NOT_SUPPORTED)
            raise SMBError(st.STATUS_INVALID_INFO_CLASS)
        try:
            await handler(conn, op, buf)
        except ProtocolError:
            raise SMBError(st.STATUS_INVALID_PARAMETER) from None
        except struct.error:
            raise SMBError(st.STATUS_INFO_LENGTH_MISMATCH) from None
        return b"\x02\x00"

    async def _set_basic(self, conn: Any, op: Open, buf: bytes) -> None:
        if len(buf) < 36:
            raise SMBError(st.STATUS_INFO_LENGTH_MISMATCH)
        if not op.access & c.FILE_WRITE_ATTRIBUTES:
            raise SMBError(st.STATUS_ACCESS_DENIED)
        created, accessed, written, _changed, attrs_ = struct.unpack_from("<qqqqI", buf)

        def when(ft: int) -> int | None:
            # 0: leave alone; -1 / -2: stop / resume automatic updates (not kept).
            return None if ft in (0, -1, -2) else from_filetime(ft)

        caller = op.tree.caller
        if attrs_:
            if attrs_ & c.FILE_ATTRIBUTE_DIRECTORY and not op.is_dir:
                raise SMBError(st.STATUS_INVALID_PARAMETER, "DIRECTORY attribute on a file")
            if attrs_ & c.FILE_ATTRIBUTE_TEMPORARY and op.is_dir:
                raise SMBError(st.STATUS_INVALID_PARAMETER, "TEMPORARY attribute on a directory")
            stored = await self.stored_dos(caller, op.ino)
            # SPARSE_FILE is FSCTL_SET_SPARSE's to change, not SET_INFO's.
            keep = (stored or 0) & c.FILE_ATTRIBUTE_SPARSE_FILE
            await self._set_dos(caller, op.ino, (attrs_ & ~c.FILE_ATTRIBUTE_SPARSE_FILE) | keep)
        changes = SetAttrs(atime=when(accessed), mtime=when(written), btime=when(created))
        if not changes.is_empty():
            await self.vfs.setattr(caller, op.ino, changes)

    def _name_info(self, buf: bytes) -> tuple[bool, str]:
        """FILE_RENAME_INFORMATION / FILE_LINK_INFORMATION (SMB2 form, MS-FSCC 2.4.37)."""
        r = Reader(buf)
        replace = r.u8(0) != 0
        root = r.u64(8)
        if root:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "RootDirectory must be zero")
        length = r.u32(16)
        name = r.utf16(20, length)
        return replace, name.lstrip("\\")

    async def _set_rename(self, conn: Any, op: Open, buf: bytes) -> None:
        replace, name = self._name_info(buf)
        if not op.access & c.DELETE:
            raise SMBError(st.STATUS_ACCESS_DENIED, "rename without DELETE access")
        node = op.node
        assert node is not None
        if not node.name:
            raise SMBError(st.STATUS_ACCESS_DENIED, "the share root cannot be renamed")
        parts = split_name(name)
        if not parts:
            raise SMBError(st.STATUS_OBJECT_NAME_INVALID)
        caller = op.tree.caller
        vfs = self.vfs
        dst_dir, dir_parts = await self.resolve_dir(caller, parts[:-1])
        leaf = parts[-1]
        parts = [*dir_parts, leaf]
        try:
            dst, stored = await self.lookup_name(caller, dst_dir.ino, leaf)
        except errors.NotFound:
            dst, stored = None, leaf
        if dst is not None and dst.ino != node.ino:
            if not replace:
                raise SMBError(st.STATUS_OBJECT_NAME_COLLISION)
            if dst.is_dir:
                raise SMBError(st.STATUS_ACCESS_DENIED, "cannot replace a directory")
            if self.nodes.get(dst.ino) is not None:
                raise SMBError(st.STATUS_ACCESS_DENIED, "replacement target is open")
            if stored != leaf:
                # The name it replaces is spelt otherwise: remove that one, not add a twin.
                await vfs.remove(caller, dst_dir.ino, stored)
        if op.is_dir and self._has_open_below(node):
            raise SMBError(st.STATUS_ACCESS_DENIED, "files below the directory are open")
        await vfs.rename(caller, node.parent, node.name, dst_dir.ino, leaf, op.origin)
        old_path = node.path
        node.parent, node.name = dst_dir.ino, leaf
        node.path = "\\".join(p.decode("utf-8", "surrogatepass") for p in parts)
        if op.is_dir:
            for other in self.nodes.values():
                if other.path.startswith(old_path + "\\"):
                    other.path = node.path + other.path[len(old_path) :]

    def _has_open_below(self, node: FileNode) -> bool:
        prefix = node.path + "\\"
        return any(n.path.startswith(prefix) for n in self.nodes.values())

    async def _set_link(self, conn: Any, op: Open, buf: bytes) -> None:
        replace, name = self._name_info(buf)
        if op.is_dir:
            raise SMBError(st.STATUS_FILE_IS_A_DIRECTORY)
        parts = split_name(name)
        if not parts:
            raise SMBError(st.STATUS_OBJECT_NAME_INVALID)
        caller = op.tree.caller
        vfs = self.vfs
        dst_dir, _ = await self.resolve_dir(caller, parts[:-1])
        try:
            dst, stored = await self.lookup_name(caller, dst_dir.ino, parts[-1])
        except errors.NotFound:
            dst = None
        if dst is not None:
            if not replace or dst.is_dir:
                raise SMBError(st.STATUS_OBJECT_NAME_COLLISION)
            await vfs.remove(caller, dst_dir.ino, stored)
        await vfs.link(caller, op.ino, dst_dir.ino, parts[-1], op.origin)

    async def _set_disposition(self, conn: Any, op: Open, buf: bytes) -> None:
        if len(buf) < 1:
            raise SMBError(st.STATUS_INFO_LENGTH_MISMATCH)
        await self._dispose(op, buf[0] != 0, False, False)

    async def _set_disposition_ex(self, conn: Any, op: Open, buf: bytes) -> None:
        if len(buf) < 4:
            raise SMBError(st.STATUS_INFO_LENGTH_MISMATCH)
        (flags,) = struct.unpack_from("<I", buf)
        await self._dispose(
            op,
            bool(flags & c.FILE_DISPOSITION_DELETE),
            bool(flags & c.FILE_DISPOSITION_ON_CLOSE),
            bool(flags & c.FILE_DISPOSITION_IGNORE_READONLY_ATTRIBUTE),
        )

    async def _dispose(self, op: Open, delete: bool, on_close: bool, ignore_ro: bool) -> None:
        node = op.node
        assert node is not None
        if not op.access & c.DELETE:
            raise SMBError(st.STATUS_ACCESS_DENIED, "disposition without DELETE access")
        if not node.name:
            raise SMBError(st.STATUS_CANNOT_DELETE, "the share root cannot be deleted")
        caller = op.tree.caller
        if delete:
            stored = await self.stored_dos(caller, op.ino)
            if stored is not None and stored & c.FILE_ATTRIBUTE_READONLY and not ignore_ro:
                raise SMBError(st.STATUS_CANNOT_DELETE, "read-only file")
            if op.is_dir:
                page = await self.vfs.readdir(caller, op.ino, 0, b"\x00" * 8, 1, False)
                if page.entries:
                    raise SMBError(st.STATUS_DIRECTORY_NOT_EMPTY)
        if on_close:
            op.delete_on_close = delete
        else:
            node.delete_pending = delete

    async def _set_eof(self, conn: Any, op: Open, buf: bytes) -> None:
        if len(buf) < 8:
            raise SMBError(st.STATUS_INFO_LENGTH_MISMATCH)
        (size,) = struct.unpack_from("<q", buf)
        if op.is_dir:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "size of a directory")
        if not op.access & c.FILE_WRITE_DATA:
            raise SMBError(st.STATUS_ACCESS_DENIED)
        if size < 0:
            raise SMBError(st.STATUS_INVALID_PARAMETER)
        try:
            await self.vfs.setattr(op.tree.caller, op.ino, SetAttrs(size=size), origin=op.origin)
        except errors.LockConflict:
            raise SMBError(st.STATUS_FILE_LOCK_CONFLICT) from None

    async def _set_allocation(self, conn: Any, op: Open, buf: bytes) -> None:
        if len(buf) < 8:
            raise SMBError(st.STATUS_INFO_LENGTH_MISMATCH)
        (size,) = struct.unpack_from("<q", buf)
        if op.is_dir:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "allocation of a directory")
        if not op.access & c.FILE_WRITE_DATA:
            raise SMBError(st.STATUS_ACCESS_DENIED)
        if size < 0:
            raise SMBError(st.STATUS_INVALID_PARAMETER)
        a = await self.vfs.getattr(op.tree.caller, op.ino)
        # MS-FSA 2.1.5.14.1: below the end of file truncates; above it only reserves (not kept).
        if size < a.size:
            try:
                await self.vfs.setattr(
                    op.tree.caller, op.ino, SetAttrs(size=size), origin=op.origin
                )
            except errors.LockConflict:
                raise SMBError(st.STATUS_FILE_LOCK_CONFLICT) from None

    async def _set_position(self, conn: Any, op: Open, buf: bytes) -> None:
        if len(buf) < 8:
            raise SMBError(st.STATUS_INFO_LENGTH_MISMATCH)
        (pos,) = struct.unpack_from("<q", buf)
        if pos < 0:
            raise SMBError(st.STATUS_INVALID_PARAMETER)
        op.position = pos

    async def _set_mode(self, conn: Any, op: Open, buf: bytes) -> None:
        if len(buf) < 4:
            raise SMBError(st.STATUS_INFO_LENGTH_MISMATCH)
        (mode,) = struct.unpack_from("<I", buf)
        if mode & ~c.FILE_MODE_SETTABLE or (
            mode & c.FILE_SYNCHRONOUS_IO_ALERT and mode & c.FILE_SYNCHRONOUS_IO_NONALERT
        ):
            raise SMBError(st.STATUS_INVALID_PARAMETER)
        op.mode = mode
        op.write_through = bool(mode & c.FILE_WRITE_THROUGH)

    async def _set_ea_info(self, conn: Any, op: Open, buf: bytes) -> None:
        if not op.access & c.FILE_WRITE_EA:
            raise SMBError(st.STATUS_ACCESS_DENIED)
        await self._set_eas(op.tree.caller, op.ino, buf)

    async def _set_eas(self, caller: Caller, ino: int, data: bytes) -> None:
        vfs = self.vfs
        for _flags, name, value in _ea_entries(data):
            if (
                not name
                or any(b < 0x20 or b > 0x7E for b in name)
                or any(chr(b) in _BAD_CHARS for b in name)
            ):
                raise SMBError(st.STATUS_INVALID_EA_NAME)
            key = EA_PREFIX + name
            if value:
                await vfs.setxattr(caller, ino, key, value)
            else:
                try:
                    await vfs.removexattr(caller, ino, key)
                except errors.NoData:
                    pass

    async def _apply_security(
        self, caller: Caller, a: Attributes, sd: bytes, parts: int
    ) -> Attributes:
        """Map a security descriptor back to owner, group and mode (see L{claudefs_gateway.smb.security})."""
        idmap = self.factory.idmap
        try:
            parsed = parse_security_descriptor(sd)
        except ProtocolError:
            raise SMBError(
                st.STATUS_INVALID_SECURITY_DESCR, "unreadable security descriptor"
            ) from None
        uid = gid = None
        if parts & c.OWNER_SECURITY_INFORMATION and parsed.owner is not None:
            m = idmap.to_unix(parsed.owner)
            if m is None or m[0] != "uid":
                raise SMBError(st.STATUS_INVALID_OWNER, "owner SID maps to no uid")
            uid = m[1] if m[1] != a.uid else None
        if parts & c.GROUP_SECURITY_INFORMATION and parsed.group is not None:
            m = idmap.to_unix(parsed.group)
            if m is None or m[0] != "gid":
                raise SMBError(st.STATUS_INVALID_PRIMARY_GROUP, "group SID maps to no gid")
            gid = m[1] if m[1] != a.gid else None
        mode = None
        if parts & c.DACL_SECURITY_INFORMATION and parsed.dacl is not None:
            owner = idmap.uid_sid(uid if uid is not None else a.uid)
            group = idmap.gid_sid(gid if gid is not None else a.gid)
            try:
                new = mode_from_dacl(parsed.dacl, owner, group, a.mode)
            except ProtocolError:
                raise SMBError(
                    st.STATUS_INVALID_PARAMETER, "DACL cannot be kept in mode bits"
                ) from None
            mode = new if new != a.mode else None
        changes = SetAttrs(mode=mode, uid=uid, gid=gid)
        if changes.is_empty():
            return a
        result: Attributes = await self.vfs.setattr(caller, a.ino, changes)
        return result

    # -- IOCTL (files and pipes) ---------------------------------------------------------------------

    async def ioctl(self, conn: Any, req: Request, body: IoctlRequest) -> Reply | bytes:
        if body.flags != c.SMB2_0_IOCTL_IS_FSCTL:
            raise SMBError(st.STATUS_NOT_SUPPORTED, "IOCTL that is not an FSCTL")
        op = self.lookup_open(conn, req, body.file_id)
        code = body.ctl_code
        limit = min(body.max_output_response, self.factory.max_io)
        if op.pipe is not None:
            if code != c.FSCTL_PIPE_TRANSCEIVE:
                raise SMBError(st.STATUS_INVALID_DEVICE_REQUEST)
            try:
                op.pipe.write(body.input)
            except ProtocolError:
                raise SMBError(st.STATUS_INVALID_PARAMETER, "bad DCE/RPC PDU") from None
            out = op.pipe.read(limit)
            status = st.STATUS_BUFFER_OVERFLOW if op.pipe.pending else 0
            return Reply(pack_ioctl_response(code, op.file_id, out), status)
        caller = op.tree.caller
        vfs = self.vfs
        if code == c.FSCTL_SRV_REQUEST_RESUME_KEY:
            if not op.resume_key:
                op.resume_key = os.urandom(24)
                self.resume_keys[op.resume_key] = op
            # ResumeKey, ContextLength 0 and 4 bytes of (ignored) context.
            return pack_ioctl_response(code, op.file_id, op.resume_key + b"\x00" * 8)
        if code in (c.FSCTL_SRV_COPYCHUNK, c.FSCTL_SRV_COPYCHUNK_WRITE):
            return await self._copychunk(op, body)
        if code == c.FSCTL_GET_REPARSE_POINT:
            raise SMBError(st.STATUS_NOT_A_REPARSE_POINT)
        if code == c.FSCTL_SET_SPARSE:
            # Kept as the SPARSE_FILE attribute; files are sparse anyway where
            # the backend can make them so.
            if op.is_dir:
                raise SMBError(st.STATUS_INVALID_PARAMETER, "SET_SPARSE on a directory")
            if not op.access & (c.FILE_WRITE_DATA | c.FILE_WRITE_ATTRIBUTES | c.FILE_APPEND_DATA):
                raise SMBError(st.STATUS_ACCESS_DENIED)
            sparse = not body.input or body.input[0] != 0
            stored = await self.stored_dos(caller, op.ino)
            a = await vfs.getattr(caller, op.ino)
            bits = dos_attributes(a, stored) & ~c.FILE_ATTRIBUTE_NORMAL
            bits = (
                bits | c.FILE_ATTRIBUTE_SPARSE_FILE
                if sparse
                else bits & ~c.FILE_ATTRIBUTE_SPARSE_FILE
            )
            await self._set_dos(caller, op.ino, bits)
            return pack_ioctl_response(code, op.file_id, b"")
        if code == c.FSCTL_CREATE_OR_GET_OBJECT_ID:
            oid = struct.pack("<QQ", op.ino, op.tree.export.id)
            return pack_ioctl_response(code, op.file_id, oid + b"\x00" * 48)
        if code == c.FSCTL_GET_COMPRESSION:
            return pack_ioctl_response(code, op.file_id, b"\x00\x00")
        if code == c.FSCTL_SET_COMPRESSION:
            if body.input[:2] != b"\x00\x00":
                raise SMBError(st.STATUS_NOT_SUPPORTED, "compression")
            return pack_ioctl_response(code, op.file_id, b"")
        if code == c.FSCTL_QUERY_ALLOCATED_RANGES:
            if len(body.input) < 16:
                raise SMBError(st.STATUS_INVALID_PARAMETER)
            if not op.access & c.FILE_READ_DATA:
                raise SMBError(st.STATUS_ACCESS_DENIED)
            off, length = struct.unpack_from("<qq", body.input)
            if off < 0 or length < 0:
                raise SMBError(st.STATUS_INVALID_PARAMETER)
            a = await vfs.getattr(caller, op.ino)
            end = min(off + length, a.size)
            out = struct.pack("<qq", off, end - off) if end > off else b""
            if len(out) > limit:
                raise SMBError(st.STATUS_BUFFER_TOO_SMALL)
            return pack_ioctl_response(code, op.file_id, out)
        if code == c.FSCTL_SET_ZERO_DATA:
            if len(body.input) < 16:
                raise SMBError(st.STATUS_INVALID_PARAMETER)
            if not op.access & c.FILE_WRITE_DATA:
                raise SMBError(st.STATUS_ACCESS_DENIED)
            start, beyond = struct.unpack_from("<qq", body.input)
            if start < 0 or beyond < start:
                raise SMBError(st.STATUS_INVALID_PARAMETER)
            if beyond > start:
                try:
                    await vfs.deallocate(caller, op.ino, start, beyond - start, op.origin)
                except errors.LockConflict:
                    raise SMBError(st.STATUS_FILE_LOCK_CONFLICT) from None
            return pack_ioctl_response(code, op.file_id, b"")
        raise SMBError(st.STATUS_INVALID_DEVICE_REQUEST, f"FSCTL {code:#x} is not served")

    async def _copychunk(self, dst: Open, body: IoctlRequest) -> Reply | bytes:
        """
        Server-side copy (MS-SMB2 3.3.5.15.6): chunks of the file a resume key
        names, copied into this open through the vfs without crossing the
        network. Limits as Windows: 256 chunks, 1 MiB each, 16 MiB in all.
        """
        code = body.ctl_code
        if body.max_output_response < 12:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "no room for the copy response")
        data = body.input
        if len(data) < 32:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "copy chunk request truncated")
        key, count = data[:24], struct.unpack_from("<I", data, 24)[0]
        if len(data) < 32 + 24 * count:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "copy chunk list truncated")
        chunks = [struct.unpack_from("<QQI", data, 32 + 24 * i) for i in range(min(count, 257))]
        if (
            count > COPYCHUNK_MAX_CHUNKS
            or any(length == 0 or length > COPYCHUNK_MAX_CHUNK for _, _, length in chunks)
            or sum(length for _, _, length in chunks) > COPYCHUNK_MAX_TOTAL
        ):
            limits = struct.pack(
                "<III", COPYCHUNK_MAX_CHUNKS, COPYCHUNK_MAX_CHUNK, COPYCHUNK_MAX_TOTAL
            )
            raise SMBError(
                st.STATUS_INVALID_PARAMETER,
                "copy chunk limits exceeded",
                body=pack_ioctl_response(code, dst.file_id, limits),
            )
        src = self.resume_keys.get(key)
        if src is None or src.closed or src.session is not dst.session:
            raise SMBError(st.STATUS_OBJECT_NAME_NOT_FOUND, "unknown resume key")
        if not src.access & (c.FILE_READ_DATA | c.FILE_EXECUTE):
            raise SMBError(st.STATUS_ACCESS_DENIED, "copy source not open for reading")
        need = c.FILE_WRITE_DATA | (c.FILE_READ_DATA if code == c.FSCTL_SRV_COPYCHUNK else 0)
        if dst.access & need != need or dst.is_dir or src.is_dir:
            raise SMBError(st.STATUS_ACCESS_DENIED, "copy target not open for writing")
        vfs = self.vfs
        written = total = 0

        def stop(status: int, why: str) -> SMBError:
            # The reply still says how far the copy got (MS-SMB2 3.3.5.15.6).
            progress = struct.pack("<III", written, 0, total)
            return SMBError(status, why, body=pack_ioctl_response(code, dst.file_id, progress))

        for src_off, dst_off, length in chunks:
            try:
                got = (await vfs.read(src.tree.caller, src.ino, src_off, length, src.origin)).data
                if len(got) < length:
                    raise stop(STATUS_INVALID_VIEW_SIZE, "copy source range past its end")
                await vfs.write(
                    dst.tree.caller, dst.ino, dst_off, got, dst.write_through, dst.origin
                )
            except errors.LockConflict:
                raise stop(st.STATUS_FILE_LOCK_CONFLICT, "copy across a locked range") from None
            written += 1
            total += length
        return pack_ioctl_response(code, dst.file_id, struct.pack("<III", written, 0, total))

    # -- OPLOCK_BREAK -----------------------------------------------------------------------------

    async def smb_OPLOCK_BREAK(self, conn: Any, req: Request) -> bytes:
        # No oplock or lease is ever granted, so there is nothing to acknowledge.
        raise SMBError(STATUS_INVALID_OPLOCK_PROTOCOL, "no oplock was granted")
