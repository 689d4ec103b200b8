# -*- test-case-name: tests.nfs.test_service -*-
"""
The NFS front end in the service tree: listeners, programs, registration.

::

    proto:nfs (MultiService)
      proto:nfs:listen        TCP  nfs.bind        NFSv3, NFSv4.1/4.2, NLM v4, NSM v1 (health: nfs)
      proto:nfs:nfs-udp       UDP  same port                                (health: nfs-udp)
      proto:nfs:mount         TCP  nfs.mount_bind  MOUNT v1 and v3          (health: mount)
      proto:nfs:mount-udp     UDP  same port                                (health: mount-udp)
      proto:nfs:portmap       TCP  nfs.portmap_bind, embedded portmapper   (health: portmap)
      proto:nfs:portmap-udp   UDP  same port                                (health: portmap-udp)
      proto:nfs:register      puts the bound ports in the portmapper (embedded) or rpcbind (system)
      proto:nfs:nlm           the grace period (NLM and NFSv4), SM_NOTIFY, NFSv4 client records

UDP listeners need a TCP-style C{bind} (host and port); with port 0 (tests)
each takes the port its TCP twin was given. Every listener joins the drain;
a UDP listener stops taking calls when the drain begins and closes at stop.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorThreads, IReactorUDP
from twisted.python.failure import Failure

from claudefs_gateway.core.health import CheckResult
from claudefs_gateway.core.log import Logger
from claudefs_gateway.core.malloc import HeapTrimmer, keep_freed_memory
from claudefs_gateway.core.metrics import RequestMetrics
from claudefs_gateway.core.runtime import admission
from claudefs_gateway.errors import BackendUnavailable
from claudefs_gateway.interfaces import IVFS
from claudefs_gateway.nfs.callbacks import RPCCallbacks
from claudefs_gateway.nfs.context import NFSContext
from claudefs_gateway.nfs.grace import Grace
from claudefs_gateway.nfs.mount import MOUNT_PROGRAM, Mount
from claudefs_gateway.nfs.nlm import NLM, NLM_PROGRAM, NLM_V4
from claudefs_gateway.nfs.nsm import NSM_PROGRAM, FileStore, StatusMonitor, state_file
from claudefs_gateway.nfs.v3.codec import NFS_PROGRAM
from claudefs_gateway.nfs.v3.procs import NFS3
from claudefs_gateway.nfs.v4.compound import Settings
from claudefs_gateway.nfs.v4.server import NFS4
from claudefs_gateway.rpc.drc import ReplyCache
from claudefs_gateway.rpc.portmap import (
    PMAP_PROG,
    Mapping,
    PortmapTable,
    SystemRegistrar,
    portmap_program,
    uaddr,
)
from claudefs_gateway.rpc.server import (
    RPCDatagramProtocol,
    RPCServer,
    RPCStreamFactory,
    UDPListener,
)

__all__ = ["NFSService", "io_size"]

# Room for the RPC and WRITE headers around the largest WRITE's data.
_HEADROOM = 4096


def io_size(max_record: int) -> int:
    """rtmax/wtmax for a record limit: the largest power of two that leaves headroom."""
    n = 1 << ((max_record - _HEADROOM).bit_length() - 1)
    return max(n, 4096)


class NFSService(MultiService):
    """
    The NFS front end (see module docstring).

    @ivar ctx: the shared L{NFSContext}.
    @ivar portmap: the embedded portmapper's table (also filled in C{system}
        mode, as the record of what was registered).
    """

    name = "proto:nfs"
    _log = Logger()

    def __init__(self, core: Any) -> None:
        super().__init__()
        self.core = core
        cfg = core.config.nfs
        # Connections are counted under the protocol label the request metrics
        # use (gateway_active_connections{protocol="nfs3"} beside
        # gateway_requests_total{protocol="nfs3"}); MOUNT and the portmapper
        # have listeners, and labels, of their own.
        self.activity = core.drainer.activity("nfs3")
        self.io_size = io_size(cfg.max_record_size)
        self.ctx = NFSContext(
            self._vfs_ready,
            io_size=self.io_size,
            admit=core.admitter("nfs3"),
        )
        self.server = RPCServer(ReplyCache(cfg.drc_entries), self.activity)
        self.nfs3 = NFS3(self.ctx, RequestMetrics(core.metrics, "nfs3"), max_write=self.io_size)
        self.mount = Mount(self.ctx, RequestMetrics(core.metrics, "mount"))
        self.server.add(self.nfs3.program())
        self.server.add(self.mount.program())
        self.callbacks = RPCCallbacks(core.reactor)
        # One grace period after a restart for NLM and NFSv4 (nfs/grace.py).
        self.grace = Grace(cfg.grace)
        self.nlm = NLM(self.ctx, self.callbacks, RequestMetrics(core.metrics, "nlm"))
        # Each --workers worker keeps its own record (nsm.state_file).
        # A single gateway takes over the records --workers workers left.
        worker_index = core.extras.get("worker_index")
        nsm_file = state_file(worker_index)
        self.nsm = StatusMonitor(
            FileStore(core.config.data_dir / nsm_file, self._disk, adopt=worker_index is None),
            self.nlm,
            self.callbacks,
            cfg.grace,
            RequestMetrics(core.metrics, "nsm"),
            grace=self.grace,
        )
        self.server.add(self.nlm.program())
        self.server.add(self.nsm.program())
        # cfs-gateway status: the NLM locks of an NFSv3 connection's client host.
        self.server.describers.append(self.nsm.describe_connection)
        self.extra_programs: list[tuple[int, int]] = [(NLM_PROGRAM, NLM_V4), (NSM_PROGRAM, 1)]
        self.nfs4: NFS4 | None = None
        v4 = cfg.v4
        if v4.enabled:
            ctx4 = NFSContext(
                self._vfs_ready,
                write_verifier=self.ctx.boot_verifier,
                io_size=self.io_size,
                protocol="nfs4",
            )
            settings = Settings(
                minor_versions=frozenset(v4.minor_versions),
                lease_secs=v4.lease_secs,
                only_numeric_owners=v4.only_numeric_owners,
                domain=v4.domain,
                max_clients=v4.max_clients,
                max_sessions_per_client=v4.max_sessions_per_client,
                max_slots=v4.max_slots,
                max_ops=v4.max_ops_per_compound,
                reply_cache_size=v4.reply_cache_size,
                max_open_states_per_client=v4.max_open_states_per_client,
                max_locks_per_client=v4.max_locks_per_client,
                max_record=cfg.max_record_size,
                io_size=self.io_size,
                async_copy_min=v4.async_copy_min,
                delegations=v4.delegations,
            )
            self.nfs4 = NFS4(
                ctx4, core.reactor, settings, RequestMetrics(core.metrics, "nfs4"), self.grace
            )
            self.nfs4.budget = core.budget

            # The request-rate limits NFSv3 calls go through (core.admission
            # without the budget, which compound checks itself for every
            # COMPOUND, session ones included), counted as nfs4; none at all
            # (not a call per COMPOUND doing nothing) when no limit is set:
            # the limiter's limits are fixed when it is built.
            limiter = core.limiter
            if limiter is not None and limiter.enabled:
                self.nfs4.admit = admission("nfs4", None, limiter)
            self.server.add(self.nfs4.program())
            self.server.describers.append(self.nfs4.describe_connection)
            pnfs = cfg.pnfs
            if pnfs.enabled:
                from claudefs_gateway.nfs.pnfs.mds import PnfsSettings

                layouts = self.nfs4.enable_pnfs(
                    PnfsSettings(
                        enabled=True,
                        advertise_host=pnfs.advertise_host or "",
                        advertise={a.data_server: a.address for a in pnfs.advertise},
                        ds_uid=pnfs.ds_uid,
                        ds_gid=pnfs.ds_gid,
                        recall_timeout=core.config.leases.recall_timeout_secs,
                        probe_interval=pnfs.probe_interval_secs,
                    ),
                    core.metrics,
                )
                core.health.register("pnfs", layouts.check)
        self.portmap = PortmapTable()
        self.udp: dict[str, UDPListener] = {}

        # One port, two versions: a connection is counted as the version its
        # first call speaks, the label its requests are counted under.
        v4_activity = core.drainer.activity("nfs4") if self.nfs4 is not None else None

        def activity_for(prog: int, vers: int) -> Any:
            return v4_activity if prog == NFS_PROGRAM and vers == 4 else None

        stream = RPCStreamFactory(
            self.server,
            cfg.max_record_size,
            cfg.max_requests_per_connection,
            self.activity,
            activity_for,
            clock=core.reactor,
            idle_timeout=cfg.idle_timeout_secs,
            partial_timeout=cfg.partial_record_timeout_secs,
            metrics=RequestMetrics(core.metrics, "nfs"),
            budget=core.budget,
            max_queued_bytes=cfg.max_queued_bytes_per_connection,
        )
        self.nfs_listener = core.listener(self, "proto:nfs:listen", "nfs", cfg.bind, stream)
        mount_stream = RPCStreamFactory(
            self.server,
            cfg.max_record_size,
            cfg.max_requests_per_connection,
            core.drainer.activity("mount"),
            clock=core.reactor,
            idle_timeout=cfg.idle_timeout_secs,
            partial_timeout=cfg.partial_record_timeout_secs,
            metrics=RequestMetrics(core.metrics, "mount"),
            max_queued_bytes=cfg.max_queued_bytes_per_connection,
        )
        self.mount_listener = core.listener(
            self, "proto:nfs:mount", "mount", cfg.mount_bind, mount_stream
        )
        if cfg.udp:
            self._add_udp("nfs", cfg.bind, self.nfs_listener, self.server)
            self._add_udp("mount", cfg.mount_bind, self.mount_listener, self.server)

        self.portmap_listener = None
        if cfg.portmapper == "embedded":
            pm_server = RPCServer(ReplyCache(0), self.activity)
            pm_server.add(
                portmap_program(
                    self.portmap, RequestMetrics(core.metrics, "portmap"), local_host=_local_host
                )
            )
            pm_stream = RPCStreamFactory(pm_server, 64 * 1024, 16, core.drainer.activity("portmap"))
            self.portmap_listener = core.listener(
                self, "proto:nfs:portmap", "portmap", cfg.portmap_bind, pm_stream
            )
            if cfg.udp:
                self._add_udp("portmap", cfg.portmap_bind, self.portmap_listener, pm_server)
        self.registrar = Registration(self)
        self.registrar.setServiceParent(self)
        LockRecovery(self).setServiceParent(self)
        # What keep_freed_memory keeps is handed back once a minute (core/malloc.py).
        HeapTrimmer(core.reactor).setServiceParent(self)

    def privilegedStartService(self) -> None:
        # READ and WRITE move buffers of up to rtmax per call: keep freed heap
        # for reuse instead of giving it back and faulting it in again.
        keep_freed_memory()
        super().privilegedStartService()

    def _disk(self, f: Any, *args: Any) -> defer.Deferred[Any]:
        """Run blocking file work in the disk pool (in-line on a reactor without threads)."""
        if IReactorThreads.providedBy(self.core.reactor):
            d: defer.Deferred[Any] = self.core.threads.run("disk", f, *args)
            return d
        return defer.maybeDeferred(f, *args)

    def _vfs_ready(self) -> defer.Deferred[IVFS]:
        return self.core.vfs_ready()

    def _add_udp(self, label: str, listen: Any, twin: Any, server: RPCServer) -> None:
        if not listen.is_tcp or listen.host is None:
            self._log.warn(
                "{label}: {where} is not a host and port; no UDP listener",
                label=label,
                where=listen.shown,
            )
            return
        if not IReactorUDP.providedBy(self.core.reactor):
            self._log.warn("{label}: this reactor has no UDP; no UDP listener", label=label)
            return
        udp = _TwinUDPListener(
            f"proto:nfs:{label}-udp",
            f"{label}-udp",
            listen.host,
            listen.port,
            RPCDatagramProtocol(server),
            self.core.reactor,
            twin,
        )
        udp.setServiceParent(self)
        self.core.health.register(udp.label, udp.check)
        self.core.drainer.add_listener(udp)
        self.udp[label] = udp

    def mappings(self) -> list[Mapping]:
        """What the portmapper should say about this front end's bound ports."""
        out: list[Mapping] = []

        def add(
            listener: Any,
            udp: UDPListener | None,
            programs: list[tuple[int, int]],
            tcp_only: list[tuple[int, int]] | None = None,
        ) -> None:
            host = listener.listen.host or "0.0.0.0"
            six = "6" if ":" in host else ""
            port = listener.bound_port
            if port:
                for prog, vers in [*programs, *(tcp_only or [])]:
                    out.append(Mapping(prog, vers, "tcp" + six, uaddr(host, port)))
            if udp is not None and udp.bound_port:
                for prog, vers in programs:
                    out.append(Mapping(prog, vers, "udp" + six, uaddr(host, udp.bound_port)))

        if self.portmap_listener is not None:
            add(self.portmap_listener, self.udp.get("portmap"), [(PMAP_PROG, v) for v in (4, 3, 2)])
        # NFSv4.1 needs a transport with congestion control: TCP only (RFC 8881 §2.9.1).
        v4 = [(NFS_PROGRAM, 4)] if self.nfs4 is not None else []
        add(self.nfs_listener, self.udp.get("nfs"), [(NFS_PROGRAM, 3), *self.extra_programs], v4)
        add(self.mount_listener, self.udp.get("mount"), [(MOUNT_PROGRAM, 1), (MOUNT_PROGRAM, 3)])
        return out


class _TwinUDPListener(UDPListener):
    """A UDP listener that takes its TCP twin's port when configured with port 0."""

    def __init__(self, *args: Any) -> None:
        *rest, twin = args
        super().__init__(*rest)
        self.twin = twin
        self.configured_port = self.port_number

    def privilegedStartService(self) -> None:
        if self.configured_port == 0 and self.twin.bound_port:
            self.port_number = self.twin.bound_port
            try:
                super().privilegedStartService()
                return
            except Exception:
                self.port_number = 0
        super().privilegedStartService()


def _local_host(peer: Any) -> str | None:
    conn = peer.conn
    if conn is None or conn.transport is None:
        return None
    host = getattr(conn.transport.getHost(), "host", None)
    if isinstance(host, str) and host.startswith("::ffff:"):
        host = host[7:]
    return host if isinstance(host, str) else None


class Registration(Service):
    """
    Puts the front end's bound ports in the portmapper once the listeners are
    up: the embedded table, or the system's rpcbind (C{portmapper: system}),
    from which they are removed again at stop. Health check C{rpcbind} in
    system mode.
    """

    name = "proto:nfs:register"
    _log = Logger()

    def __init__(self, front: NFSService) -> None:
        self.front = front
        self.mode = front.core.config.nfs.portmapper
        self.system: SystemRegistrar | None = None
        self.state = "not registered"
        self._registering: defer.Deferred[None] | None = None
        if self.mode == "system":
            front.core.health.register("rpcbind", self.check)

    def startService(self) -> None:
        super().startService()
        mappings = self.front.mappings()
        if self.mode == "embedded":
            for m in mappings:
                self.front.portmap.set(m)
            self.state = "registered"
        elif self.mode == "system":
            self.system = SystemRegistrar(self.front.core.reactor)
            self._registering = defer.Deferred.fromCoroutine(self._register(mappings))

    async def _register(self, mappings: list[Mapping]) -> None:
        assert self.system is not None
        try:
            await self.system.register(m for m in mappings if m.prog != PMAP_PROG)
        except Exception as e:
            self.state = f"registration with rpcbind failed: {e}"
            self._log.error(
                "cannot register with the system rpcbind ({why}); clients must be given "
                "the NFS and MOUNT ports explicitly",
                why=str(e),
            )
            return
        for m in self.system.registered:
            self.front.portmap.set(m)
        self.state = "registered"

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self.system is None:
            return None
        return defer.Deferred.fromCoroutine(self._unregister())

    async def _unregister(self) -> None:
        assert self.system is not None
        if self._registering is not None and not self._registering.called:
            self._registering.cancel()
        try:
            await self.system.unregister()
        finally:
            self.system.close()
            self.system = None

    def check(self) -> CheckResult:
        if self.state == "registered":
            return CheckResult.healthy()
        return CheckResult.degraded(self.state)


class LockRecovery(Service):
    """
    At start, once the store is open: the NSM state number, and after a
    restart the NLM grace period and SM_NOTIFY to the last run's lock
    clients. At stop: blocked lock requests and callbacks end, the client
    record reaches the disk.
    """

    name = "proto:nfs:nlm"
    _log = Logger()

    def __init__(self, front: NFSService) -> None:
        self.front = front
        # Fires when start-up recovery is done (tests wait on it).
        self.starting: defer.Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self.starting = defer.Deferred.fromCoroutine(self._start())
        self.starting.addErrback(self._failed)

    def _failed(self, f: Failure) -> None:
        if f.check(defer.CancelledError):
            return
        if f.check(BackendUnavailable, RuntimeError):
            self._log.warn("NLM recovery skipped: {why}", why=f.getErrorMessage())
            return
        self._log.failure("NLM recovery at start", f)

    async def _start(self) -> None:
        vfs = await self.front.ctx.ready()
        await self.front.nsm.start(vfs.locks)
        if self.front.nfs4 is not None:
            await self.front.nfs4.start()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self.starting is not None and not self.starting.called:
            self.starting.cancel()
        self.front.nlm.close()
        vfs = self.front.ctx.vfs
        if vfs is not None and vfs.locks is not None and vfs.locks.in_grace:
            vfs.locks.end_grace()
        await self.front.nsm.flushed()
        if self.front.nfs4 is not None:
            await self.front.nfs4.stop()
        await self.front.callbacks.close()
