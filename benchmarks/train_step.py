"""Cost of one training step with the ANM prior against the same VAE with a plain N(0, I) prior.

    python benchmarks/train_step.py [--size 32] [--batch 8] [--seq-len 32] [--repeats 30] [--quick]

Every model is built in the same run, on the same frames, with the same encoder and decoder networks;
they differ in the posterior and the KL term: the default (`--posterior smoother`, whose Kalman
smoother runs a Python loop over the sequence) and the factorized posterior with each reading
(`--kl elbo|mixture|pairwise|pooled`), against `standard`. One step =
forward, backward and an Adam update. Reports the median step time, the ratio to the N(0, I) step,
and peak memory: on CUDA torch.cuda.max_memory_allocated; on CPU the growth of the process's peak
resident set (resource.getrusage) while that model trains -- a coarse figure, measured cheapest first
because the peak only grows.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import torch

from anmc.codegen.compile import compile_prior
from anmc.vae.train import TrainConfig, build_vae, sequence_loss

PRIOR = Path(__file__).resolve().parent.parent / "priors" / "pendulum.anm"


def step_time(kl: str, posterior: str | None, frames: torch.Tensor, args, device) -> tuple[float, float]:
    config = TrainConfig(kl=kl, posterior=posterior, size=args.size, batch=args.batch, seq_len=args.seq_len, samples=args.samples)
    frames = frames[:, 2 - config.window :]  # seq_len latent frames whatever the window (1 or 2)
    torch.manual_seed(0)
    vae = build_vae(compile_prior(PRIOR), frames.shape[2:], config).to(device)
    if args.compile_prior and kl != "standard":
        vae.prior.compile_core()  # torch.compile of the generated rhs / rhs_and_tangents (opt-in)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for i in range(args.warmup + args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = sequence_loss(vae, frames, config)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    return statistics.median(times), peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile-prior", action="store_true", help="torch.compile the prior module (m.compile_core())")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, a few repeats (a smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.size, args.batch, args.seq_len, args.repeats, args.warmup = 16, 4, 4, 2, 1
    device = torch.device(args.device)
    frames = torch.randint(0, 256, (args.batch, args.seq_len + 1, 1, args.size, args.size), dtype=torch.uint8, device=device)
    # the standard prior first: ru_maxrss only grows, so the cheaper step is measured before the others
    readings = [("standard", None), ("elbo", "smoother"), ("elbo", "factorized"), ("pairwise", None), ("mixture", None), ("pooled", None)]
    results = {(kl, post): step_time(kl, post, frames, args, device) for kl, post in readings}
    base = results["standard", None][0]
    mem = "peak MiB (CUDA)" if device.type == "cuda" else "RSS growth MiB"
    print(f"train step, pendulum, {args.size}x{args.size}, batch {args.batch} x {args.seq_len} frames, {device}, torch {torch.__version__}")
    print(f"{'prior / --kl':<28} {'ms/step':>9} {'x N(0,I)':>9} {mem:>16}")
    for (kl, post), (t, peak) in results.items():
        name = "N(0, I) (standard)" if kl == "standard" else f"ANM ({kl}, {post or 'factorized'})"
        print(f"{name:<28} {t * 1e3:>9.1f} {t / base:>9.2f} {peak:>16.1f}")


if __name__ == "__main__":
    main()
