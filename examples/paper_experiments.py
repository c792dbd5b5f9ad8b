"""The paper's experiments on anmc's own synthetic videos: train, evaluate, and tabulate.

    python examples/paper_experiments.py --systems pendulum spring falling pulsar --seeds 0 1 2 -o runs/paper
    python examples/paper_experiments.py --systems pendulum --readings elbo mixture pairwise pooled standard --seeds 0 1 2
    python examples/paper_experiments.py --tiny            # a 1-minute smoke run (what tests/test_examples.py runs)

For each system and seed: synthesize a 64x64 video from its prior (24 clips x 128 frames, data seed
1000 + seed: every seed draws new data as well as a new training), then for each KL reading train with anmc's defaults (override with --minutes / --epochs), evaluate
against truth.csv and print one row per run plus a mean +- std row per (system, reading). With
--start-off 0.5 every learnable param starts 50% above its true value (the paper's parameter
recovery). Results go to OUT/results.jsonl; the table printed is the one in docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import anmc
from anmc.analysis.evaluate import evaluate
from anmc.vae.run import load_run
from anmc.symbolic.model import apply_edits
from anmc.codegen.compile import compile_model
from anmc.errors import UserError
from anmc.vae.config import TrainConfig, parse_overrides
from anmc.vae.allocator import tune_allocator
from anmc.vae.threads import apply_thread_default
from anmc.vae.train import train
from anmc.synthetic.synth import synthesize

PRIORS = Path(__file__).resolve().parent.parent / "priors"


def prior_started_off(path: Path, factor: float):
    """The prior with every learnable param's starting value multiplied by `factor`."""
    model = anmc.load_model(path)
    edits = [f"{p.name} = {p.value * factor:.6g}" for p in model.params.values() if p.learn]
    return compile_model(apply_edits(model, edits)) if edits else compile_model(model)


def _num(value, spec: str) -> str:
    """A number for the table; '-' where the report has none (the slope of a circular state)."""
    return "-" if value is None else format(value, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", nargs="+", default=["pendulum"])
    ap.add_argument("--readings", nargs="+", default=["elbo"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--minutes", type=float, default=None, help="time limit per run (default: the epochs of TrainConfig)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--start-off", type=float, default=0.5, help="learnable params start this fraction above the truth")
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--frames", type=int, default=128)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a TrainConfig field, e.g. --set seq_len=16 --set batch=16 (repeatable)")
    ap.add_argument("--prior", type=Path, help="train this .anm instead of priors/SYSTEM.anm (a variant of it, e.g. its noise learnable); the videos are still drawn from priors/SYSTEM.anm")
    ap.add_argument("--camera", action="store_true",
                    help="train priors/SYSTEM_camera.anm (the camera declared) with --decoder sprite on the videos drawn from SYSTEM.anm")
    ap.add_argument("--tiny", action="store_true", help="16x16 frames, a few steps: checks the script runs")
    ap.add_argument("-o", "--out", default="runs/paper")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = {}
    if args.tiny:
        args.clips, args.frames = 4, 24
        overrides = dict(size=16, batch=4, seq_len=4, steps_per_epoch=3, epochs=1, warmup=2, learn_params_after=0)
    try:
        overrides |= parse_overrides(args.sets)
    except UserError as e:
        ap.error(str(e))
    if args.epochs:
        overrides["epochs"] = args.epochs
    if args.minutes:
        overrides["time_limit"] = args.minutes
    _, allocator = tune_allocator()  # as `anmc train` does (docs/results.md §4, The C allocator)
    threads, why = apply_thread_default()  # as `anmc train` does: ANMC_THREADS, else the cores the load leaves free
    print(f"torch threads: {threads} ({why}); {allocator}")
    rows = []
    print(f"{'system':<9} {'--kl':<9} {'seed':>4} {'min':>5}  state: |r| slope knn_r2   params learned (true)")
    for system in args.systems:
        truth_prior = anmc.compile_prior(PRIORS / f"{system}.anm")
        trained = args.prior or PRIORS / (f"{system}_camera.anm" if args.camera else f"{system}.anm")
        if not trained.exists():
            ap.error(f"--prior: there is no {trained}" if args.prior else f"--camera: there is no {trained.relative_to(PRIORS.parent)} declaring {system}'s camera")
        train_prior = prior_started_off(trained, 1 + args.start_off)
        for reading in args.readings:
            for seed in args.seeds:
                # every seed draws its own data (seed 1000 + seed) as well as its own training
                data = out / "data" / f"{system}-s{seed}"
                if not (data / "truth.csv").exists():
                    synthesize(truth_prior, data, clips=args.clips, frames=args.frames, size=16 if args.tiny else 64, seed=1000 + seed, fmt="npz")
                run_dir = out / f"{system}{'-camera' if args.camera else ''}-{reading}-s{seed}"
                config = TrainConfig(kl=reading, seed=seed, **({"decoder": "sprite"} if args.camera else {}) | overrides)
                started = time.monotonic()
                train(train_prior, [str(data)], run_dir, config, overwrite=True)  # a rerun measures anew
                minutes = (time.monotonic() - started) / 60
                report = evaluate(load_run(run_dir))
                row = {"system": system, "kl": reading, "seed": seed, "minutes": round(minutes, 2), **report}
                rows.append(row)
                with open(out / "results.jsonl", "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                states = "  ".join(
                    f"{n}: {abs(s['pearson']):.3f} {_num(s['slope'], '+.2f')} {_num(s['knn_r2'], '.2f')}"
                    for n, s in report["states"].items()
                )
                params = "  ".join(
                    f"{n} {p['learned']:.3g} ({p['true']:.3g})" for n, p in report["params"].items() if p.get("learnable")
                )
                print(f"{system:<9} {reading:<9} {seed:>4} {minutes:>5.1f}  {states}   {params}", flush=True)
            group = [r for r in rows if r["system"] == system and r["kl"] == reading]
            if len(group) > 1:
                summary = "  ".join(
                    f"{n}: {statistics.mean(abs(r['states'][n]['pearson']) for r in group):.3f}"
                    f"+-{statistics.stdev(abs(r['states'][n]['pearson']) for r in group):.3f}"
                    for n in group[0]["states"]
                )
                print(f"{system:<9} {reading:<9} mean  |r| {summary}")


if __name__ == "__main__":
    main()
