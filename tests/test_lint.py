"""The tree is ruff clean (STYLE.md §13): lint rules and formatting."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.helpers import REPO, bin_path, spawn


class RuffTests(TestCase):
    timeout = 120

    async def ruff(self, *args: str) -> None:
        proc = spawn(
            [bin_path("ruff"), *args, "claudefs_gateway", "tests", "bench", "twisted"], path=REPO
        )
        status = await proc.ended
        self.assertEqual(status, 0, "\n".join(proc.text[-60:]) + proc.stderr.decode()[-2000:])

    async def test_check(self) -> None:
        await self.ruff("check", "--no-cache")

    async def test_format(self) -> None:
        await self.ruff("format", "--check", "--no-cache")


class MypyTests(TestCase):
    timeout = 300

    async def test_package_types(self) -> None:
        """The package type-checks under mypy with the zope plugin (pyproject.toml [tool.mypy])."""
        proc = spawn([bin_path("mypy"), "--no-incremental", "claudefs_gateway"], path=REPO)
        status = await proc.ended
        self.assertEqual(status, 0, "\n".join(proc.text[-60:]))


class SeamTests(TestCase):
    def test_no_any_across_the_vfs_seam(self) -> None:
        """
        Front ends are typed against IVFS and Caller (issue 10): no vfs or
        caller parameter or attribute is annotated Any.
        """
        import re
        from pathlib import Path

        pattern = re.compile(r"\b(vfs|caller)\s*:\s*(typing\.)?Any\b")
        found = []
        for package in ("nfs", "s3", "smb", "admin"):
            for path in sorted(Path(REPO, "claudefs_gateway", package).rglob("*.py")):
                for n, line in enumerate(path.read_text().splitlines(), 1):
                    if pattern.search(line):
                        found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
        self.assertEqual(found, [])
