# -*- test-case-name: tests.s3.test_body -*-
"""
Request and response bodies that stream, with bounded buffers.

L{BodyPipe} receives a request body as twisted.web hands it over and gives it
to a reader (the code writing the object into the store) as it arrives. When
more than C{high} bytes wait, the connection stops reading (TCP back-pressure)
until the reader has taken them down to C{low}: however big the object and
however slow the store, memory stays flat.

L{Body} sits on top: it undoes the aws-chunked encoding, checks each chunk
signature, collects the trailing checksum, and enforces the declared length.

L{ObjectProducer} is the other direction: an C{IPushProducer} reading an
object's byte range from the vfs one block at a time, pausing when the
transport's buffer is full.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure

from zope.interface import implementer

from claudefs_gateway.core.log import Logger
from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.s3._web import request_gone
from claudefs_gateway.s3.auth import ChunkSigner
from claudefs_gateway.s3.chunked import ChunkDecoder, ChunkEnd, Data, End, Trailer
from claudefs_gateway.s3.errors import S3Error

__all__ = ["BodyPipe", "Body", "ObjectProducer", "READ_SIZE", "ClientGone"]

READ_SIZE = 1024 * 1024
HIGH_WATER = 4 * 1024 * 1024
LOW_WATER = 1024 * 1024
# Object bytes go to the store in pieces of at least this much (unless the body ends).
COALESCE = 256 * 1024


class ClientGone(Exception):
    """The connection closed before the body was complete."""


class BodyPipe:
    """
    A request body in flight, between the HTTP channel and one reader.

    @param producer: what to pause and resume (the connection's transport).
    @param on_first_read: called once, when the reader first asks for data
        (sends C{100 Continue} if the client is waiting for it).
    @param budget: the gateway-wide L{claudefs_gateway.core.budget.MemoryBudget}:
        the bytes buffered count in it until read or dropped.
    """

    def __init__(
        self,
        producer: Any,
        on_first_read: Callable[[], None] | None = None,
        high: int = HIGH_WATER,
        low: int = LOW_WATER,
        budget: Any = None,
    ) -> None:
        self._budget = budget
        self._producer = producer
        self._on_first_read = on_first_read
        self._high = high
        self._low = low
        self._chunks: deque[bytes] = deque()
        self.buffered = 0
        self.received = 0
        self.complete = False
        self.discarding = False
        self.discarded = 0
        self._error: BaseException | None = None
        self._waiter: defer.Deferred[None] | None = None
        self._paused = False
        self.reading_started = False

    # -- channel side -------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self.discarding:
            self.discarded += len(data)
            return
        if self._error is not None:
            return
        self._chunks.append(data)
        self.buffered += len(data)
        if self._budget is not None:
            self._budget.hold(len(data))
        if self.buffered > self._high:
            # Re-pause on every arrival above the mark: a resume from elsewhere
            # (the channel's own write-side flow control) cannot unbound us.
            self._pause()
        self._wake()

    def finish(self) -> None:
        self.complete = True
        self._resume()
        self._wake()

    def fail(self, reason: BaseException) -> None:
        if not self.complete and self._error is None:
            self._error = reason
        self.release()
        self._wake()

    def release(self) -> None:
        """Drop what is buffered (the request ended or failed); its bytes leave the budget."""
        if self.buffered and self._budget is not None:
            self._budget.release(self.buffered)
        self._chunks.clear()
        self.buffered = 0

    def discard(self) -> None:
        """Drop what is buffered and whatever still arrives (the request was refused)."""
        self.discarding = True
        self.discarded += self.buffered
        self.release()
        self._resume()

    # -- reader side ------------------------------------------------------------------

    async def read(self, size: int = READ_SIZE, at_least: int = 1) -> bytes:
        """
        Up to C{size} bytes; C{b""} at the end of the body.

        @param at_least: wait until this much is buffered (or the body ended):
            fewer, larger pieces cost less per byte downstream.
        @raise ClientGone: the connection closed first.
        """
        if not self.reading_started:
            self.reading_started = True
            if self._on_first_read is not None:
                self._on_first_read()
        at_least = max(1, min(at_least, size, self._high))
        while self.buffered < at_least and not self.complete or not self._chunks:
            if self._error is not None:
                raise ClientGone(str(self._error))
            if self.complete:
                return b""
            self._waiter = defer.Deferred(lambda d: setattr(self, "_waiter", None))
            await self._waiter
        out = []
        got = 0
        while self._chunks and got < size:
            c = self._chunks[0]
            if got + len(c) <= size:
                out.append(self._chunks.popleft())
                got += len(c)
            else:
                take = size - got
                out.append(c[:take])
                self._chunks[0] = c[take:]
                got += take
        self.buffered -= got
        if self._budget is not None:
            self._budget.release(got)
        if self.buffered <= self._low:
            self._resume()
        return out[0] if len(out) == 1 else b"".join(out)

    def _wake(self) -> None:
        w, self._waiter = self._waiter, None
        if w is not None:
            w.callback(None)

    def _pause(self) -> None:
        if not self._paused and self._producer is not None:
            self._paused = True
            self._producer.pauseProducing()

    def _resume(self) -> None:
        if self._paused and self._producer is not None:
            self._paused = False
            self._producer.resumeProducing()


class Body:
    """
    The decoded object bytes of a request.

    @param length: the object's declared size (C{Content-Length}, or
        C{x-amz-decoded-content-length} for aws-chunked); None if unknown.
    @param chunked: the body is aws-chunked.
    @param signer: checks chunk signatures (signed streaming modes).
    @param trailer: the trailing header announced by C{x-amz-trailer}, if any.
    """

    def __init__(
        self,
        pipe: BodyPipe,
        length: int | None,
        chunked: bool = False,
        signer: ChunkSigner | None = None,
        trailer: str | None = None,
        max_size: int | None = None,
    ) -> None:
        self.pipe = pipe
        self.length = length
        self.signer = signer
        self.trailer = trailer
        self.max_size = max_size
        self.trailers: dict[str, str] = {}
        self._decoder = ChunkDecoder(signed=signer is not None) if chunked else None
        self._pending: deque[bytes] = deque()
        self._chunk_hash = hashlib.sha256() if signer is not None else None
        self._trailer_list: list[tuple[str, str]] = []
        self.size = 0
        self.done = False

    async def read(self) -> bytes:
        """
        The next piece of the object; C{b""} at the end, once everything checked.

        @raise S3Error: IncompleteBody (shorter or longer than declared, or the
            connection closed), SignatureDoesNotMatch (a chunk), InvalidRequest
            (malformed aws-chunked framing), EntityTooLarge.
        @raise ClientGone: the connection closed (nothing is sent back then).
        """
        while True:
            if self._pending:
                data = self._pending.popleft()
                self._count(data)
                return data
            if self.done:
                return b""
            raw = await self.pipe.read(READ_SIZE, COALESCE)
            if self._decoder is None:
                if not raw:
                    self._finish()
                    return b""
                self._count(raw)
                return raw
            if not raw:
                try:
                    self._decoder.close()
                except ProtocolError:
                    raise S3Error(
                        "IncompleteBody", "The request body ended before the final chunk"
                    ) from None
                self._finish()
                return b""
            try:
                events = self._decoder.feed(raw)
            except ProtocolError as e:
                raise S3Error("InvalidRequest", f"Malformed aws-chunked body: {e}") from None
            for ev in events:
                if isinstance(ev, Data):
                    if self._chunk_hash is not None:
                        self._chunk_hash.update(ev)
                    self._pending.append(bytes(ev))
                elif isinstance(ev, ChunkEnd):
                    if self.signer is not None and self._chunk_hash is not None:
                        assert ev.signature is not None
                        self.signer.verify_chunk(self._chunk_hash.hexdigest(), ev.signature)
                        self._chunk_hash = hashlib.sha256()
                elif isinstance(ev, Trailer):
                    if ev.name == "x-amz-trailer-signature":
                        if self.signer is None:
                            raise S3Error("InvalidRequest", "unexpected trailer signature")
                        self.signer.verify_trailer(self._trailer_list, ev.value)
                        self.trailers[ev.name] = ev.value
                    else:
                        self._trailer_list.append((ev.name, ev.value))
                        self.trailers[ev.name] = ev.value
                elif isinstance(ev, End):
                    pass

    def _count(self, data: bytes) -> None:
        self.size += len(data)
        if self.length is not None and self.size > self.length:
            raise S3Error(
                "IncompleteBody",
                "You did not provide the number of bytes specified by the Content-Length HTTP header",
            )
        if self.max_size is not None and self.size > self.max_size:
            raise S3Error("EntityTooLarge")

    def _finish(self) -> None:
        if self.length is not None and self.size != self.length:
            raise S3Error(
                "IncompleteBody",
                "You did not provide the number of bytes specified by the Content-Length HTTP header",
            )
        if self.signer is not None and self.trailer is not None:
            if "x-amz-trailer-signature" not in self.trailers:
                raise S3Error("SignatureDoesNotMatch", "the trailer signature is missing")
        if self.trailer is not None and self.trailer not in self.trailers:
            raise S3Error("InvalidRequest", f"the announced trailer {self.trailer} was not sent")
        self.done = True


@implementer(IPushProducer)
class ObjectProducer:
    """
    Write C{length} bytes of a file from C{offset} to a consumer, one block at
    a time, honouring pauseProducing/resumeProducing.

    @param read: C{read(offset, count)} returning a Deferred firing with bytes
        (fewer than asked only at end of file).
    """

    _log = Logger()

    def __init__(
        self,
        read: Callable[[int, int], defer.Deferred[bytes]],
        consumer: Any,
        offset: int,
        length: int,
        block: int = READ_SIZE,
    ) -> None:
        self._read = read
        self._consumer = consumer
        self._offset = offset
        self._remaining = length
        self._block = block
        self._paused = False
        self._stopped = False
        self._waiter: defer.Deferred[None] | None = None

    def start(self) -> defer.Deferred[None]:
        """
        Fires when every byte was written; fails with L{ShortRead} if the object
        came up short, with the read's failure if reading failed, and with
        L{ClientGone} if the consumer stopped the producer (its connection closed).
        """
        self._consumer.registerProducer(self, True)
        d = defer.Deferred.fromCoroutine(self._run())

        def done(result: Any) -> Any:
            # A consumer whose connection is gone has nothing left to
            # unregister from (a twisted.web Request's channel is None then).
            if not request_gone(self._consumer):
                self._consumer.unregisterProducer()
            if self._stopped and not isinstance(result, Failure):
                raise ClientGone("the connection closed while the object was being sent")
            return result

        return d.addBoth(done)

    async def _run(self) -> None:
        pending: defer.Deferred[bytes] | None = None
        while self._remaining > 0 and not self._stopped:
            n = min(self._block, self._remaining)
            d = pending if pending is not None else self._read(self._offset, n)
            pending = None
            data = await d
            if self._stopped:
                return
            if not data or len(data) > n:
                raise ShortRead(f"object ended {self._remaining} bytes early")
            self._offset += len(data)
            self._remaining -= len(data)
            if self._remaining > 0:
                # Read ahead one block while this one goes out.
                pending = self._read(self._offset, min(self._block, self._remaining))
            self._consumer.write(data)
            while self._paused and not self._stopped:
                self._waiter = defer.Deferred()
                await self._waiter
        if pending is not None:
            pending.addErrback(lambda f: None)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._wake()

    def stopProducing(self) -> None:
        self._stopped = True
        self._wake()

    def _wake(self) -> None:
        w, self._waiter = self._waiter, None
        if w is not None:
            w.callback(None)


class ShortRead(Exception):
    """The object shrank while it was being sent."""
