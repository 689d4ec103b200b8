"""
The backend contract (L{tests.backend.test_contract.ContractMixin}) holds for
the remote backend: a meta and a data server in this process on loopback
port 0, reached over real TCP through the pool and the breaker.
"""

from __future__ import annotations

import errno
import os
import threading
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from claudefs_gateway import errors
from claudefs_gateway.fstypes import FileType, SetAttrs
from claudefs_gateway.servers.data import CHUNK, ChunkStore, DataHandler
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


class ShortCircuitContractTests(ContractMixin, TestCase):
    """
    The same contract with the short-circuit local data path on: the gateway
    reads and writes the data server's chunk files itself.
    """

    timeout = 30

    async def make_backend(self) -> Any:
        cluster = Cluster(self)
        await cluster.start()
        backend = cluster.backend(short_circuit=ChunkStore(cluster.data_dir, durable=False))
        await backend.open()
        self.addCleanup(backend.close)
        self.assertTrue(backend.short_circuited)
        return backend


class ShortCircuitTests(TestCase):
    """The local path skips the data server, and its bytes are the data server's."""

    timeout = 30

    async def _one_file(self, durable: bool) -> tuple[Cluster, Any, Any]:
        """A cluster, a gateway backend on its local data path, and a file made through it."""
        cluster = Cluster(self)
        await cluster.start()
        b = cluster.backend(short_circuit=ChunkStore(cluster.data_dir, durable=durable))
        await b.open()
        self.addCleanup(b.close)
        a = await b.create((await b.root()).ino, b"f", FileType.REG, 0o644, 0, 0)
        return cluster, b, a

    async def test_bytes_are_shared_and_the_data_server_is_skipped(self) -> None:
        cluster = Cluster(self)
        await cluster.start()
        local = cluster.backend(short_circuit=ChunkStore(cluster.data_dir, durable=True))
        plain = cluster.backend()
        for b in (local, plain):
            await b.open()
            self.addCleanup(b.close)
        root = (await local.root()).ino
        a = await local.create(root, b"f", FileType.REG, 0o644, 0, 0)
        # Count what reaches the data server: the local path sends it nothing.
        calls: list[str] = []
        for name in ("op_READ", "op_WRITE", "op_COMMIT", "op_TRUNCATE", "op_FORGET"):
            self.patch(DataHandler, name, _counting(calls, name, getattr(DataHandler, name)))
        await local.write(a.ino, 0, b"hello", stable=False)
        await local.write(a.ino, 5, memoryview(b" world"), stable=True)
        await local.commit(a.ino)
        self.assertEqual(await local.read(a.ino, 0, 100), (b"hello world", True))
        # A shrink cuts the chunk files here; an extension then reads zeros.
        await local.setattr(a.ino, SetAttrs(size=11))  # nothing past 11 held: nothing to do
        await local.setattr(a.ino, SetAttrs(size=4))
        await local.setattr(a.ino, SetAttrs(size=11))
        self.assertEqual(await local.read(a.ino, 0, 100), (b"hell" + bytes(7), True))
        await local.write(a.ino, 4, b"o world", stable=True)
        self.assertEqual(calls, [])
        # A gateway without the local path reads the same bytes from the data server.
        self.assertEqual(await plain.read(a.ino, 0, 100), (b"hello world", True))
        self.assertEqual(calls, ["op_READ"])
        # And the local path reads what the data server wrote.
        await plain.write(a.ino, 0, b"HELLO", stable=True)
        self.assertEqual(await local.read(a.ino, 0, 5), (b"HELLO", False))
        # The last link gone, the chunks go, here too.
        chunks = cluster.data_dir / "chunks" / f"{a.ino % 256:02x}" / str(a.ino)
        self.assertTrue(chunks.exists())
        await local.unlink(root, b"f")
        while local._background:
            await defer.gatherResults(list(local._background))
        self.assertFalse(chunks.exists())
        self.assertEqual(calls, ["op_READ", "op_WRITE"])

    async def test_small_file_forgotten_without_a_thread(self) -> None:
        """
        The chunks of a removed small file go on the reactor (a thread hop
        per unlink cost more than the unlink); a larger file's on a thread.
        """
        cluster = Cluster(self)
        await cluster.start()
        local = cluster.backend(short_circuit=ChunkStore(cluster.data_dir, durable=False))
        await local.open()
        self.addCleanup(local.close)
        on_thread: list[str] = []
        real = local._local_run

        def spy(fn: Any, *args: Any) -> Any:
            on_thread.append(fn.__name__)
            return real(fn, *args)

        self.patch(local, "_local_run", spy)
        root = (await local.root()).ino
        bucket = cluster.data_dir / "chunks"
        for name, offsets in ((b"small", (0, 4095)), (b"big", (0, CHUNK))):
            a = await local.create(root, name, FileType.REG, 0o644, 0, 0)
            for offset in offsets:
                await local.write(a.ino, offset, b"x", stable=False)
            await local.unlink(root, name)
            while local._background:
                await defer.gatherResults(list(local._background))
            self.assertFalse((bucket / f"{a.ino % 256:02x}" / str(a.ino)).exists())
        self.assertEqual(on_thread, ["forget"])

    async def test_io_errors_are_the_data_servers_errors(self) -> None:
        _, b, a = await self._one_file(durable=False)

        def fail(*args: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(os, "pwrite", fail)
        with self.assertRaises(errors.NoSpace):
            await b.write(a.ino, 0, b"x", stable=False)
        self.assertEqual((await b.getattr(a.ino)).size, 0)

    async def test_commit_syncs_the_chunk_and_its_directory_at_once(self) -> None:
        """
        A small file's COMMIT syncs its chunk file and the directory naming
        it on two threads at once (one journal commit, not two one after the
        other): each sync waits here until the other has started, which
        one-after-the-other syncing never does. A failed sync is the data
        server's error.
        """
        cluster, b, a = await self._one_file(durable=True)
        await b.write(a.ino, 0, b"x" * 4096, stable=False)
        chunks = str(cluster.data_dir / "chunks")
        barrier = threading.Barrier(2, timeout=10)
        synced: list[str] = []

        def meeting(real: Any, what: str) -> Any:
            def sync(fd: int) -> None:
                path = os.readlink(f"/proc/self/fd/{fd}")
                if path.startswith(chunks):
                    synced.append(f"{what} {os.path.relpath(path, chunks)}")
                    barrier.wait()
                real(fd)

            return sync

        real_fsync = os.fsync
        self.patch(os, "fdatasync", meeting(os.fdatasync, "fdatasync"))
        self.patch(os, "fsync", meeting(real_fsync, "fsync"))
        await b.commit(a.ino)
        bucket = f"{a.ino % 256:02x}"
        self.assertEqual(sorted(synced), [f"fdatasync {bucket}/{a.ino}", f"fsync {bucket}"])

        def fail(fd: int) -> None:
            raise OSError(errno.EIO, "Input/output error")

        self.patch(os, "fdatasync", fail)
        self.patch(os, "fsync", real_fsync)
        with self.assertRaises(errors.IO):
            await b.commit(a.ino)

    async def test_not_with_several_data_servers(self) -> None:
        cluster = Cluster(self)
        await cluster.start()
        assert cluster.data is not None and cluster.data.rpc is not None
        dport = cluster.data.rpc.bound_port
        await cluster.start_meta([f"127.0.0.1:{dport}", f"127.0.0.1:{dport}"], name="meta2")
        b = cluster.backend(short_circuit=ChunkStore(cluster.data_dir, durable=False))
        await b.open()
        self.addCleanup(b.close)
        self.assertFalse(b.short_circuited)


def _counting(calls: list[str], name: str, real: Any) -> Any:
    def op(*a: Any) -> Any:
        calls.append(name)
        return real(*a)

    return op
