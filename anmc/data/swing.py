"""Measure a swinging object's camera off the video: the pivot and the pivot-to-object distance, in pixels.

    swing = measure_swing_in("videos/")                                      # clips as `anmc train` takes them
    print(swing.cx, swing.cy, swing.radius, swing.residual)                  # pixels from the top left
    text = with_camera(Path("priors/pendulum_camera.anm").read_text(), swing, learn=True)

A prior with its camera declared (`priors/pendulum_camera.anm`: `observe px2 = cx + R * sin(theta), …`)
puts the latents in radians only when the camera is right: a camera 28.8 px off on a 96-px video was
not found by learning it (docs/results.md §6, fourteenth session); one a few pixels off was. This
module gives that first measurement without a person clicking on a frame:

1. what moves: each clip's static background (`anmc.data.background.estimate_background`) is taken
   from its frames, and a pixel is foreground where it differs from it by more than `THRESHOLD` of the
   clip's strong differences (its 99.9th percentile);
2. the object: in each frame the 8-connected foreground region of the largest total difference (a
   second moving object, a speck of noise or a static occluder's edge are other regions);
3. a first circle through the regions' centroids, from the frames that show the object whole (at least
   `WHOLE` of the median count of moving pixels): the circle through three centroids that the most
   others lie within `TOLERANCE` pixels of (RANSAC), then least squares on those within `TRIM` robust
   deviations of it;
4. the far end: R first where the objects' pixels are densest along the radius (the peak of their
   radial histogram about that pivot); then `REFINE` times, each frame's pixels within `WINDOW` R of R
   (the bob, whatever is drawn between it and the pivot: near the pivot a rod covers the same pixels in
   most frames and joins the background, so the whole region is not rigid, its far end is), their
   centroids, frames with fewer such pixels than `WHOLE` of the median left out (partly hidden), and
   the circle through them as in 3: its centre is the pivot, its radius R.

It fails, and says so (`Swing.warnings`), when nothing turns about a fixed point or the track cannot
place it: a track that is not a circle (a camera that moves, a second object larger than the
pendulum), a swing of a few degrees (an arc too short to place a centre), a pivot whose standard
error exceeds `GOOD_SE` of the frame (shake, few frames), a second large region in most frames. `with_camera` writes the measurement into a prior's `const S`, `cx`, `cy`,
`R` lines, as learnable params started there with `learn=True` (learning then refines it).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from anmc.data.background import estimate_background
from anmc.errors import UserError

THRESHOLD = 0.25  # of a clip's 99.9th-percentile difference from its background: what counts as foreground
MIN_PIXELS = 3  # a frame whose largest region is smaller than this says nothing about the object
TRIM = 3.0  # robust deviations (1.4826 MAD) from the circle beyond which a frame's centroid is dropped
MAX_SIDE = 128  # frames are measured at most this many pixels a side (area averages), the result scaled back
GOOD_RESIDUAL = 0.05  # of R: a larger rms distance of the centroids from the circle is reported as unreliable
GOOD_ARC = 0.5  # radians: a shorter arc places the centre poorly
GOOD_SE = 0.01  # of the frame's side: a larger standard error of the pivot is reported as unreliable
REFINE = 3  # passes that refit the pivot and R to the object's far end (its pixels within WINDOW * R of the radius R)
WINDOW = 0.25
TOLERANCE = 1.0  # source pixels: a frame's centroid this close to a candidate circle supports it
SAMPLES = 300  # candidate circles, each through three frames' centroids
RIVAL = 0.5  # a second moving region with this share of the largest one's foreground counts as another object
MANY = 0.25  # of the frames: more with another object makes the measurement unreliable
MAX_FRAMES = 400  # per clip: the track is measured on at most this many evenly spaced frames
WHOLE = 0.9  # of the median count of a frame's moving pixels (of its far end's, when refining): fewer is a partly hidden object


@dataclass(frozen=True)
class Swing:
    """The measured camera, in pixels of the video as stored, from the top left.

    cx, cy: the pivot; radius: from the pivot to the object's centre (R); width, height: the frame;
    residual: rms distance of the frames' centroids from their circle; arc: radians of the circle that
    the centroids cover (the widest swing seen); frames: frames whose centroid was used (after trimming),
    of `seen` frames with a moving region; several: the share of those frames in which a second region
    moves with at least RIVAL of the largest one's foreground (two objects, or one drawn in two pieces);
    pivot_se, radius_se: standard errors of the pivot (its less certain axis) and of R from the track's
    scatter, pixels (frames taken as independent: shake and noise are, a slow wobble is not)."""

    cx: float
    cy: float
    radius: float
    width: int
    height: int
    residual: float
    arc: float
    frames: int
    seen: int
    several: float = 0.0
    pivot_se: float = 0.0
    radius_se: float = 0.0

    @property
    def reliable(self) -> bool:
        """No warning: the track is a circle (residual within GOOD_RESIDUAL of R) covering at least GOOD_ARC
        radians, the pivot's standard error within GOOD_SE of the frame, one object moving."""
        return not self.warnings()

    def warnings(self) -> list[str]:
        """One sentence per reason not to trust the measurement (none when `reliable`)."""
        out = []
        if self.residual > GOOD_RESIDUAL * self.radius:
            out.append(
                f"the object's track is not a circle (its centroids lie {self.residual:.1f} px rms from the fitted one, "
                f"{self.residual / self.radius:.0%} of R): a second moving object, a moving camera or a body that is not "
                "a pendulum; measure the pivot and R on a frame by hand."
            )
        if self.arc < GOOD_ARC:
            out.append(
                f"the swing covers only {math.degrees(self.arc):.0f} degrees of the circle, too short an arc to place its "
                "centre well; use clips with a wider swing or measure the pivot by hand."
            )
        if self.pivot_se > GOOD_SE * max(self.width, self.height):
            out.append(
                f"the pivot is uncertain by ±{self.pivot_se:.1f} px (one standard error, from the track's scatter: camera shake, "
                "noise, few frames); give more clips, or make cx, cy and R learnable (--learn) and check them against a frame."
            )
        if self.several > MANY:
            out.append(
                f"in {self.several:.0%} of the frames a second region moves with at least {RIVAL:.0%} of the largest one's "
                "foreground (two objects, or a pendulum drawn in pieces, a bob apart from its rod); the measurement follows "
                "the largest region of each frame: check it against a frame."
            )
        return out


def measure_swing(clips: Sequence[np.ndarray]) -> Swing:
    """The pivot and radius of an object swinging about a fixed point, from clips of uint8 frames
    `(T, H, W)` or `(T, H, W, 3)` as stored (all of one frame size)."""
    shapes = {tuple(np.shape(c)[1:3]) for c in clips if len(c)}
    if not shapes:
        raise UserError("there are no frames to measure a swing in; give clips that show the object moving.")
    if len(shapes) > 1:
        raise UserError(f"the clips have different frame sizes ({', '.join(f'{w}x{h}' for h, w in sorted(shapes))}); a camera is measured on clips of one size: measure each size on its own.")
    height, width = shapes.pop()
    factor = max(1, math.ceil(max(height, width) / MAX_SIDE))
    points, frames_fg, rivals = [], [], []
    for frames in clips:
        frames = np.asarray(frames)
        fg = _foreground(frames, factor)
        if len(fg) > MAX_FRAMES:  # evenly spaced: enough to trace the circle
            fg = fg[np.unique(np.linspace(0, len(fg) - 1, MAX_FRAMES).round().astype(int))]
        for t in range(len(fg)):
            region, runner_up = _largest_region(fg[t])
            if region is None:
                continue
            rivals.append(runner_up)
            ys, xs = np.nonzero(region)
            w = fg[t][ys, xs]
            points.append(((xs + 0.5) @ w / w.sum(), (ys + 0.5) @ w / w.sum()))
            frames_fg.append((xs + 0.5, ys + 0.5, w))
    if len(points) < 3:
        raise UserError(f"only {len(points)} frame(s) show something moving against the background; a swing needs at least 3: give clips in which the object moves.")
    # the first circle from the frames that show the object whole: one partly hidden (behind an occluder,
    # off the frame's edge) has its centroid elsewhere and less foreground than usual
    totals = np.asarray([len(w) for _, _, w in frames_fg])  # pixels, not their sum: a change of gain is no occlusion
    whole = totals >= WHOLE * np.median(totals)
    cx, cy, _, keep_whole = _fit_track(np.asarray(points)[whole], factor)
    keep = np.zeros(len(points), bool)
    keep[np.flatnonzero(whole)[keep_whole]] = True
    radius = _radial_peak([frames_fg[i] for i in np.flatnonzero(keep)], cx, cy)
    for _ in range(REFINE):  # the object's far end only: a rigid part, whatever merges into the background near the pivot
        near = []
        for xs, ys, w in frames_fg:
            sel = np.abs(np.hypot(xs - cx, ys - cy) - radius) <= WINDOW * radius
            ws = w[sel]
            near.append((xs[sel] @ ws / ws.sum(), ys[sel] @ ws / ws.sum(), sel.sum()) if ws.sum() > 0 else (np.nan, np.nan, 0.0))
        pts = np.asarray(near)
        ok = pts[:, 2] >= WHOLE * np.median(pts[pts[:, 2] > 0, 2])  # the far end whole, not cut by an occluder or the edge
        pts = pts[:, :2]
        cx, cy, radius, keep_ok = _fit_track(pts[ok], factor)
        keep = np.zeros(len(pts), bool)
        keep[np.flatnonzero(ok)[keep_ok]] = True
    residual = float(np.sqrt(np.mean((np.hypot(pts[keep, 0] - cx, pts[keep, 1] - cy) - radius) ** 2)))
    se = _circle_se(pts[keep], cx, cy, radius)
    angles = np.arctan2(pts[keep, 0] - cx, pts[keep, 1] - cy)
    return Swing(
        cx=cx * factor, cy=cy * factor, radius=radius * factor, width=int(width), height=int(height),
        residual=residual * factor, arc=_arc(angles), frames=int(keep.sum()), seen=len(pts),
        several=float(np.mean(np.asarray(rivals) >= RIVAL)), pivot_se=float(max(se[0], se[1])) * factor, radius_se=float(se[2]) * factor,
    )  # fmt: skip


def _fit_track(pts: np.ndarray, factor: int) -> tuple[float, float, float, np.ndarray]:
    """The circle through most of the points (N, 2), and which points it keeps: the circle through three
    of them that the most points lie within `TOLERANCE` source pixels of (RANSAC, `SAMPLES` draws, a fixed
    seed), then least squares on the points within TRIM robust deviations of it (never within the
    tolerance). Frames whose object is partly hidden lie off the circle in one direction; a least-squares
    fit of all of them would be pulled that way. Returns (cx, cy, r, kept)."""
    tol = TOLERANCE / factor
    rng = np.random.default_rng(0)
    best, best_count = None, -1
    for _ in range(SAMPLES if len(pts) > 3 else 1):
        three = pts[rng.choice(len(pts), 3, replace=False)] if len(pts) > 3 else pts
        circle = _circle_through(three)
        if circle is None:
            continue
        count = int((np.abs(np.hypot(pts[:, 0] - circle[0], pts[:, 1] - circle[1]) - circle[2]) <= tol).sum())
        if count > best_count:
            best, best_count = circle, count
    cx, cy, r = best if best is not None else _fit_circle(pts)
    keep = np.abs(np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) - r) <= tol
    for _ in range(5):
        if keep.sum() < 3:
            break
        cx, cy, r = _fit_circle(pts[keep])
        dist = np.abs(np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) - r)
        spread = 1.4826 * np.median(dist)  # over every point: the frames off the circle are fewer than half
        new = dist <= max(TRIM * spread, tol)
        if (new == keep).all():
            break
        keep = new
    return cx, cy, r, keep


def _circle_through(p: np.ndarray) -> tuple[float, float, float] | None:
    """The circle through three points (3, 2), or None when they are (nearly) on a line."""
    (x1, y1), (x2, y2), (x3, y3) = p
    d = 2 * (x1 * (y2 - y3) + x2 * (y3 - y1) + x3 * (y1 - y2))
    if abs(d) < 1e-9:
        return None
    s1, s2, s3 = x1 * x1 + y1 * y1, x2 * x2 + y2 * y2, x3 * x3 + y3 * y3
    cx = (s1 * (y2 - y3) + s2 * (y3 - y1) + s3 * (y1 - y2)) / d
    cy = (s1 * (x3 - x2) + s2 * (x1 - x3) + s3 * (x2 - x1)) / d
    return float(cx), float(cy), float(math.hypot(x1 - cx, y1 - cy))


def measure_swing_in(paths) -> Swing:
    """`measure_swing` on the clips in `paths` (files or folders, as `anmc train` takes them), each decoded
    a chunk at a time at most MAX_SIDE pixels a side with its aspect kept, so that an HD recording never
    sits in memory whole; the result in pixels of the videos as stored."""
    from anmc.data.io import clip_sources, read_video, resize_transform, videos_transform

    stored = videos_transform(paths, None)  # the stored size; VideoError when the clips are stored at different sizes
    height, width = int(stored["height"]), int(stored["width"])
    factor = max(1, math.ceil(max(height, width) / MAX_SIDE))
    target = (max(1, height // factor), max(1, width // factor)) if factor > 1 else None
    where = resize_transform((height, width), target)
    s = measure_swing([read_video(src, size=target, gray=False) for src in clip_sources(paths)])
    k = 1.0 / where["scale"]
    return replace(s, cx=s.cx * k + where["left"], cy=s.cy * k + where["top"], radius=s.radius * k, residual=s.residual * k,
                   pivot_se=s.pivot_se * k, radius_se=s.radius_se * k, width=width, height=height)  # fmt: skip


CHECK_CLIPS = 4  # clips `camera_disagreement` measures (a few seconds of decoding before a training)
PIVOT_OFF = 0.02  # of the frame's width: a declared pivot farther than this from the measured one is reported
R_OFF = 0.05  # relative: a declared R farther than this from the measured one is reported


def camera_disagreement(model, paths, clips: int = CHECK_CLIPS) -> str | None:
    """Before a training: when the prior declares a pendulum's camera the way `anmc swing --prior` writes
    it (`S`, `cx`, `cy`, `R`, as `priors/pendulum_camera.anm` does; consts or params' starts) and `anmc
    swing` measures the first `clips` clips reliably, one sentence saying how far the declared camera is
    from the measured one and what to do, when the pivot is more than PIVOT_OFF of the frame or R more
    than R_OFF off; None otherwise (another prior, an unreliable measurement, a camera that agrees)."""
    from anmc.data.io import clip_sources

    values = dict(model.consts) | {name: p.value for name, p in model.params.items()}
    if not {"S", "cx", "cy", "R"} <= values.keys():
        return None
    try:
        sources = clip_sources(paths)[:clips]
        swing = measure_swing_in(sources)
    except UserError:  # no such videos, nothing swings, the clips do not decode: training says what is wrong
        return None
    if not swing.reliable:
        return None
    cx, cy, radius = (float(values[k]) for k in ("cx", "cy", "R"))
    pivot_off, r_off = math.hypot(cx - swing.cx, cy - swing.cy), radius / swing.radius - 1.0
    if pivot_off <= PIVOT_OFF * swing.width and abs(r_off) <= R_OFF:
        return None
    learnable = [k for k in ("cx", "cy", "R") if k in model.params and model.params[k].learn]
    note = f" ({', '.join(learnable)} learnable: training refines a few pixels, not this)" if learnable else ""
    return (
        f"the prior declares the camera cx = {cx:.1f}, cy = {cy:.1f}, R = {radius:.1f} (pixels of the video as stored), but "
        f"`anmc swing` measures cx = {swing.cx:.1f}, cy = {swing.cy:.1f}, R = {swing.radius:.1f} on {len(sources)} of these clips: "
        f"the pivot {pivot_off:.1f} px and R {100 * r_off:+.0f}% off{note}; with a camera this far off the latents are not in the "
        f"prior's units (docs/results.md §6: 28.8 px off gave slopes 2.0 and L 23% short). Write the measured camera in with "
        f"`anmc swing VIDEOS --prior PRIOR --learn -o mine.anm` and train mine.anm."
    )


def with_camera(text: str, swing: Swing, learn: bool = False) -> str:
    """A prior's text with its `const S`, `cx`, `cy`, `R` lines set to the measured camera (S: the frame's
    width; `learn`: cx, cy and R as learnable params started there, `param cx = … in [0, S] learn`)."""
    values = {"S": f"{swing.width}", "cx": f"{swing.cx:.1f}", "cy": f"{swing.cy:.1f}", "R": f"{swing.radius:.1f}"}
    side = swing.width  # a pivot above the frame's top edge (cy < 0) or a swing longer than the frame keeps its range
    ranges = {"cx": _range_holding(swing.cx, side, [(0, 1), (-1, 2)], wide=side),
              "cy": _range_holding(swing.cy, side, [(0, 1), (-1, 2)], wide=side),
              "R": _range_holding(swing.radius, side, [(0.05, 1), (0.05, 3)], wide=swing.radius / 2)}  # fmt: skip
    return write_camera(text, values, ranges, learn)


def _range_holding(value: float, side: int, choices: list[tuple[float, float]], wide: float) -> str:
    """The first range `[lo * S, hi * S]` of `choices` that holds `value` strictly inside (a learnable
    param started at a bound would be flagged as stuck there), else `value` ± `wide` in pixels."""
    times = lambda k: {0: "0", 1: "S", -1: "-S"}.get(k, f"{k} * S")  # noqa: E731
    for lo, hi in choices:
        if lo * side < value < hi * side:
            return f"[{times(lo)}, {times(hi)}]"
    return f"[{value - wide:.1f}, {value + wide:.1f}]"


def write_camera(text: str, values: dict[str, str], ranges: dict[str, str], learn: bool = False) -> str:
    """A prior's text with each `const NAME = …` (or `param NAME = …`) line of `values` (NAME -> expression)
    replaced, its comment kept in its column; with `learn`, every name but S becomes `param NAME = … in
    RANGE learn` with its range from `ranges`. UserError when the prior has no such line."""
    for name, value in values.items():
        line = f"param {name} = {value} in {ranges[name]} learn" if learn and name != "S" else f"const {name} = {value}"
        pattern = rf"^(?:const|param) {name} = [^#\n]*?(\s*)(#[^\n]*)?$"
        keep_column = lambda m: f"{line:<{max(len(m[0]) - len(m[2] or ''), len(line) + 1)}}{m[2]}" if m[2] else line  # noqa: E731
        text, found = re.subn(pattern, keep_column, text, count=1, flags=re.M)
        if not found:
            raise UserError(f"the prior has no `const {name} = ...` line to write the camera into; start from priors/pendulum_camera.anm, which declares S, cx, cy and R.")
    return text


def _foreground(frames: np.ndarray, factor: int) -> np.ndarray:
    """(T, h, w) float: each frame's difference from the clip's background (channels summed, area-averaged
    by `factor`), zero below THRESHOLD of the clip's strong differences."""
    bg = estimate_background(frames)
    diff = np.abs(frames.astype(np.int16) - bg.image.astype(np.int16)).astype(np.float32)
    if diff.ndim == 4:
        diff = diff.sum(-1)
    if factor > 1:
        t, h, w = diff.shape
        h2, w2 = h // factor, w // factor
        diff = diff[:, : h2 * factor, : w2 * factor].reshape(t, h2, factor, w2, factor).mean((2, 4))
    strong = float(np.percentile(diff, 99.9))
    if strong <= 0:
        return np.zeros_like(diff)
    return np.where(diff >= THRESHOLD * strong, diff, 0.0)


def _largest_region(fg: np.ndarray) -> tuple[np.ndarray | None, float]:
    """The 8-connected region of nonzero `fg` with the largest total (a bool mask; None when it has fewer
    than MIN_PIXELS pixels), and the next largest region's total as a fraction of it. Regions grow by repeated dilation inside the mask, each
    from the strongest pixel not yet assigned."""
    mask = fg > 0
    best, best_total, second = None, 0.0, 0.0
    left = mask.copy()
    while left.any():
        seed = np.unravel_index(np.argmax(np.where(left, fg, -1.0)), fg.shape)
        region = np.zeros_like(mask)
        region[seed] = True
        while True:
            grown = _dilate(region) & left
            if (grown == region).all():
                break
            region = grown
        total = float(fg[region].sum())
        if total > best_total:
            best, best_total, second = region, total, best_total
        else:
            second = max(second, total)
        left &= ~region
        if best_total > float(fg[left].sum()) and second >= float(fg[left].sum()):  # nothing left could change either
            break
    if best is None or best.sum() < MIN_PIXELS:
        return None, 0.0
    return best, second / best_total


def _dilate(m: np.ndarray) -> np.ndarray:
    """8-neighbour dilation of a 2-D bool mask."""
    out = m.copy()
    out[1:] |= m[:-1]
    out[:-1] |= m[1:]
    rows = out.copy()
    out[:, 1:] |= rows[:, :-1]
    out[:, :-1] |= rows[:, 1:]
    return out


def _fit_circle(p: np.ndarray) -> tuple[float, float, float]:
    """Centre and radius of the circle nearest the points p (N, 2): the algebraic fit (Kåsa), then
    Gauss-Newton on the geometric distances."""
    x, y = p[:, 0], p[:, 1]
    a = np.stack([x, y, np.ones_like(x)], 1)
    sol = np.linalg.lstsq(a, x * x + y * y, rcond=None)[0]
    cx, cy = sol[0] / 2, sol[1] / 2
    r = math.sqrt(max(sol[2] + cx * cx + cy * cy, 1e-12))
    for _ in range(20):
        dx, dy = x - cx, y - cy
        d = np.hypot(dx, dy) + 1e-12
        jac = np.stack([-dx / d, -dy / d, -np.ones_like(d)], 1)  # d(d - r)/d(cx, cy, r)
        step = np.linalg.lstsq(jac, -(d - r), rcond=None)[0]
        cx, cy, r = cx + step[0], cy + step[1], r + step[2]
        if np.abs(step).max() < 1e-6:
            break
    return float(cx), float(cy), float(abs(r))


def _circle_se(p: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    """Standard errors of (cx, cy, r) fitted to the points p (N, 2): σ² (JᵀJ)⁻¹ of the geometric fit, σ²
    the points' scatter about the circle (each frame taken as its own measurement)."""
    dx, dy = p[:, 0] - cx, p[:, 1] - cy
    d = np.hypot(dx, dy) + 1e-12
    jac = np.stack([-dx / d, -dy / d, -np.ones_like(d)], 1)
    var = float(((d - r) ** 2).sum()) / max(len(p) - 3, 1)
    cov = var * np.linalg.pinv(jac.T @ jac)
    return np.sqrt(np.clip(np.diag(cov), 0, None))


def _radial_peak(frames_fg: list, cx: float, cy: float, bin_px: float = 0.5) -> float:
    """The radius about (cx, cy) at which the objects' foreground is densest over all frames: the peak of
    the radial histogram of their pixels (weighted by difference, smoothed over ±2 bins)."""
    radii = np.concatenate([np.hypot(xs - cx, ys - cy) for xs, ys, _ in frames_fg])
    weights = np.concatenate([w for _, _, w in frames_fg])
    start = math.floor(radii.min() / bin_px) * bin_px  # the span is at most the frame's diagonal, wherever the centre is
    edges = start + bin_px * np.arange(int((radii.max() - start) / bin_px) + 3)
    hist, _ = np.histogram(radii, edges, weights=weights)
    smooth = np.convolve(hist, np.ones(5) / 5, mode="same")
    i = int(np.argmax(smooth))
    return float(edges[i] + bin_px / 2)


def _arc(angles: np.ndarray) -> float:
    """Radians of the circle covered by the angles: 2π less the largest gap between neighbours."""
    if len(angles) < 2:
        return 0.0
    a = np.sort(np.mod(angles, 2 * np.pi))
    gaps = np.diff(np.concatenate([a, a[:1] + 2 * np.pi]))
    return float(2 * np.pi - gaps.max())
