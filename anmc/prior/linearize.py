"""The linearized prior: Gaussians at t−1 pushed through the compiled dynamics become a mixture at t.

For one Gaussian N(m, S) and a linearization point c, the first-order push through the one-frame map f is

    p(z_t) ≈ N(z_t | f(c), J(c) S J(c)ᵀ + Q),   J = ∂f/∂z (the compiled exact Jacobian), Q = diag(noise_std²).

`horizon=h` applies this h times (an EKF predict chain): m_{j+1} = f(m_j), P_{j+1} = J(m_j) P_j J(m_j)ᵀ + Q.
On linear dynamics f(z) = A z this is exactly the Kalman prediction (A^h m, A P Aᵀ + Q chained).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from anmc.prior._numerics import cholesky
from anmc.prior.gmm import GaussianMixture
from anmc.prior.linearized_kl import kl_to_linearized_prior

LINEARIZE_AT = ("mean", "samples")
COMPONENT_COV = ("full", "shrunk", "zero")


def noise_cov_diag(module: nn.Module, like: torch.Tensor) -> torch.Tensor:
    """diag Q = noise_std², `(d,)`, cast to `like`'s dtype and device (differentiable)."""
    return module.noise_std.to(dtype=like.dtype, device=like.device).square()


def ekf_predict(module: nn.Module, mean, *, std=None, scale_tril=None, horizon: int = 1):
    """Push N(mean, S) h frames through the linearization; S = diag(std²), L Lᵀ (scale_tril), or 0 if neither.

    mean `(*B, d)`, std `(*B, d)` or scale_tril `(*B, d, d)` -> (f^h(mean) `(*B, d)`, P_h `(*B, d, d)`),
    P_1 = J S Jᵀ + Q, P_{j+1} = J(m_j) P_j J(m_j)ᵀ + Q; J evaluated at the running mean.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be a positive number of frames, got {horizon}")
    q = torch.diag_embed(noise_cov_diag(module, mean))
    m, cov = mean, None
    for step in range(horizon):
        m_next, J = module.f_and_jacobian(m)
        if step == 0:
            if std is not None:
                F = J * std[..., None, :]  # J diag(σ)
            elif scale_tril is not None:
                F = J @ scale_tril
            else:
                F = None
            cov = q.expand(J.shape) if F is None else F @ F.mT + q
        else:
            cov = J @ cov @ J.mT + q
        m = m_next
    return m, cov


class LinearizedPrior(nn.Module):
    """From Gaussians N(m_i, S_i) at t−1, the linearized prior mixture at t (or at t−1+h).

        p_i(z_t) = Σ_k w_k N(z_t | f(c_ik), J(c_ik) S_ik J(c_ik)ᵀ + Q)

    at="mean":    one component per input Gaussian, c = m, S_ik = S_i, w = 1.
    at="samples": K = `samples` components, c_ik = m_i + L_i ε_k (reparameterized), w_k = 1/K and
                  S_ik = S_i ("full"), S_i / K ("shrunk", default) or 0 ("zero") per `component_cov`.

    "shrunk" is the moment match: with the linear map A, the mixture's covariance about its own
    mean is A(S/K)Aᵀ + Q + (the K sample means' spread, E = (1 − 1/K) A S Aᵀ) = A S Aᵀ + Q in
    expectation, where "full" doubles A S Aᵀ and "zero" undershoots it by A S Aᵀ / K.

    Call with mean `(*B, d)` and std `(*B, d)` or scale_tril `(*B, d, d)`; returns a GaussianMixture with
    batch shape `*B` and K components (full covariances, Cholesky-factored with dtype-scaled jitter).
    Use `.pool()` on the result for one mixture over all inputs.
    """

    def __init__(self, module: nn.Module, *, at: str = "mean", samples: int = 8, component_cov: str = "shrunk",
                 horizon: int = 1):  # fmt: skip
        super().__init__()
        if at not in LINEARIZE_AT:
            raise ValueError(f"at={at!r}: must be one of {', '.join(LINEARIZE_AT)}")
        if component_cov not in COMPONENT_COV:
            raise ValueError(f"component_cov={component_cov!r}: must be one of {', '.join(COMPONENT_COV)}")
        if samples < 1 or horizon < 1:
            raise ValueError("samples and horizon must be positive integers")
        self.module, self.at, self.samples = module, at, samples
        self.component_cov, self.horizon = component_cov, horizon

    def forward(self, mean, std=None, *, scale_tril=None, generator: torch.Generator | None = None) -> GaussianMixture:
        points, log_w, std_k, tril_k = linearization_points(mean, std, scale_tril=scale_tril, at=self.at,
                                                            samples=self.samples, component_cov=self.component_cov,
                                                            generator=generator)  # fmt: skip
        loc, cov = ekf_predict(self.module, points, std=std_k, scale_tril=tril_k, horizon=self.horizon)
        return GaussianMixture._normalized(log_w.expand(loc.shape[:-1]), loc, scale_tril=cholesky(cov))

    def kl_monte_carlo(self, q_mean, q_std, mean, std, *, samples: int = 8, pool: bool = False,
                       generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
        """KL(q ‖ this prior) by stratified Monte Carlo, one autograd node: `linearized_kl_monte_carlo`."""
        if self.horizon != 1:
            raise ValueError("kl_monte_carlo pushes one frame ahead; use the mixture from forward() for horizon > 1")
        return linearized_kl_monte_carlo(self.module, q_mean, q_std, mean, std, at=self.at, samples=samples,
                                         component_cov=self.component_cov, pool=pool, generator=generator)  # fmt: skip

    def extra_repr(self) -> str:
        return f"at={self.at!r}, samples={self.samples}, component_cov={self.component_cov!r}, horizon={self.horizon}"


def linearization_points(mean, std=None, *, scale_tril=None, at: str = "mean", samples: int = 8,
                         component_cov: str = "shrunk", generator: torch.Generator | None = None):  # fmt: skip
    """LinearizedPrior's linearization points c_ik `(*B, K, d)`, log-weights `(*B, K)`, and each component's
    S_ik as a std `(*B, K, d)` or Cholesky factor `(*B, K, d, d)` (None when S_ik = 0)."""
    if (std is None) == (scale_tril is None):
        raise ValueError("give exactly one of std (diagonal S) or scale_tril (full S = L Lᵀ)")
    if at == "mean":
        points = mean[..., None, :]
        std_k = None if std is None else std[..., None, :]
        tril_k = None if scale_tril is None else scale_tril[..., None, :, :]
        log_w = torch.zeros(mean.shape[:-1] + (1,), dtype=mean.dtype, device=mean.device)
    else:
        K = samples
        eps = torch.randn((*mean.shape[:-1], K, mean.shape[-1]), generator=generator, dtype=mean.dtype,
                          device=mean.device)  # fmt: skip
        if std is not None:
            points = mean[..., None, :] + std[..., None, :] * eps
        else:
            points = mean[..., None, :] + eps @ scale_tril.mT
        shrink = {"full": 1.0, "shrunk": 1.0 / math.sqrt(K), "zero": 0.0}[component_cov]
        std_k = None if std is None or shrink == 0.0 else (shrink * std)[..., None, :]
        tril_k = None if scale_tril is None or shrink == 0.0 else (shrink * scale_tril)[..., None, :, :]
        log_w = torch.full(mean.shape[:-1] + (K,), -math.log(K), dtype=mean.dtype, device=mean.device)
    if std_k is not None:
        std_k = std_k.expand(points.shape)
    if tril_k is not None:
        tril_k = tril_k.expand(*points.shape, points.shape[-1])
    return points, log_w, std_k, tril_k


def linearized_kl_monte_carlo(module: nn.Module, q_mean, q_std, mean, std, *, at: str = "mean", samples: int = 8,
                              component_cov: str = "shrunk", pool: bool = False,
                              generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """KL(q ‖ p) by stratified Monte Carlo as one autograd node (`anmc.prior.linearized_kl`).

    p = LinearizedPrior(module, at=at, samples=samples, component_cov=component_cov)(mean, std), diagonal
    std `(*B, d)`, and q = N(q_mean, diag q_std²) per row: KL `(*B)`; with `pool`, p is pooled over the
    rows and q is the uniform mixture of all rows' Gaussians: KL `()`. The same estimate (same draws, to
    rounding) as `gmm_kl_monte_carlo(q, p, samples)` on those mixtures, without building them.
    """
    d = mean.shape[-1]
    if at == "mean":  # one component per row: no extra dimension, no generator draw
        f, J = module.f_and_jacobian(mean)
        s, K = std.expand(mean.shape), 1
    else:
        points, _, std_k, _ = linearization_points(mean, std, at=at, samples=samples, component_cov=component_cov,
                                                   generator=generator)  # fmt: skip
        f, J = module.f_and_jacobian(points)
        s, K = (torch.zeros_like(points) if std_k is None else std_k), samples
    var = noise_cov_diag(module, q_mean)
    if pool:
        f, J, s = f.reshape(1, -1, d), J.reshape(1, -1, d, d), s.reshape(1, -1, d)
        return kl_to_linearized_prior(f, J, s, var, q_mean.reshape(1, -1, d), q_std.reshape(1, -1, d), samples,
                                      generator)[0]  # fmt: skip
    f, J, s = f.reshape(-1, K, d), J.reshape(-1, K, d, d), s.reshape(-1, K, d)
    kl = kl_to_linearized_prior(f, J, s, var, q_mean.reshape(-1, 1, d), q_std.reshape(-1, 1, d), samples, generator)
    return kl.reshape(q_mean.shape[:-1])
