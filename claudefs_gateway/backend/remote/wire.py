# -*- test-case-name: tests.backend.remote.test_wire -*-
"""
The ClaudeFS RPC codec: frames, and the payload of every opcode (docs/rpc.rst).

Pure bytes ↔ objects, no I/O. Every frame is::

    length  u32 LE   bytes that follow (header + payload), 16 ≤ length ≤ max_frame
    opcode  u32 LE   what is asked (L{OPS})
    kind    u8       0 CALL, 1 REPLY, 2 ERROR, 3 EVENT
    flags   u8       0 (reserved)
    pad     u16      0 (reserved)
    id      u64 LE   request id, chosen by the caller; echoed by REPLY/ERROR; 0 on EVENT
    payload          the opcode's arguments (CALL), result (REPLY), error (ERROR) or event

Payloads are positional, little-endian, with every variable-length field
prefixed by its u32 length and bounded (names 255 bytes, xattr values
64 KiB, data 16 MiB, lists 65536 items). Decoding anything malformed -
short, long, out of range, an unknown enum value, trailing bytes - raises
L{ProtocolError} and nothing else (a hypothesis fuzz holds it to that).
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from claudefs_gateway import errors
from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.fstypes import (
    NOW,
    Attributes,
    DirEntry,
    DirPage,
    FileType,
    FSStat,
    QuotaLimits,
    RenameResult,
    SetAttrs,
    Usage,
    WriteResult,
)

__all__ = [
    "CALL",
    "REPLY",
    "ERROR",
    "EVENT",
    "HEADER",
    "MAX_FRAME",
    "Frame",
    "Op",
    "OPS",
    "BY_NAME",
    "encode_frame",
    "decode_header",
    "encode_error",
    "decode_error",
    "Layout",
    "Hello",
    "ChangeEvent",
]

CALL, REPLY, ERROR, EVENT = 0, 1, 2, 3
KINDS = (CALL, REPLY, ERROR, EVENT)
#: 3: namespace changes (CREATE ... RENAME) answer with the directories' attributes after.
#: 4: CREATE, UNLINK, RMDIR, RENAME, SETATTR and SETXATTR carry C{durable} (SMB's
#: changes need not be synced before their answer), and SYNC makes them durable.
#: 5: WROTE carries the write's time (C{mtime_ns}, 0: the server's clock), so a
#: gateway that answers an unstable write before WROTE is answered (write-behind)
#: gives its client the times the store will hold.
#: also 5: CREATE_OPEN (a create and its share reservation in one call); a change's
#: EV_LOCKS and EV_LEASES are not sent to the gateway that made it; UNLINK, RMDIR
#: and RENAME drop the shared state of an inode whose last link they remove
#: (no RELEASE_INODE follows).
#: 6: EV_CHANGE_LOCKS, an EV_CHANGE and the EV_LOCKS of the same call in one frame
#: (an SMB create's share, a removal's drop of its last open's).
PROTOCOL_VERSION = 6

_HDR = struct.Struct("<IIBBHQ")  # length, opcode, kind, flags, pad, id
HEADER = _HDR.size - 4  # 16: what length counts besides the payload
MAX_DATA = 16 * 1024 * 1024
#: Default bound on one frame's length (a 16 MiB write plus its arguments).
MAX_FRAME = MAX_DATA + 4096
MAX_ITEMS = 65536


# ---------------------------------------------------------------------------
# Primitive codecs.


class Reader:
    """Bounded reads from one payload; every shortfall is a ProtocolError."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes | memoryview) -> None:
        self.buf = memoryview(buf)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise ProtocolError("payload too short")
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def unpack(self, s: struct.Struct) -> tuple[Any, ...]:
        return s.unpack(self.take(s.size))

    def done(self) -> None:
        if self.pos != len(self.buf):
            raise ProtocolError("trailing bytes in payload")


class Codec:
    """One value type: C{enc(value, out)} appends bytes, C{dec(reader)} reads one value."""

    def enc(self, v: Any, out: bytearray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def dec(self, r: Reader) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def whole(self, payload: bytes | memoryview) -> Any:
        """
        One value that must fill C{payload} exactly (what L{decode} asks).
        Codecs of one fixed width answer with one C{unpack}, without a
        L{Reader}.

        @raise ProtocolError: malformed, short, or with trailing bytes.
        """
        r = Reader(payload)
        try:
            value = self.dec(r)
        except ProtocolError:
            raise
        except (struct.error, ValueError, TypeError, OverflowError, IndexError) as e:
            raise ProtocolError(f"malformed payload: {e.__class__.__name__}") from None
        r.done()
        return value


def _size_error(got: int, want: int) -> ProtocolError:
    if got < want:
        return ProtocolError("payload too short")
    return ProtocolError("trailing bytes in payload")


class Fixed(Codec):
    def __init__(self, fmt: str, lo: int, hi: int) -> None:
        self.s = struct.Struct("<" + fmt)
        self.lo, self.hi = lo, hi

    def enc(self, v: Any, out: bytearray) -> None:
        if isinstance(v, bool) or not isinstance(v, int) or not self.lo <= v <= self.hi:
            raise ValueError(f"{v!r} out of range")
        out += self.s.pack(v)

    def dec(self, r: Reader) -> Any:
        # Reader.unpack inlined: this is every integer of every frame.
        s, pos = self.s, r.pos
        end = pos + s.size
        if end > len(r.buf):
            raise ProtocolError("payload too short")
        r.pos = end
        return s.unpack_from(r.buf, pos)[0]


class Bool(Codec):
    def enc(self, v: Any, out: bytearray) -> None:
        out.append(1 if v else 0)

    def dec(self, r: Reader) -> Any:
        b = r.take(1)[0]
        if b > 1:
            raise ProtocolError("bad boolean")
        return b == 1


class Big(Codec):
    """A signed 128-bit integer: offsets, lengths and sizes as the caller gave them
    (the server, not the codec, refuses -1 or 2**63 with the contract's error)."""

    def enc(self, v: Any, out: bytearray) -> None:
        if isinstance(v, float) and v.is_integer():
            # SQLite turns an integer sum past 2**63 into a REAL: send its exact value.
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{v!r} is not an integer")
        out += v.to_bytes(16, "little", signed=True)

    def dec(self, r: Reader) -> Any:
        return int.from_bytes(r.take(16), "little", signed=True)


class Blob(Codec):
    def __init__(self, limit: int) -> None:
        self.limit = limit

    def enc(self, v: Any, out: bytearray) -> None:
        n = len(v)
        if n > self.limit:
            raise ValueError("too long")
        out += _U32.pack(n)
        out += v

    def dec(self, r: Reader) -> Any:
        buf, pos = r.buf, r.pos
        if pos + 4 > len(buf):
            raise ProtocolError("payload too short")
        (n,) = _U32.unpack_from(buf, pos)
        if n > self.limit:
            raise ProtocolError(f"field of {n} bytes exceeds {self.limit}")
        end = pos + 4 + n
        if end > len(buf):
            raise ProtocolError("payload too short")
        r.pos = end
        return bytes(buf[pos + 4 : end])


class Text(Blob):
    def enc(self, v: Any, out: bytearray) -> None:
        super().enc(v.encode("utf-8"), out)

    def dec(self, r: Reader) -> Any:
        try:
            return super().dec(r).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("text is not UTF-8") from None


class Opt(Codec):
    def __init__(self, inner: Codec) -> None:
        self.inner = inner

    def enc(self, v: Any, out: bytearray) -> None:
        if v is None:
            out.append(0)
        else:
            out.append(1)
            self.inner.enc(v, out)

    def dec(self, r: Reader) -> Any:
        tag = r.take(1)[0]
        if tag == 0:
            return None
        if tag != 1:
            raise ProtocolError("bad optional tag")
        return self.inner.dec(r)


class Seq(Codec):
    def __init__(self, inner: Codec, limit: int = MAX_ITEMS) -> None:
        self.inner = inner
        self.limit = limit

    def enc(self, v: Any, out: bytearray) -> None:
        if len(v) > self.limit:
            raise ValueError("too many items")
        out += struct.pack("<I", len(v))
        for item in v:
            self.inner.enc(item, out)

    def dec(self, r: Reader) -> Any:
        (n,) = r.unpack(_U32)
        if n > self.limit:
            raise ProtocolError(f"{n} items exceed {self.limit}")
        return [self.inner.dec(r) for _ in range(n)]


def _compiled(name: str, source: str, namespace: dict[str, Any]) -> Any:
    """A function from generated C{source} (as attrs and namedtuple build theirs)."""
    exec(compile(source, f"<wire {name}>", "exec"), namespace)  # text built from our codecs
    return namespace[name]


class _Flat:
    """
    Fixed-width parts (integers, enums, tuples of those) as one
    C{struct.Struct}: one C{pack}/C{unpack} call where each part was a few
    Python calls. An Attributes took 18 us to decode field by field and is
    in nearly every answer (docs/workers.rst "Where the CPU of a create
    went"). Encoding falls back to the parts on anything C{pack} refuses or
    would take without complaint (a bool), so the errors stay theirs.

    The steps between the struct's values and the parts' (an enum looked
    up, two integers made a tuple) are one generated function each way,
    not a loop over a list of steps per value (docs/workers.rst "What one
    RPC call costs").
    """

    __slots__ = ("s", "plain", "values_of", "flatten", "_count")

    def __init__(self, s: struct.Struct, steps: list[tuple[int, Any]]) -> None:
        self.s = s
        self.plain = all(n == 1 and e is None for n, e in steps)
        self._count = len(steps)
        ns: dict[str, Any] = {"ProtocolError": ProtocolError, "bool": bool, "tuple": tuple}
        reads: list[str] = []
        checks: list[str] = []
        args = [f"a{k}" for k in range(len(steps))]
        flat: list[str] = []
        tuples: list[str] = []
        pos = 0
        for k, (n, enum) in enumerate(steps):
            if n == 1 and enum is None:
                reads.append(f"g[{pos}]")
                flat.append(f"a{k}")
            elif n == 1:
                ns[f"m{k}"] = enum._value2member_map_
                ns[f"e{k}"] = enum
                checks.append(
                    f"    v{k} = m{k}.get(g[{pos}])\n"
                    f"    if v{k} is None:\n"
                    f"        raise ProtocolError(f'unknown {{e{k}.__name__}} {{g[{pos}]}}')\n"
                )
                reads.append(f"v{k}")
                flat.append(f"a{k}")
            else:
                reads.append("(" + "".join(f"g[{pos + j}], " for j in range(n)) + ")")
                tuples.append(
                    f"    if a{k}.__class__ is not tuple or len(a{k}) != {n}:\n"
                    f"        return None\n"
                    f"    ({''.join(f'a{k}_{j}, ' for j in range(n))}) = a{k}\n"
                )
                flat += [f"a{k}_{j}" for j in range(n)]
            pos += n
        #: values_of(unpacked) -> the parts' values, in order (a list).
        self.values_of = _compiled(
            "values_of",
            "def values_of(g):\n" + "".join(checks) + f"    return [{', '.join(reads)}]\n",
            ns,
        )
        #: flatten(parts' values) -> the struct's values, or None if one must
        #: be judged by its part's own codec (a bool, a tuple of the wrong shape).
        any_bool = " or ".join(f"{v}.__class__ is bool" for v in flat)
        self.flatten = _compiled(
            "flatten",
            "def flatten(v):\n"
            f"    ({', '.join(args)},) = v\n" + "".join(tuples) + f"    if {any_bool}:\n"
            "        return None\n"
            f"    return ({', '.join(flat)},)\n",
            ns,
        )

    @classmethod
    def of(cls, parts: Sequence[Codec]) -> _Flat | None:
        fmt, steps = "<", []
        for p in parts:
            if type(p) is Fixed:
                fmt += p.s.format[1:]
                steps.append((1, None))
            elif type(p) is EnumOf:
                fmt += "I"
                steps.append((1, p.enum))
            elif type(p) is Tup and p.flat is not None and p.flat.plain:
                fmt += p.flat.s.format[1:]
                steps.append((len(p.parts), None))
            else:
                return None
        return cls(struct.Struct(fmt), steps) if steps else None

    def values(self, r: Reader) -> list[Any]:
        """The parts' values read from C{r}."""
        got = self.s.unpack(r.take(self.s.size))
        if self.plain:
            return list(got)
        return self.values_of(got)  # type: ignore[no-any-return]

    def pack(self, values: Sequence[Any]) -> bytes | None:
        """The parts' bytes, or None if a part's own codec must judge a value."""
        if len(values) != self._count:
            return None
        flat = self.flatten(values)
        if flat is None:
            return None
        try:
            return self.s.pack(*flat)
        except struct.error:
            return None


class Tup(Codec):
    def __init__(self, *parts: Codec) -> None:
        self.parts = parts
        self.flat = _Flat.of(parts)

    def enc(self, v: Any, out: bytearray) -> None:
        if len(v) != len(self.parts):
            raise ValueError("wrong number of fields")
        if self.flat is not None:
            b = self.flat.pack(v)
            if b is not None:
                out += b
                return
        for p, x in zip(self.parts, v, strict=True):
            p.enc(x, out)

    def dec(self, r: Reader) -> Any:
        if self.flat is not None:
            return tuple(self.flat.values(r))
        return tuple([p.dec(r) for p in self.parts])

    def whole(self, payload: bytes | memoryview) -> Any:
        flat = self.flat
        if flat is None:
            return super().whole(payload)
        s = flat.s
        if len(payload) != s.size:
            raise _size_error(len(payload), s.size)
        got = s.unpack(payload)
        return got if flat.plain else tuple(flat.values_of(got))


class Struct(Codec):
    """An attrs class, field by field in declaration order."""

    def __init__(self, cls: type, fields: Sequence[tuple[str, Codec]]) -> None:
        self.cls = cls
        self.fields = list(fields)
        self.names = [name for name, _ in self.fields]
        self.codecs = [c for _, c in self.fields]
        self.flat = _Flat.of(self.codecs)
        # Positional construction when the fields are the class's, in order.
        params = [f.name for f in attrs.fields(cls) if f.init]  # type: ignore[misc, arg-type]
        self.positional = params[: len(self.names)] == self.names
        # The fields' values in one C call (a tuple), where a list was built name by name.
        self._get = operator.attrgetter(*self.names) if len(self.names) > 1 else None

    def enc(self, v: Any, out: bytearray) -> None:
        if self.flat is not None and self._get is not None:
            b = self.flat.pack(self._get(v))
            if b is not None:
                out += b
                return
        for name, c in self.fields:
            c.enc(getattr(v, name), out)

    def whole(self, payload: bytes | memoryview) -> Any:
        flat = self.flat
        if flat is None or not self.positional:
            return super().whole(payload)
        s = flat.s
        if len(payload) != s.size:
            raise _size_error(len(payload), s.size)
        try:
            if flat.plain:
                return self.cls(*s.unpack(payload))
            return self.cls(*flat.values_of(s.unpack(payload)))
        except (TypeError, ValueError) as e:
            raise ProtocolError(f"bad {self.cls.__name__}: {e}") from None

    def dec(self, r: Reader) -> Any:
        if self.flat is not None:
            values = self.flat.values(r)
        else:
            values = [c.dec(r) for c in self.codecs]
        try:
            if self.positional:
                return self.cls(*values)
            return self.cls(**dict(zip(self.names, values, strict=True)))
        except (TypeError, ValueError) as e:
            raise ProtocolError(f"bad {self.cls.__name__}: {e}") from None


class EnumOf(Codec):
    def __init__(self, enum: Any) -> None:
        self.enum = enum

    def enc(self, v: Any, out: bytearray) -> None:
        out += struct.pack("<I", int(v))

    def dec(self, r: Reader) -> Any:
        (n,) = r.unpack(_U32)
        try:
            return self.enum(n)
        except ValueError:
            raise ProtocolError(f"unknown {self.enum.__name__} {n}") from None


class Choice(Codec):
    """One of a few literal strings, as a u8 index (kinds: "user"/"group")."""

    def __init__(self, *values: str) -> None:
        self.values = values

    def enc(self, v: Any, out: bytearray) -> None:
        out.append(self.values.index(v))

    def dec(self, r: Reader) -> Any:
        i = r.take(1)[0]
        if i >= len(self.values):
            raise ProtocolError("unknown choice")
        return self.values[i]


class TimeSpecCodec(Codec):
    """None, NOW, or nanoseconds: tag u8 (0, 1, 2) then i64 for 2."""

    def enc(self, v: Any, out: bytearray) -> None:
        if v is None:
            out.append(0)
        elif v is NOW:
            out.append(1)
        else:
            out.append(2)
            I64.enc(v, out)

    def dec(self, r: Reader) -> Any:
        tag = r.take(1)[0]
        if tag == 0:
            return None
        if tag == 1:
            return NOW
        if tag == 2:
            return I64.dec(r)
        raise ProtocolError("bad time tag")


class Raw(Codec):
    """The rest of the payload, unbounded here (the frame bounds it): file data."""

    def enc(self, v: Any, out: bytearray) -> None:
        out += v

    def dec(self, r: Reader) -> Any:
        return bytes(r.take(len(r.buf) - r.pos))


class Empty(Codec):
    def enc(self, v: Any, out: bytearray) -> None:
        if v not in (None, ()):
            raise ValueError("expected nothing")

    def dec(self, r: Reader) -> Any:
        return None

    def whole(self, payload: bytes | memoryview) -> Any:
        if len(payload):
            raise ProtocolError("trailing bytes in payload")
        return None


_U32 = struct.Struct("<I")
U8 = Fixed("B", 0, 255)
U32 = Fixed("I", 0, 2**32 - 1)
U64 = Fixed("Q", 0, 2**64 - 1)
I64 = Fixed("q", -(2**63), 2**63 - 1)
BOOL = Bool()
BIG = Big()
NAME = Blob(4096)  # the server checks NAME_MAX; longer names get NameTooLong, not a protocol error
TARGET = Blob(65536)
XNAME = Blob(4096)
XVALUE = Blob(1024 * 1024)
KEY = Text(1024)
STATE = Blob(1024 * 1024)
MESSAGE = Text(1024)
VERIFIER = Blob(64)
KIND = Choice("user", "group")
NOTHING = Empty()
FTYPE = EnumOf(FileType)


ATTRS = Struct(
    Attributes,
    [
        ("ino", U64),
        ("gen", U64),
        ("type", FTYPE),
        ("mode", U32),
        ("nlink", U32),
        ("uid", U32),
        ("gid", U32),
        ("size", U64),
        ("used", U64),
        ("rdev", Tup(U32, U32)),
        ("atime_ns", I64),
        ("mtime_ns", I64),
        ("ctime_ns", I64),
        ("btime_ns", I64),
        ("change", U64),
    ],
)
SETATTRS = Struct(
    SetAttrs,
    [
        ("mode", Opt(U32)),
        ("uid", Opt(U32)),
        ("gid", Opt(U32)),
        ("size", Opt(BIG)),
        ("atime", TimeSpecCodec()),
        ("mtime", TimeSpecCodec()),
        ("btime", TimeSpecCodec()),
    ],
)


class _Tuple(Codec):
    def __init__(self, codec: Codec) -> None:
        self.codec = codec

    def enc(self, v: Any, out: bytearray) -> None:
        self.codec.enc(v, out)

    def dec(self, r: Reader) -> Any:
        return tuple(self.codec.dec(r))


class _DirEntryStruct(Struct):
    """
    L{DirEntry}: the field-by-field L{Struct}'s bytes, read with one
    C{struct} format for the fixed part (a READDIRPLUS answer holds up to
    thousands); encoded field by field.
    """

    _fixed = struct.Struct("<QIQ")

    def dec(self, r: Reader) -> Any:
        name = NAME.dec(r)
        ino, kind, cookie = r.unpack(self._fixed)
        try:
            ftype = FileType(kind)
        except ValueError:
            raise ProtocolError(f"unknown FileType {kind}") from None
        tag = r.take(1)[0]
        if tag == 0:
            a = None
        elif tag == 1:
            a = ATTRS.dec(r)
        else:
            raise ProtocolError("bad optional tag")
        return DirEntry(name, ino, ftype, cookie, a)


DIRENTRY = _DirEntryStruct(
    DirEntry,
    [("name", NAME), ("ino", U64), ("type", FTYPE), ("cookie", U64), ("attrs", Opt(ATTRS))],
)
DIRPAGE = Struct(
    DirPage, [("entries", _Tuple(Seq(DIRENTRY))), ("verifier", VERIFIER), ("eof", BOOL)]
)
FSSTAT = Struct(
    FSStat,
    [
        ("total_bytes", U64),
        ("free_bytes", U64),
        ("avail_bytes", U64),
        ("total_files", U64),
        ("free_files", U64),
        ("avail_files", U64),
        ("block_size", U32),
        ("name_max", U32),
    ],
)
USAGE = Struct(Usage, [("bytes", BIG), ("inodes", BIG)])
QUOTA = Struct(
    QuotaLimits,
    [("bytes_soft", U64), ("bytes_hard", U64), ("inodes_soft", U64), ("inodes_hard", U64)],
)
WRITERESULT = Struct(
    WriteResult, [("count", U64), ("stable", BOOL), ("attrs", ATTRS), ("before", Opt(ATTRS))]
)
RENAMERESULT = Struct(RenameResult, [("source", ATTRS), ("replaced", Opt(ATTRS))])
#: The directories a namespace change changed, as they were after it (the
#: parent; for RENAME the source directory, then the destination if another):
#: the gateway caches them instead of asking GETATTR for the reply's wcc data.
#: A directory that went meanwhile is left out.
DIRS = _Tuple(Seq(ATTRS, 2))


class _Dict(Codec):
    def __init__(self, key: Codec, value: Codec) -> None:
        self.seq = Seq(Tup(key, value))

    def enc(self, v: Any, out: bytearray) -> None:
        self.seq.enc(sorted(v.items()), out)

    def dec(self, r: Reader) -> Any:
        return dict(self.seq.dec(r))


@attrs.frozen
class Layout:
    """
    Where a file's bytes live (pNFS hands this to clients later).

    @ivar stripe_unit: bytes per stripe; byte C{o} is on
        C{servers[(o // stripe_unit) % len(servers)]}.
    @ivar mirrors: copies of each stripe (consecutive servers hold the copies).
    @ivar servers: data server addresses ("host:port").
    """

    stripe_unit: int
    mirrors: int
    servers: tuple[str, ...]

    def server_for(self, offset: int) -> str:
        return self.servers[(offset // self.stripe_unit) % len(self.servers)]

    def copies_for(self, offset: int) -> tuple[str, ...]:
        """The servers holding the stripe of byte C{offset}: the first, then its mirrors."""
        n = len(self.servers)
        k = offset // self.stripe_unit
        m = max(1, min(self.mirrors, n))
        return tuple(self.servers[(k + j) % n] for j in range(m))


LAYOUT = Struct(
    Layout, [("stripe_unit", U64), ("mirrors", U32), ("servers", _Tuple(Seq(Text(300), 64)))]
)


@attrs.frozen
class Hello:
    """The first exchange on a connection: versions, roles, the store's identity."""

    version: int
    role: str  # "gateway" (client), "meta", "data"
    session: int  # the client's random session id (events it caused carry it)
    instance_id: bytes  # the store's 8-byte instance id (meta), else 8 zero bytes
    #: The server process's random boot id (8 bytes, new at every start; a
    #: client sends 8 zero bytes). A gateway that sees it change for a server
    #: knows unstable writes acknowledged there may be gone, and changes the
    #: NFS write verifier its clients see.
    boot: bytes = bytes(8)


HELLO = Struct(
    Hello,
    [
        ("version", U32),
        ("role", Text(16)),
        ("session", U64),
        ("instance_id", VERIFIER),
        ("boot", VERIFIER),
    ],
)


@attrs.frozen
class ChangeEvent:
    """
    The meta server's word that an inode changed (EVENT frame of EV_CHANGE).

    @ivar session: the session whose call made the change (0: the server itself).
    @ivar dir: the directory whose entries changed, or 0.
    """

    session: int
    ino: int
    dir: int


CHANGE = Struct(ChangeEvent, [("session", U64), ("ino", U64), ("dir", U64)])


# ---------------------------------------------------------------------------
# The opcode table.


@attrs.frozen
class Op:
    """
    One opcode.

    @ivar server: which server serves it: C{"meta"}, C{"data"} or C{"any"}.
    @ivar idempotent: sending it twice has the effect of sending it once
        (the client may retry it after a lost connection).
    @ivar served: False for opcodes designed but not served by this version
        (the server answers them with NotSupp).
    """

    code: int
    name: str
    args: Codec
    result: Codec
    server: str
    idempotent: bool
    served: bool = True
    doc: str = ""


def _ops(*ops: Op) -> dict[int, Op]:
    table: dict[int, Op] = {}
    for op in ops:
        assert op.code not in table, op
        table[op.code] = op
    return table


OWNER = Tup(Text(16), Blob(1024), Blob(1024))
#: EV_LOCKS: ino, every lock (session, owner, start, length, exclusive) and share.
LOCKS_EVENT = Tup(U64, Seq(Tup(U64, OWNER, BIG, BIG, BOOL)), Seq(Tup(U64, OWNER, U8, U8)))
_CLIENT = Tup(
    Choice("nfs4", "nlm"), Blob(1024)
)  # protocol, client (co_ownerid, caller name)  # protocol, client, owner (vfs.locks.LockOwner)

OPS: dict[int, Op] = _ops(
    # -- session
    Op(0x01, "HELLO", HELLO, HELLO, "any", True, doc="versions and roles; first on a connection"),
    Op(0x02, "HEARTBEAT", NOTHING, NOTHING, "any", True, doc="liveness probe (pool health checks)"),
    Op(0x03, "SUBSCRIBE", BOOL, NOTHING, "meta", True, doc="start (true) or stop change events"),
    # -- metadata reads
    Op(0x10, "ROOT", NOTHING, ATTRS, "meta", True),
    Op(0x11, "GETATTR", Tup(U64), ATTRS, "meta", True),
    Op(0x12, "LOOKUP", Tup(U64, NAME), ATTRS, "meta", True),
    Op(
        0x13,
        "READDIR",
        Tup(U64, U64, VERIFIER, U32, BOOL),
        DIRPAGE,
        "meta",
        True,
        doc="dir, cookie, verifier, count, with_attrs",
    ),
    Op(0x14, "READLINK", Tup(U64), TARGET, "meta", True),
    Op(0x15, "STATFS", NOTHING, FSSTAT, "meta", True),
    Op(0x16, "GETXATTR", Tup(U64, XNAME), XVALUE, "meta", True),
    Op(0x17, "LISTXATTR", Tup(U64), Seq(XNAME), "meta", True),
    Op(0x18, "USAGE", Tup(KIND, U64), USAGE, "meta", True),
    Op(0x19, "ALL_USAGE", Tup(KIND), _Dict(U64, USAGE), "meta", True),
    Op(0x1A, "GET_QUOTA", Tup(KIND, U64), Opt(QUOTA), "meta", True),
    Op(0x1B, "LIST_QUOTAS", Tup(KIND), _Dict(U64, QUOTA), "meta", True),
    Op(0x1C, "GET_STATE", Tup(KEY), Opt(STATE), "meta", True),
    Op(0x1D, "LAYOUT_GET", Tup(U64), LAYOUT, "meta", True, doc="where the file's bytes live"),
    # -- metadata writes
    Op(
        0x20,
        "CREATE",
        Tup(U64, NAME, FTYPE, U32, U32, U32, Tup(U32, U32), BOOL),
        Tup(ATTRS, DIRS),
        "meta",
        False,
        doc="parent, name, type, mode, uid, gid, rdev, durable; answers the inode and the "
        "parent after",
    ),
    Op(0x21, "SYMLINK", Tup(U64, NAME, TARGET, U32, U32, U32), Tup(ATTRS, DIRS), "meta", False),
    Op(0x22, "LINK", Tup(U64, U64, NAME), Tup(ATTRS, DIRS), "meta", False),
    Op(0x23, "UNLINK", Tup(U64, NAME, BOOL), Tup(ATTRS, DIRS), "meta", False),
    Op(0x24, "RMDIR", Tup(U64, NAME, BOOL), Tup(ATTRS, DIRS), "meta", False),
    Op(
        0x25,
        "RENAME",
        Tup(U64, NAME, U64, NAME, BOOL),
        Tup(RENAMERESULT, DIRS),
        "meta",
        False,
        doc="answers the result and the source, then destination, directory after",
    ),
    Op(0x26, "SETATTR", Tup(U64, SETATTRS, Opt(I64), BOOL), ATTRS, "meta", True),
    Op(0x27, "SETXATTR", Tup(U64, XNAME, XVALUE, Opt(BOOL), BOOL), NOTHING, "meta", False),
    Op(0x28, "REMOVEXATTR", Tup(U64, XNAME), NOTHING, "meta", False),
    Op(0x29, "SET_QUOTA", Tup(KIND, U64, Opt(QUOTA)), NOTHING, "meta", True),
    Op(0x2A, "SET_STATE", Tup(KEY, Opt(STATE)), NOTHING, "meta", True),
    Op(
        0x2B,
        "WROTE",
        Tup(U64, BIG, BIG, U8, BOOL, I64),
        WRITERESULT,
        "meta",
        False,
        doc="ino, offset, length, what (0 write, 1 allocate, 2 deallocate), stable, "
        "mtime_ns (a write's time; 0: the server's clock): data landed on a data "
        "server; size, times, change and usage follow (durable at once if stable, "
        "else by the next COMMIT_META)",
    ),
    Op(
        0x2C,
        "COMMIT_META",
        Tup(U64),
        ATTRS,
        "meta",
        True,
        doc="make every earlier change to the inode durable (the metadata half of COMMIT)",
    ),
    Op(
        0x2D,
        "SYNC",
        NOTHING,
        NOTHING,
        "meta",
        True,
        doc="make every change answered so far durable, those sent with durable false too "
        "(SMB's FLUSH, write-through, its background metadata flush)",
    ),
    Op(
        0x2E,
        "CREATE_OPEN",
        Tup(U64, NAME, FTYPE, U32, U32, U32, Tup(U32, U32), BOOL, OWNER, U64, U8, U8),
        Tup(ATTRS, DIRS, BOOL),
        "meta",
        False,
        doc="CREATE, then SHARE_OPEN of the new inode (owner, share id, access, deny) in "
        "the same call: answers CREATE's result and whether the share was registered "
        "(false: the gateway sends SHARE_OPEN itself)",
    ),
    # -- data (the data server)
    Op(0x30, "READ", Tup(U64, BIG, BIG), Tup(BOOL, Raw()), "data", True, doc="ino, offset, length"),
    Op(
        0x31,
        "WRITE",
        Tup(U64, BIG, BOOL, Raw()),
        NOTHING,
        "data",
        True,
        doc="ino, offset, stable, data (the rest of the payload)",
    ),
    Op(0x32, "COMMIT", Tup(U64), NOTHING, "data", True),
    Op(0x33, "ALLOCATE", Tup(U64, BIG, BIG), NOTHING, "data", True),
    Op(0x34, "DEALLOCATE", Tup(U64, BIG, BIG), NOTHING, "data", True),
    Op(0x35, "TRUNCATE", Tup(U64, BIG), NOTHING, "data", True, doc="drop bytes at and past size"),
    Op(0x36, "FORGET", Tup(U64), NOTHING, "data", True, doc="the inode is gone: free its chunks"),
    Op(0x37, "DATA_STATFS", NOTHING, FSSTAT, "data", True),
    Op(
        0x38,
        "PNFS_INFO",
        NOTHING,
        Tup(Blob(64), Text(300)),
        "data",
        True,
        doc="the data server's fencing key and its NFSv3 address (host:port, or empty "
        "when it serves no pNFS clients)",
    ),
    Op(
        0x39,
        "PNFS_FENCE",
        Tup(U64, U32),
        NOTHING,
        "data",
        True,
        doc="ino, epoch: refuse the inode's data-server handles minted below epoch "
        "(a revoked layout); durable when it answers",
    ),
    # -- locks, share reservations, leases: the shared state (the meta server)
    Op(
        0x40,
        "LOCK",
        Tup(U64, OWNER, BIG, BIG, BOOL, BOOL),
        NOTHING,
        "meta",
        False,
        doc="ino, owner, start, length, exclusive, reclaim: take a byte-range lock or fail "
        "at once with LockConflict (a gateway waits for EV_LOCKS of the inode and asks again)",
    ),
    Op(0x41, "UNLOCK", Tup(U64, OWNER, BIG, BIG), NOTHING, "meta", True),
    Op(
        0x42,
        "RELEASE_OWNER",
        Tup(OWNER),
        NOTHING,
        "meta",
        True,
        doc="an owner's locks and shares go",
    ),
    Op(0x43, "RELEASE_INODE", Tup(U64), NOTHING, "meta", True, doc="the file is gone"),
    Op(
        0x44,
        "SHARE_OPEN",
        Tup(U64, OWNER, U64, U8, U8, BOOL),
        NOTHING,
        "meta",
        False,
        doc="ino, owner, share id (the gateway's), access, deny (bits: read 1, write 2, "
        "delete 4), reclaim: reserve an open, or fail with ShareConflict",
    ),
    Op(0x45, "SHARE_CLOSE", Tup(U64), NOTHING, "meta", True, doc="share id"),
    Op(
        0x46,
        "SHARE_SET",
        Tup(U64, U8, U8),
        NOTHING,
        "meta",
        False,
        doc="share id, access, deny: an open's modes upgraded or downgraded",
    ),
    Op(
        0x47,
        "LEASE_HOLD",
        Tup(U64, U8),
        NOTHING,
        "meta",
        True,
        doc="ino, bits (R 1, W 2, H 4): what this gateway's clients hold on the inode "
        "altogether now (0: nothing)",
    ),
    Op(
        0x48,
        "LEASE_RECALL",
        Tup(U64, Text(16)),
        NOTHING,
        "meta",
        True,
        doc="ino, why (vfs.leases.Why): answers once every other gateway holding more "
        "than why lets others keep has broken its holders (EV_LEASE_BREAK, LEASE_BREAK_ACK) "
        "or the recall timed out",
    ),
    Op(0x49, "LEASE_BREAK_ACK", Tup(U64), NOTHING, "meta", True, doc="break id: done"),
    Op(
        0x4A,
        "RELEASE_CLIENT",
        Tup(Text(16), Blob(1024)),
        NOTHING,
        "meta",
        True,
        doc="protocol, client: drop every lock and share of a client",
    ),
    Op(
        0x4B,
        "SESSION_RESET",
        NOTHING,
        NOTHING,
        "meta",
        True,
        doc="drop everything this session holds (a gateway that will send its state again)",
    ),
    Op(
        0x4C,
        "LEASE_GRANT",
        Tup(U64, U8),
        U8,
        "meta",
        False,
        doc="ino, bits: a lease this gateway is granting; answers what it may keep "
        "(one writer, and a writer alone, over every gateway; less while another "
        "gateway's recall of the inode is out), then counted as held (EV_LEASES)",
    ),
    Op(
        0x4D,
        "LOCK_WAIT",
        Tup(U64, OWNER, BIG, BIG, BOOL),
        NOTHING,
        "meta",
        True,
        doc="ino, owner, start, length, exclusive: this owner's blocking request waits "
        "(after LockConflict); fails with Deadlock if the holders it waits for wait, in "
        "turn, for it (servers/deadlocks.py)",
    ),
    Op(0x4E, "LOCK_UNWAIT", Tup(OWNER), NOTHING, "meta", True, doc="the owner waits no more"),
    # -- client records and grace (servers/clients.py)
    Op(
        0x60,
        "CLIENT_NOTE",
        _CLIENT,
        NOTHING,
        "meta",
        True,
        doc="protocol, client (NFSv4 co_ownerid, NLM caller name): this gateway serves "
        "the client; if this gateway goes, the client may reclaim through any other",
    ),
    Op(
        0x61,
        "CLIENT_FORGET",
        _CLIENT,
        NOTHING,
        "meta",
        True,
        doc="protocol, client: gone for good (destroyed, expired, unmonitored)",
    ),
    Op(
        0x62,
        "CLIENT_RECLAIMED",
        _CLIENT,
        NOTHING,
        "meta",
        True,
        doc="protocol, client: its RECLAIM_COMPLETE; grace ends when no client is left to reclaim",
    ),
    # -- events (EVENT frames, server to client)
    Op(0x50, "EV_CHANGE", NOTHING, CHANGE, "meta", True, doc="an inode changed"),
    Op(
        0x51,
        "EV_LEASE_BREAK",
        NOTHING,
        Tup(U64, U64, Text(16)),
        "meta",
        True,
        doc="break id, ino, why: break your holders on ino, then LEASE_BREAK_ACK",
    ),
    Op(
        0x53,
        "EV_LOCKS",
        NOTHING,
        LOCKS_EVENT,
        "meta",
        True,
        doc="ino, every lock (session, owner, start, length, exclusive) and share "
        "(session, owner, access, deny) held on it now",
    ),
    Op(
        0x54,
        "EV_LEASES",
        NOTHING,
        Tup(U64, Seq(Tup(U64, U8))),
        "meta",
        True,
        doc="ino, every (session, bits) holding leases on it now",
    ),
    Op(
        0x56,
        "EV_CHANGE_LOCKS",
        NOTHING,
        Tup(CHANGE, LOCKS_EVENT),
        "meta",
        True,
        doc="an EV_CHANGE and the EV_LOCKS of the same call, to the gateways that would "
        "have had both (protocol version 6)",
    ),
    Op(
        0x55,
        "EV_GRACE",
        NOTHING,
        Tup(U64, Seq(_CLIENT), Seq(_CLIENT)),
        "meta",
        True,
        doc="milliseconds of cross-gateway grace left (0: over), the clients that may "
        "reclaim (non-reclaim LOCK and SHARE_OPEN fail with Grace meanwhile), and the "
        "clients of gateways that may be gone (a reclaim is told to try again)",
    ),
)

BY_NAME: dict[str, Op] = {op.name: op for op in OPS.values()}
#: Errors for the server (and client) to leave the connection after.
FATAL = "ProtocolError"


# ---------------------------------------------------------------------------
# Frames.


@attrs.frozen
class Frame:
    opcode: int
    kind: int
    id: int
    payload: bytes | memoryview


def encode_frame(
    opcode: int, kind: int, rid: int, payload: bytes | bytearray | memoryview
) -> list[Any]:
    """The frame as pieces for C{writeSequence} (large payloads are not copied)."""
    header = _HDR.pack(HEADER + len(payload), opcode, kind, 0, 0, rid)
    if len(payload) < 4096:
        return [header + bytes(payload)]
    return [header, payload if isinstance(payload, bytes) else bytes(payload)]


_BLANK_HEADER = bytes(_HDR.size)
_pack_header = _HDR.pack_into


def frame(opcode: int, kind: int, rid: int, codec: Codec, value: Any) -> bytearray:
    """
    One whole frame: C{value} encoded by C{codec} behind its header, in one
    buffer. The payload is written where it will be sent, not encoded apart
    and then copied behind a header (two copies and a list per call and per
    reply before; docs/workers.rst "What one RPC call costs").

    @raise ValueError, TypeError, OverflowError, AttributeError: C{value}
        does not fit C{codec} (as L{encode}).
    """
    out = bytearray(_BLANK_HEADER)
    codec.enc(value, out)
    _pack_header(out, 0, len(out) - 4, opcode, kind, 0, 0, rid)
    return out


def decode_header(
    buf: bytes | bytearray | memoryview, max_frame: int = MAX_FRAME
) -> tuple[int, int, int, int]:
    """
    (length, opcode, kind, id) from the first 20 bytes.

    @raise ProtocolError: length outside [16, max_frame], unknown kind, or
        reserved bits set.
    """
    length, opcode, kind, flags, pad, rid = _HDR.unpack(buf[: _HDR.size])
    if length < HEADER or length > max_frame:
        raise ProtocolError(f"frame length {length} outside {HEADER}..{max_frame}")
    if kind not in KINDS:
        raise ProtocolError(f"unknown frame kind {kind}")
    if flags or pad:
        raise ProtocolError("reserved header bits set")
    return length, opcode, kind, rid


def encode(codec: Codec, value: Any) -> bytearray:
    out = bytearray()
    codec.enc(value, out)
    return out


def decode(codec: Codec, payload: bytes | memoryview) -> Any:
    """@raise ProtocolError: payload malformed, short or with trailing bytes."""
    return codec.whole(payload)


# ---------------------------------------------------------------------------
# Errors: by class name, with one table (STYLE.md §7, as names/common.py's _errormap).

_ERROR_CLASSES: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (
        *errors.FS_ERRORS,
        errors.LockConflict,
        errors.ShareConflict,
        errors.BackendUnavailable,
        errors.UnstableLost,
        errors.Timeout,
        errors.ProtocolError,
    )
}
_ERRBODY = Tup(Text(64), U32, MESSAGE)


def encode_error(e: BaseException) -> bytearray:
    """An ERROR payload: class name, errno, a message for logs (no paths, hosts or secrets)."""
    name = type(e).__name__
    if name not in _ERROR_CLASSES:
        name = "IO"
    number = getattr(e, "errno", 0) or 0
    message = str(e)[:256]
    return encode(_ERRBODY, (name, number if 0 <= number < 2**32 else 0, message))


def decode_error(payload: bytes | memoryview) -> Exception:
    """The exception an ERROR payload names; unknown names become L{errors.IO}."""
    name, _number, message = decode(_ERRBODY, payload)
    cls = _ERROR_CLASSES.get(name, errors.IO)
    if cls is errors.LockConflict:
        return errors.LockConflict(None, message)
    return cls(message)


def call_payload(op: Op, args: Any) -> bytearray:
    return encode(op.args, args)


Handler = Callable[..., Any]


def _describe(c: Codec) -> str:
    """A codec's shape for the wire spec."""
    names = {
        id(U8): "u8",
        id(U32): "u32",
        id(U64): "u64",
        id(I64): "i64",
        id(BOOL): "bool",
        id(BIG): "i128",
        id(ATTRS): "Attributes",
        id(SETATTRS): "SetAttrs",
        id(DIRPAGE): "DirPage",
        id(DIRENTRY): "DirEntry",
        id(FSSTAT): "FSStat",
        id(USAGE): "Usage",
        id(QUOTA): "QuotaLimits",
        id(WRITERESULT): "WriteResult",
        id(RENAMERESULT): "RenameResult",
        id(LAYOUT): "Layout",
        id(HELLO): "Hello",
        id(CHANGE): "ChangeEvent",
        id(KIND): "kind",
        id(FTYPE): "FileType",
        id(OWNER): "Owner",
        id(_CLIENT): "Client",
        id(NOTHING): "-",
    }
    if id(c) in names:
        return names[id(c)]
    if isinstance(c, Text):
        return f"str≤{c.limit}"
    if isinstance(c, Blob):
        return f"bytes≤{c.limit}"
    if isinstance(c, Opt):
        return f"opt {_describe(c.inner)}"
    if isinstance(c, Seq):
        return f"[{_describe(c.inner)}]"
    if isinstance(c, _Tuple):
        return _describe(c.codec)
    if isinstance(c, Tup):
        return "(" + ", ".join(_describe(p) for p in c.parts) + ")"
    if isinstance(c, _Dict):
        inner = c.seq.inner
        assert isinstance(inner, Tup)
        return "{" + _describe(inner.parts[0]) + ": " + _describe(inner.parts[1]) + "}"
    if isinstance(c, TimeSpecCodec):
        return "TimeSpec"
    if isinstance(c, Raw):
        return "data…"
    return type(c).__name__


def opcode_table() -> str:
    """The opcode table of docs/rpc.rst (a test keeps the page in step)."""
    rows = [("code", "name", "server", "idem.", "arguments", "result")]
    for op in sorted(OPS.values(), key=lambda o: o.code):
        rows.append(
            (
                f"0x{op.code:02x}",
                op.name + ("" if op.served else " †"),
                op.server,
                "yes" if op.idempotent else "no",
                _describe(op.args),
                _describe(op.result),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    rule = "  ".join("=" * w for w in widths)
    lines = [
        rule,
        "  ".join(v.ljust(w) for v, w in zip(rows[0], widths, strict=True)).rstrip(),
        rule,
    ]
    for r in rows[1:]:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    lines.append(rule)
    return "\n".join(lines) + "\n"
