"""Train a video VAE whose latents follow an `.anm` prior: a short loop, read top to bottom.

    result = train("priors/pendulum.anm", ["data/pend"], "runs/pend", TrainConfig(epochs=20))

`train` is setup → for each epoch: steps → epoch end (validation, metrics row) → checkpoint. The loss
is `anmc.vae.loss.sequence_loss` (docs/method.md §5-6), every choice is a field of
`anmc.vae.config.TrainConfig`, and the run directory's format is `anmc.vae.run`.

Learnable `param`s and `noise ... learn` stay frozen for the first `learn_params_after` epochs, then
train with their own learning rate: a prototype saw a length L run away while the latents were
still collapsed (docs/method.md §6). The sprite decoder's sprites keep their initial blob for the first
`sprite_shape_after` epochs, so that the encoder finds the objects before the sprites learn their look.

CPU, one GPU (`device="cuda"`), or several processes and machines through `torchrun`: the loss module
in DistributedDataParallel, each rank reading its share of every global batch, rank 0 alone writing
logs and checkpoints (anmc.vae.distributed, docs/scaling.md).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from anmc.codegen.compile import CompiledPrior, compile_prior
from anmc.data.dataset import FrameSequences, frame_datasets
from anmc.data.io import Clip, videos_transform
from anmc.errors import UserError
from anmc.vae import distributed
from anmc.vae.config import TrainConfig
from anmc.vae.diagnostics import epoch_diagnostics
from anmc.vae.distributed import DistContext, RankBatches
from anmc.vae.divergence import TrainingDiverged, check_finite, diverged, finite_weights, guard  # noqa: F401  (TrainingDiverged re-exported)
from anmc.vae.loss import physical_parameters, sequence_loss, validation_loss
from anmc.vae.nets import VideoVAE, build_vae, chosen_decoder, on_device
from anmc.vae.run import CheckpointError, RunExists, append_metrics, load_checkpoint, read_metrics, save_checkpoint, truncate_metrics
from anmc.vae.run_lock import run_lock


@dataclass
class TrainResult:
    run_dir: Path
    epochs: int
    metrics: list[dict] = field(default_factory=list)
    stopped_early: str | None = None
    rank: int = 0  # this process's rank under torchrun (rank 0 logs and reports)
    starts: dict | None = None  # with --restarts: each start's validation loss and the one chosen (RUN/starts.json)
    diverged: dict = field(default_factory=dict)  # seed -> message: one start's seeds that diverged in their first epoch


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
    ctx: DistContext
    videos: list[str]
    start_epoch: int = 0
    step: int = 0
    model: torch.nn.Module | None = None  # the loss module, in DistributedDataParallel under torchrun
    # the step the learning rates' cosine ends at once a --time-limit shows that fewer than epochs x steps
    # per epoch fit (`_fit_schedule`; None: all of them); saved in the checkpoint
    schedule_steps: int | None = None

    @property
    def schedule_end(self) -> int:
        """The step the learning rates' cosine ends at: `schedule_steps`, else epochs x steps per epoch."""
        return self.schedule_steps or self.config.epochs * self.steps_per_epoch

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def rank(self) -> int:
        return self.ctx.rank

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
    overwrite: bool = False,
) -> TrainResult:
    """Train (or resume) a run in `run_dir`; returns the per-epoch metrics.

    A `run_dir` that already holds a checkpoint is continued with `resume`, replaced with `overwrite`, and
    otherwise left alone: RunExists (a trained run is not lost to a reused -o).

    `progress(epoch, step, steps, metrics)` is called after every step when given (the CLI draws a bar);
    `on_epoch(vae, row)` after every epoch's checkpoint (for a notebook's own diagnostics); with
    `config.starts(world)` > 1 (three starts by default in a long run: TrainConfig.starts) also after each start's epochs, the row then carrying `"start": seed`.

    The process that writes the run (rank 0) holds its lock throughout (`anmc.vae.run_lock`: a second
    writer gets RunLocked); a loss, gradient or smoother that becomes non-finite stops the run with
    TrainingDiverged (`anmc.vae.divergence`), the last finished epoch's checkpoint kept; a run of one start by
    default (not --restarts 1 given, not a resume) whose seed diverges before its first checkpoint trains the
    next seed instead, up to FIRST_EPOCH_RETRIES more (`TrainResult.diverged` names those that diverged).
    """
    run_dir = Path(run_dir)
    if not resume and not overwrite and (run_dir / "checkpoint.pt").exists():
        raise RunExists(f"{run_dir} already holds a trained run{_described(run_dir)}; --resume continues it, --overwrite trains a new one in its place, or choose another -o.")
    if config is not None and config.starts(distributed.launched_world()) > 1 and not (resume and (run_dir / "checkpoint.pt").exists()):
        return _train_best_start(prior, videos, run_dir, config, progress, on_epoch)
    if config is not None and config.restarts is None and not resume and distributed.launched_world() == 1:
        return _train_retrying(prior, videos, run_dir, config, progress, on_epoch)
    return _train_locked(prior, videos, run_dir, config, resume, progress, on_epoch)


# a run of one start (the default in a short run) that diverges before its first checkpoint tries the next seeds
FIRST_EPOCH_RETRIES = 2


def _train_retrying(prior, videos, run_dir: Path, config: TrainConfig, progress, on_epoch) -> TrainResult:
    """One start, as `_train_locked`; if it diverges before its first checkpoint (nothing is lost then), the
    next seeds are tried in its place, up to FIRST_EPOCH_RETRIES more, and the one that trains becomes the
    run's seed (`TrainResult.diverged` says which diverged). What diverges later, or in every seed, raises
    TrainingDiverged as before. Early in training the encoder's readings can wander far from the prior's
    range (a Van der Pol prior's seed 0 reached x = 11.6 at step 12, where its RK4 step is unstable, while
    seeds 1 and 2 trained: docs/cli.md, `--restarts`); an explicit --restarts 1 trains the one seed only."""
    started, failed = time.monotonic(), {}
    compiled = _compiled(prior)
    for seed in range(config.seed, config.seed + 1 + FIRST_EPOCH_RETRIES):
        try:
            result = _train_locked(compiled, videos, run_dir, replace(config, seed=seed), False, progress, on_epoch, started=started)
        except TrainingDiverged as e:
            if e.epochs_kept:  # it diverged after an epoch was kept: a divergence of a trained run
                raise
            failed[seed] = str(e)
            continue
        result.diverged = failed
        return result
    first, *others = failed
    raise TrainingDiverged(f"{failed[first].rstrip('.')}; seeds {' and '.join(str(s) for s in others)} diverged in their first epoch too.")


def _described(run_dir: Path) -> str:
    """' (prior P, E epochs)' of the run in run_dir, or '' when its checkpoint cannot be read."""
    try:
        payload = load_checkpoint(run_dir)
        return f" ({Path(payload['anm_filename']).name}, {payload['epoch']} epoch{'s' if payload['epoch'] != 1 else ''})"
    except UserError:
        return ""


def _train_locked(prior, videos, run_dir: Path, config, resume: bool, progress, on_epoch, stop_after=None, started=None) -> TrainResult:
    writer = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 writes the run
    with run_lock(run_dir) if writer else contextlib.nullcontext():
        return _train(prior, videos, run_dir, config, resume, progress, on_epoch, stop_after, started)


def _train(prior, videos, run_dir: Path, config, resume: bool, progress, on_epoch, stop_after=None, started=None) -> TrainResult:
    """`train`'s loop: setup, then for each epoch its steps, its end and its checkpoint. `stop_after`: the
    epoch to stop after (a start of --restarts); `started`: the time.monotonic() the time limit counts from."""
    s = _setup(prior, videos, run_dir, config, resume)
    try:
        return _loop(s, progress, on_epoch, stop_after, started)
    finally:
        distributed.teardown(s.ctx)


def _train_best_start(prior, videos, run_dir: Path, config: TrainConfig, progress, on_epoch) -> TrainResult:
    """`config.starts(world)` starts, seeds seed, seed + 1, ..., each trained `restart_epochs` epochs in
    RUN/starts/seedN; the one with the lowest validation loss then is copied to RUN and trained to the end
    (its seed becomes the run's). RUN/starts.json has each start's loss and the choice. A choice that was
    interrupted goes on where it stopped: finished starts are not trained again. The time limit counts the
    starts too."""
    started = time.monotonic()
    world = distributed.launched_world()
    if world > 1:
        raise UserError("--restarts runs its starts in one process; train with --restarts 1 under torchrun.")
    starts = config.starts(world)
    compiled = _compiled(prior)
    losses, failed = {}, {}
    for seed in range(config.seed, config.seed + starts):
        start_dir, start = run_dir / "starts" / f"seed{seed}", replace(config, seed=seed)
        done = _epochs_done(start_dir, start, compiled)
        try:
            if done < config.restart_epochs:
                # on_epoch sees each start's epochs too, marked {"start": seed} (RUN's own rows have no "start")
                tagged = None if on_epoch is None else (lambda vae, row, seed=seed: on_epoch(vae, {**row, "start": seed}))
                _train_locked(compiled, videos, start_dir, start, done > 0, progress, tagged, stop_after=config.restart_epochs)
        except TrainingDiverged as e:
            failed[seed] = str(e)
            continue
        rows = read_metrics(start_dir)  # restart_epochs of them, or fewer where the time limit came first
        row = rows[min(config.restart_epochs, len(rows)) - 1]
        loss = row.get("val_loss", row["loss"])
        losses[seed] = loss if math.isfinite(loss) else math.inf
    if not losses:
        raise UserError(f"every one of the {starts} starts diverged (first: {next(iter(failed.values()))}); see docs/cli.md, Diagnostics.")
    best = min(losses, key=losses.get)
    choice = {"restart_epochs": config.restart_epochs, "loss": {str(k): v for k, v in losses.items()}, "diverged": failed, "chosen": best}
    with run_lock(run_dir):  # RUN's writer; its temporary files named as save_checkpoint's, which the lock clears after a kill
        for name in ("metrics.jsonl", "checkpoint.pt"):  # the checkpoint last: its arrival is what a resume reads
            tmp = run_dir / f".{name}.tmp-{os.getpid()}"
            shutil.copyfile(run_dir / "starts" / f"seed{best}" / name, tmp)
            os.replace(tmp, run_dir / name)
        (run_dir / "starts.json").write_text(json.dumps(choice, indent=2) + "\n")
    result = _train_locked(compiled, videos, run_dir, replace(config, seed=best), True, progress, on_epoch, started=started)
    result.starts = choice
    return result


def _epochs_done(run_dir: Path, config: TrainConfig, compiled: CompiledPrior) -> int:
    """Epochs a start of --restarts has finished in `run_dir`: 0 unless it trained with this very config and prior."""
    try:
        saved = json.loads((run_dir / "config.json").read_text())
        for key in ("background", "decoder"):  # the start recorded what auto chose
            if getattr(config, key) == "auto":
                saved[key] = "auto"
        same = saved == asdict(config) and (run_dir / "prior.anm").read_text() == compiled.model.source
    except (OSError, ValueError):
        return 0
    return len(read_metrics(run_dir)) if same and (run_dir / "checkpoint.pt").exists() else 0


def _compiled(prior) -> CompiledPrior:
    """A CompiledPrior from one, a path, or `.anm` text."""
    return prior if isinstance(prior, CompiledPrior) else compile_prior(Path(prior) if not str(prior).count("\n") else prior)


def _loop(s: _Session, progress, on_epoch, stop_after: int | None = None, started: float | None = None) -> TrainResult:
    result = TrainResult(s.run_dir, s.start_epoch, rank=s.rank)
    started = time.monotonic() if started is None else started
    loop_started, loop_start_epoch = time.monotonic(), s.start_epoch
    for epoch in range(s.start_epoch, s.config.epochs):
        if stop_after is None and epoch > loop_start_epoch:  # a start of --restarts keeps the full schedule: the starts compare alike
            now = time.monotonic()
            _fit_schedule(s, epoch - loop_start_epoch, now - loop_started, now - started)
        learn_physics = epoch >= s.config.learn_params_after
        shape = getattr(s.vae.decoder, "shape_parameters", list)()  # the sprite decoder's sprites, if any
        schedule = ((s.physical, learn_physics), (shape, epoch >= s.config.sprite_shape_after))
        if s.model is None or any(p.requires_grad != on for params, on in schedule for p in params):
            for params, on in schedule:
                for p in params:
                    p.requires_grad_(on)
            # DDP averages the parameters that require grad when it is built: wrap again when they change
            s.model = distributed.wrap(_LossModule(s.vae, s.config), s.ctx, find_unused=s.config.kl == "standard")
        sums = {"loss": 0.0, "recon": 0.0, "kl": 0.0}
        epoch_started = time.monotonic()
        s.vae.train()
        for i, (frames, starts) in enumerate(_epoch_batches(s, epoch)):
            out = _step(s, frames, starts, epoch, i, last_good=result.epochs)
            for k in sums:
                sums[k] += float(out[k].detach())
            if progress is not None and s.rank == 0:
                progress(epoch, i + 1, s.steps_per_epoch, {k: float(out[k].detach()) for k in sums} | _param_summary(s.vae))
        sums = distributed.all_mean(sums, s.ctx)  # each rank's sums are over its share of the batches
        row = _end_epoch(s, epoch, sums, learn_physics, seconds=time.monotonic() - started)
        row["epoch_seconds"] = round(time.monotonic() - epoch_started, 2)  # (seconds: since the run, its starts too, began)
        row["diagnostics"] = epoch_diagnostics(s.vae, s.val_data if s.val_data is not None else s.train_data, s.config, row, s.device)
        result.metrics.append(row)
        result.epochs = epoch + 1
        if s.rank == 0:
            append_metrics(s.run_dir, row)
            _checkpoint(s, epoch + 1, row)
            if on_epoch is not None:
                on_epoch(s.vae, row)
        if stop_after is not None and epoch + 1 >= stop_after:
            result.stopped_early = f"stopped after epoch {epoch + 1} as asked"
            break
        if s.config.time_limit is not None and (time.monotonic() - started) / 60 >= s.config.time_limit:
            result.stopped_early = f"time limit of {s.config.time_limit:g} min reached after epoch {epoch + 1}"
            break
    return result


class _LossModule(torch.nn.Module):
    """The VAE's training loss as a module's forward: what DistributedDataParallel wraps (its gradient
    averaging is armed by forward calls)."""

    def __init__(self, vae: VideoVAE, config: TrainConfig):
        super().__init__()
        self.vae, self.config = vae, config

    def forward(self, frames: torch.Tensor, warm: float, noise, starts: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return sequence_loss(self.vae, frames, self.config, warm=warm, noise=noise, starts=starts)


_DEFAULTS = TrainConfig()


def _setup(prior, videos, run_dir: Path, config: TrainConfig | None, resume: bool) -> _Session:
    """Config (the checkpoint's when resuming), process group, compiled prior, data, VAE, optimizer, state."""
    config, payload = _run_config(run_dir, config, resume)
    if config.threads:
        torch.set_num_threads(config.threads)
    ctx = distributed.setup(resolve_device(config.device))
    distributed.check_batch(config.batch, ctx)
    torch.manual_seed(config.seed)

    compiled = _compiled(prior)
    _check_noise(compiled)
    steps = [list(step) for step in compiled.model.overrides.steps]
    if payload is not None and (payload["anm_source"] != compiled.model.source or payload.get("anm_steps", []) != steps):
        raise CheckpointError(
            f"the checkpoint in {run_dir} was trained with a different prior ({payload['anm_filename']}); "
            "resume with the same .anm, or train into a new -o directory."
        )
    train_data, val_data = _datasets(videos, config, ctx)
    if config.background == "auto":  # the run records what auto did, so that eval and intervene do the same
        config = replace(config, background=train_data.background)
    if config.decoder == "auto":  # likewise: sprite for a prior that declares its camera roles, else deconv
        config = replace(config, decoder=chosen_decoder(config.decoder, compiled.observations))
    # the sprite decoder's camera: the prior's pixels are the stored video's, the frames are resized to --size
    camera = None
    if config.decoder == "sprite" and not _given_clips(videos):
        camera = videos_transform(videos, config.size)
    vae = on_device(build_vae(compiled, train_data.frame_shape, config, camera=camera), ctx.device)
    if config.decoder == "sprite":  # its background (and fill) start from the data; a resume loads the trained ones
        vae.decoder.start_from(_frame_sample(train_data).to(ctx.device))
    if config.compile:
        vae.prior.compile_core()  # torch.compile of the generated integration (anmc.codegen.runtime)
    physical = physical_parameters(vae)
    s = _Session(
        run_dir, config, compiled, vae, _optimizer(vae, physical, config), physical, train_data, val_data, ctx,
        videos=recorded_videos(videos),
    )  # fmt: skip

    if payload is not None:
        _restore(s, payload)
    elif ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if (run_dir / "metrics.jsonl").exists():
            (run_dir / "metrics.jsonl").unlink()
    if ctx.is_main:
        (run_dir / "prior.anm").write_text(compiled.model.source)
        (run_dir / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    return s


def _check_noise(compiled: CompiledPrior) -> None:
    """A state whose noise std is 0 makes the transition density N(f(z), Q) degenerate: the first step's
    smoother met a singular covariance and the run stopped as 'diverged', blaming the dynamics."""
    zero = [name for name, n in compiled.model.noise.items() if n.value == 0]
    if zero:
        where = compiled.model.filename
        raise UserError(
            f"{where}: noise {', '.join(f'{s} = 0' for s in zero)}: training needs every state's noise std above 0 (without it the "
            f"transition density N(f(z), Q) is degenerate); declare a small one (noise {zero[0]} = 0.001) or learn it; "
            "a zero noise is fine for anmc simulate and compile."
        )


def _frame_sample(data, frames: int = 256) -> torch.Tensor:
    """Up to `frames` training frames spread evenly over the data, (N, C, H, W) float in [0, 1]."""
    if data.frames is not None:
        index = torch.linspace(0, data.frames.shape[0] - 1, min(frames, data.frames.shape[0])).long()
        return data.frames[index.to(data.frames.device)].float() / 255.0
    windows = torch.linspace(0, len(data) - 1, min(frames, len(data))).long().tolist()
    return torch.stack([data[i][0] for i in windows]).float() / 255.0


def _run_config(run_dir: Path, config: TrainConfig | None, resume: bool) -> tuple[TrainConfig, dict | None]:
    """The run's config and, when resuming, its checkpoint: the checkpoint's config, of which a resume may
    change only how long the run is (a larger --epochs) and where it runs (--device, --workers, --cache,
    when set off their defaults)."""
    if not resume:
        return config or TrainConfig(), None
    payload = load_checkpoint(run_dir)
    saved = TrainConfig.from_dict(payload["config"])
    if config is not None:
        saved.epochs = max(saved.epochs, config.epochs)
        for name in ("device", "workers", "cache"):
            if getattr(config, name) != getattr(_DEFAULTS, name):
                setattr(saved, name, getattr(config, name))
    return saved, payload


def _datasets(videos, config: TrainConfig, ctx):
    """Training and validation windows of the videos; with several ranks and a --cache, rank 0 decodes
    into the cache while the others wait, then they read it."""
    if ctx.world > 1 and config.cache is not None and not ctx.is_main:
        distributed.barrier(ctx)  # rank 0 decodes into the cache first
    out = frame_datasets(
        videos, length=config.seq_len + config.window - 1, size=config.size, val_fraction=config.val_fraction, seed=config.seed,
        device=ctx.device, cache=config.cache, background=config.background,
    )  # fmt: skip
    if ctx.world > 1 and config.cache is not None and ctx.is_main:
        distributed.barrier(ctx)
    return out


def _optimizer(vae, physical: list, config: TrainConfig) -> torch.optim.Adam:
    """Adam over the networks at --lr and the physical params and noise (`physical`) at --param-lr."""
    physical_ids = {id(p) for p in physical}
    groups = [{"params": [p for p in vae.parameters() if id(p) not in physical_ids], "lr": config.lr}]
    if physical:
        groups.append({"params": physical, "lr": config.param_lr})
    return torch.optim.Adam(groups)


def recorded_videos(videos) -> list[str]:
    """The training videos as the checkpoint records them: absolute paths, so that `anmc eval`, `plot` and
    `intervene` find them from any folder (a path as given was relative to where `anmc train` ran)."""
    items = videos if isinstance(videos, (list, tuple)) else [videos]
    return [str(Path(v).resolve()) if isinstance(v, (str, Path)) else str(v) for v in items]


def _given_clips(videos) -> bool:
    """Whether `videos` are decoded `Clip`s (a notebook's), not paths: their pixels are the frames'."""
    return isinstance(videos, (list, tuple)) and len(videos) > 0 and isinstance(videos[0], Clip)


def _restore(s: _Session, payload: dict) -> None:
    """Load a checkpoint's weights, optimizer, RNG and position into the session."""
    if tuple(payload["frame_shape"]) != tuple(s.train_data.frame_shape):
        raise CheckpointError(
            f"the checkpoint in {s.run_dir} was trained on frames of shape {tuple(payload['frame_shape'])}, "
            f"these are {tuple(s.train_data.frame_shape)}; pass the same --size and videos to resume."
        )
    s.vae.load_state_dict(payload["vae"])
    s.optimizer.load_state_dict(payload["optimizer"])
    distributed.set_rng_state(payload["rng"])
    s.start_epoch, s.step = int(payload["epoch"]), int(payload["step"])
    s.schedule_steps = payload.get("schedule_steps")  # None in checkpoints from before the fitted schedule
    truncate_metrics(s.run_dir, s.start_epoch, payload.get("metrics"))


def _epoch_batches(s: _Session, epoch: int):
    """The epoch's batches: frames (B / world, T + k − 1, C, H, W) uint8 on the training device, this
    rank's share of each global batch in the order `RankBatches` gives, with each window's first frame's
    index in its recorded clip (B / world,). Frames held in memory are gathered here; frames on disk
    (`--cache`) are read by a DataLoader's `workers` processes."""
    sampler = RankBatches(len(s.train_data), s.config.batch, s.steps_per_epoch, s.config.seed, epoch, s.ctx)
    if not s.train_data.on_disk:
        for idx in sampler:
            yield s.train_data.batch(idx).to(s.device, non_blocking=True), s.train_data.recorded_starts(idx)
        return
    loader = torch.utils.data.DataLoader(
        s.train_data, batch_sampler=sampler, num_workers=s.config.workers, pin_memory=s.device.type == "cuda",
        generator=torch.Generator().manual_seed(s.config.seed),  # its workers' seeds, not drawn from the global RNG
    )  # fmt: skip
    for idx, frames in zip(sampler, loader):  # the sampler gives the loader's batches again, in its order
        yield frames.to(s.device, non_blocking=True), s.train_data.recorded_starts(idx)


def _rate_factor(config: TrainConfig, step: int, total: int) -> float:
    """The learning rates' factor at `step`: a cosine from 1 to lr_final over `total` steps, then lr_final.
    The networks train at lr times it, the physical params and learnable noise at param_lr times it."""
    progress = min(1.0, step / max(1, total))
    return config.lr_final + (1 - config.lr_final) * 0.5 * (1 + math.cos(math.pi * progress))


def _fit_schedule(s: _Session, epochs_run: int, loop_seconds: float, limit_seconds: float) -> None:
    """With a --time-limit, end the learning rates' cosine when the time does: after each epoch, the
    epochs still to come are the time left over the mean epoch so far (this loop's), and the cosine's end
    moves to them if that is sooner than `epochs` (never later: the rates only fall). The seconds are
    averaged over the ranks, so every rank of a distributed run keeps the same schedule."""
    if s.config.time_limit is None:
        return  # the cosine spans `epochs` (and stretches with `--resume --epochs N`)
    t = distributed.all_mean({"loop": loop_seconds, "limit": limit_seconds}, s.ctx)
    left = max(0.0, 60 * s.config.time_limit - t["limit"]) / max(1e-9, t["loop"] / epochs_run)
    s.schedule_steps = min(s.schedule_end, s.step + int(left * s.steps_per_epoch))


def _step(s: _Session, frames: torch.Tensor, starts: torch.Tensor, epoch: int, i: int, last_good: int) -> dict[str, torch.Tensor]:
    """One optimizer step on this rank's share of a batch; raises TrainingDiverged on a non-finite loss."""
    config = s.config
    warm = min(1.0, s.step / config.warmup) if config.warmup else 1.0
    factor = _rate_factor(config, s.step, s.schedule_end)
    for group, rate in zip(s.optimizer.param_groups, (config.lr, config.param_lr)):  # networks, then physical (if any)
        group["lr"] = rate * factor
    where = (epoch + 1, i + 1, s.run_dir, last_good)
    noise = lambda shape: distributed.batch_noise(shape, config.batch, s.ctx, s.device)  # noqa: E731
    with guard(*where), torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
        out = s.model(frames, warm, noise, starts)  # guard: the smoother's solves on a blown-up covariance
    loss = out["loss"]
    check_finite("the loss", loss, *where)
    s.optimizer.zero_grad(set_to_none=True)
    with guard(*where):
        loss.backward()  # under DistributedDataParallel, also the mean of the ranks' gradients
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
            "anm_steps": [list(step) for step in s.compiled.model.overrides.steps],  # its interventions and edits
            "config": asdict(s.config),
            "epoch": epochs_done,
            "step": s.step,
            "vae": s.vae.state_dict(),
            "optimizer": s.optimizer.state_dict(),
            "rng": distributed.rng_state(),  # CPU and CUDA; the data order is a function of (seed, epoch)
            "frame_shape": list(s.train_data.frame_shape),
            "videos": s.videos,
            "metrics": row,
            "schedule_steps": s.schedule_steps,
        },
    )


def _param_summary(vae: VideoVAE) -> dict[str, float]:
    values = {k: float(v.detach()) for k, v in vae.prior.param_values().items() if k in vae.prior.learnable_param_names}
    for name, learn, std in zip(vae.prior.state_names, vae.prior.noise_learnable, vae.prior.noise_std.tolist()):
        if learn:
            values[f"noise_{name}"] = std
    return values
