# -*- test-case-name: tests.s3.test_service -*-
"""
The S3 front end in the service tree (C{proto:s3}).

One listener (C{s3.bind}), HTTP or - with C{s3.tls_cert}/C{s3.tls_key} - HTTPS
whose certificate is re-read on SIGHUP (a bad new pair is logged and the old
one kept). Requests wait for the store to open; the staging area and the
multipart uploads of an earlier run are found at that point, and the timer that
expires abandoned uploads starts.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from zope.interface import implementer

from claudefs_gateway.core.authlimit import AuthFailureLimiter
from claudefs_gateway.core.drain import TrackingFactory
from claudefs_gateway.core.log import Logger
from claudefs_gateway.core.metrics import RequestMetrics
from claudefs_gateway.fstypes import SetAttrs
from claudefs_gateway.s3.api import Limits, S3Api, S3Resource
from claudefs_gateway.s3.auth import Authenticator
from claudefs_gateway.s3.channel import S3Site
from claudefs_gateway.s3.errors import S3Error
from claudefs_gateway.s3.lifecycle import Worker
from claudefs_gateway.s3.multipart import Uploads
from claudefs_gateway.s3.sse import KEYRING_FILE, Keyring
from claudefs_gateway.s3.tree import Tree

__all__ = ["S3Service", "ReloadingTLS"]


@implementer(IOpenSSLServerConnectionCreator)
class ReloadingTLS:
    """
    A TLS server context read from PEM files, replaceable while serving: new
    connections use the newest good certificate, open ones keep theirs.

    @raise SSL.Error: (from the constructor) the first load failed.
    """

    _log = Logger()

    def __init__(self, cert: str, key: str) -> None:
        self.cert = cert
        self.key = key
        self._ctx = self._load()

    def _load(self) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
        ctx.use_certificate_chain_file(self.cert)
        ctx.use_privatekey_file(self.key)
        ctx.check_privatekey()
        ctx.set_alpn_select_callback(lambda conn, protos: b"http/1.1")
        return ctx

    def reload(self) -> bool:
        """Re-read the files; true if the new pair is in use."""
        try:
            self._ctx = self._load()
        except (SSL.Error, OSError) as e:
            self._log.error(
                "S3 TLS certificate not reloaded, keeping the old one: {why}", why=str(e)
            )
            return False
        self._log.info("S3 TLS certificate reloaded")
        return True

    def serverConnectionForTLS(self, protocol: Any) -> SSL.Connection:  # noqa: N802 - Twisted's name
        return SSL.Connection(self._ctx, None)


class S3Service(MultiService):
    """The S3 listener, its API and the multipart expiry timer."""

    name = "proto:s3"
    _log = Logger()

    def __init__(self, core: Any) -> None:
        super().__init__()
        self.core = core
        cfg = core.config.s3
        self.config = cfg
        reactor = core.reactor
        self.metrics = RequestMetrics(core.metrics, "s3")
        self.activity = core.drainer.activity("s3")
        self._active = core.metrics.family("gateway_s3_multipart_active")
        self._active.set(0)
        self._failed = core.metrics.family("gateway_s3_multipart_failed_total")
        self.authenticator = Authenticator(
            _NoUsers(), cfg.region, reactor, AuthFailureLimiter(reactor), self.metrics
        )
        self.api = S3Api(
            self.ready,
            self.authenticator,
            cfg.region,
            cfg.domain,
            reactor,
            Limits(
                cfg.max_object_size,
                cfg.multipart_chunk_min,
                cfg.max_keys,
                cfg.enable_versioning,
            ),
            self.metrics,
            self.activity,
        )
        self.api.admit = core.admitter("s3")
        self.api.conflicts = core.metrics.family("gateway_s3_mapping_conflicts_total")
        self.site = S3Site(
            S3Resource(self.api),
            reactor,
            cfg.header_timeout_secs,
            cfg.idle_timeout_secs,
            cfg.max_header_bytes,
            on_header_timeout=self._slow_headers,
        )
        self.site.budget = core.budget
        factory: Any = TrackingFactory(self.site, self.activity)
        self.tls: ReloadingTLS | None = None
        if cfg.tls_cert and cfg.tls_key:
            self.tls = ReloadingTLS(cfg.tls_cert, cfg.tls_key)
            factory = TLSMemoryBIOFactory(self.tls, False, factory)
        self.listener = core.listener(self, "proto:s3:listen", "s3", cfg.bind, factory)
        self.tree: Tree | None = None
        self.uploads: Uploads | None = None
        self.lifecycle: Worker | None = None
        self._opening = False
        self._waiters: list[defer.Deferred[tuple[Tree, Uploads]]] = []
        self._opened: tuple[Tree, Uploads] | None = None
        self._prev_hup: Any = None

    def _slow_headers(self, channel: Any) -> None:
        self.metrics.rejected("header_timeout")
        peer = getattr(channel.transport.getPeer(), "host", "?")
        self._log.info("s3 client {peer} too slow sending headers: closed", peer=peer)

    # -- store ---------------------------------------------------------------------------

    def ready(self) -> defer.Deferred[tuple[Tree, Uploads]]:
        """
        Fire with (tree, uploads) once the store is open and the staging area
        found; fails with C{ServiceUnavailable} if it cannot be (the next
        request tries again).
        """
        if self._opened is not None:
            return defer.succeed(self._opened)
        out: defer.Deferred[tuple[Tree, Uploads]] = defer.Deferred()
        self._waiters.append(out)
        if not self._opening:
            self._opening = True
            d = defer.Deferred.fromCoroutine(self._open())
            d.addBoth(self._open_done)
        return out

    def _open_done(self, result: Any) -> None:
        self._opening = False
        waiters, self._waiters = self._waiters, []
        if isinstance(result, Failure) and not result.check(S3Error):
            if self.running:
                self._log.failure("S3 front end could not open its state", result)
            else:
                # The gateway stopped (and closed the store) while this was
                # under way: expected, not a fault.
                self._log.info(
                    "S3 state not opened: the gateway is stopping ({why})",
                    why=result.getErrorMessage(),
                )
            result = Failure(S3Error("ServiceUnavailable", "The S3 state could not be opened"))
        for w in waiters:
            if isinstance(result, Failure):
                w.errback(result)
            else:
                w.callback(result)

    async def _open(self) -> tuple[Tree, Uploads]:
        core = self.core
        try:
            vfs = await core.vfs_ready()
        except Exception:
            raise S3Error("ServiceUnavailable", "The store could not be opened") from None
        cfg = self.config
        threads = core.threads

        def in_pool(f: Any, *args: Any) -> defer.Deferred[Any]:
            return threads.run("cpu", f, *args)

        tree = Tree(vfs, in_pool)
        await tree.open(cfg.temp_max_age_secs)
        if cfg.root_mode is not None:
            root = await vfs.getattr(tree.root_caller, tree.export.root_ino)
            if root.mode != cfg.root_mode:
                await vfs.setattr(tree.root_caller, root.ino, SetAttrs(mode=cfg.root_mode))
                self._log.info("S3 root given mode {mode:o}", mode=cfg.root_mode)
        uploads = Uploads(
            tree,
            core.reactor,
            cfg.part_timeout_ms / 1000.0,
            cfg.max_concurrent_parts,
            on_change=self._active.set,
            on_failed=self._failed.inc,
        )
        await uploads.open()
        self.lifecycle = Worker(
            tree,
            uploads,
            core.reactor,
            cfg.lifecycle_interval_secs,
            cfg.lifecycle_day_secs,
            core.metrics,
            self.api.key_locks,
        )
        if self.running:
            uploads.start_expiry()
            self.lifecycle.start()
        self.authenticator.users = vfs.users
        # SSE-S3 master keys and the SSE-C check secret (s3/sse.py), beside the store.
        self.api.keyring = Keyring(Path(core.config.data_dir) / KEYRING_FILE)
        self.tree, self.uploads = tree, uploads
        self._opened = (tree, uploads)
        return self._opened

    # -- lifecycle -------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self.tls is not None and threading.current_thread() is threading.main_thread():
            reactor = self.core.reactor

            def on_hup(signum: int, frame: Any) -> None:
                reactor.callFromThread(self.reload_tls)
                prev = self._prev_hup
                if callable(prev):
                    prev(signum, frame)

            self._prev_hup = signal.signal(signal.SIGHUP, on_hup)
        # Open the store's S3 state now, not on the first request (errors show at start).
        self.ready().addErrback(lambda f: None)  # logged by _open_done

    def reload_tls(self) -> bool:
        return self.tls.reload() if self.tls is not None else False

    def stopService(self) -> Any:
        if self.tls is not None and threading.current_thread() is threading.main_thread():
            if self._prev_hup is not None:
                signal.signal(signal.SIGHUP, self._prev_hup)
            self._prev_hup = None
        if self.uploads is not None:
            self.uploads.stop_expiry()
        if self.lifecycle is not None:
            self.lifecycle.stop()
        return super().stopService()


class _NoUsers:
    """Until the store is open there is no user database: nobody authenticates."""

    def by_access_key(self, key: str) -> None:
        return None

    def by_uid(self, uid: int) -> None:
        return None
