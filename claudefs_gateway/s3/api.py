# -*- test-case-name: tests.s3.test_semantics -*-
"""
The S3 REST API: the request cycle.

L{S3Resource} is the twisted.web resource; it hands each request to
L{S3Api.handle}, a coroutine that authenticates the request, names the
operation (L{claudefs_gateway.s3.routing.route}: C{PutObject},
C{ListObjectsV2}...; also the metrics label), runs it as the signing user, and
answers - with AWS's XML error document on failure and C{x-amz-request-id} on
every response. The operations themselves are in L{claudefs_gateway.s3.ops}
(buckets and listing, objects and copies, multipart uploads). Operations S3
has and this gateway does not serve answer C{501 NotImplemented} naming the
operation (L{UNSUPPORTED}; C{docs/s3.rst} lists them).
"""

from __future__ import annotations

import os
from binascii import b2a_base64
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet import defer
from twisted.web import resource, server

from claudefs_gateway import errors
from claudefs_gateway.core.log import Logger
from claudefs_gateway.fstypes import Credentials
from claudefs_gateway.s3._web import canonical_name, set_header_lists
from claudefs_gateway.s3.auth import Authenticator, RequestView
from claudefs_gateway.s3.body import ClientGone
from claudefs_gateway.s3.call import Call, Limits, failure
from claudefs_gateway.s3.errors import S3Error, from_failure
from claudefs_gateway.s3.headers import refuse
from claudefs_gateway.s3.keys import KeyLocks
from claudefs_gateway.s3.multipart import Uploads
from claudefs_gateway.s3.ops.access import AccessOps
from claudefs_gateway.s3.ops.buckets import BucketOps
from claudefs_gateway.s3.ops.multipart import MultipartOps
from claudefs_gateway.s3.ops.objectlock import LockOps
from claudefs_gateway.s3.ops.post import PostOps
from claudefs_gateway.s3.ops.tagging import TaggingOps
from claudefs_gateway.s3.ops.versioning import VersioningOps
from claudefs_gateway.s3.routing import (
    UNSUPPORTED,
    UNSUPPORTED_OPS,
    UNSUPPORTED_OTHER,
    Route,
    route,
)
from claudefs_gateway.s3.signing import parse_query
from claudefs_gateway.s3.tree import Tree

__all__ = [
    "S3Api",
    "S3Resource",
    "UNSUPPORTED",
    "UNSUPPORTED_OTHER",
    "Route",
    "route",
    "Limits",
]


#: Header names as twisted.web gives them -> as S3Api.parse keys them (a client
#: sends the same dozen names request after request); bounded, as a client
#: may send any names.
_HEADER_NAMES: dict[bytes, str] = {}
_HEADER_NAMES_MAX = 1024

#: Every response's own headers, their names as twisted.web canonicalises them.
_REQUEST_ID = canonical_name(b"x-amz-request-id")
_ID_2 = canonical_name(b"x-amz-id-2")
_SERVER = canonical_name(b"Server")


def _note_user(request: Any, user: Any) -> None:
    """Tell the connection who signed its latest request (C{cfs-gateway status})."""
    channel = getattr(request, "_chan", None) or getattr(request, "channel", None)
    if channel is not None:
        channel.user, channel.uid = user.name, user.uid


class S3Api(BucketOps, VersioningOps, TaggingOps, LockOps, PostOps, AccessOps, MultipartOps):
    """
    Every S3 operation, over a L{Tree} and L{Uploads}: the request cycle here,
    the operations in L{claudefs_gateway.s3.ops}.

    @param ready: returns a Deferred firing with (tree, uploads) once the store is open.
    """

    _log = Logger()

    def __init__(
        self,
        ready: Callable[[], defer.Deferred[tuple[Tree, Uploads]]],
        authenticator: Authenticator,
        region: str,
        domain: str | None,
        clock: Any,
        limits: Limits,
        metrics: Any = None,
        activity: Any = None,
    ) -> None:
        self._ready = ready
        self.auth = authenticator
        self.region = region
        self.domain = domain.lower().rstrip(".") if domain else None
        self.clock = clock
        self.limits = limits
        self.metrics = metrics
        self.activity = activity
        self.tree: Tree | None = None
        self.uploads: Uploads | None = None
        self.key_locks = KeyLocks()
        # The request-rate hook, admit(address, uid): returns or raises Throttled
        # (answered SlowDown, 503). Set by the S3 service.
        self.admit: Callable[[str, int], None] | None = None
        #: gateway_s3_mapping_conflicts_total, when the service has metrics.
        self.conflicts: Any = None

    # -- the request cycle ---------------------------------------------------------------

    def parse(self, request: Any) -> Call:
        headers: dict[str, list[str]] = {}
        names = _HEADER_NAMES
        for name, values in request.requestHeaders.getAllRawHeaders():
            text = names.get(name)
            if text is None:
                text = name.decode("latin-1").lower()
                if len(names) < _HEADER_NAMES_MAX:
                    names[name] = text
            if len(values) == 1:
                headers[text] = [values[0].decode("latin-1")]
            else:
                headers[text] = [v.decode("latin-1") for v in values]
        raw_path = request.path
        raw_query = getattr(request, "raw_query", b"")
        query: dict[str, str] = {}
        for n, v in parse_query(raw_query):
            query.setdefault(
                n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape")
            )
        peer = request.getClientAddress()
        # The request ids' randomness in one system call.
        rnd = os.urandom(32)
        call = Call(
            request=request,
            request_id=rnd[:8].hex().upper(),
            method=request.method.decode("latin-1").upper(),
            raw_path=raw_path,
            raw_query=raw_query,
            query=query,
            headers=headers,
            source=getattr(peer, "host", "") or "",
            request_id_2=rnd[8:],
        )
        return call

    def _address(self, call: Call) -> None:
        """Bucket and key from the Host header (virtual-hosted style) or the path."""
        path = unquote_to_bytes(call.raw_path)
        try:
            text = path.decode("utf-8")
        except UnicodeDecodeError:
            raise S3Error("InvalidArgument", "The request path is not valid UTF-8") from None
        host = (call.header("host") or "").lower()
        if host.startswith("["):
            hostname = host.split("]")[0] + "]"
        else:
            hostname = host.rsplit(":", 1)[0] if ":" in host else host
        if self.domain and hostname.endswith("." + self.domain):
            call.vhost_bucket = hostname[: -len(self.domain) - 1]
            call.bucket = call.vhost_bucket
            rest = text[1:] if text.startswith("/") else text
            call.key = rest or None
            return
        if not text.startswith("/"):
            raise S3Error("InvalidArgument", "The request path must start with /")
        rest = text[1:]
        if not rest:
            return
        bucket, sep, key = rest.partition("/")
        call.bucket = bucket
        call.key = key if sep and key else None

    async def handle(self, request: Any) -> None:
        """Serve one request, start to finish (never raises)."""
        start = self.clock.seconds()
        status_code: str | None = None
        call: Call | None = None
        if self.activity is not None:
            self.activity.begin()
        try:
            call = self.parse(request)
            # Every response's own headers, in one update.
            set_header_lists(
                request.responseHeaders,
                {
                    _REQUEST_ID: [call.request_id.encode()],
                    _ID_2: [b2a_base64(call.request_id_2, newline=False)],
                    _SERVER: [b"ClaudeFS"],
                },
            )
            if self.activity is not None and self.activity.draining:
                request.setHeader(b"Connection", b"close")
                ch = getattr(request, "_chan", None) or getattr(request, "channel", None)
                if ch is not None:
                    ch.persistent = False
            try:
                await self._serve(call)
            except S3Error as e:
                status_code = e.code
                self._mapping_refused(call, e)
                self._send_error(call, e)
            except ClientGone:
                status_code = "ClientGone"
                self._log.debug("s3 client went away during {op}", op=call.op)
            except defer.CancelledError:
                status_code = "Cancelled"
            except Exception:
                err = from_failure(failure())
                status_code = err.code
                self._send_error(call, err)
        except Exception:
            self._log.failure("unexpected failure in the S3 request cycle")
            try:
                if not request.finished and not request.gone:
                    request.setResponseCode(500)
                    request.finish()
            except Exception:
                pass
        finally:
            if self.activity is not None:
                self.activity.end()
            if self.metrics is not None and call is not None:
                self.metrics.observe(call.op, self.clock.seconds() - start, status_code)
            if call is not None:
                self._log.debug(
                    "s3 {op} {status} {source} {request_id}",
                    op=call.op,
                    status=status_code or "ok",
                    source=call.source,
                    request_id=call.request_id,
                )

    def _mapping_refused(self, call: Call, e: S3Error) -> None:
        """Count and log a key the file tree cannot hold (docs/s3.rst, the mapping's limits)."""
        kind = e.mapping or ("prefix" if e.code == "KeyConflict" else None)
        if kind is None:
            return
        if self.conflicts is not None:
            self.conflicts.labels(kind).inc()
        self._log.info(
            "s3 {op} refused: the key does not fit the file tree ({kind})",
            op=call.op,
            kind=kind,
        )

    async def _serve(self, call: Call) -> None:
        self._address(call)
        r = route(call.method, call.bucket, call.key, call.query, call.headers)
        call.op = r.op
        view = RequestView(
            call.method, call.raw_path, call.raw_query, call.headers, call.source, call.vhost_bucket
        )
        tree, uploads = await self._ready()
        self.tree, self.uploads = tree, uploads
        if r.op == "PreflightRequest":
            # Browsers do not sign preflights: answered from the CORS rules alone.
            await self.op_PreflightRequest(call)
            return
        await self._cors_headers(call)
        call.auth = self.auth.authenticate(view)
        call.user = call.auth.user
        if call.user is None:
            # Anonymous: the S3 export's anonymous identity, let through only
            # where a policy or ACL grants everyone (ops/access.py).
            rules = tree.export.rules
            cred = Credentials(rules.anonuid, rules.anongid)
        else:
            cred = call.user.credentials
            _note_user(call.request, call.user)
        if self.admit is not None:
            self.admit(call.source, cred.uid)
        try:
            call.who = tree.vfs.caller(tree.export, call.source, cred, "s3")
        except errors.Access:
            raise S3Error("AccessDenied") from None
        if r.op == "MethodNotAllowed":
            raise S3Error(
                "MethodNotAllowed",
                "The specified method is not allowed against this resource.",
                Method=call.method,
                ResourceType="OBJECT" if call.key else "BUCKET",
            )
        if r.op in UNSUPPORTED_OPS:
            raise S3Error(
                "NotImplemented",
                f"{r.op} is not implemented by this gateway (see docs/s3.rst)",
                Operation=r.op,
            )
        await self._expected_owner(call, "x-amz-expected-bucket-owner", call.bucket)
        if r.op == "PostObject":
            # Authenticated, refused and authorized from its form's fields (ops/post.py).
            await self.op_PostObject(call)
            return
        refuse(r.op, call.headers)
        await self._authorize(call)
        handler = getattr(self, "op_" + r.op)
        await handler(call)


class S3Resource(resource.Resource):
    """The one twisted.web resource of the S3 front end: every path is an S3 request."""

    isLeaf = True

    def __init__(self, api: S3Api) -> None:
        super().__init__()
        self.api = api

    def render(self, request: Any) -> Any:
        d = defer.Deferred.fromCoroutine(self.api.handle(request))
        finished = request.notifyFinish()
        # The client went away: stop the work (STYLE.md §5), without logging it as an error.
        finished.addErrback(lambda f: d.cancel())
        d.addErrback(lambda f: f.trap(defer.CancelledError))
        return server.NOT_DONE_YET
