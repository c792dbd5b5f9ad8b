"""Numerical helpers shared by the prior: dtype-scaled jitter and a Cholesky that does not give up.

Jitter is relative to each diagonal entry, `Σ + diag(c · eps · diag Σ)`, i.e. a jitter on the correlation
matrix: Cholesky's accuracy depends on the conditioning of the correlation matrix (van der Sluis), so this
keeps a variance of 1e-8 next to one of 1e4 intact, where a jitter relative to the trace would swamp it.
"""

from __future__ import annotations

import torch

LOG_2PI = 1.8378770664093453  # log(2 pi)
JITTER_ULPS = 16.0  # relative jitter on the diagonal, in units of the dtype's machine epsilon


def eps(dtype: torch.dtype) -> float:
    """Machine epsilon of a floating dtype."""
    return torch.finfo(dtype).eps


_JITTER: dict = {}


def jitter_factor(d: int, dtype: torch.dtype, device) -> torch.Tensor:
    """The (d, d) matrix 1 + 16 eps(dtype) I: `cov * factor` adds the relative jitter in one operation."""
    key = (d, dtype, str(device))
    if key not in _JITTER:
        with torch.inference_mode(False):  # a tensor made in inference mode could never meet autograd later
            _JITTER[key] = 1.0 + JITTER_ULPS * eps(dtype) * torch.eye(d, dtype=dtype, device=device)
    return _JITTER[key]


def cholesky(cov: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor of `cov + jitter`, `(..., d, d) -> (..., d, d)`.

    Starts with a relative jitter of 16 eps(dtype) (every diagonal entry times 1 + 16 eps, one
    multiplication); each matrix that still fails gets 100x more (up to 1e8 x), and on the last try an
    absolute floor of the same size times its mean diagonal. Raises a ValueError counting the matrices
    that are still not positive definite (NaN or inf inputs).
    """
    try:
        return torch.linalg.cholesky(cov * jitter_factor(cov.shape[-1], cov.dtype, cov.device))
    except torch.linalg.LinAlgError:
        pass
    diag = cov.diagonal(dim1=-2, dim2=-1).detach()
    rel = torch.full_like(diag[..., :1], JITTER_ULPS * eps(cov.dtype))
    floor = torch.zeros_like(diag[..., :1])
    L, info = torch.linalg.cholesky_ex(cov + torch.diag_embed(rel * diag))
    for tries in range(1, 6):
        failed = (info > 0)[..., None]
        if not bool(failed.any()):
            return L
        rel = torch.where(failed, rel * 100.0, rel)
        if tries == 5:
            floor = torch.where(failed, diag.mean(-1, keepdim=True), floor)
        L, info = torch.linalg.cholesky_ex(cov + torch.diag_embed(rel * (diag + floor)))
    if bool((info > 0).any()):
        raise ValueError(
            f"{int((info > 0).sum())} covariance matrices are not positive definite even after jitter "
            "(are there NaNs or infinities in the means, stds or Jacobians?)"
        )
    return L
