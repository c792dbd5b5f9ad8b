"""Numpy renderers: the declared renderer of any prior's camera roles, hand-coded ones of the paper's
systems, and a generic dot for any other prior.

Renderers only draw: the states come from simulating the `.anm` (see `anmc.synthetic.synth`). Each draws
square `size x size` gray frames, white objects on black, antialiased: a pixel's intensity is the
fraction of it a shape covers (exact for boxes, `clip(r + 0.5 - distance, 0, 1)` for round shapes
and lines), and shapes are composited front over back (`img = img (1 - cov) + value cov`).

Pixel coordinates are continuous: `(x, y)` with x to the right and y down, (0, 0) the top-left
corner of the image, so pixel `[row i, column j]` has its centre at `(j + 0.5, i + 0.5)`.
The geometry (where a state lands in pixels) is a documented function of `size` (and, for the
falling object and the dot, of the prior's initial distribution), returned by `geometry(...)` as a
plain dict that `anmc synth` stores in truth.json under `renderer.geometry`:

- pendulum (draws theta): pivot at (S/2, S/2); bob centre = pivot + 0.36 S (sin theta, cos theta),
  theta = 0 hangs straight down; bob radius 0.09 S, rod half-width 0.02 S, pivot radius 0.04 S.
- spring (draws x, metres): wall columns [0, 0.04 S); block centre (S/2 + 0.15 S x, S/2), half-size
  0.07 S x 0.14 S; a zigzag spring of 8 coils from the wall to the block, amplitude 0.05 S.
- falling (draws y, metres): floor rows from S - round(0.06 S) down; ball of radius 0.07 S at
  x = S/2 whose lowest point is y above the floor; px_per_m = (floor_row - 2 radius - 1) / y_top,
  y_top = mean + 3 std of the prior's initial y.
- double_pendulum (draws theta1, theta2): pivot at (S/2, S/2), px_per_m = 0.22 S; the upper link from the
  pivot to the joint = pivot + upper_m px_per_m (sin theta1, cos theta1), the lower link from the joint to
  the tip = joint + lower_m px_per_m (sin theta2, cos theta2) (upper_m: the prior's param or const `L`,
  else 1; lower_m = 1); rods of half-width 0.025 S, a disc of radius 0.05 S at the joint and 0.06 S at
  the tip; two tones: the upper link and joint at 1.0, the lower link and tip at 0.6 (`two_tone=False`: both 1.0).
- coupled_masses (draws x1, x2, metres): walls at columns [0, 0.04 S) and [0.96 S, S); block i's centre at
  (rest_i + px_per_m x_i, S/2), rest = (S/3, 2 S/3), px_per_m = 0.08 S, half-size 0.05 S x 0.12 S, values
  1.0 and 0.75; three zigzag springs (wall-block, block-block, block-wall) of 6 coils, amplitude 0.04 S.
- dot (any other prior; the states a frame shows, the first two of them, `geometry(drawn=...)`): radius
  0.08 S at (S/2 + span u0, S/2 - span u1) (S/2 for u1 when one state is drawn),
  u = clip((s - mean) / (3 std), -1, 1) from the initial distribution, span = S/2 - radius - 1.
- declared (a prior whose observations are named after camera roles, `anmc.synthetic.roles`; it draws
  the observations y = h(z), not the states): `level` fills the rows from S (1 - level) to S, the whole
  width (exact box coverage); then, when any of px, py, size, brightness is declared, a disc of radius
  `size` (default 0.08 S at (px, py), 0.3 S when centred) at (px, py) (each defaults to the centre S/2),
  of value `brightness` (default 1). The fill's value is 1 alone, 0.5 under a disc. brightness and
  level are clipped to [0, 1], size to >= 0. The pulsar is drawn this way: a centred disc of radius
  0.3 S whose brightness is its `observe brightness = ...` line, the pulse profile below.

Pulse profile (double Gaussian in the wrapped phase, main pulse at 0, interpulse at pi):
    b(phase) = base + main exp(-wrap(phase)^2 / (2 main_width^2))
                    + inter exp(-wrap(phase - pi)^2 / (2 inter_width^2)),   wrap to (-pi, pi],
with base 0.1, main 0.9, main_width 0.3 rad, inter 0.45, inter_width 0.25 rad (b in [0.1, 1]);
priors/pulsar.anm writes it with wrap(a) = atan2(sin(a), cos(a)), and `pulse_profile` is its reference.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from anmc.synthetic.roles import RoleError, roles_of

RENDERERS = ("declared", "pendulum", "spring", "falling", "double_pendulum", "coupled_masses", "dot")

# the state each named renderer draws (a pair for the systems of two bodies)
KEY_STATE = {
    "pendulum": "theta", "spring": "x", "falling": "y",
    "double_pendulum": ("theta1", "theta2"), "coupled_masses": ("x1", "x2"),
}  # fmt: skip

# the declared renderer's defaults, as fractions of the frame's side S
MOVING_RADIUS = 0.08  # an object at (px, py) (or either) without `size`
CENTRED_RADIUS = 0.3  # the centred disc (neither px nor py) without `size`
LEVEL_VALUE = 1.0  # the fill of `level` alone
LEVEL_UNDER_DISC = 0.5  # the fill of `level` when a disc is drawn over it

DEFAULT_PROFILE = {
    "base": 0.1, "main": 0.9, "main_width": 0.3, "inter": 0.45, "inter_width": 0.25, "inter_phase": math.pi,
}

_CHUNK = 512  # frames drawn at once (bounds the float32 scratch memory to a few MB per array at 64x64)


# ---------------------------------------------------------------------------------------------
# geometry


def renderer_for(model_name: str, state_names: Sequence[str] | None = None) -> str:
    """The renderer drawing model `model_name`: its own when it has the state that renderer draws, else `dot`."""
    key = KEY_STATE.get(model_name)
    if key is None:
        return "dot"
    if state_names is not None and not set(key if isinstance(key, tuple) else (key,)) <= set(state_names):
        return "dot"
    return model_name


def geometry(
    renderer: str,
    size: int,
    state_names: Sequence[str] | None = None,
    initial_mean: Sequence[float] | None = None,
    initial_std: Sequence[float] | None = None,
    params: dict[str, float] | None = None,
    two_tone: bool = True,
    observations: Sequence[str] | None = None,
    drawn: Sequence[int] | None = None,
) -> dict:
    """The pixel geometry of `renderer` at `size` (see the module docstring); a JSON-ready dict.
    `params` (the prior's values) set the double pendulum's upper link length `L`; the declared
    renderer needs the prior's `observations` (their names; see `declared_geometry`).

    Without the initial distribution, the falling object's frame spans y_top = 3.5 m and the dot's
    states are taken as mean 0, std 1. `drawn`: the dot's states (their indices, one or two: across, then
    up; the first two states when not given).
    """
    if renderer not in RENDERERS:
        raise ValueError(f"unknown renderer {renderer!r}; must be one of {', '.join(RENDERERS)}")
    if renderer == "declared":
        return declared_geometry(size, observations if observations is not None else ())
    s = float(size)
    g: dict = {"renderer": renderer, "size": int(size)}
    names = list(state_names) if state_names is not None else None
    mean = None if initial_mean is None else [float(v) for v in initial_mean]
    std = None if initial_std is None else [float(v) for v in initial_std]
    if renderer == "pendulum":
        g.update(pivot=[s / 2, s / 2], rod_px=0.36 * s, bob_radius_px=0.09 * s, rod_half_width_px=0.02 * s,
                 pivot_radius_px=0.04 * s, bob_value=1.0, rod_value=0.6)
    elif renderer == "spring":
        g.update(center=[s / 2, s / 2], px_per_m=0.15 * s, block_half_width_px=0.07 * s,
                 block_half_height_px=0.14 * s, wall_px=0.04 * s, coil_amplitude_px=0.05 * s, coils=8,
                 coil_half_width_px=max(0.5, 0.012 * s), block_value=1.0, spring_value=0.5, wall_value=0.35)
    elif renderer == "falling":
        floor_px = max(1, round(0.06 * s))
        radius = 0.07 * s
        y_top = 3.5
        if names is not None and mean is not None and std is not None and "y" in names:
            i = names.index("y")
            y_top = mean[i] + 3.0 * std[i]
        if not y_top > 0:
            y_top = 1.0
        floor_row = int(size) - floor_px
        g.update(x_px=s / 2, floor_row=floor_row, radius_px=radius, y_top_m=y_top,
                 px_per_m=(floor_row - 2 * radius - 1.0) / y_top, ball_value=1.0, floor_value=0.35)
    elif renderer == "double_pendulum":
        upper = float((params or {}).get("L", 1.0))
        g.update(pivot=[s / 2, s / 2], px_per_m=0.22 * s, upper_m=upper, lower_m=1.0, rod_half_width_px=0.025 * s,
                 joint_radius_px=0.05 * s, tip_radius_px=0.06 * s, upper_value=1.0, lower_value=0.6 if two_tone else 1.0)
    elif renderer == "coupled_masses":
        g.update(rest=[s / 3, 2 * s / 3], cy=s / 2, px_per_m=0.08 * s, block_half_width_px=0.05 * s,
                 block_half_height_px=0.12 * s, wall_px=0.04 * s, coil_amplitude_px=0.04 * s, coils=6,
                 coil_half_width_px=max(0.5, 0.012 * s), block_values=[1.0, 0.75], spring_value=0.5, wall_value=0.35)
    else:
        radius = 0.08 * s
        cols = [int(i) for i in drawn][:2] if drawn is not None else [0, 1]
        m = [mean[i] for i in cols if i < len(mean)] if mean is not None else [0.0] * len(cols)
        sd = [std[i] for i in cols if i < len(std)] if std is not None else [1.0] * len(cols)
        m += [0.0] * (2 - len(m))
        sd += [1.0] * (2 - len(sd))
        g.update(radius_px=radius, states=cols, mean=m, scale=[3.0 * v if v > 0 else 1.0 for v in sd],
                 span_px=s / 2 - radius - 1.0, value=1.0)
    return g


# ---------------------------------------------------------------------------------------------
# the state each renderer draws, as object positions


def declared_geometry(size: int, observations: Sequence[str], model: str = "the prior") -> dict:
    """The declared renderer's geometry at `size` for a prior whose observations are `observations`:
    which column of y = h(z) each camera role is (`roles`), what is drawn (`disc`, `level`), the
    defaults (`center`, `radius_px`, `value`) and the fill's value. RoleError when nothing is declared."""
    roles = roles_of(observations, model, required=True)
    s = float(size)
    disc = any(r in roles for r in ("px", "py", "size", "brightness"))
    if not disc and "level" not in roles:
        raise RoleError(
            f"{model} declares only `angle`, which turns an object but draws none: declare where the object is "
            "(`observe px = ..., py = ...`) or its brightness or size."
        )
    moving = "px" in roles or "py" in roles
    return {
        "renderer": "declared", "size": int(size), "observations": list(observations), "roles": roles,
        "disc": disc, "level": "level" in roles, "center": [s / 2, s / 2],
        "radius_px": (MOVING_RADIUS if moving else CENTRED_RADIUS) * s, "value": 1.0,
        "level_value": LEVEL_UNDER_DISC if disc else LEVEL_VALUE,
    }  # fmt: skip


def _key_columns(renderer: str, states: np.ndarray, state_names: Sequence[str] | None, geom: dict | None = None) -> np.ndarray:
    states = np.asarray(states, dtype=np.float64)
    if states.ndim == 1:
        states = states[:, None]
    if renderer == "declared":  # the declared renderer is given the observations y = h(z), (T, m)
        return states
    if renderer == "dot":  # the states the geometry names (a geometry written before it named them: the first two)
        cols = (geom or {}).get("states")
        return states[:, cols] if cols is not None else states[:, :2]
    key = KEY_STATE[renderer]
    if isinstance(key, tuple):  # two bodies: (T, 2)
        return states[:, [list(state_names).index(k) for k in key] if state_names is not None else [0, 1]]
    i = list(state_names).index(key) if state_names is not None else 0
    return states[:, i]


def object_position_px(
    renderer: str, states: np.ndarray, geom: dict, state_names: Sequence[str] | None = None
) -> np.ndarray:
    """`(T, 2)` continuous pixel position (x right, y down) of the drawn object's centre.

    Pendulum bob, spring block, falling ball, the declared disc (`states` are then the observations
    `(T, m)`), or the dot. `states` is `(T, d)` in the prior's state order (`state_names`; without it
    the drawn state is taken to be column 0).
    """
    q = _key_columns(renderer, states, state_names, geom)
    t = q.shape[0]
    if renderer == "pendulum":
        px, py = geom["pivot"]
        r = geom["rod_px"]
        return np.stack([px + r * np.sin(q), py + r * np.cos(q)], axis=1)
    if renderer == "spring":
        cx, cy = geom["center"]
        return np.stack([cx + geom["px_per_m"] * q, np.full(t, cy)], axis=1)
    if renderer == "falling":
        y_px = geom["floor_row"] - geom["radius_px"] - geom["px_per_m"] * q
        return np.stack([np.full(t, geom["x_px"]), y_px], axis=1)
    if renderer == "declared":
        roles, (cx, cy) = geom["roles"], geom["center"]
        x = q[:, roles["px"]] if "px" in roles else np.full(t, cx)
        y = q[:, roles["py"]] if "py" in roles else np.full(t, cy)
        return np.stack([x, y], axis=1).astype(np.float64)
    if renderer == "double_pendulum":  # the tip of the lower link
        return double_pendulum_points(q, geom)[1]
    if renderer == "coupled_masses":  # the first block
        return np.stack([geom["rest"][0] + geom["px_per_m"] * q[:, 0], np.full(t, geom["cy"])], axis=1)
    return _dot_position(q, geom)


def _dot_position(q: np.ndarray, geom: dict) -> np.ndarray:
    """`(T, 2)` pixel position of the dot drawing the states `q` `(T, k)` (those its geometry names)."""
    s = geom["size"] / 2.0
    u = np.clip((q - np.asarray(geom["mean"])[: q.shape[1]]) / np.asarray(geom["scale"])[: q.shape[1]], -1.0, 1.0)
    x = s + geom["span_px"] * u[:, 0]
    y = s - geom["span_px"] * u[:, 1] if q.shape[1] > 1 else np.full(q.shape[0], s)
    return np.stack([x, y], axis=1)


def double_pendulum_points(q: np.ndarray, geom: dict) -> tuple[np.ndarray, np.ndarray]:
    """(joint, tip), each `(T, 2)` pixel positions, of a double pendulum at angles `q` `(T, 2)`."""
    px, py = geom["pivot"]
    r1, r2 = geom["upper_m"] * geom["px_per_m"], geom["lower_m"] * geom["px_per_m"]
    joint = np.stack([px + r1 * np.sin(q[:, 0]), py + r1 * np.cos(q[:, 0])], axis=1)
    tip = joint + np.stack([r2 * np.sin(q[:, 1]), r2 * np.cos(q[:, 1])], axis=1)
    return joint, tip


def pulse_profile(phase, profile: dict | None = None) -> np.ndarray:
    """Pulsar brightness in [0, 1] at `phase` (rad): the double-Gaussian profile of the module docstring."""
    p = DEFAULT_PROFILE if profile is None else profile
    phase = np.asarray(phase, dtype=np.float64)
    d_main = _wrap(phase)
    d_inter = _wrap(phase - p["inter_phase"])
    b = (p["base"] + p["main"] * np.exp(-0.5 * (d_main / p["main_width"]) ** 2)
         + p["inter"] * np.exp(-0.5 * (d_inter / p["inter_width"]) ** 2))
    return np.clip(b, 0.0, 1.0)


def _wrap(a: np.ndarray) -> np.ndarray:
    return np.pi - np.mod(np.pi - a, 2 * np.pi)  # to (-pi, pi]


# ---------------------------------------------------------------------------------------------
# drawing


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = np.arange(size, dtype=np.float32) + 0.5
    return c[None, None, :], c[None, :, None]


def _col(v) -> np.ndarray:
    return np.asarray(v, dtype=np.float32).reshape(-1, 1, 1)


def disc_coverage(cx, cy, r, size: int) -> np.ndarray:
    """`(T, S, S)` coverage of discs of radius r (one, or `r[t]`) centred at `(cx[t], cy[t])`."""
    xs, ys = _grid(size)
    dx = xs - _col(cx)
    dy = ys - _col(cy)
    return np.clip(_col(np.asarray(r, dtype=np.float64) + 0.5) - np.sqrt(dx * dx + dy * dy), 0.0, 1.0)


def segment_coverage(ax, ay, bx, by, half_width: float, size: int) -> np.ndarray:
    """`(T, S, S)` coverage of thick segments from `(ax, ay)` to `(bx[t], by[t])` (round caps)."""
    xs, ys = _grid(size)
    ax, ay, bx, by = _col(ax), _col(ay), _col(bx), _col(by)
    ux, uy = bx - ax, by - ay
    den = np.maximum(ux * ux + uy * uy, np.float32(1e-12))
    px, py = xs - ax, ys - ay
    t = np.clip((px * ux + py * uy) / den, 0.0, 1.0)
    dx, dy = px - t * ux, py - t * uy
    return np.clip(np.float32(half_width + 0.5) - np.sqrt(dx * dx + dy * dy), 0.0, 1.0)


def box_coverage(x0, x1, y0, y1, size: int) -> np.ndarray:
    """`(T, S, S)` exact area coverage of axis-aligned boxes [x0, x1] x [y0, y1]."""
    j = np.arange(size, dtype=np.float32)
    cx = np.clip(np.minimum(_col(x1), j + 1) - np.maximum(_col(x0), j), 0.0, 1.0)  # (T, 1, S)
    cy = np.clip(np.minimum(_col(y1), j[:, None] + 1) - np.maximum(_col(y0), j[:, None]), 0.0, 1.0)  # (T, S, 1)
    return cy * cx


def zigzag_coverage(x0, x1, cy: float, amplitude: float, coils: int, half_width: float, size: int) -> np.ndarray:
    """`(T, S, S)` coverage of a zigzag spring from `(x0[t], cy)` to `(x1[t], cy)` with `coils` full waves.

    The polyline runs through (x0, cy), 2 coils peaks alternately `amplitude` above and below cy at
    x0 + (k + 1/2) h (h = (x1 - x0) / (2 coils)), and (x1, cy); each pixel takes its distance to the
    three segments nearest in x.
    """
    xs, ys = _grid(size)
    x0, x1 = _col(x0), _col(x1)
    n = 2 * int(coils)
    h = np.maximum(x1 - x0, np.float32(1e-3)) / n
    u = (xs - x0) / h  # (T, 1, S)
    j_mid = np.clip(np.floor(u + 0.5), 0, n)
    best = None
    for shift in (-1, 0, 1):
        j = np.clip(j_mid + shift, 0, n)  # segment j joins peak j-1 (or the start) to peak j (or the end)
        ua, ub = np.maximum(j - 0.5, 0.0), np.minimum(j + 0.5, float(n))
        sign = np.where(np.mod(j, 2) == 0, -1.0, 1.0).astype(np.float32)  # peak j is above (-) when j is even
        ya = np.where(j == 0, 0.0, sign * -amplitude)  # peak j-1 has the opposite sign of peak j
        yb = np.where(j == n, 0.0, sign * amplitude)
        ax, bx = x0 + ua * h, x0 + ub * h
        ay, by = cy + ya, cy + yb
        dx, dy = bx - ax, by - ay
        px, py = xs - ax, ys - ay
        t = np.clip((px * dx + py * dy) / np.maximum(dx * dx + dy * dy, np.float32(1e-12)), 0.0, 1.0)
        ex, ey = px - t * dx, py - t * dy
        d2 = ex * ex + ey * ey
        best = d2 if best is None else np.minimum(best, d2)
    return np.clip(np.float32(half_width + 0.5) - np.sqrt(best), 0.0, 1.0)


def _over(img: np.ndarray, cov: np.ndarray, value: float) -> np.ndarray:
    return img + cov * (np.float32(value) - img)


def static_layer(renderer: str, geom: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """`(coverage, value)` `(S, S)` arrays of the parts that never move (wall, floor), or None."""
    size = geom["size"]
    if renderer == "spring":
        cov = box_coverage([0.0], [geom["wall_px"]], [0.0], [float(size)], size)[0]
        return cov, np.full_like(cov, geom["wall_value"])
    if renderer == "falling":
        cov = box_coverage([0.0], [float(size)], [float(geom["floor_row"])], [float(size)], size)[0]
        return cov, np.full_like(cov, geom["floor_value"])
    if renderer == "coupled_masses":
        w = geom["wall_px"]
        cov = box_coverage([0.0, size - w], [w, float(size)], [0.0, 0.0], [float(size)] * 2, size).max(axis=0)
        return cov, np.full_like(cov, geom["wall_value"])
    return None


def _draw_pendulum(q: np.ndarray, geom: dict, img: np.ndarray) -> np.ndarray:
    size = geom["size"]
    pos = object_position_px("pendulum", q, geom)
    px, py = geom["pivot"]
    img = _over(img, disc_coverage([px], [py], geom["pivot_radius_px"], size), geom["rod_value"])
    img = _over(img, segment_coverage(px, py, pos[:, 0], pos[:, 1], geom["rod_half_width_px"], size), geom["rod_value"])
    return _over(img, disc_coverage(pos[:, 0], pos[:, 1], geom["bob_radius_px"], size), geom["bob_value"])


def _draw_spring(q: np.ndarray, geom: dict, img: np.ndarray) -> np.ndarray:
    size = geom["size"]
    pos = object_position_px("spring", q, geom)
    hw, hh = geom["block_half_width_px"], geom["block_half_height_px"]
    cy = geom["center"][1]
    left = pos[:, 0] - hw
    coil = zigzag_coverage(np.full_like(left, geom["wall_px"]), left, cy, geom["coil_amplitude_px"], geom["coils"],
                           geom["coil_half_width_px"], size)
    img = _over(img, coil, geom["spring_value"])
    return _over(img, box_coverage(left, pos[:, 0] + hw, cy - hh, cy + hh, size), geom["block_value"])


def _draw_falling(q: np.ndarray, geom: dict, img: np.ndarray) -> np.ndarray:
    pos = object_position_px("falling", q, geom)
    return _over(img, disc_coverage(pos[:, 0], pos[:, 1], geom["radius_px"], geom["size"]), geom["ball_value"])


def _draw_declared(y: np.ndarray, geom: dict, img: np.ndarray) -> np.ndarray:
    """The level's fill, then the disc, from the observations y (T, m) (see the module docstring)."""
    size, roles, t = geom["size"], geom["roles"], len(y)
    if geom["level"]:
        top = float(size) * (1.0 - np.clip(y[:, roles["level"]], 0.0, 1.0))
        img = _over(img, box_coverage(np.zeros(t), np.full(t, float(size)), top, np.full(t, float(size)), size),
                    geom["level_value"])
    if geom["disc"]:
        value = np.clip(y[:, roles["brightness"]], 0.0, 1.0) if "brightness" in roles else np.full(t, geom["value"])
        if "px" in roles or "py" in roles or "size" in roles:
            pos = object_position_px("declared", y, geom)
            radius = np.maximum(y[:, roles["size"]], 0.0) if "size" in roles else geom["radius_px"]
            cov = disc_coverage(pos[:, 0], pos[:, 1], radius, size)
        else:  # a fixed disc: its coverage once, (1, S, S)
            cov = disc_coverage([geom["center"][0]], [geom["center"][1]], geom["radius_px"], size)
        img = img + cov * (_col(value) - img)
    return img


def _draw_dot(q: np.ndarray, geom: dict, img: np.ndarray) -> np.ndarray:
    pos = _dot_position(q, geom)
    return _over(img, disc_coverage(pos[:, 0], pos[:, 1], geom["radius_px"], geom["size"]), geom["value"])


def _draw_double_pendulum(q: np.ndarray, geom: dict, img: np.ndarray) -> np.ndarray:
    size, hw = geom["size"], geom["rod_half_width_px"]
    px, py = geom["pivot"]
    joint, tip = double_pendulum_points(q, geom)
    img = _over(img, segment_coverage(px, py, joint[:, 0], joint[:, 1], hw, size), geom["upper_value"])
    img = _over(img, segment_coverage(joint[:, 0], joint[:, 1], tip[:, 0], tip[:, 1], hw, size), geom["lower_value"])
    img = _over(img, disc_coverage(joint[:, 0], joint[:, 1], geom["joint_radius_px"], size), geom["upper_value"])
    return _over(img, disc_coverage(tip[:, 0], tip[:, 1], geom["tip_radius_px"], size), geom["lower_value"])


def _draw_coupled_masses(q: np.ndarray, geom: dict, img: np.ndarray) -> np.ndarray:
    size, cy = geom["size"], geom["cy"]
    hw, hh = geom["block_half_width_px"], geom["block_half_height_px"]
    centres = np.asarray(geom["rest"])[None, :] + geom["px_per_m"] * q  # (T, 2)
    ends = [(np.full(len(q), geom["wall_px"]), centres[:, 0] - hw), (centres[:, 0] + hw, centres[:, 1] - hw),
            (centres[:, 1] + hw, np.full(len(q), size - geom["wall_px"]))]  # fmt: skip
    for a, b in ends:
        coil = zigzag_coverage(a, b, cy, geom["coil_amplitude_px"], geom["coils"], geom["coil_half_width_px"], size)
        img = _over(img, coil, geom["spring_value"])
    for i in range(2):
        block = box_coverage(centres[:, i] - hw, centres[:, i] + hw, cy - hh, cy + hh, size)
        img = _over(img, block, geom["block_values"][i])
    return img


# renderer name -> draw(q, geometry, img (T, S, S)) -> img; q is the drawn state (T,), or (T, 2) for the dot
# and the systems of two bodies, or the observations (T, m) for the declared renderer
DRAW: dict[str, Callable[[np.ndarray, dict, np.ndarray], np.ndarray]] = {
    "pendulum": _draw_pendulum,
    "spring": _draw_spring,
    "falling": _draw_falling,
    "declared": _draw_declared,
    "double_pendulum": _draw_double_pendulum,
    "coupled_masses": _draw_coupled_masses,
    "dot": _draw_dot,
}


def render_float(
    renderer: str,
    states: np.ndarray,
    geom: dict,
    state_names: Sequence[str] | None = None,
    background: np.ndarray | None = None,
) -> np.ndarray:
    """float32 `(T, S, S)` frames in [0, 1] of `states` `(T, d)` drawn over `background` `(S, S)` (black)."""
    size = geom["size"]
    q = _key_columns(renderer, states, state_names, geom)
    base = np.zeros((size, size), np.float32) if background is None else np.asarray(background, np.float32)
    layer = static_layer(renderer, geom)
    if layer is not None:
        base = base + layer[0] * (layer[1] - base)
    out = np.empty((q.shape[0], size, size), np.float32)
    for s in range(0, q.shape[0], _CHUNK):
        chunk = q[s : s + _CHUNK]
        img = np.broadcast_to(base, (len(chunk), size, size))
        out[s : s + _CHUNK] = DRAW[renderer](chunk, geom, img)
    return out


def render_frames(
    renderer: str,
    states: np.ndarray,
    size: int,
    geom: dict | None = None,
    state_names: Sequence[str] | None = None,
) -> np.ndarray:
    """uint8 `(T, size, size)` clean frames of `states` `(T, d)` (the default geometry when `geom` is None;
    the declared renderer needs its geometry, and `states` are then the observations `(T, m)`)."""
    renderer = renderer if renderer in RENDERERS else renderer_for(renderer, state_names)
    if geom is None and renderer == "declared":
        raise ValueError("the declared renderer needs its geometry: render.declared_geometry(size, observations)")
    geom = geometry(renderer, size, state_names) if geom is None else geom
    if geom["size"] != size:
        raise ValueError(f"geometry is for size {geom['size']}, not {size}")
    return np.round(render_float(renderer, states, geom, state_names) * 255.0).astype(np.uint8)


def clutter_background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A static `(S, S)` background of 6-9 dim discs and boxes (intensity 0.08-0.3), drawn from `rng`."""
    img = np.zeros((1, size, size), np.float32)
    for _ in range(int(rng.integers(6, 10))):
        v = float(rng.uniform(0.08, 0.3))
        if rng.random() < 0.5:
            cx, cy = rng.uniform(0, size, 2)
            cov = disc_coverage([cx], [cy], float(rng.uniform(0.04, 0.15) * size), size)
        else:
            x0, y0 = rng.uniform(-0.1 * size, size, 2)
            w, h = rng.uniform(0.05, 0.35, 2) * size
            cov = box_coverage([x0], [x0 + w], [y0], [y0 + h], size)
        img = _over(img, cov, v)
    return img[0]


# ---------------------------------------------------------------------------------------------
# measuring states back from clean frames (tests, intervention checks)


def measure_frames(renderer: str, frames: np.ndarray, geom: dict) -> np.ndarray:
    """Read the drawn state back from clean gray frames `(T, S, S)` by intensity centroids.

    pendulum: theta = atan2(cx - pivot_x, cy - pivot_y) of the centroid of the whole frame (rod, bob
    and pivot are symmetric about the rod's axis); spring: x from the block's centroid over the rows
    only the block covers; falling: y from the ball's centroid above the floor; dot: (u0, u1) mapped back
    to the states it draws (inside the clipped range). Returns `(T,)`, or `(T, k)` for the dot's k states. The
    declared renderer's roles are read back by `measure_declared`.
    """
    if renderer in ("double_pendulum", "coupled_masses"):
        raise ValueError(f"measure_frames reads one object; the {renderer} renderer draws two (use its truth.csv)")
    if renderer == "declared":
        raise ValueError("the declared renderer draws observations, not a state: use measure_declared(frames, geom)")
    frames = np.asarray(frames)
    f = frames.astype(np.float64) / 255.0 if frames.dtype == np.uint8 else frames.astype(np.float64)
    size = geom["size"]
    c = np.arange(size) + 0.5

    def centroid(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mass = img.sum(axis=(1, 2))
        mass = np.where(mass > 0, mass, np.nan)
        return (img.sum(axis=1) @ c[: img.shape[2]]) / mass, (img.sum(axis=2) @ c[: img.shape[1]]) / mass

    if renderer == "pendulum":
        cx, cy = centroid(f)
        px, py = geom["pivot"]
        return np.arctan2(cx - px, cy - py)
    if renderer == "spring":
        cy = geom["center"][1]
        top = math.ceil(cy - geom["block_half_height_px"])
        bottom = math.floor(cy - geom["coil_amplitude_px"] - geom["coil_half_width_px"] - 1.0)
        wall = math.ceil(geom["wall_px"])
        band = f[:, top:bottom, wall:]
        mass = band.sum(axis=(1, 2))
        cx = (band.sum(axis=1) @ c[wall:]) / np.where(mass > 0, mass, np.nan)
        return (cx - geom["center"][0]) / geom["px_per_m"]
    if renderer == "falling":
        _, cy = centroid(f[:, : geom["floor_row"], :])
        return (geom["floor_row"] - geom["radius_px"] - cy) / geom["px_per_m"]
    cx, cy = centroid(f)
    s = size / 2.0
    u = np.stack([(cx - s) / geom["span_px"], (s - cy) / geom["span_px"]], axis=1)
    drawn = len(geom.get("states", (0, 1)))
    return (np.asarray(geom["mean"]) + u * np.asarray(geom["scale"]))[:, :drawn]



def measure_declared(frames: np.ndarray, geom: dict) -> dict[str, np.ndarray]:
    """Read the declared renderer's roles back from clean gray frames `(T, S, S)` (black background):
    {role: (T,)} for each role in `geom["roles"]`.

    level: the median over columns of each column's mass / (S * the fill's value, read from the bottom
    row) (a disc spoils few columns);
    then, with the fill taken away, the disc: (px, py) its intensity centroid, brightness its brightest
    pixel refined to the mean of the pixels it covers fully (radius > 1.5 px), size sqrt(mass /
    (brightness pi)) (the antialiased disc's mass is pi r^2 + pi/12, neglected). Where the disc lies
    over the fill it is read exactly only when it is white (brightness 1). A frame where the disc is
    black or absent reads NaN for the disc's roles.
    """
    frames = np.asarray(frames)
    f = frames.astype(np.float64) / 255.0 if frames.dtype == np.uint8 else frames.astype(np.float64)
    size, roles = geom["size"], geom["roles"]
    t = f.shape[0]
    c = np.arange(size) + 0.5
    out: dict[str, np.ndarray] = {}
    if geom["level"]:
        bottom = np.median(f[:, -1, :], axis=1)  # the fill's value as stored (uint8 rounds 0.5 to 128/255)
        value = np.where(bottom > 0, bottom, geom["level_value"])
        level = np.median(f.sum(axis=1), axis=1) / (size * value)
        if "level" in roles:
            out["level"] = level
        fill = box_coverage(np.zeros(t), np.full(t, float(size)), size * (1.0 - level), np.full(t, float(size)), size)
        under = fill * value[:, None, None]
        f = (f - under) / np.maximum(1.0 - under, 1e-6)  # the disc's coverage times (value - fill) / (1 - fill)
    if not geom["disc"]:
        return out
    f = np.clip(f, 0.0, None)
    mass = f.sum(axis=(1, 2))
    mass = np.where(mass > 1e-9, mass, np.nan)
    cx, cy = (f.sum(axis=1) @ c) / mass, (f.sum(axis=2) @ c) / mass
    value = f.reshape(t, -1).max(axis=1)
    radius = np.sqrt(mass / (np.where(value > 0, value, np.nan) * np.pi))
    xs, ys = np.meshgrid(c, c)
    inside = np.hypot(xs[None] - cx[:, None, None], ys[None] - cy[:, None, None]) <= (radius - 0.75)[:, None, None]
    n = inside.sum(axis=(1, 2))
    refined = np.where(n > 0, (f * inside).sum(axis=(1, 2)) / np.maximum(n, 1), value)
    value = np.where(radius > 1.5, refined, value)
    if "px" in roles:
        out["px"] = cx
    if "py" in roles:
        out["py"] = cy
    if "brightness" in roles:
        out["brightness"] = value
    if "size" in roles:
        out["size"] = np.sqrt(mass / (np.where(value > 0, value, np.nan) * np.pi))
    return out
