"""NFSv4.2 operations (L{claudefs_gateway.nfs.v4.ops_v42})."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.nfs.v4 import const as c
from claudefs_gateway.nfs.v4.codec import (
    CbOffloadArgs,
    CloneArgs,
    CopyArgs,
    IoAdviseArgs,
    RangeArgs,
    ReadArgs,
    ReadPlusArgs,
    SeekArgs,
    StateId,
    StateidArgs,
    WriteArgs,
    decode_cb_compound,
    encode_cb_result,
)
from claudefs_gateway.nfs.v4.compound import Settings
from claudefs_gateway.rpc import message as msg
from claudefs_gateway.rpc.xdrtypes import Arm
from tests.nfs.v4.client import ANON, attrs_of
from tests.nfs.v4.harness import Harness


class V42Tests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness(settings=Settings(async_copy_min=1 << 20, io_size=64 * 1024))
        self.cl = self.h.client().setup()
        self.src, self.sid = self._file(b"src", b"0123456789" * 100)
        self.dst, self.dsid = self._file(b"dst", b"")

    def _file(self, name: bytes, data: bytes) -> tuple[bytes, StateId]:
        r = self.cl.compound(
            self.cl.path(b"export") + [self.cl.open_create(name, owner=name), (c.OP_GETFH, None)]
        )
        assert r.status == c.NFS4_OK, r
        fh, sid = r.last(c.OP_GETFH), r.last(c.OP_OPEN).stateid
        step = 512 * 1024
        for off in range(0, len(data), step):
            w = self.cl.compound(
                [
                    self.cl.putfh(fh),
                    (c.OP_WRITE, WriteArgs(sid, off, c.FILE_SYNC4, data[off : off + step])),
                ]
            )
            assert w.status == c.NFS4_OK, w
        return fh, sid

    def _read(self, fh: bytes) -> bytes:
        data: bytes = (
            self.cl.compound([self.cl.putfh(fh), (c.OP_READ, ReadArgs(ANON, 0, 1 << 20))])
            .last()
            .data
        )
        return data

    def _copy(self, args: CopyArgs) -> Any:
        return self.cl.compound(
            [
                self.cl.putfh(self.src),
                (c.OP_SAVEFH, None),
                self.cl.putfh(self.dst),
                (c.OP_COPY, args),
            ]
        )

    def test_copy_synchronous(self) -> None:
        """COPY with count 0 copies to the end of the source, committed, before it answers."""
        r = self._copy(CopyArgs(self.sid, self.dsid, 10, 5, 0, False, True, []))
        res = r.last()
        self.assertEqual((res.response.count, res.response.committed), (990, c.FILE_SYNC4))
        self.assertEqual(res.requirements.synchronous, True)
        self.assertEqual(self._read(self.dst), b"\0" * 5 + (b"0123456789" * 100)[10:])

    def test_copy_bounds(self) -> None:
        """A source range past the end, or overlapping itself, is NFS4ERR_INVAL; servers are NOTSUPP."""
        self.assertEqual(
            self._copy(CopyArgs(self.sid, self.dsid, 2000, 0, 0, False, True, [])).status,
            c.NFS4ERR_INVAL,
        )
        self.assertEqual(
            self._copy(CopyArgs(self.sid, self.dsid, 900, 0, 200, False, True, [])).status,
            c.NFS4ERR_INVAL,
        )
        r = self.cl.compound(
            [
                self.cl.putfh(self.src),
                (c.OP_SAVEFH, None),
                (c.OP_COPY, CopyArgs(self.sid, self.sid, 0, 10, 20, False, True, [])),
            ]
        )
        self.assertEqual(r.status, c.NFS4ERR_INVAL)
        r = self._copy(
            CopyArgs(self.sid, self.dsid, 0, 0, 0, False, True, [Arm(c.NL4_NAME, b"other")])
        )
        self.assertEqual(r.status, c.NFS4ERR_NOTSUPP)

    def test_copy_asynchronous(self) -> None:
        """A large COPY answers a copy stateid at once, CB_OFFLOAD when done; OFFLOAD_STATUS tells."""
        big, bsid = self._file(b"big", b"x" * (2 << 20))
        r = self.cl.compound(
            [
                self.cl.putfh(big),
                (c.OP_SAVEFH, None),
                self.cl.putfh(self.dst),
                (c.OP_COPY, CopyArgs(bsid, self.dsid, 0, 0, 0, False, False, [])),
            ]
        )
        res = r.last()
        self.assertFalse(res.requirements.synchronous)
        [copy_sid] = res.response.callback_id
        conn = self.cl.conn  # type: ignore[attr-defined]
        self.assertEqual(len(conn.sent), 1)
        call = msg.parse_call(conn.sent[0])
        _, _, _, ops = decode_cb_compound(conn.sent[0][call.args_at :])
        offload: CbOffloadArgs = ops[1][1]
        self.assertEqual(
            (ops[1][0], offload.fh, offload.stateid), (c.OP_CB_OFFLOAD, self.dst, copy_sid)
        )
        self.assertEqual((offload.info.tag, offload.info.value.count), (c.NFS4_OK, 2 << 20))
        status = self.cl.compound([(c.OP_OFFLOAD_STATUS, StateidArgs(copy_sid))]).last()
        self.assertEqual((status.count, status.complete), (2 << 20, [c.NFS4_OK]))
        self.assertEqual(len(self._read(self.dst)), 64 * 1024)
        # The client answers the callback; the session's next callback takes the next seqid.
        from claudefs_gateway.nfs.v4.codec import CbSequenceResok

        seq = Arm(0, CbSequenceResok(self.cl.sessionid, 1, 0, 0, 0))
        reply = msg.reply_success(call.xid) + encode_cb_result(
            0, b"", [(c.OP_CB_SEQUENCE, seq), (c.OP_CB_OFFLOAD, Arm(0))]
        )
        self.h.nfs4.callbacks.reply(reply)
        self.assertEqual(self.h.nfs4.clients.sessions[self.cl.sessionid].cb_seqid, 2)
        self.assertEqual(
            self.cl.compound([(c.OP_OFFLOAD_CANCEL, StateidArgs(copy_sid))]).status, c.NFS4_OK
        )
        self.assertEqual(
            self.cl.compound([(c.OP_OFFLOAD_STATUS, StateidArgs(copy_sid))]).status,
            c.NFS4ERR_BAD_STATEID,
        )

    def test_clone(self) -> None:
        r = self.cl.compound(
            [
                self.cl.putfh(self.src),
                (c.OP_SAVEFH, None),
                self.cl.putfh(self.dst),
                (c.OP_CLONE, CloneArgs(self.sid, self.dsid, 0, 0, 10)),
            ]
        )
        self.assertEqual(r.status, c.NFS4_OK)
        self.assertEqual(self._read(self.dst), b"0123456789")

    def test_seek(self) -> None:
        """Data is everywhere before the end; the only hole is at the end; past it is NXIO."""
        p = self.cl.putfh(self.src)
        data = self.cl.compound([p, (c.OP_SEEK, SeekArgs(ANON, 7, c.NFS4_CONTENT_DATA))]).last()
        hole = self.cl.compound([p, (c.OP_SEEK, SeekArgs(ANON, 7, c.NFS4_CONTENT_HOLE))]).last()
        self.assertEqual(
            ((data.eof, data.offset), (hole.eof, hole.offset)), ((False, 7), (True, 1000))
        )
        r = self.cl.compound([p, (c.OP_SEEK, SeekArgs(ANON, 1000, c.NFS4_CONTENT_DATA))])
        self.assertEqual(r.status, c.NFS4ERR_NXIO)

    def test_read_plus(self) -> None:
        res = self.cl.compound(
            [self.cl.putfh(self.src), (c.OP_READ_PLUS, ReadPlusArgs(ANON, 995, 100))]
        ).last()
        self.assertTrue(res.eof)
        [content] = res.contents
        self.assertEqual(
            (content.tag, content.value.offset, content.value.data),
            (c.NFS4_CONTENT_DATA, 995, b"56789"),
        )

    def test_allocate_deallocate(self) -> None:
        p = self.cl.putfh(self.dst)
        self.assertEqual(
            self.cl.compound([p, (c.OP_ALLOCATE, RangeArgs(self.dsid, 0, 4096))]).status, c.NFS4_OK
        )
        got = attrs_of(self.cl.compound([p, self.cl.getattr(c.FATTR4_SIZE)]).last())
        self.assertEqual(got[c.FATTR4_SIZE], 4096)
        self.assertEqual(
            self.cl.compound([p, (c.OP_ALLOCATE, RangeArgs(self.dsid, 0, 0))]).status,
            c.NFS4ERR_INVAL,
        )
        ps = self.cl.putfh(self.src)
        self.assertEqual(
            self.cl.compound([ps, (c.OP_DEALLOCATE, RangeArgs(self.sid, 0, 10))]).status, c.NFS4_OK
        )
        self.assertEqual(self._read(self.src)[:12], b"\0" * 10 + b"01")
        r = self.cl.compound(self.cl.path(b"export") + [(c.OP_ALLOCATE, RangeArgs(ANON, 0, 1))])
        self.assertEqual(r.status, c.NFS4ERR_ISDIR)

    def test_io_advise(self) -> None:
        r = self.cl.compound(
            [self.cl.putfh(self.src), (c.OP_IO_ADVISE, IoAdviseArgs(ANON, 0, 10, [1 << 1]))]
        )
        self.assertEqual(r.last(), [])
