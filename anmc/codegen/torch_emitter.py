"""SymPy -> the Python source of a torch `nn.Module` for one model.

    source = emit_torch(model)

The generated class holds the model's numbers and three small methods: `constants` (the params
cast to the input's dtype and device, and the param-only factors of the equations), `rhs` (the
right-hand sides, one expression per state, cse'd) and `rhs_and_tangents` (the same, plus the
derivative of each right-hand side along the rows of the running Jacobian: the symbolic dF/dz
written out row by row, so each term is one tensor operation over the whole batch). The integrator
and the chain rule through its stages live in `anmc.codegen.runtime.AnmModule`; nothing is expanded
symbolically across stages or substeps, which keeps both the source and the compile time small.

The printer is SymPy's `TorchPrinter` with a few cases of our own (readable powers and floats,
elementwise min/max, the step function of piecewise Jacobians). Everything the emitter writes is
either fixed text, a number, or an identifier that the language admitted (declared names match
`[A-Za-z][A-Za-z0-9_]*` and are not Python keywords, builtins or names the code uses itself) or
one of its own (`_t0`, `J_0`, ...); `anmc.codegen.load` audits the result again before running it.
"""

from __future__ import annotations

import math
import re

import sympy as sp
from sympy.printing.pytorch import TorchPrinter

from anmc._version import __version__
from anmc.codegen.lets import let_values, name_temporaries
from anmc.codegen.escape import comment_safe
from anmc.lang.ast import source_lines
from anmc.symbolic.integrators import H
from anmc.symbolic.model import Model, source_text, symbol


class AnmTorchPrinter(TorchPrinter):
    """SymPy -> torch expressions, over local variables named after the model's symbols."""

    def _print_Float(self, expr):
        return repr(float(expr))

    def _print_Integer(self, expr):
        return str(int(expr))

    def _print_Rational(self, expr):
        return f"{expr.p}/{expr.q}"

    def _print_Exp1(self, expr):
        return "math.e"

    def _print_Pi(self, expr):
        return "math.pi"

    def _print_Pow(self, expr, rational=False):
        base, exp = expr.as_base_exp()
        b = self.parenthesize(base, sp.printing.precedence.PRECEDENCE["Pow"])
        if exp == sp.S.Half:
            return f"torch.sqrt({self._print(base)})"
        if exp == -sp.S.Half:
            return f"torch.rsqrt({self._print(base)})"
        if exp == -1:
            return f"1/{b}"
        if exp.is_Integer and exp < 0:
            return f"{b}**({int(exp)})"
        if exp.is_Integer:
            return f"{b}**{int(exp)}"
        return f"{b}**({self._print(exp)})"

    def _minmax(self, expr, func, clamp):
        numbers = [a for a in expr.args if a.is_number]
        others = [self._print(a) for a in expr.args if not a.is_number]
        out = others[0]
        for other in others[1:]:
            out = f"torch.{func}({out}, {other})"
        if numbers:
            out = f"torch.clamp({out}, {clamp}={self._print(numbers[0])})"
        return out

    def _print_Min(self, expr):
        return self._minmax(expr, "minimum", "max")

    def _print_Max(self, expr):
        return self._minmax(expr, "maximum", "min")

    like = "z"  # a tensor in scope whose dtype and device a 0/1 step takes

    def _print_Heaviside(self, expr):
        return f"({self._print(expr.args[0])} > 0).to({self.like})"

    def _print_sign(self, expr):
        return f"torch.sign({self._print(expr.args[0])})"


def class_name(model: Model) -> str:
    name = "".join(part[:1].upper() + part[1:] for part in re.split(r"_+", model.name) if part) or "Model"
    return name + "Prior" if name in ("AnmModule", "Tensor") else name


def _param_line(model: Model, name: str) -> str:
    p = model.params[name]
    if p.learn and p.bounds:
        lo, hi = p.bounds
        return f"(torch.sigmoid(self._raw_{name}) * {hi - lo!r} + {lo!r}).to(z)"
    if p.learn:
        return f"self._raw_{name}.to(z)"
    return f"self._fixed_{name}.to(z)"


def _used_symbols(exprs) -> set[str]:
    return {s.name for e in exprs for s in sp.sympify(e).free_symbols}


def _body(model: Model, exprs: list, outputs: list[str], printer: AnmTorchPrinter, indent: str) -> list[str]:
    """Lines that unpack z, bind consts/params/h, compute cse temporaries, and assign each output."""
    replacements, reduced = sp.cse(exprs, symbols=sp.numbered_symbols("_t"), optimizations="basic")
    used = _used_symbols([r for _, r in replacements] + list(reduced))
    lines = [f"{', '.join(model.states)}{',' if model.d == 1 else ''} = z.unbind(-1)"]
    for name, value in model.consts.items():
        if name in used:
            lines.append(f"{name} = {value!r}")
    for name in model.params:
        if name in used:
            lines.append(f"{name} = {_param_line(model, name)}")
    if H.name in used:
        h = model.dt / model.substeps
        lines.append(f"{H.name} = {h!r}  # substep length: dt / {model.substeps}")
    for sym, expr in replacements:
        lines.append(f"{sym} = {printer.doprint(expr)}")
    state_symbols = {symbol(s) for s in model.states}
    first = model.states[0]
    for out, expr in zip(outputs, reduced):
        text = printer.doprint(expr)
        depends_on_z = bool(expr.free_symbols & state_symbols) or any(
            s.name.startswith("_t") and _depends(s, replacements, state_symbols) for s in expr.free_symbols
        )
        if not depends_on_z:  # a constant or a param-only entry: give it the batch shape
            text = f"torch.full_like({first}, {text})" if expr.is_number else f"torch.zeros_like({first}) + {text}"
        lines.append(f"{out} = {text}")
    return [indent + line for line in lines]


def _depends(sym, replacements, state_symbols, _cache=None) -> bool:
    table = dict(replacements)
    seen = set()

    def rec(s):
        if s in state_symbols:
            return True
        if s in seen or s not in table:
            return False
        seen.add(s)
        return any(rec(a) for a in table[s].free_symbols)

    return rec(sym)


def _docstring(model: Model) -> list[str]:
    kind = (
        f"discretized with {model.integrator}, {model.substeps} substep(s) of h = dt/{model.substeps} per frame, dt = {comment_safe(model.dt_text)}"
        if model.kind == "continuous"
        else "a discrete map: one application per frame"
    )
    lines = [
        f'"""The `{model.name}` prior (from {comment_safe(model.filename)}): p(z_t | z_(t-1)) = N(f(z_(t-1)), diag(noise_std^2)).',
        "",
        "Continuous dynamics:" if model.kind == "continuous" else "Dynamics:",
    ]
    lines += [f"    {comment_safe(model.rhs_text[s])}" for s in model.states]
    lines += [f"{kind}."]
    if model.applied:
        lines.append(f"Interventions applied: {comment_safe('; '.join(model.applied))}.")
    lines += [
        "",
        f"z = ({', '.join(model.states)}), d = {model.d}; z (..., {model.d}) -> f (..., {model.d}), J (..., {model.d}, {model.d}).",
        f"The decoder sees {', '.join(model.observed)}.",
        "The methods below give the right-hand sides and their derivatives; AnmModule (anmc.codegen.runtime)",
        "runs the integrator over them and carries the Jacobian through every stage (the chain rule, forward).",
        '"""',
    ]
    return lines


# ---------------------------------------------------------------- the right-hand sides and their tangents


class _RhsEmitter:
    """Source of `constants`, `rhs` and `rhs_and_tangents` for one model.

    The right-hand sides F (the derivatives z', or the next values for discrete dynamics) and their
    Jacobian A = dF/dz are differentiated symbolically once; the integrator's stages and the chain
    rule over them live in `AnmModule` (runtime.py), which carries the tangent rows J forward through
    every stage: d F(y)/d z0 = A(y) J. Param-only factors (`-g/L`) are hoisted into `constants`,
    computed once per call instead of once per stage.
    """

    def __init__(self, model: Model, printer: AnmTorchPrinter):
        self.model = model
        self.printer = printer
        self.states = [symbol(s) for s in model.states]
        self.state_set = set(self.states)
        self.const_values = {symbol(n): sp.Float(v) for n, v in model.consts.items()}
        self.F = [self.fold(model.rhs[s]) for s in model.states]
        self.A = sp.Matrix(self.F).jacobian(self.states).applyfunc(lambda e: self.fold(_drop_dirac(e)))
        self.counter = 0
        self.hoisted: dict[sp.Expr, sp.Symbol] = {}  # param-only expression -> its symbol in `constants`
        self.F_h = [self.hoist(e) for e in self.F]
        self.A_h = self.A.applyfunc(self.hoist)

    def fresh(self) -> sp.Symbol:
        s = sp.Symbol(f"_t{self.counter}", real=True)
        self.counter += 1
        return s

    def symbols(self):
        while True:
            yield self.fresh()

    def fold(self, e: sp.Expr) -> sp.Expr:
        """Const-only subexpressions and consts inside function calls become numbers: `sqrt(1 + a^2)`,
        `sin(a)` and `min(v, a)` would otherwise hand a Python float to a torch function."""
        if e.is_Atom:
            return e
        arithmetic = e.is_Add or e.is_Mul or e.is_Pow
        if e.free_symbols <= set(self.const_values):
            return sp.Float(sp.N(e.xreplace(self.const_values)))
        args = [self.fold(a) for a in e.args]
        if not arithmetic:
            args = [self.const_values.get(a, a) for a in args]
        return e.func(*args)

    # ---- hoisting param-only factors
    def _is_free(self, e: sp.Expr) -> bool:
        return not (e.free_symbols & self.state_set)

    def hoist(self, e: sp.Expr) -> sp.Expr:
        """`e` with its maximal param-only parts (not single names or numbers) replaced by symbols."""
        if self._is_free(e):
            if e.is_Atom or (e.is_Mul and len(e.args) == 2 and e.args[0] == -1 and e.args[1].is_Atom):
                return e
            return self._symbol_for(e)
        if e.is_Atom:
            return e
        if e.is_Mul or e.is_Add:
            free = [a for a in e.args if self._is_free(a)]
            dependent = [self.hoist(a) for a in e.args if not self._is_free(a)]
            if free:
                part = e.func(*free)
                # `-c*x` prints as one product (a subtraction inside a sum); everything else is hoisted
                keep = part.is_Atom or (e.is_Mul and part.could_extract_minus_sign() and (-part).is_Atom)
                free = [part if keep else self._symbol_for(part)]
            return e.func(*free, *dependent)
        return e.func(*(self.hoist(a) for a in e.args))

    def _symbol_for(self, e: sp.Expr) -> sp.Symbol:
        if e not in self.hoisted:
            self.hoisted[e] = self.fresh()
        return self.hoisted[e]

    # ---- source
    def scalars(self) -> list[sp.Symbol]:
        """The param symbols and hoisted symbols the rhs methods use, in a fixed order (their arguments)."""
        params = [symbol(n) for n in self.model.params]
        used = set().union(*(e.free_symbols for e in [*self.F_h, *self.A_h]))
        return [p for p in params if p in used] + [s for s in self.hoisted.values() if s in used]

    def _const_lines(self, exprs, indent: str) -> list[str]:
        used = set().union(*(sp.sympify(e).free_symbols for e in exprs)) if exprs else set()
        return [f"{indent}{n} = {v!r}" for n, v in self.model.consts.items() if symbol(n) in used]

    def constants(self) -> list[str]:
        self.printer.like = "z"
        scalars = self.scalars()
        hoisted = [(s, e) for e, s in self.hoisted.items() if s in scalars]
        lines = [
            "    def constants(self, z):",
            '        """The params as z\'s dtype and device, and the param-only factors of the right-hand sides',
            '        (computed once per call, then handed to `rhs` and `rhs_and_tangents`)."""',
        ]
        needed = set(scalars) | set().union(*(e.free_symbols for _, e in hoisted)) if hoisted else set(scalars)
        lines += self._const_lines([e for _, e in hoisted], "        ")
        for name, p in self.model.params.items():
            if symbol(name) in needed:
                lines.append(f"        {name} = {_param_line(self.model, name)}  # line {p.line}: {comment_safe(p.text)}")
        for s, e in hoisted:
            lines.append(f"        {s} = {self.printer.doprint(e)}")
        ret = ", ".join(str(s) for s in scalars)
        lines.append(f"        return ({ret}{',' if len(scalars) == 1 else ''})" if scalars else "        return ()")
        return lines

    def _equation_comments(self, indent: str) -> list[str]:
        m = self.model
        dyn = next((s for s in m.program.statements if type(s).__name__ == "Dynamics"), None)
        lines = {eq.state: eq.span.line for eq in dyn.equations} if dyn is not None else {}
        out = [f"{indent}# line {let.span.line}: let {let.name} = {source_text(let.value.span, m.source)}" for let in getattr(dyn, "lets", ())]
        for s in m.states:
            if s in m.overrides.equations:
                eq, _, fname = m.overrides.equations[s]
                if fname == m.filename:
                    where = f"line {eq.span.line} (an intervention)"
                elif fname.endswith(".anm"):
                    where = f"{comment_safe(fname)}, line {eq.span.line}"
                else:
                    where = "an edit"
            else:
                where = f"line {lines[s]}" if s in lines else "the model"
            out.append(f"{indent}# {where}: {comment_safe(m.rhs_text[s])}")
        return out

    def _named(self, replacements, reduced):
        """cse temporaries whose value is a `let`'s take its name (anmc.codegen.lets); nothing else changes."""
        hoisted = dict(self.hoisted)
        targets = {n: self.hoist(self.fold(v)) for n, v in let_values(self.model).items()}
        self.hoisted = hoisted
        return name_temporaries(replacements, reduced, targets)

    def _signature(self, name: str, tangents: bool) -> str:
        d = self.model.d
        rows = [f"J_{i}" for i in range(d)] if tangents else []
        args = ", ".join(["self", *self.model.states, *rows, *(str(s) for s in self.scalars())])
        return f"    def {name}({args}):"

    def _tuple(self, items: list[str]) -> str:
        return f"({', '.join(items)}{',' if len(items) == 1 else ''})"

    def rhs(self) -> list[str]:
        m, pr = self.model, self.printer
        pr.like = m.states[0]
        what = "z'" if m.kind == "continuous" else "the next values"
        lines = [
            self._signature("rhs", tangents=False),
            f'        """The right-hand sides ({what}) at one point; each state is a vector over the batch."""',
            *self._equation_comments("        "),
            *self._const_lines(self.F_h, "        "),
        ]
        replacements, reduced = sp.cse(self.F_h, symbols=self.symbols(), optimizations="basic")
        replacements, reduced, named = self._named(replacements, reduced)
        lines += [f"        {s} = {pr.doprint(e)}" + ("  # let" if s.name in named else "") for s, e in replacements]
        lines.append(f"        return {self._tuple([pr.doprint(e) for e in reduced])}")
        return lines

    def rhs_and_tangents(self) -> list[str]:
        m, pr = self.model, self.printer
        pr.like = m.states[0]
        d = m.d
        names = m.states
        lines = [
            self._signature("rhs_and_tangents", tangents=True),
            '        """The right-hand sides F at one point and their tangents (dF/dz) J, row by row. The states are',
            "        vectors over the batch (B,); row J_i (d, B) holds d z_i / d z0, the derivative of this point's",
            '        state i with respect to the frame\'s input z0, so the returned rows are dF_i / d z0 (chain rule)."""',
            *self._equation_comments("        "),
        ]
        entries = [(i, j) for i in range(d) for j in range(d) if not self._is_free(self.A_h[i, j])]
        exprs = list(self.F_h) + [self.A_h[i, j] for i, j in entries]
        lines += self._const_lines(exprs, "        ")
        replacements, reduced = sp.cse(exprs, symbols=self.symbols(), optimizations="basic")
        replacements, reduced, named = self._named(replacements, reduced)
        lines += [f"        {s} = {pr.doprint(e)}" + ("  # let" if s.name in named else "") for s, e in replacements]
        values = [pr.doprint(e) for e in reduced[:d]]
        coef: dict[tuple[int, int], sp.Expr] = {}
        for (i, j), e in zip(entries, reduced[d:]):
            if not (e.is_Atom or (e.could_extract_minus_sign() and (-e).is_Atom)):
                s = self.fresh()
                lines.append(f"        {s} = {pr.doprint(e)}  # d{names[i]}'/d{names[j]}")
                e = s
            coef[i, j] = e
        for i in range(d):
            for j in range(d):
                if self._is_free(self.A_h[i, j]) and self.A_h[i, j] != 0:
                    coef[i, j] = self.A_h[i, j]
        rows = []
        for i in range(d):
            terms = []
            for j in range(d):
                c = coef.get((i, j))
                if c is None:
                    continue
                sign = "-" if c.could_extract_minus_sign() else "+"
                c = -c if sign == "-" else c
                terms.append((sign, f"J_{j}" if c == 1 else f"{pr.parenthesize(c, 50)}*J_{j}"))
            if not terms:
                rows.append("0")
                continue
            text = ("-" if terms[0][0] == "-" else "") + terms[0][1]
            for sign, t in terms[1:]:
                text += f" {sign} {t}"
            if len(terms) == 1 and terms[0][0] == "+" and "*" not in text:
                rows.append(text)
            else:
                s = self.fresh()
                lines.append(f"        {s} = {text}  # d{names[i]}'/dz0")
                rows.append(str(s))
        lines.append(f"        return {self._tuple(values)}, {self._tuple(rows)}")
        return lines


def _drop_dirac(expr: sp.Expr) -> sp.Expr:
    """d sign(x)/dx = 2 DiracDelta(x): zero everywhere the map is differentiable."""
    return expr.replace(sp.DiracDelta, lambda *args: sp.Integer(0))


def emit_torch(model: Model) -> str:
    """The full Python source of the generated module for `model`."""
    printer = AnmTorchPrinter({"strict": True})
    rhs = _RhsEmitter(model, printer)
    d = model.d
    cls = class_name(model)
    src = source_lines(model.source)

    out = [
        f"# Generated by anmc {__version__} from {comment_safe(model.filename)}. Edit the .anm file and recompile rather than this file.",
        "import math",
        "",
        "import torch",
        "from torch import nn",
        "",
        "from anmc.codegen.runtime import AnmModule",
        "",
        "",
        f"class {cls}(AnmModule):",
    ]
    out += ["    " + line if line else "" for line in _docstring(model)]
    learnable = tuple(n for n, p in model.params.items() if p.learn)
    bounds = {n: p.bounds for n, p in model.params.items() if p.learn and p.bounds}
    out += [
        "",
        f"    model_name = {model.name!r}",
        f"    state_names = {tuple(model.states)!r}",
        f"    observed_states = {tuple(model.observed)!r}",
        f"    param_names = {tuple(model.params)!r}",
        f"    learnable_param_names = {learnable!r}",
        f"    param_bounds = {bounds!r}",
        f"    noise_learnable = {tuple(model.noise[s].learn for s in model.states)!r}",
        f"    initial_kinds = {tuple(model.init[s].kind for s in model.states)!r}",
        f"    dt = {model.dt!r}  # {comment_safe(model.dt_text)}",
        f"    substeps = {model.substeps}",
        f"    integrator = {model.integrator!r}",
        "",
        "    def __init__(self):",
        "        super().__init__()",
    ]
    for name, p in model.params.items():
        out.append(f"        # line {p.line}: {comment_safe(p.text)}")
        if p.learn and p.bounds:
            lo, hi = p.bounds
            u = (p.value - lo) / (hi - lo)
            raw = math.log(u / (1 - u))
            out.append(f"        # stored unconstrained: {name} = {lo!r} + {hi - lo!r} * sigmoid(_raw_{name})")
            out.append(f"        self._raw_{name} = nn.Parameter(torch.tensor({raw!r}))")
        elif p.learn:
            out.append(f"        self._raw_{name} = nn.Parameter(torch.tensor({p.value!r}))")
        else:
            out.append(f'        self.register_buffer("_fixed_{name}", torch.tensor({p.value!r}))')
    noise_line = next((i for i, l in enumerate(src) if l.strip().startswith("noise")), None)
    if noise_line is not None:
        out.append(f"        # line {noise_line + 1}: {comment_safe(src[noise_line].split('#')[0].strip())}  (per-frame std; learnable ones as log-std)")
    for s in model.states:
        n = model.noise[s]
        if n.learn:
            out.append(f"        self._log_sigma_{s} = nn.Parameter(torch.tensor({math.log(n.value)!r}))")
        else:
            out.append(f'        self.register_buffer("_sigma_{s}", torch.tensor({n.value!r}))')
    dists = ", ".join(f"{s} ~ {model.init[s]}" for s in model.states)
    out += [
        f"        # initial-frame prior: {comment_safe(dists)}",
        f'        self.register_buffer("initial_a", torch.tensor({[model.init[s].a for s in model.states]!r}))',
        f'        self.register_buffer("initial_b", torch.tensor({[model.init[s].b for s in model.states]!r}))',
        "",
    ]
    out += rhs.constants()
    out.append("")
    out += rhs.rhs()
    out.append("")
    out += rhs.rhs_and_tangents()
    if model.start:
        printer.like = "z"
        out += [
            "",
            "    def start(self, z):",
            '        """The intervention\'s `start` lines applied to an encoded starting state z (..., d)."""',
        ]
        outs = [rhs.fold(model.start.get(s, symbol(s))) for s in model.states]
        out += _body(model, outs, [f"start_{s}" for s in model.states], printer, "        ")
        out.append(f"        return torch.stack(({', '.join(f'start_{s}' for s in model.states)}{',' if d == 1 else ''}), -1)")
    return "\n".join(out) + "\n"
