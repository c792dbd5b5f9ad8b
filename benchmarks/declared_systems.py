"""The declared systems on videos anmc did not draw: an LED fading, a tank draining, a block on an incline.

    python benchmarks/declared_systems.py [--systems led,torricelli,incline] [--seeds 0,1,2] [--epochs 8]
                                          [--decoder sprite] [--recon bernoulli] [--threads 1] [--workdir DIR]
                                          [--json OUT] [--quick]

The videos come from this file's own generator, independent of `anmc.synthetic` (no shared drawing code,
no shared simulation: the physics in closed form, the shapes supersampled 4x4): 96 x 96 RGB mp4 at 30 fps,
a coloured object over a background that is not black, static scenery, a static distractor (a grey
label in a corner) and pixel noise of std 0.02:

- led: a warm-white LED (RGB (1, 0.9, 0.7) x b) of radius 0.1 S in a dark housing, with a soft glow of
  0.25 b around it, over a dark blue-grey gradient; b(t) = b0 exp(-t / tau), tau = 1.5 s, b0 ~ U(0.6, 1).
- torricelli: a glass tank (grey walls and base) on a light wall, blue water up to h(t) with
  sqrt(h) = sqrt(h0) - k t / 2, k = 0.2 m^0.5/s, h0 ~ U(0.6, 0.95); the tank's 1 m spans 0.7 S rows
  above its inside bottom at 0.9 S.
- incline: a brown slope at 20 degrees under a sky gradient, a green block of side 8 px sliding down it,
  x(t) = x0 + v0 t + a t^2 / 2 with a = g (sin 20 - mu cos 20), mu = 0.3, x0 ~ U(0, 4) m,
  v0 ~ U(0.2, 2) m/s; 6 px per metre along the slope; 48 clips of 64 frames (the block leaves the
  frame after ~2 s), the others 24 of 128.

The prior is the user's: priors/<system>.anm with its camera written for this generator's camera, as a
user would read it off one frame (`CAMERAS`: the LED's grey level at full brightness, where the tank sits
in the frame, the slope's origin and pixels per metre), and its learnable param started 50% above the
truth. anmc trains with its defaults (`TrainConfig`: only `seed`, `epochs`, `decoder` set) and
`anmc.analysis.evaluate` reads the latents against truth.csv. Every seed draws new data and a new
training. Reported: |r| and slope per state, the learned param and its error, minutes, the diagnostics
`anmc eval` raised (a run that learned nothing says so there). `--quick`: one system, tiny clips, a few
steps (a smoke test; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FPS, SIDE, NOISE, SS = 30.0, 96, 0.02, 4  # frame rate, pixels, pixel noise std, supersampling per axis
G, ALPHA = 9.81, math.radians(20.0)
TRUTH = {"led": {"tau": 1.5}, "torricelli": {"k": 0.2}, "incline": {"mu": 0.3}}
STATES = {"led": ["b"], "torricelli": ["h"], "incline": ["x", "v"]}
LED_RGB = np.array([1.0, 0.9, 0.7])
LUMA = np.array([0.299, 0.587, 0.114])
TANK = {"bottom": 0.9, "span": 0.7, "left": 0.3, "right": 0.7, "wall": 0.03}  # fractions of the side
SLOPE = {"scale": 6.0, "x_px": 8.0, "y_px": 24.0, "half": 4.0}  # px per metre, the block's centre at x = 0, half-side
# clips and frames per data set (the block leaves the frame after ~2 s)
DATA = {"led": (24, 128), "torricelli": (24, 128), "incline": (48, 64)}

# what a user writes into the prior for this camera: (the line as in priors/<system>.anm, its replacement)
CAMERAS = {
    "led": [("observe brightness = b ", f"const gain = {float(LED_RGB @ LUMA):.3f}                    # the LED's grey level at full brightness, read off a frame\n"
                                        "observe brightness = gain * b ")],
    "torricelli": [("observe level = h / H ", f"const base = {1 - TANK['bottom']:g}                        # the tank's inside bottom, a fraction of the frame's height up\n"
                                              f"const span = {TANK['span']:g}                        # the tank's height H, a fraction of the frame's height\n"
                                              "observe level = base + span * h / H ")],
    "incline": [("const scale = 4                         # pixels per metre along the slope, in the 64x64 video",
                 f"const scale = {SLOPE['scale']:g}                         # pixels per metre along the slope, in the {SIDE}x{SIDE} video"),
                ("const x_px = 6 ", f"const x_px = {SLOPE['x_px']:g} "), ("const y_px = 16 ", f"const y_px = {SLOPE['y_px']:g} ")],
}  # fmt: skip
START_PARAM = {"led": "param tau = 1.5 ", "torricelli": "param k = 0.2 ", "incline": "param mu = 0.3 "}


# ------------------------------------------------------------------ the physics, in closed form


def draw_states(system: str, clips: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """(clips, frames, d) float64 true states at t = 0, 1/FPS, ..."""
    t = np.arange(frames) / FPS
    if system == "led":
        b0 = rng.uniform(0.6, 1.0, (clips, 1))
        return (b0 * np.exp(-t / TRUTH["led"]["tau"]))[..., None]
    if system == "torricelli":
        root = np.sqrt(rng.uniform(0.6, 0.95, (clips, 1))) - TRUTH["torricelli"]["k"] * t / 2
        return np.maximum(root, 0.0)[..., None] ** 2
    a = G * (math.sin(ALPHA) - TRUTH["incline"]["mu"] * math.cos(ALPHA))
    x0, v0 = rng.uniform(0.0, 4.0, (clips, 1)), rng.uniform(0.2, 2.0, (clips, 1))
    return np.stack([x0 + v0 * t + 0.5 * a * t**2, v0 + a * t], -1)


# ------------------------------------------------------------------ the drawing, done here


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Supersampled pixel coordinates (x, y), each (n SS, n SS), in pixels of the n x n frame."""
    c = (np.arange(n * SS) + 0.5) / SS
    return np.meshgrid(c, c)


def _down(img: np.ndarray) -> np.ndarray:
    n = img.shape[0] // SS
    return img.reshape(n, SS, n, SS, -1).mean(axis=(1, 3))


def _over(img, mask, rgb):
    m = mask.astype(np.float64)[..., None]
    return img * (1 - m) + m * np.asarray(rgb, np.float64)


def _gradient(x, y, n, top, bottom):
    w = (y / n)[..., None]
    return (1 - w) * np.asarray(top) + w * np.asarray(bottom)


def _distractor(img, x, y, n):
    """A static grey label in the top-left corner."""
    return _over(img, (x > 0.04 * n) & (x < 0.2 * n) & (y > 0.04 * n) & (y < 0.12 * n), (0.55, 0.55, 0.5))


def render_clip(system: str, states: np.ndarray, rng: np.random.Generator, n: int = SIDE) -> np.ndarray:
    """uint8 (T, n, n, 3) frames of one clip's true states (T, d)."""
    x, y = _grid(n)
    out = np.empty((len(states), n, n, 3), np.uint8)
    if system == "led":
        cx, cy, r = 0.5 * n, 0.45 * n, 0.1 * n
        scene = _gradient(x, y, n, (0.10, 0.12, 0.18), (0.16, 0.16, 0.20))
        scene = _over(scene, (np.abs(x - cx) < 0.16 * n) & (y > cy) & (y < cy + 0.35 * n), (0.2, 0.2, 0.22))  # the housing
        scene = _distractor(scene, x, y, n)
        body = np.hypot(x - cx, y - cy) < r
        glow = np.exp(-0.5 * (np.hypot(x - cx, y - cy) / (0.12 * n)) ** 2)[..., None]
        for t, (b,) in enumerate(states):
            img = np.clip(scene + 0.25 * b * glow * LED_RGB, 0, 1)
            out[t] = _finish(_over(img, body, b * LED_RGB), rng)
        return out
    if system == "torricelli":
        bottom, span = TANK["bottom"] * n, TANK["span"] * n
        left, right, wall = TANK["left"] * n, TANK["right"] * n, TANK["wall"] * n
        scene = _gradient(x, y, n, (0.85, 0.83, 0.78), (0.75, 0.73, 0.70))  # a light wall
        scene = _distractor(scene, x, y, n)
        inside = (x > left) & (x < right)
        glass = ((np.abs(x - left) < wall) | (np.abs(x - right) < wall)) & (y > bottom - span - 0.05 * n) & (y < bottom + wall)
        base = (x > left - wall) & (x < right + wall) & (y > bottom) & (y < bottom + 2 * wall)
        for t, (h,) in enumerate(states):
            img = _over(scene, inside & (y > bottom - span * h) & (y < bottom), (0.15, 0.35, 0.80))
            img = _over(_over(img, glass, (0.45, 0.47, 0.5)), base, (0.35, 0.35, 0.38))
            out[t] = _finish(img, rng)
        return out
    u = np.array([math.cos(ALPHA), math.sin(ALPHA)])  # down the slope (image y points down)
    nrm = np.array([-math.sin(ALPHA), math.cos(ALPHA)])  # into the slope
    s, half = SLOPE["scale"], SLOPE["half"]
    scene = _gradient(x, y, n, (0.45, 0.65, 0.90), (0.80, 0.88, 0.95))  # sky
    surface = np.array([SLOPE["x_px"], SLOPE["y_px"]]) + half * nrm  # a point of the slope's surface
    scene = _over(scene, (x - surface[0]) * nrm[0] + (y - surface[1]) * nrm[1] > 0, (0.45, 0.32, 0.2))
    scene = _distractor(scene, x, y, n)
    for t, (pos, _) in enumerate(states):
        c = np.array([SLOPE["x_px"], SLOPE["y_px"]]) + s * pos * u
        du, dn = (x - c[0]) * u[0] + (y - c[1]) * u[1], (x - c[0]) * nrm[0] + (y - c[1]) * nrm[1]
        out[t] = _finish(_over(scene, (np.abs(du) < half) & (np.abs(dn) < half), (0.2, 0.6, 0.25)), rng)
    return out


def _finish(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    frame = _down(img) + NOISE * rng.standard_normal((img.shape[0] // SS, img.shape[1] // SS, 3))
    return np.round(np.clip(frame, 0, 1) * 255).astype(np.uint8)


def make_dataset(system: str, out_dir: Path, seed: int, clips: int, frames: int, n: int = SIDE) -> np.ndarray:
    """Draw `clips` mp4 clips into out_dir plus truth.csv / truth.json; returns the states."""
    from anmc.data.io import write_truth, write_video

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 15])
    states = draw_states(system, clips, frames, rng)
    for c in range(clips):
        write_video(out_dir / f"clip_{c:03d}.mp4", render_clip(system, states[c], np.random.default_rng([seed, 15, c]), n), fps=FPS)
    meta = {"model": system, "params": TRUTH[system], "states": STATES[system], "fps": FPS, "size": n, "seed": seed,
            "clips": clips, "frames": frames, "renderer": {"name": "benchmarks/declared_systems.py"}}  # fmt: skip
    write_truth(out_dir, states, STATES[system], meta)
    return states


# ------------------------------------------------------------------ train, evaluate, tabulate


def prior_for(system: str, out: Path, start_off: float = 0.5) -> Path:
    """priors/<system>.anm with this generator's camera and the learnable param started `start_off` above the truth."""
    text = (ROOT / "priors" / f"{system}.anm").read_text()
    for old, new in CAMERAS[system]:
        if old not in text:
            raise SystemExit(f"priors/{system}.anm no longer has {old.strip()!r}: update CAMERAS in {__file__}")
        text = text.replace(old, new, 1)
    (name, value), = TRUTH[system].items()
    text = text.replace(START_PARAM[system], f"param {name} = {value * (1 + start_off):g} ", 1)
    out.write_text(text)
    return out


def run_one(system: str, seed: int, args, workdir: Path) -> dict:
    from anmc.analysis.evaluate import evaluate
    from anmc.vae.config import TrainConfig
    from anmc.vae.run import load_run
    from anmc.vae.train import train

    data = workdir / f"{system}_s{seed}" / "data"
    clips, frames = (args.clips, args.frames) if args.quick else DATA[system]
    make_dataset(system, data, seed, clips, frames, n=args.side)
    prior = prior_for(system, data.parent / f"{system}.anm")
    config = TrainConfig(**{**dict(seed=seed, epochs=args.epochs, decoder=args.decoder, recon=args.recon, **args.tiny), **args.overrides})
    started = time.monotonic()
    result = train(prior, [str(data)], data.parent / "run", config, overwrite=True)  # a rerun in --workdir measures anew
    minutes = (time.monotonic() - started) / 60
    report = evaluate(load_run(data.parent / "run"))
    (name, true), = TRUTH[system].items()
    learned = report["params"][name]["learned"]
    return {
        "system": system, "seed": seed, "epochs": result.epochs, "decoder": args.decoder, "recon": args.recon,
        "states": {k: {"r": abs(v["pearson"]), "slope": v["slope"]} for k, v in report["states"].items()},
        "param": name, "learned": learned, "true": true, "error": learned / true - 1, "minutes": minutes,
        "diagnostics": [f["code"] for f in report["diagnostics"]],
    }  # fmt: skip


HEAD = f"{'system':<11} {'seed':>4} {'ep':>3}  {'states: |r| slope':<34} {'param':>18} {'err':>7} {'min':>5}  diagnostics"


def row_line(r: dict) -> str:
    states = "  ".join(f"{k} {v['r']:.3f} {v['slope']:+.2f}" for k, v in r["states"].items())
    return (f"{r['system']:<11} {r['seed']:>4} {r['epochs']:>3}  {states:<34} {r['param']:>5} {r['learned']:.3f} ({r['true']:g})"
            f" {r['error']:>+7.1%} {r['minutes']:>5.1f}  {','.join(r['diagnostics']) or '-'}")  # fmt: skip


def print_table(rows: list[dict]) -> None:
    print(HEAD)
    print("-" * len(HEAD))
    for r in rows:
        print(row_line(r))
    met = [r for r in rows if all(v["r"] >= 0.95 for v in r["states"].values()) and abs(r["error"]) <= 0.05]
    print(f"targets (|r| >= 0.95 for every state, the param within 5%) met in {len(met)} of {len(rows)} runs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", default="led,torricelli,incline")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated; each seed is a new draw of the data and of the training")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--decoder", default="sprite", help="sprite (the camera declared) or deconv")
    ap.add_argument("--recon", default="bernoulli", help="the pixel likelihood (anmc's default: bernoulli)")
    ap.add_argument("--workdir", type=Path, help="where data sets and runs go (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (pinned; minutes depend on it)")
    ap.add_argument("--quick", action="store_true", help="smoke test: one system, tiny clips, a few steps")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="any other TrainConfig field, e.g. --set size=64 (the same for every system and seed)")
    args = ap.parse_args()
    from anmc.errors import UserError
    from anmc.vae.config import parse_overrides

    try:
        args.overrides = parse_overrides(args.sets)
    except UserError as e:
        ap.error(str(e))
    import torch

    torch.set_num_threads(args.threads)
    args.side, args.tiny, args.clips, args.frames = SIDE, {}, None, None
    systems, seeds = args.systems.split(","), [int(s) for s in args.seeds.split(",")]
    unknown = [s for s in systems if s not in TRUTH]
    if unknown:
        ap.error(f"unknown system(s) {', '.join(unknown)}; use {', '.join(TRUTH)}")
    if args.quick:
        systems, seeds, args.epochs, args.side = ["led"], [0], 1, 32
        args.clips, args.frames = 4, 12
        args.tiny = dict(size=16, batch=2, seq_len=4, steps_per_epoch=3, warmup=2, learn_params_after=0)
    tmp = None if args.workdir else tempfile.TemporaryDirectory()
    workdir = args.workdir or Path(tmp.name)
    rows = []
    print(HEAD, flush=True)
    for system in systems:
        for seed in seeds:
            rows.append(run_one(system, seed, args, workdir))
            print(row_line(rows[-1]), flush=True)
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print()
    print_table(rows)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
