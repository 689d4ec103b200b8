# -*- test-case-name: tests.smb.test_files -*-
"""
The file commands of SMB2 (CREATE, CLOSE, READ, WRITE, FLUSH, LOCK,
QUERY_DIRECTORY, CHANGE_NOTIFY, QUERY_INFO, SET_INFO and the file IOCTLs),
served through the vfs. L{FileService} puts together one class per command
family: L{claudefs_gateway.smb.create} (CREATE, CLOSE),
L{claudefs_gateway.smb.rw} (READ, WRITE, FLUSH, LOCK),
L{claudefs_gateway.smb.listing} (QUERY_DIRECTORY, CHANGE_NOTIFY),
L{claudefs_gateway.smb.fileinfo} (QUERY_INFO, SET_INFO) and
L{claudefs_gateway.smb.ioctl}, over L{claudefs_gateway.smb.filebase.FileBase}.

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

from typing import Any

from claudefs_gateway.smb import ntstatus as st
from claudefs_gateway.smb.create import CreateCommands
from claudefs_gateway.smb.errors import SMBError
from claudefs_gateway.smb.filebase import DOS_KEY, split_name
from claudefs_gateway.smb.fileinfo import InfoCommands
from claudefs_gateway.smb.header import Reader
from claudefs_gateway.smb.ioctl import IoctlCommands
from claudefs_gateway.smb.listing import DirectoryCommands
from claudefs_gateway.smb.messages import (
    LeaseBreakAck,
    OplockBreakAck,
    pack_lease_break_ack_response,
    pack_oplock_break,
)
from claudefs_gateway.smb.rw import ReadWriteCommands
from claudefs_gateway.smb.state import Request

__all__ = ["FileService", "split_name", "DOS_KEY"]


class FileService(
    CreateCommands, ReadWriteCommands, DirectoryCommands, InfoCommands, IoctlCommands
):
    """The file commands, shared by every connection of one server."""

    # -- OPLOCK_BREAK -----------------------------------------------------------------------------

    async def smb_OPLOCK_BREAK(self, conn: Any, req: Request) -> bytes:
        """
        An oplock or lease break acknowledgment (MS-SMB2 3.3.5.22), told
        apart by StructureSize (24: oplock, 36: lease), as Samba does.
        """
        size = Reader(req.raw).u16(64)
        leasing = self.factory.leasing
        if size == 36:
            ack = LeaseBreakAck.parse(req.raw)
            state = leasing.ack_lease(conn, ack.key, ack.state)
            return pack_lease_break_ack_response(ack.key, state)
        if size != 24:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "not an oplock or lease acknowledgment")
        body = OplockBreakAck.parse(req.raw)
        op = self.lookup_open(conn, req, body.file_id)
        level = leasing.ack_oplock(op, body.level)
        return pack_oplock_break(level, op.file_id)
