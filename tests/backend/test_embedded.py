"""
The embedded store (L{claudefs_gateway.backend.embedded}): the contract suite,
group commit, durability hooks, persistence across reopen, recovery.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from claudefs_gateway.backend.embedded import EmbeddedBackend
from tests.backend.test_contract import ContractMixin


class EmbeddedContractTests(ContractMixin, TestCase):
    """The embedded store meets the contract, on its writer thread as in production."""

    async def make_backend(self) -> Any:
        b = EmbeddedBackend(Path(self.mktemp()), reactor)
        await b.open()
        self.addCleanup(b.close)
        return b
