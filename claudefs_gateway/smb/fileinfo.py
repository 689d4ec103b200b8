# -*- test-case-name: tests.smb.test_files -*-
"""
QUERY_INFO and SET_INFO (MS-SMB2 3.3.5.20, 3.3.5.21): information classes
of files, file systems and security.
"""

from __future__ import annotations

import struct
from typing import Any

from claudefs_gateway import errors
from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.fstypes import SetAttrs
from claudefs_gateway.smb import constants as c
from claudefs_gateway.smb import ntstatus as st
from claudefs_gateway.smb.constants import FileInfoClass as F
from claudefs_gateway.smb.constants import FsInfoClass as Fs
from claudefs_gateway.smb.errors import SMBError
from claudefs_gateway.smb.filebase import FileBase, get_ea_names, pack_eas, split_name
from claudefs_gateway.smb.header import Reader, error_body
from claudefs_gateway.smb.info import OpenState, Volume, from_filetime, fs_info, pack_stat_info
from claudefs_gateway.smb.messages import QueryInfoRequest, SetInfoRequest, pack_buffer_response
from claudefs_gateway.smb.security import pack_descriptor
from claudefs_gateway.smb.state import FileNode, Open, Reply, Request
from claudefs_gateway.vfs import Caller, inline

__all__ = ["InfoCommands"]

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


class InfoCommands(FileBase):
    """QUERY_INFO and SET_INFO."""

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
            assert op.node is not None
            if op.stream is not None:
                st_ = await self.stream_stat(caller, op)
            else:
                a = await inline(vfs.getattr, caller, op.file_ino)
                st_ = await self.stat(caller, a, op.node.name)
            if body.info_class == F.FileStreamInformation:
                data = await self._stream_info(caller, op)
                return self._fit(VARIABLE_FILE_CLASSES[F.FileStreamInformation], data, limit)
            ea_size = 0
            if body.info_class in (F.FileEaInformation, F.FileAllInformation):
                ea_size = len(pack_eas(await self._eas(caller, op.file_ino)))
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
            vol = Volume(export.name, export.id, self.factory.start_time, caller.read_only)
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
            a = await vfs.getattr(caller, op.file_ino)
            sd = pack_descriptor(await self.descriptor(caller, a), body.additional)
            if len(sd) > limit:
                raise SMBError(
                    st.STATUS_BUFFER_TOO_SMALL, body=error_body(struct.pack("<I", len(sd)))
                )
            return bytes(pack_buffer_response(sd))
        if body.info_type == c.SMB2_0_INFO_QUOTA:
            raise SMBError(st.STATUS_NOT_SUPPORTED, "quota queries")
        raise SMBError(st.STATUS_INVALID_PARAMETER, "bad InfoType")

    async def _stream_info(self, caller: Caller, op: Open) -> bytes:
        """
        FileStreamInformation (MS-FSCC 2.4.44): the default stream of a file
        (not of a directory), then each named stream, with their sizes.
        """
        ino = op.file_ino
        a = await self.vfs.getattr(caller, ino)
        entries: list[tuple[str, int, int]] = []
        if not a.is_dir:
            st_ = await self.stat(caller, a)
            entries.append(("::$DATA", st_.eof, st_.allocation))
        for name in await self.stream_names(caller, ino):
            size = len(await self.read_stream(caller, ino, name))
            entries.append((f":{name}:$DATA", size, (size + 4095) // 4096 * 4096))
        out = bytearray()
        last = -1
        for name, size, alloc in entries:
            raw = name.encode("utf-16-le")
            start = (len(out) + 7) & ~7
            if last >= 0:
                out += b"\x00" * (start - len(out))
                struct.pack_into("<I", out, last, start - last)
            last = len(out)
            out += struct.pack("<IIqq", 0, len(raw), size, alloc) + raw
        return bytes(out)

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

    async def _query_eas(self, op: Open, body: QueryInfoRequest, limit: int) -> Reply | bytes:
        if not op.access & c.FILE_READ_EA:
            raise SMBError(st.STATUS_ACCESS_DENIED)
        caller = op.tree.caller
        eas = await self._eas(caller, op.file_ino)
        if body.input:
            try:
                wanted = get_ea_names(body.input)
            except ProtocolError:
                raise SMBError(st.STATUS_INVALID_PARAMETER) from None
            have = {n.lower(): (n, v) for n, v in eas}
            eas = [have.get(w.lower(), (w, b"")) for w in wanted]
        elif not eas:
            raise SMBError(st.STATUS_NO_EAS_ON_FILE)
        data = pack_eas(eas)
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
            a = await self.vfs.getattr(caller, op.file_ino)
            await self._apply_security(caller, a, buf, body.additional, op.origin)
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
        if op.write_through:
            # A write-through open's changes are durable before the reply.
            await self.meta_sync()
        await self.changed_through(op)
        return b"\x02\x00"

    async def _set_basic(self, conn: Any, op: Open, buf: bytes) -> None:
        if len(buf) < 36:
            raise SMBError(st.STATUS_INFO_LENGTH_MISMATCH)
        if not op.access & c.FILE_WRITE_ATTRIBUTES:
            raise SMBError(st.STATUS_ACCESS_DENIED)
        created, accessed, written, changed, attrs_ = struct.unpack_from("<qqqqI", buf)
        if min(created, accessed, written, changed) < -2:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "time before 1601")  # MS-FSA 2.1.5.14.2

        def when(ft: int) -> int | None:
            # 0: leave alone; -1 / -2: stop / resume automatic updates (not kept).
            return None if ft in (0, -1, -2) else from_filetime(ft)

        caller = op.tree.caller
        if attrs_:
            if attrs_ & c.FILE_ATTRIBUTE_DIRECTORY and not op.is_dir:
                raise SMBError(st.STATUS_INVALID_PARAMETER, "DIRECTORY attribute on a file")
            if attrs_ & c.FILE_ATTRIBUTE_TEMPORARY and op.is_dir:
                raise SMBError(st.STATUS_INVALID_PARAMETER, "TEMPORARY attribute on a directory")
            stored = await self.stored_dos(caller, op.file_ino)
            # SPARSE_FILE is FSCTL_SET_SPARSE's to change, not SET_INFO's.
            keep = (stored or 0) & c.FILE_ATTRIBUTE_SPARSE_FILE
            await self._set_dos(
                caller, op.file_ino, (attrs_ & ~c.FILE_ATTRIBUTE_SPARSE_FILE) | keep, op.origin
            )
        changes = SetAttrs(atime=when(accessed), mtime=when(written), btime=when(created))
        if not changes.is_empty():
            await self.vfs.setattr(
                caller, op.file_ino, changes, origin=op.origin, durable=self.meta_durable
            )
            self.meta_changed()
        if changed not in (0, -1, -2):
            op.user_change_time = changed

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
        if op.stream is not None:
            raise SMBError(st.STATUS_NOT_SUPPORTED, "renaming a named stream")
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
        parent = self.nodes.get(dst_dir.ino)
        if parent is not None and any(o.access & c.DELETE and not o.closed for o in parent.opens):
            # The directory the name lands in is held open for DELETE: Windows
            # and Samba refuse the rename (Samba's parent_dirname_compatible_open;
            # smbtorture smb2.oplock.batch19, batch20, exclusive6).
            raise SMBError(st.STATUS_SHARING_VIOLATION, "target directory open for delete")
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
                await vfs.remove(caller, dst_dir.ino, stored, op.origin, self.meta_durable)
        if op.is_dir and self._has_open_below(node):
            raise SMBError(st.STATUS_ACCESS_DENIED, "files below the directory are open")
        await vfs.rename(
            caller, node.parent, node.name, dst_dir.ino, leaf, op.origin, self.meta_durable
        )
        self.meta_changed()
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
        if op.stream is not None:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "a hard link to a named stream")
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
            await vfs.remove(caller, dst_dir.ino, stored, op.origin)
        await vfs.link(caller, op.file_ino, dst_dir.ino, parts[-1], op.origin)

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
            stored = await self.stored_dos(caller, op.file_ino)
            if stored is not None and stored & c.FILE_ATTRIBUTE_READONLY and not ignore_ro:
                raise SMBError(st.STATUS_CANNOT_DELETE, "read-only file")
            if op.is_dir:
                page = await self.vfs.readdir(caller, op.file_ino, 0, b"\x00" * 8, 1, False)
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
        if op.stream is not None:
            await self.set_stream_size(op, size)
            return
        try:
            await self.vfs.setattr(
                op.tree.caller, op.file_ino, SetAttrs(size=size), origin=op.origin
            )
        except errors.LockConflict:
            raise SMBError(st.STATUS_FILE_LOCK_CONFLICT) from None
        dos, reserved = await self.stored(op.tree.caller, op.file_ino)
        if reserved and reserved < size:
            # The file now uses more than was reserved: nothing is reserved beyond it.
            await self._set_dos(op.tree.caller, op.file_ino, dos, op.origin, 0)

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
        caller = op.tree.caller
        if op.stream is not None:
            # A stream keeps no reservation; below its end it is cut there.
            current = len(await self.read_stream(caller, op.file_ino, op.stream))
            if size < current:
                await self.set_stream_size(op, size)
            return
        a = await self.vfs.getattr(caller, op.file_ino)
        # MS-FSA 2.1.5.14.1: below the end of file truncates; above it reserves
        # (kept beside the inode and reported as AllocationSize).
        if size < a.size:
            try:
                await self.vfs.setattr(caller, op.file_ino, SetAttrs(size=size), origin=op.origin)
            except errors.LockConflict:
                raise SMBError(st.STATUS_FILE_LOCK_CONFLICT) from None
        # Setting it (even to what it is) changes the file for others'
        # caches: level II oplocks and read leases break (smbtorture smb2.oplock.batch12).
        await self._set_dos(caller, op.file_ino, None, op.origin, size if size > a.size else 0)

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
        await self._set_eas(op.tree.caller, op.file_ino, buf, op.origin)
