"""
The remote backend behaves exactly like the reference memory backend: the
state machine of C{tests/backend/test_statemachine.py}, with the store under
test a L{RemoteBackend} whose meta server (the embedded store, inline) and
data server (chunk files, inline I/O) it reaches over synchronous in-memory
connections, through the real codec, framing, pool, breaker and failover.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import settings
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.backend.embedded import EmbeddedBackend
from claudefs_gateway.backend.remote.client import NodeSpec, RemoteBackend
from claudefs_gateway.backend.remote.protocol import ServerFactory
from claudefs_gateway.core import config as cfg
from claudefs_gateway.servers.data import ChunkStore, DataHandler
from claudefs_gateway.servers.meta import MetaHandler
from tests.backend.remote.loopback import SyncEndpoint
from tests.backend.test_statemachine import BackendMachine, result
from tests.helpers import run_machine


def inline(fn: Any, *args: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(fn, *args)


class RemoteMachine(BackendMachine):
    def make_real(self) -> Any:
        clock = Clock()
        meta_store = EmbeddedBackend(
            os.path.join(self.path, "meta"), None, inline=True, durable=False, now_ns=self.now
        )
        factories: dict[str, ServerFactory] = {}
        meta = MetaHandler(meta_store, lambda n, v, o=0: factories["meta"].publish(n, v, o))
        factories["meta"] = ServerFactory(meta, "meta", clock)
        store = ChunkStore(os.path.join(self.path, "data"), durable=False)
        factories["data"] = ServerFactory(DataHandler(store, inline), "data", clock)
        result(defer.Deferred.fromCoroutine(meta.open(["data:7002"])))
        endpoints = {
            "meta:7001": SyncEndpoint(factories["meta"]),
            "data:7002": SyncEndpoint(factories["data"]),
        }
        c = cfg.default_config()
        self._meta_store = meta_store
        return RemoteBackend(
            [NodeSpec("meta:7001")],
            None,
            c.connection_pool,
            c.circuit_breaker,
            endpoint_factory=lambda spec: endpoints[spec.address],
            clock=clock,
        )

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            result(self._meta_store.close())


class RemoteStateMachineTests(SynchronousTestCase):
    def test_remote_matches_memory(self) -> None:
        """Random operation sequences give the same results and trees through the RPC."""
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        run_machine(
            lambda: RemoteMachine(base),
            settings(
                max_examples=max(200, settings.default.max_examples),
                stateful_step_count=30,
                deadline=None,
            ),
        )
