"""C{claudefs-data} as a pNFS flexfiles data server (L{claudefs_gateway.servers.ds_nfs})."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.nfs.errors import NFS3ERR
from claudefs_gateway.nfs.pnfs import handles
from claudefs_gateway.nfs.v3 import codec as c
from claudefs_gateway.rpc import message as msg
from claudefs_gateway.rpc.message import AuthSys
from claudefs_gateway.rpc.server import Peer, RPCServer
from claudefs_gateway.servers.data import ChunkStore, DataHandler
from claudefs_gateway.servers.ds_nfs import DSState, ds_program
from tests.nfs.client import Client, server_sender

UID = GID = 41000


def inline(fn: Any, *args: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(fn, *args)


class DataServerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        self.root.mkdir()
        self.store = ChunkStore(self.root, durable=False)
        self.state = DSState(self.root, inline)
        self.handler = DataHandler(self.store, inline, self.state)
        self.server = RPCServer()
        self.server.add(ds_program(self.state, self.handler))

    def client(self, uid: int = UID, gid: int = GID) -> Client:
        peer = Peer("127.0.0.1", 700, "tcp", 1 << 30, None)
        return Client(server_sender(self.server, peer, AuthSys(0, b"guest", uid, gid, ())))

    def fh(self, ino: int = 9, epoch: int = 0, writable: bool = True, key: bytes = b"") -> bytes:
        return handles.mint(key or self.state.key, handles.DSHandle(ino, epoch, UID, GID, writable))

    def test_write_read_commit_getattr(self) -> None:
        """WRITE lands in the chunk files the gateways read; READ, COMMIT, GETATTR answer."""
        cl = self.client()
        cl.null()
        fh = self.fh()
        w = cl.write(fh, 4 * 1024 * 1024 - 3, b"across a chunk", c.UNSTABLE)
        self.assertEqual((w.status, w.count, w.committed), (0, 14, c.UNSTABLE))
        self.assertEqual(w.verf, self.state.verifier)
        r = cl.read(fh, 4 * 1024 * 1024 - 3, 100)
        self.assertEqual((r.status, r.data, r.eof), (0, b"across a chunk", True))
        # The same bytes through the ClaudeFS RPC path a gateway uses.
        eof, data = self.store.read(9, 4 * 1024 * 1024 - 3, 14)
        self.assertEqual(data, b"across a chunk")
        g = cl.getattr(fh)
        self.assertEqual(g.status, 0)
        self.assertEqual(g.attrs.size, 4 * 1024 * 1024 + 11)
        self.assertEqual((g.attrs.uid, g.attrs.gid), (UID, GID))
        self.assertEqual(self.state.bytes_written, 14)
        self.assertEqual(self.state.bytes_read, 14)

    def test_forged_handle(self) -> None:
        """A handle not minted with this data server's key answers NFS3ERR_BADHANDLE."""
        cl = self.client()
        self.assertEqual(cl.read(self.fh(key=b"k" * 32), 0, 10).status, NFS3ERR.BADHANDLE)
        self.assertEqual(cl.read(b"\0" * 38, 0, 10).status, NFS3ERR.BADHANDLE)

    def test_wrong_credential(self) -> None:
        """A client sending another uid or gid than the layout's gets NFS3ERR_ACCES."""
        self.assertEqual(self.client(uid=0).read(self.fh(), 0, 10).status, NFS3ERR.ACCES)
        self.assertEqual(self.client(gid=1).write(self.fh(), 0, b"x").status, NFS3ERR.ACCES)

    def test_read_only_handle_cannot_write(self) -> None:
        cl = self.client()
        self.assertEqual(cl.write(self.fh(writable=False), 0, b"x").status, NFS3ERR.ACCES)
        self.assertEqual(cl.read(self.fh(writable=False), 0, 1).status, 0)

    def test_fenced_handle_is_stale(self) -> None:
        """After PNFS_FENCE at epoch 2, handles of epochs 0 and 1 are stale; 2 works."""
        cl = self.client()
        self.assertEqual(cl.write(self.fh(epoch=1), 0, b"x").status, 0)
        self.successResultOf(self.handler.op_PNFS_FENCE(None, 9, 2))
        self.assertEqual(cl.write(self.fh(epoch=1), 0, b"y").status, NFS3ERR.STALE)
        self.assertEqual(cl.read(self.fh(epoch=0), 0, 1).status, NFS3ERR.STALE)
        self.assertEqual(cl.write(self.fh(epoch=2), 0, b"z").status, 0)
        # Other inodes are not affected.
        self.assertEqual(cl.write(self.fh(ino=10, epoch=0), 0, b"z").status, 0)

    def test_key_and_fences_survive_restart(self) -> None:
        """The key and the fence epochs are kept in the data directory."""
        self.successResultOf(self.handler.op_PNFS_FENCE(None, 9, 5))
        again = DSState(self.root, inline)
        self.assertEqual(again.key, self.state.key)
        self.assertEqual(again.fences, {9: 5})
        # A lower fence never lowers the epoch.
        self.successResultOf(again.fence(9, 3))
        self.assertEqual(again.fences, {9: 5})

    def test_forget_drops_fence(self) -> None:
        self.successResultOf(self.handler.op_PNFS_FENCE(None, 9, 5))
        self.successResultOf(self.handler.op_FORGET(None, 9))
        self.assertEqual(DSState(self.root, inline).fences, {})

    def test_pnfs_info(self) -> None:
        """PNFS_INFO gives the key and the NFS address once the listener is bound."""
        self.assertEqual(self.handler.op_PNFS_INFO(None), (b"", ""))

        class Host:
            host = "127.0.0.1"
            port = 20490

        class Port:
            def getHost(self) -> Host:
                return Host()

        class Listener:
            port = Port()

        self.state.listener = Listener()
        self.assertEqual(self.handler.op_PNFS_INFO(None), (self.state.key, "127.0.0.1:20490"))

    def test_no_namespace(self) -> None:
        """Names and directories are not a data server's: NFS3ERR_NOTSUPP."""
        r = self.client().lookup(self.fh(), b"x")
        self.assertEqual(r.status, NFS3ERR.NOTSUPP)

    def test_fence_without_pnfs(self) -> None:
        from claudefs_gateway import errors

        plain = DataHandler(self.store, inline)
        self.failureResultOf(plain.op_PNFS_FENCE(None, 1, 1), errors.NotSupp)
        self.assertEqual(plain.op_PNFS_INFO(None), (b"", ""))

    @given(proc=st.integers(0, 25), args=st.binary(max_size=200))
    @settings(max_examples=300)
    def test_garbage_arguments(self, proc: int, args: bytes) -> None:
        """Any procedure with any arguments gets a reply (GARBAGE_ARGS, an error status), never a crash."""
        peer = Peer("127.0.0.1", 700, "tcp", 1 << 30, None)
        call = msg.encode_call(7, c.NFS_PROGRAM, 3, proc, args, AuthSys(0, b"g", UID, GID, ()))
        out = self.server.handle(call, peer)
        if isinstance(out, defer.Deferred):
            out = self.successResultOf(out)
        self.assertIsNotNone(out)
        reply = b"".join(out)
        h = msg.parse_reply(reply)
        self.assertTrue(h.accepted)
