"""The duplicate request cache (L{claudefs_gateway.rpc.drc})."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.rpc.drc import BUSY, ReplyCache, call_key


class ReplyCacheTests(SynchronousTestCase):
    def test_new_busy_done(self) -> None:
        c = ReplyCache(10)
        k = call_key("10.0.0.1", 7, 100003, 3, 12, b"hdr" + b"args", 3)
        self.assertIsNone(c.lookup(k))
        self.assertIs(c.lookup(k), BUSY)
        c.finish(k, b"reply")
        self.assertEqual(c.lookup(k), b"reply")
        self.assertEqual((c.hits, c.dropped), (1, 1))

    def test_key_tells_calls_apart(self) -> None:
        base = call_key("h", 1, 1, 3, 12, b"xxargs", 2)
        self.assertEqual(base, call_key("h", 1, 1, 3, 12, b"yyargs", 2))
        for other in (
            call_key("h2", 1, 1, 3, 12, b"xxargs", 2),
            call_key("h", 2, 1, 3, 12, b"xxargs", 2),
            call_key("h", 1, 1, 3, 13, b"xxargs", 2),
            call_key("h", 1, 1, 3, 12, b"xxargz", 2),
            call_key("h", 1, 1, 3, 12, b"xxargs!", 2),
        ):
            self.assertNotEqual(base, other)

    def test_bounded_lru(self) -> None:
        c = ReplyCache(3)
        keys = [("h", i) for i in range(5)]
        for k in keys:
            c.lookup(k)
            c.finish(k, b"r")
        self.assertEqual(len(c), 3)
        self.assertIsNone(c.lookup(keys[0]))

    def test_forget(self) -> None:
        c = ReplyCache(3)
        c.lookup(("k",))
        c.forget(("k",))
        self.assertIsNone(c.lookup(("k",)))

    def test_disabled(self) -> None:
        c = ReplyCache(0)
        self.assertIsNone(c.lookup(("k",)))
        c.finish(("k",), b"r")
        self.assertIsNone(c.lookup(("k",)))
        self.assertEqual(len(c), 0)
