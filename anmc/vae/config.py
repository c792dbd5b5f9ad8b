"""Every training choice in one dataclass, saved in the checkpoint so that a run directory alone resumes.

    TrainConfig(epochs=30, kl="elbo", posterior="smoother", recon="bernoulli", ...)
    KL_READINGS       the transition-KL readings (`--kl`): `anmc.prior.TRANSITION_KL`'s names plus "standard"
    RECONSTRUCTIONS   the pixel likelihoods (`--recon`)
    BACKGROUNDS       what happens to a clip's static background (`--background`)
    START_PRIORS      the prior of a training window's first frame (`--start-prior`)
    POSTERIORS, DECODERS   the names `anmc.vae.nets` implements (`--posterior`, `--decoder`)
    parse_overrides(["recon=gaussian", "batch=16"])   KEY=VALUE strings (the scripts' `--set`) as TrainConfig fields

Plain data, no torch: the CLI builds its options from it without loading the networks
(tests/test_train.py checks the names against the implementations).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass

from anmc.errors import UserError

KL_READINGS = ("elbo", "elbo_mc", "mixture", "pairwise", "pooled", "standard")
RECONSTRUCTIONS = ("bernoulli", "gaussian", "calibrated")
POSTERIORS = ("factorized", "smoother")
DECODERS = ("deconv", "broadcast", "sprite")  # anmc.vae.nets.DECODERS; `--decoder` also takes "auto"
PRECISIONS = ("fp32", "bf16")
START_PRIORS = ("initial", "rollout")
BACKGROUNDS = ("keep", "remove", "auto")  # anmc.data.background.CHOICES (this module imports no numpy)
AUTO_RESTARTS = 3  # the starts a long enough run trains by default (TrainConfig.starts)


# the numeric fields' ranges, checked when a TrainConfig is made (None, where a field allows it, is not checked)
_RANGES = {
    "lr": (lambda v: 0 < v < float("inf"), "a positive learning rate"),
    "param_lr": (lambda v: 0 <= v < float("inf"), "a learning rate of 0 (the params stay) or more"),
    "lr_final": (lambda v: 0 <= v <= 1, "the fraction of the learning rates left at the end, in [0, 1]"),
    "beta": (lambda v: 0 <= v < float("inf"), "a KL weight of 0 or more"),
    "anchor": (lambda v: 0 <= v < float("inf"), "a weight of 0 or more"),
    "warmup": (lambda v: v >= 0, "0 steps or more"),
    "samples": (lambda v: v >= 1, "1 sample or more"),
    "context": (lambda v: 0 <= v <= 16, "0 to 16 frames"),
    "recon_std": (lambda v: 0 < v < float("inf"), "a positive pixel std"),
    "recon_std_floor": (lambda v: 0 < v < float("inf"), "a positive pixel std"),
    "size": (lambda v: v >= 8, "8 pixels or more"),
    "learn_params_after": (lambda v: v >= 0, "0 epochs or more"),
    "steps_per_epoch": (lambda v: v >= 1, "1 step or more (or leave it out for one pass over the data)"),
    "val_fraction": (lambda v: 0 <= v < 1, "a fraction of the clips in [0, 1)"),
    "grad_clip": (lambda v: 0 < v, "a positive gradient norm"),
    "time_limit": (lambda v: 0 <= v, "0 minutes (stop after the first epoch) or more"),
    "restart_epochs": (lambda v: v >= 1, "1 epoch or more"),
    "threads": (lambda v: v >= 1, "1 thread or more"),
}


@dataclass
class TrainConfig:
    """Every training choice; saved in the checkpoint so that a run directory alone can be resumed."""

    epochs: int = 30
    batch: int = 8
    seq_len: int = 32  # latent frames per training sequence (a sequence reads seq_len + window - 1 frames)
    lr: float = 1e-3
    # the learning rates fall along a cosine to lr_final times their start over the run (over the part of it
    # that fits a --time-limit: anmc.vae.train._fit_schedule), the networks' from lr and the physical params'
    # and learnable noise's from param_lr
    lr_final: float = 0.1
    param_lr: float = 1e-2
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
    # the prior of a training window's first frame: "initial", the declared initial distribution for every
    # window; "rollout", for a window that starts k frames into its clip, the prior's own marginal at frame
    # k (the moments of clips simulated from the initial distribution: anmc.prior.marginals), for
    # systems that drift away from where they start (docs/method.md §6). It reads a clip's first frame as
    # drawn from the initial distribution.
    start_prior: str = "initial"
    kl: str = "elbo"
    samples: int = 8
    window: int | None = None  # frames per encoder window; None: 1 for the smoother posterior, 2 for the factorized
    context: int = 0  # frames on either side a temporal convolution over frame features sees (0: off)
    # "smoother": q(z_1:T) = the prior conditioned on encoded readings of the observed states (anmc.posterior.smoother);
    # "factorized": q(z_t | window) for every state. None: smoother with --kl elbo, factorized with the other readings
    posterior: str | None = None
    recon: str = "bernoulli"
    recon_std: float = 0.1  # pixel std of the gaussian reconstruction
    # "calibrated": a Gaussian whose std is the batch's own root-mean-square reconstruction error (the
    # optimal sigma-VAE of Rybkin et al. 2021), never below this (a quarter of an 8-bit level)
    recon_std_floor: float = 0.001
    # "remove": each clip's static background (per pixel the most common of its median and 10th/90th
    # percentiles over the clip) is subtracted and what moves is stretched to the full range before training
    # (anmc.data.background; docs/data.md, The background matters); "auto": "remove" unless the clips'
    # background is dark, and the run records which (config.json says "keep" or "remove")
    background: str = "auto"
    # "auto": "sprite" when the prior declares what a frame shows (an observation named after a camera role:
    # px, py, size, brightness, angle, level; anmc.synthetic.roles), else "deconv"; the run records which
    # (config.json says "sprite" or "deconv"). The sprite puts the latents in the prior's units (docs/method.md)
    decoder: str = "auto"
    size: int | None = 32  # frames are resized to size x size (64x64 videos train at 32x32 by default)
    learn_params_after: int = 3  # epochs with physical params frozen (the warm-up is 2)
    # epochs the sprite decoder's sprites keep their initial soft blob (their alpha and colour frozen) while
    # the encoder learns where the objects are; learning both from the first step let the sprites become a
    # smear of every pose around a fixed place, with latents that hardly moved (docs/results.md §1d)
    sprite_shape_after: int = 1
    steps_per_epoch: int | None = 150  # None: one pass over every training sequence
    val_fraction: float = 0.1
    grad_clip: float = 100.0
    time_limit: float | None = None  # minutes; training stops after the epoch that crosses it, the rates' cosine ends near it
    # Several starts (seeds seed, seed + 1, ...) trained `restart_epochs` epochs each; the one with the lowest
    # validation loss is trained to the end (anmc.vae.train; docs/results.md §6: the same clips recovered or
    # not by the start alone, and the validation loss told them apart). The starts' time comes on top.
    # None: AUTO_RESTARTS where the run is long enough for them (`starts(world)`), else one
    restarts: int | None = None
    restart_epochs: int = 4
    seed: int = 0
    device: str = "auto"
    # torch's CPU thread count (None: leave torch's). Saved with the run and set again on resume: sums
    # split across threads round differently, so an exact resume needs the same count.
    threads: int | None = None
    # Scale (docs/scaling.md): bfloat16 autocast for the networks (the prior's algebra stays float32/float64),
    # torch.compile of the prior's generated core, and decoded frames cached in a folder and read from disk
    # by `workers` DataLoader processes instead of held in memory.
    precision: str = "fp32"
    compile: bool = False
    cache: str | None = None
    workers: int = 2

    def starts(self, world: int) -> int:
        """How many starts the run trains: `restarts` when given; by default AUTO_RESTARTS when the losing
        starts' epochs are at most a third of the run's (epochs >= 6 x restart_epochs: 24 of the default 30)
        and the run is one process (`world`: anmc.vae.distributed.launched_world()), else one."""
        if self.restarts is not None:
            return self.restarts
        return AUTO_RESTARTS if world == 1 and self.epochs >= 3 * (AUTO_RESTARTS - 1) * self.restart_epochs else 1

    def __post_init__(self):
        if self.kl not in KL_READINGS:
            raise UserError(f"--kl {self.kl!r} is not a reading anmc knows; use one of {', '.join(KL_READINGS)}.")
        if self.recon not in RECONSTRUCTIONS:
            raise UserError(f"--recon {self.recon!r}: use one of {', '.join(RECONSTRUCTIONS)}.")
        if self.start_prior not in START_PRIORS:
            raise UserError(f"--start-prior {self.start_prior!r}: use one of {', '.join(START_PRIORS)}.")
        if self.background not in BACKGROUNDS:
            raise UserError(f"--background {self.background!r}: use one of {', '.join(BACKGROUNDS)}.")
        if self.decoder not in ("auto", *DECODERS):
            raise UserError(f"--decoder {self.decoder!r}: use one of auto, {', '.join(DECODERS)}.")
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
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision {self.precision!r}: use one of {', '.join(PRECISIONS)}.")
        if self.workers < 0:
            raise UserError(f"--workers {self.workers}: give 0 (read in the training process) or more.")
        if self.restarts is not None and (self.restarts < 1 or (self.restarts > 1 and not 1 <= self.restart_epochs < self.epochs)):
            raise UserError(f"--restarts {self.restarts} --restart-epochs {self.restart_epochs}: give restarts >= 1 and 1 <= restart-epochs < epochs ({self.epochs}).")
        if self.sprite_shape_after < 0:
            raise UserError(f"--sprite-shape-after {self.sprite_shape_after}: give 0 (learn the sprites' shape from the first step) or more epochs.")
        if self.window < 1 or self.seq_len < 2 or self.batch < 1 or self.epochs < 1:
            raise UserError("window >= 1, seq-len >= 2, batch >= 1 and epochs >= 1 are needed.")
        for name, (ok, need) in _RANGES.items():  # the numbers a notebook (or the CLI's plain floats) may get wrong
            value = getattr(self, name)
            if value is not None and not (value == value and ok(value)):  # (value == value: not NaN)
                raise UserError(f"--{name.replace('_', '-')} {value}: give {need}.")

    @classmethod
    def from_dict(cls, data: dict, source: str = "the checkpoint") -> "TrainConfig":
        """The config saved in a checkpoint; a UserError naming the first field of the wrong type."""
        # runs from before the smoother were factorized, and from before background removal kept it
        # and from before the decoder was chosen from the prior trained the deconv decoder
        data = {"posterior": "factorized", "background": "keep", "decoder": "deconv"} | _typed_fields(data, cls, source)
        return cls(**data)


def parse_overrides(items: list[str]) -> dict:
    """`KEY=VALUE` strings as TrainConfig keyword arguments: VALUE read as JSON (`16`, `0.5`, `true`,
    `null`), else kept as text (`recon=gaussian`); a UserError for a key TrainConfig does not have or
    an item without `=`. The examples' and benchmarks' `--set` use it."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in names:
            raise UserError(f"--set {item!r}: write KEY=VALUE with KEY one of TrainConfig's fields ({', '.join(sorted(names))}).")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _typed_fields(data: dict, cls, path) -> dict:
    """`data` (a checkpoint's config) with each field of the dataclass `cls` of its declared type
    (`int`, `float`, `str`, `bool`, or one of those or None); a UserError naming the first that is not.
    Unknown keys are dropped (a newer anmc may add fields)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        ok = any(_is_a(value, t) for t in allowed)
        if not ok:
            names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
            raise UserError(
                f"{path}: the config's {f.name!r} is {type(value).__name__} {_shown(value)}, not {names}; "
                "the checkpoint was edited or comes from another program: retrain the run."
            )
        out[f.name] = value
    return out


def _is_a(value, kind) -> bool:
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
