"""
DCE/RPC over the srvsvc pipe: PDUs and NDR built and read by impacket
(an independent implementation of MS-RPCE and MS-SRVS).
"""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as s
from impacket.dcerpc.v5 import rpcrt, srvs
from impacket.dcerpc.v5.dtypes import NULL
from impacket.uuid import uuidtup_to_bin
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.smb.dcerpc import (
    MAX_PENDING,
    PTYPE_BIND_ACK,
    PTYPE_FAULT,
    PTYPE_RESPONSE,
    Pipe,
    Share,
    Srvsvc,
    parse_pdu,
)

SHARES = [
    Share("share", 0, "", "C:\\export"),
    Share("photos", 0, "holiday pictures", "C:\\photos"),
    Share("IPC$", 0x80000003, "IPC Service (claudefs-gateway)"),
]
NDR = ("8a885d04-1ceb-11c9-9fe8-08002b104860", "2.0")
NDR64 = ("71710533-beba-4937-8319-b5dbef9ccc36", "1.0")


def service() -> Srvsvc:
    return Srvsvc(lambda: SHARES, "GW", "claudefs-gateway")


def enum_request(level: int) -> bytes:
    req = srvs.NetrShareEnum()
    req["ServerName"] = "\\\\GW\x00"
    req["InfoStruct"]["Level"] = level
    req["InfoStruct"]["ShareInfo"]["tag"] = level
    req["InfoStruct"]["ShareInfo"][f"Level{level}"]["Buffer"] = NULL
    req["PreferedMaximumLength"] = 0xFFFFFFFF
    req["ResumeHandle"] = NULL
    return req.getData()  # type: ignore[no-any-return]


def bind_pdu(syntaxes: list[tuple[str, str]], iface: object = srvs.MSRPC_UUID_SRVS) -> bytes:
    bind = rpcrt.MSRPCBind()
    for i, syn in enumerate(syntaxes):
        item = rpcrt.CtxItem()
        item["AbstractSyntax"] = iface if isinstance(iface, bytes) else uuidtup_to_bin(iface)
        item["TransferSyntax"] = uuidtup_to_bin(syn)
        item["ContextID"] = i
        item["TransItems"] = 1
        bind.addCtxItem(item)
    hdr = rpcrt.MSRPCHeader()
    hdr["type"] = rpcrt.MSRPC_BIND
    hdr["flags"] = 3
    hdr["call_id"] = 1
    hdr["pduData"] = bind.getData()
    return hdr.getData()  # type: ignore[no-any-return]


def request_pdu(opnum: int, stub: bytes, call_id: int = 2, ctx: int = 0, flags: int = 3) -> bytes:
    req = rpcrt.MSRPCRequestHeader()
    req["type"] = rpcrt.MSRPC_REQUEST
    req["flags"] = flags
    req["call_id"] = call_id
    req["ctx_id"] = ctx
    req["op_num"] = opnum
    req["pduData"] = stub
    req["alloc_hint"] = len(stub)
    return req.getData()  # type: ignore[no-any-return]


class SrvsvcTests(SynchronousTestCase):
    def test_share_enum_all_levels(self) -> None:
        """NetrShareEnumAll at levels 0, 1, 2, 501 decodes with impacket's NDR."""
        for level in (0, 1, 2, 501):
            r = srvs.NetrShareEnumResponse(service().call(15, enum_request(level)))
            self.assertEqual(r["ErrorCode"], 0)
            self.assertEqual(r["TotalEntries"], 3)
            entries = r["InfoStruct"]["ShareInfo"][f"Level{level}"]["Buffer"]
            names = [e[f"shi{level}_netname"][:-1] for e in entries]
            self.assertEqual(names, ["share", "photos", "IPC$"])
            if level in (1, 2, 501):
                self.assertEqual(entries[1][f"shi{level}_remark"][:-1], "holiday pictures")
                self.assertEqual(entries[2][f"shi{level}_type"], 0x80000003)
            if level == 2:
                self.assertEqual(entries[0]["shi2_path"][:-1], "C:\\export")

    def test_unknown_level(self) -> None:
        req = bytearray(enum_request(1))
        # Level and union tag follow the ServerName string.
        pos = req.index(struct.pack("<II", 1, 1))
        req[pos : pos + 8] = struct.pack("<II", 7, 7)
        out = service().call(15, bytes(req))
        self.assertEqual(struct.unpack_from("<I", out, len(out) - 4)[0], 124)

    def test_share_get_info(self) -> None:
        g = srvs.NetrShareGetInfo()
        g["ServerName"] = "x\x00"
        g["NetName"] = "PHOTOS\x00"
        for level in (0, 1, 2, 501, 1005):
            g["Level"] = level
            r = srvs.NetrShareGetInfoResponse(service().call(16, g.getData()))
            self.assertEqual(r["ErrorCode"], 0)
        g["NetName"] = "nope\x00"
        g["Level"] = 1
        out = service().call(16, g.getData())
        self.assertEqual(struct.unpack_from("<I", out, len(out) - 4)[0], 2310)

    def test_server_get_info(self) -> None:
        g = srvs.NetrServerGetInfo()
        g["ServerName"] = "x\x00"
        g["Level"] = 101
        r = srvs.NetrServerGetInfoResponse(service().call(21, g.getData()))
        self.assertEqual(r["InfoStruct"]["ServerInfo101"]["sv101_name"][:-1], "GW")

    def test_unknown_opnum(self) -> None:
        self.assertRaises(KeyError, service().call, 99, b"")

    @given(s.sampled_from([15, 16, 21]), s.binary(max_size=200))
    def test_garbage_stub(self, opnum: int, stub: bytes) -> None:
        """Any stub is answered or refused with ProtocolError."""
        try:
            service().call(opnum, stub)
        except ProtocolError:
            pass


class PipeTests(SynchronousTestCase):
    def pdus(self, pipe: Pipe) -> list[tuple[int, bytes]]:
        out = []
        data = bytes(pipe.pending)
        pipe.pending.clear()
        while data:
            pdu, n = parse_pdu(data)
            out.append((pdu.ptype, pdu.body))
            data = data[n:]
        return out

    def test_bind_and_call(self) -> None:
        """BIND (NDR accepted, NDR64 refused), then a call answered through the pipe."""
        pipe = Pipe("srvsvc", service())
        pipe.write(bind_pdu([NDR64, NDR]))
        [(ptype, body)] = self.pdus(pipe)
        self.assertEqual(ptype, PTYPE_BIND_ACK)
        ack = rpcrt.MSRPCBindAck(
            struct.pack("<BBBBIHHI", 5, 0, 12, 3, 0x10, 16 + len(body), 0, 1) + body
        )
        results = [ack["ctx_items"][i * 24 : i * 24 + 4] for i in range(ack["ctx_num"])]
        self.assertEqual([struct.unpack("<HH", r) for r in results], [(2, 2), (0, 0)])
        self.assertIn("\\PIPE\\srvsvc", ack["SecondaryAddr"])
        pipe.write(request_pdu(15, enum_request(1), ctx=1))
        [(ptype, body)] = self.pdus(pipe)
        self.assertEqual(ptype, PTYPE_RESPONSE)
        r = srvs.NetrShareEnumResponse(body[8:])
        self.assertEqual(r["TotalEntries"], 3)

    def test_call_before_bind_faults(self) -> None:
        pipe = Pipe("srvsvc", service())
        pipe.write(request_pdu(15, enum_request(1)))
        [(ptype, _)] = self.pdus(pipe)
        self.assertEqual(ptype, PTYPE_FAULT)

    def test_fragments(self) -> None:
        """Requests are reassembled; long replies are cut to max_recv_frag."""
        many = [Share(f"share{i:03}", 0, "r" * 40, "C:\\x") for i in range(200)]
        pipe = Pipe("srvsvc", Srvsvc(lambda: many, "GW", ""))
        pipe.write(bind_pdu([NDR]))
        self.pdus(pipe)
        stub = enum_request(1)
        pipe.write(request_pdu(15, stub[:10], flags=1))
        pipe.write(request_pdu(15, stub[10:], flags=2))
        frags = self.pdus(pipe)
        self.assertGreater(len(frags), 2)
        joined = b"".join(body[8:] for _, body in frags)
        r = srvs.NetrShareEnumResponse(joined)
        self.assertEqual(r["TotalEntries"], 200)

    def test_unread_replies_bounded(self) -> None:
        """A client that writes calls and never reads the answers is cut off, not buffered for."""
        pipe = Pipe("srvsvc", service())
        pipe.write(bind_pdu([NDR]))
        with self.assertRaises(ProtocolError):
            for _ in range(100_000):
                pipe.write(request_pdu(15, enum_request(1)))
        self.assertLessEqual(len(pipe.pending), MAX_PENDING + 64 * 1024)

    def test_unknown_interface(self) -> None:
        pipe = Pipe("srvsvc", service())
        pipe.write(bind_pdu([NDR], iface=("12345778-1234-abcd-ef00-0123456789ab", "1.0")))
        [(ptype, body)] = self.pdus(pipe)
        self.assertEqual(ptype, PTYPE_BIND_ACK)
        pipe.write(request_pdu(15, enum_request(1)))
        self.assertEqual(self.pdus(pipe)[0][0], PTYPE_FAULT)

    @given(s.binary(max_size=300))
    def test_garbage(self, data: bytes) -> None:
        """Bytes that are not PDUs raise ProtocolError or are answered; input is bounded."""
        pipe = Pipe("srvsvc", service())
        try:
            pipe.write(data)
            pipe.write(b"\x05\x00\x0b\x03\x10\x00\x00\x00" + data)
        except ProtocolError:
            pass
