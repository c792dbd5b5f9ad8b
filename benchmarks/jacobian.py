"""Speed of the compiled f_and_jacobian against the usual ways of getting a batch of Jacobians, and
the compile time of each prior.

    python benchmarks/jacobian.py [--batch 4096 65536] [--threads N] [--no-compile] [--quick]

For the RK4 pendulum (priors/pendulum.anm) and a 6-state system (benchmarks/priors/coupled6.anm: two
coupled pendulums and a driven, damped oscillator; rk4, 2 substeps), on float32 batches on the CPU,
each column is the time of one call returning f (B, d) and J (B, d, d):

    ours          the compiled module's f_and_jacobian (params frozen: the references below
                  take their params as plain numbers, so nothing records an autograd graph)
    ours+grad     the same with the learnable params requiring grad, as in training
    compiled      ours after module.compile_core() (torch.compile of the integration; opt-in)
    vmap(jacrev)  torch.func.vmap(torch.func.jacrev(f)) of the same f written by hand in torch
    a.f.jacobian  torch.autograd.functional.jacobian(vectorize=True) of sum_b f(z)_b, (d, B, d)
    analytic      a hand-written Jacobian: F and dF/dz by hand, pushed through RK4 by the chain
                  rule with batched d x d matrix products (the way one writes it in torch)
    numpy         numpy, same algorithm and the same cse'd expressions as ours (sympy lambdify
                  with cse over F and dF/dz), to see how much is torch's per-operation dispatch
    x vmap        vmap(jacrev) time / ours time

ours, compiled, analytic and numpy return f and J; vmap(jacrev) and a.f.jacobian return J only.
Every column's J is checked against the analytic one (float64) before it is timed.

Times are the minimum over rounds of the mean over a block of calls, the rounds interleaved
across the columns (a shared, noisy machine hurts a column only as much as the others). Compile
time is parse -> module instance: the first compile in a fresh process (which also builds the
parser) and the median of warm compiles with SymPy's cache cleared.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time
import timeit
from pathlib import Path

import numpy as np
import sympy as sp
import torch

import anmc
from anmc.symbolic.model import symbol

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = {"pendulum": ROOT / "priors" / "pendulum.anm", "coupled6": ROOT / "benchmarks" / "priors" / "coupled6.anm"}
G = 9.81


# ---------------------------------------------------------------- the systems, by hand


def pendulum_F(z, L=1.0, c=0.0):
    th, om = z[..., 0], z[..., 1]
    return torch.stack((om, -(G / L) * torch.sin(th) - c * om), -1)


def pendulum_A(z, L=1.0, c=0.0):
    th = z[..., 0]
    zero, one = torch.zeros_like(th), torch.ones_like(th)
    return torch.stack((zero, one, -(G / L) * torch.cos(th), torch.full_like(th, -c)), -1).unflatten(-1, (2, 2))


def coupled6_F(z, L=1.0, kc=2.0, c=0.1, w=6.0, zeta=0.05, eps=0.5):
    t1, o1, t2, o2, x, v = z.unbind(-1)
    return torch.stack(
        (
            o1,
            -(G / L) * torch.sin(t1) - kc * (t1 - t2) - c * o1,
            o2,
            -(G / L) * torch.sin(t2) - kc * (t2 - t1) - c * o2,
            v,
            -(w**2) * x - 2 * zeta * w * v + eps * torch.sin(t1),
        ),
        -1,
    )


def coupled6_A(z, L=1.0, kc=2.0, c=0.1, w=6.0, zeta=0.05, eps=0.5):
    t1, t2 = z[..., 0], z[..., 2]
    o, i = torch.zeros_like(t1), torch.ones_like(t1)
    a1, a2 = -(G / L) * torch.cos(t1) - kc, -(G / L) * torch.cos(t2) - kc
    k, cc, ww, dd = torch.full_like(t1, kc), torch.full_like(t1, -c), torch.full_like(t1, -(w**2)), torch.full_like(t1, -2 * zeta * w)
    rows = (
        (o, i, o, o, o, o),
        (a1, cc, k, o, o, o),
        (o, o, o, i, o, o),
        (k, o, a2, cc, o, o),
        (o, o, o, o, o, i),
        (eps * torch.cos(t1), o, o, o, ww, dd),
    )
    return torch.stack([e for row in rows for e in row], -1).unflatten(-1, (6, 6))


def rk4(F, z, h, steps):
    for _ in range(steps):
        k1 = F(z)
        k2 = F(z + h / 2 * k1)
        k3 = F(z + h / 2 * k2)
        k4 = F(z + h * k3)
        z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return z


def rk4_and_jacobian(F, A, z, h, steps):
    """The analytic Jacobian of RK4: stage Jacobians A(y_s) chained through the stages, by hand."""
    d = z.shape[-1]
    J = torch.eye(d, dtype=z.dtype).expand(*z.shape[:-1], d, d)
    for _ in range(steps):
        k1, D1 = F(z), A(z) @ J
        y2, T2 = z + h / 2 * k1, J + h / 2 * D1
        k2, D2 = F(y2), A(y2) @ T2
        y3, T3 = z + h / 2 * k2, J + h / 2 * D2
        k3, D3 = F(y3), A(y3) @ T3
        y4, T4 = z + h * k3, J + h * D3
        k4, D4 = F(y4), A(y4) @ T4
        z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        J = J + h / 6 * (D1 + 2 * D2 + 2 * D3 + D4)
    return z, J


HAND = {"pendulum": (pendulum_F, pendulum_A), "coupled6": (coupled6_F, coupled6_A)}


# ---------------------------------------------------------------- numpy, the same expressions


def numpy_f_and_jacobian(prior):
    """f_and_jacobian in numpy over the same F and dF/dz, cse'd and lambdified, the same algorithm."""
    model = prior.model
    m = prior.module()
    d, states = model.d, [symbol(s) for s in model.states]
    params = [symbol(p) for p in model.params]
    consts = {symbol(n): v for n, v in model.consts.items()}
    F = [model.rhs[s].xreplace(consts) for s in model.states]
    A = sp.Matrix(F).jacobian(states)
    nz = [(i, j) for i in range(d) for j in range(d) if A[i, j] != 0]
    rows = sp.symbols(f"R0:{d}")  # the rows J_l (d, B) of the tangent, as opaque symbols
    dk = [sum((A[i, j] * rows[j] for j in range(d) if (i, j) in nz), sp.Integer(0)) for i in range(d)]
    fn = sp.lambdify([*states, *rows, *params], [*F, *dk], modules="numpy", cse=True)
    values = [float(v.detach()) for v in m.param_values().values()]
    h = m.dt / m.substeps

    def run(z: np.ndarray):
        zs = list(np.ascontiguousarray(z.T))
        Js = list(np.eye(d, dtype=z.dtype)[:, :, None])
        for _ in range(m.substeps):
            out = fn(*zs, *Js, *values)
            k1, d1 = out[:d], out[d:]
            out = fn(*[a + h / 2 * b for a, b in zip(zs, k1)], *[a + h / 2 * b for a, b in zip(Js, d1)], *values)
            k2, d2 = out[:d], out[d:]
            out = fn(*[a + h / 2 * b for a, b in zip(zs, k2)], *[a + h / 2 * b for a, b in zip(Js, d2)], *values)
            k3, d3 = out[:d], out[d:]
            out = fn(*[a + h * b for a, b in zip(zs, k3)], *[a + h * b for a, b in zip(Js, d3)], *values)
            k4, d4 = out[:d], out[d:]
            zs = [a + h / 6 * (p + q) + h / 3 * (r + s) for a, p, q, r, s in zip(zs, k1, k4, k2, k3)]
            Js = [a + h / 6 * (p + q) + h / 3 * (r + s) for a, p, q, r, s in zip(Js, d1, d4, d2, d3)]
        B = z.shape[0]
        Js = [np.broadcast_to(r, (d, B)) for r in Js]
        return np.ascontiguousarray(np.stack(zs, -1)), np.ascontiguousarray(np.stack(Js, 0).transpose(2, 0, 1))

    return run


# ---------------------------------------------------------------- timing


def interleaved(fns: dict, number: int, rounds: int) -> dict:
    """Per-call seconds: min over `rounds` of the mean over `number` calls, the columns interleaved."""
    best = {k: math.inf for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            best[k] = min(best[k], timeit.timeit(fn, number=number) / number)
    return best


def jacobian_rows(batches, quick: bool, compile_core: bool):
    rows, notes = [], []
    for name, path in SYSTEMS.items():
        prior = anmc.compile_prior(path)
        F, A = HAND[name]
        m = prior.module().requires_grad_(False)
        mg = prior.module()
        h, steps = m.dt / m.substeps, m.substeps
        f = lambda z, F=F: rk4(F, z, h, steps)  # noqa: E731
        vj = torch.func.vmap(torch.func.jacrev(f))
        npf = numpy_f_and_jacobian(prior)
        mc = None
        if compile_core:
            mc = prior.module().requires_grad_(False).compile_core()
        for B in batches:
            z = torch.randn(B, m.d, generator=torch.Generator().manual_seed(0))
            zn = z.numpy()
            ref_f, ref_J = rk4_and_jacobian(F, A, z.double(), h, steps)
            fns = {
                "ours": lambda: m.f_and_jacobian(z),
                "ours+grad": lambda: mg.f_and_jacobian(z),
                "vmap(jacrev)": lambda: vj(z),
                "a.f.jacobian": lambda: torch.autograd.functional.jacobian(lambda x: f(x).sum(0), z, vectorize=True),
                "analytic": lambda: rk4_and_jacobian(F, A, z, h, steps),
                "numpy": lambda: npf(zn),
            }
            if mc is not None:
                t = time.perf_counter()
                try:
                    mc.f_and_jacobian(z)
                    fns["compiled"] = lambda: mc.f_and_jacobian(z)
                    notes.append(f"{name} B={B}: compile_core's first call took {time.perf_counter() - t:.1f} s")
                except Exception as err:  # no C++ compiler, an unsupported torch...
                    notes.append(f"{name}: compile_core failed ({type(err).__name__}: {str(err).splitlines()[0][:80]})")
                    mc = None
            for key in ("ours", "compiled", "analytic"):  # every column computes the same thing
                if key in fns:
                    got_f, got_J = fns[key]()
                    assert torch.allclose(got_J.double(), ref_J, rtol=1e-3, atol=1e-4), f"{name} {key}: J differs"
                    assert torch.allclose(got_f.double(), ref_f, rtol=1e-4, atol=1e-5), f"{name} {key}: f differs"
            got_f, got_J = npf(zn)
            assert np.allclose(got_J, ref_J.numpy(), rtol=1e-3, atol=1e-4), f"{name} numpy: J differs"
            assert torch.allclose(vj(z).double(), ref_J, rtol=1e-3, atol=1e-4), f"{name} vmap(jacrev): J differs"
            number = 1 if quick else max(2, int(120_000 / B))
            times = interleaved(fns, number, 1 if quick else 9)
            rows.append((name, m.d, B, times))
    return rows, notes


COMPILE_SNIPPET = """
import sys, time
t = time.perf_counter()
import anmc
t0 = time.perf_counter()
anmc.compile_prior(sys.argv[1]).module()
print(time.perf_counter() - t0)
"""


def compile_times(quick: bool):
    import sympy.core.cache

    out = []
    paths = sorted((ROOT / "priors").glob("*.anm")) + [SYSTEMS["coupled6"]]
    for path in paths:
        first = float(subprocess.run([sys.executable, "-c", COMPILE_SNIPPET, str(path)], capture_output=True, text=True, check=True).stdout)
        warm = []
        for _ in range(1 if quick else 5):
            sympy.core.cache.clear_cache()
            t = time.perf_counter()
            anmc.compile_prior(path).module()
            warm.append(time.perf_counter() - t)
        out.append((path.relative_to(ROOT), first, statistics.median(warm)))
    return out


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 10 else f"{ms:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[4096, 65536])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile column (it compiles for ~10-30 s)")
    ap.add_argument("--quick", action="store_true", help="tiny batches, one repeat, no torch.compile: a smoke test")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [64, 256] if args.quick else args.batch
    compile_core = not (args.no_compile or args.quick)

    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    rows, notes = jacobian_rows(batches, args.quick, compile_core)
    cols = ["ours", "ours+grad"] + (["compiled"] if any("compiled" in t for *_, t in rows) else [])
    cols += ["vmap(jacrev)", "a.f.jacobian", "analytic", "numpy"]
    table = Table(title=f"f and J per call, ms (float32, CPU, torch {torch.__version__}, {torch.get_num_threads()} threads)")
    for c in ["system", "d", "batch", *cols, "x vmap"]:
        table.add_column(c, justify="left" if c == "system" else "right")
    for name, d, B, t in rows:
        table.add_row(name, str(d), str(B), *(fmt_ms(t[c]) if c in t else "-" for c in cols), f"{t['vmap(jacrev)'] / t['ours']:.1f}x")
    console.print(table)
    for n in notes:
        console.print(f"  {n}")

    table = Table(title="compile time (parse -> module instance), s")
    for c in ("prior", "first in a process", "warm (median)"):
        table.add_column(c, justify="left" if c == "prior" else "right")
    for path, first, warm in compile_times(args.quick):
        table.add_row(str(path), f"{first:.3f}", f"{warm:.3f}")
    console.print(table)


if __name__ == "__main__":
    main()
