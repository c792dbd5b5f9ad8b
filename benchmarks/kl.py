"""Speed and peak memory of the linearized prior + Monte Carlo KL, against torch.distributions.

    python benchmarks/kl.py [--quick] [--rounds 40] [--threads 1] [--clock cpu|wall] [--dtype float32|float64]
                            [--sizes 64 256 1024] [--dims 2 6] [--samples 1 8]

What is timed, for N Gaussians, d states and S samples per component (the `pooled` reading, the one
with N-component mixtures on both sides):

    prior  p̄ = (1/N) Σ_i N(f(μ_{t−1,i}), J_i diag(σ_{t−1,i}²) J_iᵀ + Q)      (compiled f and exact J)
    KL     KL(q̄ ‖ p̄) ≈ (1/N) Σ_i (1/S) Σ_s [log q̄(z_is) − log p̄(z_is)],  q̄ = (1/N) Σ_i N(μ_t,i, diag σ_t,i²)

i.e. N·S stratified, reparameterized samples scored against two N-component mixtures.
- ours: what the `pooled` reading runs, `linearized_kl_monte_carlo(module, ..., pool=True)`: f and J,
  then the prior's factorization, the draws and both log-densities (GEMM-expanded, chunked; never a
  samples × components × d tensor) as one autograd node with its backward pass written out.
- objects: the same estimate through the composable API, `LinearizedPrior(at="mean")(...).pool()` and
  `gmm_kl_monte_carlo` (the prior's Cholesky factor under autograd, the mixtures as objects).
- torch: the same f, J, J S Jᵀ + Q and `torch.linalg.cholesky`, then `MixtureSameFamily(Categorical,
  MultivariateNormal)` for q̄ and p̄ and their `log_prob` on the same N·S samples (the same noise, so
  all estimates must agree; the `agree` column is ours vs torch, and the script fails if they disagree).
- KL-only: both sides get the same Cholesky factors of p̄ (computed once, outside the timing) and time
  the rest: `GaussianMixture` + `gmm_kl_monte_carlo` against `MixtureSameFamily`: mixture objects,
  draws, log densities. That is the part `MixtureSameFamily` does; f and J (the same compiled module
  on both sides) dominate small problems end to end.

d = 2 is priors/pendulum.anm; d = 6 is three pendulums coupled by springs (source below).
Times: the implementations are called in alternation, one call each per round, the order swapped every
round, for `--rounds` rounds (more for small problems, until each has run 0.3 s; fewer for large ones,
at least 5, once each has run 3 s), after a warm-up; the median per call is reported. Alternating keeps
a shared machine's drifts out of the ratios. The default clock is this process's CPU time
(`time.process_time`) with one torch thread; `--clock wall --threads 0` gives wall-clock time with
torch's default threads. "fwd" builds the graph (inputs and the learnable L require grad), "f+b" adds
`backward()`.
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
from anmc.prior.linearize import linearized_kl_monte_carlo

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
    return linearized_kl_monte_carlo(module, mu_t, std_t, mu_prev, std_prev, samples=samples, pool=True,
                                     generator=torch.Generator().manual_seed(seed))  # fmt: skip


def objects(module, mu_prev, std_prev, mu_t, std_t, samples: int, seed: int = 1):
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


def interleaved_medians(fns, rounds: int, clock=time.process_time, min_seconds: float = 0.3) -> list[float]:
    """Median seconds per call of each fn, called in alternation (one call each per round, the order
    reversed every other round) for `rounds` rounds (fewer, but at least 5, once each has run 3 s) and
    until each has run `min_seconds`, after a warm-up."""
    for fn in fns:
        fn()
        fn()
    times = [[] for _ in fns]
    order = list(range(len(fns)))
    r = 0
    while r < 5 or (r < rounds and min(sum(t) for t in times) < 3.0) or min(sum(t) for t in times) < min_seconds:
        for i in order if r % 2 == 0 else order[::-1]:
            t = clock()
            fns[i]()
            times[i].append(clock() - t)
        r += 1
        if r >= 50 * rounds:
            break
    return [statistics.median(t) for t in times]


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


def run_case(module, n, samples, rounds, dtype, clock, min_seconds=0.3):
    inputs = make_inputs(module, n, dtype)
    with torch.no_grad():  # the prior's Gaussians, for the KL-only timings (both sides get the same factors)
        shared = LinearizedPrior(module, at="mean")(*inputs[:2]).pool()
    kl_inputs = [shared.loc.clone().requires_grad_(), shared.scale_tril.clone().requires_grad_(), *inputs[2:]]

    def call(est, args, backward):
        def fn():
            for t in (*args, *module.parameters()):
                t.grad = None
            out = est(module, *args, samples) if est in (ours, objects, torch_distributions) else est(*args, samples)
            if backward:
                out.backward()
            return out

        return fn

    estimates = (("ours", ours), ("objects", objects), ("torch", torch_distributions))
    out = {"value": {name: float(est(module, *inputs, samples).detach()) for name, est in estimates}}
    for key, backward in (("fwd", False), ("fwd_bwd", True)):
        out[key] = interleaved_medians([call(e, inputs, backward) for e in (ours, objects, torch_distributions)],
                                       rounds, clock, min_seconds)  # fmt: skip
        out["kl_" + key] = interleaved_medians([call(e, kl_inputs, backward) for e in (ours_kl, torch_kl)],
                                               rounds, clock, min_seconds)  # fmt: skip
    out["peak"] = [peak_bytes(call(e, inputs, True)) for e in (ours, torch_distributions)]
    v = out["value"]
    out["agree"] = max(abs(v[name] - v["torch"]) / max(abs(v["torch"]), 1e-12) for name in ("ours", "objects"))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, few rounds: a smoke test")
    ap.add_argument("--rounds", type=int, default=40, help="at least this many alternating rounds per measurement")
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
        sizes, dims, samples, rounds = (8, 32), (2, 6), (1, 2), 2
    else:
        sizes, dims, samples, rounds = args.sizes, args.dims, args.samples, args.rounds
    print(f"prior + KL(q̄‖p̄): N·S samples scored under two N-component mixtures; {args.dtype}, CPU, "
          f"{torch.get_num_threads()} thread(s), {args.clock} time, medians of alternating calls; "
          "torch = MixtureSameFamily(Categorical, MultivariateNormal)")  # fmt: skip
    head = (f"{'N':>5} {'d':>2} {'S':>2} | {'fwd ms':>7} {'torch':>7} {'ratio':>6} | {'f+b ms':>7} {'torch':>7} "
            f"{'ratio':>6} | {'objects':>7} | {'KL-only ratio':>13} | {'peak MB':>7} {'torch':>7} {'ratio':>6} | "
            f"{'agree':>7}")  # fmt: skip
    print(head)
    print("-" * len(head))
    failures = []
    for d in dims:
        module = make_module(d).to(dtype)
        for n in sizes:
            for s in samples:
                r = run_case(module, n, s, rounds, dtype, clock, min_seconds=0.0 if args.quick else 0.3)
                (o, ob, t), (ofb, obfb, tfb) = r["fwd"], r["fwd_bwd"]
                kl_f = r["kl_fwd"][1] / r["kl_fwd"][0]
                kl_fb = r["kl_fwd_bwd"][1] / r["kl_fwd_bwd"][0]
                po, pt = r["peak"]
                print(
                    f"{n:>5} {d:>2} {s:>2} | {1e3 * o:7.2f} {1e3 * t:7.2f} {t / o:5.2f}x | "
                    f"{1e3 * ofb:7.2f} {1e3 * tfb:7.2f} {tfb / ofb:5.2f}x | {tfb / obfb:6.2f}x | "
                    f"{kl_f:5.2f}x {kl_fb:5.2f}x | "
                    f"{po / 2**20:7.2f} {pt / 2**20:7.2f} {pt / max(po, 1):5.1f}x | {r['agree']:7.1e}",
                    flush=True,
                )
                if r["agree"] > (1e-3 if dtype == torch.float32 else 1e-9):
                    failures.append(f"N={n} d={d} S={s}: estimates differ by {r['agree']:.1e}")
    print("ratio = torch / ours (> 1: ours is faster / smaller). fwd, f+b: prior (f, J, J S Jᵀ + Q, Cholesky) + KL,")
    print("ours = the pooled reading's one-node path; objects: f+b ratio of LinearizedPrior(...).pool() +")
    print("gmm_kl_monte_carlo; KL-only: fwd and f+b ratios given the same Cholesky factors of p̄ (the part")
    print("MixtureSameFamily does); peak: CPU bytes allocated during one prior + KL fwd+bwd (torch profiler).")
    if failures:
        raise SystemExit("the two estimates disagree:\n" + "\n".join(failures))


if __name__ == "__main__":
    main()
