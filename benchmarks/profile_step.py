"""Where a training step's time goes: torch.profiler over a few default training steps, the top
operations by time, and how many operations and host synchronizations a step makes.

    python benchmarks/profile_step.py [--device cuda] [--size 32] [--batch 8] [--readings smoother,standard] [--quick]

On a GPU a step of many small operations is bound by launching them, not by arithmetic (docs/scaling.md,
"On a GPU"): the operation count and the synchronizations (`.item()` and friends: each one makes the
host wait for the GPU) say how far from that a step is. On the CPU the same counts hold (the code is
the same), so a change that lowers them can be checked here before a GPU is lent.
"""

from __future__ import annotations

import argparse
import sys
import types
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_step  # noqa: E402  (the same models and step as benchmarks/train_step.py)


def profile_step(step, device: torch.device, steps: int):
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return prof


def dispatch_counts(step) -> tuple[int, int]:
    """(calls, kernels) of one step at torch's dispatcher: every aten call once (the profiler also counts
    the calls nested inside composite ones), and of them the ones that are not views (on a GPU, roughly
    the kernels the step launches: a view, a reshape or a slice launches none)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    # launch no kernel though their schemas are not views: two reshapes, and the host read of a scalar
    no_kernel = {"_unsafe_view", "_reshape_alias", "_local_scalar_dense"}
    seen = Counter()

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen["calls"] += 1
            seen["kernels"] += not (func.is_view or func.overloadpacket.__name__ in no_kernel)
            return func(*args, **(kwargs or {}))

    with Count():
        step()
    return seen["calls"], seen["kernels"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rows", type=int, default=20)
    ap.add_argument("--readings", default="smoother,standard", help="models of benchmarks/train_step.py to profile")
    ap.add_argument("--chain", type=int, default=0, help="profile a generated chain of N coupled oscillators instead (d = 2N)")
    ap.add_argument("--pendulums", action="store_true", help="with --chain: coupled pendulums (sin restoring forces)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one step (a smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.size, args.batch, args.seq_len, args.steps, args.rows = 16, 2, 4, 1, 5
    torch.set_num_threads(1)
    device = torch.device(args.device)
    frames = torch.randint(0, 256, (args.batch, args.seq_len + 1, 1, args.size, args.size), dtype=torch.uint8, device=device)
    opts = types.SimpleNamespace(size=args.size, batch=args.batch, seq_len=args.seq_len, samples=8, compile_prior=False, rows="auto")
    prior = train_step.chain_prior(args.chain, args.pendulums) if args.chain else train_step.PRIOR
    sort = "cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for name in args.readings.split(","):
        kl, posterior, window = train_step.READINGS[name]
        step = train_step.make_step(kl, posterior, window, frames, opts, device, prior)
        for _ in range(2):
            step()
        prof = profile_step(step, device, args.steps)
        events = prof.key_averages()
        count = Counter()
        for e in events:
            count["aten"] += e.count if e.key.startswith("aten::") else 0
            count["sync"] += e.count if e.key == "aten::_local_scalar_dense" else 0
        print(f"== {name}: {args.size}x{args.size}, batch {args.batch} x {args.seq_len} frames, {device}, torch {torch.__version__}")
        print(f"aten operations per step (nested included): {count['aten'] / args.steps:.0f}; "
              f"host reads of a tensor (.item(), float(), bool()) per step: {count['sync'] / args.steps:.0f}")
        calls, kernels = dispatch_counts(step)
        print(f"at the dispatcher, one step: {calls} calls, {kernels} of them not views (kernels on a GPU)")
        print(events.table(sort_by=sort, row_limit=args.rows, max_name_column_width=50))


if __name__ == "__main__":
    main()
