"""SymPy -> the Python source of a torch `nn.Module` for one model.

    source = emit_torch(model)

The printer is SymPy's `TorchPrinter` with a few cases of our own (readable powers and floats,
elementwise min/max, the step function of piecewise Jacobians). Everything the emitter writes is
either fixed text, a number, or an identifier that the language admitted (declared names match
`[A-Za-z][A-Za-z0-9_]*` and are not Python keywords, builtins or names the code uses itself);
`anmc.codegen.load` audits the result again before running it.
"""

from __future__ import annotations

import math
import re

import sympy as sp
from sympy.printing.pytorch import TorchPrinter

from anmc import __version__
from anmc.symbolic.integrators import H, substep_expressions, substep_jacobian
from anmc.symbolic.model import Model, symbol


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

    def _print_Heaviside(self, expr):
        return f"({self._print(expr.args[0])} > 0).to(z.dtype)"

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
        f"discretized with {model.integrator}, {model.substeps} substep(s) of h = dt/{model.substeps} per frame, dt = {model.dt_text}"
        if model.kind == "continuous"
        else "a discrete map: one application per frame"
    )
    lines = [
        f'"""The `{model.name}` prior (from {model.filename}): p(z_t | z_(t-1)) = N(f(z_(t-1)), diag(noise_std^2)).',
        "",
        "Continuous dynamics:" if model.kind == "continuous" else "Dynamics:",
    ]
    lines += [f"    {model.rhs_text[s]}" for s in model.states]
    lines += [f"{kind}."]
    if model.applied:
        lines.append(f"Interventions applied: {'; '.join(model.applied)}.")
    lines += [
        "",
        f"z = ({', '.join(model.states)}), d = {model.d}; z (..., {model.d}) -> f (..., {model.d}), J (..., {model.d}, {model.d}).",
        f"The decoder sees {', '.join(model.observed)}.",
        '"""',
    ]
    return lines


def emit_torch(model: Model) -> str:
    """The full Python source of the generated module for `model`."""
    printer = AnmTorchPrinter({"strict": True})
    step = substep_expressions(model)
    jac = substep_jacobian(model, step)
    d = model.d
    cls = class_name(model)
    src = model.source.splitlines()

    out = [
        f"# Generated by anmc {__version__} from {model.filename}. Edit the .anm file and recompile rather than this file.",
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
        f"    dt = {model.dt!r}  # {model.dt_text}",
        f"    substeps = {model.substeps}",
        f"    integrator = {model.integrator!r}",
        "",
        "    def __init__(self):",
        "        super().__init__()",
    ]
    for name, p in model.params.items():
        out.append(f"        # line {p.line}: {p.text}")
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
        out.append(f"        # line {noise_line + 1}: {src[noise_line].split('#')[0].strip()}  (per-frame std; learnable ones as log-std)")
    for s in model.states:
        n = model.noise[s]
        if n.learn:
            out.append(f"        self._log_sigma_{s} = nn.Parameter(torch.tensor({math.log(n.value)!r}))")
        else:
            out.append(f'        self.register_buffer("_sigma_{s}", torch.tensor({n.value!r}))')
    dists = ", ".join(f"{s} ~ {model.init[s]}" for s in model.states)
    out += [
        f"        # initial-frame prior: {dists}",
        f'        self.register_buffer("initial_a", torch.tensor({[model.init[s].a for s in model.states]!r}))',
        f'        self.register_buffer("initial_b", torch.tensor({[model.init[s].b for s in model.states]!r}))',
        "",
        "    def substep(self, z):",
        f'        """One {model.integrator} substep: z (..., {d}) -> (..., {d})."""',
    ]
    out += _body(model, step, [f"next_{s}" for s in model.states], printer, "        ")
    out.append(f"        return torch.stack(({', '.join(f'next_{s}' for s in model.states)}{',' if d == 1 else ''}), -1)")
    out += [
        "",
        "    def substep_and_jacobian(self, z):",
        f'        """One substep and its exact Jacobian: z (..., {d}) -> ((..., {d}), (..., {d}, {d}))."""',
    ]
    j_names = [f"J_{i}{j}" for i in range(d) for j in range(d)]
    exprs = list(step) + [jac[i, j] for i in range(d) for j in range(d)]
    out += _body(model, exprs, [f"next_{s}" for s in model.states] + j_names, printer, "        ")
    out.append(f"        f = torch.stack(({', '.join(f'next_{s}' for s in model.states)}{',' if d == 1 else ''}), -1)")
    out.append(f"        J = torch.stack(({', '.join(j_names)}{',' if d * d == 1 else ''}), -1).unflatten(-1, ({d}, {d}))")
    out.append("        return f, J")
    if model.start:
        out += [
            "",
            "    def start(self, z):",
            '        """The intervention\'s `start` lines applied to an encoded starting state z (..., d)."""',
        ]
        outs = [model.start.get(s, symbol(s)) for s in model.states]
        out += _body(model, outs, [f"start_{s}" for s in model.states], printer, "        ")
        out.append(f"        return torch.stack(({', '.join(f'start_{s}' for s in model.states)}{',' if d == 1 else ''}), -1)")
    return "\n".join(out) + "\n"
