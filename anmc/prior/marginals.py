"""Where the prior puts the state k frames after a clip starts, and a prior whose first frame is there.

    mean, std = state_marginals(module, frames)          # (frames, d) each: frame 0 is the initial distribution
    window_prior = StartedPrior(module, mean[k], std[k])  # the module, its first-frame prior N(mean_k, std_k²)

A training window that starts k frames into a clip gets, by default, the initial distribution as the
prior of its first frame (`--start-prior initial`): right for k = 0, and for any k when the states stay
where they start (a pendulum swinging about its rest). A system that drifts (an object falling toward
the camera, a block sliding down an incline) is k frames later somewhere the initial distribution does
not cover, and every late window's first frame is then many stds from its prior. `--start-prior
rollout` gives window k the prior's own marginal at frame k instead (docs/method.md §6): the mean and
std over `samples` clips simulated from the declared initial distribution with the declared noise,
z_0 ~ p(z_0), z_j = f(z_{j−1}) + ε_j (a fixed seed, so the same params give the same marginals), a
Gaussian N(mean_k, diag std_k²) since the smoother's first-frame prior is one. Simulated, not
linearized: for a linear f the two agree (the looming object's fall), but a pendulum's swings of
different amplitudes drift out of phase, and the linearized propagation (m_{j+1} = f(m_j),
P_{j+1} = J P_j Jᵀ + Q) kept rotating one ellipse, its θ std 0.58 after 40 frames where 20000
simulated swings spread 0.79. The marginals carry no gradient: they say where a window may start,
while the transitions inside it are what trains the physical params.
"""

from __future__ import annotations

import torch

SAMPLES = 1024  # simulated clips per marginal: a std within ~2% (1/sqrt(2 * SAMPLES)); 21 ms for 128 frames of
# the looming object on one thread (4096: 56 ms), computed once per training step


@torch.no_grad()
def simulated_clips(module, frames: int, samples: int = SAMPLES, seed: int = 0) -> torch.Tensor:
    """`samples` clips of `frames` frames simulated from the prior, z_0 ~ p(z_0), z_j = f(z_{j−1}) + ε_j,
    float64 `(samples, frames, d)` (a fixed seed: the same params give the same clips)."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    gen = torch.Generator(device=module.initial_mean.device).manual_seed(seed)
    z0 = module.sample_initial(samples, gen).to(torch.float64)
    return module.rollout(z0, frames, noise=True, generator=gen).to(torch.float64)


def state_marginals(module, frames: int, samples: int = SAMPLES, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The prior's state marginals N(mean_j, diag std_j²) for frames j = 0 .. frames − 1 after a clip's
    start, float64 `(frames, d)` each: the moments of `samples` simulated clips (see the module docstring)."""
    paths = simulated_clips(module, frames, samples, seed)
    return paths.mean(0), paths.std(0).clamp_min(1e-9)  # a state the noise never moves keeps a finite prior


class StartedPrior:
    """`module` with its first-frame prior replaced: `initial_mean` and `initial_std` are the given
    tensors, one row per sequence `(B, d)` (or per frame, `(B, T, d)`, for the warm-up's anchor);
    everything else is the module's. The smoother (`anmc.posterior.smoother`) and the KLs read a batch
    of first-frame priors this way."""

    def __init__(self, module, mean: torch.Tensor, std: torch.Tensor):
        self.module, self.initial_mean, self.initial_std = module, mean, std

    def __getattr__(self, name):
        return getattr(self.module, name)

    def __call__(self, z):
        return self.module(z)


def window_priors(module, starts: torch.Tensor, frames: int) -> tuple[StartedPrior, StartedPrior]:
    """For windows of `frames` latent frames whose first frames are `starts` (B,) frames into their clips:
    the module with each window's first-frame prior (its marginal at its start, `(B, d)`), and the module
    with each frame's marginal (`(B, frames, d)`, what the warm-up's anchor holds frames t > 1 to)."""
    starts = starts.to(device=module.initial_mean.device, dtype=torch.long)
    mean, std = state_marginals(module, int(starts.max()) + frames)
    rows = starts[:, None] + torch.arange(frames, device=starts.device)  # (B, frames)
    dtype = module.initial_mean.dtype
    first = StartedPrior(module, mean[starts].to(dtype), std[starts].to(dtype))
    every = StartedPrior(module, mean[rows].to(dtype), std[rows].to(dtype))
    return first, every
