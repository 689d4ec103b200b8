# -*- test-case-name: tests.nfs.v3.test_procs -*-
"""
NFSv3 (RFC 1813): the 22 procedures, through the vfs.

Each procedure decodes nothing itself (the codec did), resolves its handles
with L{NFSContext.file} (export rules and squashing on every call), calls the
vfs, and encodes either its resok or its resfail body: every failure is
mapped by the one table in L{claudefs_gateway.nfs.errors} and still carries
the attributes the RFC asks for (weak cache consistency data on every call
that changes something, post-operation attributes where they are known).

Choices, where the RFC leaves them:

 - CREATE UNCHECKED of an existing regular file applies only the size (as
   Linux knfsd does: C{open(O_CREAT|O_TRUNC)} is how clients truncate);
   GUARDED fails with EXIST; EXCLUSIVE keeps the verifier with the file (vfs),
   so a retransmission finds the file and gets success.
 - The write verifier is random per gateway process; WRITE answers
   FILE_SYNC when the store made the data stable, else UNSTABLE, and COMMIT
   makes it stable.
 - READDIR and READDIRPLUS return "." (cookie 1) and ".." (cookie 2) first,
   then the store's entries (cookies of 3 and up), as many as fit in the
   client's count (and, for READDIRPLUS, dircount); the cookie verifier is
   the store's, and an out-of-date one answers NFS3ERR_BAD_COOKIE.
 - FSINFO offers rtmax = wtmax = C{nfs.max_record_size} less headroom (1 MiB
   by default), 32 KiB over UDP.
 - SETATTR's guard is checked against the current ctime (NFS3ERR_NOT_SYNC).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from claudefs_gateway import errors
from claudefs_gateway.core.directsend import FileRange
from claudefs_gateway.core.eager import eager
from claudefs_gateway.core.fence import Fence
from claudefs_gateway.core.log import Logger
from claudefs_gateway.fstypes import MAX_FILE_SIZE, NAME_MAX, Attributes, SetAttrs
from claudefs_gateway.interfaces import IVFS
from claudefs_gateway.nfs.context import NFSContext
from claudefs_gateway.nfs.errors import NFS3_OK, NFS3ERR, nfs3_name, nfs3_status
from claudefs_gateway.nfs.v3 import codec as c
from claudefs_gateway.rpc.server import Call, Procedure, Program, no_args
from claudefs_gateway.rpc.xdr import PADDING
from claudefs_gateway.vfs import Caller, R, W, X, inline

__all__ = ["NFS3"]

_U32 = struct.Struct(">I")
_OK = _U32.pack(NFS3_OK)
_READ_HEAD = struct.Struct(">III")  # count, eof, data length
_OK_ATTRS = struct.pack(">II", NFS3_OK, 1)  # status, then post_op_attr's attributes_follow
_WRITE_TAIL = struct.Struct(">II8s")  # count, committed, verf
_U64 = struct.Struct(">Q")
_FSSTAT = struct.Struct(">QQQQQQI")
_FSINFO = struct.Struct(">IIIIIIIQIII")
_PATHCONF = struct.Struct(">IIIIII")

UDP_IO_SIZE = 32 * 1024
# Bytes of a READDIR reply that are not entries: status, post_op_attr, verifier, end, eof.
_READDIR_BASE = 4 + 88 + 8 + 4 + 4
# Bytes of an entry3 without its name: value_follows, fileid, name length, cookie.
_ENTRY_BASE = 4 + 8 + 4 + 8
# entryplus3 adds name_attributes (post_op_attr) and name_handle (post_op_fh3).
_ENTRYPLUS_EXTRA = 88 + 4 + 4 + 36
_MAX_ENTRIES = 4096
_NO_VERIFIER = bytes(8)


class NFS3:
    """The NFSv3 program (100003 version 3)."""

    _log = Logger()

    def __init__(self, ctx: NFSContext, metrics: Any = None, max_write: int = 1 << 20) -> None:
        self.ctx = ctx
        self.metrics = metrics
        self.max_write = max_write

    # -- plumbing -------------------------------------------------------------

    def program(self) -> Program:
        prog = Program(c.NFS_PROGRAM, "nfs3", self.metrics)
        cached = {
            c.SETATTR,
            c.CREATE,
            c.MKDIR,
            c.SYMLINK,
            c.MKNOD,
            c.REMOVE,
            c.RMDIR,
            c.RENAME,
            c.LINK,
        }
        changes = cached | {c.WRITE, c.COMMIT}
        decoders: dict[int, Any] = {
            c.GETATTR: c.dec_fh,
            c.SETATTR: c.dec_setattr,
            c.LOOKUP: c.dec_diropargs,
            c.ACCESS: c.dec_access,
            c.READLINK: c.dec_fh,
            c.READ: c.dec_read,
            c.WRITE: c.make_write_decoder(self.max_write),
            c.CREATE: c.dec_create,
            c.MKDIR: c.dec_mkdir,
            c.SYMLINK: c.dec_symlink,
            c.MKNOD: c.dec_mknod,
            c.REMOVE: c.dec_diropargs,
            c.RMDIR: c.dec_diropargs,
            c.RENAME: c.dec_rename,
            c.LINK: c.dec_link,
            c.READDIR: c.dec_readdir,
            c.READDIRPLUS: c.dec_readdirplus,
            c.FSSTAT: c.dec_fh,
            c.FSINFO: c.dec_fh,
            c.PATHCONF: c.dec_fh,
            c.COMMIT: c.dec_commit,
        }
        # What a reply may hold, counted against the connection's byte bound
        # before the call runs (nfs.max_queued_bytes_per_connection).
        # A reply never exceeds rtmax (io_size), whatever count the client asks.
        io = self.ctx.io_size
        sizes: dict[int, Callable[[Any], int]] = {
            c.READ: lambda a: min(a[2], io),
            c.READDIR: lambda a: min(a[3], io),
            c.READDIRPLUS: lambda a: min(a[4], io),
        }
        prog.add(c.NFS_V3, c.NULL, Procedure("NULL", no_args, lambda call, args: []))
        for number, decode in decoders.items():
            name = c.PROC_NAMES[number]
            method = getattr(self, f"proc_{name}")
            fast = getattr(self, f"fast_{name}", None)
            prog.add(
                c.NFS_V3,
                number,
                Procedure(
                    name,
                    decode,
                    _deferred(method),
                    cached=number in cached,
                    cancel_on_close=number not in changes,
                    reply_size=sizes.get(number),
                    fast=fast,
                ),
            )
        return prog

    def _fail(self, call: Call, e: BaseException, proc: str) -> int:
        """The status for an exception caught in a procedure (CancelledError goes on up)."""
        if isinstance(e, defer.CancelledError):
            raise e
        status = nfs3_status(e, proc)
        call.status = nfs3_name(status)
        return status

    def _io_max(self, call: Call) -> int:
        if call.peer.transport == "udp":
            return min(self.ctx.io_size, UDP_IO_SIZE)
        return self.ctx.io_size

    # -- attributes -----------------------------------------------------------

    def fast_GETATTR(self, call: Call, handle: bytes) -> list[bytes] | None:
        """GETATTR from the attribute cache, with no coroutine (L{Procedure.fast})."""
        try:
            got = self.ctx.file_now(call, handle)
        except Exception as e:
            return [c.status_only(self._fail(call, e, "GETATTR"))]
        if got is None:
            return None
        return [_OK + c.fattr3(got[2], got[1].id)]

    async def proc_GETATTR(self, call: Call, handle: bytes) -> list[bytes]:
        try:
            vfs, export, a, caller = await self.ctx.file(call, handle)
        except Exception as e:
            return [c.status_only(self._fail(call, e, "GETATTR"))]
        return [_OK + c.fattr3(a, export.id)]

    async def proc_SETATTR(self, call: Call, args: c.SetattrArgs) -> list[bytes]:
        before: Attributes | None = None
        fsid = 0
        try:
            vfs, export, before, caller = await self.ctx.file(call, args.fh)
            fsid = export.id
            if args.guard_ns is not None and args.guard_ns != before.ctime_ns:
                call.status = nfs3_name(NFS3ERR.NOT_SYNC)
                return [c.status_only(NFS3ERR.NOT_SYNC), c.wcc_data(before, before, fsid)]
            try:
                after = await vfs.setattr(caller, before.ino, args.changes, args.guard_ns)
            except errors.Inval:
                if args.guard_ns is not None:
                    now = await vfs.getattr(caller, before.ino)
                    if now.ctime_ns != args.guard_ns:
                        call.status = nfs3_name(NFS3ERR.NOT_SYNC)
                        return [c.status_only(NFS3ERR.NOT_SYNC), c.wcc_data(before, now, fsid)]
                raise
        except Exception as e:
            return [c.status_only(self._fail(call, e, "SETATTR")), c.wcc_data(before, before, fsid)]
        return [c.status_only(NFS3_OK), c.wcc_data(before, after, fsid)]

    async def proc_ACCESS(self, call: Call, args: tuple[bytes, int]) -> list[bytes]:
        handle, want = args
        a: Attributes | None = None
        fsid = 0
        try:
            vfs, export, a, caller = await self.ctx.file(call, handle)
            fsid = export.id
            held = await vfs.access(caller, a.ino, R | W | X)
        except Exception as e:
            return [c.status_post_op(self._fail(call, e, "ACCESS"), a, fsid)]
        granted = 0
        if held & R:
            granted |= c.ACCESS_READ
        if held & W:
            granted |= c.ACCESS_MODIFY | c.ACCESS_EXTEND
            if a.is_dir:
                granted |= c.ACCESS_DELETE
        if held & X:
            granted |= c.ACCESS_LOOKUP if a.is_dir else c.ACCESS_EXECUTE
        return [c.status_post_op(NFS3_OK, a, fsid), _U32.pack(granted & want)]

    # -- names ----------------------------------------------------------------

    async def proc_LOOKUP(self, call: Call, args: tuple[bytes, bytes]) -> list[bytes]:
        handle, name = args
        d: Attributes | None = None
        fsid = 0
        try:
            vfs, export, d, caller = await self.ctx.file(call, handle)
            fsid = export.id
            _check_name(name, lookup=True)
            a = await inline(vfs.lookup, caller, d.ino, name)
        except Exception as e:
            return [c.status_only(self._fail(call, e, "LOOKUP")), c.post_op_attr(d, fsid)]
        return [
            c.status_only(NFS3_OK),
            c.fh(vfs.handle(export, a)),
            c.post_op_attr(a, fsid),
            c.post_op_attr(d, fsid),
        ]

    async def proc_READLINK(self, call: Call, handle: bytes) -> list[bytes]:
        a: Attributes | None = None
        fsid = 0
        try:
            vfs, export, a, caller = await self.ctx.file(call, handle)
            fsid = export.id
            target = await vfs.readlink(caller, a.ino)
        except Exception as e:
            return [c.status_post_op(self._fail(call, e, "READLINK"), a, fsid)]
        n = len(target)
        return [c.status_post_op(NFS3_OK, a, fsid), _U32.pack(n), target, PADDING[n & 3]]

    # -- data -----------------------------------------------------------------

    def fast_READ(self, call: Call, args: tuple[bytes, int, int]) -> list[bytes] | None:
        """
        READ of bytes at hand (attributes cached, page cache or inline
        data), with no coroutine and no Deferred (L{Procedure.fast}); L{None} sends
        the call the general way. Over a connection that sends file ranges
        itself (L{Peer.sendfile<claudefs_gateway.rpc.server.Peer>}), a large
        READ all in the page cache replies with a L{FileRange}: the kernel
        sends the data from the page cache (no copy of it in the gateway).
        """
        handle, offset, count = args
        try:
            got = self.ctx.file_now(call, handle)
            if got is None or offset > MAX_FILE_SIZE:
                return None
            vfs, export, a, caller = got
            io = self.ctx.io_size
            if count > io or call.peer.transport == "udp":
                count = min(count, self._io_max(call))
            peer = call.peer
            result = vfs.read_now(caller, a, offset, count, peer.sendfile)  # type: ignore[attr-defined]
        except Exception as e:
            return [c.status_post_op(self._fail(call, e, "READ"), None, 0)]
        if result is None:
            return None
        data = result[0]
        if type(data) is FileRange:
            peer.ranged = True
        return _read_reply(data, result[1], a, export.id)

    async def proc_READ(self, call: Call, args: tuple[bytes, int, int]) -> list[bytes]:
        handle, offset, count = args
        a: Attributes | None = None
        fsid = 0
        try:
            vfs, export, a, caller = await self.ctx.file(call, handle)
            fsid = export.id
            count = min(count, self._io_max(call))
            if offset > MAX_FILE_SIZE:
                raise errors.Inval("offset beyond the largest file")
            result = await vfs.read(caller, a.ino, offset, count)
        except Exception as e:
            return [c.status_post_op(self._fail(call, e, "READ"), a, fsid)]
        return _read_reply(result.data, result.eof, result.attrs, fsid)

    async def proc_WRITE(self, call: Call, args: c.WriteArgs) -> list[bytes]:
        before: Attributes | None = None
        fsid = 0
        try:
            vfs, export, before, caller = await self.ctx.file(call, args.fh)
            fsid = export.id
            result = await vfs.write(
                caller, before.ino, args.offset, args.data, args.stable != c.UNSTABLE
            )
        except Exception as e:
            return [c.status_only(self._fail(call, e, "WRITE")), c.wcc_data(before, before, fsid)]
        committed = c.FILE_SYNC if result.stable else c.UNSTABLE
        return [
            c.status_only(NFS3_OK),
            c.wcc_data(result.before or before, result.attrs, fsid),
            _WRITE_TAIL.pack(result.count, committed, self.ctx.write_verifier),
        ]

    async def proc_COMMIT(self, call: Call, args: tuple[bytes, int, int]) -> list[bytes]:
        handle, offset, count = args
        before: Attributes | None = None
        fsid = 0
        fence = None
        try:
            vfs, export, before, caller = await self.ctx.file(call, handle)
            fsid = export.id
            if before.is_dir:
                raise errors.IsDir("COMMIT of a directory")
            if not before.is_reg:
                raise errors.Inval("COMMIT of a special file")
            if getattr(vfs, "fences", False):
                fence = Fence()
                fenced: Any = vfs  # a VFS: IVFS.commit takes no fence
                after = await fenced.commit(caller, before.ino, fence=fence)
            else:
                after = await vfs.commit(caller, before.ino)
        except Exception as e:
            return [c.status_only(self._fail(call, e, "COMMIT")), c.wcc_data(before, before, fsid)]
        reply = [
            c.status_only(NFS3_OK),
            c.wcc_data(before, after, fsid),
            self.ctx.write_verifier,
        ]
        if fence is not None and fence.sync is not None:
            failed = await _synced(fence.sync)
            if failed is not None:
                return [
                    c.status_only(self._fail(call, failed, "COMMIT")),
                    c.wcc_data(before, after, fsid),
                ]
        return reply

    # -- making and removing names ------------------------------------------------

    async def _made(
        self,
        call: Call,
        proc: str,
        dir_handle: bytes,
        name: bytes,
        make: Any,
        extra: SetAttrs | None = None,
        fence: Fence | None = None,
    ) -> list[bytes]:
        """
        The shared body of CREATE, MKDIR, SYMLINK and MKNOD: C{make(vfs,
        caller, dir_ino)} makes the object; C{extra} attributes are applied
        afterwards (ownership, times) as knfsd does. C{fence}: the one
        C{make} handed to the vfs, whose sync the reply waits for once made.
        """
        d: Attributes | None = None
        d_after: Attributes | None = None
        caller: Caller | None = None
        fsid = 0
        try:
            vfs, export, d, caller = await self.ctx.file(call, dir_handle)
            fsid = export.id
            if not d.is_dir:
                raise errors.NotDir("not a directory")
            _check_name(name)
            a = await make(vfs, caller, d.ino)
            if extra is not None and not extra.is_empty():
                a = await vfs.setattr(caller, a.ino, extra)
            d_after = await _attrs(vfs, caller, d.ino)
        except Exception as e:
            _unwaited(fence)
            status = self._fail(call, e, proc)
            if d is not None and d_after is None:
                d_after = await _quiet_getattr(self.ctx.vfs, caller, d)
            return [c.status_only(status), c.wcc_data(d, d_after or d, fsid)]
        reply = [
            c.status_only(NFS3_OK),
            c.post_op_fh(vfs.handle(export, a)),
            c.post_op_attr(a, fsid),
            c.wcc_data(d, d_after, fsid),
        ]
        if fence is not None and fence.sync is not None:
            failed = await _synced(fence.sync)
            if failed is not None:
                return [c.status_only(self._fail(call, failed, proc)), c.wcc_data(d, d_after, fsid)]
        return reply

    async def proc_CREATE(self, call: Call, args: c.CreateArgs) -> list[bytes]:
        # UNCHECKED (what clients send for open(O_CREAT)): the reply is made
        # while the create's log sync is in flight, and leaves after it.
        fence = Fence()
        sattr = args.attrs or SetAttrs()
        mode = sattr.mode if sattr.mode is not None else 0o644
        extra: SetAttrs | None
        if args.mode == c.EXCLUSIVE:
            verifier = args.verifier or bytes(8)

            async def make(vfs: IVFS, caller: Caller, dir_ino: int) -> Attributes:
                return await inline(vfs.create_exclusive, caller, dir_ino, args.name, verifier)

            extra = None
        elif args.mode == c.GUARDED:

            async def make(vfs: IVFS, caller: Caller, dir_ino: int) -> Attributes:
                if getattr(vfs, "fences", False):
                    return await inline(vfs.create, caller, dir_ino, args.name, mode, fence=fence)
                return await inline(vfs.create, caller, dir_ino, args.name, mode, exclusive=True)

            extra = _without_mode(sattr)
        else:
            rest = _without_mode(sattr)

            async def make(vfs: IVFS, caller: Caller, dir_ino: int) -> Attributes:
                try:
                    if getattr(vfs, "fences", False):
                        a = await inline(vfs.create, caller, dir_ino, args.name, mode, fence=fence)
                    else:
                        a = await inline(
                            vfs.create, caller, dir_ino, args.name, mode, exclusive=True
                        )
                except errors.Exists:
                    # An existing regular file gets only the size (knfsd).
                    a = await vfs.create(caller, dir_ino, args.name, mode, exclusive=False)
                    if sattr.size is not None and a.size != sattr.size:
                        a = await vfs.setattr(caller, a.ino, SetAttrs(size=sattr.size))
                    return a
                if not rest.is_empty():
                    a = await vfs.setattr(caller, a.ino, rest)
                return a

            extra = None

        return await self._made(call, "CREATE", args.dir, args.name, make, extra, fence)

    async def proc_MKDIR(self, call: Call, args: tuple[bytes, bytes, SetAttrs]) -> list[bytes]:
        d, name, sattr = args
        mode = sattr.mode if sattr.mode is not None else 0o755

        async def make(vfs: IVFS, caller: Caller, dir_ino: int) -> Attributes:
            return await inline(vfs.mkdir, caller, dir_ino, name, mode)

        return await self._made(call, "MKDIR", d, name, make, _without_mode(sattr))

    async def proc_SYMLINK(
        self, call: Call, args: tuple[bytes, bytes, SetAttrs, bytes]
    ) -> list[bytes]:
        d, name, sattr, target = args

        async def make(vfs: IVFS, caller: Caller, dir_ino: int) -> Attributes:
            if not target:
                raise errors.Inval("empty symlink target")
            return await vfs.symlink(caller, dir_ino, name, target)

        return await self._made(call, "SYMLINK", d, name, make, _without_mode(sattr))

    async def proc_MKNOD(self, call: Call, args: c.MknodArgs) -> list[bytes]:
        if args.attrs is None:
            call.status = nfs3_name(NFS3ERR.BADTYPE)
            d: Attributes | None = None
            fsid = 0
            try:
                vfs, export, d, caller = await self.ctx.file(call, args.dir)
                fsid = export.id
            except Exception as e:
                return [c.status_only(self._fail(call, e, "MKNOD")), c.wcc_data(None, None, 0)]
            return [c.status_only(NFS3ERR.BADTYPE), c.wcc_data(d, d, fsid)]
        sattr = args.attrs
        mode = sattr.mode if sattr.mode is not None else 0o644
        ftype = c.filetype(args.type)

        async def make(vfs: IVFS, caller: Caller, dir_ino: int) -> Attributes:
            return await vfs.mknod(caller, dir_ino, args.name, ftype, mode, args.rdev)

        return await self._made(call, "MKNOD", args.dir, args.name, make, _without_mode(sattr))

    async def _removed(
        self, call: Call, proc: str, args: tuple[bytes, bytes], rmdir: bool
    ) -> list[bytes]:
        handle, name = args
        d: Attributes | None = None
        d_after: Attributes | None = None
        caller: Caller | None = None
        fsid = 0
        fence = None
        try:
            vfs, export, d, caller = await self.ctx.file(call, handle)
            fsid = export.id
            _check_name(name)
            # The reply is made while the change's log sync is in flight,
            # and leaves after it (L{Fence}).
            if getattr(vfs, "fences", False):
                fence = Fence()
                await inline(vfs.rmdir if rmdir else vfs.remove, caller, d.ino, name, fence=fence)
            elif rmdir:
                await inline(vfs.rmdir, caller, d.ino, name)
            else:
                await inline(vfs.remove, caller, d.ino, name)
            d_after = await _attrs(vfs, caller, d.ino)
        except Exception as e:
            _unwaited(fence)
            status = self._fail(call, e, proc)
            if d is not None and d_after is None:
                d_after = await _quiet_getattr(self.ctx.vfs, caller, d)
            return [c.status_only(status), c.wcc_data(d, d_after or d, fsid)]
        reply = [c.status_only(NFS3_OK), c.wcc_data(d, d_after, fsid)]
        if fence is not None and fence.sync is not None:
            failed = await _synced(fence.sync)
            if failed is not None:
                return [c.status_only(self._fail(call, failed, proc)), c.wcc_data(d, d_after, fsid)]
        return reply

    async def proc_REMOVE(self, call: Call, args: tuple[bytes, bytes]) -> list[bytes]:
        return await self._removed(call, "REMOVE", args, rmdir=False)

    async def proc_RMDIR(self, call: Call, args: tuple[bytes, bytes]) -> list[bytes]:
        return await self._removed(call, "RMDIR", args, rmdir=True)

    async def proc_RENAME(self, call: Call, args: tuple[bytes, bytes, bytes, bytes]) -> list[bytes]:
        fh_from, name_from, fh_to, name_to = args
        fd = td = fd_after = td_after = None
        caller: Caller | None = None
        fsid = 0
        try:
            vfs, export, fd, caller = await self.ctx.file(call, fh_from)
            fsid = export.id
            _, export_to, td, _ = await self.ctx.file(call, fh_to)
            if export_to.id != export.id:
                raise errors.XDev("rename across exports")
            _check_name(name_from)
            _check_name(name_to)
            await vfs.rename(caller, fd.ino, name_from, td.ino, name_to)
            fd_after = await vfs.getattr(caller, fd.ino)
            td_after = fd_after if td.ino == fd.ino else await vfs.getattr(caller, td.ino)
        except Exception as e:
            status = self._fail(call, e, "RENAME")
            if fd is not None:
                fd_after = await _quiet_getattr(self.ctx.vfs, caller, fd)
            if td is not None:
                td_after = await _quiet_getattr(self.ctx.vfs, caller, td)
            return [
                c.status_only(status),
                c.wcc_data(fd, fd_after or fd, fsid),
                c.wcc_data(td, td_after or td, fsid),
            ]
        return [
            c.status_only(NFS3_OK),
            c.wcc_data(fd, fd_after, fsid),
            c.wcc_data(td, td_after, fsid),
        ]

    async def proc_LINK(self, call: Call, args: tuple[bytes, bytes, bytes]) -> list[bytes]:
        fh_file, fh_dir, name = args
        a: Attributes | None = None
        d = d_after = None
        caller: Caller | None = None
        fsid = 0
        try:
            vfs, export, a, caller = await self.ctx.file(call, fh_file)
            fsid = export.id
            _, export_dir, d, _ = await self.ctx.file(call, fh_dir)
            if export_dir.id != export.id:
                raise errors.XDev("link across exports")
            _check_name(name)
            if a.is_dir:
                raise errors.IsDir("hard link to a directory")
            a = await vfs.link(caller, a.ino, d.ino, name)
            d_after = await _attrs(vfs, caller, d.ino)
        except Exception as e:
            status = self._fail(call, e, "LINK")
            if d is not None:
                d_after = await _quiet_getattr(self.ctx.vfs, caller, d)
            return [c.status_post_op(status, a, fsid), c.wcc_data(d, d_after or d, fsid)]
        return [c.status_post_op(NFS3_OK, a, fsid), c.wcc_data(d, d_after, fsid)]

    # -- directories --------------------------------------------------------------

    async def _listing(
        self,
        call: Call,
        proc: str,
        handle: bytes,
        cookie: int,
        verifier: bytes,
        dircount: int,
        maxcount: int,
        plus: bool,
    ) -> list[bytes]:
        d: Attributes | None = None
        fsid = 0
        try:
            vfs, export, d, caller = await self.ctx.file(call, handle)
            fsid = export.id
            if not d.is_dir:
                raise errors.NotDir("not a directory")
            maxcount = min(maxcount, self._io_max(call))
            per_entry = _ENTRY_BASE + (_ENTRYPLUS_EXTRA if plus else 0)
            budget = maxcount - _READDIR_BASE
            if budget < per_entry + 4:
                raise _TooSmall()
            want = min(max(budget // (per_entry + 4), 1), _MAX_ENTRIES)
            if plus:
                # dircount bounds READDIRPLUS too (entry3 bytes, names at
                # least four): ask the store for no more than can be sent.
                want = min(want, dircount // (_ENTRY_BASE + 4) + 1)
            start = 0 if cookie < 3 else cookie
            if start and verifier == _NO_VERIFIER:
                # RFC 1813 lets a client send a zero verifier with a cookie
                # (some do after a server restart): resume against the
                # directory's current verifier, as servers that ignore the
                # verifier would.
                verifier = (await vfs.readdir(caller, d.ino, 0, _NO_VERIFIER, 0)).verifier
            page = await vfs.readdir(
                caller, d.ino, start, verifier if start else _NO_VERIFIER, want, with_attrs=plus
            )
            # "." and ".." lead the listing, at cookies 1 and 2.
            dots: list[tuple[bytes, Attributes, int]] = []
            if cookie < 2:
                parent = await vfs.lookup(caller, d.ino, b"..")
                if cookie == 0:
                    dots.append((b".", d, 1))
                dots.append((b"..", parent, 2))
        except _TooSmall:
            call.status = nfs3_name(NFS3ERR.TOOSMALL)
            return [c.status_post_op(NFS3ERR.TOOSMALL, d, fsid)]
        except Exception as e:
            return [c.status_post_op(self._fail(call, e, proc), d, fsid)]
        out = [c.status_post_op(NFS3_OK, d, fsid), page.verifier]
        used = _READDIR_BASE
        dirused = 0
        sent = 0
        full = False
        entries = page.entries
        total = len(dots) + len(entries)
        handle_of = vfs.handle
        # One pack per entry (codec.entry3 / entryplus3), "." and ".." first.
        attrs: Attributes | None
        for i in range(total):
            if i < len(dots):
                name, attrs, ck = dots[i]
                ino = attrs.ino
            else:
                entry = entries[i - len(dots)]
                name, ino, ck, attrs = entry.name, entry.ino, entry.cookie, entry.attrs
            n = len(name)
            dsize = _ENTRY_BASE + n + (-n & 3)
            if plus:
                size = dsize + (_ENTRYPLUS_EXTRA if attrs is not None else 8)
                if used + size > maxcount or (sent and dirused + dsize > dircount):
                    full = True
                    break
                if attrs is not None:
                    out.append(c.entryplus3(name, ck, attrs, fsid, handle_of(export, attrs)))
                else:
                    out.append(c.entry3(name, ino, ck) + c.FALSE + c.FALSE)
            else:
                size = dsize
                if used + size > maxcount:
                    full = True
                    break
                out.append(c.entry3(name, ino, ck))
            used += size
            dirused += dsize
            sent += 1
        if sent == 0 and total:
            call.status = nfs3_name(NFS3ERR.TOOSMALL)
            return [c.status_post_op(NFS3ERR.TOOSMALL, d, fsid)]
        eof = page.eof and not full
        out.append(c.FALSE + (c.TRUE if eof else c.FALSE))
        return out

    async def proc_READDIR(self, call: Call, args: tuple[bytes, int, bytes, int]) -> list[bytes]:
        handle, cookie, verifier, count = args
        return await self._listing(call, "READDIR", handle, cookie, verifier, count, count, False)

    async def proc_READDIRPLUS(
        self, call: Call, args: tuple[bytes, int, bytes, int, int]
    ) -> list[bytes]:
        handle, cookie, verifier, dircount, maxcount = args
        return await self._listing(
            call, "READDIRPLUS", handle, cookie, verifier, dircount, maxcount, True
        )

    # -- file system --------------------------------------------------------------

    async def proc_FSSTAT(self, call: Call, handle: bytes) -> list[bytes]:
        a: Attributes | None = None
        fsid = 0
        try:
            vfs, export, a, caller = await self.ctx.file(call, handle)
            fsid = export.id
            s = await vfs.statfs(caller)
        except Exception as e:
            return [c.status_post_op(self._fail(call, e, "FSSTAT"), a, fsid)]
        return [
            c.status_post_op(NFS3_OK, a, fsid),
            _FSSTAT.pack(
                s.total_bytes,
                s.free_bytes,
                s.avail_bytes,
                s.total_files,
                s.free_files,
                s.avail_files,
                0,
            ),
        ]

    async def proc_FSINFO(self, call: Call, handle: bytes) -> list[bytes]:
        a: Attributes | None = None
        fsid = 0
        try:
            vfs, export, a, caller = await self.ctx.file(call, handle)
            fsid = export.id
        except Exception as e:
            return [c.status_post_op(self._fail(call, e, "FSINFO"), a, fsid)]
        io = self._io_max(call)
        props = c.FSF3_LINK | c.FSF3_SYMLINK | c.FSF3_HOMOGENEOUS | c.FSF3_CANSETTIME
        return [
            c.status_post_op(NFS3_OK, a, fsid),
            _FSINFO.pack(
                io, io, 4096, io, io, 4096, min(io, 64 * 1024), MAX_FILE_SIZE, 0, 1, props
            ),
        ]

    async def proc_PATHCONF(self, call: Call, handle: bytes) -> list[bytes]:
        a: Attributes | None = None
        fsid = 0
        try:
            vfs, export, a, caller = await self.ctx.file(call, handle)
            fsid = export.id
        except Exception as e:
            return [c.status_post_op(self._fail(call, e, "PATHCONF"), a, fsid)]
        # linkmax, name_max, no_trunc, chown_restricted, case_insensitive, case_preserving
        return [c.status_post_op(NFS3_OK, a, fsid), _PATHCONF.pack(65000, NAME_MAX, 1, 1, 0, 1)]


class _TooSmall(Exception):
    pass


async def _synced(sync: defer.Deferred[None]) -> Exception | None:
    """Wait for a fence's log sync (L{Fence}); the store's error if it failed."""
    try:
        await sync
    except Exception as e:
        return e
    return None


def _unwaited(fence: Fence | None) -> None:
    """
    A call that failed after its change was answered: nobody waits for the
    sync, whose failure the store has logged already.
    """
    if fence is not None and fence.sync is not None:
        fence.sync.addErrback(lambda f: None)


async def _attrs(vfs: IVFS, caller: Caller, ino: int) -> Attributes:
    """
    C{vfs.getattr}: from the attribute cache when it may answer (a change
    just cached the directory a wcc_data reports) without the coroutine and
    the fired Deferred of getattr's (L{claudefs_gateway.vfs.VFS.attrs_now}).
    """
    now = getattr(vfs, "attrs_now", None)
    a = now(ino) if now is not None else None
    if a is None:
        a = await vfs.getattr(caller, ino)
    return a


def _check_name(name: bytes, lookup: bool = False) -> None:
    if not name:
        raise errors.NotFound("empty name") if lookup else errors.Inval("empty name")
    if len(name) > NAME_MAX:
        raise errors.NameTooLong("name longer than 255 bytes")
    if b"/" in name or b"\0" in name:
        raise errors.Inval("name contains / or NUL")


def _without_mode(s: SetAttrs) -> SetAttrs:
    return SetAttrs(uid=s.uid, gid=s.gid, size=s.size, atime=s.atime, mtime=s.mtime)


async def _quiet_getattr(
    vfs: IVFS | None, caller: Caller | None, a: Attributes
) -> Attributes | None:
    """Attributes after a failed change, for its wcc data; L{None} if they cannot be had."""
    if vfs is None or caller is None:
        return None
    try:
        got: Attributes = await vfs.getattr(caller, a.ino)
    except Exception:
        return None
    return got


def _read_reply(data: bytes | FileRange, eof: bool, a: Attributes, fsid: int) -> list[Any]:
    """
    READ3resok: few pieces, so the reply goes out in one sendmsg, a piece per
    iovec (the data by sendfile when it is a L{FileRange}).
    """
    n = len(data)
    head = _OK_ATTRS + c.fattr3(a, fsid) + _READ_HEAD.pack(n, 1 if eof else 0, n)
    if n & 3:
        return [head, data, PADDING[n & 3]]
    return [head, data]


def _deferred(method: Any) -> Any:
    """
    The RPC handler for procedure C{method}: run eagerly, so a call whose
    answer is in memory replies without a Deferred (L{eager}); the RPC server
    takes results or Deferreds of them alike.
    """

    def handle(call: Call, args: Any) -> list[bytes] | defer.Deferred[list[bytes]]:
        return eager(method(call, args))

    return handle
