"""The mixture log-density kernel: log Σ_k w_k N(x_n | m_k, Σ_k) for many points and many components.

Never materializes a (points × components × d) tensor. The Mahalanobis distance is expanded into
matrix products around a centre c (the mean of a chunk of points):

    D_nk = ‖L_k⁻¹(x_n − m_k)‖² = x̃ᵀP_k x̃ − 2 x̃ᵀP_k m̃_k + m̃ᵀP_k m̃_k,   x̃ = x − c, m̃ = m − c,

with P_k = L_k⁻ᵀL_k⁻¹ from the factor (`torch.cholesky_inverse`, LAPACK potri; never a general inverse
of Σ, never a determinant: ½log|Σ_k| = Σ log diag L_k). One batched GEMM of point features [x̃ᵢx̃ⱼ (i ≤ j), x̃]
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
The logsumexp floors shifted terms at −80 (exp is ~10x slower below float32's range; e^−80 ≈ 2e−35).

The backward pass is written out (`_MixtureLogDensity`, all chunks one node of the autograd graph,
whose forward runs without recording anything). With a_nk = ḡ_n r_nk (the upstream gradient times the
softmax over the component's mixture), s_k = Σ_n a_nk x̃_n, c_k = Σ_n a_nk and
C_k = Σ_n a_nk (x̃_n − m̃_k)(x̃_n − m̃_k)ᵀ = Σ_n a_nk x̃_n x̃_nᵀ − s_k m̃_kᵀ − m̃_k s_kᵀ + c_k m̃_k m̃_kᵀ:

    ∂/∂log w_k = c_k,   ∂/∂m_k = P_k (s_k − c_k m̃_k),   ∂/∂x_n = −(Σ_k a_nk P_k) x̃_n + Σ_k a_nk P_k m̃_k,
    ∂/∂L_k = tril(P_k C_k L_k⁻ᵀ) − diag(c_k / L_k,ii), L_k⁻ᵀ = P_k L_k   (∂/∂σ_k = C_k,ii/σ_k³ − c_k/σ_k, diagonal)

from two more GEMMs of the same shapes (aᵀ[x̃x̃, x̃] and a[P, Pm̃]); the entries recomputed exactly in
the forward pass (rule 3) are taken out of those sums and added from their exact differences.

Several mixtures with the same batch can be scored at the same points in one pass (`Components`):
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
def _pairs(d: int, device: str, dtype: torch.dtype):
    """Upper-triangle indices (i ≤ j) of a d×d matrix, the off-diagonal doubling factor, and for every
    (i, j) of the full matrix the slot of its pair (the map back from pair sums to a symmetric matrix)."""
    iu = torch.triu_indices(d, d, device=device)
    double = 1.0 + (iu[0] != iu[1]).to(dtype)
    slot = torch.empty(d, d, dtype=torch.long, device=device)
    slot[iu[0], iu[1]] = torch.arange(iu.shape[1], device=device)
    slot[iu[1], iu[0]] = torch.arange(iu.shape[1], device=device)
    return iu[0], iu[1], double, slot.reshape(-1)


def _work_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for (..., i, j) @ (..., j, k) with the same leading shape, as one `torch.bmm` (fewer dispatches
    than `@`, which broadcasts; the small problems here are all dispatch)."""
    if a.dim() == 3:
        return torch.bmm(a, b)
    out = torch.bmm(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]))
    return out.view(*a.shape[:-2], *out.shape[-2:])


class Components:
    """The kernel's constants for the components of one or more mixtures, batched `(B, K, ...)`, no gradient.

    `parts`: one (log_weights (B, K_j) normalized, loc (B, K_j, d), scale, full) per mixture, the scale
    a lower Cholesky factor (B, K_j, d, d) when `full`, else a std vector (B, K_j, d). Their components
    are stacked along K (`splits` = the K_j; the kernel returns one log-density per mixture) and their
    coefficients formed once, in float64: all-diagonal mixtures keep the diagonal layout, otherwise
    diagonal ones are promoted to diagonal Cholesky factors. `raw` keeps the given tensors (with their
    autograd history): the kernel returns gradients for them.
    """

    def __init__(self, parts):
        self.raw = list(parts)
        first = parts[0][1]
        self.d = first.shape[-1]
        self.splits = tuple(loc.shape[-2] for _, loc, _, _ in parts)
        self.full = any(full for *_, full in parts)
        wd = _work_dtype(first.device)
        d = self.d
        with torch.no_grad():

            def cat(ts):
                return (ts[0] if len(ts) == 1 else torch.cat(ts, 1)).to(wd)

            self.loc = cat([loc for _, loc, _, _ in parts])
            log_w = cat([lw for lw, _, _, _ in parts])
            if self.full:
                self.tril = cat([s if f else torch.diag_embed(s) for _, _, s, f in parts]).tril()
                self.P = torch.cholesky_inverse(self.tril)  # (L Lᵀ)⁻¹ from the factor: L⁻¹ then L⁻ᵀL⁻¹
                self.rho = self.P.abs().sum(-1).amax(-1)  # ‖|P|‖_∞ ≥ ‖P‖₂ (P symmetric), (B, K)
                i, j, double, _ = _pairs(d, str(first.device), wd)
                self.P_pairs = self.P[..., i, j]  # the entries i ≤ j
                self.quad_coef = (-0.5 * double) * self.P_pairs  # their features' coefficients, off-diagonal doubled
                diag = self.tril.diagonal(dim1=-2, dim2=-1)
            else:
                self.std = diag = cat([s for _, _, s, _ in parts])
                self.P = self.P_pairs = self.std.pow(-2)  # the diagonal precision (B, K, d)
                self.rho = self.P.amax(-1)
                self.quad_coef = -0.5 * self.P
            self.beta = log_w - diag.log().sum(-1) - 0.5 * d * LOG_2PI  # (B, K)

    def whiten(self, diff, b, k):
        """L_k⁻¹ diff for differences diff (F, d) of the components at (b, k), by triangular solves."""
        if not self.full:
            return diff / self.std[b, k]
        return torch.linalg.solve_triangular(self.tril[b, k], diff[..., None], upper=False)[..., 0]

    def times_precision(self, v, b=None, k=None):
        """P_k v for v (B, K, d) against all components, or (F, d) gathered at (b, k)."""
        return precision_times(self.P if b is None else self.P[b, k], v, self.full)


def precision_times(P, v, full: bool):
    """P v for precisions P (..., d, d) (full) or their diagonals (..., d), and vectors v (..., d)."""
    return (P * v.unsqueeze(-2)).sum(-1) if full else P * v


def _log_sum_exp(ell: torch.Tensor, splits: tuple[int, ...], out_dtype):
    """logsumexp over each split of the last dim: (B, n, K) -> ((B, n, #splits), softmax (B, n, K) in out_dtype).

    The shift by each row maximum is done in ell's dtype (float64 after a promoted GEMM), the
    exponentials in `out_dtype` with the shifted terms floored at EXP_FLOOR (their weight is < 2e-35; exp
    is ~10x slower below float32's range). The softmax is the largest tensor kept for the backward pass.
    Overwrites ell.
    """
    if len(set(splits)) == 1:  # equal splits: one reduction over a (B, n, #splits, K / #splits) view
        e = ell.view(*ell.shape[:-1], len(splits), splits[0])
        top = e.amax(-1, keepdim=True)
        p = e.sub_(top).to(out_dtype).clamp_min_(EXP_FLOOR).exp_()  # ell is not needed after this: in place
        total = p.sum(-1, keepdim=True)
        return (top + total.log()).squeeze(-1), p.div_(total).view(ell.shape)
    outs, probs = zip(*(_log_sum_exp(part, part.shape[-1:], out_dtype) for part in ell.split(splits, -1)))
    return torch.cat(outs, -1), torch.cat(probs, -1)


def _chunk_forward(x, comps: Components):
    """One chunk of points x (B, n, d) against every component: ((B, n, #splits) in x's dtype, what backward needs)."""
    wd, d = comps.loc.dtype, comps.d
    xw = x.to(wd)
    centre = xw.mean(-2, keepdim=True)  # (B, 1, d); D does not depend on it
    xc, mc = xw - centre, comps.loc - centre
    Pm = comps.times_precision(mc)  # P m̃ (B, K, d)
    mPm = (mc * Pm).sum(-1)  # ‖W m̃‖² (B, K)
    if comps.full:
        i, j, _, _ = _pairs(d, str(x.device), wd)
        quad = xc[..., i] * xc[..., j]
    else:
        quad = xc.square()
    feats = torch.cat([quad, xc], dim=-1)  # (B, n, T + d)
    coef = torch.cat([comps.quad_coef, Pm], dim=-1)  # (B, K, T + d)

    tol = eps(x.dtype) ** (2.0 / 3.0)
    # E_n / eps, the module docstring's bound, (B, n)
    a = (comps.rho * mc.square().sum(-1)).amax(-1, keepdim=True).sqrt_()  # max_k √ρ_k‖m̃_k‖, (B, 1)
    bound = ((comps.rho.amax(-1, keepdim=True) * xc.square().sum(-1)).sqrt_().add_(a).square_()).mul_(d + 2)
    worst = float(bound.max())
    cd = x.dtype if worst * eps(x.dtype) <= tol else wd  # the GEMMs' dtype
    feats = feats.to(cd)
    ell = torch.baddbmm((comps.beta - 0.5 * mPm).to(cd).unsqueeze(1), feats, coef.to(cd).mT)  # (B, n, K)

    exact = None
    if worst * eps(cd) > tol:
        bound = bound * eps(cd)
        bad_b, bad_n = (bound > tol).nonzero(as_tuple=True)
        if bad_b.numel():
            rows, e = ell[bad_b, bad_n], bound[bad_b, bad_n]  # (R, K), (R,)
            margin = e + (e * rows.shape[-1] / tol).log().clamp_min(0.0) + 1.0
            tops = torch.cat([r.amax(-1, keepdim=True).expand_as(r) for r in rows.split(comps.splits, -1)], -1)
            r, k = (rows >= tops - margin[:, None]).nonzero(as_tuple=True)
            b, n = bad_b[r], bad_n[r]
            y = comps.whiten(xw[b, n] - comps.loc[b, k], b, k)  # (F, d), exact
            ell.index_put_((b, n, k), (comps.beta[b, k] - 0.5 * y.square().sum(-1)).to(cd))
            exact = (b, n, k)

    out, probs = _log_sum_exp(ell, comps.splits, x.dtype)
    return out.to(x.dtype), (probs, feats, xc, mc, Pm, exact)


def _chunk_backward(grad, comps: Components, saved):
    """The chunk's sums for the backward pass, in float64: (∂/∂x (B, n, d), c (B, K), v (B, K, d), C).

    grad (B, n, #splits) is the upstream gradient of each mixture's log-density; with a_nk = grad r_nk:
    c_k = Σ_n a_nk, v_k = Σ_n a_nk (x_n − m_k), C_k = Σ_n a_nk (x_n − m_k)(x_n − m_k)ᵀ ((B, K, d, d), or
    its diagonal (B, K, d) for diagonal components). All three are additive over chunks.
    """
    probs, feats, xc, mc, Pm, exact = saved
    wd, d, splits, cd = comps.loc.dtype, comps.d, comps.splits, feats.dtype
    grad = grad.to(cd)
    a = probs.to(cd, copy=True)  # the one (points × components) buffer of the backward pass, written in place
    if len(splits) == 1:
        a.mul_(grad)
    elif len(set(splits)) == 1:  # each component gets its own mixture's upstream gradient
        a.view(*a.shape[:-1], len(splits), splits[0]).mul_(grad.unsqueeze(-1))
    else:
        a.mul_(grad.repeat_interleave(torch.tensor(splits, device=grad.device), dim=-1, output_size=sum(splits)))
    if exact is not None:
        b, n, k = exact
        a_exact = a[b, n, k].to(wd)
        a.index_put_(exact, a.new_zeros(()))  # their terms come from the exact differences below
    sums = torch.bmm(a.mT, feats).to(wd)  # (B, K, T + d): Σ_n a_nk [x̃x̃, x̃]
    c = a.sum(-2).to(wd)  # (B, K)
    T = sums.shape[-1] - d
    s = sums[..., T:]
    cm = c.unsqueeze(-1) * mc
    v = s - cm  # Σ_n a (x̃ − m̃)
    if comps.full:
        *_, slot = _pairs(d, str(xc.device), wd)
        second = sums[..., slot].view(*sums.shape[:-1], d, d)  # Σ_n a x̃x̃ᵀ (B, K, d, d), slot < T
        sm = (s - 0.5 * cm).unsqueeze(-1) * mc.unsqueeze(-2)
        C = second - sm - sm.mT  # Σ a x̃x̃ᵀ − s m̃ᵀ − m̃ sᵀ + c m̃m̃ᵀ
    else:
        C = sums[..., :T] - (2.0 * s - cm) * mc  # the diagonal of C
    u = torch.bmm(a, torch.cat([comps.P_pairs, Pm], -1).to(cd))  # (B, n, T + d): Σ_k a_nk [P_k (i ≤ j), P_k m̃_k]
    if comps.full:  # (Σ_k a_nk P_k) x̃_n, the symmetric matrix rebuilt from its pairs
        xc_A = (u[..., slot].view(*u.shape[:-1], d, d).to(wd) * xc.unsqueeze(-2)).sum(-1)
    else:
        xc_A = u[..., :-d].to(wd) * xc
    dx = u[..., -d:].to(wd) - xc_A  # −Σ_k a_nk P_k (x̃_n − m̃_k)
    if exact is not None:
        diff = xc[b, n] - mc[b, k]  # (F, d)
        dx.index_put_((b, n), -a_exact[:, None] * comps.times_precision(diff, b, k), accumulate=True)
        c.index_put_((b, k), a_exact, accumulate=True)
        v.index_put_((b, k), a_exact[:, None] * diff, accumulate=True)
        outer = diff[..., :, None] * diff[..., None, :] if comps.full else diff.square()
        C.index_put_((b, k), a_exact.view(-1, *([1] * (outer.dim() - 1))) * outer, accumulate=True)
    return dx, c, v, C


def kernel_forward(x: torch.Tensor, comps: Components, max_chunk_entries: int = MAX_CHUNK_ENTRIES):
    """Without autograd: [log p_j(x_n)] (B, n, #splits) in x's dtype, and the state `kernel_backward` needs.

    Points go in chunks of at most `max_chunk_entries` (B × n_chunk × K) entries, each centred at its
    own mean: keep points from one region together (consecutive) for the best centring.
    """
    step = max(1, max_chunk_entries // max(1, comps.loc.shape[0] * comps.loc.shape[-2]))  # points per chunk
    if x.shape[1] <= step:
        out, saved = _chunk_forward(x, comps)
        return out, [saved]
    outs, state = zip(*(_chunk_forward(x[:, s : s + step], comps) for s in range(0, x.shape[1], step)))
    return torch.cat(outs, 1), list(state)


def kernel_backward(grad: torch.Tensor, comps: Components, state):
    """From the upstream gradient (B, n, #splits): ∂/∂x (B, n, d) and the component sums c, v, C (float64)."""
    if len(state) == 1:
        return _chunk_backward(grad, comps, state[0])
    step = state[0][1].shape[1]
    parts = [_chunk_backward(grad[:, i * step : (i + 1) * step], comps, saved) for i, saved in enumerate(state)]
    dx = torch.cat([p[0] for p in parts], 1)
    return dx, *(sum(p[j] for p in parts) for j in (1, 2, 3))


def part_gradients(comps: Components, c, v, C, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """∂/∂(log-weights, loc, scale) of mixture `index` in `comps.raw`, from the component sums (module docstring)."""
    log_w, loc, scale, full = comps.raw[index]
    start = sum(comps.splits[:index])
    part = slice(start, start + comps.splits[index])
    c, v, C, P = c[:, part], v[:, part], C[:, part], comps.P[:, part]
    if comps.full and not full:  # a diagonal mixture promoted to factors: P, L and C's diagonals suffice
        std = comps.tril[:, part].diagonal(dim1=-2, dim2=-1)
        dm = precision_times(P.diagonal(dim1=-2, dim2=-1), v, full=False)
        dL = C.diagonal(dim1=-2, dim2=-1) / std**3 - c.unsqueeze(-1) / std
    elif comps.full:  # ∂/∂m = P v, ∂/∂L = tril(P C Wᵀ) − diag(c / L_ii), Wᵀ = L⁻ᵀ = P L
        L = comps.tril[:, part]
        dm = precision_times(P, v, full=True)
        P3 = P.flatten(0, 1)
        dL = bmm(bmm(P3, C.flatten(0, 1)), bmm(P3, L.flatten(0, 1))).tril_().view(L.shape)
        dL.diagonal(dim1=-2, dim2=-1).sub_(c.unsqueeze(-1) / L.diagonal(dim1=-2, dim2=-1))
    else:
        std = comps.std[:, part]
        dm = precision_times(P, v, full=False)
        dL = C / std**3 - c.unsqueeze(-1) / std
    return c.to(log_w.dtype), dm.to(loc.dtype), dL.to(scale.dtype)


def raw_gradients(comps: Components, c, v, C) -> list[torch.Tensor]:
    """∂/∂(log-weights, loc, scale) of every mixture in `comps.raw`, in order."""
    return [g for i in range(len(comps.raw)) for g in part_gradients(comps, c, v, C, i)]


class _MixtureLogDensity(torch.autograd.Function):
    """[log p_j(x_n)] for the mixtures stacked in `comps`: x (B, n, d) -> (B, n, #splits), one autograd node.

    Differentiable w.r.t. x and every mixture's raw (log-weights, loc, scale); see the module docstring.
    """

    @staticmethod
    def forward(ctx, x, comps: Components, max_chunk_entries: int, *raw):
        out, state = kernel_forward(x, comps, max_chunk_entries)
        ctx.comps, ctx.state = comps, state
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        dx, c, v, C = kernel_backward(grad, ctx.comps, ctx.state)
        return dx.to(grad.dtype) if ctx.needs_input_grad[0] else None, None, None, *raw_gradients(ctx.comps, c, v, C)


def mixture_log_probs(x: torch.Tensor, comps: Components, max_chunk_entries: int = MAX_CHUNK_ENTRIES):
    """[log p_j(x_n)] for each mixture j stacked in comps: points x (B, n, d) -> list of (B, n)."""
    raw = [t for log_w, loc, scale, _ in comps.raw for t in (log_w, loc, scale)]
    return _MixtureLogDensity.apply(x, comps, max_chunk_entries, *raw).unbind(-1)
