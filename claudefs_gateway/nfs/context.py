# -*- test-case-name: tests.nfs.test_context -*-
"""
What MOUNT, NFSv3 and NLM share: the vfs, and who a call runs as.

Every NFS-family call names a file handle, hence an export; L{NFSContext.caller}
turns the call's credential and source address into a vfs L{Caller} for that
export, which applies the export's client networks and squashing - on every
call, not only at MNT (a client that was allowed to mount and is then removed
from C{clients}, or that skipped MOUNT and forged nothing but guessed a
handle's path, is refused).

Credentials: AUTH_SYS brings uid, gid and up to 16 gids. AUTH_NONE runs as the
export's anonymous identity (C{anonuid}/C{anongid}), as Linux knfsd treats
AUTH_NULL: it can read what the world may read and change nothing the world
may not. Other flavours never get here (the RPC layer refuses them with
AUTH_ERROR).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from claudefs_gateway import errors
from claudefs_gateway.fstypes import Attributes, Credentials
from claudefs_gateway.interfaces import IVFS
from claudefs_gateway.rpc.server import Call
from claudefs_gateway.vfs import Caller, ExportInfo

__all__ = ["NFSContext", "credentials"]

_CALLER_CACHE = 4096


def credentials(call: Call, export: ExportInfo) -> Credentials:
    """The identity a call claims (before squashing)."""
    cred = call.cred
    if cred is None:
        rules = export.rules
        return Credentials(rules.anonuid, rules.anongid, ())
    return Credentials(cred.uid, cred.gid, cred.gids)


class NFSContext:
    """
    Shared state of the NFS front end.

    @param vfs_ready: returns a Deferred firing with the open vfs.
    @param write_verifier: the gateway's boot verifier: eight bytes that
        change whenever the gateway restarts (random per process). The
        WRITE/COMMIT verifier clients see (L{write_verifier}) is this one
        folded with the number of restarts of remote meta and data servers
        the vfs has seen, so clients resend writes that were unstable when
        the gateway I{or a server under it} went down (RFC 1813 section
        3.3.7, RFC 8881 section 18.32.3).
    @param io_size: rtmax and wtmax (FSINFO), the largest READ and WRITE.
    @param admit: the request-rate hook, C{admit(address, uid)}: returns, or
        raises L{errors.Throttled} (answered NFS3ERR_JUKEBOX: try later).
    """

    def __init__(
        self,
        vfs_ready: Callable[[], defer.Deferred[IVFS]],
        write_verifier: bytes | None = None,
        io_size: int = 1 << 20,
        protocol: str = "nfs3",
        admit: Callable[[str, int | None], None] | None = None,
    ) -> None:
        self._vfs_ready = vfs_ready
        self.admit = admit
        self.vfs: IVFS | None = None
        self.boot_verifier = write_verifier if write_verifier is not None else os.urandom(8)
        self._verf_restarts = 0
        self._verf = self.boot_verifier
        self.io_size = io_size
        self.protocol = protocol
        self._callers: dict[tuple[Any, ...], Caller | errors.FSError] = {}
        # The latest answer of caller() and what it was for (export, parsed
        # credential - shared per encoded body - and host): a client's next
        # call is usually the same, and then needs no key built and hashed.
        self._last: tuple[ExportInfo, Any, str, Caller | errors.FSError] | None = None

    @property
    def write_verifier(self) -> bytes:
        """
        The WRITE/COMMIT verifier now: the boot verifier while no server
        under the vfs restarted, else a hash of it and the restart count.
        Read it I{after} the write or commit it answers, so that a server
        restart the call itself discovered already shows.
        """
        vfs = self.vfs
        n = vfs.server_restarts if vfs is not None else 0
        if n != self._verf_restarts:
            self._verf_restarts = n
            self._verf = (
                hashlib.blake2b(self.boot_verifier + n.to_bytes(8, "big"), digest_size=8).digest()
                if n
                else self.boot_verifier
            )
        return self._verf

    async def ready(self) -> IVFS:
        """The open vfs (waiting for the store to open on the first calls)."""
        vfs = self.vfs
        if vfs is None:
            vfs = await self._vfs_ready()
            self.vfs = vfs
        return vfs

    def caller(self, export: ExportInfo, call: Call) -> Caller:
        """
        Who C{call} runs as through C{export} (cached per export, address and
        credential).

        @raise Access: the client's address is not allowed by the export.
        """
        cred = call.cred
        host = call.peer.host
        got: Caller | errors.FSError
        last = self._last
        if last is not None and last[0] is export and last[1] is cred and last[2] == host:
            got = last[3]
        else:
            if cred is None:
                key: tuple[Any, ...] = (export.id, export.root_ino, host)
            else:
                key = (export.id, export.root_ino, host, cred.uid, cred.gid, cred.gids)
            found = self._callers.get(key)
            if found is not None:
                got = found
            else:
                assert self.vfs is not None
                try:
                    got = self.vfs.caller(export, host, credentials(call, export), self.protocol)
                except errors.Access as e:
                    got = e
                if len(self._callers) >= _CALLER_CACHE:
                    self._callers.clear()
                self._callers[key] = got
            self._last = (export, cred, host, got)
        if isinstance(got, errors.FSError):
            raise errors.Access("client not allowed by export rules")
        return got

    def file_now(
        self, call: Call, handle: bytes
    ) -> tuple[IVFS, ExportInfo, Attributes, Caller] | None:
        """
        L{file}'s answer when it is in memory (the vfs open, the handle seen
        before, its attributes cached), else L{None}: then call L{file}.
        Raises as L{file} does; the call is admitted (rate limits) once,
        here or there.
        """
        vfs = self.vfs
        if vfs is None or type(handle) is not bytes:
            return None
        now = getattr(vfs, "from_handle_now", None)
        if now is None:
            return None
        if self.admit is not None and not call.admitted:
            call.admitted = True
            self.admit(call.peer.host, call.cred.uid if call.cred is not None else None)
        got = now(handle)
        if got is None:
            return None
        export, a = got
        # L{caller}'s hit on the last caller, in line (a connection's calls
        # come with the same credential object: the server decodes each
        # encoded credential once).
        last = self._last
        if (
            last is not None
            and last[0] is export
            and last[1] is call.cred
            and last[2] == call.peer.host
            and not isinstance(last[3], errors.FSError)
        ):
            return vfs, export, a, last[3]
        return vfs, export, a, self.caller(export, call)

    async def file(self, call: Call, handle: bytes) -> tuple[IVFS, ExportInfo, Attributes, Caller]:
        """
        The vfs, export, attributes and caller a handle and call mean.

        @raise BadHandle: a handle we did not make. @raise Stale: gone.
        @raise Access: the client may not use the export.
        @raise Throttled: the client or user is over its request rate.
        """
        if self.admit is not None and not call.admitted:
            call.admitted = True
            self.admit(call.peer.host, call.cred.uid if call.cred is not None else None)
        vfs = self.vfs or await self.ready()
        # In memory (a handle seen before, its attributes cached: a CREATE's
        # or REMOVE's directory): no coroutine and fired Deferred of
        # from_handle's, which answers the same.
        now = getattr(vfs, "from_handle_now", None)
        got = now(handle) if now is not None and type(handle) is bytes else None
        if got is None:
            got = await vfs.from_handle(handle)
        export, a = got
        return vfs, export, a, self.caller(export, call)
