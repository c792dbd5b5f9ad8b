"""The typed syntax tree of a `.anm` file.

Lark's parse tree is turned into these frozen dataclasses by `anmc.lang.parser`; nothing after the
parser sees a Lark `Tree`. Every node keeps the `Span` of the text it came from, so that the checker
and the symbolic layer can point at the exact line and column of a fault.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Union


@dataclass(frozen=True)
class Span:
    """Where a node's text sits in its source: 1-based line and column, end exclusive."""

    line: int
    column: int
    end_line: int
    end_column: int

    @staticmethod
    def unknown() -> "Span":
        return Span(0, 0, 0, 0)


@lru_cache(maxsize=16)  # asked once per equation and param of a file: split it once
def source_lines(text: str) -> tuple[str, ...]:
    """The lines of `text` as spans number them: Lark counts `\\n` only (a `\\r` before it belongs to
    the line break). `str.splitlines` would also split at `\\x0b`, `\\x0c`, `\\x1c`-`\\x1e`, `\\x85`,
    `\\u2028` and `\\u2029`, which the language allows inside comments, and shift every later line."""
    return tuple(line.removesuffix("\r") for line in text.split("\n"))


# ---------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Number:
    value: float
    text: str
    span: Span


@dataclass(frozen=True)
class Name:
    id: str
    span: Span


@dataclass(frozen=True)
class Unary:
    op: str  # "-"
    operand: "Expr"
    span: Span


@dataclass(frozen=True)
class Binary:
    op: str  # one of + - * / ^
    left: "Expr"
    right: "Expr"
    span: Span


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple["Expr", ...]
    span: Span
    func_span: Span


Expr = Union[Number, Name, Unary, Binary, Call]


def walk_names(expr: Expr):
    """Yield every `Name` and `Call` node of an expression, depth first."""
    if isinstance(expr, Name):
        yield expr
    elif isinstance(expr, Unary):
        yield from walk_names(expr.operand)
    elif isinstance(expr, Binary):
        yield from walk_names(expr.left)
        yield from walk_names(expr.right)
    elif isinstance(expr, Call):
        yield expr
        for arg in expr.args:
            yield from walk_names(arg)


# ---------------------------------------------------------------- statements


@dataclass(frozen=True)
class Distribution:
    """`Normal(mu, sd)` or `Uniform(lo, hi)`; the kind is checked later, so typos get a good message."""

    kind: str
    args: tuple[Expr, ...]
    span: Span
    kind_span: Span


@dataclass(frozen=True)
class ConstDecl:
    name: str
    value: Expr
    span: Span
    name_span: Span


@dataclass(frozen=True)
class ParamDecl:
    name: str
    value: Expr
    bounds: tuple[Expr, Expr] | None
    learn: bool
    span: Span
    name_span: Span


@dataclass(frozen=True)
class StateDecl:
    name: str
    init: Distribution
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Equation:
    """`x' = expr` (derivative=True) or `next x = expr` (derivative=False)."""

    state: str
    rhs: Expr
    derivative: bool
    span: Span
    state_span: Span


@dataclass(frozen=True)
class Let:
    """`let NAME = EXPR`: a named intermediate, usable by the lines below it, substituted exactly."""

    name: str
    value: Expr
    span: Span
    name_span: Span


@dataclass(frozen=True)
class NameList:
    """`coordinates q1, q2` or `velocities v1, v2` (`kind`), in a `dynamics lagrangian` block."""

    kind: str  # "coordinates" | "velocities"
    names: tuple[tuple[str, Span], ...]
    span: Span


@dataclass(frozen=True)
class Energy:
    """`kinetic T = EXPR`, `potential V = EXPR` or `dissipation D = EXPR` (Rayleigh), in a Lagrangian block."""

    kind: str  # "kinetic" | "potential" | "dissipation"
    name: str
    value: Expr
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Force:
    """`force q = EXPR`: the generalized force Q_q on coordinate q (the right side of its Euler-Lagrange equation)."""

    coordinate: str
    value: Expr
    span: Span
    coordinate_span: Span


DynamicsItem = Union[Equation, Let, NameList, Energy, Force]


@dataclass(frozen=True)
class Dynamics:
    kind: str  # "continuous" | "discrete" | "lagrangian"
    dt: Expr | None
    integrator: str | None
    integrator_span: Span | None
    steps: int | None
    steps_span: Span | None
    equations: tuple[Equation, ...]
    span: Span
    items: tuple[DynamicsItem, ...] = ()  # every line of the block, in order (equations and lets included)

    @property
    def lets(self) -> tuple[Let, ...]:
        return tuple(i for i in self.items if isinstance(i, Let))

    def of(self, kind) -> tuple:
        """The block's items of one class (`ast.Energy`, `ast.Force`, `ast.NameList`), in order."""
        return tuple(i for i in self.items if isinstance(i, kind))


@dataclass(frozen=True)
class NoiseEntry:
    state: str
    std: Expr
    learn: bool
    span: Span
    state_span: Span
    bounds: tuple[Expr, Expr] | None = None  # `in [lo, hi]`: where a learnable std may go


@dataclass(frozen=True)
class NoiseDecl:
    entries: tuple[NoiseEntry, ...]
    span: Span


@dataclass(frozen=True)
class Observation:
    """`theta` (value None: the state itself, named after it) or `brightness = EXPR` (a function of the
    states, params, consts and lets), one item of an `observe` line."""

    name: str
    value: Expr | None
    span: Span
    name_span: Span

    @property
    def plain(self) -> bool:
        """`observe theta` (or `observe theta = theta`): the observation is a state, named after it."""
        return self.value is None or (isinstance(self.value, Name) and self.value.id == self.name)


@dataclass(frozen=True)
class ObserveDecl:
    """One `observe` line: its observations, in order."""

    items: tuple[Observation, ...]
    span: Span


@dataclass(frozen=True)
class SetItem:
    """`set c = 0.8`: give a const or param another value."""

    name: str
    value: Expr
    span: Span
    name_span: Span


@dataclass(frozen=True)
class InitItem:
    """`init theta ~ Normal(0, 1.6)`: another initial-frame distribution."""

    state: str
    init: Distribution
    span: Span
    state_span: Span


@dataclass(frozen=True)
class StartItem:
    """`start theta = 1.5 * theta`: transform an encoded starting state (an expression of the states)."""

    state: str
    value: Expr
    span: Span
    state_span: Span


InterventionItem = Union[SetItem, Equation, InitItem, StartItem, Let]


@dataclass(frozen=True)
class Intervention:
    name: str
    items: tuple[InterventionItem, ...]
    span: Span
    name_span: Span


Statement = Union[ConstDecl, ParamDecl, StateDecl, Dynamics, NoiseDecl, ObserveDecl, Intervention]


@dataclass(frozen=True)
class Program:
    """A whole `.anm` file: its statements in source order, plus the text for error messages."""

    model: str | None
    model_span: Span | None
    statements: tuple[Statement, ...]
    source: str = field(repr=False)
    filename: str = "<anm>"
