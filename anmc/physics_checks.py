"""Counterfactual videos measured against physics.

    rows = check_interventions("runs/pend")            # the system comes from the run's truth.json
    for r in rows: print(r.intervention, r.quantity, r.simulated, r.measured_centroid, r.measured_encoder, r.passed)

For a run trained on synthetic videos (`anmc synth`: its `truth.json` beside the training clips gives
the renderer, its pixel geometry and the true parameter values), each check

1. picks a start: the encoded state (posterior mean) of a training-clip frame whose true-physics
   rollout suits the check (a pendulum swinging about 0.8 rad, the largest spring oscillation, the
   highest ball, ...);
2. applies the intervention to the trained model (`anmc.intervene`: learned values kept where the
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

A swing is half a period (one side to the other). Interventions come from the run's own intervention
blocks where it declares them, else from the equivalent edits listed in `CHECKS`.

The signal analysis (`swings`, `amplitude`, `period`, `decay_per_swing`, `fall_speed`,
`fall_acceleration`) and `rows_from_videos` are plain functions of sampled trajectories and frames, so
that they can be checked on clean renders of simulated trajectories, with no model involved
(tests/test_physics_checks.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from anmc.errors import UserError
from anmc.video.render import KEY_STATE, measure_frames

__all__ = [
    "CHECKS", "Check", "Row", "amplitude", "check_interventions", "decay_per_swing", "fall_acceleration",
    "fall_speed", "find_truth", "format_table", "period", "rows_from_videos", "scale_geometry", "self_check",
    "simulate_check", "swings", "track_centroid", "Trial",
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
# signal analysis of a sampled 1-D trajectory x(t)


@dataclass
class Swings:
    """Zero crossings (about the centre) and one extremum per complete half swing between them."""

    center: float
    crossing_times: np.ndarray
    extremum_times: np.ndarray
    extremum_values: np.ndarray


def _finite(t: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t, x = np.asarray(t, np.float64), np.asarray(x, np.float64)
    keep = np.isfinite(x) & np.isfinite(t)
    return t[keep], x[keep]


def _crossings(t: np.ndarray, s: np.ndarray, h: float) -> list[int]:
    """Indices k of the zero crossings of s between samples k and k+1, with hysteresis h: a crossing
    counts when s goes from beyond +h to beyond -h (or back); noise near zero makes no extra ones."""
    state, last_zc, out = 0, None, []
    for i in range(len(s)):
        if i and (s[i - 1] >= 0) != (s[i] >= 0):
            last_zc = i - 1
        if s[i] > h:
            new = 1
        elif s[i] < -h:
            new = -1
        else:
            continue
        if state and new != state and last_zc is not None:
            out.append(last_zc)
        state = new
    return out


def _extremum(t: np.ndarray, x: np.ndarray, i: int, sign: float) -> tuple[float, float]:
    """The extremum near sample i, refined by the parabola through i-1, i, i+1 (uniform sampling)."""
    if 0 < i < len(x) - 1:
        a, b, c = x[i - 1], x[i], x[i + 1]
        den = a - 2 * b + c
        if den * sign < 0:  # a proper peak (trough) of the parabola
            d = 0.5 * (a - c) / den
            if abs(d) <= 1:
                return t[i] + d * (t[i + 1] - t[i - 1]) / 2, b - 0.25 * (a - c) * d
    return t[i], x[i]


def swings(t, x, hysteresis: float = 0.15) -> Swings:
    """Crossings of the centre and the extremum of every complete half swing of x(t) (NaNs dropped).

    The centre is the midpoint of successive extrema (first guess: the median, which a decaying swing
    keeps near its centre where the midrange follows the first, largest swing), recomputed once;
    crossings use a hysteresis of `hysteresis` times the half range.
    """
    t, x = _finite(t, x)
    empty = Swings(math.nan, np.empty(0), np.empty(0), np.empty(0))
    if len(x) < 5:
        return empty
    lo, hi = np.percentile(x, [2, 98])
    if not hi > lo:
        return empty
    center = float(np.median(x))
    result = empty
    for _ in range(2):
        s = x - center
        h = hysteresis * 0.5 * (hi - lo)
        ks = _crossings(t, s, h)
        tc = np.array([t[k] + (t[k + 1] - t[k]) * s[k] / (s[k] - s[k + 1]) for k in ks])
        et, ev = [], []
        for a, b in zip(ks[:-1], ks[1:]):
            seg = s[a + 1 : b + 1]
            if not len(seg):
                continue
            sign = 1.0 if seg.mean() > 0 else -1.0
            i = a + 1 + int(np.argmax(sign * seg))
            te, xe = _extremum(t, x, i, sign)
            et.append(te)
            ev.append(xe)
        result = Swings(center, tc, np.array(et), np.array(ev))
        if len(ev) >= 2:
            center = float(np.mean(0.5 * (np.array(ev[1:]) + np.array(ev[:-1]))))
        else:
            break
    return result


def period(t, x) -> float:
    """Oscillation period from the crossing times: least squares t_k = t0 + k T/2 + (-1)^k e (the
    alternating term absorbs an offset of the centre). NaN with fewer than 3 crossings."""
    tc = swings(t, x).crossing_times
    if len(tc) < 3:
        return math.nan
    k = np.arange(len(tc), dtype=np.float64)
    cols = [np.ones_like(k), k] + ([(-1.0) ** k] if len(tc) >= 4 else [])
    coef, *_ = np.linalg.lstsq(np.stack(cols, 1), tc, rcond=None)
    return float(2 * coef[1])


def amplitude(t, x) -> float:
    """Half the mean peak-to-peak of successive extrema (independent of the centre). NaN with < 2 extrema."""
    ev = swings(t, x).extremum_values
    if len(ev) < 2:
        return math.nan
    return float(np.mean(np.abs(np.diff(ev))) / 2)


def decay_per_swing(t, x) -> float:
    """Amplitude decay rate per swing (half period): -slope of log |e_{k+1} - e_k| against k.

    For amplitudes A_{k+1} = r A_k the peak-to-peak p_k = A_k + A_{k+1} also shrinks by r, so this is
    -log r (0.4 for a linear pendulum with c = 0.8 /s and a 1 s swing). NaN with < 3 extrema.
    """
    ev = swings(t, x).extremum_values
    if len(ev) < 3:
        return math.nan
    p = np.abs(np.diff(ev))
    if (p <= 0).any():
        return math.nan
    k = np.arange(len(p), dtype=np.float64)
    return float(-np.polyfit(k, np.log(p), 1)[0])


def fall_speed(t, y, mask=None) -> float:
    """|dy/dt| by a straight-line fit of y(t) over the frames in `mask` (NaN with fewer than 3)."""
    t, y = np.asarray(t, np.float64), np.asarray(y, np.float64)
    keep = np.isfinite(y) & (np.ones_like(y, bool) if mask is None else np.asarray(mask, bool))
    if keep.sum() < 3:
        return math.nan
    return float(abs(np.polyfit(t[keep], y[keep], 1)[0]))


def fall_acceleration(t, y, mask=None) -> float:
    """Downward acceleration -d2y/dt2 from a quadratic fit of y(t) over `mask` (NaN with fewer than 5)."""
    t, y = np.asarray(t, np.float64), np.asarray(y, np.float64)
    keep = np.isfinite(y) & (np.ones_like(y, bool) if mask is None else np.asarray(mask, bool))
    if keep.sum() < 5:
        return math.nan
    return float(-2 * np.polyfit(t[keep] - t[keep][0], y[keep], 2)[0])


# ---------------------------------------------------------------------------------------------
# tracking the object in frames


def scale_geometry(geom: dict, size: int) -> dict:
    """The renderer geometry of truth.json at another frame size (videos are area-resized, so pixel
    coordinates scale by size / geom['size']; `floor_row` may become fractional)."""
    f = size / geom["size"]
    if f == 1:
        return dict(geom)
    out = {}
    for key, value in geom.items():
        if key in ("pivot", "center"):
            out[key] = [v * f for v in value]
        elif key.endswith("_px") or key in ("floor_row", "px_per_m"):
            out[key] = value * f
        else:
            out[key] = value
    out["size"] = int(size)
    return out


def track_centroid(renderer: str, frames: np.ndarray, geom: dict) -> np.ndarray:
    """The drawn state (theta, x, y, ...) read from frames (T, S, S) by intensity centroid.

    Decoded frames are never exactly black and blur the scenery into the object's rows, so the
    background goes first: for the spring and the falling ball each pixel's minimum over the video
    (the wall, the floor and the background; the object moves more than its own size in the videos
    the checks make), then for every renderer each frame's median.
    """
    f = np.asarray(frames, np.float64)
    if f.ndim == 4:  # RGB: BT.601 luma
        f = f[..., :3] @ np.array([0.299, 0.587, 0.114])
    if np.asarray(frames).dtype == np.uint8:
        f = f / 255.0
    if renderer in ("spring", "falling") and len(f) > 1:
        f = f - f.min(axis=0, keepdims=True)  # the static scenery (wall, floor) and background
    f = np.clip(f - np.median(f, axis=(1, 2), keepdims=True), 0.0, None)
    g = dict(geom)
    shift = 0.0
    if renderer == "spring":
        return _spring_x(f, g)
    if renderer == "falling":
        row = int(math.floor(g["floor_row"]))
        shift = (g["floor_row"] - row) / g["px_per_m"]
        g["floor_row"] = row
    return measure_frames(renderer, f, g) + shift


def _spring_x(f: np.ndarray, geom: dict) -> np.ndarray:
    """The block's x from the centroid of the rows the block covers and the zigzag (with its antialiased
    rim) does not, above and below the spring: usable down to 16x16 frames, where
    `measure_frames`' band above the coil is empty."""
    cy, hh = geom["center"][1], geom["block_half_height_px"]
    reach = geom["coil_amplitude_px"] + geom["coil_half_width_px"] + 0.5
    rows = [i for i in range(geom["size"])
            if (i + 1 > cy - hh and i + 1 <= cy - reach) or (i >= cy + reach and i < cy + hh)]  # fmt: skip
    wall = math.ceil(geom["wall_px"])
    band = f[:, rows, wall:]
    c = np.arange(wall, f.shape[2]) + 0.5
    mass = band.sum(axis=(1, 2))
    cx = (band.sum(axis=1) @ c) / np.where(mass > 0, mass, np.nan)
    return (cx - geom["center"][0]) / geom["px_per_m"]


def track_encoder(run, frames: np.ndarray, state: str) -> np.ndarray:
    """Posterior mean of `state` for every frame (NaN for the first window - 1 frames, which have none).

    With the smoother posterior an observed state is read from the encoder's per-frame readings, not the
    smoothed posterior: the smoother would pull the measurement toward the trained (factual) dynamics."""
    from anmc.evaluate import _as_tensor, encode_frames

    i = list(run.module.state_names).index(state)
    if run.vae.posterior == "smoother" and i in run.vae.observed:
        with torch.no_grad():
            x = _as_tensor(frames).to(next(run.vae.parameters()).device)
            values = run.vae.encoder_readings(x[None])[0][0, :, run.vae.observed.index(i)]
    else:
        values = encode_frames(run, frames)[0][:, i]
    out = np.full(len(frames), np.nan)
    out[len(frames) - len(values) :] = values.cpu().numpy()
    return out


def _align_sign(encoder: np.ndarray, reference: np.ndarray) -> np.ndarray:
    ok = np.isfinite(encoder) & np.isfinite(reference)
    if ok.sum() > 2 and encoder[ok].std() > 0 and reference[ok].std() > 0:
        if np.corrcoef(encoder[ok], reference[ok])[0, 1] < 0:
            return -encoder
    return encoder


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
    return KEY_STATE[system]


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
}  # fmt: skip


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


def _true_module(model, params: dict[str, float]):
    from anmc.codegen.compile import compile_model

    module = compile_model(model).module().double().requires_grad_(False)
    for name, value in params.items():
        if name in module.param_names and name not in model.overrides.sets:
            module.set_param(name, float(value))
    return module


def true_modules(model, check: Check, params: dict[str, float] | None = None):
    """(factual, counterfactual) generated modules of `model` (a `Model`) and `model` under `check`,
    float64, with the true `params` (e.g. truth.json's) where the intervention sets nothing."""
    params = params or {}
    return _true_module(model, params), _true_module(_intervened(model, check), params)


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
    from anmc.evaluate import encode_frames, load_run_clips

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

    `system`: pendulum, spring or falling (default: the model named in truth.json). `checks`: names
    of `CHECKS[system]` entries to run (default all). `save_dir`: also write each counterfactual as
    `intervene_<system>_<slug>.gif` (+ latents CSV/PNG) there. `frames_scale` shortens rollouts
    (smoke tests only: too few swings leave quantities unmeasurable).
    """
    from anmc.evaluate import Run, load_run
    from anmc.intervene import intervened_module, rollout_counterfactual

    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir)
    meta, truth_path = find_truth(run)
    system = system or meta.get("model") or run.prior.model.name
    if system not in CHECKS:
        raise UserError(f"no physics checks for '{system}'; there are checks for {', '.join(CHECKS)}.")
    renderer = (meta.get("renderer") or {}).get("name")
    if renderer != system:
        raise UserError(f"{run.run_dir} was trained on {renderer} videos ({truth_path}), not {system} ones; leave out --system or pass --system {renderer}.")
    c, h, w = run.payload["frame_shape"]
    geom = scale_geometry(meta["renderer"]["geometry"], h)
    names = tuple(run.module.state_names)
    key = _key(system)
    if key not in names:
        raise UserError(f"the prior of {run.run_dir} has no state '{key}' for the {system} renderer to draw.")
    true_params = {k: float(v) for k, v in (meta.get("params") or {}).items()}
    model = run.prior.model
    candidates = _candidate_starts(run)
    wanted = CHECKS[system] if not checks else [ch for ch in CHECKS[system] if ch.name in checks or ch.intervention in checks]
    rows: list[Row] = []
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
        measured = {
            "centroid": (track_centroid(system, cf.factual[0], geom), track_centroid(system, cf.frames[0], geom)),
        }
        enc_f, enc_cf = track_encoder(run, cf.factual[0], key), track_encoder(run, cf.frames[0], key)
        measured["encoder"] = (_align_sign(enc_f, measured["centroid"][0]), _align_sign(enc_cf, measured["centroid"][1]))
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
    from anmc.video.render import geometry, render_frames

    priors_dir = Path(priors_dir) if priors_dir else Path(__file__).resolve().parent.parent / "priors"
    model = load_model(priors_dir / f"{system}.anm")
    default_z0 = {"pendulum": [0.8, 0.0], "spring": [0.6, 0.0], "falling": [3.0, 0.0]}
    z0 = np.asarray(default_z0[system] if z0 is None else z0, np.float64)
    rows = []
    for check in CHECKS[system]:
        sim_f, sim_cf, mcf = simulate_check(model, check, z0)
        names = tuple(model.states)
        mf = _true_module(model, {})
        geom = geometry(system, size, names, mf.initial_mean.tolist(), mf.initial_std.tolist())
        key = names.index(_key(system))
        measured = {
            "centroid": (track_centroid(system, render_frames(system, sim_f, size, geom, names), geom),
                         track_centroid(system, render_frames(system, sim_cf, size, geom, names), geom)),
            "encoder": (sim_f[:, key], sim_cf[:, key]),
        }  # fmt: skip
        trial = Trial(float(mcf.dt), names, sim_f, sim_cf, _param_values(mcf), measured)
        rows.extend(rows_from_videos(check, trial))
    return rows
