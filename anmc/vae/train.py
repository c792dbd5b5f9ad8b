"""Train a video VAE whose latents follow an `.anm` prior: a short loop, read top to bottom.

    result = train("priors/pendulum.anm", ["data/pend"], "runs/pend", TrainConfig(epochs=20))

`train` is setup → for each epoch: steps → epoch end (validation, metrics row) → checkpoint. The loss
is `anmc.vae.loss.sequence_loss` (docs/method.md §5-6), every choice is a field of
`anmc.vae.config.TrainConfig`, and the run directory's format is `anmc.vae.run`.

Learnable `param`s and `noise ... learn` stay frozen for the first `learn_params_after` epochs, then
train with their own learning rate: a prototype saw a length L run away while the latents were
still collapsed (docs/method.md §6).

CPU, one GPU (`device="cuda"`), or several through `torchrun` (data parallel: each rank takes its
share of every batch, gradients are averaged with all-reduce; rank 0 logs and writes checkpoints).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from anmc.codegen.compile import CompiledPrior, compile_prior
from anmc.data.dataset import FrameSequences, frame_datasets
from anmc.errors import UserError
from anmc.vae.config import TrainConfig
from anmc.vae.diagnostics import epoch_diagnostics
from anmc.vae.divergence import TrainingDiverged, check_finite, diverged, finite_weights, guard  # noqa: F401  (TrainingDiverged re-exported)
from anmc.vae.loss import physical_parameters, sequence_loss, validation_loss
from anmc.vae.nets import VideoVAE, build_vae
from anmc.vae.run import CheckpointError, append_metrics, load_checkpoint, save_checkpoint, truncate_metrics
from anmc.vae.run_lock import run_lock


@dataclass
class TrainResult:
    run_dir: Path
    epochs: int
    metrics: list[dict] = field(default_factory=list)
    stopped_early: str | None = None
    rank: int = 0  # this process's rank under torchrun (rank 0 logs and reports)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but torch sees no CUDA GPU here; use --device cpu or auto.")
    return torch.device(name)


@dataclass
class _Session:
    """Everything the loop needs, built once by `_setup`."""

    run_dir: Path
    config: TrainConfig
    compiled: CompiledPrior
    vae: VideoVAE
    optimizer: torch.optim.Optimizer
    physical: list[torch.nn.Parameter]
    train_data: FrameSequences
    val_data: FrameSequences | None
    device: torch.device
    rank: int
    world: int
    videos: list[str]
    start_epoch: int = 0
    step: int = 0

    @property
    def steps_per_epoch(self) -> int:
        return self.config.steps_per_epoch or math.ceil(len(self.train_data) / self.config.batch)


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

    The process that writes the run (rank 0) holds its lock throughout (`anmc.vae.run_lock`: a second
    writer gets RunLocked); a loss, gradient or smoother that becomes non-finite stops the run with
    TrainingDiverged (`anmc.vae.divergence`), the last finished epoch's checkpoint kept.
    """
    run_dir = Path(run_dir)
    writer = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 writes the run
    with run_lock(run_dir) if writer else contextlib.nullcontext():
        return _train(prior, videos, run_dir, config, resume, progress, on_epoch)


def _train(prior, videos, run_dir: Path, config, resume: bool, progress, on_epoch) -> TrainResult:
    """`train`'s loop: setup, then for each epoch its steps, its end and its checkpoint."""
    s = _setup(prior, videos, run_dir, config, resume)
    result = TrainResult(s.run_dir, s.start_epoch, rank=s.rank)
    started = time.monotonic()
    for epoch in range(s.start_epoch, s.config.epochs):
        learn_physics = epoch >= s.config.learn_params_after
        for p in s.physical:
            p.requires_grad_(learn_physics)
        sums = {"loss": 0.0, "recon": 0.0, "kl": 0.0}
        s.vae.train()
        for i, idx in enumerate(_epoch_batches(s, epoch)):
            out = _step(s, idx, epoch, i, last_good=result.epochs)
            for k in sums:
                sums[k] += float(out[k].detach())
            if progress is not None and s.rank == 0:
                progress(epoch, i + 1, s.steps_per_epoch, {k: float(out[k].detach()) for k in sums} | _param_summary(s.vae))
        row = _end_epoch(s, epoch, sums, learn_physics, seconds=time.monotonic() - started)
        row["diagnostics"] = epoch_diagnostics(s.vae, s.val_data if s.val_data is not None else s.train_data, s.config, row, s.device)
        result.metrics.append(row)
        result.epochs = epoch + 1
        if s.rank == 0:
            append_metrics(s.run_dir, row)
            _checkpoint(s, epoch + 1, row)
            if on_epoch is not None:
                on_epoch(s.vae, row)
        if s.config.time_limit is not None and (time.monotonic() - started) / 60 >= s.config.time_limit:
            result.stopped_early = f"time limit of {s.config.time_limit:g} min reached after epoch {epoch + 1}"
            break
    return result


def _setup(prior, videos, run_dir: Path, config: TrainConfig | None, resume: bool) -> _Session:
    """Config (the checkpoint's when resuming), process group, compiled prior, data, VAE, optimizer, state."""
    payload = None
    if resume:
        payload = load_checkpoint(run_dir)
        saved = TrainConfig.from_dict(payload["config"])
        if config is not None and config.epochs > saved.epochs:
            saved.epochs = config.epochs  # resuming may extend a run, nothing else
        config = saved
    config = config or TrainConfig()
    if config.threads:
        torch.set_num_threads(config.threads)
    rank, world = _distributed()
    device = resolve_device(config.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    torch.manual_seed(config.seed)

    compiled = prior if isinstance(prior, CompiledPrior) else compile_prior(Path(prior) if not str(prior).count("\n") else prior)
    if payload is not None and payload["anm_source"] != compiled.model.source:
        raise CheckpointError(
            f"the checkpoint in {run_dir} was trained with a different prior ({payload['anm_filename']}); "
            "resume with the same .anm, or train into a new -o directory."
        )
    train_data, val_data = frame_datasets(
        videos, length=config.seq_len + config.window - 1, size=config.size, val_fraction=config.val_fraction, seed=config.seed, device=device
    )
    vae = build_vae(compiled, train_data.frame_shape, config).to(device)
    physical = physical_parameters(vae)
    physical_ids = {id(p) for p in physical}
    groups = [{"params": [p for p in vae.parameters() if id(p) not in physical_ids], "lr": config.lr}]
    if physical:
        groups.append({"params": physical, "lr": config.param_lr})
    s = _Session(
        run_dir, config, compiled, vae, torch.optim.Adam(groups), physical, train_data, val_data, device, rank, world,
        videos=[str(v) for v in (videos if isinstance(videos, (list, tuple)) else [videos])],
    )  # fmt: skip

    if payload is not None:
        _restore(s, payload)
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
        (run_dir / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    return s


def _restore(s: _Session, payload: dict) -> None:
    """Load a checkpoint's weights, optimizer, RNG and position into the session."""
    if tuple(payload["frame_shape"]) != tuple(s.train_data.frame_shape):
        raise CheckpointError(
            f"the checkpoint in {s.run_dir} was trained on frames of shape {tuple(payload['frame_shape'])}, "
            f"these are {tuple(s.train_data.frame_shape)}; pass the same --size and videos to resume."
        )
    s.vae.load_state_dict(payload["vae"])
    s.optimizer.load_state_dict(payload["optimizer"])
    torch.set_rng_state(payload["rng"])
    s.start_epoch, s.step = int(payload["epoch"]), int(payload["step"])
    truncate_metrics(s.run_dir, s.start_epoch, payload.get("metrics"))


def _epoch_batches(s: _Session, epoch: int):
    """The epoch's batches of sequence indices (this rank's share under torchrun)."""
    n, per_epoch, batch = len(s.train_data), s.steps_per_epoch, s.config.batch
    order = _epoch_order(n, s.config.seed, epoch)
    order = order.repeat(math.ceil(per_epoch * batch / n))[: per_epoch * batch]
    for i in range(per_epoch):
        idx = order[i * batch : (i + 1) * batch]
        yield idx[s.rank :: s.world] if s.world > 1 else idx


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of training sequences in an epoch: a function of (seed, epoch) only, so resuming replays it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def _learning_rate(config: TrainConfig, step: int, total: int) -> float:
    """The networks' rate: cosine from lr to lr * lr_final over the run."""
    progress = min(1.0, step / max(1, total))
    return config.lr * (config.lr_final + (1 - config.lr_final) * 0.5 * (1 + math.cos(math.pi * progress)))


def _step(s: _Session, idx: torch.Tensor, epoch: int, i: int, last_good: int) -> dict[str, torch.Tensor]:
    """One optimizer step on the batch `idx`; raises TrainingDiverged on a non-finite loss."""
    config = s.config
    frames = s.train_data.batch(idx).to(s.device, non_blocking=True)
    warm = min(1.0, s.step / config.warmup) if config.warmup else 1.0
    s.optimizer.param_groups[0]["lr"] = _learning_rate(config, s.step, config.epochs * s.steps_per_epoch)
    where = (epoch + 1, i + 1, s.run_dir, last_good)
    with guard(*where):  # the smoother's solves on a blown-up covariance
        out = sequence_loss(s.vae, frames, config, warm=warm)
    loss = out["loss"]
    check_finite("the loss", loss, *where)
    s.optimizer.zero_grad(set_to_none=True)
    with guard(*where):
        loss.backward()
    if s.world > 1:
        _average_gradients(s.vae, s.world)
    norm = torch.nn.utils.clip_grad_norm_(s.vae.parameters(), config.grad_clip)
    check_finite("the gradient's norm", norm, *where)  # before the step: the weights stay finite
    s.optimizer.step()
    s.step += 1
    return out


def _end_epoch(s: _Session, epoch: int, sums: dict, learn_physics: bool, seconds: float) -> dict:
    """The epoch's metrics row: mean training terms, validation terms, params, elapsed seconds."""
    s.vae.eval()
    row = {"epoch": epoch + 1, "step": s.step, **{k: v / s.steps_per_epoch for k, v in sums.items()}}
    if s.val_data is not None:
        with guard(epoch + 1, s.steps_per_epoch, s.run_dir, last_good=epoch):
            row |= validation_loss(s.vae, s.val_data, s.config, s.device)
    return row | {"params": _param_summary(s.vae), "physics_learning": learn_physics, "seconds": round(seconds, 2)}


def _checkpoint(s: _Session, epochs_done: int, row: dict) -> None:
    """Write the run's checkpoint (atomically, `anmc.vae.run.save_checkpoint`); never non-finite weights."""
    if not finite_weights(s.vae):
        raise diverged("the weights became non-finite", epochs_done, s.steps_per_epoch, s.run_dir, epochs_done - 1)
    save_checkpoint(
        s.run_dir,
        {
            "anm_source": s.compiled.model.source,
            "anm_filename": s.compiled.model.filename,
            "config": asdict(s.config),
            "epoch": epochs_done,
            "step": s.step,
            "vae": s.vae.state_dict(),
            "optimizer": s.optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "frame_shape": list(s.train_data.frame_shape),
            "videos": s.videos,
            "metrics": row,
        },
    )


def _param_summary(vae: VideoVAE) -> dict[str, float]:
    values = {k: float(v.detach()) for k, v in vae.prior.param_values().items() if k in vae.prior.learnable_param_names}
    for name, learn, std in zip(vae.prior.state_names, vae.prior.noise_learnable, vae.prior.noise_std.tolist()):
        if learn:
            values[f"noise_{name}"] = std
    return values


def _distributed() -> tuple[int, int]:
    """(rank, world size) under torchrun, (0, 1) otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _average_gradients(vae: VideoVAE, world: int) -> None:
    """All-reduce the gradients across ranks (data parallel: each rank saw its share of the batch)."""
    import torch.distributed as dist

    for p in vae.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= world
