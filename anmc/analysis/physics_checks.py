"""Counterfactual videos measured against physics.

    rows = check_interventions("runs/pend")            # the system comes from the run's truth.json
    for r in rows: print(r.intervention, r.quantity, r.simulated, r.measured_centroid, r.measured_encoder, r.passed)

For a run trained on synthetic videos (`anmc synth`: its `truth.json` beside the training clips gives
the renderer, its pixel geometry and the true parameter values), each check

1. picks a start: the encoded state (posterior mean) of a training-clip frame whose true-physics
   rollout suits the check (a pendulum swinging about 0.8 rad, the largest spring oscillation, the
   highest ball, ...);
2. applies the intervention to the trained model (`anmc.analysis.intervene`: learned values kept where the
   intervention sets nothing) and decodes the factual and counterfactual rollouts from that start;
3. tracks the object in the decoded frames twice: by intensity centroid (`render.measure_frames` on
   frames minus their median, i.e. the background; the geometry scaled to the run's frame size) and
   by the trained encoder (posterior mean of the drawn state; its sign aligned with the centroid's,
   since (theta, omega) -> (-theta, -omega) is a symmetry of the prior);
4. simulates the intervened `.anm` with the *true* parameter values (truth.json), deterministically,
   from the same encoded start (the intervention's `start` lines applied), and measures the simulated
   trajectory with the same signal analysis;
5. reports a `Row` per quantity: simulated, measured (centroid, encoder), relative errors, pass.

`passed` judges the centroid measurement (pixels only, independent of the model); `passed_encoder`
the encoder's. The checks (tolerances from the project's issue 7, never loosened):

| system | intervention | quantity | simulated | pass |
|---|---|---|---|---|
| pendulum | `start theta = 1.5 * theta` | amplitude (rad) | half the mean peak-to-peak of the simulated counterfactual | within 10% |
| pendulum | `start theta = 1.5 * theta` | period change T'/T - 1 | from the simulated factual and counterfactual | measured > 0 (longer period, the nonlinear pendulum) and within 50% of the simulated change |
| pendulum | `drag` (`set c = 0.8`) | amplitude decay per swing | -d log(peak-to-peak)/d swing of the simulation | within 15% |
| spring | `stiffness` (`set k = 4 * k`) | frequency ratio f'/f | about 2 | within 10% |
| spring | `stiffness` | frequency f' (Hz) | about 2 Hz | within 10% |
| falling | `drag` (`set c = 2.0`) | terminal velocity (m/s) | sqrt(m g / c) (true m, g) | within 15% |
| falling | `jupiter` (`set g = 24.8`) | acceleration (m/s^2) | g' | within 10% |
| led | `faster` (`set tau = 0.75`) | time constant (s) | -1 / slope of log b (0.75) | within 10% |
| torricelli | `wider_hole` (`set k = 0.4`) | outflow coefficient k | -2 d sqrt(h)/dt (0.4) | within 10% |
| incline | `waxed` (`set mu = 0.25`) | acceleration (m/s^2) | d2x/dt2, quadratic fit (g (sin a - mu cos a)) | within 10% |

The last three are drawn by the declared renderer (their `observe` camera roles): `track_declared` reads
the roles back from the frames (`render.measure_declared`) and inverts the true h for the drawn state.

A swing is half a period (one side to the other). Interventions come from the run's own intervention
blocks where it declares them, else from the equivalent edits listed in `CHECKS`.

The signal analysis (`anmc.analysis.signals`: `swings`, `amplitude`, `period`, `decay_per_swing`,
`fall_speed`, `fall_acceleration`, tracking) and `rows_from_videos` are plain functions of sampled
trajectories and frames, so that they can be checked on clean renders of simulated trajectories, with no
model involved (tests/test_physics_checks.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from anmc.analysis.signals import (
    align_sign,
    amplitude,
    decay_per_swing,
    fall_acceleration,
    fall_speed,
    period,
    scale_geometry,
    track_centroid,
    track_encoder,
)
from anmc.errors import UserError
from anmc.synthetic.render import KEY_STATE, measure_declared

__all__ = [
    "CHECKS", "Check", "DECLARED_KEY", "Row", "check_interventions", "decay_time", "drain_coefficient", "find_truth",
    "format_table", "rows_from_videos", "self_check", "simulate_check", "track_declared", "Trial",
]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# rows


@dataclass
class Row:
    """One measured quantity of one intervention."""

    system: str
    intervention: str
    quantity: str
    simulated: float
    measured_centroid: float
    measured_encoder: float
    rel_error: float  # |centroid - simulated| / |simulated|
    rel_error_encoder: float
    tolerance: float
    passed: bool  # the centroid measurement meets the tolerance (and any extra condition)
    passed_encoder: bool
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _rel(measured: float, simulated: float) -> float:
    if not (math.isfinite(measured) and math.isfinite(simulated)) or simulated == 0:
        return math.nan
    return abs(measured - simulated) / abs(simulated)


# ---------------------------------------------------------------------------------------------
# the checks


@dataclass
class Trial:
    """Everything a check measures: simulated and measured trajectories of the drawn state."""

    dt: float
    state_names: tuple[str, ...]
    sim_factual: np.ndarray  # (T, d) true physics, no intervention
    sim_counterfactual: np.ndarray  # (T, d) true physics, intervened
    params: dict[str, float]  # true values, intervened
    measured: dict[str, tuple[np.ndarray, np.ndarray]]  # method -> (factual (T,), counterfactual (T,)) drawn state

    @property
    def t(self) -> np.ndarray:
        return np.arange(self.sim_counterfactual.shape[0]) * self.dt

    def sim(self, which: str, state: str) -> np.ndarray:
        z = self.sim_factual if which == "factual" else self.sim_counterfactual
        return z[:, self.state_names.index(state)]


# a quantity: name, tolerance, simulated(trial), measured(trial, factual, counterfactual), extra pass condition
@dataclass(frozen=True)
class Quantity:
    name: str
    tolerance: float
    simulated: Callable[[Trial], float]
    measured: Callable[[Trial, np.ndarray, np.ndarray], float]
    condition: Callable[[float, float], bool] | None = None  # (measured, simulated) -> extra requirement
    condition_note: str = ""


@dataclass(frozen=True)
class Check:
    """One intervention of one system and what to measure in its counterfactual video."""

    system: str
    name: str
    intervention: str | None  # a block of the prior, used when the run's prior declares it
    edits: tuple[str, ...]  # else (or in addition, when intervention is None) these edits
    frames: int
    quantities: tuple[Quantity, ...]
    pick: Callable[[np.ndarray, np.ndarray, tuple[str, ...], float], np.ndarray]  # scores (N,) of candidate starts; highest wins
    slug: str = ""  # file names: intervene_<system>_<slug>.gif (docs/interventions.md links these)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.intervention or '; '.join(self.edits)})"


def _key(system: str) -> str:
    return DECLARED_KEY[system] if system in DECLARED_KEY else KEY_STATE[system]


def track_declared(frames: np.ndarray, geom: dict, module, state: str, reference: np.ndarray) -> np.ndarray:
    """The drawn `state` (T,) read from frames (T, S, S) of the declared renderer: the roles measured
    (`render.measure_declared`; without a fill, each frame minus its median, the background, as
    `track_centroid` does), then per frame the value of `state` whose observations h(z)
    (`module.observe`, `reference` (T, d) for the other states) are nearest to them, by a grid over
    three times the reference's range refined to a parabola's vertex. `geom` is the geometry of the
    stored video (truth.json's); the frames may be at another size (area-resized: pixels scale)."""
    f = np.asarray(frames, np.float64)
    f = f / 255.0 if np.asarray(frames).dtype == np.uint8 else f
    size = f.shape[-1]
    scaled = scale_geometry(geom, size)
    if not geom["level"]:  # a decoded background is never exactly black: each frame's median goes (a fill is measured as drawn)
        f = f - np.median(f.reshape(f.shape[0], -1), axis=1)[:, None, None]
    measured = measure_declared(f, scaled)
    to_stored = geom["size"] / size
    names = [n for n in module.observations if n in measured]
    y = np.stack([measured[n] * (to_stored if n in ("px", "py", "size") else 1.0) for n in names], -1)  # (T, r)
    cols = [list(module.observations).index(n) for n in names]
    i = list(module.state_names).index(state)
    lo, hi = float(np.nanmin(reference[:, i])), float(np.nanmax(reference[:, i]))
    span = max(hi - lo, 1e-3)
    grid = np.linspace(lo - span, hi + span, 3001)
    z = np.repeat(np.asarray(reference, np.float64)[:, None, :], grid.size, axis=1)  # (T, G, d)
    z[..., i] = grid[None, :]
    with torch.no_grad():
        h = module.observe(torch.as_tensor(z, dtype=torch.float64)).numpy()[..., cols]  # (T, G, r)
    err = np.nansum((h - y[:, None, :]) ** 2, axis=-1)
    k = np.clip(err.argmin(axis=1), 1, grid.size - 2)
    rows = np.arange(len(k))
    e0, e1, e2 = err[rows, k - 1], err[rows, k], err[rows, k + 1]
    den = e0 - 2 * e1 + e2
    shift = np.where(den > 0, 0.5 * (e0 - e2) / np.where(den > 0, den, 1.0), 0.0)
    out = grid[k] + np.clip(shift, -1, 1) * (grid[1] - grid[0])
    return np.where(np.isfinite(y).all(axis=1), out, np.nan)


def _sim_amplitude(which):
    return lambda tr: amplitude(tr.t, tr.sim(which, _key("pendulum")))


def _period_change_sim(tr: Trial) -> float:
    key = _key("pendulum")
    return period(tr.t, tr.sim("counterfactual", key)) / period(tr.t, tr.sim("factual", key)) - 1.0


def _period_change_meas(tr: Trial, f: np.ndarray, cf: np.ndarray) -> float:
    return period(tr.t, cf) / period(tr.t, f) - 1.0


def _freq_ratio_sim(tr: Trial) -> float:
    return period(tr.t, tr.sim("factual", "x")) / period(tr.t, tr.sim("counterfactual", "x"))


def _above_floor(y: np.ndarray, margin: float = 0.05) -> np.ndarray:
    """Frames before the ball first comes within `margin` m of the floor (a NaN reading is not a touch)."""
    y = np.asarray(y, np.float64)
    below = y <= margin
    first = int(np.argmax(below)) if below.any() else len(y)
    keep = np.zeros(len(y), bool)
    keep[:first] = True
    return keep


def _terminal_velocity(tr: Trial) -> float:
    p = tr.params
    return math.sqrt(p["m"] * p["g"] / p["c"]) if p.get("c", 0) > 0 else math.inf


def _terminal_mask(tr: Trial) -> np.ndarray:
    """Frames where the simulated ball is above the floor and within 5% of its terminal speed."""
    y, v = tr.sim("counterfactual", "y"), tr.sim("counterfactual", "v")
    return _above_floor(y) & (np.abs(v) >= 0.95 * _terminal_velocity(tr))


def _terminal_meas(tr: Trial, f: np.ndarray, cf: np.ndarray) -> float:
    return fall_speed(tr.t, cf, _terminal_mask(tr) & _above_floor(cf))


def _accel_meas(tr: Trial, f: np.ndarray, cf: np.ndarray) -> float:
    return fall_acceleration(tr.t, cf, _above_floor(tr.sim("counterfactual", "y")) & _above_floor(cf))


# candidate scores (the start with the highest score is used): sims (N, T, d)
def _pick_pendulum_amplitude(sim_f, sim_cf, names, dt):
    th, th_cf = sim_f[..., names.index("theta")], sim_cf[..., names.index("theta")]
    amp = np.abs(th).max(1)
    ok = (np.abs(th_cf).max(1) < 2.6) & (np.abs(sim_cf[..., names.index("omega")]).max(1) > 0)
    return np.where(ok, -np.abs(amp - 0.8), -np.inf)


def _pick_largest(state, limit=np.inf):
    def pick(sim_f, sim_cf, names, dt):
        x = sim_f[..., names.index(state)]
        amp = np.abs(x - x.mean(1, keepdims=True)).max(1)
        return np.where(np.abs(sim_cf[..., names.index(state)]).max(1) < limit, amp, -np.inf)

    return pick


def _pick_highest(sim_f, sim_cf, names, dt):
    y = sim_cf[..., names.index("y")]
    return _above_floor_count(y).astype(np.float64)


def _above_floor_count(y: np.ndarray) -> np.ndarray:
    return np.array([_above_floor(row).sum() for row in y])


# systems drawn by the declared renderer (their camera roles): the drawn state, read back from the roles
DECLARED_KEY = {"led": "b", "torricelli": "h", "incline": "x", "spring_camera": "x", "falling_camera": "y", "looming": "d"}


def _fit_window(y: np.ndarray, floor: float) -> np.ndarray:
    """Frames of a decaying trace (brightness, level) up to the first one at or below `floor`."""
    keep = np.isfinite(y) & (y > floor)
    below = np.flatnonzero(~keep)
    if below.size:
        keep[below[0]:] = False
    return keep


def decay_time(t, b, floor: float = 0.03) -> float:
    """tau of b = b0 exp(-t / tau): -1 / the slope of log b (NaN with fewer than 5 frames above `floor`)."""
    t, b = np.asarray(t, np.float64), np.asarray(b, np.float64)
    keep = _fit_window(b, floor)
    if keep.sum() < 5:
        return math.nan
    return float(-1.0 / np.polyfit(t[keep], np.log(b[keep]), 1)[0])


def drain_coefficient(t, h, floor: float = 0.03) -> float:
    """k of h' = -k sqrt(h) (Torricelli): d sqrt(h) / dt = -k / 2, from a line through sqrt(h) above `floor`."""
    t, h = np.asarray(t, np.float64), np.asarray(h, np.float64)
    keep = _fit_window(h, floor)
    if keep.sum() < 5:
        return math.nan
    return float(-2.0 * np.polyfit(t[keep], np.sqrt(h[keep]), 1)[0])


def _slope_acceleration(t, x) -> float:
    """d2x/dt2 along the slope, from a quadratic fit."""
    return -fall_acceleration(t, x)


def _pick_lowest(state):
    def pick(sim_f, sim_cf, names, dt):
        return -sim_cf[:, 0, names.index(state)]

    return pick


def _pick_nearest(state, closest: float):
    """The start that comes nearest (the largest apparent size) without passing `closest` in either video."""

    def pick(sim_f, sim_cf, names, dt):
        d, d_cf = sim_f[..., names.index(state)], sim_cf[..., names.index(state)]
        return np.where((d.min(1) > closest) & (d_cf.min(1) > closest), -d.min(1), -np.inf)

    return pick


def _quantity_of(name: str, tolerance: float, state: str, fn) -> Quantity:
    """The same analysis `fn(t, trace)` of the simulated and the measured counterfactual trace of `state`."""
    return Quantity(name, tolerance, lambda tr: fn(tr.t, tr.sim("counterfactual", state)), lambda tr, f, cf: fn(tr.t, cf))


CHECKS: dict[str, tuple[Check, ...]] = {
    "pendulum": (
        Check(
            "pendulum", "amplitude x1.5", None, ("start theta = 1.5 * theta",), 300,
            (
                Quantity("amplitude (rad)", 0.10, _sim_amplitude("counterfactual"), lambda tr, f, cf: amplitude(tr.t, cf)),
                Quantity("period change T'/T - 1", 0.50, _period_change_sim, _period_change_meas,
                         condition=lambda m, s: m > 0, condition_note="needs a longer period (measured > 0)"),
            ),
            _pick_pendulum_amplitude, "amplitude",
        ),
        Check(
            "pendulum", "linear drag", "drag", ("c = 0.8",), 180,
            (Quantity("amplitude decay per swing", 0.15,
                      lambda tr: decay_per_swing(tr.t, tr.sim("counterfactual", "theta")),
                      lambda tr, f, cf: decay_per_swing(tr.t, cf)),),
            _pick_largest("theta", 2.6), "drag",
        ),
    ),
    "spring": (
        Check(
            "spring", "stiffness x4", "stiffness", ("k = 4 * k",), 120,
            (
                Quantity("frequency ratio f'/f", 0.10, _freq_ratio_sim, lambda tr, f, cf: period(tr.t, f) / period(tr.t, cf)),
                Quantity("frequency f' (Hz)", 0.10, lambda tr: 1.0 / period(tr.t, tr.sim("counterfactual", "x")),
                         lambda tr, f, cf: 1.0 / period(tr.t, cf)),
            ),
            _pick_largest("x"), "stiffness",
        ),
    ),
    "falling": (
        Check(
            "falling", "quadratic drag", "drag", ("c = 2.0",), 75,
            (Quantity("terminal velocity (m/s)", 0.15, _terminal_velocity, _terminal_meas),),
            _pick_highest, "drag",
        ),
        Check(
            "falling", "Jupiter gravity", "jupiter", ("g = 24.8",), 30,
            (Quantity("acceleration (m/s^2)", 0.10, lambda tr: tr.params["g"], _accel_meas),),
            _pick_highest, "jupiter",
        ),
    ),
    # drawn by the declared renderer (anmc.synthetic.render): the measured trace is the key state read
    # back from the roles in the frames (`track_declared`)
    "led": (
        Check(
            "led", "time constant /2", "faster", ("tau = 0.75",), 60,
            (_quantity_of("time constant (s)", 0.10, "b", decay_time),),
            _pick_largest("b"), "faster",
        ),
    ),
    "torricelli": (
        Check(
            "torricelli", "hole area x2", "wider_hole", ("k = 0.4",), 90,
            (_quantity_of("outflow coefficient k", 0.10, "h", drain_coefficient),),
            _pick_largest("h"), "wider_hole",
        ),
    ),
    "looming": (
        Check(
            "looming", "Moon gravity", "moon", ("g = 1.62",), 120,
            (_quantity_of("acceleration (m/s^2)", 0.10, "d", fall_acceleration),),
            _pick_nearest("d", 3.0), "moon",
        ),
        Check(
            "looming", "Jupiter gravity", "jupiter", ("g = 24.8",), 60,
            (_quantity_of("acceleration (m/s^2)", 0.10, "d", fall_acceleration),),
            _pick_nearest("d", 3.0), "jupiter",
        ),
    ),
    "incline": (
        Check(
            "incline", "waxed", "waxed", ("mu = 0.25",), 75,
            (_quantity_of("acceleration (m/s^2)", 0.10, "x", _slope_acceleration),),
            _pick_lowest("x"), "waxed",
        ),
    ),
}  # fmt: skip
# the spring and the falling object with their cameras declared (priors/*_camera.anm), drawn by the
# declared renderer: the same checks, the state read back through h
CHECKS["spring_camera"] = tuple(replace(c, system="spring_camera") for c in CHECKS["spring"])
CHECKS["falling_camera"] = tuple(replace(c, system="falling_camera") for c in CHECKS["falling"])


def rows_from_videos(check: Check, trial: Trial) -> list[Row]:
    """The rows of `check` from a trial whose `measured` holds the tracked drawn state per method."""
    rows = []
    empty = np.full(len(trial.t), np.nan)
    for q in check.quantities:
        sim = float(q.simulated(trial))
        values = {}
        for method in ("centroid", "encoder"):
            f, cf = trial.measured.get(method, (empty, empty))
            values[method] = float(q.measured(trial, f, cf)) if np.isfinite(cf).any() else math.nan
        errs = {m: _rel(v, sim) for m, v in values.items()}

        def ok(m):
            e = errs[m]
            good = math.isfinite(e) and e <= q.tolerance
            return bool(good and (q.condition is None or q.condition(values[m], sim)))

        notes = []
        if q.condition is not None:
            notes.append(q.condition_note)
        if not math.isfinite(values["centroid"]):
            notes.append("nothing measurable in the video (too few swings or frames)")
        rows.append(Row(check.system, check.label, q.name, sim, values["centroid"], values["encoder"], errs["centroid"],
                        errs["encoder"], q.tolerance, ok("centroid"), ok("encoder"), "; ".join(n for n in notes if n)))  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------------------
# simulation of the true intervened physics


def _intervened(model, check: Check):
    from anmc.symbolic.model import apply_edits, apply_intervention

    if check.intervention and check.intervention in model.interventions:
        return apply_intervention(model, check.intervention)
    return apply_edits(model, list(check.edits))


def _true_module(model, params: dict[str, float], base=None):
    """`model` compiled (float64) with the true `params` except those it sets on top of `base` (the
    intervention's; not the run's own edits, such as a learnable param's start value)."""
    from anmc.codegen.compile import compile_model
    from anmc.symbolic.model import changed_since

    module = compile_model(model).module().double().requires_grad_(False)
    keep = changed_since(model, base if base is not None else model)
    for name, value in params.items():
        if name in module.param_names and name not in keep:
            module.set_param(name, float(value))
    return module


def true_modules(model, check: Check, params: dict[str, float] | None = None):
    """(factual, counterfactual) generated modules of `model` (a `Model`) and `model` under `check`,
    float64, with the true `params` (e.g. truth.json's) where the intervention sets nothing."""
    params = params or {}
    return _true_module(model, params), _true_module(_intervened(model, check), params, base=model)


def simulate_check(model, check: Check, z0, params: dict[str, float] | None = None, frames: int | None = None):
    """Deterministic true-physics rollouts from start(s) z0 (..., d): (factual, counterfactual, cf module).

    The counterfactual starts at the intervention's `start` transform of z0, like `anmc intervene`.
    """
    mf, mcf = true_modules(model, check, params)
    frames = frames or check.frames
    with torch.no_grad():
        z0 = torch.as_tensor(np.asarray(z0), dtype=torch.float64)
        sim_f = mf.rollout(z0, frames).numpy()
        sim_cf = mcf.rollout(mcf.start(z0), frames).numpy()
    return sim_f, sim_cf, mcf


def _param_values(module) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in module.param_values().items()}


# ---------------------------------------------------------------------------------------------
# a trained run


def find_truth(run) -> tuple[dict, Path]:
    """truth.json beside the run's training videos (in the folder, or beside a clip file)."""
    for source in run.videos:
        p = Path(source)
        for candidate in (p / "truth.json", p.parent / "truth.json"):
            if candidate.is_file():
                return json.loads(candidate.read_text()), candidate
    raise UserError(
        f"no truth.json beside the training videos of {run.run_dir}; the physics checks need a run trained on `anmc synth` data."
    )


def _candidate_starts(run, max_clips: int = 16) -> np.ndarray:
    """Encoded states (N, d) of every frame (with a full window) of the first `max_clips` training clips."""
    from anmc.analysis.evaluate import encode_frames
    from anmc.vae.run import load_run_clips

    clips = load_run_clips(run)[:max_clips]
    return np.concatenate([encode_frames(run, c.frames)[0].cpu().numpy() for c in clips]).astype(np.float64)


def check_interventions(
    run_dir,
    system: str | None = None,
    checks: Sequence[str] | None = None,
    save_dir: str | Path | None = None,
    frames_scale: float = 1.0,
) -> list[Row]:
    """Measure the counterfactual videos of a trained synthetic run against the intervened physics.

    `system`: pendulum, spring, falling, led, torricelli or incline (default: the model named in truth.json). `checks`: names
    of `CHECKS[system]` entries to run (default all). `save_dir`: also write each counterfactual as
    `intervene_<system>_<slug>.gif` (+ latents CSV/PNG) there. `frames_scale` shortens rollouts
    (smoke tests only: too few swings leave quantities unmeasurable).
    """
    from anmc.vae.run import Run, load_run
    from anmc.analysis.intervene import intervened_module, rollout_counterfactual

    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir)
    meta, truth_path = find_truth(run)
    system = system or meta.get("model") or run.prior.model.name
    if system not in CHECKS:
        raise UserError(f"no physics checks for '{system}'; there are checks for {', '.join(CHECKS)}.")
    renderer = (meta.get("renderer") or {}).get("name")
    declared = renderer == "declared" and system in DECLARED_KEY
    if renderer != system and not declared:
        raise UserError(f"{run.run_dir} was trained on {renderer} videos ({truth_path}), not {system} ones; leave out --system or pass --system {renderer}.")
    c, h, w = run.payload["frame_shape"]
    geom = meta["renderer"]["geometry"] if declared else scale_geometry(meta["renderer"]["geometry"], h)
    names = tuple(run.module.state_names)
    key = _key(system)
    if key not in names:
        raise UserError(f"the prior of {run.run_dir} has no state '{key}' for the {system} renderer to draw.")
    true_params = {k: float(v) for k, v in (meta.get("params") or {}).items()}
    model = run.prior.model
    candidates = _candidate_starts(run)
    wanted = CHECKS[system] if not checks else [ch for ch in CHECKS[system] if ch.name in checks or ch.intervention in checks]
    rows: list[Row] = []
    factual = _true_module(model, true_params) if declared else None  # its true h reads the factual videos' roles
    for check in wanted:
        frames = max(8, int(round(check.frames * frames_scale)))
        sim_f, sim_cf, mcf = simulate_check(model, check, candidates, true_params, frames)
        i = int(np.argmax(check.pick(sim_f, sim_cf, names, float(run.module.dt))))
        z0 = torch.as_tensor(candidates[i : i + 1], dtype=torch.float32)
        if check.intervention and check.intervention in model.interventions:
            cf_module = intervened_module(run, intervention=check.intervention)
        else:
            cf_module = intervened_module(run, edits=list(check.edits))
        cf = rollout_counterfactual(run, cf_module, z0, frames=frames, label=f"{system}: {check.label}")
        if declared:  # the roles read back from the pixels, inverted through the true h
            measured = {"centroid": (track_declared(cf.factual[0], geom, factual, key, sim_f[i]),
                                     track_declared(cf.frames[0], geom, mcf, key, sim_cf[i]))}  # fmt: skip
        else:
            measured = {
                "centroid": (track_centroid(system, cf.factual[0], geom), track_centroid(system, cf.frames[0], geom)),
            }
        enc_f, enc_cf = track_encoder(run, cf.factual[0], key), track_encoder(run, cf.frames[0], key)
        measured["encoder"] = (align_sign(enc_f, measured["centroid"][0]), align_sign(enc_cf, measured["centroid"][1]))
        trial = Trial(float(run.module.dt), names, sim_f[i], sim_cf[i], _param_values(mcf), measured)
        rows.extend(rows_from_videos(check, trial))
        if save_dir is not None:
            cf.save(Path(save_dir) / f"intervene_{system}_{check.slug}.gif")
    return rows


# ---------------------------------------------------------------------------------------------
# printing


def format_table(rows: Sequence[Row], markdown: bool = False) -> str:
    """The rows as a plain-text (or Markdown) table."""
    head = ["system", "intervention", "quantity", "simulated", "centroid", "encoder", "rel err", "rel err enc", "tol", "pass", "pass enc"]
    fmt = lambda v: "nan" if not math.isfinite(v) else f"{v:.4g}"  # noqa: E731
    body = [
        [r.system, r.intervention, r.quantity, fmt(r.simulated), fmt(r.measured_centroid), fmt(r.measured_encoder),
         fmt(r.rel_error), fmt(r.rel_error_encoder), f"{r.tolerance:.0%}", "yes" if r.passed else "NO",
         "yes" if r.passed_encoder else "NO"]
        for r in rows
    ]  # fmt: skip
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(b) for b in body)])


def self_check(system: str, size: int = 64, priors_dir: str | Path | None = None, z0=None) -> list[Row]:
    """Run the checker on clean renders of true-physics trajectories (no model): every row should pass.

    The "encoder" column is the true drawn state itself (a perfect encoder), so it checks the signal
    analysis alone; the centroid column checks tracking + analysis.
    """
    from anmc.symbolic.model import load_model
    from anmc.data.io import resize_frames
    from anmc.synthetic.render import declared_geometry, geometry, render_frames

    priors_dir = Path(priors_dir) if priors_dir else Path(__file__).resolve().parents[2] / "priors"
    model = load_model(priors_dir / f"{system}.anm")
    default_z0 = {"pendulum": [0.8, 0.0], "spring": [0.6, 0.0], "falling": [3.0, 0.0], "led": [0.9], "torricelli": [0.9],
                  "incline": [0.5, 0.4], "spring_camera": [0.6, 0.0], "falling_camera": [3.0, 0.0], "looming": [9.0, -3.0]}  # fmt: skip
    z0 = np.asarray(default_z0[system] if z0 is None else z0, np.float64)
    rows = []
    for check in CHECKS[system]:
        sim_f, sim_cf, mcf = simulate_check(model, check, z0)
        names = tuple(model.states)
        mf = _true_module(model, {})
        key = names.index(_key(system))
        if system in DECLARED_KEY:  # drawn in the priors' 64x64 pixels, then area-resized to `size` as training does
            geom = declared_geometry(64, mf.observations, model.name)

            def frames_of(sim, module):
                with torch.no_grad():
                    y = module.observe(torch.as_tensor(sim)).numpy()
                return resize_frames(render_frames("declared", y, 64, geom), size)

            measured = {"centroid": (track_declared(frames_of(sim_f, mf), geom, mf, _key(system), sim_f),
                                     track_declared(frames_of(sim_cf, mcf), geom, mcf, _key(system), sim_cf))}  # fmt: skip
        else:
            geom = geometry(system, size, names, mf.initial_mean.tolist(), mf.initial_std.tolist())
            measured = {
                "centroid": (track_centroid(system, render_frames(system, sim_f, size, geom, names), geom),
                             track_centroid(system, render_frames(system, sim_cf, size, geom, names), geom)),
            }  # fmt: skip
        measured["encoder"] = (sim_f[:, key], sim_cf[:, key])
        trial = Trial(float(mcf.dt), names, sim_f, sim_cf, _param_values(mcf), measured)
        rows.extend(rows_from_videos(check, trial))
    return rows
