# -*- test-case-name: tests.nfs.v4.test_ops -*-
"""
NFSv4 file system operations (RFC 8881 §18, RFC 8276 §8.4): file handles,
names, attributes, data, directories and extended attributes, over the vfs.

Choices, where the RFC leaves them:

 - READ through a write-only open is allowed (clients read the pages they
   write); WRITE through a read-only open is NFS4ERR_OPENMODE; anonymous
   I/O meets every open's deny modes, SMB's included (NFS4ERR_LOCKED).
 - WRITE answers FILE_SYNC4 when the store made the data stable, else
   UNSTABLE4 with the gateway's write verifier (random per run), which
   COMMIT returns too, as NFSv3 does; write data goes to the store as a
   view into the request, never copied.
 - READDIR never returns "." or ".."; its cookies are the store's (3 and
   up); cookies 1 and 2 answer NFS4ERR_BAD_COOKIE. The verifier is the
   store's; a stale one is NFS4ERR_NOT_SAME.
 - change_info4 is not atomic: the directory is read before and after.
 - Extended attributes are the store's C{user.} attributes (RFC 8276 names
   have no namespace; the Linux client sends C{user.x} as C{x}), the same
   ones SMB shows as EAs.
 - SECINFO and SECINFO_NO_NAME offer AUTH_SYS then AUTH_NONE (the export's
   anonymous identity); RPCSEC_GSS is not served.
"""

from __future__ import annotations

from typing import Any

from claudefs_gateway import errors
from claudefs_gateway.fstypes import MAX_FILE_SIZE, XATTR_SIZE_MAX, Attributes, FileType, SetAttrs
from claudefs_gateway.interfaces import IVFS
from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4 import fattr
from claudefs_gateway.nfs.v4.base import Nfs4Error, check_name
from claudefs_gateway.nfs.v4.codec import (
    AccessArgs,
    AccessResok,
    CommitArgs,
    CreateArgs,
    CreateResok,
    Entry,
    FattrArgs,
    GetattrArgs,
    GetxattrArgs,
    ListxattrsArgs,
    ListxattrsResok,
    NameArgs,
    PutfhArgs,
    ReadArgs,
    ReaddirArgs,
    ReaddirResok,
    ReadResok,
    RenameArgs,
    RenameResok,
    SecinfoNoNameArgs,
    SetattrArgs,
    SetxattrArgs,
    SpecData,
    WriteArgs,
    WriteResok,
)
from claudefs_gateway.nfs.v4.compound import FH, CompoundState, OpsBase, ok
from claudefs_gateway.nfs.v4.pseudo import PSEUDO_FSID, PseudoNode
from claudefs_gateway.rpc.xdrtypes import Arm
from claudefs_gateway.vfs import ExportInfo, R, W, X
from claudefs_gateway.vfs.origin import Origin

__all__ = ["FileOps", "XATTR_PREFIX"]

XATTR_PREFIX = b"user."
_PSEUDO_VERF = b"cfspsdv1"
_ACCESS_ALL = (
    c.ACCESS4_READ
    | c.ACCESS4_LOOKUP
    | c.ACCESS4_MODIFY
    | c.ACCESS4_EXTEND
    | c.ACCESS4_DELETE
    | c.ACCESS4_EXECUTE
    | c.ACCESS4_XAREAD
    | c.ACCESS4_XAWRITE
    | c.ACCESS4_XALIST
)
_SECINFO = [Arm(c.AUTH_SYS), Arm(c.AUTH_NONE)]
# Bytes of a READDIR4resok that are not entries (verifier, end of list, eof).
_READDIR_BASE = 8 + 4 + 4
_MAX_ENTRIES = 1024


def require_regular(a: Attributes) -> None:
    """RFC 8881 §18.22.3: I/O on other types is ISDIR, SYMLINK or WRONG_TYPE."""
    if a.is_reg:
        return
    if a.is_dir:
        raise Nfs4Error(c.NFS4ERR_ISDIR)
    if a.is_link:
        raise Nfs4Error(c.NFS4ERR_SYMLINK)
    raise Nfs4Error(c.NFS4ERR_WRONG_TYPE)


def _xattr_name(name: bytes) -> bytes:
    if not name:
        raise Nfs4Error(c.NFS4ERR_INVAL, "empty xattr name")
    if len(name) + len(XATTR_PREFIX) > 255:
        raise Nfs4Error(c.NFS4ERR_NAMETOOLONG)
    if b"\0" in name:
        raise Nfs4Error(c.NFS4ERR_INVAL, "NUL in xattr name")
    return XATTR_PREFIX + name


def _pad(n: int) -> int:
    return n + (-n & 3)


class FileOps(OpsBase):
    """File handles, names, attributes, data, directories, extended attributes."""

    # -- file handles ------------------------------------------------------------------------

    async def op_PUTFH(self, st: CompoundState, a: PutfhArgs) -> Arm:
        st.cfh = await self.resolve(a.object)
        st.cstateid = None
        return ok()

    async def op_PUTROOTFH(self, st: CompoundState, a: Any) -> Arm:
        st.cfh = await self.root_fh()
        st.cstateid = None
        return ok()

    async def op_PUTPUBFH(self, st: CompoundState, a: Any) -> Arm:
        # RFC 8881 §18.20: the public file handle may be the root one.
        return await self.op_PUTROOTFH(st, a)

    async def op_GETFH(self, st: CompoundState, a: Any) -> Arm:
        return ok(self.cfh(st).handle)

    async def op_SAVEFH(self, st: CompoundState, a: Any) -> Arm:
        st.sfh = self.cfh(st)
        st.sstateid = st.cstateid
        return ok()

    async def op_RESTOREFH(self, st: CompoundState, a: Any) -> Arm:
        if st.sfh is None:
            raise Nfs4Error(c.NFS4ERR_RESTOREFH)
        st.cfh = st.sfh
        st.cstateid = st.sstateid
        return ok()

    # -- names ------------------------------------------------------------------------------

    async def op_LOOKUP(self, st: CompoundState, a: NameArgs) -> Arm:
        fh = self.cfh(st)
        vfs = await self.vfs()
        if fh.node is not None:
            check_name(a.name)
            got = self.pseudo(vfs).lookup(fh.node, a.name, st.call.peer.host)
            if got is None:
                raise Nfs4Error(c.NFS4ERR_NOENT)
            st.cfh = await self._pseudo_child(vfs, got)
            return ok()
        d, caller = self.dir_of(st, fh)
        check_name(a.name)
        child = await vfs.lookup(caller, d.ino, a.name)
        st.cfh = self.child(vfs, fh, child)
        return ok()

    async def _pseudo_child(self, vfs: IVFS, got: PseudoNode | ExportInfo) -> FH:
        if isinstance(got, PseudoNode):
            return FH(got.handle, node=got)
        return await self.export_root(vfs, got)

    async def op_LOOKUPP(self, st: CompoundState, a: Any) -> Arm:
        fh = self.cfh(st)
        vfs = await self.vfs()
        p = self.pseudo(vfs)
        if fh.node is not None:
            if fh.node.parent is None:
                raise Nfs4Error(c.NFS4ERR_NOENT, "LOOKUPP of the root")
            st.cfh = FH(fh.node.parent.handle, node=fh.node.parent)
            return ok()
        d, caller = self.dir_of(st, fh)
        assert fh.export is not None
        if d.ino == fh.export.root_ino:
            parent = p.parent_of(fh.export)
            if parent is None:
                raise Nfs4Error(c.NFS4ERR_NOENT, "LOOKUPP of the root")
            st.cfh = FH(parent.handle, node=parent)
            return ok()
        up = await vfs.lookup(caller, d.ino, b"..")
        st.cfh = self.child(vfs, fh, up)
        return ok()

    # -- attributes --------------------------------------------------------------------------

    async def op_GETATTR(self, st: CompoundState, a: GetattrArgs) -> Arm:
        fh = self.cfh(st)
        if fh.node is None:
            self.live(fh)
        return ok(await self.attributes(st, fh, a.attr_request))

    async def op_SETATTR(self, st: CompoundState, a: SetattrArgs) -> Arm:
        fh = self.cfh(st)
        before, caller = self.real(st, fh, write=True)
        allowed = fattr.WRITABLE - {c.FATTR4_MODE_UMASK}
        want = fattr.decode_settable(a.obj_attributes, self.uid_of, self.gid_of, allowed)
        changes = want.changes
        if changes.size is not None:
            if before.is_dir:
                raise Nfs4Error(c.NFS4ERR_ISDIR, "size of a directory")
            if not before.is_reg:
                raise Nfs4Error(c.NFS4ERR_INVAL, "size of a special file")
            origin: Origin | None = self.io_origin(st, a.stateid, fh, write=True)
        else:
            origin = None
        if want.mode_masked is not None:
            value, mask = want.mode_masked
            base = changes.mode if changes.mode is not None else before.mode
            changes = SetAttrs(
                mode=(base & ~mask) | (value & mask),
                uid=changes.uid,
                gid=changes.gid,
                size=changes.size,
                atime=changes.atime,
                mtime=changes.mtime,
                btime=changes.btime,
            )
        vfs = await self.vfs()
        try:
            fh.attrs = await vfs.setattr(caller, fh.ino, changes, origin=origin)
        except errors.LockConflict:
            raise Nfs4Error(c.NFS4ERR_LOCKED) from None
        return Arm(c.NFS4_OK, want.mask)

    async def _compare(self, st: CompoundState, a: FattrArgs) -> bool:
        fh = self.cfh(st)
        if fh.node is None:
            self.live(fh)
        theirs = a.obj_attributes
        fattr.check_verify(theirs)
        ours = await self.attributes(st, fh, theirs.mask)
        return bool(ours.mask == fattr.bitmap(fattr.bits(theirs.mask)) and ours.vals == theirs.vals)

    async def op_VERIFY(self, st: CompoundState, a: FattrArgs) -> Arm:
        if not await self._compare(st, a):
            raise Nfs4Error(c.NFS4ERR_NOT_SAME)
        return ok()

    async def op_NVERIFY(self, st: CompoundState, a: FattrArgs) -> Arm:
        if await self._compare(st, a):
            raise Nfs4Error(c.NFS4ERR_SAME)
        return ok()

    async def op_ACCESS(self, st: CompoundState, a: AccessArgs) -> Arm:
        fh = self.cfh(st)
        want = a.access & _ACCESS_ALL
        if fh.node is not None:
            return ok(AccessResok(want, want & (c.ACCESS4_READ | c.ACCESS4_LOOKUP)))
        obj, caller = self.real(st, fh)
        vfs = await self.vfs()
        held = await vfs.access(caller, obj.ino, R | W | X)
        granted = 0
        if held & R:
            granted |= c.ACCESS4_READ | c.ACCESS4_XAREAD | c.ACCESS4_XALIST
        if held & W:
            granted |= c.ACCESS4_MODIFY | c.ACCESS4_EXTEND | c.ACCESS4_XAWRITE
            if obj.is_dir:
                granted |= c.ACCESS4_DELETE
        if held & X:
            granted |= c.ACCESS4_LOOKUP if obj.is_dir else c.ACCESS4_EXECUTE
        return ok(AccessResok(want, granted & want))

    # -- data ---------------------------------------------------------------------------------

    async def op_READ(self, st: CompoundState, a: ReadArgs) -> Arm:
        fh = self.cfh(st)
        obj, caller = self.real(st, fh)
        require_regular(obj)
        origin = self.io_origin(st, a.stateid, fh, write=False)
        room = st.limit - st.size - 64 if st.limit else self.settings.io_size
        count = max(0, min(a.count, self.settings.io_size, room))
        if a.offset > MAX_FILE_SIZE:
            return ok(ReadResok(True, b""))
        vfs = await self.vfs()
        try:
            got = await vfs.read(caller, fh.ino, a.offset, count, origin)
        except errors.LockConflict:
            raise Nfs4Error(c.NFS4ERR_LOCKED, "a mandatory lock covers the range") from None
        fh.attrs = got.attrs
        return ok(ReadResok(got.eof, got.data))

    async def op_WRITE(self, st: CompoundState, a: WriteArgs) -> Arm:
        fh = self.cfh(st)
        obj, caller = self.real(st, fh, write=True)
        require_regular(obj)
        origin = self.io_origin(st, a.stateid, fh, write=True)
        vfs = await self.vfs()
        n = len(a.data)
        if n == 0:
            return ok(WriteResok(0, c.FILE_SYNC4, self.ctx.write_verifier))
        try:
            got = await vfs.write(caller, fh.ino, a.offset, a.data, a.stable != c.UNSTABLE4, origin)
        except errors.LockConflict:
            raise Nfs4Error(c.NFS4ERR_LOCKED, "a lock covers the range") from None
        fh.attrs = got.attrs
        committed = c.FILE_SYNC4 if got.stable else c.UNSTABLE4
        return ok(WriteResok(got.count, committed, self.ctx.write_verifier))

    async def op_COMMIT(self, st: CompoundState, a: CommitArgs) -> Arm:
        fh = self.cfh(st)
        obj, caller = self.real(st, fh, write=True)
        require_regular(obj)
        vfs = await self.vfs()
        fh.attrs = await vfs.commit(caller, fh.ino)
        return ok(self.ctx.write_verifier)

    # -- making and removing names ----------------------------------------------------------------

    async def op_CREATE(self, st: CompoundState, a: CreateArgs) -> Arm:
        fh = self.cfh(st)
        d, caller = self.dir_of(st, fh, write=True)
        kind = a.objtype.tag
        if kind in (c.NF4REG, c.NF4ATTRDIR, c.NF4NAMEDATTR):
            raise Nfs4Error(c.NFS4ERR_BADTYPE, "CREATE makes no regular files (OPEN does)")
        check_name(a.objname)
        want = fattr.decode_settable(
            a.createattrs, self.uid_of, self.gid_of, fattr.WRITABLE - {c.FATTR4_SIZE}
        )
        ch = want.changes
        defaults = {c.NF4DIR: 0o755, c.NF4LNK: 0o777}
        mode = ch.mode if ch.mode is not None else defaults.get(kind, 0o644)
        if want.umask is not None:
            mode &= ~want.umask
        vfs = await self.vfs()
        before = await vfs.getattr(caller, d.ino)
        if kind == c.NF4DIR:
            obj = await vfs.mkdir(caller, d.ino, a.objname, mode)
        elif kind == c.NF4LNK:
            target = a.objtype.value
            if not target:
                raise Nfs4Error(c.NFS4ERR_INVAL, "empty link target")
            obj = await vfs.symlink(caller, d.ino, a.objname, target)
        else:
            types = {
                c.NF4BLK: FileType.BLK,
                c.NF4CHR: FileType.CHR,
                c.NF4SOCK: FileType.SOCK,
                c.NF4FIFO: FileType.FIFO,
            }
            rdev = (0, 0)
            if isinstance(a.objtype.value, SpecData):
                rdev = (a.objtype.value.specdata1, a.objtype.value.specdata2)
            obj = await vfs.mknod(caller, d.ino, a.objname, types[kind], mode, rdev)
        rest = SetAttrs(uid=ch.uid, gid=ch.gid, atime=ch.atime, mtime=ch.mtime, btime=ch.btime)
        if not rest.is_empty():
            obj = await vfs.setattr(caller, obj.ino, rest)
        after = await vfs.getattr(caller, d.ino)
        fh.attrs = after
        st.cfh = self.child(vfs, fh, obj)
        return ok(CreateResok(self.cinfo(before, after), want.mask))

    async def op_REMOVE(self, st: CompoundState, a: NameArgs) -> Arm:
        fh = self.cfh(st)
        d, caller = self.dir_of(st, fh, write=True)
        check_name(a.name)
        vfs = await self.vfs()
        before = await vfs.getattr(caller, d.ino)
        target = await vfs.lookup(caller, d.ino, a.name)
        if target.is_dir:
            await vfs.rmdir(caller, d.ino, a.name)
        else:
            await vfs.remove(caller, d.ino, a.name)
        after = await vfs.getattr(caller, d.ino)
        fh.attrs = after
        return ok(self.cinfo(before, after))

    async def op_RENAME(self, st: CompoundState, a: RenameArgs) -> Arm:
        src_fh = self.sfh(st)
        dst_fh = self.cfh(st)
        if src_fh.pseudo or dst_fh.pseudo:
            raise Nfs4Error(c.NFS4ERR_ROFS if src_fh.pseudo == dst_fh.pseudo else c.NFS4ERR_XDEV)
        sd, caller = self.dir_of(st, src_fh, write=True)
        dd, _ = self.dir_of(st, dst_fh, write=True)
        assert src_fh.export is not None and dst_fh.export is not None
        if src_fh.export.id != dst_fh.export.id:
            raise Nfs4Error(c.NFS4ERR_XDEV)
        check_name(a.oldname)
        check_name(a.newname)
        vfs = await self.vfs()
        sb = await vfs.getattr(caller, sd.ino)
        db = sb if dd.ino == sd.ino else await vfs.getattr(caller, dd.ino)
        await vfs.rename(caller, sd.ino, a.oldname, dd.ino, a.newname)
        sa = await vfs.getattr(caller, sd.ino)
        da = sa if dd.ino == sd.ino else await vfs.getattr(caller, dd.ino)
        src_fh.attrs, dst_fh.attrs = sa, da
        return ok(RenameResok(self.cinfo(sb, sa), self.cinfo(db, da)))

    async def op_LINK(self, st: CompoundState, a: NameArgs) -> Arm:
        src_fh = self.sfh(st)
        dst_fh = self.cfh(st)
        if src_fh.pseudo:
            raise Nfs4Error(c.NFS4ERR_ISDIR)
        obj, caller = self.real(st, src_fh, write=True)
        if dst_fh.pseudo:
            raise Nfs4Error(c.NFS4ERR_XDEV)
        d, _ = self.dir_of(st, dst_fh, write=True)
        assert src_fh.export is not None and dst_fh.export is not None
        if src_fh.export.id != dst_fh.export.id:
            raise Nfs4Error(c.NFS4ERR_XDEV)
        if obj.is_dir:
            raise Nfs4Error(c.NFS4ERR_ISDIR, "hard link to a directory")
        check_name(a.name)
        vfs = await self.vfs()
        before = await vfs.getattr(caller, d.ino)
        src_fh.attrs = await vfs.link(caller, obj.ino, d.ino, a.name)
        after = await vfs.getattr(caller, d.ino)
        dst_fh.attrs = after
        return ok(self.cinfo(before, after))

    async def op_READLINK(self, st: CompoundState, a: Any) -> Arm:
        fh = self.cfh(st)
        obj, caller = self.real(st, fh)
        if not obj.is_link:
            raise Nfs4Error(c.NFS4ERR_INVAL, "not a symbolic link")
        vfs = await self.vfs()
        return ok(await vfs.readlink(caller, obj.ino))

    async def op_OPENATTR(self, st: CompoundState, a: Any) -> Arm:
        self.cfh(st)
        raise Nfs4Error(c.NFS4ERR_NOTSUPP, "named attributes are not served")

    # -- directories ------------------------------------------------------------------------------

    async def op_READDIR(self, st: CompoundState, a: ReaddirArgs) -> Arm:
        fh = self.cfh(st)
        maxcount = a.maxcount
        if st.limit:
            maxcount = min(maxcount, st.limit - st.size - 16)
        maxcount = min(maxcount, self.settings.io_size)
        if a.cookie in (1, 2):
            raise Nfs4Error(c.NFS4ERR_BAD_COOKIE, "cookies 1 and 2 are reserved")
        vfs = await self.vfs()
        request = a.attr_request
        if fh.node is not None:
            items, verifier, eof = await self._pseudo_entries(st, fh.node, a.cookie)
        else:
            d, caller = self.dir_of(st, fh)
            want = max(1, min(maxcount // 32, _MAX_ENTRIES))
            verifier = a.cookieverf if a.cookie else bytes(8)
            if a.cookie and verifier == bytes(8):
                verifier = (await vfs.readdir(caller, d.ino, 0, bytes(8), 0)).verifier
            try:
                page = await vfs.readdir(
                    caller, d.ino, a.cookie, verifier, want, with_attrs=bool(request)
                )
            except errors.BadCookie:
                raise Nfs4Error(c.NFS4ERR_NOT_SAME if a.cookie else c.NFS4ERR_BAD_COOKIE) from None
            verifier, eof = page.verifier, page.eof
            stat = None
            if fattr.wants_statfs(request):
                stat = await vfs.statfs(caller)
            items = []
            assert fh.export is not None
            for e in page.entries:
                if e.attrs is None:
                    src = None
                else:
                    src = fattr.Source(
                        e.attrs,
                        vfs.handle(fh.export, e.attrs),
                        (fh.export.id, 0),
                        e.attrs.ino,
                        stat,
                    )
                items.append((e.cookie, e.name, src))
        entries: list[Entry] = []
        used = _READDIR_BASE
        dirused = 0
        full = False
        wants_error = c.FATTR4_RDATTR_ERROR in fattr.bits(request)
        for cookie, name, src in items:
            if src is None:
                if request and not wants_error:
                    raise Nfs4Error(c.NFS4ERR_ACCESS, "attributes of an entry not readable")
                attrs = self._rdattr_error(request, c.NFS4ERR_ACCESS)
            else:
                attrs = fattr.encode(request, src, self.info)
            size = 4 + 8 + 4 + _pad(len(name)) + 4 + 4 * len(attrs.mask) + 4 + _pad(len(attrs.vals))
            dsize = 8 + 4 + _pad(len(name))
            if used + size > maxcount or (
                entries and dirused + dsize > max(a.dircount, 1) and a.dircount
            ):
                full = True
                break
            used += size
            dirused += dsize
            entries.append(Entry(cookie, name, attrs))
        if not entries and items:
            raise Nfs4Error(c.NFS4ERR_TOOSMALL, "not even one entry fits")
        return ok(ReaddirResok(verifier, entries, eof and not full))

    def _rdattr_error(self, request: list[int], status: int) -> Any:
        from claudefs_gateway.nfs.v4.codec import Fattr
        from claudefs_gateway.rpc.xdr import Packer

        p = Packer()
        p.u32(status)
        return Fattr(fattr.bitmap([c.FATTR4_RDATTR_ERROR]), p.bytes())

    async def _pseudo_entries(
        self, st: CompoundState, node: PseudoNode, cookie: int
    ) -> tuple[list[tuple[int, bytes, fattr.Source | None]], bytes, bool]:
        vfs = await self.vfs()
        p = self.pseudo(vfs)
        listing = p.listing(node, st.call.peer.host)
        start = 0 if cookie == 0 else cookie - 2
        out: list[tuple[int, bytes, fattr.Source | None]] = []
        for i, (name, item) in enumerate(listing[start:], start=start):
            if isinstance(item, PseudoNode):
                pa = p.attrs(item)
                src = fattr.Source(pa, item.handle, PSEUDO_FSID, pa.ino)
            else:
                root = await self.export_root(vfs, item)
                assert root.attrs is not None
                src = fattr.Source(
                    root.attrs, root.handle, (item.id, 0), p.mounted_on(item) or root.ino
                )
            out.append((i + 3, name, src))
        return out, _PSEUDO_VERF, True

    # -- security -----------------------------------------------------------------------------------

    async def op_SECINFO(self, st: CompoundState, a: NameArgs) -> Arm:
        fh = self.cfh(st)
        vfs = await self.vfs()
        check_name(a.name)
        if fh.node is not None:
            if self.pseudo(vfs).lookup(fh.node, a.name, st.call.peer.host) is None:
                raise Nfs4Error(c.NFS4ERR_NOENT)
        else:
            d, caller = self.dir_of(st, fh)
            await vfs.lookup(caller, d.ino, a.name)
        # RFC 8881 §2.6.3.1.1.8: SECINFO consumes the current file handle.
        st.cfh = None
        return ok(list(_SECINFO))

    async def op_SECINFO_NO_NAME(self, st: CompoundState, a: SecinfoNoNameArgs) -> Arm:
        fh = self.cfh(st)
        if a.style == c.SECINFO_STYLE4_PARENT:
            vfs = await self.vfs()
            p = self.pseudo(vfs)
            at_root = (fh.node is not None and fh.node.parent is None) or (
                fh.export is not None
                and fh.ino == fh.export.root_ino
                and p.parent_of(fh.export) is None
            )
            if at_root:
                raise Nfs4Error(c.NFS4ERR_NOENT, "the root has no parent")
        st.cfh = None
        return ok(list(_SECINFO))

    # -- extended attributes (RFC 8276) ----------------------------------------------------------------

    async def op_GETXATTR(self, st: CompoundState, a: GetxattrArgs) -> Arm:
        fh = self.cfh(st)
        obj, caller = self.real(st, fh)
        vfs = await self.vfs()
        value = await vfs.getxattr(caller, obj.ino, _xattr_name(a.name))
        if st.limit and st.size + len(value) + 64 > st.limit:
            raise Nfs4Error(c.NFS4ERR_XATTR2BIG, "value larger than the reply may be")
        return ok(value)

    async def op_SETXATTR(self, st: CompoundState, a: SetxattrArgs) -> Arm:
        fh = self.cfh(st)
        obj, caller = self.real(st, fh, write=True)
        name = _xattr_name(a.key)
        if len(a.value) > XATTR_SIZE_MAX:
            raise Nfs4Error(c.NFS4ERR_XATTR2BIG)
        create = {c.SETXATTR4_EITHER: None, c.SETXATTR4_CREATE: True}.get(a.option, False)
        vfs = await self.vfs()
        before = await vfs.getattr(caller, obj.ino)
        await vfs.setxattr(caller, obj.ino, name, bytes(a.value), create)
        after = await vfs.getattr(caller, obj.ino)
        fh.attrs = after
        return ok(self.cinfo(before, after))

    async def op_REMOVEXATTR(self, st: CompoundState, a: GetxattrArgs) -> Arm:
        fh = self.cfh(st)
        obj, caller = self.real(st, fh, write=True)
        vfs = await self.vfs()
        before = await vfs.getattr(caller, obj.ino)
        await vfs.removexattr(caller, obj.ino, _xattr_name(a.name))
        after = await vfs.getattr(caller, obj.ino)
        fh.attrs = after
        return ok(self.cinfo(before, after))

    async def op_LISTXATTRS(self, st: CompoundState, a: ListxattrsArgs) -> Arm:
        fh = self.cfh(st)
        obj, caller = self.real(st, fh)
        vfs = await self.vfs()
        names = sorted(
            n[len(XATTR_PREFIX) :]
            for n in await vfs.listxattr(caller, obj.ino)
            if n.startswith(XATTR_PREFIX) and len(n) > len(XATTR_PREFIX)
        )
        if a.cookie > len(names):
            raise Nfs4Error(c.NFS4ERR_BAD_COOKIE)
        used = 8 + 4 + 4
        out: list[bytes] = []
        i = a.cookie
        while i < len(names):
            size = 4 + _pad(len(names[i]))
            if used + size > a.maxcount:
                break
            used += size
            out.append(names[i])
            i += 1
        if not out and i < len(names):
            raise Nfs4Error(c.NFS4ERR_TOOSMALL, "not even one name fits")
        return ok(ListxattrsResok(i, out, i >= len(names)))
