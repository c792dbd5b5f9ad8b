"""Noise-driven rollouts of a prior from its initial distribution (`anmc simulate`)."""

from __future__ import annotations

import torch

from anmc.codegen.compile import CompiledPrior


def simulate(prior: CompiledPrior, steps: int, seed: int = 0, runs: int = 1, noise: bool = True) -> torch.Tensor:
    """z_0 ~ initial prior, z_t = f(z_{t-1}) + eps_t (eps off with noise=False): (runs, steps, d) float64."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    module = prior.module().double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z0 = module.sample_initial(runs, generator=gen)
        return module.rollout(z0, steps, noise=noise, generator=gen)
