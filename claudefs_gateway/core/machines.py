# -*- test-case-name: tests.vfs.test_leases -*-
"""
Drawing the gateway's Automat state machines (STYLE.md §6: every multi-step
state has a .dot in docs/, which a test keeps in step with the code).
"""

from __future__ import annotations

__all__ = ["to_dot"]


def to_dot(machine_class: type, name: str) -> str:
    """
    A Graphviz digraph of an Automat machine's transitions (what the
    docs/smb-*.dot files hold; Automat's own drawing needs the graphviz
    package, which we do not depend on).
    """
    automaton = machine_class._machine._automaton  # type: ignore[attr-defined]
    lines = [f"digraph {name} {{", "  rankdir=LR;", '  node [shape=ellipse, fontname="sans"];']
    initial = automaton.initialState.method.__name__
    lines.append(f"  {initial} [shape=doublecircle];")
    rows = sorted(
        (
            s.method.__name__,
            i.method.__name__,
            t.method.__name__,
            " ".join(o.method.__name__ for o in outs),
        )
        for s, i, t, outs in automaton.allTransitions()
    )
    for src, inp, dst, outs in rows:
        label = inp + (f"\\n/ {outs}" if outs else "")
        lines.append(f'  {src} -> {dst} [label="{label}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"
