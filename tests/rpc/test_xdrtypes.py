"""Declarative XDR types (L{claudefs_gateway.rpc.xdrtypes})."""

from __future__ import annotations

import attrs
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.rpc import xdrtypes as x
from claudefs_gateway.rpc.xdr import Packer, Unpacker, XDRError
from tests.rpc.xdr_strategies import values


@x.xdr_struct
@attrs.frozen
class Point:
    a: int = x.field(x.U32)
    b: bytes = x.field(x.Opaque(8))
    c: list[int] = x.field(x.Array(x.I64, 3))


SHAPE = x.Union(
    x.Enum((1, 2, 3), "shape"),
    {1: Point.XDR, 2: x.BOOL},  # type: ignore[attr-defined]
    default=x.VOID,
    name="shape",
)
EVERYTHING = x.Struct(
    attrs.make_class("Everything", ["p", "s", "o", "l", "f", "e"]),
    [
        ("p", Point.XDR),  # type: ignore[attr-defined]
        ("s", SHAPE),
        ("o", x.Optional(x.U64)),
        ("l", x.LinkedList(x.U32, 4)),
        ("f", x.Fixed(5)),
        ("e", x.Union(x.U32, {7: x.I32}, default=x.Opaque(4))),
    ],
)


class TypeTests(SynchronousTestCase):
    @given(v=values(EVERYTHING))
    def test_round_trip(self, v: object) -> None:
        """Whatever a type encodes, it decodes back; encodings are 4-byte aligned."""
        data = EVERYTHING.to_bytes(v)
        self.assertEqual(len(data) % 4, 0)
        self.assertEqual(EVERYTHING.from_bytes(data), v)

    @given(data=st.binary(max_size=200))
    def test_garbage(self, data: bytes) -> None:
        """Any bytes decode or raise XDRError, nothing else."""
        try:
            EVERYTHING.from_bytes(data)
        except XDRError:
            pass

    def test_union_without_default(self) -> None:
        """A discriminant with no arm and no default is an XDRError (and a ValueError to encode)."""
        u = x.Union(x.U32, {1: x.VOID})
        self.assertRaises(XDRError, u.from_bytes, b"\0\0\0\2")
        self.assertRaises(ValueError, u.to_bytes, x.Arm(2))

    def test_enum_refuses_other_values(self) -> None:
        self.assertRaises(XDRError, x.Enum((1, 2)).from_bytes, b"\0\0\0\3")

    def test_bounds_before_allocation(self) -> None:
        """A 4 GiB array length in 8 bytes is refused at once."""
        self.assertRaises(XDRError, x.Array(x.U32).from_bytes, b"\xff\xff\xff\xff\0\0\0\0")
        self.assertRaises(XDRError, x.Opaque(10).from_bytes, b"\0\0\0\x0b" + b"x" * 12)

    def test_encode_checks_bounds(self) -> None:
        self.assertRaises(ValueError, x.Opaque(2).to_bytes, b"abc")
        self.assertRaises(ValueError, x.Array(x.U32, 1).to_bytes, [1, 2])

    def test_opaque_view(self) -> None:
        """A view decodes without copying the buffer."""
        data = Packer()
        data.opaque(b"payload")
        buf = data.bytes()
        got = x.Opaque(view=True).dec(Unpacker(buf))
        self.assertIsInstance(got, memoryview)
        self.assertEqual(bytes(got), b"payload")

    def test_lazy(self) -> None:
        t = x.Lazy(lambda: x.U32)
        self.assertEqual(t.from_bytes(t.to_bytes(5)), 5)
