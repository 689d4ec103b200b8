"""
What S3 means on the shared tree: owners and permissions, quotas, the same
bytes and ETags across protocols, unsupported operations, drain, TLS reload.
Live gateway, in-process clients.
"""

from __future__ import annotations

import hashlib
import os
import signal

from twisted.internet import defer, reactor
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody

from claudefs_gateway.fstypes import Credentials, SetAttrs
from claudefs_gateway.s3.api import UNSUPPORTED
from tests.s3.harness import BOB, Client, s3_port, start_gateway
from tests.s3.tls import make_cert


class SharedTreeTests(TestCase):
    timeout = 30

    async def setUp(self) -> None:
        self.root = await start_gateway(self, extra="quota: {user_defaults: {bytes_hard: 4MiB}}\n")
        self.port = s3_port(self.root)
        self.s3 = self.root.getServiceNamed("proto:s3")
        self.vfs = self.s3.tree.vfs
        self.alice = Client(self.port)
        self.bob = Client(self.port, BOB)
        self.addCleanup(self.alice.close)
        self.addCleanup(self.bob.close)

    def nfs(self, uid: int) -> object:
        """A caller as NFS would make it, through the /s3/shared export."""
        export = self.vfs.exports.by_path("/s3/shared")
        return self.vfs.caller(export, "127.0.0.1", Credentials(uid, uid), "nfs")

    async def open_shared(self) -> None:
        """The admin opens the shared export (root over NFS: chmod 1777)."""
        root = self.nfs(0)
        await self.vfs.setattr(root, root.export.root_ino, SetAttrs(mode=0o1777))

    async def test_object_read_through_the_vfs(self) -> None:
        """An object PUT over S3 is the same bytes, owned by the signing user, over NFS."""
        await self.open_shared()
        data = os.urandom(200_000)
        r = await self.alice.request("PUT", "/shared/dir/obj.bin", body=data)
        self.assertEqual(r.status, 200, r.body)
        caller = self.nfs(1000)
        a = await self.vfs.resolve(caller, b"dir/obj.bin")
        self.assertEqual(
            (a.uid, a.gid, a.size, a.mode), (1000, 1000, len(data), 0o600)
        )  # private, S3's default ACL
        got = b""
        while len(got) < a.size:
            got += (await self.vfs.read(caller, a.ino, len(got), 65536)).data
        self.assertEqual(got, data)
        d = await self.vfs.resolve(caller, b"dir")
        self.assertEqual((d.uid, d.is_dir), (1000, True))

    async def test_file_from_the_vfs_lists_with_size_and_etag(self) -> None:
        """A file written over NFS lists with its size and the MD5 ETag, recomputed when it changes."""
        await self.open_shared()
        caller = self.nfs(1000)
        export_root = caller.export.root_ino
        sub = await self.vfs.mkdir(caller, export_root, b"nfs", 0o755)
        f = await self.vfs.create(caller, sub.ino, b"made-over-nfs.txt", 0o644)
        await self.vfs.write(caller, f.ino, 0, b"written by NFS\n", True)
        r = await self.alice.request("GET", "/shared", {"list-type": "2", "prefix": "nfs/"})
        self.assertIn(b"<Key>nfs/made-over-nfs.txt</Key>", r.body)
        self.assertIn(b"<Size>15</Size>", r.body)
        self.assertIn(hashlib.md5(b"written by NFS\n").hexdigest().encode(), r.body)
        await self.vfs.write(caller, f.ino, 15, b"and more\n", True)
        r = await self.alice.request("HEAD", "/shared/nfs/made-over-nfs.txt")
        both = hashlib.md5(b"written by NFS\nand more\n").hexdigest()
        self.assertEqual(r.header("etag"), f'"{both}"')
        r = await self.alice.request("GET", "/shared/nfs/made-over-nfs.txt")
        self.assertEqual(r.body, b"written by NFS\nand more\n")
        # An empty directory made over NFS shows as "name/"; with a delimiter as a prefix.
        await self.vfs.mkdir(caller, export_root, b"empty", 0o755)
        r = await self.alice.request("GET", "/shared", {"list-type": "2"})
        self.assertIn(b"<Key>empty/</Key>", r.body)

    async def test_directories_made_elsewhere_are_kept(self) -> None:
        """Deleting the last object removes directories the gateway made, never one made over NFS."""
        await self.open_shared()
        caller = self.nfs(1000)
        await self.vfs.mkdir(caller, caller.export.root_ino, b"mine", 0o755)
        for key in ("mine/x", "auto/deep/y"):
            self.assertEqual(
                (await self.alice.request("PUT", f"/shared/{key}", body=b"1")).status, 200
            )
        for key in ("mine/x", "auto/deep/y"):
            self.assertEqual((await self.alice.request("DELETE", f"/shared/{key}")).status, 204)
        names = [n for n, _ in await self.s3.tree.read_dir(caller, caller.export.root_ino)]
        self.assertIn(b"mine", names)
        self.assertNotIn(b"auto", names)

    async def test_permissions_are_the_files(self) -> None:
        """Buckets are private directories: another user can neither list nor read them."""
        self.assertEqual((await self.alice.request("PUT", "/alices")).status, 200)
        self.assertEqual((await self.alice.request("PUT", "/alices/secret", body=b"s")).status, 200)
        r = await self.bob.request("GET", "/alices/secret")
        self.assertEqual((r.status, r.code), (403, "AccessDenied"))
        r = await self.bob.request("PUT", "/alices/mine", body=b"x")
        self.assertEqual((r.status, r.code), (403, "AccessDenied"))
        r = await self.bob.request("GET", "/alices", {"list-type": "2"})
        self.assertEqual((r.status, r.code), (403, "AccessDenied"))
        r = await self.bob.request("GET", "/")
        self.assertNotIn(b"<Name>alices</Name>", r.body)
        r = await self.alice.request("GET", "/")
        self.assertIn(b"<Name>alices</Name>", r.body)
        r = await self.bob.request("PUT", "/alices")
        self.assertEqual((r.status, r.code), (409, "BucketAlreadyExists"))
        r = await self.bob.request("DELETE", "/alices")
        self.assertEqual(r.status, 403)

    async def test_quota(self) -> None:
        """Over the user's hard quota: 403 QuotaExceeded, nothing written."""
        await self.alice.request("PUT", "/quota")
        r = await self.alice.request("PUT", "/quota/big", body=b"x" * (5 * 1024 * 1024))
        self.assertEqual((r.status, r.code), (403, "QuotaExceeded"))
        r = await self.alice.request("HEAD", "/quota/big")
        self.assertEqual(r.status, 404)
        self.assertEqual(self.vfs.quotas.usage("user", 1000).bytes, 0)

    async def test_unsupported_operations_answer_501(self) -> None:
        """Every operation we do not serve answers 501 NotImplemented naming it."""
        self.assertEqual((await self.alice.request("PUT", "/unsup")).status, 200)
        self.assertEqual((await self.alice.request("PUT", "/unsup/k", body=b"k")).status, 200)
        for level, subs in UNSUPPORTED.items():
            path = "/unsup" if level == "bucket" else "/unsup/k"
            for sub, ops in subs.items():
                for method, op in ops.items():
                    r = await self.alice.request(
                        method, path, sub, body=b"" if method == "GET" else b"<x/>"
                    )
                    self.assertEqual((r.status, r.code), (501, "NotImplemented"), op)
                    self.assertIn(op.encode(), r.body)
        # POST object is served: a body that is not a form is refused as AWS does.
        r = await self.alice.request("POST", "/unsup", body=b"form")
        self.assertEqual((r.status, r.code), (412, "PreconditionFailed"))

    async def test_drain_asks_clients_to_go(self) -> None:
        """While draining, requests are served and the client is told to close."""
        from tests.s3.harness import raw_connect, raw_request

        self.s3.activity.draining = True
        url, headers = self.alice.sign("GET", self.alice.url("/"))
        conn = await raw_connect(self.port)
        conn.transport.write(raw_request("GET", url, headers))
        await conn.closed
        status, hdrs, _ = conn.responses()[0]
        self.assertEqual((status, hdrs.get("connection")), (200, "close"))

    async def test_metrics(self) -> None:
        r = await self.alice.request("PUT", "/metrics-bkt")
        self.assertEqual(r.status, 200)
        r = await self.alice.request("POST", "/metrics-bkt/x", "uploads")
        self.assertEqual(r.status, 200, r.body)
        reg = self.root.core.metrics.registry
        self.assertEqual(reg.get_sample_value("gateway_s3_multipart_active"), 1)
        self.assertEqual(
            reg.get_sample_value(
                "gateway_requests_total", {"protocol": "s3", "op": "CreateMultipartUpload"}
            ),
            1,
        )
        bad = Client(self.port, (BOB[0], "not the secret"))
        self.addCleanup(bad.close)
        await bad.request("GET", "/")
        self.assertEqual(reg.get_sample_value("gateway_auth_failures_total", {"protocol": "s3"}), 1)


class TlsReloadTests(TestCase):
    timeout = 30

    async def test_sighup_reloads_the_certificate(self) -> None:
        certs = os.path.abspath(self.mktemp())
        cert, key = make_cert(certs, "a")
        root = await start_gateway(self, s3_extra=f'  tls_cert: "{cert}"\n  tls_key: "{key}"\n')
        svc = root.getServiceNamed("proto:s3")
        port = s3_port(root)
        self.assertEqual(await _get_status(port, cert), 403)  # anonymous, but TLS worked
        # New pair in the same files; SIGHUP.
        new_cert, new_key = make_cert(certs, "b")
        os.replace(new_cert, cert)
        os.replace(new_key, key)
        try:
            await _get_status(port, cert)
            raise AssertionError("the old certificate was trusted as the new one")
        except AssertionError:
            raise
        except Exception:
            pass  # still serving the old certificate
        reloaded: defer.Deferred[bool] = defer.Deferred()
        original = svc.reload_tls

        def spy() -> bool:
            ok = original()
            reloaded.callback(ok)
            return ok

        svc.reload_tls = spy
        os.kill(os.getpid(), signal.SIGHUP)
        self.assertTrue(await reloaded)
        self.assertEqual(await _get_status(port, cert), 403)
        # A broken pair is refused and the good one kept.
        with open(cert, "w") as f:
            f.write("not a certificate")
        self.assertFalse(svc.tls.reload())
        self.flushLoggedErrors()


async def _get_status(port: int, ca: str) -> int:
    with open(ca, "rb") as f:
        trust = Certificate.loadPEM(f.read())
    options = optionsForClientTLS("127.0.0.1", trustRoot=trust)

    from twisted.web.iweb import IPolicyForHTTPS

    from zope.interface import implementer

    @implementer(IPolicyForHTTPS)
    class Policy:
        def creatorForNetloc(self, host: bytes, port: int) -> object:
            return options

    agent = Agent(reactor, contextFactory=Policy())
    response = await agent.request(b"GET", f"https://127.0.0.1:{port}/".encode())
    await readBody(response)
    return int(response.code)


def _responses(data: bytes) -> list:
    from tests.s3.harness import RawConnection

    c = RawConnection()
    c.received = data
    return c.responses()


class VirtualHostTests(TestCase):
    timeout = 30

    async def test_bucket_in_the_host_name(self) -> None:
        """With s3.domain set, bkt.s3.test/key addresses bucket bkt; path style still works."""
        from tests.s3.harness import raw_connect, raw_request

        root = await start_gateway(self, s3_extra="  domain: s3.test\n")
        port = s3_port(root)
        c = Client(port)
        self.addCleanup(c.close)
        self.assertEqual((await c.request("PUT", "/vhosted")).status, 200)
        body = b"virtual host"
        url, headers = c.sign("PUT", f"http://vhosted.s3.test:{port}/dir/k", {}, body)
        headers["Content-Length"] = str(len(body))
        url2, headers2 = c.sign("GET", f"http://vhosted.s3.test:{port}/?list-type=2", {}, b"")
        conn = await raw_connect(port)
        conn.transport.write(
            raw_request("PUT", url, headers, body) + raw_request("GET", url2, headers2)
        )
        await conn.wait(lambda b: len(_responses(b)) >= 2)
        conn.transport.loseConnection()
        rs = conn.responses()
        self.assertEqual((rs[0][0], rs[1][0]), (200, 200))
        self.assertIn(b"<Name>vhosted</Name>", rs[1][2])
        self.assertIn(b"<Key>dir/k</Key>", rs[1][2])
        r = await c.request("GET", "/vhosted/dir/k")
        self.assertEqual(r.body, body)
