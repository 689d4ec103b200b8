"""
pNFS end to end over real TCP: a meta server and a data server with its
NFSv3 listener in this process, a gateway on ``backend: remote`` as pNFS
metadata server, and a client of our own that gets a layout, writes the
bytes straight to the data server, commits them, and reads the file back
through the gateway over S3 (the path SMB and NFS take too).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from claudefs_gateway import service
from claudefs_gateway.core import config as cfg
from claudefs_gateway.nfs.pnfs import flexfiles as ff
from claudefs_gateway.nfs.pnfs.mds import ALL
from claudefs_gateway.nfs.v3 import codec as v3
from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4.codec import (
    GetDeviceInfoArgs,
    LayoutCommitArgs,
    LayoutGetArgs,
    LayoutReturnArgs,
    LayoutReturnFile,
    LayoutUpdate,
    ReclaimCompleteArgs,
)
from claudefs_gateway.rpc.client import connect_tcp
from claudefs_gateway.rpc.message import AuthSys
from claudefs_gateway.rpc.xdrtypes import Arm
from tests.backend.remote.harness import Cluster
from tests.backend.remote.test_gateway import remote_yaml
from tests.helpers import http_get
from tests.nfs.client import Client as V3Client
from tests.nfs.v4.client import V4Client


class EndToEndTests(TestCase):
    timeout = 60

    async def test_write_through_data_server_read_over_s3(self) -> None:
        cluster = Cluster(self, nfs=True)
        await cluster.start()
        data = os.path.abspath(self.mktemp())
        text = remote_yaml(data, cluster.meta_address).replace(
            'portmap_bind: "127.0.0.1:0"}',
            'portmap_bind: "127.0.0.1:0", pnfs: {enabled: true, ds_uid: 4100, ds_gid: 4200}}',
        )
        root = service.build(cfg.loads(text), reactor, protocols=["nfs", "s3"])
        root.privilegedStartService()
        root.startService()
        self.addCleanup(root.stopService)
        await root.core.vfs_ready()
        ports = {label: svc.bound_port for label, svc in root.listeners().items()}

        conn = await connect_tcp(reactor, "127.0.0.1", ports["nfs"])
        self.addCleanup(conn.close)
        cred = AuthSys(0, b"e2e", 0, 0, ())
        cl = V4Client(lambda p, v, pr, a: conn.call(p, v, pr, a, cred))
        eid = await cl.exchange_id(b"e2e")
        self.assertTrue(eid.last(c.OP_EXCHANGE_ID).flags & c.EXCHGID4_FLAG_USE_PNFS_MDS)
        self.assertEqual((await cl.create_session()).status, 0)
        await cl.compound([(c.OP_RECLAIM_COMPLETE, ReclaimCompleteArgs(False))])
        # The S3 root is /s3; the bucket "shared" is /s3/shared. This client
        # answers no callbacks (CB_RECALL): it asks for no delegation.
        access = c.OPEN4_SHARE_ACCESS_BOTH | c.OPEN4_SHARE_ACCESS_WANT_NO_DELEG
        r = await cl.compound(
            cl.path(b"s3", b"shared")
            + [cl.open_create(b"obj.bin", access=access), (c.OP_GETFH, None)]
        )
        self.assertEqual(r.status, 0, r)
        fh, osid = r.last(c.OP_GETFH), r.last(c.OP_OPEN).stateid
        lg = LayoutGetArgs(False, 4, c.LAYOUTIOMODE4_RW, 0, ALL, 4096, osid, 65536)
        r = await cl.compound([cl.putfh(fh), (c.OP_LAYOUTGET, lg)])
        self.assertEqual(r.status, 0, r)
        res = r.last(c.OP_LAYOUTGET)
        ((ds,),) = ff.decode_layout(res.layouts[0].body).mirrors
        self.assertEqual((ds.user, ds.group), (b"4100", b"4200"))
        r = await cl.compound([(c.OP_GETDEVICEINFO, GetDeviceInfoArgs(ds.deviceid, 4, 0, []))])
        self.assertEqual(r.status, 0, r)
        host, port = ff.parse_netaddr(
            ff.decode_device(r.last(c.OP_GETDEVICEINFO).device.body).netaddrs[0]
        )

        # The data: straight to the data server, over NFSv3, with the layout's credential.
        dconn = await connect_tcp(reactor, host, port)
        self.addCleanup(dconn.close)
        dcred = AuthSys(0, b"e2e", 4100, 4200, ())
        dcl = V3Client(lambda p, v, pr, a: dconn.call(p, v, pr, a, dcred))
        payload = os.urandom(5 * 1024 * 1024 + 17)
        step = 1 << 20
        for off in range(0, len(payload), step):
            w = await dcl.write(ds.fhs[0], off, payload[off : off + step], v3.UNSTABLE)
            self.assertEqual(w.status, 0)
        self.assertEqual((await dcl.commit(ds.fhs[0], 0, 0)).status, 0)
        # Wrong credential: refused by the data server.
        bad = V3Client(lambda p, v, pr, a: dconn.call(p, v, pr, a, AuthSys(0, b"x", 0, 0, ())))
        self.assertEqual((await bad.read(ds.fhs[0], 0, 10)).status, 13)

        commit = LayoutCommitArgs(
            0,
            ALL,
            False,
            res.stateid,
            Arm(True, len(payload) - 1),
            Arm(False),
            LayoutUpdate(4, b""),
        )
        r = await cl.compound([cl.putfh(fh), (c.OP_LAYOUTCOMMIT, commit)])
        self.assertEqual(r.status, 0, r)
        self.assertEqual(r.last(c.OP_LAYOUTCOMMIT), Arm(True, len(payload)))
        ret = LayoutReturnArgs(False, 4, 3, Arm(1, LayoutReturnFile(0, ALL, res.stateid, b"")))
        self.assertEqual((await cl.compound([cl.putfh(fh), (c.OP_LAYOUTRETURN, ret)])).status, 0)

        # Read back through the gateway, over S3 (signed as the harness's user).
        got = await _s3_get(ports["s3"], "shared", "obj.bin")
        self.assertEqual(len(got), len(payload))
        self.assertEqual(got, payload)


async def _s3_get(port: int, bucket: str, key: str) -> bytes:
    from tests.s3.harness import ALICE

    return await _signed_get(port, bucket, key, ALICE)


async def _signed_get(port: int, bucket: str, key: str, creds: Any) -> bytes:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = f"http://127.0.0.1:{port}/{bucket}/{key}"
    req = AWSRequest(method="GET", url=url)
    S3SigV4Auth(Credentials(creds[0], creds[1]), "s3", "us-east-1").add_auth(req)
    headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in req.headers.items()}
    status, _, body = await http_get(url, headers=headers)
    assert status == 200, (status, body[:200])
    return body
