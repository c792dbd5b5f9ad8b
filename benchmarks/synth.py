"""Rendering speed of the synthetic physics videos: frames per second at 64x64, per system.

    python benchmarks/synth.py [--frames 4096] [--size 64] [--repeats 3]

For each of the four priors: simulate `frames` frames (not timed), then time `render_frames` (numpy
drawing + uint8 conversion, best of `repeats`), and time the whole `synthesize` call writing mp4
(simulation + drawing + H.264 encoding) for 8 clips of 64 frames.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import anmc
from anmc.codegen.rollout import simulate
from anmc.synthetic.render import geometry, render_frames, renderer_for
from anmc.synthetic.synth import synthesize

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
    print(f"{'system':<10} {'render frames/s':>16} {'synthesize mp4 frames/s':>24}")
    for name in ("pendulum", "spring", "falling", "pulsar"):
        prior = anmc.compile_prior(PRIORS / f"{name}.anm")
        m = prior.module()
        states = simulate(prior, 64, seed=0, runs=args.frames // 64).reshape(-1, m.d).numpy()
        kind = renderer_for(name, prior.state_names)
        g = geometry(kind, args.size, prior.state_names, m.initial_mean.tolist(), m.initial_std.tolist())
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            render_frames(kind, states, args.size, g, prior.state_names)
            best = min(best, time.perf_counter() - t)
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            syn = synthesize(prior, d, clips=8, frames=64, size=args.size, seed=0)
            total = time.perf_counter() - t
        n_syn = syn.states.shape[0] * syn.states.shape[1]
        print(f"{name:<10} {len(states) / best:>16,.0f} {n_syn / total:>24,.0f}")


if __name__ == "__main__":
    main()
