"""Speed and peak memory of the linearized prior + Monte Carlo KL, against torch.distributions.

    python benchmarks/kl.py [--quick] [--repeats 5] [--threads 1] [--clock cpu|wall] [--dtype float32|float64]
                            [--sizes 64 256 1024] [--dims 2 6] [--samples 1 8]

What is timed, for N Gaussians, d states and S samples per component (the `pooled` reading, the one
with N-component mixtures on both sides):

    prior  p̄ = (1/N) Σ_i N(f(μ_{t−1,i}), J_i diag(σ_{t−1,i}²) J_iᵀ + Q)      (compiled f and exact J)
    KL     KL(q̄ ‖ p̄) ≈ (1/N) Σ_i (1/S) Σ_s [log q̄(z_is) − log p̄(z_is)],  q̄ = (1/N) Σ_i N(μ_t,i, diag σ_t,i²)

i.e. N·S stratified, reparameterized samples scored against two N-component mixtures.
- ours: `LinearizedPrior(at="mean")(...).pool()` + `gmm_kl_monte_carlo` (GEMM-expanded, chunked
  log-densities; never a samples × components × d tensor).
- torch: the same f, J, J S Jᵀ + Q and `torch.linalg.cholesky`, then `MixtureSameFamily(Categorical,
  MultivariateNormal)` for q̄ and p̄ and their `log_prob` on the same N·S samples (the same noise, so
  both estimates must agree; the `agree` column is their relative difference, and the script fails if
  they disagree).
- KL-only: both sides get the same Cholesky factors of p̄ (computed once, outside the timing) and time
  the rest: mixture objects, draws, log densities. That is the part where the two implementations differ;
  the compiled f and J (shared) dominate small problems.

d = 2 is priors/pendulum.anm; d = 6 is three pendulums coupled by springs (source below).
Times: median over `--repeats` batches of calls (each batch >= 20 ms) after a warm-up, per call.
The default clock is this process's CPU time (`time.process_time`) with one torch thread, which stays
steady on a shared machine where wall-clock medians swing 2x; `--clock wall --threads 0` gives
wall-clock time with torch's default threads. "fwd" builds the graph (inputs and the learnable L
require grad), "f+b" adds `backward()`.
Peak memory: the torch profiler (`profile_memory=True`) records every CPU allocation and free in one
prior + KL fwd+bwd; they are replayed in order and the peak of the running total (bytes allocated
inside the call, above what was live before it) is reported. Frees of blocks allocated before the call
are not reported by the profiler, so this is an upper bound. tracemalloc does not see torch's CPU
allocator, so it is not used.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

import anmc
from anmc.prior import GaussianMixture, LinearizedPrior, gmm_kl_monte_carlo

PRIORS = Path(__file__).resolve().parent.parent / "priors"

COUPLED6 = """
model coupled_pendulums
const g = 9.81
param L = 1.0 in [0.05, 20] learn
param kc = 2.0
state a ~ Normal(0, 0.5)
state b ~ Normal(0, 0.5)
state c ~ Normal(0, 0.5)
state wa ~ Normal(0, 1.5)
state wb ~ Normal(0, 1.5)
state wc ~ Normal(0, 1.5)
dynamics continuous dt = 1/30 using rk4 steps 2
  a' = wa
  b' = wb
  c' = wc
  wa' = -(g / L) * sin(a) + kc * (b - a)
  wb' = -(g / L) * sin(b) + kc * (a - b) + kc * (c - b)
  wc' = -(g / L) * sin(c) + kc * (b - c)
noise a = 0.01, b = 0.01, c = 0.01, wa = 0.05, wb = 0.05, wc = 0.05
observe a, b, c
"""


def make_module(d: int):
    if d == 2:
        return anmc.compile_prior(PRIORS / "pendulum.anm").module()
    if d == 6:
        return anmc.compile_prior(COUPLED6).module()
    raise ValueError(f"no benchmark prior with d = {d}")


def make_inputs(module, n: int, dtype, seed: int = 0):
    """Encoder-like posteriors: μ_{t−1} from the initial prior, μ_t = f(μ_{t−1}) + a small error, σ ≈ 0.1 s0."""
    g = torch.Generator().manual_seed(seed)
    d = module.d
    m0, s0 = module.initial_mean.to(dtype), module.initial_std.to(dtype)
    mu_prev = m0 + s0 * torch.randn(n, d, generator=g, dtype=dtype)
    std_prev = 0.1 * s0 * (0.5 + torch.rand(n, d, generator=g, dtype=dtype))
    with torch.no_grad():
        mu_t = module.to(dtype)(mu_prev) + 0.05 * s0 * torch.randn(n, d, generator=g, dtype=dtype)
    std_t = 0.1 * s0 * (0.5 + torch.rand(n, d, generator=g, dtype=dtype))
    return [t.clone().requires_grad_() for t in (mu_prev, std_prev, mu_t, std_t)]


def ours(module, mu_prev, std_prev, mu_t, std_t, samples: int, seed: int = 1):
    p_bar = LinearizedPrior(module, at="mean")(mu_prev, std_prev).pool()
    return ours_kl(p_bar.loc, p_bar.scale_tril, mu_t, std_t, samples, seed)


def ours_kl(loc_p, tril_p, mu_t, std_t, samples: int, seed: int = 1):
    p_bar = GaussianMixture(torch.zeros_like(loc_p[:, 0]), loc_p, scale_tril=tril_p)
    q_bar = GaussianMixture(torch.zeros_like(mu_t[:, 0]), mu_t, scale_diag=std_t)
    return gmm_kl_monte_carlo(q_bar, p_bar, samples, generator=torch.Generator().manual_seed(seed))


def torch_distributions(module, mu_prev, std_prev, mu_t, std_t, samples: int, seed: int = 1):
    f, J = module.f_and_jacobian(mu_prev)
    F = J * std_prev[..., None, :]
    cov = F @ F.mT + torch.diag_embed(module.noise_std.to(mu_t).square())
    return torch_kl(f, torch.linalg.cholesky(cov), mu_t, std_t, samples, seed)


def torch_kl(loc_p, tril_p, mu_t, std_t, samples: int, seed: int = 1):
    n, d = mu_t.shape
    logits = torch.zeros(n, dtype=mu_t.dtype)
    p_bar = MixtureSameFamily(Categorical(logits=logits), MultivariateNormal(loc_p, scale_tril=tril_p))
    q_bar = MixtureSameFamily(Categorical(logits=logits), MultivariateNormal(mu_t, scale_tril=torch.diag_embed(std_t)))
    # the same stratified noise as ours: (N, S, d), S draws from every component
    eps = torch.randn((n, samples, d), generator=torch.Generator().manual_seed(seed), dtype=mu_t.dtype)
    z = (mu_t[:, None, :] + std_t[:, None, :] * eps).reshape(n * samples, d)
    return (q_bar.log_prob(z) - p_bar.log_prob(z)).mean()


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def median_time(fn, repeats: int, clock=time.process_time) -> float:
    """Median seconds of one call, over `repeats` batches of calls each lasting >= ~20 ms, after a warm-up."""
    fn()
    t = clock()
    fn()
    once = max(clock() - t, 1e-6)
    inner = max(1, int(0.02 / once))
    times = []
    for _ in range(repeats):
        t = clock()
        for _ in range(inner):
            fn()
        times.append((clock() - t) / inner)
    return statistics.median(times)


def peak_bytes(fn) -> int:
    """Peak of the running total of CPU bytes allocated inside fn() (torch profiler allocation events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == torch._C._profiler._EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
    total = peak = 0
    for _, size in sorted(events):
        total += size
        peak = max(peak, total)
    return peak


def run_case(module, n, samples, repeats, dtype, clock):
    inputs = make_inputs(module, n, dtype)
    with torch.no_grad():  # the prior's Gaussians, for the KL-only timings (both sides get the same factors)
        shared = LinearizedPrior(module, at="mean")(*inputs[:2]).pool()
    kl_inputs = [shared.loc.clone().requires_grad_(), shared.scale_tril.clone().requires_grad_(), *inputs[2:]]
    out = {}
    for name, est, kl_only in (("ours", ours, ours_kl), ("torch", torch_distributions, torch_kl)):

        def fwd(est=est, args=inputs):
            return est(module, *args, samples) if est in (ours, torch_distributions) else est(*args, samples)

        def fwd_bwd(est=est, args=inputs):
            for t in (*args, *module.parameters()):
                t.grad = None
            fwd(est, args).backward()

        out[name] = dict(
            value=float(fwd().detach()),
            fwd=median_time(fwd, repeats, clock),
            fwd_bwd=median_time(fwd_bwd, repeats, clock),
            kl_fwd=median_time(lambda: fwd(kl_only, kl_inputs), repeats, clock),
            kl_fwd_bwd=median_time(lambda: fwd_bwd(kl_only, kl_inputs), repeats, clock),
            peak=peak_bytes(fwd_bwd),
        )
    a, b = out["ours"]["value"], out["torch"]["value"]
    out["agree"] = abs(a - b) / max(abs(b), 1e-12)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: a smoke test")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: leave torch's default)")
    ap.add_argument("--clock", choices=tuple(CLOCKS), default="cpu",
                    help="cpu: this process's CPU time (steady on a shared machine); wall: perf_counter")  # fmt: skip
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024], help="N")
    ap.add_argument("--dims", type=int, nargs="+", default=[2, 6], choices=(2, 6), help="d")
    ap.add_argument("--samples", type=int, nargs="+", default=[1, 8], help="S")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype, clock = getattr(torch, args.dtype), CLOCKS[args.clock]
    if args.quick:
        sizes, dims, samples, repeats = (8, 32), (2, 6), (1, 2), 1
    else:
        sizes, dims, samples, repeats = args.sizes, args.dims, args.samples, args.repeats
    print(f"prior + KL(q̄‖p̄): N·S samples scored under two N-component mixtures; {args.dtype}, CPU, "
          f"{torch.get_num_threads()} thread(s), {args.clock} time, median of {repeats}; "
          "torch = MixtureSameFamily(Categorical, MultivariateNormal)")  # fmt: skip
    head = (f"{'N':>5} {'d':>2} {'S':>2} | {'fwd ms':>8} {'torch':>8} {'ratio':>6} | {'f+b ms':>8} {'torch':>8} "
            f"{'ratio':>6} | {'KL-only ratio':>13} | {'peak MB':>8} {'torch':>8} {'ratio':>6} | "
            f"{'agree':>7}")  # fmt: skip
    print(head)
    print("-" * len(head))
    failures = []
    for d in dims:
        module = make_module(d).to(dtype)
        for n in sizes:
            for s in samples:
                r = run_case(module, n, s, repeats, dtype, clock)
                o, t = r["ours"], r["torch"]
                kl_f, kl_fb = t["kl_fwd"] / o["kl_fwd"], t["kl_fwd_bwd"] / o["kl_fwd_bwd"]
                print(
                    f"{n:>5} {d:>2} {s:>2} | {1e3 * o['fwd']:8.2f} {1e3 * t['fwd']:8.2f} {t['fwd'] / o['fwd']:5.1f}x | "
                    f"{1e3 * o['fwd_bwd']:8.2f} {1e3 * t['fwd_bwd']:8.2f} {t['fwd_bwd'] / o['fwd_bwd']:5.1f}x | "
                    f"{kl_f:5.1f}x {kl_fb:5.1f}x | "
                    f"{o['peak'] / 2**20:8.2f} {t['peak'] / 2**20:8.2f} {t['peak'] / max(o['peak'], 1):5.1f}x | "
                    f"{r['agree']:7.1e}",
                    flush=True,
                )
                if r["agree"] > (1e-3 if dtype == torch.float32 else 1e-9):
                    failures.append(f"N={n} d={d} S={s}: estimates differ by {r['agree']:.1e}")
    print("ratio = torch / ours (> 1: ours is faster / smaller). fwd, f+b: prior (f, J, J S Jᵀ + Q, Cholesky) + KL;")
    print("KL-only: fwd and f+b ratios given the same Cholesky factors of p̄ (the part where the two differ);")
    print("peak: CPU bytes allocated during one prior + KL fwd+bwd (torch profiler), above what was live before.")
    if failures:
        raise SystemExit("the two estimates disagree:\n" + "\n".join(failures))


if __name__ == "__main__":
    main()
