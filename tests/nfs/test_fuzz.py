"""
Fuzzing the RPC and NFS decoders with hypothesis: valid calls of every
procedure, mutated (truncated, bit-flipped, spliced, lengths blown up), and
plain garbage, never crash, never hang (everything here is synchronous: a
loop would time the test out), never log an unexpected failure, and do not
grow memory.
"""

from __future__ import annotations

import struct
import tracemalloc
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.core import log
from claudefs_gateway.fstypes import SetAttrs
from claudefs_gateway.nfs.v3 import codec as c
from claudefs_gateway.rpc import message as msg
from claudefs_gateway.rpc.message import AuthSys
from claudefs_gateway.rpc.record import encode_record
from claudefs_gateway.rpc.server import RPCStreamFactory
from claudefs_gateway.rpc.xdr import Unpacker
from tests.nfs.client import Client
from tests.nfs.harness import Harness


def valid_calls(h: Harness, root: bytes, f: bytes) -> list[bytes]:
    """One well-formed call message for every NFSv3 and MOUNT procedure."""
    out: list[bytes] = []

    def capture(prog: int, vers: int, proc: int, args: bytes) -> Unpacker:
        out.append(
            msg.encode_call(len(out) + 1, prog, vers, proc, args, AuthSys(1, b"fz", 0, 0, (1, 2)))
        )
        return Unpacker(b"\0" * 4096)

    cl = Client(capture)
    for call in (
        lambda: cl.null(),
        lambda: cl.getattr(f),
        lambda: cl.setattr(f, SetAttrs(mode=0o600, size=3, atime=10**9), guard=(1, 2)),
        lambda: cl.lookup(root, b"file"),
        lambda: cl.access(f, 0x3F),
        lambda: cl.readlink(f),
        lambda: cl.read(f, 0, 100),
        lambda: cl.write(f, 0, b"abcdefg", c.UNSTABLE),
        lambda: cl.create(root, b"new", c.UNCHECKED, SetAttrs(mode=0o644)),
        lambda: cl.create(root, b"excl", c.EXCLUSIVE, verifier=b"v"),
        lambda: cl.mkdir(root, b"dir"),
        lambda: cl.symlink(root, b"ln", b"target"),
        lambda: cl.mknod(root, b"fifo", c.NF3.FIFO),
        lambda: cl.mknod(root, b"chr", c.NF3.CHR, rdev=(1, 2)),
        lambda: cl.remove(root, b"new"),
        lambda: cl.rmdir(root, b"dir"),
        lambda: cl.rename(root, b"file", root, b"file2"),
        lambda: cl.link(f, root, b"hard"),
        lambda: cl.readdir(root),
        lambda: cl.readdirplus(root),
        lambda: cl.fsstat(root),
        lambda: cl.fsinfo(root),
        lambda: cl.pathconf(root),
        lambda: cl.commit(f),
        lambda: cl.mnt(b"/export"),
        lambda: cl.mount_dump(),
        lambda: cl.umnt(b"/export"),
        lambda: cl.exports(),
    ):
        try:
            call()
        except Exception:
            pass  # the fake reply does not decode; the call message was captured
    return out


mutation = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 10_000)),
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=16)),
    st.tuples(
        st.just("huge"), st.integers(0, 10_000), st.sampled_from([2**32 - 1, 2**31, 65, 1025, 4097])
    ),
    st.tuples(st.just("append"), st.binary(max_size=64)),
)


def mutate(data: bytes, mutations: list[Any]) -> bytes:
    b = bytearray(data)
    for m in mutations:
        if not b:
            break
        kind = m[0]
        if kind == "truncate":
            del b[m[1] % len(b) :]
        elif kind == "flip":
            b[m[1] % len(b)] ^= m[2]
        elif kind == "insert":
            at = m[1] % len(b)
            b[at:at] = m[2]
        elif kind == "huge":
            at = (m[1] % len(b)) & ~3
            b[at : at + 4] = struct.pack(">I", m[2])
        else:
            b += m[1]
    return bytes(b)


class FuzzTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()
        self.root = self.h.root()
        cl = self.h.client(0, 0)
        self.f = cl.create(self.root, b"file", c.GUARDED).fh
        cl.write(self.f, 0, b"some data")
        self.calls = valid_calls(self.h, self.root, self.f)

    def serve(self, data: bytes) -> None:
        out = self.h.server.handle(data, self.h.peer())
        if isinstance(out, Deferred):
            got: list[Any] = []
            out.addBoth(got.append)
            self.assertEqual(len(got), 1, "call did not finish")
            out = got[0]
        self.assertTrue(out is None or isinstance(out, list), out)
        if out:
            reply = msg.parse_reply(b"".join(out))
            self.assertIn(reply.stat, (0, 1, 2, 3, 4) if reply.accepted else (0, 1))

    def test_every_valid_call_is_served(self) -> None:
        self.assertEqual(len(self.calls), 28)
        for data in self.calls:
            self.serve(data)
        self.assertEqual(self.flushLoggedErrors(), [])

    @settings(max_examples=500)
    @given(which=st.integers(0, 10_000), mutations=st.lists(mutation, min_size=1, max_size=4))
    def test_mutated_calls(self, which: int, mutations: list[Any]) -> None:
        """Mutated valid calls get a reply (or are dropped) and log no unexpected failure."""
        self.serve(mutate(self.calls[which % len(self.calls)], mutations))
        self.assertEqual(self.flushLoggedErrors(), [])

    @given(st.binary(max_size=300))
    def test_garbage(self, data: bytes) -> None:
        self.serve(data)
        self.assertEqual(self.flushLoggedErrors(), [])

    @given(st.lists(st.binary(max_size=200), max_size=10), st.integers(1, 50))
    def test_stream_garbage(self, pieces: list[bytes], cut: int) -> None:
        """Garbage on a connection never escapes dataReceived; buffering stays bounded."""
        from twisted.internet.testing import StringTransport

        proto = RPCStreamFactory(self.h.server, 4096, 8).buildProtocol(None)
        proto.makeConnection(StringTransport())
        stream = b"".join(encode_record(p) for p in pieces) + b"".join(pieces)
        for i in range(0, len(stream), cut):
            proto.dataReceived(stream[i : i + cut])
            self.assertLessEqual(proto.reader.buffered, 4096 + 4)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_memory_does_not_grow(self) -> None:
        """Thousands of mutated calls against a read-only export leave memory where it was."""
        ro = self.h.root("/ro")
        calls = valid_calls(self.h, ro, ro)
        import random

        rnd = random.Random(4)

        def batch(n: int) -> None:
            for i in range(n):
                data = bytearray(calls[i % len(calls)])
                for _ in range(rnd.randint(1, 3)):
                    data[rnd.randrange(len(data))] ^= rnd.randint(1, 255)
                self.h.server.handle(bytes(data), self.h.peer(f"10.0.{i % 4}.1"))

        batch(2000)  # warm up caches and the reply cache
        self.flushLoggedErrors()
        # Each bad call logs a warning, which trial -j forwards to its manager
        # asynchronously (holding it in memory meanwhile): measure our memory,
        # not the test runner's.
        previous = log._settings.level
        log.set_level("error")
        self.addCleanup(log.set_level, previous)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            batch(3000)
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        self.assertLess(after - before, 512 * 1024)
        self.assertEqual(self.flushLoggedErrors(), [])
