"""
A small object's GET (up to C{SMALL_SEND}) is one read and one write, without
an C{ObjectProducer} (issue 18): the same bytes and headers as the producer
sends, ranges too, and an object that comes up short still cuts the
connection rather than send a short body under a full Content-Length.
"""

from __future__ import annotations

import os
from typing import Any

import attrs
from twisted.trial.unittest import TestCase

from claudefs_gateway.s3 import body as body_module
from claudefs_gateway.s3.ops import objects
from tests.s3.harness import Client, raw_connect, raw_request, s3_port, start_gateway


class SmallGetTests(TestCase):
    async def setUp(self) -> None:
        root = await start_gateway(self)
        self.s3 = root.getServiceNamed("proto:s3")
        self.port = s3_port(root)
        self.client = Client(self.port)
        self.addCleanup(self.client.close)
        self.assertEqual((await self.client.request("PUT", "/bkt")).status, 200)
        self.data = os.urandom(10_000)
        r = await self.client.request("PUT", "/bkt/k", body=self.data)
        self.assertEqual(r.status, 200)
        self.producers = 0
        real = body_module.ObjectProducer.start

        def counting(producer: Any) -> Any:
            self.producers += 1
            return real(producer)

        self.patch(body_module.ObjectProducer, "start", counting)

    async def test_whole_and_ranges(self) -> None:
        """Whole, ranged and suffix GETs of a small object: right bytes, no producer."""
        r = await self.client.request("GET", "/bkt/k")
        self.assertEqual((r.status, r.body), (200, self.data))
        r = await self.client.request("GET", "/bkt/k", headers={"Range": "bytes=100-199"})
        self.assertEqual((r.status, r.body), (206, self.data[100:200]))
        self.assertEqual(r.header("content-range"), "bytes 100-199/10000")
        r = await self.client.request("GET", "/bkt/k", headers={"Range": "bytes=-5"})
        self.assertEqual((r.status, r.body), (206, self.data[-5:]))
        self.assertEqual(self.producers, 0)

    async def test_larger_uses_the_producer(self) -> None:
        """Past SMALL_SEND the object is streamed by the producer, as before."""
        big = os.urandom(objects.SMALL_SEND + 1)
        self.assertEqual((await self.client.request("PUT", "/bkt/big", body=big)).status, 200)
        r = await self.client.request("GET", "/bkt/big")
        self.assertEqual(r.body, big)
        self.assertEqual(self.producers, 1)

    async def test_short_read_cuts_the_connection(self) -> None:
        """An object that reads back short is never sent short under its full length."""
        tree = self.s3.tree
        real = tree.vfs.read

        async def short(caller: Any, ino: int, off: int, n: int) -> Any:
            # The object as if cut to 5,000 bytes after its headers were sent.
            r = await real(caller, ino, off, n)
            return attrs.evolve(r, data=r.data[: max(0, 5000 - off)])

        self.patch(tree.vfs, "read", short)
        url, headers = self.client.sign("GET", self.client.url("/bkt/k"), None, b"", "v4", False)
        conn = await raw_connect(self.port)
        conn.transport.write(raw_request("GET", url, headers))
        await conn.closed
        # Cut: no complete response, and whatever of the body got out before
        # the abort (buffered writes are dropped) is the object's own bytes.
        self.assertEqual(conn.responses(), [])
        sent = conn.received.partition(b"\r\n\r\n")[2]
        self.assertEqual(sent, self.data[: len(sent)])

    async def test_empty_read_cuts_the_connection(self) -> None:
        """An object gone to nothing: the connection is cut before a byte of body."""
        tree = self.s3.tree

        async def empty(caller: Any, ino: int, off: int, n: int) -> Any:
            raise objects.ShortRead("gone")

        self.patch(tree.vfs, "read", empty)
        url, headers = self.client.sign("GET", self.client.url("/bkt/k"), None, b"", "v4", False)
        conn = await raw_connect(self.port)
        conn.transport.write(raw_request("GET", url, headers))
        await conn.closed
        self.assertEqual(conn.responses(), [])
