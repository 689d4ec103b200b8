# -*- test-case-name: tests.vfs.test_exports -*-
"""
Exports: which part of the namespace a client may use, and as whom.

Each export gets a stable 32-bit id derived from its path (and kind), so file
handles stay valid across restarts and configuration reordering. L{Exports.caller}
is where export rules meet a request: the client network is checked, then
C{all_squash}/C{root_squash} turn the identity the client claimed into the one
the request runs as.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable

import attrs

from claudefs_gateway import errors
from claudefs_gateway.core.config import Export
from claudefs_gateway.fstypes import Credentials

__all__ = ["ExportInfo", "Exports", "Caller", "export_id"]


def export_id(key: str) -> int:
    """A stable nonzero 32-bit id for an export key (its path, or C{s3:<root>})."""
    value = struct.unpack(
        ">I", hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()[:4]
    )[0]
    return value or 1


@attrs.frozen
class ExportInfo:
    """An export as the vfs serves it. C{root_ino} is filled when the vfs opens."""

    id: int
    rules: Export
    root_ino: int = 0

    @property
    def path(self) -> str:
        return self.rules.path

    @property
    def name(self) -> str:
        return self.rules.share_name


@attrs.frozen
class Caller:
    """
    Who is asking, through which export, from where: every vfs call takes one.

    @ivar cred: the credentials the request runs as (after squashing).
    @ivar claimed: the credentials the client presented, for logs.
    @ivar client: the client's address (for logs and lock ownership), never in metrics.
    """

    cred: Credentials
    export: ExportInfo
    client: str
    protocol: str
    claimed: Credentials | None = None

    @property
    def read_only(self) -> bool:
        return self.export.rules.read_only


class Exports:
    """The table of exports by id, name and path."""

    def __init__(self, exports: list[ExportInfo]) -> None:
        self._by_id: dict[int, ExportInfo] = {}
        for e in exports:
            if e.id in self._by_id:
                raise errors.Inval(
                    f"export id collision between {self._by_id[e.id].path} and {e.path}"
                )
            self._by_id[e.id] = e
        # The export with an id, or None: the dictionary's own get (a C
        # call), as every NFS call's handle looks its export up here.
        self.get: Callable[[int], ExportInfo | None] = self._by_id.get

    @classmethod
    def from_config(cls, exports: list[Export], s3_root: str | None = None) -> Exports:
        infos = [ExportInfo(export_id(e.path), e) for e in exports]
        if s3_root is not None:
            # S3 requests run as the signing user: no squashing, any client.
            rules = Export(
                path=s3_root, name="s3", root_squash=False, protocols=[], browseable=False
            )
            infos.append(ExportInfo(export_id(f"s3:{s3_root}"), rules))
        return cls(infos)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def by_path(self, path: str) -> ExportInfo | None:
        for e in self._by_id.values():
            if e.path == path and e.rules.name != "s3":
                return e
        return None

    def by_name(self, name: str, protocol: str) -> ExportInfo | None:
        """An export by share name (case-insensitive, as SMB compares them)."""
        key = name.lower()
        for e in self._by_id.values():
            if protocol in e.rules.protocols and e.name.lower() == key:
                return e
        return None

    def for_protocol(self, protocol: str) -> list[ExportInfo]:
        return [e for e in self._by_id.values() if protocol in e.rules.protocols]

    @property
    def s3(self) -> ExportInfo | None:
        for e in self._by_id.values():
            if e.rules.name == "s3" and not e.rules.protocols:
                return e
        return None

    def replace(self, info: ExportInfo) -> None:
        self._by_id[info.id] = info

    def caller(
        self, export: ExportInfo, client: str, claimed: Credentials, protocol: str
    ) -> Caller:
        """
        The identity a request through C{export} from C{client} runs as.

        @raise Access: C{client} is not in the export's allowed networks.
        """
        rules = export.rules
        if client and not rules.allows(client):
            raise errors.Access("client not allowed by export rules")
        cred = squash(rules, claimed)
        return Caller(cred, export, client, protocol, claimed)


def squash(rules: Export, cred: Credentials) -> Credentials:
    """Apply C{all_squash} or C{root_squash} (Linux knfsd semantics)."""
    if rules.all_squash:
        return Credentials(rules.anonuid, rules.anongid, ())
    if rules.root_squash:
        uid = rules.anonuid if cred.uid == 0 else cred.uid
        gid = rules.anongid if cred.gid == 0 else cred.gid
        groups = tuple(rules.anongid if g == 0 else g for g in cred.groups)
        if uid != cred.uid or gid != cred.gid or groups != cred.groups:
            return Credentials(uid, gid, groups)
    return cred
