"""Discretize a model: the one-substep map z -> step(z) and its exact Jacobian, as SymPy expressions.

For continuous dynamics z' = F(z) and substep h = dt / steps, the method named by the model
(`anmc.lang.integrators.INTEGRATORS`, the one table of integrators: euler, semi_implicit_euler,
midpoint, rk4): an explicit Runge-Kutta tableau, or for semi_implicit_euler each state in declaration
order (the order of the `state` lines) using the values already updated before it, a Gauss-Seidel
sweep, symplectic for position/velocity pairs declared in either order.

A frame is `steps` substeps; its Jacobian is the product of the substeps' Jacobians (chain rule),
so the symbolic expressions stay one substep long. Discrete dynamics (`next x = ...`) are their own
one-frame map. The numpy and LaTeX emitters use these expressions; the torch module does not: it
differentiates only the right-hand sides and runs the same methods numerically, carrying the
Jacobian through every stage (`anmc.codegen.runtime`, from the same table).
"""

from __future__ import annotations

import sympy as sp

from anmc.lang.integrators import INTEGRATORS, Integrator
from anmc.symbolic.model import Model, symbol

H = sp.Symbol("_h", positive=True)  # the substep length; users cannot write a leading underscore


def _runge_kutta(method: Integrator, F, z, h):
    """One explicit Runge-Kutta substep from the method's tableau (anmc.lang.integrators)."""
    ks = [F(z)]
    for row in method.a:
        ks.append(F([zi + h * sum((sp.Rational(a.numerator, a.denominator) * k[i] for a, k in zip(row, ks) if a), sp.Integer(0))
                     for i, zi in enumerate(z)]))  # fmt: skip
    return [zi + h * sum((sp.Rational(b.numerator, b.denominator) * k[i] for b, k in zip(method.b, ks) if b), sp.Integer(0))
            for i, zi in enumerate(z)]  # fmt: skip


def _semi_implicit_euler(F_single, z, h):
    new = list(z)
    for i in range(len(z)):
        new[i] = z[i] + h * F_single(i, new)
    return new


def substep_expressions(model: Model) -> list[sp.Expr]:
    """The one-substep map as a list (one per state) of expressions in the states, params, consts and `H`."""
    states = [symbol(s) for s in model.states]
    rhs = [model.rhs[s] for s in model.states]

    def F(values):
        mapping = dict(zip(states, values))
        return [r.xreplace(mapping) for r in rhs]

    if model.integrator == "discrete":
        return F(states)
    method = INTEGRATORS[model.integrator]
    if method.sweep:
        return _semi_implicit_euler(lambda i, values: rhs[i].xreplace(dict(zip(states, values))), states, H)
    return _runge_kutta(method, F, states, H)


def _drop_dirac(expr: sp.Expr) -> sp.Expr:
    """d sign(x)/dx = 2 DiracDelta(x): zero everywhere the map is differentiable."""
    return expr.replace(sp.DiracDelta, lambda *args: sp.Integer(0))


def substep_jacobian(model: Model, step: list[sp.Expr]) -> sp.Matrix:
    """J[i, j] = d step_i / d z_j, exact (piecewise for abs/sign/min/max)."""
    states = [symbol(s) for s in model.states]
    return sp.Matrix(step).jacobian(states).applyfunc(_drop_dirac)
