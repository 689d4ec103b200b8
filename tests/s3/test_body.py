"""Tests for L{claudefs_gateway.s3.body}: bounded buffers and back-pressure both ways."""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.s3.body import Body, BodyPipe, ClientGone, ObjectProducer
from claudefs_gateway.s3.errors import S3Error


class FakeProducer:
    def __init__(self) -> None:
        self.paused = False
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.paused = True
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.paused = False
        self.calls.append("resume")


class PipeTests(SynchronousTestCase):
    def test_back_pressure(self) -> None:
        """Above the high mark the connection is paused; read down to the low mark, resumed."""
        p = FakeProducer()
        pipe = BodyPipe(p, high=100, low=40)
        for _ in range(10):
            pipe.feed(b"x" * 20)
        self.assertTrue(p.paused)
        self.assertLessEqual(pipe.buffered, 200)
        got = self.successResultOf(defer.Deferred.fromCoroutine(pipe.read(150)))
        self.assertEqual(len(got), 150)
        self.assertTrue(p.paused)  # 50 left: still above the low mark
        self.successResultOf(defer.Deferred.fromCoroutine(pipe.read(20)))
        self.assertFalse(p.paused)

    def test_continue_on_first_read(self) -> None:
        sent: list[int] = []
        pipe = BodyPipe(None, on_first_read=lambda: sent.append(1))
        d = defer.Deferred.fromCoroutine(pipe.read())
        self.assertEqual(sent, [1])
        pipe.feed(b"abc")
        self.assertEqual(self.successResultOf(d), b"abc")
        pipe.finish()
        self.assertEqual(self.successResultOf(defer.Deferred.fromCoroutine(pipe.read())), b"")
        self.assertEqual(sent, [1])

    def test_client_gone(self) -> None:
        pipe = BodyPipe(None)
        d = defer.Deferred.fromCoroutine(pipe.read())
        pipe.fail(ConnectionError("gone"))
        self.failureResultOf(d, ClientGone)

    def test_discard(self) -> None:
        p = FakeProducer()
        pipe = BodyPipe(p, high=10, low=5)
        pipe.feed(b"x" * 20)
        pipe.discard()
        pipe.feed(b"y" * 1000)
        self.assertEqual((pipe.buffered, pipe.discarded, p.paused), (0, 1020, False))


class BodyTests(SynchronousTestCase):
    def read_all(self, body: Body) -> bytes:
        out = b""
        while True:
            data = self.successResultOf(defer.Deferred.fromCoroutine(body.read()))
            if not data:
                return out
            out += data

    def test_length_enforced(self) -> None:
        for data, length in [(b"abc", 4), (b"abcde", 4)]:
            pipe = BodyPipe(None)
            pipe.feed(data)
            pipe.finish()
            body = Body(pipe, length)
            f = self.failureResultOf(defer.Deferred.fromCoroutine(_drain(body)), S3Error)
            self.assertEqual(f.value.code, "IncompleteBody")

    def test_chunked_trailer(self) -> None:
        pipe = BodyPipe(None)
        pipe.feed(b"3\r\nabc\r\n0\r\nx-amz-checksum-crc32:NSRBwg==\r\n\r\n")
        pipe.finish()
        body = Body(pipe, 3, chunked=True, trailer="x-amz-checksum-crc32")
        self.assertEqual(self.read_all(body), b"abc")
        self.assertEqual(body.trailers, {"x-amz-checksum-crc32": "NSRBwg=="})


async def _drain(body: Body) -> None:
    while await body.read():
        pass


class Consumer:
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.producer: object = None

    def registerProducer(self, producer: object, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.data.append(data)


class ProducerTests(SynchronousTestCase):
    def test_pauses(self) -> None:
        """Paused, no more reads go out; resumed, the rest follows, a block at a time."""
        blob = bytes(range(256)) * 40
        reads: list[defer.Deferred[bytes]] = []

        def read(off: int, n: int) -> defer.Deferred[bytes]:
            d: defer.Deferred[bytes] = defer.Deferred()
            d.addCallback(lambda _: blob[off : off + n])
            reads.append(d)
            return d

        c = Consumer()
        prod = ObjectProducer(read, c, 100, 5000, block=1000)
        done = prod.start()
        reads[0].callback(None)
        prod.pauseProducing()
        reads[1].callback(None)  # the read-ahead completes...
        self.assertEqual(len(reads), 3)  # ...and no further read is issued while paused
        prod.resumeProducing()
        while not done.called:
            reads[-1].callback(None)
        self.successResultOf(done)
        self.assertEqual(b"".join(c.data), blob[100:5100])
        self.assertIsNone(c.producer)


class ShortReadTests(SynchronousTestCase):
    def test_object_shrinks(self) -> None:
        """The file ends before the promised length: ShortRead, so the connection is cut."""
        from claudefs_gateway.s3.body import ShortRead

        def read(off: int, n: int) -> defer.Deferred[bytes]:
            return defer.succeed(b"x" * n if off < 1000 else b"")

        c = Consumer()
        d = ObjectProducer(read, c, 0, 5000, block=1000).start()
        self.failureResultOf(d, ShortRead)
        self.assertEqual(b"".join(c.data), b"x" * 1000)
        self.assertIsNone(c.producer)


class GoneRequest(Consumer):
    """A consumer that behaves as a twisted.web Request whose connection was lost."""

    def __init__(self) -> None:
        super().__init__()
        self.channel: object = object()
        self._disconnected = False

    def lose(self) -> None:
        self.channel = None
        self._disconnected = True

    def unregisterProducer(self) -> None:
        if self.channel is None:
            raise AttributeError("'NoneType' object has no attribute 'unregisterProducer'")
        super().unregisterProducer()


class ClientGoneTests(SynchronousTestCase):
    def test_stopped_while_a_read_is_pending(self) -> None:
        """
        The connection closes while a block is being read from the store: when
        the read returns, the producer neither writes nor unregisters from the
        dead request, and fails with ClientGone (logged at debug, never an error).
        """
        reads: list[defer.Deferred[bytes]] = []

        def read(off: int, n: int) -> defer.Deferred[bytes]:
            d: defer.Deferred[bytes] = defer.Deferred()
            reads.append(d)
            return d

        c = GoneRequest()
        prod = ObjectProducer(read, c, 0, 5000, block=1000)
        done = prod.start()
        prod.stopProducing()  # the transport, as the connection closes
        c.lose()  # then the request's connectionLost
        reads[0].callback(b"x" * 1000)
        self.failureResultOf(done, ClientGone)
        self.assertEqual(c.data, [])

    def test_stopped_while_paused(self) -> None:
        """Stopped while paused with the request still attached: it unregisters, then ClientGone."""
        c = GoneRequest()
        prod = ObjectProducer(lambda off, n: defer.succeed(b"y" * n), c, 0, 5000, block=1000)
        prod.pauseProducing()
        done = prod.start()
        prod.stopProducing()
        self.failureResultOf(done, ClientGone)
        self.assertIsNone(c.producer)


class BudgetTests(SynchronousTestCase):
    """Request body bytes buffered count in the memory budget until read or dropped (issue 19)."""

    def setUp(self) -> None:
        from claudefs_gateway.core.budget import MemoryBudget

        self.budget = MemoryBudget(1 << 20)
        self.pipe = BodyPipe(FakeProducer(), budget=self.budget)

    def test_read_releases(self) -> None:
        self.pipe.feed(b"a" * 100)
        self.pipe.feed(b"b" * 50)
        self.assertEqual(self.budget.used, 150)
        got = self.successResultOf(defer.Deferred.fromCoroutine(self.pipe.read(120)))
        self.assertEqual(len(got), 120)
        self.assertEqual(self.budget.used, 30)

    def test_discard_and_fail_release(self) -> None:
        self.pipe.feed(b"a" * 100)
        self.pipe.discard()
        self.pipe.feed(b"a" * 100)  # dropped as it arrives
        self.assertEqual(self.budget.used, 0)
        other = BodyPipe(FakeProducer(), budget=self.budget)
        other.feed(b"x" * 70)
        other.fail(ClientGone("gone"))
        self.assertEqual(self.budget.used, 0)

    def test_release_after_answer(self) -> None:
        self.pipe.feed(b"a" * 100)
        self.pipe.finish()
        self.pipe.release()
        self.assertEqual(self.budget.used, 0)
