"""L{MetaHandler.open}: the namespace's stored layout, and data servers that moved."""

from __future__ import annotations

from twisted.internet import task
from twisted.trial.unittest import TestCase

from claudefs_gateway.backend.memory import MemoryBackend
from claudefs_gateway.servers.meta import MetaHandler


class LayoutTests(TestCase):
    async def reopen(
        self, store: MemoryBackend, servers: list[str], mirrors: int = 1, moved: bool = False
    ) -> tuple[str, ...]:
        handler = MetaHandler(store, lambda n, v, *_: None, clock=task.Clock())
        self.addCleanup(handler.shared.stop)
        await handler.open(servers, mirrors, moved)
        return handler.layout.servers

    async def test_first_open_keeps_what_it_is_given(self) -> None:
        store = MemoryBackend()
        self.assertEqual(await self.reopen(store, ["a", "b"]), ("a", "b"))
        # Later servers given are ignored: files already placed stay where they are.
        self.assertEqual(await self.reopen(MemoryBackend(), ["a"]), ("a",))
        self.assertEqual(await self.reopen(store, ["c", "d"]), ("a", "b"))

    async def test_moved_servers_take_the_new_addresses(self) -> None:
        store = MemoryBackend()
        await self.reopen(store, ["unix:/run/1/data.sock"])
        got = await self.reopen(store, ["unix:/run/2/data.sock"], moved=True)
        self.assertEqual(got, ("unix:/run/2/data.sock",))
        # Kept in the store: a later open without the flag sees the new address.
        self.assertEqual(await self.reopen(store, []), ("unix:/run/2/data.sock",))

    async def test_moved_needs_as_many_servers(self) -> None:
        store = MemoryBackend()
        await self.reopen(store, ["a", "b"])
        self.assertEqual(await self.reopen(store, ["c"], moved=True), ("a", "b"))
