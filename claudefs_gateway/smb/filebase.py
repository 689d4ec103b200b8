# -*- test-case-name: tests.smb.test_files -*-
"""
What every family of SMB2 file commands shares: finding an open by its
FileId, names (case-insensitive lookup, share-relative paths), DOS
attributes, maximal access, extended attributes and security descriptors.

L{claudefs_gateway.smb.files.FileService} puts the command families
together (create.py, rw.py, listing.py, fileinfo.py, ioctl.py); each is a
subclass of L{FileBase} so they share one state: the server's L{FileNode}
table, the case index, server-side copy resume keys.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from typing import Any

import attrs
from twisted.internet import defer

from claudefs_gateway import errors
from claudefs_gateway.core.log import Logger
from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.fstypes import (
    XATTR_SIZE_MAX,
    Attributes,
    Credentials,
    FileType,
    SetAttrs,
)
from claudefs_gateway.interfaces import IVFS, ILockTable
from claudefs_gateway.smb import constants as c
from claudefs_gateway.smb import ntstatus as st
from claudefs_gateway.smb.errors import SMBError
from claudefs_gateway.smb.header import Reader
from claudefs_gateway.smb.info import Stat, dos_attributes
from claudefs_gateway.smb.messages import FileId
from claudefs_gateway.smb.names import CaseIndex
from claudefs_gateway.smb.security import (
    ANONYMOUS,
    AUTHENTICATED_USERS,
    EVERYONE,
    SID,
    ParsedDescriptor,
    dacl_access,
    mode_descriptor,
    mode_from_dacl,
    pack_descriptor,
    parse_security_descriptor,
)
from claudefs_gateway.smb.state import FileNode, Open, Request
from claudefs_gateway.vfs import Caller, LockOwner, R, W, X, inline
from claudefs_gateway.vfs.leases import Why
from claudefs_gateway.vfs.origin import Origin

__all__ = ["FileBase", "split_name", "DOS_KEY", "EA_PREFIX"]


DOS_KEY = b"smb.dosattrib"
#: An NT security descriptor a client set, kept beside the inode (as Samba's
#: acl_xattr keeps it): version 1, the uid, gid and mode it mapped to, then
#: the self-relative descriptor.
NTACL_KEY = b"smb.ntacl"
_NTACL_HEAD = struct.Struct("<BQQI")
_ALL_PARTS = (
    c.OWNER_SECURITY_INFORMATION | c.GROUP_SECURITY_INFORMATION | c.DACL_SECURITY_INFORMATION
)
#: How many set ChangeTimes are remembered (the oldest go first).
MAX_CHANGE_TIMES = 4096
#: Named streams one file may have.
MAX_STREAMS = 256
EA_PREFIX = b"user."
ALL_ONES = 0xFFFFFFFFFFFFFFFF
_BAD_CHARS = frozenset('"*/:<>?|') | frozenset(chr(i) for i in range(32))
_DATA_STREAM = "::$data"


def split_name(name: str) -> list[bytes]:
    """
    A CREATE or rename name as path components (UTF-8). Backslash separates
    components; a trailing one is allowed; the default data stream suffix
    C{::$DATA} is dropped.

    @raise SMBError: a leading backslash (STATUS_INVALID_PARAMETER, MS-SMB2
        3.3.5.9), an empty, "." or ".." component, a wildcard, a stream or a
        control character (STATUS_OBJECT_NAME_INVALID).
    """
    if name.lower().endswith(_DATA_STREAM):
        name = name[: -len(_DATA_STREAM)]
    if name.startswith("\\"):
        raise SMBError(st.STATUS_INVALID_PARAMETER, "name begins with a backslash")
    if name.endswith("\\"):
        name = name[:-1]
    if not name:
        return []
    out = []
    for part in name.split("\\"):
        if part in (".", ".."):
            raise SMBError(st.STATUS_OBJECT_PATH_SYNTAX_BAD, "dot component")
        if not part or not _BAD_CHARS.isdisjoint(part):
            raise SMBError(st.STATUS_OBJECT_NAME_INVALID, "bad name component")
        raw = part.encode("utf-8", "surrogatepass")
        if len(raw) > 255:
            raise SMBError(st.STATUS_OBJECT_NAME_INVALID, "name component too long")
        out.append(raw)
    return out


#: Named streams (MS-FSCC 2.1.5.1), kept as Samba's streams_xattr keeps them
#: but hidden from other protocols: the names (as created) in one record, each
#: stream's data in its own, keyed by a hash of the name in lower case.
STREAMS_KEY = b"smb.streams"
_STREAM_BAD = frozenset("\\/:") | frozenset(chr(i) for i in range(32))


def stream_key(name: str) -> bytes:
    digest = hashlib.sha256(name.lower().encode("utf-8", "surrogatepass")).hexdigest()
    return b"smb.stream." + digest[:40].encode()


def stream_id(ino: int, name: str) -> int:
    """A named stream's key for share modes, leases and locks: negative, never an inode."""
    h = hashlib.sha256(b"%d:" % ino + name.lower().encode("utf-8", "surrogatepass"))
    return -1 - (int.from_bytes(h.digest()[:8], "little") >> 2)


def split_stream(name: str) -> tuple[str, str | None]:
    """
    A CREATE name's path and named stream (C{file:stream}, C{file:stream:$DATA});
    the default stream (C{file::$DATA}) is no stream.

    @raise SMBError: a colon before the last component, a stream type other
        than $DATA, or a bad stream name (STATUS_OBJECT_NAME_INVALID).
    """
    head, sep, last = name.rpartition("\\")
    if ":" not in last:
        return name, None
    if ":" in head:
        raise SMBError(st.STATUS_OBJECT_NAME_INVALID, "a stream in a directory component")
    base, _, rest = last.partition(":")
    stream, colon, kind = rest.partition(":")
    if colon and kind.upper() != "$DATA":
        raise SMBError(st.STATUS_OBJECT_NAME_INVALID, "stream type other than $DATA")
    if not stream:
        if not colon:
            raise SMBError(st.STATUS_OBJECT_NAME_INVALID, "empty stream name")
        return head + sep + base, None
    if (
        any(ch in _STREAM_BAD for ch in stream)
        or len(stream.encode("utf-8", "surrogatepass")) > 255
    ):
        raise SMBError(st.STATUS_OBJECT_NAME_INVALID, "bad stream name")
    return head + sep + base, stream


def decode_name(name: bytes) -> str | None:
    """A stored name as SMB can show it, or None if it is not UTF-8."""
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return None


def generic_rights(mask: int) -> int:
    """Map GENERIC_* bits to file rights (MS-SMB2 3.3.5.9, MS-DTYP 2.4.3)."""
    out = mask & ~(c.GENERIC_ALL | c.GENERIC_READ | c.GENERIC_WRITE | c.GENERIC_EXECUTE)
    if mask & c.GENERIC_READ:
        out |= c.FILE_GENERIC_READ
    if mask & c.GENERIC_WRITE:
        out |= c.FILE_GENERIC_WRITE
    if mask & c.GENERIC_EXECUTE:
        out |= c.FILE_GENERIC_EXECUTE
    if mask & c.GENERIC_ALL:
        out |= c.FILE_ALL_ACCESS
    return out


def share_modes(access: int, share: int) -> tuple[frozenset[str], frozenset[str]]:
    """What an open does and what it denies others, in the lock manager's terms."""
    acc = set()
    if access & (c.FILE_READ_DATA | c.FILE_EXECUTE):
        acc.add("read")
    if access & (c.FILE_WRITE_DATA | c.FILE_APPEND_DATA):
        acc.add("write")
    if access & c.DELETE:
        acc.add("delete")
    deny = set()
    if not share & c.FILE_SHARE_READ:
        deny.add("read")
    if not share & c.FILE_SHARE_WRITE:
        deny.add("write")
    if not share & c.FILE_SHARE_DELETE:
        deny.add("delete")
    return frozenset(acc), frozenset(deny)


def ea_entries(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """FILE_FULL_EA_INFORMATION entries (MS-FSCC 2.4.15): (flags, name, value)."""
    r = Reader(data)
    out = []
    pos = 0
    while pos < len(data):
        nxt, flags, nlen, vlen = r.u32(pos), r.u8(pos + 4), r.u8(pos + 5), r.u16(pos + 6)
        name = r.raw(pos + 8, nlen)
        if r.u8(pos + 8 + nlen) != 0:
            raise ProtocolError("EA name not NUL-terminated")
        value = r.raw(pos + 9 + nlen, vlen)
        out.append((flags, name, value))
        if len(out) > 256:
            raise ProtocolError("too many EAs")
        if nxt == 0:
            break
        if nxt < 8 + nlen + 1 + vlen or nxt % 4:
            raise ProtocolError("bad EA NextEntryOffset")
        pos += nxt
    return out


def pack_eas(eas: list[tuple[bytes, bytes]]) -> bytes:
    out = bytearray()
    for i, (name, value) in enumerate(eas):
        entry = struct.pack("<IBBH", 0, 0, len(name), len(value)) + name + b"\x00" + value
        if i + 1 < len(eas):
            entry += b"\x00" * ((-len(entry)) % 4)
            entry = struct.pack("<I", len(entry)) + entry[4:]
        out += entry
    return bytes(out)


def get_ea_names(data: bytes) -> list[bytes]:
    """FILE_GET_EA_INFORMATION entries (MS-FSCC 2.4.15.1)."""
    r = Reader(data)
    out = []
    pos = 0
    while pos < len(data):
        nxt, nlen = r.u32(pos), r.u8(pos + 4)
        out.append(r.raw(pos + 5, nlen))
        if len(out) > 256:
            raise ProtocolError("too many EA names")
        if nxt == 0:
            break
        if nxt < 5 + nlen:
            raise ProtocolError("bad EA NextEntryOffset")
        pos += nxt
    return out


#: The requests a stale ChannelSequence refuses (MS-SMB2 3.3.5.2.10).
_MODIFYING = frozenset({c.Command.WRITE, c.Command.SET_INFO, c.Command.IOCTL})


class FileBase:
    """The state and helpers every file command family uses."""

    _log = Logger()

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.nodes: dict[int, FileNode] = {}
        self._parents: OrderedDict[int, int] = OrderedDict()
        self._case: CaseIndex | None = None
        # Server-side copy: resume key → the open it names.
        self.resume_keys: dict[bytes, Open] = {}
        # Deletions at close in progress, by parent directory.
        self.deleting: dict[int, list[defer.Deferred[None]]] = {}
        # ChangeTimes set through SET_INFO: inode -> (FILETIME, the inode's
        # change counter right after). Shown until the inode changes again.
        self.change_times: OrderedDict[int, tuple[int, int]] = OrderedDict()
        # The background flush of metadata changes made without a sync
        # (L{meta_changed}), while one is due.
        self._meta_flush: Any = None

    @property
    def vfs(self) -> IVFS:
        vfs: IVFS | None = self.factory.vfs
        if vfs is None:
            return self.factory.open_vfs  # type: ignore[no-any-return]  # raises
        return vfs

    @property
    def locks(self) -> ILockTable:
        return self.vfs.locks

    # -- metadata durability --------------------------------------------------------------
    #
    # SMB promises durability only on FLUSH and write-through (MS-SMB2
    # 3.3.5.11, FILE_WRITE_THROUGH; Samba syncs nothing at CREATE, close or
    # delete): metadata changes (create, overwrite, DOS attributes and
    # times, delete on close, rename) go to the store with durable=False,
    # its ordered log (a kill -9 loses none of them; the next durable
    # commit of anyone makes them durable), and a bounded background flush
    # syncs them at most smb.metadata_flush_interval_ms after they were
    # answered. Interval 0: every change durable before its reply.

    @property
    def meta_durable(self) -> bool:
        """What the metadata changes of SMB pass as C{durable} (see above)."""
        return not self.factory.smb.metadata_flush_interval_ms

    def meta_changed(self) -> None:
        """A metadata change was answered without a sync: flush within the interval."""
        interval = self.factory.smb.metadata_flush_interval_ms
        if interval and self._meta_flush is None:
            self._meta_flush = self.factory.reactor.callLater(interval / 1000, self._flush_meta)

    def _flush_meta(self) -> None:
        self._meta_flush = None
        vfs = self.factory.vfs
        if vfs is None:
            return
        d = vfs.sync()
        d.addErrback(lambda f: self._log.failure("smb: background metadata flush failed", f))

    async def meta_sync(self) -> None:
        """
        Make every metadata change so far durable now (FLUSH, write-through).
        A background flush still due stays due: it costs nothing if this one
        covered everything.
        """
        if not self.meta_durable:
            await self.vfs.sync()

    def stop_flushing(self) -> defer.Deferred[None]:
        """
        The server stops: the background flush due runs now. Fires once the
        metadata changes so far are durable.
        """
        call, self._meta_flush = self._meta_flush, None
        if call is None or not call.active():
            return defer.succeed(None)
        call.cancel()
        vfs = self.factory.vfs
        if vfs is None:
            return defer.succeed(None)
        d: defer.Deferred[None] = vfs.sync()
        d.addErrback(lambda f: self._log.failure("smb: final metadata flush failed", f))
        return d

    # -- helpers ---------------------------------------------------------------------------

    def lookup_open(self, conn: Any, req: Request, fid: FileId) -> Open:
        """
        The open a FileId names (a related request's all-ones FileId names the
        previous request's).

        @raise SMBError: STATUS_FILE_CLOSED for an unknown FileId or one of
            another session or tree.
        """
        if fid == (ALL_ONES, ALL_ONES) and req.related_file_id is not None:
            fid = req.related_file_id
        op = conn.opens.get(fid[1])
        if op is None and req.session is not None and len(req.session.channels) > 1:
            # Multichannel: an open made over another channel of the session.
            for other in req.session.channels.values():
                op = other.opens.get(fid[1])
                if op is not None:
                    break
        if op is None or op.file_id != fid or op.closed or op.session is not req.session:
            if req.related and req.chain.create_error:
                # A related request after a failed CREATE fails as the CREATE did.
                raise SMBError(req.chain.create_error, "the CREATE before it failed")
            raise SMBError(st.STATUS_FILE_CLOSED, "no such open")
        if req.tree is not None and op.tree is not req.tree:
            raise SMBError(st.STATUS_FILE_CLOSED, "open of another tree")
        if req.channel_open is None and conn.dialect >= c.SMB_3_0:
            self._channel_sequence(req, op)
        req.result_file_id = fid
        return op

    @staticmethod
    def _channel_sequence(req: Request, op: Open) -> None:
        """
        Verify the request's ChannelSequence (MS-SMB2 3.3.5.2.10; SMB 3.x: the
        first two bytes of the request header's Status field) against the
        open's. Equal: the request is counted outstanding. Newer (a 16-bit
        difference of at most 0x7FFF): the client failed over to another
        channel; the requests still outstanding become "pre" ones and the
        open takes the new number. A replay (SMB2_FLAGS_REPLAY_OPERATION) does
        either only while no request of an older number is outstanding.
        Otherwise (stale, or a replay racing older requests) WRITE, SET_INFO
        and IOCTL fail with STATUS_FILE_NOT_AVAILABLE, so a request the
        client retried elsewhere cannot land after its replay; others go on
        uncounted (as Samba does; the spec leaves them open).

        @raise SMBError: STATUS_FILE_NOT_AVAILABLE, as above.
        """
        header = req.header
        seq = header.status & 0xFFFF
        diff = (seq - op.channel_sequence) & 0xFFFF
        racing = bool(header.flags & c.SMB2_FLAGS_REPLAY_OPERATION) and op.pre_outstanding > 0
        if diff == 0 and not racing:
            op.outstanding += 1
        elif 0 < diff <= 0x7FFF and not racing:
            op.pre_outstanding += op.outstanding
            op.outstanding = 1
            op.channel_sequence = seq
            op.channel_generation += 1
        elif header.command in _MODIFYING:
            raise SMBError(st.STATUS_FILE_NOT_AVAILABLE, "stale ChannelSequence")
        else:
            return
        req.channel_open = op
        req.channel_generation = op.channel_generation

    @staticmethod
    def request_done(req: Request) -> None:
        """The request is answered: it no longer counts as outstanding on its open."""
        op = req.channel_open
        if op is None:
            return
        req.channel_open = None
        if req.channel_generation == op.channel_generation:
            op.outstanding = max(0, op.outstanding - 1)
        else:
            op.pre_outstanding = max(0, op.pre_outstanding - 1)

    async def stored(self, caller: Caller, ino: int) -> tuple[int | None, int]:
        """
        What SMB keeps beside an inode (key C{smb.dosattrib}): the DOS
        attribute bits a client set (None: never set) and the allocation
        size it reserved (0: none). Stored as 4 bytes, or 12 with a
        reservation, so records written before reservations were kept still
        read.
        """
        raw = await inline(self.vfs.meta_get, caller, ino, DOS_KEY, survey=True)
        if raw is None or len(raw) not in (4, 12):
            return None, 0
        dos = int.from_bytes(raw[:4], "little")
        reserved = int.from_bytes(raw[4:], "little") if len(raw) == 12 else 0
        return dos, reserved

    async def stored_dos(self, caller: Caller, ino: int) -> int | None:
        return (await self.stored(caller, ino))[0]

    # -- named streams -------------------------------------------------------------------

    async def stream_names(self, caller: Caller, ino: int) -> list[str]:
        """The file's named streams, as created."""
        raw = await self.vfs.meta_get(caller, ino, STREAMS_KEY)
        if not raw:
            return []
        return [n for n in raw.decode("utf-8", "surrogatepass").split("\x00") if n]

    async def find_stream(self, caller: Caller, ino: int, name: str) -> str | None:
        """The stream's name as created, matched case-insensitively; None if it has none."""
        low = name.lower()
        for n in await self.stream_names(caller, ino):
            if n.lower() == low:
                return n
        return None

    async def read_stream(self, caller: Caller, ino: int, name: str) -> bytes:
        return await self.vfs.meta_get(caller, ino, stream_key(name)) or b""

    async def write_stream(
        self, caller: Caller, ino: int, name: str, data: bytes, origin: Origin | None = None
    ) -> None:
        """
        Set a stream's data, making the stream if it is new.

        @raise SMBError: STATUS_DISK_FULL past what a stream holds (64 KiB,
            the size of one extended attribute, as with Samba's streams_xattr).
        """
        if len(data) > XATTR_SIZE_MAX:
            raise SMBError(st.STATUS_DISK_FULL, "a named stream holds 64 KiB")
        names = await self.stream_names(caller, ino)
        if not any(n.lower() == name.lower() for n in names):
            if len(names) >= MAX_STREAMS:
                raise SMBError(st.STATUS_INSUFFICIENT_RESOURCES, "too many streams")
            index = "\x00".join([*names, name]).encode("utf-8", "surrogatepass")
            if len(index) > XATTR_SIZE_MAX:
                raise SMBError(st.STATUS_INSUFFICIENT_RESOURCES, "too many streams")
            await self.vfs.meta_set(caller, ino, STREAMS_KEY, index, origin)
        await self.vfs.meta_set(caller, ino, stream_key(name), data, origin)

    async def remove_stream(
        self, caller: Caller, ino: int, name: str, origin: Origin | None = None
    ) -> None:
        names = [n for n in await self.stream_names(caller, ino) if n.lower() != name.lower()]
        await self.vfs.meta_set(caller, ino, stream_key(name), None, origin)
        index = "\x00".join(names).encode("utf-8", "surrogatepass")
        await self.vfs.meta_set(caller, ino, STREAMS_KEY, index or None, origin)

    def stream_origin(self, base_ino: int, owner: LockOwner | None = None) -> Origin:
        """
        What a stream's change runs as: it breaks no lease on the file (other
        protocols do not see streams; the stream's own leases are broken by
        L{write_stream_at} and at CREATE).
        """
        keys = tuple(m.key for m in self.vfs.leases.leases(base_ino))
        return Origin(owner=owner, strict=True, exempt=keys)

    async def write_stream_at(self, op: Open, offset: int, data: bytes) -> None:
        """A WRITE to a stream open: others' caching of the stream breaks, then read, change, write."""
        assert op.stream is not None
        leases = self.vfs.leases
        if leases.busy(op.ino):
            await leases.recall(op.ino, Why.WRITE, op.exempt)
        caller = op.tree.caller
        whole = bytearray(await self.read_stream(caller, op.file_ino, op.stream))
        if offset + len(data) > XATTR_SIZE_MAX:
            raise SMBError(st.STATUS_DISK_FULL, "a named stream holds 64 KiB")
        if offset > len(whole):
            whole.extend(bytes(offset - len(whole)))
        whole[offset : offset + len(data)] = data
        await self.write_stream(
            caller, op.file_ino, op.stream, bytes(whole), self.stream_origin(op.file_ino)
        )
        op.written = True

    async def set_stream_size(self, op: Open, size: int) -> None:
        """SET_INFO FileEndOfFileInformation on a stream open."""
        assert op.stream is not None
        if size > XATTR_SIZE_MAX:
            raise SMBError(st.STATUS_DISK_FULL, "a named stream holds 64 KiB")
        leases = self.vfs.leases
        if leases.busy(op.ino):
            await leases.recall(op.ino, Why.WRITE, op.exempt)
        caller = op.tree.caller
        whole = await self.read_stream(caller, op.file_ino, op.stream)
        whole = whole[:size] + bytes(max(0, size - len(whole)))
        await self.write_stream(
            caller, op.file_ino, op.stream, whole, self.stream_origin(op.file_ino)
        )

    async def stream_stat(self, caller: Caller, op: Open) -> Stat:
        """The file's Stat with a stream open's size."""
        assert op.stream is not None and op.node is not None
        a = await self.vfs.getattr(caller, op.file_ino)
        size = len(await self.read_stream(caller, op.file_ino, op.stream))
        return await self.stat(
            caller, attrs.evolve(a, type=FileType.REG, size=size, used=size), op.node.name
        )

    async def stat(self, caller: Caller, a: Attributes, name: bytes = b"") -> Stat:
        dos, reserved = await self.stored(caller, a.ino)
        return Stat(
            a, dos_attributes(a, dos, name), reserved=reserved, change_time=self.change_time(a)
        )

    def change_time(self, a: Attributes) -> int | None:
        """A ChangeTime a client set, while the inode has not changed since."""
        kept = self.change_times.get(a.ino)
        if kept is None:
            return None
        if kept[1] != a.change:
            del self.change_times[a.ino]
            return None
        return kept[0]

    async def changed_through(self, op: Open) -> None:
        """
        A change made through C{op}: a ChangeTime set through it stands
        (MS-FSA 2.1.5.14.2, Open.UserSetChangeTime).
        """
        if op.user_change_time is not None and op.node is not None:
            self.keep_change_time(
                await self.vfs.getattr(op.tree.caller, op.file_ino), op.user_change_time
            )

    def keep_change_time(self, a: Attributes, filetime: int) -> None:
        """
        Show C{filetime} as the ChangeTime of C{a} (its attributes right after
        the SET_INFO) until the inode changes again. POSIX stores cannot set a
        ctime, so it lives here (lost at restart, when the real one shows):
        Windows keeps what FileBasicInformation sets (MS-FSA 2.1.5.14.2;
        smbtorture smb2.create.open, smb2.timestamps).
        """
        self.change_times[a.ino] = (filetime, a.change)
        self.change_times.move_to_end(a.ino)
        while len(self.change_times) > MAX_CHANGE_TIMES:
            self.change_times.popitem(last=False)

    async def _set_dos(
        self,
        caller: Caller,
        ino: int,
        bits: int | None,
        origin: Origin | None = None,
        reserved: int | None = None,
    ) -> None:
        """
        Keep DOS attribute bits (None: leave them) and an allocation
        reservation (None: leave it; 0: drop it).
        """
        if bits is None or reserved is None:
            old_bits, old_reserved = await self.stored(caller, ino)
            if bits is None:
                # Never set: what a new file shows (ARCHIVE), kept as such.
                bits = old_bits if old_bits is not None else c.FILE_ATTRIBUTE_ARCHIVE
            if reserved is None:
                reserved = old_reserved
        raw = struct.pack("<I", bits & c.STORED_ATTRIBUTES)
        if reserved:
            raw += struct.pack("<Q", reserved)
        durable = self.meta_durable
        await self.vfs.meta_set(caller, ino, DOS_KEY, raw, origin, durable)
        if not durable:
            self.meta_changed()

    async def maximal_access(self, caller: Caller, a: Attributes, parent: int | None) -> int:
        """What C{caller} may do to C{a} (and, with its C{parent}, whether it may delete it)."""
        vfs = self.vfs
        bits = await inline(vfs.access, caller, a.ino, R | W | X)
        mask = c.FILE_READ_ATTRIBUTES | c.SYNCHRONIZE | c.READ_CONTROL
        if bits & R:
            mask |= c.FILE_READ_DATA | c.FILE_READ_EA
        if bits & W:
            mask |= c.FILE_WRITE_DATA | c.FILE_APPEND_DATA | c.FILE_WRITE_EA
            mask |= c.FILE_WRITE_ATTRIBUTES | c.FILE_DELETE_CHILD
        # A remote client "executes" a file by reading it, and the vfs lets
        # whoever may execute a file read it: the two go together here.
        if bits & X or (bits & R and not a.is_dir):
            mask |= c.FILE_EXECUTE
        cred = caller.cred
        if cred.is_root or cred.uid == a.uid:
            mask |= c.WRITE_DAC | c.WRITE_OWNER | c.FILE_WRITE_ATTRIBUTES | c.FILE_WRITE_EA
        if not cred.is_root:
            # A DACL a client set narrows what the mode grants (never widens it:
            # NFS and S3 check the mode alone).
            sd = await self.stored_descriptor(caller, a)
            if sd is not None:
                mask &= dacl_access(sd.dacl, self.token(caller), cred.uid == a.uid) | c.SYNCHRONIZE
        if parent is not None:
            pbits = await inline(vfs.access, caller, parent, W | X)
            if pbits == W | X:
                mask |= c.DELETE
        if caller.read_only:
            mask &= ~c.MODIFY_ACCESS
        return mask

    def _owner(self, conn: Any, fid: FileId) -> LockOwner:
        return LockOwner("smb", conn.conn_id, struct.pack("<QQ", *fid))

    @property
    def case(self) -> CaseIndex:
        if self._case is None:
            self._case = CaseIndex(self.vfs)
        return self._case

    async def lookup_name(
        self, caller: Caller, dir_ino: int, name: bytes, fresh: bool = False
    ) -> tuple[Attributes, bytes]:
        """
        An entry of C{dir_ino} matched case-insensitively (see
        L{claudefs_gateway.smb.names}), and its stored name. C{fresh}: past the
        vfs caches when other gateways share the store (an open sees their
        latest change, as it would on one server).

        @raise NotFound: no entry matches.
        """
        vfs = self.vfs
        try:
            return await inline(vfs.lookup, caller, dir_ino, name, fresh=fresh), name
        except errors.NotFound:
            real = await self.case.find(caller, dir_ino, name)
            if real is None or real == name:
                raise
            return await vfs.lookup(caller, dir_ino, real, fresh=fresh), real

    async def resolve_dir(
        self, caller: Caller, parts: list[bytes]
    ) -> tuple[Attributes, list[bytes]]:
        """
        The directory C{parts} names from the share's root, case-insensitively,
        and the components as stored.

        @raise SMBError: STATUS_OBJECT_PATH_NOT_FOUND if a component is missing
            or not a directory.
        """
        vfs = self.vfs
        try:
            a = await inline(vfs.resolve, caller, b"/".join(parts))
            found = parts
        except errors.NotFound:
            found = []
            a = None
            for part in parts:
                try:
                    a = await vfs.resolve(caller, b"/".join([*found, part]))
                    found.append(part)
                    continue
                except errors.NotFound:
                    pass
                except (errors.NotDir, errors.Loop):
                    break
                here = await vfs.resolve(caller, b"/".join(found))
                real = await self.case.find(caller, here.ino, part) if here.is_dir else None
                if real is None:
                    raise SMBError(st.STATUS_OBJECT_PATH_NOT_FOUND, "parent not found") from None
                a = await vfs.resolve(caller, b"/".join([*found, real]))
                found.append(real)
            if a is None or len(found) != len(parts):
                raise SMBError(st.STATUS_OBJECT_PATH_NOT_FOUND, "parent not found") from None
        except (errors.NotDir, errors.Loop):
            raise SMBError(st.STATUS_OBJECT_PATH_NOT_FOUND, "parent not found") from None
        if a is None or not a.is_dir:
            raise SMBError(st.STATUS_OBJECT_PATH_NOT_FOUND, "parent is not a directory")
        return a, found

    async def _lookup(
        self, caller: Caller, parent: int, leaf: bytes, dir_parts: list[bytes]
    ) -> tuple[Attributes | None, bytes]:
        """
        The entry C{leaf} of C{parent} (case-insensitively), symbolic links
        followed, and its stored name; None if absent.

        @raise SMBError: a dangling link (STATUS_OBJECT_NAME_NOT_FOUND).
        """
        vfs = self.vfs
        try:
            a, leaf = await self.lookup_name(caller, parent, leaf, fresh=True)
        except errors.NotFound:
            return None, leaf
        if a.is_link:
            try:
                a = await vfs.resolve(caller, b"/".join([*dir_parts, leaf]))
            except (errors.NotFound, errors.Loop):
                raise SMBError(st.STATUS_OBJECT_NAME_NOT_FOUND, "dangling link") from None
        return a, leaf

    async def _eas(self, caller: Caller, ino: int) -> list[tuple[bytes, bytes]]:
        vfs = self.vfs
        out = []
        try:
            names = await vfs.listxattr(caller, ino)
        except errors.Access:
            return []
        for n in sorted(names):
            if n.startswith(EA_PREFIX) and len(n) - len(EA_PREFIX) <= 255:
                try:
                    out.append((n[len(EA_PREFIX) :], await vfs.getxattr(caller, ino, n)))
                except errors.NoData:
                    continue
        return [(n, v) for n, v in out if len(v) <= 0xFFFF]

    async def _set_eas(
        self, caller: Caller, ino: int, data: bytes, origin: Origin | None = None
    ) -> None:
        vfs = self.vfs
        for _flags, name, value in ea_entries(data):
            if (
                not name
                or any(b < 0x20 or b > 0x7E for b in name)
                or any(chr(b) in _BAD_CHARS for b in name)
            ):
                raise SMBError(st.STATUS_INVALID_EA_NAME)
            key = EA_PREFIX + name
            if value:
                await vfs.setxattr(caller, ino, key, value, origin=origin)
            else:
                try:
                    await vfs.removexattr(caller, ino, key, origin=origin)
                except errors.NoData:
                    pass

    async def descriptor(self, caller: Caller, a: Attributes) -> ParsedDescriptor:
        """
        The security descriptor of C{a}: the one a client set, while the
        owner, group and mode are still what it mapped to (a chmod or chown
        through NFS or S3 since makes it stale, as Samba's acl_xattr finds by
        its hash), else the one the mode bits stand for.
        """
        stored = await self.stored_descriptor(caller, a)
        if stored is not None:
            return stored
        return mode_descriptor(self.factory.idmap, a.uid, a.gid, a.mode, a.is_dir)

    async def stored_descriptor(self, caller: Caller, a: Attributes) -> ParsedDescriptor | None:
        raw = await inline(self.vfs.meta_get, caller, a.ino, NTACL_KEY, survey=True)
        if raw is None or len(raw) < _NTACL_HEAD.size:
            return None
        version, uid, gid, mode = _NTACL_HEAD.unpack_from(raw)
        if version != 1 or (uid, gid, mode) != (a.uid, a.gid, a.mode & 0o7777):
            return None
        try:
            return parse_security_descriptor(raw[_NTACL_HEAD.size :])
        except ProtocolError:
            return None

    def token(self, caller: Caller) -> frozenset[SID]:
        """The SIDs a caller's DACL checks run with: its user, its groups, and the well-known ones."""
        idmap = self.factory.idmap
        cred = caller.cred
        rules = caller.export.rules
        sids = {idmap.uid_sid(cred.uid), EVERYONE}
        sids.update(idmap.gid_sid(g) for g in (cred.gid, *cred.groups))
        sids.add(ANONYMOUS if cred.uid == rules.anonuid else AUTHENTICATED_USERS)
        return frozenset(sids)

    async def _apply_security(
        self,
        caller: Caller,
        a: Attributes,
        sd: bytes,
        parts: int,
        origin: Origin | None = None,
        create: bool = False,
    ) -> Attributes:
        """
        Set the parts C{parts} names of a security descriptor: owner and group
        SIDs become a chown (a SID that maps to no uid or gid leaves it, the
        SID kept, as Samba with ``force unknown acl user``), the DACL the mode
        bits (L{mode_from_dacl}); the whole descriptor is kept beside the
        inode (L{NTACL_KEY}). DACL_SECURITY_INFORMATION without
        SE_DACL_PRESENT sets a NULL DACL, except at CREATE, where a missing
        DACL leaves the default (MS-DTYP 2.4.6; smbtorture smb2.create.nulldacl).
        """
        idmap = self.factory.idmap
        try:
            parsed = parse_security_descriptor(sd)
        except ProtocolError:
            raise SMBError(
                st.STATUS_INVALID_SECURITY_DESCR, "unreadable security descriptor"
            ) from None
        if create:
            parts &= ~(
                (0 if parsed.owner else c.OWNER_SECURITY_INFORMATION)
                | (0 if parsed.group else c.GROUP_SECURITY_INFORMATION)
                | (0 if parsed.dacl_present else c.DACL_SECURITY_INFORMATION)
            )
        parts &= _ALL_PARTS
        if not parts:
            return a
        current = await self.descriptor(caller, a)
        owner, group = current.owner, current.group
        uid = gid = None
        if parts & c.OWNER_SECURITY_INFORMATION and parsed.owner is not None:
            owner = parsed.owner
            m = idmap.to_unix(parsed.owner)
            if m is not None and m[0] == "uid" and m[1] != a.uid:
                uid = m[1]
        if parts & c.GROUP_SECURITY_INFORMATION and parsed.group is not None:
            group = parsed.group
            m = idmap.to_unix(parsed.group)
            if m is not None and m[0] == "gid" and m[1] != a.gid:
                gid = m[1]
        dacl, control = current.dacl, current.control
        mode = None
        if parts & c.DACL_SECURITY_INFORMATION:
            dacl = parsed.dacl if parsed.dacl_present else None
            control = parsed.control | 0x0004  # SE_DACL_PRESENT: absent means NULL here
            new = mode_from_dacl(
                dacl,
                idmap.uid_sid(uid if uid is not None else a.uid),
                idmap.gid_sid(gid if gid is not None else a.gid),
                a.mode,
            )
            mode = new if new != a.mode else None
        if uid is not None or gid is not None:
            a = await self.vfs.setattr(caller, a.ino, SetAttrs(uid=uid, gid=gid), origin=origin)
        # The mode and the kept descriptor are written as the owner: the open's
        # WRITE_DAC, granted at CREATE to the owner (or root), is the authority,
        # as on Windows, even after the session re-authenticated as someone
        # else (smbtorture smb2.session.reauth4).
        as_owner = attrs.evolve(caller, cred=Credentials(a.uid, a.gid))
        if mode is not None:
            a = await self.vfs.setattr(as_owner, a.ino, SetAttrs(mode=mode), origin=origin)
        kept = ParsedDescriptor(owner, group, dacl, True, control)
        raw = _NTACL_HEAD.pack(1, a.uid, a.gid, a.mode & 0o7777) + pack_descriptor(kept, _ALL_PARTS)
        await self.vfs.meta_set(as_owner, a.ino, NTACL_KEY, raw, origin)
        return a

    def _end_watch(self, conn: Any, op: Open) -> None:
        """End an open's CHANGE_NOTIFY watch (L{claudefs_gateway.smb.listing.DirectoryCommands})."""
        raise NotImplementedError

    def watch_deleted(self, op: Open) -> None:
        """The watched directory is going (L{claudefs_gateway.smb.listing.DirectoryCommands})."""
        raise NotImplementedError
