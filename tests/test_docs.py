"""docs/ changes with the code it describes."""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.core.metrics import CATALOGUE
from tests.helpers import REPO

DOCS = os.path.join(REPO, "docs")


def read(name: str) -> str:
    with open(os.path.join(DOCS, name)) as f:
        return f.read()


class DocsTests(SynchronousTestCase):
    def test_every_metric_documented(self) -> None:
        """Every metric family the gateway can expose is in docs/operations.rst."""
        text = read("operations.rst")
        missing = [name for name in CATALOGUE if f"``{name}``" not in text]
        self.assertEqual(missing, [])

    def test_index_pages_exist(self) -> None:
        index = read("index.rst")
        pages = re.findall(r"^   ([a-z_]+)$", index, re.M)
        self.assertIn("configuration", pages)
        for page in pages:
            self.assertTrue(os.path.exists(os.path.join(DOCS, page + ".rst")), page)

    def test_readme_names_both_commands(self) -> None:
        with open(os.path.join(REPO, "README.rst")) as f:
            readme = f.read()
        self.assertIn("    scripts/start-gateway\n", readme)
        self.assertIn("    scripts/run-tests\n", readme)
        with open(os.path.join(REPO, ".ci", "run")) as f:
            self.assertIn("scripts/run-tests", f.read())
