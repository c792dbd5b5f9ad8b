"""Robustness: does the pendulum come back from videos anmc did not draw? One condition a data set, seeds apart.

    python benchmarks/robustness.py [--conditions black,grey,...] [--seeds 0,1,2] [--epochs 30]
                                    [--time-limit 15] [--clips 20] [--frames 100] [--workdir DIR] [--json OUT] [--quick]
                                    [--set KEY=VALUE ...] [--prior PATH] [--camera [--camera-error DX,DY,FRACTION] [--camera-learn]]
    python benchmarks/robustness.py --summarize A.json B.json ... [--markdown]   # runs made one at a time, as one table

The videos come from this file's own generator, independent of `anmc.synthetic` (no shared drawing
code, no shared simulation): a pendulum of true length L = 0.6 m under g = 9.81 m/s^2, simulated here
with a classical RK4 in numpy (8 substeps a frame), initial angle uniform in [-1.2, 1.2] rad and
angular velocity uniform in [-1.5, 1.5] rad/s; drawn as a camera would see it: a pivot at
(0.5 S, 0.2 S), a bob of radius 0.07 S at 0.42 S from it (theta = 0 hangs down), antialiased by
coverage, in RGB, written as mp4 at the condition's frame rate with `truth.csv` / `truth.json` in
anmc's truth format (docs/data.md). Each condition changes one thing from `black` (a warm bob on a
rod over black, 96 px, 30 fps); `CONDITIONS` lists them.

For every condition and seed: the data are drawn with the seed, `priors/pendulum.anm` (or `--prior`, a
variant of it to measure: e.g. its noise declared learnable) is copied with L started 50% off (0.9 m), `anmc.train` runs with the defaults (TrainConfig: only `seed`, `epochs`,
`time_limit` set; `--set recon=gaussian` and the like change a field for every run, to measure a
candidate default on every condition alike), `anmc.analysis.evaluate` reads the latents against the truth. A video whose rate
disagrees with the prior's dt (`fps25`) goes through the same check as `anmc train`
(`anmc.data.rate.check_frame_rate`) and its advice is followed (dt = 1/25 written into the prior).

Reported per run: |r| and slope of theta and omega (latent against truth), learned L and its error,
minutes of training, the diagnostics `anmc eval` raised; in the JSON also the seed trained (`--set
seed=N` trains the data of `--seeds` from another start; with `--set restarts=K`, the start chosen) and
each start's validation loss. `--camera`: train `priors/pendulum_camera.anm` instead, the pendulum with
its camera declared (the rod and the bob drawn by the sprite decoder where theta puts them), with this
generator's camera written in for each condition's source size, as a user who measured one frame
would; `--camera-error` writes it measured badly, `--camera-measured` as `anmc swing` measures it off the
clips (no truth used), `--camera-learn` makes it learnable params. `--measure-cameras`: train nothing,
measure every data set's camera with `anmc swing` and print its error against the generator's. `--quick`: two conditions, one seed, tiny
clips and one short epoch (a smoke test; its numbers mean nothing). `--summarize`: train nothing, join the
`--json` files of runs made a condition and a seed at a time into one table per way of training and one
line per condition over its seeds (worst |r|, the slopes' and L error's ranges, seeds met), and say
which conditions met the targets in every seed and which (condition, seed) runs the full table lacks.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PRIOR = ROOT / "priors" / "pendulum.anm"
CAMERA_PRIOR = ROOT / "priors" / "pendulum_camera.anm"
G, L_TRUE, PRIOR_FPS = 9.81, 0.6, 30.0
PIVOT, ROD, BOB = (0.5, 0.2), 0.42, 0.07  # fractions of the frame side S


# ------------------------------------------------------------------ the physics, simulated here


def rk4_pendulum(theta0, omega0, frames: int, dt: float, length: float = L_TRUE, g: float = G, substeps: int = 8) -> np.ndarray:
    """(clips, frames, 2) float64: theta'' = -(g/L) sin theta, classical RK4 with `substeps` steps a frame."""
    z = np.stack([np.asarray(theta0, float), np.asarray(omega0, float)], -1)
    h = dt / substeps

    def f(s):
        return np.stack([s[..., 1], -(g / length) * np.sin(s[..., 0])], -1)

    out = [z]
    for _ in range(frames - 1):
        for _ in range(substeps):
            k1 = f(z)
            k2 = f(z + 0.5 * h * k1)
            k3 = f(z + 0.5 * h * k2)
            k4 = f(z + h * k3)
            z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        out.append(z)
    return np.stack(out, 1)


def draw_states(clips: int, frames: int, fps: float, rng: np.random.Generator) -> np.ndarray:
    return rk4_pendulum(rng.uniform(-1.2, 1.2, clips), rng.uniform(-1.5, 1.5, clips), frames, 1.0 / fps)


# ------------------------------------------------------------------ the drawing, done here


@dataclass(frozen=True)
class Condition:
    """One way a recording can look. Defaults: the `black` condition."""

    name: str
    what: str
    background: str = "black"  # black | grey | white | gradient | texture
    bob: tuple[float, float, float] = (1.0, 0.85, 0.3)  # RGB in [0, 1]
    line: str = "rod"  # rod | string | none
    line_rgb: tuple[float, float, float] | None = None  # default: the bob's colour, dimmed
    noise: float = 0.0  # std of additive pixel noise (intensity in [0, 1])
    distractor: bool = False  # a second disc moving in straight lines, bouncing off the edges
    occluder: bool = False  # a static box in front of part of the swing
    jitter: int = 0  # camera shake: the frame moves by up to this many pixels each frame
    drift: float = 0.0  # slow gain change: 1 + drift sin(2 pi t / T + phase)
    flicker: float = 0.0  # per-frame gain noise: 1 + flicker N(0, 1)
    source: int = 96  # pixels of the video (training resizes to the default --size)
    fps: float = PRIOR_FPS


def contrast_rgb(contrast: float, level: float = 0.5, hue=(0.8, 0.5, 0.3)) -> tuple[float, float, float]:
    """An RGB colour whose luma (0.299 R + 0.587 G + 0.114 B) is `contrast` above `level`."""
    h = np.asarray(hue)
    c = level + contrast * h / float(h @ [0.299, 0.587, 0.114])
    return tuple(float(v) for v in np.clip(c, 0, 1))


DARK = (0.12, 0.1, 0.08)
CONDITIONS = {c.name: c for c in [
    Condition("black", "warm bob on a rod over black (the base every other condition changes one thing of)"),
    Condition("grey", "dark bob on a string over mid-grey (the issue's user video)", background="grey", bob=DARK, line="string", line_rgb=(0.2, 0.2, 0.2)),
    Condition("white", "dark bob on a rod over white", background="white", bob=DARK),
    Condition("gradient", "smooth colour gradient background", background="gradient"),
    Condition("texture", "static textured background", background="texture"),
    Condition("contrast30", "RGB bob 30% brighter than mid-grey (luma)", background="grey", bob=contrast_rgb(0.3)),
    Condition("contrast15", "RGB bob 15% brighter than mid-grey (luma)", background="grey", bob=contrast_rgb(0.15)),
    Condition("string", "a thin string instead of the rod", line="string"),
    Condition("bob_only", "no rod or string, the bob alone", line="none"),
    Condition("noise05", "pixel noise std 0.05", noise=0.05),
    Condition("noise10", "pixel noise std 0.1", noise=0.1),
    Condition("distractor", "a second disc moving across the frame", distractor=True),
    Condition("occluder", "a static box hiding part of the swing", occluder=True),
    Condition("jitter", "camera shake of +-2 px a frame", jitter=2),
    Condition("drift", "slow brightness drift (+-25% over a clip)", drift=0.25),
    Condition("flicker", "brightness flicker (8% a frame)", flicker=0.08),
    Condition("res48", "48 px source", source=48),
    Condition("res256", "256 px source", source=256),
    Condition("fps25", "25 fps video for a prior written with dt = 1/30", fps=25.0),
]}  # fmt: skip


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y), each (n, n): pixel [i, j] has its centre at (j + 0.5, i + 0.5)."""
    c = np.arange(n) + 0.5
    return np.meshgrid(c, c)


def background(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, n, 3) float in [0, 1]; `texture` is drawn from `rng` (static: one per clip)."""
    x, y = _grid(n)
    if kind in ("black", "grey", "white"):
        return np.full((n, n, 3), {"black": 0.0, "grey": 0.5, "white": 1.0}[kind])
    if kind == "gradient":
        t = ((x + y) / (2 * n))[..., None]
        return (1 - t) * np.array([0.1, 0.15, 0.3]) + t * np.array([0.75, 0.7, 0.55])
    if kind == "texture":
        img = np.zeros((n, n, 3))
        for _ in range(8):
            k = rng.uniform(2, 12, 2) * 2 * np.pi / n
            phase = rng.uniform(0, 2 * np.pi)
            img += np.sin(k[0] * x + k[1] * y + phase)[..., None] * rng.uniform(0.3, 1.0, 3)
        img = (img - img.min()) / (img.max() - img.min())
        return 0.25 + 0.5 * img
    raise ValueError(f"background {kind!r}")


def disc(x, y, cx, cy, r) -> np.ndarray:
    """Coverage of a disc: clip(r + 0.5 - distance, 0, 1)."""
    return np.clip(r + 0.5 - np.hypot(x - cx, y - cy), 0.0, 1.0)


def segment(x, y, ax, ay, bx, by, half_width) -> np.ndarray:
    """Coverage of a line segment of the given half-width (distance to the segment, clipped like `disc`)."""
    dx, dy = bx - ax, by - ay
    t = np.clip(((x - ax) * dx + (y - ay) * dy) / max(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
    return np.clip(half_width + 0.5 - np.hypot(x - (ax + t * dx), y - (ay + t * dy)), 0.0, 1.0)


def over(img: np.ndarray, alpha: np.ndarray, rgb) -> np.ndarray:
    return img * (1 - alpha[..., None]) + alpha[..., None] * np.asarray(rgb)


def occluder_box(n: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) pixels of the static occluder: the right third of the bob's arc."""
    return int(0.35 * n), int(0.68 * n), int(0.72 * n), int(0.92 * n)


def render_clip(cond: Condition, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 (T, S, S, 3) frames of one clip of angles `theta` (T,) as `cond` says; every random choice from `rng`."""
    n, j = cond.source, cond.jitter
    canvas = n + 2 * j  # the scene is drawn larger and the camera's window moves over it
    x, y = _grid(canvas)
    bg = background(cond.background, canvas, rng)
    px, py = PIVOT[0] * n + j, PIVOT[1] * n + j
    rod, r = ROD * n, BOB * n
    line_rgb = cond.line_rgb or tuple(0.7 * c for c in cond.bob)
    half = {"rod": max(0.015 * n, 0.6), "string": 0.25}.get(cond.line)
    frames_out = len(theta)
    shift = rng.integers(-j, j + 1, size=(frames_out, 2)) if j else np.zeros((frames_out, 2), int)
    gain = np.ones(frames_out)
    if cond.drift:
        gain *= 1 + cond.drift * np.sin(2 * np.pi * np.arange(frames_out) / frames_out + rng.uniform(0, 2 * np.pi))
    if cond.flicker:
        gain *= 1 + cond.flicker * rng.standard_normal(frames_out)
    if cond.distractor:  # straight lines at constant speed, reflected at the edges
        dr = 0.05 * n
        pos = rng.uniform(dr, n - dr, 2) + j
        vel = rng.uniform(0.8, 1.6, 2) * rng.choice([-1, 1], 2) * n / 64
    out = np.empty((frames_out, n, n, 3), np.uint8)
    for t, th in enumerate(theta):
        bx, by = px + rod * math.sin(th), py + rod * math.cos(th)
        img = bg.copy()
        if half is not None:
            img = over(img, segment(x, y, px, py, bx, by, half), line_rgb)
        img = over(img, disc(x, y, bx, by, r), cond.bob)
        if cond.distractor:
            img = over(img, disc(x, y, pos[0], pos[1], dr), (0.3, 0.6, 1.0))
            pos = pos + vel
            for a in range(2):
                if not dr + j <= pos[a] <= n + j - dr:
                    vel[a] = -vel[a]
                    pos[a] = np.clip(pos[a], dr + j, n + j - dr)
        if cond.occluder:
            top, left, bottom, right = (v + j for v in occluder_box(n))
            img[top:bottom, left:right] = (0.35, 0.3, 0.25)
        dx, dy = shift[t]
        frame = img[j + dy : j + dy + n, j + dx : j + dx + n] * gain[t]
        if cond.noise:
            frame = frame + cond.noise * rng.standard_normal(frame.shape)
        out[t] = np.round(np.clip(frame, 0, 1) * 255)
    return out


def make_dataset(cond: Condition, out_dir: Path, seed: int, clips: int, frames: int, fmt: str = "mp4") -> np.ndarray:
    """Draw `clips` clips into out_dir (clip_000.mp4 ... or png folders) plus truth.csv / truth.json; returns the states."""
    from anmc.data.io import write_truth, write_video

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 19])
    states = draw_states(clips, frames, cond.fps, rng)
    for c in range(clips):
        video = render_clip(cond, states[c, :, 0], np.random.default_rng([seed, 19, c]))
        write_video(out_dir / (f"clip_{c:03d}.mp4" if fmt == "mp4" else f"clip_{c:03d}"), video, fps=cond.fps)
    meta = {"model": "pendulum", "params": {"L": L_TRUE, "c": 0.0}, "states": ["theta", "omega"], "observed": ["theta"],
            "fps": cond.fps, "size": cond.source, "seed": seed, "clips": clips, "frames": frames,
            "renderer": {"name": "benchmarks/robustness.py", "condition": asdict(cond)}}  # fmt: skip
    write_truth(out_dir, states, ["theta", "omega"], meta)
    return states


# ------------------------------------------------------------------ train, evaluate, tabulate


def prior_for(data_dir: Path, out: Path, source: Path = PRIOR) -> tuple[Path, str]:
    """`source` (priors/pendulum.anm) with L started 50% off; dt as `anmc train`'s frame-rate check advises.
    Returns (path, note)."""
    from anmc.data.rate import check_frame_rate, dt_text, frame_rate
    from anmc.errors import UserError

    text, found = re.subn(r"^param L = [0-9.eE+-]+ ", f"param L = {1.5 * L_TRUE:g} ", source.read_text(), count=1, flags=re.M)
    if not found:
        raise SystemExit(f"{source}: no `param L = <number> ` line to start 50% off; the benchmark needs the pendulum's L")
    note = ""
    try:
        check_frame_rate([data_dir], dt=1 / PRIOR_FPS)
    except UserError:
        fps = frame_rate([data_dir]).fps
        text = text.replace("dt = 1/30", f"dt = {dt_text(fps)}", 1)
        note = f"fps check: dt = {dt_text(fps)} written, as advised"
    out.write_text(text)
    return out, note


def camera_for(source: Path, size: int, error: tuple[float, float, float] = (0.0, 0.0, 0.0), learn: bool = False) -> str:
    """The text of `source` (priors/pendulum_camera.anm) with this generator's camera at a video side of
    `size` pixels: the pivot at (0.5 S, 0.2 S), the bob's centre 0.42 S from it (what a user who measured
    one frame would write). `error` (dx, dy, fraction): the camera as measured badly, the pivot off by
    (dx, dy) pixels and the bob's distance by that fraction of it. `learn`: cx, cy and R become learnable
    params started there (`param cx = ... in [0, S] learn`)."""
    from anmc.data.swing import write_camera
    from anmc.errors import UserError

    dx, dy, frac = error
    off = lambda v: f" {'-' if v < 0 else '+'} {abs(v):g}" if v else ""  # noqa: E731
    values = {"S": f"{size}", "cx": f"{PIVOT[0]} * S{off(dx)}", "cy": f"{PIVOT[1]} * S{off(dy)}", "R": f"{ROD * (1 + frac):g} * S"}
    try:
        return write_camera(source.read_text(), values, {"cx": "[0, S]", "cy": "[0, S]", "R": "[0.05 * S, S]"}, learn)
    except UserError as e:
        raise SystemExit(f"{source}: {e}") from None


def run_one(cond: Condition, seed: int, args, workdir: Path) -> dict:
    from anmc.analysis.evaluate import evaluate
    from anmc.vae.config import TrainConfig
    from anmc.vae.run import load_run
    from anmc.vae.train import train

    data = workdir / f"{cond.name}_s{seed}" / "data"
    make_dataset(cond, data, seed, args.clips, args.frames)
    source, learn = args.prior, args.camera and args.camera_learn
    measured = None
    if args.camera and getattr(args, "camera_measured", False):  # the camera as `anmc swing` measures it off these clips, nothing known
        from anmc.data.swing import measure_swing_in, with_camera

        swing = measure_swing_in(data)
        measured = {"cx": swing.cx, "cy": swing.cy, "R": swing.radius, "residual": swing.residual, "arc": swing.arc,
                    "frames": swing.frames, "seen": swing.seen, "reliable": swing.reliable, **camera_error(swing, cond.source)}  # fmt: skip
        source = data.parent / "pendulum_camera.anm"
        source.write_text(with_camera(args.prior.read_text(), swing, learn))
    elif args.camera:  # the camera declared: a sprite for the rod and one for the bob (docs/method.md, "Physical units")
        source = data.parent / "pendulum_camera.anm"
        source.write_text(camera_for(args.prior, cond.source, args.camera_error, learn))
    prior, note = prior_for(data, data.parent / "pendulum.anm", source)
    # `--set seed=N` trains with seed N on the data drawn with `seed` (to tell the data from the training start)
    config = TrainConfig(**({"seed": seed, "epochs": args.epochs, "time_limit": args.time_limit} | args.overrides))
    started = time.monotonic()
    result = train(prior, [str(data)], data.parent / "run", config, overwrite=True)  # a rerun in --workdir measures anew
    minutes = (time.monotonic() - started) / 60
    run = load_run(data.parent / "run")
    report = evaluate(run)
    s = report["states"]
    learned = report["params"]["L"]["learned"]
    return {
        "condition": cond.name, "seed": seed, "train_seed": run.config.seed, "starts": result.starts, "epochs": result.epochs,
        "theta_r": abs(s["theta"]["pearson"]), "theta_slope": abs(s["theta"]["slope"]),
        "omega_r": abs(s["omega"]["pearson"]), "omega_slope": abs(s["omega"]["slope"]),
        "L": learned, "L_err": learned / L_TRUE - 1, "minutes": minutes,
        "diagnostics": [f["code"] for f in report["diagnostics"]], "note": note, "set": args.sets, "prior": str(args.prior),
        "camera": bool(args.camera), "camera_error": list(args.camera_error) if args.camera else None,
        "camera_learn": learn, "camera_learned": _camera_learned(run) if learn else None, "camera_measured": measured,
    }  # fmt: skip


def camera_error(swing, size: int) -> dict:
    """How far a measured camera (an `anmc.data.swing.Swing`) is from this generator's at a video side of `size`:
    the pivot's distance in pixels and R's relative error."""
    return _camera_offsets(swing.cx, swing.cy, swing.radius, size)


def _camera_offsets(cx: float, cy: float, radius: float, size: int) -> dict:
    """A camera (pivot cx, cy and R in pixels) against this generator's at a video side of `size`."""
    return {"pivot_error_px": math.hypot(cx - PIVOT[0] * size, cy - PIVOT[1] * size), "R_error": radius / (ROD * size) - 1}


def _camera_learned(run) -> dict:
    """The learned camera of a `--camera-learn` run: cx, cy, R in pixels of the video as stored."""
    return {k: float(v.detach()) for k, v in run.module.param_values().items() if k in ("cx", "cy", "R")}


def print_table(rows: list[dict]) -> None:
    head = f"{'condition':<12} {'seed':>4} {'ep':>3} {'th |r|':>7} {'th slope':>8} {'om |r|':>7} {'om slope':>8} {'L':>6} {'L err':>7} {'min':>6}  diagnostics"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['condition']:<12} {r['seed']:>4} {r['epochs']:>3} {r['theta_r']:>7.3f} {r['theta_slope']:>8.3f} {r['omega_r']:>7.3f} "
              f"{r['omega_slope']:>8.3f} {r['L']:>6.3f} {r['L_err']:>+7.1%} {r['minutes']:>6.1f}  {','.join(r['diagnostics']) or '-'}"
              + (f"  ({r['note']})" if r["note"] else "") + _measured_text(r.get("camera_measured")))  # fmt: skip
    print(f"targets (|r| >= 0.95 for theta and omega, L within 10%) met in {sum(map(met, rows))} of {len(rows)} runs")


def _measured_text(m: dict | None) -> str:
    return f"  (camera measured: pivot {m['pivot_error_px']:.2f} px off, R {m['R_error']:+.1%})" if m else ""


def met(row: dict) -> bool:
    """The issue's targets for one run: |r| >= 0.95 for theta and omega, L within 10%."""
    return abs(row["theta_r"]) >= 0.95 and abs(row["omega_r"]) >= 0.95 and abs(row["L_err"]) <= 0.10


def _by_condition(rows: list[dict], names: list[str]):
    """Per condition of `names`: its runs by seed, the lower |r| of theta and omega, the two slopes, L's errors,
    and in how many of the runs the targets were met."""
    for name in names:
        runs = sorted((r for r in rows if r["condition"] == name), key=lambda r: r["seed"])
        slopes = [r[k] for r in runs for k in ("theta_slope", "omega_slope")]
        yield name, runs, min(min(r["theta_r"], r["omega_r"]) for r in runs), slopes, [r["L_err"] for r in runs], sum(map(met, runs))


def print_by_condition(rows: list[dict]) -> None:
    """One line per condition over its seeds: which seeds ran, the lower |r| of theta and omega, the range of
    the two slopes and of L's error, and in how many of the seeds the targets were met."""
    head = f"{'condition':<12} {'seeds':<7} {'min |r|':>7} {'slopes':>13} {'L error':>15}  met"
    print("\nper condition:")
    print(head)
    print("-" * len(head))
    names = [c for c in CONDITIONS if any(r["condition"] == c for r in rows)] + sorted({r["condition"] for r in rows} - set(CONDITIONS))
    for name, runs, lowest, slopes, errors, n_met in _by_condition(rows, names):
        print(f"{name:<12} {','.join(str(r['seed']) for r in runs):<7} {lowest:>7.3f} "
              f"{min(slopes):>6.3f}-{max(slopes):<6.3f} {min(errors):>+7.1%}..{max(errors):<+6.1%}  {n_met}/{len(runs)}")  # fmt: skip


def _camera_learned_error(row: dict) -> str:
    """A `--camera-learn` run's learned camera against the generator's: the pivot's distance in px, R's error."""
    learned, size = row.get("camera_learned"), CONDITIONS[row["condition"]].source if row["condition"] in CONDITIONS else 96
    if not learned:
        return "-"
    off = _camera_offsets(learned["cx"], learned["cy"], learned["R"], size)
    return f"{off['pivot_error_px']:.2f} px, {off['R_error']:+.1%}"


def markdown_table(rows: list[dict]) -> None:
    """`print_table` as a Markdown table (docs/results.md §6 is made with it), with the cameras where measured or learned."""
    measured, learned = any(r.get("camera_measured") for r in rows), any(r.get("camera_learned") for r in rows)
    head = ["data", "seed"] + ["camera measured: pivot off, R"] * measured + ["learned camera: pivot off, R"] * learned
    head += ["θ \\|r\\|", "θ slope", "ω \\|r\\|", "ω slope", f"L (true {L_TRUE:g})", "L error", "min (epochs)", "findings", "met"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        m = r.get("camera_measured")
        cells = [r["condition"], str(r["seed"])]
        cells += [f"{m['pivot_error_px']:.2f} px, {m['R_error']:+.1%}" if m else "-"] * measured + [_camera_learned_error(r)] * learned
        cells += [f"{r['theta_r']:.3f}", f"{r['theta_slope']:.3f}", f"{r['omega_r']:.3f}", f"{r['omega_slope']:.3f}", f"{r['L']:.3f}",
                  f"{r['L_err']:+.1%}", f"{r['minutes']:.1f} ({r['epochs']})", ", ".join(r["diagnostics"]) or "none", "yes" if met(r) else "**no**"]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    print(f"\nTargets (\\|r\\| ≥ 0.95 for θ and ω, L within 10%) met in **{sum(map(met, rows))} of {len(rows)}** runs.")


def markdown_by_condition(rows: list[dict], seeds) -> None:
    """`print_by_condition` as a Markdown table, with the seeds each condition still lacks."""
    print("\n| condition | what it changes | seeds run | lowest \\|r\\| | slopes | L error | met | not run yet |\n|---|---|---|---|---|---|---|---|")
    for name, runs, lowest, slopes, errors, n_met in _by_condition(rows, [c for c in CONDITIONS if any(r["condition"] == c for r in rows)]):
        lacking = [str(s) for s in seeds if s not in {r["seed"] for r in runs}]
        print(f"| {name} | {CONDITIONS[name].what} | {', '.join(str(r['seed']) for r in runs)} | {lowest:.3f} | "
              f"{min(slopes):.3f}–{max(slopes):.3f} | {min(errors):+.1%} to {max(errors):+.1%} | {n_met}/{len(runs)} | {', '.join(lacking) or '-'} |")  # fmt: skip


def summarize(paths: list[Path], seeds=(0, 1, 2), markdown: bool = False) -> list[dict]:
    """Rows of several `--json` files (runs made a condition and a seed at a time) as one table, grouped by
    how each was trained (the prior, the camera, --set), then per group: the conditions whose every seed
    of `seeds` met the targets, those with a run that did not, and the (condition, seed) runs still missing
    for the full table. `markdown`: the two tables as Markdown (what docs/results.md shows). Returns the rows."""
    rows = [r for p in paths for r in json.loads(Path(p).read_text())]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        how = Path(r.get("prior") or PRIOR).name
        if r.get("camera"):
            error = r.get("camera_error") or [0, 0, 0]
            how += " camera" + (" measured by anmc swing" if r.get("camera_measured") else "")
            how += (f" error {','.join(f'{v:g}' for v in error)}" if any(error) else "") + (" learned" if r.get("camera_learn") else "")
        how += "".join(f" --set {s}" for s in r.get("set") or [])
        groups.setdefault(how, []).append(r)
    for how, group in groups.items():
        group = sorted(group, key=lambda r: (list(CONDITIONS).index(r["condition"]) if r["condition"] in CONDITIONS else 99, r["seed"]))
        print(f"\n== {how}: {len(group)} runs")
        done = {(r["condition"], r["seed"]): met(r) for r in group}
        full = [c for c in CONDITIONS if all(done.get((c, s)) for s in seeds)]
        failed = sorted({c for (c, s), ok in done.items() if not ok})
        missing = [f"{c} {s}" for c in CONDITIONS for s in seeds if (c, s) not in done]
        if markdown:
            markdown_table(group)
            markdown_by_condition(group, seeds)
        else:
            print_table(group)
            print_by_condition(group)
        print(f"met in every seed of {', '.join(map(str, seeds))}: {len(full)} of {len(CONDITIONS)} conditions" + (f" ({', '.join(full)})" if full else ""))
        print(f"a run that did not meet them: {', '.join(failed) or 'none'}")
        print(f"not run for the full table: {len(missing)} of {len(CONDITIONS) * len(seeds)}" + (f" ({', '.join(missing)})" if missing else ""))
    return rows


def measure_cameras(conditions, seeds, args, workdir: Path) -> list[dict]:
    """Train nothing: draw each (condition, seed) data set as the training runs do (mp4 clips), measure its
    camera with `anmc swing` (anmc.data.swing.measure_swing) and compare it with the generator's."""
    from anmc.data.swing import measure_swing_in

    rows = []
    print(f"{'condition':<12} {'seed':>4} {'S':>4} {'pivot err px':>12} {'R err':>7} {'rms px':>7} {'s.e. px':>7} {'arc deg':>7} {'frames':>11}  warnings")
    for cond in conditions:
        for seed in seeds:
            data = workdir / f"{cond.name}_s{seed}" / "data"
            make_dataset(cond, data, seed, args.clips, args.frames)
            started = time.monotonic()
            s = measure_swing_in(data)  # as `anmc swing` reads them
            n = cond.source
            row = {"condition": cond.name, "seed": seed, "size": n, "cx": s.cx, "cy": s.cy, "R": s.radius, **camera_error(s, n),
                   "residual": s.residual, "pivot_se": s.pivot_se, "arc": s.arc, "frames": s.frames, "seen": s.seen,
                   "warnings": s.warnings(), "seconds": time.monotonic() - started}  # fmt: skip
            rows.append(row)
            print(f"{cond.name:<12} {seed:>4} {n:>4} {row['pivot_error_px']:>12.2f} {row['R_error']:>+7.1%} {s.residual:>7.2f} {s.pivot_se:>7.2f} "
                  f"{math.degrees(s.arc):>7.0f} {s.frames:>5}/{s.seen:<5}  {len(row['warnings']) or '-'}", flush=True)  # fmt: skip
    worst = max(rows, key=lambda r: r["pivot_error_px"])
    print(f"pivot within {worst['pivot_error_px']:.2f} px ({worst['condition']} seed {worst['seed']}), R error "
          f"{min(r['R_error'] for r in rows):+.1%} to {max(r['R_error'] for r in rows):+.1%}, "
          f"{sum(bool(r['warnings']) for r in rows)} of {len(rows)} data sets with a warning")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--summarize", nargs="+", type=Path, metavar="JSON",
                    help="train nothing: the rows of these --json files as one table, per way of training, with what the full table still lacks")
    ap.add_argument("--markdown", action="store_true", help="with --summarize: the tables as Markdown (docs/results.md §6)")
    ap.add_argument("--conditions", default=",".join(CONDITIONS), help="comma-separated names: " + ", ".join(CONDITIONS))
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated; each seed is a new draw of the data and of the training")
    ap.add_argument("--epochs", type=int, default=30, help="training epochs (the default TrainConfig's)")
    ap.add_argument("--time-limit", type=float, default=15.0, help="minutes per training (stops after the epoch that crosses it)")
    ap.add_argument("--clips", type=int, default=20)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--workdir", type=Path, help="where data sets and runs go (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    ap.add_argument("--quick", action="store_true", help="two conditions, one seed, tiny clips, one short epoch")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="change a TrainConfig field for every run, e.g. --set recon=gaussian (repeatable)")
    ap.add_argument("--prior", type=Path, help="the pendulum prior every run starts from (default priors/pendulum.anm, "
                    "or priors/pendulum_camera.anm with --camera); L is started 50%% off")
    ap.add_argument("--camera", action="store_true", help="train priors/pendulum_camera.anm (or --prior, its const lines "
                    "S, cx, cy, R) with this generator's camera written in: the sprite decoder, theta in radians by construction")
    ap.add_argument("--camera-error", type=lambda v: tuple(float(x) for x in v.split(",")), default=(0.0, 0.0, 0.0),
                    metavar="DX,DY,FRACTION", help="with --camera: write the camera as measured badly, the pivot off by "
                    "(DX, DY) pixels and the bob's distance R off by FRACTION (e.g. 2,-2,0.1)")
    ap.add_argument("--camera-measured", action="store_true", help="with --camera: the camera measured off each data set by "
                    "`anmc swing` (anmc.data.swing), not this generator's; the row records the measurement and its error")
    ap.add_argument("--measure-cameras", action="store_true", help="train nothing: measure each data set's camera with "
                    "`anmc swing` and print its error against the generator's (seconds a data set)")
    ap.add_argument("--camera-learn", action="store_true", help="with --camera: the pivot (cx, cy) and R learnable params "
                    "started at the written camera (with --camera-error: from the bad measurement)")
    args = ap.parse_args()
    if args.summarize:
        summarize(args.summarize, markdown=args.markdown)
        return
    if args.camera_measured and (not args.camera or any(args.camera_error)):
        ap.error("--camera-measured goes with --camera and without --camera-error")
    if len(args.camera_error) != 3:
        ap.error("--camera-error takes three numbers: DX,DY,FRACTION")
    args.prior = args.prior or (CAMERA_PRIOR if args.camera else PRIOR)
    from anmc.errors import UserError
    from anmc.vae.config import parse_overrides

    try:
        overrides = parse_overrides(args.sets)
    except UserError as e:
        ap.error(str(e))
    names = [c for c in args.conditions.split(",") if c]
    unknown = [c for c in names if c not in CONDITIONS]
    if unknown:
        ap.error(f"unknown condition(s) {', '.join(unknown)}; use {', '.join(CONDITIONS)}")
    conditions = [CONDITIONS[c] for c in names]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    args.overrides = overrides
    if args.quick:
        conditions = [replace(CONDITIONS[c], source=32) for c in ("black", "grey")]
        seeds, args.epochs, args.clips, args.frames = [0], 1, 3, 24
        args.overrides = overrides | {"size": 16, "batch": 2, "seq_len": 4, "steps_per_epoch": 2}
    from anmc.vae.allocator import tune_allocator
    from anmc.vae.threads import apply_thread_default

    _, allocator = tune_allocator()  # as `anmc train` does
    print("torch threads: %d (%s); %s" % (*apply_thread_default(), allocator), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        if args.measure_cameras:
            rows = measure_cameras(conditions, seeds, args, workdir)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=2) + "\n")
            return
        rows = []
        for cond in conditions:
            for seed in seeds:
                rows.append(run_one(cond, seed, args, workdir))
                print(json.dumps(rows[-1]), flush=True)
    print()
    if args.sets:
        print("every run with --set " + " --set ".join(args.sets))
    if args.prior != PRIOR:
        print(f"every run from {args.prior}" + (" with this generator's camera written in" if args.camera else ""))
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
