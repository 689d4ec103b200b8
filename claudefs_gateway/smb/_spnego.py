# -*- test-case-name: tests.smb.test_spnego_adapter -*-
"""
The one place that reaches into pyspnego's private modules.

pyspnego (the library smbprotocol authenticates with) has codecs for NTLM
and SPNEGO messages and NTLM's GSS signing, but exports them only from
underscore-private modules (C{spnego._ntlm_raw}, C{spnego._spnego}); its
public acceptor cannot check an NT hash from our user database (auth.py says
why). So this module imports exactly what L{claudefs_gateway.smb.auth}
needs, under names of our own, and nothing else in the project imports
pyspnego's internals.

If a pyspnego release moves or changes any of it, the import fails here, at
start, and C{tests/smb/test_spnego_adapter.py} fails loudly: it checks every
name and signature used, and checks the signing and key functions against an
independent implementation of MS-NLMP 3.4.4 and the protocol's published
NTLMv2 example (MS-NLMP 4.2.4). The dependency's upper bound in
pyproject.toml is held to the releases that test has passed on.
"""

from __future__ import annotations

from spnego._ntlm_raw import crypto as _crypto
from spnego._ntlm_raw import security as _security
from spnego._ntlm_raw.messages import (
    Authenticate,
    AvFlags,
    AvId,
    Challenge,
    FileTime,
    Negotiate,
    NegotiateFlags,
    NTClientChallengeV2,
    TargetInfo,
    Version,
)
from spnego._spnego import NegState, NegTokenInit, NegTokenResp, pack_mech_type_list, unpack_token

__all__ = [
    "Authenticate",
    "AvFlags",
    "AvId",
    "Challenge",
    "FileTime",
    "Negotiate",
    "NegotiateFlags",
    "NTClientChallengeV2",
    "TargetInfo",
    "Version",
    "NegState",
    "NegTokenInit",
    "NegTokenResp",
    "pack_mech_type_list",
    "unpack_token",
    "rc4k",
    "gss_mic",
]


def rc4k(key: bytes, data: bytes) -> bytes:
    """RC4K(key, data) of MS-NLMP 6: the session key exchange (KEY_EXCH)."""
    out: bytes = _crypto.rc4k(key, data)
    return out


def gss_mic(flags: int, session_key: bytes, usage: str, seq_num: int, data: bytes) -> bytes:
    """
    NTLM's GSS_GetMIC signature (MS-NLMP 3.4.4) over C{data} with a fresh
    sealing handle, as the SPNEGO mechListMIC needs (sequence number 0).

    @param usage: C{"initiate"} for the client's keys, C{"accept"} for the server's.
    @return: the 16-byte NTLMSSP_MESSAGE_SIGNATURE.
    """
    handle = _crypto.rc4init(_crypto.sealkey(flags, session_key, usage))
    sign_key = _crypto.signkey(flags, session_key, usage)
    out: bytes = _security.sign(flags, handle, sign_key, seq_num, data)
    return out
