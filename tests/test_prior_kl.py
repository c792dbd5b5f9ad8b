"""KL divergences: gaussian_kl in closed form, gmm_kl_monte_carlo (convergence within standard errors, its
standard error, gradients, KL(q||q) = 0) and its stability over extreme scales (hypothesis)."""

from __future__ import annotations

import math

import pytest
import torch
from _mixtures import random_components
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal, kl_divergence

from anmc.prior import GaussianMixture, gaussian_kl, gmm_kl_monte_carlo

F64 = torch.float64


def random_tril(*shape, d, g, scale=1.0):
    A = torch.randn(*shape, d, d, generator=g, dtype=F64)
    return scale * torch.linalg.cholesky(A @ A.mT / d + 0.5 * torch.eye(d, dtype=F64))


def random_gaussian(batch, d, *, full, g, spread=1.0, scale=1.0):
    mu = spread * torch.randn(*batch, d, generator=g, dtype=F64)
    if full:
        return mu, random_tril(*batch, d=d, g=g, scale=scale)
    return mu, scale * (0.3 + torch.rand(*batch, d, generator=g, dtype=F64))


def as_mvn(mu, scale):
    return MultivariateNormal(mu, scale_tril=scale if scale.dim() > mu.dim() else torch.diag_embed(scale))


def kw(scale, mu):
    return {"scale_tril": scale} if scale.dim() > mu.dim() else {"scale_diag": scale}


# ---------------------------------------------------------------------------------------------- closed form


@pytest.mark.parametrize("full_q", [False, True])
@pytest.mark.parametrize("full_p", [False, True])
def test_gaussian_kl_matches_torch_distributions(full_q, full_p):
    g = torch.Generator().manual_seed(int(full_q) + 2 * int(full_p))
    mu_q, s_q = random_gaussian((5,), 4, full=full_q, g=g)
    mu_p, s_p = random_gaussian((5,), 4, full=full_p, g=g)
    ours = gaussian_kl(mu_q, s_q, mu_p, s_p)
    ref = kl_divergence(as_mvn(mu_q, s_q), as_mvn(mu_p, s_p))
    assert ours.shape == (5,)
    assert torch.allclose(ours, ref, rtol=1e-12, atol=1e-12)


def test_gaussian_kl_of_a_distribution_with_itself_is_zero():
    g = torch.Generator().manual_seed(0)
    mu, s = random_gaussian((3,), 5, full=False, g=g)
    assert (gaussian_kl(mu, s, mu, s) == 0).all()  # diagonal: exactly
    mu, L = random_gaussian((3,), 5, full=True, g=g)
    assert gaussian_kl(mu, L, mu, L).abs().max() < 1e-13


def test_gaussian_kl_broadcasts_and_rejects_bad_scales():
    mu = torch.zeros(4, 3, dtype=F64)
    out = gaussian_kl(mu, torch.ones(4, 3, dtype=F64), torch.zeros(3, dtype=F64), 2 * torch.eye(3, dtype=F64))
    assert out.shape == (4,)
    assert torch.allclose(out, torch.full((4,), 3 * (0.5 * (0.25 - 1) + math.log(2)), dtype=F64))
    with pytest.raises(ValueError):
        gaussian_kl(mu, torch.ones(4, 3, 3, 3), mu, torch.ones(4, 3))


# ---------------------------------------------------------------------------------------------- Monte Carlo


@pytest.mark.parametrize("seed", range(6))
def test_monte_carlo_converges_to_the_closed_form(seed):
    """Single components: within 3 standard errors of the closed form (S = 4000 draws)."""
    g = torch.Generator().manual_seed(seed)
    d = 1 + seed
    full_q, full_p = seed % 2 == 0, seed % 3 != 0
    mu_q, s_q = random_gaussian((), d, full=full_q, g=g)
    mu_p, s_p = random_gaussian((), d, full=full_p, g=g, spread=0.5, scale=1.3)
    q, p = GaussianMixture.gaussian(mu_q, **kw(s_q, mu_q)), GaussianMixture.gaussian(mu_p, **kw(s_p, mu_p))
    kl, se = gmm_kl_monte_carlo(q, p, 4000, generator=torch.Generator().manual_seed(100 + seed), return_stderr=True)
    exact = gaussian_kl(mu_q, s_q, mu_p, s_p)
    assert 0 < se < 0.05 * exact + 0.01
    assert (kl - exact).abs() < 3 * se


def test_monte_carlo_between_mixtures_matches_torch_distributions():
    """Mixtures on both sides: ours (stratified) and a plain torch.distributions estimate agree within SEs."""
    g = torch.Generator().manual_seed(7)
    K, d = 3, 2
    lw_q, lw_p = torch.randn(K, generator=g, dtype=F64), torch.randn(K, generator=g, dtype=F64)
    mu_q, L_q = 2 * torch.randn(K, d, generator=g, dtype=F64), random_tril(K, d=d, g=g, scale=0.7)
    mu_p, L_p = 2 * torch.randn(K, d, generator=g, dtype=F64), random_tril(K, d=d, g=g)
    q = GaussianMixture(lw_q, mu_q, scale_tril=L_q)
    p = GaussianMixture(lw_p, mu_p, scale_tril=L_p)
    kl, se = gmm_kl_monte_carlo(q, p, 3000, generator=torch.Generator().manual_seed(1), return_stderr=True)
    tq = MixtureSameFamily(Categorical(logits=lw_q), MultivariateNormal(mu_q, scale_tril=L_q))
    tp = MixtureSameFamily(Categorical(logits=lw_p), MultivariateNormal(mu_p, scale_tril=L_p))
    torch.manual_seed(2)
    z = tq.sample((40000,))
    y = tq.log_prob(z) - tp.log_prob(z)
    ref, ref_se = y.mean(), y.std() / math.sqrt(len(y))
    assert (kl - ref).abs() < 3 * math.hypot(se, ref_se)


def test_standard_error_matches_the_spread_of_estimates():
    g = torch.Generator().manual_seed(3)
    q = GaussianMixture(torch.randn(4, 3, generator=g, dtype=F64), torch.randn(4, 3, 2, generator=g, dtype=F64),
                        scale_diag=0.5 + torch.rand(4, 3, 2, generator=g, dtype=F64))  # fmt: skip
    p = GaussianMixture(torch.zeros(4, 2, dtype=F64), torch.randn(4, 2, 2, generator=g, dtype=F64),
                        scale_tril=random_tril(4, 2, d=2, g=g))  # fmt: skip
    # 400 independent estimates at once: replicate the batch
    reps = 400
    qr = GaussianMixture(q.log_weights.repeat(reps, 1), q.loc.repeat(reps, 1, 1),
                         scale_diag=q.scale_diag.repeat(reps, 1, 1))  # fmt: skip
    pr = GaussianMixture(p.log_weights.repeat(reps, 1), p.loc.repeat(reps, 1, 1),
                         scale_tril=p.scale_tril.repeat(reps, 1, 1, 1))  # fmt: skip
    kl, se = gmm_kl_monte_carlo(qr, pr, 8, generator=torch.Generator().manual_seed(0), return_stderr=True)
    spread = kl.reshape(reps, 4).std(0)
    mean_se = se.reshape(reps, 4).mean(0)
    assert ((spread / mean_se - 1).abs() < 0.2).all(), (spread, mean_se)


def test_identical_mixtures_give_zero():
    g = torch.Generator().manual_seed(5)
    for K in (1, 4):
        loc = torch.randn(3, K, 5, generator=g, dtype=F64)
        q = GaussianMixture(torch.randn(3, K, generator=g, dtype=F64), loc, scale_tril=random_tril(3, K, d=5, g=g))
        p = GaussianMixture(q.log_weights.clone(), loc.clone(), scale_tril=q.scale_tril.clone())
        kl = gmm_kl_monte_carlo(q, p, 16, generator=torch.Generator().manual_seed(0))
        assert kl.abs().max() < 1e-12, K


def test_samples_must_be_positive():
    q = GaussianMixture.gaussian(torch.zeros(2), scale_diag=torch.ones(2))
    with pytest.raises(ValueError):
        gmm_kl_monte_carlo(q, q, 0)


@pytest.mark.parametrize("far", [False, True])
def test_gradients_match_finite_differences(far):
    """The estimate for fixed noise is a smooth function of both mixtures' parameters; `far` puts components
    1e3 widths apart with widths 1e-3..1, where the GEMM expansion cancels and rows are recomputed exactly."""
    g = torch.Generator().manual_seed(11)
    K, d = 3, 3
    scale = torch.tensor([1e-3, 1.0, 0.05], dtype=F64)[:, None] if far else torch.ones(K, 1, dtype=F64)
    lw_q, lw_p = torch.randn(K, generator=g, dtype=F64), torch.randn(K, generator=g, dtype=F64)
    mu_q = torch.randn(K, d, generator=g, dtype=F64) * (1e3 * scale if far else 1.0)
    mu_p = mu_q + 0.5 * scale * torch.randn(K, d, generator=g, dtype=F64)
    s_q = scale * (0.5 + torch.rand(K, d, generator=g, dtype=F64))
    L_p = scale[..., None] * random_tril(K, d=d, g=g)
    # every input in units of its component's width, so that one finite-difference step suits them all
    inputs = (lw_q, mu_q / scale, s_q / scale, lw_p, mu_p / scale, L_p / scale[..., None])
    inputs = tuple(t.clone().requires_grad_() for t in inputs)

    def fn(lw_q, u_q, v_q, lw_p, u_p, V_p):
        q = GaussianMixture(lw_q, u_q * scale, scale_diag=v_q * scale)
        p = GaussianMixture(lw_p, u_p * scale, scale_tril=torch.tril(V_p) * scale[..., None])
        return gmm_kl_monte_carlo(q, p, 4, generator=torch.Generator().manual_seed(0))

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-7, atol=1e-5, rtol=1e-4)


def brute_log_prob(z, log_w, loc, L):
    """float64 reference through autograd, materializing (points, K, d): z (*B, n, d) -> (*B, n)."""
    log_w = log_w - torch.logsumexp(log_w, -1, keepdim=True)
    diff = z[..., :, None, :] - loc[..., None, :, :]
    y = torch.linalg.solve_triangular(L[..., None, :, :, :].expand(*diff.shape, diff.shape[-1]), diff[..., None],
                                      upper=False)[..., 0]  # fmt: skip
    ell = log_w[..., None, :] - 0.5 * y.square().sum(-1) - L.diagonal(dim1=-2, dim2=-1).log().sum(-1)[..., None, :]
    return torch.logsumexp(ell - 0.5 * loc.shape[-1] * math.log(2 * math.pi), -1)


@pytest.mark.parametrize("full_q", [False, True])
@pytest.mark.parametrize("full_p", [False, True])
@pytest.mark.parametrize("kq,kp", [(1, 1), (1, 4), (3, 2)])
@pytest.mark.parametrize("far", [False, True])
def test_written_out_backward_matches_autograd_of_a_brute_force(full_q, full_p, kq, kp, far):
    """gmm_kl_monte_carlo's backward pass is written out (one autograd node). With the same draws, its value
    and gradients in every parameter of q and p equal autograd through a float64 brute force that
    materializes every point-component difference; `far` puts components 1e3 widths apart with variances
    from 1e-8 to 1e4 (rows recomputed exactly). For a one-component q only the factor's lower triangle is
    compared: log q of a draw is taken exactly from its noise there, as before."""
    d, batch = 3, (2,)
    g = torch.Generator().manual_seed(kq * 10 + kp + 100 * far + 7 * full_q + 3 * full_p)

    def params(K, full):
        if far:
            lw, loc, sc = random_components(K, d, full, g)
        else:
            lw, loc = torch.randn(K, generator=g, dtype=F64), torch.randn(K, d, generator=g, dtype=F64)
            sc = random_tril(K, d=d, g=g) if full else 0.5 + torch.rand(K, d, generator=g, dtype=F64)
        return [t.expand(*batch, *t.shape).clone().requires_grad_() for t in (lw, loc, sc)]

    q, p = params(kq, full_q), params(kp, full_p)

    def mixture(t, full):
        return GaussianMixture(t[0], t[1], **({"scale_tril": t[2]} if full else {"scale_diag": t[2]}))

    kl = gmm_kl_monte_carlo(mixture(q, full_q), mixture(p, full_p), 3, generator=torch.Generator().manual_seed(9))
    mq = mixture(q, full_q)
    z = mq.transform_noise(mq.sample_noise(3, torch.Generator().manual_seed(9))).reshape(*batch, kq * 3, d)

    def tril(t, full):
        return t if full else torch.diag_embed(t)

    y = brute_log_prob(z, q[0], q[1], tril(q[2], full_q)) - brute_log_prob(z, p[0], p[1], tril(p[2], full_p))
    ref = (torch.softmax(q[0], -1) * y.reshape(*batch, kq, 3).mean(-1)).sum(-1)
    assert torch.allclose(kl, ref, rtol=1e-10, atol=1e-10)
    w = torch.tensor([0.7, 1.3], dtype=F64)
    for name, a, b in zip(("lw_q", "mu_q", "s_q", "lw_p", "mu_p", "s_p"), torch.autograd.grad((w * kl).sum(), q + p),
                          torch.autograd.grad((w * ref).sum(), q + p)):  # fmt: skip
        if name == "s_q" and full_q and kq == 1:
            a, b = a.tril(), b.tril()
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-9 * b.abs().max().item()), name


# ---------------------------------------------------------------------------------------------- stability


@st.composite
def hard_pairs(draw):
    """q and p with per-coordinate variances anywhere in [1e-8, 1e4], means up to 1e3 of their stds apart,
    d <= 8, 1-3 components each, diagonal or full, float32 or float64.

    float32 limit: a draw z = m + σε keeps ~|m|/σ · 6e-8 of a σ of rounding error, so means are placed at
    most 1e3 of their own stds from the origin (1e-4 σ of rounding); beyond ~1e6 σ float32 cannot represent
    the draws at all, whatever the density code does."""
    d = draw(st.integers(1, 8))
    full = draw(st.booleans())
    dtype = draw(st.sampled_from([torch.float32, F64]))
    kq, kp = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)

    def mixture(K):
        return [t.to(dtype).requires_grad_() for t in random_components(K, d, full, g)]

    return mixture(kq), mixture(kp), full, seed


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(hard_pairs())
def test_kl_is_finite_with_finite_gradients_and_never_significantly_negative(case):
    (lw_q, mu_q, s_q), (lw_p, mu_p, s_p), full, seed = case
    key = "scale_tril" if full else "scale_diag"
    q = GaussianMixture(lw_q, mu_q, **{key: s_q})
    p = GaussianMixture(lw_p, mu_p, **{key: s_p})
    kl, se = gmm_kl_monte_carlo(q, p, 16, generator=torch.Generator().manual_seed(seed), return_stderr=True)
    assert torch.isfinite(kl) and torch.isfinite(se)
    grads = torch.autograd.grad(kl, [lw_q, mu_q, s_q, lw_p, mu_p, s_p])
    assert all(torch.isfinite(gr).all() for gr in grads)
    atol = 1e-3 if mu_q.dtype == torch.float32 else 1e-9  # rounding of log-densities, not Monte Carlo
    assert kl >= -3 * se - atol
    same = gmm_kl_monte_carlo(q, q, 16, generator=torch.Generator().manual_seed(seed))
    assert same.abs() <= atol
