"""docs/ changes with the code it describes."""

from __future__ import annotations

import glob
import os
import re

from twisted.trial.unittest import SynchronousTestCase, TestCase

from claudefs_gateway.core import config as cfg
from claudefs_gateway.core.metrics import CATALOGUE
from tests.helpers import REPO, bin_path, spawn

DOCS = os.path.join(REPO, "docs")


def read(name: str) -> str:
    with open(os.path.join(DOCS, name)) as f:
        return f.read()


def _resolves(dotted: str) -> bool:
    """
    Whether C{dotted} names a module or package of this repository, or a name
    defined at the top of one (C{claudefs_gateway.core.runtime.Core}).
    """
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        base = os.path.join(REPO, *parts[:n])
        source = base + ".py" if os.path.exists(base + ".py") else os.path.join(base, "__init__.py")
        if not os.path.exists(source):
            continue
        rest = parts[n:]
        if not rest:
            return True
        if len(rest) > 2:
            return False
        with open(source) as f:
            code = f.read()
        return bool(
            re.search(
                rf"^(class|def|async def) {rest[0]}\b|^{rest[0]}\b.*=|import.*\b{rest[0]}\b",
                code,
                re.M,
            )
        )
    return False


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

    def test_readme_is_clean_rst(self) -> None:
        """README.rst parses as reStructuredText without warnings (PyPI renders it)."""
        import docutils.core

        with open(os.path.join(REPO, "README.rst")) as f:
            text = f.read()
        docutils.core.publish_doctree(
            text, settings_overrides={"halt_level": 2, "report_level": 2, "warning_stream": False}
        )

    def test_readme_claims_only_what_is_built(self) -> None:
        """
        The README names what is not built as not built: NFSv4.0, NFSv4
        delegations, pNFS and the RDMA data path each appear only in its
        "Not built" paragraph.
        """
        with open(os.path.join(REPO, "README.rst")) as f:
            text = f.read()
        not_built = text[text.index("Not built, and refused plainly") :].split("\n\n", 1)[0]
        for thing in ("NFSv4.0", "delegations", "pNFS", "RDMA data path"):
            self.assertIn(thing, not_built)
        served = text.replace(not_built, "")
        for claim in ("NFSv4.0 ", "delegations are granted", "pNFS layouts"):
            self.assertNotIn(claim, served)

    def test_named_files_and_modules_exist(self) -> None:
        """
        Every file, directory or module of this repository the docs and README
        name exists (architecture.rst and the README describe the code as it is).
        """
        texts = sorted(glob.glob(os.path.join(DOCS, "*.rst"))) + [os.path.join(REPO, "README.rst")]
        path_re = re.compile(
            r"(?<![\w./-])((?:claudefs_gateway|tests|contrib|scripts|bench|docs|twisted/plugins)"
            r"(?:/[\w.-]+)+/?)"
        )
        module_re = re.compile(r"(?<![\w./-])(claudefs_gateway(?:\.\w+)+)")
        # Made when used, not kept in the tree.
        made_at_run_time = {"bench/results/", "docs/_build"}
        missing = []
        for text_path in texts:
            with open(text_path) as f:
                text = f.read()
            for m in path_re.finditer(text):
                found = m.group(1)
                if text[m.end() : m.end() + 1] == "<" or found in made_at_run_time:
                    continue  # a pattern such as tests/conformance/suite_<name>.py
                if not os.path.exists(os.path.join(REPO, found.rstrip("/").rstrip("."))):
                    missing.append((os.path.basename(text_path), found))
            for dotted in module_re.findall(text):
                if not _resolves(dotted):
                    missing.append((os.path.basename(text_path), dotted))
        self.assertEqual(missing, [])

    def test_tuning_covers_every_tunable_key(self) -> None:
        """docs/tuning.rst covers every pool, breaker, quota, cache, multichannel, multipart and limit key."""
        text = read("tuning.rst")
        sections = (
            "connection_pool.",
            "circuit_breaker.",
            "quota.",
            "cache.",
            "smb.multichannel.",
            "smb.interfaces[]",
            "limits.",
        )
        keys = [
            k.path for k in cfg.walk(cfg.Config) if k.path.startswith(sections) and not k.section
        ]
        keys += [
            f"s3.{k}" for k in ("multipart_chunk_min", "part_timeout_ms", "max_concurrent_parts")
        ]
        keys += [
            f"nfs.{k}" for k in ("max_record_size", "max_requests_per_connection", "drc_entries")
        ]
        missing = [k for k in keys if f"``{k}``" not in text]
        self.assertEqual(missing, [])

    def test_readme_tables_generated(self) -> None:
        """
        The README's module inventory and test statistics are the blocks
        ``python -m tests.stats`` makes, with the same rows (the counts are
        refreshed with ``python -m tests.stats --update``).
        """
        from tests import stats

        with open(os.path.join(REPO, "README.rst")) as f:
            readme = f.read()

        def first_column(block: str) -> list[str]:
            rows = [line for line in block.splitlines() if line and not line.startswith((".", "="))]
            return [r.split("  ")[0].strip() for r in rows]

        for begin, make in (
            (stats.BEGIN_INVENTORY, stats.inventory_rst),
            (stats.BEGIN_TESTS, stats.tests_rst),
        ):
            self.assertIn(begin, readme)
            self.assertEqual(first_column(stats._block(readme, begin)), first_column(make()))


class SphinxTests(TestCase):
    timeout = 300

    async def test_builds_without_warnings(self) -> None:
        """docs/ builds with Sphinx, every warning an error."""
        out = os.path.abspath(self.mktemp())
        proc = spawn(
            [bin_path("sphinx-build"), "-W", "--keep-going", "-q", "-b", "html", DOCS, out]
        )
        status = await proc.ended
        self.assertEqual(status, 0, proc.stderr.decode("utf-8", "replace")[-4000:])
        self.assertTrue(os.path.exists(os.path.join(out, "operations.html")))
