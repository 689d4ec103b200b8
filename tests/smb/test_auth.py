"""SPNEGO/NTLMSSP acceptance, against pyspnego's initiator."""

from __future__ import annotations

import os
import time

import spnego
from hypothesis import given
from hypothesis import strategies as s
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.smb._spnego import NegState, NegTokenInit, NegTokenResp, unpack_token
from claudefs_gateway.smb.auth import (
    NTLMSSP_OID,
    LogonFailure,
    NTLMAcceptor,
    SPNEGOAcceptor,
    initial_token,
)
from claudefs_gateway.vfs.identity import nt_hash

HASH = bytes.fromhex(nt_hash("Pass1"))
KRB5 = "1.2.840.113554.1.2.2"


def acceptor(guest: bool = False) -> SPNEGOAcceptor:
    users = {"alice": HASH}
    return SPNEGOAcceptor(
        NTLMAcceptor(
            lambda u: users.get(u.lower()),
            domain="CLAUDEFS",
            computer="gw",
            guest=guest,
            now=time.time,
        )
    )


def run(acc: SPNEGOAcceptor, client: object, first: bytes | None) -> object:
    token = client.step(first)  # type: ignore[attr-defined]
    while True:
        step = acc.step(token)
        if step.done:
            if step.token:
                client.step(step.token)  # type: ignore[attr-defined]
            return step.result
        token = client.step(step.token)  # type: ignore[attr-defined]


class AcceptorTests(SynchronousTestCase):
    def test_spnego_logon(self) -> None:
        """pyspnego's Negotiate initiator logs on; both sides hold the same session key."""
        client = spnego.client("alice", "Pass1", protocol="negotiate")
        result = run(acceptor(), client, initial_token())
        self.assertEqual(result.user, "alice")  # type: ignore[attr-defined]
        self.assertTrue(client.complete)
        self.assertEqual(client.session_key, result.session_key)  # type: ignore[attr-defined]

    def test_raw_ntlm_logon(self) -> None:
        """NTLMSSP without the SPNEGO wrapping is accepted too."""
        client = spnego.client("ALICE", "Pass1", protocol="ntlm")
        result = run(acceptor(), client, None)
        self.assertEqual(client.session_key, result.session_key)  # type: ignore[attr-defined]

    def test_domain_spelling(self) -> None:
        """A user given as DOMAIN\\user logs on whatever domain the client names."""
        client = spnego.client("SOMEWHERE\\alice", "Pass1", protocol="ntlm")
        result = run(acceptor(), client, None)
        self.assertEqual(result.domain, "SOMEWHERE")  # type: ignore[attr-defined]

    def test_wrong_password(self) -> None:
        client = spnego.client("alice", "wrong", protocol="negotiate")
        e = self.assertRaises(LogonFailure, run, acceptor(), client, initial_token())
        self.assertEqual(e.reason, "wrong password")
        self.assertNotIn(HASH.hex(), str(e))

    def test_unknown_user(self) -> None:
        """Unknown users fail, or become guests when guest logons are allowed."""
        client = spnego.client("mallory", "x", protocol="negotiate")
        self.assertRaises(LogonFailure, run, acceptor(), client, initial_token())
        client = spnego.client("mallory", "x", protocol="negotiate")
        result = run(acceptor(guest=True), client, initial_token())
        self.assertTrue(result.guest)  # type: ignore[attr-defined]
        self.assertEqual(result.session_key, b"")  # type: ignore[attr-defined]

    def test_ntlmv1_refused(self) -> None:
        """An NTLMv1 response (LM compatibility level 2) is refused."""
        self.patch(os, "environ", {**os.environ, "LM_COMPAT_LEVEL": "2"})
        client = spnego.client("alice", "Pass1", protocol="ntlm")
        e = self.assertRaises(LogonFailure, run, acceptor(), client, None)
        self.assertIn("NTLMv1", e.reason)

    def test_tampered_mic(self) -> None:
        """The NTLM MIC binds the three messages: changing one fails the logon."""
        client = spnego.client("alice", "Pass1", protocol="ntlm")
        acc = acceptor()
        step = acc.step(client.step(None))
        auth = bytearray(client.step(step.token))
        auth[-1] ^= 1  # last byte of the payload: the workstation or the NT response blob
        self.assertRaises((LogonFailure, ProtocolError), acc.step, bytes(auth))

    def test_other_mechanism_first(self) -> None:
        """A client preferring Kerberos is asked for NTLMSSP, and mechListMIC is then required."""
        acc = acceptor()
        init = NegTokenInit([KRB5, NTLMSSP_OID], mech_token=b"\x60\x00").pack()
        resp = unpack_token(acc.step(init).token)
        self.assertEqual(
            (resp.neg_state, resp.supported_mech), (NegState.accept_incomplete, NTLMSSP_OID)
        )
        self.assertIsNone(resp.response_token)
        ntlm = spnego.client("alice", "Pass1", protocol="ntlm")
        step = acc.step(NegTokenResp(response_token=ntlm.step(None)).pack())
        challenge = unpack_token(step.token).response_token
        auth = ntlm.step(challenge)
        e = self.assertRaises(LogonFailure, acc.step, NegTokenResp(response_token=auth).pack())
        self.assertIn("mechListMIC", e.reason)

    def test_no_common_mechanism(self) -> None:
        init = NegTokenInit([KRB5], mech_token=b"\x60\x00").pack()
        self.assertRaises(LogonFailure, acceptor().step, init)

    def test_anonymous(self) -> None:
        """The null session is refused unless guest logons are on."""
        from spnego._ntlm_raw.messages import Authenticate, NegotiateFlags

        for guest in (False, True):
            acc = acceptor(guest)
            ntlm = spnego.client("alice", "Pass1", protocol="ntlm")
            acc.step(ntlm.step(None))
            anon = Authenticate(
                NegotiateFlags.unicode | NegotiateFlags.ntlm, b"\x00", b"", "", "", ""
            ).pack()
            if guest:
                self.assertTrue(acc.step(anon).result.anonymous)  # type: ignore[union-attr]
            else:
                self.assertRaises(LogonFailure, acc.step, anon)

    def test_out_of_order(self) -> None:
        acc = acceptor()
        ntlm = spnego.client("alice", "Pass1", protocol="ntlm")
        tok = ntlm.step(None)
        acc.step(tok)
        self.assertRaises(ProtocolError, acc.step, tok)


class GarbageTests(SynchronousTestCase):
    @given(s.binary(max_size=400))
    def test_first_token(self, data: bytes) -> None:
        """Any first token is answered or refused with ProtocolError/LogonFailure only."""
        try:
            acceptor().step(data)
        except (ProtocolError, LogonFailure):
            pass

    @given(s.binary(max_size=400))
    def test_ntlm_prefixed(self, data: bytes) -> None:
        try:
            acceptor().step(b"NTLMSSP\x00" + data)
        except (ProtocolError, LogonFailure):
            pass

    @given(s.binary(max_size=400))
    def test_authenticate(self, data: bytes) -> None:
        """Garbage where the AUTHENTICATE belongs fails cleanly."""
        acc = acceptor()
        ntlm = spnego.client("alice", "Pass1", protocol="ntlm")
        acc.step(ntlm.step(None))
        try:
            acc.step(b"NTLMSSP\x00\x03\x00\x00\x00" + data)
        except (ProtocolError, LogonFailure):
            pass

    @given(s.binary(max_size=300))
    def test_spnego_resp(self, data: bytes) -> None:
        acc = acceptor()
        acc.step(spnego.client("alice", "Pass1", protocol="negotiate").step(initial_token()))
        try:
            acc.step(NegTokenResp(response_token=data).pack())
        except (ProtocolError, LogonFailure):
            pass
