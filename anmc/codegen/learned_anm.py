"""Give a trained model back as equations: its `.anm` with the learned values written in.

    print(learned_anm(run.prior.model, run.module))

Each learnable `param` default and each `noise ... learn` std is replaced, in place, by its learned
value, and the starting value is kept as a comment on that line. Everything else (comments,
layout, interventions) stays as the user wrote it.
"""

from __future__ import annotations

from anmc.lang import ast
from anmc.symbolic.model import Model


def _fmt(value: float, bounds: tuple[float, float] | None = None) -> str:
    """Five significant digits; for a bounded learnable value, enough digits to stay strictly inside its
    bounds (a value learned onto a bound is written just inside it), so that the text compiles again."""
    text = f"{value:.5g}"
    if bounds is None:
        return text
    lo, hi = bounds
    inside = min(max(value, lo + 1e-6 * (hi - lo)), hi - 1e-6 * (hi - lo))
    for digits in (5, 8, 12, 17):
        text = f"{inside:.{digits}g}"
        if lo < float(text) < hi:
            return text
    return repr(inside)


def learned_anm(model: Model, module) -> str:
    """The model's source with learned param and noise values filled in (starting values as comments)."""
    lines = list(ast.source_lines(model.source))
    edits: dict[int, list[tuple[int, int, str, str]]] = {}  # line -> [(col0, col1, new text, note)]
    values = {k: float(v.detach()) for k, v in module.param_values().items()}
    noise = dict(zip(module.state_names, module.noise_std.tolist()))
    for stmt in model.program.statements:
        if isinstance(stmt, ast.ParamDecl) and stmt.learn:
            span = stmt.value.span
            start_text = lines[span.line - 1][span.column - 1 : span.end_column - 1]
            edits.setdefault(span.line, []).append(
                (span.column - 1, span.end_column - 1, _fmt(values[stmt.name], model.params[stmt.name].bounds), f"{stmt.name} started at {start_text}")
            )
        if isinstance(stmt, ast.NoiseDecl):
            for entry in stmt.entries:
                if entry.learn:
                    span = entry.std.span
                    start_text = lines[span.line - 1][span.column - 1 : span.end_column - 1]
                    edits.setdefault(span.line, []).append(
                        (span.column - 1, span.end_column - 1, _fmt(noise[entry.state], model.noise[entry.state].bounds), f"noise {entry.state} started at {start_text}")
                    )
    for line_no, items in edits.items():
        text = lines[line_no - 1]
        code, sep, comment = text.partition("#")
        notes = []
        for col0, col1, new, note in sorted(items, reverse=True):
            code = code[:col0] + new + code[col1:]
            notes.append(note)
        tail = "; ".join(reversed(notes))
        comment = comment.strip()
        lines[line_no - 1] = code.rstrip() + "   # learned (" + tail + ")" + (f"; {comment}" if comment else "")
    if lines and lines[-1] == "":  # the text ended with a line break
        lines.pop()
    return "\n".join(lines + _derived(model)) + "\n"


def _derived(model: Model) -> list[str]:
    """For `dynamics lagrangian`: the equations anmc derived (M v' = b, anmc.symbolic.lagrangian), as comments."""
    d = model.derivation
    if d is None:
        return []
    import sympy as sp

    small = lambda e: sp.simplify(e) if sp.count_ops(e) < 200 else e  # noqa: E731
    out = ["", "# The equations of motion anmc derived from the Lagrangian (M v' = b, v = " + ", ".join(d.velocities) + "):"]
    n = len(d.velocities)
    for i in range(n):
        row = " + ".join(f"({sp.sstr(small(d.mass[i, j]))})*{d.velocities[j]}'" for j in range(n))
        out.append(f"#   {row} = {sp.sstr(small(d.rhs[i]))}")
    return out
