"""Cost of one training step with the ANM prior against the same VAE with a plain N(0, I) prior.

    python benchmarks/train_step.py [--size 32] [--batch 8] [--seq-len 32] [--repeats 30] [--clock cpu|wall] [--quick]
    python benchmarks/train_step.py --chain 8 --readings smoother     # d = 16: a chain of 8 coupled oscillators
    python benchmarks/train_step.py --chain 8 --pendulums             # the same chain of pendulums (f not affine)
    python benchmarks/train_step.py --device cuda --size 64 --batch 32   # on a GPU (wall-clock)
    python benchmarks/train_step.py --malloc default                  # glibc's thresholds left as found (anmc.vae.allocator)

Every model is built in the same run, on the same frames, with the same encoder and decoder networks;
they differ in the posterior and the KL term: the default (`--posterior smoother`: a few batched
linearizations and Cholesky solves per step) and the factorized posterior with each reading
(`--kl elbo|mixture|pairwise|pooled`), against `standard` with the same encoder window. One step =
forward, backward and an Adam update. `--prior` times another .anm, `--chain N` a generated chain of N
coupled oscillators (d = 2N; `chain_prior`; linear, so the smoother needs no search for its
linearization points), `--pendulums` the chain with sin restoring forces (nonlinear, the general
path), `--readings` a subset of the models.

Time: the models take turns, one step each per round, for `--repeats` rounds after `--warmup`, so a
change of load on a shared machine falls on all of them alike; reported are the median step time and
the median over rounds of the ratio to the N(0, I) step of the same round. The clock is this process's
CPU time by default (one torch thread; steadier than wall-clock beside other jobs), `--clock wall` on
request and always on CUDA; one torch thread on the CPU (`--threads`). Frames per second are training
frames (batch x latent frames) per second of that clock. Memory, measured before the timing, each model
alone: on CUDA torch.cuda.max_memory_allocated; on CPU the growth of the process's peak resident set
(resource.getrusage) over its warm-up steps -- a coarse figure, measured cheapest first because the
peak only grows.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import torch

from anmc.codegen.compile import compile_prior
from anmc.vae.allocator import tune_allocator
from anmc.vae.config import TrainConfig
from anmc.vae.loss import sequence_loss
from anmc.vae.nets import build_vae, on_device

PRIOR = Path(__file__).resolve().parent.parent / "priors" / "pendulum.anm"
READINGS = {
    "standard2": ("standard", None, 2),
    "standard": ("standard", None, 1),
    "smoother": ("elbo", "smoother", 1),
    "elbo": ("elbo", "factorized", 2),
    "pairwise": ("pairwise", None, 2),
    "mixture": ("mixture", None, 2),
    "pooled": ("pooled", None, 2),
}


def chain_prior(n: int, pendulums: bool = False) -> str:
    """The .anm source of a chain of n unit masses on springs (frequency w), neighbours coupled by springs
    kc, linear drag c: 2n states, the n displacements observed (benchmarks/priors/coupled6.anm's style).
    `pendulums`: each restoring force w² sin(x) instead of w² x (f no longer affine in the states)."""
    restoring = "sin(x{i})" if pendulums else "x{i}"
    lines = [f"model chain{n}", "param w = 6.0 in [0.1, 100] learn", "param kc = 4.0 in [0, 100]", "param c = 0.1 in [0, 10]"]
    lines += [f"state x{i} ~ Normal(0, 0.5)\nstate v{i} ~ Normal(0, 2.0)" for i in range(n)]
    lines.append("dynamics continuous dt = 1/30 using rk4")
    for i in range(n):
        coupling = "".join(f" + kc * (x{j} - x{i})" for j in (i - 1, i + 1) if 0 <= j < n)
        lines += [f"  x{i}' = v{i}", f"  v{i}' = -w^2 * {restoring.format(i=i)}{coupling} - c * v{i}"]
    lines.append("noise " + ", ".join(f"x{i} = 0.005, v{i} = 0.05" for i in range(n)))
    lines.append("observe " + ", ".join(f"x{i}" for i in range(n)))
    return "\n".join(lines) + "\n"


def make_step(kl: str, posterior: str | None, window: int | None, frames: torch.Tensor, args, device, prior):
    """One model and its optimizer; returns step(), which runs one training step."""
    config = TrainConfig(
        kl=kl, posterior=posterior, window=window, size=args.size, batch=args.batch, seq_len=args.seq_len, samples=args.samples
    )
    frames = frames[:, 2 - config.window :]  # seq_len latent frames whatever the window (1 or 2)
    torch.manual_seed(0)
    vae = on_device(build_vae(compile_prior(prior), frames.shape[2:], config), device)  # as training places it
    if args.compile_prior and kl != "standard":
        vae.prior.compile_core()  # torch.compile of the integration (opt-in)
    if kl != "standard":
        vae.prior.windowed_tangents = {"auto": None, "dense": False, "windowed": True}[args.rows]
    return adam_step(vae, frames, config)


def adam_step(vae, frames: torch.Tensor, config: TrainConfig):
    """step(): one Adam step of `vae` on `frames` (the loss, its gradient, the update; no clipping)."""
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)

    def step():
        out = sequence_loss(vae, frames, config)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()

    return step


def peak_memory(step, args, device) -> float:
    """MiB: CUDA peak allocation, or the growth of the CPU process's peak RSS, over the warm-up steps."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(max(1, args.warmup)):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024


def interleaved_times(steps: dict, args, device) -> dict:
    """Seconds per step of each model, one step each per round: {key: [seconds per round]}."""
    clock = time.perf_counter if args.clock == "wall" or device.type == "cuda" else time.process_time
    times = {key: [] for key in steps}
    for _ in range(args.repeats):
        for key, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = clock()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[key].append(clock() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (torch.set_num_threads)")
    ap.add_argument("--prior", type=Path, default=PRIOR, help="the .anm to time [default: priors/pendulum.anm]")
    ap.add_argument("--chain", type=int, default=0, help="time a generated chain of N coupled oscillators instead (d = 2N)")
    ap.add_argument("--pendulums", action="store_true", help="with --chain: coupled pendulums (sin restoring forces), not oscillators")
    ap.add_argument("--readings", default=",".join(READINGS), help=f"comma-separated subset of {', '.join(READINGS)}")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="CPU time of this process or wall-clock")
    ap.add_argument("--compile-prior", action="store_true", help="torch.compile the prior module (m.compile_core())")
    ap.add_argument("--rows", choices=("auto", "dense", "windowed"), default="auto",
                    help="the prior's tangent rows: as anmc chooses, or forced dense or windowed (m.windowed_tangents)")
    ap.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                    help="glibc's thresholds as `anmc train` sets them (anmc.vae.allocator) or as found")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, a few repeats (a smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.size, args.batch, args.seq_len, args.repeats, args.warmup = 16, 4, 4, 2, 1
    torch.set_num_threads(args.threads)
    allocator = tune_allocator()[1] if args.malloc == "tuned" else "allocator: as found"
    device = torch.device(args.device)
    prior = chain_prior(args.chain, args.pendulums) if args.chain else args.prior
    kind = "pendulums" if args.pendulums else "oscillators"
    name = f"chain of {args.chain} {kind} (d = {2 * args.chain})" if args.chain else Path(args.prior).stem
    frames = torch.randint(0, 256, (args.batch, args.seq_len + 1, 1, args.size, args.size), dtype=torch.uint8, device=device)
    # the standard prior first: ru_maxrss only grows, so the cheaper step is measured before the others
    # (--kl, --posterior, --window): the smoother reads one frame per reading (window 1), the factorized
    # posterior two; each ANM step is compared with the N(0, I) step of the same encoder window
    chosen = args.readings.split(",")
    unknown = [r for r in chosen if r not in READINGS]
    if unknown:
        ap.error(f"--readings {','.join(unknown)}: use some of {', '.join(READINGS)}")
    readings = [READINGS[r] for r in READINGS if r in chosen]
    for _, _, w in list(readings):  # every ANM step is compared with the N(0, I) step of its window
        if ("standard", None, w) not in readings:
            readings.insert(0, ("standard", None, w))
    steps = {key: make_step(*key, frames, args, device, prior) for key in readings}
    memory = {key: peak_memory(step, args, device) for key, step in steps.items()}
    times = interleaved_times(steps, args, device)
    mem = "peak MiB (CUDA)" if device.type == "cuda" else "RSS growth MiB"
    clock = "wall-clock" if args.clock == "wall" or device.type == "cuda" else "CPU time"
    threads = "" if device.type == "cuda" else f", {torch.get_num_threads()} thread(s)"
    print(f"train step, {name}, {args.size}x{args.size}, batch {args.batch} x {args.seq_len} frames, {device}{threads}, rows {args.rows}, "
          f"torch {torch.__version__}, {clock}, {args.repeats} interleaved rounds; {allocator}")  # fmt: skip
    print(f"{'prior / --kl':<28} {'window':>6} {'ms/step':>9} {'x N(0,I)':>9} {'frames/s':>9} {mem:>16}")
    for (kl, post, w), ts in times.items():
        label = "N(0, I) (standard)" if kl == "standard" else f"ANM ({kl}, {post or 'factorized'})"
        ratio = statistics.median(t / b for t, b in zip(ts, times["standard", None, w]))
        fps = args.batch * args.seq_len / statistics.median(ts)
        print(f"{label:<28} {w:>6} {statistics.median(ts) * 1e3:>9.1f} {ratio:>9.2f} {fps:>9.0f} {memory[kl, post, w]:>16.1f}")


if __name__ == "__main__":
    main()
