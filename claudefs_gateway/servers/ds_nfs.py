# -*- test-case-name: tests.servers.test_ds_nfs -*-
"""
C{claudefs-data} as a pNFS flexfiles data server (RFC 8435): NFSv3 READ,
WRITE, COMMIT and GETATTR (with NULL, ACCESS, FSINFO, FSSTAT and PATHCONF,
which clients may ask of any NFSv3 server) on data-server file handles
that only the metadata server can mint (L{claudefs_gateway.nfs.pnfs.handles}).

The bytes land in the same chunk files the gateways read and write over
the ClaudeFS RPC (L{claudefs_gateway.servers.data}), through the same
per-inode queue, so a file written by a pNFS client reads back identically
through any gateway, over any protocol.

Fencing (RFC 8435 §2.2, loosely coupled): every handle carries the epoch it
was minted under and the synthetic uid/gid the client must present. The
metadata server revokes a layout by raising the inode's epoch here
(C{PNFS_FENCE}); handles below it answer NFS3ERR_STALE, which sends the
client back to the metadata server for a new layout. A credential that is
not the handle's answers NFS3ERR_ACCES; a read-only handle cannot write.
The key and the fences live in the data directory (C{pnfs.key},
C{pnfs-fences}), so a restart keeps both.

Anything else NFSv3 offers (names, directories, SETATTR) is NFS3ERR_NOTSUPP:
a data server has no namespace.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer

from claudefs_gateway.core.log import Logger
from claudefs_gateway.fstypes import MAX_FILE_SIZE
from claudefs_gateway.nfs.errors import NFS3_OK, NFS3ERR, nfs3_status
from claudefs_gateway.nfs.pnfs import handles
from claudefs_gateway.nfs.v3 import codec as c
from claudefs_gateway.rpc.server import Call, Procedure, Program, no_args
from claudefs_gateway.rpc.xdr import PADDING, Unpacker

__all__ = ["DSState", "ds_program", "MAX_IO"]

#: rtmax/wtmax the data server advertises (FSINFO) and the device info carries.
MAX_IO = 1 << 20

_U32 = struct.Struct(">I")
_OK = _U32.pack(NFS3_OK)
_READ_HEAD = struct.Struct(">III")
_WRITE_TAIL = struct.Struct(">II8s")
_FSINFO = struct.Struct(">IIIIIIIQIII")
_FSSTAT = struct.Struct(">QQQQQQI")
_PATHCONF = struct.Struct(">IIIIII")
_WCC_NONE = c.FALSE + c.FALSE
_NOTSUPP_PROCS = (
    c.SETATTR,
    c.LOOKUP,
    c.READLINK,
    c.CREATE,
    c.MKDIR,
    c.SYMLINK,
    c.MKNOD,
    c.REMOVE,
    c.RMDIR,
    c.RENAME,
    c.LINK,
    c.READDIR,
    c.READDIRPLUS,
)


class _Refused(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


class DSState:
    """
    The data server's pNFS side: its fencing key, the fence epochs, where
    its NFSv3 listener is, and counters.

    @param root: the data directory.
    @param run: runs a blocking callable off the reactor (the disk pool).
    """

    _log = Logger()

    def __init__(self, root: Path, run: Callable[..., Any]) -> None:
        self.root = Path(root)
        self._run = run
        self.key = self._load_key()
        self.fences: dict[int, int] = self._load_fences()
        #: The NFSv3 listener (a L{ListenerService}), set by the service tree.
        self.listener: Any = None
        self.verifier = os.urandom(8)
        self.bytes_read = 0
        self.bytes_written = 0
        self.refused = 0

    @property
    def nfs_address(self) -> str:
        """C{host:port} the NFSv3 listener is bound to ("" before it listens)."""
        port = getattr(self.listener, "port", None)
        if port is None:
            return ""
        h = port.getHost()
        host = getattr(h, "host", "")
        return f"[{host}]:{h.port}" if ":" in host else f"{host}:{h.port}"

    def _load_key(self) -> bytes:
        path = self.root / "pnfs.key"
        try:
            key = path.read_bytes()
            if len(key) == 32:
                return key
        except FileNotFoundError:
            pass
        key = os.urandom(32)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return key

    def _load_fences(self) -> dict[int, int]:
        out: dict[int, int] = {}
        try:
            text = (self.root / "pnfs-fences").read_text()
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                out[int(parts[0])] = int(parts[1])
        return out

    def _save(self, snapshot: dict[int, int]) -> None:
        path = self.root / "pnfs-fences"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            for ino, epoch in sorted(snapshot.items()):
                f.write(f"{ino} {epoch}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def fence(self, ino: int, epoch: int) -> defer.Deferred[None]:
        """Refuse C{ino}'s handles below C{epoch} from now on; fires once that is on disk."""
        if epoch <= self.fences.get(ino, 0):
            return defer.succeed(None)
        self.fences[ino] = epoch
        self._log.info("pNFS: inode {ino} fenced at epoch {epoch}", ino=ino, epoch=epoch)
        d: defer.Deferred[None] = self._run(self._save, dict(self.fences))
        return d

    def forget(self, ino: int) -> None:
        """The inode is gone; so is its fence (its number is never reused)."""
        if self.fences.pop(ino, None) is not None:
            self._run(self._save, dict(self.fences)).addErrback(
                lambda f: self._log.failure("saving pNFS fences", f)
            )

    def check(self, call: Call, fh: bytes, write: bool) -> handles.DSHandle:
        """
        The handle C{fh} names, if this call may use it.

        @raise _Refused: NFS3ERR_BADHANDLE (not minted with our key),
            NFS3ERR_STALE (fenced), NFS3ERR_ACCES (another credential, or a
            read-only handle used to write).
        """
        try:
            h = handles.parse(self.key, fh)
        except handles.BadDSHandle as e:
            raise _Refused(NFS3ERR.BADHANDLE, str(e)) from None
        if h.epoch < self.fences.get(h.ino, 0):
            raise _Refused(NFS3ERR.STALE, "layout revoked (fenced)")
        cred = call.cred
        if cred is None or cred.uid != h.uid or cred.gid != h.gid:
            raise _Refused(NFS3ERR.ACCES, "credential is not the layout's")
        if write and not h.writable:
            raise _Refused(NFS3ERR.ACCES, "read-only layout")
        return h


def ds_program(state: DSState, handler: Any, metrics: Any = None) -> Program:
    """
    NFSv3 (program 100003 version 3) as a flexfiles data server.

    @param handler: the L{DataHandler} whose per-inode queue and chunk store
        the I/O goes through.
    """
    log = Logger(namespace="claudefs_gateway.servers.ds_nfs")
    store = handler.store

    def refuse(call: Call, e: Exception, proc: str) -> int:
        if isinstance(e, _Refused):
            state.refused += 1
            log.debug("pNFS data server {proc} refused: {why}", proc=proc, why=str(e))
            call.status = str(e.status)
            return e.status
        status = nfs3_status(e, proc)
        call.status = str(status)
        return status

    def fattr(h: handles.DSHandle, size: int) -> bytes:
        # What a data server can say of a file: it knows no owner, mode or
        # times (the metadata server does; RFC 8435 §2.3: the client uses
        # the metadata server's attributes).
        return c.FATTR3.pack(
            c.NF3.REG, 0o600, 1, h.uid, h.gid, size, size, 0, 0, 0, h.ino, 0, 0, 0, 0, 0, 0
        )

    async def getattr_(call: Call, fh: bytes) -> list[bytes]:
        try:
            h = state.check(call, fh, False)
            size = await handler._serial(h.ino, store.held, h.ino)
        except Exception as e:
            return [_U32.pack(refuse(call, e, "GETATTR"))]
        return [_OK, fattr(h, size)]

    async def access(call: Call, args: tuple[bytes, int]) -> list[bytes]:
        fh, want = args
        try:
            h = state.check(call, fh, False)
        except Exception as e:
            return [_U32.pack(refuse(call, e, "ACCESS")), c.FALSE]
        granted = c.ACCESS_READ | (c.ACCESS_MODIFY | c.ACCESS_EXTEND if h.writable else 0)
        return [_OK, c.FALSE, _U32.pack(want & granted)]

    async def read(call: Call, args: tuple[bytes, int, int]) -> list[bytes]:
        fh, offset, count = args
        try:
            h = state.check(call, fh, False)
            count = min(count, MAX_IO)
            if offset > MAX_FILE_SIZE:
                raise _Refused(NFS3ERR.INVAL, "offset beyond the largest file")
            eof, data = await handler._serial(h.ino, store.read, h.ino, offset, count)
        except Exception as e:
            return [_U32.pack(refuse(call, e, "READ")), c.FALSE]
        n = len(data)
        state.bytes_read += n
        head = _OK + c.FALSE + _READ_HEAD.pack(n, 1 if eof else 0, n)
        return [head, data, PADDING[n & 3]] if n & 3 else [head, data]

    async def write(call: Call, args: c.WriteArgs) -> list[bytes]:
        try:
            h = state.check(call, args.fh, True)
            stable = args.stable != c.UNSTABLE
            await handler._serial(h.ino, store.write, h.ino, args.offset, args.data, stable)
        except Exception as e:
            return [_U32.pack(refuse(call, e, "WRITE")), _WCC_NONE]
        state.bytes_written += args.count
        committed = c.FILE_SYNC if stable else c.UNSTABLE
        return [_OK, _WCC_NONE, _WRITE_TAIL.pack(args.count, committed, state.verifier)]

    async def commit(call: Call, args: tuple[bytes, int, int]) -> list[bytes]:
        fh = args[0]
        try:
            h = state.check(call, fh, True)
            await handler._serial(h.ino, store.commit, h.ino)
        except Exception as e:
            return [_U32.pack(refuse(call, e, "COMMIT")), _WCC_NONE]
        return [_OK, _WCC_NONE, state.verifier]

    async def fsinfo(call: Call, fh: bytes) -> list[bytes]:
        try:
            state.check(call, fh, False)
        except Exception as e:
            return [_U32.pack(refuse(call, e, "FSINFO")), c.FALSE]
        props = c.FSF3_HOMOGENEOUS | c.FSF3_CANSETTIME
        return [
            _OK + c.FALSE,
            _FSINFO.pack(
                MAX_IO, MAX_IO, 4096, MAX_IO, MAX_IO, 4096, 64 * 1024, MAX_FILE_SIZE, 0, 1, props
            ),
        ]

    async def fsstat(call: Call, fh: bytes) -> list[bytes]:
        try:
            state.check(call, fh, False)
            st = await handler._run(store.statfs)
        except Exception as e:
            return [_U32.pack(refuse(call, e, "FSSTAT")), c.FALSE]
        return [
            _OK + c.FALSE,
            _FSSTAT.pack(
                st.total_bytes,
                st.free_bytes,
                st.avail_bytes,
                st.total_files,
                st.free_files,
                st.avail_files,
                0,
            ),
        ]

    async def pathconf(call: Call, fh: bytes) -> list[bytes]:
        try:
            state.check(call, fh, False)
        except Exception as e:
            return [_U32.pack(refuse(call, e, "PATHCONF")), c.FALSE]
        return [_OK + c.FALSE, _PATHCONF.pack(1, 255, 1, 1, 0, 1)]

    def notsupp(name: str) -> Procedure:
        def handle(call: Call, args: Any) -> list[bytes]:
            call.status = "NOTSUPP"
            return [_U32.pack(NFS3ERR.NOTSUPP), _WCC_NONE]

        return Procedure(name, _skip, handle)

    def deferred(fn: Any) -> Any:
        return lambda call, args: defer.Deferred.fromCoroutine(fn(call, args))

    prog = Program(c.NFS_PROGRAM, "pnfs_ds", metrics)
    v = c.NFS_V3
    prog.add(v, c.NULL, Procedure("NULL", no_args, lambda call, args: []))
    prog.add(v, c.GETATTR, Procedure("GETATTR", c.dec_fh, deferred(getattr_)))
    prog.add(v, c.ACCESS, Procedure("ACCESS", c.dec_access, deferred(access)))
    prog.add(v, c.READ, Procedure("READ", c.dec_read, deferred(read)))
    prog.add(
        v,
        c.WRITE,
        Procedure(
            "WRITE",
            c.make_write_decoder(MAX_IO),
            deferred(write),
            cancel_on_close=False,
        ),
    )
    prog.add(
        v, c.COMMIT, Procedure("COMMIT", c.dec_commit, deferred(commit), cancel_on_close=False)
    )
    prog.add(v, c.FSSTAT, Procedure("FSSTAT", c.dec_fh, deferred(fsstat)))
    prog.add(v, c.FSINFO, Procedure("FSINFO", c.dec_fh, deferred(fsinfo)))
    prog.add(v, c.PATHCONF, Procedure("PATHCONF", c.dec_fh, deferred(pathconf)))
    for number in _NOTSUPP_PROCS:
        prog.add(v, number, notsupp(c.PROC_NAMES[number]))
    return prog


def _skip(u: Unpacker) -> None:
    """Arguments of a procedure answered NOTSUPP whatever they say."""
    return None
