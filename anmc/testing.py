"""Helpers for property tests of one's own prior (docs/testing.md).

    from hypothesis import given
    from anmc.testing import check_jacobian, check_intervention, params

    prior = anmc.compile_prior("duffing.anm")

    @given(params(prior))
    def test_jacobian(values):
        check_jacobian(prior, params=values)          # raises AssertionError with the point and the entry

    def test_stiffer():
        check_intervention(prior, "k = 2.0")          # compiles, and changes k only

`check_jacobian` compares the compiled J = df/dz (one frame of z_t = f(z_{t-1}), docs/method.md §2)
with two references that share no code with the emitter: central differences of the compiled f
(with one Richardson extrapolation, error O(h^4)) and reverse-mode autograd of the compiled f, one
row at a time; `check_observation_jacobian` does the same for the observation function h and its
H = dh/dz (`observe NAME = EXPR`, docs/method.md §1). `states(prior)` and `params(prior)` are
hypothesis strategies of points where the prior is meant to hold: states around the initial
distribution and beyond it, params inside their declared bounds. Only the public API is used (`compile_prior`, `module()`, `f_and_jacobian`,
`observe_and_jacobian`, `set_param`, `param_values`), so a custom backward or a new emitter is checked like the old one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sympy as sp
import torch

from anmc.codegen.compile import CompiledPrior, compile_prior
from anmc.symbolic.model import Model

__all__ = [
    "JacobianReport", "InterventionReport", "check_jacobian", "check_observation_jacobian", "check_intervention", "params", "states",
]  # fmt: skip

BEYOND = 3.0  # states are drawn out to BEYOND initial standard deviations from the initial mean
INSIDE = 1e-3  # params are drawn this fraction of their range inside their bounds (the bounds map to +-inf)


def _compiled(prior) -> CompiledPrior:
    if isinstance(prior, CompiledPrior):
        return prior
    if isinstance(prior, Model):
        return compile_prior(prior)
    return compile_prior(Path(prior) if not str(prior).count("\n") and str(prior).endswith(".anm") else prior)


def _state_box(prior: CompiledPrior, spread: float) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) per state: mean +- spread * std of the initial distribution; a Uniform's own range, widened."""
    lo, hi = [], []
    for name in prior.state_names:
        dist = prior.model.init[name]
        std = dist.std if dist.std > 0 else 1.0
        if dist.kind == "Uniform":
            pad = (spread - 1.0) * (dist.b - dist.a) / 2
            lo.append(dist.a - max(pad, 0.0))
            hi.append(dist.b + max(pad, 0.0))
        else:
            lo.append(dist.mean - spread * std)
            hi.append(dist.mean + spread * std)
    return np.array(lo), np.array(hi)


def _param_box(prior: CompiledPrior) -> dict[str, tuple[float, float]]:
    """Params with declared bounds -> a range just inside them."""
    out = {}
    for name, p in prior.model.params.items():
        if p.bounds is not None:
            lo, hi = p.bounds
            out[name] = (lo + INSIDE * (hi - lo), hi - INSIDE * (hi - lo))
    return out


def states(prior, n: int = 8, spread: float = BEYOND):
    """Hypothesis strategy: float64 tensors (n, d) of states within mean +- spread * std of the initial distribution."""
    from hypothesis import strategies as st

    prior = _compiled(prior)
    lo, hi = _state_box(prior, spread)
    cols = [st.floats(float(a), float(b), allow_nan=False, allow_infinity=False) for a, b in zip(lo, hi)]
    row = st.tuples(*cols)
    return st.lists(row, min_size=n, max_size=n).map(lambda rows: torch.tensor(rows, dtype=torch.float64))


def params(prior):
    """Hypothesis strategy: {name: value} for every param with declared bounds, drawn inside them."""
    from hypothesis import strategies as st

    box = _param_box(_compiled(prior))
    return st.fixed_dictionaries({name: st.floats(lo, hi, allow_nan=False) for name, (lo, hi) in box.items()})


@dataclass
class JacobianReport:
    """What `check_jacobian` compared: points used, points skipped (a kink inside the difference stencil,
    or f not finite there), and the largest absolute differences of J from each reference."""

    points: int
    skipped_kinks: int
    skipped_non_finite: int
    max_error_autograd: float
    max_error_differences: float


def _draw_states(prior: CompiledPrior, module, samples: int, spread: float, seed: int) -> torch.Tensor:
    """Half from the initial distribution, half uniform in the wider box around it."""
    g = torch.Generator().manual_seed(seed)
    inside = module.sample_initial(samples - samples // 2, generator=g).double()
    lo, hi = (torch.as_tensor(b, dtype=torch.float64) for b in _state_box(prior, spread))
    beyond = lo + (hi - lo) * torch.rand((samples // 2, module.d), generator=g, dtype=torch.float64)
    return torch.cat([inside, beyond])


def _autograd_jacobian(fn, z: torch.Tensor, rows: int) -> torch.Tensor:
    """Row i of each point's Jacobian of fn by one backward pass of sum_n fn_i(z_n) (the points are
    independent): (n, rows, d)."""
    z = z.detach().clone().requires_grad_(True)
    f = fn(z)
    grads = [torch.autograd.grad(f[:, i].sum(), z, retain_graph=i < rows - 1, allow_unused=True)[0] for i in range(rows)]
    return torch.stack([r if r is not None else torch.zeros_like(z) for r in grads], dim=1)


def _differences(fn, z: torch.Tensor, h: float) -> torch.Tensor:
    """Central differences of fn with one Richardson extrapolation: (n, d) -> (n, rows, d), error O(h^4)."""
    cols = []
    d = z.shape[-1]
    with torch.no_grad():
        for j in range(d):
            e = torch.zeros(d, dtype=z.dtype)
            e[j] = 1.0

            def central(step):
                return (fn(z + step * e) - fn(z - step * e)) / (2 * step)

            cols.append((4 * central(h / 2) - central(h)) / 3)
    return torch.stack(cols, dim=-1)


def _fail(what: str, z, got, expected, names, atol, rtol, rows=None, matrix: str = "J", fn: str = "f") -> AssertionError:
    bad = ~torch.isclose(got, expected, rtol=rtol, atol=atol)
    n, i, j = (int(v) for v in torch.nonzero(bad)[0])
    rows = names if rows is None else rows
    at = ", ".join(f"{s} = {float(v):.6g}" for s, v in zip(names, z[n]))
    return AssertionError(
        f"{matrix}[{rows[i]}, {names[j]}] = d {fn}_{rows[i]} / d {names[j]} is {float(got[n, i, j]):.10g}, {what} gives "
        f"{float(expected[n, i, j]):.10g} at {at} ({int(bad.sum())} entries off, atol {atol:g}, rtol {rtol:g})"
    )


def check_jacobian(
    prior, samples: int = 64, atol: float = 1e-6, rtol: float = 1e-6, params: dict[str, float] | None = None,
    states: torch.Tensor | None = None, spread: float = BEYOND, h: float = 1e-3, seed: int = 0,
) -> JacobianReport:  # fmt: skip
    """Assert that the compiled J equals autograd of the compiled f and central differences of it.

    prior: a CompiledPrior, a .anm path or .anm text; `params` {name: value} are set first; `states`
    (n, d) are the points, else `samples` points: half drawn from the initial distribution, half
    uniform within `spread` initial standard deviations of its mean. In float64. Points where f is not
    finite, or where the differences at steps h and h/4 disagree (a kink of abs/sign/min/max inside
    the stencil), are skipped and counted; fewer than half usable points fails too.
    """
    return _check(prior, "f", samples, atol, rtol, params, states, spread, h, seed)


def check_observation_jacobian(
    prior, samples: int = 64, atol: float = 1e-6, rtol: float = 1e-6, params: dict[str, float] | None = None,
    states: torch.Tensor | None = None, spread: float = BEYOND, h: float = 1e-3, seed: int = 0,
) -> JacobianReport:  # fmt: skip
    """Assert that the compiled H = dh/dz of the observation function (`observe_and_jacobian`,
    docs/method.md §1) equals autograd of the compiled h (`observe`) and central differences of it;
    the arguments and the points skipped as in `check_jacobian`."""
    return _check(prior, "h", samples, atol, rtol, params, states, spread, h, seed)


def _check(prior, which: str, samples, atol, rtol, params, states, spread, h, seed) -> JacobianReport:
    """`check_jacobian` (which = "f": the frame's map and J) or `check_observation_jacobian` ("h": the
    observation function and H)."""
    prior = _compiled(prior)
    module = prior.module().double()
    for name, value in (params or {}).items():
        module.set_param(name, float(value))
    names = prior.state_names
    fn, with_jacobian = (module, module.f_and_jacobian) if which == "f" else (module.observe, module.observe_and_jacobian)
    rows = names if which == "f" else module.observations
    matrix, what_fn = ("J", "f") if which == "f" else ("H", "h")
    fail = lambda what, z, got, expected, atol_: _fail(what, z, got, expected, names, atol_, rtol, rows, matrix, what_fn)  # noqa: E731
    z = _draw_states(prior, module, samples, spread, seed) if states is None else torch.as_tensor(states, dtype=torch.float64)
    z = z.reshape(-1, module.d)
    with torch.no_grad():
        f, J = with_jacobian(z)
    finite = torch.isfinite(f).all(-1)
    z, J = z[finite], J[finite]
    if len(z) == 0:
        raise AssertionError(f"{what_fn} is not finite at any of the {int((~finite).sum())} points drawn; pass states= where {prior.model.name} is defined.")
    if not torch.isfinite(J).all():
        raise fail("a finite value", z, J, torch.zeros_like(J), float("inf"))
    scale = max(1.0, float(J.abs().max()))

    autograd = _autograd_jacobian(fn, z, len(rows))
    if not torch.allclose(J, autograd, rtol=rtol, atol=atol * scale):
        raise fail(f"autograd of the compiled {what_fn}", z, J, autograd, atol * scale)

    fd, fd_fine = _differences(fn, z, h), _differences(fn, z, h / 4)
    smooth = torch.isclose(fd, fd_fine, rtol=rtol / 10, atol=atol * scale / 10).all(-1).all(-1)
    if 2 * int(smooth.sum()) < len(z):
        raise AssertionError(
            f"central differences disagree with themselves at {int((~smooth).sum())} of {len(z)} points "
            f"({what_fn} is not smooth there); pass states= away from the kinks, or a smaller h than {h:g}."
        )
    if not torch.allclose(J[smooth], fd[smooth], rtol=rtol, atol=atol * scale):
        raise fail(f"central differences of the compiled {what_fn}", z[smooth], J[smooth], fd[smooth], atol * scale)
    return JacobianReport(
        points=int(smooth.sum()), skipped_kinks=int((~smooth).sum()), skipped_non_finite=int((~finite).sum()),
        max_error_autograd=float((J - autograd).abs().max()), max_error_differences=float((J[smooth] - fd[smooth]).abs().max()),
    )  # fmt: skip


@dataclass
class InterventionReport:
    """What an edit changed: equations (by state), param/const values, initial distributions, starts."""

    equations: tuple[str, ...] = ()
    values: tuple[str, ...] = ()
    inits: tuple[str, ...] = ()
    starts: tuple[str, ...] = ()
    jacobian: JacobianReport | None = field(default=None, repr=False)


def _values(model: Model) -> dict[str, float]:
    return {**model.consts, **{n: p.value for n, p in model.params.items()}}


def check_intervention(prior, edit, samples: int = 32, seed: int = 0) -> InterventionReport:
    """Assert that `edit` compiles, changes what it names and nothing else, and that its Jacobian checks.

    edit: an intervention block's name, one edit line ("c = 0.8", "omega' = -omega", "init theta ~
    Normal(0, 2)", "start theta = 2 * theta") or a list of them. Compared with the prior as written:
    the right-hand sides of the states it gives equations for differ (symbolically), the others are
    the same expression; the consts/params it sets differ, the others keep their values; likewise
    the initial distributions and starts; the noise is unchanged. The edited f has its Jacobian checked
    (`check_jacobian`), and when the dynamics are untouched, f is bit for bit the original's.
    """
    base = _compiled(prior)
    edits = [edit] if isinstance(edit, str) else list(edit)
    if len(edits) == 1 and edits[0] in base.model.interventions:
        edited = compile_prior(base.model, intervention=edits[0])
    else:
        edited = compile_prior(base.model, edits=edits)
    a, b, o = base.model, edited.model, edited.model.overrides
    said = {"equations": set(o.equations), "values": set(o.sets), "inits": set(o.inits), "starts": set(o.starts)}

    changed_eq = {s for s in a.states if sp.simplify(a.rhs[s] - b.rhs[s]) != 0}
    va, vb = _values(a), _values(b)
    changed_values = {n for n in va if va[n] != vb[n]}
    changed_inits = {s for s in a.states if a.init[s] != b.init[s]}
    changed_starts = {s for s in a.states if sp.simplify(a.start.get(s, sp.Symbol(s)) - b.start.get(s, sp.Symbol(s))) != 0} if a.start or b.start else set()
    got = {"equations": changed_eq, "values": changed_values, "inits": changed_inits, "starts": changed_starts}
    for kind in got:
        extra, missing = got[kind] - said[kind], said[kind] - got[kind]
        if extra:
            raise AssertionError(f"the edit {edits} also changed the {kind} of {', '.join(sorted(extra))}, which it does not name")
        if missing and kind != "starts":
            raise AssertionError(f"the edit {edits} names the {kind} of {', '.join(sorted(missing))} but leaves them as they were")
    if a.noise != b.noise:
        raise AssertionError(f"the edit {edits} changed the noise, which edits never do")

    report = InterventionReport(*(tuple(sorted(got[k])) for k in ("equations", "values", "inits", "starts")))
    report.jacobian = check_jacobian(edited, samples=samples, seed=seed)
    g = torch.Generator().manual_seed(seed)
    m_a, m_b = base.module().double(), edited.module().double()
    z = m_a.sample_initial(samples, generator=g).double()
    with torch.no_grad():
        same = torch.equal(m_a(z), m_b(z))
    dynamics_said = bool(said["equations"]) or any(n in a.params or n in a.consts for n in said["values"])
    if not dynamics_said and not same:
        raise AssertionError(f"the edit {edits} changes no equation, param or const, yet f changed")
    return report
