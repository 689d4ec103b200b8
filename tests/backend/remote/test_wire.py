"""
Tests for L{claudefs_gateway.backend.remote.wire}: every opcode's arguments and
results round-trip; garbage raises ProtocolError only; frames survive any split.
"""

from __future__ import annotations

import struct
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway import errors
from claudefs_gateway.backend.remote import wire
from claudefs_gateway.backend.remote.protocol import FrameProtocol
from claudefs_gateway.errors import ProtocolError
from claudefs_gateway.fstypes import NOW, FileType


def strategy(c: wire.Codec) -> st.SearchStrategy[Any]:
    """Values of codec C{c}, built from the codec itself."""
    if isinstance(c, wire.Fixed):
        return st.integers(c.lo, c.hi)
    if isinstance(c, wire.Bool):
        return st.booleans()
    if isinstance(c, wire.Big):
        return st.integers(-(2**127), 2**127 - 1)
    if isinstance(c, wire.Text):
        return st.text(max_size=20).filter(lambda t: len(t.encode()) <= c.limit)
    if isinstance(c, wire.Blob):
        return st.binary(max_size=min(c.limit, 40))
    if isinstance(c, wire.Opt):
        return st.none() | strategy(c.inner)
    if isinstance(c, wire._Tuple):
        return strategy(c.codec).map(tuple)
    if isinstance(c, wire.Seq):
        return st.lists(strategy(c.inner), max_size=min(3, c.limit))
    if isinstance(c, wire.Tup):
        return st.tuples(*(strategy(p) for p in c.parts))
    if isinstance(c, wire.Struct):
        return st.builds(c.cls, **{name: strategy(f) for name, f in c.fields})
    if isinstance(c, wire.EnumOf):
        return st.sampled_from(list(c.enum))
    if isinstance(c, wire.Choice):
        return st.sampled_from(c.values)
    if isinstance(c, wire.TimeSpecCodec):
        return st.none() | st.just(NOW) | st.integers(-(2**63), 2**63 - 1)
    if isinstance(c, wire.Raw):
        return st.binary(max_size=100)
    if isinstance(c, wire.Empty):
        return st.none()
    if isinstance(c, wire._Dict):
        inner = c.seq.inner
        return st.dictionaries(strategy(inner.parts[0]), strategy(inner.parts[1]), max_size=3)
    raise AssertionError(f"no strategy for {c!r}")


OPS = sorted(wire.OPS.values(), key=lambda o: o.code)


class CodecTests(SynchronousTestCase):
    def test_opcode_table(self) -> None:
        """Codes are unique u32s, names unique; the shared-state opcodes are there."""
        self.assertEqual(len(wire.BY_NAME), len(wire.OPS))
        for name in ("LOCK", "UNLOCK", "SHARE_OPEN", "LEASE_RECALL", "EV_LEASE_BREAK", "EV_LOCKS"):
            self.assertIn(name, wire.BY_NAME)

    @given(data=st.data())
    @settings(max_examples=300)
    def test_round_trip_every_op(self, data: st.DataObject) -> None:
        """Any arguments and results of any opcode decode to what was encoded."""
        op = data.draw(st.sampled_from(OPS))
        for codec in (op.args, op.result):
            value = data.draw(strategy(codec))
            self.assertEqual(wire.decode(codec, wire.encode(codec, value)), value)

    @given(data=st.data())
    @settings(max_examples=200)
    def test_create_open_round_trip(self, data: st.DataObject) -> None:
        """
        CREATE_OPEN (protocol 5): CREATE's arguments then the share's, and
        CREATE's answer with the share's fate, decode to what was encoded; a
        payload cut anywhere is a ProtocolError.
        """
        op = wire.BY_NAME["CREATE_OPEN"]
        create = wire.BY_NAME["CREATE"]
        share = wire.BY_NAME["SHARE_OPEN"]
        self.assertEqual(op.code, 0x2E)
        args = data.draw(strategy(op.args))
        payload = wire.encode(op.args, args)
        self.assertEqual(wire.decode(op.args, payload), args)
        # The same bytes as CREATE's arguments followed by SHARE_OPEN's owner, id and modes.
        self.assertEqual(
            bytes(payload),
            bytes(wire.encode(create.args, args[:8]))
            + bytes(wire.encode(wire.Tup(*share.args.parts[1:5]), args[8:])),
        )
        result = data.draw(strategy(op.result))
        self.assertEqual(wire.decode(op.result, wire.encode(op.result, result)), result)
        cut = data.draw(st.integers(0, len(payload) - 1))
        with self.assertRaises(ProtocolError):
            wire.decode(op.args, payload[:cut])

    @given(data=st.data(), garbage=st.binary(max_size=200))
    @settings(max_examples=500)
    def test_garbage_is_protocol_error(self, data: st.DataObject, garbage: bytes) -> None:
        """Decoding arbitrary bytes as any payload gives a value or ProtocolError, nothing else."""
        op = data.draw(st.sampled_from(OPS))
        for codec in (op.args, op.result):
            try:
                wire.decode(codec, garbage)
            except ProtocolError:
                pass

    @given(data=st.data())
    @settings(max_examples=300)
    def test_attributes_packed_as_field_by_field(self, data: st.DataObject) -> None:
        """
        L{wire.ATTRS} packs in one format: the bytes are those the generic
        field-by-field codec writes, they decode to the same value, and a
        value either refuses is refused by both.
        """
        generic = wire.Struct(wire.ATTRS.cls, wire.ATTRS.fields)
        generic.flat = None  # field by field
        a = data.draw(strategy(wire.ATTRS))
        self.assertEqual(bytes(wire.encode(wire.ATTRS, a)), bytes(wire.encode(generic, a)))
        self.assertEqual(wire.decode(wire.ATTRS, wire.encode(generic, a)), a)
        bad = data.draw(
            st.sampled_from(
                [
                    {"size": -1},
                    {"uid": 2**32},
                    {"nlink": True},
                    {"mtime_ns": 1.5},
                    {"rdev": (1, 2, 3)},
                    {"change": None},
                ]
            )
        )
        wrong = attrs.evolve(a, **bad)
        for codec in (generic, wire.ATTRS):
            with self.assertRaises(ValueError):
                wire.encode(codec, wrong)
        payload = bytes(wire.encode(generic, a))
        cut = data.draw(st.integers(0, len(payload) - 1))
        with self.assertRaises(ProtocolError):
            wire.decode(wire.ATTRS, payload[:cut])
        kind = data.draw(
            st.integers(0, 2**32 - 1).filter(lambda n: n not in set(map(int, FileType)))
        )
        with self.assertRaises(ProtocolError):
            wire.decode(wire.ATTRS, payload[:16] + struct.pack("<I", kind) + payload[20:])

    @given(data=st.data())
    @settings(max_examples=200)
    def test_directory_entries_read_as_field_by_field(self, data: st.DataObject) -> None:
        """
        L{wire.DIRENTRY} reads what the field-by-field codec writes, and a cut
        payload, an unknown type or a bad optional tag is a ProtocolError.
        """
        generic = wire.Struct(wire.DIRENTRY.cls, wire.DIRENTRY.fields)
        e = data.draw(strategy(generic))
        payload = bytes(wire.encode(generic, e))
        self.assertEqual(bytes(wire.encode(wire.DIRENTRY, e)), payload)
        self.assertEqual(wire.decode(wire.DIRENTRY, payload), e)
        cut = data.draw(st.integers(0, len(payload) - 1))
        with self.assertRaises(ProtocolError):
            wire.decode(wire.DIRENTRY, payload[:cut])
        at = 4 + len(e.name)
        for bad in (
            payload[: at + 8] + struct.pack("<I", 99) + payload[at + 12 :],
            payload[: at + 20] + b"\x02" + payload[at + 21 :],
        ):
            with self.assertRaises(ProtocolError):
                wire.decode(wire.DIRENTRY, bad)

    def test_trailing_bytes_refused(self) -> None:
        payload = wire.encode(wire.BY_NAME["GETATTR"].args, (5,)) + b"x"
        self.assertRaises(ProtocolError, wire.decode, wire.BY_NAME["GETATTR"].args, payload)

    def test_lengths_bounded(self) -> None:
        """A length prefix past a field's bound is refused before anything is read."""
        bad = struct.pack("<QI", 1, 2**31)
        self.assertRaises(ProtocolError, wire.decode, wire.BY_NAME["LOOKUP"].args, bad)

    def test_errors_round_trip(self) -> None:
        """Every FSError crosses the wire as itself; unknown names become IO."""
        for cls in (*errors.FS_ERRORS, errors.BackendUnavailable, errors.Timeout):
            e = wire.decode_error(wire.encode_error(cls("why")))
            self.assertIs(type(e), cls)
        self.assertIs(type(wire.decode_error(wire.encode_error(KeyError("x")))), errors.IO)
        self.assertIs(
            type(wire.decode_error(wire.encode_error(errors.LockConflict(None)))),
            errors.LockConflict,
        )

    def test_header_bounds(self) -> None:
        ok = wire.encode_frame(0x11, wire.CALL, 7, b"12345678")[0]
        self.assertEqual(wire.decode_header(ok), (24, 0x11, wire.CALL, 7))
        for length in (0, 15, wire.MAX_FRAME + 1, 2**32 - 1):
            self.assertRaises(
                ProtocolError, wire.decode_header, struct.pack("<IIBBHQ", length, 1, 0, 0, 0, 1)
            )
        self.assertRaises(
            ProtocolError, wire.decode_header, struct.pack("<IIBBHQ", 16, 1, 9, 0, 0, 1)
        )
        self.assertRaises(
            ProtocolError, wire.decode_header, struct.pack("<IIBBHQ", 16, 1, 0, 1, 0, 1)
        )


class Recorder(FrameProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.frames: list[tuple[int, int, int, bytes]] = []
        self.errors: list[ProtocolError] = []

    def frame_received(self, opcode: int, kind: int, rid: int, payload: bytes) -> None:
        self.frames.append((opcode, kind, rid, payload))

    def protocol_error(self, e: ProtocolError) -> None:
        self.errors.append(e)
        self._closing = True


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


class FramingTests(SynchronousTestCase):
    @given(
        frames=st.lists(
            st.tuples(
                st.integers(0, 2**32 - 1),
                st.sampled_from(wire.KINDS),
                st.integers(0, 2**64 - 1),
                st.binary(max_size=300),
            ),
            max_size=5,
        ),
        cuts=st.lists(st.integers(0, 2000)),
    )
    def test_any_split(self, frames: list[tuple[int, int, int, bytes]], cuts: list[int]) -> None:
        """Frames arrive whole and in order however the stream is cut."""
        stream = b"".join(b"".join(bytes(p) for p in wire.encode_frame(*f)) for f in frames)
        proto = Recorder()
        for chunk in split_at(stream, cuts):
            proto.dataReceived(chunk)
        self.assertEqual(proto.frames, frames)

    @given(garbage=st.binary(max_size=400))
    def test_garbage_stream(self, garbage: bytes) -> None:
        """Any bytes: frames, a ProtocolError, or waiting for more; never anything else."""
        proto = Recorder()
        proto.dataReceived(garbage)

    def test_oversized_length_costs_nothing(self) -> None:
        """A frame claiming 4 GiB is refused from its header, before any payload is kept."""
        proto = Recorder()
        proto.dataReceived(struct.pack("<IIBBHQ", 2**32 - 1, 1, 0, 0, 0, 1))
        self.assertEqual(len(proto.errors), 1)
        proto.dataReceived(b"x" * 100000)
        self.assertEqual(len(proto._buf), 0)


class SpecTests(SynchronousTestCase):
    def test_docs_table_is_current(self) -> None:
        """docs/rpc.rst's opcode table is the one the codec has."""
        import os

        from tests.helpers import REPO

        with open(os.path.join(REPO, "docs", "rpc.rst")) as f:
            text = f.read()
        start = text.index(".. opcode-table-start\n\n") + len(".. opcode-table-start\n\n")
        end = text.index("\n.. opcode-table-end")
        self.assertEqual(text[start:end], wire.opcode_table())


class UsageTests(SynchronousTestCase):
    def test_usage_past_int64(self) -> None:
        """Usage sums past 2**63 (SQLite hands them over as REAL) cross the wire exactly."""
        from claudefs_gateway.fstypes import Usage

        codec = wire.BY_NAME["ALL_USAGE"].result
        got = wire.decode(codec, wire.encode(codec, {5: Usage(float(2**63), 2)}))
        self.assertEqual(got, {5: Usage(2**63, 2)})
        self.assertIsInstance(got[5].bytes, int)


def _by_parts(c: wire.Struct | wire.Tup, value: Any) -> bytes:
    """C{value} encoded part by part, as before the one-struct path."""
    out = bytearray()
    if isinstance(c, wire.Struct):
        for name, f in c.fields:
            f.enc(getattr(value, name), out)
    else:
        for p, x in zip(c.parts, value, strict=True):
            p.enc(x, out)
    return bytes(out)


class FlatTests(SynchronousTestCase):
    """
    Fixed-width structures (Attributes, change events) go through one
    C{struct.Struct}: the same bytes as field by field, and the same
    refusals.
    """

    def test_flat_codecs(self) -> None:
        """The structures in nearly every answer take the one-struct path."""
        for c in (wire.ATTRS, wire.CHANGE, wire.QUOTA):
            self.assertIsNotNone(c.flat, c.cls)

    @settings(max_examples=200, deadline=None)
    @given(st.data())
    def test_same_bytes(self, data: st.DataObject) -> None:
        """Every fixed-width codec: the bytes of the parts, decoded back to the value."""
        for c in (wire.ATTRS, wire.CHANGE, wire.QUOTA, wire.Tup(wire.U32, wire.U32)):
            value = data.draw(strategy(c))
            got = bytes(wire.encode(c, value))
            self.assertEqual(got, _by_parts(c, value))
            self.assertEqual(wire.decode(c, got), value)

    def test_refusals_kept(self) -> None:
        """A bool, a negative or too large number, a float, a short tuple: the field's ValueError."""
        base = data_attrs()
        for changes in (
            {"size": True},
            {"mode": -1},
            {"nlink": 2**32},
            {"ino": 2**64},
            {"mtime_ns": 2**63},
            {"uid": 1.0},
            {"rdev": (1,)},
            {"rdev": (1, True)},
        ):
            bad = base.__class__(**{**_fields(base), **changes})
            with self.assertRaises(ValueError, msg=changes):
                wire.encode(wire.ATTRS, bad)

    def test_unknown_enum(self) -> None:
        """An unknown file type in an Attributes is a ProtocolError, as field by field."""
        good = bytes(wire.encode(wire.ATTRS, data_attrs()))
        bad = good[:16] + struct.pack("<I", 999) + good[20:]
        with self.assertRaises(ProtocolError):
            wire.decode(wire.ATTRS, bad)
        with self.assertRaises(ProtocolError):
            wire.decode(wire.ATTRS, good[:-1])


def data_attrs() -> Any:
    from claudefs_gateway.fstypes import Attributes, FileType

    return Attributes(
        ino=5,
        gen=1,
        type=FileType.REG,
        mode=0o644,
        nlink=1,
        uid=0,
        gid=0,
        size=4096,
        used=4096,
        rdev=(3, 4),
        atime_ns=1,
        mtime_ns=-2,
        ctime_ns=3,
        btime_ns=4,
        change=7,
    )


def _fields(a: Any) -> dict[str, Any]:
    import attrs

    return attrs.asdict(a, recurse=False)


class WholeFrameTests(SynchronousTestCase):
    """
    The one-buffer frame (L{wire.frame}) and the whole-payload decoders
    (C{Codec.whole}, one C{unpack} for a fixed-width payload) give what the
    header-then-payload encoding and the field-by-field L{wire.Reader} give,
    values and refusals alike (docs/workers.rst "What one RPC call costs").
    """

    @given(data=st.data(), rid=st.integers(0, 2**64 - 1), kind=st.sampled_from(wire.KINDS))
    @settings(max_examples=300)
    def test_frame_is_header_and_payload(self, data: st.DataObject, rid: int, kind: int) -> None:
        """A frame built in one buffer is the header and the payload encoded apart."""
        op = data.draw(st.sampled_from(OPS))
        codec = op.args if kind == wire.CALL else op.result
        value = data.draw(strategy(codec))
        parts = wire.encode_frame(op.code, kind, rid, wire.encode(codec, value))
        self.assertEqual(bytes(wire.frame(op.code, kind, rid, codec, value)), b"".join(parts))

    def test_frame_refuses_what_encode_refuses(self) -> None:
        """A value out of range is refused when the frame is built, as by encode."""
        op = wire.BY_NAME["GETATTR"]
        for bad in ((-1,), (2**64,), (True,), ("1",), ()):
            with self.assertRaises((ValueError, TypeError), msg=bad):
                wire.frame(op.code, wire.CALL, 1, op.args, bad)

    @given(data=st.data(), garbage=st.binary(max_size=200))
    @settings(max_examples=500)
    def test_whole_agrees_with_reader(self, data: st.DataObject, garbage: bytes) -> None:
        """
        Any payload, encoded or garbage, cut or extended: each codec's
        whole-payload decoder gives the value the field-by-field reader gives,
        or a ProtocolError where it gives one.
        """
        op = data.draw(st.sampled_from(OPS))
        for codec in (op.args, op.result):
            good = bytes(wire.encode(codec, data.draw(strategy(codec))))
            cut = data.draw(st.integers(0, len(good)))
            for payload in (good, good[:cut], good + garbage[:3], garbage):
                try:
                    want: Any = wire.Codec.whole(codec, payload)
                except ProtocolError:
                    want = ProtocolError
                try:
                    got: Any = codec.whole(payload)
                except ProtocolError:
                    got = ProtocolError
                self.assertEqual(got, want, (op.name, payload))

    def test_fixed_width_payloads_decode_whole(self) -> None:
        """GETATTR's arguments and an Attributes decode by length; short or long is refused."""
        args = wire.BY_NAME["GETATTR"].args
        self.assertEqual(wire.decode(args, struct.pack("<Q", 7)), (7,))
        a = data_attrs()
        good = bytes(wire.encode(wire.ATTRS, a))
        self.assertEqual(wire.decode(wire.ATTRS, good), a)
        for bad in (good[:-1], good + b"\0", b""):
            with self.assertRaises(ProtocolError):
                wire.decode(wire.ATTRS, bad)
        with self.assertRaises(ProtocolError):
            wire.decode(args, struct.pack("<Q", 7) + b"\0")
