"""Interventions on a trained model, written in the `.anm` language, and counterfactual videos.

    cf = intervene("runs/pend", edits=["c = 0.8"], frames=90)       # or intervention="drag", file="drag.anm"
    cf.save("drag.gif")                                               # factual | counterfactual, side by side

A trained run plus an intervention (a `set`, an edited equation, a new `init` distribution, a `start`
transform of the encoded state) gives f'. Starting from z_1 (the posterior mean of the opening window
of a real clip, or a draw from the intervened initial distribution), both the factual
z_{t+1} = f(z_t) and the counterfactual z'_{t+1} = f'(z'_t) are rolled out and decoded frame by frame.
Parameters the intervention does not set keep their learned values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from anmc.codegen.compile import compile_model
from anmc.errors import UserError
from anmc.evaluate import Run, encode_frames, load_run, load_run_clips
from anmc.symbolic.model import apply_edits, apply_intervention, apply_interventions_from


def intervened_module(run: Run, intervention: str | None = None, edits=(), file: str | Path | None = None):
    """The run's prior module with the intervention applied, learned values kept where it sets nothing."""
    model = run.prior.model
    if file is not None:
        model = apply_interventions_from(model, file, intervention)
    elif intervention:
        model = apply_intervention(model, intervention)
    if edits:
        model = apply_edits(model, list(edits))
    module = compile_model(model).module()
    trained = run.module
    set_names = set(model.overrides.sets)
    for name, value in trained.param_values().items():
        if name not in set_names:
            module.set_param(name, float(value))
    for name, std in zip(trained.state_names, trained.noise_std.tolist()):
        module.set_noise_std(name, std)
    return module.to(next(trained.parameters(), trained.initial_a).device).eval()


@dataclass
class Counterfactual:
    """Factual and counterfactual rollouts: latents (B, T, d), frames uint8 (B, T, H, W[, 3])."""

    latents: np.ndarray
    factual_latents: np.ndarray
    frames: np.ndarray
    factual: np.ndarray
    state_names: tuple[str, ...]
    label: str
    dt: float
    observed: np.ndarray | None = None  # the real clip's frames over the same span, when started from one
    notes: list[str] = field(default_factory=list)

    def side_by_side(self, index: int = 0) -> np.ndarray:
        """(T, H, 2W (+W), C) uint8: [real |] factual | counterfactual, with a label strip on top."""
        from anmc.video.labels import label_panels

        panels = [self.factual[index], self.frames[index]]
        titles = ["factual", "counterfactual"]
        if self.observed is not None:
            panels.insert(0, self.observed)
            titles.insert(0, "video")
        return label_panels(panels, titles)

    def save(self, path: str | Path, fps: float | None = None) -> list[Path]:
        """Write the side-by-side video (GIF/MP4/...), `<stem>_latents.csv` and `<stem>_latents.png`."""
        from anmc.video.io import write_video

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fps = fps or round(1.0 / self.dt, 3)
        outputs = []
        for b in range(self.frames.shape[0]):
            target = path if self.frames.shape[0] == 1 else path.with_name(f"{path.stem}_{b:02d}{path.suffix}")
            outputs.append(write_video(target, self.side_by_side(b), fps=fps))
        csv = path.with_name(path.stem + "_latents.csv")
        with open(csv, "w") as fh:
            names = self.state_names
            fh.write(",".join(["sample", "frame", *(f"factual_{n}" for n in names), *(f"counterfactual_{n}" for n in names)]) + "\n")
            for b in range(self.latents.shape[0]):
                for t in range(self.latents.shape[1]):
                    row = [*self.factual_latents[b, t], *self.latents[b, t]]
                    fh.write(",".join([str(b), str(t), *(f"{v:.6g}" for v in row)]) + "\n")
        outputs.append(csv)
        outputs.append(self.plot(path.with_name(path.stem + "_latents.png")))
        return outputs

    def plot(self, path: str | Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        d = len(self.state_names)
        t = np.arange(self.latents.shape[1]) * self.dt
        fig, axes = plt.subplots(d, 1, figsize=(8, 2.4 * d), sharex=True, squeeze=False)
        for i, name in enumerate(self.state_names):
            ax = axes[i, 0]
            for b in range(self.latents.shape[0]):
                ax.plot(t, self.factual_latents[b, :, i], color="tab:blue", alpha=0.8, label="factual" if b == 0 else None)
                ax.plot(t, self.latents[b, :, i], color="tab:green", alpha=0.8, label="counterfactual" if b == 0 else None)
            ax.set_ylabel(name)
        axes[0, 0].set_title(self.label)
        axes[0, 0].legend(fontsize=8)
        axes[-1, 0].set_xlabel("time (s)")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return Path(path)


def _decode(run: Run, z: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        img = torch.sigmoid(run.vae.decode(z))  # (B, T, C, H, W)
    img = (img.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    img = img[:, :, 0] if img.shape[2] == 1 else img.permute(0, 1, 3, 4, 2)
    return img.numpy()


def intervene(
    run: Run | str | Path,
    intervention: str | None = None,
    edits=(),
    file: str | Path | None = None,
    video=None,
    start: int = 0,
    sample: bool = False,
    frames: int = 90,
    batch: int = 1,
    noise: bool = False,
    seed: int = 0,
) -> Counterfactual:
    """Roll out the factual and counterfactual dynamics from a shared start and decode both."""
    run = run if isinstance(run, Run) else load_run(run)
    if frames < 2:
        raise UserError(f"--frames must be at least 2, got {frames}.")
    cf_module = intervened_module(run, intervention, edits, file)
    factual_module = run.module.eval()
    gen = torch.Generator().manual_seed(seed)
    label = intervention or "; ".join(edits) or (str(file) if file else "no intervention")
    observed = None
    notes = []
    if sample:
        z0_f = factual_module.sample_initial(batch, generator=gen)
        z0_cf = cf_module.sample_initial(batch, generator=torch.Generator().manual_seed(seed))
    else:
        clips = load_run_clips(run, [video] if video else None)
        k = run.vae.window
        z0 = []
        for b in range(batch):
            clip = clips[b % len(clips)]
            s = start + (b // len(clips)) * frames
            if s + k > clip.n_frames:
                raise UserError(f"{clip.path} has {clip.n_frames} frames; --start {s} leaves no full window of {k} frames.")
            mu, _ = encode_frames(run, clip.frames[s : s + k])
            z0.append(mu[0])
            if b == 0:
                span = clip.frames[s + k - 1 : s + k - 1 + frames]
                if len(span) == frames:
                    observed = span
                else:
                    notes.append(f"the clip has only {len(span)} frames after --start; the video panel is left out")
        z0_f = torch.stack(z0)
        z0_cf = z0_f
    with torch.no_grad():
        z0_cf = cf_module.start(z0_cf)
        zf = factual_module.rollout(z0_f, frames, noise=noise, generator=gen)
        zc = cf_module.rollout(z0_cf, frames, noise=noise, generator=gen)
    return Counterfactual(
        latents=zc.cpu().numpy(),
        factual_latents=zf.cpu().numpy(),
        frames=_decode(run, zc),
        factual=_decode(run, zf),
        state_names=tuple(run.module.state_names),
        label=label,
        dt=float(run.module.dt),
        observed=observed,
        notes=notes,
    )
