"""Compile time of priors written as a Lagrangian, the two ways of solving M v' = b, and the speed of
the compiled f + J against `torch.func.vmap(torch.func.jacrev(f))` of the same module's f.

    python benchmarks/lagrangian.py [--repeats 3] [--batch 4096] [--threads 1] [--quick]

Systems: priors/double_pendulum.anm (two rigid links, 2 coordinates, rk4 x2) and a triple pendulum
of point masses (3 coordinates, written below as .anm text). For each and each solver of
anmc.symbolic.lagrangian (`lu`: SymPy's LU solve; `inverse`: the adjugate over the determinant):

    derive     the Euler-Lagrange equations and the solve (s)
    model      parse + check + build, derivation included (s)
    compile    model + torch source + audited load, i.e. `anmc.compile_prior` (s)
    ops        SymPy operation count of the accelerations
    lines      lines of the generated torch source

Compile times are the median over `--repeats` runs with SymPy's cache cleared before each, the
solvers interleaved. Then, with the default solver, the time of one call returning f (B, d) and
J (B, d, d) in float32: `ours` (module.f_and_jacobian) against `vmap(jacrev)` of module.forward,
the minimum over rounds of the mean of a block of calls, interleaved. J is checked equal first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import sympy as sp
import torch

import anmc
from anmc.codegen.compile import compile_model
from anmc.symbolic import lagrangian
from anmc.symbolic.model import load_model

ROOT = Path(__file__).resolve().parent.parent

TRIPLE = """\
model triple_pendulum
const m = 1.0
const l = 1.0
param g = 9.81 in [1, 30] learn
state q1 ~ Uniform(-1, 1)
state q2 ~ Uniform(-1, 1)
state q3 ~ Uniform(-1, 1)
state w1 ~ Normal(0, 1)
state w2 ~ Normal(0, 1)
state w3 ~ Normal(0, 1)
dynamics lagrangian dt = 1/30 using rk4 steps 2
  coordinates q1, q2, q3
  velocities w1, w2, w3
  let vx1 = l*cos(q1)*w1
  let vy1 = l*sin(q1)*w1
  let vx2 = vx1 + l*cos(q2)*w2
  let vy2 = vy1 + l*sin(q2)*w2
  let vx3 = vx2 + l*cos(q3)*w3
  let vy3 = vy2 + l*sin(q3)*w3
  kinetic T = m*(vx1^2 + vy1^2 + vx2^2 + vy2^2 + vx3^2 + vy3^2)/2
  potential V = -m*g*l*(3*cos(q1) + 2*cos(q2) + cos(q3))
noise q1 = 0.01, q2 = 0.01, q3 = 0.01, w1 = 0.05, w2 = 0.05, w3 = 0.05
observe q1, q2, q3
"""

SYSTEMS = {"double_pendulum": (ROOT / "priors" / "double_pendulum.anm").read_text(), "triple_pendulum": TRIPLE}


def _timed(fn):
    sp.core.cache.clear_cache()
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def compile_times(text: str, solver: str) -> dict:
    lagrangian.SOLVER = solver
    model_s, model = _timed(lambda: load_model(text))
    d = model.derivation
    derive_s, _ = _timed(lambda: lagrangian.derive(d.coordinates, d.velocities, *_energies(model), {}, anmc.symbolic.model.symbol, solver))
    compile_s, prior = _timed(lambda: compile_model(load_model(text)))
    return {
        "derive": derive_s, "model": model_s, "compile": compile_s,
        "ops": sp.count_ops(list(d.accelerations)), "lines": len(prior.source.splitlines()),
    }  # fmt: skip


def _energies(model):
    """T, V, D of a built model over its states, params and consts (lets substituted), for re-deriving."""
    from anmc.codegen.lets import let_values

    values = {sp.Symbol(n, real=True): v for n, v in let_values(model).items()}
    return [model.energies.get(k, (None, sp.Integer(0)))[1].xreplace(values) for k in ("kinetic", "potential", "dissipation")]


def speed(text: str, batch: int, rounds: int, block: int) -> tuple[float, float, float]:
    module = anmc.compile_prior(text).module()
    for p in module.parameters():
        p.requires_grad_(False)
    z = module.sample_initial(batch, generator=torch.Generator().manual_seed(0)).float()
    ours = lambda: module.f_and_jacobian(z)  # noqa: E731
    jac = torch.func.vmap(torch.func.jacrev(module.forward))
    ref = lambda: jac(z)  # noqa: E731
    err = (ours()[1] - ref()).abs().max().item()
    best = {"ours": float("inf"), "vmap": float("inf")}
    for _ in range(rounds):
        for name, fn in (("ours", ours), ("vmap", ref)):
            t = time.perf_counter()
            for _ in range(block):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t) / block)
    return best["ours"], best["vmap"], err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="the double pendulum only, one repeat, a small batch")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    systems = {"double_pendulum": SYSTEMS["double_pendulum"]} if args.quick else SYSTEMS
    repeats, batch, rounds, block = (1, 256, 2, 2) if args.quick else (args.repeats, args.batch, 5, 10)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; torch threads {args.threads}")
    print(f"{'system':<17} {'solver':<8} {'derive s':>9} {'model s':>8} {'compile s':>10} {'ops':>6} {'lines':>6}")
    default = lagrangian.SOLVER
    for name, text in systems.items():
        runs = {s: [] for s in lagrangian.SOLVERS}
        for _ in range(repeats):
            for solver in lagrangian.SOLVERS:
                runs[solver].append(compile_times(text, solver))
        for solver, rs in runs.items():
            med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            print(f"{name:<17} {solver:<8} {med['derive']:>9.3f} {med['model']:>8.3f} {med['compile']:>10.3f} {med['ops']:>6.0f} {med['lines']:>6.0f}")
    lagrangian.SOLVER = default
    print(f"\nf + J, float32, batch {batch} (solver {default}); time per call")
    print(f"{'system':<17} {'ours ms':>9} {'vmap(jacrev) ms':>16} {'x vmap':>7} {'max |dJ|':>9}")
    for name, text in systems.items():
        ours, ref, err = speed(text, batch, rounds, block)
        print(f"{name:<17} {ours * 1e3:>9.3f} {ref * 1e3:>16.3f} {ref / ours:>7.1f} {err:>9.1e}")


if __name__ == "__main__":
    main()
