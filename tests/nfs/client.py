"""
An in-tree NFSv3/MOUNT/NLM client for the tests: encodes arguments, decodes
results, and sends calls through a pluggable transport (an in-memory
L{RPCServer} for unit tests, a socket for loopback tests).

Results are L{Res} objects: C{status} plus the fields the RFC names.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from twisted.internet import defer

from claudefs_gateway.fstypes import SetAttrs
from claudefs_gateway.nfs.v3 import codec as c
from claudefs_gateway.rpc import message as msg
from claudefs_gateway.rpc.client import RPCError, new_xid
from claudefs_gateway.rpc.message import AuthSys
from claudefs_gateway.rpc.server import Peer, RPCServer
from claudefs_gateway.rpc.xdr import Packer, Unpacker

MOUNT = 100005
NLM = 100021
NSM = 100024


class Res(SimpleNamespace):
    status: int


def _fh(p: Packer, fh: bytes) -> None:
    p.opaque(fh)


def _dirop(p: Packer, fh: bytes, name: bytes) -> None:
    p.opaque(fh)
    p.string(name)


def _verf(b: bytes) -> bytes:
    return b.ljust(8, b"\0")[:8]


class Client:
    """
    @param send: (prog, vers, proc, args bytes) -> Unpacker at the results,
        or a Deferred of one.
    """

    def __init__(self, send: Callable[[int, int, int, bytes], Any]) -> None:
        self.send = send

    def _call(
        self, prog: int, vers: int, proc: int, args: bytes, decode: Callable[[Unpacker], Any]
    ) -> Any:
        got = self.send(prog, vers, proc, args)
        if isinstance(got, defer.Deferred):
            return got.addCallback(decode)
        return decode(got)

    def nfs(self, proc: int, p: Packer | bytes, decode: Callable[[Unpacker], Any]) -> Any:
        data = p.bytes() if isinstance(p, Packer) else p
        return self._call(c.NFS_PROGRAM, 3, proc, data, decode)

    # -- NFSv3 ------------------------------------------------------------------

    def null(self) -> Any:
        return self.nfs(c.NULL, b"", lambda u: Res(status=0))

    def getattr(self, fh: bytes) -> Any:
        p = Packer()
        _fh(p, fh)

        def dec(u: Unpacker) -> Res:
            st = u.u32()
            return Res(status=st, attrs=c.dec_fattr3(u) if st == 0 else None)

        return self.nfs(c.GETATTR, p, dec)

    def setattr(self, fh: bytes, changes: SetAttrs, guard: tuple[int, int] | None = None) -> Any:
        p = Packer()
        _fh(p, fh)
        p.raw(c.encode_sattr3(changes))
        p.bool(guard is not None)
        if guard is not None:
            p.u32(guard[0])
            p.u32(guard[1])
        return self.nfs(c.SETATTR, p, lambda u: Res(status=u.u32(), wcc=c.dec_wcc(u)))

    def lookup(self, fh: bytes, name: bytes) -> Any:
        p = Packer()
        _dirop(p, fh, name)

        def dec(u: Unpacker) -> Res:
            st = u.u32()
            if st:
                return Res(status=st, dir_attrs=c.dec_post_op_attr(u))
            return Res(
                status=0,
                fh=u.opaque(64),
                attrs=c.dec_post_op_attr(u),
                dir_attrs=c.dec_post_op_attr(u),
            )

        return self.nfs(c.LOOKUP, p, dec)

    def access(self, fh: bytes, mask: int = 0x3F) -> Any:
        p = Packer()
        _fh(p, fh)
        p.u32(mask)

        def dec(u: Unpacker) -> Res:
            st = u.u32()
            attrs = c.dec_post_op_attr(u)
            return Res(status=st, attrs=attrs, access=u.u32() if st == 0 else None)

        return self.nfs(c.ACCESS, p, dec)

    def readlink(self, fh: bytes) -> Any:
        p = Packer()
        _fh(p, fh)

        def dec(u: Unpacker) -> Res:
            st = u.u32()
            attrs = c.dec_post_op_attr(u)
            return Res(status=st, attrs=attrs, target=u.string(4096) if st == 0 else None)

        return self.nfs(c.READLINK, p, dec)

    def read(self, fh: bytes, offset: int, count: int) -> Any:
        p = Packer()
        _fh(p, fh)
        p.u64(offset)
        p.u32(count)

        def dec(u: Unpacker) -> Res:
            st = u.u32()
            attrs = c.dec_post_op_attr(u)
            if st:
                return Res(status=st, attrs=attrs)
            count = u.u32()
            eof = u.bool()
            data = u.opaque(1 << 30)
            return Res(status=0, attrs=attrs, count=count, eof=eof, data=data)

        return self.nfs(c.READ, p, dec)

    def write(
        self,
        fh: bytes,
        offset: int,
        data: bytes,
        stable: int = c.FILE_SYNC,
        count: int | None = None,
    ) -> Any:
        p = Packer()
        _fh(p, fh)
        p.u64(offset)
        p.u32(len(data) if count is None else count)
        p.u32(stable)
        p.opaque(data)

        def dec(u: Unpacker) -> Res:
            st = u.u32()
            wcc = c.dec_wcc(u)
            if st:
                return Res(status=st, wcc=wcc)
            return Res(status=0, wcc=wcc, count=u.u32(), committed=u.u32(), verf=u.fixed(8))

        return self.nfs(c.WRITE, p, dec)

    def _diropres(self, u: Unpacker) -> Res:
        st = u.u32()
        if st:
            return Res(status=st, dir_wcc=c.dec_wcc(u))
        return Res(
            status=0,
            fh=c.dec_post_op_fh(u),
            attrs=c.dec_post_op_attr(u),
            dir_wcc=c.dec_wcc(u),
        )

    def create(
        self,
        fh: bytes,
        name: bytes,
        mode: int = c.UNCHECKED,
        attrs: SetAttrs | None = None,
        verifier: bytes = b"",
    ) -> Any:
        p = Packer()
        _dirop(p, fh, name)
        p.u32(mode)
        if mode == c.EXCLUSIVE:
            p.fixed(_verf(verifier), 8)
        else:
            p.raw(c.encode_sattr3(attrs or SetAttrs(mode=0o644)))
        return self.nfs(c.CREATE, p, self._diropres)

    def mkdir(self, fh: bytes, name: bytes, attrs: SetAttrs | None = None) -> Any:
        p = Packer()
        _dirop(p, fh, name)
        p.raw(c.encode_sattr3(attrs or SetAttrs(mode=0o755)))
        return self.nfs(c.MKDIR, p, self._diropres)

    def symlink(self, fh: bytes, name: bytes, target: bytes, attrs: SetAttrs | None = None) -> Any:
        p = Packer()
        _dirop(p, fh, name)
        p.raw(c.encode_sattr3(attrs or SetAttrs()))
        p.string(target)
        return self.nfs(c.SYMLINK, p, self._diropres)

    def mknod(
        self,
        fh: bytes,
        name: bytes,
        ftype: int,
        attrs: SetAttrs | None = None,
        rdev: tuple[int, int] = (0, 0),
    ) -> Any:
        p = Packer()
        _dirop(p, fh, name)
        p.u32(ftype)
        if ftype in (c.NF3.CHR, c.NF3.BLK):
            p.raw(c.encode_sattr3(attrs or SetAttrs(mode=0o600)))
            p.u32(rdev[0])
            p.u32(rdev[1])
        elif ftype in (c.NF3.SOCK, c.NF3.FIFO):
            p.raw(c.encode_sattr3(attrs or SetAttrs(mode=0o600)))
        return self.nfs(c.MKNOD, p, self._diropres)

    def remove(self, fh: bytes, name: bytes) -> Any:
        p = Packer()
        _dirop(p, fh, name)
        return self.nfs(c.REMOVE, p, lambda u: Res(status=u.u32(), dir_wcc=c.dec_wcc(u)))

    def rmdir(self, fh: bytes, name: bytes) -> Any:
        p = Packer()
        _dirop(p, fh, name)
        return self.nfs(c.RMDIR, p, lambda u: Res(status=u.u32(), dir_wcc=c.dec_wcc(u)))

    def rename(self, ffh: bytes, fname: bytes, tfh: bytes, tname: bytes) -> Any:
        p = Packer()
        _dirop(p, ffh, fname)
        _dirop(p, tfh, tname)
        return self.nfs(
            c.RENAME,
            p,
            lambda u: Res(status=u.u32(), from_wcc=c.dec_wcc(u), to_wcc=c.dec_wcc(u)),
        )

    def link(self, fh: bytes, dfh: bytes, name: bytes) -> Any:
        p = Packer()
        _fh(p, fh)
        _dirop(p, dfh, name)
        return self.nfs(
            c.LINK,
            p,
            lambda u: Res(status=u.u32(), attrs=c.dec_post_op_attr(u), dir_wcc=c.dec_wcc(u)),
        )

    def readdir(self, fh: bytes, cookie: int = 0, verf: bytes = bytes(8), count: int = 4096) -> Any:
        p = Packer()
        _fh(p, fh)
        p.u64(cookie)
        p.fixed(verf, 8)
        p.u32(count)

        def dec(u: Unpacker) -> Res:
            start = u.pos
            st = u.u32()
            attrs = c.dec_post_op_attr(u)
            if st:
                return Res(status=st, attrs=attrs)
            verf = u.fixed(8)
            entries = u.linked_list(100000, lambda u: (u.u64(), u.string(1024), u.u64()))
            eof = u.bool()
            return Res(
                status=0, attrs=attrs, verf=verf, entries=entries, eof=eof, size=u.pos - start
            )

        return self.nfs(c.READDIR, p, dec)

    def readdirplus(
        self,
        fh: bytes,
        cookie: int = 0,
        verf: bytes = bytes(8),
        dircount: int = 4096,
        maxcount: int = 32768,
    ) -> Any:
        p = Packer()
        _fh(p, fh)
        p.u64(cookie)
        p.fixed(verf, 8)
        p.u32(dircount)
        p.u32(maxcount)

        def entry(u: Unpacker) -> tuple[Any, ...]:
            return (u.u64(), u.string(1024), u.u64(), c.dec_post_op_attr(u), c.dec_post_op_fh(u))

        def dec(u: Unpacker) -> Res:
            start = u.pos
            st = u.u32()
            attrs = c.dec_post_op_attr(u)
            if st:
                return Res(status=st, attrs=attrs)
            verf = u.fixed(8)
            entries = u.linked_list(100000, entry)
            eof = u.bool()
            return Res(
                status=0, attrs=attrs, verf=verf, entries=entries, eof=eof, size=u.pos - start
            )

        return self.nfs(c.READDIRPLUS, p, dec)

    def fsstat(self, fh: bytes) -> Any:
        p = Packer()
        _fh(p, fh)

        def dec(u: Unpacker) -> Res:
            st = u.u32()
            attrs = c.dec_post_op_attr(u)
            if st:
                return Res(status=st, attrs=attrs)
            vals = [u.u64() for _ in range(6)]
            return Res(
                status=0,
                attrs=attrs,
                tbytes=vals[0],
                fbytes=vals[1],
                abytes=vals[2],
                tfiles=vals[3],
                ffiles=vals[4],
                afiles=vals[5],
                invarsec=u.u32(),
            )

        return self.nfs(c.FSSTAT, p, dec)

    def fsinfo(self, fh: bytes) -> Any:
        p = Packer()
        _fh(p, fh)

        def dec(u: Unpacker) -> Res:
            st = u.u32()
            attrs = c.dec_post_op_attr(u)
            if st:
                return Res(status=st, attrs=attrs)
            names = "rtmax rtpref rtmult wtmax wtpref wtmult dtpref".split()
            vals = {n: u.u32() for n in names}
            vals["maxfilesize"] = u.u64()
            vals["time_delta"] = (u.u32(), u.u32())
            vals["properties"] = u.u32()
            return Res(status=0, attrs=attrs, **vals)

        return self.nfs(c.FSINFO, p, dec)

    def pathconf(self, fh: bytes) -> Any:
        p = Packer()
        _fh(p, fh)

        def dec(u: Unpacker) -> Res:
            st = u.u32()
            attrs = c.dec_post_op_attr(u)
            if st:
                return Res(status=st, attrs=attrs)
            return Res(
                status=0,
                attrs=attrs,
                linkmax=u.u32(),
                name_max=u.u32(),
                no_trunc=u.bool(),
                chown_restricted=u.bool(),
                case_insensitive=u.bool(),
                case_preserving=u.bool(),
            )

        return self.nfs(c.PATHCONF, p, dec)

    def commit(self, fh: bytes, offset: int = 0, count: int = 0) -> Any:
        p = Packer()
        _fh(p, fh)
        p.u64(offset)
        p.u32(count)

        def dec(u: Unpacker) -> Res:
            st = u.u32()
            wcc = c.dec_wcc(u)
            return Res(status=st, wcc=wcc, verf=u.fixed(8) if st == 0 else None)

        return self.nfs(c.COMMIT, p, dec)

    # -- MOUNT ------------------------------------------------------------------

    def mnt(self, path: bytes, vers: int = 3) -> Any:
        p = Packer()
        p.string(path)

        def dec(u: Unpacker) -> Res:
            st = u.u32()
            if st or vers != 3:
                return Res(status=st)
            return Res(status=0, fh=u.opaque(64), flavors=u.array(16, Unpacker.u32))

        return self._call(MOUNT, vers, 1, p.bytes(), dec)

    def mount_dump(self) -> Any:
        return self._call(
            MOUNT,
            3,
            2,
            b"",
            lambda u: u.linked_list(10000, lambda u: (u.string(255), u.string(1024))),
        )

    def umnt(self, path: bytes) -> Any:
        p = Packer()
        p.string(path)
        return self._call(MOUNT, 3, 3, p.bytes(), lambda u: None)

    def umntall(self) -> Any:
        return self._call(MOUNT, 3, 4, b"", lambda u: None)

    def exports(self, vers: int = 3) -> Any:
        def group(u: Unpacker) -> bytes:
            return u.string(255)

        def export(u: Unpacker) -> tuple[bytes, list[bytes]]:
            return u.string(1024), u.linked_list(100, group)

        return self._call(MOUNT, vers, 5, b"", lambda u: u.linked_list(100, export))


def server_sender(
    server: RPCServer,
    peer: Peer,
    cred: AuthSys | None,
    flavor: int | None = None,
    on_deferred: Callable[[defer.Deferred[Any]], Any] | None = None,
) -> Callable[[int, int, int, bytes], Any]:
    """Send calls straight into an L{RPCServer} (synchronous memory backend)."""

    def send(prog: int, vers: int, proc: int, args: bytes) -> Any:
        xid = new_xid()
        message = msg.encode_call(xid, prog, vers, proc, args, cred, flavor=flavor)
        out = server.handle(message, peer)
        if isinstance(out, defer.Deferred):
            if on_deferred is not None:
                return on_deferred(out).addCallback(_unpack)
            got: list[Any] = []
            out.addBoth(got.append)
            if not got:
                raise AssertionError("call did not finish synchronously")
            out = got[0]
        if out is None:
            raise AssertionError("no reply")
        return _unpack(out)

    return send


def _unpack(chunks: list[bytes]) -> Unpacker:
    data = b"".join(chunks)
    h = msg.parse_reply(data)
    if not h.accepted or h.stat != msg.SUCCESS:
        raise RPCError(h)
    return Unpacker(data, h.results_at)


def stream_sender(proto: Any, cred: AuthSys | None) -> Callable[[int, int, int, bytes], Any]:
    """Send calls over a connected L{StreamClient}."""

    def send(prog: int, vers: int, proc: int, args: bytes) -> Any:
        return proto.call(prog, vers, proc, args, cred)

    return send


def time_of(t: tuple[int, int]) -> int:
    return t[0] * 1_000_000_000 + t[1]


class NLMClient:
    """NLM v4 and NSM v1 calls (results decoded as L{Res})."""

    def __init__(self, send: Callable[[int, int, int, bytes], Any]) -> None:
        self.send = send

    def _call(
        self, prog: int, vers: int, proc: int, args: bytes, decode: Callable[[Unpacker], Any]
    ) -> Any:
        got = self.send(prog, vers, proc, args)
        if isinstance(got, defer.Deferred):
            return got.addCallback(decode)
        return decode(got)

    @staticmethod
    def _res(u: Unpacker) -> Res:
        return Res(cookie=u.opaque(1024), status=u.u32())

    def test(self, lock: Any, exclusive: bool = True, cookie: bytes = b"c") -> Any:
        from claudefs_gateway.nfs.nlm import encode_testargs

        def dec(u: Unpacker) -> Res:
            cookie = u.opaque(1024)
            st = u.u32()
            if st != 1:
                return Res(cookie=cookie, status=st, holder=None)
            holder = Res(
                exclusive=u.bool(), svid=u.i32(), oh=u.opaque(1024), offset=u.u64(), length=u.u64()
            )
            return Res(cookie=cookie, status=st, holder=holder)

        return self._call(NLM, 4, 1, encode_testargs(cookie, exclusive, lock), dec)

    def lock(
        self,
        lock: Any,
        exclusive: bool = True,
        block: bool = False,
        reclaim: bool = False,
        cookie: bytes = b"c",
        proc: int = 2,
    ) -> Any:
        from claudefs_gateway.nfs.nlm import LockArgs, encode_lockargs

        args = encode_lockargs(LockArgs(cookie, block, exclusive, lock, reclaim, 3))
        return self._call(NLM, 4, proc, args, self._res if proc != 7 else (lambda u: None))

    def cancel(self, lock: Any, exclusive: bool = True, cookie: bytes = b"c") -> Any:
        from claudefs_gateway.nfs.nlm import encode_lock

        p = Packer()
        p.opaque(cookie)
        p.bool(True)
        p.bool(exclusive)
        encode_lock(p, lock)
        return self._call(NLM, 4, 3, p.bytes(), self._res)

    def unlock(self, lock: Any, cookie: bytes = b"c") -> Any:
        from claudefs_gateway.nfs.nlm import encode_lock

        p = Packer()
        p.opaque(cookie)
        encode_lock(p, lock)
        return self._call(NLM, 4, 4, p.bytes(), self._res)

    def share(
        self,
        name: bytes,
        fh: bytes,
        oh: bytes,
        mode: int,
        access: int,
        reclaim: bool = False,
        unshare: bool = False,
    ) -> Any:
        p = Packer()
        p.opaque(b"s")
        p.string(name)
        p.opaque(fh)
        p.opaque(oh)
        p.u32(mode)
        p.u32(access)
        p.bool(reclaim)
        return self._call(
            NLM,
            4,
            21 if unshare else 20,
            p.bytes(),
            lambda u: Res(cookie=u.opaque(1024), status=u.u32(), sequence=u.i32()),
        )

    def free_all(self, name: bytes, state: int = 0) -> Any:
        p = Packer()
        p.string(name)
        p.i32(state)
        return self._call(NLM, 4, 23, p.bytes(), lambda u: None)

    def granted(self, lock: Any) -> Any:
        from claudefs_gateway.nfs.nlm import encode_testargs

        return self._call(NLM, 4, 5, encode_testargs(b"g", True, lock), self._res)

    def granted_res(self, cookie: bytes, status: int) -> Any:
        p = Packer()
        p.opaque(cookie)
        p.u32(status)
        return self._call(NLM, 4, 15, p.bytes(), lambda u: None)

    def sm_notify(self, name: bytes, state: int) -> Any:
        p = Packer()
        p.string(name)
        p.i32(state)
        return self._call(NSM, 1, 6, p.bytes(), lambda u: None)

    def sm_stat(self, name: bytes) -> Any:
        p = Packer()
        p.string(name)
        return self._call(NSM, 1, 1, p.bytes(), lambda u: Res(status=u.u32(), state=u.i32()))

    def sm_mon(self, name: bytes) -> Any:
        p = Packer()
        p.string(name)
        p.string(b"me")
        p.u32(100021)
        p.u32(4)
        p.u32(16)
        p.fixed(b"\0" * 16)
        return self._call(NSM, 1, 2, p.bytes(), lambda u: Res(status=u.u32(), state=u.i32()))
