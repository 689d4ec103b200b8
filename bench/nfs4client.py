"""
A small NFSv4.1 load generator for the bench (libnfs speaks only NFSv4.0).

It speaks the gateway's own codec (``claudefs_gateway.nfs.v4.codec``) over a
blocking socket - this is a benchmark process, not reactor code - with one
session whose slots let it keep several COMPOUNDs in flight: the same
pipelining a kernel client does with its slot table. Errors raise
L{NFS4Failed}.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from typing import Any

from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4 import fattr
from claudefs_gateway.nfs.v4.codec import (
    OPS,
    AuthSysParms,
    ChannelAttrs,
    ClientidArgs,
    CompoundResult,
    CreateSessionArgs,
    ExchangeIdArgs,
    Fattr,
    NameArgs,
    OpenArgs,
    PutfhArgs,
    ReclaimCompleteArgs,
    SequenceArgs,
    SessionArgs,
    StateOwner,
    decode_compound_result,
    encode_compound,
)
from claudefs_gateway.rpc import message as msg
from claudefs_gateway.rpc.message import AuthSys
from claudefs_gateway.rpc.record import RecordReader, record_marker
from claudefs_gateway.rpc.xdr import Packer, Unpacker
from claudefs_gateway.rpc.xdrtypes import Arm

__all__ = ["NFS4Failed", "Client"]

_CRED = AuthSys(0, b"bench", 0, 0, ())


class NFS4Failed(RuntimeError):
    def __init__(self, res: CompoundResult) -> None:
        ops = [(c.OP_NAMES.get(op, op), c.status_name(r.tag)) for op, r in res.results]
        super().__init__(f"{c.status_name(res.status)}: {ops}")
        self.status = res.status


def mode_attrs(mode: int) -> Fattr:
    p = Packer()
    p.u32(mode)
    return Fattr(fattr.bitmap([c.FATTR4_MODE]), p.bytes())


def compound_parts(minor: int, ops: Sequence[tuple[int, Any]]) -> list[bytes]:
    """COMPOUND4args as pieces: large opaque data stays where it is."""
    p = Packer()
    p.opaque(b"")
    p.u32(minor)
    p.u32(len(ops))
    for op, args in ops:
        p.u32(op)
        spec = OPS.get(op)
        if spec is not None:
            spec.args.enc(p, args)
    return p.chunks()


class Client:
    """One connection, one client record, one session with C{slots} slots."""

    def __init__(self, host: str, port: int, minor: int = 1, slots: int = 16) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = RecordReader(64 << 20)
        self.minor = minor
        self.xid = struct.unpack(">I", b"\x10\x00\x00\x00")[0]
        self.replies: dict[int, bytes] = {}
        self.sessionid = b""
        self.seqids = [0] * slots
        self.free = list(range(slots - 1, -1, -1))
        self.slot_of: dict[int, int] = {}
        owner = f"cfs-bench-{id(self)}-{socket.gethostname()}".encode()
        res = self._plain(
            [(c.OP_EXCHANGE_ID, ExchangeIdArgs(b"benchvrf", owner, 0, Arm(c.SP4_NONE), []))]
        )
        eid = res.results[0][1].value
        self.clientid = eid.clientid
        chan = ChannelAttrs(0, 2 << 20, 2 << 20, 8192, 16, slots, [])
        back = ChannelAttrs(0, 4096, 4096, 0, 2, 1, [])
        cs = CreateSessionArgs(
            eid.clientid,
            eid.sequenceid,
            0,
            chan,
            back,
            0x40000000,
            [Arm(c.AUTH_SYS, AuthSysParms(0, b"bench", 0, 0, []))],
        )
        res = self._plain([(c.OP_CREATE_SESSION, cs)])
        self.sessionid = res.results[0][1].value.sessionid
        granted = res.results[0][1].value.fore_chan_attrs.maxrequests
        self.free = [s for s in self.free if s < granted]
        self.compound([(c.OP_RECLAIM_COMPLETE, ReclaimCompleteArgs(False))])

    # -- the wire -----------------------------------------------------------------------

    def _send(self, args: bytes | list[bytes]) -> int:
        """Send one call; C{args} may be pieces (WRITE data goes out uncopied)."""
        self.xid = (self.xid + 1) & 0xFFFFFFFF
        head = msg.encode_call(self.xid, c.NFS4_PROGRAM, 4, 1, b"", _CRED)
        pieces = [args] if isinstance(args, bytes) else args
        size = len(head) + sum(len(p) for p in pieces)
        parts: list[Any] = [record_marker(size), head, *pieces]
        while parts:
            sent = self.sock.sendmsg(parts)
            while parts and sent >= len(parts[0]):
                sent -= len(parts[0])
                parts.pop(0)
            if parts and sent:
                parts[0] = memoryview(parts[0])[sent:]
        return self.xid

    def _wait(self, xid: int) -> CompoundResult:
        while xid not in self.replies:
            data = self.sock.recv(4 << 20)
            if not data:
                raise ConnectionError("server closed the connection")
            for rec in self.reader.feed(data):
                self.replies[int.from_bytes(rec[:4], "big")] = rec
        rec = self.replies.pop(xid)
        h = msg.parse_reply(rec)
        if not h.accepted or h.stat != msg.SUCCESS:
            raise RuntimeError(f"RPC error {h}")
        return decode_compound_result(Unpacker(rec, h.results_at))

    def _plain(self, ops: Sequence[tuple[int, Any]]) -> CompoundResult:
        res = self._wait(self._send(encode_compound(b"", self.minor, ops)))
        if res.status != c.NFS4_OK:
            raise NFS4Failed(res)
        return res

    # -- COMPOUNDs with SEQUENCE ------------------------------------------------------------

    def submit(self, ops: Sequence[tuple[int, Any]]) -> int:
        """Send a COMPOUND on a free slot; the xid to L{collect} it by."""
        slot = self.free.pop()
        self.seqids[slot] += 1
        seq = SequenceArgs(self.sessionid, self.seqids[slot], slot, len(self.seqids) - 1, False)
        xid = self._send(compound_parts(self.minor, [(c.OP_SEQUENCE, seq), *ops]))
        self.slot_of[xid] = slot
        return xid

    def collect(self, xid: int) -> CompoundResult:
        res = self._wait(xid)
        self.free.append(self.slot_of.pop(xid))
        if res.status != c.NFS4_OK:
            raise NFS4Failed(res)
        return res

    def compound(self, ops: Sequence[tuple[int, Any]]) -> CompoundResult:
        return self.collect(self.submit(ops))

    @property
    def depth(self) -> int:
        return len(self.free)

    # -- helpers ------------------------------------------------------------------------

    def lookup(self, path: str) -> bytes:
        ops: list[tuple[int, Any]] = [(c.OP_PUTROOTFH, None)]
        ops += [(c.OP_LOOKUP, NameArgs(p.encode())) for p in path.split("/") if p]
        res = self.compound([*ops, (c.OP_GETFH, None)])
        fh: bytes = res.results[-1][1].value
        return fh

    @staticmethod
    def open_create(name: bytes, owner: bytes, access: int = c.OPEN4_SHARE_ACCESS_BOTH) -> Any:
        how = Arm(c.OPEN4_CREATE, Arm(c.UNCHECKED4, mode_attrs(0o644)))
        return (
            c.OP_OPEN,
            OpenArgs(0, access, 0, StateOwner(0, owner), how, Arm(c.CLAIM_NULL, name)),
        )

    @staticmethod
    def open_read(name: bytes, owner: bytes) -> Any:
        return (
            c.OP_OPEN,
            OpenArgs(
                0,
                c.OPEN4_SHARE_ACCESS_READ,
                0,
                StateOwner(0, owner),
                Arm(c.OPEN4_NOCREATE),
                Arm(c.CLAIM_NULL, name),
            ),
        )

    @staticmethod
    def putfh(fh: bytes) -> Any:
        return (c.OP_PUTFH, PutfhArgs(fh))

    def close(self) -> None:
        """End the session and the client record, then the connection."""
        try:
            self._plain([(c.OP_DESTROY_SESSION, SessionArgs(self.sessionid))])
            self._plain([(c.OP_DESTROY_CLIENTID, ClientidArgs(self.clientid))])
        except (NFS4Failed, OSError):
            pass
        self.sock.close()
