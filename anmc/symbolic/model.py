"""The checked model: `.anm` AST -> SymPy right-hand sides and numeric declarations.

    model = load_model("priors/pendulum.anm")            # parse + check + build, or AnmError
    model = apply_intervention(model, "drag")             # a new Model; the original is unchanged
    model = apply_edits(model, ["c = 0.8", "omega' = -(g/L)*sin(theta) - c*omega*abs(omega)"])

A `Model` is a plain dataclass. Its right-hand sides are SymPy expressions built directly from the
AST (never from strings, so no user text is ever `sympify`-ed), over real symbols named after the
states, consts and params. Applying an intervention rebuilds the model from its program with the
intervention's items as overrides, so values that depend on a changed const follow it.
"""

from __future__ import annotations

import keyword
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import sympy as sp

from anmc.lang import ast
from anmc.lang.check import check_edit, check_program
from anmc.lang.errors import AnmError, Diagnostic, diagnostic_at, did_you_mean
from anmc.lang.parser import parse_anm, parse_edit
from anmc.lang.source import read_source  # noqa: F401 (re-exported: part of this module's interface)
from anmc.symbolic.lagrangian import Derivation, derive

SYMPY_FUNCTIONS = {
    "sin": sp.sin, "cos": sp.cos, "tan": sp.tan, "exp": sp.exp, "log": sp.log, "sqrt": sp.sqrt,
    "abs": sp.Abs, "tanh": sp.tanh, "sinh": sp.sinh, "cosh": sp.cosh, "atan": sp.atan,
    "atan2": sp.atan2, "sign": sp.sign, "min": sp.Min, "max": sp.Max,
}  # fmt: skip
SYMPY_CONSTANTS = {"pi": sp.pi, "e": sp.E}


def symbol(name: str) -> sp.Symbol:
    """The SymPy symbol anmc uses for a declared name (real-valued, so |x|' = sign(x))."""
    return sp.Symbol(name, real=True)


def _evaluated(value: sp.Expr) -> sp.Expr:
    """A number-valued expression (sin(1), sqrt(2), e^pi) as a Float, so that every emitter prints a plain
    number; exact rationals stay exact. Something not finite and real stays visible (zoo, a huge or complex
    Float) for `non_finite_part` to report."""
    if value.is_Rational:
        return value
    return sp.N(value, 17)


def _power(a: sp.Expr, b: sp.Expr) -> sp.Expr:
    """a^b; between two numbers, evaluated without ever building a giant exact integer (9^9^9 does not hang)."""
    if not (a.is_number and b.is_number):
        return a**b
    if a.is_Rational and b.is_Integer and abs(int(b)) * max(len(str(a.p)), len(str(a.q))) <= 60:
        return a**b  # small and exact: 2^3 = 8, 10^-3 = 1/1000
    return _evaluated(sp.Pow(a, b, evaluate=False))


def to_sympy(expr: ast.Expr, symbols: dict[str, sp.Expr]) -> sp.Expr:
    """Build the SymPy expression of an AST expression; `symbols` maps each usable name to an expression.

    Integers up to 15 digits stay exact, longer numbers become Floats; calls and powers whose arguments
    are all numbers are evaluated to numbers here (see `_evaluated`)."""
    if isinstance(expr, ast.Number):
        text = expr.text
        if text.isdigit() and len(text) <= 15:
            return sp.Integer(int(text))
        return sp.Float(expr.value) if math.isfinite(expr.value) else sp.oo
    if isinstance(expr, ast.Name):
        return symbols[expr.id] if expr.id in symbols else SYMPY_CONSTANTS[expr.id]
    if isinstance(expr, ast.Unary):
        return -to_sympy(expr.operand, symbols)
    if isinstance(expr, ast.Binary):
        a, b = to_sympy(expr.left, symbols), to_sympy(expr.right, symbols)
        if expr.op == "^":
            return _power(a, b)
        return {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a / b}[expr.op]()
    if isinstance(expr, ast.Call):
        args = [to_sympy(a, symbols) for a in expr.args]
        value = SYMPY_FUNCTIONS[expr.func](*args)
        return _evaluated(value) if all(a.is_number for a in args) else value
    raise TypeError(f"not an expression node: {expr!r}")


def non_finite_part(expr: sp.Expr) -> sp.Expr | None:
    """The first number-valued part of `expr` that is not a finite real float (1/0, log(0), sqrt(-1),
    1e999, 0 * 1e999), or None."""
    for node in sp.preorder_traversal(expr):
        if node.is_number:
            try:
                value = complex(node)
            except (TypeError, ValueError, OverflowError):
                return node
            if value.imag != 0 or not (math.isfinite(value.real) and abs(value.real) <= 1.7976931348623157e308):
                return node
    return None


def _describe_number(value: sp.Expr) -> str:
    if value in (sp.zoo, sp.oo, -sp.oo):
        return "an infinite value (such as 1/0, log(0) or 1e999)"
    if value is sp.nan:
        return "an undefined value (such as 0 * 1e999 or atan2(0, 0))"
    return number_text(value) + (", which is not a real number" if _is_complex(value) else ", which is too large for a float")


def _is_complex(value: sp.Expr) -> bool:
    return sp.im(sp.N(value, 15)) != 0


def number_text(value: sp.Expr) -> str:
    """A number as anmc writes it in messages (6 significant digits, `i` for the imaginary unit), the same
    across SymPy versions: '3.14159i', '2 + 1i', '4.36327e+3010299956'."""
    import mpmath

    z = sp.N(value, 15)
    if z.has(sp.nan) or not z.is_number:
        return "nan"
    if z.has(sp.zoo, sp.oo, -sp.oo):
        return "infinity"
    parts = [sp.Float(part, 15) for part in (sp.re(z), sp.im(z))]
    if not all(isinstance(p, sp.Float) and p.is_finite for p in parts):
        return "nan"
    real, im = (mpmath.mpf(p._mpf_) for p in parts)
    text = lambda x: re_.sub(r"\.0(?=$|e)", "", mpmath.nstr(x, 6, min_fixed=-4, max_fixed=7))  # noqa: E731
    re_ = re
    if im == 0:
        return text(real)
    if real == 0:
        return text(im) + "i"
    return f"{text(real)} {'-' if im < 0 else '+'} {text(abs(im))}i"


def source_text(span: ast.Span, source: str) -> str:
    """The text of a one-line span, as written."""
    line = ast.source_lines(source)[span.line - 1]
    end = span.end_column - 1 if span.end_line == span.line else len(line)
    return line[span.column - 1 : end].split("#")[0].strip()


# ---------------------------------------------------------------- the IR


@dataclass(frozen=True)
class Param:
    """`param NAME = value [in [lo, hi]] [learn]`."""

    name: str
    value: float
    bounds: tuple[float, float] | None
    learn: bool
    line: int
    text: str


@dataclass(frozen=True)
class InitialDistribution:
    """`Normal(a=mean, b=sd)` or `Uniform(a=low, b=high)`; `mean`/`std` are its first two moments."""

    kind: str
    a: float
    b: float

    @property
    def mean(self) -> float:
        return self.a if self.kind == "Normal" else 0.5 * (self.a + self.b)

    @property
    def std(self) -> float:
        return self.b if self.kind == "Normal" else (self.b - self.a) / math.sqrt(12.0)

    def __str__(self) -> str:
        return f"{self.kind}({self.a:g}, {self.b:g})"


@dataclass(frozen=True)
class NoiseStd:
    value: float
    learn: bool
    bounds: tuple[float, float] | None = None  # a learnable std's range: lo < value < hi, lo > 0


@dataclass
class Overrides:
    """What interventions and edits change; each entry keeps the source its AST spans point into."""

    sets: dict[str, tuple[ast.Expr, str, str]] = field(default_factory=dict)
    equations: dict[str, tuple[ast.Equation, str, str]] = field(default_factory=dict)
    inits: dict[str, tuple[ast.Distribution, str, str]] = field(default_factory=dict)
    starts: dict[str, tuple[ast.Expr, str, str]] = field(default_factory=dict)
    applied: tuple[str, ...] = ()
    lets: dict[str, tuple[ast.Let, str, str]] = field(default_factory=dict)
    # how to apply them again to the source (`replay`): ("intervention", name), ("edit", text) or
    # ("file", text, filename, block name), in order; a checkpoint stores them beside the source
    steps: tuple[tuple[str, ...], ...] = ()

    def copy(self) -> "Overrides":
        return Overrides(dict(self.sets), dict(self.equations), dict(self.inits), dict(self.starts), self.applied, dict(self.lets),
                         self.steps)  # fmt: skip


@dataclass
class Model:
    """A checked prior.

    One frame: z_t = f(z_{t-1}) + eps_t, eps_t ~ N(0, diag(noise**2)), z = (states...) in declaration
    order. `rhs[x]` is dx/dt (continuous) or the next value of x (discrete), over `symbol(name)`.
    """

    name: str
    states: tuple[str, ...]
    observed: tuple[str, ...]
    consts: dict[str, float]
    params: dict[str, Param]
    kind: str  # "continuous" | "discrete"
    dt: float
    dt_text: str
    integrator: str  # one of INTEGRATORS, or "discrete"
    substeps: int
    rhs: dict[str, sp.Expr]
    rhs_text: dict[str, str]
    noise: dict[str, NoiseStd]
    init: dict[str, InitialDistribution]
    start: dict[str, sp.Expr]
    program: ast.Program = field(repr=False)
    overrides: Overrides = field(default_factory=Overrides, repr=False)
    warnings: list[Diagnostic] = field(default_factory=list, repr=False)
    interventions: tuple[str, ...] = ()
    lets: dict[str, sp.Expr] = field(default_factory=dict)  # each let over the names and lets above it (for display)
    rhs_shown: dict[str, sp.Expr] = field(default_factory=dict)  # rhs over the let symbols (for display)
    derivation: Derivation | None = field(default=None, repr=False)  # set for `dynamics lagrangian`
    energies: dict[str, tuple[str, sp.Expr]] = field(default_factory=dict)  # kind -> (name, expr over lets)
    # what a frame shows: h(z) = (h_1(z), ..., h_m(z)), each (name, expression over the states, params and
    # consts; lets substituted); `observe theta` is ("theta", theta). Without an observe line, every state.
    observations: tuple[tuple[str, sp.Expr], ...] = ()
    observations_shown: dict[str, sp.Expr] = field(default_factory=dict)  # over the let symbols (for display)
    observation_text: dict[str, str] = field(default_factory=dict)  # `brightness = 0.5 + 0.5*cos(phase)` as typed

    @property
    def d(self) -> int:
        return len(self.states)

    @property
    def observation_names(self) -> tuple[str, ...]:
        """The names of h's outputs, in order (m of them)."""
        return tuple(name for name, _ in self.observations)

    @property
    def plain_observations(self) -> bool:
        """Whether every observation is a state named after itself (`observe theta, x`): then h picks the
        observed states, in state order, and the compiled module keeps AnmModule's default h and H."""
        return all(name in self.states and expr == symbol(name) for name, expr in self.observations) and self.observation_names == self.observed

    @property
    def observation_function(self) -> sp.Matrix:
        """h(z) as an (m, 1) SymPy matrix over the states, params and consts (docs/method.md §1)."""
        return sp.Matrix([expr for _, expr in self.observations])

    @property
    def observation_jacobian(self) -> sp.Matrix:
        """H = dh/dz, (m, d), exact (SymPy's derivatives; the Dirac deltas of sign() dropped: zero wherever h is
        differentiable)."""
        states = [symbol(s) for s in self.states]
        H = self.observation_function.jacobian(states)
        return H.applyfunc(lambda e: e.replace(sp.DiracDelta, lambda *args: sp.Integer(0)))

    @property
    def observation_affine(self) -> bool:
        """True when h is affine in the states (H holds no state): a reading then pins what it reads,
        and the smoother's cheaper points serve (docs/method.md §6)."""
        states = {symbol(s) for s in self.states}
        return not any(e.free_symbols & states for e in self.observation_jacobian)

    @property
    def observed_index(self) -> tuple[int, ...]:
        return tuple(self.states.index(s) for s in self.observed)

    @property
    def applied(self) -> tuple[str, ...]:
        return self.overrides.applied

    @property
    def source(self) -> str:
        return self.program.source

    @property
    def filename(self) -> str:
        return self.program.filename

    def symbols(self) -> dict[str, sp.Symbol]:
        names = [*self.states, *self.consts, *self.params]
        return {n: symbol(n) for n in names}


# ---------------------------------------------------------------- building


class _Builder:
    """Evaluates the numeric parts of a checked program and collects every numeric error."""

    def __init__(self, program: ast.Program, overrides: Overrides):
        self.p = program
        self.o = overrides
        self.diags: list[Diagnostic] = []

    def error(self, message, span, source=None, filename=None):
        self.diags.append(diagnostic_at(message, span, source or self.p.source, filename or self.p.filename))

    def number(self, expr, env, what, source=None, filename=None) -> float:
        """Evaluate a constant expression; NaN is returned (and an error recorded) if it is not a finite real."""
        value = to_sympy(expr, {k: sp.Float(v) if not isinstance(v, sp.Expr) else v for k, v in env.items()})
        try:
            result = complex(sp.N(value))
        except (TypeError, ValueError):
            result = complex("nan")
        if result.imag != 0 or not math.isfinite(result.real):
            self.error(f"{what} is not a finite real number (it evaluates to {number_text(value)})", expr.span, source, filename)
            return math.nan
        return result.real

    def finite(self, value: sp.Expr, expr: ast.Expr, what: str, source, filename, consts=None) -> None:
        """Record an error if a number inside an equation is not a finite real (the code could not compute
        it), also once the consts' values are put in (1/(k - 2) with k = 2)."""
        bad = non_finite_part(value)
        if bad is None and consts:
            bad = non_finite_part(value.xreplace({symbol(n): sp.Float(v) for n, v in consts.items() if math.isfinite(v)}))
        if bad is not None:
            self.error(f"{what} contains {_describe_number(bad)}", expr.span, source, filename)

    def build(self) -> Model:
        """The Model: each declaration kind evaluated in turn (the order in which errors are reported)."""
        stmts = self.p.statements
        consts = self.consts()
        params = self.params(consts)
        self.apply_sets(consts, params)
        self._params = params
        values = {**consts, **{n: q.value for n, q in params.items()}}
        states, init = self.states(values)
        dyn = next(s for s in stmts if isinstance(s, ast.Dynamics))
        dt, dt_text = self.frame_interval(dyn, consts)
        symbols = {n: symbol(n) for n in [*states, *consts, *params]}
        symbols["dt"] = sp.Float(dt)
        shown = dict(symbols)
        lets = self.lets(dyn, symbols, shown, consts)
        rhs, rhs_text, rhs_shown = self.equations(dyn, symbols, shown, consts)
        derivation, energies = None, {}
        if dyn.kind == "lagrangian":
            derivation, energies = self.lagrangian(dyn, symbols, shown, consts, rhs, rhs_text, rhs_shown)
        start = self.starts(symbols, consts)
        noise = self.noise(values)
        observations, observations_shown, observation_text = self.observations(states, symbols, shown, consts)
        depends = set().union(*(e.free_symbols for _, e in observations))
        return Model(
            name=self.model_name(),
            states=tuple(states),
            observed=tuple(s for s in states if symbol(s) in depends),
            consts=consts,
            params=params,
            kind="discrete" if dyn.kind == "discrete" else "continuous",
            dt=dt,
            dt_text=dt_text,
            integrator=(dyn.integrator or "rk4") if dyn.kind != "discrete" else "discrete",
            substeps=(dyn.steps or 1) if dyn.kind != "discrete" else 1,
            rhs={s: rhs.get(s, sp.Integer(0)) for s in states},  # missing only when an error was recorded
            rhs_text={s: rhs_text.get(s, "") for s in states},
            noise={s: noise[s] for s in states},
            init=init,
            start=start,
            program=self.p,
            overrides=self.o,
            interventions=tuple(s.name for s in stmts if isinstance(s, ast.Intervention)),
            lets=lets,
            rhs_shown={s: rhs_shown.get(s, sp.Integer(0)) for s in states},
            derivation=derivation,
            energies=energies,
            observations=observations,
            observations_shown=observations_shown,
            observation_text=observation_text,
        )

    def consts(self) -> dict[str, float]:
        """`const` values, in file order (a const may use the consts above it)."""
        consts: dict[str, float] = {}
        for s in self.p.statements:
            if isinstance(s, ast.ConstDecl):
                consts[s.name] = self.number(s.value, consts, f"const '{s.name}'")
        return consts

    def params(self, consts: dict[str, float]) -> dict[str, Param]:
        """`param` values and bounds: a value inside its bounds, a learnable one strictly inside."""
        params: dict[str, Param] = {}
        for s in self.p.statements:
            if isinstance(s, ast.ParamDecl):
                value = self.number(s.value, consts, f"param '{s.name}'")
                bounds = None
                if s.bounds:
                    lo = self.number(s.bounds[0], consts, "the lower bound")
                    hi = self.number(s.bounds[1], consts, "the upper bound")
                    bounds = (lo, hi)
                    if not lo < hi:
                        self.error(f"empty bounds [{lo:g}, {hi:g}] for param '{s.name}': the lower bound must be below the upper", s.bounds[0].span)
                    elif not lo <= value <= hi:
                        self.error(f"param '{s.name}' = {value:g} is outside its bounds [{lo:g}, {hi:g}]", s.value.span)
                    elif s.learn and not lo < value < hi:
                        self.error(f"learnable param '{s.name}' = {value:g} sits on a bound of [{lo:g}, {hi:g}]; start it strictly inside", s.value.span)
                line = ast.source_lines(self.p.source)[s.span.line - 1].split("#")[0].strip()
                params[s.name] = Param(s.name, value, bounds, s.learn, s.span.line, line)
        return params

    def apply_sets(self, consts: dict[str, float], params: dict[str, Param]) -> None:
        """Interventions' `set NAME = value`, evaluated with the declared values, then substituted in place;
        consts that depend on a changed const follow it."""
        declared = {**consts, **{n: q.value for n, q in params.items()}}
        for name, (expr, src, fname) in self.o.sets.items():
            value = self.number(expr, declared, f"the value set for '{name}'", src, fname)
            if name in params:
                q = params[name]
                if q.bounds and not q.bounds[0] <= value <= q.bounds[1]:
                    self.error(f"'{name}' = {value:g} is outside its bounds [{q.bounds[0]:g}, {q.bounds[1]:g}]; widen them in the model if this is intended", expr.span, src, fname)
                params[name] = replace(q, value=value)
            else:
                consts[name] = value
        if self.o.sets:
            for s in self.p.statements:
                if isinstance(s, ast.ConstDecl) and s.name not in self.o.sets:
                    consts[s.name] = self.number(s.value, consts, f"const '{s.name}'")

    def states(self, values: dict[str, float]) -> tuple[list[str], dict[str, InitialDistribution]]:
        """The states in declaration order and their initial distributions (an intervention's `init` wins)."""
        states, init = [], {}
        for s in self.p.statements:
            if isinstance(s, ast.StateDecl):
                states.append(s.name)
                dist, src, fname = self.o.inits.get(s.name, (s.init, self.p.source, self.p.filename))
                init[s.name] = self.distribution(dist, values, src, fname)
        return states, init

    def frame_interval(self, dyn: ast.Dynamics, consts: dict[str, float]) -> tuple[float, str]:
        """dt (positive) and its source text; 1 for discrete dynamics without one."""
        if dyn.dt is None:
            return 1.0, "1"
        dt = self.number(dyn.dt, consts, "dt")
        if not dt > 0:
            self.error(f"dt must be positive, got {dt:g}", dyn.dt.span)
        return dt, source_text(dyn.dt.span, self.p.source)

    def lets(self, dyn: ast.Dynamics, symbols: dict, shown: dict, consts: dict[str, float]) -> dict[str, sp.Expr]:
        """Each `let` (an intervention's redefinition wins; its new lets come last), substituted exactly:
        `symbols[name]` becomes its value over the states, params and consts, `shown[name]` its own symbol.
        Returns each let over the names and lets above it, for display."""
        lets = {}
        items = [(let.name, self.o.lets.get(let.name, (let, self.p.source, self.p.filename))) for let in dyn.lets]
        items += [(name, item) for name, item in self.o.lets.items() if name not in {let.name for let in dyn.lets}]
        for name, (let, src, fname) in items:
            lets[name] = to_sympy(let.value, shown)
            symbols[name] = to_sympy(let.value, symbols)
            shown[name] = symbol(name)
            self.finite(symbols[name], let.value, f"let '{name}'", src, fname, consts)
        return lets

    def equations(self, dyn: ast.Dynamics, symbols: dict, shown: dict, consts: dict[str, float]) -> tuple[dict, dict, dict]:
        """Each state's right-hand side as SymPy (an intervention's edited equation wins), its text, and its
        form over the let symbols."""
        rhs, rhs_text, rhs_shown = {}, {}, {}
        written = {eq.state: (eq, self.p.source, self.p.filename) for eq in dyn.equations}
        for state, (eq_, src, fname) in {**written, **self.o.equations}.items():
            rhs[state] = to_sympy(eq_.rhs, symbols)
            rhs_shown[state] = to_sympy(eq_.rhs, shown)
            self.finite(rhs[state], eq_.rhs, f"the equation of '{state}'", src, fname, consts)
            prefix = f"{state}' = " if eq_.derivative else f"next {state} = "
            rhs_text[state] = prefix + source_text(eq_.rhs.span, src)
        return rhs, rhs_text, rhs_shown

    def lagrangian(self, dyn, symbols, shown, consts, rhs, rhs_text, rhs_shown):
        """`dynamics lagrangian`: the accelerations derived from the energies (anmc.symbolic.lagrangian) fill the
        right-hand sides that no intervention replaced: q' = v, v' = (M^-1 b)."""
        (q,) = [n.names for n in dyn.of(ast.NameList) if n.kind == "coordinates"]
        (v,) = [n.names for n in dyn.of(ast.NameList) if n.kind == "velocities"]
        q, v = [n for n, _ in q], [n for n, _ in v]
        energies, exact = {}, {"kinetic": sp.Integer(0), "potential": sp.Integer(0), "dissipation": sp.Integer(0)}
        for e in dyn.of(ast.Energy):
            exact[e.kind] = to_sympy(e.value, symbols)
            energies[e.kind] = (e.name, to_sympy(e.value, shown))
            self.finite(exact[e.kind], e.value, f"the {e.kind} energy", self.p.source, self.p.filename, consts)
        forces = {}
        for f in dyn.of(ast.Force):
            forces[f.coordinate] = to_sympy(f.value, symbols)
            energies[f"force {f.coordinate}"] = (f"Q_{f.coordinate}", to_sympy(f.value, shown))
        if exact["potential"].free_symbols & {symbol(n) for n in v}:
            e = next(e for e in dyn.of(ast.Energy) if e.kind == "potential")
            self.error("the potential energy depends on a velocity; velocity-dependent terms go in the kinetic energy", e.value.span)
            return None, energies
        derivation = derive(q, v, exact["kinetic"], exact["potential"], exact["dissipation"], forces, symbol)
        if self.singular(derivation.mass, symbols, consts):
            e = next(e for e in dyn.of(ast.Energy) if e.kind == "kinetic")
            self.error(
                "the kinetic energy's mass matrix d2T/dv2 is singular, so the accelerations are not determined; "
                "T must contain every velocity (squared), e.g. m*v^2/2 for each", e.value.span,
            )  # fmt: skip
            return None, energies
        for name, value in [*zip(q, (symbol(n) for n in v)), *zip(v, derivation.accelerations)]:
            if name not in self.o.equations:
                rhs[name] = rhs_shown[name] = value
                text = sp.sstr(value)
                rhs_text[name] = f"{name}' = " + (text if len(text) <= 160 else f"(row {v.index(name) + 1} of M^-1 b, derived from the Lagrangian)")
        return derivation, energies

    def singular(self, M: sp.Matrix, symbols: dict, consts: dict[str, float]) -> bool:
        """Whether det M vanishes at the declared values and three arbitrary states (then it is singular)."""
        values = {symbol(n): sp.Float(v) for n, v in consts.items()}
        values |= {symbol(n): sp.Float(p.value) for n, p in getattr(self, "_params", {}).items()}
        free = sorted(set().union(*(e.free_symbols for e in M)) - set(values), key=str)
        for k in range(3):
            point = {s: sp.Float(0.37 + 0.61 * k + 0.13 * i) for i, s in enumerate(free)}
            try:
                det = complex(M.xreplace(values).xreplace(point).evalf().det())
            except (TypeError, ValueError):
                continue
            if abs(det) > 1e-12:
                return False
        return True

    def observations(self, states: list[str], symbols: dict, shown: dict, consts: dict[str, float]):
        """The observations (name, h_i) in the order written (`observe theta` lines alone: in state order, as
        `observed` lists them), each over the lets shown, and each as typed. Without an observe line, every
        state. An expression that reduces to no state (`theta - theta`) is an error here; the checker has
        reported the ones that name none."""
        decls = [ob for s in self.p.statements if isinstance(s, ast.ObserveDecl) for ob in s.items]
        if not decls:
            return tuple((s, symbol(s)) for s in states), {s: symbol(s) for s in states}, {s: s for s in states}
        if all(ob.plain for ob in decls):
            decls = sorted(decls, key=lambda ob: states.index(ob.name))
        state_symbols = {symbol(s) for s in states}
        out, out_shown, text = [], {}, {}
        for ob in decls:
            if ob.plain:
                out.append((ob.name, symbol(ob.name)))
                out_shown[ob.name], text[ob.name] = symbol(ob.name), ob.name
                continue
            value = to_sympy(ob.value, symbols)
            self.finite(value, ob.value, f"observation '{ob.name}'", self.p.source, self.p.filename, consts)
            if not value.free_symbols & state_symbols:
                self.error(f"observation '{ob.name}' depends on no state: it reduces to {sp.sstr(value)}", ob.value.span)
            out.append((ob.name, value))
            out_shown[ob.name] = to_sympy(ob.value, shown)
            text[ob.name] = f"{ob.name} = {source_text(ob.value.span, self.p.source)}"
        return tuple(out), out_shown, text

    def starts(self, symbols: dict, consts: dict[str, float]) -> dict:
        """Interventions' `start STATE = expr` (a map of the encoded start state) as SymPy."""
        start = {}
        for s, (e, src, fname) in self.o.starts.items():
            start[s] = to_sympy(e, symbols)
            self.finite(start[s], e, f"the start value of '{s}'", src, fname, consts)
        return start

    def noise(self, values: dict[str, float]) -> dict[str, NoiseStd]:
        """Noise stds: zero or positive, positive when learnable; bounds only on a learnable one, positive,
        with the starting value strictly inside."""
        noise = {}
        for decl in (s for s in self.p.statements if isinstance(s, ast.NoiseDecl)):
            for entry in decl.entries:
                value = self.number(entry.std, values, f"the noise std of '{entry.state}'")
                if value < 0 or (entry.learn and value <= 0):
                    need = "positive to be learnable" if entry.learn else "zero or positive"
                    self.error(f"the noise std of '{entry.state}' must be {need}, got {value:g}", entry.std.span)
                bounds = None
                if entry.bounds:
                    lo = self.number(entry.bounds[0], values, "the lower bound")
                    hi = self.number(entry.bounds[1], values, "the upper bound")
                    bounds = (lo, hi)
                    if not entry.learn:
                        self.error(f"bounds on the noise std of '{entry.state}' only apply to a learnable one: add 'learn' after them, or remove them", entry.bounds[0].span)
                    elif not 0 < lo < hi:
                        self.error(f"bounds [{lo:g}, {hi:g}] for the noise std of '{entry.state}': give 0 < lower < upper", entry.bounds[0].span)
                    elif not lo < value < hi:
                        self.error(f"the learnable noise std of '{entry.state}' = {value:g} is not strictly inside its bounds [{lo:g}, {hi:g}]; start it inside", entry.std.span)
                noise[entry.state] = NoiseStd(value, entry.learn, bounds)
        return noise

    def model_name(self) -> str:
        """The `model` name (else the file's stem), usable as the generated class's name."""
        p = self.p
        name = p.model or re.sub(r"\W", "_", Path(p.filename).stem) or "model"
        if not name[:1].isalpha():
            name = "model_" + name
        title = "".join(part[:1].upper() + part[1:] for part in name.split("_"))  # the generated class's name
        if keyword.iskeyword(title):
            if p.model:
                self.error(f"'{name}' cannot name a model: its generated class would be called '{title}', a Python keyword", p.model_span)
            name += "_model"
        return name

    def distribution(self, dist: ast.Distribution, values, source, filename) -> InitialDistribution:
        a = self.number(dist.args[0], values, f"the first argument of {dist.kind}", source, filename)
        b = self.number(dist.args[1], values, f"the second argument of {dist.kind}", source, filename)
        if dist.kind == "Normal" and not b > 0:
            self.error(f"the standard deviation of a Normal must be positive, got {b:g}", dist.args[1].span, source, filename)
        if dist.kind == "Uniform" and not a < b:
            self.error(f"Uniform(low, high) needs low < high, got Uniform({a:g}, {b:g})", dist.span, source, filename)
        return InitialDistribution(dist.kind, a, b)


def too_deep(filename: str) -> Diagnostic:
    """The error for expressions SymPy cannot handle within Python's recursion limit."""
    return Diagnostic(
        "the equations are nested too deeply to build, differentiate and emit within Python's recursion limit; "
        "simplify them or split them with consts", filename, 0, 0,
    )  # fmt: skip


def build_model(program: ast.Program, overrides: Overrides | None = None) -> Model:
    """Check `program` (statically, then numerically) and build its `Model`; raise AnmError with every error."""
    diags = check_program(program)
    errors = [d for d in diags if d.severity == "error"]
    if errors:
        raise AnmError(errors)
    builder = _Builder(program, overrides or Overrides())
    try:
        model = builder.build()
    except RecursionError:
        raise AnmError(too_deep(program.filename)) from None
    if builder.diags:
        raise AnmError(builder.diags)
    model.warnings = [d for d in diags if d.severity != "error"]
    return model


def load_model(path_or_text: str | Path, filename: str | None = None) -> Model:
    """Parse, check and build a model from a `.anm` path or text."""
    text, name = read_source(path_or_text)
    return build_model(parse_anm(text, filename or name))


def _with_items(model: Model, items, source: str, filename: str, label: str, step: tuple[str, ...]) -> Model:
    o = model.overrides.copy()
    o.steps = (*o.steps, step)
    for item in items:
        if isinstance(item, ast.SetItem):
            o.sets[item.name] = (item.value, source, filename)
        elif isinstance(item, ast.Equation):
            o.equations[item.state] = (item, source, filename)
        elif isinstance(item, ast.InitItem):
            o.inits[item.state] = (item.init, source, filename)
        elif isinstance(item, ast.StartItem):
            o.starts[item.state] = (item.value, source, filename)
        elif isinstance(item, ast.Let):
            o.lets[item.name] = (item, source, filename)
    o.applied = (*o.applied, label)
    return build_model(model.program, o)


def apply_intervention(model: Model, name: str) -> Model:
    """The model with the intervention block `name` (declared in its file) applied."""
    block = next((s for s in model.program.statements if isinstance(s, ast.Intervention) and s.name == name), None)
    if block is None:
        known = ", ".join(model.interventions) or "none declared"
        raise AnmError(Diagnostic(f"unknown intervention '{name}'" + (did_you_mean(name, model.interventions) or f"; the model has: {known}"), model.filename, 0, 0))
    return _with_items(model, block.items, model.source, model.filename, name, ("intervention", name))


def apply_interventions_from(model: Model, path_or_text: str | Path, name: str | None = None) -> Model:
    """Apply intervention blocks from another file (all of them, or the one called `name`), checked against `model`."""
    text, filename = read_source(path_or_text)
    return _interventions_from_text(model, text, filename, name)


def _interventions_from_text(model: Model, text: str, filename: str, name: str | None) -> Model:
    wrapper = parse_anm(text, filename)
    blocks = [s for s in wrapper.statements if isinstance(s, ast.Intervention)]
    others = [s for s in wrapper.statements if not isinstance(s, ast.Intervention)]
    if others:
        raise AnmError(diagnostic_at("an intervention file holds only 'intervention' blocks", others[0].span, text, filename))
    if name is not None:
        blocks = [b for b in blocks if b.name == name]
        if not blocks:
            raise AnmError(Diagnostic(f"no intervention '{name}' in {filename}", filename, 0, 0))
    for block in blocks:
        errors = [d for item in block.items for d in check_edit(item, model.program, text, filename)]
        if errors:
            raise AnmError(errors)
        model = _with_items(model, block.items, text, filename, block.name, ("file", text, filename, block.name))
    return model


def apply_edits(model: Model, edits: list[str] | tuple[str, ...]) -> Model:
    """The model with one-line edits applied in order, each in the language's own syntax.

    `"c = 0.8"` / `"set c = 0.8"` (a const or param), `"omega' = ..."` / `"next x = ..."` (an
    equation), `"init theta ~ Normal(0, 1.6)"`, `"start theta = 1.5 * theta"` (the encoded start).
    Errors point into the edit string, which plays the part of the file name.
    """
    for text in edits:
        item = parse_edit(text, filename=text)
        errors = check_edit(item, model.program, text, text)
        if errors:
            raise AnmError(errors)
        label = text.split("#")[0].strip()  # the comment is not part of the edit (nor of the generated docstring)
        model = _with_items(model, [item], text + "\n", text, label, ("edit", text))
    return model


def changed_since(model: Model, base: Model, kind: str = "sets") -> set[str]:
    """The names whose `kind` override ("sets", "equations", "inits", "starts", "lets") `model` applied
    on top of `base` (an intervention on a trained run's prior: what it changes, not what the run's own
    edits already had, such as a learnable param's start value)."""
    before = getattr(base.overrides, kind)
    return {name for name, entry in getattr(model.overrides, kind).items() if before.get(name) is not entry}


def replay(model: Model, steps) -> Model:
    """`model` with the interventions and edits `steps` applied again (a model's `overrides.steps`, as a
    checkpoint stores them): the same model as the one they were recorded on, when `model` is built
    from the same source. ValueError for a step that is none of the three kinds."""
    for step in steps:
        kind, *args = step
        if kind == "intervention" and len(args) == 1:
            model = apply_intervention(model, args[0])
        elif kind == "edit" and len(args) == 1:
            model = apply_edits(model, [args[0]])
        elif kind == "file" and len(args) == 3:
            model = _interventions_from_text(model, *args)
        else:
            raise ValueError(f"not an intervention or edit step: {step!r}")
    return model
