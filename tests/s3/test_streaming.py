"""
Memory stays flat while a large object streams in and out of a real gateway
process (issue #5: "memory stays flat while a 5 GiB object moves"; the 5 GiB
run is in bench/workloads/s3.py, this test moves 256 MiB each way).

The gateway runs as its own process so its peak resident memory can be read
from /proc (VmHWM, reset between phases by writing 5 to clear_refs). It runs on
the embedded store (objects on disk), so both phases get the same small bound;
with CFS_S3_TEST_BACKEND=memory the stored object itself is resident and the
PUT's allowance grows by its size.
"""

from __future__ import annotations

import hashlib
import os
import sys

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IPushProducer
from twisted.trial.unittest import TestCase

from zope.interface import implementer

from tests.helpers import REPO, bin_path, kill_on_cleanup, spawn, write_config
from tests.s3.harness import BACKEND, USERS, Client, raw_request

SIZE = 256 * 1024 * 1024
BLOCK = 1024 * 1024
# What the gateway may hold beyond the stored data: its body pipe (4 MiB), a read-ahead
# block, hashing buffers, interpreter and allocator slack.
BOUND = 64 * 1024 * 1024


def block(i: int) -> bytes:
    """Block C{i} of the test object: distinct, cheap to make again."""
    return i.to_bytes(8, "big") * (BLOCK // 8)


def vm(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(field)


def reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


@implementer(IPushProducer)
class Upload(protocol.Protocol):
    """Send headers, then SIZE bytes a block at a time as the socket drains."""

    def __init__(self, head: bytes) -> None:
        self.head = head
        self.i = 0
        self.paused = False
        self.received = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        self.transport.write(self.head)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.i < SIZE // BLOCK:
            self.transport.write(block(self.i))
            self.i += 1

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if b"\r\n\r\n" in self.received and not self.done.called:
            self.done.callback(self.received)
            self.transport.loseConnection()


class Download(protocol.Protocol):
    """GET, hashing the body as it comes, keeping none of it."""

    def __init__(self, head: bytes) -> None:
        self.head = head
        self.buf = b""
        self.header_done = False
        self.count = 0
        self.md5 = hashlib.md5()
        self.done: defer.Deferred[str] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.head)

    def dataReceived(self, data: bytes) -> None:
        if not self.header_done:
            self.buf += data
            if b"\r\n\r\n" not in self.buf:
                return
            _, _, data = self.buf.partition(b"\r\n\r\n")
            self.header_done = True
        self.count += len(data)
        self.md5.update(data)
        if self.count >= SIZE and not self.done.called:
            self.done.callback(self.md5.hexdigest())
            self.transport.loseConnection()

    def connectionLost(self, reason: object = None) -> None:
        if not self.done.called:
            self.done.errback(AssertionError(f"connection closed after {self.count} bytes"))


class StreamingMemoryTests(TestCase):
    timeout = 300

    async def test_memory_flat_both_ways(self) -> None:
        data = os.path.abspath(self.mktemp())
        config = os.path.abspath(
            write_config(
                self,
                f"""
log_format: json
backend: {{type: {BACKEND}, data_dir: "{data}"}}
admin: {{bind: "127.0.0.1:0"}}
s3: {{bind: "127.0.0.1:0", root: /s3, root_mode: 01777}}
{USERS}
""",
            )
        )
        proc = spawn([bin_path("cfs-gateway"), "start", "s3", "--config", config], path=REPO)
        kill_on_cleanup(self, proc)
        port = await proc.wait_listening("s3")
        pid = proc.pid
        assert pid is not None
        c = Client(port)
        self.addCleanup(c.close)
        r = await c.request("PUT", "/big")
        self.assertEqual(r.status, 200, r.body)
        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", port)

        # In: 256 MiB, UNSIGNED-PAYLOAD, through a socket, as fast as the gateway takes it.
        base = vm(pid, "VmRSS")
        reset_peak(pid)
        url, headers = c.sign(
            "PUT", c.url("/big/object"), {"Content-Length": str(SIZE)}, unsigned=True
        )
        up = Upload(raw_request("PUT", url, headers))
        await ep.connect(protocol.Factory.forProtocol(lambda: up))
        reply = await up.done
        self.assertIn(b"200 OK", reply.split(b"\r\n")[0])
        grew_in = vm(pid, "VmHWM") - base
        want = hashlib.md5()
        for i in range(SIZE // BLOCK):
            want.update(block(i))
        self.assertIn(want.hexdigest().encode(), reply.lower())

        # Out: the same object back, to a client reading as fast as it can.
        base = vm(pid, "VmRSS")
        reset_peak(pid)
        url, headers = c.sign("GET", c.url("/big/object"))
        down = Download(raw_request("GET", url, headers))
        await ep.connect(protocol.Factory.forProtocol(lambda: down))
        self.assertEqual(await down.done, want.hexdigest())
        grew_out = vm(pid, "VmHWM") - base

        sys.stderr.write(f"\npeak RSS growth: PUT {grew_in >> 20} MiB, GET {grew_out >> 20} MiB\n")
        # The memory backend keeps the stored object resident; a store on disk does not.
        stored = SIZE if BACKEND == "memory" else 0
        self.assertLess(grew_in, stored + BOUND)
        self.assertLess(grew_out, BOUND)
        await c.close()
        proc.signal("TERM")
        await proc.ended
