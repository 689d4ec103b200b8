"""
``pip install .`` and ``pip install -e .`` both work and twistd finds the
plugins after either. Each install goes into a throwaway virtualenv that
borrows its dependencies from the test environment (a .pth line), so the test
exercises our packaging, not the network.
"""

from __future__ import annotations

import os
import sys
import sysconfig

from twisted.trial.unittest import TestCase

from tests.helpers import REPO, spawn

TAPNAMES = ("claudefs-gateway", "claudefs-nfs", "claudefs-s3", "claudefs-smb")


class InstallTests(TestCase):
    timeout = 240

    async def check(self, editable: bool) -> None:
        venv = os.path.abspath(self.mktemp())
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        proc = spawn([sys.executable, "-m", "venv", venv], path=work)
        self.assertEqual(await proc.ended, 0, proc.stderr)
        py = os.path.join(venv, "bin", "python")
        purelib = spawn(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], path=work
        )
        await purelib.ended
        with open(os.path.join(purelib.text[0], "_cfs_test_deps.pth"), "w") as f:
            f.write(sysconfig.get_paths()["purelib"] + "\n")
        args = [py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
        args += ["-e", REPO] if editable else [REPO]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        install = spawn(args, env=env, path=work)
        self.assertEqual(await install.ended, 0, install.stderr.decode()[-3000:])

        where = spawn(
            [py, "-c", "import claudefs_gateway as c; print(c.__file__)"], env=env, path=work
        )
        await where.ended
        location = where.text[0]
        if editable:
            self.assertTrue(location.startswith(REPO), location)
        else:
            self.assertTrue(location.startswith(venv), location)

        helptext = spawn(
            [
                py,
                "-c",
                "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
                "--help",
            ],
            env=env,
            path=work,
        )
        await helptext.ended
        text = "\n".join(helptext.text)
        for name in TAPNAMES:
            self.assertIn(name, text)
        version = spawn([os.path.join(venv, "bin", "cfs-gateway"), "--version"], env=env, path=work)
        await version.ended
        self.assertIn("claudefs-gateway", "\n".join(version.text))

    async def test_pip_install(self) -> None:
        """`pip install .`: an installed copy, plugins found by twistd."""
        await self.check(editable=False)

    async def test_pip_install_editable(self) -> None:
        """`pip install -e .` (setuptools' default mode): the checkout, plugins found by twistd."""
        await self.check(editable=True)
