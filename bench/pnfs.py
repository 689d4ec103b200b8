"""
``python -m bench.pnfs``: sequential write and read through pNFS (flexfiles)
with 1, 2 and 3 data servers, beside the same through the gateway alone, in
one run.

For each number of data servers one meta server, the data servers (each with
its NFSv3 listener) and one gateway on ``backend: remote`` with
``nfs.pnfs.enabled`` run on loopback. The same client (the bench's own: the
NFSv4.1 load generator of ``bench/nfs4client.py`` plus an NFSv3 data-server
connection per device) then writes and reads a file either through the
gateway alone (NFSv4.1 WRITE/READ, 1 MiB, 4 in flight on its one
connection) or with layouts (LAYOUTGET per stripe, NFSv3 WRITE/READ of 1 MiB
straight to the data servers, 4 in flight per data-server connection, as a
kernel client keeps RPC slots per server; COMMIT, LAYOUTCOMMIT,
LAYOUTRETURN). Runs interleave gateway-alone and pNFS.

    python -m bench.pnfs [--mib 256] [--runs 3] [--servers 1,2,3] [--json out.json]

The Linux kernel client is the real client for pNFS, but under QEMU in
software emulation it measures the emulator (``tests/conformance/suite_pnfs.py``
reports its rates anyway); this load generator measures the servers.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.nfs4client import Client
from claudefs_gateway.nfs.pnfs import flexfiles as ff
from claudefs_gateway.nfs.v3 import codec as v3
from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4.codec import (
    CloseArgs,
    CommitArgs,
    GetDeviceInfoArgs,
    LayoutCommitArgs,
    LayoutGetArgs,
    LayoutReturnArgs,
    LayoutReturnFile,
    LayoutUpdate,
    NameArgs,
    ReadArgs,
    WriteArgs,
)
from claudefs_gateway.rpc import message as msg
from claudefs_gateway.rpc.message import AuthSys
from claudefs_gateway.rpc.record import RecordReader, record_marker
from claudefs_gateway.rpc.xdr import Packer, Unpacker
from claudefs_gateway.rpc.xdrtypes import Arm

IO = 1 << 20
DEPTH = 4
ALL = 0xFFFFFFFFFFFFFFFF


class DSConn:
    """A pipelined NFSv3 connection to one data server, with the layout's credential."""

    def __init__(self, host: str, port: int, uid: int, gid: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = RecordReader(64 << 20)
        self.cred = AuthSys(0, b"bench", uid, gid, ())
        self.xid = 0x20000000
        self.replies: dict[int, bytes] = {}
        self.inflight: list[int] = []

    def send(self, proc: int, parts: list[bytes]) -> int:
        self.xid += 1
        head = msg.encode_call(self.xid, v3.NFS_PROGRAM, 3, proc, b"", self.cred)
        size = len(head) + sum(len(p) for p in parts)
        out: list[Any] = [record_marker(size), head, *parts]
        while out:
            sent = self.sock.sendmsg(out)
            while out and sent >= len(out[0]):
                sent -= len(out[0])
                out.pop(0)
            if out and sent:
                out[0] = memoryview(out[0])[sent:]
        self.inflight.append(self.xid)
        return self.xid

    def wait(self, xid: int) -> Unpacker:
        while xid not in self.replies:
            data = self.sock.recv(4 << 20)
            if not data:
                raise ConnectionError("data server closed the connection")
            for rec in self.reader.feed(data):
                self.replies[int.from_bytes(rec[:4], "big")] = rec
        self.inflight.remove(xid)
        rec = self.replies.pop(xid)
        h = msg.parse_reply(rec)
        if not h.accepted or h.stat != msg.SUCCESS:
            raise RuntimeError(f"RPC error {h}")
        u = Unpacker(rec, h.results_at)
        status = u.u32()
        if status:
            raise RuntimeError(f"data server answered NFS3 status {status}")
        return u

    def write(self, fh: bytes, offset: int, data: bytes) -> int:
        p = Packer()
        p.opaque(fh)
        p.u64(offset)
        p.u32(len(data))
        p.u32(v3.UNSTABLE)
        p.u32(len(data))
        pad = b"\0" * (-len(data) & 3)
        return self.send(v3.WRITE, [p.bytes(), data, pad])

    def read(self, fh: bytes, offset: int, count: int) -> int:
        p = Packer()
        p.opaque(fh)
        p.u64(offset)
        p.u32(count)
        return self.send(v3.READ, [p.bytes()])

    def read_data(self, xid: int) -> int:
        u = self.wait(xid)
        v3.dec_post_op_attr(u)
        u.u32()
        u.bool()
        return len(u.opaque(1 << 30))

    def commit(self, fh: bytes) -> None:
        p = Packer()
        p.opaque(fh)
        p.u64(0)
        p.u32(0)
        self.wait(self.send(v3.COMMIT, [p.bytes()]))

    def drain(self) -> None:
        for xid in list(self.inflight):
            self.wait(xid)

    def close(self) -> None:
        self.sock.close()


class Layouts:
    """Segments and data-server connections of one open file."""

    def __init__(self, cl: Client, fh: bytes, sid: Any, iomode: int) -> None:
        self.cl, self.fh, self.sid, self.iomode = cl, fh, sid, iomode
        self.segments: list[tuple[int, int, bytes, bytes]] = []  # offset, end, deviceid, ds fh
        self.devices: dict[bytes, DSConn] = {}

    def at(self, offset: int) -> tuple[DSConn, bytes]:
        for lo, hi, dev, fh in self.segments:
            if lo <= offset < hi:
                return self.devices[dev], fh
        args = LayoutGetArgs(False, 4, self.iomode, offset, ALL, 4096, self.sid, 65536)
        res = self.cl.compound([self.cl.putfh(self.fh), (c.OP_LAYOUTGET, args)])
        got = res.results[-1][1].value
        self.sid = got.stateid
        seg = got.layouts[0]
        ds = ff.decode_layout(seg.body).mirrors[0][0]
        if ds.deviceid not in self.devices:
            r = self.cl.compound([(c.OP_GETDEVICEINFO, GetDeviceInfoArgs(ds.deviceid, 4, 0, []))])
            dev = ff.decode_device(r.results[-1][1].value.device.body)
            host, port = ff.parse_netaddr(dev.netaddrs[0])
            self.devices[ds.deviceid] = DSConn(host, port, int(ds.user), int(ds.group))
        end = ALL if seg.length == ALL else seg.offset + seg.length
        self.segments.append((seg.offset, end, ds.deviceid, ds.fhs[0]))
        return self.devices[ds.deviceid], ds.fhs[0]

    def finish(self, size: int | None) -> None:
        for conn in self.devices.values():
            conn.drain()
        if size is not None:
            for dev, fh in {(dev, fh) for _, _, dev, fh in self.segments}:
                self.devices[dev].commit(fh)
            commit = LayoutCommitArgs(
                0, ALL, False, self.sid, Arm(True, size - 1), Arm(False), LayoutUpdate(4, b"")
            )
            self.cl.compound([self.cl.putfh(self.fh), (c.OP_LAYOUTCOMMIT, commit)])
        ret = LayoutReturnArgs(False, 4, 3, Arm(1, LayoutReturnFile(0, ALL, self.sid, b"")))
        self.cl.compound([self.cl.putfh(self.fh), (c.OP_LAYOUTRETURN, ret)])
        for conn in self.devices.values():
            conn.close()


def _open(cl: Client, d: bytes, name: bytes, create: bool) -> tuple[bytes, Any]:
    op = cl.open_create(name, b"w") if create else cl.open_read(name, b"r")
    res = cl.compound([cl.putfh(d), op, (c.OP_GETFH, None)])
    return res.results[-1][1].value, res.results[-2][1].value.stateid


def write(cl: Client, d: bytes, name: bytes, size: int, pnfs: bool) -> float:
    block = os.urandom(IO)
    start = time.perf_counter()
    fh, sid = _open(cl, d, name, True)
    if pnfs:
        lay = Layouts(cl, fh, sid, c.LAYOUTIOMODE4_RW)
        for off in range(0, size, IO):
            conn, dsfh = lay.at(off)
            if len(conn.inflight) >= DEPTH:
                conn.wait(conn.inflight[0])
            conn.write(dsfh, off, block)
        lay.finish(size)
    else:
        inflight: list[int] = []
        for off in range(0, size, IO):
            if len(inflight) >= DEPTH:
                cl.collect(inflight.pop(0))
            inflight.append(
                cl.submit([cl.putfh(fh), (c.OP_WRITE, WriteArgs(sid, off, c.UNSTABLE4, block))])
            )
        for xid in inflight:
            cl.collect(xid)
        cl.compound([cl.putfh(fh), (c.OP_COMMIT, CommitArgs(0, 0))])
    cl.compound([cl.putfh(fh), (c.OP_CLOSE, CloseArgs(0, sid))])
    return time.perf_counter() - start


def read(cl: Client, d: bytes, name: bytes, size: int, pnfs: bool) -> float:
    start = time.perf_counter()
    fh, sid = _open(cl, d, name, False)
    got = 0
    if pnfs:
        lay = Layouts(cl, fh, sid, c.LAYOUTIOMODE4_READ)
        pending: list[tuple[DSConn, int]] = []
        for off in range(0, size, IO):
            conn, dsfh = lay.at(off)
            if len(conn.inflight) >= DEPTH:
                first = conn.inflight[0]
                pending.remove((conn, first))
                got += conn.read_data(first)
            pending.append((conn, conn.read(dsfh, off, IO)))
        for conn, xid in pending:
            got += conn.read_data(xid)
        lay.finish(None)
    else:
        inflight: list[int] = []
        for off in range(0, size, IO):
            inflight.append(cl.submit([cl.putfh(fh), (c.OP_READ, ReadArgs(sid, off, IO))]))
            if len(inflight) >= DEPTH:
                got += len(cl.collect(inflight.pop(0)).results[-1][1].value.data)
        for xid in inflight:
            got += len(cl.collect(xid).results[-1][1].value.data)
    cl.compound([cl.putfh(fh), (c.OP_CLOSE, CloseArgs(0, sid))])
    if got != size:
        raise RuntimeError(f"read {got} bytes, expected {size}")
    return time.perf_counter() - start


CONFIG = """
exports:
  - path: /export
    root_squash: false
    dir_mode: 0777
connection_pool: {min_per_node: 2, max_per_node: 16}
"""


def _cluster(stack: ExitStack, work: Path, n: int, log: Any) -> Any:
    from tests.conformance import servers
    from tests.conformance.framework import running_gateway

    ds = [servers.start_data(work, name=f"data{i}") for i in range(n)]
    for d in ds:
        stack.callback(d.stop)
    meta = servers.start_meta(work, [d.address for d in ds])
    stack.callback(meta.stop)
    return stack.enter_context(
        running_gateway(
            work,
            CONFIG + servers.remote_config(meta),
            backend="remote",
            log=log,
            nfs="pnfs: {enabled: true}",
        )
    )


def measure(n: int, mib: int, runs: int, work: Path, log: Any) -> dict[str, list[float]]:
    size = mib << 20
    out: dict[str, list[float]] = {
        k: [] for k in ("gw_write", "pnfs_write", "gw_read", "pnfs_read")
    }
    work.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        gw = _cluster(stack, work, n, log)
        cl = Client("127.0.0.1", gw.port("nfs"))
        try:
            d = cl.lookup("export")
            for i in range(runs):
                for mode in ("gw", "pnfs"):
                    name = b"%s-%d.bin" % (mode.encode(), i)
                    out[f"{mode}_write"].append(
                        size / write(cl, d, name, size, mode == "pnfs") / 1e6
                    )
                for mode in ("gw", "pnfs"):
                    name = b"%s-%d.bin" % (mode.encode(), i)
                    out[f"{mode}_read"].append(size / read(cl, d, name, size, mode == "pnfs") / 1e6)
                for mode in ("gw", "pnfs"):
                    cl.compound(
                        [cl.putfh(d), (c.OP_REMOVE, NameArgs(b"%s-%d.bin" % (mode.encode(), i)))]
                    )
        finally:
            cl.close()
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pnfs", description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--servers", default="1,2,3")
    p.add_argument("--json")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="cfs-bench-pnfs-"))
    rows = []
    print(
        f"sequential {args.mib} MiB, 1 MiB x {DEPTH} in flight per connection, {args.runs} runs, MB/s"
    )
    print(f"{'data servers':>12} {'op':>6} {'gateway':>9} {'pNFS':>9} {'pNFS/gw':>8}")
    for n in (int(x) for x in args.servers.split(",")):
        got = measure(n, args.mib, args.runs, work / f"n{n}", lambda s: None)
        for op in ("write", "read"):
            gwm = statistics.median(got[f"gw_{op}"])
            pm = statistics.median(got[f"pnfs_{op}"])
            rows.append(
                {
                    "data_servers": n,
                    "op": op,
                    "gateway_MBps": got[f"gw_{op}"],
                    "pnfs_MBps": got[f"pnfs_{op}"],
                    "ratio": pm / gwm,
                }
            )
            print(f"{n:>12} {op:>6} {gwm:>9.1f} {pm:>9.1f} {pm / gwm:>8.2f}")
            sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(
            json.dumps({"mib": args.mib, "runs": args.runs, "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
