"""
The gateway's NFS front end against clients nobody here wrote, in real
subprocesses: libnfs-utils (nfs-cp, nfs-ls, nfs-cat), libnfs itself through
ctypes for the operations those commands lack (L{tests.nfs.libnfs_ops}),
and rpcinfo/showmount against the embedded portmapper on port 111 and
against a system rpcbind.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import sys
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from claudefs_gateway.nfs.v3 import codec as c
from claudefs_gateway.rpc.client import connect_tcp
from claudefs_gateway.rpc.message import AuthSys
from tests.helpers import GatewayProcess, bin_path, kill_on_cleanup, loopback_config, spawn
from tests.nfs.client import Client, stream_sender

EXPORTS = """
exports:
  - {path: /export, root_squash: false}
"""


async def run(argv: list[str]) -> tuple[int, list[str], str]:
    """Run a command to completion; (status, stdout lines, stderr)."""
    proc = spawn(argv)
    status = await proc.ended
    return status, proc.text, proc.stderr.decode("utf-8", "replace")


class Gateway:
    """A gateway subprocess serving NFS on loopback."""

    def __init__(self, proc: GatewayProcess, nfs: int, mount: int) -> None:
        self.proc = proc
        self.nfs = nfs
        self.mount = mount
        self.config = ""

    def url(self, path: str = "") -> str:
        return f"nfs://127.0.0.1/export{path}?version=3&nfsport={self.nfs}&mountport={self.mount}"


class RealClientTestCase(TestCase):
    timeout = 120

    backend = "embedded"

    async def gateway(self, nfs: str = "", backend: str | None = None) -> Gateway:
        """
        A gateway on loopback; C{nfs} holds extra lines (two-space indented)
        for the C{nfs} section, which may override C{portmap_bind}.
        """
        config = loopback_config(self, EXPORTS, backend=backend or self.backend)
        with open(config) as f:
            text = f.read()
        if "portmap_bind" in nfs:
            text = text.replace('  portmap_bind: "127.0.0.1:0"\n', "")
        text = text.replace('  mount_bind: "127.0.0.1:0"\n', '  mount_bind: "127.0.0.1:0"\n' + nfs)
        with open(config, "w") as f:
            f.write(text)
        return await self.start(config)

    async def start(self, config: str) -> Gateway:
        """A gateway subprocess for an existing configuration file."""
        proc = spawn([bin_path("cfs-gateway"), "start", "nfs", "--config", config])
        kill_on_cleanup(self, proc)
        nfs = await proc.wait_listening("nfs")
        mount = await proc.wait_listening("mount")
        gw = Gateway(proc, nfs, mount)
        gw.config = config
        return gw

    async def libnfs(self, gw: Gateway, *ops: str) -> list[dict[str, Any]]:
        status, out, err = await run([sys.executable, "-m", "tests.nfs.libnfs_ops", gw.url(), *ops])
        self.assertEqual(status, 0, err + "\n".join(out))
        return [json.loads(line) for line in out if line.startswith("{")]

    def local(self, name: str, data: bytes | None = None) -> str:
        path = os.path.join(os.path.abspath(self.mktemp()) + "-" + name)
        if data is not None:
            with open(path, "wb") as f:
                f.write(data)
        return path


class LibnfsTests(RealClientTestCase):
    async def test_copy_in_and_out_byte_identical(self) -> None:
        """A 6 MiB file copied in with nfs-cp and out again is byte-identical; nfs-cat reads it."""
        gw = await self.gateway()
        data = os.urandom(6 * 1024 * 1024 + 123)
        src = self.local("src", data)
        status, out, err = await run([bin_path("nfs-cp"), src, gw.url("/big.bin")])
        self.assertEqual(status, 0, err)
        dst = self.local("dst")
        status, out, err = await run([bin_path("nfs-cp"), gw.url("/big.bin"), dst])
        self.assertEqual(status, 0, err)
        with open(dst, "rb") as f:
            self.assertEqual(f.read(), data)
        small = self.local("small", b"hello over NFS\n")
        self.assertEqual((await run([bin_path("nfs-cp"), small, gw.url("/small.txt")]))[0], 0)
        status, out, err = await run([bin_path("nfs-cat"), gw.url("/small.txt")])
        self.assertEqual((status, out), (0, ["hello over NFS"]))
        # nfs-cp creates exclusively: copying onto an existing name fails.
        status, _, _ = await run([bin_path("nfs-cp"), small, gw.url("/small.txt")])
        self.assertNotEqual(status, 0)

    async def test_listing_of_2000_entries(self) -> None:
        """nfs-ls lists a directory of 2,000 files (created over TCP by the in-tree client)."""
        gw = await self.gateway()
        conn = await connect_tcp(reactor, "127.0.0.1", gw.mount)
        self.addCleanup(conn.close)
        cl = Client(stream_sender(conn, AuthSys(0, b"t", 0, 0)))
        root = (await cl.mnt(b"/export")).fh
        d = await cl.mkdir(root, b"many")
        self.assertEqual(d.status, 0)
        names = [f"file-{i:05d}" for i in range(2000)]
        for i in range(0, len(names), 200):
            got = await defer.gatherResults(
                [cl.create(d.fh, n.encode(), c.GUARDED) for n in names[i : i + 200]]
            )
            self.assertEqual({r.status for r in got}, {0})
        status, out, err = await run([bin_path("nfs-ls"), gw.url("/many")])
        self.assertEqual(status, 0, err)
        listed = sorted(line.split()[-1] for line in out if line.strip())
        self.assertEqual(listed, names)

    async def test_namespace_operations(self) -> None:
        """mkdir, rmdir, rename, symlink/readlink, link and unlink through libnfs."""
        gw = await self.gateway()
        got = await self.libnfs(
            gw,
            *("mkdir", "/d", "mkdir", "/d/sub", "creat", "/d/f"),
            *("symlink", "../f", "/d/ln", "readlink", "/d/ln"),
            *("link", "/d/f", "/d/hard", "stat", "/d/hard"),
            *("rename", "/d/f", "/d/g", "listdir", "/d"),
            *("rmdir", "/d"),
            *("unlink", "/d/g", "unlink", "/d/hard", "unlink", "/d/ln", "rmdir", "/d/sub"),
            *("rmdir", "/d", "stat", "/d"),
        )
        by = [(g["op"], g["ret"]) for g in got]
        self.assertEqual(
            by,
            [
                ("mkdir", 0),
                ("mkdir", 0),
                ("creat", 0),
                ("symlink", 0),
                ("readlink", 0),
                ("link", 0),
                ("stat", 0),
                ("rename", 0),
                ("listdir", 0),
                ("rmdir", -39),  # NFS3ERR_NOTEMPTY reaches libnfs as -ENOTEMPTY
                ("unlink", 0),
                ("unlink", 0),
                ("unlink", 0),
                ("rmdir", 0),
                ("rmdir", 0),
                ("stat", -2),
            ],
        )
        self.assertEqual(got[4]["result"], "../f")
        self.assertEqual(got[6]["result"]["nlink"], 2)
        self.assertEqual(sorted(got[8]["result"]), [".", "..", "g", "hard", "ln", "sub"])
        status, out, err = await run([bin_path("nfs-ls"), gw.url()])
        self.assertEqual((status, out), (0, []))


class NLMTests(RealClientTestCase):
    """NLM v4 from libnfs's own NLM client (L{tests.nfs.libnfs_nlm})."""

    async def nlm(self, gw: Gateway, caller: str, *ops: str) -> list[dict[str, Any]]:
        status, out, err = await run(
            [sys.executable, "-m", "tests.nfs.libnfs_nlm", gw.url(), "/locked", caller, *ops]
        )
        self.assertEqual(status, 0, err + "\n".join(out))
        return [json.loads(line) for line in out if line.startswith("{")]

    async def test_locks_between_two_clients(self) -> None:
        """A's lock refuses B's on the same bytes until A unlocks; TEST names A's lock."""
        gw = await self.gateway()
        got = await self.libnfs(gw, "creat", "/locked")
        self.assertEqual(got[0]["ret"], 0)
        a = await self.nlm(gw, "host-a", "lock", "100", "0", "10", "1", "0")
        self.assertEqual(a[0]["status"], 0)
        b = await self.nlm(
            gw,
            "host-b",
            *("test", "200", "5", "1", "1"),
            *("lock", "200", "5", "1", "1", "0"),
            *("lock", "200", "5", "1", "1", "1"),
            *("cancel", "200", "5", "1", "1"),
            *("test", "200", "5", "1", "0"),
            *("lock", "200", "20", "5", "1", "0"),
        )
        self.assertEqual([r["status"] for r in b], [1, 1, 3, 0, 1, 0])
        self.assertEqual(
            b[0]["holder"],
            {"exclusive": True, "svid": 100, "offset": 0, "length": 10, "oh": "oh-100@host-a"},
        )
        self.assertEqual((await self.nlm(gw, "host-a", "unlock", "100", "0", "10"))[0]["status"], 0)
        b = await self.nlm(
            gw, "host-b", "lock", "200", "5", "1", "1", "0", "unlock", "200", "0", "0"
        )
        self.assertEqual([r["status"] for r in b], [0, 0])


class RestartTests(RealClientTestCase):
    async def client(self, gw: Gateway) -> Client:
        conn = await connect_tcp(reactor, "127.0.0.1", gw.nfs)
        self.addCleanup(conn.close)
        return Client(stream_sender(conn, AuthSys(0, b"t", 0, 0)))

    async def test_write_verifier_changes_and_data_survives(self) -> None:
        """
        After a restart the write verifier differs (clients resend unstable
        writes), handles still work, and committed data is there.
        """
        gw = await self.gateway()
        cl = await self.client(gw)
        root = (await cl.mnt(b"/export")).fh
        fh = (await cl.create(root, b"v", c.GUARDED)).fh
        w = await cl.write(fh, 0, b"committed", c.UNSTABLE)
        self.assertEqual(w.status, 0)
        commit = await cl.commit(fh)
        self.assertEqual((commit.status, commit.verf), (0, w.verf))
        gw.proc.signal("TERM")
        self.assertEqual(await gw.proc.ended, 0)

        gw2 = await self.start(gw.config)
        cl2 = await self.client(gw2)
        self.assertEqual((await cl2.mnt(b"/export")).fh, root)
        r = await cl2.read(fh, 0, 100)
        self.assertEqual((r.status, r.data), (0, b"committed"))
        w2 = await cl2.write(fh, 9, b"!", c.UNSTABLE)
        self.assertEqual(w2.status, 0)
        self.assertNotEqual(w2.verf, w.verf)


class SmallFileTests(RealClientTestCase):
    """Small files, whose bytes the embedded store keeps in its database (inline)."""

    async def test_small_files_round_trip_and_survive_kill(self) -> None:
        """
        Files of 0 bytes to just past the inline threshold, copied in with
        nfs-cp (CREATE, WRITE, COMMIT), read back byte-identical with nfs-cp
        and nfs-cat; after a kill -9 and a restart they are all still there;
        the ones within the threshold have no data file (inline rows).
        """
        gw = await self.gateway()
        sizes = [0, 1, 17, 1000, 4095, 4096, 4097, 9000]
        blobs = {n: os.urandom(n) for n in sizes}
        for n, data in blobs.items():
            src = self.local(f"in-{n}", data)
            status, _, err = await run([bin_path("nfs-cp"), src, gw.url(f"/s{n}")])
            self.assertEqual(status, 0, err)
        for n, data in blobs.items():
            dst = self.local(f"out-{n}")
            status, _, err = await run([bin_path("nfs-cp"), gw.url(f"/s{n}"), dst])
            self.assertEqual(status, 0, err)
            with open(dst, "rb") as f:
                self.assertEqual(f.read(), data, f"{n} bytes")
        gw.proc.signal("KILL")
        await gw.proc.ended
        with open(gw.config) as f:
            data_dir = next(
                line.split(":", 1)[1].strip() for line in f if line.strip().startswith("data_dir:")
            )
        db = sqlite3.connect(os.path.join(data_dir, "meta.sqlite3"))
        try:
            inline = sorted(len(r[0]) for r in db.execute("SELECT data FROM inline_data"))
        finally:
            db.close()
        self.assertEqual(inline, [n for n in sizes if 0 < n <= 4096])
        gw2 = await self.start(gw.config)
        for n, data in blobs.items():
            dst = self.local(f"again-{n}")
            status, _, err = await run([bin_path("nfs-cp"), gw2.url(f"/s{n}"), dst])
            self.assertEqual(status, 0, err)
            with open(dst, "rb") as f:
                self.assertEqual(f.read(), data, f"{n} bytes after kill -9")
        text = b"small and inline\n"
        self.assertEqual(
            (await run([bin_path("nfs-cp"), self.local("t", text), gw2.url("/t")]))[0], 0
        )
        status, out, _ = await run([bin_path("nfs-cat"), gw2.url("/t")])
        self.assertEqual((status, out), (0, ["small and inline"]))


class LibnfsMemoryTests(LibnfsTests):
    """The same clients against the memory backend (the front end alone)."""

    backend = "memory"


def port_111_free() -> str | None:
    """Why 127.0.0.1:111 cannot be used now (None if it can)."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 111))
        except OSError as e:
            return f"port 111/{'tcp' if kind == socket.SOCK_STREAM else 'udp'} is busy ({e}); stop rpcbind first"
        finally:
            s.close()
    return None


class PortmapperTests(RealClientTestCase):
    """rpcinfo and showmount only talk to port 111, so these tests need it free."""

    timeout = 180

    async def test_rpcinfo_and_showmount(self) -> None:
        """
        rpcinfo -p and showmount -e against the embedded portmapper on port
        111; then, with portmapper: system, against a real rpcbind the
        gateway registered with (and unregistered from at stop).
        """
        busy = port_111_free()
        if busy is not None:
            self.fail(busy)
        gw = await self.gateway('  portmap_bind: "127.0.0.1:111"\n')
        await self.check_rpcinfo(gw)
        status, out, err = await run([bin_path("showmount"), "-e", "127.0.0.1"])
        self.assertEqual(status, 0, err)
        self.assertIn("/export *", [" ".join(line.split()) for line in out])
        # Through the portmapper: no ports in the URL.
        status, out, err = await run([bin_path("nfs-ls"), "nfs://127.0.0.1/export?version=3"])
        self.assertEqual(status, 0, err)
        status, out, err = await run([bin_path("showmount"), "-a", "127.0.0.1"])
        self.assertIn("127.0.0.1:/export", out)
        gw.proc.signal("TERM")
        self.assertEqual(await gw.proc.ended, 0)

        # A real rpcbind, which the gateway registers with.
        rpcbind = spawn([bin_path("rpcbind"), "-f"])
        kill_on_cleanup(self, rpcbind)
        for _ in range(100):
            status, out, _ = await run([bin_path("rpcinfo"), "-p", "127.0.0.1"])
            if status == 0:
                break
        self.assertEqual(status, 0, "rpcbind did not start")
        gw = await self.gateway("  portmapper: system\n")
        # Every mapping check_rpcinfo looks for (they are registered one by one).
        for prog, vers in ((100003, 3), (100005, 3), (100005, 1)):
            for netid in ("tcp", "udp"):
                await gw.proc.wait_for(
                    lambda e, prog=prog, vers=vers, netid=netid: (
                        str(e.get("log_format", "")).startswith("registered program")
                        and (e.get("prog"), e.get("vers"), e.get("netid")) == (prog, vers, netid)
                    )
                )
        await self.check_rpcinfo(gw, embedded=False)
        status, out, err = await run([bin_path("showmount"), "-e", "127.0.0.1"])
        self.assertIn("/export *", [" ".join(line.split()) for line in out], err)
        gw.proc.signal("TERM")
        self.assertEqual(await gw.proc.ended, 0)
        status, out, _ = await run([bin_path("rpcinfo"), "-p", "127.0.0.1"])
        self.assertFalse([line for line in out if "100003" in line], out)
        rpcbind.signal("TERM")
        await rpcbind.ended

    async def check_rpcinfo(self, gw: Gateway, embedded: bool = True) -> None:
        status, out, err = await run([bin_path("rpcinfo"), "-p", "127.0.0.1"])
        self.assertEqual(status, 0, err)
        rows = {tuple(line.split()[:4]) for line in out[1:]}
        for proto in ("tcp", "udp"):
            self.assertIn(("100003", "3", proto, str(gw.nfs)), rows)
            self.assertIn(("100005", "3", proto, str(gw.mount)), rows)
            self.assertIn(("100005", "1", proto, str(gw.mount)), rows)
            self.assertIn(("100000", "2", proto, "111"), rows)
