"""
Key derivation, signing and encryption, checked against smbprotocol's own
implementation of the same MS-SMB2 sections (independently written).
"""

from __future__ import annotations

import os
import struct
import types

from hypothesis import given
from hypothesis import strategies as s
from smbprotocol import connection as spc
from smbprotocol.session import Session as SpSession
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.smb import constants as c
from claudefs_gateway.smb.crypto import (
    DecryptError,
    PreauthHash,
    Sealer,
    derive_keys,
    kdf,
    make_signer,
)
from claudefs_gateway.smb.header import Header, TransformHeader

CIPHERS = (c.AES_128_CCM, c.AES_128_GCM, c.AES_256_CCM, c.AES_256_GCM)


def message(command: int = c.Command.READ, mid: int = 7, body: bytes = b"x" * 40) -> bytes:
    return Header(command, message_id=mid, session_id=0x1234).pack() + body


class KdfTests(SynchronousTestCase):
    @given(s.binary(min_size=16, max_size=32), s.binary(max_size=20), s.binary(max_size=64))
    def test_matches_smbprotocol(self, key: bytes, label: bytes, context: bytes) -> None:
        """SP800-108 counter mode as smbprotocol computes it, 128 and 256 bits."""
        for n in (16, 32):
            self.assertEqual(
                kdf(key, label, context, n), SpSession._smb3kdf(None, key, label, context, n)
            )

    def test_keys_per_dialect(self) -> None:
        """3.0 labels and 3.1.1 preauth-hash contexts give the keys smbprotocol derives."""
        key = bytes(range(16))
        k30 = derive_keys(c.SMB_3_0, key, None, c.AES_128_CCM)
        kdf_ = SpSession._smb3kdf
        self.assertEqual(k30.signing, kdf_(None, key, b"SMB2AESCMAC\x00", b"SmbSign\x00"))
        self.assertEqual(k30.decryption, kdf_(None, key, b"SMB2AESCCM\x00", b"ServerIn \x00"))
        self.assertEqual(k30.encryption, kdf_(None, key, b"SMB2AESCCM\x00", b"ServerOut\x00"))
        h = os.urandom(64)
        k311 = derive_keys(c.SMB_3_1_1, key, h, c.AES_256_GCM)
        self.assertEqual(k311.signing, kdf_(None, key, b"SMBSigningKey\x00", h))
        self.assertEqual(k311.decryption, kdf_(None, key, b"SMBC2SCipherKey\x00", h, 32))
        self.assertEqual(k311.encryption, kdf_(None, key, b"SMBS2CCipherKey\x00", h, 32))
        k21 = derive_keys(c.SMB_2_1, key, None, 0)
        self.assertEqual(k21.signing, key)
        self.assertNotIn(key.hex(), repr(k311))


class SigningTests(SynchronousTestCase):
    def theirs(self, dialect: int, alg: int, key: bytes, msg: bytes, response: bool) -> bytes:
        conn = types.SimpleNamespace(dialect=dialect, signing_algorithm_id=alg)
        h = Header.unpack(msg)
        return spc.Connection._generate_signature(conn, msg, key, h.message_id, response, h.command)  # type: ignore[arg-type]

    @given(
        s.sampled_from(
            [
                (c.SMB_2_1, c.HMAC_SHA256),
                (c.SMB_3_0, c.AES_CMAC),
                (c.SMB_3_1_1, c.AES_GMAC),
                (c.SMB_3_1_1, c.AES_CMAC),
            ]
        ),
        s.binary(max_size=300),
        s.booleans(),
        s.integers(0, 2**64 - 1),
    )
    def test_matches_smbprotocol(
        self, pair: tuple[int, int], body: bytes, response: bool, mid: int
    ) -> None:
        """Signatures equal smbprotocol's for every algorithm, requests and replies."""
        dialect, alg = pair
        key = bytes(range(16))
        msg = message(mid=mid, body=body)
        ours = make_signer(alg, key).sign(msg, response=response)
        self.assertEqual(ours, self.theirs(dialect, alg, key, msg, response))

    @given(
        s.sampled_from([c.HMAC_SHA256, c.AES_CMAC, c.AES_GMAC]),
        s.binary(max_size=3000),
        s.lists(s.integers(0, 3000), max_size=6),
        s.binary(min_size=16, max_size=16),
        s.booleans(),
    )
    def test_parts_equal_joined(
        self, alg: int, body: bytes, cuts: list[int], old_sig: bytes, response: bool
    ) -> None:
        """
        A message signed in pieces (a READ reply: header, fixed part, data
        where it lies) gets the signature of the joined message, however it
        is cut and whatever its signature field holds (also past GMAC's
        64 KiB join, below).
        """
        signer = make_signer(alg, bytes(range(16)))
        head = bytearray(message(body=b""))
        head[48:64] = old_sig
        points = sorted({min(n, len(body)) for n in cuts})
        pieces = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
        parts: list[bytes | bytearray | memoryview] = [
            bytes(head),
            *(memoryview(p) for p in pieces),
        ]
        joined = bytes(head) + body
        self.assertEqual(
            signer.sign_parts(parts, response=response), signer.sign(joined, response=response)
        )

    def test_parts_large(self) -> None:
        """Pieces of several MiB (GMAC feeds them to the cipher one by one)."""
        data = os.urandom(3 << 20)
        head = message(body=struct.pack("<HBBIII", 17, 80, 0, len(data), 0, 0))
        for alg in (c.HMAC_SHA256, c.AES_CMAC, c.AES_GMAC):
            signer = make_signer(alg, os.urandom(16))
            self.assertEqual(
                signer.sign_parts([head, data[:1000], data[1000:]]),
                signer.sign(head + data, response=True),
            )
        with self.assertRaises(ValueError):
            signer.sign_parts([head[:63], head[63:]])

    def test_gmac_cancel_and_direction(self) -> None:
        """GMAC's nonce distinguishes replies and CANCEL requests."""
        key = bytes(16)
        signer = make_signer(c.AES_GMAC, key)
        msg = message(c.Command.CANCEL)
        sigs = {
            signer.sign(msg, response=False),
            signer.sign(msg, response=True),
            signer.sign(msg, response=False, cancel=True),
        }
        self.assertEqual(len(sigs), 3)
        self.assertEqual(
            signer.sign(msg, response=False, cancel=True),
            self.theirs(c.SMB_3_1_1, c.AES_GMAC, key, msg, False),
        )

    def test_verify(self) -> None:
        """A signed message verifies; any flipped bit (signature included) does not."""
        signer = make_signer(c.AES_CMAC, os.urandom(16))
        msg = bytearray(message())
        msg[48:64] = signer.sign(msg, response=False)
        self.assertTrue(signer.verify(bytes(msg)))
        for i in (0, 30, 50, len(msg) - 1):
            bad = bytearray(msg)
            bad[i] ^= 1
            self.assertFalse(signer.verify(bytes(bad)))
        self.assertFalse(signer.verify(b"short"))
        self.assertNotIn("key", repr(signer).lower().replace("signer", ""))


class SealTests(SynchronousTestCase):
    def pair(self, cipher: int) -> tuple[Sealer, Sealer]:
        bits = 32 if cipher in (c.AES_256_CCM, c.AES_256_GCM) else 16
        a, b = os.urandom(bits), os.urandom(bits)
        return Sealer(cipher, a, b), Sealer(cipher, b, a)

    @given(s.sampled_from(CIPHERS), s.binary(max_size=500))
    def test_round_trip(self, cipher: int, data: bytes) -> None:
        server, client = self.pair(cipher)
        sealed = server.encrypt(message(body=data), 0x1234)
        h = TransformHeader.unpack(sealed)
        self.assertEqual(h.session_id, 0x1234)
        self.assertEqual(client.decrypt(h, sealed), message(body=data))

    def test_nonces_never_repeat(self) -> None:
        server, _ = self.pair(c.AES_128_GCM)
        nonces = {TransformHeader.unpack(server.encrypt(b"m" * 64, 1)).nonce for _ in range(1000)}
        self.assertEqual(len(nonces), 1000)

    def test_tampering_detected(self) -> None:
        """Any change to the ciphertext, header or size fails to decrypt."""
        for cipher in CIPHERS:
            server, client = self.pair(cipher)
            sealed = bytearray(server.encrypt(message(), 5))
            for i in (20, 40, 44, 60, len(sealed) - 1):
                bad = bytearray(sealed)
                bad[i] ^= 0x80
                try:
                    h = TransformHeader.unpack(bytes(bad))
                    client.decrypt(h, bytes(bad))
                except ProtocolError:
                    continue
                self.fail(f"tampered byte {i} decrypted under {cipher}")
            self.assertRaises(
                DecryptError,
                client.decrypt,
                TransformHeader.unpack(bytes(sealed)),
                bytes(sealed[:-1]),
            )

    def test_smbprotocol_decrypts_ours_and_we_decrypt_theirs(self) -> None:
        for dialect, cipher in (
            (c.SMB_3_0, c.AES_128_CCM),
            (c.SMB_3_1_1, c.AES_128_GCM),
            (c.SMB_3_1_1, c.AES_256_GCM),
            (c.SMB_3_1_1, c.AES_256_CCM),
        ):
            bits = 32 if cipher in (c.AES_256_CCM, c.AES_256_GCM) else 16
            s2c, c2s = os.urandom(bits), os.urandom(bits)
            server = Sealer(cipher, s2c, c2s)
            session = types.SimpleNamespace(session_id=9, encryption_key=c2s, decryption_key=s2c)
            conn = types.SimpleNamespace(
                dialect=dialect, cipher_id=cipher, session_table={9: session}
            )
            theirs = spc.Connection._encrypt(conn, message(), session)  # type: ignore[arg-type]
            raw = theirs.pack()
            self.assertEqual(server.decrypt(TransformHeader.unpack(raw), raw), message())
            ours = server.encrypt(message(body=b"reply"), 9)
            structure = spc.SMB2TransformHeader()
            structure.unpack(ours)
            self.assertEqual(spc.Connection._decrypt(conn, structure), message(body=b"reply"))  # type: ignore[arg-type]


class PreauthTests(SynchronousTestCase):
    def test_chain(self) -> None:
        import hashlib

        p = PreauthHash()
        p.update(b"a")
        q = p.copy()
        p.update(b"b")
        self.assertEqual(q.value, hashlib.sha512(b"\x00" * 64 + b"a").digest())
        self.assertEqual(p.value, hashlib.sha512(q.value + b"b").digest())
