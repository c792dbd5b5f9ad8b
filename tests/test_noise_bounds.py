"""A learnable noise std with bounds, `noise v = 0.05 in [0.005, 0.1] learn`: stored on a log scale inside
its bounds, so that no optimizer step can take it out; it starts where the text says, trains, is
reported at a bound, and a trained run's `.anm` (learned values written in) compiles again."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import anmc
from anmc.codegen.learned_anm import learned_anm
from anmc.prior import transition_kl
from anmc.vae.diagnostics import param_findings

SPRING = """\
model spring
param k = 4.0 in [0.1, 100] learn
state x ~ Normal(0, 1)
state v ~ Normal(0, 1)
dynamics continuous dt = 0.1 using rk4 steps 1
  x' = v
  v' = -k * x
noise x = 0.01 learn, v = {v} in [{lo}, {hi}] learn
observe x
"""


def spring(v=0.05, lo=0.005, hi=0.1):
    return anmc.compile_prior(SPRING.format(v=v, lo=lo, hi=hi))


@settings(max_examples=30, deadline=None)
@given(
    lo=st.floats(1e-4, 1.0),
    ratio=st.floats(1.01, 1e3),
    at=st.floats(0.01, 0.99),
    raw=st.floats(-1e6, 1e6),
)
def test_starts_at_its_value_and_no_raw_value_leaves_the_bounds(lo, ratio, at, raw):
    hi = lo * ratio
    v = lo * ratio**at
    module = spring(repr(v), repr(lo), repr(hi)).module().double()
    # (parameters are made in float32, then cast: float32's rounding of the stored raw value)
    assert module.noise_std[1].item() == pytest.approx(v, rel=1e-5)
    assert module.noise_std[0].item() == pytest.approx(0.01, rel=1e-6)  # the unbounded one is untouched
    with torch.no_grad():
        module._logit_sigma_v.fill_(raw)
    assert lo * (1 - 1e-12) <= module.noise_std[1].item() <= hi * (1 + 1e-12)


def test_the_emitted_source_says_how_it_is_stored():
    source = spring().source
    assert "noise_bounds = {'v': (0.005, 0.1)}" in source
    assert "# stored unconstrained: std of v = 0.005 * (20.0 ** sigmoid(_logit_sigma_v))" in source
    assert "_log_sigma_x = nn.Parameter" in source and "_log_sigma_v" not in source


def test_a_prior_without_noise_bounds_emits_nothing_new():
    assert "noise_bounds" not in anmc.compile_prior(SPRING.replace("v = {v} in [{lo}, {hi}] learn", "v = 0.05 learn")).source


def test_training_moves_it_inside_the_bounds_only():
    """Gradient reaches the bounded std through every transition KL reading, and plain gradient steps on
    a KL that wants it large (posteriors far from the prior's mean) stop at the upper bound."""
    module = spring().module().double()
    g = torch.Generator().manual_seed(0)
    mu_prev, mu_t = torch.randn(64, 2, generator=g, dtype=torch.float64), 3 * torch.randn(64, 2, generator=g, dtype=torch.float64)
    std = torch.full((64, 2), 0.1, dtype=torch.float64)
    for name in ("elbo", "pairwise"):
        kl = transition_kl(name, module, mu_prev, std, mu_t, std, samples=4, generator=torch.Generator().manual_seed(1))
        (grad,) = torch.autograd.grad(kl.sum(), [module._logit_sigma_v])
        assert grad < 0, name  # more noise explains far-off posteriors: the std wants to grow
    opt = torch.optim.SGD([module._logit_sigma_v], lr=10.0)
    for _ in range(50):
        opt.zero_grad()
        transition_kl("pairwise", module, mu_prev, std, mu_t, std).sum().backward()
        opt.step()
    assert 0.099 < module.noise_std[1].item() <= 0.1 * (1 + 1e-12)


def test_set_noise_std_round_trips_and_clips_to_the_bounds():
    module = spring().module().double()
    module.set_noise_std("v", 0.02)
    assert module.noise_std[1].item() == pytest.approx(0.02, rel=1e-9)
    module.set_noise_std("v", 5.0)
    assert 0.0999 < module.noise_std[1].item() < 0.1
    module.set_noise_std("v", 0.0)
    assert 0.005 < module.noise_std[1].item() < 0.00501


def test_a_std_at_its_bound_is_reported_and_its_learned_text_compiles_again():
    prior = spring()
    module = prior.module()
    assert not param_findings(module)
    module.set_noise_std("v", 1.0)  # as far up as it goes
    (found,) = param_findings(module)
    assert found["code"] == "param_at_bound" and found["evidence"]["param"] == "noise_v"
    assert "the noise std of v" in found["message"] and "upper bound 0.1" in found["message"]
    text = learned_anm(prior.model, module)
    line = next(line for line in text.splitlines() if line.startswith("noise"))
    assert "in [0.005, 0.1] learn" in line and "noise v started at 0.05" in line
    again = anmc.compile_prior(text).module()  # strictly inside: compiles
    assert again.noise_std[1].item() == pytest.approx(module.noise_std[1].item(), rel=1e-5)


def test_a_learned_param_on_its_bound_is_written_inside_it():
    prior = spring()
    module = prior.module()
    module.set_param("k", 100.0)
    text = learned_anm(prior.model, module)
    value = float(next(line for line in text.splitlines() if line.startswith("param k")).split("=")[1].split("in")[0])
    assert 0.1 < value < 100 and math.isclose(value, 100, rel_tol=1e-4)
    anmc.compile_prior(text)


def test_a_checkpointed_bounded_std_loads_into_a_fresh_module():
    a, b = spring().module(), spring().module()
    a.set_noise_std("v", 0.03)
    b.load_state_dict(a.state_dict())
    assert b.noise_std[1].item() == pytest.approx(0.03, rel=1e-6)


def test_a_param_named_like_the_stored_std_does_not_collide():
    """Params are stored as _raw_NAME / _fixed_NAME; a bounded std as _logit_sigma_STATE: a param called
    sigma_v next to a bounded std of v keeps both."""
    text = SPRING.format(v=0.05, lo=0.005, hi=0.1).replace("param k = 4.0 in [0.1, 100] learn", "param k = 4.0 in [0.1, 100] learn\nparam sigma_v = 2.0 in [1, 3] learn")
    text = text.replace("v' = -k * x", "v' = -k * x * sigma_v / 2")
    module = anmc.compile_prior(text).module()
    assert {"_raw_sigma_v", "_logit_sigma_v"} <= {n for n, _ in module.named_parameters()}
    assert module.noise_std[1].item() == pytest.approx(0.05, rel=1e-5)
    assert float(module.param_values()["sigma_v"]) == pytest.approx(2.0, rel=1e-5)
