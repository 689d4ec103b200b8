# -*- test-case-name: tests.smb.test_server -*-
"""
SESSION_SETUP (MS-SMB2 3.3.5.5): authentication through the SPNEGO/NTLMSSP
acceptor of L{claudefs_gateway.smb.auth}, logon policy (guest, signing and
encryption requirements, failed-logon limits), key derivation and
re-authentication of an existing session.

L{SessionSetup} is a part of L{claudefs_gateway.smb.server.SMBConnection}
kept apart: it uses the connection's negotiated state, sessions and
signature check, which the connection declares.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.task import deferLater

from claudefs_gateway.core.log import Logger
from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.fstypes import Credentials
from claudefs_gateway.interfaces import IVFS
from claudefs_gateway.smb import constants as c
from claudefs_gateway.smb import ntstatus as st
from claudefs_gateway.smb.auth import LogonFailure, NTLMAcceptor, SPNEGOAcceptor
from claudefs_gateway.smb.crypto import PreauthHash, Sealer, derive_keys, make_signer
from claudefs_gateway.smb.errors import SMBError
from claudefs_gateway.smb.messages import SessionSetupRequest, pack_session_setup_response
from claudefs_gateway.smb.negotiate import Negotiated, SessionMachine
from claudefs_gateway.smb.state import Reply, Request, Session

__all__ = ["SessionSetup", "FAILED_LOGON_DELAY", "MAX_SESSIONS"]

# Sessions (authenticated or being set up) one connection may hold.
MAX_SESSIONS = 64
# A failed logon is answered after this long (seconds): with the limiter's
# lockout it makes guessing passwords slow without slowing anyone who knows theirs.
FAILED_LOGON_DELAY = 0.5


class SessionSetup:
    """SESSION_SETUP for one connection (mixed into L{SMBConnection})."""

    _log = Logger()
    factory: Any
    negotiated: Negotiated | None
    preauth: PreauthHash | None
    sessions: dict[int, Session]
    peer: str
    seq: int
    _closing: bool

    def end_session_everywhere(self, session: Session) -> None:
        raise NotImplementedError

    def _sign_deleted(self, req: Request) -> None:
        raise NotImplementedError

    def remember_ended(self, session: Session) -> None:
        raise NotImplementedError

    def _verify(self, req: Request, session: Session) -> None:
        raise NotImplementedError

    # -- SESSION_SETUP ----------------------------------------------------------------------

    async def smb_SESSION_SETUP(self, req: Request) -> Reply:
        body = SessionSetupRequest.parse(req.raw)
        n = self.negotiated
        assert n is not None
        vfs = await self.factory.get_vfs()
        header = req.header
        smb = self.factory.smb
        if body.flags & c.SMB2_SESSION_FLAG_BINDING:
            return await self._bind_channel(req, body, vfs)
        if header.session_id == 0:
            if len(self.sessions) >= MAX_SESSIONS:
                raise SMBError(
                    st.STATUS_INSUFFICIENT_RESOURCES, "too many sessions on a connection"
                )
            sid = self.factory.new_session_id()
            session = Session(sid, None, self.preauth.copy() if self.preauth else None)
            session.machine = SessionMachine(_SessionActions(self, session))
            self.sessions[sid] = session
        else:
            found = self.sessions.get(header.session_id)
            if found is None or found.machine.gone:
                self._sign_deleted(req)
                raise SMBError(st.STATUS_USER_SESSION_DELETED)
            session = found
            if session.channels and min(session.channels) != self.seq:
                # Re-authentication belongs on the session's first channel: on
                # another, an unsigned one where signing is required or a logon
                # that succeeds is refused (ACCESS_DENIED), one that fails is a
                # LOGON_FAILURE (smbtorture
                # smb2.session.bind_negative_*, bind_invalid_auth).
                req.session = session
                if not header.flags & c.SMB2_FLAGS_SIGNED and session.signing_required:
                    raise SMBError(st.STATUS_ACCESS_DENIED, "re-authentication on a bound channel")
                req.reauth_elsewhere = True
            if session.valid and session.acceptor is None:
                if header.flags & c.SMB2_FLAGS_SIGNED or session.signing_required:
                    self._verify(req, session)
                session.machine.reauth()
        req.session = session
        if session.acceptor is None:
            session.acceptor = SPNEGOAcceptor(
                NTLMAcceptor(
                    self._nt_hash_lookup(vfs),
                    domain=smb.domain,
                    computer=self.factory.computer,
                    guest=smb.guest,
                    # Re-authenticating as anonymous only narrows what the
                    # session may do (Windows and Samba accept it).
                    anonymous=session.valid,
                    now=self.factory.reactor.seconds,
                )
            )
            session.client_signing_required = bool(
                body.security_mode & c.SMB2_NEGOTIATE_SIGNING_REQUIRED
            )
        if session.preauth is not None and not session.valid:
            session.preauth.update(req.raw)
        limiter = self.factory.limiter
        try:
            if limiter.blocked(self.peer):
                raise LogonFailure("source locked out after failed logons")
            step = session.acceptor.step(body.token)
            if not step.done:
                session.machine.leg_continues()
                if session.preauth is not None and not session.valid:
                    req.preauth_reply = session.preauth
                req.no_sign = True
                return Reply(
                    pack_session_setup_response(0, step.token), st.STATUS_MORE_PROCESSING_REQUIRED
                )
            assert step.result is not None
            flags = self._admit(session, step.result, vfs, req)
        except (LogonFailure, ProtocolError) as e:
            reason = e.reason if isinstance(e, LogonFailure) else f"malformed token: {e}"
            user = e.user if isinstance(e, LogonFailure) else ""
            limiter.failed(self.peer)
            if self.factory.metrics is not None:
                self.factory.metrics.auth_failed()
            self._log.warn(
                "smb logon failed from {peer} user {user}: {why}",
                peer=self.peer,
                user=user,
                why=reason,
            )
            was_valid = session.valid
            signer = session.signer_for(self.seq)
            if was_valid:
                self.remember_ended(session)
            session.acceptor = None
            session.machine.leg_fails()
            if was_valid:
                # A failed re-authentication ends the session on every channel
                # (Windows and Samba): its opens close (durable ones stay for a
                # reconnect), its waiting CHANGE_NOTIFYs are answered. The reply
                # is still signed with the channel's key, as the request was.
                self.sessions.pop(session.id, None)
                self.end_session_everywhere(session)
                if req.header.flags & c.SMB2_FLAGS_SIGNED:
                    req.sign_with = signer
            else:
                req.no_sign = True
            await deferLater(self.factory.reactor, FAILED_LOGON_DELAY, lambda: None)
            # A token that does not parse is a bad request; a wrong one a failed logon.
            status = st.STATUS_LOGON_FAILURE
            if isinstance(e, ProtocolError):
                status = st.STATUS_INVALID_PARAMETER
            raise SMBError(status, reason) from None
        limiter.succeeded(self.peer)
        previous = body.previous_session_id
        if previous and previous != session.id and not (session.guest or session.anonymous):
            self._end_previous(previous, session)
        req.sign_reply = True
        return Reply(pack_session_setup_response(flags, step.token))

    async def _bind_channel(self, req: Request, body: SessionSetupRequest, vfs: IVFS) -> Reply:
        """
        Session binding (MS-SMB2 3.3.5.5.2, multichannel): this connection
        becomes another channel of an existing session of the same user, with
        a signing key of its own. The checks and their statuses are Samba's
        (smbd_smb2_session_setup_send), which smbtorture's
        smb2.session.bind_negative_* hold to Windows.
        """
        n = self.negotiated
        assert n is not None
        sid = req.header.session_id
        if sid == 0:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "binding without a session id")
        session = self.sessions.get(sid) or self.factory.sessions.get(sid)
        if session is None or not session.valid or session.machine.gone:
            raise SMBError(st.STATUS_USER_SESSION_DELETED, "no such session to bind")
        req.session = session
        # Errors from here on are signed with the session's key (the client
        # checks them; smbtorture's bind tests).
        req.sign_with = session.signer
        mine = self._signing_alg()
        if session.signing_alg >= c.AES_GMAC and mine != session.signing_alg:
            raise SMBError(st.STATUS_REQUEST_OUT_OF_SEQUENCE, "other signing algorithm")
        if mine >= c.AES_GMAC and session.signing_alg != mine:
            raise SMBError(st.STATUS_NOT_SUPPORTED, "other signing algorithm")
        if n.dialect < c.SMB_3_0:
            raise SMBError(st.STATUS_REQUEST_NOT_ACCEPTED, "binding needs SMB 3")
        if not self.factory.smb.multichannel.enabled:
            raise SMBError(st.STATUS_REQUEST_NOT_ACCEPTED, "multichannel is off")
        if not req.header.flags & c.SMB2_FLAGS_SIGNED:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "unsigned binding request")
        if session.dialect != n.dialect or session.cipher != n.cipher:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "channel of another dialect or cipher")
        if self.seq in session.channels and self.seq not in session.binding:
            # Bound already: checked with this channel's own key, as Samba does.
            signer = session.signer_for(self.seq)
            if signer is None or not signer.verify(req.raw):
                raise SMBError(st.STATUS_ACCESS_DENIED, "bad signature on a binding request")
            raise SMBError(st.STATUS_REQUEST_NOT_ACCEPTED, "this connection is bound already")
        if session.guest or session.anonymous:
            raise SMBError(st.STATUS_NOT_SUPPORTED, "binding a guest session")
        if session.signer is None or not session.signer.verify(req.raw):
            raise SMBError(st.STATUS_ACCESS_DENIED, "bad signature on a binding request")
        if len(session.channels) >= self.factory.smb.multichannel.max_channels:
            raise SMBError(st.STATUS_INSUFFICIENT_RESOURCES, "too many channels")
        pending = session.binding.get(self.seq)
        if pending is None:
            acceptor = SPNEGOAcceptor(
                NTLMAcceptor(
                    self._nt_hash_lookup(vfs),
                    domain=self.factory.smb.domain,
                    computer=self.factory.computer,
                    guest=False,
                    now=self.factory.reactor.seconds,
                )
            )
            pending = (acceptor, self.preauth.copy() if self.preauth is not None else None)
            session.binding[self.seq] = pending
        acceptor, preauth = pending
        if preauth is not None:
            preauth.update(req.raw)
        try:
            step = acceptor.step(body.token)
        except (LogonFailure, ProtocolError) as e:
            session.binding.pop(self.seq, None)
            self.factory.limiter.failed(self.peer)
            self._log.warn(
                "smb channel binding failed from {peer}: {why}",
                peer=self.peer,
                why=e.reason if isinstance(e, LogonFailure) else str(e),
            )
            status = (
                st.STATUS_INVALID_PARAMETER
                if isinstance(e, ProtocolError)
                else st.STATUS_LOGON_FAILURE
            )
            raise SMBError(status, "binding authentication failed") from None
        if not step.done:
            if preauth is not None:
                req.preauth_reply = preauth
            return Reply(
                pack_session_setup_response(0, step.token), st.STATUS_MORE_PROCESSING_REQUIRED
            )
        session.binding.pop(self.seq, None)
        result = step.result
        assert result is not None
        if result.anonymous or result.guest or result.user.lower() != session.user.lower():
            raise SMBError(st.STATUS_ACCESS_DENIED, "binding as another user")
        if not result.session_key:
            raise SMBError(st.STATUS_NOT_SUPPORTED, "binding without a session key")
        keys = derive_keys(
            n.dialect,
            result.session_key,
            preauth.value if preauth is not None else None,
            n.cipher,
        )
        # The channel signs with its own connection's algorithm (a session on
        # AES-CMAC may gain an HMAC-SHA256 channel; only GMAC must match).
        session.channel_signers[self.seq] = make_signer(self._signing_alg(), keys.signing)
        session.channels[self.seq] = self
        self.sessions[session.id] = session
        req.sign_with = None
        req.sign_reply = True
        self._log.info(
            "smb channel bound for {user} from {peer} ({n} channels)",
            user=session.user,
            peer=self.peer,
            n=len(session.channels),
        )
        return Reply(pack_session_setup_response(0, step.token))

    def _signing_alg(self) -> int:
        """The signing algorithm of this connection's dialect (3.1.1: as negotiated)."""
        n = self.negotiated
        assert n is not None
        if n.dialect >= c.SMB_3_1_1:
            return n.signing
        return c.AES_CMAC if n.dialect >= c.SMB_3_0 else c.HMAC_SHA256

    def _end_previous(self, previous: int, session: Session) -> None:
        """
        The client names the session it had before (a reconnect): that one
        ends, on whatever connection it is, if it was the same user's.
        """
        for conn in list(self.factory.connections):
            old = conn.sessions.get(previous)
            if old is None or old is session or not old.valid:
                continue
            if old.user.lower() != session.user.lower():
                self._log.info(
                    "smb PreviousSessionId names another user's session; ignored",
                    peer=self.peer,
                )
                return
            conn.end_previous_session(old)
            return

    def _nt_hash_lookup(self, vfs: IVFS) -> Callable[[str], bytes | None]:
        def lookup(name: str) -> bytes | None:
            user = vfs.users.by_name(name)
            if user is None or not user.nt_hash:
                return None
            try:
                return bytes.fromhex(user.nt_hash)
            except ValueError:
                return None

        return lookup

    def _admit(self, session: Session, result: Any, vfs: IVFS, req: Request) -> int:
        """Policy for a completed logon; derive keys. Returns SessionFlags. @raise LogonFailure."""
        n = self.negotiated
        assert n is not None
        smb = self.factory.smb
        acceptor = session.acceptor
        session.acceptor = None
        if session.valid and req.reauth_elsewhere:
            session.acceptor = None
            session.machine.leg_completes()
            raise SMBError(st.STATUS_ACCESS_DENIED, "re-authentication on a bound channel")
        if session.valid:
            # Re-authentication (MS-SMB2 3.3.5.5.3): the session keeps its keys
            # and its opens; what it runs as from now on is the new logon's
            # (anonymous, or another user, as Windows and Samba allow).
            if result.anonymous or result.guest:
                session.user, session.uid = "", -1
                session.creds = Credentials(65534, 65534)
            else:
                user = vfs.users.by_name(result.user)
                if user is None:
                    raise LogonFailure("user vanished during logon", result.user)
                session.user, session.uid, session.creds = user.name, user.uid, user.credentials
            session.anonymous, session.guest = result.anonymous, result.guest
            for tree in session.trees.values():
                tree.rebind(vfs, self.peer, session.creds)
            session.machine.leg_completes()
            return 0
        flags = 0
        guestlike = result.guest or result.anonymous
        if guestlike:
            if smb.signing == "required":
                raise LogonFailure("guest logon while signing is required", result.user)
            if smb.encrypt == "required":
                raise LogonFailure("guest logon while encryption is required", result.user)
            session.guest, session.anonymous = result.guest, result.anonymous
            session.creds = Credentials(65534, 65534)
            flags |= (
                c.SMB2_SESSION_FLAG_IS_NULL if result.anonymous else c.SMB2_SESSION_FLAG_IS_GUEST
            )
        else:
            user = vfs.users.by_name(result.user)
            if user is None:
                raise LogonFailure("user vanished during logon", result.user)
            session.user = user.name
            session.uid = user.uid
            session.creds = user.credentials
            preauth = session.preauth.value if session.preauth is not None else None
            keys = derive_keys(n.dialect, result.session_key, preauth, n.cipher)
            session.keys = keys
            alg = self._signing_alg()
            session.signer = make_signer(alg, keys.signing)
            session.dialect, session.cipher, session.signing_alg = n.dialect, n.cipher, alg
            if n.cipher and n.dialect >= c.SMB_3_0:
                session.sealer = Sealer(n.cipher, keys.encryption, keys.decryption)
            session.signing_required = smb.signing == "required" or session.client_signing_required
            if smb.encrypt == "required":
                if session.sealer is None:
                    raise LogonFailure(
                        "encryption is required and the client cannot encrypt", result.user
                    )
                session.encrypt_data = True
            elif smb.encrypt == "desired" and session.sealer is not None:
                session.encrypt_data = True
            if session.encrypt_data:
                flags |= c.SMB2_SESSION_FLAG_ENCRYPT_DATA
        del acceptor
        session.machine.leg_completes()
        session.channels[self.seq] = self
        self.factory.sessions[session.id] = session
        cipher = c.CIPHER_NAMES.get(n.cipher, "none")
        if session.encrypt_data:
            encryption = f"required ({cipher})"
        elif session.sealer is not None:
            encryption = f"available ({cipher})"
        else:
            encryption = "none"
        self._log.info(
            "smb session for {user} from {peer}: SMB {dialect}, signing {signing}, encryption {encryption}",
            user=session.user or ("anonymous" if session.anonymous else "guest"),
            peer=self.peer,
            dialect=c.DIALECT_NAMES.get(n.dialect, "?"),
            signing="required" if session.signing_required else "enabled",
            encryption=encryption,
        )
        return flags


class _SessionActions:
    """What the session machine does on its connection (docs/smb-session.dot)."""

    def __init__(self, conn: SessionSetup, session: Session) -> None:
        self._conn = conn
        self._session = session

    def activate(self) -> None:
        pass

    def discard(self) -> None:
        s = self._session
        s.signer = None
        s.sealer = None
        s.keys = None
        s.acceptor = None
        if not self._conn._closing:
            self._conn.sessions.pop(s.id, None)
