"""A design measurement for issue 20 (not what anmc runs): the chain of N pendulums' f and J with each tangent
row computed only inside its structural window of columns, against anmc's dense tangent rows and
torch.func.vmap(jacrev).

    python benchmarks/banded_tangents.py [--chain 16] [--batch 4096] [--rounds 5] [--quick]

anmc carries J through the integrator as dense rows J_l = d z_l / d z0 (d, B) (anmc.codegen.runtime). In a
chain each state depends on its neighbours only, so at the start of a frame (J = I) row l is nonzero in
column l alone, and each evaluation of the right-hand sides widens it by one neighbour: over the 8 stages
of two RK4 substeps, 25% of the (d, d) entries the dense rows carry are nonzero on average (46% at the
end) for the chain of 16. Here every row is a (hi - lo, B) tensor over its window [lo, hi): a stage's row
K_i = sum_l (dF_i/dz_l) T_l is accumulated over the union of its terms' windows, and the integrator's
combinations T + a K over the union of theirs. The same f and J (checked first, and the gradient of
sum(w_f f) + sum(w_J J) with respect to z), written by hand for the chain in plain torch; the forward
pass with L and k learnable is what autograd records, and its backward pass is autograd's over the
windowed operations. One torch thread; times are the minimum over rounds of the mean of a block of calls,
the columns interleaved.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import jacobian as jb  # noqa: E402  (benchmarks/jacobian.py: the chain's .anm, its hand-written F, vmap(jacrev))

RK4_A = [[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]]
RK4_B = [1 / 6, 1 / 3, 1 / 3, 1 / 6]


class BandedChain:
    """f and J of the chain's frame (RK4, `substeps` substeps of h), the tangent rows kept inside their windows."""

    def __init__(self, n: int, h: float, substeps: int, params: dict):
        self.n, self.d, self.h, self.substeps, self.p = n, 2 * n, h, substeps, params
        # the structure of dF/dz: x_i' = v_i; v_i' depends on x_(i-1), x_i, x_(i+1) and v_i (states interleaved)
        self.deps = {}
        for i in range(n):
            self.deps[2 * i] = [2 * i + 1]
            self.deps[2 * i + 1] = [2 * j for j in (i - 1, i, i + 1) if 0 <= j < n] + [2 * i + 1]
        self.held: list[int] | None = None  # the rows' widths per evaluation, while `density` counts them
        self.neighbours = torch.tensor([1.0] + [2.0] * (n - 2) + [1.0]).unsqueeze(1) if n > 1 else torch.zeros(1, 1)

    def rhs(self, z):
        """F (d, B) and dv_i/dx_i (n, B) at the points z (d, B)."""
        g, L, k, c = jb.G, self.p["L"], self.p["k"], self.p["c"]
        x, v = z[0::2], z[1::2]
        lap = torch.zeros_like(x)
        lap[1:] += x[:-1] - x[1:]
        lap[:-1] += x[1:] - x[:-1]
        F = torch.empty_like(z)
        F[0::2] = v
        F[1::2] = -(g / L) * torch.sin(x) + k * lap - c * v
        return F, -(g / L) * torch.cos(x) - k * self.neighbours

    def stage(self, z, rows, windows):
        """F at z and the rows K_i = sum_l (dF_i/dz_l) T_l, each over the union of its terms' windows."""
        F, diag = self.rhs(z)
        k, c = self.p["k"], self.p["c"]
        out, out_w = [None] * self.d, [None] * self.d
        for i in range(self.n):
            out[2 * i], out_w[2 * i] = rows[2 * i + 1], windows[2 * i + 1]  # x_i' = v_i: the row itself
            r = 2 * i + 1
            lo, hi = min(windows[l][0] for l in self.deps[r]), max(windows[l][1] for l in self.deps[r])
            acc = torch.zeros(hi - lo, z.shape[1], dtype=z.dtype)
            for l in self.deps[r]:  # in place: a temporary per term doubled the time (56 against 25 ms)
                a, b = windows[l]
                coef = diag[i] if l == 2 * i else (-c if l == r else k)
                if isinstance(coef, torch.Tensor):  # per point, or a learnable param
                    acc[a - lo : b - lo].addcmul_(rows[l], coef)
                else:
                    acc[a - lo : b - lo].add_(rows[l], alpha=coef)
            out[r], out_w[r] = acc, (lo, hi)
        if self.held is not None:  # (density: the widths of this evaluation's rows)
            self.held.append(sum(hi - lo for lo, hi in out_w))
        return F, out, out_w

    @staticmethod
    def combine(rows, windows, more, more_w, alpha, B, dtype):
        """rows + alpha * more, each row over the union of the two windows."""
        out, out_w = [], []
        for t, w, k, kw in zip(rows, windows, more, more_w):
            lo, hi = min(w[0], kw[0]), max(w[1], kw[1])
            r = torch.zeros(hi - lo, B, dtype=dtype)
            r[w[0] - lo : w[1] - lo].copy_(t)
            r[kw[0] - lo : kw[1] - lo].add_(k, alpha=alpha)
            out.append(r)
            out_w.append((lo, hi))
        return out, out_w

    def f_and_jacobian(self, z0):
        """z0 (B, d) -> f (B, d), J (B, d, d)."""
        B, dtype = z0.shape[0], z0.dtype
        z = z0.T
        rows = [torch.ones(1, B, dtype=dtype) for _ in range(self.d)]
        windows = [(i, i + 1) for i in range(self.d)]
        for _ in range(self.substeps):
            ks, Ks, Kws = [], [], []
            z_out, rows_out, w_out = z, rows, windows
            for s in range(4):
                y = z + sum(self.h * a * k for a, k in zip(RK4_A[s], ks)) if s else z
                ry, wy = rows, windows
                for j, a in enumerate(RK4_A[s]):
                    if a:
                        ry, wy = self.combine(ry, wy, Ks[j], Kws[j], self.h * a, B, dtype)
                F, K, Kw = self.stage(y, ry, wy)
                ks.append(F)
                Ks.append(K)
                Kws.append(Kw)
                z_out = z_out + self.h * RK4_B[s] * F
                rows_out, w_out = self.combine(rows_out, w_out, K, Kw, self.h * RK4_B[s], B, dtype)
            z, rows, windows = z_out, rows_out, w_out
        J = torch.stack([torch.nn.functional.pad(r, (0, 0, w[0], self.d - w[1])) for r, w in zip(rows, windows)])
        return z.T, J.permute(2, 0, 1)

    def density(self) -> float:
        """The share of the dense rows' entries the stages' windows hold (the rows K_i of each evaluation)."""
        self.held = []
        with torch.no_grad():
            self.f_and_jacobian(torch.zeros(1, self.d))
        held, self.held = self.held, None
        return sum(held) / (len(held) * self.d * self.d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chain", type=int, default=16, help="pendulums in the chain (d = 2N)")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="a chain of 4 at B = 64, one round: a smoke test")
    args = ap.parse_args()
    if args.quick:
        args.chain, args.batch, args.rounds = 4, 64, 1
    torch.set_num_threads(1)
    name = f"chain{args.chain}"
    jb.SYSTEMS.setdefault(name, (jb.chain_anm(args.chain), jb.chain_F))
    fns, d = jb.setup(name, args.batch)  # anmc's and vmap's callables, checked against each other
    module = jb.anmc.compile_prior(jb.chain_anm(args.chain)).module()
    values = {k: float(v.detach()) for k, v in module.param_values().items()}
    fixed = BandedChain(args.chain, module.dt / module.substeps, module.substeps, values)
    learn_p = {k: torch.tensor(v, requires_grad=k in module.learnable_param_names) for k, v in values.items()}
    learn = BandedChain(args.chain, module.dt / module.substeps, module.substeps, learn_p)

    gen = torch.Generator().manual_seed(1)
    z = 0.5 * torch.randn(args.batch, d, generator=gen)
    zg = z.clone().requires_grad_()
    w_f, w_J = torch.randn(args.batch, d, generator=gen), torch.randn(args.batch, d, d, generator=gen)
    with torch.no_grad():
        f_ref, J_ref = module.f_and_jacobian(z)
        f_b, J_b = fixed.f_and_jacobian(z)
    assert torch.allclose(f_b, f_ref, rtol=1e-5, atol=1e-5) and torch.allclose(J_b, J_ref, rtol=1e-4, atol=1e-5), "banded f, J differ"
    grads = []
    for fn in (module.f_and_jacobian, learn.f_and_jacobian):
        zg.grad = None
        f, J = fn(zg)
        ((w_f * f).sum() + (w_J * J).sum()).backward()
        grads.append(zg.grad.clone())
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-4 * float(grads[0].abs().max())), "banded gradient differs"

    columns = {
        "fwd fixed": {"anmc": fns["fwd fixed"]["ours"], "banded": lambda: fixed.f_and_jacobian(z), "vmap": fns["fwd fixed"]["vmap"]},
        "fwd learn": {"anmc": fns["fwd learn"]["ours"], "banded": lambda: learn.f_and_jacobian(z), "vmap": fns["fwd learn"]["vmap"]},
        "f+b learn": {"anmc": fns["f+b learn"]["ours"], "banded": jb.with_backward(lambda: learn.f_and_jacobian(zg), w_f, w_J), "vmap": fns["f+b learn"]["vmap"]},
    }
    flat = {(s, k): fn for s, col in columns.items() for k, fn in col.items()}
    for fn in flat.values():
        fn()
    number = max(1, int(20_000 / (args.batch * max(1, d // 4))))
    times = jb.interleaved(flat, number, args.rounds)
    print(f"chain of {args.chain} (d = {d}), B = {args.batch}, one thread; the windows hold {fixed.density():.0%} of the dense rows' entries")
    print(f"{'setting':<10} {'anmc ms':>9} {'banded ms':>10} {'vmap ms':>9} {'vmap/anmc':>10} {'vmap/banded':>12}")
    for s in columns:
        a, b, v = (times[(s, k)] * 1e3 for k in ("anmc", "banded", "vmap"))
        print(f"{s:<10} {a:>9.2f} {b:>10.2f} {v:>9.2f} {v / a:>9.1f}x {v / b:>11.1f}x")


if __name__ == "__main__":
    main()
