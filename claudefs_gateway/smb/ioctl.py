# -*- test-case-name: tests.smb.test_files -*-
"""
IOCTL/FSCTL on files and pipes (MS-SMB2 3.3.5.15): server-side copy,
sparse files, zeroing, allocated ranges, pipe transceive.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from claudefs_gateway import errors
from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.smb import constants as c
from claudefs_gateway.smb import ntstatus as st
from claudefs_gateway.smb.errors import SMBError
from claudefs_gateway.smb.filebase import FileBase
from claudefs_gateway.smb.info import dos_attributes
from claudefs_gateway.smb.messages import IoctlRequest, pack_ioctl_response
from claudefs_gateway.smb.state import Open, Reply, Request

__all__ = ["IoctlCommands"]

# Resilient handles: Windows' most (5 minutes) and its default when 0 is asked (2 minutes).
MAX_RESILIENCY_MS = 300_000
DEFAULT_RESILIENCY_MS = 120_000
COPYCHUNK_MAX_CHUNKS = 256
COPYCHUNK_MAX_CHUNK = 1024 * 1024
COPYCHUNK_MAX_TOTAL = 16 * 1024 * 1024


class IoctlCommands(FileBase):
    """The FSCTLs on files and pipes."""

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
        if code == c.FSCTL_LMR_REQUEST_RESILIENCY:
            # MS-SMB2 3.3.5.15.9: Timeout (ms) and Reserved; not at 2.0.2.
            if conn.dialect < c.SMB_2_1:
                raise SMBError(st.STATUS_INVALID_DEVICE_REQUEST, "resiliency needs SMB 2.1")
            if len(body.input) < 8:
                raise SMBError(st.STATUS_INVALID_PARAMETER, "resiliency request truncated")
            (timeout_ms,) = struct.unpack_from("<I", body.input)
            if timeout_ms > MAX_RESILIENCY_MS:
                raise SMBError(st.STATUS_INVALID_PARAMETER, "resiliency timeout too long")
            self.factory.durability.make_resilient(
                op, (timeout_ms or DEFAULT_RESILIENCY_MS) / 1000.0
            )
            return pack_ioctl_response(code, op.file_id, b"")
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
            stored = await self.stored_dos(caller, op.file_ino)
            a = await vfs.getattr(caller, op.file_ino)
            bits = dos_attributes(a, stored) & ~c.FILE_ATTRIBUTE_NORMAL
            bits = (
                bits | c.FILE_ATTRIBUTE_SPARSE_FILE
                if sparse
                else bits & ~c.FILE_ATTRIBUTE_SPARSE_FILE
            )
            await self._set_dos(caller, op.file_ino, bits, op.origin)
            return pack_ioctl_response(code, op.file_id, b"")
        if code == c.FSCTL_CREATE_OR_GET_OBJECT_ID:
            oid = struct.pack("<QQ", op.file_ino, op.tree.export.id)
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
            a = await vfs.getattr(caller, op.file_ino)
            stored = await self.stored_dos(caller, op.file_ino)
            if stored is not None and stored & c.FILE_ATTRIBUTE_SPARSE_FILE:
                # A sparse file's holes are left out (MS-FSA 2.1.5.10.22), as the
                # store finds them (SEEK_DATA on the embedded store's files).
                ranges = await vfs.data_ranges(caller, op.file_ino, off, length)
            else:
                # A file not marked sparse is allocated throughout, as on NTFS.
                end = min(off + length, a.size)
                ranges = [(off, end - off)] if end > off else []
            out = b"".join(struct.pack("<qq", start, n) for start, n in ranges)
            if len(out) > limit:
                if limit < 16:
                    raise SMBError(st.STATUS_BUFFER_TOO_SMALL)
                # As many whole ranges as fit, and BUFFER_OVERFLOW (2.1.5.10.22).
                return Reply(
                    pack_ioctl_response(code, op.file_id, out[: limit // 16 * 16]),
                    st.STATUS_BUFFER_OVERFLOW,
                )
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
                    await vfs.deallocate(caller, op.file_ino, start, beyond - start, op.origin)
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
                if src.stream is not None:
                    whole = await self.read_stream(src.tree.caller, src.file_ino, src.stream)
                    got = whole[src_off : src_off + length]
                else:
                    read = await vfs.read(src.tree.caller, src.ino, src_off, length, src.origin)
                    got = read.data
                if len(got) < length:
                    raise stop(st.STATUS_INVALID_VIEW_SIZE, "copy source range past its end")
                if dst.stream is not None:
                    await self.write_stream_at(dst, dst_off, got)
                else:
                    await vfs.write(
                        dst.tree.caller, dst.ino, dst_off, got, dst.write_through, dst.origin
                    )
            except errors.LockConflict:
                raise stop(st.STATUS_FILE_LOCK_CONFLICT, "copy across a locked range") from None
            written += 1
            total += length
        return pack_ioctl_response(code, dst.file_id, struct.pack("<III", written, 0, total))
