"""
The fence around pyspnego's private modules (claudefs_gateway/smb/_spnego.py):
every name and signature the acceptor uses, checked against an independent
implementation of MS-NLMP and its published NTLMv2 example, so that a
pyspnego release that moves or changes them fails here, loudly.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import inspect
import struct

import spnego
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.smb import _spnego as sp
from claudefs_gateway.smb.auth import ntowfv2
from claudefs_gateway.vfs.identity import nt_hash

SIGN_C2S = b"session key to client-to-server signing key magic constant\x00"
SIGN_S2C = b"session key to server-to-client signing key magic constant\x00"
SEAL_C2S = b"session key to client-to-server sealing key magic constant\x00"
SEAL_S2C = b"session key to server-to-client sealing key magic constant\x00"


def rc4(key: bytes, data: bytes) -> bytes:
    """RC4, written out (the independent reference for these tests)."""
    s = list(range(256))
    j = 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) % 256
        s[i], s[j] = s[j], s[i]
    i = j = 0
    out = bytearray()
    for b in data:
        i = (i + 1) % 256
        j = (j + s[i]) % 256
        s[i], s[j] = s[j], s[i]
        out.append(b ^ s[(s[i] + s[j]) % 256])
    return bytes(out)


def reference_mic(flags: int, key: bytes, usage: str, seq: int, data: bytes) -> bytes:
    """MS-NLMP 3.4.4.2 (extended session security, 128-bit keys)."""
    sign_const, seal_const = (SIGN_C2S, SEAL_C2S) if usage == "initiate" else (SIGN_S2C, SEAL_S2C)
    sign_key = hashlib.md5(key + sign_const).digest()
    seal_key = hashlib.md5(key + seal_const).digest()
    seq_b = struct.pack("<I", seq)
    checksum = hmac.new(sign_key, seq_b + data, "md5").digest()[:8]
    if flags & sp.NegotiateFlags.key_exch:
        checksum = rc4(seal_key, checksum)
    return struct.pack("<I", 1) + checksum + seq_b


# MS-NLMP 4.2.4 (NTLMv2 authentication): user "User", domain "Domain",
# password "Password", ServerChallenge 0123456789abcdef, ClientChallenge
# aa*8, time 0, RandomSessionKey 55*16.
NTOWFV2 = bytes.fromhex("0c868a403bfd7a93a3001ef22ef02e3f")
NTPROOF = bytes.fromhex("68cd0ab851e51c96aabc927bebef6a1c")
SESSION_BASE_KEY = bytes.fromhex("8de40ccadbc14a82f15cb0ad0de95ca3")
ENCRYPTED_SESSION_KEY = bytes.fromhex("c5dad2544fc9799094ce1ce90bc9d03e")


class AdapterTests(SynchronousTestCase):
    def test_private_signatures(self) -> None:
        """The private functions behind the adapter take the arguments it passes."""
        from spnego._ntlm_raw import crypto, security

        def params(f: object) -> list[str]:
            return list(inspect.signature(f).parameters)  # type: ignore[arg-type]

        self.assertEqual(len(params(crypto.rc4k)), 2)
        self.assertEqual(len(params(crypto.rc4init)), 1)
        self.assertEqual(len(params(crypto.sealkey)), 3)
        self.assertEqual(len(params(crypto.signkey)), 3)
        self.assertEqual(len(params(security.sign)), 5)

    def test_ntlmv2_example(self) -> None:
        """The published NTLMv2 example: key exchange through the adapter's RC4K."""
        self.assertEqual(ntowfv2(bytes.fromhex(nt_hash("Password")), "User", "Domain"), NTOWFV2)
        base = hmac.new(NTOWFV2, NTPROOF, "md5").digest()
        self.assertEqual(base, SESSION_BASE_KEY)
        self.assertEqual(sp.rc4k(SESSION_BASE_KEY, b"\x55" * 16), ENCRYPTED_SESSION_KEY)
        self.assertEqual(sp.rc4k(SESSION_BASE_KEY, ENCRYPTED_SESSION_KEY), b"\x55" * 16)

    def test_gss_mic(self) -> None:
        """gss_mic is MS-NLMP 3.4.4.2's signature, both directions, with and without KEY_EXCH."""
        nf = sp.NegotiateFlags
        base = nf.sign | nf.extended_session_security | nf.key_128 | nf.always_sign | nf.ntlm
        key = bytes(range(16))
        for flags in (base, base | nf.key_exch):
            for usage in ("initiate", "accept"):
                for seq in (0, 7):
                    data = b"mechListMIC over these bytes"
                    self.assertEqual(
                        sp.gss_mic(int(flags), key, usage, seq, data),
                        reference_mic(int(flags), key, usage, seq, data),
                    )

    def test_ntlm_messages(self) -> None:
        """The NTLM message classes parse pyspnego's own client messages with the fields used."""
        client = spnego.client("u", "p", protocol="ntlm")
        negotiate = sp.Negotiate.unpack(client.step())
        self.assertTrue(negotiate.flags & sp.NegotiateFlags.unicode)
        info = sp.TargetInfo()
        info[sp.AvId.nb_domain_name] = "D"
        info[sp.AvId.nb_computer_name] = "C"
        info[sp.AvId.timestamp] = sp.FileTime.from_datetime(
            datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
        )
        challenge = sp.Challenge(
            int(negotiate.flags) | sp.NegotiateFlags.target_info,
            b"\x01" * 8,
            target_name="D",
            target_info=info,
            version=sp.Version(6, 1, 7601, 15),
        )
        auth = sp.Authenticate.unpack(client.step(challenge.pack()))
        self.assertEqual(auth.user_name, "u")
        self.assertIn(auth.domain_name, (None, ""))
        self.assertGreater(len(auth.nt_challenge_response), 24)
        self.assertIsInstance(auth.lm_challenge_response, bytes)
        self.assertEqual(len(auth.encrypted_random_session_key or b"\x00" * 16), 16)
        blob = auth.nt_challenge_response[16:]
        pairs = sp.NTClientChallengeV2.unpack(blob).av_pairs
        self.assertTrue(pairs.get(sp.AvId.flags, 0) & sp.AvFlags.mic)
        self.assertEqual(len(auth.mic), 16)
        auth.mic = b"\x00" * 16
        self.assertIsInstance(auth.pack(), bytes)

    def test_spnego_tokens(self) -> None:
        """SPNEGO tokens round-trip with the fields the acceptor reads and writes."""
        oid = "1.3.6.1.4.1.311.2.2.10"
        init = sp.unpack_token(sp.NegTokenInit([oid], hint_name=b"x").pack())
        self.assertIsInstance(init, sp.NegTokenInit)
        self.assertEqual(list(init.mech_types), [oid])
        self.assertIsNone(init.mech_token)
        resp = sp.unpack_token(sp.NegTokenResp(sp.NegState.accept_incomplete, oid, b"tok").pack())
        self.assertIsInstance(resp, sp.NegTokenResp)
        self.assertEqual((resp.supported_mech, resp.response_token), (oid, b"tok"))
        self.assertIsNone(resp.mech_list_mic)
        done = sp.unpack_token(
            sp.NegTokenResp(sp.NegState.accept_complete, None, None, b"m" * 16).pack()
        )
        self.assertEqual(done.mech_list_mic, b"m" * 16)
        self.assertTrue(sp.pack_mech_type_list([oid]).startswith(b"\x30"))
