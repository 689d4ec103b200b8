# -*- test-case-name: tests.nfs.pnfs.test_flexfiles -*-
"""
The flexible file layout on the wire (RFC 8435 §5, §4.1, §9): the layout
body LAYOUTGET returns, the device address GETDEVICEINFO returns, and the
error and statistics reports clients send back in LAYOUTRETURN's body.

Pure functions between bytes and attrs values; every decoder bounds its
arrays and strings and raises only L{XDRError}.
"""

from __future__ import annotations

import ipaddress

import attrs

from claudefs_gateway.rpc.xdr import Packer, Unpacker, XDRError

__all__ = [
    "LAYOUT4_FLEX_FILES",
    "NetAddr",
    "DeviceVersion",
    "DeviceAddr",
    "DataServer",
    "Layout",
    "DeviceError",
    "IoErr",
    "IoStats",
    "LayoutReturn",
    "netaddr",
    "parse_netaddr",
    "encode_layout",
    "decode_layout",
    "encode_device",
    "decode_device",
    "encode_return",
    "decode_return",
    "FF_FLAGS_NO_LAYOUTCOMMIT",
    "FF_FLAGS_NO_IO_THRU_MDS",
    "FF_FLAGS_NO_READ_IO",
    "FF_FLAGS_WRITE_ONE_MIRROR",
]

#: layouttype4 of the flexible file layout (RFC 8435 §12, IANA).
LAYOUT4_FLEX_FILES = 4

FF_FLAGS_NO_LAYOUTCOMMIT = 0x00000001
FF_FLAGS_NO_IO_THRU_MDS = 0x00000002
FF_FLAGS_NO_READ_IO = 0x00000004
FF_FLAGS_WRITE_ONE_MIRROR = 0x00000008

_DEVICEID = 16
_OTHER = 12
_FH_LIMIT = 128  # NFS4_FHSIZE: NFSv3 handles are at most 64
_STR_LIMIT = 1024
_ADDR_LIMIT = 64
_ARRAY = 64


@attrs.frozen(slots=True)
class NetAddr:
    """netaddr4 (RFC 5665 §5.2.3.3): C{netid} "tcp"/"tcp6", C{addr} universal form."""

    netid: bytes
    addr: bytes


def netaddr(host: str, port: int) -> NetAddr:
    """
    The netaddr4 of C{host}:C{port} (RFC 5665 universal address: the IP
    address, then the port's high and low bytes as two more dotted numbers).

    @raise ValueError: C{host} is not an IP address, or C{port} out of range.
    """
    ip = ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    tail = f".{port >> 8}.{port & 0xFF}"
    if ip.version == 4:
        return NetAddr(b"tcp", (str(ip) + tail).encode())
    return NetAddr(b"tcp6", (ip.compressed + tail).encode())


def parse_netaddr(a: NetAddr) -> tuple[str, int]:
    """(host, port) of a universal address. @raise ValueError: not one."""
    text = a.addr.decode("ascii")
    host, _, rest = text.rpartition(".")
    host, _, high = host.rpartition(".")
    port = int(high) * 256 + int(rest)
    ipaddress.ip_address(host)
    return host, port


@attrs.frozen(slots=True)
class DeviceVersion:
    """ff_device_versions4: an NFS version the data server speaks and its I/O sizes."""

    version: int
    minorversion: int
    rsize: int
    wsize: int
    tightly_coupled: bool


@attrs.frozen(slots=True)
class DeviceAddr:
    """ff_device_addr4: where a data server is (several paths) and what it speaks."""

    netaddrs: tuple[NetAddr, ...]
    versions: tuple[DeviceVersion, ...]


@attrs.frozen(slots=True)
class DataServer:
    """ff_data_server4: one data server of a mirror, and the handle and credential to use."""

    deviceid: bytes
    efficiency: int
    stateid: tuple[int, bytes]
    fhs: tuple[bytes, ...]
    user: bytes
    group: bytes


@attrs.frozen(slots=True)
class Layout:
    """ff_layout4: the stripe unit, the mirrors (each a list of data servers), flags."""

    stripe_unit: int
    mirrors: tuple[tuple[DataServer, ...], ...]
    flags: int = 0
    stats_collect_hint: int = 0


@attrs.frozen(slots=True)
class DeviceError:
    """device_error4: an error a client met on a data server."""

    deviceid: bytes
    status: int
    opnum: int


@attrs.frozen(slots=True)
class IoErr:
    """ff_ioerr4: errors over a byte range under a layout stateid."""

    offset: int
    length: int
    stateid: tuple[int, bytes]
    errors: tuple[DeviceError, ...]


@attrs.frozen(slots=True)
class IoStats:
    """ff_iostats4, kept to the parts the gateway reports (the rest is parsed and dropped)."""

    offset: int
    length: int
    stateid: tuple[int, bytes]
    read_count: int
    read_bytes: int
    write_count: int
    write_bytes: int
    deviceid: bytes


@attrs.frozen(slots=True)
class LayoutReturn:
    """ff_layoutreturn4: LAYOUTRETURN's body for a flexfiles layout."""

    ioerrs: tuple[IoErr, ...] = ()
    iostats: tuple[IoStats, ...] = ()


# -- encoders --------------------------------------------------------------------------


def _stateid(p: Packer, sid: tuple[int, bytes]) -> None:
    p.u32(sid[0])
    p.fixed(sid[1], _OTHER)


def _netaddr(p: Packer, a: NetAddr) -> None:
    p.opaque(a.netid)
    p.opaque(a.addr)


def encode_layout(lay: Layout) -> bytes:
    """ff_layout4 (a layout4's C{loc_body})."""
    p = Packer()
    p.u64(lay.stripe_unit)
    p.u32(len(lay.mirrors))
    for mirror in lay.mirrors:
        p.u32(len(mirror))
        for ds in mirror:
            p.fixed(ds.deviceid, _DEVICEID)
            p.u32(ds.efficiency)
            _stateid(p, ds.stateid)
            p.u32(len(ds.fhs))
            for fh in ds.fhs:
                p.opaque(fh)
            p.opaque(ds.user)
            p.opaque(ds.group)
    p.u32(lay.flags)
    p.u32(lay.stats_collect_hint)
    return p.bytes()


def encode_device(dev: DeviceAddr) -> bytes:
    """ff_device_addr4 (a device_addr4's C{da_addr_body})."""
    p = Packer()
    p.u32(len(dev.netaddrs))
    for a in dev.netaddrs:
        _netaddr(p, a)
    p.u32(len(dev.versions))
    for v in dev.versions:
        p.u32(v.version)
        p.u32(v.minorversion)
        p.u32(v.rsize)
        p.u32(v.wsize)
        p.bool(v.tightly_coupled)
    return p.bytes()


def _latency(p: Packer) -> None:
    for _ in range(5):
        p.u64(0)
    for _ in range(2):
        p.i64(0)
        p.u32(0)


def encode_return(r: LayoutReturn) -> bytes:
    """ff_layoutreturn4 (tests and clients of our own)."""
    p = Packer()
    p.u32(len(r.ioerrs))
    for e in r.ioerrs:
        p.u64(e.offset)
        p.u64(e.length)
        _stateid(p, e.stateid)
        p.u32(len(e.errors))
        for d in e.errors:
            p.fixed(d.deviceid, _DEVICEID)
            p.u32(d.status)
            p.u32(d.opnum)
    p.u32(len(r.iostats))
    for s in r.iostats:
        p.u64(s.offset)
        p.u64(s.length)
        _stateid(p, s.stateid)
        p.u64(s.read_count)
        p.u64(s.read_bytes)
        p.u64(s.write_count)
        p.u64(s.write_bytes)
        p.fixed(s.deviceid, _DEVICEID)
        # ff_layoutupdate4: an empty address and handle, zero latencies.
        _netaddr(p, NetAddr(b"", b""))
        p.opaque(b"")
        _latency(p)
        _latency(p)
        p.i64(0)
        p.u32(0)
        p.bool(False)
    return p.bytes()


# -- decoders --------------------------------------------------------------------------


def _dec_stateid(u: Unpacker) -> tuple[int, bytes]:
    return u.u32(), u.fixed(_OTHER)


def _dec_netaddr(u: Unpacker) -> NetAddr:
    return NetAddr(u.opaque(_ADDR_LIMIT), u.opaque(_ADDR_LIMIT))


def _dec_ds(u: Unpacker) -> DataServer:
    deviceid = u.fixed(_DEVICEID)
    efficiency = u.u32()
    sid = _dec_stateid(u)
    fhs = tuple(u.array(_ARRAY, lambda x: x.opaque(_FH_LIMIT)))
    return DataServer(deviceid, efficiency, sid, fhs, u.opaque(_STR_LIMIT), u.opaque(_STR_LIMIT))


def decode_layout(data: bytes) -> Layout:
    """ff_layout4. @raise XDRError: malformed or trailing bytes."""
    u = Unpacker(data)
    unit = u.u64()
    mirrors = tuple(u.array(_ARRAY, lambda x: tuple(x.array(_ARRAY, _dec_ds))))
    lay = Layout(unit, mirrors, u.u32(), u.u32())
    u.done()
    return lay


def _dec_version(u: Unpacker) -> DeviceVersion:
    return DeviceVersion(u.u32(), u.u32(), u.u32(), u.u32(), u.bool())


def decode_device(data: bytes) -> DeviceAddr:
    """ff_device_addr4. @raise XDRError: malformed or trailing bytes."""
    u = Unpacker(data)
    addrs = tuple(u.array(_ARRAY, _dec_netaddr))
    versions = tuple(u.array(_ARRAY, _dec_version))
    u.done()
    return DeviceAddr(addrs, versions)


def _dec_error(u: Unpacker) -> DeviceError:
    return DeviceError(u.fixed(_DEVICEID), u.u32(), u.u32())


def _dec_ioerr(u: Unpacker) -> IoErr:
    offset, length = u.u64(), u.u64()
    sid = _dec_stateid(u)
    return IoErr(offset, length, sid, tuple(u.array(_ARRAY, _dec_error)))


def _skip_latency(u: Unpacker) -> None:
    for _ in range(5):
        u.u64()
    for _ in range(2):
        u.i64()
        u.u32()


def _dec_iostats(u: Unpacker) -> IoStats:
    offset, length = u.u64(), u.u64()
    sid = _dec_stateid(u)
    rc, rb, wc, wb = u.u64(), u.u64(), u.u64(), u.u64()
    deviceid = u.fixed(_DEVICEID)
    _dec_netaddr(u)
    u.opaque(_FH_LIMIT)
    _skip_latency(u)
    _skip_latency(u)
    u.i64()
    u.u32()
    u.bool()
    return IoStats(offset, length, sid, rc, rb, wc, wb, deviceid)


def decode_return(data: bytes) -> LayoutReturn:
    """
    ff_layoutreturn4 from LAYOUTRETURN's C{lrf_body}; an empty body is an
    empty report (RFC 8435 §9.3 lets clients send none).

    @raise XDRError: malformed or trailing bytes.
    """
    if not data:
        return LayoutReturn()
    u = Unpacker(data)
    ioerrs = tuple(u.array(_ARRAY, _dec_ioerr))
    iostats = tuple(u.array(_ARRAY, _dec_iostats))
    u.done()
    return LayoutReturn(ioerrs, iostats)


def check_netaddr(a: NetAddr) -> None:
    """@raise XDRError: not a tcp/tcp6 universal address."""
    if a.netid not in (b"tcp", b"tcp6"):
        raise XDRError("netid")
    try:
        parse_netaddr(a)
    except (ValueError, UnicodeDecodeError):
        raise XDRError("universal address") from None
