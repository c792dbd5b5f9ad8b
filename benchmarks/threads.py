"""Wall-clock time of one default training step against torch's thread count (`torch.set_num_threads`).

    python benchmarks/threads.py [--threads 1,2,default] [--repeats 20] [--quick]

One VAE with the default TrainConfig (32x32 frames, batch 8, 32-frame sequences, the smoother
posterior) on random frames; one step = forward, backward, Adam update. The thread counts take turns,
one step each per round, for `--repeats` rounds after two warm-up rounds, so a change of load falls on
all alike; reported: the median wall-clock step and the ratio to one thread's median. The machine's
load average (os.getloadavg) is printed before and after: on a shared machine more threads than the
cores left free can be slower, not faster.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from anmc.codegen.compile import compile_prior
from anmc.vae.config import TrainConfig
from anmc.vae.nets import build_vae, on_device
from train_step import adam_step  # benchmarks/ is the script's directory, first on sys.path

PRIOR = Path(__file__).resolve().parent.parent / "priors" / "pendulum.anm"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2,default", help="comma-separated counts; `default` is torch's own choice")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="16x16 frames, short sequences, 2 rounds (a smoke test)")
    args = ap.parse_args()
    default = torch.get_num_threads()
    counts = [default if t == "default" else int(t) for t in args.threads.split(",")]
    labels = [f"default ({default})" if t == "default" else t for t in args.threads.split(",")]
    config = TrainConfig()
    if args.quick:
        config, args.repeats = TrainConfig(size=16, batch=2, seq_len=4), 2
    torch.manual_seed(0)
    frames = (torch.rand(config.batch, config.seq_len, 1, config.size, config.size) * 255).to(torch.uint8)
    vae = on_device(build_vae(compile_prior(PRIOR), frames.shape[2:], config), "cpu")  # as training places it
    step = adam_step(vae, frames, config)

    load_before = os.getloadavg()
    times = {label: [] for label in labels}
    for r in range(args.repeats + 2):
        for label, n in zip(labels, counts):
            torch.set_num_threads(n)
            start = time.perf_counter()
            step()
            if r >= 2:
                times[label].append(time.perf_counter() - start)
    load_after = os.getloadavg()
    print(f"cores {os.cpu_count()}, load average before {load_before[0]:.2f} after {load_after[0]:.2f} (1 min)")
    one = statistics.median(times[labels[0]])
    print(f"{'threads':<14} {'median step (ms)':>17} {'vs ' + labels[0]:>10}")
    for label in labels:
        med = statistics.median(times[label])
        print(f"{label:<14} {1000 * med:>17.1f} {med / one:>10.2f}")


if __name__ == "__main__":
    main()
