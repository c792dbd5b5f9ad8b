"""Random mixture parameters shared by the prior tests: wide variances, far-apart components."""

import torch

F64 = torch.float64


def random_components(K: int, d: int, full: bool, g: torch.Generator, weight_scale: float = 1.0):
    """(log-weights, means, scales) in float64: variances 1e-8..1e4 per coordinate, means up to 1e3
    standard deviations from 0, full Cholesky factors of a random correlation matrix or std vectors."""
    std = 10.0 ** (0.5 * torch.empty(K, d, dtype=F64).uniform_(-8.0, 4.0, generator=g))
    loc = 1e3 * std * (2 * torch.rand(K, d, generator=g, dtype=F64) - 1)
    logw = weight_scale * torch.randn(K, generator=g, dtype=F64)
    if not full:
        return logw, loc, std
    A = torch.randn(K, d, d, generator=g, dtype=F64)
    corr = A @ A.mT + d * torch.eye(d, dtype=F64)
    s = corr.diagonal(dim1=-2, dim2=-1).sqrt()
    return logw, loc, std[..., None] * torch.linalg.cholesky(corr / s[..., :, None] / s[..., None, :])
