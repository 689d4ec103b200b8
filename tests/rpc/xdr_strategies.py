"""Hypothesis strategies for any declarative XDR type (L{claudefs_gateway.rpc.xdrtypes})."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from claudefs_gateway.rpc import xdrtypes as x

_MAX_OPAQUE = 48
_MAX_ITEMS = 3


def values(t: x.XType, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values C{t} can encode (bounded in size, so examples stay small)."""
    if t is x.U32:
        return st.integers(0, 2**32 - 1)
    if t is x.I32:
        return st.integers(-(2**31), 2**31 - 1)
    if t is x.U64:
        return st.integers(0, 2**64 - 1)
    if t is x.I64:
        return st.integers(-(2**63), 2**63 - 1)
    if t is x.BOOL:
        return st.booleans()
    if t is x.VOID:
        return st.none()
    if isinstance(t, x.Enum):
        return st.sampled_from(sorted(t.values))
    if isinstance(t, x.Opaque):
        return st.binary(max_size=min(t.limit, _MAX_OPAQUE))
    if isinstance(t, x.Fixed):
        return st.binary(min_size=t.n, max_size=t.n)
    if isinstance(t, x.Array):
        return st.lists(
            values(t.item, depth + 1), max_size=min(t.limit, _MAX_ITEMS if depth < 3 else 1)
        )
    if isinstance(t, x.LinkedList):
        return st.lists(values(t.item, depth + 1), max_size=_MAX_ITEMS if depth < 3 else 1)
    if isinstance(t, x.Optional):
        return st.none() | values(t.item, depth + 1)
    if isinstance(t, x.Struct):
        return st.builds(t.cls, *[values(m, depth + 1) for m in t.types])
    if isinstance(t, x.Lazy):
        return values(t.target, depth)
    if isinstance(t, x.Union):
        return _union(t, depth)
    body = getattr(t, "body", None)
    if body is not None:  # the codec's Always(body): status + body
        return st.builds(x.Arm, st.integers(0, 2**32 - 1), values(body, depth + 1))
    raise TypeError(f"no strategy for {t!r}")


def _union(t: x.Union, depth: int) -> st.SearchStrategy[Any]:
    options = [
        st.builds(x.Arm, st.just(tag), values(arm, depth + 1)) for tag, arm in t.arms.items()
    ]
    default = t.default
    if isinstance(default, x.XType):
        if isinstance(t.disc, x.Enum):
            others = sorted(t.disc.values - set(t.arms))
            if others:
                options.append(
                    st.builds(x.Arm, st.sampled_from(others), values(default, depth + 1))
                )
        elif t.disc is x.U32:
            tags = st.integers(0, 2**32 - 1).filter(lambda v: v not in t.arms)
            options.append(st.builds(x.Arm, tags, values(default, depth + 1)))
    return st.one_of(options)
