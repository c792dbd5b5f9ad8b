"""Train a video VAE whose latents follow an `.anm` prior.

    result = train("priors/pendulum.anm", ["data/pend"], "runs/pend", TrainConfig(epochs=20))

The loss is the negative ELBO per frame (DESIGN.md §4), for sequences of T latent frames:

    -ELBO = sum_t recon(x_t | z_t[observed])
            + beta * [ KL(q(z_1) || initial prior) + sum_{t>1} KL_reading(q(z_t) || p(z_t | q(z_{t-1}))) ]

with `KL_reading` one of `anmc.prior.TRANSITION_KL` (`--kl elbo|elbo_mc|mixture|pairwise|pooled`), or
`standard`: the plain VAE baseline, KL(q(z_t) || N(0, I)) on every frame and a decoder that sees
every latent. The first latent frame of each training sequence gets the initial-frame prior.

The default posterior (`--posterior smoother`, with `--kl elbo`) is not factorized over time: the
encoder reads the observed states frame by frame and q(z_1:T) is the prior conditioned on those
readings (anmc.prior.smoother); the bracket above is then KL(q(z_1:T) || p(z_1:T)) of the sequence.

Learnable `param`s and `noise ... learn` stay frozen for the first `learn_params_after` epochs, then
train with their own learning rate: a prototype saw a length L run away while the latents were
still collapsed (DESIGN.md §4, lesson 8).

CPU, one GPU (`device="cuda"`), or several through `torchrun` (data parallel: each rank takes its
share of every batch, gradients are averaged with all-reduce; rank 0 logs and writes checkpoints).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from anmc.codegen.compile import CompiledPrior, compile_prior
from anmc.errors import UserError
from anmc.prior import TRANSITION_KL, gaussian_kl, initial_kl, transition_kl
from anmc.prior.smoother import initial_cross_entropy, markov_kl
from anmc.vae.checkpoint import (
    CheckpointError,
    append_metrics,
    check_config,
    load_checkpoint,
    save_checkpoint,
    truncate_metrics,
)
from anmc.vae.nets import DECODERS, POSTERIORS, VideoVAE
from anmc.video.dataset import FrameSequences, frame_datasets

KL_READINGS = (*TRANSITION_KL, "standard")
RECONSTRUCTIONS = ("bernoulli", "gaussian")


@dataclass
class TrainConfig:
    """Every training choice; saved in the checkpoint so that a run directory alone can be resumed."""

    epochs: int = 30
    batch: int = 8
    seq_len: int = 32  # latent frames per training sequence (a sequence reads seq_len + window - 1 frames)
    lr: float = 1e-3
    lr_final: float = 0.1  # the networks' learning rate falls to lr * lr_final along a cosine over the run
    param_lr: float = 1e-2  # learning rate of the physical params and learnable noise
    beta: float = 1.0
    # Warm-up (docs/method.md §6): for `warmup` steps frames t > 1 also get (1 - w) KL(q_t || initial-state
    # prior), w = step / warmup, which holds the latents where the states live while the dynamics take
    # hold (anchor; a cross-entropy with the smoother posterior). Two more curricula were measured and
    # are off by default (docs/results.md): `ramp` multiplies the transition KL by w, `temper` widens
    # its noise std from the initial-state std.
    warmup: int = 300
    warmup_anchor: bool = True
    warmup_temper: bool = False
    warmup_ramp: bool = False
    anchor: float = 0.0  # weight of KL(q_t || initial-state prior) on frames t > 1 kept after the warm-up
    kl: str = "elbo"
    samples: int = 8
    window: int | None = None  # frames per encoder window; None: 1 for the smoother posterior, 2 for the factorized
    context: int = 0  # frames on either side a temporal convolution over frame features sees (0: off)
    # "smoother": q(z_1:T) = the prior conditioned on encoded readings of the observed states (anmc.prior.smoother);
    # "factorized": q(z_t | window) for every state. None: smoother with --kl elbo, factorized with the other readings
    posterior: str | None = None
    recon: str = "bernoulli"
    recon_std: float = 0.1  # pixel std of the gaussian reconstruction
    decoder: str = "deconv"
    size: int | None = 32  # frames are resized to size x size (64x64 videos train at 32x32 by default)
    learn_params_after: int = 3  # epochs with physical params frozen (the warm-up is 2)
    steps_per_epoch: int | None = 150  # None: one pass over every training sequence
    val_fraction: float = 0.1
    grad_clip: float = 100.0
    time_limit: float | None = None  # minutes; training stops after the epoch that crosses it
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        if self.kl not in KL_READINGS:
            raise UserError(f"--kl {self.kl!r} is not a reading anmc knows; use one of {', '.join(KL_READINGS)}.")
        if self.recon not in RECONSTRUCTIONS:
            raise UserError(f"--recon {self.recon!r}: use one of {', '.join(RECONSTRUCTIONS)}.")
        if self.decoder not in DECODERS:
            raise UserError(f"--decoder {self.decoder!r}: use one of {', '.join(DECODERS)}.")
        if self.posterior is None:
            self.posterior = "smoother" if self.kl == "elbo" else "factorized"
        if self.window is None:
            self.window = 1 if self.posterior == "smoother" else 2
        if self.posterior not in POSTERIORS:
            raise UserError(f"--posterior {self.posterior!r}: use one of {', '.join(POSTERIORS)}.")
        if self.posterior == "smoother" and self.kl != "elbo":
            raise UserError(
                f"--posterior smoother computes its own KL (the elbo reading for a posterior correlated in time); "
                f"drop --kl {self.kl} or use --posterior factorized."
            )
        if self.window < 1 or self.seq_len < 2 or self.batch < 1 or self.epochs < 1:
            raise UserError("window >= 1, seq-len >= 2, batch >= 1 and epochs >= 1 are needed.")

    @classmethod
    def from_dict(cls, data: dict, source: str = "the checkpoint") -> "TrainConfig":
        """The config saved in a checkpoint; CheckpointError if a field has the wrong type."""
        data = {"posterior": "factorized"} | check_config(data, cls, source)  # runs from before the smoother were factorized
        return cls(**data)


@dataclass
class TrainResult:
    run_dir: Path
    epochs: int
    metrics: list[dict] = field(default_factory=list)
    stopped_early: str | None = None
    rank: int = 0  # this process's rank under torchrun (rank 0 logs and reports)


class TrainingDiverged(UserError):
    """The loss became non-finite; the last good checkpoint is kept."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but torch sees no CUDA GPU here; use --device cpu or auto.")
    return torch.device(name)


def build_vae(prior: CompiledPrior, frame_shape, config: TrainConfig) -> VideoVAE:
    channels, height, width = frame_shape
    if height != width:
        raise UserError(f"frames are {height}x{width}; anmc trains on square frames: pass --size 64 (or crop).")
    vae = VideoVAE(prior.module(), channels, height, window=config.window, decoder=config.decoder, context=config.context,
                   posterior=config.posterior)  # fmt: skip
    if config.kl == "standard":  # the plain-VAE baseline decodes from every latent
        vae.observed = list(range(vae.prior.d))
        vae.decoder = DECODERS[config.decoder](vae.prior.d, channels, height)
    return vae


def physical_parameters(vae: VideoVAE) -> list[torch.nn.Parameter]:
    """The prior module's learnable params and learnable noise (empty for a prior with none)."""
    return list(vae.prior.parameters())


def sequence_loss(vae: VideoVAE, frames: torch.Tensor, config: TrainConfig, warm: float = 1.0) -> dict[str, torch.Tensor]:
    """-ELBO per latent frame for a batch of sequences frames (B, T + k - 1, C, H, W) uint8.

    `warm` in [0, 1] is the warm-up's progress: frames t > 1 get the prior
    KL_reading(q_t || p(z_t | q_{t-1})) + a * KL(q_t || initial-state prior), a = max(1 - warm, anchor)
    (1 - warm only with `warmup_anchor`; the reading is also scaled by warm with `warmup_ramp`),
    a curriculum from a static prior (where the states live) to the dynamics (how they move). With the
    smoother posterior the anchor is the cross-entropy E_q[-log N(z_t | m0, s0^2)], not the KL: the KL's
    entropy term rewards marginals as wide as s0, which the smoother reaches by ignoring the encoder's
    readings (the spring's posterior collapsed that way; docs/results.md §3c).

    Returns loss, recon and kl (scalars, per frame) and `mu` (B, T, d).
    """
    tempered = TemperedPrior(vae.prior, warm) if warm < 1.0 and config.warmup_temper else vae.prior
    if vae.posterior == "smoother":
        post = vae.smoothed(frames, tempered)
        mu, std = post.mean, post.std
    else:
        mu, std = vae.encode(frames)  # (B, T, d)
    z = mu + std * torch.randn_like(std)
    out = vae.decode(z)  # (B, T, C, H, W)
    target = frames[:, vae.window - 1 :].float() / 255.0
    if config.recon == "bernoulli":
        recon = F.binary_cross_entropy_with_logits(out, target, reduction="none")
    else:
        recon = 0.5 * ((torch.sigmoid(out) - target) / config.recon_std) ** 2
    recon = recon.flatten(2).sum(-1)  # (B, T)
    b, t, d = mu.shape
    weight = max(1.0 - warm if config.warmup_anchor else 0.0, config.anchor)  # of the anchor on frames t > 1
    if config.kl == "standard":
        kl = gaussian_kl(mu, std, torch.zeros_like(mu), torch.ones_like(std)).sum(1)
    elif vae.posterior == "smoother":  # the whole sequence's KL, initial frame included
        kl = (warm if config.warmup_ramp else 1.0) * markov_kl(tempered, post)
        if weight > 0.0:  # the anchor as a cross-entropy: no entropy bonus for wide marginals (see docstring)
            kl = kl + weight * initial_cross_entropy(vae.prior, mu[:, 1:], std[:, 1:].square()).sum(1)
    else:
        kl0 = initial_kl(vae.prior, mu[:, 0], std[:, 0])
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
            static = initial_kl(vae.prior, mu[:, 1:].reshape(-1, d), std[:, 1:].reshape(-1, d))
            kl = kl + weight * static.reshape(b, t - 1).sum(1)
    recon_per_frame = recon.sum(1).mean() / t
    kl_per_frame = kl.mean() / t
    return {
        "loss": recon_per_frame + config.beta * kl_per_frame,
        "recon": recon_per_frame,
        "kl": kl_per_frame,
        "mu": mu,
    }


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


def _distributed() -> tuple[int, int]:
    """(rank, world size) under torchrun, (0, 1) otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of training sequences in an epoch: a function of (seed, epoch) only, so resuming replays it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


@torch.no_grad()
def validation_loss(vae: VideoVAE, data: FrameSequences, config: TrainConfig, device, batches: int = 4) -> dict:
    """Mean loss terms over up to `batches` fixed validation batches (fixed noise, RNG state restored)."""
    state = torch.get_rng_state()
    torch.manual_seed(12345)
    n = min(len(data), batches * config.batch)
    idx = torch.linspace(0, len(data) - 1, n).long()
    sums = {"loss": 0.0, "recon": 0.0, "kl": 0.0}
    for chunk in idx.split(config.batch):
        out = sequence_loss(vae, data.batch(chunk).to(device), config)
        for k in sums:
            sums[k] += float(out[k]) * len(chunk)
    torch.set_rng_state(state)
    return {f"val_{k}": v / n for k, v in sums.items()}


def _param_summary(vae: VideoVAE) -> dict[str, float]:
    values = {k: float(v.detach()) for k, v in vae.prior.param_values().items() if k in vae.prior.learnable_param_names}
    for name, learn, s in zip(vae.prior.state_names, vae.prior.noise_learnable, vae.prior.noise_std.tolist()):
        if learn:
            values[f"noise_{name}"] = s
    return values


def train(
    prior: str | Path | CompiledPrior,
    videos,
    run_dir: str | Path,
    config: TrainConfig | None = None,
    resume: bool = False,
    progress=None,
    on_epoch=None,
) -> TrainResult:
    """Train (or resume) a run in `run_dir`; returns the per-epoch metrics.

    `progress(epoch, step, steps, metrics)` is called after every step when given (the CLI draws a bar);
    `on_epoch(vae, row)` after every epoch's checkpoint (for a notebook's own diagnostics).
    """
    run_dir = Path(run_dir)
    payload = None
    if resume:
        payload = load_checkpoint(run_dir)
        saved = TrainConfig.from_dict(payload["config"])
        if config is not None and config.epochs > saved.epochs:
            saved.epochs = config.epochs  # resuming may extend a run, nothing else
        config = saved
    config = config or TrainConfig()
    rank, world = _distributed()
    device = resolve_device(config.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    torch.manual_seed(config.seed)

    if isinstance(prior, CompiledPrior):
        compiled = prior
    else:
        compiled = compile_prior(Path(prior) if not str(prior).count("\n") else prior)
    if payload is not None and payload["anm_source"] != compiled.model.source:
        raise CheckpointError(
            f"the checkpoint in {run_dir} was trained with a different prior ({payload['anm_filename']}); "
            "resume with the same .anm, or train into a new -o directory."
        )
    train_data, val_data = frame_datasets(
        videos,
        length=config.seq_len + config.window - 1,
        size=config.size,
        val_fraction=config.val_fraction,
        seed=config.seed,
        device=device,
    )
    vae = build_vae(compiled, train_data.frame_shape, config).to(device)
    physical = physical_parameters(vae)
    physical_ids = {id(p) for p in physical}
    networks = [p for p in vae.parameters() if id(p) not in physical_ids]
    groups = [{"params": networks, "lr": config.lr}]
    if physical:
        groups.append({"params": physical, "lr": config.param_lr})
    optimizer = torch.optim.Adam(groups)

    start_epoch, step = 0, 0
    if payload is not None:
        if tuple(payload["frame_shape"]) != tuple(train_data.frame_shape):
            raise CheckpointError(
                f"the checkpoint in {run_dir} was trained on frames of shape {tuple(payload['frame_shape'])}, "
                f"these are {tuple(train_data.frame_shape)}; pass the same --size and videos to resume."
            )
        vae.load_state_dict(payload["vae"])
        optimizer.load_state_dict(payload["optimizer"])
        torch.set_rng_state(payload["rng"])
        start_epoch, step = int(payload["epoch"]), int(payload["step"])
        truncate_metrics(run_dir, start_epoch)
    elif rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        if (run_dir / "metrics.jsonl").exists():
            (run_dir / "metrics.jsonl").unlink()

    if world > 1:  # every rank starts from rank 0's weights
        import torch.distributed as dist

        for tensor in vae.state_dict().values():
            dist.broadcast(tensor, 0)
    if rank == 0:
        (run_dir / "prior.anm").write_text(compiled.model.source)
        (run_dir / "config.json").write_text(__import__("json").dumps(asdict(config), indent=2) + "\n")

    n = len(train_data)
    per_epoch = config.steps_per_epoch or math.ceil(n / config.batch)
    video_list = [str(v) for v in (videos if isinstance(videos, (list, tuple)) else [videos])]
    result = TrainResult(run_dir, start_epoch, rank=rank)
    started = time.monotonic()
    for epoch in range(start_epoch, config.epochs):
        learn_physics = epoch >= config.learn_params_after
        for p in physical:
            p.requires_grad_(learn_physics)
        order = _epoch_order(n, config.seed, epoch)
        needed = per_epoch * config.batch
        order = order.repeat(math.ceil(needed / n))[:needed]
        sums = {"loss": 0.0, "recon": 0.0, "kl": 0.0}
        vae.train()
        for i in range(per_epoch):
            idx = order[i * config.batch : (i + 1) * config.batch]
            if world > 1:
                idx = idx[rank::world]
            frames = train_data.batch(idx).to(device, non_blocking=True)
            warm = min(1.0, step / config.warmup) if config.warmup else 1.0
            progress_frac = min(1.0, step / max(1, config.epochs * per_epoch))
            optimizer.param_groups[0]["lr"] = config.lr * (
                config.lr_final + (1 - config.lr_final) * 0.5 * (1 + math.cos(math.pi * progress_frac))
            )
            out = sequence_loss(vae, frames, config, warm=warm)
            loss = out["loss"]
            if not torch.isfinite(loss):
                last = f"epoch {start_epoch if result.epochs == start_epoch else result.epochs}"
                raise TrainingDiverged(
                    f"the loss became {float(loss.detach())} at epoch {epoch + 1}, step {i + 1}; the last good checkpoint "
                    f"({last}) is kept in {run_dir}: try a lower --lr, or --resume after changing nothing to retry."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:
                _average_gradients(vae, world)
            torch.nn.utils.clip_grad_norm_(vae.parameters(), config.grad_clip)
            optimizer.step()
            step += 1
            for k in sums:
                sums[k] += float(out[k].detach())
            if progress is not None and rank == 0:
                progress(epoch, i + 1, per_epoch, {k: float(out[k].detach()) for k in sums} | _param_summary(vae))
        vae.eval()
        row = {"epoch": epoch + 1, "step": step, **{k: v / per_epoch for k, v in sums.items()}}
        if val_data is not None:
            row |= validation_loss(vae, val_data, config, device)
        row |= {"params": _param_summary(vae), "physics_learning": learn_physics, "seconds": round(time.monotonic() - started, 2)}
        result.metrics.append(row)
        result.epochs = epoch + 1
        if rank == 0:
            append_metrics(run_dir, row)
            save_checkpoint(
                run_dir,
                {
                    "anm_source": compiled.model.source,
                    "anm_filename": compiled.model.filename,
                    "config": asdict(config),
                    "epoch": epoch + 1,
                    "step": step,
                    "vae": vae.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "rng": torch.get_rng_state(),
                    "frame_shape": list(train_data.frame_shape),
                    "videos": video_list,
                    "metrics": row,
                },
            )
        if on_epoch is not None and rank == 0:
            on_epoch(vae, row)
        if config.time_limit is not None and (time.monotonic() - started) / 60 >= config.time_limit:
            result.stopped_early = f"time limit of {config.time_limit:g} min reached after epoch {epoch + 1}"
            break
    return result


def _average_gradients(vae: VideoVAE, world: int) -> None:
    """All-reduce the gradients across ranks (data parallel: each rank saw its share of the batch)."""
    import torch.distributed as dist

    for p in vae.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= world
