"""
The NFS write verifier on ``backend: remote`` follows the servers under the
gateway: a data (or meta) server killed with SIGKILL between an UNSTABLE
WRITE and its COMMIT, and started again, makes the COMMIT's verifier differ
from the WRITE's, so the client resends (RFC 1813 section 3.3.7). Real
processes: claudefs-meta, claudefs-data and a gateway, our NFSv3 client.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from claudefs_gateway.nfs.v3 import codec as c
from claudefs_gateway.rpc.client import connect_tcp
from claudefs_gateway.rpc.message import AuthSys
from tests.backend.remote.test_faults import ServerProcess, pause
from tests.backend.remote.test_gateway import remote_yaml
from tests.helpers import bin_path, kill_on_cleanup, spawn, write_config
from tests.nfs.client import Client, stream_sender

JUKEBOX = 10008


async def until_served(call: Any) -> Any:
    """Send C{call()} until it is not NFS3ERR_JUKEBOX (a server coming back)."""
    for _ in range(200):
        res = await call()
        if res.status != JUKEBOX:
            return res
        await pause(0.05)
    raise AssertionError("still NFS3ERR_JUKEBOX after 10 seconds")


class RestartChangesVerifierTests(TestCase):
    timeout = 120

    async def _setup(self) -> tuple[ServerProcess, ServerProcess, Client, bytes]:
        data = ServerProcess(self, "data")
        await data.start()
        meta = ServerProcess(self, "meta", ["--data-server", data.address])
        await meta.start()
        config = write_config(self, remote_yaml(os.path.abspath(self.mktemp()), meta.address))
        gw = spawn([bin_path("cfs-gateway"), "start", "nfs", "--config", config])
        kill_on_cleanup(self, gw)
        port = await gw.wait_listening("nfs")
        await gw.wait_ready()
        conn = await connect_tcp(reactor, "127.0.0.1", port)
        self.addCleanup(conn.close)
        cl = Client(stream_sender(conn, AuthSys(0, b"t", 0, 0)))
        root = (await cl.mnt(b"/export")).fh
        return data, meta, cl, root

    async def _check(self, server: str) -> None:
        data, meta, cl, root = await self._setup()
        fh = (await cl.create(root, b"f", c.GUARDED)).fh
        # No restart: WRITE and COMMIT agree, and keep agreeing.
        w0 = await cl.write(fh, 0, b"first", c.UNSTABLE)
        self.assertEqual((w0.status, w0.committed), (0, c.UNSTABLE))
        c0 = await cl.commit(fh)
        self.assertEqual((c0.status, c0.verf), (0, w0.verf))

        w = await cl.write(fh, 5, b"-unstable", c.UNSTABLE)
        self.assertEqual((w.status, w.verf), (0, w0.verf))
        victim = data if server == "data" else meta
        await victim.kill()
        await victim.start()
        commit = await until_served(lambda: cl.commit(fh))
        self.assertEqual(commit.status, 0)
        self.assertNotEqual(commit.verf, w.verf, "a restarted server must change the verifier")
        # The client resends what the verifier says may be lost, then commits again.
        again = await until_served(lambda: cl.write(fh, 5, b"-unstable", c.UNSTABLE))
        self.assertEqual((again.status, again.verf), (0, commit.verf))
        done = await cl.commit(fh)
        self.assertEqual((done.status, done.verf), (0, commit.verf))
        r = await cl.read(fh, 0, 100)
        self.assertEqual((r.status, r.data), (0, b"first-unstable"))

    async def test_data_server_restart(self) -> None:
        """kill -9 of the data server between WRITE and COMMIT: COMMIT's verifier differs."""
        await self._check("data")

    async def test_meta_server_restart(self) -> None:
        """kill -9 of the meta server (unstable size changes wait for COMMIT_META) likewise."""
        await self._check("meta")
