"""KL divergences: Gaussian to Gaussian in closed form, mixture to mixture by stratified Monte Carlo."""

from __future__ import annotations

import torch

from anmc.prior._logdensity import Components, bmm, kernel_backward, kernel_forward, part_gradients
from anmc.prior._numerics import LOG_2PI
from anmc.prior.gmm import GaussianMixture, broadcast_shapes, draws


def _is_diag(mu: torch.Tensor, scale: torch.Tensor) -> bool:
    if scale.dim() == mu.dim():
        return True
    if scale.dim() == mu.dim() + 1:
        return False
    raise ValueError(
        f"scale of shape {tuple(scale.shape)} for a mean of shape {tuple(mu.shape)}: give a std vector "
        "(..., d) (diagonal) or a lower Cholesky factor (..., d, d) with the mean's leading dimensions"
    )


def gaussian_kl(mu_q, scale_q, mu_p, scale_p) -> torch.Tensor:
    """KL(N(μ_q, Σ_q) ‖ N(μ_p, Σ_p)) in closed form, `(..., d) -> (...)`.

        KL = ½ [‖L_p⁻¹L_q‖_F² + ‖L_p⁻¹(μ_p − μ_q)‖² − d] + Σ log diag L_p − Σ log diag L_q

    Each scale is a std vector `(..., d)` (Σ = diag σ²) or a lower Cholesky factor `(..., d, d)`
    (Σ = L Lᵀ); triangular solves only. Diagonal against diagonal is summed per coordinate,
    ½Σ[r² − 1 − 2 log r + δ²], r = σ_q/σ_p, which keeps KL(q‖q) = 0 exactly.
    """
    dq, dp = _is_diag(mu_q, scale_q), _is_diag(mu_p, scale_p)
    diff = mu_p - mu_q
    if dq and dp:
        r = scale_q / scale_p
        delta = diff / scale_p
        return 0.5 * (r.square() - 1.0 - 2.0 * r.log() + delta.square()).sum(-1)
    if dp:  # q full, p diagonal
        M = scale_q / scale_p[..., :, None]
        delta = diff / scale_p
        log_det_p = scale_p.log().sum(-1)
    else:
        Lq = torch.diag_embed(scale_q) if dq else scale_q
        Lp = scale_p
        batch = torch.broadcast_shapes(Lq.shape, Lp.shape)
        M = torch.linalg.solve_triangular(Lp.expand(batch), Lq.expand(batch), upper=False)
        batch_v = torch.broadcast_shapes(diff.shape, Lp.shape[:-1])
        delta = torch.linalg.solve_triangular(Lp.expand(*batch_v, batch_v[-1]), diff.expand(batch_v)[..., None],
                                              upper=False)[..., 0]  # fmt: skip
        log_det_p = Lp.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    log_det_q = scale_q.log().sum(-1) if dq else scale_q.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    d = mu_q.shape[-1]
    return 0.5 * (M.square().sum((-2, -1)) + delta.square().sum(-1) - d) + log_det_p - log_det_q


def gmm_kl_monte_carlo(q: GaussianMixture, p: GaussianMixture, samples: int = 8, *,
                       generator: torch.Generator | None = None, return_stderr: bool = False):  # fmt: skip
    """Stratified Monte Carlo KL(q ‖ p) between batches of Gaussian mixtures, `-> (*batch,)`.

        KL(q‖p) ≈ Σ_m π_m (1/S) Σ_s [log q(z_ms) − log p(z_ms)],   z_ms = μ_m + L_m ε_ms,

    S = `samples` reparameterized draws from every component m of q (so the estimate is
    differentiable w.r.t. q's and p's weights, means and scales, and whatever produced them).
    Log densities go through the kernel of `anmc.prior._logdensity` (GEMM-expanded, centred, exact
    where the expansion would cancel; log q and log p in one pass); for a one-component q,
    log q(z) = −½‖ε‖² − ½log|Σ_q| − (d/2)log 2π exactly. Unbiased; may come out negative by Monte Carlo noise.
    The whole estimate is one autograd node with its backward pass written out (`kl_core_backward`).

    With `return_stderr=True` returns (kl, stderr), stderr² = Σ_m π_m² Var_s[log q − log p] / S
    (components are sampled independently; needs S ≥ 2).
    """
    if samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples}")
    batch = broadcast_shapes(q.batch_shape, p.batch_shape)
    q = q.expand(batch) if q.batch_shape != batch else q
    p = p.expand(batch) if p.batch_shape != batch else p
    noise = q.sample_noise(samples, generator)  # (*batch, K_q, S, d)
    (lw_q, loc_q, scale_q, full_q), (lw_p, loc_p, scale_p, full_p) = q.components(), p.components()
    kl, y = _MonteCarloKL.apply(noise.reshape(-1, *noise.shape[-3:]), full_q, full_p,
                                lw_q, loc_q, scale_q, lw_p, loc_p, scale_p)  # fmt: skip
    kl = kl.reshape(batch)
    if not return_stderr:
        return kl
    with torch.no_grad():
        var = y.var(-1, unbiased=True) if samples > 1 else torch.full_like(y[..., 0], float("nan"))
        stderr = ((q.weights.reshape(var.shape).square() * var).sum(-1) / samples).sqrt().reshape(batch)
    return kl, stderr


def _scale_diagonal(scale, full: bool):
    """σ_k, or the diagonal of L_k: (B, K, d)."""
    return scale.diagonal(dim1=-2, dim2=-1) if full else scale


def kl_core_forward(noise, q, p):
    """Without autograd: KL(q ‖ p) (B,) and [log q − log p] (B, K_q, S) at q's draws, and what backward needs.

    noise (B, K_q, S, d); q = (log-weights normalized (B, K_q), loc, scale, full); p the same fields of p
    (its components may be built from anything).
    """
    B, Kq, S, d = noise.shape
    lw_q, loc_q, scale_q, full_q = q
    z = draws(loc_q, scale_q, full_q, noise).reshape(B, Kq * S, d)
    own = Kq == 1  # a single Gaussian's density at its own draws is exact from the noise
    comps = Components([p] if own else [q, p])
    out, state = kernel_forward(z, comps)
    if own:
        half_log_det = _scale_diagonal(scale_q, full_q).log().sum(-1).reshape(B, 1)
        log_q = -0.5 * noise.square().sum(-1).reshape(B, S) - half_log_det - 0.5 * d * LOG_2PI
    else:
        log_q = out[..., 0]
    y = (log_q - out[..., -1]).view(B, Kq, S)
    w = lw_q.exp()
    y_mean = y.mean(-1)
    return (w * y_mean).sum(-1), y, (comps, state, w, y_mean)


def kl_core_backward(grad, noise, q, saved):
    """From the upstream gradient of the KL (B,): ∂/∂(q's log-weights, loc, scale) and p's component sums (c, v, C)."""
    comps, state, w, y_mean = saved
    B, Kq, S, d = noise.shape
    lw_q, loc_q, scale_q, full_q = q
    own = len(comps.raw) == 1
    g = grad.to(w.dtype).unsqueeze(-1)  # (B, 1)
    dy = (g * w / S).unsqueeze(-1).expand(B, Kq, S).reshape(B, Kq * S, 1)  # ∂KL/∂(log q − log p) per draw
    dz, c, v, C = kernel_backward(-dy if own else torch.cat([dy, -dy], -1), comps, state)
    dz = dz.view(B, Kq, S, d)
    noise = noise.to(dz.dtype)
    d_lw = g * w * y_mean
    d_loc = dz.sum(2)  # through the draws z = μ + L ε
    if full_q:  # ∂z_i/∂L_ij = ε_j (as autograd through m + L ε would give, upper triangle included)
        d_scale = bmm(dz.mT, noise)
    else:
        d_scale = (dz * noise).sum(2)
    if own:  # log q = −½‖ε‖² − Σ log L_ii − const: (1/S) Σ_s −1/L_ii per unit weight
        own_term = (g * w).unsqueeze(-1) / _scale_diagonal(scale_q, full_q).to(dz.dtype)
        if full_q:
            d_scale.diagonal(dim1=-2, dim2=-1).sub_(own_term)
        else:
            d_scale = d_scale - own_term
    else:
        k_lw, k_loc, k_scale = part_gradients(comps, c, v, C, 0)
        d_lw, d_loc, d_scale = d_lw + k_lw, d_loc + k_loc, d_scale + k_scale
    return (d_lw.to(lw_q.dtype), d_loc.to(loc_q.dtype), d_scale.to(scale_q.dtype)), (c, v, C), comps


class _MonteCarloKL(torch.autograd.Function):
    """`gmm_kl_monte_carlo` as one autograd node: (noise, q's and p's flattened fields) -> (KL (B,), y (B, K_q, S))."""

    @staticmethod
    def forward(ctx, noise, full_q, full_p, lw_q, loc_q, scale_q, lw_p, loc_p, scale_p):
        q = (lw_q, loc_q, scale_q, full_q)
        kl, y, saved = kl_core_forward(noise, q, (lw_p, loc_p, scale_p, full_p))
        ctx.saved, ctx.q = saved, q
        ctx.save_for_backward(noise)
        ctx.mark_non_differentiable(y)
        return kl.to(loc_q.dtype), y.to(loc_q.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad, _grad_y):
        (noise,) = ctx.saved_tensors
        q_grads, (c, v, C), comps = kl_core_backward(grad, noise, ctx.q, ctx.saved)
        p_grads = part_gradients(comps, c, v, C, len(comps.raw) - 1)
        return None, None, None, *q_grads, *p_grads
