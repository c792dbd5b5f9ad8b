"""The Jacobian's forward pass with each tangent row kept inside its window of columns (sparse models).

`AnmModule` carries J = dz/dz0 through the integrator as dense rows J_l (d, B). In a model whose states
each depend on a few others (a chain of coupled oscillators, a grid), most of those entries are zeros
that every stage multiplies and adds: at the start of a frame J = I, so row l is nonzero in column l
alone, and each evaluation of the right-hand sides widens a row only by the columns of the rows it
depends on. Here each row is a tensor (hi - lo, B) over its window [lo, hi) of columns, or None where it
is zero, and every operation touches the window alone:

    a stage's rows      K_i = sum_l (dF_i/dz_l) T_l    over the hull of the windows of its terms
    a combination       T + sum_s a_s K_s              over the hull of the windows of its operands

accumulated in place into a tensor of its own (a fresh tensor per term doubled the time), with
dF/dz's nonzero entries from the generated `rhs_and_partials` (in the order of `jacobian_pattern`).
The windows are Python ints, so they cost nothing on the tensors; for a given model and integrator
they are the same at every call. The result is the same f and J as the dense rows (exactly: the same
products and sums, without the zeros). Autograd records the operations when a param or the input
requires grad. `window_share` says how much of the dense rows' work the windows hold, which is how
`AnmModule` chooses between the two (docs/results.md §4).
"""

from __future__ import annotations

import torch

Row = "tuple[torch.Tensor, int] | None"  # a row over its window: (values (hi - lo, B), lo), or None (zero)


def _is_one(a) -> bool:
    return not isinstance(a, torch.Tensor) and a == 1


def combine(terms: list, batch: int, like: torch.Tensor):
    """sum_k a_k * row_k over the hull of the rows' windows (terms: (a, row), a a number or a tensor
    (B,) or 0-d; zero rows skipped). A single term with a = 1 is the row itself (rows are never written
    after they are made)."""
    terms = [(a, r) for a, r in terms if r is not None]
    if not terms:
        return None
    if len(terms) == 1 and _is_one(terms[0][0]):
        return terms[0][1]
    lo = min(r[1] for _, r in terms)
    hi = max(r[1] + r[0].shape[0] for _, r in terms)
    first = next((n for n, (_, r) in enumerate(terms) if r[1] == lo and r[0].shape[0] == hi - lo), None)
    if first is None:
        acc = like.new_zeros(hi - lo, batch)
    else:  # a term spanning the hull starts the sum (no zeros to write and add to)
        a, (t, _) = terms.pop(first)
        acc = t.clone() if _is_one(a) else t * a
    for a, (t, start) in terms:
        dst = acc[start - lo : start - lo + t.shape[0]]
        if isinstance(a, torch.Tensor):
            dst.addcmul_(t, a)
        else:
            dst.add_(t, alpha=a)
    return acc, lo


def _by_row(pattern: tuple, d: int) -> list:
    """For each i, the (l, n) of the pattern's entries n = (i, l)."""
    rows: list = [[] for _ in range(d)]
    for n, (i, l) in enumerate(pattern):
        rows[i].append((l, n))
    return rows


def tangents(rows: list, coefs: tuple, by_row: list, batch: int, like: torch.Tensor, only=None) -> list:
    """The rows K_i = sum_l (dF_i/dz_l) T_l (all i, or the one `only`) from dF/dz's entries `coefs`."""
    which = range(len(by_row)) if only is None else (only,)
    return [combine([(coefs[n], rows[l]) for l, n in by_row[i]], batch, like) for i in which]


def identity_rows(d: int, batch: int, like: torch.Tensor) -> list:
    one = like.new_ones(1, batch)
    return [(one, i) for i in range(d)]


def dense(rows: list, d: int, batch: int, like: torch.Tensor) -> torch.Tensor:
    """The rows as J (d, d, B)."""
    J = like.new_zeros(d, d, batch)
    for i, r in enumerate(rows):
        if r is not None:
            J[i, r[1] : r[1] + r[0].shape[0]] = r[0]
    return J


def frame_and_jacobian(module, zt: torch.Tensor, steps: int, scalars: tuple, plan) -> tuple[torch.Tensor, torch.Tensor]:
    """`steps` substeps of the states zt (d, B) and their Jacobian with respect to zt: ((d, B), (d, d, B)).
    `plan`: the explicit Runge-Kutta stages ((j, a_sj h) for the nonzero a_sj, b_s h), or None for the
    integrator's own kind (discrete, semi-implicit Euler)."""
    m, d, batch = module, module.d, zt.shape[-1]
    by_row = _by_row(m.jacobian_pattern, d)
    rhs = m.rhs_and_partials
    x, rows = zt, identity_rows(d, batch, zt)
    for _ in range(steps):
        if m.integrator == "discrete":
            x, coefs = rhs(x, *scalars)
            rows = tangents(rows, coefs, by_row, batch, zt)
        elif m.integrator == "semi_implicit_euler":
            h = m.dt / m.substeps
            for i in range(d):  # x_i <- x_i + h F_i(x_1', ..., x_(i-1)', x_i, ...), and its row with it
                F, coefs = rhs(x, *scalars)
                (K,) = tangents(rows, coefs, by_row, batch, zt, only=i)
                x = torch.cat((x[:i], x[i : i + 1] + h * F[i : i + 1], x[i + 1 :]))
                rows = [*rows[:i], combine([(1, rows[i]), (h, K)], batch, zt), *rows[i + 1 :]]
        else:
            ks, Ks = [], []
            for inputs, _ in plan:
                y, ry = x, rows
                for j, a in inputs:
                    y = torch.add(y, ks[j], alpha=a)
                if inputs:
                    ry = [combine([(1, rows[i]), *((a, Ks[j][i]) for j, a in inputs)], batch, zt) for i in range(d)]
                F, coefs = rhs(y, *scalars)
                ks.append(F)
                Ks.append(tangents(ry, coefs, by_row, batch, zt))
            out = x
            for (_, weight), k in zip(plan, ks):
                if weight:
                    out = torch.add(out, k, alpha=weight)
            rows = [combine([(1, rows[i]), *((w, K[i]) for (_, w), K in zip(plan, Ks) if w)], batch, zt) for i in range(d)]
            x = out
    return x, dense(rows, d, batch, zt)


def window_share(pattern: tuple, d: int, integrator: str, plan, substeps: int) -> float:
    """The share of the dense rows' entries that the windows hold, over the stages' rows K_i of one frame
    (what the stages multiply and add): the same walk as `frame_and_jacobian`, on the windows alone."""
    by_row = _by_row(pattern, d)

    def hull(windows):
        windows = [w for w in windows if w is not None]
        return (min(w[0] for w in windows), max(w[1] for w in windows)) if windows else None

    def stage(rows):
        return [hull([rows[l] for l, _ in by_row[i]]) for i in range(d)]

    held = []  # the windows of the rows each evaluation computes
    rows = [(i, i + 1) for i in range(d)]
    for _ in range(substeps):
        if integrator == "discrete":
            rows = stage(rows)
            held.append(rows)
        elif integrator == "semi_implicit_euler":
            for i in range(d):
                K = stage(rows)[i]
                held.append([K])
                rows = [*rows[:i], hull([rows[i], K]), *rows[i + 1 :]]
        else:
            Ks = []
            for inputs, _ in plan:
                ry = [hull([rows[i], *(Ks[j][i] for j, _ in inputs)]) for i in range(d)]
                Ks.append(stage(ry))
                held.append(Ks[-1])
            rows = [hull([rows[i], *(K[i] for (_, w), K in zip(plan, Ks) if w)]) for i in range(d)]
    total = sum(sum(w[1] - w[0] for w in K if w is not None) for K in held)
    return total / (sum(len(K) for K in held) * d)
