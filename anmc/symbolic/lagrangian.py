"""Equations of motion from a Lagrangian: `dynamics lagrangian` -> the accelerations, exactly (SymPy).

For generalized coordinates q (n of them) with velocities v = q', a kinetic energy T(q, v), a
potential V(q), a Rayleigh dissipation function D(q, v) and generalized forces Q(q, v), the
Euler-Lagrange equations with L = T - V,

    d/dt dL/dv_i - dL/dq_i + dD/dv_i = Q_i,          i = 1..n,

are, written out (L does not depend on time),

    M(q, v) v' = b(q, v),   M_ij = d2L/dv_i dv_j,
                            b_i  = dL/dq_i - sum_j d2L/dv_i dq_j v_j - dD/dv_i + Q_i,

and the accelerations are v' = M^-1 b (`solve`). Before solving, each entry of M and b goes through two
exact trigonometric rewrites (`tidy`): sin(x)^2 -> 1 - cos(x)^2, so that the sin^2 + cos^2 that a
kinetic energy written in Cartesian velocities leaves cancel, and cos a cos b + sin a sin b ->
cos(a - b) (SymPy's `fu` rules TR5 and TR10i). For the double pendulum this turns M_11 =
m L^2 (sin^2 theta1 + cos^2 theta1) + ... into m L^2 + ..., and the emitted f + J from 18,555 tensor
operations a call into far fewer (benchmarks/lagrangian.py), in ~15 ms of compile time. The model's right-hand sides are then q_i' = v_i
and v_i' = (M^-1 b)_i, so everything after the symbolic layer (the exact Jacobian, the emitters,
the integrators) is the same as for hand-written equations. See docs/language.md, "Equations from
a Lagrangian".

How M^-1 b is formed was measured (benchmarks/lagrangian.py): Cramer's rule (`adjugate`: adj(M) b / det M)
against SymPy's LU solve (`lu`), for 2 and 3 coordinates; `SOLVER` is the faster to compile.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp
from sympy.simplify.fu import TR5, TR10i

SOLVERS = ("lu", "adjugate")
SOLVER = "adjugate"


@dataclass(frozen=True)
class Derivation:
    """The derived equations: M (n, n) and b (n,) of `M v' = b`, and the accelerations v' (n,)."""

    coordinates: tuple[str, ...]
    velocities: tuple[str, ...]
    mass: sp.Matrix
    rhs: sp.Matrix
    accelerations: tuple[sp.Expr, ...]


def euler_lagrange(q: list[sp.Symbol], v: list[sp.Symbol], T: sp.Expr, V: sp.Expr, D: sp.Expr, Q: list[sp.Expr]):
    """(M, b) of the Euler-Lagrange equations `M v' = b` (module docstring), exact."""
    L = T - V
    n = len(q)
    dL_dv = [sp.diff(L, vi) for vi in v]
    M = sp.Matrix(n, n, lambda i, j: sp.diff(dL_dv[i], v[j]))
    b = sp.Matrix(
        [sp.diff(L, q[i]) - sum((sp.diff(dL_dv[i], q[j]) * v[j] for j in range(n)), sp.Integer(0)) - sp.diff(D, v[i]) + Q[i] for i in range(n)]
    )
    return M, b


def tidy(e: sp.Expr) -> sp.Expr:
    """`e` rewritten exactly with sin(x)^2 = 1 - cos(x)^2 and cos a cos b + sin a sin b = cos(a - b) (module docstring)."""
    if not e.has(sp.sin, sp.cos):
        return e
    return TR10i(sp.expand(TR5(sp.expand(e))))


def solve(M: sp.Matrix, b: sp.Matrix, solver: str | None = None) -> list[sp.Expr]:
    """v' = M^-1 b: by SymPy's LU solve (`lu`) or the adjugate times b over the determinant (`adjugate`, Cramer's rule);
    `SOLVER` by default."""
    solver = solver or SOLVER
    if len(b) == 1:
        return [sp.cancel(b[0] / M[0, 0]) if M[0, 0].is_number else b[0] / M[0, 0]]
    if solver == "lu":
        x = M.LUsolve(b)
    elif solver == "adjugate":
        det = M.det(method="berkowitz")
        x = [e / det for e in M.adjugate() * b]
    else:
        raise ValueError(f"unknown solver {solver!r}; must be one of {', '.join(SOLVERS)}")
    return list(x)


def derive(coordinates, velocities, T, V, D, forces: dict[str, sp.Expr], symbol, solver: str | None = None) -> Derivation:
    """The accelerations of `velocities` from the energies (expressions over `symbol(name)` symbols)."""
    q = [symbol(c) for c in coordinates]
    v = [symbol(c) for c in velocities]
    Q = [forces.get(c, sp.Integer(0)) for c in coordinates]
    M, b = euler_lagrange(q, v, T, V, D, Q)
    M, b = M.applyfunc(tidy), b.applyfunc(tidy)
    return Derivation(tuple(coordinates), tuple(velocities), M, b, tuple(solve(M, b, solver)))
