"""The smoother posterior (anmc/prior/smoother.py): exact on linear dynamics against dense Gaussian
conditioning and the Kalman log-likelihood, the Markov KL's limits, and its gradients."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import anmc
from anmc.prior import gaussian_kl
from anmc.prior.smoother import kalman_smoother, markov_kl
from anmc.prior.transition import elbo

F64 = torch.float64
PRIORS = Path(__file__).resolve().parent.parent / "priors"


@pytest.fixture(scope="module")
def spring():
    return anmc.compile_prior(PRIORS / "spring.anm").module().double()


@pytest.fixture(scope="module")
def pendulum():
    return anmc.compile_prior(PRIORS / "pendulum.anm").module().double()


def dense_joint(module, t_len):
    """Mean (T d) and covariance (T d, T d) of z_{1:T} under a linear prior, built term by term."""
    d = module.d
    b, a = module.f_and_jacobian(torch.zeros(1, d, dtype=F64))
    b, a = b[0], a[0]  # f(z) = a z + b exactly for linear dynamics
    q = torch.diag(module.noise_std.double() ** 2)
    means = [module.initial_mean.double()]
    blocks = {(0, 0): torch.diag(module.initial_std.double() ** 2)}
    for t in range(1, t_len):
        means.append(a @ means[-1] + b)
        blocks[t, t] = a @ blocks[t - 1, t - 1] @ a.T + q
        for s in range(t):
            blocks[t, s] = a @ blocks[t - 1, s]
            blocks[s, t] = blocks[t, s].T
    cov = torch.cat([torch.cat([blocks[t, s] for s in range(t_len)], 1) for t in range(t_len)], 0)
    return torch.cat(means), cov


def observations(module, b, t_len, seed, r=0.05):
    g = torch.Generator().manual_seed(seed)
    z = module.rollout(module.sample_initial(b, generator=g), t_len, noise=True, generator=g)
    obs = list(module.observed_index)
    y = z[..., obs] + r * torch.randn(z[..., obs].shape, generator=g, dtype=F64)
    std = torch.full_like(y, r) * (1 + torch.rand(y.shape, generator=g, dtype=F64))
    return y, std


def test_linear_smoother_equals_dense_conditioning(spring):
    t_len, d = 6, spring.d
    y, r = observations(spring, 3, t_len, seed=0)
    post = kalman_smoother(spring, y, r)
    mean, cov = dense_joint(spring, t_len)
    h = torch.zeros(t_len, t_len * d, dtype=F64)
    for t in range(t_len):
        h[t, t * d + spring.observed_index[0]] = 1.0
    for i in range(3):
        s = h @ cov @ h.T + torch.diag(r[i, :, 0] ** 2)
        gain = cov @ h.T @ torch.linalg.inv(s)
        m_post = mean + gain @ (y[i, :, 0] - h @ mean)
        c_post = cov - gain @ h @ cov
        torch.testing.assert_close(post.mean[i].reshape(-1), m_post, rtol=1e-8, atol=1e-9)
        for t in range(t_len):
            torch.testing.assert_close(post.cov[i, t], c_post[t * d : (t + 1) * d, t * d : (t + 1) * d], rtol=1e-7, atol=1e-12)
        for t in range(t_len - 1):
            torch.testing.assert_close(post.cross[i, t], c_post[(t + 1) * d : (t + 2) * d, t * d : (t + 1) * d], rtol=1e-7, atol=1e-12)
        entropy = 0.5 * (torch.logdet(c_post) + t_len * d * math.log(2 * math.pi * math.e))
        torch.testing.assert_close(post.entropy[i], entropy, rtol=1e-9, atol=1e-8)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), t_len=st.integers(1, 9), r=st.floats(1e-3, 1.0))
def test_linear_elbo_equals_kalman_log_likelihood(spring, seed, t_len, r):
    """With the exact posterior the ELBO is tight: E_q[log N(y | Hz, R)] − KL = log p(y)."""
    y, std = observations(spring, 4, t_len, seed, r)
    post = kalman_smoother(spring, y, std)
    obs = list(spring.observed_index)
    expected_loglik = (
        -0.5 * (((y - post.mean[..., obs]) / std) ** 2 + post.std[..., obs] ** 2 / std**2 + torch.log(2 * math.pi * std**2))
    ).sum((1, 2))
    mean, cov = dense_joint(spring, t_len)
    d = spring.d
    idx = [t * d + obs[0] for t in range(t_len)]
    marginal = torch.distributions.MultivariateNormal(mean[idx], cov[idx][:, idx] + torch.diag_embed(std[..., 0] ** 2))
    log_py = marginal.log_prob(y[..., 0])
    torch.testing.assert_close(expected_loglik - markov_kl(spring, post), log_py, rtol=1e-7, atol=1e-6)


def test_kl_is_zero_without_observations(spring):
    """Observations of infinite std leave the prior, whose KL to itself is 0."""
    y = torch.zeros(2, 7, 1, dtype=F64)
    post = kalman_smoother(spring, y, torch.full_like(y, 1e8))
    assert markov_kl(spring, post).abs().max() < 1e-6
    torch.testing.assert_close(post.mean[:, 0], spring.initial_mean.double().expand(2, 2), atol=1e-6, rtol=0)


def test_uncorrelated_posterior_reduces_to_factorized_elbo(pendulum):
    """With zero cross-covariances markov_kl is the factorized `elbo` reading plus the initial KL."""
    g = torch.Generator().manual_seed(3)
    b, t_len, d = 5, 4, 2
    mu = 0.5 * torch.randn(b, t_len, d, generator=g, dtype=F64)
    std = 0.01 + 0.1 * torch.rand(b, t_len, d, generator=g, dtype=F64)
    post_cov = torch.diag_embed(std**2)
    entropy = 0.5 * (torch.log(2 * math.pi * math.e * std**2)).sum((1, 2))
    from anmc.prior.smoother import SmoothedPosterior

    post = SmoothedPosterior(mu, post_cov, torch.zeros(b, t_len - 1, d, d, dtype=F64), entropy)
    m0, s0 = pendulum.initial_mean.double(), pendulum.initial_std.double()
    expected = gaussian_kl(mu[:, 0], std[:, 0], m0.expand(b, d), s0.expand(b, d)) + elbo(
        pendulum, mu[:, :-1].reshape(-1, d), std[:, :-1].reshape(-1, d), mu[:, 1:].reshape(-1, d), std[:, 1:].reshape(-1, d)
    ).reshape(b, t_len - 1).sum(1)
    torch.testing.assert_close(markov_kl(pendulum, post), expected, rtol=1e-9, atol=1e-9)


def test_pendulum_smoother_recovers_velocity_and_has_gradients(pendulum):
    """Angles seen with 0.02 rad error: the smoothed omega is within a fraction of its prior spread, and the
    KL's gradients reach the pseudo-observations, their stds and the learnable length L."""
    g = torch.Generator().manual_seed(1)
    z = pendulum.rollout(pendulum.sample_initial(16, generator=g), 16, noise=True, generator=g).detach()  # (16, 16, 2)
    y = (z[..., :1] + 0.02 * torch.randn(z[..., :1].shape, generator=g, dtype=F64)).requires_grad_()
    std = torch.full_like(y, 0.02).requires_grad_()
    post = kalman_smoother(pendulum, y, std)
    err = (post.mean[:, 2:-2, 1] - z[:, 2:-2, 1]).abs().mean()
    assert err < 0.25, err  # the prior's omega spread is 1.5 rad/s; two frames alone give ~0.85
    assert (post.std[:, 2:-2, 1] < 0.4).all()
    kl = markov_kl(pendulum, post).sum()
    kl.backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    assert torch.isfinite(std.grad).all() and std.grad.abs().sum() > 0
    L = dict(pendulum.named_parameters())
    assert any(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in L.values())


def test_float32_inputs_give_float32_outputs(pendulum):
    m = anmc.compile_prior(PRIORS / "pendulum.anm").module()
    y = torch.zeros(2, 5, 1)
    post = kalman_smoother(m, y, torch.full_like(y, 0.05))
    assert post.mean.dtype == post.cov.dtype == post.entropy.dtype == torch.float32
    assert torch.isfinite(markov_kl(m, post)).all()
