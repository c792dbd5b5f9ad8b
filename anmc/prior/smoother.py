"""A posterior over whole sequences: an extended Kalman smoother over per-frame pseudo-observations.

The factorized posterior q(z_t | x_{t-k+1..t}) must read every state, velocities included, from a
few frames; its errors in a velocity (two frames at 32x32: ~0.6 rad/s for the pendulum) far exceed the
prior's process noise (0.05 rad/s per frame), and the transition KL then pays the encoder to shrink
the latents (docs/results.md §3b). The smoother posterior lets the encoder report only what a frame
shows: a pseudo-observation y_t of the observed states with its std r_t. The posterior over the
sequence is the prior's dynamics conditioned on them,

    q(z_{1:T}) ∝ p(z_1) Π_t p(z_t | z_{t-1}) Π_t N(y_t | H z_t, diag r_t²)      (f linearized: EKF + RTS)

so velocities are inferred through the dynamics, from every frame of the sequence (a structured
posterior as in Krishnan et al. 2017 and Fraccaro et al. 2017, with the prior's own exact Jacobian).

    post = kalman_smoother(module, y, y_std)     # y (B, T, m) for the m observed states
    post.mean, post.cov, post.cross, post.entropy
    markov_kl(module, post)                       # KL(q(z_{1:T}) ‖ p(z_{1:T})), the `elbo` reading, (B,)

`markov_kl` is the `elbo` reading of the transition KL for a posterior that is correlated in time:
linearized at the posterior means, with Cov(z_t, z_{t-1}) from the smoother,

    KL = −H[q] + E_q[−log p(z_1)] + Σ_{t>1} ½[ rᵀQ⁻¹r + tr(Q⁻¹ V_t) + log det 2πQ ],
    r = μ_t − f(μ_{t−1}),  V_t = Σ_t − J C_tᵀ − C_t Jᵀ + J Σ_{t−1} Jᵀ,  C_t = Cov(z_t, z_{t−1}),

which is exactly the factorized `elbo` reading when C_t = 0. The entropy of the Markov chain q is
H(z_T) + Σ_t H(z_t | z_{t+1}), with Cov(z_t | z_{t+1}) = (P_{t|t}⁻¹ + Fᵀ Q⁻¹ F)⁻¹.

The recursions run in float64 (the states are a handful of numbers; Q can be 1e-4 of the state
variance) and return the input dtype. For linear dynamics they are exact: the smoothed marginals equal
dense Gaussian conditioning, and E_q[log N(y | Hz, R)] − KL equals the Kalman log-likelihood log p(y)
(tests/test_prior_smoother.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SmoothedPosterior:
    """q(z_{1:T}) for B sequences: marginal means (B, T, d) and covariances (B, T, d, d), the cross
    covariances Cov(z_{t+1}, z_t) (B, T-1, d, d) and the entropy of the whole sequence (B,); and the
    filter's causal marginals q(z_t | y_1..y_t) (for predictions that must not see the future)."""

    mean: Tensor
    cov: Tensor
    cross: Tensor
    entropy: Tensor
    filtered_mean: Tensor | None = None
    filtered_cov: Tensor | None = None

    @property
    def std(self) -> Tensor:
        """Marginal standard deviations (B, T, d)."""
        return _diag_sqrt(self.cov)

    @property
    def filtered_std(self) -> Tensor:
        """The filter's marginal standard deviations (B, T, d)."""
        return _diag_sqrt(self.filtered_cov)


def _diag_sqrt(cov: Tensor) -> Tensor:
    return torch.diagonal(cov, dim1=-2, dim2=-1).clamp_min(0).sqrt()


def _sym(a: Tensor) -> Tensor:
    return 0.5 * (a + a.transpose(-1, -2))


def _logdet_pd(a: Tensor) -> Tensor:
    return 2.0 * torch.linalg.cholesky(_sym(a)).diagonal(dim1=-2, dim2=-1).log().sum(-1)


def kalman_smoother(module, y: Tensor, y_std: Tensor) -> SmoothedPosterior:
    """Condition the prior of `module` on pseudo-observations y (B, T, m) of its observed states with std
    y_std (B, T, m): extended Kalman filter (Joseph-form updates) and Rauch-Tung-Striebel smoother."""
    out_dtype = y.dtype
    y, r2 = y.double(), y_std.double().square()
    b, t_len, m = y.shape
    obs = list(module.observed_index)
    d = module.d
    if m != len(obs):
        raise ValueError(f"{m} pseudo-observations per frame for {len(obs)} observed states")
    dev = y.device
    eye = torch.eye(d, dtype=torch.float64, device=dev)
    h = eye[obs]  # (m, d)
    q2 = module.noise_std.to(device=dev, dtype=torch.float64).square()
    mean = module.initial_mean.to(device=dev, dtype=torch.float64).expand(b, d)
    cov = torch.diag_embed(module.initial_std.to(device=dev, dtype=torch.float64).square()).expand(b, d, d)

    q_mat = torch.diag(q2)
    filt_m, filt_p, pred_m, pred_p, jac = [], [], [], [], []
    for t in range(t_len):
        if t:
            f, jm = module.f_and_jacobian(filt_m[-1])
            f, jm = f.double(), jm.double()
            mean, cov = f, _sym(jm @ filt_p[-1] @ jm.transpose(-1, -2)) + q_mat
            pred_m.append(mean)
            pred_p.append(cov)
            jac.append(jm)
        s = cov[:, obs][:, :, obs] + torch.diag_embed(r2[:, t])  # innovation covariance (B, m, m)
        gain = torch.linalg.solve(s, cov[:, obs, :]).transpose(-1, -2)  # P Hᵀ S⁻¹ (B, d, m)
        mean = mean + (gain @ (y[:, t] - mean[:, obs])[..., None])[..., 0]
        a = eye - gain @ h
        cov = _sym(a @ cov @ a.transpose(-1, -2) + gain @ (r2[:, t, :, None] * gain.transpose(-1, -2)))
        filt_m.append(mean)
        filt_p.append(cov)

    means, covs, crosses = [filt_m[-1]], [filt_p[-1]], []
    if t_len > 1:
        # every RTS gain at once, P_t|t Fᵀ P_{t+1|t}⁻¹, (B, T-1, d, d); the recursion then needs only products
        fp, pp, jm = torch.stack(filt_p[:-1], 1), torch.stack(pred_p, 1), torch.stack(jac, 1)
        gains = torch.linalg.solve(pp, jm @ fp).transpose(-1, -2)
        for t in range(t_len - 2, -1, -1):
            gain = gains[:, t]
            means.append(filt_m[t] + (gain @ (means[-1] - pred_m[t])[..., None])[..., 0])
            crosses.append(covs[-1] @ gain.transpose(-1, -2))  # Cov(z_{t+1}, z_t)
            covs.append(_sym(filt_p[t] + gain @ (covs[-1] - pred_p[t]) @ gain.transpose(-1, -2)))
    # H = H(z_T) + Σ_t H(z_t | z_{t+1}), and by the determinant lemma
    # log det Cov(z_t | z_{t+1}) = −log det(P_t|t⁻¹ + Fᵀ Q⁻¹ F) = log det P_t|t + log det Q − log det P_{t+1|t}
    logdets = _logdet_pd(torch.stack(filt_p + pred_p, 1))  # (B, T + T - 1)
    entropy = 0.5 * (
        logdets[:, :t_len].sum(1) - logdets[:, t_len:].sum(1) + (t_len - 1) * q2.log().sum() + t_len * d * math.log(2 * math.pi * math.e)
    )
    mean = torch.stack(means[::-1], 1).to(out_dtype)
    cov = torch.stack(covs[::-1], 1).to(out_dtype)
    cross = (torch.stack(crosses[::-1], 1) if crosses else cov.new_zeros(b, 0, d, d)).to(out_dtype)
    filtered_mean = torch.stack(filt_m, 1).to(out_dtype)
    filtered_cov = torch.stack(filt_p, 1).to(out_dtype)
    return SmoothedPosterior(mean, cov, cross, entropy.to(out_dtype), filtered_mean, filtered_cov)


def initial_cross_entropy(module, mu: Tensor, var: Tensor) -> Tensor:
    """E_q[−log N(z | m0, diag s0²)] for q with mean mu and marginal variances var (..., d), without its
    constant ½ Σ log 2π s0², `-> (...)`: markov_kl's first frame, and training's warm-up anchor."""
    m0, s0 = module.initial_mean.to(mu), module.initial_std.to(mu)
    return 0.5 * (((mu - m0) / s0).square() + var / s0.square()).sum(-1)


def markov_kl(module, post: SmoothedPosterior) -> Tensor:
    """KL(q(z_{1:T}) ‖ p(z_1) Π p(z_t | z_{t−1})) for each sequence, linearized at the means, `-> (B,)`."""
    mu, cov = post.mean, post.cov
    b, t_len, d = mu.shape
    s0 = module.initial_std.to(mu)
    cross_entropy = initial_cross_entropy(module, mu[:, 0], torch.diagonal(cov[:, 0], dim1=-2, dim2=-1)) + 0.5 * torch.log(
        2 * math.pi * s0.square()
    ).sum()
    if t_len > 1:
        f, jm = module.f_and_jacobian(mu[:, :-1].reshape(-1, d))
        f, jm = f.reshape(b, t_len - 1, d), jm.reshape(b, t_len - 1, d, d)
        q2 = module.noise_std.to(mu).square()
        c = post.cross  # Cov(z_t, z_{t-1})
        v = cov[:, 1:] - jm @ c.transpose(-1, -2) - c @ jm.transpose(-1, -2) + jm @ cov[:, :-1] @ jm.transpose(-1, -2)
        resid = mu[:, 1:] - f
        cross_entropy = cross_entropy + 0.5 * (
            (resid.square() / q2).sum((-2, -1))
            + (torch.diagonal(v, dim1=-2, dim2=-1) / q2).sum((-2, -1))
            + (t_len - 1) * torch.log(2 * math.pi * q2).sum()
        )
    return cross_entropy - post.entropy
