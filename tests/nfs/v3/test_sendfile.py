"""
NFSv3 READ over a real loopback connection: a large READ whose bytes are all
in the page cache is sent by the kernel from the page cache (C{sendfile}),
never read into the gateway's memory nor copied into the socket by it.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import SkipTest, TestCase

from claudefs_gateway.core import pagecache
from claudefs_gateway.fstypes import SetAttrs
from claudefs_gateway.nfs.v3 import codec as c
from claudefs_gateway.rpc.client import connect_tcp
from claudefs_gateway.rpc.message import AuthSys
from claudefs_gateway.rpc.server import RPCStreamFactory
from claudefs_gateway.rpc.xdr import Packer
from tests.nfs.harness import Harness

MIB = 1 << 20


class Counted:
    """Calls of an C{os} function, with their sizes (the last argument that is an int)."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls: list[tuple[Any, ...]] = []
        self.on_reactor: list[tuple[Any, ...]] = []  # the calls made on the reactor's thread

    def __call__(self, *args: Any) -> Any:
        self.calls.append(args)
        if threading.current_thread() is threading.main_thread():
            self.on_reactor.append(args)
        return self.real(*args)


class FullSocket:
    """
    C{os.sendfile} as when the socket fills: the first call sends at most
    C{first} bytes, the next says EAGAIN; then the real one again.
    """

    def __init__(self, real: Any, first: int) -> None:
        self.real = real
        self.first = first
        self.left = 2

    def __call__(self, out: int, fd: int, offset: int, count: int) -> Any:
        self.left -= 1
        if self.left == 1:
            return self.real(out, fd, offset, min(count, self.first))
        if self.left == 0:
            raise BlockingIOError(11, "EAGAIN")
        return self.real(out, fd, offset, count)


class Evicted:
    """C{os.preadv} as when the pages were evicted: a large C{RWF_NOWAIT} read says EAGAIN."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __call__(self, fd: int, buffers: Any, offset: int, flags: int = 0) -> Any:
        if flags & os.RWF_NOWAIT and sum(len(b) for b in buffers) >= 128 << 10:
            raise BlockingIOError(11, "EAGAIN")
        return self.real(fd, buffers, offset, flags)


class SendfileReadTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        if not pagecache.available():
            raise SkipTest("no cachestat here: large READs are read into memory, as before")
        store = self.mktemp()
        self.h = Harness(store=store)
        self.addCleanup(lambda: self.h.m.backend.close())
        root = self.h.root()
        alice = self.h.client(0, 0)
        r = alice.create(root, b"big", c.GUARDED, SetAttrs(mode=0o644))
        self.assertEqual(r.status, 0)
        self.fh = r.fh
        self.blob = os.urandom(2 * MIB + 4098)  # a tail whose length is not a multiple of 4
        for off in range(0, len(self.blob), MIB):
            self.assertEqual(alice.write(self.fh, off, self.blob[off : off + MIB]).status, 0)
        self.factory = RPCStreamFactory(self.h.server, 2 * MIB)
        port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        self.preadv = Counted(os.preadv)
        self.pread = Counted(os.pread)
        self.sendfile = Counted(os.sendfile)
        self.patch(os, "preadv", self.preadv)
        self.patch(os, "pread", self.pread)
        self.patch(os, "sendfile", self.sendfile)

    async def read(self, client: Any, offset: int, count: int) -> tuple[int, bool, bytes]:
        p = Packer()
        p.opaque(self.fh)
        p.u64(offset)
        p.u32(count)
        u = await client.call(c.NFS_PROGRAM, 3, c.READ, p.bytes(), AuthSys(0, b"t", 0, 0))
        self.assertEqual(u.u32(), 0)
        c.dec_post_op_attr(u)
        n = u.u32()
        eof = u.bool()
        data = u.opaque(1 << 30)
        self.assertEqual(n, len(data))
        return n, eof, data

    async def test_large_read_by_sendfile(self) -> None:
        """
        A 1 MiB READ from the page cache: the right bytes, one sendfile of
        the 1 MiB and no read of the data into the gateway (before: a
        preadv of 1 MiB into a buffer, a 1 MiB bytes copy, a sendmsg that
        copied it again).
        """
        client = await connect_tcp(reactor, "127.0.0.1", self.port)
        self.addCleanup(client.close)
        await self.read(client, 0, 10)  # the first READ of a file takes the general path
        del self.preadv.calls[:], self.pread.calls[:], self.sendfile.calls[:]
        n, eof, data = await self.read(client, MIB, MIB)
        self.assertEqual((n, eof, data), (MIB, False, self.blob[MIB : 2 * MIB]))
        self.assertEqual([a[3] for a in self.sendfile.calls], [MIB])
        self.assertEqual((self.preadv.calls, self.pread.calls), ([], []))
        # The tail: a length not a multiple of 4 (XDR padding follows the range).
        tail = len(self.blob) - 70002
        n, eof, data = await self.read(client, tail, MIB)
        self.assertEqual((n, eof, data), (70002, True, self.blob[tail:]))
        self.assertEqual([a[3] for a in self.sendfile.calls], [MIB, 70002])
        self.assertEqual((self.preadv.calls, self.pread.calls), ([], []))

    async def test_small_read_is_copied(self) -> None:
        """A 4 KiB READ is read into memory as before (a range costs more than the copy)."""
        client = await connect_tcp(reactor, "127.0.0.1", self.port)
        self.addCleanup(client.close)
        await self.read(client, 0, 10)
        del self.preadv.calls[:], self.sendfile.calls[:]
        n, eof, data = await self.read(client, 4096, 4096)
        self.assertEqual(data, self.blob[4096:8192])
        self.assertEqual((len(self.preadv.calls), self.sendfile.calls), (1, []))

    async def test_pipelined_reads(self) -> None:
        """
        Several large READs in one socket read: each reply is sent before
        the next call runs, in order, all whole (the batch of replies made
        while draining calls is flushed ahead of a range).
        """
        client = await connect_tcp(reactor, "127.0.0.1", self.port)
        self.addCleanup(client.close)
        await self.read(client, 0, 10)
        got = await _gather(
            [self.read(client, off, MIB // 2) for off in range(0, 2 * MIB, MIB // 2)]
        )
        self.assertEqual(b"".join(g[2] for g in got), self.blob[: 2 * MIB])

    async def test_partial_send_rest_without_waiting(self) -> None:
        """
        The socket takes 256 KiB of a 1 MiB range: the rest is read from
        the page cache without waiting for the disk (one RWF_NOWAIT preadv
        of the 768 KiB), never by a pread that could stop the reactor on
        the disk (before: a plain pread of the 768 KiB on its thread).
        """
        client = await connect_tcp(reactor, "127.0.0.1", self.port)
        self.addCleanup(client.close)
        await self.read(client, 0, 10)
        del self.preadv.calls[:], self.pread.calls[:], self.sendfile.calls[:]
        self.sendfile.real = FullSocket(os.sendfile.real, 256 << 10)  # type: ignore[attr-defined]
        n, eof, data = await self.read(client, 0, MIB)
        self.assertEqual((n, eof, data), (MIB, False, self.blob[:MIB]))
        self.assertEqual([a[3] for a in self.sendfile.calls], [MIB, MIB - (256 << 10)])
        self.assertEqual(self.pread.calls, [])
        self.assertEqual(
            [(a[2], a[3], sum(len(b) for b in a[1])) for a in self.preadv.calls],
            [(256 << 10, os.RWF_NOWAIT, MIB - (256 << 10))],
        )

    async def test_evicted_rest_read_in_thread(self) -> None:
        """
        The socket takes part of a range and the rest's pages were evicted
        meanwhile: the rest is read in a thread, never on the reactor's, and
        the replies of the READs pipelined after it wait for it (each reply
        whole and in order on the stream: the client parses them all).
        """
        client = await connect_tcp(reactor, "127.0.0.1", self.port)
        self.addCleanup(client.close)
        await self.read(client, 0, 10)
        self.sendfile.real = FullSocket(os.sendfile.real, 256 << 10)  # type: ignore[attr-defined]
        self.preadv.real = Evicted(os.preadv.real)  # type: ignore[attr-defined]
        del self.pread.calls[:], self.pread.on_reactor[:]
        got = await _gather(
            [
                self.read(client, 0, MIB),
                self.read(client, MIB, 4096),
                self.read(client, MIB + 4096, 4096),
            ]
        )
        self.assertEqual(
            [g[2] for g in got],
            [self.blob[:MIB], self.blob[MIB : MIB + 4096], self.blob[MIB + 4096 : MIB + 8192]],
        )
        self.assertEqual([a[1] for a in self.pread.calls], [MIB - (256 << 10)])
        self.assertEqual(self.pread.on_reactor, [])
        # And the connection goes on as before.
        n, eof, data = await self.read(client, MIB, MIB)
        self.assertEqual(data, self.blob[MIB : 2 * MIB])

    async def test_connection_lost_during_the_thread_read(self) -> None:
        """
        The client goes while the rest of a range is read in a thread: the
        read's own descriptor is closed when it ends, nothing is written or
        logged as an error (trial fails a test that logs one), and the
        connection's counts go back to zero.
        """
        built: list[Any] = []
        real_build = self.factory.buildProtocol

        def build(addr: Any) -> Any:
            built.append(real_build(addr))
            return built[-1]

        self.patch(self.factory, "buildProtocol", build)
        client = await connect_tcp(reactor, "127.0.0.1", self.port)
        await self.read(client, 0, 10)
        self.sendfile.real = FullSocket(os.sendfile.real, 256 << 10)  # type: ignore[attr-defined]
        self.preadv.real = Evicted(os.preadv.real)  # type: ignore[attr-defined]
        dups = Counted(os.dup)
        self.patch(os, "dup", dups)
        gate = threading.Event()
        started: defer.Deferred[None] = defer.Deferred()
        finished: defer.Deferred[None] = defer.Deferred()
        real_pread = self.pread.real

        def held_pread(fd: int, n: int, offset: int) -> bytes:
            reactor.callFromThread(started.callback, None)
            gate.wait(10)
            try:
                return real_pread(fd, n, offset)
            finally:
                reactor.callFromThread(finished.callback, None)

        self.pread.real = held_pread
        call = defer.Deferred.fromCoroutine(self.read(client, 0, MIB))
        call.addErrback(lambda f: None)  # the connection goes before the reply
        await started
        (proto,) = built
        lost: defer.Deferred[None] = defer.Deferred()
        proto.on_close.append(lambda p: lost.callback(None))
        client.close()
        await lost
        gate.set()
        await finished
        await _turn()  # the read's result reaches the reactor
        self.assertEqual(len(dups.calls), 1)
        self.assertEqual((proto._later, proto._held, proto.pending), (None, 0, set()))


async def _turn() -> None:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(0, d.callback, None)
    await d


async def _gather(coros: list[Any]) -> list[Any]:
    from twisted.internet import defer

    return list(await defer.gatherResults([defer.Deferred.fromCoroutine(x) for x in coros]))
