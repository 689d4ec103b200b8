# -*- test-case-name: tests.vfs.test_identity -*-
"""
The user database: one identity per person, for every protocol.

A user has a name, uid, primary gid and groups (what NFS AUTH_SYS would carry),
an NT hash for SMB's NTLMv2, an S3 access key and secret, and an optional NFSv4
name. Users come from the configuration's C{users} list, or from a users file
(default C{<data_dir>/users.yaml}) that C{cfs-gateway user} maintains; the file
is re-read when it changes, so adding a user needs no restart.

Secrets never leave this module except to the code that verifies a signature or
a response; the L{User} repr masks them, and they are registered with the log
scrubber.
"""

from __future__ import annotations

import os
import secrets
import string
from pathlib import Path
from typing import Any

import attrs
import yaml
from twisted.internet.interfaces import IReactorTime

from zope.interface import implementer

from claudefs_gateway.core import log as _logmod
from claudefs_gateway.core._schema import Builder, load_yaml
from claudefs_gateway.core.config import User as UserConfig
from claudefs_gateway.core.log import Logger
from claudefs_gateway.errors import ConfigError, Problem
from claudefs_gateway.fstypes import Credentials
from claudefs_gateway.interfaces import IUserDB

__all__ = [
    "User",
    "UserDB",
    "nt_hash",
    "new_access_key",
    "new_secret_key",
    "load_users_file",
    "save_users_file",
]

_RELOAD_INTERVAL = 1.0


def nt_hash(password: str) -> str:
    """The NT hash (MD4 of UTF-16LE) SMB's NTLM authentication uses, as 32 hex digits."""
    from Cryptodome.Hash import MD4  # pycryptodomex: OpenSSL 3 no longer offers MD4

    return MD4.new(password.encode("utf-16-le")).hexdigest()


def new_access_key() -> str:
    """An S3 access key id: 20 upper-case letters and digits, starting AK."""
    alphabet = string.ascii_uppercase + string.digits
    return "AK" + "".join(secrets.choice(alphabet) for _ in range(18))


def new_secret_key() -> str:
    """An S3 secret access key: 40 characters, 238 bits of randomness."""
    alphabet = string.ascii_letters + string.digits + "+/"
    return "".join(secrets.choice(alphabet) for _ in range(40))


@attrs.frozen
class User:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    nt_hash: str | None = attrs.field(default=None, repr=lambda v: "None" if v is None else "'***'")
    s3_access_key: str | None = None
    s3_secret_key: str | None = attrs.field(
        default=None, repr=lambda v: "None" if v is None else "'***'"
    )
    nfs4_name: str | None = None
    s3_create_buckets: bool = True

    @property
    def credentials(self) -> Credentials:
        groups = tuple(g for g in self.groups if g != self.gid)
        return Credentials(self.uid, self.gid, groups)

    @classmethod
    def from_config(cls, u: UserConfig) -> User:
        return cls(
            u.name,
            u.uid,
            u.gid,
            tuple(u.groups),
            u.nt_hash,
            u.s3_access_key,
            u.s3_secret_key,
            u.nfs4_name,
            u.s3_create_buckets,
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "uid": self.uid, "gid": self.gid}
        if self.groups:
            d["groups"] = list(self.groups)
        for key in ("nt_hash", "s3_access_key", "s3_secret_key", "nfs4_name"):
            v = getattr(self, key)
            if v is not None:
                d[key] = v
        if not self.s3_create_buckets:
            d["s3_create_buckets"] = False
        return d


def load_users_file(path: Path) -> list[User]:
    """
    Read and validate a users file (a YAML list of users, the schema of the
    configuration's C{users} entries). A missing file is an empty database.

    @raise ConfigError: every problem, with line numbers.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as e:
        raise ConfigError([Problem("", None, f"cannot read: {e.strerror}")], str(path)) from None
    raw = load_yaml(text, str(path))
    if raw is None:
        return []
    b = Builder()
    users = b.value(list[UserConfig], raw, None, "users", 1)
    if b.problems or users is Builder.INVALID:
        raise ConfigError(
            b.problems or [Problem("users", 1, "expected a list of users")], str(path)
        )
    names = [u.name for u in users]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ConfigError(
            [Problem("users", None, f"user {sorted(dupes)[0]!r} is listed twice")], str(path)
        )
    return [User.from_config(u) for u in users]


def save_users_file(path: Path, users: list[User]) -> None:
    """Write the users file atomically, mode 600 (it holds secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    text = (
        "# claudefs-gateway users: maintained by `cfs-gateway user`. Holds secrets: keep it 600.\n"
    )
    text += yaml.safe_dump([u.to_dict() for u in users], sort_keys=False)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@implementer(IUserDB)
class UserDB:
    """
    Lookups by name (case-insensitive, as SMB compares them), uid, S3 access
    key and NFSv4 name.

    @param inline: users from the configuration; if given, the file is not used.
    @param path: the users file otherwise.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        inline: list[User] | None = None,
        path: Path | None = None,
        nfs4_domain: str = "localdomain",
    ) -> None:
        self._clock = clock
        self.path = path if inline is None else None
        self.nfs4_domain = nfs4_domain
        self._users: list[User] = []
        self._stamp: tuple[int, int] | None = None
        self._checked = float("-inf")
        self._index(inline or [])
        if self.path is not None:
            self._reload(force=True)

    def _index(self, users: list[User]) -> None:
        self._users = list(users)
        self._by_name = {u.name.lower(): u for u in users}
        self._by_uid: dict[int, User] = {}
        for u in users:
            self._by_uid.setdefault(u.uid, u)
        self._by_key = {u.s3_access_key: u for u in users if u.s3_access_key}
        self._by_nfs4 = {u.nfs4_name.lower(): u for u in users if u.nfs4_name}
        _logmod.add_secrets(s for u in users for s in (u.nt_hash, u.s3_secret_key) if s)

    def _reload(self, force: bool = False) -> None:
        if self.path is None:
            return
        now = self._clock.seconds()
        if not force and now - self._checked < _RELOAD_INTERVAL:
            return
        self._checked = now
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and not force:
            return
        try:
            users = load_users_file(self.path)
        except ConfigError as e:
            self._log.error("users file not reloaded: {problems}", problems=e.render())
            return
        self._stamp = stamp
        self._index(users)
        self._log.info("user database: {n} users", n=len(users))

    def all(self) -> list[User]:
        self._reload()
        return list(self._users)

    def by_name(self, name: str) -> User | None:
        self._reload()
        return self._by_name.get(name.lower())

    def by_uid(self, uid: int) -> User | None:
        self._reload()
        return self._by_uid.get(uid)

    def by_access_key(self, key: str) -> User | None:
        self._reload()
        return self._by_key.get(key)

    # -- NFSv4 names (RFC 7530 §5.9: "user@domain", or a bare number) ------------

    def uid_to_nfs4(self, uid: int) -> str:
        u = self.by_uid(uid)
        if u is not None:
            return u.nfs4_name or f"{u.name}@{self.nfs4_domain}"
        return str(uid)

    def gid_to_nfs4(self, gid: int) -> str:
        return str(gid)

    def nfs4_to_uid(self, name: str) -> int | None:
        if name.isdigit():
            return int(name)
        self._reload()
        u = self._by_nfs4.get(name.lower())
        if u is None and "@" in name:
            user, _, domain = name.partition("@")
            if domain.lower() == self.nfs4_domain.lower():
                u = self._by_name.get(user.lower())
        return u.uid if u is not None else None

    def nfs4_to_gid(self, name: str) -> int | None:
        return int(name) if name.isdigit() else None
