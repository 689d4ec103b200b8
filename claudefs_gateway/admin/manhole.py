# -*- test-case-name: tests.admin.test_manhole -*-
"""
The manhole: a Python console inside the running gateway, over SSH only.

Public-key authentication against one authorized_keys file is the only method
offered (no passwords, never telnet); any user name is accepted, the key
decides. The listener must be loopback or a UNIX socket (config validation
refuses anything else). The namespace holds the running service tree, the
configuration and the core subsystems, so an operator can look at live state:
C{gateway}, C{config}, C{core}, C{services}.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.application.service import MultiService
from twisted.conch import manhole, manhole_ssh
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker, readAuthorizedKeyFile
from twisted.conch.insults import insults
from twisted.conch.ssh import keys
from twisted.cred.portal import Portal

from zope.interface import implementer

from claudefs_gateway.core.log import Logger

__all__ = ["AuthorizedKeysFile", "ManholeService", "load_or_create_host_key", "make_factory"]

_log = Logger()


@implementer(IAuthorizedKeysDB)
class AuthorizedKeysFile:
    """
    The keys in one OpenSSH authorized_keys file, for any user name.

    Read at each login attempt, so adding or revoking a key needs no restart.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def getAuthorizedKeys(self, username: bytes) -> list[keys.Key]:
        try:
            with open(self.path, "rb") as f:
                return list(readAuthorizedKeyFile(f, parseKey=keys.Key.fromString))
        except OSError as e:
            _log.error("cannot read manhole authorized_keys: {why}", why=e.strerror)
            return []


def load_or_create_host_key(path: Path) -> keys.Key:
    """The manhole's SSH host key; an ed25519 key is generated (mode 600) if absent."""
    if not path.exists():
        private = ed25519.Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        _log.info("generated manhole host key")
    return keys.Key.fromFile(str(path))


def make_factory(
    namespace: dict[str, Any], authorized_keys: Path, host_key: keys.Key
) -> manhole_ssh.ConchFactory:
    """An SSH factory serving a colored Python REPL over C{namespace}."""

    def chained_protocol() -> insults.ServerProtocol:
        return insults.ServerProtocol(manhole.ColoredManhole, namespace)

    realm = manhole_ssh.TerminalRealm()
    realm.chainedProtocolFactory = chained_protocol  # type: ignore[assignment]  # a factory, not a class
    portal = Portal(realm, [SSHPublicKeyChecker(AuthorizedKeysFile(authorized_keys))])  # type: ignore[arg-type]
    factory = manhole_ssh.ConchFactory(portal)
    factory.publicKeys = {host_key.sshType(): host_key.public()}  # type: ignore[dict-item]  # conch wants Key objects
    factory.privateKeys = {host_key.sshType(): host_key}  # type: ignore[dict-item]
    return factory


class ManholeService(MultiService):
    """
    The manhole listener, built at start: its host key lives in the data
    directory, which exists only once the data directory service has started.
    """

    name = "admin:manhole"

    def __init__(self, core: Any, namespace: Callable[[], dict[str, Any]]) -> None:
        super().__init__()
        self._core = core
        self._namespace = namespace

    def _build(self) -> None:
        if self.services:
            return
        config = self._core.config
        m = config.admin.manhole
        host_key = load_or_create_host_key(config.manhole_host_key)
        factory = make_factory(self._namespace(), Path(m.authorized_keys), host_key)
        self._core.listener(
            self, "admin:manhole:listen", "manhole", m.bind, factory, drainable=False
        )

    def privilegedStartService(self) -> None:
        self._build()
        super().privilegedStartService()

    def startService(self) -> None:
        self._build()
        super().startService()
