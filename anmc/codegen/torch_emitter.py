"""SymPy -> the Python source of a torch `nn.Module` for one model.

    source = emit_torch(model)

The generated class holds the model's numbers and four small methods over stacked tensors (states
z (d, B); with their tangent rows J (d, d, B), the two packed as S (1 + d, d, B), S[0] = z and
S[1 + l] = J_l, so that the integrator moves both in one operation): `constants` (the params cast to the input's dtype and device, and
the param-only factors of the equations and their derivatives), `rhs` (the right-hand sides, cse'd),
`rhs_and_tangents` (the same, plus the derivative of each right-hand side along the rows of the
running Jacobian: the sparse symbolic dF/dz written out row by row, so each term is one tensor
operation over the whole batch) and `rhs_and_tangents_vjp` (its backward pass: the cotangents of the
point, of the tangent rows and of the learnable scalars, from SymPy's derivatives of
phi = sum_i gF_i F_i + sum_e P_e A_e; docs/method.md §8). The integrator, the chain rule through its
stages and their reverse live in `anmc.codegen.runtime.AnmModule`; nothing is expanded symbolically
across stages or substeps, which keeps both the source and the compile time small.

The printer is SymPy's `TorchPrinter` with a few cases of our own (readable powers and floats,
elementwise min/max, the step function of piecewise Jacobians, long sums in groups). Everything the
emitter writes is either fixed text, a number, or an identifier that the language admitted (declared
names match `[A-Za-z][A-Za-z0-9_]*` and are not Python keywords, builtins or names the code uses
itself) or one of its own, which start with an underscore or are `J_<digits>` (`_t0`, `_gF_1`,
`_P_1_0`, `J_0`, ...); `anmc.codegen.load` audits the result again before running it.
"""

from __future__ import annotations

import math
import re

import sympy as sp
from sympy.printing.pytorch import TorchPrinter
from sympy.simplify.cse_main import tree_cse

from anmc._version import __version__
from anmc.codegen.escape import comment_safe
from anmc.codegen.lets import let_values, name_temporaries
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

    CHUNK = 32  # terms per parenthesized group in a long sum: Python's parser nests a flat sum term by term

    def _print_Add(self, expr, order=None):
        terms = list(expr.args)
        if len(terms) <= self.CHUNK:
            return super()._print_Add(expr, order=order)
        groups = [sp.Add(*terms[i : i + self.CHUNK], evaluate=False) for i in range(0, len(terms), self.CHUNK)]
        return " + ".join(f"({self._print(g)})" for g in groups)

    def _print_Heaviside(self, expr):
        # SymPy's Heaviside(0) is H0 (1/2 unless given), as numpy.heaviside(x, 0.5) in the numpy emitter: the
        # derivative of Max(|x|, x), tied on a whole half-line, is then 1/2 sign(x) + 1/2 = 1 there (H(0) = 0
        # gave 0, a wrong Jacobian; hypothesis found it)
        x = self._print(expr.args[0])
        h0 = expr.args[1] if len(expr.args) > 1 else sp.S.Half
        if h0 == sp.S.Half:
            return f"(0.5 + 0.5*torch.sign({x}))"
        return f"(({x} > 0).to({self.like}) + {self._print(h0)}*({x} == 0).to({self.like}))"

    def _print_sign(self, expr):
        return f"torch.sign({self._print(expr.args[0])})"

    def _print_atan2(self, expr):
        # torch.atan2 takes tensors only: a number beside a tensor becomes a tensor like it (atan2(e, x))
        y, x = expr.args
        py, px = self._print(y), self._print(x)
        if y.is_number:
            py = f"torch.full_like({px}, {py})"
        elif x.is_number:
            px = f"torch.full_like({py}, {px})"
        return f"torch.atan2({py}, {px})"


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


def _body(model: Model, exprs: list, outputs: list[str], printer: AnmTorchPrinter, indent: str, lets: dict | None = None) -> list[str]:
    """Lines that unpack z, bind consts/params/h, compute cse temporaries, and assign each output. With
    `lets` (let name -> its value, in the form of `exprs`), a temporary equal to a let's value takes its name."""
    replacements, reduced = sp.cse(exprs, symbols=sp.numbered_symbols("_t"), optimizations="basic")
    named: set[str] = set()
    if lets:
        replacements, reduced, named = name_temporaries(replacements, reduced, lets)
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
        lines.append(f"{sym} = {printer.doprint(expr)}" + ("  # let" if sym.name in named else ""))
    state_symbols = {symbol(s) for s in model.states}
    first = model.states[0]
    for out, expr in zip(outputs, reduced):
        text = printer.doprint(expr)
        depends_on_z = bool(expr.free_symbols & state_symbols) or any(
            _depends(s, replacements, state_symbols) for s in expr.free_symbols if s.name.startswith("_t") or s.name in named
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
        *(
            [f"The decoder sees {', '.join(model.observed)}."]
            if model.plain_observations
            else [f"A frame shows h(z) = ({', '.join(model.observation_names)}) (`observe` and `observe_and_jacobian` below):"]
            + [f"    {comment_safe(model.observation_text[n])}" for n in model.observation_names]
        ),
        "The methods below give the right-hand sides and their derivatives; AnmModule (anmc.codegen.runtime)",
        "runs the integrator over them and carries the Jacobian through every stage (the chain rule, forward).",
        '"""',
    ]
    return lines




# ---------------------------------------------------------------- the right-hand sides and their derivatives


class _RhsEmitter:
    """Source of `constants`, `rhs`, `rhs_and_jacobian` and `rhs_and_jacobian_vjp` for one model.

    The right-hand sides F (the derivatives z', or the next values for discrete dynamics) are
    differentiated symbolically once, sparsely (dF_i/dz_j only for the states F_i contains). The
    nonzero entries of A = dF/dz split into those that depend on the state (`jacobian_entries`,
    computed per point by `rhs_and_jacobian`) and those that do not (`jacobian_fixed`, computed once
    per call by `constants`). The backward method is the gradient of the scalar
    phi = sum_i gF_i F_i + sum_e gA_e A_e (the cotangents of F and of the state-dependent entries)
    with respect to the state and the learnable scalars, again written out symbolically. The
    integrator, the products A T and their adjoints live in `AnmModule` (runtime.py).
    Param-only factors (`-g/L`) are hoisted into `constants`, computed once per call.
    """

    def __init__(self, model: Model, printer: AnmTorchPrinter):
        self.model = model
        self.printer = printer
        self.states = [symbol(s) for s in model.states]
        self.state_set = set(self.states)
        self.batch_set = set(self.states)  # symbols that are vectors over the batch (never hoisted)
        self.const_values = {symbol(n): sp.Float(v) for n, v in model.consts.items()}
        self.const_set = set(self.const_values)
        self.counter = 0
        self.hoisted: dict[sp.Expr, sp.Symbol] = {}  # param-only expression -> its symbol in `constants`
        self.diff = _Differentiator()
        self.memo: dict[tuple[str, sp.Expr], sp.Expr] = {}  # fold's and hoist's results (shared subtrees are many)
        self.F_h = [self.hoist(self.fold(model.rhs[s])) for s in model.states]
        # the nonzero entries of A = dF/dz, sparse: (i, j) -> dF_i/dz_j, for the states F_i contains
        self.A: dict[tuple[int, int], sp.Expr] = {}
        for i, Fi in enumerate(self.F_h):
            for j, s in enumerate(self.states):
                if s in self.diff.free(Fi):
                    a = self.hoist(self.fold(self.diff(Fi, s)))
                    if a != 0:
                        self.A[i, j] = a
        params = [symbol(n) for n in model.params]
        learn = {symbol(n) for n, p in model.params.items() if p.learn}
        for e, s in self.hoisted.items():  # a hoisted factor is learnable when any name in it is
            if e.free_symbols & learn:
                learn.add(s)
        forward = [*self.F_h, *self.A.values()]
        self.grad_scalars = [s for s in self._sorted_symbols(forward, [*params, *self.hoisted.values()]) if s in learn]
        # the entries whose value changes with the state or a learnable scalar take part in the backward pass
        # through P_e = <gJ_i, J_j> (summed over the columns)
        self.P = {ij: sp.Symbol(f"_P_{ij[0]}_{ij[1]}", real=True) for ij, a in self.A.items() if self.diff.free(a) & (self.state_set | learn)}
        self.gF = [sp.Symbol(f"_gF_{i}", real=True) for i in range(model.d)]
        self.batch_set |= {*self.gF, *self.P.values()}
        self.vjp = self._vjp_expressions()
        exprs = [*self.F_h, *self.A.values(), *self.vjp[0], *self.vjp[1]]
        self._scalars = self._sorted_symbols(exprs, [*params, *self.hoisted.values()])

    def fresh(self) -> sp.Symbol:
        s = sp.Symbol(f"_t{self.counter}", real=True)
        self.counter += 1
        return s

    def symbols(self):
        while True:
            yield self.fresh()

    def _free_in(self, exprs) -> set:
        """The free symbols of any of `exprs` (memoized per subexpression)."""
        return set().union(*(self.diff.free(sp.sympify(e)) for e in exprs)) if exprs else set()

    def _sorted_symbols(self, exprs, among) -> list[sp.Symbol]:
        """The symbols of `among` (in its order) that occur in any of `exprs`."""
        used = self._free_in(exprs)
        return [s for s in among if s in used]

    def _memoized(self, kind: str, e: sp.Expr, compute) -> sp.Expr:
        """compute(e), once per (kind, subexpression); atoms are their own result."""
        if e.is_Atom:
            return e
        out = self.memo.get((kind, e))
        if out is None:
            out = self.memo[kind, e] = compute(e)
        return out

    def fold(self, e: sp.Expr) -> sp.Expr:
        """Const-only subexpressions and consts inside function calls become numbers: `sqrt(1 + a^2)`,
        `sin(a)` and `min(v, a)` would otherwise hand a Python float to a torch function."""
        return self._memoized("fold", e, self._fold)

    def _fold(self, e: sp.Expr) -> sp.Expr:
        arithmetic = e.is_Add or e.is_Mul or e.is_Pow
        if self.diff.free(e) <= self.const_set:
            return sp.Float(sp.N(e.xreplace(self.const_values)))
        args = [self.fold(a) for a in e.args]
        if not arithmetic:
            args = [self.const_values.get(a, a) for a in args]
        return _rebuilt(e, args)

    # ---- hoisting param-only factors
    def _is_free(self, e: sp.Expr) -> bool:
        return not (self.diff.free(e) & self.batch_set)

    def hoist(self, e: sp.Expr) -> sp.Expr:
        """`e` with its maximal param-only parts (not single names or numbers) replaced by symbols."""
        return self._memoized("hoist", e, self._hoist)

    def _hoist(self, e: sp.Expr) -> sp.Expr:  # e is not an atom (hoist returns those)
        if self._is_free(e):
            if e.is_Mul and len(e.args) == 2 and e.args[0] == -1 and e.args[1].is_Atom:
                return e
            return self._symbol_for(e)
        if e.is_Mul or e.is_Add:
            free = [a for a in e.args if self._is_free(a)]
            dependent = [self.hoist(a) for a in e.args if not self._is_free(a)]
            if free:
                part = e.func(*free)
                # `-c*x` prints as one product (a subtraction inside a sum); everything else is hoisted
                keep = part.is_Atom or (e.is_Mul and _negative(part) and (-part).is_Atom)
                free = [part if keep else self._symbol_for(part)]
                return e.func(*free, *dependent)
            return _rebuilt(e, dependent)
        return _rebuilt(e, [self.hoist(a) for a in e.args])

    def _symbol_for(self, e: sp.Expr) -> sp.Symbol:
        if e not in self.hoisted:
            self.hoisted[e] = self.fresh()
        return self.hoisted[e]

    # ---- the backward expressions
    def _vjp_expressions(self) -> tuple[list[sp.Expr], list[sp.Expr]]:
        """d phi / d z_m for each state m and d phi / d s for each learnable scalar s, where
        phi = sum_i gF_i F_i + sum_e P_e A_e: sparse sums over the terms that contain z_m (or s)."""
        gz: list[list[sp.Expr]] = [[] for _ in range(self.model.d)]
        for (i, j), a in self.A.items():
            gz[j].append(self.gF[i] * a)  # A^T gF
        for ij, p in self.P.items():
            a = self.A[ij]
            for m, s in enumerate(self.states):
                if s in self.diff.free(a):
                    gz[m].append(p * self.fold(self.diff(a, s)))
        gs = []
        for s in self.grad_scalars:
            terms = [self.gF[i] * self.diff(F, s) for i, F in enumerate(self.F_h) if s in self.diff.free(F)]
            terms += [p * self.diff(self.A[ij], s) for ij, p in self.P.items() if s in self.diff.free(self.A[ij])]
            gs.append(self.fold(sp.Add(*terms)))
        return [self.hoist(sp.Add(*t)) for t in gz], [self.hoist(g) for g in gs]

    # ---- source
    def scalars(self) -> list[sp.Symbol]:
        """The param symbols and hoisted symbols the point methods use, in a fixed order (their arguments)."""
        return list(self._scalars)

    def _const_lines(self, exprs, indent: str) -> list[str]:
        used = self._free_in(exprs)
        return [f"{indent}{n} = {v!r}" for n, v in self.model.consts.items() if symbol(n) in used]

    def class_attributes(self) -> list[str]:
        scalars = [str(s) for s in self.scalars()]
        grads = tuple(scalars.index(str(s)) for s in self.grad_scalars)
        return [
            f"    transition_affine = {self.transition_affine()!r}  # f affine in the states: J constant",
            f"    scalar_grads = {grads!r}  # which scalars (the arguments after the tensors) learnable params reach",
            f"    jacobian_pattern = {tuple(self.A)!r}  # the (i, j) of dF_i/dz_j that are not zero, as rhs_and_partials returns them",
            f"    varying_partials = {tuple(list(self.A).index(ij) for ij in self.P)!r}  # those whose value depends on the states or a learnable param",
        ]

    def transition_affine(self) -> bool:
        """Whether the right-hand sides are affine in the states: no entry of A = dF/dz (built sparse above)
        holds a state or a derivative SymPy left unevaluated. Every integrator anmc has is an explicit step,
        so f, the frame's transition, is then affine too (a spring, a decay, coupled masses); with h affine
        as well the smoother needs no search for its linearization points (docs/method.md §6)."""
        return not any(self.diff.free(a) & self.state_set or a.has(sp.Derivative) for a in self.A.values())

    def constants(self) -> list[str]:
        self.printer.like = "z"
        scalars = self.scalars()
        needed = set(scalars)
        for e, s in reversed(list(self.hoisted.items())):  # hoisted factors may be built from earlier ones
            if s in needed:
                needed |= e.free_symbols
        hoisted = [(s, e) for e, s in self.hoisted.items() if s in needed]
        lines = [
            "    def constants(self, z):",
            '        """The params as z\'s dtype and device, and the param-only factors of the right-hand sides and their',
            '        derivatives (computed once per call, then handed to the methods below)."""',
        ]
        lines += self._const_lines([e for _, e in hoisted], "        ")
        for name, p in self.model.params.items():
            if symbol(name) in needed:
                lines.append(f"        {name} = {_param_line(self.model, name)}  # line {p.line}: {comment_safe(p.text)}")
        for s, e in hoisted:
            lines.append(f"        {s} = {self.printer.doprint(e)}")
        lines.append(f"        return {self._tuple([str(s) for s in scalars])}")
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

    def _signature(self, name: str, extra: tuple[str, ...] = (), points: str = "z") -> str:
        args = ", ".join(["self", points, *extra, *(str(s) for s in self.scalars())])
        return f"    def {name}({args}):"

    def _tuple(self, items: list[str]) -> str:
        return f"({', '.join(items)}{',' if len(items) == 1 else ''})"

    def _unpack(self, names: list[str], tensor: str) -> str:
        return f"        {', '.join(names)}{',' if len(names) == 1 else ''} = {tensor}.unbind(0)"

    def _unpack_packed(self, first: str, rows: str, firsts: list[str], packed: str) -> list[str]:
        """The lines that take a packed (1 + d, d, B) tensor apart: its first entry `first` (d, B) and its
        rows `rows`_0 ... (d, B), then `first` into the names `firsts` (B,)."""
        d = self.model.d
        return [self._unpack([first, *(f"{rows}_{i}" for i in range(d))], packed), self._unpack(firsts, first)]

    def _packed(self, firsts: list[str], rows: list[str]) -> str:
        """The return value packed (1 + d, d, B): `firsts` (B,) stacked as the first entry, then `rows` (d, B)."""
        return f"torch.stack((torch.stack({self._tuple(firsts)}), {', '.join(rows)}))"

    def _vector(self, exprs: list[sp.Expr], like: str, batch: set) -> list[str]:
        """Each expression printed, with the shape of the batch vector `like` if it has none of its own
        (`batch`: the symbols, states and cse temporaries, that are vectors over the batch)."""
        out = []
        for e in exprs:
            text = self.printer.doprint(e)
            if not (e.free_symbols & batch):
                plain = e.is_number or e in self.const_values  # a const is a Python float (`v' = k`)
                text = f"torch.full_like({like}, {text})" if plain else f"{text}.expand_as({like})"
            out.append(text)
        return out

    def _cse_lines(self, exprs: list[sp.Expr]) -> tuple[list[str], list[sp.Expr], set]:
        """Common subexpressions over `exprs`: the lines of the temporaries, the reduced expressions, and the
        batch symbols. SymPy's tree cse alone (repeated subtrees, in linear time); `sp.cse` would first run
        its pairwise Add/Mul matching, which cost more than the rest of the compile on large models."""
        exprs = [sp.sympify(e) for e in exprs]
        replacements, reduced = tree_cse(exprs, self.symbols(), opt_subs={}, order="none")
        hoisted, memo = dict(self.hoisted), dict(self.memo)  # a temporary whose value is a `let`'s takes its name (anmc.codegen.lets)
        targets = {n: self.hoist(self.fold(v)) for n, v in let_values(self.model).items()}
        self.hoisted, self.memo = hoisted, memo
        replacements, reduced, named = name_temporaries(replacements, reduced, targets)
        batch = set(self.batch_set)
        for s, e in replacements:
            if e.free_symbols & batch:
                batch.add(s)
        return [f"        {s} = {self.printer.doprint(e)}" + ("  # let" if s.name in named else "") for s, e in replacements], reduced, batch

    def rhs(self) -> list[str]:
        m, pr = self.model, self.printer
        pr.like = m.states[0]
        what = "z'" if m.kind == "continuous" else "the next values"
        lines = [
            self._signature("rhs"),
            f'        """The right-hand sides F ({what}) at the points z (d, B) -> (d, B)."""',
            *self._equation_comments("        "),
            self._unpack(list(m.states), "z"),
            *self._const_lines(self.F_h, "        "),
        ]
        body, reduced, batch = self._cse_lines(self.F_h)
        lines += body
        lines.append(f"        return torch.stack({self._tuple(self._vector(reduced, m.states[0], batch))})")
        return lines

    def _rows(self, coef: dict[tuple[int, int], sp.Expr], rows: str, names: list[str], comment: str, lines: list[str]) -> list[str]:
        """sum_j coef[i, j] * rows_j for each i, printed: one expression per output row (a temporary when
        long). Rows of two terms or more accumulate with torch.addcmul / torch.add(alpha=): one pass
        over the (d, B) row per term instead of two (a product, then a sum). A coefficient that is a
        number or a const (a Python float in the generated code) goes in as alpha: addcmul takes tensors."""
        pr, d = self.printer, self.model.d
        out = []
        for i in range(d):
            terms = []
            for j in range(d):
                c = coef.get((i, j))
                if c is None:
                    continue
                sign = "-" if _negative(c) else "+"
                terms.append((sign, -c if sign == "-" else c, f"{rows}_{j}"))
            if not terms:
                out.append(f"torch.zeros_like({rows}_0)")
                continue
            if len(terms) == 1 and terms[0][0] == "+" and terms[0][1] == 1:
                out.append(terms[0][2])
                continue
            sign, c, row = terms[0]
            text = ("-" if sign == "-" else "") + (row if c == 1 else f"{pr.parenthesize(c, 50)}*{row}")
            for sign, c, row in terms[1:]:
                if c.is_number or c in self.const_values:  # a number (pi, e too) or a const: a Python float, not a tensor
                    alpha = f"-{pr.doprint(c)}" if sign == "-" else pr.doprint(c)
                    text = f"torch.add({text}, {row}{'' if alpha == '1' else f', alpha={alpha}'})"
                else:
                    text = f"torch.addcmul({text}, {pr.doprint(c)}, {row}{', value=-1' if sign == '-' else ''})"
            s = self.fresh()
            lines.append(f"        {s} = {text}  # {comment.format(names[i])}")
            out.append(str(s))
        return out

    def _coefficients(self, reduced: list[sp.Expr], lines: list[str], what) -> dict[tuple[int, int], sp.Expr]:
        """The entries of A after cse, each a name or a number (a temporary for a longer expression)."""
        coef = {}
        for (i, j), e in zip(self.A, reduced):
            if not (e.is_Atom or (_negative(e) and (-e).is_Atom)):
                s = self.fresh()
                lines.append(f"        {s} = {self.printer.doprint(e)}  # {what(i, j)}")
                e = s
            coef[i, j] = e
        return coef

    def _rhs_and_entries(self, lines: list[str]) -> tuple[list[str], dict[tuple[int, int], sp.Expr]]:
        """The lines (appended to `lines`) that compute F and A = dF/dz's nonzero entries together, cse'd:
        F's printed vectors and A's entries (names or numbers), for `rhs_and_tangents` and `rhs_and_partials`."""
        names = list(self.model.states)
        exprs = [*self.F_h, *self.A.values()]
        lines += self._const_lines(exprs, "        ")
        body, reduced, batch = self._cse_lines(exprs)
        lines += body
        d = self.model.d
        F = self._vector(reduced[:d], names[0], batch)
        return F, self._coefficients(reduced[d:], lines, lambda i, j: f"d{names[i]}'/d{names[j]}")

    def rhs_and_tangents(self) -> list[str]:
        self.printer.like = self.model.states[0]
        names = list(self.model.states)
        lines = [
            self._signature("rhs_and_tangents", points="_S"),
            '        """F and its tangents at the points packed in _S (1 + d, d, B): _S[0] holds the points z (d, B), row',
            "        J_l = _S[1 + l] (d, B) the derivative d z_l / d z0 of the point's state l with respect to the frame's",
            "        input z0. Returned packed the same way: F (d, B), then the rows dF_i / d z0 = sum_l (dF_i/dz_l) J_l",
            '        (the chain rule)."""',
            *self._equation_comments("        "),
            *self._unpack_packed("_z", "J", names, "_S"),
        ]
        F, coef = self._rhs_and_entries(lines)
        rows = self._rows(coef, "J", names, "d{}'/dz0", lines)
        lines.append(f"        return {self._packed(F, rows)}")
        return lines

    def rhs_and_partials(self) -> list[str]:
        self.printer.like = self.model.states[0]
        names = list(self.model.states)
        lines = [
            self._signature("rhs_and_partials"),
            '        """F at the points z (d, B) and the nonzero entries of its Jacobian dF/dz there, in the order of',
            "        `jacobian_pattern`: each a tensor (B,) or a scalar (a number, or a tensor of a param). The runtime",
            '        carries the tangent rows of sparse models inside their windows of columns with these."""',
            *self._equation_comments("        "),
            self._unpack(names, "z"),
        ]
        F, coef = self._rhs_and_entries(lines)
        entries = [self.printer.doprint(c) for c in coef.values()]
        lines.append(f"        return torch.stack({self._tuple(F)}), {self._tuple(entries)}")
        return lines

    def rhs_and_partials_vjp(self) -> list[str]:
        m = self.model
        self.printer.like = m.states[0]
        d, names = m.d, list(m.states)
        gz, gs = self.vjp
        lines = [
            self._signature("rhs_and_partials_vjp", ("_gF", "_P"), points="z"),
            '        """The backward pass of `rhs_and_partials` at the points z (d, B): given the cotangent _gF (d, B) of F and',
            "        those of the entries of dF/dz that vary (_P, in the order of `varying_partials`), the gradient of",
            "        phi = sum_i _gF_i F_i + sum_e _P_e A_e with respect to z (d, B), and phi's pointwise derivatives (B,) with",
            '        respect to the scalars in `scalar_grads`."""',
            self._unpack(names, "z"),
            self._unpack([str(g) for g in self.gF], "_gF"),
        ]
        if self.P:
            lines.append(f"        {', '.join(str(p) for p in self.P.values())}{',' if len(self.P) == 1 else ''} = _P")
        exprs = [*gz, *gs]
        lines += self._const_lines(exprs, "        ")
        body, reduced, batch = self._cse_lines(exprs)
        lines += body
        grad_z = self._vector(reduced[:d], str(self.gF[0]), batch)
        grad_s = self._vector(reduced[d:], str(self.gF[0]), batch)
        lines.append(f"        return torch.stack({self._tuple(grad_z)}), {self._tuple(grad_s)}")
        return lines

    def rhs_and_tangents_vjp(self) -> list[str]:
        m, pr = self.model, self.printer
        pr.like = m.states[0]
        d, names = m.d, list(m.states)
        gz, gs = self.vjp
        lines = [
            self._signature("rhs_and_tangents_vjp", ("_gS",), points="_S"),
            '        """The backward pass of `rhs_and_tangents` at _S (the points z and their tangent rows J_l, packed): given',
            "        the cotangents _gS of its result (_gF (d, B) of F, then _gJ_i (d, B) of each tangent row), returns packed the",
            "        same way the gradient of phi = sum_i _gF_i F_i + sum_e P_e A_e with respect to z (d, B), P_(i,l) =",
            "        <_gJ_i, J_l> over the columns, and the cotangents of the rows J_l (sum_i (dF_i/dz_l) _gJ_i); and phi's",
            '        pointwise derivatives (B,) with respect to the scalars in `scalar_grads`."""',
            *self._unpack_packed("_z", "J", names, "_S"),
            *self._unpack_packed("_gF", "_gJ", [str(g) for g in self.gF], "_gS"),
        ]
        for (i, j), p in self.P.items():
            lines.append(f"        {p} = (_gJ_{i}*J_{j}).sum(0)  # <dphi/d(d{names[i]}'/dz0), d{names[j]}/dz0>")
        exprs = [*self.A.values(), *gz, *gs]
        lines += self._const_lines(exprs, "        ")
        body, reduced, batch = self._cse_lines(exprs)
        lines += body
        n = len(self.A)
        coef = self._coefficients(reduced[:n], lines, lambda i, j: f"d{names[i]}'/d{names[j]}")
        transposed = {(j, i): c for (i, j), c in coef.items()}
        grad_J = self._rows(transposed, "_gJ", names, "dphi/d(d{}/dz0)", lines)
        grad_z = self._vector(reduced[n : n + d], str(self.gF[0]), batch)
        grad_s = self._vector(reduced[n + d :], str(self.gF[0]), batch)
        lines.append(f"        return {self._packed(grad_z, grad_J)}, {self._tuple(grad_s)}")
        return lines


def _rebuilt(e: sp.Expr, args: list) -> sp.Expr:
    """`e` with new arguments; `e` itself when none changed (SymPy's constructors are the compile's cost)."""
    if len(args) == len(e.args) and all(a is b for a, b in zip(args, e.args)):
        return e
    return e.func(*args)


def _negative(e: sp.Expr) -> bool:
    """A negative number, or a product with a negative numeric factor (prints as a subtraction); cheap,
    unlike SymPy's could_extract_minus_sign on sums."""
    if e.is_Number:
        return bool(e < 0)
    return bool(e.is_Mul and e.args[0].is_Number and e.args[0] < 0)


class _Differentiator:
    """d e / d s by the chain rule over the expression tree, memoized: the same derivatives as SymPy's
    `diff` (each function's own `fdiff`), without its per-call machinery, which dominated compile time
    (docs/method.md, "The compiled prior"). Dirac deltas (d sign(x)/dx) are dropped: zero wherever the
    map is differentiable."""

    def __init__(self):
        self.memo: dict = {}
        self.symbols: dict = {}

    def free(self, e: sp.Expr) -> frozenset:
        """e.free_symbols, memoized (SymPy recomputes it on every access)."""
        out = self.symbols.get(e)
        if out is None:
            out = frozenset(e.free_symbols) if e.is_Atom else frozenset().union(*(self.free(a) for a in e.args))
            self.symbols[e] = out
        return out

    def __call__(self, e: sp.Expr, s: sp.Symbol) -> sp.Expr:
        key = (e, s)
        if key in self.memo:
            return self.memo[key]
        if s not in self.free(e):
            out = sp.Integer(0)
        elif e == s:
            out = sp.Integer(1)
        elif e.is_Add:
            out = sp.Add(*(self(a, s) for a in e.args))
        elif e.is_Mul:
            args = e.args
            terms = []
            for k, a in enumerate(args):
                da = self(a, s)
                if da != 0:
                    terms.append(sp.Mul(*args[:k], da, *args[k + 1 :]))
            out = sp.Add(*terms)
        elif e.is_Pow:
            b, x = e.args
            if s not in self.free(x):
                out = x * b ** (x - 1) * self(b, s)
            else:
                out = e * (self(x, s) * sp.log(b) + x * self(b, s) / b)
        elif isinstance(e, sp.Function):
            terms = []
            for k, a in enumerate(e.args):
                da = self(a, s)
                if da != 0:
                    terms.append(e.fdiff(k + 1) * da)
            out = _drop_dirac(sp.Add(*terms))
            if out.has(sp.Derivative):  # an fdiff left unevaluated (sign's, say): SymPy's diff knows more
                out = _drop_dirac(e.diff(s))
        else:  # anything else: SymPy's own
            out = _drop_dirac(e.diff(s))
        self.memo[key] = out
        return out


def _drop_dirac(expr: sp.Expr) -> sp.Expr:
    """d sign(x)/dx = 2 DiracDelta(x): zero everywhere the map is differentiable."""
    return expr.replace(sp.DiracDelta, lambda *args: sp.Integer(0))


def emit_torch(model: Model) -> str:
    """The full Python source of the generated module for `model`."""
    printer = AnmTorchPrinter({"strict": True, "order": "none"})
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
    noise_bounds = {s: model.noise[s].bounds for s in model.states if model.noise[s].bounds}
    out += [
        "",
        f"    model_name = {model.name!r}",
        f"    state_names = {tuple(model.states)!r}",
        f"    observed_states = {tuple(model.observed)!r}",
        f"    observation_names = {model.observation_names!r}",
        f"    observation_affine = {model.observation_affine!r}  # h affine in the states: H constant",
        f"    param_names = {tuple(model.params)!r}",
        f"    learnable_param_names = {learnable!r}",
        f"    param_bounds = {bounds!r}",
        f"    noise_learnable = {tuple(model.noise[s].learn for s in model.states)!r}",
        *([f"    noise_bounds = {noise_bounds!r}"] if noise_bounds else []),
        f"    initial_kinds = {tuple(model.init[s].kind for s in model.states)!r}",
        f"    dt = {model.dt!r}  # {comment_safe(model.dt_text)}",
        f"    substeps = {model.substeps}",
        f"    integrator = {model.integrator!r}",
        *rhs.class_attributes(),
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
        if n.learn and n.bounds:
            lo, hi = n.bounds
            u = (math.log(n.value) - math.log(lo)) / (math.log(hi) - math.log(lo))
            out.append(f"        # stored unconstrained: std of {s} = {lo!r} * ({hi / lo!r} ** sigmoid(_logit_sigma_{s}))")
            out.append(f"        self._logit_sigma_{s} = nn.Parameter(torch.tensor({math.log(u / (1 - u))!r}))")
        elif n.learn:
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
    out.append("")
    out += rhs.rhs_and_partials()
    out.append("")
    out += rhs.rhs_and_tangents_vjp()
    out.append("")
    out += rhs.rhs_and_partials_vjp()
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
    if not model.plain_observations:
        out += ["", *_observe(model, rhs, printer, jacobian=False), "", *_observe(model, rhs, printer, jacobian=True)]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- what a frame shows


def _observation_lines(model: Model) -> dict[str, int]:
    """The line of each observation in the source (`observe NAME = EXPR` or `observe NAME`)."""
    decls = [s for s in model.program.statements if type(s).__name__ == "ObserveDecl"]
    return {ob.name: ob.span.line for decl in decls for ob in decl.items}


def _observe(model: Model, rhs: _RhsEmitter, printer: AnmTorchPrinter, jacobian: bool) -> list[str]:
    """`observe(self, z)`, the observation function h: z (..., d) -> (..., m); or (`jacobian`)
    `observe_and_jacobian(self, z)`: h and H = dh/dz (..., m, d), the nonzero entries of SymPy's exact
    derivatives written out (docs/method.md §1). A plain `observe theta` among them is the state itself."""
    printer.like = "z"
    names, states = model.observation_names, model.states
    m, d = len(names), model.d
    tup = lambda items: f"({', '.join(items)}{',' if len(items) == 1 else ''})"  # noqa: E731
    lines_of = _observation_lines(model)
    plain = {n for n, e in model.observations if n in states and e == symbol(n)}
    if jacobian:
        head = [
            "    def observe_and_jacobian(self, z):",
            f'        """h(z) (..., {m}) and its exact Jacobian H = dh/dz (..., {m}, {d}) at the states z (..., {d}); row i of H is',
            f'        d h_i / d({", ".join(states)})."""',
        ]
    else:
        head = [
            "    def observe(self, z):",
            f'        """What a frame shows, h(z): the states z (..., {d}) -> {tup(list(names))} (..., {m})."""',
        ]
    src = source_lines(model.source)
    head += [f"        # line {k}: {comment_safe(src[k - 1].split('#')[0].strip())}" for k in sorted(set(lines_of.values()))]
    exprs, outputs = [], []
    for name, expr in model.observations:
        if name not in plain:
            exprs.append(rhs.fold(expr))
            outputs.append(name)
    rows = []
    if jacobian:
        H = model.observation_jacobian
        for i in range(m):
            row = []
            for j in range(d):
                entry = rhs.fold(H[i, j])
                if entry == 0:
                    row.append("_zero")
                else:
                    exprs.append(entry)
                    outputs.append(f"_H_{i}_{j}")
                    row.append(f"_H_{i}_{j}")
            rows.append(row)
    lets = {n: rhs.fold(v) for n, v in let_values(model).items()}
    body = _body(model, exprs, outputs, printer, "        ", lets)
    if any("_zero" in row for row in rows):
        body.append(f"        _zero = torch.zeros_like({states[0]})")
    h = f"torch.stack({tup(list(names))}, -1)"
    if not jacobian:
        return head + body + [f"        return {h}"]
    out = head + body + [f"        return {h}, torch.stack(("]
    out += [f"            torch.stack({tup(row)}, -1),  # d{names[i]}/dz" for i, row in enumerate(rows)]
    out.append("        ), -2)")
    return out
