"""
The backend contract (L{tests.backend.test_contract.ContractMixin}) holds for
the remote backend: a meta and a data server in this process on loopback
port 0, reached over real TCP through the pool and the breaker.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import TestCase

from tests.backend.remote.harness import Cluster
from tests.backend.test_contract import ContractMixin


class RemoteContractTests(ContractMixin, TestCase):
    timeout = 30

    async def make_backend(self) -> Any:
        cluster = Cluster(self)
        await cluster.start()
        backend = cluster.backend()
        await backend.open()
        self.addCleanup(backend.close)
        return backend
