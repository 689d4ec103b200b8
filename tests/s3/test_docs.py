"""docs/s3.rst lists every operation that answers 501, and the metrics the front end owns."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.s3.api import UNSUPPORTED, UNSUPPORTED_OTHER
from tests.helpers import REPO


class DocsTests(SynchronousTestCase):
    def test_every_unsupported_operation_listed(self) -> None:
        with open(os.path.join(REPO, "docs", "s3.rst")) as f:
            text = f.read()
        ops = {op for level in UNSUPPORTED.values() for m in level.values() for op in m.values()}
        ops |= set(UNSUPPORTED_OTHER)
        missing = sorted(op for op in ops if op not in text)
        self.assertEqual(missing, [])

    def test_unsupported_page_points_here(self) -> None:
        with open(os.path.join(REPO, "docs", "unsupported.rst")) as f:
            text = f.read()
        self.assertIn("s3.rst", text)
        self.assertNotIn("Not built yet (issue #5)", text)
