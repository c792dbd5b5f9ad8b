"""A Gaussian with a block-tridiagonal precision, solved by block cyclic reduction.

    mean, cov, cross, logdet = block_tridiagonal_gaussian(D, U, eta)
    mean = block_tridiagonal_mean(D, U, eta)     # the means alone (about half the work)

For the information form N⁻¹(η, Λ) of a Markov chain z_1 … z_n of d-vectors, Λ has blocks D_k on its
diagonal (B, n, d, d) and U_k = Λ_{k,k+1} above it (B, n−1, d, d); η (B, n, d, 1). This returns the
moments of Σ = Λ⁻¹ that a chain's posterior needs — the means Σ η, the marginal covariances Σ_kk, the
cross covariances Σ_{k+1,k} = Cov(z_{k+1}, z_k) — and log det Λ, without forming Σ: O(n·d³) time and
O(n·d²) memory, in ⌈log₂ n⌉ levels of batched operations and no Python loop over positions.

Each level eliminates the odd positions (1, 3, …; docs/method.md §6). With W = D_k⁻¹ [U_{k−1}ᵀ | U_k | η_k]
for an odd k between its even neighbours k−1 and k+1, the even positions form a chain of their own,

    D'_{k−1} = D_{k−1} − U_{k−1} D_k⁻¹ U_{k−1}ᵀ − …,   D'_{k+1} = D_{k+1} − U_kᵀ D_k⁻¹ U_k − …,
    U'_{k−1} = −U_{k−1} D_k⁻¹ U_k,   η'_{k±1} = η_{k±1} − (the same products with η_k),

whose moments (by recursion) give the odd ones back (x_k = D_k⁻¹ η_k − W_l x_{k−1} − W_r x_{k+1}):

    Σ_{k,k−1} = −W_l Σ_{k−1,k−1} − W_r Σ_{k+1,k−1},   Σ_{k,k+1} = −W_l Σ_{k−1,k+1} − W_r Σ_{k+1,k+1},
    Σ_kk = D_k⁻¹ − W_l Σ_{k−1,k} − W_r Σ_{k+1,k},   μ_k = D_k⁻¹ η_k − W_l μ_{k−1} − W_r μ_{k+1}

(W_l = D_k⁻¹ U_{k−1}ᵀ, W_r = D_k⁻¹ U_k). It is block Cholesky in an odd-even order, stable for a
symmetric positive definite Λ, and log det Λ is the sum of the eliminated blocks' log-determinants.
The recursion ends at a chain of at most DENSE_UP_TO numbers (or two positions), solved as one dense
Cholesky: one call where the last levels would make several small ones (the pendulum's 32 frames × 2
states are one 64 × 64 factorization).
"""

from __future__ import annotations

import torch
from torch import Tensor

from anmc.codegen.runtime import constant_tensor

DENSE_UP_TO = 64  # a chain of n·d at most this many numbers is solved densely (one Cholesky, not log₂ n levels)


def block_tridiagonal_gaussian(diag: Tensor, upper: Tensor, eta: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Moments of N(Λ⁻¹ η, Λ⁻¹) for Λ block-tridiagonal with diagonal blocks `diag` (B, n, d, d), blocks
    `upper` (B, n−1, d, d) above the diagonal (Λ_{k,k+1}; Λ_{k+1,k} is its transpose) and η `eta` (B, n, d, 1):
    means (B, n, d, 1), covariances (B, n, d, d), Cov(z_{k+1}, z_k) (B, n−1, d, d) and log det Λ (B,).
    Only the lower triangles of the diagonal blocks are read (Cholesky). The results are contiguous: a
    `randn_like` of a permuted layout would fill other positions than the same call on another path."""
    mean, cov, cross, logdet = _reduce(diag, -upper, eta)
    return mean.contiguous(), cov.contiguous(), cross.contiguous(), logdet


def block_tridiagonal_mean(diag: Tensor, upper: Tensor, eta: Tensor) -> Tensor:
    """The means Λ⁻¹ η (B, n, d, 1) alone, for the same arguments as `block_tridiagonal_gaussian`: the same
    elimination, without the covariances' way back (and, for a short chain, a Cholesky solve instead of
    the inverse). What an iteration that only moves points needs (`anmc.posterior.smoother`'s search for
    the linearization points): about half the work."""
    return _reduce_mean(diag, -upper, eta).contiguous()


def _reduce(diag: Tensor, coupling: Tensor, eta: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`block_tridiagonal_gaussian` with the blocks above the diagonal given as N_k = −Λ_{k,k+1} (a Markov
    chain's precision couples neighbours negatively), which keeps every sign below positive."""
    _, n, d, _ = diag.shape
    if n <= 2 or n * d <= DENSE_UP_TO:
        return _dense(diag, coupling, eta)
    if n % 2 == 0:
        mean, cov, cross, logdet = _reduce(*_made_odd(diag, coupling, eta))
        return mean.split([n, 1], 1)[0], cov.split([n, 1], 1)[0], cross.split([n - 1, 1], 1)[0], logdet
    half = n // 2
    chol, d_inv, v_in, v_out, v_eta, reduced_diag, before_n, reduced_eta = _eliminate_odd(diag, coupling, eta)
    mean_r, cov_r, cross_r, logdet = _reduce(reduced_diag, before_n, reduced_eta)
    # the odd positions from their neighbours' moments: one product for both cross covariances and the mean
    c_before, c_after = cov_r.split([half, 1], 1)[0], cov_r.split([1, half], 1)[1]
    m_before, m_after = mean_r.split([half, 1], 1)[0], mean_r.split([1, half], 1)[1]
    neighbours = torch.cat([torch.cat([c_before, cross_r.mT, m_before], -1), torch.cat([cross_r, c_after, m_after], -1)], -2)
    v = torch.cat([v_in, v_out], -1)
    s_before, s_after, v_mean = (v @ neighbours).split([d, d, 1], -1)  # Σ_{k,k−1}, Σ_{k,k+1}, V [μ_{k−1}; μ_{k+1}]
    cov_odd = d_inv + v @ torch.cat([s_before.mT, s_after.mT], -2)
    cov_odd = 0.5 * (cov_odd + cov_odd.mT)
    mean = _interleave(mean_r, v_eta + v_mean, half)
    cov = _interleave(cov_r, cov_odd, half)
    cross = torch.stack([s_before, s_after.mT], 2).flatten(1, 2)  # Σ_{k,k−1}, then Σ_{k+1,k}
    return mean, cov, cross, logdet + _logdet(chol).sum(1)


def _made_odd(diag: Tensor, coupling: Tensor, eta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A chain of even length with one decoupled position appended (identity block, no coupling, η = 0):
    then every odd position has two neighbours. Its moments are those of the chain plus an independent
    N(0, I), cut off again by the caller."""
    b, _, d, _ = diag.shape
    eye = _eye(d, diag).expand(b, 1, d, d)
    return torch.cat([diag, eye], 1), torch.cat([coupling, coupling.new_zeros(b, 1, d, d)], 1), torch.cat([eta, eta.new_zeros(b, 1, d, 1)], 1)


def _eliminate_odd(diag: Tensor, coupling: Tensor, eta: Tensor) -> tuple[Tensor, ...]:
    """One level of the reduction (n odd): the odd positions' Cholesky factors, D⁻¹, V = −W (into and out of
    each odd position) and D⁻¹ η, and the chain of the even positions that eliminating them leaves
    (its diagonal blocks, couplings and η)."""
    _, n, d, _ = diag.shape
    half = n // 2  # odd positions 1, 3, …, n − 2; even 0, 2, …, n − 1 (half + 1 of them)
    d_even, d_odd, d_last = _even_odd(diag, half)
    e_even, e_odd, e_last = _even_odd(eta, half)
    n_in, n_out = coupling.unflatten(1, (half, 2)).unbind(2)  # N_{k−1} (into odd k), N_k (out of it)
    chol = torch.linalg.cholesky(d_odd)
    d_inv = torch.cholesky_inverse(chol)  # then products: faster here than a solve with as many columns
    v_in, v_out, v_eta = (d_inv @ torch.cat([n_in.mT, n_out, e_odd], -1)).split([d, d, 1], -1)  # V = −W, and D⁻¹ η
    # what eliminating k takes from its neighbours k − 1 (before it) and k + 1 (after it)
    before_dd, before_n, before_e = (n_in @ torch.cat([v_in, v_out, v_eta], -1)).split([d, d, 1], -1)
    after_dd, after_e = (n_out.mT @ torch.cat([v_out, v_eta], -1)).split([d, 1], -1)
    reduced_diag = torch.cat([d_even, d_last], 1) - _shifted(before_dd, after_dd)
    reduced_eta = torch.cat([e_even, e_last], 1) + _shifted(before_e, after_e)
    return chol, d_inv, v_in, v_out, v_eta, reduced_diag, before_n, reduced_eta


def _reduce_mean(diag: Tensor, coupling: Tensor, eta: Tensor) -> Tensor:
    """`_reduce`'s means alone (`block_tridiagonal_mean`)."""
    b, n, d, _ = diag.shape
    if n <= 2 or n * d <= DENSE_UP_TO:
        return torch.cholesky_solve(eta.reshape(b, n * d, 1), torch.linalg.cholesky(_dense_precision(diag, coupling))).reshape(b, n, d, 1)
    if n % 2 == 0:
        return _reduce_mean(*_made_odd(diag, coupling, eta)).split([n, 1], 1)[0]
    half = n // 2
    _, _, v_in, v_out, v_eta, reduced_diag, before_n, reduced_eta = _eliminate_odd(diag, coupling, eta)
    mean_r = _reduce_mean(reduced_diag, before_n, reduced_eta)
    neighbours = torch.cat([mean_r.split([half, 1], 1)[0], mean_r.split([1, half], 1)[1]], -2)
    return _interleave(mean_r, v_eta + torch.cat([v_in, v_out], -1) @ neighbours, half)


def _dense(diag: Tensor, coupling: Tensor, eta: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A short chain (n·d ≤ DENSE_UP_TO, or at most two positions) as one dense (n·d)² Cholesky: one call where
    the reduction would make several levels of small ones."""
    b, n, d, _ = diag.shape
    k = torch.arange(n, device=diag.device)
    chol = torch.linalg.cholesky(_dense_precision(diag, coupling))
    cov = torch.cholesky_inverse(chol)
    blocks = cov.reshape(b, n, d, n, d)
    mean = (cov @ eta.reshape(b, n * d, 1)).reshape(b, n, d, 1)
    return mean, blocks[:, k, :, k, :].movedim(0, 1), blocks[:, k[1:], :, k[:-1], :].movedim(0, 1), _logdet(chol)


def _dense_precision(diag: Tensor, coupling: Tensor) -> Tensor:
    """The (B, n·d, n·d) matrix of the blocks: `diag` on the diagonal, −`coupling` beside it."""
    b, n, d, _ = diag.shape
    k = torch.arange(n, device=diag.device)
    lam = diag.new_zeros(b, n, d, n, d)
    lam[:, k, :, k, :] = diag.movedim(1, 0)
    lam[:, k[:-1], :, k[1:], :] = -coupling.movedim(1, 0)
    lam[:, k[1:], :, k[:-1], :] = -coupling.mT.movedim(1, 0)
    return lam.reshape(b, n * d, n * d)


def _even_odd(x: Tensor, half: int) -> tuple[Tensor, Tensor, Tensor]:
    """x (B, 2·half + 1, …) -> positions 0, 2, …, 2·half − 2; 1, 3, …, 2·half − 1; and 2·half."""
    pairs, last = x.split([2 * half, 1], 1)
    even, odd = pairs.unflatten(1, (half, 2)).unbind(2)
    return even, odd, last


def _shifted(before: Tensor, after: Tensor) -> Tensor:
    """(B, half, …) each -> (B, half + 1, …): `before` at positions 0 … half − 1 plus `after` at 1 … half."""
    zero = before.new_zeros(before.shape[0], 1, *before.shape[2:])
    return torch.cat([before, zero], 1) + torch.cat([zero, after], 1)


def _interleave(even: Tensor, odd: Tensor, half: int) -> Tensor:
    """even (B, half + 1, …), odd (B, half, …) -> (B, 2·half + 1, …) in position order."""
    head, last = even.split([half, 1], 1)
    return torch.cat([torch.stack([head, odd], 2).flatten(1, 2), last], 1)


def _logdet(chol: Tensor) -> Tensor:
    """log det of A = L Lᵀ from its Cholesky factors (…, d, d), summed over d: (…)."""
    return 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)


def _eye(d: int, like: Tensor) -> Tensor:
    return constant_tensor(("tridiagonal eye", d, like.dtype, like.device), lambda: torch.eye(d, dtype=like.dtype, device=like.device))
