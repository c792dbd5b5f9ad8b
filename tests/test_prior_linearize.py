"""LinearizedPrior / ekf_predict: exact Kalman predictions on the (linear) spring, EKF chaining over a horizon,
the sample-point options, the pendulum's linearized moments against quadrature, gradients to physical params."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import anmc
from anmc.prior import GaussianMixture, LinearizedPrior
from anmc.prior.linearize import ekf_predict

F64 = torch.float64
PRIORS = Path(__file__).resolve().parent.parent / "priors"
SPRING = (PRIORS / "spring.anm").read_text()
K_SPRING, M_SPRING, DT = 39.478, 1.0, 1.0 / 30.0  # the numbers in priors/spring.anm
C_DAMP = 0.7  # set on the module so that damping enters A too


def spring_module(integrator="rk4", steps=1):
    text = SPRING.replace("using rk4 steps 1", f"using {integrator} steps {steps}")
    assert text != SPRING or (integrator, steps) == ("rk4", 1)
    m = anmc.compile_prior(text).module().double()
    m.set_param("k", K_SPRING)  # in float64, so that k is 39.478 to ~1e-13 (not float32's rounding)
    m.set_param("c", C_DAMP)
    m.set_noise_std("x", 0.005)  # likewise the noise: the buffers were created in float32
    m.set_noise_std("v", 0.05)
    return m


def spring_A(integrator, steps):
    """The one-frame matrix built by hand from x' = v, v' = -(k/m) x - c v (independent of the compiler)."""
    h = DT / steps
    M = np.array([[0.0, 1.0], [-K_SPRING / M_SPRING, -C_DAMP]])
    hM, I = h * M, np.eye(2)
    if integrator == "euler":
        R = I + hM
    elif integrator == "midpoint":
        R = I + hM + hM @ hM / 2
    elif integrator == "rk4":  # RK4 on a linear system is its 4th-order Taylor polynomial
        R = I + hM + hM @ hM / 2 + hM @ hM @ hM / 6 + hM @ hM @ hM @ hM / 24
    elif integrator == "semi_implicit_euler":  # x first (equation order), then v with the new x
        kap = K_SPRING / M_SPRING
        R = np.array([[1.0, h], [-kap * h, 1.0 - kap * h * h - C_DAMP * h]])
    return torch.tensor(np.linalg.matrix_power(R, steps), dtype=F64)


INTEGRATORS = [("rk4", 1), ("rk4", 3), ("euler", 2), ("midpoint", 1), ("semi_implicit_euler", 2)]


@pytest.fixture(scope="module")
def spring():
    return spring_module()


@pytest.fixture(scope="module")
def pendulum():
    return anmc.compile_prior(PRIORS / "pendulum.anm").module().double()


@pytest.mark.parametrize("integrator,steps", INTEGRATORS)
def test_spring_jacobian_is_the_hand_built_matrix(integrator, steps):
    m = spring_module(integrator, steps)
    z = torch.randn(5, 2, dtype=F64)
    f, J = m.f_and_jacobian(z)
    A = spring_A(integrator, steps)
    assert torch.allclose(J, A.expand(5, 2, 2), rtol=0, atol=1e-12)
    assert torch.allclose(f, z @ A.T, rtol=0, atol=1e-12)  # linear: f(z) = A z


def kalman(A, Q, m, P, h=1):
    for _ in range(h):
        m, P = m @ A.T, A @ P @ A.T + Q
    return m, P


@pytest.mark.parametrize("integrator,steps", INTEGRATORS)
@pytest.mark.parametrize("full", [False, True])
def test_linearized_component_is_the_kalman_prediction(integrator, steps, full):
    m = spring_module(integrator, steps)
    A, Q = spring_A(integrator, steps), torch.diag(torch.tensor([0.005, 0.05], dtype=F64).square())
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(6, 2, generator=g, dtype=F64)
    if full:
        L = torch.tril(torch.randn(6, 2, 2, generator=g, dtype=F64)) + 0.5 * torch.eye(2, dtype=F64)
        prior = LinearizedPrior(m)(mean, scale_tril=L)
        S = L @ L.mT
    else:
        std = 0.1 + torch.rand(6, 2, generator=g, dtype=F64)
        prior = LinearizedPrior(m)(mean, std)
        S = torch.diag_embed(std.square())
    assert isinstance(prior, GaussianMixture) and prior.batch_shape == (6,) and prior.num_components == 1
    m_ref, P_ref = kalman(A, Q, mean, S)
    assert torch.allclose(prior.loc[:, 0], m_ref, rtol=0, atol=1e-10)
    assert torch.allclose(prior.covariance()[:, 0], P_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("h", [1, 2, 5, 12])
def test_horizon_is_h_kalman_predictions(spring, h):
    A, Q = spring_A("rk4", 1), torch.diag(torch.tensor([0.005, 0.05], dtype=F64).square())
    g = torch.Generator().manual_seed(h)
    mean, std = torch.randn(4, 2, generator=g, dtype=F64), 0.1 + torch.rand(4, 2, generator=g, dtype=F64)
    prior = LinearizedPrior(spring, horizon=h)(mean, std)
    m_ref, P_ref = kalman(A, Q, mean, torch.diag_embed(std.square()), h)
    assert torch.allclose(prior.loc[:, 0], m_ref, rtol=0, atol=1e-10)
    assert torch.allclose(prior.covariance()[:, 0], P_ref, rtol=0, atol=1e-10)
    # and on the pendulum (nonlinear), h chained EKF predicts with J at the running mean
    if h == 5:
        pend = anmc.compile_prior(PRIORS / "pendulum.anm").module().double()
        m_h, P_h = ekf_predict(pend, mean, std=std, horizon=h)
        mm, P = mean, torch.diag_embed(std.square())
        Qp = torch.diag(pend.noise_std.double().square())
        for _ in range(h):
            f, J = pend.f_and_jacobian(mm)
            mm, P = f, J @ P @ J.mT + Qp
        assert torch.allclose(m_h, mm, atol=1e-12) and torch.allclose(P_h, P, atol=1e-12)


@pytest.mark.parametrize("component_cov,factor", [("full", 1.0), ("shrunk", 1 / 5), ("zero", 0.0)])
def test_sample_points_and_their_covariances(spring, component_cov, factor):
    A, Q = spring_A("rk4", 1), torch.diag(torch.tensor([0.005, 0.05], dtype=F64).square())
    g = torch.Generator().manual_seed(1)
    mean, std = torch.randn(3, 2, generator=g, dtype=F64), 0.1 + torch.rand(3, 2, generator=g, dtype=F64)
    prior = LinearizedPrior(spring, at="samples", samples=5, component_cov=component_cov)
    mix = prior(mean, std, generator=torch.Generator().manual_seed(9))
    assert mix.batch_shape == (3,) and mix.num_components == 5
    assert torch.allclose(mix.weights, torch.full((3, 5), 0.2, dtype=F64))
    eps = torch.randn((3, 5, 2), generator=torch.Generator().manual_seed(9), dtype=F64)
    points = mean[:, None] + std[:, None] * eps  # the same reparameterized draws
    assert torch.allclose(mix.loc, points @ A.T, atol=1e-12)
    S = factor * torch.diag_embed(std.square())[:, None]
    assert torch.allclose(mix.covariance(), A @ S @ A.T + Q, atol=1e-12)


def test_shrunk_mixture_matches_the_pushed_covariance_on_average(spring):
    """With S/K per component the mixture's covariance about its mean is A S Aᵀ + Q in expectation."""
    A, Q = spring_A("rk4", 1), torch.diag(torch.tensor([0.005, 0.05], dtype=F64).square())
    reps, K = 4000, 4
    mean = torch.tensor([[0.3, -1.0]], dtype=F64).expand(reps, 2)
    std = torch.tensor([[0.2, 0.5]], dtype=F64).expand(reps, 2)
    mix = LinearizedPrior(spring, at="samples", samples=K)(mean, std, generator=torch.Generator().manual_seed(0))
    centre = mix.loc.mean(-2, keepdim=True)
    spread = ((mix.loc - centre)[..., :, None] * (mix.loc - centre)[..., None, :]).mean(-3)  # (reps, 2, 2)
    cov = (mix.covariance().mean(-3) + spread).mean(0)
    target = A @ torch.diag(std[0].square()) @ A.T + Q
    assert ((cov - target).abs() / target.diagonal().sqrt().outer(target.diagonal().sqrt())).max() < 0.03


# Pendulum (rk4, 2 substeps) at (theta, omega) = (0.7, 0.5), S = s² [[1, .6], [.6, 4]] (theta std s, omega std
# 2s, correlation 0.3). Linearized moments f(m), J S Jᵀ against the true pushed-forward moments E f, Cov f
# (41x41 Gauss-Hermite quadrature; the unscented transform agrees with it to 4e-9 at s = 1e-3). Measured:
#
#     s       mean rel err   cov rel err (J S Jᵀ vs Cov f)   with Q added   lin. vs unscented cov
#     1e-3    1.4e-07        5.7e-08                          9.0e-11        5.5e-08
#     1e-2    1.4e-05        5.7e-06                          7.8e-07        5.5e-06
#     1e-1    1.4e-03        5.7e-04                          5.4e-04        5.5e-04
#     0.3     1.2e-02        5.1e-03                          5.0e-03        4.9e-03
#     1.0     1.1e-01        4.4e-02                          4.4e-02        4.7e-02
#
# The error grows like s² (the curvature term) and stays bounded: at s = 1 rad, a wide posterior, the
# linearized Gaussian is still within 5% in covariance and 11% in mean.
PENDULUM_CASES = [(1e-3, 2e-7, 1e-7), (1e-2, 2e-5, 1e-5), (1e-1, 2e-3, 1e-3), (0.3, 2e-2, 1e-2), (1.0, 0.2, 0.1)]


def pushed_moments(module, mean, S, nodes=41):
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    X = torch.tensor(np.stack(np.meshgrid(x, x, indexing="ij"), -1).reshape(-1, 2))
    W = torch.tensor(np.outer(w, w).reshape(-1))
    F = module(mean + X @ torch.linalg.cholesky(S).T)
    mu = (W[:, None] * F).sum(0)
    D = F - mu
    return mu, (W[:, None, None] * D[:, :, None] * D[:, None, :]).sum(0)


def unscented(module, mean, S):
    d, lam = 2, 1.0  # kappa = 3 - d
    Ls = torch.linalg.cholesky((d + lam) * S)
    sigma = torch.cat([mean[None], mean + Ls.T, mean - Ls.T])
    w = torch.tensor([lam / (d + lam)] + [1 / (2 * (d + lam))] * 4, dtype=F64)
    F = module(sigma)
    mu = (w[:, None] * F).sum(0)
    D = F - mu
    return mu, (w[:, None, None] * D[:, :, None] * D[:, None, :]).sum(0)


@pytest.mark.parametrize("s,mean_tol,cov_tol", PENDULUM_CASES)
def test_pendulum_linearized_moments_against_quadrature(pendulum, s, mean_tol, cov_tol):
    mean = torch.tensor([0.7, 0.5], dtype=F64)
    C = torch.tensor([[1.0, 0.6], [0.6, 4.0]], dtype=F64)
    S = s**2 * C
    Q = torch.diag(pendulum.noise_std.double().square())
    mix = LinearizedPrior(pendulum)(mean, scale_tril=torch.linalg.cholesky(S))
    loc, cov = mix.loc[0], mix.covariance()[0]
    mu_true, cov_true = pushed_moments(pendulum, mean, S)
    mean_err = ((loc - mu_true).norm() / mu_true.norm()).item()
    cov_err = ((cov - Q - cov_true).norm() / cov_true.norm()).item()  # the pushed part alone: the strict test
    assert mean_err < mean_tol and cov_err < cov_tol, (s, mean_err, cov_err)
    if s == 1e-3:  # the bar: relative error < 1e-3 at std 1e-3, also against the unscented transform
        mu_ut, cov_ut = unscented(pendulum, mean, S)
        assert ((loc - mu_ut).norm() / mu_ut.norm()) < 1e-3
        assert ((cov - Q - cov_ut).norm() / cov_ut.norm()) < 1e-3
        assert ((cov - (cov_ut + Q)).norm() / (cov_ut + Q).norm()) < 1e-3


def test_gradients_reach_physical_params_through_f_and_J():
    m = anmc.compile_prior(PRIORS / "pendulum.anm").module().double()
    raw = m._raw_L  # the learnable length, stored unconstrained
    mean = torch.tensor([[0.7, 0.5], [-1.2, 2.0]], dtype=F64)
    std = torch.tensor([[0.1, 0.3], [0.2, 0.1]], dtype=F64)

    def fn(r):
        with torch.no_grad():
            raw.copy_(r.detach())
        raw.grad = None
        mix = LinearizedPrior(m)(mean, std)
        return (mix.loc.square().sum() + mix.covariance().sum() + mix.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum())

    r0 = raw.detach().clone()
    out = fn(r0)
    (grad,) = torch.autograd.grad(out, raw)
    h = 1e-6
    fd = (fn(r0 + h) - fn(r0 - h)) / (2 * h)
    assert grad.abs() > 1e-3 and torch.allclose(grad, fd, rtol=1e-6, atol=0)
    # and the Jacobian part alone (cov depends on L only through J)
    with torch.no_grad():
        raw.copy_(r0)
    mix = LinearizedPrior(m)(mean, std)
    (g_cov,) = torch.autograd.grad(mix.covariance().sum(), raw)
    assert g_cov.abs() > 0


def test_bad_options_are_rejected(spring):
    with pytest.raises(ValueError):
        LinearizedPrior(spring, at="median")
    with pytest.raises(ValueError):
        LinearizedPrior(spring, component_cov="half")
    with pytest.raises(ValueError):
        LinearizedPrior(spring, horizon=0)
    with pytest.raises(ValueError):
        LinearizedPrior(spring)(torch.zeros(2, dtype=F64))
