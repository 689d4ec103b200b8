"""bench.s3_head runs and serves every request it feeds (both ways of parsing)."""

from __future__ import annotations

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from bench import s3_head


class S3HeadBenchTests(SynchronousTestCase):
    def test_requests_are_served(self) -> None:
        """Each fed request gets its 200, with either parser: the figure is of real work."""
        sent: list[bytes] = []
        real = StringTransport.clear

        def clear(t: StringTransport) -> None:
            if hasattr(t, "io"):  # not the first clear, in __init__
                sent.append(t.value())
            real(t)

        self.patch(StringTransport, "clear", clear)
        for whole in (False, True):
            del sent[:]
            self.assertGreater(s3_head.run(whole, 5), 0)
            self.assertEqual(len(sent), 5)
            self.assertTrue(all(v.startswith(b"HTTP/1.1 200 OK\r\n") for v in sent), sent)
