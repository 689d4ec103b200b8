# -*- test-case-name: tests.admin.test_web -*-
"""
The admin HTTP API (twisted.web): C{/health}, C{/metrics}, C{/admin/*}.

Access: with no C{admin.token}, only loopback (and UNIX-socket) clients are
served and others get 403. With a token, a non-loopback client must present
C{Authorization: Bearer <token>} for every path, and every C{/admin/*} call needs
it from anyone, loopback included. Failed tokens are counted in
C{gateway_auth_failures_total{protocol="admin"}} and a source that keeps failing
is locked out (429) for a while (L{AuthFailureLimiter}).

The admin listener is not drained: during a drain C{/health} answers 503, so a
load balancer takes the gateway out, and C{/admin/drain} shows progress.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from typing_extensions import override

from claudefs_gateway.core.authlimit import AuthFailureLimiter
from claudefs_gateway.core.caches import Caches
from claudefs_gateway.core.drain import Drainer
from claudefs_gateway.core.health import SERVING, HealthChecks
from claudefs_gateway.core.log import Logger
from claudefs_gateway.core.metrics import Metrics, RequestMetrics

__all__ = ["AdminSite", "build_site", "MAX_BODY"]

# Admin calls carry no meaningful body; refuse big ones instead of spooling them.
MAX_BODY = 64 * 1024
IDLE_TIMEOUT = 60

_OPS = {
    b"/health": "health",
    b"/metrics": "metrics",
    b"/admin/drain": "drain",
    b"/admin/cache/invalidate": "cache_invalidate",
    b"/admin/quota": "quota",
    b"/admin/clients": "clients",
}


def _json(request: Request, code: int, body: dict[str, Any]) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def is_loopback(address: Any) -> bool:
    if isinstance(address, UNIXAddress):
        return True
    if isinstance(address, IPv4Address | IPv6Address):
        host = address.host
        if host.startswith("::ffff:"):
            host = host[7:]
        return host == "::1" or host.startswith("127.")
    return False


def _source(address: Any) -> str:
    return getattr(address, "host", "unix")


class _Denied(Resource):
    isLeaf = True

    def __init__(self, code: int, error: str, headers: dict[bytes, bytes] | None = None) -> None:
        super().__init__()
        self.code = code
        self.error = error
        self.headers = headers or {}

    def render(self, request: Request) -> bytes:
        for k, v in self.headers.items():
            request.setHeader(k, v)
        return _json(request, self.code, {"error": self.error})


class _BoundedRequest(Request):
    """A Request that refuses bodies over L{MAX_BODY} instead of spooling them to disk."""

    _seen = 0

    @override
    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_BODY:
            self._refuse()
        super().gotLength(min(length, MAX_BODY) if length is not None else None)

    @override
    def handleContentChunk(self, data: bytes) -> None:
        self._seen += len(data)
        if self._seen > MAX_BODY:
            self._refuse()
            return
        super().handleContentChunk(data)

    def _refuse(self) -> None:
        AdminSite._log.warn("admin request body over {limit} bytes refused", limit=MAX_BODY)
        transport = self.channel.transport if self.channel is not None else None
        if transport is not None:
            transport.write(
                b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            )
            transport.loseConnection()


class AdminSite(Site):
    """The admin Site: access guard and request metrics around ordinary resources."""

    _log = Logger()
    requestFactory = _BoundedRequest
    noisy = False

    def __init__(
        self,
        root: Resource,
        *,
        token: str | None,
        limiter: AuthFailureLimiter,
        requests: RequestMetrics,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        super().__init__(root, timeout=IDLE_TIMEOUT)
        self.displayTracebacks = False
        self._token = token.encode() if token else None
        self._limiter = limiter
        self._requests = requests
        self._timer = timer

    @override
    def log(self, request: http.Request) -> None:
        # Never the query string: it is not needed and could carry credentials.
        self._log.debug(
            "admin {method} {path} {code}",
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("ascii", "replace"),
            code=request.code,
        )

    def _guard(self, request: Request) -> Resource | None:
        peer = request.getClientAddress()
        local = is_loopback(peer)
        is_admin = request.path.startswith(b"/admin/")
        if self._token is None:
            if local:
                return None
            self._log.warn(
                "admin request from non-loopback {peer} refused: no admin.token configured",
                peer=_source(peer),
            )
            self._requests.rejected("forbidden")
            return _Denied(
                403, "the admin API serves loopback clients only unless admin.token is set"
            )
        if local and not is_admin:
            return None
        source = _source(peer)
        if self._limiter.blocked(source):
            self._requests.rejected("auth_lockout")
            return _Denied(
                429, "too many failed authentications; try later", {b"Retry-After": b"60"}
            )
        header = request.getHeader(b"authorization") or b""
        scheme, _, presented = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(presented.strip(), self._token):
            self._limiter.succeeded(source)
            return None
        self._limiter.failed(source)
        self._requests.auth_failed()
        self._log.warn(
            "admin authentication failed from {peer} ({why})",
            peer=source,
            why="no bearer token" if not header else "wrong token",
        )
        return _Denied(
            401, "bearer token required", {b"WWW-Authenticate": b'Bearer realm="claudefs-gateway"'}
        )

    @override
    def getResourceFor(self, request: Request) -> Resource:
        start = self._timer()
        op = _OPS.get(
            request.path, "quota" if request.path.startswith(b"/admin/quota/") else "other"
        )

        def done(_: object) -> None:
            code = request.code
            self._requests.observe(op, self._timer() - start, str(code) if code >= 400 else None)

        request.notifyFinish().addBoth(done)
        denied = self._guard(request)
        if denied is not None:
            return denied
        return super().getResourceFor(request)


class HealthResource(Resource):
    isLeaf = True

    def __init__(self, health: HealthChecks) -> None:
        super().__init__()
        self._health = health

    def render_GET(self, request: Request) -> Any:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d = defer.Deferred.fromCoroutine(self._health.run())

        def write(doc: dict[str, Any]) -> None:
            if gone:
                return
            code = http.OK if doc["overall"] in SERVING else http.SERVICE_UNAVAILABLE
            request.write(_json(request, code, doc))
            request.finish()

        d.addCallback(write)
        d.addErrback(lambda f: AdminSite._log.failure("health document failed", f))
        return NOT_DONE_YET


class MetricsResource(Resource):
    """Prometheus exposition of the gateway's registry (text or OpenMetrics by Accept)."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        return encoder(self._registry)


class DrainResource(Resource):
    """C{POST /admin/drain[?wait=1]} starts the drain; C{GET} shows its state."""

    isLeaf = True

    def __init__(self, drainer: Drainer, deadline: float) -> None:
        super().__init__()
        self._drainer = drainer
        self._deadline = deadline

    def render_GET(self, request: Request) -> bytes:
        return _json(request, http.OK, self._drainer.status())

    def render_POST(self, request: Request) -> Any:
        AdminSite._log.info("drain requested through the admin API")
        d = self._drainer.drain(self._deadline)
        if request.args.get(b"wait", [b"0"])[0] not in (b"1", b"true", b"yes"):
            return _json(request, http.ACCEPTED, self._drainer.status())
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def write(result: Any) -> None:
            if gone:
                return
            body = dict(
                self._drainer.status(),
                seconds=round(result.seconds, 3),
                in_flight_abandoned=result.in_flight_abandoned,
                connections_aborted=result.connections_aborted,
            )
            request.write(_json(request, http.OK, body))
            request.finish()

        d.addCallback(write)
        return NOT_DONE_YET


class CacheInvalidateResource(Resource):
    isLeaf = True

    def __init__(self, caches: Caches) -> None:
        super().__init__()
        self._caches = caches

    def render_POST(self, request: Request) -> bytes:
        dropped = self._caches.invalidate_all()
        AdminSite._log.info("caches invalidated through the admin API: {dropped}", dropped=dropped)
        return _json(request, http.OK, {"invalidated": dropped})


class QuotaResource(Resource):
    """
    C{GET /admin/quota}: every id's usage and limits. C{PUT /admin/quota/user/1000}
    with a JSON body of limits (C{bytes_soft}, C{bytes_hard}, C{inodes_soft},
    C{inodes_hard}; sizes as numbers or strings like C{"20GB"}) sets them;
    C{DELETE} returns the id to the configured defaults.
    """

    isLeaf = True

    def __init__(self, quotas: Callable[[], Any]) -> None:
        super().__init__()
        self._quotas = quotas

    def _target(self, request: Request) -> tuple[str, int] | None:
        parts = [p for p in request.postpath or [] if p]
        if len(parts) != 2 or parts[0] not in (b"user", b"group") or not parts[1].isdigit():
            return None
        return parts[0].decode(), int(parts[1])

    def render_GET(self, request: Request) -> bytes:
        q = self._quotas()
        if q is None:
            return _json(request, http.SERVICE_UNAVAILABLE, {"error": "store not open"})
        return _json(request, http.OK, {"quotas": q.report()})

    def render_PUT(self, request: Request) -> Any:
        return self._change(request, delete=False)

    def render_DELETE(self, request: Request) -> Any:
        return self._change(request, delete=True)

    def _change(self, request: Request, delete: bool) -> Any:
        from claudefs_gateway.core._schema import parse_size
        from claudefs_gateway.fstypes import QuotaLimits

        q = self._quotas()
        if q is None:
            return _json(request, http.SERVICE_UNAVAILABLE, {"error": "store not open"})
        target = self._target(request)
        if target is None:
            return _json(
                request,
                http.NOT_FOUND,
                {"error": "use /admin/quota/user/<uid> or /admin/quota/group/<gid>"},
            )
        limits = None
        if not delete:
            try:
                body = json.loads((request.content.read() if request.content else b"") or b"{}")
                values = {}
                for key in ("bytes_soft", "bytes_hard", "inodes_soft", "inodes_hard"):
                    v = body.get(key, 0)
                    values[key] = parse_size(v) if isinstance(v, str) else int(v)
                unknown = set(body) - set(values)
                if unknown:
                    raise ValueError(f"unknown keys {sorted(unknown)}")
                limits = QuotaLimits(**values)
            except (ValueError, TypeError, AttributeError) as e:
                return _json(request, http.BAD_REQUEST, {"error": f"bad limits: {e}"})
        d = defer.Deferred.fromCoroutine(q.set_limits(target[0], target[1], limits))

        def done(_: object) -> None:
            rows = [r for r in q.report() if (r["kind"], r["id"]) == target]
            request.write(_json(request, http.OK, {"quota": rows[0] if rows else None}))
            request.finish()

        def failed(f: Any) -> None:
            request.write(_json(request, http.BAD_REQUEST, {"error": f.getErrorMessage()}))
            request.finish()

        d.addCallbacks(done, failed)
        return NOT_DONE_YET


class ClientsResource(Resource):
    """
    C{GET /admin/clients}: who is connected over each protocol (client address,
    user, dialect, opens, locks, leases), a summary per protocol, and every
    lock client of the lock table (NLM hosts hold locks apart from any one
    connection). What C{cfs-gateway status} prints.
    """

    isLeaf = True

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        super().__init__()
        self._status = status

    def render_GET(self, request: Request) -> bytes:
        return _json(request, http.OK, self._status())


class _Index(Resource):
    def render_GET(self, request: Request) -> bytes:
        return _json(
            request,
            http.OK,
            {
                "endpoints": [
                    "/health",
                    "/metrics",
                    "/admin/drain",
                    "/admin/cache/invalidate",
                    "/admin/quota",
                    "/admin/clients",
                ]
            },
        )

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self
        return _Denied(404, "no such resource")


def build_site(
    *,
    quotas: Callable[[], Any] = lambda: None,
    clients: Callable[[], dict[str, Any]] = lambda: {
        "connections": [],
        "summary": {},
        "lock_clients": [],
    },
    health: HealthChecks,
    metrics: Metrics,
    drainer: Drainer,
    caches: Caches,
    token: str | None,
    drain_deadline: float,
    clock: Any,
) -> AdminSite:
    """Assemble the admin Site; the caller puts it behind a listener."""
    root = _Index()
    root.putChild(b"health", HealthResource(health))
    root.putChild(b"metrics", MetricsResource(metrics.registry))
    admin = Resource()
    admin.putChild(b"drain", DrainResource(drainer, drain_deadline))
    cache = Resource()
    cache.putChild(b"invalidate", CacheInvalidateResource(caches))
    admin.putChild(b"cache", cache)
    admin.putChild(b"quota", QuotaResource(quotas))
    admin.putChild(b"clients", ClientsResource(clients))
    root.putChild(b"admin", admin)
    return AdminSite(
        root,
        token=token,
        limiter=AuthFailureLimiter(clock),
        requests=RequestMetrics(metrics, "admin"),
    )
