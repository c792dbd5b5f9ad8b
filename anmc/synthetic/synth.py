"""Synthetic physics videos: simulate a prior from its own `.anm`, draw it, write clips + ground truth.

Physics comes only from the `.anm`; the renderers only draw (`anmc.synthetic.render`). Simulation is
`anmc.codegen.rollout.simulate` (the same as `anmc simulate`), for `clips` independent clips of `frames`
frames, in float64 with one seeded generator:

    g = torch.Generator().manual_seed(seed)
    z_0 = module.sample_initial(clips, generator=g)                                      # (clips, d)
    z_t = module(z_{t-1}) + module.noise_std * torch.randn(clips, d, generator=g)       t = 1 .. frames-1

The renderer (`pick_renderer`): the declared one when the prior names observations after camera roles
(`anmc.synthetic.roles`: px, py, size, brightness, level; it draws y_t = module.observe(z_t)), else
the one named like the model (pendulum, spring, falling, double_pendulum, coupled_masses), else the
generic dot. Falling clips end before the floor: all clips are cut at the first frame where any clip's
ball would touch it (a note says so); declared clips likewise at the first frame where any clip's
observation is not finite or its `size` leaves (0, S] (an object reaching the camera). Pixel noise (`noise`, std in [0, 1]
intensity units) and a static cluttered background (`clutter`) are drawn from
`numpy.random.default_rng([seed, clip])`, so they never change the physics.

Output (`out_dir`): `clip_000.mp4`, `clip_001.mp4`, ... (the clip index is the file's position in
sorted order), `truth.csv` (columns clip,frame,<state>...) and `truth.json` (model, params, states,
observed, fps, size, seed, renderer + geometry, ...). See docs/data.md.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anmc.codegen.rollout import simulate
import anmc.synthetic.render as render
from anmc.data.io import IMAGE_SUFFIXES, VIDEO_SUFFIXES, VideoError, read_truth, write_truth, write_video
from anmc.synthetic.render import (
    RENDERERS, KEY_STATE, geometry, measure_frames, object_position_px, pulse_profile, render_frames, renderer_for,
)
from anmc.synthetic.roles import CAMERA_ROLES, RoleError, declared_roles, near_misses, split_role

__all__ = [
    "Synthetic", "synthesize", "write_synthetic", "pick_renderer", "render_frames", "object_position_px",
    "measure_frames", "pulse_profile", "geometry", "read_truth", "FORMATS",
]

FORMATS = ("mp4", "gif", "npz", "npy", "png")


@dataclass
class Synthetic:
    """What `synthesize` made: `frames[c]` uint8 `(T, S, S)`, `states` float64 `(clips, T, d)`, and
    `observations` float64 `(clips, T, m)` = module.observe(states) (named `observation_names`)."""

    model: str
    renderer: str
    frames: list[np.ndarray]
    states: np.ndarray
    state_names: tuple[str, ...]
    observed: tuple[str, ...]
    params: dict[str, float]
    geometry: dict
    fps: float
    size: int
    seed: int
    noise: float = 0.0
    clutter: bool = False
    paths: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    observations: np.ndarray | None = None
    observation_names: tuple[str, ...] = ()

    def truth_meta(self) -> dict:
        """The truth.json content."""
        return {
            "model": self.model,
            "params": self.params,
            "states": list(self.state_names),
            "observed": list(self.observed),
            "observations": list(self.observation_names),
            "fps": self.fps,
            "size": self.size,
            "seed": self.seed,
            "renderer": {"name": self.renderer, "geometry": self.geometry},
            "clips": len(self.frames),
            "frames": int(self.states.shape[1]),
            "pixel_noise": self.noise,
            "clutter": self.clutter,
            "files": [p.name for p in self.paths],
            "notes": list(self.notes),
            **self.extra,
        }


def _compiled(prior):
    """A CompiledPrior from a path, `.anm` text, or a CompiledPrior (returned as is)."""
    if hasattr(prior, "module") and hasattr(prior, "state_names"):
        return prior
    import anmc

    return anmc.compile_prior(prior)


def synthesize(
    prior,
    out_dir: str | Path | None = None,
    clips: int = 8,
    frames: int = 64,
    size: int = 64,
    seed: int = 0,
    noise: float = 0.0,
    clutter: bool = False,
    fmt: str = "mp4",
    renderer: str | None = None,
) -> Synthetic:
    """Simulate `prior` (path, `.anm` text or CompiledPrior) and render it; write it when `out_dir` is given.
    `renderer`: None (or "auto") picks it (`pick_renderer`); a name from `render.RENDERERS` forces it."""
    if fmt not in FORMATS:
        raise VideoError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}.")
    if clips < 1 or frames < 2 or size < 8:
        raise VideoError(f"need at least 1 clip, 2 frames and 8x8 pixels, got {clips} clips, {frames} frames, size {size}.")
    if not 0.0 <= noise <= 1.0:
        raise VideoError(f"pixel noise {noise} is outside [0, 1]; it is a std in image intensity units, e.g. --noise 0.05.")
    compiled = _compiled(prior)
    module = compiled.module().to(torch.float64).requires_grad_(False)
    names = tuple(module.state_names)
    model = str(getattr(module, "model_name", "") or getattr(getattr(compiled, "model", None), "name", "model"))
    kind = pick_renderer(module, model, renderer)
    values = {**getattr(getattr(compiled, "model", None), "consts", {}), **{k: float(v) for k, v in module.param_values().items()}}
    # the dot draws the states a frame shows (the observations' states; all states without `observe`): a dot
    # drawing a state the prior does not observe makes a video its own model cannot reconstruct
    drawn = [names.index(s) for s in module.observed_states][:2] or [0, 1][: len(names)]
    geom = geometry(kind, size, names, module.initial_mean.tolist(), module.initial_std.tolist(), params=values,
                    observations=module.observations, drawn=drawn)
    states = simulate(compiled, frames, seed=seed, runs=clips, noise=True).numpy()
    notes: list[str] = []
    suffixed = [name for name in module.observations if (role := split_role(name)) and role[1]]  # px1, py_tip, ...
    if kind == "dot" and suffixed:
        notes.append(f"{', '.join(suffixed)} place several objects, which the sprite decoder draws and the declared renderer "
                     f"does not: a dot shows {_dot_states(names, drawn)}; draw the system with its own "
                     f"renderer instead (--renderer {' or '.join(r for r in RENDERERS if r not in ('declared', 'dot'))})")  # fmt: skip
    elif kind == "dot":
        notes.append(f"no renderer for '{model}' and no camera role among its observations: a dot shows {_dot_states(names, drawn)}; "
                     "name observations px, py (or size, brightness, level) to choose what is drawn")  # fmt: skip
    for name, role in near_misses(module.observations).items():
        notes.append(f"the observation '{name}' is no camera role, so it is observed but not drawn; "
                     f"name it {role} to have it drawn as the {role}")  # fmt: skip
    if kind == "falling":
        states, note = _before_floor(states, names, frames)
        if note:
            notes.append(note)
    with torch.no_grad():
        observed = module.observe(torch.from_numpy(states)).numpy()
    drawn = states
    if kind == "declared":
        states, observed, more = _declared_clips(states, observed, geom, frames)
        notes += more
        drawn = observed
    rendered = []
    for c in range(clips):
        rng = np.random.default_rng([int(seed), c])
        background = render.clutter_background(size, rng) if clutter else None
        img = render.render_float(kind, drawn[c], geom, names, background)
        if noise > 0:
            img = np.clip(img + rng.normal(0.0, noise, img.shape).astype(np.float32), 0.0, 1.0)
        rendered.append(np.round(img * 255.0).astype(np.uint8))
    params = {k: float(v.detach()) for k, v in module.param_values().items()}
    syn = Synthetic(
        model=model, renderer=kind, frames=rendered, states=states, state_names=names,
        observed=tuple(module.observed_states), params=params, geometry=geom, fps=round(1.0 / float(module.dt), 6),
        size=int(size), seed=int(seed), noise=float(noise), clutter=bool(clutter), notes=notes,
        extra={"dt": float(module.dt), "noise_std": dict(zip(names, module.noise_std.tolist())), "format": fmt},
        observations=observed, observation_names=tuple(module.observations),
    )
    if out_dir is not None:
        write_synthetic(syn, out_dir, fmt)
    return syn


def _dot_states(names: tuple, drawn: list[int]) -> str:
    """What the dot shows, in words: `x across and y up`, or `x across`."""
    return " and ".join(f"{names[i]} {where}" for i, where in zip(drawn, ("across", "up")))


def pick_renderer(module, model: str, requested: str | None = None) -> str:
    """The renderer of `module`: with `requested` None or "auto", the declared renderer when its
    observations name a camera role, else the one named like `model` when the module has the state it
    draws, else the dot; a name from `render.RENDERERS` is checked against the module and returned."""
    names = tuple(module.state_names)
    if requested in (None, "auto"):
        return "declared" if declared_roles(module) else renderer_for(model, names)
    if requested == "declared":
        declared_roles(module, required=True)
        return requested
    if requested not in RENDERERS:
        raise RoleError(f"unknown renderer {requested!r}; use auto or one of {', '.join(RENDERERS)}.")
    key = KEY_STATE.get(requested, ())
    missing = [k for k in ((key,) if isinstance(key, str) else key) if k not in names]
    if missing:
        raise RoleError(
            f"the {requested} renderer draws the state {', '.join(missing)}, which {model} does not have; "
            "leave the renderer to auto (declare camera roles with `observe px = ..., py = ...`) or use dot."
        )
    return requested


def _declared_clips(states: np.ndarray, y: np.ndarray, geom: dict, frames: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Cut every clip at the first frame where any clip's observation is not finite or its size leaves
    (0, S]; notes for the roles outside their range (brightness and level are clipped, an object
    outside the frame is drawn as far as it shows)."""
    roles, size, notes = geom["roles"], geom["size"], []
    bad = ~np.isfinite(y).all(axis=2)
    if "size" in roles:
        radius = y[:, :, roles["size"]]
        bad |= ~((radius > 0) & (radius <= size))
    bad_frames = bad.any(axis=0)
    if bad_frames.any():
        keep = int(np.argmax(bad_frames))
        if keep < 2:
            raise VideoError(
                f"a declared clip has an observation that is not finite, or a size outside (0, {size}], within 2 frames; "
                "check the prior's initial distribution and its observe lines."
            )
        states, y = states[:, :keep], y[:, :keep]
        notes.append(f"clips cut to {keep} of {frames} frames so that every observation stays finite "
                     f"and every size within (0, {size}] pixels")  # fmt: skip
    for role, column in roles.items():
        lo, hi = CAMERA_ROLES[role].range(size)
        v = y[:, :, column]
        out = (v < lo) | (v > hi)
        if out.any():
            what = ("clipped to it" if role in ("brightness", "level")
                    else "the object is partly or wholly outside the frame there")  # fmt: skip
            notes.append(f"{role} is outside [{lo:g}, {hi:g}] in {100 * out.mean():.1f}% of the frames (from {v.min():.3g} "
                         f"to {v.max():.3g}); {what}")  # fmt: skip
    return states, y, notes


def _before_floor(states: np.ndarray, names: tuple[str, ...], frames: int) -> tuple[np.ndarray, str]:
    """Cut every clip at the first frame where any ball reaches the floor (y <= 0)."""
    y = states[:, :, names.index("y")]
    below = (y <= 0).any(axis=0)
    if not below.any():
        return states, ""
    keep = int(np.argmax(below))
    if keep < 2:
        raise VideoError(
            "a falling clip reaches the floor within 2 frames; raise the initial height in the .anm or use fewer clips."
        )
    return states[:, :keep], f"clips cut to {keep} of {frames} frames so that every ball ends before the floor"


_CLIP_NAME = re.compile(r"^clip_\d{3,}$")


def write_synthetic(syn: Synthetic, out_dir: str | Path, fmt: str = "mp4") -> list[Path]:
    """Write `clip_NNN.<fmt>` (or `clip_NNN/` PNG folders) + truth.csv + truth.json into `out_dir`.

    Clip files left by an earlier run in `out_dir` (clip_NNN with a video suffix, or clip_NNN/ folders
    of frames) are removed first, so the folder always holds exactly this data set.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise VideoError(f"{out} is a file; give a folder for the clips (-o DIR).")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VideoError(f"cannot create {out} ({err.strerror}); choose a writable folder.") from None
    for old in out.iterdir():
        if _CLIP_NAME.match(old.stem) and old.is_file() and old.suffix.lower() in VIDEO_SUFFIXES:
            old.unlink()
        elif _CLIP_NAME.match(old.name) and old.is_dir() and all(
            p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in old.iterdir()
        ):
            shutil.rmtree(old)
    width = max(3, len(str(len(syn.frames) - 1)))
    paths = []
    for c, frames in enumerate(syn.frames):
        name = f"clip_{c:0{width}d}" + ("" if fmt == "png" else f".{fmt}")
        paths.append(write_video(out / name, frames, fps=syn.fps))
    syn.paths = paths
    write_truth(out, syn.states, syn.state_names, syn.truth_meta())
    return paths
