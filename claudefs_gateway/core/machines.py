# -*- test-case-name: tests.core.test_breaker -*-
"""Drawing Automat machines for docs/ (STYLE.md §6: every machine has its .dot)."""

from __future__ import annotations

__all__ = ["to_dot"]


def to_dot(machine_class: type, name: str, attr: str = "_machine") -> str:
    """
    A Graphviz digraph of an Automat MethodicalMachine's transitions.

    Automat's own drawing needs the graphviz package, which we do not depend
    on; this writes the same graph as text. A test compares each docs/*.dot
    with this, so the picture cannot drift from the code.
    """
    automaton = getattr(machine_class, attr)._automaton
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
