# -*- test-case-name: tests.smb.test_crypto -*-
"""
SMB2/3 message signing, encryption and key derivation ([MS-SMB2] 3.1.4),
all from C{cryptography}.

  - Key derivation: SP800-108 counter mode with HMAC-SHA256 (3.1.4.2), the
    labels and contexts of 3.0/3.0.2 or, for 3.1.1, the preauth integrity
    hash as context.
  - Signing: HMAC-SHA256 (2.0.2, 2.1; the session key itself), AES-128-CMAC
    (3.0, 3.0.2, and 3.1.1 unless negotiated otherwise), AES-128-GMAC
    (3.1.1 with the SIGNING_CAPABILITIES context).
  - Encryption: the TRANSFORM_HEADER with AES-128/256 in CCM or GCM mode.

Signatures are computed over the message with its signature field zeroed,
fed in pieces so an 8 MiB WRITE is never copied to be verified.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import cmac, hashes
from cryptography.hazmat.primitives.ciphers import Cipher as _Cipher
from cryptography.hazmat.primitives.ciphers import algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM
from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFHMAC, CounterLocation, Mode

from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.smb.constants import (
    AES_128_GCM,
    AES_256_CCM,
    AES_256_GCM,
    AES_CMAC,
    AES_GMAC,
    HMAC_SHA256,
    SMB_3_0,
    SMB_3_1_1,
    TRANSFORM_HEADER_SIZE,
    TRANSFORM_MAGIC,
)
from claudefs_gateway.smb.header import TransformHeader

__all__ = [
    "kdf",
    "SessionKeys",
    "derive_keys",
    "Signer",
    "make_signer",
    "Sealer",
    "PreauthHash",
    "DecryptError",
]

_ZERO16 = b"\x00" * 16


def kdf(ki: bytes, label: bytes, context: bytes, length: int = 16) -> bytes:
    """SP800-108 KDF in counter mode, PRF HMAC-SHA256, r=32, L in bits (MS-SMB2 3.1.4.2)."""
    return KBKDFHMAC(
        algorithm=hashes.SHA256(),
        mode=Mode.CounterMode,
        length=length,
        rlen=4,
        llen=4,
        location=CounterLocation.BeforeFixed,
        label=label,
        context=context,
        fixed=None,
    ).derive(ki)


class SessionKeys:
    """
    The keys of one session, as the server uses them.

    @ivar signing: signs and verifies messages.
    @ivar encryption: encrypts what the server sends (the client's decryption key).
    @ivar decryption: decrypts what the client sends.
    @ivar application: handed to RPC over named pipes (unused here, derived for completeness).
    """

    __slots__ = ("signing", "encryption", "decryption", "application")

    def __init__(self, signing: bytes, encryption: bytes, decryption: bytes, application: bytes):
        self.signing = signing
        self.encryption = encryption
        self.decryption = decryption
        self.application = application

    def __repr__(self) -> str:
        return "<SessionKeys ***>"


def derive_keys(
    dialect: int, session_key: bytes, preauth_hash: bytes | None, cipher: int
) -> SessionKeys:
    """
    Derive a session's keys (MS-SMB2 3.3.5.5.3).

    @param session_key: the authentication's session key (the first 16
        bytes are Session.SessionKey; AES-256 ciphers use it whole).
    @param preauth_hash: Session.PreauthIntegrityHashValue (3.1.1 only).
    """
    key16 = session_key[:16].ljust(16, b"\x00")
    if dialect < SMB_3_0:
        return SessionKeys(key16, b"", b"", key16)
    if dialect >= SMB_3_1_1:
        assert preauth_hash is not None
        ctx = preauth_hash
        signing = kdf(key16, b"SMBSigningKey\x00", ctx)
        application = kdf(key16, b"SMBAppKey\x00", ctx)
        if cipher in (AES_256_CCM, AES_256_GCM):
            full = session_key
            enc = kdf(full, b"SMBS2CCipherKey\x00", ctx, 32)
            dec = kdf(full, b"SMBC2SCipherKey\x00", ctx, 32)
        else:
            enc = kdf(key16, b"SMBS2CCipherKey\x00", ctx)
            dec = kdf(key16, b"SMBC2SCipherKey\x00", ctx)
        return SessionKeys(signing, enc, dec, application)
    return SessionKeys(
        kdf(key16, b"SMB2AESCMAC\x00", b"SmbSign\x00"),
        kdf(key16, b"SMB2AESCCM\x00", b"ServerOut\x00"),
        kdf(key16, b"SMB2AESCCM\x00", b"ServerIn \x00"),
        kdf(key16, b"SMB2APP\x00", b"SmbRpc\x00"),
    )


# -- signing ----------------------------------------------------------------------


class Signer:
    """Signs and verifies whole SMB2 messages (header first) with one key."""

    algorithm = -1

    def __init__(self, key: bytes) -> None:
        self._key = key

    def __repr__(self) -> str:
        return f"<{type(self).__name__} ***>"

    def _mac(
        self, pieces: tuple[bytes | bytearray | memoryview, ...], message_id: int, flags: int
    ) -> bytes:
        raise NotImplementedError

    def sign(
        self, message: bytes | bytearray | memoryview, *, response: bool, cancel: bool = False
    ) -> bytes:
        """
        The 16-byte signature of C{message} (its own signature field is ignored).

        @param response: the message goes from server to client (GMAC's nonce says so).
        @param cancel: the message is a CANCEL request (GMAC's nonce says so).
        """
        view = memoryview(message)
        message_id = int.from_bytes(view[24:32], "little")
        flags = (1 if response else 0) | (2 if cancel else 0)
        return self._mac((view[:48], _ZERO16, view[64:]), message_id, flags)

    def sign_parts(
        self, parts: list[bytes | bytearray | memoryview], *, response: bool = True
    ) -> bytes:
        """
        The 16-byte signature of the message C{parts} make when joined, fed
        to the MAC piece by piece: a READ reply's data is signed where it
        lies, never copied behind its header (its own signature field, in
        the first part, is ignored).

        @param parts: the message in order; the first holds the whole
            64-byte header.
        """
        head = memoryview(parts[0])
        if len(head) < 64:
            raise ValueError("the first part must hold the SMB2 header")
        message_id = int.from_bytes(head[24:32], "little")
        pieces = (head[:48], _ZERO16, head[64:], *parts[1:])
        return self._mac(pieces, message_id, 1 if response else 0)

    def verify(
        self,
        message: bytes | bytearray | memoryview,
        *,
        response: bool = False,
        cancel: bool = False,
    ) -> bool:
        """Whether the signature field of C{message} is right (compared in constant time)."""
        view = memoryview(message)
        if len(view) < 64:
            return False
        return hmac.compare_digest(
            self.sign(view, response=response, cancel=cancel), bytes(view[48:64])
        )


class HmacSha256Signer(Signer):
    algorithm = HMAC_SHA256

    def _mac(
        self, pieces: tuple[bytes | bytearray | memoryview, ...], message_id: int, flags: int
    ) -> bytes:
        h = hmac.new(self._key, digestmod=hashlib.sha256)
        for p in pieces:
            h.update(p)
        return h.digest()[:16]


class CmacSigner(Signer):
    algorithm = AES_CMAC

    def __init__(self, key: bytes) -> None:
        super().__init__(key)
        # Keyed once; each message's MAC starts from a copy (building the
        # cipher per message was most of signing a small reply).
        self._base = cmac.CMAC(algorithms.AES(key))

    def _mac(
        self, pieces: tuple[bytes | bytearray | memoryview, ...], message_id: int, flags: int
    ) -> bytes:
        c = self._base.copy()
        for p in pieces:
            c.update(p)  # type: ignore[arg-type]  # any buffer will do
        return c.finalize()


class GmacSigner(Signer):
    """
    AES-GMAC (MS-SMB2 3.1.4.1): AES-GCM with no plaintext and the message as
    additional data; the nonce is the MessageId, then 4 bytes whose bit 0 says
    "response" and bit 1 "CANCEL request".
    """

    algorithm = AES_GMAC

    def __init__(self, key: bytes) -> None:
        super().__init__(key)
        self._gcm = AESGCM(key)

    def _mac(
        self, pieces: tuple[bytes | bytearray | memoryview, ...], message_id: int, flags: int
    ) -> bytes:
        nonce = struct.pack("<QI", message_id, flags)
        if sum(len(p) for p in pieces) <= _GMAC_JOIN_MAX:
            # One call into the keyed AEAD (a fifth of the cost of a cipher
            # context per message); large messages are not copied to join them.
            return self._gcm.encrypt(nonce, b"", b"".join(pieces))
        enc = _Cipher(algorithms.AES(self._key), modes.GCM(nonce)).encryptor()
        for p in pieces:
            enc.authenticate_additional_data(p)
        enc.finalize()
        return enc.tag


# Messages up to this size are joined and MACed in one call.
_GMAC_JOIN_MAX = 64 * 1024


def make_signer(algorithm: int, key: bytes) -> Signer:
    return {HMAC_SHA256: HmacSha256Signer, AES_CMAC: CmacSigner, AES_GMAC: GmacSigner}[algorithm](
        key
    )


# -- encryption ---------------------------------------------------------------------


# A TRANSFORM_HEADER from its Nonce on (MS-SMB2 2.2.41): what the AEAD authenticates.
_TRANSFORM_AAD = struct.Struct("<16sIHHQ")


class DecryptError(ProtocolError):
    """A TRANSFORM_HEADER message does not decrypt (wrong key, tampered, replayed nonce)."""


class Sealer:
    """
    Encrypts server messages and decrypts client messages of one session.

    Nonces: GCM takes 12 bytes, CCM 11 (the rest of the 16-byte field is
    zero). Ours are a random per-session prefix and a message counter, so
    none repeats under one key however many messages a session sends
    (random nonces alone would risk a collision after about 2**32 GCM
    messages).
    """

    def __init__(self, cipher: int, encryption_key: bytes, decryption_key: bytes) -> None:
        self.cipher = cipher
        gcm = cipher in (AES_128_GCM, AES_256_GCM)
        aead = AESGCM if gcm else AESCCM
        self._enc = aead(encryption_key)
        self._dec = aead(decryption_key)
        self._nonce_len = 12 if gcm else 11
        self._prefix = os.urandom(self._nonce_len - 8)
        self._counter = 0

    def __repr__(self) -> str:
        return f"<Sealer cipher={self.cipher}>"

    def _next_nonce(self) -> bytes:
        self._counter += 1
        return self._prefix + self._counter.to_bytes(8, "little")

    def encrypt(self, message: bytes | bytearray, session_id: int) -> bytes:
        """TRANSFORM_HEADER + ciphertext of C{message}."""
        nonce = self._next_nonce()
        # The header from the nonce on is what the AEAD authenticates
        # (TransformHeader.aad); packed once, no TransformHeader built.
        aad = _TRANSFORM_AAD.pack(nonce.ljust(16, b"\x00"), len(message), 0, 0x0001, session_id)
        sealed = self._enc.encrypt(nonce, bytes(message), aad)
        return b"".join((TRANSFORM_MAGIC, sealed[-16:], aad, memoryview(sealed)[:-16]))

    def decrypt(self, header: TransformHeader, data: bytes | memoryview) -> bytes:
        """
        The plaintext inside a transform message (C{data} is all of it, header included).

        @raise DecryptError: it does not authenticate or its size is wrong.
        """
        body = bytes(data[TRANSFORM_HEADER_SIZE:])
        if header.original_size != len(body):
            raise DecryptError("OriginalMessageSize does not match the ciphertext")
        if header.flags != 0x0001:
            raise DecryptError(f"transform Flags {header.flags}")
        nonce = header.nonce[: self._nonce_len]
        try:
            return self._dec.decrypt(nonce, body + header.signature, header.aad())
        except InvalidTag:
            raise DecryptError("transform message does not authenticate") from None


def key_bits(cipher: int) -> int:
    return 256 if cipher in (AES_256_CCM, AES_256_GCM) else 128


class PreauthHash:
    """SHA-512 preauth integrity hash chain (MS-SMB2 3.3.5.4, 3.3.5.5)."""

    __slots__ = ("value",)

    def __init__(self, value: bytes = b"\x00" * 64) -> None:
        self.value = value

    def update(self, message: bytes | bytearray | memoryview) -> None:
        h = hashlib.sha512(self.value)
        h.update(message)
        self.value = h.digest()

    def copy(self) -> PreauthHash:
        return PreauthHash(self.value)
