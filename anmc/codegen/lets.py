"""The `let`s of a model as named locals in generated code.

A `let` is substituted into the equations exactly (anmc.symbolic.model), so f and its Jacobian do
not depend on how the code is written. The emitters still show the names: after common
subexpression elimination, a temporary whose value is exactly a let's value takes the let's name
(`vx2 = ...  # let vx2` instead of `_t3 = ...`). A let that cse leaves inline (used once) stays inline.
"""

from __future__ import annotations

import sympy as sp

from anmc.symbolic.model import Model, symbol


def let_values(model: Model) -> dict[str, sp.Expr]:
    """Each let's value over the states, params and consts (the lets above it substituted), in order."""
    values: dict[sp.Symbol, sp.Expr] = {}
    for name, expr in model.lets.items():
        values[symbol(name)] = expr.xreplace(values)
    return {s.name: v for s, v in values.items()}


def name_temporaries(replacements, reduced, targets: dict[str, sp.Expr]):
    """(replacements, reduced, names): cse's output with each temporary equal to a value in `targets`
    (let name -> value, in the same form as the cse'd expressions) renamed after its let."""
    if not targets:
        return replacements, reduced, set()
    by_value = {}
    for name, value in targets.items():
        by_value.setdefault(value, name)
    expanded: dict[sp.Symbol, sp.Expr] = {}
    rename: dict[sp.Symbol, sp.Symbol] = {}
    for sym, expr in replacements:
        full = expr.xreplace(expanded)
        expanded[sym] = full
        name = by_value.pop(full, None)
        if name is not None:
            rename[sym] = symbol(name)
    if not rename:
        return replacements, reduced, set()
    replacements = [(rename.get(s, s), e.xreplace(rename)) for s, e in replacements]
    reduced = [e.xreplace(rename) for e in reduced]
    return replacements, reduced, {s.name for s in rename.values()}
