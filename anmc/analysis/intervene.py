"""Interventions on a trained model, written in the `.anm` language, and counterfactual videos.

    cf = intervene("runs/pend", edits=["c = 0.8"], frames=90)       # or intervention="drag", file="drag.anm"
    cf.save("drag.gif")                                               # factual | counterfactual, side by side
    cf.frames, cf.factual        # uint8 (B, T, H, W[, 3]): decoded counterfactual and factual rollouts
    cf.latents, cf.factual_latents                                    # (B, T, d) latent trajectories

A trained run plus an intervention (a `set`, an edited equation, a new `init` distribution, a `start`
transform of the encoded state) gives f'. Starting from z_1 (the posterior mean of the opening window
of a real clip, or a draw from the initial distribution), both the factual z_{t+1} = f(z_t) and the
counterfactual z'_{t+1} = f'(z'_t) are rolled out and decoded frame by frame. Parameters the
intervention does not set keep their learned values, and so do the noise stds.

Where the counterfactual starts:
- from a video (default: the run's first training clip; `video=`, `start=`): both rollouts start at the
  encoded state z_1 of frames start .. start+k-1: with the smoother posterior, the filter's mean
  E[z_start | frames 0 .. start], so that the unobserved states (a velocity) come from the frames
  before the start. One frame says nothing about a velocity (at frame 0 the filter's omega is the
  prior's mean, 0), so the default start is frame `INFORMED_START` (clamped to the clip), and an
  earlier explicit start is noted. The intervention's `start x = expr` lines (an
  expression of the encoded state, e.g. `start theta = 1.5 * theta`) transform the counterfactual's.
  `init` lines do not apply (the start is encoded, not drawn).
- `sample=True`: the factual start is drawn from the model's initial distribution and the
  counterfactual's from the intervened one, with the same random numbers (so `init theta ~
  Normal(0, 1.6)` doubles the factual's draw of Normal(0, 0.8)); `start` lines then apply to the draw.
With `noise=True` both rollouts get the same noise draws (common random numbers), so that the two
videos differ only by the intervention.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from anmc.codegen.compile import compile_model
from anmc.codegen.rollout import check_finite
from anmc.data.io import WRITE_SUFFIXES, write_video
from anmc.errors import UserError
from anmc.analysis.evaluate import encode_frames
from anmc.vae.run import Run, load_run, load_run_clips
from anmc.lang.errors import did_you_mean
from anmc.symbolic.model import apply_edits, apply_intervention, apply_interventions_from, changed_since

__all__ = ["Counterfactual", "intervene", "intervened_module", "intervened_model", "rollout_counterfactual"]

INFORMED_START = 10  # frames: the default start, after enough frames for the filter to know the unobserved states


def intervened_model(run: Run, intervention: str | None = None, edits=(), file: str | Path | None = None):
    """The run's `Model` with the intervention applied (checked against the run's own prior)."""
    model = run.prior.model
    if file is not None:
        if not Path(file).is_file():
            raise UserError(f"{file} does not exist; give the path of a .anm file of intervention blocks.")
        model = apply_interventions_from(model, Path(file), intervention)
    elif intervention:
        if intervention not in model.interventions:
            known = ", ".join(model.interventions)
            hint = did_you_mean(intervention, model.interventions) or (
                f"; it declares {known}" if known else "; it declares none, so give --set/--edit or --file"
            )
            raise UserError(f"the prior of {run.run_dir} has no intervention '{intervention}'{hint}" + ("" if hint.endswith("?") else "."))
        model = apply_intervention(model, intervention)
    if edits:
        model = apply_edits(model, list(edits))
    return model


def intervened_module(run: Run, intervention: str | None = None, edits=(), file: str | Path | None = None):
    """The run's prior module with the intervention applied, learned values kept where it sets nothing.

    The intervened `Model` is kept on the module as `.anm_model`.
    """
    model = intervened_model(run, intervention, edits, file)
    module = compile_model(model).module()
    trained = run.module
    set_names = changed_since(model, run.prior.model)  # not the run's own edits (a learnable param's start)
    with torch.no_grad():
        for name, value in trained.param_values().items():
            if name not in set_names:
                module.set_param(name, float(value.detach()))
        for name, std in zip(trained.state_names, trained.noise_std.detach().tolist()):
            module.set_noise_std(name, std)
    module.anm_model = model
    return module.to(next(trained.parameters(), trained.initial_a).device).eval()


@dataclass
class Counterfactual:
    """Factual and counterfactual rollouts from one start: latents (B, T, d), frames uint8 (B, T, H, W[, 3])."""

    latents: np.ndarray
    factual_latents: np.ndarray
    frames: np.ndarray
    factual: np.ndarray
    state_names: tuple[str, ...]
    label: str
    dt: float
    observed: np.ndarray | None = None  # (B, T, H, W[, 3]): the real clip over the same span (black past its end)
    notes: list[str] = field(default_factory=list)

    @property
    def time(self) -> np.ndarray:
        """(T,) seconds since the start frame."""
        return np.arange(self.latents.shape[1]) * self.dt

    def side_by_side(self, index: int = 0) -> np.ndarray:
        """(T, strip + H, 2W (+W) + gaps, 3) uint8: [video |] factual | counterfactual, each labelled on top."""
        from anmc.analysis.labels import label_panels

        panels = [self.factual[index], self.frames[index]]
        titles = ["factual", "counterfactual"]
        if self.observed is not None:
            panels.insert(0, self.observed[index])
            titles.insert(0, "video")
        return label_panels(panels, titles)

    def save(self, path: str | Path, fps: float | None = None) -> list[Path]:
        """Write the side-by-side video(s), `<stem>_latents.csv` and `<stem>_latents.png`; return the paths.

        One sample writes `path`; a batch of B writes `<stem>_00<suffix>` .. `<stem>_<B-1><suffix>`.
        """
        path = Path(path)
        if path.suffix.lower() not in WRITE_SUFFIXES:
            raise UserError(f"cannot write {path.name}; the counterfactual video must be .gif or .mp4 (or .npz/.npy for the raw frames).")
        path.parent.mkdir(parents=True, exist_ok=True)
        fps = fps or round(1.0 / self.dt, 3)
        outputs = []
        batch = self.frames.shape[0]
        for b in range(batch):
            target = path if batch == 1 else path.with_name(f"{path.stem}_{b:02d}{path.suffix}")
            outputs.append(write_video(target, self.side_by_side(b), fps=fps))
        outputs.append(self.write_csv(path.with_name(path.stem + "_latents.csv")))
        outputs.append(self.plot(path.with_name(path.stem + "_latents.png")))
        return outputs

    def write_csv(self, path: str | Path) -> Path:
        """Columns sample, frame, time, factual_<state>..., counterfactual_<state>...; one row per sample and frame."""
        names = self.state_names
        t = self.time
        with open(path, "w") as fh:
            fh.write(",".join(["sample", "frame", "time", *(f"factual_{n}" for n in names), *(f"counterfactual_{n}" for n in names)]) + "\n")
            for b in range(self.latents.shape[0]):
                for i in range(self.latents.shape[1]):
                    row = [*self.factual_latents[b, i], *self.latents[b, i]]
                    fh.write(",".join([str(b), str(i), f"{t[i]:.6g}", *(f"{v:.6g}" for v in row)]) + "\n")
        return Path(path)

    def figure(self):
        """One panel per state: factual (blue, solid) and counterfactual (vermillion, dashed) latents against time."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        d = len(self.state_names)
        t = self.time
        fig, axes = plt.subplots(d, 1, figsize=(8, 2.4 * d), dpi=110, sharex=True, squeeze=False)
        for i, name in enumerate(self.state_names):
            ax = axes[i, 0]
            for b in range(self.latents.shape[0]):
                ax.plot(t, self.factual_latents[b, :, i], color="#0072B2", alpha=0.85, label="factual" if b == 0 else None)
                ax.plot(t, self.latents[b, :, i], color="#D55E00", ls="--", alpha=0.85, label="counterfactual" if b == 0 else None)
            ax.set_ylabel(name)
        axes[0, 0].set_title(textwrap.fill(self.label, 90), fontsize=10)
        axes[-1, 0].set_xlabel("time (s)")
        # the legend below the panels: inside one, it hid the curves that swing through its corner
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=8, loc="lower center", ncols=2, frameon=False)
        fig.tight_layout(rect=(0, 0.26 / fig.get_figheight(), 1, 1))
        return fig

    def plot(self, path: str | Path) -> Path:
        """Write `figure()` to `path` at its own size."""
        import matplotlib.pyplot as plt

        fig = self.figure()
        fig.savefig(path, dpi=fig.dpi)
        plt.close(fig)
        return Path(path)


def decode_latents(run: Run, z: torch.Tensor) -> np.ndarray:
    """Decoded frames of latents z (B, T, d): uint8 (B, T, H, W) gray or (B, T, H, W, 3)."""
    with torch.no_grad():
        img = torch.sigmoid(run.vae.decode(z.to(torch.float32)))  # (B, T, C, H, W)
    img = (img.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    img = img[:, :, 0] if img.shape[2] == 1 else img.permute(0, 1, 3, 4, 2)
    return img.numpy()


def rollout_counterfactual(
    run: Run,
    cf_module,
    z0_factual: torch.Tensor,
    z0_counterfactual: torch.Tensor | None = None,
    frames: int = 90,
    noise: bool = False,
    seed: int = 0,
    label: str = "",
    observed: np.ndarray | None = None,
    notes=(),
) -> Counterfactual:
    """Roll f from z0_factual and f' from cf_module.start(z0_counterfactual) (default: the same start); decode both."""
    factual_module = run.module.eval()
    z0_cf = z0_factual if z0_counterfactual is None else z0_counterfactual
    with torch.no_grad():
        z0_cf = cf_module.start(z0_cf)
        zf = factual_module.rollout(z0_factual, frames, noise=noise, generator=torch.Generator().manual_seed(seed + 1))
        zc = cf_module.rollout(z0_cf, frames, noise=noise, generator=torch.Generator().manual_seed(seed + 1))
    names = run.module.state_names  # a rollout that left the floats would be decoded into frames of nothing
    check_finite(zf.detach().cpu(), names, "the factual rollout (the trained model)", "sample",
                 "the learned dynamics diverge from this start: roll out fewer frames (--frames) or start elsewhere.")  # fmt: skip
    check_finite(zc.detach().cpu(), names, "the counterfactual rollout", "sample",
                 "the intervened dynamics diverge from this start: check the intervention, or roll out fewer frames (--frames).")  # fmt: skip
    return Counterfactual(
        latents=zc.detach().cpu().numpy(),
        factual_latents=zf.detach().cpu().numpy(),
        frames=decode_latents(run, zc),
        factual=decode_latents(run, zf),
        state_names=tuple(run.module.state_names),
        label=label,
        dt=float(run.module.dt),
        observed=observed,
        notes=list(notes),
    )


def _label(intervention, edits, file) -> str:
    parts = [p for p in (f"{intervention}" if intervention else None, f"from {Path(file).name}" if file else None) if p]
    parts += list(edits)
    return "; ".join(parts) or "no intervention"


def intervene(
    run: Run | str | Path,
    intervention: str | None = None,
    edits=(),
    file: str | Path | None = None,
    video=None,
    start: int | None = None,
    sample: bool = False,
    frames: int = 90,
    batch: int = 1,
    noise: bool = False,
    seed: int = 0,
) -> Counterfactual:
    """Counterfactual of a trained run (a directory or a loaded `Run`) under an intervention.

    `intervention` names a block of the run's prior (or of `file`, a .anm of intervention blocks: all
    of its blocks when no name is given); `edits` are one-line edits in the language (`"c = 0.8"`,
    `"omega' = ..."`, `"init theta ~ Normal(0, 1.6)"`, `"start theta = 1.5 * theta"`), checked against
    the trained model; errors point into the edit string. Start from `video` (default: the training
    clips) at frame `start` (default: INFORMED_START, so the start carries the velocity), or `sample`
    from the initial distribution. `batch` B
    counterfactuals: B draws, or B starts (clip b mod #clips, `frames` apart within a clip).
    """
    run = run if isinstance(run, Run) else load_run(run)
    edits = [edits] if isinstance(edits, str) else list(edits)
    if frames < 2:
        raise UserError(f"--frames must be at least 2, got {frames}.")
    if batch < 1:
        raise UserError(f"--batch must be at least 1, got {batch}.")
    if sample and (video is not None or start):
        raise UserError("--sample draws the start from the initial distribution; leave out --video/--start, or drop --sample.")
    if start is not None and start < 0:
        raise UserError(f"--start must be a frame index (0 or more), got {start}.")
    cf_module = intervened_module(run, intervention, edits, file)
    label = _label(intervention, edits, file)
    observed, notes = None, []
    if sample:
        z0_f = run.module.sample_initial(batch, generator=torch.Generator().manual_seed(seed))
        z0_cf = cf_module.sample_initial(batch, generator=torch.Generator().manual_seed(seed))
    else:
        if changed_since(cf_module.anm_model, run.prior.model, "inits"):
            notes.append("`init` lines apply only to --sample; this start is encoded from the video (use `start x = ...` to change it)")
        clips = load_run_clips(run, [str(video)] if video is not None else None)
        k = run.vae.window
        z0, spans = [], []
        for b in range(batch):
            clip = clips[b % len(clips)]
            first_start = min(INFORMED_START, clip.n_frames - k) if start is None else start
            s = first_start + (b // len(clips)) * frames
            if s + k > clip.n_frames:
                raise UserError(
                    f"{clip.path} has {clip.n_frames} frames; a start at frame {s} leaves "
                    + (f"no full window of {k} frames" if k > 1 else "no frame to encode")
                    + f" (the last start possible is {clip.n_frames - k})"
                    + (" (lower --batch or --frames)." if b else "; give a smaller --start.")
                )
            # the encoded start: the last window's posterior (the smoother posterior's filter reads the
            # clip from its first frame, so the velocity comes from every frame up to the start)
            first = 0 if run.vae.posterior == "smoother" else s
            mu, _ = encode_frames(run, clip.frames[first : s + k], causal=True)
            z0.append(mu[-1])
            unobserved = [n for n in run.module.state_names if n not in run.module.observed_states]
            if run.vae.posterior == "smoother" and unobserved and s < INFORMED_START and not any("read" in n for n in notes):
                notes.append(
                    f"the start at frame {s} has read {s + 1} frame(s), too few for the unobserved states "
                    f"({', '.join(unobserved)}), which stay near the prior's mean; a start at frame {INFORMED_START} "
                    "or later (the default) carries them from the video"
                )
            span = clip.frames[s + k - 1 : s + k - 1 + frames]
            if len(span) < frames:
                if not notes or "video panel" not in notes[-1]:
                    notes.append(f"{clip.path} has only {len(span)} frames from the start on; the video panel is black after them")
                pad = np.zeros((frames - len(span), *span.shape[1:]), dtype=span.dtype)
                span = np.concatenate([span, pad])
            spans.append(span)
        z0_f = torch.stack(z0)
        z0_cf = z0_f
        observed = np.stack(spans)
    return rollout_counterfactual(run, cf_module, z0_f, z0_cf, frames=frames, noise=noise, seed=seed, label=label,
                                  observed=observed, notes=notes)  # fmt: skip
