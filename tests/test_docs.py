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
        The README names what is not built as not built, and nothing built as
        missing: NFSv4.0, directory delegations, Kerberos, SMB persistent
        handles, the RDMA data path and lock state across meta servers are in
        its "Not built" paragraph and its Limitations, never claimed as
        served; what wave 2 built (NFSv4.1/4.2, pNFS, the remote backend,
        workers, PostgreSQL, SMB leases/durable handles/multichannel, S3
        versioning) is never called missing or "being built".
        """
        with open(os.path.join(REPO, "README.rst")) as f:
            text = f.read()
        flat = " ".join(text.split())
        not_built = text[text.index("Not built: ") :].split("\n\n", 1)[0]
        not_built = " ".join(not_built.split())
        limitations = text[text.index("Limitations\n---") : text.index("Roadmap\n---")]
        limitations = " ".join(limitations.split())
        roadmap = text[text.index("Roadmap\n---") : text.index("Documentation\n---")]
        roadmap = " ".join(roadmap.split())
        for thing in (
            "NFSv4.0",
            "directory delegations",
            "Kerberos",
            "SMB persistent handles",
            "RDMA data path",
            "lock state shared across meta servers",
        ):
            self.assertTrue(thing in not_built, f"README's 'Not built' omits {thing!r}")
        for thing in ("NFSv4.0", "directory delegations", "Kerberos", "persistent handles"):
            self.assertIn(thing, limitations)
        self.assertIn("verbs data path is not built", limitations)
        self.assertIn("several meta servers over PostgreSQL do not share it", limitations)
        served = flat.replace(not_built, "").replace(limitations, "").replace(roadmap, "")
        for claim in ("NFSv4.0 ", "directory delegations", "persistent handles"):
            self.assertFalse(claim in served, f"README claims {claim!r} outside its limits")
        # Built in wave 2: the README must not call these missing or in progress.
        for stale in (
            "being built",
            "NFSv3 only",
            "(no NFSv4,",
            "no pNFS,",
            "without multichannel",
            "without versioning",
            "validate but do nothing",
            "not built yet",
        ):
            self.assertFalse(stale in flat, f"README says {stale!r}")
        for built in ("NFSv4.1 and 4.2", "pNFS", "backend: remote", "--workers N", "PostgreSQL"):
            self.assertTrue(built in served, f"README does not claim {built!r}")

    def test_server_units_run_what_exists(self) -> None:
        """
        contrib/systemd's meta and data units run ``cfs-gateway meta|data``
        with options those commands accept: the ExecStart line, with the
        example arguments its comment gives, parses as the command line.
        """
        from claudefs_gateway.servers.tap import DataOptions, MetaOptions

        for role, options in (("meta", MetaOptions), ("data", DataOptions)):
            with open(os.path.join(REPO, "contrib", "systemd", f"claudefs-{role}.service")) as f:
                unit = f.read()
            var = f"CLAUDEFS_{role.upper()}_ARGS"
            example = re.search(rf"^#\s+{var}=(.*)$", unit, re.M)
            assert example is not None, f"claudefs-{role}.service: no '# {var}=' example"
            exec_start = re.search(r"^ExecStart=(\S+) (.*)$", unit, re.M)
            assert exec_start is not None, f"claudefs-{role}.service: no ExecStart"
            self.assertEqual(exec_start.group(1), "/usr/local/bin/cfs-gateway")
            words = exec_start.group(2).split()
            self.assertEqual(words[0], role)
            args = [
                w
                for word in words[1:]
                for w in (
                    example.group(1).split()
                    if word == f"${var}"
                    else [word.replace("${STATE_DIRECTORY}", self.mktemp())]
                )
            ]
            opts = options()
            opts.parseOptions(args)
            self.assertEqual(opts.settings.listen.port, 7001 if role == "meta" else 7002)

    def test_docs_call_nothing_built_missing(self) -> None:
        """
        No page of docs/ (nor a contrib unit) says a part that is built is
        "not built" or "being built": the phrases the pages used before the
        distributed half, NFSv4 and SMB state were built.
        """
        stale = (
            "being built",
            "servers are not built",
            "is not built in this version",
            "``backend.type: remote`` is refused",
            "NFSv4 compounds are refused",
            "(not built yet) a circuit breaker",
            "will run under; those servers",
            "NOT BUILT YET",
            "Must stay false until multichannel is built",
            "does not exist in this version",
        )
        found = []
        paths = sorted(glob.glob(os.path.join(DOCS, "*.rst")))
        paths += sorted(glob.glob(os.path.join(REPO, "contrib", "systemd", "*.service")))
        for path in paths:
            with open(path) as f:
                text = " ".join(f.read().split())
            found += [(os.path.basename(path), s) for s in stale if s in text]
        self.assertEqual(found, [])

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
