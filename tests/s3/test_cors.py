"""CORS (issue 16 item 8): rules validated and matched, preflights and actual requests on a live gateway."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase, TestCase

from claudefs_gateway.s3 import cors, xmlio
from claudefs_gateway.s3.errors import S3Error
from tests.s3.harness import Client, s3_port, start_gateway

RULES = (
    b"<CORSConfiguration>"
    b"<CORSRule><ID>pages</ID><AllowedOrigin>https://*.example.com</AllowedOrigin>"
    b"<AllowedMethod>GET</AllowedMethod><AllowedMethod>HEAD</AllowedMethod>"
    b"<AllowedHeader>x-amz-meta-*</AllowedHeader><ExposeHeader>ETag</ExposeHeader>"
    b"<MaxAgeSeconds>600</MaxAgeSeconds></CORSRule>"
    b"<CORSRule><AllowedOrigin>*</AllowedOrigin><AllowedMethod>PUT</AllowedMethod></CORSRule>"
    b"</CORSConfiguration>"
)


class RuleTests(SynchronousTestCase):
    def test_parse_and_render(self) -> None:
        rules = xmlio.parse_cors(RULES)
        self.assertEqual(rules[0]["origins"], ["https://*.example.com"])
        again = xmlio.parse_cors(xmlio.document("CORSConfiguration", cors.render_rules(rules)))
        self.assertEqual(again, rules)

    def test_invalid(self) -> None:
        for body, code in [
            (b"<CORSConfiguration/>", "MalformedXML"),
            (
                b"<CORSConfiguration><CORSRule><AllowedOrigin>*</AllowedOrigin>"
                b"<AllowedMethod>PATCH</AllowedMethod></CORSRule></CORSConfiguration>",
                "InvalidRequest",
            ),
            (
                b"<CORSConfiguration><CORSRule><AllowedOrigin>*a*</AllowedOrigin>"
                b"<AllowedMethod>GET</AllowedMethod></CORSRule></CORSConfiguration>",
                "InvalidRequest",
            ),
            (
                b"<CORSConfiguration><CORSRule><AllowedMethod>GET</AllowedMethod></CORSRule>"
                b"</CORSConfiguration>",
                "MalformedXML",
            ),
        ]:
            e = self.assertRaises(S3Error, xmlio.parse_cors, body)
            self.assertEqual(e.code, code, body)

    def test_match(self) -> None:
        rules = xmlio.parse_cors(RULES)
        r = cors.match(rules, "https://a.example.com", "GET", ["x-amz-meta-color"])
        self.assertEqual(r["id"] if r else None, "pages")
        self.assertIsNone(cors.match(rules, "https://a.example.com", "GET", ["authorization"]))
        self.assertIsNone(cors.match(rules, "http://a.example.com", "GET", []))
        self.assertIsNone(cors.match(rules, "https://a.example.com", "DELETE", []))
        put = cors.match(rules, "https://anything", "PUT", [])
        assert put is not None
        h = cors.response_headers(put, "https://anything", [], False)
        self.assertEqual(h["Access-Control-Allow-Origin"], "*")
        self.assertNotIn("Access-Control-Allow-Credentials", h)


class LiveCorsTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.root = await start_gateway(self)
        self.c = Client(s3_port(self.root))
        self.anon = Client(s3_port(self.root))
        self.addCleanup(self.c.close)
        self.addCleanup(self.anon.close)
        await self.c.request("PUT", "/web")
        await self.c.request("PUT", "/web/page", body=b"<html/>")

    async def test_configuration_round_trip(self) -> None:
        r = await self.c.request("GET", "/web", "cors")
        self.assertEqual((r.status, r.code), (404, "NoSuchCORSConfiguration"))
        r = await self.c.request("PUT", "/web", "cors", body=RULES)
        self.assertEqual(r.status, 200, r.body)
        r = await self.c.request("GET", "/web", "cors")
        self.assertIn(b"<AllowedOrigin>https://*.example.com</AllowedOrigin>", r.body)
        r = await self.c.request("DELETE", "/web", "cors")
        self.assertEqual(r.status, 204)
        r = await self.c.request("GET", "/web", "cors")
        self.assertEqual(r.status, 404)

    async def preflight(self, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
        r = await self.anon.request("OPTIONS", "/web/page", headers=headers, scheme="none")
        return r.status, r.headers

    async def test_preflight(self) -> None:
        ask = {"Origin": "https://a.example.com", "Access-Control-Request-Method": "GET"}
        status, _ = await self.preflight(ask)
        self.assertEqual(status, 403)  # no rules yet
        await self.c.request("PUT", "/web", "cors", body=RULES)
        status, h = await self.preflight(
            {**ask, "Access-Control-Request-Headers": "X-Amz-Meta-Color"}
        )
        self.assertEqual(status, 200)
        self.assertEqual(h["access-control-allow-origin"], "https://a.example.com")
        self.assertEqual(h["access-control-allow-methods"], "GET, HEAD")
        self.assertEqual(h["access-control-allow-headers"], "x-amz-meta-color")
        self.assertEqual(h["access-control-max-age"], "600")
        status, _ = await self.preflight({**ask, "Origin": "https://evil.test"})
        self.assertEqual(status, 403)
        status, _ = await self.preflight({"Origin": "https://a.example.com"})
        self.assertEqual(status, 400)
        status, _ = await self.preflight({"Access-Control-Request-Method": "GET"})
        self.assertEqual(status, 400)

    async def test_actual_requests(self) -> None:
        """Matched requests get the headers; CORS grants nothing the caller could not do."""
        await self.c.request("PUT", "/web", "cors", body=RULES)
        r = await self.c.request("GET", "/web/page", headers={"Origin": "https://a.example.com"})
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("access-control-allow-origin"), "https://a.example.com")
        self.assertEqual(r.header("access-control-expose-headers"), "ETag")
        r = await self.c.request("GET", "/web/page", headers={"Origin": "https://evil.test"})
        self.assertIsNone(r.header("access-control-allow-origin"))
        r = await self.anon.request(
            "GET", "/web/page", headers={"Origin": "https://a.example.com"}, scheme="none"
        )
        self.assertEqual(r.status, 403)
        self.assertEqual(r.header("access-control-allow-origin"), "https://a.example.com")
