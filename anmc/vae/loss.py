"""The training loss: the negative ELBO per frame of a batch of sequences (docs/method.md §5-6).

    -ELBO = sum_t recon(x_t | h(z_t))
            + beta * [ KL(q(z_1) || initial prior) + sum_{t>1} KL_reading(q(z_t) || p(z_t | q(z_{t-1}))) ]

with `KL_reading` one of `anmc.prior.TRANSITION_KL` (`--kl elbo|elbo_mc|mixture|pairwise|pooled`), or
`standard`: the plain VAE baseline, KL(q(z_t) || N(0, I)) on every frame and a decoder that sees
every latent. With the smoother posterior (the default) the bracket is KL(q(z_1:T) || p(z_1:T)) of the
whole sequence (`anmc.posterior.smoother.markov_kl`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from anmc.data.dataset import FrameSequences
from anmc.posterior.smoother import initial_cross_entropy, markov_kl
from anmc.prior import gaussian_kl, initial_kl, transition_kl
from anmc.prior.marginals import StartedPrior, window_priors
from anmc.vae.config import TrainConfig
from anmc.vae.nets import VideoVAE


def physical_parameters(vae: VideoVAE) -> list[torch.nn.Parameter]:
    """The prior module's learnable params and learnable noise (empty for a prior with none)."""
    return list(vae.prior.parameters())


def sequence_loss(
    vae: VideoVAE, frames: torch.Tensor, config: TrainConfig, warm: float = 1.0, noise=None, starts: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """-ELBO per latent frame for a batch of sequences frames (B, T + k - 1, C, H, W) uint8.

    `warm` in [0, 1] is the warm-up's progress: frames t > 1 get the prior
    KL_reading(q_t || p(z_t | q_{t-1})) + a * KL(q_t || initial-state prior), a = max(1 - warm, anchor)
    (1 - warm only with `warmup_anchor`; the reading is also scaled by warm with `warmup_ramp`),
    a curriculum from a static prior (where the states live) to the dynamics (how they move). With the
    smoother posterior the anchor is the cross-entropy E_q[-log N(z_t | m0, s0^2)], not the KL: the KL's
    entropy term rewards marginals as wide as s0, which the smoother reaches by ignoring the encoder's
    readings (the spring's posterior collapsed that way; docs/results.md §3c).

    `noise(shape)` gives the decoder draw's standard normal noise (default: torch.randn of the std's
    shape, in position order whatever the std's memory layout; data-parallel training passes
    `anmc.vae.distributed.batch_noise`, the same draws on any number of ranks). Under autocast (`--precision bf16`) the networks run in bfloat16 and everything from the
    encoder's outputs to the KL in float32 / float64 (autocast off).

    `starts` (B,): each sequence's first frame's index in its recorded clip (`FrameSequences.
    recorded_starts`); with `config.start_prior == "rollout"` the first latent frame's prior is the
    prior's marginal that many frames after the clip's start, and the anchor holds frame t to the
    marginal at its own frame (anmc.prior.marginals), not to the initial distribution.

    Returns loss, recon and kl (scalars, per frame) and `mu` (B, T, d).
    """
    tempered = TemperedPrior(vae.prior, warm) if warm < 1.0 and config.warmup_temper else vae.prior
    anchor_prior = vae.prior  # what the warm-up's anchor holds frames t > 1 to
    if config.start_prior == "rollout" and starts is not None:
        latent_starts = starts.to(vae.prior.initial_mean.device) + (vae.window - 1)
        tempered, every = window_priors(tempered, latent_starts, frames.shape[1] - vae.window + 1)
        anchor_prior = StartedPrior(every.module, every.initial_mean[:, 1:], every.initial_std[:, 1:])
    if vae.posterior == "smoother":
        post = vae.smoothed(frames, tempered)
        mu, std = post.mean, post.std
    else:
        mu, std = vae.encode(frames)  # (B, T, d)
    eps = torch.randn(std.shape, dtype=std.dtype, device=std.device) if noise is None else noise(std.shape)
    z = mu + std * eps
    out = vae.decode(z)  # (B, T, C, H, W)
    target = frames[:, vae.window - 1 :].float() / 255.0
    recon = pixel_nll(out, target, config).flatten(2).sum(-1)  # (B, T)
    b, t, d = mu.shape
    with torch.autocast(mu.device.type, enabled=False):
        kl = _kl(vae, config, tempered, anchor_prior, post if vae.posterior == "smoother" else None, mu, std, warm)
    recon_per_frame = recon.float().sum(1).mean() / t
    kl_per_frame = kl.mean() / t
    return {
        "loss": recon_per_frame + config.beta * kl_per_frame,
        "recon": recon_per_frame,
        "kl": kl_per_frame,
        "mu": mu,
    }


def pixel_nll(logits: torch.Tensor, target: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """−log p(frame pixel | decoder output), per pixel, in nats (the shape of `target`, values in [0, 1]).

    bernoulli: a coin with probability sigmoid(logits) (its effective std, √(x(1 − x)), is 0.5 on a
    mid-grey pixel and small near black or white). gaussian: N(sigmoid(logits), recon_std²), the
    constant dropped. calibrated: N(sigmoid(logits), σ²) with σ² the batch's mean squared error,
    held fixed within the step (the optimal σ-VAE, Rybkin et al. 2021: σ is what maximizes the
    likelihood, so the reconstruction's weight against the KL follows how well the frames are
    reconstructed, on any background), floored at `recon_std_floor`; its normalizer counted, so
    the loss is the likelihood's."""
    if config.recon == "bernoulli":
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    err2 = (torch.sigmoid(logits) - target) ** 2
    if config.recon == "gaussian":
        return 0.5 * err2 / config.recon_std**2
    var = err2.detach().float().mean().clamp_min(config.recon_std_floor**2)
    return 0.5 * err2 / var + 0.5 * torch.log(2 * math.pi * var)


def _kl(vae: VideoVAE, config: TrainConfig, tempered, anchor_prior, post, mu: torch.Tensor, std: torch.Tensor, warm: float) -> torch.Tensor:
    """The bracket of the loss for each sequence, `-> (B,)` (see `sequence_loss`): `tempered` the prior
    the KL is taken under (its first-frame prior one per sequence with the rollout start prior), the
    anchor's prior for frames t > 1 `anchor_prior` (the initial distribution, or each frame's marginal
    (B, T - 1, d))."""
    b, t, d = mu.shape
    weight = max(1.0 - warm if config.warmup_anchor else 0.0, config.anchor)  # of the anchor on frames t > 1
    if config.kl == "standard":
        kl = gaussian_kl(mu, std, torch.zeros_like(mu), torch.ones_like(std)).sum(1)
    elif vae.posterior == "smoother":  # the whole sequence's KL, initial frame included
        kl = (warm if config.warmup_ramp else 1.0) * markov_kl(tempered, post)
        if weight > 0.0:  # the anchor as a cross-entropy: no entropy bonus for wide marginals (see docstring)
            kl = kl + weight * initial_cross_entropy(anchor_prior, mu[:, 1:], std[:, 1:].square()).sum(1)
    else:
        kl0 = initial_kl(tempered, mu[:, 0], std[:, 0])
        klt = transition_kl(
            config.kl,
            tempered,
            mu[:, :-1].reshape(-1, d),
            std[:, :-1].reshape(-1, d),
            mu[:, 1:].reshape(-1, d),
            std[:, 1:].reshape(-1, d),
            samples=config.samples,
        )
        kl = kl0 + (warm if config.warmup_ramp else 1.0) * klt.reshape(b, t - 1).sum(1)
        if weight > 0.0:
            later = anchor_prior
            if later.initial_mean.dim() > 1:  # one marginal per frame: rows as the frames'
                later = StartedPrior(later.module, later.initial_mean.reshape(-1, d), later.initial_std.reshape(-1, d))
            static = initial_kl(later, mu[:, 1:].reshape(-1, d), std[:, 1:].reshape(-1, d))
            kl = kl + weight * static.reshape(b, t - 1).sum(1)
    return kl


class TemperedPrior:
    """The prior module with its noise std widened during the warm-up: std_warm = q^warm * s0^(1 - warm),
    geometric from the initial-state std s0 (a loose prior) to the declared noise std q (never below q)."""

    def __init__(self, module, warm: float):
        self.module, self.warm = module, warm

    def __getattr__(self, name):
        return getattr(self.module, name)

    def __call__(self, z):
        return self.module(z)

    @property
    def noise_std(self):
        q = self.module.noise_std
        s0 = self.module.initial_std.to(q)
        return torch.maximum(q, q**self.warm * s0 ** (1.0 - self.warm))


@torch.no_grad()
def validation_loss(vae: VideoVAE, data: FrameSequences, config: TrainConfig, device, batches: int = 4) -> dict:
    """Mean loss terms over up to `batches` fixed validation batches (fixed noise, RNG state restored)."""
    state = torch.get_rng_state()
    torch.manual_seed(12345)
    n = min(len(data), batches * config.batch)
    idx = torch.linspace(0, len(data) - 1, n).long()
    sums = {"loss": 0.0, "recon": 0.0, "kl": 0.0}
    for chunk in idx.split(config.batch):
        out = sequence_loss(vae, data.batch(chunk).to(device), config, starts=data.recorded_starts(chunk))
        for k in sums:
            sums[k] += float(out[k]) * len(chunk)
    torch.set_rng_state(state)
    return {f"val_{k}": v / n for k, v in sums.items()}
