"""
Real SMB clients nobody here wrote, against the server on a loopback port:
Samba's smbclient (no signing, signing, encryption), smbprotocol's
high-level API (encrypted) and impacket's SMBConnection. They run as
subprocesses; the server runs in this test's reactor over a memory vfs, so
the tests can look at what the clients did through the vfs itself.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from claudefs_gateway.backend.embedded import EmbeddedBackend
from claudefs_gateway.backend.memory import MemoryBackend
from claudefs_gateway.core import config as cfg
from claudefs_gateway.core.drain import Activity
from claudefs_gateway.core.metrics import Metrics, RequestMetrics
from claudefs_gateway.fstypes import Credentials, SetAttrs
from claudefs_gateway.smb.security import SID
from claudefs_gateway.smb.server import SMBConnection, SMBFactory
from claudefs_gateway.vfs import VFS, LockTable, UserDB
from tests.helpers import REPO, bin_path, spawn
from tests.smb.client import PASSWORD, users

CONFIG = """
exports:
  - {path: /export, name: share, root_squash: false}
  - {path: /hidden, name: hidden, browseable: false}
"""


class LiveServer:
    """
    An SMBFactory listening on 127.0.0.1, port 0, over a fresh vfs on the
    embedded backend (the gateway's default; its writer thread and fsyncs as
    in production) or the memory one.
    """

    def __init__(self, testcase: TestCase, config: str = CONFIG, backend: str = "embedded") -> None:
        self.testcase = testcase
        self.config = cfg.loads(config)
        self.metrics = Metrics()
        if backend == "embedded":
            # Small files' bytes inline, as the default configuration has them.
            self.backend: Any = EmbeddedBackend(Path(testcase.mktemp()), reactor, inline_max=4096)
        else:
            self.backend = MemoryBackend(now_ns=time.time_ns)
        self.vfs = VFS(
            self.backend,
            self.config,
            reactor,
            os.urandom(32),
            UserDB(reactor, inline=users()),
            self.metrics,
            locks=LockTable(reactor),
        )
        self.port = 0
        # Session log lines say which dialect, signing and cipher each client got.
        self.sessions: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self._observe)
        testcase.addCleanup(globalLogPublisher.removeObserver, self._observe)
        self.decrypted = 0
        real = SMBConnection._decrypt

        def counting(conn: SMBConnection, frame: bytes) -> Any:
            self.decrypted += 1
            return real(conn, frame)

        testcase.patch(SMBConnection, "_decrypt", counting)

    def _observe(self, event: dict[str, Any]) -> None:
        if str(event.get("log_format", "")).startswith("smb session for"):
            self.sessions.append(event)

    async def start(self) -> int:
        await self.backend.open()
        if hasattr(self.backend, "close"):
            self.testcase.addCleanup(self.backend.close)
        await self.vfs.open()
        root = self.root
        export = self.vfs.exports.by_name("share", "smb")
        # A share its users may write to, as an administrator sets one up for Samba.
        await self.vfs.setattr(
            self.vfs.caller(export, "", Credentials(0, 0), "test"),
            export.root_ino,
            SetAttrs(mode=0o1777),
        )
        del root
        self.factory = SMBFactory(
            self.config,
            lambda: defer.succeed(self.vfs),
            reactor,
            metrics=RequestMetrics(self.metrics, "smb"),
            activity=Activity("smb", self.metrics),
            domain_sid=SID.parse("S-1-5-21-1-2-3"),
            computer="GW",
        )
        listening = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.testcase.addCleanup(self._stop, listening)
        self.port = listening.getHost().port
        return self.port

    async def _stop(self, listening: Any) -> None:
        for p in list(self.factory.connections):
            if p.transport is not None:
                p.transport.abortConnection()
        await listening.stopListening()
        await self.factory.files.stop_flushing()

    @property
    def root(self) -> Any:
        export = self.vfs.exports.by_name("share", "smb")
        return self.vfs.caller(export, "", Credentials(0, 0), "test")

    async def read_file(self, name: bytes) -> tuple[Any, bytes]:
        a = await self.vfs.resolve(self.root, name)
        r = await self.vfs.read(self.root, a.ino, 0, a.size)
        return a, r.data


def smb_conf(testcase: TestCase) -> str:
    path = testcase.mktemp() + ".conf"
    with open(path, "w") as f:
        f.write("[global]\n   client min protocol = SMB2_02\n   client max protocol = SMB3_11\n")
    return path


async def run(argv: list[str], testcase: TestCase) -> tuple[int, list[str], str]:
    proc = spawn(argv, path=REPO)
    status = await proc.ended
    return status, proc.text, proc.stderr.decode("utf-8", "replace")


async def smbclient(
    testcase: TestCase,
    port: int,
    commands: str,
    protection: str = "sign",
    user: str = "alice",
    share: str = "share",
) -> tuple[int, str]:
    argv = [
        bin_path("smbclient"),
        f"//127.0.0.1/{share}",
        "-s",
        smb_conf(testcase),
        "-p",
        str(port),
        "-U",
        f"{user}%{PASSWORD}",
        "-m",
        "SMB3",
        f"--client-protection={protection}",
        "-c",
        commands,
    ]
    status, out, err = await run(argv, testcase)
    return status, "\n".join(out) + err


class SmbclientTests(TestCase):
    timeout = 120

    async def test_list_shares(self) -> None:
        """smbclient -L lists the browseable shares and IPC$ over the srvsvc pipe."""
        server = LiveServer(self)
        port = await server.start()
        argv = [
            bin_path("smbclient"),
            "-L",
            "//127.0.0.1",
            "-s",
            smb_conf(self),
            "-p",
            str(port),
            "-U",
            f"alice%{PASSWORD}",
            "-m",
            "SMB3",
        ]
        status, out, err = await run(argv, self)
        text = "\n".join(out)
        self.assertEqual(status, 0, text + err)
        self.assertRegex(text, r"share\s+Disk")
        self.assertRegex(text, r"IPC\$\s+IPC")
        self.assertNotIn("hidden", text)

    backend = "embedded"

    async def _files(self, protection: str) -> set[tuple[str, str, str]]:
        server = LiveServer(self, backend=self.backend)
        port = await server.start()
        local = os.path.abspath(self.mktemp())
        os.makedirs(local)
        data = os.urandom(5 * 1024 * 1024 + 123)
        with open(os.path.join(local, "big.bin"), "wb") as f:
            f.write(data)
        commands = (
            f"lcd {local}; put big.bin big.bin; get big.bin back.bin; mkdir d1; "
            "rename big.bin d1\\moved.bin; ls d1\\*; mkdir gone; rmdir gone; ls"
        )
        status, text = await smbclient(self, port, commands, protection)
        self.assertEqual(status, 0, text)
        with open(os.path.join(local, "back.bin"), "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertIn("moved.bin", text)
        a, stored = await server.read_file(b"d1/moved.bin")
        self.assertEqual(stored, data)
        self.assertEqual(a.uid, 1000)
        status, text = await smbclient(self, port, "del d1\\moved.bin; rmdir d1; ls", protection)
        self.assertEqual(status, 0, text)
        # (A listing line, not the text at large: smbclient's warnings name
        # its temporary config, whose random path may hold "d1".)
        self.assertNotIn("d1", [line.split()[0] for line in text.splitlines() if line.strip()])
        got = {(e["dialect"], e["signing"], e["encryption"]) for e in server.sessions}
        got.add(("encrypted requests", str(server.decrypted > 0), ""))
        return got

    async def test_files_no_protection(self) -> None:
        """put/get of a multi-MiB file is byte-identical; mkdir, rename, ls, del, rmdir (SMB 3.1.1, no signing)."""
        self.assertEqual(
            await self._files("off"),
            {("3.1.1", "enabled", "available (AES-128-GCM)"), ("encrypted requests", "False", "")},
        )

    async def test_files_signed(self) -> None:
        self.assertEqual(
            await self._files("sign"),
            {("3.1.1", "required", "available (AES-128-GCM)"), ("encrypted requests", "False", "")},
        )

    async def test_files_encrypted(self) -> None:
        self.assertEqual(
            await self._files("encrypt"),
            {("3.1.1", "required", "available (AES-128-GCM)"), ("encrypted requests", "True", "")},
        )

    async def test_wrong_password(self) -> None:
        server = LiveServer(self)
        port = await server.start()
        argv = [
            bin_path("smbclient"),
            "//127.0.0.1/share",
            "-s",
            smb_conf(self),
            "-p",
            str(port),
            "-U",
            "alice%wrong",
            "-m",
            "SMB3",
            "-c",
            "ls",
        ]
        status, out, err = await run(argv, self)
        self.assertNotEqual(status, 0)
        self.assertIn("NT_STATUS_LOGON_FAILURE", "\n".join(out) + err)

    async def test_older_dialects(self) -> None:
        """smbclient held to SMB 2.0.2, 2.1, 3.0 and 3.0.2 works too (3.0.x validates the negotiate)."""
        server = LiveServer(self)
        port = await server.start()
        for proto in ("SMB2_02", "SMB2_10", "SMB3_00", "SMB3_02"):
            argv = [
                bin_path("smbclient"),
                "//127.0.0.1/share",
                "-s",
                smb_conf(self),
                "-p",
                str(port),
                "-U",
                f"alice%{PASSWORD}",
                "-m",
                proto,
                "--option",
                f"clientmaxprotocol={proto}",
                "--client-protection=sign",
                "-c",
                f"mkdir {proto}; ls",
            ]
            status, out, err = await run(argv, self)
            self.assertEqual(status, 0, proto + "\n".join(out) + err)
            self.assertIn(proto, "\n".join(out))
        self.assertEqual([e["dialect"] for e in server.sessions], ["2.0.2", "2.1", "3.0", "3.0.2"])


class SmbclientMemoryTests(SmbclientTests):
    """The same over the memory backend."""

    backend = "memory"


class SmbprotocolTests(TestCase):
    timeout = 180

    async def test_scenario(self) -> None:
        """open/read/write/stat/utime/xattr/listdir/rename/locks/remove with encryption on."""
        server = LiveServer(self)
        port = await server.start()
        argv = [
            sys.executable,
            "-m",
            "tests.smb.smbprotocol_client",
            "127.0.0.1",
            str(port),
            "share",
            "alice",
            PASSWORD,
        ]
        status, out, err = await run(argv, self)
        steps = {
            e["step"]: e for e in map(json.loads, (line for line in out if line.startswith("{")))
        }
        self.assertEqual(status, 0, json.dumps(steps.get("error", {}), indent=1) + err[-2000:])
        self.assertTrue(steps["write_read"]["same"])
        self.assertEqual(steps["stat"]["size"], 3 * 1024 * 1024)
        self.assertEqual(steps["utime"]["mtime"], 1_600_000_000)
        self.assertEqual(steps["xattr"]["value"], "hello")
        self.assertEqual(steps["listdir"]["names"], ["data.bin"])
        self.assertEqual(steps["rename"]["names"], ["renamed.bin"])
        self.assertEqual(steps["locks"]["conflict"], "0xc0000055")
        self.assertEqual(steps["locks"]["read"], "0xc0000054")
        self.assertEqual(steps["cleanup"]["names"], [])
        sessions = {
            s.encrypt_data or s.sealer is not None
            for p in server.factory.connections
            for s in p.sessions.values()
        }
        self.assertNotIn(False, sessions)


class ImpacketTests(TestCase):
    timeout = 180

    async def _scenario(self, dialect: str) -> dict[str, Any]:
        server = LiveServer(self)
        port = await server.start()
        argv = [
            sys.executable,
            "-m",
            "tests.smb.impacket_client",
            "127.0.0.1",
            str(port),
            "share",
            "alice",
            PASSWORD,
            dialect,
        ]
        status, out, err = await run(argv, self)
        steps = {
            e["step"]: e for e in map(json.loads, (line for line in out if line.startswith("{")))
        }
        self.assertEqual(status, 0, json.dumps(steps.get("error", {}), indent=1) + err[-2000:])
        self.assertEqual(steps["shares"]["names"], ["share", "IPC$"])
        self.assertTrue(steps["put_get"]["same"])
        self.assertEqual(steps["rename"]["names"], [".", "..", "moved.bin"])
        self.assertIn("done", steps)
        return steps

    async def test_default_dialect(self) -> None:
        """Login, list shares, put/get, rename and delete at the dialect impacket picks (3.1.1)."""
        steps = await self._scenario("")
        self.assertEqual(steps["login"]["dialect"], "0x311")

    async def test_smb21(self) -> None:
        steps = await self._scenario("2.1")
        self.assertEqual(steps["login"]["dialect"], "0x210")
        self.assertEqual(steps["put_get"]["size"], 4 << 20)


class SignedReadTests(TestCase):
    """
    READ replies go out as their header and the data where the store read
    it, signed piece by piece (smb/server.py C{_response_parts}):
    smbprotocol, which verifies every signed reply, reads large, inline,
    sparse and compounded ranges with each signing algorithm.
    """

    timeout = 180

    async def _reads(self, dialect: str, signing: str) -> dict[str, Any]:
        server = LiveServer(self)
        port = await server.start()
        from claudefs_gateway.smb.crypto import Signer

        pieces: list[int] = []
        real = Signer.sign_parts

        def counting(signer: Signer, parts: Any, *, response: bool = True) -> bytes:
            pieces.append(len(parts))
            return real(signer, parts, response=response)

        self.patch(Signer, "sign_parts", counting)
        argv = [
            sys.executable,
            "-m",
            "tests.smb.smbprotocol_reads",
            "127.0.0.1",
            str(port),
            "share",
            "alice",
            PASSWORD,
            dialect,
            signing,
        ]
        status, out, err = await run(argv, self)
        steps = {
            e["step"]: e for e in map(json.loads, (line for line in out if line.startswith("{")))
        }
        self.assertEqual(status, 0, json.dumps(steps.get("error", {}), indent=1) + err[-2000:])
        self.assertTrue(steps["login"]["signing"])
        self.assertFalse(steps["login"]["encrypted"])
        self.assertGreaterEqual(steps["login"]["max_read"], 1 << 20)
        self.assertTrue(steps["big"]["same"])
        self.assertTrue(steps["unaligned"]["same"])
        self.assertTrue(steps["compound"]["same"])
        self.assertEqual(steps["inline"], {"step": "inline", "same": True, "partial": True})
        self.assertEqual(steps["sparse"], {"step": "sparse", "hole": True, "across": True})
        self.assertIn("done", steps)
        # The READ replies were signed in pieces (header, READ fixed part, data[, padding]).
        self.assertGreaterEqual(len(pieces), 10)
        self.assertTrue(all(n >= 3 for n in pieces))
        return steps

    async def test_hmac_sha256(self) -> None:
        steps = await self._reads("2.1", "hmac")
        self.assertEqual(steps["login"]["dialect"], "0x210")

    async def test_aes_cmac(self) -> None:
        steps = await self._reads("3.0.2", "cmac")
        self.assertEqual(steps["login"]["dialect"], "0x302")

    async def test_aes_gmac(self) -> None:
        steps = await self._reads("3.1.1", "gmac")
        self.assertEqual(steps["login"]["dialect"], "0x311")
