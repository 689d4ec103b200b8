"""
SMB2 command bodies: requests packed by smbprotocol (an independent
implementation) parse here; our responses parse with smbprotocol; garbage
raises only ProtocolError.
"""

from __future__ import annotations

import struct
import uuid

from hypothesis import given
from hypothesis import strategies as s
from smbprotocol import connection as spc
from smbprotocol import create_contexts as spx
from smbprotocol import open as spo
from smbprotocol import session as sps
from smbprotocol import tree as spt
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.smb import constants as c
from claudefs_gateway.smb import messages as m
from claudefs_gateway.smb.header import Header

HDR = Header(0).pack()

PARSERS = [
    m.NegotiateRequest,
    m.SessionSetupRequest,
    m.TreeConnectRequest,
    m.CreateRequest,
    m.CloseRequest,
    m.FileIdRequest,
    m.ReadRequest,
    m.WriteRequest,
    m.LockRequest,
    m.IoctlRequest,
    m.QueryDirectoryRequest,
    m.ChangeNotifyRequest,
    m.QueryInfoRequest,
    m.SetInfoRequest,
]


class RequestsFromSmbprotocolTests(SynchronousTestCase):
    def test_negotiate_311(self) -> None:
        req = spc.SMB3NegotiateRequest()
        req["dialects"] = [0x0202, 0x0210, 0x0300, 0x0302, 0x0311]
        req["client_guid"] = uuid.UUID(int=7)
        req["capabilities"] = c.SMB2_GLOBAL_CAP_ENCRYPTION
        pre = spc.SMB2NegotiateContextRequest()
        pre["context_type"] = spc.NegotiateContextType.SMB2_PREAUTH_INTEGRITY_CAPABILITIES
        pre["data"] = spc.SMB2PreauthIntegrityCapabilities()
        pre["data"]["hash_algorithms"] = [spc.HashAlgorithms.SHA_512]
        pre["data"]["salt"] = b"x" * 32
        enc = spc.SMB2NegotiateContextRequest()
        enc["context_type"] = spc.NegotiateContextType.SMB2_ENCRYPTION_CAPABILITIES
        enc["data"] = spc.SMB2EncryptionCapabilities()
        enc["data"]["ciphers"] = [spc.Ciphers.AES_256_GCM, spc.Ciphers.AES_128_CCM]
        enc["padding"].size = 0
        enc["padding"] = b""
        req["negotiate_context_list"] = [pre, enc]
        got = m.NegotiateRequest.parse(HDR + req.pack())
        self.assertEqual(got.dialects, (0x0202, 0x0210, 0x0300, 0x0302, 0x0311))
        self.assertEqual(got.client_guid, uuid.UUID(int=7).bytes_le)
        self.assertEqual([x.type for x in got.contexts], [1, 2])
        self.assertEqual(got.contexts[1].data, struct.pack("<HHH", 2, 4, 1))

    def test_session_setup(self) -> None:
        req = sps.SMB2SessionSetupRequest()
        req["security_mode"] = 1
        req["buffer"] = b"token"
        got = m.SessionSetupRequest.parse(HDR + req.pack())
        self.assertEqual((got.token, got.security_mode), (b"token", 1))

    def test_tree_connect(self) -> None:
        req = spt.SMB2TreeConnectRequest()
        req["buffer"] = "\\\\srv\\share".encode("utf-16-le")
        self.assertEqual(m.TreeConnectRequest.parse(HDR + req.pack()).path, "\\\\srv\\share")

    def test_create_with_contexts(self) -> None:
        req = spo.SMB2CreateRequest()
        req["impersonation_level"] = 2
        req["desired_access"] = 0x120089
        req["create_disposition"] = 3
        req["create_options"] = 0x40
        req["share_access"] = 7
        req["buffer_path"] = "dir\\file.txt".encode("utf-16-le")
        mx = spx.SMB2CreateContextRequest()
        mx["buffer_name"] = spx.CreateContextName.SMB2_CREATE_QUERY_MAXIMAL_ACCESS_REQUEST
        mx["buffer_data"] = spx.SMB2CreateQueryMaximalAccessRequest()
        qf = spx.SMB2CreateContextRequest()
        qf["buffer_name"] = spx.CreateContextName.SMB2_CREATE_QUERY_ON_DISK_ID
        req["buffer_contexts"] = spx.SMB2CreateContextRequest.pack_multiple([mx, qf])
        got = m.CreateRequest.parse(HDR + req.pack())
        self.assertEqual(got.name, "dir\\file.txt")
        self.assertEqual((got.desired_access, got.disposition, got.options), (0x120089, 3, 0x40))
        self.assertEqual([x.name for x in got.contexts], [b"MxAc", b"QFid"])

    def test_read_write_close(self) -> None:
        fid = b"\x01" * 8 + b"\x02" * 8
        rd = spo.SMB2ReadRequest()
        rd["length"] = 4096
        rd["offset"] = 99
        rd["file_id"] = fid
        got = m.ReadRequest.parse(HDR + rd.pack())
        self.assertEqual((got.length, got.offset), (4096, 99))
        self.assertEqual(got.file_id, (0x0101010101010101, 0x0202020202020202))
        wr = spo.SMB2WriteRequest()
        wr["offset"] = 5
        wr["file_id"] = fid
        wr["buffer"] = b"payload"
        got_w = m.WriteRequest.parse(HDR + wr.pack())
        self.assertEqual((bytes(got_w.data), got_w.offset), (b"payload", 5))
        cl = spo.SMB2CloseRequest()
        cl["flags"] = 1
        cl["file_id"] = fid
        self.assertEqual(m.CloseRequest.parse(HDR + cl.pack()).flags, 1)

    def test_query_directory_and_info(self) -> None:
        fid = b"\x03" * 16
        qd = spo.SMB2QueryDirectoryRequest()
        qd["file_information_class"] = 37
        qd["flags"] = 1
        qd["file_id"] = fid
        qd["buffer"] = "*.txt".encode("utf-16-le")
        qd["output_buffer_length"] = 1000
        got = m.QueryDirectoryRequest.parse(HDR + qd.pack())
        self.assertEqual((got.pattern, got.info_class, got.output_length), ("*.txt", 37, 1000))
        qi = spo.SMB2QueryInfoRequest()
        qi["info_type"] = 1
        qi["file_info_class"] = 18
        qi["output_buffer_length"] = 512
        qi["file_id"] = fid
        gi = m.QueryInfoRequest.parse(HDR + qi.pack())
        self.assertEqual((gi.info_type, gi.info_class, gi.output_length), (1, 18, 512))
        si = spo.SMB2SetInfoRequest()
        si["info_type"] = 1
        si["file_info_class"] = 13
        si["file_id"] = fid
        si["buffer"] = b"\x01"
        gs = m.SetInfoRequest.parse(HDR + si.pack())
        self.assertEqual((gs.info_class, gs.buffer), (13, b"\x01"))

    def test_lock(self) -> None:
        lk = spo.SMB2LockRequest()
        lk["file_id"] = b"\x04" * 16
        el = spo.SMB2LockElement()
        el["offset"] = 10
        el["length"] = 20
        el["flags"] = 2
        lk["locks"] = [el]
        got = m.LockRequest.parse(HDR + lk.pack())
        self.assertEqual(got.locks, (m.LockElement(10, 20, 2),))


class ResponsesToSmbprotocolTests(SynchronousTestCase):
    def test_negotiate_response(self) -> None:
        ctx = [
            m.pack_negotiate_context(1, struct.pack("<HHH", 1, 4, 1) + b"salt"),
            m.pack_negotiate_context(2, struct.pack("<HH", 1, 2)),
        ]
        body = m.pack_negotiate_response(
            security_mode=1,
            dialect=0x311,
            server_guid=uuid.UUID(int=5).bytes_le,
            capabilities=4,
            max_transact=1 << 20,
            max_read=1 << 20,
            max_write=1 << 20,
            system_time=0,
            security_buffer=b"spnego",
            contexts=ctx,
        )
        resp = spc.SMB2NegotiateResponse()
        resp.unpack(body)
        self.assertEqual(resp["dialect_revision"].get_value(), 0x311)
        self.assertEqual(resp["buffer"].get_value(), b"spnego")
        got = resp["negotiate_context_list"].get_value()
        self.assertEqual(len(got), 2)
        self.assertEqual(got[1]["data"]["ciphers"].get_value(), [2])

    def test_create_response(self) -> None:
        times = m.FileTimes(1, 2, 3, 4, 4096, 10, 0x20)
        ctx = [m.CreateContext(b"MxAc", struct.pack("<II", 0, 0x1F01FF))]
        body = m.pack_create_response(2, times, (9, 9), ctx)
        resp = spo.SMB2CreateResponse()
        resp.unpack(body)
        self.assertEqual(resp["create_action"].get_value(), 2)
        self.assertEqual(resp["end_of_file"].get_value(), 10)
        self.assertEqual(resp["file_id"].get_value(), struct.pack("<QQ", 9, 9))
        contexts = resp["buffer"].get_value()
        self.assertEqual(contexts[0]["buffer_name"].get_value(), b"MxAc")

    def test_close_response(self) -> None:
        body = m.pack_close_response(1, m.FileTimes(1, 2, 3, 4, 4096, 10, 0x20))
        resp = spo.SMB2CloseResponse()
        resp.unpack(body)
        self.assertEqual(resp["end_of_file"].get_value(), 10)
        self.assertEqual(len(m.pack_close_response(0, None)), 60)


class ContextTests(SynchronousTestCase):
    @given(
        s.lists(
            s.tuples(s.binary(min_size=4, max_size=20), s.binary(max_size=40)),
            min_size=1,
            max_size=5,
        )
    )
    def test_create_contexts_round_trip(self, items: list[tuple[bytes, bytes]]) -> None:
        """A packed create context chain parses back, in order."""
        ctx = [m.CreateContext(n, d) for n, d in items]
        blob = m.pack_create_contexts(ctx)
        raw = bytearray(HDR + b"\x00" * 56)
        struct.pack_into("<H", raw, 64, 57)
        struct.pack_into("<II", raw, 64 + 48, 120, len(blob))
        got = m.CreateRequest.parse(bytes(raw) + blob)
        self.assertEqual(list(got.contexts), ctx)


class GarbageTests(SynchronousTestCase):
    @given(s.sampled_from(PARSERS), s.binary(max_size=300))
    def test_any_bytes(self, parser: type, body: bytes) -> None:
        """Every request parser takes any body and raises nothing but ProtocolError."""
        try:
            parser.parse(HDR + body)  # type: ignore[attr-defined]
        except ProtocolError:
            pass

    @given(s.sampled_from(PARSERS), s.data())
    def test_right_size_garbage(self, parser: type, data: s.DataObject) -> None:
        """With the right StructureSize, offsets and counts are still checked."""
        size = {
            m.NegotiateRequest: 36,
            m.SessionSetupRequest: 25,
            m.TreeConnectRequest: 9,
            m.CreateRequest: 57,
            m.CloseRequest: 24,
            m.FileIdRequest: 24,
            m.ReadRequest: 49,
            m.WriteRequest: 49,
            m.LockRequest: 48,
            m.IoctlRequest: 57,
            m.QueryDirectoryRequest: 33,
            m.ChangeNotifyRequest: 32,
            m.QueryInfoRequest: 41,
            m.SetInfoRequest: 33,
        }[parser]
        body = struct.pack("<H", size) + data.draw(s.binary(min_size=size, max_size=size + 200))
        try:
            parser.parse(HDR + body)  # type: ignore[attr-defined]
        except ProtocolError:
            pass

    def test_wrong_structure_size(self) -> None:
        for parser in PARSERS:
            self.assertRaises(ProtocolError, parser.parse, HDR + b"\x01\x00" + b"\x00" * 100)  # type: ignore[attr-defined]


class FixedPartTests(SynchronousTestCase):
    """
    The fixed parts read in one unpack each (docs/bench.rst "SMB: the
    per-request floor"): every field comes from its MS-SMB2 offset, given a
    body whose fields all differ.
    """

    FID = struct.pack("<QQ", 0x1111111111111111, 0x2222222222222222)

    def test_close_and_flush(self) -> None:
        body = struct.pack("<HHI16s", 24, 1, 0x0BAD, self.FID)
        got = m.CloseRequest.parse(HDR + body)
        self.assertEqual((got.flags, got.file_id), (1, struct.unpack("<QQ", self.FID)))
        self.assertEqual(m.FileIdRequest.parse(HDR + body).file_id, struct.unpack("<QQ", self.FID))

    def test_read(self) -> None:
        body = struct.pack("<HBBIQ16sIIIHH", 49, 0x50, 1, 4096, 99, self.FID, 7, 3, 5, 0, 0)
        got = m.ReadRequest.parse(HDR + body + b"\x00")
        self.assertEqual(
            (got.flags, got.length, got.offset, got.file_id, got.minimum, got.channel),
            (1, 4096, 99, struct.unpack("<QQ", self.FID), 7, 3),
        )

    def test_write(self) -> None:
        body = struct.pack("<HHIQ16sIIHHI", 49, 64 + 48, 4, 1 << 40, self.FID, 2, 9, 0, 0, 1)
        got = m.WriteRequest.parse(HDR + body + b"data")
        self.assertEqual(
            (got.offset, got.file_id, got.channel, got.flags, bytes(got.data)),
            (1 << 40, struct.unpack("<QQ", self.FID), 2, 1, b"data"),
        )
        self.assertRaises(ProtocolError, m.WriteRequest.parse, HDR + body + b"dat")

    def test_query_directory(self) -> None:
        name = "f*".encode("utf-16-le")
        body = struct.pack("<HBBI16sHHI", 33, 37, 0x10, 6, self.FID, 96, len(name), 800)
        got = m.QueryDirectoryRequest.parse(HDR + body + name)
        self.assertEqual(
            (got.info_class, got.flags, got.file_index, got.file_id, got.pattern),
            (37, 0x10, 6, struct.unpack("<QQ", self.FID), "f*"),
        )
        self.assertEqual(got.output_length, 800)
        bare = struct.pack("<HBBI16sHHI", 33, 37, 0, 0, self.FID, 0, 0, 800)
        self.assertEqual(m.QueryDirectoryRequest.parse(HDR + bare + b"\x00").pattern, "")

    def test_query_and_set_info(self) -> None:
        qi = struct.pack("<HBBIHHIII16s", 41, 2, 18, 512, 104, 0, 3, 0x0C, 1, self.FID)
        got = m.QueryInfoRequest.parse(HDR + qi + b"abc")
        self.assertEqual(
            (got.info_type, got.info_class, got.output_length, got.input),
            (2, 18, 512, b"abc"),
        )
        self.assertEqual(
            (got.additional, got.flags, got.file_id), (0x0C, 1, struct.unpack("<QQ", self.FID))
        )
        si = struct.pack("<HBBIHHI16s", 33, 1, 13, 1, 96, 0, 0x0C, self.FID)
        gs = m.SetInfoRequest.parse(HDR + si + b"\x01")
        self.assertEqual(
            (gs.info_type, gs.info_class, gs.buffer, gs.additional, gs.file_id),
            (1, 13, b"\x01", 0x0C, struct.unpack("<QQ", self.FID)),
        )

    def test_create(self) -> None:
        name = "a\\b".encode("utf-16-le")
        body = struct.pack(
            "<HBBIQQIIIIIHHII", 57, 0, 8, 2, 0, 0, 0x12019F, 0x80, 7, 5, 0x40, 120, len(name), 0, 0
        )
        got = m.CreateRequest.parse(HDR + body + name)
        self.assertEqual(
            (got.oplock, got.impersonation, got.desired_access, got.file_attributes),
            (8, 2, 0x12019F, 0x80),
        )
        self.assertEqual(
            (got.share_access, got.disposition, got.options, got.name, got.contexts),
            (7, 5, 0x40, "a\\b", ()),
        )
        self.assertRaises(ProtocolError, m.CreateRequest.parse, HDR + body[:40])
        self.assertRaises(ProtocolError, m.CreateRequest.parse, HDR + b"\x39\x00")
