"""Noise-driven rollouts of a prior from its initial distribution (`anmc simulate`), and the check that a rollout
stayed finite (also `anmc intervene`'s)."""

from __future__ import annotations

import torch

from anmc.codegen.compile import CompiledPrior
from anmc.errors import UserError


class NonFiniteRollout(UserError):
    """A rollout reached inf or nan; the message names the first step, run and states."""


def simulate(prior: CompiledPrior, steps: int, seed: int = 0, runs: int = 1, noise: bool = True) -> torch.Tensor:
    """z_0 ~ initial prior, z_t = f(z_{t-1}) + eps_t (eps off with noise=False): (runs, steps, d) float64.

    Raises NonFiniteRollout (naming the first frame, run and states) when any state leaves the floats."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    module = prior.module().double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z0 = module.sample_initial(runs, generator=gen)
        z = module.rollout(z0, steps, noise=noise, generator=gen)
    check_finite(z, prior.state_names)
    return z


def check_finite(
    z: torch.Tensor,
    names,
    what: str = "the rollout",
    unit: str = "run",
    advice: str = "the dynamics diverge from this start: check the equations, lower dt or add substeps, or roll out fewer frames.",
) -> None:
    """Raise NonFiniteRollout at the first frame of `z` (runs, steps, d) holding inf or nan: `what` blew up at
    frame t of `unit` r, which states, their values the frame before, then `advice`."""
    bad = ~torch.isfinite(z)
    if not bad.any():
        return
    frames = bad.any(-1).any(0).nonzero()
    t = int(frames[0])
    run = int(bad[:, t].any(-1).nonzero()[0])
    states = [n for n, b in zip(names, bad[run, t].tolist()) if b]
    before = ", ".join(f"{n} = {float(v):.4g}" for n, v in zip(names, z[run, t - 1])) if t > 0 else "its initial draw"
    raise NonFiniteRollout(
        f"{what} blew up at frame {t} of {unit} {run}: {', '.join(states)} became "
        f"{float(z[run, t, list(names).index(states[0])])} (the frame before: {before}); {advice}"
    )
