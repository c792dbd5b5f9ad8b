"""Counterfactual videos against the intervened physics: the table of docs/interventions.md.

    python benchmarks/interventions.py RUN_DIR [RUN_DIR ...] [--save docs/images] [--markdown] [--json rows.json]
    python benchmarks/interventions.py --quick          # smoke test, < 60 s on 1 CPU thread

For each run trained on `anmc synth` data (pendulum, spring, falling; led, torricelli, incline, drawn by
the declared renderer; the system is read from the truth.json beside its training videos), `anmc.analysis.physics_checks.check_interventions` decodes the
factual and counterfactual rollouts of the paper's interventions, tracks the object in the decoded
frames (intensity centroid and trained encoder) and compares with a simulation of the intervened
.anm with the true parameters from the same encoded start. `--save DIR` also writes each
counterfactual as DIR/intervene_<system>_<name>.gif (+ _latents.csv/.png).

Before any run, the checker is validated on ground truth: clean renders of the true intervened
trajectories (no model) must pass every check; the script exits 1 if they do not.

`--quick`: the ground-truth validation at 32x32, then a tiny pendulum run (16x16, 12 training steps)
through the whole checker; the run's numbers are meaningless (the model is untrained), only that
every stage runs is checked.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from anmc.analysis.physics_checks import CHECKS, check_interventions, format_table, self_check

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = tuple(CHECKS)  # every system the checker knows


def ground_truth(size: int) -> bool:
    rows = [r for s in SYSTEMS for r in self_check(s, size=size, priors_dir=ROOT / "priors")]
    print(f"checker on clean {size}x{size} renders of the true intervened physics (encoder column: the true state):")
    print(format_table(rows))
    ok = all(r.passed and r.passed_encoder for r in rows)
    print("ground truth: " + ("every check passes" if ok else "FAILED: the checker itself is wrong") + "\n")
    return ok


def tiny_run(root: Path) -> Path:
    from anmc.vae.config import TrainConfig
    from anmc.vae.train import train
    from anmc.synthetic.synth import synthesize

    prior = ROOT / "priors" / "pendulum.anm"
    synthesize(prior, out_dir=root / "data", clips=4, frames=24, size=16, seed=3, fmt="npz")
    config = TrainConfig(size=16, batch=4, seq_len=4, steps_per_epoch=6, epochs=2, learn_params_after=1, val_fraction=0.25, device="cpu")
    train(prior, [str(root / "data")], root / "run", config, overwrite=True)  # a rerun measures anew
    return root / "run"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", help="run directories trained on `anmc synth` data")
    ap.add_argument("--quick", action="store_true", help="smoke test: ground truth at 32x32 + a tiny pendulum run")
    ap.add_argument("--system", choices=SYSTEMS, help="default: from each run's truth.json")
    ap.add_argument("--save", type=Path, help="write the counterfactual videos here")
    ap.add_argument("--size", type=int, default=64, help="frame size of the ground-truth validation")
    ap.add_argument("--markdown", action="store_true", help="print the run table as Markdown")
    ap.add_argument("--json", type=Path, help="write the run rows as JSON")
    args = ap.parse_args()
    if not args.runs and not args.quick:
        ap.error("give run directories, or --quick")
    torch.set_num_threads(1)
    start = time.perf_counter()
    if not ground_truth(32 if args.quick else args.size):
        return 1
    runs = list(args.runs)
    tmp = None
    if args.quick:
        tmp = tempfile.TemporaryDirectory()
        runs.append(str(tiny_run(Path(tmp.name))))
    rows = []
    for run in runs:
        rows += check_interventions(run, system=args.system, save_dir=args.save)
    if rows:
        print("trained runs" + (" (the last one: an untrained tiny smoke-test run)" if args.quick else "") + ":")
        print(format_table(rows, markdown=args.markdown))
        print(f"{sum(r.passed for r in rows)} of {len(rows)} quantities within tolerance (centroid measurement)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([r.as_dict() for r in rows], indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()
    print(f"{time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
