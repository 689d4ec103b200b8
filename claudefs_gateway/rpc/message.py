# -*- test-case-name: tests.rpc.test_message -*-
"""
ONC RPC version 2 messages (RFC 5531 §9) and their authentication (§8-10).

L{parse_call} turns a record or datagram into a L{Call}: its header and the
offset where the procedure's arguments start (the server then serves that
same object); the reply functions build the fixed-size reply headers in one
C{struct.pack} each. Credentials: AUTH_NONE
and AUTH_SYS (RFC 5531 appendix A), whose body is bounded by the RFC's 400
bytes and whose gid list by its 16 entries; anything else is refused by the
server with AUTH_ERROR.
"""

from __future__ import annotations

import struct
from typing import Any

import attrs

from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.rpc.xdr import U32, Packer, Unpacker, XDRError, opaque_bytes

__all__ = [
    "CALL",
    "REPLY",
    "RPC_VERSION",
    "AUTH_NONE",
    "AUTH_SYS",
    "MAX_AUTH_BYTES",
    "MAX_GIDS",
    "AuthSys",
    "Call",
    "CallHeader",
    "BadCall",
    "RPCMismatch",
    "BadCred",
    "parse_call",
    "parse_auth_sys",
    "encode_call",
    "encode_auth_sys",
    "reply_header",
    "reply_success",
    "SUCCESS_TAIL",
    "reply_error",
    "reply_prog_mismatch",
    "reply_rpc_mismatch",
    "reply_auth_error",
    "parse_reply",
    "ReplyHeader",
    "accept_stat_name",
]

CALL = 0
REPLY = 1
RPC_VERSION = 2

MSG_ACCEPTED = 0
MSG_DENIED = 1

# accept_stat
SUCCESS = 0
PROG_UNAVAIL = 1
PROG_MISMATCH = 2
PROC_UNAVAIL = 3
GARBAGE_ARGS = 4
SYSTEM_ERR = 5

# reject_stat
RPC_MISMATCH = 0
AUTH_ERROR = 1

# auth_stat
AUTH_OK = 0
AUTH_BADCRED = 1
AUTH_REJECTEDCRED = 2
AUTH_BADVERF = 3
AUTH_REJECTEDVERF = 4
AUTH_TOOWEAK = 5

# auth_flavor
AUTH_NONE = 0
AUTH_SYS = 1
AUTH_SHORT = 2
AUTH_DH = 3
RPCSEC_GSS = 6

MAX_AUTH_BYTES = 400
MAX_MACHINE_NAME = 255
MAX_GIDS = 16

_ACCEPT_NAMES = {
    SUCCESS: "SUCCESS",
    PROG_UNAVAIL: "PROG_UNAVAIL",
    PROG_MISMATCH: "PROG_MISMATCH",
    PROC_UNAVAIL: "PROC_UNAVAIL",
    GARBAGE_ARGS: "GARBAGE_ARGS",
    SYSTEM_ERR: "SYSTEM_ERR",
}


def accept_stat_name(stat: int) -> str:
    return _ACCEPT_NAMES.get(stat, str(stat))


_HEAD = struct.Struct(">IIIIII")  # xid, msg_type, rpcvers, prog, vers, proc
_AUTH_HEAD = struct.Struct(">II")  # flavor, length
# xid, REPLY, MSG_ACCEPTED, verf flavor AUTH_NONE, verf length 0, accept_stat
_ACCEPTED = struct.Struct(">IIIIII")
_MISMATCH = struct.Struct(">IIIIIIII")  # ... PROG_MISMATCH, low, high
_DENIED = struct.Struct(">IIIII")  # xid, REPLY, MSG_DENIED, reject_stat, auth_stat/low
_DENIED_MISMATCH = struct.Struct(">IIIIII")  # ..., RPC_MISMATCH, low, high


class BadCall(ProtocolError):
    """A call whose header cannot be decoded; C{xid} is set if it could be read."""

    def __init__(self, message: str, xid: int | None = None) -> None:
        super().__init__(message)
        self.xid = xid


class RPCMismatch(BadCall):
    """The call is not RPC version 2: MSG_DENIED, RPC_MISMATCH."""


class BadCred(BadCall):
    """The credential or verifier does not decode: MSG_DENIED, AUTH_ERROR."""

    def __init__(self, message: str, xid: int, stat: int = AUTH_BADCRED) -> None:
        super().__init__(message, xid)
        self.stat = stat


@attrs.frozen(slots=True)
class AuthSys:
    """An AUTH_SYS credential (RFC 5531 appendix A)."""

    stamp: int
    machine: bytes
    uid: int
    gid: int
    gids: tuple[int, ...] = ()


@attrs.define(slots=True, eq=False)
class Call:
    """
    A decoded call header, and then the call being served: the server sets
    C{peer} and the handlers C{status} and C{admitted} on the same object
    (one object per call, not a header and a call built from it).

    @ivar cred: the decoded AUTH_SYS credential, or L{None} for AUTH_NONE
        (and for flavours this server does not accept; see C{flavor}).
    @ivar args_at: offset of the procedure's arguments in the message.
    @ivar cred_body: the credential's encoded body.
    @ivar peer: where the call came from (a L{claudefs_gateway.rpc.server.Peer}),
        set by the server; L{None} until then.
    @ivar status: set by a handler to name the error status it answered with
        (counted in C{gateway_errors_total}); L{None} means success.
    @ivar admitted: the call has passed the request-rate limits (a program
        checks once per call however many handles it resolves).
    """

    xid: int
    prog: int
    vers: int
    proc: int
    flavor: int
    cred: AuthSys | None
    args_at: int = 0
    cred_body: bytes = b""
    peer: Any = None
    status: str | None = None
    admitted: bool = False


#: The name the header alone went by (clients and tests decoding a call).
CallHeader = Call


def parse_auth_sys(body: bytes) -> AuthSys:
    """
    Decode an AUTH_SYS credential body.

    @raise XDRError: truncated, trailing bytes, a machine name over 255 bytes
        or more than 16 gids.
    """
    u = Unpacker(body)
    stamp = u.u32()
    machine = u.string(MAX_MACHINE_NAME)
    uid = u.u32()
    gid = u.u32()
    gids = u.array(MAX_GIDS, Unpacker.u32)
    u.done()
    return AuthSys(stamp, machine, uid, gid, tuple(gids))


def encode_auth_sys(cred: AuthSys) -> bytes:
    p = Packer()
    p.u32(cred.stamp)
    p.string(cred.machine)
    p.u32(cred.uid)
    p.u32(cred.gid)
    p.array(list(cred.gids), Packer.u32)
    return p.bytes()


def parse_call(data: bytes) -> Call:
    """
    Decode a call's header (through the verifier).

    @raise BadCall: too short to hold a header, or not a CALL (the server
        drops it: there is nothing to reply to).
    @raise RPCMismatch: not RPC version 2.
    @raise BadCred: the credential or verifier is malformed (AUTH_BADCRED,
        AUTH_BADVERF), or an AUTH_SYS credential breaks its bounds.
    """
    if len(data) < 24:
        xid = U32.unpack_from(data, 0)[0] if len(data) >= 4 else None
        raise BadCall(f"call of {len(data)} bytes is shorter than a header", xid)
    xid, mtype, rpcvers, prog, vers, proc = _HEAD.unpack_from(data, 0)
    if mtype != CALL:
        raise BadCall(f"message type {mtype} is not CALL", None)
    if rpcvers != RPC_VERSION:
        raise RPCMismatch(f"RPC version {rpcvers}", xid)
    # Credential and verifier: flavor, length, body padded to four bytes,
    # each body at most MAX_AUTH_BYTES (RFC 5531 §8.2).
    end = len(data)
    if end < 32:
        raise BadCred("credential: truncated", xid)
    flavor, n = _AUTH_HEAD.unpack_from(data, 24)
    at = 32 + n + (-n & 3)
    if n > MAX_AUTH_BYTES or at > end:
        raise BadCred(f"credential of {n} bytes", xid)
    body = data[32 : 32 + n]
    if at + 8 > end:
        raise BadCred("verifier: truncated", xid, AUTH_BADVERF)
    _, vn = _AUTH_HEAD.unpack_from(data, at)
    args_at = at + 8 + vn + (-vn & 3)
    if vn > MAX_AUTH_BYTES or args_at > end:
        raise BadCred(f"verifier of {vn} bytes", xid, AUTH_BADVERF)
    cred = None
    if flavor == AUTH_SYS:
        # A client sends the same credential with every call: decode it once.
        cred = _CREDS.get(body)
        if cred is None:
            try:
                cred = parse_auth_sys(body)
            except XDRError as e:
                raise BadCred(f"AUTH_SYS credential: {e}", xid) from None
            if len(_CREDS) >= _CRED_CACHE:
                _CREDS.clear()
            _CREDS[body] = cred
    # Call(...) without its generated __init__ (a Python call per RPC call,
    # issue 18): every slot set here, as __init__ would (a slot left unset
    # would raise on reading; RPCTests.test_parse_call_sets_every_field).
    call = _new(Call)
    call.xid = xid
    call.prog = prog
    call.vers = vers
    call.proc = proc
    call.flavor = flavor
    call.cred = cred
    call.args_at = args_at
    call.cred_body = body
    call.peer = None
    call.status = None
    call.admitted = False
    return call


_new = object.__new__

# Decoded AUTH_SYS credentials by their encoded body (bounded; cleared when full).
_CRED_CACHE = 1024
_CREDS: dict[bytes, AuthSys] = {}


def encode_call(
    xid: int,
    prog: int,
    vers: int,
    proc: int,
    args: bytes = b"",
    cred: AuthSys | None = None,
    flavor: int | None = None,
    cred_body: bytes | None = None,
) -> bytes:
    """A call message (clients: the in-tree test client, NLM callbacks, rpcbind registration)."""
    if cred is not None:
        body = encode_auth_sys(cred)
        fl = AUTH_SYS
    else:
        body = b""
        fl = AUTH_NONE
    if flavor is not None:
        fl = flavor
    if cred_body is not None:
        body = cred_body
    return (
        _HEAD.pack(xid, CALL, RPC_VERSION, prog, vers, proc)
        + U32.pack(fl)
        + opaque_bytes(body)
        + _AUTH_HEAD.pack(AUTH_NONE, 0)
        + args
    )


def reply_header(xid: int, stat: int = SUCCESS) -> bytes:
    """An accepted reply's header (24 bytes); results follow for SUCCESS."""
    return _ACCEPTED.pack(xid, REPLY, MSG_ACCEPTED, AUTH_NONE, 0, stat)


def reply_success(xid: int) -> bytes:
    return _ACCEPTED.pack(xid, REPLY, MSG_ACCEPTED, AUTH_NONE, 0, SUCCESS)


#: What follows the xid in every L{reply_success} (the server's reply path
#: appends it to the packed xid instead of calling L{reply_success}).
SUCCESS_TAIL = reply_success(0)[4:]


def reply_error(xid: int, stat: int) -> bytes:
    """PROG_UNAVAIL, PROC_UNAVAIL, GARBAGE_ARGS or SYSTEM_ERR."""
    return _ACCEPTED.pack(xid, REPLY, MSG_ACCEPTED, AUTH_NONE, 0, stat)


def reply_prog_mismatch(xid: int, low: int, high: int) -> bytes:
    return _MISMATCH.pack(xid, REPLY, MSG_ACCEPTED, AUTH_NONE, 0, PROG_MISMATCH, low, high)


def reply_rpc_mismatch(xid: int) -> bytes:
    return _DENIED_MISMATCH.pack(xid, REPLY, MSG_DENIED, RPC_MISMATCH, RPC_VERSION, RPC_VERSION)


def reply_auth_error(xid: int, stat: int) -> bytes:
    return _DENIED.pack(xid, REPLY, MSG_DENIED, AUTH_ERROR, stat)


@attrs.frozen(slots=True)
class ReplyHeader:
    """
    A decoded reply header (clients).

    @ivar accepted: MSG_ACCEPTED (else MSG_DENIED).
    @ivar stat: accept_stat if accepted, else reject_stat.
    @ivar detail: (low, high) for the mismatches, (auth_stat,) for AUTH_ERROR.
    @ivar results_at: offset of the results for an accepted SUCCESS.
    """

    xid: int
    accepted: bool
    stat: int
    detail: tuple[int, ...]
    results_at: int


def parse_reply(data: bytes) -> ReplyHeader:
    """@raise XDRError: not a well-formed reply."""
    u = Unpacker(data)
    xid = u.u32()
    if u.u32() != REPLY:
        raise XDRError("not a reply")
    status = u.u32()
    if status == MSG_ACCEPTED:
        u.u32()
        u.opaque(MAX_AUTH_BYTES)
        stat = u.u32()
        detail: tuple[int, ...] = ()
        if stat == PROG_MISMATCH:
            detail = (u.u32(), u.u32())
        return ReplyHeader(xid, True, stat, detail, u.pos)
    if status == MSG_DENIED:
        stat = u.u32()
        if stat == RPC_MISMATCH:
            detail = (u.u32(), u.u32())
        else:
            detail = (u.u32(),)
        return ReplyHeader(xid, False, stat, detail, u.pos)
    raise XDRError(f"reply status {status}")
