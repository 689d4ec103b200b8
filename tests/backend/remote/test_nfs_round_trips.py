"""
Round trips to the meta server per NFSv3 small file through a gateway on
C{backend: remote} as a C{--workers} worker (its own chunk files, the event
marks kept; a second gateway beside it, idle, as the other worker): a real
client (libnfs, as C{nfs.small_files}) creates, writes 4 KiB and COMMITs
files, lists their directory and removes them, and every call of both
gateways and every event frame to them is counted per opcode. Per file: the
difference between a run of 30 files and one of 10 (what a mount and the
directory cost is the same in both). docs/bench.rst "Round trips per small
file, counted".
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from claudefs_gateway import service
from claudefs_gateway.backend.remote import client
from claudefs_gateway.core import config as cfg
from tests.backend.remote.harness import Cluster, count_rpc
from tests.backend.remote.test_gateway import remote_yaml
from tests.helpers import REPO, spawn


def _turn() -> defer.Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(reactor, 0.005, lambda: None)


class NFSRoundTripTests(TestCase):
    timeout = 120

    async def _worker(self, cluster: Cluster) -> Any:
        data = os.path.abspath(self.mktemp())
        text = remote_yaml(data, cluster.meta_address).replace(
            f'backend: {{type: remote, data_dir: "{data}"}}',
            f'backend: {{type: remote, data_dir: "{data}", short_circuit: "{cluster.data_dir}",'
            f' event_marks: "{cluster.marks}"}}',
        )
        root = service.build(cfg.loads(text), reactor, protocols=["nfs"])
        root.privilegedStartService()
        root.startService()
        self.addCleanup(root.stopService)
        await root.core.vfs_ready()
        while root.core.vfs_service.backend._mark is None:
            await _turn()
        return root

    async def _per_file(self) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
        cluster = Cluster(self, event_marks=True)
        await cluster.start()
        serving = await self._worker(cluster)
        await self._worker(cluster)  # the other worker: idle, hears the events
        # The client's COMMIT follows the WRITE's reply: on a loaded machine
        # later than the hold's 2 ms, and the WROTE then goes on its own.
        self.patch(client, "WROTE_HOLD_SECS", 30.0)
        calls, events = count_rpc(self)
        ports = serving.listeners()
        url = (
            f"nfs://127.0.0.1/export?version=3&nfsport={ports['nfs'].bound_port}"
            f"&mountport={ports['mount'].bound_port}"
        )

        async def run(ops: list[str]) -> tuple[Counter[str], Counter[str]]:
            for _ in range(4):
                await _turn()
            calls.clear()
            events.clear()
            proc = spawn([sys.executable, "-m", "tests.nfs.libnfs_ops", url, *ops], path=REPO)
            self.assertEqual(await proc.ended, 0, proc.stderr)
            for line in proc.text:
                self.assertNotIn("error", json.loads(line), line)
            # What is sent after a reply (a write-behind WROTE's answer, the
            # chunks a remove frees) is over within these turns.
            for _ in range(10):
                await _turn()
            return Counter(calls), Counter(events)

        phases: dict[str, Any] = {
            "create": lambda d, n: [
                x for i in range(n) for x in ("smallfile", f"{d}/f{i}", "x" * 4096)
            ],
            "list": lambda d, n: ["listdir", d],
            "unlink": lambda d, n: [x for i in range(n) for x in ("unlink", f"{d}/f{i}")],
        }
        got: dict[str, dict[str, list[Counter[str]]]] = {"calls": {}, "events": {}}
        for d in ("/a", "/b"):
            await run(["mkdir", d])
        for name, ops in phases.items():
            for d, n in (("/a", 10), ("/b", 30)):
                c, e = await run(ops(d, n))
                got["calls"].setdefault(name, []).append(c)
                got["events"].setdefault(name, []).append(e)

        def per_file(pair: list[Counter[str]]) -> dict[str, float]:
            small, big = pair
            out = {k: (big[k] - small[k]) / 20 for k in big | small}
            return {k: v for k, v in out.items() if v}

        calls_per = {k: per_file(v) for k, v in got["calls"].items()}
        events_per = {k: per_file(v) for k, v in got["events"].items()}
        return calls_per, events_per

    async def test_small_file(self) -> None:
        """
        CREATE, WRITE 4 KiB (unstable), COMMIT: two calls. The create's
        answer carries the directory (no GETATTR), the O_TRUNC SETATTR is
        answered from it, and the COMMIT carries the write's WROTE, made
        stable (no COMMIT_META). The listing is one READDIR with the entries'
        attributes whatever their number, a remove one UNLINK. Events: one
        EV_CHANGE to the other worker per CREATE and per WROTE, per UNLINK.
        """
        calls, events = await self._per_file()
        self.assertEqual(calls["create"], {"CREATE": 1, "WROTE": 1})
        self.assertEqual(calls.get("list", {}), {})
        self.assertEqual(calls["unlink"], {"UNLINK": 1})
        self.assertEqual(events["create"], {"EV_CHANGE": 2})
        self.assertEqual(events.get("list", {}), {})
        self.assertEqual(events["unlink"], {"EV_CHANGE": 1})
