"""The mixture log-density kernel: log Σ_k w_k N(x_n | m_k, Σ_k) for many points and many components.

Never materializes a (points × components × d) tensor. The Mahalanobis distance is expanded into
matrix products around a centre c (the mean of a chunk of points):

    D_nk = ‖L_k⁻¹(x_n − m_k)‖² = x̃ᵀP_k x̃ − 2 x̃ᵀP_k m̃_k + m̃ᵀP_k m̃_k,   x̃ = x − c, m̃ = m − c, P_k = W_kᵀW_k,

with W_k = L_k⁻¹ from a triangular solve (never an inverse of Σ, never a determinant: log|Σ_k| =
2 Σ log diag L_k). One batched GEMM of point features [x̃ᵢx̃ⱼ (i ≤ j), x̃] (n, d(d+1)/2 + d) against
component coefficients gives every ℓ_nk = log w_k − ½D_nk − ½log|Σ_k| − (d/2)log 2π at once.

The expansion cancels catastrophically when a point lies close to a component (D small) that is far
from the centre relative to its width (‖x̃‖, ‖m̃‖ large in units of that width). Each row gets a
rounding-error bound E_n ≥ |error of D_nk| for every k,

    E_n = (d + 2) eps (‖x̃_n‖² max_k ‖|P_k|‖_∞ + 2‖x̃_n‖ max_k ‖|P_k||m̃_k|‖ + max_k |m̃_k|ᵀ|P_k||m̃_k|),

and in rows where E_n > eps^(2/3), the entries that can matter to the logsumexp (within E_n + log(K/eps)
of the row's maximum) are recomputed exactly, ‖L_k⁻¹(x_n − m_k)‖² by a triangular solve. Entries far
below the maximum contribute less than eps to the sum whatever their error.
"""

from __future__ import annotations

import math

import torch

from anmc.prior._numerics import LOG_2PI, eps

MAX_CHUNK_ENTRIES = 1 << 20  # points × components × batch handled at once (4 MiB of float32 per tensor)


class Components:
    """Centre-independent coefficients of K Gaussian components, batched as `(B, K, ...)`.

    loc (B, K, d); exactly one of tril (B, K, d, d) lower Cholesky factors or std (B, K, d).
    log_weights (B, K) are normalized log mixture weights.
    """

    def __init__(self, log_weights, loc, tril=None, std=None):
        self.loc, self.tril, self.std = loc, tril, std
        d = loc.shape[-1]
        self.d = d
        if tril is not None:
            eye = torch.eye(d, dtype=loc.dtype, device=loc.device)
            self.W = torch.linalg.solve_triangular(tril, eye.expand_as(tril), upper=False)  # L⁻¹
            P = self.W.mT @ self.W  # precision, symmetric by construction
            iu = torch.triu_indices(d, d, device=loc.device)
            self.iu = iu
            twice = torch.where(iu[0] == iu[1], 1.0, 2.0).to(loc.dtype)
            self.quad_coef = P[..., iu[0], iu[1]] * twice  # (B, K, d(d+1)/2)
            self.P = P
            half_logdet = tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
            with torch.no_grad():
                self.absP = P.abs()
                self.rho = self.absP.sum(-1).amax(-1)  # ‖|P|‖_∞ (B, K)
        else:
            self.W = None
            prec = std.reciprocal().square()
            self.quad_coef = prec  # features x̃ᵢ²
            half_logdet = std.log().sum(-1)
            with torch.no_grad():
                self.rho = prec.amax(-1)
        # log w_k − ½ log|Σ_k| − (d/2) log 2π
        self.beta0 = log_weights - half_logdet - 0.5 * d * LOG_2PI

    def whiten(self, diff: torch.Tensor, b: torch.Tensor | None = None, k: torch.Tensor | None = None):
        """L_k⁻¹ diff for diff (B, K, d) (all components) or (F, d) gathered at (b, k)."""
        if b is None:
            if self.tril is None:
                return diff / self.std
            return torch.linalg.solve_triangular(self.tril, diff[..., None], upper=False)[..., 0]
        if self.tril is None:
            return diff / self.std[b, k]
        return torch.linalg.solve_triangular(self.tril[b, k], diff[..., None], upper=False)[..., 0]


def _quad_features(xc: torch.Tensor, comps: Components) -> torch.Tensor:
    if comps.tril is None:
        return xc.square()
    return xc[..., comps.iu[0]] * xc[..., comps.iu[1]]


def _chunk_log_prob(x: torch.Tensor, comps: Components) -> torch.Tensor:
    """log Σ_k w_k N(x_n | m_k, Σ_k) for one chunk: x (B, n, d) -> (B, n)."""
    B, n, d = x.shape
    K = comps.loc.shape[-2]
    centre = x.detach().mean(-2, keepdim=True)  # (B, 1, d); D does not depend on it, so no gradient
    xc = x - centre
    mc = comps.loc - centre  # (B, K, d)
    wm = comps.whiten(mc)  # W m̃ (B, K, d)
    if comps.tril is None:
        Pm = wm / comps.std
    else:
        Pm = (comps.W.mT @ wm[..., None])[..., 0]  # P m̃ = Wᵀ(W m̃)
    bias = comps.beta0 - 0.5 * wm.square().sum(-1)  # (B, K)
    feats = torch.cat([_quad_features(xc, comps), xc], dim=-1)  # (B, n, T + d)
    coef = torch.cat([-0.5 * comps.quad_coef, Pm], dim=-1)  # (B, K, T + d)
    ell = torch.baddbmm(bias[:, None, :], feats, coef.mT)  # (B, n, K)

    with torch.no_grad():
        e = eps(x.dtype)
        u2 = xc.detach().square().sum(-1)  # (B, n)
        if comps.tril is None:
            absPm = (mc.abs() / comps.std.square()).detach()
        else:
            absPm = (comps.absP @ mc.detach().abs()[..., None])[..., 0]
        nu = absPm.norm(dim=-1)  # (B, K)
        tau = (mc.detach().abs() * absPm).sum(-1)
        bound = (d + 2) * e * (
            u2 * comps.rho.amax(-1, keepdim=True)
            + 2 * u2.sqrt() * nu.amax(-1, keepdim=True)
            + tau.amax(-1, keepdim=True)
        )  # (B, n): bound on |error of D_nk| for every k
        bad_b, bad_n = (bound > e ** (2.0 / 3.0)).nonzero(as_tuple=True)
        if bad_b.numel():
            rows = ell.detach()[bad_b, bad_n]  # (R, K)
            margin = math.log(K) - math.log(e) + 1.0
            low = rows.amax(-1) - bound[bad_b, bad_n] - margin
            r, k = (rows >= low[:, None]).nonzero(as_tuple=True)
            b, i = bad_b[r], bad_n[r]
    if bad_b.numel():
        y = comps.whiten(x[b, i] - comps.loc[b, k], b, k)  # (F, d), exact
        ell = ell.index_put((b, i, k), comps.beta0[b, k] - 0.5 * y.square().sum(-1))
    return torch.logsumexp(ell, dim=-1)


def mixture_log_prob(x: torch.Tensor, comps: Components, max_chunk_entries: int = MAX_CHUNK_ENTRIES) -> torch.Tensor:
    """log p(x_n) = logsumexp_k ℓ_nk for points x (B, n, d) against components (B, K, ...) -> (B, n).

    Points are processed in chunks of at most `max_chunk_entries` (B × n_chunk × K) entries, each
    centred at its own mean; keep points from one region together (consecutive) for the best centring.
    """
    B, n, _ = x.shape
    K = comps.loc.shape[-2]
    step = max(1, max_chunk_entries // max(1, B * K))
    if n <= step:
        return _chunk_log_prob(x, comps)
    return torch.cat([_chunk_log_prob(x[:, s : s + step], comps) for s in range(0, n, step)], dim=-1)
