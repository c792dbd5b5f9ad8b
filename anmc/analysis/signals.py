"""Reusable signal analysis of trajectories and frames: swings, period, amplitude, decay, falls, tracking.

    swings(t, x) / period / amplitude / decay_per_swing     a sampled 1-D oscillation x(t)
    fall_speed(t, y) / fall_acceleration                     a sampled fall y(t)
    track_centroid(renderer, frames, geom)                   the drawn state from the pixels alone
    track_encoder(run, frames, state)                        the drawn state as the trained encoder reads it

Plain functions of arrays (no model, except `track_encoder`), so that they can be checked on clean
renders of simulated trajectories (tests/test_physics_checks.py); `anmc.analysis.physics_checks`
builds the per-system table of intervention checks on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from anmc.synthetic.render import measure_frames


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

    With the smoother posterior a state that is itself an observation (`observe theta`) is read from the
    encoder's per-frame readings, not the smoothed posterior: the smoother would pull the measurement
    toward the trained (factual) dynamics. A state seen only through an expression (`observe b =
    cos(phase)`) has no reading of its own and comes from the smoothed posterior."""
    from anmc.analysis.evaluate import encode_frames, frames_tensor

    i = list(run.module.state_names).index(state)
    reading = run.vae.reading_of(state)
    if reading is not None:
        with torch.no_grad():
            x = frames_tensor(frames).to(next(run.vae.parameters()).device)
            values = run.vae.encoder_readings(x[None])[0][0, :, reading]
    else:
        values = encode_frames(run, frames)[0][:, i]
    out = np.full(len(frames), np.nan)
    out[len(frames) - len(values) :] = values.cpu().numpy()
    return out


def align_sign(encoder: np.ndarray, reference: np.ndarray) -> np.ndarray:
    ok = np.isfinite(encoder) & np.isfinite(reference)
    if ok.sum() > 2 and encoder[ok].std() > 0 and reference[ok].std() > 0:
        if np.corrcoef(encoder[ok], reference[ok])[0, 1] < 0:
            return -encoder
    return encoder
