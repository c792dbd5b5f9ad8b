"""The smoother's posterior solve: block cyclic reduction against the dense Cholesky it replaces.

    python benchmarks/tridiagonal.py [--quick] [--batch 8] [--cases 2x32 2x256 16x32] [--rounds 20]

A chain's posterior precision Λ is block-tridiagonal (T blocks of d × d on the diagonal, T − 1 above
it). What the smoother needs from N(Λ⁻¹η, Λ⁻¹) — the means, the T marginal covariances, the T − 1
cross covariances Cov(z_{t+1}, z_t) and log det Λ — is computed two ways on the same random, well
conditioned Λ and η (float64, B sequences):

- ours: `anmc.posterior.tridiagonal.block_tridiagonal_gaussian`, block cyclic reduction: ⌈log₂ T⌉
  levels of batched d × d work, O(T·d³) time and O(T·d²) memory;
- dense: Λ assembled as a (T·d)² matrix, `torch.linalg.cholesky`, `torch.cholesky_inverse`, and the
  blocks read off Σ (the reduction's own base case, `_dense`, used at every T; where T·d ≤ 64 the two
  sides are the same computation): O((T·d)³) time and O((T·d)²) memory (the smoother's path before issue 16).

"fwd" is the call with the inputs requiring grad, "f+b" adds the backward pass of a sum of all four
outputs. The two are called in alternation, one call each per round, for `--rounds` rounds after a
warm-up, one torch thread, this process's CPU time; the median per call is reported. Peak memory: the
torch profiler's CPU allocation events in one f+b call, replayed in order (an upper bound: frees of
blocks allocated before the call are not reported). `agree`: the largest relative difference of the
outputs between the two.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from anmc.posterior.tridiagonal import _dense, block_tridiagonal_gaussian

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kl import peak_bytes  # noqa: E402  (the profiler's allocation events, replayed)


def random_chain(b: int, n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Diagonal blocks (B, n, d, d), blocks above them (B, n − 1, d, d) and η (B, n, d, 1) of a symmetric
    positive definite block-tridiagonal Λ (diagonally dominant by a margin)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(b, n, d, d, generator=g, dtype=torch.float64)
    upper = torch.randn(b, n - 1, d, d, generator=g, dtype=torch.float64) / d
    diag = a @ a.mT / d + 4.0 * torch.eye(d, dtype=torch.float64)
    return diag, upper, torch.randn(b, n, d, 1, generator=g, dtype=torch.float64)


def dense_gaussian(diag: torch.Tensor, upper: torch.Tensor, eta: torch.Tensor):
    """The same four outputs from the dense (n·d)² precision: the reduction's own dense base
    (`anmc.posterior.tridiagonal._dense`, which takes the blocks above the diagonal negated), at any n."""
    return _dense(diag, -upper, eta)


def measure(b: int, n: int, d: int, rounds: int) -> dict:
    base = random_chain(b, n, d)
    runs = {"ours": block_tridiagonal_gaussian, "dense": dense_gaussian}

    def call(fn, backward: bool):
        inputs = [x.clone().requires_grad_() for x in base]
        out = fn(*inputs)
        if backward:
            sum(o.sum() for o in out).backward()
        return out

    outs = {name: [o.detach() for o in call(fn, False)] for name, fn in runs.items()}
    agree = max(float((a - w).abs().max() / w.abs().max()) for a, w in zip(outs["ours"], outs["dense"]))
    times = {(name, bw): [] for name in runs for bw in (False, True)}
    for r in range(rounds + 2):
        for bw in (False, True):
            for name in sorted(runs, reverse=bool(r % 2)):
                t0 = time.process_time()
                call(runs[name], bw)
                if r >= 2:
                    times[name, bw].append(time.process_time() - t0)
    med = {k: 1000 * statistics.median(v) for k, v in times.items()}
    peaks = {name: peak_bytes(lambda fn=fn: call(fn, True)) / 2**20 for name, fn in runs.items()}
    return {"med": med, "peak": peaks, "agree": agree}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--cases", nargs="+", default=["2x32", "2x256", "16x32"], help="dxT: states and sequence length (the dense side grows as (T·d)³)")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (torch.set_num_threads)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, a few rounds (a smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.batch, args.cases, args.rounds = 2, ["2x8", "2x17"], 2
    torch.set_num_threads(args.threads)
    print(f"posterior solve, B = {args.batch}, float64, {args.threads} thread(s), CPU ms per call (median of {args.rounds} alternated rounds)")
    print(f"{'d':>3} {'T':>5} {'ours fwd':>9} {'dense fwd':>10} {'ratio':>6} {'ours f+b':>9} {'dense f+b':>10} {'ratio':>6} {'ours MiB':>9} {'dense MiB':>10} {'agree':>8}")
    for case in args.cases:
        d, n = (int(v) for v in case.split("x"))
        m = measure(args.batch, n, d, args.rounds)
        f, fb = (m["med"]["ours", False], m["med"]["dense", False]), (m["med"]["ours", True], m["med"]["dense", True])
        print(f"{d:>3} {n:>5} {f[0]:>9.2f} {f[1]:>10.2f} {f[1] / f[0]:>5.1f}x {fb[0]:>9.2f} {fb[1]:>10.2f} {fb[1] / fb[0]:>5.1f}x "
              f"{m['peak']['ours']:>9.1f} {m['peak']['dense']:>10.1f} {m['agree']:>8.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
