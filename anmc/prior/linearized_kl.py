"""KL(q ‖ linearized prior) by stratified Monte Carlo as one autograd node: the `pooled` and `mixture` readings.

    p(z) = (1/K) Σ_k N(z | f_k, Σ_k),   Σ_k = J_k diag(s_k²) J_kᵀ + Q          (LinearizedPrior's components)
    q(z) = (1/K_q) Σ_j N(z | μ_j, diag σ_j²)                                 (diagonal posteriors)
    KL ≈ (1/(K_q S)) Σ_j Σ_s [log q(z_js) − log p(z_js)],   z_js = μ_j + σ_j ε_js

The same estimate as `LinearizedPrior` + `gmm_kl_monte_carlo` with the same noise (to rounding), but
Σ_k is factorized without autograd and its gradient is written out. With c_k, C_k the log-density
kernel's component sums (anmc.prior._logdensity; a_nk carries the ∓1/(K_q S) of log p and log q):

    ∂/∂Σ_k = ½ (P_k C_k P_k − c_k P_k),   P_k = Σ_k⁻¹ (from the Cholesky factor),
    ∂/∂J_k = 2 (∂/∂Σ_k) J_k diag(s_k²),   ∂/∂s_k = 2 s_k ⊙ diag(J_kᵀ (∂/∂Σ_k) J_k),   ∂/∂Q = Σ_k diag(∂/∂Σ_k),
    ∂/∂f_k = P_k v_k,   and q's parameters through the kernel and the draws (∂z/∂μ = I, ∂z/∂σ = ε).

So the prior's Cholesky factorization and its backward pass, the mixture objects and a dozen small
autograd nodes leave the graph; at N = 64 these cost more than the estimate (benchmarks/kl.py).
f and J stay in the caller's graph: their gradients reach the dynamics' parameters through
`module.f_and_jacobian` as before.
"""

from __future__ import annotations

import math

import torch

from anmc.prior._logdensity import bmm, precision_times
from anmc.prior._numerics import cholesky, jitter_factor
from anmc.prior.kl import kl_core_backward, kl_core_forward


class _LinearizedKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f, J, s, noise_var, mu_q, std_q, noise):
        B, K, d = f.shape
        JD = J * s.square().unsqueeze(-2)  # J diag(s²)
        L = cholesky(bmm(JD, J.mT) + torch.diag_embed(noise_var))
        q = (mu_q.new_full(mu_q.shape[:-1], -math.log(mu_q.shape[-2])), mu_q, std_q, False)
        kl, _, saved = kl_core_forward(noise, q, (f.new_full((B, K), -math.log(K)), f, L, True))
        ctx.saved, ctx.q = saved, q
        ctx.save_for_backward(JD, J, s, noise)
        return kl.to(f.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        JD, J, s, noise = ctx.saved_tensors
        (_, d_mu, d_std), (c, v, C), comps = kl_core_backward(grad, noise, ctx.q, ctx.saved)
        p = slice(comps.loc.shape[1] - J.shape[1], None)  # p's components come last in the stack
        P, c, v, C = comps.P[:, p], c[:, p], v[:, p], C[:, p]
        d_f = precision_times(P, v, full=True)
        P = P.flatten(0, 1)  # (B K, d, d) from here on
        G = bmm(bmm(P, C.flatten(0, 1)), P).sub_(c.reshape(-1, 1, 1) * P)  # 2 ∂/∂Σ
        G.mul_(jitter_factor(G.shape[-1], G.dtype, G.device))  # Σ was factorized as Σ ⊙ (1 + 16 eps I)
        J64 = J.to(G.dtype).flatten(0, 1)
        d_J = bmm(G, JD.to(G.dtype).flatten(0, 1)).view(J.shape)  # 2 G J diag(s²)
        d_s = s * (bmm(G, J64) * J64).sum(-2).view(s.shape)  # 2 s ⊙ diag(Jᵀ G J)
        d_var = 0.5 * G.diagonal(dim1=-2, dim2=-1).sum(0)
        return d_f.to(J.dtype), d_J.to(J.dtype), d_s.to(s.dtype), d_var.to(s.dtype), d_mu, d_std, None


def kl_to_linearized_prior(f, J, s, noise_var, mu_q, std_q, samples: int, generator: torch.Generator | None = None):
    """KL(q ‖ p) per batch row by stratified Monte Carlo, p the uniform mixture of N(f_k, J_k diag(s_k²) J_kᵀ + Q).

    f (B, K, d) and J (B, K, d, d) the dynamics and Jacobian at the K linearization points, s (B, K, d) the
    std of the Gaussian each was pushed from (zeros: Σ_k = Q), noise_var (d,) = diag Q, q the uniform
    mixture of N(mu_q_j, diag std_q_j²), (B, K_q, d); `samples` draws from each of q's components, drawn
    like `GaussianMixture.sample_noise`. Returns (B,); differentiable w.r.t. every input tensor.
    """
    if samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples}")
    noise = torch.randn((*mu_q.shape[:-1], samples, mu_q.shape[-1]), generator=generator, dtype=mu_q.dtype,
                        device=mu_q.device)  # fmt: skip
    return _LinearizedKL.apply(f, J, s, noise_var, mu_q, std_q, noise)
