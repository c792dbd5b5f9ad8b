"""Rendering speed of the synthetic physics videos: frames per second at 64x64, per system.

    python benchmarks/synth.py [--frames 4096] [--size 64] [--repeats 3]

For each prior in priors/ of one body: simulate `frames` frames (not timed), then time `render_frames`
(numpy drawing + uint8 conversion, best of `repeats`; the declared renderer draws the observations
h(z), computed untimed), and time the whole `synthesize` call writing mp4 (simulation + drawing +
H.264 encoding) for 8 clips of 64 frames.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import anmc
from anmc.codegen.rollout import simulate
from anmc.synthetic.render import geometry, render_frames
from anmc.synthetic.synth import pick_renderer, synthesize

SYSTEMS = ("pendulum", "spring", "falling", "pulsar", "led", "looming", "torricelli", "incline")

PRIORS = Path(__file__).resolve().parent.parent / "priors"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=4096)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (a smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.frames, args.size, args.repeats = 128, 16, 1
    print(f"{'system':<10} {'renderer':<9} {'render frames/s':>16} {'synthesize mp4 frames/s':>24}")
    for name in SYSTEMS:
        prior = anmc.compile_prior(PRIORS / f"{name}.anm")
        m = prior.module().double()
        states = simulate(prior, 64, seed=0, runs=args.frames // 64).reshape(-1, m.d)
        kind = pick_renderer(m, name)
        g = geometry(kind, args.size, prior.state_names, m.initial_mean.tolist(), m.initial_std.tolist(),
                     observations=m.observations)
        with torch.no_grad():
            drawn = (m.observe(states) if kind == "declared" else states).numpy()
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            render_frames(kind, drawn, args.size, g, prior.state_names)
            best = min(best, time.perf_counter() - t)
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            syn = synthesize(prior, d, clips=8, frames=64, size=args.size, seed=0)
            total = time.perf_counter() - t
        n_syn = syn.states.shape[0] * syn.states.shape[1]
        print(f"{name:<10} {kind:<9} {len(drawn) / best:>16,.0f} {n_syn / total:>24,.0f}")


if __name__ == "__main__":
    main()
