# -*- test-case-name: tests.rpc.test_portmap -*-
"""
The portmapper: program 100000, versions 2 (portmap, RFC 1833 §3) and 3 and 4
(rpcbind, RFC 1833 §2).

NFSv3 clients, C{rpcinfo} and C{showmount} find MOUNT, NFS, NLM and NSM by
asking port 111 which port serves which program. The gateway either answers
itself (L{PortmapTable} served by L{portmap_program}: C{nfs.portmapper:
embedded}), or registers its programs with the machine's rpcbind
(L{SystemRegistrar}: C{system}).

Served: NULL, SET, UNSET, GETPORT (v2), DUMP, GETADDR and GETTIME (v3, v4),
GETVERSADDR (v4). Not served, PROC_UNAVAIL: CALLIT/BCAST and INDIRECT (they
make the portmapper a relay that forwards calls to other programs: an
amplifier for spoofed UDP, which rpcbind itself restricts), UADDR2TADDR,
TADDR2UADDR, GETADDRLIST and GETSTAT.

SET and UNSET are honoured only from loopback addresses (a registration names
a local service, as rpcbind requires); from elsewhere they answer FALSE. The
table is bounded.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from claudefs_gateway.core.log import Logger
from claudefs_gateway.rpc.client import DatagramClient
from claudefs_gateway.rpc.server import Call, Peer, Procedure, Program, no_args
from claudefs_gateway.rpc.xdr import Packer, Unpacker

__all__ = [
    "PMAP_PROG",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "Mapping",
    "PortmapTable",
    "portmap_program",
    "uaddr",
    "parse_uaddr",
    "SystemRegistrar",
    "encode_mapping",
    "encode_rpcb",
]

PMAP_PROG = 100000
IPPROTO_TCP = 6
IPPROTO_UDP = 17
_PROTO_NETID = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp"}
_NETID_PROTO = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP}
MAX_ENTRIES = 1024
MAX_STR = 256

# v2
PMAPPROC_NULL, PMAPPROC_SET, PMAPPROC_UNSET, PMAPPROC_GETPORT, PMAPPROC_DUMP = range(5)
# v3 / v4
RPCBPROC_NULL = 0
RPCBPROC_SET = 1
RPCBPROC_UNSET = 2
RPCBPROC_GETADDR = 3
RPCBPROC_DUMP = 4
RPCBPROC_GETTIME = 6
RPCBPROC_GETVERSADDR = 9

OWNER = "claudefs-gateway"


def uaddr(host: str, port: int) -> str:
    """A universal address (RFC 5665 §5.2.3): C{h1.h2.h3.h4.p1.p2}, or the IPv6 text and C{.p1.p2}."""
    return f"{host}.{port >> 8}.{port & 0xFF}"


def parse_uaddr(text: str) -> tuple[str, int]:
    """(host, port) of a universal address. @raise ValueError: not one."""
    host, p1, p2 = text.rsplit(".", 2)
    port = int(p1) << 8 | int(p2)
    ipaddress.ip_address(host)
    if not 0 <= port <= 65535 or int(p1) > 255 or int(p2) > 255:
        raise ValueError(f"bad port in {text!r}")
    return host, port


@attrs.frozen
class Mapping:
    """One registration: program C{prog} version C{vers} on C{netid} at C{addr}."""

    prog: int
    vers: int
    netid: str
    addr: str
    owner: str = OWNER

    @property
    def port(self) -> int:
        try:
            return parse_uaddr(self.addr)[1]
        except ValueError:
            return 0

    @property
    def host(self) -> str:
        try:
            return parse_uaddr(self.addr)[0]
        except ValueError:
            return ""


class PortmapTable:
    """The registrations an embedded portmapper serves (bounded)."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: dict[tuple[int, int, str], Mapping] = {}

    def __iter__(self) -> Any:
        return iter(sorted(self._entries.values(), key=lambda m: (m.prog, m.vers, m.netid)))

    def __len__(self) -> int:
        return len(self._entries)

    def set(self, m: Mapping) -> bool:
        """Register C{m}; false if that program, version and netid is taken or the table is full."""
        key = (m.prog, m.vers, m.netid)
        if key in self._entries or len(self._entries) >= self.max_entries:
            return False
        self._entries[key] = m
        return True

    def unset(self, prog: int, vers: int, netid: str = "") -> bool:
        """Remove C{prog}/C{vers} on C{netid} (every netid if empty); true if any went."""
        keys = [k for k in self._entries if k[0] == prog and k[1] == vers and netid in ("", k[2])]
        for k in keys:
            del self._entries[k]
        return bool(keys)

    def find(self, prog: int, vers: int, netid: str) -> Mapping | None:
        return self._entries.get((prog, vers, netid))

    def getport(self, prog: int, vers: int, prot: int) -> int:
        m = self.find(prog, vers, _PROTO_NETID.get(prot, ""))
        return m.port if m is not None else 0

    def versaddr_any(self, prog: int, netid: str) -> Mapping | None:
        found = [m for m in self._entries.values() if m.prog == prog and m.netid == netid]
        return max(found, key=lambda m: m.vers) if found else None


def _is_local(peer: Peer) -> bool:
    try:
        return ipaddress.ip_address(peer.host).is_loopback
    except ValueError:
        return False


def _netid(peer: Peer) -> str:
    return peer.transport + ("6" if ":" in peer.host else "")


def _dec_mapping(u: Unpacker) -> tuple[int, int, int, int]:
    return u.u32(), u.u32(), u.u32(), u.u32()


def encode_mapping(prog: int, vers: int, prot: int, port: int) -> bytes:
    p = Packer()
    for v in (prog, vers, prot, port):
        p.u32(v)
    return p.bytes()


def _dec_rpcb(u: Unpacker) -> tuple[int, int, str, str, str]:
    prog = u.u32()
    vers = u.u32()
    netid = u.string(MAX_STR).decode("ascii", "replace")
    addr = u.string(MAX_STR).decode("ascii", "replace")
    owner = u.string(MAX_STR).decode("ascii", "replace")
    return prog, vers, netid, addr, owner


def encode_rpcb(prog: int, vers: int, netid: str, addr: str, owner: str) -> bytes:
    p = Packer()
    p.u32(prog)
    p.u32(vers)
    p.string(netid.encode())
    p.string(addr.encode())
    p.string(owner.encode())
    return p.bytes()


def _bool(v: bool) -> list[bytes]:
    return [b"\0\0\0\1" if v else b"\0\0\0\0"]


def _string(s: str) -> list[bytes]:
    p = Packer()
    p.string(s.encode())
    return p.chunks()


def portmap_program(
    table: PortmapTable,
    metrics: Any = None,
    clock: Callable[[], float] | None = None,
    local_host: Callable[[Peer], str | None] | None = None,
) -> Program:
    """
    The portmapper program over C{table}.

    @param clock: seconds since the epoch for GETTIME.
    @param local_host: the server address a peer reached (replaces a wildcard
        address in GETADDR answers), if known.
    """
    import time as _time

    now = clock or _time.time
    log = Logger(namespace="claudefs_gateway.rpc.portmap")
    prog = Program(PMAP_PROG, "portmap", metrics)

    def null(call: Call, args: Any) -> list[bytes]:
        return []

    def pm_set(call: Call, a: tuple[int, int, int, int]) -> list[bytes]:
        p, v, prot, port = a
        netid = _PROTO_NETID.get(prot)
        if netid is None or not _is_local(call.peer) or not 0 < port <= 65535:
            call.status = "refused"
            return _bool(False)
        host = "::1" if ":" in call.peer.host else "0.0.0.0"
        ok = table.set(Mapping(p, v, netid, uaddr(host, port), "unknown"))
        if ok:
            log.info(
                "registered program {prog} v{vers} {netid} port {port}",
                prog=p,
                vers=v,
                netid=netid,
                port=port,
            )
        return _bool(ok)

    def pm_unset(call: Call, a: tuple[int, int, int, int]) -> list[bytes]:
        if not _is_local(call.peer):
            call.status = "refused"
            return _bool(False)
        ok = table.unset(a[0], a[1], "tcp") | table.unset(a[0], a[1], "udp")
        return _bool(ok)

    def pm_getport(call: Call, a: tuple[int, int, int, int]) -> list[bytes]:
        port = table.getport(a[0], a[1], a[2])
        return [port.to_bytes(4, "big")]

    def pm_dump(call: Call, args: Any) -> list[bytes]:
        p = Packer()
        for m in table:
            prot = _NETID_PROTO.get(m.netid)
            if prot is None:
                continue
            p.bool(True)
            for v in (m.prog, m.vers, prot, m.port):
                p.u32(v)
        p.bool(False)
        return p.chunks()

    for n, proc in (
        (PMAPPROC_NULL, Procedure("NULL", no_args, null)),
        (PMAPPROC_SET, Procedure("SET", _dec_mapping, pm_set, cancel_on_close=False)),
        (PMAPPROC_UNSET, Procedure("UNSET", _dec_mapping, pm_unset, cancel_on_close=False)),
        (PMAPPROC_GETPORT, Procedure("GETPORT", _dec_mapping, pm_getport)),
        (PMAPPROC_DUMP, Procedure("DUMP", no_args, pm_dump)),
    ):
        prog.add(2, n, proc)

    def rb_set(call: Call, a: tuple[int, int, str, str, str]) -> list[bytes]:
        p, v, netid, addr, owner = a
        try:
            parse_uaddr(addr)
        except ValueError:
            call.status = "refused"
            return _bool(False)
        if not _is_local(call.peer) or netid not in ("tcp", "udp", "tcp6", "udp6"):
            call.status = "refused"
            return _bool(False)
        ok = table.set(Mapping(p, v, netid, addr, owner or "unknown"))
        if ok:
            log.info(
                "registered program {prog} v{vers} {netid} {addr}",
                prog=p,
                vers=v,
                netid=netid,
                addr=addr,
            )
        return _bool(ok)

    def rb_unset(call: Call, a: tuple[int, int, str, str, str]) -> list[bytes]:
        if not _is_local(call.peer):
            call.status = "refused"
            return _bool(False)
        return _bool(table.unset(a[0], a[1], a[2]))

    def _answer(call: Call, m: Mapping | None) -> list[bytes]:
        if m is None:
            return _string("")
        addr = m.addr
        if m.host in ("0.0.0.0", "::") and local_host is not None:
            here = local_host(call.peer)
            if here:
                addr = uaddr(here, m.port)
        return _string(addr)

    def rb_getaddr(call: Call, a: tuple[int, int, str, str, str]) -> list[bytes]:
        netid = a[2] or _netid(call.peer)
        return _answer(call, table.find(a[0], a[1], netid))

    def rb_getversaddr(call: Call, a: tuple[int, int, str, str, str]) -> list[bytes]:
        netid = a[2] or _netid(call.peer)
        m = table.find(a[0], a[1], netid)
        if m is None:
            m = table.versaddr_any(a[0], netid)
        return _answer(call, m)

    def rb_dump(call: Call, args: Any) -> list[bytes]:
        p = Packer()
        for m in table:
            p.bool(True)
            p.u32(m.prog)
            p.u32(m.vers)
            p.string(m.netid.encode())
            p.string(m.addr.encode())
            p.string(m.owner.encode())
        p.bool(False)
        return p.chunks()

    def rb_gettime(call: Call, args: Any) -> list[bytes]:
        return [int(now()).to_bytes(4, "big")]

    for vers in (3, 4):
        for n, proc in (
            (RPCBPROC_NULL, Procedure("NULL", no_args, null)),
            (RPCBPROC_SET, Procedure("SET", _dec_rpcb, rb_set, cancel_on_close=False)),
            (RPCBPROC_UNSET, Procedure("UNSET", _dec_rpcb, rb_unset, cancel_on_close=False)),
            (RPCBPROC_GETADDR, Procedure("GETADDR", _dec_rpcb, rb_getaddr)),
            (RPCBPROC_DUMP, Procedure("DUMP", no_args, rb_dump)),
            (RPCBPROC_GETTIME, Procedure("GETTIME", no_args, rb_gettime)),
        ):
            prog.add(vers, n, proc)
    prog.add(4, RPCBPROC_GETVERSADDR, Procedure("GETVERSADDR", _dec_rpcb, rb_getversaddr))
    return prog


class SystemRegistrar:
    """
    Registers mappings with a running rpcbind (C{nfs.portmapper: system})
    over UDP with rpcbind v4 SET, and removes them with UNSET at stop.

    @param address: the rpcbind to talk to, normally C{("127.0.0.1", 111)}.
    """

    _log = Logger()

    def __init__(self, reactor: Any, address: tuple[str, int] = ("127.0.0.1", 111)) -> None:
        self.reactor = reactor
        self.address = address
        self.registered: list[Mapping] = []
        self._client: DatagramClient | None = None
        self._port: Any = None

    def _open(self) -> DatagramClient:
        if self._client is None:
            self._client = DatagramClient(self.reactor, interval=1.0, tries=3)
            self._port = self.reactor.listenUDP(0, self._client, interface="127.0.0.1")
        return self._client

    async def register(self, mappings: Iterable[Mapping]) -> None:
        """
        Replace any earlier registration of each program and version, then set ours.

        @raise RuntimeError: rpcbind refused a registration (or is not running).
        """
        client = self._open()
        for m in mappings:
            args = encode_rpcb(m.prog, m.vers, m.netid, "", m.owner)
            await client.call(self.address, PMAP_PROG, 4, RPCBPROC_UNSET, args)
            u = await client.call(
                self.address,
                PMAP_PROG,
                4,
                RPCBPROC_SET,
                encode_rpcb(m.prog, m.vers, m.netid, m.addr, m.owner),
            )
            if not u.bool():
                raise RuntimeError(
                    f"rpcbind refused program {m.prog} version {m.vers} on {m.netid}"
                )
            self.registered.append(m)
            self._log.info(
                "registered program {prog} v{vers} {netid} {addr} with rpcbind",
                prog=m.prog,
                vers=m.vers,
                netid=m.netid,
                addr=m.addr,
            )

    async def unregister(self) -> None:
        """Remove every mapping this registrar set (errors are logged, not raised)."""
        client = self._open()
        done: set[tuple[int, int]] = set()
        for m in self.registered:
            if (m.prog, m.vers) in done:
                continue
            done.add((m.prog, m.vers))
            try:
                await client.call(
                    self.address,
                    PMAP_PROG,
                    4,
                    RPCBPROC_UNSET,
                    encode_rpcb(m.prog, m.vers, "", "", m.owner),
                )
            except Exception as e:
                self._log.warn(
                    "could not unregister program {prog} from rpcbind: {why}", prog=m.prog, why=e
                )
        self.registered = []

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._port is not None:
            self._port.stopListening()
            self._port = None


def decode_dump_v2(u: Unpacker) -> list[tuple[int, int, int, int]]:
    """A PMAPPROC_DUMP reply (tests, tools)."""
    return u.linked_list(MAX_ENTRIES * 4, _dec_mapping)


def decode_dump_v34(u: Unpacker) -> list[tuple[int, int, str, str, str]]:
    return u.linked_list(MAX_ENTRIES * 4, _dec_rpcb)


def decode_string(u: Unpacker) -> str:
    return u.string(MAX_STR).decode("ascii", "replace")
