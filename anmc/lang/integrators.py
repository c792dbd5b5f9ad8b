"""The integrators the language names (`dynamics continuous ... using NAME`): one table, read by the
checker (valid names), the symbolic model (`anmc.symbolic.integrators`) and the torch runtime
(`anmc.codegen.runtime`). Adding an integrator is one entry here.

An explicit Runge-Kutta method for z' = F(z) with substep h is a tableau (a, b):

    k_1 = F(z),  k_s = F(z + h Σ_{j<s} a[s-2][j] k_j)  (s = 2..S),   z ← z + h Σ_s b[s-1] k_s

`semi_implicit_euler` is not a tableau: each state is updated in declaration order from the values
already updated before it (a Gauss-Seidel sweep), symplectic for position/velocity pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class Integrator:
    name: str
    a: tuple[tuple[Fraction, ...], ...]  # stage coefficients, lower-triangular, one row per stage after the first
    b: tuple[Fraction, ...]  # weights of the stages
    sweep: bool = False  # a Gauss-Seidel sweep over the states (semi-implicit Euler) instead of a tableau
    summary: str = ""


def _f(*values: str) -> tuple[Fraction, ...]:
    return tuple(Fraction(v) for v in values)


INTEGRATORS: dict[str, Integrator] = {
    "euler": Integrator("euler", (), _f("1"), summary="z + h F(z)"),
    "semi_implicit_euler": Integrator(
        "semi_implicit_euler", (), _f("1"), sweep=True,
        summary="x_i <- x_i + h F_i(x_1', ..., x_{i-1}', x_i, ...) in declaration order",
    ),
    "midpoint": Integrator("midpoint", (_f("1/2"),), _f("0", "1"), summary="z + h F(z + h/2 F(z))"),
    "rk4": Integrator(
        "rk4", (_f("1/2"), _f("0", "1/2"), _f("0", "0", "1")), _f("1/6", "1/3", "1/3", "1/6"),
        summary="z + h/6 (k1 + 2 k2 + 2 k3 + k4), the classical Runge-Kutta method",
    ),
}  # fmt: skip
