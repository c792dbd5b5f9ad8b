"""The four readings of the transition KL (docs/method.md §5), chosen by name, and the initial-frame KL.

Every reading has one signature, for N transitions with diagonal posteriors
q(z_{t−1}) = N(μ_{t−1}, diag σ_{t−1}²) and q(z_t) = N(μ_t, diag σ_t²):

    reading(module, mu_prev, std_prev, mu_t, std_t, *, samples=8, generator=None) -> (N,)

mu_prev, std_prev, mu_t, std_t are `(N, d)` (std, not variance); the result's sum is the KL term of the
loss. f, J = module.f_and_jacobian, Q = diag(module.noise_std²); gradients reach the module's learnable
params through f and J, and noise_std when it is learnable.

| name | per transition n |
|---|---|
| `elbo` | KL(q_t ‖ N(f(μ_{t−1}), Q)) + ½ tr(Q⁻¹ J Σ_{t−1} Jᵀ) (closed form, J at μ_{t−1}) |
| `elbo_mc` | (1/S) Σ_s KL(q_t ‖ N(f(z_s), Q)), z_s = μ_{t−1} + σ_{t−1} ε_s (S = samples) |
| `mixture` | KL(q_t ‖ (1/S) Σ_s N(f(z_s), J_s (Σ_{t−1}/S) J_sᵀ + Q)) by Monte Carlo, S draws of q_t |
| `pairwise` | KL(q_t ‖ N(f(μ_{t−1}), J Σ_{t−1} Jᵀ + Q)) (closed form) |
| `pooled` | KL(q̄ ‖ p̄) / N on every row: q̄ = (1/N) Σ_i q_t,i, p̄ = (1/N) Σ_i N(f(μ_{t−1,i}), J Σ Jᵀ + Q) |

`pooled` is one batch-level KL; it is spread evenly (KL/N per row) so that the sum is that KL.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from anmc.prior.kl import gaussian_kl
from anmc.prior.linearize import LinearizedPrior, linearized_kl_monte_carlo


def _noise_std(module: nn.Module, like: Tensor) -> Tensor:
    return module.noise_std.to(dtype=like.dtype, device=like.device)


def elbo(module, mu_prev, std_prev, mu_t, std_t, *, samples=8, generator=None) -> Tensor:
    """E_{q(z_{t−1})} KL(q_t ‖ N(f(z_{t−1}), Q)) linearized at μ_{t−1}, closed form, `-> (N,)`.

        KL(N(μ_t, σ_t²) ‖ N(f(μ_{t−1}), Q)) + ½ Σ_ij J_ij² σ_{t−1,j}² / Q_ii
    """
    f, J = module.f_and_jacobian(mu_prev)
    q = _noise_std(module, mu_t)
    trace = (J * std_prev[..., None, :] / q[:, None]).square().sum((-2, -1))
    return gaussian_kl(mu_t, std_t, f, q.expand_as(f)) + 0.5 * trace


def elbo_mc(module, mu_prev, std_prev, mu_t, std_t, *, samples=8, generator=None) -> Tensor:
    """E_{q(z_{t−1})} KL(q_t ‖ N(f(z_{t−1}), Q)) by Monte Carlo over z_{t−1}, closed-form KL inside, `-> (N,)`."""
    eps = torch.randn((samples, *mu_prev.shape), generator=generator, dtype=mu_prev.dtype, device=mu_prev.device)
    f = module(mu_prev + std_prev * eps)  # (S, N, d)
    q = _noise_std(module, mu_t)
    return gaussian_kl(mu_t, std_t, f, q.expand_as(f)).mean(0)


def mixture(module, mu_prev, std_prev, mu_t, std_t, *, samples=8, generator=None, component_cov="shrunk") -> Tensor:
    """KL(q_t ‖ p_t), p_t the linearized mixture over `samples` draws of q(z_{t−1}), by Monte Carlo, `-> (N,)`.

    Components N(f(z_k), J_k S J_kᵀ + Q) with S = Σ_{t−1}/K ("shrunk", the default: moment-matched,
    see LinearizedPrior), Σ_{t−1} ("full") or 0 ("zero"); KL by Monte Carlo with `samples` draws of q_t
    (`linearized_kl_monte_carlo`: the estimate of `gmm_kl_monte_carlo` as one autograd node).
    """
    return linearized_kl_monte_carlo(module, mu_t, std_t, mu_prev, std_prev, at="samples", samples=samples,
                                     component_cov=component_cov, generator=generator)  # fmt: skip


def pairwise(module, mu_prev, std_prev, mu_t, std_t, *, samples=8, generator=None) -> Tensor:
    """KL(q_t ‖ N(f(μ_{t−1}), J Σ_{t−1} Jᵀ + Q)): the one-component linearized prior, closed form, `-> (N,)`."""
    p_t = LinearizedPrior(module, at="mean")(mu_prev, std_prev)
    return gaussian_kl(mu_t, std_t, p_t.loc[..., 0, :], p_t.scale_tril[..., 0, :, :])


def pooled(module, mu_prev, std_prev, mu_t, std_t, *, samples=8, generator=None) -> Tensor:
    """KL(q̄ ‖ p̄) between the batch mixtures, by Monte Carlo, returned as KL/N on each of the N rows.

    (`linearized_kl_monte_carlo` with pool=True: the estimate of `LinearizedPrior(...).pool()` and
    `gmm_kl_monte_carlo`, same draws, as one autograd node.)"""
    kl = linearized_kl_monte_carlo(module, mu_t, std_t, mu_prev, std_prev, samples=samples, pool=True,
                                   generator=generator)  # fmt: skip
    n = mu_t.shape[0]
    return (kl / n).expand(n)


TRANSITION_KL: dict[str, Callable[..., Tensor]] = {
    "elbo": elbo,
    "elbo_mc": elbo_mc,
    "mixture": mixture,
    "pairwise": pairwise,
    "pooled": pooled,
}


def transition_kl(name, module, mu_prev, std_prev, mu_t, std_t, *, samples=8, generator=None) -> Tensor:
    """The transition KL reading `name` (one of TRANSITION_KL) for N transitions, `(N, d) × 4 -> (N,)`."""
    if name not in TRANSITION_KL:
        raise ValueError(f"transition KL {name!r}: must be one of {', '.join(TRANSITION_KL)}")
    return TRANSITION_KL[name](module, mu_prev, std_prev, mu_t, std_t, samples=samples, generator=generator)


def initial_kl(module, mu, std) -> Tensor:
    """KL(N(μ, diag σ²) ‖ N(initial_mean, diag initial_std²)), closed form, `(N, d) -> (N,)`."""
    m0 = module.initial_mean.to(dtype=mu.dtype, device=mu.device)
    s0 = module.initial_std.to(dtype=mu.dtype, device=mu.device)
    return gaussian_kl(mu, std, m0.expand_as(mu), s0.expand_as(std))
