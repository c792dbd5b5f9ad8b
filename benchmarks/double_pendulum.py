"""A double pendulum from videos anmc did not draw: does `priors/double_pendulum.anm` recover its four states and g?

    python benchmarks/double_pendulum.py [--backgrounds black,grey] [--seeds 0,1,2] [--epochs 30]
                                         [--time-limit 20] [--clips 20] [--frames 100] [--workdir DIR]
                                         [--json OUT] [--set KEY=VALUE ...] [--quick]

The videos come from this file's own simulation and drawing, independent of anmc (no SymPy, no
Lagrangian from `anmc.symbolic`, no `anmc.synthetic`): two rigid links with the prior's constants
(mass 1 kg each, centre of mass 0.5 m from the joint, moment of inertia 1 kg m^2 about it, upper
link 1 m joint to joint) under g = 9.81 m/s^2, equations of motion derived by hand (the docstring of
`accelerations`) and integrated by a classical RK4 in numpy with 8 substeps a frame; initial angles
uniform in [-1.2, 1.2] rad and angular velocities uniform in [-1.5, 1.5] rad/s. Drawn with
`benchmarks/robustness.py`'s primitives (antialiased coverage, RGB): pivot at (0.5 S, 0.42 S), 0.2 S a
metre, the upper link a warm rod ending in a disc at the joint, the lower link (drawn 1 m long) a
blue rod ending in a disc, over black or, as the robustness benchmark's user video, mid-grey.
96 px, 30 fps mp4, `truth.csv` / `truth.json` in anmc's truth format.

For every background and seed: the data are drawn with the seed, `priors/double_pendulum.anm` is
copied with g started 50% off (14.7), `anmc.train` runs with the default `TrainConfig` (`--set`
changes a field for every run alike), `anmc.analysis.evaluate` reads the latents against the truth.
Reported: |r| and slope of each state, learned g and its error, minutes, `anmc eval`'s findings, and
whether the issue's targets (|r| >= 0.9 for all four states, g within 10%) were met.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from robustness import _grid, background, disc, over, segment  # noqa: E402  (the drawing primitives)

ROOT = Path(__file__).resolve().parent.parent
PRIOR = ROOT / "priors" / "double_pendulum.anm"
G, M, C, I, L_UPPER, L_LOWER_DRAWN = 9.81, 1.0, 0.5, 1.0, 1.0, 1.0
STATES = ["theta1", "theta2", "omega1", "omega2"]
PIVOT, PX_PER_M = (0.5, 0.42), 0.2  # fractions of the frame side S


# ------------------------------------------------------------------ the physics, derived by hand


def accelerations(s: np.ndarray, g: float = G) -> np.ndarray:
    """(..., 2) angular accelerations at states `s` (..., 4) = (theta1, theta2, omega1, omega2).

    With d = theta1 - theta2, the kinetic energy of the two links is
        T = 1/2 (m c^2 + I + m L^2) w1^2 + m L c cos(d) w1 w2 + 1/2 (m c^2 + I) w2^2,
    the potential V = -m g (c + L) cos(theta1) - m g c cos(theta2), and Euler-Lagrange gives
        (m c^2 + I + m L^2) w1' + m L c cos(d) w2' = -m L c sin(d) w2^2 - m g (c + L) sin(theta1)
        m L c cos(d) w1'        + (m c^2 + I) w2'  =  m L c sin(d) w1^2 - m g c sin(theta2),
    solved here as a 2 x 2 system by Cramer's rule.
    """
    t1, t2, w1, w2 = np.moveaxis(s, -1, 0)
    d = t1 - t2
    a, b, e = M * C * C + I + M * L_UPPER**2, M * L_UPPER * C * np.cos(d), M * C * C + I
    r1 = -M * L_UPPER * C * np.sin(d) * w2**2 - M * g * (C + L_UPPER) * np.sin(t1)
    r2 = M * L_UPPER * C * np.sin(d) * w1**2 - M * g * C * np.sin(t2)
    det = a * e - b * b
    return np.stack([(r1 * e - b * r2) / det, (a * r2 - b * r1) / det], -1)


def energy(s: np.ndarray, g: float = G) -> np.ndarray:
    t1, t2, w1, w2 = np.moveaxis(s, -1, 0)
    kinetic = (0.5 * (M * C * C + I + M * L_UPPER**2) * w1**2 + M * L_UPPER * C * np.cos(t1 - t2) * w1 * w2
               + 0.5 * (M * C * C + I) * w2**2)  # fmt: skip
    return kinetic - M * g * (C + L_UPPER) * np.cos(t1) - M * g * C * np.cos(t2)


def rk4_double_pendulum(s0: np.ndarray, frames: int, dt: float, g: float = G, substeps: int = 8) -> np.ndarray:
    """(clips, frames, 4) float64 from initial states `s0` (clips, 4); classical RK4, `substeps` steps a frame."""
    z = np.asarray(s0, float)
    h = dt / substeps

    def f(s):
        return np.concatenate([s[..., 2:], accelerations(s, g)], -1)

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
    s0 = np.concatenate([rng.uniform(-1.2, 1.2, (clips, 2)), rng.uniform(-1.5, 1.5, (clips, 2))], -1)
    return rk4_double_pendulum(s0, frames, 1.0 / fps)


# ------------------------------------------------------------------ the drawing


@dataclass(frozen=True)
class Look:
    background: str = "black"  # black | grey
    upper: tuple[float, float, float] = (1.0, 0.7, 0.3)
    lower: tuple[float, float, float] = (0.3, 0.6, 1.0)
    source: int = 96


def render_clip(look: Look, angles: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 (T, S, S, 3) frames of one clip of angles `angles` (T, 2)."""
    n = look.source
    x, y = _grid(n)
    bg = background(look.background, n, rng)
    px, py = PIVOT[0] * n, PIVOT[1] * n
    r1, r2 = L_UPPER * PX_PER_M * n, L_LOWER_DRAWN * PX_PER_M * n
    half, joint_r, tip_r = max(0.018 * n, 0.6), 0.045 * n, 0.055 * n
    out = np.empty((len(angles), n, n, 3), np.uint8)
    for t, (a1, a2) in enumerate(angles):
        jx, jy = px + r1 * math.sin(a1), py + r1 * math.cos(a1)
        tx, ty = jx + r2 * math.sin(a2), jy + r2 * math.cos(a2)
        img = over(bg.copy(), segment(x, y, px, py, jx, jy, half), look.upper)
        img = over(img, segment(x, y, jx, jy, tx, ty, half), look.lower)
        img = over(img, disc(x, y, jx, jy, joint_r), look.upper)
        img = over(img, disc(x, y, tx, ty, tip_r), look.lower)
        out[t] = np.round(np.clip(img, 0, 1) * 255)
    return out


def make_dataset(look: Look, out_dir: Path, seed: int, clips: int, frames: int, fps: float = 30.0) -> np.ndarray:
    from anmc.data.io import write_truth, write_video

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 22])
    states = draw_states(clips, frames, fps, rng)
    for c in range(clips):
        write_video(out_dir / f"clip_{c:03d}.mp4", render_clip(look, states[c, :, :2], np.random.default_rng([seed, 22, c])), fps=fps)
    meta = {"model": "double_pendulum", "params": {"L": L_UPPER, "g": G, "mu": 0.0}, "states": STATES,
            "observed": ["theta1", "theta2"], "fps": fps, "size": look.source, "seed": seed, "clips": clips,
            "frames": frames, "renderer": {"name": "benchmarks/double_pendulum.py", "background": look.background}}  # fmt: skip
    write_truth(out_dir, states, STATES, meta)
    return states


# ------------------------------------------------------------------ train, evaluate, tabulate


def prior_for(out: Path, source: Path = PRIOR) -> Path:
    """`source` with g started 50% off (14.7 for 9.81)."""
    text, found = re.subn(r"^param g = [0-9.eE+-]+ ", f"param g = {1.5 * G:.4g} ", source.read_text(), count=1, flags=re.M)
    if not found:
        raise SystemExit(f"{source}: no `param g = <number> ` line to start 50% off")
    out.write_text(text)
    return out


CAMERA_PRIOR = ROOT / "priors" / "double_pendulum_camera.anm"


def camera_prior_for(out: Path, size: int) -> Path:
    """`priors/double_pendulum_camera.anm` with this generator's camera (the video's side `size`, the pivot at
    (0.5 S, 0.42 S), 0.2 S pixels a metre: what a user who measured the camera would write) and g started 50% off."""
    text = CAMERA_PRIOR.read_text()
    for name, value in (("S", f"{size}"), ("cx", f"{PIVOT[0]} * S"), ("cy", f"{PIVOT[1]} * S"), ("scale", f"{PX_PER_M} * S")):
        text, found = re.subn(rf"^const {name} = [^#\n]*?(\s*#)", rf"const {name} = {value}\1", text, count=1, flags=re.M)
        if not found:
            raise SystemExit(f"{CAMERA_PRIOR}: no `const {name} = ...` line to set the camera")
    out.write_text(text)
    return prior_for(out, out)


def met(row: dict) -> bool:
    return all(row[f"{n}_r"] >= 0.9 for n in STATES) and abs(row["g_err"]) <= 0.10


def run_one(look: Look, seed: int, args, workdir: Path) -> dict:
    from anmc.analysis.evaluate import evaluate
    from anmc.vae.config import TrainConfig
    from anmc.vae.run import load_run
    from anmc.vae.train import train

    data = workdir / f"{look.background}_s{seed}" / "data"
    make_dataset(look, data, seed, args.clips, args.frames)
    if args.camera:  # the camera declared, a sprite per link (docs/method.md, "Physical units: the sprite decoder")
        prior = camera_prior_for(data.parent / "double_pendulum_camera.anm", look.source)
        overrides = {"decoder": "sprite"} | args.overrides
    else:
        prior, overrides = prior_for(data.parent / "double_pendulum.anm"), args.overrides
    config = TrainConfig(seed=seed, epochs=args.epochs, time_limit=args.time_limit, **overrides)
    started = time.monotonic()
    result = train(prior, [str(data)], data.parent / "run", config, overwrite=True)  # a rerun in --workdir measures anew
    minutes = (time.monotonic() - started) / 60
    report = evaluate(load_run(data.parent / "run"))
    row = {"background": look.background, "seed": seed, "camera": bool(args.camera), "epochs": result.epochs, "minutes": minutes}
    for n in STATES:
        row[f"{n}_r"] = abs(report["states"][n]["pearson"])
        row[f"{n}_slope"] = report["states"][n]["slope"]
    row["g"] = report["params"]["g"]["learned"]
    row["g_err"] = row["g"] / G - 1
    row["diagnostics"] = [f["code"] for f in report["diagnostics"]]
    row["set"] = args.sets
    row["met"] = met(row)
    return row


def print_table(rows: list[dict]) -> None:
    head = f"{'background':<10} {'seed':>4} {'ep':>3} " + " ".join(f"{n + ' |r|':>10} {'slope':>6}" for n in STATES)
    head += f" {'g':>6} {'g err':>7} {'min':>5}  diagnostics"
    print(head)
    print("-" * len(head))
    for r in rows:
        cells = " ".join(f"{r[n + '_r']:>10.3f} {r[n + '_slope']:>+6.2f}" for n in STATES)
        print(f"{r['background']:<10} {r['seed']:>4} {r['epochs']:>3} {cells} {r['g']:>6.2f} {r['g_err']:>+7.1%} "
              f"{r['minutes']:>5.1f}  {','.join(r['diagnostics']) or '-'}")  # fmt: skip
    print(f"targets (|r| >= 0.9 for all four states, g within 10%) met in {sum(r['met'] for r in rows)} of {len(rows)} runs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backgrounds", default="black,grey", help="comma-separated: black, grey")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated; each seed is a new draw of the data and of the training")
    ap.add_argument("--epochs", type=int, default=30, help="training epochs (the default TrainConfig's)")
    ap.add_argument("--time-limit", type=float, default=20.0, help="minutes per training (stops after the epoch that crosses it)")
    ap.add_argument("--clips", type=int, default=20)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--workdir", type=Path, help="where data sets and runs go (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    ap.add_argument("--camera", action="store_true",
                    help="train priors/double_pendulum_camera.anm (each link's place in the frame declared, with this "
                         "generator's camera) with --decoder sprite, instead of priors/double_pendulum.anm")
    ap.add_argument("--quick", action="store_true", help="one background, one seed, tiny clips, one short epoch")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="change a TrainConfig field for every run, e.g. --set recon=gaussian (repeatable)")
    args = ap.parse_args()
    from anmc.errors import UserError
    from anmc.vae.config import parse_overrides
    from anmc.vae.threads import apply_thread_default

    try:
        args.overrides = parse_overrides(args.sets)
    except UserError as e:
        ap.error(str(e))
    names = [b for b in args.backgrounds.split(",") if b]
    if unknown := [b for b in names if b not in ("black", "grey")]:
        ap.error(f"unknown background(s) {', '.join(unknown)}; use black, grey")
    looks = [Look(background=b) for b in names]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if args.quick:
        looks, seeds, args.epochs, args.clips, args.frames = [Look(source=32)], [0], 1, 3, 24
        args.overrides = args.overrides | {"size": 16, "batch": 2, "seq_len": 4, "steps_per_epoch": 2}
    print("torch threads: %d (%s)" % apply_thread_default(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        rows = []
        for look in looks:
            for seed in seeds:
                rows.append(run_one(look, seed, args, workdir))
                print(json.dumps(rows[-1]), flush=True)
    print()
    if args.camera:
        print("every run with the camera declared: priors/double_pendulum_camera.anm, --decoder sprite")
    if args.sets:
        print("every run with --set " + " --set ".join(args.sets))
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
