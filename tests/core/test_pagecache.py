"""L{claudefs_gateway.core.pagecache}: whether a range is in the page cache."""

from __future__ import annotations

import os

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from claudefs_gateway.core import pagecache


class CachedTests(SynchronousTestCase):
    def setUp(self) -> None:
        if not pagecache.available():
            raise SkipTest("no cachestat on this kernel")
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(os.urandom(3 * pagecache.PAGE + 10))
        self.fd = os.open(path, os.O_RDONLY)
        self.addCleanup(os.close, self.fd)

    def test_written_bytes_are_cached(self) -> None:
        """A file just written is in the page cache, to its last partial page."""
        self.assertIs(pagecache.cached(self.fd, 0, 3 * pagecache.PAGE + 10), True)
        self.assertIs(pagecache.cached(self.fd, 100, 5000), True)

    def test_past_the_end_is_not(self) -> None:
        """A range that runs past the file's end is not all cached (a sparse tail)."""
        self.assertIs(pagecache.cached(self.fd, 0, 8 * pagecache.PAGE), False)

    def test_evicted_range_is_not(self) -> None:
        """After the kernel is told to drop the file's clean pages, they are not cached."""
        fd = os.open(f"/proc/self/fd/{self.fd}", os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        self.assertIs(pagecache.cached(self.fd, 0, pagecache.PAGE), False)

    def test_bad_descriptor(self) -> None:
        self.assertIs(pagecache.cached(-1, 0, 10), False)
