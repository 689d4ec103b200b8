# -*- test-case-name: tests.core.test_config -*-
"""
A small typed-schema layer for the gateway's YAML configuration.

Why not a general library: we need three things together that none of the usual
ones give at once: every problem found in one pass (not the first), each named by
its dotted key path I{and} its line in the file, and unknown keys treated as errors
with a "did you mean". The schema itself is plain frozen attrs classes whose fields
carry their documentation, range and secrecy in C{metadata}, so the reference in
C{docs/configuration.rst} is generated from the same source the validator reads.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal, Union, get_args, get_origin

import attrs
import yaml

from claudefs_gateway.errors import ConfigError, Problem

Where = int | str | None


class _Required:
    """Marker default for settings that have no default."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


def setting(
    default: Any = REQUIRED,
    *,
    doc: str,
    factory: Callable[[], Any] | None = None,
    min: float | None = None,  # noqa: A002 - reads naturally in the schema
    max: float | None = None,  # noqa: A002
    secret: bool = False,
    size: bool = False,
    shown_default: str | None = None,
) -> Any:
    """
    Declare one configuration key.

    @param doc: one or two sentences for the generated reference.
    @param min: smallest allowed number (inclusive).
    @param max: largest allowed number (inclusive).
    @param secret: the value is never echoed in errors, logs or reprs.
    @param size: an integer byte count that also accepts C{"10GiB"}, C{"5MB"}.
    @param shown_default: how the reference shows a computed default.
    """
    md = {
        "doc": doc,
        "min": min,
        "max": max,
        "secret": secret,
        "size": size,
        "shown_default": shown_default,
    }
    kw: dict[str, Any] = {"metadata": md}
    if secret:
        kw["repr"] = lambda v: "None" if v is None else "'***'"
    if factory is not None:
        return attrs.field(factory=factory, **kw)
    return attrs.field(default=default, **kw)


# ---------------------------------------------------------------------------
# YAML loading that remembers where every key and list item was.


class LineMap(dict[str, Any]):
    """A mapping from YAML that knows the line of each key (1-based)."""

    line: int
    key_lines: dict[str, Where]
    duplicates: list[tuple[str, int]]


class LineList(list[Any]):
    """A sequence from YAML that knows the line of each item (1-based)."""

    line: int
    item_lines: list[Where]


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineMap:
    loader.flatten_mapping(node)
    result = LineMap()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    result.duplicates = []
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        key = key if isinstance(key, str) else str(key)
        line = key_node.start_mark.line + 1
        if key in result:
            result.duplicates.append((key, line))
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = line
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def load_yaml(text: str, source: str) -> Any:
    """
    Parse YAML into L{LineMap}/L{LineList}/scalars.

    @raise ConfigError: the text is not YAML, with the line of the fault.
    """
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = mark.line + 1 if mark is not None else None
        msg = f"not valid YAML: {e.problem or e.context}"
        raise ConfigError([Problem("", where, msg)], source) from None
    except yaml.YAMLError as e:
        raise ConfigError([Problem("", None, f"not valid YAML: {e}")], source) from None


def line_of(container: Any, key: Any) -> Where:
    """The line of C{key} in a L{LineMap} or index in a L{LineList}, if known."""
    if isinstance(container, LineMap):
        return container.key_lines.get(key, container.line)
    if isinstance(container, LineList) and isinstance(key, int):
        if 0 <= key < len(container.item_lines):
            return container.item_lines[key]
        return container.line
    return None


def set_override(raw: dict[str, Any], path: str, value: Any, label: str) -> None:
    """
    Put a command-line value at C{path} in raw (unvalidated) configuration.

    The value is validated with the rest; its problems are reported as coming from
    C{label} (the flag) instead of a line.
    """
    parts = path.split(".")
    node: Any = raw
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = LineMap()
            child.line = 0
            child.key_lines = {}
            child.duplicates = []
            node[part] = child
            if isinstance(node, LineMap):
                node.key_lines[part] = label
        node = child
    node[parts[-1]] = value
    if isinstance(node, LineMap):
        node.key_lines[parts[-1]] = label


# ---------------------------------------------------------------------------
# Special value types.

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(value: str) -> int:
    """
    C{"10GiB"} → 10737418240; SI units are powers of 1000, IEC units of 1024.

    @raise ValueError: not a size.
    """
    m = _SIZE_RE.match(value)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(value)
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


class Custom:
    """
    Base for value types with their own conversion (endpoints, networks...).

    Subclasses implement L{convert}, reporting problems through C{report}.
    """

    type_doc: str = "value"

    @classmethod
    def convert(
        cls, raw: Any, default: Any, path: str, where: Where, builder: Builder
    ) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError(cls)


# ---------------------------------------------------------------------------
# Building typed objects from raw YAML values.


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class Builder:
    """One validation pass: converts raw YAML into schema objects, collecting problems."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def report(self, path: str, where: Where, message: str) -> None:
        self.problems.append(Problem(path, where, message))

    # A sentinel distinct from None: "this value did not convert".
    INVALID: Any = object()

    def section(self, cls: type, raw: Any, path: str, where: Where) -> Any:
        """Build an attrs schema class from a mapping; unknown keys are problems."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            self.report(path, where, f"expected a mapping, got {_type_name(raw)}")
            return self.INVALID
        hints = _hints(cls)
        fields = {f.name: f for f in attrs.fields(cls)}
        if isinstance(raw, LineMap):
            for key, line in raw.duplicates:
                self.report(join(path, key), line, "appears more than once")
        for key in raw:
            if key not in fields:
                near = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
                hint = f"; did you mean '{near[0]}'?" if near else ""
                known = "" if near else f" (known keys: {', '.join(fields)})"
                self.report(join(path, key), line_of(raw, key), f"unknown key{hint}{known}")
        before = len(self.problems)
        kwargs: dict[str, Any] = {}
        for name, f in fields.items():
            sub = join(path, name)
            if name in raw:
                value = self.value(hints[name], raw[name], f, sub, line_of(raw, name))
                if value is not self.INVALID:
                    kwargs[name] = value
            elif f.default is REQUIRED:
                self.report(sub, raw.line if isinstance(raw, LineMap) else where, "is required")
        if len(self.problems) > before:
            return self.INVALID
        obj = cls(**kwargs)
        check = getattr(cls, "check", None)
        if check is not None:
            check(obj, self, path, raw)
        return obj

    def value(
        self, tp: Any, raw: Any, f: attrs.Attribute[Any] | None, path: str, where: Where
    ) -> Any:
        md: Mapping[str, Any] = f.metadata if f is not None else {}
        secret = bool(md.get("secret"))
        default = f.default if f is not None else None
        if _is_union(tp):
            return self._union(tp, raw, f, path, where)
        origin = get_origin(tp)
        if origin is Literal:
            choices = get_args(tp)
            if raw not in choices:
                near = difflib.get_close_matches(str(raw), [str(c) for c in choices], n=1)
                hint = f"; did you mean '{near[0]}'?" if near else ""
                shown = "this value" if secret else repr(raw)
                opts = ", ".join(str(c) for c in choices)
                self.report(path, where, f"{shown} is not one of {opts}{hint}")
                return self.INVALID
            return raw
        if origin is list:
            (item_tp,) = get_args(tp)
            if raw is None:
                return []
            if not isinstance(raw, list):
                self.report(path, where, f"expected a list, got {_type_name(raw)}")
                return self.INVALID
            out = []
            ok = True
            for i, item in enumerate(raw):
                v = self.value(item_tp, item, None, join(path, i), line_of(raw, i) or where)
                if v is self.INVALID:
                    ok = False
                out.append(v)
            return out if ok else self.INVALID
        if isinstance(tp, type) and issubclass(tp, Custom):
            return tp.convert(raw, default, path, where, self)
        if isinstance(tp, type) and attrs.has(tp):
            return self.section(tp, raw, path, where)
        if tp is bool:
            if not isinstance(raw, bool):
                self.report(path, where, f"expected true or false, got {_type_name(raw)}")
                return self.INVALID
            return raw
        if tp is int:
            if md.get("size") and isinstance(raw, str):
                try:
                    raw = parse_size(raw)
                except ValueError:
                    self.report(path, where, f"{raw!r} is not a size (e.g. 5242880, 5MiB, 10GB)")
                    return self.INVALID
            if isinstance(raw, bool) or not isinstance(raw, int):
                self.report(path, where, f"expected an integer, got {_type_name(raw)}")
                return self.INVALID
            return self._range(raw, md, path, where)
        if tp is float:
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                self.report(path, where, f"expected a number, got {_type_name(raw)}")
                return self.INVALID
            return self._range(float(raw), md, path, where)
        if tp is str:
            if not isinstance(raw, str):
                self.report(path, where, f"expected a string, got {_type_name(raw)}")
                return self.INVALID
            if "\x00" in raw:
                self.report(path, where, "contains a NUL character")
                return self.INVALID
            return raw
        raise TypeError(f"schema type {tp!r} at {path} is not supported")  # pragma: no cover

    def _range(self, v: Any, md: Mapping[str, Any], path: str, where: Where) -> Any:
        lo, hi = md.get("min"), md.get("max")
        if lo is not None and v < lo:
            self.report(path, where, f"must be at least {_num(lo)}, got {_num(v)}")
            return self.INVALID
        if hi is not None and v > hi:
            self.report(path, where, f"must be at most {_num(hi)}, got {_num(v)}")
            return self.INVALID
        return v

    def _union(self, tp: Any, raw: Any, f: Any, path: str, where: Where) -> Any:
        args = get_args(tp)
        if raw is None:
            if type(None) in args:
                return None
            self.report(path, where, "must not be null")
            return self.INVALID
        concrete = [a for a in args if a is not type(None)]
        # Pick the alternative whose shape matches the raw value.
        for alt in concrete:
            if isinstance(alt, type) and issubclass(alt, Custom):
                return self.value(alt, raw, f, path, where)
            origin = get_origin(alt)
            if origin is list and isinstance(raw, list):
                return self.value(alt, raw, f, path, where)
            if isinstance(alt, type) and attrs.has(alt) and isinstance(raw, dict):
                return self.value(alt, raw, f, path, where)
            if alt is str and isinstance(raw, str):
                return self.value(alt, raw, f, path, where)
        if len(concrete) == 1:
            return self.value(concrete[0], raw, f, path, where)
        names = " or ".join(describe_type(a) for a in concrete)
        self.report(path, where, f"expected {names}, got {_type_name(raw)}")
        return self.INVALID


def _num(v: float) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def build(cls: type, raw: Any, source: str) -> Any:
    """
    Validate raw YAML data against schema class C{cls}.

    @raise ConfigError: with every problem found, sorted by line.
    """
    b = Builder()
    obj = b.section(cls, raw, "", 1)
    if b.problems or obj is Builder.INVALID:
        problems = sorted(b.problems, key=lambda p: p.where if isinstance(p.where, int) else 0)
        raise ConfigError(problems, source)
    return obj


# ---------------------------------------------------------------------------
# Walking the schema: reference docs and completeness checks.


def describe_type(tp: Any) -> str:
    if _is_union(tp):
        parts = [describe_type(a) for a in get_args(tp) if a is not type(None)]
        s = " or ".join(parts)
        return f"{s}, or null" if type(None) in get_args(tp) else s
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(f"``{c}``" for c in get_args(tp))
    if origin is list:
        return f"list of {describe_type(get_args(tp)[0])}"
    if isinstance(tp, type) and issubclass(tp, Custom):
        return tp.type_doc
    if isinstance(tp, type) and attrs.has(tp):
        return "mapping"
    return {bool: "boolean", int: "integer", float: "number", str: "string"}.get(tp, str(tp))


@attrs.frozen
class KeyDoc:
    path: str
    type: str
    default: str
    doc: str
    section: bool


def _show_default(f: attrs.Attribute[Any]) -> str:
    md = f.metadata
    if md.get("shown_default"):
        return str(md["shown_default"])
    if f.default is REQUIRED:
        return "required"
    if isinstance(f.default, attrs.Factory):  # type: ignore[arg-type]
        value = f.default.factory()  # type: ignore[union-attr]
    else:
        value = f.default
    if md.get("secret"):
        return "unset" if value is None else "(secret)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if hasattr(value, "shown"):
        return str(value.shown)
    if attrs.has(type(value)):
        return "see below"
    if isinstance(value, list):
        return "[]" if not value else ", ".join(str(v) for v in value)
    text = getattr(value, "shown", None) or str(value)
    rng = ""
    return f"{text}{rng}"


def _range_doc(md: Mapping[str, Any]) -> str:
    lo, hi = md.get("min"), md.get("max")
    if lo is None and hi is None:
        return ""
    if hi is None:
        assert lo is not None
        return f" (≥ {_num(lo)})"
    if lo is None:
        return f" (≤ {_num(hi)})"
    return f" ({_num(lo)}..{_num(hi)})"


def walk(cls: type, path: str = "") -> Iterator[KeyDoc]:
    """Every key of the schema, depth first, list items shown as C{key[]}."""
    hints = _hints(cls)
    for f in attrs.fields(cls):
        sub = join(path, f.name)
        tp = hints[f.name]
        inner = [a for a in get_args(tp) if a is not type(None)] if _is_union(tp) else [tp]
        nested = None
        for alt in inner:
            if isinstance(alt, type) and issubclass(alt, Custom):
                continue
            if isinstance(alt, type) and attrs.has(alt):
                nested = (alt, sub)
            elif get_origin(alt) is list:
                (item,) = get_args(alt)
                if isinstance(item, type) and issubclass(item, Custom):
                    continue
                if isinstance(item, type) and attrs.has(item):
                    nested = (item, sub + "[]")
        type_doc = describe_type(tp) + _range_doc(f.metadata)
        if f.metadata.get("size"):
            type_doc += "; accepts units such as ``5MiB``, ``10GB``"
        yield KeyDoc(sub, type_doc, _show_default(f), f.metadata.get("doc", ""), nested is not None)
        if nested is not None:
            yield from walk(*nested)


def reference_rst(cls: type, title: str, intro: str) -> str:
    """The configuration reference as reStructuredText, one table per top-level section."""
    out = [title, "=" * len(title), "", intro.strip(), ""]
    rows: list[KeyDoc] = list(walk(cls))
    groups: dict[str, list[KeyDoc]] = {}
    for row in rows:
        top = row.path.split(".")[0].split("[")[0]
        if row.path == top and not row.section:
            top = "general"
        groups.setdefault(top, []).append(row)
    for top, items in groups.items():
        out += [f"``{top}``", "-" * (len(top) + 4), ""]
        for row in items:
            out.append(f"``{row.path}``")
            out.append(
                f"   *{row.type}*; default: ``{row.default}``."
                if row.default not in ("see below",)
                else f"   *{row.type}*."
            )
            out.append("")
            for line in row.doc.strip().splitlines():
                out.append(f"   {line.strip()}")
            out.append("")
    return "\n".join(out).rstrip() + "\n"
