"""The flexfiles layout codec (L{claudefs_gateway.nfs.pnfs.flexfiles})."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.nfs.pnfs import flexfiles as ff
from claudefs_gateway.rpc.xdr import XDRError

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
devid = st.binary(min_size=16, max_size=16)
sid = st.tuples(u32, st.binary(min_size=12, max_size=12))
ds = st.builds(
    ff.DataServer,
    devid,
    u32,
    sid,
    st.lists(st.binary(max_size=64), max_size=3).map(tuple),
    st.binary(max_size=20),
    st.binary(max_size=20),
)
layouts = st.builds(
    ff.Layout,
    u64,
    st.lists(st.lists(ds, max_size=3).map(tuple), max_size=3).map(tuple),
    u32,
    u32,
)
netaddrs = st.builds(ff.NetAddr, st.binary(max_size=8), st.binary(max_size=40))
devices = st.builds(
    ff.DeviceAddr,
    st.lists(netaddrs, max_size=3).map(tuple),
    st.lists(st.builds(ff.DeviceVersion, u32, u32, u32, u32, st.booleans()), max_size=3).map(tuple),
)
errs = st.builds(ff.DeviceError, devid, u32, u32)
returns = st.builds(
    ff.LayoutReturn,
    st.lists(
        st.builds(ff.IoErr, u64, u64, sid, st.lists(errs, max_size=3).map(tuple)), max_size=3
    ).map(tuple),
    st.lists(st.builds(ff.IoStats, u64, u64, sid, u64, u64, u64, u64, devid), max_size=3).map(
        tuple
    ),
)


class CodecTests(SynchronousTestCase):
    @given(lay=layouts)
    def test_layout_round_trip(self, lay: ff.Layout) -> None:
        self.assertEqual(ff.decode_layout(ff.encode_layout(lay)), lay)

    @given(dev=devices)
    def test_device_round_trip(self, dev: ff.DeviceAddr) -> None:
        self.assertEqual(ff.decode_device(ff.encode_device(dev)), dev)

    @given(r=returns)
    def test_return_round_trip(self, r: ff.LayoutReturn) -> None:
        self.assertEqual(ff.decode_return(ff.encode_return(r)), r)

    def test_empty_return_body(self) -> None:
        """Clients may send no report at all (RFC 8435 §9.3)."""
        self.assertEqual(ff.decode_return(b""), ff.LayoutReturn())

    @given(garbage=st.binary(max_size=300))
    def test_garbage_raises_only_xdrerror(self, garbage: bytes) -> None:
        for decode in (ff.decode_layout, ff.decode_device, ff.decode_return):
            try:
                decode(garbage)
            except XDRError:
                pass

    @given(lay=layouts, cut=st.integers(0, 2000))
    def test_truncated(self, lay: ff.Layout, cut: int) -> None:
        """A layout cut short (or with bytes after it) is an XDRError, never a wrong layout."""
        raw = ff.encode_layout(lay)
        if cut < len(raw):
            with self.assertRaises(XDRError):
                ff.decode_layout(raw[:cut])
        with self.assertRaises(XDRError):
            ff.decode_layout(raw + b"\0\0\0\0")

    def test_netaddr(self) -> None:
        """Universal addresses (RFC 5665): the port as two more dotted numbers."""
        a = ff.netaddr("10.0.2.2", 20490)
        self.assertEqual(a, ff.NetAddr(b"tcp", b"10.0.2.2.80.10"))
        self.assertEqual(ff.parse_netaddr(a), ("10.0.2.2", 20490))
        six = ff.netaddr("::1", 2049)
        self.assertEqual(six, ff.NetAddr(b"tcp6", b"::1.8.1"))
        self.assertEqual(ff.parse_netaddr(six), ("::1", 2049))
        with self.assertRaises(ValueError):
            ff.netaddr("data-1.example", 2049)
        with self.assertRaises(ValueError):
            ff.netaddr("10.0.0.1", 0)
