"""Batched Gaussian mixtures with Cholesky (full) or std-vector (diagonal) covariances.

    p(z) = Σ_k w_k N(z | m_k, L_k L_kᵀ)

| field | symbol | shape |
|---|---|---|
| `log_weights` | log w_k (normalized) | `(*batch, K)` |
| `loc` | m_k | `(*batch, K, d)` |
| `scale_tril` | L_k, lower triangular, positive diagonal (full covariances) | `(*batch, K, d, d)` |
| `scale_diag` | σ_k with L_k = diag(σ_k) (diagonal covariances) | `(*batch, K, d)` |
"""

from __future__ import annotations

import math

import torch

from anmc.prior._logdensity import Components, bmm, mixture_log_probs


def broadcast_shapes(*shapes) -> torch.Size:
    """`torch.broadcast_shapes`, without its cost (tens of microseconds) when the shapes already agree."""
    first = shapes[0]
    if all(s == first for s in shapes[1:]):
        return torch.Size(first)
    return torch.broadcast_shapes(*shapes)


class GaussianMixture:
    """A batch of K-component Gaussian mixtures in R^d; exactly one of `scale_tril`, `scale_diag`.

    `log_weights` need not be normalized (they are shifted by their logsumexp); they, `loc` and the
    scale broadcast against each other to a common batch shape.
    """

    def __init__(self, log_weights, loc, *, scale_tril=None, scale_diag=None):
        if (scale_tril is None) == (scale_diag is None):
            raise ValueError("give exactly one of scale_tril (full covariances) or scale_diag (std vectors)")
        if loc.dim() < 2:
            raise ValueError(f"loc must be (*batch, K, d), got shape {tuple(loc.shape)}")
        scale = scale_tril if scale_tril is not None else scale_diag
        scale_batch = scale.shape[:-2] if scale_tril is not None else scale.shape[:-1]
        batch_k = broadcast_shapes(log_weights.shape, loc.shape[:-1], scale_batch)
        d = loc.shape[-1]
        log_weights = log_weights - torch.logsumexp(log_weights, dim=-1, keepdim=True)
        self.log_weights = log_weights if log_weights.shape == batch_k else log_weights.expand(batch_k)
        self.loc = loc if loc.shape[:-1] == batch_k else loc.expand(*batch_k, d)
        if scale_tril is not None and scale_tril.shape[:-2] != batch_k:
            scale_tril = scale_tril.expand(*batch_k, d, d)
        if scale_diag is not None and scale_diag.shape[:-1] != batch_k:
            scale_diag = scale_diag.expand(*batch_k, d)
        self.scale_tril, self.scale_diag = scale_tril, scale_diag

    @classmethod
    def _normalized(cls, log_weights, loc, *, scale_tril=None, scale_diag=None) -> GaussianMixture:
        """A mixture from fields that already have its shapes and normalized log-weights (no checks, no copies)."""
        out = object.__new__(cls)
        out.log_weights, out.loc, out.scale_tril, out.scale_diag = log_weights, loc, scale_tril, scale_diag
        return out

    @classmethod
    def gaussian(cls, loc, *, scale_tril=None, scale_diag=None) -> GaussianMixture:
        """A batch of single Gaussians as one-component mixtures: loc (*batch, d) -> K = 1."""
        return cls(
            torch.zeros(loc.shape[:-1] + (1,), dtype=loc.dtype, device=loc.device),
            loc[..., None, :],
            scale_tril=None if scale_tril is None else scale_tril[..., None, :, :],
            scale_diag=None if scale_diag is None else scale_diag[..., None, :],
        )

    # ------------------------------------------------------------------ shape and moments

    @property
    def batch_shape(self) -> torch.Size:
        return self.loc.shape[:-2]

    @property
    def num_components(self) -> int:
        return self.loc.shape[-2]

    @property
    def d(self) -> int:
        return self.loc.shape[-1]

    @property
    def is_diagonal(self) -> bool:
        return self.scale_diag is not None

    @property
    def weights(self) -> torch.Tensor:
        return self.log_weights.exp()

    @property
    def dtype(self) -> torch.dtype:
        return self.loc.dtype

    @property
    def device(self) -> torch.device:
        return self.loc.device

    def tril(self) -> torch.Tensor:
        """The lower Cholesky factors L_k, `(*batch, K, d, d)` (diag_embed of σ_k when diagonal)."""
        return self.scale_tril if self.scale_diag is None else torch.diag_embed(self.scale_diag)

    def covariance(self) -> torch.Tensor:
        """Component covariances L_k L_kᵀ, `(*batch, K, d, d)`."""
        L = self.tril()
        return L @ L.mT

    def to(self, *args, **kwargs) -> GaussianMixture:
        """A copy on another device / dtype (same arguments as `Tensor.to`)."""
        return GaussianMixture(
            self.log_weights.to(*args, **kwargs),
            self.loc.to(*args, **kwargs),
            scale_tril=None if self.scale_tril is None else self.scale_tril.to(*args, **kwargs),
            scale_diag=None if self.scale_diag is None else self.scale_diag.to(*args, **kwargs),
        )

    def expand(self, batch_shape) -> GaussianMixture:
        """The same mixtures broadcast to `batch_shape`."""
        b, k, d = tuple(batch_shape), self.num_components, self.d
        return GaussianMixture(
            self.log_weights.expand(*b, k),
            self.loc.expand(*b, k, d),
            scale_tril=None if self.scale_tril is None else self.scale_tril.expand(*b, k, d, d),
            scale_diag=None if self.scale_diag is None else self.scale_diag.expand(*b, k, d),
        )

    def pool(self) -> GaussianMixture:
        """Merge the last batch dimension into the components: p̄ = (1/N) Σ_i p_i.

        `(*batch, N) mixtures of K -> (*batch) mixtures of N·K`, weights w_ik / N.
        """
        if not self.batch_shape:
            raise ValueError("pool() needs a batch dimension to merge into the components")
        b, k, d = self.batch_shape[:-1], self.num_components, self.d
        n = self.batch_shape[-1]
        return GaussianMixture._normalized(
            self.log_weights.reshape(*b, n * k) - math.log(n),
            self.loc.reshape(*b, n * k, d),
            scale_tril=None if self.scale_tril is None else self.scale_tril.reshape(*b, n * k, d, d),
            scale_diag=None if self.scale_diag is None else self.scale_diag.reshape(*b, n * k, d),
        )

    # ------------------------------------------------------------------ sampling and density

    def sample_noise(self, samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal ε for `samples` draws per component, `(*batch, K, samples, d)`."""
        shape = (*self.batch_shape, self.num_components, samples, self.d)
        return torch.randn(shape, generator=generator, dtype=self.dtype, device=self.device)

    def transform_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """z = m_k + L_k ε for ε `(*batch, K, S, d)` -> `(*batch, K, S, d)`."""
        full = self.scale_tril is not None
        return draws(self.loc, self.scale_tril if full else self.scale_diag, full, noise)

    def rsample(self, samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """S reparameterized draws from **every** component (stratified), `(S, *batch, K, d)`.

        z_sk = m_k + L_k ε_sk, ε_sk ~ N(0, I) independent; gradients flow to loc and the scale.
        """
        z = self.transform_noise(self.sample_noise(samples, generator))
        return z.movedim(-2, 0)

    def components(self) -> tuple:
        """(log_weights, loc, scale, full) with the batch flattened, `(B, K, ...)`: the kernel's raw inputs."""
        k, d = self.num_components, self.d
        if self.scale_tril is not None:
            scale = self.scale_tril.reshape(-1, k, d, d)
        else:
            scale = self.scale_diag.reshape(-1, k, d)
        return self.log_weights.reshape(-1, k), self.loc.reshape(-1, k, d), scale, self.scale_tril is not None

    def log_prob_points(self, points: torch.Tensor) -> torch.Tensor:
        """log p(z) for n points per mixture: points `(*batch, n, d)` -> `(*batch, n)`.

        The fast path used by the KL; see `anmc.prior._logdensity` for the numerics.
        """
        return log_prob_points(points, self)[0]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) = logsumexp_k [log w_k + log N(z | m_k, L_k L_kᵀ)], `(*sample, *batch, d) -> (*sample, *batch)`.

        Like `torch.distributions`: leading dimensions of z beyond the batch shape are sample
        dimensions; the rest broadcast against the batch shape.
        """
        nb = len(self.batch_shape)
        ns = max(0, z.dim() - 1 - nb)
        sample = z.shape[:ns]
        batch = broadcast_shapes(z.shape[ns:-1], self.batch_shape)
        zb = z.expand(*sample, *batch, self.d)
        pts = zb.movedim(tuple(range(ns)), tuple(range(len(batch), len(batch) + ns)))  # (*batch, *sample, d)
        n = math.prod(sample)
        out = self.log_prob_points(pts.reshape(*batch, n, self.d)).reshape(*batch, *sample)
        return out.movedim(tuple(range(len(batch), len(batch) + ns)), tuple(range(ns)))

    def __repr__(self) -> str:
        kind = "diagonal" if self.is_diagonal else "full"
        return (
            f"GaussianMixture(batch_shape={tuple(self.batch_shape)}, K={self.num_components}, d={self.d}, "
            f"{kind}, dtype={self.dtype}, device={self.device})"
        )


def draws(loc, scale, full: bool, noise: torch.Tensor) -> torch.Tensor:
    """z = m_k + L_k ε for noise `(*batch, K, S, d)`, loc `(*batch, K, d)` and scale L `(*batch, K, d, d)` (full)
    or σ `(*batch, K, d)` -> `(*batch, K, S, d)`."""
    return loc.unsqueeze(-2) + (bmm(noise, scale.mT) if full else scale.unsqueeze(-2) * noise)


def log_prob_points(points: torch.Tensor, *mixtures: GaussianMixture) -> list[torch.Tensor]:
    """[log p_j(z)] for several mixtures at the same points in one pass: points `(*batch, n, d)` -> `(*batch, n)` each.

    The mixtures' components share one GEMM per chunk (and one set of numerical safeguards); each
    mixture gets its own logsumexp. Batch shapes broadcast against each other and the points.
    """
    batch = broadcast_shapes(points.shape[:-2], *(m.batch_shape for m in mixtures))
    n, d = points.shape[-2], points.shape[-1]
    comps = Components([(m.expand(batch) if m.batch_shape != batch else m).components() for m in mixtures])
    pts = (points if points.shape[:-2] == batch else points.expand(*batch, n, d)).reshape(-1, n, d)
    return [lp.reshape(*batch, n) for lp in mixture_log_probs(pts, comps)]
