"""
Lifecycle expiry on ``backend: remote``. The pass expires an object only if a
fresh lookup under the key's lock finds the inode and mtime it judged from the
bucket's listing (s3/lifecycle.py); over the RPC the listing's attributes and
the lookup's come by different paths (readdir-with-attrs, attribute caches,
write-behind), so a disagreement there would make expiry silently never happen.
Run with the meta server on its embedded store and on PostgreSQL.
"""

from __future__ import annotations

import re
import time
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from tests.backend import postgres
from tests.backend.remote.harness import Cluster
from tests.backend.remote.test_gateway import start_in_process
from tests.s3.harness import Client, s3_port

DAY = 86400


class ExpiryOnRemoteTests(TestCase):
    timeout = 60

    def meta_store(self) -> Any:
        return None

    async def test_old_object_expires(self) -> None:
        """An object past its rule's Days is gone after one pass; one its rule leaves alone stays."""
        await self.expire(writer_is_other_gateway=False)

    async def test_object_written_through_another_gateway_expires(self) -> None:
        """The same when another gateway wrote the objects and the pass's gateway cached them."""
        await self.expire(writer_is_other_gateway=True)

    async def expire(self, writer_is_other_gateway: bool) -> None:
        cluster = Cluster(self, meta_store=self.meta_store())
        await cluster.start()
        root = await start_in_process(self, cluster, ["s3"])
        c = Client(s3_port(root))
        self.addCleanup(c.close)
        w = c
        if writer_is_other_gateway:
            w = Client(s3_port(await start_in_process(self, cluster, ["s3"])))
            self.addCleanup(w.close)
        r = await c.request("PUT", "/lcbkt")
        self.assertEqual(r.status, 200, r.body)
        r = await c.request(
            "PUT",
            "/lcbkt",
            "lifecycle",
            body=b"<LifecycleConfiguration><Rule><ID>tmp</ID><Filter><Prefix>tmp/</Prefix></Filter>"
            b"<Status>Enabled</Status><Expiration><Days>1</Days></Expiration></Rule>"
            b"</LifecycleConfiguration>",
        )
        self.assertEqual(r.status, 200, r.body)
        for key in ("tmp/a", "tmp/b", "keep"):
            r = await w.request("PUT", f"/lcbkt/{key}", body=key.encode())
            self.assertEqual(r.status, 200, r.body)
        # Read back through the gateway first: its caches hold the objects'
        # attributes as a client's traffic leaves them.
        for key in ("tmp/a", "keep"):
            r = await c.request("HEAD", f"/lcbkt/{key}")
            self.assertEqual(r.status, 200, r.body)
        worker = root.getServiceNamed("proto:s3").lifecycle
        clock = Clock()
        clock.advance(time.time() + 2 * DAY)
        worker.clock = clock
        await worker.run()
        r = await c.request("GET", "/lcbkt", {"list-type": "2"})
        self.assertEqual(re.findall(rb"<Key>([^<]*)</Key>", r.body), [b"keep"])
        r = await c.request("GET", "/lcbkt/tmp/a")
        self.assertEqual(r.status, 404, r.body)
        reg = root.core.metrics.registry
        self.assertEqual(
            reg.get_sample_value("gateway_s3_lifecycle_actions_total", {"action": "expire"}), 2
        )


class ExpiryOnRemotePostgresTests(ExpiryOnRemoteTests):
    def meta_store(self) -> Any:
        return postgres.meta_store_config(postgres.new_schema(self))
