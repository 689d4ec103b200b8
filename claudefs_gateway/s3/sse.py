# -*- test-case-name: tests.s3.test_sse -*-
"""
Server-side encryption: SSE-S3 (keys the gateway keeps) and SSE-C (keys the
client sends with every request), AES-256-GCM through C{cryptography}.

Layout at rest. An object is one or more segments (a single PUT: segment 0;
a multipart upload: one per part, numbered by part number), each cut into
chunks of L{CHUNK} plaintext bytes stored as ciphertext followed by its
16-byte GCM tag, so any byte range is read by decrypting only the chunks it
touches. Each object has its own key: HKDF-SHA256 of the base key (SSE-S3: a
random data key; SSE-C: the customer's key) with a random 16-byte salt, so
the 12-byte nonce (segment number, chunk number) never repeats under a key,
and an altered, moved or truncated chunk fails authentication.

Keys. SSE-S3 data keys are stored wrapped (AES-256-GCM) by a master key of
the gateway's keyring (L{Keyring}: C{<data_dir>/s3-sse-keys.json}, mode 600,
re-read when it changes); rotating adds a new current master key, and old
ones stay to unwrap the objects written under them. An SSE-C key is never
stored: only an HMAC of it under the gateway's secret, to tell a wrong key
(403) from the right one. No key, data key or customer key is ever logged or
put in an error message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from claudefs_gateway.core.log import Logger
from claudefs_gateway.s3.errors import S3Error

__all__ = [
    "CHUNK",
    "TAG",
    "cipher_size",
    "Sealer",
    "Opener",
    "Keyring",
    "KEYRING_FILE",
    "Sse",
    "customer_key",
]

CHUNK = 64 * 1024
KEYRING_FILE = "s3-sse-keys.json"
TAG = 16
_INFO = b"claudefs-gateway sse v1"


def cipher_size(plain: int) -> int:
    """Bytes at rest for C{plain} bytes of one segment."""
    chunks = (plain + CHUNK - 1) // CHUNK
    return plain + chunks * TAG


def _nonce(segment: int, chunk: int) -> bytes:
    return segment.to_bytes(4, "big") + chunk.to_bytes(8, "big")


def object_key(base: bytes, salt: bytes) -> AESGCM:
    """The AES-256-GCM key of one object."""
    k = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_INFO).derive(base)
    return AESGCM(k)


class Sealer:
    """Encrypts one segment as it streams in (whole chunks out as they fill)."""

    def __init__(self, aead: AESGCM, segment: int) -> None:
        self._aead = aead
        self._segment = segment
        self._chunk = 0
        self._buf = bytearray()

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = []
        while len(self._buf) >= CHUNK:
            piece = bytes(self._buf[:CHUNK])
            del self._buf[:CHUNK]
            out.append(self._aead.encrypt(_nonce(self._segment, self._chunk), piece, None))
            self._chunk += 1
        return b"".join(out)

    def finish(self) -> bytes:
        if not self._buf:
            return b""
        piece, self._buf = bytes(self._buf), bytearray()
        out = self._aead.encrypt(_nonce(self._segment, self._chunk), piece, None)
        self._chunk += 1
        return out


@attrs.frozen
class Segment:
    """One segment of an encrypted object: its number, plaintext and stored offsets, plaintext size."""

    number: int
    plain_offset: int
    cipher_offset: int
    size: int


def segments(numbers: list[int], sizes: list[int]) -> list[Segment]:
    out = []
    p = c = 0
    for n, s in zip(numbers, sizes, strict=True):
        out.append(Segment(n, p, c, s))
        p += s
        c += cipher_size(s)
    return out


class Opener:
    """
    Reads plaintext ranges of an encrypted object.

    @param read: C{read(offset, count)} of the stored (ciphertext) bytes,
        a coroutine or Deferred firing with bytes.
    """

    def __init__(self, aead: AESGCM, segs: list[Segment], read: Any) -> None:
        self._aead = aead
        self._segs = segs
        self._read = read

    @property
    def size(self) -> int:
        return sum(s.size for s in self._segs)

    def _pieces(self, offset: int, count: int) -> Iterator[tuple[Segment, int, int, int]]:
        """(segment, chunk, first byte in chunk, bytes) covering the plaintext range."""
        end = offset + count
        for seg in self._segs:
            s_end = seg.plain_offset + seg.size
            if s_end <= offset or seg.plain_offset >= end:
                continue
            lo = max(offset, seg.plain_offset) - seg.plain_offset
            hi = min(end, s_end) - seg.plain_offset
            chunk = lo // CHUNK
            while chunk * CHUNK < hi:
                c_lo = chunk * CHUNK
                first = max(lo, c_lo) - c_lo
                last = min(hi, c_lo + CHUNK, seg.size) - c_lo
                yield seg, chunk, first, last - first
                chunk += 1

    async def read(self, offset: int, count: int) -> bytes:
        """Plaintext bytes [offset, offset+count) (fewer at the end of the object)."""
        out = []
        for seg, chunk, first, n in self._pieces(offset, count):
            plain_len = min(CHUNK, seg.size - chunk * CHUNK)
            at = seg.cipher_offset + chunk * (CHUNK + TAG)
            data = await self._read(at, plain_len + TAG)
            if len(data) != plain_len + TAG:
                raise S3Error("InternalError", "An encrypted object is truncated")
            try:
                plain = self._aead.decrypt(_nonce(seg.number, chunk), bytes(data), None)
            except InvalidTag:
                raise S3Error(
                    "InternalError", "An encrypted object failed authentication"
                ) from None
            out.append(plain[first : first + n])
        return b"".join(out)


# -- keys --------------------------------------------------------------------------


class Keyring:
    """
    The gateway's SSE-S3 master keys and the secret SSE-C keys are checked
    against: C{{"current": id, "keys": {id: base64}, "hmac": base64}} in a
    file of mode 600, made with one key on first use, re-read when it changes
    (so a rotation by C{cfs-gateway sse-key rotate} takes effect at once).
    """

    _log = Logger()

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: float | None = None
        self._keys: dict[str, bytes] = {}
        self._current = ""
        self._hmac = b""

    def _load(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self.rotate()
            st = self.path.stat()
        if st.st_mtime == self._mtime and self._keys:
            return
        d = json.loads(self.path.read_text())
        self._keys = {k: base64.b64decode(v) for k, v in d["keys"].items()}
        self._current = d["current"]
        self._hmac = base64.b64decode(d["hmac"])
        self._mtime = st.st_mtime

    def rotate(self) -> str:
        """Add a new master key and make it current; the id. Old keys stay for reading."""
        keys: dict[str, str] = {}
        hmac_key = base64.b64encode(os.urandom(32)).decode()
        if self.path.exists():
            old = json.loads(self.path.read_text())
            keys, hmac_key = old["keys"], old["hmac"]
        kid = os.urandom(8).hex()
        keys[kid] = base64.b64encode(os.urandom(32)).decode()
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"current": kid, "keys": keys, "hmac": hmac_key}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._mtime = None
        self._log.info("SSE-S3 master key rotated: new key {kid} is current", kid=kid)
        return kid

    def wrap(self, data_key: bytes) -> tuple[str, bytes]:
        """(key id, nonce + wrapped key) of a data key under the current master key."""
        self._load()
        nonce = os.urandom(12)
        return self._current, nonce + AESGCM(self._keys[self._current]).encrypt(
            nonce, data_key, None
        )

    def check(self, customer_key: bytes) -> bytes:
        """What is kept of an SSE-C key: its HMAC under the keyring's own secret."""
        self._load()
        return hmac.new(self._hmac, customer_key, hashlib.sha256).digest()

    def unwrap(self, kid: str, blob: bytes) -> bytes:
        self._load()
        key = self._keys.get(kid)
        if key is None:
            raise S3Error("InternalError", "The master key of this encrypted object is missing")
        try:
            return AESGCM(key).decrypt(blob[:12], blob[12:], None)
        except InvalidTag:
            raise S3Error("InternalError", "A data key failed authentication") from None


def customer_key(
    headers: dict[str, list[str]], prefix: str = "x-amz-server-side-encryption-customer-"
) -> tuple[bytes, str] | None:
    """
    The SSE-C key a request carries (algorithm, key, key MD5 headers), checked;
    (key, base64 MD5) or None if it carries none.

    @raise S3Error: InvalidArgument (a header missing, not AES256, a key not
        of 256 bits, an MD5 that does not match). The key is never echoed.
    """

    if (
        prefix + "algorithm" not in headers
        and prefix + "key" not in headers
        and prefix + "key-md5" not in headers
    ):
        return None  # most requests: no closure and no three calls

    def h(name: str) -> str | None:
        v = headers.get(prefix + name)
        return v[0].strip() if v else None

    algo, key_b64, md5_b64 = h("algorithm"), h("key"), h("key-md5")
    if algo is None and key_b64 is None and md5_b64 is None:
        return None
    if algo is None:
        raise S3Error(
            "InvalidArgument",
            "Requests specifying Server Side Encryption with Customer provided keys must provide a valid encryption algorithm.",
        )
    if algo != "AES256":
        raise S3Error(
            "InvalidEncryptionAlgorithmError", "The encryption algorithm specified is not valid."
        )
    if key_b64 is None:
        raise S3Error(
            "InvalidArgument",
            "Requests specifying Server Side Encryption with Customer provided keys must provide an appropriate secret key.",
        )
    try:
        key = base64.b64decode(key_b64, validate=True)
    except ValueError:
        raise S3Error(
            "InvalidArgument", "The secret key was invalid for the specified algorithm."
        ) from None
    if len(key) != 32:
        raise S3Error("InvalidArgument", "The secret key was invalid for the specified algorithm.")
    md5 = base64.b64encode(hashlib.md5(key).digest()).decode()
    if md5_b64 is None:
        raise S3Error(
            "InvalidArgument",
            "Requests specifying Server Side Encryption with Customer provided keys must provide the client calculated MD5 of the secret key.",
        )
    if not hmac.compare_digest(md5, md5_b64):
        raise S3Error(
            "InvalidArgument",
            "The calculated MD5 hash of the key did not match the hash that was provided.",
        )
    return key, md5


@attrs.define
class Sse:
    """
    How one object is encrypted (kept in its S3 metadata; never a key).

    @ivar kind: C{AES256} (SSE-S3) or C{SSE-C}.
    @ivar salt: the per-object HKDF salt.
    @ivar kid: SSE-S3: the master key id; C{wrapped}: the data key under it.
    @ivar check: SSE-C: HMAC of the customer key under the gateway's secret.
    @ivar md5: SSE-C: base64 MD5 of the customer key (AWS answers it back).
    @ivar plain: the plaintext size; C{numbers}/C{sizes}: its segments.
    """

    kind: str
    salt: bytes
    kid: str | None = None
    wrapped: bytes | None = None
    check: bytes | None = None
    md5: str | None = None
    plain: int = 0
    numbers: list[int] = attrs.field(factory=lambda: [0])
    sizes: list[int] = attrs.field(factory=list)

    def encode(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "k": self.kind,
            "s": base64.b64encode(self.salt).decode(),
            "p": self.plain,
        }
        if self.kid is not None:
            d["i"] = self.kid
        if self.wrapped is not None:
            d["w"] = base64.b64encode(self.wrapped).decode()
        if self.check is not None:
            d["c"] = base64.b64encode(self.check).decode()
        if self.md5 is not None:
            d["m"] = self.md5
        if self.numbers != [0]:
            d["n"] = self.numbers
        d["z"] = self.sizes
        return d

    @classmethod
    def decode(cls, d: dict[str, Any] | None) -> Sse | None:
        if not d:
            return None
        try:
            return cls(
                kind=d["k"],
                salt=base64.b64decode(d["s"]),
                kid=d.get("i"),
                wrapped=base64.b64decode(d["w"]) if d.get("w") else None,
                check=base64.b64decode(d["c"]) if d.get("c") else None,
                md5=d.get("m"),
                plain=int(d.get("p", 0)),
                numbers=list(d.get("n") or [0]),
                sizes=list(d.get("z") or []),
            )
        except (KeyError, ValueError, TypeError):
            return None

    def segments(self) -> list[Segment]:
        sizes = self.sizes or [self.plain]
        return segments(self.numbers, sizes)
