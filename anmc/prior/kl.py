"""KL divergences: Gaussian to Gaussian in closed form, mixture to mixture by stratified Monte Carlo."""

from __future__ import annotations

import torch

from anmc.prior.gmm import GaussianMixture, log_prob_points


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
    Log densities go through `anmc.prior.gmm.log_prob_points` (GEMM-expanded, centred, exact where
    the expansion would cancel; log q and log p in one pass); for a one-component q,
    log q(z) = −½‖ε‖² − ½log|Σ_q| − (d/2)log 2π exactly. Unbiased; may come out negative by Monte Carlo noise.

    With `return_stderr=True` returns (kl, stderr), stderr² = Σ_m π_m² Var_s[log q − log p] / S
    (components are sampled independently; needs S ≥ 2).
    """
    if samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples}")
    batch = torch.broadcast_shapes(q.batch_shape, p.batch_shape)
    q = q.expand(batch) if q.batch_shape != batch else q
    k, d = q.num_components, q.d
    noise = q.sample_noise(samples, generator)  # (*batch, K_q, S, d)
    z = q.transform_noise(noise)
    points = z.reshape(*batch, k * samples, d)  # component-major: each chunk stays spatially coherent
    if k == 1:
        log_q = q.log_prob_own_noise(noise)
        log_p = p.log_prob_points(points).reshape(*batch, k, samples)
    else:  # both mixtures at the same points: one pass
        log_q, log_p = (lp.reshape(*batch, k, samples) for lp in log_prob_points(points, q, p))
    y = log_q - log_p  # (*batch, K_q, S)
    w = q.weights
    kl = (w * y.mean(-1)).sum(-1)
    if not return_stderr:
        return kl
    with torch.no_grad():
        var = y.var(-1, unbiased=True) if samples > 1 else torch.full_like(y[..., 0], float("nan"))
        stderr = ((w.square() * var).sum(-1) / samples).sqrt()
    return kl, stderr
