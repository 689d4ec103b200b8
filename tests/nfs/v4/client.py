"""
An in-tree NFSv4.1/4.2 client for the tests: builds COMPOUNDs from the
codec's argument classes, keeps a session's slot sequence ids, and decodes
results. It talks to an in-memory L{RPCServer} (unit tests) or a socket.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4 import fattr
from claudefs_gateway.nfs.v4.codec import (
    AuthSysParms,
    ChannelAttrs,
    CompoundResult,
    CreateSessionArgs,
    ExchangeIdArgs,
    Fattr,
    GetattrArgs,
    NameArgs,
    OpenArgs,
    PutfhArgs,
    ReclaimCompleteArgs,
    SequenceArgs,
    StateId,
    StateOwner,
    decode_compound_result,
    encode_compound,
)
from claudefs_gateway.rpc.xdr import Packer, Unpacker
from claudefs_gateway.rpc.xdrtypes import Arm

ANON = StateId(0, bytes(12))
_owners = itertools.count(1)

CHANNEL = ChannelAttrs(0, 1 << 20, 1 << 20, 8192, 16, 8, [])
BACK = ChannelAttrs(0, 4096, 4096, 0, 2, 1, [])


def attrs_of(f: Fattr) -> dict[int, Any]:
    """Decode the attributes tests look at (sizes, types, modes, owners, times)."""
    u = Unpacker(f.vals)
    out: dict[int, Any] = {}
    for n in fattr.bits(f.mask):
        if n in (c.FATTR4_SUPPORTED_ATTRS, c.FATTR4_SUPPATTR_EXCLCREAT):
            out[n] = u.array(64, Unpacker.u32)
        elif n in (
            c.FATTR4_TYPE,
            c.FATTR4_FH_EXPIRE_TYPE,
            c.FATTR4_LEASE_TIME,
            c.FATTR4_RDATTR_ERROR,
            c.FATTR4_ACLSUPPORT,
            c.FATTR4_MAXLINK,
            c.FATTR4_MAXNAME,
            c.FATTR4_MODE,
            c.FATTR4_NUMLINKS,
            c.FATTR4_FS_CHARSET_CAP,
            c.FATTR4_CLONE_BLKSIZE,
            c.FATTR4_CHANGE_ATTR_TYPE,
        ):
            out[n] = u.u32()
        elif n in (
            c.FATTR4_LINK_SUPPORT,
            c.FATTR4_SYMLINK_SUPPORT,
            c.FATTR4_NAMED_ATTR,
            c.FATTR4_UNIQUE_HANDLES,
            c.FATTR4_CANSETTIME,
            c.FATTR4_CASE_INSENSITIVE,
            c.FATTR4_CASE_PRESERVING,
            c.FATTR4_CHOWN_RESTRICTED,
            c.FATTR4_HOMOGENEOUS,
            c.FATTR4_NO_TRUNC,
            c.FATTR4_XATTR_SUPPORT,
        ):
            out[n] = u.bool()
        elif n in (c.FATTR4_FSID,):
            out[n] = (u.u64(), u.u64())
        elif n == c.FATTR4_RAWDEV:
            out[n] = (u.u32(), u.u32())
        elif n in (c.FATTR4_OWNER, c.FATTR4_OWNER_GROUP, c.FATTR4_FILEHANDLE):
            out[n] = u.opaque(1024)
        elif n in (
            c.FATTR4_TIME_ACCESS,
            c.FATTR4_TIME_CREATE,
            c.FATTR4_TIME_DELTA,
            c.FATTR4_TIME_METADATA,
            c.FATTR4_TIME_MODIFY,
        ):
            out[n] = (u.i64(), u.u32())
        else:
            out[n] = u.u64()
    u.done()
    return out


def fattr_of(values: dict[int, Any]) -> Fattr:
    """Encode settable attributes (size, mode, owners, set-times)."""
    p = Packer()
    for n in sorted(values):
        v = values[n]
        if n == c.FATTR4_SIZE:
            p.u64(v)
        elif n == c.FATTR4_MODE:
            p.u32(v)
        elif n in (c.FATTR4_OWNER, c.FATTR4_OWNER_GROUP):
            p.opaque(v)
        elif n in (c.FATTR4_TIME_ACCESS_SET, c.FATTR4_TIME_MODIFY_SET):
            if v is None:
                p.u32(c.SET_TO_SERVER_TIME4)
            else:
                p.u32(c.SET_TO_CLIENT_TIME4)
                p.i64(v[0])
                p.u32(v[1])
        elif n == c.FATTR4_MODE_UMASK:
            p.u32(v[0])
            p.u32(v[1])
        elif n == c.FATTR4_MODE_SET_MASKED:
            p.u32(v[0])
            p.u32(v[1])
        elif n == c.FATTR4_TIME_CREATE:
            p.i64(v[0])
            p.u32(v[1])
        else:
            raise ValueError(n)
    return Fattr(fattr.bitmap(values), p.bytes())


class Result:
    """A COMPOUND4res with helpers."""

    def __init__(self, res: CompoundResult) -> None:
        self.status = res.status
        self.tag = res.tag
        self.results = res.results

    def __repr__(self) -> str:
        return f"Result({c.status_name(self.status)}, {[(c.OP_NAMES.get(o, o), r.tag) for o, r in self.results]})"

    def last(self, op: int | None = None) -> Any:
        for o, r in reversed(self.results):
            if op is None or o == op:
                return r.value
        raise KeyError(op)

    def status_of(self, op: int) -> int:
        for o, r in self.results:
            if o == op:
                return int(r.tag)
        raise KeyError(op)


def _then(got: Any, f: Callable[[Any], Any]) -> Any:
    """Apply C{f} now, or when a Deferred fires."""
    if isinstance(got, defer.Deferred):
        return got.addCallback(f)
    return f(got)


class V4Client:
    """
    @param send: (prog, vers, proc, args) to an Unpacker at the results, or
        a Deferred of one.
    """

    def __init__(self, send: Callable[[int, int, int, bytes], Any], minor: int = 2) -> None:
        self.send = send
        self.minor = minor
        self.clientid = 0
        self.seq = 0
        self.sessionid = b""
        self.slots: dict[int, int] = {}

    def raw(self, ops: list[tuple[int, Any]], minor: int | None = None, tag: bytes = b"t") -> Any:
        data = encode_compound(tag, self.minor if minor is None else minor, ops)
        got = self.send(c.NFS4_PROGRAM, 4, 1, data)
        if isinstance(got, defer.Deferred):
            return got.addCallback(lambda u: Result(decode_compound_result(u)))
        return Result(decode_compound_result(got))

    def compound(
        self,
        ops: list[tuple[int, Any]],
        slot: int = 0,
        cachethis: bool = False,
        retry: bool = False,
    ) -> Any:
        """SEQUENCE on C{slot} then C{ops}; the slot's seqid advances unless C{retry}."""
        seqid = self.slots.get(slot, 0) + (0 if retry else 1)
        self.slots[slot] = seqid
        seq = SequenceArgs(self.sessionid, seqid, slot, slot, cachethis)
        got = self.raw([(c.OP_SEQUENCE, seq), *ops])

        def unwind(res: Result) -> Result:
            # A SEQUENCE that failed did not take the seqid (RFC 8881 §18.46.3).
            if res.results and res.results[0][0] == c.OP_SEQUENCE and res.results[0][1].tag != 0:
                if not retry:
                    self.slots[slot] = seqid - 1
            return res

        if isinstance(got, defer.Deferred):
            return got.addCallback(unwind)
        return unwind(got)

    def exchange_id(self, owner: bytes = b"", verifier: bytes = b"verifier", flags: int = 0) -> Any:
        owner = owner or b"client-%d" % next(_owners)
        got = self.raw(
            [(c.OP_EXCHANGE_ID, ExchangeIdArgs(verifier, owner, flags, Arm(c.SP4_NONE), []))]
        )

        def keep(res: Result) -> Result:
            if res.status == c.NFS4_OK:
                r = res.last()
                self.clientid, self.seq = r.clientid, r.sequenceid
            return res

        return _then(got, keep)

    def create_session(
        self, flags: int = c.CREATE_SESSION4_FLAG_CONN_BACK_CHAN, fore: ChannelAttrs = CHANNEL
    ) -> Any:
        args = CreateSessionArgs(
            self.clientid,
            self.seq,
            flags,
            fore,
            BACK,
            0x40000000,
            [Arm(c.AUTH_SYS, AuthSysParms(0, b"test", 0, 0, [])), Arm(c.AUTH_NONE)],
        )
        got = self.raw([(c.OP_CREATE_SESSION, args)])

        def keep(res: Result) -> Result:
            if res.status == c.NFS4_OK:
                self.sessionid = res.last().sessionid
                self.seq += 1
                self.slots = {}
            return res

        return _then(got, keep)

    def setup(self, owner: bytes = b"", reclaim_complete: bool = True) -> V4Client:
        r = self.exchange_id(owner)
        assert r.status == c.NFS4_OK, r
        r = self.create_session()
        assert r.status == c.NFS4_OK, r
        if reclaim_complete:
            r = self.compound([(c.OP_RECLAIM_COMPLETE, ReclaimCompleteArgs(False))])
            assert r.status == c.NFS4_OK, r
        return self

    # -- op helpers ----------------------------------------------------------------------

    @staticmethod
    def path(*names: bytes) -> list[tuple[int, Any]]:
        return [(c.OP_PUTROOTFH, None)] + [(c.OP_LOOKUP, NameArgs(n)) for n in names]

    @staticmethod
    def putfh(fh: bytes) -> tuple[int, Any]:
        return (c.OP_PUTFH, PutfhArgs(fh))

    @staticmethod
    def getattr(*numbers: int) -> tuple[int, Any]:
        return (c.OP_GETATTR, GetattrArgs(fattr.bitmap(numbers)))

    def open_create(
        self,
        name: bytes,
        owner: bytes = b"owner",
        access: int = c.OPEN4_SHARE_ACCESS_BOTH,
        deny: int = c.OPEN4_SHARE_DENY_NONE,
        mode: int = c.UNCHECKED4,
        attrs: dict[int, Any] | None = None,
    ) -> tuple[int, Any]:
        how = Arm(
            c.OPEN4_CREATE,
            Arm(mode, fattr_of(attrs if attrs is not None else {c.FATTR4_MODE: 0o644})),
        )
        return (
            c.OP_OPEN,
            OpenArgs(
                0, access, deny, StateOwner(self.clientid, owner), how, Arm(c.CLAIM_NULL, name)
            ),
        )

    def open_existing(
        self,
        name: bytes,
        owner: bytes = b"owner",
        access: int = c.OPEN4_SHARE_ACCESS_READ,
        deny: int = c.OPEN4_SHARE_DENY_NONE,
    ) -> tuple[int, Any]:
        return (
            c.OP_OPEN,
            OpenArgs(
                0,
                access,
                deny,
                StateOwner(self.clientid, owner),
                Arm(c.OPEN4_NOCREATE),
                Arm(c.CLAIM_NULL, name),
            ),
        )
