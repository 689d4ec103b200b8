# -*- test-case-name: tests.smb.test_files -*-
"""
READ, WRITE, FLUSH and LOCK (MS-SMB2 3.3.5.12-3.3.5.14): data and
byte-range locks through the vfs.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from claudefs_gateway import errors
from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.interfaces import ILockTable
from claudefs_gateway.smb import constants as c
from claudefs_gateway.smb import ntstatus as st
from claudefs_gateway.smb.errors import SMBError
from claudefs_gateway.smb.filebase import FileBase
from claudefs_gateway.smb.messages import (
    SIMPLE_BODY,
    FileIdRequest,
    LockRequest,
    ReadRequest,
    WriteRequest,
    pack_read_response_header,
    pack_write_response,
)
from claudefs_gateway.smb.state import Open, Parts, Reply, Request
from claudefs_gateway.vfs import inline
from claudefs_gateway.vfs.leases import Why

__all__ = ["ReadWriteCommands"]

#: NTFS's MAXFILESIZE (16 TiB - 64 KiB): Windows refuses writes reaching it.
MAX_FILE_SIZE = 0xFFFFFFF0000


class ReadWriteCommands(FileBase):
    """READ, WRITE, FLUSH and LOCK."""

    # -- READ, WRITE, FLUSH ------------------------------------------------------------------------

    async def smb_READ(self, conn: Any, req: Request) -> Reply | Parts:
        """
        READ (MS-SMB2 3.3.5.12). The reply is its fixed part and the data as
        the store read it, in two pieces the connection signs and sends
        without joining them (L{SMBConnection._response_parts}).
        """
        body = ReadRequest.parse(req.raw)
        op = self.lookup_open(conn, req, body.file_id)
        if body.length > self.factory.max_io:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "read larger than MaxReadSize")
        if op.pipe is not None:
            data = op.pipe.read(body.length)
            if not data:
                raise SMBError(st.STATUS_PIPE_EMPTY)
            status = st.STATUS_BUFFER_OVERFLOW if op.pipe.pending else 0
            return Reply(pack_read_response_header(len(data)) + data, status)
        if op.is_dir:
            raise SMBError(st.STATUS_INVALID_DEVICE_REQUEST, "read of a directory")
        if not op.access & (c.FILE_READ_DATA | c.FILE_EXECUTE):
            raise SMBError(st.STATUS_ACCESS_DENIED, "no read access")
        if body.offset + body.length > 2**63 - 1:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "read past the largest offset")
        if op.stream is not None:
            assert op.node is not None
            whole = await self.read_stream(op.tree.caller, op.file_ino, op.stream)
            data = whole[body.offset : body.offset + body.length]
            if (body.length and not data) or len(data) < body.minimum:
                raise SMBError(st.STATUS_END_OF_FILE)
            op.position = body.offset + len(data)
            return [pack_read_response_header(len(data)), data]
        try:
            result = await self.vfs.read(
                op.tree.caller, op.ino, body.offset, body.length, op.origin
            )
        except errors.LockConflict:
            raise SMBError(st.STATUS_FILE_LOCK_CONFLICT) from None
        data = result.data
        if (body.length and not data) or len(data) < body.minimum:
            raise SMBError(st.STATUS_END_OF_FILE)
        # The open's position follows its reads, as Samba keeps it
        # (FilePositionInformation; smbtorture smb2.read.position).
        op.position = body.offset + len(data)
        return [pack_read_response_header(len(data)), data]

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
            if op.stream is not None:
                offset = len(await self.read_stream(caller, op.file_ino, op.stream))
            else:
                offset = (await self.vfs.getattr(caller, op.ino)).size
        if offset + length > 2**63 - 1:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "write past the largest offset")
        if length and offset >= MAX_FILE_SIZE:
            # NTFS's largest file (16 TiB - 64 KiB), which Windows enforces on
            # writes whatever the store could hold (smbtorture smb2.rw.invalid).
            raise SMBError(st.STATUS_INVALID_PARAMETER, "write past the largest file")
        if length and offset + length >= MAX_FILE_SIZE:
            raise SMBError(st.STATUS_DISK_FULL, "file would reach the largest size")
        if op.stream is not None:
            if length:
                await self.write_stream_at(op, offset, bytes(body.data))
            return pack_write_response(length)
        stable = op.write_through or bool(body.flags & c.SMB2_WRITEFLAG_WRITE_THROUGH)
        if length:
            try:
                # The frame's bytes are immutable: the view goes to the store
                # uncopied, as NFS WRITE's does (the backends take any buffer).
                await inline(self.vfs.write, caller, op.ino, offset, body.data, stable, op.origin)
                op.written = True
            except errors.LockConflict:
                raise SMBError(st.STATUS_FILE_LOCK_CONFLICT) from None
            await self.changed_through(op)
        return pack_write_response(length)

    async def smb_FLUSH(self, conn: Any, req: Request) -> bytes:
        body = FileIdRequest.parse(req.raw)
        op = self.lookup_open(conn, req, body.file_id)
        if op.pipe is not None:
            return SIMPLE_BODY
        if not op.access & (c.FILE_WRITE_DATA | c.FILE_APPEND_DATA):
            raise SMBError(st.STATUS_ACCESS_DENIED, "flush without write access")
        if not op.is_dir and op.stream is None:
            # A durable commit: it makes every earlier metadata change
            # durable too (the store's log is ordered; FileBase.meta_durable).
            await self.vfs.commit(op.tree.caller, op.ino)
        else:
            await self.meta_sync()
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
        replay_index = self._lock_sequence(conn, op, body.sequence)
        if replay_index is None:
            # A replay of a LOCK that succeeded already (MS-SMB2 3.3.5.14).
            return SIMPLE_BODY
        if elems[0].flags == c.SMB2_LOCKFLAG_UNLOCK:
            for e in elems:
                if e.flags != c.SMB2_LOCKFLAG_UNLOCK:
                    raise SMBError(st.STATUS_INVALID_PARAMETER, "lock in an unlock array")
                self._unlock(locks, op, e.offset, e.length)
            self._lock_sequence_done(op, body.sequence, replay_index)
            if op.persistent:
                await self.factory.durability.persist(op)
            return SIMPLE_BODY
        for e in elems:
            kind = e.flags & ~c.SMB2_LOCKFLAG_FAIL_IMMEDIATELY
            if kind not in (c.SMB2_LOCKFLAG_SHARED_LOCK, c.SMB2_LOCKFLAG_EXCLUSIVE_LOCK):
                raise SMBError(st.STATUS_INVALID_PARAMETER, "bad lock flags")
            if len(elems) > 1 and not e.flags & c.SMB2_LOCKFLAG_FAIL_IMMEDIATELY:
                raise SMBError(st.STATUS_INVALID_PARAMETER, "blocking lock in a lock array")
            if e.length and e.offset + e.length > 2**64:
                raise SMBError(st.STATUS_INVALID_LOCK_RANGE)
        leases = self.vfs.leases
        if leases.busy(op.ino):
            # A byte-range lock ends others' read caching (Samba's
            # contend_level2_oplocks, MS-FSA 2.1.5.7): level II oplocks and
            # read leases break to none; this open's own write cache stays.
            await leases.recall(op.ino, Why.WRITE, op.exempt)
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
        self._lock_sequence_done(op, body.sequence, replay_index)
        if op.persistent:
            # MS-SMB2 3.3.1.10: a persistent open keeps its locks; a gateway
            # killed after this reply leaves them in its record.
            await self.factory.durability.persist(op)
        return SIMPLE_BODY

    @staticmethod
    def _lock_sequence(conn: Any, op: Open, sequence: int) -> int | None:
        """
        LOCK replay detection (MS-SMB2 3.3.5.14): for a resilient open from
        2.1, and from 3.0 a durable or resilient one or any on a connection
        that negotiated multichannel, LockSequence names a
        bucket (1..64) and a number; the same number again in the same bucket
        is a replay of a request that succeeded.

        @return: the bucket to record into after success (0: none), or None
            for a replay.
        """
        if not (
            (conn.dialect == c.SMB_2_1 and op.resilient)
            or (conn.dialect >= c.SMB_3_0 and (op.durable or op.resilient or conn.multichannel))
        ):
            return 0
        index = (sequence >> 4) & 0x0FFFFFFF
        number = sequence & 0xF
        if not 1 <= index <= 64:
            return 0
        if op.lock_sequences.get(index) == number:
            return None
        op.lock_sequences.pop(index, None)
        return index

    @staticmethod
    def _lock_sequence_done(op: Open, sequence: int, index: int) -> None:
        if index:
            op.lock_sequences[index] = sequence & 0xF

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
