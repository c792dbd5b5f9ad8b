"""Discretize a model: the one-substep map z -> step(z) and its exact Jacobian, as SymPy expressions.

For continuous dynamics z' = F(z) and substep h = dt / steps:

    euler                z + h F(z)
    semi_implicit_euler  each state in declaration order (the order of the `state` lines), using the
                         values already updated before it (x_i <- x_i + h F_i(x_1', ..., x_{i-1}', x_i, ...)),
                         a Gauss-Seidel sweep; symplectic for position/velocity pairs declared in either order
    midpoint             z + h F(z + h/2 F(z))
    rk4                  z + h/6 (k1 + 2 k2 + 2 k3 + k4), the classical Runge-Kutta method

A frame is `steps` substeps; its Jacobian is the product of the substeps' Jacobians (chain rule),
so the symbolic expressions stay one substep long. Discrete dynamics (`next x = ...`) are their own
one-frame map. The numpy and LaTeX emitters use these expressions; the torch module does not: it
differentiates only the right-hand sides and runs the same methods numerically, carrying the
Jacobian through every stage (`anmc.codegen.runtime`, whose tableaus match the steppers here).
"""

from __future__ import annotations

from typing import Callable

import sympy as sp

from anmc.lang.check import INTEGRATORS
from anmc.symbolic.model import Model, symbol

H = sp.Symbol("_h", positive=True)  # the substep length; users cannot write a leading underscore


def _euler(F, z, h):
    return [zi + h * ki for zi, ki in zip(z, F(z))]


def _midpoint(F, z, h):
    half = [zi + h / 2 * ki for zi, ki in zip(z, F(z))]
    return [zi + h * ki for zi, ki in zip(z, F(half))]


def _rk4(F, z, h):
    k1 = F(z)
    k2 = F([zi + h / 2 * k for zi, k in zip(z, k1)])
    k3 = F([zi + h / 2 * k for zi, k in zip(z, k2)])
    k4 = F([zi + h * k for zi, k in zip(z, k3)])
    return [zi + h / 6 * (a + 2 * b + 2 * c + d) for zi, a, b, c, d in zip(z, k1, k2, k3, k4)]


def _semi_implicit_euler(F_single, z, h):
    new = list(z)
    for i in range(len(z)):
        new[i] = z[i] + h * F_single(i, new)
    return new


STEPPERS: dict[str, Callable] = {"euler": _euler, "midpoint": _midpoint, "rk4": _rk4}
assert set(STEPPERS) | {"semi_implicit_euler"} == set(INTEGRATORS)


def substep_expressions(model: Model) -> list[sp.Expr]:
    """The one-substep map as a list (one per state) of expressions in the states, params, consts and `H`."""
    states = [symbol(s) for s in model.states]
    rhs = [model.rhs[s] for s in model.states]

    def F(values):
        mapping = dict(zip(states, values))
        return [r.xreplace(mapping) for r in rhs]

    if model.integrator == "discrete":
        return F(states)
    if model.integrator == "semi_implicit_euler":
        return _semi_implicit_euler(lambda i, values: rhs[i].xreplace(dict(zip(states, values))), states, H)
    return STEPPERS[model.integrator](F, states, H)


def _drop_dirac(expr: sp.Expr) -> sp.Expr:
    """d sign(x)/dx = 2 DiracDelta(x): zero everywhere the map is differentiable."""
    return expr.replace(sp.DiracDelta, lambda *args: sp.Integer(0))


def substep_jacobian(model: Model, step: list[sp.Expr]) -> sp.Matrix:
    """J[i, j] = d step_i / d z_j, exact (piecewise for abs/sign/min/max)."""
    states = [symbol(s) for s in model.states]
    return sp.Matrix(step).jacobian(states).applyfunc(_drop_dirac)


def param_jacobian(model: Model, step: list[sp.Expr]) -> sp.Matrix:
    """d step_i / d p_k for the learnable params p (in declaration order), for users who want it symbolically."""
    params = [symbol(p) for p in model.learnable_params()]
    return sp.Matrix(step).jacobian(params).applyfunc(_drop_dirac) if params else sp.zeros(len(step), 0)
