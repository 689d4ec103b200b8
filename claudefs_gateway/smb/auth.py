# -*- test-case-name: tests.smb.test_auth -*-
"""
SESSION_SETUP authentication: SPNEGO carrying NTLMSSP, NTLMv2 only.

Why not pyspnego's acceptor as it stands: C{spnego.server()} looks users up in
the file named by the process-wide C{NTLM_USER_FILE} environment variable
(re-read on each logon) and accepts NTLMv1 and LM responses unless the
process-wide C{LM_COMPAT_LEVEL} is 5; it cannot take an NT hash per user from
our user database. So this module takes from pyspnego (a well-kept library:
the one smbprotocol authenticates with) what an acceptor needs around the
verification, namely its NTLM message codec (NEGOTIATE, CHALLENGE,
AUTHENTICATE, AV pairs), its SPNEGO token codec (NegTokenInit/NegTokenResp)
and NTLM's GSS signing for the SPNEGO mechListMIC, and implements only the
NTLMv2 check itself (MS-NLMP 3.3.2, HMAC-MD5 from the standard library),
comparing in constant time. Those pyspnego modules are underscore-private:
they are reached only through L{claudefs_gateway.smb._spnego}, whose test
fails loudly if the library changes under it; the version range in
pyproject.toml is pinned for that reason, and tests/smb/test_auth.py runs a
real pyspnego initiator against this acceptor.

Everything here is synchronous and pure (no I/O): the user database lookup
is a dict lookup, and HMAC-MD5 over a few hundred bytes costs microseconds.
Secrets (hashes, keys) never reach a log line or an exception message.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Callable
from typing import Any

import attrs

from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.smb._spnego import (
    Authenticate,
    AvFlags,
    AvId,
    Challenge,
    FileTime,
    Negotiate,
    NegotiateFlags,
    NegState,
    NegTokenInit,
    NegTokenResp,
    NTClientChallengeV2,
    TargetInfo,
    Version,
    gss_mic,
    pack_mech_type_list,
    rc4k,
    unpack_token,
)

__all__ = [
    "NTLMSSP_OID",
    "AuthResult",
    "Step",
    "NTLMAcceptor",
    "SPNEGOAcceptor",
    "initial_token",
    "LogonFailure",
]

NTLMSSP_OID = "1.3.6.1.4.1.311.2.2.10"
_NTLM_SIGNATURE = b"NTLMSSP\x00"

# What we agree to when the client asks for it (MS-NLMP 2.2.2.5). No LM_KEY,
# no datagram, no anonymous flag from us.
_SUPPORTED = (
    NegotiateFlags.unicode
    | NegotiateFlags.request_target
    | NegotiateFlags.sign
    | NegotiateFlags.seal
    | NegotiateFlags.ntlm
    | NegotiateFlags.always_sign
    | NegotiateFlags.extended_session_security
    | NegotiateFlags.version
    | NegotiateFlags.key_128
    | NegotiateFlags.key_exch
    | NegotiateFlags.key_56
)
_ALWAYS = (
    NegotiateFlags.request_target
    | NegotiateFlags.ntlm
    | NegotiateFlags.always_sign
    | NegotiateFlags.target_info
    | NegotiateFlags.target_type_server
)


class LogonFailure(Exception):
    """
    A logon that must fail with STATUS_LOGON_FAILURE. C{reason} is for the
    log (never a secret, never which half of the credentials was wrong for
    the client's benefit; the log may say so).
    """

    def __init__(self, reason: str, user: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.user = user


@attrs.frozen
class AuthResult:
    """
    A completed logon.

    @ivar user: the account name as the database spells it (empty for anonymous).
    @ivar session_key: NTLM's ExportedSessionKey; empty for guest and anonymous.
    @ivar guest: logged on as guest (unknown user while guest logons are allowed).
    @ivar anonymous: the null session.
    """

    user: str
    domain: str
    session_key: bytes = attrs.field(repr=False)
    guest: bool = False
    anonymous: bool = False


@attrs.frozen
class Step:
    """What to answer one SESSION_SETUP token with: more to come, or done."""

    token: bytes
    result: AuthResult | None = None

    @property
    def done(self) -> bool:
        return self.result is not None


def _hmac_md5(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, "md5").digest()


def ntowfv2(nt_hash: bytes, user: str, domain: str) -> bytes:
    """MS-NLMP 3.3.2 NTOWFv2: HMAC-MD5(NT hash, UPPER(user) + domain), UTF-16LE."""
    return _hmac_md5(nt_hash, (user.upper() + domain).encode("utf-16-le"))


class NTLMAcceptor:
    """
    The server side of one NTLMSSP exchange: NEGOTIATE in, CHALLENGE out,
    AUTHENTICATE in, a result (or L{LogonFailure}) out.

    @param lookup: user name → NT hash (16 bytes), or None for an unknown user.
    @param guest: unknown users (and the anonymous logon) become guests
        instead of failing.
    @param anonymous: the anonymous logon is accepted (re-authenticating an
        existing session, which it only narrows).
    @param now: seconds since the epoch, for the challenge's timestamp.
    """

    def __init__(
        self,
        lookup: Callable[[str], bytes | None],
        *,
        domain: str,
        computer: str,
        guest: bool = False,
        anonymous: bool = False,
        now: Callable[[], float] | None = None,
        challenge: bytes | None = None,
    ) -> None:
        self._lookup = lookup
        self._domain = domain.upper()
        self._computer = computer.upper()[:15]
        self._guest = guest
        self._anonymous = anonymous or guest
        self._now = now
        self._server_challenge = challenge or os.urandom(8)
        self._negotiate_raw: bytes | None = None
        self._challenge_raw: bytes | None = None
        self.flags = 0
        self.mic_present = False
        self.result: AuthResult | None = None

    # -- step 1 -------------------------------------------------------------------

    def challenge(self, negotiate_token: bytes) -> bytes:
        """
        The CHALLENGE for a client's NEGOTIATE.

        @raise ProtocolError: not an NTLM NEGOTIATE message, or a second one.
        """
        if self._negotiate_raw is not None:
            raise ProtocolError("second NTLM NEGOTIATE")
        try:
            negotiate = Negotiate.unpack(negotiate_token)
        except Exception:
            raise ProtocolError("malformed NTLM NEGOTIATE") from None
        flags = (negotiate.flags & _SUPPORTED) | _ALWAYS
        if not flags & NegotiateFlags.unicode:
            # We only write UTF-16 names; every client we know offers it.
            raise ProtocolError("NTLM client without UNICODE")
        info = TargetInfo()
        info[AvId.nb_domain_name] = self._domain
        info[AvId.nb_computer_name] = self._computer
        info[AvId.dns_domain_name] = self._domain.lower()
        info[AvId.dns_computer_name] = self._computer.lower()
        if self._now is not None:
            info[AvId.timestamp] = _filetime(self._now())
        kwargs: dict[str, Any] = {}
        if flags & NegotiateFlags.version:
            kwargs["version"] = Version(6, 1, 7601, 15)
        challenge = Challenge(
            flags,
            self._server_challenge,
            target_name=self._domain,
            target_info=info,
            **kwargs,
        )
        self.flags = flags
        self._negotiate_raw = bytes(negotiate_token)
        self._challenge_raw = challenge.pack()
        return self._challenge_raw

    @property
    def challenged(self) -> bool:
        """Whether the CHALLENGE went out (the next token is the AUTHENTICATE)."""
        return self._challenge_raw is not None

    # -- step 2 -------------------------------------------------------------------

    def authenticate(self, token: bytes) -> AuthResult:
        """
        Check a client's AUTHENTICATE.

        @raise LogonFailure: wrong password, unknown user (guest off),
            NTLMv1 or LM response, bad MIC.
        @raise ProtocolError: malformed, or no CHALLENGE was sent.
        """
        if self._challenge_raw is None or self.result is not None:
            raise ProtocolError("NTLM AUTHENTICATE out of order")
        try:
            auth = Authenticate.unpack(token)
            user = auth.user_name or ""
            domain = auth.domain_name or ""
            nt_response = auth.nt_challenge_response or b""
            lm_response = auth.lm_challenge_response or b""
            client_flags = int(auth.flags)
            encrypted_key = auth.encrypted_random_session_key or b""
        except Exception:
            raise ProtocolError("malformed NTLM AUTHENTICATE") from None
        if not user and not nt_response and lm_response in (b"", b"\x00"):
            if not self._anonymous:
                raise LogonFailure("anonymous logon refused")
            self.result = AuthResult("", domain, b"", anonymous=True)
            return self.result
        if len(nt_response) <= 24:
            raise LogonFailure("NTLMv1 or LM response refused", user)
        nt_hash = self._lookup(user)
        if nt_hash is None:
            if self._guest:
                self.result = AuthResult(user, domain, b"", guest=True)
                return self.result
            raise LogonFailure("unknown user", user)
        proof, blob = nt_response[:16], nt_response[16:]
        _check_client_challenge(blob)
        try:
            client_info = NTClientChallengeV2.unpack(blob).av_pairs
        except Exception:
            raise ProtocolError("malformed NTLMv2 client challenge") from None
        # MS-NLMP computes the key over the domain the client named; like
        # Samba, also accept the upper-cased one and none (clients differ).
        key = None
        for dom in dict.fromkeys((domain, domain.upper(), "")):
            candidate = ntowfv2(nt_hash, user, dom)
            expected = _hmac_md5(candidate, self._server_challenge + blob)
            if hmac.compare_digest(expected, proof):
                key = candidate
                break
        if key is None:
            raise LogonFailure("wrong password", user)
        base_key = _hmac_md5(key, proof)
        if client_flags & NegotiateFlags.key_exch and encrypted_key:
            if len(encrypted_key) != 16:
                raise ProtocolError("EncryptedRandomSessionKey is not 16 bytes")
            session_key = rc4k(base_key, encrypted_key)
        else:
            session_key = base_key
        if client_info.get(AvId.flags, 0) & AvFlags.mic:
            self.mic_present = True
            mic = auth.mic or b""
            auth.mic = b"\x00" * 16
            assert self._negotiate_raw is not None
            expected_mic = _hmac_md5(
                session_key, self._negotiate_raw + self._challenge_raw + auth.pack()
            )
            if not hmac.compare_digest(expected_mic, mic):
                raise LogonFailure("bad NTLM MIC", user)
        self.flags = client_flags
        self.result = AuthResult(user, domain, session_key)
        return self.result

    # -- GSS integrity for SPNEGO's mechListMIC (MS-NLMP 3.4.4) ----------------------

    def _mic(self, data: bytes, usage: str) -> bytes:
        assert self.result is not None
        return gss_mic(self.flags, self.result.session_key, usage, 0, data)

    def verify_mic(self, data: bytes, mic: bytes) -> bool:
        """The client's first GSS MIC over C{data} (sequence number 0)."""
        return hmac.compare_digest(self._mic(data, "initiate"), mic)

    def make_mic(self, data: bytes) -> bytes:
        """Our first GSS MIC over C{data} (sequence number 0)."""
        return self._mic(data, "accept")


def _check_client_challenge(blob: bytes) -> None:
    """
    An NTLMv2_CLIENT_CHALLENGE (MS-NLMP 2.2.2.7) must be well formed: response
    types 1, and AV pairs that stay inside it and end with MsvAvEOL.
    (pyspnego's parser is lenient; Samba refuses such blobs with
    STATUS_INVALID_PARAMETER, smbtorture smb2.session.ntlmssp_bug14932.)

    @raise ProtocolError: otherwise.
    """
    if len(blob) < 32 or blob[0] != 1 or blob[1] != 1:
        raise ProtocolError("malformed NTLMv2 client challenge")
    pos = 28
    while pos + 4 <= len(blob):
        av_id, av_len = struct.unpack_from("<HH", blob, pos)
        if av_id == 0:
            return
        pos += 4 + av_len
    raise ProtocolError("NTLMv2 client challenge AV pairs run past its end")


def _filetime(seconds: float) -> Any:
    import datetime

    return FileTime.from_datetime(datetime.datetime.fromtimestamp(seconds, datetime.UTC))


def initial_token() -> bytes:
    """
    The SPNEGO NegTokenInit2 for the NEGOTIATE response (MS-SPNG 2.2.1):
    NTLMSSP is the one mechanism on offer.
    """
    return NegTokenInit([NTLMSSP_OID], hint_name=b"not_defined_in_RFC4178@please_ignore").pack()


class SPNEGOAcceptor:
    """
    SPNEGO (RFC 4178, MS-SPNG) around one L{NTLMAcceptor}; also takes raw
    NTLMSSP tokens, which some clients send without the SPNEGO wrapping.
    """

    def __init__(self, ntlm: NTLMAcceptor) -> None:
        self.ntlm = ntlm
        self._raw: bool | None = None
        self._mech_types_der = b""
        self._mic_needed = False

    def step(self, token: bytes) -> Step:
        """
        The answer to one SESSION_SETUP security buffer.

        @raise LogonFailure: authentication failed (STATUS_LOGON_FAILURE).
        @raise ProtocolError: the token does not parse or is out of order
            (STATUS_INVALID_PARAMETER... the server answers LOGON_FAILURE too).
        """
        if self._raw is None:
            self._raw = token.startswith(_NTLM_SIGNATURE)
        if self._raw:
            return self._step_ntlm(token)
        try:
            msg = unpack_token(token)
        except Exception:
            raise ProtocolError("malformed SPNEGO token") from None
        if isinstance(msg, NegTokenInit):
            return self._step_init(msg)
        if isinstance(msg, NegTokenResp):
            return self._step_resp(msg)
        raise ProtocolError("not an SPNEGO token")

    def _step_ntlm(self, token: bytes) -> Step:
        if not token.startswith(_NTLM_SIGNATURE) or len(token) < 12:
            raise ProtocolError("not an NTLMSSP token")
        kind = struct.unpack_from("<I", token, 8)[0]
        if kind == 1:
            return Step(self.ntlm.challenge(token))
        if kind == 3:
            return Step(b"", self.ntlm.authenticate(token))
        raise ProtocolError(f"unexpected NTLMSSP message type {kind}")

    def _step_init(self, init: NegTokenInit) -> Step:
        if self._mech_types_der:
            raise ProtocolError("second NegTokenInit")
        mechs = list(init.mech_types)
        if NTLMSSP_OID not in mechs:
            raise LogonFailure("client offers no mechanism we support (NTLMSSP only)")
        self._mech_types_der = pack_mech_type_list(mechs)
        # MS-SPNG 3.2.5.1: mechListMIC must be exchanged when the mechanism
        # chosen is not the client's first choice.
        self._mic_needed = mechs[0] != NTLMSSP_OID
        if mechs[0] == NTLMSSP_OID and init.mech_token:
            challenge = self.ntlm.challenge(init.mech_token)
            return Step(NegTokenResp(NegState.accept_incomplete, NTLMSSP_OID, challenge).pack())
        # The optimistic token (if any) was for another mechanism: ask for NTLMSSP.
        return Step(NegTokenResp(NegState.accept_incomplete, NTLMSSP_OID).pack())

    def _step_resp(self, resp: NegTokenResp) -> Step:
        token = resp.response_token or b""
        if not self._mech_types_der:
            raise ProtocolError("NegTokenResp before NegTokenInit")
        if not self.ntlm.challenged:
            challenge = self.ntlm.challenge(token)
            return Step(NegTokenResp(NegState.accept_incomplete, None, challenge).pack())
        result = self.ntlm.authenticate(token)
        mic = None
        if not result.session_key:
            # Guest and anonymous logons have no key to sign with.
            return Step(NegTokenResp(NegState.accept_complete).pack(), result)
        if resp.mech_list_mic is not None:
            if not self.ntlm.verify_mic(self._mech_types_der, resp.mech_list_mic):
                raise LogonFailure("bad SPNEGO mechListMIC", result.user)
            mic = self.ntlm.make_mic(self._mech_types_der)
        elif self._mic_needed:
            raise LogonFailure("SPNEGO mechListMIC missing", result.user)
        return Step(NegTokenResp(NegState.accept_complete, None, None, mic).pack(), result)
