# -*- test-case-name: tests.nfs.v4.test_v42 -*-
"""
NFSv4.2 operations (RFC 7862 §15): ALLOCATE, DEALLOCATE, SEEK, READ_PLUS,
COPY (intra-server, synchronous and asynchronous), OFFLOAD_STATUS,
OFFLOAD_CANCEL, CLONE and IO_ADVISE.

Choices, where the RFC leaves them:

 - The store keeps no map of holes it could report: SEEK finds data
   everywhere before the end of the file and the only hole at its end;
   READ_PLUS answers data segments. Both are true, if not the whole truth
   about sparse files (DEALLOCATE still punches holes that read as zeros).
 - COPY runs asynchronously (a copy stateid now, CB_OFFLOAD when done,
   OFFLOAD_STATUS meanwhile) when the client allows it, its back channel is
   up and it copies at least C{nfs.v4.async_copy_min} bytes; otherwise it
   copies before answering. Copied data is committed before the copy is
   reported done (FILE_SYNC4).
 - CLONE copies the range too (the store has no shared extents): the
   result is the same file contents, at the cost of the copy.
 - Inter-server copy (COPY with a source server, COPY_NOTIFY), WRITE_SAME
   and the flexfiles layout reports (LAYOUTERROR, LAYOUTSTATS) answer
   NFS4ERR_NOTSUPP.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from claudefs_gateway import errors
from claudefs_gateway.core.log import Logger
from claudefs_gateway.fstypes import MAX_FILE_SIZE
from claudefs_gateway.nfs.errors import nfs4_status
from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4.base import Nfs4Error
from claudefs_gateway.nfs.v4.codec import (
    CbOffloadArgs,
    CloneArgs,
    CopyArgs,
    CopyRequirements,
    CopyResok,
    Data,
    IoAdviseArgs,
    OffloadStatusResok,
    RangeArgs,
    ReadPlusArgs,
    ReadPlusResok,
    SeekArgs,
    SeekResok,
    StateidArgs,
    WriteResponse,
)
from claudefs_gateway.nfs.v4.compound import FH, CompoundState, OpsBase, ok
from claudefs_gateway.nfs.v4.ops_fs import require_regular
from claudefs_gateway.nfs.v4.state import COPY, State
from claudefs_gateway.rpc.xdrtypes import Arm
from claudefs_gateway.vfs import Caller
from claudefs_gateway.vfs.origin import Origin

__all__ = ["V42Ops", "CopyJob"]

#: Asynchronous copies one client may have running.
MAX_COPIES_PER_CLIENT = 16


class CopyJob:
    """An asynchronous COPY in progress: how far it got, how it ended."""

    def __init__(self) -> None:
        self.copied = 0
        self.status: int | None = None
        self.deferred: defer.Deferred[Any] | None = None

    def cancel(self) -> None:
        if self.deferred is not None and not self.deferred.called:
            self.deferred.cancel()


class V42Ops(OpsBase):
    """The NFSv4.2 operations."""

    _log = Logger()

    def _data_fh(self, st: CompoundState, fh: FH, write: bool) -> tuple[Any, Caller]:
        obj, caller = self.real(st, fh, write=write)
        require_regular(obj)
        return obj, caller

    async def op_ALLOCATE(self, st: CompoundState, a: RangeArgs) -> Arm:
        fh = self.cfh(st)
        _, caller = self._data_fh(st, fh, True)
        origin = self.io_origin(st, a.stateid, fh, write=True)
        if a.length == 0:
            raise Nfs4Error(c.NFS4ERR_INVAL, "length 0")
        if a.offset + a.length > MAX_FILE_SIZE:
            raise Nfs4Error(c.NFS4ERR_FBIG)
        vfs = await self.vfs()
        try:
            fh.attrs = await vfs.allocate(caller, fh.ino, a.offset, a.length, origin)
        except errors.LockConflict:
            raise Nfs4Error(c.NFS4ERR_LOCKED) from None
        return ok()

    async def op_DEALLOCATE(self, st: CompoundState, a: RangeArgs) -> Arm:
        fh = self.cfh(st)
        _, caller = self._data_fh(st, fh, True)
        origin = self.io_origin(st, a.stateid, fh, write=True)
        if a.length == 0:
            raise Nfs4Error(c.NFS4ERR_INVAL, "length 0")
        if a.offset + a.length > 2**64:
            raise Nfs4Error(c.NFS4ERR_INVAL, "range past the last offset")
        vfs = await self.vfs()
        try:
            fh.attrs = await vfs.deallocate(caller, fh.ino, a.offset, a.length, origin)
        except errors.LockConflict:
            raise Nfs4Error(c.NFS4ERR_LOCKED) from None
        return ok()

    async def op_SEEK(self, st: CompoundState, a: SeekArgs) -> Arm:
        fh = self.cfh(st)
        obj, caller = self._data_fh(st, fh, False)
        self.io_state(st, a.stateid, fh, write=False)
        vfs = await self.vfs()
        obj = fh.attrs = await vfs.getattr(caller, fh.ino)
        if a.offset >= obj.size:
            raise Nfs4Error(c.NFS4ERR_NXIO, "offset at or past the end of the file")
        if a.what == c.NFS4_CONTENT_DATA:
            return ok(SeekResok(False, a.offset))
        return ok(SeekResok(True, obj.size))

    async def op_READ_PLUS(self, st: CompoundState, a: ReadPlusArgs) -> Arm:
        fh = self.cfh(st)
        _, caller = self._data_fh(st, fh, False)
        origin = self.io_origin(st, a.stateid, fh, write=False)
        room = st.limit - st.size - 64 if st.limit else self.settings.io_size
        count = max(0, min(a.count, self.settings.io_size, room))
        if a.offset > MAX_FILE_SIZE:
            return ok(ReadPlusResok(True, []))
        vfs = await self.vfs()
        try:
            got = await vfs.read(caller, fh.ino, a.offset, count, origin)
        except errors.LockConflict:
            raise Nfs4Error(c.NFS4ERR_LOCKED) from None
        fh.attrs = got.attrs
        contents = [Arm(c.NFS4_CONTENT_DATA, Data(a.offset, got.data))] if got.data else []
        return ok(ReadPlusResok(got.eof, contents))

    async def op_IO_ADVISE(self, st: CompoundState, a: IoAdviseArgs) -> Arm:
        fh = self.cfh(st)
        self._data_fh(st, fh, False)
        # No hints are acted on: an empty bitmap says so (RFC 7862 §15.5.3).
        return ok([])

    # -- COPY and CLONE ----------------------------------------------------------------------------

    async def _copy_range(
        self,
        src: FH,
        src_caller: Caller,
        dst: FH,
        dst_caller: Caller,
        src_off: int,
        dst_off: int,
        count: int,
        job: CopyJob | None = None,
        origins: tuple[Origin | None, Origin | None] = (None, None),
    ) -> int:
        vfs = await self.vfs()
        step = self.settings.io_size
        done = 0
        while done < count:
            n = min(step, count - done)
            got = await vfs.read(src_caller, src.ino, src_off + done, n, origins[0])
            if got.data:
                await vfs.write(dst_caller, dst.ino, dst_off + done, got.data, False, origins[1])
                done += len(got.data)
                if job is not None:
                    job.copied = done
            if got.eof or not got.data:
                break
        await vfs.commit(dst_caller, dst.ino)
        return done

    async def _copy_args(
        self, st: CompoundState, src_sid: Any, dst_sid: Any, src_off: int, dst_off: int, count: int
    ) -> tuple[FH, Caller, FH, Caller, int, tuple[Origin | None, Origin | None]]:
        src = self.sfh(st)
        dst = self.cfh(st)
        src_obj, src_caller = self._data_fh(st, src, False)
        _, dst_caller = self._data_fh(st, dst, True)
        src_origin = self.io_origin(st, src_sid, src, write=False)
        dst_origin = self.io_origin(st, dst_sid, dst, write=True)
        if src.export is None or dst.export is None or src.export.id != dst.export.id:
            raise Nfs4Error(c.NFS4ERR_XDEV)
        vfs = await self.vfs()
        src_obj = await vfs.getattr(src_caller, src.ino)
        if src_off > src_obj.size:
            raise Nfs4Error(c.NFS4ERR_INVAL, "source offset past the end of the file")
        if count == 0:
            count = src_obj.size - src_off
        elif src_off + count > src_obj.size:
            raise Nfs4Error(c.NFS4ERR_INVAL, "source range past the end of the file")
        if dst_off + count > MAX_FILE_SIZE:
            raise Nfs4Error(c.NFS4ERR_FBIG)
        if src.ino == dst.ino and src_off < dst_off + count and dst_off < src_off + count:
            raise Nfs4Error(c.NFS4ERR_INVAL, "overlapping ranges of one file")
        return src, src_caller, dst, dst_caller, count, (src_origin, dst_origin)

    async def op_COPY(self, st: CompoundState, a: CopyArgs) -> Arm:
        if a.source_server:
            raise Nfs4Error(c.NFS4ERR_NOTSUPP, "inter-server copy is not served")
        src, src_caller, dst, dst_caller, count, origins = await self._copy_args(
            st, a.src_stateid, a.dst_stateid, a.src_offset, a.dst_offset, a.count
        )
        verf = self.ctx.write_verifier
        session = st.session
        assert session is not None
        if not a.synchronous and session.callbacks_up and count >= self.settings.async_copy_min:
            state = self._start_copy(st, src, src_caller, dst, dst_caller, a, count, origins)
            return ok(
                CopyResok(
                    WriteResponse([state.stateid()], 0, c.UNSTABLE4, verf),
                    CopyRequirements(True, False),
                )
            )
        copied = await self._copy_range(
            src, src_caller, dst, dst_caller, a.src_offset, a.dst_offset, count, None, origins
        )
        return ok(
            CopyResok(WriteResponse([], copied, c.FILE_SYNC4, verf), CopyRequirements(True, True))
        )

    def _start_copy(
        self,
        st: CompoundState,
        src: FH,
        src_caller: Caller,
        dst: FH,
        dst_caller: Caller,
        a: CopyArgs,
        count: int,
        origins: tuple[Origin | None, Origin | None] = (None, None),
    ) -> State:
        client = st.client
        cs = self.client_state(client)
        running = sum(1 for s in cs.states.values() if s.kind == COPY and s.job is not None)
        if running >= MAX_COPIES_PER_CLIENT:
            raise Nfs4Error(c.NFS4ERR_DELAY, "too many copies running")
        assert dst.export is not None
        state = cs.new_copy(client, dst.ino, dst.export.id)
        job = state.job = CopyJob()
        session = st.session
        running_copy: defer.Deferred[Any] = defer.Deferred.fromCoroutine(
            self._copy_range(
                src, src_caller, dst, dst_caller, a.src_offset, a.dst_offset, count, job, origins
            )
        )
        job.deferred = running_copy

        def done(result: Any) -> None:
            if isinstance(result, Failure):
                if result.check(defer.CancelledError):
                    return
                job.status = nfs4_status(result, "COPY")
                info = Arm(job.status, job.copied)
            else:
                job.copied = result
                job.status = c.NFS4_OK
                info = Arm(
                    c.NFS4_OK,
                    WriteResponse([], result, c.FILE_SYNC4, self.ctx.write_verifier),
                )
            target = session if session is not None and session.alive else None
            if target is None:
                target = next((s for s in client.sessions.values() if s.callbacks_up), None)
            if target is None:
                return
            cb = self.callbacks.call(
                target,
                [(c.OP_CB_OFFLOAD, CbOffloadArgs(dst.handle, state.stateid(), info))],
            )
            cb.addErrback(self._offload_failed)

        running_copy.addBoth(done)
        return state

    def _offload_failed(self, f: Failure) -> None:
        self._log.debug("CB_OFFLOAD not delivered: {why}", why=f.getErrorMessage())

    async def op_OFFLOAD_STATUS(self, st: CompoundState, a: StateidArgs) -> Arm:
        state = self.find_state(st, a.stateid, (COPY,))
        job: CopyJob = state.job
        complete = [job.status] if job.status is not None else []
        return ok(OffloadStatusResok(job.copied, complete))

    async def op_OFFLOAD_CANCEL(self, st: CompoundState, a: StateidArgs) -> Arm:
        state = self.find_state(st, a.stateid, (COPY,))
        if state.job is not None:
            state.job.cancel()
        self.client_state(st.client).forget(state)
        return ok()

    async def op_CLONE(self, st: CompoundState, a: CloneArgs) -> Arm:
        src, src_caller, dst, dst_caller, count, origins = await self._copy_args(
            st, a.src_stateid, a.dst_stateid, a.src_offset, a.dst_offset, a.count
        )
        await self._copy_range(
            src, src_caller, dst, dst_caller, a.src_offset, a.dst_offset, count, None, origins
        )
        return ok()
