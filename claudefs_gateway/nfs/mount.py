# -*- test-case-name: tests.nfs.test_mount -*-
"""
MOUNT version 3 (RFC 1813 appendix I), program 100005; version 1 for
C{showmount}.

MNT turns an exported path (or a directory below one) into its root file
handle after checking the export's client networks (MNT3ERR_ACCES
otherwise) and answers the authentication flavours the export takes. The
same rules are enforced again on every NFS call (L{NFSContext.caller}), so
MNT is a convenience, not the gate. DUMP lists the mounts MNT recorded and
UMNT/UMNTALL did not remove (in memory, bounded: C{showmount -a} is advisory
in every implementation). EXPORT lists the NFS exports with their client
networks as groups (C{*} for everyone).

Version 1 is the same protocol with a 32-byte handle in MNT; gateway
handles are 33 bytes, so a version 1 MNT answers MNT3ERR_NOTSUPP (10004).
Its other procedures (EXPORT is what C{showmount -e} calls) work.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from twisted.internet import defer

from claudefs_gateway import errors
from claudefs_gateway.core.log import Logger
from claudefs_gateway.interfaces import IVFS
from claudefs_gateway.nfs.context import NFSContext
from claudefs_gateway.nfs.errors import mount_status, nfs3_name
from claudefs_gateway.rpc.message import AUTH_SYS
from claudefs_gateway.rpc.server import Call, Procedure, Program, no_args
from claudefs_gateway.rpc.xdr import Packer, Unpacker
from claudefs_gateway.vfs import ExportInfo

__all__ = ["MOUNT_PROGRAM", "Mount", "MNTPATHLEN", "MAX_MOUNTS"]

MOUNT_PROGRAM = 100005
MNTPATHLEN = 1024
MNTNAMLEN = 255
MAX_MOUNTS = 4096
MNT3_OK = 0
MNT3ERR_NOENT = 2
MNT3ERR_NOTDIR = 20
MNT3ERR_NOTSUPP = 10004

NULL, MNT, DUMP, UMNT, UMNTALL, EXPORT = range(6)


def _dec_path(u: Unpacker) -> bytes:
    return u.string(MNTPATHLEN)


def _groups(export: ExportInfo) -> list[str]:
    nets = [n.network for n in export.rules.clients]
    if any(n.prefixlen == 0 for n in nets):
        return ["*"]
    return [str(n.network_address) if n.num_addresses == 1 else str(n) for n in nets]


class Mount:
    """The MOUNT program (100005 versions 1 and 3)."""

    _log = Logger()

    def __init__(self, ctx: NFSContext, metrics: Any = None) -> None:
        self.ctx = ctx
        self.metrics = metrics
        # (client address, path) of each mount, oldest first.
        self.mounts: OrderedDict[tuple[str, str], None] = OrderedDict()

    def program(self) -> Program:
        prog = Program(MOUNT_PROGRAM, "mount", self.metrics)
        for vers in (1, 3):
            prog.add(vers, NULL, Procedure("NULL", no_args, lambda call, args: []))
            prog.add(
                vers,
                MNT,
                Procedure(
                    "MNT",
                    _dec_path,
                    self.mnt3 if vers == 3 else self.mnt1,
                    cached=False,
                    cancel_on_close=False,
                ),
            )
            prog.add(vers, DUMP, Procedure("DUMP", no_args, self.dump))
            prog.add(vers, UMNT, Procedure("UMNT", _dec_path, self.umnt, cancel_on_close=False))
            prog.add(vers, UMNTALL, Procedure("UMNTALL", no_args, self.umntall))
            prog.add(vers, EXPORT, Procedure("EXPORT", no_args, self.export))
        return prog

    # -- MNT --------------------------------------------------------------------

    def mnt3(self, call: Call, path: bytes) -> defer.Deferred[list[bytes]]:
        return defer.Deferred.fromCoroutine(self._mnt3(call, path))

    def mnt1(self, call: Call, path: bytes) -> list[bytes]:
        call.status = nfs3_name(MNT3ERR_NOTSUPP)
        return [MNT3ERR_NOTSUPP.to_bytes(4, "big")]

    async def _mnt3(self, call: Call, raw: bytes) -> list[bytes]:
        try:
            vfs = await self.ctx.ready()
            path = raw.decode("utf-8", "surrogateescape")
            export, rest = self._find(vfs, path)
            caller = self.ctx.caller(export, call)
            a = await vfs.resolve(caller, rest.encode("utf-8", "surrogateescape"))
            if not a.is_dir:
                raise errors.NotDir("mount point is not a directory")
        except Exception as e:
            if isinstance(e, defer.CancelledError):
                raise
            status = mount_status(e)
            call.status = nfs3_name(status)
            self._log.info(
                "MNT of {path} by {host} refused: {why}",
                path=raw[:200].decode("utf-8", "replace"),
                host=call.peer.host,
                why=nfs3_name(status),
            )
            return [status.to_bytes(4, "big")]
        handle = vfs.handle(export, a)
        key = (call.peer.host, path)
        self.mounts[key] = None
        self.mounts.move_to_end(key)
        while len(self.mounts) > MAX_MOUNTS:
            self.mounts.popitem(last=False)
        self._log.info("{host} mounted {path}", host=call.peer.host, path=path, export=export.path)
        p = Packer()
        p.u32(MNT3_OK)
        p.opaque(handle)
        p.array([AUTH_SYS], Packer.u32)
        return p.chunks()

    def _find(self, vfs: IVFS, path: str) -> tuple[ExportInfo, str]:
        """The export holding C{path} (the longest that does) and the rest of the path."""
        norm = "/" + "/".join(p for p in path.split("/") if p and p != ".")
        if ".." in norm.split("/"):
            raise errors.Access("'..' in a mount path")
        best: ExportInfo | None = None
        for e in vfs.exports.for_protocol("nfs"):
            ep = e.path.rstrip("/") or "/"
            if norm == ep or norm.startswith(ep.rstrip("/") + "/"):
                if best is None or len(ep) > len(best.path):
                    best = e
        if best is None:
            raise errors.NotFound("no export holds that path")
        rest = norm[len(best.path.rstrip("/")) :]
        return best, rest

    # -- the rest -----------------------------------------------------------------

    def dump(self, call: Call, args: None) -> list[bytes]:
        p = Packer()
        for host, path in self.mounts:
            p.bool(True)
            p.string(host.encode()[:MNTNAMLEN])
            p.string(path.encode("utf-8", "surrogateescape")[:MNTPATHLEN])
        p.bool(False)
        return p.chunks()

    def umnt(self, call: Call, raw: bytes) -> list[bytes]:
        path = raw.decode("utf-8", "surrogateescape")
        norm = "/" + "/".join(p for p in path.split("/") if p and p != ".")
        for key in ((call.peer.host, path), (call.peer.host, norm)):
            self.mounts.pop(key, None)
        return []

    def umntall(self, call: Call, args: None) -> list[bytes]:
        for key in [k for k in self.mounts if k[0] == call.peer.host]:
            del self.mounts[key]
        return []

    def export(self, call: Call, args: None) -> defer.Deferred[list[bytes]] | list[bytes]:
        vfs = self.ctx.vfs
        if vfs is None:
            ready = defer.Deferred.fromCoroutine(self.ctx.ready())
            return ready.addCallback(lambda _: self.export(call, args))
        p = Packer()
        for e in sorted(vfs.exports.for_protocol("nfs"), key=lambda e: e.path):
            p.bool(True)
            p.string(e.path.encode("utf-8", "surrogateescape"))
            for g in _groups(e):
                p.bool(True)
                p.string(g.encode())
            p.bool(False)
        p.bool(False)
        return p.chunks()
