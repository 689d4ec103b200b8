# -*- test-case-name: tests.smb.test_negotiate -*-
"""
Connection negotiation and session setup: what may happen in which order.

Two Automat state machines (drawn in docs/smb-connection.dot and
docs/smb-session.dot, which a test keeps in step with this module):

  - L{ConnectionMachine}, one per TCP connection: an optional SMB1
    multi-protocol NEGOTIATE answered with the SMB2 wildcard dialect, then
    exactly one SMB2 NEGOTIATE, then any other command. Anything else in
    any order closes the connection (MS-SMB2 3.3.5.3, 3.3.5.4).
  - L{SessionMachine}, one per session: SESSION_SETUP legs until the
    authentication completes or fails, re-authentication of a valid
    session, LOGOFF.

The machines decide order only; the protocol does the work in the outputs'
callbacks (L{ConnectionActions}, L{SessionActions}). Also here, as pure
functions, the NEGOTIATE choices: dialect, cipher, signing algorithm and
the negotiate contexts of 3.1.1 (MS-SMB2 3.3.5.4).
"""

from __future__ import annotations

import struct
from typing import Any, Protocol

import attrs
from automat import MethodicalMachine

from claudefs_gateway.core.machines import to_dot
from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.smb import constants as c
from claudefs_gateway.smb import ntstatus as st
from claudefs_gateway.smb.errors import SMBError
from claudefs_gateway.smb.messages import NegotiateContext, NegotiateRequest

__all__ = [
    "ConnectionMachine",
    "SessionMachine",
    "Negotiated",
    "choose",
    "to_dot",
    "CIPHER_PREFERENCE",
]

# Server preference, as Samba's default "server smb encrypt algorithms".
CIPHER_PREFERENCE = (c.AES_128_GCM, c.AES_128_CCM, c.AES_256_GCM, c.AES_256_CCM)
SIGNING_PREFERENCE = (c.AES_GMAC, c.AES_CMAC, c.HMAC_SHA256)


class ConnectionActions(Protocol):
    def answer_smb1(self, data: bytes) -> None: ...
    def answer_negotiate(self, negotiated: Negotiated) -> None: ...
    def refuse_negotiate(self, status: int) -> None: ...
    def dispatch(self, message: Any) -> None: ...
    def drop(self, why: str) -> None: ...


class ConnectionMachine:
    """The order of a connection's first messages (see module docstring)."""

    _machine = MethodicalMachine()

    def __init__(self, actions: ConnectionActions) -> None:
        self._actions = actions
        self.negotiated = False
        # True exactly while in negotiated_state, where a request has one
        # outcome (dispatch, same state): the connection then dispatches
        # without the machine's input, whose argument filtering and lookups
        # cost more per message than the dispatch's own bookkeeping. Every
        # transition out of the state clears it first.
        self.serving = False

    # -- states ------------------------------------------------------------------

    @_machine.state(initial=True)
    def fresh(self) -> None:
        "Nothing received yet."

    @_machine.state()
    def upgraded(self) -> None:
        "An SMB1 NEGOTIATE was answered with dialect 0x02FF; an SMB2 NEGOTIATE must follow."

    @_machine.state()
    def negotiated_state(self) -> None:
        "Dialect chosen: every command but NEGOTIATE is served."

    @_machine.state()
    def closed(self) -> None:
        "The connection is going away; nothing more is served."

    # -- inputs ------------------------------------------------------------------

    @_machine.input()
    def smb1_negotiate(self, data: bytes) -> None:
        "An SMB1 multi-protocol NEGOTIATE offering SMB2."

    @_machine.input()
    def smb2_negotiate(self, negotiated: Negotiated) -> None:
        "An SMB2 NEGOTIATE that found a common dialect."

    @_machine.input()
    def negotiate_failed(self, status: int) -> None:
        "An SMB2 NEGOTIATE with no common dialect or bad contexts."

    @_machine.input()
    def request(self, message: Any) -> None:
        "Any other SMB2 message."

    @_machine.input()
    def violation(self, why: str) -> None:
        "Bytes that are not a message we accept here."

    @_machine.input()
    def lost(self) -> None:
        "The transport closed."

    # -- outputs -----------------------------------------------------------------

    @_machine.output()
    def _answer_smb1(self, data: bytes) -> None:
        self._actions.answer_smb1(data)

    @_machine.output()
    def _answer_negotiate(self, negotiated: Negotiated) -> None:
        self.negotiated = True
        self.serving = True
        self._actions.answer_negotiate(negotiated)

    @_machine.output()
    def _refuse_negotiate(self, status: int) -> None:
        self._actions.refuse_negotiate(status)

    @_machine.output()
    def _dispatch(self, message: Any) -> None:
        self._actions.dispatch(message)

    @_machine.output()
    def _drop_unexpected_smb1(self, data: bytes) -> None:
        self.serving = False
        self._actions.drop("SMB1 NEGOTIATE out of order")

    @_machine.output()
    def _drop_second_negotiate(self, negotiated: Negotiated) -> None:
        self.serving = False
        self._actions.drop("second NEGOTIATE")

    @_machine.output()
    def _drop_failed_negotiate(self, status: int) -> None:
        self.serving = False
        self._actions.drop("second NEGOTIATE")

    @_machine.output()
    def _drop_early_request(self, message: Any) -> None:
        self._actions.drop("request before NEGOTIATE")

    @_machine.output()
    def _drop_violation(self, why: str) -> None:
        self.serving = False
        self._actions.drop(why)

    @_machine.output()
    def _stop_serving(self) -> None:
        self.serving = False

    fresh.upon(smb1_negotiate, enter=upgraded, outputs=[_answer_smb1])
    fresh.upon(smb2_negotiate, enter=negotiated_state, outputs=[_answer_negotiate])
    fresh.upon(negotiate_failed, enter=closed, outputs=[_refuse_negotiate])
    fresh.upon(request, enter=closed, outputs=[_drop_early_request])
    fresh.upon(violation, enter=closed, outputs=[_drop_violation])
    fresh.upon(lost, enter=closed, outputs=[])

    upgraded.upon(smb2_negotiate, enter=negotiated_state, outputs=[_answer_negotiate])
    upgraded.upon(negotiate_failed, enter=closed, outputs=[_refuse_negotiate])
    upgraded.upon(smb1_negotiate, enter=closed, outputs=[_drop_unexpected_smb1])
    upgraded.upon(request, enter=closed, outputs=[_drop_early_request])
    upgraded.upon(violation, enter=closed, outputs=[_drop_violation])
    upgraded.upon(lost, enter=closed, outputs=[])

    negotiated_state.upon(request, enter=negotiated_state, outputs=[_dispatch])
    negotiated_state.upon(smb2_negotiate, enter=closed, outputs=[_drop_second_negotiate])
    negotiated_state.upon(negotiate_failed, enter=closed, outputs=[_drop_failed_negotiate])
    negotiated_state.upon(smb1_negotiate, enter=closed, outputs=[_drop_unexpected_smb1])
    negotiated_state.upon(violation, enter=closed, outputs=[_drop_violation])
    negotiated_state.upon(lost, enter=closed, outputs=[_stop_serving])

    closed.upon(request, enter=closed, outputs=[])
    closed.upon(smb1_negotiate, enter=closed, outputs=[])
    closed.upon(smb2_negotiate, enter=closed, outputs=[])
    closed.upon(negotiate_failed, enter=closed, outputs=[])
    closed.upon(violation, enter=closed, outputs=[])
    closed.upon(lost, enter=closed, outputs=[])


class SessionActions(Protocol):
    def activate(self) -> None: ...
    def discard(self) -> None: ...


class SessionMachine:
    """
    One session's authentication (MS-SMB2 3.3.5.5): every SESSION_SETUP leg
    either continues (STATUS_MORE_PROCESSING_REQUIRED), completes or fails;
    a valid session may authenticate again; LOGOFF or a failure ends it.

    @ivar valid: the session may carry requests other than SESSION_SETUP.
    @ivar gone: the session is over; its id is no longer usable.
    """

    _machine = MethodicalMachine()

    def __init__(self, actions: SessionActions) -> None:
        self._actions = actions
        self.valid = False
        self.gone = False

    @_machine.state(initial=True)
    def new(self) -> None:
        "Created by a SESSION_SETUP with SessionId 0."

    @_machine.state()
    def in_progress(self) -> None:
        "A challenge went out; the next leg must answer it."

    @_machine.state()
    def valid_state(self) -> None:
        "Authenticated: keys derived, requests served."

    @_machine.state()
    def reauthenticating(self) -> None:
        "A valid session authenticating again; it keeps serving meanwhile."

    @_machine.state()
    def ended(self) -> None:
        "Logged off, failed, or its connection closed."

    @_machine.input()
    def leg_continues(self) -> None:
        "A leg answered with STATUS_MORE_PROCESSING_REQUIRED."

    @_machine.input()
    def leg_completes(self) -> None:
        "A leg authenticated the user."

    @_machine.input()
    def leg_fails(self) -> None:
        "A leg failed authentication (or the session cannot be allowed)."

    @_machine.input()
    def reauth(self) -> None:
        "A SESSION_SETUP on a valid session."

    @_machine.input()
    def logoff(self) -> None:
        "LOGOFF, or the connection closed."

    @_machine.output()
    def _activate(self) -> None:
        self.valid = True
        self._actions.activate()

    @_machine.output()
    def _discard(self) -> None:
        self.valid = False
        self.gone = True
        self._actions.discard()

    new.upon(leg_continues, enter=in_progress, outputs=[])
    new.upon(leg_completes, enter=valid_state, outputs=[_activate])
    new.upon(leg_fails, enter=ended, outputs=[_discard])
    new.upon(logoff, enter=ended, outputs=[_discard])
    in_progress.upon(leg_continues, enter=in_progress, outputs=[])
    in_progress.upon(leg_completes, enter=valid_state, outputs=[_activate])
    in_progress.upon(leg_fails, enter=ended, outputs=[_discard])
    in_progress.upon(logoff, enter=ended, outputs=[_discard])
    valid_state.upon(reauth, enter=reauthenticating, outputs=[])
    valid_state.upon(logoff, enter=ended, outputs=[_discard])
    reauthenticating.upon(leg_continues, enter=reauthenticating, outputs=[])
    reauthenticating.upon(leg_completes, enter=valid_state, outputs=[])
    reauthenticating.upon(leg_fails, enter=ended, outputs=[_discard])
    reauthenticating.upon(logoff, enter=ended, outputs=[_discard])
    ended.upon(logoff, enter=ended, outputs=[])


# -- NEGOTIATE choices (MS-SMB2 3.3.5.4) --------------------------------------------------


@attrs.frozen
class Negotiated:
    """What one NEGOTIATE settled; C{contexts} are the packed response contexts."""

    dialect: int
    client_dialects: tuple[int, ...]
    client_guid: bytes
    client_security_mode: int
    client_capabilities: int
    cipher: int = 0
    signing: int = c.HMAC_SHA256
    contexts: tuple[tuple[int, bytes], ...] = ()
    # Asked twice per request: kept, not computed each time.
    multi_credit: bool = attrs.field(init=False)

    @multi_credit.default
    def _multi_credit(self) -> bool:
        return self.dialect >= c.SMB_2_1

    @property
    def can_encrypt(self) -> bool:
        return self.cipher != 0


def choose(
    req: NegotiateRequest, *, encryption: bool, salt: bytes, dialects: tuple[int, ...] = c.DIALECTS
) -> Negotiated:
    """
    Pick the dialect and, for 3.1.1, the cipher, signing algorithm and the
    contexts to answer with.

    @param encryption: the server may encrypt (C{smb.encrypt} is not C{off}).
    @raise SMBError: no common dialect (STATUS_NOT_SUPPORTED), missing or
        malformed preauth context (STATUS_INVALID_PARAMETER), no common hash
        (STATUS_SMB_NO_PREAUTH_INTEGRITY_HASH_OVERLAP).
    """
    common = [d for d in req.dialects if d in dialects]
    if not common:
        raise SMBError(st.STATUS_NOT_SUPPORTED, "no common dialect")
    dialect = max(common)
    if dialect < c.SMB_3_1_1:
        cipher = c.AES_128_CCM if dialect >= c.SMB_3_0 else 0
        if not encryption or not req.capabilities & c.SMB2_GLOBAL_CAP_ENCRYPTION:
            cipher = 0
        signing = c.AES_CMAC if dialect >= c.SMB_3_0 else c.HMAC_SHA256
        return Negotiated(
            dialect,
            req.dialects,
            req.client_guid,
            req.security_mode,
            req.capabilities,
            cipher,
            signing,
        )
    by_type: dict[int, NegotiateContext] = {}
    for ctx in req.contexts:
        if ctx.type in by_type and ctx.type in (
            c.SMB2_PREAUTH_INTEGRITY_CAPABILITIES,
            c.SMB2_ENCRYPTION_CAPABILITIES,
            c.SMB2_SIGNING_CAPABILITIES,
            c.SMB2_COMPRESSION_CAPABILITIES,
        ):
            raise SMBError(st.STATUS_INVALID_PARAMETER, "duplicate negotiate context")
        by_type[ctx.type] = ctx
    pre = by_type.get(c.SMB2_PREAUTH_INTEGRITY_CAPABILITIES)
    if pre is None:
        raise SMBError(st.STATUS_INVALID_PARAMETER, "no preauth integrity context")
    hashes = _u16_list(pre.data, "preauth")
    if c.SHA_512 not in hashes:
        raise SMBError(0xC05D0000, "no common preauth hash")
    contexts = [
        (
            c.SMB2_PREAUTH_INTEGRITY_CAPABILITIES,
            struct.pack("<HHH", 1, len(salt), c.SHA_512) + salt,
        )
    ]
    cipher = 0
    enc = by_type.get(c.SMB2_ENCRYPTION_CAPABILITIES)
    if enc is not None and encryption:
        offered = _u16_list(enc.data, "encryption")
        cipher = next((x for x in CIPHER_PREFERENCE if x in offered), 0)
        contexts.append((c.SMB2_ENCRYPTION_CAPABILITIES, struct.pack("<HH", 1, cipher)))
    signing = c.AES_CMAC
    sig = by_type.get(c.SMB2_SIGNING_CAPABILITIES)
    if sig is not None:
        offered = _u16_list(sig.data, "signing")
        signing = next((x for x in SIGNING_PREFERENCE if x in offered), c.AES_CMAC)
        contexts.append((c.SMB2_SIGNING_CAPABILITIES, struct.pack("<HH", 1, signing)))
    return Negotiated(
        dialect,
        req.dialects,
        req.client_guid,
        req.security_mode,
        req.capabilities,
        cipher,
        signing,
        tuple(contexts),
    )


def _u16_list(data: bytes, what: str) -> list[int]:
    """A context's count-prefixed list of 16-bit ids (the preauth one has a salt length too)."""
    try:
        if what == "preauth":
            count, _salt_len = struct.unpack_from("<HH", data)
            start = 4
        else:
            (count,) = struct.unpack_from("<H", data)
            start = 2
        if count == 0 or start + 2 * count > len(data):
            raise ProtocolError(f"{what} context")
        return list(struct.unpack_from(f"<{count}H", data, start))
    except (struct.error, ProtocolError):
        raise SMBError(st.STATUS_INVALID_PARAMETER, f"malformed {what} context") from None
