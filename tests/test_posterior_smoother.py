"""The smoother posterior (anmc/posterior/smoother.py): exact on linear dynamics against dense Gaussian
conditioning and the Kalman log-likelihood, the same values and gradients as the dense precision path
and the recursions it replaced (tests/_smoother_reference.py), long and wide sequences, the
linearization points' gradient, the causal filter, the Markov KL's limits, and its gradients; the
filter scan's combine against the lemma it implements, and associative."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import anmc
from anmc.prior import gaussian_kl
from anmc.posterior.smoother import kalman_filter, kalman_smoother, markov_kl
from anmc.prior.transition import elbo

import _smoother_reference as reference

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


def assert_dense_posterior(post, i, m_post, c_post):
    """Sequence i of the smoother's posterior equals the dense Gaussian posterior N(m_post, c_post) over
    all T·d numbers: the means, the marginal and cross covariance blocks, and the entropy."""
    t_len, d = post.mean.shape[1:]
    torch.testing.assert_close(post.mean[i].reshape(-1), m_post, rtol=1e-8, atol=1e-9)
    for t in range(t_len):
        torch.testing.assert_close(post.cov[i, t], c_post[t * d : (t + 1) * d, t * d : (t + 1) * d], rtol=1e-7, atol=1e-12)
    for t in range(t_len - 1):
        torch.testing.assert_close(post.cross[i, t], c_post[(t + 1) * d : (t + 2) * d, t * d : (t + 1) * d], rtol=1e-7, atol=1e-12)
    entropy = 0.5 * (torch.logdet(c_post) + t_len * d * math.log(2 * math.pi * math.e))
    torch.testing.assert_close(post.entropy[i], entropy, rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("t_len", [1, 2, 6, 17, 40])
def test_linear_smoother_equals_dense_conditioning(spring, t_len):
    d = spring.d
    y, r = observations(spring, 3, t_len, seed=t_len)
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
        assert_dense_posterior(post, i, m_post, c_post)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), t_len=st.integers(1, 20), r=st.floats(1e-3, 1.0))
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


def _kl_and_grads(smoother, module, y, std, **kwargs):
    post = smoother(module, y, std, **kwargs)
    loss = markov_kl(module, post).sum() + (post.mean * torch.linspace(-1, 1, module.d, dtype=F64)).sum()
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [y, std, *params], allow_unused=True)  # L is unused when T = 1
    return post, [torch.zeros_like(p) if g is None else g for p, g in zip([y, std, *params], grads)]


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), t_len=st.integers(1, 40), r=st.floats(1e-3, 0.5))
def test_same_values_and_gradients_as_the_dense_path(pendulum, seed, t_len, r):
    """The scans compute the function the dense (T·d)² precision path computed (fixed point, two
    differentiable passes, one solve): the same posterior and the same gradients for the readings, their
    stds and the learnable length, to rounding."""
    y, std = observations(pendulum, 3, t_len, seed, r)
    y, std = y.detach().requires_grad_(), std.detach().requires_grad_()
    new, grads_new = _kl_and_grads(kalman_smoother, pendulum, y, std)
    old, grads_old = _kl_and_grads(reference.kalman_smoother, pendulum, y, std, dense_up_to=10**9)
    for name in ("mean", "cov", "cross", "entropy"):
        torch.testing.assert_close(getattr(new, name), getattr(old, name), rtol=1e-9, atol=1e-10)
    for a, b in zip(grads_new, grads_old):
        assert (a - b).norm() <= 1e-8 * b.norm() + 1e-12


@pytest.mark.parametrize(
    "prior, affine",
    [("pendulum", False), ("spring", True), ("falling", False), ("led", True), ("coupled_masses", True), ("double_pendulum", False)],
)
def test_the_module_says_whether_f_is_affine(prior, affine):
    """transition_affine: the right-hand sides' Jacobian holds no state (a spring, a decay, coupled masses)
    or it does (sin θ, a drag c v|v|, a Lagrangian's mass matrix); judged symbolically, so the falling
    object is not affine even though its drag c is 0 until an intervention sets it. Three draws agree on
    J wherever f is affine."""
    module = anmc.compile_prior(PRIORS / f"{prior}.anm").module().double()
    assert module.transition_affine is affine
    z = module.sample_initial(3, torch.Generator().manual_seed(0)).double()
    jac = module.f_and_jacobian(z)[1]
    same = bool(torch.allclose(jac, jac[:1].expand_as(jac)))
    if affine:
        assert same
    elif prior != "falling":
        assert not same


def test_a_discrete_map_is_judged_by_its_jacobian():
    """`next x = ...` too: affine when its Jacobian holds no state; a square or a kink (abs, whose derivative
    sign(x) holds x) is not."""
    base = "model m\nstate x ~ Normal(0, 1)\nparam a = 0.5\ndynamics discrete\n  next x = {rhs}\nnoise x = 0.1\n"
    assert anmc.compile_prior(base.format(rhs="a * x + 1")).module().transition_affine
    assert not anmc.compile_prior(base.format(rhs="a * x^2")).module().transition_affine
    assert not anmc.compile_prior(base.format(rhs="abs(x) + 1")).module().transition_affine
    assert anmc.compile_prior(base.format(rhs="a * x + sin(a)")).module().transition_affine


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), t_len=st.integers(1, 30), r=st.floats(1e-3, 0.5))
def test_linear_gaussian_shortcut_equals_the_iterated_points(spring, seed, t_len, r):
    """With f and h affine the smoother skips the search for its linearization points (every frame
    linearized at the initial mean); the posterior and the gradients for the readings, their stds and the
    learnable stiffness are those of the fixed point and its two differentiable passes, to rounding."""
    y, std = observations(spring, 3, t_len, seed, r)
    y, std = y.detach().requires_grad_(), std.detach().requires_grad_()
    assert spring.transition_affine and spring.observation_affine
    fast, grads_fast = _kl_and_grads(kalman_smoother, spring, y, std)
    spring.transition_affine = False  # this instance only: the general path
    try:
        slow, grads_slow = _kl_and_grads(kalman_smoother, spring, y, std)
    finally:
        del spring.transition_affine
    for name in ("mean", "cov", "cross", "entropy"):
        torch.testing.assert_close(getattr(fast, name), getattr(slow, name), rtol=1e-9, atol=1e-10)
    # the shortcut's f(0) and J, evaluated once, are what markov_kl used (the KL is in the gradients)
    assert (fast.affine is not None and fast.affine[0] is spring) == (t_len > 1) and slow.affine is None
    torch.testing.assert_close(markov_kl(spring, fast), markov_kl(spring, slow), rtol=1e-9, atol=1e-9)
    for a, b in zip(grads_fast, grads_slow):
        assert (a - b).norm() <= 1e-8 * b.norm() + 1e-12


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), t_len=st.integers(1, 12), r=st.floats(1e-3, 0.5))
def test_batched_path_agrees_with_the_recursions(pendulum, seed, t_len, r):
    """The filter + Rauch-Tung-Striebel recursions under autograd, a loop over frames, give the same
    posterior and (through the two differentiable passes) the same gradients."""
    y, std = observations(pendulum, 3, t_len, seed, r)
    y, std = y.detach().requires_grad_(), std.detach().requires_grad_()
    (a, grads_a), (b, grads_b) = (_kl_and_grads(f, pendulum, y, std, **kw) for f, kw in ((reference.kalman_smoother, {"dense_up_to": 0}), (kalman_smoother, {})))
    for name in ("mean", "cov", "cross", "entropy"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-7, atol=1e-9)
    assert _rel(grads_b[0], grads_a[0]) < 1e-4 and _rel(grads_b[1], grads_a[1]) < 1e-4


def test_long_and_wide_sequences_match_the_recursions():
    """T = 300 frames of the pendulum and d = 16 (a chain of 8 coupled oscillators): the values of the
    recursions, with memory linear in T (the dense path would factorize a 600² or 512² precision)."""
    import sys

    sys.path.insert(0, str(PRIORS.parent / "benchmarks"))
    from train_step import chain_prior

    for source, t_len in ((PRIORS / "pendulum.anm", 300), (chain_prior(8), 32)):
        module = anmc.compile_prior(source).module().double()
        y, std = observations(module, 2, t_len, seed=5, r=0.1)
        new = kalman_smoother(module, y.detach(), std.detach())
        old = reference.kalman_smoother(module, y.detach(), std.detach(), dense_up_to=0)
        for name in ("mean", "cov", "cross", "entropy"):
            torch.testing.assert_close(getattr(new, name), getattr(old, name), rtol=1e-7, atol=1e-9)


def test_fixed_point_is_the_filter():
    """The batched fixed-point iteration finds the sequential filter's means, on a swing of 2.5 rad (where
    the first linearization, at the initial mean, is 2.5 rad off) and on readings of 1 rad noise."""
    from anmc.posterior.smoother import _filter_fixed_point, _Readings

    pendulum = anmc.compile_prior(PRIORS / "pendulum.anm").module().double()
    g = torch.Generator().manual_seed(0)
    z0 = torch.stack([torch.linspace(-2.5, 2.5, 6, dtype=F64), torch.zeros(6, dtype=F64)], -1)
    z = pendulum.rollout(z0, 32)
    for noise in (0.05, 1.0):
        y = z[..., :1] + noise * torch.randn(z[..., :1].shape, generator=g, dtype=F64)
        r2 = torch.full_like(y, noise**2)
        sequential = torch.stack(reference._filter(pendulum, y, r2)[0], 1)
        found = _filter_fixed_point(pendulum, _Readings.build(pendulum, y, r2))
        torch.testing.assert_close(found, sequential, rtol=0, atol=1e-9)


def test_unrolled_passes_converge_to_the_recursions_gradient(pendulum):
    """Each differentiable pass adds one order of the linearization points' gradient: held constant (0
    passes) the readings' gradient is off by ~2%, and the error then falls by orders of magnitude per
    pass (training with the points held constant diverged from the recursions within 100 steps)."""
    y, std = observations(pendulum, 4, 16, seed=7, r=0.3)
    y, std = y.detach().requires_grad_(), std.detach().requires_grad_()
    exact = _kl_and_grads(reference.kalman_smoother, pendulum, y, std, dense_up_to=0)[1]
    errors = []
    for unroll in range(4):
        grads = _kl_and_grads(kalman_smoother, pendulum, y, std, unroll=unroll)[1]
        errors.append(_rel(grads[0], exact[0]))
    assert errors[0] > 1e-3 and errors[1] < 1e-2 * errors[0] and errors[2] < 1e-2 * errors[1], errors
    assert errors[2] < 1e-5


def test_filter_matches_the_sequential_filter(pendulum):
    """kalman_filter (fixed point + scan) gives the extended Kalman filter's loop's marginals."""
    y, std = observations(pendulum, 3, 25, seed=2, r=0.2)
    mean, cov = kalman_filter(pendulum, y.detach(), std.detach())
    ref_m, ref_p = reference.kalman_filter(pendulum, y.detach(), std.detach())
    torch.testing.assert_close(mean, ref_m, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(cov, ref_p, rtol=1e-7, atol=1e-9)


def test_filter_is_causal_and_ends_at_the_smoother(spring, pendulum):
    """kalman_filter's marginal at t does not change when later readings do; on linear dynamics its last
    marginal is the smoother's (both have seen every reading)."""
    y, std = observations(pendulum, 2, 10, seed=4)
    later = y.clone()
    later[:, 6:] += 1.0
    m1, p1 = kalman_filter(pendulum, y, std)
    m2, p2 = kalman_filter(pendulum, later, std)
    torch.testing.assert_close(m1[:, :6], m2[:, :6], rtol=0, atol=0)
    assert (m1[:, 6:] - m2[:, 6:]).abs().max() > 0.1
    ys, ss = observations(spring, 2, 8, seed=1)
    mean, cov = kalman_filter(spring, ys, ss)
    post = kalman_smoother(spring, ys, ss)
    torch.testing.assert_close(mean[:, -1], post.mean[:, -1])
    torch.testing.assert_close(cov[:, -1], post.cov[:, -1])


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
    from anmc.posterior.smoother import SmoothedPosterior

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


def _filter_elements(gen, b, t_len, d):
    """Random filter-scan elements [A | b | C | Λ | η] (b, t_len, d(3d + 2)): C and Λ symmetric, C positive
    definite and Λ positive semi-definite, as the filter makes them."""
    a = 0.7 * torch.randn(b, t_len, d, d, generator=gen, dtype=F64)
    x, y = torch.randn(2, b, t_len, d, d, generator=gen, dtype=F64)
    c = x @ x.mT / d + 0.1 * torch.eye(d, dtype=F64)
    lam = y @ y.mT / d
    bb, eta = torch.randn(2, b, t_len, d, 1, generator=gen, dtype=F64)
    return torch.cat([a, bb, c, lam, eta], -1).flatten(2)


@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 4), b=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_the_filter_combine_is_the_lemma_and_associative(d, b, seed):
    """`_filter_combine` (batched bmm on packed elements, strided as the scan hands them over) against the
    lemma written with plain matrices, and (e1 ⊗ e2) ⊗ e3 = e1 ⊗ (e2 ⊗ e3), which the parallel scan relies on."""
    from anmc.posterior.smoother import _filter_combine

    gen = torch.Generator().manual_seed(seed)
    e = _filter_elements(gen, b, 6, d)
    first, then = e[:, 0:6:2], e[:, 1:6:2]  # every other position: the strided views the halving passes
    k = 3 * d + 2
    i, j = first.unflatten(-1, (d, k)), then.unflatten(-1, (d, k))
    a_i, b_i, c_i, l_i, eta_i = i.split([d, 1, d, d, 1], -1)
    a_j, b_j, c_j, l_j, eta_j = j.split([d, 1, d, d, 1], -1)
    m_inv = torch.linalg.inv(torch.eye(d, dtype=F64) + c_i @ l_j)
    expected = torch.cat([
        a_j @ m_inv @ a_i,
        a_j @ m_inv @ (b_i + c_i @ eta_j) + b_j,
        a_j @ m_inv @ c_i @ a_j.mT + c_j,
        a_i.mT @ m_inv.mT @ l_j @ a_i + l_i,
        a_i.mT @ m_inv.mT @ (eta_j - l_j @ b_i) + eta_i,
    ], -1).flatten(2)
    torch.testing.assert_close(_filter_combine(first, then, d), expected, rtol=1e-10, atol=1e-10)
    e1, e2, e3 = e[:, 0:2], e[:, 2:4], e[:, 4:6]
    left = _filter_combine(_filter_combine(e1, e2, d), e3, d)
    right = _filter_combine(e1, _filter_combine(e2, e3, d), d)
    torch.testing.assert_close(left, right, rtol=1e-8, atol=1e-8)
