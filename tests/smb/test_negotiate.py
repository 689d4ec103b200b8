"""The connection and session state machines, and NEGOTIATE's choices."""

from __future__ import annotations

import os
import struct
from typing import Any

from automat import NoTransition
from hypothesis import given
from hypothesis import strategies as s
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.smb import constants as c
from claudefs_gateway.smb.errors import SMBError
from claudefs_gateway.smb.messages import NegotiateContext, NegotiateRequest
from claudefs_gateway.smb.negotiate import (
    ConnectionMachine,
    Negotiated,
    SessionMachine,
    choose,
    to_dot,
)
from tests.helpers import REPO


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *a: self.calls.append(name)


def neg(dialect: int = c.SMB_3_1_1) -> Negotiated:
    return Negotiated(dialect, (dialect,), b"g" * 16, 1, 0)


class ConnectionMachineTests(SynchronousTestCase):
    def test_smb1_then_smb2(self) -> None:
        """SMB1 NEGOTIATE, then SMB2 NEGOTIATE, then requests are dispatched."""
        r = Recorder()
        m = ConnectionMachine(r)  # type: ignore[arg-type]
        m.smb1_negotiate(b"")
        m.smb2_negotiate(neg())
        m.request(None)
        self.assertEqual(r.calls, ["answer_smb1", "answer_negotiate", "dispatch"])
        self.assertTrue(m.negotiated)

    def test_requests_before_negotiate_close(self) -> None:
        for first in ("request", "violation"):
            r = Recorder()
            m = ConnectionMachine(r)  # type: ignore[arg-type]
            getattr(m, first)("x")
            m.request(None)
            self.assertEqual(r.calls, ["drop"])

    def test_second_negotiate_closes(self) -> None:
        """A second NEGOTIATE (or SMB1 after SMB2) closes the connection (MS-SMB2 3.3.5.3)."""
        for second in ("smb2_negotiate", "smb1_negotiate"):
            r = Recorder()
            m = ConnectionMachine(r)  # type: ignore[arg-type]
            m.smb2_negotiate(neg())
            getattr(m, second)(neg() if second == "smb2_negotiate" else b"")
            m.request(None)
            self.assertEqual(r.calls, ["answer_negotiate", "drop"])

    def test_failed_negotiate(self) -> None:
        r = Recorder()
        m = ConnectionMachine(r)  # type: ignore[arg-type]
        m.negotiate_failed(0xC00000BB)
        m.request(None)
        self.assertEqual(r.calls, ["refuse_negotiate"])

    def test_serving_only_while_negotiated(self) -> None:
        """
        C{serving} (the connection's dispatch without the machine's input)
        is true exactly in the state where a request is dispatched: never
        before NEGOTIATE, and never again after any way out of that state.
        """
        m = ConnectionMachine(Recorder())  # type: ignore[arg-type]
        self.assertFalse(m.serving)
        m.smb1_negotiate(b"")
        self.assertFalse(m.serving)
        for leave in (
            lambda m: m.smb2_negotiate(neg()),
            lambda m: m.smb1_negotiate(b""),
            lambda m: m.negotiate_failed(0xC00000BB),
            lambda m: m.violation("x"),
            lambda m: m.lost(),
        ):
            r = Recorder()
            m = ConnectionMachine(r)  # type: ignore[arg-type]
            m.smb2_negotiate(neg())
            self.assertTrue(m.serving)
            m.request(None)
            self.assertTrue(m.serving)
            leave(m)
            self.assertFalse(m.serving)
            m.request(None)
            self.assertEqual(r.calls.count("dispatch"), 1)


class SessionMachineTests(SynchronousTestCase):
    def test_legs(self) -> None:
        r = Recorder()
        m = SessionMachine(r)  # type: ignore[arg-type]
        m.leg_continues()
        self.assertFalse(m.valid)
        m.leg_completes()
        self.assertTrue(m.valid)
        m.reauth()
        m.leg_continues()
        self.assertTrue(m.valid)
        m.leg_completes()
        m.logoff()
        self.assertTrue(m.gone)
        self.assertEqual(r.calls, ["activate", "discard"])

    def test_failure_ends(self) -> None:
        r = Recorder()
        m = SessionMachine(r)  # type: ignore[arg-type]
        m.leg_continues()
        m.leg_fails()
        self.assertTrue(m.gone)
        self.assertRaises(NoTransition, m.leg_completes)

    def test_reauth_only_when_valid(self) -> None:
        m = SessionMachine(Recorder())  # type: ignore[arg-type]
        self.assertRaises(NoTransition, m.reauth)


class DotTests(SynchronousTestCase):
    def test_docs_in_step(self) -> None:
        """docs/smb-*.dot are what the machines are (regenerate with to_dot if this fails)."""
        for cls, name, path in (
            (ConnectionMachine, "smb_connection", "docs/smb-connection.dot"),
            (SessionMachine, "smb_session", "docs/smb-session.dot"),
        ):
            with open(os.path.join(REPO, path)) as f:
                self.assertEqual(f.read(), to_dot(cls, name), path)


def request(
    dialects: tuple[int, ...], contexts: list[tuple[int, bytes]] | None = None, caps: int = 0
) -> NegotiateRequest:
    return NegotiateRequest(
        dialects, 1, caps, b"g" * 16, tuple(NegotiateContext(t, d) for t, d in (contexts or []))
    )


PREAUTH = (c.SMB2_PREAUTH_INTEGRITY_CAPABILITIES, struct.pack("<HHH", 1, 0, c.SHA_512))


class ChooseTests(SynchronousTestCase):
    def test_highest_common_dialect(self) -> None:
        self.assertEqual(choose(request((0x202, 0x210)), encryption=True, salt=b"").dialect, 0x210)
        self.assertEqual(
            choose(request((0x300, 0x202)), encryption=True, salt=b"").signing, c.AES_CMAC
        )
        e = self.assertRaises(
            SMBError, choose, request((0x0100, 0x0222)), encryption=True, salt=b""
        )
        self.assertEqual(e.status, 0xC00000BB)

    def test_30_cipher_needs_capability(self) -> None:
        self.assertEqual(
            choose(request((0x300,), caps=0x40), encryption=True, salt=b"").cipher, c.AES_128_CCM
        )
        self.assertEqual(choose(request((0x300,)), encryption=True, salt=b"").cipher, 0)
        self.assertEqual(choose(request((0x302,), caps=0x40), encryption=False, salt=b"").cipher, 0)

    def test_311_contexts(self) -> None:
        enc = (c.SMB2_ENCRYPTION_CAPABILITIES, struct.pack("<HHH", 2, c.AES_256_GCM, c.AES_128_CCM))
        sig = (c.SMB2_SIGNING_CAPABILITIES, struct.pack("<HHH", 2, c.AES_CMAC, c.AES_GMAC))
        n = choose(request((0x311,), [PREAUTH, enc, sig]), encryption=True, salt=b"s" * 32)
        self.assertEqual((n.cipher, n.signing), (c.AES_128_CCM, c.AES_GMAC))
        self.assertEqual([t for t, _ in n.contexts], [1, 2, 8])
        n = choose(
            request((0x311,), [PREAUTH, (2, struct.pack("<HH", 1, 9))]), encryption=True, salt=b""
        )
        self.assertEqual(n.cipher, 0)
        self.assertEqual(n.contexts[1][1], struct.pack("<HH", 1, 0))
        n = choose(request((0x311,), [PREAUTH, enc]), encryption=False, salt=b"")
        self.assertEqual((n.cipher, len(n.contexts), n.signing), (0, 1, c.AES_CMAC))

    def test_311_refusals(self) -> None:
        for contexts, status in (
            ([], 0xC000000D),
            ([(1, struct.pack("<HHH", 1, 0, 2))], 0xC05D0000),
            ([PREAUTH, PREAUTH], 0xC000000D),
            ([(1, b"\x01")], 0xC000000D),
        ):
            e = self.assertRaises(
                SMBError, choose, request((0x311,), contexts), encryption=True, salt=b""
            )
            self.assertEqual(e.status, status)

    @given(s.lists(s.tuples(s.integers(0, 10), s.binary(max_size=12)), max_size=6))
    def test_any_contexts(self, contexts: list[tuple[int, bytes]]) -> None:
        """Any context list is chosen from or refused with an SMBError."""
        try:
            choose(request((0x311, 0x302), contexts), encryption=True, salt=b"")
        except SMBError:
            pass
