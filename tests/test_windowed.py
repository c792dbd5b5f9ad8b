"""Tangent rows inside their windows (anmc.codegen.windowed) against the dense rows they replace: the same f,
J and gradients on random sparse models with every integrator, the windows' share of the dense work, and
when AnmModule chooses them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from test_jacobian_properties import random_models, render, trees

import anmc
from anmc.codegen import runtime, windowed

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import jacobian as jb  # noqa: E402  (benchmarks/jacobian.py: the chain of coupled pendulums)

METHODS = ["euler", "semi_implicit_euler", "midpoint", "rk4", "discrete"]


@st.composite
def sparse_models(draw):
    """5 to 9 states, each right-hand side a random expression of at most two of them (often its own
    neighbours), the const a and the learnable param b."""
    d = draw(st.integers(5, 9))
    states = [f"s{i}" for i in range(d)]
    equations = {}
    for i, s in enumerate(states):
        near = [states[j] for j in (i - 1, i, i + 1) if 0 <= j < d]
        names = draw(st.lists(st.sampled_from(near if draw(st.booleans()) else states), min_size=1, max_size=2, unique=True))
        equations[s] = draw(trees([*names, "a", "b"]))
    method = draw(st.sampled_from(METHODS))
    steps = draw(st.integers(1, 3)) if method != "discrete" else 1
    lines = ["model sparse", "const a = 0.7", "param b = 1.3 in [0.5, 2] learn", *(f"state {s} ~ Normal(0, 1)" for s in states)]
    if method == "discrete":
        lines += ["dynamics discrete", *(f"  next {s} = {render(equations[s])}" for s in states)]
    else:
        lines += [f"dynamics continuous dt = 0.05 using {method} steps {steps}", *(f"  {s}' = {render(equations[s])}" for s in states)]
    lines += ["noise " + ", ".join(f"{s} = 0.01" for s in states), f"observe {states[0]}"]
    return "\n".join(lines) + "\n"


WAYS = ((False, None), (True, None), (True, False))  # dense rows; windowed with their written backward; windowed under autograd


def all_ways(module, z, weights):
    """f, J and the gradient of sum(w_f f) + sum(w_J J) with respect to z and the params, each of WAYS."""
    out = []
    for rows, written in WAYS:
        module.windowed_tangents, module.written_backward = rows, written
        module.zero_grad(set_to_none=True)
        zg = z.clone().requires_grad_()
        f, J = module.f_and_jacobian(zg)
        loss = (weights[0] * f).sum() + (weights[1] * J).sum()
        if loss.requires_grad:  # (not when F depends on neither the states nor b)
            loss.backward()
        out.append((f.detach(), J.detach(), zg.grad, [p.grad for p in module.parameters()]))
    module.windowed_tangents = module.written_backward = None
    return out


def assert_same(dense, win, text):
    """Equal to rounding; a gradient that is None (nothing depends on it) on one side is zero on the other."""
    pairs = [*zip(("f", "J", "dz"), dense[:3], win[:3]), *(("a param's gradient", a, b) for a, b in zip(dense[3], win[3]))]
    for name, a, b in pairs:
        if a is None or b is None:
            assert all(x is None or not x.any() for x in (a, b)), f"{name}: None against nonzero for\n{text}"
            continue
        scale = max(1.0, float(a.abs().max()))
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-11 * scale), f"{name} differs, windowed against dense rows, for\n{text}"


def run_model(text, seed):
    module = anmc.compile_prior(text).module().double()
    gen = torch.Generator().manual_seed(seed)
    z = torch.empty(7, module.d, dtype=torch.float64).uniform_(-1, 1, generator=gen)
    weights = (torch.randn(7, module.d, generator=gen, dtype=torch.float64), torch.randn(7, module.d, module.d, generator=gen, dtype=torch.float64))
    with torch.no_grad():
        f, J = module.f_and_jacobian(z)
    if not (torch.isfinite(f).all() and torch.isfinite(J).all() and J.abs().max() < 1e8):
        return None
    dense, *windowed_ = all_ways(module, z, weights)
    for win in windowed_:
        assert_same(dense, win, text)
    return module


SETTINGS = settings(max_examples=60, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate], suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(sparse_models(), st.integers(0, 2**31 - 1))
def test_random_sparse_models_windowed_as_dense(text, seed):
    module = run_model(text, seed)
    if module is not None:
        assert 0.0 <= module.window_share() <= 1.0  # 0: F does not depend on the states


@SETTINGS
@given(random_models(), st.integers(0, 2**31 - 1))
def test_random_small_models_windowed_as_dense(spec, seed):
    run_model(spec[0], seed)


@pytest.mark.parametrize("method", METHODS)
def test_chain_windowed_as_dense_and_jacrev(method):
    text = jb.chain_anm(6)
    if method == "discrete":  # the same equations as a map: z <- z + dt F(z), written as `next`
        lines = text.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("dynamics"))
        eqs = []
        for line in lines[start + 1 :]:
            if not line.startswith("  "):
                break
            name, rhs = line.strip().split("' = ")
            eqs.append(f"  next {name} = {name} + 0.03 * ({rhs})")
        lines[start : start + 1 + len(eqs)] = ["dynamics discrete", *eqs]
        text = "\n".join(lines) + "\n"
    else:
        text = text.replace("using rk4", f"using {method}")
    module = run_model(text, 0)
    module.windowed_tangents = True
    z = 0.5 * torch.randn(5, module.d, dtype=torch.float64)
    J = torch.func.vmap(torch.func.jacrev(module))(z)  # torch.func's wrapped tensors take the dense rows
    assert torch.allclose(module.f_and_jacobian(z)[1], J, rtol=1e-10, atol=1e-12)


def test_gradcheck_windowed():
    module = anmc.compile_prior(jb.chain_anm(4)).module().double()
    module.windowed_tangents = True
    z = (0.3 * torch.randn(3, module.d, dtype=torch.float64)).requires_grad_()

    def fn(z):
        f, J = module.f_and_jacobian(z)
        return f, J

    assert torch.autograd.gradcheck(fn, (z,))


def test_window_share_counts_what_the_stages_hold():
    chain = anmc.compile_prior(jb.chain_anm(16)).module()
    assert chain.window_share() == pytest.approx(0.294, abs=0.002)  # 29% of the dense rows over two RK4 substeps
    pendulum = anmc.compile_prior(ROOT / "priors" / "pendulum.anm").module()
    assert pendulum.window_share() > 0.95
    # decoupled states: each row stays in its own column
    text = "model free\n" + "".join(f"state x{i} ~ Normal(0, 1)\n" for i in range(6))
    text += "dynamics continuous dt = 0.1 using rk4 steps 2\n" + "".join(f"  x{i}' = -x{i}\n" for i in range(6))
    text += "noise " + ", ".join(f"x{i} = 0.1" for i in range(6)) + "\nobserve x0\n"
    free = anmc.compile_prior(text).module()
    assert free.window_share() == pytest.approx(1 / 6)


def test_windowed_where_it_spares_work():
    chain = anmc.compile_prior(jb.chain_anm(16)).module()
    big, small = torch.zeros(32, 4096), torch.zeros(32, 256)
    # d^2 (1 - share) B against WINDOWED_MIN_SPARED, and against WINDOWED_MIN_SPARED_RECORDED with a graph
    assert chain._windowed(big, recorded=False) and not chain._windowed(small, recorded=False)
    assert chain._windowed(small, recorded=True)
    chain4 = anmc.compile_prior(jb.chain_anm(4)).module()
    assert chain4._windowed(torch.zeros(8, 4096), recorded=True) and not chain4._windowed(torch.zeros(8, 256), recorded=True)
    pendulum = anmc.compile_prior(ROOT / "priors" / "pendulum.anm").module()
    assert not pendulum._windowed(torch.zeros(2, 65536), recorded=False)
    assert not pendulum._windowed(torch.zeros(2, 65536), recorded=True)
    chain.windowed_tangents = False
    assert not chain._windowed(big, recorded=True)
    chain.windowed_tangents = True
    assert chain._windowed(small, recorded=False)


def test_windowed_rows_are_used_and_fall_back_under_torch_func(monkeypatch):
    chain = anmc.compile_prior(jb.chain_anm(4)).module()
    chain.windowed_tangents = True
    calls = []
    real = windowed.frame_and_jacobian
    monkeypatch.setattr(windowed, "frame_and_jacobian", lambda *a: calls.append(1) or real(*a))
    z = torch.randn(3, chain.d)
    chain.f_and_jacobian(z)
    assert calls == [1]
    torch.func.vmap(chain.f_and_jacobian)(z.unsqueeze(1))
    assert calls == [1]
    assert runtime.WINDOWED_MIN_SPARED > 0


def test_recorded_windowed_frame_is_one_node_with_the_written_backward():
    chain = anmc.compile_prior(jb.chain_anm(4)).module()
    chain.windowed_tangents = True
    z = torch.randn(3, chain.d, requires_grad=True)

    def nodes(t):
        seen, stack = [], [t.grad_fn]
        while stack:
            n = stack.pop()
            if n is not None and type(n).__name__ not in seen:
                seen.append(type(n).__name__)
                stack.extend(f for f, _ in n.next_functions)
        return seen

    f, J = chain.f_and_jacobian(z)
    assert "WindowedFrameBackward" in nodes(J) and "AddcmulBackward0" not in nodes(J)
    chain.written_backward = False  # autograd records the windowed operations instead
    f, J = chain.f_and_jacobian(z)
    assert "WindowedFrameBackward" not in nodes(J) and "CopySlices" in nodes(J)
