"""
``python -m bench.nfs_micro``: what one NFSv3 call costs the gateway, in process.

Not a workload of ``python -m bench`` (those drive real clients over the
wire and compare with Ganesha): this feeds framed calls to the gateway's own
RPC stream protocol (record marking, RPC, NFSv3, vfs, embedded store on its
writer thread, a real reactor) over an in-memory transport, and prints the
microseconds of CPU per call. What it leaves out is the kernel's share (the
socket reads and writes), which is the same for any server; what it keeps is
everything a profile of the gateway can change, without the noise of a
shared machine's network and disk.

    python -m bench.nfs_micro                 # every call, table
    python -m bench.nfs_micro --only GETATTR --cprofile   # where GETATTR's time goes
    python -m bench.nfs_micro --durable       # with fsync (metadata calls then wait for the disk)
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from claudefs_gateway.backend.embedded import EmbeddedBackend
from claudefs_gateway.core import config as cfg
from claudefs_gateway.core.malloc import keep_freed_memory
from claudefs_gateway.core.metrics import Metrics, RequestMetrics
from claudefs_gateway.nfs.context import NFSContext
from claudefs_gateway.nfs.v3 import codec as c
from claudefs_gateway.nfs.v3.procs import NFS3
from claudefs_gateway.rpc import message as msg
from claudefs_gateway.rpc.drc import ReplyCache
from claudefs_gateway.rpc.message import AuthSys
from claudefs_gateway.rpc.record import record_marker
from claudefs_gateway.rpc.server import RPCServer, RPCStreamProtocol
from claudefs_gateway.rpc.xdr import Packer, Unpacker
from claudefs_gateway.vfs import VFS, UserDB

CONFIG = "exports: [{path: /export, root_squash: false}]\n"
CRED = AuthSys(0, b"bench", os.getuid(), os.getgid(), ())


class Sink(StringTransport):
    """
    A transport that counts what is written and keeps none of it (no
    copies), but for a reference to the last write's pieces (the listing
    case reads its cookies from there).
    """

    written = 0
    last: Any = ()

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self.last = (data,)

    def writeSequence(self, seq: Any) -> None:
        for part in seq:
            self.written += len(part)
        self.last = seq


class Stack:
    """The gateway's NFS stack over a fresh embedded store, one connection."""

    def __init__(
        self,
        reactor: Any,
        where: Path,
        durable: bool,
        data_threads: int | None = None,
        inline_max: int = 4096,
    ) -> None:
        self.reactor = reactor
        self.where = where
        kw: dict[str, Any] = {"inline_max": inline_max}
        if data_threads is not None:
            kw["data_threads"] = data_threads
        self.backend = EmbeddedBackend(where / "store", reactor, durable=durable, **kw)
        self.metrics = Metrics()
        self.xid = 0

    async def open(self) -> None:
        await self.backend.open()
        config = cfg.loads(CONFIG)
        self.vfs = VFS(
            self.backend,
            config,
            self.reactor,
            os.urandom(32),
            UserDB(self.reactor, inline=[]),
            self.metrics,
        )
        await self.vfs.open()
        ctx = NFSContext(lambda: defer.succeed(self.vfs))
        server = RPCServer(ReplyCache(1024))
        server.add(NFS3(ctx, RequestMetrics(self.metrics, "nfs3")).program())
        self.proto = RPCStreamProtocol(server, 4 << 20, 128, None)
        self.transport = Sink()
        self.proto.makeConnection(self.transport)
        export = self.vfs.exports.by_path("/export")
        assert export is not None
        self.export = export
        root = await self.backend.getattr(export.root_ino)
        self.root = self.vfs.handle(export, root)

    def record(self, proc: int, args: bytes) -> bytes:
        self.xid += 1
        call = msg.encode_call(self.xid, c.NFS_PROGRAM, c.NFS_V3, proc, args, CRED)
        return record_marker(len(call)) + call

    async def call(self, rec: bytes) -> None:
        """Feed one framed call; wait until its reply is written."""
        self.proto.dataReceived(rec)
        if self.proto.pending:
            await defer.gatherResults(list(self.proto.pending))

    def replies(self) -> int:
        """Bytes written since the last call."""
        out = self.transport.written
        self.transport.written = 0
        return out


def _fh(h: bytes) -> bytes:
    p = Packer()
    p.opaque(h)
    return p.bytes()


def _dirop(h: bytes, name: bytes) -> bytes:
    p = Packer()
    p.opaque(h)
    p.string(name)
    return p.bytes()


_SATTR_MODE = b"\0\0\0\1\0\0\x01\xa4" + b"\0\0\0\0" * 3 + b"\0\0\0\0" * 2


def _page_end(reply: bytes) -> tuple[int, bytes, int, bool]:
    """
    A READDIRPLUS reply record's entry count, verifier, last cookie and eof
    (the client's side of the listing case, outside its measured CPU).
    """
    body = reply[4:]
    u = Unpacker(body, msg.parse_reply(body).results_at)
    if u.u32() != 0:
        raise RuntimeError("READDIRPLUS failed")
    c.dec_post_op_attr(u)
    verf = u.fixed(8)
    n = cookie = 0
    while u.bool():
        u.u64()
        u.opaque(1024)
        cookie = u.u64()
        c.dec_post_op_attr(u)
        c.dec_post_op_fh(u)
        n += 1
    return n, verf, cookie, u.bool()


async def run(reactor: Any, args: argparse.Namespace) -> None:
    where = Path(tempfile.mkdtemp(prefix="cfs-micro-", dir=args.dir))
    s = Stack(reactor, where, args.durable, args.data_threads, args.inline_max)
    await s.open()
    caller = s.vfs.caller(s.export, "127.0.0.1", _creds(), "nfs3")
    f = await s.vfs.create(caller, s.export.root_ino, b"f", 0o644)
    block = os.urandom(1 << 20)
    for i in range(64):
        await s.vfs.write(caller, f.ino, i << 20, block, False)
    await s.vfs.commit(caller, f.ino)
    fh = s.vfs.handle(s.export, f)
    d = await s.vfs.mkdir(caller, s.export.root_ino, b"d", 0o755)
    dh = s.vfs.handle(s.export, d)
    for i in range(500):
        await s.vfs.create(caller, d.ino, b"e%05d" % i, 0o644)
    # As nfs.small_files leaves them: 4 KiB each (inline in the store's database).
    d4 = await s.vfs.mkdir(caller, s.export.root_ino, b"d4", 0o755)
    d4h = s.vfs.handle(s.export, d4)
    page = os.urandom(4096)
    for i in range(500):
        made = await s.vfs.create(caller, d4.ino, b"f%05d" % i, 0o644)
        await s.vfs.write(caller, made.ino, 0, page, False)

    def read_args(off: int, n: int) -> bytes:
        p = Packer()
        p.opaque(fh)
        p.u64(off)
        p.u32(n)
        return p.bytes()

    def write_args(off: int, data: bytes, stable: int) -> bytes:
        p = Packer()
        p.opaque(fh)
        p.u64(off)
        p.u32(len(data))
        p.u32(stable)
        p.opaque(data)
        return p.bytes()

    def readdirplus_args(cookie: int, verf: bytes, where: bytes = dh) -> bytes:
        p = Packer()
        p.opaque(where)
        p.u64(cookie)
        p.fixed(verf, 8)
        p.u32(8192)
        p.u32(65536)
        return p.bytes()

    small = os.urandom(4096)
    rnd = [((i * 7919) % 16384) * 4096 for i in range(4096)]
    counter = [0]

    def create_rec(i: int) -> bytes:
        counter[0] += 1
        p = Packer()
        p.opaque(s.root)
        p.string(b"c%08d" % counter[0])
        p.u32(c.UNCHECKED)
        return s.record(c.CREATE, p.bytes() + _SATTR_MODE)

    def remove_rec(i: int) -> bytes:
        return s.record(c.REMOVE, _dirop(s.root, b"c%08d" % (counter[0] - i)))

    async def small_file(i: int) -> None:
        """What libnfs sends per file of nfs.small_files: CREATE, SETATTR size 0, WRITE, COMMIT."""
        await s.call(create_rec(i))
        got = await s.vfs.lookup(caller, s.export.root_ino, b"c%08d" % counter[0])
        h = s.vfs.handle(s.export, got)
        size0 = b"\0\0\0\0" * 3 + b"\0\0\0\1" + bytes(8) + bytes(8)
        await s.call(s.record(c.SETATTR, _fh(h) + size0 + b"\0\0\0\0"))
        p = Packer()
        p.opaque(h)
        p.u64(0)
        p.u32(4096)
        p.u32(c.UNSTABLE)
        p.opaque(small)
        await s.call(s.record(c.WRITE, p.bytes()))
        await s.call(s.record(c.COMMIT, _fh(h) + bytes(12)))

    cases: list[tuple[str, int, Callable[[int], Any]]] = [
        ("NULL", 20000, lambda i: s.record(c.NULL, b"")),
        ("GETATTR", 20000, lambda i: s.record(c.GETATTR, _fh(fh))),
        ("ACCESS", 20000, lambda i: s.record(c.ACCESS, _fh(fh) + b"\0\0\0\x3f")),
        ("LOOKUP", 20000, lambda i: s.record(c.LOOKUP, _dirop(dh, b"e%05d" % (i % 500)))),
        ("READ 4 KiB", 20000, lambda i: s.record(c.READ, read_args(rnd[i % 4096], 4096))),
        ("READ 1 MiB", 500, lambda i: s.record(c.READ, read_args((i % 64) << 20, 1 << 20))),
        ("WRITE 4 KiB unstable", 5000, lambda i: s.record(c.WRITE, write_args(i * 4096, small, 0))),
        ("WRITE 1 MiB unstable", 300, lambda i: s.record(c.WRITE, write_args(i << 20, block, 0))),
        ("COMMIT", 500, lambda i: s.record(c.COMMIT, _fh(fh) + bytes(12))),
        ("CREATE", 2000, create_rec),
        ("REMOVE", 2000, remove_rec),
        ("small file: CREATE SETATTR WRITE COMMIT", 500, small_file),
        ("small file: REMOVE", 500, remove_rec),
        (
            "READDIRPLUS (500 entries, per entry)",
            100,
            lambda i: s.record(c.READDIRPLUS, readdirplus_args(0, bytes(8))),
        ),
        (
            "READDIRPLUS (500 4 KiB files, per entry)",
            100,
            lambda i: s.record(c.READDIRPLUS, readdirplus_args(0, bytes(8), d4h)),
        ),
    ]
    print(f"{'call':<40} {'us/call':>9} {'CPU us':>9}   (store in {where}, durable={args.durable})")
    for name, n, make in cases:
        if args.only and args.only not in name:
            continue
        n = max(1, n * args.scale // 100)
        composite = name.startswith("small file:") and "REMOVE" not in name
        recs = [] if composite else [make(i) for i in range(n)]
        if name.startswith("READDIRPLUS"):
            per = 500
        else:
            per = 1
        prof = cProfile.Profile() if args.cprofile else None
        walls, cpus = [], []
        for rep in range(args.reps):
            if rep and ("CREATE" in name or "REMOVE" in name):
                break  # each rep would create (or remove) the same names again
            s.replies()
            t0, c0 = time.perf_counter(), time.process_time()
            if prof is not None:
                prof.enable()
            if composite:
                for i in range(n):
                    await make(i)
            for rec in recs:
                await s.call(rec)
            if prof is not None:
                prof.disable()
            walls.append((time.perf_counter() - t0) / n / per)
            cpus.append((time.process_time() - c0) / n / per)
            out = s.replies()
            if out < n * 28:
                raise RuntimeError(f"{name}: {out} bytes of replies for {n} calls")
        print(
            f"{name:<40} {statistics.median(walls) * 1e6:9.1f} {statistics.median(cpus) * 1e6:9.1f}",
            flush=True,
        )
        if prof is not None:
            stats = pstats.Stats(prof, stream=sys.stdout)
            stats.sort_stats("tottime").print_stats(args.top)
    if not args.only or args.only in _LIST:
        await _list_case(s, caller, page, args)
    await s.backend.close()
    shutil.rmtree(where)


_LIST = "list: LOOKUP + READDIRPLUS 8 KiB pages after creates, per entry"


async def _list_case(s: Stack, caller: Any, page: bytes, args: argparse.Namespace) -> None:
    """
    What nfs.small_files's list phase asks of the gateway: libnfs's
    C{opendir} is a LOOKUP of the directory, then READDIRPLUS with dircount
    and maxcount 8192 from cookie 0 to eof (about 46 entries a page), right
    after the files were made. Each repetition lists a directory of 500
    fresh 4 KiB files (made outside the measured CPU, their handles made
    as the CREATE replies make them), as the bench's one listing does; the
    figure is CPU per listed file.
    """
    n = max(1, 500 * args.scale // 100)
    prof = cProfile.Profile() if args.cprofile else None
    walls, cpus = [], []
    pages = 0
    spent = [0.0, 0.0]  # wall, CPU seconds of the calls

    async def timed(rec: bytes) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        if prof is not None:
            prof.enable()
        await s.call(rec)
        if prof is not None:
            prof.disable()
        spent[0] += time.perf_counter() - t0
        spent[1] += time.process_time() - c0

    for rep in range(args.reps):
        name = b"list%d" % rep
        d = await s.vfs.mkdir(caller, s.export.root_ino, name, 0o755)
        for i in range(n):
            made = await s.vfs.create(caller, d.ino, b"f%05d" % i, 0o644)
            s.vfs.handle(s.export, made)  # as the CREATE's reply makes it
            await s.vfs.write(caller, made.ino, 0, page, False)
            await s.vfs.commit(caller, made.ino)
        dh = s.vfs.handle(s.export, d)
        spent[:] = [0.0, 0.0]
        await timed(s.record(c.LOOKUP, _dirop(s.root, name)))
        got = pages = 0
        cookie, verf, eof = 0, bytes(8), False
        while not eof:
            p = Packer()
            p.opaque(dh)
            p.u64(cookie)
            p.fixed(verf, 8)
            p.u32(8192)  # dircount
            p.u32(8192)  # maxcount
            await timed(s.record(c.READDIRPLUS, p.bytes()))
            k, verf, cookie, eof = _page_end(b"".join(s.transport.last))
            got += k
            pages += 1
        if got != n + 2:
            raise RuntimeError(f"listed {got} entries of {n + 2}")
        walls.append(spent[0] / n)
        cpus.append(spent[1] / n)
    print(
        f"{_LIST:<40} {statistics.median(walls) * 1e6:9.1f} "
        f"{statistics.median(cpus) * 1e6:9.1f}   ({pages} pages)",
        flush=True,
    )
    if prof is not None:
        stats = pstats.Stats(prof, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(args.top)


def _creds() -> Any:
    from claudefs_gateway.fstypes import Credentials

    return Credentials(CRED.uid, CRED.gid, CRED.gids)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default=None, help="where to make the scratch store")
    p.add_argument("--only", default="", help="only the calls whose name contains this")
    p.add_argument("--reps", type=int, default=3, help="repetitions (the median is printed)")
    p.add_argument("--scale", type=int, default=100, help="percent of the default call counts")
    p.add_argument("--durable", action="store_true", help="fsync as in production")
    p.add_argument("--cprofile", action="store_true", help="cProfile each call's loop")
    p.add_argument("--data-threads", type=int, default=None, help="the store's data writer threads")
    p.add_argument(
        "--inline-max",
        type=int,
        default=4096,
        help="the store's backend.inline_max_bytes (0: small files in data files, as before)",
    )
    p.add_argument("--top", type=int, default=25, help="rows of the cProfile table")
    args = p.parse_args()
    keep_freed_memory()  # as the NFS service does
    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor, args)))


if __name__ == "__main__":
    main()
