# -*- test-case-name: tests.smb.test_files -*-
"""
CREATE and CLOSE (MS-SMB2 3.3.5.9, 3.3.5.10): opening files, directories
and the srvsvc pipe through the vfs, create contexts, and ending opens.
"""

from __future__ import annotations

import struct
from typing import Any

import attrs
from twisted.internet import defer

from claudefs_gateway import errors
from claudefs_gateway.core.log import debugging
from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.fstypes import Attributes, Credentials, FileType, SetAttrs
from claudefs_gateway.smb import constants as c
from claudefs_gateway.smb import ntstatus as st
from claudefs_gateway.smb.dcerpc import (
    STYPE_DISKTREE,
    STYPE_IPC,
    STYPE_SPECIAL,
    Pipe,
    Share,
    Srvsvc,
)
from claudefs_gateway.smb.durable import DurableAsk, parse_durable
from claudefs_gateway.smb.errors import SMBError
from claudefs_gateway.smb.filebase import (
    FileBase,
    ea_entries,
    generic_rights,
    share_modes,
    split_name,
    split_stream,
    stream_id,
)
from claudefs_gateway.smb.info import Stat, dos_attributes, file_times
from claudefs_gateway.smb.leasing import to_wire
from claudefs_gateway.smb.messages import (
    CloseRequest,
    CreateContext,
    CreateRequest,
    FileTimes,
    LeaseRequest,
    pack_close_response,
    pack_create_response,
    pack_lease_response,
)
from claudefs_gateway.smb.state import FileNode, Open, Request, Session, Tree
from claudefs_gateway.vfs import Caller, LockOwner, ShareToken, inline
from claudefs_gateway.vfs.leases import LeaseKey, Why
from claudefs_gateway.vfs.origin import NO_OPEN, Origin

__all__ = ["CreateCommands"]

#: Dispositions that create a missing file (MS-SMB2 2.2.13): a name known to
#: be absent skips the lookup before the create.
_CREATING = frozenset((c.FILE_CREATE, c.FILE_OPEN_IF, c.FILE_OVERWRITE_IF))

MAX_OPENS = 16384
# CreateOptions refused with NOT_SUPPORTED (FILE_CREATE_TREE_CONNECTION,
# FILE_OPEN_BY_FILE_ID, FILE_RESERVE_OPFILTER), as Windows does.
CREATE_OPTIONS_NOT_SUPPORTED = 0x00000080 | 0x00002000 | 0x00100000
# FileAttributes a CREATE may not carry: VOLUME, DEVICE, INTEGRITY_STREAM, undefined.
FILE_ATTRIBUTES_INVALID = 0xFFFF0000 | 0x00000008 | 0x00000040 | 0x00008000
ACCESS_INVALID = 0x0CE0FE00


def _stored_lease(kept: dict[str, Any]) -> LeaseRequest:
    """
    The lease a durable record kept (L{Durability.persist}'s C{lease}), asked
    for again: its epoch one lower, so the grant's increment gives the kept one.
    """
    return LeaseRequest(
        bytes.fromhex(kept["key"]),
        to_wire(int(kept["state"])),
        0,
        int(kept["version"]),
        bytes.fromhex(kept["parent"]) if kept.get("parent") else None,
        max(0, int(kept["epoch"]) - 1),
    )


class _Restart(Exception):
    """A CREATE must start over: what it looked up changed while it waited."""


class CreateCommands(FileBase):
    """CREATE, CLOSE and the end of an open."""

    # -- CREATE ------------------------------------------------------------------------------

    async def smb_CREATE(self, conn: Any, req: Request) -> bytes:
        for _ in range(3):
            try:
                return await self._create(conn, req)
            except _Restart:
                # The file went while this open waited (a disconnected durable
                # open with delete-on-close closed for it): start over.
                continue
        raise SMBError(st.STATUS_SHARING_VIOLATION, "the file keeps changing under the open")

    async def _create(self, conn: Any, req: Request) -> bytes:
        body = CreateRequest.parse(req.raw)
        tree = req.tree
        assert tree is not None and req.session is not None
        contexts = self._contexts(body.contexts)
        ask = parse_durable(contexts, bool(req.header.flags & c.SMB2_FLAGS_REPLAY_OPERATION))
        if ask.reconnect is not None:
            # MS-SMB2 3.3.5.9.7, 3.3.5.9.12: only the reconnect context counts;
            # the rest of the request is not even checked (smbtorture
            # smb2.durable-open.reopen2 sends junk there).
            if tree.ipc:
                raise SMBError(st.STATUS_OBJECT_NAME_NOT_FOUND, "no durable handles on IPC$")
            return await self._reconnect(conn, req, body, contexts, ask)
        if body.impersonation > c.SECURITY_DELEGATION:
            raise SMBError(st.STATUS_BAD_IMPERSONATION_LEVEL)
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
        desired = generic_rights(body.desired_access)
        if desired & c.ACCESS_SYSTEM_SECURITY:
            raise SMBError(st.STATUS_PRIVILEGE_NOT_HELD, "SACL access")
        if opts & c.FILE_DELETE_ON_CLOSE and not desired & (c.DELETE | c.MAXIMUM_ALLOWED):
            raise SMBError(st.STATUS_INVALID_PARAMETER, "delete-on-close without DELETE access")
        if opts & c.FILE_DELETE_ON_CLOSE and body.file_attributes & c.FILE_ATTRIBUTE_READONLY:
            raise SMBError(st.STATUS_CANNOT_DELETE, "delete-on-close of a read-only file")
        if len(conn.opens) >= MAX_OPENS:
            raise SMBError(st.STATUS_INSUFFICIENT_RESOURCES, "too many opens")
        durability = self.factory.durability
        if ask.create_guid is not None:
            known = durability.by_create_guid.get((conn.client_guid, ask.create_guid))
            if known is not None and not known.closed:
                if not ask.replay:
                    # MS-SMB2 3.3.5.9.10: a CreateGuid in use, and this is no replay.
                    raise SMBError(st.STATUS_DUPLICATE_OBJECTID, "CreateGuid in use")
                if known.session is req.session and not known.disconnected:
                    return await self._answer_open(conn, req, known, c.FILE_OPENED, [])
        if ask.app_instance is not None:
            other = durability.by_app.get(ask.app_instance)
            if other is not None and not other.closed:
                # MS-SMB2 3.3.5.9.13: a new open by the same application instance
                # (after a failover, from another node) ends the old one.
                await self.close(other.conn, other)
        if tree.ipc:
            return await self._create_pipe(conn, req, body)
        lease_req = self._lease_request(conn, body, contexts)
        caller = tree.caller
        vfs = self.vfs
        path_name, stream = split_stream(body.name)
        parts = split_name(path_name)
        if stream is not None:
            return await self._create_stream(
                conn, req, body, contexts, lease_req, parts, stream, ask
            )
        root = tree.export.root_ino
        if not parts:
            parent_ino: int | None = None
            leaf = b""
            existing: Attributes | None = await vfs.getattr(caller, root)
        else:
            parent, dir_parts = await self.resolve_dir(caller, parts[:-1])
            parent_ino = parent.ino
            deleting = self.deleting.get(parent_ino)
            if deleting:
                await defer.gatherResults(list(deleting))
            if body.disposition in _CREATING and self.case.known_absent(parent_ino, parts[-1]):
                # A new name in a directory whose names are indexed here: the
                # lookup would only miss (a round trip to the meta server
                # through a --workers worker). The create is exclusive, so a
                # name made meanwhile elsewhere is looked up after its Exists.
                existing, leaf = None, parts[-1]
            else:
                existing, leaf = await self._lookup(caller, parent_ino, parts[-1], dir_parts)
            parts = [*dir_parts, leaf]
        # (One decode of the joined bytes: "\\" is never part of a UTF-8 sequence.)
        path = b"\\".join(parts).decode("utf-8", "surrogatepass")
        if lease_req is not None and self.factory.leasing.key_in_use(
            conn.client_guid, lease_req.key, existing.ino if existing is not None else None
        ):
            # MS-SMB2 3.3.5.9.8: a lease key names one file.
            raise SMBError(st.STATUS_INVALID_PARAMETER, "lease key in use on another file")
        disp = body.disposition
        action = c.FILE_OPENED
        created = False
        overwrite = False
        fid: tuple[int, int] | None = None
        intent: Any = None
        if existing is None:
            if disp in (c.FILE_OPEN, c.FILE_OVERWRITE):
                raise SMBError(st.STATUS_OBJECT_NAME_NOT_FOUND, "no such file")
            assert parent_ino is not None
            # (Built only for a create: an open of an existing file needs none.)
            dir_origin = Origin(strict=True, exempt=self._parent_exempt(conn, lease_req))
            try:
                # Durable at the next FLUSH, write-through or background
                # flush, as on Samba (FileBase.meta_durable).
                durable = self.meta_durable
                if opts & c.FILE_DIRECTORY_FILE:
                    a = await inline(
                        vfs.mkdir,
                        caller,
                        parent_ino,
                        leaf,
                        0o755,
                        origin=dir_origin,
                        durable=durable,
                    )
                else:
                    fid, intent = self._create_intent(conn, caller, desired, body)
                    try:
                        a = await inline(
                            vfs.create,
                            caller,
                            parent_ino,
                            leaf,
                            0o644,
                            exclusive=True,
                            origin=dir_origin,
                            durable=durable,
                            share=intent,
                        )
                    except BaseException:
                        if intent is not None:
                            self._shared_locks.drop_intent(intent)
                            fid = intent = None
                        raise
                if not durable:
                    self.meta_changed()
                created = True
                action = c.FILE_CREATED
            except errors.Exists:
                if disp == c.FILE_CREATE:
                    raise SMBError(st.STATUS_OBJECT_NAME_COLLISION) from None
                found, leaf = await self._lookup(caller, parent_ino, leaf, parts[:-1])
                if found is None:
                    raise SMBError(st.STATUS_OBJECT_NAME_COLLISION) from None
                a = found
                parts = [*parts[:-1], leaf]
                overwrite = disp in (c.FILE_SUPERSEDE, c.FILE_OVERWRITE, c.FILE_OVERWRITE_IF)
        else:
            a = existing
            if disp == c.FILE_CREATE:
                raise SMBError(st.STATUS_OBJECT_NAME_COLLISION, "name exists")
            overwrite = disp in (c.FILE_SUPERSEDE, c.FILE_OVERWRITE, c.FILE_OVERWRITE_IF)
        # (Its type is the same whatever a is re-read as below: one lookup.)
        is_dir = a.type is FileType.DIR
        if is_dir and opts & c.FILE_NON_DIRECTORY_FILE:
            raise SMBError(st.STATUS_FILE_IS_A_DIRECTORY)
        if not is_dir and opts & c.FILE_DIRECTORY_FILE:
            raise SMBError(st.STATUS_NOT_A_DIRECTORY)
        if is_dir and overwrite:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "overwrite of a directory")
        if not (is_dir or a.is_reg):
            raise SMBError(st.STATUS_ACCESS_DENIED, "not a regular file or directory")
        node = self.nodes.get(a.ino)
        if node is not None and node.delete_pending and not created:
            raise SMBError(st.STATUS_DELETE_PENDING)
        stored = None if created else await self.stored_dos(caller, a.ino)
        if created:
            # The creator may do anything to what it just made (what
            # maximal_access would find is within this: no DACL yet, and
            # the create itself proved write and search on the parent).
            maximal = c.FILE_ALL_ACCESS & ~(c.MODIFY_ACCESS if caller.read_only else 0)
        else:
            maximal = await self.maximal_access(caller, a, parent_ino)
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
            and not is_dir
            and (desired & (c.FILE_WRITE_DATA | c.FILE_APPEND_DATA) or overwrite)
        ):
            raise SMBError(st.STATUS_ACCESS_DENIED, "file is read-only")
        if opts & c.FILE_DELETE_ON_CLOSE:
            if not granted & c.DELETE:
                raise SMBError(st.STATUS_ACCESS_DENIED, "delete-on-close without DELETE")
            if stored is not None and stored & c.FILE_ATTRIBUTE_READONLY:
                raise SMBError(st.STATUS_CANNOT_DELETE, "read-only file")
        if fid is None:
            fid = self.factory.new_file_id()
        owner = self._owner(conn, fid)
        locks = self.locks
        try:
            token = await self._reserve(
                conn, req, a, owner, granted, body, lease_req, overwrite, created, parent_ino
            )
        except BaseException:
            if created:
                await self._undo_create(caller, parent_ino, leaf, a)
            raise
        finally:
            if intent is not None:
                # Not taken by the reservation (other modes, or none): give it back.
                self._shared_locks.drop_intent(intent)
        dos = stored
        # AllocationSize asked for with the create (MS-SMB2 2.2.13.2.3), kept
        # as a reservation beside the inode; directories have none.
        alloc_ctx = contexts.get(c.SMB2_CREATE_ALLOCATION_SIZE)
        alloc = 0
        if alloc_ctx is not None and not is_dir:
            alloc = struct.unpack("<Q", alloc_ctx)[0]
        # What this open's own changes run as: its lock owner and share
        # reservation, never breaking its own lease, nor the SMB caches it broke
        # to none above without waiting (as Samba and Windows do). Only a
        # create or an overwrite changes anything through it: an open of a
        # file as it is builds none (NO_OPEN stands in, unused).
        own = (
            Origin(
                owner=owner,
                share=token,
                strict=True,
                exempt=(
                    *self._parent_exempt(conn, lease_req),
                    *(m.key for m in vfs.leases.leases(a.ino) if m.key.protocol == "smb"),
                    *(
                        (LeaseKey("smb", conn.client_guid, lease_req.key),)
                        if lease_req is not None
                        else ()
                    ),
                ),
            )
            if created or overwrite
            else NO_OPEN
        )
        try:
            if overwrite:
                # Others' SMB caches were broken to none above without waiting
                # (as Samba and Windows do): the truncation does not wait again;
                # and it goes through others' byte-range locks, as on Windows
                # (smbtorture smb2.lock.truncate, smb2.create.brlocked).
                a = await vfs.setattr(
                    caller,
                    a.ino,
                    SetAttrs(size=0),
                    origin=attrs.evolve(own, ranges=False),
                    durable=self.meta_durable,
                )
                self.meta_changed()
                action = c.FILE_SUPERSEDED if disp == c.FILE_SUPERSEDE else c.FILE_OVERWRITTEN
                dos = (
                    body.file_attributes & ~c.FILE_ATTRIBUTE_SPARSE_FILE
                ) | c.FILE_ATTRIBUTE_ARCHIVE
                await self._set_dos(caller, a.ino, dos, own, alloc)
            elif (
                created
                and body.file_attributes & c.STORED_ATTRIBUTES & ~c.FILE_ATTRIBUTE_SPARSE_FILE
            ):
                # (SPARSE_FILE is FSCTL_SET_SPARSE's to set, as on Windows.)
                dos = body.file_attributes & ~c.FILE_ATTRIBUTE_SPARSE_FILE
                if not is_dir:
                    dos |= c.FILE_ATTRIBUTE_ARCHIVE
                await self._set_dos(caller, a.ino, dos, own, alloc)
            elif created and alloc:
                await self._set_dos(caller, a.ino, None, own, alloc)
            if created or overwrite:
                ea = contexts.get(c.SMB2_CREATE_EA_BUFFER)
                if ea:
                    await self._set_eas(caller, a.ino, ea, own)
                sd = contexts.get(c.SMB2_CREATE_SD_BUFFER)
                if sd:
                    a = await self._apply_security(
                        caller,
                        a,
                        sd,
                        c.OWNER_SECURITY_INFORMATION
                        | c.GROUP_SECURITY_INFORMATION
                        | c.DACL_SECURITY_INFORMATION,
                        own,
                        create=True,
                    )
            if overwrite or (
                created
                and (
                    dos is not None
                    or alloc
                    or c.SMB2_CREATE_EA_BUFFER in contexts
                    or c.SMB2_CREATE_SD_BUFFER in contexts
                )
            ):
                # What the steps after the create changed (ctime, mode, owner).
                a = await vfs.getattr(caller, a.ino)
                reserved = alloc
            elif created:
                # Nothing changed it since the create: its attributes stand.
                reserved = alloc
            else:
                reserved = (await self.stored(caller, a.ino))[1]
            st_ = Stat(
                a, dos_attributes(a, dos, leaf), reserved=reserved, change_time=self.change_time(a)
            )
            if opts & c.FILE_WRITE_THROUGH and (created or overwrite):
                # A write-through open's creation is durable before the reply.
                await self.meta_sync()
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
            is_dir,
            granted,
            lock_owner=owner,
            share=token,
            delete_on_close=bool(opts & c.FILE_DELETE_ON_CLOSE),
            write_through=bool(opts & c.FILE_WRITE_THROUGH),
            mode=opts & c.FILE_MODE_SETTABLE,
        )
        self._register(conn, req, node, op, fid, body.share_access)
        answers: list[CreateContext] = []
        level, sl = self.factory.leasing.grant(
            conn,
            op,
            node.opens,
            body.oplock if lease_req is None else c.SMB2_OPLOCK_LEVEL_LEASE,
            lease_req,
            granted | (c.FILE_WRITE_DATA if overwrite else 0),
            not created,
            bool(locks is not None and locks.locks(a.ino)),
        )
        level = await self.factory.leasing.settle(op, level)
        if sl is not None:
            answers.append(self._lease_answer(sl))
        granted_durable = durability.grant(op, ask, req.session.user)
        if granted_durable is not None:
            answers.append(CreateContext(*granted_durable))
            if op.persistent:
                await durability.persist(op)
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
        if debugging():
            # (Checked first: the logger and the event's fields cost as much as
            # a store lookup, for a line written only at debug level.)
            self._log.debug(
                "smb create {action} ino={ino}", action=action, ino=a.ino, conn_id=conn.conn_id
            )
        return pack_create_response(action, file_times(st_), fid, answers, level)

    async def _create_stream(
        self,
        conn: Any,
        req: Request,
        body: CreateRequest,
        contexts: dict[bytes, bytes],
        lease_req: LeaseRequest | None,
        parts: list[bytes],
        stream: str,
        ask: DurableAsk,
    ) -> bytes:
        """
        An open of a named stream (MS-FSCC 2.1.5.1): a file of its own as far
        as share modes, oplocks, leases and locks go (as on NTFS), its data
        kept beside the file (L{FileBase.write_stream}). The file is made
        first if it is missing and the disposition creates. Not made durable.
        """
        tree = req.tree
        session = req.session
        assert tree is not None and session is not None
        caller = tree.caller
        vfs = self.vfs
        opts = body.options
        disp = body.disposition
        if opts & c.FILE_DIRECTORY_FILE:
            raise SMBError(st.STATUS_NOT_A_DIRECTORY, "a named stream is no directory")
        if not parts:
            raise SMBError(st.STATUS_OBJECT_NAME_INVALID, "streams of the share's root")
        parent, dir_parts = await self.resolve_dir(caller, parts[:-1])
        parent_ino = parent.ino
        base, leaf = await self._lookup(caller, parent_ino, parts[-1], dir_parts)
        created_base = False
        if base is None:
            if disp in (c.FILE_OPEN, c.FILE_OVERWRITE):
                raise SMBError(st.STATUS_OBJECT_NAME_NOT_FOUND, "no such file")
            dir_origin = Origin(strict=True, exempt=self._parent_exempt(conn, lease_req))
            try:
                base = await vfs.create(
                    caller,
                    parent_ino,
                    leaf,
                    0o644,
                    exclusive=True,
                    origin=dir_origin,
                    durable=self.meta_durable,
                )
                self.meta_changed()
                created_base = True
            except errors.Exists:
                base, leaf = await self._lookup(caller, parent_ino, leaf, dir_parts)
                if base is None:
                    raise SMBError(st.STATUS_OBJECT_NAME_COLLISION) from None
        if not (base.is_reg or base.is_dir):
            raise SMBError(st.STATUS_ACCESS_DENIED, "not a regular file or directory")
        path = "\\".join(p.decode("utf-8", "surrogatepass") for p in [*dir_parts, leaf])
        name = None if created_base else await self.find_stream(caller, base.ino, stream)
        exists = name is not None
        name = name or stream
        if exists and disp == c.FILE_CREATE:
            raise SMBError(st.STATUS_OBJECT_NAME_COLLISION, "the stream exists")
        if not exists and disp in (c.FILE_OPEN, c.FILE_OVERWRITE):
            raise SMBError(st.STATUS_OBJECT_NAME_NOT_FOUND, "no such stream")
        created = not exists
        overwrite = exists and disp in (c.FILE_SUPERSEDE, c.FILE_OVERWRITE, c.FILE_OVERWRITE_IF)
        desired = generic_rights(body.desired_access)
        maximal = await self.maximal_access(caller, base, parent_ino)
        if created_base:
            maximal |= c.FILE_ALL_ACCESS & ~(c.MODIFY_ACCESS if caller.read_only else 0)
        if desired & c.MAXIMUM_ALLOWED:
            granted = maximal | (desired & ~c.MAXIMUM_ALLOWED & maximal)
        else:
            if desired & ~maximal & c.FILE_ALL_ACCESS:
                raise SMBError(st.STATUS_ACCESS_DENIED, "access not granted")
            granted = desired
        if (created or overwrite) and not maximal & c.FILE_WRITE_DATA:
            raise SMBError(st.STATUS_ACCESS_DENIED, "a stream is written with write access")
        if opts & c.FILE_DELETE_ON_CLOSE and not granted & c.DELETE:
            raise SMBError(st.STATUS_ACCESS_DENIED, "delete-on-close without DELETE")
        sid = stream_id(base.ino, name)
        node = self.nodes.get(sid)
        if node is not None and node.delete_pending and not created:
            raise SMBError(st.STATUS_DELETE_PENDING)
        size = 0 if created or overwrite else len(await self.read_stream(caller, base.ino, name))
        seen = attrs.evolve(base, ino=sid, type=FileType.REG, size=size, used=size)
        fid = self.factory.new_file_id()
        owner = self._owner(conn, fid)
        try:
            token = await self._reserve(
                conn,
                req,
                seen,
                owner,
                granted,
                body,
                lease_req,
                overwrite,
                created,
                parent_ino,
                file_ino=base.ino,
            )
        except BaseException:
            if created_base:
                await self._undo_create(caller, parent_ino, leaf, base)
            raise
        try:
            if created or overwrite:
                origin = self.stream_origin(base.ino, owner)
                await self.write_stream(caller, base.ino, name, b"", origin)
        except BaseException:
            if token is not None:
                self.locks.close_share(token)
            raise
        node = self.nodes.get(sid)
        if node is None:
            node = FileNode(sid, parent_ino, leaf, f"{path}:{name}", stream=name, base=base.ino)
            self.nodes[sid] = node
        op = Open(
            fid,
            session,
            tree,
            node,
            False,
            granted,
            lock_owner=owner,
            share=token,
            delete_on_close=bool(opts & c.FILE_DELETE_ON_CLOSE),
            write_through=bool(opts & c.FILE_WRITE_THROUGH),
            mode=opts & c.FILE_MODE_SETTABLE,
        )
        self._register(conn, req, node, op, fid, body.share_access)
        answers: list[CreateContext] = []
        locks = self.locks
        level, sl = self.factory.leasing.grant(
            conn,
            op,
            node.opens,
            body.oplock if lease_req is None else c.SMB2_OPLOCK_LEVEL_LEASE,
            lease_req,
            granted | (c.FILE_WRITE_DATA if overwrite else 0),
            not created,
            bool(locks is not None and locks.locks(sid)),
        )
        level = await self.factory.leasing.settle(op, level)
        if sl is not None:
            answers.append(self._lease_answer(sl))
        self.factory.durability.grant(op, ask, session.user)
        if c.SMB2_CREATE_QUERY_MAXIMAL_ACCESS_REQUEST in contexts:
            answers.append(
                CreateContext(
                    c.SMB2_CREATE_QUERY_MAXIMAL_ACCESS_REQUEST, struct.pack("<II", 0, maximal)
                )
            )
        if c.SMB2_CREATE_QUERY_ON_DISK_ID in contexts:
            answers.append(
                CreateContext(
                    c.SMB2_CREATE_QUERY_ON_DISK_ID,
                    struct.pack("<QQ16s", base.ino, tree.export.id, b""),
                )
            )
        st_ = await self.stream_stat(caller, op)
        if created:
            action = c.FILE_CREATED
        elif overwrite:
            action = c.FILE_SUPERSEDED if disp == c.FILE_SUPERSEDE else c.FILE_OVERWRITTEN
        else:
            action = c.FILE_OPENED
        return pack_create_response(action, file_times(st_), fid, answers, level)

    async def _answer_open(
        self, conn: Any, req: Request, op: Open, action: int, answers: list[CreateContext]
    ) -> bytes:
        """A CREATE reply for an open that exists already (a replay, a reconnect)."""
        caller = op.tree.caller
        a = await self.vfs.getattr(caller, op.ino)
        assert op.node is not None
        st_ = await self.stat(caller, a, op.node.name)
        sl = op.lease
        level = op.oplock
        if sl is not None:
            level = c.SMB2_OPLOCK_LEVEL_LEASE
            answers = [*answers, self._lease_answer(sl)]
        req.result_file_id = op.file_id
        return pack_create_response(action, file_times(st_), op.file_id, answers, level)

    @staticmethod
    def _lease_answer(sl: Any) -> CreateContext:
        return CreateContext(
            c.SMB2_CREATE_REQUEST_LEASE,
            pack_lease_response(
                sl.key,
                to_wire(sl.state),
                sl.flags(),
                sl.version,
                sl.parent,
                sl.epoch if sl.version > 1 else 0,
            ),
        )

    async def _reconnect(
        self,
        conn: Any,
        req: Request,
        body: CreateRequest,
        contexts: dict[bytes, bytes],
        ask: DurableAsk,
    ) -> bytes:
        """
        A durable reconnect (MS-SMB2 3.3.5.9.7, 3.3.5.9.12): the disconnected
        open, with its share reservation, locks and lease, now on this
        connection, session and tree. Anything that does not match is
        STATUS_OBJECT_NAME_NOT_FOUND (an open still connected, another
        CreateGuid, another lease key or ClientGuid, a share other than its
        own); another user STATUS_ACCESS_DENIED.
        """
        assert ask.reconnect is not None and req.session is not None and req.tree is not None
        durability = self.factory.durability
        await durability.load_index()
        await durability.when_recovered()
        pid = ask.reconnect[0]
        if pid in durability.retaking:
            # A persistent open this gateway is still taking back (the killed
            # gateway's reservations linger at the meta server): wait for it.
            await conn.go_async(req, durability.when_retaken(pid))
        elif pid not in durability.by_id:
            # Perhaps one a gateway that died kept, not yet found dead here.
            await conn.go_async(req, defer.Deferred.fromCoroutine(durability.wait_takeover(pid)))
        lease_raw = contexts.get(c.SMB2_CREATE_REQUEST_LEASE)
        try:
            lease = LeaseRequest.parse(lease_raw) if lease_raw is not None else None
        except ProtocolError:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "bad lease context") from None
        op = durability.by_id.get(pid)
        if op is None or op.closed:
            op = await self._restore(conn, req, pid, lease)
        # A v2 reconnect names the CreateGuid (a v1 open has none: zeros); a v1
        # reconnect names none, and may reclaim a v2 open (smbtorture
        # smb2.durable-v2-open.reopen2b, smb2.durable-open.reopen2-lease).
        if ask.version == 2 and (op.create_guid or b"\x00" * 16) != ask.create_guid:
            raise SMBError(st.STATUS_OBJECT_NAME_NOT_FOUND, "CreateGuid does not match")
        sl = op.lease
        # A persistent open taken back at a start: its lease is granted again below.
        kept = op.restored_lease if sl is None else None
        if sl is not None:
            if lease is None or lease.key != sl.key or conn.client_guid != sl.client:
                raise SMBError(st.STATUS_OBJECT_NAME_NOT_FOUND, "lease does not match")
        elif kept is not None:
            if (
                lease is None
                or lease.key.hex() != kept.get("key")
                or conn.client_guid.hex() != kept.get("client")
            ):
                raise SMBError(st.STATUS_OBJECT_NAME_NOT_FOUND, "lease does not match")
        elif lease is not None:
            raise SMBError(st.STATUS_OBJECT_NAME_NOT_FOUND, "lease asked of an open without one")
        if not op.disconnected:
            raise SMBError(st.STATUS_OBJECT_NAME_NOT_FOUND, "the open is still connected")
        if op.tree.export is not req.tree.export and op.tree.export.name != req.tree.export.name:
            raise SMBError(st.STATUS_OBJECT_NAME_NOT_FOUND, "open of another share")
        if op.owner.lower() != req.session.user.lower():
            raise SMBError(st.STATUS_ACCESS_DENIED, "durable handle of another user")
        if (sl is not None or kept is not None) and op.node is not None:
            name = body.name.lower().removesuffix("::$data")
            if name != op.node.path.lower():
                # Samba: the name of a reopened leased file must match.
                raise SMBError(st.STATUS_INVALID_PARAMETER, "name does not match the open")
        # Reattach: the same persistent id, a new volatile one on this connection.
        durability.reconnected(op)
        op.session, op.tree, op.conn = req.session, req.tree, conn
        if conn.dialect >= c.SMB_3_0:
            # The reconnect starts the open's channel over (MS-SMB2 3.3.5.2.10):
            # its ChannelSequence is the reconnect's, nothing is outstanding.
            op.channel_sequence = req.header.status & 0xFFFF
            op.outstanding = op.pre_outstanding = 0
            op.channel_generation += 1
        op.file_id = (pid, self.factory.new_file_id()[1])
        conn.opens[op.file_id[1]] = op
        if sl is not None:
            sl.conn = conn
        if op.persistent:
            if op.lease is None and (kept is not None or op.restored_oplock):
                await self._grant_again(conn, op, kept)
            await durability.persist(op)
        self._log.debug("smb durable handle reconnected", ino=op.ino, conn_id=conn.conn_id)
        return await self._answer_open(conn, req, op, c.FILE_OPENED, [])

    async def _grant_again(self, conn: Any, op: Open, kept: dict[str, Any] | None) -> None:
        """
        The lease or oplock a persistent open held before a gateway start,
        granted again at its reconnect as far as it can be now (another
        client may have taken a lease meanwhile, if the share mode let it open).
        """
        leasing = self.factory.leasing
        node = op.node
        assert node is not None
        op.restored_lease, level, op.restored_oplock = None, op.restored_oplock, 0
        if kept is not None:
            leasing.grant(
                conn,
                op,
                node.opens,
                c.SMB2_OPLOCK_LEVEL_LEASE,
                _stored_lease(kept),
                op.access,
                True,
                False,
            )
        else:
            leasing.grant(conn, op, node.opens, level, None, op.access, True, False)
        await leasing.settle(op, op.oplock)

    async def restore_persistent(self, pid: int, rec: dict[str, Any]) -> Open | None:
        """
        A persistent open a previous gateway left in the store (MS-SMB2
        3.3.5.9.10, a C{ca: true} share), made again at this gateway's start,
        disconnected: its share reservation and byte-range locks taken as
        reclaims, so that nobody else gets into the file until a reconnect
        (L{_reconnect}) or its timeout. Its lease and oplock wait for the
        reconnect (there is nobody to break them to now).

        @return: (a coroutine) the open, or None if the share or file is gone.
        @raise errors.Busy: the reservation or a lock is held by someone else
            (the killed gateway's, until the meta server lets them go).
        """
        vfs = self.vfs
        export = vfs.exports.by_name(str(rec["export"]), "smb")
        if export is None or not getattr(export.rules, "ca", False):
            return None
        cred = Credentials(
            int(rec["uid"]), int(rec["gid"]), tuple(int(g) for g in rec.get("groups", ()))
        )
        caller = Caller(cred, export, str(rec.get("peer", "")), "smb")
        try:
            a = await vfs.getattr(caller, int(rec["ino"]))
        except errors.FSError:
            return None
        if a.nlink == 0:
            return None
        fid = (pid, self.factory.new_file_id()[1])
        owner = LockOwner("smb", f"persistent-{pid:016x}", struct.pack("<QQ", *fid))
        access, share = int(rec["access"]), int(rec["share"])
        acc, deny = share_modes(access, share)
        locks = self.locks
        token = None
        if locks is not None:
            try:
                if acc:
                    token = locks.open_share(a.ino, owner, acc, deny, reclaim=True)
                    await locks.settle_share(token)
                for start, length, exclusive in rec.get("locks", ()):
                    await locks.lock(
                        a.ino, owner, int(start), int(length), bool(exclusive), reclaim=True
                    )
            except (errors.ShareConflict, errors.LockConflict, errors.Again) as e:
                locks.release_owner(owner)
                raise errors.Busy(f"held elsewhere: {e}") from None
            except BaseException:
                locks.release_owner(owner)
                raise
        path = str(rec["path"])
        node = self.nodes.get(a.ino)
        if node is None:
            leaf = path.rsplit("\\", 1)[-1].encode("utf-8", "surrogatepass")
            parent = (await vfs.lookup(caller, a.ino, b"..")).ino if a.is_dir else 0
            node = FileNode(a.ino, parent, leaf, path)
            self.nodes[a.ino] = node
        session = Session(0, None, None, user=str(rec["user"]))
        tree = Tree(0, session, export.name, export, caller)
        op = Open(fid, session, tree, node, a.is_dir, access, lock_owner=owner, share=token)
        op.share_access = share
        op.durable = int(rec["v"])
        op.durable_timeout = float(rec["timeout"])
        op.create_guid = bytes.fromhex(rec["create_guid"]) if rec.get("create_guid") else None
        op.owner = str(rec["user"])
        op.client_guid = bytes.fromhex(str(rec.get("client", "")))
        op.disconnected = True
        op.persistent = True
        op.zero_locks = [(int(z), bool(x)) for z, x in rec.get("zero_locks", ())]
        op.restored_lease = rec.get("lease")
        op.restored_oplock = int(rec.get("oplock", 0))
        node.opens.add(op)
        durability = self.factory.durability
        durability.by_id[pid] = op
        if op.create_guid is not None:
            durability.by_create_guid[(op.client_guid, op.create_guid)] = op
        self._log.info("smb persistent handle taken back from the state store", ino=a.ino)
        return op

    async def _restore(self, conn: Any, req: Request, pid: int, lease: LeaseRequest | None) -> Open:
        """
        An open a previous run of the gateway left disconnected (its record in
        the state store), made again: the file by inode, the share
        reservation, the lease or oplock if they can be granted again.

        @raise SMBError: STATUS_OBJECT_NAME_NOT_FOUND if there is none, it
            expired, or the file or its share reservation cannot be had.
        """
        durability = self.factory.durability
        try:
            rec = await durability.stored(pid)
        except ProtocolError:
            rec = None
        if rec is None:
            raise SMBError(st.STATUS_OBJECT_NAME_NOT_FOUND, "no such durable handle")
        tree = req.tree
        assert tree is not None and req.session is not None
        if tree.ipc or tree.export.name != rec["export"]:
            raise SMBError(st.STATUS_OBJECT_NAME_NOT_FOUND, "durable handle of another share")
        caller = tree.caller
        try:
            a = await self.vfs.getattr(caller, int(rec["ino"]))
        except errors.FSError:
            durability.forget_record(pid)
            raise SMBError(st.STATUS_OBJECT_NAME_NOT_FOUND, "the file is gone") from None
        if a.nlink == 0:
            durability.forget_record(pid)
            raise SMBError(st.STATUS_OBJECT_NAME_NOT_FOUND, "the file is gone")
        fid = (pid, self.factory.new_file_id()[1])
        owner = self._owner(conn, fid)
        access, share = int(rec["access"]), int(rec["share"])
        acc, deny = share_modes(access, share)
        token = None
        if self.locks is not None and acc:
            try:
                token = self.locks.open_share(a.ino, owner, acc, deny)
            except (errors.ShareConflict, errors.Grace):
                raise SMBError(st.STATUS_OBJECT_NAME_NOT_FOUND, "taken meanwhile") from None
            try:
                await self.locks.settle_share(token)
            except errors.ShareConflict:
                self.locks.close_share(token)
                raise SMBError(st.STATUS_OBJECT_NAME_NOT_FOUND, "taken meanwhile") from None
            except BaseException:
                self.locks.close_share(token)
                raise
        path = str(rec["path"])
        node = self.nodes.get(a.ino)
        if node is None:
            leaf = path.rsplit("\\", 1)[-1].encode("utf-8", "surrogatepass")
            parent = (await self.vfs.lookup(caller, a.ino, b"..")).ino if a.is_dir else 0
            node = FileNode(a.ino, parent, leaf, path)
            self.nodes[a.ino] = node
        op = Open(fid, req.session, tree, node, a.is_dir, access, lock_owner=owner, share=token)
        op.share_access = share
        op.durable = int(rec["v"])
        op.durable_timeout = float(rec["timeout"])
        op.create_guid = bytes.fromhex(rec["create_guid"]) if rec.get("create_guid") else None
        op.owner = str(rec["user"])
        op.client_guid = bytes.fromhex(str(rec.get("client", ""))) or conn.client_guid
        op.disconnected = True
        node.opens.add(op)
        stored_lease = rec.get("lease")
        leasing = self.factory.leasing
        if stored_lease is not None:
            leasing.grant(
                conn,
                op,
                node.opens,
                c.SMB2_OPLOCK_LEVEL_LEASE,
                _stored_lease(stored_lease),
                access,
                True,
                False,
            )
        else:
            leasing.grant(conn, op, node.opens, int(rec["oplock"]), None, access, True, False)
        await leasing.settle(op, op.oplock)
        durability.by_id[pid] = op
        if op.create_guid is not None:
            durability.by_create_guid[(op.client_guid, op.create_guid)] = op
        durability.forget_record(pid)
        self._log.info("smb durable handle restored from the state store", ino=a.ino)
        return op

    @staticmethod
    def _register(
        conn: Any, req: Request, node: FileNode, op: Open, fid: Any, share_access: int
    ) -> None:
        """Make a new open known to its file, its connection and the reply (file and stream opens)."""
        node.opens.add(op)
        conn.opens[fid[1]] = op
        op.conn = conn
        op.client_guid = conn.client_guid
        op.share_access = share_access
        if conn.dialect >= c.SMB_3_0:
            # MS-SMB2 3.3.5.9: Open.ChannelSequence from the CREATE's header.
            op.channel_sequence = req.header.status & 0xFFFF
        req.result_file_id = fid

    @property
    def _shared_locks(self) -> Any:
        """The lock table, as one shared with other gateways (vfs/shared.py)."""
        return self.locks

    def _create_intent(
        self, conn: Any, caller: Caller, desired: int, body: CreateRequest
    ) -> tuple[tuple[int, int] | None, Any]:
        """
        For a CREATE that makes a file, through a lock table shared with other
        gateways: the open's FileId, chosen now, and the share reservation
        the open will take, for the meta server to register with the create
        (CREATE_OPEN: one round trip where there were two). (None, None) when
        the lock table has no such thing, or when the open could still fail
        after the create for a reason known now (then nothing is registered
        that no close would release).
        """
        intent_of = getattr(self.locks, "share_intent", None)
        if intent_of is None:
            return None, None
        # What _create grants a file it made (the checks below repeat its own).
        maximal = c.FILE_ALL_ACCESS & ~(c.MODIFY_ACCESS if caller.read_only else 0)
        if desired & c.MAXIMUM_ALLOWED:
            granted = maximal | (desired & ~c.MAXIMUM_ALLOWED & maximal)
        elif desired & ~maximal & c.FILE_ALL_ACCESS:
            return None, None
        else:
            granted = desired
        if body.options & c.FILE_DELETE_ON_CLOSE and not granted & c.DELETE:
            return None, None
        acc, deny = share_modes(granted, body.share_access)
        if not acc:
            return None, None
        fid = self.factory.new_file_id()
        return fid, intent_of(self._owner(conn, fid), acc, deny)

    async def _reserve(
        self,
        conn: Any,
        req: Request,
        a: Attributes,
        owner: LockOwner,
        granted: int,
        body: CreateRequest,
        lease_req: LeaseRequest | None,
        overwrite: bool,
        created: bool,
        parent_ino: int | None,
        file_ino: int | None = None,
    ) -> ShareToken | None:
        """
        The open's share reservation, after the oplock and lease breaks it
        needs (MS-SMB2 3.3.5.9, Samba's C{delay_for_oplock}): while a break
        the open depends on is outstanding, the CREATE goes asynchronous and
        waits for the acknowledgement (or the recall time), then checks again.

        @raise SMBError: STATUS_SHARING_VIOLATION.
        """
        locks = self.locks
        leasing = self.factory.leasing
        assert req.tree is not None
        conn_caller = req.tree.caller
        acc, deny = share_modes(granted, body.share_access)
        open_access = granted | (c.FILE_WRITE_DATA if overwrite else 0)
        clock = self.factory.reactor
        deadline: float | None = None  # set at the first break this open waits for
        first = True
        while True:
            token = None
            violation = False
            if locks is not None and acc:
                try:
                    token = locks.open_share(a.ino, owner, acc, deny)
                except (errors.ShareConflict, errors.Grace):
                    violation = True
            if created or leasing.idle(a.ino):
                # No one else holds anything on a file this open just made,
                # nor on one with no lease or oplock: nothing to break,
                # nothing to wait for.
                break
            delay = False
            pending: list[defer.Deferred[None]] = []
            # Listen before breaking: a break may be over at once (a holder
            # that needs no acknowledgement, a disconnected durable open closed).
            changed = leasing.wait_change(a.ino)
            delay, pending = leasing.break_for_open(
                a.ino, conn.client_guid, lease_req, open_access, violation, overwrite, first
            )
            delay = delay or bool(pending)
            if delay and deadline is None:
                deadline = clock.seconds() + 2 * leasing.recall_timeout
            if not delay or deadline is None or clock.seconds() >= deadline:
                # Dropped unfired rather than cancelled: no Failure per CREATE.
                leasing.stop_waiting(a.ino, changed)
                break
            if token is not None:
                locks.close_share(token)
            first = False
            waits = [changed, *pending]
            done: defer.Deferred[None] = defer.Deferred()
            over: list[bool] = []

            def fire(_: object, done: defer.Deferred[None] = done, over: list[bool] = over) -> None:
                # Once the wait is over (or abandoned: a cancelled request, a
                # connection gone), the waits we drop below must not fire it.
                if not done.called and not over:
                    done.callback(None)

            for w in waits:
                w.addBoth(fire)
            timer = clock.callLater(max(0.0, deadline - clock.seconds()), fire, None)
            try:
                await conn.go_async(req, done)
                deleting = self.deleting.get(parent_ino) if parent_ino is not None else None
                if deleting:
                    await defer.gatherResults(list(deleting))
                try:
                    now = await self.vfs.getattr(
                        conn_caller, a.ino if file_ino is None else file_ino
                    )
                except errors.NotFound:
                    now = None
                if now is None or now.nlink == 0:
                    raise _Restart()
            finally:
                over.append(True)
                if timer.active():
                    timer.cancel()
                for w in waits:
                    if not w.called:
                        w.cancel()
        if violation:
            raise SMBError(st.STATUS_SHARING_VIOLATION)
        if token is not None and locks is not None:
            # Several gateways: the meta server's word (another gateway's open
            # may have got there first, in the moment before we heard of it).
            try:
                await locks.settle_share(token)
            except errors.ShareConflict:
                locks.close_share(token)
                raise SMBError(st.STATUS_SHARING_VIOLATION) from None
            except BaseException:
                locks.close_share(token)
                raise
        return token

    def _lease_request(
        self, conn: Any, body: CreateRequest, contexts: dict[bytes, bytes]
    ) -> LeaseRequest | None:
        """
        The CREATE's lease request, if it makes one (MS-SMB2 3.3.5.9.8,
        3.3.5.9.11): RequestedOplockLevel LEASE, a lease context, a non-zero
        key; a v2 context from SMB 3 on. No leases before SMB 2.1.

        @raise SMBError: a lease context of the wrong size (INVALID_PARAMETER).
        """
        raw = contexts.get(c.SMB2_CREATE_REQUEST_LEASE)
        if raw is None or conn.dialect < c.SMB_2_1:
            return None
        try:
            lease = LeaseRequest.parse(raw)
        except ProtocolError:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "bad lease context") from None
        if body.oplock != c.SMB2_OPLOCK_LEVEL_LEASE or lease.key == b"\x00" * 16:
            return None
        if lease.version == 2 and conn.dialect < c.SMB_3_0:
            return None
        return lease

    @staticmethod
    def _parent_exempt(conn: Any, lease_req: LeaseRequest | None) -> tuple[LeaseKey, ...]:
        """The directory lease a v2 lease names as its parent: changes through it do not break it."""
        if lease_req is None or lease_req.parent is None:
            return ()
        return (LeaseKey("smb", conn.client_guid, lease_req.parent),)

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
                # No snapshots: a previous version is a name that does not
                # exist, as Samba answers (smbtorture smb2.create.blob).
                if len(ctx.data) != 8:
                    raise SMBError(st.STATUS_INVALID_PARAMETER, "TWrp context size")
                raise SMBError(st.STATUS_OBJECT_NAME_NOT_FOUND, "previous versions are not served")
            if name == c.SVHDX_OPEN_DEVICE_CONTEXT:
                raise SMBError(st.STATUS_NOT_SUPPORTED, "virtual disks are not served")
            if name == c.SMB2_CREATE_QUERY_MAXIMAL_ACCESS_REQUEST and len(ctx.data) not in (0, 8):
                raise SMBError(st.STATUS_INVALID_PARAMETER, "MxAc context size")
            if name == c.SMB2_CREATE_ALLOCATION_SIZE and len(ctx.data) != 8:
                raise SMBError(st.STATUS_INVALID_PARAMETER, "AlSi context size")
            if name == c.SMB2_CREATE_EA_BUFFER:
                try:
                    ea_entries(ctx.data)
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
        fid = self.factory.new_file_id()
        assert req.session is not None and req.tree is not None
        pipe = Pipe(name, Srvsvc(self._share_list, self.factory.computer, "claudefs-gateway"))
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
        conn = conn if conn is not None else op.conn
        if conn is not None and conn.opens.get(op.file_id[1]) is op:
            del conn.opens[op.file_id[1]]
        self.factory.durability.forget(op)
        if op.resume_key:
            self.resume_keys.pop(op.resume_key, None)
        if op.watch is not None:
            self._end_watch(conn, op)
        owner = op.lock_owner
        node = op.node
        # A close that may delete the file: its owner's locks and share go
        # here at once, and at the meta server with the file's last link
        # (the UNLINK drops them there), so it is told only if the file
        # stays (docs/workers.rst "An SMB delete's close").
        removing = (
            owner is not None and node is not None and (op.delete_on_close or node.delete_pending)
        )
        if owner is not None:
            self.locks.release_owner(owner, tell=not removing)
        if node is None:
            return
        if not removing:
            await self._close_node(op, node)
            return
        gone = False
        try:
            gone = await self._close_node(op, node)
        finally:
            if not gone and owner is not None:
                self.locks.release_owner(owner)

    async def _close_node(self, op: Open, node: FileNode) -> bool:
        """The rest of L{close}: the file's deletion if pending. True: its last link went."""
        node.opens.discard(op)
        self.factory.leasing.closed(op)
        leases = self.vfs.leases
        if op.written and node.parent and leases.busy(node.parent):
            # Closing a file written through this open updates its last write
            # time: the directory's leases break, as on Windows (smbtorture
            # smb2.lease.v2_request).
            try:
                await leases.recall(node.parent, Why.DIR_CHANGE, op.exempt)
            except defer.CancelledError:
                pass
        if op.delete_on_close:
            node.delete_pending = True
        if node.delete_pending:
            # As Samba at the close that makes a deletion pending: waiting
            # CHANGE_NOTIFYs on the directory's other handles end.
            for other in node.opens:
                if other.watch is not None:
                    self.watch_deleted(other)
        if node.opens:
            return False
        if self.nodes.get(node.ino) is node:
            del self.nodes[node.ino]
        if node.delete_pending and node.stream is not None:
            try:
                await self.remove_stream(
                    op.tree.caller, node.base, node.stream, self.stream_origin(node.base)
                )
            except errors.FSError as e:
                self._log.info("smb: deleting a stream at close failed: {why}", why=str(e))
            return False
        gone = False
        if node.delete_pending and node.name:
            caller = op.tree.caller
            # Opens of names in this directory wait until the name is gone
            # (a connection lost with a delete-on-close open, then an open
            # of the same name on a new one; smbtorture smb2.durable-open.delete_on_close1).
            done: defer.Deferred[None] = defer.Deferred()
            self.deleting.setdefault(node.parent, []).append(done)
            try:
                durable = self.meta_durable
                if op.is_dir:
                    after = await inline(
                        self.vfs.rmdir, caller, node.parent, node.name, op.origin, durable
                    )
                else:
                    after = await inline(
                        self.vfs.remove, caller, node.parent, node.name, op.origin, durable
                    )
                gone = after.nlink == 0
                self.meta_changed()
                if op.write_through:
                    await self.meta_sync()
            except errors.FSError as e:
                self._log.info("smb: delete on close failed: {why}", why=str(e))
            finally:
                waiting = self.deleting.get(node.parent, [])
                if done in waiting:
                    waiting.remove(done)
                if not waiting:
                    self.deleting.pop(node.parent, None)
                done.callback(None)
        return gone

    def disconnect(self, conn: Any, op: Open) -> None:
        """
        A durable open loses its connection: what belonged to the connection
        ends (its CHANGE_NOTIFY watch); the rest stays for a reconnect.
        """
        if op.watch is not None:
            self._end_watch(conn, op)

    def close_quietly(self, conn: Any, op: Open) -> None:
        d = defer.Deferred.fromCoroutine(self.close(conn, op))
        d.addErrback(lambda f: self._log.failure("smb: closing an open failed", f))
