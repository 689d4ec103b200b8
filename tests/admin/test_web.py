"""
Tests for L{claudefs_gateway.admin.web}.

Access rules are driven through the real Site over a StringTransport with a
chosen peer address; the endpoints are also fetched over real loopback HTTP
through the whole service tree.
"""

from __future__ import annotations

import json
import os

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from claudefs_gateway import service
from claudefs_gateway.admin.web import MAX_BODY, build_site, is_loopback
from claudefs_gateway.core import config as cfg
from claudefs_gateway.core.caches import Caches
from claudefs_gateway.core.drain import Drainer
from claudefs_gateway.core.health import CheckResult, HealthChecks
from claudefs_gateway.core.metrics import Metrics
from tests.helpers import http_get

TOKEN = "correct-horse-battery-staple"


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            body += rest[:size]
            rest = rest[size + 2 :]
        return status, headers, body
    return status, headers, rest


class SiteHarness:
    def __init__(self, token: str | None = None) -> None:
        self.clock = Clock()
        self.metrics = Metrics()
        self.health = HealthChecks(self.clock)
        self.drainer = Drainer(self.clock, self.metrics)
        self.caches = Caches()
        self.site = build_site(
            health=self.health,
            metrics=self.metrics,
            drainer=self.drainer,
            caches=self.caches,
            token=token,
            drain_deadline=30,
            clock=self.clock,
        )

    def request(
        self,
        method: str,
        path: str,
        peer: object = None,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> tuple[int, dict[str, str], bytes]:
        peer = peer or IPv4Address("TCP", "127.0.0.1", 40000)
        transport = StringTransport(
            peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 8080)
        )
        proto = self.site.buildProtocol(peer)
        proto.makeConnection(transport)
        lines = [f"{method} {path} HTTP/1.1", "Host: gw", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        proto.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        raw = transport.value()
        proto.connectionLost(None)
        return parse_response(raw)


REMOTE = IPv4Address("TCP", "10.9.8.7", 50000)


class AccessTests(SynchronousTestCase):
    def test_loopback_detection(self) -> None:
        self.assertTrue(is_loopback(IPv4Address("TCP", "127.0.0.5", 1)))
        self.assertTrue(is_loopback(IPv6Address("TCP", "::1", 1)))
        self.assertTrue(is_loopback(IPv6Address("TCP", "::ffff:127.0.0.1", 1)))
        self.assertTrue(is_loopback(UNIXAddress(b"/x")))
        self.assertFalse(is_loopback(IPv4Address("TCP", "10.0.0.1", 1)))

    def test_no_token_loopback_only(self) -> None:
        """Without a token, loopback clients are served and others get 403."""
        h = SiteHarness()
        self.assertEqual(h.request("GET", "/health")[0], 200)
        self.assertEqual(h.request("POST", "/admin/cache/invalidate")[0], 200)
        status, _, body = h.request("GET", "/health", peer=REMOTE)
        self.assertEqual(status, 403)
        self.assertIn(b"loopback", body)
        self.assertEqual(h.request("GET", "/metrics", peer=REMOTE)[0], 403)
        self.assertEqual(
            h.metrics.registry.get_sample_value(
                "gateway_rejected_requests_total", {"protocol": "admin", "reason": "forbidden"}
            ),
            2,
        )

    def test_token_rules(self) -> None:
        """With a token: remote clients always need it; /admin/* needs it from anyone."""
        h = SiteHarness(TOKEN)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        self.assertEqual(h.request("GET", "/health")[0], 200)
        status, headers, _ = h.request("GET", "/health", peer=REMOTE)
        self.assertEqual(status, 401)
        self.assertIn("Bearer", headers["www-authenticate"])
        self.assertEqual(h.request("GET", "/health", peer=REMOTE, headers=auth)[0], 200)
        self.assertEqual(h.request("POST", "/admin/cache/invalidate")[0], 401)
        self.assertEqual(h.request("POST", "/admin/cache/invalidate", headers=auth)[0], 200)
        self.assertEqual(
            h.request("GET", "/metrics", peer=REMOTE, headers={"Authorization": "Bearer nope"})[0],
            401,
        )

    def test_failures_counted_and_locked_out(self) -> None:
        """Wrong tokens are counted; after five, the source gets 429 even with the right one."""
        h = SiteHarness(TOKEN)
        for _ in range(5):
            self.assertEqual(
                h.request("GET", "/health", peer=REMOTE, headers={"Authorization": "Bearer x"})[0],
                401,
            )
        status, headers, _ = h.request(
            "GET", "/health", peer=REMOTE, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        self.assertEqual(status, 429)
        self.assertEqual(headers["retry-after"], "60")
        self.assertEqual(
            h.metrics.registry.get_sample_value(
                "gateway_auth_failures_total", {"protocol": "admin"}
            ),
            5,
        )
        other = IPv4Address("TCP", "10.9.8.6", 1)
        self.assertEqual(
            h.request("GET", "/health", peer=other, headers={"Authorization": f"Bearer {TOKEN}"})[
                0
            ],
            200,
        )
        h.clock.advance(61)
        self.assertEqual(
            h.request("GET", "/health", peer=REMOTE, headers={"Authorization": f"Bearer {TOKEN}"})[
                0
            ],
            200,
        )

    def test_token_never_logged(self) -> None:
        from twisted.logger import globalLogPublisher

        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        h = SiteHarness(TOKEN)
        h.request(
            "GET", "/health", peer=REMOTE, headers={"Authorization": "Bearer guess-" + TOKEN[:6]}
        )
        h.request("GET", "/health", peer=REMOTE, headers={"Authorization": f"Bearer {TOKEN}"})
        text = repr(events)
        self.assertNotIn(TOKEN, text)
        self.assertNotIn("guess-", text)


class EndpointTests(SynchronousTestCase):
    def test_health_status_codes(self) -> None:
        h = SiteHarness()
        h.health.register("backend", CheckResult.healthy)
        status, headers, body = h.request("GET", "/health")
        self.assertEqual((status, headers["content-type"]), (200, "application/json"))
        doc = json.loads(body)
        self.assertEqual(set(doc), {"overall", "checks", "timestamp"})
        self.assertEqual(set(doc["checks"][0]), {"name", "status", "message", "duration_ms"})
        h.health.register("nfs", lambda: CheckResult.degraded("slow"))
        self.assertEqual(h.request("GET", "/health")[0], 200)
        h.health.register("s3", lambda: CheckResult.unhealthy("down"))
        status, _, body = h.request("GET", "/health")
        self.assertEqual(status, 503)
        self.assertEqual(json.loads(body)["overall"], "unhealthy")

    def test_metrics_parse_and_count_admin_requests(self) -> None:
        h = SiteHarness()
        h.request("GET", "/health")
        status, headers, body = h.request("GET", "/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/plain"))
        fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
        samples = {(s.name, s.labels.get("op")): s.value for s in fams["gateway_requests"].samples}
        self.assertEqual(samples[("gateway_requests_total", "health")], 1)

    def test_openmetrics_negotiated(self) -> None:
        h = SiteHarness()
        _, headers, body = h.request(
            "GET", "/metrics", headers={"Accept": "application/openmetrics-text"}
        )
        self.assertIn("openmetrics", headers["content-type"])
        self.assertTrue(body.endswith(b"# EOF\n"))

    def test_cache_invalidate(self) -> None:
        h = SiteHarness()
        dropped = []
        h.caches.register("attr", lambda: dropped.append(1) or 7)
        status, _, body = h.request("POST", "/admin/cache/invalidate")
        self.assertEqual((status, json.loads(body)), (200, {"invalidated": {"attr": 7}}))
        self.assertEqual(dropped, [1])
        self.assertEqual(h.request("GET", "/admin/cache/invalidate")[0], 405)

    def test_drain(self) -> None:
        h = SiteHarness()
        act = h.drainer.activity("nfs3")
        act.begin()
        status, _, body = h.request("POST", "/admin/drain")
        self.assertEqual(status, 202)
        self.assertEqual(json.loads(body), {"state": "draining", "in_flight": 1, "connections": 0})
        act.end()
        self.assertEqual(json.loads(h.request("GET", "/admin/drain")[2])["state"], "drained")
        status, _, body = h.request("POST", "/admin/drain?wait=1")
        self.assertEqual((status, json.loads(body)["state"]), (200, "drained"))

    def test_oversized_body_refused(self) -> None:
        h = SiteHarness()
        status, _, _ = h.request("POST", "/admin/cache/invalidate", body=b"x" * (MAX_BODY + 1))
        self.assertEqual(status, 413)

    def test_unknown_path(self) -> None:
        h = SiteHarness()
        self.assertEqual(h.request("GET", "/nope")[0], 404)
        status, _, body = h.request("GET", "/")
        self.assertIn("/health", json.loads(body)["endpoints"])


class LiveTests(TestCase):
    """The admin API of a real service tree, over real loopback HTTP."""

    timeout = 20

    async def test_no_listener_accepts_while_health_says_starting(self) -> None:
        """
        While the store opens, /health answers 503 "starting" (not "unhealthy")
        and no protocol listener accepts connections; once the store is open,
        the listeners accept and /health answers 200 from then on.
        """
        data = os.path.abspath(self.mktemp())
        config = cfg.loads(
            f"backend: {{type: memory, data_dir: {data}}}\n"
            "admin: {bind: '127.0.0.1:0'}\ns3: {bind: '127.0.0.1:0'}\n"
        )
        root = service.build(config, reactor, protocols=["s3"])
        store: defer.Deferred[None] = defer.Deferred()
        root.core.vfs_service.backend.open = lambda: store
        root.privilegedStartService()
        root.startService()
        self.addCleanup(root.stopService)
        listeners = root.listeners()
        s3 = listeners["s3"]
        base = f"http://127.0.0.1:{listeners['admin'].bound_port}"

        self.assertNotIn(s3.port, reactor.getReaders())
        status, _, body = await http_get(base + "/health")
        doc = json.loads(body)
        checks = {c["name"]: (c["status"], c["message"]) for c in doc["checks"]}
        self.assertEqual((status, doc["overall"]), (503, "starting"))
        self.assertEqual(checks["backend"], ("starting", "opening the store"))
        self.assertEqual(checks["s3"], ("starting", "waiting for the store to open"))

        store.callback(None)
        await root.core.vfs_ready()
        self.assertIn(s3.port, reactor.getReaders())
        status, _, body = await http_get(base + "/health")
        self.assertEqual((status, json.loads(body)["overall"]), (200, "healthy"))

    async def test_health_and_metrics_over_http(self) -> None:
        data = os.path.abspath(self.mktemp())
        config = cfg.loads(f"backend: {{data_dir: {data}}}\nadmin: {{bind: '127.0.0.1:0'}}\n")
        root = service.build(config, reactor, protocols=[])
        root.privilegedStartService()
        root.startService()
        self.addCleanup(root.stopService)
        await root.core.vfs_ready()
        port = root.listeners()["admin"].bound_port
        base = f"http://127.0.0.1:{port}"

        status, headers, body = await http_get(base + "/health")
        self.assertEqual(status, 200)
        doc = json.loads(body)
        self.assertEqual(doc["overall"], "healthy")
        self.assertEqual({c["name"] for c in doc["checks"]}, {"backend", "admin", "drain"})

        status, headers, body = await http_get(base + "/metrics")
        self.assertEqual(status, 200)
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        for expected in (
            "gateway_requests",
            "gateway_latency_seconds",
            "gateway_active_connections",
            "gateway_cpu_usage_percent",
            "gateway_draining",
            "gateway_info",
            "process_cpu_seconds",
            "gateway_max_connections",
            "gateway_circuit_breaker_state",
        ):
            self.assertIn(expected, names)

        status, _, body = await http_get(base + "/admin/drain?wait=1", method=b"POST")
        self.assertEqual((status, json.loads(body)["state"]), (200, "drained"))
        status, _, body = await http_get(base + "/health")
        self.assertEqual(status, 503)
        [drain] = [c for c in json.loads(body)["checks"] if c["name"] == "drain"]
        self.assertEqual(
            (drain["status"], drain["message"]), ("unhealthy", "drained: not accepting connections")
        )
