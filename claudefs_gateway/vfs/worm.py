# -*- test-case-name: tests.vfs.test_worm -*-
"""
Write once, read many: files under retention or legal hold, for every protocol.

S3 object lock puts a version of an object under retention (until a date, in
governance or compliance mode) or legal hold (until lifted). The promise is
that the bytes cannot be changed or destroyed before then, and a promise that
only S3 kept would be broken by the first NFS or SMB client. So the record
lives on the inode (a private attribute, C{cfs.worm}) and the vfs enforces it
on every protocol (docs/s3.rst "Object lock"):

 - no write, truncation, allocation or hole punch of a protected file;
 - no unlink or rename-over of its last name (a hard link may be added or
   removed while another name keeps the file), and no rename of it by a file
   client (its key would change);
 - governance retention (never a legal hold, never compliance) may be
   bypassed for a delete by a request whose origin says so (S3's
   C{x-amz-bypass-governance-retention}, allowed to the bucket's owner).

Refusals are L{errors.Perm} (EPERM): NFS3ERR_PERM, SMB
STATUS_ACCESS_DENIED, S3 403 AccessDenied. Records are cached per inode
(bounded) and dropped when the vfs writes one, so the check costs a lookup in
memory for files already seen.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import attrs

__all__ = ["Retention", "WORM_KEY", "SEAL_KEY", "GOVERNANCE", "COMPLIANCE", "WormCache"]

WORM_KEY = b"worm"
#: A file whose bytes only the front end that wrote them can read (S3
#: server-side encryption: what is stored is ciphertext). File clients get
#: EACCES for reads and writes of its data, never the ciphertext.
SEAL_KEY = b"seal"
GOVERNANCE = "GOVERNANCE"
COMPLIANCE = "COMPLIANCE"


@attrs.frozen
class Retention:
    """
    What protects one file.

    @ivar mode: C{GOVERNANCE} or C{COMPLIANCE} (None: no retention).
    @ivar until_ns: end of retention, in nanoseconds since the epoch.
    @ivar hold: a legal hold is on.
    """

    mode: str | None = None
    until_ns: int | None = None
    hold: bool = False

    def retained(self, now_ns: int) -> bool:
        return self.mode is not None and self.until_ns is not None and self.until_ns > now_ns

    def active(self, now_ns: int) -> bool:
        """The file may not be changed or destroyed now."""
        return self.hold or self.retained(now_ns)

    def bypassable(self, now_ns: int) -> bool:
        """Only governance retention protects it (a delete may bypass that)."""
        return not self.hold and self.mode == GOVERNANCE

    def encode(self) -> bytes:
        d: dict[str, object] = {}
        if self.mode is not None:
            d["m"] = self.mode
        if self.until_ns is not None:
            d["u"] = self.until_ns
        if self.hold:
            d["h"] = True
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> Retention | None:
        if not raw:
            return None
        try:
            d = json.loads(raw)
            r = cls(d.get("m"), d.get("u"), bool(d.get("h")))
        except (ValueError, TypeError, AttributeError):
            return None
        if r.mode is None and not r.hold:
            return None
        return r


class WormCache:
    """Retention records by inode, least recently used dropped first."""

    def __init__(self, size: int = 65536) -> None:
        self._size = size
        self._items: OrderedDict[int, Retention | None] = OrderedDict()

    def get(self, ino: int) -> tuple[bool, Retention | None]:
        """(known, record)."""
        if ino in self._items:
            self._items.move_to_end(ino)
            return True, self._items[ino]
        return False, None

    def put(self, ino: int, r: Retention | None) -> None:
        self._items[ino] = r
        self._items.move_to_end(ino)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def drop(self, ino: int) -> None:
        self._items.pop(ino, None)
