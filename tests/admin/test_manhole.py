"""
Tests for L{claudefs_gateway.admin.manhole}: the OpenSSH client logs in with a
freshly generated key over loopback and evaluates expressions in the live
gateway's namespace.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import keys
from twisted.cred.credentials import ISSHPrivateKey
from twisted.internet import defer, protocol, reactor
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from claudefs_gateway import service
from claudefs_gateway.core import config as cfg
from tests.helpers import bin_path


def write_key(path: str) -> keys.Key:
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return keys.Key(private)


class SSHSession(protocol.ProcessProtocol):
    """``ssh -tt``: type a line, wait for text on the terminal."""

    def __init__(self) -> None:
        self.output = b""
        self.waiting: list[tuple[bytes, defer.Deferred[bytes]]] = []
        self.ended: defer.Deferred[int] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        for want, d in list(self.waiting):
            if want in self.output:
                self.waiting.remove((want, d))
                d.callback(self.output)

    errReceived = outReceived

    def expect(self, want: bytes) -> defer.Deferred[bytes]:
        if want in self.output:
            return defer.succeed(self.output)
        d: defer.Deferred[bytes] = defer.Deferred()
        self.waiting.append((want, d))
        return d

    def type(self, line: bytes) -> None:
        self.transport.write(line + b"\r")

    def processEnded(self, reason: Failure) -> None:
        for want, d in self.waiting:
            d.errback(AssertionError(f"ssh ended before {want!r}; output: {self.output!r}"))
        self.waiting = []
        self.ended.callback(getattr(reason.value, "exitCode", 0) or 0)


class ManholeTests(TestCase):
    timeout = 30

    def start(self) -> tuple[int, str, object]:
        key_path = os.path.abspath(self.mktemp())
        key = write_key(key_path)
        authorized = self.mktemp()
        with open(authorized, "w") as fh:
            fh.write("# operators\n" + key.public().toString("openssh").decode() + " ops@example\n")
        data = os.path.abspath(self.mktemp())
        config = cfg.loads(f"""
backend: {{data_dir: {data}}}
admin:
  bind: "127.0.0.1:0"
  manhole:
    bind: "127.0.0.1:0"
    authorized_keys: {authorized}
s3: {{region: eu-north-1}}
""")
        root = service.build(config, reactor, protocols=[])
        root.privilegedStartService()
        root.startService()
        self.addCleanup(root.stopService)
        return root.listeners()["manhole"].bound_port, key_path, root

    def ssh(self, port: int, key_path: str) -> SSHSession:
        proc = SSHSession()
        argv = [
            bin_path("ssh"),
            "-tt",
            "-F",
            "/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "PreferredAuthentications=publickey,password,keyboard-interactive",
            "-i",
            key_path,
            "-p",
            str(port),
            "operator@127.0.0.1",
        ]
        reactor.spawnProcess(
            proc, argv[0], argv, env={"PATH": os.environ.get("PATH", "")}, usePTY=False
        )

        def cleanup() -> defer.Deferred[int] | None:
            if proc.ended.called:
                return None
            proc.transport.signalProcess("KILL")
            return proc.ended

        self.addCleanup(cleanup)
        return proc

    async def test_login_with_key_and_evaluate(self) -> None:
        """An authorized key logs in; expressions see the live gateway, config and services."""
        port, key_path, _ = self.start()
        s = self.ssh(port, key_path)
        await s.expect(b">>> ")
        s.type(b"6 * 7")
        await s.expect(b"\n42")
        s.type(b"config.s3.region + '/' + gateway.name")
        await s.expect(b"'eu-north-1/gateway'")
        s.type(b"'core:datadir' in services")
        await s.expect(b"True")

    async def test_unknown_key_refused_and_no_password_offered(self) -> None:
        """A key not in authorized_keys is refused, and publickey is the only method offered."""
        port, _, root = self.start()
        other = os.path.abspath(self.mktemp())
        write_key(other)
        s = self.ssh(port, other)
        status = await s.ended
        self.assertEqual(status, 255)
        self.assertIn(b"Permission denied (publickey)", s.output)
        factory = root.listeners()["manhole"].factory
        self.assertEqual(factory.portal.listCredentialsInterfaces(), [ISSHPrivateKey])

    def test_host_key_generated_private(self) -> None:
        _, _, root = self.start()
        path = root.core.config.manhole_host_key
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
