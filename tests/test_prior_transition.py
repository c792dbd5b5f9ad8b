"""The transition-KL readings (elbo, elbo_mc, mixture, pairwise, pooled): one signature, chosen by name; each
checked against its definition (closed forms, Monte Carlo within standard errors) and for gradients."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import anmc
from anmc.prior import (
    TRANSITION_KL,
    GaussianMixture,
    LinearizedPrior,
    gaussian_kl,
    gmm_kl_monte_carlo,
    initial_kl,
    transition_kl,
)
from anmc.prior.transition import elbo, elbo_mc, mixture, pairwise, pooled

F64 = torch.float64
PRIORS = Path(__file__).resolve().parent.parent / "priors"
SPRING = (PRIORS / "spring.anm").read_text().replace("noise x = 0.005, v = 0.05", "noise x = 0.005, v = 0.05 learn")


@pytest.fixture(scope="module")
def spring():
    m = anmc.compile_prior(SPRING).module().double()
    assert m.noise_learnable == (False, True)
    return m


@pytest.fixture(scope="module")
def pendulum():
    return anmc.compile_prior(PRIORS / "pendulum.anm").module().double()


def posteriors(module, n, seed, prev_scale=0.1, t_scale=0.1, dtype=F64):
    """Encoder-like posteriors around a trajectory: μ_t near f(μ_{t−1})."""
    g = torch.Generator().manual_seed(seed)
    s0 = module.initial_std.to(dtype)
    mu_prev = s0 * torch.randn(n, module.d, generator=g, dtype=dtype)
    std_prev = prev_scale * s0 * (0.5 + torch.rand(n, module.d, generator=g, dtype=dtype))
    with torch.no_grad():
        mu_t = module(mu_prev) + 0.05 * s0 * torch.randn(n, module.d, generator=g, dtype=dtype)
    std_t = t_scale * s0 * (0.5 + torch.rand(n, module.d, generator=g, dtype=dtype))
    return mu_prev, std_prev, mu_t, std_t


def replicated(fn, module, args, reps, **kw):
    """Mean and standard error over `reps` independent one-sample evaluations of each row."""
    n = args[0].shape[0]
    big = [a.repeat(reps, 1) for a in args]
    vals = fn(module, *big, samples=1, generator=torch.Generator().manual_seed(0), **kw).reshape(reps, n)
    return vals.mean(0), vals.std(0) / math.sqrt(reps)


# ---------------------------------------------------------------------------------------------- the interface


def test_every_reading_has_the_trainer_signature(pendulum):
    """What anmc/vae/train.py does: float32 posteriors, `samples=`, no generator; (N,) out, finite gradients."""
    module = anmc.compile_prior(PRIORS / "pendulum.anm").module()
    args = [a.float().requires_grad_() for a in posteriors(pendulum, 6, 0)]
    assert set(TRANSITION_KL) == {"elbo", "elbo_mc", "mixture", "pairwise", "pooled"}
    for name in TRANSITION_KL:
        module.zero_grad()
        kl = transition_kl(name, module, *args, samples=4)
        assert kl.shape == (6,) and kl.dtype == torch.float32 and torch.isfinite(kl).all(), name
        grads = torch.autograd.grad(kl.sum(), [*args, module._raw_L])
        assert all(torch.isfinite(g).all() for g in grads), name
        assert grads[-1].abs() > 0, f"{name}: no gradient reaches the learnable length L through f and J"


def test_unknown_reading_is_an_error(pendulum):
    with pytest.raises(ValueError, match="pairwise"):
        transition_kl("paired", pendulum, *posteriors(pendulum, 2, 0))


def test_gradients_reach_learnable_noise_and_params(spring):
    args = posteriors(spring, 5, 1)
    for name in TRANSITION_KL:
        kl = transition_kl(name, spring, *args, samples=4, generator=torch.Generator().manual_seed(0))
        g_k, g_noise = torch.autograd.grad(kl.sum(), [spring._raw_k, spring._log_sigma_v])
        assert g_k.abs() > 0 and g_noise.abs() > 0, name


def test_initial_kl_is_the_closed_form(pendulum):
    mu, _, _, std = posteriors(pendulum, 4, 2)
    m0, s0 = pendulum.initial_mean.double(), pendulum.initial_std.double()
    ref = gaussian_kl(mu, std, m0.expand_as(mu), s0.expand_as(std))
    assert torch.allclose(initial_kl(pendulum, mu, std), ref, atol=1e-14)


# ---------------------------------------------------------------------------------------------- each reading


def test_pairwise_is_the_closed_form_of_the_one_component_prior(spring):
    args = posteriors(spring, 5, 3)
    mu_prev, std_prev, mu_t, std_t = args
    f, J = spring.f_and_jacobian(mu_prev)
    cov = J @ torch.diag_embed(std_prev.square()) @ J.mT + torch.diag(spring.noise_std.square())
    ref = gaussian_kl(mu_t, std_t, f, torch.linalg.cholesky(cov))
    a = pairwise(spring, *args, generator=torch.Generator().manual_seed(0))
    b = pairwise(spring, *args, samples=64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)  # deterministic: no Monte Carlo
    assert torch.allclose(a, ref, rtol=1e-10)
    # and the Monte Carlo estimate of the same KL (K = 1 linearized at the mean) converges to it
    q = GaussianMixture.gaussian(mu_t, scale_diag=std_t)
    kl, se = gmm_kl_monte_carlo(q, LinearizedPrior(spring)(mu_prev, std_prev), 4000,
                                generator=torch.Generator().manual_seed(2), return_stderr=True)  # fmt: skip
    assert ((kl - a).abs() < 3 * se).all()


def test_elbo_closed_form_equals_its_monte_carlo_on_linear_dynamics(spring):
    """f(z) = A z: E_{z~q_{t-1}} KL(q_t ‖ N(A z, Q)) = KL(q_t ‖ N(A μ, Q)) + ½ tr(Q⁻¹ A Σ Aᵀ) exactly."""
    args = posteriors(spring, 4, 4, prev_scale=0.3)
    closed = elbo(spring, *args)
    mc, se = replicated(elbo_mc, spring, args, 4000)
    assert ((closed - mc).abs() < 3 * se).all(), (closed, mc, se)
    # the expectation term is the right size (not negligible), so the comparison means something
    f, J = spring.f_and_jacobian(args[0])
    trace = 0.5 * (J * args[1][:, None, :] / spring.noise_std[:, None]).square().sum((-2, -1))
    assert (trace > 0.1 * closed).all()
    # samples=S is the same estimator averaged over S draws
    many = elbo_mc(spring, *args, samples=4000, generator=torch.Generator().manual_seed(5))
    assert ((closed - many).abs() < 3 * se).all()


def test_elbo_closed_form_equals_its_monte_carlo_on_the_pendulum_for_small_sigma(pendulum):
    args = posteriors(pendulum, 4, 5, prev_scale=2e-3)
    closed = elbo(pendulum, *args)
    mc, se = replicated(elbo_mc, pendulum, args, 4000)
    assert ((closed - mc).abs() < 3 * se).all(), (closed, mc, se)


def test_mixture_is_the_monte_carlo_kl_to_the_sampled_linearized_mixture(spring):
    args = posteriors(spring, 5, 6)
    mu_prev, std_prev, mu_t, std_t = args
    for cov in ("shrunk", "full", "zero"):
        got = mixture(spring, *args, samples=6, generator=torch.Generator().manual_seed(7), component_cov=cov)
        g = torch.Generator().manual_seed(7)
        p = LinearizedPrior(spring, at="samples", samples=6, component_cov=cov)(mu_prev, std_prev, generator=g)
        ref = gmm_kl_monte_carlo(GaussianMixture.gaussian(mu_t, scale_diag=std_t), p, 6, generator=g)
        assert torch.allclose(got, ref, atol=1e-12), cov


def test_mixture_with_a_sharp_previous_posterior_is_pairwise(spring):
    """σ_{t−1} → 0: every sample point is the mean, so the mixture is N(A μ, Q) and the KL is pairwise's."""
    mu_prev, std_prev, mu_t, std_t = posteriors(spring, 4, 8)
    args = (mu_prev, 1e-9 * std_prev, mu_t, std_t)
    mc, se = replicated(mixture, spring, args, 3000)
    assert ((mc - pairwise(spring, *args)).abs() < 3 * se).all()


def test_pooled_is_the_batch_mixture_kl_spread_over_rows(spring):
    args = posteriors(spring, 6, 9)
    mu_prev, std_prev, mu_t, std_t = args
    got = pooled(spring, *args, samples=5, generator=torch.Generator().manual_seed(3))
    assert got.shape == (6,) and torch.allclose(got, got[:1].expand(6))
    q_bar = GaussianMixture(torch.zeros(6, dtype=F64), mu_t, scale_diag=std_t)
    p_bar = LinearizedPrior(spring)(mu_prev, std_prev).pool()
    ref = gmm_kl_monte_carlo(q_bar, p_bar, 5, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(got.sum(), ref, atol=1e-12)
    # with one transition, the pooled mixtures are single Gaussians: the KL is pairwise's
    one = [a[:1] for a in args]
    got = pooled(spring, *one, samples=4000, generator=torch.Generator().manual_seed(4))
    _, se = gmm_kl_monte_carlo(GaussianMixture.gaussian(one[2], scale_diag=one[3]),
                               LinearizedPrior(spring)(one[0], one[1]), 4000,
                               generator=torch.Generator().manual_seed(4), return_stderr=True)  # fmt: skip
    assert (got - pairwise(spring, *one)).abs() < 3 * se


@pytest.mark.parametrize("reading,component_cov", [("pooled", None), ("mixture", "shrunk"), ("mixture", "zero"),
                                                   ("mixture", "full")])  # fmt: skip
@pytest.mark.parametrize("model", ["spring", "pendulum"])
def test_one_node_readings_have_the_gradients_of_the_mixture_objects(reading, component_cov, model, request):
    """`pooled` and `mixture` run as one autograd node (anmc.prior.linearized_kl: the prior's covariance
    factorized without autograd, ∂/∂Σ written out). Same draws, float64: the value and every gradient
    (posteriors, the learnable physical param through f and J, the learnable noise) equal those of
    LinearizedPrior + gmm_kl_monte_carlo through autograd."""
    module = request.getfixturevalue(model)
    args = [a.clone().requires_grad_() for a in posteriors(module, 7, 11, prev_scale=0.3)]
    mu_prev, std_prev, mu_t, std_t = args
    params = [*args, *(p for p in module.parameters() if p.requires_grad)]
    if reading == "pooled":
        got = pooled(module, *args, samples=3, generator=torch.Generator().manual_seed(5)).sum()
        q = GaussianMixture(torch.zeros(7, dtype=F64), mu_t, scale_diag=std_t)
        ref = gmm_kl_monte_carlo(q, LinearizedPrior(module)(mu_prev, std_prev).pool(), 3,
                                 generator=torch.Generator().manual_seed(5))  # fmt: skip
    else:
        w = torch.linspace(0.5, 1.5, 7, dtype=F64)  # a weighted sum: every row's gradient counts differently
        got = (w * mixture(module, *args, samples=3, generator=torch.Generator().manual_seed(5),
                           component_cov=component_cov)).sum()  # fmt: skip
        g = torch.Generator().manual_seed(5)
        p = LinearizedPrior(module, at="samples", samples=3, component_cov=component_cov)(mu_prev, std_prev, generator=g)
        ref = (w * gmm_kl_monte_carlo(GaussianMixture.gaussian(mu_t, scale_diag=std_t), p, 3, generator=g)).sum()
    assert torch.allclose(got, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, params), torch.autograd.grad(ref, params)):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-10 * b.abs().max().item()), (a, b)


def test_one_node_kl_passes_gradcheck():
    """kl_to_linearized_prior against finite differences in every input: f, J, the pushed std s, diag Q,
    and q's means and stds (pooled: 4 components each side, 2 draws per component)."""
    from anmc.prior.linearized_kl import kl_to_linearized_prior

    g = torch.Generator().manual_seed(2)
    B, K, d = 1, 4, 3
    f = torch.randn(B, K, d, generator=g, dtype=F64)
    J = torch.eye(d, dtype=F64) + 0.3 * torch.randn(B, K, d, d, generator=g, dtype=F64)
    s = 0.2 + 0.3 * torch.rand(B, K, d, generator=g, dtype=F64)
    var = 0.05 + 0.1 * torch.rand(d, generator=g, dtype=F64)
    mu = f + 0.2 * torch.randn(B, K, d, generator=g, dtype=F64)
    std = 0.2 + 0.3 * torch.rand(B, K, d, generator=g, dtype=F64)
    inputs = tuple(t.requires_grad_() for t in (f, J, s, var, mu, std))

    def fn(*xs):
        return kl_to_linearized_prior(*xs, 2, torch.Generator().manual_seed(0))

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_elbo_bounds_pairwise_from_above(pendulum):
    """elbo ≥ pairwise always: elbo is E_z KL(q_t ‖ N(f(μ) + J(z − μ), Q)), pairwise the KL to the z-mixture of
    those Gaussians, N(f(μ), J Σ Jᵀ + Q), and KL is convex in its second argument (docs/method.md §5, lesson 1:
    pairwise lets the encoder hide a mismatch in a wide σ_{t−1}; elbo charges for it)."""
    args = posteriors(pendulum, 8, 10, prev_scale=0.3)
    assert (elbo(pendulum, *args) >= pairwise(pendulum, *args)).all()


def test_readings_accept_a_duck_typed_prior(pendulum):
    """The trainer may wrap the module (a warm-up widens noise_std): anything with f_and_jacobian, __call__
    and noise_std works, and the readings use the wrapper's noise."""

    class Wider:
        def __init__(self, module):
            self.module = module

        def __call__(self, z):
            return self.module(z)

        def f_and_jacobian(self, z):
            return self.module.f_and_jacobian(z)

        @property
        def noise_std(self):
            return 3.0 * self.module.noise_std

    args = posteriors(pendulum, 4, 11)
    for name in TRANSITION_KL:
        g = torch.Generator().manual_seed(0)
        wide = transition_kl(name, Wider(pendulum), *args, samples=4, generator=g)
        g = torch.Generator().manual_seed(0)
        plain = transition_kl(name, pendulum, *args, samples=4, generator=g)
        assert torch.isfinite(wide).all() and not torch.allclose(wide, plain), name
