"""
ONC RPC: XDR (RFC 4506), RPC version 2 over TCP and UDP (RFC 5531), the
duplicate request cache and the portmapper (RFC 1833).

Shared by every RPC program the gateway serves (MOUNT, NFSv3, NLM, NSM, and
NFSv4 later); nothing here knows about files.
"""

from claudefs_gateway.rpc.drc import ReplyCache
from claudefs_gateway.rpc.message import AUTH_NONE, AUTH_SYS, AuthSys
from claudefs_gateway.rpc.server import (
    AuthError,
    Call,
    Peer,
    Procedure,
    Program,
    RPCDatagramProtocol,
    RPCServer,
    RPCStreamFactory,
    RPCStreamProtocol,
    UDPListener,
)
from claudefs_gateway.rpc.xdr import Packer, Unpacker, XDRError

__all__ = [
    "AUTH_NONE",
    "AUTH_SYS",
    "AuthSys",
    "AuthError",
    "Call",
    "Peer",
    "Procedure",
    "Program",
    "ReplyCache",
    "RPCServer",
    "RPCStreamFactory",
    "RPCStreamProtocol",
    "RPCDatagramProtocol",
    "UDPListener",
    "Packer",
    "Unpacker",
    "XDRError",
]
