# -*- test-case-name: tests.vfs.test_handles -*-
"""
Opaque file handles that cannot be forged.

A handle is version (1 byte) | export id (4) | inode (8) | generation (4) |
HMAC-SHA256 of those 17 bytes, truncated to 16 bytes, under a per-install
secret kept in the data directory (C{handle_secret}, mode 600). 33 bytes:
within NFSv3's 64 and NFSv4's 128. A client cannot make a handle to an inode it
was never given (or move one to another export); a handle to a deleted file,
or to a reused inode number with another generation, is stale.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from pathlib import Path

from claudefs_gateway import errors

__all__ = ["HandleCodec", "load_or_create_secret", "HANDLE_SIZE"]

_VERSION = 1
_BODY = struct.Struct(">BIQI")
_MAC_SIZE = 16
HANDLE_SIZE = _BODY.size + _MAC_SIZE
SECRET_FILE = "handle_secret"


def load_or_create_secret(data_dir: Path) -> bytes:
    """The install's handle secret: 32 random bytes, created on first use (mode 600)."""
    path = data_dir / SECRET_FILE
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        secret = os.urandom(32)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dfd = os.open(data_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return secret
    if len(secret) != 32:
        raise errors.IO("handle secret file is damaged")
    return secret


# Handles made recently, by (export, inode, generation): a READDIRPLUS reply
# makes one per entry and an HMAC costs about as much as the rest of the
# entry's encoding; the same inputs always make the same handle.
_MADE_MAX = 16384


class HandleCodec:
    def __init__(self, secret: bytes) -> None:
        self._key = secret
        self._made: dict[tuple[int, int, int], bytes] = {}
        # The key's pads hashed once: each MAC copies this state (about
        # 0.6 µs less than hmac.new per handle made or checked, two per
        # NFS create: its handle, then its first use).
        self._keyed = hmac.new(secret, digestmod=hashlib.sha256)

    def _mac(self, body: bytes) -> bytes:
        h = self._keyed.copy()
        h.update(body)
        return h.digest()[:_MAC_SIZE]

    def encode(self, export_id: int, ino: int, gen: int) -> bytes:
        key = (export_id, ino, gen)
        handle = self._made.get(key)
        if handle is None:
            body = _BODY.pack(_VERSION, export_id, ino, gen & 0xFFFFFFFF)
            handle = body + self._mac(body)
            made = self._made
            if len(made) >= _MADE_MAX:
                made.clear()
            made[key] = handle
        return handle

    def decode(self, handle: bytes) -> tuple[int, int, int]:
        """
        (export id, inode, generation) of a handle we made.

        @raise BadHandle: wrong size, unknown version, or a MAC that does not verify.
        """
        if len(handle) != HANDLE_SIZE:
            raise errors.BadHandle("handle of the wrong size")
        body, mac = handle[: _BODY.size], handle[_BODY.size :]
        version, export_id, ino, gen = _BODY.unpack(body)
        if version != _VERSION or not hmac.compare_digest(mac, self._mac(body)):
            raise errors.BadHandle("handle does not verify")
        return export_id, ino, gen
