"""The mixture log-density kernel: log Σ_k w_k N(x_n | m_k, Σ_k) for many points and many components.

Never materializes a (points × components × d) tensor. The Mahalanobis distance is expanded into
matrix products around a centre c (the mean of a chunk of points):

    D_nk = ‖L_k⁻¹(x_n − m_k)‖² = x̃ᵀP_k x̃ − 2 x̃ᵀP_k m̃_k + m̃ᵀP_k m̃_k,   x̃ = x − c, m̃ = m − c, P_k = W_kᵀW_k,

with W_k = L_k⁻¹ from a triangular solve against the identity (never an inverse of Σ, never a
determinant: ½log|Σ_k| = Σ log diag L_k). One batched GEMM of point features [x̃ᵢx̃ⱼ (i ≤ j), x̃]
`(n, d(d+1)/2 + d)` against per-component coefficients gives every
ℓ_nk = log w_k − ½D_nk − ½log|Σ_k| − (d/2)log 2π at once (diagonal components: features [x̃ᵢ², x̃]).

The expansion cancels catastrophically when a point lies close to a component (D small) that is far
from the centre relative to its width. The rounding error of the expanded D_nk is at most
(d + 2) eps ρ_k (‖x̃_n‖ + ‖m̃_k‖)², ρ_k = ‖|P_k|‖_∞ ≥ ‖P_k‖₂, so every row gets the bound (for all k)

    E_n = (d + 2) eps (√ρ_max ‖x̃_n‖ + max_k √ρ_k ‖m̃_k‖)²,

and with tol = eps^(2/3) of the input dtype:
1. per-component coefficients are always formed in float64 (K d² work);
2. a chunk whose E_n (at the input dtype's eps) are all ≤ tol runs its GEMM in the input dtype;
   otherwise the GEMM runs in float64 ("rescale": 2^29 times less rounding for float32 inputs);
3. rows whose E_n is still > tol at float64 have their entries near the row maximum (those that
   can move the logsumexp by more than tol) recomputed exactly as ‖L_k⁻¹(x_n − m_k)‖² by a
   triangular solve; entries further down cannot matter whatever their error.
The logsumexp floors shifted terms at −80 (exp is ~10x slower below float32's range; e^−80 ≈ 2e−35)
and saves only the softmax for the backward pass.

Several mixtures with the same batch can be scored at the same points in one pass (`Components.stack`):
their components share one GEMM and each gets its own logsumexp (the KL needs log q and log p at the
draws of q; one pass halves the per-call overhead that dominates small problems).
"""

from __future__ import annotations

import functools

import torch

from anmc.prior._numerics import LOG_2PI, eps

MAX_CHUNK_ENTRIES = 1 << 20  # batch × points × components per chunk (4 MiB of float32 per tensor)
EXP_FLOOR = -80.0


@functools.lru_cache(maxsize=None)
def _triu(d: int, device: str, dtype: torch.dtype):
    """Upper-triangle indices (i ≤ j) of a d×d matrix, the off-diagonal doubling factor, and the diagonal slots."""
    iu = torch.triu_indices(d, d, device=device)
    off = iu[0] != iu[1]
    return iu[0], iu[1], 1.0 + off.to(dtype), (~off).nonzero()[:, 0]


def _work_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


class Components:
    """Centre-independent coefficients of K Gaussian components, batched `(B, K, ...)`, in float64.

    log_weights (B, K) normalized; loc (B, K, d); exactly one of tril (B, K, d, d) lower Cholesky
    factors or std (B, K, d). `splits` are the sizes of the mixtures stacked along K (one mixture
    unless built by `stack`); the kernel returns one log-density per split.
    """

    def __init__(self, log_weights, loc, tril=None, std=None):
        self.in_dtype = loc.dtype
        wd = _work_dtype(loc.device)
        self.loc = loc.to(wd)
        self.tril = None if tril is None else tril.to(wd)
        self.std = None if std is None else std.to(wd)
        self.d = d = loc.shape[-1]
        self.splits = (loc.shape[-2],)
        if tril is not None:
            eye = torch.eye(d, dtype=wd, device=loc.device)
            self.W = torch.linalg.solve_triangular(self.tril, eye.expand_as(self.tril), upper=False)  # L⁻¹
            P = self.W.mT @ self.W  # precision, symmetric by construction
            i, j, double, _ = _triu(d, str(loc.device), wd)
            self.iu = (i, j)
            self.quad_coef = P[..., i, j] * double  # x̃ᵢx̃ⱼ coefficient, off-diagonal doubled
            half_logdet = self.tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
            with torch.no_grad():
                self.rho = P.abs().sum(-1).amax(-1)  # ‖|P|‖_∞ ≥ ‖P‖₂ (P symmetric), (B, K)
        else:
            self.W, self.iu = None, None
            self.quad_coef = self.std.reciprocal().square()  # the diagonal precision
            half_logdet = self.std.log().sum(-1)
            with torch.no_grad():
                self.rho = self.quad_coef.amax(-1)
        self.beta0 = log_weights.to(wd) - half_logdet - 0.5 * d * LOG_2PI  # (B, K)

    @property
    def full(self) -> bool:
        return self.W is not None

    def as_full(self) -> Components:
        """The same components in the full layout (tril, W and triangle coefficients); diagonal ones promoted."""
        if self.full:
            return self
        out = object.__new__(Components)
        out.__dict__.update(self.__dict__)
        i, j, _, diag = _triu(self.d, str(self.loc.device), self.loc.dtype)
        out.iu = (i, j)
        out.tril = torch.diag_embed(self.std)
        out.W = torch.diag_embed(self.std.reciprocal())
        zeros = self.quad_coef.new_zeros(*self.quad_coef.shape[:-1], len(i))
        out.quad_coef = zeros.index_copy(-1, diag, self.quad_coef)
        out.std = None
        return out

    @classmethod
    def stack(cls, parts: list[Components]) -> Components:
        """Several mixtures (same batch B and d) as one set of components with `splits` = their sizes."""
        if len(parts) == 1:
            return parts[0]
        if any(p.full for p in parts):
            parts = [p.as_full() for p in parts]
        out = object.__new__(Components)
        first = parts[0]
        out.in_dtype, out.d, out.iu = first.in_dtype, first.d, first.iu
        out.splits = tuple(s for p in parts for s in p.splits)
        for name in ("loc", "tril", "std", "W", "quad_coef", "rho", "beta0"):
            values = [getattr(p, name) for p in parts]
            setattr(out, name, None if values[0] is None else torch.cat(values, dim=1))
        return out

    def whiten(self, diff, b=None, k=None):
        """L_k⁻¹ diff for diff (B, K, d) against all components, or (F, d) gathered at (b, k)."""
        if not self.full:
            return diff / (self.std if b is None else self.std[b, k])
        if b is None:
            return (self.W @ diff[..., None])[..., 0]
        return torch.linalg.solve_triangular(self.tril[b, k], diff[..., None], upper=False)[..., 0]


def _chunk_log_prob(x: torch.Tensor, comps: Components) -> list[torch.Tensor]:
    """log Σ_k w_k N(x_n | m_k, Σ_k) for one chunk: x (B, n, d) -> [(B, n)] per split, in x's dtype."""
    wd = comps.loc.dtype
    xw = x.to(wd)
    centre = xw.detach().mean(-2, keepdim=True)  # (B, 1, d); D does not depend on it, so no gradient
    xc, mc = xw - centre, comps.loc - centre
    wm = comps.whiten(mc)  # W m̃ (B, K, d)
    Pm = (comps.W.mT @ wm[..., None])[..., 0] if comps.full else wm / comps.std  # P m̃
    bias = comps.beta0 - 0.5 * wm.square().sum(-1)  # (B, K)
    quad = xc[..., comps.iu[0]] * xc[..., comps.iu[1]] if comps.full else xc.square()
    feats = torch.cat([quad, xc], dim=-1)  # (B, n, T + d)
    coef = torch.cat([-0.5 * comps.quad_coef, Pm], dim=-1)  # (B, K, T + d)

    tol = eps(x.dtype) ** (2.0 / 3.0)
    with torch.no_grad():  # E_n / eps, the module docstring's bound, (B, n)
        a = (comps.rho * mc.square().sum(-1)).amax(-1, keepdim=True).sqrt()  # max_k √ρ_k‖m̃_k‖, (B, 1)
        bound = (comps.d + 2) * (comps.rho.amax(-1, keepdim=True).sqrt() * xc.norm(dim=-1) + a).square()
        fast = float(bound.max()) * eps(x.dtype) <= tol
    cd = x.dtype if fast else wd  # the GEMM's dtype
    ell = torch.baddbmm(bias.to(cd)[:, None, :], feats.to(cd), coef.to(cd).mT)  # (B, n, K)

    if not fast:
        with torch.no_grad():
            bound = bound * eps(cd)
            bad_b, bad_n = (bound > tol).nonzero(as_tuple=True)
            if bad_b.numel():
                rows, e = ell.detach()[bad_b, bad_n], bound[bad_b, bad_n]  # (R, K), (R,)
                margin = e + (e * rows.shape[-1] / tol).log().clamp_min(0.0) + 1.0
                tops = torch.cat([r.amax(-1, keepdim=True).expand_as(r) for r in rows.split(comps.splits, -1)], -1)
                r, k = (rows >= tops - margin[:, None]).nonzero(as_tuple=True)
                b, i = bad_b[r], bad_n[r]
        if bad_b.numel():
            y = comps.whiten(xw[b, i] - comps.loc[b, k], b, k)  # (F, d), exact
            ell = ell.index_put((b, i, k), (comps.beta0[b, k] - 0.5 * y.square().sum(-1)).to(cd))

    if len(comps.splits) == 1:
        return [_LogSumExp.apply(ell, x.dtype)]
    return [_LogSumExp.apply(part, x.dtype) for part in ell.split(comps.splits, -1)]


class _LogSumExp(torch.autograd.Function):
    """logsumexp over the last dim, `(B, n, K) -> (B, n)` in `out_dtype`; saves only the softmax.

    The shift by the row maximum is done in the input's dtype (float64 after a promoted GEMM), the
    exponentials in `out_dtype` with the shifted terms floored at EXP_FLOOR (their weight is < 2e-35).
    """

    @staticmethod
    def forward(ctx, ell, out_dtype):
        top = ell.amax(-1, keepdim=True)
        p = (ell - top).to(out_dtype).clamp_min_(EXP_FLOOR).exp_()
        total = p.sum(-1, keepdim=True)
        ctx.save_for_backward(p.div_(total))
        ctx.in_dtype = ell.dtype
        return (top + total.log().to(top.dtype))[..., 0].to(out_dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (p,) = ctx.saved_tensors
        return (grad[..., None].to(p.dtype) * p).to(ctx.in_dtype), None


def mixture_log_probs(x: torch.Tensor, comps: Components, max_chunk_entries: int = MAX_CHUNK_ENTRIES):
    """[log p_j(x_n)] for each mixture j stacked in comps: points x (B, n, d) -> list of (B, n).

    Points go in chunks of at most `max_chunk_entries` (B × n_chunk × K) entries, each centred at its
    own mean: keep points from one region together (consecutive) for the best centring.
    """
    B, n, _ = x.shape
    step = max(1, max_chunk_entries // max(1, B * comps.loc.shape[-2]))
    if n <= step:
        return _chunk_log_prob(x, comps)
    chunks = [_chunk_log_prob(x[:, s : s + step], comps) for s in range(0, n, step)]
    return [torch.cat(parts, dim=-1) for parts in zip(*chunks)]


def mixture_log_prob(x: torch.Tensor, comps: Components, max_chunk_entries: int = MAX_CHUNK_ENTRIES) -> torch.Tensor:
    """log p(x_n) = logsumexp_k ℓ_nk for points x (B, n, d) against one mixture's components -> (B, n)."""
    return mixture_log_probs(x, comps, max_chunk_entries)[0]
