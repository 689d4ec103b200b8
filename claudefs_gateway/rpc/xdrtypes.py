# -*- test-case-name: tests.rpc.test_xdrtypes -*-
"""
Declarative XDR (RFC 4506): a type is an object that decodes and encodes.

NFSv4 has some three hundred structures, unions and arrays; writing a
decoder and an encoder by hand for each is how codecs grow bugs in the half
that tests do not reach. Here each XDR type is described once, as a value
(L{U32}, L{Opaque}, L{Array}, L{Struct}, L{Union}...), and the description
both decodes (L{XType.dec}, from an L{Unpacker}) and encodes (L{XType.enc},
into a L{Packer}). Round trips, "any split" and garbage tests then cover
every type through one generic strategy (C{tests/rpc/test_xdrtypes.py}).

Decoding keeps the bounds of L{claudefs_gateway.rpc.xdr}: every length is
checked against the type's limit and against the bytes actually present
before anything is allocated, so garbage raises only L{XDRError} (a
L{ProtocolError}). Structures decode into attrs classes declared with
L{field} (L{xdr_struct} reads the declaration), unions into L{Arm} values
(the discriminant and the arm's value), optional data into a value or
L{None}.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import attrs

from claudefs_gateway.rpc.xdr import Packer, Unpacker, XDRError

__all__ = [
    "XType",
    "U32",
    "I32",
    "U64",
    "I64",
    "BOOL",
    "VOID",
    "Enum",
    "Opaque",
    "Fixed",
    "Array",
    "Optional",
    "LinkedList",
    "Struct",
    "Union",
    "Arm",
    "field",
    "xdr_struct",
    "Lazy",
]

T = TypeVar("T")


class XType:
    """An XDR type: decodes from an L{Unpacker}, encodes into a L{Packer}."""

    __slots__ = ()

    def dec(self, u: Unpacker) -> Any:
        raise NotImplementedError

    def enc(self, p: Packer, v: Any) -> None:
        raise NotImplementedError

    def to_bytes(self, v: Any) -> bytes:
        p = Packer()
        self.enc(p, v)
        return p.bytes()

    def from_bytes(self, data: bytes) -> Any:
        """Decode a whole buffer. @raise XDRError: malformed or trailing bytes."""
        u = Unpacker(data)
        v = self.dec(u)
        u.done()
        return v


class _U32(XType):
    __slots__ = ()

    def dec(self, u: Unpacker) -> int:
        return u.u32()

    def enc(self, p: Packer, v: int) -> None:
        p.u32(v)

    def __repr__(self) -> str:
        return "U32"


class _I32(XType):
    __slots__ = ()

    def dec(self, u: Unpacker) -> int:
        return u.i32()

    def enc(self, p: Packer, v: int) -> None:
        p.i32(v)

    def __repr__(self) -> str:
        return "I32"


class _U64(XType):
    __slots__ = ()

    def dec(self, u: Unpacker) -> int:
        return u.u64()

    def enc(self, p: Packer, v: int) -> None:
        p.u64(v)

    def __repr__(self) -> str:
        return "U64"


class _I64(XType):
    __slots__ = ()

    def dec(self, u: Unpacker) -> int:
        return u.i64()

    def enc(self, p: Packer, v: int) -> None:
        p.i64(v)

    def __repr__(self) -> str:
        return "I64"


class _Bool(XType):
    __slots__ = ()

    def dec(self, u: Unpacker) -> bool:
        return u.bool()

    def enc(self, p: Packer, v: bool) -> None:
        p.bool(v)

    def __repr__(self) -> str:
        return "BOOL"


class _Void(XType):
    __slots__ = ()

    def dec(self, u: Unpacker) -> None:
        return None

    def enc(self, p: Packer, v: None) -> None:
        return None

    def __repr__(self) -> str:
        return "VOID"


U32 = _U32()
I32 = _I32()
U64 = _U64()
I64 = _I64()
BOOL = _Bool()
VOID = _Void()


class Enum(XType):
    """An unsigned 32-bit value that must be one of C{values}."""

    __slots__ = ("values", "name")

    def __init__(self, values: Sequence[int] | set[int] | frozenset[int], name: str = "") -> None:
        self.values = frozenset(values)
        self.name = name

    def dec(self, u: Unpacker) -> int:
        v = u.u32()
        if v not in self.values:
            raise XDRError(f"{self.name or 'enum'} value {v} not allowed")
        return v

    def enc(self, p: Packer, v: int) -> None:
        p.u32(v)

    def __repr__(self) -> str:
        return f"Enum({self.name})"


class Opaque(XType):
    """Variable-length opaque data (or an XDR string) of at most C{limit} bytes."""

    __slots__ = ("limit", "view")

    def __init__(self, limit: int = 2**32 - 1, view: bool = False) -> None:
        self.limit = limit
        # A view into the record instead of a copy (bulk data passed on, not kept).
        self.view = view

    def dec(self, u: Unpacker) -> bytes | memoryview:
        if self.view:
            return u.opaque_view(self.limit)
        return u.opaque(self.limit)

    def enc(self, p: Packer, v: bytes) -> None:
        if len(v) > self.limit:
            raise ValueError(f"opaque of {len(v)} bytes exceeds its bound {self.limit}")
        p.opaque(v)

    def __repr__(self) -> str:
        return f"Opaque({self.limit})"


class Fixed(XType):
    """Fixed-length opaque data of C{n} bytes."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def dec(self, u: Unpacker) -> bytes:
        return u.fixed(self.n)

    def enc(self, p: Packer, v: bytes) -> None:
        p.fixed(v, self.n)

    def __repr__(self) -> str:
        return f"Fixed({self.n})"


class Array(XType):
    """A variable-length array of at most C{limit} items (a Python list)."""

    __slots__ = ("item", "limit")

    def __init__(self, item: XType, limit: int = 2**32 - 1) -> None:
        self.item = item
        self.limit = limit

    def dec(self, u: Unpacker) -> list[Any]:
        return u.array(self.limit, self.item.dec)

    def enc(self, p: Packer, v: Sequence[Any]) -> None:
        if len(v) > self.limit:
            raise ValueError(f"array of {len(v)} items exceeds its bound {self.limit}")
        p.u32(len(v))
        enc = self.item.enc
        for x in v:
            enc(p, x)

    def __repr__(self) -> str:
        return f"Array({self.item!r}, {self.limit})"


class Optional(XType):
    """XDR optional-data (C{T *}): the value, or L{None}."""

    __slots__ = ("item",)

    def __init__(self, item: XType) -> None:
        self.item = item

    def dec(self, u: Unpacker) -> Any:
        return self.item.dec(u) if u.bool() else None

    def enc(self, p: Packer, v: Any) -> None:
        if v is None:
            p.bool(False)
        else:
            p.bool(True)
            self.item.enc(p, v)

    def __repr__(self) -> str:
        return f"Optional({self.item!r})"


class LinkedList(XType):
    """An XDR linked list (C{struct T { ...; T *next; }}) as a Python list, at most C{limit} items."""

    __slots__ = ("item", "limit")

    def __init__(self, item: XType, limit: int = 2**32 - 1) -> None:
        self.item = item
        self.limit = limit

    def dec(self, u: Unpacker) -> list[Any]:
        return u.linked_list(self.limit, self.item.dec)

    def enc(self, p: Packer, v: Sequence[Any]) -> None:
        for x in v:
            p.bool(True)
            self.item.enc(p, x)
        p.bool(False)

    def __repr__(self) -> str:
        return f"LinkedList({self.item!r})"


class Struct(XType):
    """
    An XDR structure decoded into C{cls} (an attrs class whose fields are
    the structure's members, in order; see L{xdr_struct}).
    """

    __slots__ = ("cls", "names", "types")

    def __init__(self, cls: type, members: Sequence[tuple[str, XType]]) -> None:
        self.cls = cls
        self.names = tuple(n for n, _ in members)
        self.types = tuple(t for _, t in members)

    def dec(self, u: Unpacker) -> Any:
        return self.cls(*[t.dec(u) for t in self.types])

    def enc(self, p: Packer, v: Any) -> None:
        for name, t in zip(self.names, self.types, strict=True):
            t.enc(p, getattr(v, name))

    def __repr__(self) -> str:
        return f"Struct({self.cls.__name__})"


@attrs.frozen(slots=True)
class Arm:
    """A decoded union: its discriminant and the value of the arm it selects."""

    tag: int
    value: Any = None


_NO_DEFAULT = object()


class Union(XType):
    """
    An XDR discriminated union. C{arms} maps each discriminant to its arm's
    type (L{VOID} for C{void}); C{default} is the type of the C{default:}
    arm, or absent for a union without one (another discriminant is then
    an L{XDRError}). Values are L{Arm}s.
    """

    __slots__ = ("disc", "arms", "default", "name")

    def __init__(
        self,
        disc: XType,
        arms: Mapping[int, XType],
        default: Any = _NO_DEFAULT,
        name: str = "",
    ) -> None:
        self.disc = disc
        self.arms = dict(arms)
        self.default = default
        self.name = name

    def _arm(self, tag: int) -> XType:
        t = self.arms.get(tag)
        if t is not None:
            return t
        if self.default is _NO_DEFAULT:
            raise XDRError(f"{self.name or 'union'} discriminant {tag} has no arm")
        d: XType = self.default
        return d

    def dec(self, u: Unpacker) -> Arm:
        tag = self.disc.dec(u)
        return Arm(tag, self._arm(tag).dec(u))

    def enc(self, p: Packer, v: Arm) -> None:
        self.disc.enc(p, v.tag)
        try:
            arm = self._arm(v.tag)
        except XDRError as e:
            raise ValueError(str(e)) from None
        arm.enc(p, v.value)

    def __repr__(self) -> str:
        return f"Union({self.name})"


class Lazy(XType):
    """A type defined later (recursive structures): C{Lazy(lambda: T)}."""

    __slots__ = ("_get", "_t")

    def __init__(self, get: Callable[[], XType]) -> None:
        self._get = get
        self._t: XType | None = None

    @property
    def target(self) -> XType:
        if self._t is None:
            self._t = self._get()
        return self._t

    def dec(self, u: Unpacker) -> Any:
        return self.target.dec(u)

    def enc(self, p: Packer, v: Any) -> None:
        self.target.enc(p, v)


def field(t: XType) -> Any:
    """An attrs field carrying its XDR type (read by L{xdr_struct})."""
    return attrs.field(metadata={"xdr": t})


def xdr_struct(cls: type[T]) -> type[T]:
    """
    Give an attrs class declared with L{field}s its XDR description as
    C{cls.XDR} (a L{Struct}), members in declaration order.
    """
    members = [(f.name, f.metadata["xdr"]) for f in attrs.fields(cls)]  # type: ignore[misc, arg-type]
    cls.XDR = Struct(cls, members)  # type: ignore[attr-defined]
    return cls
